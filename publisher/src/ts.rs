//! The MPEG-2 transport stream packet layer: packet header, adaptation field, PCR, PES
//! header timestamps, and keyframe detection on a video PID.
//!
//! Everything here works on one 188-byte packet at a time, never allocates, and never
//! panics: a field that does not fit in the packet, or that the syntax forbids, reads as
//! absent. Section numbers refer to ISO/IEC 13818-1 (ITU-T H.222.0).

/// Bytes in a transport stream packet (§2.4.3.2, `transport_packet()`). 192-byte M2TS
/// (Blu-ray, a 4-byte timestamp before each packet) and 204-byte packets (with Reed-Solomon
/// parity) are not accepted: every muxer rill expects (ffmpeg, OBS, SRT gateways) writes 188.
pub const PACKET_LEN: usize = 188;

/// First byte of every packet (§2.4.3.3, `sync_byte`).
pub const SYNC_BYTE: u8 = 0x47;

/// PID of the program association table (§2.4.3.3, Table 2-3).
pub const PAT_PID: u16 = 0x0000;

/// PID of null packets, whose continuity counter is undefined (§2.4.3.3, Table 2-3).
pub const NULL_PID: u16 = 0x1FFF;

/// PTS, DTS and the PCR base are 33-bit counters that wrap (§2.4.3.7, §2.4.3.5).
pub const TIMESTAMP_MODULUS: u64 = 1 << 33;

/// The full PCR (base × 300 + extension, 27 MHz) wraps when the base does (§2.4.2.2).
pub const PCR_MODULUS: u64 = TIMESTAMP_MODULUS * 300;

/// PCR ticks per second: the 27 MHz system clock (§2.4.2.1).
pub const PCR_HZ: u64 = 27_000_000;

/// PTS/DTS ticks per second: system clock / 300 (§2.4.3.7).
pub const PTS_HZ: u64 = 90_000;

/// One transport stream packet.
pub type Packet = [u8; PACKET_LEN];

/// The 4-byte packet header (§2.4.3.2, Table 2-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// `transport_error_indicator`: a demodulator or gateway marked the packet as damaged.
    pub transport_error: bool,
    /// `payload_unit_start_indicator`: a PES packet or a PSI section starts here.
    pub payload_unit_start: bool,
    pub pid: u16,
    /// `transport_scrambling_control`: 0 means the payload is in the clear.
    pub scrambling: u8,
    /// `adaptation_field_control`: bit 1 adaptation field present, bit 0 payload present.
    pub adaptation_field_control: u8,
    pub continuity_counter: u8,
}

impl PacketHeader {
    /// Reads the header. The sync byte is not checked here; the framer guarantees it.
    pub fn parse(packet: &Packet) -> PacketHeader {
        PacketHeader {
            transport_error: packet[1] & 0x80 != 0,
            payload_unit_start: packet[1] & 0x40 != 0,
            pid: (u16::from(packet[1] & 0x1F) << 8) | u16::from(packet[2]),
            scrambling: packet[3] >> 6,
            adaptation_field_control: (packet[3] >> 4) & 0x03,
            continuity_counter: packet[3] & 0x0F,
        }
    }

    /// The packet carries payload bytes, so its continuity counter counts (§2.4.3.3:
    /// "shall not be incremented when the adaptation_field_control of the packet equals
    /// '00' or '10'").
    pub fn has_payload(&self) -> bool {
        self.adaptation_field_control & 0x01 != 0
    }
}

/// Where the adaptation field and the payload sit in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Offset and length of the adaptation field after its length byte.
    adaptation: Option<(usize, usize)>,
    /// Offset of the payload; it runs to the end of the packet.
    payload: Option<usize>,
}

