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

/// The field that marks a stored value as a sealed secret: `{"$secret": {…}}`.
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
pub struct DataKey([u8; 32]);

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

    fn cipher(&self) -> Aes256Gcm {
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

/// A sealed secret as stored (the value of its key is `{"$secret": <this>}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Format version.
    pub v: u8,
    /// The generation of the namespace's data key it is sealed under.
    pub dk: u32,
    /// The 96-bit nonce, base64.
    pub n: String,
    /// Ciphertext and tag, base64.
    pub ct: String,
    /// The keyed fingerprint of the value ([`fingerprint`]).
    pub fp: String,
}

impl Sealed {
    /// The stored JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({ SECRET_FIELD: self })
    }

    /// The sealed secret a stored value holds, if it holds one.
    pub fn from_stored(value: &serde_json::Value) -> Option<Self> {
        let o = value.as_object().filter(|o| o.len() == 1)?;
        serde_json::from_value(o.get(SECRET_FIELD)?.clone()).ok()
    }
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

/// A data key wrapped by a key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Which key-encryption key wrapped it.
    pub kek: String,
    /// The 96-bit nonce, base64.
    pub n: String,
    /// The wrapped key and tag, base64.
    pub ct: String,
}

/// Where key-encryption keys live: a local key file by default, an external KMS later.
/// `context` binds a wrapped key to what it is for (the namespace and generation).
pub trait KeyProvider: Send + Sync {
    /// The id of the key it wraps with now.
    fn current(&self) -> &str;
    /// Wraps `key` with the current key-encryption key.
    fn wrap(&self, key: &DataKey, context: &[u8], nonce: [u8; 12]) -> WrappedKey;
    /// Unwraps a key wrapped by any key-encryption key it holds.
    fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, SecretError>;
}

/// Key-encryption keys held in memory (loaded from a 0600 key file by the origin), the newest
/// one wrapping; older ones still unwrap, so a rotation can rewrap at its own pace.
pub struct LocalKeks {
    keys: Vec<(String, DataKey)>,
}

impl LocalKeks {
    /// Keys by id, the last one current. At least one.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Option<Self> {
        (!keys.is_empty()).then(|| Self {
            keys: keys.into_iter().map(|(id, k)| (id, DataKey(k))).collect(),
        })
    }
}

impl KeyProvider for LocalKeks {
    fn current(&self) -> &str {
        &self.keys.last().expect("at least one key").0
    }

    fn wrap(&self, key: &DataKey, context: &[u8], nonce: [u8; 12]) -> WrappedKey {
        let (id, kek) = self.keys.last().expect("at least one key");
        let ct = kek
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &key.0,
                    aad: context,
                },
            )
            .expect("AES-GCM seals 32 bytes");
        WrappedKey {
            kek: id.clone(),
            n: B64.encode(nonce),
            ct: B64.encode(ct),
        }
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, SecretError> {
        let (_, kek) = self
            .keys
            .iter()
            .find(|(id, _)| *id == wrapped.kek)
            .ok_or(SecretError::Malformed("unknown key-encryption key"))?;
        let nonce = B64
            .decode(&wrapped.n)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or(SecretError::Malformed("nonce"))?;
        let ct = B64
            .decode(&wrapped.ct)
            .map_err(|_| SecretError::Malformed("wrapped key"))?;
        let plain = kek
            .cipher()
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: context,
                },
            )
            .map_err(|_| SecretError::Tampered)?;
        <[u8; 32]>::try_from(plain.as_slice())
            .map(DataKey)
            .map_err(|_| SecretError::Malformed("a data key is 32 bytes"))
    }
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
        // The stored form round-trips and never holds the value.
        let stored = s.to_value();
        assert!(!stored.to_string().contains("hunter2"));
        assert_eq!(Sealed::from_stored(&stored), Some(s));
        assert_eq!(
            Sealed::from_stored(&serde_json::json!({"$secret": 1})),
            None
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

    #[test]
    fn data_keys_unwrap_under_an_older_kek_after_rotation() {
        let dk = DataKey::from_bytes([5; 32]);
        let old = LocalKeks::new(vec![("kek-1".into(), [1; 32])]).unwrap();
        let wrapped = old.wrap(&dk, b"pay/prod#1", [3; 12]);
        assert_eq!(wrapped.kek, "kek-1");
        let rotated =
            LocalKeks::new(vec![("kek-1".into(), [1; 32]), ("kek-2".into(), [2; 32])]).unwrap();
        assert_eq!(rotated.current(), "kek-2");
        assert_eq!(rotated.unwrap(&wrapped, b"pay/prod#1").unwrap(), dk);
        // Bound to its context; a retired KEK no longer unwraps.
        assert_eq!(
            rotated.unwrap(&wrapped, b"pay/dev#1"),
            Err(SecretError::Tampered)
        );
        let rewrapped = rotated.wrap(&dk, b"pay/prod#1", [4; 12]);
        let retired = LocalKeks::new(vec![("kek-2".into(), [2; 32])]).unwrap();
        assert_eq!(retired.unwrap(&rewrapped, b"pay/prod#1").unwrap(), dk);
        assert!(retired.unwrap(&wrapped, b"pay/prod#1").is_err());
    }
}
