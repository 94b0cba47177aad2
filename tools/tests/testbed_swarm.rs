//! `rill testbed swarm` end to end: real `rill publish` and `rill watch` processes in
//! namespaces, every viewer's output byte for byte the sample, nothing left afterwards.
//! Needs root; without it the test prints why it skipped and passes. Bad arguments are
//! checked without root.

use std::process::Command;

const RILL: &str = env!("CARGO_BIN_EXE_rill");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn our_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).lines().filter(|l| l.starts_with("rilltb")).map(str::to_string).collect()
}

#[test]
fn a_small_swarm_delivers_the_sample_byte_for_byte_and_leaves_nothing() {
    if !is_root() {
        eprintln!("a_small_swarm_delivers_the_sample_byte_for_byte_and_leaves_nothing: skipped: needs root");
        return;
    }
    let child = Command::new(RILL)
        .args(["testbed", "swarm", "--nodes", "3", "--verify-output", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run rill");
    // The testbed names its namespaces `rilltb<pid>-…` after its own pid: only those are
    // this run's (another run may be going on beside the test).
    let prefix = format!("rilltb{}-", child.id());
    let out = child.wait_with_output().expect("run rill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stdout}\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let checks = &v["checks"];
    assert_eq!(checks["outputs_valid"], "3/3", "{v}");
    assert_eq!(checks["public_viewers_receiving"], "3/3", "{v}");
    assert_eq!(checks["leftovers"], 0, "{v}");
    assert_eq!(checks["failures"], serde_json::json!([]), "{v}");
    assert!(v["arrival_lag_pairs"].as_u64().unwrap_or(0) > 0, "{v}");
    let mine: Vec<String> = our_namespaces().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(mine.is_empty(), "left behind: {mine:?}");
}

#[test]
fn bad_arguments_get_one_line_and_exit_2() {
    for (args, needle) in [
        (&["--nodes", "0"][..], "--nodes must be"),
        (&["--nat", "2"][..], "--nat is a fraction"),
        (&["--duration", "1"][..], "--duration must be"),
        (&["--churn", "--verify-output"][..], "cannot go with --churn"),
    ] {
        let out = Command::new(RILL).args(["testbed", "swarm"]).args(args).output().expect("run rill");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle) && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
    let out = Command::new(RILL).args(["testbed", "report", "--only", "nope"]).output().expect("run rill");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such benchmark"));
}
