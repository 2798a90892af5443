//! The origin's deterministic state machine: `apply(command) -> (revision, signed delta)`.
//!
//! Given the same state and command, every node produces the same revision, delta, digest and
//! (Ed25519 being deterministic) signature, so the Raft cluster can drive this unchanged. A
//! node may be offered the signed heads another node produced for the same entry and then
//! takes those signatures instead of signing (see [`OriginCore::begin_entry`]).

use std::collections::BTreeMap;

use meridian_protocol::{
    Address, Change, Delta, EntryState, JsonText, Revision, SignedDelta, SignedHead, Signer,
    Version,
};
use meridian_store::{Backend, SignedState, StoreError, Write};

use meridian_protocol::provenance::{self, Provenance};
use meridian_protocol::secrets::{StoredSecret, is_sealed_text};

use meridian_protocol::auth::{PROTECTIONS_ENV, ProtectionRecord, SYSTEM_APP, protections};

use crate::history::{self, HistoryError, Retention, WriteMeta};
use crate::schema::{self, Registry, SchemaError};

/// A write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Set a value.
    Put {
        /// Where.
        address: Address,
        /// Validated JSON text.
        value: JsonText,
        /// Refuse unless the current version is this (0 means "must not exist").
        expect_version: Option<u64>,
    },
    /// Delete a value (leaves a tombstone).
    Delete {
        /// Where.
        address: Address,
        /// Refuse unless the current version is this.
        expect_version: Option<u64>,
    },
    /// Apply a JSON Merge Patch (RFC 7386) to the current value (`null` when absent).
    Patch {
        /// Where.
        address: Address,
        /// The merge patch, validated JSON text.
        patch: JsonText,
        /// Refuse unless the current version is this (0 means "must not exist").
        expect_version: Option<u64>,
        /// Refuse if the patched value is larger than this many bytes of JSON text (the limit
        /// of the node that accepted the write, so every node decides alike).
        max_value_bytes: u64,
    },
    /// All or nothing: if every condition holds, every operation, as one revision.
    Txn {
        /// Checked in order against the state before the transaction.
        conditions: Vec<Condition>,
        /// Applied together; each address at most once.
        ops: Vec<TxnOp>,
    },
    /// Registers (or replaces) a JSON Schema for keys of `app/env` starting with `prefix`
    /// (no revision). Refused if current values violate it, unless `force`.
    PutSchema {
        /// The namespace.
        app: String,
        /// The namespace.
        env: String,
        /// Keys starting with this are checked (`""`: every key).
        prefix: String,
        /// The schema, JSON text.
        schema: JsonText,
        /// Register even if current values violate it.
        force: bool,
    },
    /// Removes the schema of exactly this prefix (no revision; nothing if there is none).
    DeleteSchema {
        /// The namespace.
        app: String,
        /// The namespace.
        env: String,
        /// The prefix it was registered for.
        prefix: String,
    },
    /// Records refused requests in the audit log (no revision).
    Audit(Vec<crate::audit::AuditEvent>),
    /// Records when tokens were last used, `(id, ms since the Unix epoch)` (no revision; a
    /// later time replaces an earlier one).
    TouchTokens(Vec<(u64, u64)>),
    /// Drops audit records older than `before_ms`, oldest first, at most 10,000 (no revision).
    CompactAudit {
        /// The cut-off, ms since the Unix epoch (the proposing node's clock, committed).
        before_ms: u64,
    },
    /// Brings the history within `retention` as of `now_ms` (no revision).
    CompactHistory {
        /// How much to keep.
        retention: Retention,
        /// The time ages are measured from (the proposing node's clock, committed).
        now_ms: u64,
    },
    /// Raises flag exposure counts to the values given, per edge boot (no revision; a
    /// smaller count than the stored one changes nothing).
    Exposures(Vec<crate::exposures::ExposureEntry>),
    /// Records reveals of secrets at an edge in the audit log (no revision; recorded by the
    /// state machine, which knows the log position).
    Reveals {
        /// The edge, as its certificate names it.
        edge: String,
        /// Its records, oldest first.
        records: Vec<meridian_protocol::secrets::RevealRecord>,
    },
    /// A step in a change request's life (see [`crate::changes`]); applying one makes the
    /// change's transaction one revision.
    Change(crate::changes::ChangeOp),
    /// A webhook subscription's change, or a delivery's outcome (see [`crate::webhooks`]).
    Webhook(crate::webhooks::WebhookOp),
}

