//! `rill testbed`: real processes on a real (emulated) network, built from network
//! namespaces, veth pairs, kernel qdiscs and a userspace delay/loss forwarder on this
//! machine. Needs root; removes everything it created, also on Ctrl-C and on failure.
//!
//! - [`netns`]: the [`netns::Testbed`] guard: hosts, links, NAT, processes, cleanup.
//! - [`impair`]: the forwarder that adds delay, jitter and loss (this kernel has no netem).
//! - [`transport`]: `rill testbed transport`, rill vs kernel TCP on one bottleneck.
//! - [`check`]: `rill testbed check`, the short CI run: up, traffic, down, nothing left.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

pub mod check;
pub mod flows;
pub mod impair;
pub mod netns;
pub mod probe;
pub mod tools;
pub mod transport;

#[derive(Debug, Args)]
pub struct TestbedArgs {
    #[command(subcommand)]
    pub what: TestbedCommand,
}

#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// rill vs kernel TCP (CUBIC, BBR via iperf3) through one 20 Mbit/s bottleneck:
    /// standing queue, utilisation, goodput; and a stream + background sharing run.
    Transport(transport::TransportArgs),
    /// A short self-test for CI: bring a topology up, pass traffic both ways (ping, a rill
    /// session, through a NAT too), take it down and check nothing is left.
    Check(check::CheckArgs),
}

pub fn run(args: &TestbedArgs) -> Result<ExitCode> {
    match &args.what {
        TestbedCommand::Transport(a) => transport::run(a),
        TestbedCommand::Check(a) => check::run(a),
    }
}
