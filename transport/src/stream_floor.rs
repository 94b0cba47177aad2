//! The live stream's rate floor: how the Stream class keeps its bitrate when a loss-based
//! flow holds the bottleneck queue above the delay target (where LEDBAT++ alone would
//! shrink to its minimum window and starve the stream).
//!
//! The floor is a rate the stream may use whatever the queueing delay:
//! `min(allowance, STREAM_FLOOR_HEADROOM × offered)`, turned into a window by × srtt.
//! - *offered* is the rate at which the application hands us Stream-class bytes (a live
//!   stream has a bitrate; we never need more than a little above it).
//! - *allowance* is a loss-based rate in the manner of WebRTC's GCC loss controller
//!   (draft-ietf-rmcat-gcc-02 §6): per round trip, with loss fraction p, it shrinks by
//!   (1 − p/2) if p > 10%, holds for 2% ≤ p ≤ 10%, and grows 5% if p < 2% until it no
//!   longer limits the stream (then it is lifted, so a new stream starts at its rate). So the stream keeps
//!   its rate through the few percent of drop-tail loss a TCP flow causes, but backs off
//!   when the path really cannot carry it, and an application that pushes bulk data as
//!   Stream class cannot run away from loss either.

use std::time::{Duration, Instant};

/// Floor = at most this × the offered rate: room for retransmissions and for the
/// burstiness of chunked video (a whole chunk arrives at once).
pub const STREAM_FLOOR_HEADROOM: f64 = 2.0;
/// draft-ietf-rmcat-gcc-02 §6: below 2% loss the rate grows by 5% per update.
const LOW_LOSS: f64 = 0.02;
const GROWTH: f64 = 1.05;
/// draft-ietf-rmcat-gcc-02 §6: above 10% loss the rate is multiplied by (1 − 0.5 p).
const HIGH_LOSS: f64 = 0.10;
const DECREASE_FACTOR: f64 = 0.5;
/// Fewer packets than this in an interval say nothing about the loss rate: keep counting.
const MIN_SAMPLES: u32 = 10;
/// Shortest update interval, so tiny RTTs do not turn 5% per RTT into a runaway.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Offered-rate meter: bytes over the last `RATE_BUCKETS` buckets of `RATE_BUCKET`.
const RATE_BUCKET: Duration = Duration::from_millis(250);
const RATE_BUCKETS: usize = 4;
/// The shortest span the offered rate is averaged over (one 16 KiB chunk at 4 Mbit/s
/// takes 33 ms; shorter spans would see single chunks as huge rates).
const MIN_METER_SPAN: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub(crate) struct StreamFloor {
    /// Offered bytes per bucket; `[0]` is the current, partial bucket.
    buckets: [u64; RATE_BUCKETS + 1],
    bucket_start: Instant,
    /// Loss-based allowance in bytes/s; None while loss does not limit the stream.
    allowance: Option<f64>,
    /// When the stream first offered data (the meter is young until a full span passed).
    first_offer: Option<Instant>,
    interval_start: Instant,
    acked: u32,
    lost: u32,
}

