//! The real UDP driver: a thin tokio loop around a sans-IO [`Endpoint`].
//!
//! The application owns the endpoint and calls [`UdpDriver::step`] in its own task, so a
//! later layer (a swarm node) can run its own state machine beside it without channels or
//! locks. The driver reads the clock, moves datagrams between the socket and the endpoint,
//! and fires the endpoint's timer; it holds no protocol logic.
//!
//! - Sending ([`tx`]): `poll_transmit` fills a batch of up to [`BATCH`] datagrams packed in
//!   one buffer. On Linux the batch goes to the kernel in one `sendmmsg`, in which each run
//!   of equal-sized datagrams to one destination is a single GSO message (`UDP_SEGMENT`).
//!   GSO is detected at bind and switched off for good if a send is refused (EIO, EINVAL,
//!   EMSGSIZE), then the batch is regrouped and resent without it. A batch the socket
//!   cannot take stays queued until the socket is writable; while it waits, the endpoint
//!   is not asked for more (its window and pacer hold the rest).
//! - Receiving: `recvmmsg` of up to [`BATCH`] datagrams per call; with GRO (`UDP_GRO`) a
//!   slot may hold a train of datagrams from one source, cut apart by the segment size the
//!   kernel reports. A datagram larger than its slot is dropped and counted.
//! - Errors: a send error that concerns a destination (ICMP unreachable reported late, no
//!   route, a bad address) costs that message only, and is counted and logged at debug
//!   level. Only errors that mean the socket itself is broken end `step` with an error.
//! - Timer ([`timer`]): on Linux a `timerfd`, so pacing deadlines tens of microseconds
//!   away are met without sleeping a whole 1 ms tokio tick or spinning; wakes are at
//!   least [`MIN_WAKE_INTERVAL`] apart so paced datagrams still leave in batches.
//! - Elsewhere than Linux: plain `send_to`/`recv_from`, one datagram per call, and tokio's
//!   timer (the pacer's 2 ms bucket absorbs its 1 ms granularity).
//!
//! Figures for "where batching helps" come from [`bench_batch_io`] (`rill bench transport
//! --scenario batch-io`).

mod bench;
#[cfg(target_os = "linux")]
mod sys;
mod timer;
mod tx;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::endpoint::{Endpoint, Transmit};

pub use bench::{bench_batch_io, bench_default_path, bench_fanout, BatchIoFigure, FanoutFigure};
use timer::Timer;
pub use timer::MIN_WAKE_INTERVAL;
pub use tx::BATCH;
use tx::{Message, TxQueue};

/// Receive slot for one datagram without GRO. Our datagrams are 1200 B by default
/// (`config::DEFAULT_MAX_DATAGRAM_SIZE`); 2048 leaves room for peers configured larger.
/// A bigger datagram is not ours: it is truncated by the kernel, then dropped and counted.
const RECV_SLOT_BYTES: usize = 2048;

/// Receive slot with GRO: a coalesced train is one IP datagram, at most 64 KiB.
const GRO_SLOT_BYTES: usize = 1 << 16;

/// Slots with GRO: 16 × 64 KiB = 1 MiB of buffer. A slot holds a train of up to 54
/// coalesced 1200-byte datagrams from one source, or a single datagram; without trains
/// a call reads 16 instead of 64 datagrams, which cost no measurable receive CPU
/// (`bench_batch_io`, sendmmsg -> recvmmsg vs recvmmsg+gro).
const GRO_SLOTS: usize = 16;

/// Most datagrams one `step` reads before it lets the endpoint answer (flush) and
/// returns, so a flood cannot keep one step busy for long (8 full `recvmmsg` calls).
const MAX_RECEIVE_PER_STEP: usize = 8 * BATCH;

