//! Raft RPC between origin nodes over the private Raft channel: each RPC is a
//! `POST /raft/{append,vote,snapshot}` over HTTPS with mutual TLS (served by [`meridian_net::serve`], dialled by
//! [`meridian_net::peer`]) whose body is the postcard-encoded openraft request and whose answer
//! is the postcard-encoded `Result` the receiving node's Raft returned. A node's address in the
//! membership is its Raft listener's address (`host:port`); the client API never serves these.
//!
//! What a peer sends is checked before Raft sees it: terms and indexes far beyond anything a
//! real cluster reaches are refused (openraft adds to them, and must never wrap), and a snapshot
//! chunk must lie inside the configured snapshot size, so a forged offset allocates nothing.
//!
//! An AppendEntries body also carries the signed heads the sender offers the receiver (see
//! [`super::relay`]): `postcard(AppendBody)`, the request first, so that a node built before
//! offers existed reads the request and ignores the rest, and a bare request is still accepted.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::relay::{Offer, SharedRelay};
use super::{NodeId, TypeConfig};
use meridian_net::peer::{PeerClient, PeerError};

/// The Raft handle the RPC routes deliver to.
pub type Raft = openraft::Raft<TypeConfig>;

/// Largest RPC body a node accepts (a snapshot chunk or a batch of entries).
pub const MAX_RPC_BYTES: usize = 64 << 20;

/// Terms and log indexes at or above this are refused from peers: a real cluster never gets
/// near it (2^62 elections or entries), and openraft computes `term + 1` and `index + 1`.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

/// Dials other origin nodes; one client (and its connection pool) for all of them.
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
    relay: Arc<SharedRelay>,
}

impl Network {
    /// A network whose connections are made with `client`, offering the heads `relay` holds.
    pub fn new(client: PeerClient, relay: Arc<SharedRelay>) -> Self {
        Self { client, relay }
    }
}

/// The body of `POST /raft/append`.
#[derive(Serialize, serde::Deserialize)]
struct AppendBody {
    rpc: AppendEntriesRequest<TypeConfig>,
    /// Signed heads of entries the sender applied, offered to the receiver.
    offers: Vec<Offer>,
}

/// The RPC client for one target node.
pub struct Peer {
    client: PeerClient,
    relay: Arc<SharedRelay>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            relay: self.relay.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// Why an RPC's answer could not be read.
#[derive(Debug, thiserror::Error)]
#[error("undecodable answer: {0}")]
struct RpcError(#[from] postcard::Error);

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            postcard::to_allocvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let bytes = self
            .client
            .post(&self.addr, path, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        let answer: Result<Resp, E> = postcard::from_bytes(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&RpcError::from(e))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = AppendBody {
            rpc,
            offers: self.relay.to_offer(self.target),
        };
        self.call("/raft/append", &body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}

/// The routes that receive Raft RPCs for `raft`; offered heads go to `relay`. A snapshot may
/// total at most `max_snapshot_bytes`.
pub fn routes(raft: Raft, relay: Arc<SharedRelay>, max_snapshot_bytes: u64) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_RPC_BYTES))
        .with_state(Rpc {
            raft,
            relay,
            max_snapshot_bytes,
        })
}

/// What the RPC routes deliver to.
#[derive(Clone)]
struct Rpc {
    raft: Raft,
    relay: Arc<SharedRelay>,
    max_snapshot_bytes: u64,
}

/// A 400 naming why a peer's RPC was refused, counted.
fn refuse(why: impl std::fmt::Display) -> Response {
    metrics::counter!("meridian_origin_raft_rpc_rejected_total").increment(1);
    tracing::warn!(reason = %why, "refused a Raft RPC from a peer");
    (StatusCode::BAD_REQUEST, format!("refused Raft RPC: {why}")).into_response()
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    postcard::from_bytes(body).map_err(|e| refuse(format_args!("malformed: {e}")))
}

/// Refuses a term or index a real cluster cannot have reached.
fn bounded(what: &str, n: u64) -> Result<(), Response> {
    if n >= MAX_TERM_OR_INDEX {
        return Err(refuse(format_args!(
            "{what} {n} is beyond {MAX_TERM_OR_INDEX}"
        )));
    }
    Ok(())
}

fn bounded_vote(vote: &Vote<NodeId>) -> Result<(), Response> {
    bounded("term", vote.leader_id().term)
}

