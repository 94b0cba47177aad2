//! Chunks: the unit the publisher signs and the swarm schedules (shared/METRICS.md).
//!
//! A channel is named by its publisher's Ed25519 public key ([`ChannelId`]); every chunk
//! carries an Ed25519 signature (RFC 8032 §5.1) by that key over all of its fields, so any
//! node can check a chunk it got from any peer without trusting that peer.
//!
//! ```text
//! signed message:
//!   "rill-chunk-v1"   13 bytes  domain separation: these bytes sign nothing else
//!   channel id        32 bytes  binds the chunk to one channel
//!   seq               u64 BE
//!   ingest_us         u64 BE
//!   flags             u8        bit 0: keyframe; other bits zero
//!   stripe            u8        seq % stripes
//!   stripes           u8        ≥ 1
//!   payload length    u32 BE
//!   payload
//! wire encoding (inside `Message::Chunk`):
//!   the signed message without the domain prefix and the channel id (the receiver knows
//!   which channel it joined and verifies against that), then the 64-byte signature.
//! ```
//! Fixed-width integers rather than varints: the header is 23 bytes against a payload of
//! tens of kilobytes, and fixed widths take every `u64` without a range check.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use rill_transport::crypto::identity::{IdentityError, NodeId, NODE_ID_TEXT_LEN};
use rill_transport::wire::Reader;

use crate::message::MAX_CHUNK_PAYLOAD;

/// Domain-separation prefix of the signed message. A channel key that ever signs anything
/// else (a future message type, another protocol version) cannot have that signature
/// replayed as a chunk, as long as the other use has its own prefix.
pub const SIGNING_DOMAIN: &[u8] = b"rill-chunk-v1";

/// Bytes of an Ed25519 signature (RFC 8032 §5.1.6: R and S, 32 bytes each).
pub const SIGNATURE_LEN: usize = 64;

/// Bytes of an Ed25519 public key, which is also the channel id (RFC 8032 §5.1.5).
pub const CHANNEL_ID_LEN: usize = 32;

/// Characters in the text form of a channel id: the same base32 form as a node id.
pub const CHANNEL_ID_TEXT_LEN: usize = NODE_ID_TEXT_LEN;

/// Bytes of a chunk's fields before the payload: seq, ingest_us, flags, stripe, stripes,
/// payload length.
pub const CHUNK_HEADER_LEN: usize = 8 + 8 + 1 + 1 + 1 + 4;

/// Flag bit: the payload starts with a keyframe.
const FLAG_KEYFRAME: u8 = 0x01;

/// A channel is named by the publisher's Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(pub [u8; 32]);

/// Text form: lowercase RFC 4648 base32 without padding, 52 characters, exactly like a
/// [`NodeId`] (both are 32-byte public keys), and parsed just as strictly: one text per id.
impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&NodeId(self.0), f)
    }
}

impl FromStr for ChannelId {
    type Err = ChannelIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The base32 codec lives with `NodeId`; only its error names are node-specific.
        match s.parse::<NodeId>() {
            Ok(id) => Ok(ChannelId(id.0)),
            Err(IdentityError::IdLength(n)) => Err(ChannelIdError::Length(n)),
            Err(IdentityError::IdCharacter { position, character }) => {
                Err(ChannelIdError::Character { position, character })
            }
            Err(IdentityError::IdNonCanonical) => Err(ChannelIdError::NonCanonical),
            Err(other) => Err(ChannelIdError::Other(other)),
        }
    }
}

/// Why a channel id text did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ChannelIdError {
    #[error("channel id must be {CHANNEL_ID_TEXT_LEN} base32 characters, got {0}")]
    Length(usize),
    #[error("invalid character {character:?} at position {position} of channel id (expected a-z or 2-7)")]
    Character { position: usize, character: char },
    #[error("channel id is not canonical: the unused trailing bits of its last character are not zero")]
    NonCanonical,
    /// Any other reason the shared id parser may give in a later version.
    #[error("invalid channel id: {0}")]
    Other(IdentityError),
}

