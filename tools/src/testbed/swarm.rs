//! `rill testbed swarm`: a publisher and N viewers, each in a network namespace of its
//! own with its own upload limit and access delay, running the real `rill publish` and
//! `rill watch` processes on the built-in sample. Prints arrival lag over all (viewer,
//! chunk) pairs, startup, continuity, overhead, CPU per node (shared/METRICS.md names);
//! `--churn` kills and restarts a third of the viewers, `--nat F` puts a fraction of them
//! behind NAT and says whether and from whom they received.
//!
//! The topology and the schedule (uploads, delays, NAT, churn) are drawn from `--seed`
//! before anything starts ([`Plan`]); the figures come from the processes' own
//! `--stats-json` files (see [`super::swarm_stats`]); nothing is estimated here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Map, Value};

use super::netns::{self, ChildId, HostId, LinkSpec, Testbed};
use super::swarm_stats::{self, check_ts, OutputCheck, ProcessRun, StatsFile, ViewerRun, STARTUP_TARGET_MS};
use crate::live::publish::SAMPLE_TS;
use crate::table::round;

#[derive(Debug, Clone, Args)]
pub struct SwarmArgs {
    /// Viewers, each in a namespace of its own (the publisher has one more).
    #[arg(long, default_value_t = 30)]
    pub nodes: usize,
    /// Seconds the stream is watched, from the first viewer's join.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub duration: f64,
    /// Kill (SIGKILL) a third of the viewers at random times during the run and restart
    /// each one 1 to 5 s later.
    #[arg(long)]
    pub churn: bool,
    /// Put this fraction of the viewers behind NAT (nftables masquerade, as home routers
    /// do) and report whether and from whom they received.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub nat: f64,
    /// Seed of the topology and churn schedule (same seed, same plan).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run this many times, with seeds --seed, --seed + 1, …, printing each run's figures
    /// and then the totals over all of them: one run's slowest start or lost chunks swing
    /// widely with the seed, and builds compare fairly only over several. With --keep,
    /// each run's files go to DIR/seed-SEED.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub runs: u64,
    /// Viewers' target playout lag, ms.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub latency: u64,
    /// Publish the built-in sample once from its first byte, after every viewer joined,
    /// and check that every viewer wrote it out byte for byte (about 15 s; --duration is
    /// not used).
    #[arg(long)]
    pub verify_output: bool,
    /// Keep the run's files (keys, logs, stats, outputs) in DIR (default: a temporary
    /// directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Length of the built-in sample (tools/assets/make-sample.sh: `-t 10`).
const SAMPLE_SECONDS: f64 = 10.0;
/// Viewers' uploads are drawn uniformly from this range, in multiples of the stream rate
/// (issue 6: "uploads of 1.5–5× the stream rate").
const VIEWER_UPLOAD_X: (f64, f64) = (1.5, 5.0);
/// The publisher's upload: eight copies of the stream, fixed, so that it is never the
/// bottleneck and the swarm has to carry the rest.
const PUBLISHER_UPLOAD_X: f64 = 8.0;
/// One-way access delay of each host, both directions, drawn uniformly: a path between
/// two hosts crosses two access links, so path delays fall in 10–50 ms (issue 6).
const ACCESS_DELAY_MS: (f64, f64) = (5.0, 25.0);
/// Queue in front of each upload bottleneck, as time at its rate (a modest home router).
const UPLOAD_BUFFER_MS: u64 = 100;
/// Viewers join one after another over this long, not in the same millisecond.
const JOIN_SPREAD: Duration = Duration::from_millis(1500);
/// Churn: this share of the viewers is killed once and restarted (issue 6: "a third").
const CHURN_SHARE: f64 = 1.0 / 3.0;
/// Churn kills fall in this part of the run (fractions of `--duration`), so every victim
/// watched a while before and is back well before the end.
const CHURN_WINDOW: (f64, f64) = (0.15, 0.75);
/// A churn victim is killed no sooner than this after it joined: time to start (startup
/// is under a second) and to watch a while, so that a kill tests recovery, not a viewer
/// cut off before its first chunk (in an 8 s run, a kill 0.2 s after the join did that).
const CHURN_MIN_WATCH: Duration = Duration::from_secs(2);
/// How long a killed viewer stays down, s.
const CHURN_DOWN_S: (f64, f64) = (1.0, 5.0);
/// `--verify-output`: the publisher waits this long after the last join before reading
/// the sample, so that every viewer gets the stream from its first chunk.
const VERIFY_SETTLE: Duration = Duration::from_secs(2);
/// `--verify-output`: how long the publisher keeps serving after the sample ended; past
/// the run's own deadline (latency + [`VERIFY_SLACK`]), so it never leaves first.
const VERIFY_LINGER_S: f64 = 30.0;
/// `--verify-output`: time allowed beyond the sample and the playout latency.
const VERIFY_SLACK: Duration = Duration::from_secs(15);
/// Bounds on waits for processes (each takes milliseconds when things work).
const LINK_TIMEOUT: Duration = Duration::from_secs(15);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the run loop looks at its schedule and its processes.
const TICK: Duration = Duration::from_millis(50);
const MAX_NODES: usize = 100;
/// Most runs of one `--runs` (each a full run of its own, ~10 s plus --duration).
const MAX_RUNS: u64 = 1000;

/// One host of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPlan {
    pub name: String,
    /// One-way delay of the host's access link, each direction.
    pub delay_ms: f64,
    pub upload_kbps: u64,
    pub nat: bool,
}

