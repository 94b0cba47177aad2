//! Wire format, in the spirit of uTP (BEP 29) with QUIC-style frames.
//!
//! ```text
//! header (24 bytes, big-endian):
//!   0      type (high 4 bits) | version (low 4 bits)      BEP 29 packs them the same way
//!   1      flags (bit 0: timestamp_diff is valid; bit 1: key phase, see crypto::keys)
//!   2..6   session id: chosen by the *receiver* of this packet (WireGuard/QUIC style)
//!   6..10  timestamp_us: sender's clock when the packet left, µs, wrapping
//!   10..14 timestamp_diff_us: our clock minus the peer's timestamp of the last packet we
//!          got from it, µs, wrapping (BEP 29: the one-way delay sample, offset by the
//!          unknown clock difference)
//!   14..18 wnd: receive window, bytes the sender of this packet can still take
//!   18..22 packet number, low 32 bits (expanded against the largest seen, RFC 9000 A.3)
//!   22..24 reserved, zero
//! body: type-specific (see `PacketType`): Syn, SynAck and Finish carry Noise handshake
//! messages, Cookie an address-validation cookie. Data packets carry frames, encrypted
//! with ChaCha20-Poly1305 (the header is the associated data; a 16-byte tag follows):
//!   ACK          0x01 cum_ack:v ack_delay_us:v count:v (gap:v len:v)*count
//!   DATA         0x02 message:v class:u8 total_len:v offset:v len:v bytes[len]
//!   ABANDON      0x03 message:v
//!   STOP_WAITING 0x04 least_unacked:v
//!   PING         0x05
//!   CLOSE        0x06
//! v = QUIC variable-length integer (RFC 9000 §16), 1/2/4/8 bytes, values < 2^62.
//! ```
//! Every packet number is used once: a retransmission is new frames in a new packet
//! (as in QUIC), so acks never confuse an original with its copy. `cum_ack` says every
//! packet number below it is received *or* abandoned by the sender (STOP_WAITING, as in
//! gQUIC), which bounds the receiver's ack state.
//!
//! Decoding never panics: every read is bounds-checked and yields `DecodeError`.

use crate::endpoint::Class;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// The largest value a QUIC varint holds (RFC 9000 §16).
pub const VARINT_MAX: u64 = (1 << 62) - 1;
/// Ack frames carry at most this many selective-ack ranges; more would not fit one packet
/// with data and the oldest ranges matter least (the sender times them out anyway).
pub const MAX_ACK_RANGES: usize = 64;

pub const FLAG_TIMESTAMP_DIFF: u8 = 0x01;
/// Key phase of a Data packet (see `crypto::keys`; RFC 9001 §6 uses the same signal).
pub const FLAG_KEY_PHASE: u8 = 0x02;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Handshake initiation (header session id 0): body = [`SynBody`].
    Syn = 0,
    /// Handshake response (header session id = the initiator's): body = the second Noise
    /// message, whose encrypted payload is the responder's session id (4 bytes, BE).
    SynAck = 1,
    /// Encrypted frames: header (associated data) | ciphertext | 16-byte tag.
    Data = 2,
    /// Third handshake message of XX (header session id = the responder's): body = the
    /// Noise message.
    Finish = 3,
    /// Address-validation challenge from a responder under load (header session id = the
    /// initiator's): body = initiator id (varint) | cookie. The initiator repeats its Syn
    /// with the cookie attached.
    Cookie = 4,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub packet_type: PacketType,
    pub flags: u8,
    pub session_id: u32,
    pub timestamp_us: u32,
    pub timestamp_diff_us: u32,
    pub window: u32,
    pub packet_number: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet shorter than the header")]
    ShortHeader,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown packet type {0}")]
    PacketType(u8),
    #[error("unknown frame type {0:#x}")]
    FrameType(u8),
    #[error("truncated field")]
    Truncated,
    #[error("invalid field value")]
    Invalid,
}

