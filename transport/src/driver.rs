//! The real UDP driver: a thin tokio loop around a sans-IO [`Endpoint`].
//!
//! The application owns the endpoint and calls [`UdpDriver::step`] in its own task, so a
//! later layer (a swarm node) can run its own state machine beside it without channels or
//! locks. The driver reads the clock, moves datagrams between the socket and the endpoint,
//! and fires the endpoint's timer; it holds no protocol logic.
//!
//! Sending drains `poll_transmit` into a batch and hands the batch to the kernel with one
//! `sendmmsg` call on Linux (plain `send_to` elsewhere); receiving drains the socket with
//! `recvmmsg`. Peer ICMP errors (connection refused and the like) are counted, never fatal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::endpoint::Endpoint;

/// Datagrams per batched syscall (sendmmsg/recvmmsg). 64 × 1200 B = 77 kB per call: large
/// enough to amortise the syscall, small enough to stay in L2.
pub const BATCH: usize = 64;
/// Largest datagram we accept from the socket (anything larger is not ours).
const RECV_BUFFER: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    pub send_buffer_bytes: usize,
    pub recv_buffer_bytes: usize,
    /// Use sendmmsg/recvmmsg where available.
    pub batch: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self { send_buffer_bytes: 4 << 20, recv_buffer_bytes: 4 << 20, batch: true }
    }
}

/// What the kernel gave us (Linux reports twice the requested size: it counts overhead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketReport {
    pub requested_send_bytes: usize,
    pub requested_recv_bytes: usize,
    pub send_buffer_bytes: usize,
    pub recv_buffer_bytes: usize,
    pub batched: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_syscalls: u64,
    pub recv_syscalls: u64,
    pub would_block: u64,
    /// Send or receive errors that concern one peer (ICMP unreachable etc.).
    pub peer_errors: u64,
    pub truncated: u64,
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
    /// A blocked send went out.
    Sent,
}

impl<T> StepOutcome<T> {
    pub fn woken(&self) -> bool {
        matches!(self, StepOutcome::Woken(_))
    }
}

#[derive(Debug)]
pub struct UdpDriver {
    socket: UdpSocket,
    report: SocketReport,
    stats: DriverStats,
    /// Datagrams waiting for the socket: `(destination, start, len)` into `out_buf`.
    out: Vec<(SocketAddr, usize, usize)>,
    out_buf: Vec<u8>,
    /// How many of `out` went out already.
    out_sent: usize,
    in_bufs: Vec<[u8; RECV_BUFFER]>,
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::EMSGSIZE)
    )
}

