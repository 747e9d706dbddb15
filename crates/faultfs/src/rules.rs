//! What to inject where: a [`FaultSet`] is a list of [`FaultRule`]s, each selecting
//! operations by kind ([`Op`]) and by path (a glob on the path relative to the mount),
//! and saying what happens to them: a delay, an error, flipped bits in the data read.
//!
//! The JSON form is what the `faultfs` binary's control file holds:
//!
//! ```json
//! { "rules": [
//!     { "path": "*.sst", "ops": ["read"], "corrupt_bits": 1 },
//!     { "path": "**", "ops": ["fsync"], "error": "EIO" },
//!     { "path": "*.log", "ops": ["write"], "error": "ENOSPC", "probability": 0.5 },
//!     { "ops": ["read", "write", "fsync"], "delay_ms": 500 }
//! ] }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::FaultFsError;

/// A kind of filesystem operation, as rules select them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Reading file data (`read`, `pread`).
    Read,
    /// Changing file data: `write`, `fallocate`, truncation (`setattr` with a size).
    Write,
    /// `fsync` and `fdatasync` of a file, `fsync` of a directory.
    Fsync,
    /// Opening an existing file or directory.
    Open,
    /// Creating a file (`open` with `O_CREAT`), a directory, a link or a node.
    Create,
    /// `unlink`, `rmdir`.
    Remove,
    /// `rename`.
    Rename,
    /// Everything else: lookup, getattr, setattr (but truncation), readdir, statfs,
    /// access, readlink.
    Metadata,
}

impl Op {
    /// Every kind, in declaration order.
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Write,
        Op::Fsync,
        Op::Open,
        Op::Create,
        Op::Remove,
        Op::Rename,
        Op::Metadata,
    ];

    /// The name used in JSON, e.g. `fsync`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Fsync => "fsync",
            Op::Open => "open",
            Op::Create => "create",
            Op::Remove => "remove",
            Op::Rename => "rename",
            Op::Metadata => "metadata",
        }
    }

    /// Position in [`Op::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The error a rule makes an operation fail with (written as its C name in JSON).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InjectedError {
    /// Input/output error: a failing disk.
    EIO,
    /// No space left on device.
    ENOSPC,
    /// Read-only filesystem (what ext4 turns into after `errors=remount-ro`).
    EROFS,
    /// Disk quota exceeded.
    EDQUOT,
}

impl InjectedError {
    /// The errno value.
    pub fn errno(self) -> i32 {
        match self {
            InjectedError::EIO => nix::libc::EIO,
            InjectedError::ENOSPC => nix::libc::ENOSPC,
            InjectedError::EROFS => nix::libc::EROFS,
            InjectedError::EDQUOT => nix::libc::EDQUOT,
        }
    }
}

fn any_path() -> String {
    "**".to_owned()
}

fn always() -> f64 {
    1.0
}

fn is_any_path(p: &str) -> bool {
    p == "**"
}

fn is_always(p: &f64) -> bool {
    *p >= 1.0
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One rule: which operations (kind and path) and what is done to them.
///
/// Each matching operation is, with [`FaultRule::probability`], delayed by
/// [`FaultRule::delay_ms`], failed with [`FaultRule::error`] (without being performed), and,
/// for reads, has [`FaultRule::corrupt_bits`] random bits of the returned data flipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Glob on the path relative to the mount (no leading `/`): `*` matches any run of
    /// characters but `/`, `**` any run including `/`, `?` one character but `/`. A
    /// pattern without `/` is matched against the file name alone (`*.sst` matches
    /// `db/000012.sst`). Default `**`: everything.
    #[serde(default = "any_path", skip_serializing_if = "is_any_path")]
    pub path: String,
    /// The kinds of operation the rule applies to. Empty (the default): all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<Op>,
    /// Milliseconds each matching operation waits before it is performed. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// The error matching operations fail with, without being performed. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InjectedError>,
    /// Bits flipped, at random positions, in the data each matching read returns (the
    /// file itself is untouched). Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupt_bits: u32,
    /// Chance, from 0 to 1, that the rule fires for a matching operation. Default 1.
    #[serde(default = "always", skip_serializing_if = "is_always")]
    pub probability: f64,
}

