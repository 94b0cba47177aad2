//! Topologies of network namespaces on this machine, owned by a [`Testbed`] guard.
//!
//! The shape is a star: every host is a namespace joined by a veth pair to one router
//! namespace. Everything that shapes traffic lives in the router, never on a host's own
//! interface (a qdisc on the sender's interface is throttled by the sender's socket
//! accounting — TCP small queues — and hides the queue the benchmark wants to see):
//!
//! ```text
//!  host ns            router ns                                          host ns
//!  eth0 ──veth── h0 ─► [policy route] ─► tbtun ─► impairment forwarder ─┐
//!                                          (htb: per-host upload)       │ (delay, jitter,
//!                                                                       │  loss; userspace)
//!  eth0 ◄─veth── h1 ◄─ tbf (the host's download queue) ◄─ main table ◄──┘
//! ```
//!
//! - **download** of a host (router → host): a `tbf` qdisc on the router's end of the
//!   host's veth: `rate`, a burst of a few packets, `limit` = rate × buffer.
//! - **upload** of a host (host → router): an `htb` class on the TUN device's egress in
//!   the router, selected by the host's source address, with a `bfifo` of rate × buffer.
//! - **delay, jitter, loss** (both directions): the userspace forwarder of
//!   [`super::impair`], since this kernel has no `netem`. A packet from host A to host B
//!   is held for up(A) + down(B).
//! - **NAT**: [`Testbed::add_host_behind_nat`] puts a NAT namespace (nftables
//!   masquerade) between the host and its access link.
//!
//! Cleanup: [`Testbed`]'s `Drop` kills every process it spawned (whole process groups),
//! stops the forwarder and deletes every namespace it made, which takes the veths,
//! addresses, routes, qdiscs and nftables tables inside them along. SIGINT/SIGTERM only
//! set a flag ([`interrupted`]) that every wait here polls, so a Ctrl-C unwinds through
//! the same `Drop`. Children get `PR_SET_PDEATHSIG` = SIGKILL, so even a SIGKILLed
//! testbed takes its processes along; its namespaces are swept by the next run
//! ([`Testbed::new`] deletes namespaces of our prefix whose pid is dead).
//!
//! All names carry the prefix `rilltb<pid>-`: namespaces are `rilltb<pid>-<name>`;
//! interfaces are created inside the namespaces (`h<i>` in the router, `eth0` in a host)
//! and never exist in the root namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::impair::{Forwarder, HostImpairment, Impairments, Timeliness};

/// Minor id of link `link`'s upload class, and major id of the queue under it (tc prints
/// both in hex). 1:1 is left unused. Fits: MAX_LINKS + 2 < 0xffff.
fn upload_queue_id(link: usize) -> u32 {
    link as u32 + 2
}

/// Prefix of everything a testbed creates; the pid follows, then `-`.
pub const PREFIX: &str = "rilltb";
/// The TUN device of the impairment forwarder, inside the router namespace.
const TUN_NAME: &str = "tbtun";
/// Routing table that sends everything arriving from a host into the TUN.
const TO_TUN_TABLE: u32 = 100;
/// Bound on any one configuration command (`ip`, `tc`, `nft`, ...): they take
/// milliseconds; a hang means something is broken and must not hang the run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Links are numbered into 10.64.0.0/10 (outside, /24 each) and 10.128.0.0/10 (behind NATs).
const MAX_LINKS: usize = 64 * 256;
/// Ethernet MTU plus header: the smallest tbf/htb burst that passes a full packet.
const FRAME_BYTES: u64 = 1514;
/// tbf burst: a few packets (so the queue is the buffer, not the bucket), or 1 ms of
/// rate at high rates where timer granularity would otherwise cap the rate.
const BURST_PACKETS: u64 = 3;
/// Buffer used when a rate is given without one.
const DEFAULT_BUFFER_MS: u64 = 100;

