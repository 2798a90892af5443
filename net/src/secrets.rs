//! Secret reads, the same at every origin node and edge (DESIGN §4b): masked by default
//! (`"value": null, "secret": true, "fingerprint": …`), revealed with `?reveal=true` to a caller
//! holding `secret-read` on the key, with the previous value too during a rotation's grace
//! period when asked with `?versions=2`. Where the node's data keys come from (the origin's
//! records, an edge's session keys) is the caller's [`KeySource`]; each reveal is handed back
//! as a [`Reveal`] for the audit log.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use meridian_protocol::auth::{Action, Principal, Resource};
use meridian_protocol::secrets::{DataKey, SecretError, StoredSecret, open_stored};
use meridian_protocol::{Address, CacheState};
use serde::Deserialize;

use crate::auth::authorize;
use crate::http::ApiError;

/// Query of `GET /v1/secrets/{app}/{env}/{key}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretQuery {
    /// Answer the value (needs `secret-read`); masked otherwise.
    #[serde(default)]
    pub reveal: bool,
    /// `2`: also the previous value while its grace period lasts (with `reveal`).
    #[serde(default)]
    pub versions: Option<u8>,
    /// Read-your-writes: answer only once this revision is applied.
    #[serde(default)]
    pub min_revision: Option<u64>,
    /// How long an edge may wait for `min_revision`.
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Why a data key could not be had.
#[derive(Debug)]
pub enum KeyUnavailable {
    /// This node does not hold the namespace's keys (an edge not allowed to serve its
    /// secrets, or not yet sent them).
    NotHeld,
    /// The key did not unwrap, or the node has no key-encryption keys.
    Failed(String),
}

/// The data key of generation `g` of `app/env`.
pub type KeySource<'a> = &'a (dyn Fn(&str, &str, u32) -> Result<DataKey, KeyUnavailable> + Sync);

/// One reveal, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reveal {
    /// Who.
    pub actor: String,
    /// What.
    pub address: Address,
    /// Its version.
    pub version: u64,
    /// Whether the previous value was revealed too.
    pub previous: bool,
}

/// 403 `secret_unavailable`: this node does not hold the data keys of the namespace.
pub fn unavailable(a: &Address) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "secret_unavailable",
        format!(
            "this node does not hold the keys of {}/{}: it is not allowed to serve its secrets \
             (a policy with subject edge:<id> and secret-read), or has not received them yet",
            a.app, a.env
        ),
    )
}

/// 500 `secret_unreadable`: stored ciphertext did not open (tampered, or sealed under a key
/// not held). Never an answer of other bytes.
fn unreadable(a: &Address, e: &SecretError) -> ApiError {
    tracing::error!(address = %a, error = %e, "a secret did not open");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "secret_unreadable",
        format!("{a}: the stored secret does not open ({e})"),
    )
}

fn key_error(a: &Address, e: KeyUnavailable) -> ApiError {
    match e {
        KeyUnavailable::NotHeld => unavailable(a),
        KeyUnavailable::Failed(why) => {
            tracing::error!(address = %a, error = %why, "a data key did not unwrap");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "secret_key_unavailable",
                format!("{}/{}: the data key is not available: {why}", a.app, a.env),
            )
        }
    }
}

