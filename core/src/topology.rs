//! The peer topology: which peer edges an edge relays from, in which order its peer links try
//! them, and how many of them the links rotate through.
//!
//! Every edge computes its own order from the same directory of edges (the origin's, or the
//! static `peers` of its configuration), so the order is a pure function of the directory and
//! the edge's place in it. The rotation comes first, in the order it is tried: for each step,
//! the same-index edge of the origin's region, a neighbour in the edge's own region, then the
//! same-index edge of every remaining region. Alternating regions means that whichever way the
//! network is cut, a reachable peer is at most one failed dial away. Every other edge follows
//! the rotation: those are dialed only when they offer something newer
//! (`Replicator::handle_peer_holds`).

/// Most rounds of the rotation: each round adds up to one peer per region.
const ROTATION_ROUNDS: usize = 3;

/// One edge of the directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerEntry {
    /// Its id (what its certificate is issued for).
    pub edge_id: String,
    /// Its region.
    pub region: String,
    /// Where it accepts peer connections (`host:port`).
    pub addr: String,
}

/// The peer order of edge `me` in region `my_region`: indexes into `directory` (which lists
/// every edge in one canonical order, this edge included or not), the rotation first, and
/// the length of the rotation. `origin_region` is the region of the origin cluster; its edges
/// come first in each round.
pub fn peer_order(
    me: &str,
    my_region: &str,
    origin_region: &str,
    directory: &[PeerEntry],
) -> (Vec<usize>, usize) {
    // Regions in a fixed order: the origin's, then the others as they first appear.
    let mut regions: Vec<&str> = vec![origin_region];
    for e in directory {
        if !regions.contains(&e.region.as_str()) {
            regions.push(&e.region);
        }
    }
    if !regions.contains(&my_region) {
        regions.push(my_region);
    }
    let members: Vec<Vec<usize>> = regions
        .iter()
        .map(|r| {
            (0..directory.len())
                .filter(|&i| directory[i].region == *r)
                .collect()
        })
        .collect();
    let mine = regions.iter().position(|r| *r == my_region).unwrap_or(0);
    let index = members[mine]
        .iter()
        .position(|&i| directory[i].edge_id == me)
        .unwrap_or(0);
    let largest = members.iter().map(Vec::len).max().unwrap_or(0);
    let mut out: Vec<usize> = Vec::new();
    let mut push = |r: usize, i: usize| {
        let Some(&peer) = members[r].get(i % members[r].len().max(1)) else {
            return;
        };
        if directory[peer].edge_id != me && !out.contains(&peer) {
            out.push(peer);
        }
    };
    for step in 0..largest.min(ROTATION_ROUNDS) {
        if mine != 0 {
            push(0, index + step);
        }
        push(mine, index + 1 + step);
        for r in 1..regions.len() {
            if r != mine {
                push(r, index + step);
            }
        }
    }
    let rotation = out.len();
    for (i, e) in directory.iter().enumerate() {
        if e.edge_id != me && !out.contains(&i) {
            out.push(i);
        }
    }
    (out, rotation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(regions: &[&str], per: usize) -> Vec<PeerEntry> {
        let mut out = Vec::new();
        for (r, region) in regions.iter().enumerate() {
            for i in 0..per {
                let n = 1 + r * per + i;
                out.push(PeerEntry {
                    edge_id: format!("edge-{n}"),
                    region: (*region).into(),
                    addr: format!("10.0.{r}.{i}:4434"),
                });
            }
        }
        out
    }

    #[test]
    fn the_rotation_alternates_regions_and_every_other_edge_follows() {
        let d = directory(&["us-east", "eu-west", "ap-south"], 2);
        // edge-5 is the first of ap-south.
        let (order, rotation) = peer_order("edge-5", "ap-south", "us-east", &d);
        let ids: Vec<&str> = order.iter().map(|&i| d[i].edge_id.as_str()).collect();
        assert_eq!(
            ids[..rotation],
            ["edge-1", "edge-6", "edge-3", "edge-2", "edge-4"]
        );
        assert_eq!(ids.len(), 5, "every other edge, once: {ids:?}");
        assert!(!ids.contains(&"edge-5"));
    }

    #[test]
    fn an_edge_not_yet_in_the_directory_still_gets_every_peer() {
        let d = directory(&["us-east", "eu-west"], 3);
        let (order, rotation) = peer_order("new", "eu-west", "us-east", &d);
        assert_eq!(order.len(), d.len());
        assert!(rotation >= 2);
        // A region of its own, unknown to the directory, counts too.
        let (order, _) = peer_order("lonely", "sa-east", "us-east", &d);
        assert_eq!(order.len(), d.len());
        assert!(peer_order("edge-1", "us-east", "us-east", &[]).0.is_empty());
    }

    #[test]
    fn the_order_depends_only_on_the_directory_and_the_edge() {
        let d = directory(&["us-east", "eu-west", "ap-south"], 4);
        for e in &d {
            let a = peer_order(&e.edge_id, &e.region, "us-east", &d);
            let b = peer_order(&e.edge_id, &e.region, "us-east", &d.clone());
            assert_eq!(a, b);
            let mut seen = a.0.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(
                seen.len(),
                d.len() - 1,
                "{}: no duplicates, not itself",
                e.edge_id
            );
        }
    }
}
