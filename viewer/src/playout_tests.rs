use std::collections::VecDeque;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;

const MS: u64 = 1000;
const SEC: u64 = 1_000_000;

/// Payload identifying its seq: one TS packet whose bytes after the sync byte are the seq.
fn payload(seq: u64) -> Bytes {
    let mut packet = vec![0u8; 188];
    packet[0] = 0x47;
    packet[1..9].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(packet)
}

fn chunk(seq: u64, ingest_us: u64, keyframe: bool) -> PlayoutChunk {
    PlayoutChunk { seq, ingest_us, keyframe, payload: payload(seq) }
}

fn config(latency_ms: u64, max_behind_ms: u64) -> PlayoutConfig {
    PlayoutConfig {
        latency: Duration::from_millis(latency_ms),
        max_buffered_chunks: 4096,
        max_behind: Duration::from_millis(max_behind_ms),
        // Most tests are about other rules; the start margin's own tests set it.
        start_margin: Duration::ZERO,
        // Nor about the startup budget: its tests set it.
        startup_budget: None,
    }
}

/// The defaults' start margin (400 ms) on top of `config`.
fn with_margin(latency_ms: u64, max_behind_ms: u64) -> PlayoutConfig {
    PlayoutConfig { start_margin: DEFAULT_START_MARGIN, ..config(latency_ms, max_behind_ms) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Out {
    seq: u64,
    at_us: u64,
    keyframe: bool,
    /// Lost seqs counted by the buffer since the previous output, and of those, skipped
    /// for catch-up.
    lost_before: u64,
    caught_up_before: u64,
}

/// Drives a buffer in virtual time: arrivals at their times, polls at `poll_timeout`,
/// except inside `paused` windows (the output task not being run).
struct Driver {
    buf: PlayoutBuffer,
    /// (arrival time, chunk), sorted by time.
    arrivals: VecDeque<(u64, PlayoutChunk)>,
    paused: Vec<(u64, u64)>,
    now_us: u64,
    out: Vec<Out>,
    lost_seen: u64,
    caught_up_seen: u64,
    context: String,
}

impl Driver {
    fn new(buf: PlayoutBuffer, mut arrivals: Vec<(u64, PlayoutChunk)>) -> Self {
        arrivals.sort_by_key(|(t, c)| (*t, c.seq));
        Self {
            buf,
            arrivals: arrivals.into(),
            paused: Vec::new(),
            now_us: 0,
            out: Vec::new(),
            lost_seen: 0,
            caught_up_seen: 0,
            context: String::new(),
        }
    }

    fn paused_at(&self, t: u64) -> Option<u64> {
        self.paused.iter().find(|(from, to)| (*from..*to).contains(&t)).map(|&(_, to)| to)
    }

    fn run_until(&mut self, end_us: u64) {
        loop {
            let next_arrival = self.arrivals.front().map(|(t, _)| *t);
            let next_poll = self.buf.poll_timeout().map(|t| {
                let t = t.max(self.now_us);
                self.paused_at(t).unwrap_or(t)
            });
            let t = match (next_arrival, next_poll) {
                (Some(a), Some(p)) => a.min(p),
                (Some(a), None) => a,
                (None, Some(p)) => p,
                (None, None) => break,
            };
            if t > end_us {
                break;
            }
            self.now_us = self.now_us.max(t);
            while self.arrivals.front().is_some_and(|(t, _)| *t <= self.now_us) {
                let (_, chunk) = self.arrivals.pop_front().expect("front exists");
                self.buf.insert(self.now_us, chunk);
            }
            if self.paused_at(self.now_us).is_none() {
                self.drain();
            }
        }
        self.now_us = self.now_us.max(end_us);
    }

    /// Polls until None, checking the invariants of every output.
    fn drain(&mut self) {
        while let Some(chunk) = self.buf.poll_output(self.now_us) {
            let stats = self.buf.stats();
            let out = Out {
                seq: chunk.seq,
                at_us: self.now_us,
                keyframe: chunk.keyframe,
                lost_before: stats.lost_chunks - self.lost_seen,
                caught_up_before: stats.skipped_for_catch_up - self.caught_up_seen,
            };
            self.lost_seen = stats.lost_chunks;
            self.caught_up_seen = stats.skipped_for_catch_up;
            assert_eq!(chunk.payload, payload(chunk.seq), "payload of seq {} {}", chunk.seq, self.context);
            match self.out.last() {
                None => {
                    // A keyframe, or the channel's very first chunk (the stream head rule).
                    assert!(
                        chunk.keyframe || chunk.seq == 0,
                        "first output {} is not a keyframe {}",
                        chunk.seq,
                        self.context
                    )
                }
                Some(prev) => {
                    assert!(chunk.seq > prev.seq, "seq {} after {} {}", chunk.seq, prev.seq, self.context);
                    assert_eq!(
                        chunk.seq - prev.seq - 1,
                        out.lost_before,
                        "seqs between {} and {} must each be counted lost once {}",
                        prev.seq,
                        chunk.seq,
                        self.context
                    );
                }
            }
            if out.caught_up_before > 0 {
                assert!(chunk.keyframe, "catch-up resumed at non-keyframe {} {}", chunk.seq, self.context);
            }
            self.out.push(out);
        }
        // No busy loop: after None the next wake-up is in the future.
        if let Some(t) = self.buf.poll_timeout() {
            assert!(t > self.now_us, "poll_timeout {t} not after now {} {}", self.now_us, self.context);
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.out.iter().map(|o| o.seq).collect()
    }
}

/// `n` chunks every `interval_us` from `start_us`, a keyframe every `gop` chunks from 0.
fn stream(n: u64, start_us: u64, interval_us: u64, gop: u64) -> Vec<PlayoutChunk> {
    (0..n).map(|seq| chunk(seq, start_us + seq * interval_us, seq % gop == 0)).collect()
}

#[test]
fn in_order_output_at_deadlines() {
    let chunks = stream(50, 10 * SEC, 40 * MS, 25);
    let arrivals = chunks.iter().map(|c| (c.ingest_us + 30 * MS, c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals);
    d.run_until(100 * SEC);
    assert_eq!(d.seqs(), (0..50).collect::<Vec<_>>());
    for (o, c) in d.out.iter().zip(&chunks) {
        assert_eq!(o.at_us, c.ingest_us + SEC, "seq {} leaves exactly at its deadline", o.seq);
    }
    let s = d.buf.stats();
    assert_eq!((s.chunks_out, s.bytes_out, s.lost_chunks), (50, 50 * 188, 0));
    assert_eq!(s.first_output_us, Some(11 * SEC));
    assert_eq!(s.last_playout_lag_us, Some(SEC));
    assert_eq!(s.playout_lag.count(), 50);
    assert_eq!(s.playout_lag.percentile_us(0.99), Some(SEC));
    assert_eq!((s.continuity_index(), s.stalled_us), (Some(1.0), 0));
    assert_eq!(s.stalled_us, 0);
    assert_eq!(s.buffered_chunks, 0);
}

#[test]
fn buffered_figures_and_poll_timeout() {
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    assert_eq!(buf.poll_timeout(), None, "nothing buffered");
    let arrival_us = SEC + 120 * MS;
    buf.insert(arrival_us, chunk(0, SEC, true));
    buf.insert(arrival_us, chunk(1, SEC + 40 * MS, false));
    buf.insert(arrival_us, chunk(3, SEC + 120 * MS, false));
    let s = buf.stats();
    assert_eq!((s.buffered_chunks, s.buffered_us), (3, 120 * MS));
    assert_eq!(buf.poll_timeout(), Some(2 * SEC));
    assert_eq!(buf.poll_output(2 * SEC - 1), None, "not due 1 µs early");
    assert_eq!(buf.poll_output(2 * SEC).map(|c| c.seq), Some(0));
    assert_eq!(buf.poll_output(2 * SEC), None);
    assert_eq!(buf.poll_timeout(), Some(2 * SEC + 40 * MS));
}

#[test]
fn reordering_inside_the_latency_is_fixed() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let chunks = stream(200, 10 * SEC, 20 * MS, 50);
    // Up to 400 ms of jitter against a 500 ms latency: arrivals are thoroughly shuffled.
    let arrivals = chunks.iter().map(|c| (c.ingest_us + rng.next_u64() % (400 * MS), c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(500, 2000)), arrivals);
    d.run_until(100 * SEC);
    assert_eq!(d.seqs(), (0..200).collect::<Vec<_>>());
    assert!(d.out.iter().zip(&chunks).all(|(o, c)| o.at_us == c.ingest_us + 500 * MS));
    let s = d.buf.stats();
    assert_eq!((s.lost_chunks, s.late_chunks, s.duplicate_chunks), (0, 0, 0));
    assert_eq!((s.continuity_index(), s.stalled_us), (Some(1.0), 0));
}

#[test]
fn hole_is_given_up_when_the_next_chunk_is_due() {
    let chunks = stream(10, 10 * SEC, 40 * MS, 25);
    let arrivals = chunks.iter().filter(|c| c.seq != 5).map(|c| (c.ingest_us + 10 * MS, c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals);
    // Until just before chunk 6's deadline, output waits at the hole.
    d.run_until(chunks[6].ingest_us + SEC - 1);
    assert_eq!(d.seqs(), vec![0, 1, 2, 3, 4]);
    assert_eq!(d.buf.stats().lost_chunks, 0, "a hole is not given up before the next chunk is due");
    assert_eq!(d.buf.poll_timeout(), Some(chunks[6].ingest_us + SEC));
    d.run_until(100 * SEC);
    assert_eq!(d.seqs(), vec![0, 1, 2, 3, 4, 6, 7, 8, 9]);
    assert_eq!(d.out[5].at_us, chunks[6].ingest_us + SEC, "6 leaves on time");
    let s = d.buf.stats();
    assert_eq!(s.lost_chunks, 1);
    assert_eq!(s.skipped_for_catch_up, 0);
    assert_eq!(s.lost_after_startup, 1);
    // 8 of 9 after-startup chunks on time (the first output is startup), 1 lost.
    assert_eq!(s.continuity_index(), Some(8.0 / 9.0));
}

#[test]
fn late_and_duplicate_chunks_are_counted_not_output() {
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    buf.insert(SEC, chunk(0, SEC, true));
    buf.insert(SEC, chunk(2, SEC + 40 * MS, false));
    buf.insert(SEC, chunk(2, SEC + 40 * MS, false)); // duplicate while held
    assert_eq!(buf.poll_output(2 * SEC + 40 * MS).map(|c| c.seq), Some(0));
    assert_eq!(buf.poll_output(2 * SEC + 40 * MS).map(|c| c.seq), Some(2), "hole 1 given up");
    buf.insert(2 * SEC + 50 * MS, chunk(1, SEC + 20 * MS, false)); // after its seq was given up
    buf.insert(2 * SEC + 50 * MS, chunk(0, SEC, true)); // after it was output
    assert_eq!(buf.poll_output(10 * SEC), None, "neither is output");
    let s = buf.stats();
    assert_eq!((s.chunks_out, s.lost_chunks, s.late_chunks, s.duplicate_chunks), (2, 1, 1, 2));
    assert_eq!(s.buffered_chunks, 0);
}

#[test]
fn output_starts_at_the_first_keyframe_received() {
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    let t = 10 * SEC;
    buf.insert(t, chunk(13, t, false)); // held: may follow a keyframe still to come
    buf.insert(t, chunk(10, t, false));
    assert_eq!(buf.poll_timeout(), None, "nothing to output before a keyframe");
    assert_eq!(buf.poll_output(t + 5 * SEC), None);
    buf.insert(t, chunk(12, t, true));
    buf.insert(t, chunk(11, t, false)); // before the start
    buf.insert(t, chunk(10, t, true)); // an earlier keyframe, too late to start at
    let out: Vec<u64> = std::iter::from_fn(|| buf.poll_output(t + SEC)).map(|c| c.seq).collect();
    assert_eq!(out, vec![12, 13]);
    let s = buf.stats();
    assert_eq!(s.chunks_before_start, 3, "10 (held), 11 and the late keyframe 10");
    assert_eq!((s.lost_chunks, s.late_chunks), (0, 0), "before the start is neither lost nor late");
}

#[test]
fn catch_up_after_output_stalls_for_5_s() {
    // 40 ms chunks, a keyframe each second (every 25), arriving 50 ms after ingest.
    let start_us = 10 * SEC;
    let chunks = stream(20 * 25, start_us, 40 * MS, 25);
    let arrivals = chunks.iter().map(|c| (c.ingest_us + 50 * MS, c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals);
    let stall_from = start_us + 5 * SEC;
    let stall_to = stall_from + 5 * SEC;
    d.paused.push((stall_from, stall_to));
    d.run_until(stall_to - 1);
    let before = d.out.len();
    let last_before = d.out[before - 1];
    assert_eq!(
        last_before.at_us,
        chunks[last_before.seq as usize].ingest_us + SEC,
        "on time until the stall"
    );
    d.run_until(start_us + 30 * SEC);

    let resumed = d.out[before];
    // At stall_to the newest chunk held was ingested at stall_to - 50 ms, so the newest
    // keyframe held is the one ingested at 19 s (seq 225); its deadline (20 s) is within
    // max_behind of 20 s.
    assert!(resumed.keyframe);
    assert_eq!(resumed.seq, 225);
    assert_eq!(resumed.at_us, stall_to, "skipped to, and due at once");
    assert_eq!(resumed.caught_up_before, 225 - last_before.seq - 1);
    let s = d.buf.stats();
    assert_eq!(s.skipped_for_catch_up, resumed.caught_up_before);
    assert_eq!(s.lost_chunks, s.skipped_for_catch_up);
    // Back at the live edge: everything after the resumption burst leaves on time.
    let after = &d.out[before + 1..];
    assert!(after
        .iter()
        .filter(|o| o.at_us > stall_to)
        .all(|o| o.at_us == chunks[o.seq as usize].ingest_us + SEC));
    assert_eq!(d.out.last().map(|o| o.seq), Some(20 * 25 - 1));
    assert_eq!(s.last_playout_lag_us, Some(SEC));
    // The output stood still from the first stalled chunk's deadline (+ slack) to the resumption.
    let first_stalled_deadline = chunks[last_before.seq as usize + 1].ingest_us + SEC;
    assert_eq!(s.stalled_us, stall_to - (first_stalled_deadline + ON_TIME_SLACK_US));
}

#[test]
fn a_late_output_tells_a_late_swarm_from_a_late_process() {
    // 40 ms chunks arriving 30 ms after ingest, but seqs 10-12 come 1.03 s after, 10 ms
    // past their deadlines and the slack (the swarm was late), and each before the next
    // held chunk's deadline, so none is given up.
    let chunks = stream(50, 10 * SEC, 40 * MS, 25);
    let delay = |seq: u64| if (10..13).contains(&seq) { 1030 * MS } else { 30 * MS };
    let arrivals: Vec<_> = chunks.iter().map(|c| (c.ingest_us + delay(c.seq), c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals.clone());
    d.run_until(100 * SEC);
    let s = d.buf.stats();
    assert_eq!(d.seqs().len(), 50, "{s:?}");
    // Each left as it came; 13 on was in time.
    assert_eq!((s.late_out_arrived_late, s.late_out_held_in_time), (3, 0), "{s:?}");
    assert_eq!(s.chunks_due_after_startup - s.chunks_on_time, 3);

    // The same arrivals, and the output not polled for 200 ms from seq 30's deadline (a
    // busy process): the chunks due then were held in time.
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals);
    let pause_from = chunks[30].ingest_us + SEC;
    d.paused.push((pause_from, pause_from + 200 * MS));
    d.run_until(100 * SEC);
    let s = d.buf.stats();
    assert_eq!(d.seqs().len(), 50, "{s:?}");
    // Seqs 30-34 were due in the pause, more than the 20 ms slack before its end (35 is
    // due at its end).
    assert_eq!((s.late_out_arrived_late, s.late_out_held_in_time), (3, 5), "{s:?}");
}

#[test]
fn catch_up_waits_for_the_next_keyframe_if_none_held_is_fresh() {
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    let t = 100 * SEC;
    buf.insert(t, chunk(0, t, true));
    assert_eq!(buf.poll_output(t + SEC).map(|c| c.seq), Some(0));
    // Chunks 1..=9 arrive, then output is not polled for a while.
    for seq in 1..10 {
        buf.insert(t + seq * 100 * MS, chunk(seq, t + seq * 100 * MS, false));
    }
    let now = t + 3500 * MS;
    // Chunk 1 is 2.4 s late, no keyframe is held, but chunk 9 (due at t + 1.9 s) is only
    // 1.6 s late: data is still arriving in time, so a keyframe should follow.
    assert_eq!(buf.poll_output(now), None, "waits for a keyframe rather than play 2.4 s late");
    assert_eq!(buf.poll_timeout(), Some(t + 900 * MS + SEC + 2 * SEC + 1), "until chunk 9 goes stale");
    buf.insert(now, chunk(10, now - 50 * MS, true));
    assert_eq!(buf.poll_timeout(), Some(t + 100 * MS + SEC), "an arrival makes the buffer look again");
    assert_eq!(buf.poll_output(now), None, "keyframe 10 taken, not yet due");
    let s = buf.stats();
    assert_eq!((s.lost_chunks, s.skipped_for_catch_up), (9, 9));
    assert_eq!(buf.poll_output(now - 50 * MS + SEC).map(|c| c.seq), Some(10));
}

#[test]
fn late_stream_plays_in_order_without_skipping() {
    // The swarm delivers everything 5 s after ingest, past latency + max_behind: there is
    // nothing fresher to skip to, so the buffer plays in order as chunks come.
    let chunks = stream(100, 10 * SEC, 40 * MS, 25);
    let arrivals = chunks.iter().map(|c| (c.ingest_us + 5 * SEC, c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals);
    d.run_until(100 * SEC);
    assert_eq!(d.seqs(), (0..100).collect::<Vec<_>>());
    assert!(d.out.iter().zip(&chunks).all(|(o, c)| o.at_us == c.ingest_us + 5 * SEC));
    let s = d.buf.stats();
    assert_eq!(s.lost_chunks, 0);
    assert_eq!(s.last_playout_lag_us, Some(5 * SEC));
}

#[test]
fn start_far_behind_skips_to_a_fresh_keyframe() {
    // Fast join hands over an old group (keyframe 0 due 3 s ago) and a newer one.
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    let now = 100 * SEC;
    for seq in 0..50 {
        buf.insert(now, chunk(seq, now - 4 * SEC + seq * 40 * MS, seq % 25 == 0));
    }
    let first = buf.poll_output(now).expect("keyframe 25 is due");
    assert_eq!((first.seq, first.keyframe), (25, true));
    let s = buf.stats();
    assert_eq!((s.lost_chunks, s.skipped_for_catch_up, s.lost_after_startup), (25, 25, 0));
}

/// A newcomer: keyframe 100 was ingested 950 ms ago (due in 50 ms at a 1 s latency) and
/// arrives at `now`, the live chunks 111..=120 (25 ms apart, due from 325 ms) just after
/// it, and the rest of its group, 101..=110, at `group_at`, behind the live chunks.
fn newcomer(now: u64, group_at: u64) -> Vec<(u64, PlayoutChunk)> {
    let at = |i: u64| chunk(100 + i, now - 950 * MS + i * 25 * MS, i == 0);
    let mut arrivals = vec![(now, at(0))];
    arrivals.extend((11..=20).map(|i| (now + 10 * MS, at(i))));
    arrivals.extend((1..=10).map(|i| (group_at, at(i))));
    arrivals
}

#[test]
fn the_first_output_waits_up_to_the_start_margin_for_its_keyframe_group() {
    let now = 100 * SEC;
    let mut d = Driver::new(PlayoutBuffer::new(with_margin(1000, 2000)), newcomer(now, now + 350 * MS));
    d.run_until(now + 3 * SEC);
    assert_eq!(d.seqs(), (100..=120).collect::<Vec<_>>());
    let s = d.buf.stats();
    assert_eq!((s.lost_chunks, s.stalled_us, s.continuity_index()), (0, 0, Some(1.0)), "{s:?}");
    // Output began once the group was in, and the schedule keeps that offset.
    let first_out = d.out[0].at_us;
    assert!((now + 350 * MS..=now + 360 * MS).contains(&first_out), "{}", first_out - now);
    assert_eq!(s.start_shift_us, first_out - (now + 50 * MS));

    // Without the margin the group's chunks are given up once the live ones are due.
    let no_margin = config(1000, 2000);
    let mut d = Driver::new(PlayoutBuffer::new(no_margin), newcomer(now, now + 350 * MS));
    d.run_until(now + 3 * SEC);
    assert_eq!(d.buf.stats().lost_chunks, 10);
}

#[test]
fn a_newcomer_holding_the_channels_head_starts_at_its_keyframe_under_the_margin() {
    // It began watching 975 ms into the channel: its parents sent the group from keyframe
    // 1, its swarm pulled chunk 0 before it, and the live chunks came ahead of the group's.
    // Output from seq 0 at the plain deadlines would give up the group's chunks still on
    // the way; it starts at the keyframe and waits for them.
    let now = 100 * SEC;
    let at = |seq: u64| chunk(seq, now - 975 * MS + seq * 25 * MS, seq == 1);
    let mut arrivals = vec![(now, at(1)), (now, at(0))];
    arrivals.extend((12..=21).map(|seq| (now + 10 * MS, at(seq))));
    arrivals.extend((2..=11).map(|seq| (now + 350 * MS, at(seq))));
    let mut d = Driver::new(PlayoutBuffer::new(with_margin(1000, 2000)), arrivals);
    d.run_until(now + 3 * SEC);
    assert_eq!(d.seqs(), (1..=21).collect::<Vec<_>>());
    let s = d.buf.stats();
    assert_eq!((s.lost_chunks, s.chunks_before_start, s.continuity_index()), (0, 1, Some(1.0)), "{s:?}");
    assert!(s.start_shift_us > 0, "{s:?}");
}

#[test]
fn the_start_waits_no_longer_than_the_margin() {
    // The group comes 1 s late: output starts after the 400 ms margin and the chunks still
    // missing by then are given up.
    let now = 100 * SEC;
    let mut d = Driver::new(PlayoutBuffer::new(with_margin(1000, 2000)), newcomer(now, now + SEC));
    d.run_until(now + 3 * SEC);
    let s = d.buf.stats();
    assert_eq!(s.start_shift_us, 400 * MS);
    assert_eq!(d.out[0].at_us, now + 450 * MS);
    assert_eq!(s.lost_chunks, 10);
    // No later keyframe was held when the margin ran out, so the start stayed.
    assert_eq!(s.start_restarts, 0);
}

#[test]
fn a_start_whose_group_cannot_come_in_time_moves_to_the_next_keyframe_held() {
    // The group is 10 s away, but the next keyframe, 140 (ingested 50 ms from now, due at
    // now + 1050 ms), and its chunks come live while the margin runs out. Starting at 100
    // would give up 101..=110 in the first half second; starting at 140 loses nothing.
    let now = 100 * SEC;
    let mut arrivals = newcomer(now, now + 10 * SEC);
    let live = |i: u64| chunk(100 + i, now - 950 * MS + i * 25 * MS, i == 40);
    arrivals.extend((40..=60).map(|i| (now - 850 * MS + i * 25 * MS, live(i))));
    let mut d = Driver::new(PlayoutBuffer::new(with_margin(1000, 2000)), arrivals);
    d.run_until(now + 12 * SEC);
    assert_eq!(d.seqs(), (140..=160).collect::<Vec<_>>());
    let s = d.buf.stats();
    assert_eq!((s.lost_chunks, s.start_restarts, s.start_shift_us), (0, 1, 0), "{s:?}");
    assert_eq!(s.continuity_index(), Some(1.0));
    // 100 and 111..=120 when the start moved, 101..=110 when they came at last.
    assert_eq!(s.chunks_before_start, 21);
    assert_eq!(d.out[0].at_us, now + 1050 * MS);
}

#[test]
fn a_gap_not_yet_due_when_the_margin_runs_out_keeps_the_start() {
    // The group comes at once but for 106, which comes 560 ms later, 40 ms before its
    // shifted deadline; keyframe 140 is held by then. When the margin runs out, 105 (the
    // last chunk before the gap) is due 125 ms later, so output starts at 100 as planned,
    // and 106 fills in time.
    let now = 100 * SEC;
    let at = |i: u64| chunk(100 + i, now - 950 * MS + i * 25 * MS, i == 0 || i == 40);
    let mut arrivals = vec![(now, at(0)), (now + 560 * MS, at(6))];
    arrivals.extend((1..=30).filter(|&i| i != 6).map(|i| (now + 10 * MS, at(i))));
    arrivals.extend((40..=45).map(|i| (now + 300 * MS, at(i))));
    let mut d = Driver::new(PlayoutBuffer::new(with_margin(1000, 2000)), arrivals);
    d.run_until(now + 3 * SEC);
    let s = d.buf.stats();
    assert_eq!((s.start_restarts, s.start_shift_us, s.lost_chunks), (0, 400 * MS, 9), "{s:?}");
    // 100..=130 out, then 131..=139 never came.
    assert_eq!(d.seqs(), (100..=130).chain(140..=145).collect::<Vec<_>>());
}

#[test]
fn a_start_with_its_group_in_time_is_not_shifted() {
    // The group arrives before the keyframe is due: nothing to wait for.
    let now = 100 * SEC;
    let mut d = Driver::new(PlayoutBuffer::new(with_margin(1000, 2000)), newcomer(now, now + 20 * MS));
    d.run_until(now + 3 * SEC);
    let s = d.buf.stats();
    assert_eq!((s.start_shift_us, s.lost_chunks), (0, 0));
    assert_eq!(d.out[0].at_us, now + 50 * MS);
}

/// The default start margin and startup budget on a 1 s target lag.
fn with_budget() -> PlayoutConfig {
    PlayoutConfig { startup_budget: Some(DEFAULT_STARTUP_BUDGET), ..with_margin(1000, 2000) }
}

/// A newcomer that began watching at `t0` on a live channel of 25 ms chunks with a
/// keyframe every 40: its start keyframe, 200, was ingested at `t0 + 100 ms`, and chunk
/// `seq` arrives `arrival_lag_ms(seq)` after its ingest (None: never).
fn young_keyframe_start(
    config: PlayoutConfig,
    t0: u64,
    arrival_lag_ms: impl Fn(u64) -> Option<u64>,
) -> Driver {
    let arrivals = (200..=320)
        .filter_map(|seq| {
            let ingest_us = t0 + 100 * MS + (seq - 200) * 25 * MS;
            arrival_lag_ms(seq).map(|lag| (ingest_us + lag * MS, chunk(seq, ingest_us, seq % 40 == 0)))
        })
        .collect();
    let mut buf = PlayoutBuffer::new(config);
    // Watching begins: the budget's clock starts.
    assert_eq!(buf.poll_output(t0), None);
    Driver::new(buf, arrivals)
}

#[test]
fn a_newcomer_with_a_young_keyframe_starts_within_the_startup_budget() {
    let t0 = 100 * SEC;
    let mut d = young_keyframe_start(with_budget(), t0, |_| Some(200));
    d.run_until(t0 + 10 * SEC);
    assert_eq!(d.seqs(), (200..=320).collect::<Vec<_>>());
    // At the target lag the keyframe would leave at t0 + 1100 ms. At t0 + 800 ms the
    // budget is over and 200..=216 (400 ms of stream) are held: output starts then, 300 ms
    // ahead, and keeps that pace.
    assert_eq!(d.out[0].at_us, t0 + 800 * MS);
    for o in &d.out {
        let ingest_us = t0 + 100 * MS + (o.seq - 200) * 25 * MS;
        assert_eq!(o.at_us - ingest_us, 700 * MS, "seq {}", o.seq);
    }
    let s = d.buf.stats();
    assert_eq!((s.start_ahead_us, s.ahead_us, s.lost_chunks, s.stalled_us), (300 * MS, 300 * MS, 0, 0));
    assert_eq!(s.continuity_index(), Some(1.0));

    // Without a budget it waits for the target lag.
    let mut d = young_keyframe_start(with_margin(1000, 2000), t0, |_| Some(200));
    d.run_until(t0 + 10 * SEC);
    assert_eq!(d.out[0].at_us, t0 + 1100 * MS);
    assert_eq!(d.buf.stats().start_ahead_us, 0);
    // A viewer that asked for a deep buffer (3 s) keeps at least half of it: output starts
    // 1.5 s before the keyframe's deadline, not at the end of the budget.
    let deep = PlayoutConfig { latency: Duration::from_secs(3), ..with_budget() };
    let mut d = young_keyframe_start(deep, t0, |_| Some(200));
    d.run_until(t0 + 10 * SEC);
    assert_eq!(d.out[0].at_us, t0 + 1600 * MS);
    assert_eq!(d.buf.stats().start_ahead_us, 1500 * MS);
}

#[test]
fn a_restarted_start_begins_once_its_keyframe_span_is_held() {
    // Watching began at `now`, half a keyframe interval after keyframe 100. Its group
    // never comes, so the start moves to keyframe 140 (ingested at now + 500 ms) when the
    // margin runs out, at now + 900 ms: too late for the budget (140 was too young to meet
    // it). Once 140..=156 (400 ms of stream) are in, at now + 1 s, output starts, half
    // the latency ahead, not at 140's target-lag deadline half a second later.
    let now = 100 * SEC;
    let at = |i: u64| chunk(100 + i, now - 500 * MS + i * 25 * MS, i % 40 == 0);
    let mut arrivals = vec![(now, at(0))];
    arrivals.extend((11..=20).map(|i| (now + 10 * MS, at(i))));
    arrivals.extend((1..=10).map(|i| (now + 10 * SEC, at(i))));
    arrivals.extend((40..=80).map(|i| (now - 400 * MS + i * 25 * MS, at(i))));
    let run = |config: PlayoutConfig| {
        let mut buf = PlayoutBuffer::new(config);
        assert_eq!(buf.poll_output(now), None);
        let mut d = Driver::new(buf, arrivals.clone());
        d.run_until(now + 12 * SEC);
        d
    };
    let d = run(with_budget());
    assert_eq!(d.seqs(), (140..=180).collect::<Vec<_>>());
    let s = d.buf.stats();
    assert_eq!((s.start_restarts, s.lost_chunks, s.stalled_us), (1, 0, 0), "{s:?}");
    assert_eq!(d.out[0].at_us, now + SEC);
    assert_eq!(s.start_ahead_us, 500 * MS);

    // Without a budget, at the target lag.
    let d = run(with_margin(1000, 2000));
    assert_eq!(d.out[0].at_us, now + 1500 * MS);
    assert_eq!((d.buf.stats().start_restarts, d.buf.stats().start_ahead_us), (1, 0));
}

#[test]
fn running_ahead_a_late_chunk_is_waited_for_not_given_up() {
    // Chunk 230 comes 850 ms after its ingest: past the early schedule (700 ms), within
    // the target lag (1 s).
    let t0 = 100 * SEC;
    let mut d = young_keyframe_start(with_budget(), t0, |seq| Some(if seq == 230 { 850 } else { 200 }));
    d.run_until(t0 + 10 * SEC);
    assert_eq!(d.seqs(), (200..=320).collect::<Vec<_>>());
    let ingest = |seq: u64| t0 + 100 * MS + (seq - 200) * 25 * MS;
    let at = |seq: u64| d.out[(seq - 200) as usize].at_us;
    assert_eq!(at(230), ingest(230) + 850 * MS, "out when it came");
    // The schedule moved later by the wait, less the timer slack, for good.
    assert_eq!(at(231) - ingest(231), 830 * MS);
    assert_eq!(at(320) - ingest(320), 830 * MS);
    let s = d.buf.stats();
    assert_eq!((s.lost_chunks, s.continuity_index()), (0, Some(1.0)));
    assert_eq!((s.ahead_us, s.stalled_us), (170 * MS, 130 * MS));

    // A chunk that never comes is given up when the next is due at the target lag, and
    // the schedule is back there.
    let mut d = young_keyframe_start(with_budget(), t0, |seq| (seq != 230).then_some(200));
    d.run_until(t0 + 10 * SEC);
    let s = d.buf.stats();
    assert_eq!(s.lost_chunks, 1);
    let out_231 = d.out.iter().find(|o| o.seq == 231).expect("231 out").at_us;
    assert_eq!(out_231, ingest(231) + SEC);
    assert_eq!(s.ahead_us, 20 * MS, "all but the timer slack given back");
}

#[test]
fn a_viewer_waiting_for_the_channel_to_begin_keeps_its_target_lag() {
    // The channel's first keyframe is ingested 600 ms after watching began: 400 ms of
    // stream from it cannot be held by the end of the budget, so there is no startup to
    // shorten.
    let t0 = 100 * SEC;
    let arrivals = (0..=80).map(|seq| {
        (t0 + 600 * MS + seq * 25 * MS + 20 * MS, chunk(seq, t0 + 600 * MS + seq * 25 * MS, seq % 40 == 0))
    });
    let mut buf = PlayoutBuffer::new(with_budget());
    assert_eq!(buf.poll_output(t0), None);
    let mut d = Driver::new(buf, arrivals.collect());
    d.run_until(t0 + 10 * SEC);
    assert_eq!(d.out[0].at_us, t0 + 1600 * MS);
    assert_eq!(d.buf.stats().start_ahead_us, 0);
}

#[test]
fn bound_on_buffered_chunks() {
    let mut buf = PlayoutBuffer::new(PlayoutConfig { max_buffered_chunks: 8, ..config(1000, 2000) });
    let t = 10 * SEC;
    for seq in 0..20 {
        buf.insert(t + 20 * MS, chunk(seq, t + seq * MS, seq == 0));
    }
    let s = buf.stats();
    assert_eq!((s.buffered_chunks, s.chunks_dropped_full), (8, 12));
    buf.insert(t + 20 * MS, chunk(5, t + 5 * MS, false)); // lower than all but 0: refused
    assert_eq!(buf.stats().chunks_dropped_full, 13);
    let out: Vec<u64> = std::iter::from_fn(|| buf.poll_output(t + SEC + 20 * MS)).map(|c| c.seq).collect();
    let mut want = vec![0];
    want.extend(13..20);
    assert_eq!(out, want, "the newest are kept, and the keyframe output starts at");
    assert_eq!(buf.stats().lost_chunks, 12);
}

#[test]
fn clock_skew_is_corrected() {
    // Our clock is 5 s behind the publisher's; chunks take 20 ms to arrive.
    let offset_us = 5 * SEC;
    let chunks = stream(50, 100 * SEC, 40 * MS, 25);
    let arrivals = chunks.iter().map(|c| (c.ingest_us + 20 * MS - offset_us, c.clone())).collect();
    let mut d = Driver::new(PlayoutBuffer::new(config(1000, 2000)), arrivals);
    d.run_until(200 * SEC);
    assert_eq!(d.seqs(), (0..50).collect::<Vec<_>>());
    let s = d.buf.stats();
    assert_eq!(s.skew_us, offset_us - 20 * MS);
    for (o, c) in d.out.iter().zip(&chunks) {
        // In true (publisher) time each chunk leaves latency + the 20 ms the skew
        // estimate cannot see after ingest, not 5 s later.
        assert_eq!(o.at_us + offset_us - c.ingest_us, SEC + 20 * MS);
    }
    assert_eq!(s.last_playout_lag_us, Some(SEC), "lag read on the corrected clock");
    assert_eq!(s.lost_chunks, 0);
}

#[test]
fn no_panic_at_the_edges_of_u64() {
    let mut buf = PlayoutBuffer::new(PlayoutConfig {
        latency: Duration::MAX,
        max_buffered_chunks: 0,
        max_behind: Duration::MAX,
        start_margin: Duration::MAX,
        startup_budget: Some(Duration::MAX),
    });
    buf.insert(0, chunk(u64::MAX, u64::MAX, true));
    buf.insert(u64::MAX, chunk(u64::MAX - 1, u64::MAX, true));
    buf.insert(0, chunk(0, 0, true));
    assert!(buf.poll_output(u64::MAX).is_some());
    let _ = buf.poll_timeout();
    let s = buf.stats();
    assert_eq!(s.late_chunks, 1, "seq u64::MAX is refused");
    let _ = s.continuity_index();
}

/// Random arrival order, loss, duplicates, late arrivals, clock skew, output stalls and
/// buffer bounds; checks the invariants in `Driver::drain` plus exact accounting.
/// `RILL_TEST_SEED=N` runs only seed N.
#[test]
fn randomized_invariants() {
    let seeds: Vec<u64> = match std::env::var("RILL_TEST_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (1..=300).collect(),
    };
    for seed in seeds {
        randomized_case(seed);
    }
}

fn randomized_case(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut below = |n: u64| rng.next_u64() % n.max(1);
    let context = format!("(reproduce with RILL_TEST_SEED={seed})");
    let n = 200 + below(800);
    let interval_us = (10 + below(40)) * MS;
    let gop = 5 + below(60);
    let keyframe_offset = below(gop);
    let latency_ms = 100 + below(1500);
    let max_behind_ms = 200 + below(3000);
    let max_buffered_chunks = if below(4) == 0 { 1 + below(100) as usize } else { 4096 };
    let loss_per_mille = below(200);
    let jitter_us = below(latency_ms * 2) * MS;
    let offset_us = if below(3) == 0 { below(3 * SEC) } else { 0 };
    let base_us = 1000 * SEC;

    let mut arrivals = Vec::new();
    for seq in 0..n {
        let ingest_us = base_us + seq * interval_us;
        let c = chunk(seq, ingest_us, seq % gop == keyframe_offset);
        let copies = if below(1000) < loss_per_mille {
            0
        } else if below(20) == 0 {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay_us = 5 * MS + below(jitter_us + 1);
            if below(100) == 0 {
                delay_us += below(8 * SEC); // a straggler
            }
            arrivals.push((ingest_us + delay_us - offset_us, c.clone()));
        }
    }
    let received = arrivals.len() as u64;
    let config = PlayoutConfig {
        latency: Duration::from_millis(latency_ms),
        max_buffered_chunks,
        max_behind: Duration::from_millis(max_behind_ms),
        start_margin: Duration::from_millis(below(600)),
        startup_budget: (below(2) == 0).then(|| Duration::from_millis(below(1500))),
    };
    let mut d = Driver::new(PlayoutBuffer::new(config), arrivals);
    d.context = context.clone();
    for _ in 0..below(4) {
        let from = base_us + below(n * interval_us);
        d.paused.push((from, from + below(6 * SEC)));
    }
    let end_us = base_us + n * interval_us + 20 * SEC;
    let mut t = 0;
    while t < end_us {
        t += SEC;
        d.run_until(t);
        assert!(d.buf.stats().buffered_chunks <= max_buffered_chunks, "bound {context}");
    }
    // Long after the end everything held has been output or given up (if output started:
    // all keyframes may have been lost).
    d.run_until(u64::MAX / 2);
    let s = d.buf.stats();
    if s.first_output_us.is_some() {
        assert_eq!(s.buffered_chunks, 0, "{context}");
    }
    assert_eq!(s.chunks_out, d.out.len() as u64, "{context}");
    assert_eq!(s.playout_lag.count(), s.chunks_out, "{context}");
    assert!(s.skipped_for_catch_up <= s.lost_chunks, "{context}");
    assert!(s.chunks_on_time <= s.chunks_due_after_startup, "{context}");
    assert_eq!(
        s.late_out_arrived_late + s.late_out_held_in_time,
        s.chunks_due_after_startup - s.chunks_on_time,
        "every late output has one cause {context}"
    );
    if let Some(ci) = s.continuity_index() {
        assert!((0.0..=1.0).contains(&ci), "{context}");
    }
    // Every arrival ended somewhere: output, dropped with a count, or held and then given
    // up (at most one per lost seq).
    let dropped = s.late_chunks + s.duplicate_chunks + s.chunks_before_start + s.chunks_dropped_full;
    assert!(s.chunks_out + dropped <= received, "{context}");
    assert!(received <= s.chunks_out + dropped + s.lost_chunks, "{context}");
    if let (Some(first), Some(last)) = (d.out.first(), d.out.last()) {
        let lost_between: u64 = d.out[1..].iter().map(|o| o.lost_before).sum();
        assert_eq!(last.seq - first.seq + 1, d.out.len() as u64 + lost_between, "{context}");
    }
}

#[test]
fn a_viewer_present_from_the_start_outputs_the_channel_from_seq_0() {
    // An encoder's first chunk (e.g. ffmpeg's SDT) precedes its first keyframe.
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    let t = 10 * SEC;
    buf.insert(t + 30 * MS, chunk(1, t + 25 * MS, true)); // the keyframe arrives first
    buf.insert(t + 31 * MS, chunk(0, t, false));
    buf.insert(t + 60 * MS, chunk(2, t + 50 * MS, false));
    let out: Vec<u64> = std::iter::from_fn(|| buf.poll_output(t + 2 * SEC)).map(|c| c.seq).collect();
    assert_eq!(out, vec![0, 1, 2]);
    assert_eq!(buf.stats().chunks_before_start, 0);

    // Without seq 0 the start is the keyframe, and what came before it is counted.
    let mut buf = PlayoutBuffer::new(config(1000, 2000));
    buf.insert(t, chunk(2, t, false));
    buf.insert(t, chunk(3, t + 25 * MS, true));
    buf.insert(t, chunk(4, t + 50 * MS, false));
    let out: Vec<u64> = std::iter::from_fn(|| buf.poll_output(t + 2 * SEC)).map(|c| c.seq).collect();
    assert_eq!(out, vec![3, 4]);
    assert_eq!(buf.stats().chunks_before_start, 1);
    // Seq 0 arriving after output began is before our start, not output.
    buf.insert(t + 2 * SEC, chunk(0, t - 50 * MS, false));
    assert_eq!(buf.poll_output(t + 3 * SEC), None);
    assert_eq!(buf.stats().chunks_before_start, 2);
}
