//! The replicated application of the simulation: a tiny key-value store that also
//! remembers every command it applied, so checkers can compare replicas entry by entry.
//!
//! Snapshots are a hand-written encoding of the whole state (no serde): restoring one
//! must give back exactly the state that was saved.

use std::collections::BTreeMap;

use craft_core::{Committed, CommittedKind};

/// A command: set `key` to `value`. Every proposal of a run carries a unique value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Which key to set.
    pub key: u64,
    /// The unique value.
    pub value: u64,
}

impl Command {
    /// Wire form: `"k{key}=v{value}"`.
    pub fn encode(&self) -> Vec<u8> {
        format!("k{}=v{}", self.key, self.value).into_bytes()
    }

    /// Parses the wire form.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let (k, v) = text
            .split_once('=')
            .ok_or_else(|| format!("no '=' in command {text:?}"))?;
        let parse = |s: &str, prefix: char| {
            s.strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("bad command {text:?}"))
        };
        Ok(Self {
            key: parse(k, 'k')?,
            value: parse(v, 'v')?,
        })
    }
}

/// State of one replica's application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    /// Index of the last applied entry of any kind.
    pub applied_index: u64,
    /// Every command applied, in order, with its log index.
    pub applied: Vec<(u64, Vec<u8>)>,
    /// Latest value of each key.
    pub values: BTreeMap<u64, u64>,
}

impl KvStateMachine {
    /// Applies one committed entry; entries must come in index order without gaps.
    pub fn apply(&mut self, entry: &Committed) -> Result<(), String> {
        if entry.index != self.applied_index + 1 {
            return Err(format!(
                "applied index {} after {}: entries must be applied in order without gaps",
                entry.index, self.applied_index
            ));
        }
        self.applied_index = entry.index;
        if let CommittedKind::Normal { data, .. } = &entry.kind {
            let cmd = Command::decode(data)?;
            self.values.insert(cmd.key, cmd.value);
            self.applied.push((entry.index, data.clone()));
        }
        Ok(())
    }

    /// Serialises the whole state.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.applied_index);
        put_u64(&mut out, self.applied.len() as u64);
        for (index, data) in &self.applied {
            put_u64(&mut out, *index);
            put_u64(&mut out, data.len() as u64);
            out.extend_from_slice(data);
        }
        put_u64(&mut out, self.values.len() as u64);
        for (k, v) in &self.values {
            put_u64(&mut out, *k);
            put_u64(&mut out, *v);
        }
        out
    }

    /// Rebuilds a state from [`KvStateMachine::snapshot`] output.
    pub fn restore(data: &[u8]) -> Result<Self, String> {
        let mut r = Reader { data, pos: 0 };
        let mut sm = Self {
            applied_index: r.u64()?,
            ..Self::default()
        };
        for _ in 0..r.u64()? {
            let index = r.u64()?;
            let len = r.u64()? as usize;
            sm.applied.push((index, r.bytes(len)?.to_vec()));
        }
        for _ in 0..r.u64()? {
            let k = r.u64()?;
            sm.values.insert(k, r.u64()?);
        }
        if r.pos != data.len() {
            return Err(format!("{} trailing bytes in snapshot", data.len() - r.pos));
        }
        Ok(sm)
    }
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, len: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| format!("snapshot truncated at byte {}", self.pos))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let bytes = self.bytes(8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| "short read")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use craft_core::{Committed, CommittedKind};

    use super::{Command, KvStateMachine};

    #[test]
    fn snapshot_restores_the_same_state() {
        let mut sm = KvStateMachine::default();
        for (index, value) in [(1, 10), (2, 11)] {
            let data = Command { key: 3, value }.encode();
            let kind = CommittedKind::Normal {
                data,
                context: Vec::new(),
            };
            sm.apply(&Committed {
                index,
                term: 1,
                kind,
            })
            .unwrap();
        }
        let restored = KvStateMachine::restore(&sm.snapshot()).unwrap();
        assert_eq!(restored, sm);
        assert_eq!(restored.values[&3], 11);
        assert!(KvStateMachine::restore(&sm.snapshot()[..5]).is_err());
    }
}
