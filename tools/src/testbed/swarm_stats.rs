//! The figures of a `rill testbed swarm` run, made from what its processes wrote: each
//! node's `--stats-json` lines, its CPU time and its output file. Pure: no namespaces,
//! no processes, so every rule here is tested on made-up input.
//!
//! Over all (viewer, chunk) pairs, as shared/METRICS.md asks, not over per-viewer
//! percentiles: each stats line carries that second's arrival lags as histogram buckets
//! (`arrival_lag_hist_us`), and all lines of all viewers merge into one distribution.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use rill_viewer::LagHistogram;
use serde_json::{json, Map, Value};

use crate::live::common::{hist_from_json, ms};
use crate::sim::metrics::percentile;
use crate::table::round;

/// An MPEG-TS packet: 188 bytes starting with the sync byte 0x47 (ISO/IEC 13818-1 §2.4.3.2).
pub const TS_PACKET_BYTES: usize = 188;
/// Issue 6's startup target: a viewer's first byte within 1 s of `watch` starting.
pub const STARTUP_TARGET_MS: f64 = 1000.0;
const TS_SYNC_BYTE: u8 = 0x47;

/// One process's `--stats-json`: its complete lines, in order.
#[derive(Debug, Default, Clone)]
pub struct StatsFile {
    pub lines: Vec<Map<String, Value>>,
    /// The last line was cut short (the process was killed while writing it).
    pub truncated: bool,
}

