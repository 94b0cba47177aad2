//! The per-packet AEAD: ChaCha20-Poly1305 (RFC 8439 §2.8) from `ring`, with the nonce laid out the
//! way Noise's `ChaChaPoly` cipher lays it out (Noise spec rev 34 §12.3).
//!
//! A session keeps one [`PacketKey`] per direction. The sender's packet counter is the nonce, so
//! the key never sees the same nonce twice as long as the counter never repeats; the counter also
//! travels in the cleartext header so the receiver can decrypt packets that arrive out of order
//! (the replay window in [`super::replay`] rejects repeats after authentication).
//!
//! Everything here works in place on caller-owned buffers so that sealing or opening a packet
//! allocates nothing.

use std::fmt;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroizing;

/// Key length of AEAD_CHACHA20_POLY1305: 256 bits (RFC 8439 §2.8).
pub const KEY_LEN: usize = 32;

/// Length of the Poly1305 tag appended to every sealed payload: 128 bits (RFC 8439 §2.8).
pub const TAG_LEN: usize = 16;

/// Length of the ChaCha20 nonce: 96 bits (RFC 8439 §2.3, §2.8).
const NONCE_LEN: usize = 12;

/// The counter reserved for REKEY: Noise spec rev 34 §4.2 encrypts the rekey block under nonce
/// 2^64-1, which §5.1 forbids for ordinary messages so the two can never collide.
const REKEY_COUNTER: u64 = u64::MAX;

/// Decryption failed: the packet was forged, corrupted, replayed under the wrong counter, or
/// sealed under another key. The cause is deliberately not distinguished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet failed authentication")]
pub struct AuthError;

/// One direction's packet key.
///
/// No copy of the raw key bytes is kept: [`PacketKey::next`] derives the following key by
/// encrypting with this one (that is how Noise defines REKEY), so ring's key object is enough and
/// there is one fewer copy of the secret in memory.
pub struct PacketKey {
    aead: LessSafeKey,
}

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material must never reach logs, so only the type is shown.
        f.write_str("PacketKey(ChaCha20-Poly1305, ..)")
    }
}

/// Builds the 96-bit nonce for `counter` exactly as Noise's ChaChaPoly does (Noise spec rev 34
/// §12.3): 32 bits of zeros followed by the 64-bit counter in little-endian order.
fn noise_nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl PacketKey {
    /// Wraps 32 secret bytes as a ChaCha20-Poly1305 key.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // `UnboundKey::new` only fails when the slice length differs from the algorithm's key
        // length; the array type pins that length to 32, the ChaCha20-Poly1305 key size, so the
        // error branch is unreachable for every possible input value.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .expect("a 32-byte array is always a valid ChaCha20-Poly1305 key");
        Self { aead: LessSafeKey::new(unbound) }
    }

    /// Encrypts `payload` in place and returns the tag; `ad` (the cleartext packet header) is
    /// authenticated but not encrypted.
    ///
    /// The caller must never reuse `counter` with this key: a repeated nonce lets an observer
    /// XOR two plaintexts together and forge Poly1305 tags.
    pub fn seal(&self, counter: u64, ad: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        match self.aead.seal_in_place_separate_tag(noise_nonce(counter), Aad::from(ad), payload) {
            Ok(tag) => tag_bytes(&tag),
            Err(_) => {
                // ring refuses only payloads longer than ChaCha20's 32-bit block counter can cover
                // (about 256 GiB, RFC 8439 §2.8), far past any datagram. Should it happen anyway,
                // the buffer still holds plaintext; wipe it so a caller that ignores the problem
                // sends zeros rather than secrets, under a tag that will not authenticate.
                payload.fill(0);
                [0u8; TAG_LEN]
            }
        }
    }

    /// Decrypts `payload` in place after checking `tag` over `ad` and the ciphertext.
    ///
    /// On failure the payload content is unspecified (ring overwrites it with zeros) and must
    /// not be used.
    pub fn open(
        &self,
        counter: u64,
        ad: &[u8],
        payload: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        self.aead
            .open_in_place_separate_tag(noise_nonce(counter), Aad::from(ad), Tag::from(*tag), payload, 0..)
            .map(|_| ())
            .map_err(|_| AuthError)
    }

    /// The next key of this direction, computed as Noise spec rev 34 §4.2 defines REKEY(k): the
    /// first 32 bytes of ENCRYPT(k, 2^64-1, empty ad, 32 zero bytes).
    ///
    /// Both peers can derive it independently, so rekeying needs no extra handshake; and because
    /// it is one-way, a compromised later key does not expose traffic under earlier ones.
    pub fn next(&self) -> PacketKey {
        // The derived bytes are secret; wipe this stack copy once ring has taken its own.
        let mut block = Zeroizing::new([0u8; KEY_LEN]);
        // The tag of the rekey block is discarded, as §4.2 takes only the first 32 bytes of the
        // ciphertext; seal cannot fail on a 32-byte input.
        let _tag = self.seal(REKEY_COUNTER, &[], &mut block[..]);
        PacketKey::new(&block)
    }
}

