//! Runs several [`Endpoint`]s and their applications over a [`VirtualNetwork`] in virtual
//! time, deterministically: same seeds and inputs, same run.

use std::any::Any;
use std::net::SocketAddr;
use std::time::Instant;

use super::link::{Side, VirtualNetwork};
use crate::endpoint::{Endpoint, Event};

/// What runs on a host: reacts to events and to its own timer, and drives its endpoint.
pub trait Application: Any {
    fn on_start(&mut self, _now: Instant, _ep: &mut Endpoint) {}
    fn on_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event);
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant, _ep: &mut Endpoint) {}
    /// For reading results back (`Simulation::app`).
    fn as_any(&self) -> &dyn Any;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostId(pub usize);

struct Host {
    addr: SocketAddr,
    endpoint: Endpoint,
    app: Box<dyn Application>,
    started: bool,
}

/// A run stops after this many steps even if virtual time has not reached the end, so a
/// bug that stops time from advancing cannot hang a test or benchmark.
pub const MAX_STEPS: u64 = 200_000_000;

pub struct Simulation {
    network: VirtualNetwork,
    hosts: Vec<Host>,
    now: Instant,
    buf: Vec<u8>,
    /// Steps taken; and whether a run was cut short by [`MAX_STEPS`].
    pub steps: u64,
    pub step_limit_hit: bool,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation").field("now", &self.now).field("hosts", &self.hosts.len()).finish()
    }
}

impl Simulation {
    pub fn new(network: VirtualNetwork, epoch: Instant) -> Self {
        Self { network, hosts: Vec::new(), now: epoch, buf: vec![0; 65_536], steps: 0, step_limit_hit: false }
    }

    pub fn add_host(
        &mut self,
        addr: SocketAddr,
        side: Side,
        endpoint: Endpoint,
        app: Box<dyn Application>,
    ) -> HostId {
        self.network.attach(addr, side);
        self.hosts.push(Host { addr, endpoint, app, started: false });
        HostId(self.hosts.len() - 1)
    }

    pub fn now(&self) -> Instant {
        self.now
    }
    pub fn network(&self) -> &VirtualNetwork {
        &self.network
    }
    pub fn endpoint(&self, h: HostId) -> &Endpoint {
        &self.hosts[h.0].endpoint
    }
    pub fn endpoint_mut(&mut self, h: HostId) -> &mut Endpoint {
        &mut self.hosts[h.0].endpoint
    }
    pub fn app<T: 'static>(&self, h: HostId) -> Option<&T> {
        self.hosts.get(h.0)?.app.as_any().downcast_ref::<T>()
    }

    /// Drain a host's datagrams into the network and its events into its application,
    /// until neither produces more (an application may send in reaction to an event).
    fn flush(&mut self, i: usize) {
        let now = self.now;
        loop {
            let host = &mut self.hosts[i];
            let mut progressed = false;
            while let Some(t) = host.endpoint.poll_transmit(now, &mut self.buf) {
                self.network.send(now, host.addr, t.destination, &self.buf[..t.size]);
                progressed = true;
            }
            while let Some(e) = host.endpoint.poll_event() {
                host.app.on_event(now, &mut host.endpoint, e);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    /// Advance virtual time to `end`, processing everything due on the way.
    pub fn run_until(&mut self, end: Instant) {
        for i in 0..self.hosts.len() {
            if !self.hosts[i].started {
                let host = &mut self.hosts[i];
                host.started = true;
                host.app.on_start(self.now, &mut host.endpoint);
                self.flush(i);
            }
        }
        loop {
            let next = self
                .hosts
                .iter()
                .flat_map(|h| [h.endpoint.poll_timeout(), h.app.poll_timeout()])
                .chain([self.network.next_event_time()])
                .flatten()
                .min();
            let Some(next) = next.filter(|&t| t <= end) else {
                self.now = self.now.max(end);
                return;
            };
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.step_limit_hit = true;
                return;
            }
            // Time only moves forward; a timeout in the past is simply due now.
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(d) = self.network.poll_delivery(now) {
                if let Some(i) = self.hosts.iter().position(|h| h.addr == d.to) {
                    self.hosts[i].endpoint.handle_datagram(now, d.from, &d.data);
                    self.flush(i);
                }
            }
            for i in 0..self.hosts.len() {
                let host = &mut self.hosts[i];
                if host.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                    host.endpoint.handle_timeout(now);
                }
                if host.app.poll_timeout().is_some_and(|t| t <= now) {
                    host.app.handle_timeout(now, &mut host.endpoint);
                }
                self.flush(i);
            }
        }
    }
}
