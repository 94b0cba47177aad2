//! One live node over real UDP: the swarm state machine (`rill_swarm::node::Node`), the
//! transport endpoint (`rill_transport::Endpoint`) and its UDP driver, in one task.
//!
//! This file only translates between them; neither protocol's logic lives here:
//! - swarm `Transmit`s go to the peer's session (opened with Noise IK to the node id the
//!   swarm names, so only that node can answer), one transport message per swarm message,
//!   in the swarm's class and with its deadline;
//! - transport messages are decoded and handed to the swarm as from the session's
//!   authenticated node id (never from an id a message claims);
//! - a session that closes makes the peer lost to the swarm unless another session to the
//!   same node remains;
//! - verified chunks the swarm reports go to the application (a viewer's playout) through
//!   a bounded channel; a publisher's signed chunks come in through another.
//!
//! Clock: chunk `ingest_us` is UNIX time in µs (see [`unix_now_us`]), so arrival lag is the
//! same figure on one machine (and, with synchronised clocks, across machines) as
//! shared/METRICS.md defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use rill_swarm::chunk::{ChannelId, Chunk, Ed25519Verifier};
use rill_swarm::message::{Message, PeerInfo};
use rill_swarm::node::{Node, NodeConfig, NodeEvent, NodeStats, Role};
use rill_swarm::NodeId;
use rill_transport::crypto::handshake::Psk;
use rill_transport::crypto::identity::NodeKey;
use rill_transport::driver::{SocketOptions, StepOutcome, UdpDriver};
use rill_transport::EndpointConfig;
use rill_transport::{Endpoint, Event, SendOptions, SessionId};
use tokio::sync::{mpsc, watch};

use rill_viewer::LagHistogram;

/// Chunks queued from the node to the application (a viewer's playout). 1024 chunks are
/// 25 s of stream at 25 ms chunks: the playout task drains it far faster than that, so a
/// full channel means the application is stuck; chunks beyond are dropped and counted.
pub const OUTPUT_QUEUE_CHUNKS: usize = 1024;

/// How often the node publishes its figures for status lines and `/metrics`.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// After a shutdown request, how long queued messages (a `Leave` to every neighbour) get
/// to leave before the socket closes.
const LINGER: Duration = Duration::from_millis(300);

/// µs since the UNIX epoch: the clock of chunk ingest timestamps. On one machine all nodes
/// read the same clock; across machines it is as good as their time synchronisation.
pub fn unix_now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub role: Role,
    /// UDP address to bind (port 0: any free port).
    pub listen: SocketAddr,
    /// Address other nodes reach us at, if not the bound one (e.g. bound to 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    pub node_key: Arc<NodeKey>,
    pub channel: ChannelId,
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
    pub stripes: u8,
    pub stream_kbps: u32,
    pub upload_kbps: u32,
    pub psk: Option<[u8; 32]>,
    /// Seeds the swarm's and the endpoint's RNGs (randomness is injected, as in the sim).
    pub seed: u64,
}

/// Stripes' chunk duration the swarm's timers assume when nothing better is known (the
/// publisher's chunker closes chunks at 25 ms by default).
pub const CHUNK_DURATION: Duration = Duration::from_millis(25);

/// Mesh neighbours (HyParView's active view: log(N) + c, about 5–8 for thousands of nodes).
pub const MESH_SIZE: usize = 8;

/// Share of the stated upload the swarm plans chunk payload in (its children, its pull
/// serving: `NodeConfig::upload_kbps`). The rest is what the wire adds to each payload
/// byte: packet, UDP and IP headers, AEAD tags, acks, summaries, retransmissions,
/// duplicates. In `rill testbed swarm --nodes 30` the nodes sent 1.15-1.26 bytes per
/// useful byte (`overhead_ratio`), and planning on the whole stated upload kept the weak
/// viewers' uplinks full: their router queues dropped ~600 packets a run. Over 32 runs
/// (`--duration 8 --runs 16`, seeds 41-56 and 57-72; joins over 1 s / `start_restarts` /
/// `lost_chunks` / runs with p99 arrival lag within 500 ms of the path / shaper drops):
/// the whole upload 120 / 91 / 165 / 7 / 19,188; 0.9 of it 107 / 80 / 95 / 22 / 14,610;
/// 0.85 90 / 80 / 129 / 30 / 11,412; 0.8 (seeds 57-72 only) 84 / 59 / 131 / 12 of 16,
/// against 58 / 45 / 79 / 3 of 16 with the whole upload. `rill sim` counts payload only
/// and plans on the whole figure.
pub const PAYLOAD_SHARE_OF_UPLOAD: f64 = 0.85;

