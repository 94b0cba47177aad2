//! The secure half of a session: the Noise handshake messages it sends and answers, and
//! packet protection (`crypto::keys`) on the way in and out.
//!
//! ```text
//! IK  initiator                      responder
//!     Syn(id_i, msg1)       ──────▶  reads msg1 (admission first), writes msg2 = [id_r]
//!                           ◀──────  SynAck(msg2)          both have keys: Established
//! XX  Syn(id_i, msg1)       ──────▶  writes msg2 = [id_r]  (Accepting: half-open)
//!                           ◀──────  SynAck(msg2)
//!     Finish(msg3)          ──────▶  reads msg3: Established, answers with a PING
//!     (resent until anything authenticated comes back)
//! ```
//! Lost Syns are resent (the same bytes; the responder answers a repeat with the SynAck it
//! kept). Until a session has keys, nothing but handshake packets leave it.

use std::time::Instant;

use super::{EventSink, Received, Session, State, HANDSHAKE_RETRY};
use crate::crypto::aead::TAG_LEN;
use crate::crypto::handshake::{Handshake, SplitKeys};
use crate::crypto::keys::{OpenError, SessionKeys};
use crate::endpoint::Event;
use crate::wire::{self, Header, PacketType, SynBody, Writer, HEADER_LEN};

/// Why a handshake packet was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeRejected {
    /// Not expected in this state (late duplicate, or not ours): ignored.
    Unexpected,
    /// The Noise message failed (forged, corrupted, wrong key or psk).
    Failed,
}

impl Session {
    /// The initiator's first message is written; start sending Syns.
    pub(crate) fn start_initiator(&mut self, now: Instant, handshake: Handshake) {
        self.handshake = Some(Box::new(handshake));
        self.state = State::Connecting;
        self.next_syn = Some(now);
        self.locally_opened = true;
    }

    /// The endpoint read the initiator's msg1 and wrote msg2 (`syn_ack`): finish the
    /// handshake if the pattern is done (IK), or wait for msg3 (XX).
    pub(crate) fn start_responder(
        &mut self,
        now: Instant,
        header: &Header,
        initiator_id: u32,
        handshake: Handshake,
        events: &mut dyn EventSink,
    ) {
        self.peer_id = initiator_id;
        self.next_syn = None;
        self.syn_ack_message = handshake.last_written().to_vec();
        self.syn_ack_pending = true;
        self.last_recv = now;
        self.timestamp_diff = Some(self.timestamp_us(now).wrapping_sub(header.timestamp_us));
        if handshake.is_finished() {
            self.establish(now, handshake, events);
        } else {
            self.handshake = Some(Box::new(handshake));
            self.state = State::Accepting;
        }
    }

    /// Responder, XX: the handshake is half done and holds state for the peer.
    pub(crate) fn is_half_open(&self) -> bool {
        self.state == State::Accepting
    }

    fn establish(&mut self, now: Instant, handshake: Handshake, events: &mut dyn EventSink) {
        self.peer_node = handshake.remote_static();
        let keys = match handshake.split() {
            Ok(SplitKeys { send, recv }) => SessionKeys::new(now, &send, &recv, self.config.rekey),
            Err(_) => {
                // Unreachable by construction (callers check is_finished); fail closed.
                self.state = State::Closed;
                return;
            }
        };
        self.keys = Some(keys);
        self.state = State::Established;
        self.last_recv = now;
        let (session, remote) = (self.id(), self.remote);
        events.push(if self.locally_opened {
            Event::Connected { session, remote }
        } else {
            Event::Accepted { session, remote }
        });
    }

