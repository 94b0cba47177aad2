//! `rill testbed transport`: rill against kernel TCP on one real bottleneck.
//!
//! Two hosts, `snd` and `rcv`, hang off the router. The bottleneck is a `tbf` qdisc on the
//! router's veth toward `rcv` (20 Mbit/s; `limit` = rate × buffer), so it is a kernel
//! queue that neither sender's socket accounting can see. The impairment forwarder adds
//! 10 ms each way on each host's link: 20 ms one way, 40 ms base RTT. These are the
//! issue's figures and the defaults; `--rate-kbps`, `--buffer-ms` and `--delay-ms` change
//! them, and `--jitter-ms` and `--loss` impair the way toward `rcv` (data one way, acks
//! and the probe's replies the other), so every flow of a run crosses the same path.
//!
//! - **bottleneck** (1 s of buffer): one flow at a time, each for `--duration`: rill bulk
//!   (`rill bench transport --connect --class background`), then kernel TCP CUBIC and BBR
//!   (`iperf3 -C`). Per flow: `standing_queue_ms` p50/p95 from `ping -i 0.02` snd → rcv
//!   (through the bottleneck): RTT minus the idle path's minimum RTT, measured by 100
//!   pings before any flow; `goodput_mbps` at the receiver; `utilisation` = bytes the
//!   bottleneck's tbf sent / (rate × the same window), headers and all: how busy the flow
//!   kept the link, as shared/METRICS.md's upload utilisation and `rill bench transport`
//!   count it; `goodput_utilisation` = goodput / rate beside it (application bytes only:
//!   per-packet headers cap it near 0.96 for TCP at a 1500-byte MTU, lower for rill's
//!   1200-byte datagrams with their transport header and AEAD tag).
//! - **sharing** (250 ms of buffer): at once, a rill stream-class session offering
//!   4 Mbit/s in 16 KiB messages with a 1 s deadline, a rill background session, and one
//!   TCP CUBIC bulk flow. `stream_on_time` = stream messages the receiver held complete by
//!   their deadline (send time + 1 s, both on CLOCK_MONOTONIC, which all namespaces share)
//!   / stream messages offered (the sender keeps the session up one deadline after
//!   `--duration`, so each offered message was delivered or abandoned);
//!   `background_share` and `competitor_share` = goodput / bottleneck rate.
//!
//! Figures are taken after a warm-up of min(5 s, duration / 3): slow start and the first
//! queue fill are not the steady state. Goodput windows: iperf3's receiver intervals from
//! the warm-up on; rill's listener prints one line a second, those arriving between
//! flow start + warm-up + 1 s (so the whole second is inside) and the flow's end.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::flows::{self, Running};
use super::netns::{self, HostId, LinkSpec, Testbed};
use super::probe::{self, parse_ping_line};
use super::tools;
use crate::sim::metrics::percentile;
use crate::table::{round, Report};

/// The bottleneck: 20 Mbit/s, 20 ms one way (the defaults of `--rate-kbps` and
/// `--delay-ms`).
const RATE_KBPS: u64 = 20_000;
const ONE_WAY_MS: f64 = 20.0;
/// Buffers of the two scenarios (the issue: 1 s; 250 ms for sharing).
const BOTTLENECK_BUFFER_MS: u64 = 1000;
const SHARING_BUFFER_MS: u64 = 250;
/// The stream-class session's offered rate (the issue: 4 Mbit/s).
const STREAM_KBPS: u64 = 4000;
/// Probe interval: 50 samples a second, 34 kbit/s of 84-byte ICMP packets (0.2 % of the
/// bottleneck).
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Pings on the idle path for its minimum RTT.
const IDLE_PINGS: u32 = 100;
const WARMUP_MAX: Duration = Duration::from_secs(5);
/// Pause between flows: a full 1 s buffer drains in 1 s.
const DRAIN: Duration = Duration::from_secs(2);
/// Time for listeners/servers to be ready before a sender starts.
const SETTLE: Duration = Duration::from_millis(500);
/// How long past its duration a flow may take to finish (handshake, linger, summary).
const SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Bottleneck,
    Sharing,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    Rill,
    Cubic,
    Bbr,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Rill => "rill",
            Flow::Cubic => "cubic",
            Flow::Bbr => "bbr",
        }
    }
}

