//! Micro-benchmark of the batch layer alone (no endpoint): one sender thread pushes
//! datagrams as fast as the socket takes them to a receiver thread on 127.0.0.1, once per
//! combination of send path (send_to, sendmmsg, GSO) and receive path (recv_from,
//! recvmmsg, GRO). It is the evidence for which of them the driver turns on by default.
//!
//! On loopback the kernel delivers into the receiving socket inside the sender's system
//! call, so the sender's CPU per datagram covers the whole kernel path of one datagram;
//! the receiver's covers reading it. The sender is not paced: when the receiver falls
//! behind, its socket buffer overflows and the kernel drops (`datagrams_received` says
//! how many got through).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use super::{DriverStats, SocketOptions, UdpDriver};
use crate::endpoint::Transmit;

/// The receiver stops after this long without a datagram once the sender is done.
const RECEIVER_IDLE: Duration = Duration::from_millis(200);

/// One measured combination.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchIoFigure {
    /// `send_to`, `sendmsg+gso`, `sendmmsg` or `sendmmsg+gso`.
    pub send_path: &'static str,
    /// `recv_from`, `recvmmsg` or `recvmmsg+gro`.
    pub receive_path: &'static str,
    pub datagram_bytes: usize,
    pub datagrams_sent: u64,
    /// Datagrams per second of wall clock that the sender handed to the kernel.
    pub sent_per_s: f64,
    /// Sender thread CPU time per datagram sent (0 where the OS cannot tell).
    pub sender_cpu_ns_per_datagram: f64,
    pub send_syscalls: u64,
    pub datagrams_received: u64,
    /// Datagrams per second between the first and the last one received.
    pub received_per_s: f64,
    /// Receiver thread CPU time per datagram received (0 where the OS cannot tell).
    pub receiver_cpu_ns_per_datagram: f64,
    pub recv_syscalls: u64,
}

impl fmt::Display for BatchIoFigure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>13} -> {:<13} sent {:>9.0}/s {:>6.0} ns/dgram cpu {:>7} calls | received {:>9.0}/s \
             {:>6.0} ns/dgram cpu {:>7} calls, {:>5.1}% of sent",
            self.send_path,
            self.receive_path,
            self.sent_per_s,
            self.sender_cpu_ns_per_datagram,
            self.send_syscalls,
            self.received_per_s,
            self.receiver_cpu_ns_per_datagram,
            self.recv_syscalls,
            100.0 * self.datagrams_received as f64 / self.datagrams_sent.max(1) as f64,
        )
    }
}

/// Send `datagrams` datagrams of `datagram_bytes` over loopback for each combination of
/// send and receive path the kernel supports, and report the rates and CPU costs. Each
/// combination runs in two fresh threads with their own current-thread runtimes.
pub fn bench_batch_io(datagram_bytes: usize, datagrams: u64) -> io::Result<Vec<BatchIoFigure>> {
    let base = SocketOptions::default();
    let plain = SocketOptions { gso: false, gro: false, batch: false, ..base.clone() };
    let mmsg = SocketOptions { gso: false, gro: false, ..base.clone() };
    let gso_single = SocketOptions { gso: true, gro: false, batch: false, ..base.clone() };
    let gso = SocketOptions { gso: true, gro: false, ..base.clone() };
    let gro = SocketOptions { gso: false, gro: true, ..base.clone() };
    let cases = [
        (&plain, &mmsg),
        (&mmsg, &mmsg),
        (&gso_single, &mmsg),
        (&gso, &mmsg),
        (&gso, &plain),
        (&gso, &gro),
        (&mmsg, &gro),
    ];
    let mut figures = Vec::new();
    for (tx, rx) in cases {
        let figure = run_case(tx, rx, datagram_bytes, datagrams)?;
        let gso_asked = tx.gso;
        figures.push(figure);
        if gso_asked && figures.last().is_some_and(|f| !f.send_path.contains("gso")) {
            // The kernel has no GSO: the case measured the plain path again; drop it.
            figures.pop();
        }
    }
    Ok(figures)
}

/// The driver's default socket path alone (sendmmsg with GSO into recvmmsg with GRO, as
/// [`SocketOptions::default`] asks): `datagrams` datagrams of `datagram_bytes`. Its CPU per
/// datagram is the floor an encrypted session's per-packet cost sits on, besides the AEAD.
pub fn bench_default_path(datagram_bytes: usize, datagrams: u64) -> io::Result<BatchIoFigure> {
    let opts = SocketOptions::default();
    run_case(&opts, &opts, datagram_bytes, datagrams)
}

