//! `rill testbed`: real processes on a real (emulated) network, built from network
//! namespaces, veth pairs, kernel qdiscs and a userspace delay/loss forwarder on this
//! machine. Needs root; removes everything it created, also on Ctrl-C and on failure.
//!
//! - [`netns`]: the [`netns::Testbed`] guard: hosts, links, NAT, processes, cleanup.
//! - [`impair`]: the forwarder that adds delay, jitter and loss (this kernel has no netem).
//! - [`transport`]: `rill testbed transport`, rill vs kernel TCP on one bottleneck.
//! - [`swarm`]: `rill testbed swarm`, a publisher and N viewers as real processes;
//!   [`swarm_stats`] makes its figures from their stats files.
//! - [`report`]: `rill testbed report`, every benchmark into BENCHMARKS.md.
//! - [`check`]: `rill testbed check`, the short CI run: up, traffic, down, nothing left.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

pub mod check;
pub mod flows;
pub mod impair;
pub mod netns;
pub mod probe;
pub mod report;
pub mod swarm;
pub mod swarm_stats;
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
    /// A publisher and N viewers (real `rill` processes, a namespace each, uploads of
    /// 1.5–5× the stream, 10–50 ms paths): arrival lag, startup, continuity, overhead,
    /// CPU; with churn, with NAT.
    Swarm(swarm::SwarmArgs),
    /// Run the testbed benchmarks and write BENCHMARKS.md (command, commit and machine
    /// with every table).
    Report(report::ReportArgs),
}

pub fn run(args: &TestbedArgs) -> Result<ExitCode> {
    match &args.what {
        TestbedCommand::Transport(a) => transport::run(a),
        TestbedCommand::Check(a) => check::run(a),
        TestbedCommand::Swarm(a) => swarm::run(a),
        TestbedCommand::Report(a) => report::run(a),
    }
}
