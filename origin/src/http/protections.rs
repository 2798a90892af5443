//! Protection rules (`/v1/protections`): which keys need approved change requests, and how
//! many approvals. Stored as `_meridian/protections/<name>`, replicated and audited like
//! policies; the apply core refuses plain writes to the keys they cover.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::RequestMeta;
use meridian_net::http::ApiError;
use meridian_protocol::auth::{
    PROTECTIONS_ENV, Principal, ProtectionRecord, SYSTEM_APP, valid_policy_name,
};
use meridian_protocol::{Address, EntryState};
use serde_json::{Value, json};

use super::tokens::{delete_record, system_namespace};
use crate::http::{Shared, body_error, commit, count_error, json_body, write_meta};
use meridian_core::apply::Command;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_protection", message)
}

fn rule_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|e| bad(e.body_text()))?;
    if !valid_policy_name(&name) {
        return Err(bad(format!(
            "protection name {name:?} must match [a-z0-9][a-z0-9_-]*, at most 64 bytes"
        )));
    }
    Ok(name)
}

fn rule_address(name: &str) -> Address {
    Address {
        app: SYSTEM_APP.to_owned(),
        env: PROTECTIONS_ENV.to_owned(),
        key: name.to_owned(),
    }
}

fn rule_json(name: &str, e: &EntryState) -> Option<Value> {
    let mut v: Value = serde_json::from_str(e.value.as_deref()?).ok()?;
    v["name"] = name.into();
    v["version"] = e.version.0.into();
    Some(v)
}

/// The command of a `PUT /v1/protections/{name}` body (a protection record, checked).
pub fn protection_command(name: &str, body: &[u8]) -> Result<Command, ApiError> {
    let record: ProtectionRecord = json_body(body)?;
    record.validate().map_err(|e| bad(e.to_string()))?;
    let value = serde_json::to_string(&record).map_err(|e| bad(e.to_string()))?;
    Ok(Command::Put {
        address: rule_address(name),
        value: value.into(),
        expect_version: None,
    })
}

/// `GET /v1/protections`: every rule, by name.
#[utoipa::path(get, path = "/v1/protections", tag = "governance",
    summary = "Every protection rule",
    responses((status = 200, description = "The rules by name.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn list(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        let (revision, items) = system_namespace(&state, PROTECTIONS_ENV).await?;
        let rules: Vec<Value> = items.iter().filter_map(|(n, e)| rule_json(n, e)).collect();
        Ok(axum::Json(json!({"revision": revision, "protections": rules})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/protections/{name}`.
#[utoipa::path(get, path = "/v1/protections/{name}", tag = "governance",
    summary = "One protection rule",
    responses((status = 200, description = "The rule.", body = meridian_net::openapi::AnyObject, example = json!({"name":"prod","resources":["payments/prod/*"],"approvals":2,"description":"two reviewers for prod"})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get(
    State(state): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let name = rule_name(path)?;
        let (_, items) = system_namespace(&state, PROTECTIONS_ENV).await?;
        items
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, e)| rule_json(&name, e))
            .map(|v| axum::Json(v).into_response())
            .ok_or_else(|| ApiError::not_found(format!("protection {name}")))
    };
    inner.await.map_err(count_error)
}

/// `PUT /v1/protections/{name}`: creates or replaces a rule.
#[utoipa::path(put, path = "/v1/protections/{name}", tag = "governance",
    summary = "Create or replace a protection rule",
    request_body(content = meridian_net::openapi::AnyObject, description = "`{\"resources\", \"approvals\", \"description\"?}`", example = json!({"resources":["payments/prod/*"],"approvals":2})),
    responses((status = 200, description = "The rule.", body = meridian_net::openapi::NamedRecord, example = json!({"name":"prod","resources":["payments/prod/*"],"approvals":2,"description":"two reviewers for prod"})), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let name = rule_name(path)?;
        let body = body.map_err(body_error)?;
        let command = protection_command(&name, &body)?;
        let meta = write_meta(&principal, &request, Some(format!("protection {name} set")))?;
        let applied = commit(&state, command, meta).await?;
        let version = applied.entry().map_or(0, |e| e.version.0);
        Ok(
            axum::Json(json!({"name": name, "version": version, "revision": applied.revision.0}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}

/// `DELETE /v1/protections/{name}`.
#[utoipa::path(delete, path = "/v1/protections/{name}", tag = "governance",
    summary = "Delete a protection rule",
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let name = rule_name(path)?;
        let meta = write_meta(
            &principal,
            &request,
            Some(format!("protection {name} deleted")),
        )?;
        let what = format!("protection {name}");
        let applied = delete_record(&state, rule_address(&name), meta, &what).await?;
        Ok(axum::Json(json!({"deleted": name, "revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}
