use std::io::Read;
use std::path::Path;

use super::*;
use crate::testutil::ts;

/// The tags of a TS byte stream, one per packet.
fn tags(stream: &[u8]) -> Vec<u32> {
    assert_eq!(stream.len() % TS_PACKET_LEN, 0, "whole packets");
    stream
        .chunks(TS_PACKET_LEN)
        .map(|p| {
            assert_eq!(p[0], 0x47, "sync byte");
            u32::from_be_bytes([p[1], p[2], p[3], p[4]])
        })
        .collect()
}

/// A path in the temp directory unique to this process and `name`, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rill-viewer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn parse_accepts_the_documented_forms() {
    assert_eq!(OutputSpec::parse("-"), Ok(OutputSpec::Stdout));
    assert_eq!(OutputSpec::parse("out.ts"), Ok(OutputSpec::File("out.ts".into())));
    assert_eq!(OutputSpec::parse("/tmp/a b.ts"), Ok(OutputSpec::File("/tmp/a b.ts".into())));
    assert_eq!(OutputSpec::parse("file:///tmp/x.ts"), Ok(OutputSpec::File("/tmp/x.ts".into())));
    assert_eq!(OutputSpec::parse("./a://b"), Ok(OutputSpec::File("./a://b".into())), "not a scheme");
    assert_eq!(
        OutputSpec::parse("udp://127.0.0.1:1234"),
        Ok(OutputSpec::Udp("127.0.0.1:1234".parse().unwrap()))
    );
    assert_eq!(
        OutputSpec::parse("UDP://239.1.2.3:5000/"),
        Ok(OutputSpec::Udp("239.1.2.3:5000".parse().unwrap()))
    );
    assert_eq!(OutputSpec::parse("udp://[::1]:5000"), Ok(OutputSpec::Udp("[::1]:5000".parse().unwrap())));
    match OutputSpec::parse("udp://localhost:5000") {
        Ok(OutputSpec::Udp(addr)) => assert!(addr.ip().is_loopback() && addr.port() == 5000),
        other => panic!("localhost: {other:?}"),
    }
    assert_eq!(OutputSpec::parse("udp://127.0.0.1:9").unwrap().to_string(), "udp://127.0.0.1:9");
}

#[test]
fn parse_errors_are_clear() {
    let err = |s: &str| OutputSpec::parse(s).expect_err(s);
    assert_eq!(err(""), SpecError::Empty);
    assert!(matches!(err("udp://127.0.0.1"), SpecError::MissingPort { .. }));
    assert!(matches!(err("udp://127.0.0.1:"), SpecError::MissingPort { .. }));
    assert!(matches!(err("udp://[::1]"), SpecError::MissingPort { .. }));
    assert!(matches!(err("udp://127.0.0.1:0"), SpecError::BadPort { .. }));
    assert!(matches!(err("udp://127.0.0.1:65536"), SpecError::BadPort { .. }));
    assert!(matches!(err("udp://127.0.0.1:12x"), SpecError::BadPort { .. }));
    assert!(matches!(err("udp://:1234"), SpecError::BadHost { .. }));
    assert!(matches!(err("udp://bad host:1234"), SpecError::BadHost { .. }));
    assert!(matches!(err("udp://::1:1234"), SpecError::BadHost { .. }));
    assert!(matches!(err("udp://[nope]:1234"), SpecError::BadHost { .. }));
    assert!(matches!(err("udp://239.0.0.1:1234?ttl=4"), SpecError::Options { .. }));
    assert!(matches!(err("srt://example.com:9000"), SpecError::UnsupportedScheme { .. }));
    let http = err("http://127.0.0.1:8080/");
    assert_eq!(
        http.to_string(),
        "http://127.0.0.1:8080/: http:// outputs are not supported; use -, a file path or udp://HOST:PORT"
    );
    assert_eq!(err("udp://1.2.3.4").to_string(), "udp://1.2.3.4: missing port, expected udp://HOST:PORT");
}

#[tokio::test]
async fn udp_sends_whole_packets_in_1316_byte_datagrams() {
    let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spec = OutputSpec::Udp(receiver.local_addr().unwrap());
    let mut sink = OutputSink::open(&spec).await.unwrap();
    sink.push(true, ts(1, 20)).unwrap(); // 7 + 7 + 6 packets
    sink.push(false, ts(2, 7)).unwrap(); // exactly one datagram
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    while sizes.len() < 4 {
        let n = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf)).await.unwrap().unwrap();
        sizes.push(n);
        all.extend_from_slice(&buf[..n]);
    }
    assert_eq!(sizes, vec![1316, 1316, 6 * 188, 1316]);
    let mut want = vec![1; 20];
    want.extend([2; 7]);
    assert_eq!(tags(&all), want);
    let stats = sink.finish().await.unwrap();
    assert_eq!((stats.chunks_written, stats.bytes_written, stats.datagrams_sent), (2, 27 * 188, 4));
}

#[tokio::test]
async fn udp_to_a_multicast_group_opens() {
    // Whether the group is routable here depends on the machine; opening and queueing
    // must work regardless, and a refused send is counted, not fatal.
    let mut sink = OutputSink::open(&OutputSpec::parse("udp://239.255.42.42:5004").unwrap()).await.unwrap();
    sink.push(true, ts(1, 7)).unwrap();
    let stats = sink.finish().await.unwrap();
    assert_eq!(stats.datagrams_sent + stats.datagrams_failed, 1);
}

