//! HTTP plumbing shared by the origin's write API and the edge's read API: the JSON error body
//! of DESIGN §4, entry and list rendering that embeds stored JSON without re-parsing it, the
//! JSON 404/405 fallbacks, and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_protocol::{AddressError, EntryState};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// An API error: a status and `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code such as `invalid_key`.
    pub code: &'static str,
    /// Human-readable explanation naming the problem.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl From<AddressError> for ApiError {
    fn from(e: AddressError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// The JSON 404 for routes that do not exist.
pub async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("no route for {}", uri.path()),
    )
}

/// The JSON 405 for known routes called with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method {method} is not allowed on this route"),
    )
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Appends `{"app","env","key","value","version","revision"}` for a live entry. The value is
/// JSON the origin validated before commit, so it is embedded as is.
pub fn write_entry(buf: &mut Vec<u8>, app: &str, env: &str, key: &str, entry: &EntryState) {
    buf.extend_from_slice(b"{\"app\":");
    push_str(buf, app);
    buf.extend_from_slice(b",\"env\":");
    push_str(buf, env);
    buf.extend_from_slice(b",\"key\":");
    push_str(buf, key);
    buf.extend_from_slice(b",\"value\":");
    meridian_protocol::secrets::write_masked(buf, entry.value.as_deref().unwrap_or("null"));
    buf.extend_from_slice(b",\"version\":");
    buf.extend_from_slice(entry.version.0.to_string().as_bytes());
    buf.extend_from_slice(b",\"revision\":");
    buf.extend_from_slice(entry.revision.0.to_string().as_bytes());
    buf.push(b'}');
}

/// A 200 JSON response from pre-rendered bytes.
pub fn json_bytes(body: Vec<u8>) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Renders `{"revision": R, "items": [...]}` for the live entries of a namespace under `prefix`.
pub fn render_list<'a>(
    revision: u64,
    app: &str,
    env: &str,
    entries: impl Iterator<Item = (&'a String, &'a EntryState)>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"revision\":");
    buf.extend_from_slice(revision.to_string().as_bytes());
    buf.extend_from_slice(b",\"items\":[");
    let mut first = true;
    for (key, entry) in entries.filter(|(_, e)| !e.is_tombstone()) {
        if !first {
            buf.push(b',');
        }
        first = false;
        write_entry(&mut buf, app, env, key, entry);
    }
    buf.extend_from_slice(b"]}");
    buf
}

/// The process-wide Prometheus handle; the recorder is installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); then our handle
        // renders nothing, which is preferable to failing to start.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `GET /metrics`.
pub async fn metrics_endpoint() -> Response {
    let mut r = Response::new(axum::body::Body::from(metrics_handle().render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
