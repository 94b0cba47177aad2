//! A fixed-size histogram of durations in µs, for playout lag percentiles.
//!
//! Log-linear buckets in the style of HdrHistogram: values below `SUB_BUCKETS` µs get a
//! bucket each; above that, every power of two is split into `SUB_BUCKETS` equal buckets,
//! so a reported percentile is within 1/64 (1.6%) of the true value at any magnitude. The
//! size is fixed (`BUCKETS` counters, 16 KiB) however long the stream runs, which is why
//! this and not a list of samples.

/// Sub-buckets per power of two: 2^6, for a relative error of at most 1/64.
const SUB_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;

/// Largest value told apart from larger ones: 2^36 µs, about 19 hours. Larger values are
/// counted in the last bucket (and still reach `max_us` exactly).
const MAX_TRACKED_BITS: u32 = 36;

/// Bucket count: the linear range below `SUB_BUCKETS`, then `SUB_BUCKETS` buckets for each
/// power of two from 2^SUB_BITS up to 2^MAX_TRACKED_BITS.
const BUCKETS: usize = ((MAX_TRACKED_BITS - SUB_BITS + 1) as usize) * SUB_BUCKETS as usize;

/// Histogram of durations in µs with min, max and sum kept exactly.
#[derive(Clone, PartialEq, Eq)]
pub struct LagHistogram {
    /// Bound: [`BUCKETS`] counters, allocated once.
    counts: Box<[u64]>,
    count: u64,
    min_us: u64,
    max_us: u64,
    /// Saturates rather than wraps (after 584,000 years of summed lag).
    sum_us: u64,
}

impl std::fmt::Debug for LagHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagHistogram")
            .field("count", &self.count)
            .field("min_us", &self.min_us())
            .field("p50_us", &self.percentile_us(0.5))
            .field("p99_us", &self.percentile_us(0.99))
            .field("max_us", &self.max_us())
            .finish()
    }
}

impl Default for LagHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LagHistogram {
    pub fn new() -> Self {
        Self { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0, min_us: u64::MAX, max_us: 0, sum_us: 0 }
    }

    pub fn record(&mut self, value_us: u64) {
        self.counts[bucket_of(value_us)] += 1;
        self.count += 1;
        self.min_us = self.min_us.min(value_us);
        self.max_us = self.max_us.max(value_us);
        self.sum_us = self.sum_us.saturating_add(value_us);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min_us(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_us)
    }

    pub fn max_us(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_us)
    }

    /// Sum of the values recorded (saturating).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    pub fn mean_us(&self) -> Option<u64> {
        self.sum_us.checked_div(self.count)
    }

    /// Records `n` values of `value_us` at once (a histogram rebuilt from [`Self::buckets`]
    /// of another process).
    pub fn record_n(&mut self, value_us: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[bucket_of(value_us)] += n;
        self.count += n;
        self.min_us = self.min_us.min(value_us);
        self.max_us = self.max_us.max(value_us);
        self.sum_us = self.sum_us.saturating_add(value_us.saturating_mul(n));
    }

    /// The non-empty buckets, ascending, as (largest value the bucket holds in µs, count).
    /// Recording each with [`Self::record_n`] rebuilds the same counts elsewhere, so
    /// percentiles over several processes' values are exact to the bucket width (min, max
    /// and mean then read as bucket edges).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, &n)| n > 0).map(|(i, &n)| (bucket_upper_us(i), n))
    }

    /// Adds `other`'s values to `self` (figures over several viewers).
    pub fn merge(&mut self, other: &LagHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// The values recorded in `self` since it was the copy `earlier` (figures of one
    /// interval). Min and max are bounded by their buckets' edges, as exact as they can be.
    pub fn since(&self, earlier: &LagHistogram) -> LagHistogram {
        let mut out = LagHistogram::new();
        for (index, (a, b)) in self.counts.iter().zip(earlier.counts.iter()).enumerate() {
            let n = a.saturating_sub(*b);
            if n == 0 {
                continue;
            }
            out.counts[index] = n;
            out.count += n;
            let lower = if index == 0 { 0 } else { bucket_upper_us(index - 1) + 1 };
            out.min_us = out.min_us.min(lower.max(self.min_us));
            out.max_us = out.max_us.max(bucket_upper_us(index).min(self.max_us));
        }
        out.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        out
    }

    /// The nearest-rank percentile (`p` in 0..=1, clamped): the smallest recorded value
    /// such that at least `p` of all values are at or below it, to within the bucket width
    /// (the bucket's upper edge, clamped to the exact min and max). None if empty.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let p = if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) };
        // Nearest rank: ceil(p * n), at least 1.
        let rank = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min_us);
        }
        if rank == self.count {
            return Some(self.max_us);
        }
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_us(index).clamp(self.min_us, self.max_us));
            }
        }
        // The counts sum to `count` and rank ≤ count, so the loop returned; max is the
        // right answer should that ever not hold.
        Some(self.max_us)
    }
}

