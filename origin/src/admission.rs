//! What a write must satisfy before it is proposed to Raft, whoever hands it over. The client
//! API checks each part as it parses a request and answers the precise error; the Raft channel
//! checks every proposal a peer forwards with [`check`], so that a peer can commit nothing a
//! client could not: well-formed addresses, valid JSON within the value limit, transactions
//! within their limits, bounded history metadata.

use meridian_protocol::Address;
use meridian_protocol::addr::{validate_app, validate_env, validate_key_prefix};
use meridian_protocol::frame::{MAX_REVISION_BYTES, change_bytes};

use meridian_core::apply::{Command, Condition, Proposal, TxnOp};
use meridian_core::changes::ChangeOp;
use meridian_core::history::{MAX_ACTOR_BYTES, MAX_REASON_BYTES};
use meridian_core::webhooks::WebhookOp;
use meridian_protocol::auth::valid_policy_name;

/// Most conditions and operations in one transaction.
pub const MAX_TXN_ITEMS: usize = 1_000;

/// Why a proposal may not be proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inadmissible {
    /// An address breaks the key grammar.
    #[error("invalid address {0:?}")]
    Address(String),
    /// A value, patch or schema is not JSON.
    #[error("the {what} for {at} is not valid JSON")]
    NotJson {
        /// A value, a patch or a schema.
        what: &'static str,
        /// Where it was to be written.
        at: String,
    },
    /// A value, patch or schema is over the value limit.
    #[error("the {what} for {at} is {bytes} bytes; the limit is {limit}")]
    TooLarge {
        /// A value, a patch or a schema.
        what: &'static str,
        /// Where it was to be written.
        at: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The changes of one revision would not fit a frame edges accept.
    #[error(
        "{what} would change {bytes} bytes in one revision; the limit is {limit} (split it into smaller transactions)"
    )]
    RevisionTooLarge {
        /// A transaction, a rollback, …
        what: &'static str,
        /// Its size as counted.
        bytes: usize,
        /// [`MAX_REVISION_BYTES`].
        limit: usize,
    },
    /// A transaction is empty, too long, or writes an address twice.
    #[error("transaction: {0}")]
    Txn(String),
    /// The actor or reason is empty, too long or holds control characters.
    #[error("history metadata: {0}")]
    Meta(&'static str),
}

/// Whether `text` is printable (newlines and tabs allowed).
pub fn printable(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
}

fn address(a: &Address) -> Result<(), Inadmissible> {
    if a.is_valid() {
        Ok(())
    } else {
        Err(Inadmissible::Address(format!(
            "{}/{}/{}",
            a.app, a.env, a.key
        )))
    }
}

fn json(
    what: &'static str,
    at: &dyn std::fmt::Display,
    text: &str,
    limit: usize,
) -> Result<(), Inadmissible> {
    if text.len() > limit {
        return Err(Inadmissible::TooLarge {
            what,
            at: at.to_string(),
            bytes: text.len(),
            limit,
        });
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| Inadmissible::NotJson {
        what,
        at: at.to_string(),
    })?;
    Ok(())
}

fn namespace(app: &str, env: &str, prefix: &str) -> Result<(), Inadmissible> {
    validate_app(app)
        .and_then(|()| validate_env(env))
        .and_then(|()| validate_key_prefix(prefix))
        .map_err(|_| Inadmissible::Address(format!("{app}/{env}/{prefix}")))
}

/// The largest request body the client API reads: a patch or a schema is bounded by it, not by
/// the value limit (a patch's result is checked against the value limit when applied).
pub fn body_limit(max_value_bytes: usize) -> usize {
    max_value_bytes + 64 * 1024
}

