//! The link model: a dumbbell whose two directions are each a drop-tail bottleneck.
//!
//! A datagram from a Left host to a Right host crosses the forward direction, Right to Left
//! the reverse one; all flows in a direction share its queue, which is how a competing
//! flow interferes. Per direction, in this order:
//! 1. **Loss** (random or Gilbert-Elliott), applied *before* the queue, like a lossy access
//!    link in front of the bottleneck: a lost packet takes no buffer space and no link time.
//!    The loss chain is stepped once per packet offered to the direction.
//! 2. **Drop-tail queue** measured in bytes: a packet is dropped (and counted) when the bytes
//!    already accepted and not yet fully serialized, plus its own, exceed `buffer_bytes`.
//! 3. **Serialization** at `rate_bps`: `size·8/rate`, in exact integer nanoseconds with the
//!    remainder carried while the link stays busy, so a saturated link runs at exactly
//!    `rate_bps` over any run length.
//! 4. **Propagation**: `delay` plus uniform jitter in `[0, jitter]`. Jitter never reorders:
//!    a packet never arrives before its predecessor in the same direction. Only when
//!    `reorder > 0` is a packet, with that probability, held back by `reorder_extra` so
//!    later ones overtake it.
//!
//! Hosts on the same side reach each other directly after [`SAME_SIDE_DELAY`], with no
//! queue, no loss and no randomness (a LAN hop; it only exists so that two hosts on one
//! side can talk at all).
//!
//! # Randomness
//! Each direction draws loss from one ChaCha8 stream and jitter/reordering from another,
//! all derived from the network's seed. So the loss pattern a direction applies to its
//! n-th packet does not change when jitter is switched on or when the other direction's
//! traffic changes (common random numbers: two configurations differ only where they must).
//!
//! # Memory
//! Every packet in the network is in exactly one place: a direction's queue (at most
//! `buffer_bytes`), that direction's propagation (packets that left the queue within the
//! last `delay + jitter + reorder_extra`, so at most that times `rate_bps` plus one packet),
//! or the same-side set (at most [`MAX_LOCAL_IN_FLIGHT`] datagrams). Asserted whenever
//! [`VirtualNetwork::poll_delivery`] has handed out everything due. Probe samples are
//! capped at [`MAX_PROBE_SAMPLES`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::percentile;

/// One-way delay between two hosts on the same side (a LAN hop).
pub const SAME_SIDE_DELAY: Duration = Duration::from_micros(100);

/// Most same-side datagrams in flight at once; more are dropped and counted. Same-side
/// paths have no queue model, so this is what bounds their memory. At 100 µs per hop it
/// allows ~650 million datagrams per second, far beyond any endpoint in a test.
pub const MAX_LOCAL_IN_FLIGHT: usize = 65_536;

/// Most probe RTT samples kept; later ones are counted in
/// [`NetworkCounters::probe_samples_dropped`]. A 16-minute run at 100 probes per second.
pub const MAX_PROBE_SAMPLES: usize = 100_000;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Packet loss applied to a direction, stepped once per packet offered to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossModel {
    None,
    /// Each packet lost independently with this probability.
    Random(f64),
    /// Bursty loss (Gilbert-Elliott): a two-state Markov chain stepped per packet, then the
    /// packet is lost with the current state's probability. With `loss_in_bad = 1` and
    /// `loss_in_good = 0`, loss bursts are geometric with mean `1 / p_bad_to_good` packets.
    GilbertElliott {
        p_good_to_bad: f64,
        p_bad_to_good: f64,
        loss_in_good: f64,
        loss_in_bad: f64,
    },
}

