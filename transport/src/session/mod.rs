//! One session: reliability, message fragmentation and reassembly, traffic classes.
//!
//! # Reliability
//! Packet numbers are never reused: lost data goes out again as new frames in a new packet
//! (QUIC's model, RFC 9000/9002), so every ack gives a clean RTT sample. A packet is lost
//! when 3 later packets are acked (RFC 9002 §6.1.1 kPacketThreshold, the dupack threshold
//! of RFC 5681 §3.2) or when it is 9/8 RTT older than an acked one (RFC 9002 §6.1.2). If
//! nothing is acked for an RTO (RFC 6298) everything in flight is declared lost, the
//! timer backs off exponentially, and one probe goes out regardless of the window.
//!
//! # Messages
//! Messages are independent: each is reassembled on its own and delivered as soon as it
//! is complete, so a lost fragment of one message never holds up another (no head-of-line
//! blocking). Finished message ids are remembered (a bounded range set) so a late copy is
//! never delivered twice. A message past its deadline is dropped from the send buffer, and
//! an ABANDON frame (retransmitted until acked) tells the receiver to drop its fragments.
//!
//! # Traffic classes and the congestion window
//! The controller (LEDBAT++ by default) yields to any queue above its target. That is right
//! for background traffic but would starve the live stream behind a loss-based TCP flow
//! that keeps the bottleneck buffer full. So the window is class-aware:
//! - **Background** may send only while bytes in flight < cwnd: a scavenger. When the
//!   node states its uplink capacity and the endpoint as a whole sends below its share of
//!   it (`uplink.rs`), Background may fill the Stream window instead: the queue LEDBAT
//!   yields to is then mostly the node's own bursts, and the uplink has room between them.
//! - **Stream** may send while bytes in flight < max(cwnd, stream floor), where the floor
//!   (see `stream_floor.rs`) is the stream's own offered rate with headroom, bounded by a
//!   loss-based allowance: the stream keeps its bitrate whatever the queueing delay, and
//!   backs off only when loss says the path cannot carry it.
//! - **Control** gets [`CONTROL_ALLOWANCE_PACKETS`] packets above the window, so membership
//!   and requests never wait behind bulk data.
//!
//! Strict priority decides which class fills the next packet: Control, Stream, Background.
//! Because stream bytes count in flight, background data only uses what the stream leaves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;

use crate::config::SessionConfig;
use crate::congestion::{AckSample, Controller, Pacer};
use crate::endpoint::{
    Class, CloseReason, Event, MessageId, SendError, SendOptions, SessionId, SessionStats,
};
use crate::ranges::RangeSet;
use crate::rtt::RttEstimator;
use crate::stream_floor::StreamFloor;

mod receive;
mod secure;
pub(crate) use secure::HandshakeRejected;

use crate::crypto::handshake::Handshake;
use crate::crypto::identity::NodeId;
use crate::crypto::keys::SessionKeys;
use crate::wire::{self, AckFrame, Frame, Frames, Header, PacketType, Writer, HEADER_LEN};
use receive::InMessage;

/// RFC 9002 §6.1.1: kPacketThreshold = 3.
const PACKET_THRESHOLD: u64 = 3;
/// RFC 9002 §6.1.2: kTimeThreshold = 9/8 (as numerator/denominator).
const TIME_THRESHOLD_NUM: u32 = 9;
const TIME_THRESHOLD_DEN: u32 = 8;
/// RFC 9002 §6.1.2: kGranularity = 1 ms.
const GRANULARITY: Duration = Duration::from_millis(1);
/// Cap on RTO doublings (2^6 = 64× the RTO), further bounded by `SessionConfig::max_rto`.
const MAX_RTO_BACKOFF: u32 = 6;
/// Control messages may exceed the window by this many packets.
pub const CONTROL_ALLOWANCE_PACKETS: usize = 4;
/// Most messages one sender keeps unfinished at once (bounds the receiver's id state).
pub const MAX_OUTSTANDING_MESSAGES: usize = 16_384;
/// Received packet-number ranges kept above the cumulative ack. Older ranges are forgotten
/// (the sender's STOP_WAITING and message-level dedup make that safe).
const MAX_RECEIVED_RANGES: usize = 256;
/// Sent packets tracked (in flight or awaiting removal). Bounds memory per session; a
/// sender with this many packets unacknowledged stops sending new data.
const MAX_TRACKED_PACKETS: usize = 1 << 17;
/// Abandon frames waiting to be sent (one per abandoned message; bounded because each
/// needs a message of the bounded send buffer first).
const MAX_PENDING_ABANDONS: usize = MAX_OUTSTANDING_MESSAGES;
/// Send STOP_WAITING when the peer may still be tracking this many packets below our
/// least unacked one.
const STOP_WAITING_EVERY: u64 = 16;
/// Frames of one received packet held without allocating: a full packet is usually one or
/// two DATA frames and an ACK; more spill to the heap.
const FRAMES_INLINE: usize = 8;
/// Handshake retransmission: first retry after this, doubling (ours: below RFC 6298's 1 s
/// initial RTO because a viewer joining a live stream should not wait a second per loss).
const HANDSHAKE_RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// We sent SYN and wait for SYN_ACK.
    Connecting,
    /// Responder of an XX handshake: SYN_ACK sent, waiting for the Finish (half-open; the
    /// application has not heard of the session yet).
    Accepting,
    Established,
    /// `close` was called: flushing the send buffer, then CLOSE until acked.
    Closing,
    /// The peer closed; we only ack its retransmissions until `drain_until`.
    Draining,
    /// Gone; the endpoint removes it.
    Closed,
}

