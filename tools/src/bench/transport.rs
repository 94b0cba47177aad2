//! `rill bench transport`: the scenarios of the transport issue.
//!
//! - loopback: real UDP on 127.0.0.1 through the tokio driver (goodput, CPU, packets).
//! - bottleneck: the virtual link at 20 Mbit/s, 1 s of buffer, 20 ms one-way; standing
//!   queue from an independent probe, per controller, plus a sweep of LEDBAT++ targets.
//! - competing: the same link with 250 ms of buffer; a 4 Mbit/s stream (1 s deadlines)
//!   and a background bulk flow in one rill session, against a NewReno bulk flow.
//! - remote: two processes (`--listen` / `--connect`) over a real path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use rill_transport::congestion::{ControllerFactory, LedbatConfig, NewRenoConfig};
use rill_transport::vlink::apps::{BulkSender, Sink, StreamSource};
use rill_transport::vlink::harness::Simulation;
use rill_transport::vlink::link::{LinkConfig, Side, VirtualNetwork};
use rill_transport::{Class, Endpoint, EndpointConfig, SessionConfig};

use super::{Scenario, TransportArgs};
use crate::table::{round, Report};

mod loopback;
mod remote;

/// The bottleneck of the issue: 20 Mbit/s, 20 ms one-way delay.
const LINK_RATE_BPS: u64 = 20_000_000;
const ONE_WAY: Duration = Duration::from_millis(20);
/// Probe interval for the standing queue (METRICS.md: an independent probe).
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_SIZE: usize = 64;
/// Figures are taken after this warm-up (slow start is not the steady state).
const WARMUP: Duration = Duration::from_secs(5);
/// Bytes a bulk sender keeps queued (unsent or unacked): more than the path's
/// bandwidth-delay product plus the 1 s buffer, so no flow is application-limited.
const BULK_QUEUE: usize = 6 << 20;
/// Targets swept to choose the default from measurement.
const TARGET_SWEEP_MS: [u64; 6] = [5, 10, 15, 20, 25, 60];

pub fn run(args: &TransportArgs) -> Result<()> {
    if let Some(addr) = args.listen {
        return remote::listen(addr, args);
    }
    if let Some(addr) = args.connect {
        return remote::connect(addr, args);
    }
    let scenario = args.scenario.unwrap_or(Scenario::All);
    if matches!(scenario, Scenario::Loopback | Scenario::All) {
        loopback::run(args)?;
    }
    if matches!(scenario, Scenario::Bottleneck | Scenario::All) {
        bottleneck(args);
    }
    if matches!(scenario, Scenario::Competing | Scenario::All) {
        competing(args);
    }
    if scenario == Scenario::BatchIo {
        loopback::run_batch_io(args)?;
    }
    Ok(())
}

fn link(buffer: Duration) -> LinkConfig {
    LinkConfig {
        rate_bps: LINK_RATE_BPS,
        buffer_bytes: (LINK_RATE_BPS as f64 / 8.0 * buffer.as_secs_f64()) as usize,
        delay: ONE_WAY,
        ..LinkConfig::default()
    }
}

fn endpoint(factory: Arc<dyn ControllerFactory>, now: Instant, seed: u64) -> Endpoint {
    let config = EndpointConfig {
        session: SessionConfig { congestion: factory, ..Default::default() },
        ..Default::default()
    };
    Endpoint::new(config, now, seed)
}

fn virtual_duration(args: &TransportArgs) -> Duration {
    Duration::from_secs_f64(args.duration.unwrap_or(60.0).max(WARMUP.as_secs_f64() + 1.0))
}

struct BottleneckFigures {
    standing_queue_p50_ms: f64,
    standing_queue_p95_ms: f64,
    utilisation: f64,
    goodput_mbps: f64,
    packets_lost: u64,
}

