//! `rill keygen --out FILE`: a new channel key (Ed25519), file mode 0600; prints the
//! channel id.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::channel_key;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (created with mode 0600; an existing file is never replaced).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: &KeygenArgs) -> Result<()> {
    let key = channel_key::generate(&args.out)?;
    eprintln!("rill: channel key written to {} (keep it secret: it signs the stream)", args.out.display());
    println!("{}", key.channel_id());
    Ok(())
}
