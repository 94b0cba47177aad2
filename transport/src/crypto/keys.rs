//! Packet protection of an established session: ChaCha20-Poly1305 with the packet number
//! as nonce and the cleartext header as associated data, an RFC 6479 replay window, and
//! key updates without a round trip.
//!
//! # Key updates
//! Each direction has its own key (Noise split, spec §5.2) and updates it on its own with
//! Noise's REKEY (spec §4.2, a one-way function of the old key), signalled by flipping the
//! key-phase bit of the header, as QUIC does (RFC 9001 §6):
//! - the sender updates after [`RekeyLimits::after_packets`] packets or
//!   [`RekeyLimits::after_time`] under one key, but only once a packet sent under the
//!   current key has been acknowledged (RFC 9001 §6.1), so the receiver never needs more
//!   than the previous, current and next keys;
//! - the receiver keeps the next key ready; a packet with the other phase bit and a packet
//!   number above the first of the current phase is tried with it, and on success the
//!   receiver moves on. Packets of the old phase that arrive late (reordering) are opened
//!   with the previous key, which is kept for a while (RFC 9001 §6.5: three PTOs) and
//!   then erased.
//!
//! Nothing here changes on a packet that fails authentication: the replay window is checked
//! before decryption and marked only after it (RFC 6479 §2.3 / WireGuard §5.4.6).

use std::time::{Duration, Instant};

use super::aead::{PacketKey, TAG_LEN};
use super::replay::ReplayWindow;
use crate::wire::{FLAG_KEY_PHASE, HEADER_LEN};

/// When a direction moves to its next key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyLimits {
    /// WireGuard (whitepaper §6.2) rekeys after 2^60 messages; ChaCha20-Poly1305 itself
    /// has no practical confidentiality limit (RFC 9001 §6.6), so this is about erasing
    /// old keys, not about the cipher.
    pub after_packets: u64,
    /// WireGuard's REKEY_AFTER_TIME (whitepaper §6.2): 120 s.
    pub after_time: Duration,
}

impl Default for RekeyLimits {
    fn default() -> Self {
        Self { after_packets: 1 << 60, after_time: Duration::from_secs(120) }
    }
}

/// RFC 9001 §6.6: the integrity limit of AEAD_CHACHA20_POLY1305 is 2^36 forged packets
/// per key; past it the session must end.
pub const INTEGRITY_LIMIT: u64 = 1 << 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than header + tag.
    Short,
    /// Already received, or too far behind the window.
    Replay,
    /// Failed authentication (forged, corrupted, or under a key we no longer hold).
    Auth,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStats {
    pub auth_failures: u64,
    pub replays_rejected: u64,
    pub send_key_updates: u64,
    pub recv_key_updates: u64,
}

#[derive(Debug)]
pub struct SessionKeys {
    limits: RekeyLimits,
    send: PacketKey,
    send_phase: bool,
    /// First packet number sealed under `send` (None until one is).
    send_phase_first_pn: Option<u64>,
    send_packets: u64,
    send_since: Instant,
    recv: PacketKey,
    recv_next: PacketKey,
    recv_phase: bool,
    /// First packet number opened under `recv` (0 for the first phase).
    recv_phase_first_pn: u64,
    /// The previous receive key and when it is erased.
    recv_prev: Option<(PacketKey, Instant)>,
    replay: ReplayWindow,
    pub stats: KeyStats,
}

impl SessionKeys {
    pub fn new(now: Instant, send: &[u8; 32], recv: &[u8; 32], limits: RekeyLimits) -> Self {
        let recv = PacketKey::new(recv);
        Self {
            limits,
            send: PacketKey::new(send),
            send_phase: false,
            send_phase_first_pn: None,
            send_packets: 0,
            send_since: now,
            recv_next: recv.next(),
            recv,
            recv_phase: false,
            recv_phase_first_pn: 0,
            recv_prev: None,
            replay: ReplayWindow::new(),
            stats: KeyStats::default(),
        }
    }

    /// Move the send direction to its next key if it is due and allowed. `largest_acked`
    /// is the largest of our packet numbers the peer has acknowledged.
    pub fn maybe_update_send_key(&mut self, now: Instant, largest_acked: Option<u64>) {
        let due = self.send_packets >= self.limits.after_packets
            || now.saturating_duration_since(self.send_since) >= self.limits.after_time;
        let confirmed =
            matches!((self.send_phase_first_pn, largest_acked), (Some(first), Some(l)) if l >= first);
        if due && confirmed {
            self.send = self.send.next();
            self.send_phase = !self.send_phase;
            self.send_phase_first_pn = None;
            self.send_packets = 0;
            self.send_since = now;
            self.stats.send_key_updates += 1;
        }
    }

