//! Typed handles: which link ([`LinkId`]) and which upstream ([`UpstreamId`]) an input or an
//! output is about, so that a link number cannot be passed where an upstream is meant.

use std::fmt;

/// One of a replicator's links: the origin link, or one of its peer links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(u16);

impl LinkId {
    /// The link to an origin node (every replicator has one).
    pub const ORIGIN: LinkId = LinkId(0);

    /// Peer link number `j` (from 0), present only when peers are configured.
    pub const fn peer(j: u16) -> LinkId {
        LinkId(j + 1)
    }

    /// Whether this is a peer link.
    pub const fn is_peer(self) -> bool {
        self.0 > 0
    }

    /// Where the link sits in the replicator's table: the origin link first, then the peer
    /// links in order (also the number a status page shows).
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    pub(super) fn from_index(i: usize) -> LinkId {
        LinkId(u16::try_from(i).expect("at most u16::MAX links"))
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("origin-link"),
            n => write!(f, "peer-link-{}", n - 1),
        }
    }
}

/// An upstream a link can dial: one of the shell's origin addresses, or a peer by its place
/// in the edge's peer order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpstreamId {
    /// Origin address number `n` of the shell's list.
    Origin(usize),
    /// Peer number `n` in the edge's peer order.
    Peer(usize),
}

impl fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamId::Origin(n) => write!(f, "origin-{n}"),
            UpstreamId::Peer(n) => write!(f, "peer-{n}"),
        }
    }
}
