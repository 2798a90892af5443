//! A small network emulator for real-process tests: a UDP forwarding proxy in front of each
//! node that delays every datagram by the one-way latency between the sender's region and the
//! node's, and drops those a partition rule blocks. This machine has network namespaces but
//! no netem qdisc, so latency and partitions on the QUIC paths are injected here.
//!
//! A sender is recognised by its source address: an edge dials from the same UDP socket it
//! accepts peers on, so its configured `peer_listen` names it. Datagrams from an unknown
//! source (a test's own client) pass undelayed and are never blocked. Replies travel back
//! through the same proxy with the same delay and the same rule.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Where a node is: its region, and whether it is an origin node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    /// Index into the test's region list.
    pub region: usize,
    /// An origin node (else an edge).
    pub origin: bool,
}

/// Which datagrams are dropped: `block(from, to)` (applied to both directions of a path).
pub type Rule = Arc<dyn Fn(Place, Place) -> bool + Send + Sync>;

/// The emulated network: one-way latencies between regions, the places of known senders,
/// and the partition rule in force.
pub struct Netem {
    one_way_ms: Vec<Vec<u64>>,
    places: RwLock<HashMap<SocketAddr, Place>>,
    rule: RwLock<Rule>,
}

/// Largest UDP datagram forwarded.
const MAX_DATAGRAM: usize = 65_536;

impl Netem {
    /// A network with the one-way latency matrix `one_way_ms` (milliseconds, by region).
    pub fn new(one_way_ms: Vec<Vec<u64>>) -> Arc<Self> {
        Arc::new(Self {
            one_way_ms,
            places: RwLock::new(HashMap::new()),
            rule: RwLock::new(Arc::new(|_, _| false)),
        })
    }

    /// Datagrams from `addr` come from a node at `place`.
    pub fn register(&self, addr: SocketAddr, place: Place) {
        self.places.write().unwrap().insert(addr, place);
    }

    /// Replaces the partition rule.
    pub fn set_rule(&self, rule: impl Fn(Place, Place) -> bool + Send + Sync + 'static) {
        *self.rule.write().unwrap() = Arc::new(rule);
    }

    /// Heals every partition.
    pub fn heal(&self) {
        self.set_rule(|_, _| false);
    }

    /// The delay of a datagram between `a` and `b`, or `None` if it is dropped.
    fn path(&self, from: Option<Place>, to: Place) -> Option<Duration> {
        let Some(from) = from else {
            return Some(Duration::ZERO);
        };
        let rule = self.rule.read().unwrap().clone();
        if rule(from, to) || rule(to, from) {
            return None;
        }
        Some(Duration::from_millis(
            self.one_way_ms[from.region][to.region],
        ))
    }

    /// Starts a proxy for the node at `target` (at `place`); its address, which the others
    /// are given instead of the node's.
    pub async fn proxy(self: &Arc<Self>, target: SocketAddr, place: Place) -> SocketAddr {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = listen.local_addr().unwrap();
        let net = self.clone();
        tokio::spawn(async move {
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, src)) = listen.recv_from(&mut buf).await {
                let from = net.places.read().unwrap().get(&src).copied();
                let upstream = match clients.get(&src) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        if u.connect(target).await.is_err() {
                            continue;
                        }
                        tokio::spawn(replies(
                            net.clone(),
                            u.clone(),
                            listen.clone(),
                            src,
                            from,
                            place,
                        ));
                        clients.insert(src, u.clone());
                        u
                    }
                };
                let Some(delay) = net.path(from, place) else {
                    continue;
                };
                let data = buf[..n].to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = upstream.send(&data).await;
                });
            }
        });
        addr
    }
}

/// Carries what the node answers back to the sender at `src`.
async fn replies(
    net: Arc<Netem>,
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    src: SocketAddr,
    from: Option<Place>,
    place: Place,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok(n) = upstream.recv(&mut buf).await {
        let Some(delay) = net.path(from, place) else {
            continue;
        };
        let data = buf[..n].to_vec();
        let listen = listen.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = listen.send_to(&data, src).await;
        });
    }
}
