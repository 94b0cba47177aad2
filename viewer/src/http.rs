//! The stream over HTTP: one long `video/mp2t` response per client, for mpv, VLC, ffplay
//! and browser players (CORS open), and the small HTTP/1.1 request reader it is built on,
//! shared with other endpoints (`rill relay --metrics`).
//!
//! No HTTP library: a server that answers `GET` with one endless body needs only a request
//! head parser, and a hand-written one with hard bounds ([`MAX_REQUEST_HEAD_BYTES`], a read
//! timeout) is less to audit than a general one. Responses are `Connection: close` and
//! end the body by closing (RFC 9112 §6.3, rule 8), so no chunked encoding either.
//!
//! # Fan-out
//! [`HttpStreamServer::push`] puts each chunk payload on one shared ring (a tokio
//! `broadcast` channel of [`HttpStreamConfig::client_queue_chunks`] entries): memory does
//! not grow with the number of clients or with how far one falls behind. A client that
//! falls more than the ring behind (a paused player, a slow link) loses its place; it is
//! then skipped forward to the next keyframe chunk (counted in `client_skips`), so it gets
//! a clean cut rather than a torn frame, and nobody else waits for it. The server keeps
//! the latest keyframe group (up to [`HttpStreamConfig::keyframe_group_max_bytes`]); a new
//! client gets it at once, so its player starts decoding without waiting for the next
//! keyframe, then follows live.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Bound on a request head (request line and header fields): 8 KiB, the smallest limit of
/// common servers (nginx's default buffer is 1 KiB + 8 KiB for large headers, Apache's
/// 8 KiB per line). Players send a few hundred bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;

/// Bound on header fields in a request head: 64.
pub const MAX_REQUEST_HEADERS: usize = 64;

/// Time a client gets to send its whole request head: 10 s. Bounds what a connection that
/// never finishes its request (slowloris) can hold.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After an error response, how long and how much the server reads and discards before
/// closing, so the client reads the response rather than a reset (RFC 9112 §9.6 on closing).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// Connections beyond the client limit that are still answered with 503 at once: 16.
/// Further ones are closed without an answer, so a flood costs no more than this.
const MAX_REJECTING: usize = 16;

/// Pause after a failed `accept` (e.g. out of file descriptors) before the next, so the
/// accept loop does not spin: 100 ms.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStreamConfig {
    /// Bound on connections served at once (streaming or not); more get 503. Default 64.
    pub max_clients: usize,
    /// Chunks a client may fall behind before it is skipped to the next keyframe: the
    /// length of the shared ring. Default 256 (over 6 s of 25 ms chunks).
    pub client_queue_chunks: usize,
    /// Bound on the kept keyframe group, bytes. A group that grows past it is dropped and
    /// new clients wait for the next keyframe. Default 8 MiB (16 s at 4 Mbit/s).
    pub keyframe_group_max_bytes: usize,
    /// Time a client gets to send its request head. Default [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// A client whose single write has not completed in this long is disconnected: it has
    /// stopped reading (a dead peer, or a player paused that long). Default 60 s.
    pub write_timeout: Duration,
}

