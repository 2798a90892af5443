//! Webhook subscriptions and their replicated delivery queue. A subscription names a URL, the
//! event types and the app/env/key patterns it wants; when a commit changes a key it covers,
//! the apply core appends an event to the queue in the same batch as the revision, so every
//! origin node holds the same queue and a new leader delivers what the old one had not
//! (at least once; the event's id is the receiver's idempotency key). The leader reports each
//! attempt back through the log ([`WebhookOp::Delivered`], [`WebhookOp::Failed`]): a delivered
//! event leaves the queue, a failed one waits an exponential backoff, and both go to the
//! subscription's bounded delivery log. An event is keyed by the revision that raised it and
//! its place among that revision's, so a node that replays entries over a snapshot writes the
//! same records, never a second copy; an index by due time lets the leader find what is due
//! without reading past what waits. The queue is bounded per subscription
//! ([`MAX_QUEUED_PER_SUBSCRIPTION`]: events beyond it are dropped and counted) and an event is
//! given up after [`MAX_ATTEMPTS`] (logged as `dropped`), so a receiver that stays down costs a
//! bounded amount of replicated state. Records are origin-only extras under [`WEBHOOK_PREFIX`].

use meridian_protocol::auth::{Pattern, SYSTEM_APP};
use meridian_protocol::secrets::is_sealed_text;
use meridian_protocol::{Address, Change};
use meridian_store::{Backend, EXTRA_PREFIX, SignedState, StoreError, Write};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apply::{Applied, ApplyError, OriginCore};
use crate::history::WriteMeta;

/// Where webhook records live.
pub const WEBHOOK_PREFIX: [u8; 2] = [EXTRA_PREFIX, b'w'];
/// Most subscriptions.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Most delivery-log entries kept per subscription (the oldest go first).
pub const MAX_LOG_ENTRIES: u64 = 200;
/// First retry delay; it doubles per attempt up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// Longest retry delay.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Attempts after which an event is given up (about a day of retries at the backoff above).
pub const MAX_ATTEMPTS: u32 = 36;
/// Most events waiting per subscription; newer ones are dropped (and counted) beyond it.
pub const MAX_QUEUED_PER_SUBSCRIPTION: u64 = 10_000;

/// The event types a subscription may ask for.
pub const EVENT_TYPES: [&str; 8] = [
    "config.changed",
    "flag.changed",
    "secret.rotated",
    "change.requested",
    "change.approved",
    "change.applied",
    "edge.diverged",
    "edge.lagging",
];

fn key(kind: u8, parts: &[u64]) -> Vec<u8> {
    let mut k = vec![WEBHOOK_PREFIX[0], WEBHOOK_PREFIX[1], kind];
    for p in parts {
        k.extend_from_slice(&p.to_be_bytes());
    }
    k
}

/// The key of subscription `id`.
pub fn subscription_key(id: u64) -> Vec<u8> {
    key(b's', &[id])
}

/// The key of queued event `seq` (the revision that raised it and its place among that
/// revision's events: the same on every node, whatever snapshot or replay it came through).
pub fn event_key(seq: (u64, u64)) -> Vec<u8> {
    key(b'q', &[seq.0, seq.1])
}

/// The key of the due-time index entry of event `seq`, due at `at_ms`.
fn due_key(at_ms: u64, seq: (u64, u64)) -> Vec<u8> {
    key(b'd', &[at_ms, seq.0, seq.1])
}

/// The key of how many events wait for subscription `id`.
fn queued_count_key(id: u64) -> Vec<u8> {
    key(b'c', &[id])
}

/// The key of how many events were dropped for subscription `id` (queue full or given up).
fn dropped_count_key(id: u64) -> Vec<u8> {
    key(b'x', &[id])
}

/// The key of delivery-log entry `n` of subscription `id`.
pub fn log_key(id: u64, n: u64) -> Vec<u8> {
    key(b'l', &[id, n])
}

fn counter_key(name: u8) -> Vec<u8> {
    key(b'n', &[u64::from(name)])
}

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its number.
    pub id: u64,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it wants.
    pub events: Vec<String>,
    /// The keys it wants events about.
    pub resources: Vec<Pattern>,
    /// The signing secret (`whsec_…`).
    pub secret: String,
    /// Who made it.
    pub created_by: String,
    /// When.
    pub created_ms: u64,
}

