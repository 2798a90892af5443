//! The origin's history endpoints: a key's history page by page, the diff of a key between two
//! versions and of an environment between two revisions, and rollbacks of a key to a version
//! or of an environment to a revision, each committed as one new revision with its reason
//! (history is never rewritten). Reads follow a linearizable barrier, so any node answers
//! what the cluster committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::RequestMeta;
use meridian_net::auth::readable;
use meridian_net::http::{ApiError, json_bytes, write_entry};
use meridian_protocol::Address;
use meridian_protocol::auth::Principal;
use meridian_store::DetachedView;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{
    AppState, Shared, address, cluster_error, commit, count_error, namespace, parse_body, query,
    write_meta,
};
use meridian_core::history::{self, HistoryRecord, NamespaceAt, json_diff};

/// Largest history page.
pub const MAX_PAGE: usize = 1_000;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

/// A recorded value as history and diffs show it: a secret masked (its fingerprint).
fn parse_value(r: &HistoryRecord) -> Option<Value> {
    r.value
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .map(meridian_protocol::secrets::masked_json)
}

fn record_json(r: &HistoryRecord) -> Value {
    json!({
        "version": r.version,
        "revision": r.revision,
        "value": parse_value(r),
        "deleted": r.value.is_none(),
        "time_ms": r.time_ms,
        "actor": r.actor,
        "reason": r.reason,
    })
}

type Core = meridian_core::apply::OriginCore<crate::raft::state_machine::StateBackend>;

/// After a linearizable barrier, what `snap` reads from the core and a [`DetachedView`] of the
/// history records under `prefix`, holding the core's lock (which every Raft apply takes) only
/// for that: the history itself is read from the view afterwards, off the lock.
async fn history_view<L>(
    state: &Arc<AppState>,
    prefix: &[u8],
    snap: impl FnOnce(&Core) -> L,
) -> Result<(DetachedView, L), ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let core = state.core.lock().unwrap_or_else(|e| e.into_inner());
    let taken = snap(&core);
    Ok((core.state().backend().detached_view(prefix), taken))
}

/// Runs a history read on a blocking thread (sled reads block; a namespace scan is long).
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(read).await.map_err(internal)?
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: Option<u64>,
}

/// `GET /v1/kv/{app}/{env}/{key}/history?limit=N&before=V`: newest first; `next_before` pages on.
#[utoipa::path(get, path = "/v1/kv/{app}/{env}/{key}/history", tag = "history",
    summary = "A key's versions, newest first",
    params(("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1,000)."), ("before" = Option<u64>, Query, description = "Versions before this one.")),
    responses((status = 200, description = "Versions with time, actor and reason; `next_before` pages on.", body = meridian_net::openapi::HistoryPage, example = json!({"app":"payments","env":"prod","key":"pool","next_before":null,"items":[{"version":1,"revision":5,"deleted":false,"value":{"max":10},"time_ms":1795311497444_u64,"actor":"alice#6c1f0e2a9b3d4c5e","reason":"resize"}]})))
)]
pub(crate) async fn history(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        history_of(&state, a, query(q)?).await
    };
    inner.await.map_err(count_error)
}

