//! Traffic sources and sinks for tests and `rill bench transport`.

use std::any::Any;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::harness::Application;
use crate::endpoint::{Class, Endpoint, Event, SendOptions, SessionId};

/// How often senders top their queues up when no event woke them.
const TOP_UP_INTERVAL: Duration = Duration::from_millis(1);
/// Stream messages start with (index: u64, send time in µs since the run's start: u64).
pub const STREAM_HEADER_LEN: usize = 16;

/// Keeps `keep_queued` bytes of `class` queued on one session.
#[derive(Debug, Clone)]
struct Bulk {
    class: Class,
    message: Bytes,
    keep_queued: usize,
}

impl Bulk {
    fn top_up(&self, now: Instant, ep: &mut Endpoint, session: SessionId) {
        while ep.queued_bytes(session, self.class) < self.keep_queued {
            if ep.send(now, session, self.message.clone(), SendOptions::reliable(self.class)).is_err() {
                return;
            }
        }
    }
}

/// Connects to `remote` and keeps a bulk flow going.
#[derive(Debug)]
pub struct BulkSender {
    remote: SocketAddr,
    bulk: Bulk,
    session: Option<SessionId>,
    connected: bool,
    next_tick: Option<Instant>,
}

impl BulkSender {
    pub fn new(remote: SocketAddr, class: Class, message_size: usize, keep_queued: usize) -> Self {
        let message = Bytes::from(vec![0xb5; message_size]);
        Self {
            remote,
            bulk: Bulk { class, message, keep_queued },
            session: None,
            connected: false,
            next_tick: None,
        }
    }
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }
}

