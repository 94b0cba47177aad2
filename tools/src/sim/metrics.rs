//! What the simulator measures at each viewer, and the figures of shared/METRICS.md made
//! from it.
//!
//! Counted (viewer, chunk) pairs: chunk `s` counts for viewer `v` when it was ingested at
//! or after v's startup (its first keyframe chunk; a viewer that never got one counts from
//! its join, so its failure shows as lost chunks instead of vanishing) and its playout
//! deadline (ingest + latency) fell while v was in the swarm and before the run ended. Such
//! a pair is *on time* if the chunk arrived by its deadline, *late* if it arrived after,
//! *lost* if it never arrived.

/// Per-viewer record, filled as chunk events come in.
#[derive(Debug)]
pub struct ViewerRec {
    /// Simulator index of the node.
    pub node: u32,
    pub joined_ns: u64,
    pub left_ns: Option<u64>,
    /// When the first keyframe chunk was held (verified).
    pub startup_ns: Option<u64>,
    /// First counted chunk (set at startup, or at the end for a viewer that never started).
    pub base: u64,
    /// Arrival lag in µs of chunk `base + i`, `u32::MAX` if not (yet) held.
    pub lag_us: Vec<u32>,
    /// Overlay hops of chunk `base + i`.
    pub hops: Vec<u8>,
}

/// The stream's timing: which chunk was ingested when.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub chunk_ns: u64,
    pub chunks: u64,
    pub latency_ns: u64,
    pub end_ns: u64,
}

impl Timing {
    /// The publisher ingests the last byte of chunk `seq` when its `chunk_ms` of media is
    /// complete: (seq + 1) × chunk duration after the start.
    pub fn ingest_ns(&self, seq: u64) -> u64 {
        (seq + 1) * self.chunk_ns
    }

    /// The first chunk ingested at or after `t`.
    pub fn first_ingested_from(&self, t: u64) -> u64 {
        t.div_ceil(self.chunk_ns).saturating_sub(1)
    }

    /// One past the last chunk whose deadline (ingest + latency) is at or before `t`.
    pub fn deadline_limit(&self, t: u64) -> u64 {
        match t.checked_sub(self.latency_ns) {
            Some(x) => (x / self.chunk_ns).min(self.chunks),
            None => 0,
        }
    }
}

impl ViewerRec {
    pub fn new(node: u32, joined_ns: u64) -> ViewerRec {
        ViewerRec {
            node,
            joined_ns,
            left_ns: None,
            startup_ns: None,
            base: 0,
            lag_us: Vec::new(),
            hops: Vec::new(),
        }
    }

    /// A chunk held for the first time.
    pub fn on_chunk(&mut self, timing: &Timing, now: u64, seq: u64, keyframe: bool, hops: u8) {
        if self.startup_ns.is_none() {
            if !keyframe {
                return;
            }
            self.startup_ns = Some(now);
            self.base = timing.first_ingested_from(now);
            let n = timing.chunks.saturating_sub(self.base) as usize;
            self.lag_us = vec![u32::MAX; n];
            self.hops = vec![0; n];
        }
        if seq < self.base || seq >= timing.chunks {
            return;
        }
        let i = (seq - self.base) as usize;
        let lag = now.saturating_sub(timing.ingest_ns(seq)) / 1000;
        self.lag_us[i] = lag.min(u64::from(u32::MAX - 1)) as u32;
        self.hops[i] = hops;
    }

    /// The counted chunks [first, limit).
    pub fn counted(&self, timing: &Timing) -> (u64, u64) {
        let first = match self.startup_ns {
            Some(_) => self.base,
            None => timing.first_ingested_from(self.joined_ns),
        };
        let until = self.left_ns.unwrap_or(timing.end_ns).min(timing.end_ns);
        (first, timing.deadline_limit(until).max(first))
    }