impl LossModel {
    /// Long-run fraction of packets lost. For Gilbert-Elliott, the stationary probability
    /// of the bad state is `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Random(p) => p,
            LossModel::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => {
                let switching = p_good_to_bad + p_bad_to_good;
                if switching == 0.0 {
                    // Never leaves the good state it starts in.
                    return loss_in_good;
                }
                let bad = p_good_to_bad / switching;
                (1.0 - bad) * loss_in_good + bad * loss_in_bad
            }
        }
    }

    fn probabilities(&self) -> Vec<(&'static str, f64)> {
        match *self {
            LossModel::None => Vec::new(),
            LossModel::Random(p) => vec![("loss", p)],
            LossModel::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => vec![
                ("p_good_to_bad", p_good_to_bad),
                ("p_bad_to_good", p_bad_to_good),
                ("loss_in_good", loss_in_good),
                ("loss_in_bad", loss_in_bad),
            ],
        }
    }
}

/// A link configuration that cannot be simulated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkConfigError {
    #[error("rate_bps must be positive")]
    ZeroRate,
    #[error("{name} = {value} is not a probability in [0, 1]")]
    NotAProbability { name: &'static str, value: f64 },
}

/// One direction of the bottleneck. Build with struct update syntax over [`Default`] or
/// with the chained setters (`LinkConfig::default().rate_bps(10_000_000).delay(d)`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    pub rate_bps: u64,
    /// Drop-tail buffer in bytes: packets waiting plus the one being serialized. A packet
    /// larger than this never gets through.
    pub buffer_bytes: usize,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra propagation delay, uniform in `[0, jitter]` per packet (order preserved).
    pub jitter: Duration,
    pub loss: LossModel,
    /// Probability that a packet is held back by `reorder_extra` (and overtaken).
    pub reorder: f64,
    pub reorder_extra: Duration,
}

impl Default for LinkConfig {
    /// 20 Mbit/s, 250 ms of buffer at that rate (625,000 bytes), 20 ms one-way, no jitter,
    /// no loss, no reordering (5 ms of hold-back if `reorder` is raised).
    fn default() -> Self {
        Self {
            rate_bps: 20_000_000,
            buffer_bytes: 20_000_000 / 8 / 4,
            delay: Duration::from_millis(20),
            jitter: Duration::ZERO,
            loss: LossModel::None,
            reorder: 0.0,
            reorder_extra: Duration::from_millis(5),
        }
    }
}

impl LinkConfig {
    pub fn rate_bps(mut self, rate_bps: u64) -> Self {
        self.rate_bps = rate_bps;
        self
    }
    pub fn buffer_bytes(mut self, buffer_bytes: usize) -> Self {
        self.buffer_bytes = buffer_bytes;
        self
    }
    /// Buffer of `time` at the rate configured so far (set the rate first).
    pub fn buffer_time(mut self, time: Duration) -> Self {
        self.buffer_bytes = (self.rate_bps as u128 * time.as_nanos() / (8 * NANOS_PER_SEC)) as usize;
        self
    }
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }
    pub fn loss(mut self, loss: LossModel) -> Self {
        self.loss = loss;
        self
    }
    pub fn reorder(mut self, probability: f64, extra: Duration) -> Self {
        self.reorder = probability;
        self.reorder_extra = extra;
        self
    }

    pub fn validate(&self) -> Result<(), LinkConfigError> {
        if self.rate_bps == 0 {
            return Err(LinkConfigError::ZeroRate);
        }
        let mut probabilities = self.loss.probabilities();
        probabilities.push(("reorder", self.reorder));
        for (name, value) in probabilities {
            if !(0.0..=1.0).contains(&value) {
                return Err(LinkConfigError::NotAProbability { name, value });
            }
        }
        Ok(())
    }

    /// Time to put `bytes` on the wire of an idle link (whole nanoseconds, rounded down,
    /// exactly what the model charges a packet that finds the link idle).
    pub fn serialization(&self, bytes: usize) -> Duration {
        let nanos = bytes as u128 * 8 * NANOS_PER_SEC / self.rate_bps.max(1) as u128;
        Duration::from_nanos(nanos as u64)
    }

    /// Longest a packet spends between leaving the queue and arriving.
    fn max_propagation(&self) -> Duration {
        self.delay + self.jitter + if self.reorder > 0.0 { self.reorder_extra } else { Duration::ZERO }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Left,
    Right,
}