/// A churn victim: killed at `kill_at`, restarted at `restart_at` (from the first join).
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnEvent {
    pub viewer: usize,
    pub kill_at: Duration,
    pub restart_at: Duration,
}

/// Everything random about a run, drawn from the seed before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stream_kbps: u64,
    pub publisher: HostPlan,
    pub viewers: Vec<HostPlan>,
    /// When each viewer joins, from the first join.
    pub join_at: Vec<Duration>,
    pub churn: Vec<ChurnEvent>,
}

/// A uniform draw in [lo, hi).
fn uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
}

/// `k` distinct indices of `0..n`, in random order (partial Fisher–Yates).
fn pick(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all
}

impl Plan {
    pub fn new(nodes: usize, seed: u64, stream_kbps: u64, run: Duration, churn: bool, nat: f64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let publisher = HostPlan {
            name: "pub".into(),
            delay_ms: round(uniform(&mut rng, ACCESS_DELAY_MS), 1),
            upload_kbps: (stream_kbps as f64 * PUBLISHER_UPLOAD_X).round() as u64,
            nat: false,
        };
        let nat_set = pick(&mut rng, nodes, (nat * nodes as f64).round() as usize);
        let viewers: Vec<HostPlan> = (0..nodes)
            .map(|i| HostPlan {
                name: format!("v{i}"),
                delay_ms: round(uniform(&mut rng, ACCESS_DELAY_MS), 1),
                upload_kbps: (stream_kbps as f64 * uniform(&mut rng, VIEWER_UPLOAD_X)).round() as u64,
                nat: nat_set.contains(&i),
            })
            .collect();
        let join_at: Vec<Duration> =
            (0..nodes).map(|i| JOIN_SPREAD * i as u32 / nodes.max(1) as u32).collect();
        let mut events = Vec::new();
        if churn {
            let victims = pick(&mut rng, nodes, (nodes as f64 * CHURN_SHARE).round() as usize);
            for viewer in victims {
                let kill_at =
                    run.mul_f64(uniform(&mut rng, CHURN_WINDOW)).max(join_at[viewer] + CHURN_MIN_WATCH);
                let down = Duration::from_secs_f64(uniform(&mut rng, CHURN_DOWN_S));
                events.push(ChurnEvent { viewer, kill_at, restart_at: kill_at + down });
            }
            events.sort_by_key(|e| e.kill_at);
        }
        Plan { stream_kbps, publisher, viewers, join_at, churn: events }
    }

    /// The largest one-way delay between any two hosts: a packet from A to B is held for
    /// A's access delay plus B's.
    pub fn max_path_delay_ms(&self) -> f64 {
        let mut d: Vec<f64> =
            std::iter::once(&self.publisher).chain(&self.viewers).map(|h| h.delay_ms).collect();
        d.sort_by(|a, b| b.total_cmp(a));
        match d.as_slice() {
            [a, b, ..] => a + b,
            _ => 0.0,
        }
    }
}

/// The sample's media rate, kbit/s (what "the stream rate" of the issue means here).
pub fn sample_kbps() -> u64 {
    (SAMPLE_TS.len() as f64 * 8.0 / SAMPLE_SECONDS / 1000.0).ceil() as u64
}

fn validate(args: &SwarmArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("--nodes must be 1 to {MAX_NODES} (each node is a process and a namespace on this machine)");
    }
    if !(2.0..=3600.0).contains(&args.duration) {
        bail!("--duration must be 2 to 3600 seconds");
    }
    if !(0.0..=1.0).contains(&args.nat) {
        bail!("--nat is a fraction of the viewers, 0 to 1");
    }
    if !(100..=10_000).contains(&args.latency) {
        bail!("--latency must be 100 to 10000 ms");
    }
    if !(1..=MAX_RUNS).contains(&args.runs) {
        bail!("--runs must be 1 to {MAX_RUNS}");
    }
    if args.seed.checked_add(args.runs - 1).is_none() {
        bail!("--seed {} with --runs {} runs past the largest seed", args.seed, args.runs);
    }
    if args.verify_output && args.churn {
        bail!(
            "--verify-output needs every viewer from the first chunk to the last; it cannot go with --churn"
        );
    }
    Ok(())
}

