//! The audit log over HTTP: `GET /v1/audit` (filtered, paged by `seq`) and `GET /v1/audit/head`
//! (the newest record's position and hash, signed with the cluster's key), both for holders of
//! `audit-read`; and the queue that commits refused mutating requests to the log.
//!
//! A refusal is recorded through Raft like any event, but refusals can be sent by anyone who
//! reaches the port, so they wait in a bounded queue and go out in batches: past the bound
//! they are counted (`meridian_audit_refusals_dropped_total`) instead of recorded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use meridian_net::auth::Refusal;
use meridian_net::http::ApiError;
use meridian_protocol::audit::{AuditHead, AuditRecord};
use meridian_store::Backend;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::http::{Shared, cluster_error, count_error, query};
use crate::raft::cluster::Cluster;
use meridian_core::apply::{Command, Proposal};
use meridian_core::audit::{AUDIT_PREFIX, AuditEvent, MAX_AUDIT_EVENTS, record_key};
use meridian_core::history::WriteMeta;

/// Most records one page answers.
pub const MAX_AUDIT_LIMIT: usize = 1000;
/// Most records one request looks at while filtering (a page may come back short, with a
/// cursor to go on from).
pub const MAX_AUDIT_SCAN: usize = 100_000;
/// Most refusals waiting to be recorded.
pub const REFUSAL_QUEUE: usize = 4096;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    until: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    /// Records after this `seq`.
    #[serde(default)]
    cursor: Option<u64>,
}

impl AuditQuery {
    fn keeps(&self, r: &AuditRecord) -> bool {
        let namespace = match (&self.app, &self.env) {
            (None, None) => true,
            (app, env) => {
                let mut parts = r.resource.splitn(3, '/');
                let (a, e) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                app.as_deref().is_none_or(|x| x == a) && env.as_deref().is_none_or(|x| x == e)
            }
        };
        namespace
            && self
                .actor
                .as_deref()
                .is_none_or(|x| r.actor == x || r.actor.starts_with(&format!("{x}#")))
            && self.action.as_deref().is_none_or(|x| r.action == x)
            && self.outcome.as_deref().is_none_or(|x| r.outcome == x)
            && self.since.is_none_or(|t| r.time_ms >= t)
            && self.until.is_none_or(|t| r.time_ms < t)
    }
}

