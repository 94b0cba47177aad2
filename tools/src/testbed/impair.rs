//! The impairment forwarder: propagation delay, jitter and loss for every protocol, in
//! userspace, because this kernel has no `netem`.
//!
//! One TUN device sits in the router namespace. Policy routing sends every packet that
//! arrives from a host into it (see [`super::netns`]); the forwarder thread reads each
//! packet, decides its fate with a [`DelayLine`], and writes it back into the same TUN
//! when its time comes, where the kernel routes it on to the destination host's veth and
//! that veth's bottleneck queue. TCP, UDP and ICMP all take this one path, so kernel TCP
//! baselines and rill cross the same impaired network.
//!
//! A packet from host A to host B is held for up(A).delay + down(B).delay, each with its
//! own jitter, and lost with up(A).loss, then with down(B).loss. Hosts are recognised by
//! the source/destination address the router sees (a NATed host: its NAT's outside
//! address). Packets of other addresses or protocols pass without delay.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::netns::LinkSpec;
use crate::table::round;

/// Packets held at once. At 1 Gbit/s of 1500-byte packets with 500 ms of delay that is
/// ~42,000 packets; beyond the bound packets are dropped and counted.
const MAX_PACKETS: usize = 100_000;
/// Bytes held at once (same reasoning: 1 Gbit/s × 500 ms = 62.5 MB).
const MAX_BYTES: usize = 128 << 20;
/// Largest packet read from the TUN: its MTU is 1500, GSO is off (no vnet header).
const READ_BUFFER: usize = 65_536;
/// Packets read per loop turn before due packets are written: keeps release times
/// accurate under a flood.
const READ_BATCH: usize = 256;
/// Longest sleep of the loop: how fast it notices the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Pair entries kept for the no-reordering rule before stale ones are pruned.
const MAX_PAIRS: usize = 1 << 16;

/// From linux/if_tun.h: `TUNSETIFF = _IOW('T', 202, int)`, `IFF_TUN`, `IFF_NO_PI`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// One direction's impairment, in the forwarder's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DirectionImpairment {
    pub delay_us: u64,
    pub jitter_us: u64,
    pub loss: f64,
}

impl From<&LinkSpec> for DirectionImpairment {
    fn from(s: &LinkSpec) -> Self {
        DirectionImpairment {
            delay_us: (s.delay_ms * 1000.0).round() as u64,
            jitter_us: (s.jitter_ms * 1000.0).round() as u64,
            loss: s.loss,
        }
    }
}

/// A host's two directions: `up` host → router, `down` router → host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostImpairment {
    pub up: DirectionImpairment,
    pub down: DirectionImpairment,
}

/// Impairments by the address the router sees for each host.
#[derive(Debug, Default)]
pub struct Impairments {
    hosts: HashMap<Ipv4Addr, HostImpairment>,
}

impl Impairments {
    pub fn insert(&mut self, addr: Ipv4Addr, h: HostImpairment) {
        self.hosts.insert(addr, h);
    }

    fn get(&self, addr: Ipv4Addr) -> HostImpairment {
        self.hosts.get(&addr).copied().unwrap_or_default()
    }
}

/// What became of an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Queued,
    Lost,
    /// The line was full ([`MAX_PACKETS`] / [`MAX_BYTES`]).
    Overflow,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    release_us: u64,
    /// Tie-break: equal release times leave in arrival order.
    seq: u64,
    packet: Vec<u8>,
}

/// Packets waiting for their release time; time is microseconds on the caller's clock
/// (pure: tests drive it with a fake clock).
#[derive(Debug)]
pub struct DelayLine {
    heap: BinaryHeap<Reverse<Held>>,
    bytes: usize,
    seq: u64,
    /// Latest release time per (source, destination): a packet never leaves before an
    /// earlier one of the same pair, so jitter does not reorder a flow.
    last_release: HashMap<(Ipv4Addr, Ipv4Addr), u64>,
    rng: ChaCha8Rng,
    max_packets: usize,
    max_bytes: usize,
}

