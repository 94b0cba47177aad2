//! The one crypto stack rill's Noise handshakes run on, given to `snow` as a `CryptoResolver`.
//!
//! snow is built without its default primitives, so this module supplies them:
//! - DH: Curve25519 (X25519, RFC 7748) from `x25519-dalek`;
//! - cipher: ChaChaPoly, i.e. ChaCha20-Poly1305 from `ring` via [`PacketKey`], with the Noise
//!   nonce layout (Noise spec rev 34 §12.3);
//! - hash: SHA-256 from `ring::digest` (Noise spec rev 34 §12.5);
//! - randomness: a ChaCha20 stream generator seeded by the caller.
//!
//! Every other choice (448, AESGCM, SHA512, BLAKE2) resolves to `None`, so a peer cannot talk
//! the node into an unreviewed primitive: building a handshake that names one fails.
//!
//! The transport core is deterministic (all randomness comes from an injected seed), so the
//! handshake's ephemeral keys come from a seeded generator rather than the OS. A seed must
//! therefore never be reused across handshakes: the same seed yields the same ephemeral key.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::aead::{PacketKey, KEY_LEN, TAG_LEN};

/// IK with a pre-shared key mixed in after the second message (Noise spec rev 34 §7.5 for IK,
/// §9 for the `psk2` modifier, §8 for the naming), on Curve25519 (§12.1), ChaChaPoly (§12.3) and
/// SHA-256 (§12.5). Test only: snow's cacophony vectors use it; rill uses IKpsk1 (`handshake.rs`).
#[cfg(test)]
const NOISE_IK_PSK: &str = "Noise_IKpsk2_25519_ChaChaPoly_SHA256";

/// XX with a pre-shared key mixed in after the third message (Noise spec rev 34 §7.5 for XX, §9
/// for `psk3`, §8 for the naming). Test only; rill uses XXpsk0 (`handshake.rs`).
#[cfg(test)]
const NOISE_XX_PSK: &str = "Noise_XXpsk3_25519_ChaChaPoly_SHA256";

/// IK without a pre-shared key (Noise spec rev 34 §7.5, §8).
#[cfg(test)]
const NOISE_IK: &str = "Noise_IK_25519_ChaChaPoly_SHA256";

/// XX without a pre-shared key (Noise spec rev 34 §7.5, §8).
#[cfg(test)]
const NOISE_XX: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// DHLEN for Curve25519: public keys, private keys and DH outputs are 32 bytes (Noise spec rev 34
/// §12.1, RFC 7748 §5).
const DH_LEN: usize = 32;

/// HASHLEN of SHA-256 (Noise spec rev 34 §12.5; FIPS 180-4 §1).
const SHA256_HASH_LEN: usize = 32;

/// BLOCKLEN of SHA-256, which Noise's HMAC pads keys to (Noise spec rev 34 §12.5, §4.3).
const SHA256_BLOCK_LEN: usize = 64;

/// Resolves snow's primitive choices to rill's single stack, drawing randomness from `seed`.
pub struct Resolver {
    seed: [u8; 32],
    /// How many generators this resolver has handed out; each gets its own ChaCha20 stream.
    ///
    /// snow asks for a new generator for every `generate_keypair` and every handshake it builds.
    /// Were they all the same stream, a static key made with `generate_keypair` and the handshake
    /// built from the same builder would get identical keys, so the ephemeral key would equal the
    /// static one. Numbering the streams keeps them apart while staying deterministic.
    streams_issued: AtomicU64,
}

impl Resolver {
    /// A resolver whose randomness is derived entirely from `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed, streams_issued: AtomicU64::new(0) }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // The seed determines every ephemeral key this resolver produced, so it is as secret as
        // they are.
        self.seed.zeroize();
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The seed is secret and must not reach logs.
        f.debug_struct("Resolver")
            .field("seed", &"<redacted>")
            .field("streams_issued", &self.streams_issued.load(Ordering::Relaxed))
            .finish()
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let stream = self.streams_issued.fetch_add(1, Ordering::Relaxed);
        let mut rng = ChaCha20Rng::from_seed(self.seed);
        rng.set_stream(stream);
        Some(Box::new(SeededRandom(rng)))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(Curve25519::new())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::SHA256 => Some(Box::new(Sha256::new())),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => Some(Box::new(ChaChaPoly { key: None })),
            _ => None,
        }
    }
}

