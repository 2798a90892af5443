//! Secrets (DESIGN §4b): `PUT/GET/DELETE /v1/secrets/{app}/{env}/{key}`, `POST …/rotate` (a new
//! value, the previous one served during a grace period), `GET /v1/secrets/{app}/{env}` and
//! `GET /v1/secrets/due`; the keys: `GET /v1/secret-keys`, `POST /v1/secret-keys/rotate` (the
//! key-encryption key) and `POST /v1/secret-keys/{app}/{env}/rotate` (a namespace's data key).
//!
//! Values are sealed here, before they are proposed; reads are `meridian_net::secrets`, masked
//! unless revealed, and every reveal is committed to the audit log before it is answered.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::RequestMeta;
use meridian_net::http::{ApiError, json_bytes};
use meridian_net::reads;
use meridian_net::secrets::{KeyUnavailable, Reveal, SecretQuery};
use meridian_protocol::auth::{Action, Principal, Resource};
use meridian_protocol::secrets::{DataKey, StoredSecret, is_sealed_text};
use meridian_protocol::{Address, CacheState, EntryState};
use serde::Deserialize;

use super::{
    AppState, Shared, address, body_error, cluster_error, commit, count_error, json_body,
    namespace, query, write_meta,
};
use crate::secrets::{Keyring, SecretWrite, SecretsError};
use meridian_core::apply::{Command, Condition, Proposal, TxnOp};
use meridian_core::audit::AuditEvent;
use meridian_core::history::{WriteMeta, now_ms};

/// Attempts of a secret write that lost a race with another write of the same key.
const WRITE_ATTEMPTS: usize = 4;
/// Grace period of `POST …/rotate` unless the body gives one.
pub const DEFAULT_GRACE_S: u64 = 3600;
/// Most secrets `GET /v1/secrets/due` lists.
pub const MAX_DUE_ITEMS: usize = 10_000;

fn keyring(state: &AppState) -> Result<&Keyring, ApiError> {
    state.keyring.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets_unconfigured",
            "secrets are not configured on this node: set [secrets] kek_file",
        )
    })
}

pub(crate) fn secrets_error(e: SecretsError) -> ApiError {
    match e {
        SecretsError::Unconfigured => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets_unconfigured",
            e.to_string(),
        ),
        SecretsError::Crypto(c) => {
            tracing::error!(error = %c, "a data key or secret did not open");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "secret_unreadable",
                c.to_string(),
            )
        }
        SecretsError::TooManyGenerations(_) => {
            ApiError::new(StatusCode::CONFLICT, "too_many_generations", e.to_string())
        }
        SecretsError::NoSecrets(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "no_secrets", e.to_string())
        }
    }
}

/// The data keys of the origin's records, unwrapped with the node's key-encryption keys.
pub(crate) fn key_source<'a>(
    keyring: Option<&'a Keyring>,
    s: &'a CacheState,
) -> impl Fn(&str, &str, u32) -> Result<DataKey, KeyUnavailable> + Sync + 'a {
    move |app: &str, env: &str, g: u32| {
        let keyring = keyring.ok_or_else(|| {
            KeyUnavailable::Failed("secrets are not configured on this node".into())
        })?;
        let (record, _) = crate::secrets::data_keys(s, app, env)
            .ok_or_else(|| KeyUnavailable::Failed(format!("{app}/{env} has no data keys")))?;
        keyring
            .data_key(&record, app, env, g)
            .map_err(|e| KeyUnavailable::Failed(e.to_string()))
    }
}

/// Commits the audit records of `reveals` before their answer is sent: a reveal that cannot be
/// recorded is not answered (503 `audit_unavailable`).
pub(crate) async fn audit_reveals(
    state: &Arc<AppState>,
    reveals: Vec<Reveal>,
    request: &RequestMeta,
) -> Result<(), ApiError> {
    if reveals.is_empty() {
        return Ok(());
    }
    let time_ms = now_ms();
    let events = reveals
        .into_iter()
        .take(meridian_core::audit::MAX_AUDIT_EVENTS)
        .map(|r| reveal_event(&r, time_ms, Some(request), &state.node_id))
        .collect();
    let proposal = Proposal {
        command: Command::Audit(events),
        meta: WriteMeta {
            time_ms,
            actor: "audit".into(),
            ..Default::default()
        },
    };
    state.cluster.write(proposal).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            format!(
                "the reveal could not be recorded in the audit log, so it is not answered: {e}"
            ),
        )
    })?;
    metrics::counter!("meridian_secret_reveals_total", "node" => "origin").increment(1);
    Ok(())
}

