//! `rill testbed check` (in progress).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &CheckArgs) -> Result<ExitCode> {
    super::netns::require_root()?;
    anyhow::bail!("rill testbed check: not built yet")
}