/// Bucket index of a value: exact below `SUB_BUCKETS`, then `SUB_BUCKETS` per octave.
fn bucket_of(value_us: u64) -> usize {
    let value_us = value_us.min((1 << MAX_TRACKED_BITS) - 1);
    if value_us < SUB_BUCKETS {
        return value_us as usize;
    }
    let msb = 63 - value_us.leading_zeros(); // ≥ SUB_BITS here
    let shift = msb - SUB_BITS;
    // Octave 1 starts at index SUB_BUCKETS; the top SUB_BITS+1 bits pick the sub-bucket.
    ((shift + 1) as u64 * SUB_BUCKETS + ((value_us >> shift) - SUB_BUCKETS)) as usize
}

/// Largest value that falls into bucket `index`.
fn bucket_upper_us(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let sub = index % SUB_BUCKETS + SUB_BUCKETS;
    ((sub + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_and_interval_histograms_add_up() {
        let mut a = LagHistogram::new();
        let mut b = LagHistogram::new();
        for v in 0..1000u64 {
            a.record(v);
            b.record(100_000 + v);
        }
        let mut both = a.clone();
        both.merge(&b);
        assert_eq!(both.count(), 2000);
        assert_eq!((both.min_us(), both.max_us()), (Some(0), Some(100_999)));
        let before = a.clone();
        for _ in 0..10 {
            a.record(50_000);
        }
        let interval = a.since(&before);
        assert_eq!(interval.count(), 10);
        let p50 = interval.percentile_us(0.5).unwrap();
        assert!((49_000..=51_000).contains(&p50), "{p50}");
        assert_eq!(interval.mean_us(), Some(50_000));
    }

    #[test]
    fn buckets_rebuild_the_same_percentiles() {
        let mut a = LagHistogram::new();
        for v in [3u64, 70, 70, 999, 12_345, 250_000, 250_001] {
            a.record(v);
        }
        let mut b = LagHistogram::new();
        for (upper, n) in a.buckets() {
            b.record_n(upper, n);
        }
        assert_eq!(b.count(), a.count());
        for p in [0.1, 0.5, 0.9, 0.99] {
            let (x, y) = (a.percentile_us(p).unwrap(), b.percentile_us(p).unwrap());
            assert!(x <= y && y - x <= x / 64 + 1, "p{p}: {x} vs {y}");
        }
        b.record_n(5, 0);
        assert_eq!(b.count(), a.count());
    }

    #[test]
    fn buckets_are_contiguous_and_tight() {
        // Every bucket's upper edge + 1 starts the next bucket, and widths stay ≤ 1/64.
        for index in 0..BUCKETS - 1 {
            let upper = bucket_upper_us(index);
            assert_eq!(bucket_of(upper), index, "upper edge of {index}");
            assert_eq!(bucket_of(upper + 1), index + 1, "start of {}", index + 1);
            if upper >= SUB_BUCKETS {
                let lower = if index == 0 { 0 } else { bucket_upper_us(index - 1) + 1 };
                assert!((upper - lower + 1) * SUB_BUCKETS <= lower + SUB_BUCKETS, "width of {index}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_nearest_rank_within_bucket_error() {
        let mut h = LagHistogram::new();
        assert_eq!(h.percentile_us(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1000); // 1 ms .. 1 s
        }
        let close = |got: Option<u64>, want: u64| {
            let got = got.expect("non-empty");
            assert!(got >= want && got - want <= want / 64 + 1, "got {got}, want ~{want}");
        };
        close(h.percentile_us(0.5), 500_000);
        close(h.percentile_us(0.95), 950_000);
        close(h.percentile_us(0.99), 990_000);
        assert_eq!(h.percentile_us(1.0), Some(1_000_000));
        assert_eq!(h.percentile_us(0.0), Some(1000));
        assert_eq!(h.min_us(), Some(1000));
        assert_eq!(h.max_us(), Some(1_000_000));
        assert_eq!(h.mean_us(), Some(500_500));
        h.record(u64::MAX);
        assert_eq!(h.percentile_us(1.0), Some(u64::MAX));
    }
}