/// The upload the swarm plans with, from the stated one (see [`PAYLOAD_SHARE_OF_UPLOAD`]).
pub fn payload_upload_kbps(stated_kbps: u32) -> u32 {
    (f64::from(stated_kbps) * PAYLOAD_SHARE_OF_UPLOAD) as u32
}

/// Senders told apart in [`NodeSnapshot::chunks_from`]: a node's parents and pull sources
/// over a run are a few dozen even under churn, so 64 covers them and bounds the map.
pub const CHUNKS_FROM_PEERS: usize = 64;

/// Figures of a running node, refreshed every [`SNAPSHOT_INTERVAL`]. Names follow
/// shared/METRICS.md.
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    pub node_id: String,
    pub local_addr: Option<SocketAddr>,
    /// Authenticated sessions.
    pub peers: usize,
    pub mesh_peers: usize,
    /// Stripes with a tree parent, and stripes in all.
    pub parents: usize,
    pub stripes: usize,
    pub children: usize,
    /// From the node's start until it first had a parent in every stripe (a viewer's
    /// tree search; the rest of its startup is its parents' sending).
    pub tree_joined: Option<Duration>,
    pub swarm: NodeStats,
    /// Arrival lag, µs, of each chunk ingested at or after this node's startup (when it
    /// first held a keyframe chunk): the (viewer, chunk) pairs METRICS.md and `rill sim`
    /// count. The backlog a joining node is handed first (fast join starts it at the
    /// current keyframe group, up to a group old) is what startup delay measures.
    pub arrival_lag: LagHistogram,
    /// UNIX µs of startup (the first keyframe chunk held).
    pub started_us: Option<u64>,
    /// New chunks received, the join backlog included.
    pub chunks_received: u64,
    /// Hops summed over `chunks_received`.
    pub hop_count_sum: u64,
    /// New chunks by the peer that delivered them (who feeds this node). Bound: the first
    /// [`CHUNKS_FROM_PEERS`] senders; chunks from any later one count in
    /// `chunks_from_others`.
    pub chunks_from: BTreeMap<NodeId, u64>,
    pub chunks_from_others: u64,
    pub chunks_published: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_syscalls: u64,
    /// Datagrams that left as segments of GSO messages, and those messages: the kernel
    /// handled `datagrams_sent - gso_segments + gso_messages` messages in all.
    pub gso_segments: u64,
    pub gso_messages: u64,
    pub recv_syscalls: u64,
    /// Swarm messages that did not decode (the session that sent one is closed).
    pub malformed_messages: u64,
    /// Swarm messages the transport could not queue (send buffer full, session gone).
    pub send_failures: u64,
    /// Verified chunks the application did not take in time (output queue full).
    pub output_dropped: u64,
    /// Transport handshake failures (wrong psk, wrong node key, forged packets).
    pub handshake_failures: u64,
    pub auth_failures: u64,
    /// Over the sessions open now: bytes queued to send and not yet acknowledged (a
    /// standing send queue is lag no network probe sees), packets declared lost and bytes
    /// retransmitted.
    pub send_queue_bytes: u64,
    pub packets_lost: u64,
    pub retransmitted_bytes: u64,
    pub uptime: Duration,
    /// CPU time of the thread running the node task (meaningful when the task has a
    /// thread of its own, as in `rill bench relay`).
    pub thread_cpu: Duration,
    /// The user-space part of `thread_cpu`.
    pub thread_cpu_user: Duration,
}