impl Header {
    pub fn decode(buf: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::ShortHeader);
        }
        let version = buf[0] & 0x0f;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let packet_type = match buf[0] >> 4 {
            0 => PacketType::Syn,
            1 => PacketType::SynAck,
            2 => PacketType::Data,
            3 => PacketType::Finish,
            4 => PacketType::Cookie,
            t => return Err(DecodeError::PacketType(t)),
        };
        let u32_at = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let header = Header {
            packet_type,
            flags: buf[1],
            session_id: u32_at(2),
            timestamp_us: u32_at(6),
            timestamp_diff_us: u32_at(10),
            window: u32_at(14),
            packet_number: u32_at(18),
        };
        Ok((header, &buf[HEADER_LEN..]))
    }

    /// Write the header into `buf[..HEADER_LEN]`. `buf` must be at least that long.
    pub fn encode(&self, buf: &mut [u8]) {
        buf[0] = ((self.packet_type as u8) << 4) | VERSION;
        buf[1] = self.flags;
        buf[2..6].copy_from_slice(&self.session_id.to_be_bytes());
        buf[6..10].copy_from_slice(&self.timestamp_us.to_be_bytes());
        buf[10..14].copy_from_slice(&self.timestamp_diff_us.to_be_bytes());
        buf[14..18].copy_from_slice(&self.window.to_be_bytes());
        buf[18..22].copy_from_slice(&self.packet_number.to_be_bytes());
        buf[22..24].fill(0);
    }
}

/// Expand a 32-bit packet number to the full value closest to `expected`
/// (RFC 9000 Appendix A.3, with a 32-bit window).
pub fn expand_packet_number(truncated: u32, expected: u64) -> u64 {
    const WIN: u64 = 1 << 32;
    const HALF: u64 = WIN / 2;
    let candidate = (expected & !(WIN - 1)) | truncated as u64;
    if candidate + HALF <= expected && candidate < (1 << 62) - WIN {
        candidate + WIN
    } else if candidate > expected + HALF && candidate >= WIN {
        candidate - WIN
    } else {
        candidate
    }
}

// ---------------------------------------------------------------------------------------
// Variable-length integers (RFC 9000 §16)

pub fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// A cursor that writes into a fixed buffer. Callers check space with `remaining` first;
/// writing past the end is a bug in the caller, so it panics (never reachable from input).
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8], pos: usize) -> Self {
        Self { buf, pos }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn u8(&mut self, v: u8) {
        self.buf[self.pos] = v;
        self.pos += 1;
    }
    pub fn varint(&mut self, v: u64) {
        debug_assert!(v <= VARINT_MAX);
        let len = varint_len(v);
        let bytes = v.to_be_bytes();
        let out = &mut self.buf[self.pos..self.pos + len];
        out.copy_from_slice(&bytes[8 - len..]);
        out[0] |= match len {
            1 => 0x00,
            2 => 0x40,
            4 => 0x80,
            _ => 0xc0,
        };
        self.pos += len;
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
}

#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let first = *self.buf.first().ok_or(DecodeError::Truncated)?;
        let len = 1usize << (first >> 6);
        if self.buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        let mut v = (first & 0x3f) as u64;
        for &b in &self.buf[1..len] {
            v = (v << 8) | b as u64;
        }
        self.buf = &self.buf[len..];
        Ok(v)
    }
    pub fn bytes(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        if self.buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }
    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------------------------------
// Frames

const FRAME_ACK: u8 = 0x01;
const FRAME_DATA: u8 = 0x02;
const FRAME_ABANDON: u8 = 0x03;
const FRAME_STOP_WAITING: u8 = 0x04;
const FRAME_PING: u8 = 0x05;
const FRAME_CLOSE: u8 = 0x06;

