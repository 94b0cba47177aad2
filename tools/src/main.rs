//! `rill`: the command line of the rill live-streaming system.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod node_key;
mod sim;
mod table;

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
    /// Simulate a whole swarm of real nodes on a virtual network, deterministically, and
    /// print its figures (names from shared/METRICS.md).
    Sim(sim::SimArgs),
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rill: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
