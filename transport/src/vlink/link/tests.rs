//! Tests of the link model alone (no endpoints).

use super::*;
use crate::vlink::test_seed;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.1.1:1";

fn net(cfg: LinkConfig, seed: u64) -> (VirtualNetwork, SocketAddr, SocketAddr) {
    let mut n = VirtualNetwork::new(seed, cfg.clone(), cfg);
    let (a, b) = (addr(A), addr(B));
    n.attach(a, Side::Left);
    n.attach(b, Side::Right);
    (n, a, b)
}

/// Everything delivered by `until`, stepping through event times like the harness.
fn drain(n: &mut VirtualNetwork, until: Instant) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(t) = n.next_event_time().filter(|&t| t <= until) {
        while let Some(d) = n.poll_delivery(t) {
            assert_eq!(d.arrived_at, t);
            out.push(d);
        }
    }
    n.advance_to(until);
    out
}

/// Deliver everything due before `t`, then send at `t` (time only moves forward).
fn send_at(
    n: &mut VirtualNetwork,
    out: &mut Vec<Delivery>,
    t: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: &[u8],
) {
    out.extend(drain(n, t));
    n.send(t, from, to, data);
}

fn index(d: &Delivery) -> u32 {
    u32::from_be_bytes(d.data[..4].try_into().unwrap())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn delay_and_serialization_add_up() {
    let t0 = Instant::now();
    let cfg = LinkConfig::default().rate_bps(8_000_000).buffer_bytes(1 << 20);
    let (mut n, a, b) = net(cfg, test_seed());
    for _ in 0..1000 {
        n.send(t0, a, b, &[0u8; 1000]);
    }
    let got = drain(&mut n, t0 + Duration::from_secs(5));
    assert_eq!(got.len(), 1000);
    // 1000 B at 8 Mbit/s = 1 ms each, then 20 ms of propagation: exact, no drift.
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.arrived_at - t0, ms(i as u64 + 1) + ms(20), "packet {i}");
    }
    // A packet that finds the link idle again pays serialization + delay only.
    let t1 = t0 + Duration::from_secs(10);
    n.send(t1, a, b, &[0u8; 500]);
    let got = drain(&mut n, t1 + Duration::from_secs(1));
    assert_eq!(got[0].arrived_at - t1, Duration::from_micros(500) + ms(20));
}

#[test]
fn rate_limit_gives_the_configured_throughput() {
    let t0 = Instant::now();
    // 10 Mbit/s offered 15 Mbit/s of odd-sized packets for 2 s: delivers exactly the rate.
    let cfg = LinkConfig::default().rate_bps(10_000_000).buffer_time(ms(100));
    let (mut n, a, b) = net(cfg, test_seed());
    let size = 1237;
    let gap = Duration::from_nanos(size as u64 * 8 * 1_000_000_000 / 15_000_000);
    let mut t = t0;
    let mut delivered = Vec::new();
    while t < t0 + Duration::from_secs(2) {
        n.send(t, a, b, &vec![0u8; size]);
        t += gap;
        delivered.extend(drain(&mut n, t));
    }
    // Steady state: count arrivals in [0.5 s, 1.5 s) after the first one.
    let first = delivered[0].arrived_at;
    let window = |d: &&Delivery| {
        let since = d.arrived_at - first;
        since >= ms(500) && since < ms(1500)
    };
    let bytes: usize = delivered.iter().filter(window).map(|d| d.data.len()).sum();
    let rate = bytes as f64 * 8.0;
    assert!((rate - 10e6).abs() <= size as f64 * 8.0, "{rate} bit/s");
    let s = n.forward_stats();
    assert!(s.dropped_queue > 0, "the excess was dropped: {s:?}");
    let start = DirectionStats { at: Some(t0), busy: Duration::ZERO, ..Default::default() };
    let u = s.utilisation_since(&start);
    assert!(u > 0.99 && u <= 1.0, "utilisation {u}");
    drain(&mut n, t + Duration::from_secs(1));
    let s = n.forward_stats();
    assert_eq!(s.offered_packets, s.delivered_packets + s.dropped_queue + s.dropped_loss);
}

#[test]
fn full_buffer_drops_tail_by_bytes() {
    let t0 = Instant::now();
    let cfg = LinkConfig::default().rate_bps(8_000_000).buffer_bytes(10_000);
    let (mut n, a, b) = net(cfg, test_seed());
    for _ in 0..50 {
        n.send(t0, a, b, &[0u8; 1000]);
    }
    let s = n.forward_stats();
    assert_eq!((s.dropped_queue, s.dropped_queue_bytes), (40, 40_000));
    assert_eq!((s.queue_bytes, s.max_queue_bytes), (10_000, 10_000));
    // Bytes, not packets: after 1.5 ms one packet left and half of the next is on the
    // wire, so 1000 bytes are free: a 1001-byte packet is refused, a 1000-byte one fits.
    let t1 = t0 + Duration::from_micros(1500);
    n.send(t1, a, b, &[0u8; 1001]);
    n.send(t1, a, b, &[0u8; 1000]);
    assert_eq!(n.forward_stats().dropped_queue, 41);
    let got = drain(&mut n, t0 + Duration::from_secs(1));
    assert_eq!(got.len(), 11);
    assert!(got.iter().all(|d| d.data.len() == 1000));
    assert_eq!(n.forward_stats().queue_bytes, 0);
}

