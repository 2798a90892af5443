//! [`SignedState`]: the state at the newest signed revision, durable in a [`Backend`] and
//! readable from memory.
//!
//! Writes go in two steps. `apply_delta`/`install_snapshot` check and persist a whole revision
//! in one atomic batch; `publish` makes the batches durable and only then shows them to readers.
//! So readers never see a revision that a crash could take away, which is what keeps an edge
//! monotonic across restarts, and a crash at any moment leaves the last whole revision on disk.
//!
//! Key layout (one tree): `e<app>\0<env>\0<key>` → entry, `m/…` → meta,
//! `d<be64 last><be64 first>` → the deltas of revisions `first..=last`, stored together. A delta
//! applied alone is a group of one; the deltas of one batch ([`SignedState::begin_batch`]) are
//! one group, so a batch of N revisions costs one delta record, not N (the backend's cost is
//! mostly per record). Groups are kept whole: the window trims a group once all of it is older
//! than the window.
//!
//! Values are stored in the entries and deltas themselves (an edge), or, for a state opened with
//! a [`ValueLookup`] (the origin, which keeps every value in its change history anyway), entries
//! and deltas store references (address, version, deleted) and values are read back through the
//! lookup: one stored copy of each value instead of three. A state opened with kept entries
//! ([`SignedState::open_with_kept_entries`], the origin again, whose history records also carry
//! each change's version and revision) stores no entry records at all and lists its entries
//! from those records at open: one stored record per change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use meridian_protocol::auth::AuthIndex;
use meridian_protocol::flags::FlagIndex;
use meridian_protocol::{
    Address, CacheState, Change, Delta, Digest, EntryState, JsonText, LtHash, Revision,
    SignedDelta, SignedHead, Version,
};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, Write, WriteBack};

const META_REVISION: &[u8] = b"m/revision";
const META_LTHASH: &[u8] = b"m/lthash";
const META_HEAD: &[u8] = b"m/head";
const ENTRY_PREFIX: u8 = b'e';
/// The first byte of every key written through the `*_with` and `write_extra` methods: the
/// store's own keys never start with it.
pub const EXTRA_PREFIX: u8 = b'x';
const DELTA_PREFIX: u8 = b'd';

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Stored bytes did not decode.
    #[error("corrupt record {what}: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The cause.
        #[source]
        source: postcard::Error,
    },
    /// Stored state does not hash to its signed head's digest.
    #[error("stored state at revision {revision} does not match its signed digest")]
    DigestMismatchOnLoad {
        /// The stored revision.
        revision: Revision,
    },
    /// A delta that does not follow the current revision.
    #[error("delta for revision {got} does not follow revision {have}")]
    OutOfOrder {
        /// Revision held.
        have: Revision,
        /// Revision offered.
        got: Revision,
    },
    /// Applying the delta would not produce the digest its head signs.
    #[error("delta for revision {0} does not produce its signed digest")]
    DigestMismatch(Revision),
    /// A snapshot whose entries do not hash to its head's digest.
    #[error("snapshot at revision {0} does not match its signed digest")]
    SnapshotMismatch(Revision),
    /// Stored record was not valid (an address outside the grammar, or a bad length).
    #[error("invalid stored record {0}")]
    Invalid(&'static str),
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Encoding our own in-memory types cannot fail (no I/O, no unsupported serde shapes).
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<'a, T: serde::Deserialize<'a>>(what: &'static str, b: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|source| StoreError::Corrupt { what, source })
}

fn entry_key(a: &Address) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + a.app.len() + a.env.len() + a.key.len());
    k.push(ENTRY_PREFIX);
    k.extend_from_slice(a.app.as_bytes());
    k.push(0);
    k.extend_from_slice(a.env.as_bytes());
    k.push(0);
    k.extend_from_slice(a.key.as_bytes());
    k
}

fn parse_entry_key(k: &[u8]) -> Result<Address, StoreError> {
    let rest = k
        .strip_prefix(&[ENTRY_PREFIX])
        .ok_or(StoreError::Invalid("entry key"))?;
    let mut parts = rest.splitn(3, |b| *b == 0);
    let mut next = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or(StoreError::Invalid("entry key"))
    };
    let (app, env, key) = (next()?, next()?, next()?);
    let address = Address {
        app: app.to_owned(),
        env: env.to_owned(),
        key: key.to_owned(),
    };
    // A client address, or a token or policy record.
    if address.is_valid() {
        Ok(address)
    } else {
        Err(StoreError::Invalid("entry key"))
    }
}

