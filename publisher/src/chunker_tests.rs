use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;
use crate::testutil::{test_seed, Synth, AUDIO_PID, PMT_PID, VIDEO_PID};
use crate::ts::{PacketHeader, SYNC_BYTE};

fn pid_of(bytes: &[u8]) -> u16 {
    (u16::from(bytes[1] & 0x1F) << 8) | u16::from(bytes[2])
}

fn pids(chunk: &MediaChunk) -> Vec<u16> {
    chunk.payload.chunks(PACKET_LEN).map(pid_of).collect()
}

fn drain(chunker: &mut Chunker, out: &mut Vec<MediaChunk>) {
    while let Some(c) = chunker.poll_chunk() {
        out.push(c);
    }
}

/// Pushes `input` in pieces of `split()` bytes, the clock advancing by `step(bytes)` before
/// each, handling timeouts as a driver would; then finishes. Returns all chunks.
fn run(
    chunker: &mut Chunker,
    input: &[u8],
    mut split: impl FnMut() -> usize,
    mut step: impl FnMut(usize) -> Duration,
) -> Vec<MediaChunk> {
    let mut now = Instant::now();
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = split().clamp(1, rest.len());
        now += step(n);
        if chunker.poll_timeout().is_some_and(|t| t <= now) {
            chunker.handle_timeout(now);
            drain(chunker, &mut out);
        }
        let _ = chunker.push(now, &rest[..n]);
        drain(chunker, &mut out);
        rest = &rest[n..];
    }
    chunker.finish(now);
    drain(chunker, &mut out);
    out
}

/// What must hold of any output: non-empty whole packets, within the size bound.
fn check_chunks(chunks: &[MediaChunk], max: usize) {
    for c in chunks {
        assert!(!c.payload.is_empty());
        assert_eq!(c.payload.len() % PACKET_LEN, 0);
        assert!(c.payload.len() <= max, "chunk of {} bytes > {max}", c.payload.len());
        assert!(c.payload.chunks(PACKET_LEN).all(|p| p[0] == SYNC_BYTE));
    }
    for w in chunks.windows(2) {
        assert!(w[0].ingested_at <= w[1].ingested_at, "ingest times go forward");
    }
}

/// Compares byte strings, reporting the first difference rather than both strings.
fn assert_bytes_eq(got: &[u8], want: &[u8], context: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{context}: bytes differ at offset {i} (packet {})", i / PACKET_LEN);
    }
    assert_eq!(got.len(), want.len(), "{context}: lengths differ");
}

fn concat(chunks: &[MediaChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.payload.iter().copied()).collect()
}

/// Every keyframe chunk starts PAT, PMT and (after the PSI) contains a video PES start.
fn check_keyframe_chunks(chunks: &[MediaChunk]) -> usize {
    let keyframes: Vec<_> = chunks.iter().filter(|c| c.keyframe).collect();
    for c in &keyframes {
        let p = pids(c);
        assert_eq!(&p[..2], &[0, PMT_PID], "keyframe chunk starts with PAT, PMT: {p:?}");
    }
    keyframes.len()
}

#[test]
fn ffmpeg_style_stream_splits_at_the_psi_before_each_keyframe() {
    let stream = Synth::default().build();
    let input = stream.bytes();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    // One push, one instant: only keyframes cut.
    let chunks = run(&mut chunker, &input, || usize::MAX, |_| Duration::ZERO);
    check_chunks(&chunks, DEFAULT_MAX_CHUNK_BYTES);
    assert_bytes_eq(&concat(&chunks), &input, "output bytes are the input bytes");
    assert_eq!(chunks.len(), 5);
    assert_eq!(check_keyframe_chunks(&chunks), 5);
    // Each chunk starts two packets (PAT, PMT) before a keyframe.
    let mut offset = 0;
    for (c, &k) in chunks.iter().zip(&stream.keyframes) {
        assert_eq!(offset / PACKET_LEN, k - 2);
        assert_eq!(pids(c)[2], VIDEO_PID);
        offset += c.payload.len();
    }
    let s = chunker.stats();
    assert_eq!((s.psi_inserted, s.keyframes, s.chunks, s.resyncs, s.bytes_skipped), (0, 5, 5, 0, 0));
    assert_eq!((s.packets * PACKET_LEN as u64, s.media_bytes), (input.len() as u64, input.len() as u64));
}

