//! The origin's HTTP write API (DESIGN §4): PUT, DELETE, GET, prefix list and status, with JSON
//! errors for every refusal.

use std::sync::{Arc, Mutex};

use crate::raft::Outcome;
use crate::raft::cluster::{Cluster, ClusterError};

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::{Gate, RequestMeta, RouteTable, Rule, authorize, readable};
use meridian_net::http::{
    ApiError, json_bytes, method_not_allowed, metrics_endpoint, unknown_route, write_entry,
};
use meridian_net::reads;
use meridian_protocol::auth::{Action, Principal, Resource};
use meridian_protocol::{Address, CacheState};
use meridian_store::Reader;
use serde::Deserialize;

use crate::core::{Command, Condition, Proposal, TxnOp};
use crate::drift::KnownEdges;
use crate::history::{MAX_ACTOR_BYTES, MAX_REASON_BYTES, WriteMeta};
use crate::{audit_api, history_api, schema_api, tokens_api};

/// Everything the handlers share.
pub struct AppState {
    /// This node's id.
    pub node_id: String,
    /// The Raft cluster writes go through and reads are linearized against.
    pub cluster: Cluster,
    /// Published state for reads.
    pub reader: Reader,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Edges heard from, as last reported to the distributor.
    pub edges: Arc<Mutex<KnownEdges>>,
    /// The core, for history reads (its backend holds the history records).
    pub core: crate::raft::state_machine::SharedCore,
    /// The Raft channel's client, for asking the other nodes what they know.
    pub peers: meridian_net::peer::PeerClient,
    /// The data folder's free space, checked before every write.
    pub space: meridian_store::SpaceGuard,
    /// Where the authorization layer finds tokens and policies.
    pub gate: Gate,
}

pub(crate) type Shared = State<Arc<AppState>>;

/// Every route of the client API and the rule that authorizes it.
pub fn routes() -> RouteTable<Arc<AppState>> {
    use Action::{Admin, AuditRead, Delete, Read, Rollback, Schema, Write};
    use Method as M;
    use Rule::{Everything, Filtered, Key, Namespace, Observe};
    RouteTable::new()
        .route(M::GET, "/v1/kv/{app}/{env}/{key}", Key(Read), get_one)
        .route(M::PUT, "/v1/kv/{app}/{env}/{key}", Key(Write), put)
        .route(M::PATCH, "/v1/kv/{app}/{env}/{key}", Key(Write), patch)
        .route(M::DELETE, "/v1/kv/{app}/{env}/{key}", Key(Delete), delete)
        .route(M::GET, "/v1/kv/{app}/{env}", Filtered(Read), list)
        .route(
            M::GET,
            "/v1/kv/{app}/{env}/{key}/history",
            Key(Read),
            history_api::history,
        )
        .route(
            M::GET,
            "/v1/kv/{app}/{env}/{key}/diff",
            Key(Read),
            history_api::key_diff,
        )
        .route(
            M::POST,
            "/v1/kv/{app}/{env}/{key}/rollback",
            Key(Rollback),
            history_api::key_rollback,
        )
        .route(
            M::GET,
            "/v1/diff/{app}/{env}",
            Filtered(Read),
            history_api::env_diff,
        )
        .route(
            M::POST,
            "/v1/rollback/{app}/{env}",
            Namespace(Rollback),
            history_api::env_rollback,
        )
        .route(
            M::GET,
            "/v1/schemas/{app}/{env}/{prefix}",
            Namespace(Read),
            schema_api::get_schema,
        )
        .route(
            M::PUT,
            "/v1/schemas/{app}/{env}/{prefix}",
            Namespace(Schema),
            schema_api::put_schema,
        )
        .route(
            M::DELETE,
            "/v1/schemas/{app}/{env}/{prefix}",
            Namespace(Schema),
            schema_api::delete_schema,
        )
        .route(
            M::GET,
            "/v1/schemas/{app}/{env}",
            Filtered(Read),
            schema_api::list_schemas,
        )
        .route(M::GET, "/v1/config/{app}/{env}", Filtered(Read), config)
        .route(M::POST, "/v1/txn", Filtered(Write), txn)
        .route(M::POST, "/v1/tokens", Everything(Admin), tokens_api::create)
        .route(M::GET, "/v1/tokens", Everything(Admin), tokens_api::list)
        .route(
            M::DELETE,
            "/v1/tokens/{id}",
            Everything(Admin),
            tokens_api::revoke,
        )
        .route(
            M::GET,
            "/v1/policies",
            Everything(Admin),
            tokens_api::list_policies,
        )
        .route(
            M::GET,
            "/v1/policies/{name}",
            Everything(Admin),
            tokens_api::get_policy,
        )
        .route(
            M::PUT,
            "/v1/policies/{name}",
            Everything(Admin),
            tokens_api::put_policy,
        )
        .route(
            M::DELETE,
            "/v1/policies/{name}",
            Everything(Admin),
            tokens_api::delete_policy,
        )
        .route(M::GET, "/v1/whoami", Rule::Identify, tokens_api::whoami)
        .route(M::GET, "/v1/audit", Everything(AuditRead), audit_api::list)
        .route(
            M::GET,
            "/v1/audit/head",
            Everything(AuditRead),
            audit_api::head,
        )
        .route(M::GET, "/v1/status", Observe, status)
        .route(M::GET, "/v1/cluster", Observe, cluster_status)
        .route(M::GET, "/v1/edges", Observe, crate::edges_api::edges)
        .route(M::GET, "/metrics", Observe, metrics)
}

