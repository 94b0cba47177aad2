//! NewReno: loss-based congestion control (RFC 5681 slow start and congestion avoidance,
//! RFC 6582 recovery period, RFC 6928 initial window), with the byte-counting and
//! recovery-by-send-time formulation of RFC 9002 §7.
//!
//! It ignores delay samples. It exists as the baseline LEDBAT++ is compared against, and
//! for paths where the peer sends no timestamps.

use std::time::{Duration, Instant};

use super::pacer::window_pacing_rate;
use super::{AckSample, Controller, ControllerFactory};
use crate::rtt::RttEstimator;

/// RFC 6928 §2: IW = min(10*MSS, max(2*MSS, 14600)).
const IW_MAX_SEGMENTS: usize = 10;
/// RFC 6928 §2, the lower bound inside the max(): 2*MSS.
const IW_MIN_SEGMENTS: usize = 2;
/// RFC 6928 §2, the byte term inside the max(): 14600.
const IW_BYTES: usize = 14_600;
/// RFC 9002 §7.2: "kMinimumWindow ... RECOMMENDED value is 2 * max_datagram_size";
/// RFC 5681 §3.1 eq. (4) likewise floors ssthresh at 2*SMSS.
const MIN_WINDOW_SEGMENTS: usize = 2;
/// RFC 5681 §3.1: after a retransmission timeout, cwnd = LW = 1 full-sized segment.
const LOSS_WINDOW_SEGMENTS: usize = 1;
/// RFC 5681 §3.1 eq. (4) (ssthresh = FlightSize / 2) and RFC 9002 §7.3.2
/// (kLossReductionFactor = 0.5); we halve cwnd, as RFC 9002 does.
const LOSS_REDUCTION_NUM: usize = 1;
const LOSS_REDUCTION_DEN: usize = 2;

/// Configuration and factory for [`NewReno`].
#[derive(Debug, Clone, Default)]
pub struct NewRenoConfig {
    /// Initial window in bytes; `None` = RFC 6928 (min(10·MSS, max(2·MSS, 14600))).
    pub initial_window: Option<usize>,
}

impl ControllerFactory for NewRenoConfig {
    fn build(&self, now: Instant, max_datagram_size: usize) -> Box<dyn Controller> {
        Box::new(NewReno::new(self, now, max_datagram_size))
    }
}

/// RFC 5681 / RFC 6582 NewReno, counting bytes.
#[derive(Debug, Clone)]
pub struct NewReno {
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    /// Bytes acked in congestion avoidance not yet turned into window (RFC 5681 §3.1: the
    /// byte-counting way to add one SMSS per cwnd acked).
    avoidance_credit: usize,
    /// Start of the current recovery period: a loss of a packet sent at or before this
    /// instant belongs to a congestion event already reacted to (RFC 6582 §3.2 "recover",
    /// expressed in send time as in RFC 9002 §7.3.2).
    recovery_start: Option<Instant>,
}

impl NewReno {
    pub fn new(config: &NewRenoConfig, _now: Instant, max_datagram_size: usize) -> Self {
        let mss = max_datagram_size.max(1);
        let rfc6928 = (IW_MAX_SEGMENTS * mss).min((IW_MIN_SEGMENTS * mss).max(IW_BYTES));
        let cwnd = config.initial_window.unwrap_or(rfc6928).max(MIN_WINDOW_SEGMENTS * mss);
        Self { mss, cwnd, ssthresh: usize::MAX, avoidance_credit: 0, recovery_start: None }
    }

    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    pub fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    fn min_window(&self) -> usize {
        MIN_WINDOW_SEGMENTS * self.mss
    }

    fn in_recovery(&self, sent_time: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent_time <= start)
    }
}

impl Controller for NewReno {
    fn on_packet_sent(&mut self, _now: Instant, _bytes: usize, _bytes_in_flight: usize) {}

