//! Where the transport stream comes from: stdin, a file played as a live channel, or UDP.
//!
//! [`InputSpec::parse`] reads the command-line form; [`open`] opens it; [`Input::read`]
//! returns batches of bytes with the time they were read, for [`crate::Chunker::push`].
//!
//! - **stdin** and **files** are read on a dedicated thread (blocking reads; a thread blocked
//!   on a terminal or pipe must not hold up runtime shutdown, which tokio's blocking pool
//!   would), in batches of up to 64 KiB, at most 4 batches ahead (256 KiB).
//! - **Files** are played as live: every packet is released at the time its PCR says
//!   ([`PcrPacer`]), and with `loop_forever` the file repeats with continuous timestamps and
//!   continuity counters ([`LoopRewriter`]). Bytes that are not packets are passed through
//!   (the chunker counts and drops them), so the first pass reaches the chunker byte for
//!   byte as the file holds it.
//! - **UDP** (`udp://`) binds a socket (multicast groups are joined on all interfaces) and
//!   returns the datagrams that arrived, several per batch when they queue up. Datagrams
//!   normally carry 7 packets (1316 bytes); others are passed on as they are and the chunker
//!   resynchronises. Datagrams from every sender are accepted: one stream per port.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::framer::{PacketFramer, Segment};
use crate::looper::{LoopRewriter, PcrPacer, DEFAULT_FALLBACK_RATE_BPS};
use crate::ts::PACKET_LEN;

/// Largest batch [`Input::read`] returns, and the size of one blocking read: 64 KiB, what a
/// pipe holds on Linux.
pub const MAX_BATCH: usize = 64 * 1024;

/// Batches the reader thread may have read ahead of the consumer: 4 (256 KiB).
const READ_AHEAD_BATCHES: usize = 4;

/// Default UDP receive buffer: 4 MiB, a third of a second at 100 Mbit/s, so a short stall of
/// the reading task does not drop datagrams (the kernel may grant less: see
/// `net.core.rmem_max`).
pub const DEFAULT_UDP_RECV_BUFFER: usize = 4 << 20;

/// Largest UDP payload: 65535 less the 8-byte UDP header (IPv6; IPv4's IP header takes 20
/// bytes more). Below [`MAX_BATCH`], so one datagram always fits in a batch.
const MAX_DATAGRAM: usize = 65_527;

/// Where the stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// `-`
    Stdin,
    /// A path (or `file://path`).
    File(PathBuf),
    /// `udp://HOST:PORT`: the local address to receive on; a multicast address is joined.
    Udp(SocketAddr),
    /// A TS file held in memory (the built-in sample), played like a file. Never parsed
    /// from text: only code makes one.
    Memory { name: &'static str, bytes: Bytes },
}

impl InputSpec {
    /// Whether `loop_forever` can apply (a regular file, or bytes in memory).
    pub fn is_loopable(&self) -> bool {
        matches!(self, InputSpec::File(_) | InputSpec::Memory { .. })
    }
}

/// Why an input spec cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("empty input: give '-' for stdin, a file path, or udp://HOST:PORT")]
    Empty,
    #[error("unsupported input '{spec}': scheme '{scheme}://' is not supported (use '-' for stdin, a file path, or udp://HOST:PORT)")]
    UnsupportedScheme { spec: String, scheme: String },
    #[error("'{spec}': missing port (for example udp://:5000 to listen on all interfaces, or udp://239.0.0.1:5000 for a multicast group)")]
    MissingPort { spec: String },
    #[error("'{spec}': invalid port '{port}' (1-65535)")]
    BadPort { spec: String, port: String },
    #[error("'{spec}': invalid host '{host}': use an IP address (0.0.0.0, 192.168.1.10, 239.0.0.1, [::1]), 'localhost', or nothing for all interfaces")]
    BadHost { spec: String, host: String },
    #[error("'{spec}': options after '?' are not supported; remove them")]
    UdpOptions { spec: String },
}

