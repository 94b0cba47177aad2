//! The chunker: an MPEG-TS byte stream in, chunks of whole TS packets out, cut so that a
//! viewer joining at a keyframe chunk can start decoding at once.
//!
//! # Call order
//! Sans-IO: the caller owns the clock. After reading bytes from the input, [`Chunker::push`]
//! them with the time they were read, then drain [`Chunker::poll_chunk`] until it returns
//! `None`. Sleep until [`Chunker::poll_timeout`] (or the next read), and when it is due call
//! [`Chunker::handle_timeout`] and drain again. At the end of the input call
//! [`Chunker::finish`] and drain once more. Time should only move forward; an earlier `now`
//! is treated as the latest one seen.
//!
//! # Rules, and why
//! - **Whole packets.** A chunk holds whole 188-byte packets, so a viewer that misses a
//!   chunk loses whole packets and its demuxer resynchronises at once.
//! - **Keyframe chunks.** A chunk is closed when a keyframe starts on the video PID
//!   ([`crate::ts::is_random_access_start`]), and the keyframe starts a new chunk flagged
//!   `keyframe`: the swarm keeps the latest such chunk for fast join, and a newcomer starts
//!   there. Bytes before a keyframe and the keyframe never share a chunk. A decoder also needs
//!   the PAT and PMT before the keyframe, so:
//!   - if a PAT and then a PMT arrived after the last video packet (ffmpeg's muxer writes
//!     them right before every video keyframe), the keyframe chunk begins at that PAT and the
//!     output bytes are the input bytes;
//!   - otherwise copies of the most recent PAT and PMT packets are put at the start of the
//!     keyframe chunk and counted in `psi_inserted`. **This is the one case where the output
//!     differs from the input.** The copies repeat the originals' continuity counters, which
//!     a viewer of the whole stream sees as duplicate packets and discards (ISO/IEC 13818-1
//!     §2.4.3.3 allows one duplicate of a packet); a newcomer starting at the chunk sees them
//!     first and can decode.
//! - **Duration.** A chunk is closed once it has been open `target_duration` by ingest time
//!   (inputs are live-paced, so ingest time is stream time). A PAT/PMT pair that arrived
//!   after the last video packet is held back into the next chunk instead, so that a pause in
//!   the input between the PMT and the keyframe (a muxer flushing its buffer there) does not
//!   separate them; a held PAT waits at most [`PSI_HOLD_LIMIT`] (or `target_duration`, if
//!   longer) for the next video packet, which keeps audio behind it from waiting long when
//!   video stops.
//! - **Size.** A chunk is closed before it would exceed `max_chunk_bytes`.
//! - **No video.** If the program's PMT lists no video stream (an audio-only channel), every
//!   PAT followed by a PMT starts a new chunk flagged `keyframe`, so such channels still have
//!   join points.
//! - **Before PSI.** Until the PAT and PMT have been seen, bytes are still chunked by
//!   duration and size, never flagged `keyframe`.
//! - **Garbage.** A lost sync (a packet not starting with 0x47) is counted in `resyncs`; the
//!   bytes passed over until three sync bytes 188 apart are found again are counted in
//!   `bytes_skipped` and never forwarded. Only 188-byte packets are accepted (not 192-byte
//!   M2TS or 204-byte packets). If the first [`NOT_TS_LIMIT`] bytes hold no sync, the input
//!   is not a transport stream and `push` returns [`InputError::NotMpegTs`] from then on.
//!   Packets with `transport_error_indicator` are counted and forwarded unexamined.
//!
//! # Bounds
//! One open chunk of at most `max_chunk_bytes`, at most [`READY_QUEUE_LEN`] closed chunks
//! waiting for `poll_chunk` (when full, the oldest is dropped and counted in
//! `chunks_dropped`: the caller is meant to drain after every push, so this only happens
//! when it does not), the framer's 564-byte window, and one PAT and one PMT (at most 6
//! packets each).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_swarm::message::MAX_CHUNK_PAYLOAD;

