use std::net::Ipv4Addr;

use tokio::net::TcpSocket;

use super::*;
use crate::testutil::ts;

const TS_PACKET_LEN: usize = 188;
const WAIT: Duration = Duration::from_secs(10);

/// The chunk tags of a TS byte stream, consecutive repeats merged.
fn chunk_tags(stream: &[u8]) -> Vec<u32> {
    assert_eq!(stream.len() % TS_PACKET_LEN, 0, "whole packets");
    let mut tags: Vec<u32> = stream
        .chunks(TS_PACKET_LEN)
        .map(|p| {
            assert_eq!(p[0], 0x47, "sync byte");
            u32::from_be_bytes([p[1], p[2], p[3], p[4]])
        })
        .collect();
    tags.dedup();
    tags
}

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

async fn server(config: HttpStreamConfig) -> HttpStreamServer {
    HttpStreamServer::bind_with(loopback(), config).await.expect("bind loopback")
}

async fn get(addr: SocketAddr, method: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    stream
}

/// Reads a response head byte by byte (leaving the body unread).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n =
            tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("head in time").expect("read");
        assert_ne!(n, 0, "closed inside the head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf)).await.expect("data in time").expect("read");
    buf
}

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut all)).await.expect("EOF in time").expect("read");
    all
}

/// Sends raw bytes, returns everything the server answers until it closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    String::from_utf8_lossy(&read_to_end(&mut stream).await).into_owned()
}

