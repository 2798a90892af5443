//! Data keys and the key-encryption keys that wrap them: the [`KeyProvider`] trait (a local
//! key file by default, an external KMS later), [`LocalKeks`], and the replicated record of a
//! namespace's data keys ([`DataKeyRecord`], stored wrapped at [`DATA_KEY_RECORD`]).

use aes_gcm::Nonce;
use aes_gcm::aead::{Aead, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{DataKey, SecretError};

/// The key of the record, in each app/env that holds secrets, listing its data keys wrapped
/// by a key-encryption key. `Address::parse` refuses keys starting with `_`, so no client key
/// collides with it.
pub const DATA_KEY_RECORD: &str = "_secrets";

/// Most data-key generations one namespace keeps (older values in its history are sealed
/// under older generations, so they are kept until this many).
pub const MAX_DATA_KEY_GENERATIONS: usize = 64;

/// What a data key is wrapped for: its namespace and generation, bound as associated data so
/// a wrapped key moved to another namespace or generation does not unwrap.
pub fn data_key_context(app: &str, env: &str, generation: u32) -> Vec<u8> {
    let mut out = b"meridian-data-key-v1\0".to_vec();
    out.extend_from_slice(app.as_bytes());
    out.push(0);
    out.extend_from_slice(env.as_bytes());
    out.push(0);
    out.extend_from_slice(&generation.to_be_bytes());
    out
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

/// One generation of a namespace's data key, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedKey {
    /// The generation (1, 2, …).
    pub g: u32,
    /// The key, wrapped with [`data_key_context`] of its namespace and generation.
    pub wrapped: WrappedKey,
}

/// The data keys of one namespace (the value of [`DATA_KEY_RECORD`]): the newest generation
/// seals, every listed one still opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRecord {
    /// Generations, oldest first.
    pub keys: Vec<RecordedKey>,
}

impl DataKeyRecord {
    /// The record a stored value holds, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str::<Self>(text)
            .ok()
            .filter(|r| !r.keys.is_empty() && r.keys.len() <= MAX_DATA_KEY_GENERATIONS)
    }

    /// The newest generation.
    pub fn current(&self) -> Option<&RecordedKey> {
        self.keys.iter().max_by_key(|k| k.g)
    }

    /// Generation `g`.
    pub fn generation(&self, g: u32) -> Option<&RecordedKey> {
        self.keys.iter().find(|k| k.g == g)
    }

    /// JSON text, as stored.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where key-encryption keys live: a local key file by default, an external KMS later.
/// `context` binds a wrapped key to what it is for (the namespace and generation).
pub trait KeyProvider: Send + Sync {
    /// The id of the key it wraps with now.
    fn current(&self) -> &str;
    /// Whether it holds the key-encryption key `id`.
    fn holds(&self, id: &str) -> bool;
    /// Wraps `key` with the current key-encryption key.
    fn wrap(&self, key: &DataKey, context: &[u8], nonce: [u8; 12]) -> WrappedKey;
    /// Unwraps a key wrapped by any key-encryption key it holds.
    fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, SecretError>;
}

/// Key-encryption keys held in memory (loaded from a 0600 key file by the origin), the newest
/// one wrapping; older ones still unwrap, so a rotation can rewrap at its own pace. Also the
/// wrapping of data keys for one edge's session (one key, from the TLS exporter).
pub struct LocalKeks {
    keys: Vec<(String, DataKey)>,
}

impl std::fmt::Debug for LocalKeks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl LocalKeks {
    /// Keys by id, the last one current. At least one.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Option<Self> {
        (!keys.is_empty()).then(|| Self {
            keys: keys.into_iter().map(|(id, k)| (id, DataKey(k))).collect(),
        })
    }

    /// The ids held, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }
}

impl KeyProvider for LocalKeks {
    fn current(&self) -> &str {
        &self.keys.last().expect("at least one key").0
    }

    fn holds(&self, id: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == id)
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

    #[test]
    fn data_keys_unwrap_under_an_older_kek_after_rotation() {
        let dk = DataKey::from_bytes([5; 32]);
        let ctx = data_key_context("pay", "prod", 1);
        let old = LocalKeks::new(vec![("kek-1".into(), [1; 32])]).unwrap();
        let wrapped = old.wrap(&dk, &ctx, [3; 12]);
        assert_eq!(wrapped.kek, "kek-1");
        let rotated =
            LocalKeks::new(vec![("kek-1".into(), [1; 32]), ("kek-2".into(), [2; 32])]).unwrap();
        assert_eq!(rotated.current(), "kek-2");
        assert!(rotated.holds("kek-1") && !rotated.holds("kek-3"));
        assert_eq!(rotated.unwrap(&wrapped, &ctx).unwrap(), dk);
        // Bound to its context; a retired KEK no longer unwraps.
        assert_eq!(
            rotated.unwrap(&wrapped, &data_key_context("pay", "dev", 1)),
            Err(SecretError::Tampered)
        );
        assert_eq!(
            rotated.unwrap(&wrapped, &data_key_context("pay", "prod", 2)),
            Err(SecretError::Tampered)
        );
        let rewrapped = rotated.wrap(&dk, &ctx, [4; 12]);
        let retired = LocalKeks::new(vec![("kek-2".into(), [2; 32])]).unwrap();
        assert_eq!(retired.unwrap(&rewrapped, &ctx).unwrap(), dk);
        assert!(retired.unwrap(&wrapped, &ctx).is_err());
        assert!(!format!("{retired:?}").contains("[2"), "no key in Debug");
    }

    #[test]
    fn the_record_names_its_newest_generation() {
        let kek = LocalKeks::new(vec![("k".into(), [1; 32])]).unwrap();
        let w = |g| RecordedKey {
            g,
            wrapped: kek.wrap(
                &DataKey::from_bytes([g as u8; 32]),
                &data_key_context("a", "b", g),
                [0; 12],
            ),
        };
        let r = DataKeyRecord {
            keys: vec![w(1), w(3), w(2)],
        };
        assert_eq!(r.current().unwrap().g, 3);
        assert_eq!(DataKeyRecord::parse(&r.to_text()), Some(r.clone()));
        assert_eq!(DataKeyRecord::parse(r#"{"keys":[]}"#), None);
        assert!(r.generation(2).is_some() && r.generation(4).is_none());
    }
}
