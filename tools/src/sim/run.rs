//! The event loop: real `Node`s, virtual time, the network of [`super::net`].
//!
//! Determinism: one queue of events ordered by (time, insertion number), every random
//! choice from ChaCha streams seeded by the run's seed, per-node state in `Vec`s indexed
//! by node number; the only hash maps (node id → number, the verifier's cache) are looked
//! up, never iterated.

use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};
use rand_core::{RngCore, SeedableRng};
use rill_swarm::chunk::{ChannelId, ChannelKey, Chunk};
use rill_swarm::message::{Message, PeerInfo};
use rill_swarm::node::{Node, NodeConfig, NodeEvent, NodeStats, Role, Transmit};
use rill_swarm::NodeId;
use rill_transport::{Class, SessionConfig};
use rill_viewer::LagHistogram;

use super::floor;
use super::metrics::{Summary, Timing, ViewerRec};
use super::net::{self, mix, Bernoulli, Delays, DownloadLink, UploadQueue, Wire};
use super::queue::EventQueue;
use super::scenario::Scenario;
use super::verify::SharedVerifier;

/// Tags that give each random stream of a run its own seed.
const RNG_SETUP: u64 = 0x5e70;
const RNG_CHURN: u64 = 0xc4a2;
const RNG_BOOTSTRAP: u64 = 0xb007;
const RNG_LOSS: u64 = 0x1055;
const RNG_KEY: u64 = 0x6e79;
const RNG_NODE: u64 = 0x20de;
const RNG_ID: u64 = 0x1d1d;
const RNG_DELAY: u64 = 0xde1a;

