//! The replicated cache: a state-based CRDT mapping each address to its newest
//! `(revision, value or tombstone)`; merge keeps the higher revision.
//!
//! Merge is commutative, associative and idempotent, so duplicates, reordering and several
//! sources (origin, peer edges) are harmless. The state also maintains its LtHash digest
//! incrementally, so `digest()` is O(1) and every apply is O(changed keys).

use std::collections::BTreeMap;

use crate::addr::Address;
use crate::digest::{Digest, LtHash};
use crate::model::{Delta, EntryState, Revision};

type Keys = BTreeMap<String, EntryState>;
type Envs = BTreeMap<String, Keys>;

/// The state an edge (or the origin) holds: addresses to entries, the revision, the digest.
#[derive(Debug, Clone, Default)]
pub struct CacheState {
    apps: BTreeMap<String, Envs>,
    revision: Revision,
    hash: LtHash,
    len: usize,
}

impl PartialEq for CacheState {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision && self.apps == other.apps
    }
}

/// Decides which of two states of one address survives a merge: the higher revision, and on a
/// tie (which an honest origin never produces) the greater state, so the choice stays
/// commutative whatever the input.
fn wins(new: &EntryState, old: &EntryState) -> bool {
    (new.revision, new.version, &new.value) > (old.revision, old.version, &old.value)
}

impl CacheState {
    /// An empty state at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest revision merged in.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Sets the revision (used when restoring from disk).
    pub fn set_revision(&mut self, revision: Revision) {
        self.revision = revision;
    }

    /// The digest of the whole state.
    pub fn digest(&self) -> Digest {
        self.hash.finish()
    }

    /// The LtHash lanes, for persisting.
    pub fn lthash(&self) -> &LtHash {
        &self.hash
    }

    /// Number of addresses held, tombstones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry at an address, tombstones included.
    pub fn get(&self, app: &str, env: &str, key: &str) -> Option<&EntryState> {
        self.apps.get(app)?.get(env)?.get(key)
    }

    /// The live (non-tombstone) entry at an address.
    pub fn get_live(&self, app: &str, env: &str, key: &str) -> Option<&EntryState> {
        self.get(app, env, key).filter(|e| !e.is_tombstone())
    }

    /// All entries of one namespace, tombstones included, sorted by key.
    pub fn namespace(&self, app: &str, env: &str) -> Option<&BTreeMap<String, EntryState>> {
        self.apps.get(app)?.get(env)
    }

    /// Every namespace `(app, env)` holding an entry, sorted.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.apps
            .iter()
            .flat_map(|(app, envs)| envs.keys().map(move |env| (app.as_str(), env.as_str())))
    }

    /// Every `(address, entry)`, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = (Address, &EntryState)> + '_ {
        self.apps.iter().flat_map(|(app, envs)| {
            envs.iter().flat_map(move |(env, keys)| {
                keys.iter().map(move |(key, e)| {
                    (
                        Address {
                            app: app.clone(),
                            env: env.clone(),
                            key: key.clone(),
                        },
                        e,
                    )
                })
            })
        })
    }

    /// Merges one address's state; returns whether it changed anything.
    pub fn merge_entry(&mut self, address: &Address, entry: EntryState) -> bool {
        self.merge_entry_hashed(address, entry, true)
    }

    fn merge_entry_hashed(&mut self, address: &Address, entry: EntryState, rehash: bool) -> bool {
        if entry.revision > self.revision {
            self.revision = entry.revision;
        }
        let keys = self
            .apps
            .entry(address.app.clone())
            .or_default()
            .entry(address.env.clone())
            .or_default();
        match keys.get_mut(&address.key) {
            Some(old) => {
                if !wins(&entry, old) {
                    return false;
                }
                if rehash {
                    self.hash.remove(address, old);
                    self.hash.insert(address, &entry);
                }
                *old = entry;
            }
            None => {
                if rehash {
                    self.hash.insert(address, &entry);
                }
                keys.insert(address.key.clone(), entry);
                self.len += 1;
            }
        }
        true
    }

    /// Merges a delta: every change at the delta's revision.
    pub fn apply_delta(&mut self, delta: &Delta) {
        for change in &delta.changes {
            self.merge_entry(&change.address, delta.entry(change));
        }
        if delta.revision > self.revision {
            self.revision = delta.revision;
        }
    }

    /// Merges deltas whose result the caller has already hashed: `hash_after` must be the
    /// LtHash of this state with the deltas merged. The store computes exactly that while it
    /// checks a delta against its signed digest, so publishing need not expand every changed
    /// entry a second time. Debug builds recompute and compare.
    pub fn apply_deltas_hashed<'a>(
        &mut self,
        deltas: impl IntoIterator<Item = &'a Delta>,
        hash_after: &LtHash,
    ) {
        #[cfg(debug_assertions)]
        let mut check = self.hash.clone();
        for delta in deltas {
            for change in &delta.changes {
                #[cfg(debug_assertions)]
                self.hash_merge(&mut check, &change.address, &delta.entry(change));
                self.merge_entry_hashed(&change.address, delta.entry(change), false);
            }
            if delta.revision > self.revision {
                self.revision = delta.revision;
            }
        }
        #[cfg(debug_assertions)]
        debug_assert!(
            check == *hash_after,
            "apply_deltas_hashed: hash_after is not this state's"
        );
        self.hash = hash_after.clone();
    }

    /// The digest the state would have after merging `delta`, without changing it.
    pub fn digest_after(&self, delta: &Delta) -> Digest {
        let mut hash = self.hash.clone();
        for change in &delta.changes {
            self.hash_merge(&mut hash, &change.address, &delta.entry(change));
        }
        hash.finish()
    }

    /// Updates `hash` (a hash of this state) as merging `new` at `address` would change it.
    fn hash_merge(&self, hash: &mut LtHash, address: &Address, new: &EntryState) {
        match self.get(&address.app, &address.env, &address.key) {
            Some(old) if !wins(new, old) => {}
            Some(old) => {
                hash.remove(address, old);
                hash.insert(address, new);
            }
            None => hash.insert(address, new),
        }
    }

    /// Merges another whole state (the CRDT join).
    pub fn merge(&mut self, other: &CacheState) {
        for (address, entry) in other.iter() {
            self.merge_entry(&address, entry.clone());
        }
        if other.revision > self.revision {
            self.revision = other.revision;
        }
    }

    /// Builds a state from `(address, entry)` pairs at a revision.
    pub fn from_entries(
        revision: Revision,
        entries: impl IntoIterator<Item = (Address, EntryState)>,
    ) -> Self {
        let mut state = Self::new();
        for (address, entry) in entries {
            state.merge_entry(&address, entry);
        }
        state.revision = revision;
        state
    }
}