    fn on_ack(&mut self, _now: Instant, ack: &AckSample, _rtt: &RttEstimator) {
        // RFC 9002 §7.3.2: no growth for packets sent before recovery started.
        // RFC 9002 §7.8: "When [the window is underutilized], the congestion window SHOULD
        // NOT be increased in either slow start or congestion avoidance" (also RFC 7661).
        if self.in_recovery(ack.sent_time) || ack.app_limited {
            return;
        }
        if self.in_slow_start() {
            // RFC 5681 §3.1 eq. (2), byte-counted (RFC 3465): cwnd += bytes acked. One
            // datagram per call, so the RFC 3465 L limit never binds.
            self.cwnd = self.cwnd.saturating_add(ack.bytes_acked);
            return;
        }
        // RFC 5681 §3.1: "cwnd += SMSS*SMSS/cwnd" per ACK, done exactly by counting bytes:
        // one SMSS for every cwnd bytes acked.
        self.avoidance_credit += ack.bytes_acked;
        if self.avoidance_credit >= self.cwnd {
            self.avoidance_credit -= self.cwnd;
            self.cwnd = self.cwnd.saturating_add(self.mss);
        }
    }

    fn on_delay_sample(&mut self, _now: Instant, _one_way_delay_us: i64) {}

    fn on_congestion_event(&mut self, now: Instant, largest_lost_sent_time: Instant, _lost_bytes: usize) {
        // RFC 6582 §3.2: one reduction per window of data (recovery period).
        if self.in_recovery(largest_lost_sent_time) {
            return;
        }
        self.recovery_start = Some(now);
        self.cwnd = (self.cwnd / LOSS_REDUCTION_DEN * LOSS_REDUCTION_NUM).max(self.min_window());
        self.ssthresh = self.cwnd;
        self.avoidance_credit = 0;
    }

    fn on_retransmission_timeout(&mut self, now: Instant) {
        // RFC 5681 §3.1 eq. (4): ssthresh = max(FlightSize / 2, 2*SMSS); we use cwnd as
        // the flight size (RFC 9002 §7.3.2). Then cwnd = LW.
        self.ssthresh = (self.cwnd / LOSS_REDUCTION_DEN * LOSS_REDUCTION_NUM).max(self.min_window());
        self.cwnd = LOSS_WINDOW_SEGMENTS * self.mss;
        self.avoidance_credit = 0;
        // Losses of packets sent before the timeout are part of this event.
        self.recovery_start = Some(now);
    }

    fn window(&self) -> usize {
        self.cwnd
    }

    fn pacing_rate(&self, rtt: &RttEstimator) -> f64 {
        window_pacing_rate(self.cwnd, rtt.smoothed(), self.in_slow_start())
    }

    fn queueing_delay(&self) -> Option<Duration> {
        None
    }

    fn name(&self) -> &'static str {
        "newreno"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1200;
    const RTT: Duration = Duration::from_millis(50);

    fn ack(sent_time: Instant, in_flight: usize, app_limited: bool) -> AckSample {
        AckSample { bytes_acked: MSS, sent_time, bytes_in_flight: in_flight, app_limited }
    }

    /// Send a full window at `now`, ack all of it one RTT later; returns the new `now`.
    fn round(c: &mut NewReno, rtt: &mut RttEstimator, now: Instant) -> Instant {
        let packets = c.window() / MSS;
        for i in 0..packets {
            c.on_packet_sent(now, MSS, (i + 1) * MSS);
        }
        let later = now + RTT;
        for i in 0..packets {
            rtt.update(RTT, Duration::ZERO);
            c.on_ack(later, &ack(now, (packets - i) * MSS, false), rtt);
        }
        later
    }

    #[test]
    fn initial_window_follows_rfc6928() {
        let t = Instant::now();
        let iw = |mds| NewReno::new(&NewRenoConfig::default(), t, mds).window();
        assert_eq!(iw(1200), 12_000); // 10 × 1200
        assert_eq!(iw(1460), 14_600); // min(14600, max(2920, 14600))
        assert_eq!(iw(9000), 18_000); // max(2 × 9000, 14600)
        let c = NewReno::new(&NewRenoConfig { initial_window: Some(4 * MSS) }, t, MSS);
        assert_eq!(c.window(), 4 * MSS);
    }

    #[test]
    fn slow_start_doubles_per_rtt() {
        let mut now = Instant::now();
        let mut c = NewReno::new(&NewRenoConfig::default(), now, MSS);
        let mut rtt = RttEstimator::new();
        for _ in 0..4 {
            let before = c.window();
            now = round(&mut c, &mut rtt, now);
            assert_eq!(c.window(), 2 * before);
        }
        assert!(c.in_slow_start());
    }

