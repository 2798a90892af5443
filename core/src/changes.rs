//! Change requests: a transaction proposed for protected keys, reviewed, approved by others
//! than its author, and applied as one revision conditioned on the versions that were
//! reviewed. What a change is, which protection rules it needs, whether its approvals satisfy
//! them, and every step of its life ([`ChangeOp`]) are decided here, inside the apply core, so
//! every origin node (and the simulator) holds the same records. The records are origin-only
//! extra records under [`CHANGE_PREFIX`]; edges never see them.

use meridian_protocol::auth::{ProtectionRecord, SYSTEM_APP};
use meridian_protocol::{Address, SignedDelta};
use meridian_store::{Backend, EXTRA_PREFIX, StoreError, Write};
use serde::{Deserialize, Serialize};

use crate::apply::{Applied, ApplyError, Condition, OriginCore, TxnOp};
use crate::history::WriteMeta;

/// Where change records live.
pub const CHANGE_PREFIX: [u8; 2] = [EXTRA_PREFIX, b'c'];
/// Most approvals one change keeps (one per approver).
pub const MAX_APPROVALS_KEPT: usize = 64;
/// Most notes (comments, rejections, refreshes, cancellation) one change keeps.
pub const MAX_NOTES: usize = 256;
/// Most rules one approval counts for.
pub const MAX_RULES_PER_APPROVAL: usize = 64;
/// Longest comment, in bytes.
pub const MAX_COMMENT_BYTES: usize = 2048;

/// The key of the counter that numbers changes.
pub fn counter_key() -> Vec<u8> {
    vec![CHANGE_PREFIX[0], CHANGE_PREFIX[1], b'n']
}

