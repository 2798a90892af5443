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
use meridian_protocol::auth::{Action, Principal, Resource};
use meridian_protocol::{Address, CacheState};
use serde::Deserialize;

use super::{
    AppState, Shared, address, body_error, check_revision_size, cluster_error, commit, count_error,
    json_body, namespace, query, write_meta,
};
use crate::core::{Command, Condition, TxnOp};

#[derive(Deserialize)]
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

/// The command a `POST /v1/txn` body asks for, and its reason.
pub fn txn_body_command(
    body: &[u8],
    max_value_bytes: usize,
) -> Result<(Command, Option<String>), ApiError> {
    let parsed: TxnBody = json_body(body)?;
    let reason = parsed.reason.clone();
    Ok((txn_command(parsed, max_value_bytes)?, reason))
}

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
        let applied = commit(
            &state,
            Command::Delete {
                address,
                expect_version: q.expect_version,
            },
            meta,
        )
        .await?;
        Ok(axum::Json(serde_json::json!({"revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}

/// Answers `read(state)` after a linearizable read barrier.
/// A linearizable read. It reflects every acknowledged write, so `min_revision` only fails
/// (504 at once, no wait) for a revision no write has been acknowledged at yet.
pub(crate) async fn linearized_read(
    state: &Arc<AppState>,
    min: Option<(u64, u64)>,
    read: impl FnOnce(&CacheState) -> Result<Vec<u8>, ApiError>,
) -> Result<Response, ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    if let Some((want, _)) = min {
        let have = p.state.revision().0;
        if have < want {
            return Err(reads::revision_not_reached(have, want, 0));
        }
    }
    read(&p.state).map(json_bytes)
}

pub(crate) async fn get_one(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<reads::EntryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let a = address(path)?;
        let q: reads::EntryQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, min, |s| {
            reads::entry(s, &a, &q, &readable(&principal))
        })
        .await
    };
    inner.await.map_err(count_error)
}

pub(crate) async fn list(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q: reads::ListQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, min, |s| {
            reads::list(s, &app, &env, &q, &readable(&principal))
        })
        .await
    };
    inner.await.map_err(count_error)
}

pub(crate) async fn config(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ConfigQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env) = namespace(path)?;
        let q: reads::ConfigQuery = query(q)?;
        let min = reads::min_revision(q.min_revision, q.wait_ms)?;
        linearized_read(&state, min, |s| {
            reads::config(s, &app, &env, &q, &readable(&principal))
        })
        .await
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// A JSON Merge Patch (RFC 7386).
    patch: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    conditions: Vec<TxnCondition>,
    ops: Vec<TxnOpBody>,
    #[serde(default)]
    reason: Option<String>,
}

/// `{"address": "app/env/key"}` plus exactly one of `version`, `exists: true`, `absent: true`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnCondition {
    address: String,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    exists: Option<bool>,
    #[serde(default)]
    absent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum TxnOpBody {
    Put {
        address: String,
        value: serde_json::Value,
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

fn txn_command(body: TxnBody, max_value_bytes: usize) -> Result<Command, ApiError> {
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
            TxnOpBody::Put { address, value } => {
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
fn authorize_txn(principal: &Principal, command: &Command) -> Result<(), ApiError> {
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
    for op in ops {
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
            TxnOp::Put(..) => Action::Write,
            TxnOp::Delete(_) => Action::Delete,
        };
        authorize(principal, action, &key(a))?;
    }
    Ok(())
}

/// Checks the flag operations of a transaction against the flag sets they change (each set
/// as a whole, after all its operations), and conditions the transaction on the version of
/// every such set's `_flagset` record: 422 `invalid_flags` naming the path.
async fn check_flag_ops(state: &Arc<AppState>, command: &mut Command) -> Result<(), ApiError> {
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

pub(crate) async fn txn(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let body = body.map_err(body_error)?;
        let (mut command, reason) = txn_body_command(&body, state.max_value_bytes)?;
        authorize_txn(&principal, &command)?;
        check_flag_ops(&state, &mut command).await?;
        let meta = write_meta(&principal, &request, reason)?;
        check_revision_size(&command, "the transaction")?;
        let applied = commit(&state, command, meta).await?;
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
