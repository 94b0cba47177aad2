//! Reading what the measuring programs print: `ping -D`, `iperf3 --json`, and the JSON
//! lines of `rill bench transport --listen/--connect`. Pure parsers (unit-tested) plus a
//! collector that timestamps a child's output lines as they arrive.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Lines kept per collector: a second-by-second report over a day is 86,400 lines;
/// `ping -i 0.02` for 10 minutes is 30,000.
const MAX_LINES: usize = 1_000_000;

/// A child's output lines with their arrival times, read on a thread.
#[derive(Debug)]
pub struct Lines {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<AtomicBool>,
}

impl Lines {
    pub fn start<R: Read + Send + 'static>(reader: R) -> Lines {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (l, d) = (lines.clone(), done.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let Ok(mut v) = l.lock() else { break };
                if v.len() < MAX_LINES {
                    v.push((Instant::now(), line));
                }
            }
            d.store(true, Ordering::SeqCst);
        });
        Lines { lines, done }
    }

    /// The lines so far, after waiting up to `timeout` for the end of the output (the
    /// child exited and the pipe closed).
    pub fn finish(&self, timeout: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + timeout;
        while !self.done.load(Ordering::SeqCst) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.snapshot()
    }

    pub fn snapshot(&self) -> Vec<(Instant, String)> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// One reply of `ping -D`: receive time (Unix seconds) and round-trip time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingReply {
    pub unix_s: f64,
    pub rtt_ms: f64,
}

/// Parse `[1700000000.123456] 64 bytes from 10.64.1.2: icmp_seq=1 ttl=62 time=40.3 ms`.
pub fn parse_ping_line(line: &str) -> Option<PingReply> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once(']')?;
    let unix_s = stamp.trim().parse().ok()?;
    let time = rest.split_whitespace().find_map(|w| w.strip_prefix("time="))?;
    let rtt_ms = time.parse().ok()?;
    Some(PingReply { unix_s, rtt_ms })
}

/// Sent/received counts from ping's summary: `10 packets transmitted, 9 received, ...`.
pub fn parse_ping_summary(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(',');
    let sent = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let received = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some((sent, received))
}

/// What the measured side of iperf3 reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Iperf3 {
    /// Per interval: start and end (seconds since the test started) and bytes.
    pub intervals: Vec<(f64, f64, u64)>,
    /// Totals from the `end` section (TCP): bytes the client sent and the server received.
    pub sent_bytes: Option<u64>,
    pub received_bytes: Option<u64>,
    /// Retransmitted segments (sender side only).
    pub retransmits: Option<u64>,
}

/// Parse the JSON iperf3 prints with `--json` (client or server side).
pub fn parse_iperf3(text: &str) -> Option<Iperf3> {
    let v: Value = serde_json::from_str(text).ok()?;
    let intervals = v
        .get("intervals")?
        .as_array()?
        .iter()
        .filter_map(|i| {
            let s = i.get("sum")?;
            Some((s.get("start")?.as_f64()?, s.get("end")?.as_f64()?, s.get("bytes")?.as_u64()?))
        })
        .collect();
    let end = v.get("end");
    let field = |section: &str, key: &str| end?.get(section)?.get(key)?.as_u64();
    Some(Iperf3 {
        intervals,
        sent_bytes: field("sum_sent", "bytes"),
        received_bytes: field("sum_received", "bytes"),
        retransmits: field("sum_sent", "retransmits"),
    })
}

/// Goodput in Mbit/s over the intervals that start at or after `from_s`.
pub fn iperf3_goodput_mbps(r: &Iperf3, from_s: f64) -> Option<f64> {
    let (bytes, secs) = r
        .intervals
        .iter()
        .filter(|(start, _, _)| *start + 1e-6 >= from_s)
        .fold((0u64, 0.0f64), |(b, s), (start, end, bytes)| (b + bytes, s + (end - start)));
    (secs > 0.0).then(|| bytes as f64 * 8.0 / secs / 1e6)
}

