//! `rill testbed transport` (in progress).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct TransportArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &TransportArgs) -> Result<ExitCode> {
    super::netns::require_root()?;
    anyhow::bail!("rill testbed transport: not built yet")
}
