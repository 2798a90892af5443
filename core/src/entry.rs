//! How an origin node applies a committed log entry: each proposal as one revision through
//! the apply core, recorded in the history, and in the audit chain with its outcome (and, for
//! an edge's reveals, one audit event per reveal record). Every origin node and the
//! simulator's origin apply entries through this one function, so they make the same
//! revisions, digests and audit records.

use meridian_store::{Backend, WriteBackLimits};

use crate::apply::{Applied, ApplyError, Command, OriginCore, Proposal};
use crate::audit::AuditEvent;

/// How many `apply` calls' batches an origin's state gathers before its backend gets them, as
/// one batch: sled costs about as much per batch as for a dozen records, and a key written by
/// several calls (the state's revision, hash and head, the applied log id) is one record
/// instead of several. A crash loses at most these calls' writes, which are applied again from
/// the Raft log.
pub const WRITE_BACK: WriteBackLimits = WriteBackLimits {
    max_batches: 8,
    max_bytes: 8 << 20,
};

/// The outcome code a refusal is audited under (`ok` when applied).
pub fn outcome_code(result: &Result<Applied, ApplyError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ApplyError::VersionConflict { .. }) => "version_conflict",
        Err(ApplyError::NotFound(_)) => "not_found",
        Err(ApplyError::ConditionFailed { .. }) => "condition_failed",
        Err(ApplyError::Invalid(_)) => "invalid_command",
        Err(ApplyError::SchemaViolation { .. }) => "schema_violation",
        Err(ApplyError::CurrentValuesViolate { .. }) => "current_values_violate",
        Err(ApplyError::ValueTooLarge { .. }) => "value_too_large",
        Err(ApplyError::SecretKey(_)) => "secret_key",
        Err(ApplyError::Change(e)) => e.code(),
        Err(ApplyError::Store(_) | ApplyError::History(_) | ApplyError::Schemas(_)) => "error",
    }
}

/// Whether an error stops the node (storage, history or schema records failed) rather than
/// refusing one command.
pub fn is_fatal(e: &ApplyError) -> bool {
    matches!(
        e,
        ApplyError::Store(_) | ApplyError::History(_) | ApplyError::Schemas(_)
    )
}

/// Applies the proposals of the entry at `log_index`, in order, unpublished (the caller
/// publishes once per batch of entries). Returns each proposal's result; a fatal error
/// (see [`is_fatal`]) ends the entry at once and is returned as the error.
pub fn apply_proposals<B: Backend>(
    core: &mut OriginCore<B>,
    log_index: u64,
    proposals: Vec<Proposal>,
) -> Result<Vec<Result<Applied, ApplyError>>, ApplyError> {
    let mut results = Vec::with_capacity(proposals.len());
    // Each audit record's place in the entry, so that applying it again adds nothing.
    let mut position = 0u32;
    for proposal in proposals {
        let described = crate::audit::describe(&proposal.command, &proposal.meta);
        let events = match &proposal.command {
            Command::Audit(events) => events.clone(),
            Command::Reveals { edge, records } => crate::reveals::events(edge, records),
            _ => Vec::new(),
        };
        let meta = proposal.meta.clone();
        let result = core
            .apply_unpublished(proposal.command, Some(&proposal.meta), Vec::new())
            .map(|(applied, _)| applied);
        if let Err(e) = &result
            && is_fatal(e)
        {
            return result.map(|_| Vec::new());
        }
        let recorded = described.map(|(action, resource)| AuditEvent {
            time_ms: meta.time_ms,
            actor: meta.actor,
            action,
            resource,
            outcome: outcome_code(&result).to_owned(),
            request_id: meta.request_id,
            source: meta.source,
            reason: meta.reason,
        });
        for event in recorded.into_iter().chain(events) {
            core.record_audit((log_index, position), event)?;
            position += 1;
        }
        results.push(result);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use meridian_protocol::auth::Pattern;
    use meridian_protocol::{Address, Revision};

    use crate::apply::{Applied, Command, Condition, Proposal, TxnOp};
    use crate::changes::{ChangeError, ChangeOp};
    use crate::history::WriteMeta;
    use crate::webhooks::WebhookOp;

    fn postcard_round_trip<T>(value: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = postcard::to_allocvec(value).expect("encodes");
        let back: T = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(&back, value);
    }

    /// Commands are Raft log entries and answers travel from the leader to a forwarding
    /// follower, both in postcard, which cannot skip fields nor decode self-describing values.
    #[test]
    fn every_change_and_webhook_command_and_answer_survives_postcard() {
        let a = Address::parse("pay", "prod", "k").unwrap();
        let commands = [
            Command::Change(ChangeOp::Create {
                reason: "r".into(),
                apply_at_ms: Some(5),
                conditions: vec![Condition::VersionEquals(a.clone(), 1)],
                ops: vec![TxnOp::Put(a.clone(), "1".into()), TxnOp::Delete(a.clone())],
            }),
            Command::Change(ChangeOp::Approve {
                id: 1,
                rules: vec!["prod".into()],
                comment: None,
            }),
            Command::Change(ChangeOp::Apply {
                id: 1,
                break_glass: true,
            }),
            Command::Webhook(WebhookOp::Subscribe {
                url: "http://x".into(),
                events: vec!["config.changed".into()],
                resources: vec![Pattern::parse("pay/prod/*").unwrap()],
                secret: "whsec_x".into(),
            }),
            Command::Webhook(WebhookOp::Emit {
                kind: "edge.lagging".into(),
                data: r#"{"edge":"e"}"#.into(),
            }),
            Command::Webhook(WebhookOp::Failed {
                seq: (3, 1 << 32),
                status: None,
                error: "timeout".into(),
            }),
        ];
        for command in commands {
            postcard_round_trip(&Proposal {
                command,
                meta: WriteMeta::default(),
            });
        }
        for change in [None, Some(7)] {
            postcard_round_trip(&Applied {
                revision: Revision(3),
                entries: Vec::new(),
                change,
            });
        }
        postcard_round_trip(&ChangeError::Closed {
            id: 1,
            state: "applied".into(),
        });
    }
}