#[test]
fn random_loss_rate_matches() {
    let t0 = Instant::now();
    let cfg = LinkConfig::default().rate_bps(1 << 40).buffer_bytes(1 << 30).loss(LossModel::Random(0.05));
    let (mut n, a, b) = net(cfg, test_seed());
    for _ in 0..100_000 {
        n.send(t0, a, b, &[0u8; 10]);
    }
    let s = n.forward_stats();
    let lost = s.dropped_loss as f64 / 100_000.0;
    assert!((lost - 0.05).abs() < 0.005, "{lost}");
    assert_eq!(s.dropped_loss_bytes, s.dropped_loss * 10);
    assert_eq!(drain(&mut n, t0 + Duration::from_secs(1)).len() as u64, 100_000 - s.dropped_loss);
}

#[test]
fn gilbert_elliott_loses_in_bursts() {
    let t0 = Instant::now();
    let ge = LossModel::GilbertElliott {
        p_good_to_bad: 0.01,
        p_bad_to_good: 0.25,
        loss_in_good: 0.0,
        loss_in_bad: 1.0,
    };
    let cfg = LinkConfig::default().rate_bps(1 << 40).buffer_bytes(1 << 30).loss(ge);
    let (mut n, a, b) = net(cfg, test_seed());
    let count = 200_000u32;
    for i in 0..count {
        n.send(t0, a, b, &i.to_be_bytes());
    }
    let mut arrived = vec![false; count as usize];
    for d in drain(&mut n, t0 + Duration::from_secs(1)) {
        arrived[index(&d) as usize] = true;
    }
    let bursts = arrived.windows(2).filter(|w| w[0] && !w[1]).count();
    let losses = arrived.iter().filter(|&&x| !x).count();
    let mean_burst = losses as f64 / bursts as f64;
    assert!((mean_burst - 1.0 / 0.25).abs() < 0.4, "mean burst {mean_burst}");
    let rate = losses as f64 / count as f64;
    assert!((rate - ge.mean_loss()).abs() < 0.01, "loss {rate} vs {}", ge.mean_loss());
    // Independent loss at the same rate has mean bursts of 1/(1-p) ≈ 1.04.
    assert!(mean_burst > 3.0);
}

#[test]
fn jitter_keeps_order_unless_reordering_is_configured() {
    let t0 = Instant::now();
    let seed = test_seed();
    for (reorder, expect_reordered) in [(0.0, false), (0.1, true)] {
        let cfg = LinkConfig::default()
            .rate_bps(100_000_000)
            .buffer_bytes(1 << 20)
            .jitter(ms(5))
            .reorder(reorder, ms(5));
        let (mut n, a, b) = net(cfg, seed);
        let mut got = Vec::new();
        for i in 0..500u32 {
            send_at(&mut n, &mut got, t0 + Duration::from_micros(i as u64 * 200), a, b, &i.to_be_bytes());
        }
        got.extend(drain(&mut n, t0 + Duration::from_secs(2)));
        let order: Vec<u32> = got.iter().map(index).collect();
        assert_eq!(order.len(), 500);
        assert_eq!(order.windows(2).any(|w| w[0] > w[1]), expect_reordered, "reorder {reorder}");
        assert_eq!(n.forward_stats().held_back > 0, expect_reordered);
        // Jitter stays within [delay, delay + jitter] (+ serialization) when in order.
        if !expect_reordered {
            for d in &got {
                let transit = d.arrived_at - d.sent_at;
                assert!(transit >= ms(20) && transit <= ms(25) + Duration::from_micros(1));
            }
            let spread: Vec<Duration> = got.iter().map(|d| d.arrived_at - d.sent_at).collect();
            assert!(spread.iter().max() > spread.iter().min(), "jitter applied");
        }
    }
}

#[test]
fn jitter_does_not_change_the_loss_pattern() {
    let t0 = Instant::now();
    let seed = test_seed();
    let survivors = |jitter| {
        let cfg = LinkConfig::default().jitter(jitter).loss(LossModel::Random(0.2));
        let (mut n, a, b) = net(cfg, seed);
        let mut out = Vec::new();
        for i in 0..2000u32 {
            send_at(&mut n, &mut out, t0 + Duration::from_micros(i as u64 * 600), a, b, &i.to_be_bytes());
        }
        out.extend(drain(&mut n, t0 + Duration::from_secs(5)));
        let mut got: Vec<u32> = out.iter().map(index).collect();
        got.sort_unstable();
        got
    };
    assert_eq!(survivors(Duration::ZERO), survivors(ms(4)));
}

