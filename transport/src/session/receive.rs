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
    pub(super) buf: Vec<u8>,
    pub(super) received: RangeSet,
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
            self.incoming_bytes += d.total_len as usize;
            self.incoming.insert(
                d.message,
                InMessage { class: d.class, buf: vec![0; d.total_len as usize], received: RangeSet::new() },
            );
        }
        let Some(m) = self.incoming.get_mut(&d.message) else { return true };
        if m.buf.len() as u64 != d.total_len || m.class != d.class {
            return false;
        }
        let start = d.offset as usize;
        m.buf[start..start + d.data.len()].copy_from_slice(d.data);
        m.received.insert(d.offset..d.offset + d.data.len() as u64);
        if m.received.contains_range(0..d.total_len) {
            if let Some(m) = self.incoming.remove(&d.message) {
                self.incoming_bytes -= m.buf.len();
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
            self.incoming_bytes -= m.buf.len();
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