use crate::framer::{PacketFramer, Segment};
use crate::psi::{ProgramMode, ProgramTracker};
use crate::ts::{is_random_access_start, Packet, PacketHeader, PACKET_LEN, PAT_PID};

/// Default chunk duration: 25 ms, the delay budget one chunk may add at the publisher (the
/// swarm's queueing-delay target is of the same order).
pub const DEFAULT_TARGET_DURATION: Duration = Duration::from_millis(25);

/// Default largest chunk: 256 KiB, a quarter of the swarm's payload limit, so that a large
/// keyframe at a high bitrate is split rather than held until it is complete.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 256 * 1024;

/// Smallest `max_chunk_bytes` accepted: 16 packets. A keyframe chunk with inserted PSI needs
/// room for a PAT and a PMT (at most 6 packets each) and the keyframe's first packet.
pub const MIN_MAX_CHUNK_BYTES: usize = 16 * PACKET_LEN;

/// Largest `max_chunk_bytes` accepted: the most whole packets strictly below the swarm's
/// payload limit ([`MAX_CHUNK_PAYLOAD`]).
pub const MAX_MAX_CHUNK_BYTES: usize = (MAX_CHUNK_PAYLOAD - 1) / PACKET_LEN * PACKET_LEN;

/// Closed chunks held for [`Chunker::poll_chunk`]: 64, over a second and a half of 25 ms
/// chunks; a caller that drains after each push never has more than a few.
pub const READY_QUEUE_LEN: usize = 64;

/// Bytes without a single sync after which the input is declared not MPEG-TS: 64 KiB, over
/// 340 packets' worth, where a transport stream has a sync every 188 bytes.
pub const NOT_TS_LIMIT: u64 = 64 * 1024;

/// How long a PAT/PMT pair is held waiting for the video packet after it: 500 ms. Long
/// enough for a muxer's output buffer to flush the keyframe behind it at low bitrates.
pub const PSI_HOLD_LIMIT: Duration = Duration::from_millis(500);

/// Chunking parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Close a chunk once it has been open this long (ingest time). Default 25 ms.
    pub target_duration: Duration,
    /// Largest chunk payload, bytes. Default 256 KiB; clamped to
    /// [`MIN_MAX_CHUNK_BYTES`]..=[`MAX_MAX_CHUNK_BYTES`] and rounded down to whole packets.
    pub max_chunk_bytes: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig { target_duration: DEFAULT_TARGET_DURATION, max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES }
    }
}

/// A closed chunk, ready to be signed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    /// Whole TS packets.
    pub payload: Bytes,
    /// The chunk starts where a newcomer can start decoding (PAT, PMT, then a keyframe; or,
    /// with no video, PAT and PMT).
    pub keyframe: bool,
    /// When the chunk's last byte was pushed.
    pub ingested_at: Instant,
}

/// Counters since the chunker was made (shared/METRICS.md names where they exist).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkerStats {
    /// Bytes pushed (the media bytes of METRICS.md).
    pub media_bytes: u64,
    /// Whole packets found in the input.
    pub packets: u64,
    /// Chunks closed.
    pub chunks: u64,
    /// Chunks closed with the keyframe flag.
    pub keyframes: u64,
    /// Closed chunks dropped because the ready queue was full.
    pub chunks_dropped: u64,
    /// Times packet sync was lost.
    pub resyncs: u64,
    /// Bytes dropped while finding sync (garbage, fragments).
    pub bytes_skipped: u64,
    /// Packets with `transport_error_indicator` set (forwarded as they are).
    pub transport_errors: u64,
    /// Keyframe chunks that got copies of the PAT and PMT put in front.
    pub psi_inserted: u64,
    /// PAT/PMT sections rejected (bad CRC, malformed).
    pub psi_errors: u64,
    /// Bytes of an incomplete last packet dropped at `finish`.
    pub partial_packet_bytes: u64,
}