/// The key of change `id`'s record (ids sort in creation order).
pub fn record_key(id: u64) -> Vec<u8> {
    let mut k = vec![CHANGE_PREFIX[0], CHANGE_PREFIX[1], b'r'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The key that lists change `id` among the scheduled ones, by its time.
pub fn schedule_key(apply_at_ms: u64, id: u64) -> Vec<u8> {
    let mut k = vec![CHANGE_PREFIX[0], CHANGE_PREFIX[1], b's'];
    k.extend_from_slice(&apply_at_ms.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The prefix of every change record.
pub fn records_prefix() -> Vec<u8> {
    vec![CHANGE_PREFIX[0], CHANGE_PREFIX[1], b'r']
}

/// One approval: who, when, and which of the change's rules it counts for (those whose keys
/// the approver holds `approve` on, decided when it was given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver, as history names principals.
    pub actor: String,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// The rules it counts for.
    pub rules: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A note on a change: a comment, or a step of its life that carries none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Who.
    pub actor: String,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// `comment`, `reject`, `cancel` or `refresh`.
    pub kind: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Where a change stands (besides being approved, which depends on the rules in force).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ChangeState {
    /// Waiting for approvals or for its time.
    Open,
    /// Rejected by an approver; final.
    Rejected,
    /// Withdrawn; final.
    Cancelled,
    /// Committed as `revision`.
    Applied {
        /// The revision it made.
        revision: u64,
        /// Who applied it (`scheduler` for a scheduled change).
        by: String,
        /// When.
        at_ms: u64,
        /// Applied without its approvals.
        break_glass: bool,
    },
}

/// A change request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Its number, from 1.
    pub id: u64,
    /// Who proposed it.
    pub author: String,
    /// Why.
    pub reason: String,
    /// When it was proposed, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it is to be applied by itself (once approved), ms since the Unix epoch.
    pub apply_at_ms: Option<u64>,
    /// The transaction's conditions: the author's and the versions reviewed (each written
    /// address at the version it had when the change was proposed or last refreshed).
    pub conditions: Vec<Condition>,
    /// The transaction's operations (secret values sealed, as in the log).
    pub ops: Vec<TxnOp>,
    /// Where it stands.
    pub state: ChangeState,
    /// Approvals, one per approver.
    pub approvals: Vec<Approval>,
    /// Comments and steps, oldest first.
    pub notes: Vec<Note>,
}

/// A step in a change's life, committed through Raft. The actor and time come from the
/// proposal's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// Proposes a change; it gets the next number.
    Create {
        /// Why.
        reason: String,
        /// When to apply it by itself.
        apply_at_ms: Option<u64>,
        /// Conditions, the reviewed versions included.
        conditions: Vec<Condition>,
        /// Operations.
        ops: Vec<TxnOp>,
    },
    /// Approves change `id`, counting for `rules`.
    Approve {
        /// Which change.
        id: u64,
        /// The rules the approver may approve for.
        rules: Vec<String>,
        /// Free text.
        comment: Option<String>,
    },
    /// Rejects change `id`.
    Reject {
        /// Which change.
        id: u64,
        /// Why.
        comment: Option<String>,
    },
    /// Comments on change `id`.
    Comment {
        /// Which change.
        id: u64,
        /// What.
        text: String,
    },
    /// Withdraws change `id`.
    Cancel {
        /// Which change.
        id: u64,
    },
    /// Takes the current versions as the reviewed ones; the approvals given so far lapse.
    Refresh {
        /// Which change.
        id: u64,
        /// The new conditions.
        conditions: Vec<Condition>,
        /// The operations (secrets sealed again for the new versions).
        ops: Vec<TxnOp>,
    },
    /// Applies change `id` as one revision.
    Apply {
        /// Which change.
        id: u64,
        /// Without its approvals.
        break_glass: bool,
    },
}

impl ChangeOp {
    /// The change it is about (none for a create).
    pub fn id(&self) -> Option<u64> {
        match self {
            Self::Create { .. } => None,
            Self::Approve { id, .. }
            | Self::Reject { id, .. }
            | Self::Comment { id, .. }
            | Self::Cancel { id }
            | Self::Refresh { id, .. }
            | Self::Apply { id, .. } => Some(*id),
        }
    }

    /// The audit action it is recorded under.
    pub fn audit_action(&self) -> &'static str {
        match self {
            Self::Create { .. } => "change-create",
            Self::Approve { .. } => "change-approve",
            Self::Reject { .. } => "change-reject",
            Self::Comment { .. } => "change-comment",
            Self::Cancel { .. } => "change-cancel",
            Self::Refresh { .. } => "change-refresh",
            Self::Apply {
                break_glass: true, ..
            } => "change-apply-break-glass",
            Self::Apply { .. } => "change-apply",
        }
    }
}

/// Why a step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ChangeError {
    /// A plain write to a protected key.
    #[error(
        "{address} is protected by rule {rule:?} ({approvals} approval(s)); propose the write as a change request with POST /v1/changes"
    )]
    ApprovalRequired {
        /// The key.
        address: Address,
        /// The rule.
        rule: String,
        /// Approvals it needs.
        approvals: u32,
    },
    /// Applying a change whose approvals do not satisfy a rule.
    #[error("change {id} needs {need} approval(s) for rule {rule:?}; it has {have}")]
    NotApproved {
        /// The change.
        id: u64,
        /// The rule.
        rule: String,
        /// Approvals counted.
        have: usize,
        /// Approvals needed.
        need: u32,
    },
    /// What was reviewed has changed since.
    #[error(
        "change {id} is stale: {condition} no longer holds (the version is {actual}); refresh it and have it approved again"
    )]
    Stale {
        /// The change.
        id: u64,
        /// The condition that failed.
        condition: String,
        /// The version found.
        actual: u64,
    },
    /// No such change.
    #[error("no change {0}")]
    NotFound(u64),
    /// The change was applied, rejected or cancelled.
    #[error("change {id} is {state}")]
    Closed {
        /// The change.
        id: u64,
        /// `applied`, `rejected` or `cancelled`.
        state: String,
    },
    /// Applied before its time.
    #[error("change {id} is scheduled for {apply_at_ms} ms since the epoch")]
    NotYet {
        /// The change.
        id: u64,
        /// When.
        apply_at_ms: u64,
    },
    /// The author approving their own change, or a bound crossed.
    #[error("{0}")]
    Refused(String),
}