impl Subscription {
    /// Whether it wants an event of `kind` about `address`.
    pub fn wants(&self, kind: &str, address: &Address) -> bool {
        self.events.iter().any(|e| e == kind)
            && self
                .resources
                .iter()
                .any(|p| p.matches_key(&address.app, &address.env, &address.key))
    }
}

/// An event waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEvent {
    /// Its place in the queue: the revision that raised it, its place among that revision's.
    pub seq: (u64, u64),
    /// The subscription.
    pub subscription: u64,
    /// `webhook-id`: the same on every attempt.
    pub id: String,
    /// The JSON body: `{"type", "timestamp", "data"}`.
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before this time, ms since the Unix epoch.
    pub next_at_ms: u64,
}

/// One line of a subscription's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The event's id.
    pub event: String,
    /// When.
    pub at_ms: u64,
    /// Which attempt.
    pub attempt: u32,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// `delivered`, `failed` or `dropped`.
    pub outcome: String,
    /// Why it failed.
    pub error: Option<String>,
}

/// A step of the webhook machinery, committed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookOp {
    /// Adds a subscription (numbered here).
    Subscribe {
        /// Where.
        url: String,
        /// Which event types.
        events: Vec<String>,
        /// Which keys.
        resources: Vec<Pattern>,
        /// Its signing secret.
        secret: String,
    },
    /// Removes subscription `id` and everything queued for it.
    Unsubscribe {
        /// Which.
        id: u64,
    },
    /// The leader delivered event `seq`.
    Delivered {
        /// Which.
        seq: (u64, u64),
        /// The receiver's status.
        status: u16,
    },
    /// An event about no key (an edge that diverged or lags), raised by the origin node that
    /// noticed it, for every subscription asking for `kind`.
    Emit {
        /// `edge.diverged` or `edge.lagging`.
        kind: String,
        /// The event's data, JSON text (commands are encoded in postcard, which carries no
        /// self-describing values).
        data: String,
    },
    /// The leader's attempt at event `seq` failed.
    Failed {
        /// Which.
        seq: (u64, u64),
        /// The receiver's status, if it answered.
        status: Option<u16>,
        /// Why.
        error: String,
    },
}

/// The delay before retry `attempts` (after that many failures).
pub fn backoff_ms(attempts: u32) -> u64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(32))
        .min(MAX_BACKOFF_MS)
}

/// The event type a change to `change.address` is.
pub fn kind_of(change: &Change) -> &'static str {
    if change.address.is_flag() {
        "flag.changed"
    } else if change.value.as_deref().is_some_and(is_sealed_text) {
        "secret.rotated"
    } else {
        "config.changed"
    }
}

/// The body of an event (Standard Webhooks' `{"type", "timestamp", "data"}`): never a
/// secret's value.
pub fn body(kind: &str, time_ms: u64, data: serde_json::Value) -> String {
    json!({"type": kind, "timestamp_ms": time_ms, "data": data}).to_string()
}

/// The data of a key's change: where, its new version and revision, the version before, who
/// and why; a value only for plain configuration.
pub fn change_data(change: &Change, revision: u64, meta: &WriteMeta) -> serde_json::Value {
    let a = &change.address;
    let value = match kind_of(change) {
        "config.changed" => change
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    };
    json!({
        "app": a.app, "env": a.env, "key": a.key,
        "version": change.version.0, "previous_version": change.version.0.saturating_sub(1),
        "revision": revision, "deleted": change.value.is_none(), "value": value,
        "actor": meta.actor, "reason": meta.reason,
    })
}

/// Every subscription, by number.
pub fn subscriptions<B: Backend>(state: &SignedState<B>) -> Result<Vec<Subscription>, StoreError> {
    let view = state.prefix_view_staged(&key(b's', &[]))?;
    let mut out = Vec::with_capacity(view.keys.len());
    for k in &view.keys {
        if let Some(v) = view.get(k)? {
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|_| StoreError::Invalid("a webhook subscription does not decode"))?,
            );
        }
    }
    Ok(out)
}

