//! The first admin token of a new cluster: the token of `[auth] bootstrap_token_file` is
//! accepted as an admin by this node until its record is in the replicated state, and this node
//! proposes that record (only the first proposal of any node commits: it must find no record).
//! After that the replicated record governs it like any token, revocation included.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_net::auth::now_ms;
use meridian_protocol::auth::{AuthIndex, GrantBody, Pattern, Role, TokenId, TokenRecord};
use meridian_store::Reader;
use tokio::sync::watch;

use crate::raft::Outcome;
use crate::raft::cluster::Cluster;
use meridian_core::apply::{Command, Proposal};
use meridian_core::history::WriteMeta;

/// The name the bootstrap token's record carries.
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";

/// The index of the published state, with the bootstrap token added while the state holds no
/// record of it.
pub fn index_source(
    reader: Reader,
    bootstrap: Option<[u8; 32]>,
) -> meridian_net::auth::IndexSource {
    let merged: Mutex<Option<(Arc<AuthIndex>, Arc<AuthIndex>)>> = Mutex::new(None);
    Arc::new(move || {
        let base = reader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .auth
            .clone();
        let Some(hash) = bootstrap.filter(|h| !base.has_record(TokenId::of(h))) else {
            return base;
        };
        let mut cache = merged.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, m)) = &*cache
            && Arc::ptr_eq(b, &base)
        {
            return m.clone();
        }
        let mut with = (*base).clone();
        with.add_bootstrap(hash, BOOTSTRAP_NAME);
        let with = Arc::new(with);
        *cache = Some((base, with.clone()));
        with
    })
}

fn record(hash: &[u8; 32]) -> TokenRecord {
    TokenRecord {
        hash: hex::encode(hash),
        name: BOOTSTRAP_NAME.into(),
        owner: "bootstrap".into(),
        created_ms: now_ms(),
        expires_ms: None,
        groups: Vec::new(),
        grants: vec![GrantBody {
            role: Some(Role::Admin),
            actions: Vec::new(),
            resources: vec![Pattern::everything()],
        }],
    }
}

/// Proposes the bootstrap token's record until the state holds a record of it (committed by
/// this node or another), retrying while there is no quorum; stops at shutdown.
pub async fn commit_record(
    cluster: Cluster,
    reader: Reader,
    hash: [u8; 32],
    mut shutdown: watch::Receiver<bool>,
) {
    let id = TokenId::of(&hash);
    let recorded = || {
        reader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .auth
            .has_record(id)
    };
    let mut delay = Duration::from_millis(50);
    while !recorded() && !*shutdown.borrow() {
        let Ok(value) = serde_json::to_string(&record(&hash)) else {
            return;
        };
        let proposal = Proposal {
            command: Command::Put {
                address: crate::http::tokens::token_address(id),
                value: value.into(),
                expect_version: Some(0),
            },
            meta: WriteMeta {
                time_ms: now_ms(),
                actor: "bootstrap".into(),
                reason: Some(format!("bootstrap admin token {id}")),
                ..Default::default()
            },
        };
        match cluster.write(proposal).await {
            Ok(Outcome::Applied(_)) => {
                tracing::info!(token = %id, "bootstrap admin token recorded");
                return;
            }
            // Another node's proposal won: the record exists.
            Ok(Outcome::VersionConflict { .. }) => return,
            Ok(other) => {
                tracing::error!(?other, "the bootstrap token's record was refused");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "bootstrap token not recorded yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
