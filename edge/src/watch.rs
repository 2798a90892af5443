//! Watches: the edge pushes every change to subscribers over Server-Sent Events
//! (`GET /v1/watch`) and WebSocket (`GET /v1/watch/ws`).
//!
//! This module owns the [`WatchHub`], a bounded in-memory ring of the most recent changes (one
//! [`WatchEvent`] per changed address, serialized once and shared by every subscriber), fed by
//! the replicator shell after each published revision, and the per-subscriber cursor logic:
//! a subscriber is a position (`R` = after revision R, `R:i` = after change `i` of revision
//! R) that pulls what follows it when its connection can take more, so a slow subscriber costs
//! no memory of its own. A subscriber whose position fell out of the ring, or who is more than
//! its buffer behind, gets one `resync` event with the full current state of what it watches
//! and continues from there. Event ids are positions, so `Last-Event-ID` or `since` resume
//! exactly after the last event received.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::Query;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use meridian_net::http::ApiError;
use meridian_net::slots::{Full, Slot, Slots};
use meridian_protocol::addr::WILDCARD;
use meridian_protocol::addr::{validate_app, validate_env, validate_key_prefix};
use meridian_protocol::auth::{Action, Principal, Resource, SYSTEM_APP};
use meridian_protocol::provenance::Provenance;
use meridian_protocol::view::Level;
use meridian_protocol::{Address, CacheState, Delta};
use meridian_store::Reader;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Limits of the watch machinery (`[watch]` in the edge's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchLimits {
    /// Most changes the ring keeps (whole revisions are dropped from its front beyond this).
    pub ring_events: usize,
    /// Most bytes of event JSON the ring keeps (whole revisions are dropped beyond this; the
    /// newest revision stays whatever its size).
    pub ring_bytes: usize,
    /// Most changes a subscriber may be behind before it is resynced instead.
    pub subscriber_buffer_events: usize,
    /// Interval of the keep-alive comments on idle streams.
    pub heartbeat_ms: u64,
    /// Watch streams (SSE and WebSocket) open at once; one more answers 429.
    pub max_subscribers: usize,
    /// Watch streams open at once from one client address; one more answers 429.
    pub max_subscribers_per_client: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            ring_events: 65_536,
            ring_bytes: 64 << 20,
            subscriber_buffer_events: 4_096,
            heartbeat_ms: 15_000,
            max_subscribers: 2_048,
            max_subscribers_per_client: 256,
        }
    }
}

/// One changed address of one revision, with its JSON serialized once.
#[derive(Debug)]
pub struct WatchEvent {
    /// The revision that made the change.
    pub revision: u64,
    /// Its place among the revision's changes.
    pub index: u32,
    /// Whether it is the revision's last change.
    pub last: bool,
    /// What changed.
    pub address: Address,
    /// Its new value (JSON text), `None` when deleted.
    pub value: Option<meridian_protocol::JsonText>,
    /// Its new version.
    pub version: u64,
    /// `{"revision","app","env","key","value","version","previous_version","deleted","level"}`,
    /// and `"actor"` and `"reason"` when the edge knows the revision's provenance.
    pub json: Arc<str>,
}

impl WatchEvent {
    fn of(delta: &Delta, index: usize, provenance: Option<&Provenance>) -> Option<Self> {
        let c = delta.changes.get(index)?;
        let mut json = String::with_capacity(96 + c.value.as_ref().map_or(0, |v| v.len()));
        json.push_str("{\"revision\":");
        json.push_str(&delta.revision.0.to_string());
        push_address(&mut json, &c.address);
        json.push_str(",\"value\":");
        json.push_str(&meridian_protocol::secrets::masked_text(
            c.value.as_deref().unwrap_or("null"),
        ));
        json.push_str(",\"version\":");
        json.push_str(&c.version.0.to_string());
        json.push_str(",\"previous_version\":");
        json.push_str(&c.version.0.saturating_sub(1).to_string());
        json.push_str(",\"deleted\":");
        json.push_str(if c.value.is_none() { "true" } else { "false" });
        push_level(&mut json, &c.address.app, &c.address.env);
        if let Some(p) = provenance {
            // Strings always serialize.
            json.push_str(",\"actor\":");
            json.push_str(&serde_json::to_string(&p.actor).unwrap_or_default());
            json.push_str(",\"reason\":");
            json.push_str(&serde_json::to_string(&p.reason).unwrap_or_default());
        }
        json.push('}');
        Some(Self {
            revision: delta.revision.0,
            index: index as u32,
            last: index + 1 == delta.changes.len(),
            address: c.address.clone(),
            value: c.value.clone(),
            version: c.version.0,
            json: json.into(),
        })
    }

