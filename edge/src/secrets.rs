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

/// The data keys this edge holds, by namespace and generation. Memory only.
#[derive(Default)]
pub struct EdgeKeys {
    keys: RwLock<HashMap<(String, String), HashMap<u32, DataKey>>>,
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
        let mut held: HashMap<(String, String), HashMap<u32, DataKey>> = HashMap::new();
        let mut n = 0;
        for k in keys {
            let mut wrapped = k.wrapped.clone();
            wrapped.kek = "session".into();
            match unwrapper.unwrap(&wrapped, &data_key_context(&k.app, &k.env, k.g)) {
                Ok(key) => {
                    held.entry((k.app.clone(), k.env.clone()))
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
            .get(&(app.to_owned(), env.to_owned()))
            .and_then(|gens| gens.get(&g))
            .cloned()
            .ok_or(KeyUnavailable::NotHeld)
    }

    /// Namespaces held.
    pub fn namespaces(&self) -> usize {
        self.keys.read().map_or(0, |k| k.len())
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
        "{MAX_PENDING_REVEALS} reveals wait to reach the audit log; no more until the origin is reached"
    )]
    Full,
}

/// Reveals at this edge not yet in the origin's audit log, on disk (a sled tree beside the
/// state), by a sequence number that rises across restarts.
pub struct RevealLog {
    tree: sled::Tree,
    meta: sled::Tree,
    next: AtomicU64,
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
        Ok(Self {
            tree,
            meta,
            next: AtomicU64::new(stored.max(after_last)),
        })
    }

    /// Logs `reveal` before it is answered.
    pub fn record(
        &self,
        reveal: &Reveal,
        time_ms: u64,
        request_id: Option<String>,
    ) -> Result<(), RevealLogError> {
        if self.tree.len() as u64 >= MAX_PENDING_REVEALS {
            return Err(RevealLogError::Full);
        }
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let record = RevealRecord {
            seq,
            time_ms,
            actor: reveal.actor.clone(),
            address: reveal.address.clone(),
            version: reveal.version,
            previous: reveal.previous,
            request_id,
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        self.tree.insert(seq.to_be_bytes(), bytes)?;
        Ok(())
    }

    /// The oldest `max` records waiting.
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
            let _ = self.tree.remove(k);
        }
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
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
            for k in ["a", "b", "c"] {
                log.record(&reveal(k), 5, None).unwrap();
            }
            let seqs: Vec<u64> = log.pending(10).iter().map(|r| r.seq).collect();
            assert_eq!(seqs, [1, 2, 3]);
            log.ack(2);
            assert_eq!(log.pending(10).len(), 1);
            db.flush().unwrap();
        }
        // After a restart: the unacknowledged one is still there, new ones follow it.
        let db = sled::open(dir.path()).unwrap();
        let log = RevealLog::open(&db).unwrap();
        assert_eq!(log.pending(10)[0].address.key, "c");
        log.ack(3);
        assert!(log.is_empty());
        db.flush().unwrap();
        drop(log);
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        let log = RevealLog::open(&db).unwrap();
        log.record(&reveal("d"), 6, Some("req".into())).unwrap();
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
