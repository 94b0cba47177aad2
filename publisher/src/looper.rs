//! Playing a file as a live channel: [`LoopRewriter`] makes the passes of a looped file one
//! continuous stream, and [`PcrPacer`] releases packets at the pace the file's clock says.
//! Both are sans-IO: they see packets and return values, the caller owns clock and file.

use std::time::{Duration, Instant};

use crate::ts::{
    self, map_pes_timestamps, set_continuity_counter, set_pcr, Packet, PacketHeader, NULL_PID, PCR_HZ,
    PCR_MODULUS, TIMESTAMP_MODULUS,
};

/// Timestamp step assumed for a PID whose pass showed only one timestamp: 3600 ticks of
/// 90 kHz, one frame at 25 fps.
pub const DEFAULT_STEP_90K: u64 = 3600;

/// PIDs whose timestamps are measured to size the offset between passes: 32, far more than
/// the elementary streams of a channel. Timestamps on further PIDs are still rewritten.
const MAX_TRACKED_PIDS: usize = 32;

/// Number of PIDs (13 bits, ISO/IEC 13818-1 §2.4.3.3).
const PID_COUNT: usize = 8192;

/// Marks "no value" in the per-PID continuity tables (a counter is 4 bits).
const NO_CC: u8 = 0xFF;

/// A modular counter's values over one pass, relative to the first.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: Option<u64>,
    last: u64,
    /// Furthest value ahead of `first` (modulo wrap; values behind it do not count).
    max_ahead: u64,
    /// Smallest forward step between consecutive values.
    min_step: Option<u64>,
    modulus: u64,
}

impl Span {
    fn new(modulus: u64) -> Span {
        Span { first: None, last: 0, max_ahead: 0, min_step: None, modulus }
    }

    /// (b − a) mod m, and whether that is a forward step (less than half the range).
    fn ahead(&self, a: u64, b: u64) -> Option<u64> {
        let d = (b % self.modulus + self.modulus - a % self.modulus) % self.modulus;
        (d < self.modulus / 2).then_some(d)
    }

    fn observe(&mut self, v: u64) {
        let Some(first) = self.first else {
            self.first = Some(v);
            self.last = v;
            return;
        };
        if let Some(d) = self.ahead(first, v) {
            self.max_ahead = self.max_ahead.max(d);
        }
        if let Some(step) = self.ahead(self.last, v).filter(|&s| s > 0) {
            self.min_step = Some(self.min_step.map_or(step, |m| m.min(step)));
        }
        self.last = v;
    }

    /// How far the next pass must be shifted so its first value is one step past every
    /// value of this one, or `None` if this pass had no values.
    fn needed_shift(&self, default_step: u64) -> Option<u64> {
        self.first.map(|_| self.max_ahead + self.min_step.unwrap_or(default_step))
    }
}

#[derive(Debug, Clone, Copy)]
struct PesTrack {
    pid: u16,
    pts: Span,
    dts: Span,
}

/// Rewrites the packets of each pass over a file so that the passes concatenate into one
/// stream with continuous timestamps and continuity counters.
///
/// For every pass after the first, every PCR (base and extension), PES PTS and DTS is
/// shifted by one offset (modulo 2^33 for PTS, DTS and the PCR base, §2.4.3.5 and §2.4.3.7),
/// the same for all PIDs so audio and video stay in sync. The offset grows each pass by the
/// pass's own length: the span of its PCRs plus one PCR interval, or, if more, the span of
/// any PID's PTS or DTS plus one step of that PID (one frame), so no timestamp of a pass
/// repeats one of the pass before. Continuity counters are shifted per PID so each PID's
/// first packet in a pass continues from its last one in the previous pass (§2.4.3.3). The
/// first pass is unchanged byte for byte. Packets with `transport_error_indicator` are
/// left alone. Measurements are taken from the original values of each pass, so a file
/// that changes between passes still joins up.
///
/// Bounded: two 8 KiB per-PID continuity tables and at most 32 measured PIDs.
pub struct LoopRewriter {
    pass: u64,
    /// Added to every timestamp in this pass, 90 kHz (× 300 for PCR), modulo 2^33.
    offset_90k: u64,
    /// The PID whose PCRs measure a pass: the first seen carrying one.
    pcr_pid: Option<u16>,
    pcr: Span,
    tracks: Vec<PesTrack>,
    /// Per PID, the counter of the last packet written.
    last_cc: Box<[u8; PID_COUNT]>,
    /// Per PID, what is added to counters in this pass (decided at the PID's first packet).
    cc_shift: Box<[u8; PID_COUNT]>,
    packets_this_pass: u64,
}