/// Builds the router: every route behind the authorization layer.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = crate::admission::body_limit(state.max_value_bytes);
    routes()
        .finish(state.gate.clone())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn metrics() -> Response {
    metrics_endpoint().await
}

async fn cluster_status(State(state): Shared) -> Response {
    axum::Json(crate::raft::admin::describe(state.cluster.raft())).into_response()
}

pub(crate) fn count_error(e: ApiError) -> ApiError {
    metrics::counter!("meridian_origin_rejected_requests_total", "code" => e.code).increment(1);
    e
}

pub(crate) fn address(
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Address, ApiError> {
    let Path((app, env, key)) = path.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("bad path: {e}"),
        )
    })?;
    Ok(Address::parse(&app, &env, &key)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

/// The command a `PUT /v1/kv/{address}` body `{"value", "reason"?, "expect_version"?}` asks
/// for, and its reason; 400 `malformed_json` or 413 `value_too_large` naming the problem.
pub fn put_command(
    address: Address,
    body: &[u8],
    max_value_bytes: usize,
) -> Result<(Command, Option<String>), ApiError> {
    let parsed: PutBody = json_body(body)?;
    let text = parsed.value.to_string();
    if text.len() > max_value_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "value is {} bytes; the limit is {max_value_bytes}",
                text.len()
            ),
        ));
    }
    let command = Command::Put {
        address,
        value: text.into(),
        expect_version: parsed.expect_version,
    };
    Ok((command, parsed.reason))
}

/// The command a `PATCH /v1/kv/{address}` body `{"patch", "reason"?, "expect_version"?}` asks
/// for (a JSON Merge Patch whose result may be at most `max_value_bytes`), and its reason.
pub fn patch_command(
    address: Address,
    body: &[u8],
    max_value_bytes: usize,
) -> Result<(Command, Option<String>), ApiError> {
    let parsed: PatchBody = json_body(body)?;
    let command = Command::Patch {
        address,
        patch: parsed.patch.to_string().into(),
        expect_version: parsed.expect_version,
        max_value_bytes: max_value_bytes as u64,
    };
    Ok((command, parsed.reason))
}

/// The command a `POST /v1/txn` body asks for, and its reason.
pub fn txn_body_command(
    body: &[u8],
    max_value_bytes: usize,
) -> Result<(Command, Option<String>), ApiError> {
    let parsed: TxnBody = json_body(body)?;
    let reason = parsed.reason.clone();
    Ok((txn_command(parsed, max_value_bytes)?, reason))
}

/// A JSON body, or 400 `malformed_json` naming the problem.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

/// The JSON body of a request, or 400 `malformed_json` / 413 naming the problem.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(body_error)?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

pub(crate) fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.body_text(),
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
    }
}

pub(crate) fn cluster_error(e: ClusterError) -> ApiError {
    match e {
        ClusterError::NoQuorum(m) | ClusterError::Unreachable(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", m)
        }
        ClusterError::Internal(m) => {
            tracing::error!(error = %m, "write failed in the cluster");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
        }
    }
}

