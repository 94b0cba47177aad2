//! The transmit queue: up to [`BATCH`] datagrams packed back to back in one buffer, and
//! their grouping into kernel messages (one GSO run, or one plain datagram, per message).
//!
//! Packing datagrams contiguously is what makes GSO free: a run of equal-sized datagrams
//! to one destination is already one slice, handed to the kernel with a segment size.

use std::net::SocketAddr;

use crate::endpoint::Transmit;

/// Datagrams per batch: one `sendmmsg`/`recvmmsg` call moves at most this many, and the
/// queue holds at most this many. 64 × 1200 B = 77 kB: enough to amortise a syscall
/// (the measured gain flattens out well before 64, see `bench_batch_io`), small enough to
/// stay in L2. Linux caps one GSO send at 64 segments (see [`GSO_MAX_SEGMENTS`]), so a
/// batch never needs more than that either.
pub const BATCH: usize = 64;

/// Most segments in one GSO send: `UDP_MAX_SEGMENTS` = 1 << 6 in include/linux/udp.h
/// (newer kernels allow more; 64 works on every kernel with UDP_SEGMENT, 4.18 and later).
pub(super) const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one GSO send: an IPv4 datagram is at most 65 535 bytes, minus 20
/// of IP header and 8 of UDP header (RFC 791, RFC 768). IPv6 would allow 20 more; one
/// bound for both keeps the grouping independent of the path.
pub(super) const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;

/// One datagram in the queue: `len` bytes at `buf[offset..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Datagram {
    pub destination: SocketAddr,
    pub offset: usize,
    pub len: usize,
}

/// One message for the kernel: `len` bytes at `buf[offset..]` to `destination`, made of
/// `datagrams` datagrams. With `segment_len` set it is a GSO send: the kernel cuts it
/// into datagrams of `segment_len` bytes (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Message {
    pub destination: SocketAddr,
    pub offset: usize,
    pub len: usize,
    pub segment_len: Option<u16>,
    pub datagrams: usize,
}

/// Datagrams taken from the endpoint and not yet accepted by the kernel.
#[derive(Debug, Default)]
pub(super) struct TxQueue {
    /// `BATCH × max_datagram_size` bytes, allocated once; datagrams are packed from 0.
    buf: Vec<u8>,
    /// At most [`BATCH`] entries, contiguous in `buf` in this order.
    datagrams: Vec<Datagram>,
    /// How many of `datagrams` the kernel has taken.
    sent: usize,
}

impl TxQueue {
    pub fn has_pending(&self) -> bool {
        self.sent < self.datagrams.len()
    }

    pub fn pending(&self) -> &[Datagram] {
        &self.datagrams[self.sent..]
    }

    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// Refill an empty queue with up to [`BATCH`] datagrams from `poll` (which writes one
    /// datagram into the slice it is given, at most `max_datagram_size` bytes, and says
    /// where it goes). Returns how many were taken.
    pub fn fill(
        &mut self,
        max_datagram_size: usize,
        mut poll: impl FnMut(&mut [u8]) -> Option<Transmit>,
    ) -> usize {
        assert!(!self.has_pending(), "refilling a queue that still holds datagrams");
        self.datagrams.clear();
        self.sent = 0;
        if self.buf.len() < BATCH * max_datagram_size {
            self.buf.resize(BATCH * max_datagram_size, 0);
        }
        let mut end = 0;
        while self.datagrams.len() < BATCH {
            let Some(t) = poll(&mut self.buf[end..end + max_datagram_size]) else { break };
            assert!(t.size <= max_datagram_size, "transmit of {} B > max {max_datagram_size}", t.size);
            self.datagrams.push(Datagram { destination: t.destination, offset: end, len: t.size });
            end += t.size;
        }
        self.datagrams.len()
    }

    /// The kernel took the next `count` datagrams.
    pub fn advance(&mut self, count: usize) {
        assert!(self.sent + count <= self.datagrams.len());
        self.sent += count;
    }

