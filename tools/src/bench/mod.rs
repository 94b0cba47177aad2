//! `rill bench`: benchmarks that print figures named as in shared/METRICS.md.

use std::net::SocketAddr;

use clap::{Args, Subcommand, ValueEnum};

mod relay;
mod transport;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The transport alone: real UDP on loopback, a virtual bottleneck, competing flows,
    /// or two processes across a real path (--listen on one side, --connect on the other).
    Transport(TransportArgs),
    /// A relay forwarding a stream to many viewers over real UDP on loopback: CPU per
    /// gigabit forwarded (cpu_per_gbit) and the viewers' arrival lag.
    Relay(relay::RelayArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Real UDP on 127.0.0.1: one bulk session, goodput and CPU.
    Loopback,
    /// Virtual 20 Mbit/s link, 1 s of buffer, 20 ms one-way: standing queue per controller.
    Bottleneck,
    /// Virtual 20 Mbit/s link, 250 ms of buffer: stream + background vs a loss-based flow.
    Competing,
    /// The driver's socket batch layer alone (no endpoint): datagrams/s and CPU per
    /// datagram for each send and receive path. Not part of `all`.
    BatchIo,
    /// Loopback, bottleneck and competing.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClassArg {
    Stream,
    Background,
}

#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Which scenario to run (default: all, unless --listen/--connect is given).
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// One JSON object per line instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds to run: real seconds for loopback/remote (default 3 / 10), virtual seconds
    /// for bottleneck/competing (default 60).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seed for the virtual link.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Remote mode, server side: receive sessions on this address and report per second.
    #[arg(long, conflicts_with_all = ["connect", "scenario"])]
    pub listen: Option<SocketAddr>,
    /// Remote mode, client side: send to a `--listen` peer at this address.
    #[arg(long, conflicts_with = "scenario")]
    pub connect: Option<SocketAddr>,
    /// Remote mode: offered rate in kbit/s (default: as fast as the controller allows).
    #[arg(long, requires = "connect")]
    pub rate: Option<u64>,
    /// Remote mode: this node's key file (created with mode 0600 if missing). Default for
    /// --listen: $XDG_CONFIG_HOME/rill/node.key; for --connect: a throwaway key.
    #[arg(long, value_name = "FILE")]
    pub node_key: Option<std::path::PathBuf>,
    /// Remote mode, client side: the listener's node id (printed by --listen). With it the
    /// handshake is Noise IK (one round trip, and only that node can answer); without, XX.
    #[arg(long, value_name = "NODE_ID", requires = "connect")]
    pub peer: Option<rill_transport::crypto::identity::NodeId>,
    /// Remote mode: traffic class of the sent messages.
    #[arg(long, value_enum, default_value = "background", requires = "connect")]
    pub class: ClassArg,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Transport(args) => transport::run(&args),
        BenchCommand::Relay(args) => relay::run(&args),
    }
}