impl FaultRule {
    /// A rule on the paths matching `glob`, for every kind of operation, that does
    /// nothing yet: add effects with the other builders.
    pub fn on(glob: impl Into<String>) -> Self {
        Self {
            path: glob.into(),
            ops: Vec::new(),
            delay_ms: 0,
            error: None,
            corrupt_bits: 0,
            probability: 1.0,
        }
    }

    /// Restricts the rule to these kinds of operation.
    pub fn ops(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.ops = ops.into_iter().collect();
        self
    }

    /// Delays matching operations by `delay` (whole milliseconds).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Fails matching operations with `error`.
    pub fn fail(mut self, error: InjectedError) -> Self {
        self.error = Some(error);
        self
    }

    /// Flips `bits` random bits in the data of each matching read.
    pub fn corrupt(mut self, bits: u32) -> Self {
        self.corrupt_bits = bits;
        self
    }

    /// Fires for a matching operation with chance `p` (0 to 1).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    /// Whether the rule selects operation `op` on `path`.
    pub fn matches(&self, op: Op, path: &str) -> bool {
        (self.ops.is_empty() || self.ops.contains(&op)) && glob_matches(&self.path, path)
    }

    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "rule on {:?}: probability {} is not between 0 and 1",
                self.path, self.probability
            ));
        }
        Ok(())
    }
}

/// The rules in force. Empty: a plain passthrough.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSet {
    /// The rules; every rule that matches an operation applies.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

/// What the rules decided for one operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Decision {
    /// Sum of the delays of the rules that fired.
    pub(crate) delay: Duration,
    /// The error of the first rule that fired with one.
    pub(crate) error: Option<InjectedError>,
    /// Sum of the bits to flip (reads only).
    pub(crate) corrupt_bits: u32,
}

impl FaultSet {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// This set with `rule` added.
    pub fn with(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Parses the JSON form; empty (or all-whitespace) text is no faults. `origin` names
    /// where the text came from in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, FaultFsError> {
        let invalid = |reason: String| FaultFsError::InvalidRules {
            origin: origin.to_owned(),
            reason,
        };
        if text.trim().is_empty() {
            return Ok(Self::none());
        }
        let set: FaultSet = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for rule in &set.rules {
            rule.validate().map_err(invalid)?;
        }
        Ok(set)
    }

