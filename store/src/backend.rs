//! Raw ordered key-value backends: sled on disk (`crate::sled_backend`), an in-memory map that models what a crash
//! keeps (only flushed writes survive), and [`WriteBack`], which gathers batches in memory and
//! hands them to the backend behind it together. Each batch is applied atomically.

use std::collections::BTreeMap;

/// One write in a batch: `Some(value)` inserts, `None` removes.
pub type Write = (Vec<u8>, Option<Vec<u8>>);
/// Key-value pairs read back, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Why the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// sled reported an error.
    #[cfg(feature = "sled")]
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A write to a read-only view.
    #[error("a read-only view refuses writes")]
    ReadOnly,
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
    /// The keys of [`Backend::scan_prefix`], without copying the values (a scan of every
    /// history record for a compaction need not copy a value of each).
    fn scan_prefix_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, BackendError> {
        Ok(self
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
    /// Pairs with `from <= key < to`, in key order, at most `limit` of them.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError>;
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

    fn scan_prefix_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, BackendError> {
        Ok(self
            .live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .live
            .range(from.to_vec()..to.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// How much [`WriteBack`] gathers before it hands its batches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBackLimits {
    /// Batches gathered, at most.
    pub max_batches: usize,
    /// Key and value bytes gathered, at most (a larger single batch still goes, alone).
    pub max_bytes: usize,
}

/// A backend in front of another that gathers applied batches in memory and writes them to it
/// as one batch once [`WriteBackLimits`] are reached, or on [`Backend::flush`]. Reads see the
/// gathered writes. The inner backend's cost is mostly per batch and per record, so N batches
/// handed on together cost it one batch, and a key written by several of them one record.
///
/// A crash loses the batches still gathered, never part of one: what survives is a prefix of
/// the batches applied, as with any backend between flushes. Dropping it is a crash too: an
/// owner that stops cleanly calls [`Backend::flush`] first (a flush in `Drop` raced sled's own
/// teardown on another thread when a runtime dropped its tasks, and deadlocked). Only for a caller that can redo
/// lost batches (the origin's Raft state machine, which re-applies them from the Raft log). If
/// handing on fails, the error surfaces from the `apply` or `flush` that triggered it and the
/// gathered batches are lost; as after any backend failure, the caller must reopen its state.
pub struct WriteBack<B: Backend> {
    pub(crate) inner: B,
    pub(crate) gathered: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    batches: usize,
    bytes: usize,
    limits: WriteBackLimits,
}

impl<B: Backend> WriteBack<B> {
    /// Gathers in front of `inner`.
    pub fn new(inner: B, limits: WriteBackLimits) -> Self {
        Self {
            inner,
            gathered: BTreeMap::new(),
            batches: 0,
            bytes: 0,
            limits,
        }
    }

    /// The backend behind.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Batches applied but not yet handed on.
    pub fn gathered_batches(&self) -> usize {
        self.batches
    }

    /// Hands every gathered write to the inner backend in one batch (not flushed).
    pub fn write_back(&mut self) -> Result<(), BackendError> {
        self.batches = 0;
        self.bytes = 0;
        if self.gathered.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.gathered).into_iter().collect();
        self.inner.apply(batch)
    }

    /// `inner`'s pairs merged with the gathered writes under `in_range` (both in key order):
    /// a gathered write replaces or removes the inner pair of its key.
    fn merged<'a>(
        inner: Pairs,
        gathered: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
    ) -> Pairs {
        merge_pairs(inner, gathered)
    }
}

/// `inner`'s pairs merged with `gathered` writes (both in key order): a gathered write
/// replaces or removes the inner pair of its key.
pub(crate) fn merge_pairs<'a>(
    inner: Pairs,
    gathered: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) -> Pairs {
    let mut out = Vec::with_capacity(inner.len());
    let mut inner = inner.into_iter().peekable();
    for (k, v) in gathered {
        while let Some(pair) = inner.next_if(|(ik, _)| ik < k) {
            out.push(pair);
        }
        inner.next_if(|(ik, _)| ik == k);
        if let Some(v) = v {
            out.push((k.clone(), v.clone()));
        }
    }
    out.extend(inner);
    out
}

/// `keys` (sorted) with `over` (sorted; `true`: the key is written, `false`: removed) applied.
pub(crate) fn merged_keys<'a>(
    keys: Vec<Vec<u8>>,
    over: impl Iterator<Item = (&'a Vec<u8>, bool)>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(keys.len());
    let mut keys = keys.into_iter().peekable();
    for (k, present) in over {
        while let Some(key) = keys.next_if(|ik| ik < k) {
            out.push(key);
        }
        keys.next_if(|ik| ik == k);
        if present {
            out.push(k.clone());
        }
    }
    out.extend(keys);
    out
}

impl<B: Backend> Backend for WriteBack<B> {
    fn apply(&mut self, batch: Vec<Write>) -> Result<(), BackendError> {
        for (k, v) in batch {
            self.bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            self.gathered.insert(k, v);
        }
        self.batches += 1;
        if self.batches >= self.limits.max_batches || self.bytes >= self.limits.max_bytes {
            self.write_back()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.write_back()?;
        self.inner.flush()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        match self.gathered.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.get(key),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, BackendError> {
        let gathered = self
            .gathered
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix));
        Ok(Self::merged(self.inner.scan_prefix(prefix)?, gathered))
    }

    fn scan_prefix_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, BackendError> {
        let gathered = self
            .gathered
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v.is_some()));
        Ok(merged_keys(self.inner.scan_prefix_keys(prefix)?, gathered))
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Pairs, BackendError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let in_range = || self.gathered.range(from.to_vec()..to.to_vec());
        // Each gathered write hides at most one inner pair, so `limit` more inner pairs than
        // there are gathered writes in the range leave at least `limit` merged pairs up to the
        // last inner pair read: the first `limit` merged pairs are then the right ones.
        let ask = limit.saturating_add(in_range().count());
        let mut merged = Self::merged(self.inner.range(from, to, ask)?, in_range());
        merged.truncate(limit);
        Ok(merged)
    }
}