/// Who, when and why, for the history of what this write changes: the authenticated
/// principal, never a name the client supplies.
pub(crate) fn write_meta(
    principal: &Principal,
    request: &RequestMeta,
    reason: Option<String>,
) -> Result<WriteMeta, ApiError> {
    let mut actor = principal.actor();
    actor.truncate(MAX_ACTOR_BYTES);
    if let Some(r) = &reason
        && (r.len() > MAX_REASON_BYTES || !crate::admission::printable(r))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_reason",
            format!("reason must be at most {MAX_REASON_BYTES} bytes of text"),
        ));
    }
    let time_ms = crate::history::now_ms();
    Ok(WriteMeta {
        time_ms,
        actor,
        reason,
        request_id: Some(request.request_id.clone()),
        source: request.source.map(|s| s.to_string()),
        action: None,
    })
}

/// 413 `revision_too_large` when the changes `command` makes in one revision (`what`: the
/// transaction, the rollback) would not fit the frame every edge accepts.
pub(crate) fn check_revision_size(command: &Command, what: &'static str) -> Result<(), ApiError> {
    crate::admission::check_revision_size(command, what).map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "revision_too_large",
            e.to_string(),
        )
    })
}

/// Commits a write through Raft; acknowledged only once committed and applied.
pub(crate) async fn commit(
    state: &Arc<AppState>,
    command: Command,
    meta: WriteMeta,
) -> Result<crate::core::Applied, ApiError> {
    check_revision_size(&command, "the write")?;
    state
        .space
        .check()
        .map_err(crate::disk::insufficient_storage)?;
    let proposal = Proposal { command, meta };
    let applied = match state.cluster.write(proposal).await.map_err(cluster_error)? {
        Outcome::Applied(a) => a,
        Outcome::VersionConflict {
            address,
            expected,
            actual,
        } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "version_conflict",
                format!("{address}: expected version {expected}, found {actual}"),
            ));
        }
        Outcome::NotFound(a) => return Err(ApiError::not_found(a)),
        Outcome::ConditionFailed {
            index,
            condition,
            actual,
        } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "condition_failed",
                format!("condition {index} ({condition}) failed: the version is {actual}"),
            ));
        }
        Outcome::Invalid(why) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_command",
                why,
            ));
        }
        Outcome::SchemaViolation {
            address,
            prefix,
            path,
            rule,
            message,
        } => {
            let at = if path.is_empty() { "/" } else { path.as_str() };
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema_violation",
                format!(
                    "{address} violates the schema for prefix {prefix:?} at {at} (rule {rule}): {message}"
                ),
            ));
        }
        Outcome::CurrentValuesViolate { prefix, keys } => {
            let list: Vec<String> = keys.iter().map(|(k, why)| format!("{k} ({why})")).collect();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "current_values_violate",
                format!(
                    "{} current value(s) violate the schema for prefix {prefix:?}; fix them or register with \"force\": true: {}",
                    keys.len(),
                    list.join("; ")
                ),
            ));
        }
        Outcome::ValueTooLarge {
            address,
            bytes,
            limit,
        } => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                format!("{address}: the patched value is {bytes} bytes; the limit is {limit}"),
            ));
        }
    };
    metrics::counter!("meridian_origin_commits_total").increment(1);
    Ok(applied)
}

async fn put(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let body = body.map_err(body_error)?;
        let (command, reason) = put_command(address.clone(), &body, state.max_value_bytes)?;
        let meta = write_meta(&principal, &request, reason)?;
        let applied = commit(&state, command, meta).await?;
        let mut buf = Vec::with_capacity(128);
        write_entry(
            &mut buf,
            &address.app,
            &address.env,
            &address.key,
            applied.entry().ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the write changed nothing",
                )
            })?,
        );
        Ok(json_bytes(buf))
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

