//! What `publish`, `watch`, `relay` and `demo` share: node flags, the shutdown signal,
//! the status line and `--stats-json`.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rill_transport::crypto::identity::NodeKey;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::node::NodeSnapshot;
use super::publish::IngestSnapshot;
use super::watch::PlayerSnapshot;
use rill_viewer::LagHistogram;

/// Flags every live node takes.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// UDP address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Address other nodes should use to reach this one, if not the listening one (behind
    /// a port forward, or to pick one interface of several).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// Upload capacity this node offers the swarm, kbit/s, as on the wire (sizes how many
    /// peers it feeds, with 15 % of it left for headers, acks and retransmissions, and how
    /// much repair traffic it adds in the upload they leave). The node never sends faster:
    /// what a burst sends beyond 20 ms of it waits in the node rather than overflow the
    /// uplink's buffer.
    #[arg(long, value_name = "KBPS")]
    pub upload_kbps: Option<u32>,
    /// Append one JSON object of figures per second to FILE (names from METRICS.md).
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// No status line on stderr even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

/// A node key that lives only as long as the process: viewers need no stable identity
/// (no link names them), and several on one machine must not share one.
pub fn ephemeral_node_key() -> Result<Arc<NodeKey>> {
    Ok(Arc::new(NodeKey::from_secret_bytes(*random_secret()?)))
}

/// 32 bytes from the operating system's RNG, erased when dropped.
fn random_secret() -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut secret[..])
        .map_err(|_| anyhow::anyhow!("the operating system random number generator failed"))?;
    Ok(secret)
}

/// A fresh channel key that lives only as long as the process (`rill demo`, benchmarks).
pub fn random_channel_key() -> Result<rill_swarm::chunk::ChannelKey> {
    Ok(rill_swarm::chunk::ChannelKey::from_bytes(*random_secret()?))
}

/// A seed for the node's RNGs (which are deterministic given it, as in the simulator).
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS RNG would already have failed the key; fall back to the clock.
    if SystemRandom::new().fill(&mut b).is_err() {
        return super::node::unix_now_us();
    }
    u64::from_le_bytes(b)
}

/// A watch channel that turns true on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let signal_tx = tx.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = signal_tx.send(true);
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = signal_tx.send(true);
    });
    (tx, rx)
}

/// The live status line on stderr (only on a terminal, and not with `--quiet`).
#[derive(Debug)]
pub struct StatusLine {
    enabled: bool,
    shown: bool,
}

impl StatusLine {
    pub fn new(quiet: bool) -> Self {
        StatusLine { enabled: !quiet && std::io::stderr().is_terminal(), shown: false }
    }

    pub fn show(&mut self, line: &str) {
        if self.enabled {
            // Carriage return and erase-line: plain VT100 controls, not colour, so NO_COLOR
            // does not apply; a non-terminal never gets them.
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.shown = true;
        }
    }

