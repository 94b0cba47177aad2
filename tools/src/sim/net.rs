//! The simulator's network, at message level.
//!
//! Each node has an upload link (its configured rate, a bounded priority queue by
//! transport class) and a download link (its rate, FIFO); every unordered pair of nodes has
//! a fixed one-way propagation delay. A message occupies its sender's upload for the time
//! its wire bytes take at the upload rate, travels for the pair's delay, and passes the
//! receiver's download link; lost packets are retransmitted one RTT later. A message whose
//! send deadline passes while it waits in the queue is abandoned, as the transport does.
//!
//! What is not modelled, on purpose: congestion control (a node sends at its configured
//! upload rate, as a well-tuned LEDBAT++ would on an otherwise idle uplink), handshakes,
//! IP/UDP headers (sizes are UDP payload bytes), and queueing of acks and retransmissions
//! (their bytes are counted, but they do not occupy either link; see [`Transmission`]).

use std::collections::VecDeque;

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use rill_transport::Class;

/// UDP payload of one packet: the transport's default datagram size.
pub const DATAGRAM_BYTES: usize = rill_transport::DEFAULT_MAX_DATAGRAM_SIZE;
/// Bytes every packet adds to the message bytes it carries: the transport header plus the
/// AEAD tag (transport/src/wire.rs `HEADER_LEN`, transport/src/crypto/aead.rs `TAG_LEN`).
pub const PACKET_OVERHEAD: usize = rill_transport::wire::HEADER_LEN + rill_transport::crypto::aead::TAG_LEN;
/// Message bytes one packet carries: 1200 − 24 − 16 = 1160.
pub const PACKET_PAYLOAD: usize = DATAGRAM_BYTES - PACKET_OVERHEAD;
/// Bytes of one ack packet: header and tag (40) plus an ack frame with a few ranges (~10).
pub const ACK_PACKET_BYTES: u64 = 50;

/// A message as it goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// Packets it is cut into (at least one, even for an empty message).
    pub packets: u32,
    /// All bytes of those packets.
    pub bytes: u64,
    /// Bytes of the last packet (the others are full datagrams).
    pub last_packet_bytes: u32,
}

impl Wire {
    /// The wire form of a message body of `len` bytes: ceil(len / 1160) packets, each
    /// adding 40 bytes.
    pub fn of(len: usize) -> Wire {
        let packets = len.div_ceil(PACKET_PAYLOAD).max(1);
        let last_payload = len - (packets - 1) * PACKET_PAYLOAD;
        Wire {
            packets: packets as u32,
            bytes: (len + packets * PACKET_OVERHEAD) as u64,
            last_packet_bytes: (last_payload + PACKET_OVERHEAD) as u32,
        }
    }

    fn packet_bytes(&self, i: u32) -> u64 {
        if i + 1 == self.packets {
            u64::from(self.last_packet_bytes)
        } else {
            DATAGRAM_BYTES as u64
        }
    }
}

/// Nanoseconds `bytes` take at `kbps` kbit/s, rounded up.
pub fn serialization_ns(bytes: u64, kbps: u32) -> u64 {
    // bytes × 8 bit / (kbps × 1000 bit/s) = bytes × 8 × 10^6 / kbps ns.
    (bytes * 8_000_000).div_ceil(u64::from(kbps.max(1)))
}

/// Ack bytes a receiver sends for `packets` data packets: one ack packet per
/// `ack_every` data packets, rounded up (the transport also acks a lone packet, after its
/// ack delay).
pub fn ack_bytes(packets: u64, ack_every: u32) -> u64 {
    packets.div_ceil(u64::from(ack_every.max(1))) * ACK_PACKET_BYTES
}

/// One-way propagation delays, uniform in [min, max] per unordered pair, derived from a
/// hash of (seed, pair): no N² table, and the same pair always gets the same delay.
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    seed: u64,
    min_ns: u64,
    span_ns: u64,
}

impl Delays {
    pub fn new(seed: u64, min_ms: f64, max_ms: f64) -> Delays {
        let min_ns = (min_ms * 1e6).round() as u64;
        let max_ns = (max_ms * 1e6).round() as u64;
        Delays { seed, min_ns, span_ns: max_ns.saturating_sub(min_ns) }
    }

    /// The smallest one-way delay of any pair.
    pub fn min_ns(&self) -> u64 {
        self.min_ns
    }

