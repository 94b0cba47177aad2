//! `rill sim`: a deterministic discrete-event simulator of a whole swarm.
//!
//! Every node is a real [`rill_swarm::node::Node`]; the simulator stands in for the
//! transport and the network, at message level (see [`net`]), on a virtual clock. The same
//! scenario and seed give the same figures, byte for byte (`--check-determinism`).
//!
//! - [`scenario`]: the TOML scenario files (`scenarios/*.toml`).
//! - [`net`]: links, queues, delays, loss and the wire size of a message.
//! - [`run`]: the event loop.
//! - [`queue`]: its event queue, a radix heap.
//! - [`metrics`]: per-viewer records and the figures of shared/METRICS.md.
//! - [`floor`]: the lag floor, a lower bound no overlay beats.
//! - [`verify`]: the shared memoizing chunk verifier.
//!
//! With `RILL_SIM_DEBUG` set, a run also prints to stderr the (node, stripe) pairs left
//! without a tree parent at the end and their search state.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use serde_json::{json, Map, Value};

use crate::table::{format_float, round};

pub mod floor;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod run;
pub mod scenario;
pub mod verify;

#[cfg(test)]
mod tests;

use metrics::percentile;
use run::Results;
use scenario::Scenario;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario file (TOML; see scenarios/ for examples, every key is optional).
    pub scenario: PathBuf,
    /// Seed of the run (overrides `[run] seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    pub json: bool,
    /// Run twice and compare the figures (all but wall_s) byte for byte; exit 1 if they
    /// differ.
    #[arg(long)]
    pub check_determinism: bool,
}

/// Keys left out of the determinism comparison: they measure the machine, not the run.
const NONDETERMINISTIC_KEYS: &[&str] = &["wall_s"];

pub fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let sc = Scenario::load(&args.scenario)?;
    let seed = args.seed.unwrap_or(sc.run.seed);
    let name = args.scenario.display().to_string();
    let commit = commit();
    let first = run_once(&sc, &name, seed, commit.as_deref(), true)?;
    if args.check_determinism {
        let second = run_once(&sc, &name, seed, commit.as_deref(), true)?;
        if let Some(diff) = difference(&first, &second) {
            eprintln!("rill sim: NOT deterministic: two runs of {name} with seed {seed} differ: {diff}");
            return Ok(ExitCode::from(1));
        }
        eprintln!("rill sim: deterministic: two runs with seed {seed} gave identical figures (wall_s aside)");
    }
    if args.json {
        println!("{first}");
    } else {
        print_report(&first);
    }
    Ok(ExitCode::SUCCESS)
}

/// One run, as the JSON object `--json` prints.
pub fn run_once(
    sc: &Scenario,
    name: &str,
    seed: u64,
    commit: Option<&str>,
    progress: bool,
) -> anyhow::Result<Value> {
    let wall = Instant::now();
    let results = run::simulate(sc, seed, progress)?;
    Ok(figures(name, seed, commit, &results, wall.elapsed().as_secs_f64()))
}

/// The first difference between two runs' figures (deterministic keys only).
pub fn difference(a: &Value, b: &Value) -> Option<String> {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        for k in NONDETERMINISTIC_KEYS {
            m.remove(*k);
        }
        m
    };
    let (a, b) = (strip(a), strip(b));
    // Byte for byte: the printed JSON, not a numeric comparison.
    let text = |m: &Map<String, Value>| serde_json::to_string(m).unwrap_or_default();
    if text(&a) == text(&b) {
        return None;
    }
    for (k, va) in &a {
        let (ta, tb) = (serde_json::to_string(va).ok(), b.get(k).and_then(|v| serde_json::to_string(v).ok()));
        match b.get(k) {
            Some(_) if ta == tb => {}
            Some(vb) => return Some(format!("`{k}`: {va} vs {vb}")),
            None => return Some(format!("`{k}` missing in the second run")),
        }
    }
    Some("keys differ".to_string())
}

fn ms(ns: u64) -> f64 {
    round(ns as f64 / 1e6, 3)
}

/// A percentile of sorted arrival lags (µs) as JSON: ms, `null` when there are none.
fn lag_ms(sorted_us: &[u32], p: f64) -> Value {
    percentile(sorted_us, p).map_or(Value::Null, |us| json!(ms(u64::from(us) * 1000)))
}

fn ratio(num: f64, den: f64) -> Value {
    if den > 0.0 {
        json!(round(num / den, 4))
    } else {
        Value::Null
    }
}

