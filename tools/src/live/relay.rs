//! `rill relay LINK`: a headless node that forwards with all the upload it is given, for
//! operators; Prometheus text at `/metrics` on `--metrics` (loopback unless told).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use rill_swarm::node::Role;
use rill_viewer::http::{read_request_head, respond, respond_error};
use tokio::net::TcpListener;

use super::common::{self, NodeArgs};
use super::link::ChannelLink;
use super::node::{LiveNode, NodeOptions, NodeSnapshot};

/// Upload a relay offers when not told: 100 Mbit/s (relays are the high-capacity nodes
/// the trees are built around; an operator with less, or more, says so with
/// --upload-kbps: the relay never sends faster than this).
const DEFAULT_RELAY_UPLOAD_KBPS: u32 = 100_000;

/// Simultaneous `/metrics` connections served; more wait in the listen backlog.
const MAX_METRICS_CONNECTIONS: usize = 16;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The channel link (`rill:…`).
    pub link: String,
    /// Serve Prometheus metrics at http://ADDR/metrics. A bare port binds 127.0.0.1:PORT;
    /// give a full address (e.g. 0.0.0.0:9464) to expose it beyond this host.
    #[arg(long, value_name = "PORT|ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// This node's key file (kept across restarts, so links naming this relay stay valid).
    /// Default: $XDG_CONFIG_HOME/rill/node.key, created on first start.
    #[arg(long, value_name = "FILE")]
    pub node_key: Option<PathBuf>,
    /// Print a link that names this relay too (give it to viewers to spread the load).
    #[arg(long)]
    pub print_link: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| format!("`{text}` is neither a port nor an address like 127.0.0.1:9464"))
}

pub fn run(args: &RelayArgs) -> Result<std::process::ExitCode> {
    let link: ChannelLink = args.link.parse().context("bad channel link")?;
    let node_key = crate::node_key::load_or_create(args.node_key.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = common::shutdown_signal();
        let figures = Arc::new(Mutex::new(NodeSnapshot::default()));
        if let Some(addr) = args.metrics {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
            eprintln!("rill: metrics at http://{}/metrics", listener.local_addr()?);
            tokio::spawn(serve_metrics(listener, figures.clone()));
        }
        let opts = NodeOptions {
            role: Role::Relay,
            listen: args.node.listen,
            advertise: args.node.advertise,
            node_key: node_key.clone(),
            channel: link.channel,
            bootstrap: link.peers.clone(),
            stripes: link.stripes,
            stream_kbps: link.kbps,
            upload_kbps: args.node.upload_kbps.unwrap_or(DEFAULT_RELAY_UPLOAD_KBPS),
            psk: link.psk,
            seed: common::random_seed(),
        };
        let node = LiveNode::bind(&opts)?;
        if args.print_link {
            let mut with_me = link.clone();
            with_me.peers.insert(0, (node_key.id(), node.local_addr()));
            with_me.peers.truncate(super::link::MAX_LINK_PEERS);
            println!("{with_me}");
        }
        eprintln!("rill: relaying channel {} on udp {}", link.channel, node.local_addr());
        let node_task = tokio::spawn(node.run(None, None, figures.clone(), stop_rx.clone(), Duration::ZERO));
        common::report_loop(
            "relay",
            figures.clone(),
            None,
            None,
            args.node.stats_json.clone(),
            args.node.quiet,
            stop_rx,
        )
        .await?;
        let _ = stop_tx.send(true);
        node_task.await.context("node task")??;
        Ok(std::process::ExitCode::SUCCESS)
    })
}

async fn serve_metrics(listener: TcpListener, figures: Arc<Mutex<NodeSnapshot>>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let figures = figures.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let head = match read_request_head(&mut stream).await {
                Ok(h) => h,
                Err(e) => {
                    let _ = respond_error(&mut stream, &e).await;
                    return;
                }
            };
            let (status, body) = match (head.method.as_str(), head.path()) {
                ("GET", "/metrics") => {
                    let snapshot = figures.lock().map(|s| s.clone()).unwrap_or_default();
                    (200, prometheus_text(&snapshot))
                }
                ("GET", _) => (404, "not found: metrics are at /metrics\n".to_string()),
                _ => (405, "only GET\n".to_string()),
            };
            let _ = respond(&mut stream, status, "text/plain; version=0.0.4", body.as_bytes()).await;
        });
    }
}