/// Counters of one direction, as of the network's clock (the latest instant it was given).
/// Probe packets are real packets on the link and count in every total except
/// `delivered_by_destination`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectionStats {
    /// The instant these figures describe.
    pub at: Option<Instant>,
    pub offered_packets: u64,
    pub offered_bytes: u64,
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    /// Packets dropped because the buffer was full (drop-tail), and their bytes.
    pub dropped_queue: u64,
    pub dropped_queue_bytes: u64,
    /// Packets dropped by the loss model, and their bytes.
    pub dropped_loss: u64,
    pub dropped_loss_bytes: u64,
    /// Packets picked for reordering (held back by `reorder_extra`).
    pub held_back: u64,
    /// Time the link spent serializing, up to `at` (utilisation = busy / elapsed).
    pub busy: Duration,
    /// Bytes in the buffer at `at`, and the most it ever held.
    pub queue_bytes: usize,
    pub max_queue_bytes: usize,
    /// Bytes delivered per destination address (for `share`).
    pub delivered_by_destination: BTreeMap<SocketAddr, u64>,
}

impl DirectionStats {
    /// Fraction of the time between `earlier` and `self` the link was busy.
    pub fn utilisation_since(&self, earlier: &DirectionStats) -> f64 {
        let (Some(from), Some(to)) = (earlier.at, self.at) else { return 0.0 };
        let elapsed = to.saturating_duration_since(from);
        if elapsed.is_zero() {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy).as_secs_f64() / elapsed.as_secs_f64()
    }
}

/// Network-wide counters outside the two bottleneck directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Datagrams from or to an address nobody attached (dropped).
    pub unroutable: u64,
    /// Same-side datagrams delivered, and dropped over [`MAX_LOCAL_IN_FLIGHT`].
    pub local_delivered: u64,
    pub local_dropped: u64,
    /// Probes injected, and probes that came back (the rest were dropped on the way).
    pub probes_sent: u64,
    pub probes_returned: u64,
    /// Probe samples not kept because [`MAX_PROBE_SAMPLES`] were already held.
    pub probe_samples_dropped: u64,
}

/// One direction of the bottleneck: loss, drop-tail byte queue, serialization, propagation.
#[derive(Debug)]
struct Direction {
    config: LinkConfig,
    loss_rng: ChaCha8Rng,
    delay_rng: ChaCha8Rng,
    /// Gilbert-Elliott state (starts good).
    bad_state: bool,
    /// Accepted packets not yet fully serialized: (departure, accounted bytes), FIFO.
    /// Bounded: their bytes sum to at most `buffer_bytes`.
    queue: VecDeque<(Instant, usize)>,
    queue_bytes: usize,
    /// When the link finishes serializing everything accepted so far.
    busy_until: Option<Instant>,
    /// Remainder of `bits · 10⁹ / rate_bps` not yet charged as a whole nanosecond.
    carry_bit_nanos: u128,
    /// Arrival time of the last packet not picked for reordering (FIFO under jitter).
    last_arrival: Option<Instant>,
    /// Latest instant a packet was offered (enqueue times never go backwards).
    clock: Option<Instant>,
    /// Accounted bytes accepted and not yet delivered (queue plus propagation).
    in_network_bytes: usize,
    /// Serialization time of everything accepted (some of it may lie after the clock).
    busy_accepted: Duration,
    stats: DirectionStats,
}

