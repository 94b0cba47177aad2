//! rill viewer: turns the verified chunks a swarm node receives into a stream a person can
//! watch.
//!
//! ```text
//! swarm node --verified chunks--> PlayoutBuffer --in order, on time--> OutputSink (stdout, file, udp://)
//!                                                                  \-> HttpStreamServer (mpv, VLC, browsers)
//! ```
//!
//! - [`playout`]: the playout buffer, sans-IO. Chunks arrive out of order and with jitter
//!   from many peers; the buffer hands them out in sequence order, each at its ingest time
//!   plus a latency target, so the output keeps the pace of the publisher's input. It
//!   starts at a keyframe (a decoder can start nowhere else), gives up a missing chunk once
//!   the chunk after it is due (waiting longer would stall everything behind it), and when
//!   output falls more than `max_behind` past the deadlines it skips to a recent keyframe
//!   instead of drifting ever further from live. Every chunk not output is counted (lost,
//!   late, duplicate) under the names of shared/METRICS.md.
//! - [`output`]: where the stream goes: `-`, a file, or `udp://HOST:PORT` (1316-byte
//!   datagrams of whole TS packets, unicast or multicast), written by a task behind a
//!   bounded queue so a slow reader never blocks the node.
//! - [`http`]: the stream as one long HTTP response per client (`Content-Type:
//!   video/mp2t`, CORS open), each new client starting at the latest keyframe group, and
//!   the bounded request-head reader other small endpoints reuse.
//! - [`histogram`]: the fixed-size histogram behind the playout lag percentiles.

pub mod histogram;
pub mod http;
pub mod output;
pub mod playout;
#[cfg(test)]
mod testutil;

pub use histogram::LagHistogram;
pub use http::{
    read_request_head, respond, HttpError, HttpStats, HttpStreamConfig, HttpStreamServer, RequestHead,
};
pub use output::{OutputError, OutputSink, OutputSpec, OutputStats, SpecError};
pub use playout::{PlayoutBuffer, PlayoutChunk, PlayoutConfig, PlayoutStats};