/// A write as committed: the command and who made it, when and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    /// What to do.
    pub command: Command,
    /// Recorded in the history of every key it changes.
    pub meta: WriteMeta,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    /// The address is at this version (0: absent).
    VersionEquals(Address, u64),
    /// The address holds a value.
    Exists(Address),
    /// The address holds no value (never written, or deleted).
    Absent(Address),
}

impl Condition {
    /// The address the condition is about.
    pub fn address(&self) -> &Address {
        match self {
            Self::VersionEquals(a, _) | Self::Exists(a) | Self::Absent(a) => a,
        }
    }

    fn holds(&self, version: u64) -> bool {
        match self {
            Self::VersionEquals(_, v) => *v == version,
            Self::Exists(_) => version > 0,
            Self::Absent(_) => version == 0,
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::VersionEquals(a, v) => write!(f, "{a} at version {v}"),
            Self::Exists(a) => write!(f, "{a} exists"),
            Self::Absent(a) => write!(f, "{a} absent"),
        }
    }
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TxnOp {
    /// Set a value.
    Put(Address, JsonText),
    /// Delete a value; nothing happens if it is absent.
    Delete(Address),
}

impl TxnOp {
    /// The address the operation writes.
    pub fn address(&self) -> &Address {
        match self {
            Self::Put(a, _) | Self::Delete(a) => a,
        }
    }
}

/// What a committed command produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// The new revision (for a transaction that changed nothing, the current one).
    pub revision: Revision,
    /// Each changed address's new state, sorted by address.
    pub entries: Vec<(Address, EntryState)>,
    /// The change request (or webhook subscription) the command created or acted on. Every
    /// field is always encoded: answers travel between nodes in postcard, which cannot skip.
    pub change: Option<u64>,
}

