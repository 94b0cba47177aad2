//! Public API of the sans-IO transport: [`Endpoint`] and the types it speaks in.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::EndpointConfig;
use crate::crypto::admission::{Admission, CookieJar, Verdict, COOKIE_LEN};
use crate::crypto::handshake::{Handshake, Pattern};
use crate::crypto::identity::{NodeId, NodeKey};
use crate::session::{EventSink, HandshakeRejected, Received, SendClasses, Session, State};
use crate::uplink::{SpareUplink, UplinkPacer};
use crate::wire::{self, Header, PacketType, SynBody, Writer, HEADER_LEN};

/// Cookie challenges queued at once; more are dropped (admission rate-limits them too,
/// so a flood of spoofed initiations cannot grow memory or make us a reflector).
const MAX_PENDING_COOKIES: usize = 64;
/// Datagrams one session may send in a row before the next session gets its turn in
/// `poll_transmit`. Consecutive datagrams to one destination leave as one GSO message
/// (`driver::tx`), which crosses the kernel's UDP/IP stack once instead of once per
/// datagram; taking turns per datagram interleaved destinations and left nothing to
/// coalesce. 64 is Linux's `UDP_MAX_SEGMENTS` (the most one GSO send carries) and the
/// driver's batch: a session holds the turn for at most 64 × 1200 B, 0.6 ms at 1 Gbit/s,
/// and its own pacer (a 2 ms bucket) usually ends its run sooner.
const TRANSMIT_RUN: u32 = 64;
/// Under the uplink pacer, Background data waiting gets a turn after this many datagrams
/// of Control and Stream: a ninth of the uplink while the live chunks would fill it. A
/// node plans its children in 85 % of its stated upload, so this only binds while it is
/// overloaded (a flash crowd's start groups, a keyframe's larger chunks); then the turns
/// keep repairs and a newcomer's group arriving, late, where strict priority let them wait
/// out their deadline while the live chunks alone filled the uplink. A larger share
/// delays the live chunks, and every child's subtree with them. `rill testbed swarm
/// --nodes 30 --duration 8 --runs 8`, 64 runs each, with the pacer's first, 5 ms bucket
/// (not measured again at 20 ms; see `UPLINK_PACER_BURST`): strict priority, seeds
/// 449-512 against main without the pacer, took the runs meeting the p99 target from 46
/// to 62 but `lost_chunks` from 351 to 614; a turn after every 4 (seeds 513-576) took
/// starts over 1 s from 102 to 66 but the runs meeting the p99 target from 48 to 41; after
/// every 8, starts over 1 s 53 and the p99 target met in 62.
const BACKGROUND_TURN_EVERY: u32 = 8;

/// A session, named by the id *we* chose for it (the id the peer puts on packets to us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

/// A message, numbered per session and per direction from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// Traffic class of a message. Sending order is strict priority: Control, then Stream,
/// then Background. How classes share the congestion window is described on
/// `session::Session` (stream keeps its rate against loss-based competitors, background
/// yields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Small protocol messages (membership, requests). Never window-starved.
    Control = 0,
    /// The live stream: keeps its bitrate.
    Stream = 1,
    /// Prefetch, bulk repair: a scavenger that yields to everything.
    Background = 2,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Control, Class::Stream, Class::Background];
    pub fn name(self) -> &'static str {
        match self {
            Class::Control => "control",
            Class::Stream => "stream",
            Class::Background => "background",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    pub class: Class,
    /// After this instant the message is abandoned: no more (re)transmissions, and the
    /// receiver is told. `None`: retransmit until delivered or the session closes.
    pub deadline: Option<Instant>,
}

impl SendOptions {
    pub fn reliable(class: Class) -> Self {
        Self { class, deadline: None }
    }
    pub fn with_deadline(class: Class, deadline: Instant) -> Self {
        Self { class, deadline: Some(deadline) }
    }
}

/// One datagram to put on the wire: `size` bytes at the start of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// We called `close` and the peer acknowledged (or the close timed out).
    Local,
    /// The peer closed.
    Peer,
    /// Nothing heard from the peer within the idle timeout.
    IdleTimeout,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The peer broke the protocol (e.g. a message over the size limit, acks for packets
    /// never sent); the session was dropped.
    ProtocolViolation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session we initiated with `connect` is established.
    Connected { session: SessionId, remote: SocketAddr },
    /// A peer opened a session to us.
    Accepted { session: SessionId, remote: SocketAddr },
    /// A whole message arrived (exactly once; messages are independent, so they are
    /// delivered as each completes, not in send order).
    Message { session: SessionId, class: Class, data: Bytes },
    /// The peer abandoned a message it had started sending us (its deadline passed).
    PeerAbandoned { session: SessionId, message: MessageId },
    /// We abandoned a message of ours: its deadline passed before it was acknowledged.
    SendAbandoned { session: SessionId, message: MessageId },
    /// The session is gone; its id will not be reused soon.
    Closed { session: SessionId, reason: CloseReason },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("too many sessions (limit {0})")]
    TooManySessions(usize),
    #[error("handshake could not start: {0}")]
    Handshake(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no such session")]
    UnknownSession,
    #[error("session is closing or closed")]
    Closed,
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("send buffer full ({queued} bytes queued, limit {limit})")]
    BufferFull { queued: usize, limit: usize },
}

