//! The audit log's records and their hash chain (DESIGN §4b): each record carries the hash of
//! the one before it and its own hash over everything else, so editing or removing a record
//! breaks the chain; the newest record's hash is signed with the cluster's key, so cutting
//! records off the end is detected too. The origin writes records; `meridian audit verify`
//! checks them with [`verify_chain`] and [`AuditHead::verify`].

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::sign::Signer;

/// The `prev_hash` of the first record ever: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited event: a write attempt as committed (whatever its outcome), a token, policy or
/// membership change, or a refused request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The Raft log entry that committed it.
    pub log_index: u64,
    /// When the node that took the request saw it, ms since the Unix epoch.
    pub time_ms: u64,
    /// The authenticated principal (`name#id`), `anonymous`, or the system part that acted.
    pub actor: String,
    /// What was asked (`write`, `delete`, `rollback`, `txn`, `schema`, `token-create`, …).
    pub action: String,
    /// What it was asked on (`app/env/key`, `app/env/prefix*`, `token:<id>`, `policy:<name>`).
    pub resource: String,
    /// `ok`, or the refusal's code (`version_conflict`, `forbidden`, `unauthenticated`, …).
    pub outcome: String,
    /// The store's revision after it.
    pub revision: u64,
    /// The request's `x-request-id`, if it had one.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The client's address as the node saw it.
    #[serde(default)]
    pub source: Option<String>,
    /// Why, as the writer said (or the refusal's message).
    #[serde(default)]
    pub reason: Option<String>,
    /// The previous record's `hash` ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// BLAKE3 over every other field ([`AuditRecord::compute_hash`]).
    pub hash: String,
}

impl AuditRecord {
    /// The hash of the record's fields but `hash`, as lower-case hex.
    pub fn compute_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash = String::new();
        let mut h = blake3::Hasher::new_derive_key("meridian 2026 audit record v1");
        // Serializing a struct of strings and integers cannot fail; its field order is fixed.
        h.update(&serde_json::to_vec(&copy).unwrap_or_default());
        hex::encode(h.finalize().as_bytes())
    }

    /// Seals the record: sets its hash.
    pub fn seal(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }
}

/// The newest record's position and hash, signed with the cluster's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// The newest record's `seq` (0: no record yet).
    pub seq: u64,
    /// Its hash ([`GENESIS`] with no record).
    pub hash: String,
    /// Ed25519 over `AuditHead::signing_bytes`, hex.
    pub signature: String,
}

impl AuditHead {
    fn signing_bytes(seq: u64, hash: &str) -> Vec<u8> {
        let mut out = b"meridian/audit-head/v1\0".to_vec();
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// The head of a chain whose newest record is `seq` with `hash`, signed by `signer`.
    pub fn signed(signer: &Signer, seq: u64, hash: &str) -> Self {
        let signature = signer.sign_bytes(&Self::signing_bytes(seq, hash));
        Self {
            seq,
            hash: hash.to_owned(),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Whether `key` signed this head.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(&Self::signing_bytes(self.seq, &self.hash), &signature)
            .is_ok()
    }
}

/// Where and why a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record's hash is not the hash of its fields: it was edited.
    #[error("record {seq} was altered: its hash does not match its contents")]
    Altered {
        /// The record.
        seq: u64,
    },
    /// A record does not follow the one before it: one was removed or inserted.
    #[error("record {seq} does not follow record {previous}: records are missing or out of order")]
    Broken {
        /// The record.
        seq: u64,
        /// The record before it in the listing.
        previous: u64,
    },
    /// The newest record is not the signed head's: records were cut off the end.
    #[error("the signed head is record {head} but the log ends at record {last}")]
    Truncated {
        /// The signed head's seq.
        head: u64,
        /// The newest record listed.
        last: u64,
    },
}

/// Checks that `records` (in `seq` order, from any starting point: older ones may have been
/// dropped by retention) form one unbroken chain ending at `head`.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    head: &AuditHead,
) -> Result<u64, ChainError> {
    let mut previous: Option<&AuditRecord> = None;
    let mut count = 0;
    for r in records {
        if r.compute_hash() != r.hash {
            return Err(ChainError::Altered { seq: r.seq });
        }
        if let Some(p) = previous
            && (r.seq != p.seq + 1 || r.prev_hash != p.hash)
        {
            return Err(ChainError::Broken {
                seq: r.seq,
                previous: p.seq,
            });
        }
        previous = Some(r);
        count += 1;
    }
    let (last, hash) = previous.map_or((0, GENESIS), |p| (p.seq, p.hash.as_str()));
    if last != head.seq || hash != head.hash {
        return Err(ChainError::Truncated {
            head: head.seq,
            last,
        });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for seq in 1..=n {
            let prev_hash = out.last().map_or(GENESIS.to_owned(), |r| r.hash.clone());
            out.push(
                AuditRecord {
                    seq,
                    log_index: seq + 10,
                    time_ms: 1_000 + seq,
                    actor: "alice#0123456789abcdef".into(),
                    action: "write".into(),
                    resource: format!("pay/prod/k{seq}"),
                    outcome: "ok".into(),
                    revision: seq,
                    request_id: None,
                    source: Some("127.0.0.1:5000".into()),
                    reason: None,
                    prev_hash,
                    hash: String::new(),
                }
                .seal(),
            );
        }
        out
    }

    #[test]
    fn editing_removing_or_truncating_a_record_is_detected() {
        let signer = Signer::from_bytes(&[5; 32]);
        let key = signer.verifying_key();
        let records = chain(5);
        let head = AuditHead::signed(&signer, 5, &records[4].hash);
        assert!(head.verify(&key));
        assert_eq!(verify_chain(&records, &head), Ok(5));
        // Retention dropped the oldest: still a chain.
        assert_eq!(verify_chain(&records[2..], &head), Ok(3));

        let mut edited = records.clone();
        edited[2].actor = "mallory".into();
        assert_eq!(
            verify_chain(&edited, &head),
            Err(ChainError::Altered { seq: 3 })
        );
        let mut rehashed = edited.clone();
        rehashed[2] = rehashed[2].clone().seal();
        assert_eq!(
            verify_chain(&rehashed, &head),
            Err(ChainError::Broken {
                seq: 4,
                previous: 3
            })
        );
        let mut removed = records.clone();
        removed.remove(1);
        assert_eq!(
            verify_chain(&removed, &head),
            Err(ChainError::Broken {
                seq: 3,
                previous: 1
            })
        );
        assert_eq!(
            verify_chain(&records[..4], &head),
            Err(ChainError::Truncated { head: 5, last: 4 })
        );
        let mut forged = head.clone();
        forged.seq = 4;
        assert!(!forged.verify(&key));
    }
}