/// Opens the secret `stored` at `a` (its key at `version`) with `keys`.
pub fn open(
    a: &Address,
    stored: &StoredSecret,
    version: u64,
    previous: bool,
    now_ms: u64,
    keys: KeySource<'_>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
    let failure = std::cell::RefCell::new(None);
    let key = |g| {
        keys(&a.app, &a.env, g).map_err(|e| {
            *failure.borrow_mut() = Some(e);
            SecretError::UnknownKey(g)
        })
    };
    match open_stored(stored, a, version, previous, now_ms, &key) {
        Ok(v) => Ok(v),
        Err(e) => match failure.into_inner() {
            Some(k) => Err(key_error(a, k)),
            None => Err(unreadable(a, &e)),
        },
    }
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn push_plain(buf: &mut Vec<u8>, a: &Address, plain: &[u8]) -> Result<(), ApiError> {
    // Sealed by the origin from the JSON text it validated, and authenticated on opening, so
    // it is embedded as is; what is not even text did not come from the origin.
    if plain.is_empty() || std::str::from_utf8(plain).is_err() {
        return Err(unreadable(
            a,
            &SecretError::Malformed("the opened value is not JSON text"),
        ));
    }
    buf.extend_from_slice(plain);
    Ok(())
}

/// A secret opened: what is stored, and its values in clear (memory only).
pub struct Opened {
    stored: StoredSecret,
    current: Vec<u8>,
    /// The previous value, while one is kept (its grace period is checked when served).
    previous: Option<Vec<u8>>,
}

/// Most secrets an [`OpenedCache`] holds; beyond it it starts over.
pub const MAX_OPENED: usize = 10_000;

type ByKey = HashMap<String, (u64, Arc<Opened>)>;

/// Secrets opened recently, by address and version, so that repeated reveals do not parse and
/// decrypt again. Memory only; cleared whenever the node's data keys change (a revoked
/// namespace stops being served at once).
#[derive(Default)]
pub struct OpenedCache {
    map: std::sync::RwLock<HashMap<String, HashMap<String, ByKey>>>,
    len: std::sync::atomic::AtomicUsize,
}

impl OpenedCache {
    fn get(&self, a: &Address, version: u64) -> Option<Arc<Opened>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&a.app)?
            .get(&a.env)?
            .get(&a.key)
            .filter(|(v, _)| *v == version)
            .map(|(_, o)| o.clone())
    }

    fn insert(&self, a: &Address, version: u64, opened: Arc<Opened>) {
        use std::sync::atomic::Ordering;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if self.len.load(Ordering::Relaxed) >= MAX_OPENED {
            map.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        let old = map
            .entry(a.app.clone())
            .or_default()
            .entry(a.env.clone())
            .or_default()
            .insert(a.key.clone(), (version, opened));
        if old.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets everything opened.
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.len.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

fn not_a_secret(a: &Address) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_a_secret",
        format!("{a} holds a plain value: read it with GET /v1/kv/{a}"),
    )
}

/// `GET /v1/secrets/{app}/{env}/{key}`: the secret masked, or revealed (and the reveal
/// returned for the audit log). 404 when the key holds no value, or a plain one. `cache`
/// keeps what was opened for the next reveal.
pub fn secret(
    state: &CacheState,
    a: &Address,
    q: &SecretQuery,
    principal: &Principal,
    keys: KeySource<'_>,
    cache: Option<&OpenedCache>,
    now_ms: u64,
) -> Result<(Vec<u8>, Option<Reveal>), ApiError> {
    if q.versions.is_some_and(|v| !(1..=2).contains(&v)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "versions must be 1 or 2",
        ));
    }
    let entry = state
        .get_live(&a.app, &a.env, &a.key)
        .ok_or_else(|| ApiError::not_found(a))?;
    let text = entry.value.as_deref().unwrap_or("null");
    if !meridian_protocol::secrets::is_sealed_text(text) {
        return Err(not_a_secret(a));
    }
    let version = entry.version.0;
    let opened = if q.reveal {
        let resource = Resource::Key {
            app: &a.app,
            env: &a.env,
            key: &a.key,
        };
        authorize(principal, Action::SecretRead, &resource)?;
        match cache.and_then(|c| c.get(a, version)) {
            Some(o) => Some(o),
            None => {
                let stored = StoredSecret::parse(text).ok_or_else(|| not_a_secret(a))?;
                let (current, previous) = open(a, &stored, version, true, 0, keys)?;
                let o = Arc::new(Opened {
                    stored,
                    current,
                    previous,
                });
                if let Some(c) = cache {
                    c.insert(a, version, o.clone());
                }
                Some(o)
            }
        }
    } else {
        None
    };
    let parsed;
    let stored = match &opened {
        Some(o) => &o.stored,
        None => {
            parsed = StoredSecret::parse(text).ok_or_else(|| not_a_secret(a))?;
            &parsed
        }
    };
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"app\":");
    push_str(&mut buf, &a.app);
    buf.extend_from_slice(b",\"env\":");
    push_str(&mut buf, &a.env);
    buf.extend_from_slice(b",\"key\":");
    push_str(&mut buf, &a.key);
    buf.extend_from_slice(b",\"secret\":true,\"fingerprint\":");
    push_str(&mut buf, &stored.value.fp);
    let mut reveal = None;
    buf.extend_from_slice(b",\"value\":");
    match &opened {
        Some(o) => {
            let want_previous = q.versions == Some(2);
            push_plain(&mut buf, a, &o.current)?;
            if let (true, Some(p), Some(prev)) = (
                want_previous,
                &o.previous,
                stored.previous.as_ref().filter(|p| p.until_ms > now_ms),
            ) {
                buf.extend_from_slice(b",\"previous\":{\"value\":");
                push_plain(&mut buf, a, p)?;
                buf.extend_from_slice(b",\"version\":");
                buf.extend_from_slice(prev.value.at.to_string().as_bytes());
                buf.extend_from_slice(b",\"until_ms\":");
                buf.extend_from_slice(prev.until_ms.to_string().as_bytes());
                buf.push(b'}');
            }
            reveal = Some(Reveal {
                actor: principal.actor(),
                address: a.clone(),
                version,
                previous: want_previous,
            });
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"version\":");
    buf.extend_from_slice(version.to_string().as_bytes());
    buf.extend_from_slice(b",\"revision\":");
    buf.extend_from_slice(entry.revision.0.to_string().as_bytes());
    buf.extend_from_slice(b",\"updated_ms\":");
    buf.extend_from_slice(stored.updated_ms.to_string().as_bytes());
    if let Some(s) = stored.rotate_every_s {
        buf.extend_from_slice(b",\"rotate_every_s\":");
        buf.extend_from_slice(s.to_string().as_bytes());
    }
    if let Some(t) = stored.expires_at_ms {
        buf.extend_from_slice(b",\"expires_at_ms\":");
        buf.extend_from_slice(t.to_string().as_bytes());
    }
    buf.push(b'}');
    Ok((buf, reveal))
}

