//! Change requests (`/v1/changes`): propose a transaction for protected keys, review its diff
//! and schema check, approve, reject, comment, refresh, cancel, and apply it as one revision
//! conditioned on the versions reviewed. What each step means is decided in the apply core
//! ([`meridian_core::changes`]); this module checks who may take it.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_core::apply::{Command, Condition, TxnOp};
use meridian_core::changes::{self, ChangeOp, ChangeRecord, ChangeState};
use meridian_net::auth::{RequestMeta, authorize};
use meridian_net::http::ApiError;
use meridian_protocol::auth::{Action, Principal, ProtectionRecord, Resource};
use meridian_protocol::secrets::is_sealed_text;
use meridian_protocol::{Address, CacheState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::kv::{
    authorize_txn, check_flag_ops, guard_secret_deletes, seal_secret_ops, txn_body_command,
};
use crate::http::{
    AppState, Shared, body_error, check_revision_size, cluster_error, commit, count_error,
    json_body, query, write_meta,
};

/// Most changes one list answers.
pub const MAX_LIST: usize = 500;

type Rules = Vec<(String, ProtectionRecord)>;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn key(a: &Address) -> Resource<'_> {
    Resource::Key {
        app: &a.app,
        env: &a.env,
        key: &a.key,
    }
}

/// The operations a person wrote (not the data-key record sealing adds beside a namespace's
/// first secret, which goes with the secret's own write).
fn written(record: &ChangeRecord) -> impl Iterator<Item = &TxnOp> {
    record
        .ops
        .iter()
        .filter(|op| op.address().key != meridian_protocol::secrets::DATA_KEY_RECORD)
}

fn change_id(path: Result<Path<u64>, PathRejection>) -> Result<u64, ApiError> {
    path.map(|Path(id)| id).map_err(|e| {
        bad(
            "invalid_change",
            format!("bad change id: {}", e.body_text()),
        )
    })
}

/// `apply_at` as RFC 3339 text or milliseconds since the Unix epoch.
fn apply_at(v: Value) -> Result<u64, ApiError> {
    let bad_time = || {
        bad(
            "invalid_time",
            "apply_at must be an RFC 3339 time (2026-12-07T09:00:00Z) or ms since the Unix epoch",
        )
    };
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad_time),
        Value::String(s) => {
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad_time())?;
            u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad_time())
        }
        _ => Err(bad_time()),
    }
}

/// The change `id` and the rules in force, read linearizably (404 when there is none), if
/// `principal` may read every key it writes.
async fn load(
    state: &Arc<AppState>,
    principal: &Principal,
    id: u64,
) -> Result<(ChangeRecord, Rules), ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let (record, rules) = {
        let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
        let record = changes::load(core.state(), id).map_err(internal)?;
        (record, core.protections().to_vec())
    };
    let record = record.ok_or_else(|| ApiError::not_found(format!("change {id}")))?;
    for op in written(&record) {
        authorize(principal, Action::Read, &key(op.address()))?;
    }
    Ok((record, rules))
}

