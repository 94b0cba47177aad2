//! One memoizing chunk verifier shared by all simulated nodes.
//!
//! Every node verifies every chunk it receives (as the real code does), but in a simulated
//! swarm the chunks are the same objects passed around: 10,000 viewers × 1,200 chunks
//! (plus duplicates) are over 12 million verifications of only 1,200 distinct chunks. One
//! Ed25519 verification of a 25 kB chunk (SHA-512 over the payload, then the curve
//! arithmetic) took 82 µs on the 2-core development machine, so that would be over 16
//! minutes of CPU. This verifier checks each distinct chunk once, for real, and answers
//! later questions about *the same bytes* from a cache.
//!
//! "The same bytes" without hashing 25 kB per question: a chunk's payload is a `Bytes`,
//! immutable while any handle to it exists, so two chunks whose payloads have the same
//! pointer and length while one of them is alive hold the same bytes. The cache keeps a
//! clone of every chunk it answered for, which keeps that memory alive (a freed buffer
//! could otherwise be reused for different bytes at the same address), and compares every
//! signed field and the signature exactly. A forged chunk differs in some field, in its
//! signature or in its payload buffer, so it misses the cache and is verified for real.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rill_swarm::chunk::{ChannelId, Chunk};
use rill_swarm::node::Verify;

/// Cached chunks before the cache is emptied (a run of 60 s has 1,200 chunks; the bound
/// only matters for long runs, and emptying costs one real verification per chunk later).
const MAX_CACHED: usize = 65_536;

/// Chunks seen under one cache key, with the channel asked about and the answer.
type Seen = Vec<(Chunk, ChannelId, bool)>;

#[derive(Debug, Default)]
struct Cache {
    /// (seq, payload pointer, payload length) → chunks seen with that key and the answer.
    entries: HashMap<(u64, usize, usize), Seen>,
    cached: usize,
    /// Real Ed25519 verifications done.
    checks: u64,
    /// Questions answered.
    asked: u64,
}

/// A handle to the shared cache; clone one per node. (A mutex, not a `RefCell`, because
/// verifiers are `Send`: live nodes run on a multi-threaded runtime. The simulator is single
/// threaded, so the lock is never contended.)
#[derive(Debug, Clone, Default)]
pub struct SharedVerifier(Arc<Mutex<Cache>>);

impl SharedVerifier {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // A panic elsewhere while holding the lock leaves a usable cache (entries are only
        // ever added whole), so a poisoned lock is taken as is.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (real verifications, questions answered).
    pub fn counts(&self) -> (u64, u64) {
        let c = self.cache();
        (c.checks, c.asked)
    }
}

fn same_chunk(a: &Chunk, b: &Chunk) -> bool {
    a.seq == b.seq
        && a.ingest_us == b.ingest_us
        && a.keyframe == b.keyframe
        && a.stripe == b.stripe
        && a.stripes == b.stripes
        && a.signature == b.signature
        && a.payload.as_ptr() == b.payload.as_ptr()
        && a.payload.len() == b.payload.len()
}

impl Verify for SharedVerifier {
    fn verify(&mut self, channel: &ChannelId, chunk: &Chunk) -> bool {
        let mut cache = self.cache();
        cache.asked += 1;
        let key = (chunk.seq, chunk.payload.as_ptr() as usize, chunk.payload.len());
        if let Some(list) = cache.entries.get(&key) {
            if let Some((_, _, ok)) = list.iter().find(|(c, ch, _)| ch == channel && same_chunk(c, chunk)) {
                return *ok;
            }
        }
        let ok = chunk.verify(channel);
        cache.checks += 1;
        if cache.cached >= MAX_CACHED {
            cache.entries.clear();
            cache.cached = 0;
        }
        cache.cached += 1;
        cache.entries.entry(key).or_default().push((chunk.clone(), *channel, ok));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use rill_swarm::chunk::ChannelKey;

    #[test]
    fn verifies_once_and_still_catches_forgeries() {
        let key = ChannelKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let channel = key.channel_id();
        let payload = Bytes::from(vec![7u8; 1000]);
        let chunk = Chunk::sign(&key, 5, 250_000, true, 4, payload.clone()).unwrap();
        let mut a = SharedVerifier::default();
        let mut b = a.clone();
        assert!(a.verify(&channel, &chunk));
        assert!(b.verify(&channel, &chunk.clone()));
        assert_eq!(a.counts(), (1, 2));
        // Same payload buffer, a signed field changed: verified for real, and refused.
        let mut forged = chunk.clone();
        forged.ingest_us += 1;
        assert!(!b.verify(&channel, &forged));
        // Same fields, different bytes in a different buffer: verified for real, refused.
        let mut forged = chunk.clone();
        forged.payload = Bytes::from(vec![8u8; 1000]);
        assert!(!a.verify(&channel, &forged));
        // Same bytes in another buffer: verified for real, accepted.
        let mut copy = chunk.clone();
        copy.payload = Bytes::from(payload.to_vec());
        assert!(a.verify(&channel, &copy));
        // Another channel: not answered from the cache.
        let other = ChannelKey::generate(&mut ChaCha20Rng::seed_from_u64(2)).channel_id();
        assert!(!a.verify(&other, &chunk));
        assert_eq!(a.counts(), (5, 6));
        // And the cached answers stay right.
        assert!(b.verify(&channel, &chunk));
        assert_eq!(a.counts(), (5, 7));
    }
}