/// `GET /v1/secrets/{app}/{env}`: every secret of the namespace the caller may read, masked,
/// with its rotation state at `now_ms`.
pub fn list(
    state: &CacheState,
    app: &str,
    env: &str,
    principal: &Principal,
    now_ms: u64,
) -> Vec<u8> {
    let mut items = Vec::new();
    for (key, entry) in state.namespace(app, env).into_iter().flatten() {
        let Some(stored) = entry.value.as_deref().and_then(StoredSecret::parse) else {
            continue;
        };
        if !principal.allows(Action::Read, &Resource::Key { app, env, key }) {
            continue;
        }
        items.push(serde_json::json!({
            "key": key,
            "secret": true,
            "fingerprint": stored.value.fp,
            "version": entry.version.0,
            "revision": entry.revision.0,
            "updated_ms": stored.updated_ms,
            "rotate_every_s": stored.rotate_every_s,
            "expires_at_ms": stored.expires_at_ms,
            "due": stored.due(now_ms),
        }));
    }
    serde_json::to_vec(&serde_json::json!({
        "app": app,
        "env": env,
        "revision": state.revision().0,
        "items": items,
    }))
    .unwrap_or_default()
}

/// Opens secrets for `${secret:key}` references of one read, for a caller holding
/// `secret-read` on each, and keeps the reveals for the audit log.
pub struct Revealer<'a> {
    principal: &'a Principal,
    keys: KeySource<'a>,
    now_ms: u64,
    revealed: std::sync::Mutex<Vec<Reveal>>,
}

