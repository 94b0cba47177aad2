//! Hand-built transport streams for the tests: packets, PSI sections with a correct CRC,
//! PES packets, and a synthetic channel (PAT, PMT, H.264/H.265 video, audio, PCR).

use crate::psi::crc32_mpeg2;
use crate::ts::{Packet, PACKET_LEN, PAT_PID, SYNC_BYTE, TIMESTAMP_MODULUS};

/// Seed for randomized tests: `RILL_TEST_SEED` or 1. Prints the line that reproduces a
/// failing run (cargo shows it only when the test fails).
pub(crate) fn test_seed() -> u64 {
    let seed = std::env::var("RILL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("reproduce with RILL_TEST_SEED={seed}");
    seed
}

/// Adaptation field contents for [`ts_packet`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Af {
    pub random_access: bool,
    pub discontinuity: bool,
    /// 27 MHz ticks.
    pub pcr: Option<u64>,
}

/// One packet. An adaptation field is added when asked for or when the payload is shorter
/// than 184 bytes (stuffing, as muxers do).
pub(crate) fn ts_packet(pid: u16, pusi: bool, cc: u8, af: Option<&Af>, payload: &[u8]) -> Packet {
    assert!(payload.len() <= 184, "payload {} bytes", payload.len());
    let mut p = [0xFF; PACKET_LEN];
    p[0] = SYNC_BYTE;
    p[1] = (u8::from(pusi) << 6) | ((pid >> 8) as u8 & 0x1F);
    p[2] = pid as u8;
    let need_af = af.is_some() || payload.len() < 184;
    let afc = match (need_af, payload.is_empty()) {
        (false, _) => 0b01,
        (true, true) => 0b10,
        (true, false) => 0b11,
    };
    p[3] = (afc << 4) | (cc & 0x0F);
    let mut at = 4;
    if need_af {
        let af_len = 183 - payload.len();
        p[4] = af_len as u8;
        if af_len > 0 {
            let af = af.copied().unwrap_or_default();
            p[5] = (u8::from(af.discontinuity) << 7)
                | (u8::from(af.random_access) << 6)
                | (u8::from(af.pcr.is_some()) << 4);
            if let Some(pcr) = af.pcr {
                assert!(af_len >= 7, "no room for the PCR");
                let (base, ext) = (pcr / 300, pcr % 300);
                p[6..12].copy_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    (((base & 1) as u8) << 7) | 0x7E | ((ext >> 8) as u8),
                    ext as u8,
                ]);
            }
        } else {
            assert!(af.is_none(), "no room for adaptation field flags");
        }
        at = 5 + af_len;
    }
    p[at..].copy_from_slice(payload);
    p
}

/// Wraps a PSI section (pointer_field 0) into packets, stuffing the last with 0xFF.
pub(crate) fn section_packets(pid: u16, cc: &mut u8, section: &[u8]) -> Vec<Packet> {
    let mut data = vec![0u8];
    data.extend_from_slice(section);
    let mut out = Vec::new();
    for (i, piece) in data.chunks(184).enumerate() {
        let mut payload = [0xFF; 184];
        payload[..piece.len()].copy_from_slice(piece);
        out.push(ts_packet(pid, i == 0, *cc, None, &payload));
        *cc = (*cc + 1) & 0x0F;
    }
    out
}