impl StatsFile {
    /// Parses JSON lines. Only the last line may be incomplete (a SIGKILL in mid-write);
    /// any other bad line is an error, as it means the format is not what we read.
    pub fn parse(text: &str) -> Result<StatsFile> {
        let mut out = StatsFile::default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(m)) => out.lines.push(m),
                _ if i + 1 == lines.len() && !text.ends_with('\n') => out.truncated = true,
                _ => bail!("stats line {} is not a JSON object: {}", i + 1, truncate(line, 120)),
            }
        }
        Ok(out)
    }

    /// The last complete line (the final figures), or an empty object.
    pub fn last(&self) -> Map<String, Value> {
        self.lines.last().cloned().unwrap_or_default()
    }

    /// A whole-number figure of the last line (0 if absent).
    pub fn last_u64(&self, key: &str) -> u64 {
        self.lines.last().and_then(|m| m.get(key)).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn node_id(&self) -> Option<String> {
        self.lines.iter().rev().find_map(|m| m.get("node_id")?.as_str().map(str::to_string))
    }

    /// Every line's arrival lags merged: the process's whole distribution.
    pub fn arrival_lag(&self) -> Result<LagHistogram> {
        let mut h = LagHistogram::new();
        for (i, m) in self.lines.iter().enumerate() {
            if let Some(v) = m.get("arrival_lag_hist_us") {
                hist_from_json(v, &mut h).with_context(|| format!("stats line {}", i + 1))?;
            }
        }
        Ok(h)
    }

    /// `startup_ms.<which>` of the last line, if the viewer got that far.
    pub fn startup_ms(&self, which: &str) -> Option<f64> {
        self.lines.last()?.get("startup_ms")?.get(which)?.as_f64()
    }

    /// The exact largest arrival lag, ms (the merged buckets only know it to 1.6 %).
    fn max_lag_ms(&self) -> Option<f64> {
        self.lines.last()?.get("arrival_lag_ms")?.get("max")?.as_f64()
    }

    /// Chunks received from each sender, by node id (last line).
    fn chunks_from(&self) -> BTreeMap<String, u64> {
        let Some(Value::Object(m)) = self.lines.last().and_then(|l| l.get("chunks_from")) else {
            return BTreeMap::new();
        };
        m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect()
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// What one process of the run left: its figures, CPU and lifetime.
#[derive(Debug, Clone, Default)]
pub struct ProcessRun {
    pub stats: StatsFile,
    /// CPU seconds (user + system) read just before it was stopped or killed.
    pub cpu_s: f64,
    /// Seconds from spawn to stop.
    pub alive_s: f64,
    /// Killed by the churn schedule (SIGKILL), not stopped at the end.
    pub killed: bool,
}

/// One run of one viewer host (a host restarted by churn has several).
#[derive(Debug, Clone, Default)]
pub struct ViewerRun {
    pub viewer: usize,
    pub nat: bool,
    pub process: ProcessRun,
    /// What the output check found (see [`check_ts`]).
    pub output: OutputCheck,
}

/// How a viewer's output file looked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OutputCheck {
    /// Whole TS packets, every one with its sync byte (and, if a reference was given,
    /// byte for byte equal to it).
    #[default]
    Valid,
    Empty,
    Invalid(String),
}

/// Checks a viewer's output: whole 188-byte packets, each starting with the sync byte.
/// `killed`: the process died by SIGKILL, so a packet cut short at the very end is
/// expected and not held against it. `reference`: the exact bytes the publisher sent,
/// when it published a finite input from its start.
pub fn check_ts(bytes: &[u8], killed: bool, reference: Option<&[u8]>) -> OutputCheck {
    if bytes.is_empty() {
        return OutputCheck::Empty;
    }
    if let Some(r) = reference {
        if bytes != r {
            let at = bytes.iter().zip(r).position(|(a, b)| a != b).unwrap_or(bytes.len().min(r.len()));
            return OutputCheck::Invalid(format!(
                "{} bytes out, {} published, first difference at byte {at}",
                bytes.len(),
                r.len()
            ));
        }
        return OutputCheck::Valid;
    }
    let whole = bytes.len() - bytes.len() % TS_PACKET_BYTES;
    if whole != bytes.len() && !killed {
        return OutputCheck::Invalid(format!("{} bytes is not a whole number of TS packets", bytes.len()));
    }
    match bytes[..whole].chunks_exact(TS_PACKET_BYTES).position(|p| p[0] != TS_SYNC_BYTE) {
        Some(i) => OutputCheck::Invalid(format!("TS packet {i} has no sync byte")),
        None if whole == 0 => OutputCheck::Empty,
        None => OutputCheck::Valid,
    }
}

/// `{p50, p95, max}` of a few samples (nearest rank), rounded to 0.1; nulls when none.
fn spread(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let q = |p: f64| percentile(values, p).map(|v| round(v, 1));
    json!({ "p50": q(50.0), "p95": q(95.0), "max": q(100.0) })
}

/// A ratio rounded to `digits`, or null without a denominator.
fn ratio(num: f64, den: f64, digits: i32) -> Value {
    if den > 0.0 {
        json!(round(num / den, digits))
    } else {
        Value::Null
    }
}

/// Starts past the target listed in `slow_starts`, slowest first: enough to tell a
/// late tree search (`tree_join_ms` near the first byte) from parents slow to send the
/// start group (`tree_join_ms` early, `start_shift_ms` or `start_restarts` high).
const SLOW_STARTS_LISTED: usize = 5;

/// The causes a viewer's `late_out` figure splits its late outputs into (`rill watch`).
const LATE_OUT_CAUSES: [&str; 2] = ["arrived_late", "held_in_time"];

/// The run's figures (METRICS.md names) from the publisher's and every viewer run's
/// files. `viewers`: hosts, for the overhead ratio's "media bytes × viewers".
pub fn summarize(publisher: &ProcessRun, runs: &[ViewerRun], viewers: usize) -> Result<Map<String, Value>> {
    let mut lag = LagHistogram::new();
    let mut lag_max_ms: Option<f64> = None;
    let (mut first_byte, mut first_keyframe) = (Vec::new(), Vec::new());
    let (mut on_time, mut due, mut lost, mut lost_after) = (0u64, 0u64, 0u64, 0u64);
    let (mut useful, mut duplicate, mut viewer_sent) = (0u64, 0u64, 0u64);
    let mut never_started = 0usize;
    // Why the chunks not on time left late (`PlayoutStats::late_out_*`): the swarm or the
    // viewer's own process.
    let mut late_out = [0u64; 2];
    // How the newcomers' starts went (`PlayoutBuffer`'s start margin): the shift each
    // started viewer took, and how often one moved on to a later keyframe.
    let (mut start_shift, mut start_restarts) = (Vec::new(), 0u64);
    // The early starts (startup budget): each started viewer's lead at its start, and the
    // time its output stood still after startup.
    let (mut start_ahead, mut stall) = (Vec::new(), Vec::new());
    // How long each viewer run took to have a parent in every stripe, and for the starts
    // past the target, where their time went.
    let (mut tree_join, mut slow_starts) = (Vec::new(), Vec::new());
    // CPU seconds and alive seconds per viewer host, over its runs.
    let mut cpu: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for r in runs {
        let s = &r.process.stats;
        lag.merge(&s.arrival_lag().with_context(|| format!("viewer {}", r.viewer))?);
        if let Some(m) = s.max_lag_ms() {
            lag_max_ms = Some(lag_max_ms.map_or(m, |x| x.max(m)));
        }
        let last = s.last();
        let joined = last.get("tree_join_ms").and_then(Value::as_f64);
        tree_join.extend(joined);
        match (s.startup_ms("first_byte"), s.startup_ms("first_keyframe")) {
            (Some(b), k) => {
                if b > STARTUP_TARGET_MS {
                    let start = json!({
                        "viewer": r.viewer,
                        "first_byte_ms": b,
                        "first_keyframe_ms": k,
                        "tree_join_ms": joined,
                        "start_shift_ms": last.get("start_shift_ms"),
                        "start_restarts": s.last_u64("start_restarts"),
                    });
                    slow_starts.push((b, start));
                }
                first_byte.push(b);
                first_keyframe.extend(k);
                start_shift.extend(last.get("start_shift_ms").and_then(Value::as_f64));
                start_ahead.extend(last.get("start_ahead_ms").and_then(Value::as_f64));
                stall.extend(last.get("stall_ms").and_then(Value::as_f64));
            }
            (None, k) => {
                first_keyframe.extend(k);
                never_started += 1;
            }
        }
        on_time += s.last_u64("chunks_on_time");
        due += s.last_u64("chunks_due_after_startup");
        lost_after += s.last_u64("lost_after_startup");
        lost += s.last_u64("lost_chunks");
        start_restarts += s.last_u64("start_restarts");
        let causes = s.last().get("late_out").cloned().unwrap_or_default();
        for (sum, cause) in late_out.iter_mut().zip(LATE_OUT_CAUSES) {
            *sum += causes.get(cause).and_then(Value::as_u64).unwrap_or(0);
        }
        useful += s.last_u64("useful_payload_bytes");
        duplicate += s.last_u64("duplicate_payload_bytes");
        viewer_sent += s.last_u64("bytes_sent");
        let e = cpu.entry(r.viewer).or_default();
        e.0 += r.process.cpu_s;
        e.1 += r.process.alive_s;
    }
    let media = publisher.stats.last_u64("media_bytes") as f64;
    let publisher_sent = publisher.stats.last_u64("bytes_sent") as f64;
    let per_node: Vec<f64> = cpu.values().filter(|(_, t)| *t > 0.0).map(|(c, t)| c / t).collect();
    let cpu_mean =
        if per_node.is_empty() { None } else { Some(per_node.iter().sum::<f64>() / per_node.len() as f64) };
    let cpu_max = per_node.iter().copied().reduce(f64::max);
    let q = |p: f64| lag.percentile_us(p).map(|v| round(ms(v), 1));
    let mut m = Map::new();
    m.insert(
        "arrival_lag_ms".into(),
        json!({ "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": lag_max_ms.or(q(1.0)) }),
    );
    m.insert("arrival_lag_pairs".into(), json!(lag.count()));
    m.insert(
        "startup_ms".into(),
        json!({ "first_byte": spread(&mut first_byte), "first_keyframe": spread(&mut first_keyframe) }),
    );
    // How many starts missed the target, not only how far the worst did: one run's
    // slowest start swings by a second on the same code, a count over the joins less.
    let over = first_byte.iter().filter(|&&b| b > STARTUP_TARGET_MS).count();
    m.insert("first_byte_over_1s".into(), json!(over));
    m.insert("viewers_started".into(), json!(first_byte.len()));
    m.insert("viewers_never_started".into(), json!(never_started));
    m.insert("tree_join_ms".into(), spread(&mut tree_join));
    slow_starts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest: Vec<Value> = slow_starts.into_iter().take(SLOW_STARTS_LISTED).map(|(_, v)| v).collect();
    m.insert("slow_starts".into(), Value::Array(slowest));
    m.insert("start_shift_ms".into(), spread(&mut start_shift));
    m.insert("start_restarts".into(), json!(start_restarts));
    m.insert("start_ahead_ms".into(), spread(&mut start_ahead));
    m.insert("stall_ms".into(), spread(&mut stall));
    m.insert(
        "late_out".into(),
        Value::Object(LATE_OUT_CAUSES.iter().map(|c| c.to_string()).zip(late_out.map(Value::from)).collect()),
    );
    m.insert("continuity_index".into(), ratio(on_time as f64, (due + lost_after) as f64, 4));
    m.insert("lost_chunks".into(), json!(lost));
    m.insert("duplicate_ratio".into(), ratio(duplicate as f64, useful as f64, 3));
    m.insert("overhead_ratio".into(), ratio(publisher_sent + viewer_sent as f64, media * viewers as f64, 3));
    m.insert("publisher_upload".into(), ratio(publisher_sent, media, 2));
    m.insert("media_bytes".into(), json!(media as u64));
    let per_s = |x: Option<f64>| x.map(|v| round(v, 4));
    m.insert(
        "cpu_per_node".into(),
        json!({
            "mean": per_s(cpu_mean),
            "max": per_s(cpu_max),
            "publisher": per_s((publisher.alive_s > 0.0).then(|| publisher.cpu_s / publisher.alive_s)),
        }),
    );
    Ok(m)
}

/// The totals of `--runs` (each run's figures with its seed): counts summed over all
/// runs' viewers, extremes and per-run lists of the figures a target is set on, and how
/// many runs met each target.
pub fn over_runs(runs: &[(u64, Value)]) -> Value {
    let sum = |key: &str| runs.iter().filter_map(|(_, f)| f.get(key).and_then(Value::as_u64)).sum::<u64>();
    let each = |pointer: &str| -> Vec<Value> {
        runs.iter().map(|(_, f)| f.pointer(pointer).cloned().unwrap_or(Value::Null)).collect()
    };
    let extreme = |values: &[Value], max: bool| {
        let nums = values.iter().filter_map(Value::as_f64);
        if max {
            nums.reduce(f64::max)
        } else {
            nums.reduce(f64::min)
        }
    };
    let first_byte_max = each("/startup_ms/first_byte/max");
    let continuity = each("/continuity_index");
    let lag_above = each("/targets/arrival_lag_p99_above_max_path_ms/value");
    // How much the machine disturbed each run (see `checks.forwarder_timeliness` and
    // `checks.cpu_steal`): a bad run beside a high figure here is the host's doing.
    let forwarder_late = each("/checks/forwarder_timeliness/late_over_1ms");
    let steal = each("/checks/cpu_steal");
    let mut met: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, f) in runs {
        for (name, t) in f.get("targets").and_then(Value::as_object).into_iter().flatten() {
            *met.entry(name.as_str()).or_default() += u64::from(t.get("met") == Some(&Value::Bool(true)));
        }
    }
    let failed = runs
        .iter()
        .filter(|(_, f)| {
            f.pointer("/checks/failures").and_then(Value::as_array).is_none_or(|a| !a.is_empty())
        })
        .count();
    json!({
        "scenario": "swarm-runs",
        "runs": runs.len(),
        "seeds": runs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        "viewers_started": sum("viewers_started"),
        "first_byte_over_1s": sum("first_byte_over_1s"),
        "viewers_never_started": sum("viewers_never_started"),
        "start_restarts": sum("start_restarts"),
        "lost_chunks": sum("lost_chunks"),
        "startup_first_byte_max_ms": { "max": extreme(&first_byte_max, true), "per_run": first_byte_max },
        "continuity_index": { "min": extreme(&continuity, false), "per_run": continuity },
        "arrival_lag_p99_above_max_path_ms": { "max": extreme(&lag_above, true), "per_run": lag_above },
        "forwarder_late_over_1ms": { "max": extreme(&forwarder_late, true), "per_run": forwarder_late },
        "cpu_steal": { "max": extreme(&steal, true), "per_run": steal },
        "runs_meeting_target": met,
        "runs_failed_checks": failed,
    })
}

