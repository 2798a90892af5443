//! The audit log at the origin: one record per write attempt as committed (whatever its
//! outcome), per token, policy and membership change, and per refused mutating request, each
//! chained to the one before by hash ([`meridian_protocol::audit`]).
//!
//! Records are written by the Raft state machine, in the batch of the entry that carries them,
//! so every node holds the same chain; they are keyed by position and kept apart from history
//! (their own retention). The chain's tip remembers the log position of its newest record, so
//! an entry applied again after a crash adds nothing twice.

use meridian_protocol::audit::{AuditRecord, GENESIS};
use meridian_protocol::auth::{POLICIES_ENV, PROTECTIONS_ENV, SYSTEM_APP, TOKENS_ENV};
use meridian_protocol::directory::EDGES_ENV;
use meridian_store::{Backend, EXTRA_PREFIX, StoreError, Write};
use serde::{Deserialize, Serialize};

use crate::apply::Command;
use crate::history::WriteMeta;

/// Where records live: this prefix and the record's `seq`, big-endian.
pub const AUDIT_PREFIX: [u8; 2] = [EXTRA_PREFIX, b'a'];
/// Where the chain's tip lives.
pub const AUDIT_TIP: [u8; 2] = [EXTRA_PREFIX, b'q'];
/// Most events one [`Command::Audit`] carries.
pub const MAX_AUDIT_EVENTS: usize = 256;
/// Longest text field of an event, in bytes.
pub const MAX_EVENT_FIELD_BYTES: usize = 1024;

/// An event to record, before it has a place in the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When the node that took the request saw it.
    pub time_ms: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub resource: String,
    /// `ok` or the refusal's code.
    pub outcome: String,
    /// The request's id.
    pub request_id: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// The newest record's position in the chain and in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTip {
    /// Its `seq` (0: none yet).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The log entry and the position inside it that wrote it.
    pub at: (u64, u32),
}

impl Default for ChainTip {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
            at: (0, 0),
        }
    }
}

/// The key of record `seq`.
pub fn record_key(seq: u64) -> Vec<u8> {
    let mut k = AUDIT_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The tip as stored (the default before the first record).
pub fn load_tip<B: Backend>(backend: &B) -> Result<ChainTip, StoreError> {
    match backend.get(&AUDIT_TIP)? {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(|_| StoreError::Invalid("audit chain tip"))
        }
        None => Ok(ChainTip::default()),
    }
}

/// Appends `event` after `tip` as written by log position `at` at `revision`: the writes (the
/// record and the new tip) and the new tip, or nothing when `tip` already covers `at`.
pub fn append(
    tip: &ChainTip,
    at: (u64, u32),
    revision: u64,
    event: AuditEvent,
) -> Option<(Vec<Write>, ChainTip)> {
    if tip.seq > 0 && tip.at >= at {
        return None;
    }
    let record = AuditRecord {
        seq: tip.seq + 1,
        log_index: at.0,
        time_ms: event.time_ms,
        actor: event.actor,
        action: event.action,
        resource: event.resource,
        outcome: event.outcome,
        revision,
        request_id: event.request_id,
        source: event.source,
        reason: event.reason,
        prev_hash: tip.hash.clone(),
        hash: String::new(),
    }
    .seal();
    let next = ChainTip {
        seq: record.seq,
        hash: record.hash.clone(),
        at,
    };
    let writes = vec![
        (
            record_key(record.seq),
            Some(serde_json::to_vec(&record).unwrap_or_default()),
        ),
        (
            AUDIT_TIP.to_vec(),
            Some(serde_json::to_vec(&next).unwrap_or_default()),
        ),
    ];
    Some((writes, next))
}

/// The tip after the newest of `records` (raw pairs under [`AUDIT_PREFIX`]), for a snapshot
/// install.
pub fn tip_of(records: &[(Vec<u8>, Vec<u8>)]) -> Result<ChainTip, StoreError> {
    let newest = records
        .iter()
        .filter(|(k, _)| k.starts_with(&AUDIT_PREFIX))
        .max_by(|a, b| a.0.cmp(&b.0));
    match newest {
        None => Ok(ChainTip::default()),
        Some((_, v)) => {
            let r: AuditRecord =
                serde_json::from_slice(v).map_err(|_| StoreError::Invalid("audit record"))?;
            // Records of one entry share its log index; any later entry's position is higher.
            Ok(ChainTip {
                seq: r.seq,
                hash: r.hash,
                at: (r.log_index, u32::MAX),
            })
        }
    }
}

/// The log index of a stored record (to leave records after a snapshot point out of it).
pub fn record_log_index(value: &[u8]) -> Result<u64, StoreError> {
    #[derive(Deserialize)]
    struct Index {
        log_index: u64,
    }
    serde_json::from_slice::<Index>(value)
        .map(|i| i.log_index)
        .map_err(|_| StoreError::Invalid("audit record"))
}