impl Application for BulkSender {
    fn on_start(&mut self, now: Instant, ep: &mut Endpoint) {
        self.session = ep.connect(now, self.remote).ok();
    }
    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) {
        if let Event::Connected { session, .. } = event {
            self.connected = true;
            self.next_tick = Some(now + TOP_UP_INTERVAL);
            self.bulk.top_up(now, ep, session);
        } else if let (true, Some(s)) = (self.connected, self.session) {
            self.bulk.top_up(now, ep, s);
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }
    fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        self.next_tick = Some(now + TOP_UP_INTERVAL);
        if let Some(s) = self.session {
            self.bulk.top_up(now, ep, s);
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A constant-bitrate stream of `message_size` messages with a deadline each, optionally
/// with a background bulk flow on the same session (as rill runs between two peers).
#[derive(Debug)]
pub struct StreamSource {
    remote: SocketAddr,
    interval: Duration,
    message_size: usize,
    deadline: Duration,
    background: Option<Bulk>,
    session: Option<SessionId>,
    start: Option<Instant>,
    next_send: Option<Instant>,
    next_tick: Option<Instant>,
    /// Send time of every stream message, by index.
    sent_at: Vec<Instant>,
}

impl StreamSource {
    pub fn new(remote: SocketAddr, rate_bps: u64, message_size: usize, deadline: Duration) -> Self {
        let message_size = message_size.max(STREAM_HEADER_LEN);
        let interval = Duration::from_secs_f64(message_size as f64 * 8.0 / rate_bps.max(1) as f64);
        Self {
            remote,
            interval,
            message_size,
            deadline,
            background: None,
            session: None,
            start: None,
            next_send: None,
            next_tick: None,
            sent_at: Vec::new(),
        }
    }

    pub fn with_background(mut self, message_size: usize, keep_queued: usize) -> Self {
        let message = Bytes::from(vec![0xbb; message_size]);
        self.background = Some(Bulk { class: Class::Background, message, keep_queued });
        self
    }

    /// Stream messages sent whose deadline had passed by `t` (the fair denominator).
    pub fn sent_due_by(&self, t: Instant) -> usize {
        self.sent_at.iter().filter(|&&s| s + self.deadline <= t).count()
    }

    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    pub fn sent(&self) -> usize {
        self.sent_at.len()
    }

    fn send_one(&mut self, now: Instant, ep: &mut Endpoint) {
        let (Some(session), Some(start)) = (self.session, self.start) else { return };
        let mut m = vec![0x57; self.message_size];
        m[..8].copy_from_slice(&(self.sent_at.len() as u64).to_be_bytes());
        m[8..16].copy_from_slice(&(now.saturating_duration_since(start).as_micros() as u64).to_be_bytes());
        let opts = SendOptions::with_deadline(Class::Stream, now + self.deadline);
        // A full buffer loses the message: it counts as not on time.
        let _ = ep.send(now, session, Bytes::from(m), opts);
        self.sent_at.push(now);
    }
}

impl Application for StreamSource {
    fn on_start(&mut self, now: Instant, ep: &mut Endpoint) {
        self.start = Some(now);
        self.session = ep.connect(now, self.remote).ok();
    }
    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) {
        if matches!(event, Event::Connected { .. }) {
            self.next_send = Some(now);
            self.next_tick = Some(now);
        }
        if let (Some(bg), Some(s), Some(_)) = (&self.background, self.session, self.next_send) {
            bg.top_up(now, ep, s);
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.next_send, self.next_tick].into_iter().flatten().min()
    }
    fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        while let Some(t) = self.next_send.filter(|&t| t <= now) {
            self.send_one(now, ep);
            self.next_send = Some(t + self.interval);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.next_tick = Some(now + TOP_UP_INTERVAL);
            if let (Some(bg), Some(s)) = (&self.background, self.session) {
                bg.top_up(now, ep, s);
            }
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// On-time figures for stream messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamReport {
    pub due: usize,
    pub on_time: usize,
    pub late: usize,
    pub lost: usize,
    /// on_time / due.
    pub on_time_fraction: f64,
}

/// Accepts sessions and counts what arrives.
#[derive(Debug, Default)]
pub struct Sink {
    start: Option<Instant>,
    class_bytes: [u64; 3],
    messages: u64,
    peer_abandoned: u64,
    /// (index, lateness = arrival − send time) of stream messages.
    stream_arrivals: Vec<(u64, Duration)>,
    /// Every message body, when asked to keep them (tests of exactly-once delivery).
    keep: bool,
    pub kept: Vec<Bytes>,
}

impl Sink {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn keeping_messages() -> Self {
        Self { keep: true, ..Self::default() }
    }
    pub fn payload_bytes(&self) -> u64 {
        self.class_bytes.iter().sum()
    }
    pub fn class_bytes(&self, class: Class) -> u64 {
        self.class_bytes[class as usize]
    }
    pub fn messages(&self) -> u64 {
        self.messages
    }
    pub fn peer_abandoned(&self) -> u64 {
        self.peer_abandoned
    }

    /// Indices of stream messages among the first `due` that did not arrive within `deadline`.
    pub fn stream_misses(&self, due: usize, deadline: Duration) -> Vec<u64> {
        let mut ok = vec![false; due];
        for &(i, lateness) in &self.stream_arrivals {
            if (i as usize) < due && lateness <= deadline {
                ok[i as usize] = true;
            }
        }
        ok.iter().enumerate().filter(|(_, &o)| !o).map(|(i, _)| i as u64).collect()
    }

    /// Of the `due` stream messages sent, how many arrived within `deadline`.
    pub fn stream_report(&self, due: usize, deadline: Duration) -> StreamReport {
        let mut on_time = 0;
        let mut late = 0;
        for &(i, lateness) in &self.stream_arrivals {
            if (i as usize) < due {
                if lateness <= deadline {
                    on_time += 1;
                } else {
                    late += 1;
                }
            }
        }
        let on_time_fraction = if due == 0 { 0.0 } else { on_time as f64 / due as f64 };
        StreamReport { due, on_time, late, lost: due - on_time - late, on_time_fraction }
    }
}

impl Application for Sink {
    fn on_start(&mut self, now: Instant, _ep: &mut Endpoint) {
        self.start = Some(now);
    }
    fn on_event(&mut self, now: Instant, _ep: &mut Endpoint, event: Event) {
        match event {
            Event::Message { class, data, .. } => {
                self.class_bytes[class as usize] += data.len() as u64;
                self.messages += 1;
                if class == Class::Stream && data.len() >= STREAM_HEADER_LEN {
                    let index = u64::from_be_bytes(data[..8].try_into().unwrap_or_default());
                    let sent_us = u64::from_be_bytes(data[8..16].try_into().unwrap_or_default());
                    if let Some(start) = self.start {
                        let sent = start + Duration::from_micros(sent_us);
                        self.stream_arrivals.push((index, now.saturating_duration_since(sent)));
                    }
                }
                if self.keep {
                    self.kept.push(data);
                }
            }
            Event::PeerAbandoned { .. } => self.peer_abandoned += 1,
            _ => {}
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
