//! Flags: `PUT/GET /v1/flags/{app}/{env}` (a whole flagd document), `PUT/GET/DELETE
//! /v1/flags/{app}/{env}/{flag}` (one flag), its history and rollback, and OFREP evaluation
//! from this node's published state (`POST /v1/flags/{app}/{env}/ofrep/v1/evaluate/flags[/{flag}]`).
//!
//! Writes are checked by [`crate::flagset`] and committed as one transaction; reads are
//! linearizable like key reads.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_net::auth::RequestMeta;
use meridian_net::http::ApiError;
use meridian_net::{ofrep, reads};
use meridian_protocol::Address;
use meridian_protocol::auth::Principal;
use meridian_protocol::flags::{FlagDocument, record_key, validate_flag_key};
use serde::Deserialize;
use serde_json::{Value, json};

use super::history::{HistoryQuery, KeyRollbackBody, history_of, rollback_of};
use super::{
    AppState, Shared, body_error, cluster_error, commit, count_error, json_body, query, write_meta,
};
use crate::flagset::{self, Refusal};
use meridian_core::apply::Command;

const REVISION: HeaderName = HeaderName::from_static("meridian-revision");
const VERSION: HeaderName = HeaderName::from_static("meridian-version");

pub(crate) fn invalid(e: Refusal) -> ApiError {
    let at = if e.path.is_empty() {
        "/"
    } else {
        e.path.as_str()
    };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_flags",
        format!("at {at}: {}", e.message),
    )
}

fn ns_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    super::namespace(path)
}

/// `app`, `env` and a flag key, or 400 naming the part that is wrong.
pub(crate) fn flag_path(
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<(String, String, String), ApiError> {
    let Path((app, env, flag)) = path.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("bad path: {e}"),
        )
    })?;
    reads::namespace(&app, &env)?;
    validate_flag_key(&flag)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_flag", e.to_string()))?;
    Ok((app, env, flag))
}

fn flag_address(app: &str, env: &str, flag: &str) -> Address {
    Address {
        app: app.to_owned(),
        env: env.to_owned(),
        key: record_key(flag),
    }
}

/// Runs `read` on the published state after a linearizable barrier, with its revision.
async fn linearized<T>(
    state: &Arc<AppState>,
    read: impl FnOnce(&meridian_protocol::CacheState) -> T,
) -> Result<(T, u64), ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    Ok((read(&p.state), p.state.revision().0))
}

fn unreadable(key: Option<&str>, e: BytesRejection) -> Response {
    let too_large = e.status() == StatusCode::PAYLOAD_TOO_LARGE;
    ofrep::unreadable_body(key, too_large, &e.body_text())
}