/// Where NATed viewers got their chunks, and whether they got any: the `--nat` figures.
/// Senders are told apart by node id: the publisher's, public viewers', NATed viewers'.
pub fn nat_figures(publisher: &ProcessRun, runs: &[ViewerRun]) -> Value {
    let mut class: BTreeMap<String, &str> = BTreeMap::new();
    if let Some(id) = publisher.stats.node_id() {
        class.insert(id, "publisher");
    }
    for r in runs {
        if let Some(id) = r.process.stats.node_id() {
            class.insert(id, if r.nat { "nat_viewers" } else { "public_viewers" });
        }
    }
    let mut nat_hosts: BTreeMap<usize, bool> = BTreeMap::new();
    let mut to_nat: BTreeMap<&str, u64> = BTreeMap::new();
    let mut from_nat_to_public = 0u64;
    for r in runs {
        let received = r.process.stats.last_u64("chunks_received") > 0;
        for (id, n) in r.process.stats.chunks_from() {
            let c = class.get(&id).copied().unwrap_or("others");
            if r.nat {
                *to_nat.entry(c).or_default() += n;
            } else if c == "nat_viewers" {
                from_nat_to_public += n;
            }
        }
        if r.nat {
            *nat_hosts.entry(r.viewer).or_default() |= received;
        }
    }
    let total: u64 = to_nat.values().sum();
    let share: Map<String, Value> = ["publisher", "public_viewers", "nat_viewers", "others"]
        .iter()
        .map(|c| (c.to_string(), ratio(to_nat.get(c).copied().unwrap_or(0) as f64, total as f64, 3)))
        .collect();
    json!({
        "viewers": nat_hosts.len(),
        "receiving": nat_hosts.values().filter(|r| **r).count(),
        "chunks_received": total,
        "chunks_from": Value::Object(share),
        "chunks_served_to_public_viewers": from_nat_to_public,
    })
}

