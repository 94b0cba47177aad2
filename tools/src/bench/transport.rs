//! `rill bench transport`.
use super::TransportArgs;

pub fn run(_args: &TransportArgs) -> anyhow::Result<()> {
    anyhow::bail!("being built")
}
