//! Signed heads: the origin's Ed25519 signature over `(revision, state digest, delta hash)`,
//! and the checks an edge runs before it applies anything it received.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::model::{Delta, Hash32, Revision};

/// Identifies a signing key: the first 8 bytes of BLAKE3 over its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let h = blake3::hash(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.as_bytes()[..8]);
        Self(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What the origin commits to for each revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The committed revision.
    pub revision: Revision,
    /// The digest of the whole state at `revision`.
    pub digest: Digest,
    /// The hash of the delta `revision - 1 → revision`.
    pub delta_hash: Hash32,
}

impl Head {
    /// The bytes that are signed: a domain tag and the fixed-width fields.
    pub fn signing_bytes(&self) -> [u8; 89] {
        let mut out = [0u8; 89];
        out[..17].copy_from_slice(b"meridian/head/v1\0");
        out[17..25].copy_from_slice(&self.revision.0.to_be_bytes());
        out[25..57].copy_from_slice(&self.digest.0.0);
        out[57..89].copy_from_slice(&self.delta_hash.0);
        out
    }
}

/// A head with the origin's signature and the id of the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// What is signed.
    pub head: Head,
    /// Which key signed it.
    pub key_id: KeyId,
    /// Ed25519 signature over [`Head::signing_bytes`].
    pub signature: Signature,
}

/// A delta together with the signed head it produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDelta {
    /// The signed head for `delta.revision`.
    pub head: SignedHead,
    /// The changes.
    pub delta: Delta,
}

/// The origin's signing key.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    id: KeyId,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.id)
    }
}

impl Signer {
    /// Wraps a secret key.
    pub fn new(key: SigningKey) -> Self {
        let id = KeyId::of(&key.verifying_key());
        Self { key, id }
    }

    /// Builds a signer from the 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self::new(SigningKey::from_bytes(secret))
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// Signs `message` (which starts with its own domain tag, as the audit head's does).
    pub fn sign_bytes(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.key.sign(message)
    }

    /// Signs a head. Ed25519 is deterministic, so every origin node holding the key produces
    /// the same signature for the same head.
    pub fn sign(&self, head: Head) -> SignedHead {
        let signature = self.key.sign(&head.signing_bytes());
        SignedHead {
            head,
            key_id: self.id,
            signature,
        }
    }

    /// Signs the head for a delta given the digest after applying it.
    pub fn sign_delta(&self, delta: Delta, digest: Digest) -> SignedDelta {
        let head = Head {
            revision: delta.revision,
            digest,
            delta_hash: delta.hash(),
        };
        SignedDelta {
            head: self.sign(head),
            delta,
        }
    }

    /// Like [`Signer::sign_delta`], but takes `offered` instead of signing when it is a
    /// signature this key made over exactly the head this delta produces: another origin node
    /// holding the same key already signed it, and Ed25519 is deterministic, so signing again
    /// would give the same bytes. Anything else offered (another head, another key) is
    /// ignored and the head is signed here. Returns whether `offered` was used.
    ///
    /// The offered signature itself is not verified (that would cost twice what signing does);
    /// it must come from a node that holds this key. A wrong one is still caught by every edge,
    /// which verifies each head before applying it.
    pub fn sign_delta_reusing(
        &self,
        delta: Delta,
        digest: Digest,
        offered: Option<&SignedHead>,
    ) -> (SignedDelta, bool) {
        let head = Head {
            revision: delta.revision,
            digest,
            delta_hash: delta.hash(),
        };
        match offered {
            Some(o) if o.head == head && o.key_id == self.id => {
                (SignedDelta { head: *o, delta }, true)
            }
            _ => (
                SignedDelta {
                    head: self.sign(head),
                    delta,
                },
                false,
            ),
        }
    }
}