fn with_revision(mut r: Response, revision: u64) -> Response {
    r.headers_mut()
        .insert(REVISION, HeaderValue::from(revision));
    r
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteQuery {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

/// `PUT /v1/flags/{app}/{env}`: the body is a flagd document, exactly as flagd reads it.
#[utoipa::path(put, path = "/v1/flags/{app}/{env}", tag = "flags",
    summary = "Replace the flag set of an app/env with a flagd document",
    params(("reason" = Option<String>, Query, description = "Recorded in the history and the audit log."), ("expect_version" = Option<u64>, Query, description = "Refuse with 409 unless the record is at this version (0: must not exist).")),
    request_body(content = meridian_net::openapi::AnyObject, description = "A flagd flag-set document.", example = json!({"flags":{"new-checkout":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off","targeting":{"if":[{"==":[{"var":"plan"},"pro"]},"on","off"]}}}})),
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::AnyObject, example = json!({"revision": 12, "flags": 1})), (status = 422, description = "`invalid_flags`: the document is not valid flagd (names the path).", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put_document(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = ns_path(path)?;
        let q: WriteQuery = query(q)?;
        let body = body.map_err(body_error)?;
        let value: Value = json_body(&body)?;
        let document = flagset::check_document(&value).map_err(invalid)?;
        let meta = write_meta(&principal, &request, q.reason)?;
        let (command, revision) = linearized(&state, |s| {
            flagset::document_command(s.namespace(&app, &env), &app, &env, &document)
        })
        .await?;
        let revision = match command {
            Some(command) => commit(&state, command, meta).await?.revision.0,
            None => revision,
        };
        let answer =
            json!({"app": app, "env": env, "revision": revision, "flags": document.flags.len()});
        Ok(with_revision(axum::Json(answer).into_response(), revision))
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/flags/{app}/{env}`: the flagd document the namespace holds (`{"flags": {}}` when
/// it has none), ready to hand to flagd.
#[utoipa::path(get, path = "/v1/flags/{app}/{env}", tag = "flags",
    summary = "The flag set of an app/env, in flagd's format",
    params(("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "A flagd document (`{\"flags\": {}}` when there are none).", body = meridian_net::openapi::AnyObject, example = json!({"flags":{"new-checkout":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off","targeting":{"if":[{"==":[{"var":"plan"},"pro"]},"on","off"]}}}})))
)]
pub(crate) async fn get_document(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = ns_path(path)?;
        let (document, revision) = linearized(&state, |s| {
            s.namespace(&app, &env)
                .map(FlagDocument::from_namespace)
                .unwrap_or_default()
        })
        .await?;
        Ok(with_revision(
            axum::Json(document).into_response(),
            revision,
        ))
    };
    inner.await.map_err(count_error)
}

/// `PUT /v1/flags/{app}/{env}/{flag}`: the body is one flagd flag definition; checked with
/// the rest of the set. `?expect_version=n` (0: must not exist) for compare-and-set.
#[utoipa::path(put, path = "/v1/flags/{app}/{env}/{flag}", tag = "flags",
    summary = "Create or replace one flag",
    params(("reason" = Option<String>, Query, description = "Recorded in the history and the audit log."), ("expect_version" = Option<u64>, Query, description = "Refuse with 409 unless the record is at this version (0: must not exist).")),
    request_body(content = meridian_net::openapi::AnyObject, description = "A flagd flag definition.", example = json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"})),
    responses((status = 200, description = "The version and revision.", body = meridian_net::openapi::FlagWritten, example = json!({"flag":"new-checkout","version":2,"revision":13})), (status = 422, description = "`invalid_flags`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put_flag(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let q: WriteQuery = query(q)?;
        let body = body.map_err(body_error)?;
        let definition: Value = json_body(&body)?;
        let meta = write_meta(&principal, &request, q.reason)?;
        let ((checked, command), revision) = linearized(&state, |s| {
            let ns = s.namespace(&app, &env);
            let checked = flagset::with_flag(ns, &flag, definition.clone());
            let command =
                flagset::flag_command(ns, &app, &env, &flag, &definition, q.expect_version);
            (checked, command)
        })
        .await?;
        checked.map_err(invalid)?;
        let a = flag_address(&app, &env, &flag);
        let (revision, version) = match command {
            Some(command) => {
                let applied = commit(&state, command, meta).await?;
                let version = applied
                    .entries
                    .iter()
                    .find(|(at, _)| *at == a)
                    .map_or(0, |(_, e)| e.version.0);
                (applied.revision.0, version)
            }
            None => {
                let version = state
                    .reader
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .state
                    .get_live(&app, &env, &a.key)
                    .map_or(0, |e| e.version.0);
                (revision, version)
            }
        };
        let answer =
            json!({"app": app, "env": env, "flag": flag, "version": version, "revision": revision});
        Ok(with_revision(axum::Json(answer).into_response(), revision))
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/flags/{app}/{env}/{flag}`: the flag's definition; `meridian-version` says which.
#[utoipa::path(get, path = "/v1/flags/{app}/{env}/{flag}", tag = "flags",
    summary = "One flag's definition",
    responses((status = 200, description = "The flagd definition; `meridian-version` names its version.", body = meridian_net::openapi::AnyObject, example = json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get_flag(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let key = record_key(&flag);
        let (found, revision) = linearized(&state, |s| {
            s.get_live(&app, &env, &key)
                .map(|e| (e.version.0, e.value.clone()))
        })
        .await?;
        let Some((version, Some(text))) = found else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "flag_not_found",
                format!("{app}/{env} has no flag {flag:?}"),
            ));
        };
        let mut r = meridian_net::http::json_bytes(text.as_bytes().to_vec());
        r.headers_mut().insert(VERSION, HeaderValue::from(version));
        Ok(with_revision(r, revision))
    };
    inner.await.map_err(count_error)
}

/// `DELETE /v1/flags/{app}/{env}/{flag}` (`?expect_version=n`).
#[utoipa::path(delete, path = "/v1/flags/{app}/{env}/{flag}", tag = "flags",
    summary = "Delete one flag",
    params(("reason" = Option<String>, Query, description = "Recorded in the history and the audit log."), ("expect_version" = Option<u64>, Query, description = "Refuse with 409 unless the record is at this version (0: must not exist).")),
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::AnyObject, example = json!({"revision": 14})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete_flag(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let q: WriteQuery = query(q)?;
        let meta = write_meta(&principal, &request, q.reason)?;
        let command = Command::Delete {
            address: flag_address(&app, &env, &flag),
            expect_version: q.expect_version,
        };
        let applied = commit(&state, command, meta).await.map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "flag_not_found",
                    format!("{app}/{env} has no flag {flag:?}"),
                )
            } else {
                e
            }
        })?;
        let revision = applied.revision.0;
        Ok(with_revision(
            axum::Json(json!({"revision": revision})).into_response(),
            revision,
        ))
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/flags/{app}/{env}/{flag}/history`: every retained version of the definition.
#[utoipa::path(get, path = "/v1/flags/{app}/{env}/{flag}/history", tag = "flags",
    summary = "A flag's versions, newest first",
    params(("limit" = Option<u64>, Query, description = "At most this many."), ("before" = Option<u64>, Query, description = "Versions before this one.")),
    responses((status = 200, description = "Versions with time, actor and reason.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn history(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        history_of(&state, flag_address(&app, &env, &flag), query(q)?).await
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/flags/{app}/{env}/{flag}/diff?from=V1[&to=V2]`: what changed in the definition
/// (JSON pointers added, removed, changed; `to` defaults to the newest version).
#[utoipa::path(get, path = "/v1/flags/{app}/{env}/{flag}/diff", tag = "flags",
    summary = "What changed in a flag's definition between two versions",
    params(("from" = Option<u64>, Query, description = "The older version (required)."), ("to" = Option<u64>, Query, description = "The newer version.")),
    responses((status = 200, description = "JSON Pointer paths added, removed and changed.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`version_not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn diff(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<super::history::KeyDiffQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        super::history::diff_of(&state, flag_address(&app, &env, &flag), query(q)?).await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/flags/{app}/{env}/{flag}/rollback` `{"version": n, "reason"?}`: the definition
/// of version n again (checked with today's evaluators), or the flag deleted if n was a delete.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/{flag}/rollback", tag = "flags",
    summary = "Roll a flag back to a version",
    request_body = super::history::KeyRollbackBody,
    responses((status = 200, description = "The version and revision.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`version_not_found`.", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`invalid_flags`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn rollback(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let b: KeyRollbackBody = super::parse_body(body)?;
        let reader = state.reader.clone();
        let check = |target: &meridian_core::history::HistoryRecord| {
            let Some(text) = &target.value else {
                return Ok(());
            };
            let definition: Value = serde_json::from_str(text).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            let p = reader.read().unwrap_or_else(|e| e.into_inner());
            flagset::with_flag(p.state.namespace(&app, &env), &flag, definition)
                .map(|_| ())
                .map_err(invalid)
        };
        rollback_of(
            &state,
            &principal,
            &request,
            flag_address(&app, &env, &flag),
            b,
            check,
        )
        .await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{flag}`: OFREP single evaluation.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{flag}", tag = "ofrep",
    summary = "OFREP: evaluate one flag",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "The evaluation (OFREP).", body = meridian_net::openapi::OfrepEvaluation, example = json!({"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}})), (status = 404, description = "OFREP `FLAG_NOT_FOUND`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn ofrep_one(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (app, env, flag) = flag_path(path).map_err(count_error)?;
    let body = match body {
        Ok(b) => b,
        Err(e) => return Ok(unreadable(Some(&flag), e)),
    };
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let set = p.flags.get(&app, &env).cloned();
    let revision = p.state.revision().0;
    drop(p);
    Ok(with_revision(
        ofrep::evaluate_one(set.as_ref(), &flag, &body, ofrep::now_s(), &mut |_, _| {}),
        revision,
    ))
}

/// `POST /v1/flags/{app}/{env}/ofrep/v1/evaluate/flags`: OFREP bulk evaluation.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags", tag = "ofrep",
    summary = "OFREP: evaluate every flag",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "Every evaluation (OFREP), with an `ETag`.", body = meridian_net::openapi::AnyObject, example = json!({"flags":[{"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}}]})))
)]
pub(crate) async fn ofrep_bulk(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (app, env) = ns_path(path).map_err(count_error)?;
    let body = match body {
        Ok(b) => b,
        Err(e) => return Ok(unreadable(None, e)),
    };
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let set = p.flags.get(&app, &env).cloned();
    let revision = p.state.revision().0;
    drop(p);
    Ok(with_revision(
        ofrep::evaluate_bulk(
            set.as_ref(),
            &headers,
            &body,
            ofrep::now_s(),
            &mut |_, _| {},
        ),
        revision,
    ))
}

/// `POST /ofrep/v1/evaluate/flags/{flag}` for a token scoped to one app/env.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{flag}", tag = "ofrep",
    summary = "OFREP: evaluate one flag of the app/env the token is scoped to",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "The evaluation (OFREP).", body = meridian_net::openapi::OfrepEvaluation, example = json!({"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}})), (status = 404, description = "OFREP `FLAG_NOT_FOUND`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "The token is not scoped to one app/env.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn scoped_one(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Path(flag): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (app, env) = ofrep::scoped_namespace(&principal).map_err(count_error)?;
    ofrep_one(State(state), Ok(Path((app, env, flag))), body).await
}

/// `POST /ofrep/v1/evaluate/flags` for a token scoped to one app/env.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "ofrep",
    summary = "OFREP: evaluate every flag of the app/env the token is scoped to",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "Every evaluation (OFREP).", body = meridian_net::openapi::AnyObject, example = json!({"flags":[{"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}}]})), (status = 403, description = "The token is not scoped to one app/env.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn scoped_bulk(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (app, env) = ofrep::scoped_namespace(&principal).map_err(count_error)?;
    ofrep_bulk(State(state), Ok(Path((app, env))), headers, body).await
}

/// `GET /v1/flags/{app}/{env}/{flag}/exposures`: how often each variant was served, in total
/// and per region, as committed from the edges' counters (each edge reports every heartbeat;
/// nodes commit every [`crate::exposures::COMMIT_INTERVAL`]).
#[utoipa::path(get, path = "/v1/flags/{app}/{env}/{flag}/exposures", tag = "flags",
    summary = "How often each variant was served, in total and per region",
    responses((status = 200, description = "Counts.", body = meridian_net::openapi::AnyObject, example = json!({"flag":"new-checkout","total":{"on":120,"off":880},"regions":{"us-east":{"on":60,"off":440}}})))
)]
pub(crate) async fn exposures(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let prefix = crate::exposures::flag_prefix(&app, &env, &flag);
        let view = {
            let core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            core.state().backend().detached_view(&prefix)
        };
        let records = tokio::task::spawn_blocking(move || {
            use meridian_store::Backend;
            view.scan_prefix(&prefix)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        let t = crate::exposures::totals(&app, &env, &flag, &records);
        Ok(axum::Json(json!({
            "app": app, "env": env, "flag": flag,
            "total": t.total, "variants": t.variants, "regions": t.regions,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}
