//! The edge's local read API (DESIGN §4): single keys (templates resolved, defaults), bulk
//! reads by prefix or key list, resolved config, status and metrics, each answer stamped with `meridian-revision` and `meridian-staleness-ms`. Reads are
//! served from the in-memory published state; no read touches disk or the network.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_net::auth::{Gate, RequestMeta, RouteTable, Rule, authorize, bearer, readable};
use meridian_net::http::{
    ApiError, json_bytes, method_not_allowed, metrics_endpoint, unknown_route,
};
use meridian_net::reads;
use meridian_net::secrets::Revealer;
use meridian_protocol::Address;
use meridian_protocol::auth::{Action, Principal, Resource};

use crate::config::StrictNamespace;
use crate::shared::EdgeShared;
use crate::watch;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};

const REVISION: HeaderName = HeaderName::from_static("meridian-revision");
const STALENESS: HeaderName = HeaderName::from_static("meridian-staleness-ms");

type Shared = State<Arc<EdgeShared>>;

/// Every route of the edge's read API and the rule that authorizes it.
pub fn routes() -> RouteTable<Arc<EdgeShared>> {
    use Action::Read;
    use Rule::{Filtered, Key, Namespace, Observe};
    RouteTable::new()
        .route(Method::GET, "/v1/kv/{app}/{env}/{key}", Key(Read), get_one)
        .route(Method::GET, "/v1/kv/{app}/{env}", Filtered(Read), list)
        .route(
            Method::GET,
            "/v1/secrets/{app}/{env}/{key}",
            Key(Read),
            get_secret,
        )
        .route(
            Method::GET,
            "/v1/secrets/{app}/{env}",
            Filtered(Read),
            list_secrets,
        )
        .route(
            Method::GET,
            "/v1/config/{app}/{env}",
            Filtered(Read),
            config,
        )
        .route(
            Method::GET,
            "/v1/flags/{app}/{env}",
            Namespace(Read),
            crate::ofrep::document,
        )
        .route(
            Method::POST,
            "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags",
            Namespace(Read),
            crate::ofrep::bulk,
        )
        .route(
            Method::POST,
            "/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{flag}",
            Namespace(Read),
            crate::ofrep::one,
        )
        // The token names the app/env: the handler authorizes the read there.
        .route(
            Method::POST,
            "/ofrep/v1/evaluate/flags",
            Rule::Identify,
            crate::ofrep::scoped_bulk,
        )
        .route(
            Method::POST,
            "/ofrep/v1/evaluate/flags/{flag}",
            Rule::Identify,
            crate::ofrep::scoped_one,
        )
        // A service reporting what it applied: a reader of the namespace may.
        .route(
            Method::POST,
            "/v1/applied/{app}/{env}",
            Namespace(Read),
            applied,
        )
        .route(Method::GET, "/v1/watch", Filtered(Read), watch_sse)
        .route(Method::GET, "/v1/watch/ws", Filtered(Read), watch_ws)
        .route(Method::GET, "/v1/whoami", Rule::Identify, whoami)
        .route(Method::GET, "/v1/status", Observe, status)
        .route(Method::GET, "/metrics", Observe, metrics)
        .route(
            Method::GET,
            "/v1/openapi.json",
            Observe,
            crate::openapi::document,
        )
}

/// `GET /v1/whoami`: who this edge takes the presented token for.
#[utoipa::path(get, path = "/v1/whoami", tag = "access",
    summary = "Who this edge takes the presented token for",
    responses((status = 200, description = "The principal.", body = meridian_net::openapi::Whoami))
)]
async fn whoami(Extension(principal): Extension<Arc<Principal>>) -> Response {
    axum::Json(serde_json::json!({
        "actor": principal.actor(),
        "id": principal.id.map(|i| i.to_string()),
        "name": principal.name,
        "anonymous": principal.is_anonymous(),
    }))
    .into_response()
}