/// Copies ring's tag into a plain array (its length is always [`TAG_LEN`] for this algorithm).
fn tag_bytes(tag: &Tag) -> [u8; TAG_LEN] {
    <[u8; TAG_LEN]>::try_from(tag.as_ref()).unwrap_or([0u8; TAG_LEN])
}

/// Measures single-core [`PacketKey::seal`] throughput on `packet_bytes`-byte payloads for about
/// `duration`, in Mbit/s of payload (tags and headers not counted).
///
/// Used to size how much traffic one core can encrypt; it seals a scratch buffer under a fixed
/// throwaway key, so it touches no session state.
pub fn seal_throughput_mbps(packet_bytes: usize, duration: Duration) -> f64 {
    // Checking the clock once per batch instead of per packet keeps `Instant::now` out of the
    // measurement for small packets; 64 packets of 1200 bytes take on the order of 10 µs.
    const BATCH: u64 = 64;
    // Associated data the size of rill's cleartext packet header (`wire::HEADER_LEN`, 24 bytes
    // when this was written), so the figure includes the header's Poly1305 cost. Kept local so
    // this module does not depend on the wire format.
    const AD: [u8; 24] = [0xa5; 24];

    let key = PacketKey::new(&[0x42; KEY_LEN]);
    // An absurd size must not abort the process on allocation failure; report no throughput.
    let mut buf = Vec::new();
    if buf.try_reserve_exact(packet_bytes).is_err() {
        return 0.0;
    }
    buf.resize(packet_bytes, 0u8);
    let mut counter = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..BATCH {
            let tag = key.seal(counter, &AD, &mut buf);
            std::hint::black_box(&tag);
            counter = counter.wrapping_add(1);
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            let bits = (counter as f64) * (packet_bytes as f64) * 8.0;
            let secs = elapsed.as_secs_f64();
            return if secs > 0.0 { bits / secs / 1e6 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert_eq!(clean.len() % 2, 0, "odd hex length");
        clean
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).expect("ascii");
                u8::from_str_radix(text, 16).expect("hex digit")
            })
            .collect()
    }

    fn key_a() -> PacketKey {
        PacketKey::new(&[7u8; KEY_LEN])
    }

    /// A fingerprint of a key's behaviour: 32 zero bytes sealed at counter 0, tag included. Two
    /// keys give the same fingerprint only if they are (overwhelmingly likely) the same key.
    fn fingerprint(key: &PacketKey) -> Vec<u8> {
        let mut block = [0u8; 32];
        let tag = key.seal(0, &[], &mut block);
        let mut out = block.to_vec();
        out.extend_from_slice(&tag);
        out
    }

    #[test]
    fn round_trip() {
        let key = key_a();
        let ad = b"header bytes";
        let plain: Vec<u8> = (0..=255u8).cycle().take(1200).collect();
        let mut buf = plain.clone();
        let tag = key.seal(9, ad, &mut buf);
        assert_ne!(buf, plain, "payload must be encrypted in place");
        key.open(9, ad, &mut buf, &tag).expect("authentic packet opens");
        assert_eq!(buf, plain);
    }

    #[test]
    fn empty_payload_and_empty_ad_round_trip() {
        let key = key_a();
        let mut buf = [0u8; 0];
        let tag = key.seal(0, &[], &mut buf);
        assert_eq!(key.open(0, &[], &mut buf, &tag), Ok(()));
        assert_eq!(key.open(1, &[], &mut buf, &tag), Err(AuthError));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let key = key_a();
        let ad = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
        let plain = *b"twenty-four byte payload";
        let mut sealed = plain;
        let tag = key.seal(3, &ad, &mut sealed);

        for bit in 0..ad.len() * 8 {
            let mut bad_ad = ad;
            bad_ad[bit / 8] ^= 1 << (bit % 8);
            let mut buf = sealed;
            assert_eq!(key.open(3, &bad_ad, &mut buf, &tag), Err(AuthError), "ad bit {bit}");
        }
        for bit in 0..sealed.len() * 8 {
            let mut buf = sealed;
            buf[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(key.open(3, &ad, &mut buf, &tag), Err(AuthError), "payload bit {bit}");
        }
        for bit in 0..TAG_LEN * 8 {
            let mut bad_tag = tag;
            bad_tag[bit / 8] ^= 1 << (bit % 8);
            let mut buf = sealed;
            assert_eq!(key.open(3, &ad, &mut buf, &bad_tag), Err(AuthError), "tag bit {bit}");
        }
        // The untouched packet still opens, so the rejections above were due to the flips.
        let mut buf = sealed;
        assert_eq!(key.open(3, &ad, &mut buf, &tag), Ok(()));
        assert_eq!(buf, plain);
    }

    #[test]
    fn wrong_counter_is_rejected() {
        let key = key_a();
        let mut sealed = *b"payload";
        let tag = key.seal(1000, b"ad", &mut sealed);
        for wrong in [0, 999, 1001, 1000 | (1 << 32), u64::MAX] {
            let mut buf = sealed;
            assert_eq!(key.open(wrong, b"ad", &mut buf, &tag), Err(AuthError), "counter {wrong}");
        }
    }

    #[test]
    fn wrong_key_is_rejected() {
        let mut sealed = *b"payload";
        let tag = key_a().seal(5, b"ad", &mut sealed);
        let other = PacketKey::new(&[8u8; KEY_LEN]);
        assert_eq!(other.open(5, b"ad", &mut sealed, &tag), Err(AuthError));
    }

    #[test]
    fn next_differs_and_is_deterministic() {
        let a = key_a();
        let b = key_a();
        let a1 = a.next();
        assert_ne!(fingerprint(&a1), fingerprint(&a));
        assert_eq!(fingerprint(&a1), fingerprint(&b.next()));
        let a2 = a1.next();
        assert_ne!(fingerprint(&a2), fingerprint(&a1));
        assert_ne!(fingerprint(&a2), fingerprint(&a));

        // The old key cannot open what the new key sealed.
        let mut buf = *b"after rekey";
        let tag = a1.seal(0, &[], &mut buf);
        let mut copy = buf;
        assert_eq!(a.open(0, &[], &mut copy, &tag), Err(AuthError));
        assert_eq!(b.next().open(0, &[], &mut buf, &tag), Ok(()));
    }

    #[test]
    fn next_matches_noise_rekey_definition() {
        // Noise spec rev 34 §4.2, computed independently through ring with a hand-built nonce:
        // REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros(32)).
        let raw = [0x3cu8; KEY_LEN];
        let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &raw).expect("key"));
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&[0xff; 8]);
        let mut block = [0u8; KEY_LEN];
        let _tag = ring_key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut block)
            .expect("seal");
        assert_eq!(fingerprint(&PacketKey::new(&raw).next()), fingerprint(&PacketKey::new(&block)));
    }

    /// RFC 8439 §2.8.2 inputs.
    const RFC_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    const RFC_NONCE: &str = "070000004041424344454647";
    const RFC_AAD: &str = "50515253c0c1c2c3c4c5c6c7";
    const RFC_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it.";
    const RFC_CIPHERTEXT: &str = "
        d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
        3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
        92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
        3ff4def08e4b7a9de576d26586cec64b 6116";
    const RFC_TAG: &str = "1ae10b594f09e26a7e902ecbd0600691";

    #[test]
    fn rfc8439_aead_vector_through_ring() {
        // The RFC vector's nonce starts with 07000000, which our fixed all-zero prefix cannot
        // express, so the primitive is validated through ring with the RFC nonce here and our
        // nonce layout is validated separately below.
        let key_bytes = hex(RFC_KEY);
        let nonce: [u8; NONCE_LEN] = hex(RFC_NONCE).try_into().expect("12-byte nonce");
        let aad = hex(RFC_AAD);
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key_bytes).expect("key"));
        assert_eq!(RFC_PLAINTEXT.len(), 114);

        let mut buf = RFC_PLAINTEXT.to_vec();
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut buf)
            .expect("seal");
        assert_eq!(buf, hex(RFC_CIPHERTEXT));
        assert_eq!(tag.as_ref(), &hex(RFC_TAG)[..]);

        let expected_tag: [u8; TAG_LEN] = hex(RFC_TAG).try_into().expect("16-byte tag");
        let opened = key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                Tag::from(expected_tag),
                &mut buf,
                0..,
            )
            .expect("open");
        assert_eq!(opened, RFC_PLAINTEXT);
    }

    #[test]
    fn nonce_layout_matches_noise_chachapoly() {
        // Noise spec rev 34 §12.3: nonce = 4 zero bytes || counter as 64-bit little-endian.
        let key_bytes: [u8; KEY_LEN] = hex(RFC_KEY).try_into().expect("32-byte key");
        let aad = hex(RFC_AAD);
        let counter = u64::from_le_bytes([0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47]);
        let hand_built = hex("000000004041424344454647");

        let reference = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key_bytes).expect("key"));
        let mut expected = RFC_PLAINTEXT.to_vec();
        let expected_tag = reference
            .seal_in_place_separate_tag(
                Nonce::try_assume_unique_for_key(&hand_built).expect("12 bytes"),
                Aad::from(&aad),
                &mut expected,
            )
            .expect("seal");

        let ours = PacketKey::new(&key_bytes);
        let mut actual = RFC_PLAINTEXT.to_vec();
        let tag = ours.seal(counter, &aad, &mut actual);
        assert_eq!(actual, expected);
        assert_eq!(&tag[..], expected_tag.as_ref());
        // Sanity: the prefix matters, so this differs from the RFC's (07000000-prefixed) output.
        assert_ne!(actual, hex(RFC_CIPHERTEXT));
    }

    #[test]
    fn debug_does_not_print_key_bytes() {
        let key = PacketKey::new(&[0xabu8; KEY_LEN]);
        let text = format!("{key:?} {:?}", key.next());
        assert!(!text.contains("171"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("ab"), "{text}");
    }

    #[test]
    fn throughput_is_positive() {
        let mbps = seal_throughput_mbps(1200, Duration::from_millis(20));
        assert!(mbps.is_finite() && mbps > 0.0, "{mbps}");
        assert!(seal_throughput_mbps(0, Duration::ZERO).is_finite());
    }
}