/// Splits a packet into adaptation field and payload, validating `adaptation_field_length`
/// (§2.4.3.5: at most 182 when a payload follows, 183 when none does). `None` for a packet
/// whose layout is invalid or reserved (`adaptation_field_control` '00': "decoders shall
/// discard" it, §2.4.3.3).
fn layout(packet: &Packet) -> Option<Layout> {
    const AF_LENGTH_AT: usize = 4;
    const AF_BODY_AT: usize = 5;
    match (packet[3] >> 4) & 0x03 {
        0b01 => Some(Layout { adaptation: None, payload: Some(AF_LENGTH_AT) }),
        0b10 => {
            let len = usize::from(packet[AF_LENGTH_AT]);
            (len <= 183).then_some(Layout { adaptation: Some((AF_BODY_AT, len)), payload: None })
        }
        0b11 => {
            let len = usize::from(packet[AF_LENGTH_AT]);
            (len <= 182)
                .then_some(Layout { adaptation: Some((AF_BODY_AT, len)), payload: Some(AF_BODY_AT + len) })
        }
        _ => None,
    }
}

/// The payload bytes of a packet: `None` when it has none or its adaptation field length is
/// invalid.
pub fn payload(packet: &Packet) -> Option<&[u8]> {
    layout(packet)?.payload.map(|at| &packet[at..])
}

/// The adaptation field flags rill uses (§2.4.3.4, Table 2-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdaptationField {
    /// `discontinuity_indicator`: the system time base (or the continuity counter) jumps here.
    pub discontinuity: bool,
    /// `random_access_indicator`: the next PES packet of this PID starts an access point a
    /// decoder can begin at (for video, a keyframe).
    pub random_access: bool,
    /// `program_clock_reference`, in 27 MHz ticks (base × 300 + extension), if present.
    pub pcr: Option<u64>,
}

/// Offset of the 6-byte PCR in a packet: header (4), adaptation_field_length, flags.
const PCR_AT: usize = 6;
const PCR_LEN: usize = 6;
/// Adaptation field flag bits (§2.4.3.4, Table 2-6).
const AF_DISCONTINUITY: u8 = 0x80;
const AF_RANDOM_ACCESS: u8 = 0x40;
const AF_PCR: u8 = 0x10;

/// The adaptation field, if the packet has a valid one. A zero-length field (one stuffing
/// byte, §2.4.3.5) has no flags and reads as all-false.
pub fn adaptation_field(packet: &Packet) -> Option<AdaptationField> {
    let (at, len) = layout(packet)?.adaptation?;
    if len == 0 {
        return Some(AdaptationField::default());
    }
    let flags = packet[at];
    let pcr = (flags & AF_PCR != 0 && len > PCR_LEN).then(|| read_pcr(&packet[PCR_AT..PCR_AT + PCR_LEN]));
    Some(AdaptationField {
        discontinuity: flags & AF_DISCONTINUITY != 0,
        random_access: flags & AF_RANDOM_ACCESS != 0,
        pcr,
    })
}

/// The packet's PCR in 27 MHz ticks, if it carries one.
pub fn pcr(packet: &Packet) -> Option<u64> {
    adaptation_field(packet)?.pcr
}

/// Decodes `program_clock_reference_base` (33 bits), 6 reserved bits and
/// `program_clock_reference_extension` (9 bits) (§2.4.3.4) into 27 MHz ticks.
fn read_pcr(b: &[u8]) -> u64 {
    let base = (u64::from(b[0]) << 25)
        | (u64::from(b[1]) << 17)
        | (u64::from(b[2]) << 9)
        | (u64::from(b[3]) << 1)
        | (u64::from(b[4]) >> 7);
    let extension = (u64::from(b[4] & 0x01) << 8) | u64::from(b[5]);
    base * 300 + extension
}

/// Rewrites the packet's PCR in place to `value` (27 MHz ticks, taken modulo
/// [`PCR_MODULUS`]), keeping the reserved bits. Returns false (and changes nothing) if the
/// packet carries no PCR.
pub fn set_pcr(packet: &mut Packet, value: u64) -> bool {
    if pcr(packet).is_none() {
        return false;
    }
    let value = value % PCR_MODULUS;
    let (base, extension) = (value / 300, value % 300);
    let b = &mut packet[PCR_AT..PCR_AT + PCR_LEN];
    b[0] = (base >> 25) as u8;
    b[1] = (base >> 17) as u8;
    b[2] = (base >> 9) as u8;
    b[3] = (base >> 1) as u8;
    b[4] = (((base & 1) as u8) << 7) | (b[4] & 0x7E) | ((extension >> 8) as u8 & 0x01);
    b[5] = extension as u8;
    true
}

