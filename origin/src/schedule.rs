//! The leader's part in scheduled change requests: every [`TICK`], the node that leads Raft
//! asks the apply core which scheduled changes are due and would apply (approved, nothing
//! reviewed has changed) and proposes each. The schedule is replicated with the changes, so a
//! new leader applies what the old one did not; a change proposed twice applies once (the
//! second finds it applied).

use std::time::Duration;

use meridian_core::apply::{Command, Proposal};
use meridian_core::changes::ChangeOp;
use meridian_core::history::WriteMeta;

use crate::raft::state_machine::SharedCore;

/// How often the leader looks for due changes (the delay after their time).
pub const TICK: Duration = Duration::from_millis(250);
/// Most changes proposed per tick.
pub const MAX_DUE_PER_TICK: usize = 16;

/// Applies scheduled changes while this node leads, until `shutdown`.
pub async fn apply_due(
    core: SharedCore,
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
        let due = {
            let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
            match core.due_changes(now_ms, MAX_DUE_PER_TICK) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the scheduled changes");
                    continue;
                }
            }
        };
        for id in due {
            let proposal = Proposal {
                command: Command::Change(ChangeOp::Apply {
                    id,
                    break_glass: false,
                }),
                meta: WriteMeta {
                    time_ms: now_ms,
                    actor: "scheduler".into(),
                    reason: Some(format!("change {id} was scheduled for now")),
                    ..Default::default()
                },
            };
            match cluster.write(proposal).await {
                Ok(outcome) => tracing::info!(
                    change = id,
                    outcome = outcome.code(),
                    "scheduled change applied"
                ),
                Err(e) => {
                    tracing::debug!(error = %e, change = id, "a scheduled change was not committed; next tick")
                }
            }
        }
    }
}