#[derive(Debug, Clone, Copy)]
enum SentFrame {
    Data { message: u64, offset: u64, len: u64 },
    Abandon { message: u64 },
    Close,
    Other,
}

#[derive(Debug)]
struct SentPacket {
    time: Instant,
    size: usize,
    /// Counted in bytes_in_flight: ack-eliciting and neither acked nor lost yet.
    in_flight: bool,
    app_limited: bool,
    frames: SmallVec<[SentFrame; 2]>,
}

#[derive(Debug)]
struct OutMessage {
    data: Bytes,
    class: Class,
    deadline: Option<Instant>,
    /// Byte ranges still to (re)send.
    unsent: RangeSet,
    acked: RangeSet,
    /// A zero-length message still needs its one empty fragment sent / acked.
    empty_unsent: bool,
    empty_acked: bool,
    queued: bool,
}

impl OutMessage {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn is_acked(&self) -> bool {
        if self.data.is_empty() {
            self.empty_acked
        } else {
            self.acked.contains_range(0..self.len())
        }
    }
    fn has_unsent(&self) -> bool {
        self.empty_unsent || !self.unsent.is_empty()
    }
}

/// Where events go; bounded by the endpoint.
pub(crate) trait EventSink {
    fn push(&mut self, event: Event);
}

/// Which classes' data may start a packet in [`Session::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendClasses {
    All,
    ControlOnly,
    NotBackground,
    BackgroundOnly,
}

impl SendClasses {
    fn admits(self, class: Class) -> bool {
        match self {
            SendClasses::All => true,
            SendClasses::ControlOnly => class == Class::Control,
            SendClasses::NotBackground => class != Class::Background,
            SendClasses::BackgroundOnly => class == Class::Background,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub local_id: u32,
    pub peer_id: u32,
    pub remote: SocketAddr,
    pub state: State,
    config: SessionConfig,
    epoch: Instant,
    created: Instant,
    last_recv: Instant,
    last_sent_ack_eliciting: Instant,

    // Handshake and keys (see `secure.rs`).
    next_syn: Option<Instant>,
    syn_backoff: u32,
    /// Responder: a SYN_ACK is owed.
    syn_ack_pending: bool,
    handshake: Option<Box<Handshake>>,
    keys: Option<SessionKeys>,
    /// The peer's static key, once the handshake revealed it.
    peer_node: Option<NodeId>,
    /// Initiator: a cookie the responder asked us to attach to our Syn.
    cookie: Option<Vec<u8>>,
    /// Responder: our SynAck, resent when the Syn repeats.
    syn_ack_message: Vec<u8>,
    /// XX initiator: our Finish, resent until the responder is heard from.
    finish_message: Option<Vec<u8>>,
    next_finish: Option<Instant>,
    /// The application opened this session with `connect` (it gets `Connected`, not
    /// `Accepted`, even if a simultaneous open made us the responder).
    locally_opened: bool,

    // Sending.
    next_pn: u64,
    sent: VecDeque<SentPacket>,
    /// Packet number of `sent[0]`.
    sent_base: u64,
    bytes_in_flight: usize,
    ack_eliciting_in_flight: usize,
    largest_acked: Option<u64>,
    loss_time: Option<Instant>,
    rto_backoff: u32,
    probe_pending: bool,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    /// Set by the endpoint at each `poll_transmit`: the node has uplink to spare.
    uplink_spare: bool,
    pacing_until: Option<Instant>,
    peer_window: usize,
    out: BTreeMap<u64, OutMessage>,
    next_message: u64,
    queues: [VecDeque<u64>; 3],
    deadlines: BTreeSet<(Instant, u64)>,
    send_buffered: usize,
    /// `send_buffered` split by class.
    class_buffered: [usize; 3],
    pending_abandons: VecDeque<u64>,
    close_pending: bool,
    close_deadline: Option<Instant>,
    drain_until: Option<Instant>,
    stop_waiting_sent: u64,
    delay_base_raw: Option<u32>,
    stream_floor: StreamFloor,
    ping_pending: bool,
    /// Reused per ack to avoid allocation.
    scratch_acked: Vec<u64>,

    // Receiving.
    cum_ack: u64,
    received: RangeSet,
    largest_received: Option<(u64, Instant)>,
    ack_eliciting_unacked: u32,
    ack_deadline: Option<Instant>,
    ack_now: bool,
    timestamp_diff: Option<u32>,
    incoming: BTreeMap<u64, InMessage>,
    incoming_bytes: usize,
    finished: RangeSet,

    stats: SessionStats,
}

/// What `handle_packet` wants the endpoint to know.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Ok,
    Malformed,
    /// No keys yet (handshake not finished): dropped.
    NoKeys,
    /// Failed authentication: dropped, counted, changed nothing.
    Unauthenticated,
    /// Authentic but already received (or behind the replay window): dropped.
    Replay,
}

impl Session {
    /// A session with no handshake yet; `start_initiator` or `start_responder` follows.
    pub fn new(
        config: &SessionConfig,
        now: Instant,
        epoch: Instant,
        local_id: u32,
        remote: SocketAddr,
    ) -> Self {
        let mds = config.max_datagram_size;
        Self {
            local_id,
            peer_id: 0,
            remote,
            state: State::Connecting,
            cc: config.congestion.build(now, mds),
            pacer: Pacer::new(now, mds),
            uplink_spare: false,
            config: config.clone(),
            epoch,
            created: now,
            last_recv: now,
            last_sent_ack_eliciting: now,
            next_syn: None,
            syn_backoff: 0,
            syn_ack_pending: false,
            handshake: None,
            keys: None,
            peer_node: None,
            cookie: None,
            syn_ack_message: Vec::new(),
            finish_message: None,
            next_finish: None,
            locally_opened: false,
            next_pn: 0,
            sent: VecDeque::new(),
            sent_base: 0,
            bytes_in_flight: 0,
            ack_eliciting_in_flight: 0,
            largest_acked: None,
            loss_time: None,
            rto_backoff: 0,
            probe_pending: false,
            rtt: RttEstimator::new(),
            pacing_until: None,
            peer_window: config.receive_window,
            out: BTreeMap::new(),
            next_message: 0,
            queues: Default::default(),
            deadlines: BTreeSet::new(),
            send_buffered: 0,
            class_buffered: [0; 3],
            pending_abandons: VecDeque::new(),
            close_pending: false,
            close_deadline: None,
            drain_until: None,
            stop_waiting_sent: 0,
            delay_base_raw: None,
            stream_floor: StreamFloor::new(now),
            ping_pending: false,
            scratch_acked: Vec::new(),
            cum_ack: 0,
            received: RangeSet::new(),
            largest_received: None,
            ack_eliciting_unacked: 0,
            ack_deadline: None,
            ack_now: false,
            timestamp_diff: None,
            incoming: BTreeMap::new(),
            incoming_bytes: 0,
            finished: RangeSet::new(),
            stats: SessionStats { remote: Some(remote), ..Default::default() },
        }
    }