/// A snow builder for `pattern` (a Noise protocol name; rill's are in `handshake.rs`; the
/// `NOISE_*` names above exercise the resolver against snow's test vectors) whose primitives and
/// randomness come from a fresh [`Resolver`] seeded with `seed`.
///
/// Fails only if `pattern` is not a protocol name snow can parse; the constants in this module
/// always parse. Naming a primitive other than rill's stack parses but makes the later
/// `build_initiator` / `build_responder` fail.
pub fn builder(pattern: &'static str, seed: [u8; 32]) -> Result<snow::Builder<'static>, snow::Error> {
    let params: NoiseParams = pattern.parse()?;
    Ok(snow::Builder::with_resolver(params, Box::new(Resolver::new(seed))))
}

/// The seeded generator handed to snow.
struct SeededRandom(ChaCha20Rng);

impl RngCore for SeededRandom {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

// ChaCha20 keyed by a secret seed is a cryptographically secure generator, which is what snow's
// `Random` bound requires.
impl CryptoRng for SeededRandom {}

impl Random for SeededRandom {}

/// Curve25519 key pair (Noise spec rev 34 §12.1).
struct Curve25519 {
    secret: StaticSecret,
    public: [u8; DH_LEN],
    /// False until a well-formed private key is set; a malformed one disables DH rather than
    /// panicking, which makes the handshake fail at its first DH with `Error::Dh`.
    usable: bool,
}

impl Curve25519 {
    fn new() -> Self {
        Self { secret: StaticSecret::from([0u8; DH_LEN]), public: [0u8; DH_LEN], usable: false }
    }
}

impl Dh for Curve25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        DH_LEN
    }

    fn priv_len(&self) -> usize {
        DH_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        // snow passes caller-supplied static keys through unchecked, so the length is data.
        match <&[u8; DH_LEN]>::try_from(privkey) {
            Ok(key) => {
                // Any 32 bytes are a valid X25519 private key: clamping happens inside the
                // scalar multiplication (RFC 7748 §5), so the bytes are stored unmodified.
                self.secret = StaticSecret::from(*key);
                self.public = PublicKey::from(&self.secret).to_bytes();
                self.usable = true;
            }
            Err(_) => {
                self.secret = StaticSecret::from([0u8; DH_LEN]);
                self.public = [0u8; DH_LEN];
                self.usable = false;
            }
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) {
        // Noise spec rev 34 §12.1: a Curve25519 private key is 32 random bytes.
        let mut bytes = Zeroizing::new([0u8; DH_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        self.set(&bytes[..]);
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        if !self.usable {
            return Err(snow::Error::Dh);
        }
        // snow hands over its whole remote-key buffer (sized for the largest DH it supports), so
        // only the first DHLEN bytes are the key.
        let their: [u8; DH_LEN] =
            pubkey.get(..DH_LEN).and_then(|k| k.try_into().ok()).ok_or(snow::Error::Dh)?;
        let out = out.get_mut(..DH_LEN).ok_or(snow::Error::Dh)?;
        // Low-order points are not rejected: Noise spec rev 34 §12.1 lets them produce an all-zero
        // output and discourages signalling an error, since it does not improve security and
        // makes implementations behave differently.
        let shared = self.secret.diffie_hellman(&PublicKey::from(their));
        out.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// ChaChaPoly (Noise spec rev 34 §12.3) on top of the packet AEAD, which already uses the Noise
/// nonce layout.
struct ChaChaPoly {
    /// `None` until snow sets a key (or after it sets a malformed one).
    key: Option<PacketKey>,
}

impl Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }

    fn set(&mut self, key: &[u8]) {
        self.key = <&[u8; KEY_LEN]>::try_from(key).ok().map(PacketKey::new);
    }

    /// Writes ciphertext then tag to `out` and returns their total length.
    ///
    /// The trait cannot report errors here. If there is no key or `out` is shorter than
    /// `plaintext` plus the tag, nothing is written and 0 is returned: the handshake or transport
    /// message then fails to authenticate at the peer instead of this process panicking.
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let Some(key) = &self.key else {
            return 0;
        };
        let Some(total) = plaintext.len().checked_add(TAG_LEN) else {
            return 0;
        };
        let Some(dst) = out.get_mut(..total) else {
            return 0;
        };
        let (body, tag_dst) = dst.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let tag = key.seal(nonce, authtext, body);
        tag_dst.copy_from_slice(&tag);
        total
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Decrypt)?;
        let body_len = ciphertext.len().checked_sub(TAG_LEN).ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(body_len);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| snow::Error::Decrypt)?;
        let dst = out.get_mut(..body_len).ok_or(snow::Error::Decrypt)?;
        dst.copy_from_slice(body);
        key.open(nonce, authtext, dst, tag).map_err(|_| snow::Error::Decrypt)?;
        Ok(body_len)
    }

    /// REKEY (Noise spec rev 34 §4.2), done by [`PacketKey::next`]. Overridden because snow's
    /// default asserts on the encrypt length, which would panic if no key were set.
    fn rekey(&mut self) {
        if let Some(key) = &self.key {
            self.key = Some(key.next());
        }
    }
}