/// The publisher's signing key. Its public half is the [`ChannelId`].
///
/// The secret is zeroized on drop (ed25519-dalek's `zeroize` feature); `Debug` shows only
/// the channel id.
#[derive(Clone)]
pub struct ChannelKey {
    key: SigningKey,
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelKey")
            .field("channel", &format_args!("{}", self.channel_id()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ChannelKey {
    /// A fresh key from `rng` (32 random bytes are the RFC 8032 §5.1.5 private key).
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        ChannelKey { key: SigningKey::generate(rng) }
    }

    /// The key with this RFC 8032 private key (the 32-byte seed, not the expanded key).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        ChannelKey { key: SigningKey::from_bytes(&secret) }
    }

    /// The private key, for saving. Do not log it.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The channel this key publishes: its public key.
    pub fn channel_id(&self) -> ChannelId {
        ChannelId(self.key.verifying_key().to_bytes())
    }
}

/// Why a chunk could not be signed or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `sign` was asked for a channel of zero stripes (`seq % 0` has no answer).
    #[error("a channel has at least one stripe, got 0")]
    NoStripes,
    #[error("chunk payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("chunk truncated")]
    Truncated,
    /// Flag bits this version does not know. They are signed, so a chunk carrying them
    /// could not verify here anyway; refusing them early keeps the encoding canonical.
    #[error("unknown chunk flags {0:#04x}")]
    Flags(u8),
    /// Includes `stripes == 0`.
    #[error("stripe {stripe} out of range for a channel of {stripes} stripes")]
    Stripe { stripe: u8, stripes: u8 },
    #[error("{0} bytes after the end of the chunk")]
    TrailingBytes(usize),
}

/// One signed chunk of the stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the stream, from 0, one per chunk.
    pub seq: u64,
    /// Publisher's clock when it ingested the chunk's last byte, µs. `rill publish` uses
    /// UNIX time, so viewers on the same host or on clock-synchronised hosts read arrival
    /// and playout lag directly (shared/METRICS.md); the simulator uses its virtual clock.
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

impl Chunk {
    /// Signs a new chunk. Its stripe is `seq % stripes`.
    ///
    /// Errors: `stripes` is 0, or the payload is larger than [`MAX_CHUNK_PAYLOAD`] (no
    /// peer would accept it).
    pub fn sign(
        key: &ChannelKey,
        seq: u64,
        ingest_us: u64,
        keyframe: bool,
        stripes: u8,
        payload: Bytes,
    ) -> Result<Chunk, ChunkError> {
        if stripes == 0 {
            return Err(ChunkError::NoStripes);
        }
        if payload.len() > MAX_CHUNK_PAYLOAD {
            return Err(ChunkError::PayloadTooLarge { len: payload.len(), max: MAX_CHUNK_PAYLOAD });
        }
        let stripe = (seq % u64::from(stripes)) as u8;
        let mut chunk = Chunk { seq, ingest_us, keyframe, stripe, stripes, payload, signature: [0; 64] };
        chunk.signature = key.key.sign(&chunk.signed_message(&key.channel_id())).to_bytes();
        Ok(chunk)
    }

    /// Whether this chunk was signed by `channel`'s key, exactly as it is, and is striped
    /// consistently (`stripes ≥ 1`, `stripe == seq % stripes`).
    ///
    /// Uses `verify_strict`: besides the RFC 8032 §5.1.7 checks (S < L, which every dalek
    /// `verify` does), it refuses a small-order public key or R. RFC 8032 §5.1.7 allows
    /// either the cofactored or the cofactorless equation, so plain verification can accept
    /// a signature another implementation rejects, and with a small-order (weak) key one
    /// signature verifies for many messages; the ed25519-dalek docs of `verify_strict`
    /// ("Point malleability") explain both. A publisher using `sign` never produces such
    /// signatures, so strictness costs honest chunks nothing.
    pub fn verify(&self, channel: &ChannelId) -> bool {
        if self.stripes == 0 || u64::from(self.stripe) != self.seq % u64::from(self.stripes) {
            return false;
        }
        // The signed length field is 32 bits: a longer payload has no signed form.
        if u32::try_from(self.payload.len()).is_err() {
            return false;
        }
        let Ok(key) = VerifyingKey::from_bytes(&channel.0) else {
            return false;
        };
        // ed25519-dalek 2 verifies plain Ed25519 over one contiguous message (its streaming
        // verifier needs the `hazmat` feature), so this costs one copy of the payload per
        // verification, small next to the curve arithmetic.
        let message = self.signed_message(channel);
        key.verify_strict(&message, &Signature::from_bytes(&self.signature)).is_ok()
    }

