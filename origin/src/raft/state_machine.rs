//! The Raft state machine: committed entries applied to the origin's deterministic core, with
//! the log position and membership recorded in the same atomic batches as the data, and
//! snapshots that are the signed state itself (its head and entries) plus the history records.
//!
//! The state is persistent but not flushed by `apply`: the applied log id is written in the
//! same atomic batch as each revision, so after a crash sled recovers a consistent prefix and
//! openraft re-applies the committed entries after it, from the Raft log, deterministically
//! (same revisions, digests and signatures); no entry is ever applied twice. A snapshot is
//! flushed before it is handed out, so the log is never purged past what is durable here. The
//! current snapshot lives in memory only (the state on disk is what it was built from); after a
//! restart the first request for one builds it afresh.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use meridian_protocol::{Address, EntryState, Revision, SignedHead, Signer};
use meridian_store::{Backend, EXTRA_PREFIX, SignedState, SledBackend, StoreError, Write};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    Entry, LogId, Outcome, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::core::{ApplyError, OriginCore};
use crate::history::HISTORY_PREFIX;
use crate::schema::SCHEMA_PREFIX;

const APPLIED: &[u8] = &[EXTRA_PREFIX, b'r', b'a'];
const MEMBERSHIP: &[u8] = &[EXTRA_PREFIX, b'r', b'm'];
/// Progress inside an entry of several commands: `(its log id, commands applied)`, written in
/// the same batch as each command but the last (which writes [`APPLIED`] and removes this), so
/// that an entry interrupted by a crash resumes after its last applied command.
const PARTIAL: &[u8] = &[EXTRA_PREFIX, b'r', b'p'];

/// The origin core shared by the state machine, the write API and the edge server.
pub type SharedCore = Arc<Mutex<OriginCore<SledBackend>>>;

/// The snapshot last built or installed, with its bytes.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;