#[tokio::test]
async fn file_output_has_every_chunk_in_order() {
    let path = TempPath::new("file-output.ts");
    let mut sink = OutputSink::open(&OutputSpec::File(path.0.clone())).await.unwrap();
    assert_eq!(sink.target(), path.0.display().to_string());
    for tag in 0..50 {
        sink.push(tag % 10 == 0, ts(tag, 3)).unwrap();
    }
    let stats = sink.finish().await.unwrap();
    assert_eq!((stats.chunks_written, stats.chunks_dropped), (50, 0));
    let written = std::fs::read(&path.0).unwrap();
    let want: Vec<u32> = (0..50).flat_map(|tag| [tag; 3]).collect();
    assert_eq!(tags(&written), want);
}

#[tokio::test]
async fn unwritable_file_is_an_open_error() {
    let spec = OutputSpec::File("/nonexistent-dir-of-rill/out.ts".into());
    let err = OutputSink::open(&spec).await.expect_err("no such directory");
    assert!(matches!(err, OutputError::Open { .. }));
    assert!(err.to_string().starts_with("cannot open output /nonexistent-dir-of-rill/out.ts: "), "{err}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pipe_ends_output_with_a_clear_error() {
    let fifo = TempPath::new("closed.fifo");
    mkfifo(&fifo.0);
    let reader_path = fifo.0.clone();
    // The reader takes one chunk and quits, like a player closing.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(reader_path).unwrap();
        let mut first = vec![0u8; 188];
        f.read_exact(&mut first).unwrap();
    });
    let mut sink = OutputSink::open(&OutputSpec::File(fifo.0.clone())).await.unwrap();
    sink.push(true, ts(0, 1)).unwrap();
    reader.join().unwrap();
    let mut tag = 1;
    let error = loop {
        tokio::select! {
            error = sink.failed() => break error,
            () = tokio::time::sleep(Duration::from_millis(1)) => {
                if let Err(error) = sink.push(false, ts(tag, 1)) {
                    break error;
                }
                tag += 1;
            }
        }
    };
    assert!(matches!(error, OutputError::Closed { .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("output {} was closed by its reader", fifo.0.display()));
    assert!(matches!(sink.push(false, ts(0, 1)), Err(OutputError::Stopped)));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_skips_to_the_next_keyframe() {
    let fifo = TempPath::new("slow.fifo");
    mkfifo(&fifo.0);
    let reader_path = fifo.0.clone();
    let (start_reading, go) = std::sync::mpsc::channel::<()>();
    // A reader that opens the pipe but reads nothing until told.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(reader_path).unwrap();
        go.recv().unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        all
    });
    let mut sink = OutputSink::open(&OutputSpec::File(fifo.0.clone())).await.unwrap();
    // 1 MiB chunks: the 16 MiB byte bound fills after about 16 of them.
    let packets = (1 << 20) / TS_PACKET_LEN;
    for tag in 0..40u32 {
        sink.push(tag % 10 == 0, ts(tag, packets)).unwrap();
    }
    let stats = sink.stats();
    assert!(stats.skips == 1 && stats.chunks_dropped > 0, "{stats:?}");
    // The reader catches up; then the next keyframe (40) goes through and ends the skip.
    start_reading.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.stats().chunks_written + sink.stats().chunks_dropped < 40 {
        assert!(tokio::time::Instant::now() < deadline, "writer stuck: {:?}", sink.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for tag in 40..50u32 {
        sink.push(tag % 10 == 0, ts(tag, 3)).unwrap();
    }
    let stats = sink.finish().await.unwrap();
    let all = reader.join().unwrap();
    let mut chunks: Vec<u32> = tags(&all);
    chunks.dedup();
    assert_eq!(stats.chunks_written, chunks.len() as u64);
    assert_eq!(stats.chunks_written + stats.chunks_dropped, 50);
    assert_eq!(chunks.last(), Some(&49));
    // In order, whole chunks, and every jump lands on a keyframe chunk.
    assert!(chunks.windows(2).any(|w| w[1] != w[0] + 1), "a skip: {chunks:?}");
    for pair in chunks.windows(2) {
        assert!(pair[1] > pair[0]);
        if pair[1] != pair[0] + 1 {
            assert_eq!(pair[1] % 10, 0, "resumed at keyframe chunk: {chunks:?}");
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_gives_up_on_a_reader_that_stopped_reading() {
    let fifo = TempPath::new("stuck.fifo");
    mkfifo(&fifo.0);
    let reader_path = fifo.0.clone();
    let (release, released) = std::sync::mpsc::channel::<()>();
    // Opens the pipe and reads nothing; closes it when released.
    let reader = std::thread::spawn(move || {
        let f = std::fs::File::open(reader_path).unwrap();
        released.recv().unwrap();
        drop(f);
    });
    let mut sink = OutputSink::open(&OutputSpec::File(fifo.0.clone())).await.unwrap();
    sink.push(true, ts(0, (1 << 20) / TS_PACKET_LEN)).unwrap(); // far more than a pipe holds
    let started = tokio::time::Instant::now();
    let error = sink.finish_within(Duration::from_millis(200)).await.expect_err("reader is stuck");
    assert!(matches!(error, OutputError::FlushTimeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Let the blocked write fail so the runtime can shut down.
    release.send(()).unwrap();
    reader.join().unwrap();
}
