//! Raw ordered key-value backends: sled on disk, and an in-memory map that models what a crash
//! keeps (only flushed writes survive). Each batch is applied atomically.

use std::collections::BTreeMap;

/// One write in a batch: `Some(value)` inserts, `None` removes.
pub type Write = (Vec<u8>, Option<Vec<u8>>);
/// Key-value pairs read back, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Why the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// sled reported an error.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
}

/// An ordered key-value store with atomic batches.
pub trait Backend: Send + Sync {
    /// Applies every write or none, even across a crash.
    fn apply(&mut self, batch: Vec<Write>) -> Result<(), BackendError>;
    /// Makes everything applied so far durable.
    fn flush(&mut self) -> Result<(), BackendError>;
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, BackendError>;
    /// Pairs with `from <= key < to`, in key order, at most `limit` of them.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError>;
}

/// How long [`SledBackend::open`] waits for another handle in this process to release the
/// database folder.
pub const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled, with everything in one tree so that a batch is atomic.
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    ///
    /// sled locks the folder for as long as its database is open, and its background flusher
    /// may hold a just-dropped database for a moment; a reopen in the same process (a restart
    /// in a test, a node restarted in place) waits up to [`REOPEN_WAIT`] for the lock.
    pub fn open(dir: &std::path::Path) -> Result<Self, BackendError> {
        let started = std::time::Instant::now();
        loop {
            let opened = sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Ok(db) => return Self::from_db(db),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < REOPEN_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The state tree of an open database (whose other trees the caller may use).
    pub fn from_db(db: sled::Db) -> Result<Self, BackendError> {
        let tree = db.open_tree("state")?;
        Ok(Self { db, tree })
    }

    /// The database, to open further trees in it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

impl Backend for SledBackend {
    fn apply(&mut self, batch: Vec<Write>) -> Result<(), BackendError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.db.flush()?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, BackendError> {
        self.tree
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(BackendError::from)
            })
            .collect()
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError> {
        self.tree
            .range(from..to)
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(BackendError::from)
            })
            .collect()
    }
}

/// An in-memory backend. `crash()` drops whatever was applied since the last flush, which is
/// what the simulator needs to model a node losing power.
#[derive(Debug, Default, Clone)]
pub struct MemBackend {
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    unflushed: Vec<Write>,
}

impl MemBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// What survives a crash: a new backend holding only flushed writes.
    pub fn crash(&self) -> Self {
        Self {
            live: self.durable.clone(),
            durable: self.durable.clone(),
            unflushed: Vec::new(),
        }
    }
}

impl Backend for MemBackend {
    fn apply(&mut self, batch: Vec<Write>) -> Result<(), BackendError> {
        for (k, v) in &batch {
            match v {
                Some(v) => self.live.insert(k.clone(), v.clone()),
                None => self.live.remove(k),
            };
        }
        self.unflushed.extend(batch);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        for (k, v) in self.unflushed.drain(..) {
            match v {
                Some(v) => self.durable.insert(k, v),
                None => self.durable.remove(&k),
            };
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.live.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, BackendError> {
        Ok(self
            .live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError> {
        Ok(self
            .live
            .range(from.to_vec()..to.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