/// The run's files; removed at the end unless the user asked to keep them.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn new(keep: Option<&Path>) -> Result<WorkDir> {
        let (path, keep) = match keep {
            Some(p) => (p.to_path_buf(), true),
            None => (std::env::temp_dir().join(format!("rill-swarm-{}", std::process::id())), false),
        };
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One `rill` process of the run.
#[derive(Debug)]
struct Proc {
    child: ChildId,
    pid: u32,
    started: Instant,
    stats: PathBuf,
    output: Option<PathBuf>,
    /// Set when it was stopped or killed: CPU seconds and lifetime.
    ended: Option<(f64, f64)>,
    killed: bool,
}

/// CPU seconds (user + system) of a live process, from /proc/PID/stat (proc(5): fields
/// 14 and 15, in clock ticks).
fn process_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_from_stat(&text)
}

fn cpu_from_stat(text: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after
    // the last ')', with field 3 (state) first.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// The run in progress: the testbed, its hosts and processes.
struct Run<'a> {
    args: &'a SwarmArgs,
    tb: Testbed,
    dir: &'a WorkDir,
    exe: PathBuf,
    link: String,
    publisher: Option<Proc>,
    /// Every viewer process, in start order (restarts included), with its host index.
    viewers: Vec<(usize, Proc)>,
    failures: Vec<String>,
}

impl Run<'_> {
    fn spawn(&mut self, host: HostId, name: &str, args: &[String], output: Option<PathBuf>) -> Result<Proc> {
        let log = File::create(self.dir.file(&format!("{name}.log")))?;
        let stats = self.dir.file(&format!("{name}.stats.jsonl"));
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .arg("--stats-json")
            .arg(&stats)
            .arg("--quiet")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = self.tb.spawn(host, &mut cmd)?;
        Ok(Proc {
            child,
            pid: self.tb.child_pid(child),
            started: Instant::now(),
            stats,
            output,
            ended: None,
            killed: false,
        })
    }

    fn start_viewer(
        &mut self,
        host: HostId,
        index: usize,
        upload_kbps: u64,
        incarnation: usize,
    ) -> Result<()> {
        let name = format!("v{index}.{incarnation}");
        let out = self.dir.file(&format!("{name}.ts"));
        let args: Vec<String> = vec![
            "watch".into(),
            self.link.clone(),
            "-o".into(),
            out.display().to_string(),
            "--latency".into(),
            self.args.latency.to_string(),
            "--upload-kbps".into(),
            upload_kbps.to_string(),
        ];
        let p = self.spawn(host, &name, &args, Some(out))?;
        self.viewers.push((index, p));
        Ok(())
    }

    /// Reads the process's CPU time, then signals it; `SIGKILL` also reaps it.
    fn stop(&mut self, which: Option<usize>, signal: libc::c_int) {
        let p = match which {
            Some(i) => &mut self.viewers[i].1,
            None => match self.publisher.as_mut() {
                Some(p) => p,
                None => return,
            },
        };
        if p.ended.is_some() {
            return;
        }
        let cpu = process_cpu_s(p.pid).unwrap_or(0.0);
        p.ended = Some((cpu, p.started.elapsed().as_secs_f64()));
        p.killed = signal == libc::SIGKILL;
        let child = p.child;
        if signal == libc::SIGKILL {
            self.tb.kill(child);
        } else {
            self.tb.signal(child, signal);
        }
    }

    /// Notes processes that exited on their own (a crash, or an error exit).
    fn check_alive(&mut self) -> Result<()> {
        for i in 0..self.viewers.len() {
            let (index, ref p) = self.viewers[i];
            if p.ended.is_none() {
                if let Some(status) = self.tb.try_wait(p.child)? {
                    self.failures.push(format!("viewer v{index} exited on its own ({status}); see its log"));
                    let alive = p.started.elapsed().as_secs_f64();
                    self.viewers[i].1.ended = Some((0.0, alive));
                }
            }
        }
        if let Some(p) = &self.publisher {
            if p.ended.is_none() {
                if let Some(status) = self.tb.try_wait(p.child)? {
                    bail!(
                        "the publisher exited on its own ({status}); see {}",
                        self.dir.file("pub.log").display()
                    );
                }
            }
        }
        Ok(())
    }
}

