//! The lag floor: a lower bound on arrival lag that no overlay can beat on the scenario.
//!
//! A chunk's first packet cannot reach a viewer before the publisher has serialized one
//! packet and that packet has propagated along the fastest chain of nodes from the
//! publisher to the viewer. Any overlay (rill's or another) forwards over some such chain,
//! so for each viewer
//!
//! ```text
//! floor(v) = shortest-path propagation delay publisher → v over the complete graph of
//!            nodes (any node may relay)  +  one 1200-byte packet at the publisher's upload
//! ```
//!
//! is a true lower bound on every chunk's arrival lag at v (a real chunk also needs all its
//! packets, verification, and upload capacity along the chain; the floor ignores all of
//! that, so it is loose, never wrong). The simulator reports the p99 and p50 of floor(v)
//! over the viewers; the p99 is the figure to compare with `arrival_lag_ms.p99`.

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

/// The formula, as printed in reports.
pub const FORMULA: &str =
    "lag_floor(v) = shortest-path one-way delay publisher→v over the complete graph of \
     the initial nodes (publisher, relays, initial viewers; any node may relay) + one 1200-byte packet at \
     publisher_upload_kbps; lag_floor_ms = p99 over viewers (lag_floor_p50_ms the p50)";

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
}