#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Which,
    /// Seconds each flow runs.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Flows of the bottleneck scenario, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rill,cubic,bbr")]
    pub flows: Vec<Flow>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub path: PathArgs,
}

/// The path between the hosts; the defaults are the issue's.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Bottleneck rate, kbit/s.
    #[arg(long, value_name = "KBPS", default_value_t = RATE_KBPS)]
    pub rate_kbps: u64,
    /// Bottleneck buffer, ms at the rate, for both scenarios [default: 1000 for
    /// bottleneck, 250 for sharing].
    #[arg(long, value_name = "MS")]
    pub buffer_ms: Option<u64>,
    /// One-way propagation delay, ms (half on each host's link).
    #[arg(long, value_name = "MS", default_value_t = ONE_WAY_MS)]
    pub delay_ms: f64,
    /// Jitter on the way to the receiver: each packet's delay is uniform in delay ± this
    /// (packets of one flow are not reordered).
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Random loss on the way to the receiver, a probability per packet (0.01 = 1 %).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub loss: f64,
}

impl PathArgs {
    fn validate(&self) -> Result<()> {
        if !(100..=10_000_000).contains(&self.rate_kbps) {
            bail!("--rate-kbps must be within 100..=10000000, not {}", self.rate_kbps);
        }
        if self.buffer_ms.is_some_and(|b| !(1..=10_000).contains(&b)) {
            bail!("--buffer-ms must be within 1..=10000");
        }
        if !(0.0..=1000.0).contains(&self.delay_ms) {
            bail!("--delay-ms must be within 0..=1000, not {}", self.delay_ms);
        }
        if !(0.0..=1000.0).contains(&self.jitter_ms) {
            bail!("--jitter-ms must be within 0..=1000, not {}", self.jitter_ms);
        }
        if !(0.0..=0.5).contains(&self.loss) {
            bail!("--loss must be a probability within 0..=0.5, not {}", self.loss);
        }
        Ok(())
    }

    fn buffer_ms(&self, scenario_default: u64) -> u64 {
        self.buffer_ms.unwrap_or(scenario_default)
    }

    fn rate_mbps(&self) -> f64 {
        self.rate_kbps as f64 / 1000.0
    }
}

pub fn run(args: &TransportArgs) -> Result<ExitCode> {
    netns::require_root()?;
    if !(2.0..=3600.0).contains(&args.duration) {
        bail!("--duration must be within 2..=3600 seconds");
    }
    args.path.validate()?;
    tools::ensure(&[tools::IP, tools::TC, tools::ETHTOOL, tools::PING, tools::IPERF3])?;
    let mut report = Report::default();
    let duration = Duration::from_secs_f64(args.duration);
    if matches!(args.scenario, Which::Bottleneck | Which::All) {
        bottleneck(args, duration, &mut report)?;
    }
    if matches!(args.scenario, Which::Sharing | Which::All) {
        sharing(args, duration, &mut report)?;
    }
    if !args.json {
        let p = &args.path;
        let mut title = format!(
            "rill testbed transport ({} Mbit/s bottleneck in a router namespace, {} ms one way",
            p.rate_mbps(),
            p.delay_ms
        );
        if p.jitter_ms > 0.0 {
            title += &format!(", ±{} ms jitter", p.jitter_ms);
        }
        if p.loss > 0.0 {
            title += &format!(", {} % loss", p.loss * 100.0);
        }
        report.print_table(&(title + ")"));
    }
    Ok(ExitCode::SUCCESS)
}

fn warmup(duration: Duration) -> Duration {
    WARMUP_MAX.min(duration / 3)
}

struct Path {
    tb: Testbed,
    snd: HostId,
    rcv: HostId,
    /// Minimum RTT of the idle path (ms).
    min_rtt_ms: f64,
}

