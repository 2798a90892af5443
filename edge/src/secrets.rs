//! Secrets at an edge: the data keys the origin sent this edge for the namespaces it may
//! serve secrets for, unwrapped with the connection's session key and held in memory only
//! (never written to disk), and the reveal log, which keeps each reveal on disk until the
//! origin acknowledges it is in the audit log.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_net::secrets::{KeyUnavailable, Reveal};
use meridian_protocol::secrets::{
    DataKey, KeyProvider as _, LocalKeks, RevealRecord, SessionKey, data_key_context,
};

/// Most reveals kept waiting for the origin; beyond it reveals are refused (a reveal that
/// cannot be audited is not answered).
pub const MAX_PENDING_REVEALS: u64 = 1_000_000;

/// Data keys by app, env and generation.
type KeysByApp = HashMap<String, HashMap<String, HashMap<u32, DataKey>>>;

/// The data keys this edge holds, by namespace and generation. Memory only.
#[derive(Default)]
pub struct EdgeKeys {
    /// By app, env and generation (looked up without allocating).
    keys: RwLock<KeysByApp>,
}

impl std::fmt::Debug for EdgeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EdgeKeys({} namespaces)", self.namespaces())
    }
}

impl EdgeKeys {
    /// Replaces what is held with `keys`, unwrapped with `session` (a key that does not unwrap
    /// is left out and counted). Returns how many are held.
    pub fn replace(&self, keys: &[SessionKey], session: &[u8; 32]) -> usize {
        let Some(unwrapper) = LocalKeks::new(vec![("session".into(), *session)]) else {
            return 0;
        };
        let mut held = KeysByApp::new();
        let mut n = 0;
        for k in keys {
            let mut wrapped = k.wrapped.clone();
            wrapped.kek = "session".into();
            match unwrapper.unwrap(&wrapped, &data_key_context(&k.app, &k.env, k.g)) {
                Ok(key) => {
                    held.entry(k.app.clone())
                        .or_default()
                        .entry(k.env.clone())
                        .or_default()
                        .insert(k.g, key);
                    n += 1;
                }
                Err(e) => {
                    metrics::counter!("meridian_edge_data_keys_refused_total").increment(1);
                    tracing::warn!(app = %k.app, env = %k.env, error = %e, "a data key did not unwrap");
                }
            }
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = held;
        metrics::gauge!("meridian_edge_data_keys").set(n as f64);
        n
    }

    /// Generation `g` of the data key of `app/env`.
    pub fn get(&self, app: &str, env: &str, g: u32) -> Result<DataKey, KeyUnavailable> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .and_then(|envs| envs.get(env))
            .and_then(|gens| gens.get(&g))
            .cloned()
            .ok_or(KeyUnavailable::NotHeld)
    }

    /// Namespaces held.
    pub fn namespaces(&self) -> usize {
        self.keys
            .read()
            .map_or(0, |k| k.values().map(HashMap::len).sum())
    }
}

/// Why a reveal could not be logged.
#[derive(Debug, thiserror::Error)]
pub enum RevealLogError {
    /// The disk refused.
    #[error("reveal log: {0}")]
    Store(#[from] sled::Error),
    /// Too many reveals wait for the origin.
    #[error(
        "{MAX_PENDING_REVEALS} reveal records wait to reach the audit log; no more until the origin is reached"
    )]
    Full,
}

/// Most distinct (reader, secret) pairs counted in memory before they are written out.
pub const MAX_WINDOW_ENTRIES: usize = 100_000;
/// How often counted reveals are written to the log on disk.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);

/// Reveals counted by reader, app, env, key, then (version, previous asked for too): nested
/// so that counting one more looks up by reference, allocating only for a new one.
type Window = HashMap<String, HashMap<String, HashMap<String, HashMap<String, ByVersion>>>>;
type ByVersion = HashMap<(u64, bool), Counted>;

/// Reveals counted since the last write to disk.
struct Counted {
    first_ms: u64,
    last_ms: u64,
    count: u64,
    request_id: Option<String>,
}

