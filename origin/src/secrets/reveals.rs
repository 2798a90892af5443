//! Reveals of secrets at edges, recorded in the audit log: an edge keeps each reveal on its
//! disk until the origin acknowledges it, and sends the unacknowledged ones beside each report;
//! the origin commits them ([`crate::core::Command::Reveals`]) and remembers each edge's newest
//! recorded sequence number, so a record sent again (an acknowledgement lost with a
//! connection) is not recorded twice.

use meridian_protocol::secrets::RevealRecord;
use meridian_store::{Backend, EXTRA_PREFIX, StoreError, Write};

use crate::audit::{AuditEvent, MAX_EVENT_FIELD_BYTES};

/// Where an edge's newest recorded sequence number lives: this prefix and the edge id.
pub const REVEAL_SEQ_PREFIX: [u8; 2] = [EXTRA_PREFIX, b'v'];

fn key(edge: &str) -> Vec<u8> {
    let mut k = REVEAL_SEQ_PREFIX.to_vec();
    k.extend_from_slice(edge.as_bytes());
    k
}

/// The newest sequence number recorded for `edge` (0: none).
pub fn recorded_seq<B: Backend>(backend: &B, edge: &str) -> Result<u64, StoreError> {
    Ok(backend
        .get(&key(edge))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The write that records `seq` as `edge`'s newest.
pub fn seq_write(edge: &str, seq: u64) -> Write {
    (key(edge), Some(seq.to_be_bytes().to_vec()))
}

/// The audit events of the records of `edge` not yet recorded.
pub fn events<B: Backend>(
    backend: &B,
    edge: &str,
    records: &[RevealRecord],
) -> Result<Vec<AuditEvent>, StoreError> {
    let stored = recorded_seq(backend, edge)?;
    let cut = |s: &str| {
        s.chars()
            .take(MAX_EVENT_FIELD_BYTES / 4)
            .collect::<String>()
    };
    Ok(records
        .iter()
        .filter(|r| r.seq > stored)
        .map(|r| AuditEvent {
            time_ms: r.time_ms,
            actor: cut(&r.actor),
            action: if r.previous {
                "secret-reveal-previous".into()
            } else {
                "secret-reveal".into()
            },
            resource: format!("{}@{}", r.address, r.version),
            outcome: "ok".into(),
            request_id: r.request_id.as_deref().map(cut),
            source: None,
            reason: Some(if r.count > 1 {
                format!(
                    "at edge {}: {} reveals until {} ms",
                    cut(edge),
                    r.count,
                    r.last_ms
                )
            } else {
                format!("at edge {}", cut(edge))
            }),
        })
        .collect())
}
