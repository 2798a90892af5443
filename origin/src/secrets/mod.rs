//! Secrets at the origin (DESIGN §4b): a secret's value is sealed here, before it is proposed,
//! under its namespace's data key (made on the first secret of a namespace, recorded wrapped by
//! the key-encryption key), and the rotations: of the key-encryption key (every data key
//! rewrapped, no value touched) and of a namespace's data key (every secret of it re-sealed in
//! one revision). Reads and reveals are `meridian_net::secrets`, shared with the edges.

pub mod kek_file;
pub mod keyring;

use meridian_protocol::secrets::{
    DATA_KEY_RECORD, DataKey, DataKeyRecord, MAX_DATA_KEY_GENERATIONS, Previous, SecretError,
    StoredSecret, seal,
};
use meridian_protocol::{Address, CacheState};

pub use keyring::Keyring;

use meridian_core::apply::{Command, Condition, TxnOp};

/// Why a secret could not be written or rotated. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The node has no key-encryption key file.
    #[error("secrets are not configured on this node (no [secrets] kek_file)")]
    Unconfigured,
    /// A data key did not unwrap, or a value did not open.
    #[error(transparent)]
    Crypto(#[from] SecretError),
    /// Too many data-key generations.
    #[error("{0} has {MAX_DATA_KEY_GENERATIONS} data-key generations already")]
    TooManyGenerations(String),
    /// Nothing to rotate.
    #[error("{0} holds no secrets")]
    NoSecrets(String),
}

/// What a secret write sets.
#[derive(Debug, Clone, Default)]
pub struct SecretWrite {
    /// The value (any JSON).
    pub value: serde_json::Value,
    /// Rotate every this many seconds (kept from the current value when `None`; 0 clears).
    pub rotate_every_s: Option<u64>,
    /// Expires at this time, ms since the Unix epoch (kept when `None`; 0 clears).
    pub expires_at_ms: Option<u64>,
    /// Keep serving the current value as the previous one for this many seconds.
    pub grace_s: Option<u64>,
}

/// The address of the data-key record of `app/env`.
pub fn record_address(app: &str, env: &str) -> Address {
    Address {
        app: app.to_owned(),
        env: env.to_owned(),
        key: DATA_KEY_RECORD.to_owned(),
    }
}

/// The data-key record of `app/env` and its version, if it has one.
pub fn data_keys(state: &CacheState, app: &str, env: &str) -> Option<(DataKeyRecord, u64)> {
    let e = state.get_live(app, env, DATA_KEY_RECORD)?;
    Some((DataKeyRecord::parse(e.value.as_deref()?)?, e.version.0))
}

fn nonzero(v: Option<u64>, existing: Option<u64>) -> Option<u64> {
    match v {
        Some(0) => None,
        Some(v) => Some(v),
        None => existing,
    }
}

/// What sealing adds to the transaction being built: conditions, operations (data-key
/// records), and the data keys new in it by namespace (a namespace's first secrets share the
/// one made for them).
#[derive(Default)]
pub struct Sealing {
    /// Conditions to add.
    pub conditions: Vec<Condition>,
    /// Operations to add.
    pub ops: Vec<TxnOp>,
    new_keys: std::collections::BTreeMap<(String, String), DataKey>,
}

/// Seals `write` for `address` into the transaction being built: the put it returns, the
/// condition on the key's current version added to `sealing`, and for a namespace's first
/// secret its new data-key record (and the condition that it is absent).
pub fn seal_write(
    keyring: &Keyring,
    state: &CacheState,
    address: &Address,
    write: &SecretWrite,
    now_ms: u64,
    sealing: &mut Sealing,
) -> Result<TxnOp, SecretsError> {
    let Sealing {
        conditions,
        ops,
        new_keys,
    } = sealing;
    let (app, env) = (address.app.as_str(), address.env.as_str());
    let (key, g) = match (
        data_keys(state, app, env),
        new_keys.get(&(app.to_owned(), env.to_owned())),
    ) {
        (_, Some(key)) => (key.clone(), 1),
        (Some((record, _)), None) => {
            let g = record.current().map_or(1, |k| k.g);
            (keyring.data_key(&record, app, env, g)?, g)
        }
        (None, None) => {
            let (key, recorded) = keyring.new_data_key(app, env, 1);
            let record = DataKeyRecord {
                keys: vec![recorded],
            };
            conditions.push(Condition::Absent(record_address(app, env)));
            ops.push(TxnOp::Put(
                record_address(app, env),
                record.to_text().into(),
            ));
            new_keys.insert((app.to_owned(), env.to_owned()), key.clone());
            (key, 1)
        }
    };
    let entry = state.get(app, env, &address.key);
    let live = entry
        .filter(|e| !e.is_tombstone())
        .map_or(0, |e| e.version.0);
    let existing = entry
        .and_then(|e| e.value.as_deref())
        .and_then(StoredSecret::parse);
    let stored = sealed_value(
        &key,
        g,
        address,
        entry.map_or(0, |e| e.version.0) + 1,
        &write.value.to_string(),
        existing.as_ref(),
        write,
        now_ms,
    );
    conditions.push(Condition::VersionEquals(address.clone(), live));
    Ok(TxnOp::Put(address.clone(), stored.to_text().into()))
}

