//! The schemas of the answers origin and edges give, for the OpenAPI documents. The handlers
//! write these answers themselves (for speed, or from `json!`); `tests/api_contract.rs` checks
//! real answers against these schemas, so a field renamed in a handler fails there.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_key", "message": "key \"Bad\" must be dot-separated [a-z0-9][a-z0-9_-]* segments"}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_key`, `forbidden`, `schema_violation`, …
    pub code: String,
    /// For people: names the problem (never a secret's value).
    pub message: String,
}

/// One key's value as a read or a write answers it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"app": "payments", "env": "prod", "key": "db.url", "value": "postgres://db.internal:5432/pay", "version": 1, "revision": 4}))]
pub struct Entry {
    /// The application (`_`: every application).
    pub app: String,
    /// The environment (`_`: every environment).
    pub env: String,
    /// The dot-separated key.
    pub key: String,
    /// Any JSON value (`null` for a secret, which is read through `/v1/secrets`).
    #[schema(value_type = Value)]
    pub value: Value,
    /// Changes of this address so far (0: a default answered for a key without a value).
    pub version: u64,
    /// The store's revision this value was written at.
    pub revision: u64,
    /// Present and true when `?default=` answered for a key without a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Present and true when the value is a secret (then `value` is null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<bool>,
    /// A secret's fingerprint: tells versions apart without revealing them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The answer to a write that names only the revision it committed.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"revision": 8}))]
pub struct Committed {
    /// The revision the write committed (pass it as `min_revision` to read your write).
    pub revision: u64,
}

/// A bulk read of one app/env.
#[derive(Serialize, ToSchema)]
pub struct EntryList {
    /// The revision the answer reflects.
    pub revision: u64,
    /// The values, sorted by key.
    pub items: Vec<Entry>,
    /// Keys named in `?keys=` without a value.
    pub missing: Vec<String>,
    /// Keys whose references do not resolve, and why (left out of `items`).
    pub errors: Map<String, Value>,
    /// Where the next page starts; null on the last page.
    pub next_cursor: Option<String>,
}

/// The resolved configuration of one app/env.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"app": "payments", "env": "prod", "revision": 5,
    "config": {"db.host": "db.internal", "timeout_ms": 500},
    "sources": {"db.host": "payments/_", "timeout_ms": "_/_"}, "errors": {}}))]
pub struct ResolvedConfig {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The revision the answer reflects.
    pub revision: u64,
    /// Every key and its resolved value.
    pub config: Map<String, Value>,
    /// The level (`app/env`, `app/_`, `_/env`, `_/_`) each key came from.
    pub sources: Map<String, Value>,
    /// Keys whose references do not resolve, and why.
    pub errors: Map<String, Value>,
}

/// Who a node takes the presented token for.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"actor": "alice#6c1f0e2a9b3d4c5e", "anonymous": false, "id": "6c1f0e2a9b3d4c5e", "name": "alice"}))]
pub struct Whoami {
    /// `name#id`, as the history and the audit log record it.
    pub actor: String,
    /// True when no token was presented.
    pub anonymous: bool,
    /// The token's id (null when anonymous).
    pub id: Option<String>,
    /// The token's name.
    pub name: String,
}

/// A service instance's report of the revision it applied.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"instance": "pay-7f9c", "revision": 41, "prefix": ""}))]
pub struct AppliedReport {
    /// The host or pod name of the instance.
    pub instance: String,
    /// The revision of the app/env it applied.
    pub revision: u64,
    /// The key prefix it watches (empty: every key).
    pub prefix: Option<String>,
}

/// Any JSON object: answers whose fields are described in docs/API.md.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct AnyObject(pub Map<String, Value>);

/// OpenFeature's OFREP evaluation request: `{"context": {...}}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"context": {"targetingKey": "user-42", "plan": "pro"}}))]
pub struct OfrepRequest {
    /// The evaluation context; `targetingKey` names the subject.
    #[schema(value_type = Object)]
    pub context: Option<Map<String, Value>>,
}

