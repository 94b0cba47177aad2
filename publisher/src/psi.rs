//! Program specific information (ISO/IEC 13818-1 §2.4.4): the program association table
//! (PAT) and program map table (PMT), reassembled from packets and checked by CRC, and the
//! small amount of program state the chunker needs (which PID is video, and copies of the
//! packets that carried the current PAT and PMT).

use crate::ts::{self, video_codec, Packet, PacketHeader, VideoCodec, PAT_PID};

/// CRC-32 of ISO/IEC 13818-1 Annex A (polynomial 0x04C11DB7, initial value 0xFFFFFFFF, no
/// reflection, no final XOR). Run over a whole section including its `CRC_32` field it
/// gives 0, which is how a decoder checks it.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &b| (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)])
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// `table_id` of a PAT section (§2.4.4.4, Table 2-31).
pub const TABLE_ID_PAT: u8 = 0x00;
/// `table_id` of a PMT section (§2.4.4.4, Table 2-31).
pub const TABLE_ID_PMT: u8 = 0x02;

/// Longest PAT or PMT section in bytes: `section_length` "shall not exceed 1021" (§2.4.4.3,
/// §2.4.4.8), plus the 3 bytes up to and including it.
pub const MAX_SECTION_LEN: usize = 1024;

/// Most packets one PAT or PMT section can span: the first carries at most 183 section
/// bytes (after `pointer_field`), the rest 184; ⌈1024 / 183⌉ = 6.
pub const MAX_SECTION_PACKETS: usize = 6;

/// Why a section was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SectionError {
    #[error("section truncated")]
    Truncated,
    #[error("table_id {found:#04x}, expected {expected:#04x}")]
    TableId { found: u8, expected: u8 },
    #[error("section_syntax_indicator is 0")]
    SyntaxIndicator,
    #[error("section_length {0} out of range")]
    Length(usize),
    #[error("CRC_32 mismatch")]
    Crc,
}

/// A program association table section (§2.4.4.3, Table 2-30).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pat {
    pub transport_stream_id: u16,
    pub version: u8,
    /// `current_next_indicator`: false means the table is announced, not yet in force.
    pub current: bool,
    /// (program_number, PID) pairs; program 0 names the network PID. At most 253 (the
    /// section length bound).
    pub programs: Vec<(u16, u16)>,
}

/// One elementary stream of a PMT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementaryStream {
    pub stream_type: u8,
    pub pid: u16,
    /// `format_identifier` of a registration descriptor (§2.6.8), if the stream has one.
    pub registration: Option<[u8; 4]>,
}

/// A program map table section (§2.4.4.8, Table 2-33).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pmt {
    pub program_number: u16,
    pub version: u8,
    pub current: bool,
    pub pcr_pid: u16,
    /// At most 203 (5 bytes each within the section length bound).
    pub streams: Vec<ElementaryStream>,
}

impl Pmt {
    /// The first video stream: its PID and codec.
    pub fn video(&self) -> Option<(u16, VideoCodec)> {
        self.streams.iter().find_map(|s| video_codec(s.stream_type, s.registration).map(|c| (s.pid, c)))
    }
}

/// Checks the long-form section syntax common to PAT and PMT (§2.4.4.3): table id, syntax
/// indicator, length (bytes 5–7 of header and the CRC must fit), and CRC. Returns the
/// section without its CRC.
fn checked_section(section: &[u8], table_id: u8) -> Result<&[u8], SectionError> {
    if section.len() < 3 {
        return Err(SectionError::Truncated);
    }
    if section[0] != table_id {
        return Err(SectionError::TableId { found: section[0], expected: table_id });
    }
    if section[1] & 0x80 == 0 {
        return Err(SectionError::SyntaxIndicator);
    }
    let len = section_length(section);
    // 5 bytes of extension header (id, version, section numbers) and the 4-byte CRC.
    if !(9..=MAX_SECTION_LEN - 3).contains(&len) {
        return Err(SectionError::Length(len));
    }
    let section = section.get(..3 + len).ok_or(SectionError::Truncated)?;
    if crc32_mpeg2(section) != 0 {
        return Err(SectionError::Crc);
    }
    Ok(&section[..section.len() - 4])
}