    fn id(&self) -> SessionId {
        SessionId(self.local_id)
    }

    fn mds(&self) -> usize {
        self.config.max_datagram_size
    }

    fn timestamp_us(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    pub fn is_sendable(&self) -> bool {
        matches!(self.state, State::Established | State::Connecting)
    }

    // -------------------------------------------------------------------------------
    // Application input

    pub fn send(&mut self, now: Instant, data: Bytes, opts: SendOptions) -> Result<MessageId, SendError> {
        if !self.is_sendable() {
            return Err(SendError::Closed);
        }
        if data.len() > self.config.max_message_size {
            return Err(SendError::MessageTooLarge { size: data.len(), limit: self.config.max_message_size });
        }
        if self.send_buffered + data.len() > self.config.send_buffer
            || self.out.len() >= MAX_OUTSTANDING_MESSAGES
        {
            return Err(SendError::BufferFull { queued: self.send_buffered, limit: self.config.send_buffer });
        }
        let id = self.next_message;
        self.next_message += 1;
        if opts.class == Class::Stream {
            self.stream_floor.on_offered(now, data.len());
        }
        let len = data.len() as u64;
        let mut unsent = RangeSet::new();
        unsent.insert(0..len);
        self.send_buffered += data.len();
        self.class_buffered[opts.class as usize] += data.len();
        if let Some(d) = opts.deadline {
            self.deadlines.insert((d, id));
        }
        self.out.insert(
            id,
            OutMessage {
                data,
                class: opts.class,
                deadline: opts.deadline,
                unsent,
                acked: RangeSet::new(),
                empty_unsent: len == 0,
                empty_acked: false,
                queued: true,
            },
        );
        self.queues[opts.class as usize].push_back(id);
        self.stats.messages_sent += 1;
        Ok(MessageId(id))
    }

    pub fn close(&mut self, now: Instant) {
        if matches!(self.state, State::Established | State::Connecting) {
            self.state = State::Closing;
            // Bound the whole close: flushing plus the CLOSE exchange.
            let rto = self.rtt.rto(GRANULARITY, self.config.min_rto);
            self.close_deadline = Some(now + (rto * 6).max(Duration::from_secs(2)));
        }
    }

    // -------------------------------------------------------------------------------
    // Network input

    /// The peer's static key (its node id), once the handshake has revealed it.
    pub fn peer_node(&self) -> Option<NodeId> {
        self.peer_node
    }

    /// An authenticated packet's frames (`secure::handle_data` decrypted them).
    fn handle_packet(
        &mut self,
        now: Instant,
        header: &Header,
        pn: u64,
        body: &[u8],
        events: &mut dyn EventSink,
    ) -> Received {
        // Validate every frame before acting on any, so a malformed packet changes nothing.
        // Parsed once: the checks below and the handling walk this list.
        let mut frames: SmallVec<[Frame<'_>; FRAMES_INLINE]> = SmallVec::new();
        for frame in Frames::new(body) {
            match frame {
                Ok(f) => frames.push(f),
                Err(_) => return Received::Malformed,
            }
        }
        let ack_eliciting = frames.iter().any(Frame::is_ack_eliciting);
        if matches!(self.state, State::Connecting | State::Accepting | State::Closed) {
            return Received::Ok;
        }
        self.last_recv = now;
        self.stats.packets_received += 1;
        self.stats.bytes_received += (HEADER_LEN + body.len() + crate::crypto::aead::TAG_LEN) as u64;
        self.peer_window = header.window as usize;
        self.on_timestamps(now, header);

        let expected = self.largest_received.map_or(0, |(pn, _)| pn + 1);
        let duplicate = pn < self.cum_ack || self.received.contains(pn);
        if duplicate {
            // Our ack was probably lost: send another soon.
            if ack_eliciting {
                self.ack_now = true;
            }
            return Received::Ok;
        }

        // Data frames first decide whether we can take the packet at all: if the receive
        // buffer cannot hold a new message we drop the packet unacked (it comes again).
        let needed: usize = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d)
                    if !self.incoming.contains_key(&d.message) && !self.finished.contains(d.message) =>
                {
                    Some(d.total_len as usize)
                }
                _ => None,
            })
            .sum();
        if needed > 0 && self.incoming_bytes + needed > self.config.receive_window {
            return Received::Ok;
        }

