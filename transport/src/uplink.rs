//! The node's spare uplink: how much of its stated upload capacity the whole endpoint is
//! leaving unused right now, so that Background data can use it.
//!
//! LEDBAT++ gives each session its own window, and yields to any queue above its 15 ms
//! target. On a node that relays a live stream, most of that queue is the node's own: a
//! chunk goes to every child at once, and the burst waits in the uplink's buffer. So a
//! session's Background data (a newcomer's keyframe group, a repair) yields to the node's
//! own Stream traffic, which is right, but also stays at LEDBAT's 2-packet start window
//! long after that traffic has drained, while the uplink sits idle between chunks. In
//! `rill testbed swarm --nodes 30`, the publisher's fast-join group to a newcomer took up
//! to 1.4 s to arrive while the publisher used 2.79 of its 5.16 Mbit/s, and the newcomer
//! restarted at a later keyframe.
//!
//! When the operator states the uplink's capacity, the endpoint meters everything it sends
//! against [`SPARE_UPLINK_SHARE`] of it (a token bucket [`SPARE_UPLINK_BURST`] deep, that
//! every datagram of every class drains, and that may owe up to [`SPARE_UPLINK_MEMORY`]).
//! While tokens are left, Background may fill a session's Stream window rather than only
//! LEDBAT's: the node as a whole still sends below its capacity, so the uplink queue
//! drains between bursts and the live chunks behind it are not held up much. A sustained
//! Stream load above the share leaves the bucket empty, and Background is a pure scavenger
//! again. `rill sim` models Background as the node's spare upload already; this brings the
//! real transport closer to that model.

use std::time::{Duration, Instant};

/// Share of the stated upload the whole endpoint may reach with Background's help. Below
/// 1 so that the uplink queue drains: a queue served at utilisation ρ waits ρ/(2(1 − ρ))
/// service times on average for fixed-size packets (M/D/1), 2 at 0.8, 4.5 at 0.9, and
/// grows without bound as ρ → 1 (or beyond 1, when the stated capacity is a little
/// optimistic). A relay's traffic is far burstier than that model (a chunk to every child
/// at once), so its queue overflows well before: in `rill testbed swarm --nodes 30`, the
/// upload queues of the busiest viewers dropped packets while their processes sent 0.7–0.85
/// of their upload on average (`checks.upload_queue_drops`), and a dropped Accept or
/// handshake kept a newcomer's subscribe unanswered for half a second. At 0.9 against 0.8,
/// `--duration 8 --runs 8`, seeds 65–128 (64 runs each, in blocks of 8 seeds alternating
/// which build ran first): runs with a p99 arrival lag within 500 ms of the path 38 / 49
/// (at 0.8 as many or more in each 16-run quarter), median p99 520.2 / 493.6 ms, upload
/// queue drops 32,179 / 29,705; joins over 1 s 111 / 98, `lost_chunks` 286 / 263 and runs
/// with continuity ≥ 0.999 54 / 57, those three within the runs' spread.
pub const SPARE_UPLINK_SHARE: f64 = 0.8;
/// Depth of the bucket: the most Background may send at once after a quiet spell, as time
/// at the stated rate. It is also the most queue the spare traffic can add at the uplink
/// in one burst: 20 ms is a fifth of a typical 100 ms playout margin per hop.
pub const SPARE_UPLINK_BURST: Duration = Duration::from_millis(20);
/// Most the bucket owes: a Stream burst larger than the bucket is paid back up to this
/// much before Background goes again; beyond it, the burst is forgiven. A relay's fan-out
/// sends one chunk to every child at once, often more than the bucket; paying all of it
/// back holds Background until the uplink queue has drained entirely, which on a busy
/// relay is rarely, and its newcomers' groups came as late as without a stated uplink;
/// forgiving all of it lets the spare traffic fill the uplink. `rill testbed swarm
/// --nodes 30 --duration 8`, seeds 13-20 (at a share of 0.9), starts over 1 s / `start_restarts` /
/// `lost_chunks` over 240 joins: no stated uplink 83 / 59 / 33; debt up to 20 ms 26 / 21 /
/// 72 (two runs below 0.997 `continuity_index`); 40 ms 43 / 33 / 19; 100 ms 53 / 37 /
/// 58. Seeds 21-28, run alternately with the build without: 66 / 48 / 98 against
/// 88 / 61 / 86.
pub const SPARE_UPLINK_MEMORY: Duration = Duration::from_millis(40);

