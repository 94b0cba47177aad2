//! Chunks: the unit the publisher signs and the swarm schedules (shared/METRICS.md).
//!
//! TYPES FIXED; implementation in progress (helper): signing, verification, encoding.

use bytes::Bytes;

/// A channel is named by the publisher's Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(pub [u8; 32]);

/// One signed chunk of the stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the stream, from 0, one per chunk.
    pub seq: u64,
    /// Publisher's clock when it ingested the chunk's last byte, µs since the channel's
    /// epoch (the start of publishing).
    pub ingest_us: u64,
    /// The payload starts with a keyframe (a newcomer can start decoding here).
    pub keyframe: bool,
    /// Which stripe (push tree) carries this chunk: `seq % stripes`.
    pub stripe: u8,
    /// Number of stripes of the channel (signed, so nobody can re-stripe a chunk).
    pub stripes: u8,
    pub payload: Bytes,
    /// Ed25519 signature by the channel key over all the fields above.
    pub signature: [u8; 64],
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("seq", &self.seq)
            .field("stripe", &self.stripe)
            .field("keyframe", &self.keyframe)
            .field("len", &self.payload.len())
            .finish()
    }
}
