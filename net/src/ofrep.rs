//! OFREP, the OpenFeature Remote Evaluation Protocol (open-feature/protocol, `service/
//! openapi.yaml`), over a compiled [`FlagSet`]: single evaluation
//! (`POST …/ofrep/v1/evaluate/flags/{key}`) and bulk evaluation (`POST
//! …/ofrep/v1/evaluate/flags`, with `ETag` and `If-None-Match` → 304). Both shells serve it
//! from their published state; this module owns the bodies and status codes.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_protocol::flags::{
    Bump, ContextError, ErrorCode, EvalContext, FlagSet, MAX_CONTEXT_BYTES,
};

fn json(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An OFREP failure body `{"key"?, "errorCode", "errorDetails"}`.
fn failure(status: StatusCode, key: Option<&str>, code: ErrorCode, details: &str) -> Response {
    let mut body = serde_json::json!({"errorCode": code.as_str(), "errorDetails": details});
    if let Some(k) = key {
        body["key"] = k.into();
    }
    json(status, body.to_string())
}

/// 413 for a body over [`MAX_CONTEXT_BYTES`], 400 INVALID_CONTEXT for one that is not an
/// evaluation request; the context otherwise.
fn context<'a>(
    key: Option<&str>,
    body: &'a [u8],
    arena: &'a Bump,
    now_s: i64,
) -> Result<EvalContext<'a>, Box<Response>> {
    if body.len() > MAX_CONTEXT_BYTES {
        return Err(Box::new(failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            key,
            ErrorCode::InvalidContext,
            &format!(
                "the evaluation request is {} bytes; the limit is {MAX_CONTEXT_BYTES}",
                body.len()
            ),
        )));
    }
    let invalid = |e: ContextError| {
        Box::new(failure(
            StatusCode::BAD_REQUEST,
            key,
            ErrorCode::InvalidContext,
            &e.to_string(),
        ))
    };
    let text = std::str::from_utf8(body)
        .map_err(|_| invalid(ContextError::NotJson("not UTF-8".into())))?;
    EvalContext::parse_request(text, arena, now_s).map_err(invalid)
}

/// The answer to a body the server would not read (over its body limit, or cut short).
pub fn unreadable_body(key: Option<&str>, too_large: bool, details: &str) -> Response {
    let status = if too_large {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    failure(status, key, ErrorCode::InvalidContext, details)
}

/// `POST …/ofrep/v1/evaluate/flags/{key}`: 200 with the evaluation, 404 FLAG_NOT_FOUND, 400
/// with an evaluation failure (INVALID_CONTEXT, TARGETING_KEY_MISSING, PARSE_ERROR, GENERAL),
/// 413 for a context over 64 KiB.
///
/// `served(flag, variant)` is told of every evaluation of an existing flag (variant empty
/// when the caller's code default was served), for exposure counts.
pub fn evaluate_one(
    set: Option<&Arc<FlagSet>>,
    key: &str,
    body: &[u8],
    now_s: i64,
    served: &mut dyn FnMut(&str, &str),
) -> Response {
    let arena = Bump::new();
    let ctx = match context(Some(key), body, &arena, now_s) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let empty = FlagSet::default();
    let set = set.map_or(&empty, |s| s.as_ref());
    let resolution = ctx.evaluate(set, key);
    if resolution.flag.is_some() {
        served(key, resolution.variant().unwrap_or(""));
    }
    let status = match resolution.error() {
        None => StatusCode::OK,
        Some(ErrorCode::FlagNotFound) => StatusCode::NOT_FOUND,
        Some(_) => StatusCode::BAD_REQUEST,
    };
    let mut out = String::with_capacity(160);
    resolution.write_ofrep(&mut out);
    json(status, out)
}

/// `POST …/ofrep/v1/evaluate/flags`: every flag of the set evaluated against one context,
/// failures in place; `ETag` on the answer, 304 when `If-None-Match` names it. `served` as
/// for [`evaluate_one`] (a 304 evaluates nothing).
pub fn evaluate_bulk(
    set: Option<&Arc<FlagSet>>,
    headers: &HeaderMap,
    body: &[u8],
    now_s: i64,
    served: &mut dyn FnMut(&str, &str),
) -> Response {
    let arena = Bump::new();
    let ctx = match context(None, body, &arena, now_s) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let empty = FlagSet::default();
    let set = set.map_or(&empty, |s| s.as_ref());
    let etag = set.etag(body, now_s);
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let tag = HeaderValue::from_str(&etag).expect("hex etag is a header value");
    if matches {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, tag);
        return r;
    }
    let mut out = String::with_capacity(64 + 160 * set.flags.len());
    out.push_str("{\"flags\":[");
    for (i, flag) in set.flags.values().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let resolution = ctx.evaluate_flag(flag);
        served(&flag.key, resolution.variant().unwrap_or(""));
        resolution.write_ofrep(&mut out);
    }
    out.push(']');
    if !set.metadata.is_empty() {
        out.push_str(",\"metadata\":");
        out.push_str(&serde_json::Value::Object(set.metadata.clone()).to_string());
    }
    out.push('}');
    let mut r = json(StatusCode::OK, out);
    r.headers_mut().insert(header::ETAG, tag);
    r
}

/// Unix seconds, for `$flagd.timestamp`.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The app/env a bare `/ofrep/v1/...` request is for: the one namespace every read grant of
/// the caller's token lies in. 401 without a token that could name one, 400 when the token
/// spans several (use `/v1/flags/{app}/{env}/ofrep/...` then).
pub fn scoped_namespace(
    principal: &meridian_protocol::auth::Principal,
) -> Result<(String, String), crate::http::ApiError> {
    use crate::http::ApiError;
    use meridian_protocol::auth::{Action, Resource};
    let Some((app, env)) = principal.only_namespace(Action::Read) else {
        if principal.is_anonymous() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the bare OFREP routes need a read token scoped to one app/env",
            ));
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_namespace",
            "this token may read more than one app/env; use /v1/flags/{app}/{env}/ofrep/v1/...",
        ));
    };
    crate::auth::authorize(
        principal,
        Action::Read,
        &Resource::Prefix {
            app,
            env,
            prefix: "",
        },
    )?;
    Ok((app.to_owned(), env.to_owned()))
}