impl DelayLine {
    pub fn new(seed: u64) -> DelayLine {
        DelayLine::with_bounds(seed, MAX_PACKETS, MAX_BYTES)
    }

    fn with_bounds(seed: u64, max_packets: usize, max_bytes: usize) -> DelayLine {
        DelayLine {
            heap: BinaryHeap::new(),
            bytes: 0,
            seq: 0,
            last_release: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            max_packets,
            max_bytes,
        }
    }

    /// Offer a packet from `src` to `dst` at `now_us`, impaired by the source's upload
    /// and the destination's download.
    pub fn offer(
        &mut self,
        now_us: u64,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        up: &DirectionImpairment,
        down: &DirectionImpairment,
        packet: Vec<u8>,
    ) -> Verdict {
        if self.chance(up.loss) || self.chance(down.loss) {
            return Verdict::Lost;
        }
        if self.heap.len() >= self.max_packets || self.bytes + packet.len() > self.max_bytes {
            return Verdict::Overflow;
        }
        let delay = self.jittered(up) + self.jittered(down);
        if self.last_release.len() >= MAX_PAIRS {
            self.last_release.retain(|_, &mut t| t > now_us);
        }
        let last = self.last_release.entry((src, dst)).or_insert(0);
        let release_us = (now_us + delay).max(*last);
        *last = release_us;
        self.bytes += packet.len();
        self.seq += 1;
        self.heap.push(Reverse(Held { release_us, seq: self.seq, packet }));
        Verdict::Queued
    }

    /// The next packet whose release time is at or before `now_us`, with that time.
    pub fn pop_due(&mut self, now_us: u64) -> Option<(u64, Vec<u8>)> {
        if self.heap.peek()?.0.release_us > now_us {
            return None;
        }
        let Reverse(held) = self.heap.pop()?;
        self.bytes -= held.packet.len();
        Some((held.release_us, held.packet))
    }

    /// Release time of the next packet.
    pub fn next_release_us(&self) -> Option<u64> {
        self.heap.peek().map(|r| r.0.release_us)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }

    /// Uniform in [0, 1): the top 53 bits of a u64.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `delay ± jitter`, uniform, clamped at zero.
    fn jittered(&mut self, d: &DirectionImpairment) -> u64 {
        if d.jitter_us == 0 {
            return d.delay_us;
        }
        let offset = (self.uniform() * 2.0 - 1.0) * d.jitter_us as f64;
        (d.delay_us as f64 + offset).max(0.0).round() as u64
    }
}

/// Source and destination of an IPv4 packet (RFC 791: bytes 12..16 and 16..20).
pub fn ipv4_addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let a = |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
    Some((a(12), a(16)))
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    lost: AtomicU64,
    overflow: AtomicU64,
    /// Packets written more than 1 ms and more than 5 ms after their release time, and
    /// the most any was (µs): how faithfully the forwarder kept its delays. It shares the
    /// CPUs with the processes under test; when it runs late, every path's delay and
    /// jitter grows with the load, which no real network does.
    late_over_1ms: AtomicU64,
    late_over_5ms: AtomicU64,
    late_max_us: AtomicU64,
    /// Whether the thread got a real-time scheduling class (see [`REALTIME_PRIORITY`]).
    realtime: AtomicBool,
}

impl Counters {
    fn count_release(&self, late_us: u64) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if late_us > 1_000 {
            self.late_over_1ms.fetch_add(1, Ordering::Relaxed);
        }
        if late_us > 5_000 {
            self.late_over_5ms.fetch_add(1, Ordering::Relaxed);
        }
        self.late_max_us.fetch_max(late_us, Ordering::Relaxed);
    }

    fn timeliness(&self) -> Timeliness {
        Timeliness {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            late_over_1ms: self.late_over_1ms.load(Ordering::Relaxed),
            late_over_5ms: self.late_over_5ms.load(Ordering::Relaxed),
            late_max_us: self.late_max_us.load(Ordering::Relaxed),
            realtime: self.realtime.load(Ordering::Relaxed),
        }
    }
}