/// An ack: every packet number below `cum_ack` is accounted for, plus `ranges` above it.
/// The ranges are kept encoded (validated at decode) so decoding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame<'a> {
    pub cum_ack: u64,
    pub ack_delay_us: u64,
    range_count: u64,
    encoded_ranges: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// Selective ranges, ascending, disjoint, all above `cum_ack`.
    pub fn ranges(&self) -> AckRanges<'a> {
        AckRanges { reader: Reader::new(self.encoded_ranges), left: self.range_count, prev_end: self.cum_ack }
    }
    /// The largest packet number this ack covers, if any.
    pub fn largest(&self) -> Option<u64> {
        self.ranges().last().map(|r| r.end - 1).or(self.cum_ack.checked_sub(1))
    }
}

#[derive(Debug, Clone)]
pub struct AckRanges<'a> {
    reader: Reader<'a>,
    left: u64,
    prev_end: u64,
}

impl Iterator for AckRanges<'_> {
    type Item = std::ops::Range<u64>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated in `decode_ack`, so these reads succeed.
        let gap = self.reader.varint().ok()?;
        let len = self.reader.varint().ok()?;
        let start = self.prev_end + gap;
        self.prev_end = start + len;
        Some(start..self.prev_end)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFrame<'a> {
    pub message: u64,
    pub class: Class,
    pub total_len: u64,
    pub offset: u64,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Ack(AckFrame<'a>),
    Data(DataFrame<'a>),
    Abandon { message: u64 },
    StopWaiting { least_unacked: u64 },
    Ping,
    Close,
}

impl Frame<'_> {
    /// Frames that oblige the receiver to ack (everything but acks, as in QUIC).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Ack(_))
    }
}

fn class_from_u8(v: u8) -> Result<Class, DecodeError> {
    match v {
        0 => Ok(Class::Control),
        1 => Ok(Class::Stream),
        2 => Ok(Class::Background),
        _ => Err(DecodeError::Invalid),
    }
}

/// Iterates over the frames of a data packet body. Stops at the first error.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    reader: Reader<'a>,
}

impl<'a> Frames<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self { reader: Reader::new(body) }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.is_empty() {
            return None;
        }
        let result = decode_frame(&mut self.reader);
        if result.is_err() {
            // Make the iterator fused after an error.
            self.reader = Reader::new(&[]);
        }
        Some(result)
    }
}

fn decode_frame<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, DecodeError> {
    match r.u8()? {
        FRAME_ACK => decode_ack(r).map(Frame::Ack),
        FRAME_DATA => {
            let message = r.varint()?;
            let class = class_from_u8(r.u8()?)?;
            let total_len = r.varint()?;
            let offset = r.varint()?;
            let len = r.varint()?;
            if offset.checked_add(len).is_none_or(|end| end > total_len) {
                return Err(DecodeError::Invalid);
            }
            let data = r.bytes(len)?;
            Ok(Frame::Data(DataFrame { message, class, total_len, offset, data }))
        }
        FRAME_ABANDON => Ok(Frame::Abandon { message: r.varint()? }),
        FRAME_STOP_WAITING => Ok(Frame::StopWaiting { least_unacked: r.varint()? }),
        FRAME_PING => Ok(Frame::Ping),
        FRAME_CLOSE => Ok(Frame::Close),
        t => Err(DecodeError::FrameType(t)),
    }
}

fn decode_ack<'a>(r: &mut Reader<'a>) -> Result<AckFrame<'a>, DecodeError> {
    let cum_ack = r.varint()?;
    let ack_delay_us = r.varint()?;
    let range_count = r.varint()?;
    if range_count > MAX_ACK_RANGES as u64 {
        return Err(DecodeError::Invalid);
    }
    let before = r.clone();
    let mut prev_end = cum_ack;
    for _ in 0..range_count {
        let gap = r.varint()?;
        let len = r.varint()?;
        // Packet `cum_ack` itself is missing (else cum_ack would be larger), and ranges are
        // disjoint and non-adjacent: so gap ≥ 1. Ranges are non-empty and stay < 2^62.
        if gap == 0 || len == 0 {
            return Err(DecodeError::Invalid);
        }
        let start = prev_end.checked_add(gap).ok_or(DecodeError::Invalid)?;
        prev_end = start.checked_add(len).filter(|&e| e <= VARINT_MAX).ok_or(DecodeError::Invalid)?;
    }
    let used = before.buf.len() - r.buf.len();
    Ok(AckFrame { cum_ack, ack_delay_us, range_count, encoded_ranges: &before.buf[..used] })
}

