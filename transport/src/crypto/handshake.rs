//! The Noise handshake of a session, as rill uses it.
//!
//! Patterns (Noise Protocol Framework, revision 34):
//! - **IK** (§7.5) when the initiator already knows the responder's static key (from a
//!   channel link or peer exchange): one round trip, and the first message is already
//!   encrypted to the responder and authenticates the initiator (as WireGuard does).
//! - **XX** (§7.5) otherwise: three messages; both static keys travel encrypted.
//!
//! Private channels add the pre-shared key modifier (§9): `IKpsk1` and `XXpsk0`, chosen so
//! that the *first message the responder reads* already depends on the psk. A node without
//! the channel secret then fails the responder's very first read: it gets no session, and
//! the responder keeps no state for it. (WireGuard's psk2 would let the responder finish
//! an IK handshake with a stranger that then cannot read its reply.)
//!
//! Suite: Curve25519, ChaCha20-Poly1305, SHA-256 (§12), one crypto stack through
//! [`super::resolver`]. The prologue binds the protocol version so that a handshake never
//! completes across incompatible versions (§6).
//!
//! The data phase does not use snow: the split keys (§5.2) go to [`super::keys`], which
//! encrypts packets with the packet number as nonce and the header as associated data.

use snow::HandshakeState;
use zeroize::Zeroizing;

use super::identity::{NodeId, NodeKey, NODE_ID_LEN};
use super::resolver;

/// Noise protocol names (Noise spec §8).
const IK: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
const XX: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
const IK_PSK: &str = "Noise_IKpsk1_25519_ChaChaPoly_SHA256";
const XX_PSK: &str = "Noise_XXpsk0_25519_ChaChaPoly_SHA256";
/// Noise spec §6: both sides must agree on the prologue or the handshake fails.
const PROLOGUE: &[u8] = b"rill transport v1";
/// Noise spec §3: a handshake message is at most 65535 bytes; ours are far smaller
/// (XX message 2: 32 e + 48 s + 16 tag + payload).
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// Length of a pre-shared key (Noise spec §9.1).
pub const PSK_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Ik = 0,
    Xx = 1,
}

impl Pattern {
    pub fn from_wire(b: u8) -> Option<Pattern> {
        match b {
            0 => Some(Pattern::Ik),
            1 => Some(Pattern::Xx),
            _ => None,
        }
    }

    fn name(self, psk: bool) -> &'static str {
        match (self, psk) {
            (Pattern::Ik, false) => IK,
            (Pattern::Xx, false) => XX,
            (Pattern::Ik, true) => IK_PSK,
            (Pattern::Xx, true) => XX_PSK,
        }
    }

    fn psk_location(self) -> u8 {
        match self {
            Pattern::Ik => 1,
            Pattern::Xx => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("noise handshake failed: {0}")]
    Noise(String),
    #[error("handshake message too long")]
    TooLong,
    #[error("handshake not finished")]
    NotFinished,
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        HandshakeError::Noise(e.to_string())
    }
}

/// A channel's pre-shared key. Debug never shows it; zeroized on drop.
#[derive(Clone)]
pub struct Psk(Zeroizing<[u8; PSK_LEN]>);

impl Psk {
    pub fn new(bytes: [u8; PSK_LEN]) -> Self {
        Psk(Zeroizing::new(bytes))
    }
    pub fn bytes(&self) -> &[u8; PSK_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

/// One side of a handshake in progress.
pub struct Handshake {
    state: HandshakeState,
    pattern: Pattern,
    /// The last message we wrote: resent verbatim when the peer's answer does not come
    /// (a Noise message cannot be written twice, and the peer answers a repeat the same way).
    last_written: Vec<u8>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("pattern", &self.pattern)
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .finish()
    }
}

/// Send and receive keys of a finished handshake, from this side's point of view.
pub struct SplitKeys {
    pub send: Zeroizing<[u8; 32]>,
    pub recv: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SplitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SplitKeys(..)")
    }
}

impl Handshake {
    /// Start as initiator: IK if the responder's static key is known, XX otherwise.
    pub fn initiator(
        local: &NodeKey,
        remote: Option<NodeId>,
        psk: Option<&Psk>,
        seed: [u8; 32],
    ) -> Result<Handshake, HandshakeError> {
        let pattern = if remote.is_some() { Pattern::Ik } else { Pattern::Xx };
        let mut builder = resolver::builder(pattern.name(psk.is_some()), seed)?
            .prologue(PROLOGUE)
            .local_private_key(local.secret_bytes());
        let remote_bytes = remote.map(|r| r.0);
        if let Some(r) = remote_bytes.as_ref() {
            builder = builder.remote_public_key(r);
        }
        if let Some(k) = psk {
            builder = builder.psk(pattern.psk_location(), k.bytes());
        }
        Ok(Handshake { state: builder.build_initiator()?, pattern, last_written: Vec::new() })
    }