/// About how many bytes `command` adds to a Raft entry (batching counts with it).
pub fn command_bytes(command: &Command) -> usize {
    match command {
        Command::Put { address, value, .. } => change_bytes(address, value.len()),
        Command::Patch { address, patch, .. } => change_bytes(address, patch.len()),
        Command::Delete { address, .. } => change_bytes(address, 0),
        Command::Txn { conditions, ops } => {
            conditions
                .iter()
                .map(|c| change_bytes(c.address(), 0))
                .sum::<usize>()
                + ops.iter().map(op_bytes).sum::<usize>()
        }
        Command::CompactHistory { .. } | Command::CompactAudit { .. } => 32,
        Command::TouchTokens(uses) => 16 * uses.len() + 8,
        Command::Reveals { edge, records } => {
            edge.len()
                + records
                    .iter()
                    .map(|r| {
                        64 + r.actor.len()
                            + change_bytes(&r.address, 0)
                            + r.request_id.as_ref().map_or(0, String::len)
                    })
                    .sum::<usize>()
        }
        Command::Exposures(entries) => entries
            .iter()
            .map(|e| {
                let k = &e.count.key;
                32 + k.app.len()
                    + k.env.len()
                    + k.flag.len()
                    + k.variant.len()
                    + e.source.edge.len()
                    + e.region.len()
            })
            .sum(),
        Command::Audit(events) => events
            .iter()
            .map(|e| {
                64 + e.actor.len()
                    + e.action.len()
                    + e.resource.len()
                    + e.outcome.len()
                    + e.request_id.as_ref().map_or(0, String::len)
                    + e.source.as_ref().map_or(0, String::len)
                    + e.reason.as_ref().map_or(0, String::len)
            })
            .sum(),
        Command::PutSchema {
            app,
            env,
            prefix,
            schema,
            ..
        } => app.len() + env.len() + prefix.len() + schema.len() + 16,
        Command::DeleteSchema { app, env, prefix } => app.len() + env.len() + prefix.len() + 16,
        Command::Change(op) => change_op_bytes(op),
        Command::Webhook(op) => match op {
            WebhookOp::Subscribe {
                url,
                events,
                resources,
                secret,
            } => {
                url.len()
                    + secret.len()
                    + events.iter().map(String::len).sum::<usize>()
                    + resources.iter().map(|r| r.as_str().len()).sum::<usize>()
            }
            WebhookOp::Failed { error, .. } => 32 + error.len(),
            WebhookOp::Emit { kind, data } => kind.len() + data.len(),
            WebhookOp::Unsubscribe { .. } | WebhookOp::Delivered { .. } => 32,
        },
    }
}

fn change_op_bytes(op: &ChangeOp) -> usize {
    let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
    match op {
        ChangeOp::Create {
            reason,
            conditions,
            ops,
            ..
        } => {
            reason.len()
                + conditions
                    .iter()
                    .map(|c| change_bytes(c.address(), 0))
                    .sum::<usize>()
                + ops.iter().map(op_bytes).sum::<usize>()
        }
        ChangeOp::Refresh {
            conditions, ops, ..
        } => {
            conditions
                .iter()
                .map(|c| change_bytes(c.address(), 0))
                .sum::<usize>()
                + ops.iter().map(op_bytes).sum::<usize>()
        }
        ChangeOp::Approve { rules, comment, .. } => {
            32 + rules.iter().map(String::len).sum::<usize>() + text(comment)
        }
        ChangeOp::Reject { comment, .. } => 32 + text(comment),
        ChangeOp::Comment { text, .. } => 32 + text.len(),
        ChangeOp::Cancel { .. } | ChangeOp::Apply { .. } => 32,
    }
}

/// Checks a transaction's items (at least one operation, at most [`MAX_TXN_ITEMS`] in all),
/// addresses and values, and that its changes fit one revision (`what` names it).
fn check_txn(
    conditions: &[Condition],
    ops: &[TxnOp],
    max_value_bytes: usize,
    what: &'static str,
) -> Result<(), Inadmissible> {
    let items = conditions.len() + ops.len();
    if ops.is_empty() || items > MAX_TXN_ITEMS {
        return Err(Inadmissible::Txn(format!(
            "{items} conditions and operations with {} operations; 1 to {MAX_TXN_ITEMS} items with at least one operation",
            ops.len()
        )));
    }
    conditions
        .iter()
        .map(Condition::address)
        .try_for_each(address)?;
    // An address written twice is refused when applied, like a version conflict.
    for op in ops {
        address(op.address())?;
        if let TxnOp::Put(a, value) = op {
            json("value", a, value, max_value_bytes)?;
        }
    }
    ops_fit(ops, what)
}