async fn delete(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let q = query(q)?;
        let meta = write_meta(&principal, &request, q.reason)?;
        let applied = commit(
            &state,
            Command::Delete {
                address,
                expect_version: q.expect_version,
            },
            meta,
        )
        .await?;
        Ok(axum::Json(serde_json::json!({"revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}

pub(crate) fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

/// Answers `read(state)` after a linearizable read barrier.
/// A linearizable read. It reflects every acknowledged write, so `min_revision` only fails
/// (504 at once, no wait) for a revision no write has been acknowledged at yet.
async fn linearized_read(
    state: &Arc<AppState>,
    min: Option<(u64, u64)>,
    read: impl FnOnce(&CacheState) -> Result<Vec<u8>, ApiError>,
) -> Result<Response, ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    if let Some((want, _)) = min {
        let have = p.state.revision().0;
        if have < want {
            return Err(reads::revision_not_reached(have, want, 0));
        }
    }
    read(&p.state).map(json_bytes)
}

async fn get_one(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<reads::EntryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let q: reads::EntryQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, min, |s| {
            reads::entry(s, &a, &q, &readable(&principal))
        })
        .await
    };
    inner.await.map_err(count_error)
}

pub(crate) fn namespace(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((app, env)) = path.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("bad path: {e}"),
        )
    })?;
    reads::namespace(&app, &env)?;
    Ok((app, env))
}

async fn list(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q: reads::ListQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, min, |s| {
            reads::list(s, &app, &env, &q, &readable(&principal))
        })
        .await
    };
    inner.await.map_err(count_error)
}

async fn config(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ConfigQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q: reads::ConfigQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, min, |s| {
            reads::config(s, &app, &env, &q, &readable(&principal))
        })
        .await
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// A JSON Merge Patch (RFC 7386).
    patch: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

async fn patch(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let body = body.map_err(body_error)?;
        let (command, reason) = patch_command(address.clone(), &body, state.max_value_bytes)?;
        let meta = write_meta(&principal, &request, reason)?;
        let applied = commit(&state, command, meta).await?;
        let entry = applied.entry().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the patch changed nothing",
            )
        })?;
        let mut buf = Vec::with_capacity(128);
        write_entry(&mut buf, &address.app, &address.env, &address.key, entry);
        Ok(json_bytes(buf))
    };
    inner.await.map_err(count_error)
}

pub use crate::admission::MAX_TXN_ITEMS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    conditions: Vec<TxnCondition>,
    ops: Vec<TxnOpBody>,
    #[serde(default)]
    reason: Option<String>,
}

/// `{"address": "app/env/key"}` plus exactly one of `version`, `exists: true`, `absent: true`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnCondition {
    address: String,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    exists: Option<bool>,
    #[serde(default)]
    absent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum TxnOpBody {
    Put {
        address: String,
        value: serde_json::Value,
    },
    Delete {
        address: String,
    },
}

/// Parses `app/env/key`.
fn parse_address(s: &str) -> Result<Address, ApiError> {
    let mut parts = s.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(app), Some(env), Some(key)) => Ok(Address::parse(app, env, key)?),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("address {s:?} is not app/env/key"),
        )),
    }
}

fn txn_command(body: TxnBody, max_value_bytes: usize) -> Result<Command, ApiError> {
    let items = body.conditions.len() + body.ops.len();
    if items > MAX_TXN_ITEMS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_command",
            format!("{items} conditions and operations; at most {MAX_TXN_ITEMS}"),
        ));
    }
    if body.ops.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_command",
            "a transaction needs at least one operation",
        ));
    }
    let mut conditions = Vec::with_capacity(body.conditions.len());
    for (i, c) in body.conditions.into_iter().enumerate() {
        let a = parse_address(&c.address)?;
        conditions.push(match (c.version, c.exists, c.absent) {
            (Some(v), None, None) => Condition::VersionEquals(a, v),
            (None, Some(true), None) => Condition::Exists(a),
            (None, None, Some(true)) => Condition::Absent(a),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_command",
                    format!(
                        "condition {i} ({}) needs exactly one of \"version\": n, \"exists\": true, \"absent\": true",
                        c.address
                    ),
                ));
            }
        });
    }
    let mut ops = Vec::with_capacity(body.ops.len());
    for op in body.ops {
        ops.push(match op {
            TxnOpBody::Put { address, value } => {
                let text = value.to_string();
                if text.len() > max_value_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "value_too_large",
                        format!(
                            "value for {address} is {} bytes; the limit is {max_value_bytes}",
                            text.len()
                        ),
                    ));
                }
                TxnOp::Put(parse_address(&address)?, text.into())
            }
            TxnOpBody::Delete { address } => TxnOp::Delete(parse_address(&address)?),
        });
    }
    Ok(Command::Txn { conditions, ops })
}