    /// The position just after this event.
    pub fn position(&self) -> Position {
        Position {
            revision: self.revision,
            index: (!self.last).then_some(self.index),
        }
    }
}

/// `,"level":"app/env"`: the level of the hierarchy a change or entry is stored at (`_/_`,
/// `_/env`, `app/_` or `app/env`), which is its namespace.
fn push_level(json: &mut String, app: &str, env: &str) {
    json.push_str(",\"level\":");
    json.push_str(&serde_json::to_string(&format!("{app}/{env}")).unwrap_or_default());
}

fn push_address(json: &mut String, a: &Address) {
    for (name, v) in [("app", &a.app), ("env", &a.env), ("key", &a.key)] {
        json.push_str(",\"");
        json.push_str(name);
        json.push_str("\":");
        // Serializing a &str to a String cannot fail.
        json.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
}

/// A subscriber's place in the stream of changes: after revision `revision` entirely, or
/// after change `index` of it. Written `R` or `R:i` (the SSE event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The revision.
    pub revision: u64,
    /// `None`: after the whole revision.
    pub index: Option<u32>,
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // After a whole revision comes after every change of it.
        let key = |p: &Self| (p.revision, p.index.map_or(u64::MAX, u64::from));
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Position {
    /// After revision `revision` entirely.
    pub fn after(revision: u64) -> Self {
        Self {
            revision,
            index: None,
        }
    }

    /// Parses `R` or `R:i`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        match s.split_once(':') {
            None => s.parse().ok().map(Self::after),
            Some((r, i)) => Some(Self {
                revision: r.parse().ok()?,
                index: Some(i.parse().ok()?),
            }),
        }
    }

    /// Whether `e` comes after this position.
    fn precedes(&self, e: &WatchEvent) -> bool {
        match self.index {
            None => e.revision > self.revision,
            Some(i) => e.revision > self.revision || (e.revision == self.revision && e.index > i),
        }
    }

    /// The SSE id.
    pub fn id(&self) -> String {
        match self.index {
            None => self.revision.to_string(),
            Some(i) => format!("{}:{i}", self.revision),
        }
    }
}

/// What a subscriber watches: one namespace, optionally narrowed to a key prefix, and (unless
/// `inherit` is off) the levels it inherits from: `_/_`, `_/env` and `app/_`, whose changes
/// change its resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Application.
    pub app: String,
    /// Environment.
    pub env: String,
    /// Key prefix (empty: every key).
    pub prefix: String,
    /// Whether the inherited levels are watched too.
    pub inherit: bool,
    /// Who watches: only the keys they may read are sent, and the stream ends when their token
    /// stops working (`None`: everything, for the Redis mirror).
    pub access: Option<Access>,
}

/// The watcher of a stream and the token it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Who, as of the last revision.
    pub principal: Arc<Principal>,
    /// The bearer token, checked again at every revision (`None`: anonymous).
    pub bearer: Option<String>,
}

impl Filter {
    /// Every address (the Redis mirror's view, which skips the system records itself; HTTP
    /// watches always name a namespace).
    pub fn everything() -> Self {
        Self {
            app: String::new(),
            env: String::new(),
            prefix: String::new(),
            inherit: false,
            access: None,
        }
    }

    /// Whether the watcher may read `app/env/key`.
    fn visible(&self, app: &str, env: &str, key: &str) -> bool {
        self.access.as_ref().is_none_or(|a| {
            a.principal
                .allows(Action::Read, &Resource::Key { app, env, key })
        })
    }

    fn matches(&self, a: &Address) -> bool {
        let level = |mine: &str, theirs: &str| {
            mine.is_empty() || theirs == mine || (self.inherit && theirs == WILDCARD)
        };
        // Token and policy records never match a watch (whose app is a client app name); the
        // mirror sees them, to keep the revision boundaries, and skips them.
        level(&self.app, &a.app)
            && level(&self.env, &a.env)
            && a.key.starts_with(&self.prefix)
            && self.visible(&a.app, &a.env, &a.key)
    }