/// `GET /v1/audit?actor=&app=&env=&action=&outcome=&since=&until=&limit=&cursor=`: records in
/// `seq` order, oldest first, and `next_cursor` while there are more to look at.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    summary = "Audit records, oldest first, filtered",
    params(("actor" = Option<String>, Query, description = "`name#id` or the name alone."), ("app" = Option<String>, Query, description = "Records of this app."), ("env" = Option<String>, Query, description = "Records of this environment."), ("action" = Option<String>, Query, description = "`write`, `read-secret`, `change-approve`, …"), ("outcome" = Option<String>, Query, description = "`ok` or a refusal's code."), ("since" = Option<u64>, Query, description = "From this time (ms since the epoch)."), ("until" = Option<u64>, Query, description = "Until this time (ms since the epoch)."), ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1,000)."), ("cursor" = Option<u64>, Query, description = "The last `seq` seen.")),
    responses((status = 200, description = "Records and `next_cursor`.", body = meridian_net::openapi::AuditPage, example = json!({"newest_seq":12,"next_cursor":4,"records":[{"seq":4,"time_ms":1796543210123_u64,"actor":"alice#6c1f0e2a9b3d4c5e","action":"write","resource":"payments/prod/db.url","outcome":"ok","revision":5}]})))
)]
pub(crate) async fn list(
    State(state): Shared,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let q: AuditQuery = query(q)?;
        let limit = q.limit.unwrap_or(100);
        if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_query",
                format!("limit must be between 1 and {MAX_AUDIT_LIMIT}, got {limit}"),
            ));
        }
        state.cluster.linearize().await.map_err(cluster_error)?;
        let from = record_key(q.cursor.map_or(0, |c| c.saturating_add(1)));
        let upper = [AUDIT_PREFIX[0], AUDIT_PREFIX[1] + 1];
        let core = state.core.clone();
        let (pairs, tip) = tokio::task::spawn_blocking(move || {
            let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
            let pairs = core.state().backend().range(&from, &upper, MAX_AUDIT_SCAN);
            (pairs, core.audit_tip())
        })
        .await
        .map_err(|e| internal(&e))?;
        let pairs = pairs.map_err(|e| internal(&e))?;
        let tip = tip.map_err(|e| internal(&e))?;
        let mut records = Vec::new();
        let mut last_seen = None;
        for (_, v) in &pairs {
            let r: AuditRecord = serde_json::from_slice(v).map_err(|e| internal(&e))?;
            last_seen = Some(r.seq);
            if q.keeps(&r) {
                records.push(r);
                if records.len() == limit {
                    break;
                }
            }
        }
        let next_cursor = last_seen.filter(|s| *s < tip.seq);
        Ok(axum::Json(json!({
            "records": records,
            "next_cursor": next_cursor,
            "newest_seq": tip.seq,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/audit/head`: the newest record's `seq` and hash, signed with the cluster's key.
#[utoipa::path(get, path = "/v1/audit/head", tag = "audit",
    summary = "The newest audit record's sequence and hash, signed",
    responses((status = 200, description = "The signed head.", body = meridian_net::openapi::AuditHead, example = json!({"seq":12,"hash":"77c3…","signature":"a9f0…"})))
)]
pub(crate) async fn head(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        state.cluster.linearize().await.map_err(cluster_error)?;
        let head = {
            let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            let tip = core.audit_tip().map_err(|e| internal(&e))?;
            AuditHead::signed(core.signer(), tip.seq, &tip.hash)
        };
        Ok(axum::Json(head).into_response())
    };
    inner.await.map_err(count_error)
}

fn internal(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        e.to_string(),
    )
}

/// Refused mutating requests waiting to be recorded.
#[derive(Clone, Default)]
pub struct RefusalQueue {
    inner: Arc<Mutex<VecDeque<AuditEvent>>>,
}

impl RefusalQueue {
    /// Queues a refused request if it would have changed something (reads are not recorded).
    pub fn push(&self, r: &Refusal) {
        if matches!(r.method, axum::http::Method::GET | axum::http::Method::HEAD) {
            return;
        }
        let event = AuditEvent {
            time_ms: meridian_net::auth::now_ms(),
            actor: r.actor.clone().unwrap_or_else(|| "anonymous".into()),
            action: r.method.as_str().to_ascii_lowercase(),
            resource: r.path.chars().take(512).collect(),
            outcome: match r.status.as_u16() {
                401 => "unauthenticated",
                403 => "forbidden",
                _ => "unsupported_media_type",
            }
            .into(),
            request_id: r.request_id.clone(),
            source: r.client.map(|c| c.to_string()),
            reason: Some(r.message.chars().take(512).collect()),
        };
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= REFUSAL_QUEUE {
            metrics::counter!("meridian_audit_refusals_dropped_total").increment(1);
            return;
        }
        q.push_back(event);
    }

    fn take(&self) -> Vec<AuditEvent> {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(MAX_AUDIT_EVENTS);
        q.drain(..n).collect()
    }
}

/// Commits queued refusals every `interval`, a batch at a time, until shutdown; a batch that
/// cannot be committed (no quorum) is dropped and counted.
pub async fn record_refusals(
    queue: RefusalQueue,
    cluster: Cluster,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            let events = queue.take();
            if events.is_empty() {
                break;
            }
            let n = events.len();
            let proposal = Proposal {
                command: Command::Audit(events),
                meta: WriteMeta {
                    time_ms: meridian_net::auth::now_ms(),
                    actor: "audit".into(),
                    ..Default::default()
                },
            };
            if let Err(e) = cluster.write(proposal).await {
                metrics::counter!("meridian_audit_refusals_dropped_total").increment(n as u64);
                tracing::warn!(error = %e, refusals = n, "refused requests not recorded");
                break;
            }
        }
    }
}