/// `POST /v1/applied/{app}/{env}`: a service instance applied a revision; passed on to the
/// origin beside the next report (202).
#[utoipa::path(post, path = "/v1/applied/{app}/{env}", tag = "operations",
    summary = "Report the revision a service instance applied",
    request_body = meridian_net::openapi::AppliedReport,
    responses((status = 202, description = "Accepted; passed on to the origin.", body = meridian_net::openapi::AppliedAccepted, example = json!({"app":"payments","env":"prod","instance":"pay-7f9c","revision":41})), (status = 503, description = "`applied_backlog_full`.", body = meridian_net::openapi::ErrorBody))
)]
async fn applied(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let result = namespace(path).and_then(|(app, env)| {
        let body = body.map_err(|e| ApiError::new(e.status(), "invalid_report", e.body_text()))?;
        let report = meridian_net::applied::report(
            &app,
            &env,
            &body,
            &principal,
            meridian_net::auth::now_ms(),
        )?;
        let answer = serde_json::json!({
            "app": app, "env": env, "instance": report.instance, "revision": report.revision,
        });
        shared.applied.insert(report)?;
        Ok(answer)
    });
    match result {
        Ok(answer) => (StatusCode::ACCEPTED, axum::Json(answer)).into_response(),
        Err(e) => counted(&shared, e),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The text exposition format."))
)]
async fn metrics() -> Response {
    metrics_endpoint().await
}

/// Builds the router: every route behind the authorization layer, which decides from the
/// tokens and policies this edge replicated, without asking the origin.
pub fn router(shared: Arc<EdgeShared>) -> Router {
    let reader = shared.reader.clone();
    let uses = shared.clone();
    let gate = Gate {
        index: Arc::new(move || {
            reader
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .auth
                .clone()
        }),
        public_observe: shared.public_status,
        on_refusal: None,
        on_accept: Some(Arc::new(move |p: &Principal| {
            if let Some(id) = p.id {
                uses.token_uses.touch(id.0, meridian_net::auth::now_ms());
            }
        })),
    };
    routes()
        .finish(gate)
        .fallback(unknown_route)
        .method_not_allowed_fallback(read_only)
        .with_state(shared)
}

async fn read_only(method: axum::http::Method) -> ApiError {
    let mut e = method_not_allowed(method).await;
    e.message
        .push_str("; edges are read-only, write at the origin");
    e
}

pub(crate) fn stamp(mut r: Response, shared: &EdgeShared, revision: u64) -> Response {
    let h = r.headers_mut();
    h.insert(REVISION, HeaderValue::from(revision));
    h.insert(
        STALENESS,
        HeaderValue::from(shared.staleness_ms(Instant::now())),
    );
    r
}

pub(crate) fn counted(shared: &EdgeShared, e: ApiError) -> Response {
    metrics::counter!("meridian_edge_rejected_requests_total", "edge" => shared.edge_id.clone(), "code" => e.code)
        .increment(1);
    let revision = shared
        .reader
        .read()
        .map(|p| p.state.revision().0)
        .unwrap_or(0);
    stamp(e.into_response(), shared, revision)
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        format!("bad path: {e}"),
    )
}

fn query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

/// Waits (bounded) until the edge has published revision `want`; the revision it is at when
/// it gives up.
async fn reach(shared: &EdgeShared, want: u64, wait_ms: u64) -> Result<(), u64> {
    let mut rx = shared.watch.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let have = *rx.borrow_and_update();
        if have >= want {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(have),
        }
    }
}

/// 503 `stale` when `app/env` is a strict namespace and the edge is staler than its bound.
fn strict_check(shared: &EdgeShared, app: &str, env: &str) -> Result<(), ApiError> {
    let Some(bound) = StrictNamespace::bound(&shared.strict, app, env) else {
        return Ok(());
    };
    let staleness = shared.staleness_ms(Instant::now());
    if staleness <= bound {
        return Ok(());
    }
    metrics::counter!("meridian_edge_stale_refusals_total", "edge" => shared.edge_id.clone())
        .increment(1);
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "stale",
        format!(
            "{app}/{env} is a strict namespace (at most {bound} ms stale) and this edge last \
             confirmed the origin's newest head {staleness} ms ago; retry, or read another edge"
        ),
    ))
}

