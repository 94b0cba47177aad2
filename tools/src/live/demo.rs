//! `rill demo`: a whole channel on one machine over real UDP on loopback: a publisher
//! looping the built-in sample, a few relays, viewers, and one viewer serving the stream
//! over HTTP for a real player. Prints the link, the URL, a live table and a summary.
//!
//! Every node is the real thing (`LiveNode`: swarm, encrypted transport, UDP socket of
//! its own); only the process is shared, so the figures of all nodes can be added up.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rill_publisher::InputOptions;
use rill_swarm::node::Role;
use rill_viewer::http::HttpStreamServer;
use rill_viewer::playout::PlayoutConfig;
use rill_viewer::LagHistogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::common::{self, ms};
use super::link::ChannelLink;
use super::node::{LiveNode, NodeOptions, NodeSnapshot};
use super::publish::{ingest, sample_spec, IngestSnapshot};
use super::watch::{spawn_viewer, Outputs, PlayerSnapshot};
use crate::table::round;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Nodes besides the publisher (about one in ten is a relay, the rest viewers).
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
    /// Seconds to run (default: until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Where the first viewer serves the stream for a player (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Viewers' target playout lag, ms.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub latency: u64,
    /// Print the summary as one JSON object (the live table still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Nominal bitrate of the sample for the link (it measures about 650 kbit/s).
const SAMPLE_KBPS: u32 = 1000;
/// Relays are high-capacity: 20 Mbit/s each.
const RELAY_UPLOAD_KBPS: u32 = 20_000;
/// Viewers offer three times the stream rate, the publisher six copies.
const VIEWER_UPLOAD_FACTOR: u32 = 3;
const PUBLISHER_UPLOAD_FACTOR: u32 = 6;
/// Viewers join over this long, not all in the same millisecond.
const JOIN_SPREAD: Duration = Duration::from_secs(1);

struct Viewer {
    node: Arc<Mutex<NodeSnapshot>>,
    player: Arc<Mutex<PlayerSnapshot>>,
    task: tokio::task::JoinHandle<Result<PlayerSnapshot>>,
}

