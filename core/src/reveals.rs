//! Reveals of secrets at edges, recorded in the audit log: an edge keeps its reveal records on
//! disk until the origin acknowledges them, and sends the unacknowledged ones beside each
//! report; the origin commits them ([`crate::apply::Command::Reveals`]). Each audit record names
//! the edge and the edge's record number in `source`, so that a record sent again after an
//! acknowledgement was lost with its connection is recognisable as the same one; recording
//! depends on nothing but the command, so every node writes the same chain.

use meridian_protocol::secrets::RevealRecord;

use crate::audit::{AuditEvent, MAX_EVENT_FIELD_BYTES};

/// The audit events of the records of `edge`.
pub fn events(edge: &str, records: &[RevealRecord]) -> Vec<AuditEvent> {
    let cut = |s: &str| {
        s.chars()
            .take(MAX_EVENT_FIELD_BYTES / 4)
            .collect::<String>()
    };
    records
        .iter()
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
            source: Some(format!("edge {} record {}", cut(edge), r.seq)),
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
        .collect()
}