/// Why received data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The head names a key this node does not trust.
    #[error("head signed by unknown key {0}")]
    UnknownKey(KeyId),
    /// The signature does not verify under the named key.
    #[error("bad signature on head for revision {0}")]
    BadSignature(Revision),
    /// The delta's hash is not the one the head commits to.
    #[error("delta for revision {0} does not match its signed head")]
    DeltaMismatch(Revision),
    /// The delta's own revision is not the head's.
    #[error("delta revision {delta} differs from head revision {head}")]
    RevisionMismatch {
        /// The delta's revision.
        delta: Revision,
        /// The head's revision.
        head: Revision,
    },
}

/// Heads that verified, shared by several verifiers in one process.
///
/// The simulator runs thirty edges in one process, and each would check the same signature of
/// every revision; with a shared memo each distinct signed head is verified once. A head
/// counts as verified only if it is *equal*, byte for byte, to one that passed
/// `verify_strict` (no hash of it is trusted), so the memo changes cost, never outcomes.
/// Bounded: the oldest revisions are forgotten first. Production edges are one per process
/// and do not use it.
#[derive(Debug, Clone)]
pub struct VerifiedHeads {
    inner: Arc<Mutex<BTreeMap<Revision, Vec<SignedHead>>>>,
    capacity_revisions: usize,
}

impl VerifiedHeads {
    /// A memo remembering the heads of at most `capacity_revisions` revisions.
    pub fn new(capacity_revisions: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
            capacity_revisions: capacity_revisions.max(1),
        }
    }

    fn contains(&self, signed: &SignedHead) -> bool {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&signed.head.revision)
            .is_some_and(|heads| heads.contains(signed))
    }

    fn remember(&self, signed: &SignedHead) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let heads = map.entry(signed.head.revision).or_default();
        if !heads.contains(signed) {
            heads.push(*signed);
        }
        while map.len() > self.capacity_revisions {
            map.pop_first();
        }
    }
}

/// The public keys an edge accepts heads from.
///
/// It remembers the last head that verified: the origin re-announces its newest head on every
/// heartbeat, and a head that arrived with its delta comes again on the control stream, so the
/// same signature would otherwise be checked over and over (an Ed25519 verification costs
/// tens of microseconds).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, VerifyingKey>,
    last_verified: std::cell::Cell<Option<SignedHead>>,
    shared: Option<VerifiedHeads>,
}

