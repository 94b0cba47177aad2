//! Configuration of endpoints and sessions. Every default says where it comes from.

use std::sync::Arc;
use std::time::Duration;

use crate::congestion::{ControllerFactory, LedbatConfig};
use crate::crypto::admission::AdmissionConfig;
use crate::crypto::handshake::Psk;
use crate::crypto::identity::NodeKey;
use crate::crypto::keys::RekeyLimits;

/// Default UDP payload size: 1200 bytes.
///
/// Why: the IPv6 minimum link MTU is 1280 bytes (RFC 8200 §5); minus 40 bytes of IPv6
/// header and 8 of UDP leaves 1232, and QUIC picked 1200 (RFC 9000 §14) to leave room for
/// tunnels (PPPoE, GRE, WireGuard, IPsec) below ordinary paths. A datagram this size is
/// never fragmented by IP on any path that carries IPv6 or typical IPv4 (MTU ≥ 1280).
pub const DEFAULT_MAX_DATAGRAM_SIZE: usize = 1200;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Congestion controller factory (the config object is the factory, as in quinn).
    pub congestion: Arc<dyn ControllerFactory>,
    /// Largest UDP payload we send. See [`DEFAULT_MAX_DATAGRAM_SIZE`].
    pub max_datagram_size: usize,
    /// Largest application message accepted by `send` and by reassembly.
    pub max_message_size: usize,
    /// Bytes of partly received messages we hold; advertised as the receive window.
    pub receive_window: usize,
    /// Bytes of unsent + unacknowledged messages a sender queues before `send` refuses.
    pub send_buffer: usize,
    /// How long the receiver may hold an ack back (RFC 9000 §13.2.1 uses 25 ms; we ack
    /// faster because LEDBAT wants fresh delay samples and live data wants fast repair).
    pub max_ack_delay: Duration,
    /// Ack at least every this many ack-eliciting packets (RFC 9000 §13.2.2 suggests 2;
    /// more halves ack load on fast paths at the cost of coarser delay samples).
    pub ack_every_packets: u32,
    /// Lower bound of the retransmission timeout. RFC 6298 §2.4 says 1 s; Linux uses
    /// 200 ms (TCP_RTO_MIN), which matters for live data with sub-second deadlines.
    pub min_rto: Duration,
    /// Upper bound of the backed-off retransmission timeout (RFC 6298 §2.5: at least 60 s
    /// is allowed; we cap lower because a live stream cannot use a later repair).
    pub max_rto: Duration,
    /// Send a keepalive after this much silence from us.
    pub keepalive_interval: Duration,
    /// Close the session after this much silence from the peer.
    pub idle_timeout: Duration,
    /// Give up connecting after this long (also how long a half-open XX handshake is kept).
    pub handshake_timeout: Duration,
    /// When each direction moves to its next data key (`crypto::keys`).
    pub rekey: RekeyLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            congestion: Arc::new(LedbatConfig::default()),
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            max_message_size: 4 << 20,
            receive_window: 8 << 20,
            send_buffer: 8 << 20,
            max_ack_delay: Duration::from_millis(5),
            ack_every_packets: 4,
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            rekey: RekeyLimits::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub session: SessionConfig,
    /// Most sessions one endpoint holds (each costs memory bounded by its buffers).
    pub max_sessions: usize,
    /// Bound on queued events not yet taken by `poll_event`.
    pub max_pending_events: usize,
    /// This node's static key (its identity). `None`: the endpoint makes one from its
    /// seed, which suits tests and simulations; real nodes load theirs from a key file.
    pub node_key: Option<Arc<NodeKey>>,
    /// Pre-shared key of a private channel: without it no handshake completes.
    pub psk: Option<Psk>,
    /// Handshake admission under load (cookies and rate limits).
    pub admission: AdmissionConfig,
    /// The node's upload capacity, kbit/s, as its operator states it. When set, the
    /// endpoint as a whole sends no faster than this (never held below
    /// `MIN_PACED_UPLINK_KBPS`), so what its bursts send beyond `UPLINK_PACER_BURST` of it
    /// waits in the endpoint rather than overflow the uplink's buffer, and Background data
    /// may use what the endpoint leaves unused of it (see `uplink.rs`); without it
    /// Background stays within LEDBAT's window.
    pub uplink_kbps: Option<u32>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            max_sessions: 1024,
            max_pending_events: 65_536,
            node_key: None,
            psk: None,
            admission: AdmissionConfig::default(),
            uplink_kbps: None,
        }
    }
}