impl Applied {
    /// The first (for a single-key command, the only) changed entry.
    pub fn entry(&self) -> Option<&EntryState> {
        self.entries.first().map(|(_, e)| e)
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `expect_version` did not match.
    #[error("{address}: expected version {expected}, found {actual}")]
    VersionConflict {
        /// The address.
        address: Address,
        /// What the writer expected.
        expected: u64,
        /// What is there (0 when absent).
        actual: u64,
    },
    /// Delete of an absent address.
    #[error("{0} not found")]
    NotFound(Address),
    /// A transaction condition did not hold.
    #[error("condition {index} ({condition}) failed: the version is {actual}")]
    ConditionFailed {
        /// Its position in the transaction's conditions.
        index: usize,
        /// The condition.
        condition: Condition,
        /// The address's version (0 when absent).
        actual: u64,
    },
    /// The command itself is not valid (a transaction writing an address twice, a patch
    /// that is not JSON): refused identically on every node.
    #[error("{0}")]
    Invalid(String),
    /// A patched value came out larger than the limit.
    #[error("{address}: the patched value is {bytes} bytes; the limit is {limit}")]
    ValueTooLarge {
        /// The address.
        address: Address,
        /// Its size after the patch.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Persisting failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading history failed.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Reading the schemas failed.
    #[error(transparent)]
    Schemas(#[from] SchemaError),
    /// A value violates a registered schema.
    #[error("{address}: {violation}")]
    SchemaViolation {
        /// Where the value was written.
        address: Address,
        /// What the schema refused.
        violation: Box<schema::Violation>,
    },
    /// A plain write (or a patch) of a key that holds a secret: secrets are written whole,
    /// sealed, through the secrets API.
    #[error("{0} holds a secret: write it with PUT /v1/secrets/{{app}}/{{env}}/{{key}}")]
    SecretKey(Address),
    /// Current values violate a schema being registered without `force`.
    #[error("current values violate the schema for prefix {prefix:?}")]
    CurrentValuesViolate {
        /// The prefix of the schema.
        prefix: String,
        /// Each violating key and why.
        keys: Vec<(String, String)>,
    },
    /// A write to a protected key outside a change request, or a change request's step
    /// refused (see [`crate::changes::ChangeError`]).
    #[error(transparent)]
    Change(#[from] crate::changes::ChangeError),
}

/// The origin's state plus its signer.
pub struct OriginCore<B: Backend> {
    state: SignedState<B>,
    signer: Signer,
    /// The registered schemas, loaded from the backend on first use.
    schemas: Option<Registry>,
    /// The audit chain's newest record, loaded from the backend on first use.
    audit_tip: Option<crate::audit::ChainTip>,
    /// Signatures another node made for the heads the entry being applied produces.
    offered: BTreeMap<Revision, SignedHead>,
    /// The heads of the entry being applied, while one is (see [`OriginCore::begin_entry`]).
    signed: Option<EntryHeads>,
    /// While a snapshot reads stored history records outside the lock: the records history
    /// compactions deleted meanwhile, with their values (see [`OriginCore::keep_compacted`]).
    compacted: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// The protection rules in force, read from the state on first use and again after a
    /// write to them.
    protections: Option<Vec<(String, ProtectionRecord)>>,
    /// The webhook subscriptions, read on first use and again after a change to them.
    webhooks: Option<Vec<crate::webhooks::Subscription>>,
}

/// The signed heads one Raft entry produced, and how many of them were signatures another
/// node offered rather than signed here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntryHeads {
    /// Each revision's signed head, in order.
    pub heads: Vec<SignedHead>,
    /// How many of `heads` were offered ones.
    pub reused: usize,
}

impl<B: Backend> OriginCore<B> {
    /// Wraps a loaded state.
    pub fn new(state: SignedState<B>, signer: Signer) -> Self {
        Self {
            state,
            signer,
            schemas: None,
            audit_tip: None,
            offered: BTreeMap::new(),
            signed: None,
            protections: None,
            webhooks: None,
            compacted: None,
        }
    }

    /// From now on, until [`OriginCore::take_compacted`], keeps a copy of every history record
    /// a compaction deletes. A snapshot build that reads the stored records while applies go
    /// on calls it at its snapshot point, so a compaction need not wait for the read: what it
    /// deletes that the snapshot should hold is handed over instead.
    pub fn keep_compacted(&mut self) {
        self.compacted = Some(Vec::new());
    }

    /// The records compactions deleted since [`OriginCore::keep_compacted`] (raw, in the order
    /// deleted); stops keeping them.
    pub fn take_compacted(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.compacted.take().unwrap_or_default()
    }

    /// Starts applying one Raft entry, with the signed heads another node holding this key
    /// produced for it (possibly none): a head this node produces that equals an offered one
    /// takes its signature instead of being signed again (see [`Signer::sign_delta_reusing`]).
    /// Until [`OriginCore::end_entry`] the signed heads are also collected.
    pub fn begin_entry(&mut self, offered: Vec<SignedHead>) {
        self.offered = offered.into_iter().map(|h| (h.head.revision, h)).collect();
        self.signed = Some(EntryHeads::default());
    }

    /// Ends the entry [`OriginCore::begin_entry`] started: the heads it produced, to offer to
    /// the other nodes. Offered heads it did not use are dropped.
    pub fn end_entry(&mut self) -> EntryHeads {
        self.offered.clear();
        self.signed.take().unwrap_or_default()
    }

    /// The registered schemas (loaded from the backend if need be).
    pub fn schemas(&mut self) -> Result<&mut Registry, SchemaError> {
        if self.schemas.is_none() {
            self.schemas = Some(Registry::load(self.state.backend())?);
        }
        // Just filled in above.
        Ok(self.schemas.get_or_insert_with(Registry::default))
    }

    /// Forgets the loaded schemas and protection rules (after the backend was replaced by a
    /// snapshot); they are loaded again on next use.
    pub fn reload_schemas(&mut self) {
        self.schemas = None;
        self.protections = None;
        self.webhooks = None;
    }

    /// The webhook subscriptions in force.
    pub fn webhook_subscriptions(
        &mut self,
    ) -> Result<&[crate::webhooks::Subscription], StoreError> {
        if self.webhooks.is_none() {
            self.webhooks = Some(crate::webhooks::subscriptions(&self.state)?);
        }
        Ok(self.webhooks.as_deref().unwrap_or_default())
    }

    pub(crate) fn forget_webhooks(&mut self) {
        self.webhooks = None;
    }

    /// What a command that made no revision produced.
    pub(crate) fn unchanged(&self, change: Option<u64>) -> Applied {
        Applied {
            revision: self.state.revision(),
            entries: Vec::new(),
            change,
        }
    }

    /// The protection rules in force (the working state's, unpublished writes included).
    pub fn protections(&mut self) -> &[(String, ProtectionRecord)] {
        let state = &self.state;
        self.protections.get_or_insert_with(|| {
            let records = state.namespace_entries(SYSTEM_APP, PROTECTIONS_ENV);
            protections(
                records
                    .iter()
                    .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v))),
            )
        })
    }

