//! The origin's schema endpoints: register, read, list and remove the JSON Schema of an
//! address prefix. Registering is a committed command (every node validates identically);
//! reads follow a linearizable barrier.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use std::sync::Arc;

use axum::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::RequestMeta;
use meridian_net::http::ApiError;
use meridian_protocol::addr::validate_key_prefix;
use meridian_protocol::auth::Principal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Shared, cluster_error, commit, count_error, write_meta};
use meridian_core::apply::Command;
use meridian_core::schema;
use meridian_net::reads::namespace as namespace_of;

fn schema_path(
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<(String, String, String), ApiError> {
    let Path((app, env, prefix)) = path.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("bad path: {e}"),
        )
    })?;
    namespace_of(&app, &env)?;
    validate_key_prefix(&prefix)?;
    Ok((app, env, prefix))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutSchemaBody {
    schema: Value,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The command a `PUT /v1/schemas/{app}/{env}/{prefix}` body asks for, its reason and the
/// schema; 400 `malformed_json` or `invalid_schema` (not a JSON Schema) naming the problem.
pub fn put_schema_command(
    app: &str,
    env: &str,
    prefix: &str,
    body: &[u8],
) -> Result<(Command, Option<String>, Value), ApiError> {
    let b: PutSchemaBody = crate::http::json_body(body)?;
    let text = b.schema.to_string();
    schema::compile(&text)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "invalid_schema", why))?;
    let command = Command::PutSchema {
        app: app.to_owned(),
        env: env.to_owned(),
        prefix: prefix.to_owned(),
        schema: text.into(),
        force: b.force,
    };
    Ok((command, b.reason, b.schema))
}

/// `PUT /v1/schemas/{app}/{env}/{prefix}` `{"schema": {...}, "force": false}`: every later
/// write under the prefix must validate (422 `schema_violation` otherwise). Refused with 409
/// `current_values_violate`, naming the keys, when current values violate it and `force` is
/// not set; 400 `invalid_schema` when it is not a JSON Schema.
#[utoipa::path(put, path = "/v1/schemas/{app}/{env}/{prefix}", tag = "schemas",
    summary = "Register a JSON Schema for the keys under a prefix",
    request_body = PutSchemaBody,
    responses((status = 200, description = "The schema as registered.", body = meridian_net::openapi::SchemaView, example = json!({"app":"payments","env":"prod","prefix":"pool","schema":{"type":"object","properties":{"max":{"type":"integer","maximum":100}}}})), (status = 400, description = "`invalid_schema`: not a JSON Schema.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "`current_values_violate`: current values violate it (names the keys); `force` registers it anyway.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put_schema(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, prefix) = schema_path(path)?;
        let body = body.map_err(crate::http::body_error)?;
        let (command, reason, schema) = put_schema_command(&app, &env, &prefix, &body)?;
        let meta = write_meta(&principal, &request, reason)?;
        commit(&state, command, meta).await?;
        Ok(axum::Json(json!({
            "app": app, "env": env, "prefix": prefix, "schema": schema,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/schemas/{app}/{env}/{prefix}`: the schema registered for exactly this prefix.
#[utoipa::path(get, path = "/v1/schemas/{app}/{env}/{prefix}", tag = "schemas",
    summary = "The JSON Schema registered for a prefix",
    responses((status = 200, description = "The schema.", body = meridian_net::openapi::SchemaView, example = json!({"app":"payments","env":"prod","prefix":"pool","schema":{"type":"object","properties":{"max":{"type":"integer","maximum":100}}}})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get_schema(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, prefix) = schema_path(path)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let text = {
            let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            let registry = core.schemas().map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            registry.get(&app, &env, &prefix).map(|r| r.text.clone())
        };
        let text = text.ok_or_else(|| {
            ApiError::not_found(format!("a schema for {app}/{env} prefix {prefix:?}"))
        })?;
        let schema: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(
            axum::Json(json!({"app": app, "env": env, "prefix": prefix, "schema": schema}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/schemas/{app}/{env}`: every schema of the namespace, by prefix.
#[utoipa::path(get, path = "/v1/schemas/{app}/{env}", tag = "schemas",
    summary = "Every schema of an app/env, by prefix",
    responses((status = 200, description = "The schemas.", body = meridian_net::openapi::AnyObject, example = json!({"app":"payments","env":"prod","items":[{"prefix":"pool","schema":{"type":"object"}}]})))
)]
pub(crate) async fn list_schemas(
    State(state): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let Path((app, env)) = path.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                format!("bad path: {e}"),
            )
        })?;
        namespace_of(&app, &env)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let items: Vec<Value> = {
            let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            let registry = core.schemas().map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            registry
                .namespace(&app, &env)
                .map(|(prefix, r)| {
                    json!({
                        "prefix": prefix,
                        "schema": serde_json::from_str::<Value>(&r.text).unwrap_or(Value::Null),
                    })
                })
                .collect()
        };
        Ok(axum::Json(json!({"app": app, "env": env, "items": items})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `DELETE /v1/schemas/{app}/{env}/{prefix}`: writes under the prefix are no longer checked
/// against it.
#[utoipa::path(delete, path = "/v1/schemas/{app}/{env}/{prefix}", tag = "schemas",
    summary = "Remove the schema of a prefix",
    params(("reason" = Option<String>, Query, description = "Recorded in the history.")),
    responses((status = 200, description = "The revision of the delete.", body = meridian_net::openapi::Committed), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete_schema(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, prefix) = schema_path(path)?;
        let meta = write_meta(&principal, &request, None)?;
        commit(
            &state,
            Command::DeleteSchema {
                app: app.clone(),
                env: env.clone(),
                prefix: prefix.clone(),
            },
            meta,
        )
        .await?;
        Ok(
            axum::Json(json!({"app": app, "env": env, "prefix": prefix, "deleted": true}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}
