//! A seeded, virtual-time network for tests and benchmarks: a dumbbell with one bottleneck
//! per direction, and a harness that runs real [`Endpoint`](crate::Endpoint)s and their
//! applications over it.
//!
//! - [`link`]: the link model (rate, drop-tail buffer in bytes, propagation delay, jitter,
//!   random and Gilbert-Elliott loss, reordering) and the standing-queue probe.
//! - [`harness`]: [`Simulation`] drives hosts in virtual time, deterministically.
//! - [`apps`]: traffic sources and sinks (bulk, a paced stream with deadlines, both on one
//!   session, an echo server, counters).
//!
//! Virtual time is a `std::time::Instant` epoch taken once by the caller plus `Duration`
//! offsets; nothing here reads the real clock. All randomness comes from the seeds given
//! to [`VirtualNetwork::new`] and to each `Endpoint`, and nothing iterates a hash map, so
//! the same seeds and the same scenario give the same run, byte for byte.
//!
//! A competing loss-based bulk flow is simply another pair of hosts whose endpoints use
//! NewReno: it crosses the same bottleneck queue as everyone else.

pub mod apps;
pub mod harness;
pub mod link;

pub use apps::{BulkSender, Echo, Sender, Sink, StreamSource};
pub use harness::{Application, HostId, Simulation};
pub use link::{Delivery, LinkConfig, LossModel, Side, VirtualNetwork};

/// The `p`-th percentile (`p` in [0, 1]) of ascending `sorted` values by the nearest-rank
/// method: the smallest sample with at least a fraction `p` of samples at or below it (so
/// p = 1 is the maximum and every result is an observed value). `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "percentile wants sorted input");
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Seed for randomized tests: `RILL_TEST_SEED` or 1. Prints the line that reproduces a
/// failing run (cargo shows it only when the test fails).
#[cfg(test)]
pub(crate) fn test_seed() -> u64 {
    let seed = std::env::var("RILL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("reproduce with RILL_TEST_SEED={seed}");
    seed
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(5.0));
        assert_eq!(percentile(&v, 0.95), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(10.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
