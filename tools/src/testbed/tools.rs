//! The system programs a testbed runs, and installing the missing ones.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A program and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const IP: Tool = Tool { program: "ip", package: "iproute2" };
pub const TC: Tool = Tool { program: "tc", package: "iproute2" };
pub const ETHTOOL: Tool = Tool { program: "ethtool", package: "ethtool" };
pub const NFT: Tool = Tool { program: "nft", package: "nftables" };
pub const PING: Tool = Tool { program: "ping", package: "iputils-ping" };
pub const IPERF3: Tool = Tool { program: "iperf3", package: "iperf3" };

fn present(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Install the packages of missing `tools` with apt-get (saying so on stderr), or fail
/// with one line naming them.
pub fn ensure(tools: &[Tool]) -> Result<()> {
    let mut missing: Vec<&str> = tools.iter().filter(|t| !present(t.program)).map(|t| t.package).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !present("apt-get") {
        bail!("rill testbed needs {list}; install it with your package manager");
    }
    eprintln!("rill testbed: installing {list} (apt-get)");
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).stdout(Stdio::null());
    };
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    quiet(&mut update);
    let _ = update.status();
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-qq"]).args(&missing);
    quiet(&mut install);
    let status = install.status().context("running apt-get")?;
    if !status.success() || tools.iter().any(|t| !present(t.program)) {
        bail!("rill testbed needs {list} and `apt-get install {list}` failed; install it and retry");
    }
    Ok(())
}
