//! The node's identity key on disk: `--node-key FILE`, or a default file created on first
//! start, so that a node keeps its id (and links that name it stay valid) across restarts.
//! Secret keys are only ever read from files (mode 0600), never from the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rill_transport::crypto::identity::NodeKey;

/// `$XDG_CONFIG_HOME/rill/node.key`, else `$HOME/.config/rill/node.key`.
pub fn default_path() -> Option<PathBuf> {
    let base =
        std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("rill").join("node.key"))
}

/// Load the key at `path` (or the default path), creating it on first start. Says on
/// stderr which id this node has and where its key lives.
pub fn load_or_create(path: Option<&Path>) -> Result<Arc<NodeKey>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => default_path().context("no --node-key given and neither XDG_CONFIG_HOME nor HOME is set")?,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (key, created) = NodeKey::load_or_create(&path)?;
    let what = if created { "created" } else { "loaded" };
    eprintln!("rill: node id {} ({what} {})", key.id(), path.display());
    Ok(Arc::new(key))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
