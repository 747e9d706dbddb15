//! Node names and raft ids.
//!
//! hraftd names nodes with strings (`-id node1`, `"leaderId": "1"`); raft numbers them
//! with non-zero `u64`s. The mapping from a name to a raft id is fixed, so every node
//! computes the same id for the same name without asking anyone:
//!
//! - a name that is a decimal integer from 1 to 2⁶³−1 (`"1"`, `"42"`) is that number;
//! - any other name (`"node1"`, `"db-east"`) is the SipHash-2-4 of its UTF-8 bytes under
//!   the all-zero key, with the top bit set. Hashed ids are therefore at least 2⁶³ and
//!   never collide with numeric ones; two different hashed names colliding is refused
//!   where the names meet (a `/setup` listing both).
//!
//! Names are trimmed of surrounding whitespace; an empty name is refused.

use std::hash::Hasher as _;

/// The raft id a node name maps to (see the module docs), or why the name is unusable.
pub fn raft_id(name: &str) -> Result<u64, IdError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(IdError::Empty);
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return match name.parse::<u64>() {
            Ok(0) => Err(IdError::Zero),
            Ok(n) if n < HASHED => Ok(n),
            _ => Err(IdError::TooLarge {
                name: name.to_string(),
            }),
        };
    }
    let mut hasher = siphasher::sip::SipHasher24::new_with_keys(0, 0);
    hasher.write(name.as_bytes());
    Ok(hasher.finish() | HASHED)
}

/// The top bit: set on every hashed id, clear on every numeric one.
const HASHED: u64 = 1 << 63;

/// Why a node name cannot be a raft id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The name is empty.
    #[error("a node id must not be empty")]
    Empty,
    /// The name is the number 0, which raft reserves.
    #[error("node id 0 is reserved by raft")]
    Zero,
    /// A numeric name at or above 2⁶³ (that range is kept for hashed names).
    #[error("numeric node id {name} is too large (at most 9223372036854775807)")]
    TooLarge {
        /// The name given.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn numeric_names_are_their_number() {
        assert_eq!(raft_id("1"), Ok(1));
        assert_eq!(raft_id(" 42 "), Ok(42));
        assert_eq!(raft_id("9223372036854775807"), Ok(u64::MAX >> 1));
        assert_eq!(raft_id("0"), Err(IdError::Zero));
        assert!(matches!(
            raft_id("9223372036854775808"),
            Err(IdError::TooLarge { .. })
        ));
        assert!(matches!(
            raft_id("99999999999999999999999"),
            Err(IdError::TooLarge { .. })
        ));
        assert_eq!(raft_id("  "), Err(IdError::Empty));
    }

    #[test]
    fn other_names_hash_into_the_upper_half_and_stay_fixed() {
        let a = raft_id("node1").unwrap();
        assert!(a >= HASHED);
        assert_eq!(raft_id("node1").unwrap(), a);
        assert_ne!(raft_id("node2").unwrap(), a);
        // "-1" and "+1" are names, not numbers.
        assert!(raft_id("-1").unwrap() >= HASHED);
        // Pinned (computed independently from the SipHash paper's algorithm): the
        // mapping is documented and must never change, or a data directory set up by
        // one version would not be recognised by the next.
        assert_eq!(a, 0xde9b_e232_75d9_08a8);
    }
}