impl StreamFloor {
    pub fn new(now: Instant) -> Self {
        Self {
            buckets: [0; RATE_BUCKETS + 1],
            bucket_start: now,
            allowance: None,
            first_offer: None,
            interval_start: now,
            acked: 0,
            lost: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        for _ in 0..=RATE_BUCKETS {
            if now.saturating_duration_since(self.bucket_start) < RATE_BUCKET {
                return;
            }
            self.buckets.rotate_right(1);
            self.buckets[0] = 0;
            self.bucket_start += RATE_BUCKET;
        }
        // Idle for longer than the whole meter: start afresh.
        self.bucket_start = now;
    }

    /// The application queued `bytes` of Stream-class data.
    pub fn on_offered(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.buckets[0] += bytes as u64;
        self.first_offer.get_or_insert(now);
    }

    /// Offered rate, bytes per second, over the last second (plus the current bucket).
    pub fn offered_rate(&self, now: Instant) -> f64 {
        let partial = now.saturating_duration_since(self.bucket_start).min(RATE_BUCKET);
        let full_span = RATE_BUCKET * RATE_BUCKETS as u32 + partial;
        // A young meter divides by the time it has been running, so a new stream's floor
        // is right from its first messages instead of ramping up over a second.
        let age = self.first_offer.map_or(full_span, |f| now.saturating_duration_since(f));
        let span = full_span.min(age).max(MIN_METER_SPAN);
        self.buckets.iter().sum::<u64>() as f64 / span.as_secs_f64()
    }

    /// A packet of the session was acked (`lost` = false) or declared lost.
    pub fn on_packet_outcome(&mut self, now: Instant, lost: bool, srtt: Duration) {
        if lost {
            self.lost += 1;
        } else {
            self.acked += 1;
        }
        let total = self.acked + self.lost;
        if total < MIN_SAMPLES || now.saturating_duration_since(self.interval_start) < srtt.max(MIN_INTERVAL)
        {
            return;
        }
        let p = self.lost as f64 / total as f64;
        let cap = STREAM_FLOOR_HEADROOM * self.offered_rate(now);
        let a = self.allowance.unwrap_or(cap).min(cap);
        self.allowance = if p > HIGH_LOSS {
            Some(a * (1.0 - DECREASE_FACTOR * p))
        } else if p >= LOW_LOSS {
            Some(a)
        } else {
            // Growing past what the stream uses would only bank credit: lift the limit.
            Some(a * GROWTH).filter(|&next| next < cap)
        };
        self.interval_start = now;
        self.acked = 0;
        self.lost = 0;
    }

    /// The floor as a window in bytes (0 when the stream offers nothing).
    pub fn window(&self, now: Instant, srtt: Duration) -> usize {
        let cap = STREAM_FLOOR_HEADROOM * self.offered_rate(now);
        let rate = self.allowance.map_or(cap, |a| a.min(cap));
        (rate * srtt.as_secs_f64()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feed a 500 kB/s stream for `secs` with the given per-packet loss pattern.
    fn run(floor: &mut StreamFloor, start: Instant, secs: u64, lose_every: Option<u32>) -> Instant {
        let srtt = 100 * MS;
        let mut now = start;
        for n in 1..=secs as u32 * 1000 {
            now += MS;
            floor.on_offered(now, 500);
            let lost = lose_every.is_some_and(|k| n % k == 0);
            floor.on_packet_outcome(now, lost, srtt);
        }
        now
    }

    #[test]
    fn floor_tracks_offered_rate_with_headroom() {
        let t0 = Instant::now();
        let mut f = StreamFloor::new(t0);
        let now = run(&mut f, t0, 5, None);
        let rate = f.offered_rate(now);
        assert!((rate - 500_000.0).abs() < 60_000.0, "offered {rate}");
        let w = f.window(now, 100 * MS);
        // 2 × 500 kB/s × 100 ms = 100 kB.
        assert!((80_000..=110_000).contains(&w), "window {w}");
    }

    #[test]
    fn moderate_loss_keeps_the_floor_heavy_loss_cuts_it() {
        let t0 = Instant::now();
        let mut f = StreamFloor::new(t0);
        let now = run(&mut f, t0, 3, None);
        let before = f.window(now, 100 * MS);
        // 5% loss (a TCP flow's drop-tail episodes): held.
        let now = run(&mut f, now, 5, Some(20));
        assert!(f.window(now, 100 * MS) as f64 >= 0.9 * before as f64);
        // 50% loss: the path cannot carry the stream; the floor collapses.
        let now = run(&mut f, now, 5, Some(2));
        assert!((f.window(now, 100 * MS) as f64) < 0.1 * before as f64);
        // Loss gone: it grows back (5% per update), but never above 2× offered.
        let now = run(&mut f, now, 30, None);
        let w = f.window(now, 100 * MS);
        assert!(w as f64 >= 0.9 * before as f64 && w <= 110_000, "recovered {w}");
    }

    #[test]
    fn no_offered_data_no_floor_and_idle_resets_meter() {
        let t0 = Instant::now();
        let mut f = StreamFloor::new(t0);
        assert_eq!(f.window(t0 + MS, 100 * MS), 0);
        let now = run(&mut f, t0, 2, None);
        let later = now + Duration::from_secs(10);
        f.on_offered(later, 1);
        assert!(f.offered_rate(later) < 10.0);
    }
}