/// Why the input cannot be chunked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(
        "input is not an MPEG transport stream: no packet sync (three 0x47 bytes 188 bytes apart) \
         in the first {after_bytes} bytes"
    )]
    NotMpegTs { after_bytes: u64 },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Chunker {
    framer: PacketFramer,
    core: Core,
}

/// Everything but the framer, so the framer's callback can borrow it.
#[derive(Debug)]
struct Core {
    config: ChunkerConfig,
    program: ProgramTracker,
    open: OpenChunk,
    /// At most [`READY_QUEUE_LEN`].
    ready: VecDeque<MediaChunk>,
    stats: ChunkerStats,
    last_now: Option<Instant>,
    synced_once: bool,
    skipped_before_sync: u64,
    failed: Option<InputError>,
}

#[derive(Default)]
struct OpenChunk {
    /// At most `max_chunk_bytes`.
    buf: Vec<u8>,
    /// Ingest time of its first input packet; `None` while it holds none.
    opened_at: Option<Instant>,
    /// Ingest time of its last input packet.
    last_ingest: Option<Instant>,
    keyframe: bool,
    /// A PAT since the last video packet, where a keyframe chunk could begin.
    candidate: Option<Candidate>,
}

impl std::fmt::Debug for OpenChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenChunk")
            .field("bytes", &self.buf.len())
            .field("opened_at", &self.opened_at)
            .field("keyframe", &self.keyframe)
            .field("candidate", &self.candidate)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Offset of the PAT packet in the open chunk.
    offset: usize,
    /// When the PAT was pushed.
    pat_at: Instant,
    /// Ingest time of the packet before the PAT (`None` if the PAT opened the chunk).
    ingest_before: Option<Instant>,
    /// A PMT packet followed the PAT.
    pmt_seen: bool,
}

impl Chunker {
    pub fn new(config: ChunkerConfig) -> Chunker {
        let max =
            config.max_chunk_bytes.clamp(MIN_MAX_CHUNK_BYTES, MAX_MAX_CHUNK_BYTES) / PACKET_LEN * PACKET_LEN;
        let config = ChunkerConfig { max_chunk_bytes: max, ..config };
        Chunker {
            framer: PacketFramer::new(),
            core: Core {
                open: OpenChunk { buf: Vec::with_capacity(max), ..OpenChunk::default() },
                config,
                program: ProgramTracker::new(),
                ready: VecDeque::with_capacity(READY_QUEUE_LEN),
                stats: ChunkerStats::default(),
                last_now: None,
                synced_once: false,
                skipped_before_sync: 0,
                failed: None,
            },
        }
    }

    /// The configuration in force (after clamping).
    pub fn config(&self) -> &ChunkerConfig {
        &self.core.config
    }

    /// Bytes read from the input at `now`, split anywhere (not aligned to packets).
    /// Errors: [`InputError::NotMpegTs`] once the input is known not to be a transport
    /// stream; the bytes are then ignored, and so is everything pushed later.
    pub fn push(&mut self, now: Instant, bytes: &[u8]) -> Result<(), InputError> {
        if let Some(e) = &self.core.failed {
            return Err(e.clone());
        }
        let now = self.core.advance(now);
        self.core.stats.media_bytes += bytes.len() as u64;
        let core = &mut self.core;
        self.framer.push(bytes, &mut |segment| core.on_segment(now, segment));
        match &self.core.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Closes the open chunk if it has been open `target_duration` (call when
    /// [`Chunker::poll_timeout`] is due; calling early does nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.core.advance(now);
        // A due chunk with a held PAT closes up to the PAT, and the held part has its own
        // (later) deadline, so two rounds settle everything that is due.
        for _ in 0..2 {
            match self.core.deadline() {
                Some(due) if due <= now => self.core.on_deadline(now),
                _ => return,
            }
        }
    }

    /// When [`Chunker::handle_timeout`] should next be called; `None` while no chunk is open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.deadline()
    }