impl<'a> Revealer<'a> {
    /// A revealer for `principal` with `keys`.
    pub fn new(principal: &'a Principal, keys: KeySource<'a>, now_ms: u64) -> Self {
        Self {
            principal,
            keys,
            now_ms,
            revealed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The value of the secret at `(app, env, key)` (stored as `entry`) as JSON text, or why
    /// this reader may not have it.
    pub fn open(
        &self,
        app: &str,
        env: &str,
        key: &str,
        entry: &meridian_protocol::EntryState,
    ) -> Result<String, String> {
        if !self
            .principal
            .allows(Action::SecretRead, &Resource::Key { app, env, key })
        {
            return Err("needs secret-read to be revealed".into());
        }
        let a = Address {
            app: app.to_owned(),
            env: env.to_owned(),
            key: key.to_owned(),
        };
        let stored = entry
            .value
            .as_deref()
            .and_then(StoredSecret::parse)
            .ok_or("is not a secret")?;
        let (plain, _) = open(&a, &stored, entry.version.0, false, self.now_ms, self.keys)
            .map_err(|e| e.message)?;
        let text = String::from_utf8(plain).map_err(|_| "did not open to text".to_string())?;
        self.revealed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reveal {
                actor: self.principal.actor(),
                address: a,
                version: entry.version.0,
                previous: false,
            });
        Ok(text)
    }

    /// The reveals made.
    pub fn into_reveals(self) -> Vec<Reveal> {
        self.revealed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The TLS exporter label of the key data keys are wrapped with for one edge's connection.
pub const SESSION_EXPORTER_LABEL: &[u8] = b"EXPORTER-meridian-data-keys-v1";

/// The key that wraps data keys sent over `conn` to edge `edge_id`, derived from its TLS
/// session by both ends (RFC 8446 §7.5): only this connection's two ends can compute it.
pub fn session_key(conn: &quinn::Connection, edge_id: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    conn.export_keying_material(&mut key, SESSION_EXPORTER_LABEL, edge_id.as_bytes())
        .ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use meridian_protocol::auth::{Grant, GrantBody, Role};
    use meridian_protocol::secrets::{StoredSecret, seal};
    use meridian_protocol::{EntryState, Revision, Version};

    use super::*;

    fn admin() -> Principal {
        let grant: Grant = GrantBody {
            role: Some(Role::Admin),
            actions: vec![],
            resources: vec![meridian_protocol::auth::Pattern::everything()],
        }
        .compile()
        .unwrap();
        Principal::new(None, "ops".into(), vec![grant])
    }

    fn state_with(stored: &StoredSecret, a: &Address) -> CacheState {
        let mut s = CacheState::new();
        s.merge_entry(
            a,
            EntryState {
                version: Version(1),
                revision: Revision(1),
                value: Some(stored.to_text().into()),
            },
        );
        s
    }

    /// A tampered ciphertext is refused with an error naming the key, never answered as other
    /// bytes; the untouched one opens.
    #[test]
    fn a_tampered_secret_is_an_error_never_garbage() {
        let a = Address::parse("pay", "prod", "db.password").unwrap();
        let key = DataKey::from_bytes([4; 32]);
        let sealed = seal(&key, 1, &a, 1, [1; 12], b"\"hunter2\"", &[0; 32]);
        let good = StoredSecret {
            value: sealed.clone(),
            previous: None,
            updated_ms: 0,
            rotate_every_s: None,
            expires_at_ms: None,
        };
        let keys = |_: &str, _: &str, _: u32| Ok(key.clone());
        let q = SecretQuery {
            reveal: true,
            ..Default::default()
        };
        let (body, reveal) =
            secret(&state_with(&good, &a), &a, &q, &admin(), &keys, None, 0).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["value"], "hunter2");
        assert!(reveal.is_some());
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ct = b64.decode(&sealed.ct).unwrap();
        ct[3] ^= 0x40;
        let mut bad = good.clone();
        bad.value.ct = b64.encode(ct);
        let err = secret(&state_with(&bad, &a), &a, &q, &admin(), &keys, None, 0).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (500, "secret_unreadable"));
        assert!(!err.message.contains("hunter2"));
        // Without the namespace's key: 403, and masked reads still work.
        let none = |_: &str, _: &str, _: u32| Err(KeyUnavailable::NotHeld);
        let err = secret(&state_with(&good, &a), &a, &q, &admin(), &none, None, 0).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (403, "secret_unavailable"));
        let masked = SecretQuery::default();
        let (body, reveal) = secret(
            &state_with(&good, &a),
            &a,
            &masked,
            &admin(),
            &none,
            None,
            0,
        )
        .unwrap();
        assert!(reveal.is_none() && !String::from_utf8(body).unwrap().contains("hunter2"));
    }
}
