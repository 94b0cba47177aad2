//! rill transport: reliable, congestion-controlled message sessions over one UDP socket.
//!
//! The protocol core ([`Endpoint`]) is sans-IO: it never touches a socket, a clock or a
//! global RNG. [`driver`] is the thin tokio/socket2 loop that runs it over real UDP, and
//! [`vlink`] runs it over a seeded, virtual-time network model for tests and benchmarks.
//!
//! Layout, one concern per file:
//! - [`wire`]: packet header and frames (encode/decode, never panics on input).
//! - [`ranges`]: bounded sets of integer ranges (acks, received bytes, finished messages).
//! - [`rtt`]: RTT estimation and RTO (RFC 6298).
//! - [`congestion`]: the `Controller` trait, LEDBAT++ and NewReno, pacing.
//! - [`crypto`]: node identity, Noise handshakes, packet AEAD, replay window, admission.
//! - `session`: one session's reliability, message fragmentation/reassembly and classes;
//!   `session/secure.rs` its handshake messages and packet protection.
//! - [`endpoint`]: many sessions on one socket; handshake admission; the public API.

mod config;
pub mod congestion;
pub mod crypto;
pub mod driver;
pub mod endpoint;
pub mod ranges;
pub mod rtt;
mod session;
mod stream_floor;
mod uplink;
pub mod vlink;
pub mod wire;

pub use config::{EndpointConfig, SessionConfig, DEFAULT_MAX_DATAGRAM_SIZE};
pub use endpoint::{
    Class, CloseReason, ConnectError, Endpoint, EndpointStats, Event, MessageId, SendError, SendOptions,
    SessionId, SessionStats, Transmit,
};