/// How a change is answered: its record, its status under the rules in force, what each rule
/// needs and has, its diff against the current state (secrets masked) and its schema check.
fn view(state: &AppState, record: &ChangeRecord, rules: &Rules) -> Value {
    let current: Vec<(Option<String>, u64)> = {
        let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
        written(record)
            .map(|op| live(&p.state, op.address()))
            .collect()
    };
    let reviewed = |a: &Address| {
        record.conditions.iter().find_map(|c| match c {
            Condition::VersionEquals(ca, v) if ca == a => Some(*v),
            _ => None,
        })
    };
    let shown = |v: Option<&str>| match v {
        Some(t) if is_sealed_text(t) => json!({"secret": true}),
        Some(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        None => Value::Null,
    };
    let diff: Vec<Value> = written(record)
        .zip(&current)
        .map(|(op, (value, version))| {
            let a = op.address();
            let (kind, proposed) = match op {
                TxnOp::Put(_, v) => ("put", shown(Some(v))),
                TxnOp::Delete(_) => ("delete", Value::Null),
            };
            json!({
                "app": a.app, "env": a.env, "key": a.key, "op": kind,
                "current": shown(value.as_deref()), "current_version": version,
                "reviewed_version": reviewed(a), "proposed": proposed,
            })
        })
        .collect();
    let violations: Vec<Value> = {
        let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
        match core.schemas() {
            Ok(registry) => record
                .ops
                .iter()
                .filter_map(|op| match op {
                    TxnOp::Put(a, v) => registry.check(a, v).err().map(|e| {
                        json!({"app": a.app, "env": a.env, "key": a.key, "prefix": e.prefix,
                               "path": e.path, "rule": e.rule, "message": e.message})
                    }),
                    TxnOp::Delete(_) => None,
                })
                .collect(),
            Err(e) => vec![json!({"message": e.to_string()})],
        }
    };
    let required: Vec<Value> = changes::required(rules, &record.ops)
        .into_iter()
        .map(|(rule, need)| {
            let have = record
                .approvals
                .iter()
                .filter(|a| a.actor != record.author && a.rules.iter().any(|r| r == rule))
                .count();
            json!({"rule": rule, "approvals": need, "have": have})
        })
        .collect();
    let applied = match &record.state {
        ChangeState::Applied {
            revision,
            by,
            at_ms,
            break_glass,
        } => json!({"revision": revision, "by": by, "at_ms": at_ms, "break_glass": break_glass}),
        _ => Value::Null,
    };
    json!({
        "id": record.id,
        "status": record.status(rules),
        "author": record.author,
        "reason": record.reason,
        "created_ms": record.created_ms,
        "apply_at_ms": record.apply_at_ms,
        "required": required,
        "approvals": record.approvals,
        "notes": record.notes,
        "applied": applied,
        "diff": diff,
        "schema": {"ok": violations.is_empty(), "violations": violations},
    })
}

fn live(state: &CacheState, a: &Address) -> (Option<String>, u64) {
    state
        .get_live(&a.app, &a.env, &a.key)
        .map_or((None, 0), |e| {
            (e.value.as_deref().map(str::to_owned), e.version.0)
        })
}

/// `POST /v1/changes`: the body of `POST /v1/txn` (flags and secrets included) with a
/// required `reason` and an optional `apply_at`. Each written key is conditioned on its
/// current version, what the reviewers see.
#[utoipa::path(post, path = "/v1/changes", tag = "changes",
    summary = "Propose a change request",
    request_body = super::kv::TxnBody,
    responses((status = 201, description = "The change.", body = meridian_net::openapi::ChangeView, example = json!({"id":1,"status":"pending","author":"alice#6c1f0e2a9b3d4c5e","reason":"longer timeout","required":[{"rule":"prod","approvals":1,"have":0}],"approvals":[],"notes":[]})), (status = 422, description = "`schema_violation` or `invalid_flags`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn create(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let body = body.map_err(body_error)?;
        let mut object: serde_json::Map<String, Value> = json_body(&body)?;
        let apply_at_ms = object.remove("apply_at").map(apply_at).transpose()?;
        let txn = serde_json::to_vec(&object).map_err(internal)?;
        let asked = txn_body_command(&txn, state.max_value_bytes)?;
        let reason = asked
            .reason
            .clone()
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| bad("missing_reason", "a change request needs a \"reason\""))?;
        authorize_txn(&principal, &asked.command, &asked.secret_ops)?;
        let mut command = asked.command;
        guard_secret_deletes(&state, &principal, &mut command)?;
        let meta = write_meta(&principal, &request, Some(reason.clone()))?;
        check_flag_ops(&state, &mut command).await?;
        seal_secret_ops(&state, &mut command, &asked.secret_ops, meta.time_ms).await?;
        check_revision_size(&command, "the change")?;
        let Command::Txn {
            mut conditions,
            ops,
        } = command
        else {
            return Err(internal("a transaction body made no transaction"));
        };
        state.cluster.linearize().await.map_err(cluster_error)?;
        {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            for op in &ops {
                let a = op.address();
                let (_, version) = live(&p.state, a);
                let reviewed = Condition::VersionEquals(a.clone(), version);
                if !conditions.contains(&reviewed) {
                    conditions.push(reviewed);
                }
            }
        }
        let op = ChangeOp::Create {
            reason,
            apply_at_ms,
            conditions,
            ops,
        };
        let applied = commit(&state, Command::Change(op), meta).await?;
        let id = applied
            .change
            .ok_or_else(|| internal("the change was not numbered"))?;
        let (record, rules) = load(&state, &principal, id).await?;
        Ok((
            StatusCode::CREATED,
            axum::Json(view(&state, &record, &rules)),
        )
            .into_response())
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/changes?status=&after=&limit=`: changes whose keys the caller may read, oldest
/// first, at most `limit` (500) scanned per page; `next` continues.
#[utoipa::path(get, path = "/v1/changes", tag = "changes",
    summary = "Change requests the caller may read, oldest first",
    params(("status" = Option<String>, Query, description = "`pending`, `approved`, `rejected`, `applied` or `cancelled`."), ("after" = Option<u64>, Query, description = "Changes after this id."), ("limit" = Option<u64>, Query, description = "At most this many scanned.")),
    responses((status = 200, description = "Changes; `next` continues.", body = meridian_net::openapi::ChangeList))
)]
pub(crate) async fn list(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let q = query(q)?;
        const STATUSES: [&str; 5] = ["pending", "approved", "rejected", "applied", "cancelled"];
        if let Some(s) = &q.status
            && !STATUSES.contains(&s.as_str())
        {
            return Err(bad(
                "bad_query",
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
        let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
        state.cluster.linearize().await.map_err(cluster_error)?;
        let (records, rules) = {
            let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            let records = changes::list(core.state().backend(), q.after.unwrap_or(0), limit)
                .map_err(internal)?;
            (records, core.protections().to_vec())
        };
        let next = (records.len() == limit).then(|| records.last().map(|r| r.id));
        let items: Vec<Value> = records
            .iter()
            .filter(|r| written(r).all(|op| principal.allows(Action::Read, &key(op.address()))))
            .filter(|r| q.status.as_deref().is_none_or(|s| r.status(&rules) == s))
            .map(|r| view(&state, r, &rules))
            .collect();
        Ok(axum::Json(json!({"changes": items, "next": next.flatten()})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/changes/{id}`.
#[utoipa::path(get, path = "/v1/changes/{id}", tag = "changes",
    summary = "One change request: status, rules, approvals, diff, schema check",
    responses((status = 200, description = "The change.", body = meridian_net::openapi::ChangeView, example = json!({"id":1,"status":"pending","author":"alice#6c1f0e2a9b3d4c5e","reason":"longer timeout","required":[{"rule":"prod","approvals":1,"have":0}],"approvals":[],"notes":[]})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn show(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let (record, rules) = load(&state, &principal, id).await?;
        Ok(axum::Json(view(&state, &record, &rules)).into_response())
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    text: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    #[serde(default)]
    break_glass: bool,
}

fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_body(body)
    }
}

/// The rules of `record` that `principal` may approve for: those whose covered keys in the
/// change it holds `approve` on, every one of them.
fn approvable(principal: &Principal, record: &ChangeRecord, rules: &Rules) -> Vec<String> {
    changes::required(rules, &record.ops)
        .into_iter()
        .filter(|(name, _)| {
            rules.iter().filter(|(n, _)| n == name).all(|(_, rule)| {
                written(record)
                    .filter(|op| rule.covers(op.address()))
                    .all(|op| principal.allows(Action::Approve, &key(op.address())))
            })
        })
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The rules `principal` may approve `record` for, or 403 `not_an_approver`.
fn approver_of(
    principal: &Principal,
    record: &ChangeRecord,
    rules: &Rules,
) -> Result<Vec<String>, ApiError> {
    let rules = approvable(principal, record, rules);
    if rules.is_empty() {
        return Err(forbidden(
            "not_an_approver",
            format!(
                "{} holds approve on none of the rules change {} needs",
                principal.actor(),
                record.id
            ),
        ));
    }
    Ok(rules)
}

/// One step, committed, answered with the change as it stands after it.
async fn step(
    state: &Arc<AppState>,
    principal: &Principal,
    request: &RequestMeta,
    op: ChangeOp,
) -> Result<Response, ApiError> {
    let id = op.id().unwrap_or_default();
    let meta = write_meta(principal, request, None)?;
    let applied = commit(state, Command::Change(op), meta).await?;
    let (record, rules) = load(state, principal, id).await?;
    let mut v = view(state, &record, &rules);
    v["revision"] = applied.revision.0.into();
    Ok(axum::Json(v).into_response())
}

/// `POST /v1/changes/{id}/approve` `{"comment"?}`: counts for every rule the caller holds
/// `approve` on; never for the change's author.
#[utoipa::path(post, path = "/v1/changes/{id}/approve", tag = "changes",
    summary = "Approve a change request",
    request_body = DecisionBody,
    responses((status = 200, description = "The change after the step. Counts for every rule the caller may approve; never for its author.", body = meridian_net::openapi::ChangeView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`not_an_approver`, `change_refused` or `approval_required`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`stale_change`, `change_scheduled` or `change_closed`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn approve(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let DecisionBody { comment } = optional_body(&body.map_err(body_error)?)?;
        let (record, rules) = load(&state, &principal, id).await?;
        if changes::required(&rules, &record.ops).is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_approval_needed",
                format!("change {id} writes no protected key; it needs no approval"),
            ));
        }
        let rules = approver_of(&principal, &record, &rules)?;
        step(
            &state,
            &principal,
            &request,
            ChangeOp::Approve { id, rules, comment },
        )
        .await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/changes/{id}/reject` `{"comment"?}`: by an approver of one of its rules; final.
#[utoipa::path(post, path = "/v1/changes/{id}/reject", tag = "changes",
    summary = "Reject a change request",
    request_body = DecisionBody,
    responses((status = 200, description = "The change after the step. Final.", body = meridian_net::openapi::ChangeView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`not_an_approver`, `change_refused` or `approval_required`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`stale_change`, `change_scheduled` or `change_closed`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn reject(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let DecisionBody { comment } = optional_body(&body.map_err(body_error)?)?;
        let (record, rules) = load(&state, &principal, id).await?;
        approver_of(&principal, &record, &rules)?;
        step(
            &state,
            &principal,
            &request,
            ChangeOp::Reject { id, comment },
        )
        .await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/changes/{id}/comments` `{"text"}`: by anyone who may read every key of the
/// change and write or approve one of them (its author and its reviewers).
#[utoipa::path(post, path = "/v1/changes/{id}/comments", tag = "changes",
    summary = "Comment on a change request",
    request_body = CommentBody,
    responses((status = 200, description = "The change after the step. By its author and reviewers.", body = meridian_net::openapi::ChangeView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`not_an_approver`, `change_refused` or `approval_required`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`stale_change`, `change_scheduled` or `change_closed`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn comment(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let CommentBody { text } = json_body(&body.map_err(body_error)?)?;
        let (record, _) = load(&state, &principal, id).await?;
        let takes_part = written(&record).any(|op| {
            let k = key(op.address());
            principal.allows(Action::Write, &k) || principal.allows(Action::Approve, &k)
        });
        if !takes_part {
            return Err(forbidden(
                "forbidden",
                format!(
                    "{} may neither write nor approve any key of change {id}",
                    principal.actor()
                ),
            ));
        }
        step(&state, &principal, &request, ChangeOp::Comment { id, text }).await
    };
    inner.await.map_err(count_error)
}

fn author_or_admin(principal: &Principal, record: &ChangeRecord) -> Result<(), ApiError> {
    if principal.actor() == record.author || principal.allows(Action::Admin, &Resource::Everything)
    {
        return Ok(());
    }
    Err(forbidden(
        "forbidden",
        format!(
            "only its author ({}) or an admin may do this to change {}",
            record.author, record.id
        ),
    ))
}

/// `POST /v1/changes/{id}/cancel`: by its author or an admin; final.
#[utoipa::path(post, path = "/v1/changes/{id}/cancel", tag = "changes",
    summary = "Cancel a change request",
    responses((status = 200, description = "The change after the step. By its author or an admin; final.", body = meridian_net::openapi::ChangeView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`not_an_approver`, `change_refused` or `approval_required`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`stale_change`, `change_scheduled` or `change_closed`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn cancel(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let (record, _) = load(&state, &principal, id).await?;
        author_or_admin(&principal, &record)?;
        step(&state, &principal, &request, ChangeOp::Cancel { id }).await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/changes/{id}/refresh`: by its author; the current versions become the reviewed
/// ones and the approvals given so far lapse. A change holding a secret sealed for a version
/// that has moved on must be proposed again (409 `stale_change`).
#[utoipa::path(post, path = "/v1/changes/{id}/refresh", tag = "changes",
    summary = "Make the current versions the reviewed ones",
    responses((status = 200, description = "The change after the step. Approvals given so far lapse.", body = meridian_net::openapi::ChangeView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`not_an_approver`, `change_refused` or `approval_required`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`stale_change`, `change_scheduled` or `change_closed`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn refresh(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let (record, _) = load(&state, &principal, id).await?;
        if principal.actor() != record.author {
            return Err(forbidden(
                "forbidden",
                format!(
                    "only its author ({}) may refresh change {id}",
                    record.author
                ),
            ));
        }
        let conditions = {
            let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::with_capacity(record.conditions.len());
            for c in &record.conditions {
                out.push(match c {
                    Condition::VersionEquals(a, reviewed) => {
                        let (_, now) = live(&p.state, a);
                        let sealed = record.ops.iter().any(|op| {
                            matches!(op, TxnOp::Put(oa, v) if oa == a && is_sealed_text(v))
                        });
                        if sealed && now != *reviewed {
                            return Err(ApiError::new(
                                StatusCode::CONFLICT,
                                "stale_change",
                                format!(
                                    "change {id} writes the secret {a}, sealed for version {}; it is at {now}: propose the change again",
                                    reviewed + 1
                                ),
                            ));
                        }
                        Condition::VersionEquals(a.clone(), now)
                    }
                    other => other.clone(),
                });
            }
            out
        };
        let op = ChangeOp::Refresh {
            id,
            conditions,
            ops: record.ops.clone(),
        };
        step(&state, &principal, &request, op).await
    };
    inner.await.map_err(count_error)
}

/// `POST /v1/changes/{id}/apply` `{"break_glass"?}`: by anyone who may make its writes
/// directly; `break_glass` (the `break-glass` action on every key) skips the approvals and is
/// audited as such.
#[utoipa::path(post, path = "/v1/changes/{id}/apply", tag = "changes",
    summary = "Apply an approved change request as one revision",
    request_body = ApplyBody,
    responses((status = 200, description = "The change after the step. `break_glass` skips the approvals, audited as such.", body = meridian_net::openapi::ChangeView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`not_an_approver`, `change_refused` or `approval_required`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`stale_change`, `change_scheduled` or `change_closed`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn apply(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = change_id(path)?;
        let ApplyBody { break_glass } = optional_body(&body.map_err(body_error)?)?;
        let (record, _) = load(&state, &principal, id).await?;
        let ops: Vec<TxnOp> = written(&record).cloned().collect();
        let secret_ops: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, TxnOp::Put(_, v) if is_sealed_text(v)))
            .map(|(i, _)| i)
            .collect();
        let as_txn = Command::Txn {
            conditions: Vec::new(),
            ops,
        };
        authorize_txn(&principal, &as_txn, &secret_ops)?;
        if break_glass {
            for op in written(&record) {
                authorize(&principal, Action::BreakGlass, &key(op.address()))?;
            }
        }
        step(
            &state,
            &principal,
            &request,
            ChangeOp::Apply { id, break_glass },
        )
        .await
    };
    inner.await.map_err(count_error)
}
