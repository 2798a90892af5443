//! Keys: `GET/PUT/PATCH/DELETE /v1/kv/{app}/{env}/{key}`, prefix lists, resolved
//! configuration, and transactions (`POST /v1/txn`).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::{RequestMeta, authorize, readable};
use meridian_net::http::{ApiError, json_bytes, write_entry};
use meridian_net::reads;
use meridian_net::secrets::Revealer;
use meridian_protocol::auth::{Action, Principal, Resource};
use meridian_protocol::{Address, CacheState, EntryState};
use serde::Deserialize;

use super::{
    AppState, Shared, address, body_error, check_revision_size, cluster_error, commit, count_error,
    json_body, namespace, query, write_meta,
};
use meridian_core::apply::{Command, Condition, TxnOp};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

/// The command a `PUT /v1/kv/{address}` body `{"value", "reason"?, "expect_version"?}` asks
/// for, and its reason; 400 `malformed_json` or 413 `value_too_large` naming the problem.
pub fn put_command(
    address: Address,
    body: &[u8],
    max_value_bytes: usize,
) -> Result<(Command, Option<String>), ApiError> {
    let parsed: PutBody = json_body(body)?;
    refuse_reserved(&parsed.value)?;
    let text = parsed.value.to_string();
    if text.len() > max_value_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "value is {} bytes; the limit is {max_value_bytes}",
                text.len()
            ),
        ));
    }
    let command = Command::Put {
        address,
        value: text.into(),
        expect_version: parsed.expect_version,
    };
    Ok((command, parsed.reason))
}

/// The command a `PATCH /v1/kv/{address}` body `{"patch", "reason"?, "expect_version"?}` asks
/// for (a JSON Merge Patch whose result may be at most `max_value_bytes`), and its reason.
pub fn patch_command(
    address: Address,
    body: &[u8],
    max_value_bytes: usize,
) -> Result<(Command, Option<String>), ApiError> {
    let parsed: PatchBody = json_body(body)?;
    let command = Command::Patch {
        address,
        patch: parsed.patch.to_string().into(),
        expect_version: parsed.expect_version,
        max_value_bytes: max_value_bytes as u64,
    };
    Ok((command, parsed.reason))
}

/// The transaction a `POST /v1/txn` body asks for.
pub fn txn_body_command(body: &[u8], max_value_bytes: usize) -> Result<TxnRequest, ApiError> {
    let parsed: TxnBody = json_body(body)?;
    let reason = parsed.reason.clone();
    let mut secret_ops = Vec::new();
    let command = txn_command(parsed, max_value_bytes, &mut secret_ops)?;
    Ok(TxnRequest {
        command,
        reason,
        secret_ops,
    })
}

