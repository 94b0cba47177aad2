//! `rill`: the command line of the rill live-streaming system.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rill_tools::{bench, live, sim, testbed};

#[derive(Debug, Parser)]
#[command(name = "rill", version, about = "Peer-to-peer live streaming with the least delay physics allows")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure rill's parts and print figures (names from shared/METRICS.md).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Create a channel key (Ed25519, file mode 0600) and print the channel id.
    Keygen(live::keygen::KeygenArgs),
    /// Publish a live channel from MPEG-TS (stdin, a file, udp://); prints the channel link.
    Publish(live::publish::PublishArgs),
    /// Watch a channel: write its MPEG-TS to stdout, a file, udp://, or serve it over HTTP.
    Watch(live::watch::WatchArgs),
    /// Run a headless relay node for a channel, with Prometheus metrics.
    Relay(live::relay::RelayArgs),
    /// A publisher, relays and viewers on this machine over real UDP, with a live table;
    /// one viewer serves the stream over HTTP for a player.
    Demo(live::demo::DemoArgs),
    /// Simulate a whole swarm of real nodes on a virtual network, deterministically, and
    /// print its figures (names from shared/METRICS.md).
    Sim(sim::SimArgs),
    /// Real processes on an emulated network of namespaces, veths, qdiscs and a delay/loss
    /// forwarder on this machine (root): transport and swarm benchmarks, a CI check.
    Testbed(testbed::TestbedArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`rill ... | head`), as command-line tools do, instead
    // of panicking inside println!.
    #[cfg(unix)]
    // SAFETY: resetting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
    // clap exits with status 2 and a one-line usage error for bad flags.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench { what } => bench::run(what).map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => sim::run(&args),
        Command::Testbed(args) => testbed::run(&args),
        Command::Keygen(args) => live::keygen::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Publish(args) => live::publish::run(&args),
        Command::Watch(args) => live::watch::run(&args),
        Command::Relay(args) => live::relay::run(&args),
        Command::Demo(args) => live::demo::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rill: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