/// A node's task. Build with [`LiveNode::bind`], then [`LiveNode::run`].
#[derive(Debug)]
pub struct LiveNode {
    endpoint: Endpoint,
    driver: UdpDriver,
    swarm: Node,
    local_addr: SocketAddr,
    /// The session each peer is reached on. A peer may have more than one session for a
    /// while (both opened at once on different addresses); `by_session` knows all of them.
    by_node: BTreeMap<NodeId, SessionId>,
    by_session: BTreeMap<SessionId, NodeId>,
    /// Sessions whose handshake completed (the rest are still connecting).
    established: BTreeSet<SessionId>,
    snapshot: NodeSnapshot,
    started: Instant,
    /// The chunk message encoded last, and its bytes. A relay forwards each chunk to all
    /// its children in a row: encoding it once and sharing the bytes saves a copy and an
    /// allocation of the chunk per child (memcpy and malloc/free were ~5% of a 16-child
    /// relay's thread, measured with perf).
    last_chunk: Option<(EncodedChunk, Bytes)>,
}

/// What makes two chunk messages encode alike: every field `Message::encode` writes.
/// The payload is held (a reference count), so equal pointers mean equal bytes: the
/// allocation cannot be freed and reused for another payload while we hold it.
#[derive(Debug)]
struct EncodedChunk {
    hops: u8,
    seq: u64,
    ingest_us: u64,
    keyframe: bool,
    stripe: u8,
    stripes: u8,
    signature: [u8; 64],
    payload: Bytes,
}

impl EncodedChunk {
    fn new(hops: u8, chunk: &Chunk) -> Self {
        EncodedChunk {
            hops,
            seq: chunk.seq,
            ingest_us: chunk.ingest_us,
            keyframe: chunk.keyframe,
            stripe: chunk.stripe,
            stripes: chunk.stripes,
            signature: chunk.signature,
            payload: chunk.payload.clone(),
        }
    }

    fn matches(&self, hops: u8, chunk: &Chunk) -> bool {
        self.hops == hops
            && self.seq == chunk.seq
            && self.ingest_us == chunk.ingest_us
            && self.keyframe == chunk.keyframe
            && self.stripe == chunk.stripe
            && self.stripes == chunk.stripes
            && self.signature == chunk.signature
            && self.payload.as_ptr() == chunk.payload.as_ptr()
            && self.payload.len() == chunk.payload.len()
    }
}

/// Why `run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested.
    Shutdown,
    /// The publisher's input ended (and the node lingered for peers to fetch the tail).
    InputEnded,
}

impl LiveNode {
    /// Bind the UDP socket and set up the node. Must run inside a tokio runtime.
    pub fn bind(opts: &NodeOptions) -> Result<LiveNode> {
        let driver = UdpDriver::bind(opts.listen, &SocketOptions::default())
            .with_context(|| format!("cannot listen on udp {}", opts.listen))?;
        let bound = driver.local_addr()?;
        let local_addr = opts.advertise.unwrap_or_else(|| advertised_addr(bound));
        let now = Instant::now();
        let config = EndpointConfig {
            node_key: Some(opts.node_key.clone()),
            psk: opts.psk.map(Psk::new),
            // The capacity the swarm plans the node's children by: Background (repairs,
            // fast-join groups) may use what the node leaves of it.
            uplink_kbps: Some(opts.upload_kbps),
            ..EndpointConfig::default()
        };
        let endpoint = Endpoint::new(config, now, opts.seed);
        let me = PeerInfo {
            id: opts.node_key.id(),
            addr: local_addr,
            upload_kbps: opts.upload_kbps,
            relay: opts.role != Role::Viewer,
        };
        let bootstrap = opts
            .bootstrap
            .iter()
            .map(|&(id, addr)| PeerInfo { id, addr, upload_kbps: 0, relay: true })
            .collect();
        let config = NodeConfig {
            stripes: opts.stripes,
            stream_kbps: opts.stream_kbps,
            upload_kbps: payload_upload_kbps(opts.upload_kbps),
            mesh_size: MESH_SIZE,
            chunk_duration: CHUNK_DURATION,
        };
        let swarm = Node::new(
            config,
            me,
            opts.role,
            opts.channel,
            bootstrap,
            now,
            opts.seed ^ 0x5eed,
            Box::new(Ed25519Verifier),
        );
        let snapshot = NodeSnapshot {
            node_id: opts.node_key.id().to_string(),
            local_addr: Some(local_addr),
            stripes: opts.stripes as usize,
            ..NodeSnapshot::default()
        };
        Ok(LiveNode {
            endpoint,
            driver,
            swarm,
            local_addr,
            by_node: BTreeMap::new(),
            by_session: BTreeMap::new(),
            established: BTreeSet::new(),
            snapshot,
            started: now,
            last_chunk: None,
        })
    }