/// The audit event of one reveal, at `node`.
pub fn reveal_event(
    r: &Reveal,
    time_ms: u64,
    request: Option<&RequestMeta>,
    node: &str,
) -> AuditEvent {
    AuditEvent {
        time_ms,
        actor: r.actor.clone(),
        action: if r.previous {
            "secret-reveal-previous".into()
        } else {
            "secret-reveal".into()
        },
        resource: format!("{}@{}", r.address, r.version),
        outcome: "ok".into(),
        request_id: request.map(|m| m.request_id.clone()),
        source: request.and_then(|m| m.source.map(|s| s.to_string())),
        reason: Some(format!("at {node}")),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    rotate_every_s: Option<u64>,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    #[serde(default)]
    grace_s: Option<u64>,
}

/// Checks the value (in clear, before it is sealed) against the schemas of its key; the error
/// names where and which rule, never the value.
pub(crate) fn check_schema(
    state: &AppState,
    address: &Address,
    text: &str,
) -> Result<(), ApiError> {
    let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
    let schemas = core
        .schemas()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    schemas.check(address, text).map_err(|v| {
        let at = if v.path.is_empty() { "/" } else { v.path.as_str() };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema_violation",
            format!(
                "{address} violates the schema for prefix {:?} at {at} (rule {}); the value of a secret is not shown",
                v.prefix, v.rule
            ),
        )
    })
}

fn masked_answer(a: &Address, entry: &EntryState) -> Response {
    let mut buf = Vec::with_capacity(192);
    meridian_net::http::write_entry(&mut buf, &a.app, &a.env, &a.key, entry);
    json_bytes(buf)
}

/// Seals and commits `write` at `a`, again on a lost race with another write of the key.
async fn write_secret(
    state: &Arc<AppState>,
    a: &Address,
    write: SecretWrite,
    meta: WriteMeta,
) -> Result<Response, ApiError> {
    let keyring = keyring(state)?;
    let text = write.value.to_string();
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
    check_schema(state, a, &text)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let command = {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            crate::secrets::write_command(keyring, &p.state, a, &write, meta.time_ms)
                .map_err(secrets_error)?
        };
        match commit(state, command, meta.clone()).await {
            Ok(applied) => {
                let entry = applied
                    .entries
                    .iter()
                    .find(|(at, _)| at == a)
                    .map(|(_, e)| e.clone())
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "not written")
                    })?;
                metrics::counter!("meridian_secret_writes_total").increment(1);
                return Ok(masked_answer(a, &entry));
            }
            Err(e)
                if attempt < WRITE_ATTEMPTS
                    && matches!(e.code, "version_conflict" | "condition_failed") => {}
            Err(e) => return Err(e),
        }
    }
}

fn secret_meta(
    principal: &Principal,
    request: &RequestMeta,
    reason: Option<String>,
    action: &str,
) -> Result<WriteMeta, ApiError> {
    let mut meta = write_meta(principal, request, reason)?;
    meta.action = Some(action.into());
    Ok(meta)
}