/// The history of one record (a key, or a flag's record).
pub(crate) async fn history_of(
    state: &Arc<AppState>,
    a: Address,
    q: HistoryQuery,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad_query(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let (view, ()) = history_view(state, &history::key_prefix(&a), |_| ()).await?;
    let at = a.clone();
    let (records, next) =
        blocking(move || history::page(&view, &at, q.before, limit).map_err(internal)).await?;
    if records.is_empty() && q.before.is_none() {
        return Err(ApiError::not_found(format!("history of {a}")));
    }
    Ok(axum::Json(json!({
        "app": a.app, "env": a.env, "key": a.key,
        "items": records.iter().map(record_json).collect::<Vec<_>>(),
        "next_before": next,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyDiffQuery {
    from: u64,
    #[serde(default)]
    to: Option<u64>,
}

fn version_not_found(a: &Address, v: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "version_not_found",
        format!("{a} has no retained version {v} (history keeps a bounded number of versions)"),
    )
}

/// `GET /v1/kv/{app}/{env}/{key}/diff?from=V1&to=V2` (`to` defaults to the newest version).
#[utoipa::path(get, path = "/v1/kv/{app}/{env}/{key}/diff", tag = "history",
    summary = "What changed in a key between two versions",
    params(("from" = Option<u64>, Query, description = "The older version (required)."), ("to" = Option<u64>, Query, description = "The newer version (default: the newest).")),
    responses((status = 200, description = "JSON Pointer paths added, removed and changed.", body = meridian_net::openapi::KeyDiff, example = json!({"app":"payments","env":"prod","key":"pool","from":1,"to":2,"added":[],"removed":[],"changed":[{"path":"/max","from":10,"to":20}]})), (status = 404, description = "`version_not_found`: history no longer holds the version.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn key_diff(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<KeyDiffQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        diff_of(&state, a, query(q)?).await
    };
    inner.await.map_err(count_error)
}

/// The diff of one record (a key, or a flag's record) between two of its versions.
pub(crate) async fn diff_of(
    state: &Arc<AppState>,
    a: Address,
    q: KeyDiffQuery,
) -> Result<Response, ApiError> {
    let (view, newest) = history_view(state, &history::key_prefix(&a), |core| {
        core.state().entry(&a).map_or(0, |e| e.version.0)
    })
    .await?;
    let at = a.clone();
    let (from, to) = blocking(move || {
        let get = |v: u64| {
            history::at_version(&view, &at, v)
                .map_err(internal)?
                .ok_or_else(|| version_not_found(&at, v))
        };
        Ok((get(q.from)?, get(q.to.unwrap_or(newest))?))
    })
    .await?;
    let d = json_diff(parse_value(&from).as_ref(), parse_value(&to).as_ref());
    Ok(axum::Json(json!({
        "app": a.app, "env": a.env, "key": a.key,
        "from": from.version, "to": to.version,
        "added": d.added, "removed": d.removed, "changed": d.changed,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvDiffQuery {
    from: u64,
    #[serde(default)]
    to: Option<u64>,
}

fn compacted(what: &str, revision: u64, unknown: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "history_compacted",
        format!(
            "{what} at revision {revision} is no longer known for {}: history was compacted",
            unknown.join(", ")
        ),
    )
}

/// The namespace at `revision` (not newer than `current`), or 410 naming the keys history no
/// longer covers.
fn namespace_at(
    view: &DetachedView,
    current: u64,
    app: &str,
    env: &str,
    revision: u64,
) -> Result<NamespaceAt, ApiError> {
    if revision > current {
        return Err(bad_query(format!(
            "revision {revision} is newer than the current revision {current}"
        )));
    }
    let at = history::namespace_at(view, app, env, revision).map_err(internal)?;
    if !at.unknown.is_empty() {
        return Err(compacted(&format!("{app}/{env}"), revision, &at.unknown));
    }
    Ok(at)
}

/// `GET /v1/diff/{app}/{env}?from=R1&to=R2` (`to` defaults to the current revision): keys
/// added, removed and changed (with the JSON paths that changed).
#[utoipa::path(get, path = "/v1/diff/{app}/{env}", tag = "history",
    summary = "Keys added, removed and changed between two revisions",
    params(("from" = Option<u64>, Query, description = "The older revision (required)."), ("to" = Option<u64>, Query, description = "The newer revision (default: the current one).")),
    responses((status = 200, description = "The differences.", body = meridian_net::openapi::EnvDiff, example = json!({"app":"payments","env":"prod","from":5,"to":7,"added":[{"key":"flag","value":true,"version":1}],"removed":[],"changed":[]})), (status = 410, description = "`history_compacted`: history no longer covers the revision.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn env_diff(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<EnvDiffQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q = query(q)?;
        let prefix = history::namespace_prefix(&app, &env);
        let (view, current) =
            history_view(&state, &prefix, |core| core.state().revision().0).await?;
        let to_rev = q.to.unwrap_or(current);
        let (a, e) = (app.clone(), env.clone());
        let (from, to) = blocking(move || {
            Ok((
                namespace_at(&view, current, &a, &e, q.from)?,
                namespace_at(&view, current, &a, &e, to_rev)?,
            ))
        })
        .await?;
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        // Only the keys the caller may read.
        let visible = readable(&principal);
        let visible = |k: &String| visible(&app, &env, k);
        for (k, r) in to.live.iter().filter(|(k, _)| visible(k)) {
            match from.live.get(k) {
                None => {
                    added.push(json!({"key": k, "version": r.version, "value": parse_value(r)}))
                }
                Some(f) if f.version != r.version => {
                    let d = json_diff(parse_value(f).as_ref(), parse_value(r).as_ref());
                    changed.push(json!({
                        "key": k, "from_version": f.version, "to_version": r.version,
                        "added": d.added, "removed": d.removed, "changed": d.changed,
                    }));
                }
                Some(_) => {}
            }
        }
        for (k, f) in from.live.iter().filter(|(k, _)| visible(k)) {
            if !to.live.contains_key(k) {
                removed.push(json!({"key": k, "version": f.version, "value": parse_value(f)}));
            }
        }
        Ok(axum::Json(json!({
            "app": app, "env": env, "from": q.from, "to": to_rev,
            "added": added, "removed": removed, "changed": changed,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRollbackBody {
    version: u64,
    #[serde(default)]
    reason: Option<String>,
}

fn rollback_reason(to: &str, reason: Option<String>) -> Option<String> {
    Some(match reason {
        Some(r) => format!("rollback to {to}: {r}"),
        None => format!("rollback to {to}"),
    })
}

/// `POST /v1/kv/{app}/{env}/{key}/rollback` `{"version": V, "reason": "…"}`: the value of
/// version V becomes a new version (a delete, if V was a deletion). Refused with 409 if the key
/// changes meanwhile.
#[utoipa::path(post, path = "/v1/kv/{app}/{env}/{key}/rollback", tag = "history",
    summary = "Roll a key back to a version, as a new version",
    request_body = KeyRollbackBody,
    responses((status = 200, description = "The value as committed, with `rolled_back_to`.", body = meridian_net::openapi::Entry), (status = 404, description = "`version_not_found`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn key_rollback(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let b: KeyRollbackBody = parse_body(body)?;
        rollback_of(&state, &principal, &request, a, b, |_| Ok(())).await
    };
    inner.await.map_err(count_error)
}

/// Rolls one record back to version `b.version`, once `check` accepts the version found.
pub(crate) async fn rollback_of(
    state: &Arc<AppState>,
    principal: &Principal,
    request: &RequestMeta,
    a: Address,
    b: KeyRollbackBody,
    check: impl FnOnce(&HistoryRecord) -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let (view, current) = history_view(state, &history::key_prefix(&a), |core| {
        core.state()
            .entry(&a)
            .filter(|e| !e.is_tombstone())
            .map_or(0, |e| e.version.0)
    })
    .await?;
    let (at, version) = (a.clone(), b.version);
    let target = blocking(move || {
        history::at_version(&view, &at, version)
            .map_err(internal)?
            .ok_or_else(|| version_not_found(&at, version))
    })
    .await?;
    check(&target)?;
    let mut meta = write_meta(
        principal,
        request,
        rollback_reason(&format!("version {}", b.version), b.reason),
    )?;
    meta.action = Some("rollback".into());
    let command = history::key_rollback(&a, &target, current);
    let command = super::secrets::reseal_rollback(state, principal, command)?;
    let applied = commit(state, command, meta).await?;
    let entry = applied
        .entries
        .iter()
        .find(|(at, _)| *at == a)
        .map(|(_, e)| e)
        .ok_or_else(|| internal("the rollback changed nothing"))?;
    let mut buf = Vec::with_capacity(128);
    write_entry(&mut buf, &a.app, &a.env, &a.key, entry);
    // `{"app",…,"revision":R}` plus what it rolled back to.
    buf.pop();
    buf.extend_from_slice(
        format!(
            ",\"rolled_back_to\":{},\"deleted\":{}}}",
            b.version,
            entry.is_tombstone()
        )
        .as_bytes(),
    );
    Ok(json_bytes(buf))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EnvRollbackBody {
    revision: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/rollback/{app}/{env}` `{"revision": R, "reason": "…"}`: every key of the
/// environment back to what it was at revision R, as one transaction (one revision), refused
/// with 409 if any of those keys changes meanwhile.
#[utoipa::path(post, path = "/v1/rollback/{app}/{env}", tag = "history",
    summary = "Roll a whole app/env back to a revision, as one revision",
    request_body = EnvRollbackBody,
    responses((status = 200, description = "The revision and every changed key.", body = meridian_net::openapi::EnvRollback, example = json!({"app":"payments","env":"prod","rolled_back_to":5,"revision":9,"changed":[{"key":"flag","deleted":true,"version":2}]})), (status = 410, description = "`history_compacted`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 413, description = "`revision_too_large`: roll back a part at a time.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn env_rollback(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let b: EnvRollbackBody = parse_body(body)?;
        let prefix = history::namespace_prefix(&app, &env);
        let (view, revision) =
            history_view(&state, &prefix, |core| core.state().revision().0).await?;
        let (a, e, to) = (app.clone(), env.clone(), b.revision);
        let target = blocking(move || namespace_at(&view, revision, &a, &e, to)).await?;
        // What the namespace holds now, from the published state (a rollback is refused with
        // 409 if any of these versions changes before it commits).
        let current: BTreeMap<String, (u64, meridian_protocol::JsonText)> = {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            p.state
                .namespace(&app, &env)
                .into_iter()
                .flatten()
                .filter_map(|(k, e)| e.value.clone().map(|v| (k.clone(), (e.version.0, v))))
                .collect()
        };
        let mut meta = write_meta(
            &principal,
            &request,
            rollback_reason(&format!("revision {}", b.revision), b.reason),
        )?;
        meta.action = Some("rollback".into());
        let command = history::env_rollback(&app, &env, &target, &current);
        let command = super::secrets::reseal_rollback(&state, &principal, command)?;
        crate::http::check_revision_size(&command, "the rollback")?;
        let applied = commit(&state, command, meta).await?;
        let changed: Vec<_> = applied
            .entries
            .iter()
            .map(
                |(a, e)| json!({"key": a.key, "version": e.version.0, "deleted": e.is_tombstone()}),
            )
            .collect();
        Ok(axum::Json(json!({
            "app": app, "env": env, "rolled_back_to": b.revision,
            "revision": applied.revision.0, "changed": changed,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}