async fn wait_for(server: &HttpStreamServer, what: &str, cond: impl Fn(&HttpStats) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond(&server.stats()) {
        assert!(tokio::time::Instant::now() < deadline, "waiting for {what}: {:?}", server.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn has_header(head: &str, line: &str) -> bool {
    head.split("\r\n").any(|l| l.eq_ignore_ascii_case(line))
}

#[tokio::test]
async fn two_clients_get_identical_bytes_from_the_latest_keyframe() {
    let srv = server(HttpStreamConfig::default()).await;
    for tag in 0..5 {
        srv.push(tag == 0 || tag == 3, ts(tag, 2));
    }
    let mut a = get(srv.local_addr(), "GET", "/stream.ts").await;
    let mut b = get(srv.local_addr(), "GET", "/").await;
    for client in [&mut a, &mut b] {
        let head = read_head(client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(has_header(&head, "Content-Type: video/mp2t"), "{head}");
        assert!(has_header(&head, "Access-Control-Allow-Origin: *"), "{head}");
        assert!(has_header(&head, "Connection: close"), "{head}");
        assert!(head.to_ascii_lowercase().contains("cache-control: no-cache"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
    }
    wait_for(&srv, "two clients", |s| s.clients_now == 2).await;
    for tag in 5..20 {
        srv.push(tag % 10 == 0, ts(tag, 2));
    }
    // The group (3, 4), then live 5..20.
    let want_len = 17 * 2 * TS_PACKET_LEN;
    let from_a = read_n(&mut a, want_len).await;
    let from_b = read_n(&mut b, want_len).await;
    assert_eq!(from_a, from_b);
    assert_eq!(chunk_tags(&from_a), (3..20).collect::<Vec<_>>(), "starts at keyframe chunk 3");
    let stats = srv.stats();
    assert_eq!((stats.clients_total, stats.client_skips), (2, 0));
    assert_eq!(stats.bytes_sent, 2 * want_len as u64);
    // Dropping the server ends the streams.
    drop(srv);
    assert!(read_to_end(&mut a).await.is_empty());
}

#[tokio::test]
async fn new_client_without_a_group_waits_for_a_keyframe() {
    let srv =
        server(HttpStreamConfig { keyframe_group_max_bytes: 3 * TS_PACKET_LEN, ..Default::default() }).await;
    srv.push(false, ts(0, 1)); // no keyframe yet
    let mut a = get(srv.local_addr(), "GET", "/").await;
    read_head(&mut a).await;
    wait_for(&srv, "client", |s| s.clients_now == 1).await;
    srv.push(false, ts(1, 1));
    srv.push(true, ts(2, 1));
    srv.push(false, ts(3, 1));
    srv.push(false, ts(4, 2)); // the group is now over 3 packets: dropped
    assert_eq!(chunk_tags(&read_n(&mut a, 4 * TS_PACKET_LEN).await), vec![2, 3, 4]);
    let mut b = get(srv.local_addr(), "GET", "/").await;
    read_head(&mut b).await;
    wait_for(&srv, "second client", |s| s.clients_now == 2).await;
    srv.push(false, ts(5, 1));
    srv.push(true, ts(6, 1));
    assert_eq!(chunk_tags(&read_n(&mut b, TS_PACKET_LEN).await), vec![6], "b starts at the next keyframe");
}

#[tokio::test]
async fn head_options_and_other_methods() {
    let srv = server(HttpStreamConfig::default()).await;
    srv.push(true, ts(1, 1));
    let addr = srv.local_addr();

    let head = exchange(addr, format!("HEAD /stream.ts HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(has_header(&head, "Content-Type: video/mp2t"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "headers only: {head:?}");

    let preflight = format!(
        "OPTIONS /stream.ts HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://example.com\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: range, x-player\r\n\r\n"
    );
    let options = exchange(addr, preflight.as_bytes()).await;
    assert!(options.starts_with("HTTP/1.1 204 No Content\r\n"), "{options}");
    assert!(has_header(&options, "Access-Control-Allow-Origin: *"), "{options}");
    assert!(has_header(&options, "Access-Control-Allow-Methods: GET, HEAD, OPTIONS"), "{options}");
    assert!(has_header(&options, "Access-Control-Allow-Headers: range, x-player"), "{options}");
    assert!(!options.contains("Content-Length"), "{options}");

    let post =
        exchange(addr, format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3\r\n\r\nabc").as_bytes())
            .await;
    assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
    assert!(has_header(&post, "Allow: GET, HEAD, OPTIONS"), "{post}");
    assert_eq!(srv.stats().clients_total, 0, "HEAD is not a stream client");
}

#[tokio::test]
async fn malformed_oversized_and_slow_requests_are_refused() {
    let srv =
        server(HttpStreamConfig { request_timeout: Duration::from_millis(200), ..Default::default() }).await;
    let addr = srv.local_addr();
    let status = |response: String| response.lines().next().unwrap_or("").to_owned();

    assert_eq!(status(exchange(addr, b"garbage\r\n\r\n").await), "HTTP/1.1 400 Bad Request");
    assert_eq!(
        status(exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await),
        "HTTP/1.1 400 Bad Request",
        "no Host"
    );
    assert_eq!(
        status(exchange(addr, b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").await),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status(exchange(addr, b"GET / HTTP/2.0\r\n\r\n").await),
        "HTTP/1.1 505 HTTP Version Not Supported"
    );
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(exchange(addr, &big).await), "HTTP/1.1 431 Request Header Fields Too Large");
    // Nothing sent: answered 408 when the request timeout runs out.
    assert_eq!(status(exchange(addr, b"GET / HT").await), "HTTP/1.1 408 Request Timeout");
    // HTTP/1.0 needs no Host, and bare LF line ends are accepted.
    let mut ok = TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET / HTTP/1.0\nUser-Agent: old\n\n").await.unwrap();
    assert!(read_head(&mut ok).await.starts_with("HTTP/1.1 200 OK"));
    assert_eq!(srv.stats().bad_requests, 6);
}

#[tokio::test]
async fn clients_beyond_the_limit_get_503() {
    let srv = server(HttpStreamConfig { max_clients: 2, ..Default::default() }).await;
    let addr = srv.local_addr();
    let mut a = get(addr, "GET", "/").await;
    let mut b = get(addr, "GET", "/").await;
    read_head(&mut a).await;
    read_head(&mut b).await;
    wait_for(&srv, "two clients", |s| s.clients_now == 2).await;
    let third = exchange(addr, format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await;
    assert!(third.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{third}");
    assert_eq!(srv.stats().rejected_busy, 1);
    // A place frees when a client leaves.
    drop(a);
    wait_for(&srv, "a to leave", |s| s.clients_now == 1).await;
    let mut c = get(addr, "GET", "/").await;
    assert!(read_head(&mut c).await.starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_does_not_hold_back_a_fast_one_and_is_skipped() {
    let srv = server(HttpStreamConfig { client_queue_chunks: 16, ..Default::default() }).await;
    let addr = srv.local_addr();
    // The slow client has a small receive window, then does not read for a while.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    read_head(&mut slow).await;
    let mut fast = get(addr, "GET", "/").await;
    read_head(&mut fast).await;
    wait_for(&srv, "both clients", |s| s.clients_now == 2).await;

    // 300 chunks of 64 KiB (19 MiB), a keyframe every 20; the fast client reads each one
    // as it is pushed.
    let packets = 64 * 1024 / TS_PACKET_LEN;
    for tag in 0..300u32 {
        srv.push(tag % 20 == 0, ts(tag, packets));
        let got = read_n(&mut fast, packets * TS_PACKET_LEN).await;
        assert_eq!(chunk_tags(&got), vec![tag], "fast client is live");
    }
    drop(srv); // ends the streams once the slow client has caught up with its queue
    let all = read_to_end(&mut slow).await;
    let tags = chunk_tags(&all);
    assert_eq!(all.len(), tags.len() * packets * TS_PACKET_LEN, "whole chunks only");
    assert!(tags.len() < 300, "the slow client was skipped: got {} chunks", tags.len());
    for pair in tags.windows(2) {
        assert!(pair[1] > pair[0], "in order");
        if pair[1] != pair[0] + 1 {
            assert_eq!(pair[1] % 20, 0, "a skip lands on a keyframe chunk: {tags:?}");
        }
    }
}

#[tokio::test]
async fn skips_are_counted() {
    // The same as above, observed through the counters while the server lives.
    let srv = server(HttpStreamConfig { client_queue_chunks: 4, ..Default::default() }).await;
    let addr = srv.local_addr();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    read_head(&mut slow).await;
    wait_for(&srv, "client", |s| s.clients_now == 1).await;
    let packets = 64 * 1024 / TS_PACKET_LEN;
    for tag in 0..200u32 {
        srv.push(tag % 10 == 0, ts(tag, packets));
        tokio::task::yield_now().await;
    }
    // Reading again lets the client's task find that it lost its place.
    let mut buf = vec![0u8; 1 << 20];
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.stats().client_skips == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no skip: {:?}", srv.stats());
        let _ = tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await;
    }
    assert_eq!(srv.stats().clients_now, 1, "skipped, not disconnected");
}

#[tokio::test]
async fn occupied_port_is_a_clear_error() {
    let first = server(HttpStreamConfig::default()).await;
    let addr = first.local_addr();
    let err = HttpStreamServer::bind(addr).await.expect_err("port taken");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    let message = err.to_string();
    assert!(message.starts_with(&format!("cannot serve HTTP on {addr}: ")), "{message}");
    assert!(message.contains("another program is listening there"), "{message}");
}

#[tokio::test]
async fn request_heads_parse() {
    let mut input: &[u8] =
        b"\r\nGET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nAccept:  text/plain \r\n\r\nbody";
    let head = read_request_head(&mut input).await.unwrap();
    assert_eq!(
        (head.method.as_str(), head.target.as_str(), head.path()),
        ("GET", "/metrics?x=1", "/metrics")
    );
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.header("accept"), Some("text/plain"));
    assert_eq!(head.header("x-empty"), Some(""));
    assert_eq!(head.header("missing"), None);

    let parse = |s: &'static [u8]| async move {
        let mut input = s;
        read_request_head(&mut input).await
    };
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n").await,
        Err(HttpError::Malformed(_))
    ));
    assert!(matches!(parse(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n").await, Err(HttpError::Malformed(_))));
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n").await, Err(HttpError::Malformed(_))));
    assert!(matches!(parse(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n").await, Err(HttpError::Malformed(_))));
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").await, Err(HttpError::Closed)));
    assert!(matches!(parse(b"").await, Err(HttpError::Closed)));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..MAX_REQUEST_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut input = &many[..];
    assert!(matches!(read_request_head(&mut input).await, Err(HttpError::TooManyHeaders { .. })));
    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', MAX_REQUEST_HEAD_BYTES));
    let mut input = &huge[..];
    assert!(matches!(read_request_head(&mut input).await, Err(HttpError::HeadTooLarge { .. })));
}

#[tokio::test]
async fn respond_writes_a_complete_response() {
    let mut out = Vec::new();
    respond(&mut out, 200, "text/plain; version=0.0.4", b"up 1\n").await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nAccess-Control-Allow-Origin: *\r\n\
         Content-Length: 5\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\nup 1\n"
    );
    let mut out = Vec::new();
    respond_with(&mut out, 404, &[("X-Bad", "a\r\nInjected: 1")], "", b"").await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n") && !out.contains("Injected"), "{out}");
}