impl Direction {
    fn new(config: LinkConfig, seed: u64, first_stream: u64) -> Self {
        let stream = |n: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(n);
            rng
        };
        Self {
            config,
            loss_rng: stream(first_stream),
            delay_rng: stream(first_stream + 1),
            bad_state: false,
            queue: VecDeque::new(),
            queue_bytes: 0,
            busy_until: None,
            carry_bit_nanos: 0,
            last_arrival: None,
            clock: None,
            in_network_bytes: 0,
            busy_accepted: Duration::ZERO,
            stats: DirectionStats::default(),
        }
    }

    /// Step the loss model for one packet.
    fn lost(&mut self) -> bool {
        match self.config.loss {
            LossModel::None => false,
            LossModel::Random(p) => uniform(&mut self.loss_rng) < p,
            LossModel::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => {
                let flip = if self.bad_state { p_bad_to_good } else { p_good_to_bad };
                if uniform(&mut self.loss_rng) < flip {
                    self.bad_state = !self.bad_state;
                }
                let p = if self.bad_state { loss_in_bad } else { loss_in_good };
                uniform(&mut self.loss_rng) < p
            }
        }
    }

    /// Bytes a packet occupies in the buffer. A zero-length datagram still is a packet
    /// (it has headers on a real wire), so it counts as one byte: that keeps the queue's
    /// length bounded by `buffer_bytes` entries.
    fn accounted(size: usize) -> usize {
        size.max(1)
    }

    /// Offer a packet at `now`; returns its arrival time at the far end, or `None` if the
    /// loss model or a full buffer dropped it.
    fn enqueue(&mut self, now: Instant, size: usize) -> Option<Instant> {
        let now = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(now);
        self.stats.offered_packets += 1;
        self.stats.offered_bytes += size as u64;
        if self.lost() {
            self.stats.dropped_loss += 1;
            self.stats.dropped_loss_bytes += size as u64;
            return None;
        }
        self.release_departed(now);
        let accounted = Self::accounted(size);
        if self.queue_bytes + accounted > self.config.buffer_bytes {
            self.stats.dropped_queue += 1;
            self.stats.dropped_queue_bytes += size as u64;
            return None;
        }
        // Serialization starts when the link is free; an idle link forgets the carry.
        let start = match self.busy_until {
            Some(b) if b >= now => b,
            _ => {
                self.carry_bit_nanos = 0;
                now
            }
        };
        let bit_nanos = size as u128 * 8 * NANOS_PER_SEC + self.carry_bit_nanos;
        let rate = self.config.rate_bps as u128;
        let serialization = Duration::from_nanos((bit_nanos / rate) as u64);
        self.carry_bit_nanos = bit_nanos % rate;
        let departure = start + serialization;
        self.busy_until = Some(departure);
        self.busy_accepted += serialization;
        self.queue.push_back((departure, accounted));
        self.queue_bytes += accounted;
        self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(self.queue_bytes);
        self.in_network_bytes += accounted;

        let mut arrival = departure + self.config.delay + self.jitter();
        if self.config.reorder > 0.0 && uniform(&mut self.delay_rng) < self.config.reorder {
            // Held back: not clamped, and does not hold back the packets after it.
            arrival += self.config.reorder_extra;
            self.stats.held_back += 1;
        } else {
            arrival = self.last_arrival.map_or(arrival, |last| arrival.max(last));
            self.last_arrival = Some(arrival);
        }
        Some(arrival)
    }

    fn jitter(&mut self) -> Duration {
        let jitter_ns = self.config.jitter.as_nanos();
        if jitter_ns == 0 {
            return Duration::ZERO;
        }
        // Uniform in [0, jitter_ns] by multiply-shift (no modulo bias worth the name).
        let draw = (self.delay_rng.next_u64() as u128 * (jitter_ns + 1)) >> 64;
        Duration::from_nanos(draw as u64)
    }

    /// Forget queue entries that finished serializing by `now`.
    fn release_departed(&mut self, now: Instant) {
        while let Some(&(departure, bytes)) = self.queue.front() {
            if departure > now {
                break;
            }
            self.queue.pop_front();
            self.queue_bytes -= bytes;
        }
    }

    fn delivered(&mut self, to: Option<SocketAddr>, size: usize) {
        self.in_network_bytes -= Self::accounted(size);
        self.stats.delivered_packets += 1;
        self.stats.delivered_bytes += size as u64;
        if let Some(to) = to {
            *self.stats.delivered_by_destination.entry(to).or_default() += size as u64;
        }
    }

    /// Most accounted bytes that may be in the network once everything due by the clock was
    /// delivered: the buffer, plus what left it within the longest propagation time at
    /// line rate, plus one packet straddling that window (at most `buffer_bytes` itself).
    fn in_network_bound(&self) -> usize {
        let window = self.config.max_propagation().as_nanos() + 1;
        let in_propagation = self.config.rate_bps as u128 * window / (8 * NANOS_PER_SEC) + 1;
        2 * self.config.buffer_bytes + in_propagation as usize
    }

    fn stats_at(&self, now: Option<Instant>) -> DirectionStats {
        let Some(now) = now else { return self.stats.clone() };
        let pending = self.busy_until.map_or(Duration::ZERO, |b| b.saturating_duration_since(now));
        let queue_bytes = self.queue.iter().filter(|(departure, _)| *departure > now).map(|(_, b)| b).sum();
        DirectionStats {
            at: Some(now),
            busy: self.busy_accepted.saturating_sub(pending),
            queue_bytes,
            ..self.stats.clone()
        }
    }
}

