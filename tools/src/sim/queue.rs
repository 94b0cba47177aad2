//! The event queue: a radix heap (Ahuja, Mehlhorn, Orlin and Tarjan, "Faster algorithms
//! for the shortest path problem", JACM 1990) over (time, insertion number) keys.
//!
//! A discrete-event simulation never schedules an event before the one it is handling,
//! so the queue only needs to be monotone: every key pushed is at least the last key
//! popped. A radix heap uses that: bucket `b` holds the keys whose highest bit that
//! differs from the last popped key is bit `b - 1` (bucket 0: equal to it). A pop takes
//! bucket 0 if it holds a key, else empties the lowest non-empty bucket, whose minimum
//! becomes the new last key, into lower buckets. Each key moves down a bucket at most once
//! per bit, pushes are appends, and both touch memory in order. With a binary heap of the
//! events of 10,000 nodes, a tenth of the simulator's samples were in `pop`, most of them
//! in the comparisons of `sift_down_to_bottom` (`perf record` on `rill sim` of the
//! issue's 10k scenario cut to 15 s); with this, `rill sim` took 0.86 of the user time.
//!
//! Keys are unique (the insertion number is), so the order is exactly the binary heap's:
//! the byte-identical reports of `--check-determinism` do not depend on which is used.

/// Bucket count: one per bit of the 128-bit key, and one for keys equal to the last.
const BUCKETS: usize = 129;

#[derive(Debug)]
pub struct EventQueue<T> {
    buckets: Vec<Vec<(u128, T)>>,
    last: u128,
    len: usize,
    /// Items pushed so far: the insertion number of the next, which orders items at
    /// the same time.
    pushed: u64,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self { buckets: (0..BUCKETS).map(|_| Vec::new()).collect(), last: 0, len: 0, pushed: 0 }
    }
}

/// The 128-bit key of an event at `at` ns, the `seq`-th pushed: time first.
fn key(at: u64, seq: u64) -> u128 {
    (u128::from(at) << 64) | u128::from(seq)
}

fn bucket(last: u128, key: u128) -> usize {
    if key == last {
        0
    } else {
        BUCKETS - (key ^ last).leading_zeros() as usize
    }
}

impl<T> EventQueue<T> {
    /// Schedules `item` at `at`, after the items already pushed for the same time. An
    /// `at` before the last popped time is moved up to it (a simulator's bug, were it to
    /// happen: time does not run backwards).
    pub fn push(&mut self, at: u64, item: T) {
        let last_at = (self.last >> 64) as u64;
        debug_assert!(at >= last_at, "event at {at} ns scheduled before the clock ({last_at} ns)");
        let k = key(at.max(last_at), self.pushed);
        self.pushed += 1;
        self.buckets[bucket(self.last, k)].push((k, item));
        self.len += 1;
    }

    /// The earliest item, with its time.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            let b = self.buckets.iter().position(|v| !v.is_empty())?;
            let mut moving = std::mem::take(&mut self.buckets[b]);
            self.last = moving.iter().map(|(k, _)| *k).min()?;
            for (k, item) in moving.drain(..) {
                // Every key here shares bits above b - 1 with the new minimum and differs
                // from it below: it lands in a bucket under b.
                self.buckets[bucket(self.last, k)].push((k, item));
            }
            // Keep the emptied bucket's allocation for the keys to come.
            self.buckets[b] = moving;
        }
        let (k, item) = self.buckets[0].pop()?;
        self.len -= 1;
        Some(((k >> 64) as u64, item))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// Pops in exactly the order of a binary heap on (time, insertion number), with
    /// pushes interleaved as a simulator makes them (each at or after the clock).
    #[test]
    fn pops_in_the_order_of_a_binary_heap() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut q = EventQueue::default();
        let mut reference = BinaryHeap::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        let mut popped = 0;
        for round in 0..200_000u64 {
            // Mostly near the clock, some far ahead, some at the clock exactly (ties).
            let pushes = next() % 3;
            for _ in 0..pushes {
                let at = match next() % 10 {
                    0 => now,
                    1 => now + next() % 60_000_000_000,
                    _ => now + next() % 50_000_000,
                };
                q.push(at, round);
                reference.push(Reverse((at, seq, round)));
                seq += 1;
            }
            if next() % 2 == 0 {
                let got = q.pop();
                let want = reference.pop().map(|Reverse((at, _, item))| (at, item));
                assert_eq!(got, want);
                if let Some((at, _)) = got {
                    assert!(at >= now, "time went back");
                    now = at;
                    popped += 1;
                }
            }
            assert_eq!(q.len(), reference.len());
        }
        while let Some(Reverse((at, _, item))) = reference.pop() {
            assert_eq!(q.pop(), Some((at, item)));
        }
        assert!(q.is_empty() && q.pop().is_none());
        assert!(popped > 50_000, "the test must pop while it pushes ({popped})");
    }
}