/// The key of the group of deltas `first..=last`.
fn delta_key(first: Revision, last: Revision) -> Vec<u8> {
    let mut k = delta_bound(last);
    k.extend_from_slice(&first.0.to_be_bytes());
    k
}

/// A key below every group whose last revision is `r` or more, and above every group ending
/// before `r`.
fn delta_bound(r: Revision) -> Vec<u8> {
    let mut k = vec![DELTA_PREFIX];
    k.extend_from_slice(&r.0.to_be_bytes());
    k
}

/// The revisions `(first, last)` a group key names.
fn parse_delta_key(k: &[u8]) -> Result<(Revision, Revision), StoreError> {
    let be = |b: &[u8]| -> Result<Revision, StoreError> {
        let bytes: [u8; 8] = b.try_into().map_err(|_| StoreError::Invalid("delta key"))?;
        Ok(Revision(u64::from_be_bytes(bytes)))
    };
    match k {
        [DELTA_PREFIX, rest @ ..] if rest.len() == 16 => {
            let (last, first) = (be(&rest[..8])?, be(&rest[8..])?);
            match first <= last {
                true => Ok((first, last)),
                false => Err(StoreError::Invalid("delta key")),
            }
        }
        _ => Err(StoreError::Invalid("delta key")),
    }
}

/// Reads the value `address` had at `version` from records kept outside the store's own keys
/// (written in the same atomic batch as the revision that made it): `Some(Some(value))`,
/// `Some(None)` when that version was a delete, `None` when the record is no longer kept.
pub type ValueLookup<B> = fn(&B, &Address, Version) -> Result<Option<Option<JsonText>>, StoreError>;

/// Lists the current entry of every address (tombstones included) from records kept outside
/// the store's own keys, for a state that stores no entry records of its own (see
/// [`SignedState::open_with_kept_entries`]).
pub type EntryLister<B> = fn(&B) -> Result<Vec<(Address, EntryState)>, StoreError>;

/// An entry stored without its value (see [`ValueLookup`]).
#[derive(Debug, Serialize, Deserialize)]
struct EntryRef {
    version: Version,
    revision: Revision,
    deleted: bool,
}

/// A change stored without its value (see [`ValueLookup`]).
#[derive(Debug, Serialize, Deserialize)]
struct ChangeRef {
    address: Address,
    version: Version,
    deleted: bool,
}

/// A signed delta stored without its values (see [`ValueLookup`]).
#[derive(Debug, Serialize, Deserialize)]
struct DeltaRef {
    head: SignedHead,
    revision: Revision,
    changes: Vec<ChangeRef>,
}

/// What readers see: the published state, the head that signs it, and the token and policy
/// index built from it.
#[derive(Debug, Default)]
pub struct Published {
    /// The state at `head`'s revision.
    pub state: CacheState,
    /// The signed head of that revision (`None` at revision 0).
    pub head: Option<SignedHead>,
    /// Tokens and policies of `state`, rebuilt whenever a published delta changes them.
    pub auth: Arc<AuthIndex>,
    /// The compiled flag sets of `state`, recompiled per namespace whose flags a published
    /// delta changes.
    pub flags: Arc<FlagIndex>,
}

impl Published {
    fn new(state: CacheState, head: Option<SignedHead>) -> Self {
        let auth = Arc::new(AuthIndex::from_state(&state));
        let flags = Arc::new(FlagIndex::from_state(&state));
        Self {
            state,
            head,
            auth,
            flags,
        }
    }
}

/// What storing a delta group writes, and how many of the oldest groups it drops.
struct GroupWrites {
    writes: Vec<Write>,
    dropped: usize,
}

/// A shared handle readers hold; swapped per published revision under a short write lock.
pub type Reader = Arc<RwLock<Published>>;

