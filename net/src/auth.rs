//! The one authorization layer every route of the origin and the edge passes (DESIGN §4b).
//!
//! Routes are registered through a [`RouteTable`], which takes each route's [`Rule`] together
//! with its handler, so no route can exist without a decision. The layer authenticates the
//! bearer token against the index built from the replicated tokens and policies, decides the
//! rule, and hands the [`Principal`] to the handler as a request extension (handlers of filtered
//! reads keep only what it may read). Refusals: 401 `unauthenticated` with `WWW-Authenticate`
//! when no valid token was presented, 403 `forbidden` naming the action and the resource, 415
//! `unsupported_media_type` for a body that is not JSON.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use meridian_protocol::auth::{Action, AuthError, AuthIndex, Principal, Resource};

use crate::http::ApiError;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing: no token is looked at.
    Public,
    /// Status, metrics and the edge list: public unless the node restricts them, then any
    /// valid token.
    Observe,
    /// Any caller whose token (if it presents one) is valid: `whoami`.
    Identify,
    /// The action on the key named by the path's `app`, `env` and `key`.
    Key(Action),
    /// The action on every key of the path's `app/env` under its `prefix` (none: all keys).
    Namespace(Action),
    /// The action somewhere (in the path's `app/env` when it names one); the handler keeps or
    /// checks each item itself (lists, resolved config, watch, transactions).
    Filtered(Action),
    /// The action on everything (tokens, policies, the audit log).
    Everything(Action),
}

/// Routes and the rule of each.
pub struct RouteTable<S> {
    router: Router<S>,
    rules: HashMap<(Method, &'static str), Rule>,
}

impl<S: Clone + Send + Sync + 'static> Default for RouteTable<S> {
    fn default() -> Self {
        Self {
            router: Router::new(),
            rules: HashMap::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> RouteTable<S> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `method` on `path`, decided by `rule`.
    pub fn route<H, T>(mut self, method: Method, path: &'static str, rule: Rule, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("{method} is not a routable method"));
        assert!(
            self.rules.insert((method.clone(), path), rule).is_none(),
            "{method} {path} registered twice"
        );
        self.router = std::mem::take(&mut self.router).route(path, on(filter, handler));
        self
    }

    /// Every registered route and its rule, sorted (for tests and documentation).
    pub fn rules(&self) -> Vec<(Method, &'static str, Rule)> {
        let mut out: Vec<_> = self
            .rules
            .iter()
            .map(|((m, p), r)| (m.clone(), *p, *r))
            .collect();
        out.sort_by(|a, b| (a.1, a.0.as_str()).cmp(&(b.1, b.0.as_str())));
        out
    }

    /// The router, every route behind the authorization layer of `gate`.
    pub fn finish(self, gate: Gate) -> Router<S> {
        let mut rules: HashMap<&'static str, Vec<(Method, Rule)>> = HashMap::new();
        for ((method, path), rule) in self.rules {
            rules.entry(path).or_default().push((method, rule));
        }
        let gate = Arc::new(GateState { gate, rules });
        self.router
            .route_layer(axum::middleware::from_fn_with_state(gate, check))
    }
}

/// Where the layer finds the index of the currently published state.
pub type IndexSource = Arc<dyn Fn() -> Arc<AuthIndex> + Send + Sync>;

/// Told of each refused request.
pub type RefusalHook = Arc<dyn Fn(&Refusal) + Send + Sync>;

/// Told of each accepted principal.
pub type AcceptHook = Arc<dyn Fn(&Principal) + Send + Sync>;

/// Where the layer finds the current index, and the node's choices.
#[derive(Clone)]
pub struct Gate {
    /// The index of the currently published state.
    pub index: IndexSource,
    /// Whether [`Rule::Observe`] routes are public.
    pub public_observe: bool,
    /// Told of every refused request (the origin records mutating ones in the audit log).
    pub on_refusal: Option<RefusalHook>,
    /// Told of every accepted principal (the origin notes when each token was last used).
    pub on_accept: Option<AcceptHook>,
}

/// A refused request, as the refusal hook is told of it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The method.
    pub method: Method,
    /// The request path.
    pub path: String,
    /// The principal, when a valid token was presented.
    pub actor: Option<String>,
    /// The status answered (401, 403 or 415).
    pub status: StatusCode,
    /// Why.
    pub message: String,
    /// The client's address, when the server recorded it.
    pub client: Option<std::net::SocketAddr>,
    /// The `x-request-id` header, if any.
    pub request_id: Option<String>,
}

/// Who sent a request and under which id, for the audit log (a request extension on every
/// route the layer decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    /// The `x-request-id` the client sent (1 to 128 visible ASCII bytes), or one made here;
    /// answered in the response's `x-request-id`.
    pub request_id: String,
    /// The client's address as the listener saw it.
    pub source: Option<std::net::SocketAddr>,
}