    /// Protect a packet: `packet[..HEADER_LEN]` holds the encoded header, `packet[HEADER_LEN..len]`
    /// the frames, and `packet` has room for the tag after them. Sets the key-phase bit,
    /// encrypts in place, appends the tag, returns the new length.
    pub fn seal(&mut self, pn: u64, packet: &mut [u8], len: usize) -> usize {
        debug_assert!(len >= HEADER_LEN && len + TAG_LEN <= packet.len());
        if self.send_phase {
            packet[1] |= FLAG_KEY_PHASE;
        } else {
            packet[1] &= !FLAG_KEY_PHASE;
        }
        let (header, rest) = packet.split_at_mut(HEADER_LEN);
        let tag = self.send.seal(pn, header, &mut rest[..len - HEADER_LEN]);
        rest[len - HEADER_LEN..len - HEADER_LEN + TAG_LEN].copy_from_slice(&tag);
        self.send_phase_first_pn.get_or_insert(pn);
        self.send_packets += 1;
        len + TAG_LEN
    }

    /// Open a packet in place; returns the length of the frames (after the header).
    /// `discard_after` is how long a replaced receive key stays for late packets.
    pub fn open(
        &mut self,
        now: Instant,
        pn: u64,
        packet: &mut [u8],
        discard_after: Duration,
    ) -> Result<usize, OpenError> {
        self.expire(now);
        if packet.len() < HEADER_LEN + TAG_LEN {
            return Err(OpenError::Short);
        }
        if !self.replay.check(pn) {
            self.stats.replays_rejected += 1;
            return Err(OpenError::Replay);
        }
        let phase = packet[1] & FLAG_KEY_PHASE != 0;
        let body_len = packet.len() - HEADER_LEN - TAG_LEN;
        let (header, rest) = packet.split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(body_len);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| OpenError::Short)?;
        let key = if phase == self.recv_phase {
            Some((&self.recv, false))
        } else if pn < self.recv_phase_first_pn {
            self.recv_prev.as_ref().map(|(k, _)| (k, false))
        } else {
            Some((&self.recv_next, true))
        };
        let Some((key, is_next)) = key else {
            self.stats.auth_failures += 1;
            return Err(OpenError::Auth);
        };
        if key.open(pn, header, body, tag).is_err() {
            self.stats.auth_failures += 1;
            return Err(OpenError::Auth);
        }
        // Authenticated: only now may the packet change state.
        if !self.replay.mark(pn) {
            self.stats.replays_rejected += 1;
            return Err(OpenError::Replay);
        }
        if is_next {
            let next = self.recv_next.next();
            let current = std::mem::replace(&mut self.recv, std::mem::replace(&mut self.recv_next, next));
            self.recv_prev = Some((current, now + discard_after));
            self.recv_phase = phase;
            self.recv_phase_first_pn = pn;
            self.stats.recv_key_updates += 1;
        }
        Ok(body_len)
    }

    /// Erase the previous receive key once its time is up.
    pub fn expire(&mut self, now: Instant) {
        if self.recv_prev.as_ref().is_some_and(|(_, until)| now >= *until) {
            // PacketKey zeroizes its copy of the key bytes on drop.
            self.recv_prev = None;
        }
    }

    /// When `expire` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.recv_prev.as_ref().map(|(_, until)| *until)
    }

    /// The session must end: too many forgeries under one key (RFC 9001 §6.6).
    pub fn integrity_limit_reached(&self) -> bool {
        self.stats.auth_failures >= INTEGRITY_LIMIT
    }

    pub fn holds_previous_key(&self) -> bool {
        self.recv_prev.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISCARD: Duration = Duration::from_secs(1);

    fn pair(now: Instant, limits: RekeyLimits) -> (SessionKeys, SessionKeys) {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        (SessionKeys::new(now, &k1, &k2, limits), SessionKeys::new(now, &k2, &k1, limits))
    }

    fn packet(pn: u64, body: &[u8]) -> (Vec<u8>, usize) {
        let mut p = vec![0u8; HEADER_LEN + body.len() + TAG_LEN];
        p[0] = 0x21;
        p[18..22].copy_from_slice(&(pn as u32).to_be_bytes());
        p[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        let len = HEADER_LEN + body.len();
        (p, len)
    }

    fn seal(k: &mut SessionKeys, pn: u64, body: &[u8]) -> Vec<u8> {
        let (mut p, len) = packet(pn, body);
        let n = k.seal(pn, &mut p, len);
        p.truncate(n);
        p
    }

    #[test]
    fn round_trip_and_replay() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, RekeyLimits::default());
        let p = seal(&mut a, 0, b"hello");
        assert_ne!(&p[HEADER_LEN..HEADER_LEN + 5], b"hello");
        let mut q = p.clone();
        assert_eq!(b.open(now, 0, &mut q, DISCARD), Ok(5));
        assert_eq!(&q[HEADER_LEN..HEADER_LEN + 5], b"hello");
        let mut q = p.clone();
        assert_eq!(b.open(now, 0, &mut q, DISCARD), Err(OpenError::Replay));
        assert_eq!(b.stats.replays_rejected, 1);
    }

    #[test]
    fn every_bit_flip_is_rejected_and_does_not_move_the_window() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, RekeyLimits::default());
        let p = seal(&mut a, 7, b"some frames here");
        for bit in 0..p.len() * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            assert!(b.open(now, 7, &mut q, DISCARD).is_err(), "bit {bit}");
        }
        assert_eq!(b.stats.auth_failures, (p.len() * 8) as u64);
        // The genuine packet still opens: no forgery marked its number.
        let mut q = p.clone();
        assert!(b.open(now, 7, &mut q, DISCARD).is_ok());
    }

    #[test]
    fn reordered_packets_inside_the_window_are_accepted_once() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, RekeyLimits::default());
        let packets: Vec<Vec<u8>> = (0..100).map(|pn| seal(&mut a, pn, &[pn as u8; 10])).collect();
        for pn in (0..100).rev() {
            let mut q = packets[pn].clone();
            assert!(b.open(now, pn as u64, &mut q, DISCARD).is_ok());
        }
        for (pn, p) in packets.iter().enumerate() {
            let mut q = p.clone();
            assert_eq!(b.open(now, pn as u64, &mut q, DISCARD), Err(OpenError::Replay));
        }
    }

    #[test]
    fn key_updates_need_an_ack_and_late_packets_use_the_previous_key_until_it_is_erased() {
        let now = Instant::now();
        let limits = RekeyLimits { after_packets: 10, after_time: Duration::from_secs(3600) };
        let (mut a, mut b) = pair(now, limits);
        let mut pn = 0u64;
        let mut late = Vec::new();
        for round in 0..5 {
            for _ in 0..12 {
                let p = seal(&mut a, pn, &pn.to_be_bytes());
                if pn % 12 == 11 {
                    late.push((pn, p)); // delivered after the next phase started
                } else {
                    let mut q = p;
                    assert_eq!(b.open(now, pn, &mut q, DISCARD), Ok(8), "pn {pn} round {round}");
                }
                pn += 1;
            }
            // Not acknowledged yet: no update however many packets.
            a.maybe_update_send_key(now, None);
            assert_eq!(a.stats.send_key_updates, round);
            a.maybe_update_send_key(now, Some(pn - 1));
            assert_eq!(a.stats.send_key_updates, round + 1);
            // First packet of the new phase, then the late one of the old phase.
            let p = seal(&mut a, pn, &pn.to_be_bytes());
            let mut q = p;
            assert!(b.open(now, pn, &mut q, DISCARD).is_ok());
            pn += 1;
            let (late_pn, mut q) = late.pop().unwrap();
            assert!(b.open(now, late_pn, &mut q, DISCARD).is_ok(), "late {late_pn}");
        }
        assert_eq!(b.stats.recv_key_updates, 5);
        // After the discard time the previous key is gone.
        let (held_pn, p) = (pn, seal(&mut a, pn, b"x"));
        for _ in 0..10 {
            pn += 1;
            let mut q = seal(&mut a, pn, b"filler");
            assert!(b.open(now, pn, &mut q, DISCARD).is_ok());
        }
        a.maybe_update_send_key(now, Some(pn));
        pn += 1;
        let mut q = seal(&mut a, pn, b"y");
        assert!(b.open(now, pn, &mut q, DISCARD).is_ok());
        assert!(b.holds_previous_key());
        b.expire(now + DISCARD);
        assert!(!b.holds_previous_key());
        let mut p2 = p;
        assert_eq!(b.open(now + DISCARD, held_pn, &mut p2, DISCARD), Err(OpenError::Auth));
    }

    #[test]
    fn time_limit_updates_the_key() {
        let now = Instant::now();
        let limits = RekeyLimits { after_packets: u64::MAX, after_time: Duration::from_secs(120) };
        let (mut a, mut b) = pair(now, limits);
        let mut p = seal(&mut a, 0, b"a");
        b.open(now, 0, &mut p, DISCARD).unwrap();
        a.maybe_update_send_key(now + Duration::from_secs(119), Some(0));
        assert_eq!(a.stats.send_key_updates, 0);
        a.maybe_update_send_key(now + Duration::from_secs(120), Some(0));
        assert_eq!(a.stats.send_key_updates, 1);
        let mut p = seal(&mut a, 1, b"b");
        assert!(b.open(now, 1, &mut p, DISCARD).is_ok());
        assert_eq!(b.stats.recv_key_updates, 1);
    }

    #[test]
    fn short_packets_are_rejected() {
        let now = Instant::now();
        let (_, mut b) = pair(now, RekeyLimits::default());
        for len in 0..HEADER_LEN + TAG_LEN {
            let mut p = vec![0u8; len];
            assert_eq!(b.open(now, 0, &mut p, DISCARD), Err(OpenError::Short));
        }
    }
}
