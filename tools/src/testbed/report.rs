//! `rill testbed report`: runs the testbed benchmarks and writes BENCHMARKS.md, every table
//! with the command that made it, the commit it was built from and the machine it ran on
//! (shared/METRICS.md: "Name the scenario, the build, the machine").
//!
//! Each benchmark runs as a `rill testbed … --json` subprocess of this same binary: the
//! report knows only their command lines and their JSON output, not their code.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{Map, Value};

use crate::table::flatten_figures;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Where to write the report.
    #[arg(long, value_name = "FILE", default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Short runs (a few seconds each) that check the report end to end; their figures
    /// are not for quoting.
    #[arg(long)]
    pub quick: bool,
    /// Only these benchmarks, comma-separated (transport, transport-lossy, swarm, swarm-churn,
    /// swarm-nat, swarm-seeds).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub only: Vec<String>,
}

/// One benchmark: its name for `--only`, a title and a sentence for the report, and the
/// `rill` arguments that run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bench {
    pub name: &'static str,
    pub title: &'static str,
    pub about: &'static str,
    pub args: Vec<String>,
}

/// A benchmark runs at most this long (the longest takes about two minutes); then it is
/// killed and the report says so.
const BENCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A benchmark told to stop (SIGTERM) gets this long to take its testbed down before it
/// is killed.
const CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// The benchmarks, full or short.
pub fn benches(quick: bool) -> Vec<Bench> {
    let args = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    let swarm =
        if quick { "testbed swarm --nodes 5 --duration 8 --json" } else { "testbed swarm --nodes 30 --json" };
    vec![
        Bench {
            name: "transport",
            title: "Transport: rill vs kernel TCP through one bottleneck",
            about: "One 20 Mbit/s bottleneck between two namespaces (tbf queue in the router, delay by the forwarder): \
                    rill's transport against TCP CUBIC and BBR (iperf3), alone and sharing.",
            args: args(if quick { "testbed transport --json --duration 3" } else { "testbed transport --json" }),
        },
        Bench {
            name: "transport-lossy",
            title: "Transport on a lossy path",
            about: "The same path with 1 % random loss and ±2 ms of jitter toward the receiver (the forwarder's): \
                    what loss that is not congestion costs each flow, and whether the stream stays on time.",
            args: args(if quick {
                "testbed transport --json --duration 3 --loss 0.01 --jitter-ms 2"
            } else {
                "testbed transport --json --duration 15 --loss 0.01 --jitter-ms 2"
            }),
        },
        Bench {
            name: "swarm",
            title: "Swarm: a publisher and N viewers",
            about: "Every node a real `rill` process in a namespace of its own; uploads 1.5–5× the stream rate, \
                    access delays 5–25 ms each way (paths 10–50 ms); the built-in sample, looped.",
            args: args(swarm),
        },
        Bench {
            name: "swarm-churn",
            title: "Swarm with churn",
            about: "As above; a third of the viewers are killed (SIGKILL) at random times and restarted 1–5 s later.",
            args: args(&format!("{swarm} --churn")),
        },
        Bench {
            name: "swarm-seeds",
            title: "Swarm over several seeds",
            about: "The plain swarm, shorter, at eight seeds (eight topologies: uploads and delays drawn anew): \
                    one run's slowest start and lost chunks swing widely with the seed, so the counts over all \
                    runs' viewers say more than any one run. The last column is the totals.",
            args: args(if quick {
                "testbed swarm --nodes 5 --duration 8 --runs 2 --json"
            } else {
                "testbed swarm --nodes 30 --duration 8 --runs 8 --json"
            }),
        },
        Bench {
            name: "swarm-nat",
            title: "Swarm with NAT",
            about: "As the plain swarm, with 30 % of the viewers behind NAT (nftables masquerade): whether they \
                    receive, and from whom.",
            args: args(&format!("{swarm} --nat 0.3")),
        },
    ]
}

/// What one benchmark gave.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The JSON objects it printed, one per line.
    pub rows: Vec<Map<String, Value>>,
    /// Exit code; None if killed or not started.
    pub exit: Option<i32>,
    pub seconds: f64,
    /// Why it failed to run at all.
    pub error: Option<String>,
}

/// Where and from what the figures came.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub commit: String,
    pub machine: String,
    pub date: String,
}

pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    let all = benches(args.quick);
    for name in &args.only {
        if !all.iter().any(|b| b.name == name) {
            let names: Vec<&str> = all.iter().map(|b| b.name).collect();
            bail!("--only {name}: no such benchmark (there are {})", names.join(", "));
        }
    }
    super::netns::require_root()?;
    // A signal to the report reaches the benchmark running (see `run_bench`), which then
    // takes its testbed down itself, instead of the report dying alone and the benchmark
    // dying on its next write to our pipe, leaving its namespaces for the next run to sweep.
    super::netns::install_signal_handlers();
    let chosen: Vec<Bench> =
        all.into_iter().filter(|b| args.only.is_empty() || args.only.iter().any(|n| n == b.name)).collect();
    let provenance = Provenance { commit: commit(), machine: machine(), date: utc_date(now_unix_s()) };
    let exe = super::flows::rill_exe()?;
    let mut results = Vec::new();
    for b in &chosen {
        eprintln!("rill testbed report: running `rill {}`", b.args.join(" "));
        let outcome = run_bench(&exe, &b.args);
        if let Some(e) = &outcome.error {
            eprintln!("rill testbed report: {}: {e}", b.name);
        }
        results.push((b.clone(), outcome));
        if super::netns::interrupted() {
            bail!("interrupted; {} not written", args.out.display());
        }
    }
    let text = render(&provenance, args.quick, &results);
    std::fs::write(&args.out, text).with_context(|| format!("cannot write {}", args.out.display()))?;
    let failed = results.iter().filter(|(_, o)| o.exit != Some(0)).count();
    eprintln!(
        "rill testbed report: wrote {} ({} benchmarks, {failed} failed)",
        args.out.display(),
        results.len()
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs `rill ARGS`, its stderr passed through (progress), its stdout read as JSON lines.
fn run_bench(exe: &Path, args: &[String]) -> Outcome {
    let started = Instant::now();
    let mut command = Command::new(exe);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
    // Should the report be killed outright (SIGKILL, where no handler runs), the
    // benchmark gets a SIGTERM, and cleans up as on Ctrl-C.
    // SAFETY: prctl is an async-signal-safe system call; the closure touches no locks or
    // allocations.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome { error: Some(format!("cannot start: {e}")), ..Outcome::default() },
    };
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let end = started + BENCH_TIMEOUT;
    let mut error = None;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() >= end || super::netns::interrupted() => {
                // SIGTERM first so that the benchmark's testbed cleans up after itself;
                // SIGKILL only if it has not ended 10 s later.
                // SAFETY: kill has no memory preconditions; the pid is our child's.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let grace = Instant::now() + CLEANUP_GRACE;
                while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
                error = Some(if Instant::now() >= end {
                    format!("did not finish within {} min; stopped", BENCH_TIMEOUT.as_secs() / 60)
                } else {
                    "interrupted; stopped".to_string()
                });
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                error = Some(format!("cannot wait for it: {e}"));
                break None;
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    let rows = parse_rows(&text);
    Outcome { rows, exit, seconds: started.elapsed().as_secs_f64(), error }
}

/// The JSON objects of a benchmark's stdout, one per line (other lines are ignored).
pub fn parse_rows(text: &str) -> Vec<Map<String, Value>> {
    text.lines()
        .filter_map(|l| match serde_json::from_str::<Value>(l.trim()) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        })
        .collect()
}

/// The commit the binary's tree is at: short hash, `-dirty` with uncommitted changes.
fn commit() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash}-dirty")
            } else {
                hash
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

/// "CPU model, N cores, M GiB, Linux KERNEL" from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    describe_machine(&cpuinfo, &meminfo, kernel.trim())
}

