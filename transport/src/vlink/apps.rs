//! Traffic sources and sinks for tests and `rill bench transport`.
//!
//! - [`Sender`]: one session to a remote, carrying any number of flows at once: bulk flows
//!   (keep a class's send queue topped up) and at most one paced stream with deadlines.
//!   That is how rill runs between two peers (the stream and background repair share a
//!   session), and how a test sets up a stream next to bulk data.
//! - [`BulkSender`] and [`StreamSource`]: the two common shapes of a [`Sender`], as their
//!   own types so a scenario reads what it runs and `Simulation::app` finds them by type.
//! - [`Sink`]: accepts sessions, counts what arrives per class, and measures stream
//!   lateness from the header [`StreamSource`] puts on every message.
//! - [`Echo`]: accepts sessions and sends every message back (round trips, exactly-once).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::harness::Application;
use super::percentile;
use crate::endpoint::{Class, CloseReason, Endpoint, Event, SendOptions, SessionId};

/// How often senders top their queues up when no event woke them (virtual time).
pub const TOP_UP_INTERVAL: Duration = Duration::from_millis(1);

/// Stream messages start with (index: u64, send time in µs since the epoch: u64), both
/// big-endian. The epoch is the sender's start unless set with `with_epoch`.
pub const STREAM_HEADER_LEN: usize = 16;

pub fn encode_stream_header(index: u64, sent_us: u64) -> [u8; STREAM_HEADER_LEN] {
    let mut h = [0; STREAM_HEADER_LEN];
    h[..8].copy_from_slice(&index.to_be_bytes());
    h[8..].copy_from_slice(&sent_us.to_be_bytes());
    h
}

/// (index, send time in µs since the epoch), or `None` if `data` is too short.
pub fn decode_stream_header(data: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let sent_us = u64::from_be_bytes(data.get(8..STREAM_HEADER_LEN)?.try_into().ok()?);
    Some((index, sent_us))
}

/// Keeps `keep_queued` bytes of one class queued (unsent or unacknowledged) on the session.
#[derive(Debug, Clone)]
struct BulkFlow {
    class: Class,
    message: Bytes,
    keep_queued: usize,
    sent_messages: u64,
}

impl BulkFlow {
    fn top_up(&mut self, now: Instant, ep: &mut Endpoint, session: SessionId) {
        // At most enough messages to fill the target from empty, so an endpoint whose
        // queued_bytes does not grow cannot spin us.
        let most = self.keep_queued / self.message.len() + 1;
        for _ in 0..most {
            if ep.queued_bytes(session, self.class) >= self.keep_queued {
                return;
            }
            // Refusal (send buffer full) just means the queue is as full as it gets.
            if ep.send(now, session, self.message.clone(), SendOptions::reliable(self.class)).is_err() {
                return;
            }
            self.sent_messages += 1;
        }
    }
}

/// A constant-rate stream of `message_size` messages, each with a deadline.
#[derive(Debug, Clone)]
struct StreamFlow {
    interval: Duration,
    message_size: usize,
    deadline: Duration,
    next_send: Option<Instant>,
    /// Send time of every message, by index (ascending; grows with the run, 8 bytes each).
    sent_at: Vec<Instant>,
    /// Messages the endpoint refused (send buffer full): lost, and counted as not on time.
    refused: u64,
}

impl StreamFlow {
    fn send_one(&mut self, now: Instant, epoch: Instant, ep: &mut Endpoint, session: SessionId) {
        let sent_us = now.saturating_duration_since(epoch).as_micros() as u64;
        let mut m = vec![0x57; self.message_size];
        m[..STREAM_HEADER_LEN].copy_from_slice(&encode_stream_header(self.sent_at.len() as u64, sent_us));
        let opts = SendOptions::with_deadline(Class::Stream, now + self.deadline);
        if ep.send(now, session, Bytes::from(m), opts).is_err() {
            self.refused += 1;
        }
        self.sent_at.push(now);
    }
}

/// Where a [`Sender`]'s session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderState {
    /// Not started yet.
    Idle,
    Connecting,
    Connected,
    /// `connect` was refused (too many sessions).
    Refused,
    Closed(CloseReason),
}

/// One session to `remote` carrying bulk flows and at most one stream (see module docs).
/// Connects on start; sends only while connected and before `until`.
#[derive(Debug)]
pub struct Sender {
    remote: SocketAddr,
    bulk: Vec<BulkFlow>,
    stream: Option<StreamFlow>,
    until: Option<Instant>,
    epoch: Option<Instant>,
    state: SenderState,
    session: Option<SessionId>,
    connected_at: Option<Instant>,
    next_tick: Option<Instant>,
    send_abandoned: u64,
}