/// Checks a webhook step: a subscription's URL (http or https, at most 2,048 bytes), its
/// event types and patterns; a failure's text bounded.
fn check_webhook(op: &WebhookOp) -> Result<(), Inadmissible> {
    use meridian_core::webhooks::EVENT_TYPES;
    match op {
        WebhookOp::Subscribe {
            url,
            events,
            resources,
            secret,
        } => {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.len() > 2048 || !printable(url) {
                return Err(Inadmissible::Meta(
                    "a webhook URL is http:// or https://, at most 2048 printable bytes",
                ));
            }
            if events.is_empty() || !events.iter().all(|e| EVENT_TYPES.contains(&e.as_str())) {
                return Err(Inadmissible::Meta("unknown webhook event type"));
            }
            if resources.is_empty() || resources.len() > 64 || secret.len() > 128 {
                return Err(Inadmissible::Meta(
                    "a subscription has 1 to 64 resource patterns and a whsec_ secret",
                ));
            }
            Ok(())
        }
        WebhookOp::Emit { kind, data }
            if !kind.starts_with("edge.")
                || !EVENT_TYPES.contains(&kind.as_str())
                || data.len() > 4096
                || serde_json::from_str::<serde_json::Value>(data).is_err() =>
        {
            Err(Inadmissible::Meta(
                "an emitted event is edge.diverged or edge.lagging with at most 4 KiB of data",
            ))
        }
        WebhookOp::Failed { error, .. } if error.len() > 1024 || !printable(error) => Err(
            Inadmissible::Meta("a delivery error is at most 1024 printable bytes"),
        ),
        _ => Ok(()),
    }
}

/// Checks a change request's step: its transaction as [`check`] checks one, its texts
/// bounded and printable.
fn check_change(op: &ChangeOp, max_value_bytes: usize) -> Result<(), Inadmissible> {
    use meridian_core::changes::MAX_COMMENT_BYTES;
    let text_ok = |t: &str| t.len() <= MAX_COMMENT_BYTES && printable(t);
    let comment_ok = |t: &Option<String>| t.as_deref().is_none_or(text_ok);
    let txn = |conditions: &[Condition], ops: &[TxnOp]| {
        check_txn(conditions, ops, max_value_bytes, "the change")
    };
    match op {
        ChangeOp::Create {
            reason,
            conditions,
            ops,
            ..
        } => {
            if reason.is_empty() || reason.len() > MAX_REASON_BYTES || !printable(reason) {
                return Err(Inadmissible::Meta(
                    "a change needs a reason of 1 to 1024 printable bytes",
                ));
            }
            txn(conditions, ops)
        }
        ChangeOp::Refresh {
            conditions, ops, ..
        } => txn(conditions, ops),
        ChangeOp::Approve { rules, comment, .. } => {
            if rules.is_empty()
                || rules.len() > meridian_core::changes::MAX_RULES_PER_APPROVAL
                || !rules.iter().all(|r| valid_policy_name(r))
                || !comment_ok(comment)
            {
                return Err(Inadmissible::Meta(
                    "an approval names 1 to 64 rules and a comment of at most 2048 printable bytes",
                ));
            }
            Ok(())
        }
        ChangeOp::Reject { comment, .. } if !comment_ok(comment) => Err(Inadmissible::Meta(
            "a comment is at most 2048 printable bytes",
        )),
        ChangeOp::Comment { text, .. } if text.is_empty() || !text_ok(text) => {
            Err(Inadmissible::Meta("a comment is 1 to 2048 printable bytes"))
        }
        ChangeOp::Reject { .. }
        | ChangeOp::Comment { .. }
        | ChangeOp::Cancel { .. }
        | ChangeOp::Apply { .. } => Ok(()),
    }
}

