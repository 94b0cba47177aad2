//! The channel key on disk (`rill keygen --out FILE`, `rill publish --key FILE`), and the
//! pre-shared key of a private channel derived from it.
//!
//! The file format and its checks (mode 0600, one key, strict base32) are the node key's
//! (`KeyFileKind`), with its own header so a node key is never taken for a channel key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rill_swarm::chunk::ChannelKey;
use rill_transport::crypto::handshake::PSK_LEN;
use rill_transport::crypto::identity::KeyFileKind;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The channel signing key file.
pub const CHANNEL_KEY_FILE: KeyFileKind =
    KeyFileKind { header: "rill-channel-key-v1 ", what: "rill channel key (made by `rill keygen`)" };

/// Domain separation for the private-channel psk: HMAC-SHA256 keyed by the channel's
/// secret over this label (RFC 2104; as HKDF-Expand with one block, RFC 5869 §2.3). The psk
/// is stable for the life of the key, so a private link stays valid across restarts,
/// and it reveals nothing about the signing key.
const PSK_LABEL: &[u8] = b"rill private channel psk v1";

/// Create a new channel key at `path` (never replacing an existing file).
pub fn generate(path: &Path) -> Result<ChannelKey> {
    if path.exists() {
        bail!("{} already exists; refusing to overwrite a key (choose another --out)", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("cannot create {}: directory {} does not exist", path.display(), dir.display());
        }
    }
    let rng = SystemRandom::new();
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill(&mut secret[..])
        .map_err(|_| anyhow::anyhow!("the operating system random number generator failed"))?;
    CHANNEL_KEY_FILE
        .create(path, &secret, &rng)
        .with_context(|| format!("cannot create channel key file {}", path.display()))?;
    Ok(ChannelKey::from_bytes(*secret))
}

/// Load the channel key at `path`.
pub fn load(path: &Path) -> Result<ChannelKey> {
    let secret = CHANNEL_KEY_FILE.load(path)?;
    Ok(ChannelKey::from_bytes(*secret))
}

/// The pre-shared key of the private channel published with `key`.
pub fn private_psk(key: &ChannelKey) -> [u8; PSK_LEN] {
    let secret = Zeroizing::new(key.to_bytes());
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret[..]), PSK_LABEL);
    let mut psk = [0u8; PSK_LEN];
    psk.copy_from_slice(tag.as_ref());
    psk
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rill-channel-key-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keygen_writes_a_private_file_that_loads_back_and_is_never_overwritten() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("channel.key");
        let key = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().channel_id(), key.channel_id());
        let err = generate(&path).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(load(&path).unwrap().channel_id(), key.channel_id());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_key_files_get_clear_errors() {
        let dir = temp_dir("bad");
        let missing = load(&dir.join("nope.key")).unwrap_err().to_string();
        assert!(missing.contains("does not exist"), "{missing}");
        // A node key is not a channel key.
        let node = dir.join("node.key");
        rill_transport::crypto::identity::NodeKey::load_or_create(&node).unwrap();
        let err = load(&node).unwrap_err().to_string();
        assert!(err.contains("rill channel key"), "{err}");
        let open = dir.join("open.key");
        generate(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&open).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let err = generate(&dir.join("no-such-dir").join("k")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_private_psk_is_stable_and_differs_per_channel() {
        let a = ChannelKey::from_bytes([1; 32]);
        let b = ChannelKey::from_bytes([2; 32]);
        assert_eq!(private_psk(&a), private_psk(&ChannelKey::from_bytes([1; 32])));
        assert_ne!(private_psk(&a), private_psk(&b));
        assert_ne!(private_psk(&a), a.to_bytes());
    }
}