impl Sender {
    pub fn new(remote: SocketAddr) -> Self {
        Self {
            remote,
            bulk: Vec::new(),
            stream: None,
            until: None,
            epoch: None,
            state: SenderState::Idle,
            session: None,
            connected_at: None,
            next_tick: None,
            send_abandoned: 0,
        }
    }

    /// Add a bulk flow: reliable `message_size`-byte messages of `class`, keeping
    /// `keep_queued` bytes of that class queued on the session.
    pub fn with_bulk(mut self, class: Class, message_size: usize, keep_queued: usize) -> Self {
        let message = Bytes::from(vec![0xb5; message_size.max(1)]);
        self.bulk.push(BulkFlow { class, message, keep_queued, sent_messages: 0 });
        self
    }

    /// Set the stream: a `message_size`-byte Stream-class message every
    /// `message_size·8/rate_bps`, each abandoned `deadline` after it was sent. Message
    /// sizes below [`STREAM_HEADER_LEN`] are raised to it. Replaces an earlier stream.
    pub fn with_stream(mut self, rate_bps: u64, message_size: usize, deadline: Duration) -> Self {
        let message_size = message_size.max(STREAM_HEADER_LEN);
        let interval_ns = message_size as u128 * 8 * 1_000_000_000 / rate_bps.max(1) as u128;
        let interval = Duration::from_nanos(interval_ns.max(1) as u64);
        self.stream = Some(StreamFlow {
            interval,
            message_size,
            deadline,
            next_send: None,
            sent_at: Vec::new(),
            refused: 0,
        });
        self
    }

    /// Stop sending new messages at `end` (what is queued still drains).
    pub fn until(mut self, end: Instant) -> Self {
        self.until = Some(end);
        self
    }

    /// Stream send times are written relative to `epoch` (default: this host's start).
    /// Give the [`Sink`] the same epoch if the two hosts start at different instants.
    pub fn with_epoch(mut self, epoch: Instant) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
    pub fn state(&self) -> SenderState {
        self.state
    }
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }
    /// Messages of ours the endpoint abandoned at their deadline.
    pub fn send_abandoned(&self) -> u64 {
        self.send_abandoned
    }
    /// Bulk messages handed to the endpoint, over all bulk flows of `class`.
    pub fn bulk_messages_sent(&self, class: Class) -> u64 {
        self.bulk.iter().filter(|b| b.class == class).map(|b| b.sent_messages).sum()
    }
    /// Stream messages sent (refused ones included: they count as not on time).
    pub fn stream_sent(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.sent_at.len())
    }
    /// Stream messages the endpoint refused (send buffer full).
    pub fn stream_refused(&self) -> u64 {
        self.stream.as_ref().map_or(0, |s| s.refused)
    }
    /// Stream messages whose deadline had passed by `t`: the fair denominator of the
    /// on-time fraction (later ones could still arrive).
    pub fn stream_due_by(&self, t: Instant) -> usize {
        self.stream.as_ref().map_or(0, |s| s.sent_at.partition_point(|&sent| sent + s.deadline <= t))
    }

    fn sending(&self, now: Instant) -> bool {
        self.state == SenderState::Connected && self.until.is_none_or(|end| now < end)
    }

    fn top_up(&mut self, now: Instant, ep: &mut Endpoint) {
        if let (true, Some(session)) = (self.sending(now), self.session) {
            for flow in &mut self.bulk {
                flow.top_up(now, ep, session);
            }
        }
    }
}

impl Application for Sender {
    fn on_start(&mut self, now: Instant, ep: &mut Endpoint) {
        self.epoch.get_or_insert(now);
        match ep.connect(now, self.remote) {
            Ok(session) => {
                self.session = Some(session);
                self.state = SenderState::Connecting;
            }
            Err(_) => self.state = SenderState::Refused,
        }
    }

    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) {
        let ours = |s: SessionId| Some(s) == self.session;
        match event {
            Event::Connected { session, .. } if ours(session) => {
                self.state = SenderState::Connected;
                self.connected_at = Some(now);
                self.next_tick = Some(now + TOP_UP_INTERVAL);
                if let Some(stream) = &mut self.stream {
                    stream.next_send = Some(now);
                }
            }
            Event::Closed { session, reason } if ours(session) => {
                self.state = SenderState::Closed(reason);
                self.next_tick = None;
            }
            Event::SendAbandoned { session, .. } if ours(session) => self.send_abandoned += 1,
            _ => {}
        }
        // Every event (acks free queue space behind the scenes) is a chance to top up.
        self.top_up(now, ep);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Past `until`, the first timeout clears both timers.
        if self.state != SenderState::Connected {
            return None;
        }
        let stream = self.stream.as_ref().and_then(|s| s.next_send);
        [stream, self.next_tick].into_iter().flatten().min()
    }

    fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        let (Some(session), Some(epoch)) = (self.session, self.epoch) else { return };
        if !self.sending(now) {
            self.next_tick = None;
            if let Some(stream) = &mut self.stream {
                stream.next_send = None;
            }
            return;
        }
        let until = self.until;
        if let Some(stream) = &mut self.stream {
            // Catch up if the timer fired late: every due slot before `until` gets its message.
            while let Some(t) = stream.next_send.filter(|&t| t <= now && until.is_none_or(|end| t < end)) {
                stream.send_one(now, epoch, ep, session);
                stream.next_send = Some(t + stream.interval);
            }
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.next_tick = Some(now + TOP_UP_INTERVAL);
        }
        self.top_up(now, ep);
    }
}

