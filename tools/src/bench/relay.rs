//! `rill bench relay`: what forwarding costs a relay, over real UDP on loopback.
//!
//! A publisher sends a synthetic stream (random payloads, signed chunks, one keyframe a
//! second) to one relay, which feeds `--children` viewers directly: the publisher's upload
//! has room for one copy only, and the viewers offer no upload, so the relay is every
//! viewer's parent in every stripe. The relay runs on a thread of its own, so the CPU
//! time of that thread is what forwarding costs (sockets, crypto, transport, swarm,
//! verification). Figures are taken over the run after a warm-up:
//! - `cpu_per_gbit`: relay CPU seconds per gigabit it sent (shared/METRICS.md), user and
//!   system time of its thread. On loopback the kernel runs each receiver's UDP receive
//!   path inside the sender's `sendmmsg`, so the system part includes work a real network
//!   would do on the receiving hosts; `cpu_per_gbit_user` is the user-space part alone;
//! - `floor_cpu_per_gbit`: measured after the run, in the same process, the driver alone
//!   (no endpoint, crypto or swarm) sending the same bytes per chunk interval to as many
//!   loopback receivers, each child's bytes in a row (`driver::bench_fanout`): sockets
//!   and kernel only, the part of `cpu_per_gbit` that better transport code cannot remove;
//! - `datagrams_per_message`: datagrams per message the kernel's UDP/IP stack handled
//!   (a GSO message of n segments counts once): what the per-datagram kernel cost is
//!   divided by;
//! - `relay_upload_mbps`, `relay_children`, viewers' `arrival_lag_ms` and chunks received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rill_swarm::chunk::{ChannelKey, Chunk};
use rill_swarm::node::{Role, ROOT_TREE_UPLOAD_SHARE};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::live::common::{ephemeral_node_key, lag_json, random_channel_key, random_seed};
use crate::live::link::DEFAULT_STRIPES;
use crate::live::node::{unix_now_us, LiveNode, NodeOptions, NodeSnapshot, CHUNK_DURATION};
use crate::table::{round, Report};
use rill_viewer::LagHistogram;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Viewers the relay feeds.
    #[arg(long, default_value_t = 16)]
    pub children: usize,
    /// Stream bitrate, kbit/s.
    #[arg(long, default_value_t = 4000)]
    pub kbps: u32,
    /// Seconds to measure (after a warm-up of 3 s).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

const WARMUP: Duration = Duration::from_secs(3);
/// Longest run of the fan-out floor (`floor_cpu_per_gbit`): long enough for a stable
/// figure, short enough not to double the benchmark's time.
const FLOOR_DURATION: Duration = Duration::from_secs(5);
/// One keyframe per second of stream, as the built-in sample has.
const KEYFRAME_EVERY_CHUNKS: u64 = 40;