fn run_bottleneck(factory: Arc<dyn ControllerFactory>, duration: Duration, seed: u64) -> BottleneckFigures {
    let epoch = Instant::now();
    let mut net = VirtualNetwork::new(seed, link(Duration::from_secs(1)), link(Duration::from_secs(1)));
    net.enable_probe(epoch, PROBE_INTERVAL, PROBE_SIZE);
    let mut sim = Simulation::new(net, epoch);
    let a = "10.0.0.1:4000".parse().expect("literal address");
    let b = "10.0.1.1:4000".parse().expect("literal address");
    let sender = sim.add_host(
        a,
        Side::Left,
        endpoint(factory, epoch, seed),
        Box::new(BulkSender::new(b, Class::Background, 64 * 1024, BULK_QUEUE)),
    );
    let sink = sim.add_host(
        b,
        Side::Right,
        endpoint(Arc::new(LedbatConfig::default()), epoch, seed + 1),
        Box::new(Sink::new()),
    );
    sim.run_until(epoch + WARMUP);
    let bytes_at_warmup = sim.app::<Sink>(sink).map_or(0, Sink::payload_bytes);
    let busy_at_warmup = sim.network().forward_stats().busy;
    sim.run_until(epoch + duration);
    let measured = duration - WARMUP;
    let bytes = sim.app::<Sink>(sink).map_or(0, Sink::payload_bytes) - bytes_at_warmup;
    let busy = sim.network().forward_stats().busy - busy_at_warmup;
    let queue = sim.network().standing_queue_ms(epoch + WARMUP);
    let packets_lost = sim
        .app::<BulkSender>(sender)
        .and_then(|s| s.session())
        .and_then(|s| sim.endpoint(sender).session_stats(s))
        .map_or(0, |s| s.packets_lost);
    BottleneckFigures {
        standing_queue_p50_ms: queue.p50,
        standing_queue_p95_ms: queue.p95,
        utilisation: busy.as_secs_f64() / measured.as_secs_f64(),
        goodput_mbps: bytes as f64 * 8.0 / measured.as_secs_f64() / 1e6,
        packets_lost,
    }
}

fn bottleneck(args: &TransportArgs) {
    let duration = virtual_duration(args);
    let mut report = Report::default();
    let controllers: [(&str, Arc<dyn ControllerFactory>); 2] =
        [("ledbat++", Arc::new(LedbatConfig::default())), ("newreno", Arc::new(NewRenoConfig::default()))];
    for (name, factory) in controllers {
        let f = run_bottleneck(factory, duration, args.seed);
        let target = (name == "ledbat++").then(|| LedbatConfig::default().target.as_millis() as u64);
        report.emit(
            json!({
                "scenario": "bottleneck",
                "controller": name,
                "target_ms": target,
                "standing_queue_ms": {"p50": round(f.standing_queue_p50_ms, 1), "p95": round(f.standing_queue_p95_ms, 1)},
                "utilisation": round(f.utilisation, 3),
                "goodput_mbps": round(f.goodput_mbps, 2),
                "packets_lost": f.packets_lost,
                "virtual_s": duration.as_secs_f64(),
            }),
            args.json,
        );
    }
    if !args.json {
        report.print_table("bottleneck: 20 Mbit/s, 1 s of buffer, 20 ms one-way delay (virtual link)");
    }
    let mut sweep = Report::default();
    for target_ms in TARGET_SWEEP_MS {
        let factory =
            Arc::new(LedbatConfig { target: Duration::from_millis(target_ms), ..Default::default() });
        let f = run_bottleneck(factory, duration, args.seed);
        sweep.emit(
            json!({
                "scenario": "bottleneck-target",
                "controller": "ledbat++",
                "target_ms": target_ms,
                "standing_queue_ms": {"p50": round(f.standing_queue_p50_ms, 1), "p95": round(f.standing_queue_p95_ms, 1)},
                "utilisation": round(f.utilisation, 3),
                "goodput_mbps": round(f.goodput_mbps, 2),
            }),
            args.json,
        );
    }
    if !args.json {
        sweep.print_table("bottleneck: LEDBAT++ target sweep (same link)");
    }
}