impl InputSpec {
    /// Parses `-`, `udp://HOST:PORT` (`udp://:PORT` and `udp://@:PORT` listen on all
    /// interfaces, as ffmpeg and VLC write them; `udp://@HOST:PORT` is the same as without
    /// `@`), `file://PATH`, or a file path. Other `scheme://` forms are rejected rather than
    /// taken as file names.
    pub fn parse(s: &str) -> Result<InputSpec, SpecError> {
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        if s == "-" {
            return Ok(InputSpec::Stdin);
        }
        if let Some(rest) = strip_prefix_ignore_case(s, "udp://") {
            return parse_udp(s, rest).map(InputSpec::Udp);
        }
        if let Some(rest) = strip_prefix_ignore_case(s, "file://") {
            return if rest.is_empty() {
                Err(SpecError::Empty)
            } else {
                Ok(InputSpec::File(PathBuf::from(rest)))
            };
        }
        if let Some((scheme, _)) = s.split_once("://") {
            let is_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if is_scheme {
                return Err(SpecError::UnsupportedScheme { spec: s.to_string(), scheme: scheme.to_string() });
            }
        }
        Ok(InputSpec::File(PathBuf::from(s)))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn parse_udp(spec: &str, rest: &str) -> Result<SocketAddr, SpecError> {
    if rest.contains('?') {
        return Err(SpecError::UdpOptions { spec: spec.to_string() });
    }
    // '@' means "receive" in VLC's syntax; receiving is all rill does with udp://.
    let rest = rest.strip_prefix('@').unwrap_or(rest);
    let missing_port = || SpecError::MissingPort { spec: spec.to_string() };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| SpecError::BadHost { spec: spec.to_string(), host: rest.to_string() })?;
        (host, after.strip_prefix(':').ok_or_else(missing_port)?)
    } else {
        let (host, port) = rest.rsplit_once(':').ok_or_else(missing_port)?;
        if host.contains(':') {
            // "::1:5000" could be an address with a port or an address without one.
            return Err(SpecError::BadHost { spec: spec.to_string(), host: host.to_string() });
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(missing_port());
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(SpecError::BadPort { spec: spec.to_string(), port: port.to_string() }),
    };
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        h if h.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse::<IpAddr>()
            .map_err(|_| SpecError::BadHost { spec: spec.to_string(), host: h.to_string() })?,
    };
    Ok(SocketAddr::new(ip, port))
}

impl FromStr for InputSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InputSpec::parse(s)
    }
}

impl fmt::Display for InputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputSpec::Stdin => f.write_str("stdin"),
            InputSpec::File(path) => write!(f, "{}", path.display()),
            InputSpec::Udp(addr) => write!(f, "udp://{addr}"),
            InputSpec::Memory { name, .. } => f.write_str(name),
        }
    }
}

/// How to open an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputOptions {
    /// Play a file over and over as one continuous channel. Files only.
    pub loop_forever: bool,
    /// Pace of a file without PCRs, bit/s. Default 4 Mbit/s.
    pub fallback_rate_bps: u64,
    /// Receive buffer asked for a UDP socket, bytes. Default 4 MiB.
    pub udp_recv_buffer_bytes: usize,
}

impl Default for InputOptions {
    fn default() -> Self {
        InputOptions {
            loop_forever: false,
            fallback_rate_bps: DEFAULT_FALLBACK_RATE_BPS,
            udp_recv_buffer_bytes: DEFAULT_UDP_RECV_BUFFER,
        }
    }
}

/// Why an input cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {}: it is a directory", path.display())]
    IsDirectory { path: PathBuf },
    #[error("cannot loop {}: not a regular file (a pipe or device cannot be rewound)", path.display())]
    NotSeekable { path: PathBuf },
    #[error("looping needs a file input, not {input}")]
    LoopNeedsFile { input: String },
    #[error("no MPEG-TS packets in {}: nothing to loop", path.display())]
    NoPackets { path: PathBuf },
    #[error("cannot listen on udp://{addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot join multicast group {group}: {source}")]
    JoinMulticast { group: IpAddr, source: io::Error },
    #[error("reading {input}: {source}")]
    Read { input: String, source: io::Error },
}

/// An open input. See the module documentation.
#[derive(Debug)]
pub struct Input {
    spec: InputSpec,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Stream(mpsc::Receiver<Feed>),
    File(Box<FileInput>),
    Udp(UdpInput),
}