/// Everything a run measured, before it is turned into figures.
#[derive(Debug)]
pub struct Results {
    pub viewers: u32,
    pub relays: u32,
    /// Viewers that joined in the run (initial ones and replacements).
    pub viewers_joined: u64,
    /// Viewers that left (churn and mass departure).
    pub departures: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub media_bytes: u64,
    pub summary: Summary,
    /// The lag floor at each rank over the initial viewers (ns), ascending (see `floor`).
    pub floor_ns: Vec<u64>,
    /// Per viewer: wire bytes sent / (upload capacity × time in the swarm), sorted.
    pub upload_utilisation: Vec<f64>,
    /// The publisher's upload utilisation over the run.
    pub publisher_utilisation: f64,
    /// Wire bytes sent by all nodes: messages, packet overhead, acks, retransmissions.
    pub wire_bytes: u64,
    pub publisher_wire_bytes: u64,
    pub ack_bytes: u64,
    pub retransmitted_bytes: u64,
    /// Wire bytes (with their acks' share left out) by message type, all nodes.
    pub bytes_by_message: [u64; MESSAGE_KINDS],
    /// The same, publisher only.
    pub publisher_bytes_by_message: [u64; MESSAGE_KINDS],
    pub queue_drops: u64,
    /// Time chunk messages waited in their sender's upload queue before they started to
    /// leave: pushed down a tree (Stream class) and sent as repairs (Background).
    pub queue_wait_push: LagHistogram,
    pub queue_wait_repair: LagHistogram,
    /// Messages whose send deadline passed while they waited in the upload queue.
    pub abandoned: u64,
    /// Messages addressed to a node id that does not exist.
    pub unroutable: u64,
    /// Messages for a node that had left: sent before the sender could tell (bytes
    /// counted), or held back by a sender whose transport had stopped hearing acks.
    pub to_departed: u64,
    pub stats: NodeStats,
    pub events: u64,
    /// (real signature verifications, verifications asked for).
    pub verifications: (u64, u64),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A node's `poll_timeout` is due.
    Timer(u32),
    /// The publisher ingests the end of chunk `seq`.
    Publish(u64),
    Join(u32),
    /// The message at the head of this node's upload has been serialized, unless the
    /// upload's epoch has moved on (it was interrupted: see `net::UploadQueue`).
    UploadDone(u32, u32),
    /// A message's last packet reaches the receiver's download link.
    Arrive(u32),
    /// A message has passed the receiver's download link.
    Deliver(u32),
    /// A candidate departure (thinned Poisson process).
    Churn,
    MassDeparture,
    /// The transport of node .0 gives up on node .1.
    PeerLost(u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    NotYet,
    Alive,
    Gone(u64),
}

#[derive(Debug)]
struct Slot {
    info: PeerInfo,
    role: Role,
    life: Life,
    upload: UploadQueue,
    download: DownloadLink,
    /// The Timer event in the queue that counts (others are stale).
    timer_at: Option<u64>,
    wire_sent: u64,
    /// Data packets received (acked at one ack per `ack_every` of them).
    packets_received: u64,
    viewer: Option<u32>,
    /// Position in `World::alive_viewers`.
    alive_pos: Option<usize>,
}

/// A message on its way.
#[derive(Debug)]
struct Flight {
    from: u32,
    to: u32,
    wire: Wire,
    started_ns: u64,
    /// Not sent if it has not started leaving by then (`Transmit::deadline`).
    deadline_ns: u64,
    /// Data packets sent including retransmissions (the receiver acks them).
    packets_sent: u64,
    kind: u8,
    /// When it entered the upload queue, and in which class.
    queued_ns: u64,
    class: Class,
    message: Option<Message>,
}

/// Everything but the nodes themselves (so a node and the world can be borrowed at once).
#[derive(Debug)]
struct World {
    now: u64,
    epoch: Instant,
    events: EventQueue<Kind>,
    slots: Vec<Slot>,
    index: HashMap<NodeId, u32>,
    flights: Vec<Flight>,
    free_flights: Vec<u32>,
    alive_viewers: Vec<u32>,
    viewers: Vec<ViewerRec>,
    timing: Timing,
    keyframe_ns: u64,
    delays: Delays,
    loss: Bernoulli,
    churn_rng: ChaCha8Rng,
    bootstrap_rng: ChaCha8Rng,
    setup_rng: ChaCha8Rng,
    seed: u64,
    relays: u32,
    bootstrap: usize,
    viewer_upload: (u32, u32),
    relay_upload: u32,
    download_kbps: u32,
    node_config: NodeConfig,
    channel: ChannelId,
    verifier: SharedVerifier,
    queue_cap: u64,
    ack_every: u32,
    idle_timeout_ns: u64,
    stall_ns: u64,
    /// (node, departed peer) pairs whose loss the node's transport has been told of.
    lost_told: BTreeSet<(u32, u32)>,
    // Counters.
    retransmitted_bytes: u64,
    bytes_by_message: [u64; MESSAGE_KINDS],
    publisher_bytes_by_message: [u64; MESSAGE_KINDS],
    queue_drops: u64,
    queue_wait_push: LagHistogram,
    queue_wait_repair: LagHistogram,
    abandoned: u64,
    unroutable: u64,
    to_departed: u64,
    departures: u64,
    stats: NodeStats,
}

#[derive(Debug)]
struct Sim {
    nodes: Vec<Option<Node>>,
    w: World,
}

/// Runs `scenario` with `seed`; `progress` prints a line on stderr every 5 % of the run.
pub fn simulate(sc: &Scenario, seed: u64, progress: bool) -> anyhow::Result<Results> {
    let chunk_ns = u64::from(sc.stream.chunk_ms) * 1_000_000;
    let timing = Timing {
        chunk_ns,
        chunks: sc.chunks(),
        latency_ns: u64::from(sc.playout.latency_ms) * 1_000_000,
        end_ns: (sc.stream.duration_s * 1e9).round() as u64,
    };
    let key = ChannelKey::generate(&mut ChaCha20Rng::seed_from_u64(mix(seed ^ RNG_KEY)));
    let channel = key.channel_id();
    // One buffer of one chunk's media, shared by every chunk: the simulator moves sizes,
    // not content, and the shared verifier relies on payloads being immutable buffers.
    let payload = Bytes::from(vec![0x47u8; sc.chunk_bytes()]); // 0x47: the MPEG-TS sync byte
    let probe = Chunk::sign(&key, 0, 0, true, sc.swarm.stripes, payload.clone())
        .context("the scenario's chunks cannot be signed (bitrate_kbps × chunk_ms too large?)")?;
    let chunk_wire = Wire::of(Message::Chunk { hops: 1, chunk: probe }.encoded_len());

    let transport = SessionConfig::default();
    let (dmin, dmax) = sc.one_way_delay_ms();
    let viewers = sc.swarm.viewers;
    let relays = sc.swarm.relays;
    let mut w = World {
        now: 0,
        epoch: Instant::now(),
        events: EventQueue::default(),
        slots: Vec::new(),
        index: HashMap::new(),
        flights: Vec::new(),
        free_flights: Vec::new(),
        alive_viewers: Vec::new(),
        viewers: Vec::new(),
        timing,
        keyframe_ns: ((sc.stream.keyframe_interval_s * 1e9).round() as u64).max(1),
        delays: Delays::new(mix(seed ^ RNG_DELAY), dmin, dmax),
        loss: Bernoulli::new(sc.network.loss, ChaCha8Rng::seed_from_u64(mix(seed ^ RNG_LOSS))),
        churn_rng: ChaCha8Rng::seed_from_u64(mix(seed ^ RNG_CHURN)),
        bootstrap_rng: ChaCha8Rng::seed_from_u64(mix(seed ^ RNG_BOOTSTRAP)),
        setup_rng: ChaCha8Rng::seed_from_u64(mix(seed ^ RNG_SETUP)),
        seed,
        relays,
        bootstrap: sc.swarm.bootstrap,
        viewer_upload: sc.viewer_upload_kbps(),
        relay_upload: sc.swarm.relay_upload_kbps,
        download_kbps: sc.swarm.viewer_download_kbps,
        node_config: NodeConfig {
            stripes: sc.swarm.stripes,
            stream_kbps: sc.stream.bitrate_kbps,
            upload_kbps: 0,
            mesh_size: sc.swarm.mesh_size,
            chunk_duration: Duration::from_nanos(chunk_ns),
        },
        channel,
        verifier: SharedVerifier::default(),
        // The transport's own send buffer bounds what a node can have queued.
        queue_cap: transport.send_buffer as u64,
        ack_every: transport.ack_every_packets,
        // A peer that vanished is declared lost by the transport after its idle timeout.
        idle_timeout_ns: transport.idle_timeout.as_nanos() as u64,
        // After one retransmission timeout without acks a sender's congestion window has
        // collapsed: from then on it puts (almost) nothing on the wire for that peer.
        stall_ns: transport.min_rto.as_nanos() as u64,
        lost_told: BTreeSet::new(),
        retransmitted_bytes: 0,
        bytes_by_message: [0; MESSAGE_KINDS],
        publisher_bytes_by_message: [0; MESSAGE_KINDS],
        queue_drops: 0,
        queue_wait_push: LagHistogram::new(),
        queue_wait_repair: LagHistogram::new(),
        abandoned: 0,
        unroutable: 0,
        to_departed: 0,
        departures: 0,
        stats: NodeStats::default(),
    };

    // The publisher is node 0 and in the swarm from the start; relays join at t = 0 (in
    // index order, before any viewer); viewers join uniformly over join_over_s.
    let publisher = w.add_slot(Role::Publisher, sc.swarm.publisher_upload_kbps);
    let mut sim = Sim { nodes: Vec::new(), w };
    sim.nodes.push(None);
    sim.join(publisher);
    for _ in 0..relays {
        let i = sim.add(Role::Relay);
        sim.w.push(0, Kind::Join(i));
    }
    let join_over_ns = (sc.swarm.join_over_s * 1e9).round() as u64;
    for _ in 0..viewers {
        let i = sim.add(Role::Viewer);
        let at = if join_over_ns == 0 { 0 } else { sim.w.setup_rng.next_u64() % join_over_ns };
        sim.w.push(at, Kind::Join(i));
    }
    let initial_nodes = sim.w.slots.len();
    if timing.chunks > 0 {
        sim.w.push(timing.ingest_ns(0), Kind::Publish(0));
    }
    let leave_per_s = sc.churn.leave_per_min / 60.0;
    if leave_per_s > 0.0 {
        let first = sim.w.churn_gap(leave_per_s * f64::from(viewers));
        sim.w.push(first, Kind::Churn);
    }
    if let Some(m) = &sc.churn.mass_departure {
        sim.w.push((m.at_s * 1e9).round() as u64, Kind::MassDeparture);
    }

    let wall = Instant::now();
    let progress = progress && std::io::stderr().is_terminal();
    let mut next_mark = 1u64;
    let mut events = 0u64;
    while let Some((at, kind)) = sim.w.events.pop() {
        if at > timing.end_ns {
            break;
        }
        sim.w.now = at;
        events += 1;
        match kind {
            Kind::Timer(i) => sim.on_timer(i, at),
            Kind::Publish(seq) => sim.publish(&key, &payload, seq),
            Kind::Join(i) => sim.join(i),
            Kind::UploadDone(i, epoch) => sim.w.upload_done(i, epoch),
            Kind::Arrive(f) => sim.w.arrive(f),
            Kind::Deliver(f) => sim.deliver(f),
            Kind::Churn => sim.churn(leave_per_s, viewers),
            Kind::MassDeparture => {
                let fraction = sc.churn.mass_departure.as_ref().map_or(0.0, |m| m.fraction);
                sim.mass_departure(fraction);
            }
            Kind::PeerLost(i, peer) => sim.peer_lost(i, peer),
        }
        if progress && at * 20 >= next_mark * timing.end_ns {
            let secs = wall.elapsed().as_secs_f64();
            // One line, rewritten in place (a terminal only; see above).
            eprint!(
                "\rsim: {:5.1}/{:.1} s virtual  {:6.1} s wall  {:.2} M events/s",
                at as f64 / 1e9,
                timing.end_ns as f64 / 1e9,
                secs,
                events as f64 / secs.max(1e-9) / 1e6
            );
            next_mark = at * 20 / timing.end_ns.max(1) + 1;
        }
    }
    if progress {
        eprintln!();
    }
    sim.w.now = timing.end_ns;

    let mut stats = sim.w.stats.clone();
    for node in sim.nodes.iter().flatten() {
        add_stats(&mut stats, &node.stats());
    }
    if std::env::var_os("RILL_SIM_DEBUG").is_some() {
        let mut shown = 0;
        for node in sim.nodes.iter().flatten() {
            for (s, p) in node.parents().iter().enumerate() {
                if p.is_none() && shown < 12 {
                    shown += 1;
                    eprintln!("orphan {:?} stripe {s}: {}", node.id(), node.stripe_state(s));
                }
            }
        }
        let orphans: usize =
            sim.nodes.iter().flatten().map(|n| n.parents().iter().filter(|p| p.is_none()).count()).sum();
        eprintln!("orphaned (node, stripe) pairs at the end: {orphans}");
    }
    let w = &sim.w;
    let publisher_kbps = w.slots[0].info.upload_kbps;
    let chunk_tx_ns = net::serialization_ns(chunk_wire.bytes, publisher_kbps);
    let grace_ns = timing.latency_ns + (sc.stream.keyframe_interval_s * 1e9) as u64;
    let summary = Summary::collect(&w.viewers, &timing, sc.chunk_bytes() as u64, grace_ns, |node| {
        w.delays.one_way_ns(0, node) + chunk_tx_ns
    });
    let packet_ns = |kbps: u32| net::serialization_ns(net::DATAGRAM_BYTES as u64, kbps);
    let dist = floor::shortest_delays(initial_nodes, 0, |a, b| w.delays.one_way_ns(a as u32, b as u32));
    let mut floor_ns: Vec<u64> = (0..initial_nodes)
        .filter(|&i| w.slots[i].role == Role::Viewer)
        .map(|i| dist[i] + packet_ns(publisher_kbps))
        .collect();
    floor_ns.sort_unstable();
    let fastest_kbps = w.slots[1..initial_nodes].iter().map(|s| s.info.upload_kbps).max().unwrap_or(1);
    let spread = floor::spread_times(
        floor_ns.len(),
        packet_ns(publisher_kbps),
        packet_ns(fastest_kbps),
        w.delays.min_ns(),
    );
    for (f, s) in floor_ns.iter_mut().zip(spread) {
        *f = (*f).max(s);
    }
    let utilisation = |slot: &Slot, seconds: f64| {
        (slot.wire_sent + w.acks_sent(slot)) as f64 * 8.0
            / (f64::from(slot.info.upload_kbps) * 1000.0 * seconds)
    };
    let mut upload_utilisation: Vec<f64> = w
        .viewers
        .iter()
        .filter_map(|v| {
            let until = v.left_ns.unwrap_or(timing.end_ns);
            let seconds = until.saturating_sub(v.joined_ns) as f64 / 1e9;
            (seconds > 0.0).then(|| utilisation(&w.slots[v.node as usize], seconds))
        })
        .collect();
    upload_utilisation.sort_by(f64::total_cmp);
    Ok(Results {
        viewers,
        relays,
        viewers_joined: w.viewers.len() as u64,
        departures: w.departures,
        chunks: timing.chunks,
        chunk_bytes: sc.chunk_bytes() as u64,
        media_bytes: timing.chunks * sc.chunk_bytes() as u64,
        summary,
        floor_ns,
        upload_utilisation,
        publisher_utilisation: utilisation(&w.slots[0], timing.end_ns as f64 / 1e9),
        wire_bytes: w.slots.iter().map(|s| s.wire_sent + w.acks_sent(s)).sum(),
        publisher_wire_bytes: w.slots[0].wire_sent + w.acks_sent(&w.slots[0]),
        ack_bytes: w.slots.iter().map(|s| w.acks_sent(s)).sum(),
        retransmitted_bytes: w.retransmitted_bytes,
        bytes_by_message: w.bytes_by_message,
        publisher_bytes_by_message: w.publisher_bytes_by_message,
        queue_drops: w.queue_drops,
        queue_wait_push: w.queue_wait_push.clone(),
        queue_wait_repair: w.queue_wait_repair.clone(),
        abandoned: w.abandoned,
        unroutable: w.unroutable,
        to_departed: w.to_departed,
        stats,
        events,
        verifications: w.verifier.counts(),
    })
}

/// Message types, for the byte breakdown.
pub const MESSAGE_KINDS: usize = 12;
const KIND_CHUNK: usize = 8;
pub const MESSAGE_KIND_NAMES: [&str; MESSAGE_KINDS] = [
    "hello",
    "peers",
    "subscribe",
    "accept",
    "redirect",
    "unsubscribe",
    "have",
    "request",
    "chunk",
    "leave",
    "upstream",
    "declined",
];

fn message_kind(m: &Message) -> usize {
    match m {
        Message::Hello { .. } => 0,
        Message::Peers { .. } => 1,
        Message::Subscribe { .. } => 2,
        Message::Accept { .. } => 3,
        Message::Redirect { .. } => 4,
        Message::Unsubscribe { .. } => 5,
        Message::Have(_) => 6,
        Message::Request { .. } => 7,
        Message::Chunk { .. } => KIND_CHUNK,
        Message::Leave => 9,
        Message::Upstream { .. } => 10,
        Message::Declined { .. } => 11,
    }
}

fn add_stats(sum: &mut NodeStats, s: &NodeStats) {
    sum.chunks_received += s.chunks_received;
    sum.duplicate_payload_bytes += s.duplicate_payload_bytes;
    sum.useful_payload_bytes += s.useful_payload_bytes;
    sum.duplicate_tree_after_pull_bytes += s.duplicate_tree_after_pull_bytes;
    sum.duplicate_pull_after_tree_bytes += s.duplicate_pull_after_tree_bytes;
    sum.forged_chunks += s.forged_chunks;
    sum.reparents += s.reparents;
    sum.tree_moves += s.tree_moves;
    sum.pulls_sent += s.pulls_sent;
    sum.pulls_served += s.pulls_served;
    sum.pulls_declined += s.pulls_declined;
    sum.chunks_from_parent += s.chunks_from_parent;
    sum.orphan_ms += s.orphan_ms;
    sum.children_dropped_silent += s.children_dropped_silent;
}

impl World {
    fn push(&mut self, at: u64, kind: Kind) {
        self.events.push(at, kind);
    }

    fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A new node (not yet joined) with a deterministic id and address.
    fn add_slot(&mut self, role: Role, upload_kbps: u32) -> u32 {
        let i = self.slots.len() as u32;
        let mut id = [0u8; 32];
        for (k, word) in id.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(
                &mix(self.seed ^ mix(RNG_ID ^ (u64::from(i) << 8) ^ k as u64)).to_be_bytes(),
            );
        }
        let id = NodeId(id);
        let n = i + 1;
        let addr = SocketAddr::from((Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8), 4100));
        let info = PeerInfo { id, addr, upload_kbps, relay: role != Role::Viewer };
        self.index.insert(id, i);
        self.slots.push(Slot {
            info,
            role,
            life: Life::NotYet,
            upload: UploadQueue::default(),
            download: DownloadLink::default(),
            timer_at: None,
            wire_sent: 0,
            packets_received: 0,
            viewer: None,
            alive_pos: None,
        });
        i
    }

    fn churn_gap(&mut self, rate_per_s: f64) -> u64 {
        let u = ((self.churn_rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        self.now + (-u.ln() / rate_per_s * 1e9) as u64
    }

    /// Drains what a node wants to send and say, and re-arms its timer.
    fn drain(&mut self, i: u32, node: &mut Node) {
        while let Some(t) = node.poll_transmit() {
            self.send(i, t);
        }
        while let Some(e) = node.poll_event() {
            if let NodeEvent::Chunk { seq, keyframe, hops, .. } = e {
                if let Some(v) = self.slots[i as usize].viewer {
                    self.viewers[v as usize].on_chunk(&self.timing, self.now, seq, keyframe, hops);
                }
            }
        }
        if let Some(t) = node.poll_timeout() {
            let at = self.ns(t).max(self.now);
            let slot = &mut self.slots[i as usize];
            if slot.timer_at.is_none_or(|cur| at < cur) {
                slot.timer_at = Some(at);
                self.push(at, Kind::Timer(i));
            }
        }
    }

    fn send(&mut self, from: u32, t: Transmit) {
        let Some(&to) = self.index.get(&t.to.id) else {
            self.unroutable += 1;
            return;
        };
        if let Life::Gone(at) = self.slots[to as usize].life {
            if self.now >= at + self.stall_ns {
                self.to_departed += 1;
                self.tell_lost(from, to, at);
                return;
            }
        }
        let wire = Wire::of(t.message.encoded_len());
        let flight = Flight {
            from,
            to,
            wire,
            started_ns: 0,
            deadline_ns: t.deadline.map_or(u64::MAX, |d| self.ns(d)),
            packets_sent: u64::from(wire.packets),
            kind: message_kind(&t.message) as u8,
            queued_ns: self.now,
            class: t.class,
            message: Some(t.message),
        };
        let f = match self.free_flights.pop() {
            Some(f) => {
                self.flights[f as usize] = flight;
                f
            }
            None => {
                self.flights.push(flight);
                (self.flights.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[from as usize];
        if !slot.upload.offer(t.class, f, wire.bytes, self.queue_cap) {
            self.queue_drops += 1;
            self.free(f);
            return;
        }
        if !slot.upload.is_busy() || slot.upload.interrupt(t.class, self.now, slot.info.upload_kbps) {
            self.start_upload(from);
        }
    }

    fn free(&mut self, f: u32) {
        self.flights[f as usize].message = None;
        self.free_flights.push(f);
    }

    /// Starts sending the most urgent queued message whose deadline has not passed; the
    /// transport abandons the others (as it does with data that can no longer matter).
    fn start_upload(&mut self, i: u32) {
        loop {
            let flights = &self.flights;
            let slot = &mut self.slots[i as usize];
            let Some(start) = slot.upload.start_next(self.now, |f| flights[f as usize].wire.bytes) else {
                return;
            };
            let f = start.id;
            if self.flights[f as usize].deadline_ns <= self.now {
                slot.upload.finish();
                self.abandoned += 1;
                if start.resumed {
                    // What left before it was interrupted.
                    let fl = &self.flights[f as usize];
                    self.count_sent(i, usize::from(fl.kind), fl.wire.bytes - start.bytes);
                }
                self.free(f);
                continue;
            }
            let done = start.at + net::serialization_ns(start.bytes, slot.info.upload_kbps);
            let fl = &mut self.flights[f as usize];
            if !start.resumed {
                fl.started_ns = start.at;
                if usize::from(fl.kind) == KIND_CHUNK {
                    let wait_us = (start.at - fl.queued_ns) / 1000;
                    match fl.class {
                        Class::Background => self.queue_wait_repair.record(wait_us),
                        _ => self.queue_wait_push.record(wait_us),
                    }
                }
            }
            self.push(done, Kind::UploadDone(i, start.epoch));
            return;
        }
    }

    fn upload_done(&mut self, i: u32, epoch: u32) {
        let slot = &mut self.slots[i as usize];
        if slot.life != Life::Alive || slot.upload.epoch() != epoch {
            return; // gone (its queue was emptied), or this part was interrupted
        }
        let Some(f) = slot.upload.finish() else { return };
        let (to, wire, started, kind) = {
            let fl = &self.flights[f as usize];
            (fl.to, fl.wire, fl.started_ns, fl.kind as usize)
        };
        let delay = self.delays.one_way_ns(i, to);
        let tx = net::transmit(&mut self.loss, wire, started, self.now, delay);
        self.count_sent(i, kind, wire.bytes + tx.retransmitted_bytes);
        self.retransmitted_bytes += tx.retransmitted_bytes;
        self.flights[f as usize].packets_sent += tx.retransmitted_packets;
        self.push(tx.last_arrival_ns, Kind::Arrive(f));
        self.start_upload(i);
    }

    /// Wire bytes node `i` sent of a message of `kind`, in its totals and the run's.
    fn count_sent(&mut self, i: u32, kind: usize, bytes: u64) {
        self.slots[i as usize].wire_sent += bytes;
        self.bytes_by_message[kind] += bytes;
        if i == 0 {
            self.publisher_bytes_by_message[kind] += bytes;
        }
    }

    fn arrive(&mut self, f: u32) {
        let (from, to, wire, first, packets) = {
            let fl = &self.flights[f as usize];
            (fl.from, fl.to, fl.wire, fl.started_ns + self.delays.one_way_ns(fl.from, fl.to), fl.packets_sent)
        };
        if self.slots[to as usize].life != Life::Alive {
            self.undeliverable(f, from, to);
            return;
        }
        // Acks are counted as bytes the receiver sends (see `acks_sent`), not queued on its
        // upload: at one 50-byte packet per four data packets they are ~1 % of the data,
        // and queueing them would double the events per message.
        let slot = &mut self.slots[to as usize];
        slot.packets_received += packets;
        let done = slot.download.admit(first, self.now, wire, self.download_kbps);
        self.push(done, Kind::Deliver(f));
    }

    /// Ack bytes a node sent: one ack packet per `ack_every` data packets it received,
    /// counted over all its sessions together (the transport coalesces acks and lets them
    /// ride on data going back, so a lone small message does not cost a whole ack).
    fn acks_sent(&self, slot: &Slot) -> u64 {
        net::ack_bytes(slot.packets_received, self.ack_every)
    }

    /// A message for a node that has left: dropped (its bytes were sent all the same).
    fn undeliverable(&mut self, f: u32, from: u32, to: u32) {
        self.to_departed += 1;
        self.free(f);
        if let Life::Gone(at) = self.slots[to as usize].life {
            self.tell_lost(from, to, at);
        }
    }

    /// The sender's transport gives up on a peer that left at `left`: it hears nothing from
    /// it for the idle timeout, then closes the session and the node learns of it.
    fn tell_lost(&mut self, from: u32, to: u32, left: u64) {
        if self.slots[from as usize].life == Life::Alive && self.lost_told.insert((from, to)) {
            let when = (left + self.idle_timeout_ns).max(self.now);
            self.push(when, Kind::PeerLost(from, to));
        }
    }

    fn pick_viewer(&mut self) -> Option<u32> {
        if self.alive_viewers.is_empty() {
            return None;
        }
        let k = (self.churn_rng.next_u64() % self.alive_viewers.len() as u64) as usize;
        Some(self.alive_viewers[k])
    }

    fn bootstrap_for(&mut self, i: u32) -> Vec<PeerInfo> {
        let mut list = vec![self.slots[0].info];
        let want = self.bootstrap.max(1);
        // Relays joined before `i` (relays have the lowest numbers after the publisher).
        let relays: Vec<u32> =
            (1..=self.relays).filter(|&r| r < i && self.slots[r as usize].life == Life::Alive).collect();
        for r in sample(&mut self.bootstrap_rng, &relays, want - 1) {
            list.push(self.slots[r as usize].info);
        }
        let room = want.saturating_sub(list.len());
        for v in sample(&mut self.bootstrap_rng, &self.alive_viewers, room) {
            list.push(self.slots[v as usize].info);
        }
        list
    }
}

/// Up to `k` distinct elements of `pool`, chosen uniformly (all of them if `k` ≥ len).
fn sample(rng: &mut ChaCha8Rng, pool: &[u32], k: usize) -> Vec<u32> {
    let n = pool.len();
    if k >= n {
        return pool.to_vec();
    }
    if k <= 16 {
        // Few picks from many (bootstrap lists): rejection, without copying the pool.
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let j = (rng.next_u64() % n as u64) as usize;
            if !picked.contains(&j) {
                picked.push(j);
            }
        }
        return picked.into_iter().map(|j| pool[j]).collect();
    }
    // Many picks (a mass departure): a partial Fisher–Yates shuffle.
    let mut all = pool.to_vec();
    for j in 0..k {
        let r = j + (rng.next_u64() % (n - j) as u64) as usize;
        all.swap(j, r);
    }
    all.truncate(k);
    all
}

impl Sim {
    /// A new node of `role` (not yet joined), its upload drawn per the scenario.
    fn add(&mut self, role: Role) -> u32 {
        let w = &mut self.w;
        let upload = match role {
            Role::Relay => w.relay_upload,
            _ => {
                let (lo, hi) = w.viewer_upload;
                lo + (w.setup_rng.next_u64() % (u64::from(hi - lo) + 1)) as u32
            }
        };
        let i = w.add_slot(role, upload);
        self.nodes.push(None);
        i
    }

    fn join(&mut self, i: u32) {
        let now = self.w.now;
        let role = self.w.slots[i as usize].role;
        let bootstrap = if role == Role::Publisher { Vec::new() } else { self.w.bootstrap_for(i) };
        let info = self.w.slots[i as usize].info;
        let config = NodeConfig { upload_kbps: info.upload_kbps, ..self.w.node_config.clone() };
        let seed = mix(self.w.seed ^ mix(RNG_NODE ^ (u64::from(i) << 8)));
        let mut node = Node::new(
            config,
            info,
            role,
            self.w.channel,
            bootstrap,
            self.w.instant(now),
            seed,
            Box::new(self.w.verifier.clone()),
        );
        let w = &mut self.w;
        w.slots[i as usize].life = Life::Alive;
        if role == Role::Viewer {
            w.slots[i as usize].viewer = Some(w.viewers.len() as u32);
            w.viewers.push(ViewerRec::new(i, now));
            w.slots[i as usize].alive_pos = Some(w.alive_viewers.len());
            w.alive_viewers.push(i);
        }
        w.drain(i, &mut node);
        self.nodes[i as usize] = Some(node);
    }

    fn publish(&mut self, key: &ChannelKey, payload: &Bytes, seq: u64) {
        let w = &mut self.w;
        let t = w.timing;
        let start = seq * t.chunk_ns;
        // A keyframe starts each keyframe interval: the chunk whose media span contains an
        // interval boundary carries it.
        let kf_ns = w.keyframe_ns;
        let boundary = start.div_ceil(kf_ns) * kf_ns;
        let keyframe = boundary < start + t.chunk_ns;
        let ingest_ns = t.ingest_ns(seq);
        let stripes = w.node_config.stripes;
        // Signing was checked with the probe chunk; the same sizes cannot fail here.
        let Ok(chunk) = Chunk::sign(key, seq, ingest_ns / 1000, keyframe, stripes, payload.clone()) else {
            return;
        };
        let now = w.instant(w.now);
        if let Some(node) = self.nodes[0].as_mut() {
            node.publish(now, chunk);
            w.drain(0, node);
        }
        if seq + 1 < t.chunks {
            w.push(t.ingest_ns(seq + 1), Kind::Publish(seq + 1));
        }
    }

    fn on_timer(&mut self, i: u32, at: u64) {
        let w = &mut self.w;
        if w.slots[i as usize].timer_at != Some(at) {
            return; // superseded by an earlier deadline
        }
        w.slots[i as usize].timer_at = None;
        let Some(node) = self.nodes[i as usize].as_mut() else { return };
        let now = w.instant(at);
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        w.drain(i, node);
    }

    fn deliver(&mut self, f: u32) {
        let w = &mut self.w;
        let (from, to) = (w.flights[f as usize].from, w.flights[f as usize].to);
        let Some(node) = self.nodes[to as usize].as_mut() else {
            w.undeliverable(f, from, to);
            return;
        };
        let Some(message) = w.flights[f as usize].message.take() else { return };
        w.free(f);
        let from_id = w.slots[from as usize].info.id;
        node.handle_message(w.instant(w.now), from_id, message);
        w.drain(to, node);
    }

    fn peer_lost(&mut self, i: u32, peer: u32) {
        let w = &mut self.w;
        let Some(node) = self.nodes[i as usize].as_mut() else { return };
        node.handle_peer_lost(w.instant(w.now), w.slots[peer as usize].info.id);
        w.drain(i, node);
    }

    /// A viewer crashes: no Leave, its queue is lost, messages to it are dropped.
    fn kill(&mut self, i: u32) {
        let Some(node) = self.nodes[i as usize].take() else { return };
        let w = &mut self.w;
        add_stats(&mut w.stats, &node.stats());
        drop(node);
        let now = w.now;
        let slot = &mut w.slots[i as usize];
        slot.life = Life::Gone(now);
        slot.timer_at = None;
        let queued = slot.upload.clear();
        if let Some(pos) = slot.alive_pos.take() {
            w.alive_viewers.swap_remove(pos);
            if let Some(&moved) = w.alive_viewers.get(pos) {
                w.slots[moved as usize].alive_pos = Some(pos);
            }
        }
        if let Some(v) = w.slots[i as usize].viewer {
            w.viewers[v as usize].left_ns = Some(now);
        }
        for f in queued {
            w.free(f);
        }
        w.departures += 1;
    }

    /// A candidate departure of the thinned Poisson process: at rate `leave_per_s` ×
    /// `max_viewers` candidates come; each is a real departure with probability alive /
    /// max_viewers, which makes departures a Poisson process of rate `leave_per_s` × alive.
    fn churn(&mut self, leave_per_s: f64, max_viewers: u32) {
        let w = &mut self.w;
        let alive = w.alive_viewers.len() as u64;
        let accept = w.churn_rng.next_u64() % u64::from(max_viewers.max(1)) < alive;
        let next = w.churn_gap(leave_per_s * f64::from(max_viewers));
        w.push(next, Kind::Churn);
        if accept {
            if let Some(v) = w.pick_viewer() {
                self.kill(v);
                // Replaced by a newcomer (new id) joining at once.
                let fresh = self.add(Role::Viewer);
                let now = self.w.now;
                self.w.push(now, Kind::Join(fresh));
            }
        }
    }

    fn mass_departure(&mut self, fraction: f64) {
        let alive = self.w.alive_viewers.clone();
        let k = (fraction * alive.len() as f64).round() as usize;
        for v in sample(&mut self.w.churn_rng, &alive, k) {
            self.kill(v);
        }
    }
}
