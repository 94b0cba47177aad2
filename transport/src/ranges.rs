//! A set of half-open `u64` ranges with a bound on how many disjoint ranges it keeps.
//!
//! Used for packet numbers received (ack generation), message bytes received or
//! acknowledged, and message ids finished. Every set states its bound where it is made.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (exclusive); ranges are disjoint and never adjacent.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn contains(&self, x: u64) -> bool {
        self.map.range(..=x).next_back().is_some_and(|(_, &end)| x < end)
    }

    /// True if all of `r` is in the set.
    pub fn contains_range(&self, r: Range<u64>) -> bool {
        if r.is_empty() {
            return true;
        }
        self.map.range(..=r.start).next_back().is_some_and(|(_, &end)| r.end <= end)
    }

    /// Add `r`; returns how many values were new.
    pub fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.is_empty() {
            return 0;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut covered = 0;
        // Merge with a range that starts before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                if e >= end {
                    return 0;
                }
                covered += e - start;
                start = s;
                self.map.remove(&s);
            }
        }
        // Swallow every range that starts inside [start, end].
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            covered += e.min(end) - s.max(r.start).min(e.min(end));
            end = end.max(e);
        }
        self.map.insert(start, end);
        (r.end - r.start) - covered.min(r.end - r.start)
    }

    /// Remove `r` from the set.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let overlapping: Vec<(u64, u64)> =
            self.map.range(..r.end).rev().take_while(|(_, &e)| e > r.start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in overlapping {
            self.map.remove(&s);
            if s < r.start {
                self.map.insert(s, r.start);
            }
            if e > r.end {
                self.map.insert(r.end, e);
            }
        }
    }

    /// Drop everything below `x`.
    pub fn remove_below(&mut self, x: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= x {
                break;
            }
            self.map.remove(&s);
            if e > x {
                self.map.insert(x, e);
                break;
            }
        }
    }

    pub fn first(&self) -> Option<Range<u64>> {
        self.map.first_key_value().map(|(&s, &e)| s..e)
    }

    pub fn last(&self) -> Option<Range<u64>> {
        self.map.last_key_value().map(|(&s, &e)| s..e)
    }

    /// Remove and return up to `max_len` values from the front.
    pub fn pop_front(&mut self, max_len: u64) -> Option<Range<u64>> {
        let (&s, &e) = self.map.first_key_value()?;
        self.map.remove(&s);
        let take_end = if e - s > max_len { s + max_len } else { e };
        if take_end < e {
            self.map.insert(take_end, e);
        }
        Some(s..take_end)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Total number of values in the set.
    pub fn total(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        assert_eq!(s.insert(0..5), 5);
        assert_eq!(s.insert(5..7), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.insert(10..12), 2);
        assert_eq!(s.insert(3..11), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..12]);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0u64..200, 0u64..20, 0u8..3), 0..100)) {
            let mut s = RangeSet::new();
            let mut model = BTreeSet::new();
            for (start, len, op) in ops {
                let r = start..start + len;
                match op {
                    0 => {
                        let new = r.clone().filter(|x| !model.contains(x)).count() as u64;
                        prop_assert_eq!(s.insert(r.clone()), new);
                        model.extend(r);
                    }
                    1 => { s.remove(r.clone()); for x in r { model.remove(&x); } }
                    _ => { s.remove_below(start); model.retain(|&x| x >= start); }
                }
                prop_assert_eq!(s.total(), model.len() as u64);
                for x in 0..230 { prop_assert_eq!(s.contains(x), model.contains(&x)); }
                // Disjoint, non-adjacent, sorted.
                let v: Vec<_> = s.iter().collect();
                for w in v.windows(2) { prop_assert!(w[0].end < w[1].start); }
            }
        }
    }
}