pub fn run(args: &DemoArgs) -> Result<std::process::ExitCode> {
    if args.nodes == 0 || args.nodes > 500 {
        bail!("--nodes must be 1 to 500 (each node is a socket and tasks in this process)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> Result<std::process::ExitCode> {
    let (stop_tx, stop_rx) = common::shutdown_signal();
    let key = common::random_channel_key()?;
    let stripes = super::link::DEFAULT_STRIPES;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let node_opts = |role, upload_kbps, bootstrap: Vec<_>| -> Result<NodeOptions> {
        Ok(NodeOptions {
            role,
            listen: loopback,
            advertise: None,
            node_key: common::ephemeral_node_key()?,
            channel: key.channel_id(),
            bootstrap,
            stripes,
            stream_kbps: SAMPLE_KBPS,
            upload_kbps,
            psk: None,
            seed: common::random_seed(),
        })
    };
    let http = HttpStreamServer::bind(args.http)
        .await
        .with_context(|| format!("cannot serve HTTP on {} (choose another with --http)", args.http))?;

    // Publisher.
    let publisher_opts = node_opts(Role::Publisher, SAMPLE_KBPS * PUBLISHER_UPLOAD_FACTOR, vec![])?;
    let publisher = LiveNode::bind(&publisher_opts)?;
    let mut link = ChannelLink {
        channel: key.channel_id(),
        peers: vec![(publisher_opts.node_key.id(), publisher.local_addr())],
        stripes,
        kbps: SAMPLE_KBPS,
        psk: None,
    };
    let publisher_figures = Arc::new(Mutex::new(NodeSnapshot::default()));
    let ingest_figures = Arc::new(Mutex::new(IngestSnapshot::default()));
    let (chunk_tx, chunk_rx) = mpsc::channel(256);
    let input =
        rill_publisher::open(&sample_spec(), &InputOptions { loop_forever: true, ..InputOptions::default() })
            .await
            .context("opening the built-in sample")?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(publisher.run(
        Some(chunk_rx),
        None,
        publisher_figures.clone(),
        stop_rx.clone(),
        Duration::ZERO,
    )));
    let ingest_task =
        tokio::spawn(ingest(input, key.clone(), stripes, SAMPLE_KBPS, chunk_tx, ingest_figures.clone()));

    // Relays: one per ten nodes; they join through the publisher and are named in the link.
    let relays = args.nodes / 10;
    let mut relay_figures = Vec::new();
    for _ in 0..relays {
        let opts = node_opts(Role::Relay, RELAY_UPLOAD_KBPS, link.peers.clone())?;
        let node = LiveNode::bind(&opts)?;
        link.peers.push((opts.node_key.id(), node.local_addr()));
        let figures = Arc::new(Mutex::new(NodeSnapshot::default()));
        relay_figures.push(figures.clone());
        tasks.push(tokio::spawn(node.run(None, None, figures, stop_rx.clone(), Duration::ZERO)));
    }
    eprintln!("rill demo: channel link (paste into `rill watch`):\n  {link}");
    eprintln!(
        "rill demo: open the stream in a player:\n  mpv http://{}/   (or vlc, ffplay)",
        http.local_addr()
    );
    eprintln!(
        "rill demo: {} viewers and {relays} relays join over real UDP on loopback; Ctrl-C stops and prints a summary",
        args.nodes - relays
    );

    // Viewers, spread over JOIN_SPREAD; the first serves HTTP.
    let mut viewers = Vec::new();
    let mut http = Some(http);
    let count = args.nodes - relays;
    for _ in 0..count {
        let opts = node_opts(Role::Viewer, SAMPLE_KBPS * VIEWER_UPLOAD_FACTOR, link.peers.clone())?;
        let node = LiveNode::bind(&opts)?;
        let outputs = Outputs { sink: None, http: http.take() };
        let playout =
            PlayoutConfig { latency: Duration::from_millis(args.latency), ..PlayoutConfig::default() };
        let v = spawn_viewer(node, playout, outputs, Instant::now(), &stop_rx);
        tasks.push(v.node);
        viewers.push(Viewer { node: v.node_figures, player: v.player_figures, task: v.player });
        tokio::time::sleep(JOIN_SPREAD / count as u32).await;
    }

    // The live table, once a second, until Ctrl-C or --duration.
    let began = Instant::now();
    let deadline = args.duration.map(|s| began + Duration::from_secs_f64(s.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop_wait = stop_rx.clone();
    let mut before: Vec<LagHistogram> = vec![LagHistogram::new(); viewers.len()];
    let mut bytes_before = 0u64;
    eprintln!(
        "{:>5} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10} {:>6} {:>12}",
        "t_s", "viewers", "arr_p50", "arr_p95", "arr_p99", "playout_p50", "continuity", "lost", "upload_all"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop_wait.changed() => break,
        }
        if ingest_task.is_finished() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut interval = LagHistogram::new();
        let mut playout = LagHistogram::new();
        let (mut on_time, mut due, mut lost, mut bytes, mut watching) = (0u64, 0u64, 0u64, 0u64, 0usize);
        for (v, prev) in viewers.iter().zip(before.iter_mut()) {
            let n = v.node.lock().map(|s| s.clone()).unwrap_or_default();
            let p = v.player.lock().map(|s| s.clone()).unwrap_or_default();
            interval.merge(&n.arrival_lag.since(prev));
            *prev = n.arrival_lag.clone();
            playout.merge(&p.playout.playout_lag);
            on_time += p.playout.chunks_on_time;
            due += p.playout.chunks_due_after_startup;
            lost += p.playout.lost_chunks;
            bytes += n.bytes_sent;
            watching += usize::from(p.first_byte.is_some());
        }
        for f in relay_figures.iter().chain([&publisher_figures]) {
            bytes += f.lock().map(|s| s.bytes_sent).unwrap_or(0);
        }
        let p = |h: &LagHistogram, q: f64| {
            h.percentile_us(q).map_or("-".to_string(), |v| format!("{:.0}", ms(v)))
        };
        eprintln!(
            "{:>5.0} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10} {:>6} {:>12}",
            began.elapsed().as_secs_f64(),
            watching,
            p(&interval, 0.5),
            p(&interval, 0.95),
            p(&interval, 0.99),
            p(&playout, 0.5),
            if due > 0 { format!("{:.4}", on_time as f64 / due as f64) } else { "-".into() },
            lost,
            common::human_rate(bytes.saturating_sub(bytes_before) as f64 * 8.0),
        );
        bytes_before = bytes;
    }
    let _ = stop_tx.send(true);
    if ingest_task.is_finished() {
        ingest_task.await.context("ingest task")??;
    } else {
        ingest_task.abort();
    }

    // Summary over every viewer.
    let mut first_keyframe = LagHistogram::new();
    let mut first_byte = LagHistogram::new();
    let mut playout = LagHistogram::new();
    let mut arrival = LagHistogram::new();
    let (mut on_time, mut due, mut lost, mut late, mut never_started) = (0u64, 0u64, 0u64, 0u64, 0usize);
    let mut viewer_bytes = 0u64;
    for v in viewers {
        let p = v.task.await.context("player task")??;
        let n = v.node.lock().map(|s| s.clone()).unwrap_or_default();
        match (p.first_keyframe, p.first_byte) {
            (Some(k), Some(b)) => {
                first_keyframe.record(k.as_micros() as u64);
                first_byte.record(b.as_micros() as u64);
            }
            _ => never_started += 1,
        }
        playout.merge(&p.playout.playout_lag);
        arrival.merge(&n.arrival_lag);
        on_time += p.playout.chunks_on_time;
        due += p.playout.chunks_due_after_startup;
        lost += p.playout.lost_chunks;
        late += p.playout.late_chunks;
        viewer_bytes += n.bytes_sent;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let publisher = publisher_figures.lock().map(|s| s.clone()).unwrap_or_default();
    let relay_bytes: u64 = relay_figures.iter().map(|f| f.lock().map(|s| s.bytes_sent).unwrap_or(0)).sum();
    let media_bytes = ingest_figures.lock().map(|s| s.chunker.media_bytes).unwrap_or(0);
    let all_sent = publisher.bytes_sent + relay_bytes + viewer_bytes;
    let viewers_n = (args.nodes - relays) as f64;
    let lag = |h: &LagHistogram| {
        let q = |x: f64| h.percentile_us(x).map(|v| round(ms(v), 1));
        json!({ "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": h.max_us().map(|v| round(ms(v), 1)) })
    };
    let summary = json!({
        "scenario": "demo",
        "viewers": args.nodes - relays,
        "relays": relays,
        "duration_s": round(began.elapsed().as_secs_f64(), 1),
        "latency_target_ms": args.latency,
        "startup_ms": { "first_keyframe": lag(&first_keyframe), "first_byte": lag(&first_byte) },
        "viewers_never_started": never_started,
        "arrival_lag_ms": lag(&arrival),
        "playout_lag_ms": lag(&playout),
        "continuity_index": if due > 0 { Value::from(round(on_time as f64 / due as f64, 4)) } else { Value::Null },
        "lost_chunks": lost,
        "late_chunks": late,
        "publisher_upload": if media_bytes > 0 { Value::from(round(publisher.bytes_sent as f64 / media_bytes as f64, 2)) } else { Value::Null },
        "overhead_ratio": if media_bytes > 0 { Value::from(round(all_sent as f64 / (media_bytes as f64 * viewers_n), 3)) } else { Value::Null },
    });
    if args.json {
        println!("{summary}");
    } else {
        let mut report = crate::table::Report::default();
        report.push(summary);
        report.print_table("rill demo: summary over all viewers");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