/// Answers `read(state)` stamped with the revision it was read at, once the edge has
/// `min_revision` (waiting at most `wait_ms`; 504 `revision_not_reached` after that), unless
/// `app/env` is strict and the edge too stale (503 `stale`).
async fn answer(
    shared: &EdgeShared,
    (app, env): (&str, &str),
    min_revision: Option<u64>,
    wait_ms: Option<u64>,
    who: (&Principal, &RequestMeta),
    read: impl FnOnce(&meridian_protocol::CacheState, reads::Access<'_>) -> Result<Vec<u8>, ApiError>,
) -> Response {
    match reads::min_revision(min_revision, wait_ms) {
        Err(e) => return counted(shared, e),
        Ok(Some((want, wait_ms))) => {
            let started = Instant::now();
            if let Err(have) = reach(shared, want, wait_ms).await {
                let waited = started.elapsed().as_millis() as u64;
                return counted(shared, reads::revision_not_reached(have, want, waited));
            }
        }
        Ok(None) => {}
    }
    if let Err(e) = strict_check(shared, app, env) {
        return counted(shared, e);
    }
    let (principal, request) = who;
    let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
    let revision = p.state.revision().0;
    let keys = |app: &str, env: &str, g: u32| shared.keys.get(app, env, g);
    let revealer = Revealer::new(principal, &keys, meridian_net::auth::now_ms());
    let out = {
        let visible = readable(principal);
        let opener = |app: &str, env: &str, key: &str, e: &meridian_protocol::EntryState| {
            revealer.open(app, env, key, e)
        };
        read(
            &p.state,
            reads::Access {
                visible: &visible,
                secrets: Some(&opener),
            },
        )
    };
    drop(p);
    let out = out.and_then(|body| {
        log_reveals(shared, &revealer.into_reveals(), request)?;
        Ok(body)
    });
    match out {
        Ok(body) => stamp(json_bytes(body), shared, revision),
        Err(e) => counted(shared, e),
    }
}

/// Logs reveals on disk before they are answered; a reveal that cannot be logged is not
/// answered (503).
pub(crate) fn log_reveals(
    shared: &EdgeShared,
    reveals: &[meridian_net::secrets::Reveal],
    request: &RequestMeta,
) -> Result<(), ApiError> {
    if reveals.is_empty() {
        return Ok(());
    }
    let unavailable =
        |why: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", why);
    let log = shared
        .reveals
        .as_ref()
        .ok_or_else(|| unavailable("this edge keeps no reveal log".into()))?;
    let now = meridian_net::auth::now_ms();
    for r in reveals {
        log.record(r, now, Some(&request.request_id)).map_err(|e| {
            unavailable(format!(
                "the reveal could not be logged, so it is not answered: {e}"
            ))
        })?;
    }
    metrics::counter!("meridian_edge_secret_reveals_total", "edge" => shared.edge_id.clone())
        .increment(reveals.len() as u64);
    Ok(())
}

#[utoipa::path(get, path = "/v1/kv/{app}/{env}/{key}", tag = "keys",
    summary = "Read one key's value, resolved, from the edge's copy",
    params(("raw" = Option<bool>, Query, description = "`true`: the stored value, references unresolved."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000)."), ("default" = Option<String>, Query, description = "JSON answered (marked `default: true`) when the key has no value.")),
    responses((status = 200, description = "The value; `meridian-revision` and `meridian-staleness-ms` say how fresh.", body = meridian_net::openapi::Entry), (status = 404, description = "`not_found`: the key has no value (see `default`).", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`unresolved_reference`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`stale`: a strict namespace and the edge has not confirmed the origin's head within its bound.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`: the edge has not reached `min_revision` within `wait_ms`.", body = meridian_net::openapi::ErrorBody))
)]
async fn get_one(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<reads::EntryQuery>, QueryRejection>,
) -> Response {
    let parsed = path
        .map_err(bad_path)
        .and_then(|Path((a, e, k))| Ok(Address::parse(&a, &e, &k)?))
        .and_then(|a| Ok((a, query(q)?)));
    let (address, q) = match parsed {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let ns = (address.app.as_str(), address.env.as_str());
    let who = (principal.as_ref(), &request);
    answer(
        &shared,
        ns,
        q.min_revision,
        q.wait_ms,
        who,
        |state, access| reads::entry(state, &address, &q, access),
    )
    .await
}

/// `GET /v1/secrets/{app}/{env}/{key}?reveal=&versions=`: masked, or revealed with this edge's
/// data keys (403 `secret_unavailable` without them), the reveal logged before it is answered.
#[utoipa::path(get, path = "/v1/secrets/{app}/{env}/{key}", tag = "secrets",
    summary = "A secret, masked unless revealed with this edge's data keys",
    params(("reveal" = Option<bool>, Query, description = "`true`: the value in clear."), ("versions" = Option<bool>, Query, description = "`true`: the previous value kept for the grace period too."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "The secret's metadata; its value only with `reveal=true` (needs `secret-read`; logged).", body = meridian_net::openapi::SecretView), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 403, description = "`secret_unavailable`: this edge holds no data key for the namespace.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`stale`: a strict namespace and the edge has not confirmed the origin's head within its bound.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`: the edge has not reached `min_revision` within `wait_ms`.", body = meridian_net::openapi::ErrorBody))
)]
async fn get_secret(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<meridian_net::secrets::SecretQuery>, QueryRejection>,
) -> Response {
    let parsed = path
        .map_err(bad_path)
        .and_then(|Path((a, e, k))| Ok(Address::parse(&a, &e, &k)?))
        .and_then(|a| Ok((a, query(q)?)));
    let (address, q) = match parsed {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let ns = (address.app.as_str(), address.env.as_str());
    let who = (principal.as_ref(), &request);
    let (min, wait) = (q.min_revision, q.wait_ms);
    answer(&shared, ns, min, wait, who, |state, _| {
        let keys = |app: &str, env: &str, g: u32| shared.keys.get(app, env, g);
        let (body, reveal) = meridian_net::secrets::secret(
            state,
            &address,
            &q,
            &principal,
            &keys,
            Some(&shared.opened),
            meridian_net::auth::now_ms(),
        )?;
        if let Some(r) = reveal {
            log_reveals(&shared, &[r], &request)?;
        }
        Ok(body)
    })
    .await
}

/// `GET /v1/secrets/{app}/{env}`: the namespace's secrets the caller may read, masked.
#[utoipa::path(get, path = "/v1/secrets/{app}/{env}", tag = "secrets",
    summary = "The secrets of an app/env the caller may read, masked",
    params(("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "Secrets' metadata.", body = meridian_net::openapi::AnyObject), (status = 503, description = "`stale`: a strict namespace and the edge has not confirmed the origin's head within its bound.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`: the edge has not reached `min_revision` within `wait_ms`.", body = meridian_net::openapi::ErrorBody))
)]
async fn list_secrets(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (app, env) = match namespace(path) {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let who = (principal.as_ref(), &request);
    answer(&shared, (&app, &env), None, None, who, |state, _| {
        Ok(meridian_net::secrets::list(
            state,
            &app,
            &env,
            &principal,
            meridian_net::auth::now_ms(),
        ))
    })
    .await
}

fn namespace(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((app, env)) = path.map_err(bad_path)?;
    reads::namespace(&app, &env)?;
    Ok((app, env))
}

#[utoipa::path(get, path = "/v1/kv/{app}/{env}", tag = "keys",
    summary = "Read many keys: a prefix, paged, or named keys",
    params(("prefix" = Option<String>, Query, description = "Keys starting with this."), ("keys" = Option<String>, Query, description = "Comma-separated keys (at most 1,000; not paged)."), ("limit" = Option<u64>, Query, description = "Page size (default 1,000, at most 10,000)."), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."), ("raw" = Option<bool>, Query, description = "`true`: the stored value, references unresolved."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "The values, sorted by key.", body = meridian_net::openapi::EntryList), (status = 503, description = "`stale`: a strict namespace and the edge has not confirmed the origin's head within its bound.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`: the edge has not reached `min_revision` within `wait_ms`.", body = meridian_net::openapi::ErrorBody))
)]
async fn list(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ListQuery>, QueryRejection>,
) -> Response {
    let ((app, env), q) = match namespace(path).and_then(|ns| Ok((ns, query(q)?))) {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let who = (principal.as_ref(), &request);
    answer(
        &shared,
        (&app, &env),
        q.min_revision,
        q.wait_ms,
        who,
        |state, access| reads::list(state, &app, &env, &q, access),
    )
    .await
}

#[utoipa::path(get, path = "/v1/config/{app}/{env}", tag = "keys",
    summary = "Read the resolved configuration of an app/env",
    params(("raw" = Option<bool>, Query, description = "`true`: the stored value, references unresolved."), ("min_revision" = Option<u64>, Query, description = "Answer only once this revision is reached (read-your-writes)."), ("wait_ms" = Option<u64>, Query, description = "How long an edge waits for `min_revision` (at most 60,000).")),
    responses((status = 200, description = "Every key, resolved through app/env > app/_ > _/env > _/_.", body = meridian_net::openapi::ResolvedConfig), (status = 503, description = "`stale`: a strict namespace and the edge has not confirmed the origin's head within its bound.", body = meridian_net::openapi::ErrorBody), (status = 504, description = "`revision_not_reached`: the edge has not reached `min_revision` within `wait_ms`.", body = meridian_net::openapi::ErrorBody))
)]
async fn config(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<reads::ConfigQuery>, QueryRejection>,
) -> Response {
    let ((app, env), q) = match namespace(path).and_then(|ns| Ok((ns, query(q)?))) {
        Ok(v) => v,
        Err(e) => return counted(&shared, e),
    };
    let who = (principal.as_ref(), &request);
    answer(
        &shared,
        (&app, &env),
        q.min_revision,
        q.wait_ms,
        who,
        |state, access| reads::config(state, &app, &env, &q, access),
    )
    .await
}

