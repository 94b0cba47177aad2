//! The link model: a dumbbell whose two directions are each a drop-tail bottleneck.
//!
//! A datagram from a Left host to a Right host crosses the forward direction, Right to Left
//! the reverse one; all flows in a direction share its queue, which is how a competing
//! flow interferes. Per direction, in order: loss (random or Gilbert-Elliott, applied
//! before the queue, like a lossy access link), the drop-tail queue measured in bytes,
//! serialization at `rate_bps`, then propagation `delay` plus uniform jitter in
//! `[0, jitter]`. Jitter never reorders (a packet never arrives before its predecessor)
//! unless reordering is configured: then with probability `reorder` a packet is held back
//! by `reorder_extra` and later ones overtake it. Hosts on the same side reach each other
//! directly after [`SAME_SIDE_DELAY`], with no queue.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Delay between two hosts on the same side (a LAN hop).
pub const SAME_SIDE_DELAY: Duration = Duration::from_micros(100);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossModel {
    None,
    /// Each packet lost independently with this probability.
    Random(f64),
    /// Bursty loss: a two-state Markov chain stepped per packet (Gilbert-Elliott).
    /// Mean burst length in the bad state is 1 / p_bad_to_good packets.
    GilbertElliott {
        p_good_to_bad: f64,
        p_bad_to_good: f64,
        loss_in_good: f64,
        loss_in_bad: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    pub rate_bps: u64,
    /// Drop-tail buffer in bytes (waiting packets; the one being serialized included).
    pub buffer_bytes: usize,
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: LossModel,
    /// Probability that a packet is held back by `reorder_extra`.
    pub reorder: f64,
    pub reorder_extra: Duration,
}

impl Default for LinkConfig {
    /// 20 Mbit/s, 250 ms of buffer, 20 ms one-way, no loss.
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
    /// Time to put `bytes` on the wire.
    pub fn serialization(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 8.0 / self.rate_bps.max(1) as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectionStats {
    pub offered_packets: u64,
    pub offered_bytes: u64,
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    pub dropped_queue: u64,
    pub dropped_loss: u64,
    /// Time the link spent serializing packets (for utilisation).
    pub busy: Duration,
    /// Bytes delivered per destination (for `share`).
    pub delivered_by_destination: BTreeMap<SocketAddr, u64>,
}

#[derive(Debug)]
struct Direction {
    config: LinkConfig,
    /// When the link finishes serializing what it has accepted so far.
    busy_until: Option<Instant>,
    /// Arrival time of the last packet not picked for reordering (FIFO under jitter).
    last_arrival: Option<Instant>,
    bad_state: bool,
    stats: DirectionStats,
}

impl Direction {
    fn new(config: LinkConfig) -> Self {
        Self {
            config,
            busy_until: None,
            last_arrival: None,
            bad_state: false,
            stats: DirectionStats::default(),
        }
    }

    fn lost(&mut self, rng: &mut ChaCha8Rng) -> bool {
        match self.config.loss {
            LossModel::None => false,
            LossModel::Random(p) => uniform(rng) < p,
            LossModel::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => {
                let flip = if self.bad_state { p_bad_to_good } else { p_good_to_bad };
                if uniform(rng) < flip {
                    self.bad_state = !self.bad_state;
                }
                uniform(rng) < if self.bad_state { loss_in_bad } else { loss_in_good }
            }
        }
    }

    /// Accept a packet at `now`; returns its arrival time at the far end, or None if lost.
    fn enqueue(&mut self, now: Instant, size: usize, rng: &mut ChaCha8Rng) -> Option<Instant> {
        self.stats.offered_packets += 1;
        self.stats.offered_bytes += size as u64;
        if self.lost(rng) {
            self.stats.dropped_loss += 1;
            return None;
        }
        let busy_until = self.busy_until.filter(|&b| b > now).unwrap_or(now);
        let backlog = busy_until - now;
        let queued_bytes = (backlog.as_secs_f64() * self.config.rate_bps as f64 / 8.0) as usize;
        if queued_bytes + size > self.config.buffer_bytes {
            self.stats.dropped_queue += 1;
            return None;
        }
        let serialization = self.config.serialization(size);
        let departure = busy_until + serialization;
        self.busy_until = Some(departure);
        self.stats.busy += serialization;
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.config.jitter.mul_f64(uniform(rng))
        };
        let mut arrival = departure + self.config.delay + jitter;
        if self.config.reorder > 0.0 && uniform(rng) < self.config.reorder {
            arrival += self.config.reorder_extra;
        } else {
            arrival = arrival.max(self.last_arrival.unwrap_or(arrival));
            self.last_arrival = Some(arrival);
        }
        Some(arrival)
    }
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
    pub sent_at: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum InTransit {
    Datagram(Delivery),
    /// A probe on its way out (forward) or back (reverse), sent at `.0`.
    ProbeOut(Instant),
    ProbeBack(Instant),
}

/// Heap entry ordered by (arrival, sequence): equal times keep send order.
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

/// Standing queue percentiles (METRICS.md): probe RTT minus the empty-path RTT.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueFigures {
    pub p50: f64,
    pub p95: f64,
    pub samples: usize,
}

/// Most probe RTTs kept (a 10-minute run at 20 probes per second).
const MAX_PROBE_SAMPLES: usize = 12_000;

#[derive(Debug)]
pub struct VirtualNetwork {
    rng: ChaCha8Rng,
    hosts: BTreeMap<SocketAddr, Side>,
    forward: Direction,
    reverse: Direction,
    in_transit: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    probe: Option<Probe>,
    probe_rtts: Vec<(Instant, Duration)>,
    /// Datagrams to or from an address nobody attached.
    pub unroutable: u64,
}

impl VirtualNetwork {
    pub fn new(seed: u64, forward: LinkConfig, reverse: LinkConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            hosts: BTreeMap::new(),
            forward: Direction::new(forward),
            reverse: Direction::new(reverse),
            in_transit: BinaryHeap::new(),
            seq: 0,
            probe: None,
            probe_rtts: Vec::new(),
            unroutable: 0,
        }
    }

    pub fn attach(&mut self, addr: SocketAddr, side: Side) {
        self.hosts.insert(addr, side);
    }

    fn push(&mut self, at: Instant, what: InTransit) {
        self.seq += 1;
        self.in_transit.push(Reverse(Entry { at, seq: self.seq, what }));
    }

    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let (Some(&a), Some(&b)) = (self.hosts.get(&from), self.hosts.get(&to)) else {
            self.unroutable += 1;
            return;
        };
        let arrival = match (a, b) {
            (Side::Left, Side::Right) => self.forward.enqueue(now, data.len(), &mut self.rng),
            (Side::Right, Side::Left) => self.reverse.enqueue(now, data.len(), &mut self.rng),
            _ => Some(now + SAME_SIDE_DELAY),
        };
        if let Some(at) = arrival {
            self.push(at, InTransit::Datagram(Delivery { from, to, data: data.to_vec(), sent_at: now }));
        }
    }

    /// Inject a `size`-byte probe into the forward queue every `interval` from `start`;
    /// on arrival it is echoed back through the reverse queue and its RTT recorded.
    pub fn enable_probe(&mut self, start: Instant, interval: Duration, size: usize) {
        self.probe = Some(Probe { interval, size, next: start });
    }

    pub fn next_event_time(&self) -> Option<Instant> {
        let transit = self.in_transit.peek().map(|Reverse(e)| e.at);
        let probe = self.probe.as_ref().map(|p| p.next);
        [transit, probe].into_iter().flatten().min()
    }

    /// The next datagram due at or before `now`, handling probe events on the way.
    pub fn poll_delivery(&mut self, now: Instant) -> Option<Delivery> {
        loop {
            if let Some(p) = self.probe.as_mut().filter(|p| p.next <= now) {
                let (at, size) = (p.next, p.size);
                p.next += p.interval;
                if let Some(arrival) = self.forward.enqueue(at, size, &mut self.rng) {
                    self.push(arrival, InTransit::ProbeOut(at));
                }
                continue;
            }
            if self.in_transit.peek().is_none_or(|Reverse(e)| e.at > now) {
                return None;
            }
            let Reverse(entry) = self.in_transit.pop()?;
            match entry.what {
                InTransit::Datagram(d) => {
                    let sides = (self.hosts.get(&d.from), self.hosts.get(&d.to));
                    let dir = match sides {
                        (Some(Side::Left), Some(Side::Right)) => &mut self.forward,
                        (Some(Side::Right), Some(Side::Left)) => &mut self.reverse,
                        _ => return Some(d),
                    };
                    dir.stats.delivered_packets += 1;
                    dir.stats.delivered_bytes += d.data.len() as u64;
                    *dir.stats.delivered_by_destination.entry(d.to).or_default() += d.data.len() as u64;
                    return Some(d);
                }
                InTransit::ProbeOut(sent) => {
                    let size = self.probe.as_ref().map_or(64, |p| p.size);
                    if let Some(back) = self.reverse.enqueue(entry.at, size, &mut self.rng) {
                        self.push(back, InTransit::ProbeBack(sent));
                    }
                }
                InTransit::ProbeBack(sent) => {
                    if self.probe_rtts.len() < MAX_PROBE_SAMPLES {
                        self.probe_rtts.push((sent, entry.at - sent));
                    }
                }
            }
        }
    }

    pub fn forward_stats(&self) -> &DirectionStats {
        &self.forward.stats
    }
    pub fn reverse_stats(&self) -> &DirectionStats {
        &self.reverse.stats
    }

    /// (send time, RTT) of every probe that came back.
    pub fn probe_rtts(&self) -> &[(Instant, Duration)] {
        &self.probe_rtts
    }

    /// The RTT of a probe through empty queues: propagation both ways plus its own
    /// serialization. Computed from the configuration, not the smallest sample, so a
    /// queue that never drains still shows (jitter is counted as queueing).
    pub fn empty_path_rtt(&self) -> Duration {
        let size = self.probe.as_ref().map_or(64, |p| p.size);
        self.forward.config.delay
            + self.reverse.config.delay
            + self.forward.config.serialization(size)
            + self.reverse.config.serialization(size)
    }

    /// Standing queue in ms (p50, p95) over probes sent at or after `from`.
    pub fn standing_queue_ms(&self, from: Instant) -> QueueFigures {
        let base = self.empty_path_rtt();
        let mut q: Vec<f64> = self
            .probe_rtts
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, rtt)| rtt.saturating_sub(base).as_secs_f64() * 1e3)
            .collect();
        if q.is_empty() {
            return QueueFigures::default();
        }
        q.sort_by(f64::total_cmp);
        let pct = |p: f64| q[((q.len() - 1) as f64 * p).round() as usize];
        QueueFigures { p50: pct(0.50), p95: pct(0.95), samples: q.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn net(cfg: LinkConfig, seed: u64) -> (VirtualNetwork, SocketAddr, SocketAddr) {
        let mut n = VirtualNetwork::new(seed, cfg.clone(), cfg);
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.1.1:1"));
        n.attach(a, Side::Left);
        n.attach(b, Side::Right);
        (n, a, b)
    }

    fn drain(n: &mut VirtualNetwork, until: Instant) -> Vec<(Instant, Delivery)> {
        let mut out = Vec::new();
        while let Some(t) = n.next_event_time().filter(|&t| t <= until) {
            while let Some(d) = n.poll_delivery(t) {
                out.push((t, d));
            }
        }
        out
    }

    #[test]
    fn rate_delay_and_serialization_add_up() {
        let t0 = Instant::now();
        let cfg = LinkConfig { rate_bps: 8_000_000, buffer_bytes: 1 << 20, ..Default::default() };
        let (mut n, a, b) = net(cfg, 1);
        for _ in 0..1000 {
            n.send(t0, a, b, &[0u8; 1000]);
        }
        let got = drain(&mut n, t0 + Duration::from_secs(5));
        assert_eq!(got.len(), 1000);
        // 1000 B at 8 Mbit/s = 1 ms each; first arrives after 1 ms + 20 ms.
        assert_eq!(got[0].0 - t0, Duration::from_millis(21));
        let last = got[999].0 - t0;
        assert!(last.abs_diff(Duration::from_millis(1020)) < Duration::from_micros(50), "{last:?}");
    }

    #[test]
    fn full_buffer_drops_tail_by_bytes() {
        let t0 = Instant::now();
        let cfg = LinkConfig { rate_bps: 8_000_000, buffer_bytes: 10_000, ..Default::default() };
        let (mut n, a, b) = net(cfg, 1);
        for _ in 0..50 {
            n.send(t0, a, b, &[0u8; 1000]);
        }
        assert_eq!(n.forward_stats().dropped_queue, 40);
        assert_eq!(drain(&mut n, t0 + Duration::from_secs(1)).len(), 10);
    }

    #[test]
    fn random_and_bursty_loss_rates() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            rate_bps: 1 << 40,
            buffer_bytes: 1 << 30,
            loss: LossModel::Random(0.05),
            ..Default::default()
        };
        let (mut n, a, b) = net(cfg, 7);
        for _ in 0..100_000 {
            n.send(t0, a, b, &[0u8; 10]);
        }
        let lost = n.forward_stats().dropped_loss as f64 / 100_000.0;
        assert!((lost - 0.05).abs() < 0.005, "{lost}");

        let ge = LossModel::GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.25,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        };
        let cfg = LinkConfig { rate_bps: 1 << 40, buffer_bytes: 1 << 30, loss: ge, ..Default::default() };
        let mut d = Direction::new(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let outcomes: Vec<bool> = (0..200_000).map(|_| d.lost(&mut rng)).collect();
        let bursts = outcomes.windows(2).filter(|w| !w[0] && w[1]).count();
        let losses = outcomes.iter().filter(|&&l| l).count();
        let mean_burst = losses as f64 / bursts as f64;
        assert!((mean_burst - 4.0).abs() < 0.4, "mean burst {mean_burst}");
    }

    #[test]
    fn jitter_keeps_order_unless_reordering_is_configured() {
        let t0 = Instant::now();
        for (reorder, expect_reordered) in [(0.0, false), (0.1, true)] {
            let cfg = LinkConfig {
                rate_bps: 100_000_000,
                buffer_bytes: 1 << 20,
                jitter: Duration::from_millis(5),
                reorder,
                ..Default::default()
            };
            let (mut n, a, b) = net(cfg, 2);
            for i in 0..500u32 {
                n.send(t0 + Duration::from_micros(i as u64 * 200), a, b, &i.to_be_bytes());
            }
            let order: Vec<u32> = drain(&mut n, t0 + Duration::from_secs(2))
                .iter()
                .map(|(_, d)| u32::from_be_bytes(d.data[..4].try_into().unwrap()))
                .collect();
            assert_eq!(order.len(), 500);
            assert_eq!(order.windows(2).any(|w| w[0] > w[1]), expect_reordered);
        }
    }

    #[test]
    fn probe_sees_empty_then_filled_queue() {
        let t0 = Instant::now();
        let cfg = LinkConfig { rate_bps: 8_000_000, buffer_bytes: 1 << 20, ..Default::default() };
        let (mut n, a, b) = net(cfg, 1);
        n.enable_probe(t0, Duration::from_millis(10), 64);
        drain(&mut n, t0 + Duration::from_millis(500));
        let idle = n.standing_queue_ms(t0);
        assert!(idle.samples > 40 && idle.p95 < 0.01, "{idle:?}");
        // 100 kB at 1 MB/s = 100 ms of queue.
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..100 {
            n.send(t1, a, b, &[0u8; 1000]);
        }
        drain(&mut n, t1 + Duration::from_millis(200));
        let busy = n.standing_queue_ms(t1);
        // Probes sent while the 100 ms queue drains see up to ~100 ms of it.
        assert!(busy.samples >= 10 && busy.p95 > 50.0, "{busy:?}");
    }

    #[test]
    fn same_seed_same_trace() {
        let t0 = Instant::now();
        let run = |seed| {
            let cfg = LinkConfig {
                jitter: Duration::from_millis(3),
                loss: LossModel::Random(0.1),
                reorder: 0.05,
                ..Default::default()
            };
            let (mut n, a, b) = net(cfg, seed);
            for i in 0..300u32 {
                n.send(t0 + Duration::from_micros(i as u64 * 300), a, b, &i.to_be_bytes());
            }
            drain(&mut n, t0 + Duration::from_secs(2))
                .into_iter()
                .map(|(t, d)| (t - t0, d.data))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