impl TrustedKeys {
    /// Trusts exactly these keys.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (KeyId::of(&k), k)).collect(),
            last_verified: std::cell::Cell::new(None),
            shared: None,
        }
    }

    /// Also consults and fills a memo shared with other verifiers of the same keys.
    pub fn with_shared_memo(mut self, memo: VerifiedHeads) -> Self {
        self.shared = Some(memo);
        self
    }

    /// Checks a head's signature.
    pub fn verify_head(&self, signed: &SignedHead) -> Result<(), VerifyError> {
        if self.last_verified.get().as_ref() == Some(signed) {
            return Ok(());
        }
        let key = self
            .keys
            .get(&signed.key_id)
            .ok_or(VerifyError::UnknownKey(signed.key_id))?;
        if let Some(memo) = &self.shared
            && memo.contains(signed)
        {
            self.last_verified.set(Some(*signed));
            return Ok(());
        }
        key.verify_strict(&signed.head.signing_bytes(), &signed.signature)
            .map_err(|_| VerifyError::BadSignature(signed.head.revision))?;
        self.last_verified.set(Some(*signed));
        if let Some(memo) = &self.shared {
            memo.remember(signed);
        }
        Ok(())
    }

    /// Checks a delta: the head's signature, then that the delta is the one it commits to.
    pub fn verify_delta(&self, signed: &SignedDelta) -> Result<(), VerifyError> {
        self.verify_head(&signed.head)?;
        if signed.delta.revision != signed.head.head.revision {
            return Err(VerifyError::RevisionMismatch {
                delta: signed.delta.revision,
                head: signed.head.head.revision,
            });
        }
        if signed.delta.hash() != signed.head.head.delta_hash {
            return Err(VerifyError::DeltaMismatch(signed.delta.revision));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Address;
    use crate::model::{Change, Version};

    fn delta() -> Delta {
        Delta {
            revision: Revision(7),
            changes: vec![Change {
                address: Address::parse("a", "p", "k").unwrap(),
                version: Version(1),
                value: Some("42".into()),
            }],
        }
    }

    #[test]
    fn verifies_own_signature_and_rejects_tampering() {
        let signer = Signer::from_bytes(&[7; 32]);
        let trusted = TrustedKeys::new([signer.verifying_key()]);
        let good = signer.sign_delta(delta(), Digest::default());
        assert_eq!(trusted.verify_delta(&good), Ok(()));

        let mut tampered = good.clone();
        tampered.delta.changes[0].value = Some("43".into());
        assert_eq!(
            trusted.verify_delta(&tampered),
            Err(VerifyError::DeltaMismatch(Revision(7)))
        );

        let mut bad_sig = good.clone();
        bad_sig.head.head.digest = Digest(Hash32([1; 32]));
        assert_eq!(
            trusted.verify_delta(&bad_sig),
            Err(VerifyError::BadSignature(Revision(7)))
        );

        let stranger = Signer::from_bytes(&[8; 32]);
        let foreign = stranger.sign_delta(delta(), Digest::default());
        assert!(matches!(
            trusted.verify_delta(&foreign),
            Err(VerifyError::UnknownKey(_))
        ));
    }

    #[test]
    fn an_offered_signature_is_used_only_for_the_same_head_and_key() {
        let signer = Signer::from_bytes(&[7; 32]);
        let own = signer.sign_delta(delta(), Digest::default());

        // Another node's signature of the same head: used, and identical to signing here.
        let (reused, used) = signer.sign_delta_reusing(delta(), Digest::default(), Some(&own.head));
        assert!(used);
        assert_eq!(reused, own);

        // A head for another digest, or the same head under another key: ignored, signed here.
        let other_digest = signer.sign_delta(delta(), Digest(Hash32([1; 32])));
        let stranger = Signer::from_bytes(&[8; 32]).sign_delta(delta(), Digest::default());
        for offered in [other_digest.head, stranger.head] {
            let (signed, used) =
                signer.sign_delta_reusing(delta(), Digest::default(), Some(&offered));
            assert!(!used);
            assert_eq!(signed, own);
        }
        let (signed, used) = signer.sign_delta_reusing(delta(), Digest::default(), None);
        assert!(!used);
        assert_eq!(signed, own);
        let trusted = TrustedKeys::new([signer.verifying_key()]);
        assert_eq!(trusted.verify_delta(&signed), Ok(()));
    }

    #[test]
    fn shared_memo_never_admits_what_would_not_verify() {
        let signer = Signer::from_bytes(&[7; 32]);
        let memo = VerifiedHeads::new(2);
        let a = TrustedKeys::new([signer.verifying_key()]).with_shared_memo(memo.clone());
        let b = TrustedKeys::new([signer.verifying_key()]).with_shared_memo(memo.clone());
        let good = signer.sign_delta(delta(), Digest::default());
        assert_eq!(a.verify_delta(&good), Ok(()));
        assert!(memo.contains(&good.head));
        assert_eq!(b.verify_delta(&good), Ok(()));

        // Same revision, same key id, different digest: not equal to the memoised head.
        let mut forged = good.clone();
        forged.head.head.digest = Digest(Hash32([1; 32]));
        assert_eq!(
            b.verify_delta(&forged),
            Err(VerifyError::BadSignature(Revision(7)))
        );
        // A key this verifier does not trust is refused even if another verifier's memo holds it.
        let other = TrustedKeys::new([]).with_shared_memo(memo.clone());
        assert!(matches!(
            other.verify_delta(&good),
            Err(VerifyError::UnknownKey(_))
        ));

        // Bounded by revisions.
        for r in 8..12 {
            let mut d = delta();
            d.revision = Revision(r);
            a.verify_delta(&signer.sign_delta(d, Digest::default()))
                .unwrap();
        }
        assert!(!memo.contains(&good.head));
        assert_eq!(memo.inner.lock().unwrap().len(), 2);
    }
}