/// The signed state of a node.
pub struct SignedState<B: Backend> {
    backend: B,
    published: Reader,
    /// Working revision, hash and head: published plus unpublished batches.
    revision: Revision,
    hash: LtHash,
    head: Option<SignedHead>,
    /// Deltas persisted but not yet published, and the entries they changed.
    pending: Vec<Delta>,
    overlay: HashMap<Address, EntryState>,
    /// How many recent deltas to keep for catch-up.
    delta_window: u64,
    oldest_delta: Revision,
    /// The stored delta groups `(first, last)`, oldest first.
    groups: std::collections::VecDeque<(Revision, Revision)>,
    /// Writes held back by an open batch ([`SignedState::begin_batch`]).
    staged: Option<Staged>,
    /// Where values are read from when entries and deltas store references only.
    values: Option<ValueLookup<B>>,
    /// Where entries are listed from when the store keeps no entry records.
    entries: Option<EntryLister<B>>,
}

/// The keys under a prefix, stored and staged (see [`SignedState::prefix_view_staged`]).
pub struct PrefixView<'a, B> {
    backend: &'a B,
    staged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Every key under the prefix, in order.
    pub keys: Vec<Vec<u8>>,
}

impl<B: Backend> PrefixView<'_, B> {
    /// The value of `key` as the open batch leaves it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.staged.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.backend.get(key)?),
        }
    }
}

/// What an open batch holds: the writes in order, and the deltas applied in it, encoded (when
/// there are any, they are stored as one group and the revision, hash and head are written when
/// the batch is committed).
#[derive(Debug, Default)]
struct Staged {
    writes: Vec<Write>,
    deltas: Vec<Vec<u8>>,
}

impl<B: Backend> SignedState<WriteBack<B>> {
    /// Hands every write gathered in front of the backend to it, not flushed: afterwards the
    /// backend behind alone holds everything persisted so far, and a reader of it (or a flush
    /// of it) needs no lock on this state. Refused while a batch is open.
    pub fn write_back(&mut self) -> Result<(), StoreError> {
        self.refuse_open_batch()?;
        self.backend.write_back()?;
        Ok(())
    }
}

impl<B: Backend> SignedState<B> {
    /// Loads the state from `backend`, checking that it hashes to its signed head's digest.
    /// Entries and deltas hold their values.
    pub fn open(backend: B, delta_window: u64) -> Result<Self, StoreError> {
        Self::open_inner(backend, delta_window, None, None)
    }

    /// [`SignedState::open`] for a store whose entries and deltas hold references and whose
    /// values `values` reads back. The caller must write, in the same batch as each delta (the
    /// `extra` writes of [`SignedState::apply_delta_with`]), records `values` can find, keep the
    /// newest record of every address for as long as the address exists, and use the same mode
    /// for the life of the store. A delta whose values are no longer kept is not served
    /// ([`SignedState::deltas_after`] answers `None`, as for a compacted delta).
    pub fn open_with_values(
        backend: B,
        delta_window: u64,
        values: ValueLookup<B>,
    ) -> Result<Self, StoreError> {
        Self::open_inner(backend, delta_window, Some(values), None)
    }

    /// [`SignedState::open_with_values`] for a store that writes no entry records at all: the
    /// records the caller keeps (the newest of every address, written in the same batch as its
    /// delta) already say what each address holds, and `entries` lists them at open. One
    /// stored record per change instead of two. The digest check at open still guards the
    /// result: a listing that misses or adds anything is refused as a digest mismatch.
    pub fn open_with_kept_entries(
        backend: B,
        delta_window: u64,
        values: ValueLookup<B>,
        entries: EntryLister<B>,
    ) -> Result<Self, StoreError> {
        Self::open_inner(backend, delta_window, Some(values), Some(entries))
    }