/// Opens `spec`. Errors name the path or address: a missing or unreadable file, a
/// directory, a port in use, `loop_forever` on something that is not a regular file.
pub async fn open(spec: &InputSpec, options: &InputOptions) -> Result<Input, SourceError> {
    if options.loop_forever && !spec.is_loopable() {
        return Err(SourceError::LoopNeedsFile { input: spec.to_string() });
    }
    let kind = match spec {
        InputSpec::Stdin => {
            let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
            let (opened_tx, opened_rx) = oneshot::channel();
            spawn_reader("rill-stdin", tx, opened_tx, move || {
                Ok((Box::new(StdinReader(io::stdin())) as Box<dyn ReadSeek>, false))
            });
            wait_opened(opened_rx).await?;
            Kind::Stream(rx)
        }
        InputSpec::File(path) => {
            let (thread_path, loop_forever) = (path.clone(), options.loop_forever);
            open_paced(path.clone(), options, move || open_file(&thread_path, loop_forever)).await?
        }
        InputSpec::Memory { name, bytes } => {
            let (bytes, loop_forever) = (bytes.clone(), options.loop_forever);
            open_paced(PathBuf::from(name), options, move || {
                Ok((Box::new(io::Cursor::new(bytes)) as Box<dyn ReadSeek>, loop_forever))
            })
            .await?
        }
        InputSpec::Udp(addr) => {
            let socket = bind_udp(*addr, options.udp_recv_buffer_bytes)?;
            let local = socket.local_addr().map_err(|source| SourceError::Bind { addr: *addr, source })?;
            let socket = tokio::net::UdpSocket::from_std(socket)
                .map_err(|source| SourceError::Bind { addr: *addr, source })?;
            Kind::Udp(UdpInput { socket, local, buf: vec![0; MAX_DATAGRAM].into_boxed_slice(), held: 0 })
        }
    };
    Ok(Input { spec: spec.clone(), kind })
}

/// A file-like input (a file or bytes in memory), read by a thread and paced by PCR.
async fn open_paced<F>(path: PathBuf, options: &InputOptions, open: F) -> Result<Kind, SourceError>
where
    F: FnOnce() -> Result<(Box<dyn ReadSeek>, bool), SourceError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
    let (opened_tx, opened_rx) = oneshot::channel();
    spawn_reader("rill-file", tx, opened_tx, open);
    wait_opened(opened_rx).await?;
    let now = now();
    Ok(Kind::File(Box::new(FileInput {
        rx,
        path,
        framer: PacketFramer::new(),
        rewriter: LoopRewriter::new(),
        pacer: PcrPacer::new(now, options.fallback_rate_bps),
        staged: BytesMut::new(),
        schedule: VecDeque::new(),
        last_release: now,
        ended: false,
        pending_error: None,
    })))
}

impl Input {
    /// The next batch of bytes and when it was read (for a file: when it was released), or
    /// `None` at the end of a finite input. Cancel-safe: dropping the future loses nothing.
    pub async fn read(&mut self) -> Result<Option<(Instant, Bytes)>, SourceError> {
        match &mut self.kind {
            Kind::Stream(rx) => loop {
                match rx.recv().await {
                    Some(Feed::Data(at, bytes)) => return Ok(Some((at, bytes))),
                    Some(Feed::EndOfPass) => continue,
                    Some(Feed::Eof) | None => return Ok(None),
                    Some(Feed::Failed(source)) => {
                        return Err(SourceError::Read { input: self.spec.to_string(), source })
                    }
                }
            },
            Kind::File(file) => file.read().await,
            Kind::Udp(udp) => udp.read(&self.spec).await.map(Some),
        }
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// The bound address of a UDP input (useful when the spec asked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            Kind::Udp(udp) => Some(udp.local),
            _ => None,
        }
    }

    /// Passes of a file completed so far (looping).
    pub fn passes(&self) -> u64 {
        match &self.kind {
            Kind::File(file) => file.rewriter.pass(),
            _ => 0,
        }
    }
}

/// The clock, through tokio so tests can run on its paused clock.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// From the reader thread.
#[derive(Debug)]
enum Feed {
    Data(Instant, Bytes),
    /// A looped file reached its end and was rewound.
    EndOfPass,
    Eof,
    Failed(io::Error),
}

trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// Stdin where the reader thread takes a file; it is never rewound (looping needs a
/// regular file, which `open` checks).
struct StdinReader(io::Stdin);

impl Read for StdinReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for StdinReader {
    fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "stdin cannot be rewound"))
    }
}