    /// Start as responder to an initiation that named `pattern`.
    pub fn responder(
        local: &NodeKey,
        pattern: Pattern,
        psk: Option<&Psk>,
        seed: [u8; 32],
    ) -> Result<Handshake, HandshakeError> {
        let mut builder = resolver::builder(pattern.name(psk.is_some()), seed)?
            .prologue(PROLOGUE)
            .local_private_key(local.secret_bytes());
        if let Some(k) = psk {
            builder = builder.psk(pattern.psk_location(), k.bytes());
        }
        Ok(Handshake { state: builder.build_responder()?, pattern, last_written: Vec::new() })
    }

    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Write our next message (with `payload`, which travels encrypted once the pattern
    /// allows) and keep it for retransmission.
    pub fn write(&mut self, payload: &[u8]) -> Result<&[u8], HandshakeError> {
        let mut out = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = self.state.write_message(payload, &mut out)?;
        out.truncate(n);
        self.last_written = out;
        Ok(&self.last_written)
    }

    /// The message most recently written (empty before the first write).
    pub fn last_written(&self) -> &[u8] {
        &self.last_written
    }

    /// Read the peer's next message and return its payload. On failure snow restores its
    /// state, so a forged message does not spoil a handshake in progress.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(HandshakeError::TooLong);
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = self.state.read_message(message, &mut payload)?;
        payload.truncate(n);
        Ok(payload)
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The peer's static key, once the pattern has revealed it.
    pub fn remote_static(&self) -> Option<NodeId> {
        let bytes: [u8; NODE_ID_LEN] = self.state.get_remote_static()?.try_into().ok()?;
        Some(NodeId(bytes))
    }

    /// The two data keys (Noise spec §5.2 Split), as (send, receive) for this side.
    pub fn split(mut self) -> Result<SplitKeys, HandshakeError> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::NotFinished);
        }
        let (initiator_to_responder, responder_to_initiator) = self.state.dangerously_get_raw_split();
        let (a, b) = (Zeroizing::new(initiator_to_responder), Zeroizing::new(responder_to_initiator));
        Ok(if self.state.is_initiator() {
            SplitKeys { send: a, recv: b }
        } else {
            SplitKeys { send: b, recv: a }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    fn key(seed: u64) -> NodeKey {
        NodeKey::generate(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// Run a handshake to the end; Err at the first failing read.
    fn run(
        mut i: Handshake,
        mut r: Handshake,
    ) -> Result<(SplitKeys, SplitKeys, Option<NodeId>, Option<NodeId>), HandshakeError> {
        let mut initiator_turn = true;
        while !(i.is_finished() && r.is_finished()) {
            if initiator_turn {
                let m = i.write(b"")?.to_vec();
                r.read(&m)?;
            } else {
                let m = r.write(b"")?.to_vec();
                i.read(&m)?;
            }
            initiator_turn = !initiator_turn;
        }
        let (ri, rr) = (i.remote_static(), r.remote_static());
        Ok((i.split()?, r.split()?, ri, rr))
    }

    #[test]
    fn ik_and_xx_with_and_without_psk_agree_on_keys_and_identities() {
        let (a, b) = (key(1), key(2));
        let psk = Psk::new([7u8; PSK_LEN]);
        for psk in [None, Some(&psk)] {
            for known in [Some(b.id()), None] {
                let i = Handshake::initiator(&a, known, psk, [1; 32]).unwrap();
                let pattern = i.pattern();
                assert_eq!(pattern, if known.is_some() { Pattern::Ik } else { Pattern::Xx });
                let r = Handshake::responder(&b, pattern, psk, [2; 32]).unwrap();
                let (ki, kr, ri, rr) = run(i, r).unwrap();
                assert_eq!(*ki.send, *kr.recv);
                assert_eq!(*ki.recv, *kr.send);
                assert_ne!(*ki.send, *ki.recv);
                assert_eq!(ri, Some(b.id()));
                assert_eq!(rr, Some(a.id()));
            }
        }
    }

    #[test]
    fn wrong_psk_or_wrong_static_key_fails_at_the_responders_first_read() {
        let (a, b, c) = (key(1), key(2), key(3));
        let (good, bad) = (Psk::new([7u8; PSK_LEN]), Psk::new([8u8; PSK_LEN]));
        for pattern_known in [Some(b.id()), None] {
            let mut i = Handshake::initiator(&a, pattern_known, Some(&bad), [1; 32]).unwrap();
            let mut r = Handshake::responder(&b, i.pattern(), Some(&good), [2; 32]).unwrap();
            let m = i.write(b"").unwrap().to_vec();
            assert!(r.read(&m).is_err(), "wrong psk accepted ({pattern_known:?})");
            // psk on one side only: the protocol names differ, so the hashes differ.
            let mut i = Handshake::initiator(&a, pattern_known, None, [1; 32]).unwrap();
            let mut r = Handshake::responder(&b, i.pattern(), Some(&good), [2; 32]).unwrap();
            let m = i.write(b"").unwrap().to_vec();
            assert!(r.read(&m).is_err());
        }
        // IK to c's key, answered by b: b cannot read it.
        let mut i = Handshake::initiator(&a, Some(c.id()), None, [1; 32]).unwrap();
        let mut r = Handshake::responder(&b, Pattern::Ik, None, [2; 32]).unwrap();
        let m = i.write(b"").unwrap().to_vec();
        assert!(r.read(&m).is_err());
    }

    #[test]
    fn same_seeds_give_the_same_messages() {
        let (a, b) = (key(1), key(2));
        let m =
            |seed| Handshake::initiator(&a, Some(b.id()), None, seed).unwrap().write(b"x").unwrap().to_vec();
        assert_eq!(m([5; 32]), m([5; 32]));
        assert_ne!(m([5; 32]), m([6; 32]));
    }

    #[test]
    fn garbage_messages_are_errors_not_panics() {
        let b = key(2);
        for len in [0usize, 1, 31, 32, 47, 48, 95, 96, 200, 300, 1000] {
            for pattern in [Pattern::Ik, Pattern::Xx] {
                let mut r = Handshake::responder(&b, pattern, None, [2; 32]).unwrap();
                let junk: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
                let _ = r.read(&junk);
            }
        }
    }
}