    fn open_inner(
        backend: B,
        delta_window: u64,
        values: Option<ValueLookup<B>>,
        lister: Option<EntryLister<B>>,
    ) -> Result<Self, StoreError> {
        let revision = match backend.get(META_REVISION)? {
            Some(b) => Revision(decode("revision", &b)?),
            None => Revision(0),
        };
        let head: Option<SignedHead> = match backend.get(META_HEAD)? {
            Some(b) => Some(decode("head", &b)?),
            None => None,
        };
        let mut entries = match lister {
            Some(list) => list(&backend)?,
            None => Vec::new(),
        };
        let stored = match lister {
            Some(_) => Vec::new(),
            None => backend.scan_prefix(&[ENTRY_PREFIX])?,
        };
        for (k, v) in stored {
            let address = parse_entry_key(&k)?;
            let entry = match values {
                None => decode::<EntryState>("entry", &v)?,
                Some(lookup) => {
                    let r: EntryRef = decode("entry", &v)?;
                    let value = match r.deleted {
                        true => None,
                        false => Some(
                            lookup(&backend, &address, r.version)?
                                .flatten()
                                .ok_or(StoreError::Invalid("entry whose value is not kept"))?,
                        ),
                    };
                    EntryState {
                        version: r.version,
                        revision: r.revision,
                        value,
                    }
                }
            };
            entries.push((address, entry));
        }
        let state = CacheState::from_entries(revision, entries);
        if let Some(stored) = backend.get(META_LTHASH)? {
            let lanes = LtHash::from_bytes(&stored).ok_or(StoreError::Invalid("lthash"))?;
            if lanes != *state.lthash() {
                return Err(StoreError::DigestMismatchOnLoad { revision });
            }
        }
        match &head {
            Some(h) if h.head.revision != revision || h.head.digest != state.digest() => {
                return Err(StoreError::DigestMismatchOnLoad { revision });
            }
            None if revision != Revision(0) => {
                return Err(StoreError::DigestMismatchOnLoad { revision });
            }
            _ => {}
        }
        let groups = backend
            .scan_prefix(&[DELTA_PREFIX])?
            .iter()
            .map(|(k, _)| parse_delta_key(k))
            .collect::<Result<std::collections::VecDeque<_>, _>>()?;
        let oldest_delta = groups.front().map_or(revision.next(), |g| g.0);
        let hash = state.lthash().clone();
        Ok(Self {
            backend,
            published: Arc::new(RwLock::new(Published::new(state, head))),
            revision,
            hash,
            head,
            pending: Vec::new(),
            overlay: HashMap::new(),
            delta_window: delta_window.max(1),
            oldest_delta,
            groups,
            staged: None,
            values,
            entries: lister,
        })
    }

    /// An entry as stored: whole, or a reference when values are looked up.
    fn encode_entry(&self, entry: &EntryState) -> Vec<u8> {
        match self.values {
            None => encode(entry),
            Some(_) => encode(&EntryRef {
                version: entry.version,
                revision: entry.revision,
                deleted: entry.value.is_none(),
            }),
        }
    }

    /// A delta as stored: whole, or references when values are looked up.
    fn encode_delta(&self, signed: &SignedDelta) -> Vec<u8> {
        match self.values {
            None => encode(signed),
            Some(_) => encode(&DeltaRef {
                head: signed.head,
                revision: signed.delta.revision,
                changes: signed
                    .delta
                    .changes
                    .iter()
                    .map(|c| ChangeRef {
                        address: c.address.clone(),
                        version: c.version,
                        deleted: c.value.is_none(),
                    })
                    .collect(),
            }),
        }
    }

    /// A stored delta read back; `None` when a value it refers to is no longer kept.
    fn decode_delta(&self, bytes: &[u8]) -> Result<Option<SignedDelta>, StoreError> {
        let Some(lookup) = self.values else {
            return decode("delta", bytes).map(Some);
        };
        let r: DeltaRef = decode("delta", bytes)?;
        let mut changes = Vec::with_capacity(r.changes.len());
        for c in r.changes {
            let value = match c.deleted {
                true => None,
                false => match lookup(&self.backend, &c.address, c.version)? {
                    Some(Some(value)) => Some(value),
                    Some(None) => {
                        return Err(StoreError::Invalid("delta value recorded as deleted"));
                    }
                    None => return Ok(None),
                },
            };
            changes.push(Change {
                address: c.address,
                version: c.version,
                value,
            });
        }
        Ok(Some(SignedDelta {
            head: r.head,
            delta: Delta {
                revision: r.revision,
                changes,
            },
        }))
    }

    /// The handle readers use.
    pub fn reader(&self) -> Reader {
        self.published.clone()
    }

    /// How many of the newest deltas are kept (at least 1).
    pub fn delta_window(&self) -> u64 {
        self.delta_window
    }

    /// The working revision (persisted, maybe not yet published).
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The working digest.
    pub fn digest(&self) -> Digest {
        self.hash.finish()
    }

    /// The working head.
    pub fn head(&self) -> Option<SignedHead> {
        self.head
    }

