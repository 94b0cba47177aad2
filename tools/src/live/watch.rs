//! `rill watch LINK`: join a channel, play it out at a target latency, write the stream
//! to stdout, a file, `udp://`, and/or serve it over HTTP to players.
//!
//! Two tasks: the node (swarm over UDP, `node.rs`) and the player (this file): verified
//! chunks go through the playout buffer (`rill_viewer::playout`) to the outputs. The player
//! also keeps the viewer's figures: startup delay, playout lag, continuity, lost chunks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rill_swarm::chunk::Chunk;
use rill_swarm::node::Role;
use rill_viewer::http::HttpStreamServer;
use rill_viewer::output::{OutputSink, OutputSpec};
use rill_viewer::playout::{
    PlayoutBuffer, PlayoutChunk, PlayoutConfig, PlayoutStats, DEFAULT_STARTUP_BUDGET,
};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use super::common::{self, ms, NodeArgs};
use super::link::ChannelLink;
use super::node::{unix_now_us, LiveNode, NodeOptions, NodeSnapshot, Stopped, OUTPUT_QUEUE_CHUNKS};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The channel link (`rill:…`, printed by `rill publish`).
    pub link: String,
    /// Where to write the stream: `-` (stdout), a file, or udp://HOST:PORT. Default: stdout
    /// unless --http is given.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: Option<String>,
    /// Serve the stream over HTTP on this address (e.g. 127.0.0.1:8080) for mpv, VLC,
    /// ffplay or a browser; several players may connect.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Target playout lag in ms: each chunk leaves this long after the publisher took it in.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub latency: u64,
    /// Start output this long after watching begins when the newest keyframe is so fresh
    /// that its turn at the target lag comes later: the stream then plays up to half the
    /// latency ahead of the target, and gives that back by pausing when a chunk is late.
    /// 0: always start at the target lag.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_STARTUP_BUDGET.as_millis() as u64)]
    pub startup_budget: u64,
    /// This node's key file. Default: a throwaway identity (viewers need no stable id).
    #[arg(long, value_name = "FILE")]
    pub node_key: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// How long the outputs get to write what is queued when the player stops.
const OUTPUT_FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Figures of the player side, refreshed as it runs.
#[derive(Debug, Clone, Default)]
pub struct PlayerSnapshot {
    pub playout: PlayoutStats,
    /// From start to the first verified keyframe chunk held (decoding could start).
    pub first_keyframe: Option<Duration>,
    /// From start to the first byte written out.
    pub first_byte: Option<Duration>,
    /// Bytes handed to the outputs.
    pub bytes_out: u64,
    pub http_clients: u64,
}

impl PlayerSnapshot {
    /// JSON figures (METRICS.md names).
    pub fn json(&self) -> Map<String, Value> {
        let p = &self.playout;
        let mut m = Map::new();
        let d = |x: Option<Duration>| x.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0);
        m.insert(
            "startup_ms".into(),
            json!({ "first_keyframe": d(self.first_keyframe), "first_byte": d(self.first_byte) }),
        );
        m.insert("playout_lag_ms".into(), common::lag_json(&p.playout_lag));
        m.insert("buffer_ms".into(), json!(ms(p.buffered_us)));
        m.insert(
            "continuity_index".into(),
            json!(p.continuity_index().map(|c| (c * 10_000.0).round() / 10_000.0)),
        );
        m.insert("lost_chunks".into(), json!(p.lost_chunks));
        // The continuity index's counts, so several viewers' indices can be combined.
        m.insert("chunks_on_time".into(), json!(p.chunks_on_time));
        m.insert("chunks_due_after_startup".into(), json!(p.chunks_due_after_startup));
        m.insert("lost_after_startup".into(), json!(p.lost_after_startup));
        m.insert("late_chunks".into(), json!(p.late_chunks));
        m.insert("skipped_for_catch_up".into(), json!(p.skipped_for_catch_up));
        m.insert("chunks_out".into(), json!(p.chunks_out));
        m.insert("bytes_out".into(), json!(self.bytes_out));
        m.insert("stall_ms".into(), json!(ms(p.stalled_us)));
        // Why the chunks not on time left late: the swarm delivered them late, or they
        // were here in time and this process output them late (a busy machine, mostly).
        m.insert(
            "late_out".into(),
            json!({ "arrived_late": p.late_out_arrived_late, "held_in_time": p.late_out_held_in_time }),
        );
        // How far behind the target lag the start margin put this viewer (0 for most).
        m.insert("start_shift_ms".into(), json!(ms(p.start_shift_us)));
        m.insert("start_restarts".into(), json!(p.start_restarts));
        // How far ahead of the target lag an early start (startup budget) put this
        // viewer, and how much of that lead is left.
        m.insert("start_ahead_ms".into(), json!(ms(p.start_ahead_us)));
        m.insert("ahead_ms".into(), json!(ms(p.ahead_us)));
        m.insert("http_clients".into(), json!(self.http_clients));
        m
    }
}

