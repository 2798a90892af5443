//! Tokens and policies over HTTP: `POST/GET /v1/tokens`, `DELETE /v1/tokens/{id}`,
//! `GET /v1/policies`, `GET/PUT/DELETE /v1/policies/{name}`, and `GET /v1/whoami`.
//!
//! A token's text is answered once, when it is made; only its hash is committed. Records are
//! written through Raft like any write, into the system namespaces every edge replicates, so a
//! revocation reaches every edge with the next revision.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::{RequestMeta, new_token};
use meridian_net::http::ApiError;
use meridian_protocol::auth::{
    GrantBody, POLICIES_ENV, Pattern, PolicyRecord, Principal, Role, SYSTEM_APP, TOKENS_ENV,
    TokenId, TokenRecord, parse_token, valid_policy_name,
};
use meridian_protocol::{Address, EntryState};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Shared, body_error, cluster_error, commit, count_error, json_body, write_meta};
use meridian_core::apply::Command;

pub use meridian_core::tokens::{LAST_USED_PREFIX, MAX_TOUCHES, last_used_key};

/// Uses of tokens at this node since they were last committed: at most one entry per token.
#[derive(Clone, Default)]
pub struct LastUsed {
    seen: Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>>,
}

impl LastUsed {
    /// Notes that token `id` was used at `ms`.
    pub fn touch(&self, id: TokenId, ms: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let at = seen.entry(id.0).or_default();
        *at = (*at).max(ms);
    }

    fn take(&self) -> Vec<(u64, u64)> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.len().min(MAX_TOUCHES);
        let keys: Vec<u64> = seen.keys().take(n).copied().collect();
        keys.into_iter()
            .filter_map(|k| seen.remove(&k).map(|ms| (k, ms)))
            .collect()
    }
}

/// Commits the uses noted in `uses` every `interval` (minutes are precise enough for a
/// last-used time, and cost one small entry per interval), until shutdown.
pub async fn commit_last_used(
    uses: LastUsed,
    cluster: crate::raft::cluster::Cluster,
    interval: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            let batch = uses.take();
            if batch.is_empty() {
                break;
            }
            let proposal = meridian_core::apply::Proposal {
                command: Command::TouchTokens(batch),
                meta: meridian_core::history::WriteMeta {
                    time_ms: meridian_net::auth::now_ms(),
                    actor: "meridian".into(),
                    ..Default::default()
                },
            };
            if let Err(e) = cluster.write(proposal).await {
                tracing::debug!(error = %e, "token uses not recorded; next time");
                break;
            }
        }
    }
}

/// Longest lifetime a token may be given at creation, in seconds (ten years).
pub const MAX_TOKEN_TTL_S: u64 = 10 * 365 * 24 * 3600;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    owner: Option<String>,
    /// Seconds from now until the token stops working (none: never).
    #[serde(default)]
    expires_in_s: Option<u64>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    grants: Vec<GrantBody>,
    /// Shorthand for one grant: a role on `resources`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    role: Option<Role>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    resources: Vec<Pattern>,
    #[serde(default)]
    reason: Option<String>,
}

/// The record and text of a new token for a `POST /v1/tokens` body made by `principal`.
pub fn token_command(
    principal: &Principal,
    body: &[u8],
    now_ms: u64,
) -> Result<(Command, TokenRecord, String, Option<String>), ApiError> {
    let b: CreateBody = json_body(body)?;
    let mut grants = b.grants;
    match (b.role, b.resources.is_empty()) {
        (Some(role), false) => grants.push(GrantBody {
            role: Some(role),
            actions: Vec::new(),
            resources: b.resources,
        }),
        (None, true) => {}
        _ => {
            return Err(bad(
                "invalid_token_request",
                "role and resources go together (or use grants)",
            ));
        }
    }
    let expires_ms = match b.expires_in_s {
        Some(0) => {
            return Err(bad(
                "invalid_token_request",
                "expires_in_s must be positive",
            ));
        }
        Some(s) if s > MAX_TOKEN_TTL_S => {
            return Err(bad(
                "invalid_token_request",
                format!("expires_in_s is at most {MAX_TOKEN_TTL_S} (ten years)"),
            ));
        }
        Some(s) => Some(now_ms.saturating_add(s * 1000)),
        None => None,
    };
    let text = new_token();
    let hash = parse_token(&text).map_err(|e| internal(&e))?;
    let record = TokenRecord {
        hash: hex::encode(hash),
        name: b.name,
        owner: b.owner.unwrap_or_else(|| principal.actor()),
        created_ms: now_ms,
        expires_ms,
        groups: b.groups,
        grants,
    };
    record
        .validate()
        .map_err(|e| bad("invalid_token_request", e.to_string()))?;
    let command = Command::Put {
        address: token_address(TokenId::of(&hash)),
        value: serde_json::to_string(&record)
            .map_err(|e| internal(&e))?
            .into(),
        // A fresh random id: never overwrite a record.
        expect_version: Some(0),
    };
    Ok((command, record, text, b.reason))
}

