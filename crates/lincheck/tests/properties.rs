//! Generated histories: executions linearizable by construction (a real sequential order of
//! register operations, each stretched to a random interval around its instant) pass, and
//! fail once one read is made to return a value never written; small arbitrary histories get
//! the answer of a brute-force search over every order; a 10,000-operation history of 8
//! clients on 5 keys is checked in well under a second (in release).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use craft_lincheck::{check, check_with, Completion, Config, History, Op, Operation, Ret, Verdict};
use proptest::prelude::*;

/// One step of a generated sequential execution.
#[derive(Clone, Debug)]
struct Step {
    key: u8,
    /// 0 set, 1 get, 2 delete.
    kind: u8,
    val: u8,
    /// How long before its instant the operation was invoked, and after it completed.
    before: u64,
    after: u64,
    /// 0: outcome unknown (a write still took effect); 1: a write whose outcome is unknown
    /// and that never took effect (not part of the execution); otherwise it completed.
    fate: u8,
    client: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (0..3u8, 0..3u8, 0..6u8, 0..40u64, 0..40u64, 0..12u8, 0..8u8).prop_map(
        |(key, kind, val, before, after, fate, client)| Step {
            key,
            kind,
            val,
            before,
            after,
            fate,
            client,
        },
    )
}

/// The history of `steps` run one after the other on registers, step `i` taking effect at
/// `1000 + 10 i` (so linearizable by construction).
fn execution(steps: &[Step]) -> History {
    let mut regs: [Option<String>; 3] = Default::default();
    let mut h = History::new();
    for (i, s) in steps.iter().enumerate() {
        let at = 1000 + 10 * i as u64;
        let op = match s.kind {
            0 => Op::Set(format!("v{}", s.val)),
            1 => Op::Get,
            _ => Op::Delete,
        };
        let reg = &mut regs[s.key as usize];
        let phantom = s.fate == 1 && op != Op::Get;
        let ret = match &op {
            _ if phantom => Ret::Ok,
            Op::Set(v) => {
                *reg = Some(v.clone());
                Ret::Ok
            }
            Op::Delete => {
                *reg = None;
                Ret::Ok
            }
            Op::Get => Ret::Value(reg.clone()),
        };
        let ret = (s.fate > 1).then_some(Completion {
            time: at + s.after,
            ret,
        });
        h.push(Operation {
            client: u64::from(s.client),
            key: format!("k{}", s.key),
            op,
            call: at - s.before,
            ret,
        });
    }
    h
}

/// Linearizability by brute force, from the definition, for a handful of operations: some
/// order of all completed operations and some of the indeterminate writes, respecting real
/// time (`a` before `b` when `a` completed before `b` was invoked), explains every read.
fn brute_force(h: &History) -> bool {
    let mut keys: Vec<&str> = h.ops().iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter().all(|key| {
        let ops: Vec<&Operation> = h
            .ops()
            .iter()
            .filter(|o| o.key == key && !(o.op == Op::Get && o.is_indeterminate()))
            .collect();
        orders(&ops, 0, &None)
    })
}

fn orders(ops: &[&Operation], used: u32, value: &Option<String>) -> bool {
    let done = |i: usize| used & (1 << i) != 0;
    let ret = |o: &Operation| match &o.ret {
        Some(c) if c.ret != Ret::Unknown => Some(c.time),
        _ => None,
    };
    if (0..ops.len()).all(|i| done(i) || ret(ops[i]).is_none()) {
        return true;
    }
    (0..ops.len()).any(|i| {
        let blocked = (0..ops.len())
            .any(|j| j != i && !done(j) && ret(ops[j]).is_some_and(|r| r < ops[i].call));
        if done(i) || blocked {
            return false;
        }
        let next = match (&ops[i].op, ops[i].ret.as_ref().map(|c| &c.ret)) {
            (Op::Set(v), _) => Some(Some(v.clone())),
            (Op::Delete, _) => Some(None),
            (Op::Get, Some(Ret::Value(v))) => (v == value).then(|| v.clone()),
            (Op::Get, _) => None,
        };
        next.is_some_and(|next| orders(ops, used | (1 << i), &next))
    })
}