    /// Group the pending datagrams into messages, in order, into `out` (cleared first).
    /// With `gso_max_segments > 1`, consecutive datagrams to one destination whose sizes
    /// equal the first's (the last may be shorter) become one GSO message, bounded by
    /// `gso_max_segments` and [`GSO_MAX_BYTES`]; a run of one stays a plain message.
    pub fn messages(&self, gso_max_segments: usize, out: &mut Vec<Message>) {
        out.clear();
        let pending = self.pending();
        let mut i = 0;
        while i < pending.len() {
            let first = pending[i];
            let mut run = 1;
            let mut len = first.len;
            if gso_max_segments > 1 && first.len > 0 && first.len <= usize::from(u16::MAX) {
                while let Some(next) = pending.get(i + run) {
                    let previous = pending[i + run - 1];
                    let joins = next.destination == first.destination
                        && next.len > 0
                        && next.len <= first.len
                        // Only the last segment may be short: a short one ends the run.
                        && previous.len == first.len
                        && run < gso_max_segments
                        && len + next.len <= GSO_MAX_BYTES;
                    if !joins {
                        break;
                    }
                    debug_assert_eq!(next.offset, previous.offset + previous.len, "packed");
                    len += next.len;
                    run += 1;
                }
            }
            out.push(Message {
                destination: first.destination,
                offset: first.offset,
                len,
                // The cast cannot truncate: first.len <= u16::MAX is checked above.
                segment_len: (run > 1).then_some(first.len as u16),
                datagrams: run,
            });
            i += run;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(items: &[(u16, usize)]) -> TxQueue {
        let mut q = TxQueue::default();
        let mut it = items.iter();
        q.fill(1500, |buf| {
            let &(port, size) = it.next()?;
            buf[..size].fill(port as u8);
            Some(Transmit { destination: SocketAddr::from(([127, 0, 0, 1], port)), size })
        });
        q
    }

    fn shape(q: &TxQueue, gso: usize) -> Vec<(u16, usize, Option<u16>)> {
        let mut out = Vec::new();
        q.messages(gso, &mut out);
        out.iter().map(|m| (m.destination.port(), m.datagrams, m.segment_len)).collect()
    }

    #[test]
    fn runs_split_on_destination_size_and_short_last() {
        let q = queue(&[(1, 1200), (1, 1200), (1, 900), (1, 1200), (2, 1200), (2, 1200), (2, 1300)]);
        assert_eq!(
            shape(&q, 64),
            vec![(1, 3, Some(1200)), (1, 1, None), (2, 2, Some(1200)), (2, 1, None)],
            "a short datagram ends a run; a longer one starts a new message"
        );
        assert_eq!(shape(&q, 1).len(), 7, "without GSO every datagram is its own message");
        let mut out = Vec::new();
        q.messages(64, &mut out);
        assert_eq!(out[0].len, 3300);
        assert_eq!(out[1].offset, 3300);
    }

    #[test]
    fn runs_respect_segment_and_byte_bounds() {
        let q = queue(&[(1, 1200); BATCH]);
        // 65 507 / 1200 = 54 segments fit in one GSO send.
        assert_eq!(shape(&q, 64), vec![(1, 54, Some(1200)), (1, 10, Some(1200))]);
        assert_eq!(shape(&q, 16), vec![(1, 16, Some(1200)); 4]);
        let mut out = Vec::new();
        q.messages(64, &mut out);
        assert!(out.iter().all(|m| m.len <= GSO_MAX_BYTES));
    }

    #[test]
    fn fill_stops_at_batch_and_advance_regroups_the_rest() {
        let mut q = queue(&[(1, 100); BATCH + 5]);
        assert_eq!(q.pending().len(), BATCH);
        q.advance(60);
        assert_eq!(shape(&q, 64), vec![(1, 4, Some(100))]);
        q.advance(4);
        assert!(!q.has_pending());
        assert!(q.buf()[..100].iter().all(|&b| b == 1));
    }
}