impl UdpDriver {
    pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpDriver> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Dual-stack where the system allows it.
            let _ = socket.set_only_v6(false);
        }
        // Best effort: the kernel clamps to net.core.{w,r}mem_max; the report says what we got.
        let _ = socket.set_send_buffer_size(opts.send_buffer_bytes);
        let _ = socket.set_recv_buffer_size(opts.recv_buffer_bytes);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let report = SocketReport {
            requested_send_bytes: opts.send_buffer_bytes,
            requested_recv_bytes: opts.recv_buffer_bytes,
            send_buffer_bytes: socket.send_buffer_size()?,
            recv_buffer_bytes: socket.recv_buffer_size()?,
            batched: opts.batch && cfg!(target_os = "linux"),
        };
        let socket = UdpSocket::from_std(socket.into())?;
        Ok(UdpDriver {
            socket,
            report,
            stats: DriverStats::default(),
            out: Vec::with_capacity(BATCH),
            out_buf: Vec::with_capacity(BATCH * RECV_BUFFER),
            out_sent: 0,
            in_bufs: vec![[0u8; RECV_BUFFER]; if opts.batch { BATCH } else { 1 }],
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

    fn has_pending(&self) -> bool {
        self.out_sent < self.out.len()
    }

    /// Send everything the endpoint has for now, in batches, without blocking. A batch the
    /// socket cannot take yet stays pending (and `step` waits for writability).
    pub fn flush(&mut self, endpoint: &mut Endpoint) -> io::Result<()> {
        let mds = endpoint.max_datagram_size();
        loop {
            if !self.has_pending() {
                self.out.clear();
                self.out_buf.clear();
                self.out_sent = 0;
                let now = Instant::now();
                while self.out.len() < BATCH {
                    let start = self.out_buf.len();
                    self.out_buf.resize(start + mds, 0);
                    match endpoint.poll_transmit(now, &mut self.out_buf[start..]) {
                        Some(t) => {
                            self.out_buf.truncate(start + t.size);
                            self.out.push((t.destination, start, t.size));
                        }
                        None => {
                            self.out_buf.truncate(start);
                            break;
                        }
                    }
                }
                if self.out.is_empty() {
                    return Ok(());
                }
            }
            match self.send_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.would_block += 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn send_pending(&mut self) -> io::Result<()> {
        while self.has_pending() {
            self.stats.send_syscalls += 1;
            let sent = if self.report.batched { self.send_batch() } else { self.send_one() };
            match sent {
                Ok(n) => {
                    self.stats.datagrams_sent += n as u64;
                    self.out_sent += n;
                }
                Err(e) if is_peer_error(&e) => {
                    // That datagram's peer is unreachable: skip it, keep the loop alive.
                    self.stats.peer_errors += 1;
                    tracing::debug!(error = %e, "udp send to unreachable peer");
                    self.out_sent += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn send_one(&mut self) -> io::Result<usize> {
        let (dest, start, len) = self.out[self.out_sent];
        let buf = &self.out_buf[start..start + len];
        self.socket.try_send_to(buf, dest).map(|_| 1)
    }

    #[cfg(target_os = "linux")]
    fn send_batch(&mut self) -> io::Result<usize> {
        let pending = &self.out[self.out_sent..];
        let addrs: Vec<socket2::SockAddr> = pending.iter().map(|(d, _, _)| (*d).into()).collect();
        let mut iovs: Vec<libc::iovec> = pending
            .iter()
            .map(|&(_, start, len)| libc::iovec {
                iov_base: self.out_buf[start..].as_ptr() as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..pending.len())
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is a valid empty header; we fill in pointers below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = addrs[i].len();
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        self.socket.try_io(Interest::WRITABLE, || {
            use std::os::fd::AsRawFd;
            // SAFETY: msgs, iovs and addrs outlive the call; every pointer refers into
            // them or into out_buf, which is not touched until the call returns.
            let n = unsafe {
                libc::sendmmsg(self.socket.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0)
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn send_batch(&mut self) -> io::Result<usize> {
        self.send_one()
    }

    /// Drain the socket (up to a few batches) into the endpoint.
    fn receive(&mut self, endpoint: &mut Endpoint) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..8 {
            self.stats.recv_syscalls += 1;
            let result =
                if self.report.batched { self.recv_batch(endpoint) } else { self.recv_one(endpoint) };
            match result {
                Ok(0) => break,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_peer_error(&e) => {
                    // ICMP error from an earlier send, reported on receive.
                    self.stats.peer_errors += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(any)
    }

    fn recv_one(&mut self, endpoint: &mut Endpoint) -> io::Result<usize> {
        let (n, from) = self.socket.try_recv_from(&mut self.in_bufs[0])?;
        self.stats.datagrams_received += 1;
        endpoint.handle_datagram(Instant::now(), from, &self.in_bufs[0][..n]);
        Ok(1)
    }

    #[cfg(target_os = "linux")]
    fn recv_batch(&mut self, endpoint: &mut Endpoint) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let count = self.in_bufs.len();
        // SAFETY: zeroed sockaddr_storage is a valid (empty) address buffer.
        let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; count];
        let mut iovs: Vec<libc::iovec> = self
            .in_bufs
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: RECV_BUFFER })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..count)
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is a valid empty header; we fill in pointers below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let fd = self.socket.as_raw_fd();
        let n = self.socket.try_io(Interest::READABLE, || {
            // SAFETY: every pointer in msgs refers into names, iovs or in_bufs, all alive
            // and not otherwise borrowed for the duration of the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })?;
        let now = Instant::now();
        for i in 0..n {
            let m = &msgs[i];
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.truncated += 1;
                continue;
            }
            // SAFETY: the kernel wrote a valid address of msg_namelen bytes into names[i].
            let addr = unsafe { socket2::SockAddr::new(names[i], m.msg_hdr.msg_namelen) };
            let Some(from) = addr.as_socket() else { continue };
            self.stats.datagrams_received += 1;
            endpoint.handle_datagram(now, from, &self.in_bufs[i][..m.msg_len as usize]);
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_batch(&mut self, endpoint: &mut Endpoint) -> io::Result<usize> {
        self.recv_one(endpoint)
    }

    /// One turn of the loop: flush, then wait for the first of: datagrams to read, the
    /// endpoint's timer, the socket taking a blocked batch, or `wake`; handle it; flush.
    pub async fn step<F: Future>(
        &mut self,
        endpoint: &mut Endpoint,
        wake: F,
    ) -> io::Result<StepOutcome<F::Output>> {
        self.flush(endpoint)?;
        if endpoint.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            endpoint.handle_timeout(Instant::now());
            self.flush(endpoint)?;
            return Ok(StepOutcome::Timeout);
        }
        let timeout = endpoint.poll_timeout();
        let sleep = async move {
            match timeout {
                // tokio's timer has 1 ms granularity; the pacer's 2 ms bucket absorbs it.
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let pending = self.has_pending();
        let outcome = tokio::select! {
            biased;
            r = self.socket.readable() => {
                r?;
                self.receive(endpoint)?;
                StepOutcome::Received
            }
            r = self.socket.writable(), if pending => {
                r?;
                StepOutcome::Sent
            }
            () = sleep => {
                endpoint.handle_timeout(Instant::now());
                StepOutcome::Timeout
            }
            out = wake => StepOutcome::Woken(out),
        };
        self.flush(endpoint)?;
        Ok(outcome)
    }
}

/// Re-export for callers that want to size timers against the driver's resolution.
pub const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Class, Event, SendOptions};
    use crate::EndpointConfig;
    use bytes::Bytes;

    #[tokio::test]
    async fn two_endpoints_transfer_over_loopback() {
        for batch in [true, false] {
            let opts = SocketOptions { batch, ..Default::default() };
            let mut da = UdpDriver::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
            let mut db = UdpDriver::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
            assert!(da.socket_report().send_buffer_bytes > 0);
            let b_addr = db.local_addr().unwrap();
            let mut a = Endpoint::new(EndpointConfig::default(), Instant::now(), 1);
            let mut b = Endpoint::new(EndpointConfig::default(), Instant::now(), 2);
            let s = a.connect(Instant::now(), b_addr).unwrap();
            // 20 MB in 200 messages, each with its index, all delivered exactly once.
            let total = 200u32;
            let mut sent = 0u32;
            let mut got = vec![0u32; total as usize];
            let mut received = 0;
            let mut connected = false;
            let deadline = Instant::now() + Duration::from_secs(30);
            while received < total && Instant::now() < deadline {
                if connected {
                    while sent < total && a.queued_bytes(s, Class::Stream) < 2 << 20 {
                        let mut m = vec![(sent % 251) as u8; 100_000];
                        m[..4].copy_from_slice(&sent.to_be_bytes());
                        a.send(Instant::now(), s, Bytes::from(m), SendOptions::reliable(Class::Stream))
                            .unwrap();
                        sent += 1;
                    }
                }
                let tick = tokio::time::sleep(Duration::from_millis(2));
                tokio::select! {
                    r = da.step(&mut a, tick) => { r.unwrap(); }
                    r = db.step(&mut b, std::future::pending::<()>()) => { r.unwrap(); }
                }
                while let Some(e) = a.poll_event() {
                    connected |= matches!(e, Event::Connected { .. });
                }
                while let Some(e) = b.poll_event() {
                    if let Event::Message { data, .. } = e {
                        let i = u32::from_be_bytes(data[..4].try_into().unwrap());
                        assert_eq!(data.len(), 100_000);
                        assert!(data[4..].iter().all(|&x| x == (i % 251) as u8));
                        got[i as usize] += 1;
                        received += 1;
                    }
                }
            }
            assert!(got.iter().all(|&c| c == 1), "batch={batch}: every message exactly once: {got:?}");
            assert!(da.stats().datagrams_sent > 16_000);
        }
    }

    #[tokio::test]
    async fn unreachable_peer_is_not_fatal() {
        let mut d = UdpDriver::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
        // A port nobody listens on: the kernel answers with ICMP port unreachable.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let mut ep = Endpoint::new(EndpointConfig::default(), Instant::now(), 3);
        ep.connect(Instant::now(), dead).unwrap();
        let end = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < end {
            d.step(&mut ep, tokio::time::sleep(Duration::from_millis(50))).await.unwrap();
        }
        assert!(d.stats().datagrams_sent >= 2, "SYN retried");
    }
}