#[utoipa::path(put, path = "/v1/kv/{app}/{env}/{key}", tag = "keys",
    summary = "Write one key",
    request_body = PutBody,
    responses((status = 200, description = "The value as committed.", body = meridian_net::openapi::Entry), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 413, description = "`value_too_large`.", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`schema_violation`: the value violates its JSON Schema.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let body = body.map_err(body_error)?;
        let (command, reason) = put_command(address.clone(), &body, state.max_value_bytes)?;
        let meta = write_meta(&principal, &request, reason)?;
        let applied = commit(&state, command, meta).await?;
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

#[utoipa::path(delete, path = "/v1/kv/{app}/{env}/{key}", tag = "keys",
    summary = "Delete one key",
    params(("reason" = Option<String>, Query, description = "Recorded in the history and the audit log."), ("expect_version" = Option<u64>, Query, description = "Refuse with 409 unless the record is at this version (0: must not exist).")),
    responses((status = 200, description = "The revision of the delete.", body = meridian_net::openapi::Committed), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let q = query(q)?;
        let meta = write_meta(&principal, &request, q.reason)?;
        let mut command = Command::Delete {
            address,
            expect_version: q.expect_version,
        };
        guard_secret_deletes(&state, &principal, &mut command)?;
        let applied = commit(&state, command, meta).await?;
        Ok(axum::Json(serde_json::json!({"revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}

/// A linearizable read. It reflects every acknowledged write, so `min_revision` only fails
/// (504 at once, no wait) for a revision no write has been acknowledged at yet. `${secret:key}`
/// references open for a caller with `secret-read`, and are audited before the answer goes.
pub(crate) async fn linearized_read(
    state: &Arc<AppState>,
    principal: &Principal,
    request: &RequestMeta,
    min: Option<(u64, u64)>,
    read: impl FnOnce(&CacheState, reads::Access<'_>) -> Result<Vec<u8>, ApiError>,
) -> Result<Response, ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let (body, reveals) = {
        let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
        if let Some((want, _)) = min {
            let have = p.state.revision().0;
            if have < want {
                return Err(reads::revision_not_reached(have, want, 0));
            }
        }
        let keys = super::secrets::key_source(state.keyring.as_deref(), &p.state);
        let revealer = Revealer::new(principal, &keys, meridian_core::history::now_ms());
        let body = {
            let visible = readable(principal);
            let opener =
                |app: &str, env: &str, key: &str, e: &EntryState| revealer.open(app, env, key, e);
            read(
                &p.state,
                reads::Access {
                    visible: &visible,
                    secrets: Some(&opener),
                },
            )?
        };
        (body, revealer.into_reveals())
    };
    super::secrets::audit_reveals(state, reveals, request).await?;
    Ok(json_bytes(body))
}

#[utoipa::path(get, path = "/v1/kv/{app}/{env}/{key}", tag = "keys",
    summary = "Read one key's value, resolved",
    params(("raw" = Option<bool>, Query, description = "`true`: the stored value, references unresolved."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000)."), ("default" = Option<String>, Query, description = "JSON answered (marked `default: true`) when the key has no value.")),
    responses((status = 200, description = "The value.", body = meridian_net::openapi::Entry), (status = 404, description = "`not_found`: the key has no value (see `default`).", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`unresolved_reference`: a `${key}` reference does not resolve.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get_one(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<reads::EntryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let q: reads::EntryQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, &principal, &request, min, |s, access| {
            reads::entry(s, &a, &q, access)
        })
        .await
    };
    inner.await.map_err(count_error)
}

#[utoipa::path(get, path = "/v1/kv/{app}/{env}", tag = "keys",
    summary = "Read many keys: a prefix, paged, or named keys",
    params(("prefix" = Option<String>, Query, description = "Keys starting with this."), ("keys" = Option<String>, Query, description = "Comma-separated keys (at most 1,000; not paged)."), ("limit" = Option<u64>, Query, description = "Page size (default 1,000, at most 10,000)."), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."), ("raw" = Option<bool>, Query, description = "`true`: the stored value, references unresolved."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "The values, sorted by key.", body = meridian_net::openapi::EntryList))
)]
pub(crate) async fn list(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q: reads::ListQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, &principal, &request, min, |s, access| {
            reads::list(s, &app, &env, &q, access)
        })
        .await
    };
    inner.await.map_err(count_error)
}

#[utoipa::path(get, path = "/v1/config/{app}/{env}", tag = "keys",
    summary = "Read the resolved configuration of an app/env",
    params(("raw" = Option<bool>, Query, description = "`true`: the stored value, references unresolved."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "Every key, resolved through app/env > app/_ > _/env > _/_.", body = meridian_net::openapi::ResolvedConfig))
)]
pub(crate) async fn config(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ConfigQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q: reads::ConfigQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, &principal, &request, min, |s, access| {
            reads::config(s, &app, &env, &q, access)
        })
        .await
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// A JSON Merge Patch (RFC 7386).
    patch: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

#[utoipa::path(patch, path = "/v1/kv/{app}/{env}/{key}", tag = "keys",
    summary = "Apply a JSON Merge Patch (RFC 7386) to one key",
    request_body = PatchBody,
    responses((status = 200, description = "The value as committed.", body = meridian_net::openapi::Entry), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 413, description = "`value_too_large`.", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`schema_violation`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn patch(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let address = address(path)?;
        let body = body.map_err(body_error)?;
        let (command, reason) = patch_command(address.clone(), &body, state.max_value_bytes)?;
        let meta = write_meta(&principal, &request, reason)?;
        let applied = commit(&state, command, meta).await?;
        let entry = applied.entry().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the patch changed nothing",
            )
        })?;
        let mut buf = Vec::with_capacity(128);
        write_entry(&mut buf, &address.app, &address.env, &address.key, entry);
        Ok(json_bytes(buf))
    };
    inner.await.map_err(count_error)
}