/// The figures of a run, named as in shared/METRICS.md.
pub fn figures(name: &str, seed: u64, commit: Option<&str>, r: &Results, wall_s: f64) -> Value {
    let s = &r.summary;
    let lag = |p: f64| lag_ms(&s.lags_us, p);
    let startup = |p: f64| percentile(&s.startup_ns, p).map_or(Value::Null, |ns| json!(ms(ns)));
    let floor = |p: f64| percentile(&r.floor_ns, p).map_or(Value::Null, |ns| json!(ms(ns)));
    let upload = |p: f64| percentile(&r.upload_utilisation, p).map_or(Value::Null, |u| json!(round(u, 4)));
    let received = s.received() as f64;
    let mut m = Map::new();
    m.insert("scenario".into(), json!(name));
    m.insert("seed".into(), json!(seed));
    if let Some(c) = commit {
        m.insert("commit".into(), json!(c));
    }
    let fields = json!({
        "viewers": r.viewers,
        "relays": r.relays,
        "viewers_joined": r.viewers_joined,
        "departures": r.departures,
        "chunks": r.chunks,
        "chunk_bytes": r.chunk_bytes,
        "counted_pairs": s.counted,
        "arrival_lag_ms": { "p50": lag(50.0), "p95": lag(95.0), "p99": lag(99.0), "max": lag(100.0) },
        "lag_floor_ms": floor(99.0),
        "lag_floor_p50_ms": floor(50.0),
        "lag_floor_formula": floor::FORMULA,
        "continuity_index": ratio(s.on_time as f64, s.counted as f64),
        "continuity_by_s": s.by_second.iter().map(|&(counted, on_time)| ratio(on_time as f64, counted as f64)).collect::<Vec<_>>(),
        "arrival_lag_p99_ms_by_s": s.lag_by_second.iter().map(|v| lag_ms(v, 99.0)).collect::<Vec<_>>(),
        "arrival_lag_ms_by_hops": s.lag_by_hops.iter().enumerate().filter(|(_, v)| !v.is_empty()).map(|(hops, v)| json!({
            "hops": hops, "pairs": v.len(), "p50": lag_ms(v, 50.0), "p99": lag_ms(v, 99.0),
        })).collect::<Vec<_>>(),
        "lost_chunks": s.lost,
        "late_chunks": s.received() - s.on_time,
        "startup_ms": { "p50": startup(50.0), "p95": startup(95.0) },
        "never_started": s.never_started,
        "hop_count": {
            "mean": ratio(s.hops_sum as f64, received),
            "max": if s.received() > 0 { json!(s.hops_max) } else { Value::Null },
        },
        "rdp_mean": ratio(s.rdp_sum, received),
        "overhead_ratio": ratio(r.wire_bytes as f64, s.media_bytes_owed as f64),
    });
    // Two literals: one would exceed serde_json's macro recursion limit.
    let cost = json!({
        "duplicate_ratio": ratio(r.stats.duplicate_payload_bytes as f64, r.stats.useful_payload_bytes as f64),
        "duplicate_ratio_by_cause": {
            "tree_after_pull": ratio(r.stats.duplicate_tree_after_pull_bytes as f64, r.stats.useful_payload_bytes as f64),
            "pull_after_tree": ratio(r.stats.duplicate_pull_after_tree_bytes as f64, r.stats.useful_payload_bytes as f64),
        },
        "publisher_upload": ratio(r.publisher_wire_bytes as f64, r.media_bytes as f64),
        "upload_utilisation": { "p50": upload(50.0), "p95": upload(95.0), "max": upload(100.0) },
        "publisher_upload_utilisation": round(r.publisher_utilisation, 4),
        "queue_drops": r.queue_drops,
        "queue_wait_ms": { "push": wait_json(&r.queue_wait_push), "repair": wait_json(&r.queue_wait_repair) },
        "abandoned": r.abandoned,
        "forged_chunks": r.stats.forged_chunks,
        "reparents": r.stats.reparents,
        "tree_moves": r.stats.tree_moves,
        "children_dropped_silent": r.stats.children_dropped_silent,
        "pulls_sent": r.stats.pulls_sent,
        "pulls_served": r.stats.pulls_served,
        "pulls_declined": r.stats.pulls_declined,
        "chunks_from_parent": r.stats.chunks_from_parent,
        "orphan_ms": r.stats.orphan_ms,
        "chunks_received": r.stats.chunks_received,
        "wire_bytes": r.wire_bytes,
        "ack_bytes": r.ack_bytes,
        "retransmitted_bytes": r.retransmitted_bytes,
        "wire_bytes_by_message": by_message(&r.bytes_by_message),
        "publisher_wire_bytes_by_message": by_message(&r.publisher_bytes_by_message),
        "to_departed": r.to_departed,
        "unroutable": r.unroutable,
        "events": r.events,
        "signature_checks": r.verifications.0,
        "wall_s": round(wall_s, 2),
    });
    for part in [fields, cost] {
        if let Value::Object(f) = part {
            m.extend(f);
        }
    }
    Value::Object(m)
}

fn wait_json(h: &rill_viewer::LagHistogram) -> Value {
    let p = |q: f64| h.percentile_us(q).map(|us| round(us as f64 / 1e3, 1));
    json!({ "p50": p(0.5), "p99": p(0.99), "max": h.max_us().map(|us| round(us as f64 / 1e3, 1)) })
}

fn by_message(bytes: &[u64; run::MESSAGE_KINDS]) -> Value {
    let m: Map<String, Value> =
        run::MESSAGE_KIND_NAMES.iter().zip(bytes).map(|(name, b)| (name.to_string(), json!(b))).collect();
    Value::Object(m)
}

