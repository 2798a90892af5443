//! The Raft state machine: committed entries applied to the origin's deterministic core, with
//! the log position and membership recorded in the same atomic batches as the data, and
//! snapshots that are the signed state itself: its head and the history records its entries
//! are listed from.
//!
//! The state is persistent but not flushed by `apply`: the entries of one `apply` call, their
//! revisions and the applied log id are one atomic batch (see [`SignedState::begin_batch`]),
//! and the batches of [`WRITE_BACK`] calls reach sled together, as one sled batch, through a
//! [`WriteBack`] (readers and the state's own reads see them at once). So after a crash sled
//! recovers a consistent prefix of whole calls, and openraft re-applies the committed entries
//! after it, from the Raft log, deterministically (same revisions, digests and signatures); no
//! entry is ever applied twice. A snapshot is written back and flushed before it is handed out,
//! so the log is never purged past what is durable here. The current snapshot lives in memory
//! only (the state on disk is what it was built from); after a restart the first request for
//! one builds it afresh. A build runs on a blocking thread and holds the core lock only to
//! hand gathered writes to sled and take the head and log position; it flushes and
//! reads the history from sled while entries go on being applied, leaving out records of later
//! revisions; a history compaction meanwhile hands it the records it deletes, and schema
//! changes (rare) wait for it.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use meridian_protocol::{Revision, SignedHead, Signer};
use meridian_store::{
    Backend, DurableDb, EXTRA_PREFIX, SignedState, SledBackend, StoreError, Write, WriteBack,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::relay::SharedRelay;
use super::{
    Entry, LogId, Outcome, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use meridian_core::apply::{Command, OriginCore};
use meridian_core::history::HISTORY_PREFIX;
use meridian_core::schema::SCHEMA_PREFIX;

const APPLIED: &[u8] = &[EXTRA_PREFIX, b'r', b'a'];
const MEMBERSHIP: &[u8] = &[EXTRA_PREFIX, b'r', b'm'];

/// Where the origin's state lives: sled, behind a [`WriteBack`] that hands it the batches of
/// several `apply` calls at once.
pub type StateBackend = WriteBack<SledBackend>;

pub use meridian_core::entry::WRITE_BACK;

/// The origin core shared by the state machine, the write API and the edge server.
pub type SharedCore = Arc<Mutex<OriginCore<StateBackend>>>;

/// The snapshot last built or installed, with its bytes.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;

/// What a snapshot's bytes hold: the signed head and the records the state is made of. The
/// entries are not stored apart: as at open (see [`meridian_core::history::current_entries`]), each
/// address holds what its newest history record says, and the installing node lists them from
/// the records, so each value travels once. The head's digest checks the listing.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    /// [`SNAPSHOT_FORMAT`], the first byte.
    format: u8,
    head: Option<SignedHead>,
    /// The history and schema records, raw (see [`meridian_core::history`], [`meridian_core::schema`]): a
    /// node caught up by snapshot keeps the same history and schemas as the others.
    history: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The first byte of a snapshot in the format of [`SnapshotData`]. The format before it began
/// with the head's `Option` tag (0 or 1) and also listed every entry ([`LegacySnapshotData`]);
/// such a snapshot, from a node not yet upgraded, still installs.
const SNAPSHOT_FORMAT: u8 = 2;

/// A snapshot of the format before [`SNAPSHOT_FORMAT`]: its entries are ignored (the install
/// lists them from the records, and the head's digest checks them either way).
#[derive(Serialize, Deserialize)]
struct LegacySnapshotData {
    head: Option<SignedHead>,
    entries: Vec<(meridian_protocol::Address, meridian_protocol::EntryState)>,
    history: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a snapshot's bytes did not decode.
#[derive(Debug, thiserror::Error)]
enum SnapshotFormatError {
    #[error("empty snapshot")]
    Empty,
    #[error("snapshot format {0} is not known to this build")]
    Unknown(u8),
    #[error("malformed snapshot: {0}")]
    Malformed(#[from] postcard::Error),
}

impl SnapshotData {
    fn decode(bytes: &[u8]) -> Result<Self, SnapshotFormatError> {
        match bytes.first() {
            None => Err(SnapshotFormatError::Empty),
            Some(&SNAPSHOT_FORMAT) => Ok(postcard::from_bytes(bytes)?),
            Some(0 | 1) => {
                let legacy: LegacySnapshotData = postcard::from_bytes(bytes)?;
                Ok(Self {
                    format: SNAPSHOT_FORMAT,
                    head: legacy.head,
                    history: legacy.history,
                })
            }
            Some(&other) => Err(SnapshotFormatError::Unknown(other)),
        }
    }
}

/// The state machine; clones share everything (a clone is also the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    core: SharedCore,
    commits: watch::Sender<Revision>,
    current: CurrentSnapshot,
    relay: Arc<SharedRelay>,
    /// The sled tree behind the state, which a snapshot build reads outside the core lock.
    tree: sled::Tree,
    /// The database behind it, synced before a snapshot lets the log be purged.
    db: DurableDb,
    /// Held shared by a snapshot build while it reads history and schema records from sled
    /// outside the core lock, and exclusively by an apply call that overwrites or deletes
    /// schema records (see [`rewrites_stored_records`]) and by a snapshot install; always taken
    /// before the core lock. A history compaction does not wait: the core hands the build what
    /// it deletes meanwhile (see [`OriginCore::keep_compacted`]).
    record_scan: Arc<tokio::sync::RwLock<()>>,
    /// One snapshot build at a time (each keeps the records compactions delete from its own
    /// snapshot point on).
    building: Arc<tokio::sync::Mutex<()>>,
    /// The cluster's public key: a snapshot is installed only if its head verifies with it.
    verifying_key: meridian_protocol::sign::VerifyingKey,
}

/// The signed head a snapshot's bytes hold (none for a state without writes, or bytes that
/// are not a snapshot).
pub fn head_of(bytes: &[u8]) -> Option<meridian_protocol::SignedHead> {
    SnapshotData::decode(bytes).ok()?.head
}

/// Whether applying `entry` may delete or overwrite stored records a snapshot build reads:
/// a schema put or delete, an audit compaction, a change request's step.
/// Every other command only adds history records, at revisions after any snapshot being built,
/// which the build leaves out, or (a history compaction) deletes records, which the core hands
/// over to the build.
fn rewrites_stored_records(entry: &Entry) -> bool {
    match &entry.payload {
        EntryPayload::Normal(request) => request.commands.iter().any(|p| {
            matches!(
                p.command,
                Command::PutSchema { .. }
                    | Command::DeleteSchema { .. }
                    | Command::CompactAudit { .. }
                    | Command::Change(_)
                    | Command::Webhook(_)
            )
        }),
        _ => false,
    }
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(sm_write)
}

fn applied_write(log_id: &LogId) -> Result<Write, StorageError> {
    Ok((APPLIED.to_vec(), Some(encode(&Some(*log_id))?)))
}

impl StateMachine {
    /// Opens the signed state in `db` (its `state` tree) with the cluster's signer; the heads
    /// it signs and is offered go through `relay`.
    pub fn open(
        db: &DurableDb,
        signer: Signer,
        delta_window: u64,
        relay: Arc<SharedRelay>,
    ) -> Result<Self, StoreError> {
        let backend = WriteBack::new(SledBackend::from_db(db.clone())?, WRITE_BACK);
        let tree = backend.inner().tree().clone();
        // Every change is a history record written with its revision (value, version and
        // revision), so deltas store references to them and entries are not stored at all:
        // the newest record of each key is its entry (one stored record per change, not three).
        let state = SignedState::open_with_kept_entries(
            backend,
            delta_window,
            meridian_core::history::value_at::<StateBackend>,
            meridian_core::history::current_entries::<StateBackend>,
        )?;
        let (commits, _) = watch::channel(state.revision());
        let verifying_key = signer.verifying_key();
        Ok(Self {
            verifying_key,
            core: Arc::new(Mutex::new(OriginCore::new(state, signer))),
            commits,
            current: Arc::new(Mutex::new(None)),
            relay,
            tree,
            db: db.clone(),
            record_scan: Arc::new(tokio::sync::RwLock::new(())),
            building: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// A snapshot built as for a follower (writes go on meanwhile), for a backup.
    pub async fn build_backup(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build_detached().await
    }

    /// The core, shared with the write API and the edge server.
    pub fn core(&self) -> SharedCore {
        self.core.clone()
    }

    /// Announces each applied revision (the edge server pushes it).
    pub fn commits(&self) -> watch::Sender<Revision> {
        self.commits.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OriginCore<StateBackend>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log position and membership recorded with the state.
    fn meta_of(
        core: &OriginCore<StateBackend>,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let backend = core.state().backend();
        let applied = match backend.get(APPLIED).map_err(sm_read)? {
            Some(b) => postcard::from_bytes::<Option<LogId>>(&b).map_err(sm_read)?,
            None => None,
        };
        let membership = match backend.get(MEMBERSHIP).map_err(sm_read)? {
            Some(b) => postcard::from_bytes(&b).map_err(sm_read)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn apply_one(
        core: &mut OriginCore<StateBackend>,
        relay: &SharedRelay,
        entry: Entry,
    ) -> Result<Response, StorageError> {
        let log_id = entry.log_id;
        let extra = applied_write(&log_id)?;
        let write_extra = |core: &mut OriginCore<StateBackend>, writes: Vec<Write>| {
            core.state_mut()
                .write_extra(writes)
                .map_err(|e| StorageError::from(StorageIOError::apply(log_id, &e)))
        };
        match entry.payload {
            EntryPayload::Blank => {
                write_extra(core, vec![extra])?;
                Ok(Response::default())
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m);
                write_extra(
                    core,
                    vec![extra, (MEMBERSHIP.to_vec(), Some(encode(&stored)?))],
                )?;
                Ok(Response::default())
            }
            EntryPayload::Normal(request) => {
                core.begin_entry(relay.take(log_id.index));
                let outcomes = Self::apply_commands(core, log_id, request);
                let heads = core.end_entry();
                let outcomes = outcomes?;
                metrics::counter!("meridian_origin_heads_total", "signed_by" => "leader")
                    .increment(heads.reused as u64);
                metrics::counter!("meridian_origin_heads_total", "signed_by" => "this_node")
                    .increment((heads.heads.len() - heads.reused) as u64);
                relay.applied(log_id.index, heads.heads);
                write_extra(core, vec![extra])?;
                Ok(Response { outcomes })
            }
        }
    }

    /// The outcome of each command of a normal entry, in order (`meridian_core::entry`).
    fn apply_commands(
        core: &mut OriginCore<StateBackend>,
        log_id: LogId,
        request: super::Request,
    ) -> Result<Vec<Outcome>, StorageError> {
        let results = meridian_core::entry::apply_proposals(core, log_id.index, request.commands)
            .map_err(|e| StorageError::from(StorageIOError::apply(log_id, &e)))?;
        Ok(results.into_iter().map(Outcome::from_result).collect())
    }

    /// Builds a snapshot on a blocking thread, so that neither the core lock nor a runtime
    /// worker is held while the history is read and encoded: over a large history that takes
    /// seconds, and with both of a two-worker runtime stuck (one building, one applying and
    /// waiting for the core lock) a leader stopped sending heartbeats and lost its leadership.
    async fn build_detached(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let building = self.building.clone().lock_owned().await;
        let scan = self.record_scan.clone().read_owned().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _building = building;
            this.build(scan)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())))?
    }

    /// Builds a snapshot with `record_scan` held shared (`scan`, let go once the records are
    /// read) and no other build running (see [`Self::build_detached`]).
    ///
    /// Under the core lock: everything applied is handed to sled, and the head, log position
    /// and membership are taken, all at the same applied entry (no entry is copied: at 270,000
    /// keys copying them held the lock 250-380 ms, long enough for a follower to miss its
    /// leader's heartbeats). Then, with applies going on, sled is flushed and the history and
    /// schema records are read from it: those written since (at later revisions) are left out;
    /// those a history compaction deletes meanwhile are handed over by the core (kept from the
    /// snapshot point on) and put back; and a schema change waits for the read.
    fn build(
        &self,
        scan: tokio::sync::OwnedRwLockReadGuard<()>,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        let point = self.snapshot_point()?;
        self.finish_build(point, scan)
    }

    /// The first step of [`Self::build`], under the core lock: gathered writes handed to sled,
    /// the head and log position taken, compacted records kept from here on.
    fn snapshot_point(&self) -> Result<SnapshotPoint, StorageError> {
        let started = std::time::Instant::now();
        let mut core = self.lock();
        core.state_mut()
            .write_back()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let (last_log_id, last_membership) = Self::meta_of(&core)?;
        core.keep_compacted();
        Ok(SnapshotPoint {
            started,
            head: core.state().head(),
            last_log_id,
            last_membership,
        })
    }

    /// The rest of [`Self::build`], outside the core lock.
    fn finish_build(
        &self,
        point: SnapshotPoint,
        scan: tokio::sync::OwnedRwLockReadGuard<()>,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        let SnapshotPoint {
            started,
            head,
            last_log_id,
            last_membership,
        } = point;
        let locked = started.elapsed();
        let upto = head.map_or(0, |h| h.head.revision.0);
        // Durable before openraft may purge the log up to it (apply does not flush): sled
        // holds it all now, and a flush also makes durable whatever was applied since.
        let flushed = self.db.sync();
        let flushed_at = started.elapsed();
        let stored = flushed
            .map_err(ScanError::from)
            .and_then(|_| self.stored_records(upto, last_log_id.map_or(0, |l| l.index)));
        // Taken whatever happened, so that the core stops keeping them.
        let compacted = self.lock().take_compacted();
        drop(scan);
        let mut history = stored.map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let mut put_back = 0;
        for (k, v) in compacted {
            let revision = meridian_core::history::record_revision(&v)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            if revision <= upto {
                history.push((k, v));
                put_back += 1;
            }
        }
        if put_back > 0 {
            // Read before or after its deletion: once either way, in key order.
            history.sort_by(|a, b| a.0.cmp(&b.0));
            history.dedup_by(|a, b| a.0 == b.0);
        }
        let data = SnapshotData {
            format: SNAPSHOT_FORMAT,
            head,
            history,
        };
        let scanned = started.elapsed();
        let records = data.history.len();
        let bytes =
            postcard::to_allocvec(&data).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(
            revision = upto,
            records,
            put_back,
            bytes = bytes.len(),
            locked_ms = locked.as_millis() as u64,
            flushed_ms = flushed_at.as_millis() as u64,
            scanned_ms = scanned.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, bytes.len()),
            None => format!("empty-{}", bytes.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

/// Where a snapshot is taken (see [`StateMachine::snapshot_point`]).
struct SnapshotPoint {
    started: std::time::Instant,
    head: Option<SignedHead>,
    last_log_id: Option<LogId>,
    last_membership: StoredMembership,
}

/// Why stored records could not be read for a snapshot.
#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    History(#[from] meridian_core::history::HistoryError),
    #[error(transparent)]
    Audit(#[from] StoreError),
}

impl StateMachine {
    /// The history records of revisions up to `upto`, every schema record, and the audit
    /// records of log entries up to `upto_index`, as stored in sled (for a snapshot; see
    /// [`Self::build`]).
    fn stored_records(
        &self,
        upto: u64,
        upto_index: u64,
    ) -> Result<meridian_store::Pairs, ScanError> {
        let mut out = Vec::new();
        for pair in self.tree.scan_prefix(crate::http::tokens::LAST_USED_PREFIX) {
            let (k, v) = pair?;
            out.push((k.to_vec(), v.to_vec()));
        }
        for pair in self.tree.scan_prefix(meridian_core::audit::AUDIT_PREFIX) {
            let (k, v) = pair?;
            if meridian_core::audit::record_log_index(&v)? <= upto_index {
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        for pair in self.tree.scan_prefix(HISTORY_PREFIX) {
            let (k, v) = pair?;
            if meridian_core::history::record_revision(&v)? <= upto {
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        for prefix in [
            SCHEMA_PREFIX,
            meridian_core::changes::CHANGE_PREFIX,
            meridian_core::webhooks::WEBHOOK_PREFIX,
        ] {
            for pair in self.tree.scan_prefix(prefix) {
                let (k, v) = pair?;
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build_detached().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Self::meta_of(&self.lock())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // A follower holds back, briefly, until the leader has offered the heads it signed for
        // these entries, so that it need not sign them too (see `relay`).
        let last_normal = entries
            .iter()
            .rev()
            .find(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .map(|e| e.log_id.index);
        if let Some(index) = last_normal {
            self.relay.wait_for(index).await;
        }
        // A snapshot being built reads history and schema records outside the core lock:
        // whatever would delete or overwrite some waits until it has.
        let _rewrite = match entries.iter().any(rewrites_stored_records) {
            true => Some(self.record_scan.write().await),
            false => None,
        };
        let mut out = Vec::with_capacity(entries.len());
        let revision = {
            let mut core = self.lock();
            // Every entry handed over in this call is stored in one atomic batch: the state's
            // revision, hash and head once, not once per write. A crash keeps all of them or
            // none (openraft re-applies them from the log).
            core.state_mut().begin_batch();
            let applied = entries.into_iter().try_for_each(|entry| {
                out.push(Self::apply_one(&mut core, &self.relay, entry)?);
                Ok::<_, StorageError>(())
            });
            if let Err(e) = applied {
                // Nothing of a failed call is stored; openraft stops this node on the error.
                core.state_mut().discard_batch();
                return Err(e);
            }
            core.state_mut()
                .commit_batch(Vec::new())
                .map_err(sm_write)?;
            // Readers see the batch at once, before it is durable: the entries are durable in
            // the Raft log (committed on a quorum), and a node that crashes re-applies them
            // from there to the same revisions, digests and signatures. Snapshots and log
            // purges flush first, so the log never loses entries the state on disk lacks.
            core.state_mut().publish_unflushed().map_err(sm_write)?
        };
        self.commits.send_replace(revision);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let signature = Some(meta.signature());
        let data = SnapshotData::decode(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        // Only a state the cluster signed replaces this one (its entries are then checked
        // against the head's digest by the install).
        if let Some(head) = &data.head {
            meridian_protocol::TrustedKeys::new([self.verifying_key])
                .verify_head(head)
                .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        }
        // What each address holds, from its newest record (checked against the head's digest
        // by the install).
        let entries = meridian_core::history::entries_of_records(
            data.history.iter().map(|(k, v)| (&k[..], &v[..])),
        )
        .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let mut extra = vec![
            (APPLIED.to_vec(), Some(encode(&meta.last_log_id)?)),
            (MEMBERSHIP.to_vec(), Some(encode(&meta.last_membership)?)),
        ];
        // Replaces every history and schema record: not while a build reads them.
        let _rewrite = self.record_scan.write().await;
        let revision = {
            let mut core = self.lock();
            // The snapshot's history replaces this node's, in the same batch as its state.
            for prefix in [
                &HISTORY_PREFIX[..],
                &SCHEMA_PREFIX[..],
                &meridian_core::audit::AUDIT_PREFIX[..],
                &crate::http::tokens::LAST_USED_PREFIX[..],
                &meridian_core::changes::CHANGE_PREFIX[..],
                &meridian_core::webhooks::WEBHOOK_PREFIX[..],
            ] {
                let old = core
                    .state()
                    .backend()
                    .scan_prefix(prefix)
                    .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
                extra.extend(old.into_iter().map(|(k, _)| (k, None)));
            }
            // The chain continues from the snapshot's newest record.
            let tip = meridian_core::audit::tip_of(&data.history)
                .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
            extra.push((
                meridian_core::audit::AUDIT_TIP.to_vec(),
                Some(serde_json::to_vec(&tip).unwrap_or_default()),
            ));
            extra.extend(data.history.into_iter().map(|(k, v)| (k, Some(v))));
            let state = core.state_mut();
            match data.head {
                Some(head) => state.install_snapshot_with(head, entries, extra),
                // A snapshot taken before the first write: only a state without writes can
                // take it.
                None if state.revision() == Revision(0) && entries.is_empty() => {
                    state.write_extra(extra).and_then(|()| state.flush())
                }
                None => Err(StoreError::Invalid("snapshot without a head")),
            }
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
            let revision = state.revision();
            core.reload_schemas();
            core.reload_audit();
            revision
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta.clone(), bytes));
        self.commits.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match current {
            Some((meta, bytes)) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            })),
            None => {
                let (applied, _) = Self::meta_of(&self.lock())?;
                if applied.is_none() {
                    return Ok(None);
                }
                self.build_detached().await.map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meridian_protocol::Address;
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::raft::Request;
    use meridian_core::apply::Proposal;
    use meridian_core::history::WriteMeta;

    fn open(dir: &std::path::Path) -> StateMachine {
        let db = DurableDb::open(dir).expect("sled");
        StateMachine::open(&db, Signer::from_bytes(&[7; 32]), 1024, SharedRelay::new())
            .expect("state machine")
    }

    fn put(key: &str, value: &str) -> Proposal {
        Proposal {
            command: Command::Put {
                address: Address::parse("app", "prod", key).expect("address"),
                value: Arc::from(value),
                expect_version: None,
            },
            meta: WriteMeta {
                time_ms: 1,
                actor: "test".into(),
                reason: None,
                ..Default::default()
            },
        }
    }

    /// A new node that took `snapshot` (with its folder, which must outlive it).
    async fn installed(
        meta: &SnapshotMeta,
        bytes: Vec<u8>,
    ) -> (tempfile::TempDir, StateMachine, Result<(), StorageError>) {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let result = sm
            .install_snapshot(meta, Box::new(Cursor::new(bytes)))
            .await;
        (dir, sm, result)
    }

    fn delete(key: &str) -> Proposal {
        Proposal {
            command: Command::Delete {
                address: Address::parse("app", "prod", key).expect("address"),
                expect_version: None,
            },
            ..put("unused", "0")
        }
    }

    fn entry(index: u64, commands: Vec<Proposal>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Request { commands }),
        }
    }

    fn compact() -> Proposal {
        Proposal {
            command: Command::CompactHistory {
                retention: meridian_core::history::Retention {
                    max_versions: 1,
                    max_age_ms: None,
                },
                now_ms: 2,
            },
            ..put("unused", "0")
        }
    }

    /// Everything a node stores: the state, history, applied log id.
    fn stored(sm: &StateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
        sm.lock().state().backend().scan_prefix(b"").unwrap()
    }

    #[tokio::test]
    async fn entries_applied_together_store_what_entries_applied_one_by_one_store() {
        let entries = vec![
            entry(1, vec![put("a", "1"), put("b", "2"), put("a", "3")]),
            entry(2, vec![put("a", "4")]),
            // A compaction sees the history written before it, in the same call or entry.
            entry(3, vec![put("b", "5"), compact(), put("c", "6")]),
            entry(4, vec![put("a", "7"), compact()]),
        ];
        let together = tempfile::tempdir().unwrap();
        let mut together = open(together.path());
        let out = together.apply(entries.clone()).await.unwrap();
        assert_eq!(
            out.iter().map(|r| r.outcomes.len()).collect::<Vec<_>>(),
            vec![3, 1, 3, 2]
        );

        let one_by_one = tempfile::tempdir().unwrap();
        let mut one_by_one = open(one_by_one.path());
        for e in entries {
            one_by_one.apply(vec![e]).await.unwrap();
        }
        // The same records but for how deltas are grouped (one group per apply call), and
        // the same deltas served for catch-up.
        let not_deltas = |sm: &StateMachine| -> Vec<(Vec<u8>, Vec<u8>)> {
            stored(sm)
                .into_iter()
                .filter(|(k, _)| k[0] != b'd')
                .collect()
        };
        let (a, b) = (not_deltas(&together), not_deltas(&one_by_one));
        assert_eq!(a, b);
        let deltas = |sm: &StateMachine, after| sm.lock().state().deltas_after(after, 100).unwrap();
        for after in 0..7 {
            assert_eq!(
                deltas(&together, Revision(after)),
                deltas(&one_by_one, Revision(after))
            );
        }
        // Revision 7 (a@4) still has its value; the compacted older ones do not.
        assert_eq!(deltas(&together, Revision(6)).map(|d| d.len()), Some(1));
        assert_eq!(deltas(&together, Revision(0)), None);
        let state = together.lock();
        assert_eq!(state.state().revision(), Revision(7));
        assert_eq!(
            StateMachine::meta_of(&state).unwrap().0.map(|l| l.index),
            Some(4)
        );
        // The last compaction kept the newest version of each key, including versions written
        // before it in the same entry.
        let history = a
            .iter()
            .filter(|(k, _)| k.starts_with(&HISTORY_PREFIX) && !provenance(k))
            .count();
        assert_eq!(history, 3, "a@4, b@2, c@1");
    }

    /// The state sled itself holds (not what the write-back still gathers), reopened.
    fn on_disk(sm: &StateMachine) -> (Option<SignedHead>, Option<u64>) {
        let db = sm.lock().state().backend().inner().durable().clone();
        let backend = SledBackend::from_db(db).unwrap();
        let applied = backend
            .get(APPLIED)
            .unwrap()
            .map(|b| postcard::from_bytes::<Option<LogId>>(&b).unwrap())
            .and_then(|l| l.map(|l| l.index));
        let state = SignedState::open_with_kept_entries(
            backend,
            1024,
            meridian_core::history::value_at::<SledBackend>,
            meridian_core::history::current_entries::<SledBackend>,
        )
        .unwrap();
        (state.head(), applied)
    }

    #[tokio::test]
    async fn apply_calls_are_published_at_once_and_stored_whole_with_their_log_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let reader = sm.lock().state().reader();
        let published = || reader.read().unwrap().head.map(|h| h.head.revision);
        let gathered = WRITE_BACK.max_batches as u64;
        for index in 1..gathered {
            sm.apply(vec![entry(index, vec![put("a", &index.to_string())])])
                .await
                .unwrap();
            // Readers see each call at once; sled gets the calls together, later.
            assert_eq!(published(), Some(Revision(index)));
            assert_eq!(on_disk(&sm), (None, None));
            assert_eq!(
                StateMachine::meta_of(&sm.lock())
                    .unwrap()
                    .0
                    .map(|l| l.index),
                Some(index)
            );
        }
        sm.apply(vec![entry(gathered, vec![put("a", "x"), put("b", "y")])])
            .await
            .unwrap();
        assert_eq!(published(), Some(Revision(gathered + 1)));
        // The last call of the limit hands every gathered call to sled: the published head
        // with the log id of the entry that made it.
        let head = sm.lock().state().head();
        assert_eq!(on_disk(&sm), (head, Some(gathered)));

        // One more call is gathered again; a snapshot stores it first (openraft may purge the
        // log up to a snapshot, so the state it was built from must be in sled).
        sm.apply(vec![entry(gathered + 1, vec![put("c", "z")])])
            .await
            .unwrap();
        assert_eq!(on_disk(&sm).1, Some(gathered));
        let snapshot = sm.build_detached().await.unwrap();
        assert_eq!(
            snapshot.meta.last_log_id.map(|l| l.index),
            Some(gathered + 1)
        );
        let head = sm.lock().state().head();
        assert_eq!(on_disk(&sm), (head, Some(gathered + 1)));
    }

    /// History keys of the records a snapshot of `sm` would carry up to `upto`.
    fn records_upto(sm: &StateMachine, upto: u64) -> usize {
        sm.stored_records(upto, u64::MAX)
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&HISTORY_PREFIX) && !provenance(k))
            .count()
    }

    /// Whether `k` is a history record of the revisions' provenance (one per write).
    fn provenance(k: &[u8]) -> bool {
        k.starts_with(&meridian_core::history::key_prefix(
            &meridian_protocol::provenance::address(),
        ))
    }

    /// The entries of a snapshot listing, without the provenance entry.
    fn data_entries(listing: &[(Address, meridian_protocol::EntryState)]) -> usize {
        listing
            .iter()
            .filter(|(a, _)| !meridian_protocol::provenance::is_provenance(a))
            .count()
    }

    #[tokio::test]
    async fn a_snapshot_carries_the_history_up_to_its_revision_only() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let mut sm2 = sm.clone();
        for index in 1..=3 {
            sm2.apply(vec![entry(index, vec![put(&format!("k{index}"), "1")])])
                .await
                .unwrap();
        }
        // Records reach sled when a build flushes; written later, they are at later revisions.
        sm.build_detached().await.unwrap();
        assert_eq!(records_upto(&sm, 3), 3);
        assert_eq!(records_upto(&sm, 2), 2);
        assert_eq!(records_upto(&sm, 0), 0);
        let snapshot = sm.build_detached().await.unwrap();
        let data = SnapshotData::decode(snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(data.head.map(|h| h.head.revision), Some(Revision(3)));
        let with = |prefix: &[u8]| {
            data.history
                .iter()
                .filter(|(k, _)| k.starts_with(prefix) && !provenance(k))
                .count()
        };
        assert_eq!(with(&HISTORY_PREFIX), 3);
        assert_eq!(
            with(&meridian_core::audit::AUDIT_PREFIX),
            3,
            "one audit record per write"
        );
    }

    #[tokio::test]
    async fn a_node_installing_a_snapshot_lists_the_same_entries_and_digest_from_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let mut applier = sm.clone();
        let entries = vec![
            entry(1, vec![put("a", "1"), put("b", "2"), put("a", "3")]),
            entry(2, vec![delete("b"), put("c", "4")]),
            entry(3, vec![put("a", "5"), compact(), put("b", "6")]),
        ];
        applier.apply(entries).await.unwrap();
        let revision = sm.lock().state().revision();
        let snapshot = sm.build_detached().await.unwrap();
        // Later writes are not in it.
        applier
            .apply(vec![entry(4, vec![put("a", "7")])])
            .await
            .unwrap();

        let (_dir, fresh, result) = installed(&snapshot.meta, snapshot.snapshot.into_inner()).await;
        result.unwrap();
        let (head, installed) = fresh.lock().state().snapshot();
        let at_snapshot = |key: &str| {
            installed
                .iter()
                .find(|(a, _)| a.key == key)
                .map(|(_, e)| (e.version.0, e.value.as_deref().map(str::to_owned)))
        };
        assert_eq!(head.map(|h| h.head.revision), Some(revision));
        assert_eq!(at_snapshot("a"), Some((3, Some("5".into()))));
        assert_eq!(at_snapshot("b"), Some((3, Some("6".into()))));
        assert_eq!(at_snapshot("c"), Some((1, Some("4".into()))));
        assert_eq!(data_entries(&installed), 3);
        // The install checked the listing against the head's digest; the state is the head's.
        assert_eq!(
            head.map(|h| h.head.digest),
            Some(fresh.lock().state().digest())
        );
        // The audit chain up to the snapshot's entry came along (seven audited writes; a
        // compaction is not audited), and the installed node continues it from there exactly
        // as the node that applied everything did.
        let tip = fresh.lock().audit_tip().unwrap();
        assert_eq!((tip.seq, tip.at.0), (7, 3));
        let mut fresh_applier = fresh.clone();
        fresh_applier
            .apply(vec![entry(4, vec![put("a", "7")])])
            .await
            .unwrap();
        let continued = fresh.lock().audit_tip().unwrap();
        let original = sm.lock().audit_tip().unwrap();
        assert_eq!((continued.seq, &continued.hash), (8, &original.hash));
    }

    #[tokio::test]
    async fn a_snapshot_not_signed_by_the_cluster_or_not_matching_its_head_is_refused() {
        // A node with another signing key (a forged or foreign cluster) builds a snapshot.
        let dir = tempfile::tempdir().unwrap();
        let db = DurableDb::open(dir.path()).unwrap();
        let forger =
            StateMachine::open(&db, Signer::from_bytes(&[9; 32]), 1024, SharedRelay::new())
                .unwrap();
        let mut applier = forger.clone();
        applier
            .apply(vec![entry(1, vec![put("a", "\"forged\"")])])
            .await
            .unwrap();
        let forged = forger.build_detached().await.unwrap();
        let (_dir, fresh, result) = installed(&forged.meta, forged.snapshot.into_inner()).await;
        let e = result.expect_err("a head signed with another key is refused");
        assert!(format!("{e:?}").contains("unknown key"), "{e:?}");
        assert_eq!(
            fresh.lock().state().revision(),
            Revision(0),
            "nothing installed"
        );

        // Signed by the cluster, but the records were altered: the digest check refuses it.
        let dir = tempfile::tempdir().unwrap();
        let honest = open(dir.path());
        let mut applier = honest.clone();
        applier
            .apply(vec![entry(1, vec![put("a", "1"), put("b", "2")])])
            .await
            .unwrap();
        let snapshot = honest.build_detached().await.unwrap();
        let mut data = SnapshotData::decode(snapshot.snapshot.get_ref()).unwrap();
        data.history.pop();
        let altered = postcard::to_allocvec(&data).unwrap();
        let (_dir, fresh, result) = installed(&snapshot.meta, altered).await;
        assert!(
            result.is_err(),
            "records that do not match the head are refused"
        );
        assert_eq!(
            fresh.lock().state().revision(),
            Revision(0),
            "nothing installed"
        );
    }

    #[tokio::test]
    async fn a_snapshot_of_the_format_before_still_installs_and_unknown_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let mut applier = sm.clone();
        applier
            .apply(vec![entry(1, vec![put("a", "1"), put("b", "2")])])
            .await
            .unwrap();
        let snapshot = sm.build_detached().await.unwrap();
        let data = SnapshotData::decode(snapshot.snapshot.get_ref()).unwrap();
        let (_, entries) = sm.lock().state().snapshot();
        let legacy = postcard::to_allocvec(&LegacySnapshotData {
            head: data.head,
            entries,
            history: data.history,
        })
        .unwrap();
        assert_eq!(
            legacy[0], 1,
            "the old format starts with the head's Option tag"
        );

        let (_dir, fresh, result) = installed(&snapshot.meta, legacy).await;
        result.unwrap();
        assert_eq!(fresh.lock().state().head(), data.head);
        assert_eq!(data_entries(&fresh.lock().state().snapshot().1), 2);

        let mut unknown = snapshot.snapshot.into_inner();
        unknown[0] = 9;
        let (_dir, _, refused) = installed(&snapshot.meta, unknown).await;
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("snapshot format 9 is not known"),
        );
    }

    #[tokio::test]
    async fn a_snapshot_keeps_the_records_a_compaction_deletes_while_it_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let mut applier = sm.clone();
        applier
            .apply(vec![entry(1, vec![put("b", "1"), put("a", "1")])])
            .await
            .unwrap();
        let scan = sm.record_scan.clone().read_owned().await;
        let point = sm.snapshot_point().unwrap();
        // After the snapshot point, before the build reads sled: b gets a version 2, and a
        // compaction keeping one version deletes b's version 1, which the snapshot (at
        // revision 2) must hold, or the installing node would list no entry for b.
        applier
            .apply(vec![entry(2, vec![put("b", "2"), compact()])])
            .await
            .unwrap();
        // In sled already (as after the write-back of later applies), so the read misses it.
        sm.lock().state_mut().write_back().unwrap();
        let snapshot = sm.finish_build(point, scan).unwrap();
        let data = SnapshotData::decode(snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(data.head.map(|h| h.head.revision), Some(Revision(2)));
        let versions: Vec<(u64, u64)> = data
            .history
            .iter()
            .filter(|(k, _)| k.starts_with(&HISTORY_PREFIX) && !provenance(k))
            .map(|(_, v)| {
                let r: meridian_core::history::HistoryRecord = postcard::from_bytes(v).unwrap();
                (r.version, r.revision)
            })
            .collect();
        // a v1 (revision 2), b v1 (revision 1); not b v2 (revision 3).
        assert_eq!(versions, [(1, 2), (1, 1)]);

        let (_dir, fresh, result) = installed(&snapshot.meta, snapshot.snapshot.into_inner()).await;
        result.unwrap();
        assert_eq!(data_entries(&fresh.lock().state().snapshot().1), 2);
    }

    #[tokio::test]
    async fn writes_and_compactions_go_on_while_a_snapshot_reads_records_and_schema_changes_wait() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let mut applier = sm.clone();
        applier
            .apply(vec![entry(1, vec![put("a", "1")])])
            .await
            .unwrap();
        // As a build does at its snapshot point, then while it reads records from sled.
        let scan = sm.record_scan.clone().read_owned().await;
        sm.lock().keep_compacted();
        applier
            .apply(vec![entry(2, vec![put("a", "2")])])
            .await
            .unwrap();
        assert_eq!(sm.lock().state().revision(), Revision(2));
        // The compaction (one version kept) does not wait, and hands over what it deleted:
        // version 1, written at revision 1, which a snapshot at revision 1 or later holds.
        applier
            .apply(vec![entry(3, vec![compact()])])
            .await
            .unwrap();
        let compacted = sm.lock().take_compacted();
        assert_eq!(compacted.len(), 1);
        assert_eq!(
            meridian_core::history::record_revision(&compacted[0].1).unwrap(),
            1
        );
        assert!(
            sm.lock().take_compacted().is_empty(),
            "kept only until taken"
        );

        let mut schema_writer = sm.clone();
        let schema = Proposal {
            command: Command::PutSchema {
                app: "app".into(),
                env: "prod".into(),
                prefix: "".into(),
                schema: Arc::from("{}"),
                force: false,
            },
            ..put("unused", "0")
        };
        let change =
            tokio::spawn(async move { schema_writer.apply(vec![entry(4, vec![schema])]).await });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!change.is_finished(), "a schema change waits for the scan");
        let (applied, _) = StateMachine::meta_of(&sm.lock()).unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        drop(scan);
        change.await.unwrap().unwrap();
        let (applied, _) = StateMachine::meta_of(&sm.lock()).unwrap();
        assert_eq!(applied.map(|l| l.index), Some(4));
    }

    #[tokio::test]
    async fn change_requests_travel_in_snapshots_and_their_steps_wait_for_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let mut applier = sm.clone();
        let create = Proposal {
            command: Command::Change(meridian_core::changes::ChangeOp::Create {
                reason: "r".into(),
                apply_at_ms: None,
                conditions: Vec::new(),
                ops: vec![meridian_core::apply::TxnOp::Put(
                    Address::parse("app", "prod", "k").unwrap(),
                    Arc::from("1"),
                )],
            }),
            ..put("unused", "0")
        };
        applier.apply(vec![entry(1, vec![create])]).await.unwrap();
        let snapshot = sm.build_detached().await.unwrap();
        let (_dir, fresh, result) = installed(&snapshot.meta, snapshot.snapshot.into_inner()).await;
        result.unwrap();
        let record = meridian_core::changes::load(fresh.lock().state(), 1).unwrap();
        assert_eq!(record.map(|r| r.reason), Some("r".to_owned()));

        // A step rewrites the record a build may be reading: it waits for the scan.
        let scan = sm.record_scan.clone().read_owned().await;
        let comment = Proposal {
            command: Command::Change(meridian_core::changes::ChangeOp::Comment {
                id: 1,
                text: "t".into(),
            }),
            ..put("unused", "0")
        };
        let step = tokio::spawn(async move { applier.apply(vec![entry(2, vec![comment])]).await });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!step.is_finished(), "a change step waits for the scan");
        drop(scan);
        step.await.unwrap().unwrap();
    }
}