    /// Bytes of the wire encoding (see the module docs).
    pub fn encoded_len(&self) -> usize {
        CHUNK_HEADER_LEN + self.payload.len() + SIGNATURE_LEN
    }

    /// Appends the wire encoding (see the module docs) to `out`.
    ///
    /// A payload longer than [`MAX_CHUNK_PAYLOAD`] cannot come from `sign`; if a caller
    /// builds one anyway, it is still written in full with a length field saturated at
    /// `u32::MAX`, and every receiver refuses it as too large.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.put_header(out);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&self.signature);
    }

    /// Decodes exactly one chunk from `bytes`; the payload shares `bytes`' memory.
    /// Structural checks only: call [`Chunk::verify`] before trusting it.
    pub fn decode(bytes: Bytes) -> Result<Chunk, ChunkError> {
        let mut reader = Reader::new(&bytes);
        let chunk = Chunk::read(&mut reader, |payload| bytes.slice_ref(payload))?;
        match reader.rest().len() {
            0 => Ok(chunk),
            n => Err(ChunkError::TrailingBytes(n)),
        }
    }

    /// Reads one chunk's wire encoding from `reader`. `payload` turns the payload's bytes
    /// (a slice of the reader's buffer) into the `Bytes` to keep: a copy or a zero-copy
    /// slice of a shared buffer.
    pub(crate) fn read<'a>(
        reader: &mut Reader<'a>,
        payload: impl FnOnce(&'a [u8]) -> Bytes,
    ) -> Result<Chunk, ChunkError> {
        let seq = read_u64(reader)?;
        let ingest_us = read_u64(reader)?;
        let flags = read_u8(reader)?;
        if flags & !FLAG_KEYFRAME != 0 {
            return Err(ChunkError::Flags(flags));
        }
        let stripe = read_u8(reader)?;
        let stripes = read_u8(reader)?;
        if stripe >= stripes {
            return Err(ChunkError::Stripe { stripe, stripes });
        }
        let len = u32::from_be_bytes(read_array(reader)?) as usize;
        // Checked before reading the payload, so an oversized claim fails as too large
        // rather than as truncated, and a huge claim never makes us wait for more data.
        if len > MAX_CHUNK_PAYLOAD {
            return Err(ChunkError::PayloadTooLarge { len, max: MAX_CHUNK_PAYLOAD });
        }
        let body = reader.bytes(len as u64).map_err(|_| ChunkError::Truncated)?;
        let signature = read_array(reader)?;
        Ok(Chunk {
            seq,
            ingest_us,
            keyframe: flags & FLAG_KEYFRAME != 0,
            stripe,
            stripes,
            payload: payload(body),
            signature,
        })
    }

    /// The fields before the payload, as both the signed message and the wire carry them.
    fn put_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ingest_us.to_be_bytes());
        out.push(if self.keyframe { FLAG_KEYFRAME } else { 0 });
        out.push(self.stripe);
        out.push(self.stripes);
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
    }

    /// The bytes the signature covers (see the module docs).
    fn signed_message(&self, channel: &ChannelId) -> Vec<u8> {
        let len = SIGNING_DOMAIN.len() + CHANNEL_ID_LEN + CHUNK_HEADER_LEN + self.payload.len();
        let mut message = Vec::with_capacity(len);
        message.extend_from_slice(SIGNING_DOMAIN);
        message.extend_from_slice(&channel.0);
        self.put_header(&mut message);
        message.extend_from_slice(&self.payload);
        message
    }
}

fn read_u8(reader: &mut Reader<'_>) -> Result<u8, ChunkError> {
    reader.u8().map_err(|_| ChunkError::Truncated)
}

fn read_u64(reader: &mut Reader<'_>) -> Result<u64, ChunkError> {
    read_array(reader).map(u64::from_be_bytes)
}