/// How to set the socket up. `Default`: 4 MiB buffers each way, GSO, GRO and batching on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// SO_SNDBUF to ask for. 4 MiB holds ~33 ms at 1 Gbit/s: a batch burst never meets a
    /// full socket unless the interface itself is behind.
    pub send_buffer_bytes: usize,
    /// SO_RCVBUF to ask for. 4 MiB absorbs ~3,500 datagrams of 1200 B while the task is
    /// busy elsewhere (each costs about twice its size in kernel memory).
    pub recv_buffer_bytes: usize,
    /// Send runs of equal-sized datagrams as one GSO message (Linux 4.18+, `UDP_SEGMENT`).
    pub gso: bool,
    /// Accept coalesced trains of datagrams (Linux 5.0+, `UDP_GRO`; needs `batch`).
    pub gro: bool,
    /// `sendmmsg`/`recvmmsg` (Linux); off: one datagram per system call.
    pub batch: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self { send_buffer_bytes: 4 << 20, recv_buffer_bytes: 4 << 20, gso: true, gro: true, batch: true }
    }
}

/// What the kernel gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketReport {
    pub requested_send_bytes: usize,
    pub requested_recv_bytes: usize,
    /// SO_SNDBUF as the kernel reports it. Linux reports twice what was set (it counts
    /// its bookkeeping, socket(7)) and clamps the request to `net.core.wmem_max` unless
    /// we may force it (CAP_NET_ADMIN).
    pub send_buffer_bytes: usize,
    /// SO_RCVBUF as the kernel reports it (see `send_buffer_bytes`; `net.core.rmem_max`).
    pub recv_buffer_bytes: usize,
    /// The sizes were set with SO_{SND,RCV}BUFFORCE, past the sysctl limits.
    pub buffers_forced: bool,
    /// `sendmmsg`/`recvmmsg` in use.
    pub batched: bool,
    /// The kernel knows `UDP_SEGMENT`.
    pub gso_supported: bool,
    /// GSO in use now: asked for, supported, and not refused by a send since.
    pub gso_enabled: bool,
    /// `UDP_GRO` is on.
    pub gro_enabled: bool,
    /// The endpoint's timer wakes to within microseconds (a timerfd), not tokio's 1 ms.
    pub precise_timer: bool,
}

/// Counters since bind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Send and receive system calls that moved data or failed; calls that found the
    /// socket empty or full are not counted here (see `would_block`).
    pub send_syscalls: u64,
    pub recv_syscalls: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// UDP payload bytes of the datagrams counted above (headers, crypto and all: what
    /// the overhead ratio counts).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Send calls that carried more than one datagram (several messages, or GSO).
    pub send_batches: u64,
    /// GSO messages sent, and the datagrams they carried.
    pub gso_messages: u64,
    pub gso_segments: u64,
    /// Datagrams that arrived coalesced by GRO.
    pub gro_segments: u64,
    /// Sends that found the socket full (the batch waited for writability).
    pub would_block: u64,
    /// Datagrams dropped because their send failed (unreachable peer, no route, ...).
    pub send_errors: u64,
    /// Errors reported on receive (ICMP errors of earlier sends on some systems).
    pub recv_errors: u64,
    /// Datagrams larger than a receive slot, dropped.
    pub truncated: u64,
    /// Times the kernel refused GSO and the driver fell back to plain sends (0 or 1).
    pub gso_fallbacks: u64,
}

/// Why `step` returned.
#[derive(Debug)]
pub enum StepOutcome<T> {
    /// Datagrams arrived and were handed to the endpoint.
    Received,
    /// The endpoint's timer fired.
    Timeout,
    /// The caller's `wake` future completed.
    Woken(T),
    /// The socket took (some of) a batch that was waiting for room.
    Sent,
}

impl<T> StepOutcome<T> {
    pub fn woken(&self) -> bool {
        matches!(self, StepOutcome::Woken(_))
    }
}

/// A UDP socket driving one [`Endpoint`]; see the module docs.
#[derive(Debug)]
pub struct UdpDriver {
    socket: UdpSocket,
    /// The socket is IPv6 (dual-stack where allowed): IPv4 peers are addressed as
    /// `::ffff:a.b.c.d` on the wire and reported to the endpoint as plain IPv4.
    ipv6: bool,
    report: SocketReport,
    stats: DriverStats,
    tx: TxQueue,
    /// Scratch for grouping the queue into messages; at most [`BATCH`] entries.
    messages: Vec<Message>,
    /// Longest GSO run: [`tx::GSO_MAX_SEGMENTS`] while GSO is on, else 1.
    gso_max_segments: usize,
    /// Receive slots, `rx_slot_bytes` each (plus one byte on the plain path, to tell a
    /// datagram that filled the slot from one that did not fit).
    rx_buf: Vec<u8>,
    rx_slot_bytes: usize,
    timer: Timer,
    /// What the last `recvmmsg` read; at most [`BATCH`] entries.
    #[cfg(target_os = "linux")]
    received: Vec<sys::Received>,
}

