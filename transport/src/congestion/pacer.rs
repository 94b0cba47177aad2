//! Token-bucket pacing (RFC 9002 §7.7), and the window-to-rate rule the controllers share.
//!
//! The bucket holds at most `rate × BURST_INTERVAL` bytes, so a driver whose timers fire
//! with 1 ms granularity still reaches the full rate, clamped so that a burst is at least
//! [`MIN_BURST_DATAGRAMS`] datagrams (unless the window is smaller) and never more than the
//! window. Tokens refill continuously at the rate. A packet may leave once the bucket holds
//! its size; otherwise [`Pacer::delay`] names the instant at which it will.
//!
//! # Extreme inputs
//! A rate that is zero, negative, NaN or infinite disables pacing (`delay` returns `None`):
//! the congestion window still bounds what is in flight, while a pacer that waited forever
//! would stall the session with no timer left to wake it. A finite but tiny rate is paced,
//! but no single wait exceeds [`MAX_DELAY`]; the caller simply asks again then. All
//! `Instant` arithmetic is checked, and a returned instant is always strictly after `now`,
//! so a virtual-time driver that re-polls at exactly that instant makes progress.

use std::time::{Duration, Instant};

/// Bucket depth in time: 2 ms of tokens, so a driver with 1 ms timer granularity is not
/// throughput-capped by the bucket (quinn's pacer reasons the same way).
const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// The bucket holds at least this many datagrams when the window allows it, so slow flows
/// are not paced one packet at a time (quinn uses the same floor).
const MIN_BURST_DATAGRAMS: usize = 2;
/// No single pacing wait is longer than this; a longer wait is split into several, each
/// re-evaluated at the then-current rate. Bounds the instants we hand out.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Tokens within this many bytes of a packet's size count as enough: float rounding in
/// `rate × elapsed` must not turn a wait we computed into a second, zero-length wait.
const TOKEN_SLACK_BYTES: f64 = 1e-3;

/// Pacing gain in slow start: Linux paces at `tcp_pacing_ss_ratio` = 200% of cwnd/srtt
/// while cwnd < ssthresh (net/ipv4/tcp_input.c, `tcp_update_pacing_rate`), so pacing does
/// not slow the window's doubling.
pub(crate) const PACING_GAIN_SLOW_START: f64 = 2.0;
/// Pacing gain otherwise: RFC 9002 §7.7, "N = 1.25 ... rate = N * congestion_window /
/// smoothed_rtt", so the window is not underused because of pacing.
pub(crate) const PACING_GAIN_AVOIDANCE: f64 = 1.25;
/// Smallest smoothed RTT we divide by (1 µs), so a zero RTT cannot produce an infinite rate.
const MIN_PACING_RTT: Duration = Duration::from_micros(1);

/// Pacing rate in bytes/s for a window (RFC 9002 §7.7), shared by every controller.
pub(crate) fn window_pacing_rate(window_bytes: usize, smoothed_rtt: Duration, slow_start: bool) -> f64 {
    let gain = if slow_start { PACING_GAIN_SLOW_START } else { PACING_GAIN_AVOIDANCE };
    gain * window_bytes as f64 / smoothed_rtt.max(MIN_PACING_RTT).as_secs_f64()
}

/// A token bucket that spaces packets at a rate given on every call.
#[derive(Debug, Clone)]
pub struct Pacer {
    max_datagram_size: usize,
    /// Bytes that may leave now. Starts full (infinite, clamped to the capacity on first
    /// use); never negative.
    tokens: f64,
    /// Tokens are accounted up to this instant.
    last: Instant,
    /// Rate (bytes/s) and capacity (bytes) from the last `delay` call, used to refill in
    /// `on_sent`. A rate of 0 means "not pacing": nothing to refill.
    rate: f64,
    capacity: f64,
}

impl Pacer {
    pub fn new(now: Instant, max_datagram_size: usize) -> Self {
        Self {
            max_datagram_size: max_datagram_size.max(1),
            tokens: f64::INFINITY,
            last: now,
            rate: 0.0,
            capacity: 0.0,
        }
    }