/// `section_length`: the 12 bits after the table id and flags.
fn section_length(section: &[u8]) -> usize {
    (usize::from(section[1] & 0x0F) << 8) | usize::from(section[2])
}

fn pid_at(b: &[u8], at: usize) -> u16 {
    (u16::from(b[at] & 0x1F) << 8) | u16::from(b[at + 1])
}

/// Parses a PAT section (starting at `table_id`; trailing bytes are ignored).
pub fn parse_pat(section: &[u8]) -> Result<Pat, SectionError> {
    let s = checked_section(section, TABLE_ID_PAT)?;
    let entries = &s[8..];
    if entries.len() % 4 != 0 {
        return Err(SectionError::Length(section_length(section)));
    }
    Ok(Pat {
        transport_stream_id: u16::from_be_bytes([s[3], s[4]]),
        version: (s[5] >> 1) & 0x1F,
        current: s[5] & 0x01 != 0,
        programs: entries.chunks_exact(4).map(|e| (u16::from_be_bytes([e[0], e[1]]), pid_at(e, 2))).collect(),
    })
}

/// `descriptor_tag` of the registration descriptor (§2.6.8).
const REGISTRATION_DESCRIPTOR: u8 = 0x05;

/// Parses a PMT section (starting at `table_id`; trailing bytes are ignored).
pub fn parse_pmt(section: &[u8]) -> Result<Pmt, SectionError> {
    let s = checked_section(section, TABLE_ID_PMT)?;
    let bad_length = SectionError::Length(section_length(section));
    if s.len() < 12 {
        return Err(bad_length);
    }
    let program_info_len = (usize::from(s[10] & 0x0F) << 8) | usize::from(s[11]);
    let mut rest = s.get(12 + program_info_len..).ok_or(bad_length)?;
    let mut streams = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(bad_length);
        }
        let es_info_len = (usize::from(rest[3] & 0x0F) << 8) | usize::from(rest[4]);
        let descriptors = rest.get(5..5 + es_info_len).ok_or(bad_length)?;
        streams.push(ElementaryStream {
            stream_type: rest[0],
            pid: pid_at(rest, 1),
            registration: find_registration(descriptors),
        });
        rest = &rest[5 + es_info_len..];
    }
    Ok(Pmt {
        program_number: u16::from_be_bytes([s[3], s[4]]),
        version: (s[5] >> 1) & 0x1F,
        current: s[5] & 0x01 != 0,
        pcr_pid: pid_at(s, 8),
        streams,
    })
}

/// The `format_identifier` of the first registration descriptor in a descriptor loop.
fn find_registration(mut descriptors: &[u8]) -> Option<[u8; 4]> {
    while descriptors.len() >= 2 {
        let (tag, len) = (descriptors[0], usize::from(descriptors[1]));
        let body = descriptors.get(2..2 + len)?;
        if tag == REGISTRATION_DESCRIPTOR && len >= 4 {
            return Some([body[0], body[1], body[2], body[3]]);
        }
        descriptors = &descriptors[2 + len..];
    }
    None
}

/// Reassembles the sections carried on one PID (§2.4.4.1–2.4.4.2): a section starts where
/// `pointer_field` says in a packet with `payload_unit_start_indicator`, may continue over
/// the following packets of the PID, and may be followed by another section or by 0xFF
/// stuffing. A continuity counter gap abandons the section in progress; a repeated counter
/// (a duplicate packet, §2.4.3.3) is ignored.
///
/// Bounded: one section of at most [`MAX_SECTION_LEN`] bytes and the at most
/// [`MAX_SECTION_PACKETS`] packets that carried it.
#[derive(Default)]
pub struct SectionAssembler {
    buf: Vec<u8>,
    packets: Vec<Packet>,
    collecting: bool,
    last_cc: Option<u8>,
}