    /// Chunks ingested while the viewer was in the swarm (the media it should receive).
    pub fn present_chunks(&self, timing: &Timing) -> u64 {
        let until = self.left_ns.unwrap_or(timing.end_ns).min(timing.end_ns);
        let first = timing.first_ingested_from(self.joined_ns);
        let last = (until / timing.chunk_ns).min(timing.chunks); // ingest ≤ until
        last.saturating_sub(first)
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least p % of
/// all samples at or below it. `None` for no samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Figures over all viewers' counted pairs.
#[derive(Debug, Default)]
pub struct Summary {
    /// Arrival lags (µs) of received counted pairs, sorted.
    pub lags_us: Vec<u32>,
    pub counted: u64,
    pub on_time: u64,
    pub lost: u64,
    pub hops_sum: u64,
    pub hops_max: u8,
    pub rdp_sum: f64,
    /// Startup delays (ns), sorted.
    pub startup_ns: Vec<u64>,
    /// Viewers that had time to start (in the swarm for latency + a keyframe interval) but
    /// never held a keyframe chunk.
    pub never_started: u64,
    /// Σ over viewers of the media bytes ingested while they were in the swarm.
    pub media_bytes_owed: u64,
    /// Per second of stream (by chunk ingest time): (counted pairs, pairs on time). Shows
    /// when continuity suffered, e.g. around a mass departure.
    pub by_second: Vec<(u64, u64)>,
    /// Per second of stream (by chunk ingest time, as `by_second`): the received pairs'
    /// arrival lags (µs), sorted. Shows whether the lag's tail comes from the join crowd, a
    /// departure or the steady state. Together with `lag_by_hops`, twice `lags_us`.
    pub lag_by_second: Vec<Vec<u32>>,
    /// By overlay hop count (index; [`MAX_HOPS_TRACKED`] and over share the last): the
    /// received pairs' arrival lags (µs), sorted. Their differences are the hop delay
    /// along the trees.
    pub lag_by_hops: Vec<Vec<u32>>,
}

/// Hop counts at and beyond this share one [`Summary::lag_by_hops`] entry.
pub const MAX_HOPS_TRACKED: usize = 24;

impl Summary {
    /// `rdp_denominator_ns(node)`: direct publisher→viewer delay + one chunk's transmit
    /// time at the publisher's upload; `grace_ns`: how long a viewer may take to start.
    pub fn collect(
        viewers: &[ViewerRec],
        timing: &Timing,
        chunk_bytes: u64,
        grace_ns: u64,
        rdp_denominator_ns: impl Fn(u32) -> u64,
    ) -> Summary {
        let mut s = Summary::default();
        for v in viewers {
            s.media_bytes_owed += v.present_chunks(timing) * chunk_bytes;
            match v.startup_ns {
                Some(t) => s.startup_ns.push(t - v.joined_ns),
                None => {
                    let until = v.left_ns.unwrap_or(timing.end_ns).min(timing.end_ns);
                    if until.saturating_sub(v.joined_ns) >= grace_ns {
                        s.never_started += 1;
                    }
                }
            }
            let (first, limit) = v.counted(timing);
            let denominator = rdp_denominator_ns(v.node).max(1) as f64;
            for seq in first..limit {
                s.counted += 1;
                let second = (timing.ingest_ns(seq) / 1_000_000_000) as usize;
                if s.by_second.len() <= second {
                    s.by_second.resize(second + 1, (0, 0));
                    s.lag_by_second.resize_with(second + 1, Vec::new);
                }
                s.by_second[second].0 += 1;
                let i = seq.wrapping_sub(v.base) as usize;
                let lag = if v.startup_ns.is_some() { v.lag_us.get(i).copied() } else { None };
                match lag {
                    Some(lag) if lag != u32::MAX => {
                        s.lags_us.push(lag);
                        s.lag_by_second[second].push(lag);
                        if u64::from(lag) * 1000 <= timing.latency_ns {
                            s.on_time += 1;
                            s.by_second[second].1 += 1;
                        }
                        let hops = v.hops[i];
                        let h = usize::from(hops).min(MAX_HOPS_TRACKED);
                        if s.lag_by_hops.len() <= h {
                            s.lag_by_hops.resize_with(h + 1, Vec::new);
                        }
                        s.lag_by_hops[h].push(lag);
                        s.hops_sum += u64::from(hops);
                        s.hops_max = s.hops_max.max(hops);
                        s.rdp_sum += f64::from(lag) * 1000.0 / denominator;
                    }
                    _ => s.lost += 1,
                }
            }
        }
        s.lags_us.sort_unstable();
        s.lag_by_second.iter_mut().chain(&mut s.lag_by_hops).for_each(|v| v.sort_unstable());
        s.startup_ns.sort_unstable();
        s
    }

    pub fn received(&self) -> u64 {
        self.lags_us.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7u32], 99.0), Some(7));
        // 10 samples: p95 is the 10th (rank ceil(9.5) = 10), p50 the 5th.
        let v = [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 1000];
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 95.0), Some(1000));
        assert_eq!(percentile(&v, 90.0), Some(9));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }

    fn timing() -> Timing {
        // 50 ms chunks, 20 chunks (1 s), 200 ms latency.
        Timing { chunk_ns: 50_000_000, chunks: 20, latency_ns: 200_000_000, end_ns: 1_000_000_000 }
    }

    #[test]
    fn chunk_timing() {
        let t = timing();
        assert_eq!(t.ingest_ns(0), 50_000_000);
        assert_eq!(t.first_ingested_from(0), 0);
        assert_eq!(t.first_ingested_from(50_000_000), 0);
        assert_eq!(t.first_ingested_from(50_000_001), 1);
        // Deadline of chunk s is (s + 1) × 50 + 200 ms: by 1000 ms chunks 0..=15 are due.
        assert_eq!(t.deadline_limit(1_000_000_000), 16);
        assert_eq!(t.deadline_limit(249_999_999), 0);
        assert_eq!(t.deadline_limit(250_000_000), 1);
    }

    #[test]
    fn counted_pairs_on_time_late_and_lost() {
        let t = timing();
        let mut v = ViewerRec::new(1, 120_000_000);
        // Chunks before the first keyframe are not counted (startup has not happened).
        v.on_chunk(&t, 130_000_000, 1, false, 1);
        // Keyframe chunk 0 held at 160 ms: startup 40 ms after join; counting starts with
        // chunk 3 (ingested at 200 ms ≥ 160 ms).
        v.on_chunk(&t, 160_000_000, 0, true, 2);
        assert_eq!(v.base, 3);
        v.on_chunk(&t, 230_000_000, 3, false, 2); // lag 30 ms
        v.on_chunk(&t, 600_000_000, 4, false, 3); // lag 350 ms: late
        v.left_ns = Some(700_000_000); // chunks due by 700 ms: 0..=9; counted 3..10
        assert_eq!(v.counted(&t), (3, 10));
        let s = Summary::collect(&[v], &t, 1000, 0, |_| 100_000_000);
        assert_eq!(s.counted, 7);
        assert_eq!(s.lags_us, vec![30_000, 350_000]);
        assert_eq!(s.on_time, 1);
        assert_eq!(s.lost, 5);
        // Chunks 3..=9 are ingested at 200..=500 ms: all in second 0.
        assert_eq!(s.by_second, vec![(7, 1)]);
        assert_eq!(s.lag_by_second, vec![vec![30_000, 350_000]]);
        // Chunk 3 came over 2 hops, chunk 4 over 3.
        assert_eq!(s.lag_by_hops, vec![vec![], vec![], vec![30_000], vec![350_000]]);
        assert_eq!((s.hops_sum, s.hops_max), (5, 3));
        assert!((s.rdp_sum - (0.3 + 3.5)).abs() < 1e-9);
        assert_eq!(s.startup_ns, vec![40_000_000]);
        // Present from 120 ms to 700 ms: chunks 2..=13 ingested (150..700 ms).
        assert_eq!(s.media_bytes_owed, 12 * 1000);
    }

    #[test]
    fn a_viewer_that_never_starts_loses_everything_after_joining() {
        let t = timing();
        let v = ViewerRec::new(1, 300_000_000);
        // Chunks 5..16 (ingested 300 ms.. ; due by 1000 ms) all lost.
        let s = Summary::collect(&[v], &t, 1000, 500_000_000, |_| 1);
        assert_eq!((s.counted, s.lost, s.received()), (11, 11, 0));
        assert_eq!(s.never_started, 1);
        let late_joiner = ViewerRec::new(2, 900_000_000);
        let s = Summary::collect(&[late_joiner], &t, 1000, 500_000_000, |_| 1);
        assert_eq!((s.counted, s.never_started), (0, 0));
    }
}