/// A small arbitrary history on two keys: intervals, answers and outcomes at random.
fn small_history() -> impl Strategy<Value = History> {
    let op = (0..2u8, 0..3u8, 0..3u8, 0..20u64, 0..10u64, 0..5u8, 0..3u8).prop_map(
        |(key, kind, val, call, dur, outcome, read)| {
            let op = match kind {
                0 => Op::Set(format!("v{val}")),
                1 => Op::Get,
                _ => Op::Delete,
            };
            let ret = match (&op, outcome) {
                (_, 0) => None,
                (_, 1) => Some(Ret::Unknown),
                (Op::Get, _) => Some(Ret::Value((read > 0).then(|| format!("v{read}")))),
                _ => Some(Ret::Ok),
            };
            Operation {
                client: 0,
                key: format!("k{key}"),
                op,
                call,
                ret: ret.map(|ret| Completion {
                    time: call + dur,
                    ret,
                }),
            }
        },
    );
    prop::collection::vec(op, 0..=7).prop_map(History::from)
}

proptest! {
    // Cases: PROPTEST_CASES (256 by default); failures are shown, not saved to files.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn executions_are_linearizable(steps in prop::collection::vec(step(), 1..150)) {
        let h = execution(&steps);
        let v = check(&h).unwrap();
        prop_assert!(v.is_linearizable(), "{}", v);
    }

    #[test]
    fn a_read_of_a_value_never_written_fails(
        steps in prop::collection::vec(step(), 1..150),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut h = execution(&steps);
        let reads: Vec<usize> = h
            .ops()
            .iter()
            .enumerate()
            .filter(|(_, o)| o.op == Op::Get && !o.is_indeterminate())
            .map(|(i, _)| i)
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        let mut ops = h.ops().to_vec();
        if let Some(c) = &mut ops[i].ret {
            c.ret = Ret::Value(Some("never-written".into()));
        }
        let key = ops[i].key.clone();
        h = History::from(ops);
        match check(&h).unwrap() {
            Verdict::NotLinearizable(v) => prop_assert_eq!(v.key, key),
            other => prop_assert!(false, "expected a violation, got {:?}", other),
        }
    }

    #[test]
    fn altered_executions_agree_with_brute_force(
        steps in prop::collection::vec(step(), 1..=9),
        pick in any::<prop::sample::Index>(),
        val in 0..3u8,
    ) {
        // A small execution on few values with one read changed to another value (which
        // may or may not be explained by another order).
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|s| Step { key: s.key % 2, val: s.val % 3, ..s })
            .collect();
        let mut ops = execution(&steps).ops().to_vec();
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].op == Op::Get && !ops[i].is_indeterminate())
            .collect();
        if !reads.is_empty() {
            let i = reads[pick.index(reads.len())];
            if let Some(c) = &mut ops[i].ret {
                c.ret = Ret::Value((val > 0).then(|| format!("v{val}")));
            }
        }
        let h = History::from(ops);
        let v = check(&h).unwrap();
        prop_assert_eq!(v.is_linearizable(), brute_force(&h), "{}", v);
    }

    #[test]
    fn small_histories_agree_with_brute_force(h in small_history()) {
        let expected = brute_force(&h);
        let v = check(&h).unwrap();
        prop_assert_eq!(v.is_linearizable(), expected, "{}", v);
        prop_assert!(!matches!(v, Verdict::Unknown { .. }), "budget spent: {}", v);
    }
}