/// Per-session figures (names follow shared/METRICS.md where one applies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionStats {
    pub remote: Option<SocketAddr>,
    pub controller: &'static str,
    pub smoothed_rtt: Duration,
    pub min_rtt: Duration,
    pub congestion_window: usize,
    pub bytes_in_flight: usize,
    /// The controller's own queueing-delay estimate (not a measurement).
    pub queueing_delay_estimate: Option<Duration>,
    pub pacing_rate_bps: f64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub retransmitted_bytes: u64,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub messages_delivered: u64,
    /// Application bytes delivered to us (goodput numerator).
    pub payload_bytes_delivered: u64,
    /// Messages we abandoned at their deadline.
    pub messages_abandoned_sent: u64,
    /// Messages the peer abandoned.
    pub messages_abandoned_received: u64,
    pub send_queue_bytes: usize,
    /// Packets for this session that failed authentication (dropped; changed nothing).
    pub auth_failures: u64,
    /// Authentic packets received again (replays or late duplicates; dropped).
    pub replays_rejected: u64,
    /// Key updates of our send direction, and of the peer's (see `crypto::keys`).
    pub key_updates_sent: u64,
    pub key_updates_received: u64,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub sessions: usize,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Datagrams that failed to decode (counted, never a panic).
    pub malformed_datagrams: u64,
    /// Datagrams for sessions we do not have, or handshake packets we did not expect.
    pub unknown_session_datagrams: u64,
    /// Data packets that failed authentication or came before the session had keys.
    pub auth_failures: u64,
    /// Authentic packets received again (replays): dropped.
    pub replays_rejected: u64,
    /// Handshake messages that failed (forged, wrong static key, wrong psk).
    pub handshake_failures: u64,
    /// Initiations answered with a cookie challenge instead of handshake work.
    pub cookie_challenges: u64,
    /// Initiations dropped by the admission rate limits or with a bad cookie.
    pub initiations_dropped: u64,
    /// Responder handshakes that did the Diffie-Hellman work (accepted by admission).
    pub initiations_processed: u64,
    /// Our own initiations dropped because the peer's simultaneous one won.
    pub simultaneous_opens: u64,
    /// Events dropped because the application did not drain `poll_event` (bounded queue).
    pub events_dropped: u64,
}

/// Events waiting for `poll_event`, bounded by `EndpointConfig::max_pending_events`.
#[derive(Debug)]
struct EventQueue {
    queue: VecDeque<Event>,
    limit: usize,
    dropped: u64,
}

impl EventSink for EventQueue {
    fn push(&mut self, event: Event) {
        if self.queue.len() >= self.limit {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(event);
    }
}

/// Many sessions over one UDP socket, as a sans-IO state machine.
///
/// # Call order
/// 1. Feed inputs: [`handle_datagram`](Self::handle_datagram) for each received datagram,
///    [`handle_timeout`](Self::handle_timeout) when the instant from
///    [`poll_timeout`](Self::poll_timeout) has come, and application calls
///    ([`connect`](Self::connect), [`send`](Self::send), [`close`](Self::close)).
/// 2. Drain [`poll_transmit`](Self::poll_transmit) until it returns `None`, sending each
///    datagram; drain [`poll_event`](Self::poll_event) until `None`.
/// 3. Wait until a datagram arrives or [`poll_timeout`](Self::poll_timeout) passes, then
///    go to 1.
///
/// `now` must never go backwards between calls. `poll_transmit` returns `None` both when
/// nothing is queued and when pacing holds packets back; `poll_timeout` then names the
/// instant the pacer releases them. The endpoint never reads a clock and takes all
/// randomness from the seed, so a run is reproducible from (seed, inputs).
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    epoch: Instant,
    rng: ChaCha8Rng,
    sessions: BTreeMap<u32, Session>,
    /// Responder side: (remote, initiator's id) -> our session id, to answer a repeated SYN
    /// with the same session.
    by_syn: BTreeMap<(SocketAddr, u32), u32>,
    events: EventQueue,
    /// Cookie challenges to send: (destination, initiator id, cookie).
    cookies_out: VecDeque<(SocketAddr, u32, [u8; COOKIE_LEN])>,
    node_key: Arc<NodeKey>,
    cookie_jar: CookieJar,
    admission: Admission,
    /// Round-robin position among sessions for `poll_transmit`: the session whose turn
    /// it is (or the first id after it).
    cursor: u32,
    /// Datagrams the session at `cursor` has sent in its current run (see
    /// [`TRANSMIT_RUN`]).
    run: u32,
    /// What the endpoint leaves unused of the stated uplink, when one is stated.
    spare_uplink: Option<SpareUplink>,
    /// Holds the endpoint's datagrams to the stated uplink's rate, when one is stated.
    uplink_pacer: Option<UplinkPacer>,
    stats: EndpointStats,
}

impl Endpoint {
    pub fn new(config: EndpointConfig, now: Instant, seed: u64) -> Self {
        let limit = config.max_pending_events;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let node_key = config.node_key.clone().unwrap_or_else(|| Arc::new(NodeKey::generate(&mut rng)));
        let cookie_jar = CookieJar::new(now, &mut rng);
        let admission = Admission::new(config.admission.clone(), now);
        let spare_uplink =
            config.uplink_kbps.map(|kbps| SpareUplink::new(now, kbps, config.session.max_datagram_size));
        let uplink_pacer =
            config.uplink_kbps.map(|kbps| UplinkPacer::new(now, kbps, config.session.max_datagram_size));
        Self {
            config,
            epoch: now,
            rng,
            sessions: BTreeMap::new(),
            by_syn: BTreeMap::new(),
            events: EventQueue { queue: VecDeque::new(), limit, dropped: 0 },
            cookies_out: VecDeque::new(),
            node_key,
            cookie_jar,
            admission,
            cursor: 0,
            run: 0,
            spare_uplink,
            uplink_pacer,
            stats: EndpointStats::default(),
        }
    }