pub fn describe_machine(cpuinfo: &str, meminfo: &str, kernel: &str) -> String {
    let field = |text: &str, key: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let model = field(cpuinfo, "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores =
        cpuinfo.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count();
    let mem_gib = field(meminfo, "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / (1024.0 * 1024.0));
    let mut s = format!("{model}, {cores} cores");
    if let Some(g) = mem_gib {
        s.push_str(&format!(", {g:.1} GiB"));
    }
    if !kernel.is_empty() {
        s.push_str(&format!(", Linux {kernel}"));
    }
    s
}

fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM UTC` of a UNIX time (days to civil date: H. Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
pub fn utc_date(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

const HOW_BUILT: &str = "\
Every figure below comes from real `rill` processes exchanging real UDP on this machine, \
inside an emulated network built by `rill testbed` (tools/src/testbed/netns.rs). Each host \
is a Linux network namespace joined by a veth pair to one router namespace, in a star. The \
router shapes each host's upload with an htb class and a byte-limited fifo (the queue in \
front of the bottleneck) and each host's download with a `tbf` qdisc; since this kernel has \
no `netem`, propagation delay, jitter and loss are added by a userspace forwarder that \
holds each packet from host A to host B for A's access delay plus B's; it runs in a \
real-time scheduling class so that the processes under test do not make it late, and \
swarm runs report how late it was (`checks.forwarder_timeliness`) and how much CPU the \
virtual machine's host took (`checks.cpu_steal`). NATed hosts sit behind a namespace of \
their own with an nftables masquerade. All namespaces share one \
clock, and every chunk carries the publisher's ingest time, so arrival lag is measured \
across processes without clock correction. The testbed removes every namespace, veth, \
qdisc and process it made, also on failure and Ctrl-C, and each run checks that.";

/// The whole BENCHMARKS.md.
pub fn render(p: &Provenance, quick: bool, results: &[(Bench, Outcome)]) -> String {
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str("Generated by `rill testbed report`");
    if quick {
        s.push_str(" --quick (short runs that check the report end to end: **not figures to quote**)");
    }
    s.push_str(". Figure names and units are those of shared/METRICS.md.\n\n");
    s.push_str(&format!("- commit: `{}`\n- machine: {}\n- date: {}\n\n", p.commit, p.machine, p.date));
    s.push_str("## How the testbed is built\n\n");
    s.push_str(HOW_BUILT);
    s.push_str("\n\n");
    for (b, o) in results {
        s.push_str(&section(p, b, o));
    }
    s
}

fn section(p: &Provenance, b: &Bench, o: &Outcome) -> String {
    let mut s = format!("## {}\n\n{}\n\n", b.title, b.about);
    s.push_str(&format!("```\nrill {}\n```\n\n", b.args.join(" ")));
    s.push_str(&format!(
        "Commit `{}`; {}; {}; the run took {:.0} s.\n\n",
        p.commit, p.machine, p.date, o.seconds
    ));
    if let Some(e) = &o.error {
        s.push_str(&format!("**The benchmark did not complete: {e}.**\n\n"));
    } else if o.exit != Some(0) {
        let code = o.exit.map_or("a signal".to_string(), |c| format!("status {c}"));
        s.push_str(&format!(
            "**The command exited with {code}; its checks or run failed (figures below as printed).**\n\n"
        ));
    }
    if o.rows.is_empty() {
        s.push_str("(no figures)\n\n");
        return s;
    }
    // Several runs and their totals: the totals say how many runs met each target.
    let several = o.rows.iter().any(|r| r.get("scenario").and_then(Value::as_str) == Some("swarm-runs"));
    for row in o.rows.iter().filter(|_| !several) {
        if let Some(Value::Object(t)) = row.get("targets") {
            s.push_str(&targets_list(t));
        }
    }
    s.push_str(&figures_table(&o.rows));
    s.push('\n');
    s
}

/// The issue's targets, one line each: value, bound, met or missed.
fn targets_list(targets: &Map<String, Value>) -> String {
    let mut s = String::from("Targets:\n\n");
    for (name, t) in targets {
        let value = t.get("value").map_or("-".to_string(), Value::to_string);
        let bound = match (t.get("limit"), t.get("min")) {
            (Some(l), _) => format!("≤ {l}"),
            (_, Some(m)) => format!("≥ {m}"),
            _ => String::new(),
        };
        let met = if t.get("met") == Some(&Value::Bool(true)) { "met" } else { "**missed**" };
        s.push_str(&format!("- `{name}` = {value} (target {bound}): {met}\n"));
    }
    s.push('\n');
    s
}

/// A Markdown table: one row per figure, one column per run (runs are few, figures many).
/// Columns are named by a row's `scenario`, `flow` and `name`, those it has.
pub fn figures_table(rows: &[Map<String, Value>]) -> String {
    let flat: Vec<Vec<(String, String)>> =
        rows.iter().map(|r| flatten_figures(&Value::Object(r.clone()))).collect();
    let mut names: Vec<String> = Vec::new();
    for r in &flat {
        for (k, _) in r {
            if !k.starts_with("targets.") && !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let header: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let parts: Vec<&str> = ["scenario", "flow", "name"]
                .iter()
                .filter_map(|k| r.get(*k).and_then(Value::as_str))
                .collect();
            if parts.is_empty() {
                format!("run {}", i + 1)
            } else {
                parts.join(" / ")
            }
        })
        .collect();
    let cell = |t: &str| t.replace('|', "\\|");
    let mut s = format!("| figure | {} |\n|---|{}\n", header.join(" | "), "---:|".repeat(rows.len()));
    for name in names {
        let cells: Vec<String> = flat
            .iter()
            .map(|r| r.iter().find(|(k, _)| *k == name).map_or(String::new(), |(_, v)| cell(v)))
            .collect();
        s.push_str(&format!("| `{name}` | {} |\n", cells.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC"); // a leap day
    }

    #[test]
    fn the_machine_line_names_cpu_cores_memory_and_kernel() {
        let cpu = "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 2.0GHz\n";
        let mem = "MemTotal:        8388608 kB\nMemFree: 1 kB\n";
        assert_eq!(describe_machine(cpu, mem, "6.1.0"), "Test CPU @ 2.0GHz, 2 cores, 8.0 GiB, Linux 6.1.0");
        assert_eq!(describe_machine("", "", ""), "unknown CPU, 0 cores");
    }

    #[test]
    fn rows_are_the_json_objects_of_stdout() {
        let rows = parse_rows("progress\n{\"scenario\":\"a\",\"x\":1}\n[1]\n{\"scenario\":\"b\",\"x\":2}\n");
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn tables_have_a_column_per_run_and_a_row_per_figure() {
        let rows = parse_rows(
            &[
                json!({"scenario": "a", "flow": "f", "lag_ms": {"p50": 1.5}, "targets": {"x": {"value": 1}}}),
                json!({"y": "p|q"}),
            ]
            .iter()
            .map(|v| format!("{v}\n"))
            .collect::<String>(),
        );
        let t = figures_table(&rows);
        assert_eq!(
            t,
            "| figure | a / f | run 2 |\n|---|---:|---:|\n| `scenario` | a |  |\n| `flow` | f |  |\n| `lag_ms.p50` | 1.5 |  |\n| `y` |  | p\\|q |\n"
        );
    }

    #[test]
    fn every_section_names_its_command_commit_and_machine() {
        let p = Provenance {
            commit: "abc1234".into(),
            machine: "Test CPU, 2 cores".into(),
            date: "2030-01-01 00:00 UTC".into(),
        };
        let row = json!({"scenario": "swarm", "continuity_index": 0.9995,
            "targets": {"continuity_index": {"value": 0.9995, "min": 0.999, "met": true},
                        "startup_first_byte_max_ms": {"value": 1200.0, "limit": 1000, "met": false}}});
        let Value::Object(row) = row else { unreachable!() };
        let bench = |name: &str| benches(false).into_iter().find(|b| b.name == name).unwrap();
        let results = vec![
            (bench("swarm"), Outcome { rows: vec![row], exit: Some(0), seconds: 70.0, error: None }),
            (bench("swarm-churn"), Outcome { rows: vec![], exit: Some(1), seconds: 3.0, error: None }),
        ];
        let md = render(&p, false, &results);
        assert!(md.contains("```\nrill testbed swarm --nodes 30 --json\n```"), "{md}");
        assert!(md.contains("```\nrill testbed swarm --nodes 30 --json --churn\n```"), "{md}");
        assert_eq!(md.matches("Commit `abc1234`; Test CPU, 2 cores; 2030-01-01 00:00 UTC").count(), 2);
        assert!(md.contains("- `continuity_index` = 0.9995 (target ≥ 0.999): met"), "{md}");
        assert!(md.contains("- `startup_first_byte_max_ms` = 1200.0 (target ≤ 1000): **missed**"), "{md}");
        assert!(md.contains("| `continuity_index` | 0.9995 |"), "{md}");
        assert!(md.contains("exited with status 1"), "{md}");
        assert!(!md.contains("--quick"));
    }

    #[test]
    fn several_runs_show_their_totals_instead_of_each_runs_targets() {
        let p = Provenance { commit: "abc1234".into(), machine: "m".into(), date: "d".into() };
        let run = json!({"scenario": "swarm", "seed": 1, "first_byte_over_1s": 2,
            "targets": {"startup_first_byte_max_ms": {"value": 1200.0, "limit": 1000, "met": false}}});
        let totals = json!({"scenario": "swarm-runs", "runs": 1, "first_byte_over_1s": 2,
            "runs_meeting_target": {"startup_first_byte_max_ms": 0}});
        let (Value::Object(run), Value::Object(totals)) = (run, totals) else { unreachable!() };
        let bench = benches(false).into_iter().find(|b| b.name == "swarm-seeds").unwrap();
        assert!(bench.args.join(" ").contains("--runs 8"));
        let md = render(
            &p,
            false,
            &[(bench, Outcome { rows: vec![run, totals], exit: Some(0), seconds: 1.0, error: None })],
        );
        assert!(!md.contains("Targets:"), "{md}");
        assert!(md.contains("| figure | swarm | swarm-runs |"), "{md}");
        assert!(md.contains("| `first_byte_over_1s` | 2 | 2 |"), "{md}");
        assert!(md.contains("| `runs_meeting_target.startup_first_byte_max_ms` |  | 0 |"), "{md}");
    }

    #[test]
    fn quick_runs_are_short_and_every_name_is_unique() {
        let q = benches(true);
        assert!(q.iter().all(|b| !b.args.contains(&"30".to_string())));
        let mut names: Vec<&str> = q.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), q.len());
        assert_eq!(q.len(), benches(false).len());
    }
}