    /// The namespaces watched, least specific first, each once.
    fn namespaces(&self) -> Vec<(&str, &str)> {
        if !self.inherit {
            return vec![(self.app.as_str(), self.env.as_str())];
        }
        let mut out: Vec<(&str, &str)> = Vec::with_capacity(4);
        for level in Level::ALL.into_iter().rev() {
            let ns = level.namespace(&self.app, &self.env);
            if !out.contains(&ns) {
                out.push(ns);
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Arc<WatchEvent>>,
    /// Bytes of event JSON in `events`.
    bytes: usize,
    /// The ring holds every change after this revision (up to `revision`).
    floor: u64,
    /// The newest revision fed.
    revision: u64,
    /// Who made it and why, as the newest revision that said so (`None` after a gap, until a
    /// revision says again).
    provenance: Option<Provenance>,
}

/// What a subscriber does next.
#[derive(Debug)]
pub enum Step {
    /// Send these (in order, possibly none); the subscriber is then at the position given
    /// (past changes it does not watch, when the batch holds every change it watches).
    Events(Vec<Arc<WatchEvent>>, Position),
    /// Send the full current state instead: the subscriber fell out of the ring or too far
    /// behind.
    Resync,
    /// Nothing new yet: wait for the next revision.
    Wait,
}

/// One open watch stream's place under the limits; given back when dropped.
pub struct WatchSlot {
    hub: Arc<WatchHub>,
    _slot: Slot,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        metrics::gauge!("meridian_edge_watch_subscribers").decrement(1.0);
    }
}

/// The ring of recent changes and the notification of new revisions.
pub struct WatchHub {
    open: Slots,
    ring: RwLock<Ring>,
    closed: AtomicBool,
    revision_tx: watch::Sender<u64>,
    reader: Reader,
    limits: WatchLimits,
}

/// Most events one pull hands a subscriber.
const BATCH: usize = 256;

impl WatchHub {
    /// A hub over the edge's published state, starting at its current revision.
    pub fn new(reader: Reader, limits: WatchLimits) -> Self {
        let revision = reader
            .read()
            .map(|p| p.state.revision().0)
            .unwrap_or_else(|e| e.into_inner().state.revision().0);
        let provenance = reader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .get(
                SYSTEM_APP,
                meridian_protocol::provenance::PROVENANCE_ENV,
                meridian_protocol::provenance::PROVENANCE_KEY,
            )
            .and_then(|e| {
                e.value
                    .as_deref()
                    .and_then(meridian_protocol::provenance::parse)
            });
        let (revision_tx, _) = watch::channel(revision);
        Self {
            open: Slots::new(limits.max_subscribers, limits.max_subscribers_per_client),
            ring: RwLock::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                floor: revision,
                revision,
                provenance,
            }),
            revision_tx,
            reader,
            limits,
            closed: AtomicBool::new(false),
        }
    }

    /// Ends every watch stream (the edge is shutting down; streams would otherwise hold the
    /// HTTP server's graceful shutdown open forever).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.revision_tx.send_modify(|_| {});
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The edge's published state.
    pub fn state(&self) -> &Reader {
        &self.reader
    }

    /// The limits in force.
    pub fn limits(&self) -> WatchLimits {
        self.limits
    }

    /// A place for one more watch stream from `client`, or 429 `too_many_watches` naming the
    /// limit it would cross.
    pub fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Result<WatchSlot, ApiError> {
        let slot = self.open.take(client).map_err(|full| {
            metrics::counter!("meridian_edge_watch_refused_total").increment(1);
            let what = match full {
                Full::Total(n) => {
                    format!("this edge serves {n} watch streams, its limit (watch.max_subscribers)")
                }
                Full::Client(ip, n) => format!(
                    "{ip} has {n} watch streams open, the limit per client address \
                     (watch.max_subscribers_per_client)"
                ),
            };
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_watches", what)
        })?;
        metrics::gauge!("meridian_edge_watch_subscribers").increment(1.0);
        Ok(WatchSlot {
            hub: self.clone(),
            _slot: slot,
        })
    }

    /// The newest revision the hub was fed.
    pub fn revision(&self) -> u64 {
        *self.revision_tx.borrow()
    }