fn read_u64<B: Backend>(state: &SignedState<B>, k: &[u8]) -> Result<u64, StoreError> {
    Ok(state
        .get_staged(k)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The writes that queue one event for `subscription` as `seq`, due at `time_ms`.
fn enqueue_one(subscription: u64, body: String, seq: (u64, u64), time_ms: u64) -> [Write; 2] {
    let event = QueuedEvent {
        seq,
        subscription,
        id: format!("evt_{}_{}", seq.0, seq.1),
        body,
        attempts: 0,
        next_at_ms: time_ms,
    };
    [
        (
            event_key(seq),
            Some(serde_json::to_vec(&event).expect("an event encodes")),
        ),
        (due_key(time_ms, seq), Some(Vec::new())),
    ]
}

/// Events raised by a step that makes no revision (a change request's) are numbered from
/// here among the current revision's, by a counter kept with the queue.
const STEP_EVENTS_FROM: u64 = 1 << 32;

/// Up to `limit` queued events due at `now_ms`, soonest due first (what is stored: for the
/// leader). Reads the due-time index, so events backing off are never read.
pub fn due<B: Backend>(
    backend: &B,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<QueuedEvent>, StoreError> {
    let from = key(b'd', &[]);
    let to = key(b'd', &[now_ms.saturating_add(1)]);
    let mut out = Vec::new();
    for (k, _) in backend.range(&from, &to, limit)? {
        let parts: Vec<u64> = k[3..]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let [_, revision, n] = parts[..] else {
            return Err(StoreError::Invalid("a webhook due-index key is malformed"));
        };
        if let Some(v) = backend.get(&event_key((revision, n)))? {
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|_| StoreError::Invalid("a queued webhook event does not decode"))?,
            );
        }
    }
    Ok(out)
}

/// How many events wait for subscription `id`, and how many were dropped (what is stored).
pub fn queue_counts<B: Backend>(backend: &B, id: u64) -> Result<(u64, u64), StoreError> {
    let read = |k: Vec<u8>| -> Result<u64, StoreError> {
        Ok(backend
            .get(&k)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    };
    Ok((read(queued_count_key(id))?, read(dropped_count_key(id))?))
}

/// Whether any address of `changes` is one a subscription wants an event about.
pub fn emits(subscriptions: &[Subscription], changes: &[Change]) -> bool {
    !subscriptions.is_empty()
        && changes.iter().any(|c| {
            c.address.app != SYSTEM_APP
                && subscriptions
                    .iter()
                    .any(|s| s.wants(kind_of(c), &c.address))
        })
}

fn log_entry<B: Backend>(
    state: &SignedState<B>,
    subscription: u64,
    entry: &LogEntry,
) -> Result<Vec<Write>, StoreError> {
    let counter = key(b'm', &[subscription]);
    let n = read_u64(state, &counter)? + 1;
    let mut out = vec![
        (counter, Some(n.to_be_bytes().to_vec())),
        (
            log_key(subscription, n),
            Some(serde_json::to_vec(entry).expect("a log entry encodes")),
        ),
    ];
    if n > MAX_LOG_ENTRIES {
        out.push((log_key(subscription, n - MAX_LOG_ENTRIES), None));
    }
    Ok(out)
}

/// The delivery log of subscription `id`, oldest first (what is stored).
pub fn delivery_log<B: Backend>(backend: &B, id: u64) -> Result<Vec<LogEntry>, StoreError> {
    let from = log_key(id, 0);
    let to = log_key(id, u64::MAX);
    backend
        .range(&from, &to, MAX_LOG_ENTRIES as usize + 1)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v)
                .map_err(|_| StoreError::Invalid("a webhook log entry does not decode"))
        })
        .collect()
}

