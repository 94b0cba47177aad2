//! The receiving half of a session: packet-number bookkeeping for acks, and message
//! reassembly with exactly-once delivery.

use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::{EventSink, Session, MAX_OUTSTANDING_MESSAGES, MAX_RECEIVED_RANGES};
use crate::endpoint::{Class, Event, MessageId};
use crate::ranges::RangeSet;
use crate::wire::{self, DataFrame, Writer};

#[derive(Debug)]
pub(super) struct InMessage {
    pub(super) class: Class,
    /// The length the sender declared; every fragment must agree.
    pub(super) total_len: usize,
    /// The message so far, up to the end of the furthest fragment written. `total_len`
    /// bytes are reserved up front but not zero-filled: fragments mostly come in order
    /// and are appended, and only a gap (a later fragment first) is filled with zeros
    /// until its own fragment overwrites them.
    pub(super) buf: Vec<u8>,
    pub(super) received: RangeSet,
}

impl InMessage {
    /// Copy a fragment to `offset` (`offset + data.len() <= total_len`, as
    /// `wire::Frames` checks).
    fn write(&mut self, offset: usize, data: &[u8]) {
        debug_assert!(offset + data.len() <= self.total_len);
        if offset > self.buf.len() {
            self.buf.resize(offset, 0);
        }
        let overwrite = (self.buf.len() - offset).min(data.len());
        self.buf[offset..offset + overwrite].copy_from_slice(&data[..overwrite]);
        self.buf.extend_from_slice(&data[overwrite..]);
    }
}

impl Session {
    pub(super) fn record_received(&mut self, pn: u64, now: Instant) {
        if self.largest_received.is_none_or(|(l, _)| pn > l) {
            self.largest_received = Some((pn, now));
        }
        if pn == self.cum_ack {
            self.cum_ack += 1;
            if let Some(first) = self.received.first() {
                if first.start == self.cum_ack {
                    self.cum_ack = first.end;
                    self.received.remove(first);
                }
            }
        } else {
            self.received.insert(pn..pn + 1);
            while self.received.len() > MAX_RECEIVED_RANGES {
                if let Some(first) = self.received.first() {
                    self.received.remove(first);
                }
            }
        }
    }

    pub(super) fn on_stop_waiting(&mut self, least_unacked: u64) {
        // Never beyond what the peer could have sent (it cannot be ahead of our largest).
        let limit = self.largest_received.map_or(0, |(pn, _)| pn + 1);
        let least = least_unacked.min(limit);
        if least > self.cum_ack {
            self.cum_ack = least;
            self.received.remove_below(least);
            if let Some(first) = self.received.first() {
                if first.start == self.cum_ack {
                    self.cum_ack = first.end;
                    self.received.remove(first);
                }
            }
        }
    }

    /// Returns false on a protocol violation.
    pub(super) fn on_data_frame(&mut self, d: DataFrame<'_>, events: &mut dyn EventSink) -> bool {
        if self.finished.contains(d.message) {
            return true;
        }
        if d.total_len > self.config.max_message_size as u64 {
            return false;
        }
        if !self.incoming.contains_key(&d.message) {
            if self.incoming.len() >= MAX_OUTSTANDING_MESSAGES
                || self.finished.len() > MAX_OUTSTANDING_MESSAGES + 1
            {
                return false;
            }
            if d.offset == 0 && d.data.len() as u64 == d.total_len {
                // Whole message in one fragment: no reassembly buffer.
                self.deliver(d.message, d.class, Bytes::copy_from_slice(d.data), events);
                return true;
            }
            let total_len = d.total_len as usize;
            self.incoming_bytes += total_len;
            self.incoming.insert(
                d.message,
                InMessage {
                    class: d.class,
                    total_len,
                    buf: Vec::with_capacity(total_len),
                    received: RangeSet::new(),
                },
            );
        }
        let Some(m) = self.incoming.get_mut(&d.message) else { return true };
        if m.total_len as u64 != d.total_len || m.class != d.class {
            return false;
        }
        m.write(d.offset as usize, d.data);
        m.received.insert(d.offset..d.offset + d.data.len() as u64);
        if m.received.contains_range(0..d.total_len) {
            if let Some(m) = self.incoming.remove(&d.message) {
                debug_assert_eq!(m.buf.len(), m.total_len);
                self.incoming_bytes -= m.total_len;
                self.deliver(d.message, m.class, Bytes::from(m.buf), events);
            }
        }
        true
    }

    pub(super) fn deliver(&mut self, message: u64, class: Class, data: Bytes, events: &mut dyn EventSink) {
        self.finished.insert(message..message + 1);
        self.stats.messages_delivered += 1;
        self.stats.payload_bytes_delivered += data.len() as u64;
        events.push(Event::Message { session: self.id(), class, data });
    }

    pub(super) fn on_abandon_frame(&mut self, message: u64, events: &mut dyn EventSink) {
        if self.finished.contains(message) {
            return;
        }
        if let Some(m) = self.incoming.remove(&message) {
            self.incoming_bytes -= m.total_len;
        }
        self.finished.insert(message..message + 1);
        self.stats.messages_abandoned_received += 1;
        events.push(Event::PeerAbandoned { session: self.id(), message: MessageId(message) });
    }

    pub(super) fn write_ack(&mut self, now: Instant, w: &mut Writer<'_>) {
        let delay_us =
            self.largest_received.map_or(0, |(_, t)| now.saturating_duration_since(t).as_micros() as u64);
        // Newest ranges matter most; send at most MAX_ACK_RANGES of them.
        let skip = self.received.len().saturating_sub(wire::MAX_ACK_RANGES);
        let ranges: SmallVec<[std::ops::Range<u64>; 8]> = self.received.iter().skip(skip).collect();
        let mut ranges = &ranges[..];
        while w.remaining() < wire::ack_frame_len(self.cum_ack, delay_us, ranges) + 64 && !ranges.is_empty() {
            ranges = &ranges[1..];
        }
        wire::encode_ack(w, self.cum_ack, delay_us, ranges);
        self.ack_eliciting_unacked = 0;
        self.ack_deadline = None;
        self.ack_now = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_in_any_order_reassemble_exactly() {
        let message: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        // In order, a gap filled later, an overlapping repeat, and the tail first.
        let orders: [&[(usize, usize)]; 3] = [
            &[(0, 300), (300, 600), (600, 1000)],
            &[(600, 1000), (0, 300), (300, 600)],
            &[(0, 400), (700, 1000), (300, 800), (350, 360)],
        ];
        for order in orders {
            let mut m = InMessage {
                class: Class::Stream,
                total_len: message.len(),
                buf: Vec::with_capacity(message.len()),
                received: RangeSet::new(),
            };
            for &(start, end) in order {
                m.write(start, &message[start..end]);
            }
            assert_eq!(m.buf, message, "{order:?}");
        }
    }
}
