//! OFREP at the edge: flags evaluated from this edge's published, verified state with the
//! flag sets compiled once per revision (`meridian_protocol::flags`), so an evaluation never
//! leaves the region. Routes: `POST /v1/flags/{app}/{env}/ofrep/v1/evaluate/flags[/{flag}]`,
//! and the bare `POST /ofrep/v1/evaluate/flags[/{flag}]` for a token scoped to one app/env;
//! `GET /v1/flags/{app}/{env}` hands the document to local evaluators.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_net::http::ApiError;
use meridian_net::{ofrep, reads};
use meridian_protocol::auth::Principal;
use meridian_protocol::flags::validate_flag_key;

use crate::shared::EdgeShared;

type Shared = State<Arc<EdgeShared>>;

fn unreadable(key: Option<&str>, e: BytesRejection) -> Response {
    let too_large = e.status() == StatusCode::PAYLOAD_TOO_LARGE;
    ofrep::unreadable_body(key, too_large, &e.body_text())
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        format!("bad path: {e}"),
    )
}

fn flag_key(flag: &str) -> Result<(), ApiError> {
    validate_flag_key(flag)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_flag", e.to_string()))
}

enum Ask<'a> {
    One(&'a str),
    Bulk(&'a HeaderMap),
}

fn answer(shared: &EdgeShared, app: &str, env: &str, ask: Ask<'_>, body: &[u8]) -> Response {
    let (set, revision) = {
        let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
        (p.flags.get(app, env).cloned(), p.state.revision().0)
    };
    let mut served = |flag: &str, variant: &str| shared.count_exposure(app, env, flag, variant);
    let r = match ask {
        Ask::One(flag) => {
            ofrep::evaluate_one(set.as_ref(), flag, body, ofrep::now_s(), &mut served)
        }
        Ask::Bulk(headers) => {
            ofrep::evaluate_bulk(set.as_ref(), headers, body, ofrep::now_s(), &mut served)
        }
    };
    crate::api::stamp(r, shared, revision)
}

fn refused(shared: &EdgeShared, e: ApiError) -> Response {
    crate::api::counted(shared, e)
}

/// `POST /v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{flag}`.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{flag}", tag = "ofrep",
    summary = "OFREP: evaluate one flag",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "The evaluation (OFREP).", body = meridian_net::openapi::OfrepEvaluation, example = json!({"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}})), (status = 404, description = "OFREP `FLAG_NOT_FOUND`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn one(
    State(shared): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = path.map_err(bad_path).and_then(|Path((app, env, flag))| {
        reads::namespace(&app, &env)?;
        flag_key(&flag)?;
        Ok((app, env, flag))
    });
    let (app, env, flag) = match checked {
        Ok(p) => p,
        Err(e) => return refused(&shared, e),
    };
    match body {
        Ok(body) => answer(&shared, &app, &env, Ask::One(&flag), &body),
        Err(e) => unreadable(Some(&flag), e),
    }
}

/// `POST /v1/flags/{app}/{env}/ofrep/v1/evaluate/flags`.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags", tag = "ofrep",
    summary = "OFREP: evaluate every flag",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "Every evaluation (OFREP), with an `ETag`.", body = meridian_net::openapi::AnyObject, example = json!({"flags":[{"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}}]})))
)]
pub(crate) async fn bulk(
    State(shared): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = path.map_err(bad_path).and_then(|Path((app, env))| {
        reads::namespace(&app, &env)?;
        Ok((app, env))
    });
    let (app, env) = match checked {
        Ok(p) => p,
        Err(e) => return refused(&shared, e),
    };
    match body {
        Ok(body) => answer(&shared, &app, &env, Ask::Bulk(&headers), &body),
        Err(e) => unreadable(None, e),
    }
}

/// `POST /ofrep/v1/evaluate/flags/{flag}` for a token scoped to one app/env.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{flag}", tag = "ofrep",
    summary = "OFREP: evaluate one flag of the app/env the token is scoped to",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "The evaluation (OFREP).", body = meridian_net::openapi::OfrepEvaluation, example = json!({"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}})), (status = 404, description = "OFREP `FLAG_NOT_FOUND`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "The token is not scoped to one app/env.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn scoped_one(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = path.map_err(bad_path).and_then(|Path(flag)| {
        flag_key(&flag)?;
        let (app, env) = ofrep::scoped_namespace(&principal)?;
        Ok((app, env, flag))
    });
    let (app, env, flag) = match checked {
        Ok(p) => p,
        Err(e) => return refused(&shared, e),
    };
    match body {
        Ok(body) => answer(&shared, &app, &env, Ask::One(&flag), &body),
        Err(e) => unreadable(Some(&flag), e),
    }
}

/// `POST /ofrep/v1/evaluate/flags` for a token scoped to one app/env.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "ofrep",
    summary = "OFREP: evaluate every flag of the app/env the token is scoped to",
    request_body = meridian_net::openapi::OfrepRequest,
    responses((status = 200, description = "Every evaluation (OFREP).", body = meridian_net::openapi::AnyObject, example = json!({"flags":[{"key":"new-checkout","value":true,"reason":"TARGETING_MATCH","variant":"on","metadata":{}}]})), (status = 403, description = "The token is not scoped to one app/env.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn scoped_bulk(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (app, env) = match ofrep::scoped_namespace(&principal) {
        Ok(ns) => ns,
        Err(e) => return refused(&shared, e),
    };
    match body {
        Ok(body) => answer(&shared, &app, &env, Ask::Bulk(&headers), &body),
        Err(e) => unreadable(None, e),
    }
}

/// `GET /v1/flags/{app}/{env}`: the flagd document this edge holds for `app/env` (`{"flags":
/// {}}` when none), what local evaluators (`meridian-client`, flagd in file mode) load.
#[utoipa::path(get, path = "/v1/flags/{app}/{env}", tag = "flags",
    summary = "The flag set of an app/env, in flagd's format",
    params(("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "A flagd document, what local evaluators (flagd in file mode, meridian-client) load.", body = meridian_net::openapi::AnyObject), (status = 503, description = "`stale`: a strict namespace and the edge has not confirmed the origin's head within its bound.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`: the edge has not reached `min_revision` within `wait_ms`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn document(
    State(shared): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let checked = path.map_err(bad_path).and_then(|Path((app, env))| {
        reads::namespace(&app, &env)?;
        Ok((app, env))
    });
    let (app, env) = match checked {
        Ok(p) => p,
        Err(e) => return refused(&shared, e),
    };
    let (document, revision) = {
        let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
        let document = p
            .state
            .namespace(&app, &env)
            .map(meridian_protocol::flags::FlagDocument::from_namespace)
            .unwrap_or_default();
        (document, p.state.revision().0)
    };
    crate::api::stamp(axum::Json(document).into_response(), &shared, revision)
}
