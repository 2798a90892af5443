//! The origin's client API (DESIGN §4): one module per resource, every route registered with
//! its authorization rule in [`routes`], and the helpers they share: the request's metadata,
//! commits through Raft and the mapping of a commit's outcome to a status and code (made here,
//! once), JSON bodies and paths.

pub mod applied;
pub mod audit;
pub mod changes;
pub mod edges;
pub mod flags;
pub mod history;
pub mod kv;
pub mod namespaces;
pub mod openapi;
pub mod protections;
pub mod rollouts;
pub mod schemas;
pub mod secrets;
pub mod status;
pub mod tokens;
pub mod ui;
pub mod webhooks;

use std::sync::{Arc, Mutex};

use crate::raft::Outcome;
use crate::raft::cluster::{Cluster, ClusterError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::Method;
use axum::http::StatusCode;
use meridian_net::auth::{Gate, RequestMeta, RouteTable, Rule};
use meridian_net::http::{ApiError, method_not_allowed, unknown_route};
use meridian_net::reads;
use meridian_protocol::Address;
use meridian_protocol::auth::{Action, Principal};
use meridian_store::Reader;

use crate::drift::KnownEdges;
use meridian_core::apply::{Command, Proposal};
use meridian_core::history::{MAX_ACTOR_BYTES, MAX_REASON_BYTES, WriteMeta};

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
    /// The key-encryption keys and data keys (none: secrets are not configured).
    pub keyring: Option<Arc<crate::secrets::Keyring>>,
    /// The state machine, for backups.
    pub state_machine: crate::raft::state_machine::StateMachine,
    /// Which revision service instances applied, as heard by this node.
    pub applied: Arc<Mutex<crate::applied::AppliedTable>>,
}

pub(crate) type Shared = State<Arc<AppState>>;

