//! A node's view of its cluster for the write and read paths: writes go through Raft on the
//! leader (a follower forwards them, one hop, to the leader it knows), and reads are made
//! linearizable by a read index the leader confirms with a quorum, which a follower then waits
//! to have applied. When no leader is known or no quorum answers, callers get
//! [`ClusterError::NoQuorum`], never a silent loss.
//!
//! Writes are batched: each waits in a bounded queue, and a batcher takes everything queued
//! (up to [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`]) into one Raft entry, with at most
//! [`MAX_BATCHES_IN_FLIGHT`] entries being committed at once. A lone write goes at once; under
//! load, writes that arrive while earlier batches commit share the next entry, its log flush
//! and its round trip. A follower forwards its batch to the leader in one request, and the
//! leader queues it with its own writes, so the writes of every node share one entry: the
//! cluster commits about one entry per commit round trip, whatever node the writes reached.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::network::Raft;
use super::{NodeId, Outcome, Request, Response};
use meridian_core::apply::Proposal;
use meridian_net::peer::{PeerClient, PeerError};

/// Most writes in one Raft entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most value bytes in one Raft entry (a larger single write still goes, alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most entries being committed at once; writes arriving meanwhile wait and share the next.
/// One is the fastest here: every entry costs each node a log flush and an apply call, and with
/// more in flight the same writes spread over more, smaller entries (3-node write harness: 1 →
/// 1,981-2,037 writes/s at 0.80 ms of server CPU per write; 2 → 1,563-1,619 at 0.92-0.95 ms;
/// 4 → about 1,500).
pub const MAX_BATCHES_IN_FLIGHT: usize = 1;
/// Writes waiting for a batch, at most; a full queue holds writers back.
const WRITE_QUEUE: usize = 4096;

/// Why a write or a linearizable read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// No leader is known, or the leader could not confirm it still has a quorum.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The leader this node knows could not be reached.
    #[error("leader unreachable: {0}")]
    Unreachable(String),
    /// The state machine or the Raft node failed.
    #[error("raft: {0}")]
    Internal(String),
}

/// The write and read paths of a node; clones share the write batcher, which stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Cluster {
    inner: Inner,
    queue: mpsc::Sender<Pending>,
}

/// How a follower forwards to the leader, and how long anything may take.
#[derive(Clone)]
struct Inner {
    raft: Raft,
    client: PeerClient,
    timeout: Duration,
    /// This node's value limit, for checking what followers forward.
    max_value_bytes: usize,
}

/// Writes waiting for their batch: one client write, or a batch a follower forwarded (which
/// the leader commits together with its own writes, so that concurrent writes arriving at every
/// node share one entry, one log flush and one round trip).
struct Pending {
    commands: Vec<Proposal>,
    /// Forwarded by a follower: if this node turns out not to be the leader, the follower is
    /// told so rather than the writes being forwarded a second hop.
    forwarded: bool,
    reply: oneshot::Sender<Result<Vec<Outcome>, ClusterError>>,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.commands
            .iter()
            .map(|p| crate::admission::command_bytes(&p.command) + meta_bytes(p))
            .sum()
    }

    fn answer(self, outcomes: Result<Vec<Outcome>, ClusterError>) {
        let _ = self.reply.send(outcomes);
    }
}

impl Cluster {
    /// The cluster of `raft`, forwarding with `client`; each write or read barrier gives up
    /// after `timeout`; writes forwarded by followers must hold values of at most
    /// `max_value_bytes`. Starts the write batcher (call inside a tokio runtime).
    pub fn new(raft: Raft, client: PeerClient, timeout: Duration, max_value_bytes: usize) -> Self {
        let inner = Inner {
            raft,
            client,
            timeout,
            max_value_bytes,
        };
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(batcher(inner.clone(), rx));
        Self { inner, queue }
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Commits `command` (batched with concurrent writes) and answers what applying it
    /// produced. During an election the write waits (within the timeout) for a leader rather
    /// than failing at once.
    pub async fn write(&self, command: Proposal) -> Result<Outcome, ClusterError> {
        let mut outcomes = self.submit(vec![command], false).await?;
        match (outcomes.pop(), outcomes.is_empty()) {
            (Some(outcome), true) => Ok(outcome),
            _ => Err(ClusterError::Internal(
                "one write answered another number of outcomes".into(),
            )),
        }
    }

    /// Queues `commands` for the batcher (they stay together, in order, in one entry) and
    /// answers their outcomes.
    async fn submit(
        &self,
        commands: Vec<Proposal>,
        forwarded: bool,
    ) -> Result<Vec<Outcome>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                commands,
                forwarded,
                reply,
            })
            .await
            .map_err(|_| ClusterError::Internal("the write batcher stopped".into()))?;
        answer
            .await
            .map_err(|_| ClusterError::Internal("the write batcher dropped a write".into()))?
    }

    /// Returns once this node's state machine holds everything committed before the call.
    pub async fn linearize(&self) -> Result<(), ClusterError> {
        self.inner.linearize().await
    }

    /// The leader as this node knows it.
    pub async fn leader(&self) -> Option<NodeId> {
        self.inner.raft.current_leader().await
    }
}