/// How late the forwarder wrote packets, against the release times it gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timeliness {
    pub forwarded: u64,
    pub late_over_1ms: u64,
    pub late_over_5ms: u64,
    pub late_max_us: u64,
    pub realtime: bool,
}

impl Timeliness {
    /// For reports: the real-time flag, packets forwarded, the fractions released more
    /// than 1 ms and 5 ms late, and the latest, ms.
    pub fn figures(&self) -> serde_json::Value {
        let frac =
            |n: u64| if self.forwarded == 0 { 0.0 } else { round(n as f64 / self.forwarded as f64, 4) };
        serde_json::json!({
            "realtime": self.realtime,
            "packets": self.forwarded,
            "late_over_1ms": frac(self.late_over_1ms),
            "late_over_5ms": frac(self.late_over_5ms),
            "late_max_ms": round(self.late_max_us as f64 / 1000.0, 1),
        })
    }
}

/// `SCHED_FIFO` priority of the forwarder thread. The forwarder is the network: a packet
/// it releases late is a path delay the scenario did not ask for. Without a real-time
/// class it waits for a CPU behind the 31 `rill` processes of `rill testbed swarm --nodes
/// 30` on this 2-core machine. 10: above every normal thread, below the kernel's own
/// real-time threads (watchdogs, 99). The kernel's real-time throttling (95 % of each
/// second by default) still leaves the rest a share should it ever spin.
const REALTIME_PRIORITY: libc::c_int = 10;