/// SHA-256 (Noise spec rev 34 §12.5).
struct Sha256 {
    context: ring::digest::Context,
}

impl Sha256 {
    fn new() -> Self {
        Self { context: ring::digest::Context::new(&ring::digest::SHA256) }
    }
}

impl Hash for Sha256 {
    fn name(&self) -> &'static str {
        "SHA256"
    }

    fn block_len(&self) -> usize {
        SHA256_BLOCK_LEN
    }

    fn hash_len(&self) -> usize {
        SHA256_HASH_LEN
    }

    fn reset(&mut self) {
        self.context = ring::digest::Context::new(&ring::digest::SHA256);
    }

    fn input(&mut self, data: &[u8]) {
        self.context.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        // `finish` consumes the context; finishing a copy leaves the running state as it was,
        // which is what a caller reading the hash without a reset would expect.
        let digest = self.context.clone().finish();
        // snow passes buffers of its largest hash length; a shorter one gets a prefix, not a
        // panic.
        for (dst, src) in out.iter_mut().zip(digest.as_ref()) {
            *dst = *src;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snow::{HandshakeState, TransportState};

    /// Noise messages are at most 65535 bytes (Noise spec rev 34 §3).
    const MAX_MSG: usize = 65535;

    fn hex(s: &str) -> Vec<u8> {
        let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert_eq!(clean.len() % 2, 0, "odd hex length");
        clean
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    fn seed(tag: u8) -> [u8; 32] {
        let mut s = [tag; 32];
        s[0] = 0x5e;
        s
    }

    struct Keypair {
        private: Vec<u8>,
        public: Vec<u8>,
    }

    fn keypair(seed_tag: u8) -> Keypair {
        let kp = builder(NOISE_XX, seed(seed_tag)).expect("params").generate_keypair().expect("keypair");
        Keypair { private: kp.private, public: kp.public }
    }

    /// Runs `initiator` and `responder` to completion, alternating writes, with a payload on
    /// every message. Returns every message on the wire, or the first error and the side
    /// ("initiator"/"responder") whose read or write produced it.
    fn run_handshake(
        initiator: &mut HandshakeState,
        responder: &mut HandshakeState,
    ) -> Result<Vec<Vec<u8>>, (&'static str, snow::Error)> {
        let mut wire = Vec::new();
        let mut buf = vec![0u8; MAX_MSG];
        let mut payload = vec![0u8; MAX_MSG];
        let mut initiator_turn = true;
        for step in 0..8u8 {
            if initiator.is_handshake_finished() && responder.is_handshake_finished() {
                return Ok(wire);
            }
            let (writer, reader, reader_name, writer_name) = if initiator_turn {
                (&mut *initiator, &mut *responder, "responder", "initiator")
            } else {
                (&mut *responder, &mut *initiator, "initiator", "responder")
            };
            let body = [b'm', step];
            let len = writer.write_message(&body, &mut buf).map_err(|e| (writer_name, e))?;
            wire.push(buf[..len].to_vec());
            let got = reader.read_message(&buf[..len], &mut payload).map_err(|e| (reader_name, e))?;
            assert_eq!(&payload[..got], &body);
            initiator_turn = !initiator_turn;
        }
        panic!("handshake did not finish");
    }

    /// Checks that two finished handshakes agree on the transcript and on both split keys.
    fn assert_same_session(initiator: HandshakeState, responder: HandshakeState) {
        assert_eq!(initiator.get_handshake_hash(), responder.get_handshake_hash());
        let mut i: TransportState = initiator.into_transport_mode().expect("initiator transport");
        let mut r: TransportState = responder.into_transport_mode().expect("responder transport");
        let mut wire = [0u8; 128];
        let mut plain = [0u8; 128];
        for round in 0..3u8 {
            let msg = [b'i', round];
            let n = i.write_message(&msg, &mut wire).expect("write");
            let m = r.read_message(&wire[..n], &mut plain).expect("responder reads initiator");
            assert_eq!(&plain[..m], &msg);
            let msg = [b'r', round];
            let n = r.write_message(&msg, &mut wire).expect("write");
            let m = i.read_message(&wire[..n], &mut plain).expect("initiator reads responder");
            assert_eq!(&plain[..m], &msg);
        }
        // Rekeying both ends of one direction keeps them in step (Noise spec rev 34 §11.3).
        i.rekey_outgoing();
        r.rekey_incoming();
        let n = i.write_message(b"after rekey", &mut wire).expect("write");
        let m = r.read_message(&wire[..n], &mut plain).expect("read after rekey");
        assert_eq!(&plain[..m], b"after rekey");
    }

    const PSK: [u8; 32] = [0x77; 32];
    const OTHER_PSK: [u8; 32] = [0x78; 32];

    fn ik_pair(
        pattern: &'static str,
        init_psk: Option<&'static [u8; 32]>,
        resp_psk: Option<&'static [u8; 32]>,
        responder_public_as_known: &[u8],
        initiator_seed: u8,
        responder_seed: u8,
    ) -> (HandshakeState, HandshakeState) {
        let init_static = keypair(1);
        let resp_static = keypair(2);
        let mut ib = builder(pattern, seed(initiator_seed))
            .expect("params")
            .local_private_key(&init_static.private)
            .remote_public_key(responder_public_as_known);
        if let Some(psk) = init_psk {
            ib = ib.psk(2, psk);
        }
        let mut rb =
            builder(pattern, seed(responder_seed)).expect("params").local_private_key(&resp_static.private);
        if let Some(psk) = resp_psk {
            rb = rb.psk(2, psk);
        }
        (ib.build_initiator().expect("initiator"), rb.build_responder().expect("responder"))
    }

    fn xx_pair(
        pattern: &'static str,
        init_psk: Option<&'static [u8; 32]>,
        resp_psk: Option<&'static [u8; 32]>,
        initiator_seed: u8,
        responder_seed: u8,
    ) -> (HandshakeState, HandshakeState) {
        let init_static = keypair(1);
        let resp_static = keypair(2);
        let mut ib =
            builder(pattern, seed(initiator_seed)).expect("params").local_private_key(&init_static.private);
        if let Some(psk) = init_psk {
            ib = ib.psk(3, psk);
        }
        let mut rb =
            builder(pattern, seed(responder_seed)).expect("params").local_private_key(&resp_static.private);
        if let Some(psk) = resp_psk {
            rb = rb.psk(3, psk);
        }
        (ib.build_initiator().expect("initiator"), rb.build_responder().expect("responder"))
    }

    #[test]
    fn ik_handshake_completes() {
        let resp_public = keypair(2).public;
        let (mut i, mut r) = ik_pair(NOISE_IK, None, None, &resp_public, 10, 20);
        let wire = run_handshake(&mut i, &mut r).expect("handshake");
        assert_eq!(wire.len(), 2);
        assert_eq!(r.get_remote_static(), Some(&keypair(1).public[..]));
        assert_same_session(i, r);
    }

    #[test]
    fn ik_psk_handshake_completes() {
        let resp_public = keypair(2).public;
        let (mut i, mut r) = ik_pair(NOISE_IK_PSK, Some(&PSK), Some(&PSK), &resp_public, 10, 20);
        assert_eq!(run_handshake(&mut i, &mut r).expect("handshake").len(), 2);
        assert_same_session(i, r);
    }

    #[test]
    fn xx_handshake_completes() {
        let (mut i, mut r) = xx_pair(NOISE_XX, None, None, 10, 20);
        assert_eq!(run_handshake(&mut i, &mut r).expect("handshake").len(), 3);
        assert_eq!(i.get_remote_static(), Some(&keypair(2).public[..]));
        assert_eq!(r.get_remote_static(), Some(&keypair(1).public[..]));
        assert_same_session(i, r);
    }

    #[test]
    fn xx_psk_handshake_completes() {
        let (mut i, mut r) = xx_pair(NOISE_XX_PSK, Some(&PSK), Some(&PSK), 10, 20);
        assert_eq!(run_handshake(&mut i, &mut r).expect("handshake").len(), 3);
        assert_same_session(i, r);
    }

    #[test]
    fn ik_wrong_responder_static_fails_at_responder() {
        // The initiator believes the responder's key is someone else's.
        let wrong_public = keypair(3).public;
        for pattern in [NOISE_IK, NOISE_IK_PSK] {
            let (mut i, mut r) = ik_pair(pattern, Some(&PSK), Some(&PSK), &wrong_public, 10, 20);
            let err = run_handshake(&mut i, &mut r).expect_err("must fail");
            assert_eq!(err, ("responder", snow::Error::Decrypt), "{pattern}");
        }
    }

    #[test]
    fn ik_psk_wrong_psk_fails() {
        // psk2 mixes the key in at the end of the responder's message, so the responder cannot
        // notice a mismatch in message 1; the initiator rejects message 2.
        let resp_public = keypair(2).public;
        let (mut i, mut r) = ik_pair(NOISE_IK_PSK, Some(&PSK), Some(&OTHER_PSK), &resp_public, 10, 20);
        let err = run_handshake(&mut i, &mut r).expect_err("must fail");
        assert_eq!(err, ("initiator", snow::Error::Decrypt));
    }

    #[test]
    fn xx_psk_wrong_psk_fails_at_responder() {
        // psk3 is mixed in by the initiator's final message, which the responder then rejects.
        let (mut i, mut r) = xx_pair(NOISE_XX_PSK, Some(&OTHER_PSK), Some(&PSK), 10, 20);
        let err = run_handshake(&mut i, &mut r).expect_err("must fail");
        assert_eq!(err, ("responder", snow::Error::Decrypt));
    }

    #[test]
    fn same_seeds_give_identical_messages() {
        let resp_public = keypair(2).public;
        let transcript = |a: u8, b: u8| {
            let (mut i, mut r) = ik_pair(NOISE_IK_PSK, Some(&PSK), Some(&PSK), &resp_public, a, b);
            run_handshake(&mut i, &mut r).expect("handshake")
        };
        assert_eq!(transcript(10, 20), transcript(10, 20));
        assert_ne!(transcript(10, 20)[0], transcript(11, 20)[0]);
        assert_ne!(transcript(10, 20)[1], transcript(10, 21)[1]);

        let xx = |a: u8, b: u8| {
            let (mut i, mut r) = xx_pair(NOISE_XX, None, None, a, b);
            run_handshake(&mut i, &mut r).expect("handshake")
        };
        assert_eq!(xx(10, 20), xx(10, 20));
        assert_eq!(keypair(1).private, keypair(1).private);
        assert_ne!(keypair(1).private, keypair(2).private);
    }

    #[test]
    fn generated_static_and_ephemeral_keys_differ() {
        // One builder, used first for a static key and then for a handshake: the ephemeral key
        // must come from a different stream than the static key.
        let b = builder(NOISE_XX, seed(9)).expect("params");
        let kp = b.generate_keypair().expect("keypair");
        let mut hs = b.local_private_key(&kp.private).build_initiator().expect("initiator");
        let mut msg = [0u8; 64];
        let n = hs.write_message(&[], &mut msg).expect("write e");
        assert_eq!(n, DH_LEN);
        assert_ne!(&msg[..n], &kp.public[..]);
    }

    #[test]
    fn unsupported_primitives_are_refused() {
        let r = Resolver::new([1; 32]);
        assert!(r.resolve_dh(&DHChoice::Ed448).is_none());
        assert!(r.resolve_cipher(&CipherChoice::AESGCM).is_none());
        for hash in [HashChoice::SHA512, HashChoice::Blake2s, HashChoice::Blake2b] {
            assert!(r.resolve_hash(&hash).is_none(), "{hash:?}");
        }
        for name in [
            "Noise_XX_25519_AESGCM_SHA256",
            "Noise_XX_25519_ChaChaPoly_BLAKE2s",
            "Noise_XX_448_ChaChaPoly_SHA256",
            "Noise_XX_25519_ChaChaPoly_SHA512",
        ] {
            let b = builder(name, [1; 32]).expect("parses");
            assert!(b.build_initiator().is_err(), "{name}");
        }
        assert!(builder("Noise_QQ_25519_ChaChaPoly_SHA256", [1; 32]).is_err());
    }

    #[test]
    fn rng_streams_are_distinct_and_reproducible() {
        let draw = |r: &Resolver| {
            let mut rng = r.resolve_rng().expect("rng");
            let mut out = [0u8; 32];
            rng.fill_bytes(&mut out);
            out
        };
        let a = Resolver::new([3; 32]);
        let b = Resolver::new([3; 32]);
        let (a0, a1) = (draw(&a), draw(&a));
        assert_ne!(a0, a1);
        assert_eq!((a0, a1), (draw(&b), draw(&b)));
        assert_ne!(a0, draw(&Resolver::new([4; 32])));
    }

    #[test]
    fn debug_redacts_seed() {
        let text = format!("{:?}", Resolver::new([0xab; 32]));
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.contains("171"), "{text}");
    }

    #[test]
    fn x25519_rfc7748_vector() {
        // RFC 7748 §6.1.
        let alice_private = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let bob_private = hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let bob_public = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");

        let mut alice = Curve25519::new();
        alice.set(&alice_private);
        assert_eq!(alice.pubkey(), &alice_public[..]);
        assert_eq!(alice.privkey(), &alice_private[..]);
        let mut bob = Curve25519::new();
        bob.set(&bob_private);
        assert_eq!(bob.pubkey(), &bob_public[..]);

        // snow passes a remote-key buffer longer than the key; only the prefix counts.
        let mut padded = bob_public.clone();
        padded.extend_from_slice(&[0xee; 24]);
        let mut out = [0u8; 56];
        alice.dh(&padded, &mut out).expect("dh");
        assert_eq!(&out[..DH_LEN], &shared[..]);
        let mut out = [0u8; DH_LEN];
        bob.dh(&alice_public, &mut out).expect("dh");
        assert_eq!(&out[..], &shared[..]);
    }

    #[test]
    fn malformed_dh_inputs_error_without_panicking() {
        let mut dh = Curve25519::new();
        let mut out = [0u8; DH_LEN];
        assert_eq!(dh.dh(&[9; DH_LEN], &mut out), Err(snow::Error::Dh), "no key set");
        for bad in [&[][..], &[1u8; 31][..], &[1u8; 33][..]] {
            dh.set(bad);
            assert_eq!(dh.pubkey(), &[0u8; DH_LEN]);
            assert_eq!(dh.dh(&[9; DH_LEN], &mut out), Err(snow::Error::Dh), "key of {} bytes", bad.len());
        }
        dh.set(&[1u8; DH_LEN]);
        assert_eq!(dh.dh(&[9; DH_LEN - 1], &mut out), Err(snow::Error::Dh), "short public key");
        assert_eq!(dh.dh(&[9; DH_LEN], &mut [0u8; DH_LEN - 1]), Err(snow::Error::Dh), "short output");
        assert_eq!(dh.dh(&[9; DH_LEN], &mut out), Ok(()));
    }

    #[test]
    fn cipher_handles_short_and_malformed_input() {
        let mut c = ChaChaPoly { key: None };
        let mut out = [0u8; 64];
        assert_eq!(c.encrypt(0, &[], b"abc", &mut out), 0, "no key yet");
        assert_eq!(c.decrypt(0, &[], &[0; 20], &mut out), Err(snow::Error::Decrypt));
        c.rekey(); // no key: must not panic
        c.set(&[5; 31]);
        assert_eq!(c.encrypt(0, &[], b"abc", &mut out), 0, "malformed key");
        c.set(&[5; KEY_LEN]);

        assert_eq!(c.encrypt(0, b"ad", b"abc", &mut out[..3 + TAG_LEN - 1]), 0, "output too short");
        let n = c.encrypt(7, b"ad", b"abc", &mut out);
        assert_eq!(n, 3 + TAG_LEN);
        let sealed = out[..n].to_vec();

        let mut plain = [0u8; 8];
        assert_eq!(c.decrypt(7, b"ad", &sealed, &mut plain), Ok(3));
        assert_eq!(&plain[..3], b"abc");
        for short in 0..TAG_LEN {
            assert_eq!(c.decrypt(7, b"ad", &sealed[..short], &mut plain), Err(snow::Error::Decrypt));
        }
        assert_eq!(c.decrypt(7, b"ad", &sealed, &mut plain[..2]), Err(snow::Error::Decrypt));
        assert_eq!(c.decrypt(8, b"ad", &sealed, &mut plain), Err(snow::Error::Decrypt));
        assert_eq!(c.decrypt(7, b"AD", &sealed, &mut plain), Err(snow::Error::Decrypt));

        // Rekey per Noise spec rev 34 §4.2 matches the packet key's next().
        let mut d = ChaChaPoly { key: None };
        d.set(&[5; KEY_LEN]);
        d.rekey();
        let next = PacketKey::new(&[5; KEY_LEN]).next();
        let mut a = [0u8; 4 + TAG_LEN];
        assert_eq!(d.encrypt(1, &[], b"ping", &mut a), a.len());
        let mut body = *b"ping";
        let tag = next.seal(1, &[], &mut body);
        assert_eq!(&a[..4], &body);
        assert_eq!(&a[4..], &tag);
    }

    #[test]
    fn sha256_known_answers() {
        // FIPS 180-4 examples ("abc") and the empty string.
        let mut h = Sha256::new();
        let mut out = [0u8; 64];
        h.input(b"abc");
        h.result(&mut out);
        assert_eq!(&out[..32], &hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")[..]);
        assert_eq!(&out[32..], &[0u8; 32], "only hash_len bytes are written");
        h.reset();
        h.result(&mut out);
        assert_eq!(&out[..32], &hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")[..]);
        let mut short = [0u8; 4];
        h.result(&mut short);
        assert_eq!(short, [0xe3, 0xb0, 0xc4, 0x42]);
        assert_eq!((h.block_len(), h.hash_len(), h.name()), (64, 32, "SHA256"));
    }

    /// A Noise test vector from the cacophony suite (shipped in snow 0.9.6's
    /// `tests/vectors/cacophony.txt`); the two vectors below share all keys and payloads.
    struct Vector {
        name: &'static str,
        psk: Option<&'static str>,
        handshake_hash: &'static str,
        ciphertexts: [&'static str; 6],
    }

    const PROLOGUE: &str = "4a6f686e2047616c74";
    const INIT_STATIC: &str = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1";
    const INIT_EPHEMERAL: &str = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a";
    const RESP_STATIC: &str = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893";
    const RESP_STATIC_PUBLIC: &str = "31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62";
    const RESP_EPHEMERAL: &str = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b";
    const PAYLOADS: [&str; 6] = [
        "4c756477696720766f6e204d69736573",
        "4d757272617920526f746862617264",
        "462e20412e20486179656b",
        "4361726c204d656e676572",
        "4a65616e2d426170746973746520536179",
        "457567656e2042f6686d20766f6e2042617765726b",
    ];

    const CACOPHONY_IK: Vector = Vector {
        name: NOISE_IK,
        psk: None,
        handshake_hash: "0b0f68fb0c27e03ce9b97565995ed4838cc0581b762ef72b062f6a546419fad7",
        ciphertexts: [
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944718da798efbcd91528520204f904b9bd\
             6c7413dccdc214d951e15253e39987f18146e8cd0873654207148333479d4d16c289f0294b29960a72f48e0b7bba2e89\
             083169825e59642148d492020664ccf7",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088435361e70b2ed446e6c9ec387d1d6b3b84\
             0f194e373979d241b203c4acafccf5",
            "050e9f3c8fac16b68dbce8f8c4bfbf6617c897f9ada4aa29aa19c8",
            "344233a6cabb7141d80f3da2fedc311d9646bbb0f505afe403a667",
            "62cdeeb172ad7ade7aa7d9e069da5790f12331bfa00177787a1d0810c67dc3b2b4",
            "029bead1b40992327044d409d9a1f3ad8f36c3c452775d557e18bbeb2e8dfcead32d514024",
        ],
    };

    const CACOPHONY_IK_PSK2: Vector = Vector {
        name: NOISE_IK_PSK,
        psk: Some("54686973206973206d7920417573747269616e20706572737065637469766521"),
        handshake_hash: "8310f86394dc0dabb40beb8210031556db4403ab1202db7034c526232147a700",
        ciphertexts: [
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79442ec9b09893d0f510791784c10cbc959f\
             25b1766e0def6e301d14fbca1c7790ac829b8b3674f5f649a5f0e98479662cbfbf2b2c47cd4b09fcd266cd29d7cb675f\
             1808849707847840f6d178ec4d3733aa",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088439a1b3cebf680b2c74217fcb5eba4ff58\
             a9468cd90c4aca6194f57479b379a7",
            "a8fde7a0accec190cd306c5950d4fd8e04a205ec288aa747d8b347",
            "59caddd9984a3bbe24c4fb31a2bd455b7eba3fa0980674b1a3a5f9",
            "3b9bfebd210c22ba0cff9de79b4007d7a552fffbf92616881faa8a883e25b80258",
            "f37512df1043d564d7c46ac85c53d3b6a9a05724bc297e7142808f217561651217fe85b782",
        ],
    };

    fn check_vector(v: &Vector) {
        let prologue = hex(PROLOGUE);
        let (init_static, init_e) = (hex(INIT_STATIC), hex(INIT_EPHEMERAL));
        let (resp_static, resp_e) = (hex(RESP_STATIC), hex(RESP_EPHEMERAL));
        let resp_public = hex(RESP_STATIC_PUBLIC);
        let psk = v.psk.map(hex);

        let mut ib = builder(v.name, [0; 32])
            .expect("params")
            .prologue(&prologue)
            .local_private_key(&init_static)
            .remote_public_key(&resp_public)
            .fixed_ephemeral_key_for_testing_only(&init_e);
        let mut rb = builder(v.name, [0; 32])
            .expect("params")
            .prologue(&prologue)
            .local_private_key(&resp_static)
            .fixed_ephemeral_key_for_testing_only(&resp_e);
        if let Some(psk) = &psk {
            ib = ib.psk(2, psk);
            rb = rb.psk(2, psk);
        }
        let mut i = ib.build_initiator().expect("initiator");
        let mut r = rb.build_responder().expect("responder");

        let mut wire = vec![0u8; MAX_MSG];
        let mut plain = vec![0u8; MAX_MSG];
        let mut messages = PAYLOADS.iter().zip(v.ciphertexts.iter()).enumerate();
        // Messages 0 and 1 are the IK handshake.
        for (idx, (payload, expected)) in messages.by_ref().take(2) {
            let payload = hex(payload);
            let (writer, reader) = if idx == 0 { (&mut i, &mut r) } else { (&mut r, &mut i) };
            let n = writer.write_message(&payload, &mut wire).expect("write");
            assert_eq!(&wire[..n], &hex(expected)[..], "{} message {idx}", v.name);
            let m = reader.read_message(&wire[..n], &mut plain).expect("read");
            assert_eq!(&plain[..m], &payload[..]);
        }
        assert_eq!(i.get_handshake_hash(), &hex(v.handshake_hash)[..]);
        assert_eq!(r.get_handshake_hash(), &hex(v.handshake_hash)[..]);

        // Messages 2..6 are transport messages, alternating initiator and responder.
        let mut i = i.into_transport_mode().expect("initiator transport");
        let mut r = r.into_transport_mode().expect("responder transport");
        for (idx, (payload, expected)) in messages {
            let payload = hex(payload);
            let (writer, reader) = if idx % 2 == 0 { (&mut i, &mut r) } else { (&mut r, &mut i) };
            let n = writer.write_message(&payload, &mut wire).expect("write");
            assert_eq!(&wire[..n], &hex(expected)[..], "{} message {idx}", v.name);
            let m = reader.read_message(&wire[..n], &mut plain).expect("read");
            assert_eq!(&plain[..m], &payload[..]);
        }
    }

    #[test]
    fn cacophony_ik_vector() {
        check_vector(&CACOPHONY_IK);
    }

    #[test]
    fn cacophony_ik_psk2_vector() {
        check_vector(&CACOPHONY_IK_PSK2);
    }
}