#[test]
fn random_splits_and_live_pacing_keep_bytes_identical() {
    let seed = test_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let stream = Synth { frames: 60, ..Synth::default() }.build();
    let input = stream.bytes();
    for round in 0..300 {
        let max_split = [1, 7, 188, 1316, 5000, 70_000][round % 6];
        let max_step_us = [0, 500, 5_000, 40_000][round % 4];
        let mut chunker = Chunker::new(ChunkerConfig::default());
        let (mut splits, mut steps) = (ChaCha8Rng::seed_from_u64(rng.next_u64()), rng.clone());
        let chunks = run(
            &mut chunker,
            &input,
            || splits.next_u32() as usize % max_split + 1,
            // Live pacing: up to `max_step_us` per 1316 bytes (a UDP datagram's worth), and
            // never a gap PSI_HOLD_LIMIT could notice.
            |n| {
                let us = u64::from(steps.next_u32()) % (max_step_us * n as u64 / 1316 + 1);
                Duration::from_micros(us.min(100_000))
            },
        );
        rng = steps;
        check_chunks(&chunks, DEFAULT_MAX_CHUNK_BYTES);
        assert_bytes_eq(&concat(&chunks), &input, &format!("round {round}"));
        assert_eq!(check_keyframe_chunks(&chunks), 6, "round {round}");
        assert_eq!(chunker.stats().psi_inserted, 0, "round {round}");
    }
}

#[test]
fn chunks_close_after_target_duration_and_carry_ingest_time() {
    let stream = Synth { frames: 20, gop: 100, ..Synth::default() }.build();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let t0 = Instant::now();
    // Packet i is pushed at 4i ms; the first three together (the framer needs three to
    // find sync, so they are ingested at once anyway).
    let at = |i: u64| t0 + Duration::from_millis(4 * i.max(2));
    let mut out = Vec::new();
    chunker.push(at(2), &stream.bytes()[..3 * PACKET_LEN]).unwrap();
    for (i, p) in stream.packets.iter().enumerate().skip(3) {
        let now = at(i as u64);
        if chunker.poll_timeout().is_some_and(|due| due <= now) {
            chunker.handle_timeout(now);
            drain(&mut chunker, &mut out);
        }
        chunker.push(now, p).unwrap();
        drain(&mut chunker, &mut out);
        // The open chunk began with the first packet not yet output.
        let opened = at(out_packets(&out));
        assert_eq!(chunker.poll_timeout(), Some(opened + DEFAULT_TARGET_DURATION), "packet {i}");
    }
    chunker.finish(at(stream.packets.len() as u64 - 1));
    drain(&mut chunker, &mut out);
    assert_eq!(chunker.poll_timeout(), None);
    assert_bytes_eq(&concat(&out), &stream.bytes(), "");
    // Opened at 8 ms (packets 0-2), due at 33 ms, closed by the push at 36 ms: packets 0-8.
    // Then packets at 36, 40, .., 60 ms, and so on: 7 each.
    assert_eq!(out[0].payload.len() / PACKET_LEN, 9);
    for c in &out[1..out.len() - 1] {
        assert_eq!(c.payload.len() / PACKET_LEN, 7);
    }
    // ingested_at is the push time of each chunk's last packet.
    let mut packets = 0;
    for c in &out {
        packets += (c.payload.len() / PACKET_LEN) as u64;
        assert_eq!(c.ingested_at, at(packets - 1));
    }
}

fn out_packets(out: &[MediaChunk]) -> u64 {
    out.iter().map(|c| (c.payload.len() / PACKET_LEN) as u64).sum()
}

#[test]
fn missing_psi_is_inserted_in_front_of_keyframes() {
    let stream = Synth { psi_before_keyframes: false, psi_mid_gop: true, ..Synth::default() }.build();
    let input = stream.bytes();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let chunks = run(&mut chunker, &input, || 1316, |_| Duration::ZERO);
    check_chunks(&chunks, DEFAULT_MAX_CHUNK_BYTES);
    assert_eq!(check_keyframe_chunks(&chunks), 5);
    // The first keyframe follows the stream's opening PSI; the other four get copies.
    assert_eq!(chunker.stats().psi_inserted, 4);
    let mut rebuilt = Vec::new();
    let mut last_pat: Option<Vec<u8>> = None;
    let mut last_pmt: Option<Vec<u8>> = None;
    for (i, c) in chunks.iter().enumerate() {
        let mut payload = &c.payload[..];
        if c.keyframe && i > 0 {
            // The copies are the latest PAT and PMT packets, byte for byte (duplicate
            // packets to a viewer that has the whole stream).
            assert_eq!(Some(&payload[..PACKET_LEN]), last_pat.as_deref());
            assert_eq!(Some(&payload[PACKET_LEN..2 * PACKET_LEN]), last_pmt.as_deref());
            payload = &payload[2 * PACKET_LEN..];
            assert_eq!(pid_of(payload), VIDEO_PID);
        }
        for p in payload.chunks(PACKET_LEN) {
            match pid_of(p) {
                0 => last_pat = Some(p.to_vec()),
                PMT_PID => last_pmt = Some(p.to_vec()),
                _ => {}
            }
        }
        rebuilt.extend_from_slice(payload);
    }
    assert_bytes_eq(&rebuilt, &input, "without the copies the output is the input");
}

