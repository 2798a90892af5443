//! Secret values by envelope encryption (DESIGN §4b): a value is sealed with AES-256-GCM under
//! a data key of its app/env before it is proposed, with associated data that binds the
//! ciphertext to its address and version (moved to another key, or replayed as another
//! version, it fails to open); data keys are wrapped by a key-encryption key behind
//! [`KeyProvider`]. A keyed fingerprint stands for the value wherever it must not appear.
//!
//! No I/O and no randomness here: callers supply nonces and key material from the operating
//! system's generator, so every step is deterministic to test.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::addr::Address;

mod keys;
mod stored;

pub use keys::{
    DATA_KEY_RECORD, DataKeyRecord, KeyProvider, LocalKeks, MAX_DATA_KEY_GENERATIONS, RecordedKey,
    WrappedKey, data_key_context,
};
pub use stored::{
    Due, MaskedSecret, Previous, StoredSecret, is_reserved_value, is_sealed_text, masked_json,
    masked_text, write_masked,
};

/// The field that marks a stored value as a secret: `{"$secret": {…}}`. A plain value may not
/// be an object with this field.
pub const SECRET_FIELD: &str = "$secret";

/// Why a secret could not be sealed or opened. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Authentication failed: wrong key, wrong address or version, or tampered bytes.
    #[error("the secret does not open with this key at this address and version")]
    Tampered,
    /// The stored form is not a sealed secret.
    #[error("not a sealed secret: {0}")]
    Malformed(&'static str),
    /// The data key of this generation is not held.
    #[error("data key generation {0} of this namespace is not held")]
    UnknownKey(u32),
}

/// A 256-bit data key of one app/env.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(…)")
    }
}

impl DataKey {
    /// A data key from 32 random bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key fingerprints of values sealed under this key are keyed with.
    pub fn fingerprint_key(&self) -> [u8; 32] {
        blake3::derive_key("meridian secret fingerprint v1", &self.0)
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }
}

/// The associated data of a secret: what it may be opened as.
fn aad(address: &Address, version: u64, generation: u32) -> Vec<u8> {
    let mut out = b"meridian-secret-v1\0".to_vec();
    for part in [&address.app, &address.env, &address.key] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out
}

/// One sealed value (inside a [`StoredSecret`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Format version.
    pub v: u8,
    /// The version of its key it is sealed for (bound by the associated data).
    pub at: u64,
    /// The generation of the namespace's data key it is sealed under.
    pub dk: u32,
    /// The 96-bit nonce, base64.
    pub n: String,
    /// Ciphertext and tag, base64.
    pub ct: String,
    /// The keyed fingerprint of the value ([`fingerprint`]).
    pub fp: String,
}

/// Opens the current value of a stored secret at `address` (its key at `version`), and the
/// previous one while its grace period lasts at `now_ms` when `previous` is asked for; `key`
/// finds the namespace's data key of a generation.
pub fn open_stored(
    stored: &StoredSecret,
    address: &Address,
    version: u64,
    previous: bool,
    now_ms: u64,
    key: &dyn Fn(u32) -> Result<DataKey, SecretError>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), SecretError> {
    let current = open(&key(stored.value.dk)?, &stored.value, address, version)?;
    let before = match stored.previous_at(now_ms).filter(|_| previous) {
        Some(p) => Some(open(&key(p.dk)?, p, address, p.at)?),
        None => None,
    };
    Ok((current, before))
}

/// A data key sent to one edge, wrapped for its session ([`crate::frame::FrameV1::DataKeys`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKey {
    /// The namespace.
    pub app: String,
    /// The namespace.
    pub env: String,
    /// The generation.
    pub g: u32,
    /// The key, wrapped with [`data_key_context`] under the session's key.
    pub wrapped: WrappedKey,
}