    /// The address peers reach this node at (what a link names).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Run until `shutdown` turns true (or, for a publisher, until `input` ends and the
    /// node has lingered `linger_after_input` so peers can fetch the last chunks).
    ///
    /// - `input`: signed chunks to publish (publisher only).
    /// - `output`: verified chunks for the application, in arrival order.
    /// - `figures`: refreshed every [`SNAPSHOT_INTERVAL`].
    pub async fn run(
        mut self,
        mut input: Option<mpsc::Receiver<Chunk>>,
        output: Option<mpsc::Sender<Chunk>>,
        figures: Arc<Mutex<NodeSnapshot>>,
        mut shutdown: watch::Receiver<bool>,
        linger_after_input: Duration,
    ) -> Result<Stopped> {
        let mut next_snapshot = Instant::now();
        let mut input_ended: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.swarm.poll_timeout().is_some_and(|t| t <= now) {
                self.swarm.handle_timeout(now);
            }
            self.pump(now, output.as_ref());
            if now >= next_snapshot {
                self.refresh_snapshot(now);
                *figures.lock().unwrap_or_else(|e| e.into_inner()) = self.snapshot.clone();
                next_snapshot = now + SNAPSHOT_INTERVAL;
            }
            if let Some(ended) = input_ended {
                if now >= ended + linger_after_input {
                    self.leave().await;
                    return Ok(Stopped::InputEnded);
                }
            }
            if *shutdown.borrow() {
                self.leave().await;
                return Ok(Stopped::Shutdown);
            }
            let mut deadline = next_snapshot;
            if let Some(t) = self.swarm.poll_timeout() {
                deadline = deadline.min(t);
            }
            if let Some(ended) = input_ended {
                deadline = deadline.min(ended + linger_after_input);
            }
            let wake = async {
                tokio::select! {
                    chunk = recv_or_pending(&mut input) => Wake::Chunk(chunk),
                    _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
                    _ = shutdown.changed() => Wake::Shutdown,
                }
            };
            let outcome = self.driver.step(&mut self.endpoint, wake).await.context("udp socket failed")?;
            if let StepOutcome::Woken(wake) = outcome {
                match wake {
                    Wake::Chunk(Some(chunk)) => {
                        self.snapshot.chunks_published += 1;
                        self.swarm.publish(Instant::now(), chunk);
                    }
                    Wake::Chunk(None) => {
                        input = None;
                        input_ended = Some(Instant::now());
                    }
                    Wake::Timer => {}
                    // A dropped sender counts as a request too (`changed` errs).
                    Wake::Shutdown => {
                        if shutdown.has_changed().is_err() {
                            self.leave().await;
                            return Ok(Stopped::Shutdown);
                        }
                    }
                }
            }
        }
    }

    /// Say goodbye: the swarm tells its neighbours (`Leave`), sessions close, and queued
    /// datagrams get [`LINGER`] to leave.
    async fn leave(&mut self) {
        let now = Instant::now();
        self.swarm.leave(now);
        self.pump(now, None);
        let sessions: Vec<SessionId> = self.by_session.keys().copied().collect();
        for s in sessions {
            self.endpoint.close(now, s);
        }
        let until = tokio::time::Instant::now() + LINGER;
        while tokio::time::Instant::now() < until {
            let sleep = tokio::time::sleep_until(until);
            match self.driver.step(&mut self.endpoint, sleep).await {
                Ok(StepOutcome::Woken(())) | Err(_) => break,
                Ok(_) => {}
            }
            while self.endpoint.poll_event().is_some() {}
        }
    }

    /// Move everything between the endpoint, the swarm and the application until no
    /// side has anything more for now.
    fn pump(&mut self, now: Instant, output: Option<&mpsc::Sender<Chunk>>) {
        loop {
            let mut moved = false;
            while let Some(event) = self.endpoint.poll_event() {
                moved = true;
                self.on_transport_event(now, event);
            }
            while let Some(t) = self.swarm.poll_transmit() {
                moved = true;
                self.send(now, t.to, &t.message, SendOptions { class: t.class, deadline: t.deadline });
            }
            while let Some(event) = self.swarm.poll_event() {
                moved = true;
                self.on_swarm_event(event, output);
            }
            if !moved {
                return;
            }
        }
    }

    fn on_transport_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected { session, .. } | Event::Accepted { session, .. } => {
                let Some(node) = self.endpoint.peer_node(session) else { return };
                self.by_session.insert(session, node);
                self.by_node.entry(node).or_insert(session);
                self.established.insert(session);
            }
            Event::Message { session, data, .. } => {
                let Some(from) =
                    self.by_session.get(&session).copied().or_else(|| self.endpoint.peer_node(session))
                else {
                    return;
                };
                match Message::decode_bytes(data) {
                    Ok(mut message) => {
                        if let Message::Hello { info } | Message::Subscribe { info, .. } = &mut message {
                            let remote = self.endpoint.session_stats(session).and_then(|s| s.remote);
                            info.addr = reachable_addr(info.addr, remote);
                        }
                        self.swarm.handle_message(now, from, message);
                    }
                    Err(e) => {
                        tracing::debug!(peer = ?from, error = %e, "malformed swarm message; closing the session");
                        self.snapshot.malformed_messages += 1;
                        self.endpoint.close(now, session);
                    }
                }
            }
            Event::Closed { session, reason } => {
                self.established.remove(&session);
                let Some(node) = self.by_session.remove(&session) else { return };
                tracing::debug!(peer = ?node, ?reason, "session closed");
                if self.by_node.get(&node) == Some(&session) {
                    self.by_node.remove(&node);
                    match self.by_session.iter().find(|(_, n)| **n == node) {
                        Some((&other, _)) => {
                            self.by_node.insert(node, other);
                        }
                        None => self.swarm.handle_peer_lost(now, node),
                    }
                }
            }
            Event::PeerAbandoned { .. } | Event::SendAbandoned { .. } => {}
        }
    }

    fn send(&mut self, now: Instant, to: PeerInfo, message: &Message, opts: SendOptions) {
        if to.id == self.swarm.id() {
            return;
        }
        let session = match self.by_node.get(&to.id) {
            Some(&s) => s,
            None if to.addr.ip().is_unspecified() || to.addr.port() == 0 => {
                // Known only by a session that is gone.
                self.snapshot.send_failures += 1;
                return;
            }
            None => match self.endpoint.connect_to(now, to.addr, to.id) {
                Ok(s) => {
                    self.by_node.insert(to.id, s);
                    self.by_session.insert(s, to.id);
                    s
                }
                Err(e) => {
                    tracing::debug!(peer = ?to.id, error = %e, "cannot open a session");
                    self.snapshot.send_failures += 1;
                    return;
                }
            },
        };
        let data = match message {
            Message::Chunk { hops, chunk } => match &self.last_chunk {
                Some((key, bytes)) if key.matches(*hops, chunk) => bytes.clone(),
                _ => {
                    let bytes = encode(message);
                    self.last_chunk = Some((EncodedChunk::new(*hops, chunk), bytes.clone()));
                    bytes
                }
            },
            _ => encode(message),
        };
        if let Err(e) = self.endpoint.send(now, session, data, opts) {
            tracing::debug!(peer = ?to.id, error = %e, "cannot queue a swarm message");
            self.snapshot.send_failures += 1;
        }
    }

    fn on_swarm_event(&mut self, event: NodeEvent, output: Option<&mpsc::Sender<Chunk>>) {
        match event {
            NodeEvent::Chunk { seq, ingest_us, keyframe, hops, from } => {
                let now_us = unix_now_us();
                let lag_us = now_us.saturating_sub(ingest_us);
                tracing::trace!(seq, lag_ms = lag_us / 1000, hops, from = %from, "chunk");
                if keyframe && self.snapshot.started_us.is_none() {
                    self.snapshot.started_us = Some(now_us);
                }
                if self.snapshot.started_us.is_some_and(|t| ingest_us >= t) {
                    self.snapshot.arrival_lag.record(lag_us);
                }
                self.snapshot.chunks_received += 1;
                self.snapshot.hop_count_sum += u64::from(hops);
                let from_map = &mut self.snapshot.chunks_from;
                if from_map.contains_key(&from) || from_map.len() < CHUNKS_FROM_PEERS {
                    *from_map.entry(from).or_insert(0) += 1;
                } else {
                    self.snapshot.chunks_from_others += 1;
                }
                if let (Some(out), Some(chunk)) = (output, self.swarm.chunk(seq)) {
                    if out.try_send(chunk.clone()).is_err() {
                        self.snapshot.output_dropped += 1;
                    }
                }
            }
            NodeEvent::ForgedChunk { from } => {
                tracing::warn!(peer = %from, "peer sent a forged chunk; banned");
                if let Some(session) = self.by_node.get(&from).copied() {
                    self.endpoint.close(Instant::now(), session);
                }
            }
        }
    }

    fn refresh_snapshot(&mut self, now: Instant) {
        let s = &mut self.snapshot;
        s.swarm = self.swarm.stats();
        s.peers = self.by_node.values().filter(|session| self.established.contains(session)).count();
        s.mesh_peers = self.swarm.mesh_peers().len();
        let parents = self.swarm.parents();
        s.parents = parents.iter().filter(|p| p.is_some()).count();
        if tracing::enabled!(tracing::Level::TRACE) {
            for k in 0..parents.len() {
                tracing::trace!(stripe = k, state = %self.swarm.stripe_state(k), "stripe");
            }
        }
        s.children = (0..parents.len()).map(|k| self.swarm.children(k).len()).sum();
        s.tree_joined = self.swarm.tree_joined_at().map(|t| t.saturating_duration_since(self.started));
        let d = self.driver.stats();
        (s.bytes_sent, s.bytes_received) = (d.bytes_sent, d.bytes_received);
        (s.datagrams_sent, s.datagrams_received) = (d.datagrams_sent, d.datagrams_received);
        (s.send_syscalls, s.recv_syscalls) = (d.send_syscalls, d.recv_syscalls);
        (s.gso_segments, s.gso_messages) = (d.gso_segments, d.gso_messages);
        let e = self.endpoint.stats();
        s.handshake_failures = e.handshake_failures;
        s.auth_failures = e.auth_failures;
        (s.send_queue_bytes, s.packets_lost, s.retransmitted_bytes) = (0, 0, 0);
        for session in self.by_session.keys() {
            if let Some(t) = self.endpoint.session_stats(*session) {
                s.send_queue_bytes += t.send_queue_bytes as u64;
                s.packets_lost += t.packets_lost;
                s.retransmitted_bytes += t.retransmitted_bytes;
            }
        }
        s.uptime = now - self.started;
        s.thread_cpu = rill_transport::driver::thread_cpu_time();
        s.thread_cpu_user = rill_transport::driver::thread_user_cpu_time();
    }
}