/// Move the calling thread into `SCHED_FIFO` at [`REALTIME_PRIORITY`]; false if the
/// kernel refused (no `CAP_SYS_NICE`, or real-time time not granted to this cgroup).
fn make_realtime() -> bool {
    let param = libc::sched_param { sched_priority: REALTIME_PRIORITY };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// The forwarder thread; [`Forwarder::stop`] ends it (and with it the TUN device).
#[derive(Debug)]
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Forwarder {
    /// Start the thread: it enters the namespace at `ns_path`, creates TUN `tun_name`
    /// there and forwards until stopped. Returns once the TUN exists.
    pub fn start(
        ns_path: &str,
        tun_name: &str,
        table: Arc<Mutex<Impairments>>,
        seed: u64,
    ) -> Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let (ns_path, tun_name) = (ns_path.to_string(), tun_name.to_string());
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("tb-forwarder".into())
            .spawn(move || match open_tun_in(&ns_path, &tun_name) {
                Ok(tun) => {
                    let _ = tx.send(Ok(()));
                    forward(&tun, &table, &stop2, &counters2, seed);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .context("starting the forwarder thread")?;
        let mut f = Forwarder { stop, thread: Some(thread), counters };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(f),
            Ok(Err(e)) => {
                f.join();
                Err(e)
            }
            Err(_) => {
                f.stop.store(true, Ordering::SeqCst);
                bail!("the forwarder thread did not start within 10 s")
            }
        }
    }

    /// Packets dropped: (by loss, by the queue bound).
    pub fn drops(&self) -> (u64, u64) {
        (self.counters.lost.load(Ordering::Relaxed), self.counters.overflow.load(Ordering::Relaxed))
    }

    /// Packets forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }

    /// How late packets left, so far.
    pub fn timeliness(&self) -> Timeliness {
        self.counters.timeliness()
    }

    /// Stop the thread and wait for it (it checks the flag at least every 20 ms).
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("rill testbed: cleanup: the forwarder thread panicked");
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.join();
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    /// `struct ifreq` is 40 bytes on Linux; the union's other members are unused here.
    _pad: [u8; 22],
}

/// Enter the namespace (this thread only) and create a TUN device there.
fn open_tun_in(ns_path: &str, name: &str) -> Result<OwnedFd> {
    let ns = File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    // SAFETY: setns on a valid fd; affects only the calling thread for CLONE_NEWNET.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the router namespace");
    }
    if name.len() >= libc::IFNAMSIZ {
        bail!("TUN name {name:?} is too long");
    }
    // SAFETY: a NUL-terminated path literal; the returned fd is checked.
    let fd =
        unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq lays out.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(tun)
}

fn forward(tun: &OwnedFd, table: &Mutex<Impairments>, stop: &AtomicBool, counters: &Counters, seed: u64) {
    let fd = tun.as_raw_fd();
    if make_realtime() {
        counters.realtime.store(true, Ordering::Relaxed);
    } else {
        eprintln!(
            "rill testbed: the forwarder runs without a real-time class ({}); under load its delays grow",
            std::io::Error::last_os_error()
        );
    }
    let start = Instant::now();
    let now_us = || start.elapsed().as_micros() as u64;
    let mut line = DelayLine::new(seed);
    let mut buf = vec![0u8; READ_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..READ_BATCH {
            // SAFETY: reading into an owned buffer of the given length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let packet = buf[..n as usize].to_vec();
            let now = now_us();
            let verdict = match ipv4_addrs(&packet) {
                Some((src, dst)) => {
                    let (up, down) = match table.lock() {
                        Ok(t) => (t.get(src).up, t.get(dst).down),
                        Err(_) => Default::default(),
                    };
                    line.offer(now, src, dst, &up, &down, packet)
                }
                None => line.offer(
                    now,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    &Default::default(),
                    &Default::default(),
                    packet,
                ),
            };
            match verdict {
                Verdict::Queued => {}
                Verdict::Lost => _ = counters.lost.fetch_add(1, Ordering::Relaxed),
                Verdict::Overflow => _ = counters.overflow.fetch_add(1, Ordering::Relaxed),
            }
        }
        let now = now_us();
        while let Some((release_us, p)) = line.pop_due(now) {
            // SAFETY: writing an owned buffer; a TUN write takes one whole packet.
            let n = unsafe { libc::write(fd, p.as_ptr().cast(), p.len()) };
            if n == p.len() as isize {
                counters.count_release(now_us().saturating_sub(release_us));
            }
        }
        let wait = line
            .next_release_us()
            .map_or(MAX_WAIT, |t| Duration::from_micros(t.saturating_sub(now_us())).min(MAX_WAIT));
        let ts = libc::timespec { tv_sec: 0, tv_nsec: wait.as_nanos() as libc::c_long };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd and a valid timespec; no signal mask change.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(delay_ms: u64, jitter_ms: u64, loss: f64) -> DirectionImpairment {
        DirectionImpairment { delay_us: delay_ms * 1000, jitter_us: jitter_ms * 1000, loss }
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 64, 1, 2);

    #[test]
    fn delay_is_up_of_source_plus_down_of_destination() {
        let mut line = DelayLine::new(1);
        assert_eq!(line.offer(1_000, A, B, &d(10, 0, 0.0), &d(20, 0, 0.0), vec![1]), Verdict::Queued);
        assert_eq!(line.next_release_us(), Some(31_000));
        assert_eq!(line.pop_due(30_999), None);
        assert_eq!(line.pop_due(31_000), Some((31_000, vec![1])));
        assert!(line.is_empty());
    }

    #[test]
    fn jitter_stays_in_range_and_never_reorders_a_pair() {
        let mut line = DelayLine::new(7);
        for i in 0..1000u64 {
            line.offer(i * 100, A, B, &d(20, 5, 0.0), &d(0, 0, 0.0), i.to_be_bytes().to_vec());
        }
        let mut last = None;
        let mut t = 0;
        let mut out = Vec::new();
        while !line.is_empty() {
            let r = line.next_release_us().unwrap();
            assert!(r >= t, "time only moves forward");
            t = r;
            let (at, p) = line.pop_due(t).unwrap();
            assert_eq!(at, r);
            let i = u64::from_be_bytes(p.try_into().unwrap());
            // Release is within arrival + 15..=25 ms, or held back behind an earlier packet.
            assert!(t >= i * 100 + 15_000, "packet {i} left at {t}");
            if let Some(l) = last {
                assert!(i > l, "packet {i} overtook {l}");
            }
            last = Some(i);
            out.push(t - i * 100);
        }
        let max = *out.iter().max().unwrap();
        let min = *out.iter().min().unwrap();
        assert!(min >= 15_000 && max <= 25_000 + 100 * 1000, "delays {min}..{max}");
        assert!(max - min > 5_000, "jitter shows: {min}..{max}");
    }

    #[test]
    fn loss_rate_is_near_the_probability() {
        let mut line = DelayLine::new(3);
        let lost = (0..10_000)
            .filter(|_| line.offer(0, A, B, &d(0, 0, 0.1), &d(0, 0, 0.0), vec![0]) == Verdict::Lost)
            .count();
        assert!((800..1200).contains(&lost), "lost {lost} of 10000 at p = 0.1");
    }

    #[test]
    fn bounded_by_packets_and_bytes() {
        let mut line = DelayLine::with_bounds(1, 2, 1000);
        let none = d(0, 0, 0.0);
        assert_eq!(line.offer(0, A, B, &none, &none, vec![0; 10]), Verdict::Queued);
        assert_eq!(line.offer(0, A, B, &none, &none, vec![0; 10]), Verdict::Queued);
        assert_eq!(line.offer(0, A, B, &none, &none, vec![0; 10]), Verdict::Overflow);
        let mut line = DelayLine::with_bounds(1, 10, 15);
        assert_eq!(line.offer(0, A, B, &none, &none, vec![0; 10]), Verdict::Queued);
        assert_eq!(line.offer(0, A, B, &none, &none, vec![0; 10]), Verdict::Overflow);
        assert_eq!(line.pop_due(0).map(|(_, p)| p.len()), Some(10));
        assert_eq!(line.offer(0, A, B, &none, &none, vec![0; 10]), Verdict::Queued);
    }

    #[test]
    fn different_pairs_are_independent() {
        let mut line = DelayLine::new(1);
        line.offer(0, A, B, &d(50, 0, 0.0), &d(0, 0, 0.0), vec![1]);
        line.offer(0, B, A, &d(5, 0, 0.0), &d(0, 0, 0.0), vec![2]);
        assert_eq!(line.pop_due(5_000), Some((5_000, vec![2])));
        assert_eq!(line.pop_due(5_000), None);
        assert_eq!(line.pop_due(50_000), Some((50_000, vec![1])));
    }

    #[test]
    fn timeliness_figures_are_fractions_of_the_packets_forwarded() {
        let counters = Counters::default();
        for late_us in [0, 900, 1_500, 4_000, 7_250] {
            counters.count_release(late_us);
        }
        let f = counters.timeliness().figures();
        assert_eq!(f["packets"], 5);
        assert_eq!(f["late_over_1ms"], 0.6);
        assert_eq!(f["late_over_5ms"], 0.2);
        assert_eq!(f["late_max_ms"], 7.3);
        assert_eq!(Timeliness::default().figures()["late_over_1ms"], 0.0);
    }

    #[test]
    fn parses_ipv4_addresses() {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&[10, 64, 0, 2]);
        p[16..20].copy_from_slice(&[10, 64, 1, 2]);
        assert_eq!(ipv4_addrs(&p), Some((A, B)));
        p[0] = 0x60;
        assert_eq!(ipv4_addrs(&p), None);
        assert_eq!(ipv4_addrs(&[0x45; 10]), None);
    }
}