impl ChangeError {
    /// The error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ApprovalRequired { .. } | Self::NotApproved { .. } => "approval_required",
            Self::Stale { .. } => "stale_change",
            Self::NotFound(_) => "not_found",
            Self::Closed { .. } => "change_closed",
            Self::NotYet { .. } => "change_scheduled",
            Self::Refused(_) => "change_refused",
        }
    }

    /// The HTTP status it maps to.
    pub fn status(&self) -> u16 {
        match self {
            Self::ApprovalRequired { .. } | Self::NotApproved { .. } | Self::Refused(_) => 403,
            Self::NotFound(_) => 404,
            Self::Stale { .. } | Self::Closed { .. } | Self::NotYet { .. } => 409,
        }
    }
}

impl ChangeState {
    /// Its name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Applied { .. } => "applied",
        }
    }
}

/// The rules (by name, with the approvals each needs) that protect some key `ops` write.
pub fn required<'a>(rules: &'a [(String, ProtectionRecord)], ops: &[TxnOp]) -> Vec<(&'a str, u32)> {
    rules
        .iter()
        .filter(|(_, r)| ops.iter().any(|op| r.covers(op.address())))
        .map(|(name, r)| (name.as_str(), r.approvals))
        .collect()
}

/// The first rule in force protecting a key of `addresses`, if any (Meridian's own records
/// are never protected: a rule over `*/*/*` must not lock out token administration).
pub fn protecting<'a>(
    rules: &[(String, ProtectionRecord)],
    addresses: impl IntoIterator<Item = &'a Address>,
) -> Option<ChangeError> {
    for address in addresses.into_iter().filter(|a| a.app != SYSTEM_APP) {
        if let Some((name, r)) = rules.iter().find(|(_, r)| r.covers(address)) {
            return Some(ChangeError::ApprovalRequired {
                address: address.clone(),
                rule: name.clone(),
                approvals: r.approvals,
            });
        }
    }
    None
}

impl ChangeRecord {
    /// The first rule in force whose approvals this change lacks, counted without its author.
    pub fn missing_approval(&self, rules: &[(String, ProtectionRecord)]) -> Option<ChangeError> {
        for (rule, need) in required(rules, &self.ops) {
            let have = self
                .approvals
                .iter()
                .filter(|a| a.actor != self.author && a.rules.iter().any(|r| r == rule))
                .count();
            if have < need as usize {
                return Some(ChangeError::NotApproved {
                    id: self.id,
                    rule: rule.to_owned(),
                    have,
                    need,
                });
            }
        }
        None
    }