/// Uniform in [0, 1) with 53 bits.
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A datagram coming out of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
    pub sent_at: Instant,
    pub arrived_at: Instant,
}

/// Which part of the network a datagram crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Forward,
    Reverse,
    Local,
}

#[derive(Debug, PartialEq, Eq)]
enum InTransit {
    Datagram {
        route: Route,
        from: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
        sent_at: Instant,
    },
    /// A probe on its way out (forward), injected at `sent`.
    ProbeOut {
        sent: Instant,
        size: usize,
    },
    /// Its echo on the way back (reverse).
    ProbeBack {
        sent: Instant,
        size: usize,
    },
}

/// Heap entry ordered by (arrival, sequence): equal arrival times keep send order.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    at: Instant,
    seq: u64,
    what: InTransit,
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug)]
struct Probe {
    interval: Duration,
    size: usize,
    next: Instant,
}

/// Standing queue (METRICS.md) in milliseconds: percentiles of probe RTT minus the
/// empty-path RTT, over the probes that came back.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueFigures {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub samples: usize,
}

/// The dumbbell: hosts on two sides, one bottleneck direction each way, an optional probe.
#[derive(Debug)]
pub struct VirtualNetwork {
    hosts: BTreeMap<SocketAddr, Side>,
    forward: Direction,
    reverse: Direction,
    /// Everything in flight, by arrival. Bounded as described in the module docs.
    in_transit: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// Latest instant the network was given (stats are taken as of this instant).
    clock: Option<Instant>,
    local_in_flight: usize,
    probe: Option<Probe>,
    /// (injection time, RTT) of each probe that came back, at most [`MAX_PROBE_SAMPLES`].
    probe_rtts: Vec<(Instant, Duration)>,
    counters: NetworkCounters,
}

impl VirtualNetwork {
    /// # Panics
    /// If a configuration is invalid ([`LinkConfig::validate`]); use [`Self::try_new`] for
    /// configurations that come from users.
    pub fn new(seed: u64, forward: LinkConfig, reverse: LinkConfig) -> Self {
        Self::try_new(seed, forward, reverse).unwrap_or_else(|e| panic!("invalid link configuration: {e}"))
    }

    pub fn try_new(seed: u64, forward: LinkConfig, reverse: LinkConfig) -> Result<Self, LinkConfigError> {
        forward.validate()?;
        reverse.validate()?;
        Ok(Self {
            hosts: BTreeMap::new(),
            forward: Direction::new(forward, seed, 0),
            reverse: Direction::new(reverse, seed, 2),
            in_transit: BinaryHeap::new(),
            seq: 0,
            clock: None,
            local_in_flight: 0,
            probe: None,
            probe_rtts: Vec::new(),
            counters: NetworkCounters::default(),
        })
    }

    /// Attach (or move) a host. Only attached addresses can send and receive.
    pub fn attach(&mut self, addr: SocketAddr, side: Side) {
        self.hosts.insert(addr, side);
    }

