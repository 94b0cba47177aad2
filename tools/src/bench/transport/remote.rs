//! Remote mode, like iperf3: `--listen ADDR` on one host, `--connect ADDR` on the other.
//! Both print a line per second (goodput, RTT, the controller's queueing-delay estimate)
//! and a summary; with `--json`, JSON lines with `scenario` = "remote".
//!
//! Each message starts with a header of two little-endian u64: its sequence number and
//! its deadline in CLOCK_MONOTONIC nanoseconds (0: none). CLOCK_MONOTONIC is one clock
//! for all network namespaces of a machine, so a listener on the same machine (e.g. in
//! `rill testbed`) counts how many messages arrived complete by their deadline
//! (`deadline_messages`, `on_time`). The stream class sends with a 1 s deadline and, after
//! `--duration`, keeps the session up one more deadline so that every offered message is
//! either delivered or abandoned; `messages_offered` counts them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::json;

use rill_transport::driver::{SocketOptions, UdpDriver};
use rill_transport::{Class, Endpoint, EndpointConfig, Event, SendOptions};

use super::super::{ClassArg, TransportArgs};
use crate::table::{round, Report};

const MESSAGE_SIZE: usize = 16 * 1024;
const KEEP_QUEUED: usize = 2 << 20;
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The stream class's message deadline (the transport issue: 1 s).
const STREAM_DEADLINE: Duration = Duration::from_secs(1);
const HEADER: usize = 16;

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, as a number another
/// process on this machine can compare.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A message: the header (sequence number, deadline or 0) and filler.
fn message(seq: u64, deadline_ns: u64) -> Bytes {
    let mut m = vec![0xa5; MESSAGE_SIZE];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m[8..HEADER].copy_from_slice(&deadline_ns.to_le_bytes());
    Bytes::from(m)
}