/// The JSON objects among a rill bench process's output lines (other lines skipped).
pub fn json_lines(lines: &[(Instant, String)]) -> Vec<(Instant, Value)> {
    lines
        .iter()
        .filter_map(|(t, l)| serde_json::from_str::<Value>(l).ok().filter(Value::is_object).map(|v| (*t, v)))
        .collect()
}

/// The `"summary": true` object of a rill bench process.
pub fn rill_summary(lines: &[(Instant, Value)]) -> Option<&Value> {
    lines.iter().map(|(_, v)| v).find(|v| v.get("summary").and_then(Value::as_bool) == Some(true))
}

/// Mean of the per-second `goodput_mbps` lines of a `--listen` process that arrived in
/// `[from, to]` (each covers the second before it).
pub fn rill_goodput_mbps(lines: &[(Instant, Value)], from: Instant, to: Instant) -> Option<f64> {
    let v: Vec<f64> = lines
        .iter()
        .filter(|(t, v)| *t >= from && *t <= to && v.get("summary").is_none())
        .filter_map(|(_, v)| v.get("goodput_mbps")?.as_f64())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_replies_and_summary() {
        let l = "[1700000000.123456] 64 bytes from 10.64.1.2: icmp_seq=1 ttl=62 time=40.3 ms";
        assert_eq!(parse_ping_line(l), Some(PingReply { unix_s: 1_700_000_000.123456, rtt_ms: 40.3 }));
        assert_eq!(
            parse_ping_line("[1700000000.1] From 10.64.0.1 icmp_seq=3 Destination Host Unreachable"),
            None
        );
        assert_eq!(parse_ping_line("PING 10.64.1.2 (10.64.1.2) 56(84) bytes of data."), None);
        let s = "--- 10.64.1.2 ping statistics ---\n10 packets transmitted, 9 received, 10% packet loss, time 459ms\n";
        assert_eq!(parse_ping_summary(s), Some((10, 9)));
        let s = "5 packets transmitted, 5 received, +1 duplicates, 0% packet loss, time 4005ms";
        assert_eq!(parse_ping_summary(s), Some((5, 5)));
    }

    #[test]
    fn parses_iperf3_json() {
        let text = r#"{"start":{},"intervals":[
            {"streams":[],"sum":{"start":0,"end":1.0,"seconds":1.0,"bytes":1000000,"bits_per_second":8e6}},
            {"streams":[],"sum":{"start":1.0,"end":2.0,"seconds":1.0,"bytes":2500000,"bits_per_second":2e7}},
            {"streams":[],"sum":{"start":2.0,"end":3.0,"seconds":1.0,"bytes":2500000,"bits_per_second":2e7}}],
            "end":{"sum_sent":{"bytes":6000000,"retransmits":12},"sum_received":{"bytes":6000000}}}"#;
        let r = parse_iperf3(text).unwrap();
        assert_eq!(r.intervals.len(), 3);
        assert_eq!(r.sent_bytes, Some(6_000_000));
        assert_eq!(r.received_bytes, Some(6_000_000));
        assert_eq!(r.retransmits, Some(12));
        assert_eq!(iperf3_goodput_mbps(&r, 1.0), Some(20.0));
        assert_eq!(iperf3_goodput_mbps(&r, 5.0), None);
        assert_eq!(parse_iperf3("iperf3: error - unable to connect"), None);
    }

    #[test]
    fn rill_lines_goodput_and_summary() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lines = vec![
            (at(1), "rill bench: listening".to_string()),
            (at(1), r#"{"scenario":"remote","goodput_mbps":5.0}"#.to_string()),
            (at(2), r#"{"scenario":"remote","goodput_mbps":18.0}"#.to_string()),
            (at(3), r#"{"scenario":"remote","goodput_mbps":20.0}"#.to_string()),
            (at(4), r#"{"scenario":"remote","summary":true,"goodput_mbps":14.0,"messages":7}"#.to_string()),
        ];
        let v = json_lines(&lines);
        assert_eq!(v.len(), 4);
        assert_eq!(rill_goodput_mbps(&v, at(2), at(4)), Some(19.0));
        assert_eq!(rill_summary(&v).and_then(|s| s.get("messages")).and_then(Value::as_u64), Some(7));
    }
}
