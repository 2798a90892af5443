//! The origin's key ring: the key-encryption keys of the local key file (re-read when a data
//! key names one it does not hold, so a rotation started on another node is picked up), and
//! the data keys unwrapped from the replicated records, cached in memory only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meridian_protocol::secrets::{
    DataKey, DataKeyRecord, KeyProvider, LocalKeks, RecordedKey, SecretError, WrappedKey,
    data_key_context,
};
use rand_core::RngCore as _;

use super::kek_file::{self, KekFileError};

/// Most unwrapped data keys cached (a namespace's generations count once each); beyond it the
/// cache starts over.
const MAX_CACHED_KEYS: usize = 10_000;
/// The key file is re-read for an unknown key id at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A data key's namespace and generation.
type KeySlot = (String, String, u32);

/// Key-encryption keys and cached data keys.
pub struct Keyring {
    path: PathBuf,
    keks: RwLock<Arc<LocalKeks>>,
    cache: Mutex<HashMap<KeySlot, (WrappedKey, DataKey)>>,
    reloaded: Mutex<Option<Instant>>,
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut out);
    out
}

impl Keyring {
    /// Loads the key file.
    pub fn open(path: PathBuf) -> Result<Self, KekFileError> {
        let keks = kek_file::load(&path)?;
        Ok(Self {
            path,
            keks: RwLock::new(Arc::new(keks)),
            cache: Mutex::new(HashMap::new()),
            reloaded: Mutex::new(None),
        })
    }

    fn keks(&self) -> Arc<LocalKeks> {
        self.keks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the key file (after a key was added to it).
    pub fn reload(&self) -> Result<(), KekFileError> {
        let keks = kek_file::load(&self.path)?;
        *self.keks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keks);
        Ok(())
    }

    /// The id of the key-encryption key that wraps new data keys.
    pub fn current_kek(&self) -> String {
        self.keks().current().to_owned()
    }

    /// Unwraps `wrapped` (generation `g` of `app/env`), reloading the key file once if it
    /// names a key not held.
    fn unwrap(
        &self,
        app: &str,
        env: &str,
        g: u32,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, SecretError> {
        let context = data_key_context(app, env, g);
        let keks = self.keks();
        if !keks.holds(&wrapped.kek) {
            let mut at = self.reloaded.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY) {
                *at = Some(Instant::now());
                if let Err(e) = self.reload() {
                    tracing::warn!(error = %e, "re-reading the key-encryption key file");
                }
            }
            return self.keks().unwrap(wrapped, &context);
        }
        keks.unwrap(wrapped, &context)
    }

    /// Generation `g` of the data key of `app/env` as `record` holds it.
    pub fn data_key(
        &self,
        record: &DataKeyRecord,
        app: &str,
        env: &str,
        g: u32,
    ) -> Result<DataKey, SecretError> {
        let recorded = record.generation(g).ok_or(SecretError::UnknownKey(g))?;
        let slot = (app.to_owned(), env.to_owned(), g);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((w, k)) = cache.get(&slot)
                && *w == recorded.wrapped
            {
                return Ok(k.clone());
            }
        }
        let key = self.unwrap(app, env, g, &recorded.wrapped)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(slot, (recorded.wrapped.clone(), key.clone()));
        Ok(key)
    }

    /// A new data key for generation `g` of `app/env`, and its record entry.
    pub fn new_data_key(&self, app: &str, env: &str, g: u32) -> (DataKey, RecordedKey) {
        let key = DataKey::from_bytes(random());
        let wrapped = self
            .keks()
            .wrap(&key, &data_key_context(app, env, g), random());
        (key, RecordedKey { g, wrapped })
    }

    /// `record` with every generation wrapped by the current key-encryption key, or `None`
    /// when every one already is. No value is re-encrypted.
    pub fn rewrap(
        &self,
        record: &DataKeyRecord,
        app: &str,
        env: &str,
    ) -> Result<Option<DataKeyRecord>, SecretError> {
        let keks = self.keks();
        let current = keks.current().to_owned();
        if record.keys.iter().all(|k| k.wrapped.kek == current) {
            return Ok(None);
        }
        let mut out = record.clone();
        for k in &mut out.keys {
            if k.wrapped.kek != current {
                let key = self.data_key(record, app, env, k.g)?;
                k.wrapped = keks.wrap(&key, &data_key_context(app, env, k.g), random());
            }
        }
        Ok(Some(out))
    }

    /// `key` wrapped for one edge's session (see `meridian_net::secrets::session_key`).
    pub fn wrap_for_session(
        session: &[u8; 32],
        app: &str,
        env: &str,
        g: u32,
        key: &DataKey,
    ) -> WrappedKey {
        let keks = LocalKeks::new(vec![("session".into(), *session)]).expect("one key");
        keks.wrap(key, &data_key_context(app, env, g), random())
    }
}