        for frame in frames {
            let ok = match frame {
                Frame::Ack(ack) => self.on_ack_frame(now, &ack, events),
                Frame::Data(d) => self.on_data_frame(d, events),
                Frame::Abandon { message } => {
                    self.on_abandon_frame(message, events);
                    true
                }
                Frame::StopWaiting { least_unacked } => {
                    self.on_stop_waiting(least_unacked);
                    true
                }
                Frame::Ping => true,
                Frame::Close => {
                    self.ack_now = true;
                    if matches!(self.state, State::Established | State::Closing) {
                        self.state = State::Draining;
                        // Stay to re-ack a retransmitted CLOSE for three RTOs (RFC 9000
                        // §10.2 drains for three PTOs).
                        let rto = self.rtt.rto(GRANULARITY, self.config.min_rto);
                        self.drain_until = Some(now + rto * 3);
                        events.push(Event::Closed { session: self.id(), reason: CloseReason::Peer });
                    }
                    true
                }
            };
            if !ok {
                self.fail(CloseReason::ProtocolViolation, events);
                return Received::Ok;
            }
        }

        self.record_received(pn, now);
        if ack_eliciting {
            self.ack_eliciting_unacked += 1;
            if pn != expected {
                // Out of order: ack at once so the sender's loss detection sees the gap
                // (RFC 9000 §13.2.1).
                self.ack_now = true;
            }
            if self.ack_eliciting_unacked >= self.config.ack_every_packets {
                self.ack_now = true;
            }
            if self.ack_deadline.is_none() {
                self.ack_deadline = Some(now + self.config.max_ack_delay);
            }
        }
        Received::Ok
    }

    fn on_timestamps(&mut self, now: Instant, header: &Header) {
        self.timestamp_diff = Some(self.timestamp_us(now).wrapping_sub(header.timestamp_us));
        if header.flags & wire::FLAG_TIMESTAMP_DIFF != 0 {
            // Unwrap the 32-bit µs difference relative to the first sample, so the
            // controller sees a monotone i64 with a fixed (unknown) clock offset.
            let raw = header.timestamp_diff_us;
            let base = *self.delay_base_raw.get_or_insert(raw);
            let delay = base as i64 + raw.wrapping_sub(base) as i32 as i64;
            self.cc.on_delay_sample(now, delay);
        }
    }

    /// Returns false on a protocol violation (acks for packets never sent).
    fn on_ack_frame(&mut self, now: Instant, ack: &AckFrame<'_>, events: &mut dyn EventSink) -> bool {
        let Some(largest) = ack.largest() else { return true };
        if largest >= self.next_pn {
            return false;
        }
        let mut acked = std::mem::take(&mut self.scratch_acked);
        acked.clear();
        let end = self.sent_base + self.sent.len() as u64;
        let mut collect = |r: std::ops::Range<u64>, sent: &VecDeque<SentPacket>, base: u64| {
            let (s, e) = (r.start.max(base), r.end.min(end));
            for pn in s..e {
                if sent[(pn - base) as usize].in_flight {
                    acked.push(pn);
                }
            }
        };
        collect(0..ack.cum_ack, &self.sent, self.sent_base);
        for r in ack.ranges() {
            collect(r, &self.sent, self.sent_base);
        }

        let new_largest = self.largest_acked.is_none_or(|l| largest > l);
        if new_largest {
            self.largest_acked = Some(largest);
        }
        if let Some(&newest) = acked.last() {
            // RTT sample from the largest newly acked packet (RFC 9002 §5.1), when it is
            // the largest the peer acks.
            if newest == largest {
                let sent_time = self.sent[(newest - self.sent_base) as usize].time;
                self.rtt.update(
                    now.saturating_duration_since(sent_time),
                    Duration::from_micros(ack.ack_delay_us),
                );
            }
            self.rto_backoff = 0;
        }
        for &pn in &acked {
            self.on_packet_acked(now, pn, events);
        }
        self.scratch_acked = acked;
        self.detect_lost(now);
        self.trim_sent();
        true
    }

