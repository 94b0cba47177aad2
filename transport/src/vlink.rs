//! A seeded, virtual-time network for tests and benchmarks: a dumbbell with one bottleneck
//! per direction, and a harness that runs real [`Endpoint`]s and their applications over it.
//!
//! - [`link`]: the link model (rate, drop-tail buffer in bytes, propagation delay, jitter,
//!   random and Gilbert-Elliott loss, reordering) and the standing-queue probe.
//! - [`harness`]: [`harness::Simulation`] drives hosts in virtual time, deterministically.
//! - [`apps`]: traffic sources and sinks (bulk, a paced stream with deadlines, counters).
//!
//! A competing loss-based bulk flow is simply another pair of hosts whose endpoints use
//! NewReno: it crosses the same bottleneck queue as everyone else.

pub mod apps;
pub mod harness;
pub mod link;