    /// The responder's SynAck (msg2) arrived at the initiator.
    pub(crate) fn handle_syn_ack(
        &mut self,
        now: Instant,
        header: &Header,
        noise: &[u8],
        events: &mut dyn EventSink,
    ) -> Result<(), HandshakeRejected> {
        if self.state != State::Connecting {
            return Err(HandshakeRejected::Unexpected);
        }
        let Some(hs) = self.handshake.as_mut() else { return Err(HandshakeRejected::Unexpected) };
        // A failed read leaves snow's state as it was (it restores its checkpoint), so a
        // forged SynAck cannot end a handshake in progress.
        let payload = hs.read(noise).map_err(|_| HandshakeRejected::Failed)?;
        let peer_id = match <[u8; 4]>::try_from(payload.as_slice()) {
            Ok(b) if u32::from_be_bytes(b) != 0 => u32::from_be_bytes(b),
            _ => return Err(HandshakeRejected::Failed),
        };
        if !hs.is_finished() {
            // XX: our third message carries our static key.
            match hs.write(&[]) {
                Ok(m) => self.finish_message = Some(m.to_vec()),
                Err(_) => return Err(HandshakeRejected::Failed),
            }
            self.next_finish = Some(now);
        }
        let Some(hs) = self.handshake.take() else { return Err(HandshakeRejected::Unexpected) };
        self.peer_id = peer_id;
        self.next_syn = None;
        self.on_timestamps(now, header);
        // The handshake round trip is the first RTT sample (Karn: only if no retry).
        if self.syn_backoff == 0 {
            self.rtt.update(now.saturating_duration_since(self.created), std::time::Duration::ZERO);
        }
        self.establish(now, *hs, events);
        Ok(())
    }

    /// XX msg3 arrived at the responder.
    pub(crate) fn handle_finish(
        &mut self,
        now: Instant,
        noise: &[u8],
        events: &mut dyn EventSink,
    ) -> Result<(), HandshakeRejected> {
        match self.state {
            State::Accepting => {}
            State::Established => {
                // Our answer to the first Finish was lost: confirm again.
                self.ping_pending = true;
                return Err(HandshakeRejected::Unexpected);
            }
            _ => return Err(HandshakeRejected::Unexpected),
        }
        let Some(hs) = self.handshake.as_mut() else { return Err(HandshakeRejected::Unexpected) };
        hs.read(noise).map_err(|_| HandshakeRejected::Failed)?;
        if !hs.is_finished() {
            return Err(HandshakeRejected::Failed);
        }
        let Some(hs) = self.handshake.take() else { return Err(HandshakeRejected::Unexpected) };
        self.syn_ack_pending = false;
        self.establish(now, *hs, events);
        // Tell the initiator its Finish arrived (any authenticated packet does).
        self.ping_pending = true;
        Ok(())
    }

    /// A Cookie challenge: repeat the Syn with it, now.
    pub(crate) fn handle_cookie(&mut self, now: Instant, cookie: &[u8]) {
        if self.state == State::Connecting && cookie.len() <= wire::MAX_COOKIE_LEN {
            self.cookie = Some(cookie.to_vec());
            self.next_syn = Some(now);
        }
    }

    /// A repeated Syn: our SynAck was lost.
    pub(crate) fn handle_duplicate_syn(&mut self, now: Instant) {
        if matches!(self.state, State::Accepting | State::Established) && !self.syn_ack_message.is_empty() {
            self.last_recv = self.last_recv.max(now);
            self.syn_ack_pending = true;
        }
    }

