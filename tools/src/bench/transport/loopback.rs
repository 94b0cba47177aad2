//! `--scenario loopback`: one bulk session over real UDP on 127.0.0.1, through the tokio
//! driver.
//!
//! Sessions are encrypted (as all rill sessions are); each row also carries `aead_mbps`, the
//! raw ChaCha20-Poly1305 throughput of one core on the bytes of one packet, measured in the
//! same run, and `vs_aead`, the session's goodput over it.
//!
//! Sender and receiver each run on a thread of their own (one runtime each, as rill runs
//! a node), and each row reports both threads' CPU time and the goodput each side could
//! carry with a core to itself (`sender_bound_mbps`, `receiver_bound_mbps`: bytes
//! delivered over that thread's CPU seconds); `bound_vs_aead` is the slower side's bound
//! over `aead_cpu_mbps` (the AEAD figure per CPU second of its thread, so that preemption
//! on a shared machine cancels out): the ceiling of `vs_aead` with a core per side.
//!
//! `ceiling_vs_aead` bounds `vs_aead` by what lies under the transport: the same run
//! measures the default socket path alone (sendmmsg+GSO into recvmmsg+GRO, full-size
//! datagrams, no endpoint) and reports `seal_ns` (one packet's seal) and `socket_send_ns`
//! (the sender's kernel cost per datagram); a sender doing nothing but those two reaches
//! at most `seal_ns / (seal_ns + socket_send_ns)` of `aead_mbps`.
//!
//! The same session runs once per socket I/O path the driver knows, in one run, so the
//! rows compare like with like on a shared machine: `gso+gro` (the default), `gso`
//! (no receive coalescing), `mmsg` (sendmmsg/recvmmsg only) and `plain` (one datagram per
//! system call). The first row is the default and the figure the issue asks for.
//!
//! `--scenario batch-io`: the driver's batch layer alone, no endpoint
//! (`rill_transport::driver::bench_batch_io`), one row per send/receive path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::Notify;

use rill_transport::crypto::aead::{seal_throughput_mbps, TAG_LEN};
use rill_transport::driver::{process_cpu_time as process_cpu, thread_cpu_time, SocketOptions, UdpDriver};
use rill_transport::wire::HEADER_LEN;
use rill_transport::DEFAULT_MAX_DATAGRAM_SIZE;
use rill_transport::{Class, Endpoint, EndpointConfig, Event, SendOptions};

use super::super::TransportArgs;
use crate::table::{round, Report};

const MESSAGE_SIZE: usize = 64 * 1024;
/// Keep this much queued so the sender is never application-limited.
const KEEP_QUEUED: usize = 4 << 20;

/// The socket I/O paths compared, default first.
const IO_PATHS: [(&str, SocketOptions); 4] = [
    (
        "gso+gro",
        SocketOptions {
            send_buffer_bytes: 4 << 20,
            recv_buffer_bytes: 4 << 20,
            gso: true,
            gro: true,
            batch: true,
        },
    ),
    (
        "gso",
        SocketOptions {
            send_buffer_bytes: 4 << 20,
            recv_buffer_bytes: 4 << 20,
            gso: true,
            gro: false,
            batch: true,
        },
    ),
    (
        "mmsg",
        SocketOptions {
            send_buffer_bytes: 4 << 20,
            recv_buffer_bytes: 4 << 20,
            gso: false,
            gro: false,
            batch: true,
        },
    ),
    (
        "plain",
        SocketOptions {
            send_buffer_bytes: 4 << 20,
            recv_buffer_bytes: 4 << 20,
            gso: false,
            gro: false,
            batch: false,
        },
    ),
];