/// Reveals at this edge not yet in the origin's audit log. A reveal is counted in memory at
/// once (repeated reveals of one secret by one reader fold into one record with a count) and
/// written to disk (a sled tree beside the state, by a sequence number that rises across
/// restarts) every [`FLUSH_EVERY`] and at shutdown; records leave the disk when the origin
/// acknowledges them.
pub struct RevealLog {
    tree: sled::Tree,
    meta: sled::Tree,
    next: AtomicU64,
    /// Records in `tree` (sled counts by scanning).
    count: AtomicU64,
    window: std::sync::Mutex<Window>,
    /// Distinct reveals counted in `window`.
    counted: std::sync::atomic::AtomicUsize,
}

const NEXT_KEY: &[u8] = b"next";

impl RevealLog {
    /// Opens the log in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let tree = db.open_tree("reveals")?;
        let meta = db.open_tree("reveals_meta")?;
        let stored = meta
            .get(NEXT_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        let after_last = tree
            .last()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(1, |k| u64::from_be_bytes(k) + 1);
        let count = AtomicU64::new(tree.len() as u64);
        Ok(Self {
            tree,
            meta,
            next: AtomicU64::new(stored.max(after_last)),
            count,
            window: std::sync::Mutex::new(HashMap::new()),
            counted: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Counts `reveal` before it is answered (refused when the log is full).
    pub fn record(
        &self,
        reveal: &Reveal,
        time_ms: u64,
        request_id: Option<&str>,
    ) -> Result<(), RevealLogError> {
        if self.count.load(Ordering::Relaxed) >= MAX_PENDING_REVEALS {
            return Err(RevealLogError::Full);
        }
        let full = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            fn level<'m, T: Default>(m: &'m mut HashMap<String, T>, k: &str) -> &'m mut T {
                if !m.contains_key(k) {
                    m.insert(k.to_owned(), T::default());
                }
                m.get_mut(k).expect("just inserted")
            }
            let a = &reveal.address;
            let by_version = level(
                level(level(level(&mut w, &reveal.actor), &a.app), &a.env),
                &a.key,
            );
            let slot = (reveal.version, reveal.previous);
            match by_version.get_mut(&slot) {
                Some(c) => {
                    c.count += 1;
                    c.last_ms = c.last_ms.max(time_ms);
                    false
                }
                None => {
                    by_version.insert(
                        slot,
                        Counted {
                            first_ms: time_ms,
                            last_ms: time_ms,
                            count: 1,
                            request_id: request_id.map(str::to_owned),
                        },
                    );
                    self.counted.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_WINDOW_ENTRIES
                }
            }
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the reveals counted so far to disk, one record per reader and secret.
    pub fn flush(&self) -> Result<(), RevealLogError> {
        let counted = std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()));
        self.counted.store(0, Ordering::Relaxed);
        if counted.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for (actor, apps) in counted {
            for (app, envs) in apps {
                for (env, keys) in envs {
                    for (key, versions) in keys {
                        for ((version, previous), c) in versions {
                            let seq = self.next.fetch_add(1, Ordering::SeqCst);
                            let record = RevealRecord {
                                seq,
                                time_ms: c.first_ms,
                                actor: actor.clone(),
                                address: meridian_protocol::Address {
                                    app: app.clone(),
                                    env: env.clone(),
                                    key: key.clone(),
                                },
                                version,
                                previous,
                                request_id: c.request_id,
                                count: c.count,
                                last_ms: c.last_ms,
                            };
                            batch.insert(
                                &seq.to_be_bytes(),
                                serde_json::to_vec(&record).unwrap_or_default(),
                            );
                            n += 1;
                        }
                    }
                }
            }
        }
        self.tree.apply_batch(batch)?;
        self.count.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Writes what is counted and makes the log durable (at shutdown).
    pub fn persist(&self) -> Result<(), RevealLogError> {
        self.flush()?;
        self.tree.flush()?;
        Ok(())
    }

    /// The oldest `max` records on disk.
    pub fn pending(&self, max: usize) -> Vec<RevealRecord> {
        self.tree
            .iter()
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .take(max)
            .collect()
    }

    /// Forgets the records up to `upto`, which the origin recorded; the sequence number is
    /// kept so that it never goes back.
    pub fn ack(&self, upto: u64) {
        let keys: Vec<_> = self
            .tree
            .range(..=upto.to_be_bytes())
            .keys()
            .filter_map(Result::ok)
            .collect();
        let next = self.next.load(Ordering::SeqCst);
        let _ = self.meta.insert(NEXT_KEY, &next.to_be_bytes());
        for k in keys {
            if let Ok(Some(_)) = self.tree.remove(k) {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Records on disk waiting for the origin.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes counted reveals to disk every [`FLUSH_EVERY`] until shutdown, and once more then.
pub async fn flush_reveals(
    shared: std::sync::Arc<crate::shared::EdgeShared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(log) = shared.reveals.as_ref() else {
        return;
    };
    loop {
        let stop = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => true,
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        if let Err(e) = log.flush() {
            tracing::error!(error = %e, "writing the reveal log");
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::Address;

    fn reveal(key: &str) -> Reveal {
        Reveal {
            actor: "ops#1".into(),
            address: Address::parse("pay", "prod", key).unwrap(),
            version: 1,
            previous: false,
        }
    }

    #[test]
    fn reveals_wait_on_disk_until_acknowledged_and_numbers_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let log = RevealLog::open(&db).unwrap();
            for k in ["a", "b", "c", "a"] {
                log.record(&reveal(k), 5, None).unwrap();
            }
            assert!(
                log.pending(10).is_empty(),
                "counted in memory until flushed"
            );
            log.flush().unwrap();
            let counts: Vec<u64> = log.pending(10).iter().map(|r| r.count).collect();
            assert_eq!(
                counts.iter().sum::<u64>(),
                4,
                "every reveal counted: {counts:?}"
            );
            let seqs: Vec<u64> = log.pending(10).iter().map(|r| r.seq).collect();
            assert_eq!(seqs, [1, 2, 3]);
            log.ack(2);
            assert_eq!(log.pending(10).len(), 1);
            db.flush().unwrap();
        }
        // After a restart: the unacknowledged one is still there, new ones follow it.
        let db = sled::open(dir.path()).unwrap();
        let log = RevealLog::open(&db).unwrap();
        assert_eq!(log.pending(10).len(), 1);
        log.ack(3);
        assert!(log.is_empty());
        db.flush().unwrap();
        drop(log);
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        let log = RevealLog::open(&db).unwrap();
        log.record(&reveal("d"), 6, Some("req")).unwrap();
        log.flush().unwrap();
        assert_eq!(
            log.pending(10)[0].seq,
            4,
            "a sequence number is never reused"
        );
    }

    #[test]
    fn data_keys_unwrap_only_with_their_session() {
        let session = [7u8; 32];
        let key = DataKey::from_bytes([3; 32]);
        let wrapper = LocalKeks::new(vec![("session".into(), session)]).unwrap();
        let sent = vec![SessionKey {
            app: "pay".into(),
            env: "prod".into(),
            g: 1,
            wrapped: wrapper.wrap(&key, &data_key_context("pay", "prod", 1), [1; 12]),
        }];
        let keys = EdgeKeys::default();
        assert_eq!(keys.replace(&sent, &session), 1);
        assert_eq!(keys.get("pay", "prod", 1).ok(), Some(key));
        assert!(matches!(
            keys.get("pay", "dev", 1),
            Err(KeyUnavailable::NotHeld)
        ));
        // Another session's key unwraps nothing, and replaces what was held.
        assert_eq!(keys.replace(&sent, &[8; 32]), 0);
        assert!(keys.get("pay", "prod", 1).is_err());
    }
}
