//! The Rust client for services that read configuration from a Meridian edge.
//!
//! It owns the HTTP conversation with one edge: single keys and resolved configuration with
//! the revision and staleness the edge stamps on every answer; read-your-writes with
//! `min_revision` (the revision an origin write answered); a watch that is an async stream of
//! changes and resumes by itself after the last event it delivered; and a local cache of the
//! last good answer to every read, served (marked `from_cache`) while the edge is unreachable.
//! Answers from the edge that are errors (404, 422, 503 `stale`, 504) are never papered over
//! with the cache. Flags are evaluated locally from a watched copy of the flag set
//! ([`flags::LocalFlags`]), also through an OpenFeature provider ([`openfeature`]). A watch
//! reports the revision the service applied, for the origin's drift view ([`applied`]).

pub mod applied;
pub mod flags;
pub mod openfeature;
pub mod sse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use serde::Deserialize;
use serde_json::Value;

use crate::sse::SseParser;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The edge could not be reached and nothing was cached for this read.
    #[error("edge unreachable: {0}")]
    Unreachable(String),
    /// The edge answered an error (`code` is the JSON error body's code, e.g. `not_found`,
    /// `stale`, `revision_not_reached`).
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Human-readable message.
        message: String,
        /// The edge's revision when it answered.
        revision: Option<u64>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The endpoint is not a usable URL.
    #[error("bad endpoint {0:?}")]
    Endpoint(String),
}

impl ClientError {
    /// The error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// An answer and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    /// The answer.
    pub value: T,
    /// The edge revision it was read at.
    pub revision: u64,
    /// How stale the edge said it was (milliseconds since it last heard a newest head).
    pub staleness_ms: Option<u64>,
    /// Served from the local cache because the edge was unreachable.
    pub from_cache: bool,
}

/// A single key as the edge answers it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry {
    /// Application.
    pub app: String,
    /// Environment.
    pub env: String,
    /// Key.
    pub key: String,
    /// Value (templates resolved).
    pub value: Value,
    /// Per-key version.
    #[serde(default)]
    pub version: u64,
    /// Revision that wrote it.
    #[serde(default)]
    pub revision: u64,
}

/// Read options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Wait until the edge has applied this revision (read-your-writes).
    pub min_revision: Option<u64>,
    /// How long the edge may wait for `min_revision` (it answers 504 `revision_not_reached`
    /// after that).
    pub wait_ms: Option<u64>,
}

/// One change or resync delivered by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// An address changed.
    Change {
        /// Position (resume after it with `since`).
        id: String,
        /// Revision of the change.
        revision: u64,
        /// Application.
        app: String,
        /// Environment.
        env: String,
        /// Key.
        key: String,
        /// New value; `None` when deleted.
        value: Option<Value>,
        /// Per-key version.
        version: u64,
        /// Who made the change (`name#id`), when the edge knows.
        actor: Option<String>,
        /// Why, when the writer said.
        reason: Option<String>,
    },
    /// The full current state of what is watched (the watch fell behind or started at 0).
    Resync {
        /// Position.
        id: String,
        /// Revision of the state.
        revision: u64,
        /// `(key, value, version)` of every live key watched, least specific level first (so
        /// that inserting them in order into a map gives the resolved configuration).
        entries: Vec<(String, Value, u64)>,
    },
}

impl WatchEvent {
    /// The position after this event.
    pub fn id(&self) -> &str {
        match self {
            Self::Change { id, .. } | Self::Resync { id, .. } => id,
        }
    }
}

/// A client of one edge.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    cache: Arc<Mutex<HashMap<String, (Value, u64)>>>,
    request_timeout: Duration,
    instance: Option<String>,
}

const REVISION: &str = "meridian-revision";
const STALENESS: &str = "meridian-staleness-ms";

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

fn encode(s: &str) -> String {
    form_urlencoded_component(s)
}

/// Percent-encodes a query or path component.
fn form_urlencoded_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A reqwest client builder whose TLS is rustls with the ring provider, verifying servers
/// against the PEM CA certificates in `ca_file`, or the platform's roots without one.
pub fn http_builder(
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Endpoint(e.to_string()))?;
    let tls = match ca_file {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                ClientError::Endpoint(format!("CA file {}: {e}", path.display()))
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| ClientError::Endpoint(e.to_string()))?
                .with_no_client_auth()
        }
    };
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}