fn internal(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// Where the record of token `id` lives.
pub fn token_address(id: TokenId) -> Address {
    Address {
        app: SYSTEM_APP.to_owned(),
        env: TOKENS_ENV.to_owned(),
        key: id.to_string(),
    }
}

fn policy_address(name: &str) -> Address {
    Address {
        app: SYSTEM_APP.to_owned(),
        env: POLICIES_ENV.to_owned(),
        key: name.to_owned(),
    }
}

fn describe(id: &str, record: &TokenRecord, now_ms: u64) -> Value {
    json!({
        "id": id,
        "name": record.name,
        "owner": record.owner,
        "created_ms": record.created_ms,
        "expires_ms": record.expires_ms,
        "expired": record.expires_ms.is_some_and(|at| now_ms >= at),
        "groups": record.groups,
        "grants": record.grants,
    })
}

/// `POST /v1/tokens`: 201 with the token's text (shown this once) and its record.
#[utoipa::path(post, path = "/v1/tokens", tag = "access",
    summary = "Create a token (its text is shown this once)",
    request_body = CreateBody,
    responses((status = 201, description = "The token's text and record.", body = meridian_net::openapi::TokenCreated, example = json!({"id":"6c1f0e2a9b3d4c5e","name":"payments-svc","token":"mrdn_…","grants":[{"role":"viewer","resources":["payments/prod/*"]}],"groups":[],"expired":false})), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn create(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let body = body.map_err(body_error)?;
        let now = meridian_net::auth::now_ms();
        let (command, record, text, reason) = token_command(&principal, &body, now)?;
        let id = TokenId::of(&record.hash_bytes().unwrap_or_default()).to_string();
        let meta = write_meta(
            &principal,
            &request,
            reason.or_else(|| Some(format!("token {id} created"))),
        )?;
        let applied = commit(&state, command, meta).await?;
        let mut answer = describe(&id, &record, now);
        answer["token"] = text.into();
        answer["revision"] = applied.revision.0.into();
        Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
    };
    inner.await.map_err(count_error)
}

/// Reads `app/env` of the system namespaces after a linearizable barrier.
pub(crate) async fn system_namespace(
    state: &Arc<crate::http::AppState>,
    env: &str,
) -> Result<(u64, Vec<(String, EntryState)>), ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let items = p
        .state
        .namespace(SYSTEM_APP, env)
        .into_iter()
        .flatten()
        .filter(|(_, e)| !e.is_tombstone())
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    Ok((p.state.revision().0, items))
}

/// `GET /v1/tokens`: every live token's record, without hashes, with the time it was last
/// used at an origin node (committed once a minute).
#[utoipa::path(get, path = "/v1/tokens", tag = "access",
    summary = "Every live token's record (never its text or hash)",
    responses((status = 200, description = "The tokens.", body = meridian_net::openapi::TokenList))
)]
pub(crate) async fn list(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        let (revision, items) = system_namespace(&state, TOKENS_ENV).await?;
        let now = meridian_net::auth::now_ms();
        let last_used = {
            use meridian_store::Backend;
            let core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            core.state()
                .backend()
                .scan_prefix(&LAST_USED_PREFIX)
                .map_err(|e| internal(&e))?
        };
        let last_used: std::collections::HashMap<Vec<u8>, u64> = last_used
            .into_iter()
            .filter_map(|(k, v)| Some((k, u64::from_be_bytes(v.as_slice().try_into().ok()?))))
            .collect();
        let used = |id: &str| {
            let id = TokenId::parse(id)?;
            last_used.get(&last_used_key(id.0)).copied()
        };
        let tokens: Vec<Value> = items
            .iter()
            .filter_map(|(id, e)| {
                let record: TokenRecord = serde_json::from_str(e.value.as_deref()?).ok()?;
                let mut d = describe(id, &record, now);
                d["last_used_ms"] = used(id).into();
                Some(d)
            })
            .collect();
        Ok(axum::Json(json!({"revision": revision, "tokens": tokens})).into_response())
    };
    inner.await.map_err(count_error)
}

fn token_id(path: Result<Path<String>, PathRejection>) -> Result<TokenId, ApiError> {
    let Path(id) = path.map_err(|e| bad("invalid_token_id", e.body_text()))?;
    TokenId::parse(&id).ok_or_else(|| {
        bad(
            "invalid_token_id",
            format!("{id:?} is not a token id (16 hex digits)"),
        )
    })
}

/// Deletes a token or policy record (404 naming `what` when there is none).
pub(crate) async fn delete_record(
    state: &Arc<crate::http::AppState>,
    address: Address,
    meta: meridian_core::history::WriteMeta,
    what: &str,
) -> Result<meridian_core::apply::Applied, ApiError> {
    let command = Command::Delete {
        address,
        expect_version: None,
    };
    commit(state, command, meta)
        .await
        .map_err(|e| match e.status {
            StatusCode::NOT_FOUND => ApiError::not_found(what),
            _ => e,
        })
}