/// What the audit log calls a committed command and what it acted on, from the command and
/// the writer's metadata; `None` for what is not audited (history compaction).
pub fn describe(command: &Command, meta: &WriteMeta) -> Option<(String, String)> {
    let system = |a: &meridian_protocol::Address, put: bool| -> Option<(String, String)> {
        if a.app != SYSTEM_APP {
            return None;
        }
        Some(match (a.env.as_str(), put) {
            (TOKENS_ENV, true) => ("token-create".into(), format!("token:{}", a.key)),
            (TOKENS_ENV, false) => ("token-revoke".into(), format!("token:{}", a.key)),
            (POLICIES_ENV, true) => ("policy-set".into(), format!("policy:{}", a.key)),
            (POLICIES_ENV, false) => ("policy-delete".into(), format!("policy:{}", a.key)),
            (PROTECTIONS_ENV, true) => ("protection-set".into(), format!("protection:{}", a.key)),
            (PROTECTIONS_ENV, false) => {
                ("protection-delete".into(), format!("protection:{}", a.key))
            }
            (EDGES_ENV, true) => ("edge-announce".into(), format!("edge:{}", a.key)),
            (_, _) => ("edge-forget".into(), format!("edge:{}", a.key)),
        })
    };
    let (action, resource) = match command {
        Command::Put { address, .. } => {
            system(address, true).unwrap_or_else(|| ("write".into(), address.to_string()))
        }
        Command::Patch { address, .. } => ("write".into(), address.to_string()),
        Command::Delete { address, .. } => {
            system(address, false).unwrap_or_else(|| ("delete".into(), address.to_string()))
        }
        Command::Txn { ops, .. } => {
            let first = ops
                .first()
                .map(|o| o.address().to_string())
                .unwrap_or_default();
            let more = if ops.len() > 1 {
                format!(" (+{} more)", ops.len() - 1)
            } else {
                String::new()
            };
            ("txn".into(), format!("{first}{more}"))
        }
        Command::PutSchema {
            app, env, prefix, ..
        }
        | Command::DeleteSchema { app, env, prefix } => {
            ("schema".into(), format!("{app}/{env}/{prefix}*"))
        }
        Command::Webhook(crate::webhooks::WebhookOp::Subscribe { url, .. }) => {
            ("webhook-subscribe".into(), format!("webhook:{url}"))
        }
        Command::Webhook(crate::webhooks::WebhookOp::Unsubscribe { id }) => {
            ("webhook-unsubscribe".into(), format!("webhook/{id}"))
        }
        // Delivery outcomes go to the subscription's delivery log, not the audit log.
        Command::Webhook(_) => return None,
        Command::Change(op) => (
            op.audit_action().into(),
            op.id()
                .map_or_else(|| "changes".into(), |id| format!("change/{id}")),
        ),
        Command::CompactHistory { .. }
        | Command::CompactAudit { .. }
        | Command::Audit(_)
        | Command::TouchTokens(_)
        | Command::Exposures(_)
        | Command::Reveals { .. } => {
            return None;
        }
    };
    Some((meta.action.clone().unwrap_or(action), resource))
}

/// Which records a compaction to `before_ms` deletes: the oldest ones, while they are older,
/// at most `limit` (records are in commit order, so times rise but for clock skew between the
/// nodes that took the requests, which stops the cut early rather than late).
pub fn expired(records: &[(Vec<u8>, Vec<u8>)], before_ms: u64, limit: usize) -> Vec<Write> {
    #[derive(Deserialize)]
    struct Time {
        time_ms: u64,
    }
    records
        .iter()
        .take(limit)
        .take_while(|(_, v)| serde_json::from_slice::<Time>(v).is_ok_and(|t| t.time_ms < before_ms))
        .map(|(k, _)| (k.clone(), None))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time_ms: u64) -> AuditEvent {
        AuditEvent {
            time_ms,
            actor: "alice#0123456789abcdef".into(),
            action: "write".into(),
            resource: "pay/prod/a".into(),
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_applied_again_adds_nothing_and_retention_cuts_the_oldest() {
        let genesis = ChainTip::default();
        let (_, one) = append(&genesis, (5, 0), 1, event(10)).unwrap();
        let (_, two) = append(&one, (5, 1), 1, event(20)).unwrap();
        assert_eq!((one.seq, two.seq), (1, 2));
        // Applying entry 5 again after a crash finds it recorded.
        assert!(append(&two, (5, 0), 1, event(10)).is_none());
        assert!(append(&two, (5, 1), 1, event(20)).is_none());
        let (writes, three) = append(&two, (6, 0), 2, event(30)).unwrap();
        assert_eq!(three.seq, 3);
        let record: AuditRecord = serde_json::from_slice(writes[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(
            (record.prev_hash.as_str(), record.revision),
            (two.hash.as_str(), 2)
        );

        let stored: Vec<(Vec<u8>, Vec<u8>)> = [10, 20, 15, 40]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let r = serde_json::json!({"time_ms": t});
                (record_key(i as u64 + 1), serde_json::to_vec(&r).unwrap())
            })
            .collect();
        // Oldest first, stopping at the first record young enough (clock skew stops the cut
        // early rather than leaving a hole).
        assert_eq!(expired(&stored, 18, 100).len(), 1);
        assert_eq!(expired(&stored, 30, 100).len(), 3);
        assert_eq!(expired(&stored, 30, 2).len(), 2);
    }
}