/// The client's address, as the listener saw it.
type Client = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

fn client_ip(client: Client) -> Option<std::net::IpAddr> {
    client.map(|axum::Extension(axum::extract::ConnectInfo(a))| a.ip())
}

/// Gives a watch its watcher: 401/403 unless they may read some key of the namespace.
fn watcher(
    principal: Arc<Principal>,
    headers: &axum::http::HeaderMap,
    (mut filter, at): (watch::Filter, watch::Start),
) -> Result<(watch::Filter, watch::Start), ApiError> {
    if !principal.may_act_in(Action::Read, &filter.app, &filter.env) {
        let resource = Resource::Prefix {
            app: &filter.app,
            env: &filter.env,
            prefix: &filter.prefix,
        };
        authorize(&principal, Action::Read, &resource)?;
    }
    filter.access = Some(watch::Access {
        principal,
        bearer: bearer(headers)?.map(str::to_owned),
    });
    Ok((filter, at))
}

#[utoipa::path(get, path = "/v1/watch", tag = "watch",
    summary = "Watch an app/env's changes as Server-Sent Events",
    params(("app" = Option<String>, Query, description = "The application (required)."), ("env" = Option<String>, Query, description = "The environment (required)."), ("prefix" = Option<String>, Query, description = "Only keys starting with this."), ("since" = Option<String>, Query, description = "Resume after this event id (`R` or `R:i`); `0`: start with a `resync` of the full state."), ("inherit" = Option<bool>, Query, description = "`false`: only keys stored under app/env.")),
    responses((status = 200, description = "`text/event-stream`: `change` and `resync` events whose ids resume the stream (`Last-Event-ID`)."), (status = 429, description = "`too_many_watches`.", body = meridian_net::openapi::ErrorBody))
)]
async fn watch_sse(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    client: Client,
    headers: axum::http::HeaderMap,
    q: Result<Query<watch::WatchQuery>, QueryRejection>,
) -> Response {
    let parsed = watch::query(q)
        .and_then(|q| watch::parse_request(&shared.watch, q, watch::last_event_id(&headers)))
        .and_then(|p| watcher(principal, &headers, p))
        .and_then(|p| Ok((p, shared.watch.admit(client_ip(client))?)));
    match parsed {
        Ok(((filter, at), slot)) => watch::sse(slot, filter, at),
        Err(e) => counted(&shared, e),
    }
}