    /// Decrypt and process a Data packet. `packet` is the whole datagram (header included);
    /// it is decrypted in place.
    pub(crate) fn handle_data(
        &mut self,
        now: Instant,
        header: &Header,
        packet: &mut [u8],
        events: &mut dyn EventSink,
    ) -> Received {
        let discard_after = self.rtt.rto(super::GRANULARITY, self.config.min_rto) * 3;
        let expected = self.largest_received.map_or(0, |(pn, _)| pn + 1);
        let pn = wire::expand_packet_number(header.packet_number, expected);
        let Some(keys) = self.keys.as_mut() else { return Received::NoKeys };
        let body_len = match keys.open(now, pn, packet, discard_after) {
            Ok(n) => n,
            Err(OpenError::Replay) => {
                self.stats.replays_rejected += 1;
                return Received::Replay;
            }
            Err(OpenError::Auth | OpenError::Short) => {
                self.stats.auth_failures += 1;
                if keys.integrity_limit_reached() {
                    self.fail(crate::endpoint::CloseReason::ProtocolViolation, events);
                }
                return Received::Unauthenticated;
            }
        };
        // Anything authenticated from the responder confirms our Finish.
        self.finish_message = None;
        self.next_finish = None;
        self.handle_packet(now, header, pn, &packet[HEADER_LEN..HEADER_LEN + body_len], events)
    }

    /// Handshake packets owed now, if any: SynAck repeat, or Finish (with retry).
    pub(super) fn poll_handshake(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.state == State::Connecting {
            return self.poll_syn(now, buf);
        }
        if self.syn_ack_pending {
            self.syn_ack_pending = false;
            let msg = std::mem::take(&mut self.syn_ack_message);
            let n = self.write_handshake_packet(now, buf, PacketType::SynAck, &msg);
            self.syn_ack_message = msg;
            return n;
        }
        if self.next_finish.is_some_and(|t| now >= t) {
            let msg = self.finish_message.take()?;
            self.next_finish = Some(now + HANDSHAKE_RETRY * (1 << self.syn_backoff.min(5)));
            self.syn_backoff += 1;
            let n = self.write_handshake_packet(now, buf, PacketType::Finish, &msg);
            self.finish_message = Some(msg);
            return n;
        }
        None
    }

    fn poll_syn(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let due = self.next_syn?;
        if now < due {
            return None;
        }
        self.next_syn = Some(now + HANDSHAKE_RETRY * (1 << self.syn_backoff.min(5)));
        if self.stats.packets_sent > 0 {
            self.syn_backoff += 1;
        }
        let hs = self.handshake.as_ref()?;
        let body = SynBody {
            initiator_id: self.local_id,
            pattern: hs.pattern() as u8,
            cookie: self.cookie.as_deref(),
            noise: hs.last_written(),
        };
        if HEADER_LEN + body.encoded_len() > buf.len() {
            return None;
        }
        self.stats.packets_sent += 1;
        let header = self.handshake_header(now, PacketType::Syn, 0);
        header.encode(buf);
        let mut w = Writer::new(buf, HEADER_LEN);
        body.encode(&mut w);
        Some(w.pos())
    }

    fn handshake_header(&self, now: Instant, packet_type: PacketType, session_id: u32) -> Header {
        Header {
            packet_type,
            flags: 0,
            session_id,
            timestamp_us: self.timestamp_us(now),
            timestamp_diff_us: 0,
            window: 0,
            packet_number: 0,
        }
    }

    fn write_handshake_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        packet_type: PacketType,
        noise: &[u8],
    ) -> Option<usize> {
        if HEADER_LEN + noise.len() > buf.len() {
            return None;
        }
        self.stats.packets_sent += 1;
        self.handshake_header(now, packet_type, self.peer_id).encode(buf);
        let mut w = Writer::new(buf, HEADER_LEN);
        w.bytes(noise);
        Some(w.pos())
    }

    /// Seal a Data packet built in `buf[..len]` (header included) with packet number `pn`.
    pub(super) fn seal(&mut self, now: Instant, pn: u64, buf: &mut [u8], len: usize) -> Option<usize> {
        let largest_acked = self.largest_acked;
        let keys = self.keys.as_mut()?;
        keys.maybe_update_send_key(now, largest_acked);
        Some(keys.seal(pn, buf, len))
    }

    /// Room for frames in a Data packet of at most `buf_len` bytes.
    pub(super) fn frame_room(&self, buf_len: usize) -> usize {
        self.mds().min(buf_len).saturating_sub(TAG_LEN)
    }
}
