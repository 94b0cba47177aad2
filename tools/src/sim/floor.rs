//! The lag floor: a lower bound on arrival lag that no overlay can beat on the scenario.
//!
//! Two limits hold for every chunk, whatever the overlay (rill's or another), and the
//! floor takes the larger at each rank:
//!
//! - **Distance.** A chunk's last packet cannot reach a viewer before the publisher has
//!   serialized one packet and that packet has propagated along the fastest chain of
//!   nodes from the publisher to the viewer:
//!   `prop(v)` = shortest-path propagation delay publisher → v over the complete graph of
//!   nodes (any node may relay) + one 1200-byte packet at the publisher's upload.
//! - **Spread.** A node holding a packet hands out at most one copy per packet time of its
//!   upload, and each copy spends at least the smallest one-way delay on the way. So the
//!   i-th node to hold a chunk's last packet cannot hold it before `spread(i)`: the i-th
//!   arrival when the publisher (at its upload) and every holder (at the largest upload of
//!   any other node) send copies back to back from the moment they hold it, each to a node that
//!   has none, each taking the smallest delay. Any real schedule does no better: its k-th
//!   arrival is some holder's j-th copy, the holders before it came no earlier than in
//!   that race (by induction on k), and a copy is no sooner than its holder's arrival plus
//!   j packet times plus the smallest delay. This is what bandwidth and N cost: with
//!   10,000 viewers a packet needs about four generations of copies, each at least the
//!   smallest delay.
//!
//! For each chunk, the viewers' arrival lags sorted ascending are at least
//! `max(prop_(i), spread(i))` at each rank i (`prop_(i)` the i-th smallest `prop`). The
//! simulator reports the p99 and p50 of that sequence; the p99 is the figure to compare
//! with `arrival_lag_ms.p99`. A real chunk also needs all its packets, verification, and
//! a share of upload that the rest of the stream also needs; the floor ignores all of
//! that, so it is loose, never wrong.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Shortest propagation delays from `src` to every node of the complete graph on `n`
/// nodes with edge weights `delay(a, b)`: Dijkstra with a linear scan for the next node,
/// O(n²) delay evaluations, which beats a heap on a complete graph.
pub fn shortest_delays(n: usize, src: usize, delay: impl Fn(usize, usize) -> u64) -> Vec<u64> {
    let mut dist = vec![u64::MAX; n];
    let mut done = vec![false; n];
    if n == 0 {
        return dist;
    }
    dist[src] = 0;
    for _ in 0..n {
        let mut u = usize::MAX;
        let mut best = u64::MAX;
        for (i, (&d, &fixed)) in dist.iter().zip(&done).enumerate() {
            if !fixed && d < best {
                best = d;
                u = i;
            }
        }
        if u == usize::MAX {
            break;
        }
        done[u] = true;
        for v in 0..n {
            if !done[v] {
                let via = best.saturating_add(delay(u, v));
                if via < dist[v] {
                    dist[v] = via;
                }
            }
        }
    }
    dist
}

/// `spread(1..=count)`, ns (see the module docs): the earliest times at which 1, 2, …,
/// `count` nodes besides the publisher can hold one packet that the publisher holds at 0,
/// when the publisher sends a copy every `publisher_copy_ns`, every other holder one every
/// `copy_ns`, and each copy arrives `min_delay_ns` after it was sent. Ascending.
/// O(count log count): a heap of each holder's next copy.
pub fn spread_times(count: usize, publisher_copy_ns: u64, copy_ns: u64, min_delay_ns: u64) -> Vec<u64> {
    // (arrival of the copy, copy number j ≥ 1, holder's own arrival, its copy time).
    let mut next = BinaryHeap::with_capacity(count + 1);
    next.push(Reverse((publisher_copy_ns.saturating_add(min_delay_ns), 1u64, 0u64, publisher_copy_ns)));
    let mut arrivals = Vec::with_capacity(count);
    while arrivals.len() < count {
        let Some(Reverse((at, j, held, copy))) = next.pop() else { break };
        arrivals.push(at);
        let copy_arrival = |held: u64, j: u64, copy: u64| {
            held.saturating_add(copy.saturating_mul(j)).saturating_add(min_delay_ns)
        };
        next.push(Reverse((copy_arrival(held, j + 1, copy), j + 1, held, copy)));
        next.push(Reverse((copy_arrival(at, 1, copy_ns), 1, at, copy_ns)));
    }
    arrivals
}

/// The formula, as printed in reports.
pub const FORMULA: &str = "lag_floor: at each rank i over the initial viewers, max(prop_(i), spread(i)); \
     prop(v) = shortest-path one-way delay publisher→v over the complete graph of the initial \
     nodes (any node may relay) + one 1200-byte packet at publisher_upload_kbps; spread(i) = \
     earliest time i nodes can hold one 1200-byte packet when the publisher (at its upload) \
     and every holder (at the largest upload of any other node) send copies back to back, each \
     arriving after the smallest one-way delay; lag_floor_ms = p99 of that sequence \
     (lag_floor_p50_ms the p50)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_relaying_beats_the_direct_path() {
        // Publisher 0; 0–1 is 50 ms, 0–2 is 10 ms, 1–2 is 15 ms: 1 is best reached via 2.
        let delay = |a: usize, b: usize| match (a.min(b), a.max(b)) {
            (0, 1) => 50,
            (0, 2) => 10,
            (1, 2) => 15,
            _ => unreachable!(),
        };
        assert_eq!(shortest_delays(3, 0, delay), vec![0, 25, 10]);
        // Without the shortcut the direct path wins.
        let direct = |a: usize, b: usize| if a.min(b) == 1 && a.max(b) == 2 { 100 } else { 10 };
        assert_eq!(shortest_delays(3, 0, direct), vec![0, 10, 10]);
        assert_eq!(shortest_delays(1, 0, |_, _| 1), vec![0]);
        assert!(shortest_delays(0, 0, |_, _| 1).is_empty());
    }

    #[test]
    fn copies_spread_by_generations() {
        // Publisher copies every 2, holders every 3, delay 10. The publisher's copies
        // arrive at 12, 14, 16, …; the first holder's at 12 + 3 + 10 = 25, 28, …
        let t = spread_times(6, 2, 3, 10);
        assert_eq!(t, vec![12, 14, 16, 18, 20, 22]);
        let t = spread_times(9, 2, 3, 10);
        // By 25 the publisher has sent 7 (arrivals 12..=24) and the first holder 1.
        assert_eq!(&t[6..], &[24, 25, 26]);
        // Ascending, and never faster than a direct copy.
        let t = spread_times(10_000, 480, 800, 10_000);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(t[0], 10_480);
        // Four generations of copies (each ≥ 10 ms) reach 10,000 nodes; three do not.
        assert!(t[9_999] > 40_000 && t[9_999] < 60_000, "{}", t[9_999]);
        assert!(spread_times(0, 1, 1, 1).is_empty());
        // Saturates rather than overflows.
        assert_eq!(spread_times(3, u64::MAX, u64::MAX, u64::MAX), vec![u64::MAX; 3]);
    }
}
