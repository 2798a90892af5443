//! The node's own state: `GET /v1/status`, `GET /v1/cluster` and `GET /metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::http::{ApiError, metrics_endpoint};

use super::Shared;

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The text exposition format."))
)]
pub(crate) async fn metrics() -> Response {
    metrics_endpoint().await
}

#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    summary = "Cluster membership and replication progress",
    responses((status = 200, description = "Membership.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn cluster_status(State(state): Shared) -> Response {
    axum::Json(crate::raft::admin::describe(state.cluster.raft())).into_response()
}

#[utoipa::path(get, path = "/v1/status", tag = "operations",
    summary = "This node: role, leader, term, members, revision, digest",
    responses((status = 200, description = "The node's status.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn status(State(state): Shared) -> Response {
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

/// `GET /v1/backup`: a consistent, signed snapshot of everything every acknowledged write
/// made (read linearizably, built without pausing writes), as a backup file
/// ([`crate::backup`]); `meridian restore` starts a fresh cluster from it.
#[utoipa::path(get, path = "/v1/backup", tag = "governance",
    summary = "A consistent, signed backup of the cluster",
    responses((status = 200, description = "The backup file (`application/octet-stream`); `meridian-revision` names its revision."), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn backup(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        state
            .cluster
            .linearize()
            .await
            .map_err(crate::http::cluster_error)?;
        let (info, bytes) = crate::backup::take(&state.state_machine, &state.node_id)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "backup_failed",
                    e.to_string(),
                )
            })?;
        metrics::counter!("meridian_origin_backups_total").increment(1);
        tracing::info!(
            revision = info.revision,
            bytes = bytes.len(),
            "backup taken"
        );
        Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/octet-stream".to_owned(),
                ),
                (
                    axum::http::HeaderName::from_static("meridian-revision"),
                    info.revision.to_string(),
                ),
            ],
            bytes,
        )
            .into_response())
    };
    inner.await.map_err(crate::http::count_error)
}