    /// `pending`, `approved`, `rejected`, `applied` or `cancelled`, under the rules in force.
    pub fn status(&self, rules: &[(String, ProtectionRecord)]) -> &'static str {
        match self.state {
            ChangeState::Open if self.missing_approval(rules).is_none() => "approved",
            ChangeState::Open => "pending",
            ref closed => closed.name(),
        }
    }

    fn open(&self) -> Result<(), ChangeError> {
        match self.state {
            ChangeState::Open => Ok(()),
            ref closed => Err(ChangeError::Closed {
                id: self.id,
                state: closed.name().to_owned(),
            }),
        }
    }

    fn note(&mut self, actor: &str, time_ms: u64, kind: &str, text: Option<String>) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.remove(0);
        }
        self.notes.push(Note {
            actor: actor.to_owned(),
            time_ms,
            kind: kind.to_owned(),
            text,
        });
    }

    /// Steps that change only the record (everything but create and apply), for `actor` at
    /// `time_ms`.
    pub fn step(&mut self, op: ChangeOp, actor: &str, time_ms: u64) -> Result<(), ChangeError> {
        self.open()?;
        match op {
            ChangeOp::Approve { rules, comment, .. } => {
                if actor == self.author {
                    return Err(ChangeError::Refused(format!(
                        "change {} cannot be approved by its author",
                        self.id
                    )));
                }
                self.approvals.retain(|a| a.actor != actor);
                if self.approvals.len() >= MAX_APPROVALS_KEPT {
                    return Err(ChangeError::Refused(format!(
                        "change {} has {MAX_APPROVALS_KEPT} approvals already",
                        self.id
                    )));
                }
                self.approvals.push(Approval {
                    actor: actor.to_owned(),
                    time_ms,
                    rules,
                    comment,
                });
            }
            ChangeOp::Reject { comment, .. } => {
                self.state = ChangeState::Rejected;
                self.note(actor, time_ms, "reject", comment);
            }
            ChangeOp::Comment { text, .. } => self.note(actor, time_ms, "comment", Some(text)),
            ChangeOp::Cancel { .. } => {
                self.state = ChangeState::Cancelled;
                self.note(actor, time_ms, "cancel", None);
            }
            ChangeOp::Refresh {
                conditions, ops, ..
            } => {
                self.conditions = conditions;
                self.ops = ops;
                self.approvals.clear();
                self.note(actor, time_ms, "refresh", None);
            }
            ChangeOp::Create { .. } | ChangeOp::Apply { .. } => {
                return Err(ChangeError::Refused("not a step of the record".into()));
            }
        }
        Ok(())
    }

    /// Whether change may be applied now by `break_glass` or its approvals, at `now_ms`.
    pub fn check_apply(
        &self,
        rules: &[(String, ProtectionRecord)],
        break_glass: bool,
        now_ms: u64,
    ) -> Result<(), ChangeError> {
        self.open()?;
        if break_glass {
            return Ok(());
        }
        if let Some(at) = self.apply_at_ms.filter(|at| now_ms < *at) {
            return Err(ChangeError::NotYet {
                id: self.id,
                apply_at_ms: at,
            });
        }
        match self.missing_approval(rules) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Reads change `id` as the open batch leaves it.
pub fn load<B: Backend>(
    state: &meridian_store::SignedState<B>,
    id: u64,
) -> Result<Option<ChangeRecord>, StoreError> {
    match state.get_staged(&record_key(id))? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Invalid("a change record does not decode")),
        None => Ok(None),
    }
}

/// Up to `limit` stored changes numbered above `after`, oldest first (what is published, not
/// an open batch: for readers).
pub fn list<B: Backend>(
    backend: &B,
    after: u64,
    limit: usize,
) -> Result<Vec<ChangeRecord>, StoreError> {
    let from = record_key(after.saturating_add(1));
    let to = [CHANGE_PREFIX[0], CHANGE_PREFIX[1], b'r' + 1];
    backend
        .range(&from, &to, limit)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v)
                .map_err(|_| StoreError::Invalid("a change record does not decode"))
        })
        .collect()
}

/// A closed change leaves the schedule.
fn unschedule(record: &ChangeRecord) -> Option<Write> {
    match (&record.state, record.apply_at_ms) {
        (ChangeState::Open, _) | (_, None) => None,
        (_, Some(at)) => Some((schedule_key(at, record.id), None)),
    }
}