    fn on_packet_acked(&mut self, now: Instant, pn: u64, events: &mut dyn EventSink) {
        let idx = (pn - self.sent_base) as usize;
        let p = &mut self.sent[idx];
        p.in_flight = false;
        let sample = AckSample {
            bytes_acked: p.size,
            sent_time: p.time,
            bytes_in_flight: self.bytes_in_flight,
            app_limited: p.app_limited,
        };
        let frames = std::mem::take(&mut p.frames);
        self.bytes_in_flight -= sample.bytes_acked;
        self.ack_eliciting_in_flight -= 1;
        self.stream_floor.on_packet_outcome(now, false, self.rtt.smoothed());
        self.cc.on_ack(now, &sample, &self.rtt);
        for f in frames {
            match f {
                SentFrame::Data { message, offset, len } => self.on_data_acked(message, offset, len),
                SentFrame::Close => {
                    if self.state == State::Closing {
                        self.state = State::Closed;
                        events.push(Event::Closed { session: self.id(), reason: CloseReason::Local });
                    }
                }
                SentFrame::Abandon { .. } | SentFrame::Other => {}
            }
        }
    }

    fn on_data_acked(&mut self, message: u64, offset: u64, len: u64) {
        let Some(m) = self.out.get_mut(&message) else { return };
        if m.data.is_empty() {
            m.empty_acked = true;
        } else {
            m.acked.insert(offset..offset + len);
        }
        if m.is_acked() {
            self.finish_out_message(message);
            self.stats.messages_acked += 1;
        }
    }

    fn finish_out_message(&mut self, message: u64) {
        if let Some(m) = self.out.remove(&message) {
            self.send_buffered -= m.data.len();
            self.class_buffered[m.class as usize] -= m.data.len();
            if let Some(d) = m.deadline {
                self.deadlines.remove(&(d, message));
            }
        }
    }

    /// RFC 9002 §6.1: packet and time thresholds.
    fn detect_lost(&mut self, now: Instant) {
        self.loss_time = None;
        let Some(largest) = self.largest_acked else { return };
        let rtt = self.rtt.latest().max(self.rtt.smoothed());
        let loss_delay = (rtt * TIME_THRESHOLD_NUM / TIME_THRESHOLD_DEN).max(GRANULARITY);
        let lost_before = now.checked_sub(loss_delay);
        let mut lost_bytes = 0;
        let mut largest_lost_time = None;
        let end = largest.min(self.sent_base + self.sent.len() as u64);
        for pn in self.sent_base..end {
            let idx = (pn - self.sent_base) as usize;
            let p = &self.sent[idx];
            if !p.in_flight {
                continue;
            }
            if largest - pn >= PACKET_THRESHOLD || lost_before.is_some_and(|t| p.time <= t) {
                lost_bytes += p.size;
                largest_lost_time = Some(p.time);
                self.declare_lost(now, idx);
            } else {
                let t = p.time + loss_delay;
                self.loss_time = Some(self.loss_time.map_or(t, |l| l.min(t)));
            }
        }
        if let Some(t) = largest_lost_time {
            self.cc.on_congestion_event(now, t, lost_bytes);
        }
    }

    fn declare_lost(&mut self, now: Instant, idx: usize) {
        let p = &mut self.sent[idx];
        p.in_flight = false;
        let frames = std::mem::take(&mut p.frames);
        let size = p.size;
        self.bytes_in_flight -= size;
        self.ack_eliciting_in_flight -= 1;
        self.stats.packets_lost += 1;
        self.stream_floor.on_packet_outcome(now, true, self.rtt.smoothed());
        for f in frames {
            match f {
                SentFrame::Data { message, offset, len } => {
                    let Some(m) = self.out.get_mut(&message) else { continue };
                    self.stats.retransmitted_bytes += len;
                    if m.data.is_empty() {
                        m.empty_unsent = !m.empty_acked;
                    } else {
                        m.unsent.insert(offset..offset + len);
                        for r in m.acked.iter() {
                            if r.end > offset && r.start < offset + len {
                                m.unsent.remove(r);
                            }
                        }
                    }
                    if m.has_unsent() && !m.queued {
                        m.queued = true;
                        // Retransmissions go first within their class.
                        self.queues[m.class as usize].push_front(message);
                    }
                }
                SentFrame::Abandon { message } => {
                    if self.pending_abandons.len() < MAX_PENDING_ABANDONS {
                        self.pending_abandons.push_back(message);
                    }
                }
                SentFrame::Close => self.close_pending = true,
                SentFrame::Other => {}
            }
        }
    }