/// The deadline in a message's header (0: none or no header).
fn deadline_of(data: &[u8]) -> u64 {
    data.get(8..HEADER).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn listen(addr: SocketAddr, args: &TransportArgs) -> Result<()> {
    let json = args.json;
    let limit = args.duration.map(Duration::from_secs_f64);
    runtime()?.block_on(async move {
        let mut driver = UdpDriver::bind(addr, &SocketOptions::default()).with_context(|| format!("binding {addr}"))?;
        let node_key = crate::node_key::load_or_create(args.node_key.as_deref())?;
        eprintln!("rill bench: listening on {} (connect with --peer {})", driver.local_addr()?, node_key.id());
        let config = EndpointConfig { node_key: Some(node_key), ..EndpointConfig::default() };
        let mut ep = Endpoint::new(config, Instant::now(), rand_seed());
        let start = Instant::now();
        let mut next_report = start + REPORT_EVERY;
        let (mut interval_bytes, mut total_bytes, mut messages) = (0u64, 0u64, 0u64);
        let (mut deadline_messages, mut on_time) = (0u64, 0u64);
        let mut report = Report::default();
        // One future for the whole run: a SIGINT between two polls is not lost.
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let deadline = tokio::time::sleep_until(next_report.into());
            tokio::select! {
                r = driver.step(&mut ep, deadline) => { r?; }
                _ = &mut ctrl_c => break,
            }
            while let Some(e) = ep.poll_event() {
                match e {
                    Event::Accepted { session, remote } => match ep.peer_node(session) {
                        Some(peer) => eprintln!("rill bench: session from {remote}, node {peer}"),
                        None => eprintln!("rill bench: session from {remote}"),
                    },
                    Event::Message { data, .. } => {
                        let deadline_ns = deadline_of(&data);
                        if deadline_ns != 0 {
                            deadline_messages += 1;
                            on_time += u64::from(monotonic_ns() <= deadline_ns);
                        }
                        interval_bytes += data.len() as u64;
                        total_bytes += data.len() as u64;
                        messages += 1;
                    }
                    Event::Closed { reason, .. } => eprintln!("rill bench: session closed ({reason:?})"),
                    _ => {}
                }
            }
            let now = Instant::now();
            if now >= next_report {
                let row = json!({
                    "scenario": "remote", "side": "listen", "t_s": round((now - start).as_secs_f64(), 1),
                    "goodput_mbps": round(interval_bytes as f64 * 8.0 / REPORT_EVERY.as_secs_f64() / 1e6, 2),
                    "messages": messages,
                });
                line(&row, json);
                interval_bytes = 0;
                next_report += REPORT_EVERY;
            }
            if limit.is_some_and(|l| now - start >= l) {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        report.emit(json!({"scenario": "remote", "side": "listen", "summary": true,
            "goodput_mbps": round(total_bytes as f64 * 8.0 / secs / 1e6, 2), "messages": messages, "bytes": total_bytes,
            "deadline_messages": deadline_messages, "on_time": on_time, "duration_s": round(secs, 1)}), json);
        if !json {
            report.print_table("remote (listen): summary");
        }
        anyhow::Ok(())
    })
}

pub fn connect(addr: SocketAddr, args: &TransportArgs) -> Result<()> {
    let json = args.json;
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(10.0).clamp(0.5, 86_400.0));
    let class = match args.class {
        ClassArg::Stream => Class::Stream,
        ClassArg::Background => Class::Background,
    };
    let rate_bps = args.rate.map(|kbps| kbps * 1000);
    runtime()?.block_on(async move {
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
        let mut driver = UdpDriver::bind(bind, &SocketOptions::default())?;
        let node_key = match args.node_key.as_deref() {
            Some(path) => Some(crate::node_key::load_or_create(Some(path))?),
            None => None,
        };
        let config = EndpointConfig { node_key, ..EndpointConfig::default() };
        let mut ep = Endpoint::new(config, Instant::now(), rand_seed());
        let session = match args.peer {
            Some(peer) => ep.connect_to(Instant::now(), addr, peer)?,
            None => ep.connect(Instant::now(), addr)?,
        };
        let mut connected_at: Option<Instant> = None;
        let (mut offered, mut messages_offered) = (0u64, 0u64);
        // Messages acknowledged when --duration ended (goodput is over --duration only).
        let mut acked_at_end: Option<u64> = None;
        let linger = if class == Class::Stream { STREAM_DEADLINE } else { Duration::ZERO };
        let mut next_report = Instant::now() + REPORT_EVERY;
        let mut last_acked = 0u64;
        let handshake_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            if let Some(t0) = connected_at {
                if now >= t0 + duration && acked_at_end.is_none() {
                    acked_at_end = Some(ep.session_stats(session).map_or(0, |st| st.messages_acked));
                }
                if now >= t0 + duration + linger {
                    break;
                }
                // Offer data at --rate (whole messages), or keep the queue full.
                let allowed = rate_bps.map_or(u64::MAX, |r| ((now - t0).as_secs_f64() * r as f64 / 8.0) as u64);
                while acked_at_end.is_none() && offered < allowed && ep.queued_bytes(session, class) < KEEP_QUEUED {
                    let deadline = (class == Class::Stream).then(|| now + STREAM_DEADLINE);
                    let deadline_ns = deadline.map_or(0, |_| monotonic_ns() + STREAM_DEADLINE.as_nanos() as u64);
                    let m = message(messages_offered, deadline_ns);
                    if ep.send(now, session, m, SendOptions { class, deadline }).is_err() {
                        break;
                    }
                    offered += MESSAGE_SIZE as u64;
                    messages_offered += 1;
                }
            } else if now > handshake_deadline {
                anyhow::bail!("no answer from {addr} within 10 s (is `rill bench transport --listen` running there?)");
            }
            let wake = tokio::time::sleep_until(next_report.min(now + Duration::from_millis(5)).into());
            driver.step(&mut ep, wake).await?;
            while let Some(e) = ep.poll_event() {
                match e {
                    Event::Connected { session, .. } => {
                        connected_at = Some(Instant::now());
                        if let Some(peer) = ep.peer_node(session) {
                            eprintln!("rill bench: connected to node {peer}");
                        }
                    }
                    Event::Closed { reason, .. } => anyhow::bail!("session closed: {reason:?}"),
                    _ => {}
                }
            }
            if Instant::now() >= next_report {
                if let (Some(t0), Some(st)) = (connected_at, ep.session_stats(session)) {
                    let acked = st.messages_acked * MESSAGE_SIZE as u64;
                    line(
                        &json!({
                            "scenario": "remote", "side": "connect", "class": class.name(), "controller": st.controller,
                            "t_s": round((Instant::now() - t0).as_secs_f64(), 1),
                            "goodput_mbps": round((acked - last_acked) as f64 * 8.0 / REPORT_EVERY.as_secs_f64() / 1e6, 2),
                            "rtt_ms": round(st.smoothed_rtt.as_secs_f64() * 1e3, 2),
                            "queueing_delay_estimate_ms": st.queueing_delay_estimate.map(|d| round(d.as_secs_f64() * 1e3, 2)),
                            "cwnd_bytes": st.congestion_window,
                            "packets_lost": st.packets_lost,
                        }),
                        json,
                    );
                    last_acked = acked;
                }
                next_report += REPORT_EVERY;
            }
        }
        let st = ep.session_stats(session).context("session vanished")?;
        ep.close(Instant::now(), session);
        let _ = tokio::time::timeout(Duration::from_secs(2), driver.step(&mut ep, tokio::time::sleep(Duration::from_millis(200)))).await;
        let mut report = Report::default();
        report.emit(
            json!({
                "scenario": "remote", "side": "connect", "summary": true, "class": class.name(), "controller": st.controller,
                "goodput_mbps": round(acked_at_end.unwrap_or(st.messages_acked) as f64 * MESSAGE_SIZE as f64 * 8.0 / duration.as_secs_f64() / 1e6, 2),
                "rtt_ms": round(st.smoothed_rtt.as_secs_f64() * 1e3, 2),
                "min_rtt_ms": round(st.min_rtt.as_secs_f64() * 1e3, 2),
                "packets": st.packets_sent, "packets_lost": st.packets_lost,
                "messages_abandoned": st.messages_abandoned_sent,
                "messages_offered": messages_offered, "messages_acked": st.messages_acked,
            }),
            json,
        );
        if !json {
            report.print_table("remote (connect): summary");
        }
        anyhow::Ok(())
    })
}

fn line(row: &serde_json::Value, json: bool) {
    if json {
        println!("{row}");
    } else if let Some(m) = row.as_object() {
        let parts: Vec<String> = m
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "scenario" | "side"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("{}", parts.join("  "));
    }
}

/// Session ids must differ between runs; the seed only needs to be unpredictable enough
/// not to collide with an earlier run's stale packets.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ std::process::id() as u64
}
