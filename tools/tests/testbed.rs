//! `rill testbed` against the real kernel: namespaces, veths, qdiscs and the delay
//! forwarder come up, carry traffic with the configured delay, and are gone afterwards.
//! These need root; without it each test prints why it skipped and passes.

use std::process::Command;
use std::time::Duration;

use rill_tools::testbed::netns::{self, LinkSpec, Testbed};
use rill_tools::testbed::probe::{parse_ping_line, parse_ping_summary};

const RILL: &str = env!("CARGO_BIN_EXE_rill");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped: needs root (network namespaces)");
        return true;
    }
    false
}

/// Ping across the forwarder: RTT never below the configured delays, then nothing left.
#[test]
fn topology_carries_delayed_traffic_and_goes_away() {
    if skip("topology_carries_delayed_traffic_and_goes_away") {
        return;
    }
    let (prefix, pids) = {
        let mut tb = Testbed::new("test").unwrap();
        let a = tb
            .add_host("a", &LinkSpec { delay_ms: 7.0, ..Default::default() }, &LinkSpec::default())
            .unwrap();
        let b = tb.add_host("b", &LinkSpec::default(), &LinkSpec::shaped(10_000, 50, 3.0)).unwrap();
        let to = tb.public_addr(b).to_string();
        let out = tb.exec(a, &["ping", "-D", "-n", "-c", "5", "-i", "0.05", "-W", "2", &to]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(parse_ping_summary(&text), Some((5, 5)), "{text}");
        for r in text.lines().filter_map(parse_ping_line) {
            // a -> b: 7 + 3 ms; b -> a: 0 ms.
            assert!(r.rtt_ms >= 9.5, "RTT {} ms below the configured 10 ms", r.rtt_ms);
        }
        // A spawned child is tracked and killed at cleanup.
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let c = tb.spawn(b, &mut sleep).unwrap();
        assert!(tb.try_wait(c).unwrap().is_none());
        (tb.prefix().to_string(), tb.children_pids())
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(netns::leftovers(&prefix, &pids), Vec::<String>::new());
}

/// Without root the command fails at once with one line and status 2.
#[test]
fn without_root_one_clear_error() {
    let mut cmd = Command::new(RILL);
    cmd.args(["testbed", "check"]);
    if is_root() {
        // Drop to nobody for this one process.
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "rill: error: rill testbed needs root (network namespaces); run it with sudo\n"
    );
}
