//! Webhook subscriptions (`/v1/webhooks`, admin): where events go, which event types and
//! keys, the signing secret (shown once, at creation), and each subscription's delivery log.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_core::apply::Command;
use meridian_core::webhooks::{self, EVENT_TYPES, WebhookOp};
use meridian_net::auth::RequestMeta;
use meridian_net::http::ApiError;
use meridian_protocol::auth::{Pattern, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::http::{Shared, body_error, cluster_error, commit, count_error, json_body, write_meta};
use crate::webhooks::WebhookSecret;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_webhook", message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    url: String,
    events: Vec<String>,
    #[schema(value_type = Vec<String>)]
    resources: Vec<Pattern>,
    #[serde(default)]
    secret: Option<String>,
}

/// `POST /v1/webhooks`: `{"url", "events", "resources", "secret"?}`; the answer holds the
/// secret (generated when not given), the only time it is shown.
#[utoipa::path(post, path = "/v1/webhooks", tag = "governance",
    summary = "Subscribe a receiver to events (Standard Webhooks)",
    request_body = SubscribeBody,
    responses((status = 201, description = "The subscription and its signing secret (shown this once).", body = meridian_net::openapi::Webhook, example = json!({"id":1,"url":"https://hooks.example.com/meridian","events":["config.changed"],"resources":["payments/prod/*"],"secret":"whsec_…"})), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn create(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let b: SubscribeBody = json_body(&body.map_err(body_error)?)?;
        if let Some(e) = b.events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
            return Err(bad(format!(
                "unknown event type {e:?}; known: {}",
                EVENT_TYPES.join(", ")
            )));
        }
        let secret = match &b.secret {
            Some(s) => WebhookSecret::parse(s).map_err(|e| bad(e.to_string()))?,
            None => WebhookSecret::generate(),
        };
        let url = reqwest::Url::parse(&b.url).map_err(|e| bad(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("url must be http:// or https://"));
        }
        let op = WebhookOp::Subscribe {
            url: b.url.clone(),
            events: b.events.clone(),
            resources: b.resources.clone(),
            secret: secret.to_text(),
        };
        let meta = write_meta(&principal, &request, None)?;
        let applied = commit(&state, Command::Webhook(op), meta).await?;
        let id = applied
            .change
            .ok_or_else(|| internal("the subscription was not numbered"))?;
        let resources: Vec<&str> = b.resources.iter().map(Pattern::as_str).collect();
        Ok((
            StatusCode::CREATED,
            axum::Json(json!({"id": id, "url": b.url, "events": b.events,
                              "resources": resources, "secret": secret.to_text()})),
        )
            .into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/webhooks`: every subscription, without its secret.
#[utoipa::path(get, path = "/v1/webhooks", tag = "governance",
    summary = "Every subscription (without secrets)",
    responses((status = 200, description = "The subscriptions.", body = meridian_net::openapi::AnyObject))
)]
pub(crate) async fn list(State(state): Shared) -> Result<Response, ApiError> {
    let inner = async {
        state.cluster.linearize().await.map_err(cluster_error)?;
        let subs = {
            let mut core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            core.webhook_subscriptions().map_err(internal)?.to_vec()
        };
        let items: Vec<_> = subs
            .iter()
            .map(|s| {
                let resources: Vec<&str> = s.resources.iter().map(Pattern::as_str).collect();
                json!({"id": s.id, "url": s.url, "events": s.events, "resources": resources,
                       "created_by": s.created_by, "created_ms": s.created_ms})
            })
            .collect();
        Ok(axum::Json(json!({"webhooks": items})).into_response())
    };
    inner.await.map_err(count_error)
}

fn webhook_id(path: Result<Path<u64>, PathRejection>) -> Result<u64, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| bad(format!("bad webhook id: {}", e.body_text())))
}

/// `DELETE /v1/webhooks/{id}`: the subscription and what is queued for it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "governance",
    summary = "Unsubscribe, dropping what is queued",
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = webhook_id(path)?;
        let meta = write_meta(&principal, &request, None)?;
        commit(
            &state,
            Command::Webhook(WebhookOp::Unsubscribe { id }),
            meta,
        )
        .await
        .map_err(|e| match e.code {
            "invalid_command" => ApiError::not_found(format!("webhook {id}")),
            _ => e,
        })?;
        Ok(axum::Json(json!({"deleted": id})).into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET /v1/webhooks/{id}/deliveries`: its delivery log, oldest first, how many events wait
/// and how many were dropped (queue full, or given up after every retry).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "governance",
    summary = "A subscription's recent delivery attempts and queue",
    responses((status = 200, description = "Deliveries, queued and dropped counts.", body = meridian_net::openapi::Deliveries, example = json!({"id":1,"queued":0,"dropped":0,"deliveries":[{"event":"evt_42_0","attempt":1,"status":204,"outcome":"delivered"}]})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn deliveries(
    State(state): Shared,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let id = webhook_id(path)?;
        state.cluster.linearize().await.map_err(cluster_error)?;
        let (log, (queued, dropped)) = {
            let core = state.core.lock().unwrap_or_else(|e| e.into_inner());
            let backend = core.state().backend();
            let log = webhooks::delivery_log(backend, id).map_err(internal)?;
            (log, webhooks::queue_counts(backend, id).map_err(internal)?)
        };
        Ok(axum::Json(json!({
            "id": id, "queued": queued, "dropped": dropped, "deliveries": log,
        }))
        .into_response())
    };
    inner.await.map_err(count_error)
}