    pub fn one_way_ns(&self, a: u32, b: u32) -> u64 {
        if a == b {
            return 0;
        }
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let h = mix(self.seed ^ mix((u64::from(lo) << 32) | u64::from(hi)));
        // Multiply-shift maps the hash onto [0, span] without modulo bias worth a thought.
        self.min_ns + ((u128::from(h) * u128::from(self.span_ns + 1)) >> 64) as u64
    }
}

/// SplitMix64's output function (Steele, Lea, Flood, OOPSLA 2014): a cheap bijective mix
/// whose outputs pass BigCrush, good enough to derive delays and ids from a seed.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A node's upload queue: Control before Stream before Background, FIFO within a class,
/// bounded in wire bytes (tail drop). Holds message handles of the simulator.
///
/// The classes take turns a packet at a time, as the transport's endpoint sends them (the
/// most urgent class's next datagram first): a message of a more urgent class that comes
/// while a less urgent one is being serialized goes out once the packet on the wire has
/// left, and the rest of the other waits at the head of its class. Serializing whole
/// messages instead held a live chunk behind up to a whole repair chunk at every hop.
/// Not modelled: the endpoint's turn for Background (one datagram after every eight of
/// the other classes while both wait, `BACKGROUND_TURN_EVERY` in transport/src/endpoint.rs),
/// which makes a live chunk up to an eighth slower to leave while a repair waits, and a
/// repair sooner: here repairs wait longer and more reach their deadline
/// (`scenarios/issue-10k-churn.toml` seed 2: `lost_chunks` 227 with whole messages, 704
/// with this; seed 1: 279 and 288).
#[derive(Debug, Default)]
pub struct UploadQueue {
    queues: [VecDeque<u32>; 3],
    /// Wire bytes waiting or being sent.
    bytes: u64,
    /// An interrupted message at the head of each class's queue: (handle, bytes not sent).
    partial: [Option<(u32, u64)>; 3],
    /// The message being serialized.
    current: Option<Sending>,
    /// No transmission starts before this: the end of the packet that was on the wire
    /// when a message was interrupted.
    free_at: u64,
    /// Changes at every start and interruption: a completion computed before is void.
    epoch: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sending {
    id: u32,
    class: Class,
    /// All its wire bytes, and those not sent before this part began.
    total: u64,
    left: u64,
    /// When this part began.
    since: u64,
}

/// A message starting (or resuming) on the upload link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub id: u32,
    /// When its next byte leaves.
    pub at: u64,
    /// Its wire bytes still to send.
    pub bytes: u64,
    /// It had been interrupted: `bytes` is what was left.
    pub resumed: bool,
    /// Identifies this part: its completion is void if the queue's epoch has moved on.
    pub epoch: u32,
}

impl UploadQueue {
    /// Queues message `id` of `bytes` wire bytes unless that would exceed `cap` bytes
    /// waiting or in transmission; `false` means it was dropped.
    pub fn offer(&mut self, class: Class, id: u32, bytes: u64, cap: u64) -> bool {
        if self.bytes + bytes > cap {
            return false;
        }
        self.bytes += bytes;
        self.queues[class as usize].push_back(id);
        true
    }

    pub fn is_busy(&self) -> bool {
        self.current.is_some()
    }

    /// The current part's epoch (see [`Start::epoch`]).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Starts serializing the most urgent waiting message at `now` (or when the packet on
    /// the wire has left); `bytes_of` gives a message's wire bytes.
    pub fn start_next(&mut self, now: u64, bytes_of: impl Fn(u32) -> u64) -> Option<Start> {
        debug_assert!(self.current.is_none());
        let (class, id) =
            self.queues.iter_mut().enumerate().find_map(|(c, q)| q.pop_front().map(|id| (c, id)))?;
        let total = bytes_of(id);
        let (left, resumed) = match self.partial[class].take() {
            Some((p, left)) if p == id => (left, true),
            other => {
                self.partial[class] = other;
                (total, false)
            }
        };
        let at = now.max(self.free_at);
        self.epoch = self.epoch.wrapping_add(1);
        let class = Class::ALL[class];
        self.current = Some(Sending { id, class, total, left, since: at });
        Some(Start { id, at, bytes: left, resumed, epoch: self.epoch })
    }

