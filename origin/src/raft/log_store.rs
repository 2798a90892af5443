//! The Raft log and vote in sled: one tree of entries keyed by big-endian index, one tree of
//! metadata (vote, last purged log id, committed log id). Appends are flushed before openraft
//! is told they are durable, by group commit: `append` returns once the entries are readable
//! and a flusher thread makes every append queued meanwhile durable with one flush. The vote,
//! truncation and the purge point are flushed before they return and never leave a hole; the
//! purged entries are skipped by reads at once and deleted from sled by a blocking thread
//! afterwards (or, after a crash, at the next open). The committed log id is written without a
//! flush of its own (it is a hint: it rides on the next flush).
//!
//! The newest entries are also kept decoded in memory (`RecentEntries`, bounded): openraft
//! reads every entry back soon after appending it (the leader to replicate it to each follower,
//! every node to apply it), and serving those reads from memory spares a sled read and a decode
//! of each entry per reader.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use meridian_store::DurableDb;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// The log store; cheap to clone (clones share the trees, the flusher and the recent entries),
/// which is also its log reader.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: DurableDb,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
    recent: std::sync::Arc<std::sync::Mutex<RecentEntries>>,
    /// Entries below this index are purged: never read, whether or not the background removal
    /// (see `purge`) has deleted them from sled yet.
    purged_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Purged entries deleted from sled per batch by the background removal.
const PURGE_CHUNK: usize = 256;

/// Deletes every entry of `log` below `below`, a chunk at a time, without a flush of its own
/// (the purge point is durable already; entries left by a crash are deleted at the next open).
fn remove_below(log: &sled::Tree, below: u64) -> Result<(), sled::Error> {
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in log.range(..key(below)).take(PURGE_CHUNK) {
            let (k, _) = item?;
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        log.apply_batch(batch)?;
    }
}

/// Entries kept in memory at most.
const RECENT_ENTRIES: usize = 1024;
/// Encoded bytes of the entries kept in memory, at most (beyond it the oldest are dropped).
const RECENT_BYTES: usize = 64 << 20;