impl<B: Backend> OriginCore<B> {
    /// The events a revision's `changes` raise for the subscriptions in force, as writes that
    /// queue them (none without metadata: a write replayed without it raises nothing new).
    pub(crate) fn webhook_events(
        &mut self,
        changes: &[Change],
        revision: u64,
        meta: Option<&WriteMeta>,
    ) -> Result<Vec<Write>, ApplyError> {
        let Some(meta) = meta else {
            return Ok(Vec::new());
        };
        let subs = self.webhook_subscriptions()?;
        if !emits(subs, changes) {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        for c in changes.iter().filter(|c| c.address.app != SYSTEM_APP) {
            let kind = kind_of(c);
            for s in subs.iter().filter(|s| s.wants(kind, &c.address)) {
                events.push((
                    s.id,
                    body(kind, meta.time_ms, change_data(c, revision, meta)),
                ));
            }
        }
        Ok(self.queue(events, revision, 0, meta.time_ms)?)
    }

    /// Applies one webhook step (see [`WebhookOp`]).
    pub(crate) fn apply_webhook(
        &mut self,
        op: WebhookOp,
        meta: Option<&WriteMeta>,
        mut extra: Vec<Write>,
    ) -> Result<(Applied, Option<meridian_protocol::SignedDelta>), ApplyError> {
        let actor = meta.map_or("system", |m| m.actor.as_str()).to_owned();
        let now_ms = meta.map_or(0, |m| m.time_ms);
        match op {
            WebhookOp::Subscribe {
                url,
                events,
                resources,
                secret,
            } => {
                if self.webhook_subscriptions()?.len() >= MAX_SUBSCRIPTIONS {
                    return Err(ApplyError::Invalid(format!(
                        "at most {MAX_SUBSCRIPTIONS} webhook subscriptions"
                    )));
                }
                let id = read_u64(self.state(), &counter_key(b's'))? + 1;
                let sub = Subscription {
                    id,
                    url,
                    events,
                    resources,
                    secret,
                    created_by: actor,
                    created_ms: now_ms,
                };
                extra.push((counter_key(b's'), Some(id.to_be_bytes().to_vec())));
                extra.push((
                    subscription_key(id),
                    Some(serde_json::to_vec(&sub).expect("a subscription encodes")),
                ));
                self.forget_webhooks();
                self.state_mut().write_extra(extra)?;
                Ok((self.unchanged(Some(id)), None))
            }
            WebhookOp::Unsubscribe { id } => {
                if self.state().get_staged(&subscription_key(id))?.is_none() {
                    return Err(ApplyError::Invalid(format!("no webhook subscription {id}")));
                }
                extra.push((subscription_key(id), None));
                extra.push((queued_count_key(id), None));
                extra.push((dropped_count_key(id), None));
                let view = self.state().prefix_view_staged(&key(b'q', &[]))?;
                for k in &view.keys {
                    if let Some(v) = view.get(k)?
                        && let Ok(e) = serde_json::from_slice::<QueuedEvent>(&v)
                        && e.subscription == id
                    {
                        extra.push((k.clone(), None));
                        extra.push((due_key(e.next_at_ms, e.seq), None));
                    }
                }
                drop(view);
                self.forget_webhooks();
                self.state_mut().write_extra(extra)?;
                Ok((self.unchanged(Some(id)), None))
            }
            WebhookOp::Delivered { seq, status } => {
                // Reported twice (an old and a new leader): the second finds nothing.
                if let Some(e) = self.queued(seq)? {
                    extra.extend(self.dequeue(&e)?);
                    let entry = LogEntry {
                        event: e.id,
                        at_ms: now_ms,
                        attempt: e.attempts + 1,
                        status: Some(status),
                        outcome: "delivered".into(),
                        error: None,
                    };
                    extra.extend(log_entry(self.state(), e.subscription, &entry)?);
                    self.state_mut().write_extra(extra)?;
                }
                Ok((self.unchanged(None), None))
            }
            WebhookOp::Emit { kind, data } => {
                if let Some(meta) = meta {
                    let events: Vec<(u64, String)> = self
                        .webhook_subscriptions()?
                        .iter()
                        .filter(|s| s.events.contains(&kind))
                        .map(|s| {
                            let data = serde_json::from_str(&data).unwrap_or_default();
                            (s.id, body(&kind, meta.time_ms, data))
                        })
                        .collect();
                    extra.extend(self.step_events(events, meta.time_ms)?);
                    self.state_mut().write_extra(extra)?;
                }
                Ok((self.unchanged(None), None))
            }
            WebhookOp::Failed { seq, status, error } => {
                if let Some(mut e) = self.queued(seq)? {
                    let given_up = e.attempts + 1 >= MAX_ATTEMPTS;
                    if given_up {
                        extra.extend(self.dequeue(&e)?);
                        let dropped = dropped_count_key(e.subscription);
                        let n = read_u64(self.state(), &dropped)? + 1;
                        extra.push((dropped, Some(n.to_be_bytes().to_vec())));
                    } else {
                        extra.push((due_key(e.next_at_ms, seq), None));
                    }
                    e.attempts += 1;
                    e.next_at_ms = now_ms.saturating_add(backoff_ms(e.attempts));
                    let entry = LogEntry {
                        event: e.id.clone(),
                        at_ms: now_ms,
                        attempt: e.attempts,
                        status,
                        outcome: if given_up { "dropped" } else { "failed" }.into(),
                        error: Some(error),
                    };
                    extra.extend(log_entry(self.state(), e.subscription, &entry)?);
                    if !given_up {
                        extra.push((
                            event_key(seq),
                            Some(serde_json::to_vec(&e).expect("an event encodes")),
                        ));
                        extra.push((due_key(e.next_at_ms, seq), Some(Vec::new())));
                    }
                    self.state_mut().write_extra(extra)?;
                }
                Ok((self.unchanged(None), None))
            }
        }
    }

    /// The events of kind `kind` (`change.requested`, `change.approved`, `change.applied`)
    /// that change request `record` raises for the subscriptions covering one of its keys.
    pub(crate) fn change_events(
        &mut self,
        kind: &str,
        record: &crate::changes::ChangeRecord,
        meta: Option<&WriteMeta>,
    ) -> Result<Vec<Write>, ApplyError> {
        let Some(meta) = meta else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = record
            .ops
            .iter()
            .map(|op| op.address().to_string())
            .collect();
        let data = json!({
            "change": record.id, "author": record.author, "reason": record.reason,
            "keys": keys, "actor": meta.actor,
        });
        let events: Vec<(u64, String)> = self
            .webhook_subscriptions()?
            .iter()
            .filter(|s| record.ops.iter().any(|op| s.wants(kind, op.address())))
            .map(|s| (s.id, body(kind, meta.time_ms, data.clone())))
            .collect();
        Ok(self.step_events(events, meta.time_ms)?)
    }

    /// Queues events raised by a step that makes no revision, numbered by the queue's counter
    /// after the current revision's own.
    fn step_events(
        &self,
        events: Vec<(u64, String)>,
        time_ms: u64,
    ) -> Result<Vec<Write>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let counter = counter_key(b'e');
        let used = read_u64(self.state(), &counter)?;
        let n = events.len() as u64;
        let revision = self.state().revision().0;
        let mut out = self.queue(events, revision, STEP_EVENTS_FROM + used, time_ms)?;
        out.push((counter, Some((used + n).to_be_bytes().to_vec())));
        Ok(out)
    }

