//! What an origin node does when its data folder runs out of room.
//!
//! A node whose filesystem has less free than `storage.min_free_bytes` refuses every write it
//! is asked for with 507 `insufficient_storage` (before anything is proposed), and leaves the
//! Raft quorum to the others: it shuts its Raft down, so that a leader hands over at once (the
//! others elect a new one after their election timeout) and a follower never fails half-way
//! through appending. The rest of the node keeps answering (status, metrics, reads of what it
//! has); it rejoins when restarted after space is freed, catching up from the leader like any
//! node that was down.

use std::time::Duration;

use axum::http::StatusCode;
use meridian_net::http::ApiError;
use meridian_store::{DiskFull, SpaceGuard};
use tokio::sync::watch;

use crate::raft::network::Raft;

/// How often the data folder's free space is looked at.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// 507 `insufficient_storage`, naming the folder, what is free and the reserve.
pub fn insufficient_storage(e: DiskFull) -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "insufficient_storage",
        format!("this node cannot take writes: {e}"),
    )
}

/// Looks at the free space every [`CHECK_EVERY`] until shutdown, exporting
/// `meridian_disk_free_bytes` and `meridian_disk_full`; the first time the reserve is crossed,
/// says so at ERROR and shuts Raft down (see the module docs).
pub async fn watch_space(guard: SpaceGuard, raft: Raft, mut shutdown: watch::Receiver<bool>) {
    let mut left_quorum = false;
    loop {
        let checked = guard.check();
        metrics::gauge!("meridian_disk_free_bytes").set(guard.free_bytes_seen() as f64);
        metrics::gauge!("meridian_disk_full").set(if checked.is_err() { 1.0 } else { 0.0 });
        if let Err(e) = checked
            && !left_quorum
        {
            left_quorum = true;
            tracing::error!(
                error = %e,
                "disk full: this node refuses writes and leaves the Raft quorum to the others; \
                 free space, then restart it"
            );
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "stopping Raft");
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