impl<B: Backend> OriginCore<B> {
    /// Up to `limit` scheduled changes due at `now_ms` that would apply now: approved under
    /// the rules in force and with every reviewed version unchanged. A change that is not
    /// (waiting for approvals, or stale) is left for its author; the leader proposes only
    /// what would be applied, so a waiting change fills neither the log nor the audit.
    pub fn due_changes(&mut self, now_ms: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let from = [CHANGE_PREFIX[0], CHANGE_PREFIX[1], b's'];
        let to = schedule_key(now_ms.saturating_add(1), 0);
        let scheduled = self.state().backend().range(&from, &to, limit)?;
        let mut due = Vec::new();
        for (key, _) in scheduled {
            let Some(id) = key
                .get(key.len().saturating_sub(8)..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let Some(record) = load(self.state(), id)? else {
                continue;
            };
            if record
                .check_apply(self.protections(), false, now_ms)
                .is_ok()
                && self
                    .txn_writes(record.conditions.clone(), record.ops.clone())
                    .is_ok()
            {
                due.push(id);
            }
        }
        Ok(due)
    }
}

fn encode(record: &ChangeRecord) -> Write {
    let bytes = serde_json::to_vec(record).expect("a change record encodes");
    (record_key(record.id), Some(bytes))
}

impl<B: Backend> OriginCore<B> {
    /// Applies one step of a change request (see [`ChangeOp`]); the actor and time are the
    /// proposal's.
    pub(crate) fn apply_change(
        &mut self,
        op: ChangeOp,
        meta: Option<&WriteMeta>,
        mut extra: Vec<Write>,
    ) -> Result<(Applied, Option<SignedDelta>), ApplyError> {
        let actor = meta.map_or("system", |m| m.actor.as_str()).to_owned();
        let now_ms = meta.map_or(0, |m| m.time_ms);
        let unchanged = |core: &Self, id| Applied {
            revision: core.state().revision(),
            entries: Vec::new(),
            change: Some(id),
        };
        match op {
            ChangeOp::Create {
                reason,
                apply_at_ms,
                conditions,
                ops,
            } => {
                let id = self
                    .state()
                    .get_staged(&counter_key())?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_be_bytes)
                    + 1;
                let record = ChangeRecord {
                    id,
                    author: actor,
                    reason,
                    created_ms: now_ms,
                    apply_at_ms,
                    conditions,
                    ops,
                    state: ChangeState::Open,
                    approvals: Vec::new(),
                    notes: Vec::new(),
                };
                extra.push((counter_key(), Some(id.to_be_bytes().to_vec())));
                if let Some(at) = apply_at_ms {
                    extra.push((schedule_key(at, id), Some(Vec::new())));
                }
                extra.push(encode(&record));
                extra.extend(self.change_events("change.requested", &record, meta)?);
                self.state_mut().write_extra(extra)?;
                Ok((unchanged(self, id), None))
            }
            ChangeOp::Apply { id, break_glass } => {
                let mut record = load(self.state(), id)?.ok_or(ChangeError::NotFound(id))?;
                record.check_apply(self.protections(), break_glass, now_ms)?;
                let writes = self
                    .txn_writes(record.conditions.clone(), record.ops.clone())
                    .map_err(|e| match e {
                        ApplyError::ConditionFailed {
                            condition, actual, ..
                        } => ChangeError::Stale {
                            id,
                            condition: condition.to_string(),
                            actual,
                        }
                        .into(),
                        other => other,
                    })?;
                let current = self.state().revision();
                let revision = if writes.is_empty() {
                    current
                } else {
                    current.next()
                };
                record.state = ChangeState::Applied {
                    revision: revision.0,
                    by: actor,
                    at_ms: now_ms,
                    break_glass,
                };
                extra.extend(unschedule(&record));
                extra.push(encode(&record));
                extra.extend(self.change_events("change.applied", &record, meta)?);
                // The revision says why: the change's reason, named by its id (in the keys'
                // history, the audit log and every watch event of the revision).
                let meta = meta.map(|m| WriteMeta {
                    reason: Some(applied_reason(id, &record.reason)),
                    ..m.clone()
                });
                let (mut applied, delta) = self.commit_writes(writes, meta.as_ref(), extra)?;
                applied.change = Some(id);
                Ok((applied, delta))
            }
            step => {
                let id = step.id().unwrap_or_default();
                let mut record = load(self.state(), id)?.ok_or(ChangeError::NotFound(id))?;
                let approving = matches!(step, ChangeOp::Approve { .. });
                let was_approved = record.missing_approval(self.protections()).is_none();
                record.step(step, &actor, now_ms)?;
                extra.extend(unschedule(&record));
                extra.push(encode(&record));
                if approving
                    && !was_approved
                    && record.missing_approval(self.protections()).is_none()
                {
                    extra.extend(self.change_events("change.approved", &record, meta)?);
                }
                self.state_mut().write_extra(extra)?;
                Ok((unchanged(self, id), None))
            }
        }
    }
}