impl Client {
    /// A client of the edge at `endpoint` (e.g. `http://127.0.0.1:7101`) that presents no
    /// token (it reads only what policies grant `anonymous`).
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        Self::with_token(endpoint, None)
    }

    /// A client of the edge at `endpoint` presenting `token` (a read token scoped to the
    /// service's namespaces, usually from `MERIDIAN_TOKEN`) as `Authorization: Bearer`.
    pub fn with_token(endpoint: &str, token: Option<&str>) -> Result<Self, ClientError> {
        Self::with_options(endpoint, token, None)
    }

    /// A client of the edge at `endpoint` presenting `token`, which verifies an `https://`
    /// endpoint's certificate against the PEM CA in `ca_file` (`None`: the platform's roots).
    pub fn with_options(
        endpoint: &str,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ClientError::Endpoint(endpoint));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Endpoint("the token is not header text".into()))?;
            // Kept out of debug output.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = http_builder(ca_file)?
            .connect_timeout(Duration::from_secs(2))
            .default_headers(headers)
            .build()
            .map_err(|e| ClientError::Endpoint(e.to_string()))?;
        Ok(Self {
            http,
            endpoint,
            cache: Arc::new(Mutex::new(HashMap::new())),
            request_timeout: Duration::from_secs(10),
            instance: Some(applied::default_instance()),
        })
    }

    /// The name this instance's watches report their applied revision under (default:
    /// [`applied::default_instance`]); `None` turns the reports off.
    pub fn with_instance(mut self, instance: Option<&str>) -> Self {
        self.instance = instance.map(applied::sanitize);
        self
    }

    /// Tells the edge that this instance applied `revision` of `app/env` (keys starting with
    /// `prefix`); a watch does so by itself.
    pub async fn report_applied(
        &self,
        app: &str,
        env: &str,
        prefix: &str,
        revision: u64,
    ) -> Result<(), ClientError> {
        let instance = self
            .instance
            .clone()
            .ok_or_else(|| ClientError::Endpoint("this client reports under no instance".into()))?;
        let url = format!(
            "{}/v1/applied/{}/{}",
            self.endpoint,
            encode(app),
            encode(env)
        );
        let body =
            serde_json::json!({"instance": instance, "revision": revision, "prefix": prefix});
        let r = self
            .http
            .post(&url)
            .timeout(self.request_timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let status = r.status().as_u16();
        if r.status().is_success() {
            return Ok(());
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Err(api_error(status, &body, None))
    }

    /// The edge's base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET /v1/kv/{app}/{env}/{key}`.
    pub async fn get(&self, app: &str, env: &str, key: &str) -> Result<Answer<Entry>, ClientError> {
        self.get_with(app, env, key, ReadOptions::default()).await
    }

    /// `GET /v1/kv/{app}/{env}/{key}` with read options.
    pub async fn get_with(
        &self,
        app: &str,
        env: &str,
        key: &str,
        opts: ReadOptions,
    ) -> Result<Answer<Entry>, ClientError> {
        let path = format!("/v1/kv/{}/{}/{}", encode(app), encode(env), encode(key));
        let a = self.read(&path, opts).await?;
        let entry =
            serde_json::from_value(a.value).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(Answer {
            value: entry,
            revision: a.revision,
            staleness_ms: a.staleness_ms,
            from_cache: a.from_cache,
        })
    }

    /// `GET /v1/secrets/{app}/{env}/{key}?reveal=true`: a secret's value. The token needs
    /// `secret-read` on it, the edge the namespace's keys (403 `secret_unavailable`
    /// otherwise), and every reveal is in the audit log.
    pub async fn secret(
        &self,
        app: &str,
        env: &str,
        key: &str,
    ) -> Result<Answer<Value>, ClientError> {
        let path = format!(
            "/v1/secrets/{}/{}/{}?reveal=true",
            encode(app),
            encode(env),
            encode(key)
        );
        let mut a = self.read(&path, ReadOptions::default()).await?;
        a.value = a.value["value"].take();
        Ok(a)
    }

    /// `GET /v1/config/{app}/{env}`: the resolved configuration (`config`, `sources`, ...).
    pub async fn config(
        &self,
        app: &str,
        env: &str,
        opts: ReadOptions,
    ) -> Result<Answer<Value>, ClientError> {
        let path = format!("/v1/config/{}/{}", encode(app), encode(env));
        self.read(&path, opts).await
    }

    async fn read(&self, path: &str, opts: ReadOptions) -> Result<Answer<Value>, ClientError> {
        let mut url = format!("{}{path}", self.endpoint);
        let mut sep = '?';
        if let Some(r) = opts.min_revision {
            url.push_str(&format!("{sep}min_revision={r}"));
            sep = '&';
        }
        if let Some(w) = opts.wait_ms {
            url.push_str(&format!("{sep}wait_ms={w}"));
        }
        let timeout = self.request_timeout + Duration::from_millis(opts.wait_ms.unwrap_or(0));
        let sent = self.http.get(&url).timeout(timeout).send().await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                // Unreachable: the last good answer, if there is one and it is new enough.
                let cached = self.cache.lock().ok().and_then(|c| c.get(path).cloned());
                return match cached {
                    Some((value, revision))
                        if opts.min_revision.is_none_or(|min| revision >= min) =>
                    {
                        Ok(Answer {
                            value,
                            revision,
                            staleness_ms: None,
                            from_cache: true,
                        })
                    }
                    _ => Err(ClientError::Unreachable(e.to_string())),
                };
            }
        };
        let status = r.status().as_u16();
        let revision = header_u64(r.headers(), REVISION);
        let staleness_ms = header_u64(r.headers(), STALENESS);
        let body: Value = r
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if status != 200 {
            return Err(api_error(status, &body, revision));
        }
        let revision = revision.unwrap_or(0);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(path.to_owned(), (body.clone(), revision));
        }
        Ok(Answer {
            value: body,
            revision,
            staleness_ms,
            from_cache: false,
        })
    }

    /// Watches `app/env` (keys starting with `prefix`), and the levels it inherits from
    /// (`_/_`, `_/env`, `app/_`: each change names its `app` and `env`), from `since` (a position or revision;
    /// `Some("0")` starts with a resync holding the full state; `None` starts now). The stream
    /// reconnects by itself, resuming after the last event it delivered, with backoff from
    /// 100 ms to 5 s; it ends only on an error the edge will not change its mind about (a bad
    /// request), which it yields last.
    pub fn watch(
        &self,
        app: &str,
        env: &str,
        prefix: &str,
        since: Option<String>,
    ) -> impl Stream<Item = Result<WatchEvent, ClientError>> + Send + 'static {
        let url = format!(
            "{}/v1/watch?app={}&env={}&prefix={}",
            self.endpoint,
            encode(app),
            encode(env),
            encode(prefix)
        );
        let reporter = self.instance.clone().map(|instance| {
            applied::Reporter::new(
                self.http.clone(),
                &self.endpoint,
                app,
                env,
                prefix,
                instance,
            )
        });
        let state = WatchState {
            http: self.http.clone(),
            reporter,
            delivered: None,
            url,
            since,
            response: None,
            parser: SseParser::new(),
            ready: Default::default(),
            backoff: MIN_BACKOFF,
            done: false,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        })
    }
}