/// What a snapshot's bytes hold.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    head: Option<SignedHead>,
    entries: Vec<(Address, EntryState)>,
    /// The history and schema records, raw (see [`crate::history`], [`crate::schema`]): a
    /// node caught up by snapshot keeps the same history and schemas as the others.
    history: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The state machine; clones share everything (a clone is also the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    core: SharedCore,
    commits: watch::Sender<Revision>,
    current: CurrentSnapshot,
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
    /// Opens the signed state in `db` (its `state` tree) with the cluster's signer.
    pub fn open(db: &sled::Db, signer: Signer, delta_window: u64) -> Result<Self, StoreError> {
        let backend = SledBackend::from_db(db.clone())?;
        let state = SignedState::open(backend, delta_window)?;
        let (commits, _) = watch::channel(state.revision());
        Ok(Self {
            core: Arc::new(Mutex::new(OriginCore::new(state, signer))),
            commits,
            current: Arc::new(Mutex::new(None)),
        })
    }

    /// The core, shared with the write API and the edge server.
    pub fn core(&self) -> SharedCore {
        self.core.clone()
    }

    /// Announces each applied revision (the edge server pushes it).
    pub fn commits(&self) -> watch::Sender<Revision> {
        self.commits.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OriginCore<SledBackend>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log position and membership recorded with the state.
    fn meta_of(
        core: &OriginCore<SledBackend>,
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
        core: &mut OriginCore<SledBackend>,
        entry: Entry,
    ) -> Result<Response, StorageError> {
        let log_id = entry.log_id;
        let extra = applied_write(&log_id)?;
        let write_extra = |core: &mut OriginCore<SledBackend>, writes: Vec<Write>| {
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
                let n = request.commands.len();
                if n == 0 {
                    write_extra(core, vec![extra])?;
                    return Ok(Response::default());
                }
                // Commands of this entry already applied before a crash are not applied again.
                let done = match core.state().backend().get(PARTIAL).map_err(sm_read)? {
                    Some(b) => match postcard::from_bytes::<(LogId, u32)>(&b) {
                        Ok((id, done)) if id == log_id => done as usize,
                        _ => 0,
                    },
                    None => 0,
                };
                let mut outcomes = Vec::with_capacity(n - done.min(n));
                for (i, proposal) in request.commands.into_iter().enumerate().skip(done) {
                    let marker = if i + 1 == n {
                        if n > 1 {
                            vec![extra.clone(), (PARTIAL.to_vec(), None)]
                        } else {
                            vec![extra.clone()]
                        }
                    } else {
                        vec![(PARTIAL.to_vec(), Some(encode(&(log_id, (i + 1) as u32))?))]
                    };
                    let outcome = match core.apply_unpublished(
                        proposal.command,
                        Some(&proposal.meta),
                        marker.clone(),
                    ) {
                        Ok((applied, _)) => Outcome::Applied(applied),
                        Err(ApplyError::VersionConflict {
                            address,
                            expected,
                            actual,
                        }) => {
                            write_extra(core, marker)?;
                            Outcome::VersionConflict {
                                address,
                                expected,
                                actual,
                            }
                        }
                        Err(ApplyError::NotFound(address)) => {
                            write_extra(core, marker)?;
                            Outcome::NotFound(address)
                        }
                        Err(ApplyError::ConditionFailed {
                            index,
                            condition,
                            actual,
                        }) => {
                            write_extra(core, marker)?;
                            Outcome::ConditionFailed {
                                index,
                                condition,
                                actual,
                            }
                        }
                        Err(ApplyError::Invalid(why)) => {
                            write_extra(core, marker)?;
                            Outcome::Invalid(why)
                        }
                        Err(ApplyError::ValueTooLarge {
                            address,
                            bytes,
                            limit,
                        }) => {
                            write_extra(core, marker)?;
                            Outcome::ValueTooLarge {
                                address,
                                bytes,
                                limit,
                            }
                        }
                        Err(ApplyError::Store(e)) => {
                            return Err(StorageIOError::apply(log_id, &e).into());
                        }
                        Err(ApplyError::History(e)) => {
                            return Err(StorageIOError::apply(log_id, &e).into());
                        }
                        Err(ApplyError::Schemas(e)) => {
                            return Err(StorageIOError::apply(log_id, &e).into());
                        }
                        Err(ApplyError::SchemaViolation { address, violation }) => {
                            write_extra(core, marker)?;
                            Outcome::SchemaViolation {
                                address,
                                path: violation.path.clone(),
                                rule: violation.rule.clone(),
                                message: violation.message.clone(),
                                prefix: violation.prefix.clone(),
                            }
                        }
                        Err(ApplyError::CurrentValuesViolate { prefix, keys }) => {
                            write_extra(core, marker)?;
                            Outcome::CurrentValuesViolate { prefix, keys }
                        }
                    };
                    outcomes.push(outcome);
                }
                Ok(Response { outcomes })
            }
        }
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_log_id, last_membership) = {
            let mut core = self.lock();
            // Durable before openraft may purge the log up to it (apply does not flush).
            core.state_mut()
                .flush()
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            let (head, entries) = core.state().snapshot();
            let mut history = Vec::new();
            for prefix in [&HISTORY_PREFIX[..], &SCHEMA_PREFIX[..]] {
                history.extend(
                    core.state()
                        .backend()
                        .scan_prefix(prefix)
                        .map_err(|e| StorageIOError::write_snapshot(None, &e))?,
                );
            }
            let (applied, membership) = Self::meta_of(&core)?;
            (
                SnapshotData {
                    head,
                    entries,
                    history,
                },
                applied,
                membership,
            )
        };
        let bytes =
            postcard::to_allocvec(&data).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
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

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build()
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
        let mut out = Vec::new();
        let revision = {
            let mut core = self.lock();
            for entry in entries {
                let response = Self::apply_one(&mut core, entry)?;
                out.push(response);
            }
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
        let data: SnapshotData = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let mut extra = vec![
            (APPLIED.to_vec(), Some(encode(&meta.last_log_id)?)),
            (MEMBERSHIP.to_vec(), Some(encode(&meta.last_membership)?)),
        ];
        let revision = {
            let mut core = self.lock();
            // The snapshot's history replaces this node's, in the same batch as its state.
            for prefix in [&HISTORY_PREFIX[..], &SCHEMA_PREFIX[..]] {
                let old = core
                    .state()
                    .backend()
                    .scan_prefix(prefix)
                    .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
                extra.extend(old.into_iter().map(|(k, _)| (k, None)));
            }
            extra.extend(data.history.into_iter().map(|(k, v)| (k, Some(v))));
            let state = core.state_mut();
            match data.head {
                Some(head) => state.install_snapshot_with(head, data.entries, extra),
                // A snapshot taken before the first write: only a state without writes can
                // take it.
                None if state.revision() == Revision(0) && data.entries.is_empty() => {
                    state.write_extra(extra).and_then(|()| state.flush())
                }
                None => Err(StoreError::Invalid("snapshot without a head")),
            }
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
            let revision = state.revision();
            core.reload_schemas();
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
                self.build().map(Some)
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
    use crate::core::{Command, Proposal};
    use crate::history::WriteMeta;
    use crate::raft::Request;

    fn open(dir: &std::path::Path) -> StateMachine {
        let db = sled::open(dir).expect("sled");
        StateMachine::open(&db, Signer::from_bytes(&[7; 32]), 1024).expect("state machine")
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
            },
        }
    }

    #[tokio::test]
    async fn an_entry_interrupted_after_some_commands_resumes_after_them() {
        let commands = vec![put("a", "1"), put("b", "2"), put("c", "3")];
        let log_id = LogId::new(CommittedLeaderId::new(1, 0), 1);
        let entry = Entry {
            log_id,
            payload: EntryPayload::Normal(Request {
                commands: commands.clone(),
            }),
        };
        let whole = tempfile::tempdir().unwrap();
        let mut whole = open(whole.path());
        whole.apply(vec![entry.clone()]).await.unwrap();

        // What a crash after the first command leaves on disk: its revision, with the entry's
        // progress beside it and the applied log id not yet moved.
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        {
            let mut core = sm.lock();
            let progress = vec![(PARTIAL.to_vec(), Some(encode(&(log_id, 1u32)).unwrap()))];
            let first = commands[0].clone();
            core.apply_unpublished(first.command, Some(&first.meta), progress)
                .unwrap();
            core.state_mut().publish().unwrap();
        }
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        // openraft applies the entry again: only the two commands left are applied.
        let out = sm.apply(vec![entry]).await.unwrap();
        assert_eq!(out[0].outcomes.len(), 2);
        assert!(matches!(&out[0].outcomes[0], Outcome::Applied(a) if a.revision == Revision(2)));
        let (a, b) = (sm.lock(), whole.lock());
        assert_eq!(a.state().revision(), Revision(3));
        assert_eq!(a.state().head(), b.state().head());
        assert_eq!(StateMachine::meta_of(&a).unwrap().0, Some(log_id));
        assert_eq!(
            a.state().backend().get(PARTIAL).unwrap(),
            None,
            "progress cleared"
        );
    }
}
