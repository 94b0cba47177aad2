//! Authenticated encryption of sessions: node identity, Noise handshakes, the per-packet
//! AEAD, the replay window and handshake admission under load.
//!
//! | piece | follows |
//! |---|---|
//! | handshake | Noise rev 34: IK / XX, `psk1` / `psk0`, 25519 + ChaChaPoly + SHA256 ([`handshake`]) |
//! | data packets | ChaCha20-Poly1305 (RFC 8439), nonce = packet number, AD = header ([`keys`]) |
//! | replay | RFC 6479 window of 8192 bits, checked before and marked after decryption ([`replay`]) |
//! | key updates | Noise §4.2 REKEY + a key-phase bit as RFC 9001 §6 ([`keys`]) |
//! | admission | cookies as WireGuard §5.4.7 / RFC 9000 §8.1.2, token-bucket rate limits ([`admission`]) |

pub mod admission;
pub mod aead;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod replay;
pub mod resolver;