/// Who made a version and why, and what it held.
#[derive(Serialize, ToSchema)]
pub struct HistoryItem {
    /// The key's version.
    pub version: u64,
    /// The revision that wrote it.
    pub revision: u64,
    /// True for a delete.
    pub deleted: bool,
    /// The value it held (null for a delete; a secret's is masked).
    #[schema(value_type = Value)]
    pub value: Value,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// The token that wrote it (`name#id`).
    pub actor: String,
    /// Why, if the write said.
    pub reason: Option<String>,
}

/// A page of a key's history, newest first.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The key.
    pub key: String,
    /// Versions, newest first.
    pub items: Vec<HistoryItem>,
    /// Pass as `before` for the next page; null on the last.
    pub next_before: Option<u64>,
}

/// One JSON Pointer path that differs between two values.
#[derive(Serialize, ToSchema)]
pub struct PathChange {
    /// The JSON Pointer (empty: the whole value).
    pub path: String,
    /// What it held before (absent when added).
    #[schema(value_type = Value, required = false)]
    pub from: Option<Value>,
    /// What it holds after (absent when removed).
    #[schema(value_type = Value, required = false)]
    pub to: Option<Value>,
}

/// What changed in one key between two versions.
#[derive(Serialize, ToSchema)]
pub struct KeyDiff {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The key.
    pub key: String,
    /// The older version.
    pub from: u64,
    /// The newer version.
    pub to: u64,
    /// Paths only the newer has.
    pub added: Vec<PathChange>,
    /// Paths only the older has.
    pub removed: Vec<PathChange>,
    /// Paths both have, with different values.
    pub changed: Vec<PathChange>,
}

/// A key added or removed between two revisions.
#[derive(Serialize, ToSchema)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value.
    #[schema(value_type = Value)]
    pub value: Value,
    /// Its version.
    pub version: u64,
}

/// A key changed between two revisions.
#[derive(Serialize, ToSchema)]
pub struct KeyChange {
    /// The key.
    pub key: String,
    /// Its version at the older revision.
    pub from_version: u64,
    /// Its version at the newer revision.
    pub to_version: u64,
    /// Paths added.
    pub added: Vec<PathChange>,
    /// Paths removed.
    pub removed: Vec<PathChange>,
    /// Paths changed.
    pub changed: Vec<PathChange>,
}

/// What changed in an app/env between two revisions.
#[derive(Serialize, ToSchema)]
pub struct EnvDiff {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The older revision.
    pub from: u64,
    /// The newer revision.
    pub to: u64,
    /// Keys that appeared.
    pub added: Vec<KeyValue>,
    /// Keys that went away.
    pub removed: Vec<KeyValue>,
    /// Keys whose value changed.
    pub changed: Vec<KeyChange>,
}

/// A key a transaction or a rollback changed.
#[derive(Serialize, ToSchema)]
pub struct ChangedKey {
    /// The application (absent in an app/env rollback, which names it once).
    #[schema(required = false)]
    pub app: Option<String>,
    /// The environment (absent in an app/env rollback).
    #[schema(required = false)]
    pub env: Option<String>,
    /// The key.
    pub key: String,
    /// True when the change deleted it.
    pub deleted: bool,
    /// Its new version.
    pub version: u64,
}

/// The answer to a transaction.
#[derive(Serialize, ToSchema)]
pub struct TxnAnswer {
    /// The revision it committed (every change shares it).
    pub revision: u64,
    /// Every key it changed.
    pub changed: Vec<ChangedKey>,
}

/// The answer to an app/env rollback.
#[derive(Serialize, ToSchema)]
pub struct EnvRollback {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The revision it went back to.
    pub rolled_back_to: u64,
    /// The revision it committed.
    pub revision: u64,
    /// Every key it changed.
    pub changed: Vec<ChangedKey>,
}

/// A record written by name (a policy, a protection rule).
#[derive(Serialize, ToSchema)]
pub struct NamedRecord {
    /// Its name.
    pub name: String,
    /// The revision that wrote it.
    pub revision: u64,
    /// Its version.
    pub version: u64,
}