fn send_path(report: &super::SocketReport) -> &'static str {
    match (report.batched, report.gso_enabled) {
        (true, true) => "sendmmsg+gso",
        (true, false) => "sendmmsg",
        (false, true) => "sendmsg+gso",
        (false, false) => "send_to",
    }
}

fn receive_path(report: &super::SocketReport) -> &'static str {
    match (report.batched, report.gro_enabled) {
        (true, true) => "recvmmsg+gro",
        (true, false) => "recvmmsg",
        (false, _) => "recv_from",
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn thread_cpu() -> Duration {
    super::thread_cpu_time()
}

fn per_datagram_ns(cpu: Duration, datagrams: u64) -> f64 {
    cpu.as_nanos() as f64 / datagrams.max(1) as f64
}

struct Received {
    datagrams: u64,
    elapsed: Duration,
    cpu: Duration,
    stats: DriverStats,
    path: &'static str,
}

fn run_case(
    tx_opts: &SocketOptions,
    rx_opts: &SocketOptions,
    datagram_bytes: usize,
    datagrams: u64,
) -> io::Result<BatchIoFigure> {
    let (addr_out, addr_in) = mpsc::channel::<io::Result<SocketAddr>>();
    let sender_done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let rx_opts = rx_opts.clone();
        let sender_done = sender_done.clone();
        thread::spawn(move || runtime()?.block_on(receive(rx_opts, datagrams, addr_out, sender_done)))
    };
    let sent = runtime()?.block_on(async {
        let destination =
            addr_in.recv().map_err(|_| io::Error::other("receiver thread ended before binding"))??;
        let mut driver = UdpDriver::bind("127.0.0.1:0".parse().expect("literal address"), tx_opts)?;
        let mut next = 0u64;
        let start = Instant::now();
        let cpu0 = thread_cpu();
        loop {
            driver.flush_with(datagram_bytes, |_, buf| {
                if next == datagrams {
                    return None;
                }
                buf[..8].copy_from_slice(&next.to_be_bytes());
                next += 1;
                Some(Transmit { destination, size: datagram_bytes })
            })?;
            if driver.has_pending() {
                driver.wait_writable().await?;
            } else if next == datagrams {
                break;
            }
        }
        io::Result::Ok((start.elapsed(), thread_cpu() - cpu0, driver))
    });
    sender_done.store(true, Ordering::Release);
    let received = receiver.join().map_err(|_| io::Error::other("receiver thread panicked"))??;
    let (elapsed, cpu, driver) = sent?;
    let stats = driver.stats();
    Ok(BatchIoFigure {
        send_path: send_path(driver.socket_report()),
        receive_path: received.path,
        datagram_bytes,
        datagrams_sent: stats.datagrams_sent,
        sent_per_s: stats.datagrams_sent as f64 / elapsed.as_secs_f64(),
        sender_cpu_ns_per_datagram: per_datagram_ns(cpu, stats.datagrams_sent),
        send_syscalls: stats.send_syscalls,
        datagrams_received: received.datagrams,
        received_per_s: received.datagrams as f64 / received.elapsed.as_secs_f64().max(1e-9),
        receiver_cpu_ns_per_datagram: per_datagram_ns(received.cpu, received.datagrams),
        recv_syscalls: received.stats.recv_syscalls,
    })
}