const REQUEST_ID: &str = "x-request-id";

/// A request id unique to this process: a random prefix drawn once, and a counter (no system
/// call per request).
fn next_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use rand_core::RngCore;
        rand_core::OsRng.next_u32()
    });
    format!("{prefix:08x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn request_meta(req: &Request) -> RequestMeta {
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    let request_id = match given {
        Some(id) => id.to_owned(),
        None => next_request_id(),
    };
    RequestMeta {
        request_id,
        source: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0),
    }
}

struct GateState {
    gate: Gate,
    /// Each route's path, and its rule per method.
    rules: HashMap<&'static str, Vec<(Method, Rule)>>,
}

/// The milliseconds since the Unix epoch now (token expiry is checked against it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The token of an `Authorization: Bearer <token>` header; `Ok(None)` without the header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the Authorization header must be `Bearer <token>`",
            )
        })
}

/// 403 `forbidden`, or 401 `unauthenticated` for a caller without a token, unless `principal`
/// may perform `action` on `resource`. Handlers call it for what the route's rule left to them.
pub fn authorize(
    principal: &Principal,
    action: Action,
    resource: &Resource<'_>,
) -> Result<(), ApiError> {
    if principal.allows(action, resource) {
        return Ok(());
    }
    Err(refusal(principal, action, resource))
}

fn refusal(principal: &Principal, action: Action, resource: &Resource<'_>) -> ApiError {
    if principal.is_anonymous() {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("{action} on {resource} needs a token (Authorization: Bearer <token>)"),
        )
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} may not {action} {resource}", principal.actor()),
        )
    }
}

/// The response for an error of this layer: 401s carry `WWW-Authenticate` (RFC 6750).
pub fn refusal_response(e: ApiError, token_presented: bool) -> Response {
    let status = e.status;
    let mut r = e.into_response();
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if token_presented {
            "Bearer realm=\"meridian\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"meridian\""
        };
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    r
}

fn json_content(req: &Request) -> Result<(), ApiError> {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return Ok(());
    }
    let headers = req.headers();
    let empty = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() == b"0");
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || v.eq_ignore_ascii_case("application/merge-patch+json")
        });
    match json {
        Some(true) => Ok(()),
        None if empty => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "write requests take a JSON body with Content-Type: application/json",
        )),
    }
}

