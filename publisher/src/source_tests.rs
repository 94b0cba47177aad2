use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::Duration;

use super::*;
use crate::testutil::{Synth, FRAME_TICKS, VIDEO_PID};
use crate::ts::{pes_header, Packet, PacketHeader, TIMESTAMP_MODULUS};

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("rill-publisher-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn udp(s: &str) -> InputSpec {
    InputSpec::Udp(s.parse().unwrap())
}

#[test]
fn specs_parse() {
    let cases = [
        ("-", InputSpec::Stdin),
        ("in.ts", InputSpec::File("in.ts".into())),
        ("/tmp/a b.ts", InputSpec::File("/tmp/a b.ts".into())),
        ("C:ts", InputSpec::File("C:ts".into())),
        ("file:///srv/x.ts", InputSpec::File("/srv/x.ts".into())),
        ("udp://:5000", udp("0.0.0.0:5000")),
        ("udp://@:5000", udp("0.0.0.0:5000")),
        ("UDP://@:5000", udp("0.0.0.0:5000")),
        ("udp://239.1.2.3:1234", udp("239.1.2.3:1234")),
        ("udp://@239.1.2.3:1234", udp("239.1.2.3:1234")),
        ("udp://127.0.0.1:9", udp("127.0.0.1:9")),
        ("udp://localhost:9", udp("127.0.0.1:9")),
        ("udp://[::1]:7000", udp("[::1]:7000")),
        ("udp://@[ff02::1]:7000", udp("[ff02::1]:7000")),
    ];
    for (text, want) in cases {
        assert_eq!(InputSpec::parse(text), Ok(want.clone()), "{text}");
        assert_eq!(text.parse::<InputSpec>(), Ok(want), "{text}");
    }
    assert_eq!(udp("239.1.2.3:1234").to_string(), "udp://239.1.2.3:1234");
    assert_eq!(InputSpec::parse(&udp("[::1]:7000").to_string()), Ok(udp("[::1]:7000")));
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let cases: [(&str, &str); 12] = [
        ("", "empty input"),
        ("file://", "empty input"),
        ("udp://", "missing port"),
        ("udp://@", "missing port"),
        ("udp://239.0.0.1", "missing port"),
        ("udp://239.0.0.1:", "missing port"),
        ("udp://[::1]", "missing port"),
        ("udp://:0", "invalid port '0'"),
        ("udp://:70000", "invalid port '70000'"),
        ("udp://example.com:5000", "invalid host 'example.com'"),
        ("udp://:5000?pkt_size=1316", "options after '?'"),
        ("http://example.com/live.ts", "scheme 'http://' is not supported"),
    ];
    for (text, want) in cases {
        let err = InputSpec::parse(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
    assert!(InputSpec::parse("udp://::1:5000").is_err(), "unbracketed IPv6");
    assert!(matches!(InputSpec::parse("srt://host:1"), Err(SpecError::UnsupportedScheme { .. })));
}

#[test]
fn random_specs_never_panic() {
    let seed = crate::testutil::test_seed();
    let mut rng = <rand_chacha::ChaCha8Rng as rand_core::SeedableRng>::seed_from_u64(seed);
    let alphabet: Vec<char> = "udp:/@[]?.:0123456789abcdefé€-_ ".chars().collect();
    for _ in 0..20_000 {
        let len = rand_core::RngCore::next_u32(&mut rng) % 24;
        let tail: String = (0..len)
            .map(|_| alphabet[rand_core::RngCore::next_u32(&mut rng) as usize % alphabet.len()])
            .collect();
        for prefix in ["", "udp://", "udp://@", "udp://[", "file://"] {
            let _ = InputSpec::parse(&format!("{prefix}{tail}"));
        }
    }
}

#[tokio::test]
async fn missing_files_and_directories_are_named() {
    let missing = PathBuf::from("/nonexistent/rill/input.ts");
    let err = open(&InputSpec::File(missing.clone()), &InputOptions::default()).await.unwrap_err();
    assert!(matches!(err, SourceError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/rill/input.ts"), "{err}");
    let dir = std::env::temp_dir();
    let err = open(&InputSpec::File(dir.clone()), &InputOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[tokio::test]
async fn looping_needs_a_regular_file() {
    let looping = InputOptions { loop_forever: true, ..InputOptions::default() };
    for spec in [InputSpec::Stdin, udp("127.0.0.1:9")] {
        let err = open(&spec, &looping).await.unwrap_err();
        assert!(matches!(err, SourceError::LoopNeedsFile { .. }), "{err}");
    }
    let err = open(&InputSpec::File("/dev/null".into()), &looping).await.unwrap_err();
    assert!(err.to_string().contains("cannot loop /dev/null"), "{err}");
}

/// Reads until `stop` says so or the input ends; returns the bytes and the virtual time
/// it took.
async fn read_until(input: &mut Input, mut stop: impl FnMut(usize) -> bool) -> (Vec<u8>, Duration) {
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut last = None;
    while !stop(out.len()) {
        let Some((at, bytes)) = input.read().await.unwrap() else { break };
        assert!(last.is_none_or(|l| l <= at), "read times go forward");
        last = Some(at);
        assert!(!bytes.is_empty() && bytes.len() <= MAX_BATCH);
        out.extend_from_slice(&bytes);
    }
    (out, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_file_plays_at_its_pcr_pace_byte_for_byte() {
    // 25 frames at 25 fps: PCRs span 0.96 s. A partial packet of junk at the end.
    let mut contents = Synth { frames: 25, ..Synth::default() }.build().bytes();
    contents.extend_from_slice(b"\x47trailing junk");
    let file = TempFile::new("paced.ts", &contents);
    let mut input = open(&InputSpec::File(file.0.clone()), &InputOptions::default()).await.unwrap();
    let (out, elapsed) = read_until(&mut input, |_| false).await;
    assert!(out == contents, "the file reaches the chunker as it is");
    assert!(elapsed >= Duration::from_millis(960) && elapsed < Duration::from_millis(1000), "{elapsed:?}");
    assert!(input.read().await.unwrap().is_none(), "stays ended");
}

fn packets(bytes: &[u8]) -> Vec<Packet> {
    bytes.chunks_exact(PACKET_LEN).map(|c| c.try_into().unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_looped_file_is_one_continuous_stream() {
    let contents = Synth { frames: 10, gop: 5, ..Synth::default() }.build().bytes();
    let file = TempFile::new("looped.ts", &contents);
    let options = InputOptions { loop_forever: true, ..InputOptions::default() };
    let mut input = open(&InputSpec::File(file.0.clone()), &options).await.unwrap();
    let (out, elapsed) = read_until(&mut input, |n| n >= 3 * contents.len()).await;
    assert!(input.passes() >= 2);
    assert!(out[..contents.len()] == contents[..], "the first pass is the file");
    // 30 frames, 40 ms apart.
    assert!(
        elapsed >= Duration::from_millis(29 * 40) && elapsed < Duration::from_millis(1300),
        "{elapsed:?}"
    );
    let mut last_cc: HashMap<u16, u8> = HashMap::new();
    let mut last_dts = None;
    for p in packets(&out) {
        let h = PacketHeader::parse(&p);
        if let Some(prev) = last_cc.insert(h.pid, h.continuity_counter) {
            assert_eq!(h.continuity_counter, (prev + 1) & 0x0F, "PID {:#x}", h.pid);
        }
        if h.pid == VIDEO_PID {
            if let Some(dts) = pes_header(&p).and_then(|pes| pes.dts) {
                if let Some(prev) = last_dts.replace(dts) {
                    assert_eq!((dts + TIMESTAMP_MODULUS - prev) % TIMESTAMP_MODULUS, FRAME_TICKS);
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn looping_a_file_without_packets_fails_instead_of_spinning() {
    let file = TempFile::new("text.ts", b"this is not a transport stream\n");
    let options = InputOptions { loop_forever: true, ..InputOptions::default() };
    let mut input = open(&InputSpec::File(file.0.clone()), &options).await.unwrap();
    let mut bytes = 0;
    let err = loop {
        match input.read().await {
            Ok(Some((_, b))) => bytes += b.len(),
            Ok(None) => panic!("a looped input does not end"),
            Err(e) => break e,
        }
    };
    assert_eq!(bytes, 31, "the bytes still reach the chunker, which reports them");
    assert!(matches!(err, SourceError::NoPackets { .. }), "{err}");
    // An empty file just ends.
    let empty = TempFile::new("empty.ts", b"");
    let mut input = open(&InputSpec::File(empty.0.clone()), &options).await.unwrap();
    assert!(input.read().await.unwrap().is_none());
}

#[tokio::test]
async fn udp_datagrams_arrive_in_order() {
    let mut input = open(&udp("127.0.0.1:0"), &InputOptions::default()).await.unwrap();
    let addr = input.local_addr().unwrap();
    let stream = Synth { frames: 5, ..Synth::default() }.build().bytes();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in stream.chunks(7 * PACKET_LEN) {
        sender.send_to(datagram, addr).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < stream.len() {
        let read = tokio::time::timeout(Duration::from_secs(5), input.read()).await;
        let (_, bytes) = read.expect("datagrams arrive").unwrap().unwrap();
        got.extend_from_slice(&bytes);
    }
    assert!(got == stream);
}

#[tokio::test]
async fn udp_port_in_use_is_a_clear_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = open(&InputSpec::Udp(addr), &InputOptions::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("udp://{addr}")), "{text}");
    assert!(text.to_lowercase().contains("address already in use"), "{text}");
}