    /// The backend, for tests and crash simulation.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The current entry of an address, including unpublished changes.
    pub fn entry(&self, address: &Address) -> Option<EntryState> {
        if let Some(e) = self.overlay.get(address) {
            return Some(e.clone());
        }
        let p = self.published.read().unwrap_or_else(|e| e.into_inner());
        p.state
            .get(&address.app, &address.env, &address.key)
            .cloned()
    }

    /// Every entry of `(app, env)` (tombstones included), including unpublished changes, sorted
    /// by key.
    pub fn namespace_entries(&self, app: &str, env: &str) -> Vec<(String, EntryState)> {
        let mut out: std::collections::BTreeMap<String, EntryState> = {
            let p = self.published.read().unwrap_or_else(|e| e.into_inner());
            p.state
                .namespace(app, env)
                .into_iter()
                .flatten()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        for (a, e) in &self.overlay {
            if a.app == app && a.env == env {
                out.insert(a.key.clone(), e.clone());
            }
        }
        out.into_iter().collect()
    }

    /// The digest the working state would have after `delta`.
    pub fn digest_after(&self, delta: &Delta) -> Digest {
        self.hash_after(delta).finish()
    }

    /// The state hash after applying `delta` to the working state (its digest is
    /// [`SignedState::digest_after`]); what [`SignedState::apply_hashed_delta_with`] takes.
    pub fn hash_after(&self, delta: &Delta) -> LtHash {
        let mut hash = self.hash.clone();
        for change in &delta.changes {
            if let Some(old) = self.entry(&change.address) {
                hash.remove(&change.address, &old);
            }
            hash.insert(&change.address, &delta.entry(change));
        }
        hash
    }

    /// Checks that `signed` follows the working revision and produces its signed digest, then
    /// persists it in one atomic batch. The signature must have been verified by the caller.
    pub fn apply_delta(&mut self, signed: &SignedDelta) -> Result<(), StoreError> {
        self.apply_delta_with(signed, Vec::new())
    }

    /// [`SignedState::apply_delta`], with `extra` writes (outside the store's own key space:
    /// keys starting with [`EXTRA_PREFIX`]) in the same atomic batch. The origin's Raft state
    /// machine records the log position it applied this way.
    pub fn apply_delta_with(
        &mut self,
        signed: &SignedDelta,
        extra: Vec<Write>,
    ) -> Result<(), StoreError> {
        self.check_follows(&signed.delta)?;
        let hash = self.hash_after(&signed.delta);
        if hash.finish() != signed.head.head.digest {
            return Err(StoreError::DigestMismatch(signed.delta.revision));
        }
        self.store_delta(signed, hash, extra)
    }

    /// [`SignedState::apply_delta_with`] for a delta this node built and signed itself over
    /// `hash`, which it computed with [`SignedState::hash_after`] on this working state (the
    /// origin): the hash is not computed a second time.
    pub fn apply_hashed_delta_with(
        &mut self,
        signed: &SignedDelta,
        hash: LtHash,
        extra: Vec<Write>,
    ) -> Result<(), StoreError> {
        self.check_follows(&signed.delta)?;
        debug_assert!(hash == self.hash_after(&signed.delta));
        debug_assert_eq!(hash.finish(), signed.head.head.digest);
        self.store_delta(signed, hash, extra)
    }

    fn check_follows(&self, delta: &Delta) -> Result<(), StoreError> {
        match delta.revision == self.revision.next() {
            true => Ok(()),
            false => Err(StoreError::OutOfOrder {
                have: self.revision,
                got: delta.revision,
            }),
        }
    }

    /// Persists `signed` (checked: it follows and hashes to `hash`) with `extra`, or stages it
    /// in the open batch.
    fn store_delta(
        &mut self,
        signed: &SignedDelta,
        hash: LtHash,
        extra: Vec<Write>,
    ) -> Result<(), StoreError> {
        let delta = &signed.delta;
        let mut batch: Vec<Write> = Vec::with_capacity(delta.changes.len() + 5);
        let mut changed = Vec::with_capacity(delta.changes.len());
        for change in &delta.changes {
            let new = delta.entry(change);
            if self.entries.is_none() {
                batch.push((entry_key(&change.address), Some(self.encode_entry(&new))));
            }
            changed.push((change.address.clone(), new));
        }
        batch.extend(extra);
        let encoded = self.encode_delta(signed);
        match &mut self.staged {
            Some(staged) => {
                staged.writes.extend(batch);
                staged.deltas.push(encoded);
            }
            None => {
                let trimmed = self.group_writes(delta.revision, delta.revision, vec![encoded]);
                batch.extend(trimmed.writes);
                batch.extend(Self::meta_writes(delta.revision, &hash, &signed.head));
                self.backend.apply(batch)?;
                self.stored_group(delta.revision, delta.revision, trimmed.dropped);
            }
        }
        self.revision = delta.revision;
        self.hash = hash;
        self.head = Some(signed.head);
        self.overlay.extend(changed);
        self.pending.push(delta.clone());
        Ok(())
    }

    /// The writes that store the group of deltas `first..=last` (encoded, in order) and drop
    /// every stored group wholly older than the window that then ends at `last`.
    fn group_writes(&self, first: Revision, last: Revision, encoded: Vec<Vec<u8>>) -> GroupWrites {
        debug_assert_eq!(last.0 - first.0 + 1, encoded.len() as u64);
        let mut writes = vec![(delta_key(first, last), Some(encode(&encoded)))];
        // Keep at least the newest `delta_window` deltas: revisions from `keep_from` on.
        let keep_from = (last.0 + 1).saturating_sub(self.delta_window);
        let dropped = self
            .groups
            .iter()
            .take_while(|(_, l)| l.0 < keep_from)
            .inspect(|(f, l)| writes.push((delta_key(*f, *l), None)))
            .count();
        GroupWrites { writes, dropped }
    }

    /// Records that the group `first..=last` is stored and the oldest `dropped` are gone.
    fn stored_group(&mut self, first: Revision, last: Revision, dropped: usize) {
        self.groups.drain(..dropped.min(self.groups.len()));
        self.groups.push_back((first, last));
        self.oldest_delta = self.groups.front().map_or(last.next(), |g| g.0);
    }

    /// The revision, hash and head as stored beside the entries.
    fn meta_writes(revision: Revision, hash: &LtHash, head: &SignedHead) -> [Write; 3] {
        [
            (META_REVISION.to_vec(), Some(encode(&revision.0))),
            (META_LTHASH.to_vec(), Some(hash.to_bytes())),
            (META_HEAD.to_vec(), Some(encode(head))),
        ]
    }

    /// Opens a batch: until [`SignedState::commit_batch`], what `apply_delta_with` and
    /// `write_extra` persist is held back and then written in one atomic backend batch (the
    /// revision, hash and head once, not per delta). The working state moves on as usual, so
    /// each delta builds on the one before. Nothing in a batch is published before it is
    /// committed. A batch already open stays open.
    pub fn begin_batch(&mut self) {
        if self.staged.is_none() {
            self.staged = Some(Staged::default());
        }
    }

    /// Writes everything the open batch holds, then `extra`, in one atomic backend batch, and
    /// closes it (with no batch open, writes `extra` alone). If the backend fails, the working
    /// state is ahead of what is stored: the caller must stop using this state and open it
    /// again from the backend.
    pub fn commit_batch(&mut self, extra: Vec<Write>) -> Result<(), StoreError> {
        let Some(staged) = self.staged.take() else {
            return self.write_extra(extra);
        };
        let mut writes = staged.writes;
        let mut group = None;
        if let Some(head) = self.head.filter(|_| !staged.deltas.is_empty()) {
            let last = self.revision;
            let first = Revision(last.0 + 1 - staged.deltas.len() as u64);
            let g = self.group_writes(first, last, staged.deltas);
            writes.extend(g.writes);
            writes.extend(Self::meta_writes(last, &self.hash, &head));
            group = Some((first, last, g.dropped));
        }
        writes.extend(extra);
        if !writes.is_empty() {
            self.backend.apply(writes)?;
        }
        if let Some((first, last, dropped)) = group {
            self.stored_group(first, last, dropped);
        }
        Ok(())
    }

    /// Every key under `prefix`, what is stored with what the open batch holds applied over it,
    /// without copying any value, and a view that reads the value of any of them: for a caller
    /// that needs the keys of all and the values of a few (a history compaction), deciding the
    /// same however the applies were grouped into batches.
    pub fn prefix_view_staged(&self, prefix: &[u8]) -> Result<PrefixView<'_, B>, StoreError> {
        let mut staged = std::collections::BTreeMap::new();
        if let Some(batch) = &self.staged {
            for (k, v) in batch.writes.iter().filter(|(k, _)| k.starts_with(prefix)) {
                staged.insert(k.clone(), v.clone());
            }
        }
        let stored = self.backend.scan_prefix_keys(prefix)?;
        let keys =
            crate::backend::merged_keys(stored, staged.iter().map(|(k, v)| (k, v.is_some())));
        Ok(PrefixView {
            backend: &self.backend,
            staged,
            keys,
        })
    }