    /// When may a packet of `bytes` leave, given the current rate (bytes/s) and window
    /// (bytes)? `None` = now. `Some(t)` = not before `t` (always `t > now`).
    pub fn delay(&mut self, now: Instant, bytes: usize, rate: f64, window: usize) -> Option<Instant> {
        if !rate.is_finite() || rate <= 0.0 {
            // Not pacing (see the module docs). Forget the old rate so `on_sent` does not
            // refill with it.
            self.rate = 0.0;
            return None;
        }
        self.capacity = self.capacity_for(bytes, rate, window);
        self.rate = rate;
        self.refill(now);
        let bytes = bytes as f64;
        if self.tokens + TOKEN_SLACK_BYTES >= bytes {
            return None;
        }
        let deficit_s = (bytes - self.tokens) / rate;
        // Round up to whole nanoseconds, plus one, so that at the returned instant the
        // bucket holds the packet; `try_from_secs_f64` fails only above Duration::MAX.
        let wait = Duration::try_from_secs_f64(deficit_s)
            .map_or(MAX_DELAY, |d| d.saturating_add(Duration::from_nanos(1)))
            .min(MAX_DELAY);
        // `checked_add` fails only if `now` is near the end of the platform's clock range;
        // sending now is then the harmless fallback.
        now.checked_add(wait)
    }

