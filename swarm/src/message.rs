//! What swarm nodes say to each other.
//!
//! TYPES FIXED; implementation in progress (helper): encoding, decoding, sizes.

use std::net::SocketAddr;

use crate::chunk::Chunk;
use crate::NodeId;

/// A node as others learn of it (peer exchange, redirects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Upload capacity the node offers to the swarm (measured or configured), kbit/s.
    pub upload_kbps: u32,
    /// An always-on relay (placed near the roots of the trees).
    pub relay: bool,
}

/// Availability summary: the newest chunk held and which of the `HAVE_WINDOW` chunks
/// before it are held (bit i = seq `latest - 1 - i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Have {
    pub latest: u64,
    pub recent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First words to a bootstrap or newly learned peer: who I am. Answered with `Peers`.
    Hello { info: PeerInfo },
    /// Peer exchange: some peers the sender knows (bounded by `MAX_PEERS_PER_MESSAGE`).
    Peers { peers: Vec<PeerInfo> },
    /// "Be my parent in this stripe."
    Subscribe { stripe: u8 },
    /// The receiver is now a child of the sender in `stripe`.
    Accept { stripe: u8 },
    /// The sender has no room in `stripe`: try these instead (its children with room,
    /// best first; bounded by `MAX_PEERS_PER_MESSAGE`).
    Redirect { stripe: u8, candidates: Vec<PeerInfo> },
    /// The sender is no longer the receiver's child (or parent) in `stripe`.
    Unsubscribe { stripe: u8 },
    /// Mesh availability summary.
    Have(Have),
    /// Mesh pull: send me these chunks (bounded by `MAX_REQUEST`).
    Request { seqs: Vec<u64> },
    /// A chunk, with the number of overlay hops it has taken so far (not signed: it is a
    /// measurement, and a liar only misleads its own subtree's statistics).
    Chunk { hops: u8, chunk: Chunk },
    /// The sender is leaving the swarm.
    Leave,
}

/// Peers in one `Peers` or `Redirect` message.
pub const MAX_PEERS_PER_MESSAGE: usize = 16;
/// Sequence numbers in one `Request`.
pub const MAX_REQUEST: usize = 32;
/// Chunks an availability summary covers.
pub const HAVE_WINDOW: u64 = 64;
