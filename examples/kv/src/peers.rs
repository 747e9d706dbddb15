//! Peer addresses: the `--peers`/`--hpeers` lists given at start, and an address book
//! that combines them with the addresses members announced when they joined.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::store::KvReader;

/// A list of `id=host:port` pairs, e.g. `1=127.0.0.1:7151,2=127.0.0.1:8151`; ids are
/// node names or numbers, mapped as [`crate::ids`] documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerList(pub BTreeMap<u64, String>);

/// Why a peer list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerListError {
    /// An item is not `id=address`.
    #[error("{item:?} is not id=host:port")]
    NotAPair {
        /// The offending item.
        item: String,
    },
    /// The id is not a usable node name.
    #[error("{id:?}: {reason}")]
    BadId {
        /// The offending id.
        id: String,
        /// Why.
        reason: crate::ids::IdError,
    },
    /// The same id appears twice.
    #[error("raft id {0} is listed twice")]
    Duplicate(u64),
}

impl FromStr for PeerList {
    type Err = PeerListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut peers = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((id, addr)) = item.split_once('=') else {
                return Err(PeerListError::NotAPair { item: item.into() });
            };
            let (id, addr) = (id.trim(), addr.trim());
            if addr.is_empty() {
                return Err(PeerListError::NotAPair { item: item.into() });
            }
            let id = crate::ids::raft_id(id).map_err(|reason| PeerListError::BadId {
                id: id.into(),
                reason,
            })?;
            if peers.insert(id, addr.to_string()).is_some() {
                return Err(PeerListError::Duplicate(id));
            }
        }
        Ok(Self(peers))
    }
}

impl fmt::Display for PeerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (id, addr) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{id}={addr}")?;
        }
        Ok(())
    }
}

/// The gRPC endpoint URI of a raft address: `host:port` gets an `http://` scheme.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Finds members' HTTP addresses, for redirecting clients to the leader. Addresses
/// given at start win over those announced at join time.
#[derive(Debug, Clone)]
pub struct AddressBook {
    /// HTTP addresses given at start (including this node's own).
    configured: Arc<BTreeMap<u64, String>>,
    /// Replicated state, holding the addresses joined members announced.
    learned: KvReader,
}

impl AddressBook {
    /// A book over `configured` HTTP addresses and the replicated member list.
    pub fn new(configured: BTreeMap<u64, String>, learned: KvReader) -> Self {
        Self {
            configured: Arc::new(configured),
            learned,
        }
    }

    /// The HTTP address (`host:port`) of member `id`, if known.
    pub fn http_addr(&self, id: u64) -> Option<String> {
        self.configured
            .get(&id)
            .cloned()
            .or_else(|| self.learned.member(id).and_then(|m| m.http))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn parses_and_prints_a_peer_list() {
        let list: PeerList = "1=127.0.0.1:7151, 2=127.0.0.1:8151,".parse().unwrap();
        assert_eq!(list.0.len(), 2);
        assert_eq!(list.0[&2], "127.0.0.1:8151");
        assert_eq!(list.to_string(), "1=127.0.0.1:7151,2=127.0.0.1:8151");
        assert_eq!("".parse::<PeerList>().unwrap(), PeerList::default());
    }

    #[test]
    fn rejects_malformed_peer_lists() {
        assert!(matches!(
            "127.0.0.1:7151".parse::<PeerList>(),
            Err(PeerListError::NotAPair { .. })
        ));
        assert!(matches!(
            "0=a:1".parse::<PeerList>(),
            Err(PeerListError::BadId { .. })
        ));
        // A name maps to its raft id, as `--id` does.
        let named: PeerList = "node1=a:1".parse().unwrap();
        assert_eq!(
            named.0.keys().copied().collect::<Vec<_>>(),
            vec![crate::ids::raft_id("node1").unwrap()]
        );
        assert_eq!(
            "1=a:1,1=b:2".parse::<PeerList>(),
            Err(PeerListError::Duplicate(1))
        );
        assert!(matches!(
            "1=".parse::<PeerList>(),
            Err(PeerListError::NotAPair { .. })
        ));
    }

    #[test]
    fn endpoint_uri_adds_a_scheme_once() {
        assert_eq!(endpoint_uri("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(endpoint_uri("http://h:1"), "http://h:1");
    }
}