/// The reason a change's revision records: `change <id>: <its reason>`, within the bound of a
/// write's reason (cut at a character boundary).
fn applied_reason(id: u64, reason: &str) -> String {
    let mut text = format!("change {id}: {reason}");
    if text.len() > crate::history::MAX_REASON_BYTES {
        let mut end = crate::history::MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<(String, ProtectionRecord)> {
        let r = |text: &str| serde_json::from_str::<ProtectionRecord>(text).unwrap();
        vec![
            (
                "prod".into(),
                r(r#"{"resources":["payments/prod/*"],"approvals":2}"#),
            ),
            (
                "db".into(),
                r(r#"{"resources":["payments/prod/db.*"],"approvals":1}"#),
            ),
        ]
    }

    fn change(key: &str) -> ChangeRecord {
        ChangeRecord {
            id: 1,
            author: "alice#1".into(),
            reason: "why".into(),
            created_ms: 0,
            apply_at_ms: None,
            conditions: Vec::new(),
            ops: vec![TxnOp::Put(
                Address::parse("payments", "prod", key).unwrap(),
                "1".into(),
            )],
            state: ChangeState::Open,
            approvals: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn approve(c: &mut ChangeRecord, who: &str, rules: &[&str]) -> Result<(), ChangeError> {
        let op = ChangeOp::Approve {
            id: c.id,
            rules: rules.iter().map(|r| r.to_string()).collect(),
            comment: None,
        };
        c.step(op, who, 1)
    }

    #[test]
    fn four_eyes_each_rule_counts_its_own_approvers_never_the_author() {
        let rules = rules();
        let mut c = change("db.url");
        assert_eq!(c.status(&rules), "pending");
        assert!(
            approve(&mut c, "alice#1", &["prod", "db"]).is_err(),
            "author"
        );
        approve(&mut c, "bob#2", &["prod"]).unwrap();
        approve(&mut c, "bob#2", &["prod"]).unwrap();
        // One approver counts once, however often they approve.
        assert_eq!(
            c.check_apply(&rules, false, 0),
            Err(ChangeError::NotApproved {
                id: 1,
                rule: "prod".into(),
                have: 1,
                need: 2
            })
        );
        approve(&mut c, "carol#3", &["prod"]).unwrap();
        // `prod` is satisfied; `db` needs the database team.
        assert!(matches!(
            c.check_apply(&rules, false, 0),
            Err(ChangeError::NotApproved { rule, .. }) if rule == "db"
        ));
        approve(&mut c, "dave#4", &["db"]).unwrap();
        assert_eq!(c.check_apply(&rules, false, 0), Ok(()));
        assert_eq!(c.status(&rules), "approved");
        // A key outside `db.*` needs only `prod`.
        let mut other = change("timeout");
        approve(&mut other, "bob#2", &["prod"]).unwrap();
        approve(&mut other, "carol#3", &["prod"]).unwrap();
        assert_eq!(other.check_apply(&rules, false, 0), Ok(()));
    }

    #[test]
    fn closed_changes_take_no_step_and_refresh_drops_approvals() {
        let rules = rules();
        let mut c = change("timeout");
        approve(&mut c, "bob#2", &["prod"]).unwrap();
        let refresh = ChangeOp::Refresh {
            id: 1,
            conditions: Vec::new(),
            ops: c.ops.clone(),
        };
        c.step(refresh, "alice#1", 2).unwrap();
        assert!(c.approvals.is_empty());
        c.step(ChangeOp::Cancel { id: 1 }, "alice#1", 3).unwrap();
        assert_eq!(c.status(&rules), "cancelled");
        assert_eq!(
            approve(&mut c, "bob#2", &["prod"]),
            Err(ChangeError::Closed {
                id: 1,
                state: "cancelled".into()
            })
        );
        assert!(
            c.check_apply(&rules, true, 0).is_err(),
            "not even break-glass"
        );
    }

    #[test]
    fn a_scheduled_change_waits_for_its_time_unless_break_glass() {
        let mut c = change("timeout");
        c.apply_at_ms = Some(1_000);
        assert!(matches!(
            c.check_apply(&[], false, 999),
            Err(ChangeError::NotYet { .. })
        ));
        assert_eq!(c.check_apply(&[], false, 1_000), Ok(()));
        assert_eq!(c.check_apply(&rules(), true, 0), Ok(()));
    }

    #[test]
    fn plain_writes_to_protected_keys_are_refused_with_the_rule() {
        let rules = rules();
        let a = Address::parse("payments", "prod", "db.url").unwrap();
        let b = Address::parse("payments", "staging", "db.url").unwrap();
        assert!(protecting(&rules, [&b]).is_none());
        let e = protecting(&rules, [&b, &a]).unwrap();
        assert_eq!(e.code(), "approval_required");
        assert!(e.to_string().contains("POST /v1/changes"), "{e}");
    }

    mod through_the_core {
        use meridian_protocol::Signer;
        use meridian_store::{MemBackend, SignedState};

        use super::*;
        use crate::apply::Command;

        fn core() -> OriginCore<MemBackend> {
            let state = SignedState::open(MemBackend::new(), 100).unwrap();
            OriginCore::new(state, Signer::from_bytes(&[3; 32]))
        }

        fn meta(actor: &str, time_ms: u64) -> WriteMeta {
            WriteMeta {
                time_ms,
                actor: actor.into(),
                reason: None,
                request_id: None,
                source: None,
                action: None,
            }
        }

        fn run(
            c: &mut OriginCore<MemBackend>,
            actor: &str,
            command: Command,
        ) -> Result<Applied, ApplyError> {
            let out = c.apply_unpublished(command, Some(&meta(actor, 5)), Vec::new());
            c.state_mut().publish().unwrap();
            out.map(|(a, _)| a)
        }

        fn at(key: &str) -> Address {
            Address::parse("payments", "prod", key).unwrap()
        }

        fn put(key: &str, value: &str) -> Command {
            Command::Put {
                address: at(key),
                value: value.into(),
                expect_version: None,
            }
        }

        fn protect(c: &mut OriginCore<MemBackend>) {
            let rule = Command::Put {
                address: Address::system(meridian_protocol::auth::PROTECTIONS_ENV, "prod").unwrap(),
                value: r#"{"resources":["payments/prod/*"],"approvals":1}"#.into(),
                expect_version: None,
            };
            run(c, "admin#9", rule).unwrap();
        }

        fn create(c: &mut OriginCore<MemBackend>, key: &str, version: u64) -> u64 {
            let create = ChangeOp::Create {
                reason: "raise it".into(),
                apply_at_ms: None,
                conditions: vec![Condition::VersionEquals(at(key), version)],
                ops: vec![TxnOp::Put(at(key), "2".into())],
            };
            run(c, "alice#1", Command::Change(create))
                .unwrap()
                .change
                .unwrap()
        }

        #[test]
        fn a_protected_key_changes_only_through_an_approved_change() {
            let mut c = core();
            run(&mut c, "alice#1", put("timeout", "1")).unwrap();
            protect(&mut c);
            let refused = run(&mut c, "alice#1", put("timeout", "9")).unwrap_err();
            assert!(
                matches!(&refused, ApplyError::Change(e) if e.code() == "approval_required"),
                "{refused}"
            );
            let id = create(&mut c, "timeout", 1);
            assert_eq!(id, 1);
            let apply = || {
                Command::Change(ChangeOp::Apply {
                    id,
                    break_glass: false,
                })
            };
            let early = run(&mut c, "alice#1", apply()).unwrap_err();
            assert!(matches!(
                early,
                ApplyError::Change(ChangeError::NotApproved { .. })
            ));
            let approve = ChangeOp::Approve {
                id,
                rules: vec!["prod".into()],
                comment: Some("ok".into()),
            };
            run(&mut c, "bob#2", Command::Change(approve)).unwrap();
            let before = c.state().revision();
            let applied = run(&mut c, "alice#1", apply()).unwrap();
            assert_eq!(applied.revision, before.next(), "one revision");
            // The revision carries the change's reason, named by its id, for every watcher.
            let provenance = c
                .state()
                .entry(&meridian_protocol::provenance::address())
                .and_then(|e| e.value.clone())
                .and_then(|v| meridian_protocol::provenance::parse(&v))
                .expect("the revision's provenance");
            assert_eq!(provenance.reason.as_deref(), Some("change 1: raise it"));
            assert_eq!(provenance.actor, "alice#1");
            assert_eq!(
                c.state().entry(&at("timeout")).unwrap().value.as_deref(),
                Some("2")
            );
            let record = load(c.state(), id).unwrap().unwrap();
            assert!(matches!(
                record.state,
                ChangeState::Applied { revision, break_glass: false, .. } if revision == applied.revision.0
            ));
            // Applied once only.
            let again = run(&mut c, "alice#1", apply()).unwrap_err();
            assert!(matches!(
                again,
                ApplyError::Change(ChangeError::Closed { .. })
            ));
        }

        #[test]
        fn a_change_to_what_was_reviewed_makes_it_stale_and_nothing_is_written() {
            let mut c = core();
            run(&mut c, "alice#1", put("timeout", "1")).unwrap();
            run(&mut c, "alice#1", put("other", "1")).unwrap();
            let first = create(&mut c, "timeout", 1);
            // Not protected yet: a plain write moves the key on.
            run(&mut c, "carol#3", put("timeout", "5")).unwrap();
            protect(&mut c);
            let approve = ChangeOp::Approve {
                id: first,
                rules: vec!["prod".into()],
                comment: None,
            };
            run(&mut c, "bob#2", Command::Change(approve)).unwrap();
            let before = c.state().revision();
            let stale = run(
                &mut c,
                "alice#1",
                Command::Change(ChangeOp::Apply {
                    id: first,
                    break_glass: false,
                }),
            )
            .unwrap_err();
            assert!(
                matches!(&stale, ApplyError::Change(e) if e.code() == "stale_change"),
                "{stale}"
            );
            assert_eq!(c.state().revision(), before, "nothing half-committed");
            // Break-glass skips approvals but not the reviewed versions.
            let second = create(&mut c, "other", 1);
            let applied = run(
                &mut c,
                "ops#4",
                Command::Change(ChangeOp::Apply {
                    id: second,
                    break_glass: true,
                }),
            )
            .unwrap();
            assert_eq!(applied.change, Some(second));
            let record = load(c.state(), second).unwrap().unwrap();
            assert!(matches!(
                record.state,
                ChangeState::Applied {
                    break_glass: true,
                    ..
                }
            ));
        }

        #[test]
        fn records_written_in_one_batch_are_read_back_within_it() {
            let mut c = core();
            c.state_mut().begin_batch();
            let id = {
                let create = ChangeOp::Create {
                    reason: "r".into(),
                    apply_at_ms: None,
                    conditions: Vec::new(),
                    ops: vec![TxnOp::Put(at("k"), "1".into())],
                };
                c.apply_unpublished(
                    Command::Change(create),
                    Some(&meta("alice#1", 1)),
                    Vec::new(),
                )
                .unwrap()
                .0
                .change
                .unwrap()
            };
            let comment = ChangeOp::Comment {
                id,
                text: "looks fine".into(),
            };
            c.apply_unpublished(
                Command::Change(comment),
                Some(&meta("bob#2", 2)),
                Vec::new(),
            )
            .unwrap();
            c.state_mut().commit_batch(Vec::new()).unwrap();
            let record = load(c.state(), id).unwrap().unwrap();
            assert_eq!(record.notes.len(), 1);
        }
    }
}
