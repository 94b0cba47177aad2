//! Congestion control behind a trait, as in quinn: the config object is the factory
//! (`ControllerFactory::build`), the built `Controller` lives inside one session.
//!
//! Controllers only decide *how many bytes may be in flight* and *how fast to pace them*.
//! Traffic classes (which class may use which part of the window) are the session's
//! business (see `session.rs`), so every controller stays a pure function of its signals.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::rtt::RttEstimator;

mod ledbat;
mod newreno;
mod pacer;

pub use ledbat::{Ledbat, LedbatConfig};
pub use newreno::{NewReno, NewRenoConfig};
pub use pacer::Pacer;

/// What the session knows when a packet is newly acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct AckSample {
    /// Bytes of the acknowledged packet (whole datagram size).
    pub bytes_acked: usize,
    /// When the acknowledged packet was sent.
    pub sent_time: Instant,
    /// Bytes in flight *before* this packet was removed from flight.
    pub bytes_in_flight: usize,
    /// True when the sender had nothing more to send at the time the packet left
    /// (RFC 7661: a window that is not used must not grow).
    pub app_limited: bool,
}

/// Everything a controller may read about the path.
pub trait Controller: Send + Debug {
    /// A packet carrying `bytes` left; `bytes_in_flight` includes it.
    fn on_packet_sent(&mut self, now: Instant, bytes: usize, bytes_in_flight: usize);

    /// A packet was newly acknowledged. `rtt` is already updated with it.
    fn on_ack(&mut self, now: Instant, ack: &AckSample, rtt: &RttEstimator);

    /// A one-way delay sample (the peer's `timestamp_diff` field, BEP 29), in µs on an
    /// arbitrary but fixed offset: only differences between samples are meaningful.
    /// Loss-based controllers ignore it.
    fn on_delay_sample(&mut self, now: Instant, one_way_delay_us: i64);

    /// Packets sent at or before `largest_lost_sent_time` were declared lost
    /// (`lost_bytes` in total). One call per loss-detection pass; a controller reacts at
    /// most once per round trip (RFC 6582 §3.2 recovery period).
    fn on_congestion_event(&mut self, now: Instant, largest_lost_sent_time: Instant, lost_bytes: usize);

    /// The retransmission timer fired with no ack at all (RFC 5681 §3.1: cwnd to one
    /// segment, "loss window").
    fn on_retransmission_timeout(&mut self, now: Instant);

    /// Congestion window in bytes.
    fn window(&self) -> usize;

    /// Pacing rate in bytes per second for the current window and RTT.
    fn pacing_rate(&self, rtt: &RttEstimator) -> f64;

    /// The controller's own estimate of queueing delay, for stats (not a measurement).
    fn queueing_delay(&self) -> Option<Duration>;

    /// Short name for reports ("ledbat++", "newreno").
    fn name(&self) -> &'static str;
}

/// Builds one controller per session. Implemented by the config types.
pub trait ControllerFactory: Send + Sync + Debug {
    fn build(&self, now: Instant, max_datagram_size: usize) -> Box<dyn Controller>;
}