/// Errors that mean the socket itself is unusable. Anything else on send concerns one
/// destination and costs only that message.
fn is_socket_fatal(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// An error of a GSO send that says GSO cannot be used (udp_send_skb in
/// net/ipv4/udp.c): EIO when the device cannot checksum, EINVAL when the socket or the
/// kernel refuses the segmentation (also seen from some IPv6 setups), EMSGSIZE when one
/// segment exceeds the route's MTU (without GSO the kernel would fragment instead).
fn is_gso_refusal(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for, so that a peer has one
/// name whether the socket is IPv4 or dual-stack IPv6.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => SocketAddr::new(v6.ip().to_canonical(), v6.port()),
        v4 => v4,
    }
}

/// Set a socket buffer size. If the kernel clamped the request to its sysctl limit, try
/// the FORCE option (root / CAP_NET_ADMIN). Returns the size the kernel reports and
/// whether it was forced.
fn set_buffer_size(socket: &Socket, send: bool, bytes: usize) -> io::Result<(usize, bool)> {
    let set = if send { Socket::set_send_buffer_size } else { Socket::set_recv_buffer_size };
    let get = if send { Socket::send_buffer_size } else { Socket::recv_buffer_size };
    if let Err(e) = set(socket, bytes) {
        tracing::debug!(error = %e, send, bytes, "setting the socket buffer size failed");
    }
    let reported = get(socket)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        // Linux reports twice what it set; less than twice the request means clamped.
        if reported < bytes.saturating_mul(2) {
            match sys::force_buffer_size(socket.as_fd(), send, bytes) {
                Ok(()) => return Ok((get(socket)?, true)),
                Err(e) => tracing::debug!(error = %e, send, bytes, reported, "cannot force the buffer size"),
            }
        }
    }
    Ok((reported, false))
}