    /// A receiver that changes whenever a newer revision is fed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// Feeds consecutive published deltas (each newer than what the hub has; older ones are
    /// skipped, and a hole makes every subscriber behind it resync).
    pub fn publish<'a>(&self, deltas: impl IntoIterator<Item = &'a Delta>) {
        let newest = {
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            for d in deltas {
                if d.revision.0 <= ring.revision {
                    continue;
                }
                if d.revision.0 != ring.revision + 1 {
                    ring.events.clear();
                    ring.bytes = 0;
                    ring.floor = d.revision.0 - 1;
                    ring.provenance = None;
                }
                if let Some(p) = meridian_protocol::provenance::of_delta(d) {
                    ring.provenance = Some(p);
                }
                let provenance = ring.provenance.clone();
                for event in
                    (0..d.changes.len()).filter_map(|i| WatchEvent::of(d, i, provenance.as_ref()))
                {
                    ring.bytes += event.json.len();
                    ring.events.push_back(Arc::new(event));
                }
                ring.revision = d.revision.0;
            }
            while ring.events.len() > self.limits.ring_events || ring.bytes > self.limits.ring_bytes
            {
                let Some(oldest) = ring.events.front().map(|e| e.revision) else {
                    break;
                };
                if oldest == ring.revision && ring.events.len() <= self.limits.ring_events {
                    // The newest revision alone is over the bytes: it stays.
                    break;
                }
                while let Some(e) = ring.events.front().filter(|e| e.revision == oldest) {
                    ring.bytes -= e.json.len();
                    ring.events.pop_front();
                }
                ring.floor = oldest;
            }
            ring.revision
        };
        self.revision_tx.send_if_modified(|r| {
            let newer = newest > *r;
            *r = (*r).max(newest);
            newer
        });
    }

    /// The state jumped to `revision` without deltas (a snapshot was installed, or the deltas
    /// were no longer kept): every subscriber behind it resyncs.
    pub fn jump(&self, revision: u64) {
        {
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            if revision <= ring.revision {
                return;
            }
            ring.events.clear();
            ring.bytes = 0;
            ring.floor = revision;
            ring.revision = revision;
        }
        self.revision_tx.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }

    /// What a subscriber at `at` watching `filter` does next.
    pub fn step(&self, at: Position, filter: &Filter) -> Step {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        if at >= Position::after(ring.revision) {
            return Step::Wait;
        }
        if at.revision < ring.floor {
            return Step::Resync;
        }
        // Events are in position order: skip what the subscriber has seen.
        let start = ring.events.partition_point(|e| !at.precedes(e));
        let mut pending = 0usize;
        let mut out = Vec::new();
        for e in ring.events.range(start..) {
            if !filter.matches(&e.address) {
                continue;
            }
            pending += 1;
            if pending > self.limits.subscriber_buffer_events {
                return Step::Resync;
            }
            if out.len() < BATCH {
                out.push(e.clone());
            }
        }
        let to = match out.last() {
            Some(e) if pending > out.len() => e.position(),
            _ => Position::after(ring.revision),
        };
        Step::Events(out, to)
    }

    /// The position after the newest revision fed.
    pub fn newest(&self) -> Position {
        Position::after(self.revision())
    }

    /// The full current state of what `filter` watches: `{"revision","entries":[…]}` and the
    /// revision it was read at.
    pub fn resync(&self, filter: &Filter) -> (u64, String) {
        let p = self.reader.read().unwrap_or_else(|e| e.into_inner());
        let revision = p.state.revision().0;
        (revision, resync_json(&p.state, filter))
    }
}

fn resync_json(state: &CacheState, filter: &Filter) -> String {
    let mut json = String::from("{\"revision\":");
    json.push_str(&state.revision().0.to_string());
    json.push_str(",\"entries\":[");
    let mut first = true;
    for (app, env) in filter.namespaces() {
        let Some(ns) = state.namespace(app, env) else {
            continue;
        };
        for (key, e) in ns.range(filter.prefix.clone()..) {
            if !key.starts_with(&filter.prefix) {
                break;
            }
            let Some(value) = e.value.as_deref().filter(|_| filter.visible(app, env, key)) else {
                continue;
            };
            if !first {
                json.push(',');
            }
            first = false;
            json.push_str("{\"revision\":");
            json.push_str(&e.revision.0.to_string());
            let a = Address {
                app: app.to_owned(),
                env: env.to_owned(),
                key: key.clone(),
            };
            push_address(&mut json, &a);
            json.push_str(",\"value\":");
            json.push_str(&meridian_protocol::secrets::masked_text(value));
            json.push_str(",\"version\":");
            json.push_str(&e.version.0.to_string());
            push_level(&mut json, app, env);
            json.push('}');
        }
    }
    json.push_str("]}");
    json
}