/// Viewers listed by [`upload_drop_figures`].
const UPLOAD_DROPS_LISTED: usize = 5;

/// Whose upload queue dropped packets. `drops` and `uploads_kbps` are by host: the
/// publisher first, then viewer by viewer. The publisher's count, how many viewers' queues
/// dropped any, and the viewers whose queues dropped most, each with its upload and
/// `upload_used`, the share of that upload its processes sent on average (UDP payload
/// over their uptime): a queue that drops while its host uses well under its rate on
/// average overflows with bursts (a chunk to every child at once), not with a plan that
/// asks for more than the link carries.
pub fn upload_drop_figures(
    drops: &[u64],
    uploads_kbps: &[u64],
    publisher: &ProcessRun,
    runs: &[ViewerRun],
) -> Value {
    let used = |sent_bytes: u64, uptime_s: f64, upload_kbps: u64| {
        ratio(sent_bytes as f64 * 8.0 / 1000.0, uptime_s * upload_kbps as f64, 3)
    };
    let uptime = |p: &ProcessRun| p.stats.last().get("uptime_s").and_then(Value::as_f64).unwrap_or(0.0);
    let mut by_viewer: BTreeMap<usize, (u64, f64)> = BTreeMap::new();
    for r in runs {
        let e = by_viewer.entry(r.viewer).or_default();
        e.0 += r.process.stats.last_u64("bytes_sent");
        e.1 += uptime(&r.process);
    }
    let mut dropping: Vec<(usize, u64)> =
        drops.iter().skip(1).copied().enumerate().filter(|&(_, d)| d > 0).collect();
    dropping.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let upload = |host: usize| uploads_kbps.get(host).copied().unwrap_or(0);
    let listed: Vec<Value> = dropping
        .iter()
        .take(UPLOAD_DROPS_LISTED)
        .map(|&(v, d)| {
            let (sent, up_s) = by_viewer.get(&v).copied().unwrap_or_default();
            json!({ "viewer": v, "drops": d, "upload_kbps": upload(v + 1), "upload_used": used(sent, up_s, upload(v + 1)) })
        })
        .collect();
    json!({
        "publisher": {
            "drops": drops.first().copied().unwrap_or(0),
            "upload_used": used(publisher.stats.last_u64("bytes_sent"), uptime(publisher), upload(0)),
        },
        "viewers_dropping": dropping.len(),
        "viewers_dropping_most": listed,
    })
}

