//! Runs several [`Endpoint`]s and their applications over a [`VirtualNetwork`] in virtual
//! time, deterministically: same seeds and scenario, same run. Like quinn's `Pair`, for N
//! hosts.
//!
//! # Loop
//! Each step jumps to the earliest of: the network's next event, every endpoint's
//! `poll_timeout`, every application's `poll_timeout` (or the end of the run). At that
//! instant it hands every datagram due to its endpoint, then, host by host in the order
//! they were added, fires the endpoint's timeout and then the application's if due. After
//! every input to an endpoint (datagram, timeout, or an application call) it drains
//! `poll_transmit` into the network and `poll_event` into the host's application until
//! both are empty, as the [`Endpoint`] call order requires.
//!
//! # Guards
//! A timeout that does not advance (an endpoint or application that keeps returning an
//! instant at or before now after being handled) is fired at most
//! [`MAX_FIRES_PER_INSTANT`] times per instant; after that it is treated as due
//! [`STALE_TIMEOUT_RETRY`] later and counted in [`SimulationStats::deferred_timeouts`], so
//! virtual time always advances. A run also stops after [`Simulation::max_steps`] steps
//! ([`MAX_STEPS`] by default), reported in [`SimulationStats::step_limit_hit`].

use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::link::{Side, VirtualNetwork};
use crate::endpoint::{Endpoint, Event};