/// Connects to `remote` and keeps one bulk flow going.
#[derive(Debug)]
pub struct BulkSender(Sender);

impl BulkSender {
    pub fn new(remote: SocketAddr, class: Class, message_size: usize, keep_queued: usize) -> Self {
        Self(Sender::new(remote).with_bulk(class, message_size, keep_queued))
    }
    pub fn until(self, end: Instant) -> Self {
        Self(self.0.until(end))
    }
    pub fn session(&self) -> Option<SessionId> {
        self.0.session()
    }
    pub fn sender(&self) -> &Sender {
        &self.0
    }
}

/// A constant-bitrate stream of messages with a deadline each, optionally with a
/// background bulk flow on the same session (as rill runs between two peers).
#[derive(Debug)]
pub struct StreamSource(Sender);

impl StreamSource {
    pub fn new(remote: SocketAddr, rate_bps: u64, message_size: usize, deadline: Duration) -> Self {
        Self(Sender::new(remote).with_stream(rate_bps, message_size, deadline))
    }
    /// Add a Background bulk flow on the stream's session.
    pub fn with_background(self, message_size: usize, keep_queued: usize) -> Self {
        Self(self.0.with_bulk(Class::Background, message_size, keep_queued))
    }
    pub fn until(self, end: Instant) -> Self {
        Self(self.0.until(end))
    }
    pub fn with_epoch(self, epoch: Instant) -> Self {
        Self(self.0.with_epoch(epoch))
    }
    pub fn session(&self) -> Option<SessionId> {
        self.0.session()
    }
    pub fn sent(&self) -> usize {
        self.0.stream_sent()
    }
    /// See [`Sender::stream_due_by`].
    pub fn sent_due_by(&self, t: Instant) -> usize {
        self.0.stream_due_by(t)
    }
    pub fn sender(&self) -> &Sender {
        &self.0
    }
}

macro_rules! delegate_application {
    ($t:ty) => {
        impl Application for $t {
            fn on_start(&mut self, now: Instant, ep: &mut Endpoint) {
                self.0.on_start(now, ep)
            }
            fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) {
                self.0.on_event(now, ep, event)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                self.0.poll_timeout()
            }
            fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
                self.0.handle_timeout(now, ep)
            }
        }
    };
}
delegate_application!(BulkSender);
delegate_application!(StreamSource);

/// On-time figures for stream messages (METRICS.md: a message is on time if it arrived
/// whole within its deadline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamReport {
    /// Messages whose deadline had passed (the denominator).
    pub due: usize,
    pub on_time: usize,
    /// Arrived, but after the deadline.
    pub late: usize,
    /// Never arrived.
    pub lost: usize,
    /// on_time / due (0 when nothing was due).
    pub on_time_fraction: f64,
}

/// Lateness (arrival minus send time) of stream messages, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatenessFigures {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

/// Accepts sessions and counts what arrives. Stream figures assume one [`StreamSource`]
/// (or stream [`Sender`]) sends to this sink: arrivals are keyed by message index.
#[derive(Debug, Default)]
pub struct Sink {
    epoch: Option<Instant>,
    start: Option<Instant>,
    class_messages: [u64; 3],
    class_bytes: [u64; 3],
    sessions_accepted: u64,
    sessions_closed: u64,
    peer_abandoned: u64,
    /// Lateness of the first arrival of each stream message, by index (one entry per
    /// message the source sent at most).
    stream_arrivals: BTreeMap<u64, Duration>,
    /// Stream messages that arrived more than once (the transport promises none).
    stream_duplicates: u64,
    /// Keep every message body (tests of exactly-once delivery).
    keep: bool,
    pub kept: Vec<Bytes>,
}

