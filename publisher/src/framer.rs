//! Finding 188-byte packet boundaries in a byte stream that arrives split anywhere, and
//! getting them back after garbage or lost bytes.
//!
//! - **Acquiring sync**: at a position with three sync bytes (0x47) 188 bytes apart. One 0x47
//!   is common in payload data; three at packet stride by chance are 1 in 2^24 per position.
//! - **In sync**, a packet is passed on when it starts with 0x47 and the byte after it (the
//!   next packet's sync byte) is 0x47 too or has not arrived yet. Waiting for that byte would
//!   hold the last packet of every read until the next read: a whole datagram interval at
//!   low bitrates.
//! - **Losing sync**: a packet that does not start with 0x47 means sync was lost; the framer
//!   counts a resync and hunts for the next three-sync position, reporting every byte it
//!   passes over as skipped. A packet that starts with 0x47 but is followed by something
//!   else is either whole and followed by garbage, or truncated (bytes were lost) and
//!   followed by the rest of its successor. The framer tells them apart by where sync
//!   resumes: inside the packet's 188 bytes means it was truncated, and it is skipped;
//!   after them means it was whole, and it is passed on. Deciding needs up to 564 bytes of
//!   look-ahead, which a damaged stream can afford.
//!
//! A truncation that falls exactly at the end of a read cannot be seen in time: the
//! truncated packet (with the head of its successor) is passed on, and the rest of the
//! successor is skipped.

use crate::ts::{Packet, PACKET_LEN, SYNC_BYTE};

/// Bytes needed to confirm sync at a position: the sync bytes of three consecutive packets.
const CONFIRM_LEN: usize = 2 * PACKET_LEN + 1;

/// Hunting window: three packets. Scanning a full window checks 188 positions, then drops
/// those 188 bytes, so every position is checked once. It is also exactly what deciding
/// about a suspect packet needs: positions 1 to 187, each with its 376-byte confirmation.
const WINDOW: usize = 3 * PACKET_LEN;

/// A piece of the input, in input order.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A whole packet starting with the sync byte.
    Packet(&'a Packet),
    /// Bytes passed over while looking for sync (garbage, or a packet fragment).
    Skipped(&'a [u8]),
    /// The incomplete last packet at the end of the stream (only from
    /// [`PacketFramer::finish`]).
    Partial(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Packet boundaries known; the window holds less than one packet.
    Synced,
    /// Looking for three sync bytes 188 apart; the window holds less than `CONFIRM_LEN`
    /// bytes between calls.
    Hunting,
    /// The window starts with a packet whose successor does not start with 0x47; waiting
    /// for enough bytes to tell whether it was whole or truncated.
    Suspect,
}

/// Splits a byte stream into packets. Sans-IO; holds at most 564 bytes (three packets) between
/// calls.
pub struct PacketFramer {
    buf: [u8; WINDOW],
    len: usize,
    state: State,
    resyncs: u64,
    bytes_skipped: u64,
}

impl std::fmt::Debug for PacketFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketFramer")
            .field("buffered", &self.len)
            .field("state", &self.state)
            .field("resyncs", &self.resyncs)
            .field("bytes_skipped", &self.bytes_skipped)
            .finish()
    }
}

impl Default for PacketFramer {
    fn default() -> Self {
        PacketFramer::new()
    }
}

impl PacketFramer {
    pub fn new() -> PacketFramer {
        PacketFramer { buf: [0; WINDOW], len: 0, state: State::Hunting, resyncs: 0, bytes_skipped: 0 }
    }

    /// Times sync was lost after it had been found.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Bytes reported as [`Segment::Skipped`] so far.
    pub fn bytes_skipped(&self) -> u64 {
        self.bytes_skipped
    }

