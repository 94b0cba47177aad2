//! One swarm node (publisher, relay or viewer) as a sans-IO state machine.
//!
//! API FIXED; behaviour in progress.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rill_transport::Class;

use crate::chunk::{ChannelId, Chunk};
use crate::message::{Message, PeerInfo};
use crate::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The channel's source: root of every stripe tree.
    Publisher,
    /// Always-on, high-capacity forwarder: interior in every stripe, near the roots.
    Relay,
    /// Watches the channel, forwards in its home stripe.
    Viewer,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Stripes (push trees) the stream is split into.
    pub stripes: u8,
    /// The stream's bitrate, kbit/s (sizes the number of children a node can feed).
    pub stream_kbps: u32,
    /// Upload this node offers, kbit/s.
    pub upload_kbps: u32,
    /// Mesh neighbours to keep.
    pub mesh_size: usize,
    /// Nominal duration of one chunk (the publisher's chunking), for timers.
    pub chunk_duration: Duration,
}

/// Something for the application (or simulator) to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A chunk verified and held for the first time, `hops` overlay hops from the
    /// publisher, received from `from`.
    Chunk { seq: u64, ingest_us: u64, keyframe: bool, hops: u8, from: NodeId },
    /// `from` sent a chunk that failed verification; it was dropped and the peer banned.
    ForgedChunk { from: NodeId },
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: PeerInfo,
    pub message: Message,
    /// The transport class to send it in.
    pub class: Class,
}

/// Counters (names follow shared/METRICS.md where one applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub chunks_received: u64,
    /// Chunk payload bytes received that we already had (duplicate ratio numerator).
    pub duplicate_payload_bytes: u64,
    /// Chunk payload bytes received that were new (duplicate ratio denominator).
    pub useful_payload_bytes: u64,
    pub forged_chunks: u64,
    pub reparents: u64,
    pub pulls_sent: u64,
    pub pulls_served: u64,
}

/// Verifies chunk signatures. The default verifies every chunk with Ed25519; a simulator
/// may share one memoizing verifier among its nodes (same bytes, same answer).
pub trait Verify: std::fmt::Debug {
    fn verify(&mut self, channel: &ChannelId, chunk: &Chunk) -> bool;
}

#[derive(Debug)]
pub struct Node {
    me: PeerInfo,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        _config: NodeConfig,
        me: PeerInfo,
        _role: Role,
        _channel: ChannelId,
        _bootstrap: Vec<PeerInfo>,
        _now: Instant,
        _seed: u64,
        _verifier: Box<dyn Verify>,
    ) -> Node {
        Node { me, transmits: VecDeque::new(), events: VecDeque::new(), stats: NodeStats::default() }
    }

    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// Publisher: a new chunk, already signed.
    pub fn publish(&mut self, _now: Instant, _chunk: Chunk) {}

    pub fn handle_message(&mut self, _now: Instant, _from: NodeId, _message: Message) {}

    /// The transport gave up on `peer` (session closed or unreachable).
    pub fn handle_peer_lost(&mut self, _now: Instant, _peer: NodeId) {}

    pub fn handle_timeout(&mut self, _now: Instant) {}

    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Leave gracefully: tell neighbours, children and parents.
    pub fn leave(&mut self, _now: Instant) {}

    pub fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
