//! The origin's HTTP write API (DESIGN §4): PUT, DELETE, GET, prefix list and status, with JSON
//! errors for every refusal.

use std::sync::{Arc, Mutex};

use crate::raft::Outcome;
use crate::raft::cluster::{Cluster, ClusterError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_net::http::{
    ApiError, json_bytes, method_not_allowed, metrics_endpoint, render_list, unknown_route,
    write_entry,
};
use meridian_protocol::Address;
use meridian_protocol::addr::validate_key_prefix;
use meridian_store::Reader;
use serde::Deserialize;

use crate::core::Command;
use crate::distributor::EdgeInfo;

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
    /// Connected edges as last reported by the distributor.
    pub edges: Arc<Mutex<Vec<EdgeInfo>>>,
}

type Shared = State<Arc<AppState>>;

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_value_bytes + 64 * 1024;
    Router::new()
        .route(
            "/v1/kv/{app}/{env}/{key}",
            get(get_one).put(put).delete(delete),
        )
        .route("/v1/kv/{app}/{env}", get(list))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics_endpoint))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn count_error(e: ApiError) -> ApiError {
    metrics::counter!("meridian_origin_rejected_requests_total", "code" => e.code).increment(1);
    e
}

fn address(
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
    #[allow(dead_code)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

fn body_error(e: BytesRejection) -> ApiError {
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

fn cluster_error(e: ClusterError) -> ApiError {
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

/// Commits a write through Raft; acknowledged only once committed and applied.
async fn commit(state: &Arc<AppState>, command: Command) -> Result<crate::core::Applied, ApiError> {
    let applied = match state.cluster.write(command).await.map_err(cluster_error)? {
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
    };
    metrics::counter!("meridian_origin_commits_total").increment(1);
    Ok(applied)
}

async fn put(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let body = body.map_err(body_error)?;
        let parsed: PutBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
        let text = parsed.value.to_string();
        if text.len() > state.max_value_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                format!(
                    "value is {} bytes; the limit is {}",
                    text.len(),
                    state.max_value_bytes
                ),
            ));
        }
        let applied = commit(
            &state,
            Command::Put {
                address: address.clone(),
                value: text.into(),
                expect_version: parsed.expect_version,
            },
        )
        .await?;
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

async fn delete(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let applied = commit(
            &state,
            Command::Delete {
                address,
                expect_version: None,
            },
        )
        .await?;
        Ok(axum::Json(serde_json::json!({"revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}

async fn get_one(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let a = address(path).map_err(count_error)?;
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let entry = p
        .state
        .get_live(&a.app, &a.env, &a.key)
        .ok_or_else(|| ApiError::not_found(&a))?;
    let mut buf = Vec::with_capacity(128);
    write_entry(&mut buf, &a.app, &a.env, &a.key, entry);
    Ok(json_bytes(buf))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

async fn list(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((app, env)) = path.map_err(|e| {
        count_error(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("bad path: {e}"),
        ))
    })?;
    let Query(q) = query.map_err(|e| {
        count_error(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            e.body_text(),
        ))
    })?;
    meridian_protocol::addr::validate_app(&app).map_err(|e| count_error(e.into()))?;
    meridian_protocol::addr::validate_env(&env).map_err(|e| count_error(e.into()))?;
    validate_key_prefix(&q.prefix).map_err(|e| count_error(e.into()))?;
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let items = p.state.namespace(&app, &env).into_iter().flat_map(|ns| {
        ns.range(q.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&q.prefix))
    });
    Ok(json_bytes(render_list(
        p.state.revision().0,
        &app,
        &env,
        items,
    )))
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
            e.iter()
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
    }))
    .into_response()
}
