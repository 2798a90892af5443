//! The optional Redis mirror: keeps a regional Redis holding the edge's state, for services
//! that already read Redis.
//!
//! It owns the mapping and the sync loop. Every live entry is `config:{app}:{env}:{key}` →
//! `{"value","version","revision"}`; each published revision is applied in one MULTI/EXEC
//! (its SETs and DELs, a PUBLISH of each change on `config:updates:{app}:{env}:{key}`, and the
//! marker `meridian:mirror:{edge_id}` set to the revision), so a reader never sees half a
//! revision. The marker is how the mirror notices that Redis restarted or lost data (it is
//! missing or different from what was last written, checked on every connect and every
//! `check_interval_ms`): it then rebuilds the mirror from the edge's state in one transaction,
//! deleting keys the edge does not hold. The loop follows the watch hub's ring of changes,
//! and rebuilds too when it falls out of it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_protocol::{Address, CacheState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::watch::{Filter, Position, Step, WatchEvent, WatchHub};

/// `[redis]` in the edge's configuration. Its `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisMirrorConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// How often the marker is checked for data loss when nothing changes.
    #[serde(default = "default_check_interval_ms")]
    pub check_interval_ms: u64,
}

fn default_check_interval_ms() -> u64 {
    1_000
}

impl std::fmt::Debug for RedisMirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMirrorConfig")
            .field("url", &redacted(&self.url))
            .field("check_interval_ms", &self.check_interval_ms)
            .finish()
    }
}

/// `url` with the password of its user information, if any, replaced by `***`: what logs and
/// errors may show of a Redis URL.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let sep = if scheme.is_empty() { "" } else { "://" };
    format!("{scheme}{sep}{user}:***@{host}{path}")
}

/// The Redis key of an entry.
pub fn entry_key(a: &Address) -> String {
    format!("config:{}:{}:{}", a.app, a.env, a.key)
}

/// The channel a change of `a` is published on.
pub fn channel(a: &Address) -> String {
    format!("config:updates:{}:{}:{}", a.app, a.env, a.key)
}

/// The marker key holding the revision the mirror of `edge_id` last applied.
pub fn marker_key(edge_id: &str) -> String {
    format!("meridian:mirror:{edge_id}")
}

fn entry_json(value: &str, version: u64, revision: u64) -> String {
    format!("{{\"value\":{value},\"version\":{version},\"revision\":{revision}}}")
}

/// One Redis command of a mirror transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET key value`.
    Set(String, String),
    /// `DEL key`.
    Del(String),
    /// `PUBLISH channel message`.
    Publish(String, String),
}

/// The commands that apply one revision's changes (all of them, in order) and move the marker.
pub fn revision_ops(edge_id: &str, changes: &[Arc<WatchEvent>]) -> Vec<Op> {
    let mut ops = Vec::with_capacity(changes.len() * 2 + 1);
    let mut revision = 0;
    for e in changes {
        revision = e.revision;
        // Token and policy records are nobody's configuration.
        if e.address.is_system() || e.address.is_internal() {
            continue;
        }
        let key = entry_key(&e.address);
        match e.value.as_deref() {
            Some(value) => ops.push(Op::Set(key, entry_json(value, e.version, e.revision))),
            None => ops.push(Op::Del(key)),
        }
        ops.push(Op::Publish(channel(&e.address), e.json.to_string()));
    }
    ops.push(Op::Set(marker_key(edge_id), revision.to_string()));
    ops
}

/// The commands that make Redis hold exactly `state`: delete the `existing` mirror keys the
/// state does not hold, set every live entry, move the marker.
pub fn rebuild_ops(edge_id: &str, state: &CacheState, existing: &BTreeSet<String>) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut live = BTreeSet::new();
    for (a, e) in state.iter() {
        let Some(value) = e
            .value
            .as_deref()
            .filter(|_| !a.is_system() && !a.is_internal())
        else {
            continue;
        };
        let key = entry_key(&a);
        ops.push(Op::Set(
            key.clone(),
            entry_json(value, e.version.0, e.revision.0),
        ));
        live.insert(key);
    }
    for k in existing.difference(&live) {
        ops.push(Op::Del(k.clone()));
    }
    ops.push(Op::Set(marker_key(edge_id), state.revision().0.to_string()));
    ops
}

/// Whether Redis must be rebuilt: its marker is not the revision last applied.
pub fn needs_rebuild(marker: Option<u64>, applied: Option<u64>) -> bool {
    applied.is_none() || marker != applied
}

async fn exec(con: &mut redis::aio::MultiplexedConnection, ops: &[Op]) -> redis::RedisResult<()> {
    let mut p = redis::pipe();
    p.atomic();
    for op in ops {
        match op {
            Op::Set(k, v) => p.set(k, v).ignore(),
            Op::Del(k) => p.del(k).ignore(),
            Op::Publish(c, m) => p.publish(c, m).ignore(),
        };
    }
    p.query_async::<()>(con).await
}

async fn marker(
    con: &mut redis::aio::MultiplexedConnection,
    edge_id: &str,
) -> redis::RedisResult<Option<u64>> {
    let v: Option<String> = redis::cmd("GET")
        .arg(marker_key(edge_id))
        .query_async(con)
        .await?;
    Ok(v.and_then(|s| s.parse().ok()))
}

