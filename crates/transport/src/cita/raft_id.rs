//! Raft ids of CITA-Cloud nodes.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// The raft id of the node with address `addr`: SipHash-1-3 with both keys 0 over the
/// raw address bytes, with no length prefix — what the existing raft service computes
/// with `DefaultHasher::new()` + `write(addr)` + `finish()`. Spelled out here because
/// std does not promise that algorithm forever.
pub fn raft_id(addr: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(0, 0);
    h.write(addr);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn matches_std_default_hasher_today() {
        // std's DefaultHasher is SipHash-1-3 with zero keys at the time of writing;
        // if this ever fails, std changed, and our explicit hash is the one to keep.
        for addr in [
            &[][..],
            &[0u8; 20][..],
            &[0xab; 20][..],
            b"0123456789abcdefghij",
        ] {
            let mut std_hasher = std::collections::hash_map::DefaultHasher::new();
            std_hasher.write(addr);
            assert_eq!(raft_id(addr), std_hasher.finish());
        }
    }

    #[test]
    fn known_value() {
        // Pinned so a change of the siphasher crate cannot silently change ids.
        assert_ne!(raft_id(&[0u8; 20]), raft_id(&[1u8; 20]));
        assert_eq!(raft_id(b""), 0xd1fb_a762_150c_532c_u64);
    }
}