impl std::fmt::Debug for LoopRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopRewriter")
            .field("pass", &self.pass)
            .field("offset_90k", &self.offset_90k)
            .field("pcr_pid", &self.pcr_pid)
            .field("packets_this_pass", &self.packets_this_pass)
            .finish_non_exhaustive()
    }
}

impl Default for LoopRewriter {
    fn default() -> Self {
        LoopRewriter::new()
    }
}

impl LoopRewriter {
    pub fn new() -> LoopRewriter {
        LoopRewriter {
            pass: 0,
            offset_90k: 0,
            pcr_pid: None,
            pcr: Span::new(PCR_MODULUS),
            tracks: Vec::new(),
            last_cc: Box::new([NO_CC; PID_COUNT]),
            cc_shift: Box::new([NO_CC; PID_COUNT]),
            packets_this_pass: 0,
        }
    }

    /// Passes completed (0 during the first).
    pub fn pass(&self) -> u64 {
        self.pass
    }

    /// Packets seen in the current pass.
    pub fn packets_this_pass(&self) -> u64 {
        self.packets_this_pass
    }

    /// What is added to timestamps in this pass, in 90 kHz ticks (modulo 2^33).
    pub fn offset_90k(&self) -> u64 {
        self.offset_90k
    }

    /// Rewrites one packet of the current pass in place.
    pub fn rewrite(&mut self, packet: &mut Packet) {
        let header = PacketHeader::parse(packet);
        if header.transport_error {
            return;
        }
        self.packets_this_pass += 1;
        self.measure(packet, &header);
        if self.offset_90k != 0 {
            if let Some(pcr) = ts::pcr(packet) {
                set_pcr(packet, pcr + self.offset_90k * 300);
            }
            if header.payload_unit_start {
                let offset = self.offset_90k;
                map_pes_timestamps(packet, |t| t + offset);
            }
        }
        // Null packets' counters are undefined (§2.4.3.3).
        if header.pid != NULL_PID {
            let pid = usize::from(header.pid);
            let cc = header.continuity_counter;
            if self.cc_shift[pid] == NO_CC {
                self.cc_shift[pid] = match self.last_cc[pid] {
                    NO_CC => 0,
                    // A packet with payload takes the next value; one without repeats it.
                    last => (last + u8::from(header.has_payload())).wrapping_sub(cc) & 0x0F,
                };
            }
            let new_cc = (cc + self.cc_shift[pid]) & 0x0F;
            set_continuity_counter(packet, new_cc);
            self.last_cc[pid] = new_cc;
        }
    }

    /// The current pass has ended (end of file); packets from now on belong to the next.
    pub fn end_pass(&mut self) {
        let pcr_shift_90k = self.pcr.needed_shift(0).map(|ticks| ticks.div_ceil(300)).unwrap_or(0);
        let pes_shift_90k = self
            .tracks
            .iter()
            .flat_map(|t| [t.pts.needed_shift(DEFAULT_STEP_90K), t.dts.needed_shift(DEFAULT_STEP_90K)])
            .flatten()
            .max()
            .unwrap_or(0);
        let shift = pcr_shift_90k.max(pes_shift_90k);
        self.offset_90k = (self.offset_90k + shift) % TIMESTAMP_MODULUS;
        self.pass += 1;
        self.pcr = Span::new(PCR_MODULUS);
        self.tracks.clear();
        self.cc_shift.fill(NO_CC);
        self.packets_this_pass = 0;
    }

