//! Hand-written histories with a known answer: linearizable ones, the classic anomalies
//! (stale read, value never written, inverted reads, read after delete, lost write),
//! indeterminate writes, P-compositionality, the search budget, malformed histories and the
//! JSON form.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use craft_lincheck::{
    check, check_with, Completion, Config, History, HistoryError, Op, OpId, Operation, Recorder,
    Ret, Verdict, Violation,
};

fn set(h: &mut History, client: u64, key: &str, v: &str, call: u64, ret: u64) -> OpId {
    let id = h.invoke(client, key, Op::Set(v.into()), call);
    h.complete(id, ret, Ret::Ok).unwrap();
    id
}

fn get(h: &mut History, client: u64, key: &str, v: Option<&str>, call: u64, ret: u64) -> OpId {
    let id = h.invoke(client, key, Op::Get, call);
    h.complete(id, ret, Ret::Value(v.map(str::to_string)))
        .unwrap();
    id
}

fn del(h: &mut History, client: u64, key: &str, call: u64, ret: u64) -> OpId {
    let id = h.invoke(client, key, Op::Delete, call);
    h.complete(id, ret, Ret::Ok).unwrap();
    id
}

/// A set whose outcome is unknown: invoked, never completed.
fn set_unknown(h: &mut History, client: u64, key: &str, v: &str, call: u64) -> OpId {
    h.invoke(client, key, Op::Set(v.into()), call)
}

fn verdict(h: &History) -> Verdict {
    check(h).unwrap()
}