    /// The writes that queue `events` (subscription, body) raised at `revision`, numbered from
    /// `first` among that revision's, at `time_ms`: each subscription takes at most
    /// [`MAX_QUEUED_PER_SUBSCRIPTION`] waiting events, the others are counted as dropped.
    fn queue(
        &self,
        events: Vec<(u64, String)>,
        revision: u64,
        first: u64,
        time_ms: u64,
    ) -> Result<Vec<Write>, StoreError> {
        let mut counts: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
        let mut out = Vec::new();
        for (n, (subscription, body)) in events.into_iter().enumerate() {
            let (queued, dropped) = match counts.entry(subscription) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert((
                    read_u64(self.state(), &queued_count_key(subscription))?,
                    read_u64(self.state(), &dropped_count_key(subscription))?,
                )),
            };
            if *queued >= MAX_QUEUED_PER_SUBSCRIPTION {
                *dropped += 1;
                continue;
            }
            *queued += 1;
            out.extend(enqueue_one(
                subscription,
                body,
                (revision, first + n as u64),
                time_ms,
            ));
        }
        for (subscription, (queued, dropped)) in counts {
            out.push((
                queued_count_key(subscription),
                Some(queued.to_be_bytes().to_vec()),
            ));
            out.push((
                dropped_count_key(subscription),
                Some(dropped.to_be_bytes().to_vec()),
            ));
        }
        Ok(out)
    }

    /// The writes that take event `e` out of the queue (delivered, given up).
    fn dequeue(&self, e: &QueuedEvent) -> Result<Vec<Write>, StoreError> {
        let count = read_u64(self.state(), &queued_count_key(e.subscription))?;
        Ok(vec![
            (event_key(e.seq), None),
            (due_key(e.next_at_ms, e.seq), None),
            (
                queued_count_key(e.subscription),
                Some(count.saturating_sub(1).to_be_bytes().to_vec()),
            ),
        ])
    }

    fn queued(&self, seq: (u64, u64)) -> Result<Option<QueuedEvent>, StoreError> {
        match self.state().get_staged(&event_key(seq))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Invalid("a queued webhook event does not decode")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_up_to_an_hour() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    }

    mod through_the_core {
        use meridian_protocol::Signer;
        use meridian_store::MemBackend;

        use super::super::*;
        use crate::apply::Command;

        fn core() -> OriginCore<MemBackend> {
            let state = SignedState::open(MemBackend::new(), 100).unwrap();
            OriginCore::new(state, Signer::from_bytes(&[3; 32]))
        }

        fn run(c: &mut OriginCore<MemBackend>, time_ms: u64, command: Command) -> Applied {
            let meta = WriteMeta {
                time_ms,
                actor: "alice#1".into(),
                reason: Some("why".into()),
                ..Default::default()
            };
            let out = c
                .apply_unpublished(command, Some(&meta), Vec::new())
                .unwrap()
                .0;
            c.state_mut().publish().unwrap();
            out
        }

        fn put(key: &str, value: &str) -> Command {
            Command::Put {
                address: Address::parse("pay", "prod", key).unwrap(),
                value: value.into(),
                expect_version: None,
            }
        }

        fn subscribe(c: &mut OriginCore<MemBackend>) -> u64 {
            let op = WebhookOp::Subscribe {
                url: "http://127.0.0.1:9/hook".into(),
                events: vec!["config.changed".into()],
                resources: vec![Pattern::parse("pay/prod/db.*").unwrap()],
                secret: "whsec_x".into(),
            };
            run(c, 1, Command::Webhook(op)).change.unwrap()
        }

        #[test]
        fn a_covered_write_queues_one_event_in_its_revision_and_outcomes_are_logged() {
            let mut c = core();
            let id = subscribe(&mut c);
            run(&mut c, 2, put("timeout", "1"));
            assert!(
                due(c.state().backend(), 10, 10).unwrap().is_empty(),
                "not covered"
            );
            let applied = run(&mut c, 3, put("db.url", "\"pg\""));
            let queued = due(c.state().backend(), 3, 10).unwrap();
            assert_eq!(queued.len(), 1);
            let e = &queued[0];
            assert_eq!(e.subscription, id);
            assert_eq!(e.id, format!("evt_{}_0", applied.revision.0));
            assert_eq!(e.seq, (applied.revision.0, 0));
            let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
            assert_eq!(body["type"], "config.changed");
            assert_eq!(body["data"]["key"], "db.url");
            assert_eq!(body["data"]["value"], "pg");
            assert_eq!(body["data"]["previous_version"], 0);
            assert_eq!(body["data"]["actor"], "alice#1");

            // A failure waits its backoff; a delivery removes it; both are logged.
            let failed = WebhookOp::Failed {
                seq: e.seq,
                status: Some(500),
                error: "500".into(),
            };
            run(&mut c, 100, Command::Webhook(failed));
            assert!(due(c.state().backend(), 100, 10).unwrap().is_empty());
            let again = due(c.state().backend(), 100 + backoff_ms(1), 10).unwrap();
            assert_eq!((again.len(), again[0].attempts), (1, 1));
            let delivered = WebhookOp::Delivered {
                seq: e.seq,
                status: 204,
            };
            run(&mut c, 2_000, Command::Webhook(delivered.clone()));
            // Reported again by a new leader: nothing more.
            run(&mut c, 2_001, Command::Webhook(delivered));
            assert!(due(c.state().backend(), u64::MAX, 10).unwrap().is_empty());
            let log = delivery_log(c.state().backend(), id).unwrap();
            let outcomes: Vec<(&str, u32)> = log
                .iter()
                .map(|l| (l.outcome.as_str(), l.attempt))
                .collect();
            assert_eq!(outcomes, [("failed", 1), ("delivered", 2)]);
        }

        fn fail(c: &mut OriginCore<MemBackend>, time_ms: u64, seq: (u64, u64)) {
            let op = WebhookOp::Failed {
                seq,
                status: None,
                error: "connection refused".into(),
            };
            run(c, time_ms, Command::Webhook(op));
        }

        #[test]
        fn a_receiver_that_stays_down_neither_blocks_others_nor_grows_the_queue_forever() {
            let mut c = core();
            let down = subscribe(&mut c);
            let op = WebhookOp::Subscribe {
                url: "http://127.0.0.1:9/other".into(),
                events: vec!["config.changed".into()],
                resources: vec![Pattern::parse("pay/prod/timeout").unwrap()],
                secret: "whsec_y".into(),
            };
            let up = run(&mut c, 1, Command::Webhook(op)).change.unwrap();
            // Ten events for the receiver that is down, each failed once: backing off.
            for i in 0..10 {
                run(&mut c, 10, put(&format!("db.k{i}"), "1"));
            }
            for e in due(c.state().backend(), 10, 100).unwrap() {
                fail(&mut c, 20, e.seq);
            }
            // One event for the other: the first due, whatever waits before it in the queue.
            run(&mut c, 30, put("timeout", "5"));
            let first = due(c.state().backend(), 30, 1).unwrap();
            assert_eq!(first.len(), 1);
            assert_eq!(first[0].subscription, up);
            assert_eq!(queue_counts(c.state().backend(), down).unwrap(), (10, 0));

            // Given up after MAX_ATTEMPTS: out of the queue, counted and logged as dropped.
            let seq = due(c.state().backend(), u64::MAX, 100)
                .unwrap()
                .iter()
                .find(|e| e.subscription == down)
                .unwrap()
                .seq;
            let mut now = 40;
            for _ in 1..MAX_ATTEMPTS {
                now += MAX_BACKOFF_MS;
                let waiting = due(c.state().backend(), now, 100).unwrap();
                assert!(waiting.iter().any(|e| e.seq == seq));
                fail(&mut c, now, seq);
            }
            assert!(c.queued(seq).unwrap().is_none());
            assert_eq!(queue_counts(c.state().backend(), down).unwrap(), (9, 1));
            let log = delivery_log(c.state().backend(), down).unwrap();
            let last = log.last().unwrap();
            assert_eq!(
                (last.outcome.as_str(), last.attempt),
                ("dropped", MAX_ATTEMPTS)
            );

            // A revision raising more events than a subscription may hold: the rest are
            // dropped and counted. Unsubscribing clears its queue and index.
            let ops = (0..MAX_QUEUED_PER_SUBSCRIPTION)
                .map(|i| {
                    crate::apply::TxnOp::Put(
                        Address::parse("pay", "prod", &format!("db.n{i}")).unwrap(),
                        "1".into(),
                    )
                })
                .collect();
            run(
                &mut c,
                now,
                Command::Txn {
                    conditions: Vec::new(),
                    ops,
                },
            );
            assert_eq!(
                queue_counts(c.state().backend(), down).unwrap(),
                (MAX_QUEUED_PER_SUBSCRIPTION, 10)
            );
            run(
                &mut c,
                now,
                Command::Webhook(WebhookOp::Unsubscribe { id: down }),
            );
            let left = due(c.state().backend(), u64::MAX, 100_000).unwrap();
            assert!(left.iter().all(|e| e.subscription == up), "{}", left.len());
            assert_eq!(queue_counts(c.state().backend(), down).unwrap(), (0, 0));
        }

        #[test]
        fn change_requests_raise_requested_approved_and_applied() {
            use crate::changes::ChangeOp;
            let mut c = core();
            let op = WebhookOp::Subscribe {
                url: "http://127.0.0.1:9/hook".into(),
                events: vec![
                    "change.requested".into(),
                    "change.approved".into(),
                    "change.applied".into(),
                ],
                resources: vec![Pattern::parse("pay/prod/*").unwrap()],
                secret: "whsec_x".into(),
            };
            run(&mut c, 1, Command::Webhook(op));
            let rule = Command::Put {
                address: Address::system(meridian_protocol::auth::PROTECTIONS_ENV, "prod").unwrap(),
                value: r#"{"resources":["pay/prod/*"],"approvals":1}"#.into(),
                expect_version: None,
            };
            run(&mut c, 2, rule);
            let create = ChangeOp::Create {
                reason: "r".into(),
                apply_at_ms: None,
                conditions: Vec::new(),
                ops: vec![crate::apply::TxnOp::Put(
                    Address::parse("pay", "prod", "k").unwrap(),
                    "1".into(),
                )],
            };
            let id = run(&mut c, 3, Command::Change(create)).change.unwrap();
            let approve = ChangeOp::Approve {
                id,
                rules: vec!["prod".into()],
                comment: None,
            };
            let meta = WriteMeta {
                time_ms: 4,
                actor: "bob#2".into(),
                ..Default::default()
            };
            c.apply_unpublished(Command::Change(approve), Some(&meta), Vec::new())
                .unwrap();
            c.state_mut().publish().unwrap();
            let apply = ChangeOp::Apply {
                id,
                break_glass: false,
            };
            run(&mut c, 5, Command::Change(apply));
            let kinds: Vec<String> = due(c.state().backend(), u64::MAX, 100)
                .unwrap()
                .iter()
                .map(|e| {
                    let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
                    v["type"].as_str().unwrap().to_owned()
                })
                .collect();
            assert_eq!(
                kinds,
                ["change.requested", "change.approved", "change.applied"],
                "no config.changed: not subscribed"
            );
        }

        #[test]
        fn edge_events_go_to_subscriptions_asking_for_them() {
            let mut c = core();
            subscribe(&mut c);
            let op = WebhookOp::Subscribe {
                url: "http://127.0.0.1:9/ops".into(),
                events: vec!["edge.lagging".into()],
                resources: vec![Pattern::parse("*/*/*").unwrap()],
                secret: "whsec_y".into(),
            };
            let ops_id = run(&mut c, 1, Command::Webhook(op)).change.unwrap();
            let emit = |kind: &str| {
                Command::Webhook(WebhookOp::Emit {
                    kind: kind.into(),
                    data: serde_json::json!({"edge": "ap-south-1", "lag_ms": 12_000}).to_string(),
                })
            };
            run(&mut c, 2, emit("edge.lagging"));
            run(&mut c, 3, emit("edge.diverged"));
            let queued = due(c.state().backend(), u64::MAX, 10).unwrap();
            assert_eq!(
                queued.len(),
                1,
                "only the subscription asking for edge.lagging"
            );
            assert_eq!(queued[0].subscription, ops_id);
            let body: serde_json::Value = serde_json::from_str(&queued[0].body).unwrap();
            assert_eq!(body["type"], "edge.lagging");
            assert_eq!(body["data"]["edge"], "ap-south-1");
        }

        #[test]
        fn every_node_queues_the_same_events() {
            let commands = |c: &mut OriginCore<MemBackend>| {
                subscribe(c);
                for i in 0..5 {
                    run(c, 10 + i, put("db.pool", &i.to_string()));
                }
                due(c.state().backend(), u64::MAX, 100).unwrap()
            };
            let (mut a, mut b) = (core(), core());
            let (qa, qb) = (commands(&mut a), commands(&mut b));
            assert_eq!(qa.len(), 5);
            assert_eq!(qa, qb);
            // Unsubscribing drops what was queued for it.
            run(
                &mut a,
                20,
                Command::Webhook(WebhookOp::Unsubscribe { id: 1 }),
            );
            assert!(due(a.state().backend(), u64::MAX, 100).unwrap().is_empty());
        }
    }
}