    pub fn side(&self, addr: SocketAddr) -> Option<Side> {
        self.hosts.get(&addr).copied()
    }

    pub fn forward_config(&self) -> &LinkConfig {
        &self.forward.config
    }
    pub fn reverse_config(&self) -> &LinkConfig {
        &self.reverse.config
    }

    /// Move the network's clock forward (stats are reported as of the clock). Sending and
    /// polling move it too.
    pub fn advance_to(&mut self, now: Instant) {
        debug_assert!(self.clock.is_none_or(|c| now >= c), "virtual time went backwards");
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    pub fn now(&self) -> Option<Instant> {
        self.clock
    }

    fn push(&mut self, at: Instant, what: InTransit) {
        self.seq += 1;
        self.in_transit.push(Reverse(Entry { at, seq: self.seq, what }));
    }

    /// Put a datagram on the network at `now` (never earlier than previous calls).
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.advance_to(now);
        let (Some(&a), Some(&b)) = (self.hosts.get(&from), self.hosts.get(&to)) else {
            self.counters.unroutable += 1;
            return;
        };
        let (route, arrival) = match (a, b) {
            (Side::Left, Side::Right) => (Route::Forward, self.forward.enqueue(now, data.len())),
            (Side::Right, Side::Left) => (Route::Reverse, self.reverse.enqueue(now, data.len())),
            _ if self.local_in_flight >= MAX_LOCAL_IN_FLIGHT => {
                self.counters.local_dropped += 1;
                return;
            }
            _ => {
                self.local_in_flight += 1;
                (Route::Local, Some(now + SAME_SIDE_DELAY))
            }
        };
        if let Some(at) = arrival {
            let data = data.to_vec();
            self.push(at, InTransit::Datagram { route, from, to, data, sent_at: now });
        }
    }

    /// Inject a `size`-byte probe into the forward queue every `interval` from `start`; on
    /// arrival it is echoed through the reverse queue and its RTT recorded. Probes cross
    /// the loss model and the queues like any packet. Replaces an earlier probe schedule.
    ///
    /// # Panics
    /// If `interval` is zero (the probe would never let time advance).
    pub fn enable_probe(&mut self, start: Instant, interval: Duration, size: usize) {
        assert!(!interval.is_zero(), "probe interval must be positive");
        self.probe = Some(Probe { interval, size: size.max(1), next: start });
    }

    pub fn disable_probe(&mut self) {
        self.probe = None;
    }

    /// The earliest instant something happens in the network: an arrival or a probe.
    pub fn next_event_time(&self) -> Option<Instant> {
        let transit = self.in_transit.peek().map(|Reverse(e)| e.at);
        let probe = self.probe.as_ref().map(|p| p.next);
        [transit, probe].into_iter().flatten().min()
    }

    /// The next datagram due at or before `now`, in arrival order; handles probe events on
    /// the way. Call until `None` each time virtual time advances.
    pub fn poll_delivery(&mut self, now: Instant) -> Option<Delivery> {
        self.advance_to(now);
        loop {
            let transit = self.in_transit.peek().map(|Reverse(e)| e.at).filter(|&t| t <= now);
            let probe = self.probe.as_ref().map(|p| p.next).filter(|&t| t <= now);
            match (transit, probe) {
                (None, None) => {
                    self.check_bounds();
                    return None;
                }
                // Events in time order; a probe injected at the same instant as an arrival
                // goes first (it was scheduled before anything sent at that instant).
                (Some(t), Some(p)) if p <= t => self.inject_probe(),
                (None, Some(_)) => self.inject_probe(),
                (Some(_), _) => {
                    // The peek above saw an entry, so the heap is not empty.
                    let Reverse(entry) = self.in_transit.pop()?;
                    if let Some(delivery) = self.arrive(entry) {
                        return Some(delivery);
                    }
                }
            }
        }
    }