/// A reveal of a secret at an edge, as the edge keeps it until the origin has it in the audit
/// log ([`crate::frame::FrameV1::Reveals`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealRecord {
    /// The edge's sequence number (rises, never reused).
    pub seq: u64,
    /// When, ms since the Unix epoch (the edge's clock).
    pub time_ms: u64,
    /// Who (`name#id`).
    pub actor: String,
    /// What.
    pub address: Address,
    /// Its version.
    pub version: u64,
    /// Whether the previous value was revealed too.
    pub previous: bool,
    /// The first request's id.
    pub request_id: Option<String>,
    /// How many reveals of this secret by this reader it stands for (from `time_ms` to
    /// `last_ms`): an edge counts repeated reveals over a short window into one record.
    pub count: u64,
    /// When the last of them was, ms since the Unix epoch.
    pub last_ms: u64,
}

/// A keyed fingerprint of a value at an address: equal values at one address have equal
/// fingerprints, and nobody without the fingerprint key can test a guess against one.
pub fn fingerprint(key: &[u8; 32], address: &Address, plaintext: &[u8]) -> String {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&aad(address, 0, 0));
    h.update(plaintext);
    hex::encode(&h.finalize().as_bytes()[..12])
}

/// Seals `plaintext` for `address` at `version` under `key` (generation `generation`) with a
/// fresh `nonce` (never reuse one under a key).
pub fn seal(
    key: &DataKey,
    generation: u32,
    address: &Address,
    version: u64,
    nonce: [u8; 12],
    plaintext: &[u8],
    fingerprint_key: &[u8; 32],
) -> Sealed {
    let aad = aad(address, version, generation);
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM seals any message under 64 GiB");
    Sealed {
        v: 1,
        at: version,
        dk: generation,
        n: B64.encode(nonce),
        ct: B64.encode(ct),
        fp: fingerprint(fingerprint_key, address, plaintext),
    }
}

/// Opens a sealed secret stored at `address` at `version`.
pub fn open(
    key: &DataKey,
    sealed: &Sealed,
    address: &Address,
    version: u64,
) -> Result<Vec<u8>, SecretError> {
    if sealed.v != 1 {
        return Err(SecretError::Malformed("unknown format version"));
    }
    let nonce = B64
        .decode(&sealed.n)
        .ok()
        .filter(|n| n.len() == 12)
        .ok_or(SecretError::Malformed("nonce"))?;
    let ct = B64
        .decode(&sealed.ct)
        .map_err(|_| SecretError::Malformed("ciphertext"))?;
    let aad = aad(address, version, sealed.dk);
    key.cipher()
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: &aad,
            },
        )
        .map_err(|_| SecretError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str) -> Address {
        Address::parse("pay", "prod", key).unwrap()
    }

    const FP: [u8; 32] = [7; 32];

    #[test]
    fn a_secret_opens_only_at_its_address_version_and_key() {
        let k = DataKey::from_bytes([1; 32]);
        let s = seal(&k, 1, &at("db.password"), 3, [9; 12], b"hunter2", &FP);
        assert_eq!(open(&k, &s, &at("db.password"), 3).unwrap(), b"hunter2");
        // Moved to another key, replayed as another version, another key, tampered.
        assert_eq!(open(&k, &s, &at("db.user"), 3), Err(SecretError::Tampered));
        assert_eq!(
            open(&k, &s, &at("db.password"), 4),
            Err(SecretError::Tampered)
        );
        assert_eq!(
            open(&DataKey::from_bytes([2; 32]), &s, &at("db.password"), 3),
            Err(SecretError::Tampered)
        );
        let mut bad = s.clone();
        let mut ct = B64.decode(&bad.ct).unwrap();
        ct[0] ^= 1;
        bad.ct = B64.encode(ct);
        assert_eq!(
            open(&k, &bad, &at("db.password"), 3),
            Err(SecretError::Tampered)
        );
        let mut other_generation = s.clone();
        other_generation.dk = 2;
        assert_eq!(
            open(&k, &other_generation, &at("db.password"), 3),
            Err(SecretError::Tampered)
        );
    }

    #[test]
    fn fingerprints_are_keyed_and_per_address() {
        let a = fingerprint(&FP, &at("k"), b"v");
        assert_eq!(a, fingerprint(&FP, &at("k"), b"v"));
        assert_ne!(a, fingerprint(&FP, &at("k"), b"w"));
        assert_ne!(a, fingerprint(&FP, &at("j"), b"v"));
        assert_ne!(a, fingerprint(&[8; 32], &at("k"), b"v"));
    }
}