/// One direction of a host's access link. All-default is an ideal link (no shaping, no
/// delay, no loss).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkSpec {
    /// Bottleneck rate in kbit/s; `None`: not shaped.
    pub rate_kbps: Option<u64>,
    /// Queue in front of the bottleneck, as time at `rate_kbps` (bytes = rate × time);
    /// `None` with a rate: 100 ms.
    pub buffer_ms: Option<u64>,
    /// One-way propagation delay added by the forwarder.
    pub delay_ms: f64,
    /// Each packet's delay is uniform in `delay_ms ± jitter_ms` (clamped at 0), without
    /// reordering packets of the same host pair.
    pub jitter_ms: f64,
    /// Probability in [0, 1] that a packet is dropped on this direction.
    pub loss: f64,
}

impl LinkSpec {
    /// A shaped direction: `rate_kbps` with `buffer_ms` of queue and `delay_ms` one way.
    pub fn shaped(rate_kbps: u64, buffer_ms: u64, delay_ms: f64) -> LinkSpec {
        LinkSpec { rate_kbps: Some(rate_kbps), buffer_ms: Some(buffer_ms), delay_ms, ..LinkSpec::default() }
    }

    fn validate(&self) -> Result<()> {
        if self.rate_kbps == Some(0) {
            bail!("link rate must be positive");
        }
        if !(0.0..=60_000.0).contains(&self.delay_ms) || !(0.0..=60_000.0).contains(&self.jitter_ms) {
            bail!("link delay and jitter must be within 0..=60000 ms");
        }
        if !(0.0..=1.0).contains(&self.loss) {
            bail!("link loss must be a probability in 0..=1, not {}", self.loss);
        }
        Ok(())
    }

    /// Queue bytes at the bottleneck: rate × buffer.
    fn limit_bytes(&self) -> Option<u64> {
        let rate = self.rate_kbps?;
        let buffer_ms = self.buffer_ms.unwrap_or(DEFAULT_BUFFER_MS);
        Some((rate * 1000 / 8 * buffer_ms / 1000).max(FRAME_BYTES))
    }

    fn burst_bytes(&self) -> Option<u64> {
        let rate = self.rate_kbps?;
        Some((BURST_PACKETS * FRAME_BYTES).max(rate * 1000 / 8 / 1000))
    }
}

/// A host of a [`Testbed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostId(usize);

/// A process spawned by a [`Testbed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildId(usize);

#[derive(Debug)]
struct Host {
    name: String,
    ns: String,
    /// The host's own address (private for NATed hosts).
    addr: Ipv4Addr,
    /// The address the router sees: the host's, or its NAT's outside address.
    public: Ipv4Addr,
    nat_ns: Option<String>,
    /// Link number: the router's end of the access link is `h<link>`.
    link: usize,
}

#[derive(Debug)]
struct Tracked {
    child: Child,
    what: String,
    /// Exit status once reaped.
    status: Option<ExitStatus>,
}

/// A topology of namespaces; dropping it removes everything it created.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    router: String,
    /// Namespaces in creation order (deleted in reverse).
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    links: usize,
    children: Vec<Tracked>,
    impairments: Arc<Mutex<Impairments>>,
    forwarder: Option<Forwarder>,
    upload_htb: bool,
    scratch: std::path::PathBuf,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLERS: Once = Once::new();

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Install SIGINT/SIGTERM handlers that set the [`interrupted`] flag (once per process).
pub fn install_signal_handlers() {
    HANDLERS.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction is valid; the handler only stores an atomic.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// True once SIGINT/SIGTERM/SIGHUP arrived: runners stop, return an error, and the
/// [`Testbed`]'s `Drop` cleans up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err("interrupted")` once a signal arrived; call between steps of a run.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Sleep `d`, waking early (with an error) on a signal.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Fails unless we are root (namespaces, veths and qdiscs need CAP_NET_ADMIN).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("rill testbed needs root (network namespaces); run it with sudo");
    }
    Ok(())
}