/// The transaction that writes `write` as the secret at `address`: sealed for the version the
/// key will have, conditioned on the version it has now (and, for the namespace's first
/// secret, creating its data-key record). `now_ms` is the time recorded.
pub fn write_command(
    keyring: &Keyring,
    state: &CacheState,
    address: &Address,
    write: &SecretWrite,
    now_ms: u64,
) -> Result<Command, SecretsError> {
    let mut sealing = Sealing::default();
    let put = seal_write(keyring, state, address, write, now_ms, &mut sealing)?;
    sealing.ops.push(put);
    Ok(Command::Txn {
        conditions: sealing.conditions,
        ops: sealing.ops,
    })
}

#[allow(clippy::too_many_arguments)]
fn sealed_value(
    key: &DataKey,
    g: u32,
    address: &Address,
    version: u64,
    plaintext: &str,
    existing: Option<&StoredSecret>,
    write: &SecretWrite,
    now_ms: u64,
) -> StoredSecret {
    let previous = write.grace_s.filter(|g| *g > 0).and_then(|grace| {
        existing.map(|s| Previous {
            value: s.value.clone(),
            until_ms: now_ms.saturating_add(grace.saturating_mul(1000)),
        })
    });
    StoredSecret {
        value: seal(
            key,
            g,
            address,
            version,
            keyring::random(),
            plaintext.as_bytes(),
            &key.fingerprint_key(),
        ),
        previous,
        updated_ms: now_ms,
        rotate_every_s: nonzero(
            write.rotate_every_s,
            existing.and_then(|s| s.rotate_every_s),
        ),
        expires_at_ms: nonzero(write.expires_at_ms, existing.and_then(|s| s.expires_at_ms)),
    }
}

/// Opens the secret stored at `address` (current value, and the previous one within its grace
/// period when asked), with the data keys of the origin's records.
pub fn open(
    keyring: &Keyring,
    state: &CacheState,
    address: &Address,
    stored: &StoredSecret,
    version: u64,
    previous: bool,
    now_ms: u64,
) -> Result<(Vec<u8>, Option<Vec<u8>>), SecretsError> {
    let (record, _) = data_keys(state, &address.app, &address.env)
        .ok_or(SecretError::UnknownKey(stored.value.dk))?;
    let key = |g| keyring.data_key(&record, &address.app, &address.env, g);
    Ok(meridian_protocol::secrets::open_stored(
        stored, address, version, previous, now_ms, &key,
    )?)
}

/// The transaction that rotates the data key of `app/env`: a new generation, and every secret
/// of the namespace re-sealed under it, conditioned on the versions read (one revision).
pub fn rotate_data_key(
    keyring: &Keyring,
    state: &CacheState,
    app: &str,
    env: &str,
    now_ms: u64,
) -> Result<Command, SecretsError> {
    let ns = format!("{app}/{env}");
    let (mut record, record_version) =
        data_keys(state, app, env).ok_or_else(|| SecretsError::NoSecrets(ns.clone()))?;
    if record.keys.len() >= MAX_DATA_KEY_GENERATIONS {
        return Err(SecretsError::TooManyGenerations(ns));
    }
    let g = record.current().map_or(0, |k| k.g) + 1;
    let (new_key, recorded) = keyring.new_data_key(app, env, g);
    let mut conditions = vec![Condition::VersionEquals(
        record_address(app, env),
        record_version,
    )];
    let mut ops = Vec::new();
    for (key, entry) in state.namespace(app, env).into_iter().flatten() {
        let Some(stored) = entry.value.as_deref().and_then(StoredSecret::parse) else {
            continue;
        };
        let address = Address {
            app: app.to_owned(),
            env: env.to_owned(),
            key: key.clone(),
        };
        let (plain, _) = open(
            keyring,
            state,
            &address,
            &stored,
            entry.version.0,
            false,
            now_ms,
        )?;
        let mut resealed = stored.clone();
        resealed.value = seal(
            &new_key,
            g,
            &address,
            entry.version.0 + 1,
            keyring::random(),
            &plain,
            &new_key.fingerprint_key(),
        );
        conditions.push(Condition::VersionEquals(address.clone(), entry.version.0));
        ops.push(TxnOp::Put(address, resealed.to_text().into()));
    }
    record.keys.push(recorded);
    ops.push(TxnOp::Put(
        record_address(app, env),
        record.to_text().into(),
    ));
    Ok(Command::Txn { conditions, ops })
}

