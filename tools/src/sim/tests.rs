//! End-to-end tests of `rill sim`: whole runs on tiny swarms.

use std::path::Path;

use serde_json::Value;

use super::scenario::Scenario;
use super::{difference, run_once};

/// A swarm small enough for a debug-build test: 20 viewers, 3 s.
const TINY: &str = "
[stream]
duration_s = 3
[swarm]
viewers = 20
relays = 1
join_over_s = 0.5
[playout]
latency_ms = 500
";

fn tiny(extra: &str) -> Scenario {
    Scenario::parse(&format!("{TINY}\n{extra}")).unwrap()
}

fn run(sc: &Scenario, seed: u64) -> Value {
    run_once(sc, "tiny", seed, None, false).unwrap()
}

#[test]
fn same_seed_same_figures_other_seed_other_figures() {
    let sc = tiny("");
    let a = run(&sc, 1);
    let b = run(&sc, 1);
    assert_eq!(difference(&a, &b), None);
    let c = run(&sc, 2);
    assert!(difference(&a, &c).is_some(), "seeds 1 and 2 gave the same figures");
    // With churn and loss too (more random streams involved).
    let sc = tiny(
        "[network]\nloss = 0.02\n[churn]\nleave_per_min = 6\nmass_departure = { at_s = 2, fraction = 0.5 }",
    );
    let a = run(&sc, 3);
    let b = run(&sc, 3);
    assert_eq!(difference(&a, &b), None);
}

#[test]
fn difference_ignores_wall_time_only() {
    let a: Value = serde_json::json!({"x": 1, "wall_s": 1.0});
    let b: Value = serde_json::json!({"x": 1, "wall_s": 2.0});
    let c: Value = serde_json::json!({"x": 2, "wall_s": 1.0});
    assert_eq!(difference(&a, &b), None);
    assert_eq!(difference(&a, &c).unwrap(), "`x`: 1 vs 2");
}

#[test]
fn report_has_every_figure() {
    let v = run(&tiny(""), 1);
    for key in [
        "scenario",
        "seed",
        "viewers",
        "chunks",
        "arrival_lag_ms",
        "lag_floor_ms",
        "lag_floor_p50_ms",
        "lag_floor_formula",
        "continuity_index",
        "arrival_lag_p99_ms_by_s",
        "arrival_lag_ms_by_hops",
        "lost_chunks",
        "startup_ms",
        "hop_count",
        "rdp_mean",
        "overhead_ratio",
        "duplicate_ratio",
        "publisher_upload",
        "upload_utilisation",
        "queue_drops",
        "forged_chunks",
        "reparents",
        "tree_moves",
        "wall_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for p in ["p50", "p95", "p99", "max"] {
        assert!(v["arrival_lag_ms"].get(p).is_some());
    }
    assert_eq!(v["viewers"], 20);
    // 3 s of 25 ms chunks.
    assert_eq!(v["chunks"], 120);
    // The floor: at least the minimum one-way delay (10 ms) plus one 1200-byte packet at
    // 20 Mbit/s (0.48 ms); p99 ≥ p50; and a lower bound on what rill measured.
    let floor99 = v["lag_floor_ms"].as_f64().unwrap();
    let floor50 = v["lag_floor_p50_ms"].as_f64().unwrap();
    assert!(floor50 >= 10.48 && floor99 >= floor50 && floor99 <= 50.48, "{floor50} {floor99}");
    let lag = |p: &str| v["arrival_lag_ms"][p].as_f64().unwrap();
    assert!(lag("p50") >= floor50 && lag("p99") >= floor99, "{} {}", v["arrival_lag_ms"], floor99);
    // Counted pairs split exactly into on time, late and lost.
    let counted = v["counted_pairs"].as_u64().unwrap();
    let lost = v["lost_chunks"].as_u64().unwrap();
    let late = v["late_chunks"].as_u64().unwrap();
    if let Some(ci) = v["continuity_index"].as_f64() {
        let on_time = counted - lost - late;
        assert!((ci - on_time as f64 / counted as f64).abs() < 1e-3, "{v}");
    }
    assert_eq!(v["forged_chunks"], 0);
    assert_eq!(v["unroutable"], 0);
}

#[test]
fn shipped_scenarios_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    for name in ["issue-10k.toml", "issue-10k-churn.toml", "small.toml", "small-churn.toml"] {
        let sc = Scenario::load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(sc.swarm.viewers >= 300, "{name}");
    }
    let sc = Scenario::load(&root.join("issue-10k-churn.toml")).unwrap();
    assert_eq!(sc.swarm.viewers, 10_000);
    assert_eq!(sc.churn.leave_per_min, 0.1);
    let m = sc.churn.mass_departure.unwrap();
    assert_eq!((m.at_s, m.fraction), (30.0, 0.3));
}

/// The figures of a few hundred viewers, asserted: deterministic (virtual time, fixed
/// seed), so a change that makes the swarm slower, lossier or costlier fails here. The
/// bounds sit above today's figures with some room (noted beside each), not at the
/// issue's targets for 10,000 viewers.
#[test]
fn a_few_hundred_viewers_get_the_stream_in_time_at_bounded_cost() {
    let sc = Scenario::parse(
        "[stream]\nduration_s = 15\nchunk_ms = 25\n[swarm]\nviewers = 200\njoin_over_s = 2.0\n[playout]\nlatency_ms = 1000\n",
    )
    .unwrap();
    let v = run(&sc, 1);
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let lag = |p: &str| v["arrival_lag_ms"][p].as_f64().unwrap();
    eprintln!("{v}");
    assert_eq!(v["never_started"], 0);
    assert_eq!(v["forged_chunks"], 0);
    assert!(f("continuity_index") >= 0.90, "continuity {}", f("continuity_index"));
    assert!(lag("p50") <= 600.0, "p50 {}", lag("p50"));
    assert!(lag("p99") <= 2500.0, "p99 {}", lag("p99"));
    assert!(v["startup_ms"]["p95"].as_f64().unwrap() <= 3000.0);
    assert!(f("overhead_ratio") <= 1.30, "overhead {}", f("overhead_ratio"));
    assert!(f("duplicate_ratio") <= 0.25, "duplicates {}", f("duplicate_ratio"));
    assert!(f("publisher_upload") <= 6.0, "publisher upload {}", f("publisher_upload"));
}
