//! Backups: a consistent, signed snapshot of the cluster's state taken without pausing writes
//! (the Raft snapshot a node builds for a lagging follower: the signed head, every history,
//! schema, audit and change record), and restoring one into an empty data folder so that a
//! fresh cluster starts from it.
//!
//! A backup file is [`MAGIC`], one line of JSON ([`BackupInfo`]), then the snapshot's bytes.
//! Restoring installs the snapshot (its head must verify with this node's signing key, and its
//! entries hash to the head's digest) at the backup's log position, with the members of this
//! node's configuration, and records that log as compacted up to there, so that the new
//! cluster's log, its audit chain and its snapshots go on after the backup's, not below them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, Membership, StoredMembership, Vote};
use serde::{Deserialize, Serialize};

use crate::OriginConfig;
use crate::raft::log_store::LogStore;
use crate::raft::relay::SharedRelay;
use crate::raft::state_machine::StateMachine;
use crate::raft::{SnapshotMeta, StorageError};
use meridian_protocol::Signer;
use meridian_store::DurableDb;

/// The first line of every backup file.
pub const MAGIC: &[u8] = b"meridian-backup v1\n";

/// What a backup holds, written before its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The revision it holds.
    pub revision: u64,
    /// The state digest at that revision (hex).
    pub digest: String,
    /// When it was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The node it was taken at.
    pub node_id: String,
    /// The Raft snapshot's metadata (its log position and membership).
    pub meta: SnapshotMeta,
}

/// Why a backup could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a backup file, or a damaged one.
    #[error("not a Meridian backup: {0}")]
    Format(String),
    /// The data folder already holds a state.
    #[error("{0} already holds a state (revision {1}); restore into an empty data folder")]
    NotEmpty(String, u64),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(String),
    /// The snapshot was refused (a head this cluster's key did not sign, entries that do not
    /// hash to its digest).
    #[error("the snapshot was refused: {0}")]
    Refused(String),
}

impl From<StorageError> for BackupError {
    fn from(e: StorageError) -> Self {
        Self::Store(e.to_string())
    }
}

/// A backup of `sm` (built as for a follower, writes going on meanwhile): the file's bytes.
pub async fn take(sm: &StateMachine, node_id: &str) -> Result<(BackupInfo, Vec<u8>), BackupError> {
    let snapshot = sm.build_backup().await?;
    let bytes = snapshot.snapshot.into_inner();
    let (revision, digest) = crate::raft::state_machine::head_of(&bytes)
        .map(|h| (h.head.revision.0, h.head.digest.to_string()))
        .unwrap_or((0, String::new()));
    let info = BackupInfo {
        revision,
        digest,
        created_ms: meridian_core::history::now_ms(),
        node_id: node_id.to_owned(),
        meta: snapshot.meta,
    };
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(&info).map_err(|e| BackupError::Format(e.to_string()))?);
    out.push(b'\n');
    out.extend(bytes);
    Ok((info, out))
}

/// Splits a backup file into what it says it holds and its snapshot.
pub fn parse(file: &[u8]) -> Result<(BackupInfo, &[u8]), BackupError> {
    let rest = file
        .strip_prefix(MAGIC)
        .ok_or_else(|| BackupError::Format("it does not start with the backup header".into()))?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| BackupError::Format("no description line".into()))?;
    let info: BackupInfo = serde_json::from_slice(&rest[..end])
        .map_err(|e| BackupError::Format(format!("its description: {e}")))?;
    Ok((info, &rest[end + 1..]))
}

/// Restores `file` into the empty data folder of `config`: the node then starts as a cluster
/// of its configured members (this node alone when none are) holding the backup's state.
pub async fn restore(config: &OriginConfig, file: &[u8]) -> Result<BackupInfo, BackupError> {
    let (info, snapshot) = parse(file)?;
    let store = |e: &dyn std::fmt::Display| BackupError::Store(e.to_string());
    meridian_net::private::private_dir(&config.data_dir).map_err(|e| store(&e))?;
    let signer = Signer::new(
        meridian_net::tls::load_signing_key(&config.signing_key).map_err(|e| store(&e))?,
    );
    let db = DurableDb::open(&config.data_dir).map_err(|e| store(&e))?;
    let mut sm = StateMachine::open(&db, signer, config.delta_window, SharedRelay::new())
        .map_err(|e| store(&e))?;
    let mut log = LogStore::open(&db).map_err(|e| store(&e))?;
    let (applied, _) = sm.applied_state().await?;
    let revision = sm
        .core()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .state()
        .revision()
        .0;
    if applied.is_some() || revision > 0 || log.get_log_state().await?.last_log_id.is_some() {
        return Err(BackupError::NotEmpty(
            config.data_dir.display().to_string(),
            revision,
        ));
    }
    let r = &config.raft;
    let members: BTreeMap<u64, BasicNode> = if r.members.is_empty() {
        let advertise = r
            .advertise
            .clone()
            .unwrap_or_else(|| config.raft_listen.to_string());
        BTreeMap::from([(r.id, BasicNode::new(advertise))])
    } else {
        r.members
            .iter()
            .map(|m| (m.id, BasicNode::new(m.addr.clone())))
            .collect()
    };
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let mut meta = info.meta.clone();
    meta.last_membership =
        StoredMembership::new(meta.last_log_id, Membership::new(vec![voters], members));
    sm.install_snapshot(&meta, Box::new(Cursor::new(snapshot.to_vec())))
        .await
        .map_err(|e| BackupError::Refused(e.to_string()))?;
    if let Some(at) = meta.last_log_id {
        // As after a snapshot: the log is compacted up to it, and the next term is later
        // than the backup's.
        log.purge(at).await?;
        log.save_vote(&Vote::new(at.leader_id.term, r.id)).await?;
    }
    sm.core()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .state_mut()
        .flush()
        .map_err(|e| store(&e))?;
    db.sync().map_err(|e| store(&e))?;
    Ok(info)
}