pub fn run(args: &RelayArgs) -> Result<()> {
    anyhow::ensure!(args.children >= 1 && args.children <= 256, "--children must be 1 to 256");
    anyhow::ensure!(args.duration > 0.0 && args.duration <= 3600.0, "--duration must be 0 to 3600 s");
    anyhow::ensure!((100..=100_000).contains(&args.kbps), "--kbps must be 100 to 100000");
    let channel_key: ChannelKey = random_channel_key()?;
    let channel = channel_key.channel_id();
    let stripes = DEFAULT_STRIPES;
    let (stop_tx, stop_rx) = watch::channel(false);
    // One copy of the stream fits the publisher's tree share, not two.
    let publisher_upload = (f64::from(args.kbps) * 1.5 / ROOT_TREE_UPLOAD_SHARE) as u32;
    let base = |role, upload_kbps, bootstrap| -> Result<NodeOptions> {
        Ok(NodeOptions {
            role,
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            node_key: ephemeral_node_key()?,
            channel,
            bootstrap,
            stripes,
            stream_kbps: args.kbps,
            upload_kbps,
            psk: None,
            seed: random_seed(),
        })
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _guard = runtime.enter();
    let publisher_opts = base(Role::Publisher, publisher_upload, vec![])?;
    let publisher = LiveNode::bind(&publisher_opts)?;
    let publisher_addr = publisher.local_addr();
    let publisher_id = publisher_opts.node_key.id();

    // The relay: its own thread and runtime, so its thread's CPU time is its cost.
    let relay_opts = base(Role::Relay, 1_000_000, vec![(publisher_id, publisher_addr)])?;
    let relay_id = relay_opts.node_key.id();
    let relay_figures = Arc::new(Mutex::new(NodeSnapshot::default()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let relay_thread = {
        let figures = relay_figures.clone();
        let stop = stop_rx.clone();
        std::thread::Builder::new().name("relay".into()).spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let node = LiveNode::bind(&relay_opts)?;
                let _ = addr_tx.send(node.local_addr());
                node.run(None, None, figures, stop, Duration::ZERO).await.map(drop)
            })
        })?
    };
    let relay_addr = addr_rx.recv_timeout(Duration::from_secs(10)).context("the relay did not start")?;

    let publisher_figures = Arc::new(Mutex::new(NodeSnapshot::default()));
    let (chunk_tx, chunk_rx) = mpsc::channel(64);
    let mut tasks = Vec::new();
    tasks.push(runtime.spawn(publisher.run(
        Some(chunk_rx),
        None,
        publisher_figures,
        stop_rx.clone(),
        Duration::ZERO,
    )));
    let mut viewers = Vec::new();
    for _ in 0..args.children {
        // Relay first: viewers walk down from it; they offer no upload of their own.
        let opts = base(Role::Viewer, 1, vec![(relay_id, relay_addr), (publisher_id, publisher_addr)])?;
        let node = LiveNode::bind(&opts)?;
        let figures = Arc::new(Mutex::new(NodeSnapshot::default()));
        viewers.push(figures.clone());
        tasks.push(runtime.spawn(node.run(None, None, figures, stop_rx.clone(), Duration::ZERO)));
    }

    let chunk_bytes = (u64::from(args.kbps) * 1000 / 8 * CHUNK_DURATION.as_millis() as u64 / 1000) as usize;
    let duration = Duration::from_secs_f64(args.duration);
    let (relay_before, relay_after, viewer_lags, viewer_chunks) = runtime.block_on(async {
        let source = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHUNK_DURATION);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut payload = vec![0u8; chunk_bytes];
            let mut rng = ChaCha8Rng::seed_from_u64(random_seed());
            for seq in 0.. {
                tick.tick().await;
                rng.fill_bytes(&mut payload);
                let keyframe = seq % KEYFRAME_EVERY_CHUNKS == 0;
                let Ok(chunk) = Chunk::sign(
                    &channel_key,
                    seq,
                    unix_now_us(),
                    keyframe,
                    stripes,
                    Bytes::copy_from_slice(&payload),
                ) else {
                    return;
                };
                if chunk_tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        tokio::time::sleep(WARMUP).await;
        let relay_before = relay_figures.lock().map(|f| f.clone()).unwrap_or_default();
        let lags_before: Vec<LagHistogram> =
            viewers.iter().map(|v| v.lock().map(|f| f.arrival_lag.clone()).unwrap_or_default()).collect();
        tokio::time::sleep(duration).await;
        let relay_after = relay_figures.lock().map(|f| f.clone()).unwrap_or_default();
        let mut lags = LagHistogram::default();
        let mut chunks = Vec::new();
        for (v, before) in viewers.iter().zip(&lags_before) {
            let now = v.lock().map(|f| f.arrival_lag.clone()).unwrap_or_default();
            let interval = now.since(before);
            chunks.push(interval.count());
            lags.merge(&interval);
        }
        source.abort();
        (relay_before, relay_after, lags, chunks)
    });
    let _ = stop_tx.send(true);
    runtime.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    });
    relay_thread.join().map_err(|_| anyhow::anyhow!("the relay thread panicked"))??;

    let sent_bits = relay_after.bytes_sent.saturating_sub(relay_before.bytes_sent) as f64 * 8.0;
    let cpu = relay_after.thread_cpu.saturating_sub(relay_before.thread_cpu).as_secs_f64();
    let user = relay_after.thread_cpu_user.saturating_sub(relay_before.thread_cpu_user).as_secs_f64();
    let interval = relay_after.uptime.saturating_sub(relay_before.uptime).as_secs_f64().max(1e-3);
    let expected_chunks = interval / CHUNK_DURATION.as_secs_f64();
    let min_chunks = viewer_chunks.iter().copied().min().unwrap_or(0);
    // The floor: the same bytes per chunk interval and child, from the driver alone.
    let bytes_per_child =
        (sent_bits / 8.0 / expected_chunks.max(1.0) / args.children as f64).round().max(1.0) as usize;
    let floor = rill_transport::driver::bench_fanout(
        args.children,
        bytes_per_child,
        rill_transport::DEFAULT_MAX_DATAGRAM_SIZE,
        CHUNK_DURATION,
        duration.min(FLOOR_DURATION),
    )
    .context("fan-out floor on 127.0.0.1")?;
    let row = json!({
        "scenario": "relay",
        "children": args.children,
        "stream_kbps": args.kbps,
        "relay_children_per_stripe": round(relay_after.children as f64 / f64::from(stripes), 1),
        "relay_upload_mbps": round(sent_bits / interval / 1e6, 2),
        "relay_cpu_s": round(cpu, 3),
        "relay_cpu_share": round(cpu / interval, 3),

        "cpu_per_gbit": round(cpu / (sent_bits / 1e9).max(1e-9), 3),
        "cpu_per_gbit_user": round(user / (sent_bits / 1e9).max(1e-9), 3),
        "floor_cpu_per_gbit": round(floor.cpu_per_gbit, 3),
        "datagrams_per_send_call": round(
            relay_after.datagrams_sent.saturating_sub(relay_before.datagrams_sent) as f64
                / relay_after.send_syscalls.saturating_sub(relay_before.send_syscalls).max(1) as f64,
            1
        ),
        "datagrams_per_message": round(datagrams_per_message(&relay_before, &relay_after), 1),
        "datagrams_per_recv_call": round(
            relay_after.datagrams_received.saturating_sub(relay_before.datagrams_received) as f64
                / relay_after.recv_syscalls.saturating_sub(relay_before.recv_syscalls).max(1) as f64,
            1
        ),
        "relay_datagrams_sent_per_s": round(
            relay_after.datagrams_sent.saturating_sub(relay_before.datagrams_sent) as f64 / interval,
            0
        ),
        "relay_datagrams_received_per_s": round(
            relay_after.datagrams_received.saturating_sub(relay_before.datagrams_received) as f64 / interval,
            0
        ),
        "arrival_lag_ms": lag_json(&viewer_lags),
        "chunks_expected": round(expected_chunks, 0),
        "chunks_received_min": min_chunks,
        "duration_s": round(interval, 1),
    });
    let mut report = Report::default();
    report.emit(row, args.json);
    if !args.json {
        report.print_table("relay: forwarding cost over real UDP on loopback");
    }
    Ok(())
}

/// Datagrams the relay sent between two snapshots per message its kernel handled: a GSO
/// message counts once however many segments it carries.
fn datagrams_per_message(before: &NodeSnapshot, after: &NodeSnapshot) -> f64 {
    let datagrams = after.datagrams_sent.saturating_sub(before.datagrams_sent);
    let segments = after.gso_segments.saturating_sub(before.gso_segments);
    let gso_messages = after.gso_messages.saturating_sub(before.gso_messages);
    let messages = datagrams.saturating_sub(segments) + gso_messages;
    datagrams as f64 / messages.max(1) as f64
}