fn encode(message: &Message) -> Bytes {
    let mut buf = Vec::with_capacity(message.encoded_len());
    message.encode(&mut buf);
    Bytes::from(buf)
}

enum Wake {
    Chunk(Option<Chunk>),
    Timer,
    Shutdown,
}

async fn recv_or_pending(input: &mut Option<mpsc::Receiver<Chunk>>) -> Option<Chunk> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The address at which others can reach a peer that named `named` (in a hello or a
/// subscribe) on a session whose packets come from `observed`:
/// - a peer bound to a wildcard address names no IP: the one its packets come from;
/// - a peer whose packets come from another IP than the one it names is behind a NAT (it
///   names its private address) or sends through another interface: only the session it
///   opened reaches it, so its address is blanked (unspecified IP, port 0), which keeps it
///   out of peer exchange and redirects. Home routers and nftables masquerade drop what
///   comes in from anyone the inside has not sent to, so even the observed address would
///   not do for a third node (`rill testbed swarm --nat`);
/// - a peer on this host, over loopback, names its outward address: kept.
fn reachable_addr(named: SocketAddr, observed: Option<SocketAddr>) -> SocketAddr {
    let Some(observed) = observed else { return named };
    let observed_ip = observed.ip().to_canonical();
    if named.ip().is_unspecified() {
        SocketAddr::new(observed_ip, named.port())
    } else if named.ip().to_canonical() != observed_ip && !observed_ip.is_loopback() {
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
    } else {
        named
    }
}

/// The address to tell peers: the bound one, or for a wildcard bind the address of the
/// interface that routes outward (found by `connect` on a UDP socket, which sends nothing),
/// else loopback.
fn advertised_addr(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let probe = |target: &str| -> Option<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind(if bound.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok()?;
        // TEST-NET addresses (RFC 5737, RFC 3849): a route lookup only, nothing is sent.
        socket.connect(target).ok()?;
        Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
    };
    let target = if bound.is_ipv4() { "192.0.2.1:9" } else { "[2001:db8::1]:9" };
    let ip = probe(target).unwrap_or(if bound.is_ipv4() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    });
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, payload: Bytes) -> Chunk {
        Chunk {
            seq,
            ingest_us: 7,
            keyframe: false,
            stripe: (seq % 4) as u8,
            stripes: 4,
            payload,
            signature: [9; 64],
        }
    }

    #[test]
    fn the_swarm_plans_payload_in_what_the_wire_leaves_of_the_stated_upload() {
        assert_eq!(payload_upload_kbps(0), 0);
        assert_eq!(payload_upload_kbps(2000), 1700);
        // The largest figure a flag takes stays in range (4,294,967,295 × 0.85).
        assert_eq!(payload_upload_kbps(u32::MAX), 3_650_722_200);
    }

    #[test]
    fn a_peer_is_shared_only_at_an_address_its_packets_come_from() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let blank = a("0.0.0.0:0");
        // Public: the address it names is where its packets come from.
        assert_eq!(
            reachable_addr(a("198.51.100.7:7000"), Some(a("198.51.100.7:7000"))),
            a("198.51.100.7:7000")
        );
        // Wildcard bind: the IP its packets come from, the port it names.
        assert_eq!(reachable_addr(a("0.0.0.0:7000"), Some(a("198.51.100.7:41000"))), a("198.51.100.7:7000"));
        // Behind NAT: it names its private address; only its own session reaches it.
        assert_eq!(reachable_addr(a("10.1.0.2:7000"), Some(a("203.0.113.9:7000"))), blank);
        assert_eq!(reachable_addr(a("10.1.0.2:7000"), Some(a("203.0.113.9:1024"))), blank);
        // A dual-stack socket sees IPv4 peers as IPv4-mapped IPv6.
        assert_eq!(
            reachable_addr(a("198.51.100.7:7000"), Some(a("[::ffff:198.51.100.7]:7000"))),
            a("198.51.100.7:7000")
        );
        // On this host, over loopback: as named.
        assert_eq!(reachable_addr(a("172.17.0.2:7000"), Some(a("127.0.0.1:7000"))), a("172.17.0.2:7000"));
        // No session figures (yet): as named.
        assert_eq!(reachable_addr(a("10.1.0.2:7000"), None), a("10.1.0.2:7000"));
    }

    #[test]
    fn encoded_chunk_is_reused_only_for_the_same_message() {
        let payload = Bytes::from(vec![1u8; 1000]);
        let c = chunk(5, payload.clone());
        let key = EncodedChunk::new(2, &c);
        assert!(key.matches(2, &chunk(5, payload.clone())), "same chunk, same bytes");
        assert!(!key.matches(3, &c), "hops differ");
        assert!(!key.matches(2, &chunk(6, payload.clone())), "seq differs");
        let mut other = chunk(5, payload);
        other.ingest_us += 1;
        assert!(!key.matches(2, &other), "a field differs");
        // Equal contents in another buffer count as different: only the pointer is
        // compared, which is cheap and never wrong while the key holds the payload.
        assert!(!key.matches(2, &chunk(5, Bytes::from(vec![1u8; 1000]))));
    }
}