/// Packets the shaping queues dropped, from `tc -s qdisc show` in the router: the leaf
/// queues only (`bfifo` under each upload class, `tbf` of each download), since a classful
/// root (htb) counts its children's drops again.
pub fn queue_drops(tc_stats: &str) -> u64 {
    leaf_queue_drops(tc_stats).map(|q| q.drops).sum()
}

/// Drops of each upload queue (the `bfifo` under a host's htb class), by the queue's
/// handle (hex in tc's output: `bfifo 1f:` is 31).
pub fn upload_queue_drops_by_handle(tc_stats: &str) -> BTreeMap<u32, u64> {
    leaf_queue_drops(tc_stats)
        .filter(|q| q.kind == "bfifo")
        .filter_map(|q| Some((q.handle?, q.drops)))
        .collect()
}

/// A leaf queue's line in `tc -s qdisc show`, and the drops its statistics line gives.
struct LeafDrops<'a> {
    kind: &'a str,
    handle: Option<u32>,
    drops: u64,
}

fn leaf_queue_drops(tc_stats: &str) -> impl Iterator<Item = LeafDrops<'_>> {
    let mut leaf: Option<(&str, Option<u32>)> = None;
    tc_stats.lines().filter_map(move |line| {
        if let Some(rest) = line.strip_prefix("qdisc ") {
            let mut words = rest.split_whitespace();
            let kind = words.next().filter(|k| matches!(*k, "bfifo" | "tbf"));
            let handle = words.next().and_then(|h| u32::from_str_radix(h.trim_end_matches(':'), 16).ok());
            leaf = kind.map(|k| (k, handle));
            None
        } else {
            let (_, after) = line.split_once("(dropped ")?;
            let (kind, handle) = leaf.take()?;
            let drops =
                after.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap_or(0);
            Some(LeafDrops { kind, handle, drops })
        }
    })
}

/// Stolen and total CPU time of the whole machine, in clock ticks, from `/proc/stat`'s
/// first line (`cpu user nice system idle iowait irq softirq steal …`; proc(5)).
pub fn cpu_steal_and_total(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // guest and guest_nice are already inside user and nice: the first eight are the total.
    let ticks: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let steal = *ticks.get(7)?;
    Some((steal, ticks.iter().sum()))
}