async fn check(State(gs): State<Arc<GateState>>, req: Request, next: Next) -> Response {
    let Some(path) = req.extensions().get::<MatchedPath>() else {
        return next.run(req).await;
    };
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    // A method the path does not route goes on to the 405 answer.
    let rule = gs
        .rules
        .get(path.as_str())
        .and_then(|m| m.iter().find(|(at, _)| *at == method).map(|(_, r)| *r));
    let Some(rule) = rule else {
        return next.run(req).await;
    };
    // Public routes look at no token: a health check with a stale token still works.
    if rule == Rule::Public || (rule == Rule::Observe && gs.gate.public_observe) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let params =
        <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &())
            .await
            .ok();
    let req = Request::from_parts(parts, body);
    let param = |name: &str| {
        params.as_ref().and_then(|p| {
            p.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_owned())
        })
    };
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    let meta = request_meta(&req);
    let id_header = HeaderValue::from_str(&meta.request_id).ok();
    let decision = decide(&gs.gate, rule, &req, &param);
    let mut response = match decision {
        Ok(principal) => {
            if let Some(hook) = &gs.gate.on_accept {
                hook(&principal);
            }
            let mut req = req;
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(meta);
            next.run(req).await
        }
        Err((e, actor)) => {
            metrics::counter!("meridian_auth_refusals_total", "code" => e.code).increment(1);
            if let Some(hook) = &gs.gate.on_refusal {
                hook(&Refusal {
                    method: req.method().clone(),
                    path: req.uri().path().to_owned(),
                    actor,
                    status: e.status,
                    message: e.message.clone(),
                    client: meta.source,
                    request_id: Some(meta.request_id),
                });
            }
            refusal_response(e, presented)
        }
    };
    if let Some(id) = id_header {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

type Refused = (ApiError, Option<String>);

fn decide(
    gate: &Gate,
    rule: Rule,
    req: &Request,
    param: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<Principal>, Refused> {
    let token = bearer(req.headers()).map_err(|e| (e, None))?;
    let index = (gate.index)();
    let principal = index
        .authenticate(token, now_ms())
        .map_err(|e: AuthError| {
            (
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
                None,
            )
        })?;
    let actor = || (!principal.is_anonymous()).then(|| principal.actor());
    let ns = || param("app").zip(param("env"));
    let allowed = |action: Action, resource: &Resource<'_>| {
        authorize(&principal, action, resource).map_err(|e| (e, actor()))
    };
    match rule {
        Rule::Public | Rule::Identify => {}
        Rule::Observe => {
            if !gate.public_observe && principal.is_anonymous() {
                return Err((
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "this node's status and metrics need a token",
                    ),
                    None,
                ));
            }
        }
        Rule::Key(action) => {
            let (Some(app), Some(env), Some(key)) = (param("app"), param("env"), param("key"))
            else {
                return Err((missing_params(), actor()));
            };
            allowed(
                action,
                &Resource::Key {
                    app: &app,
                    env: &env,
                    key: &key,
                },
            )?;
        }
        Rule::Namespace(action) => {
            let Some((app, env)) = ns() else {
                return Err((missing_params(), actor()));
            };
            let prefix = param("prefix").unwrap_or_default();
            allowed(
                action,
                &Resource::Prefix {
                    app: &app,
                    env: &env,
                    prefix: &prefix,
                },
            )?;
        }
        Rule::Filtered(action) => {
            let some = match ns() {
                Some((app, env)) => principal.may_act_in(action, &app, &env),
                None => principal.has_grants(),
            };
            if !some {
                let (app, env) = ns().unwrap_or_else(|| ("*".into(), "*".into()));
                allowed(
                    action,
                    &Resource::Prefix {
                        app: &app,
                        env: &env,
                        prefix: "",
                    },
                )?;
            }
        }
        Rule::Everything(action) => allowed(action, &Resource::Everything)?,
    }
    // Who may not act is told so first; who may is told the body must be JSON.
    json_content(req).map_err(|e| (e, actor()))?;
    Ok(principal)
}

fn missing_params() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the route's rule names path parameters it does not have",
    )
}

/// The read filter of `principal` for filtered answers and template references.
pub fn readable(principal: &Principal) -> impl Fn(&str, &str, &str) -> bool + Sync + '_ {
    move |app, env, key| principal.allows(Action::Read, &Resource::Key { app, env, key })
}

/// A new token: 32 bytes from the operating system's generator, as text.
pub fn new_token() -> String {
    use rand_core::RngCore;
    let mut secret = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut secret);
    meridian_protocol::auth::token_string(&secret)
}

/// `[auth]` of a node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether `/v1/status`, `/v1/cluster`, `/v1/edges` and `/metrics` answer without a token
    /// (health checks and Prometheus scrapers); `false` asks for any valid token.
    pub public_status: bool,
    /// Origin only: a file (mode 0600) holding the token that administers a new cluster. It is
    /// committed as an admin token at the first start and accepted until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_file: Option<std::path::PathBuf>,
    /// Origin only: how often the times tokens were last used are committed.
    pub last_used_interval_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_status: true,
            bootstrap_token_file: None,
            last_used_interval_ms: 60_000,
        }
    }
}

impl AuthConfig {
    /// Checks the values against their limits.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        crate::config::check(
            (100..=3_600_000).contains(&self.last_used_interval_ms),
            "auth.last_used_interval_ms",
            format!(
                "must be between 100 and 3600000, got {}",
                self.last_used_interval_ms
            ),
        )
    }
}

/// Why the bootstrap token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapFileError {
    /// It could not be read.
    #[error("bootstrap token file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others than its owner may read it.
    #[error(
        "bootstrap token file {path} has mode {mode:o}; it must be readable by its owner only (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: std::path::PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// It does not hold a token.
    #[error("bootstrap token file {path}: {source}")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: meridian_protocol::auth::TokenError,
    },
}

/// The hash of the token in a bootstrap token file, after checking that only its owner may
/// read it.
pub fn read_bootstrap_token(path: &std::path::Path) -> Result<[u8; 32], BootstrapFileError> {
    let read = |source| BootstrapFileError::Read {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(BootstrapFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    meridian_protocol::auth::parse_token(text.trim()).map_err(|source| {
        BootstrapFileError::Malformed {
            path: path.to_owned(),
            source,
        }
    })
}
