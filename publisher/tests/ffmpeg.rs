//! End to end with streams ffmpeg makes: file input paced by PCR, chunked, and (looped)
//! checked by ffmpeg itself. Skipped, with a note, where ffmpeg or an encoder is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rill_publisher::psi::parse_pat;
use rill_publisher::ts::{payload, Packet, PacketHeader, PACKET_LEN};
use rill_publisher::{open, Chunker, ChunkerConfig, InputOptions, InputSpec, MediaChunk};

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rill-publisher-ffmpeg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes a 3 s test stream (25 fps, a keyframe every 25 frames, AAC audio) with `encoder`,
/// or says why it could not.
fn make_stream(dir: &Path, encoder: &str) -> Result<PathBuf, String> {
    let out = dir.join(format!("{encoder}.ts"));
    let result = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine"])
        .args(["-t", "3", "-c:v", encoder, "-g", "25", "-c:a", "aac", "-f", "mpegts"])
        .args(["-x265-params", "log-level=error"])
        .arg(&out)
        .output();
    match result {
        Err(e) => Err(format!("ffmpeg not runnable ({e})")),
        Ok(o) if !o.status.success() => {
            Err(format!("ffmpeg failed with {encoder}: {}", String::from_utf8_lossy(&o.stderr).trim()))
        }
        Ok(_) => Ok(out),
    }
}

fn pid(packet: &[u8]) -> u16 {
    let p: &Packet = packet.try_into().unwrap();
    PacketHeader::parse(p).pid
}

/// The PMT PID the PAT packet at the start of `bytes` names.
fn pmt_pid_of(bytes: &[u8]) -> u16 {
    let p: &Packet = bytes[..PACKET_LEN].try_into().unwrap();
    let pl = payload(p).unwrap();
    let pat = parse_pat(&pl[1 + usize::from(pl[0])..]).unwrap();
    pat.programs.iter().find(|(n, _)| *n != 0).unwrap().1
}

/// Plays the file through the publisher's input at its PCR pace (tokio's paused clock
/// makes that instant) and chunks it as the publisher does.
async fn chunk_file(path: &Path, passes: usize) -> (Vec<MediaChunk>, Chunker, Vec<u8>) {
    let file_len = std::fs::metadata(path).unwrap().len() as usize;
    let options = InputOptions { loop_forever: passes > 1, ..InputOptions::default() };
    let mut input = open(&InputSpec::File(path.to_path_buf()), &options).await.unwrap();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let mut chunks = Vec::new();
    let mut read = Vec::new();
    while read.len() < passes * file_len {
        let Some((at, bytes)) = input.read().await.unwrap() else { break };
        if chunker.poll_timeout().is_some_and(|due| due <= at) {
            chunker.handle_timeout(at);
        }
        chunker.push(at, &bytes).unwrap();
        read.extend_from_slice(&bytes);
        while let Some(c) = chunker.poll_chunk() {
            chunks.push(c);
        }
    }
    chunker.finish(Instant::now());
    while let Some(c) = chunker.poll_chunk() {
        chunks.push(c);
    }
    (chunks, chunker, read)
}

async fn check_encoder(encoder: &str) {
    let dir = TempDir::new(encoder);
    let path = match make_stream(&dir.0, encoder) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("NOTE: skipping the {encoder} end-to-end test: {why}");
            return;
        }
    };
    let file = std::fs::read(&path).unwrap();
    let (chunks, chunker, _) = chunk_file(&path, 1).await;
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.payload.iter().copied()).collect();
    assert!(joined == file, "{encoder}: the chunks are the file, byte for byte");
    let stats = chunker.stats();
    assert_eq!((stats.psi_inserted, stats.resyncs, stats.bytes_skipped), (0, 0, 0), "{encoder}: {stats:?}");
    assert_eq!(stats.media_bytes, file.len() as u64);

    let keyframes: Vec<&MediaChunk> = chunks.iter().filter(|c| c.keyframe).collect();
    assert_eq!(keyframes.len(), 3, "{encoder}: one keyframe a second for 3 s");
    for k in &keyframes {
        let pmt = pmt_pid_of(&k.payload);
        assert_eq!(pid(&k.payload[..PACKET_LEN]), 0, "{encoder}: keyframe chunk starts with the PAT");
        assert_eq!(pid(&k.payload[PACKET_LEN..2 * PACKET_LEN]), pmt, "{encoder}: then the PMT");
    }
    // About a second apart in ingest time, which follows the PCR, which follows DTS. x265's
    // deeper B-frame reordering delays the first keyframe's DTS by 0.12 s more than the
    // others', hence the margin.
    for pair in keyframes.windows(2) {
        let gap = pair[1].ingested_at - pair[0].ingested_at;
        assert!(gap > Duration::from_millis(800) && gap < Duration::from_millis(1200), "{encoder}: {gap:?}");
    }
    // Chunks are short: at 25 fps a frame's packets arrive together, so a chunk spans one
    // or two frames.
    assert!(chunks.len() >= 60, "{encoder}: {} chunks", chunks.len());
}

#[tokio::test(start_paused = true)]
async fn ffmpeg_h264_stream_chunks_at_keyframes_byte_for_byte() {
    check_encoder("libx264").await;
}

#[tokio::test(start_paused = true)]
async fn ffmpeg_hevc_stream_chunks_at_keyframes_byte_for_byte() {
    check_encoder("libx265").await;
}

/// Loops the file twice and lets ffmpeg read the result: it must see one 6 s stream with
/// monotonic timestamps.
#[tokio::test(start_paused = true)]
async fn ffmpeg_accepts_a_looped_stream() {
    let dir = TempDir::new("loop");
    let path = match make_stream(&dir.0, "libx264") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("NOTE: skipping the looping end-to-end test: {why}");
            return;
        }
    };
    let (chunks, chunker, read) = chunk_file(&path, 2).await;
    let looped = dir.0.join("looped.ts");
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.payload.iter().copied()).collect();
    assert!(joined == read);
    assert_eq!(chunker.stats().keyframes, 6);
    std::fs::write(&looped, &joined).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(&looped)
        .output()
        .unwrap();
    let duration: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap();
    assert!((5.9..6.2).contains(&duration), "looped duration {duration}");
    let check = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "warning", "-i"])
        .arg(&looped)
        .args(["-c", "copy", "-f", "null", "-"])
        .output()
        .unwrap();
    let warnings = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{warnings}");
    assert!(!warnings.to_lowercase().contains("monoton"), "timestamps go forward: {warnings}");
    assert!(!warnings.to_lowercase().contains("discontinuity"), "{warnings}");
}