    /// A message of `class` was offered at `now` while the uplink serializes at `kbps`:
    /// if what is being sent is less urgent and more than its packet on the wire is left,
    /// it stops there and waits at the head of its class (see the type's docs). `true`
    /// when it did; then start the next message.
    pub fn interrupt(&mut self, class: Class, now: u64, kbps: u32) -> bool {
        let Some(cur) = self.current else { return false };
        if (cur.class as usize) <= (class as usize) {
            return false;
        }
        // Bytes that have left by now, and the rest of the packet being sent (none while
        // it waits for the end of a packet before it).
        let sent = if now < cur.since {
            0
        } else {
            let gone = (u128::from(now - cur.since) * u128::from(kbps) / 8_000_000) as u64;
            (gone / DATAGRAM_BYTES as u64 + 1) * DATAGRAM_BYTES as u64
        };
        if sent >= cur.left {
            return false;
        }
        self.free_at = self.free_at.max(cur.since + serialization_ns(sent, kbps)).max(now);
        self.partial[cur.class as usize] = Some((cur.id, cur.left - sent));
        self.queues[cur.class as usize].push_front(cur.id);
        self.current = None;
        self.epoch = self.epoch.wrapping_add(1);
        true
    }

    /// The current message has left; returns it.
    pub fn finish(&mut self) -> Option<u32> {
        let cur = self.current.take()?;
        self.bytes -= cur.total;
        Some(cur.id)
    }

    /// Forget everything (the node is gone); returns the handles to free.
    pub fn clear(&mut self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.current.take().map(|c| c.id).into_iter().collect();
        for q in &mut self.queues {
            ids.extend(q.drain(..));
        }
        self.partial = [None; 3];
        self.bytes = 0;
        ids
    }

    #[cfg(test)]
    pub fn queued_bytes(&self) -> u64 {
        self.bytes
    }
}

/// A node's download link: FIFO at its rate.
///
/// Cut-through at packet level: a message's packets stream in from the sender while it is
/// still serializing, so the download link can start on a message when its first byte
/// arrives, and is done no earlier than one packet after the last byte arrived. Without
/// this every hop would pay the serialization twice (store-and-forward at both ends of one
/// path), which no packet network does.
#[derive(Debug, Default, Clone, Copy)]
pub struct DownloadLink {
    busy_until: u64,
}

impl DownloadLink {
    /// A message whose first byte arrives at `first_ns` and last byte at `last_ns`
    /// (calls in order of `last_ns`); returns when it has passed the link.
    pub fn admit(&mut self, first_ns: u64, last_ns: u64, wire: Wire, kbps: u32) -> u64 {
        let start = first_ns.max(self.busy_until);
        let done = (start + serialization_ns(wire.bytes, kbps))
            .max(last_ns + serialization_ns(u64::from(wire.last_packet_bytes), kbps));
        self.busy_until = done;
        done
    }
}

/// Where packet losses fall in the sequence of all packets sent.
pub trait LossSource {
    /// Of the next `n` packets, the index of the first one lost (the packets up to and
    /// including it are consumed), or `None` (all `n` consumed, none lost).
    fn next_loss(&mut self, n: u64) -> Option<u64>;
}

/// Independent loss of each packet with probability `p`, drawn as geometric gaps between
/// losses (one random draw per loss instead of one per packet, same distribution).
#[derive(Debug)]
pub struct Bernoulli {
    ln_keep: f64,
    rng: ChaCha8Rng,
    /// Packets that get through before the next loss.
    gap: u64,
}

impl Bernoulli {
    pub fn new(p: f64, rng: ChaCha8Rng) -> Bernoulli {
        let mut b = Bernoulli { ln_keep: (1.0 - p).ln(), rng, gap: u64::MAX };
        if p > 0.0 {
            b.gap = b.draw_gap();
        }
        b
    }