/// The two hosts and the bottleneck toward `rcv` (with the jitter and loss of `spec`);
/// measures the idle path's minimum RTT.
fn path(spec: &PathArgs, buffer_ms: u64) -> Result<Path> {
    let mut tb = Testbed::new("transport")?;
    let half = spec.delay_ms / 2.0;
    let plain = LinkSpec { delay_ms: half, ..LinkSpec::default() };
    let snd = tb.add_host("snd", &plain, &plain)?;
    let toward_rcv = LinkSpec {
        jitter_ms: spec.jitter_ms,
        loss: spec.loss,
        ..LinkSpec::shaped(spec.rate_kbps, buffer_ms, half)
    };
    let rcv = tb.add_host("rcv", &plain, &toward_rcv)?;
    let to = tb.public_addr(rcv).to_string();
    let interval = format!("{:.3}", PROBE_INTERVAL.as_secs_f64());
    let out =
        tb.exec(snd, &["ping", "-D", "-n", "-c", &IDLE_PINGS.to_string(), "-i", &interval, "-W", "2", &to])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let min_rtt_ms = text.lines().filter_map(parse_ping_line).map(|r| r.rtt_ms).fold(f64::INFINITY, f64::min);
    if !min_rtt_ms.is_finite() {
        bail!("no ping reply from rcv on the idle path: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(Path { tb, snd, rcv, min_rtt_ms })
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The common fields of a scenario's rows.
fn meta(
    scenario: &str,
    flow: &str,
    spec: &PathArgs,
    buffer_ms: u64,
    duration: Duration,
) -> serde_json::Map<String, Value> {
    let v = json!({
        "scenario": scenario, "flow": flow, "rate_mbps": spec.rate_mbps(), "buffer_ms": buffer_ms,
        "one_way_delay_ms": spec.delay_ms, "jitter_ms": spec.jitter_ms, "loss": spec.loss,
        "duration_s": round(duration.as_secs_f64(), 1),
        "warmup_s": round(warmup(duration).as_secs_f64(), 1),
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Standing queue (ms above the idle minimum RTT) p50/p95 of the probe's replies
/// received in the Unix-time window `[from, to]`, and the sample count.
fn standing_queue(lines: &[(Instant, String)], min_rtt_ms: f64, from: f64, to: f64) -> (Value, usize) {
    let mut q: Vec<f64> = lines
        .iter()
        .filter_map(|(_, l)| parse_ping_line(l))
        .filter(|r| r.unix_s >= from && r.unix_s <= to)
        .map(|r| (r.rtt_ms - min_rtt_ms).max(0.0))
        .collect();
    q.sort_by(f64::total_cmp);
    let p = |x: f64| percentile(&q, x).map(|v| round(v, 1));
    (json!({"p50": p(50.0), "p95": p(95.0)}), q.len())
}

/// A counter of the bottleneck tbf (`tc -s qdisc`: "Sent N bytes", "dropped N").
fn bottleneck_counter(p: &Path, before: &str) -> Option<u64> {
    let out =
        p.tb.exec_in_router(&["tc", "-s", "qdisc", "show", "dev", &p.tb.router_interface(p.rcv)]).ok()?;
    tc_counter(&String::from_utf8_lossy(&out.stdout), before)
}

/// The number after the first `before` in `tc -s` output.
fn tc_counter(text: &str, before: &str) -> Option<u64> {
    let after = text.split(before).nth(1)?;
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Packets the bottleneck tbf dropped so far.
fn bottleneck_drops(p: &Path) -> Option<u64> {
    bottleneck_counter(p, "dropped ")
}

/// Utilisation: bytes the bottleneck sent (Ethernet frames, what tbf's rate counts) from
/// `start + warmup` to `start + duration`, over the rate. Sleeps until then; unlike
/// `goodput_utilisation` it counts headers, acks and retransmissions.
fn wire_utilisation(
    p: &Path,
    rate_kbps: u64,
    start: Instant,
    warmup: Duration,
    duration: Duration,
) -> Result<Option<f64>> {
    netns::sleep((start + warmup).saturating_duration_since(Instant::now()))?;
    let (t0, b0) = (Instant::now(), bottleneck_counter(p, "Sent "));
    netns::sleep((start + duration).saturating_duration_since(Instant::now()))?;
    let (t1, b1) = (Instant::now(), bottleneck_counter(p, "Sent "));
    Ok(match (b0, b1) {
        (Some(b0), Some(b1)) if t1 > t0 => {
            Some(b1.saturating_sub(b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / (rate_kbps as f64 * 1000.0))
        }
        _ => None,
    })
}

fn bottleneck(args: &TransportArgs, duration: Duration, report: &mut Report) -> Result<()> {
    let spec = &args.path;
    let buffer_ms = spec.buffer_ms(BOTTLENECK_BUFFER_MS);
    let mut p = path(spec, buffer_ms)?;
    let w = warmup(duration);
    for (i, &flow) in args.flows.iter().enumerate() {
        netns::sleep(DRAIN)?;
        let port = 4500 + i as u16;
        let drops_before = bottleneck_drops(&p);
        let to = p.tb.public_addr(p.rcv);
        let probe = flows::ping(&mut p.tb, p.snd, to, PROBE_INTERVAL, duration + SLACK)?;
        let mut row = meta("bottleneck", flow.name(), spec, buffer_ms, duration);
        let (start_unix, start, end, goodput, wire) = match flow {
            Flow::Rill => {
                let listener = flows::rill_listener(&mut p.tb, p.rcv, port, duration + SLACK * 2)?;
                netns::sleep(SETTLE)?;
                let (start_unix, start) = (unix_now(), Instant::now());
                let sender = flows::rill_sender(
                    &mut p.tb,
                    p.snd,
                    SocketAddr::new(to, port),
                    "background",
                    None,
                    duration,
                )?;
                let wire = wire_utilisation(&p, spec.rate_kbps, start, w, duration)?;
                let sent = probe::json_lines(&flows::wait(&mut p.tb, &sender, duration + SLACK)?);
                let end = Instant::now();
                let received = probe::json_lines(&flows::stop(&mut p.tb, &listener)?);
                let goodput = probe::rill_goodput_mbps(&received, start + w + Duration::from_secs(1), end);
                if let Some(s) = probe::rill_summary(&sent) {
                    row.insert("packets_lost".into(), s.get("packets_lost").cloned().unwrap_or(Value::Null));
                    row.insert("controller".into(), s.get("controller").cloned().unwrap_or(Value::Null));
                }
                (start_unix, start, end, goodput, wire)
            }
            Flow::Cubic | Flow::Bbr => {
                let server = flows::iperf3_server(&mut p.tb, p.rcv, port)?;
                netns::sleep(SETTLE)?;
                let (start_unix, start) = (unix_now(), Instant::now());
                let client = flows::iperf3_client(&mut p.tb, p.snd, to, port, flow.name(), duration)?;
                let wire = wire_utilisation(&p, spec.rate_kbps, start, w, duration)?;
                let sent = flows::wait(&mut p.tb, &client, duration + SLACK)?;
                let end = Instant::now();
                let received = flows::wait(&mut p.tb, &server, SLACK)?;
                let goodput = iperf3_goodput(&received, w)?;
                if let Some(r) = probe::parse_iperf3(&joined(&sent)) {
                    row.insert("retransmits".into(), json!(r.retransmits));
                }
                (start_unix, start, end, goodput, wire)
            }
        };
        let probe_lines = flows::stop(&mut p.tb, &probe)?;
        let until = start_unix + (end - start).as_secs_f64().min(duration.as_secs_f64());
        let (queue, samples) =
            standing_queue(&probe_lines, p.min_rtt_ms, start_unix + w.as_secs_f64(), until);
        let goodput = goodput.with_context(|| format!("{}: no goodput measured", flow.name()))?;
        row.insert("standing_queue_ms".into(), queue);
        row.insert("utilisation".into(), json!(wire.map(|u| round(u, 3))));
        row.insert("goodput_mbps".into(), json!(round(goodput, 2)));
        row.insert("goodput_utilisation".into(), json!(round(goodput / spec.rate_mbps(), 3)));
        row.insert("min_rtt_ms".into(), json!(round(p.min_rtt_ms, 2)));
        row.insert("probe_samples".into(), json!(samples));
        if let (Some(a), Some(b)) = (drops_before, bottleneck_drops(&p)) {
            row.insert("bottleneck_drops".into(), json!(b.saturating_sub(a)));
        }
        report.emit(Value::Object(row), args.json);
    }
    Ok(())
}

fn joined(lines: &[(Instant, String)]) -> String {
    lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
}

/// Receiver-side goodput of an iperf3 server's JSON, from the warm-up on.
fn iperf3_goodput(server_lines: &[(Instant, String)], warmup: Duration) -> Result<Option<f64>> {
    let r = probe::parse_iperf3(&joined(server_lines)).context("the iperf3 server printed no JSON")?;
    Ok(probe::iperf3_goodput_mbps(&r, warmup.as_secs_f64()))
}

fn summary_u64(lines: &[(Instant, Value)], key: &str) -> Option<u64> {
    probe::rill_summary(lines)?.get(key)?.as_u64()
}

fn sharing(args: &TransportArgs, duration: Duration, report: &mut Report) -> Result<()> {
    let spec = &args.path;
    let buffer_ms = spec.buffer_ms(SHARING_BUFFER_MS);
    let mut p = path(spec, buffer_ms)?;
    let w = warmup(duration);
    let to = p.tb.public_addr(p.rcv);
    let (stream_port, background_port, tcp_port) = (4600, 4601, 5202);
    let stream_rx = flows::rill_listener(&mut p.tb, p.rcv, stream_port, duration + SLACK * 2)?;
    let background_rx = flows::rill_listener(&mut p.tb, p.rcv, background_port, duration + SLACK * 2)?;
    let tcp_rx = flows::iperf3_server(&mut p.tb, p.rcv, tcp_port)?;
    let probe = flows::ping(&mut p.tb, p.snd, to, PROBE_INTERVAL, duration + SLACK)?;
    netns::sleep(SETTLE)?;
    let (start_unix, start) = (unix_now(), Instant::now());
    let stream_tx: Running = flows::rill_sender(
        &mut p.tb,
        p.snd,
        SocketAddr::new(to, stream_port),
        "stream",
        Some(STREAM_KBPS),
        duration,
    )?;
    let background_tx = flows::rill_sender(
        &mut p.tb,
        p.snd,
        SocketAddr::new(to, background_port),
        "background",
        None,
        duration,
    )?;
    let tcp_tx = flows::iperf3_client(&mut p.tb, p.snd, to, tcp_port, "cubic", duration)?;
    let stream_sent = probe::json_lines(&flows::wait(&mut p.tb, &stream_tx, duration + SLACK)?);
    let background_sent = probe::json_lines(&flows::wait(&mut p.tb, &background_tx, duration + SLACK)?);
    let _ = flows::wait(&mut p.tb, &tcp_tx, duration + SLACK)?;
    // The flows ran together for `duration` from `start`; the stream sender lingered one
    // deadline more for its last messages.
    let end = start + duration;
    let stream_rcvd = probe::json_lines(&flows::stop(&mut p.tb, &stream_rx)?);
    let background_rcvd = probe::json_lines(&flows::stop(&mut p.tb, &background_rx)?);
    let tcp_rcvd = flows::wait(&mut p.tb, &tcp_rx, SLACK)?;
    let probe_lines = flows::stop(&mut p.tb, &probe)?;
    let (queue, samples) = standing_queue(
        &probe_lines,
        p.min_rtt_ms,
        start_unix + w.as_secs_f64(),
        start_unix + duration.as_secs_f64(),
    );
    let window_from = start + w + Duration::from_secs(1);
    let share = |g: Option<f64>| g.map(|g| round(g / spec.rate_mbps(), 3));

    let offered = summary_u64(&stream_sent, "messages_offered");
    let on_time = summary_u64(&stream_rcvd, "on_time");
    let stream_on_time = match (on_time, offered) {
        (Some(ok), Some(n)) if n > 0 => Some(round(ok as f64 / n as f64, 4)),
        _ => None,
    };
    let stream_goodput = probe::rill_goodput_mbps(&stream_rcvd, window_from, end);
    let mut row = meta("sharing", "rill-stream", spec, buffer_ms, duration);
    row.insert("stream_on_time".into(), json!(stream_on_time));
    row.insert("messages_offered".into(), json!(offered));
    row.insert("messages_on_time".into(), json!(on_time));
    row.insert("messages_abandoned".into(), json!(summary_u64(&stream_sent, "messages_abandoned")));
    row.insert("offered_mbps".into(), json!(STREAM_KBPS as f64 / 1000.0));
    row.insert("goodput_mbps".into(), json!(stream_goodput.map(|g| round(g, 2))));
    row.insert("standing_queue_ms".into(), queue);
    row.insert("probe_samples".into(), json!(samples));
    report.emit(Value::Object(row), args.json);

    let background = probe::rill_goodput_mbps(&background_rcvd, window_from, end);
    let mut row = meta("sharing", "rill-background", spec, buffer_ms, duration);
    row.insert("background_share".into(), json!(share(background)));
    row.insert("goodput_mbps".into(), json!(background.map(|g| round(g, 2))));
    row.insert("packets_lost".into(), json!(summary_u64(&background_sent, "packets_lost")));
    report.emit(Value::Object(row), args.json);

    let tcp = iperf3_goodput(&tcp_rcvd, w)?;
    let mut row = meta("sharing", "cubic", spec, buffer_ms, duration);
    row.insert("competitor_share".into(), json!(share(tcp)));
    row.insert("goodput_mbps".into(), json!(tcp.map(|g| round(g, 2))));
    report.emit(Value::Object(row), args.json);
    if stream_on_time.is_none() || background.is_none() || tcp.is_none() {
        bail!("sharing: a flow reported no figures (stream {stream_on_time:?}, background {background:?}, tcp {tcp:?})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_flags_out_of_range_are_refused_with_the_flag_named() {
        let ok =
            PathArgs { rate_kbps: RATE_KBPS, buffer_ms: None, delay_ms: 20.0, jitter_ms: 0.0, loss: 0.0 };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.buffer_ms(SHARING_BUFFER_MS), 250);
        assert_eq!(PathArgs { buffer_ms: Some(40), ..ok.clone() }.buffer_ms(SHARING_BUFFER_MS), 40);
        let bad = [
            (PathArgs { rate_kbps: 0, ..ok.clone() }, "--rate-kbps"),
            (PathArgs { buffer_ms: Some(0), ..ok.clone() }, "--buffer-ms"),
            (PathArgs { delay_ms: -1.0, ..ok.clone() }, "--delay-ms"),
            (PathArgs { delay_ms: f64::NAN, ..ok.clone() }, "--delay-ms"),
            (PathArgs { jitter_ms: 5000.0, ..ok.clone() }, "--jitter-ms"),
            (PathArgs { loss: 0.9, ..ok.clone() }, "--loss"),
            (PathArgs { loss: f64::NAN, ..ok.clone() }, "--loss"),
        ];
        for (args, flag) in bad {
            let e = args.validate().expect_err(flag).to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn standing_queue_uses_the_window_and_the_idle_minimum() {
        let t = Instant::now();
        let lines: Vec<(Instant, String)> =
            [(99.0, 90.0), (100.5, 41.0), (101.0, 60.0), (102.0, 140.0), (103.5, 500.0)]
                .iter()
                .map(|(s, rtt)| {
                    (t, format!("[{s}] 64 bytes from 10.64.1.2: icmp_seq=1 ttl=62 time={rtt} ms"))
                })
                .collect();
        let (q, n) = standing_queue(&lines, 40.0, 100.0, 103.0);
        assert_eq!(n, 3);
        assert_eq!(q, json!({"p50": 20.0, "p95": 100.0}));
    }

    #[test]
    fn reads_tc_counters() {
        let text = "qdisc tbf 8001: root refcnt 2 rate 20Mbit burst 4542b lat 1.0s \n \
                    Sent 37520918 bytes 24790 pkt (dropped 57, overlimits 30915 requeues 0) \n";
        assert_eq!(tc_counter(text, "Sent "), Some(37_520_918));
        assert_eq!(tc_counter(text, "dropped "), Some(57));
        assert_eq!(tc_counter(text, "nothing "), None);
    }

    #[test]
    fn warmup_is_capped_and_scales_down_for_short_runs() {
        assert_eq!(warmup(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(warmup(Duration::from_secs(3)), Duration::from_secs(1));
    }
}