    pub fn max_datagram_size(&self) -> usize {
        self.config.session.max_datagram_size
    }

    /// This node's id: its static public key.
    pub fn node_id(&self) -> NodeId {
        self.node_key.id()
    }

    /// The peer's node id, once the handshake has authenticated it.
    pub fn peer_node(&self, session: SessionId) -> Option<NodeId> {
        self.sessions.get(&session.0).and_then(Session::peer_node)
    }

    /// Seed for one handshake's ephemeral key, from the endpoint's RNG (deterministic).
    fn handshake_seed(&mut self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }

    fn new_session_id(&mut self) -> u32 {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Open a session to `remote`, whose node id we do not know (Noise XX: the handshake
    /// tells us; see [`peer_node`](Self::peer_node)). [`Event::Connected`] follows.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> Result<SessionId, ConnectError> {
        self.open(now, remote, None)
    }

    /// Open a session to the node `peer` at `remote` (Noise IK: one round trip, and only
    /// the holder of `peer`'s secret key can answer).
    pub fn connect_to(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        peer: NodeId,
    ) -> Result<SessionId, ConnectError> {
        self.open(now, remote, Some(peer))
    }

    fn open(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        peer: Option<NodeId>,
    ) -> Result<SessionId, ConnectError> {
        if self.sessions.len() >= self.config.max_sessions {
            return Err(ConnectError::TooManySessions(self.config.max_sessions));
        }
        let seed = self.handshake_seed();
        let mut hs = Handshake::initiator(&self.node_key, peer, self.config.psk.as_ref(), seed)
            .map_err(|e| ConnectError::Handshake(e.to_string()))?;
        hs.write(&[]).map_err(|e| ConnectError::Handshake(e.to_string()))?;
        let id = self.new_session_id();
        let mut session = Session::new(&self.config.session, now, self.epoch, id, remote);
        session.start_initiator(now, hs);
        self.sessions.insert(id, session);
        Ok(SessionId(id))
    }

    /// Queue a message. It is delivered whole and exactly once, or abandoned at its deadline.
    pub fn send(
        &mut self,
        now: Instant,
        session: SessionId,
        data: Bytes,
        opts: SendOptions,
    ) -> Result<MessageId, SendError> {
        self.sessions.get_mut(&session.0).ok_or(SendError::UnknownSession)?.send(now, data, opts)
    }

    /// Orderly close: queued messages are still delivered (or abandoned at their
    /// deadlines), then the peer is told. [`Event::Closed`] follows.
    pub fn close(&mut self, now: Instant, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session.0) {
            s.close(now);
        }
    }

