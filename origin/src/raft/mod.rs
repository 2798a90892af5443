//! The origin's Raft layer on openraft: the type configuration, what a log entry carries and
//! what applying it answers, the log and vote in sled ([`log_store`]), the state machine over
//! the signed state ([`state_machine`]) and the RPC between nodes ([`network`]).
//!
//! Every node applies the same committed entries to the same deterministic core
//! ([`meridian_core::apply::OriginCore`]) with the cluster's signing key, so every node holds the same
//! revisions, deltas, digests and signatures, and any node can serve edges. The followers take
//! the signatures the leader made rather than sign each revision again ([`relay`]).

use std::io::Cursor;

use meridian_protocol::Address;
use serde::{Deserialize, Serialize};

use meridian_core::apply::{Applied, ApplyError, Proposal};

// openraft's traits return its `StorageError` and `RPCError` (over 200 bytes); the helpers here
// return the same types rather than box them only to unbox them again at the trait boundary.
pub mod admin;
pub mod cluster;
#[allow(clippy::result_large_err)]
pub mod log_store;
#[allow(clippy::result_large_err)]
pub mod network;
pub mod relay;
#[allow(clippy::result_large_err)]
pub mod state_machine;

openraft::declare_raft_types!(
    /// Meridian's openraft types: log entries carry a [`Request`], applying one answers a
    /// [`Response`]; nodes are numbered and addressed by their Raft listener's address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A node's number in the cluster.
pub type NodeId = u64;

/// What a log entry asks the state machine to do: writes applied in order, each making its own
/// revision. Concurrent writes are batched into one entry (see [`cluster`]), so one Raft round
/// trip and one log flush carry many of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The writes, in the order they are applied.
    pub commands: Vec<Proposal>,
}

/// What applying an entry produced: one outcome per command, in order (none for a blank or
/// membership entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The outcomes.
    pub outcomes: Vec<Outcome>,
}

/// What applying one command produced. A refused write is still committed (every node refuses
/// it identically); it just makes no revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The write made a new revision.
    Applied(Applied),
    /// `expect_version` did not match.
    VersionConflict {
        /// The address.
        address: Address,
        /// What the writer expected.
        expected: u64,
        /// What is there (0 when absent).
        actual: u64,
    },
    /// Delete of an absent address.
    NotFound(Address),
    /// A transaction condition did not hold; nothing was written.
    ConditionFailed {
        /// Its position among the transaction's conditions.
        index: usize,
        /// The condition.
        condition: meridian_core::apply::Condition,
        /// The address's version (0 when absent).
        actual: u64,
    },
    /// The command was not valid (refused identically on every node).
    Invalid(String),
    /// A value violates a registered schema.
    SchemaViolation {
        /// Where it was written.
        address: Address,
        /// The schema's prefix.
        prefix: String,
        /// Where in the value (JSON Pointer).
        path: String,
        /// The schema rule that failed (JSON Pointer into the schema).
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// Current values violate a schema registered without `force`.
    CurrentValuesViolate {
        /// The schema's prefix.
        prefix: String,
        /// Each violating key and why.
        keys: Vec<(String, String)>,
    },
    /// A patched value came out larger than the limit.
    ValueTooLarge {
        /// The address.
        address: Address,
        /// Its size after the patch.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A plain write or a patch of a key that holds a secret.
    SecretKey(Address),
    /// A write to a protected key outside a change request, or a change request's step
    /// refused.
    Change(meridian_core::changes::ChangeError),
}

impl Outcome {
    /// The outcome of a command that was not fatal to the node (see
    /// `meridian_core::entry::is_fatal`): applied, or refused for a reason the client hears.
    pub fn from_result(result: Result<Applied, ApplyError>) -> Self {
        match result {
            Ok(applied) => Self::Applied(applied),
            Err(ApplyError::VersionConflict {
                address,
                expected,
                actual,
            }) => Self::VersionConflict {
                address,
                expected,
                actual,
            },
            Err(ApplyError::NotFound(address)) => Self::NotFound(address),
            Err(ApplyError::ConditionFailed {
                index,
                condition,
                actual,
            }) => Self::ConditionFailed {
                index,
                condition,
                actual,
            },
            Err(ApplyError::Invalid(why)) => Self::Invalid(why),
            Err(ApplyError::SecretKey(a)) => Self::SecretKey(a),
            Err(ApplyError::ValueTooLarge {
                address,
                bytes,
                limit,
            }) => Self::ValueTooLarge {
                address,
                bytes,
                limit,
            },
            Err(ApplyError::SchemaViolation { address, violation }) => Self::SchemaViolation {
                address,
                path: violation.path.clone(),
                rule: violation.rule.clone(),
                message: violation.message.clone(),
                prefix: violation.prefix.clone(),
            },
            Err(ApplyError::CurrentValuesViolate { prefix, keys }) => {
                Self::CurrentValuesViolate { prefix, keys }
            }
            Err(ApplyError::Change(e)) => Self::Change(e),
            // Fatal errors never reach an outcome: the entry stops the node instead.
            Err(e @ (ApplyError::Store(_) | ApplyError::History(_) | ApplyError::Schemas(_))) => {
                Self::Invalid(e.to_string())
            }
        }
    }

    /// The outcome as the audit log and the API's error codes name it (`ok` when applied).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Applied(_) => "ok",
            Self::VersionConflict { .. } => "version_conflict",
            Self::NotFound(_) => "not_found",
            Self::ConditionFailed { .. } => "condition_failed",
            Self::Invalid(_) => "invalid_command",
            Self::SchemaViolation { .. } => "schema_violation",
            Self::CurrentValuesViolate { .. } => "current_values_violate",
            Self::ValueTooLarge { .. } => "value_too_large",
            Self::SecretKey(_) => "secret_key",
            Self::Change(e) => e.code(),
        }
    }
}

/// Raft errors as the node uses them.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log position.
pub type LogId = openraft::LogId<NodeId>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A membership as stored with the state.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// What describes a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
