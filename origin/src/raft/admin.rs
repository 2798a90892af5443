//! The membership admin API: `GET /v1/cluster` (leader, term, voters, learners, and the
//! replication progress the leader sees; on the client API and the Raft channel),
//! `POST /v1/cluster/nodes` `{"id", "addr"}` (joins a node: first as a learner that catches up,
//! then as a voter), and `DELETE /v1/cluster/nodes/{id}`. Changes are served only on the Raft
//! channel, to holders of an origin certificate, and must be made on the leader; any other node
//! answers `307 Temporary Redirect` to the leader's Raft address, and `503 no_quorum` when it
//! knows no leader. A member's `addr` is its Raft listener's address.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use meridian_net::http::ApiError;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::Deserialize;
use serde_json::json;

use super::NodeId;
use super::network::Raft;

/// The cluster view and the membership changes, for the Raft channel.
pub fn membership_routes(raft: Raft) -> Router {
    Router::new()
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/nodes", axum::routing::post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
        .with_state(raft)
}

/// The cluster as this node sees it, as JSON.
pub fn describe(raft: &Raft) -> serde_json::Value {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: Vec<_> = membership
        .nodes()
        .map(|(id, n)| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            json!({
                "id": id,
                "addr": n.addr,
                "voter": voters.contains(id),
                "matched_index": matched,
            })
        })
        .collect();
    json!({
        "id": m.id,
        "role": format!("{:?}", m.state).to_lowercase(),
        "leader": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "last_applied_index": m.last_applied.map(|l| l.index),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "nodes": nodes,
    })
}

async fn status(State(raft): State<Raft>) -> Response {
    axum::Json(describe(&raft)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNode {
    id: NodeId,
    addr: String,
}

fn refused(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>, path: &str) -> Response {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_node {
            Some(leader) => {
                let mut r = ApiError::new(
                    StatusCode::TEMPORARY_REDIRECT,
                    "not_leader",
                    format!(
                        "membership changes are made on the leader, whose Raft address is {}",
                        leader.addr
                    ),
                )
                .into_response();
                if let Ok(at) =
                    header::HeaderValue::from_str(&format!("https://{}{path}", leader.addr))
                {
                    r.headers_mut().insert(header::LOCATION, at);
                }
                r
            }
            None => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_quorum",
                "no leader is known",
            )
            .into_response(),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ApiError::new(StatusCode::CONFLICT, "membership", c.to_string()).into_response()
        }
        RaftError::Fatal(f) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", f.to_string())
                .into_response()
        }
    }
}

async fn add_node(State(raft): State<Raft>, body: Bytes) -> Response {
    let add: AddNode = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("expected {{\"id\": <number >= 1>, \"addr\": \"host:port\"}}: {e}"),
            )
            .into_response();
        }
    };
    if add.id == 0 || add.addr.is_empty() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "id must be at least 1 and addr must not be empty",
        )
        .into_response();
    }
    // A learner first: it receives the log (or a snapshot) without counting towards the
    // quorum until it has caught up; only then does it become a voter.
    if let Err(e) = raft
        .add_learner(add.id, BasicNode::new(add.addr.clone()), true)
        .await
    {
        return refused(e, "/v1/cluster/nodes");
    }
    let ids = BTreeSet::from([add.id]);
    match raft
        .change_membership(ChangeMembers::AddVoterIds(ids), false)
        .await
    {
        Ok(_) => {
            audit_membership(
                &raft,
                "membership-add",
                format!("node:{}@{}", add.id, add.addr),
            )
            .await;
            axum::Json(describe(&raft)).into_response()
        }
        Err(e) => refused(e, "/v1/cluster/nodes"),
    }
}

/// Records a membership change made on the Raft channel (by a holder of an origin
/// certificate) in the audit log. The change has happened: a failure to record it is logged.
async fn audit_membership(raft: &Raft, action: &str, resource: String) {
    let event = meridian_core::audit::AuditEvent {
        time_ms: meridian_net::auth::now_ms(),
        actor: "origin-certificate".into(),
        action: action.into(),
        resource,
        outcome: "ok".into(),
        ..Default::default()
    };
    let proposal = meridian_core::apply::Proposal {
        command: meridian_core::apply::Command::Audit(vec![event]),
        meta: meridian_core::history::WriteMeta {
            time_ms: meridian_net::auth::now_ms(),
            actor: "audit".into(),
            ..Default::default()
        },
    };
    let request = super::Request {
        commands: vec![proposal],
    };
    if let Err(e) = raft.client_write(request).await {
        tracing::error!(error = %e, action, "a membership change was not recorded in the audit log");
    }
}

async fn remove_node(State(raft): State<Raft>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<NodeId>() else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            format!("node id must be a number, got {id:?}"),
        )
        .into_response();
    };
    let voters: BTreeSet<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    if !voters.contains(&id) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("node {id} is not a voting member"),
        )
        .into_response();
    }
    if voters.len() == 1 {
        return ApiError::new(
            StatusCode::CONFLICT,
            "membership",
            "the last voting member cannot be removed",
        )
        .into_response();
    }
    let path = format!("/v1/cluster/nodes/{id}");
    match raft
        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
        .await
    {
        Ok(_) => {
            audit_membership(&raft, "membership-remove", format!("node:{id}")).await;
            axum::Json(describe(&raft)).into_response()
        }
        Err(e) => refused(e, &path),
    }
}
