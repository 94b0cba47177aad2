//! The node's stated uplink: how much of it the whole endpoint is leaving unused right
//! now, so that Background data can use it ([`SpareUplink`]), and the pacer that keeps the
//! endpoint from sending faster than it ([`UplinkPacer`]).
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
//!
//! The pacer brings it closer still: `rill sim`'s uplink is a queue at the node's rate
//! that serves Control and Stream before Background, and with a stated uplink the
//! endpoint is one too (see [`UplinkPacer`] and `endpoint.rs`).

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

/// Bytes the network adds to every datagram on the link whose rate the operator states:
/// an IPv6 header (40, RFC 8200) and a UDP header (8, RFC 768). IPv4 with an Ethernet
/// header adds 42 (20 + 8 + 14), which a `tbf` in a Linux router counts; so charging 48
/// keeps the pacer at or below the line rate on either.
pub const DATAGRAM_OVERHEAD: usize = 48;
/// Depth of the uplink pacer's bucket, as time at the stated rate: the most the endpoint
/// sends at once after a quiet spell, into the uplink's own buffer (commonly 50-200 ms
/// at its rate in a home router). The rest of a burst waits in the endpoint, where
/// Control and Stream go first. Too shallow, and Background waits behind every burst:
/// with 5 ms, the extra chunks lost were at newcomers' starts (every viewer that lost
/// chunks had used its whole start margin). `rill testbed swarm --nodes 30 --duration 8
/// --runs 8` (100 ms upload buffers), 64 runs each with the builds in turn (seeds 833-896
/// for 20 and 50 ms, against the build without the pacer; 641-768 for 5 ms, in two A/Bs
/// of its own): 5 ms lost 1.4 times the chunks (437 against 306, 274 against 191); 20 ms
/// lost about as many (256 against 240), met all three swarm targets in 34 runs against
/// 19, but continuity >= 0.999 in 53 against 60; 50 ms lost 234 and met all three in
/// 25, with more starts over 1 s (82 against 72). No depth dropped a packet at the
/// upload queues.
pub const UPLINK_PACER_BURST: Duration = Duration::from_millis(20);
/// The pacer never holds the endpoint below this rate: a node that states little or no
/// upload (`--upload-kbps 0`, a viewer that feeds no one) still acknowledges what it
/// downloads. An ack every second packet of a 10 Mbit/s download is about 520 datagrams
/// of about 90 B with headers per second, 375 kbit/s.
pub const MIN_PACED_UPLINK_KBPS: u32 = 512;

/// A token bucket in bytes: it fills at `rate` up to `depth`, and what is taken from it
/// may leave it owing, down to `-debt_limit`.
#[derive(Debug)]
struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    depth: f64,
    tokens: f64,
    debt_limit: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(now: Instant, rate: f64, depth: f64, debt_limit: f64) -> Self {
        Self { rate, depth, tokens: depth, debt_limit, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.depth);
        self.at = self.at.max(now);
    }

    fn has_tokens(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0.0
    }

    fn take(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        self.tokens = (self.tokens - bytes as f64).max(-self.debt_limit);
    }

    /// When the bucket will hold tokens again; None while it does (as of the last call),
    /// or if it never will (a rate of 0).
    fn tokens_at(&self) -> Option<Instant> {
        if self.tokens > 0.0 {
            return None;
        }
        // Just past zero, so the bucket is non-empty when the caller wakes.
        let wait = Duration::try_from_secs_f64((-self.tokens + 1.0) / self.rate).ok()?;
        self.at.checked_add(wait)
    }
}

/// What the endpoint leaves unused of [`SPARE_UPLINK_SHARE`] of the stated uplink.
#[derive(Debug)]
pub(crate) struct SpareUplink(TokenBucket);

impl SpareUplink {
    pub fn new(now: Instant, uplink_kbps: u32, min_depth: usize) -> Self {
        let rate = uplink_kbps as f64 * 1000.0 / 8.0 * SPARE_UPLINK_SHARE;
        let depth = (rate * SPARE_UPLINK_BURST.as_secs_f64()).max(min_depth as f64);
        // Negative after a burst larger than the bucket (Stream and Control never wait
        // for tokens), down to what SPARE_UPLINK_MEMORY allows.
        let debt_limit = rate * SPARE_UPLINK_MEMORY.as_secs_f64();
        Self(TokenBucket::new(now, rate, depth, debt_limit))
    }

    /// Whether the endpoint is below its share now.
    pub fn has_spare(&mut self, now: Instant) -> bool {
        self.0.has_tokens(now)
    }

    /// A datagram of `bytes` left the endpoint.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.0.take(now, bytes);
    }

    /// When there will be spare again; None while there is (as of the last call), or if
    /// there never will be (a node that offers no upload: `--upload-kbps 0`).
    pub fn spare_at(&self) -> Option<Instant> {
        self.0.tokens_at()
    }
}