    fn inject_probe(&mut self) {
        let Some(p) = self.probe.as_mut() else { return };
        let (sent, size) = (p.next, p.size);
        p.next += p.interval;
        self.counters.probes_sent += 1;
        if let Some(arrival) = self.forward.enqueue(sent, size) {
            self.push(arrival, InTransit::ProbeOut { sent, size });
        }
    }

    fn arrive(&mut self, entry: Entry) -> Option<Delivery> {
        match entry.what {
            InTransit::Datagram { route, from, to, data, sent_at } => {
                match route {
                    Route::Forward => self.forward.delivered(Some(to), data.len()),
                    Route::Reverse => self.reverse.delivered(Some(to), data.len()),
                    Route::Local => {
                        self.local_in_flight -= 1;
                        self.counters.local_delivered += 1;
                    }
                }
                Some(Delivery { from, to, data, sent_at, arrived_at: entry.at })
            }
            InTransit::ProbeOut { sent, size } => {
                self.forward.delivered(None, size);
                if let Some(back) = self.reverse.enqueue(entry.at, size) {
                    self.push(back, InTransit::ProbeBack { sent, size });
                }
                None
            }
            InTransit::ProbeBack { sent, size } => {
                self.reverse.delivered(None, size);
                self.counters.probes_returned += 1;
                if self.probe_rtts.len() < MAX_PROBE_SAMPLES {
                    self.probe_rtts.push((sent, entry.at - sent));
                } else {
                    self.counters.probe_samples_dropped += 1;
                }
                None
            }
        }
    }

    /// Memory bound of the module docs, checked once everything due has been handed out.
    fn check_bounds(&self) {
        for (name, d) in [("forward", &self.forward), ("reverse", &self.reverse)] {
            assert!(d.queue_bytes <= d.config.buffer_bytes, "{name} queue over its buffer");
            assert!(
                d.in_network_bytes <= d.in_network_bound(),
                "{name}: {} bytes in the network, bound {}",
                d.in_network_bytes,
                d.in_network_bound()
            );
        }
        assert!(self.local_in_flight <= MAX_LOCAL_IN_FLIGHT);
    }

    /// Forward (Left to Right) counters as of the network's clock.
    pub fn forward_stats(&self) -> DirectionStats {
        self.forward.stats_at(self.clock)
    }
    /// Reverse (Right to Left) counters as of the network's clock.
    pub fn reverse_stats(&self) -> DirectionStats {
        self.reverse.stats_at(self.clock)
    }
    pub fn counters(&self) -> NetworkCounters {
        self.counters
    }

    /// (injection time, RTT) of every probe that came back, in return order.
    pub fn probe_rtts(&self) -> &[(Instant, Duration)] {
        &self.probe_rtts
    }

    /// The RTT of a probe through empty queues: propagation both ways plus its own
    /// serialization both ways, computed from the configuration. Deliberately *not* the
    /// smallest sample: a queue that never drains would otherwise hide in the baseline.
    /// Jitter therefore counts as queueing.
    pub fn empty_path_rtt(&self) -> Duration {
        let size = self.probe.as_ref().map_or(64, |p| p.size);
        self.forward.config.delay
            + self.reverse.config.delay
            + self.forward.config.serialization(size)
            + self.reverse.config.serialization(size)
    }

    /// Standing queue in ms over probes injected at or after `from` (pass the end of the
    /// warm-up). Lost probes give no sample.
    pub fn standing_queue_ms(&self, from: Instant) -> QueueFigures {
        let base = self.empty_path_rtt();
        let mut q: Vec<f64> = self
            .probe_rtts
            .iter()
            .filter(|(sent, _)| *sent >= from)
            .map(|(_, rtt)| rtt.saturating_sub(base).as_secs_f64() * 1e3)
            .collect();
        q.sort_by(f64::total_cmp);
        let at = |p| percentile(&q, p).unwrap_or(0.0);
        QueueFigures { p50: at(0.50), p95: at(0.95), max: at(1.0), samples: q.len() }
    }
}

#[cfg(test)]
mod tests;