impl Default for HttpStreamConfig {
    fn default() -> Self {
        Self {
            max_clients: 64,
            client_queue_chunks: 256,
            keyframe_group_max_bytes: 8 << 20,
            request_timeout: REQUEST_TIMEOUT,
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of an [`HttpStreamServer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Clients receiving the stream now.
    pub clients_now: u64,
    /// Stream clients since the start.
    pub clients_total: u64,
    /// Stream bytes sent (response heads not counted).
    pub bytes_sent: u64,
    /// Times a client fell behind by more than its queue and was skipped to a keyframe.
    pub client_skips: u64,
    /// Connections refused with 503 or closed because the client limit was reached.
    pub rejected_busy: u64,
    /// Requests answered 400, 408, 431 or 505.
    pub bad_requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    clients_now: AtomicU64,
    clients_total: AtomicU64,
    bytes_sent: AtomicU64,
    client_skips: AtomicU64,
    rejected_busy: AtomicU64,
    bad_requests: AtomicU64,
}

/// One chunk payload on the shared ring.
#[derive(Clone)]
struct Piece {
    keyframe: bool,
    payload: Bytes,
}

/// The ring and the latest keyframe group, under one lock so that a new client's snapshot
/// of the group and its place on the ring meet exactly: nothing missed, nothing twice.
struct Fanout {
    ring: broadcast::Sender<Piece>,
    /// Payloads since the latest keyframe, that keyframe first; empty if none yet or if the
    /// group outgrew `keyframe_group_max_bytes` (bound: that many bytes).
    group: Vec<Bytes>,
    group_bytes: usize,
    /// False after the group outgrew its bound, until the next keyframe.
    group_valid: bool,
    group_max_bytes: usize,
}

/// Serves the stream to HTTP clients. Dropping it stops accepting and ends every stream
/// (after what each client has queued).
pub struct HttpStreamServer {
    local_addr: SocketAddr,
    /// The only strong reference: connection tasks hold `Weak`s, so dropping the server
    /// drops the ring's sender and every client's stream ends.
    fanout: Arc<Mutex<Fanout>>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

impl fmt::Debug for HttpStreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStreamServer")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HttpStreamServer {
    /// Listens on `addr` with the default configuration.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, HttpStreamConfig::default()).await
    }

    /// Listens on `addr`. The error names the address (and says so if it is taken).
    pub async fn bind_with(addr: SocketAddr, config: HttpStreamConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                " (another program is listening there; choose another port)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("cannot serve HTTP on {addr}: {e}{hint}"))
        })?;
        let local_addr = listener.local_addr()?;
        let (ring, _) = broadcast::channel(config.client_queue_chunks.max(1));
        let fanout = Arc::new(Mutex::new(Fanout {
            ring,
            group: Vec::new(),
            group_bytes: 0,
            group_valid: false,
            group_max_bytes: config.keyframe_group_max_bytes,
        }));
        let counters = Arc::new(Counters::default());
        let accept_task =
            tokio::spawn(accept_loop(listener, Arc::downgrade(&fanout), Arc::clone(&counters), config));
        Ok(Self { local_addr, fanout, counters, accept_task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends one chunk payload to every client. Never waits on a client.
    pub fn push(&self, keyframe: bool, payload: Bytes) {
        let mut fanout = self.fanout.lock().unwrap_or_else(PoisonError::into_inner);
        let fanout = &mut *fanout;
        if keyframe {
            fanout.group.clear();
            fanout.group_bytes = 0;
            fanout.group_valid = true;
        }
        if fanout.group_valid {
            if fanout.group_bytes + payload.len() <= fanout.group_max_bytes {
                fanout.group_bytes += payload.len();
                fanout.group.push(payload.clone());
            } else {
                fanout.group.clear();
                fanout.group_bytes = 0;
                fanout.group_valid = false;
            }
        }
        // An error only says that no client is listening now.
        let _ = fanout.ring.send(Piece { keyframe, payload });
    }

    pub fn stats(&self) -> HttpStats {
        let c = &self.counters;
        HttpStats {
            clients_now: c.clients_now.load(Ordering::Relaxed),
            clients_total: c.clients_total.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            client_skips: c.client_skips.load(Ordering::Relaxed),
            rejected_busy: c.rejected_busy.load(Ordering::Relaxed),
            bad_requests: c.bad_requests.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HttpStreamServer {
    fn drop(&mut self) {
        // The accept loop holds only a Weak; stopping it frees the port now.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    fanout: Weak<Mutex<Fanout>>,
    counters: Arc<Counters>,
    config: HttpStreamConfig,
) {
    let config = Arc::new(config);
    // Bounds: connections served, and connections being told 503.
    let serving = Arc::new(Semaphore::new(config.max_clients));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Warn on the first failure and every 100th (out of file descriptors
                // repeats every ACCEPT_ERROR_PAUSE).
                if accept_errors % 100 == 0 {
                    tracing::warn!(error = %e, failures = accept_errors + 1, "http: accept failed");
                }
                accept_errors += 1;
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if let Ok(permit) = Arc::clone(&serving).try_acquire_owned() {
            let connection = Connection {
                fanout: Weak::clone(&fanout),
                counters: Arc::clone(&counters),
                config: Arc::clone(&config),
                _permit: permit,
            };
            tokio::spawn(connection.serve(stream, peer));
            continue;
        }
        counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
        if let Ok(permit) = Arc::clone(&rejecting).try_acquire_owned() {
            let timeout = config.request_timeout.min(LINGER);
            tokio::spawn(reject_busy(stream, timeout, permit));
        }
        // Else dropped: closed without an answer.
    }
}

async fn reject_busy(mut stream: TcpStream, timeout: Duration, _permit: OwnedSemaphorePermit) {
    // Read the request first (briefly) so the client is not reset before it reads the 503.
    let _ = read_request_head_within(&mut stream, timeout).await;
    let headers = [("Retry-After", "5")];
    let _ = respond_with(&mut stream, 503, &headers, "text/plain", b"too many clients\n").await;
    linger_close(&mut stream).await;
}

struct Connection {
    fanout: Weak<Mutex<Fanout>>,
    counters: Arc<Counters>,
    config: Arc<HttpStreamConfig>,
    /// Holds one of the `max_clients` places until the connection ends.
    _permit: OwnedSemaphorePermit,
}

/// Headers of every answer that is not an error: any web page may read the stream.
const CORS_ALLOW_ORIGIN: (&str, &str) = ("Access-Control-Allow-Origin", "*");
const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";

impl Connection {
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        let head = match read_request_head_within(&mut stream, self.config.request_timeout).await {
            Ok(head) => head,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "http: bad request");
                if e.status().is_some() {
                    self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    let _ = respond_error(&mut stream, &e).await;
                    linger_close(&mut stream).await;
                }
                return;
            }
        };
        match head.method.as_str() {
            "GET" | "HEAD" => self.stream(stream, peer, head.method == "HEAD").await,
            "OPTIONS" => {
                // CORS preflight (Fetch standard, "CORS-preflight request"): allow any
                // origin and the headers asked for.
                let asked = head.header("access-control-request-headers").unwrap_or("");
                let allow_headers =
                    if !asked.is_empty() && asked.bytes().all(is_header_list_byte) { asked } else { "*" };
                let headers = [
                    CORS_ALLOW_ORIGIN,
                    ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                    ("Access-Control-Allow-Headers", allow_headers),
                    ("Access-Control-Max-Age", "86400"),
                    ("Allow", ALLOWED_METHODS),
                ];
                let _ = respond_with(&mut stream, 204, &headers, "", b"").await;
                linger_close(&mut stream).await;
            }
            _ => {
                let headers = [CORS_ALLOW_ORIGIN, ("Allow", ALLOWED_METHODS)];
                let _ = respond_with(&mut stream, 405, &headers, "text/plain", b"method not allowed\n").await;
                linger_close(&mut stream).await;
            }
        }
    }

    /// Answers GET (the stream, until either side stops) or HEAD (its headers).
    async fn stream(self, mut stream: TcpStream, peer: SocketAddr, head_only: bool) {
        /// The head of the one long response: no Content-Length, the body ends when the
        /// connection does.
        const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
            Content-Type: video/mp2t\r\n\
            Access-Control-Allow-Origin: *\r\n\
            Cache-Control: no-cache, no-store\r\n\
            Connection: close\r\n\r\n";
        if head_only {
            let _ = self.write(&mut stream, STREAM_HEAD).await;
            let _ = stream.shutdown().await;
            return;
        }
        // Join the ring and take the group in one step (see `Fanout`).
        let joined = self.fanout.upgrade().map(|fanout| {
            let fanout = fanout.lock().unwrap_or_else(PoisonError::into_inner);
            (fanout.ring.subscribe(), fanout.group.clone())
        });
        let Some((mut ring, group)) = joined else {
            // The server is shutting down.
            let _ = respond(&mut stream, 503, "text/plain", b"shutting down\n").await;
            return;
        };
        let _ = stream.set_nodelay(true); // a chunk's tail should not wait for an ACK
        if self.write(&mut stream, STREAM_HEAD).await.is_err() {
            return;
        }
        let _live = LiveClient::start(&self.counters);
        tracing::debug!(%peer, group_chunks = group.len(), "http: stream client joined");
        let (mut reader, mut writer) = stream.split();
        // With no group held, wait for a keyframe: a player cannot start elsewhere.
        let mut skipping = group.is_empty();
        for payload in &group {
            if self.write_counted(&mut writer, payload).await.is_err() {
                return;
            }
        }
        // The client sends nothing after its request; reading only tells when it closes.
        let mut discard = [0u8; 512];
        loop {
            tokio::select! {
                piece = ring.recv() => match piece {
                    Ok(piece) => {
                        if skipping && !piece.keyframe {
                            continue;
                        }
                        skipping = false;
                        if self.write_counted(&mut writer, &piece.payload).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.counters.client_skips.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, missed, "http: client fell behind, skipping to the next keyframe");
                        skipping = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                read = reader.read(&mut discard) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        let _ = writer.shutdown().await;
        tracing::debug!(%peer, "http: stream client left");
    }

    async fn write<W: AsyncWrite + Unpin>(&self, writer: &mut W, bytes: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(self.config.write_timeout, writer.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
        }
    }

    async fn write_counted<W: AsyncWrite + Unpin>(&self, writer: &mut W, bytes: &[u8]) -> io::Result<()> {
        self.write(writer, bytes).await?;
        self.counters.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Counts a stream client in `clients_now` for as long as it lives.
struct LiveClient<'a>(&'a Counters);

impl<'a> LiveClient<'a> {
    fn start(counters: &'a Counters) -> Self {
        counters.clients_now.fetch_add(1, Ordering::Relaxed);
        counters.clients_total.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for LiveClient<'_> {
    fn drop(&mut self) {
        self.0.clients_now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes allowed when echoing `Access-Control-Request-Headers`: a comma-separated list of
/// header names (RFC 9110 §5.1 tokens).
fn is_header_list_byte(b: u8) -> bool {
    is_tchar(b) || b == b',' || b == b' '
}

/// Closes after a response: FIN, then read and discard what the client still sends, for a
/// bounded time and amount, so its unread request does not turn the close into a reset
/// that destroys the response in flight.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut discard = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

// ---------------------------------------------------------------------------------------
// Request heads and simple responses, for this server and other small endpoints.

/// A parsed HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// As sent (methods are case-sensitive, RFC 9110 §9.1).
    pub method: String,
    /// The request target as sent, e.g. `/stream.ts?x=1`.
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order, names as sent, values without surrounding whitespace
    /// (non-UTF-8 bytes replaced). Bound: [`MAX_REQUEST_HEADERS`].
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header field, its name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The target without its query, e.g. `/metrics`.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(path, _)| path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
    #[error("no complete request within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete request")]
    Closed,
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

impl HttpError {
    /// The status to answer with, if the client is owed an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => Some(431),
            Self::Malformed(_) => Some(400),
            Self::Version => Some(505),
            Self::Timeout(_) => Some(408),
            Self::Closed | Self::Io(_) => None,
        }
    }
}

/// Reads and parses a request head within [`REQUEST_TIMEOUT`] and [`MAX_REQUEST_HEAD_BYTES`].
pub async fn read_request_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<RequestHead, HttpError> {
    read_request_head_within(stream, REQUEST_TIMEOUT).await
}

/// [`read_request_head`] with another timeout. Bytes after the head (a body, a pipelined
/// request) may have been read and are discarded: answer, then close.
pub async fn read_request_head_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<RequestHead, HttpError> {
    let read = async {
        // Bound: MAX_REQUEST_HEAD_BYTES plus one read.
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = head_end(&buf) {
                if end > MAX_REQUEST_HEAD_BYTES {
                    return Err(HttpError::HeadTooLarge { limit: MAX_REQUEST_HEAD_BYTES });
                }
                return parse_request_head(&buf[..end]);
            }
            if buf.len() > MAX_REQUEST_HEAD_BYTES {
                return Err(HttpError::HeadTooLarge { limit: MAX_REQUEST_HEAD_BYTES });
            }
        }
    };
    tokio::time::timeout(timeout, read).await.unwrap_or(Err(HttpError::Timeout(timeout)))
}

/// Where the head ends (just past its empty line), if it does. Lines end in CRLF or, as
/// RFC 9112 §2.2 lets a recipient accept, a bare LF; empty lines before the request line
/// are skipped (same section).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut seen_request_line = false;
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        let empty = line.is_empty() || line == b"\r";
        if empty && seen_request_line {
            return Some(i + 1);
        }
        seen_request_line |= !empty;
        line_start = i + 1;
    }
    None
}

/// Parses a complete head (as delimited by `head_end`), RFC 9112 §3 and §5.
fn parse_request_head(head: &[u8]) -> Result<RequestHead, HttpError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .skip_while(|line| line.is_empty());
    let request_line = lines.next().ok_or(HttpError::Malformed("no request line"))?;
    if request_line.contains(&b'\r') {
        return Err(HttpError::Malformed("bare CR"));
    }
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line is not METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("bad method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(HttpError::Malformed("bad request target"));
    }
    let minor_version = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit() =>
        {
            return Err(HttpError::Version);
        }
        _ => return Err(HttpError::Malformed("bad HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        if line.contains(&b'\r') || line.contains(&0) {
            return Err(HttpError::Malformed("bad character in header field"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Obsolete line folding, RFC 9112 §5.2: rejecting it is allowed and simplest.
            return Err(HttpError::Malformed("folded header line"));
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(HttpError::Malformed("header without ':'"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // No whitespace between name and colon (RFC 9112 §5.1: must be rejected).
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::Malformed("bad header name"));
        }
        if headers.len() == MAX_REQUEST_HEADERS {
            return Err(HttpError::TooManyHeaders { limit: MAX_REQUEST_HEADERS });
        }
        let value = value.trim_ascii();
        headers
            .push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    let head = RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        minor_version,
        headers,
    };
    // RFC 9112 §3.2: an HTTP/1.1 request without Host must be answered 400.
    if head.minor_version == 1 && head.header("host").is_none() {
        return Err(HttpError::Malformed("HTTP/1.1 request without Host"));
    }
    Ok(head)
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reason phrase of a status code this module uses (RFC 9110 §15), or "".
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes a complete response (`Content-Length`, `Cache-Control: no-cache`,
/// `Connection: close`, CORS open with `Access-Control-Allow-Origin: *`), then shuts down
/// the write side. The caller closes the connection.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    respond_with(stream, status, &[CORS_ALLOW_ORIGIN], content_type, body).await
}

/// [`respond`] with extra header fields (and without the CORS header unless given).
/// `content_type` may be empty for none. Header names and values must not contain CR or
/// LF; ones that do are left out rather than let a caller's mistake split the response.
pub async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    let safe = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
    if !content_type.is_empty() && safe(content_type) {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    for (name, value) in headers.iter().filter(|(n, v)| safe(n) && safe(v)) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // A 204 carries no Content-Length (RFC 9110 §8.6).
    if status != 204 {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// Answers a request-head error with its status (400, 408, 431, 505), if it has one.
pub async fn respond_error<S: AsyncWrite + Unpin>(stream: &mut S, error: &HttpError) -> io::Result<()> {
    match error.status() {
        Some(status) => {
            let body = format!("{error}\n");
            respond(stream, status, "text/plain", body.as_bytes()).await
        }
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