fn finish_section(mut s: Vec<u8>) -> Vec<u8> {
    let len = s.len() - 3 + 4;
    s[1] = 0xB0 | (len >> 8) as u8;
    s[2] = len as u8;
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// A PAT section: (program_number, PMT PID) pairs.
pub(crate) fn pat_section(version: u8, programs: &[(u16, u16)]) -> Vec<u8> {
    let mut s = vec![0x00, 0, 0, 0x00, 0x01, 0xC1 | ((version & 0x1F) << 1), 0, 0];
    for &(program, pid) in programs {
        s.extend_from_slice(&program.to_be_bytes());
        s.extend_from_slice(&[0xE0 | (pid >> 8) as u8, pid as u8]);
    }
    finish_section(s)
}

/// A PMT section: (stream_type, PID) pairs, no descriptors.
pub(crate) fn pmt_section(program: u16, pcr_pid: u16, streams: &[(u8, u16)]) -> Vec<u8> {
    let mut s = vec![0x02, 0, 0];
    s.extend_from_slice(&program.to_be_bytes());
    s.extend_from_slice(&[0xC1, 0, 0, 0xE0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xF0, 0x00]);
    for &(stream_type, pid) in streams {
        s.extend_from_slice(&[stream_type, 0xE0 | (pid >> 8) as u8, pid as u8, 0xF0, 0x00]);
    }
    finish_section(s)
}

fn timestamp_field(prefix: u8, v: u64) -> [u8; 5] {
    [
        (prefix << 4) | (((v >> 30) as u8 & 0x07) << 1) | 1,
        (v >> 22) as u8,
        (((v >> 15) as u8) << 1) | 1,
        (v >> 7) as u8,
        ((v as u8) << 1) | 1,
    ]
}

/// A PES packet split into transport packets; `first_af` goes on the first packet.
pub(crate) fn pes_packets(
    pid: u16,
    stream_id: u8,
    pts: Option<u64>,
    dts: Option<u64>,
    es: &[u8],
    cc: &mut u8,
    first_af: Option<&Af>,
) -> Vec<Packet> {
    let mut data = vec![0, 0, 1, stream_id, 0, 0];
    if !matches!(stream_id, 0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xFF | 0xF2 | 0xF8) {
        let (flags, mut fields) = match (pts, dts) {
            (Some(p), Some(d)) => (0xC0, [timestamp_field(3, p), timestamp_field(1, d)].concat()),
            (Some(p), None) => (0x80, timestamp_field(2, p).to_vec()),
            _ => (0x00, Vec::new()),
        };
        data.extend_from_slice(&[0x84, flags, fields.len() as u8]);
        data.append(&mut fields);
    }
    data.extend_from_slice(es);
    let pes_len = data.len() - 6;
    if pes_len <= 0xFFFF && !(0xE0..=0xEF).contains(&stream_id) {
        data[4..6].copy_from_slice(&(pes_len as u16).to_be_bytes());
    }
    let mut out = Vec::new();
    let mut rest = &data[..];
    let mut first = true;
    while !rest.is_empty() {
        let af = if first { first_af } else { None };
        let room = match af {
            Some(af) => 184 - 2 - if af.pcr.is_some() { 6 } else { 0 },
            None => 184,
        };
        let (piece, tail) = rest.split_at(room.min(rest.len()));
        out.push(ts_packet(pid, first, *cc, af, piece));
        *cc = (*cc + 1) & 0x0F;
        rest = tail;
        first = false;
    }
    out
}

pub(crate) const PMT_PID: u16 = 0x1000;
pub(crate) const VIDEO_PID: u16 = 0x100;
pub(crate) const AUDIO_PID: u16 = 0x101;
/// One frame at 25 fps, 90 kHz.
pub(crate) const FRAME_TICKS: u64 = 3600;

/// A synthetic channel: frames at 25 fps, a keyframe every `gop` frames.
#[derive(Debug, Clone)]
pub(crate) struct Synth {
    pub frames: usize,
    pub gop: usize,
    /// Video stream type (0x1B H.264, 0x24 H.265), or `None` for audio only.
    pub video: Option<u8>,
    pub audio: bool,
    /// PAT and PMT right before every keyframe, as ffmpeg writes them.
    pub psi_before_keyframes: bool,
    /// Also PAT and PMT in the middle of each GOP (never right before a keyframe).
    pub psi_mid_gop: bool,
    pub random_access_indicator: bool,
    pub key_bytes: usize,
    pub delta_bytes: usize,
    /// First DTS, 90 kHz.
    pub start_ts: u64,
}

impl Default for Synth {
    fn default() -> Self {
        Synth {
            frames: 50,
            gop: 10,
            video: Some(0x1B),
            audio: true,
            psi_before_keyframes: true,
            psi_mid_gop: false,
            random_access_indicator: true,
            key_bytes: 3000,
            delta_bytes: 600,
            start_ts: 90_000,
        }
    }
}

/// What [`Synth::build`] made.
#[derive(Debug, Clone)]
pub(crate) struct SynthStream {
    pub packets: Vec<Packet>,
    /// Index of the first packet of each video keyframe's PES.
    pub keyframes: Vec<usize>,
}

impl SynthStream {
    pub fn bytes(&self) -> Vec<u8> {
        self.packets.concat()
    }
}

impl Synth {
    pub fn build(&self) -> SynthStream {
        let mut packets = Vec::new();
        let mut keyframes = Vec::new();
        let (mut pat_cc, mut pmt_cc, mut video_cc, mut audio_cc) = (0u8, 0u8, 0u8, 0u8);
        let mut streams = Vec::new();
        if let Some(t) = self.video {
            streams.push((t, VIDEO_PID));
        }
        if self.audio {
            streams.push((0x0F, AUDIO_PID));
        }
        let pcr_pid = if self.video.is_some() { VIDEO_PID } else { AUDIO_PID };
        let pat = pat_section(0, &[(1, PMT_PID)]);
        let pmt = pmt_section(1, pcr_pid, &streams);
        let mut psi = |packets: &mut Vec<Packet>| {
            packets.extend(section_packets(PAT_PID, &mut pat_cc, &pat));
            packets.extend(section_packets(PMT_PID, &mut pmt_cc, &pmt));
        };
        psi(&mut packets);
        for i in 0..self.frames {
            let key = i % self.gop == 0;
            let dts = (self.start_ts + i as u64 * FRAME_TICKS) % TIMESTAMP_MODULUS;
            let pcr = Some((dts + TIMESTAMP_MODULUS - FRAME_TICKS) % TIMESTAMP_MODULUS * 300);
            if i > 0
                && ((key && self.psi_before_keyframes) || (self.psi_mid_gop && i % self.gop == self.gop / 2))
            {
                psi(&mut packets);
            }
            if let Some(stream_type) = self.video {
                let (aud, nal): (&[u8], &[u8]) = match (stream_type, key) {
                    (0x24, true) => (&[0, 0, 0, 1, 0x46, 0x01, 0x10], &[0, 0, 1, 0x26, 0x01]),
                    (0x24, false) => (&[0, 0, 0, 1, 0x46, 0x01, 0x10], &[0, 0, 1, 0x02, 0x01]),
                    (_, true) => (&[0, 0, 0, 1, 0x09, 0xF0], &[0, 0, 1, 0x65, 0x88]),
                    (_, false) => (&[0, 0, 0, 1, 0x09, 0xF0], &[0, 0, 1, 0x41, 0x9A]),
                };
                let size = if key { self.key_bytes } else { self.delta_bytes };
                let mut es = [aud, nal].concat();
                es.resize(size.max(es.len()), 0x88);
                let af = Af { random_access: key && self.random_access_indicator, pcr, ..Af::default() };
                if key {
                    keyframes.push(packets.len());
                }
                packets.extend(pes_packets(
                    VIDEO_PID,
                    0xE0,
                    Some(dts + FRAME_TICKS),
                    Some(dts),
                    &es,
                    &mut video_cc,
                    Some(&af),
                ));
            }
            if self.audio {
                let af = Af { pcr: if self.video.is_none() { pcr } else { None }, ..Af::default() };
                let af = af.pcr.is_some().then_some(&af);
                packets.extend(pes_packets(
                    AUDIO_PID,
                    0xC0,
                    Some(dts),
                    None,
                    &[0x11; 300],
                    &mut audio_cc,
                    af,
                ));
            }
        }
        SynthStream { packets, keyframes }
    }
}