/// Rewrites the continuity counter (low 4 bits of byte 3).
pub fn set_continuity_counter(packet: &mut Packet, cc: u8) {
    packet[3] = (packet[3] & 0xF0) | (cc & 0x0F);
}

/// What rill reads from a PES packet header that starts in this transport packet
/// (§2.4.3.6, Table 2-21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PesHeader {
    pub stream_id: u8,
    /// Presentation time stamp, 90 kHz, if present and inside this packet.
    pub pts: Option<u64>,
    /// Decoding time stamp, 90 kHz, if present and inside this packet.
    pub dts: Option<u64>,
    /// Offsets of the 5-byte PTS and DTS fields in the packet, for rewriting in place.
    pts_at: Option<usize>,
    dts_at: Option<usize>,
    /// Offset in the packet of the first elementary stream byte, if the PES header ends
    /// inside this packet.
    pub es_at: Option<usize>,
}

/// `packet_start_code_prefix` (§2.4.3.7).
const PES_START_CODE: [u8; 3] = [0x00, 0x00, 0x01];

/// Stream ids whose PES packets have no optional header, so no PTS/DTS (§2.4.3.6, the
/// condition in Table 2-21): program_stream_map, padding_stream, private_stream_2, ECM,
/// EMM, program_stream_directory, DSMCC_stream and ITU-T H.222.1 type E.
fn has_optional_pes_header(stream_id: u8) -> bool {
    !matches!(stream_id, 0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xFF | 0xF2 | 0xF8)
}

/// Parses the PES header that starts in this packet (`payload_unit_start_indicator` set and
/// the payload begins with the PES start code). `None` for a packet that starts no PES
/// packet (a PSI section, a continuation) or whose PES header is malformed.
pub fn pes_header(packet: &Packet) -> Option<PesHeader> {
    let header = PacketHeader::parse(packet);
    if !header.payload_unit_start {
        return None;
    }
    let at = layout(packet)?.payload?;
    let pes = &packet[at..];
    if pes.len() < 6 || pes[..3] != PES_START_CODE {
        return None;
    }
    let stream_id = pes[3];
    let mut parsed = PesHeader { stream_id, pts: None, dts: None, pts_at: None, dts_at: None, es_at: None };
    if !has_optional_pes_header(stream_id) {
        parsed.es_at = (at + 6 < PACKET_LEN).then_some(at + 6);
        return Some(parsed);
    }
    // '10' marks the MPEG-2 optional header (Table 2-21); MPEG-1 system PES syntax is not
    // allowed in a transport stream.
    if pes.len() < 9 || pes[6] & 0xC0 != 0x80 {
        return None;
    }
    let pts_dts_flags = pes[7] >> 6;
    let header_data_len = usize::from(pes[8]);
    let es_at = at + 9 + header_data_len;
    parsed.es_at = (es_at < PACKET_LEN).then_some(es_at);
    // A field counts only if it lies inside both PES_header_data_length and the packet.
    let field_at = |offset: usize| {
        let start = at + 9 + offset;
        (offset + 5 <= header_data_len && start + 5 <= PACKET_LEN).then_some(start)
    };
    match pts_dts_flags {
        0b10 => parsed.pts_at = field_at(0),
        0b11 => {
            parsed.pts_at = field_at(0);
            parsed.dts_at = field_at(5);
        }
        // '01' is forbidden, '00' means no timestamps.
        _ => {}
    }
    parsed.pts = parsed.pts_at.map(|i| read_timestamp(&packet[i..i + 5]));
    parsed.dts = parsed.dts_at.map(|i| read_timestamp(&packet[i..i + 5]));
    Some(parsed)
}