#[test]
fn keyframes_are_found_in_the_bitstream_without_the_indicator() {
    for video in [0x1B, 0x24] {
        let stream = Synth { video: Some(video), random_access_indicator: false, ..Synth::default() }.build();
        let mut chunker = Chunker::new(ChunkerConfig::default());
        let chunks = run(&mut chunker, &stream.bytes(), || 4096, |_| Duration::ZERO);
        assert_eq!(check_keyframe_chunks(&chunks), 5, "stream type {video:#x}");
        assert_bytes_eq(&concat(&chunks), &stream.bytes(), "");
    }
}

#[test]
fn psi_held_across_a_pause_stays_with_its_keyframe() {
    let stream = Synth { frames: 20, ..Synth::default() }.build();
    let input = stream.bytes();
    // Cut right after the PMT that precedes the second keyframe.
    let cut = stream.keyframes[1] * PACKET_LEN;
    for (pause, inserted) in [(Duration::from_millis(100), 0), (PSI_HOLD_LIMIT + Duration::from_millis(1), 1)]
    {
        let mut chunker = Chunker::new(ChunkerConfig::default());
        let t0 = Instant::now();
        let mut out = Vec::new();
        chunker.push(t0, &input[..cut]).unwrap();
        let t1 = t0 + pause;
        chunker.handle_timeout(t1);
        drain(&mut chunker, &mut out);
        // Everything before the PAT went out on the deadline.
        assert_eq!(out_packets(&out) as usize, stream.keyframes[1] - 2 + 2 * inserted);
        chunker.push(t1, &input[cut..]).unwrap();
        chunker.finish(t1);
        drain(&mut chunker, &mut out);
        assert_eq!(chunker.stats().psi_inserted, inserted as u64);
        assert_eq!(check_keyframe_chunks(&out), 2);
        assert_eq!(concat(&out).len(), input.len() + 2 * inserted * PACKET_LEN);
        if inserted == 0 {
            assert_bytes_eq(&concat(&out), &input, "");
        }
    }
}

#[test]
fn chunks_respect_max_bytes() {
    let stream = Synth { key_bytes: 40_000, delta_bytes: 9_000, ..Synth::default() }.build();
    let input = stream.bytes();
    for max in [0, MIN_MAX_CHUNK_BYTES + 100, 10_000] {
        let mut chunker = Chunker::new(ChunkerConfig { max_chunk_bytes: max, ..ChunkerConfig::default() });
        let effective = chunker.config().max_chunk_bytes;
        assert_eq!(effective % PACKET_LEN, 0);
        assert!(effective >= MIN_MAX_CHUNK_BYTES);
        let chunks = run(&mut chunker, &input, || 3000, |_| Duration::ZERO);
        check_chunks(&chunks, effective);
        assert_bytes_eq(&concat(&chunks), &input, "");
        assert_eq!(check_keyframe_chunks(&chunks), 5);
    }
    let huge = Chunker::new(ChunkerConfig { max_chunk_bytes: usize::MAX, ..ChunkerConfig::default() });
    assert!(huge.config().max_chunk_bytes < MAX_CHUNK_PAYLOAD);
}

#[test]
fn audio_only_channels_join_at_psi() {
    let stream =
        Synth { video: None, psi_mid_gop: true, psi_before_keyframes: true, ..Synth::default() }.build();
    let input = stream.bytes();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let chunks = run(&mut chunker, &input, || 100_000, |_| Duration::ZERO);
    assert_bytes_eq(&concat(&chunks), &input, "");
    // PSI at the start, at each GOP start and mid-GOP: 1 + 4 + 5.
    assert_eq!(check_keyframe_chunks(&chunks), 10);
    for c in &chunks {
        assert_eq!(c.keyframe, pids(c)[0] == 0, "a chunk is a join point iff it starts at the PAT");
        assert!(pids(c).iter().all(|&p| [0, PMT_PID, AUDIO_PID].contains(&p)));
    }
}