/// Bytes an ack frame with these ranges takes.
pub fn ack_frame_len(cum_ack: u64, ack_delay_us: u64, ranges: &[std::ops::Range<u64>]) -> usize {
    let mut len = 1 + varint_len(cum_ack) + varint_len(ack_delay_us) + varint_len(ranges.len() as u64);
    let mut prev = cum_ack;
    for r in ranges {
        len += varint_len(r.start - prev) + varint_len(r.end - r.start);
        prev = r.end;
    }
    len
}

/// Write an ack frame. `ranges` ascending, disjoint, non-adjacent, above `cum_ack`, at most
/// [`MAX_ACK_RANGES`]. The caller checked space with [`ack_frame_len`].
pub fn encode_ack(w: &mut Writer<'_>, cum_ack: u64, ack_delay_us: u64, ranges: &[std::ops::Range<u64>]) {
    debug_assert!(ranges.len() <= MAX_ACK_RANGES);
    w.u8(FRAME_ACK);
    w.varint(cum_ack);
    w.varint(ack_delay_us.min(VARINT_MAX));
    w.varint(ranges.len() as u64);
    let mut prev = cum_ack;
    for r in ranges {
        w.varint(r.start - prev);
        w.varint(r.end - r.start);
        prev = r.end;
    }
}

/// Bytes of a data frame header (everything but the payload).
pub fn data_frame_overhead(message: u64, total_len: u64, offset: u64, len: u64) -> usize {
    1 + varint_len(message) + 1 + varint_len(total_len) + varint_len(offset) + varint_len(len)
}

pub fn encode_data(w: &mut Writer<'_>, message: u64, class: Class, total_len: u64, offset: u64, data: &[u8]) {
    w.u8(FRAME_DATA);
    w.varint(message);
    w.u8(class as u8);
    w.varint(total_len);
    w.varint(offset);
    w.varint(data.len() as u64);
    w.bytes(data);
}

pub fn abandon_frame_len(message: u64) -> usize {
    1 + varint_len(message)
}
pub fn encode_abandon(w: &mut Writer<'_>, message: u64) {
    w.u8(FRAME_ABANDON);
    w.varint(message);
}
pub fn stop_waiting_frame_len(least_unacked: u64) -> usize {
    1 + varint_len(least_unacked)
}
pub fn encode_stop_waiting(w: &mut Writer<'_>, least_unacked: u64) {
    w.u8(FRAME_STOP_WAITING);
    w.varint(least_unacked);
}
pub fn encode_ping(w: &mut Writer<'_>) {
    w.u8(FRAME_PING);
}
pub fn encode_close(w: &mut Writer<'_>) {
    w.u8(FRAME_CLOSE);
}

/// Body of a Syn packet:
/// `initiator_id:v pattern:u8 cookie_len:u8 cookie[cookie_len] noise[..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynBody<'a> {
    /// The session id the initiator chose (the responder puts it in its headers).
    pub initiator_id: u32,
    /// Noise pattern of the first message (`crypto::handshake::Pattern` as u8).
    pub pattern: u8,
    /// Cookie from a Cookie challenge, if the responder asked for one.
    pub cookie: Option<&'a [u8]>,
    /// The first Noise handshake message.
    pub noise: &'a [u8],
}

/// Longest cookie a Syn may carry (ours are 16 bytes).
pub const MAX_COOKIE_LEN: usize = 32;