/// A flag written.
#[derive(Serialize, ToSchema)]
pub struct FlagWritten {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The flag's key.
    pub flag: String,
    /// The definition's version.
    pub version: u64,
    /// The revision that wrote it.
    pub revision: u64,
}

/// A role on resource patterns.
#[derive(Serialize, ToSchema)]
pub struct Grant {
    /// `viewer`, `editor` or `admin` (or `actions` instead).
    #[schema(required = false)]
    pub role: Option<String>,
    /// Actions, when no role is named.
    #[schema(required = false)]
    pub actions: Option<Vec<String>>,
    /// `app/env/key` patterns.
    pub resources: Vec<String>,
}

/// A token's record (never its text or hash).
#[derive(Serialize, ToSchema)]
pub struct TokenRecord {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Who made it.
    pub owner: String,
    /// When, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it stops working (null: never).
    pub expires_ms: Option<u64>,
    /// Whether it has.
    pub expired: bool,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its grants.
    pub grants: Vec<Grant>,
}

/// A token made: its text, shown this once, and its record.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The token (`mrdn_…`): shown only in this answer.
    pub token: String,
    /// Who made it.
    pub owner: String,
    /// When, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it stops working (null: never).
    pub expires_ms: Option<u64>,
    /// Whether it has.
    pub expired: bool,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its grants.
    pub grants: Vec<Grant>,
    /// The revision that recorded it.
    pub revision: u64,
}

/// Every live token.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// The revision the answer reflects.
    pub revision: u64,
    /// The tokens.
    pub tokens: Vec<TokenRecord>,
}

/// One audit record.
#[derive(Serialize, ToSchema)]
pub struct AuditRecord {
    /// Its position in the log.
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// Who (`name#id`; absent for the cluster itself).
    #[schema(required = false)]
    pub actor: Option<String>,
    /// What: `write`, `token-create`, `change-approve`, `secret-reveal`, …
    pub action: String,
    /// On what.
    #[schema(required = false)]
    pub resource: Option<String>,
    /// `ok` or the refusal's code.
    pub outcome: String,
    /// The revision it committed, if any.
    #[schema(required = false)]
    pub revision: Option<u64>,
    /// Why.
    #[schema(required = false)]
    pub reason: Option<String>,
    /// The request's id (`x-request-id`).
    #[schema(required = false)]
    pub request_id: Option<String>,
    /// The client's address.
    #[schema(required = false)]
    pub source: Option<String>,
    /// The Raft log index that committed it.
    pub log_index: u64,
    /// The hash of the record before.
    pub prev_hash: String,
    /// This record's hash (chained).
    pub hash: String,
}

/// A page of the audit log, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// The newest record's `seq`.
    pub newest_seq: u64,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<u64>,
    /// The records.
    pub records: Vec<AuditRecord>,
}

/// The newest audit record, signed.
#[derive(Serialize, ToSchema)]
pub struct AuditHead {
    /// Its `seq`.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// Ed25519 signature of the cluster's key over `seq` and `hash`.
    pub signature: String,
}

/// A secret, masked unless revealed.
#[derive(Serialize, ToSchema)]
pub struct SecretView {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The key.
    pub key: String,
    /// Always true.
    pub secret: bool,
    /// Tells versions apart without revealing them.
    pub fingerprint: String,
    /// Null unless revealed.
    #[schema(value_type = Value)]
    pub value: Value,
    /// Its version.
    pub version: u64,
    /// The revision that wrote it.
    pub revision: u64,
}

/// A JSON Schema registered for a key prefix.
#[derive(Serialize, ToSchema)]
pub struct SchemaView {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The key prefix it covers.
    pub prefix: String,
    /// The JSON Schema.
    #[schema(value_type = Object)]
    pub schema: Value,
}