#[test]
fn bytes_before_the_first_psi_are_chunked_without_keyframes() {
    let stream = Synth::default().build();
    // Start in the middle of the first GOP.
    let input = stream.bytes()[(stream.keyframes[0] + 20) * PACKET_LEN..].to_vec();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let chunks = run(&mut chunker, &input, || 1316, |_| Duration::from_millis(5));
    assert_bytes_eq(&concat(&chunks), &input, "");
    assert!(!chunks[0].keyframe);
    assert!(chunks.len() > 5, "duration cuts before the first PSI too");
    assert_eq!(check_keyframe_chunks(&chunks), 4);
}

#[test]
fn garbage_is_skipped_and_never_forwarded() {
    let stream = Synth::default().build();
    let clean = stream.bytes();
    let mut input = Vec::new();
    let mut garbage_len = 0;
    for (i, p) in stream.packets.iter().enumerate() {
        if i % 97 == 50 {
            let g: Vec<u8> = (0..(i % 300) + 1).map(|j| (j * 31 + i) as u8 | 0x01).collect();
            garbage_len += g.len();
            input.extend_from_slice(&g);
        }
        input.extend_from_slice(p);
    }
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let chunks = run(&mut chunker, &input, || 999, |_| Duration::from_millis(1));
    // Each garbage run costs the packet after it too (sync is confirmed three packets on).
    let out = concat(&chunks);
    let s = chunker.stats();
    let garbage_runs = stream.packets.len().div_ceil(97) as u64;
    assert_eq!(s.resyncs, garbage_runs);
    assert_eq!(s.bytes_skipped, garbage_len as u64);
    assert_bytes_eq(&out, &clean, "garbage never forwarded, packets all kept");
    assert_eq!(s.media_bytes, s.packets * PACKET_LEN as u64 + s.bytes_skipped + s.partial_packet_bytes);
}

#[test]
fn not_mpeg_ts_is_an_error() {
    let seed = test_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut random = vec![0u8; 100_000];
    rng.fill_bytes(&mut random);
    let text = "The quick brown fox jumps over the lazy dog. 0123456789\n".repeat(2000);
    for input in [&random[..], text.as_bytes()] {
        let mut chunker = Chunker::new(ChunkerConfig::default());
        let mut result = Ok(());
        for piece in input.chunks(4096) {
            result = chunker.push(Instant::now(), piece);
            if result.is_err() {
                break;
            }
        }
        let Err(InputError::NotMpegTs { after_bytes }) = result else { panic!("{result:?}") };
        assert!(after_bytes > NOT_TS_LIMIT && after_bytes < NOT_TS_LIMIT + 4096 + 600);
        assert!(chunker.push(Instant::now(), &Synth::default().build().bytes()).is_err(), "sticky");
        assert!(chunker.poll_chunk().is_none());
        assert_eq!(chunker.stats().packets, 0);
    }
    // A short non-TS input is not an error, it just has no packets.
    let mut chunker = Chunker::new(ChunkerConfig::default());
    assert!(chunker.push(Instant::now(), &random[..1000]).is_ok());
    chunker.finish(Instant::now());
    assert_eq!((chunker.stats().packets, chunker.stats().bytes_skipped), (0, 1000));
    // Garbage just under the limit before a stream is fine.
    let mut input = vec![0u8; NOT_TS_LIMIT as usize - 1];
    input.extend_from_slice(&Synth::default().build().bytes());
    let mut chunker = Chunker::new(ChunkerConfig::default());
    assert!(chunker.push(Instant::now(), &input).is_ok());
}

#[test]
fn ready_queue_is_bounded() {
    // Every frame a keyframe: one chunk per frame.
    let stream = Synth { frames: 200, gop: 1, audio: false, ..Synth::default() }.build();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    chunker.push(Instant::now(), &stream.bytes()).unwrap();
    let s = chunker.stats();
    assert_eq!(s.chunks, 199, "the last keyframe chunk is still open");
    assert_eq!(s.chunks_dropped, 199 - READY_QUEUE_LEN as u64);
    let mut out = Vec::new();
    drain(&mut chunker, &mut out);
    assert_eq!(out.len(), READY_QUEUE_LEN);
    assert!(out.iter().all(|c| c.keyframe));
}