    /// Records the original timestamps of a packet.
    fn measure(&mut self, packet: &Packet, header: &PacketHeader) {
        if let Some(pcr) = ts::pcr(packet) {
            let pcr_pid = *self.pcr_pid.get_or_insert(header.pid);
            if pcr_pid == header.pid {
                self.pcr.observe(pcr);
            }
        }
        if !header.payload_unit_start {
            return;
        }
        let Some(pes) = ts::pes_header(packet) else { return };
        if pes.pts.is_none() {
            return;
        }
        let index = match self.tracks.iter().position(|t| t.pid == header.pid) {
            Some(i) => i,
            None if self.tracks.len() < MAX_TRACKED_PIDS => {
                self.tracks.push(PesTrack {
                    pid: header.pid,
                    pts: Span::new(TIMESTAMP_MODULUS),
                    dts: Span::new(TIMESTAMP_MODULUS),
                });
                self.tracks.len() - 1
            }
            None => return,
        };
        let track = &mut self.tracks[index];
        if let Some(pts) = pes.pts {
            track.pts.observe(pts);
        }
        if let Some(dts) = pes.dts {
            track.dts.observe(dts);
        }
    }
}

/// Fallback pace for a file without PCRs: 4 Mbit/s, a typical HD stream.
pub const DEFAULT_FALLBACK_RATE_BPS: u64 = 4_000_000;

/// Slowest fallback pace accepted: 1 kbit/s (a zero rate would never release anything).
const MIN_FALLBACK_RATE_BPS: u64 = 1_000;

/// A PCR more than this ahead of the previous one is a discontinuity, not a pause: 1 s of
/// 27 MHz ticks (PCRs must come at least every 0.1 s, ISO/IEC 13818-1 §2.7.2).
const MAX_PCR_STEP: u64 = PCR_HZ;

/// How far past a PCR packets are extrapolated before the next PCR is known, when the
/// interval between PCRs is not yet known: 100 ms, the longest §2.7.2 allows.
const DEFAULT_PCR_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// 27 MHz.
    pcr: u64,
    at: Instant,
    /// Byte position of the PCR's packet.
    byte: u64,
    /// Transport rate over the last PCR interval, bit/s.
    rate_bps: Option<u64>,
    /// Length of the last PCR interval.
    interval: Option<Duration>,
}

/// Tells when each packet of a file should be released so the output runs at the pace the
/// file was muxed for.
///
/// A packet carrying a PCR on the PCR PID (the first PID seen with a PCR) is released at
/// `start` plus the PCR's distance from the first PCR. Packets between PCRs are placed by
/// byte position at the transport rate of the previous PCR interval (the rate a constant
/// rate mux would have, §2.4.2.2, taken from behind because the next PCR has not been read
/// yet), but never further than one PCR interval past the last PCR, so a burst after a quiet
/// interval waits for its PCR rather than being spread over seconds; between the first two
/// PCRs, whose rate is not known yet, packets go with the first. A PCR that goes
/// backwards, jumps more than 1 s ahead, or follows a `discontinuity_indicator` re-anchors
/// the timeline where the packet would have been released anyway, instead of waiting for
/// the clock to catch up (or forever). Wrap-around of the 33-bit PCR base is a normal step.
/// Before the first PCR, and for files without any, packets are paced at the fallback
/// bitrate. Release times never go backwards.
#[derive(Debug)]
pub struct PcrPacer {
    start: Instant,
    fallback_rate_bps: u64,
    pcr_pid: Option<u16>,
    /// Byte position of the next packet.
    bytes: u64,
    anchor: Option<Anchor>,
    last_release: Instant,
    reanchors: u64,
}