/// An OFREP evaluation (OpenFeature Remote Evaluation Protocol).
#[derive(Serialize, ToSchema)]
pub struct OfrepEvaluation {
    /// The flag's key.
    pub key: String,
    /// The value served.
    #[schema(value_type = Value)]
    pub value: Value,
    /// `STATIC`, `TARGETING_MATCH`, `SPLIT`, `DISABLED`, `DEFAULT`, …
    pub reason: String,
    /// The variant served.
    #[schema(required = false)]
    pub variant: Option<String>,
    /// Flag metadata.
    #[schema(value_type = Object, required = false)]
    pub metadata: Option<Map<String, Value>>,
}

/// Where an edge is, as the origin heard it.
#[derive(Serialize, ToSchema)]
pub struct EdgeRow {
    /// The edge's id.
    pub edge_id: String,
    /// Its region.
    pub region: String,
    /// The revision it applied.
    pub revision: u64,
    /// Revisions behind the origin.
    pub behind_revisions: u64,
    /// Its lag.
    pub lag_ms: u64,
    /// Since its last report.
    pub last_report_ms: u64,
    /// Its state digest.
    pub digest: String,
    /// Whether the digest is the origin's at that revision (null: cannot tell).
    pub digest_match: Option<bool>,
    /// Whether it is connected now.
    pub connected: bool,
    /// `diverged`, `lagging`, `disconnected`.
    pub flags: Vec<String>,
}

/// Every edge the cluster heard from.
#[derive(Serialize, ToSchema)]
pub struct EdgesView {
    /// The node that answered.
    pub node_id: String,
    /// Its revision.
    pub revision: u64,
    /// The lag beyond which an edge is flagged.
    pub lag_threshold_ms: u64,
    /// How many edges are flagged.
    pub flagged: u64,
    /// The edges.
    pub edges: Vec<EdgeRow>,
    /// Members that could not be asked.
    #[schema(value_type = Vec<Object>)]
    pub unreachable_nodes: Vec<Value>,
}

/// Namespaces holding keys the caller may read.
#[derive(Serialize, ToSchema)]
pub struct NamespaceList {
    /// The revision the answer reflects.
    pub revision: u64,
    /// Sorted by app, then env.
    pub namespaces: Vec<NamespaceCount>,
}

/// One namespace and how many readable keys it holds.
#[derive(Serialize, ToSchema)]
pub struct NamespaceCount {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// Readable keys stored there.
    pub keys: u64,
}

/// How a rule's approvals stand on a change.
#[derive(Serialize, ToSchema)]
pub struct RuleApprovals {
    /// The protection rule.
    pub rule: String,
    /// Approvals it needs.
    pub approvals: u64,
    /// Approvals that count for it so far.
    pub have: u64,
}

/// An approval given.
#[derive(Serialize, ToSchema)]
pub struct Approval {
    /// Who (`name#id`).
    pub actor: String,
    /// The rules it counts for.
    pub rules: Vec<String>,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
}

/// One write of a change, beside the key's current value.
#[derive(Serialize, ToSchema)]
pub struct ChangeWrite {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The key (or flag).
    pub key: String,
    /// `put`, `delete`, `put_flag`, `delete_flag`.
    pub op: String,
    /// The key's value now (secrets masked).
    #[schema(value_type = Value, required = false)]
    pub current: Option<Value>,
    /// Its version now.
    pub current_version: u64,
    /// The version reviewers saw; applying fails (409 `stale_change`) once it moved.
    pub reviewed_version: u64,
    /// What the change writes (secrets masked).
    #[schema(value_type = Value, required = false)]
    pub proposed: Option<Value>,
}

/// When, by whom and at which revision a change was applied.
#[derive(Serialize, ToSchema)]
pub struct ChangeApplied {
    /// The revision it committed.
    pub revision: u64,
    /// Who applied it.
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Whether it skipped the approvals.
    pub break_glass: bool,
}

/// The JSON Schema check of a change's values.
#[derive(Serialize, ToSchema)]
pub struct SchemaCheck {
    /// Whether every value validates.
    pub ok: bool,
    /// What does not.
    #[schema(value_type = Vec<Object>)]
    pub violations: Vec<Value>,
}