/// `DELETE /v1/tokens/{id}`: the token stops working at every node with this revision.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "access",
    summary = "Revoke a token at every node",
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::Revoked), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn revoke(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = token_id(path)?;
        let meta = write_meta(&principal, &request, Some(format!("token {id} revoked")))?;
        let what = format!("token {id}");
        let applied = delete_record(&state, token_address(id), meta, &what).await?;
        Ok(
            axum::Json(json!({"revoked": id.to_string(), "revision": applied.revision.0}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}

fn policy_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|e| bad("invalid_policy", e.body_text()))?;
    if !valid_policy_name(&name) {
        return Err(bad(
            "invalid_policy",
            format!("policy name {name:?} must match [a-z0-9][a-z0-9_-]*, at most 64 bytes"),
        ));
    }
    Ok(name)
}

/// A stored policy as answered: its record with its name and version.
fn policy_json(name: &str, e: &EntryState) -> Option<Value> {
    let mut v: Value = serde_json::from_str(e.value.as_deref()?).ok()?;
    v["name"] = name.into();
    v["version"] = e.version.0.into();
    Some(v)
}

/// `GET /v1/policies`: every policy, by name.
#[utoipa::path(get, path = "/v1/policies", tag = "access",
    summary = "Every policy",
    responses((status = 200, description = "The policies by name.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn list_policies(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        let (revision, items) = system_namespace(&state, POLICIES_ENV).await?;
        let policies: Vec<Value> = items
            .iter()
            .filter_map(|(name, e)| policy_json(name, e))
            .collect();
        Ok(axum::Json(json!({"revision": revision, "policies": policies})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/policies/{name}`.
#[utoipa::path(get, path = "/v1/policies/{name}", tag = "access",
    summary = "One policy",
    responses((status = 200, description = "The policy.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get_policy(
    State(state): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let name = policy_name(path)?;
        let (_, items) = system_namespace(&state, POLICIES_ENV).await?;
        let (_, e) = items
            .iter()
            .find(|(k, _)| *k == name)
            .ok_or_else(|| ApiError::not_found(format!("policy {name}")))?;
        let v = policy_json(&name, e)
            .ok_or_else(|| internal(&format!("policy {name} is not stored as JSON")))?;
        Ok(axum::Json(v).into_response())
    };
    inner.await.map_err(count_error)
}

/// The command of a `PUT /v1/policies/{name}` body (a policy record, checked).
pub fn policy_command(name: &str, body: &[u8]) -> Result<Command, ApiError> {
    let record: PolicyRecord = json_body(body)?;
    record
        .compile()
        .map_err(|e| bad("invalid_policy", e.to_string()))?;
    Ok(Command::Put {
        address: policy_address(name),
        value: serde_json::to_string(&record)
            .map_err(|e| internal(&e))?
            .into(),
        expect_version: None,
    })
}

/// `PUT /v1/policies/{name}`: creates or replaces a policy.
#[utoipa::path(put, path = "/v1/policies/{name}", tag = "access",
    summary = "Create or replace a policy binding subjects to a role on resources",
    request_body(content = meridian_net::openapi::AnyObject, description = "`{\"subjects\", \"role\" | \"actions\", \"resources\"}`", example = json!({"subjects":["group:ops"],"role":"viewer","resources":["*/*/*"]})),
    responses((status = 200, description = "The policy.", body = meridian_net::openapi::NamedRecord), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put_policy(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let name = policy_name(path)?;
        let body = body.map_err(body_error)?;
        let command = policy_command(&name, &body)?;
        let meta = write_meta(&principal, &request, Some(format!("policy {name} set")))?;
        let applied = commit(&state, command, meta).await?;
        let version = applied.entry().map_or(0, |e| e.version.0);
        Ok(
            axum::Json(json!({"name": name, "version": version, "revision": applied.revision.0}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}

/// `DELETE /v1/policies/{name}`.
#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "access",
    summary = "Delete a policy",
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete_policy(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let name = policy_name(path)?;
        let meta = write_meta(&principal, &request, Some(format!("policy {name} deleted")))?;
        let what = format!("policy {name}");
        let applied = delete_record(&state, policy_address(&name), meta, &what).await?;
        Ok(axum::Json(json!({"deleted": name, "revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/whoami`: who the presented token is.
#[utoipa::path(get, path = "/v1/whoami", tag = "access",
    summary = "Who the presented token is",
    responses((status = 200, description = "The principal.", body = meridian_net::openapi::Whoami))
)]
pub(crate) async fn whoami(Extension(principal): Extension<Arc<Principal>>) -> Response {
    axum::Json(json!({
        "actor": principal.actor(),
        "id": principal.id.map(|i| i.to_string()),
        "name": principal.name,
        "anonymous": principal.is_anonymous(),
    }))
    .into_response()
}