fn violation(h: &History) -> Violation {
    match verdict(h) {
        Verdict::NotLinearizable(v) => *v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

fn assert_linearizable(h: &History) {
    let v = verdict(h);
    assert!(v.is_linearizable(), "{v}");
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&History::new());
}

#[test]
fn sequential_history() {
    let mut h = History::new();
    get(&mut h, 1, "k", None, 0, 1);
    set(&mut h, 1, "k", "a", 2, 3);
    get(&mut h, 2, "k", Some("a"), 4, 5);
    set(&mut h, 2, "k", "b", 6, 7);
    get(&mut h, 1, "k", Some("b"), 8, 9);
    del(&mut h, 3, "k", 10, 11);
    get(&mut h, 1, "k", None, 12, 13);
    del(&mut h, 3, "k", 14, 15);
    get(&mut h, 1, "k", None, 16, 17);
    assert_linearizable(&h);
}

#[test]
fn concurrent_writes_read_sees_either() {
    for seen in ["1", "2"] {
        let mut h = History::new();
        set(&mut h, 1, "k", "1", 0, 100);
        set(&mut h, 2, "k", "2", 10, 90);
        // During the writes any of absent, 1, 2 may be read...
        get(&mut h, 3, "k", None, 20, 30);
        // ...and afterwards either write may be the last one.
        get(&mut h, 3, "k", Some(seen), 110, 120);
        get(&mut h, 4, "k", Some(seen), 130, 140);
        assert_linearizable(&h);
    }
}

#[test]
fn reads_during_a_write_may_flip_once() {
    let mut h = History::new();
    set(&mut h, 1, "k", "old", 0, 10);
    set(&mut h, 2, "k", "new", 20, 100);
    get(&mut h, 3, "k", Some("old"), 30, 40);
    get(&mut h, 3, "k", Some("new"), 50, 60);
    get(&mut h, 4, "k", Some("new"), 70, 80);
    assert_linearizable(&h);
}

#[test]
fn equal_times_are_concurrent() {
    // The read is invoked at the instant the write completes: it may precede it.
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    get(&mut h, 2, "k", None, 10, 20);
    assert_linearizable(&h);
    // One tick later it may not.
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    get(&mut h, 2, "k", None, 11, 20);
    violation(&h);
}

#[test]
fn stale_read_after_a_completed_write() {
    let mut h = History::new();
    let w1 = set(&mut h, 1, "k", "1", 0, 10);
    let w2 = set(&mut h, 2, "k", "2", 20, 30);
    let r = get(&mut h, 3, "k", Some("1"), 40, 50);
    let v = violation(&h);
    assert_eq!(v.key, "k");
    assert_eq!(v.prefix, vec![w1, w2]);
    assert_eq!(v.value.as_deref(), Some("2"));
    assert_eq!(v.stuck, r);
    assert_eq!(v.candidates, vec![r]);
    assert_eq!(v.ops, 3);
    let text = v.to_string();
    assert!(text.contains("key \"k\" is not linearizable"), "{text}");
    assert!(
        text.contains("#2 client 3 get \"k\" [40, 50] -> \"1\""),
        "{text}"
    );
    assert!(text.contains("after which the value is \"2\""), "{text}");
}

#[test]
fn read_of_a_value_never_written() {
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    let r = get(&mut h, 2, "k", Some("zzz"), 5, 20);
    let v = violation(&h);
    assert_eq!(v.stuck, r);
    // The read fits neither before nor after the write.
    assert!(v.candidates.contains(&r));
}

#[test]
fn reads_inverting_the_order_of_writes() {
    let mut h = History::new();
    set(&mut h, 1, "k", "old", 0, 10);
    set(&mut h, 2, "k", "new", 20, 100);
    // r1 sees the new value, then r2 (invoked after r1 completed) sees the old one.
    get(&mut h, 3, "k", Some("new"), 30, 40);
    let r2 = get(&mut h, 4, "k", Some("old"), 50, 60);
    let v = violation(&h);
    assert_eq!(v.stuck, r2);
}

#[test]
fn value_read_after_a_delete_completed() {
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    del(&mut h, 2, "k", 20, 30);
    get(&mut h, 3, "k", Some("a"), 40, 50);
    violation(&h);
}

#[test]
fn lost_write() {
    // An acknowledged write that a later read does not see.
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    get(&mut h, 2, "k", None, 20, 30);
    violation(&h);
    // Nor may it vanish after having been seen.
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    get(&mut h, 2, "k", Some("a"), 20, 30);
    get(&mut h, 3, "k", None, 40, 50);
    violation(&h);
}

#[test]
fn indeterminate_write_that_shows_up_later() {
    let mut h = History::new();
    set(&mut h, 1, "k", "1", 0, 10);
    set_unknown(&mut h, 2, "k", "2", 20);
    get(&mut h, 3, "k", Some("1"), 30, 40);
    get(&mut h, 3, "k", Some("1"), 50, 60);
    // Long after the client gave up, it takes effect.
    get(&mut h, 3, "k", Some("2"), 1_000, 1_010);
    get(&mut h, 4, "k", Some("2"), 1_020, 1_030);
    assert_linearizable(&h);
}

#[test]
fn indeterminate_write_that_never_shows_up() {
    let mut h = History::new();
    set(&mut h, 1, "k", "1", 0, 10);
    set_unknown(&mut h, 2, "k", "2", 20);
    get(&mut h, 3, "k", Some("1"), 30, 40);
    set(&mut h, 1, "k", "3", 50, 60);
    get(&mut h, 3, "k", Some("3"), 70, 80);
    assert_linearizable(&h);
}

#[test]
fn indeterminate_write_seen_before_its_invocation() {
    let mut h = History::new();
    let r = get(&mut h, 1, "k", Some("2"), 0, 10);
    set_unknown(&mut h, 2, "k", "2", 20);
    let v = violation(&h);
    assert_eq!(v.stuck, r);
    assert!(v.prefix.is_empty());
}

#[test]
fn indeterminate_write_takes_effect_at_most_once() {
    let mut h = History::new();
    set_unknown(&mut h, 2, "k", "2", 0);
    get(&mut h, 1, "k", Some("2"), 10, 20);
    set(&mut h, 1, "k", "1", 30, 40);
    get(&mut h, 1, "k", Some("1"), 50, 60);
    // "2" cannot come back: its write was applied already.
    get(&mut h, 1, "k", Some("2"), 70, 80);
    violation(&h);
    // With a second indeterminate write of "2" it can.
    set_unknown(&mut h, 3, "k", "2", 5);
    assert_linearizable(&h);
}

#[test]
fn indeterminate_delete() {
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    h.invoke(2, "k", Op::Delete, 20);
    get(&mut h, 3, "k", Some("a"), 30, 40);
    get(&mut h, 3, "k", None, 50, 60);
    get(&mut h, 3, "k", None, 70, 80);
    assert_linearizable(&h);
    get(&mut h, 3, "k", Some("a"), 90, 100);
    violation(&h);
}

#[test]
fn completion_with_unknown_is_indeterminate() {
    // The client gave up at 25; the write took effect later anyway.
    let mut h = History::new();
    let w = h.invoke(1, "k", Op::Set("a".into()), 20);
    h.complete(w, 25, Ret::Unknown).unwrap();
    assert!(h.get(w).unwrap().is_indeterminate());
    get(&mut h, 2, "k", None, 30, 40);
    get(&mut h, 2, "k", Some("a"), 50, 60);
    assert_linearizable(&h);
}

#[test]
fn unknown_reads_constrain_nothing() {
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    let r = h.invoke(2, "k", Op::Get, 20);
    h.complete(r, 30, Ret::Unknown).unwrap();
    h.invoke(3, "k", Op::Get, 40);
    get(&mut h, 1, "k", Some("a"), 50, 60);
    assert_linearizable(&h);
}

#[test]
fn many_indeterminate_writes_do_not_blow_up() {
    // 40 pending writes of distinct values, then a read of a value none of them wrote: the
    // search must try the writes in every position yet stay far below the budget.
    let mut h = History::new();
    for i in 0..40 {
        set_unknown(&mut h, i, "k", &format!("v{i}"), i);
    }
    for i in 0..40 {
        get(
            &mut h,
            100,
            "k",
            Some(&format!("v{i}")),
            100 + 10 * i,
            105 + 10 * i,
        );
    }
    assert_linearizable(&h);
    get(&mut h, 100, "k", Some("other"), 1_000, 1_010);
    let config = Config {
        max_states_per_key: 100_000,
    };
    assert!(matches!(
        check_with(&h, &config).unwrap(),
        Verdict::NotLinearizable(_)
    ));
}

#[test]
fn interchangeable_indeterminate_writes_are_counted_not_chosen() {
    // 30 pending deletes, then rounds of (set, read it, read absent): each round uses up one
    // of the deletes, whichever. 30 rounds fit; the 31st does not, and the search must not
    // try every choice of which deletes were used to find that out.
    let config = Config {
        max_states_per_key: 100_000,
    };
    for (rounds, fits) in [(30, true), (31, false)] {
        let mut h = History::new();
        for i in 0..30 {
            h.invoke(i, "k", Op::Delete, i);
        }
        for r in 0..rounds {
            let t = 100 + 100 * r;
            set(&mut h, 50, "k", &format!("v{r}"), t, t + 10);
            get(&mut h, 51, "k", Some(&format!("v{r}")), t + 20, t + 30);
            get(&mut h, 51, "k", None, t + 40, t + 50);
        }
        let v = check_with(&h, &config).unwrap();
        assert_eq!(v.is_linearizable(), fits, "{rounds} rounds: {v}");
        assert!(!matches!(v, Verdict::Unknown { .. }), "{v}");
    }
}

#[test]
fn violation_on_one_key_among_many_names_the_key() {
    let mut h = History::new();
    for (k, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let t = 1_000 * k as u64;
        set(&mut h, 1, key, "1", t, t + 10);
        set(&mut h, 2, key, "2", t + 5, t + 30);
        get(&mut h, 3, key, Some("2"), t + 40, t + 50);
        if key == "d" {
            get(&mut h, 4, key, Some("1"), t + 60, t + 70);
        }
    }
    let v = violation(&h);
    assert_eq!(v.key, "d");
    // Each key alone: only "d" fails.
    for key in ["a", "b", "c", "e"] {
        let only: History = h.ops().iter().filter(|o| o.key == key).cloned().collect();
        assert_linearizable(&only);
    }
}

#[test]
fn keys_are_independent_registers() {
    // Read as one register this would be a stale read; as two keys it is fine.
    let mut h = History::new();
    set(&mut h, 1, "x", "1", 0, 10);
    set(&mut h, 1, "y", "2", 20, 30);
    get(&mut h, 2, "x", Some("1"), 40, 50);
    get(&mut h, 2, "y", Some("2"), 40, 50);
    assert_linearizable(&h);
}

#[test]
fn budget_exhaustion_is_unknown() {
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, 10);
    get(&mut h, 1, "k", Some("a"), 20, 30);
    set(&mut h, 1, "k", "b", 40, 50);
    let tight = Config {
        max_states_per_key: 2,
    };
    assert_eq!(
        check_with(&h, &tight).unwrap(),
        Verdict::Unknown {
            keys: vec!["k".into()],
            max_states_per_key: 2
        }
    );
    let enough = Config {
        max_states_per_key: 3,
    };
    assert!(check_with(&h, &enough).unwrap().is_linearizable());

    // A hard key: 16 concurrent writes then an impossible read (every subset of the writes
    // is explored). A small budget gives up on it...
    let mut h = History::new();
    for i in 0..16 {
        set(&mut h, i, "hard", &format!("v{i}"), 0, 100);
    }
    get(&mut h, 99, "hard", Some("never"), 200, 210);
    set(&mut h, 1, "easy", "a", 0, 10);
    let small = Config {
        max_states_per_key: 1_000,
    };
    assert!(matches!(
        check_with(&h, &small).unwrap(),
        Verdict::Unknown { keys, .. } if keys == ["hard"]
    ));
    // ...but a violation found on another key is still reported.
    get(&mut h, 2, "easy", None, 20, 30);
    assert!(matches!(
        check_with(&h, &small).unwrap(),
        Verdict::NotLinearizable(v) if v.key == "easy"
    ));
}