impl<'a> SynBody<'a> {
    pub fn decode(body: &'a [u8]) -> Result<SynBody<'a>, DecodeError> {
        let mut r = Reader::new(body);
        let initiator_id = u32::try_from(r.varint()?).map_err(|_| DecodeError::Invalid)?;
        if initiator_id == 0 {
            return Err(DecodeError::Invalid);
        }
        let pattern = r.u8()?;
        let cookie_len = r.u8()? as usize;
        if cookie_len > MAX_COOKIE_LEN {
            return Err(DecodeError::Invalid);
        }
        let cookie = r.bytes(cookie_len as u64)?;
        let noise = r.rest();
        if noise.is_empty() {
            return Err(DecodeError::Truncated);
        }
        Ok(SynBody { initiator_id, pattern, cookie: (cookie_len > 0).then_some(cookie), noise })
    }

    /// Bytes `encode` writes.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.initiator_id as u64) + 2 + self.cookie.map_or(0, <[u8]>::len) + self.noise.len()
    }

    /// `w` must have `encoded_len()` bytes left; the cookie must be at most [`MAX_COOKIE_LEN`].
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.varint(self.initiator_id as u64);
        w.u8(self.pattern);
        let cookie = self.cookie.unwrap_or(&[]);
        w.u8(cookie.len() as u8);
        w.bytes(cookie);
        w.bytes(self.noise);
    }
}

/// Body of a Cookie packet: `initiator_id:v cookie[..]`.
pub fn decode_cookie_body(body: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let mut r = Reader::new(body);
    let id = u32::try_from(r.varint()?).map_err(|_| DecodeError::Invalid)?;
    let cookie = r.rest();
    if cookie.is_empty() || cookie.len() > MAX_COOKIE_LEN {
        return Err(DecodeError::Invalid);
    }
    Ok((id, cookie))
}