pub use crate::admission::MAX_TXN_ITEMS;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TxnBody {
    #[serde(default)]
    conditions: Vec<TxnCondition>,
    ops: Vec<TxnOpBody>,
    #[serde(default)]
    reason: Option<String>,
}

/// `{"address": "app/env/key"}` plus exactly one of `version`, `exists: true`, `absent: true`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TxnCondition {
    address: String,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    exists: Option<bool>,
    #[serde(default)]
    absent: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum TxnOpBody {
    Put {
        address: String,
        value: serde_json::Value,
        /// Seal the value as a secret (needs `secret-write`).
        #[serde(default)]
        secret: bool,
    },
    Delete {
        address: String,
    },
    /// A flag's definition (`address`: `app/env/flag`), checked with the rest of its set.
    #[serde(rename = "put_flag")]
    PutFlag {
        address: String,
        definition: serde_json::Value,
    },
    /// Deletes a flag (`address`: `app/env/flag`).
    #[serde(rename = "delete_flag")]
    DeleteFlag {
        address: String,
    },
}

/// Parses `app/env/flag` into the flag's record address.
fn parse_flag_address(s: &str) -> Result<Address, ApiError> {
    let mut parts = s.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(app), Some(env), Some(flag)) => Address::flag(app, env, flag)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_flag", e.to_string())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_flag",
            format!("flag address {s:?} is not app/env/flag"),
        )),
    }
}

/// Parses `app/env/key`.
fn parse_address(s: &str) -> Result<Address, ApiError> {
    let mut parts = s.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(app), Some(env), Some(key)) => Ok(Address::parse(app, env, key)?),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("address {s:?} is not app/env/key"),
        )),
    }
}

/// 400 `reserved_value` for a plain value shaped like a stored secret.
fn refuse_reserved(value: &serde_json::Value) -> Result<(), ApiError> {
    if meridian_protocol::secrets::is_reserved_value(value) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_value",
            "a plain value may not be an object with a \"$secret\" field; write secrets with PUT /v1/secrets/{app}/{env}/{key}",
        ));
    }
    Ok(())
}

/// A transaction as asked for: the command (secret operations still holding their value in
/// clear, at the positions `secret_ops` lists, to be sealed before it is proposed).
pub struct TxnRequest {
    /// The command.
    pub command: Command,
    /// Why.
    pub reason: Option<String>,
    /// Which operations are secrets.
    pub secret_ops: Vec<usize>,
}

fn txn_command(
    body: TxnBody,
    max_value_bytes: usize,
    secret_ops: &mut Vec<usize>,
) -> Result<Command, ApiError> {
    let items = body.conditions.len() + body.ops.len();
    if items > MAX_TXN_ITEMS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_command",
            format!("{items} conditions and operations; at most {MAX_TXN_ITEMS}"),
        ));
    }
    if body.ops.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_command",
            "a transaction needs at least one operation",
        ));
    }
    let mut conditions = Vec::with_capacity(body.conditions.len());
    for (i, c) in body.conditions.into_iter().enumerate() {
        let a = parse_address(&c.address)?;
        conditions.push(match (c.version, c.exists, c.absent) {
            (Some(v), None, None) => Condition::VersionEquals(a, v),
            (None, Some(true), None) => Condition::Exists(a),
            (None, None, Some(true)) => Condition::Absent(a),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_command",
                    format!(
                        "condition {i} ({}) needs exactly one of \"version\": n, \"exists\": true, \"absent\": true",
                        c.address
                    ),
                ));
            }
        });
    }
    let mut ops = Vec::with_capacity(body.ops.len());
    for op in body.ops {
        ops.push(match op {
            TxnOpBody::Put {
                address,
                value,
                secret,
            } => {
                if secret {
                    secret_ops.push(ops.len());
                } else {
                    refuse_reserved(&value)?;
                }
                let text = value.to_string();
                if text.len() > max_value_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "value_too_large",
                        format!(
                            "value for {address} is {} bytes; the limit is {max_value_bytes}",
                            text.len()
                        ),
                    ));
                }
                TxnOp::Put(parse_address(&address)?, text.into())
            }
            TxnOpBody::Delete { address } => TxnOp::Delete(parse_address(&address)?),
            TxnOpBody::PutFlag {
                address,
                definition,
            } => {
                let text = definition.to_string();
                if text.len() > max_value_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "value_too_large",
                        format!(
                            "definition of {address} is {} bytes; the limit is {max_value_bytes}",
                            text.len()
                        ),
                    ));
                }
                TxnOp::Put(parse_flag_address(&address)?, text.into())
            }
            TxnOpBody::DeleteFlag { address } => TxnOp::Delete(parse_flag_address(&address)?),
        });
    }
    Ok(Command::Txn { conditions, ops })
}

