//! The measuring programs a testbed runs in its namespaces: rill's own
//! `rill bench transport --listen/--connect`, `iperf3` and `ping`. Each runs as a tracked
//! child of the [`Testbed`], its output lines timestamped as they arrive.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::netns::{ChildId, HostId, Testbed};
use super::probe::Lines;

/// How long a stopped program gets to print its summary before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// The `rill` binary to run in the namespaces: `$RILL_EXE`, else this very executable
/// through `/proc/self/exe` (the forked child's own image, which is ours): a rebuild
/// during a long run replaces the file on disk, and a run must not mix two builds.
pub fn rill_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RILL_EXE") {
        return Ok(PathBuf::from(p));
    }
    Ok(PathBuf::from("/proc/self/exe"))
}

/// A program running in a namespace.
#[derive(Debug)]
pub struct Running {
    pub id: ChildId,
    pub what: String,
    pub out: Lines,
    pub err: Lines,
    pub started: Instant,
}

impl Running {
    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.err.snapshot();
        let tail: Vec<&str> = lines.iter().rev().take(5).rev().map(|(_, l)| l.as_str()).collect();
        tail.join(" | ")
    }
}

fn start(tb: &mut Testbed, host: HostId, mut cmd: Command, what: &str) -> Result<Running> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let id = tb.spawn(host, &mut cmd)?;
    let out = Lines::start(tb.take_stdout(id).context("stdout pipe")?);
    let err = Lines::start(tb.take_stderr(id).context("stderr pipe")?);
    Ok(Running { id, what: format!("{what} on {}", tb.host_name(host)), out, err, started: Instant::now() })
}

/// `rill bench transport --listen 0.0.0.0:PORT --json`, stopping by itself after
/// `limit` (a bound in case the testbed cannot stop it).
pub fn rill_listener(tb: &mut Testbed, host: HostId, port: u16, limit: Duration) -> Result<Running> {
    let key = tb.scratch_dir().join(format!("listener-{}-{port}.key", tb.host_name(host)));
    let mut cmd = Command::new(rill_exe()?);
    cmd.args(["bench", "transport", "--json", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--duration", &format!("{:.1}", limit.as_secs_f64())])
        .arg("--node-key")
        .arg(key);
    start(tb, host, cmd, "rill listener")
}

/// `rill bench transport --connect ADDR --class CLASS [--rate KBPS] --duration S --json`.
pub fn rill_sender(
    tb: &mut Testbed,
    host: HostId,
    to: SocketAddr,
    class: &str,
    rate_kbps: Option<u64>,
    duration: Duration,
) -> Result<Running> {
    let mut cmd = Command::new(rill_exe()?);
    cmd.args(["bench", "transport", "--json", "--connect", &to.to_string(), "--class", class])
        .args(["--duration", &format!("{:.1}", duration.as_secs_f64())]);
    if let Some(r) = rate_kbps {
        cmd.args(["--rate", &r.to_string()]);
    }
    start(tb, host, cmd, &format!("rill sender ({class})"))
}

/// `iperf3 -s -1 --json -p PORT`: one test, then it exits and prints its JSON.
pub fn iperf3_server(tb: &mut Testbed, host: HostId, port: u16) -> Result<Running> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "--json", "-p", &port.to_string()]);
    start(tb, host, cmd, "iperf3 server")
}

/// `iperf3 -c ADDR -p PORT -C CC -t S --json`: kernel TCP with congestion control `cc`.
pub fn iperf3_client(
    tb: &mut Testbed,
    host: HostId,
    to: IpAddr,
    port: u16,
    cc: &str,
    duration: Duration,
) -> Result<Running> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &to.to_string(), "-p", &port.to_string(), "-C", cc, "--json"])
        .args(["-t", &format!("{}", duration.as_secs().max(1))]);
    start(tb, host, cmd, &format!("iperf3 client ({cc})"))
}

/// `ping -D -n -i INTERVAL ADDR`, until stopped (at most `limit`).
pub fn ping(
    tb: &mut Testbed,
    host: HostId,
    to: IpAddr,
    interval: Duration,
    limit: Duration,
) -> Result<Running> {
    let mut cmd = Command::new("ping");
    cmd.args(["-D", "-n", "-i", &format!("{:.3}", interval.as_secs_f64())])
        .args(["-w", &format!("{}", limit.as_secs().max(1))])
        .arg(to.to_string());
    start(tb, host, cmd, "ping")
}

/// Wait for a program to end by itself (bounded by `timeout`); an error if it failed.
pub fn wait(tb: &mut Testbed, r: &Running, timeout: Duration) -> Result<Vec<(Instant, String)>> {
    let status = tb.wait(r.id, timeout).with_context(|| r.what.clone())?;
    let lines = r.out.finish(GRACE);
    if !status.success() {
        bail!("{} failed ({status}): {}", r.what, r.stderr_tail());
    }
    Ok(lines)
}

/// Ask a program to stop (SIGINT: rill and ping print their summaries) and collect its
/// output; killed if it does not exit within a few seconds.
pub fn stop(tb: &mut Testbed, r: &Running) -> Result<Vec<(Instant, String)>> {
    tb.signal(r.id, libc::SIGINT);
    let _ = tb.wait(r.id, GRACE);
    Ok(r.out.finish(GRACE))
}