pub fn run(args: &TransportArgs) -> Result<()> {
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(3.0).clamp(0.2, 600.0));
    // The sender runs on this thread's runtime, the receiver on a thread of its own: one
    // thread per endpoint, as rill runs its nodes, so each side's thread CPU is its cost.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut report = Report::default();
    let mut baseline = None;
    // The raw AEAD on one core, on the bytes one full packet encrypts (frames after the
    // header), measured in this same run: the ceiling an encrypted session works under.
    let sealed = DEFAULT_MAX_DATAGRAM_SIZE - HEADER_LEN - TAG_LEN;
    let (wall0, cpu0) = (Instant::now(), thread_cpu_time());
    let aead_mbps = seal_throughput_mbps(sealed, Duration::from_secs_f64(duration.as_secs_f64().min(1.0)));
    // The same figure per CPU second of this thread (a shared machine preempts it): what
    // the per-side bounds below, also per CPU second, are compared with.
    let aead_cpu_mbps =
        aead_mbps * wall0.elapsed().as_secs_f64() / (thread_cpu_time() - cpu0).as_secs_f64().max(1e-6);
    // The default socket path alone on full-size datagrams (no endpoint, no crypto): the
    // sender's kernel cost per datagram, which no transport can avoid.
    let socket = rill_transport::driver::bench_default_path(
        DEFAULT_MAX_DATAGRAM_SIZE,
        (duration.as_secs_f64().min(1.0) * SOCKET_FLOOR_DATAGRAMS_PER_S) as u64,
    )
    .context("socket floor on 127.0.0.1")?;
    let ceiling = SenderCeiling::new(sealed, aead_cpu_mbps, socket.sender_cpu_ns_per_datagram);
    for (name, opts) in &IO_PATHS {
        let mut row = rt.block_on(measure(duration, name, opts))?;
        let goodput = row["goodput_mbps"].as_f64().unwrap_or(0.0);
        // Ratios to figures measured in this same run (the machine is shared).
        let base = *baseline.get_or_insert(goodput);
        row["vs_default"] = json!(round(if base > 0.0 { goodput / base } else { 0.0 }, 2));
        row["aead_mbps"] = json!(round(aead_mbps, 0));
        row["vs_aead"] = json!(round(if aead_mbps > 0.0 { goodput / aead_mbps } else { 0.0 }, 2));
        // The most this session could reach here if each side had a core to itself: the
        // slower side's bound. Below 0.7 × the AEAD, no scheduling reaches the target.
        let bound = row["sender_bound_mbps"]
            .as_f64()
            .unwrap_or(0.0)
            .min(row["receiver_bound_mbps"].as_f64().unwrap_or(0.0));
        row["aead_cpu_mbps"] = json!(round(aead_cpu_mbps, 0));
        row["bound_vs_aead"] = json!(round(if aead_cpu_mbps > 0.0 { bound / aead_cpu_mbps } else { 0.0 }, 2));
        row["seal_ns"] = json!(round(ceiling.seal_ns, 0));
        row["socket_send_ns"] = json!(round(ceiling.socket_send_ns, 0));
        row["ceiling_vs_aead"] = json!(round(ceiling.vs_aead(), 2));
        report.emit(row, args.json);
    }
    if !args.json {
        report.print_table("loopback: one bulk session over real UDP on 127.0.0.1, per socket I/O path");
    }
    Ok(())
}

/// Datagrams per second of the socket-floor measurement, per second it may take: about
/// what the default path carries on this machine class (2.4 million/s), so it takes ~1 s.
const SOCKET_FLOOR_DATAGRAMS_PER_S: f64 = 2_000_000.0;

/// The most `vs_aead` could be with a sender that did nothing but seal each full packet
/// and hand it to the kernel on the default socket path: per packet, the seal's CPU over
/// the seal's plus the socket's. Real sessions also build packets, process acks and keep
/// data for retransmission, and carry frame headers inside the sealed bytes, so they stay
/// below it; with one core per side, the receiver (open, read) bounds it a second time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SenderCeiling {
    /// CPU ns to seal one full packet's bytes, at `aead_cpu_mbps`.
    seal_ns: f64,
    /// Sender CPU ns per datagram on the default socket path (on loopback this includes the
    /// kernel's delivery into the receiving socket, which runs in the sender's system call).
    socket_send_ns: f64,
}

