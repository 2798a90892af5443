//! Applied-config drift over HTTP: `POST /v1/applied/{app}/{env}` (a service reporting the
//! revision it applied to this node directly; most report to their edge), and
//! `GET /v1/drift/{app}/{env}`, which merges every member's reports (asked over the private Raft
//! channel at `GET /raft/applied/{app}/{env}`), gathers the facts from this node's history and
//! assesses each instance (`crate::applied`).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_core::changes::{ChangeState, list};
use meridian_core::history::change_revisions;
use meridian_net::http::ApiError;
use meridian_protocol::auth::{PROTECTIONS_ENV, Principal, SYSTEM_APP};
use serde::Deserialize;
use serde_json::json;

use crate::applied::{DEFAULT_SILENT_AFTER_MS, Facts, Heard, assess, levels, merge};
use crate::http::{AppState, Shared, ask_members, body_error, count_error, namespace, query};

/// How long the node asked waits for each other member's reports.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Change records read per page when collecting the approved revisions.
const CHANGES_PAGE: usize = 1000;

/// Query of `GET /v1/drift/{app}/{env}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftQuery {
    /// Silence beyond which an instance is flagged (default 120 s).
    #[serde(default)]
    silent_after_ms: Option<u64>,
}

/// The route the other members ask on the Raft channel.
pub fn peer_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/raft/applied/{app}/{env}", get(local_reports))
        .with_state(state)
}

fn local(state: &AppState, app: &str, env: &str) -> Vec<Heard> {
    state
        .applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .of(app, env)
}

async fn local_reports(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (app, env) = namespace(path)?;
    Ok(axum::Json(json!({"instances": local(&state, &app, &env)})).into_response())
}

/// `POST /v1/applied/{app}/{env}`: an instance applied a revision (202).
#[utoipa::path(post, path = "/v1/applied/{app}/{env}", tag = "operations",
    summary = "Report the revision a service instance applied",
    request_body = meridian_net::openapi::AppliedReport,
    responses((status = 202, description = "Accepted.", body = meridian_net::openapi::AppliedAccepted, example = json!({"app":"payments","env":"prod","instance":"pay-7f9c","revision":41})), (status = 503, description = "`applied_backlog_full`.", body = meridian_net::openapi::ErrorBody))
)]
pub async fn report(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (app, env) = namespace(path).map_err(count_error)?;
    let body = body.map_err(body_error).map_err(count_error)?;
    let report = meridian_net::applied::report(
        &app,
        &env,
        &body,
        &principal,
        meridian_core::history::now_ms(),
    )
    .map_err(count_error)?;
    let answer = json!({
        "app": app, "env": env, "instance": report.instance, "revision": report.revision,
    });
    state
        .applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(report, format!("origin:{}", state.node_id));
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// What this node's history says about `app/env` (and the levels it reads from).
fn facts(state: &AppState, app: &str, env: &str) -> Result<Facts, ApiError> {
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "reading history for drift failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "history could not be read",
        )
    };
    let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
    let rules = core.protections().to_vec();
    let signed = core.state();
    let backend = signed.backend();
    let mut facts = Facts {
        head: signed.revision().0,
        ..Facts::default()
    };
    for (a, e) in levels(app, env) {
        let changes = change_revisions(backend, &a, &e, "").map_err(|e| internal(&e))?;
        facts.changes.push(((a, e), changes));
    }
    let stored = signed.namespace_entries(SYSTEM_APP, PROTECTIONS_ENV);
    for (name, rule) in rules {
        let since = stored
            .iter()
            .find(|(key, _)| *key == name)
            .map_or(0, |(_, e)| e.revision.0);
        facts.rules.push((rule, since));
    }
    let mut after = 0;
    loop {
        let page = list(backend, after, CHANGES_PAGE).map_err(|e| internal(&e))?;
        for c in &page {
            if let ChangeState::Applied {
                revision,
                break_glass: false,
                ..
            } = c.state
            {
                facts.approved.insert(revision);
            }
        }
        match page.last() {
            Some(c) if page.len() == CHANGES_PAGE => after = c.id,
            _ => break,
        }
    }
    Ok(facts)
}

/// `GET /v1/drift/{app}/{env}`: every instance of `app/env` the cluster has heard from, with
/// the revision it runs and its flags.
#[utoipa::path(get, path = "/v1/drift/{app}/{env}", tag = "operations",
    summary = "Applied-config drift: every instance, its revision and flags",
    params(("silent_after_ms" = Option<u64>, Query, description = "Silence beyond which an instance is flagged `silent` (default 120,000).")),
    responses((status = 200, description = "Instances and flags.", body = meridian_net::openapi::DriftView))
)]
pub async fn drift(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DriftQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (app, env) = namespace(path).map_err(count_error)?;
    let q = query(q).map_err(count_error)?;
    let silent_after_ms = q.silent_after_ms.unwrap_or(DEFAULT_SILENT_AFTER_MS);
    let path = format!("/raft/applied/{app}/{env}");
    let (bodies, mut unreachable) = ask_members(&state, &path, PEER_TIMEOUT).await;
    let mut heard = local(&state, &app, &env);
    for body in bodies {
        #[derive(Deserialize)]
        struct Answer {
            instances: Vec<Heard>,
        }
        match serde_json::from_slice::<Answer>(&body) {
            Ok(a) => heard.extend(
                a.instances
                    .into_iter()
                    .filter(|h| h.report.app == app && h.report.env == env),
            ),
            Err(e) => unreachable.push(json!({"error": format!("unreadable answer: {e}")})),
        }
    }
    let heard = merge(heard);
    let facts = facts(&state, &app, &env)?;
    let rows = assess(
        &heard,
        &facts,
        meridian_core::history::now_ms(),
        silent_after_ms,
    );
    let count = |flag: &str| rows.iter().filter(|r| r.flags.contains(&flag)).count();
    Ok(axum::Json(json!({
        "app": app,
        "env": env,
        "revision": facts.head,
        "current_revision": facts.current_revision(""),
        "silent_after_ms": silent_after_ms,
        "instances": rows.len(),
        "flagged": rows.iter().filter(|r| !r.flags.is_empty()).count(),
        "outdated": count("outdated"),
        "unapproved": count("unapproved"),
        "ahead": count("ahead"),
        "silent": count("silent"),
        "rows": rows,
        "unreachable_nodes": unreachable,
    }))
    .into_response())
}