/// Decodes a 33-bit PTS or DTS from its 5-byte field: 4 prefix bits, then 3 + 15 + 15 value
/// bits, each group followed by a marker bit (§2.4.3.6, Table 2-21).
fn read_timestamp(b: &[u8]) -> u64 {
    (u64::from((b[0] >> 1) & 0x07) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

/// Encodes a timestamp into its 5-byte field, keeping the prefix and marker bits as the
/// input had them.
fn write_timestamp(b: &mut [u8], value: u64) {
    let v = value % TIMESTAMP_MODULUS;
    b[0] = (b[0] & 0xF1) | (((v >> 30) as u8 & 0x07) << 1);
    b[1] = (v >> 22) as u8;
    b[2] = (b[2] & 0x01) | (((v >> 15) as u8) << 1);
    b[3] = (v >> 7) as u8;
    b[4] = (b[4] & 0x01) | ((v as u8) << 1);
}

/// Rewrites the PTS and DTS of the PES header starting in this packet with `map` (applied
/// to each present value; results are taken modulo 2^33). Returns false if the packet has
/// no PES header with timestamps inside it.
pub fn map_pes_timestamps(packet: &mut Packet, mut map: impl FnMut(u64) -> u64) -> bool {
    let Some(pes) = pes_header(packet) else { return false };
    let mut any = false;
    for at in [pes.pts_at, pes.dts_at].into_iter().flatten() {
        let old = read_timestamp(&packet[at..at + 5]);
        write_timestamp(&mut packet[at..at + 5], map(old));
        any = true;
    }
    any
}

/// Video codecs whose keyframes rill can find in the bitstream. Others are recognised as
/// video but their keyframes only through `random_access_indicator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// ISO/IEC 11172-2 and 13818-2 video.
    Mpeg12,
    /// ITU-T H.264 (AVC, and its SVC/MVC sub-bitstreams).
    H264,
    /// ITU-T H.265 (HEVC).
    H265,
    /// ITU-T H.266 (VVC).
    H266,
    /// MPEG-4 part 2, VC-1, AVS, Dirac, AV1: keyframes by `random_access_indicator` only.
    Other,
}

/// Registration descriptor format identifier for AV1 in MPEG-2 TS (AOM "Carriage of AV1 in
/// ISO/IEC 13818-1", §2.2: stream_type 0x06 with registration descriptor 'AV01').
const REGISTRATION_AV1: [u8; 4] = *b"AV01";

/// The video codec of an elementary stream, from its `stream_type` (§2.4.4.9, Table 2-34)
/// and, for private streams, its registration descriptor's `format_identifier` (§2.6.8).
/// `None` for streams that are not video.
pub fn video_codec(stream_type: u8, registration: Option<[u8; 4]>) -> Option<VideoCodec> {
    match stream_type {
        0x01 | 0x02 => Some(VideoCodec::Mpeg12),
        // AVC, SVC sub-bitstream, MVC sub-bitstream.
        0x1B | 0x1F | 0x20 => Some(VideoCodec::H264),
        // HEVC, HEVC temporal video subset.
        0x24 | 0x25 => Some(VideoCodec::H265),
        0x33 => Some(VideoCodec::H266),
        // MPEG-4 visual; then user-private values ffmpeg writes for AVS (0x42), Dirac (0xD1)
        // and VC-1 (0xEA, SMPTE RP 227).
        0x10 | 0x42 | 0xD1 | 0xEA => Some(VideoCodec::Other),
        0x06 if registration == Some(REGISTRATION_AV1) => Some(VideoCodec::Other),
        _ => None,
    }
}

/// True if this packet starts a PES packet on a video PID and that PES starts at a point a
/// decoder can begin at: `random_access_indicator` is set (§2.4.3.5), or the elementary
/// stream bytes in this packet hold a random-access NAL unit before any other picture data:
/// H.264 IDR (nal_unit_type 5, ITU-T H.264 Table 7-1), H.265 IRAP (16–21, BLA/IDR/CRA, ITU-T
/// H.265 Table 7-1), H.266 IRAP (7–9, IDR/CRA, ITU-T H.266 Table 5), MPEG-2
/// `sequence_header_code` (ISO/IEC 13818-2 Table 6-1).
///
/// Only this packet is scanned (at most 184 bytes): the decision must be made before the
/// packet is placed in a chunk. An encoder that writes a long SEI before its IDR and no
/// `random_access_indicator` (x264 writes a ~600-byte version SEI on the first frame) is
/// found by the indicator, which every muxer rill targets sets on keyframes (ffmpeg does).
pub fn is_random_access_start(packet: &Packet, codec: VideoCodec) -> bool {
    let header = PacketHeader::parse(packet);
    if !header.payload_unit_start || header.transport_error {
        return false;
    }
    if adaptation_field(packet).is_some_and(|af| af.random_access) {
        return true;
    }
    if header.scrambling != 0 || codec == VideoCodec::Other {
        return false;
    }
    match pes_header(packet).and_then(|pes| pes.es_at) {
        Some(at) => es_starts_random_access(&packet[at..], codec),
        None => false,
    }
}

/// Scans elementary stream bytes for start codes (0x000001) and decides at the first one
/// that settles the question: a random-access unit (true) or other picture data (false).
fn es_starts_random_access(es: &[u8], codec: VideoCodec) -> bool {
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] != 0 || es[i + 1] != 0 || es[i + 2] != 1 {
            i += 1;
            continue;
        }
        let first = es[i + 3];
        let verdict = match codec {
            VideoCodec::H264 => match first & 0x1F {
                5 => Some(true),
                // Non-IDR slice and data partitions A–C: a picture that is not an IDR.
                1..=4 => Some(false),
                _ => None,
            },
            VideoCodec::H265 => match (first >> 1) & 0x3F {
                16..=21 => Some(true),
                // Any other VCL NAL unit type (0–31) is a non-IRAP picture.
                0..=31 => Some(false),
                _ => None,
            },
            // H.266 NAL unit header is two bytes; the type is the top 5 bits of the second.
            VideoCodec::H266 => match es.get(i + 4).map(|b| b >> 3) {
                Some(7..=9) => Some(true),
                // Other VCL types (0–11): TRAIL, STSA, RADL, RASL, GDR, reserved.
                Some(0..=11) => Some(false),
                _ => None,
            },
            VideoCodec::Mpeg12 => match first {
                0xB3 => Some(true),
                // picture_start_code without a sequence header first.
                0x00 => Some(false),
                _ => None,
            },
            VideoCodec::Other => Some(false),
        };
        if let Some(verdict) = verdict {
            return verdict;
        }
        i += 3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{pes_packets, ts_packet, Af};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn header_fields() {
        let mut p = ts_packet(0x1ABC, true, 7, None, &[0xAA; 184]);
        p[1] |= 0x80;
        let h = PacketHeader::parse(&p);
        assert!(h.transport_error && h.payload_unit_start);
        assert_eq!((h.pid, h.continuity_counter, h.adaptation_field_control), (0x1ABC, 7, 0b01));
        assert!(h.has_payload());
        set_continuity_counter(&mut p, 0x1F);
        assert_eq!(PacketHeader::parse(&p).continuity_counter, 0x0F);
        assert_eq!(payload(&p).map(<[u8]>::len), Some(184));
    }

    #[test]
    fn adaptation_field_length_is_validated() {
        let mut p = ts_packet(0x100, false, 0, Some(&Af::default()), &[1; 100]);
        assert!(adaptation_field(&p).is_some());
        assert_eq!(payload(&p).map(<[u8]>::len), Some(100));
        // With a payload after it the field may be at most 182 bytes.
        p[4] = 183;
        assert_eq!(adaptation_field(&p), None);
        assert_eq!(payload(&p), None);
        // Adaptation field only: 183 is the exact length.
        p[3] = (p[3] & 0xCF) | 0x20;
        assert!(adaptation_field(&p).is_some());
        p[4] = 184;
        assert_eq!(adaptation_field(&p), None);
        // '00' is reserved: no adaptation field, no payload.
        p[3] &= 0xCF;
        assert_eq!((adaptation_field(&p), payload(&p)), (None, None));
    }

    #[test]
    fn pcr_round_trip_keeps_reserved_bits() {
        let af = Af { pcr: Some(123_456_789 * 300 + 299), random_access: true, ..Af::default() };
        let mut p = ts_packet(0x100, true, 0, Some(&af), &[]);
        let parsed = adaptation_field(&p).unwrap();
        assert!(parsed.random_access && !parsed.discontinuity);
        assert_eq!(parsed.pcr, Some(123_456_789 * 300 + 299));
        let reserved = p[PCR_AT + 4] & 0x7E;
        assert_eq!(reserved, 0x7E, "the builder sets the reserved bits to 1");
        for v in [0, 1, 299, 300, PCR_MODULUS - 1, (1 << 33) * 300 - 17] {
            assert!(set_pcr(&mut p, v));
            assert_eq!(pcr(&p), Some(v));
            assert_eq!(p[PCR_AT + 4] & 0x7E, reserved);
        }
        assert!(set_pcr(&mut p, PCR_MODULUS + 5));
        assert_eq!(pcr(&p), Some(5), "values wrap modulo 2^33 × 300");
        let mut no_pcr = ts_packet(0x100, true, 0, None, &[0; 184]);
        let before = no_pcr;
        assert!(!set_pcr(&mut no_pcr, 42));
        assert_eq!(no_pcr, before);
    }

    #[test]
    fn pes_timestamps_read_and_rewrite_keep_markers() {
        let mut cc = 0;
        let packets =
            pes_packets(0x100, 0xE0, Some(0x1_2345_6789), Some(0x0_0000_0001), &[9; 300], &mut cc, None);
        let mut p = packets[0];
        let pes = pes_header(&p).unwrap();
        assert_eq!((pes.stream_id, pes.pts, pes.dts), (0xE0, Some(0x1_2345_6789), Some(1)));
        assert_eq!(pes.es_at, Some(4 + 19));
        let markers = |p: &Packet| {
            let a = pes.pts_at.unwrap();
            let d = pes.dts_at.unwrap();
            [p[a] & 0xF1, p[a + 2] & 1, p[a + 4] & 1, p[d] & 0xF1, p[d + 2] & 1, p[d + 4] & 1]
        };
        let before = markers(&p);
        assert_eq!(before, [0x31, 1, 1, 0x11, 1, 1]);
        assert!(map_pes_timestamps(&mut p, |t| t + TIMESTAMP_MODULUS - 2));
        let after = pes_header(&p).unwrap();
        assert_eq!((after.pts, after.dts), (Some(0x1_2345_6787), Some(TIMESTAMP_MODULUS - 1)));
        assert_eq!(markers(&p), before);
        // A continuation packet has no PES header.
        let mut cont = packets[1];
        assert!(pes_header(&cont).is_none());
        assert!(!map_pes_timestamps(&mut cont, |t| t + 1));
    }

    #[test]
    fn pes_header_fields_outside_the_packet_read_as_absent() {
        let mut cc = 0;
        let mut p = pes_packets(0x100, 0xC0, Some(5), None, &[1; 10], &mut cc, None)[0];
        let at = payload(&p).map(|pl| PACKET_LEN - pl.len()).unwrap();
        // Claim a header longer than the packet: the PTS still fits, the ES does not.
        p[at + 8] = 250;
        let pes = pes_header(&p).unwrap();
        assert_eq!((pes.pts, pes.es_at), (Some(5), None));
        // Claim a header too short for the PTS it flags.
        p[at + 8] = 4;
        assert_eq!(pes_header(&p).unwrap().pts, None);
        // Padding streams have no optional header at all.
        let pad = pes_packets(0x100, 0xBE, None, None, &[0xFF; 20], &mut cc, None)[0];
        let pes = pes_header(&pad).unwrap();
        assert_eq!((pes.stream_id, pes.pts), (0xBE, None));
    }

    #[test]
    fn video_codecs_from_stream_types() {
        assert_eq!(video_codec(0x1B, None), Some(VideoCodec::H264));
        assert_eq!(video_codec(0x24, None), Some(VideoCodec::H265));
        assert_eq!(video_codec(0x02, None), Some(VideoCodec::Mpeg12));
        assert_eq!(video_codec(0x33, None), Some(VideoCodec::H266));
        assert_eq!(video_codec(0x06, Some(*b"AV01")), Some(VideoCodec::Other));
        assert_eq!(video_codec(0x06, None), None);
        assert_eq!(video_codec(0x0F, None), None, "AAC is audio");
        assert_eq!(video_codec(0x03, None), None, "MPEG-1 audio");
    }

    fn video_pes_start(es: &[u8], rai: bool) -> Packet {
        let mut cc = 0;
        let af = Af { random_access: rai, ..Af::default() };
        pes_packets(0x100, 0xE0, Some(0), None, es, &mut cc, Some(&af))[0]
    }

    #[test]
    fn keyframes_by_indicator_and_by_nal_type() {
        let aud = [0, 0, 0, 1, 0x09, 0xF0];
        let with = |nal: &[u8]| [&aud[..], nal, &[0x88; 40]].concat();
        let h264_idr = with(&[0, 0, 1, 0x65]);
        let h264_p = with(&[0, 0, 1, 0x41]);
        let h264_sps_then_idr = with(&[0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xCE, 0, 0, 1, 0x65]);
        assert!(is_random_access_start(&video_pes_start(&h264_idr, false), VideoCodec::H264));
        assert!(is_random_access_start(&video_pes_start(&h264_sps_then_idr, false), VideoCodec::H264));
        assert!(!is_random_access_start(&video_pes_start(&h264_p, false), VideoCodec::H264));
        assert!(is_random_access_start(&video_pes_start(&h264_p, true), VideoCodec::H264));
        // HEVC: AUD (35), IDR_W_RADL (19), CRA (21), TRAIL_R (1).
        for (t, key) in [(19u8, true), (21, true), (16, true), (1, false), (9, false)] {
            let es = [&[0, 0, 0, 1, 35 << 1, 1][..], &[0, 0, 1, t << 1, 1], &[0x77; 30]].concat();
            assert_eq!(is_random_access_start(&video_pes_start(&es, false), VideoCodec::H265), key, "{t}");
        }
        // VVC: type in the second header byte.
        for (t, key) in [(7u8, true), (9, true), (0, false), (10, false)] {
            let es = [&[0, 0, 1, 0, t << 3 | 1][..], &[0x55; 20]].concat();
            assert_eq!(is_random_access_start(&video_pes_start(&es, false), VideoCodec::H266), key, "{t}");
        }
        let mpeg2_seq = [0, 0, 1, 0xB3, 0x14, 0x00];
        let mpeg2_pic = [0, 0, 1, 0x00, 0x00, 0x0F];
        assert!(is_random_access_start(&video_pes_start(&mpeg2_seq, false), VideoCodec::Mpeg12));
        assert!(!is_random_access_start(&video_pes_start(&mpeg2_pic, false), VideoCodec::Mpeg12));
        assert!(!is_random_access_start(&video_pes_start(&h264_idr, false), VideoCodec::Other));
        // Not a PES start, or marked damaged: never a keyframe.
        let mut damaged = video_pes_start(&h264_idr, true);
        damaged[1] |= 0x80;
        assert!(!is_random_access_start(&damaged, VideoCodec::H264));
        let mut cont = video_pes_start(&h264_idr, true);
        cont[1] &= !0x40;
        assert!(!is_random_access_start(&cont, VideoCodec::H264));
    }

    #[test]
    fn random_packets_never_panic() {
        let seed = crate::testutil::test_seed();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = [0u8; PACKET_LEN];
        for _ in 0..200_000 {
            rng.fill_bytes(&mut p);
            p[0] = SYNC_BYTE;
            let _ = PacketHeader::parse(&p);
            let _ = adaptation_field(&p);
            let _ = payload(&p);
            let _ = pes_header(&p);
            for codec in [VideoCodec::H264, VideoCodec::H265, VideoCodec::H266, VideoCodec::Mpeg12] {
                let _ = is_random_access_start(&p, codec);
            }
            let mut q = p;
            if let Some(v) = pcr(&q) {
                assert!(set_pcr(&mut q, v));
                // An out-of-range extension (300–511) comes back normalised.
                assert_eq!(pcr(&q), Some(v % PCR_MODULUS));
            }
            let mut q = p;
            map_pes_timestamps(&mut q, |t| t);
            assert_eq!(q, p, "rewriting timestamps with their own values changes nothing");
        }
    }
}