/// What the readable report says about a figure (units and exact meaning).
fn explain(key: &str) -> &'static str {
    match key {
        "viewers" => "viewers at the start",
        "relays" => "always-on relays, joined at t = 0",
        "chunks" => "chunks published",
        "chunk_bytes" => "media bytes per chunk (bitrate × chunk_ms)",
        "viewers_joined" => "viewers that joined (initial + churn replacements)",
        "departures" => "viewers that left (crash: no Leave sent)",
        "counted_pairs" => "(viewer, chunk) pairs due while the viewer was in, after its startup",
        "arrival_lag_ms" => "ingest → whole chunk held and verified, over received counted pairs",
        "lag_floor_ms" => "p99 over initial viewers of a lower bound on any overlay's lag (formula below)",
        "lag_floor_p50_ms" => "p50 of the same",
        "continuity_index" => "counted pairs held by ingest + playout latency",
        "lost_chunks" => "counted pairs never held",
        "late_chunks" => "counted pairs held after their playout deadline",
        "startup_ms" => "join → first keyframe chunk held",
        "never_started" => "viewers in long enough (latency + keyframe interval) without a keyframe",
        "hop_count" => "overlay hops, over received counted pairs",
        "rdp_mean" => "arrival lag / (direct delay + one chunk at publisher upload)",
        "overhead_ratio" => "wire bytes of all nodes / media bytes owed to viewers while present",
        "duplicate_ratio" => "duplicate / useful chunk payload bytes received",
        "duplicate_ratio_by_cause" => "the part where the tree parent's copy came after our pull's (tree_after_pull), and where a pull's answer came after the tree's (pull_after_tree); the rest is other",
        "publisher_upload" => "publisher wire bytes / media bytes",
        "upload_utilisation" => "viewer wire bytes sent / (upload capacity × time in the swarm)",
        "publisher_upload_utilisation" => "the same, publisher",
        "queue_drops" => "messages dropped at a full upload queue (8 MiB)",
        "wire_bytes" => "UDP payload bytes of all packets, acks and retransmissions included",
        "ack_bytes" => "one 50-byte ack per 4 data packets received: counted, not queued on links",
        "retransmitted_bytes" => "lost packets sent again (one RTT later): counted, not queued on links",
        "to_departed" => "messages for nodes that had left (crashed)",
        "wire_bytes_by_message" => "wire bytes by message type, acks aside",
        "publisher_wire_bytes_by_message" => "the same, publisher only",
        "unroutable" => "messages to unknown node ids",
        "continuity_by_s" => "continuity index per second of stream (by ingest time)",
        "arrival_lag_p99_ms_by_s" => "arrival lag p99 per second of stream (by ingest time; null: none received)",
        "arrival_lag_ms_by_hops" => "arrival lag p50/p99 of the pairs that came over each hop count (24 = 24 or more)",
        "queue_wait_ms" => {
            "chunk messages' wait in the sender's upload queue: tree pushes / repairs (p50 p99 max)"
        }
        "abandoned" => "messages not sent: their send deadline passed in the upload queue",
        "forged_chunks" => "chunks that failed verification",
        "reparents" => "tree parents replaced (node counters, summed)",
        "tree_moves" => "tree parents changed for one at least two hops shallower (node counters, summed)",
        "children_dropped_silent" => "children a parent dropped after 3 s without a word from them",
        "pulls_sent" => "chunks requested from mesh neighbours",
        "pulls_served" => "chunks sent on such requests",
        "pulls_declined" => "requested chunks declined (not held, or over the pull budget)",
        "events" => "simulator events processed",
        "wall_s" => "wall-clock seconds (not compared by --check-determinism)",
        "signature_checks" => "real Ed25519 verifications (shared cache)",
        _ => "",
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format_float(n.as_f64().unwrap_or(f64::NAN)),
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_report(v: &Value) {
    let Some(m) = v.as_object() else { return };
    let get = |k: &str| m.get(k).map(text).unwrap_or_default();
    let commit = m.get("commit").map(|c| format!("  commit {}", text(c))).unwrap_or_default();
    println!("rill sim {}  seed {}{commit}", get("scenario"), get("seed"));
    let rows: Vec<(String, String, &str)> = m
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "scenario" | "seed" | "commit" | "lag_floor_formula"))
        .map(|(k, v)| {
            let value = match v {
                Value::Object(o) => {
                    o.iter().map(|(n, x)| format!("{n} {}", text(x))).collect::<Vec<_>>().join("  ")
                }
                Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" "),
                other => text(other),
            };
            (k.clone(), value, explain(k))
        })
        .collect();
    let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    // Long values (byte breakdowns) do not push every explanation off to the right.
    let vw = rows.iter().map(|r| r.1.chars().count()).filter(|&n| n <= 48).max().unwrap_or(0);
    for (k, value, why) in rows {
        let line = format!("  {k:<kw$}  {value:<vw$}  {why}");
        println!("{}", line.trim_end());
    }
    println!("  {}", get("lag_floor_formula"));
}

/// The source tree's commit, if `git` can tell cheaply ("-dirty" with uncommitted changes).
/// Asked of the tree this binary was built from, so it names the build unless that tree
/// changed since.
fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