    /// Drop settled packets from the front of the tracking queue.
    fn trim_sent(&mut self) {
        while self.sent.front().is_some_and(|p| !p.in_flight) {
            self.sent.pop_front();
            self.sent_base += 1;
        }
    }

    fn least_unacked(&self) -> u64 {
        self.sent_base
    }

    // -------------------------------------------------------------------------------
    // Timers

    fn rto_deadline(&self) -> Option<Instant> {
        if self.ack_eliciting_in_flight == 0 {
            return None;
        }
        let rto = self.rtt.rto(GRANULARITY, self.config.min_rto) * (1 << self.rto_backoff);
        Some(self.last_sent_ack_eliciting + rto.min(self.config.max_rto))
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        (self.state == State::Established)
            .then(|| self.last_sent_ack_eliciting + self.config.keepalive_interval)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.state {
            State::Closed => return None,
            State::Connecting => {
                consider(self.next_syn);
                consider(Some(self.created + self.config.handshake_timeout));
                return t;
            }
            State::Accepting => {
                consider(Some(self.created + self.config.handshake_timeout));
                return t;
            }
            State::Draining => {
                consider(self.drain_until);
                consider(self.ack_deadline);
                return t;
            }
            State::Established | State::Closing => {}
        }
        if self.ack_eliciting_unacked > 0 {
            consider(self.ack_deadline);
        }
        consider(self.loss_time.or(self.rto_deadline()));
        consider(Some(self.last_recv + self.config.idle_timeout));
        // A keepalive already wanted (`ping_pending`) is no timer any more: it waits for
        // the send path (the pacer may hold it back). Its deadline, left in the past,
        // would fire again at once, and again: the driver's loop would spin without a
        // yield until the ping went, and the tasks on its thread (a viewer's player) wait.
        if !self.ping_pending {
            consider(self.keepalive_deadline());
        }
        consider(self.pacing_until);
        consider(self.deadlines.first().map(|&(d, _)| d));
        consider(self.close_deadline);
        consider(self.next_finish);
        consider(self.keys.as_ref().and_then(SessionKeys::poll_timeout));
        t
    }

    pub fn handle_timeout(&mut self, now: Instant, events: &mut dyn EventSink) {
        match self.state {
            State::Closed => return,
            State::Connecting => {
                if now >= self.created + self.config.handshake_timeout {
                    self.fail(CloseReason::HandshakeTimeout, events);
                }
                return;
            }
            State::Accepting => {
                // Half-open and never announced: go quietly.
                if now >= self.created + self.config.handshake_timeout {
                    self.state = State::Closed;
                }
                return;
            }
            State::Draining => {
                if self.drain_until.is_some_and(|d| now >= d) {
                    self.state = State::Closed;
                }
                if self.ack_deadline.is_some_and(|d| now >= d) {
                    self.ack_now = true;
                }
                return;
            }
            State::Established | State::Closing => {}
        }
        if now >= self.last_recv + self.config.idle_timeout {
            self.fail(CloseReason::IdleTimeout, events);
            return;
        }
        if let Some(keys) = self.keys.as_mut() {
            keys.expire(now);
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            self.state = State::Closed;
            events.push(Event::Closed { session: self.id(), reason: CloseReason::Local });
            return;
        }
        if self.ack_eliciting_unacked > 0 && self.ack_deadline.is_some_and(|d| now >= d) {
            self.ack_now = true;
        }
        if self.pacing_until.is_some_and(|p| now >= p) {
            self.pacing_until = None;
        }
        while let Some(&(d, message)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.abandon(message, events);
        }
        if self.loss_time.is_some_and(|t| now >= t) {
            self.detect_lost(now);
            self.trim_sent();
        } else if self.rto_deadline().is_some_and(|t| now >= t) {
            self.on_rto(now);
        }
        if self.keepalive_deadline().is_some_and(|t| now >= t) {
            self.ping_pending = true;
        }
    }

    fn on_rto(&mut self, now: Instant) {
        for idx in 0..self.sent.len() {
            if self.sent[idx].in_flight {
                self.declare_lost(now, idx);
            }
        }
        self.trim_sent();
        self.cc.on_retransmission_timeout(now);
        self.rto_backoff = (self.rto_backoff + 1).min(MAX_RTO_BACKOFF);
        self.probe_pending = true;
        // Something must carry the probe even if all data was abandoned.
        self.ping_pending = true;
    }

    fn abandon(&mut self, message: u64, events: &mut dyn EventSink) {
        self.finish_out_message(message);
        self.stats.messages_abandoned_sent += 1;
        if self.pending_abandons.len() < MAX_PENDING_ABANDONS {
            self.pending_abandons.push_back(message);
        }
        events.push(Event::SendAbandoned { session: self.id(), message: MessageId(message) });
    }

    fn fail(&mut self, reason: CloseReason, events: &mut dyn EventSink) {
        if self.state != State::Closed {
            self.state = State::Closed;
            events.push(Event::Closed { session: self.id(), reason });
        }
    }