impl PcrPacer {
    /// A pacer whose first packet is due at `start`. `fallback_rate_bps` paces packets while
    /// no PCR is known (at least 1 kbit/s).
    pub fn new(start: Instant, fallback_rate_bps: u64) -> PcrPacer {
        PcrPacer {
            start,
            fallback_rate_bps: fallback_rate_bps.max(MIN_FALLBACK_RATE_BPS),
            pcr_pid: None,
            bytes: 0,
            anchor: None,
            last_release: start,
            reanchors: 0,
        }
    }

    /// Times the timeline was re-anchored at a PCR discontinuity.
    pub fn reanchors(&self) -> u64 {
        self.reanchors
    }

    /// When `packet`, the next packet of the stream, should be released.
    pub fn release_at(&mut self, packet: &Packet) -> Instant {
        let position = self.bytes;
        self.bytes += packet.len() as u64;
        let header = PacketHeader::parse(packet);
        let af = if header.transport_error { None } else { ts::adaptation_field(packet) };
        if let Some((pcr, discontinuity)) = af.and_then(|af| af.pcr.map(|pcr| (pcr, af.discontinuity))) {
            if *self.pcr_pid.get_or_insert(header.pid) == header.pid {
                let at = self.on_pcr(position, pcr, discontinuity);
                return self.release(at);
            }
        }
        let at = self.extrapolate(position);
        self.release(at)
    }

    fn release(&mut self, at: Instant) -> Instant {
        self.last_release = self.last_release.max(at);
        self.last_release
    }

    /// Where a packet at `position` goes without a PCR of its own.
    fn extrapolate(&self, position: u64) -> Instant {
        let after = match self.anchor {
            None => self.start.checked_add(bytes_duration(position, self.fallback_rate_bps)),
            // Between the first two PCRs the rate is unknown: release with the PCR. Early by
            // at most one PCR interval is harmless downstream; late would stall viewers.
            Some(Anchor { at, rate_bps: None, .. }) => Some(at),
            Some(Anchor { at, byte, rate_bps: Some(rate), interval, .. }) => {
                let cap = interval.unwrap_or(DEFAULT_PCR_INTERVAL);
                at.checked_add(bytes_duration(position.saturating_sub(byte), rate).min(cap))
            }
        };
        after.unwrap_or(self.last_release)
    }

    fn on_pcr(&mut self, position: u64, pcr: u64, discontinuity: bool) -> Instant {
        let Some(last) = self.anchor else {
            let at = self.extrapolate(position).max(self.last_release);
            self.anchor = Some(Anchor { pcr, at, byte: position, rate_bps: None, interval: None });
            return at;
        };
        let step = (pcr % PCR_MODULUS + PCR_MODULUS - last.pcr % PCR_MODULUS) % PCR_MODULUS;
        if discontinuity || step > MAX_PCR_STEP {
            // Backwards steps show up as nearly a whole wrap, so this catches them too.
            self.reanchors += 1;
            let at = self.extrapolate(position).max(self.last_release);
            self.anchor = Some(Anchor { pcr, at, byte: position, ..last });
            return at;
        }
        let interval = ticks_duration(step);
        let at = last.at.checked_add(interval).unwrap_or(self.last_release);
        let bytes = position.saturating_sub(last.byte);
        let (rate_bps, interval) = if step > 0 && bytes > 0 {
            let rate = u128::from(bytes) * 8 * u128::from(PCR_HZ) / u128::from(step);
            (Some(u64::try_from(rate).unwrap_or(u64::MAX).max(1)), Some(interval))
        } else {
            (last.rate_bps, last.interval)
        };
        self.anchor = Some(Anchor { pcr, at, byte: position, rate_bps, interval });
        at
    }
}

/// Time to send `bytes` at `rate_bps` (rate ≥ 1).
fn bytes_duration(bytes: u64, rate_bps: u64) -> Duration {
    let nanos = u128::from(bytes) * 8 * 1_000_000_000 / u128::from(rate_bps.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A count of 27 MHz ticks as a duration.
fn ticks_duration(ticks: u64) -> Duration {
    let nanos = u128::from(ticks) * 1000 / 27;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "looper_tests.rs"]
mod tests;