fn op_bytes(op: &TxnOp) -> usize {
    match op {
        TxnOp::Put(a, v) => change_bytes(a, v.len()),
        TxnOp::Delete(a) => change_bytes(a, 0),
    }
}

/// Refuses a transaction (`what` names where it came from: a transaction, a rollback) whose
/// changes would not fit one frame. A single put is bounded by the value limit, which the
/// origin's configuration keeps below the frame.
pub fn check_revision_size(command: &Command, what: &'static str) -> Result<(), Inadmissible> {
    match command {
        Command::Txn { ops, .. } => ops_fit(ops, what),
        _ => Ok(()),
    }
}

/// Refuses operations whose changes would not fit one frame.
fn ops_fit(ops: &[TxnOp], what: &'static str) -> Result<(), Inadmissible> {
    let bytes: usize = ops.iter().map(op_bytes).sum();
    if bytes > MAX_REVISION_BYTES {
        return Err(Inadmissible::RevisionTooLarge {
            what,
            bytes,
            limit: MAX_REVISION_BYTES,
        });
    }
    Ok(())
}

/// Checks `proposal` against the grammar and the limits; `max_value_bytes` is this node's value
/// limit.
pub fn check(proposal: &Proposal, max_value_bytes: usize) -> Result<(), Inadmissible> {
    let meta = &proposal.meta;
    if meta.actor.is_empty() || meta.actor.len() > MAX_ACTOR_BYTES || !printable(&meta.actor) {
        return Err(Inadmissible::Meta("actor must be 1 to 128 printable bytes"));
    }
    if let Some(r) = &meta.reason
        && (r.len() > MAX_REASON_BYTES || !printable(r))
    {
        return Err(Inadmissible::Meta(
            "reason must be at most 1024 printable bytes",
        ));
    }
    let short = |t: &Option<String>| t.as_ref().is_none_or(|t| t.len() <= 128 && printable(t));
    if !(short(&meta.request_id) && short(&meta.source) && short(&meta.action)) {
        return Err(Inadmissible::Meta(
            "request id, source and action are at most 128 printable bytes",
        ));
    }
    match &proposal.command {
        Command::Put {
            address: a, value, ..
        } => {
            address(a)?;
            json("value", a, value, max_value_bytes)
        }
        Command::Patch {
            address: a, patch, ..
        } => {
            address(a)?;
            json("patch", a, patch, body_limit(max_value_bytes))
        }
        Command::Delete { address: a, .. } => address(a),
        Command::Txn { conditions, ops } => {
            check_txn(conditions, ops, max_value_bytes, "the transaction")
        }
        Command::PutSchema {
            app,
            env,
            prefix,
            schema,
            ..
        } => {
            namespace(app, env, prefix)?;
            let at = format_args!("{app}/{env}/{prefix}");
            json("schema", &at, schema, body_limit(max_value_bytes))
        }
        Command::DeleteSchema { app, env, prefix } => namespace(app, env, prefix),
        Command::CompactAudit { .. } => Ok(()),
        Command::Exposures(entries) => {
            if entries.is_empty()
                || entries.len() > crate::exposures::MAX_EXPOSURES_PER_COMMAND
                || !entries.iter().all(|e| e.is_admissible())
            {
                return Err(Inadmissible::Meta(
                    "exposure counts: 1 to 1000, names at most 128 bytes",
                ));
            }
            Ok(())
        }
        Command::Reveals { edge, records } => {
            let fits =
                |t: &str| t.len() <= meridian_core::audit::MAX_EVENT_FIELD_BYTES && printable(t);
            if records.is_empty()
                || records.len() > meridian_protocol::frame::MAX_REVEALS_PER_FRAME
                || !fits(edge)
                || !records.iter().all(|r| {
                    fits(&r.actor)
                        && r.address.is_valid()
                        && r.request_id.as_deref().is_none_or(fits)
                })
            {
                return Err(Inadmissible::Meta(
                    "reveals: 1 to 256 records of valid addresses and printable names",
                ));
            }
            Ok(())
        }
        Command::TouchTokens(uses) => {
            if uses.is_empty() || uses.len() > crate::http::tokens::MAX_TOUCHES {
                return Err(Inadmissible::Meta("a token touch holds 1 to 1000 tokens"));
            }
            Ok(())
        }
        Command::Audit(events) => {
            use meridian_core::audit::{MAX_AUDIT_EVENTS, MAX_EVENT_FIELD_BYTES};
            if events.is_empty() || events.len() > MAX_AUDIT_EVENTS {
                return Err(Inadmissible::Meta("an audit command holds 1 to 256 events"));
            }
            let fits = |t: &str| t.len() <= MAX_EVENT_FIELD_BYTES && printable(t);
            let all_fit = events.iter().all(|e| {
                [&e.actor, &e.action, &e.resource, &e.outcome]
                    .into_iter()
                    .chain(&e.request_id)
                    .chain(&e.source)
                    .chain(&e.reason)
                    .all(|t| fits(t))
            });
            if all_fit {
                Ok(())
            } else {
                Err(Inadmissible::Meta(
                    "audit event fields are at most 1024 printable bytes",
                ))
            }
        }
        Command::Change(op) => check_change(op, max_value_bytes),
        Command::Webhook(op) => check_webhook(op),
        Command::CompactHistory { retention, .. } => {
            if retention.max_versions == 0 {
                return Err(Inadmissible::Txn(
                    "a history compaction must keep at least one version".into(),
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::history::WriteMeta;

    fn meta() -> WriteMeta {
        WriteMeta {
            time_ms: 1,
            actor: "ci".into(),
            reason: None,
            ..Default::default()
        }
    }

    fn put(app: &str, key: &str, value: &str) -> Proposal {
        Proposal {
            command: Command::Put {
                address: Address {
                    app: app.into(),
                    env: "prod".into(),
                    key: key.into(),
                },
                value: value.into(),
                expect_version: None,
            },
            meta: meta(),
        }
    }

    #[test]
    fn a_peer_cannot_propose_what_a_client_could_not() {
        assert_eq!(check(&put("app", "db.url", "\"x\""), 16), Ok(()));
        assert!(matches!(
            check(&put("App!", "db.url", "1"), 16),
            Err(Inadmissible::Address(_))
        ));
        assert!(matches!(
            check(&put("app", "../etc", "1"), 16),
            Err(Inadmissible::Address(_))
        ));
        assert!(matches!(
            check(&put("app", "k", "{not json"), 16),
            Err(Inadmissible::NotJson { .. })
        ));
        assert!(matches!(
            check(&put("app", "k", "\"0123456789abcdef\""), 16),
            Err(Inadmissible::TooLarge {
                bytes: 18,
                limit: 16,
                ..
            })
        ));
        let mut p = put("app", "k", "1");
        p.meta.actor = "x\u{7}".into();
        assert!(matches!(check(&p, 16), Err(Inadmissible::Meta(_))));

        let a = Address::parse("app", "prod", "k").unwrap();
        let bad = Address {
            key: "Bad Key".into(),
            ..a.clone()
        };
        let txn = |ops| Proposal {
            command: Command::Txn {
                conditions: Vec::new(),
                ops,
            },
            meta: meta(),
        };
        assert_eq!(
            check(&txn(vec![TxnOp::Put(a.clone(), "1".into())]), 16),
            Ok(())
        );
        assert!(matches!(
            check(&txn(vec![TxnOp::Delete(bad)]), 16),
            Err(Inadmissible::Address(_))
        ));
        let many = (0..=MAX_TXN_ITEMS)
            .map(|_| TxnOp::Delete(a.clone()))
            .collect();
        assert!(matches!(check(&txn(many), 16), Err(Inadmissible::Txn(_))));
        let empty = Proposal {
            command: Command::Txn {
                conditions: Vec::new(),
                ops: Vec::new(),
            },
            meta: meta(),
        };
        assert!(matches!(check(&empty, 16), Err(Inadmissible::Txn(_))));
    }
}
