//! The leader's part in progressive delivery: every [`TICK`], the node that leads Raft looks
//! at the rollouts and scheduled changes of every flag set, and commits each one that is due
//! (the next step of a rollout; a scheduled definition, checked again, or deletion). Each
//! commit is conditioned on the version of the record it acted on, so a step proposed twice
//! (by an old and a new leader, or on two ticks) applies once. The plan and its next time are
//! replicated records, so a new leader resumes where the old one stopped.

use std::time::Duration;

use meridian_protocol::flags::rollout::{
    ROLLOUT_PREFIX, Rollout, SCHEDULE_PREFIX, Scheduled, rollout_key,
};
use meridian_protocol::flags::{record_key, validate_flag_key};
use meridian_protocol::{Address, CacheState};
use meridian_store::Reader;
use serde_json::{Value, json};

use meridian_core::apply::{Command, Condition, Proposal, TxnOp};
use meridian_core::history::WriteMeta;

/// How often the leader looks for due steps and changes (the delay after their time).
pub const TICK: Duration = Duration::from_millis(250);

/// A due transition and why.
struct Due {
    command: Command,
    action: &'static str,
    reason: String,
}

fn at(app: &str, env: &str, key: String) -> Address {
    Address {
        app: app.to_owned(),
        env: env.to_owned(),
        key,
    }
}

/// Everything due at `now_ms` in `state`, in namespace and flag order.
fn due(state: &CacheState, namespaces: &[(String, String)], now_ms: u64) -> Vec<Due> {
    let mut out = Vec::new();
    for (app, env) in namespaces {
        let Some(ns) = state.namespace(app, env) else {
            continue;
        };
        for (key, entry) in ns.range(ROLLOUT_PREFIX.to_owned()..) {
            let Some(flag) = key.strip_prefix(ROLLOUT_PREFIX) else {
                break;
            };
            let Some(r) = entry
                .value
                .as_deref()
                .and_then(|t| serde_json::from_str::<Rollout>(t).ok())
                .filter(|r| r.due(now_ms) && validate_flag_key(flag).is_ok())
            else {
                continue;
            };
            let fa = at(app, env, record_key(flag));
            let Some((flag_version, current)) =
                ns.get(&fa.key).filter(|e| !e.is_tombstone()).and_then(|e| {
                    Some((
                        e.version.0,
                        serde_json::from_str::<Value>(e.value.as_deref()?).ok()?,
                    ))
                })
            else {
                continue;
            };
            let (next, definition) = r.advance(&current, now_ms);
            let ra = at(app, env, rollout_key(flag));
            let mut ops = vec![TxnOp::Put(ra.clone(), json!(next).to_string().into())];
            if let Some(d) = definition {
                ops.push(TxnOp::Put(fa.clone(), d.to_string().into()));
            }
            out.push(Due {
                command: Command::Txn {
                    conditions: vec![
                        Condition::VersionEquals(ra, entry.version.0),
                        Condition::VersionEquals(fa, flag_version),
                    ],
                    ops,
                },
                action: "rollout-step",
                reason: format!(
                    "rollout of {flag}: step {} of {}",
                    next.step + 1,
                    next.steps.len()
                ),
            });
        }
        for (key, entry) in ns.range(SCHEDULE_PREFIX.to_owned()..) {
            let Some(flag) = key.strip_prefix(SCHEDULE_PREFIX) else {
                break;
            };
            let Some(s) = entry
                .value
                .as_deref()
                .and_then(|t| serde_json::from_str::<Scheduled>(t).ok())
                .filter(|s| s.at_ms <= now_ms && validate_flag_key(flag).is_ok())
            else {
                continue;
            };
            let sa = at(app, env, key.clone());
            let fa = at(app, env, record_key(flag));
            let mut ops = vec![TxnOp::Delete(sa.clone())];
            let mut reason = s
                .reason
                .clone()
                .unwrap_or_else(|| "scheduled change".into());
            match &s.definition {
                Some(d) => match crate::flagset::with_flag(Some(ns), flag, d.clone()) {
                    Ok(_) => ops.push(TxnOp::Put(fa, d.to_string().into())),
                    // Checked when it was scheduled; the set changed since. Dropped, and the
                    // audit log says why.
                    Err(e) => reason = format!("scheduled change of {flag} refused: {e}"),
                },
                None if ns.get(&fa.key).is_some_and(|e| !e.is_tombstone()) => {
                    ops.push(TxnOp::Delete(fa));
                }
                None => {}
            }
            out.push(Due {
                command: Command::Txn {
                    conditions: vec![Condition::VersionEquals(sa, entry.version.0)],
                    ops,
                },
                action: "scheduled-change",
                reason,
            });
        }
    }
    out
}

/// Runs until shutdown: on the leader, commits what is due every [`TICK`].
pub async fn advance(
    reader: Reader,
    cluster: crate::raft::cluster::Cluster,
    leads: impl Fn() -> bool + Send + 'static,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if !leads() {
            continue;
        }
        let now_ms = meridian_core::history::now_ms();
        let transitions = {
            let p = reader.read().unwrap_or_else(|e| e.into_inner());
            let namespaces: Vec<(String, String)> = p
                .flags
                .iter()
                .map(|(a, e, _)| (a.to_owned(), e.to_owned()))
                .collect();
            due(&p.state, &namespaces, now_ms)
        };
        for t in transitions {
            let proposal = Proposal {
                command: t.command,
                meta: WriteMeta {
                    time_ms: now_ms,
                    actor: "meridian".into(),
                    reason: Some(t.reason),
                    action: Some(t.action.into()),
                    ..Default::default()
                },
            };
            if let Err(e) = cluster.write(proposal).await {
                tracing::debug!(error = %e, "a due flag change was not committed; next tick");
            }
        }
    }
}