impl UdpDriver {
    /// Bind a socket to `addr` (port 0 for any), non-blocking, with `opts`. Must be called
    /// inside a tokio runtime (the socket registers with its reactor).
    pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpDriver> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("UdpDriver::bind needs a tokio runtime"));
        }
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Dual-stack where the system allows it; IPv4 peers then fail per datagram.
            if let Err(e) = socket.set_only_v6(false) {
                tracing::debug!(error = %e, "IPv6 socket stays IPv6-only");
            }
        }
        let (send_buffer_bytes, send_forced) = set_buffer_size(&socket, true, opts.send_buffer_bytes)?;
        let (recv_buffer_bytes, recv_forced) = set_buffer_size(&socket, false, opts.recv_buffer_bytes)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;

        let batched = opts.batch && cfg!(target_os = "linux");
        // GRO only with recvmmsg: that path reads the segment size; recv_from cannot.
        #[cfg(target_os = "linux")]
        let (gso_supported, gro_enabled) = {
            use std::os::fd::AsFd;
            (sys::gso_supported(socket.as_fd()), opts.gro && batched && sys::enable_gro(socket.as_fd()))
        };
        #[cfg(not(target_os = "linux"))]
        let (gso_supported, gro_enabled) = (false, false);
        let gso_enabled = opts.gso && gso_supported;
        let timer = Timer::new();
        let report = SocketReport {
            requested_send_bytes: opts.send_buffer_bytes,
            requested_recv_bytes: opts.recv_buffer_bytes,
            send_buffer_bytes,
            recv_buffer_bytes,
            buffers_forced: send_forced || recv_forced,
            batched,
            gso_supported,
            gso_enabled,
            gro_enabled,
            precise_timer: timer.is_precise(),
        };
        let (rx_slot_bytes, rx_slots) = if gro_enabled {
            (GRO_SLOT_BYTES, GRO_SLOTS)
        } else if batched {
            (RECV_SLOT_BYTES, BATCH)
        } else {
            (RECV_SLOT_BYTES, 1)
        };
        let socket = UdpSocket::from_std(socket.into())?;
        Ok(UdpDriver {
            ipv6: addr.is_ipv6(),
            socket,
            report,
            stats: DriverStats::default(),
            tx: TxQueue::default(),
            messages: Vec::with_capacity(BATCH),
            gso_max_segments: if gso_enabled { tx::GSO_MAX_SEGMENTS } else { 1 },
            rx_buf: vec![0; rx_slot_bytes * rx_slots + 1],
            rx_slot_bytes,
            timer,
            #[cfg(target_os = "linux")]
            received: Vec::with_capacity(BATCH),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn socket_report(&self) -> &SocketReport {
        &self.report
    }

    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// A batch is waiting for the socket to have room.
    pub fn has_pending(&self) -> bool {
        self.tx.has_pending()
    }

    /// Send everything the endpoint has to send now, in batches, without blocking. Returns
    /// when the endpoint has nothing more for now (its congestion window and pacer bound
    /// that) or the socket is full: the batch it cannot take yet stays queued, and `step`
    /// waits for writability.
    pub fn flush(&mut self, endpoint: &mut Endpoint) -> io::Result<()> {
        let max_datagram_size = endpoint.max_datagram_size();
        self.flush_with(max_datagram_size, |now, buf| endpoint.poll_transmit(now, buf))
    }

    /// `flush` with any source of datagrams: `poll(now, buf)` writes one datagram of at
    /// most `max_datagram_size` bytes into `buf`, or returns `None` when it has no more.
    /// `now` is read once per batch.
    pub(crate) fn flush_with(
        &mut self,
        max_datagram_size: usize,
        mut poll: impl FnMut(Instant, &mut [u8]) -> Option<Transmit>,
    ) -> io::Result<()> {
        let ipv6 = self.ipv6;
        loop {
            if !self.tx.has_pending() {
                let now = Instant::now();
                let taken = self.tx.fill(max_datagram_size, |buf| {
                    let t = poll(now, buf)?;
                    Some(Transmit { destination: socket_address(t.destination, ipv6), size: t.size })
                });
                if taken == 0 {
                    return Ok(());
                }
            }
            if !self.send_queued()? {
                return Ok(());
            }
        }
    }

    /// Send the queued batch. Ok(true) when all of it went, Ok(false) when the socket is
    /// full (the rest stays queued).
    fn send_queued(&mut self) -> io::Result<bool> {
        while self.tx.has_pending() {
            self.tx.messages(self.gso_max_segments, &mut self.messages);
            let limit = if self.report.batched { self.messages.len() } else { 1 };
            let result = self.send_messages(limit);
            if !matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                self.stats.send_syscalls += 1;
            }
            match result {
                Ok(taken) => {
                    let mut datagrams = 0;
                    for m in &self.messages[..taken] {
                        datagrams += m.datagrams;
                        self.stats.bytes_sent += m.len as u64;
                        if m.segment_len.is_some() {
                            self.stats.gso_messages += 1;
                            self.stats.gso_segments += m.datagrams as u64;
                        }
                    }
                    if datagrams > 1 {
                        self.stats.send_batches += 1;
                    }
                    self.stats.datagrams_sent += datagrams as u64;
                    self.tx.advance(datagrams);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.would_block += 1;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_socket_fatal(&e) => return Err(e),
                Err(e) if self.messages[0].segment_len.is_some() && is_gso_refusal(&e) => {
                    // Regrouped without GSO on the next turn of the loop, nothing lost.
                    tracing::info!(error = %e, "the kernel refused a GSO send; sending without GSO from now on");
                    self.gso_max_segments = 1;
                    self.report.gso_enabled = false;
                    self.stats.gso_fallbacks += 1;
                }
                Err(e) => {
                    let m = self.messages[0];
                    tracing::debug!(error = %e, destination = %m.destination, datagrams = m.datagrams, "udp send failed; dropped");
                    self.stats.send_errors += m.datagrams as u64;
                    self.tx.advance(m.datagrams);
                }
            }
        }
        Ok(true)
    }

    /// One system call for the first `limit` messages; returns how many the kernel took.
    fn send_messages(&mut self, limit: usize) -> io::Result<usize> {
        let messages = &self.messages[..limit];
        let buf = self.tx.buf();
        #[cfg(target_os = "linux")]
        if self.report.batched || messages[0].segment_len.is_some() {
            use std::os::fd::AsFd;
            let socket = &self.socket;
            return socket.try_io(tokio::io::Interest::WRITABLE, || sys::send(socket.as_fd(), buf, messages));
        }
        let m = messages[0];
        debug_assert!(m.segment_len.is_none() && m.datagrams == 1);
        self.socket.try_send_to(&buf[m.offset..m.offset + m.len], m.destination).map(|_| 1)
    }

    /// Read what the socket has (up to [`MAX_RECEIVE_PER_STEP`] datagrams) and hand each
    /// datagram to the endpoint. Returns how many.
    fn receive(&mut self, endpoint: &mut Endpoint) -> io::Result<usize> {
        self.receive_with(|now, from, datagram| endpoint.handle_datagram(now, from, datagram))
    }

    /// `receive` into any sink: `deliver(now, source, datagram)`, `now` read once per
    /// system call. The datagram is the driver's receive buffer, which the sink may
    /// change (the endpoint decrypts in place).
    pub(crate) fn receive_with(
        &mut self,
        mut deliver: impl FnMut(Instant, SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        let mut delivered = 0;
        for _ in 0..MAX_RECEIVE_PER_STEP {
            if delivered >= MAX_RECEIVE_PER_STEP {
                break;
            }
            let result = self.receive_once(&mut deliver);
            if !matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                self.stats.recv_syscalls += 1;
            }
            match result {
                Ok((datagrams, full)) => {
                    delivered += datagrams;
                    if !full {
                        // The call found fewer than it had room for: the socket is drained.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_socket_fatal(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive error");
                    self.stats.recv_errors += 1;
                }
            }
        }
        Ok(delivered)
    }

    /// One receive system call. Returns the datagrams delivered and whether the call
    /// filled every slot (so more may be waiting).
    fn receive_once(
        &mut self,
        deliver: &mut impl FnMut(Instant, SocketAddr, &mut [u8]),
    ) -> io::Result<(usize, bool)> {
        let slot_bytes = self.rx_slot_bytes;
        #[cfg(target_os = "linux")]
        if self.report.batched {
            use std::os::fd::AsFd;
            let (socket, buf, received) = (&self.socket, &mut self.rx_buf, &mut self.received);
            received.clear();
            let slots = (buf.len() / slot_bytes).min(BATCH);
            let mut read = 0;
            let result = socket.try_io(tokio::io::Interest::READABLE, || {
                read = sys::recv(socket.as_fd(), buf, slot_bytes, received)?;
                if read < slots {
                    // recvmmsg stops short only when the queue ran dry (EAGAIN after the
                    // first datagram), so the socket is drained. tokio forgets readiness
                    // only on WouldBlock: say so, or the next `step` wakes at once for a
                    // recvmmsg that finds nothing (half a relay's loop turns, measured).
                    // Datagrams arriving from here on raise a new edge, so none waits.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(read)
            });
            match result {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let mut delivered = 0;
            let stats = &mut self.stats;
            for r in &self.received {
                if r.truncated {
                    stats.truncated += 1;
                    continue;
                }
                let source = canonical(r.source);
                let bytes = &mut self.rx_buf[r.slot * slot_bytes..][..r.len];
                stats.bytes_received += r.len as u64;
                if r.segment_len < r.len {
                    for datagram in bytes.chunks_mut(r.segment_len) {
                        deliver(now, source, datagram);
                        delivered += 1;
                        stats.gro_segments += 1;
                    }
                } else {
                    deliver(now, source, bytes);
                    delivered += 1;
                }
            }
            stats.datagrams_received += delivered as u64;
            return Ok((delivered, read == slots));
        }
        // One byte more than a slot: a datagram that fills it was too big for the slot.
        let (len, source) = self.socket.try_recv_from(&mut self.rx_buf[..slot_bytes + 1])?;
        if len > slot_bytes {
            self.stats.truncated += 1;
            return Ok((0, true));
        }
        deliver(Instant::now(), canonical(source), &mut self.rx_buf[..len]);
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += len as u64;
        Ok((1, true))
    }

    /// Wait until the socket has room for the queued batch, then send what it takes.
    pub(crate) async fn wait_writable(&mut self) -> io::Result<()> {
        self.socket.writable().await?;
        self.send_queued().map(drop)
    }

    /// Wait until the socket is readable, then receive into `deliver` (see `receive_with`).
    pub(crate) async fn wait_receive(
        &mut self,
        deliver: impl FnMut(Instant, SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        self.socket.readable().await?;
        self.receive_with(deliver)
    }

    /// One turn of the loop: flush; then wait for the first of: datagrams to read (they
    /// are handed to the endpoint), the endpoint's timer (`handle_timeout`), room in the
    /// socket for a queued batch, or `wake`; a timer that has come due meanwhile fires
    /// too; flush again. The caller then drains `poll_event` and acts.
    ///
    /// Cancel-safe: dropping the future loses nothing (it only waits between handlings).
    pub async fn step<F: Future>(
        &mut self,
        endpoint: &mut Endpoint,
        wake: F,
    ) -> io::Result<StepOutcome<F::Output>> {
        self.flush(endpoint)?;
        if fire_due_timer(endpoint) {
            self.flush(endpoint)?;
            return Ok(StepOutcome::Timeout);
        }
        enum Ready<T> {
            Readable,
            Writable,
            Timer,
            Woken(T),
        }
        let pending = self.tx.has_pending();
        let deadline = endpoint.poll_timeout();
        let ready = {
            let (socket, timer) = (&self.socket, &mut self.timer);
            tokio::select! {
                r = socket.readable() => { r?; Ready::Readable }
                r = socket.writable(), if pending => { r?; Ready::Writable }
                r = timer.sleep_until(deadline) => { r?; Ready::Timer }
                out = wake => Ready::Woken(out),
            }
        };
        let outcome = match ready {
            Ready::Readable => {
                self.receive(endpoint)?;
                StepOutcome::Received
            }
            Ready::Writable => {
                self.send_queued()?;
                StepOutcome::Sent
            }
            Ready::Timer => {
                let now = Instant::now();
                self.timer.woke(now);
                endpoint.handle_timeout(now);
                StepOutcome::Timeout
            }
            Ready::Woken(out) => StepOutcome::Woken(out),
        };
        fire_due_timer(endpoint);
        self.flush(endpoint)?;
        Ok(outcome)
    }
}

/// CPU time (user + system) the calling thread has used; zero where the system cannot
/// tell. For benchmarks and per-node figures (`cpu_per_gbit`).
pub fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        sys::thread_cpu_time()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Duration::ZERO
    }
}

/// User CPU time of the calling thread (`getrusage(RUSAGE_THREAD)`); zero where the system
/// cannot tell. With [`thread_cpu_time`] it splits a thread's cost into its own work and
/// the kernel's.
pub fn thread_user_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
        let usage = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut u);
            u
        };
        Duration::new(usage.ru_utime.tv_sec as u64, usage.ru_utime.tv_usec as u32 * 1000)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Duration::ZERO
    }
}

/// CPU time (user + system) the whole process has used (`getrusage(RUSAGE_SELF)`).
pub fn process_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
        let usage = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut u);
            u
        };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }
    #[cfg(not(unix))]
    {
        Duration::ZERO
    }
}

/// The address to put on the wire: IPv4 peers of an IPv6 socket as IPv4-mapped.
fn socket_address(addr: SocketAddr, ipv6_socket: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if ipv6_socket => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        other => other,
    }
}

/// Fire the endpoint's timer if it is due. Returns whether it fired.
fn fire_due_timer(endpoint: &mut Endpoint) -> bool {
    let now = Instant::now();
    if endpoint.poll_timeout().is_some_and(|t| t <= now) {
        endpoint.handle_timeout(now);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests;