    // -------------------------------------------------------------------------------
    // Output

    /// The window a class may fill (see the module docs).
    fn class_window(&self, class: Class, now: Instant) -> usize {
        let cwnd = self.cc.window();
        let stream = || cwnd.max(self.stream_floor.window(now, self.rtt.smoothed()) + 2 * self.mds());
        match class {
            Class::Control => cwnd + CONTROL_ALLOWANCE_PACKETS * self.mds(),
            Class::Stream => stream(),
            Class::Background if self.uplink_spare => stream(),
            Class::Background => cwnd,
        }
    }

    /// Background data is queued; the endpoint's spare uplink may let it go (see
    /// `uplink.rs`).
    pub fn background_waits_for_spare(&self) -> bool {
        self.state == State::Established && self.has_queued(Class::Background)
    }

    fn class_may_send(&self, class: Class, now: Instant) -> bool {
        self.bytes_in_flight < self.class_window(class, now).min(self.peer_window.max(self.mds()))
    }

    fn has_queued(&self, class: Class) -> bool {
        !self.queues[class as usize].is_empty()
    }

    fn has_ack_to_send(&self) -> bool {
        self.ack_now
    }

    fn needs_stop_waiting(&self) -> bool {
        self.least_unacked() >= self.stop_waiting_sent + STOP_WAITING_EVERY
    }