    /// A packet of `bytes` left at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        self.tokens = (self.tokens - bytes as f64).max(0.0);
    }

    /// Bucket capacity in bytes: `rate × BURST_INTERVAL`, at least `MIN_BURST_DATAGRAMS`
    /// datagrams, at most the window, at least one datagram, and at least the packet at
    /// hand (a bucket smaller than the packet would never let it leave).
    fn capacity_for(&self, bytes: usize, rate: f64, window: usize) -> f64 {
        let mds = self.max_datagram_size as f64;
        let burst = (rate * BURST_INTERVAL.as_secs_f64()).max(MIN_BURST_DATAGRAMS as f64 * mds);
        burst.min(window as f64).max(mds).max(bytes as f64)
    }

    fn refill(&mut self, now: Instant) {
        // Time that runs backwards (it must not, but a caller may err) refills nothing.
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        if self.rate > 0.0 {
            // rate is finite and positive here; the product may be +inf for a huge rate
            // and a long gap, which `min` turns into a full bucket.
            self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MDS: usize = 1200;

    /// Send as fast as the pacer allows until `until`; returns the send instants.
    fn drain(p: &mut Pacer, start: Instant, until: Instant, rate: f64, window: usize) -> Vec<Instant> {
        let mut now = start;
        let mut sent = Vec::new();
        while now < until {
            match p.delay(now, MDS, rate, window) {
                None => {
                    p.on_sent(now, MDS);
                    sent.push(now);
                }
                Some(t) => {
                    assert!(t > now, "a wait must move time forward");
                    now = t;
                }
            }
            assert!(sent.len() < 1_000_000, "runaway");
        }
        sent
    }

    #[test]
    fn burst_up_to_capacity_then_spaced_at_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, MDS);
        // 12 MB/s: capacity = 12e6 × 2 ms = 24 000 B = 20 datagrams; one datagram per 100 µs.
        let rate = 12_000_000.0;
        let sent = drain(&mut p, t0, t0 + Duration::from_millis(100), rate, 1_000_000);
        let burst = sent.iter().take_while(|&&t| t == t0).count();
        assert_eq!(burst, 20);
        for w in sent[burst..].windows(2) {
            let gap = w[1] - w[0];
            assert!(gap.abs_diff(Duration::from_micros(100)) <= Duration::from_micros(1), "gap {gap:?}");
        }
        // 20 at once, then one per 100 µs for 100 ms: about 1020 packets in total.
        assert!((1015..=1021).contains(&sent.len()), "{} packets", sent.len());
    }

    #[test]
    fn capacity_is_clamped_by_window_and_floor() {
        let t0 = Instant::now();
        // Window of 3 datagrams caps a 20-datagram bucket.
        let mut p = Pacer::new(t0, MDS);
        let sent = drain(&mut p, t0, t0 + Duration::from_micros(1), 12_000_000.0, 3 * MDS);
        assert_eq!(sent.len(), 3);
        // A slow rate (1 datagram per second) still gets a 2-datagram bucket.
        let mut p = Pacer::new(t0, MDS);
        let sent = drain(&mut p, t0, t0 + Duration::from_micros(1), MDS as f64, 1_000_000);
        assert_eq!(sent.len(), 2);
        // A window below one datagram still lets one datagram out.
        let mut p = Pacer::new(t0, MDS);
        let sent = drain(&mut p, t0, t0 + Duration::from_micros(1), 12_000_000.0, 10);
        assert_eq!(sent.len(), 1);
    }

    #[test]
    fn idle_time_refills_only_up_to_capacity() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, MDS);
        let rate = 12_000_000.0;
        drain(&mut p, t0, t0 + Duration::from_millis(10), rate, 1_000_000);
        // After a long idle period the bucket is full again, but not fuller.
        let t1 = t0 + Duration::from_secs(5);
        let sent = drain(&mut p, t1, t1 + Duration::from_nanos(1), rate, 1_000_000);
        assert_eq!(sent.len(), 20);
    }

    #[test]
    fn extreme_rates_do_not_panic_or_stall() {
        let t0 = Instant::now();
        let rates = [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            1e-300,
            1e300,
            f64::MAX,
        ];
        for rate in rates {
            for window in [0, 1, MDS, usize::MAX] {
                for bytes in [0, 1, MDS, 1 << 20] {
                    let mut p = Pacer::new(t0, MDS);
                    for i in 0..50u64 {
                        let now = t0 + Duration::from_millis(i);
                        match p.delay(now, bytes, rate, window) {
                            None => p.on_sent(now, bytes),
                            Some(t) => {
                                assert!(t > now && t - now <= MAX_DELAY, "rate {rate}: wait {:?}", t - now);
                            }
                        }
                    }
                }
            }
        }
        // Non-finite and non-positive rates mean "do not pace".
        let mut p = Pacer::new(t0, MDS);
        for _ in 0..1000 {
            assert_eq!(p.delay(t0, MDS, f64::NAN, MDS), None);
            p.on_sent(t0, MDS);
        }
        // A zero-datagram-size pacer and time running backwards are tolerated.
        let mut p = Pacer::new(t0 + Duration::from_secs(1), 0);
        let _ = p.delay(t0, MDS, 1000.0, MDS);
        p.on_sent(t0, MDS);
    }

    #[test]
    fn returned_instant_always_admits_the_packet() {
        // For a spread of rates, waiting until the returned instant is always enough: no
        // zero-progress loop in virtual time.
        let t0 = Instant::now();
        for rate in [1.0, 999.9, 1200.0, 33_333.3, 1e6, 7.77e7, 1e10] {
            let mut p = Pacer::new(t0, MDS);
            let mut now = t0;
            let mut sent = 0;
            while sent < 50 {
                match p.delay(now, MDS, rate, 10 * MDS) {
                    None => {
                        p.on_sent(now, MDS);
                        sent += 1;
                    }
                    Some(t) => {
                        let wait = t - now;
                        now = t;
                        if wait < MAX_DELAY {
                            assert_eq!(p.delay(now, MDS, rate, 10 * MDS), None, "rate {rate}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn window_rate_uses_gain_and_survives_zero_rtt() {
        let r = window_pacing_rate(100_000, Duration::from_millis(100), true);
        assert!((r - 2_000_000.0).abs() < 1e-6);
        let r = window_pacing_rate(100_000, Duration::from_millis(100), false);
        assert!((r - 1_250_000.0).abs() < 1e-6);
        assert!(window_pacing_rate(100_000, Duration::ZERO, false).is_finite());
    }
}