/// Query of `GET /v1/watch` and `GET /v1/watch/ws`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Application (required).
    #[serde(default)]
    pub app: String,
    /// Environment (required).
    #[serde(default)]
    pub env: String,
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: String,
    /// Resume after this position (`R` or `R:i`); `0` starts with the full state. Without it
    /// the stream starts at the edge's current revision. `Last-Event-ID` takes precedence.
    #[serde(default)]
    pub since: Option<String>,
    /// Also the levels `app/env` inherits from (`_/_`, `_/env`, `app/_`); on by default,
    /// `false` watches only the keys stored under `app/env`.
    #[serde(default = "inherit_by_default")]
    pub inherit: bool,
}

fn inherit_by_default() -> bool {
    true
}

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// Where a new subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this position (no `since`: the edge's current revision).
    At(Position),
    /// With the full current state (`since=0`), then what follows it.
    Full,
}

/// Validates a watch request into a filter and a start.
pub fn parse_request(
    hub: &WatchHub,
    q: WatchQuery,
    last_event_id: Option<&str>,
) -> Result<(Filter, Start), ApiError> {
    if q.app.is_empty() || q.env.is_empty() {
        return Err(bad(
            "bad_query",
            "watch needs app and env (and optionally prefix, since)".into(),
        ));
    }
    validate_app(&q.app)?;
    validate_env(&q.env)?;
    if !q.prefix.is_empty() {
        validate_key_prefix(&q.prefix)?;
    }
    let since = last_event_id.map(str::to_owned).or(q.since);
    let at = match since {
        None => Start::At(hub.newest()),
        Some(s) => match Position::parse(&s) {
            Some(p) if p == Position::after(0) => Start::Full,
            Some(p) => Start::At(p),
            None => {
                return Err(bad(
                    "bad_since",
                    format!("since / Last-Event-ID must be R or R:i, got {s:?}"),
                ));
            }
        },
    };
    Ok((
        Filter {
            app: q.app,
            env: q.env,
            prefix: q.prefix,
            inherit: q.inherit,
            access: None,
        },
        at,
    ))
}

/// One thing a subscriber is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A change, with the position just after it.
    Change { id: String, json: Arc<str> },
    /// The full state, at the position after its revision.
    Resync { id: String, json: String },
}

/// A subscriber: pulls what follows its position from the hub, waiting for new revisions.
pub struct Subscriber {
    hub: Arc<WatchHub>,
    filter: Filter,
    at: Position,
    rx: watch::Receiver<u64>,
    queue: VecDeque<Outgoing>,
    /// Started with [`Start::Full`]: the first thing sent is the full state.
    resync_first: bool,
}

impl Subscriber {
    /// A subscriber starting at `start`.
    pub fn new(hub: Arc<WatchHub>, filter: Filter, start: Start) -> Self {
        let rx = hub.subscribe();
        let (at, resync_first) = match start {
            Start::At(p) => (p, false),
            Start::Full => (Position::after(0), true),
        };
        Self {
            hub,
            filter,
            resync_first,
            at,
            rx,
            queue: VecDeque::new(),
        }
    }