impl Testbed {
    /// Root check, sweep of dead runs' namespaces, the router namespace and its
    /// impairment forwarder. `tag` only names the run in messages.
    pub fn new(tag: &str) -> Result<Testbed> {
        require_root()?;
        install_signal_handlers();
        super::tools::ensure(&[super::tools::IP, super::tools::TC, super::tools::ETHTOOL])?;
        sweep_stale();
        let prefix = format!("{PREFIX}{}-", std::process::id());
        let router = format!("{prefix}router");
        let impairments = Arc::new(Mutex::new(Impairments::default()));
        let mut tb = Testbed {
            prefix,
            router: router.clone(),
            namespaces: Vec::new(),
            hosts: Vec::new(),
            links: 0,
            children: Vec::new(),
            impairments: impairments.clone(),
            forwarder: None,
            upload_htb: false,
            scratch: std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id())),
        };
        std::fs::create_dir_all(&tb.scratch).with_context(|| format!("creating {}", tb.scratch.display()))?;
        tracing::debug!("testbed {tag}: router namespace {router}");
        tb.add_namespace(&router)?;
        sysctls(&router, &[("net.ipv4.ip_forward", "1")])?;
        // The TUN is created by the forwarder thread after it entered the namespace.
        let seed = std::process::id() as u64;
        tb.forwarder = Some(Forwarder::start(&ns_path(&router), TUN_NAME, impairments, seed)?);
        let r = router.as_str();
        run(&["ip", "-n", r, "link", "set", TUN_NAME, "txqueuelen", "10000", "up"])?;
        sysctls(r, &[(&format!("net.ipv4.conf.{TUN_NAME}.rp_filter"), "0")])?;
        // Rules: locally made packets and packets the forwarder wrote back use the main
        // table (routes to the hosts' veths); everything else came from a host and goes
        // into the TUN first.
        let table = TO_TUN_TABLE.to_string();
        run(&["ip", "-n", r, "rule", "add", "iif", "lo", "lookup", "main", "priority", "50"])?;
        run(&["ip", "-n", r, "rule", "add", "iif", TUN_NAME, "lookup", "main", "priority", "60"])?;
        run(&["ip", "-n", r, "rule", "add", "lookup", &table, "priority", "70"])?;
        run(&["ip", "-n", r, "route", "add", "default", "dev", TUN_NAME, "table", &table])?;
        Ok(tb)
    }

    /// A host namespace joined to the router by a veth pair. `up`: host → router;
    /// `down`: router → host.
    pub fn add_host(&mut self, name: &str, up: &LinkSpec, down: &LinkSpec) -> Result<HostId> {
        let ns = self.host_ns(name)?;
        let link = self.attach(&ns, "eth0", up, down)?;
        let (router_addr, host_addr) = outside_addrs(link);
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &router_addr.to_string()])?;
        self.hosts.push(Host {
            name: name.to_string(),
            ns,
            addr: host_addr,
            public: host_addr,
            nat_ns: None,
            link,
        });
        Ok(HostId(self.hosts.len() - 1))
    }

    /// A host behind its own NAT: host → NAT namespace (nftables masquerade) → router.
    /// `up`/`down` shape the NAT's access link. [`Testbed::addr`] is the host's private
    /// address; [`Testbed::public_addr`] the NAT's outside address.
    pub fn add_host_behind_nat(&mut self, name: &str, up: &LinkSpec, down: &LinkSpec) -> Result<HostId> {
        super::tools::ensure(&[super::tools::NFT])?;
        let nat = self.host_ns(&format!("{name}-nat"))?;
        let link = self.attach(&nat, "wan0", up, down)?;
        let (router_addr, nat_outside) = outside_addrs(link);
        run(&["ip", "-n", &nat, "route", "add", "default", "via", &router_addr.to_string()])?;
        sysctls(&nat, &[("net.ipv4.ip_forward", "1")])?;
        let ns = self.host_ns(name)?;
        let (nat_inside, host_addr) = private_addrs(link);
        run(&[
            "ip", "-n", &nat, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        no_offloads(&nat, "lan0")?;
        no_offloads(&ns, "eth0")?;
        run(&["ip", "-n", &nat, "addr", "add", &format!("{nat_inside}/24"), "dev", "lan0"])?;
        run(&["ip", "-n", &ns, "addr", "add", &format!("{host_addr}/24"), "dev", "eth0"])?;
        run(&["ip", "-n", &nat, "link", "set", "lan0", "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &nat_inside.to_string()])?;
        // Endpoint-independent mapping is not promised: masquerade is what home routers do.
        let rules = "table ip rilltb_nat {\n chain post {\n  type nat hook postrouting priority 100; policy accept;\n  oifname \"wan0\" masquerade\n }\n}\n";
        run_in(&nat, &["nft", "-f", "-"], Some(rules))?;
        self.hosts.push(Host {
            name: name.to_string(),
            ns,
            addr: host_addr,
            public: nat_outside,
            nat_ns: Some(nat),
            link,
        });
        Ok(HostId(self.hosts.len() - 1))
    }

    /// The host's own address (the private one for a NATed host).
    pub fn addr(&self, h: HostId) -> IpAddr {
        IpAddr::V4(self.hosts[h.0].addr)
    }

    /// The address other hosts see: the host's own, or its NAT's outside address.
    pub fn public_addr(&self, h: HostId) -> IpAddr {
        IpAddr::V4(self.hosts[h.0].public)
    }

    /// The host's namespace name (for `ip netns exec`).
    pub fn namespace(&self, h: HostId) -> &str {
        &self.hosts[h.0].ns
    }

    /// The namespace of a NATed host's NAT (`None` for a host on the router directly).
    pub fn nat_namespace(&self, h: HostId) -> Option<&str> {
        self.hosts[h.0].nat_ns.as_deref()
    }

    /// The router's interface toward the host (its download qdisc sits on it), for
    /// `tc -s qdisc show dev ...` via [`Testbed::exec_in_router`].
    pub fn router_interface(&self, h: HostId) -> String {
        format!("h{}", self.hosts[h.0].link)
    }

    /// The name given to [`Testbed::add_host`].
    pub fn host_name(&self, h: HostId) -> &str {
        &self.hosts[h.0].name
    }

    /// All hosts, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = HostId> {
        (0..self.hosts.len()).map(HostId)
    }

    /// Run `cmd` in the host's namespace, in its own process group, with the stdio the
    /// caller set. Tracked: killed (whole group) at cleanup, and by the kernel if this
    /// process dies (`PR_SET_PDEATHSIG`; note that the kernel ties it to the spawning
    /// *thread*: spawn from a thread that outlives the child, e.g. the main thread).
    pub fn spawn(&mut self, h: HostId, cmd: &mut Command) -> Result<ChildId> {
        let ns = self.hosts[h.0].ns.clone();
        self.spawn_in(&ns, cmd)
    }

    /// As [`Testbed::spawn`], in the router namespace.
    pub fn spawn_in_router(&mut self, cmd: &mut Command) -> Result<ChildId> {
        let ns = self.router.clone();
        self.spawn_in(&ns, cmd)
    }

    fn spawn_in(&mut self, ns: &str, cmd: &mut Command) -> Result<ChildId> {
        check_interrupted()?;
        let what = format!("{cmd:?}");
        enter_on_exec(cmd, ns)?;
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {what} in {ns}"))?;
        self.children.push(Tracked { child, what, status: None });
        Ok(ChildId(self.children.len() - 1))
    }

    /// The child's pid (also its process group id).
    pub fn child_pid(&self, c: ChildId) -> u32 {
        self.children[c.0].child.id()
    }

    /// The child's piped stdout, once (set `Stdio::piped()` before [`Testbed::spawn`]).
    pub fn take_stdout(&mut self, c: ChildId) -> Option<ChildStdout> {
        self.children[c.0].child.stdout.take()
    }

    /// The child's piped stderr, once.
    pub fn take_stderr(&mut self, c: ChildId) -> Option<ChildStderr> {
        self.children[c.0].child.stderr.take()
    }

    /// Send `signal` to the child's process group (e.g. `libc::SIGINT` for a summary).
    pub fn signal(&mut self, c: ChildId, signal: libc::c_int) {
        let t = &mut self.children[c.0];
        if t.status.is_none() {
            // SAFETY: kill has no memory preconditions; the pgid is our own child's.
            unsafe { libc::kill(-(t.child.id() as libc::pid_t), signal) };
        }
    }

    /// Kill the child's process group and reap it.
    pub fn kill(&mut self, c: ChildId) {
        self.signal(c, libc::SIGKILL);
        let t = &mut self.children[c.0];
        if t.status.is_none() {
            t.status = t.child.wait().ok();
        }
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self, c: ChildId) -> Result<Option<ExitStatus>> {
        let t = &mut self.children[c.0];
        if t.status.is_none() {
            t.status = t.child.try_wait().with_context(|| format!("waiting for {}", t.what))?;
        }
        Ok(t.status)
    }

    /// Wait up to `timeout` for the child to exit; on timeout it is killed and this is an
    /// error. A signal (Ctrl-C) also ends the wait with an error.
    pub fn wait(&mut self, c: ChildId, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait(c)? {
                return Ok(s);
            }
            if let Err(e) = check_interrupted() {
                self.kill(c);
                return Err(e);
            }
            if Instant::now() >= end {
                self.kill(c);
                bail!(
                    "{} did not exit within {:.1} s; killed",
                    self.children[c.0].what,
                    timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run a short command in the host's namespace and collect its output (bounded in
    /// time; not an error if it exits non-zero: look at `status`).
    pub fn exec(&self, h: HostId, args: &[&str]) -> Result<Output> {
        output_in(&self.hosts[h.0].ns, args, None)
    }

    /// As [`Testbed::exec`], in the router namespace.
    pub fn exec_in_router(&self, args: &[&str]) -> Result<Output> {
        output_in(&self.router, args, None)
    }

    /// The handle of host `h`'s upload queue (the `bfifo` under its htb class) in `tc -s
    /// qdisc show` in the router; no such queue exists if its upload is not shaped.
    pub fn upload_queue_handle(&self, h: HostId) -> u32 {
        upload_queue_id(self.hosts[h.0].link)
    }

    /// Packets the forwarder dropped: (by loss, by its queue bound).
    pub fn forwarder_drops(&self) -> (u64, u64) {
        self.forwarder.as_ref().map_or((0, 0), |f| f.drops())
    }

    /// How late the forwarder released packets against their delays, so far.
    pub fn forwarder_timeliness(&self) -> Timeliness {
        self.forwarder.as_ref().map(|f| f.timeliness()).unwrap_or_default()
    }

    /// Pids of every process spawned by this testbed (exited or not).
    pub fn children_pids(&self) -> Vec<u32> {
        self.children.iter().map(|t| t.child.id()).collect()
    }

    /// Pids of the processes spawned and not yet reaped.
    pub fn live_children(&mut self) -> Vec<u32> {
        let ids: Vec<ChildId> = (0..self.children.len()).map(ChildId).collect();
        let live: Vec<ChildId> = ids.into_iter().filter(|&c| matches!(self.try_wait(c), Ok(None))).collect();
        live.into_iter().map(|c| self.child_pid(c)).collect()
    }

    /// A directory for this run's files (keys, logs); removed at cleanup.
    pub fn scratch_dir(&self) -> &std::path::Path {
        &self.scratch
    }

    /// The namespace-name prefix of this run (`rilltb<pid>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn host_ns(&mut self, name: &str) -> Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("host name {name:?}: use letters, digits, '-' and '_'");
        }
        let ns = format!("{}{name}", self.prefix);
        if self.namespaces.contains(&ns) || name == "router" {
            bail!("host name {name:?} is taken");
        }
        self.add_namespace(&ns)?;
        Ok(ns)
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        check_interrupted()?;
        run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        // rp_filter off: packets come back from the TUN with source addresses of other
        // links. Redirects off: the router must not teach hosts shortcuts. IPv6 off: its
        // router solicitations and DAD are noise on a measured link.
        sysctls(
            ns,
            &[
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.default.send_redirects", "0"),
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ],
        )
    }

    /// Joins namespace `ns` (interface `ifname`) to the router with a shaped link;
    /// returns the link number.
    fn attach(&mut self, ns: &str, ifname: &str, up: &LinkSpec, down: &LinkSpec) -> Result<usize> {
        up.validate()?;
        down.validate()?;
        if self.links >= MAX_LINKS {
            bail!("a testbed holds at most {MAX_LINKS} links");
        }
        let link = self.links;
        self.links += 1;
        let r = self.router.clone();
        let rif = format!("h{link}");
        let (router_addr, outside) = outside_addrs(link);
        run(&["ip", "-n", &r, "link", "add", &rif, "type", "veth", "peer", "name", ifname, "netns", ns])?;
        // GRO/GSO/TSO would hand the qdiscs 64 KB super-packets: at 20 Mbit/s one of them
        // is 26 ms of queue in a single dequeue.
        no_offloads(&r, &rif)?;
        no_offloads(ns, ifname)?;
        run(&["ip", "-n", &r, "addr", "add", &format!("{router_addr}/24"), "dev", &rif])?;
        run(&["ip", "-n", ns, "addr", "add", &format!("{outside}/24"), "dev", ifname])?;
        run(&["ip", "-n", &r, "link", "set", &rif, "up"])?;
        run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        sysctls(&r, &[(&format!("net.ipv4.conf.{rif}.rp_filter"), "0")])?;
        if let (Some(rate), Some(limit), Some(burst)) =
            (down.rate_kbps, down.limit_bytes(), down.burst_bytes())
        {
            run(&[
                "tc",
                "-n",
                &r,
                "qdisc",
                "replace",
                "dev",
                &rif,
                "root",
                "tbf",
                "rate",
                &format!("{rate}kbit"),
                "burst",
                &burst.to_string(),
                "limit",
                &limit.to_string(),
            ])?;
        }
        if let (Some(rate), Some(limit), Some(burst)) = (up.rate_kbps, up.limit_bytes(), up.burst_bytes()) {
            self.shape_upload(link, outside, rate, limit, burst)?;
        }
        let impairment = HostImpairment { up: up.into(), down: down.into() };
        self.impairments
            .lock()
            .map_err(|_| anyhow::anyhow!("forwarder table poisoned"))?
            .insert(outside, impairment);
        Ok(link)
    }

    /// An htb class on the TUN's egress for packets from `source`: the host's upload
    /// queue, in the router namespace.
    fn shape_upload(
        &mut self,
        link: usize,
        source: Ipv4Addr,
        rate_kbps: u64,
        limit: u64,
        burst: u64,
    ) -> Result<()> {
        let r = self.router.clone();
        if !self.upload_htb {
            // Unclassified packets (unshaped hosts) bypass the classes (htb's direct queue).
            run(&[
                "tc",
                "-n",
                &r,
                "qdisc",
                "add",
                "dev",
                TUN_NAME,
                "root",
                "handle",
                "1:",
                "htb",
                "direct_qlen",
                "10000",
            ])?;
            self.upload_htb = true;
        }
        let id = upload_queue_id(link);
        let class = format!("1:{id:x}");
        let handle = format!("{id:x}:");
        let rate = format!("{rate_kbps}kbit");
        let burst = burst.to_string();
        run(&[
            "tc", "-n", &r, "class", "add", "dev", TUN_NAME, "parent", "1:", "classid", &class, "htb",
            "rate", &rate, "ceil", &rate, "burst", &burst, "cburst", &burst,
        ])?;
        run(&[
            "tc",
            "-n",
            &r,
            "qdisc",
            "add",
            "dev",
            TUN_NAME,
            "parent",
            &class,
            "handle",
            &handle,
            "bfifo",
            "limit",
            &limit.to_string(),
        ])?;
        run(&[
            "tc",
            "-n",
            &r,
            "filter",
            "add",
            "dev",
            TUN_NAME,
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "src",
            &format!("{source}/32"),
            "flowid",
            &class,
        ])
    }

    fn cleanup(&mut self) {
        for t in &mut self.children {
            if t.status.is_none() {
                // SAFETY: as in `signal`.
                unsafe { libc::kill(-(t.child.id() as libc::pid_t), libc::SIGKILL) };
                t.status = t.child.wait().ok();
            }
        }
        if let Some(f) = self.forwarder.take() {
            f.stop();
        }
        for ns in self.namespaces.iter().rev() {
            delete_namespace(ns);
        }
        self.namespaces.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("rill testbed: cleanup: removing {}: {e}", self.scratch.display());
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn outside_addrs(link: usize) -> (Ipv4Addr, Ipv4Addr) {
    let (a, b) = (64 + (link / 256) as u8, (link % 256) as u8);
    (Ipv4Addr::new(10, a, b, 1), Ipv4Addr::new(10, a, b, 2))
}

fn private_addrs(link: usize) -> (Ipv4Addr, Ipv4Addr) {
    let (a, b) = (128 + (link / 256) as u8, (link % 256) as u8);
    (Ipv4Addr::new(10, a, b, 1), Ipv4Addr::new(10, a, b, 2))
}

fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Make `cmd` enter namespace `ns` between fork and exec, and die with this process.
fn enter_on_exec(cmd: &mut Command, ns: &str) -> Result<()> {
    let file = File::open(ns_path(ns)).with_context(|| format!("opening namespace {ns}"))?;
    // The fd is O_CLOEXEC (std's default): open in the forked child until exec, closed
    // after. The closure owns the File, so the fd lives as long as the Command.
    let fd = file.as_raw_fd();
    let holder = Arc::new(file);
    // SAFETY: setns and prctl are async-signal-safe system calls; the closure touches no
    // locks or allocations.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &holder;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Run `args` in namespace `ns` with `stdin` fed, bounded by [`COMMAND_TIMEOUT`].
fn output_in(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    enter_on_exec(&mut cmd, ns)?;
    bounded_output(&mut cmd, stdin)
}

/// As [`output_in`], and an error (with the command's stderr) unless it succeeded.
fn run_in(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let out = output_in(ns, args, stdin)?;
    check(args, &out)
}

/// Run a configuration command (`ip`, `tc` with `-n NS`) in the root namespace.
fn run(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = bounded_output(&mut cmd, None)?;
    check(args, &out)
}

fn check(args: &[&str], out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Spawn, feed stdin, collect output; killed after [`COMMAND_TIMEOUT`].
fn bounded_output(cmd: &mut Command, stdin: Option<&str>) -> Result<Output> {
    use std::io::{Read, Write};
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).with_context(|| format!("writing to {what}"))?;
    }
    // Readers on threads so a chatty command cannot block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    });
    let end = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s; killed", COMMAND_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

fn sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let mut args = vec!["sysctl".to_string(), "-q".to_string(), "-w".to_string()];
    // IPv6 keys are absent when IPv6 is off in the kernel: `-e` ignores unknown keys.
    args.insert(2, "-e".to_string());
    args.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_in(ns, &refs, None)
}

fn no_offloads(ns: &str, ifname: &str) -> Result<()> {
    run_in(ns, &["ethtool", "-K", ifname, "gro", "off", "gso", "off", "tso", "off"], None)
}

/// Namespaces of this machine whose names start with [`PREFIX`].
pub fn our_namespaces() -> Vec<String> {
    let Ok(out) = bounded_output(Command::new("ip").args(["netns", "list"]), None) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// The pid in a namespace name `rilltb<pid>-...`.
pub fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Delete namespaces left by runs whose process is gone (a SIGKILLed testbed).
fn sweep_stale() {
    let dead: Vec<String> = our_namespaces()
        .into_iter()
        .filter(|ns| owner_pid(ns).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()))
        .collect();
    for ns in dead {
        eprintln!("rill testbed: removing namespace {ns} left by an earlier run");
        delete_namespace(&ns);
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Kill what still runs in `ns`, then delete it. Errors are logged, not returned: this
/// runs in `Drop`.
fn delete_namespace(ns: &str) {
    if let Ok(out) = bounded_output(Command::new("ip").args(["netns", "pids", ns]), None) {
        for pid in
            String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    match bounded_output(Command::new("ip").args(["netns", "del", ns]), None) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "rill testbed: cleanup: ip netns del {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("rill testbed: cleanup: ip netns del {ns}: {e:#}"),
    }
}

/// What a finished run must have left behind: nothing. Lists what is left.
pub fn leftovers(prefix: &str, pids: &[u32]) -> Vec<String> {
    let mut left: Vec<String> = our_namespaces().into_iter().filter(|n| n.starts_with(prefix)).collect();
    for pid in pids {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            left.push(format!("process {pid}"));
        }
    }
    left
}