impl Sink {
    pub fn new() -> Self {
        Self::default()
    }
    /// A sink that also keeps every message in [`Sink::kept`].
    pub fn keeping_messages() -> Self {
        Self { keep: true, ..Self::default() }
    }
    /// Read stream send times relative to `epoch` (default: this host's start).
    pub fn with_epoch(mut self, epoch: Instant) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub fn payload_bytes(&self) -> u64 {
        self.class_bytes.iter().sum()
    }
    pub fn class_bytes(&self, class: Class) -> u64 {
        self.class_bytes[class as usize]
    }
    pub fn messages(&self) -> u64 {
        self.class_messages.iter().sum()
    }
    pub fn class_messages(&self, class: Class) -> u64 {
        self.class_messages[class as usize]
    }
    pub fn sessions_accepted(&self) -> u64 {
        self.sessions_accepted
    }
    pub fn sessions_closed(&self) -> u64 {
        self.sessions_closed
    }
    pub fn peer_abandoned(&self) -> u64 {
        self.peer_abandoned
    }
    pub fn stream_duplicates(&self) -> u64 {
        self.stream_duplicates
    }

    /// Goodput (METRICS.md): payload bytes delivered per second since this sink started,
    /// in bit/s. For a window, difference [`payload_bytes`](Self::payload_bytes) instead.
    pub fn goodput_bps(&self, now: Instant) -> f64 {
        let elapsed = self.start.map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        if elapsed == 0.0 {
            return 0.0;
        }
        self.payload_bytes() as f64 * 8.0 / elapsed
    }

    /// Indices among the first `due` stream messages that did not arrive within `deadline`.
    pub fn stream_misses(&self, due: usize, deadline: Duration) -> Vec<u64> {
        (0..due as u64).filter(|i| self.stream_arrivals.get(i).is_none_or(|&l| l > deadline)).collect()
    }

    /// Of the first `due` stream messages (see [`Sender::stream_due_by`]), how many
    /// arrived within `deadline`, late, or never.
    pub fn stream_report(&self, due: usize, deadline: Duration) -> StreamReport {
        let arrived = self.stream_arrivals.range(..due as u64);
        let (on_time, late) =
            arrived.fold(
                (0, 0),
                |(on, late), (_, &lateness)| {
                    if lateness <= deadline {
                        (on + 1, late)
                    } else {
                        (on, late + 1)
                    }
                },
            );
        let on_time_fraction = if due == 0 { 0.0 } else { on_time as f64 / due as f64 };
        StreamReport { due, on_time, late, lost: due - on_time - late, on_time_fraction }
    }

    /// Lateness percentiles over the stream messages that arrived, among the first `due`.
    pub fn stream_lateness_ms(&self, due: usize) -> LatenessFigures {
        let mut l: Vec<f64> =
            self.stream_arrivals.range(..due as u64).map(|(_, d)| d.as_secs_f64() * 1e3).collect();
        l.sort_by(f64::total_cmp);
        let at = |p| percentile(&l, p).unwrap_or(0.0);
        LatenessFigures { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1.0), samples: l.len() }
    }
}

impl Application for Sink {
    fn on_start(&mut self, now: Instant, _ep: &mut Endpoint) {
        self.start = Some(now);
        self.epoch.get_or_insert(now);
    }

    fn on_event(&mut self, now: Instant, _ep: &mut Endpoint, event: Event) {
        match event {
            Event::Message { class, data, .. } => {
                self.class_messages[class as usize] += 1;
                self.class_bytes[class as usize] += data.len() as u64;
                if let (Class::Stream, Some((index, sent_us)), Some(epoch)) =
                    (class, decode_stream_header(&data), self.epoch)
                {
                    let lateness = now.saturating_duration_since(epoch + Duration::from_micros(sent_us));
                    match self.stream_arrivals.entry(index) {
                        Entry::Vacant(e) => {
                            e.insert(lateness);
                        }
                        Entry::Occupied(_) => self.stream_duplicates += 1,
                    }
                }
                if self.keep {
                    self.kept.push(data);
                }
            }
            Event::Accepted { .. } => self.sessions_accepted += 1,
            Event::Closed { .. } => self.sessions_closed += 1,
            Event::PeerAbandoned { .. } => self.peer_abandoned += 1,
            _ => {}
        }
    }
}

/// Accepts sessions and sends every message back on its session, same class, reliably.
#[derive(Debug, Default)]
pub struct Echo {
    echoed: u64,
    /// Echoes the endpoint refused (send buffer full, session closing).
    refused: u64,
}

impl Echo {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn echoed(&self) -> u64 {
        self.echoed
    }
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl Application for Echo {
    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) {
        if let Event::Message { session, class, data } = event {
            match ep.send(now, session, data, SendOptions::reliable(class)) {
                Ok(_) => self.echoed += 1,
                Err(_) => self.refused += 1,
            }
        }
    }
}