/// The uplink pacer: the endpoint as a whole sends no faster than the stated uplink.
///
/// Each session paces itself (RFC 9002 §7.7), but at its own window's rate: a relay's
/// sessions to its children, each within its window, together send a chunk to every child
/// at once, far above the uplink's rate, and the burst lands in the uplink's buffer. Where
/// that buffer is smaller than the burst, the tail is dropped, and the children get the
/// chunk a round trip or more later, from a retransmission, while the lost bytes were
/// upload spent for nothing. In `rill testbed swarm --nodes 30 --duration 8 --seed 321`
/// (a 100 ms buffer at each viewer's upload rate), 9 of 30 viewers dropped packets at
/// their upload queues; the five that dropped most (99-166 drops) sent 0.77-0.93 of their
/// upload on average. Holding the burst in the endpoint costs about the same wait (it
/// drains at the same rate) but loses nothing: over 64 runs of `--runs 8` (seeds
/// 833-896) the upload queues dropped 29,114 packets without the pacer and none with it,
/// and the `overhead_ratio` went from 1.174 to 1.141. Which data goes first is the
/// endpoint's to choose then (`endpoint.rs`). A stated rate higher than the real one
/// leaves the queue where it was; the pacer then does nothing.
#[derive(Debug)]
pub(crate) struct UplinkPacer {
    bucket: TokenBucket,
    /// The last `poll_transmit` was refused for want of tokens: wake when there are some.
    pub holding: bool,
    /// Datagrams sent ahead of waiting Background data since its last turn (see
    /// `endpoint.rs`, `BACKGROUND_TURN_EVERY`).
    pub datagrams_since_background: u32,
}

impl UplinkPacer {
    pub fn new(now: Instant, uplink_kbps: u32, max_datagram: usize) -> Self {
        let rate = uplink_kbps.max(MIN_PACED_UPLINK_KBPS) as f64 * 1000.0 / 8.0;
        let datagram = (max_datagram + DATAGRAM_OVERHEAD) as f64;
        let depth = (rate * UPLINK_PACER_BURST.as_secs_f64()).max(datagram);
        // A datagram goes whenever the bucket is above zero, so it owes at most one
        // datagram (and the odd cookie) beyond that.
        Self {
            bucket: TokenBucket::new(now, rate, depth, 2.0 * datagram),
            holding: false,
            datagrams_since_background: 0,
        }
    }

    /// Whether a datagram may leave now.
    pub fn may_send(&mut self, now: Instant) -> bool {
        self.bucket.has_tokens(now)
    }

    /// A datagram of `bytes` (UDP payload) left the endpoint.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.bucket.take(now, bytes + DATAGRAM_OVERHEAD);
    }

    /// When the next datagram may leave, if one is being held back.
    pub fn release_at(&self) -> Option<Instant> {
        if self.holding {
            self.bucket.tokens_at()
        } else {
            None
        }
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

    #[test]
    fn the_pacer_holds_the_endpoint_to_the_stated_rate_with_headers_counted() {
        let t0 = Instant::now();
        // 8000 kbit/s = 1,000,000 B/s; the 20 ms bucket holds 20,000 B, sixteen datagrams
        // of 1,248 B on the wire (1,200 B of UDP payload and 48 of headers).
        assert_eq!(UPLINK_PACER_BURST, 20 * MS);
        let mut p = UplinkPacer::new(t0, 8000, 1200);
        let mut sent = 0;
        while p.may_send(t0) {
            p.on_sent(t0, 1200);
            sent += 1;
        }
        assert_eq!(sent, 17, "19,968 B leave the bucket 32 B, so a 17th datagram goes");
        p.holding = true;
        // 1,216 B owed: the next datagram may go 1.217 ms later.
        let at = p.release_at().unwrap();
        assert!(at > t0 + 1216 * US && at < t0 + 1218 * US, "{:?}", at - t0);
        assert!(!p.may_send(t0 + 1200 * US));
        assert!(p.may_send(at));
        // Over a second of back-to-back datagrams, the rate is the stated one.
        let mut t = at;
        let mut bytes = 0;
        while t < at + 1000 * MS {
            if p.may_send(t) {
                p.on_sent(t, 1200);
                bytes += 1248;
            }
            t += 100 * US;
        }
        assert!((995_000..=1_006_300).contains(&bytes), "{bytes} B on the wire in a second");
    }

    #[test]
    fn the_pacer_wakes_the_endpoint_only_when_it_held_a_datagram_back() {
        let t0 = Instant::now();
        let mut p = UplinkPacer::new(t0, 8000, 1200);
        p.on_sent(t0, 30_000); // more than the 20,000 B bucket
        assert!(!p.may_send(t0));
        assert_eq!(p.release_at(), None, "not holding anything: no wake-up");
        p.holding = true;
        assert!(p.release_at().is_some());
    }

    #[test]
    fn a_node_stating_no_upload_is_still_paced_at_the_floor_not_stopped() {
        let t0 = Instant::now();
        // `--upload-kbps 0`: held to MIN_PACED_UPLINK_KBPS (64,000 B/s), enough for acks.
        let mut p = UplinkPacer::new(t0, 0, 1200);
        // Its 20 ms bucket holds 1,280 B: one datagram of 1,248 B on the wire.
        assert!(p.may_send(t0), "the bucket holds one datagram");
        p.on_sent(t0, 1200);
        let t1 = t0 + MS;
        assert!(p.may_send(t1), "32 B left and 64 B refilled");
        p.on_sent(t1, 1200);
        assert!(!p.may_send(t1));
        p.holding = true;
        let wait = p.release_at().unwrap() - t1;
        assert!(wait > 17 * MS && wait < 19 * MS, "1,152 B owed at 64,000 B/s: {wait:?}");
        assert!(p.may_send(t1 + 19 * MS));
    }
}