#[test]
fn malformed_histories_are_refused() {
    let mut h = History::new();
    let w = h.invoke(1, "k", Op::Set("a".into()), 10);
    h.complete(w, 5, Ret::Ok).unwrap();
    assert_eq!(
        check(&h),
        Err(HistoryError::ReturnBeforeCall {
            op: w,
            call: 10,
            ret: 5
        })
    );

    let h: History = vec![Operation {
        client: 1,
        key: "k".into(),
        op: Op::Delete,
        call: 0,
        ret: Some(Completion {
            time: 1,
            ret: Ret::Value(None),
        }),
    }]
    .into();
    assert!(matches!(check(&h), Err(HistoryError::WrongAnswer { .. })));

    let mut h = History::new();
    let r = h.invoke(1, "k", Op::Get, 0);
    h.complete(r, 1, Ret::Ok).unwrap();
    assert!(matches!(check(&h), Err(HistoryError::WrongAnswer { .. })));

    assert_eq!(
        h.complete(r, 2, Ret::Ok),
        Err(HistoryError::AlreadyComplete(r))
    );
    assert_eq!(
        h.complete(OpId(7), 2, Ret::Ok),
        Err(HistoryError::NoSuchOp(OpId(7)))
    );
    assert!(HistoryError::NoSuchOp(OpId(7)).to_string().contains("#7"));
}

