//! Round-trip time estimation (RFC 6298 §2, with RFC 9002 §5 min_rtt and ack-delay handling).

use std::time::Duration;

/// RFC 6298 §2.1: before any sample, RTO = 1 s. We start SRTT from this guess too.
const INITIAL_RTT: Duration = Duration::from_millis(333);
/// RFC 6298 §2.3: alpha = 1/8, beta = 1/4 (as shifts below).
const ALPHA_SHIFT: u32 = 3;
const BETA_SHIFT: u32 = 2;
/// RFC 6298 §2.3: K = 4.
const K: u32 = 4;

#[derive(Debug, Clone)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl RttEstimator {
    pub fn new() -> Self {
        Self { latest: INITIAL_RTT, smoothed: None, var: INITIAL_RTT / 2, min: INITIAL_RTT }
    }

    /// Add a sample. `ack_delay` is what the receiver reported holding the ack back; it is
    /// subtracted only when that leaves the sample at or above min_rtt (RFC 9002 §5.3).
    pub fn update(&mut self, sample: Duration, ack_delay: Duration) {
        self.latest = sample;
        let Some(smoothed) = self.smoothed else {
            // RFC 6298 §2.2: first measurement R: SRTT = R, RTTVAR = R/2.
            self.smoothed = Some(sample);
            self.var = sample / 2;
            self.min = sample;
            return;
        };
        self.min = self.min.min(sample);
        let adjusted = if sample >= self.min + ack_delay { sample - ack_delay } else { sample };
        let diff = smoothed.abs_diff(adjusted);
        self.var = self.var - self.var / (1 << BETA_SHIFT) + diff / (1 << BETA_SHIFT);
        self.smoothed = Some(smoothed - smoothed / (1 << ALPHA_SHIFT) + adjusted / (1 << ALPHA_SHIFT));
    }

    pub fn has_sample(&self) -> bool {
        self.smoothed.is_some()
    }
    pub fn latest(&self) -> Duration {
        self.latest
    }
    pub fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or(INITIAL_RTT)
    }
    pub fn var(&self) -> Duration {
        self.var
    }
    pub fn min(&self) -> Duration {
        self.min
    }

    /// RFC 6298 §2.3: RTO = SRTT + max(G, K*RTTVAR), clamped below by `floor`
    /// (§2.4 asks for 1 s; we use the session's configured floor, see `SessionConfig`).
    pub fn rto(&self, granularity: Duration, floor: Duration) -> Duration {
        (self.smoothed() + (self.var * K).max(granularity)).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_sets_srtt_and_half_var() {
        let mut r = RttEstimator::new();
        r.update(Duration::from_millis(100), Duration::ZERO);
        assert_eq!(r.smoothed(), Duration::from_millis(100));
        assert_eq!(r.var(), Duration::from_millis(50));
        assert_eq!(r.min(), Duration::from_millis(100));
    }

    #[test]
    fn converges_and_rto_has_floor() {
        let mut r = RttEstimator::new();
        for _ in 0..200 {
            r.update(Duration::from_millis(40), Duration::ZERO);
        }
        assert!(r.smoothed().abs_diff(Duration::from_millis(40)) < Duration::from_millis(1));
        assert_eq!(r.rto(Duration::from_millis(1), Duration::from_millis(200)), Duration::from_millis(200));
    }

    #[test]
    fn ack_delay_not_subtracted_below_min_rtt() {
        let mut r = RttEstimator::new();
        r.update(Duration::from_millis(40), Duration::ZERO);
        r.update(Duration::from_millis(45), Duration::from_millis(20));
        // 45 - 20 = 25 < min 40, so the raw 45 ms is used.
        assert!(r.smoothed() > Duration::from_millis(40));
    }
}