    /// End the status line so that what follows starts on a fresh line.
    pub fn finish(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

/// `--stats-json FILE`: one JSON object per line, appended.
#[derive(Debug)]
pub struct StatsJson {
    file: File,
    path: PathBuf,
}

impl StatsJson {
    pub fn open(path: &std::path::Path) -> Result<StatsJson> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open --stats-json file {}", path.display()))?;
        Ok(StatsJson { file, path: path.to_path_buf() })
    }

    pub fn write(&mut self, object: &Map<String, Value>) -> Result<()> {
        let mut line = serde_json::to_vec(object)?;
        line.push(b'\n');
        self.file.write_all(&line).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Milliseconds with 0.1 ms resolution, from µs.
pub fn ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

/// `{p50, p95, p99, max}` in ms of a µs histogram (nulls when empty).
pub fn lag_json(h: &LagHistogram) -> Value {
    let p = |q: f64| h.percentile_us(q).map(ms);
    json!({ "p50": p(0.5), "p95": p(0.95), "p99": p(0.99), "max": h.max_us().map(ms) })
}

/// A histogram's values as `[[bucket's largest value, count], …]` (µs, ascending, empty
/// buckets left out). `--stats-json` carries each second's new arrival lags in this form,
/// so a reader can merge any set of viewers and seconds into one distribution
/// ([`hist_from_json`]) where per-viewer percentiles could not be combined.
pub fn hist_json(h: &LagHistogram) -> Value {
    Value::Array(h.buckets().map(|(upper, n)| json!([upper, n])).collect())
}

/// Adds the values of a [`hist_json`] array to `into`. Err names what is malformed.
pub fn hist_from_json(value: &Value, into: &mut LagHistogram) -> Result<()> {
    let buckets = value.as_array().context("a histogram is an array of [µs, count] pairs")?;
    for b in buckets {
        let pair = b.as_array().filter(|p| p.len() == 2);
        let parsed = pair.and_then(|p| Some((p[0].as_u64()?, p[1].as_u64()?)));
        let (upper_us, n) = parsed.with_context(|| format!("histogram bucket {b} is not [µs, count]"))?;
        into.record_n(upper_us, n);
    }
    Ok(())
}

/// The node's figures as JSON (METRICS.md names), with rates over `interval` from the
/// previous snapshot.
pub fn node_json(now: &NodeSnapshot, before: &NodeSnapshot, interval: Duration) -> Map<String, Value> {
    let secs = interval.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 * 8.0 / secs).round();
    let dup = &now.swarm;
    let duplicate_ratio = if dup.useful_payload_bytes > 0 {
        dup.duplicate_payload_bytes as f64 / dup.useful_payload_bytes as f64
    } else {
        0.0
    };
    let received = now.chunks_received;
    let mut m = Map::new();
    m.insert("uptime_s".into(), json!((now.uptime.as_secs_f64() * 10.0).round() / 10.0));
    m.insert("node_id".into(), json!(now.node_id));
    m.insert("peers".into(), json!(now.peers));
    m.insert("mesh_peers".into(), json!(now.mesh_peers));
    m.insert("parents".into(), json!(now.parents));
    m.insert("children".into(), json!(now.children));
    m.insert("tree_join_ms".into(), json!(now.tree_joined.map(|d| ms(d.as_micros() as u64))));
    m.insert("chunks_received".into(), json!(received));
    m.insert("chunks_published".into(), json!(now.chunks_published));
    m.insert("arrival_lag_ms".into(), lag_json(&now.arrival_lag));
    m.insert("arrival_lag_hist_us".into(), hist_json(&now.arrival_lag.since(&before.arrival_lag)));
    m.insert(
        "hop_count_mean".into(),
        json!(if received > 0 { now.hop_count_sum as f64 / received as f64 } else { 0.0 }),
    );
    m.insert("duplicate_ratio".into(), json!((duplicate_ratio * 1000.0).round() / 1000.0));
    m.insert("useful_payload_bytes".into(), json!(dup.useful_payload_bytes));
    m.insert("duplicate_payload_bytes".into(), json!(dup.duplicate_payload_bytes));
    let mut from: Map<String, Value> =
        now.chunks_from.iter().map(|(id, n)| (id.to_string(), json!(n))).collect();
    if now.chunks_from_others > 0 {
        from.insert("others".into(), json!(now.chunks_from_others));
    }
    m.insert("chunks_from".into(), Value::Object(from));
    m.insert("forged_chunks".into(), json!(now.swarm.forged_chunks));
    m.insert("reparents".into(), json!(now.swarm.reparents));
    m.insert("tree_moves".into(), json!(now.swarm.tree_moves));
    m.insert("upload_bps".into(), json!(rate(now.bytes_sent, before.bytes_sent)));
    m.insert("download_bps".into(), json!(rate(now.bytes_received, before.bytes_received)));
    m.insert("bytes_sent".into(), json!(now.bytes_sent));
    m.insert("bytes_received".into(), json!(now.bytes_received));
    m.insert("handshake_failures".into(), json!(now.handshake_failures));
    m.insert("malformed_messages".into(), json!(now.malformed_messages));
    m.insert("send_failures".into(), json!(now.send_failures));
    m.insert("send_queue_bytes".into(), json!(now.send_queue_bytes));
    m.insert("packets_lost".into(), json!(now.packets_lost));
    m.insert("retransmitted_bytes".into(), json!(now.retransmitted_bytes));
    m
}

/// Bits per second in a short human form: "4.1 Mbit/s".
pub fn human_rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.1} Mbit/s", bps / 1e6)
    } else {
        format!("{:.0} kbit/s", bps / 1e3)
    }
}

/// Once a second: the status line and `--stats-json`. Returns when shutdown is requested,
/// after writing the final figures.
pub async fn report_loop(
    role: &'static str,
    node: Arc<Mutex<NodeSnapshot>>,
    player: Option<Arc<Mutex<PlayerSnapshot>>>,
    ingest: Option<Arc<Mutex<IngestSnapshot>>>,
    stats_json: Option<PathBuf>,
    quiet: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut status = StatusLine::new(quiet);
    let mut json_out = match &stats_json {
        Some(p) => Some(StatsJson::open(p)?),
        None => None,
    };
    let mut before = NodeSnapshot::default();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        // On shutdown one last object is written, so `--stats-json` ends with the final
        // figures (up to the stop, not up to the last whole second).
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let now_snap = node.lock().map(|s| s.clone()).unwrap_or_default();
        let interval = last.elapsed();
        last = Instant::now();
        let mut object = Map::new();
        object.insert("role".into(), json!(role));
        object.extend(node_json(&now_snap, &before, interval));
        let player_snap = player.as_ref().map(|p| p.lock().map(|s| s.clone()).unwrap_or_default());
        if let Some(p) = &player_snap {
            object.extend(p.json());
        }
        if let Some(i) = &ingest {
            object.extend(i.lock().map(|s| s.json()).unwrap_or_default());
        }
        if let Some(out) = &mut json_out {
            out.write(&object)?;
        }
        let lag = now_snap.arrival_lag.percentile_us(0.5).map_or("-".into(), |v| format!("{} ms", ms(v)));
        let mut line = format!(
            "rill {role}: peers {} | arrival lag p50 {lag} | down {} | up {}",
            now_snap.peers,
            human_rate(object["download_bps"].as_f64().unwrap_or(0.0)),
            human_rate(object["upload_bps"].as_f64().unwrap_or(0.0)),
        );
        if let Some(p) = &player_snap {
            line.push_str(&format!(
                " | buffer {} ms | lost {}",
                ms(p.playout.buffered_us).round(),
                p.playout.lost_chunks
            ));
        }
        if stopping {
            status.finish();
            return Ok(());
        }
        status.show(&line);
        before = now_snap;
    }
}
