//! `GET /v1/edges`: every edge the cluster has heard from, asked of any node. Each node knows
//! the edges connected to it; the node asked merges its own view with every other member's
//! (fetched over the private Raft channel at `GET /raft/edges`), keeping for each edge the
//! freshest report, and names the members it could not reach.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_net::http::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{AppState, Shared, ask_members, count_error, query};

/// How long the node asked waits for each other member's view.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Query of `GET /v1/edges` and `GET /raft/edges`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgesQuery {
    /// Lag beyond which an edge is flagged (default 10 s).
    #[serde(default)]
    lag_threshold_ms: Option<u64>,
}

/// The route the other members ask on the Raft channel.
pub fn peer_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/raft/edges", get(local_edges))
        .with_state(state)
}

/// This node's own rows, as JSON.
fn local_rows(state: &AppState, threshold_ms: u64) -> Vec<Value> {
    let known = state
        .edges
        .lock()
        .map(|e| e.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let rows = {
        let core = state.core.lock().unwrap_or_else(|e| e.into_inner());
        crate::drift::rows(&known, core.state(), Instant::now(), threshold_ms)
    };
    crate::drift::export(&rows);
    rows.iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect()
}

fn threshold(q: &EdgesQuery) -> u64 {
    q.lag_threshold_ms
        .unwrap_or(crate::drift::DEFAULT_LAG_THRESHOLD_MS)
}

async fn local_edges(
    State(state): Shared,
    q: Result<Query<EdgesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    Ok(axum::Json(json!({"edges": local_rows(&state, threshold(&q))})).into_response())
}

/// Keeps, for each edge, the row with the freshest report.
fn merge(rows: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut merged: std::collections::BTreeMap<String, Value> = Default::default();
    for row in rows {
        let Some(id) = row["edge_id"].as_str().map(str::to_owned) else {
            continue;
        };
        let fresher = merged
            .get(&id)
            .is_none_or(|old| row["last_report_ms"].as_u64() < old["last_report_ms"].as_u64());
        if fresher {
            merged.insert(id, row);
        }
    }
    merged.into_values().collect()
}

/// `GET /v1/edges`: every edge the cluster has heard from, with revision, digest match, lag
/// and last report, flagged `diverged`, `lagging` or `disconnected`.
#[utoipa::path(get, path = "/v1/edges", tag = "operations",
    summary = "Every edge the cluster heard from, with revision, digest match and lag",
    params(("lag_threshold_ms" = Option<u64>, Query, description = "Lag beyond which an edge is flagged `lagging` (default 10,000).")),
    responses((status = 200, description = "Edges and their flags.", body = meridian_net::openapi::EdgesView))
)]
pub async fn edges(
    State(state): Shared,
    q: Result<Query<EdgesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q).map_err(count_error)?;
    let threshold_ms = threshold(&q);
    let path = format!("/raft/edges?lag_threshold_ms={threshold_ms}");
    let (bodies, mut unreachable) = ask_members(&state, &path, PEER_TIMEOUT).await;
    let mut rows = local_rows(&state, threshold_ms);
    for body in bodies {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => rows.extend(v["edges"].as_array().cloned().unwrap_or_default()),
            Err(e) => unreachable.push(json!({"error": format!("unreadable answer: {e}")})),
        }
    }
    let rows = merge(rows);
    let flagged = rows
        .iter()
        .filter(|r| r["flags"].as_array().is_some_and(|f| !f.is_empty()))
        .count();
    let revision = state
        .reader
        .read()
        .map(|p| p.state.revision().0)
        .unwrap_or_else(|e| e.into_inner().state.revision().0);
    Ok(axum::Json(json!({
        "node_id": state.node_id,
        "revision": revision,
        "lag_threshold_ms": threshold_ms,
        "flagged": flagged,
        "edges": rows,
        "unreachable_nodes": unreachable,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshest_report_of_each_edge_wins() {
        let rows = vec![
            json!({"edge_id": "a", "last_report_ms": 900, "revision": 1}),
            json!({"edge_id": "b", "last_report_ms": 5, "revision": 7}),
            json!({"edge_id": "a", "last_report_ms": 10, "revision": 3}),
            json!({"no_id": true}),
        ];
        let merged = merge(rows);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0]["revision"], 3);
        assert_eq!(merged[1]["revision"], 7);
    }
}