    /// The JSON form, as [`FaultSet::from_json`] reads it.
    pub fn to_json(&self) -> String {
        // A FaultSet has only strings, numbers and enums: it always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Decides what happens to `op` on `path`; `chance` draws a uniform number in [0, 1)
    /// for each matching rule that is not certain.
    pub(crate) fn decide(&self, op: Op, path: &str, mut chance: impl FnMut() -> f64) -> Decision {
        let mut d = Decision::default();
        for rule in self.rules.iter().filter(|r| r.matches(op, path)) {
            if rule.probability < 1.0 && chance() >= rule.probability {
                continue;
            }
            d.delay += Duration::from_millis(rule.delay_ms);
            if d.error.is_none() {
                d.error = rule.error;
            }
            if op == Op::Read {
                d.corrupt_bits = d.corrupt_bits.saturating_add(rule.corrupt_bits);
            }
        }
        d
    }
}

/// Whether `path` (relative, `/`-separated) matches `pattern`; see [`FaultRule::path`].
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches('/');
    let path = path.trim_start_matches('/');
    if pattern.contains('/') {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => {
            // `**/` also matches no directory at all.
            if let [b'/', after @ ..] = rest {
                if glob(after, s) {
                    return true;
                }
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        [b'*', rest @ ..] => {
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        [b'?', rest @ ..] => matches!(s.first(), Some(c) if *c != b'/') && glob(rest, &s[1..]),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn globs() {
        let yes = [
            ("**", ""),
            ("**", "db/000012.sst"),
            ("*", "db/LOCK"),
            ("*.sst", "db/000012.sst"),
            ("*.sst", "000012.sst"),
            ("db/*.log", "db/000003.log"),
            ("**/*.log", "000003.log"),
            ("**/*.log", "a/b/000003.log"),
            ("db/**", "db/a/b"),
            ("MANIFEST-??????", "db/MANIFEST-000005"),
            ("/db/LOCK", "db/LOCK"),
        ];
        for (p, s) in yes {
            assert!(glob_matches(p, s), "{p} should match {s}");
        }
        let no = [
            ("*.sst", "db/000012.sst.tmp"),
            ("db/*.log", "db/x/000003.log"),
            ("db/*", "other/db/x"),
            ("?", ""),
            ("LOCK", "db/LOCK2"),
        ];
        for (p, s) in no {
            assert!(!glob_matches(p, s), "{p} should not match {s}");
        }
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let text = r#"{ "rules": [
            { "path": "*.sst", "ops": ["read"], "corrupt_bits": 1 },
            { "ops": ["fsync"], "error": "EIO" },
            { "path": "*.log", "ops": ["write"], "error": "ENOSPC", "probability": 0.5 },
            { "delay_ms": 500 }
        ] }"#;
        let set = FaultSet::from_json(text, "test").unwrap();
        assert_eq!(set.rules.len(), 4);
        assert_eq!(set.rules[1].path, "**");
        assert_eq!(set.rules[3].ops, Vec::<Op>::new());
        assert_eq!(set.rules[0].probability, 1.0);
        assert_eq!(FaultSet::from_json(&set.to_json(), "again").unwrap(), set);
        assert_eq!(
            FaultSet::from_json(" \n", "empty").unwrap(),
            FaultSet::none()
        );
        assert_eq!(
            FaultSet::from_json("{}", "empty").unwrap(),
            FaultSet::none()
        );
    }

    #[test]
    fn invalid_rules_are_refused_with_their_origin() {
        for text in [
            r#"{ "rules": [ { "error": "EPERM" } ] }"#,
            r#"{ "rules": [ { "probability": 2 } ] }"#,
            r#"{ "rules": [ { "pth": "x" } ] }"#,
            "{ not json",
        ] {
            let e = FaultSet::from_json(text, "faults.json").unwrap_err();
            assert!(e.to_string().contains("faults.json"), "{e}");
        }
    }

    #[test]
    fn decisions_combine_matching_rules() {
        let set = FaultSet::none()
            .with(
                FaultRule::on("**")
                    .ops([Op::Read, Op::Write])
                    .delay(Duration::from_millis(5)),
            )
            .with(FaultRule::on("*.sst").ops([Op::Read]).corrupt(2))
            .with(FaultRule::on("*.sst").fail(InjectedError::EIO))
            .with(FaultRule::on("*").fail(InjectedError::ENOSPC))
            .with(FaultRule::on("never").probability(0.0).corrupt(7));
        let d = set.decide(Op::Read, "db/1.sst", || 0.5);
        assert_eq!(
            d,
            Decision {
                delay: Duration::from_millis(5),
                error: Some(InjectedError::EIO),
                corrupt_bits: 2,
            }
        );
        let d = set.decide(Op::Fsync, "db/1.log", || 0.5);
        assert_eq!(d.error, Some(InjectedError::ENOSPC));
        assert_eq!((d.delay, d.corrupt_bits), (Duration::ZERO, 0));
        // Corruption applies to reads only.
        let d = set.decide(Op::Write, "db/1.sst", || 0.5);
        assert_eq!(d.corrupt_bits, 0);
        assert_eq!(set.decide(Op::Read, "never", || 0.0).corrupt_bits, 0);
    }
}