    /// Appends `event` to the audit chain as written by log position `at` (nothing if the
    /// chain already holds that position: an entry applied again after a crash).
    pub fn record_audit(
        &mut self,
        at: (u64, u32),
        event: crate::audit::AuditEvent,
    ) -> Result<(), StoreError> {
        let tip = self.audit_tip()?;
        if let Some((writes, next)) = crate::audit::append(&tip, at, self.state.revision().0, event)
        {
            self.state.write_extra(writes)?;
            self.audit_tip = Some(next);
        }
        Ok(())
    }

    /// The audit chain's newest record (loaded from the backend if need be).
    pub fn audit_tip(&mut self) -> Result<crate::audit::ChainTip, StoreError> {
        if let Some(tip) = &self.audit_tip {
            return Ok(tip.clone());
        }
        let tip = crate::audit::load_tip(self.state.backend())?;
        self.audit_tip = Some(tip.clone());
        Ok(tip)
    }

    /// Forgets the loaded audit tip (after a snapshot replaced the records).
    pub fn reload_audit(&mut self) {
        self.audit_tip = None;
    }

    /// The signer (the audit head is signed when it is read).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The signed state (for reads, catch-up and snapshots).
    pub fn state(&self) -> &SignedState<B> {
        &self.state
    }

    /// Gives up the state (shutdown, or a crash in the simulator).
    pub fn into_state(self) -> SignedState<B> {
        self.state
    }

    /// The signed state, to publish, flush or install a snapshot.
    pub fn state_mut(&mut self) -> &mut SignedState<B> {
        &mut self.state
    }

    fn holds_secret(&self, address: &Address) -> bool {
        self.state
            .entry(address)
            .and_then(|e| e.value)
            .is_some_and(|v| is_sealed_text(&v))
    }

    /// A sealed value must be sealed for the version its key gets now (its associated data
    /// binds that version, so any other would never open), and a key holding a secret takes
    /// only another sealed value or a delete.
    fn check_secret_write(&self, address: &Address, value: Option<&str>) -> Result<(), ApplyError> {
        match value {
            Some(v) if is_sealed_text(v) => {
                let stored = StoredSecret::parse(v)
                    .ok_or_else(|| ApplyError::Invalid(format!("{address}: malformed secret")))?;
                let current = self.state.entry(address).map_or(0, |e| e.version.0);
                if stored.value.at != current + 1 {
                    return Err(ApplyError::VersionConflict {
                        address: address.clone(),
                        expected: stored.value.at.saturating_sub(1),
                        actual: current,
                    });
                }
                Ok(())
            }
            Some(_) if self.holds_secret(address) => Err(ApplyError::SecretKey(address.clone())),
            _ => Ok(()),
        }
    }

    /// Applies one command as one revision (none for a transaction that changed nothing),
    /// durable and published before it returns.
    pub fn apply(
        &mut self,
        command: Command,
    ) -> Result<(Applied, Option<SignedDelta>), ApplyError> {
        let out = self.apply_unpublished(command, None, Vec::new())?;
        self.state.publish()?;
        Ok(out)
    }