/// The machine's stolen and total CPU ticks now (see [`swarm_stats::steal_share`]).
fn read_cpu_steal() -> Option<(u64, u64)> {
    swarm_stats::cpu_steal_and_total(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Waits for `rill publish --link-file` to write the link (a whole line).
fn wait_for_link(run: &mut Run<'_>, path: &Path) -> Result<String> {
    let end = Instant::now() + LINK_TIMEOUT;
    while Instant::now() < end {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return Ok(text.trim().to_string());
            }
        }
        run.check_alive()?;
        netns::sleep(TICK)?;
    }
    bail!("the publisher printed no link within {} s", LINK_TIMEOUT.as_secs())
}

pub fn run(args: &SwarmArgs) -> Result<ExitCode> {
    validate(args)?;
    netns::require_root()?;
    let mut all_ok = true;
    let mut each = Vec::new();
    for n in 0..args.runs {
        let seed = args.seed + n;
        let keep = match (&args.keep, args.runs) {
            (Some(k), r) if r > 1 => Some(k.join(format!("seed-{seed}"))),
            (k, _) => k.clone(),
        };
        let run_args = SwarmArgs { seed, keep, runs: 1, ..args.clone() };
        let dir = WorkDir::new(run_args.keep.as_deref())?;
        let started = Instant::now();
        let (mut figures, ok) = run_in_testbed(&run_args, &dir)?;
        figures.insert("wall_s".into(), json!(round(started.elapsed().as_secs_f64(), 1)));
        let figures = Value::Object(figures);
        if args.json {
            println!("{figures}");
        } else {
            crate::table::print_figures("rill testbed swarm", &figures);
        }
        if !ok {
            eprintln!("rill testbed swarm: seed {seed}: checks failed (see \"checks\" above)");
        }
        all_ok &= ok;
        each.push((seed, figures));
    }
    if args.runs > 1 {
        let totals = swarm_stats::over_runs(&each);
        if args.json {
            println!("{totals}");
        } else {
            crate::table::print_figures("rill testbed swarm: all runs", &totals);
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Builds the topology, runs the processes, tears everything down, and checks nothing
/// is left. Returns the figures and whether every check passed.
fn run_in_testbed(args: &SwarmArgs, dir: &WorkDir) -> Result<(Map<String, Value>, bool)> {
    let stream_kbps = sample_kbps();
    let run_for = Duration::from_secs_f64(args.duration);
    let plan = Plan::new(args.nodes, args.seed, stream_kbps, run_for, args.churn, args.nat);
    let exe = super::flows::rill_exe()?;
    let cpu_at_start = read_cpu_steal();
    let tb = Testbed::new("swarm")?;
    let prefix = tb.prefix().to_string();
    let mut run = Run {
        args,
        tb,
        dir,
        exe,
        link: String::new(),
        publisher: None,
        viewers: Vec::new(),
        failures: Vec::new(),
    };

    // Hosts: uploads shaped in the router (tbf/htb), delays by the forwarder; downloads
    // are not shaped (access links here are upload-limited).
    let shaped = |h: &HostPlan| {
        (
            LinkSpec::shaped(h.upload_kbps, UPLOAD_BUFFER_MS, h.delay_ms),
            LinkSpec { delay_ms: h.delay_ms, ..LinkSpec::default() },
        )
    };
    let (up, down) = shaped(&plan.publisher);
    let pub_host = run.tb.add_host(&plan.publisher.name, &up, &down)?;
    let mut hosts = Vec::new();
    for v in &plan.viewers {
        let (up, down) = shaped(v);
        hosts.push(if v.nat {
            run.tb.add_host_behind_nat(&v.name, &up, &down)?
        } else {
            run.tb.add_host(&v.name, &up, &down)?
        });
    }
    eprintln!(
        "rill testbed swarm: publisher and {} viewers in namespaces ({} behind NAT), max path delay {:.1} ms",
        args.nodes,
        plan.viewers.iter().filter(|v| v.nat).count(),
        plan.max_path_delay_ms()
    );

    // The publisher: the built-in sample, looped; or once, from its first byte, after
    // every viewer joined (--verify-output).
    let key = dir.file("channel.key");
    let keygen = Command::new(&run.exe).args(["keygen", "--out"]).arg(&key).stdout(Stdio::null()).output()?;
    if !keygen.status.success() {
        bail!("rill keygen failed: {}", String::from_utf8_lossy(&keygen.stderr).trim());
    }
    let sample_path = dir.file("sample.ts");
    std::fs::write(&sample_path, SAMPLE_TS)?;
    let link_file = dir.file("link");
    let pub_addr = run.tb.addr(pub_host);
    let mut pub_args: Vec<String> = vec![
        "publish".into(),
        "--key".into(),
        key.display().to_string(),
        "--node-key".into(),
        dir.file("publisher.node.key").display().to_string(),
        "--listen".into(),
        "0.0.0.0:7000".into(),
        "--advertise".into(),
        format!("{pub_addr}:7000"),
        "--kbps".into(),
        stream_kbps.to_string(),
        "--upload-kbps".into(),
        plan.publisher.upload_kbps.to_string(),
        "--link-file".into(),
        link_file.display().to_string(),
    ];
    if args.verify_output {
        let delay = JOIN_SPREAD + VERIFY_SETTLE;
        pub_args.extend([
            "--input".into(),
            sample_path.display().to_string(),
            "--start-delay".into(),
            format!("{}", delay.as_secs_f64()),
            "--linger".into(),
            format!("{VERIFY_LINGER_S}"),
        ]);
    } else {
        pub_args.push("--loop".into());
    }
    let p = run.spawn(pub_host, "pub", &pub_args, None)?;
    run.publisher = Some(p);
    run.link = wait_for_link(&mut run, &link_file)?;

    // The schedule: joins, churn kills and restarts, the end.
    let t0 = Instant::now();
    let end = if args.verify_output {
        // Start delay, the sample, the playout latency, and slack for a slow machine.
        t0 + JOIN_SPREAD
            + VERIFY_SETTLE
            + Duration::from_secs_f64(SAMPLE_SECONDS)
            + Duration::from_millis(args.latency)
            + VERIFY_SLACK
    } else {
        t0 + run_for
    };
    let mut joined = 0usize;
    let mut killed = vec![false; plan.churn.len()];
    let mut restarted = vec![false; plan.churn.len()];
    let mut incarnations = vec![0usize; args.nodes];
    // Each pass starts what is due; bounded by `end` (and TICK sleeps, which a signal ends).
    while Instant::now() < end {
        let t = t0.elapsed();
        while joined < args.nodes && plan.join_at[joined] <= t {
            run.start_viewer(hosts[joined], joined, plan.viewers[joined].upload_kbps, 0)?;
            joined += 1;
        }
        for (k, e) in plan.churn.iter().enumerate() {
            if !killed[k] && e.kill_at <= t {
                killed[k] = true;
                if let Some(i) = run.viewers.iter().rposition(|(v, p)| *v == e.viewer && p.ended.is_none()) {
                    run.stop(Some(i), libc::SIGKILL);
                }
            }
            if killed[k] && !restarted[k] && e.restart_at <= t {
                restarted[k] = true;
                incarnations[e.viewer] += 1;
                let v = e.viewer;
                run.start_viewer(hosts[v], v, plan.viewers[v].upload_kbps, incarnations[v])?;
            }
        }
        run.check_alive()?;
        if args.verify_output && joined == args.nodes && all_outputs_complete(&run) {
            break;
        }
        netns::sleep(TICK)?;
    }

    // Stop: CPU times first, then SIGTERM to all at once so that their final figures
    // cover the same moment; then wait for each.
    let n = run.viewers.len();
    for i in 0..n {
        run.stop(Some(i), libc::SIGTERM);
    }
    run.stop(None, libc::SIGTERM);
    let mut children: Vec<(String, ChildId, bool)> =
        run.viewers.iter().map(|(v, p)| (format!("viewer v{v}"), p.child, p.killed)).collect();
    if let Some(p) = &run.publisher {
        children.push(("the publisher".into(), p.child, false));
    }
    let mut pids: Vec<u32> = run.viewers.iter().map(|(_, p)| p.pid).collect();
    pids.extend(run.publisher.as_ref().map(|p| p.pid));
    for (what, child, was_killed) in children {
        let status = run.tb.wait(child, EXIT_TIMEOUT)?;
        if !was_killed && !status.success() && !run.failures.iter().any(|f| f.starts_with(&what)) {
            run.failures.push(format!("{what} exited with {status} after SIGTERM"));
        }
    }
    let (drops_loss, drops_queue) = run.tb.forwarder_drops();
    let forwarder = run.tb.forwarder_timeliness();
    // The upload and download queues' drops: losses the transport had to repair.
    let tc_stats = run
        .tb
        .exec_in_router(&["tc", "-s", "qdisc", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let shaper_drops = tc_stats.as_ref().map(|t| swarm_stats::queue_drops(t)).ok();
    // And whose upload queue dropped them (by host: publisher, then viewer by viewer).
    let upload_drops: Option<Vec<u64>> = tc_stats.ok().map(|t| {
        let by_handle = swarm_stats::upload_queue_drops_by_handle(&t);
        std::iter::once(pub_host)
            .chain(hosts.iter().copied())
            .map(|h| by_handle.get(&run.tb.upload_queue_handle(h)).copied().unwrap_or(0))
            .collect()
    });
    let Run { tb, publisher, viewers, mut failures, .. } = run;
    drop(tb);
    let left = netns::leftovers(&prefix, &pids);
    if !left.is_empty() {
        failures.push(format!("left behind: {}", left.join(", ")));
    }

    // Figures from the files the processes wrote.
    let read_stats = |p: &Path| -> Result<StatsFile> {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        StatsFile::parse(&text).with_context(|| format!("reading {}", p.display()))
    };
    let publisher = publisher.context("no publisher")?;
    let pub_run = ProcessRun {
        stats: read_stats(&publisher.stats)?,
        cpu_s: publisher.ended.map_or(0.0, |e| e.0),
        alive_s: publisher.ended.map_or(0.0, |e| e.1),
        killed: false,
    };
    let reference = args.verify_output.then_some(SAMPLE_TS);
    let mut runs = Vec::new();
    for (index, p) in &viewers {
        let bytes = p.output.as_ref().and_then(|o| std::fs::read(o).ok()).unwrap_or_default();
        let output = check_ts(&bytes, p.killed, reference);
        runs.push(ViewerRun {
            viewer: *index,
            nat: plan.viewers[*index].nat,
            process: ProcessRun {
                stats: read_stats(&p.stats)?,
                cpu_s: p.ended.map_or(0.0, |e| e.0),
                alive_s: p.ended.map_or(0.0, |e| e.1),
                killed: p.killed,
            },
            output,
        });
    }
    let mut checks = output_checks(&runs, &mut failures);
    checks.insert("forwarder_drops".into(), json!({ "loss": drops_loss, "queue": drops_queue }));
    checks.insert("forwarder_timeliness".into(), forwarder.figures());
    let steal = cpu_at_start.zip(read_cpu_steal()).and_then(|(b, a)| swarm_stats::steal_share(b, a));
    checks.insert("cpu_steal".into(), json!(steal));
    checks.insert("shaper_queue_drops".into(), json!(shaper_drops));
    if let Some(drops) = &upload_drops {
        let uploads: Vec<u64> = std::iter::once(plan.publisher.upload_kbps)
            .chain(plan.viewers.iter().map(|v| v.upload_kbps))
            .collect();
        checks.insert(
            "upload_queue_drops".into(),
            swarm_stats::upload_drop_figures(drops, &uploads, &pub_run, &runs),
        );
    }
    checks.insert("leftovers".into(), json!(left.len()));
    checks.insert("failures".into(), json!(failures));
    let ok = failures.is_empty();

    let mut m = Map::new();
    m.insert("scenario".into(), json!("swarm"));
    m.insert("nodes".into(), json!(args.nodes));
    m.insert(
        "duration_s".into(),
        json!(round(if args.verify_output { SAMPLE_SECONDS } else { args.duration }, 1)),
    );
    m.insert("seed".into(), json!(args.seed));
    m.insert("churn".into(), json!(args.churn));
    m.insert("nat_fraction".into(), json!(args.nat));
    m.insert("verify_output".into(), json!(args.verify_output));
    m.insert("latency_ms".into(), json!(args.latency));
    m.insert("stream_kbps".into(), json!(stream_kbps));
    m.insert("publisher_upload_kbps".into(), json!(plan.publisher.upload_kbps));
    let uploads: Vec<u64> = plan.viewers.iter().map(|v| v.upload_kbps).collect();
    m.insert(
        "viewer_upload_kbps".into(),
        json!({ "min": uploads.iter().min(), "max": uploads.iter().max() }),
    );
    m.insert("max_path_delay_ms".into(), json!(round(plan.max_path_delay_ms(), 1)));
    m.insert("restarts".into(), json!(plan.churn.len()));
    let figures = swarm_stats::summarize(&pub_run, &runs, args.nodes)?;
    m.insert("targets".into(), targets(&figures, plan.max_path_delay_ms(), args.churn));
    m.extend(figures);
    if plan.viewers.iter().any(|v| v.nat) {
        m.insert("nat".into(), swarm_stats::nat_figures(&pub_run, &runs));
    }
    m.insert("checks".into(), Value::Object(checks));
    Ok((m, ok))
}

/// `--verify-output`: every viewer has written the whole sample.
fn all_outputs_complete(run: &Run<'_>) -> bool {
    run.viewers.iter().all(|(_, p)| {
        p.output
            .as_ref()
            .and_then(|o| std::fs::metadata(o).ok())
            .is_some_and(|m| m.len() >= SAMPLE_TS.len() as u64)
    })
}

/// What cannot flake: every public viewer host received chunks and every output is valid
/// TS (byte-exact with --verify-output). NATed viewers that received nothing are a
/// finding (reported in `nat`), not a failure.
fn output_checks(runs: &[ViewerRun], failures: &mut Vec<String>) -> Map<String, Value> {
    let mut hosts: std::collections::BTreeMap<usize, (bool, bool)> = std::collections::BTreeMap::new();
    let mut valid = 0usize;
    for r in runs {
        let received = r.process.stats.last_u64("chunks_received") > 0;
        let e = hosts.entry(r.viewer).or_insert((r.nat, false));
        e.1 |= received;
        match &r.output {
            OutputCheck::Valid => valid += 1,
            OutputCheck::Empty if r.nat || r.process.killed => {}
            OutputCheck::Empty => failures.push(format!("viewer v{} wrote no stream", r.viewer)),
            OutputCheck::Invalid(why) => {
                failures.push(format!("viewer v{}: output is not the stream: {why}", r.viewer))
            }
        }
    }
    for (v, (nat, received)) in &hosts {
        if !nat && !received {
            failures.push(format!("viewer v{v} received no chunk"));
        }
    }
    let public = hosts.values().filter(|(nat, _)| !nat).count();
    let mut m = Map::new();
    m.insert("topology".into(), json!("up and down"));
    m.insert(
        "public_viewers_receiving".into(),
        json!(format!("{}/{public}", hosts.values().filter(|(nat, r)| !nat && *r).count())),
    );
    m.insert("outputs_valid".into(), json!(format!("{valid}/{}", runs.len())));
    m
}

/// The issue's targets, each with its value and whether it was met.
fn targets(figures: &Map<String, Value>, max_path_ms: f64, churn: bool) -> Value {
    let get = |path: &[&str]| -> Option<f64> {
        let mut v = figures.get(path[0])?;
        for k in &path[1..] {
            v = v.get(k)?;
        }
        v.as_f64()
    };
    let above = get(&["arrival_lag_ms", "p99"]).map(|p| round(p - max_path_ms, 1));
    let startup = get(&["startup_ms", "first_byte", "max"]);
    // Issue 5 states startup as "to the first keyframe"; METRICS.md asks for both. The
    // first byte also waits for that keyframe's playout deadline (ingest + latency), so a
    // viewer whose start keyframe is fresh waits nearly the whole latency for it.
    let startup_keyframe = get(&["startup_ms", "first_keyframe", "max"]);
    let continuity = get(&["continuity_index"]);
    let min_continuity = if churn { 0.99 } else { 0.999 };
    json!({
        "arrival_lag_p99_above_max_path_ms": { "value": above, "limit": 500, "met": above.is_some_and(|a| a <= 500.0) },
        "startup_first_byte_max_ms": { "value": startup, "limit": STARTUP_TARGET_MS as u64, "met": startup.is_some_and(|s| s <= STARTUP_TARGET_MS) },
        "startup_first_keyframe_max_ms": { "value": startup_keyframe, "limit": STARTUP_TARGET_MS as u64, "met": startup_keyframe.is_some_and(|s| s <= STARTUP_TARGET_MS) },
        "continuity_index": { "value": continuity, "min": min_continuity, "met": continuity.is_some_and(|c| c >= min_continuity) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Duration = Duration::from_secs(60);

    #[test]
    fn the_plan_is_a_function_of_the_seed() {
        let a = Plan::new(30, 7, 645, RUN, true, 0.3);
        assert_eq!(a, Plan::new(30, 7, 645, RUN, true, 0.3));
        assert_ne!(a, Plan::new(30, 8, 645, RUN, true, 0.3));
    }

    #[test]
    fn delays_and_uploads_stay_in_their_ranges() {
        for seed in 0..20 {
            let p = Plan::new(30, seed, 645, RUN, false, 0.0);
            for h in std::iter::once(&p.publisher).chain(&p.viewers) {
                assert!((ACCESS_DELAY_MS.0..=ACCESS_DELAY_MS.1).contains(&h.delay_ms), "seed {seed}: {h:?}");
            }
            for v in &p.viewers {
                let x = v.upload_kbps as f64 / 645.0;
                assert!((1.49..=5.01).contains(&x), "seed {seed}: {v:?}");
            }
            let max = p.max_path_delay_ms();
            assert!((10.0..=50.0).contains(&max), "seed {seed}: {max}");
            assert_eq!(p.publisher.upload_kbps, 5160);
            assert!(p.join_at.windows(2).all(|w| w[0] <= w[1]) && p.join_at[29] < JOIN_SPREAD);
        }
    }

    #[test]
    fn max_path_delay_is_the_two_largest_access_delays() {
        let mut p = Plan::new(3, 1, 645, RUN, false, 0.0);
        p.publisher.delay_ms = 5.0;
        for (v, d) in p.viewers.iter_mut().zip([20.0, 7.0, 24.5]) {
            v.delay_ms = d;
        }
        assert_eq!(p.max_path_delay_ms(), 44.5);
    }

    #[test]
    fn churn_takes_a_third_once_each_inside_the_run() {
        let p = Plan::new(30, 3, 645, RUN, true, 0.0);
        assert_eq!(p.churn.len(), 10);
        let mut victims: Vec<usize> = p.churn.iter().map(|e| e.viewer).collect();
        victims.sort_unstable();
        victims.dedup();
        assert_eq!(victims.len(), 10, "each victim once");
        for e in &p.churn {
            assert!(e.kill_at >= RUN.mul_f64(CHURN_WINDOW.0) && e.kill_at <= RUN.mul_f64(CHURN_WINDOW.1));
            assert!(e.kill_at >= p.join_at[e.viewer] + CHURN_MIN_WATCH, "{e:?}");
            let down = (e.restart_at - e.kill_at).as_secs_f64();
            assert!((CHURN_DOWN_S.0..=CHURN_DOWN_S.1).contains(&down), "{e:?}");
            assert!(e.restart_at < RUN);
        }
        assert!(Plan::new(30, 3, 645, RUN, false, 0.0).churn.is_empty());
        // A short run (CI's 8 s) still lets every victim watch before it is killed.
        for seed in 0..50 {
            let p = Plan::new(6, seed, 645, Duration::from_secs(8), true, 0.3);
            assert_eq!(p.churn.len(), 2);
            for e in &p.churn {
                assert!(e.kill_at >= p.join_at[e.viewer] + CHURN_MIN_WATCH, "seed {seed}: {e:?}");
            }
        }
    }

    #[test]
    fn nat_takes_the_asked_fraction() {
        assert_eq!(Plan::new(30, 1, 645, RUN, false, 0.3).viewers.iter().filter(|v| v.nat).count(), 9);
        assert_eq!(Plan::new(30, 1, 645, RUN, false, 0.0).viewers.iter().filter(|v| v.nat).count(), 0);
        assert_eq!(Plan::new(5, 1, 645, RUN, false, 1.0).viewers.iter().filter(|v| v.nat).count(), 5);
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        // proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stat = "42 (rill (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_from_stat(stat), Some(300.0 / ticks));
        assert_eq!(cpu_from_stat("garbage"), None);
        assert!(process_cpu_s(std::process::id()).is_some());
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let ok = SwarmArgs {
            nodes: 30,
            duration: 60.0,
            churn: false,
            nat: 0.0,
            seed: 1,
            runs: 1,
            latency: 1000,
            verify_output: false,
            keep: None,
            json: false,
        };
        assert!(validate(&ok).is_ok());
        assert!(validate(&SwarmArgs { runs: 0, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { runs: 1001, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { runs: 8, ..ok.clone() }).is_ok());
        assert!(validate(&SwarmArgs { seed: u64::MAX, runs: 2, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { seed: u64::MAX, runs: 1, ..ok.clone() }).is_ok());
        assert!(validate(&SwarmArgs { nodes: 0, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { nodes: 1000, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { nat: 1.5, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { nat: f64::NAN, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { duration: 0.5, ..ok.clone() }).is_err());
        assert!(validate(&SwarmArgs { churn: true, verify_output: true, ..ok.clone() }).is_err());
    }

    #[test]
    fn targets_follow_the_issue() {
        let f = json!({"arrival_lag_ms": {"p99": 530.0},
                       "startup_ms": {"first_byte": {"max": 800.0}, "first_keyframe": {"max": 1200.0}},
                       "continuity_index": 0.995});
        let Value::Object(f) = f else { unreachable!() };
        let t = targets(&f, 45.0, false);
        assert_eq!(t["arrival_lag_p99_above_max_path_ms"]["value"], 485.0);
        assert_eq!(t["arrival_lag_p99_above_max_path_ms"]["met"], true);
        assert_eq!(t["startup_first_byte_max_ms"]["met"], true);
        assert_eq!(t["startup_first_keyframe_max_ms"]["met"], false);
        assert_eq!(t["continuity_index"]["met"], false);
        assert_eq!(targets(&f, 45.0, true)["continuity_index"]["met"], true);
        assert_eq!(targets(&Map::new(), 45.0, true)["continuity_index"]["met"], false);
    }
}