/// The newest appended entries, consecutive by index, as they are in sled: appends add to the
/// end, truncation and purging remove what they remove from sled, so a range read from here is
/// what sled would answer.
#[derive(Debug, Default)]
struct RecentEntries {
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, entry: Entry, encoded_bytes: usize) {
        let follows = match self.entries.back() {
            Some((last, _)) => last.log_id.index + 1 == entry.log_id.index,
            None => true,
        };
        if !follows {
            self.clear();
        }
        self.bytes += encoded_bytes;
        self.entries.push_back((entry, encoded_bytes));
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            match self.entries.pop_front() {
                Some((_, b)) => self.bytes -= b,
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            if let Some((_, b)) = self.entries.pop_back() {
                self.bytes -= b;
            }
        }
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= index)
        {
            if let Some((_, b)) = self.entries.pop_front() {
                self.bytes -= b;
            }
        }
    }

    /// The entries with indexes in `start..end` (`end` exclusive, `None`: through the newest),
    /// if every one of them is held here.
    fn range(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.0.log_id.index;
        let end = end.unwrap_or(last + 1);
        if start < first || end > last + 1 {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
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
    fn start(db: DurableDb) -> std::io::Result<Self> {
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
                    let flushed = db.sync();
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
    pub fn open(db: &DurableDb) -> Result<Self, sled::Error> {
        let store = Self {
            db: db.clone(),
            log: db.db().open_tree("raft_log")?,
            meta: db.db().open_tree("raft_meta")?,
            flusher: Flusher::start(db.clone())?,
            recent: Default::default(),
            purged_below: Default::default(),
        };
        // A purge point that does not decode is left to `get_log_state` to report.
        let purged = store
            .get_meta::<Option<LogId>>(LAST_PURGED)
            .ok()
            .flatten()
            .flatten();
        if let Some(below) = purged.and_then(|l| l.index.checked_add(1)) {
            store
                .purged_below
                .store(below, std::sync::atomic::Ordering::Release);
            // What a purge interrupted by a crash left.
            remove_below(&store.log, below)?;
        }
        Ok(store)
    }

    /// The first index a read may return.
    fn first_readable(&self) -> u64 {
        self.purged_below.load(std::sync::atomic::Ordering::Acquire)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_meta<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(k).map_err(read_err)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    async fn put_meta<T: Serialize>(&self, k: &[u8], value: &T) -> Result<(), StorageError> {
        self.meta.insert(k, encode(value)?).map_err(write_err)?;
        self.sync().await.map_err(write_err)?;
        Ok(())
    }

    /// [`DurableDb::sync`] on a blocking thread.
    async fn sync(&self) -> Result<(), sled::Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.sync())
            .await
            .map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))?
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
        let first = self.first_readable();
        let from = match range.start_bound() {
            Bound::Included(&i) => Some(i),
            Bound::Excluded(&i) => i.checked_add(1),
            Bound::Unbounded => Some(0),
        }
        .map(|i| i.max(first));
        let to = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1).map(Some),
            Bound::Excluded(&i) => Some(Some(i)),
            Bound::Unbounded => Some(None),
        };
        if let (Some(from), Some(Some(to))) = (from, to)
            && from >= to
        {
            // Empty, or wholly purged.
            return Ok(Vec::new());
        }
        if let (Some(from), Some(to)) = (from, to)
            && let Some(entries) = self.recent().range(from, to)
        {
            return Ok(entries);
        }
        // Purged entries the background removal has not deleted yet are not read.
        let start = match range.start_bound() {
            Bound::Included(&i) if i >= first => Bound::Included(key(i)),
            Bound::Excluded(&i) if i >= first => Bound::Excluded(key(i)),
            _ => Bound::Included(key(first)),
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
        self.sync()
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
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = encode(&entry)?;
            appended.push((entry, bytes));
        }
        {
            // Under the lock, so that a reader sees sled and memory agree.
            let mut recent = self.recent();
            // One entry (what a leader appends, and a follower in step with it) is one plain
            // insert, atomic by itself; several go in one batch, so that a crash never keeps
            // a later entry without an earlier one. A sled batch costs more than an insert: it
            // seals and writes out sled's current IO buffer twice.
            let stored = match appended.as_slice() {
                [(entry, bytes)] => self
                    .log
                    .insert(key(entry.log_id.index), bytes.as_slice())
                    .map(|_| ()),
                _ => {
                    let mut batch = sled::Batch::default();
                    for (entry, bytes) in &appended {
                        batch.insert(&key(entry.log_id.index), bytes.as_slice());
                    }
                    self.log.apply_batch(batch)
                }
            };
            if let Err(e) = stored {
                recent.clear();
                return Err(write_err(e));
            }
            for (entry, bytes) in appended {
                recent.push(entry, bytes.len());
            }
        }
        // Readable now; durable when the flusher reports it.
        self.flusher.tx.send(callback).await.map_err(|_| {
            StorageIOError::write_logs(&std::io::Error::other("the log flusher stopped"))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().truncate(log_id.index);
        let mut batch = sled::Batch::default();
        for item in self.log.range(key(log_id.index)..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.sync().await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash half-way leaves entries that are simply
        // purged again, never a hole below the recorded point.
        self.put_meta(LAST_PURGED, &Some(log_id)).await?;
        self.recent().purge(log_id.index);
        let below = log_id.index.saturating_add(1);
        self.purged_below
            .fetch_max(below, std::sync::atomic::Ordering::AcqRel);
        // From here the entries are purged (reads skip them). Deleting them from sled is left
        // to a blocking thread: a purge after a snapshot deletes thousands of entries, which
        // took 0.4-0.6 s, during which openraft (which awaits this in its core task) sent no
        // heartbeats, and the followers elected another leader.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match remove_below(&log, below) {
                Ok(()) => tracing::debug!(
                    below,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "purged Raft log entries removed"
                ),
                Err(e) => tracing::warn!("removing purged Raft log entries below {below}: {e}"),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    /// Writes blank entries at `indexes` straight into sled (as earlier appends left them).
    fn put_blanks(store: &LogStore, indexes: std::ops::RangeInclusive<u64>) {
        let mut batch = sled::Batch::default();
        for i in indexes {
            batch.insert(&key(i), encode(&blank(i)).expect("encode"));
        }
        store.log.apply_batch(batch).expect("apply");
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut r = RecentEntries::default();
        assert_eq!(indexes(r.range(0, None)), None);
        for i in 5..=9 {
            r.push(blank(i), 10);
        }
        assert_eq!(indexes(r.range(5, Some(8))), Some(vec![5, 6, 7]));
        assert_eq!(indexes(r.range(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(r.range(9, Some(9))), Some(vec![]));
        // Partly outside what is held: sled must answer.
        assert_eq!(indexes(r.range(4, Some(6))), None);
        assert_eq!(indexes(r.range(8, Some(11))), None);

        r.truncate(8);
        assert_eq!(indexes(r.range(5, None)), Some(vec![5, 6, 7]));
        assert_eq!(indexes(r.range(5, Some(9))), None);
        r.purge(5);
        assert_eq!(indexes(r.range(6, None)), Some(vec![6, 7]));
        assert_eq!(r.bytes, 20);

        // An append that does not follow (after a truncation sled answered) starts afresh.
        r.push(blank(12), 10);
        assert_eq!(indexes(r.range(12, None)), Some(vec![12]));
        assert_eq!(indexes(r.range(6, None)), None);
        assert_eq!(r.bytes, 10);
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut r = RecentEntries::default();
        for i in 1..=(RECENT_ENTRIES as u64 + 10) {
            r.push(blank(i), 1);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first_index(), Some(11));
        r.push(blank(RECENT_ENTRIES as u64 + 11), RECENT_BYTES);
        assert_eq!(
            r.entries.len(),
            1,
            "one entry of the whole byte budget is kept alone"
        );
        r.push(blank(RECENT_ENTRIES as u64 + 12), 1);
        assert_eq!(r.first_index(), Some(RECENT_ENTRIES as u64 + 12));
        assert!(r.bytes <= RECENT_BYTES);
    }

    #[tokio::test]
    async fn reads_after_appends_truncation_and_purge_match_sled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = DurableDb::open(dir.path()).expect("sled");
        let mut store = LogStore::open(&db).expect("log store");
        let mut batch = sled::Batch::default();
        for i in 1..=6 {
            batch.insert(&key(i), encode(&blank(i)).expect("encode"));
            store.recent().push(blank(i), 1);
        }
        store.log.apply_batch(batch).expect("apply");
        let all = |s: &mut LogStore| {
            let mut s = s.clone();
            async move { indexes(Some(s.try_get_log_entries(0..).await.expect("read"))) }
        };
        assert_eq!(all(&mut store).await, Some(vec![1, 2, 3, 4, 5, 6]));
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 0), 5))
            .await
            .expect("truncate");
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 0), 2))
            .await
            .expect("purge");
        assert_eq!(all(&mut store).await, Some(vec![3, 4]));
        assert_eq!(
            indexes(Some(store.try_get_log_entries(3..=4).await.expect("read"))),
            Some(vec![3, 4])
        );
        // Memory forgotten: sled answers the same.
        store.recent().clear();
        assert_eq!(all(&mut store).await, Some(vec![3, 4]));
    }

    #[tokio::test]
    async fn purged_entries_are_never_read_and_leave_sled_in_the_background_or_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = DurableDb::open(dir.path()).expect("sled");
        let mut store = LogStore::open(&db).expect("log store");
        put_blanks(&store, 1..=1000);
        // Removal goes upward, so the last purged entry leaves sled last.
        let mut last_removed = store.log.watch_prefix(key(600));
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 0), 600))
            .await
            .expect("purge");
        // At once, whatever sled still holds: reads start after the purge point.
        let read = store.try_get_log_entries(0..).await.expect("read");
        assert_eq!(read.first().map(|e| e.log_id.index), Some(601));
        assert_eq!(read.len(), 400);
        let read = store.try_get_log_entries(590..=605).await.expect("read");
        assert_eq!(indexes(Some(read)), Some((601..=605).collect()));
        let read = store.try_get_log_entries(590..=595).await.expect("read");
        assert!(read.is_empty(), "a wholly purged range reads nothing");
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), &mut last_removed)
            .await
            .expect("purged entries leave sled in time");
        assert!(matches!(event, Some(sled::Event::Remove { .. })));
        let first = store.log.first().expect("first").map(|(k, _)| k.to_vec());
        assert_eq!(first, Some(key(601).to_vec()));
        // Entries a crash left below the recorded purge point go when the store opens.
        put_blanks(&store, 1..=600);
        drop(store);
        let store = LogStore::open(&db).expect("log store");
        assert_eq!(store.log.len(), 400);
        assert_eq!(store.first_readable(), 601);
    }
}