/// The transactions that rewrap every namespace's data keys with the current key-encryption
/// key, each conditioned on the record it read: no value is re-encrypted, and secret writes,
/// which do not depend on the record's version, go on meanwhile.
pub fn rewrap_all(keyring: &Keyring, state: &CacheState) -> Result<Vec<Command>, SecretsError> {
    let mut out = Vec::new();
    for (address, entry) in state.iter() {
        if address.key != DATA_KEY_RECORD {
            continue;
        }
        let Some(record) = entry.value.as_deref().and_then(DataKeyRecord::parse) else {
            continue;
        };
        if let Some(rewrapped) = keyring.rewrap(&record, &address.app, &address.env)? {
            out.push(Command::Txn {
                conditions: vec![Condition::VersionEquals(address.clone(), entry.version.0)],
                ops: vec![TxnOp::Put(address, rewrapped.to_text().into())],
            });
        }
    }
    Ok(out)
}

/// The data-key records of the namespaces where `edge` may `secret-read`, and a digest of
/// them (what changes when a key is added, rotated or rewrapped, or the edge's grants change).
pub fn edge_records(
    state: &CacheState,
    edge: &meridian_protocol::auth::Principal,
) -> ([u8; 32], Vec<(String, String, DataKeyRecord)>) {
    use meridian_protocol::auth::Action;
    let mut hasher = blake3::Hasher::new();
    let mut out = Vec::new();
    for (app, env) in state.namespaces() {
        if !edge.may_act_in(Action::SecretRead, app, env) {
            continue;
        }
        let Some(text) = state
            .get_live(app, env, DATA_KEY_RECORD)
            .and_then(|e| e.value.as_deref())
        else {
            continue;
        };
        let Some(record) = DataKeyRecord::parse(text) else {
            continue;
        };
        for part in [app, env, text] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        out.push((app.to_owned(), env.to_owned(), record));
    }
    (*hasher.finalize().as_bytes(), out)
}

/// The data keys of `records`, wrapped for one edge's session, at most
/// [`meridian_protocol::frame::MAX_SESSION_KEYS`]; a key that does not unwrap here is left out
/// (and logged).
pub fn session_keys(
    keyring: &Keyring,
    records: &[(String, String, DataKeyRecord)],
    session: &[u8; 32],
) -> Vec<meridian_protocol::secrets::SessionKey> {
    let mut out = Vec::new();
    for (app, env, record) in records {
        for k in &record.keys {
            if out.len() >= meridian_protocol::frame::MAX_SESSION_KEYS {
                tracing::warn!("more data keys than one frame carries; the rest are not sent");
                return out;
            }
            match keyring.data_key(record, app, env, k.g) {
                Ok(key) => out.push(meridian_protocol::secrets::SessionKey {
                    app: app.clone(),
                    env: env.clone(),
                    g: k.g,
                    wrapped: Keyring::wrap_for_session(session, app, env, k.g, &key),
                }),
                Err(e) => {
                    tracing::error!(%app, %env, generation = k.g, error = %e, "a data key did not unwrap")
                }
            }
        }
    }
    out
}

/// Secrets due for rotation and expired at `now_ms`, per namespace holding secrets.
pub fn due_counts(
    state: &CacheState,
    now_ms: u64,
) -> std::collections::BTreeMap<(String, String), (u64, u64)> {
    use meridian_protocol::secrets::Due;
    let mut out = std::collections::BTreeMap::new();
    for (app, env) in state.namespaces() {
        if state.get_live(app, env, DATA_KEY_RECORD).is_none() {
            continue;
        }
        let mut counts = (0, 0);
        for entry in state
            .namespace(app, env)
            .into_iter()
            .flat_map(|n| n.values())
        {
            match entry
                .value
                .as_deref()
                .and_then(StoredSecret::parse)
                .and_then(|s| s.due(now_ms))
            {
                Some(Due::Rotation) => counts.0 += 1,
                Some(Due::Expired) => counts.1 += 1,
                None => {}
            }
        }
        out.insert((app.to_owned(), env.to_owned()), counts);
    }
    out
}

/// How often the due and expired gauges are brought up to date.
pub const DUE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Exports `meridian_secrets_due` and `meridian_secrets_expired` per app/env every
/// [`DUE_EVERY`] until shutdown.
pub async fn export_due(
    reader: meridian_store::Reader,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let counts = {
            let p = reader.read().unwrap_or_else(|e| e.into_inner());
            due_counts(&p.state, meridian_core::history::now_ms())
        };
        for ((app, env), _) in std::mem::take(&mut seen)
            .into_iter()
            .map(|k: (String, String)| (k, ()))
            .filter(|(k, _)| !counts.contains_key(k))
        {
            metrics::gauge!("meridian_secrets_due", "app" => app.clone(), "env" => env.clone())
                .set(0.0);
            metrics::gauge!("meridian_secrets_expired", "app" => app, "env" => env).set(0.0);
        }
        for ((app, env), (due, expired)) in counts {
            metrics::gauge!("meridian_secrets_due", "app" => app.clone(), "env" => env.clone())
                .set(due as f64);
            metrics::gauge!("meridian_secrets_expired", "app" => app.clone(), "env" => env.clone())
                .set(expired as f64);
            seen.insert((app, env));
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(DUE_EVERY) => {}
        }
    }
}