#[derive(Debug)]
pub(crate) struct SpareUplink {
    /// Bytes per second the endpoint may send in all.
    rate: f64,
    /// Bucket depth in bytes.
    depth: f64,
    /// Bytes that may still be sent; negative after a burst larger than the bucket (Stream
    /// and Control never wait for tokens), down to `-debt_limit`.
    tokens: f64,
    debt_limit: f64,
    at: Instant,
}

impl SpareUplink {
    pub fn new(now: Instant, uplink_kbps: u32, min_depth: usize) -> Self {
        let rate = uplink_kbps as f64 * 1000.0 / 8.0 * SPARE_UPLINK_SHARE;
        let depth = (rate * SPARE_UPLINK_BURST.as_secs_f64()).max(min_depth as f64);
        let debt_limit = rate * SPARE_UPLINK_MEMORY.as_secs_f64();
        Self { rate, depth, tokens: depth, debt_limit, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.depth);
        self.at = self.at.max(now);
    }

    /// Whether the endpoint is below its share now.
    pub fn has_spare(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0.0
    }

    /// A datagram of `bytes` left the endpoint.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        self.tokens = (self.tokens - bytes as f64).max(-self.debt_limit);
    }

    /// When there will be spare again; None while there is (as of the last call), or if
    /// there never will be (a node that offers no upload: `--upload-kbps 0`).
    pub fn spare_at(&self) -> Option<Instant> {
        if self.tokens > 0.0 {
            return None;
        }
        // Just past zero, so the bucket is non-empty when the caller wakes.
        let wait = Duration::try_from_secs_f64((-self.tokens + 1.0) / self.rate).ok()?;
        self.at.checked_add(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_bucket_holds_twenty_ms_at_the_share_and_refills_at_it() {
        let t0 = Instant::now();
        // 8000 kbit/s = 1,000,000 B/s; the share is 800,000 B/s; 20 ms of it is 16,000 B.
        let mut u = SpareUplink::new(t0, 8000, 1200);
        assert!(u.has_spare(t0));
        assert_eq!(u.spare_at(), None);
        u.on_sent(t0, 16_100);
        assert!(!u.has_spare(t0), "the burst used the whole bucket and 100 B more");
        assert!(!u.has_spare(t0 + 100 * US), "100 µs refill 80 B");
        let at = u.spare_at().unwrap();
        assert!(at > t0 + 120 * US && at < t0 + 130 * US, "101 B at 800 kB/s: {:?}", at - t0);
        assert!(u.has_spare(at));
        // A long quiet spell fills the bucket to its depth, not beyond.
        assert!(u.has_spare(t0 + 10_000 * MS));
        u.on_sent(t0 + 10_000 * MS, 16_000);
        assert!(!u.has_spare(t0 + 10_000 * MS));
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_paid_back_up_to_the_memory() {
        let t0 = Instant::now();
        let mut u = SpareUplink::new(t0, 8000, 1200);
        // Stream sends 32,000 B at once: the bucket's 16,000 and 20 ms of refill.
        u.on_sent(t0, 32_000);
        let wait = u.spare_at().unwrap() - t0;
        assert!(wait > 19 * MS && wait < 21 * MS, "{wait:?}");
        assert!(!u.has_spare(t0 + 19 * MS));
        assert!(u.has_spare(t0 + 21 * MS));
        // 1 MB at once: owed for 40 ms (32,000 B), not for a second.
        let t1 = t0 + 10_000 * MS;
        u.on_sent(t1, 1_000_000);
        let wait = u.spare_at().unwrap() - t1;
        assert!(wait > 39 * MS && wait < 41 * MS, "{wait:?}");
    }

    #[test]
    fn a_node_offering_no_upload_sends_one_datagram_of_background_then_none() {
        let t0 = Instant::now();
        // `--upload-kbps 0` is a valid flag (a viewer that feeds no one): the rate is 0.
        let mut u = SpareUplink::new(t0, 0, 1200);
        assert!(u.has_spare(t0));
        u.on_sent(t0, 1200);
        assert!(!u.has_spare(t0 + 10_000 * MS));
        assert_eq!(u.spare_at(), None, "no wake-up that never comes, and no panic");
    }

    #[test]
    fn a_slow_uplink_still_lets_a_packet_through() {
        let t0 = Instant::now();
        // 100 kbit/s: 20 ms is 225 B, less than one datagram; the bucket holds one.
        let mut u = SpareUplink::new(t0, 100, 1200);
        assert!(u.has_spare(t0));
        u.on_sent(t0, 1200);
        assert!(!u.has_spare(t0));
        assert!(u.has_spare(t0 + 200 * MS), "1200 B at 11,250 B/s take 107 ms");
    }
}