/// Takes every queued write (within the batch limits) into one entry, keeping at most
/// [`MAX_BATCHES_IN_FLIGHT`] entries committing; ends when every sender is gone.
async fn batcher(inner: Inner, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut next: Option<Pending> = None;
    loop {
        // Wait for a slot first: writes arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (mut commands, mut bytes) = (first.commands.len(), first.bytes());
        let mut batch = vec![first];
        while commands < MAX_BATCH_COMMANDS {
            let Ok(p) = rx.try_recv() else { break };
            commands += p.commands.len();
            bytes += p.bytes();
            if bytes > MAX_BATCH_BYTES || commands > MAX_BATCH_COMMANDS {
                next = Some(p);
                break;
            }
            batch.push(p);
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            commit_batch(&inner, batch).await;
            drop(permit);
        });
    }
}

/// Commits `batch` as one entry and answers each of its writers. Writes a follower forwarded
/// are tried here only: if this node is not the leader (any more), their follower is told so.
async fn commit_batch(inner: &Inner, batch: Vec<Pending>) {
    if batch.iter().all(|p| !p.forwarded) {
        let result = inner.write(request_of(&batch)).await;
        answer_all(batch, result);
        return;
    }
    match inner.write_local(request_of(&batch)).await {
        Ok(response) => answer_all(batch, Ok(response)),
        Err(Forward::Failed(e)) => answer_all(batch, Err(e)),
        Err(refused) => {
            let (forwarded, local): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.forwarded);
            let e = match refused {
                Forward::To(_, node, _) => {
                    ClusterError::NoQuorum(format!("leadership moved to {}", node.addr))
                }
                _ => ClusterError::NoQuorum("no leader is known".into()),
            };
            answer_all(forwarded, Err(e));
            if !local.is_empty() {
                let result = inner.write(request_of(&local)).await;
                answer_all(local, result);
            }
        }
    }
}

/// One entry holding every write of `batch`, in order.
fn request_of(batch: &[Pending]) -> Request {
    Request {
        commands: batch
            .iter()
            .flat_map(|p| p.commands.iter().cloned())
            .collect(),
    }
}

/// Hands each writer of `batch` its share of `result` (outcomes are in command order).
fn answer_all(batch: Vec<Pending>, result: Result<Response, ClusterError>) {
    let expected: usize = batch.iter().map(|p| p.commands.len()).sum();
    let mut outcomes = match result {
        Ok(response) if response.outcomes.len() == expected => response.outcomes.into_iter(),
        Ok(response) => {
            let e = ClusterError::Internal(format!(
                "{expected} writes answered {} outcomes",
                response.outcomes.len()
            ));
            return batch.into_iter().for_each(|p| p.answer(Err(e.clone())));
        }
        Err(e) => return batch.into_iter().for_each(|p| p.answer(Err(e.clone()))),
    };
    for p in batch {
        let mine = outcomes.by_ref().take(p.commands.len()).collect();
        p.answer(Ok(mine));
    }
}

/// About how many bytes the history metadata of `p` adds to an entry.
fn meta_bytes(p: &Proposal) -> usize {
    16 + p.meta.actor.len() + p.meta.reason.as_ref().map_or(0, |r| r.len())
}

impl Inner {
    /// Commits the entry `request` and answers what applying it produced.
    async fn write(&self, request: Request) -> Result<Response, ClusterError> {
        let attempt = async {
            loop {
                match self.write_local(request.clone()).await {
                    Ok(response) => return Ok(response),
                    Err(Forward::To(leader, node, request)) => {
                        match self.forward(&node, "/raft/write", &request).await {
                            // The leader this node knows may just have died: wait for the
                            // election to name another, then try again.
                            Err(ClusterError::Unreachable(_)) => {
                                self.await_leader_other_than(leader).await?
                            }
                            other => return other,
                        }
                    }
                    Err(Forward::NoLeader) => self.await_leader().await?,
                    Err(Forward::Failed(e)) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::NoQuorum(format!(
                "not committed within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Waits until this node knows a leader other than `old`.
    async fn await_leader_other_than(&self, old: NodeId) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(self.timeout))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != old),
                "a new leader",
            )
            .await
            .map_err(|e| {
                ClusterError::NoQuorum(format!("leader {old} unreachable, no other elected: {e}"))
            })?;
        Ok(())
    }

    /// Waits until this node knows a leader (an election is under way), then a short pause so
    /// that a leader known by id but not yet by address is not asked in a tight loop.
    async fn await_leader(&self) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(self.timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| ClusterError::NoQuorum(format!("no leader elected: {e}")))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    async fn write_local(&self, request: Request) -> Result<Response, Forward<Request>> {
        match self.raft.client_write(request.clone()).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(forward_or_fail(f, request))
            }
            Err(e) => Err(Forward::Failed(ClusterError::Internal(e.to_string()))),
        }
    }

