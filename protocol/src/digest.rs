//! The state digest `D(R)`: a homomorphic multiset hash (LtHash16, 1024 lanes of u16) over
//! every `(address, entry)` pair, so that both origin and edges update it in O(changed keys).
//!
//! Adding an element adds its 2 KiB BLAKE3-XOF expansion lane-wise modulo 2^16; removing
//! subtracts it. The order of additions does not matter, which is what lets an edge check its
//! state against the origin's signed digest after applying deltas or a snapshot.

use serde::{Deserialize, Serialize};

use crate::addr::Address;
use crate::model::{EntryState, Hash32};

/// Number of u16 lanes (LtHash16 as in Lewi et al., "Securing Update Propagation with
/// Homomorphic Hashing").
pub const LANES: usize = 1024;

/// The running multiset hash. Clone is cheap enough (2 KiB) for staging an apply.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash {
    lanes: Box<[u16; LANES]>,
}

impl Default for LtHash {
    fn default() -> Self {
        Self {
            lanes: Box::new([0; LANES]),
        }
    }
}

impl std::fmt::Debug for LtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtHash({})", self.finish())
    }
}

fn expand(address: &Address, entry: &EntryState) -> [u16; LANES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"meridian/entry/v1");
    // Length-prefix each variable part so that distinct entries never share an encoding.
    for part in [
        address.app.as_bytes(),
        address.env.as_bytes(),
        address.key.as_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(&entry.version.0.to_le_bytes());
    hasher.update(&entry.revision.0.to_le_bytes());
    match &entry.value {
        Some(v) => {
            hasher.update(&[1]);
            hasher.update(&(v.len() as u64).to_le_bytes());
            hasher.update(v.as_bytes());
        }
        None => {
            hasher.update(&[0]);
        }
    }
    let mut bytes = [0u8; LANES * 2];
    hasher.finalize_xof().fill(&mut bytes);
    let mut lanes = [0u16; LANES];
    for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *lane = u16::from_le_bytes([pair[0], pair[1]]);
    }
    lanes
}

impl LtHash {
    /// Adds one element to the multiset.
    pub fn insert(&mut self, address: &Address, entry: &EntryState) {
        let e = expand(address, entry);
        for (lane, x) in self.lanes.iter_mut().zip(e.iter()) {
            *lane = lane.wrapping_add(*x);
        }
    }

    /// Removes one element from the multiset.
    pub fn remove(&mut self, address: &Address, entry: &EntryState) {
        let e = expand(address, entry);
        for (lane, x) in self.lanes.iter_mut().zip(e.iter()) {
            *lane = lane.wrapping_sub(*x);
        }
    }

    /// The 32-byte digest of the current multiset.
    pub fn finish(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"meridian/state/v1");
        // One update over all lanes: BLAKE3 hashes a 2 KiB buffer far faster than 1024 calls
        // of two bytes, and the byte stream (and so the digest) is the same.
        hasher.update(&self.to_bytes_array());
        Digest(Hash32(*hasher.finalize().as_bytes()))
    }

    /// The raw lanes, for persisting beside the state.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_array().to_vec()
    }

    fn to_bytes_array(&self) -> [u8; LANES * 2] {
        let mut bytes = [0u8; LANES * 2];
        for (pair, lane) in bytes.chunks_exact_mut(2).zip(self.lanes.iter()) {
            pair.copy_from_slice(&lane.to_le_bytes());
        }
        bytes
    }

    /// Reads lanes written by [`LtHash::to_bytes`]; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LANES * 2 {
            return None;
        }
        let mut lanes = Box::new([0u16; LANES]);
        for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(Self { lanes })
    }
}

/// The state digest `D(R)` that heads sign and edges report.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Digest(pub Hash32);

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Revision, Version};

    fn e(rev: u64, v: &str) -> EntryState {
        EntryState {
            version: Version(1),
            revision: Revision(rev),
            value: Some(v.into()),
        }
    }

    #[test]
    fn order_free_and_removal_inverts_insertion() {
        let a = Address::parse("a", "p", "x").unwrap();
        let b = Address::parse("a", "p", "y").unwrap();
        let mut h1 = LtHash::default();
        h1.insert(&a, &e(1, "1"));
        h1.insert(&b, &e(2, "2"));
        let mut h2 = LtHash::default();
        h2.insert(&b, &e(2, "2"));
        h2.insert(&a, &e(1, "1"));
        assert_eq!(h1.finish(), h2.finish());
        h2.remove(&b, &e(2, "2"));
        let mut h3 = LtHash::default();
        h3.insert(&a, &e(1, "1"));
        assert_eq!(h2.finish(), h3.finish());
        assert_ne!(h1.finish(), h3.finish());
        assert_eq!(LtHash::from_bytes(&h1.to_bytes()).unwrap(), h1);
        assert!(LtHash::from_bytes(&[0u8; 3]).is_none());
    }

    #[test]
    fn tombstones_and_values_differ() {
        let a = Address::parse("a", "p", "x").unwrap();
        let mut h1 = LtHash::default();
        h1.insert(
            &a,
            &EntryState {
                version: Version(1),
                revision: Revision(1),
                value: None,
            },
        );
        let mut h2 = LtHash::default();
        h2.insert(&a, &e(1, "null"));
        assert_ne!(h1.finish(), h2.finish());
    }
}
