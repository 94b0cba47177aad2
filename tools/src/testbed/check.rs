//! `rill testbed check`: the short CI run. It asserts only what cannot flake: the
//! topology came up, traffic flowed both ways (ping, TCP, a rill session, through a NAT
//! too), the forwarder never delivered a packet before its configured delay, bytes out
//! matched bytes in, and afterwards no namespace or process of the run is left.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use super::flows;
use super::netns::{self, LinkSpec, Testbed};
use super::probe::{self, parse_ping_line, parse_ping_summary};
use super::tools;
use crate::table::{round, Report};

/// One-way delays of the check topology (ms): a, b and the NATed host n.
const DELAY_A_MS: f64 = 5.0;
const DELAY_B_MS: f64 = 10.0;
const DELAY_N_MS: f64 = 3.0;
/// b's download bottleneck (kbit/s, ms of buffer).
const RATE_B_KBPS: u64 = 20_000;
const BUFFER_B_MS: u64 = 100;
const PINGS: u32 = 10;
const RILL_PORT: u16 = 4500;
const IPERF_PORT: u16 = 5201;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds of rill and TCP traffic.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Fail on purpose once the topology is up (tests that a failed run cleans up).
    #[arg(long, hide = true)]
    pub fail_after_setup: bool,
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    netns::require_root()?;
    if !(0.5..=60.0).contains(&args.duration) {
        bail!("--duration must be within 0.5..=60 seconds");
    }
    tools::ensure(&[tools::IP, tools::TC, tools::ETHTOOL, tools::PING, tools::NFT, tools::IPERF3])?;
    let mut report = Report::default();
    let (prefix, pids, result) = {
        let mut tb = Testbed::new("check")?;
        let result = exercise(&mut tb, args, &mut report);
        let prefix = tb.prefix().to_string();
        let pids: Vec<u32> = tb.children_pids();
        (prefix, pids, result)
        // tb dropped here: everything it made is removed.
    };
    let left = netns::leftovers(&prefix, &pids);
    report.emit(
        json!({"scenario": "check", "step": "teardown", "ok": left.is_empty(), "left": left.join(", ")}),
        args.json,
    );
    if !args.json {
        report.print_table("rill testbed check");
    }
    result?;
    if !left.is_empty() {
        bail!("left behind after the run: {}", left.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn exercise(tb: &mut Testbed, args: &CheckArgs, report: &mut Report) -> Result<()> {
    let json = args.json;
    let ideal = LinkSpec::default();
    let a_link = LinkSpec { delay_ms: DELAY_A_MS, ..ideal };
    let b_up = LinkSpec { delay_ms: DELAY_B_MS, ..ideal };
    let b_down = LinkSpec::shaped(RATE_B_KBPS, BUFFER_B_MS, DELAY_B_MS);
    let n_link = LinkSpec { delay_ms: DELAY_N_MS, ..ideal };
    let a = tb.add_host("a", &a_link, &a_link)?;
    let b = tb.add_host("b", &b_up, &b_down)?;
    let n = tb.add_host_behind_nat("n", &n_link, &n_link)?;
    report.emit(
        json!({"scenario": "check", "step": "topology", "ok": true, "hosts": 3, "namespaces": tb.prefix()}),
        json,
    );
    if args.fail_after_setup {
        bail!("failing on purpose after setup (--fail-after-setup)");
    }

    // Ping both ways and through the NAT; RTT can never be below the configured delays.
    for (from, to, floor_ms, what) in [
        (a, tb.public_addr(b), 2.0 * (DELAY_A_MS + DELAY_B_MS), "ping a->b"),
        (b, tb.public_addr(a), 2.0 * (DELAY_A_MS + DELAY_B_MS), "ping b->a"),
        (n, tb.public_addr(a), 2.0 * (DELAY_N_MS + DELAY_A_MS), "ping n(nat)->a"),
    ] {
        let out = tb.exec(
            from,
            &["ping", "-D", "-n", "-c", &PINGS.to_string(), "-i", "0.05", "-W", "2", &to.to_string()],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (sent, received) = parse_ping_summary(&text).with_context(|| format!("{what}: no summary"))?;
        let rtts: Vec<f64> = text.lines().filter_map(parse_ping_line).map(|r| r.rtt_ms).collect();
        let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        let ok = received > 0 && min >= floor_ms - 0.5;
        report.emit(
            json!({"scenario": "check", "step": what, "ok": ok, "sent": sent, "received": received,
                "min_rtt_ms": round(min, 2), "configured_rtt_ms": floor_ms}),
            json,
        );
        if !ok {
            bail!("{what}: {received}/{sent} replies, min RTT {min:.2} ms (configured {floor_ms} ms)");
        }
    }

    // A rill session from behind the NAT to b, through b's bottleneck.
    let duration = Duration::from_secs_f64(args.duration);
    let listener = flows::rill_listener(tb, b, RILL_PORT, duration + Duration::from_secs(30))?;
    netns::sleep(Duration::from_millis(300))?;
    let to = SocketAddr::new(tb.public_addr(b), RILL_PORT);
    let sender = flows::rill_sender(tb, n, to, "background", None, duration)?;
    let sent = probe::json_lines(&flows::wait(tb, &sender, duration + Duration::from_secs(20))?);
    let received = probe::json_lines(&flows::stop(tb, &listener)?);
    let acked = probe::rill_summary(&sent).and_then(|s| s.get("messages_acked")).and_then(Value::as_u64);
    let got = probe::rill_summary(&received).and_then(|s| s.get("messages")).and_then(Value::as_u64);
    // Every message the sender saw acknowledged was delivered to the listener.
    let ok = matches!((acked, got), (Some(a), Some(g)) if a > 0 && g >= a);
    report.emit(
        json!({"scenario": "check", "step": "rill n(nat)->b", "ok": ok, "messages_acked": acked, "messages_received": got}),
        json,
    );
    if !ok {
        bail!(
            "rill session: sender acked {acked:?} messages, listener got {got:?}: {}",
            listener.stderr_tail()
        );
    }

    // Kernel TCP a -> b through the tbf. iperf3's server stops counting at the end of the
    // test while the last window is still in flight, so received ≤ sent, not equal.
    let server = flows::iperf3_server(tb, b, IPERF_PORT)?;
    netns::sleep(Duration::from_millis(300))?;
    let client = flows::iperf3_client(tb, a, tb.public_addr(b), IPERF_PORT, "cubic", duration)?;
    let out = flows::wait(tb, &client, duration + Duration::from_secs(20))?;
    flows::stop(tb, &server)?;
    let text: Vec<&str> = out.iter().map(|(_, l)| l.as_str()).collect();
    let r = probe::parse_iperf3(&text.join("\n")).context("iperf3 printed no JSON")?;
    let ok = matches!((r.sent_bytes, r.received_bytes), (Some(s), Some(g)) if g > 0 && g <= s);
    let goodput = r.received_bytes.map(|b| round(b as f64 * 8.0 / duration.as_secs_f64() / 1e6, 2));
    report.emit(
        json!({"scenario": "check", "step": "tcp a->b", "ok": ok, "sent_bytes": r.sent_bytes,
            "received_bytes": r.received_bytes, "goodput_mbps": goodput, "bottleneck_mbps": RATE_B_KBPS as f64 / 1000.0}),
        json,
    );
    if !ok {
        bail!("iperf3: sent {:?} bytes, received {:?}", r.sent_bytes, r.received_bytes);
    }
    Ok(())
}