/// Share of the machine's CPU time the hypervisor gave to others between two readings
/// of [`cpu_steal_and_total`]: on a shared VM, the runs where it is high are the ones
/// whose lag and stalls say more about the host than about rill.
pub fn steal_share(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1).filter(|&t| t > 0)?;
    let steal = after.0.checked_sub(before.0)?;
    Some(round(steal as f64 / total as f64, 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::common::hist_json;

    fn line(v: Value) -> String {
        format!("{v}\n")
    }

    fn hist(values: &[u64]) -> Value {
        let mut h = LagHistogram::new();
        values.iter().for_each(|&v| h.record(v));
        hist_json(&h)
    }

    fn viewer(i: usize, nat: bool, text: &str) -> ViewerRun {
        ViewerRun {
            viewer: i,
            nat,
            process: ProcessRun {
                stats: StatsFile::parse(text).unwrap(),
                cpu_s: 1.0,
                alive_s: 10.0,
                killed: false,
            },
            output: OutputCheck::Valid,
        }
    }

    #[test]
    fn only_a_cut_off_last_line_is_forgiven() {
        let ok = StatsFile::parse("{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!((ok.lines.len(), ok.truncated), (2, true));
        assert_eq!(ok.last_u64("a"), 2);
        assert!(StatsFile::parse("{\"a\":1}\nnot json\n{\"a\":2}\n").is_err());
        assert!(StatsFile::parse("{\"a\":1}\n[1]\n").is_err(), "a complete last line must parse");
        assert!(StatsFile::parse("").unwrap().lines.is_empty());
    }

    #[test]
    fn percentiles_are_over_all_pairs_not_per_viewer() {
        // Viewer 0: 99 chunks at 20 ms; viewer 1: one chunk at 900 ms. Per-viewer p99s
        // would average to 460 ms; over all 100 pairs p99 is 20 ms, max 900 ms.
        let a = line(json!({"node_id": "a", "arrival_lag_hist_us": hist(&[20_000; 60])}))
            + &line(json!({"node_id": "a", "arrival_lag_hist_us": hist(&[20_000; 39]),
                           "arrival_lag_ms": {"max": 20.0}}));
        let b = line(json!({"node_id": "b", "arrival_lag_hist_us": hist(&[900_000]),
                            "arrival_lag_ms": {"max": 900.0}}));
        let runs = [viewer(0, false, &a), viewer(1, false, &b)];
        let m = summarize(&ProcessRun::default(), &runs, 2).unwrap();
        let p99 = m["arrival_lag_ms"]["p99"].as_f64().unwrap();
        assert!((19.9..=20.4).contains(&p99), "{p99}");
        assert_eq!(m["arrival_lag_ms"]["max"], 900.0);
        assert_eq!(m["arrival_lag_pairs"], 100);
    }

    #[test]
    fn starts_past_the_target_are_counted() {
        let v = |first_byte: f64| {
            line(json!({"startup_ms": {"first_byte": first_byte, "first_keyframe": 100.0}}))
        };
        let runs = [viewer(0, false, &v(300.0)), viewer(1, false, &v(1000.0)), viewer(2, false, &v(1000.1))];
        let publisher = ProcessRun {
            stats: StatsFile::parse(&line(json!({"media_bytes": 1000}))).unwrap(),
            cpu_s: 0.0,
            alive_s: 1.0,
            killed: false,
        };
        let m = summarize(&publisher, &runs, 3).unwrap();
        assert_eq!(m["first_byte_over_1s"], 1);
        assert_eq!(m["viewers_started"], 3);
    }

    #[test]
    fn slow_starts_say_whether_the_tree_search_or_the_parents_took_the_time() {
        let v = |first_byte: f64, tree_join: Option<f64>, shift: f64, restarts: u64| {
            line(json!({"startup_ms": {"first_byte": first_byte, "first_keyframe": 300.0},
                        "tree_join_ms": tree_join, "start_shift_ms": shift, "start_restarts": restarts}))
        };
        let mut runs = vec![
            viewer(0, false, &v(700.0, Some(350.0), 0.0, 0)),
            viewer(1, false, &v(1300.0, Some(1150.0), 0.0, 0)),
            viewer(2, false, &v(1100.0, Some(420.0), 300.0, 1)),
            // Never had a parent in every stripe (killed mid-search, say): no tree_join_ms.
            viewer(3, false, &v(1050.0, None, 400.0, 0)),
        ];
        runs.extend((4..10).map(|i| viewer(i, false, &v(1000.0 + i as f64, Some(500.0), 0.0, 0))));
        let m = summarize(&ProcessRun::default(), &runs, 10).unwrap();
        let slow = m["slow_starts"].as_array().unwrap();
        assert_eq!(slow.len(), SLOW_STARTS_LISTED, "bounded, though 9 starts were past 1 s");
        let viewers: Vec<u64> = slow.iter().map(|s| s["viewer"].as_u64().unwrap()).collect();
        assert_eq!(viewers, vec![1, 2, 3, 9, 8], "slowest first");
        assert_eq!(slow[0]["tree_join_ms"], 1150.0);
        assert_eq!(
            (slow[1]["start_shift_ms"].as_f64(), slow[1]["start_restarts"].as_u64()),
            (Some(300.0), Some(1))
        );
        assert!(slow[2]["tree_join_ms"].is_null());
        // Over the 9 runs that had a parent in every stripe.
        assert_eq!(m["tree_join_ms"]["max"], 1150.0);
        assert_eq!(m["tree_join_ms"]["p50"], 500.0);
    }

    #[test]
    fn several_runs_add_up_and_keep_each_runs_extremes() {
        let run = |over: u64, lost: u64, max: f64, cont: f64, met: bool, failures: Value| {
            json!({"viewers_started": 30, "first_byte_over_1s": over, "viewers_never_started": 0,
                "start_restarts": over, "lost_chunks": lost,
                "startup_ms": {"first_byte": {"p50": 800.0, "max": max}}, "continuity_index": cont,
                "targets": {"startup_first_byte_max_ms": {"value": max, "limit": 1000, "met": met},
                    "arrival_lag_p99_above_max_path_ms": {"value": max / 4.0, "limit": 500, "met": true}},
                "checks": {"failures": failures, "cpu_steal": max / 10_000.0,
                    "forwarder_timeliness": {"late_over_1ms": lost as f64 / 1000.0}}})
        };
        let runs = [
            (3, run(0, 2, 815.0, 1.0, true, json!([]))),
            (4, run(6, 30, 1700.0, 0.9961, false, json!([]))),
            (5, run(2, 5, 1100.0, 0.9995, false, json!(["viewer 3 wrote nothing"]))),
        ];
        let t = over_runs(&runs);
        assert_eq!(t["runs"], 3);
        assert_eq!(t["seeds"], json!([3, 4, 5]));
        assert_eq!(t["viewers_started"], 90);
        assert_eq!(t["first_byte_over_1s"], 8);
        assert_eq!(t["start_restarts"], 8);
        assert_eq!(t["lost_chunks"], 37);
        assert_eq!(t["startup_first_byte_max_ms"]["max"], 1700.0);
        assert_eq!(t["startup_first_byte_max_ms"]["per_run"], json!([815.0, 1700.0, 1100.0]));
        assert_eq!(t["continuity_index"]["min"], 0.9961);
        assert_eq!(t["arrival_lag_p99_above_max_path_ms"]["max"], 425.0);
        assert_eq!(t["runs_meeting_target"]["startup_first_byte_max_ms"], 1);
        assert_eq!(t["runs_meeting_target"]["arrival_lag_p99_above_max_path_ms"], 3);
        assert_eq!(t["runs_failed_checks"], 1);
        assert_eq!(t["cpu_steal"]["max"], 0.17);
        assert_eq!(t["forwarder_late_over_1ms"]["per_run"], json!([0.002, 0.03, 0.005]));
        // A run without figures (it failed before any) counts as failed, not as a zero.
        let t = over_runs(&[(1, json!({}))]);
        assert_eq!(t["runs_failed_checks"], 1);
        assert_eq!(t["continuity_index"]["min"], Value::Null);
    }

    #[test]
    fn continuity_cost_and_cpu_add_up_over_viewers() {
        let v = |on: u64, due: u64, lost: u64, sent: u64| {
            line(json!({"chunks_on_time": on, "chunks_due_after_startup": due, "lost_after_startup": lost,
                "lost_chunks": lost, "bytes_sent": sent, "useful_payload_bytes": 1000, "duplicate_payload_bytes": 50,
                "startup_ms": {"first_byte": 300.0, "first_keyframe": 250.0},
                "start_shift_ms": lost as f64 * 100.0, "start_restarts": lost,
                "start_ahead_ms": on as f64 / 10.0, "stall_ms": sent as f64 / 100.0,
                "late_out": {"arrived_late": due - on, "held_in_time": 1}}))
        };
        let runs = [viewer(0, false, &v(990, 995, 5, 2000)), viewer(1, false, &v(1000, 1000, 0, 0))];
        let publisher = ProcessRun {
            stats: StatsFile::parse(&line(json!({"media_bytes": 1000, "bytes_sent": 3000}))).unwrap(),
            cpu_s: 2.0,
            alive_s: 10.0,
            killed: false,
        };
        let m = summarize(&publisher, &runs, 2).unwrap();
        assert_eq!(m["continuity_index"], 0.995); // 1990 / 2000
        assert_eq!(m["lost_chunks"], 5);
        assert_eq!(m["overhead_ratio"], 2.5); // (3000 + 2000) / (1000 × 2)
        assert_eq!(m["publisher_upload"], 3.0);
        assert_eq!(m["duplicate_ratio"], 0.05);
        assert_eq!(m["cpu_per_node"]["mean"], 0.1);
        assert_eq!(m["cpu_per_node"]["publisher"], 0.2);
        assert_eq!(m["startup_ms"]["first_byte"]["max"], 300.0);
        assert_eq!(m["viewers_never_started"], 0);
        assert_eq!(m["start_restarts"], 5);
        assert_eq!(
            (m["start_shift_ms"]["p50"].as_f64(), m["start_shift_ms"]["max"].as_f64()),
            (Some(0.0), Some(500.0))
        );
        assert_eq!(
            (m["start_ahead_ms"]["p50"].as_f64(), m["start_ahead_ms"]["max"].as_f64()),
            (Some(99.0), Some(100.0))
        );
        assert_eq!((m["stall_ms"]["p50"].as_f64(), m["stall_ms"]["max"].as_f64()), (Some(0.0), Some(20.0)));
        assert_eq!(m["late_out"], json!({"arrived_late": 5, "held_in_time": 2}));
    }

    #[test]
    fn a_restarted_host_counts_once_for_cpu_and_a_silent_viewer_as_never_started() {
        let runs = [viewer(0, false, "{}\n"), viewer(0, false, "{}\n")];
        let m = summarize(&ProcessRun::default(), &runs, 1).unwrap();
        assert_eq!(m["cpu_per_node"]["mean"], 0.1); // 2 s over 20 s
        assert_eq!(m["viewers_never_started"], 2);
        assert_eq!(m["continuity_index"], Value::Null);
        assert_eq!(m["overhead_ratio"], Value::Null);
    }

    #[test]
    fn nat_figures_name_the_senders() {
        let publisher =
            ProcessRun { stats: StatsFile::parse("{\"node_id\":\"P\"}\n").unwrap(), ..ProcessRun::default() };
        let runs = [
            viewer(
                0,
                false,
                &line(json!({"node_id": "A", "chunks_received": 10, "chunks_from": {"P": 6, "B": 4}})),
            ),
            viewer(
                1,
                true,
                &line(json!({"node_id": "B", "chunks_received": 10, "chunks_from": {"P": 5, "A": 5}})),
            ),
            viewer(2, true, &line(json!({"node_id": "C", "chunks_received": 0, "chunks_from": {}}))),
        ];
        let n = nat_figures(&publisher, &runs);
        assert_eq!(n["viewers"], 2);
        assert_eq!(n["receiving"], 1);
        assert_eq!(n["chunks_from"]["publisher"], 0.5);
        assert_eq!(n["chunks_from"]["public_viewers"], 0.5);
        assert_eq!(n["chunks_from"]["nat_viewers"], 0.0);
        assert_eq!(n["chunks_served_to_public_viewers"], 4);
    }

    #[test]
    fn upload_drops_name_the_hosts_and_how_much_of_their_upload_they_used() {
        let stats = |sent: u64, uptime: f64| line(json!({ "bytes_sent": sent, "uptime_s": uptime }));
        let publisher = viewer(0, false, &stats(2_500_000, 8.0)).process;
        // Viewer 2 ran twice (churn): its two runs add up.
        let runs = [
            viewer(0, false, &stats(100_000, 8.0)),
            viewer(1, false, &stats(1_000_000, 8.0)),
            viewer(2, false, &stats(500_000, 2.0)),
            viewer(2, false, &stats(250_000, 2.0)),
        ];
        // By host: the publisher, then viewers 0, 1, 2.
        let figures = upload_drop_figures(&[3, 0, 7, 2], &[5000, 1000, 2000, 1500], &publisher, &runs);
        assert_eq!(
            figures,
            json!({
                "publisher": { "drops": 3, "upload_used": 0.5 },
                "viewers_dropping": 2,
                "viewers_dropping_most": [
                    { "viewer": 1, "drops": 7, "upload_kbps": 2000, "upload_used": 0.5 },
                    { "viewer": 2, "drops": 2, "upload_kbps": 1500, "upload_used": 1.0 },
                ],
            })
        );
        // No stats (a viewer that never wrote any): no share, not a division by zero.
        let figures = upload_drop_figures(&[0, 4], &[5000, 1000], &publisher, &[]);
        assert_eq!(figures["viewers_dropping_most"][0]["upload_used"], Value::Null);
    }

    #[test]
    fn queue_drops_count_leaf_queues_once() {
        let tc = "qdisc htb 1: root refcnt 2 r2q 10 default 0 direct_packets_stat 5\n \
                  Sent 100 bytes 1 pkt (dropped 7, overlimits 0 requeues 0)\n\
                  qdisc bfifo 2: parent 1:2 limit 8075b\n Sent 50 bytes 1 pkt (dropped 3, overlimits 0 requeues 0)\n\
                  qdisc bfifo 3: parent 1:3 limit 8075b\n Sent 50 bytes 1 pkt (dropped 4, overlimits 0 requeues 0)\n\
                  qdisc tbf 8001: dev h1 root refcnt 2 rate 1Mbit\n Sent 1 bytes 1 pkt (dropped 1, overlimits 2 requeues 0)\n";
        assert_eq!(queue_drops(tc), 8);
        assert_eq!(queue_drops(""), 0);
        assert_eq!(upload_queue_drops_by_handle(tc), BTreeMap::from([(2, 3), (3, 4)]));
        // Handles are hex; a line tc may add later, or garbage, is no queue.
        let tc = "qdisc bfifo 1f: parent 1:1f limit 8075b\n Sent 9 bytes 1 pkt (dropped 12, overlimits 0)\n\
                  qdisc bfifo zz: parent 1:zz\n Sent 1 bytes 1 pkt (dropped 5, overlimits 0)\n\
                   (dropped 99, overlimits 0)\nnot tc at all\n";
        assert_eq!(upload_queue_drops_by_handle(tc), BTreeMap::from([(31, 12)]));
        assert_eq!(queue_drops(tc), 17);
    }

    #[test]
    fn outputs_must_be_whole_sync_aligned_packets() {
        let mut ts = vec![0u8; 3 * TS_PACKET_BYTES];
        for p in ts.chunks_exact_mut(TS_PACKET_BYTES) {
            p[0] = TS_SYNC_BYTE;
        }
        assert_eq!(check_ts(&ts, false, None), OutputCheck::Valid);
        assert_eq!(check_ts(&ts, false, Some(&ts)), OutputCheck::Valid);
        assert!(matches!(check_ts(&ts[..300], false, None), OutputCheck::Invalid(_)));
        assert_eq!(check_ts(&ts[..300], true, None), OutputCheck::Valid, "a SIGKILL may cut the last packet");
        assert_eq!(check_ts(&ts[..100], true, None), OutputCheck::Empty);
        assert_eq!(check_ts(&[], false, None), OutputCheck::Empty);
        let mut bad = ts.clone();
        bad[TS_PACKET_BYTES] = 0;
        assert!(matches!(check_ts(&bad, false, None), OutputCheck::Invalid(_)));
        assert!(matches!(check_ts(&bad, false, Some(&ts)), OutputCheck::Invalid(_)));
        assert!(matches!(check_ts(&ts[..188], false, Some(&ts)), OutputCheck::Invalid(_)));
    }

    #[test]
    fn cpu_steal_comes_from_the_first_line_of_proc_stat() {
        let before = "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n";
        let after = "cpu  200 0 100 1500 20 0 10 170 7 0\n";
        let b = cpu_steal_and_total(before).unwrap();
        assert_eq!(b, (35, 1000));
        let a = cpu_steal_and_total(after).unwrap();
        assert_eq!(a, (170, 2000));
        assert_eq!(steal_share(b, a), Some(0.135));
        // Malformed, truncated or backwards: no figure rather than a wrong one.
        assert_eq!(cpu_steal_and_total(""), None);
        assert_eq!(cpu_steal_and_total("cpu 1 2 3"), None);
        assert_eq!(cpu_steal_and_total("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(cpu_steal_and_total("cpu 1 2 x 4 5 6 7 8"), None);
        assert_eq!(steal_share(a, b), None);
        assert_eq!(steal_share(a, a), None);
    }
}