#[test]
fn extreme_times_do_not_panic() {
    let mut h = History::new();
    set(&mut h, 1, "k", "a", 0, u64::MAX);
    get(&mut h, 2, "k", Some("a"), u64::MAX, u64::MAX);
    set(&mut h, 1, "", "", u64::MAX, u64::MAX);
    assert_linearizable(&h);
}

#[test]
fn histories_and_verdicts_round_trip_through_json() {
    let mut h = History::new();
    set(&mut h, 1, "k", "1", 0, 10);
    set_unknown(&mut h, 2, "k", "2", 5);
    get(&mut h, 3, "k", None, 1, 2);
    get(&mut h, 3, "k", Some("7"), 20, 30);
    let json = serde_json::to_string(&h).unwrap();
    let back: History = serde_json::from_str(&json).unwrap();
    assert_eq!(back, h);

    let v = verdict(&h);
    assert!(matches!(v, Verdict::NotLinearizable(_)));
    let json = serde_json::to_string_pretty(&v).unwrap();
    let back: Verdict = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
}

#[test]
fn recorder_stamps_concurrent_clients() {
    let rec = Recorder::new();
    std::thread::scope(|s| {
        for c in 0..4u64 {
            let rec = &rec;
            s.spawn(move || {
                let key = format!("k{c}");
                for i in 0..50 {
                    let w = rec.invoke(c, key.as_str(), Op::Set(i.to_string()));
                    rec.complete(w, Ret::Ok).unwrap();
                    let r = rec.invoke(c, key.as_str(), Op::Get);
                    rec.complete(r, Ret::Value(Some(i.to_string()))).unwrap();
                }
                // Left pending: indeterminate.
                rec.invoke(c, key.as_str(), Op::Set("late".into()));
            });
        }
    });
    let h = rec.into_history();
    assert_eq!(h.len(), 4 * 101);
    assert_linearizable(&h);
    // A stale read appended by hand is caught.
    let last = h
        .ops()
        .iter()
        .map(|o| o.ret.as_ref().map_or(o.call, |c| c.time))
        .max();
    let mut h = h;
    let t = last.unwrap() + 1;
    get(&mut h, 9, "k2", Some("3"), t, t + 1);
    assert_eq!(violation(&h).key, "k2");
}
