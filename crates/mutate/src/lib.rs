//! craft-mutate: what the hostile-input tests (`tests/hostile.rs` of each crate) share.
//! [`mutation`] damages a valid encoding the way a faulty link or a hostile peer would
//! (bytes flipped, cut short, extended, inserted, wrapped in nested protobuf groups),
//! [`fields`] picks which fields of a decoded message to change, one or several at once,
//! [`runner`] runs [`cases`] inputs, and [`DEEP_GROUPS`] and [`HUGE_LENGTH`] are the
//! hand-made extremes every decoder must refuse.
//!
//! A dev-dependency only; it depends on nothing of the workspace.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Generated inputs per test: `CRAFT_FUZZ_CASES` (`cargo xtask fuzz` sets 100,000), or
/// `default` (the bounded number a plain `cargo test` runs).
pub fn cases(default: u32) -> u32 {
    std::env::var("CRAFT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner of `cases(default)` inputs that writes no regression files.
pub fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

/// One way to damage bytes.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR the byte at this position (modulo the length) with a non-zero value.
    Flip(usize, u8),
    /// Cut at this position (modulo the length + 1).
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Insert bytes at this position (modulo the length + 1).
    Insert(usize, Vec<u8>),
    /// Wrap in this many unclosed start-group tags of field 1.
    NestGroups(usize),
}

/// Any [`Mutation`], groups up to 2,999 deep.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Extend),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (1usize..3000).prop_map(Mutation::NestGroups),
    ]
}

/// The most fields [`fields`] changes in one case.
pub const FIELDS_AT_ONCE: usize = 4;
// Two wrong fields are not enough to find what only three together trip.
const _: () = assert!(FIELDS_AT_ONCE >= 3);

/// Changes to `1..=FIELDS_AT_ONCE` distinct fields out of `count` (numbered `0..count`),
/// in random order, each with a value drawn from `value`. A check that holds for each
/// wrong field alone can still fail for two together (a term that is plausible with an
/// index that is not), so a case is wrong in one field or in several at once; shrinking
/// goes towards the single-field cases.
pub fn fields<V>(count: usize, value: V) -> impl Strategy<Value = Vec<(usize, V::Value)>>
where
    V: Strategy + Clone,
{
    let most = FIELDS_AT_ONCE.min(count).max(1);
    prop::sample::subsequence((0..count).collect::<Vec<_>>(), 1..=most)
        .prop_shuffle()
        .prop_flat_map(move |picked| {
            let n = picked.len();
            (Just(picked), prop::collection::vec(value.clone(), n))
        })
        .prop_map(|(picked, values)| picked.into_iter().zip(values).collect())
}

/// `bytes` with `m` applied.
pub fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Flip(i, x) if !bytes.is_empty() => {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        Mutation::Flip(..) => {}
        Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
        Mutation::Extend(b) => bytes.extend_from_slice(b),
        Mutation::Insert(i, b) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::NestGroups(depth) => {
            let mut wrapped = vec![0x0b; *depth];
            wrapped.extend(bytes);
            bytes = wrapped;
        }
    }
    bytes
}

/// Protobuf groups nested 100,000 deep (start-group tags of field 1, never closed).
pub fn deep_groups() -> Vec<u8> {
    vec![0x0b; DEEP_GROUPS]
}

/// How deep [`deep_groups`] nests.
pub const DEEP_GROUPS: usize = 100_000;

/// A length-delimited field 2 claiming 2^31 bytes that are not there.
pub const HUGE_LENGTH: [u8; 6] = [0x12, 0x80, 0x80, 0x80, 0x80, 0x08];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_do_what_they_say() {
        let b = vec![1, 2, 3];
        assert_eq!(apply(b.clone(), &Mutation::Flip(4, 0xff)), vec![1, 0xfd, 3]);
        assert_eq!(apply(b.clone(), &Mutation::Truncate(6)), vec![1, 2]);
        assert_eq!(
            apply(b.clone(), &Mutation::Extend(vec![9])),
            vec![1, 2, 3, 9]
        );
        assert_eq!(
            apply(b.clone(), &Mutation::Insert(1, vec![7])),
            vec![1, 7, 2, 3]
        );
        assert_eq!(
            apply(b, &Mutation::NestGroups(2)),
            vec![0x0b, 0x0b, 1, 2, 3]
        );
        assert_eq!(apply(Vec::new(), &Mutation::Flip(0, 1)), Vec::<u8>::new());
    }

    /// Cases wrong in one field and cases wrong in `FIELDS_AT_ONCE` distinct fields both
    /// come up, and no case names a field twice or one out of range.
    #[test]
    fn field_changes_touch_one_to_several_distinct_fields() {
        use proptest::strategy::ValueTree;
        let strategy = fields(12, 0u64..16);
        let mut runner = TestRunner::deterministic();
        let mut sizes = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let Ok(tree) = strategy.new_tree(&mut runner) else {
                panic!("no value generated");
            };
            let changes = tree.current();
            let mut picked: Vec<usize> = changes.iter().map(|(f, _)| *f).collect();
            assert!(picked.iter().all(|f| *f < 12), "{changes:?}");
            picked.sort_unstable();
            picked.dedup();
            assert_eq!(picked.len(), changes.len(), "a field twice: {changes:?}");
            sizes.insert(changes.len());
        }
        assert_eq!(
            sizes,
            (1..=FIELDS_AT_ONCE).collect(),
            "fields changed per case"
        );
        // Fewer fields than the most at once: every one of them, at most.
        let mut runner = TestRunner::deterministic();
        for _ in 0..200 {
            let Ok(tree) = fields(2, 0u64..16).new_tree(&mut runner) else {
                panic!("no value generated");
            };
            assert!((1..=2).contains(&tree.current().len()));
        }
    }
}
