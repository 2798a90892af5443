//! The edge's local read API (DESIGN §4): single keys, prefix lists, resolved config, status and
//! metrics, each answer stamped with `meridian-revision` and `meridian-staleness-ms`. Reads are
//! served from the in-memory published state; no read touches disk or the network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_net::http::{
    ApiError, json_bytes, method_not_allowed, metrics_endpoint, render_list, unknown_route,
    write_entry,
};
use meridian_protocol::addr::{WILDCARD, validate_app, validate_env, validate_key_prefix};
use meridian_protocol::{Address, EntryState};
use serde::Deserialize;

use crate::shared::EdgeShared;

const REVISION: HeaderName = HeaderName::from_static("meridian-revision");
const STALENESS: HeaderName = HeaderName::from_static("meridian-staleness-ms");

type Shared = State<Arc<EdgeShared>>;

/// Builds the router.
pub fn router(shared: Arc<EdgeShared>) -> Router {
    Router::new()
        .route("/v1/kv/{app}/{env}/{key}", get(get_one))
        .route("/v1/kv/{app}/{env}", get(list))
        .route("/v1/config/{app}/{env}", get(config))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics_endpoint))
        .fallback(unknown_route)
        .method_not_allowed_fallback(read_only)
        .with_state(shared)
}

async fn read_only(method: axum::http::Method) -> ApiError {
    let mut e = method_not_allowed(method).await;
    e.message
        .push_str("; edges are read-only, write at the origin");
    e
}

fn stamp(mut r: Response, shared: &EdgeShared, revision: u64) -> Response {
    let h = r.headers_mut();
    h.insert(REVISION, HeaderValue::from(revision));
    h.insert(
        STALENESS,
        HeaderValue::from(shared.staleness_ms(Instant::now())),
    );
    r
}

fn counted(shared: &EdgeShared, e: ApiError) -> Response {
    metrics::counter!("meridian_edge_rejected_requests_total", "edge" => shared.edge_id.clone(), "code" => e.code)
        .increment(1);
    let revision = shared
        .reader
        .read()
        .map(|p| p.state.revision().0)
        .unwrap_or(0);
    stamp(e.into_response(), shared, revision)
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        format!("bad path: {e}"),
    )
}

async fn get_one(
    State(shared): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Response {
    let address = match path
        .map_err(bad_path)
        .and_then(|Path((a, e, k))| Ok(Address::parse(&a, &e, &k)?))
    {
        Ok(a) => a,
        Err(e) => return counted(&shared, e),
    };
    let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
    let revision = p.state.revision().0;
    match p.state.get_live(&address.app, &address.env, &address.key) {
        Some(entry) => {
            let mut buf = Vec::with_capacity(96 + entry.value.as_ref().map_or(0, |v| v.len()));
            write_entry(&mut buf, &address.app, &address.env, &address.key, entry);
            drop(p);
            stamp(json_bytes(buf), &shared, revision)
        }
        None => {
            drop(p);
            stamp(
                ApiError::not_found(&address).into_response(),
                &shared,
                revision,
            )
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

fn namespace(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((app, env)) = path.map_err(bad_path)?;
    validate_app(&app)?;
    validate_env(&env)?;
    Ok((app, env))
}

async fn list(
    State(shared): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let parsed = namespace(path).and_then(|ns| {
        let Query(q) = query
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
        validate_key_prefix(&q.prefix)?;
        Ok((ns, q.prefix))
    });
    let ((app, env), prefix) = match parsed {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
    let revision = p.state.revision().0;
    let items = p.state.namespace(&app, &env).into_iter().flat_map(|ns| {
        ns.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
    });
    let body = render_list(revision, &app, &env, items);
    drop(p);
    stamp(json_bytes(body), &shared, revision)
}

/// Resolves the config of `(app, env)`: `app/env` > `app/_` > `_/env` > `_/_`.
pub fn resolve<'a>(
    state: &'a meridian_protocol::CacheState,
    app: &str,
    env: &str,
) -> BTreeMap<&'a str, &'a EntryState> {
    let mut out = BTreeMap::new();
    for (a, e) in [
        (WILDCARD, WILDCARD),
        (WILDCARD, env),
        (app, WILDCARD),
        (app, env),
    ] {
        if let Some(ns) = state.namespace(a, e) {
            for (k, entry) in ns {
                if entry.is_tombstone() {
                    continue;
                }
                out.insert(k.as_str(), entry);
            }
        }
    }
    out
}

async fn config(
    State(shared): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (app, env) = match namespace(path) {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
    let revision = p.state.revision().0;
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"app\":");
    buf.extend_from_slice(serde_json::to_string(&app).unwrap_or_default().as_bytes());
    buf.extend_from_slice(b",\"env\":");
    buf.extend_from_slice(serde_json::to_string(&env).unwrap_or_default().as_bytes());
    buf.extend_from_slice(format!(",\"revision\":{revision},\"config\":{{").as_bytes());
    for (i, (k, entry)) in resolve(&p.state, &app, &env).into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
        buf.push(b':');
        buf.extend_from_slice(entry.value.as_deref().unwrap_or("null").as_bytes());
    }
    buf.extend_from_slice(b"}}");
    drop(p);
    stamp(json_bytes(buf), &shared, revision)
}

async fn status(State(shared): Shared) -> Response {
    let (revision, digest) = {
        let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
        (p.state.revision().0, p.state.digest().to_string())
    };
    let stats = shared.stats();
    let body = serde_json::json!({
        "region": shared.region,
        "edge_id": shared.edge_id,
        "revision": revision,
        "digest": digest,
        "origin_connected": shared.origin_connected.load(Ordering::Relaxed),
        "lag_ms": shared.lag_ms.load(Ordering::Relaxed),
        "newest_known_revision": shared.newest_known.load(Ordering::Relaxed),
        "deltas_applied": stats.deltas_applied,
        "snapshots_installed": stats.snapshots_installed,
        "rejected": {
            "bad_signature": stats.rejected_bad_signature,
            "unknown_key": stats.rejected_unknown_key,
            "delta_mismatch": stats.rejected_delta_mismatch,
            "digest_mismatch": stats.rejected_digest_mismatch,
            "malformed": stats.rejected_malformed,
            "unexpected": stats.rejected_unexpected,
        },
    });
    stamp(axum::Json(body).into_response(), &shared, revision)
}