    /// The next closed chunk, oldest first.
    pub fn poll_chunk(&mut self) -> Option<MediaChunk> {
        self.core.ready.pop_front()
    }

    /// End of input: closes the open chunk. A trailing partial packet is counted in
    /// `partial_packet_bytes` and dropped. Bytes pushed afterwards are a new stream that
    /// needs a fresh sync.
    pub fn finish(&mut self, now: Instant) {
        let now = self.core.advance(now);
        let core = &mut self.core;
        self.framer.finish(&mut |segment| core.on_segment(now, segment));
        self.core.close_all(now);
    }

    pub fn stats(&self) -> ChunkerStats {
        ChunkerStats {
            resyncs: self.framer.resyncs(),
            bytes_skipped: self.framer.bytes_skipped(),
            psi_errors: self.core.program.errors(),
            ..self.core.stats
        }
    }
}

impl Core {
    /// Time only moves forward.
    fn advance(&mut self, now: Instant) -> Instant {
        let now = self.last_now.map_or(now, |last| last.max(now));
        self.last_now = Some(now);
        now
    }

    fn hold_limit(&self) -> Duration {
        self.config.target_duration.max(PSI_HOLD_LIMIT)
    }

    fn deadline(&self) -> Option<Instant> {
        let opened_at = self.open.opened_at?;
        match self.open.candidate {
            // The chunk is a held PAT (and what came after it).
            Some(c) if c.offset == 0 => c.pat_at.checked_add(self.hold_limit()),
            // An overflowing deadline means "never": size, keyframes and finish still close.
            _ => opened_at.checked_add(self.config.target_duration),
        }
    }

    fn on_deadline(&mut self, now: Instant) {
        match self.open.candidate {
            Some(c) if c.offset > 0 => self.carry_from_candidate(c),
            _ => self.close_all(now),
        }
    }

    fn on_segment(&mut self, now: Instant, segment: Segment<'_>) {
        if self.failed.is_some() {
            return;
        }
        match segment {
            Segment::Packet(packet) => {
                self.synced_once = true;
                self.on_packet(now, packet);
            }
            Segment::Skipped(bytes) => {
                if !self.synced_once {
                    self.skipped_before_sync += bytes.len() as u64;
                    if self.skipped_before_sync > NOT_TS_LIMIT {
                        self.failed = Some(InputError::NotMpegTs { after_bytes: self.skipped_before_sync });
                    }
                }
            }
            Segment::Partial(bytes) => self.stats.partial_packet_bytes += bytes.len() as u64,
        }
    }

    fn on_packet(&mut self, now: Instant, packet: &Packet) {
        self.stats.packets += 1;
        let header = PacketHeader::parse(packet);
        if header.transport_error {
            // Its PID and flags may be the damaged bits; look at nothing, pass it on.
            self.stats.transport_errors += 1;
            self.make_room(now, PACKET_LEN);
            self.append(now, packet);
            return;
        }
        self.program.on_packet(packet, &header);
        let mode = self.program.mode();
        let pat_start = header.pid == PAT_PID && header.payload_unit_start;
        let pmt_start =
            header.payload_unit_start && header.pid != PAT_PID && Some(header.pid) == self.program.pmt_pid();
        let (video, keyframe) = match mode {
            ProgramMode::Video { pid, codec } if pid == header.pid => {
                (true, is_random_access_start(packet, codec))
            }
            _ => (false, false),
        };

        // Boundaries this packet makes, before it is placed.
        if keyframe {
            self.start_keyframe_chunk(now);
        } else if pmt_start && mode == ProgramMode::NoVideo {
            if let Some(c) = self.open.candidate.take() {
                if self.tail_fits(c, PACKET_LEN) {
                    self.split_at(c);
                    self.open.keyframe = true;
                }
            }
        }
        self.make_room(now, PACKET_LEN);

        // Where a keyframe chunk could begin.
        if video {
            self.open.candidate = None;
        } else if pat_start && self.open.candidate.is_none() {
            self.open.candidate = Some(Candidate {
                offset: self.open.buf.len(),
                pat_at: now,
                ingest_before: if self.open.buf.is_empty() { None } else { self.open.last_ingest },
                pmt_seen: false,
            });
        } else if pmt_start {
            if let Some(c) = &mut self.open.candidate {
                c.pmt_seen = true;
            }
        }
        self.append(now, packet);
    }