/// The node's figures in the Prometheus text format (0.0.4): `rill_` prefix, counters end
/// in `_total`, units in the name (`_seconds`, `_bytes`).
pub fn prometheus_text(s: &NodeSnapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric("rill_peers", "gauge", "Authenticated sessions to other nodes.", s.peers as f64);
    metric("rill_mesh_peers", "gauge", "Mesh neighbours (active view).", s.mesh_peers as f64);
    metric("rill_parents", "gauge", "Stripes with a tree parent.", s.parents as f64);
    metric("rill_children", "gauge", "Children fed, summed over stripes.", s.children as f64);
    metric(
        "rill_chunks_received_total",
        "counter",
        "Verified chunks received.",
        s.swarm.chunks_received as f64,
    );
    metric(
        "rill_forged_chunks_total",
        "counter",
        "Chunks that failed verification.",
        s.swarm.forged_chunks as f64,
    );
    metric(
        "rill_useful_payload_bytes_total",
        "counter",
        "Chunk payload bytes received that were new.",
        s.swarm.useful_payload_bytes as f64,
    );
    metric(
        "rill_duplicate_payload_bytes_total",
        "counter",
        "Chunk payload bytes received that we already had.",
        s.swarm.duplicate_payload_bytes as f64,
    );
    metric("rill_reparents_total", "counter", "Tree parent changes.", s.swarm.reparents as f64);
    metric(
        "rill_tree_moves_total",
        "counter",
        "Tree parents changed for a shallower one.",
        s.swarm.tree_moves as f64,
    );
    metric("rill_sent_bytes_total", "counter", "UDP payload bytes sent.", s.bytes_sent as f64);
    metric("rill_received_bytes_total", "counter", "UDP payload bytes received.", s.bytes_received as f64);
    metric("rill_sent_datagrams_total", "counter", "UDP datagrams sent.", s.datagrams_sent as f64);
    metric(
        "rill_received_datagrams_total",
        "counter",
        "UDP datagrams received.",
        s.datagrams_received as f64,
    );
    metric(
        "rill_handshake_failures_total",
        "counter",
        "Handshakes that failed (wrong key or psk, forged).",
        s.handshake_failures as f64,
    );
    metric(
        "rill_malformed_messages_total",
        "counter",
        "Swarm messages that did not decode.",
        s.malformed_messages as f64,
    );
    metric("rill_uptime_seconds", "gauge", "Seconds since the node started.", s.uptime.as_secs_f64());
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        rill_transport::driver::process_cpu_time().as_secs_f64(),
    );
    let h = &s.arrival_lag;
    let _ = writeln!(
        out,
        "# HELP rill_arrival_lag_seconds Arrival lag of verified chunks (ingest to held).\n\
         # TYPE rill_arrival_lag_seconds summary"
    );
    for q in [0.5, 0.95, 0.99] {
        if let Some(v) = h.percentile_us(q) {
            let _ = writeln!(out, "rill_arrival_lag_seconds{{quantile=\"{q}\"}} {}", v as f64 / 1e6);
        }
    }
    let _ = writeln!(out, "rill_arrival_lag_seconds_sum {}", h.sum_us() as f64 / 1e6);
    let _ = writeln!(out, "rill_arrival_lag_seconds_count {}", h.count());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_follows_prometheus_conventions() {
        let mut s = NodeSnapshot::default();
        s.arrival_lag.record(40_000);
        s.bytes_sent = 1234;
        let text = prometheus_text(&s);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("rill_") || name.starts_with("process_"), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("rill_sent_bytes_total 1234"));
        assert!(text.contains("rill_arrival_lag_seconds{quantile=\"0.5\"} 0.04"));
        assert!(text.contains("# TYPE rill_chunks_received_total counter"));
    }

    #[test]
    fn a_bare_metrics_port_binds_loopback() {
        assert_eq!(parse_metrics_addr("9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_metrics_addr("0.0.0.0:9464").unwrap(), "0.0.0.0:9464".parse().unwrap());
        assert!(parse_metrics_addr("localhost").is_err());
    }
}
