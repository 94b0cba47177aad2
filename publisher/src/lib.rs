//! The rill publisher's ingest: an MPEG transport stream in (stdin, a file played as a live
//! channel, or `udp://`), chunks of whole TS packets out, cut where a viewer can join.
//!
//! ```text
//!  source (IO)                          chunker (sans-IO)
//!  stdin ─┐                             framer: 188-byte packets, resync after garbage
//!  file ──┼─ (Instant, Bytes) ───────►  psi: PAT/PMT → video PID, PSI packet copies  ──► MediaChunk
//!  udp ───┘   file: PcrPacer pacing,    ts: keyframe = random_access_indicator or       (payload,
//!             LoopRewriter for --loop       IDR/IRAP NAL at a PES start                  keyframe,
//!                                                                                        ingested_at)
//! ```
//!
//! The caller (the `rill publish` glue) opens an [`Input`], pushes every batch it reads
//! into a [`Chunker`] with the batch's time, drains [`Chunker::poll_chunk`], and calls
//! [`Chunker::handle_timeout`] when [`Chunker::poll_timeout`] is due; each chunk is then
//! signed and handed to the swarm.
//!
//! # Chunking rules, and why
//! The full rules are in [`chunker`]; in short:
//! - Chunks hold whole 188-byte packets: a lost chunk costs whole packets, and the demuxer
//!   resynchronises at once.
//! - A chunk closes when a video keyframe starts, and the keyframe chunk begins with the PAT
//!   and PMT that precede it (as ffmpeg writes them), so a newcomer starting there can
//!   decode, and the swarm's fast join can hand out the latest keyframe chunk. When the
//!   input has no PAT/PMT right before a keyframe, copies are put in front (the one case
//!   where output bytes differ from input bytes; counted in `psi_inserted`).
//! - A chunk also closes after `target_duration` (25 ms by default) of ingest time, which
//!   bounds the delay chunking adds, and before it exceeds `max_chunk_bytes`.
//! - Audio-only programs join at each PAT+PMT.
//! - Garbage between packets is skipped and counted, never forwarded; input that never
//!   shows packet sync is an error ([`InputError::NotMpegTs`]).
//!
//! Every buffer is bounded (the bound is stated where it is defined), no input makes the
//! code panic, and the cores take `now` instead of reading a clock.
//!
//! Section numbers in comments refer to ISO/IEC 13818-1 (ITU-T H.222.0, MPEG-2 systems);
//! NAL unit types to ITU-T H.264, H.265 and H.266.

pub mod chunker;
pub mod framer;
pub mod looper;
pub mod psi;
pub mod source;
pub mod ts;

#[cfg(test)]
mod testutil;

pub use chunker::{Chunker, ChunkerConfig, ChunkerStats, InputError, MediaChunk};
pub use looper::{LoopRewriter, PcrPacer};
pub use source::{open, Input, InputOptions, InputSpec, SourceError, SpecError};