    /// Build the next packet into `buf`; returns its length, or None if nothing is due.
    /// `uplink_spare`: the endpoint as a whole sends below its share of the node's stated
    /// uplink, so Background may fill the Stream window (see `uplink.rs`). `classes`:
    /// whose data may start a packet (the endpoint's pacer asks every session for its
    /// Control and Stream first); data of other classes may still fill the room a packet
    /// leaves.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        uplink_spare: bool,
        classes: SendClasses,
    ) -> Option<usize> {
        self.uplink_spare = uplink_spare;
        if self.state == State::Closed {
            return None;
        }
        if let Some(n) = self.poll_handshake(now, buf) {
            return Some(n);
        }
        if matches!(self.state, State::Connecting | State::Accepting) {
            return None;
        }
        if self.state == State::Draining {
            return if self.ack_now { self.build_packet(now, buf, None) } else { None };
        }

        // Which class may put data in this packet?
        let data_class = if self.sent.len() >= MAX_TRACKED_PACKETS {
            None
        } else {
            Class::ALL.into_iter().find(|&c| {
                classes.admits(c) && self.has_queued(c) && (self.probe_pending || self.class_may_send(c, now))
            })
        };
        let control_due = !self.pending_abandons.is_empty()
            || self.ping_pending
            || (self.close_pending && self.out.is_empty());
        let needs_close = self.state == State::Closing && self.out.is_empty() && !self.close_sent();
        if needs_close {
            self.close_pending = true;
        }
        let ack_eliciting_due = data_class.is_some() || control_due || needs_close;
        if !ack_eliciting_due {
            return if self.has_ack_to_send() { self.build_packet(now, buf, None) } else { None };
        }
        // Pacing (RFC 9002 §7.7) applies to ack-eliciting packets; probes bypass it.
        if !self.probe_pending {
            let class = data_class.unwrap_or(Class::Control);
            let window = self.class_window(class, now);
            let rate =
                self.cc.pacing_rate(&self.rtt) * (window as f64 / self.cc.window().max(1) as f64).max(1.0);
            if let Some(t) = self.pacer.delay(now, self.mds(), rate, window) {
                self.pacing_until = Some(t);
                return if self.has_ack_to_send() { self.build_packet(now, buf, None) } else { None };
            }
        }
        self.build_packet(now, buf, data_class)
    }

    fn close_sent(&self) -> bool {
        self.sent.iter().any(|p| p.in_flight && p.frames.iter().any(|f| matches!(f, SentFrame::Close)))
    }

    /// Build the next Data packet into `buf` and seal it; returns its length.
    fn build_packet(&mut self, now: Instant, buf: &mut [u8], data_class: Option<Class>) -> Option<usize> {
        let pn = self.next_pn;
        let room = self.frame_room(buf.len());
        let len = self.build_frames(now, &mut buf[..room], data_class)?;
        self.seal(now, pn, buf, len)
    }

    /// Header and frames of the next Data packet, in cleartext, into `buf`.
    fn build_frames(&mut self, now: Instant, buf: &mut [u8], data_class: Option<Class>) -> Option<usize> {
        let pn = self.next_pn;
        let window =
            self.config.receive_window.saturating_sub(self.incoming_bytes).min(u32::MAX as usize) as u32;
        let header = Header {
            packet_type: PacketType::Data,
            flags: if self.timestamp_diff.is_some() { wire::FLAG_TIMESTAMP_DIFF } else { 0 },
            session_id: self.peer_id,
            timestamp_us: self.timestamp_us(now),
            timestamp_diff_us: self.timestamp_diff.unwrap_or(0),
            window,
            packet_number: pn as u32,
        };
        header.encode(buf);
        let mut w = Writer::new(buf, HEADER_LEN);
        let mut frames: SmallVec<[SentFrame; 2]> = SmallVec::new();

        // An ack rides on every packet when one is owed at all.
        if self.ack_eliciting_unacked > 0 || self.ack_now {
            self.write_ack(now, &mut w);
        }
        if self.needs_stop_waiting() && w.remaining() >= wire::stop_waiting_frame_len(self.least_unacked()) {
            let least = self.least_unacked();
            wire::encode_stop_waiting(&mut w, least);
            self.stop_waiting_sent = least;
            frames.push(SentFrame::Other);
        }
        while let Some(&m) = self.pending_abandons.front() {
            if w.remaining() < wire::abandon_frame_len(m) {
                break;
            }
            self.pending_abandons.pop_front();
            wire::encode_abandon(&mut w, m);
            frames.push(SentFrame::Abandon { message: m });
        }
        if self.ping_pending {
            self.ping_pending = false;
            wire::encode_ping(&mut w);
            frames.push(SentFrame::Other);
        }
        if self.close_pending && self.out.is_empty() && w.remaining() >= 1 {
            self.close_pending = false;
            wire::encode_close(&mut w);
            frames.push(SentFrame::Close);
        }
        if let Some(first) = data_class {
            for class in Class::ALL.into_iter().filter(|&c| c >= first) {
                if class != first && !self.class_may_send(class, now) {
                    continue;
                }
                self.write_data(&mut w, class, &mut frames);
                if self.has_queued(class) {
                    break;
                }
            }
            // App-limited (RFC 7661 §3) only if nothing at all is left to send. Data of a
            // class the window held back means the window, not the application, limits
            // us: a stream packet sent above cwnd while background waits must still let
            // the controller grow, or a stream plus background leaves an idle link unused.
            let app_limited = !Class::ALL.into_iter().any(|c| self.has_queued(c));
            self.finish_packet(now, pn, w.pos() + crate::crypto::aead::TAG_LEN, frames, app_limited);
        } else {
            let app_limited = true;
            self.finish_packet(now, pn, w.pos() + crate::crypto::aead::TAG_LEN, frames, app_limited);
        }
        Some(w.pos())
    }

    fn write_data(&mut self, w: &mut Writer<'_>, class: Class, frames: &mut SmallVec<[SentFrame; 2]>) {
        while let Some(&id) = self.queues[class as usize].front() {
            let Some(m) = self.out.get_mut(&id) else {
                // Acked or abandoned since it was queued.
                self.queues[class as usize].pop_front();
                continue;
            };
            if !m.has_unsent() {
                m.queued = false;
                self.queues[class as usize].pop_front();
                continue;
            }
            let total = m.len();
            let next_offset = m.unsent.first().map_or(0, |r| r.start);
            let overhead = wire::data_frame_overhead(id, total, next_offset, total);
            if w.remaining() <= overhead {
                return;
            }
            if m.empty_unsent {
                m.empty_unsent = false;
                wire::encode_data(w, id, class, 0, 0, &[]);
                frames.push(SentFrame::Data { message: id, offset: 0, len: 0 });
            } else {
                let space = (w.remaining() - overhead) as u64;
                let Some(r) = m.unsent.pop_front(space) else { continue };
                let data = &m.data[r.start as usize..r.end as usize];
                wire::encode_data(w, id, class, total, r.start, data);
                frames.push(SentFrame::Data { message: id, offset: r.start, len: r.end - r.start });
            }
        }
    }

    fn finish_packet(
        &mut self,
        now: Instant,
        pn: u64,
        size: usize,
        frames: SmallVec<[SentFrame; 2]>,
        app_limited: bool,
    ) {
        let ack_eliciting = !frames.is_empty();
        self.next_pn += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size as u64;
        if ack_eliciting {
            self.bytes_in_flight += size;
            self.ack_eliciting_in_flight += 1;
            self.last_sent_ack_eliciting = now;
            self.probe_pending = false;
            self.pacer.on_sent(now, size);
            self.cc.on_packet_sent(now, size, self.bytes_in_flight);
        }
        if self.sent.is_empty() {
            self.sent_base = pn;
        }
        self.sent.push_back(SentPacket { time: now, size, in_flight: ack_eliciting, app_limited, frames });
        self.trim_sent();
    }

    // -------------------------------------------------------------------------------

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            controller: self.cc.name(),
            smoothed_rtt: self.rtt.smoothed(),
            min_rtt: self.rtt.min(),
            congestion_window: self.cc.window(),
            bytes_in_flight: self.bytes_in_flight,
            queueing_delay_estimate: self.cc.queueing_delay(),
            pacing_rate_bps: self.cc.pacing_rate(&self.rtt) * 8.0,
            send_queue_bytes: self.send_buffered,
            key_updates_sent: self.keys.as_ref().map_or(0, |k| k.stats.send_key_updates),
            key_updates_received: self.keys.as_ref().map_or(0, |k| k.stats.recv_key_updates),
            ..self.stats.clone()
        }
    }

    /// Bytes of application data queued (unsent or unacked) in `class`.
    pub fn queued_bytes(&self, class: Class) -> usize {
        self.class_buffered[class as usize]
    }
}