/// A change request as it stands.
#[derive(Serialize, ToSchema)]
pub struct ChangeView {
    /// Its id.
    pub id: u64,
    /// `pending`, `approved`, `rejected`, `applied` or `cancelled`.
    pub status: String,
    /// Who proposed it.
    pub author: String,
    /// Why.
    pub reason: String,
    /// When, ms since the Unix epoch.
    pub created_ms: u64,
    /// When the leader applies it once approved (null: by hand).
    pub apply_at_ms: Option<u64>,
    /// Its application, once applied.
    pub applied: Option<ChangeApplied>,
    /// What each rule covering its keys needs and has.
    pub required: Vec<RuleApprovals>,
    /// The approvals given.
    pub approvals: Vec<Approval>,
    /// Comments, rejections, refreshes, the cancellation.
    #[schema(value_type = Vec<Object>)]
    pub notes: Vec<Value>,
    /// Its writes beside the current values.
    pub diff: Vec<ChangeWrite>,
    /// Its values against the JSON Schemas.
    pub schema: SchemaCheck,
    /// The revision of the step just taken (answers to a step only).
    #[schema(required = false)]
    pub revision: Option<u64>,
}

/// Change requests, oldest first.
#[derive(Serialize, ToSchema)]
pub struct ChangeList {
    /// The changes.
    pub changes: Vec<ChangeView>,
    /// Pass as `after` for the next page; null on the last.
    pub next: Option<u64>,
}

/// A webhook subscription (its secret only in the answer that made it).
#[derive(Serialize, ToSchema)]
pub struct Webhook {
    /// Its id.
    pub id: u64,
    /// Where events are POSTed.
    pub url: String,
    /// The event types.
    pub events: Vec<String>,
    /// The key patterns it covers.
    pub resources: Vec<String>,
    /// The signing secret (`whsec_…`), in the create answer only.
    #[schema(required = false)]
    pub secret: Option<String>,
}

/// A subscription's recent deliveries and its queue.
#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    /// The subscription.
    pub id: u64,
    /// Events waiting.
    pub queued: u64,
    /// Events given up or refused for a full queue.
    pub dropped: u64,
    /// The last attempts, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<Value>,
}

/// A token revoked.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// The revision that revoked it.
    pub revision: u64,
    /// The token's id.
    pub revoked: String,
}

/// A service instance's report, as accepted.
#[derive(Serialize, ToSchema)]
pub struct AppliedAccepted {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The instance.
    pub instance: String,
    /// The revision it applied.
    pub revision: u64,
}

/// One instance in the drift view.
#[derive(Serialize, ToSchema)]
pub struct DriftRow {
    /// The instance.
    pub instance: String,
    /// The revision it runs.
    pub revision: u64,
    /// The newest revision that changed what it watches.
    pub current_revision: u64,
    /// The key prefix it watches.
    pub prefix: String,
    /// The token that reported.
    pub reporter: String,
    /// The edge it reported through (absent when it reported to the origin).
    #[schema(required = false)]
    pub via: Option<String>,
    /// Since its last report.
    pub last_report_ms: u64,
    /// `outdated`, `unapproved`, `ahead`, `silent`.
    pub flags: Vec<String>,
}

/// Which revision each instance of an app/env runs.
#[derive(Serialize, ToSchema)]
pub struct DriftView {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The origin's revision.
    pub revision: u64,
    /// The newest revision that changed the app/env's configuration.
    pub current_revision: u64,
    /// Instances heard from.
    pub instances: u64,
    /// Instances flagged.
    pub flagged: u64,
    /// Flagged `outdated`.
    pub outdated: u64,
    /// Flagged `unapproved`.
    pub unapproved: u64,
    /// Flagged `ahead`.
    pub ahead: u64,
    /// Flagged `silent`.
    pub silent: u64,
    /// Silence beyond which an instance is flagged.
    pub silent_after_ms: u64,
    /// The instances.
    pub rows: Vec<DriftRow>,
    /// Members that could not be asked.
    #[schema(value_type = Vec<Object>)]
    pub unreachable_nodes: Vec<Value>,
}