    #[test]
    fn congestion_avoidance_adds_one_segment_per_rtt() {
        let mut now = Instant::now();
        let mut c = NewReno::new(&NewRenoConfig::default(), now, MSS);
        let mut rtt = RttEstimator::new();
        now = round(&mut c, &mut rtt, now);
        c.on_congestion_event(now, now - RTT, MSS);
        assert!(!c.in_slow_start());
        now += Duration::from_millis(1);
        for _ in 0..5 {
            let before = c.window();
            now = round(&mut c, &mut rtt, now);
            assert_eq!(c.window(), before + MSS);
        }
    }

    #[test]
    fn halves_once_per_recovery_period() {
        let t0 = Instant::now();
        let mut c = NewReno::new(&NewRenoConfig::default(), t0, MSS);
        let w = c.window();
        let t1 = t0 + RTT;
        c.on_congestion_event(t1, t0, MSS);
        assert_eq!(c.window(), w / 2);
        // More losses from the same flight: no further reduction.
        c.on_congestion_event(t1 + Duration::from_millis(5), t0 + Duration::from_millis(1), MSS);
        c.on_congestion_event(t1 + Duration::from_millis(6), t1, MSS);
        assert_eq!(c.window(), w / 2);
        // Acks of packets sent before recovery started do not grow the window.
        let rtt = RttEstimator::new();
        c.on_ack(t1 + RTT, &ack(t0, MSS, false), &rtt);
        assert_eq!(c.window(), w / 2);
        // A loss of a packet sent after recovery started is a new event.
        c.on_congestion_event(t1 + 2 * RTT, t1 + Duration::from_millis(1), MSS);
        assert_eq!(c.window(), w / 4);
        // Never below 2 segments.
        for i in 0..20u32 {
            let t = t1 + RTT * (3 + 2 * i);
            c.on_congestion_event(t + RTT, t, MSS);
        }
        assert_eq!(c.window(), 2 * MSS);
    }

    #[test]
    fn rto_sets_loss_window_then_slow_starts_to_half() {
        let mut now = Instant::now();
        let mut c = NewReno::new(&NewRenoConfig::default(), now, MSS);
        let mut rtt = RttEstimator::new();
        now = round(&mut c, &mut rtt, now);
        let w = c.window();
        c.on_retransmission_timeout(now);
        assert_eq!(c.window(), MSS);
        assert_eq!(c.ssthresh(), w / 2);
        // Losses of packets sent before the timeout do not reduce again.
        c.on_congestion_event(now, now - Duration::from_millis(1), MSS);
        assert_eq!(c.window(), MSS);
        now += Duration::from_millis(1);
        while c.in_slow_start() {
            now = round(&mut c, &mut rtt, now);
        }
        assert!(c.window() >= w / 2 && c.window() <= w);
    }

    #[test]
    fn app_limited_acks_do_not_grow_the_window() {
        let t0 = Instant::now();
        let mut c = NewReno::new(&NewRenoConfig::default(), t0, MSS);
        let rtt = RttEstimator::new();
        let w = c.window();
        for i in 0..1000 {
            c.on_ack(t0 + Duration::from_millis(i), &ack(t0, 2 * MSS, true), &rtt);
        }
        assert_eq!(c.window(), w);
        c.on_ack(t0, &ack(t0, 2 * MSS, false), &rtt);
        assert_eq!(c.window(), w + MSS);
    }

    #[test]
    fn pacing_rate_gain_depends_on_phase() {
        let t0 = Instant::now();
        let mut c = NewReno::new(&NewRenoConfig::default(), t0, MSS);
        let mut rtt = RttEstimator::new();
        rtt.update(Duration::from_millis(100), Duration::ZERO);
        let w = c.window() as f64;
        assert!((c.pacing_rate(&rtt) - 2.0 * w / 0.1).abs() < 1e-6);
        c.on_congestion_event(t0 + RTT, t0, MSS);
        let w = c.window() as f64;
        assert!((c.pacing_rate(&rtt) - 1.25 * w / 0.1).abs() < 1e-6);
        assert_eq!(c.queueing_delay(), None);
        assert_eq!(c.name(), "newreno");
    }
}