/// `PUT /v1/secrets/{app}/{env}/{key}` `{"value", "reason"?, "rotate_every_s"?,
/// "expires_at_ms"?, "grace_s"?}`.
#[utoipa::path(put, path = "/v1/secrets/{app}/{env}/{key}", tag = "secrets",
    summary = "Write a secret (sealed at the origin before it is proposed)",
    request_body = SecretBody,
    responses((status = 200, description = "The secret's metadata, masked.", body = meridian_net::openapi::SecretView, example = json!({"app":"payments","env":"prod","key":"db.password","value":null,"secret":true,"fingerprint":"3f9a…","version":1,"revision":9})), (status = 422, description = "`schema_violation`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`secrets_not_configured` or `no_quorum`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let body: SecretBody = json_body(&body.map_err(body_error)?)?;
        let meta = secret_meta(&principal, &request, body.reason, "secret-write")?;
        let write = SecretWrite {
            value: body.value,
            rotate_every_s: body.rotate_every_s,
            expires_at_ms: body.expires_at_ms,
            grace_s: body.grace_s,
        };
        write_secret(&state, &a, write, meta).await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/secrets/{app}/{env}/{key}/rotate` `{"value", "grace_s"?, "reason"?}`: a new value,
/// the current one kept as the previous for `grace_s` (default [`DEFAULT_GRACE_S`]).
#[utoipa::path(post, path = "/v1/secrets/{app}/{env}/{key}/rotate", tag = "secrets",
    summary = "Rotate a secret, keeping the previous value for a grace period",
    request_body = SecretBody,
    responses((status = 200, description = "The secret's metadata, masked.", body = meridian_net::openapi::SecretView, example = json!({"app":"payments","env":"prod","key":"db.password","value":null,"secret":true,"fingerprint":"3f9a…","version":1,"revision":9})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn rotate(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let body: SecretBody = json_body(&body.map_err(body_error)?)?;
        {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            let holds = p
                .state
                .get_live(&a.app, &a.env, &a.key)
                .and_then(|e| e.value.as_deref())
                .is_some_and(is_sealed_text);
            if !holds {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_a_secret",
                    format!("{a} holds no secret to rotate"),
                ));
            }
        }
        let meta = secret_meta(&principal, &request, body.reason, "secret-rotate")?;
        let write = SecretWrite {
            value: body.value,
            rotate_every_s: body.rotate_every_s,
            expires_at_ms: body.expires_at_ms,
            grace_s: Some(body.grace_s.unwrap_or(DEFAULT_GRACE_S)),
        };
        write_secret(&state, &a, write, meta).await
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/secrets/{app}/{env}/{key}?reveal=&versions=`.
#[utoipa::path(get, path = "/v1/secrets/{app}/{env}/{key}", tag = "secrets",
    summary = "A secret, masked unless revealed",
    params(("reveal" = Option<bool>, Query, description = "`true`: the value in clear."), ("versions" = Option<bool>, Query, description = "`true`: the previous value kept for the grace period too."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "The secret's metadata; its value only with `reveal=true` (needs `secret-read`; audited).", body = meridian_net::openapi::SecretView, example = json!({"app":"payments","env":"prod","key":"db.password","value":null,"secret":true,"fingerprint":"3f9a…","version":1,"revision":9})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`audit_unavailable`: a reveal that cannot be recorded is not answered.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<SecretQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let q: SecretQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        if q.reveal {
            keyring(&state)?;
        }
        state.cluster.linearize().await.map_err(cluster_error)?;
        let (body, reveal) = {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            if let Some((want, _)) = min
                && p.state.revision().0 < want
            {
                return Err(reads::revision_not_reached(p.state.revision().0, want, 0));
            }
            let keys = key_source(state.keyring.as_deref(), &p.state);
            meridian_net::secrets::secret(&p.state, &a, &q, &principal, &keys, None, now_ms())?
        };
        audit_reveals(&state, reveal.into_iter().collect(), &request).await?;
        Ok(json_bytes(body))
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    reason: Option<String>,
}

/// `DELETE /v1/secrets/{app}/{env}/{key}`: only a key that holds a secret.
#[utoipa::path(delete, path = "/v1/secrets/{app}/{env}/{key}", tag = "secrets",
    summary = "Delete a secret",
    params(("reason" = Option<String>, Query, description = "Recorded in the history.")),
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::Committed), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let q: DeleteQuery = query(q)?;
        let meta = secret_meta(&principal, &request, q.reason, "secret-delete")?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let version = {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            p.state
                .get_live(&a.app, &a.env, &a.key)
                .filter(|e| e.value.as_deref().is_some_and(is_sealed_text))
                .map(|e| e.version.0)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not_a_secret",
                        format!("{a} holds no secret"),
                    )
                })?
        };
        let command = Command::Txn {
            conditions: vec![Condition::VersionEquals(a.clone(), version)],
            ops: vec![TxnOp::Delete(a.clone())],
        };
        let applied = commit(&state, command, meta).await?;
        Ok(axum::Json(serde_json::json!({"revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/secrets/{app}/{env}`: the namespace's secrets the caller may read, masked.
#[utoipa::path(get, path = "/v1/secrets/{app}/{env}", tag = "secrets",
    summary = "The secrets of an app/env the caller may read, masked",
    params(("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "Secrets' metadata.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn list(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
        Ok(json_bytes(meridian_net::secrets::list(
            &p.state,
            &app,
            &env,
            &principal,
            now_ms(),
        )))
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DueQuery {
    /// Also list what falls due within this many seconds.
    #[serde(default)]
    within_s: u64,
}

/// Every secret due for rotation or expired at `now_ms` (or within `within_ms` of it) that
/// `principal` may read, at most [`MAX_DUE_ITEMS`].
pub fn due_list(
    s: &CacheState,
    principal: &Principal,
    now_ms: u64,
    within_ms: u64,
) -> Vec<serde_json::Value> {
    let horizon = now_ms.saturating_add(within_ms);
    let mut items = Vec::new();
    for (a, entry) in s.iter() {
        if items.len() >= MAX_DUE_ITEMS {
            break;
        }
        let Some(stored) = entry.value.as_deref().and_then(StoredSecret::parse) else {
            continue;
        };
        let Some(due) = stored.due(horizon) else {
            continue;
        };
        let resource = Resource::Key {
            app: &a.app,
            env: &a.env,
            key: &a.key,
        };
        if !principal.allows(Action::Read, &resource) {
            continue;
        }
        items.push(serde_json::json!({
            "app": a.app,
            "env": a.env,
            "key": a.key,
            "due": due,
            "overdue": stored.due(now_ms).is_some(),
            "rotate_at_ms": stored.rotate_at_ms(),
            "expires_at_ms": stored.expires_at_ms,
            "updated_ms": stored.updated_ms,
            "fingerprint": stored.value.fp,
        }));
    }
    items
}

/// `GET /v1/secrets/due?within_s=`.
#[utoipa::path(get, path = "/v1/secrets/due", tag = "secrets",
    summary = "Secrets due for rotation or expiring soon",
    params(("within_s" = Option<u64>, Query, description = "Due within this many seconds.")),
    responses((status = 200, description = "Secrets due.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn due(
    State(state): Shared,
    q: Result<Query<DueQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Response, ApiError> {
    let inner = async {
        let q: DueQuery = query(q)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        let items = due_list(&p.state, &principal, now, q.within_s.saturating_mul(1000));
        Ok(axum::Json(serde_json::json!({
            "revision": p.state.revision().0,
            "now_ms": now,
            "items": items,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

fn reason_body(body: Result<Bytes, BytesRejection>) -> Result<Option<String>, ApiError> {
    let body = body.map_err(body_error)?;
    if body.is_empty() {
        return Ok(None);
    }
    Ok(json_body::<ReasonBody>(&body)?.reason)
}

/// `POST /v1/secret-keys/{app}/{env}/rotate`: a new data key, every secret of the namespace
/// re-sealed under it in one revision.
#[utoipa::path(post, path = "/v1/secret-keys/{app}/{env}/rotate", tag = "secrets",
    summary = "A new data key for an app/env, every secret re-sealed under it",
    request_body = ReasonBody,
    responses((status = 200, description = "The rotation.", body = meridian_net::openapi::AnyObject), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn rotate_data_key(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let meta = secret_meta(
            &principal,
            &request,
            reason_body(body)?,
            "secret-rotate-key",
        )?;
        let keyring = keyring(&state)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            state.cluster.linearize().await.map_err(cluster_error)?;
            let command = {
                let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
                crate::secrets::rotate_data_key(keyring, &p.state, &app, &env, meta.time_ms)
                    .map_err(secrets_error)?
            };
            let secrets = match &command {
                Command::Txn { ops, .. } => ops.len() - 1,
                _ => 0,
            };
            match commit(&state, command, meta.clone()).await {
                Ok(applied) => {
                    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
                    let generation = crate::secrets::data_keys(&p.state, &app, &env)
                        .and_then(|(r, _)| r.current().map(|k| k.g));
                    return Ok(axum::Json(serde_json::json!({
                        "revision": applied.revision.0,
                        "generation": generation,
                        "secrets": secrets,
                    }))
                    .into_response());
                }
                Err(e)
                    if attempt < WRITE_ATTEMPTS
                        && matches!(e.code, "version_conflict" | "condition_failed") => {}
                Err(e) => return Err(e),
            }
        }
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/secret-keys/rotate`: re-reads the key-encryption key file (a new key appended by
/// `meridian secret rotate-key --kek` on every origin node) and rewraps every data key with
/// its newest key; no value is re-encrypted, reads and writes go on.
#[utoipa::path(post, path = "/v1/secret-keys/rotate", tag = "secrets",
    summary = "Rewrap every data key with the newest key-encryption key",
    request_body = ReasonBody,
    responses((status = 200, description = "The rewrap.", body = meridian_net::openapi::AnyObject), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn rotate_kek(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let meta = secret_meta(
            &principal,
            &request,
            reason_body(body)?,
            "secret-rotate-kek",
        )?;
        let keyring = keyring(&state)?;
        keyring.reload().map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "secrets_unconfigured",
                e.to_string(),
            )
        })?;
        let mut rewrapped = 0usize;
        let mut rounds = 0;
        loop {
            rounds += 1;
            state.cluster.linearize().await.map_err(cluster_error)?;
            let commands = {
                let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
                crate::secrets::rewrap_all(keyring, &p.state).map_err(secrets_error)?
            };
            if commands.is_empty() {
                break;
            }
            let mut lost = 0;
            for command in commands {
                match commit(&state, command, meta.clone()).await {
                    Ok(_) => rewrapped += 1,
                    // A namespace's first secret or a data-key rotation got there first: its
                    // record is taken again in the next round.
                    Err(e) if matches!(e.code, "version_conflict" | "condition_failed") => {
                        lost += 1
                    }
                    Err(e) => return Err(e),
                }
            }
            if lost == 0 || rounds >= WRITE_ATTEMPTS {
                break;
            }
        }
        Ok(axum::Json(serde_json::json!({
            "kek": keyring.current_kek(),
            "rewrapped": rewrapped,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/secret-keys`: the current key-encryption key and, per namespace, its data-key
/// generations and which key-encryption key wraps each.
#[utoipa::path(get, path = "/v1/secret-keys", tag = "secrets",
    summary = "The key-encryption key and every namespace's data-key generations",
    responses((status = 200, description = "Key metadata (never a key).", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn keys(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        let keyring = keyring(&state)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
        let mut namespaces = Vec::new();
        for (a, entry) in p.state.iter() {
            if a.key != meridian_protocol::secrets::DATA_KEY_RECORD {
                continue;
            }
            let Some(record) = entry
                .value
                .as_deref()
                .and_then(meridian_protocol::secrets::DataKeyRecord::parse)
            else {
                continue;
            };
            namespaces.push(serde_json::json!({
                "app": a.app,
                "env": a.env,
                "generation": record.current().map(|k| k.g),
                "keys": record.keys.iter().map(|k| serde_json::json!({"generation": k.g, "kek": k.wrapped.kek})).collect::<Vec<_>>(),
            }));
        }
        Ok(axum::Json(serde_json::json!({
            "kek": keyring.current_kek(),
            "namespaces": namespaces,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}

/// A rollback that restores secrets: each restored secret opened and sealed again for the
/// version it gets now (a sealed value opens only at the version it was sealed for), which
/// needs `secret-write` on it; the namespace's data-key record is never rolled back (values
/// sealed under a newer generation would stop opening). Other commands pass unchanged.
pub(crate) fn reseal_rollback(
    state: &AppState,
    principal: &Principal,
    command: Command,
) -> Result<Command, ApiError> {
    let (conditions, ops) = match command {
        Command::Put {
            address,
            value,
            expect_version,
        } if is_sealed_text(&value) => (
            expect_version
                .map(|v| Condition::VersionEquals(address.clone(), v))
                .into_iter()
                .collect(),
            vec![TxnOp::Put(address, value)],
        ),
        Command::Txn { conditions, ops }
            if ops.iter().any(|op| match op {
                TxnOp::Put(a, v) => {
                    is_sealed_text(v) || a.key == meridian_protocol::secrets::DATA_KEY_RECORD
                }
                TxnOp::Delete(a) => a.key == meridian_protocol::secrets::DATA_KEY_RECORD,
            }) =>
        {
            (conditions, ops)
        }
        other => return Ok(other),
    };
    let keyring = keyring(state)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let now = now_ms();
    let mut conditions = conditions;
    conditions.retain(|c| c.address().key != meridian_protocol::secrets::DATA_KEY_RECORD);
    let mut sealing = crate::secrets::Sealing::default();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            TxnOp::Put(a, _) | TxnOp::Delete(a)
                if a.key == meridian_protocol::secrets::DATA_KEY_RECORD => {}
            TxnOp::Put(a, v) if is_sealed_text(&v) => {
                meridian_net::auth::authorize(
                    principal,
                    Action::SecretWrite,
                    &Resource::Key {
                        app: &a.app,
                        env: &a.env,
                        key: &a.key,
                    },
                )?;
                let stored = StoredSecret::parse(&v).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "secret_unreadable",
                        format!("{a}: malformed secret in history"),
                    )
                })?;
                let (plain, _) = crate::secrets::open(
                    keyring,
                    &p.state,
                    &a,
                    &stored,
                    stored.value.at,
                    false,
                    now,
                )
                .map_err(secrets_error)?;
                let value = serde_json::from_slice(&plain).map_err(|_| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "secret_unreadable",
                        format!("{a}: the old value is not JSON"),
                    )
                })?;
                let write = SecretWrite {
                    value,
                    rotate_every_s: Some(stored.rotate_every_s.unwrap_or(0)),
                    expires_at_ms: Some(stored.expires_at_ms.unwrap_or(0)),
                    grace_s: None,
                };
                let put =
                    crate::secrets::seal_write(keyring, &p.state, &a, &write, now, &mut sealing)
                        .map_err(secrets_error)?;
                out.push(put);
            }
            op => out.push(op),
        }
    }
    conditions.extend(sealing.conditions);
    out.extend(sealing.ops);
    Ok(Command::Txn {
        conditions,
        ops: out,
    })
}
