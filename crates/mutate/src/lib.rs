//! craft-mutate: what the hostile-input tests (`tests/hostile.rs` of each crate) share.
//! [`mutation`] damages a valid encoding the way a faulty link or a hostile peer would
//! (bytes flipped, cut short, extended, inserted, wrapped in nested protobuf groups),
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
}