fn competing(args: &TransportArgs) {
    let duration = virtual_duration(args);
    let epoch = Instant::now();
    let mut net =
        VirtualNetwork::new(args.seed, link(Duration::from_millis(250)), link(Duration::from_millis(250)));
    net.enable_probe(epoch, PROBE_INTERVAL, PROBE_SIZE);
    let mut sim = Simulation::new(net, epoch);
    let ours = "10.0.0.1:4000".parse().expect("literal address");
    let ours_rx = "10.0.1.1:4000".parse().expect("literal address");
    let rival = "10.0.0.2:4000".parse().expect("literal address");
    let rival_rx = "10.0.1.2:4000".parse().expect("literal address");
    let stream_rate_bps = 4_000_000;
    let source = sim.add_host(
        ours,
        Side::Left,
        endpoint(Arc::new(LedbatConfig::default()), epoch, args.seed),
        Box::new(
            StreamSource::new(ours_rx, stream_rate_bps, 16 * 1024, Duration::from_secs(1))
                .with_background(64 * 1024, BULK_QUEUE),
        ),
    );
    let sink = sim.add_host(
        ours_rx,
        Side::Right,
        endpoint(Arc::new(LedbatConfig::default()), epoch, args.seed + 1),
        Box::new(Sink::new()),
    );
    sim.add_host(
        rival,
        Side::Left,
        endpoint(Arc::new(NewRenoConfig::default()), epoch, args.seed + 2),
        Box::new(BulkSender::new(rival_rx, Class::Background, 64 * 1024, BULK_QUEUE)),
    );
    let rival_sink = sim.add_host(
        rival_rx,
        Side::Right,
        endpoint(Arc::new(NewRenoConfig::default()), epoch, args.seed + 3),
        Box::new(Sink::new()),
    );
    sim.run_until(epoch + WARMUP);
    let bg0 = sim.app::<Sink>(sink).map_or(0, |s| s.class_bytes(Class::Background));
    let rival0 = sim.app::<Sink>(rival_sink).map_or(0, Sink::payload_bytes);
    sim.run_until(epoch + duration);
    let measured = (duration - WARMUP).as_secs_f64();
    let link_bytes = LINK_RATE_BPS as f64 / 8.0 * measured;
    let s = sim.app::<Sink>(sink).expect("sink host");
    let bg = s.class_bytes(Class::Background) - bg0;
    let rival_bytes = sim.app::<Sink>(rival_sink).map_or(0, Sink::payload_bytes) - rival0;
    // Only messages whose deadline passed before the end count (the rest could still arrive).
    let due = sim.app::<StreamSource>(source).map_or(0, |src| src.sent_due_by(epoch + duration));
    let stream = s.stream_report(due, Duration::from_secs(1));
    let queue = sim.network().standing_queue_ms(epoch + WARMUP);
    if std::env::var_os("RILL_BENCH_DEBUG").is_some() {
        let st = sim
            .app::<StreamSource>(source)
            .and_then(|s| s.session())
            .and_then(|x| sim.endpoint(source).session_stats(x));
        eprintln!("{st:#?}\nforward {:?}", sim.network().forward_stats());
        eprintln!("misses {:?}", s.stream_misses(due, Duration::from_secs(1)));
    }
    let mut report = Report::default();
    report.emit(
        json!({
            "scenario": "competing",
            "controller": "ledbat++",
            "competitor": "newreno",
            "stream_on_time": round(stream.on_time_fraction, 4),
            "stream_messages": stream.due,
            "stream_late": stream.late,
            "stream_lost": stream.lost,
            "background_share": round(bg as f64 / link_bytes, 3),
            "competitor_share": round(rival_bytes as f64 / link_bytes, 3),
            "standing_queue_ms": {"p50": round(queue.p50, 1), "p95": round(queue.p95, 1)},
            "virtual_s": duration.as_secs_f64(),
        }),
        args.json,
    );
    if !args.json {
        report.print_table("competing: 20 Mbit/s, 250 ms of buffer; 4 Mbit/s stream (1 s deadline) + background vs NewReno bulk");
    }
}