async fn existing_keys(
    con: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("config:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        keys.extend(
            batch
                .into_iter()
                .filter(|k| !k.starts_with("config:updates:")),
        );
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// What the mirror loop did, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MirrorStats {
    /// Revisions applied one by one.
    pub revisions_applied: u64,
    /// Full rebuilds.
    pub rebuilds: u64,
    /// Connection or command failures (each followed by a reconnect).
    pub errors: u64,
}

/// Runs the mirror until `shutdown` turns true.
pub async fn run(
    config: RedisMirrorConfig,
    edge_id: String,
    hub: Arc<WatchHub>,
    stats: Arc<std::sync::Mutex<MirrorStats>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match redis::Client::open(config.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %redacted(&config.url), error = %e, "bad redis url; mirror disabled");
            return;
        }
    };
    let check = Duration::from_millis(config.check_interval_ms.max(10));
    let mut backoff = Duration::from_millis(100);
    // The revision last applied in this process (None: unknown, rebuild on connect).
    let mut applied: Option<u64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            r = session(&client, &edge_id, &hub, &stats, check, &mut applied) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "redis mirror lost its connection; reconnecting");
            if let Ok(mut s) = stats.lock() {
                s.errors += 1;
            }
            metrics::counter!("meridian_edge_redis_mirror_errors_total").increment(1);
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    client: &redis::Client,
    edge_id: &str,
    hub: &Arc<WatchHub>,
    stats: &Arc<std::sync::Mutex<MirrorStats>>,
    check: Duration,
    applied: &mut Option<u64>,
) -> redis::RedisResult<()> {
    let mut con = client.get_multiplexed_async_connection().await?;
    let everything = Filter::everything();
    let mut rx = hub.subscribe();
    let mut at = Position::after(0);
    let mut pending: Vec<Arc<WatchEvent>> = Vec::new();
    let mut must_check = true;
    loop {
        if must_check {
            must_check = false;
            let m = marker(&mut con, edge_id).await?;
            if needs_rebuild(m, *applied) {
                let existing = existing_keys(&mut con).await?;
                let (ops, revision) = {
                    let state = hub.state();
                    let p = state.read().unwrap_or_else(|e| e.into_inner());
                    (
                        rebuild_ops(edge_id, &p.state, &existing),
                        p.state.revision().0,
                    )
                };
                exec(&mut con, &ops).await?;
                *applied = Some(revision);
                at = Position::after(revision);
                pending.clear();
                if let Ok(mut s) = stats.lock() {
                    s.rebuilds += 1;
                }
                metrics::counter!("meridian_edge_redis_mirror_rebuilds_total").increment(1);
                tracing::info!(revision, "redis mirror rebuilt");
            }
        }
        rx.borrow_and_update();
        match hub.step(at, &everything) {
            Step::Resync => {
                *applied = None;
                must_check = true;
                continue;
            }
            Step::Events(events, to) => {
                let had = !events.is_empty();
                for e in events {
                    let last = e.last;
                    pending.push(e);
                    if last {
                        let ops = revision_ops(edge_id, &pending);
                        exec(&mut con, &ops).await?;
                        *applied = pending.last().map(|e| e.revision);
                        pending.clear();
                        if let Ok(mut s) = stats.lock() {
                            s.revisions_applied += 1;
                        }
                    }
                }
                at = to;
                if had {
                    continue;
                }
            }
            Step::Wait => {}
        }
        tokio::select! {
            changed = rx.changed() => { if changed.is_err() { return Ok(()) } }
            _ = tokio::time::sleep(check) => must_check = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_a_redis_url() {
        assert_eq!(
            redacted("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redacted("rediss://app:s3cret@cache:6380"),
            "rediss://app:***@cache:6380"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
        let config = RedisMirrorConfig {
            url: "redis://u:s3cret@h:1/2".into(),
            check_interval_ms: 10,
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }
    use meridian_protocol::{EntryState, Revision, Version};

    #[test]
    fn a_rebuild_sets_live_entries_deletes_strays_and_moves_the_marker() {
        let a = Address::parse("pay", "prod", "db.url").unwrap();
        let gone = Address::parse("pay", "prod", "old").unwrap();
        let state = CacheState::from_entries(
            Revision(7),
            vec![
                (
                    a.clone(),
                    EntryState {
                        version: Version(2),
                        revision: Revision(5),
                        value: Some("\"x\"".into()),
                    },
                ),
                (
                    gone.clone(),
                    EntryState {
                        version: Version(3),
                        revision: Revision(7),
                        value: None,
                    },
                ),
            ],
        );
        let existing = BTreeSet::from([entry_key(&gone), "config:web:prod:z".to_string()]);
        assert_eq!(
            rebuild_ops("e1", &state, &existing),
            vec![
                Op::Set(
                    "config:pay:prod:db.url".into(),
                    r#"{"value":"x","version":2,"revision":5}"#.into()
                ),
                Op::Del("config:pay:prod:old".into()),
                Op::Del("config:web:prod:z".into()),
                Op::Set("meridian:mirror:e1".into(), "7".into()),
            ]
        );
        assert!(needs_rebuild(None, Some(7)));
        assert!(needs_rebuild(Some(6), Some(7)));
        assert!(needs_rebuild(Some(7), None));
        assert!(!needs_rebuild(Some(7), Some(7)));
    }
}