impl SenderCeiling {
    fn new(sealed_bytes: usize, aead_cpu_mbps: f64, socket_send_ns: f64) -> Self {
        // bits / (Mbit/s) = µs; × 1000 = ns.
        let seal_ns = if aead_cpu_mbps > 0.0 { sealed_bytes as f64 * 8.0 * 1e3 / aead_cpu_mbps } else { 0.0 };
        Self { seal_ns, socket_send_ns: socket_send_ns.max(0.0) }
    }

    /// Goodput over `aead_mbps` at this ceiling (0 when nothing was measured).
    fn vs_aead(&self) -> f64 {
        let total = self.seal_ns + self.socket_send_ns;
        if self.seal_ns > 0.0 && total > 0.0 {
            self.seal_ns / total
        } else {
            0.0
        }
    }
}

/// `--scenario batch-io`: the batch layer alone, 1200-byte datagrams.
pub fn run_batch_io(args: &TransportArgs) -> Result<()> {
    const DATAGRAM: usize = 1200;
    // About one second per combination at the plain path's rate.
    let datagrams = (args.duration.unwrap_or(1.0).clamp(0.05, 60.0) * 300_000.0) as u64;
    let figures = rill_transport::driver::bench_batch_io(DATAGRAM, datagrams)
        .context("batch-io benchmark on 127.0.0.1")?;
    let mut report = Report::default();
    let base = figures.first().map_or(0.0, |f| f.received_per_s);
    for f in figures {
        report.emit(
            json!({
                "scenario": "batch-io",
                "send_path": f.send_path,
                "receive_path": f.receive_path,
                "datagram_bytes": f.datagram_bytes,
                "sent_per_s": round(f.sent_per_s, 0),
                "sender_cpu_ns": round(f.sender_cpu_ns_per_datagram, 0),
                "received_per_s": round(f.received_per_s, 0),
                "receiver_cpu_ns": round(f.receiver_cpu_ns_per_datagram, 0),
                "delivered": round(f.datagrams_received as f64 / f.datagrams_sent.max(1) as f64, 3),
                "vs_send_to": round(if base > 0.0 { f.received_per_s / base } else { 0.0 }, 2),
            }),
            args.json,
        );
    }
    if !args.json {
        report
            .print_table("batch-io: the driver's socket batch layer alone, 1200-byte datagrams on 127.0.0.1");
    }
    Ok(())
}