pub fn encode_cookie_body(w: &mut Writer<'_>, initiator_id: u32, cookie: &[u8]) {
    w.varint(initiator_id as u64);
    w.bytes(cookie);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = Header> {
        (0u8..5, any::<u8>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(t, flags, session_id, timestamp_us, timestamp_diff_us, window, packet_number)| Header {
                packet_type: [
                    PacketType::Syn,
                    PacketType::SynAck,
                    PacketType::Data,
                    PacketType::Finish,
                    PacketType::Cookie,
                ][t as usize],
                flags,
                session_id,
                timestamp_us,
                timestamp_diff_us,
                window,
                packet_number,
            },
        )
    }

    #[derive(Debug, Clone)]
    enum OwnedFrame {
        Ack { cum_ack: u64, delay: u64, ranges: Vec<std::ops::Range<u64>> },
        Data { message: u64, class: Class, total_len: u64, offset: u64, data: Vec<u8> },
        Abandon(u64),
        StopWaiting(u64),
        Ping,
        Close,
    }

    fn arb_frame() -> impl Strategy<Value = OwnedFrame> {
        let ack = (
            0u64..1 << 40,
            0u64..1 << 30,
            proptest::collection::vec((1u64..1000, 1u64..1000), 0..MAX_ACK_RANGES),
        )
            .prop_map(|(cum_ack, delay, gaps)| {
                let mut prev = cum_ack;
                let ranges = gaps
                    .into_iter()
                    .map(|(g, l)| {
                        let r = prev + g..prev + g + l;
                        prev = r.end;
                        r
                    })
                    .collect();
                OwnedFrame::Ack { cum_ack, delay, ranges }
            });
        let data =
            (any::<u64>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..300), 0u64..1 << 30, 0u64..1000)
                .prop_map(|(m, c, data, offset, extra)| OwnedFrame::Data {
                    message: m & VARINT_MAX,
                    class: class_from_u8(c).unwrap(),
                    total_len: offset + data.len() as u64 + extra,
                    offset,
                    data,
                });
        prop_oneof![
            ack,
            data,
            any::<u64>().prop_map(|m| OwnedFrame::Abandon(m & VARINT_MAX)),
            any::<u64>().prop_map(|m| OwnedFrame::StopWaiting(m & VARINT_MAX)),
            Just(OwnedFrame::Ping),
            Just(OwnedFrame::Close),
        ]
    }

    fn encode_frames(frames: &[OwnedFrame]) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut w = Writer::new(&mut buf, 0);
        for f in frames {
            match f {
                OwnedFrame::Ack { cum_ack, delay, ranges } => {
                    let before = w.pos();
                    encode_ack(&mut w, *cum_ack, *delay, ranges);
                    assert_eq!(w.pos() - before, ack_frame_len(*cum_ack, *delay, ranges));
                }
                OwnedFrame::Data { message, class, total_len, offset, data } => {
                    let before = w.pos();
                    encode_data(&mut w, *message, *class, *total_len, *offset, data);
                    assert_eq!(
                        w.pos() - before,
                        data_frame_overhead(*message, *total_len, *offset, data.len() as u64) + data.len()
                    );
                }
                OwnedFrame::Abandon(m) => encode_abandon(&mut w, *m),
                OwnedFrame::StopWaiting(m) => encode_stop_waiting(&mut w, *m),
                OwnedFrame::Ping => encode_ping(&mut w),
                OwnedFrame::Close => encode_close(&mut w),
            }
        }
        let n = w.pos();
        buf.truncate(n);
        buf
    }

    fn same(owned: &OwnedFrame, f: &Frame<'_>) -> bool {
        match (owned, f) {
            (OwnedFrame::Ack { cum_ack, delay, ranges }, Frame::Ack(a)) => {
                a.cum_ack == *cum_ack && a.ack_delay_us == *delay && a.ranges().collect::<Vec<_>>() == *ranges
            }
            (OwnedFrame::Data { message, class, total_len, offset, data }, Frame::Data(d)) => {
                d.message == *message
                    && d.class == *class
                    && d.total_len == *total_len
                    && d.offset == *offset
                    && d.data == data.as_slice()
            }
            (OwnedFrame::Abandon(m), Frame::Abandon { message }) => m == message,
            (OwnedFrame::StopWaiting(m), Frame::StopWaiting { least_unacked }) => m == least_unacked,
            (OwnedFrame::Ping, Frame::Ping) | (OwnedFrame::Close, Frame::Close) => true,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn header_round_trip(h in arb_header(), body in proptest::collection::vec(any::<u8>(), 0..50)) {
            let mut buf = vec![0u8; HEADER_LEN];
            h.encode(&mut buf);
            buf.extend_from_slice(&body);
            let (back, rest) = Header::decode(&buf).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(rest, body.as_slice());
        }

        #[test]
        fn frames_round_trip(frames in proptest::collection::vec(arb_frame(), 0..8)) {
            let buf = encode_frames(&frames);
            let decoded: Vec<_> = Frames::new(&buf).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded.len(), frames.len());
            for (o, f) in frames.iter().zip(&decoded) {
                prop_assert!(same(o, f), "{:?} != {:?}", o, f);
            }
        }

        #[test]
        fn truncated_frames_error_not_panic(frames in proptest::collection::vec(arb_frame(), 1..6), cut in any::<prop::sample::Index>()) {
            let buf = encode_frames(&frames);
            let cut = cut.index(buf.len());
            // Every prefix decodes to frames or an error, never a panic; a strict prefix
            // of the last frame can never decode to the same frames.
            let decoded: Result<Vec<_>, _> = Frames::new(&buf[..cut]).collect();
            if let Ok(d) = decoded {
                prop_assert!(d.len() < frames.len() || cut == buf.len());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok((h, body)) = Header::decode(&bytes) {
                let _ = h;
                for f in Frames::new(body) {
                    if let Ok(Frame::Ack(a)) = f { let _ = a.ranges().count(); let _ = a.largest(); }
                }
                let _ = SynBody::decode(body);
                let _ = decode_cookie_body(body);
            }
            for f in Frames::new(&bytes) {
                if let Ok(Frame::Ack(a)) = f { let _ = a.ranges().count(); }
            }
        }

        #[test]
        fn varint_round_trip(v in 0u64..=VARINT_MAX) {
            let mut buf = [0u8; 8];
            let mut w = Writer::new(&mut buf, 0);
            w.varint(v);
            prop_assert_eq!(w.pos(), varint_len(v));
            let n = w.pos();
            prop_assert_eq!(Reader::new(&buf[..n]).varint().unwrap(), v);
        }

        #[test]
        fn packet_number_expansion(pn in 0u64..1 << 50, delta in -(1i64 << 30)..(1i64 << 30)) {
            let expected = (pn as i64 + delta).max(0) as u64;
            prop_assert_eq!(expand_packet_number(pn as u32, expected), pn);
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(Header::decode(&[0x21; 10]), Err(DecodeError::ShortHeader));
        let mut h = [0u8; HEADER_LEN];
        h[0] = 0x22; // version 2
        assert_eq!(Header::decode(&h).unwrap_err(), DecodeError::Version(2));
        h[0] = 0x71;
        assert_eq!(Header::decode(&h).unwrap_err(), DecodeError::PacketType(7));
        assert_eq!(Frames::new(&[0x7f]).next(), Some(Err(DecodeError::FrameType(0x7f))));
        // Data frame whose offset+len exceeds total_len.
        assert_eq!(Frames::new(&[FRAME_DATA, 0, 1, 2, 1, 2, 9, 9]).next(), Some(Err(DecodeError::Invalid)));
        // Bad class.
        assert_eq!(Frames::new(&[FRAME_DATA, 0, 9, 2, 0, 2, 9, 9]).next(), Some(Err(DecodeError::Invalid)));
        // Ack with more ranges than allowed.
        assert_eq!(Frames::new(&[FRAME_ACK, 0, 0, 0x40, 200]).next(), Some(Err(DecodeError::Invalid)));
        // Ack range of zero length.
        assert_eq!(Frames::new(&[FRAME_ACK, 5, 0, 1, 1, 0]).next(), Some(Err(DecodeError::Invalid)));
        // Ack overflowing 2^62.
        let mut b = vec![
            FRAME_ACK, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 1, 0xc0, 0, 0, 0, 0, 0, 0, 1, 1,
        ];
        assert_eq!(Frames::new(&b).next(), Some(Err(DecodeError::Invalid)));
        b.truncate(3);
        assert_eq!(Frames::new(&b).next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(SynBody::decode(&[]), Err(DecodeError::Truncated));
        // Initiator id 0 is reserved for "none".
        assert_eq!(SynBody::decode(&[0, 0, 0, 1]), Err(DecodeError::Invalid));
        // An id that does not fit 32 bits.
        assert_eq!(SynBody::decode(&[0xc0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]), Err(DecodeError::Invalid));
        // Cookie longer than allowed, cookie longer than the body, no Noise message.
        assert_eq!(SynBody::decode(&[5, 0, 33]), Err(DecodeError::Invalid));
        assert_eq!(SynBody::decode(&[5, 0, 4, 1, 2]), Err(DecodeError::Truncated));
        assert_eq!(SynBody::decode(&[5, 1, 2, 9]), Err(DecodeError::Truncated));
        assert_eq!(SynBody::decode(&[5, 1, 2, 9, 9]), Err(DecodeError::Truncated));
        let ok = SynBody::decode(&[5, 1, 2, 9, 9, 7]).unwrap();
        assert_eq!(ok, SynBody { initiator_id: 5, pattern: 1, cookie: Some(&[9, 9]), noise: &[7] });
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf, 0);
        ok.encode(&mut w);
        assert_eq!(w.pos(), ok.encoded_len());
        assert_eq!(SynBody::decode(&buf[..ok.encoded_len()]), Ok(ok));
        assert_eq!(decode_cookie_body(&[5]), Err(DecodeError::Invalid));
        assert_eq!(decode_cookie_body(&[5, 1, 2]), Ok((5, &[1u8, 2][..])));
        assert_eq!(decode_cookie_body(&[0x40]), Err(DecodeError::Truncated));
    }
}
