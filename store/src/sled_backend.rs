//! The sled backend (feature `sled`): everything in one tree so that a batch is atomic, a
//! flush that reaches the disk, and read-only views of a write-back over it.

use std::collections::BTreeMap;

use crate::backend::{Backend, BackendError, Pairs, Write, WriteBack, merge_pairs};
use crate::durable::DurableDb;

/// sled, with everything in one tree so that a batch is atomic; a flush syncs the disk
/// ([`DurableDb`]).
pub struct SledBackend {
    db: DurableDb,
    tree: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir` (see [`DurableDb::open`]).
    pub fn open(dir: &std::path::Path) -> Result<Self, BackendError> {
        Self::from_db(DurableDb::open(dir)?)
    }

    /// The state tree of an open database (whose other trees the caller may use).
    pub fn from_db(db: DurableDb) -> Result<Self, BackendError> {
        let tree = db.db().open_tree("state")?;
        Ok(Self { db, tree })
    }

    /// The database, with the handle that syncs it.
    pub fn durable(&self) -> &DurableDb {
        &self.db
    }

    /// The database, to open further trees in it.
    pub fn db(&self) -> &sled::Db {
        self.db.db()
    }

    /// The tree every batch goes to, for a caller that reads it directly (a snapshot scan
    /// that must not hold the state's lock).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
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
        self.db.sync()?;
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

    fn scan_prefix_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, BackendError> {
        self.tree
            .scan_prefix(prefix)
            .keys()
            .map(|r| r.map(|k| k.to_vec()).map_err(BackendError::from))
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

impl WriteBack<SledBackend> {
    /// A [`DetachedView`] of the keys under `prefix`: what is gathered under it, copied, in
    /// front of a handle on the sled tree. Costs a copy of the gathered writes under the prefix
    /// (bounded by the write-back limits), not of what sled holds.
    pub fn detached_view(&self, prefix: &[u8]) -> DetachedView {
        let gathered = self
            .gathered
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        DetachedView {
            gathered,
            tree: self.inner.tree().clone(),
        }
    }
}

/// A read-only view of one key prefix of a [`WriteBack`] over sled that needs no lock on the
/// backend once taken (history reads run on it while writes go on): the writes gathered
/// under the prefix when it was taken, in front of the sled tree, read live. A write handed
/// back to sled meanwhile is found in either; later writes may or may not show. Reads outside
/// the prefix see only sled. Writes are refused.
pub struct DetachedView {
    gathered: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    tree: sled::Tree,
}

impl Backend for DetachedView {
    fn apply(&mut self, _: Vec<Write>) -> Result<(), BackendError> {
        Err(BackendError::ReadOnly)
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        Err(BackendError::ReadOnly)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        match self.gathered.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, BackendError> {
        let inner = self
            .tree
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(BackendError::from)
            })
            .collect::<Result<Pairs, _>>()?;
        let gathered = self
            .gathered
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix));
        Ok(merge_pairs(inner, gathered))
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let in_range = || self.gathered.range(from.to_vec()..to.to_vec());
        // As in WriteBack::range: enough inner pairs that the first `limit` merged are right.
        let ask = limit.saturating_add(in_range().count());
        let inner = self
            .tree
            .range(from..to)
            .take(ask)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(BackendError::from)
            })
            .collect::<Result<Pairs, _>>()?;
        let mut merged = merge_pairs(inner, in_range());
        merged.truncate(limit);
        Ok(merged)
    }
}