/// Lets the harness hand an application back as its concrete type. Implemented for every
/// `'static` type; applications never implement it themselves.
pub trait AsAny: Any {
    fn as_any_ref(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any_ref(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// What runs on a host: reacts to its endpoint's events and to its own timer, and drives
/// its endpoint (`connect`, `send`, `close`). Read results back with [`Simulation::app`].
pub trait Application: AsAny {
    /// Called once, at the first [`Simulation::run_until`] after the host was added.
    fn on_start(&mut self, _now: Instant, _ep: &mut Endpoint) {}
    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event);
    /// When the application next wants [`handle_timeout`](Self::handle_timeout).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant, _ep: &mut Endpoint) {}
    /// Not needed any more (the harness uses [`AsAny`]); kept so that applications written
    /// when it was required still compile.
    fn as_any(&self) -> &dyn Any {
        AsAny::as_any_ref(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// A run stops after this many steps even if virtual time has not reached the end, so a
/// bug that keeps time from advancing cannot hang a test or benchmark. (A 60 s run at
/// 20 Mbit/s takes a few million steps.)
pub const MAX_STEPS: u64 = 200_000_000;

/// Times one endpoint's (or application's) timeout may fire at one instant before it is
/// considered stale.
pub const MAX_FIRES_PER_INSTANT: u32 = 8;

/// How far a stale timeout is pushed: one microsecond, the resolution of the wire's
/// timestamps, so it changes nothing a protocol could observe but lets time advance.
pub const STALE_TIMEOUT_RETRY: Duration = Duration::from_micros(1);

/// Bound on transmit/event drain rounds after one input. An endpoint and application that
/// keep feeding each other past this are a bug worth a loud stop.
const MAX_FLUSH_ROUNDS: u32 = 1_000_000;

/// What a run did, for reports and for spotting a misbehaving endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulationStats {
    pub steps: u64,
    /// The last run stopped at the step limit before reaching its end.
    pub step_limit_hit: bool,
    pub datagrams_delivered: u64,
    pub datagrams_transmitted: u64,
    /// Datagrams that arrived for an address with no host (attached to the network only).
    pub datagrams_unclaimed: u64,
    pub endpoint_timeouts: u64,
    pub app_timeouts: u64,
    /// Timeouts that were still due after firing [`MAX_FIRES_PER_INSTANT`] times at one
    /// instant and were pushed by [`STALE_TIMEOUT_RETRY`]. Non-zero means a bug.
    pub deferred_timeouts: u64,
}

/// How often a timeout fired at the current instant.
#[derive(Debug, Clone, Copy, Default)]
struct Fires {
    at: Option<Instant>,
    count: u32,
}

impl Fires {
    fn exhausted(&self, now: Instant) -> bool {
        self.at == Some(now) && self.count >= MAX_FIRES_PER_INSTANT
    }
    fn record(&mut self, now: Instant) {
        if self.at != Some(now) {
            *self = Fires { at: Some(now), count: 0 };
        }
        self.count += 1;
    }
    /// The instant to schedule `deadline` at: itself, or a retry if it went stale.
    fn effective(&self, deadline: Option<Instant>, now: Instant) -> (Option<Instant>, bool) {
        match deadline {
            Some(t) if t <= now && self.exhausted(now) => (Some(now + STALE_TIMEOUT_RETRY), true),
            other => (other, false),
        }
    }
}

struct Host {
    addr: SocketAddr,
    side: Side,
    endpoint: Endpoint,
    app: Box<dyn Application>,
    started: bool,
    endpoint_fires: Fires,
    app_fires: Fires,
}

/// Hosts, each an [`Endpoint`] plus its [`Application`], on a [`VirtualNetwork`].
pub struct Simulation {
    network: VirtualNetwork,
    hosts: Vec<Host>,
    by_addr: BTreeMap<SocketAddr, usize>,
    epoch: Instant,
    now: Instant,
    /// Transmit buffer, as large as the largest `max_datagram_size` of any host.
    buf: Vec<u8>,
    max_steps: u64,
    stats: SimulationStats,
    /// Same as `stats.steps` / `stats.step_limit_hit`, kept as fields for older callers.
    pub steps: u64,
    pub step_limit_hit: bool,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("now", &self.now.saturating_duration_since(self.epoch))
            .field("hosts", &self.hosts.iter().map(|h| (h.addr, h.side)).collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Simulation {
    /// `epoch` is the run's start: the only real-clock reading, taken by the caller.
    pub fn new(network: VirtualNetwork, epoch: Instant) -> Self {
        Self {
            network,
            hosts: Vec::new(),
            by_addr: BTreeMap::new(),
            epoch,
            now: epoch,
            buf: Vec::new(),
            max_steps: MAX_STEPS,
            stats: SimulationStats::default(),
            steps: 0,
            step_limit_hit: false,
        }
    }

    /// Stop runs after `max_steps` steps in total (default [`MAX_STEPS`]).
    pub fn with_max_steps(mut self, max_steps: u64) -> Self {
        self.max_steps = max_steps;
        self
    }

    /// Add a host; its application starts at the next [`run_until`](Self::run_until).
    ///
    /// # Panics
    /// If `addr` already has a host (a scenario bug).
    pub fn add_host(
        &mut self,
        addr: SocketAddr,
        side: Side,
        endpoint: Endpoint,
        app: Box<dyn Application>,
    ) -> HostId {
        assert!(!self.by_addr.contains_key(&addr), "two hosts at {addr}");
        self.network.attach(addr, side);
        if self.buf.len() < endpoint.max_datagram_size() {
            self.buf.resize(endpoint.max_datagram_size(), 0);
        }
        let id = self.hosts.len();
        self.by_addr.insert(addr, id);
        self.hosts.push(Host {
            addr,
            side,
            endpoint,
            app,
            started: false,
            endpoint_fires: Fires::default(),
            app_fires: Fires::default(),
        });
        HostId(id)
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }
    pub fn now(&self) -> Instant {
        self.now
    }
    /// Virtual time since the epoch.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }
    pub fn stats(&self) -> SimulationStats {
        self.stats
    }
    pub fn network(&self) -> &VirtualNetwork {
        &self.network
    }
    /// For changes between runs (e.g. a probe). Sending through it bypasses the hosts.
    pub fn network_mut(&mut self) -> &mut VirtualNetwork {
        &mut self.network
    }
    pub fn hosts(&self) -> impl Iterator<Item = (HostId, SocketAddr, Side)> + '_ {
        self.hosts.iter().enumerate().map(|(i, h)| (HostId(i), h.addr, h.side))
    }
    pub fn addr(&self, h: HostId) -> SocketAddr {
        self.hosts[h.0].addr
    }
    pub fn endpoint(&self, h: HostId) -> &Endpoint {
        &self.hosts[h.0].endpoint
    }
    /// Calls made through this between runs take effect at [`now`](Self::now); their
    /// datagrams go out at the start of the next run.
    pub fn endpoint_mut(&mut self, h: HostId) -> &mut Endpoint {
        &mut self.hosts[h.0].endpoint
    }

    /// The host's application as its concrete type, or `None` if it is another type.
    pub fn app<T: 'static>(&self, h: HostId) -> Option<&T> {
        // Through `&dyn Application`: calling on the `Box` would pick `AsAny` for the Box.
        let app: &dyn Application = self.hosts.get(h.0)?.app.as_ref();
        AsAny::as_any_ref(app).downcast_ref::<T>()
    }
    pub fn app_mut<T: 'static>(&mut self, h: HostId) -> Option<&mut T> {
        let app: &mut dyn Application = self.hosts.get_mut(h.0)?.app.as_mut();
        AsAny::as_any_mut(app).downcast_mut::<T>()
    }

    /// Advance virtual time to `end`, processing everything due on the way. Returns early
    /// only at the step limit ([`SimulationStats::step_limit_hit`]).
    pub fn run_until(&mut self, end: Instant) {
        self.stats.step_limit_hit = false;
        let now = self.now;
        for i in 0..self.hosts.len() {
            if !self.hosts[i].started {
                let host = &mut self.hosts[i];
                host.started = true;
                host.app.on_start(now, &mut host.endpoint);
            }
            // Also sends what calls through `endpoint_mut` queued between runs.
            self.flush(i);
        }
        loop {
            let next = self.next_step();
            let Some(next) = next.filter(|&t| t <= end) else {
                self.now = self.now.max(end);
                self.network.advance_to(self.now);
                break;
            };
            if self.stats.steps >= self.max_steps {
                self.stats.step_limit_hit = true;
                tracing::warn!(steps = self.stats.steps, at = ?self.elapsed(), "simulation step limit hit");
                self.network.advance_to(self.now);
                break;
            }
            self.stats.steps += 1;
            self.now = self.now.max(next);
            self.deliver_due();
            for i in 0..self.hosts.len() {
                self.fire_timeouts(i);
            }
        }
        self.steps = self.stats.steps;
        self.step_limit_hit = self.stats.step_limit_hit;
    }

    /// The earliest pending instant over the network, endpoints and applications.
    fn next_step(&mut self) -> Option<Instant> {
        let now = self.now;
        let mut next = self.network.next_event_time();
        for host in &self.hosts {
            let (ep, ep_stale) = host.endpoint_fires.effective(host.endpoint.poll_timeout(), now);
            let (app, app_stale) = host.app_fires.effective(host.app.poll_timeout(), now);
            self.stats.deferred_timeouts += u64::from(ep_stale) + u64::from(app_stale);
            next = [next, ep, app].into_iter().flatten().min();
        }
        next
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        while let Some(mut d) = self.network.poll_delivery(now) {
            let Some(&i) = self.by_addr.get(&d.to) else {
                self.stats.datagrams_unclaimed += 1;
                continue;
            };
            self.stats.datagrams_delivered += 1;
            self.hosts[i].endpoint.handle_datagram(now, d.from, &mut d.data);
            self.flush(i);
        }
    }

    fn fire_timeouts(&mut self, i: usize) {
        let now = self.now;
        let host = &mut self.hosts[i];
        if host.endpoint.poll_timeout().is_some_and(|t| t <= now) && !host.endpoint_fires.exhausted(now) {
            host.endpoint_fires.record(now);
            host.endpoint.handle_timeout(now);
            self.stats.endpoint_timeouts += 1;
            self.flush(i);
        }
        let host = &mut self.hosts[i];
        if host.app.poll_timeout().is_some_and(|t| t <= now) && !host.app_fires.exhausted(now) {
            host.app_fires.record(now);
            host.app.handle_timeout(now, &mut host.endpoint);
            self.stats.app_timeouts += 1;
            self.flush(i);
        }
    }

    /// Drain a host's datagrams into the network and its events into its application,
    /// until neither produces more (an application may send in reaction to an event).
    fn flush(&mut self, i: usize) {
        let now = self.now;
        let host = &mut self.hosts[i];
        for _ in 0..MAX_FLUSH_ROUNDS {
            let mut progressed = false;
            while let Some(t) = host.endpoint.poll_transmit(now, &mut self.buf) {
                self.network.send(now, host.addr, t.destination, &self.buf[..t.size]);
                self.stats.datagrams_transmitted += 1;
                progressed = true;
            }
            while let Some(e) = host.endpoint.poll_event() {
                host.app.on_event(now, &mut host.endpoint, e);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
        panic!("host {}: transmit/event drain did not settle after {MAX_FLUSH_ROUNDS} rounds", host.addr);
    }
}

#[cfg(test)]
mod tests;
