use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;
use crate::testutil::{test_seed, ts_packet, Af, Synth, FRAME_TICKS, VIDEO_PID};
use crate::ts::{pcr, pes_header, PacketHeader, PACKET_LEN, SYNC_BYTE};

/// Runs `passes` passes of `packets` through a rewriter.
fn loop_passes(packets: &[Packet], passes: usize) -> Vec<Vec<Packet>> {
    let mut rewriter = LoopRewriter::new();
    let mut out = Vec::new();
    for _ in 0..passes {
        let mut pass = packets.to_vec();
        for p in &mut pass {
            rewriter.rewrite(p);
        }
        rewriter.end_pass();
        out.push(pass);
    }
    out
}

fn modular_step(a: u64, b: u64, modulus: u64) -> u64 {
    (b + modulus - a) % modulus
}

/// Checks that per PID the continuity counter goes up by one on every packet with payload
/// and stays on packets without, across the whole output.
fn check_continuity(packets: &[Packet]) {
    let mut last: HashMap<u16, u8> = HashMap::new();
    for (i, p) in packets.iter().enumerate() {
        let h = PacketHeader::parse(p);
        if let Some(&prev) = last.get(&h.pid) {
            let want = if h.has_payload() { (prev + 1) & 0x0F } else { prev };
            assert_eq!(h.continuity_counter, want, "packet {i}, PID {:#x}", h.pid);
        }
        last.insert(h.pid, h.continuity_counter);
    }
}

/// Checks that PTS, DTS (per PID) and PCR step forward by exactly one frame everywhere,
/// including across the joins between passes.
fn check_timestamps(packets: &[Packet]) {
    let mut last_pts: HashMap<u16, u64> = HashMap::new();
    let mut last_dts: HashMap<u16, u64> = HashMap::new();
    let mut last_pcr = None;
    for (i, p) in packets.iter().enumerate() {
        let pid = PacketHeader::parse(p).pid;
        if let Some(pcr) = pcr(p) {
            if let Some(prev) = last_pcr {
                assert_eq!(modular_step(prev, pcr, PCR_MODULUS), FRAME_TICKS * 300, "PCR at packet {i}");
            }
            last_pcr = Some(pcr);
        }
        let Some(pes) = pes_header(p) else { continue };
        for (value, last) in [(pes.pts, &mut last_pts), (pes.dts, &mut last_dts)] {
            let Some(v) = value else { continue };
            if let Some(prev) = last.insert(pid, v) {
                assert_eq!(modular_step(prev, v, TIMESTAMP_MODULUS), FRAME_TICKS, "PID {pid:#x} packet {i}");
            }
        }
    }
    assert!(last_pcr.is_some() && !last_pts.is_empty() && !last_dts.is_empty());
}

#[test]
fn three_passes_join_up_and_the_first_is_untouched() {
    let stream = Synth::default().build();
    let passes = loop_passes(&stream.packets, 3);
    assert!(passes[0] == stream.packets, "the first pass is unchanged byte for byte");
    let all: Vec<Packet> = passes.concat();
    check_continuity(&all);
    check_timestamps(&all);
    // Only timestamps and counters change: everything else is the same as the input.
    for pass in &passes[1..] {
        for (a, b) in pass.iter().zip(&stream.packets) {
            assert_eq!(a[..3], b[..3]);
            assert_eq!(a[3] & 0xF0, b[3] & 0xF0);
            let payload_at = |p: &Packet| crate::ts::payload(p).map(|pl| PACKET_LEN - pl.len());
            assert_eq!(payload_at(a), payload_at(b));
        }
    }
}

#[test]
fn timestamps_wrap_modulo_2_pow_33() {
    // The second pass crosses the 33-bit wrap.
    let stream = Synth { start_ts: TIMESTAMP_MODULUS - 70 * FRAME_TICKS, ..Synth::default() }.build();
    let passes = loop_passes(&stream.packets, 3);
    let all = passes.concat();
    check_continuity(&all);
    check_timestamps(&all);
    let last_dts = all.iter().rev().find_map(|p| pes_header(p).and_then(|h| h.dts)).unwrap();
    assert!(last_dts < 200 * FRAME_TICKS, "wrapped: {last_dts}");
}

#[test]
fn pass_offset_covers_the_longest_stream() {
    // Audio running 10 frames past the video: the offset follows the audio so its PTS
    // never repeat, and video (and PCR) get a gap of the same length.
    let mut stream = Synth { frames: 30, ..Synth::default() }.build();
    let mut cc = 0;
    for i in 0..10 {
        let pts = Synth::default().start_ts + (30 + i) * FRAME_TICKS;
        stream.packets.extend(crate::testutil::pes_packets(
            crate::testutil::AUDIO_PID,
            0xC0,
            Some(pts),
            None,
            &[0x11; 300],
            &mut cc,
            None,
        ));
    }
    let mut rewriter = LoopRewriter::new();
    for p in &mut stream.packets.clone() {
        rewriter.rewrite(p);
    }
    rewriter.end_pass();
    assert_eq!(rewriter.offset_90k(), 40 * FRAME_TICKS);
    assert_eq!(rewriter.pass(), 1);
}