    /// The next thing to send; waits for a new revision when there is nothing. `None` when the
    /// hub is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        loop {
            if self.hub.is_closed() {
                return None;
            }
            if let Some(o) = self.queue.pop_front() {
                return Some(o);
            }
            // Mark the current revision seen before looking, so a revision fed meanwhile
            // wakes the wait below.
            self.rx.borrow_and_update();
            if !self.still_authorized() {
                metrics::counter!("meridian_edge_watch_revoked_total").increment(1);
                return None;
            }
            let step = if std::mem::take(&mut self.resync_first) {
                Step::Resync
            } else {
                self.hub.step(self.at, &self.filter)
            };
            match step {
                Step::Events(events, to) => {
                    for e in events {
                        self.queue.push_back(Outgoing::Change {
                            id: e.position().id(),
                            json: e.json.clone(),
                        });
                    }
                    self.at = to;
                    continue;
                }
                Step::Resync => {
                    metrics::counter!("meridian_edge_watch_resyncs_total").increment(1);
                    let (revision, json) = self.hub.resync(&self.filter);
                    self.at = Position::after(revision);
                    return Some(Outgoing::Resync {
                        id: self.at.id(),
                        json,
                    });
                }
                Step::Wait => {}
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Subscriber {
    /// Checks the watcher's token against the current tokens and policies (a revocation or a
    /// changed policy is itself a revision, which wakes every subscriber): `false` ends the
    /// stream.
    fn still_authorized(&mut self) -> bool {
        let Some(access) = &mut self.filter.access else {
            return true;
        };
        let index = self
            .hub
            .state()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .auth
            .clone();
        match index.authenticate(access.bearer.as_deref(), meridian_net::auth::now_ms()) {
            Ok(p) => {
                access.principal = p;
                true
            }
            Err(_) => false,
        }
    }
}

/// `GET /v1/watch`: Server-Sent Events `change` (id `R` or `R:i`) and `resync` (id `R`), with
/// keep-alive comments while idle.
pub fn sse(slot: WatchSlot, filter: Filter, at: Start) -> Response {
    let hub = slot.hub.clone();
    let heartbeat = Duration::from_millis(hub.limits().heartbeat_ms.max(1));
    let sub = Subscriber::new(hub, filter, at);
    let stream = futures_util::stream::unfold((sub, slot), |(mut sub, open)| async move {
        let o = sub.next().await?;
        let event = match o {
            Outgoing::Change { id, json } => Event::default().event("change").id(id).data(&*json),
            Outgoing::Resync { id, json } => Event::default().event("resync").id(id).data(json),
        };
        Some((Ok::<_, Infallible>(event), (sub, open)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response()
}

/// `GET /v1/watch/ws`: the same events as WebSocket text messages
/// `{"event":"change"|"resync","id":…,"data":{…}}`, with pings while idle.
pub fn websocket(slot: WatchSlot, filter: Filter, at: Start, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_socket(socket, slot, filter, at))
}

async fn serve_socket(mut socket: WebSocket, slot: WatchSlot, filter: Filter, at: Start) {
    let hub = slot.hub.clone();
    let heartbeat = Duration::from_millis(hub.limits().heartbeat_ms.max(1));
    let mut sub = Subscriber::new(hub, filter, at);
    loop {
        let next = tokio::select! {
            o = sub.next() => o,
            _ = tokio::time::sleep(heartbeat) => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                continue;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let Some(o) = next else { return };
        let text = match o {
            Outgoing::Change { id, json } => {
                format!("{{\"event\":\"change\",\"id\":\"{id}\",\"data\":{json}}}")
            }
            Outgoing::Resync { id, json } => {
                format!("{{\"event\":\"resync\",\"id\":\"{id}\",\"data\":{json}}}")
            }
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
}

/// Reads `Last-Event-ID`.
pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// Extracts and validates a watch query.
pub fn query(
    q: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<WatchQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad("bad_query", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::{Change, Revision, Version};
    use meridian_store::{MemBackend, SignedState};

    fn delta(revision: u64, keys: &[&str]) -> Delta {
        Delta {
            revision: Revision(revision),
            changes: keys
                .iter()
                .map(|k| {
                    let (ns, key) = k.split_once(':').unwrap_or(("pay/prod", k));
                    let (app, env) = ns.split_once('/').unwrap();
                    Change {
                        address: Address::parse(app, env, key).unwrap(),
                        version: Version(revision),
                        value: (!key.starts_with("gone")).then(|| format!("{revision}").into()),
                    }
                })
                .collect(),
        }
    }

    fn hub(limits: WatchLimits) -> WatchHub {
        let state = SignedState::open(MemBackend::new(), 100).unwrap();
        WatchHub::new(state.reader(), limits)
    }

    fn filter(prefix: &str) -> Filter {
        Filter {
            app: "pay".into(),
            env: "prod".into(),
            prefix: prefix.into(),
            inherit: true,
            access: None,
        }
    }

    #[test]
    fn a_watch_gets_the_changes_of_the_levels_it_inherits_from_with_their_level() {
        let h = hub(WatchLimits::default());
        h.publish(&[delta(
            1,
            &[
                "_/_:db.url",
                "_/prod:db.url",
                "pay/_:db.url",
                "pay/prod:db.url",
                "_/dev:db.url",
                "web/_:db.url",
                "web/prod:db.url",
                "pay/prod:cache.ttl",
            ],
        )]);
        let Step::Events(events, _) = h.step(Position::after(0), &filter("db.")) else {
            panic!("events expected");
        };
        let levels: Vec<String> = events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
                v["level"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(levels, ["_/_", "_/prod", "pay/_", "pay/prod"]);
        // Without inheritance: only what is stored under pay/prod.
        let own = Filter {
            inherit: false,
            access: None,
            ..filter("db.")
        };
        let Step::Events(events, _) = h.step(Position::after(0), &own) else {
            panic!("events expected");
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].address.app, "pay");
        assert_eq!(events[0].address.env, "prod");
    }

    fn ids(step: Step) -> (Vec<String>, Position) {
        match step {
            Step::Events(events, to) => (events.iter().map(|e| e.position().id()).collect(), to),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn positions_parse_and_print() {
        assert_eq!(Position::parse("7"), Some(Position::after(7)));
        let mid = Position {
            revision: 7,
            index: Some(2),
        };
        assert_eq!(Position::parse("7:2"), Some(mid));
        assert_eq!(mid.id(), "7:2");
        assert_eq!(Position::parse("x"), None);
        assert_eq!(Position::parse("7:"), None);
        assert!(Position::after(6) < mid && mid < Position::after(7));
    }

    #[test]
    fn a_subscriber_gets_what_follows_its_position_in_order_and_only_what_it_watches() {
        let h = hub(WatchLimits::default());
        h.publish(&[
            delta(1, &["db.url", "cache.ttl"]),
            delta(2, &["other/prod:db.url"]),
            delta(3, &["db.pool", "gone.flag", "db.url"]),
        ]);
        assert_eq!(h.revision(), 3);
        let (all, to) = ids(h.step(Position::after(0), &filter("")));
        assert_eq!(all, ["1:0", "1", "3:0", "3:1", "3"]);
        assert_eq!(to, Position::after(3));
        // Resuming in the middle of revision 3 gives exactly the rest.
        let (rest, _) = ids(h.step(Position::parse("3:0").unwrap(), &filter("")));
        assert_eq!(rest, ["3:1", "3"]);
        // A prefix narrows it; the subscriber still moves past what it does not watch.
        let (db, to) = ids(h.step(Position::after(1), &filter("db.")));
        assert_eq!(db, ["3:0", "3"]);
        assert_eq!(to, Position::after(3));
        let (none, to) = ids(h.step(Position::after(1), &filter("nothing")));
        assert!(none.is_empty());
        assert_eq!(to, Position::after(3));
        assert!(matches!(
            h.step(Position::after(3), &filter("")),
            Step::Wait
        ));
        // A deletion says so.
        let Step::Events(events, _) = h.step(Position::parse("3:0").unwrap(), &filter("gone"))
        else {
            panic!("events")
        };
        let v: serde_json::Value = serde_json::from_str(&events[0].json).unwrap();
        assert_eq!(v["deleted"], true);
        assert_eq!(v["value"], serde_json::Value::Null);
        assert_eq!(v["key"], "gone.flag");
        assert_eq!(v["revision"], 3);
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_as_well_as_events() {
        let h = hub(WatchLimits {
            ring_events: 1_000,
            ring_bytes: 600,
            subscriber_buffer_events: 1_000,
            heartbeat_ms: 1_000,
            ..WatchLimits::default()
        });
        // Each event's JSON is about 100 bytes: six revisions of two events exceed 600 bytes.
        let deltas: Vec<_> = (1..=6).map(|r| delta(r, &["a", "b"])).collect();
        h.publish(&deltas);
        let ring = h.ring.read().unwrap();
        assert!(ring.bytes <= 600, "{} bytes kept", ring.bytes);
        assert_eq!(
            ring.bytes,
            ring.events.iter().map(|e| e.json.len()).sum::<usize>()
        );
        assert!(ring.floor >= 1, "the oldest revisions were dropped whole");
        assert_eq!(ring.events.back().map(|e| e.revision), Some(6));
        drop(ring);
        assert!(matches!(
            h.step(Position::after(0), &filter("")),
            Step::Resync
        ));
        // One revision alone over the bytes stays (its subscribers are not all resynced).
        let big = hub(WatchLimits {
            ring_events: 1_000,
            ring_bytes: 10,
            subscriber_buffer_events: 1_000,
            heartbeat_ms: 1_000,
            ..WatchLimits::default()
        });
        big.publish(&[delta(1, &["a", "b"])]);
        assert_eq!(big.ring.read().unwrap().events.len(), 2);
    }

    #[test]
    fn falling_out_of_the_ring_or_behind_the_buffer_means_resync() {
        let h = hub(WatchLimits {
            ring_events: 4,
            ring_bytes: 1 << 20,
            subscriber_buffer_events: 2,
            heartbeat_ms: 1_000,
            ..WatchLimits::default()
        });
        h.publish(&[
            delta(1, &["a", "b"]),
            delta(2, &["c"]),
            delta(3, &["d", "e"]),
        ]);
        // Revision 1 was dropped whole to keep the ring at 4 events or fewer.
        assert!(matches!(
            h.step(Position::after(0), &filter("")),
            Step::Resync
        ));
        // Three pending changes exceed a buffer of two.
        assert!(matches!(
            h.step(Position::after(1), &filter("")),
            Step::Resync
        ));
        // Two are fine.
        let (ids, _) = ids(h.step(Position::after(2), &filter("")));
        assert_eq!(ids, ["3:0", "3"]);
        // A jump (snapshot installed) resyncs everyone behind it.
        h.jump(10);
        assert!(matches!(
            h.step(Position::after(3), &filter("")),
            Step::Resync
        ));
        assert!(matches!(
            h.step(Position::after(10), &filter("")),
            Step::Wait
        ));
        // A hole in what is fed is a jump too.
        h.publish(&[delta(12, &["f"])]);
        assert!(matches!(
            h.step(Position::after(10), &filter("")),
            Step::Resync
        ));
        let (ids, _) = super::tests::ids(h.step(Position::after(11), &filter("")));
        assert_eq!(ids, ["12"]);
    }

    #[tokio::test]
    async fn a_stalled_subscriber_gets_one_resync_and_memory_stays_bounded() {
        let h = Arc::new(hub(WatchLimits {
            ring_events: 64,
            ring_bytes: 1 << 20,
            subscriber_buffer_events: 8,
            heartbeat_ms: 1_000,
            ..WatchLimits::default()
        }));
        let start = Start::At(Position::after(0));
        let mut stalled = Subscriber::new(h.clone(), filter(""), start);
        let mut keeping_up = Subscriber::new(h.clone(), filter(""), start);
        for r in 1..=1_000 {
            h.publish(&[delta(r, &["a", "b"])]);
            // One subscriber reads everything as it comes; the other reads nothing.
            for _ in 0..2 {
                assert!(matches!(
                    keeping_up.next().await,
                    Some(Outgoing::Change { .. })
                ));
            }
            assert!(
                h.ring.read().unwrap().events.len() <= 64,
                "the ring is bounded"
            );
        }
        // The stalled one is resynced to the state the edge publishes, once, then continues.
        match stalled.next().await {
            Some(Outgoing::Resync { id, json }) => {
                assert_eq!(id, h.resync(&filter("")).0.to_string());
                assert!(json.starts_with("{\"revision\":"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            stalled.queue.is_empty(),
            "nothing was queued for it meanwhile"
        );
        h.publish(&[delta(1_001, &["c"])]);
        // The published state here stays at 0 (the test feeds the hub directly), so the
        // resync left it at 0 and it is behind again by more than its buffer.
        assert!(matches!(
            stalled.next().await,
            Some(Outgoing::Resync { .. })
        ));
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_the_next_revision() {
        let h = Arc::new(hub(WatchLimits::default()));
        let mut sub = Subscriber::new(h.clone(), filter(""), Start::Full);
        // The full state first (empty here).
        assert_eq!(
            sub.next().await,
            Some(Outgoing::Resync {
                id: "0".into(),
                json: "{\"revision\":0,\"entries\":[]}".into()
            })
        );
        let feeder = {
            let h = h.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                h.publish(&[delta(1, &["a"])]);
            })
        };
        let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("woken by the new revision");
        feeder.await.unwrap();
        match got {
            Some(Outgoing::Change { id, json }) => {
                assert_eq!(id, "1");
                assert!(json.contains("\"key\":\"a\""));
            }
            other => panic!("{other:?}"),
        }
    }
}