/// Where the player writes.
#[derive(Debug, Default)]
pub struct Outputs {
    pub sink: Option<OutputSink>,
    pub http: Option<HttpStreamServer>,
}

/// A viewer's two tasks (node and player) and their figures.
#[derive(Debug)]
pub struct ViewerTasks {
    pub node: tokio::task::JoinHandle<Result<Stopped>>,
    pub player: tokio::task::JoinHandle<Result<PlayerSnapshot>>,
    pub node_figures: Arc<Mutex<NodeSnapshot>>,
    pub player_figures: Arc<Mutex<PlayerSnapshot>>,
}

/// Start a viewer: `node` feeds verified chunks to a player with this playout and outputs.
pub fn spawn_viewer(
    node: LiveNode,
    playout: PlayoutConfig,
    outputs: Outputs,
    started: Instant,
    stop: &watch::Receiver<bool>,
) -> ViewerTasks {
    let (chunk_tx, chunk_rx) = mpsc::channel(OUTPUT_QUEUE_CHUNKS);
    let node_figures = Arc::new(Mutex::new(NodeSnapshot::default()));
    let player_figures = Arc::new(Mutex::new(PlayerSnapshot::default()));
    let node =
        tokio::spawn(node.run(None, Some(chunk_tx), node_figures.clone(), stop.clone(), Duration::ZERO));
    let player =
        tokio::spawn(play(chunk_rx, playout, outputs, started, player_figures.clone(), stop.clone()));
    ViewerTasks { node, player, node_figures, player_figures }
}