impl std::fmt::Debug for SectionAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectionAssembler")
            .field("bytes", &self.buf.len())
            .field("packets", &self.packets.len())
            .field("collecting", &self.collecting)
            .finish_non_exhaustive()
    }
}

impl SectionAssembler {
    pub fn new() -> SectionAssembler {
        SectionAssembler::default()
    }

    /// Forgets any section in progress and the continuity state (the PID changed meaning).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.packets.clear();
        self.collecting = false;
        self.last_cc = None;
    }

    /// Feeds one packet of this PID. Calls `on_section(section, packets)` for every section
    /// this packet completes, with the packets that carried it (the first of them may also
    /// carry the end of an earlier section, which `pointer_field` skips).
    pub fn push(&mut self, packet: &Packet, mut on_section: impl FnMut(&[u8], &[Packet])) {
        let header = PacketHeader::parse(packet);
        if header.transport_error {
            return;
        }
        let Some(payload) = ts::payload(packet) else { return };
        let cc = header.continuity_counter;
        match self.last_cc {
            Some(last) if cc == last => return,
            Some(last) if cc != (last + 1) & 0x0F => self.collecting = false,
            _ => {}
        }
        self.last_cc = Some(cc);
        if !header.payload_unit_start {
            if self.collecting {
                self.add_packet(packet);
                self.extend(payload, &mut on_section);
            }
            return;
        }
        let pointer = usize::from(payload[0]);
        let Some(tail) = payload.get(1..1 + pointer) else {
            self.collecting = false;
            return;
        };
        if self.collecting {
            self.add_packet(packet);
            self.extend(tail, &mut on_section);
            // A new section starts after the pointer; whatever was in progress ends here.
            self.collecting = false;
        }
        let mut rest = &payload[1 + pointer..];
        // Each pass consumes at least one byte (the section header), so this ends.
        while let Some(&first) = rest.first() {
            if first == 0xFF {
                break;
            }
            self.buf.clear();
            self.packets.clear();
            self.packets.push(*packet);
            self.collecting = true;
            let used = self.extend(rest, &mut on_section);
            if self.collecting {
                break;
            }
            rest = &rest[used..];
        }
    }

    fn add_packet(&mut self, packet: &Packet) {
        if self.packets.len() == MAX_SECTION_PACKETS {
            // Cannot be a valid PAT/PMT section; drop it rather than grow.
            self.collecting = false;
        } else {
            self.packets.push(*packet);
        }
    }

    /// Appends section bytes from `data`; returns how many it used. Completes (and reports)
    /// or abandons the section when it can.
    fn extend(&mut self, data: &[u8], on_section: &mut impl FnMut(&[u8], &[Packet])) -> usize {
        if !self.collecting {
            return 0;
        }
        let mut used = 0;
        if self.buf.len() < 3 {
            used = (3 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..used]);
            if self.buf.len() < 3 {
                return used;
            }
        }
        let total = 3 + section_length(&self.buf);
        if total > MAX_SECTION_LEN {
            self.collecting = false;
            return data.len();
        }
        let take = (total - self.buf.len()).min(data.len() - used);
        self.buf.extend_from_slice(&data[used..used + take]);
        used += take;
        if self.buf.len() == total {
            on_section(&self.buf, &self.packets);
            self.collecting = false;
        }
        used
    }
}

/// What the chunker knows about the program it is chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramMode {
    /// No PMT parsed yet.
    Unknown,
    /// The program has video on this PID.
    Video { pid: u16, codec: VideoCodec },
    /// The program has no video stream (audio only, data).
    NoVideo,
}