    /// Applies one command as one revision, persisted with `extra` writes in one batch but
    /// neither flushed nor shown to readers until [`SignedState::publish`]: a batch of commands
    /// costs one flush. With `meta`, every change is recorded in the history (in the same
    /// batch).
    pub fn apply_unpublished(
        &mut self,
        command: Command,
        meta: Option<&WriteMeta>,
        mut extra: Vec<Write>,
    ) -> Result<(Applied, Option<SignedDelta>), ApplyError> {
        let live_version = |state: &SignedState<B>, a: &Address| {
            state
                .entry(a)
                .filter(|e| !e.is_tombstone())
                .map_or(0, |e| e.version.0)
        };
        let check = |state: &SignedState<B>, address: &Address, expect: Option<u64>| {
            let actual = live_version(state, address);
            match expect.filter(|e| *e != actual) {
                Some(expected) => Err(ApplyError::VersionConflict {
                    address: address.clone(),
                    expected,
                    actual,
                }),
                None => Ok(()),
            }
        };
        // The new value of each address written, in the order given.
        let writes: Vec<(Address, Option<JsonText>)> = match command {
            Command::Put {
                address,
                value,
                expect_version,
            } => {
                check(&self.state, &address, expect_version)?;
                vec![(address, Some(value))]
            }
            Command::Delete {
                address,
                expect_version,
            } => {
                check(&self.state, &address, expect_version)?;
                if live_version(&self.state, &address) == 0 {
                    return Err(ApplyError::NotFound(address));
                }
                vec![(address, None)]
            }
            Command::Patch {
                address,
                patch,
                expect_version,
                max_value_bytes,
            } => {
                check(&self.state, &address, expect_version)?;
                if self.holds_secret(&address) {
                    return Err(ApplyError::SecretKey(address));
                }
                let patch: serde_json::Value = serde_json::from_str(&patch)
                    .map_err(|e| ApplyError::Invalid(format!("patch is not JSON: {e}")))?;
                let mut value = match self.state.entry(&address).and_then(|e| e.value) {
                    Some(text) => serde_json::from_str(&text)
                        .map_err(|e| ApplyError::Invalid(format!("stored value: {e}")))?,
                    None => serde_json::Value::Null,
                };
                json_patch::merge(&mut value, &patch);
                let text = value.to_string();
                if text.len() as u64 > max_value_bytes {
                    return Err(ApplyError::ValueTooLarge {
                        address,
                        bytes: text.len() as u64,
                        limit: max_value_bytes,
                    });
                }
                vec![(address, Some(text.into()))]
            }
            Command::Txn { conditions, ops } => self.txn_writes(conditions, ops)?,
            Command::Change(op) => return self.apply_change(op, meta, extra),
            Command::Webhook(op) => return self.apply_webhook(op, meta, extra),
            Command::PutSchema {
                app,
                env,
                prefix,
                schema: text,
                force,
            } => {
                let validator = schema::compile(&text).map_err(ApplyError::Invalid)?;
                if !force {
                    // The working state, unpublished changes included: every node decides on
                    // the same state whatever batches its applies came in.
                    let entries = self.state.namespace_entries(&app, &env);
                    let live = entries
                        .iter()
                        .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)));
                    let bad = schema::violations(&validator, &prefix, live);
                    if !bad.is_empty() {
                        return Err(ApplyError::CurrentValuesViolate {
                            prefix,
                            keys: bad.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
                        });
                    }
                }
                extra.push(self.schemas()?.put(&app, &env, &prefix, text, validator));
                Vec::new()
            }
            Command::DeleteSchema { app, env, prefix } => {
                extra.extend(self.schemas()?.remove(&app, &env, &prefix));
                Vec::new()
            }
            // Recorded by the state machine, which knows the log position.
            Command::Audit(_) => Vec::new(),
            Command::TouchTokens(uses) => {
                for (id, ms) in uses {
                    let key = crate::tokens::last_used_key(id);
                    let stored = self
                        .state
                        .backend()
                        .get(&key)
                        .map_err(StoreError::from)?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                        .map_or(0, u64::from_be_bytes);
                    if ms > stored {
                        extra.push((key, Some(ms.to_be_bytes().to_vec())));
                    }
                }
                Vec::new()
            }
            Command::Exposures(entries) => {
                for e in entries {
                    let key = e.store_key();
                    let stored = self
                        .state
                        .backend()
                        .get(&key)
                        .map_err(StoreError::from)?
                        .map_or(0, |v| crate::exposures::stored_count(&v));
                    if e.count.count > stored {
                        extra.push((key, Some(e.store_value())));
                    }
                }
                Vec::new()
            }
            Command::Reveals { .. } => Vec::new(),
            Command::CompactAudit { before_ms } => {
                let upper = [
                    crate::audit::AUDIT_PREFIX[0],
                    crate::audit::AUDIT_PREFIX[1] + 1,
                ];
                let oldest = self
                    .state
                    .backend()
                    .range(&crate::audit::AUDIT_PREFIX, &upper, 10_000)
                    .map_err(StoreError::from)?;
                extra.extend(crate::audit::expired(&oldest, before_ms, 10_000));
                Vec::new()
            }
            Command::CompactHistory { retention, now_ms } => {
                // What is stored plus what an open batch holds: compaction decides on the same
                // records however the applies were grouped into batches.
                let view = self.state.prefix_view_staged(&history::HISTORY_PREFIX)?;
                let deletes = history::compaction(&view.keys, retention, now_ms, |k| view.get(k))?;
                if let Some(kept) = &mut self.compacted {
                    for (k, _) in &deletes {
                        if let Some(v) = view.get(k)? {
                            kept.push((k.clone(), v));
                        }
                    }
                }
                extra.extend(deletes);
                Vec::new()
            }
        };
        if let Some(refused) =
            crate::changes::protecting(self.protections(), writes.iter().map(|(a, _)| a))
        {
            return Err(refused.into());
        }
        self.commit_writes(writes, meta, extra)
    }

    /// The writes of a transaction whose conditions hold in the working state.
    pub(crate) fn txn_writes(
        &self,
        conditions: Vec<Condition>,
        ops: Vec<TxnOp>,
    ) -> Result<Vec<(Address, Option<JsonText>)>, ApplyError> {
        let live_version = |a: &Address| {
            self.state
                .entry(a)
                .filter(|e| !e.is_tombstone())
                .map_or(0, |e| e.version.0)
        };
        for (index, condition) in conditions.into_iter().enumerate() {
            let actual = live_version(condition.address());
            if !condition.holds(actual) {
                return Err(ApplyError::ConditionFailed {
                    index,
                    condition,
                    actual,
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut writes = Vec::with_capacity(ops.len());
        for op in ops {
            if !seen.insert(op.address().clone()) {
                return Err(ApplyError::Invalid(format!(
                    "{} is written twice in one transaction",
                    op.address()
                )));
            }
            match op {
                TxnOp::Put(a, v) => writes.push((a, Some(v))),
                // Deleting what is absent changes nothing.
                TxnOp::Delete(a) if live_version(&a) == 0 => {}
                TxnOp::Delete(a) => writes.push((a, None)),
            }
        }
        Ok(writes)
    }

    /// Checks `writes` against secrets and schemas and makes them one revision (none when
    /// there are none), with `extra` in the same batch and, with `meta`, their history.
    pub(crate) fn commit_writes(
        &mut self,
        writes: Vec<(Address, Option<JsonText>)>,
        meta: Option<&WriteMeta>,
        mut extra: Vec<Write>,
    ) -> Result<(Applied, Option<SignedDelta>), ApplyError> {
        for (address, value) in &writes {
            self.check_secret_write(address, value.as_deref())?;
        }
        for (address, value) in &writes {
            if let Some(value) = value {
                self.schemas()?.check(address, value).map_err(|violation| {
                    ApplyError::SchemaViolation {
                        address: address.clone(),
                        violation: Box::new(violation),
                    }
                })?;
            }
        }
        if writes.is_empty() {
            // A transaction whose deletes found nothing, or a history compaction: no revision.
            self.state.write_extra(extra)?;
            return Ok((
                Applied {
                    revision: self.state.revision(),
                    entries: Vec::new(),
                    change: None,
                },
                None,
            ));
        }
        let writes_protections = writes
            .iter()
            .any(|(a, _)| a.app == SYSTEM_APP && a.env == PROTECTIONS_ENV);
        // Who made the revision and why travels with it, signed, when it differs from the
        // revision before's (`meridian_protocol::provenance`).
        let mut writes = writes;
        if let Some(meta) = meta {
            let text = Provenance {
                actor: meta.actor.clone(),
                reason: meta.reason.clone(),
            }
            .to_json();
            let current = self.state.entry(&provenance::address());
            if current.as_ref().and_then(|e| e.value.as_deref()) != Some(text.as_str()) {
                writes.push((provenance::address(), Some(text.into())));
            }
        }
        let mut changes: Vec<Change> = writes
            .into_iter()
            .map(|(address, value)| {
                let previous = self.state.entry(&address).map_or(0, |e| e.version.0);
                Change {
                    address,
                    version: Version(previous + 1),
                    value,
                }
            })
            .collect();
        changes.sort_by(|a, b| a.address.cmp(&b.address));
        let delta = Delta {
            revision: self.state.revision().next(),
            changes,
        };
        let hash = self.state.hash_after(&delta);
        let offered = self.offered.remove(&delta.revision);
        let (signed, reused) =
            self.signer
                .sign_delta_reusing(delta, hash.finish(), offered.as_ref());
        if let Some(heads) = &mut self.signed {
            heads.heads.push(signed.head);
            heads.reused += usize::from(reused);
        }
        if let Some(meta) = meta {
            extra.extend(history::record_writes(
                &signed.delta.changes,
                signed.delta.revision,
                meta,
            ));
            // The provenance entry changes with every revision: its records are kept for the
            // deltas still served (the newest `delta_window` versions), one dropped per revision,
            // never left to the periodic compaction.
            if let Some(c) = signed
                .delta
                .changes
                .iter()
                .find(|c| provenance::is_provenance(&c.address))
                && let Some(old) = c.version.0.checked_sub(self.state.delta_window())
                && old > 0
            {
                extra.push(history::forget(&c.address, old));
            }
        }
        extra.extend(self.webhook_events(&signed.delta.changes, signed.delta.revision.0, meta)?);
        self.state.apply_hashed_delta_with(&signed, hash, extra)?;
        let entries = signed
            .delta
            .changes
            .iter()
            .filter(|c| !provenance::is_provenance(&c.address))
            .map(|c| (c.address.clone(), signed.delta.entry(c)))
            .collect();
        if writes_protections {
            self.protections = None;
        }
        Ok((
            Applied {
                revision: signed.delta.revision,
                entries,
                change: None,
            },
            Some(signed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::MemBackend;

    use super::*;

    fn core() -> OriginCore<MemBackend> {
        let state = SignedState::open(MemBackend::new(), 100).expect("state");
        OriginCore::new(state, Signer::from_bytes(&[3; 32]))
    }

    fn at(key: &str) -> Address {
        Address::parse("app", "prod", key).expect("address")
    }

    fn put(c: &mut OriginCore<MemBackend>, key: &str, value: &str) {
        c.apply(Command::Put {
            address: at(key),
            value: value.into(),
            expect_version: None,
        })
        .expect("put");
    }

    fn value(c: &OriginCore<MemBackend>, key: &str) -> Option<String> {
        c.state()
            .entry(&at(key))
            .and_then(|e| e.value)
            .map(|v| v.to_string())
    }

    #[test]
    fn a_transaction_is_one_revision_or_nothing() {
        let mut c = core();
        put(&mut c, "a", "1");
        let txn = |version| Command::Txn {
            conditions: vec![
                Condition::VersionEquals(at("a"), version),
                Condition::Absent(at("b")),
            ],
            ops: vec![
                TxnOp::Put(at("b"), "2".into()),
                TxnOp::Delete(at("a")),
                TxnOp::Delete(at("never")),
            ],
        };
        let failed = c.apply(txn(7));
        assert!(matches!(
            failed,
            Err(ApplyError::ConditionFailed {
                index: 0,
                actual: 1,
                ..
            })
        ));
        assert_eq!(c.state().revision(), Revision(1), "nothing written");
        let (applied, signed) = c.apply(txn(1)).expect("txn");
        assert_eq!(applied.revision, Revision(2));
        assert_eq!(
            applied.entries.len(),
            2,
            "the absent delete changed nothing"
        );
        assert_eq!(signed.expect("a revision").delta.changes.len(), 2);
        assert_eq!(value(&c, "a"), None);
        assert_eq!(value(&c, "b").as_deref(), Some("2"));
        let twice = Command::Txn {
            conditions: vec![],
            ops: vec![TxnOp::Put(at("x"), "1".into()), TxnOp::Delete(at("x"))],
        };
        assert!(matches!(c.apply(twice), Err(ApplyError::Invalid(_))));
    }

    #[test]
    fn a_merge_patch_follows_rfc_7386() {
        let mut c = core();
        put(&mut c, "cfg", r#"{"a":1,"b":{"c":2,"d":3},"e":[1,2]}"#);
        c.apply(Command::Patch {
            address: at("cfg"),
            patch: r#"{"a":null,"b":{"c":9},"e":[3],"f":"new"}"#.into(),
            expect_version: Some(1),
            max_value_bytes: 1024,
        })
        .expect("patch");
        assert_eq!(
            value(&c, "cfg").as_deref(),
            Some(r#"{"b":{"c":9,"d":3},"e":[3],"f":"new"}"#)
        );
        // Absent: the patch applies to null.
        c.apply(Command::Patch {
            address: at("fresh"),
            patch: r#"{"x":{"y":null,"z":1}}"#.into(),
            expect_version: Some(0),
            max_value_bytes: 1024,
        })
        .expect("patch of an absent key");
        assert_eq!(value(&c, "fresh").as_deref(), Some(r#"{"x":{"z":1}}"#));
        let stale = c.apply(Command::Patch {
            address: at("cfg"),
            patch: "{}".into(),
            expect_version: Some(1),
            max_value_bytes: 1024,
        });
        assert!(matches!(
            stale,
            Err(ApplyError::VersionConflict { actual: 2, .. })
        ));
        let big = c.apply(Command::Patch {
            address: at("cfg"),
            patch: format!(r#"{{"big":"{}"}}"#, "x".repeat(2000)).into(),
            expect_version: None,
            max_value_bytes: 1024,
        });
        assert!(matches!(big, Err(ApplyError::ValueTooLarge { .. })));
        assert_eq!(c.state().revision(), Revision(3), "nothing written");
    }

    #[test]
    fn a_revision_carries_its_provenance_when_it_changes_and_its_records_last_the_delta_window() {
        let state = SignedState::open(MemBackend::new(), 5).expect("state");
        let mut c = OriginCore::new(state, Signer::from_bytes(&[3; 32]));
        let write = |c: &mut OriginCore<MemBackend>, i: u64, reason: Option<String>| {
            let meta = WriteMeta {
                time_ms: 1_000 + i,
                actor: "alice#1".into(),
                reason,
                ..WriteMeta::default()
            };
            let command = Command::Put {
                address: at("k"),
                value: i.to_string().into(),
                expect_version: None,
            };
            let (applied, delta) = c
                .apply_unpublished(command, Some(&meta), Vec::new())
                .expect("put");
            c.state_mut().publish().expect("publish");
            // The answer names the key written only; the signed delta carries who and why.
            assert_eq!(applied.entries.len(), 1);
            provenance::of_delta(&delta.expect("a revision").delta)
        };
        for i in 1..=12 {
            let p = write(&mut c, i, Some(format!("step {i}"))).expect("a new reason");
            assert_eq!(
                (p.actor.as_str(), p.reason),
                ("alice#1", Some(format!("step {i}")))
            );
        }
        // The same actor and reason again: the revision has the provenance of the one before.
        let first = write(&mut c, 13, None).expect("no reason is new");
        assert_eq!(first.reason, None);
        assert_eq!(write(&mut c, 14, None), None);
        // A write without metadata (a system step) writes none.
        let (_, delta) = c
            .apply(Command::Put {
                address: at("k"),
                value: "0".into(),
                expect_version: None,
            })
            .expect("put");
        assert_eq!(
            provenance::of_delta(&delta.expect("a revision").delta),
            None
        );
        // The newest 5 of the provenance's 13 records are kept; compaction leaves them be.
        let prefix = history::key_prefix(&provenance::address());
        let kept = c.state().backend().scan_prefix_keys(&prefix).expect("scan");
        assert_eq!(kept.len(), 5);
        let all = c
            .state()
            .backend()
            .scan_prefix_keys(&history::HISTORY_PREFIX)
            .expect("scan");
        let retention = history::Retention {
            max_versions: 1,
            max_age_ms: None,
        };
        let dropped = history::compaction(&all, retention, 0, |_| Ok(None)).expect("compaction");
        assert!(dropped.iter().all(|(k, _)| !k.starts_with(&prefix)));
        assert_eq!(dropped.len(), 13, "k's older versions only");
    }
}