#[utoipa::path(get, path = "/v1/watch/ws", tag = "watch",
    summary = "Watch an app/env's changes over WebSocket",
    params(("app" = Option<String>, Query, description = "The application (required)."), ("env" = Option<String>, Query, description = "The environment (required)."), ("prefix" = Option<String>, Query, description = "Only keys starting with this."), ("since" = Option<String>, Query, description = "Resume after this event id (`R` or `R:i`); `0`: start with a `resync` of the full state."), ("inherit" = Option<bool>, Query, description = "`false`: only keys stored under app/env.")),
    responses((status = 101, description = "Switching protocols: text messages `{\"event\", \"id\", \"data\"}`."), (status = 429, description = "`too_many_watches`.", body = meridian_net::openapi::ErrorBody))
)]
async fn watch_ws(
    State(shared): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    client: Client,
    headers: axum::http::HeaderMap,
    q: Result<Query<watch::WatchQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let parsed = watch::query(q)
        .and_then(|q| watch::parse_request(&shared.watch, q, watch::last_event_id(&headers)))
        .and_then(|p| watcher(principal, &headers, p));
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            format!("{e}; use GET /v1/watch for Server-Sent Events"),
        )
    });
    let admitted = parsed
        .and_then(|p| Ok((p, ws?)))
        .and_then(|p| Ok((p, shared.watch.admit(client_ip(client))?)));
    match admitted {
        Ok((((filter, at), ws), slot)) => watch::websocket(slot, filter, at, ws),
        Err(e) => counted(&shared, e),
    }
}

