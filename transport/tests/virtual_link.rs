//! End-to-end behaviour of the transport over the virtual link, in virtual time (figures
//! are deterministic, so asserting them cannot flake).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_transport::congestion::{ControllerFactory, LedbatConfig, NewRenoConfig};
use rill_transport::vlink::apps::{BulkSender, Sink, StreamSource};
use rill_transport::vlink::harness::{Application, Simulation};
use rill_transport::vlink::link::{LinkConfig, LossModel, Side, VirtualNetwork};
use rill_transport::{Class, Endpoint, EndpointConfig, Event, SendOptions, SessionConfig, SessionId};

fn seed() -> u64 {
    let s = std::env::var("RILL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("reproduce with RILL_TEST_SEED={s}");
    s
}

fn endpoint(factory: Arc<dyn ControllerFactory>, now: Instant, seed: u64) -> Endpoint {
    let config = EndpointConfig {
        session: SessionConfig { congestion: factory, ..Default::default() },
        ..Default::default()
    };
    Endpoint::new(config, now, seed)
}

fn addrs() -> (SocketAddr, SocketAddr) {
    ("10.0.0.1:1".parse().unwrap(), "10.0.1.1:1".parse().unwrap())
}

fn message(i: u32) -> Bytes {
    let len = 8 + (i as usize * 7919) % 40_000;
    let mut v = vec![(i % 253) as u8; len];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    Bytes::from(v)
}

/// Sends messages 0..count, as fast as the send buffer takes them.
struct Messages {
    remote: SocketAddr,
    count: u32,
    next: u32,
    session: Option<SessionId>,
}

impl Application for Messages {
    fn on_start(&mut self, now: Instant, ep: &mut Endpoint) {
        self.session = ep.connect(now, self.remote).ok();
    }
    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) {
        if matches!(event, Event::Closed { .. }) {
            return;
        }
        let Some(s) = self.session else { return };
        while self.next < self.count
            && ep.send(now, s, message(self.next), SendOptions::reliable(Class::Stream)).is_ok()
        {
            self.next += 1;
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[test]
fn exactly_once_over_lossy_bursty_reordering_link() {
    let seed = seed();
    let epoch = Instant::now();
    let lossy = LinkConfig {
        rate_bps: 10_000_000,
        buffer_bytes: 300_000,
        delay: Duration::from_millis(15),
        jitter: Duration::from_millis(3),
        loss: LossModel::GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.3,
            loss_in_good: 0.05,
            loss_in_bad: 0.6,
        },
        reorder: 0.02,
        reorder_extra: Duration::from_millis(8),
    };
    let reverse = LinkConfig { loss: LossModel::Random(0.05), ..lossy.clone() };
    let mut sim = Simulation::new(VirtualNetwork::new(seed, lossy, reverse), epoch);
    let (a, b) = addrs();
    let count = 400;
    sim.add_host(
        a,
        Side::Left,
        endpoint(Arc::new(LedbatConfig::default()), epoch, seed),
        Box::new(Messages { remote: b, count, next: 0, session: None }),
    );
    let sink = sim.add_host(
        b,
        Side::Right,
        endpoint(Arc::new(LedbatConfig::default()), epoch, seed + 1),
        Box::new(Sink::keeping_messages()),
    );
    sim.run_until(epoch + Duration::from_secs(120));
    assert!(!sim.step_limit_hit);
    let fwd = sim.network().forward_stats();
    assert!(fwd.dropped_loss > 100, "the link really lost packets: {fwd:?}");
    let kept = &sim.app::<Sink>(sink).unwrap().kept;
    let mut seen = vec![0u32; count as usize];
    for m in kept {
        let i = u32::from_be_bytes(m[..4].try_into().unwrap());
        assert_eq!(*m, message(i), "message {i} intact");
        seen[i as usize] += 1;
    }
    let wrong: Vec<_> = seen.iter().enumerate().filter(|(_, &n)| n != 1).collect();
    assert!(wrong.is_empty(), "every message exactly once; (index, count) off: {wrong:?}");
}

struct Bottleneck {
    queue_p95_ms: f64,
    utilisation: f64,
}

fn bottleneck(factory: Arc<dyn ControllerFactory>, secs: u64) -> Bottleneck {
    let epoch = Instant::now();
    let link = LinkConfig { rate_bps: 20_000_000, buffer_bytes: 2_500_000, ..Default::default() };
    let mut net = VirtualNetwork::new(1, link.clone(), link);
    net.enable_probe(epoch, Duration::from_millis(50), 64);
    let mut sim = Simulation::new(net, epoch);
    let (a, b) = addrs();
    sim.add_host(
        a,
        Side::Left,
        endpoint(factory, epoch, 1),
        Box::new(BulkSender::new(b, Class::Background, 65_536, 6 << 20)),
    );
    sim.add_host(
        b,
        Side::Right,
        endpoint(Arc::new(LedbatConfig::default()), epoch, 2),
        Box::new(Sink::new()),
    );
    let warmup = Duration::from_secs(5);
    sim.run_until(epoch + warmup);
    let busy0 = sim.network().forward_stats().busy;
    sim.run_until(epoch + Duration::from_secs(secs));
    let busy = sim.network().forward_stats().busy - busy0;
    Bottleneck {
        queue_p95_ms: sim.network().standing_queue_ms(epoch + warmup).p95,
        utilisation: busy.as_secs_f64() / (secs as f64 - warmup.as_secs_f64()),
    }
}

#[test]
fn ledbat_holds_the_queue_near_its_target_while_newreno_fills_it() {
    let default_ms = LedbatConfig::default().target.as_millis() as u64;
    for target_ms in [10u64, default_ms, 25] {
        let factory =
            Arc::new(LedbatConfig { target: Duration::from_millis(target_ms), ..Default::default() });
        let f = bottleneck(factory, 40);
        assert!(f.queue_p95_ms <= target_ms as f64 * 1.2, "target {target_ms} ms: p95 {} ms", f.queue_p95_ms);
        assert!(f.utilisation >= 0.88, "target {target_ms} ms: utilisation {}", f.utilisation);
    }
    let reno = bottleneck(Arc::new(NewRenoConfig::default()), 40);
    assert!(reno.queue_p95_ms > 500.0, "newreno fills the 1 s buffer: p95 {} ms", reno.queue_p95_ms);
}

#[test]
fn stream_keeps_its_rate_next_to_a_loss_based_flow_and_background_yields() {
    let epoch = Instant::now();
    let link = LinkConfig { rate_bps: 20_000_000, buffer_bytes: 625_000, ..Default::default() };
    let mut sim = Simulation::new(VirtualNetwork::new(3, link.clone(), link), epoch);
    let (a, b) = addrs();
    let (c, d): (SocketAddr, SocketAddr) = ("10.0.0.2:1".parse().unwrap(), "10.0.1.2:1".parse().unwrap());
    let deadline = Duration::from_secs(1);
    let src = sim.add_host(
        a,
        Side::Left,
        endpoint(Arc::new(LedbatConfig::default()), epoch, 1),
        Box::new(StreamSource::new(b, 4_000_000, 16_384, deadline).with_background(65_536, 6 << 20)),
    );
    let sink = sim.add_host(
        b,
        Side::Right,
        endpoint(Arc::new(LedbatConfig::default()), epoch, 2),
        Box::new(Sink::new()),
    );
    sim.add_host(
        c,
        Side::Left,
        endpoint(Arc::new(NewRenoConfig::default()), epoch, 3),
        Box::new(BulkSender::new(d, Class::Background, 65_536, 6 << 20)),
    );
    let rival = sim.add_host(
        d,
        Side::Right,
        endpoint(Arc::new(NewRenoConfig::default()), epoch, 4),
        Box::new(Sink::new()),
    );
    let end = epoch + Duration::from_secs(40);
    sim.run_until(end);
    let due = sim.app::<StreamSource>(src).unwrap().sent_due_by(end);
    let s = sim.app::<Sink>(sink).unwrap();
    let report = s.stream_report(due, deadline);
    assert!(due > 1000);
    assert!(report.on_time_fraction >= 0.99, "{report:?}");
    let link_bytes = 20e6 / 8.0 * 40.0;
    let background_share = s.class_bytes(Class::Background) as f64 / link_bytes;
    assert!(background_share <= 0.10, "background share {background_share}");
    let rival_share = sim.app::<Sink>(rival).unwrap().payload_bytes() as f64 / link_bytes;
    assert!(rival_share > 0.5, "the competitor got the rest: {rival_share}");
}

/// Two LEDBAT++ bulk sessions on one bottleneck (20 Mbit/s, 1 s of buffer), the second
/// starting 20 s after the first: each one's share of the link over the last 30 s, and
/// the standing queue's p95 over that time, ms.
fn latecomer_shares(target: Duration) -> (f64, f64, f64) {
    let epoch = Instant::now();
    let link = LinkConfig { rate_bps: 20_000_000, buffer_bytes: 2_500_000, ..Default::default() };
    let mut net = VirtualNetwork::new(5, link.clone(), link);
    net.enable_probe(epoch, Duration::from_millis(50), 64);
    let mut sim = Simulation::new(net, epoch);
    let factory = Arc::new(LedbatConfig { target, ..Default::default() });
    let (a, b) = addrs();
    let (c, d): (SocketAddr, SocketAddr) = ("10.0.0.2:1".parse().unwrap(), "10.0.1.2:1".parse().unwrap());
    sim.add_host(
        a,
        Side::Left,
        endpoint(factory.clone(), epoch, 1),
        Box::new(BulkSender::new(b, Class::Background, 65_536, 6 << 20)),
    );
    let first = sim.add_host(b, Side::Right, endpoint(factory.clone(), epoch, 2), Box::new(Sink::new()));
    sim.run_until(epoch + Duration::from_secs(20));
    let late = epoch + Duration::from_secs(20);
    sim.add_host(
        c,
        Side::Left,
        endpoint(factory.clone(), late, 3),
        Box::new(BulkSender::new(d, Class::Background, 65_536, 6 << 20)),
    );
    let second = sim.add_host(d, Side::Right, endpoint(factory, late, 4), Box::new(Sink::new()));
    sim.run_until(epoch + Duration::from_secs(50));
    let (f0, s0) =
        (sim.app::<Sink>(first).unwrap().payload_bytes(), sim.app::<Sink>(second).unwrap().payload_bytes());
    sim.run_until(epoch + Duration::from_secs(80));
    let (f1, s1) =
        (sim.app::<Sink>(first).unwrap().payload_bytes(), sim.app::<Sink>(second).unwrap().payload_bytes());
    let link_bytes = 20e6 / 8.0 * 30.0;
    (
        (f1 - f0) as f64 / link_bytes,
        (s1 - s0) as f64 / link_bytes,
        sim.network().standing_queue_ms(epoch + Duration::from_secs(50)).p95,
    )
}

#[test]
fn a_latecomer_and_an_incumbent_split_the_link() {
    // Two uploads of one node share its uplink: neither may starve the other, whichever
    // started first (LEDBAT's known latecomer advantage), and together they keep
    // the link busy and the queue near the target.
    let default_ms = LedbatConfig::default().target.as_millis() as u64;
    for target_ms in [10u64, default_ms] {
        let (incumbent, latecomer, queue_p95_ms) = latecomer_shares(Duration::from_millis(target_ms));
        let figures = format!(
            "target {target_ms} ms: shares {incumbent:.3} / {latecomer:.3}, queue p95 {queue_p95_ms:.1} ms"
        );
        assert!(incumbent >= 0.35 && latecomer >= 0.35, "{figures}");
        assert!(incumbent + latecomer >= 0.85, "{figures}");
        assert!(queue_p95_ms <= target_ms as f64 * 1.3, "{figures}");
    }
}