    /// The value of one extra record as the open batch leaves it (the stored one when no batch
    /// is open or the batch does not write it): for an apply that reads a record an earlier
    /// apply of the same batch may have written.
    pub fn get_staged(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(batch) = &self.staged
            && let Some((_, v)) = batch.writes.iter().rev().find(|(k, _)| k == key)
        {
            return Ok(v.clone());
        }
        Ok(self.backend.get(key)?)
    }

    /// Drops what the open batch holds, storing none of it, and closes it. The working state
    /// is then ahead of what is stored: the caller must stop using this state and open it
    /// again from the backend.
    pub fn discard_batch(&mut self) {
        self.staged = None;
    }

    fn refuse_open_batch(&self) -> Result<(), StoreError> {
        match self.staged {
            Some(_) => Err(StoreError::Invalid("a batch is open")),
            None => Ok(()),
        }
    }

    /// Makes every persisted revision durable, then shows it to readers. Returns the published
    /// revision. Refused while a batch is open.
    pub fn publish(&mut self) -> Result<Revision, StoreError> {
        self.refuse_open_batch()?;
        if self.pending.is_empty() {
            return Ok(self.revision);
        }
        self.backend.flush()?;
        self.publish_unflushed()
    }

    /// Shows every persisted revision to readers without waiting for it to be durable. Only
    /// for a caller that can rebuild those revisions identically after a crash: the origin's
    /// Raft state machine, whose revisions are re-applied from the durable Raft log. An edge
    /// must use [`SignedState::publish`] (what it serves or acknowledges must survive a
    /// crash). Returns the published revision. Refused while a batch is open.
    pub fn publish_unflushed(&mut self) -> Result<Revision, StoreError> {
        self.refuse_open_batch()?;
        if self.pending.is_empty() {
            return Ok(self.revision);
        }
        let auth_changed = self
            .pending
            .iter()
            .any(|d| d.changes.iter().any(|c| c.address.is_system()));
        let flags_changed = FlagIndex::touched(self.pending.iter());
        let mut p = self.published.write().unwrap_or_else(|e| e.into_inner());
        p.state.apply_deltas_hashed(self.pending.iter(), &self.hash);
        self.pending.clear();
        p.head = self.head;
        if auth_changed {
            // Tokens and policies are few; rebuilding under the lock keeps the index and the
            // state it was built from one published unit.
            p.auth = Arc::new(AuthIndex::from_state(&p.state));
        }
        if !flags_changed.is_empty() {
            // Compiled under the lock for the same reason; only the changed namespaces.
            let mut flags = FlagIndex::clone(&p.flags);
            flags.rebuild(&p.state, flags_changed);
            p.flags = Arc::new(flags);
        }
        self.overlay.clear();
        Ok(self.revision)
    }