fn api_error(status: u16, body: &Value, revision: Option<u64>) -> ClientError {
    let e = body.get("error").unwrap_or(body);
    ClientError::Api {
        status,
        code: e["code"].as_str().unwrap_or("unknown").to_owned(),
        message: e["message"].as_str().unwrap_or("").to_owned(),
        revision: revision.or_else(|| body["revision"].as_u64()),
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct WatchState {
    http: reqwest::Client,
    /// Reports the revision applied (none: reports are off).
    reporter: Option<applied::Reporter>,
    /// The revision of the last event delivered: applied once the next one is asked for.
    delivered: Option<u64>,
    url: String,
    since: Option<String>,
    response: Option<reqwest::Response>,
    parser: SseParser,
    ready: std::collections::VecDeque<WatchEvent>,
    backoff: Duration,
    done: bool,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        if let (Some(reporter), Some(revision)) = (&self.reporter, self.delivered.take()) {
            reporter.applied(revision);
        }
        loop {
            if let Some(e) = self.ready.pop_front() {
                self.since = Some(e.id().to_owned());
                self.delivered = Some(match &e {
                    WatchEvent::Change { revision, .. } | WatchEvent::Resync { revision, .. } => {
                        *revision
                    }
                });
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            let Some(r) = self.response.as_mut() else {
                match self.connect().await {
                    Ok(r) => {
                        self.response = Some(r);
                        self.parser = SseParser::new();
                    }
                    Err(Some(fatal)) => {
                        self.done = true;
                        return Some(Err(fatal));
                    }
                    Err(None) => self.pause().await,
                }
                continue;
            };
            match r.chunk().await {
                Ok(Some(bytes)) => {
                    self.backoff = MIN_BACKOFF;
                    // Keep-alives come every few seconds: the time to report again.
                    if let Some(reporter) = &self.reporter {
                        reporter.send_if_due();
                    }
                    for e in self.parser.feed(&bytes) {
                        match parse_event(&e.event, &e.data, e.id) {
                            Ok(Some(ev)) => self.ready.push_back(ev),
                            Ok(None) => {}
                            Err(err) => tracing::warn!(%err, "skipping an undecodable watch event"),
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    // The edge went away: resume after the last event delivered.
                    self.response = None;
                    self.pause().await;
                }
            }
        }
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// `Err(Some(_))`: a request the edge refuses (no point retrying); `Err(None)`: retry.
    async fn connect(&self) -> Result<reqwest::Response, Option<ClientError>> {
        let mut req = self
            .http
            .get(&self.url)
            .header("accept", "text/event-stream");
        if let Some(since) = &self.since {
            req = req.header("last-event-id", since.as_str());
        }
        let r = req.send().await.map_err(|_| None)?;
        let status = r.status().as_u16();
        if status == 200 {
            return Ok(r);
        }
        let revision = header_u64(r.headers(), REVISION);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if (400..500).contains(&status) {
            Err(Some(api_error(status, &body, revision)))
        } else {
            Err(None)
        }
    }
}

/// Decodes one SSE event of the watch API; `Ok(None)` for event types this client does not
/// know (newer servers may add some).
pub fn parse_event(
    event: &str,
    data: &str,
    id: Option<String>,
) -> Result<Option<WatchEvent>, ClientError> {
    let bad = |what: &str| ClientError::Decode(format!("{event} event: {what}"));
    let id = || id.clone().ok_or_else(|| bad("no id"));
    let v: Value = match event {
        "change" | "resync" => serde_json::from_str(data).map_err(|e| bad(&e.to_string()))?,
        _ => return Ok(None),
    };
    let s = |v: &Value, f: &str| v[f].as_str().map(str::to_owned).ok_or_else(|| bad(f));
    let n = |v: &Value, f: &str| v[f].as_u64().ok_or_else(|| bad(f));
    Ok(Some(match event {
        "change" => WatchEvent::Change {
            id: id()?,
            revision: n(&v, "revision")?,
            app: s(&v, "app")?,
            env: s(&v, "env")?,
            key: s(&v, "key")?,
            value: (!v["deleted"].as_bool().unwrap_or(false)).then(|| v["value"].clone()),
            version: n(&v, "version")?,
            actor: v["actor"].as_str().map(str::to_owned),
            reason: v["reason"].as_str().map(str::to_owned),
        },
        _ => WatchEvent::Resync {
            id: id()?,
            revision: n(&v, "revision")?,
            entries: v["entries"]
                .as_array()
                .ok_or_else(|| bad("entries"))?
                .iter()
                .map(|e| Ok((s(e, "key")?, e["value"].clone(), n(e, "version")?)))
                .collect::<Result<_, ClientError>>()?,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_decode() {
        let change = parse_event(
            "change",
            r#"{"revision":3,"app":"a","env":"e","key":"k","value":{"x":1},"version":2,"previous_version":1,"deleted":false,"actor":"alice#1","reason":"why"}"#,
            Some("3".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            change,
            WatchEvent::Change {
                id: "3".into(),
                revision: 3,
                app: "a".into(),
                env: "e".into(),
                key: "k".into(),
                value: Some(serde_json::json!({"x": 1})),
                version: 2,
                actor: Some("alice#1".into()),
                reason: Some("why".into()),
            }
        );
        let deleted = parse_event(
            "change",
            r#"{"revision":4,"app":"a","env":"e","key":"k","value":null,"version":3,"deleted":true}"#,
            Some("4".into()),
        )
        .unwrap()
        .unwrap();
        assert!(matches!(deleted, WatchEvent::Change { value: None, .. }));
        let resync = parse_event(
            "resync",
            r#"{"revision":9,"entries":[{"revision":2,"app":"a","env":"e","key":"k","value":1,"version":1}]}"#,
            Some("9".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            resync,
            WatchEvent::Resync {
                id: "9".into(),
                revision: 9,
                entries: vec![("k".into(), serde_json::json!(1), 1)]
            }
        );
        assert!(parse_event("later", "{}", None).unwrap().is_none());
        assert!(parse_event("change", "{}", Some("1".into())).is_err());
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode("a.b-c_d"), "a.b-c_d");
        assert_eq!(encode("a b/c&d"), "a%20b%2Fc%26d");
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(Client::new("127.0.0.1:1").is_err());
        assert_eq!(
            Client::new("http://127.0.0.1:1/").unwrap().endpoint(),
            "http://127.0.0.1:1"
        );
    }
}
