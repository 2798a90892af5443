//! The data model: revisions, versions, entries, tombstones and deltas (DESIGN §3).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::Address;

/// The largest value, in bytes of JSON text, unless a deployment configures otherwise.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The global commit counter: +1 per committed write or transaction.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The per-address change counter: 1 on create, +1 on each change.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version(pub u64);

/// A value as canonical JSON text. The origin validates it before commit, so every holder can
/// embed it in an answer without parsing it again.
pub type JsonText = Arc<str>;

/// What an address holds at some revision: a value, or a tombstone (`value == None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryState {
    /// Per-address version.
    pub version: Version,
    /// The revision that wrote this state.
    pub revision: Revision,
    /// The JSON value, or `None` for a tombstone.
    pub value: Option<JsonText>,
}

impl EntryState {
    /// Whether this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// One address's change inside a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Which address changed.
    pub address: Address,
    /// Its new version.
    pub version: Version,
    /// Its new value, or `None` when deleted.
    pub value: Option<JsonText>,
}

/// Everything revision `revision` changed relative to `revision - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The revision this delta produces.
    pub revision: Revision,
    /// The changed addresses, each at most once, sorted by address.
    pub changes: Vec<Change>,
}

impl Delta {
    /// The entry state a change takes once this delta is applied.
    pub fn entry(&self, change: &Change) -> EntryState {
        EntryState {
            version: change.version,
            revision: self.revision,
            value: change.value.clone(),
        }
    }

    /// The hash that a signed head commits to: BLAKE3 over a domain tag and the postcard bytes.
    pub fn hash(&self) -> Hash32 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"meridian/delta/v1");
        // Encoding a value we built ourselves cannot fail: postcard only fails on I/O or on
        // types serde cannot express, and Delta has neither.
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        hasher.update(&bytes);
        Hash32(*hasher.finalize().as_bytes())
    }
}

/// A 32-byte hash.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// Lower-case hex, for logs, status answers and reports.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Hash32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}