#[test]
fn damaged_and_random_packets_never_panic() {
    let seed = test_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base = Synth { frames: 20, ..Synth::default() }.build().packets;
    let mut rewriter = LoopRewriter::new();
    let start = Instant::now();
    let mut pacer = PcrPacer::new(start, DEFAULT_FALLBACK_RATE_BPS);
    let mut last = start;
    for round in 0..300 {
        for p in &base {
            let mut p = *p;
            if rng.next_u32() % 4 == 0 {
                rng.fill_bytes(&mut p[1..]);
            }
            p[0] = SYNC_BYTE;
            rewriter.rewrite(&mut p);
            let at = pacer.release_at(&p);
            assert!(at >= last, "release times never go backwards");
            last = at;
        }
        if round % 3 == 0 {
            rewriter.end_pass();
        }
    }
}

/// Packets of `pid`, `n` of them, with a PCR every `every` packets advancing at `rate_bps`.
fn cbr_packets(n: usize, every: usize, rate_bps: u64, first_pcr: u64) -> Vec<Packet> {
    (0..n)
        .map(|i| {
            let pcr = (i % every == 0).then(|| {
                let ticks = (i * PACKET_LEN) as u128 * 8 * u128::from(PCR_HZ) / u128::from(rate_bps);
                (first_pcr + ticks as u64) % PCR_MODULUS
            });
            let af = Af { pcr, ..Af::default() };
            ts_packet(VIDEO_PID, false, i as u8, pcr.is_some().then_some(&af), &[0x55; 100])
        })
        .collect()
}

fn assert_near(got: Instant, want: Instant, what: &str) {
    let err = if got > want { got - want } else { want - got };
    assert!(err < Duration::from_micros(2), "{what}: off by {err:?}");
}

#[test]
fn pacer_follows_pcr_and_interpolates_by_bytes() {
    let rate = 2_000_000;
    let start = Instant::now();
    for first_pcr in [0, PCR_MODULUS - PCR_HZ / 10] {
        let mut pacer = PcrPacer::new(start, 50_000);
        for (i, p) in cbr_packets(1000, 10, rate, first_pcr).iter().enumerate() {
            let want = start + bytes_duration((i * PACKET_LEN) as u64, rate);
            let got = pacer.release_at(p);
            // Until the second PCR the rate is unknown: those packets go with the first.
            let want = if i < 10 { start } else { want };
            assert_near(got, want, &format!("packet {i}, first PCR {first_pcr}"));
        }
        assert_eq!(pacer.reanchors(), 0, "the wrap is a normal step");
    }
}

#[test]
fn pacer_reanchors_on_jumps_instead_of_sleeping() {
    let rate = 1_000_000;
    let start = Instant::now();
    let mut packets = cbr_packets(100, 10, rate, 5 * PCR_HZ);
    // A jump 30 s ahead, then one 20 s back, then a discontinuity flag.
    packets.extend(cbr_packets(100, 10, rate, 35 * PCR_HZ));
    packets.extend(cbr_packets(100, 10, rate, 15 * PCR_HZ));
    let mut flagged = cbr_packets(100, 10, rate, 1000 * PCR_HZ);
    let af = Af { pcr: Some(1000 * PCR_HZ), discontinuity: true, ..Af::default() };
    flagged[0] = ts_packet(VIDEO_PID, false, 0, Some(&af), &[0x55; 100]);
    packets.extend(flagged);
    let mut pacer = PcrPacer::new(start, rate);
    let mut last = start;
    for (i, p) in packets.iter().enumerate() {
        let at = pacer.release_at(p);
        assert!(at >= last);
        last = at;
        // 400 packets at 1 Mbit/s are 0.6 s: allow for one PCR interval of slack per jump.
        assert!(at - start < Duration::from_millis(700), "packet {i} at {:?}", at - start);
    }
    assert_eq!(pacer.reanchors(), 3);
    assert!(last - start > Duration::from_millis(550));
}

#[test]
fn pacer_without_pcr_uses_the_fallback_rate() {
    let start = Instant::now();
    let mut pacer = PcrPacer::new(start, 1_504_000);
    let p = ts_packet(0x100, false, 0, None, &[0; 184]);
    for i in 0..100u64 {
        // 188 bytes at 1.504 Mbit/s is exactly 1 ms.
        assert_eq!(pacer.release_at(&p), start + Duration::from_millis(i));
    }
    // A zero rate is raised to the minimum rather than never releasing.
    let mut slow = PcrPacer::new(start, 0);
    slow.release_at(&p);
    assert_eq!(slow.release_at(&p), start + bytes_duration(188, 1_000));
}

#[test]
fn pacer_ignores_pcr_on_other_pids_and_caps_extrapolation() {
    let start = Instant::now();
    let mut pacer = PcrPacer::new(start, 1_000_000);
    let pcr_packet = |pid, pcr| ts_packet(pid, false, 0, Some(&Af { pcr: Some(pcr), ..Af::default() }), &[]);
    let plain = ts_packet(VIDEO_PID, false, 0, None, &[0; 184]);
    assert_eq!(pacer.release_at(&pcr_packet(VIDEO_PID, 0)), start);
    // Second PCR 40 ms later with one packet between: a slow interval.
    pacer.release_at(&plain);
    let second = pacer.release_at(&pcr_packet(VIDEO_PID, PCR_HZ / 25));
    assert_near(second, start + Duration::from_millis(40), "second PCR");
    // A PCR on another PID is not the clock.
    let other = pacer.release_at(&pcr_packet(0x200, 99 * PCR_HZ));
    assert!(other < start + Duration::from_millis(100));
    // A burst after the slow interval is held to one interval past the last PCR.
    let mut at = second;
    for _ in 0..1000 {
        at = pacer.release_at(&plain);
    }
    assert_near(at, start + Duration::from_millis(80), "burst capped at the next expected PCR");
}