    /// A datagram from `remote`. Data packets are decrypted in place in `datagram` (no
    /// copy: the driver's receive buffer is opened where the kernel put it), so its
    /// contents are unspecified afterwards; a caller that needs the bytes again keeps a
    /// copy.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &mut [u8]) {
        self.stats.datagrams_received += 1;
        let Ok((header, body)) = Header::decode(datagram) else {
            self.stats.malformed_datagrams += 1;
            return;
        };
        match header.packet_type {
            PacketType::Syn => match SynBody::decode(body) {
                Ok(syn) => self.on_syn(now, remote, &header, &syn),
                Err(_) => self.stats.malformed_datagrams += 1,
            },
            PacketType::SynAck | PacketType::Finish => {
                let Some(s) = self.sessions.get_mut(&header.session_id).filter(|s| s.remote == remote) else {
                    self.stats.unknown_session_datagrams += 1;
                    return;
                };
                let result = if header.packet_type == PacketType::SynAck {
                    s.handle_syn_ack(now, &header, body, &mut self.events)
                } else {
                    s.handle_finish(now, body, &mut self.events)
                };
                match result {
                    Ok(()) => {}
                    Err(HandshakeRejected::Failed) => self.stats.handshake_failures += 1,
                    Err(HandshakeRejected::Unexpected) => self.stats.unknown_session_datagrams += 1,
                }
                self.reap(header.session_id);
            }
            PacketType::Cookie => {
                let Ok((initiator_id, cookie)) = wire::decode_cookie_body(body) else {
                    self.stats.malformed_datagrams += 1;
                    return;
                };
                match self.sessions.get_mut(&header.session_id) {
                    Some(s) if s.remote == remote && s.local_id == initiator_id => {
                        s.handle_cookie(now, cookie)
                    }
                    _ => self.stats.unknown_session_datagrams += 1,
                }
            }
            PacketType::Data => {
                let Some(s) = self.sessions.get_mut(&header.session_id).filter(|s| s.remote == remote) else {
                    // No reply: an unauthenticated "no such session" could be forged to
                    // tear sessions down, and replies to strangers make us a reflector.
                    self.stats.unknown_session_datagrams += 1;
                    return;
                };
                match s.handle_data(now, &header, datagram, &mut self.events) {
                    Received::Ok => {}
                    Received::Malformed => self.stats.malformed_datagrams += 1,
                    Received::NoKeys | Received::Unauthenticated => self.stats.auth_failures += 1,
                    Received::Replay => self.stats.replays_rejected += 1,
                }
                self.reap(header.session_id);
            }
        }
    }

    /// Half-open (XX responder) sessions: each holds handshake state for a peer that has
    /// not proven anything yet.
    fn half_open(&self) -> usize {
        self.sessions.values().filter(|s| s.is_half_open()).count()
    }

    fn on_syn(&mut self, now: Instant, remote: SocketAddr, header: &Header, syn: &SynBody<'_>) {
        let Some(pattern) = Pattern::from_wire(syn.pattern) else {
            self.stats.malformed_datagrams += 1;
            return;
        };
        // A repeat of a Syn we answered: resend the answer, no new work.
        if let Some(s) = self.by_syn.get(&(remote, syn.initiator_id)).and_then(|id| self.sessions.get_mut(id))
        {
            s.handle_duplicate_syn(now);
            return;
        }
        // Simultaneous open: we are connecting to the same address. Both sides compare
        // the two initiator ids and agree that the lower one's initiation goes on.
        let ours = self
            .sessions
            .iter()
            .find(|(_, s)| s.remote == remote && s.state == State::Connecting)
            .map(|(&id, _)| id);
        if let Some(our_id) = ours {
            if our_id < syn.initiator_id {
                self.stats.simultaneous_opens += 1;
                return;
            }
        }
        // Admission before any Diffie-Hellman work or state (see `crypto::admission`).
        self.cookie_jar.refresh(now, &mut self.rng);
        let cookie_valid = syn.cookie.map(|c| self.cookie_jar.verify(remote, syn.initiator_id, c));
        // Count the half-open session this initiation may create, so that there are
        // never more than `max_half_open` of them without cookies.
        let half_open = self.half_open() + usize::from(pattern == Pattern::Xx);
        match self.admission.admit(now, remote, half_open, cookie_valid) {
            Verdict::Accept => {}
            Verdict::Challenge => {
                self.stats.cookie_challenges += 1;
                if self.cookies_out.len() < MAX_PENDING_COOKIES {
                    let cookie = self.cookie_jar.mint(remote, syn.initiator_id);
                    self.cookies_out.push_back((remote, syn.initiator_id, cookie));
                }
                return;
            }
            Verdict::Drop => {
                self.stats.initiations_dropped += 1;
                return;
            }
        }
        if ours.is_none() && self.sessions.len() >= self.config.max_sessions {
            self.stats.initiations_dropped += 1;
            return;
        }
        self.stats.initiations_processed += 1;
        let seed = self.handshake_seed();
        let Ok(mut hs) = Handshake::responder(&self.node_key, pattern, self.config.psk.as_ref(), seed) else {
            self.stats.handshake_failures += 1;
            return;
        };
        if hs.read(syn.noise).is_err() {
            self.stats.handshake_failures += 1;
            return;
        }
        // Our session id travels in the encrypted payload of the second message. On a
        // simultaneous open we lose, our connecting session becomes the responder and
        // keeps its id (the application holds it).
        let id = match ours {
            Some(id) => id,
            None => self.new_session_id(),
        };
        if hs.write(&id.to_be_bytes()).is_err() {
            self.stats.handshake_failures += 1;
            return;
        }
        if ours.is_some() {
            self.stats.simultaneous_opens += 1;
        }
        let mut session = match ours.and_then(|id| self.sessions.remove(&id)) {
            Some(s) => s,
            None => Session::new(&self.config.session, now, self.epoch, id, remote),
        };
        session.start_responder(now, header, syn.initiator_id, hs, &mut self.events);
        self.sessions.insert(id, session);
        self.by_syn.insert((remote, syn.initiator_id), id);
        self.reap(id);
    }

    /// Remove a session that reached `Closed`.
    fn reap(&mut self, id: u32) {
        if self.sessions.get(&id).is_some_and(|s| s.state == State::Closed) {
            if let Some(s) = self.sessions.remove(&id) {
                self.by_syn.remove(&(s.remote, s.peer_id));
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.poll_timeout().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.handle_timeout(now, &mut self.events);
            }
            self.reap(id);
        }
    }

    /// Write the next datagram into `buf` (at least [`max_datagram_size`](Self::max_datagram_size)
    /// bytes long) and say where it goes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((destination, initiator_id, cookie)) = self.cookies_out.pop_front() {
            let header = Header {
                packet_type: PacketType::Cookie,
                flags: 0,
                session_id: initiator_id,
                timestamp_us: now.saturating_duration_since(self.epoch).as_micros() as u32,
                timestamp_diff_us: 0,
                window: 0,
                packet_number: 0,
            };
            header.encode(buf);
            let mut w = Writer::new(buf, HEADER_LEN);
            wire::encode_cookie_body(&mut w, initiator_id, &cookie);
            let size = w.pos();
            self.on_datagram_sent(now, size);
            return Some(Transmit { destination, size });
        }
        if let Some(pacer) = self.uplink_pacer.as_mut() {
            pacer.holding = !pacer.may_send(now);
            if pacer.holding {
                return None;
            }
        }
        let spare = self.spare_uplink.as_mut().is_some_and(|u| u.has_spare(now));
        // With a pacer the endpoint chooses what takes the uplink's next datagram: Control
        // and Stream data of every session go before Background data of any (as `rill
        // sim`'s uplink queue serves them by class), so a newcomer's keyframe group on one
        // session does not hold up the live chunks to the others; but Background waiting
        // gets a turn after every [`BACKGROUND_TURN_EVERY`] datagrams, so that a repair is
        // late rather than abandoned when the live chunks alone would fill the uplink.
        // Without a pacer, each session sends as its own window allows.
        let passes: &[SendClasses] = match &self.uplink_pacer {
            None => &[SendClasses::All],
            Some(p) if p.datagrams_since_background >= BACKGROUND_TURN_EVERY => {
                &[SendClasses::ControlOnly, SendClasses::BackgroundOnly, SendClasses::All]
            }
            Some(_) => &[SendClasses::ControlOnly, SendClasses::NotBackground, SendClasses::All],
        };
        let mut found = None;
        for &classes in passes {
            found = self.next_session_datagram(now, buf, spare, classes);
            if let (Some(_), Some(pacer)) = (&found, self.uplink_pacer.as_mut()) {
                // Only a datagram that went ahead of Background counts toward its turn.
                match classes {
                    SendClasses::ControlOnly => {}
                    SendClasses::NotBackground => pacer.datagrams_since_background += 1,
                    SendClasses::All | SendClasses::BackgroundOnly => pacer.datagrams_since_background = 0,
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some((id, transmit)) = found else {
            self.run = 0;
            return None;
        };
        self.run = if id == self.cursor { self.run + 1 } else { 1 };
        self.cursor = id;
        if self.run >= TRANSMIT_RUN {
            self.cursor = id.wrapping_add(1);
            self.run = 0;
        }
        self.on_datagram_sent(now, transmit.size);
        Some(transmit)
    }

    /// The next datagram of the sessions, from the session whose turn it is: it keeps
    /// sending until it has nothing (or its run is used up), then the sessions after it
    /// take their turns. `classes`: which classes' data may start a packet.
    fn next_session_datagram(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        spare: bool,
        classes: SendClasses,
    ) -> Option<(u32, Transmit)> {
        let (after, before) = (self.cursor.., ..self.cursor);
        for (&id, s) in self.sessions.range_mut(after) {
            if let Some(size) = s.poll_transmit(now, buf, spare, classes) {
                return Some((id, Transmit { destination: s.remote, size }));
            }
        }
        for (&id, s) in self.sessions.range_mut(before) {
            if let Some(size) = s.poll_transmit(now, buf, spare, classes) {
                return Some((id, Transmit { destination: s.remote, size }));
            }
        }
        None
    }

    /// Every datagram `poll_transmit` hands out is counted, and metered against the spare
    /// uplink and the uplink pacer.
    fn on_datagram_sent(&mut self, now: Instant, size: usize) {
        self.stats.datagrams_sent += 1;
        if let Some(u) = self.spare_uplink.as_mut() {
            u.on_sent(now, size);
        }
        if let Some(p) = self.uplink_pacer.as_mut() {
            p.on_sent(now, size);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.queue.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        // The uplink pacer holds datagrams back: nothing leaves before it lets the next one
        // go (at most two datagrams' time at the stated rate), so the sessions' timers (an
        // ack due, a loss to declare) wait for it too. Waking for them earlier would find
        // the pacer still holding; an ack already due would wake the driver again and
        // again until then.
        if let Some(at) = self.uplink_pacer.as_ref().and_then(UplinkPacer::release_at) {
            return Some(at);
        }
        let sessions = self.sessions.values().filter_map(Session::poll_timeout).min();
        // Background waiting for the uplink's spare: wake when there is some again.
        let spare = self
            .spare_uplink
            .as_ref()
            .and_then(SpareUplink::spare_at)
            .filter(|_| self.sessions.values().any(Session::background_waits_for_spare));
        sessions.into_iter().chain(spare).min()
    }

    pub fn session_stats(&self, session: SessionId) -> Option<SessionStats> {
        self.sessions.get(&session.0).map(Session::stats)
    }

    /// Bytes of application data of `class` not yet acknowledged on `session`.
    pub fn queued_bytes(&self, session: SessionId, class: Class) -> usize {
        self.sessions.get(&session.0).map_or(0, |s| s.queued_bytes(class))
    }

    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            sessions: self.sessions.len(),
            events_dropped: self.events.dropped,
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    //! Two endpoints over a simple in-memory pipe (fixed delay, scripted loss), for the
    //! core's own behaviour. Link-model tests live in `vlink`.
    use super::*;
    use crate::config::SessionConfig;
    use crate::congestion::{AckSample, Controller, ControllerFactory};
    use crate::rtt::RttEstimator;
    use std::sync::Arc;

    /// A fixed window, so reliability tests do not depend on a controller's dynamics.
    #[derive(Debug)]
    struct FixedWindow(usize);
    impl Controller for FixedWindow {
        fn on_packet_sent(&mut self, _: Instant, _: usize, _: usize) {}
        fn on_ack(&mut self, _: Instant, _: &AckSample, _: &RttEstimator) {}
        fn on_delay_sample(&mut self, _: Instant, _: i64) {}
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: usize) {}
        fn on_retransmission_timeout(&mut self, _: Instant) {}
        fn window(&self) -> usize {
            self.0
        }
        fn pacing_rate(&self, _: &RttEstimator) -> f64 {
            f64::INFINITY
        }
        fn queueing_delay(&self) -> Option<Duration> {
            None
        }
        fn name(&self) -> &'static str {
            "fixed"
        }
    }
    #[derive(Debug)]
    struct FixedWindowConfig(usize);
    impl ControllerFactory for FixedWindowConfig {
        fn build(&self, _: Instant, _: usize) -> Box<dyn Controller> {
            Box::new(FixedWindow(self.0))
        }
    }

    pub(crate) fn test_config() -> EndpointConfig {
        EndpointConfig {
            session: SessionConfig {
                congestion: Arc::new(FixedWindowConfig(64 * 1200)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Decides, per datagram (running index, bytes), whether the pipe loses it.
    type DropRule = Box<dyn FnMut(u64, &[u8]) -> bool>;

    struct Pair {
        now: Instant,
        a: Endpoint,
        b: Endpoint,
        a_addr: SocketAddr,
        b_addr: SocketAddr,
        delay: Duration,
        /// (arrival, to_b, bytes)
        in_flight: Vec<(Instant, bool, Vec<u8>)>,
        /// Drop the datagram if this returns true (called with a running index).
        drop: DropRule,
        sent: u64,
        a_events: Vec<Event>,
        b_events: Vec<Event>,
    }

    impl Pair {
        fn new(config: EndpointConfig) -> Self {
            let now = Instant::now();
            Self {
                now,
                a: Endpoint::new(config.clone(), now, 1),
                b: Endpoint::new(config, now, 2),
                a_addr: "127.0.0.1:1000".parse().unwrap(),
                b_addr: "127.0.0.1:2000".parse().unwrap(),
                delay: Duration::from_millis(10),
                in_flight: Vec::new(),
                drop: Box::new(|_, _| false),
                sent: 0,
                a_events: Vec::new(),
                b_events: Vec::new(),
            }
        }

        fn flush(&mut self) {
            let mut buf = vec![0u8; 2048];
            for to_b in [true, false] {
                loop {
                    let ep = if to_b { &mut self.a } else { &mut self.b };
                    let Some(t) = ep.poll_transmit(self.now, &mut buf) else { break };
                    let data = buf[..t.size].to_vec();
                    self.sent += 1;
                    if !(self.drop)(self.sent, &data) {
                        self.in_flight.push((self.now + self.delay, to_b, data));
                    }
                }
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.b_events.push(e);
            }
        }

        /// Advance to the next event; false if nothing is left to do before `end`.
        fn step(&mut self, end: Instant) -> bool {
            self.flush();
            let next_arrival = self.in_flight.iter().map(|x| x.0).min();
            let next =
                [next_arrival, self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min();
            let Some(next) = next.filter(|&t| t <= end) else {
                self.now = end;
                return false;
            };
            self.now = self.now.max(next);
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|x| x.0 <= now);
            self.in_flight = rest;
            for (_, to_b, mut data) in due {
                if to_b {
                    self.b.handle_datagram(now, self.a_addr, &mut data);
                } else {
                    self.a.handle_datagram(now, self.b_addr, &mut data);
                }
            }
            if self.a.poll_timeout().is_some_and(|t| t <= now) {
                self.a.handle_timeout(now);
            }
            if self.b.poll_timeout().is_some_and(|t| t <= now) {
                self.b.handle_timeout(now);
            }
            true
        }

        fn run_for(&mut self, d: Duration) {
            let end = self.now + d;
            let mut steps = 0;
            while self.step(end) {
                steps += 1;
                assert!(steps < 10_000_000, "runaway simulation");
            }
            self.flush();
        }

        fn connect(&mut self) -> (SessionId, SessionId) {
            let sa = self.a.connect(self.now, self.b_addr).unwrap();
            self.run_for(Duration::from_millis(100));
            let sb = self
                .b_events
                .iter()
                .find_map(|e| match e {
                    Event::Accepted { session, .. } => Some(*session),
                    _ => None,
                })
                .expect("accepted");
            assert!(self.a_events.contains(&Event::Connected { session: sa, remote: self.b_addr }));
            (sa, sb)
        }

        fn messages_at_b(&self) -> Vec<Bytes> {
            self.b_events
                .iter()
                .filter_map(|e| match e {
                    Event::Message { data, .. } => Some(data.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    fn message(i: u32, len: usize) -> Bytes {
        let mut v = vec![(i % 251) as u8; len];
        v[..4].copy_from_slice(&i.to_be_bytes());
        Bytes::from(v)
    }

    #[test]
    fn handshake_and_transfer() {
        let mut p = Pair::new(test_config());
        let (sa, _) = p.connect();
        for i in 0..50 {
            p.a.send(p.now, sa, message(i, 20_000), SendOptions::reliable(Class::Stream)).unwrap();
        }
        p.run_for(Duration::from_secs(2));
        let got = p.messages_at_b();
        assert_eq!(got.len(), 50);
        let mut ids: Vec<u32> = got.iter().map(|m| u32::from_be_bytes(m[..4].try_into().unwrap())).collect();
        ids.sort();
        assert_eq!(ids, (0..50).collect::<Vec<_>>());
        let st = p.a.session_stats(sa).unwrap();
        assert_eq!(st.messages_acked, 50);
        assert_eq!(st.bytes_in_flight, 0);
    }

    #[test]
    fn exactly_once_under_heavy_loss() {
        let mut p = Pair::new(test_config());
        let (sa, _) = p.connect();
        let mut x: u64 = 12345;
        p.drop = Box::new(move |_, _| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 100 < 20
        });
        for i in 0..100 {
            p.a.send(
                p.now,
                sa,
                message(i, 4 + (i as usize * 997) % 30_000),
                SendOptions::reliable(Class::Stream),
            )
            .unwrap();
        }
        p.run_for(Duration::from_secs(30));
        let got = p.messages_at_b();
        assert_eq!(got.len(), 100, "every message exactly once");
        for m in &got {
            let i = u32::from_be_bytes(m[..4].try_into().unwrap());
            assert_eq!(*m, message(i, 4 + (i as usize * 997) % 30_000));
        }
        assert!(p.a.session_stats(sa).unwrap().packets_lost > 0);
    }

    #[test]
    fn deadline_abandons_and_tells_receiver() {
        let mut p = Pair::new(test_config());
        let (sa, sb) = p.connect();
        // Drop everything a sends for a while: the message cannot make its deadline.
        let blackout_end = 1_000_000u64;
        p.drop = Box::new(move |n, _| n < blackout_end);
        let deadline = p.now + Duration::from_millis(300);
        let id =
            p.a.send(p.now, sa, message(7, 5000), SendOptions::with_deadline(Class::Stream, deadline))
                .unwrap();
        p.run_for(Duration::from_millis(500));
        assert!(p.a_events.contains(&Event::SendAbandoned { session: sa, message: id }));
        // Heal the link: the abandon notice gets through, the message never does.
        p.drop = Box::new(|_, _| false);
        let later = p.a.send(p.now, sa, message(8, 100), SendOptions::reliable(Class::Stream)).unwrap();
        p.run_for(Duration::from_secs(5));
        assert!(p.b_events.contains(&Event::PeerAbandoned { session: sb, message: id }));
        let got = p.messages_at_b();
        assert_eq!(got, vec![message(8, 100)]);
        assert_eq!(p.a.session_stats(sa).unwrap().messages_abandoned_sent, 1);
        assert_eq!(p.b.session_stats(sb).unwrap().messages_abandoned_received, 1);
        let _ = later;
    }

    #[test]
    fn no_head_of_line_blocking_between_messages() {
        let mut p = Pair::new(test_config());
        let (sa, _) = p.connect();
        // Lose the first data packet of the first (large) message only.
        let start = p.sent;
        p.drop = Box::new(move |n, d| n == start + 1 && d.len() > 200);
        p.a.send(p.now, sa, message(1, 10_000), SendOptions::reliable(Class::Stream)).unwrap();
        p.a.send(p.now, sa, message(2, 50), SendOptions::reliable(Class::Stream)).unwrap();
        let t0 = p.now;
        // One-way delay is 10 ms: message 2 must arrive in well under a retransmission.
        p.run_for(Duration::from_millis(15));
        let got = p.messages_at_b();
        assert_eq!(got, vec![message(2, 50)], "the small message is not held behind the lost fragment");
        p.run_for(Duration::from_secs(2));
        assert_eq!(p.messages_at_b().len(), 2);
        assert!(p.now > t0);
    }

    #[test]
    fn orderly_close_delivers_queued_data_first() {
        let mut p = Pair::new(test_config());
        let (sa, sb) = p.connect();
        for i in 0..10 {
            p.a.send(p.now, sa, message(i, 3000), SendOptions::reliable(Class::Background)).unwrap();
        }
        p.a.close(p.now, sa);
        assert_eq!(
            p.a.send(p.now, sa, message(99, 10), SendOptions::reliable(Class::Stream)),
            Err(SendError::Closed)
        );
        // The peer drains for 3 RTOs (RFC 9000 §10.2 uses 3 PTOs) to re-ack a lost CLOSE.
        p.run_for(Duration::from_secs(5));
        assert_eq!(p.messages_at_b().len(), 10);
        assert!(p.a_events.contains(&Event::Closed { session: sa, reason: CloseReason::Local }));
        assert!(p.b_events.contains(&Event::Closed { session: sb, reason: CloseReason::Peer }));
        assert_eq!(p.a.stats().sessions, 0);
        assert_eq!(p.b.stats().sessions, 0);
    }

    #[test]
    fn idle_timeout_and_keepalive() {
        let mut p = Pair::new(test_config());
        let (sa, sb) = p.connect();
        // Keepalives hold an idle session open past the idle timeout.
        p.run_for(Duration::from_secs(40));
        assert!(p.a.session_stats(sa).is_some() && p.b.session_stats(sb).is_some());
        // Cut the link: both sides time out.
        p.drop = Box::new(|_, _| true);
        p.run_for(Duration::from_secs(40));
        assert!(p.a_events.contains(&Event::Closed { session: sa, reason: CloseReason::IdleTimeout }));
        assert!(p.b_events.contains(&Event::Closed { session: sb, reason: CloseReason::IdleTimeout }));
    }

    #[test]
    fn a_keepalive_held_back_by_the_send_path_does_not_fire_again_and_again() {
        let mut p = Pair::new(test_config());
        let (sa, _) = p.connect();
        p.run_for(Duration::from_millis(100));
        assert_eq!(p.a.session_stats(sa).unwrap().bytes_in_flight, 0, "the handshake is acked");
        // The keepalive comes due while nothing is polled to send (as when the pacer holds
        // the packet back): once handled, its deadline is not due still.
        let due = p.a.poll_timeout().unwrap();
        let keepalive = p.now + test_config().session.keepalive_interval;
        assert!(due <= keepalive, "the keepalive is the next timer at the latest: {:?}", due - p.now);
        p.a.handle_timeout(keepalive);
        let next = p.a.poll_timeout().unwrap();
        assert!(next > keepalive, "a timer still due {:?} ago", keepalive - next);
        // The keepalive goes when the send path lets it: an ack-eliciting packet, in flight.
        let mut buf = [0u8; 1500];
        assert!(p.a.poll_transmit(keepalive, &mut buf).is_some(), "a packet is sent");
        assert!(p.a.session_stats(sa).unwrap().bytes_in_flight > 0, "the packet is the ping");
    }

    #[test]
    fn handshake_survives_loss_and_times_out_without_peer() {
        let mut p = Pair::new(test_config());
        p.drop = Box::new(|n, _| n <= 3);
        p.connect_lossy();
        let mut q = Pair::new(test_config());
        q.drop = Box::new(|_, _| true);
        let s = q.a.connect(q.now, q.b_addr).unwrap();
        q.run_for(Duration::from_secs(15));
        assert!(q.a_events.contains(&Event::Closed { session: s, reason: CloseReason::HandshakeTimeout }));
    }

    impl Pair {
        fn connect_lossy(&mut self) {
            let sa = self.a.connect(self.now, self.b_addr).unwrap();
            self.run_for(Duration::from_secs(5));
            assert!(self
                .a_events
                .iter()
                .any(|e| matches!(e, Event::Connected { session, .. } if *session == sa)));
            let accepted = self.b_events.iter().filter(|e| matches!(e, Event::Accepted { .. })).count();
            assert_eq!(accepted, 1, "a repeated SYN maps to the same session");
        }
    }

    #[test]
    fn garbage_and_unknown_sessions_are_counted_not_fatal() {
        let mut p = Pair::new(test_config());
        let (sa, _) = p.connect();
        let now = p.now;
        p.b.handle_datagram(now, p.a_addr, &mut []);
        p.b.handle_datagram(now, p.a_addr, &mut [0xff; 100]);
        let mut unknown = [0u8; 40];
        Header {
            packet_type: PacketType::Data,
            flags: 0,
            session_id: 424242,
            timestamp_us: 0,
            timestamp_diff_us: 0,
            window: 0,
            packet_number: 0,
        }
        .encode(&mut unknown);
        p.b.handle_datagram(now, p.a_addr, &mut unknown);
        let st = p.b.stats();
        assert_eq!(st.malformed_datagrams, 2);
        assert_eq!(st.unknown_session_datagrams, 1);
        // The session still works.
        p.a.send(p.now, sa, message(1, 100), SendOptions::reliable(Class::Control)).unwrap();
        p.run_for(Duration::from_millis(200));
        assert_eq!(p.messages_at_b().len(), 1);
    }

    #[test]
    fn sessions_take_turns_in_runs() {
        let config = EndpointConfig {
            session: SessionConfig { congestion: Arc::new(FixedWindowConfig(1 << 20)), ..Default::default() },
            ..Default::default()
        };
        let mut p = Pair::new(config);
        // Two sessions to one peer: datagrams tell them apart by the session id on them.
        let sa1 = p.a.connect(p.now, p.b_addr).unwrap();
        let sa2 = p.a.connect(p.now, p.b_addr).unwrap();
        p.run_for(Duration::from_millis(100));
        for s in [sa1, sa2] {
            p.a.send(p.now, s, message(1, 200 * 1100), SendOptions::reliable(Class::Stream)).unwrap();
        }
        let mut buf = vec![0u8; 2048];
        let mut runs: Vec<(u32, u32)> = Vec::new();
        while let Some(t) = p.a.poll_transmit(p.now, &mut buf) {
            let (header, _) = Header::decode(&buf[..t.size]).unwrap();
            match runs.last_mut() {
                Some((id, n)) if *id == header.session_id => *n += 1,
                _ => runs.push((header.session_id, 1)),
            }
        }
        let total: u32 = runs.iter().map(|r| r.1).sum();
        assert!(total as usize * 1200 >= 2 * 200 * 1100, "both messages went out: {runs:?}");
        // Each session sends a run of TRANSMIT_RUN datagrams (one GSO message), then
        // the other takes its turn; only the tails are shorter.
        assert!(runs.iter().all(|r| r.1 <= TRANSMIT_RUN), "{runs:?}");
        assert!(runs.iter().filter(|r| r.1 == TRANSMIT_RUN).count() >= 4, "{runs:?}");
        assert!(runs.windows(2).all(|w| w[0].0 != w[1].0), "{runs:?}");
    }

    #[test]
    fn limits_are_enforced() {
        let mut p = Pair::new(test_config());
        let (sa, _) = p.connect();
        let big = Bytes::from(vec![0u8; (4 << 20) + 1]);
        assert!(matches!(
            p.a.send(p.now, sa, big, SendOptions::reliable(Class::Stream)),
            Err(SendError::MessageTooLarge { .. })
        ));
        let mut queued = 0;
        let err = loop {
            match p.a.send(
                p.now,
                sa,
                Bytes::from(vec![0u8; 1 << 20]),
                SendOptions::reliable(Class::Background),
            ) {
                Ok(_) => queued += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(queued, 8);
        assert!(matches!(err, SendError::BufferFull { .. }));
        assert_eq!(
            p.a.send(p.now, SessionId(12345), Bytes::new(), SendOptions::reliable(Class::Stream)),
            Err(SendError::UnknownSession)
        );
    }
}