/// splitmix64: a deterministic source of numbers for the large history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `clients` sequential clients issuing `ops` operations in all on `keys` keys, each
/// operation lasting up to 2 ms and taking effect at a random instant within it; one in
/// `timeout_one_in` times out (and then took effect, or not, at random).
fn large_history(seed: u64, ops: usize, clients: u64, keys: u64, timeout_one_in: u64) -> History {
    let mut rng = Rng(seed);
    // (instant, or None if it never took effect; operation)
    let mut planned: Vec<(Option<u64>, Operation)> = Vec::with_capacity(ops);
    let mut clock = vec![0u64; clients as usize];
    let mut serial = 0;
    for n in 0..ops {
        let c = (n as u64) % clients;
        let call = clock[c as usize] + rng.below(50_000);
        let dur = 1 + rng.below(2_000_000);
        let key = format!("key-{}", rng.below(keys));
        let op = match rng.below(20) {
            0 => Op::Delete,
            1..=9 => {
                serial += 1;
                Op::Set(format!("{c}-{serial}"))
            }
            _ => Op::Get,
        };
        let timed_out = rng.below(timeout_one_in) == 0;
        let at = call + rng.below(dur + 1);
        let instant = (!timed_out || rng.below(2) == 0).then_some(at);
        clock[c as usize] = call + dur;
        let ret = (!timed_out).then_some(Completion {
            time: call + dur,
            ret: Ret::Ok,
        });
        planned.push((
            instant,
            Operation {
                client: c,
                key,
                op,
                call,
                ret,
            },
        ));
    }
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].0.is_some())
        .collect();
    order.sort_by_key(|&i| planned[i].0);
    let mut regs = std::collections::HashMap::<String, Option<String>>::new();
    for i in order {
        let op = &mut planned[i].1;
        let reg = regs.entry(op.key.clone()).or_default();
        match &op.op {
            Op::Set(v) => *reg = Some(v.clone()),
            Op::Delete => *reg = None,
            Op::Get => {
                if let Some(c) = &mut op.ret {
                    c.ret = Ret::Value(reg.clone());
                }
            }
        }
    }
    planned.into_iter().map(|(_, op)| op).collect()
}

fn timed(h: &History) -> (Verdict, Duration) {
    let start = Instant::now();
    let v = check_with(h, &Config::default()).unwrap();
    (v, start.elapsed())
}

#[test]
fn ten_thousand_operations() {
    for (seed, timeout_one_in) in [(1, 200), (2, 200), (3, 20), (4, 5)] {
        let h = large_history(seed, 10_000, 8, 5, timeout_one_in);
        let (v, took) = timed(&h);
        eprintln!(
            "seed {seed}: 10,000 operations (1 in {timeout_one_in} timed out) checked in \
             {took:?}: {v}"
        );
        assert!(v.is_linearizable(), "{v}");
        // Generous: a debug build on a loaded machine (release takes milliseconds).
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
}

#[test]
fn ten_thousand_operations_with_one_stale_read() {
    for (seed, timeout_one_in) in [(7, 200), (8, 20), (9, 5)] {
        let mut ops = large_history(seed, 10_000, 8, 5, timeout_one_in)
            .ops()
            .to_vec();
        // The last completed read: make it return the first value its key held.
        let i = (0..ops.len())
            .rev()
            .find(|&i| ops[i].op == Op::Get && !ops[i].is_indeterminate())
            .unwrap();
        let key = ops[i].key.clone();
        let old = ops
            .iter()
            .find_map(|o| match &o.op {
                Op::Set(v) if o.key == key && !o.is_indeterminate() => Some(v.clone()),
                _ => None,
            })
            .unwrap();
        if let Some(c) = &mut ops[i].ret {
            c.ret = Ret::Value(Some(old));
        }
        let (v, took) = timed(&History::from(ops));
        eprintln!(
            "seed {seed}: 10,000 operations (1 in {timeout_one_in} timed out), one stale \
             read, checked in {took:?}"
        );
        match v {
            Verdict::NotLinearizable(v) => {
                assert_eq!(v.key, key);
                if seed == 7 {
                    eprintln!("{v}");
                }
            }
            other => panic!("expected a violation, got {other}"),
        }
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
}
