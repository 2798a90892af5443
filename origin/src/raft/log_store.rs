//! The Raft log and vote in sled: one tree of entries keyed by big-endian index, one tree of
//! metadata (vote, last purged log id, committed log id). Appends are flushed before openraft
//! is told they are durable, by group commit: `append` returns once the entries are readable
//! and a flusher thread makes every append queued meanwhile durable with one flush. The vote,
//! truncation and purging are flushed before they return and never leave a hole. The committed
//! log id is written without a flush of its own (it is a hint: it rides on the next flush).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// The log store; cheap to clone (clones share the trees and the flusher), which is also its
/// log reader.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

/// Appends waiting for their flush, at most. A full queue holds `append` back.
const FLUSH_QUEUE: usize = 4096;

/// Group commit of appends: each `append` queues its callback; a thread takes every callback
/// queued, flushes sled once, and reports them durable in the order they came. The thread
/// ends when the last clone of the store is dropped.
#[derive(Clone)]
struct Flusher {
    tx: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("queued", &(FLUSH_QUEUE - self.tx.capacity()))
            .finish()
    }
}

impl Flusher {
    fn start(db: sled::Db) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<LogFlushed<TypeConfig>>(FLUSH_QUEUE);
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let flushed = db.flush().map(|_| ());
                    for callback in batch.drain(..) {
                        callback.log_io_completed(
                            flushed
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| std::io::Error::other(e.to_string())),
                        );
                    }
                }
            })?;
        Ok(Self { tx })
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(|e| StorageIOError::write(&e).into())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageIOError::read(&e).into())
}

fn read_err(e: sled::Error) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: sled::Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// The log in `db`'s trees `raft_log` and `raft_meta`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher: Flusher::start(db.clone())?,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(k).map_err(read_err)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    async fn put_meta<T: Serialize>(&self, k: &[u8], value: &T) -> Result<(), StorageError> {
        self.meta.insert(k, encode(value)?).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last().map_err(read_err)? {
            Some((_, v)) => Ok(Some(decode::<Entry>(&v)?.log_id)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(key(i)),
            Bound::Excluded(&i) => Bound::Excluded(key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(key(i)),
            Bound::Excluded(&i) => Bound::Excluded(key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.get_meta::<Option<LogId>>(LAST_PURGED)?.flatten();
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.meta
            .insert(VOTE, encode(vote)?)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        match self
            .meta
            .get(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?
        {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // No flush of its own: a committed id lost in a crash only means openraft re-applies
        // less at startup and learns the rest from the leader.
        self.meta
            .insert(COMMITTED, encode(&committed)?)
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&key(entry.log_id.index), encode(&entry)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        // Readable now; durable when the flusher reports it.
        self.flusher.tx.send(callback).await.map_err(|_| {
            StorageIOError::write_logs(&std::io::Error::other("the log flusher stopped"))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(key(log_id.index)..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash half-way leaves entries that are simply
        // purged again, never a hole below the recorded point.
        self.put_meta(LAST_PURGED, &Some(log_id)).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=key(log_id.index)) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}