/// Every route of the client API and the rule that authorizes it.
pub fn routes() -> RouteTable<Arc<AppState>> {
    use Action::{
        Admin, Approve, AuditRead, Delete, Flag, Read, Rollback, Schema, SecretWrite, Write,
    };
    use Method as M;
    use Rule::{Everything, Filtered, Key, Namespace, Observe};
    RouteTable::new()
        .route(M::GET, "/v1/kv/{app}/{env}/{key}", Key(Read), kv::get_one)
        .route(M::PUT, "/v1/kv/{app}/{env}/{key}", Key(Write), kv::put)
        .route(M::PATCH, "/v1/kv/{app}/{env}/{key}", Key(Write), kv::patch)
        .route(
            M::DELETE,
            "/v1/kv/{app}/{env}/{key}",
            Key(Delete),
            kv::delete,
        )
        .route(M::GET, "/v1/kv/{app}/{env}", Filtered(Read), kv::list)
        .route(M::GET, "/v1/namespaces", Filtered(Read), namespaces::list)
        .route(
            M::GET,
            "/v1/kv/{app}/{env}/{key}/history",
            Key(Read),
            history::history,
        )
        .route(
            M::GET,
            "/v1/kv/{app}/{env}/{key}/diff",
            Key(Read),
            history::key_diff,
        )
        .route(
            M::POST,
            "/v1/kv/{app}/{env}/{key}/rollback",
            Key(Rollback),
            history::key_rollback,
        )
        .route(
            M::GET,
            "/v1/diff/{app}/{env}",
            Filtered(Read),
            history::env_diff,
        )
        .route(
            M::POST,
            "/v1/rollback/{app}/{env}",
            Namespace(Rollback),
            history::env_rollback,
        )
        .route(
            M::GET,
            "/v1/schemas/{app}/{env}/{prefix}",
            Namespace(Read),
            schemas::get_schema,
        )
        .route(
            M::PUT,
            "/v1/schemas/{app}/{env}/{prefix}",
            Namespace(Schema),
            schemas::put_schema,
        )
        .route(
            M::DELETE,
            "/v1/schemas/{app}/{env}/{prefix}",
            Namespace(Schema),
            schemas::delete_schema,
        )
        .route(
            M::GET,
            "/v1/schemas/{app}/{env}",
            Filtered(Read),
            schemas::list_schemas,
        )
        .route(M::GET, "/v1/config/{app}/{env}", Filtered(Read), kv::config)
        .route(
            M::GET,
            "/v1/flags/{app}/{env}",
            Namespace(Read),
            flags::get_document,
        )
        .route(
            M::PUT,
            "/v1/flags/{app}/{env}",
            Namespace(Flag),
            flags::put_document,
        )
        .route(
            M::GET,
            "/v1/flags/{app}/{env}/{flag}",
            Namespace(Read),
            flags::get_flag,
        )
        .route(
            M::PUT,
            "/v1/flags/{app}/{env}/{flag}",
            Namespace(Flag),
            flags::put_flag,
        )
        .route(
            M::DELETE,
            "/v1/flags/{app}/{env}/{flag}",
            Namespace(Flag),
            flags::delete_flag,
        )
        .route(
            M::GET,
            "/v1/flags/{app}/{env}/{flag}/history",
            Namespace(Read),
            flags::history,
        )
        .route(
            M::POST,
            "/v1/flags/{app}/{env}/{flag}/rollout",
            Namespace(Flag),
            rollouts::start,
        )
        .route(
            M::GET,
            "/v1/flags/{app}/{env}/{flag}/rollout",
            Namespace(Read),
            rollouts::get,
        )
        .route(
            M::POST,
            "/v1/flags/{app}/{env}/{flag}/rollout/{action}",
            Namespace(Flag),
            rollouts::steer,
        )
        .route(
            M::PUT,
            "/v1/flags/{app}/{env}/{flag}/schedule",
            Namespace(Flag),
            rollouts::put_schedule,
        )
        .route(
            M::GET,
            "/v1/flags/{app}/{env}/{flag}/schedule",
            Namespace(Read),
            rollouts::get_schedule,
        )
        .route(
            M::DELETE,
            "/v1/flags/{app}/{env}/{flag}/schedule",
            Namespace(Flag),
            rollouts::delete_schedule,
        )
        .route(
            M::GET,
            "/v1/flags/{app}/{env}/{flag}/exposures",
            Namespace(Read),
            flags::exposures,
        )
        .route(
            M::GET,
            "/v1/flags/{app}/{env}/{flag}/diff",
            Namespace(Read),
            flags::diff,
        )
        .route(
            M::POST,
            "/v1/flags/{app}/{env}/{flag}/rollback",
            Namespace(Flag),
            flags::rollback,
        )
        .route(
            M::POST,
            "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags",
            Namespace(Read),
            flags::ofrep_bulk,
        )
        .route(
            M::POST,
            "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{flag}",
            Namespace(Read),
            flags::ofrep_one,
        )
        // The token names the app/env: the handler authorizes the read there.
        .route(
            M::POST,
            "/ofrep/v1/evaluate/flags",
            Rule::Identify,
            flags::scoped_bulk,
        )
        .route(
            M::POST,
            "/ofrep/v1/evaluate/flags/{flag}",
            Rule::Identify,
            flags::scoped_one,
        )
        .route(
            M::GET,
            "/v1/secrets/{app}/{env}/{key}",
            Key(Read),
            secrets::get,
        )
        .route(
            M::PUT,
            "/v1/secrets/{app}/{env}/{key}",
            Key(SecretWrite),
            secrets::put,
        )
        .route(
            M::DELETE,
            "/v1/secrets/{app}/{env}/{key}",
            Key(SecretWrite),
            secrets::delete,
        )
        .route(
            M::POST,
            "/v1/secrets/{app}/{env}/{key}/rotate",
            Key(SecretWrite),
            secrets::rotate,
        )
        .route(
            M::GET,
            "/v1/secrets/{app}/{env}",
            Filtered(Read),
            secrets::list,
        )
        .route(M::GET, "/v1/secrets/due", Filtered(Read), secrets::due)
        .route(M::GET, "/v1/secret-keys", Everything(Admin), secrets::keys)
        .route(
            M::POST,
            "/v1/secret-keys/rotate",
            Everything(Admin),
            secrets::rotate_kek,
        )
        .route(
            M::POST,
            "/v1/secret-keys/{app}/{env}/rotate",
            Namespace(SecretWrite),
            secrets::rotate_data_key,
        )
        .route(M::POST, "/v1/txn", Filtered(Write), kv::txn)
        .route(M::POST, "/v1/changes", Filtered(Write), changes::create)
        .route(M::GET, "/v1/changes", Filtered(Read), changes::list)
        .route(M::GET, "/v1/changes/{id}", Filtered(Read), changes::show)
        .route(
            M::POST,
            "/v1/changes/{id}/approve",
            Filtered(Approve),
            changes::approve,
        )
        .route(
            M::POST,
            "/v1/changes/{id}/reject",
            Filtered(Approve),
            changes::reject,
        )
        .route(
            M::POST,
            "/v1/changes/{id}/comments",
            Filtered(Read),
            changes::comment,
        )
        .route(
            M::POST,
            "/v1/changes/{id}/cancel",
            Filtered(Write),
            changes::cancel,
        )
        .route(
            M::POST,
            "/v1/changes/{id}/refresh",
            Filtered(Write),
            changes::refresh,
        )
        .route(
            M::POST,
            "/v1/changes/{id}/apply",
            Filtered(Write),
            changes::apply,
        )
        .route(
            M::GET,
            "/v1/protections",
            Everything(Admin),
            protections::list,
        )
        .route(
            M::GET,
            "/v1/protections/{name}",
            Everything(Admin),
            protections::get,
        )
        .route(
            M::PUT,
            "/v1/protections/{name}",
            Everything(Admin),
            protections::put,
        )
        .route(
            M::DELETE,
            "/v1/protections/{name}",
            Everything(Admin),
            protections::delete,
        )
        .route(M::POST, "/v1/tokens", Everything(Admin), tokens::create)
        .route(M::GET, "/v1/tokens", Everything(Admin), tokens::list)
        .route(
            M::DELETE,
            "/v1/tokens/{id}",
            Everything(Admin),
            tokens::revoke,
        )
        .route(
            M::GET,
            "/v1/policies",
            Everything(Admin),
            tokens::list_policies,
        )
        .route(
            M::GET,
            "/v1/policies/{name}",
            Everything(Admin),
            tokens::get_policy,
        )
        .route(
            M::PUT,
            "/v1/policies/{name}",
            Everything(Admin),
            tokens::put_policy,
        )
        .route(
            M::DELETE,
            "/v1/policies/{name}",
            Everything(Admin),
            tokens::delete_policy,
        )
        .route(M::GET, "/v1/whoami", Rule::Identify, tokens::whoami)
        .route(M::GET, "/v1/audit", Everything(AuditRead), audit::list)
        .route(M::GET, "/v1/audit/head", Everything(AuditRead), audit::head)
        .route(M::GET, "/v1/backup", Everything(Admin), status::backup)
        .route(M::POST, "/v1/webhooks", Everything(Admin), webhooks::create)
        .route(M::GET, "/v1/webhooks", Everything(Admin), webhooks::list)
        .route(
            M::DELETE,
            "/v1/webhooks/{id}",
            Everything(Admin),
            webhooks::delete,
        )
        .route(
            M::GET,
            "/v1/webhooks/{id}/deliveries",
            Everything(Admin),
            webhooks::deliveries,
        )
        .route(M::GET, "/v1/status", Observe, status::status)
        .route(M::GET, "/v1/cluster", Observe, status::cluster_status)
        .route(M::GET, "/v1/edges", Observe, edges::edges)
        .route(
            M::POST,
            "/v1/applied/{app}/{env}",
            Namespace(Read),
            applied::report,
        )
        .route(
            M::GET,
            "/v1/drift/{app}/{env}",
            Namespace(Read),
            applied::drift,
        )
        .route(M::GET, "/metrics", Observe, status::metrics)
        .route(M::GET, "/v1/openapi.json", Observe, openapi::document)
        // The admin UI's page and assets hold no data: the page asks for a token.
        .route(M::GET, "/ui", Rule::Public, ui::page)
        .route(M::GET, "/ui/{*path}", Rule::Public, ui::file)
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
    let time_ms = meridian_core::history::now_ms();
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
) -> Result<meridian_core::apply::Applied, ApiError> {
    check_revision_size(&command, "the write")?;
    state
        .space
        .check()
        .map_err(crate::disk::insufficient_storage)?;
    let proposal = Proposal { command, meta };
    let applied = match state.cluster.write(proposal).await.map_err(cluster_error)? {
        Outcome::Applied(a) => a,
        Outcome::Change(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::CONFLICT);
            return Err(ApiError::new(status, e.code(), e.to_string()));
        }
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
        Outcome::SecretKey(a) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "secret_key",
                format!(
                    "{a} holds a secret: write it with PUT /v1/secrets/{{app}}/{{env}}/{{key}}, or delete it first"
                ),
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

pub(crate) fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

/// Asks every other member of the cluster `GET path` on the private Raft channel, at most
/// `timeout` each, all at once: the bodies of those that answered 2xx, and for the others
/// `{"id", "addr", "error"}` (for `unreachable_nodes`).
pub(crate) async fn ask_members(
    state: &AppState,
    path: &str,
    timeout: std::time::Duration,
) -> (Vec<Bytes>, Vec<serde_json::Value>) {
    let metrics = state.cluster.raft().metrics().borrow().clone();
    let mut asks = tokio::task::JoinSet::new();
    for (id, node) in metrics
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != metrics.id)
    {
        let (id, addr, peers, path) =
            (*id, node.addr.clone(), state.peers.clone(), path.to_owned());
        asks.spawn(async move {
            let answer = match peers
                .request(Method::GET, &addr, &path, Vec::new(), timeout)
                .await
            {
                Ok((status, body)) if status.is_success() => Ok(body),
                Ok((status, _)) => Err(format!("answered {status}")),
                Err(e) => Err(e.to_string()),
            };
            (id, addr, answer)
        });
    }
    let (mut bodies, mut unreachable) = (Vec::new(), Vec::new());
    while let Some(asked) = asks.join_next().await {
        match asked {
            Ok((_, _, Ok(body))) => bodies.push(body),
            Ok((id, addr, Err(e))) => {
                unreachable.push(serde_json::json!({"id": id, "addr": addr, "error": e}));
            }
            Err(e) => tracing::warn!(error = %e, "asking a member failed"),
        }
    }
    (bodies, unreachable)
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

#[cfg(test)]
mod tests {
    use meridian_net::auth::Rule;
    use meridian_protocol::auth::Action;

    /// Every route of the client API is registered with its rule (the table is the only way to
    /// add one); none is public but the admin UI's assets, mutations need more than read, and the token and policy
    /// routes need admin on everything.
    #[test]
    fn every_route_passes_an_authorization_decision() {
        let rules = super::routes().rules();
        assert!(rules.len() >= 25, "{} routes", rules.len());
        for (method, path, rule) in rules {
            if !path.starts_with("/ui") {
                assert_ne!(rule, Rule::Public, "{method} {path} is public");
            }
            // OFREP evaluation is a read that POSTs its context.
            let mutating = method != axum::http::Method::GET && !path.contains("/ofrep/");
            if path.starts_with("/v1/flags/") && path.contains("/ofrep/") {
                assert_eq!(rule, Rule::Namespace(Action::Read), "{method} {path}");
            }
            if mutating && path.starts_with("/v1/flags/") {
                assert_eq!(rule, Rule::Namespace(Action::Flag), "{method} {path}");
            }
            if mutating {
                let action = match rule {
                    Rule::Key(a) | Rule::Namespace(a) | Rule::Filtered(a) | Rule::Everything(a) => {
                        a
                    }
                    other => panic!("{method} {path} mutates under {other:?}"),
                };
                // A comment on a change needs write or approve on its keys, which one rule
                // cannot say: the route admits readers and the handler checks each key. A
                // service reporting what it applied changes no state: its readers may.
                if path != "/v1/changes/{id}/comments" && path != "/v1/applied/{app}/{env}" {
                    assert_ne!(action, Action::Read, "{method} {path} mutates with read");
                }
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
                        "/v1/openapi.json",
                        "/v1/whoami",
                        "/ofrep/v1/evaluate/flags",
                        "/ofrep/v1/evaluate/flags/{flag}"
                    ]
                    .contains(&path),
                    "{method} {path} is open to every valid caller"
                );
            }
        }
    }
}