fn read_array<const N: usize>(reader: &mut Reader<'_>) -> Result<[u8; N], ChunkError> {
    let bytes = reader.bytes(N as u64).map_err(|_| ChunkError::Truncated)?;
    bytes.try_into().map_err(|_| ChunkError::Truncated)
}

/// Verifies every chunk with Ed25519 ([`Chunk::verify`]), remembering nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ed25519Verifier;

impl crate::node::Verify for Ed25519Verifier {
    fn verify(&mut self, channel: &ChannelId, chunk: &Chunk) -> bool {
        chunk.verify(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Verify;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn key(seed: u64) -> ChannelKey {
        ChannelKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    fn sample(key: &ChannelKey) -> Chunk {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        Chunk::sign(key, 1_000_003, 123_456_789, true, 4, Bytes::from(payload)).unwrap()
    }

    /// Re-signs `chunk` as it is, even when its fields are inconsistent, so that a test can
    /// show that the consistency checks (not just the signature) reject it.
    fn force_sign(key: &ChannelKey, chunk: &mut Chunk) {
        chunk.signature = key.key.sign(&chunk.signed_message(&key.channel_id())).to_bytes();
    }

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = key(1);
        let chunk = sample(&key);
        assert_eq!(chunk.stripe, (1_000_003 % 4) as u8);
        assert_eq!(chunk.stripes, 4);
        assert!(chunk.keyframe);
        assert!(chunk.verify(&key.channel_id()));
        assert!(Ed25519Verifier.verify(&key.channel_id(), &chunk));
        // Signing is deterministic (RFC 8032 §5.1.6).
        assert_eq!(sample(&key), chunk);
        // Empty payloads and the extreme field values sign and verify too.
        let edge = Chunk::sign(&key, u64::MAX, u64::MAX, false, 255, Bytes::new()).unwrap();
        assert_eq!(edge.stripe, (u64::MAX % 255) as u8);
        assert!(edge.verify(&key.channel_id()));
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 §7.1 TEST 1: the public key is the channel id, and signing the empty
        // message gives the listed signature (so `ChannelKey` is plain Ed25519).
        let key =
            ChannelKey::from_bytes(hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
        assert_eq!(
            key.channel_id().0,
            hex::<32>("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let expected: [u8; 64] = hex(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ));
        assert_eq!(key.key.sign(b"").to_bytes(), expected);
        assert_eq!(ChannelKey::from_bytes(key.to_bytes()).channel_id(), key.channel_id());
    }

    #[test]
    fn every_signed_bit_matters() {
        let key = key(2);
        let channel = key.channel_id();
        let chunk = sample(&key);
        let rejected = |c: &Chunk| !c.verify(&channel);
        for bit in 0..64 {
            let mut c = chunk.clone();
            c.seq ^= 1 << bit;
            // Keep the stripe consistent so the signature is what rejects it.
            c.stripe = (c.seq % u64::from(c.stripes)) as u8;
            assert!(rejected(&c), "seq bit {bit}");
            let mut c = chunk.clone();
            c.ingest_us ^= 1 << bit;
            assert!(rejected(&c), "ingest_us bit {bit}");
        }
        let mut c = chunk.clone();
        c.keyframe = !c.keyframe;
        assert!(rejected(&c), "keyframe");
        for bit in 0..8 {
            let mut c = chunk.clone();
            c.stripe ^= 1 << bit;
            assert!(rejected(&c), "stripe bit {bit}");
            let mut c = chunk.clone();
            c.stripes ^= 1 << bit;
            assert!(rejected(&c), "stripes bit {bit}");
        }
        // Re-striping consistently (seq 1_000_003: stripe 3 of 4 → stripe 1 of 2) is still
        // caught by the signature.
        let mut c = chunk.clone();
        c.stripes = 2;
        c.stripe = (c.seq % 2) as u8;
        assert!(rejected(&c), "re-striped");
        let len = chunk.payload.len();
        for &i in &[0, 1, 2, 499, 500, 997, len - 2, len - 1] {
            for bit in 0..8 {
                let mut payload = chunk.payload.to_vec();
                payload[i] ^= 1 << bit;
                let c = Chunk { payload: Bytes::from(payload), ..chunk.clone() };
                assert!(rejected(&c), "payload byte {i} bit {bit}");
            }
        }
        let mut c = chunk.clone();
        c.payload = chunk.payload.slice(..len - 1);
        assert!(rejected(&c), "payload shortened");
        let mut c = chunk.clone();
        c.payload = Bytes::from([&chunk.payload[..], &[0]].concat());
        assert!(rejected(&c), "payload extended");
        for bit in 0..SIGNATURE_LEN * 8 {
            let mut c = chunk.clone();
            c.signature[bit / 8] ^= 1 << (bit % 8);
            assert!(rejected(&c), "signature bit {bit}");
        }
        assert!(chunk.verify(&channel));
    }

    #[test]
    fn wrong_channel_rejected() {
        let chunk = sample(&key(3));
        assert!(!chunk.verify(&key(4).channel_id()));
        let mut channel = key(3).channel_id();
        channel.0[31] ^= 1;
        assert!(!chunk.verify(&channel));
        // Not a curve point, and the identity point (small order, so a weak key).
        assert!(!chunk.verify(&ChannelId([0xff; 32])));
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!chunk.verify(&ChannelId(identity)));
    }

    #[test]
    fn inconsistent_stripe_rejected_even_when_signed() {
        let key = key(5);
        let channel = key.channel_id();
        let mut chunk = sample(&key);
        chunk.stripe = (chunk.stripe + 1) % chunk.stripes;
        force_sign(&key, &mut chunk);
        assert!(!chunk.verify(&channel));
        // The forced signature itself is fine: restoring consistency makes it verify.
        let mut fixed = chunk.clone();
        fixed.stripe = (fixed.seq % u64::from(fixed.stripes)) as u8;
        force_sign(&key, &mut fixed);
        assert!(fixed.verify(&channel));
    }

    #[test]
    fn zero_stripes_rejected() {
        let key = key(6);
        assert_eq!(Chunk::sign(&key, 0, 0, false, 0, Bytes::new()), Err(ChunkError::NoStripes));
        let mut chunk = Chunk::sign(&key, 0, 0, false, 1, Bytes::new()).unwrap();
        chunk.stripes = 0;
        force_sign(&key, &mut chunk);
        assert!(!chunk.verify(&key.channel_id()));
    }

    #[test]
    fn oversized_payload_refused() {
        let key = key(7);
        let big = Bytes::from(vec![0; MAX_CHUNK_PAYLOAD + 1]);
        assert_eq!(
            Chunk::sign(&key, 0, 0, false, 1, big),
            Err(ChunkError::PayloadTooLarge { len: MAX_CHUNK_PAYLOAD + 1, max: MAX_CHUNK_PAYLOAD })
        );
        let max = Chunk::sign(&key, 0, 0, false, 1, Bytes::from(vec![0; MAX_CHUNK_PAYLOAD])).unwrap();
        assert!(max.verify(&key.channel_id()));
    }

    #[test]
    fn wire_layout() {
        let key = key(8);
        let chunk = Chunk::sign(&key, 0x0102, 0x0304, true, 3, Bytes::from_static(b"xyz")).unwrap();
        let mut out = vec![0xee];
        chunk.encode(&mut out);
        assert_eq!(out.len(), 1 + chunk.encoded_len());
        let mut expected = vec![
            0xee,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            2,
            0,
            0,
            0,
            0,
            0,
            0,
            3,
            4,
            1,
            (0x0102u64 % 3) as u8,
            3,
            0,
            0,
            0,
            3,
        ];
        expected.extend_from_slice(b"xyz");
        expected.extend_from_slice(&chunk.signature);
        assert_eq!(out, expected);
        // The wire header is exactly the signed header.
        let signed = chunk.signed_message(&key.channel_id());
        assert_eq!(&signed[..SIGNING_DOMAIN.len()], SIGNING_DOMAIN);
        assert_eq!(&signed[SIGNING_DOMAIN.len()..][..32], &key.channel_id().0);
        assert_eq!(&signed[SIGNING_DOMAIN.len() + 32..], &out[1..1 + CHUNK_HEADER_LEN + 3]);
    }

    #[test]
    fn decode_errors() {
        let key = key(9);
        let chunk = sample(&key);
        let mut wire = Vec::new();
        chunk.encode(&mut wire);
        let decoded = Chunk::decode(Bytes::from(wire.clone())).unwrap();
        assert_eq!(decoded, chunk);
        for cut in 0..wire.len() {
            assert_eq!(
                Chunk::decode(Bytes::copy_from_slice(&wire[..cut])),
                Err(ChunkError::Truncated),
                "{cut}"
            );
        }
        let mut long = wire.clone();
        long.extend_from_slice(&[0, 0]);
        assert_eq!(Chunk::decode(Bytes::from(long)), Err(ChunkError::TrailingBytes(2)));
        let mut bad = wire.clone();
        bad[16] = 0x03;
        assert_eq!(Chunk::decode(Bytes::from(bad)), Err(ChunkError::Flags(0x03)));
        let mut bad = wire.clone();
        bad[17] = 4;
        assert_eq!(Chunk::decode(Bytes::from(bad)), Err(ChunkError::Stripe { stripe: 4, stripes: 4 }));
        let mut bad = wire.clone();
        bad[17] = 0;
        bad[18] = 0;
        assert_eq!(Chunk::decode(Bytes::from(bad)), Err(ChunkError::Stripe { stripe: 0, stripes: 0 }));
        let mut bad = wire.clone();
        bad[19..23].copy_from_slice(&(MAX_CHUNK_PAYLOAD as u32 + 1).to_be_bytes());
        assert_eq!(
            Chunk::decode(Bytes::from(bad)),
            Err(ChunkError::PayloadTooLarge { len: MAX_CHUNK_PAYLOAD + 1, max: MAX_CHUNK_PAYLOAD })
        );
    }

    #[test]
    fn channel_id_text() {
        let id = key(10).channel_id();
        let text = id.to_string();
        assert_eq!(text.len(), CHANNEL_ID_TEXT_LEN);
        assert_eq!(text, NodeId(id.0).to_string());
        assert_eq!(text.parse::<ChannelId>().unwrap(), id);
        assert_eq!(ChannelId([0; 32]).to_string(), "a".repeat(52));
        assert!(matches!("abc".parse::<ChannelId>(), Err(ChannelIdError::Length(3))));
        let upper = format!("B{}", &text[1..]);
        assert!(matches!(
            upper.parse::<ChannelId>(),
            Err(ChannelIdError::Character { position: 0, character: 'B' })
        ));
        let non_canonical = format!("{}b", &"a".repeat(51));
        assert!(matches!(non_canonical.parse::<ChannelId>(), Err(ChannelIdError::NonCanonical)));
        let err = "abc".parse::<ChannelId>().unwrap_err().to_string();
        assert!(err.contains("channel id"), "{err}");
    }

    #[test]
    fn channel_key_debug_hides_secret() {
        let key = ChannelKey::from_bytes([0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains("66, 66"), "secret bytes leaked: {shown}");
        assert!(shown.contains(&key.channel_id().to_string()), "{shown}");
        assert_eq!(key.to_bytes(), [0x42; 32]);
    }

    fn arb_chunk() -> impl Strategy<Value = (u64, u64, bool, u8, Vec<u8>)> {
        (any::<u64>(), any::<u64>(), any::<bool>(), 1u8..=255, prop::collection::vec(any::<u8>(), 0..3000))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn chunks_round_trip_and_verify(
            (seq, ingest_us, keyframe, stripes, payload) in arb_chunk(),
            seed in any::<u64>(),
        ) {
            let key = key(seed);
            let chunk = Chunk::sign(&key, seq, ingest_us, keyframe, stripes, Bytes::from(payload)).unwrap();
            let mut wire = vec![];
            chunk.encode(&mut wire);
            prop_assert_eq!(wire.len(), chunk.encoded_len());
            let decoded = Chunk::decode(Bytes::from(wire)).unwrap();
            prop_assert!(decoded.verify(&key.channel_id()));
            prop_assert_eq!(decoded, chunk);
        }

        #[test]
        fn chunk_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Chunk::decode(Bytes::from(bytes));
        }

        #[test]
        fn channel_id_text_round_trip(bytes in any::<[u8; 32]>()) {
            let id = ChannelId(bytes);
            prop_assert_eq!(id.to_string().parse::<ChannelId>().unwrap(), id);
        }
    }
}