/// The player task: chunks in, playout, outputs out.
pub async fn play(
    mut chunks: mpsc::Receiver<Chunk>,
    playout: PlayoutConfig,
    mut outputs: Outputs,
    started: Instant,
    figures: Arc<Mutex<PlayerSnapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<PlayerSnapshot> {
    let mut playout = PlayoutBuffer::new(playout);
    let mut snapshot = PlayerSnapshot::default();
    let mut next_refresh = Instant::now();
    loop {
        let now_us = unix_now_us();
        while let Some(out) = playout.poll_output(now_us) {
            if snapshot.first_byte.is_none() {
                snapshot.first_byte = Some(started.elapsed());
            }
            snapshot.bytes_out += out.payload.len() as u64;
            if let Some(http) = &outputs.http {
                http.push(out.keyframe, out.payload.clone());
            }
            if let Some(sink) = &mut outputs.sink {
                // Never waits: a slow reader makes the sink skip to a keyframe (counted).
                sink.push(out.keyframe, out.payload).context("writing the stream")?;
            }
        }
        if Instant::now() >= next_refresh {
            snapshot.playout = playout.stats();
            snapshot.http_clients = outputs.http.as_ref().map_or(0, |h| h.stats().clients_now);
            *figures.lock().unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
            next_refresh = Instant::now() + super::node::SNAPSHOT_INTERVAL;
        }
        let wake_us = playout.poll_timeout().unwrap_or(u64::MAX);
        let sleep = Duration::from_micros(wake_us.saturating_sub(unix_now_us()).min(1_000_000));
        let sleep = sleep.min(next_refresh.saturating_duration_since(Instant::now()));
        tokio::select! {
            chunk = chunks.recv() => match chunk {
                Some(c) => {
                    if c.keyframe && snapshot.first_keyframe.is_none() {
                        snapshot.first_keyframe = Some(started.elapsed());
                    }
                    playout.insert(unix_now_us(), PlayoutChunk { seq: c.seq, ingest_us: c.ingest_us, keyframe: c.keyframe, payload: c.payload });
                }
                None => break,
            },
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => break,
            e = async { match outputs.sink.as_mut() { Some(s) => s.failed().await, None => std::future::pending().await } } => {
                return Err(anyhow::Error::new(e).context("writing the stream"));
            }
        }
    }
    if let Some(sink) = outputs.sink.take() {
        sink.finish_within(OUTPUT_FINISH_TIMEOUT).await.context("writing the stream")?;
    }
    snapshot.playout = playout.stats();
    *figures.lock().unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
    Ok(snapshot)
}

pub fn run(args: &WatchArgs) -> Result<std::process::ExitCode> {
    let link: ChannelLink = args.link.parse().context("bad channel link")?;
    if args.latency > 60_000 {
        bail!("--latency {} ms is more than a minute; a live viewer wants 100 to 5000", args.latency);
    }
    let output = match (&args.output, args.http) {
        (Some(o), _) => Some(OutputSpec::parse(o).with_context(|| format!("bad --output {o}"))?),
        (None, Some(_)) => None,
        (None, None) => Some(OutputSpec::Stdout),
    };
    if matches!(output, Some(OutputSpec::Stdout)) && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("stdout is a terminal: pipe the stream into a player (`rill watch LINK | mpv -`), or use -o FILE or --http ADDR");
    }
    let node_key = match &args.node_key {
        Some(path) => crate::node_key::load_or_create(Some(path))?,
        None => common::ephemeral_node_key()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let (stop_tx, stop_rx) = common::shutdown_signal();
        let outputs = Outputs {
            sink: match &output {
                Some(spec) => Some(OutputSink::open(spec).await.with_context(|| format!("cannot open output {spec}"))?),
                None => None,
            },
            http: match args.http {
                Some(addr) => {
                    let server = HttpStreamServer::bind(addr).await.with_context(|| format!("cannot serve HTTP on {addr}"))?;
                    eprintln!("rill: serving the stream at http://{}/ (open it in mpv, VLC or ffplay)", server.local_addr());
                    Some(server)
                }
                None => None,
            },
        };
        let opts = NodeOptions {
            role: Role::Viewer,
            listen: args.node.listen,
            advertise: args.node.advertise,
            node_key,
            channel: link.channel,
            bootstrap: link.peers.clone(),
            stripes: link.stripes,
            stream_kbps: link.kbps,
            upload_kbps: args.node.upload_kbps.unwrap_or(link.kbps.saturating_mul(3)),
            psk: link.psk,
            seed: common::random_seed(),
        };
        let node = LiveNode::bind(&opts)?;
        let playout = PlayoutConfig {
            latency: Duration::from_millis(args.latency),
            startup_budget: (args.startup_budget > 0).then(|| Duration::from_millis(args.startup_budget)),
            ..PlayoutConfig::default()
        };
        let viewer = spawn_viewer(node, playout, outputs, started, &stop_rx);
        let (node_figures, player_figures) = (viewer.node_figures.clone(), viewer.player_figures.clone());
        let reporter = common::report_loop(
            "watch",
            node_figures.clone(),
            Some(player_figures.clone()),
            None,
            args.node.stats_json.clone(),
            args.node.quiet,
            stop_rx.clone(),
        );
        let deadline = args.duration.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
        tokio::pin!(reporter);
        tokio::select! {
            r = &mut reporter => r?,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                // The reporter writes the final figures once it sees the stop.
                let _ = stop_tx.send(true);
                reporter.await?;
            }
        }
        let _ = stop_tx.send(true);
        let player = viewer.player.await.context("player task")??;
        viewer.node.await.context("node task")??;
        let p = &player.playout;
        eprintln!(
            "rill: watched {:.1} s: {} chunks out ({} bytes), lost chunks {}, late {}, continuity {} (output late: {} arrived late, {} here in time), playout lag p50 {} ms",
            started.elapsed().as_secs_f64(),
            p.chunks_out,
            player.bytes_out,
            p.lost_chunks,
            p.late_chunks,
            p.continuity_index().map_or("-".into(), |c| format!("{c:.4}")),
            p.late_out_arrived_late,
            p.late_out_held_in_time,
            p.playout_lag.percentile_us(0.5).map_or("-".into(), |v| format!("{}", ms(v))),
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}