/// Every operation of a transaction needs its own permission (write or delete on its key) and
/// every condition read permission on its key: one refusal refuses the whole transaction.
pub(crate) fn authorize_txn(
    principal: &Principal,
    command: &Command,
    secret_ops: &[usize],
) -> Result<(), ApiError> {
    let Command::Txn { conditions, ops } = command else {
        return Ok(());
    };
    fn key(a: &Address) -> Resource<'_> {
        Resource::Key {
            app: &a.app,
            env: &a.env,
            key: &a.key,
        }
    }
    for c in conditions {
        authorize(principal, Action::Read, &key(c.address()))?;
    }
    for (i, op) in ops.iter().enumerate() {
        let a = op.address();
        if a.is_flag() {
            // Flags are written per app/env, as on the flag routes.
            let ns = Resource::Prefix {
                app: &a.app,
                env: &a.env,
                prefix: "",
            };
            authorize(principal, Action::Flag, &ns)?;
            continue;
        }
        let action = match op {
            TxnOp::Put(..) if secret_ops.contains(&i) => Action::SecretWrite,
            TxnOp::Put(..) => Action::Write,
            TxnOp::Delete(_) => Action::Delete,
        };
        authorize(principal, action, &key(a))?;
    }
    Ok(())
}

/// Deleting a key that holds a secret needs `secret-write` on it as well as `delete`; the
/// delete is then conditioned on the version seen, so that what it removes is what was checked.
pub(crate) fn guard_secret_deletes(
    state: &AppState,
    principal: &Principal,
    command: &mut Command,
) -> Result<(), ApiError> {
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let secret_version = |a: &Address| {
        p.state
            .get_live(&a.app, &a.env, &a.key)
            .filter(|e| {
                e.value
                    .as_deref()
                    .is_some_and(meridian_protocol::secrets::is_sealed_text)
            })
            .map(|e| e.version.0)
    };
    let check = |a: &Address| {
        authorize(
            principal,
            Action::SecretWrite,
            &Resource::Key {
                app: &a.app,
                env: &a.env,
                key: &a.key,
            },
        )
    };
    match command {
        Command::Delete {
            address,
            expect_version,
        } => {
            if let Some(v) = secret_version(address) {
                check(address)?;
                expect_version.get_or_insert(v);
            }
        }
        Command::Txn { conditions, ops } => {
            for op in ops.iter() {
                if let TxnOp::Delete(a) = op
                    && let Some(v) = secret_version(a)
                {
                    check(a)?;
                    conditions.push(Condition::VersionEquals(a.clone(), v));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Seals the secret operations of a transaction (their values checked against the schemas in
/// clear first), adding the conditions that bind each to the version it was sealed for.
pub(crate) async fn seal_secret_ops(
    state: &Arc<AppState>,
    command: &mut Command,
    secret_ops: &[usize],
    now_ms: u64,
) -> Result<(), ApiError> {
    let Command::Txn { conditions, ops } = command else {
        return Ok(());
    };
    if secret_ops.is_empty() {
        return Ok(());
    }
    let keyring = state.keyring.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets_unconfigured",
            "secrets are not configured on this node: set [secrets] kek_file",
        )
    })?;
    for &i in secret_ops {
        if let Some(TxnOp::Put(a, text)) = ops.get(i) {
            super::secrets::check_schema(state, a, text)?;
        }
    }
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    let mut sealing = crate::secrets::Sealing::default();
    for &i in secret_ops {
        let Some(TxnOp::Put(a, text)) = ops.get(i).cloned() else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let write = crate::secrets::SecretWrite {
            value,
            ..Default::default()
        };
        let put = crate::secrets::seal_write(keyring, &p.state, &a, &write, now_ms, &mut sealing)
            .map_err(super::secrets::secrets_error)?;
        ops[i] = put;
    }
    conditions.extend(sealing.conditions);
    ops.extend(sealing.ops);
    Ok(())
}

/// Checks the flag operations of a transaction against the flag sets they change (each set
/// as a whole, after all its operations), and conditions the transaction on the version of
/// every such set's `_flagset` record: 422 `invalid_flags` naming the path.
pub(crate) async fn check_flag_ops(
    state: &Arc<AppState>,
    command: &mut Command,
) -> Result<(), ApiError> {
    let Command::Txn { conditions, ops } = command else {
        return Ok(());
    };
    let mut touched: std::collections::BTreeMap<(String, String), Vec<&TxnOp>> =
        std::collections::BTreeMap::new();
    for op in ops.iter().filter(|op| op.address().is_flag()) {
        let a = op.address();
        touched
            .entry((a.app.clone(), a.env.clone()))
            .or_default()
            .push(op);
    }
    if touched.is_empty() {
        return Ok(());
    }
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    for ((app, env), flag_ops) in touched {
        let ns = p.state.namespace(&app, &env);
        let mut document = crate::flagset::current(ns);
        for op in flag_ops {
            let Some(flag) = meridian_protocol::flags::flag_of_record(&op.address().key) else {
                continue;
            };
            match op {
                TxnOp::Put(_, text) => {
                    let definition = serde_json::from_str(text).map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
                    })?;
                    document.flags.insert(flag.to_owned(), definition);
                }
                TxnOp::Delete(_) => {
                    document.flags.remove(flag);
                }
            }
        }
        let value = serde_json::to_value(&document).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        crate::flagset::check_document(&value).map_err(super::flags::invalid)?;
        let set = Address {
            app: app.clone(),
            env: env.clone(),
            key: meridian_protocol::flags::FLAGSET_KEY.to_owned(),
        };
        conditions.push(
            match ns
                .and_then(|n| n.get(&set.key))
                .filter(|e| !e.is_tombstone())
            {
                Some(e) => Condition::VersionEquals(set, e.version.0),
                None => Condition::Absent(set),
            },
        );
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/txn", tag = "keys",
    summary = "Commit a transaction: conditions and operations as one revision",
    request_body = TxnBody,
    responses((status = 200, description = "The revision and every changed key.", body = meridian_net::openapi::TxnAnswer, example = json!({"revision": 7, "changed": [{"app": "payments", "env": "prod", "key": "flag", "deleted": false, "version": 1, "revision": 7}]})), (status = 409, description = "`version_conflict` / `condition_failed`: the record changed (nothing is committed).", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`approval_required`: a protection rule covers the key; propose a change request.", body = meridian_net::openapi::ErrorBody), (status = 413, description = "`revision_too_large` or `value_too_large`.", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`schema_violation` or `invalid_flags`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn txn(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let body = body.map_err(body_error)?;
        let TxnRequest {
            command: asked,
            reason,
            secret_ops,
        } = txn_body_command(&body, state.max_value_bytes)?;
        authorize_txn(&principal, &asked, &secret_ops)?;
        let mut asked = asked;
        guard_secret_deletes(&state, &principal, &mut asked)?;
        let meta = write_meta(&principal, &request, reason)?;
        let mut attempt = 0;
        let applied = loop {
            attempt += 1;
            let mut command = asked.clone();
            check_flag_ops(&state, &mut command).await?;
            seal_secret_ops(&state, &mut command, &secret_ops, meta.time_ms).await?;
            check_revision_size(&command, "the transaction")?;
            match commit(&state, command, meta.clone()).await {
                Ok(applied) => break applied,
                // A sealed value is bound to the version read: taken again after a lost race.
                Err(e)
                    if !secret_ops.is_empty()
                        && attempt < 4
                        && matches!(e.code, "version_conflict" | "condition_failed") => {}
                Err(e) => return Err(e),
            }
        };
        let changed: Vec<_> = applied
            .entries
            .iter()
            .map(|(a, e)| {
                serde_json::json!({
                    "app": a.app, "env": a.env, "key": a.key,
                    "version": e.version.0, "revision": e.revision.0,
                    "deleted": e.is_tombstone(),
                })
            })
            .collect();
        Ok(
            axum::Json(serde_json::json!({"revision": applied.revision.0, "changed": changed}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}
