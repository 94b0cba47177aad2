//! Where the viewer writes the stream: stdout, a file, or `udp://` (unicast or multicast).
//!
//! [`OutputSpec`] parses what the user typed; [`OutputSink`] writes chunk payloads from a
//! tokio task behind a bounded queue, so a slow reader (a player that paused, a slow disk)
//! never blocks the node that feeds it: when the queue is full the sink drops chunks up to
//! the next keyframe (counted) and the reader sees one clean cut instead of a torn stream.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Bytes of one MPEG-TS packet (ISO/IEC 13818-1 §2.4.3.2).
pub const TS_PACKET_LEN: usize = 188;

/// Bytes of a UDP datagram of TS: 7 packets, 1316 bytes, the convention of ffmpeg, VLC and
/// IPTV (RFC 2250 §2 for RTP; raw UDP uses the same count), and the most that fits a
/// 1500-byte Ethernet MTU with IP and UDP headers.
pub const UDP_DATAGRAM_LEN: usize = 7 * TS_PACKET_LEN;

/// Bound on chunks queued for the writer: 1024.
pub const OUTPUT_QUEUE_CHUNKS: usize = 1024;

/// Bound on payload bytes queued for the writer: 16 MiB, about 16 s of an 8 Mbit/s stream,
/// enough to ride out a player that takes a few seconds to open its decoder.
pub const OUTPUT_QUEUE_BYTES: usize = 16 << 20;

/// How long [`OutputSink::finish`] waits for the reader to take what is queued: 5 s.
/// A player that stopped reading must not keep the program from exiting.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// An output the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// `-`
    Stdout,
    /// A path (or `file://PATH`). Created or truncated.
    File(PathBuf),
    /// `udp://HOST:PORT`, unicast or multicast.
    Udp(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("empty output: give - (stdout), a file path, or udp://HOST:PORT")]
    Empty,
    #[error("{spec}: missing port, expected udp://HOST:PORT")]
    MissingPort { spec: String },
    #[error("{spec}: bad port {port:?}, expected 1 to 65535")]
    BadPort { spec: String, port: String },
    #[error("{spec}: bad host {host:?}: {reason}")]
    BadHost { spec: String, host: String, reason: String },
    #[error("{spec}: {scheme}:// outputs are not supported; use -, a file path or udp://HOST:PORT")]
    UnsupportedScheme { spec: String, scheme: String },
    #[error("{spec}: options after '?' are not supported, expected udp://HOST:PORT")]
    Options { spec: String },
}