#[utoipa::path(get, path = "/v1/status", tag = "operations",
    summary = "This edge: region, revision, digest, origin connection, lag",
    responses((status = 200, description = "The edge's status.", body = meridian_net::openapi::AnyObject))
)]
async fn status(State(shared): Shared) -> Response {
    let (revision, digest) = {
        let p = shared.reader.read().unwrap_or_else(|e| e.into_inner());
        (p.state.revision().0, p.state.digest().to_string())
    };
    let stats = shared.stats();
    let body = serde_json::json!({
        "region": shared.region,
        "edge_id": shared.edge_id,
        "revision": revision,
        "digest": digest,
        "origin_connected": shared.origin_connected.load(Ordering::Relaxed),
        "lag_ms": shared.lag_ms.load(Ordering::Relaxed),
        "newest_known_revision": shared.newest_known.load(Ordering::Relaxed),
        "deltas_applied": stats.deltas_applied,
        "snapshots_installed": stats.snapshots_installed,
        "staleness_ms": shared.staleness_ms(std::time::Instant::now()),
        "store_errors": stats.store_errors,
        "disk_full": shared.space.is_full(),
        "disk_free_bytes": shared.space.free_bytes_seen(),
        "dropped_disk_full": stats.dropped_disk_full,
        "upstreams": shared.upstreams(),
        "rejected": {
            "bad_signature": stats.rejected_bad_signature,
            "unknown_key": stats.rejected_unknown_key,
            "delta_mismatch": stats.rejected_delta_mismatch,
            "digest_mismatch": stats.rejected_digest_mismatch,
            "malformed": stats.rejected_malformed,
            "unexpected": stats.rejected_unexpected,
        },
    });
    stamp(axum::Json(body).into_response(), &shared, revision)
}

#[cfg(test)]
mod tests {
    use meridian_net::auth::Rule;

    /// The edge serves reads only, each behind a read decision, but status, metrics and whoami
    /// (and the bare OFREP routes, whose handlers decide the read on the token's namespace).
    #[test]
    fn every_route_passes_a_read_decision() {
        for (method, path, rule) in super::routes().rules() {
            // OFREP evaluation is a read that POSTs its context; a reader reports the revision
            // it applied, which changes no state.
            let method_ok = method == axum::http::Method::GET
                || path.contains("/ofrep/v1/")
                || path == "/v1/applied/{app}/{env}";
            assert!(method_ok, "{method} {path}");
            match rule {
                Rule::Key(a) | Rule::Filtered(a) | Rule::Namespace(a) => {
                    assert_eq!(a, meridian_protocol::auth::Action::Read, "{path}")
                }
                Rule::Observe | Rule::Identify => assert!(
                    [
                        "/v1/status",
                        "/metrics",
                        "/v1/openapi.json",
                        "/v1/whoami",
                        "/ofrep/v1/evaluate/flags",
                        "/ofrep/v1/evaluate/flags/{flag}"
                    ]
                    .contains(&path),
                    "{path}"
                ),
                other => panic!("{path} under {other:?}"),
            }
        }
    }
}