async fn receive(
    opts: SocketOptions,
    expected: u64,
    addr_out: mpsc::Sender<io::Result<SocketAddr>>,
    sender_done: Arc<AtomicBool>,
) -> io::Result<Received> {
    let bound = UdpDriver::bind("127.0.0.1:0".parse().expect("literal address"), &opts)
        .and_then(|d| Ok((d.local_addr()?, d)));
    let mut driver = match bound {
        Ok((addr, driver)) => {
            let _ = addr_out.send(Ok(addr));
            driver
        }
        Err(e) => {
            let _ = addr_out.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let mut count = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let cpu0 = thread_cpu();
    while count < expected {
        let read = tokio::time::timeout(RECEIVER_IDLE, driver.wait_receive(|_, _, _| count += 1)).await;
        match read {
            Ok(r) => {
                r?;
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            }
            Err(_) if sender_done.load(Ordering::Acquire) => break,
            Err(_) => {}
        }
    }
    let cpu = thread_cpu() - cpu0;
    Ok(Received {
        datagrams: count,
        elapsed: first.map_or(Duration::ZERO, |f| last - f),
        cpu,
        stats: driver.stats().clone(),
        path: receive_path(driver.socket_report()),
    })
}

/// What a bare fan-out costs: [`bench_fanout`]'s figure.
#[derive(Debug, Clone, PartialEq)]
pub struct FanoutFigure {
    pub bytes_sent: u64,
    pub datagrams_sent: u64,
    /// Sender thread CPU time (user + system) over the run.
    pub sender_cpu: Duration,
    /// Sender thread CPU seconds per gigabit sent (0 where the OS cannot tell).
    pub cpu_per_gbit: f64,
}

/// The floor under a relay's forwarding cost: the driver alone (no endpoint, no crypto, no
/// swarm) sends bursts of `bytes_per_child` bytes, in datagrams of at most
/// `datagram_bytes`, to each of `children` receivers on 127.0.0.1, a burst every
/// `interval` for `duration`, with the default socket options (sendmmsg, GSO; the
/// receivers read with GRO on one thread). Each child's burst is consecutive, as the
/// endpoint hands them out, so it leaves as one GSO message.
pub fn bench_fanout(
    children: usize,
    bytes_per_child: usize,
    datagram_bytes: usize,
    interval: Duration,
    duration: Duration,
) -> io::Result<FanoutFigure> {
    assert!(children > 0 && bytes_per_child > 0 && datagram_bytes > 0, "an empty fan-out");
    let (addrs_out, addrs_in) = mpsc::channel::<io::Result<Vec<SocketAddr>>>();
    let sender_done = Arc::new(AtomicBool::new(false));
    let receivers = {
        let sender_done = sender_done.clone();
        thread::spawn(move || {
            runtime()?.block_on(async move {
                let mut drivers = Vec::new();
                for _ in 0..children {
                    match UdpDriver::bind(
                        "127.0.0.1:0".parse().expect("literal address"),
                        &SocketOptions::default(),
                    ) {
                        Ok(d) => drivers.push(d),
                        Err(e) => {
                            let _ = addrs_out.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    }
                }
                let _ = addrs_out.send(drivers.iter().map(UdpDriver::local_addr).collect());
                let mut tasks = tokio::task::JoinSet::new();
                for mut driver in drivers {
                    let sender_done = sender_done.clone();
                    tasks.spawn(async move {
                        while !sender_done.load(Ordering::Acquire) {
                            let read = driver.wait_receive(|_, _, _| {});
                            let _ = tokio::time::timeout(RECEIVER_IDLE, read).await;
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
                io::Result::Ok(())
            })
        })
    };
    let destinations =
        addrs_in.recv().map_err(|_| io::Error::other("receiver thread ended before binding"))??;
    let sent = runtime()?.block_on(async {
        let mut driver =
            UdpDriver::bind("127.0.0.1:0".parse().expect("literal address"), &SocketOptions::default())?;
        let mut tick = tokio::time::interval(interval);
        let end = Instant::now() + duration;
        let cpu0 = thread_cpu();
        while Instant::now() < end {
            tick.tick().await;
            let (mut child, mut offset) = (0, 0);
            driver.flush_with(datagram_bytes, |_, buf| {
                if offset == bytes_per_child {
                    child += 1;
                    offset = 0;
                }
                let &destination = destinations.get(child)?;
                let size = datagram_bytes.min(bytes_per_child - offset);
                buf[..size].fill(0x5a);
                offset += size;
                Some(Transmit { destination, size })
            })?;
            while driver.has_pending() {
                driver.wait_writable().await?;
            }
        }
        io::Result::Ok((thread_cpu() - cpu0, driver))
    });
    sender_done.store(true, Ordering::Release);
    receivers.join().map_err(|_| io::Error::other("receiver thread panicked"))??;
    let (sender_cpu, driver) = sent?;
    let stats = driver.stats();
    Ok(FanoutFigure {
        bytes_sent: stats.bytes_sent,
        datagrams_sent: stats.datagrams_sent,
        sender_cpu,
        cpu_per_gbit: sender_cpu.as_secs_f64() / (stats.bytes_sent as f64 * 8.0 / 1e9).max(1e-9),
    })
}