    /// The open chunk from the candidate on, plus `extra` bytes, fits in one chunk.
    fn tail_fits(&self, c: Candidate, extra: usize) -> bool {
        self.open.buf.len() - c.offset + extra <= self.config.max_chunk_bytes
    }

    /// Makes the open chunk ready to take a keyframe's first packet at its end, starting
    /// with a PAT and PMT.
    fn start_keyframe_chunk(&mut self, now: Instant) {
        match self.open.candidate.take() {
            Some(c) if c.pmt_seen && self.tail_fits(c, PACKET_LEN) => self.split_at(c),
            _ => {
                self.close_all(now);
                if let Some((pat, pmt)) = self.program.psi_packets() {
                    for p in pat.iter().chain(pmt) {
                        self.open.buf.extend_from_slice(p);
                    }
                    self.stats.psi_inserted += 1;
                }
            }
        }
        self.open.keyframe = true;
    }

    /// Closes the open chunk before the candidate PAT; the PAT and what follows stay open.
    fn split_at(&mut self, c: Candidate) {
        if c.offset == 0 {
            return;
        }
        let payload = Bytes::copy_from_slice(&self.open.buf[..c.offset]);
        self.open.buf.drain(..c.offset);
        let keyframe = std::mem::take(&mut self.open.keyframe);
        // The part before a candidate always holds an input packet, so `ingest_before` is
        // set; the PAT's own time is the closest stand-in otherwise.
        self.emit(MediaChunk { payload, keyframe, ingested_at: c.ingest_before.unwrap_or(c.pat_at) });
        self.open.opened_at = Some(c.pat_at);
    }

    /// On a deadline or size limit with a PAT held: close before it, keep holding it.
    fn carry_from_candidate(&mut self, c: Candidate) {
        self.split_at(c);
        self.open.candidate = Some(Candidate { offset: 0, ingest_before: None, ..c });
    }

    /// Closes what must be closed so `bytes` more fit in the open chunk.
    fn make_room(&mut self, now: Instant, bytes: usize) {
        if self.open.buf.len() + bytes <= self.config.max_chunk_bytes {
            return;
        }
        if let Some(c) = self.open.candidate.filter(|c| c.offset > 0) {
            self.carry_from_candidate(c);
        }
        if self.open.buf.len() + bytes > self.config.max_chunk_bytes {
            self.close_all(now);
        }
    }

    fn append(&mut self, now: Instant, packet: &Packet) {
        self.open.opened_at.get_or_insert(now);
        self.open.last_ingest = Some(now);
        self.open.buf.extend_from_slice(packet);
    }

    fn close_all(&mut self, now: Instant) {
        if !self.open.buf.is_empty() {
            let payload = Bytes::copy_from_slice(&self.open.buf);
            let ingested_at = self.open.last_ingest.unwrap_or(now);
            let keyframe = self.open.keyframe;
            self.emit(MediaChunk { payload, keyframe, ingested_at });
        }
        self.open.buf.clear();
        self.open.opened_at = None;
        self.open.last_ingest = None;
        self.open.keyframe = false;
        self.open.candidate = None;
    }

    fn emit(&mut self, chunk: MediaChunk) {
        if self.ready.len() >= READY_QUEUE_LEN {
            self.ready.pop_front();
            self.stats.chunks_dropped += 1;
        }
        self.stats.chunks += 1;
        self.stats.keyframes += u64::from(chunk.keyframe);
        self.ready.push_back(chunk);
    }
}

#[cfg(test)]
#[path = "chunker_tests.rs"]
mod tests;