#[test]
fn probe_sees_empty_then_filled_queue() {
    let t0 = Instant::now();
    let cfg = LinkConfig::default().rate_bps(8_000_000).buffer_bytes(1 << 20);
    let (mut n, a, b) = net(cfg, test_seed());
    n.enable_probe(t0, ms(10), 64);
    drain(&mut n, t0 + ms(500));
    // 40 ms of propagation + 2 × 64 µs of serialization, exactly.
    assert_eq!(n.empty_path_rtt(), ms(40) + Duration::from_micros(128));
    assert!(n.probe_rtts().iter().all(|&(_, rtt)| rtt == n.empty_path_rtt()));
    let idle = n.standing_queue_ms(t0);
    assert!(idle.samples >= 45, "{idle:?}");
    assert_eq!((idle.p50, idle.p95, idle.max), (0.0, 0.0, 0.0));
    // 100 kB at 1 MB/s: a 100 ms queue that drains over the next 100 ms.
    let t1 = t0 + ms(500);
    for _ in 0..100 {
        n.send(t1, a, b, &[0u8; 1000]);
    }
    drain(&mut n, t1 + ms(300));
    let busy = n.standing_queue_ms(t1);
    assert!(busy.samples >= 25 && busy.max > 90.0 && busy.p95 > 80.0, "{busy:?}");
    let c = n.counters();
    assert_eq!(c.probes_sent - c.probes_returned, 5, "only the last 40 ms are still out: {c:?}");
}

#[test]
fn same_side_hosts_talk_directly_and_strangers_are_unroutable() {
    let t0 = Instant::now();
    let (mut n, a, _) = net(LinkConfig::default(), 1);
    let a2 = addr("10.0.0.2:1");
    n.attach(a2, Side::Left);
    n.send(t0, a, a2, b"hi");
    n.send(t0, a, addr("192.0.2.1:9"), b"lost");
    let got = drain(&mut n, t0 + ms(1));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].arrived_at - t0, SAME_SIDE_DELAY);
    let c = n.counters();
    assert_eq!((c.local_delivered, c.unroutable), (1, 1));
    assert_eq!(n.forward_stats().offered_packets, 0);
}

#[test]
fn share_is_counted_per_destination() {
    let t0 = Instant::now();
    let (mut n, a, b) = net(LinkConfig::default(), 1);
    let b2 = addr("10.0.1.2:1");
    n.attach(b2, Side::Right);
    let mut out = Vec::new();
    for i in 0..30 {
        send_at(&mut n, &mut out, t0 + ms(i), a, if i % 3 == 0 { b2 } else { b }, &[0u8; 100]);
    }
    send_at(&mut n, &mut out, t0 + ms(40), b, a, &[0u8; 7]);
    drain(&mut n, t0 + Duration::from_secs(1));
    let by = n.forward_stats().delivered_by_destination;
    assert_eq!((by[&b], by[&b2]), (2000, 1000));
    assert_eq!(n.reverse_stats().delivered_by_destination[&a], 7);
}

#[test]
fn invalid_configurations_are_errors() {
    let bad = LinkConfig::default().loss(LossModel::Random(1.5));
    let err = VirtualNetwork::try_new(1, bad, LinkConfig::default()).unwrap_err();
    assert_eq!(err, LinkConfigError::NotAProbability { name: "loss", value: 1.5 });
    let zero = LinkConfig::default().rate_bps(0);
    assert_eq!(zero.validate(), Err(LinkConfigError::ZeroRate));
}

#[test]
fn same_seed_same_trace() {
    let t0 = Instant::now();
    let run = |seed| {
        let cfg = LinkConfig::default()
            .jitter(ms(3))
            .loss(LossModel::Random(0.1))
            .reorder(0.05, ms(5))
            .buffer_bytes(20_000);
        let (mut n, a, b) = net(cfg, seed);
        n.enable_probe(t0, ms(7), 64);
        let mut out = Vec::new();
        for i in 0..3000u32 {
            let t = t0 + Duration::from_micros(i as u64 * 300);
            send_at(&mut n, &mut out, t, a, b, &[&i.to_be_bytes()[..], &[0u8; 900]].concat());
            if i % 4 == 0 {
                n.send(t, b, a, &i.to_be_bytes());
            }
        }
        out.extend(drain(&mut n, t0 + Duration::from_secs(3)));
        let trace: Vec<_> = out.into_iter().map(|d| (d.arrived_at - t0, d.data)).collect();
        (trace, n.probe_rtts().to_vec(), n.forward_stats(), n.reverse_stats())
    };
    let seed = test_seed();
    let first = run(seed);
    assert!(first.2.dropped_queue > 0 && first.2.dropped_loss > 0 && first.2.held_back > 0);
    assert_eq!(first, run(seed));
    assert_ne!(first.0, run(seed + 1).0);
}