impl OutputSpec {
    /// `-` is stdout, `udp://HOST:PORT` a UDP destination (HOST an IPv4 address, a
    /// bracketed IPv6 address or a name, resolved here, blocking, first address taken),
    /// `file://PATH` or anything without a scheme a file path.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        if spec.is_empty() {
            return Err(SpecError::Empty);
        }
        if spec == "-" {
            return Ok(Self::Stdout);
        }
        let Some((scheme, rest)) = spec.split_once("://").filter(|(scheme, _)| is_scheme(scheme)) else {
            return Ok(Self::File(PathBuf::from(spec)));
        };
        if scheme.eq_ignore_ascii_case("file") {
            if rest.is_empty() {
                return Err(SpecError::Empty);
            }
            return Ok(Self::File(PathBuf::from(rest)));
        }
        if !scheme.eq_ignore_ascii_case("udp") {
            return Err(SpecError::UnsupportedScheme { spec: spec.to_owned(), scheme: scheme.to_owned() });
        }
        if rest.contains('?') {
            return Err(SpecError::Options { spec: spec.to_owned() });
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        parse_udp_authority(spec, authority).map(Self::Udp)
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Udp(addr) => write!(f, "udp://{addr}"),
        }
    }
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`. Anything else before a
/// `://` is part of a path.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn parse_udp_authority(spec: &str, authority: &str) -> Result<SocketAddr, SpecError> {
    let bad_host = |host: &str, reason: &str| SpecError::BadHost {
        spec: spec.to_owned(),
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(bad_host(authority, "no closing ']'"));
        };
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => return Err(SpecError::MissingPort { spec: spec.to_owned() }),
            None => return Err(bad_host(authority, "expected ':PORT' after ']'")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(bad_host(authority, "an IPv6 address needs brackets: udp://[ADDR]:PORT"));
            }
            Some((host, port)) => (host, port),
            None => return Err(SpecError::MissingPort { spec: spec.to_owned() }),
        }
    };
    if port.is_empty() {
        return Err(SpecError::MissingPort { spec: spec.to_owned() });
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(SpecError::BadPort { spec: spec.to_owned(), port: port.to_owned() }),
    };
    if host.is_empty() {
        return Err(bad_host(host, "empty"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if authority.starts_with('[') {
        return Err(bad_host(host, "not an IPv6 address"));
    }
    let valid_name = host.split('.').all(|label| {
        !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !valid_name || host.len() > 253 {
        return Err(bad_host(host, "not an IP address or host name"));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| bad_host(host, "name has no addresses")),
        Err(e) => Err(bad_host(host, &format!("cannot resolve: {e}"))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open output {target}: {source}")]
    Open { target: String, source: io::Error },
    /// The reader went away (EPIPE): the usual end when the player quits.
    #[error("output {target} was closed by its reader")]
    Closed { target: String },
    #[error("writing to {target} failed: {source}")]
    Write { target: String, source: io::Error },
    #[error("output {target} did not take the rest of the stream within {timeout:?}")]
    FlushTimeout { target: String, timeout: Duration },
    /// The writer already failed and that error was reported.
    #[error("the output writer has stopped")]
    Stopped,
}

/// Counters of an [`OutputSink`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputStats {
    pub chunks_written: u64,
    pub bytes_written: u64,
    /// Chunks dropped because the queue was full, or after that until the next keyframe.
    pub chunks_dropped: u64,
    /// Times the queue was found full and output skipped to the next keyframe.
    pub skips: u64,
    /// udp:// only: datagrams sent, and datagrams the OS refused (not fatal: a route or
    /// interface may come back).
    pub datagrams_sent: u64,
    pub datagrams_failed: u64,
}

#[derive(Debug, Default)]
struct WriterCounters {
    chunks_written: AtomicU64,
    bytes_written: AtomicU64,
    datagrams_sent: AtomicU64,
    datagrams_failed: AtomicU64,
}

/// A chunk payload on its way to the writer, holding its share of the byte bound.
struct Queued {
    payload: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// Writes chunk payloads to an [`OutputSpec`] from a tokio task.
///
/// Call [`OutputSink::push`] for each chunk in order (never blocks), and
/// [`OutputSink::finish`] at the end to flush. Dropping the sink closes the queue; the
/// writer task ends on its own after writing what was queued.
#[derive(Debug)]
pub struct OutputSink {
    target: String,
    /// Bound: [`OUTPUT_QUEUE_CHUNKS`] chunks, and [`OUTPUT_QUEUE_BYTES`] through `queue_bytes`.
    queue: mpsc::Sender<Queued>,
    queue_bytes: Arc<Semaphore>,
    /// The writer's error, sent once when it fails. None once taken.
    writer_error: Option<oneshot::Receiver<OutputError>>,
    writer: JoinHandle<()>,
    counters: Arc<WriterCounters>,
    /// Dropping until the next keyframe (after the queue was full).
    skipping: bool,
    chunks_dropped: u64,
    skips: u64,
}

impl OutputSink {
    /// Opens the output (creates/truncates a file, binds a UDP socket) and starts its
    /// writer task. Must be called inside a tokio runtime.
    pub async fn open(spec: &OutputSpec) -> Result<Self, OutputError> {
        let target = spec.to_string();
        let open_error = |source| OutputError::Open { target: target.clone(), source };
        let destination = match spec {
            OutputSpec::Stdout => Destination::Stdout(tokio::io::stdout()),
            OutputSpec::File(path) => {
                Destination::File(tokio::fs::File::create(path).await.map_err(open_error)?)
            }
            OutputSpec::Udp(to) => Destination::Udp(UdpDestination::open(*to).await.map_err(open_error)?),
        };
        let (queue, queue_rx) = mpsc::channel(OUTPUT_QUEUE_CHUNKS);
        let (error_tx, writer_error) = oneshot::channel();
        let counters = Arc::new(WriterCounters::default());
        let writer =
            tokio::spawn(run_writer(destination, target.clone(), queue_rx, Arc::clone(&counters), error_tx));
        Ok(Self {
            target,
            queue,
            queue_bytes: Arc::new(Semaphore::new(OUTPUT_QUEUE_BYTES)),
            writer_error: Some(writer_error),
            writer,
            counters,
            skipping: false,
            chunks_dropped: 0,
            skips: 0,
        })
    }

    /// What this sink writes to, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Queues one chunk's payload. Never waits: if the queue is full the chunk is dropped,
    /// and so is everything after it up to the next keyframe (counted in the stats).
    /// Errors once the writer has failed (the first time with its error, then `Stopped`).
    pub fn push(&mut self, keyframe: bool, payload: Bytes) -> Result<(), OutputError> {
        // No receiver for the writer's error means it failed and that was reported.
        if self.writer_error.is_none() || self.writer.is_finished() || self.queue.is_closed() {
            return Err(self.take_error());
        }
        if self.skipping && !keyframe {
            self.chunks_dropped += 1;
            return Ok(());
        }
        // A chunk bigger than the whole byte bound takes all of it, so it still goes
        // through when the queue is empty.
        let permits = payload.len().min(OUTPUT_QUEUE_BYTES) as u32;
        let permit = match Arc::clone(&self.queue_bytes).try_acquire_many_owned(permits) {
            Ok(permit) => permit,
            Err(_) => {
                self.start_skipping();
                return Ok(());
            }
        };
        match self.queue.try_send(Queued { payload, _permit: permit }) {
            Ok(()) => {
                self.skipping = false;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.start_skipping();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.take_error()),
        }
    }

    /// Resolves when the writer fails (for `select!` next to the feed), with its error.
    pub async fn failed(&mut self) -> OutputError {
        match self.writer_error.as_mut() {
            Some(rx) => {
                let error = rx.await.unwrap_or(OutputError::Stopped);
                self.writer_error = None;
                error
            }
            None => std::future::pending().await,
        }
    }

    /// Writes out what is queued, flushes, and stops the writer. Gives up after
    /// [`FINISH_TIMEOUT`] if the reader has stopped reading, abandoning what is queued.
    pub async fn finish(self) -> Result<OutputStats, OutputError> {
        self.finish_within(FINISH_TIMEOUT).await
    }

    /// [`OutputSink::finish`] with another time limit.
    pub async fn finish_within(self, timeout: Duration) -> Result<OutputStats, OutputError> {
        let Self { target, queue, mut writer, writer_error, counters, chunks_dropped, skips, .. } = self;
        // Closing the queue ends the writer once it has written what is queued.
        drop(queue);
        // A JoinError would mean the writer panicked or the runtime is shutting down;
        // either way there is nothing left to flush.
        if tokio::time::timeout(timeout, &mut writer).await.is_err() {
            // A write already handed to a blocking thread (stdout, files) still finishes
            // or fails there; nothing more is written after it.
            writer.abort();
            return Err(OutputError::FlushTimeout { target, timeout });
        }
        if let Some(Ok(error)) = writer_error.map(|mut rx| rx.try_recv()) {
            return Err(error);
        }
        Ok(collect_stats(&counters, chunks_dropped, skips))
    }

    pub fn stats(&self) -> OutputStats {
        collect_stats(&self.counters, self.chunks_dropped, self.skips)
    }

    fn start_skipping(&mut self) {
        if !self.skipping {
            self.skips += 1;
            tracing::debug!(target = %self.target, "output queue full: skipping to the next keyframe");
        }
        self.skipping = true;
        self.chunks_dropped += 1;
    }

    fn take_error(&mut self) -> OutputError {
        match self.writer_error.take().map(|mut rx| rx.try_recv()) {
            Some(Ok(error)) => error,
            _ => OutputError::Stopped,
        }
    }
}

fn collect_stats(counters: &WriterCounters, chunks_dropped: u64, skips: u64) -> OutputStats {
    OutputStats {
        chunks_written: counters.chunks_written.load(Ordering::Relaxed),
        bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        chunks_dropped,
        skips,
        datagrams_sent: counters.datagrams_sent.load(Ordering::Relaxed),
        datagrams_failed: counters.datagrams_failed.load(Ordering::Relaxed),
    }
}

enum Destination {
    Stdout(tokio::io::Stdout),
    File(tokio::fs::File),
    Udp(UdpDestination),
}

impl Destination {
    async fn write(&mut self, payload: &[u8], counters: &WriterCounters) -> io::Result<()> {
        match self {
            // Flushed per chunk: std's stdout is line-buffered and a file may be a FIFO a
            // player reads; either way the chunk should leave now, not when a buffer fills.
            Self::Stdout(out) => {
                out.write_all(payload).await?;
                out.flush().await
            }
            Self::File(file) => {
                file.write_all(payload).await?;
                file.flush().await
            }
            Self::Udp(udp) => {
                udp.send(payload, counters).await;
                Ok(())
            }
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        match self {
            // No fsync: the file may be a FIFO or a device (where it fails), and a live
            // recording gains nothing from forcing each chunk to disk.
            Self::Stdout(out) => out.flush().await,
            Self::File(file) => file.flush().await,
            Self::Udp(_) => Ok(()),
        }
    }
}

struct UdpDestination {
    socket: UdpSocket,
    to: SocketAddr,
    /// Set after the first payload that is not whole TS packets, to warn once.
    warned_unaligned: bool,
}

impl UdpDestination {
    async fn open(to: SocketAddr) -> io::Result<Self> {
        let any: SocketAddr = match to {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Not connected: a connected UDP socket turns the ICMP "port unreachable" of a
        // player that is not running yet into an error on the next send.
        let socket = UdpSocket::bind(any).await?;
        match to.ip() {
            IpAddr::V4(ip) => {
                // Loop on so a player on this machine receives multicast; the TTL stays
                // at the OS default of 1 (this network segment only).
                if ip.is_multicast() {
                    socket.set_multicast_loop_v4(true)?;
                }
                // Allowed so udp://255.255.255.255:PORT or a subnet broadcast works.
                socket.set_broadcast(true)?;
            }
            IpAddr::V6(ip) => {
                if ip.is_multicast() {
                    socket.set_multicast_loop_v6(true)?;
                }
            }
        }
        Ok(Self { socket, to, warned_unaligned: false })
    }

    /// Sends a payload as datagrams of [`UDP_DATAGRAM_LEN`] bytes (the last one shorter,
    /// still whole packets). A failed send is counted and logged, not fatal.
    async fn send(&mut self, payload: &[u8], counters: &WriterCounters) {
        if payload.len() % TS_PACKET_LEN != 0 && !self.warned_unaligned {
            self.warned_unaligned = true;
            tracing::warn!(len = payload.len(), "chunk is not whole TS packets; sending it as is");
        }
        for datagram in payload.chunks(UDP_DATAGRAM_LEN) {
            match self.socket.send_to(datagram, self.to).await {
                Ok(_) => {
                    counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let failed = counters.datagrams_failed.fetch_add(1, Ordering::Relaxed);
                    // Warn on the first failure and every 1000th, not once per datagram.
                    if failed % 1000 == 0 {
                        tracing::warn!(to = %self.to, error = %e, failed = failed + 1, "udp output send failed");
                    }
                }
            }
        }
    }
}

async fn run_writer(
    mut destination: Destination,
    target: String,
    mut queue: mpsc::Receiver<Queued>,
    counters: Arc<WriterCounters>,
    error_tx: oneshot::Sender<OutputError>,
) {
    let write_error = |source: io::Error| match source.kind() {
        io::ErrorKind::BrokenPipe => OutputError::Closed { target: target.clone() },
        _ => OutputError::Write { target: target.clone(), source },
    };
    while let Some(item) = queue.recv().await {
        if let Err(e) = destination.write(&item.payload, &counters).await {
            let _ = error_tx.send(write_error(e));
            return;
        }
        counters.chunks_written.fetch_add(1, Ordering::Relaxed);
        counters.bytes_written.fetch_add(item.payload.len() as u64, Ordering::Relaxed);
    }
    if let Err(e) = destination.finish().await {
        let _ = error_tx.send(write_error(e));
    }
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