async fn measure(duration: Duration, io: &str, opts: &SocketOptions) -> Result<serde_json::Value> {
    let mut tx_driver = UdpDriver::bind("127.0.0.1:0".parse()?, opts).context("binding sender socket")?;
    let socket = tx_driver.socket_report().clone();
    let stop = Arc::new(Notify::new());

    // The receiver runs on a thread of its own (its own runtime, as a node's task does),
    // so that thread's CPU time is what receiving cost.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let receiver = {
        let stop = stop.clone();
        let opts = opts.clone();
        std::thread::Builder::new().name("receiver".into()).spawn(move || -> Result<Received> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let mut rx_driver =
                    UdpDriver::bind("127.0.0.1:0".parse()?, &opts).context("binding receiver socket")?;
                let _ = addr_tx.send(rx_driver.local_addr()?);
                let mut rx = Endpoint::new(EndpointConfig::default(), Instant::now(), 2);
                let cpu0 = thread_cpu_time();
                let mut bytes = 0u64;
                let mut first: Option<Instant> = None;
                let mut last = Instant::now();
                loop {
                    let stopped = rx_driver.step(&mut rx, stop.notified()).await?.woken();
                    while let Some(e) = rx.poll_event() {
                        if let Event::Message { data, .. } = e {
                            let t = Instant::now();
                            first.get_or_insert(t);
                            last = t;
                            bytes += data.len() as u64;
                        }
                    }
                    if stopped {
                        break;
                    }
                }
                Ok(Received { bytes, first, last, cpu: thread_cpu_time() - cpu0 })
            })
        })?
    };
    let rx_addr: SocketAddr =
        addr_rx.recv_timeout(Duration::from_secs(10)).context("the receiver did not start")?;

    let cpu0 = process_cpu();
    let sender_cpu0 = thread_cpu_time();
    let mut tx = Endpoint::new(EndpointConfig::default(), Instant::now(), 1);
    let session = tx.connect(Instant::now(), rx_addr)?;
    let message = Bytes::from(vec![0x5a; MESSAGE_SIZE]);
    let start = Instant::now();
    let end = start + duration;
    let mut connected = false;
    while Instant::now() < end {
        if connected {
            while tx.queued_bytes(session, Class::Background) < KEEP_QUEUED {
                if tx
                    .send(Instant::now(), session, message.clone(), SendOptions::reliable(Class::Background))
                    .is_err()
                {
                    break;
                }
            }
        }
        tx_driver.step(&mut tx, tokio::time::sleep_until(end.into())).await?;
        while let Some(e) = tx.poll_event() {
            if matches!(e, Event::Connected { .. }) {
                connected = true;
            }
        }
    }
    let sender_cpu = thread_cpu_time() - sender_cpu0;
    let stats = tx.session_stats(session).context("session vanished")?;
    let packets = tx_driver.stats().datagrams_sent;
    stop.notify_one();
    let Received { bytes, first, last, cpu: receiver_cpu } =
        receiver.join().map_err(|_| anyhow::anyhow!("the receiver thread panicked"))??;
    let cpu = process_cpu() - cpu0;
    let elapsed = first.map_or(duration, |f| last.saturating_duration_since(f)).max(Duration::from_millis(1));
    // Goodput each side could carry with a core to itself: the bytes delivered over that
    // side's thread CPU time (sender: up to the end of sending; it sends a little more
    // than was delivered, so this slightly understates it).
    let bound = |cpu: Duration| bytes as f64 * 8.0 / cpu.as_secs_f64().max(1e-6) / 1e6;
    Ok(json!({
        "scenario": "loopback",
        "controller": stats.controller,
        "io": io,
        "goodput_mbps": round(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6, 1),
        "cpu_s": round(cpu.as_secs_f64(), 2),
        "sender_cpu_s": round(sender_cpu.as_secs_f64(), 2),
        "receiver_cpu_s": round(receiver_cpu.as_secs_f64(), 2),
        "sender_bound_mbps": round(bound(sender_cpu), 0),
        "receiver_bound_mbps": round(bound(receiver_cpu), 0),
        "packets": packets,
        "packets_lost": stats.packets_lost,
        "duration_s": round(elapsed.as_secs_f64(), 2),
        "gso": socket.gso_enabled,
        "gro": socket.gro_enabled,
        "precise_timer": socket.precise_timer,
        "socket_send_buffer_bytes": socket.send_buffer_bytes,
        "socket_recv_buffer_bytes": socket.recv_buffer_bytes,
    }))
}

/// What the receiver thread reports: payload bytes delivered, when the first and last
/// message arrived, and the thread's CPU time.
struct Received {
    bytes: u64,
    first: Option<Instant>,
    last: Instant,
    cpu: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_ceiling_is_the_seal_share_of_seal_plus_socket() {
        // 1155 bytes sealed at 14,784 Mbit/s per CPU second take 625 ns; with 415 ns of
        // socket per datagram the sender can reach at most 0.60 of the AEAD alone.
        let c = SenderCeiling::new(1155, 14_784.0, 415.0);
        assert!((c.seal_ns - 625.0).abs() < 1.0, "{}", c.seal_ns);
        assert!((c.vs_aead() - 625.0 / 1040.0).abs() < 0.01, "{}", c.vs_aead());
        // A free socket leaves the AEAD as the only cost.
        assert_eq!(SenderCeiling::new(1155, 14_784.0, 0.0).vs_aead(), 1.0);
        // Nothing measured gives 0, not NaN.
        assert_eq!(SenderCeiling::new(1155, 0.0, 415.0).vs_aead(), 0.0);
    }
}