#[test]
fn partial_packet_and_transport_errors_are_counted() {
    let stream = Synth::default().build();
    let mut input = stream.bytes();
    // Damage one audio packet: counted, forwarded untouched.
    let damaged = stream.packets.iter().position(|p| PacketHeader::parse(p).pid == AUDIO_PID).unwrap();
    input[damaged * PACKET_LEN + 1] |= 0x80;
    let whole = input.clone();
    input.extend_from_slice(&[0x47, 1, 2, 3]);
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let chunks = run(&mut chunker, &input, || 500, |_| Duration::ZERO);
    assert_bytes_eq(&concat(&chunks), &whole, "");
    let s = chunker.stats();
    assert_eq!((s.partial_packet_bytes, s.transport_errors, s.bytes_skipped), (4, 1, 0));
}

#[test]
fn time_going_backwards_is_harmless() {
    let stream = Synth::default().build();
    let input = stream.bytes();
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let t0 = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    for (i, piece) in input.chunks(1000).enumerate() {
        let now = if i % 2 == 0 { t0 + Duration::from_millis(i as u64 * 3) } else { t0 };
        chunker.push(now, piece).unwrap();
        chunker.handle_timeout(t0);
        drain(&mut chunker, &mut out);
    }
    chunker.finish(t0);
    drain(&mut chunker, &mut out);
    check_chunks(&out, DEFAULT_MAX_CHUNK_BYTES);
    assert_bytes_eq(&concat(&out), &input, "");
}

/// 10 000 damaged inputs (random bytes, truncated, bit-flipped, spliced, with garbage) in
/// random pieces at random times: no panic, and the output invariants hold.
#[test]
fn damaged_inputs_never_panic() {
    let seed = test_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bases = [
        Synth { frames: 30, gop: 7, ..Synth::default() }.build().bytes(),
        Synth { frames: 30, gop: 5, video: Some(0x24), random_access_indicator: false, ..Synth::default() }
            .build()
            .bytes(),
        Synth { frames: 30, video: None, psi_mid_gop: true, ..Synth::default() }.build().bytes(),
        Synth { frames: 30, psi_before_keyframes: false, psi_mid_gop: true, ..Synth::default() }
            .build()
            .bytes(),
    ];
    for iteration in 0..10_000u32 {
        let mut input = bases[iteration as usize % bases.len()].clone();
        match rng.next_u32() % 5 {
            0 => {
                input.truncate(rng.next_u32() as usize % 4096);
                rng.fill_bytes(&mut input);
            }
            1 => input.truncate(rng.next_u32() as usize % (input.len() + 1)),
            2 => {
                for _ in 0..rng.next_u32() % 64 + 1 {
                    let bit = rng.next_u32() as usize % (input.len() * 8);
                    input[bit / 8] ^= 1 << (bit % 8);
                }
            }
            3 => {
                // Cut out a random range (lost bytes).
                let a = rng.next_u32() as usize % input.len();
                let b = (a + rng.next_u32() as usize % 2000).min(input.len());
                input.drain(a..b);
            }
            _ => {
                let at = rng.next_u32() as usize % input.len();
                let mut g = vec![0u8; rng.next_u32() as usize % 1000];
                rng.fill_bytes(&mut g);
                input.splice(at..at, g);
            }
        }
        let max = [MIN_MAX_CHUNK_BYTES, 8000, DEFAULT_MAX_CHUNK_BYTES][iteration as usize % 3];
        let mut chunker = Chunker::new(ChunkerConfig {
            max_chunk_bytes: max,
            target_duration: Duration::from_millis(u64::from(rng.next_u32() % 50)),
        });
        let max_split = rng.next_u32() as usize % 3000 + 1;
        let (mut splits, mut steps) = (ChaCha8Rng::seed_from_u64(rng.next_u64()), rng.clone());
        let chunks = run(
            &mut chunker,
            &input,
            || splits.next_u32() as usize % max_split + 1,
            |_| Duration::from_micros(u64::from(steps.next_u32() % 20_000)),
        );
        rng = steps;
        check_chunks(&chunks, max);
        let s = chunker.stats();
        assert_eq!(s.media_bytes, input.len() as u64, "iteration {iteration}");
        if s.chunks_dropped == 0 {
            let out = concat(&chunks).len() as u64;
            assert_eq!(s.chunks, chunks.len() as u64);
            assert!(out >= s.packets * PACKET_LEN as u64, "iteration {iteration}");
            if s.psi_inserted == 0 {
                assert_eq!(out, s.packets * PACKET_LEN as u64, "iteration {iteration}");
            }
        }
        if s.bytes_skipped <= NOT_TS_LIMIT {
            assert_eq!(
                s.media_bytes,
                s.packets * PACKET_LEN as u64 + s.bytes_skipped + s.partial_packet_bytes,
                "iteration {iteration}: every input byte is in a packet, skipped, or partial"
            );
        }
    }
}