fn bounded_log_id(what: &str, id: Option<&LogId<NodeId>>) -> Result<(), Response> {
    match id {
        Some(id) => {
            bounded("term", id.leader_id.term)?;
            bounded(what, id.index)
        }
        None => Ok(()),
    }
}

fn check_append(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), Response> {
    bounded_vote(&rpc.vote)?;
    bounded_log_id("prev_log_id index", rpc.prev_log_id.as_ref())?;
    bounded_log_id("leader_commit index", rpc.leader_commit.as_ref())?;
    for e in &rpc.entries {
        bounded_log_id("entry index", Some(&e.log_id))?;
    }
    Ok(())
}

fn check_vote(rpc: &VoteRequest<NodeId>) -> Result<(), Response> {
    bounded_vote(&rpc.vote)?;
    bounded_log_id("last_log_id index", rpc.last_log_id.as_ref())
}

/// A chunk must lie inside the largest snapshot this node takes: openraft writes it at its
/// offset in memory, so an offset of 2^44 would otherwise ask for 16 TiB.
fn check_snapshot(
    rpc: &InstallSnapshotRequest<TypeConfig>,
    max_bytes: u64,
) -> Result<(), Response> {
    bounded_vote(&rpc.vote)?;
    bounded_log_id("snapshot index", rpc.meta.last_log_id.as_ref())?;
    let end = rpc.offset.checked_add(rpc.data.len() as u64);
    match end {
        Some(end) if end <= max_bytes => Ok(()),
        _ => Err(refuse(format_args!(
            "snapshot chunk at offset {} of {} bytes ends beyond the {max_bytes}-byte snapshot limit",
            rpc.offset,
            rpc.data.len()
        ))),
    }
}

fn answer<T: Serialize>(result: &T) -> Response {
    match postcard::to_allocvec(result) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// An AppendEntries body: with offers, or (from a node built before offers existed) the bare
/// request. postcard ignores bytes after a value, so such a node also reads ours.
fn decode_append(body: &[u8]) -> Result<AppendBody, Response> {
    postcard::from_bytes::<AppendBody>(body).or_else(|_| {
        decode::<AppendEntriesRequest<TypeConfig>>(body).map(|rpc| AppendBody {
            rpc,
            offers: Vec::new(),
        })
    })
}

async fn append(State(s): State<Rpc>, body: Bytes) -> Response {
    match decode_append(&body) {
        Ok(AppendBody { rpc, offers }) => {
            if let Err(r) = check_append(&rpc) {
                return r;
            }
            // Before the entries reach Raft: the state machine may be waiting for these.
            s.relay.offered(offers);
            answer(&s.raft.append_entries(rpc).await)
        }
        Err(r) => r,
    }
}

async fn vote(State(s): State<Rpc>, body: Bytes) -> Response {
    match decode::<VoteRequest<NodeId>>(&body) {
        Ok(rpc) => match check_vote(&rpc) {
            Ok(()) => answer(&s.raft.vote(rpc).await),
            Err(r) => r,
        },
        Err(r) => r,
    }
}

async fn snapshot(State(s): State<Rpc>, body: Bytes) -> Response {
    match decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(rpc) => match check_snapshot(&rpc, s.max_snapshot_bytes) {
            Ok(()) => answer(&s.raft.install_snapshot(rpc).await),
            Err(r) => r,
        },
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Vote};

    use super::*;

    fn request() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(openraft::LogId::new(CommittedLeaderId::new(2, 1), 7)),
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    /// Whether `rpc` is [`request`] (openraft's request has no `PartialEq`).
    fn same(rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        format!("{rpc:?}") == format!("{:?}", request())
    }

    #[test]
    fn append_bodies_with_and_without_offers_are_read_both_ways() {
        let offers = vec![Offer {
            index: 7,
            heads: Vec::new(),
        }];
        let with = postcard::to_allocvec(&AppendBody {
            rpc: request(),
            offers: offers.clone(),
        })
        .expect("encode");
        let read = decode_append(&with).map_err(|_| "refused").expect("ours");
        assert!(same(&read.rpc) && read.offers == offers);

        // A node without offers sends the bare request, and reads ours as one.
        let bare = postcard::to_allocvec(&request()).expect("encode");
        let read = decode_append(&bare).map_err(|_| "refused").expect("bare");
        assert!(same(&read.rpc) && read.offers.is_empty());
        let old_reader: AppendEntriesRequest<TypeConfig> =
            postcard::from_bytes(&with).expect("an old node reads the request");
        assert!(same(&old_reader));

        assert!(decode_append(&[0xff; 3]).is_err());
    }
}