fn open_file(path: &Path, loop_forever: bool) -> Result<(Box<dyn ReadSeek>, bool), SourceError> {
    let file =
        std::fs::File::open(path).map_err(|source| SourceError::Open { path: path.to_path_buf(), source })?;
    let meta = file.metadata().map_err(|source| SourceError::Open { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        return Err(SourceError::IsDirectory { path: path.to_path_buf() });
    }
    if loop_forever && !meta.is_file() {
        return Err(SourceError::NotSeekable { path: path.to_path_buf() });
    }
    Ok((Box::new(file), loop_forever))
}

async fn wait_opened(opened: oneshot::Receiver<Result<(), SourceError>>) -> Result<(), SourceError> {
    match opened.await {
        Ok(result) => result,
        // The thread could not start or died before reporting.
        Err(_) => Err(SourceError::Read {
            input: "input".to_string(),
            source: io::Error::other("reader thread ended before opening the input"),
        }),
    }
}

/// Starts the reader thread: it opens the input with `open` (reporting the result on
/// `opened`), then reads batches into `tx` until end of input, an error, or the receiver is
/// dropped. With looping, it rewinds at the end and reports `EndOfPass`; a pass that read
/// nothing ends the input instead of spinning.
fn spawn_reader<F>(
    name: &str,
    tx: mpsc::Sender<Feed>,
    opened: oneshot::Sender<Result<(), SourceError>>,
    open: F,
) where
    F: FnOnce() -> Result<(Box<dyn ReadSeek>, bool), SourceError> + Send + 'static,
{
    let body = move || {
        let (mut reader, loop_forever) = match open() {
            Ok(r) => r,
            Err(e) => {
                let _ = opened.send(Err(e));
                return;
            }
        };
        if opened.send(Ok(())).is_err() {
            return;
        }
        let mut buf = vec![0u8; MAX_BATCH];
        let mut pass_bytes = 0u64;
        loop {
            let feed = match reader.read(&mut buf) {
                Ok(0) if loop_forever && pass_bytes > 0 => match reader.seek(SeekFrom::Start(0)) {
                    Ok(_) => {
                        pass_bytes = 0;
                        Feed::EndOfPass
                    }
                    Err(e) => Feed::Failed(e),
                },
                Ok(0) => Feed::Eof,
                Ok(n) => {
                    pass_bytes += n as u64;
                    Feed::Data(Instant::now(), Bytes::copy_from_slice(&buf[..n]))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Feed::Failed(e),
            };
            let last = matches!(feed, Feed::Eof | Feed::Failed(_));
            if tx.blocking_send(feed).is_err() || last {
                return;
            }
        }
    };
    if let Err(e) = std::thread::Builder::new().name(name.to_string()).spawn(body) {
        // `opened` went into the closure, which was dropped: `wait_opened` reports it.
        tracing::error!("cannot start the input reader thread: {e}");
    }
}

/// A file played at its PCR pace.
#[derive(Debug)]
struct FileInput {
    rx: mpsc::Receiver<Feed>,
    path: PathBuf,
    framer: PacketFramer,
    rewriter: LoopRewriter,
    pacer: PcrPacer,
    /// Bytes framed and timed, waiting for release: at most one read batch plus the
    /// framer's window, since the next batch is taken only when this is empty.
    staged: BytesMut,
    /// (release time, bytes) for the staged bytes, in order.
    schedule: VecDeque<(Instant, usize)>,
    last_release: Instant,
    ended: bool,
    /// Reported once the bytes staged before it have been returned.
    pending_error: Option<SourceError>,
}

impl FileInput {
    async fn read(&mut self) -> Result<Option<(Instant, Bytes)>, SourceError> {
        loop {
            if let Some(&(release, _)) = self.schedule.front() {
                if release > now() {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                }
                let now = now();
                let mut n = 0;
                while let Some(&(release, len)) = self.schedule.front() {
                    if release > now || (n > 0 && n + len > MAX_BATCH) {
                        break;
                    }
                    n += len;
                    self.schedule.pop_front();
                }
                return Ok(Some((now, self.staged.split_to(n).freeze())));
            }
            if self.ended {
                return match self.pending_error.take() {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            }
            match self.rx.recv().await {
                Some(Feed::Data(_, bytes)) => self.stage(&bytes),
                Some(Feed::EndOfPass) => {
                    self.flush_framer();
                    if self.rewriter.packets_this_pass() == 0 {
                        // Looping a file with no packets would spin on it forever.
                        self.ended = true;
                        self.pending_error = Some(SourceError::NoPackets { path: self.path.clone() });
                    } else {
                        self.rewriter.end_pass();
                        tracing::debug!(path = %self.path.display(), pass = self.rewriter.pass(), "looping");
                    }
                }
                Some(Feed::Eof) | None => {
                    self.flush_framer();
                    self.ended = true;
                }
                Some(Feed::Failed(source)) => {
                    self.flush_framer();
                    self.ended = true;
                    let input = self.path.display().to_string();
                    self.pending_error = Some(SourceError::Read { input, source });
                }
            }
        }
    }

    /// Frames, rewrites and times a batch read from the file.
    fn stage(&mut self, bytes: &[u8]) {
        let Self { framer, rewriter, pacer, staged, schedule, last_release, .. } = self;
        framer.push(bytes, &mut |segment| {
            stage_segment(segment, rewriter, pacer, staged, schedule, last_release)
        });
    }

    /// End of a pass or of the file: bytes held by the framer (a partial packet, garbage)
    /// go through as they are.
    fn flush_framer(&mut self) {
        let Self { framer, rewriter, pacer, staged, schedule, last_release, .. } = self;
        framer.finish(&mut |segment| stage_segment(segment, rewriter, pacer, staged, schedule, last_release));
    }
}

fn stage_segment(
    segment: Segment<'_>,
    rewriter: &mut LoopRewriter,
    pacer: &mut PcrPacer,
    staged: &mut BytesMut,
    schedule: &mut VecDeque<(Instant, usize)>,
    last_release: &mut Instant,
) {
    let (at, len) = match segment {
        Segment::Packet(packet) => {
            let mut packet = *packet;
            rewriter.rewrite(&mut packet);
            *last_release = pacer.release_at(&packet);
            staged.extend_from_slice(&packet);
            (*last_release, PACKET_LEN)
        }
        // Not packets: released with what came before, for the chunker to count and drop.
        Segment::Skipped(bytes) | Segment::Partial(bytes) => {
            staged.extend_from_slice(bytes);
            (*last_release, bytes.len())
        }
    };
    match schedule.back_mut() {
        Some((back_at, back_len)) if *back_at == at && *back_len + len <= MAX_BATCH => *back_len += len,
        _ => schedule.push_back((at, len)),
    }
}

#[derive(Debug)]
struct UdpInput {
    socket: tokio::net::UdpSocket,
    local: SocketAddr,
    /// One datagram, the largest UDP allows.
    buf: Box<[u8]>,
    /// Length of a datagram in `buf` that did not fit in the last batch.
    held: usize,
}

impl UdpInput {
    async fn read(&mut self, spec: &InputSpec) -> Result<(Instant, Bytes), SourceError> {
        let mut out = BytesMut::new();
        if self.held > 0 {
            out.extend_from_slice(&self.buf[..std::mem::take(&mut self.held)]);
        }
        while out.is_empty() {
            match self.socket.recv(&mut self.buf).await {
                Ok(n) => out.extend_from_slice(&self.buf[..n]),
                Err(e) if is_transient(&e) => continue,
                Err(source) => return Err(SourceError::Read { input: spec.to_string(), source }),
            }
        }
        // Take what else has queued up, so a burst costs one wakeup.
        while out.len() < MAX_BATCH {
            match self.socket.try_recv(&mut self.buf) {
                Ok(n) if out.len() + n > MAX_BATCH => self.held = n,
                Ok(n) => out.extend_from_slice(&self.buf[..n]),
                Err(e) if is_transient(&e) => continue,
                // WouldBlock, or an error the next read will report.
                Err(_) => break,
            }
            if self.held > 0 {
                break;
            }
        }
        Ok((now(), out.freeze()))
    }
}

/// Errors a receiving UDP socket can get that say nothing about it: ICMP port unreachable
/// for an earlier send (Linux reports it on the next call), an interrupted call.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// Binds a UDP socket for `addr`; a multicast address is joined on all interfaces with the
/// socket bound to the unspecified address and the group's port.
fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> Result<std::net::UdpSocket, SourceError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let group = addr.ip().is_multicast().then_some(addr.ip());
    let bind_addr = match group {
        Some(IpAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port()),
        Some(IpAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port()),
        None => addr,
    };
    let bind_error = |source| SourceError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(bind_addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_error)?;
    if group.is_some() {
        // Several receivers of one group on a host (a player and rill) share the port, as
        // VLC and ffmpeg do. Not for unicast, where it would hide "address in use".
        socket.set_reuse_address(true).map_err(bind_error)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::debug!("cannot set the UDP receive buffer to {recv_buffer} bytes: {e}");
    }
    socket.bind(&bind_addr.into()).map_err(bind_error)?;
    match group {
        Some(IpAddr::V4(g)) => socket.join_multicast_v4(&g, &Ipv4Addr::UNSPECIFIED),
        Some(IpAddr::V6(g)) => socket.join_multicast_v6(&g, 0),
        None => Ok(()),
    }
    .map_err(|source| SourceError::JoinMulticast { group: addr.ip(), source })?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    if let Ok(granted) = socket.recv_buffer_size() {
        if granted < recv_buffer {
            tracing::info!(
                "UDP receive buffer is {granted} bytes (asked for {recv_buffer}); raise net.core.rmem_max \
                 if datagrams are dropped at high bitrates"
            );
        }
    }
    Ok(socket.into())
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