/// Tracks the first program of the PAT and its PMT. A transport stream with several
/// programs is chunked as one stream; keyframes are looked for in the first program only.
#[derive(Default)]
pub struct ProgramTracker {
    pat: SectionAssembler,
    pmt: SectionAssembler,
    /// (program_number, PMT PID) of the program followed.
    program: Option<(u16, u16)>,
    /// `Some` once the PMT is parsed: its video stream, if any.
    video: Option<Option<(u16, VideoCodec)>>,
    /// The packets that carried the last good PAT and PMT sections (each at most
    /// [`MAX_SECTION_PACKETS`]).
    pat_packets: Vec<Packet>,
    pmt_packets: Vec<Packet>,
    /// Sections rejected (bad CRC, malformed).
    errors: u64,
}

impl std::fmt::Debug for ProgramTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramTracker")
            .field("program", &self.program)
            .field("mode", &self.mode())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl ProgramTracker {
    pub fn new() -> ProgramTracker {
        ProgramTracker::default()
    }

    pub fn pmt_pid(&self) -> Option<u16> {
        self.program.map(|(_, pid)| pid)
    }

    pub fn mode(&self) -> ProgramMode {
        match self.video {
            None => ProgramMode::Unknown,
            Some(Some((pid, codec))) => ProgramMode::Video { pid, codec },
            Some(None) => ProgramMode::NoVideo,
        }
    }

    /// The packets of the current PAT and PMT, once both are known.
    pub fn psi_packets(&self) -> Option<(&[Packet], &[Packet])> {
        (!self.pat_packets.is_empty() && !self.pmt_packets.is_empty())
            .then_some((&self.pat_packets[..], &self.pmt_packets[..]))
    }

    /// Sections rejected so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Feeds a packet; only PAT and PMT packets change anything.
    pub fn on_packet(&mut self, packet: &Packet, header: &PacketHeader) {
        let Self { pat, pmt, program, video, pat_packets, pmt_packets, errors } = self;
        if header.pid == PAT_PID {
            pat.push(packet, |section, packets| match parse_pat(section) {
                Ok(table) if table.current => {
                    // Stay with the program followed while the PAT still lists it.
                    let keep = program.filter(|p| table.programs.contains(p));
                    let chosen = keep.or_else(|| table.programs.iter().copied().find(|&(n, _)| n != 0));
                    if chosen != *program {
                        *program = chosen;
                        pmt.reset();
                        *video = None;
                        pmt_packets.clear();
                    }
                    pat_packets.clear();
                    pat_packets.extend_from_slice(packets);
                }
                Ok(_) => {}
                Err(_) => *errors += 1,
            });
        } else if Some(header.pid) == program.map(|(_, pid)| pid) {
            let followed = program.map(|(n, _)| n);
            pmt.push(packet, |section, packets| {
                // The PMT PID may carry other tables (§2.4.4.8 allows other programs' PMTs
                // and private sections); only PMT sections are checked.
                if section.first() != Some(&TABLE_ID_PMT) {
                    return;
                }
                match parse_pmt(section) {
                    Ok(table) if table.current && Some(table.program_number) == followed => {
                        *video = Some(table.video());
                        pmt_packets.clear();
                        pmt_packets.extend_from_slice(packets);
                    }
                    Ok(_) => {}
                    Err(_) => *errors += 1,
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{pat_section, pmt_section, section_packets, ts_packet, PMT_PID};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn crc_matches_the_standard_check_value() {
        // CRC-32/MPEG-2 check value over "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
        let s = pat_section(0, &[(1, 0x1000)]);
        assert_eq!(crc32_mpeg2(&s), 0, "a section with its CRC checks to 0");
    }

    #[test]
    fn pat_and_pmt_parse() {
        let pat = parse_pat(&pat_section(3, &[(0, 0x10), (1, 0x1000), (2, 0x1001)])).unwrap();
        assert_eq!(pat.programs, vec![(0, 0x10), (1, 0x1000), (2, 0x1001)]);
        assert_eq!((pat.version, pat.current), (3, true));
        let pmt = parse_pmt(&pmt_section(1, 0x100, &[(0x0F, 0x101), (0x1B, 0x100)])).unwrap();
        assert_eq!((pmt.program_number, pmt.pcr_pid, pmt.streams.len()), (1, 0x100, 2));
        assert_eq!(pmt.video(), Some((0x100, VideoCodec::H264)));
        let audio_only = parse_pmt(&pmt_section(1, 0x101, &[(0x0F, 0x101)])).unwrap();
        assert_eq!(audio_only.video(), None);
    }

    #[test]
    fn bad_sections_are_rejected() {
        let mut s = pat_section(0, &[(1, 0x1000)]);
        assert_eq!(parse_pmt(&s), Err(SectionError::TableId { found: 0, expected: 2 }));
        assert_eq!(parse_pat(&s[..10]), Err(SectionError::Truncated));
        s[9] ^= 0x01;
        assert_eq!(parse_pat(&s), Err(SectionError::Crc));
        s[9] ^= 0x01;
        s[1] &= 0x7F;
        assert_eq!(parse_pat(&s), Err(SectionError::SyntaxIndicator));
        s[1] |= 0x8F;
        assert!(matches!(parse_pat(&s), Err(SectionError::Length(_))));
    }

    #[test]
    fn registration_descriptor_marks_av1() {
        let mut s = vec![0x02, 0, 0, 0, 1, 0xC1, 0, 0, 0xE1, 0x00, 0xF0, 0x00];
        s.extend_from_slice(&[0x06, 0xE1, 0x00, 0xF0, 8, 0x0A, 0, 0x05, 4, b'A', b'V', b'0', b'1']);
        let len = s.len() - 3 + 4;
        s[1] = 0xB0 | (len >> 8) as u8;
        s[2] = len as u8;
        let crc = crc32_mpeg2(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        let pmt = parse_pmt(&s).unwrap();
        assert_eq!(pmt.streams[0].registration, Some(*b"AV01"));
        assert_eq!(pmt.video(), Some((0x100, VideoCodec::Other)));
    }

    fn sections_of(packets: &[Packet]) -> Vec<(Vec<u8>, usize)> {
        let mut asm = SectionAssembler::new();
        let mut out = Vec::new();
        for p in packets {
            asm.push(p, |s, ps| out.push((s.to_vec(), ps.len())));
        }
        out
    }

    #[test]
    fn sections_spanning_packets_and_sharing_packets() {
        // A PMT with 60 streams: 9 + 300 + 4 + 3 bytes, two packets.
        let streams: Vec<(u8, u16)> = (0..60).map(|i| (0x0F, 0x200 + i)).collect();
        let big = pmt_section(1, 0x200, &streams);
        let mut cc = 0;
        let packets = section_packets(PMT_PID, &mut cc, &big);
        assert_eq!(packets.len(), 2);
        assert_eq!(sections_of(&packets), vec![(big.clone(), 2)]);
        // A lost continuation packet abandons it.
        let mut gap = packets.clone();
        gap[1][3] = (gap[1][3] & 0xF0) | 0x05;
        assert!(sections_of(&gap).is_empty());
        // A duplicate first packet is ignored.
        assert_eq!(sections_of(&[packets[0], packets[0], packets[1]]), vec![(big, 2)]);

        // Two sections in one packet, then one whose start a pointer_field skips to.
        let a = pmt_section(1, 0x100, &[(0x1B, 0x100)]);
        let b = pmt_section(2, 0x100, &[(0x0F, 0x101)]);
        let mut payload = vec![0u8];
        payload.extend_from_slice(&a);
        payload.extend_from_slice(&b);
        payload.resize(184, 0xFF);
        let two = ts_packet(PMT_PID, true, 0, None, &payload);
        let mut payload = vec![3u8, 0xAA, 0xBB, 0xCC];
        payload.extend_from_slice(&a);
        payload.resize(184, 0xFF);
        let skipped = ts_packet(PMT_PID, true, 1, None, &payload);
        let got = sections_of(&[two, skipped]);
        assert_eq!(got.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), vec![a.clone(), b, a]);
    }

    #[test]
    fn tracker_follows_the_first_program_and_keeps_its_packets() {
        let mut tracker = ProgramTracker::new();
        let feed = |tracker: &mut ProgramTracker, packets: &[Packet]| {
            for p in packets {
                tracker.on_packet(p, &PacketHeader::parse(p));
            }
        };
        let (mut pat_cc, mut pmt_cc) = (0, 0);
        let pat = section_packets(PAT_PID, &mut pat_cc, &pat_section(0, &[(0, 0x10), (7, PMT_PID)]));
        feed(&mut tracker, &pat);
        assert_eq!((tracker.pmt_pid(), tracker.mode()), (Some(PMT_PID), ProgramMode::Unknown));
        let other = section_packets(PMT_PID, &mut pmt_cc, &pmt_section(8, 0x100, &[(0x1B, 0x100)]));
        feed(&mut tracker, &other);
        assert_eq!(tracker.mode(), ProgramMode::Unknown, "another program's PMT");
        let pmt = section_packets(PMT_PID, &mut pmt_cc, &pmt_section(7, 0x100, &[(0x24, 0x100)]));
        feed(&mut tracker, &pmt);
        assert_eq!(tracker.mode(), ProgramMode::Video { pid: 0x100, codec: VideoCodec::H265 });
        assert_eq!(tracker.psi_packets(), Some((&pat[..], &pmt[..])));
        // A corrupted PAT changes nothing and is counted.
        let mut bad = section_packets(PAT_PID, &mut pat_cc, &pat_section(1, &[(9, 0x1100)]));
        bad[0][10] ^= 0xFF;
        feed(&mut tracker, &bad);
        assert_eq!((tracker.pmt_pid(), tracker.errors()), (Some(PMT_PID), 1));
        // A PAT that drops the program switches and forgets the PMT.
        let moved = section_packets(PAT_PID, &mut pat_cc, &pat_section(2, &[(9, 0x1100)]));
        feed(&mut tracker, &moved);
        assert_eq!(
            (tracker.pmt_pid(), tracker.mode(), tracker.psi_packets()),
            (Some(0x1100), ProgramMode::Unknown, None)
        );
    }

    #[test]
    fn random_sections_and_packets_never_panic() {
        let seed = crate::testutil::test_seed();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let good = [pat_section(0, &[(1, PMT_PID)]), pmt_section(1, 0x100, &[(0x1B, 0x100), (0x0F, 0x101)])];
        let mut tracker = ProgramTracker::new();
        for i in 0..100_000 {
            let mut s = good[i % 2].clone();
            let flips = rng.next_u32() % 4;
            for _ in 0..flips {
                let bit = rng.next_u32() as usize % (s.len() * 8);
                s[bit / 8] ^= 1 << (bit % 8);
            }
            s.truncate(rng.next_u32() as usize % (s.len() + 1));
            let _ = parse_pat(&s);
            let _ = parse_pmt(&s);
            let mut p = [0u8; 188];
            rng.fill_bytes(&mut p);
            p[0] = 0x47;
            if i % 2 == 0 {
                // Aim at the PIDs the tracker looks at.
                p[1] &= 0xE0;
                p[2] = 0;
                if i % 4 == 0 {
                    p[1] |= (PMT_PID >> 8) as u8;
                }
            }
            tracker.on_packet(&p, &PacketHeader::parse(&p));
            assert!(tracker.pat_packets.len() <= MAX_SECTION_PACKETS);
            assert!(tracker.pat.buf.len() <= MAX_SECTION_LEN && tracker.pmt.buf.len() <= MAX_SECTION_LEN);
        }
    }
}