/// Every operation of a transaction needs its own permission (write or delete on its key) and
/// every condition read permission on its key: one refusal refuses the whole transaction.
fn authorize_txn(principal: &Principal, command: &Command) -> Result<(), ApiError> {
    let Command::Txn { conditions, ops } = command else {
        return Ok(());
    };
    fn key(a: &Address) -> Resource<'_> {
        Resource::Key {
            app: &a.app,
            env: &a.env,
            key: &a.key,
        }
    }
    for c in conditions {
        authorize(principal, Action::Read, &key(c.address()))?;
    }
    for op in ops {
        let action = match op {
            TxnOp::Put(..) => Action::Write,
            TxnOp::Delete(_) => Action::Delete,
        };
        authorize(principal, action, &key(op.address()))?;
    }
    Ok(())
}

async fn txn(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let body = body.map_err(body_error)?;
        let (command, reason) = txn_body_command(&body, state.max_value_bytes)?;
        authorize_txn(&principal, &command)?;
        let meta = write_meta(&principal, &request, reason)?;
        check_revision_size(&command, "the transaction")?;
        let applied = commit(&state, command, meta).await?;
        let changed: Vec<_> = applied
            .entries
            .iter()
            .map(|(a, e)| {
                serde_json::json!({
                    "app": a.app, "env": a.env, "key": a.key,
                    "version": e.version.0, "revision": e.revision.0,
                    "deleted": e.is_tombstone(),
                })
            })
            .collect();
        Ok(
            axum::Json(serde_json::json!({"revision": applied.revision.0, "changed": changed}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}

async fn status(State(state): Shared) -> Response {
    let metrics = state.cluster.raft().metrics().borrow().clone();
    let role = format!("{:?}", metrics.state).to_lowercase();
    let (revision, digest) = {
        let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
        (p.state.revision().0, p.state.digest().to_string())
    };
    let edges: Vec<_> = state
        .edges
        .lock()
        .map(|e| {
            e.connected()
                .map(|i| serde_json::json!({"edge_id": i.edge_id, "region": i.region, "acked_revision": i.acked.0}))
                .collect()
        })
        .unwrap_or_default();
    axum::Json(serde_json::json!({
        "node_id": state.node_id,
        "raft_id": metrics.id,
        "role": role,
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "members": metrics.membership_config.membership().nodes().map(|(id, n)| serde_json::json!({"id": id, "addr": n.addr})).collect::<Vec<_>>(),
        "revision": revision,
        "digest": digest,
        "connected_edges": edges,
        "disk_full": state.space.is_full(),
        "disk_free_bytes": state.space.free_bytes_seen(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use meridian_net::auth::Rule;
    use meridian_protocol::auth::Action;

    /// Every route of the client API is registered with its rule (the table is the only way to
    /// add one); none is public, mutations need more than read, and the token and policy
    /// routes need admin on everything.
    #[test]
    fn every_route_passes_an_authorization_decision() {
        let rules = super::routes().rules();
        assert!(rules.len() >= 25, "{} routes", rules.len());
        for (method, path, rule) in rules {
            assert_ne!(rule, Rule::Public, "{method} {path} is public");
            let mutating = method != axum::http::Method::GET;
            if mutating {
                let action = match rule {
                    Rule::Key(a) | Rule::Namespace(a) | Rule::Filtered(a) | Rule::Everything(a) => {
                        a
                    }
                    other => panic!("{method} {path} mutates under {other:?}"),
                };
                assert_ne!(action, Action::Read, "{method} {path} mutates with read");
            }
            if path.starts_with("/v1/tokens") || path.starts_with("/v1/policies") {
                assert_eq!(rule, Rule::Everything(Action::Admin), "{method} {path}");
            }
            if matches!(rule, Rule::Observe | Rule::Identify) {
                assert!(
                    [
                        "/v1/status",
                        "/v1/cluster",
                        "/v1/edges",
                        "/metrics",
                        "/v1/whoami"
                    ]
                    .contains(&path),
                    "{method} {path} is open to every valid caller"
                );
            }
        }
    }
}
