//! The directory of edges: where each edge accepts connections from its peers.
//!
//! Each record lives in the system namespace `_meridian/edges`, keyed by edge id, and is
//! committed by the origin when an edge it has authenticated announces its peer address
//! ([`crate::FrameV1::PeerAddress`]). Being signed data like any other, the directory reaches
//! every edge with the revisions themselves, through the origin or through peers.

use serde::{Deserialize, Serialize};

use crate::CacheState;
use crate::auth::SYSTEM_APP;

/// The env of [`SYSTEM_APP`] that holds the directory.
pub const EDGES_ENV: &str = "edges";
/// Longest peer address an edge may announce (`host:port`, a DNS name at most).
pub const MAX_PEER_ADDR_BYTES: usize = 261;
/// Most edges the directory lists; beyond it an edge relays among the first ones.
pub const MAX_DIRECTORY_EDGES: usize = 10_000;

/// One edge of the directory, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRecord {
    /// The edge's region.
    pub region: String,
    /// Where it accepts peer connections, `host:port`.
    pub addr: String,
}

/// Whether `addr` is an address an edge may announce: `host:port` with a port, printable,
/// within [`MAX_PEER_ADDR_BYTES`].
pub fn valid_peer_addr(addr: &str) -> bool {
    addr.len() <= MAX_PEER_ADDR_BYTES
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// Every edge of the directory in `state`, by edge id (records that do not parse are left
/// out), at most [`MAX_DIRECTORY_EDGES`].
pub fn edges(state: &CacheState) -> Vec<(String, EdgeRecord)> {
    let Some(ns) = state.namespace(SYSTEM_APP, EDGES_ENV) else {
        return Vec::new();
    };
    ns.iter()
        .filter_map(|(id, e)| {
            let record = serde_json::from_str(e.value.as_deref()?).ok()?;
            Some((id.clone(), record))
        })
        .take(MAX_DIRECTORY_EDGES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_need_a_host_and_a_port() {
        for ok in [
            "127.0.0.1:4434",
            "[::1]:4434",
            "edge-1.eu-west.internal:4434",
        ] {
            assert!(valid_peer_addr(ok), "{ok}");
        }
        for bad in [
            "",
            "host",
            ":4434",
            "host:0",
            "host:port",
            "a b:1",
            &"h".repeat(300),
        ] {
            assert!(!valid_peer_addr(bad), "{bad}");
        }
    }
}