    /// Persists `extra` writes (keys starting with [`EXTRA_PREFIX`]) in one atomic batch, in
    /// order with the deltas; durable at the next [`SignedState::publish`] or
    /// [`SignedState::flush`]. With a batch open, they join it.
    pub fn write_extra(&mut self, extra: Vec<Write>) -> Result<(), StoreError> {
        if let Some(staged) = &mut self.staged {
            staged.writes.extend(extra);
        } else if !extra.is_empty() {
            self.backend.apply(extra)?;
        }
        Ok(())
    }

    /// Makes everything persisted so far durable, published or not. Refused while a batch is
    /// open.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.refuse_open_batch()?;
        self.backend.flush()?;
        Ok(())
    }

    /// Replaces the whole state with a snapshot whose entries must hash to `head`'s digest.
    /// Persisted in one batch, flushed and published before it returns.
    pub fn install_snapshot(
        &mut self,
        head: SignedHead,
        entries: Vec<(Address, EntryState)>,
    ) -> Result<(), StoreError> {
        self.install_snapshot_with(head, entries, Vec::new())
    }

    /// [`SignedState::install_snapshot`] with `extra` writes in the same batch.
    pub fn install_snapshot_with(
        &mut self,
        head: SignedHead,
        entries: Vec<(Address, EntryState)>,
        extra: Vec<Write>,
    ) -> Result<(), StoreError> {
        self.publish()?;
        let state = CacheState::from_entries(head.head.revision, entries);
        if state.digest() != head.head.digest {
            return Err(StoreError::SnapshotMismatch(head.head.revision));
        }
        let mut batch: Vec<Write> = Vec::with_capacity(state.len() + 8);
        for (k, _) in self.backend.scan_prefix(&[ENTRY_PREFIX])? {
            batch.push((k, None));
        }
        for (k, _) in self.backend.scan_prefix(&[DELTA_PREFIX])? {
            batch.push((k, None));
        }
        if self.entries.is_none() {
            for (address, entry) in state.iter() {
                batch.push((entry_key(&address), Some(self.encode_entry(entry))));
            }
        }
        batch.push((META_REVISION.to_vec(), Some(encode(&head.head.revision.0))));
        batch.push((META_LTHASH.to_vec(), Some(state.lthash().to_bytes())));
        batch.push((META_HEAD.to_vec(), Some(encode(&head))));
        batch.extend(extra);
        self.backend.apply(batch)?;
        self.backend.flush()?;
        self.revision = head.head.revision;
        self.hash = state.lthash().clone();
        self.head = Some(head);
        self.oldest_delta = head.head.revision.next();
        self.groups.clear();
        let auth = Arc::new(AuthIndex::from_state(&state));
        let flags = Arc::new(FlagIndex::from_state(&state));
        let mut p = self.published.write().unwrap_or_else(|e| e.into_inner());
        p.state = state;
        p.head = Some(head);
        p.auth = auth;
        p.flags = flags;
        Ok(())
    }

    /// The deltas after `after`, at most `max`; `None` when some of them were compacted away,
    /// or (with a [`ValueLookup`]) a value one of them changed is no longer kept: the caller
    /// must send a snapshot instead.
    pub fn deltas_after(
        &self,
        after: Revision,
        max: usize,
    ) -> Result<Option<Vec<SignedDelta>>, StoreError> {
        if after >= self.revision {
            return Ok(Some(Vec::new()));
        }
        if after.next() < self.oldest_delta {
            return Ok(None);
        }
        // The groups ending after `after`, oldest first; the first may start at or before it.
        const GROUPS_PER_READ: usize = 8;
        let mut from = delta_bound(after.next());
        let to = delta_bound(self.revision.next());
        let mut out = Vec::new();
        loop {
            let rows = self.backend.range(&from, &to, GROUPS_PER_READ)?;
            for (k, v) in &rows {
                let (first, _) = parse_delta_key(k)?;
                let encoded: Vec<Vec<u8>> = decode("delta group", v)?;
                let skip = (after.0 + 1).saturating_sub(first.0) as usize;
                for bytes in encoded.iter().skip(skip) {
                    if out.len() >= max {
                        return Ok(Some(out));
                    }
                    match self.decode_delta(bytes)? {
                        Some(delta) => out.push(delta),
                        None => return Ok(None),
                    }
                }
            }
            match rows.last() {
                Some((k, _)) if rows.len() == GROUPS_PER_READ && out.len() < max => {
                    // The next key after `k`.
                    from = k.clone();
                    from.push(0);
                }
                _ => return Ok(Some(out)),
            }
        }
    }

    /// The oldest revision whose delta is still kept.
    pub fn oldest_delta(&self) -> Revision {
        self.oldest_delta
    }

    /// Every entry of the published state with its head, for a snapshot.
    pub fn snapshot(&self) -> (Option<SignedHead>, Vec<(Address, EntryState)>) {
        let p = self.published.read().unwrap_or_else(|e| e.into_inner());
        (
            p.head,
            p.state.iter().map(|(a, e)| (a, e.clone())).collect(),
        )
    }
}