    /// Bytes held for the next call: an incomplete packet, or a hunting window.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Consumes `input`, calling `out` for each packet and each run of skipped bytes, in
    /// input order. Bytes that cannot be decided yet are kept for the next call.
    pub fn push(&mut self, mut input: &[u8], out: &mut impl FnMut(Segment<'_>)) {
        loop {
            if self.len == 0 && self.state == State::Synced {
                // Fast path: packets straight from the input, no copy into the window.
                while input.len() >= PACKET_LEN
                    && input[0] == SYNC_BYTE
                    && input.get(PACKET_LEN).is_none_or(|&b| b == SYNC_BYTE)
                {
                    let (packet, rest) = input.split_at(PACKET_LEN);
                    // The split point is PACKET_LEN, so the conversion cannot fail.
                    if let Ok(packet) = <&Packet>::try_from(packet) {
                        out(Segment::Packet(packet));
                    }
                    input = rest;
                }
                if input.is_empty() {
                    return;
                }
                if input[0] != SYNC_BYTE {
                    self.lose_sync(State::Hunting);
                } else if input.len() > PACKET_LEN {
                    // This packet starts right but its successor does not.
                    self.lose_sync(State::Suspect);
                }
            }
            if input.is_empty() {
                self.drain(out, None);
                return;
            }
            // `drain` leaves less than a packet when in sync and less than the whole window
            // otherwise, so there is room and every pass takes at least one byte. In sync,
            // take only what completes the packet, so the next one can use the fast path.
            debug_assert!(self.len < if self.state == State::Synced { PACKET_LEN } else { WINDOW });
            let room = WINDOW - self.len;
            let want = if self.state == State::Synced { PACKET_LEN - self.len } else { room };
            let take = want.min(room).min(input.len());
            self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
            self.len += take;
            input = &input[take..];
            self.drain(out, input.first().copied());
        }
    }

    /// Ends the stream. A held incomplete packet is a trailing partial packet: it is given
    /// to `out` as [`Segment::Partial`] and its length returned. A suspect packet is passed
    /// on (nothing shows it was truncated); other bytes held while hunting are skipped. The
    /// framer then starts over, needing a fresh sync.
    pub fn finish(&mut self, out: &mut impl FnMut(Segment<'_>)) -> usize {
        if self.state == State::Suspect {
            self.emit_packet(out);
            self.state = State::Hunting;
        }
        let held = std::mem::take(&mut self.len);
        let state = std::mem::replace(&mut self.state, State::Hunting);
        if held == 0 {
            return 0;
        }
        if state == State::Synced {
            out(Segment::Partial(&self.buf[..held]));
            held
        } else {
            self.bytes_skipped += held as u64;
            out(Segment::Skipped(&self.buf[..held]));
            0
        }
    }

    fn lose_sync(&mut self, to: State) {
        self.state = to;
        self.resyncs += 1;
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    fn skip(&mut self, n: usize, out: &mut impl FnMut(Segment<'_>)) {
        if n > 0 {
            self.bytes_skipped += n as u64;
            out(Segment::Skipped(&self.buf[..n]));
            self.consume(n);
        }
    }

    /// Passes on the packet at the start of the window (which holds at least one).
    fn emit_packet(&mut self, out: &mut impl FnMut(Segment<'_>)) {
        let mut packet = [0u8; PACKET_LEN];
        packet.copy_from_slice(&self.buf[..PACKET_LEN]);
        out(Segment::Packet(&packet));
        self.consume(PACKET_LEN);
    }

    /// The first position in `from..` (and before `until`) where three sync bytes 188 apart
    /// are in the window.
    fn find_sync(&self, from: usize, until: usize) -> Option<usize> {
        let end = until.min((self.len + 1).saturating_sub(CONFIRM_LEN));
        (from..end).find(|&p| {
            self.buf[p] == SYNC_BYTE
                && self.buf[p + PACKET_LEN] == SYNC_BYTE
                && self.buf[p + 2 * PACKET_LEN] == SYNC_BYTE
        })
    }

    /// Emits what the window holds until it needs more input. `next` is the input byte
    /// right after the window's contents, if it has arrived.
    fn drain(&mut self, out: &mut impl FnMut(Segment<'_>), next: Option<u8>) {
        loop {
            match self.state {
                State::Synced => {
                    if self.len == 0 {
                        return;
                    }
                    if self.buf[0] != SYNC_BYTE {
                        self.lose_sync(State::Hunting);
                        continue;
                    }
                    if self.len < PACKET_LEN {
                        return;
                    }
                    let after = if self.len > PACKET_LEN { Some(self.buf[PACKET_LEN]) } else { next };
                    if after.is_some_and(|b| b != SYNC_BYTE) {
                        self.lose_sync(State::Suspect);
                        continue;
                    }
                    self.emit_packet(out);
                }
                State::Hunting => {
                    if self.len < CONFIRM_LEN {
                        return;
                    }
                    let positions = self.len + 1 - CONFIRM_LEN;
                    let found = self.find_sync(0, positions);
                    self.skip(found.unwrap_or(positions), out);
                    if found.is_none() {
                        return;
                    }
                    self.state = State::Synced;
                }
                State::Suspect => {
                    // Sync inside the packet's 188 bytes: it was truncated, drop it.
                    if let Some(at) = self.find_sync(1, PACKET_LEN) {
                        self.skip(at, out);
                        self.state = State::Synced;
                        continue;
                    }
                    // All of positions 1..188 checked without sync: the packet was whole.
                    if self.len == WINDOW {
                        self.emit_packet(out);
                        self.state = State::Hunting;
                        continue;
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn packets(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| crate::testutil::ts_packet(0x100, false, i as u8, None, &[i as u8; 184]))
            .collect()
    }

    /// Runs the framer over `input` split at the given sizes; returns packets and skipped
    /// bytes in order, plus the partial packet length at finish.
    fn frame(input: &[u8], splits: &mut dyn Iterator<Item = usize>) -> (Vec<u8>, Vec<u8>, usize, u64) {
        let mut framer = PacketFramer::new();
        let (mut good, mut skipped) = (Vec::new(), Vec::new());
        let mut out = |s: Segment<'_>| match s {
            Segment::Packet(p) => good.extend_from_slice(p),
            Segment::Skipped(b) => skipped.extend_from_slice(b),
            Segment::Partial(_) => {}
        };
        let mut rest = input;
        while !rest.is_empty() {
            let n = splits.next().unwrap_or(rest.len()).clamp(1, rest.len());
            framer.push(&rest[..n], &mut out);
            assert!(framer.buffered() <= WINDOW);
            rest = &rest[n..];
        }
        let partial = framer.finish(&mut out);
        assert_eq!(framer.bytes_skipped(), skipped.len() as u64);
        (good, skipped, partial, framer.resyncs())
    }

    #[test]
    fn clean_stream_any_split() {
        let input = packets(20);
        let seed = crate::testutil::test_seed();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for max in [1, 2, 187, 188, 189, 564, 5000] {
            let (good, skipped, partial, resyncs) =
                frame(&input, &mut std::iter::from_fn(|| Some(rng.next_u32() as usize % max + 1)));
            assert_eq!((good == input, skipped.len(), partial, resyncs), (true, 0, 0, 0), "max split {max}");
        }
    }

    #[test]
    fn garbage_is_skipped_and_counted() {
        let clean = packets(10);
        let garbage = [0x46u8, 1, 2, 0x47, 9, 9, 9];
        let mut input = b"leading junk".to_vec();
        input.extend_from_slice(&clean[..5 * 188]);
        input.extend_from_slice(&garbage);
        input.extend_from_slice(&clean[5 * 188..]);
        input.extend_from_slice(&[0x47, 0, 0]);
        for split in [1, 100, 188, 10_000] {
            let (good, skipped, partial, resyncs) = frame(&input, &mut std::iter::repeat(split));
            assert!(good == clean, "split {split}");
            assert_eq!(skipped.len(), 12 + garbage.len(), "split {split}");
            assert_eq!((partial, resyncs), (3, 1), "split {split}");
        }
    }

    #[test]
    fn garbage_starting_with_a_sync_byte_is_caught_by_look_ahead() {
        let clean = packets(10);
        let mut input = clean[..5 * 188].to_vec();
        input.extend_from_slice(&[0x47, 1, 2, 3]);
        input.extend_from_slice(&clean[5 * 188..]);
        let (good, skipped, partial, resyncs) = frame(&input, &mut std::iter::empty());
        assert!(good == clean);
        assert_eq!((skipped.len(), partial, resyncs), (4, 0, 1));
    }

    #[test]
    fn a_lone_sync_byte_does_not_sync() {
        let mut input = vec![0u8; 1000];
        input[0] = 0x47;
        input[188] = 0x47;
        let (good, skipped, partial, _) = frame(&input, &mut std::iter::empty());
        assert_eq!((good.len(), skipped.len(), partial), (0, 1000, 0));
    }

    #[test]
    fn truncated_packet_is_dropped() {
        let clean = packets(8);
        let mut input = clean[..2 * 188].to_vec();
        input.extend_from_slice(&clean[2 * 188..2 * 188 + 100]);
        input.extend_from_slice(&clean[3 * 188..]);
        let (good, skipped, partial, resyncs) = frame(&input, &mut std::iter::empty());
        let mut expected = clean[..2 * 188].to_vec();
        expected.extend_from_slice(&clean[3 * 188..]);
        assert!(good == expected);
        assert_eq!((skipped.len(), partial, resyncs), (100, 0, 1));
        // If the read ends right after the damaged 188 bytes, there is nothing to look
        // ahead at: they pass, and the successor's remains are skipped.
        let cut = 3 * 188;
        let (good, skipped, _, resyncs) = frame(&input, &mut [cut, usize::MAX].into_iter());
        assert_eq!((good.len(), skipped.len(), resyncs), (7 * 188, 100, 1));
    }
}