    fn draw_gap(&mut self) -> u64 {
        // u in (0, 1]; P(gap ≥ k) = (1 − p)^k.
        let u = ((self.rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let g = (u.ln() / self.ln_keep).floor();
        if g >= u64::MAX as f64 {
            u64::MAX
        } else {
            g as u64
        }
    }
}

impl LossSource for Bernoulli {
    fn next_loss(&mut self, n: u64) -> Option<u64> {
        if self.gap == u64::MAX {
            return None; // p = 0 (or a gap longer than any run)
        }
        if self.gap >= n {
            self.gap -= n;
            return None;
        }
        let lost = self.gap;
        self.gap = self.draw_gap();
        Some(lost)
    }
}

/// What sending one message cost and when it is complete at the receiver's end of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmission {
    /// Packets sent again (a retransmission may itself be lost and sent again).
    pub retransmitted_packets: u64,
    pub retransmitted_bytes: u64,
    /// When the last packet (after retransmissions) reaches the receiver's download link.
    pub last_arrival_ns: u64,
}

/// The losses of one message serialized from `start_ns` to `done_ns` over a path of
/// `delay_ns` one way. Packet i leaves at its share of the serialization time; a lost
/// packet is sent again one RTT later (2 × delay + 1 ms, the time the sender needs to
/// learn of the loss from acks), as often as it takes. Retransmissions are counted in
/// bytes but do not occupy the upload link: they are a small share at the loss rates
/// simulated, and modelling them would need per-packet queue state.
pub fn transmit(
    loss: &mut impl LossSource,
    wire: Wire,
    start_ns: u64,
    done_ns: u64,
    delay_ns: u64,
) -> Transmission {
    let rtt = 2 * delay_ns + 1_000_000;
    let n = u64::from(wire.packets);
    let mut out = Transmission {
        retransmitted_packets: 0,
        retransmitted_bytes: 0,
        last_arrival_ns: done_ns + delay_ns,
    };
    let mut next = 0u64;
    while next < n {
        let Some(i) = loss.next_loss(n - next) else { break };
        let packet = next + i;
        next = packet + 1;
        let mut sends = 1u64;
        while loss.next_loss(1).is_some() {
            sends += 1;
        }
        out.retransmitted_packets += sends;
        out.retransmitted_bytes += sends * wire.packet_bytes(packet as u32);
        let left = start_ns + (done_ns - start_ns) * (packet + 1) / n;
        out.last_arrival_ns = out.last_arrival_ns.max(left + sends * rtt + delay_ns);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    /// Loses exactly the packets (global packet numbers) in the list.
    struct Scripted {
        lost: Vec<u64>,
        sent: u64,
    }

    impl LossSource for Scripted {
        fn next_loss(&mut self, n: u64) -> Option<u64> {
            let first = self.lost.iter().copied().filter(|&p| p >= self.sent && p < self.sent + n).min();
            match first {
                Some(p) => {
                    let i = p - self.sent;
                    self.sent = p + 1;
                    Some(i)
                }
                None => {
                    self.sent += n;
                    None
                }
            }
        }
    }

    #[test]
    fn wire_sizes() {
        assert_eq!(PACKET_PAYLOAD, 1160);
        assert_eq!(Wire::of(0), Wire { packets: 1, bytes: 40, last_packet_bytes: 40 });
        assert_eq!(Wire::of(1160), Wire { packets: 1, bytes: 1200, last_packet_bytes: 1200 });
        assert_eq!(Wire::of(1161), Wire { packets: 2, bytes: 1241, last_packet_bytes: 41 });
        // A 25 000-byte chunk payload + 23 header + 64 signature = 25 087 bytes: 22 packets.
        let w = Wire::of(25_087);
        assert_eq!(w.packets, 22);
        assert_eq!(w.bytes, 25_087 + 22 * 40);
        assert_eq!(w.last_packet_bytes, (25_087 - 21 * 1160 + 40) as u32);
    }

    #[test]
    fn serialization_time() {
        // 1200 bytes at 8000 kbit/s: 9600 bit / 8 Mbit/s = 1.2 ms.
        assert_eq!(serialization_ns(1200, 8000), 1_200_000);
        // 25 967 bytes at 20 Mbit/s = 10.3868 ms.
        assert_eq!(serialization_ns(25_967, 20_000), 10_386_800);
        // Rounds up: 1 byte at 3 kbit/s = 2666.67 µs.
        assert_eq!(serialization_ns(1, 3), 2_666_667);
        assert_eq!(ack_bytes(1, 4), 50);
        assert_eq!(ack_bytes(4, 4), 50);
        assert_eq!(ack_bytes(22, 4), 300);
    }

    #[test]
    fn delays_are_symmetric_in_range_and_seeded() {
        let d = Delays::new(7, 10.0, 50.0);
        let mut seen_low = false;
        let mut seen_high = false;
        for a in 0..200u32 {
            for b in 0..200u32 {
                let x = d.one_way_ns(a, b);
                assert_eq!(x, d.one_way_ns(b, a));
                if a == b {
                    assert_eq!(x, 0);
                    continue;
                }
                assert!((10_000_000..=50_000_000).contains(&x), "{x}");
                seen_low |= x < 12_000_000;
                seen_high |= x > 48_000_000;
            }
        }
        assert!(seen_low && seen_high);
        let other = Delays::new(8, 10.0, 50.0);
        assert!((1..50).any(|b| other.one_way_ns(0, b) != d.one_way_ns(0, b)));
        assert_eq!(Delays::new(1, 20.0, 20.0).one_way_ns(3, 4), 20_000_000);
    }

    #[test]
    fn priority_order_and_fifo_within_a_class() {
        let mut q = UploadQueue::default();
        let cap = 1 << 20;
        assert!(q.offer(Class::Background, 1, 100, cap));
        assert!(q.offer(Class::Stream, 2, 100, cap));
        assert!(q.offer(Class::Stream, 3, 100, cap));
        assert!(q.offer(Class::Control, 4, 100, cap));
        let mut order = Vec::new();
        while let Some(Start { id, .. }) = q.start_next(0, |_| 100) {
            order.push(id);
            // Something urgent arriving mid-way goes before what waits, after what is sent.
            if id == 4 {
                assert!(q.offer(Class::Control, 5, 100, cap));
            }
            assert_eq!(q.finish(), Some(id));
        }
        assert_eq!(order, vec![4, 5, 2, 3, 1]);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn a_more_urgent_message_goes_after_the_packet_on_the_wire() {
        // 12,000 bytes of repair at 9,600 kbit/s: 10 ms, a packet every 1 ms.
        let kbps = 9600;
        let mut q = UploadQueue::default();
        let cap = 1 << 20;
        let bytes = |id: u32| match id {
            1 => 12_000,
            4 => 100,
            _ => 2400,
        };
        assert!(q.offer(Class::Background, 1, 12_000, cap));
        let first = q.start_next(0, bytes).unwrap();
        assert_eq!((first.id, first.at, first.bytes, first.resumed), (1, 0, 12_000, false));
        // A live chunk 3.5 ms in: the repair's fourth packet leaves at 4 ms, then the chunk.
        assert!(q.offer(Class::Stream, 2, 2400, cap));
        assert!(q.interrupt(Class::Stream, 3_500_000, kbps));
        assert!(!q.is_busy() && q.epoch() != first.epoch, "the repair's completion is void");
        let live = q.start_next(3_500_000, bytes).unwrap();
        assert_eq!((live.id, live.at, live.bytes, live.resumed), (2, 4_000_000, 2400, false));
        // Something as or less urgent waits its turn.
        assert!(q.offer(Class::Stream, 3, 2400, cap));
        assert!(!q.interrupt(Class::Stream, 4_500_000, kbps));
        assert!(!q.interrupt(Class::Background, 4_500_000, kbps));
        assert_eq!(q.finish(), Some(2));
        assert_eq!(q.start_next(6_000_000, bytes).map(|s| s.id), Some(3));
        assert_eq!(q.finish(), Some(3));
        // The repair resumes with what it had left: 7,200 bytes (four packets had gone).
        let rest = q.start_next(8_000_000, bytes).unwrap();
        assert_eq!((rest.id, rest.at, rest.bytes, rest.resumed), (1, 8_000_000, 7200, true));
        // In its last packet, it is not interrupted.
        assert!(q.offer(Class::Control, 4, 100, cap));
        assert!(!q.interrupt(Class::Control, 8_000_000 + 5_500_000, kbps));
        assert_eq!(q.finish(), Some(1));
        assert_eq!(q.start_next(15_000_000, bytes).map(|s| s.id), Some(4));
        assert_eq!(q.finish(), Some(4));
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn an_interruption_before_a_part_begins_sends_none_of_it() {
        let kbps = 9600;
        let mut q = UploadQueue::default();
        let cap = 1 << 20;
        let bytes = |id: u32| if id == 1 { 12_000 } else { 1200 };
        assert!(q.offer(Class::Background, 1, 12_000, cap));
        q.start_next(0, bytes).unwrap();
        assert!(q.offer(Class::Stream, 2, 1200, cap));
        assert!(q.interrupt(Class::Stream, 500_000, kbps)); // free at 1 ms
        let stream = q.start_next(500_000, bytes).unwrap();
        assert_eq!(stream.at, 1_000_000);
        // Control comes before the live chunk's turn: it goes first, at 1 ms still.
        assert!(q.offer(Class::Control, 3, 1200, cap));
        assert!(q.interrupt(Class::Control, 700_000, kbps));
        let control = q.start_next(700_000, bytes).unwrap();
        assert_eq!((control.id, control.at), (3, 1_000_000));
        assert_eq!(q.finish(), Some(3));
        let stream = q.start_next(2_000_000, bytes).unwrap();
        assert_eq!((stream.id, stream.bytes, stream.resumed), (2, 1200, true));
        assert_eq!(q.finish(), Some(2));
        let rest = q.start_next(3_000_000, bytes).unwrap();
        assert_eq!((rest.id, rest.bytes), (1, 10_800));
        assert_eq!(q.clear(), vec![1]);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn queue_bound_drops_at_the_tail() {
        let mut q = UploadQueue::default();
        assert!(q.offer(Class::Stream, 1, 600, 1000));
        assert!(!q.offer(Class::Stream, 2, 401, 1000));
        assert!(q.offer(Class::Control, 3, 400, 1000));
        assert_eq!(q.queued_bytes(), 1000);
        // Bytes in transmission still count until they have left.
        assert_eq!(q.start_next(0, |id| if id == 3 { 400 } else { 600 }).map(|s| s.id), Some(3));
        assert!(!q.offer(Class::Control, 4, 1, 1000));
        assert_eq!(q.finish(), Some(3));
        assert!(q.offer(Class::Control, 4, 400, 1000));
        assert_eq!(q.clear(), vec![4, 1]);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn download_link_is_fifo_and_cut_through() {
        let mut d = DownloadLink::default();
        let w = Wire::of(25_087); // 25 967 wire bytes, last packet 727 + 40 bytes
                                  // A slow sender: the last byte comes in long after the first; done one last
                                  // packet (767 bytes at 100 Mbit/s = 61.36 µs) after it, not a whole message later.
        let done = d.admit(1_000_000, 20_000_000, w, 100_000);
        assert_eq!(done, 20_000_000 + 61_360);
        // A second message arriving at once queues behind it: 25 967 B at 100 Mbit/s.
        let done2 = d.admit(19_000_000, 20_000_000, w, 100_000);
        assert_eq!(done2, done + 2_077_360);
    }

    #[test]
    fn no_loss_means_no_retransmission() {
        let mut loss = Bernoulli::new(0.0, ChaCha8Rng::seed_from_u64(1));
        let t = transmit(&mut loss, Wire::of(25_087), 0, 10_000_000, 20_000_000);
        assert_eq!(
            t,
            Transmission { retransmitted_packets: 0, retransmitted_bytes: 0, last_arrival_ns: 30_000_000 }
        );
    }

    #[test]
    fn lost_packets_are_sent_again_one_rtt_later() {
        // 4 packets (3 full + 1 of 40 + 100 bytes) serialized over 0..4 ms, 10 ms one way:
        // rtt = 21 ms. Packet 1 is lost once (global packet 1), then its retransmission
        // (global 2) gets through; packet 2 is global 3; packet 3 (global 4) is lost, and
        // so is its first retransmission (global 5); the second (global 6) gets through.
        let wire = Wire::of(3 * 1160 + 100);
        assert_eq!(wire.packets, 4);
        let mut loss = Scripted { lost: vec![1, 4, 5], sent: 0 };
        let t = transmit(&mut loss, wire, 0, 4_000_000, 10_000_000);
        assert_eq!(t.retransmitted_packets, 1 + 2);
        assert_eq!(t.retransmitted_bytes, 1200 + 2 * 140);
        // Packet 1 left at 2 ms: arrives 2 + 21 + 10 = 33 ms. Packet 3 left at 4 ms and was
        // sent twice more: 4 + 42 + 10 = 56 ms.
        assert_eq!(t.last_arrival_ns, 56_000_000);
        // The loss source consumed 4 originals + 3 retransmissions.
        assert_eq!(loss.sent, 7);
    }

    #[test]
    fn bernoulli_loses_about_p() {
        let mut loss = Bernoulli::new(0.05, ChaCha8Rng::seed_from_u64(3));
        let mut lost = 0u64;
        let mut left = 1_000_000u64;
        while let Some(i) = loss.next_loss(left) {
            lost += 1;
            left -= i + 1;
        }
        assert!((48_000..52_000).contains(&lost), "{lost}");
    }
}