    /// Returns once this node's state machine holds everything committed before the call.
    async fn linearize(&self) -> Result<(), ClusterError> {
        let attempt = async {
            loop {
                match self.read_index_local().await {
                    Ok(index) => return Ok(index),
                    Err(Forward::To(leader, node, ())) => {
                        match self
                            .forward::<(), Option<u64>>(&node, "/raft/read-index", &())
                            .await
                        {
                            Err(ClusterError::Unreachable(_)) => {
                                self.await_leader_other_than(leader).await?
                            }
                            other => return other,
                        }
                    }
                    Err(Forward::NoLeader) => self.await_leader().await?,
                    Err(Forward::Failed(e)) => return Err(e),
                }
            }
        };
        let read = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ClusterError::NoQuorum(format!(
                    "leadership not confirmed within {} ms",
                    self.timeout.as_millis()
                )));
            }
        };
        if let Some(index) = read {
            self.raft
                .wait(Some(self.timeout))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| ClusterError::NoQuorum(format!("catching up to {index}: {e}")))?;
        }
        Ok(())
    }

    async fn read_index_local(&self) -> Result<Option<u64>, Forward<()>> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map(|l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward_or_fail(f, ()))
            }
            Err(e) => Err(Forward::Failed(ClusterError::NoQuorum(e.to_string()))),
        }
    }

    async fn forward<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: &BasicNode,
        path: &str,
        request: &Req,
    ) -> Result<Resp, ClusterError> {
        let body =
            postcard::to_allocvec(request).map_err(|e| ClusterError::Internal(e.to_string()))?;
        let bytes = self
            .client
            .post(&leader.addr, path, body, self.timeout)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable(_) => ClusterError::Unreachable(format!("leader {e}")),
                _ => ClusterError::NoQuorum(format!("leader {}: {e}", leader.addr)),
            })?;
        postcard::from_bytes::<Result<Resp, ClusterError>>(&bytes)
            .map_err(|e| ClusterError::Internal(format!("leader's answer: {e}")))?
    }
}

enum Forward<T> {
    To(NodeId, BasicNode, T),
    NoLeader,
    Failed(ClusterError),
}

fn forward_or_fail<T>(f: ForwardToLeader<NodeId, BasicNode>, request: T) -> Forward<T> {
    match (f.leader_id, f.leader_node) {
        (Some(id), Some(node)) => Forward::To(id, node, request),
        _ => Forward::NoLeader,
    }
}

/// The routes through which followers forward writes and read barriers to this node. They are
/// served only if this node is the leader (no second hop).
pub fn routes(cluster: Cluster) -> Router {
    Router::new()
        .route("/raft/write", post(forwarded_write))
        .route("/raft/read-index", post(forwarded_read_index))
        // A batch may hold many writes up to the value limit each; the admission check below
        // then holds each to this node's limits.
        .layer(axum::extract::DefaultBodyLimit::max(
            super::network::MAX_RPC_BYTES,
        ))
        .with_state(cluster)
}

fn answer<T: Serialize>(result: &Result<T, ClusterError>) -> HttpResponse {
    match postcard::to_allocvec(result) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn forwarded_write(State(cluster): State<Cluster>, body: Bytes) -> HttpResponse {
    let Ok(mut request) = postcard::from_bytes::<Request>(&body) else {
        return (StatusCode::BAD_REQUEST, "malformed forwarded write").into_response();
    };
    // A peer commits nothing a client could not; a follower checked all of it already, so
    // a refusal here means a peer that is broken or not ours.
    let limit = cluster.inner.max_value_bytes;
    if let Some(e) = request
        .commands
        .iter()
        .find_map(|p| crate::admission::check(p, limit).err())
    {
        metrics::counter!("meridian_origin_raft_rpc_rejected_total").increment(1);
        tracing::warn!(error = %e, "refused a forwarded write");
        return (
            StatusCode::BAD_REQUEST,
            format!("refused forwarded write: {e}"),
        )
            .into_response();
    }
    // The leader's clock dates what it commits, not the forwarding node's.
    let now_ms = meridian_core::history::now_ms();
    for p in &mut request.commands {
        p.meta.time_ms = now_ms;
    }
    // Joins this node's own batch, so that writes from every node share one entry.
    let result = cluster
        .submit(request.commands, true)
        .await
        .map(|outcomes| Response { outcomes });
    answer(&result)
}

async fn forwarded_read_index(State(cluster): State<Cluster>) -> HttpResponse {
    let result = match cluster.inner.read_index_local().await {
        Ok(index) => Ok(index),
        Err(Forward::To(_, node, ())) => Err(ClusterError::NoQuorum(format!(
            "leadership moved to {}",
            node.addr
        ))),
        Err(Forward::NoLeader) => Err(ClusterError::NoQuorum("no leader is known".into())),
        Err(Forward::Failed(e)) => Err(e),
    };
    answer(&result)
}
