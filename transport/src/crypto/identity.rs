//! Node identity: a static X25519 key pair whose public key is the node's id.
//!
//! A node proves its id in the Noise handshake by using the static secret, so the id cannot be
//! claimed by anyone without the key file. The text form of an id is lowercase base32 (RFC 4648
//! §6) without padding: 52 characters for 32 bytes, which fits in a URI and in a single DNS label
//! (at most 63 octets, RFC 1035 §2.3.4), and contains no characters that need escaping.
//!
//! The key file is one line of text, `rill-node-key-v1 <base32 secret>\n`, so that a person who
//! finds it can tell what it is. Like OpenSSH does for private keys, a key file that group or
//! others may access is refused rather than silently used.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand_core::{CryptoRng, RngCore};
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// Length of a node id: an X25519 public key is 32 bytes (RFC 7748 §5).
pub const NODE_ID_LEN: usize = 32;

/// Length of an X25519 secret key (RFC 7748 §5).
const SECRET_LEN: usize = 32;

/// Characters in the text form of 32 bytes: ceil(32 * 8 / 5) = 52 (RFC 4648 §6, no padding).
pub const NODE_ID_TEXT_LEN: usize = (NODE_ID_LEN * 8).div_ceil(5);

/// Characters the debug form shows: 8 characters are 40 bits, enough to tell ids apart in logs
/// without filling the line.
const NODE_ID_DEBUG_LEN: usize = 8;

/// RFC 4648 §6 base32 alphabet, lowercased. The RFC table is upper case; we pick lower case
/// because ids appear in URIs and host-like contexts where lower case is conventional.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A kind of file holding one 32-byte secret key: `<header><base32 key>\n`, mode 0600. The
/// header's version lets a later format be told apart.
/// Node keys and channel keys (`rill keygen`) share the format and its checks, and differ
/// in the header, so one kind of key is never loaded as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFileKind {
    /// First bytes of the file, including the separating space, e.g. `rill-node-key-v1 `.
    pub header: &'static str,
    /// What the file holds, for error messages ("rill node key").
    pub what: &'static str,
}

/// The node identity key file (`--node-key`).
pub const NODE_KEY_FILE: KeyFileKind = KeyFileKind { header: "rill-node-key-v1 ", what: "rill node key" };

/// Upper bound on bytes read from a key file: a valid file is 17 + 52 + 1 = 70 bytes, so
/// anything much larger is not a key file and reading it whole would be pointless.
const KEY_FILE_MAX_LEN: u64 = 1024;

/// Unix permission bits for group and others (POSIX `S_IRWXG | S_IRWXO`).
const GROUP_OTHER_BITS: u32 = 0o077;

/// Owner read/write only (POSIX `S_IRUSR | S_IWUSR`), as OpenSSH requires for private keys.
const KEY_FILE_MODE: u32 = 0o600;

/// Why a base32 string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Base32Error {
    /// A byte outside the alphabet `a-z2-7`. Only the offending byte is reported, never the
    /// surrounding text, because in a key file that text is the secret.
    #[error("invalid character {} at position {position} (expected a-z or 2-7)", show_byte(*byte))]
    InvalidCharacter {
        /// Byte offset from the start of the base32 text.
        position: usize,
        /// The offending byte.
        byte: u8,
    },
    /// The last character carries bits past the end of the data that are not zero, so the text
    /// is not the canonical encoding of any byte string (RFC 4648 §3.5).
    #[error("non-canonical encoding: the unused trailing bits of the last character are not zero")]
    NonCanonical,
}

fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", byte as char)
    } else {
        format!("byte 0x{byte:02x}")
    }
}

/// Errors parsing node ids and loading or creating key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A node id text of the wrong length.
    #[error("node id must be {NODE_ID_TEXT_LEN} base32 characters, got {0}")]
    IdLength(usize),
    /// A node id text with a character outside `a-z2-7`.
    #[error("invalid character {character:?} at position {position} of node id (expected a-z or 2-7)")]
    IdCharacter {
        /// Character offset of the first bad character.
        position: usize,
        /// The bad character.
        character: char,
    },
    /// A node id text whose last character has nonzero padding bits.
    #[error("node id is not canonical: the unused trailing bits of its last character are not zero")]
    IdNonCanonical,
    /// `load` found no file at the path.
    #[error("key file {} does not exist", path.display())]
    KeyFileMissing {
        /// The key file path.
        path: PathBuf,
    },
    /// The file exists but could not be opened or read, or is not a regular file.
    #[error("cannot read key file {}: {source}", path.display())]
    KeyFileUnreadable {
        /// The key file path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Group or others have some access to the key file.
    #[error(
        "key file {} is accessible by group or others (mode {mode:04o}); it holds a secret key: \
         run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions {
        /// The key file path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than any key file.
    #[error("key file {} is larger than {KEY_FILE_MAX_LEN} bytes; it is not a {}", path.display(), kind.what)]
    KeyFileTooLarge {
        /// The key file path.
        path: PathBuf,
        /// The kind of key expected.
        kind: KeyFileKind,
    },
    /// The file does not start with the expected header.
    #[error("key file {} is not a {} (it must start with `{}`)", path.display(), kind.what, kind.header)]
    KeyFileHeader {
        /// The key file path.
        path: PathBuf,
        /// The kind of key expected.
        kind: KeyFileKind,
    },
    /// The key text after the header is not valid base32.
    #[error("key file {} holds an invalid key: {reason}", path.display())]
    KeyFileBase32 {
        /// The key file path.
        path: PathBuf,
        /// What is wrong with the encoding.
        reason: Base32Error,
    },
    /// The key text is valid base32 of the wrong length.
    #[error(
        "key file {} holds {found} key characters, expected {NODE_ID_TEXT_LEN} (a 32-byte key)",
        path.display()
    )]
    KeyFileLength {
        /// The key file path.
        path: PathBuf,
        /// Number of key characters found.
        found: usize,
    },
    /// Creating the key file failed.
    #[error("cannot create key file {}: {source}", path.display())]
    KeyFileCreate {
        /// The key file path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The operating system random number generator failed.
    #[error("the operating system random number generator failed")]
    Rng,
}

/// A node's public key, which is its identity on the network.
///
/// Text form (`Display`/`FromStr`): lowercase RFC 4648 base32 without padding, 52 characters.
/// Parsing is strict (lower case only, canonical trailing bits), so each id has exactly one text
/// form and ids may be compared as strings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; NODE_ID_LEN]);

impl NodeId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = encode32(&self.0);
        // Always valid UTF-8: every byte comes from ALPHABET.
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = encode32(&self.0);
        let short = std::str::from_utf8(&text[..NODE_ID_DEBUG_LEN]).unwrap_or_default();
        write!(f, "NodeId({short})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars = s.chars().count();
        if chars != NODE_ID_TEXT_LEN {
            return Err(IdentityError::IdLength(chars));
        }
        match decode32(s.as_bytes()) {
            Ok(bytes) => Ok(NodeId(bytes)),
            Err(Decode32Error::Length(n)) => Err(IdentityError::IdLength(n)),
            Err(Decode32Error::Base32(Base32Error::InvalidCharacter { position, .. })) => {
                // Every byte before `position` is an ASCII alphabet character, so `position` is
                // both a char boundary and the character index.
                let character = s.get(position..).and_then(|rest| rest.chars().next()).unwrap_or('?');
                Err(IdentityError::IdCharacter { position, character })
            }
            Err(Decode32Error::Base32(Base32Error::NonCanonical)) => Err(IdentityError::IdNonCanonical),
        }
    }
}

/// Encodes 32 bytes as 52 base32 characters (RFC 4648 §6, no padding). The output may be a
/// secret (key files), so callers that keep it wrap it in `Zeroizing`.
fn encode32(bytes: &[u8; 32]) -> [u8; NODE_ID_TEXT_LEN] {
    let mut out = [0u8; NODE_ID_TEXT_LEN];
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut i = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out[i] = ALPHABET[((acc >> bits) & 31) as usize];
            i += 1;
        }
        // Keep only the bits not yet emitted so `acc` never overflows.
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        // Pad the final group with zero bits (RFC 4648 §6: "padded with zero bits").
        out[i] = ALPHABET[((acc << (5 - bits)) & 31) as usize];
    }
    // The accumulator held secret bits when encoding a key.
    acc.zeroize();
    out
}

fn alphabet_index(c: u8) -> Option<u32> {
    match c {
        b'a'..=b'z' => Some(u32::from(c - b'a')),
        b'2'..=b'7' => Some(u32::from(c - b'2') + 26),
        _ => None,
    }
}

enum Decode32Error {
    /// Valid characters, but not 52 of them.
    Length(usize),
    Base32(Base32Error),
}

/// Decodes exactly 52 base32 characters into 32 bytes. Checks the characters first, then the
/// length, then that the 4 unused trailing bits are zero (so the encoding is canonical).
fn decode32(text: &[u8]) -> Result<[u8; 32], Decode32Error> {
    if let Some((position, &byte)) = text.iter().enumerate().find(|(_, &c)| alphabet_index(c).is_none()) {
        return Err(Decode32Error::Base32(Base32Error::InvalidCharacter { position, byte }));
    }
    if text.len() != NODE_ID_TEXT_LEN {
        return Err(Decode32Error::Length(text.len()));
    }
    let mut out = [0u8; 32];
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut i = 0;
    for &c in text {
        acc = (acc << 5) | alphabet_index(c).unwrap_or(0);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            if let Some(slot) = out.get_mut(i) {
                *slot = (acc >> bits) as u8;
            }
            i += 1;
        }
        acc &= (1 << bits) - 1;
    }
    // 52 * 5 = 260 bits = 32 bytes + 4 bits; those 4 must be zero (RFC 4648 §3.5).
    let canonical = acc == 0;
    acc.zeroize();
    if !canonical {
        out.zeroize();
        return Err(Decode32Error::Base32(Base32Error::NonCanonical));
    }
    Ok(out)
}

/// A node's static X25519 key pair.
///
/// The secret is zeroized when the key is dropped (x25519-dalek's `zeroize` feature), and
/// `Debug` shows only the public id.
pub struct NodeKey {
    secret: StaticSecret,
    id: NodeId,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

impl NodeKey {
    /// A fresh key from `rng`. The secret bytes are stored as drawn; X25519 clamps them at every
    /// use (RFC 7748 §5 `decodeScalar25519`), as does the Noise handshake's DH.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self::from_secret(StaticSecret::random_from_rng(rng))
    }

    /// The key pair for a given secret (unclamped or clamped: both give the same key pair).
    pub fn from_secret_bytes(secret: [u8; SECRET_LEN]) -> Self {
        Self::from_secret(StaticSecret::from(secret))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let id = NodeId(PublicKey::from(&secret).to_bytes());
        NodeKey { secret, id }
    }

    /// The secret, for the Noise handshake builder. Do not log or copy it further.
    pub fn secret_bytes(&self) -> &[u8; SECRET_LEN] {
        self.secret.as_bytes()
    }

    /// This node's id (its public key). Computed once at construction.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Loads the key file at `path`, or creates it with a fresh secret from the OS RNG if it does
    /// not exist. Returns the key and whether it was created.
    ///
    /// Creation is atomic and never replaces an existing file: the key is written to a temporary
    /// file in the same directory (created with `O_EXCL`, mode 0600), fsynced, then hard-linked
    /// to `path` (`link(2)` fails with `EEXIST` instead of replacing, unlike `rename(2)`). If
    /// another process creates the file first, its key is loaded instead. The parent directory
    /// must exist.
    pub fn load_or_create(path: &Path) -> Result<(NodeKey, bool), IdentityError> {
        match Self::load(path) {
            Ok(key) => return Ok((key, false)),
            Err(IdentityError::KeyFileMissing { .. }) => {}
            Err(e) => return Err(e),
        }
        let rng = SystemRandom::new();
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill(&mut secret[..]).map_err(|_| IdentityError::Rng)?;
        let key = Self::from_secret_bytes(*secret);
        let create_err = |source| IdentityError::KeyFileCreate { path: path.to_path_buf(), source };
        match NODE_KEY_FILE.create(path, key.secret_bytes(), &rng) {
            Ok(()) => Ok((key, true)),
            // Lost a race with another process creating the same file: use its key so both
            // agree on one identity.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path).map(|k| (k, false)),
            Err(e) => Err(create_err(e)),
        }
    }

    /// Loads the key file at `path`. Refuses files that group or others can access.
    pub fn load(path: &Path) -> Result<NodeKey, IdentityError> {
        NODE_KEY_FILE.load(path).map(|secret| Self::from_secret_bytes(*secret))
    }
}

impl KeyFileKind {
    /// Reads the secret from the file at `path`. Refuses files that group or others can
    /// access, that are not regular files, or that do not hold exactly one key of this kind.
    pub fn load(&self, path: &Path) -> Result<Zeroizing<[u8; SECRET_LEN]>, IdentityError> {
        let p = || path.to_path_buf();
        let unreadable = |source| IdentityError::KeyFileUnreadable { path: p(), source };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::KeyFileMissing { path: p() })
            }
            Err(e) => return Err(unreadable(e)),
        };
        // Check the opened file, not the path, so the checks and the read see the same file.
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(unreadable(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & GROUP_OTHER_BITS != 0 {
            return Err(IdentityError::KeyFilePermissions { path: p(), mode });
        }
        let mut content = Zeroizing::new(Vec::with_capacity(128));
        file.take(KEY_FILE_MAX_LEN + 1).read_to_end(&mut content).map_err(unreadable)?;
        if content.len() as u64 > KEY_FILE_MAX_LEN {
            return Err(IdentityError::KeyFileTooLarge { path: p(), kind: *self });
        }
        let Some(rest) = content.strip_prefix(self.header.as_bytes()) else {
            return Err(IdentityError::KeyFileHeader { path: p(), kind: *self });
        };
        // One optional final newline; anything else is reported by the decoder.
        let text = rest.strip_suffix(b"\n").unwrap_or(rest);
        match decode32(text) {
            Ok(bytes) => Ok(Zeroizing::new(bytes)),
            Err(Decode32Error::Length(found)) => Err(IdentityError::KeyFileLength { path: p(), found }),
            Err(Decode32Error::Base32(reason)) => Err(IdentityError::KeyFileBase32 { path: p(), reason }),
        }
    }

    /// Writes `secret` to a new file at `path` without ever replacing an existing file (an
    /// `AlreadyExists` error if `path` exists). See [`NodeKey::load_or_create`] for how.
    pub fn create(&self, path: &Path, secret: &[u8; SECRET_LEN], rng: &SystemRandom) -> io::Result<()> {
        write_new_key_file(path, self.header.as_bytes(), secret, rng)
    }
}

/// Writes `header` and `secret` to a new file at `path` without ever replacing an existing
/// file. Returns an `AlreadyExists` error if `path` exists.
fn write_new_key_file(
    path: &Path,
    header: &[u8],
    secret: &[u8; SECRET_LEN],
    rng: &SystemRandom,
) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut contents = Zeroizing::new(Vec::with_capacity(header.len() + NODE_ID_TEXT_LEN + 1));
    contents.extend_from_slice(header);
    contents.extend_from_slice(&Zeroizing::new(encode32(secret))[..]);
    contents.push(b'\n');

    // A random suffix keeps concurrent creators from colliding on the temporary name.
    let mut nonce = [0u8; 8];
    rng.fill(&mut nonce).map_err(|_| io::Error::other("OS random number generator failed"))?;
    let suffix: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{suffix}.tmp"));
    let tmp = dir.join(tmp_name);

    let result = write_synced(&tmp, &contents).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        // Some filesystems have no hard links. Fall back to creating the final file with
        // O_EXCL: still never replaces, but a crash mid-write could leave a partial file, which
        // `load` then reports as malformed instead of using.
        Err(_) => write_synced(path, &contents),
    });
    // The temporary name is only a staging area; failing to remove it leaves a stray file but
    // does not affect the key.
    let _ = fs::remove_file(&tmp);
    result?;
    // Make the new directory entry durable. Best effort: some platforms and filesystems refuse
    // fsync on a directory, and the key file itself is already complete.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `path` exclusively with mode 0600, writes `contents` and fsyncs it.
fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(KEY_FILE_MODE).open(path)?;
    // The umask may have removed bits from the creation mode; set exactly 0600 so `load` and
    // the user see the documented mode.
    file.set_permissions(fs::Permissions::from_mode(KEY_FILE_MODE))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("rill-identity-{}-{name}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_mode(path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn valid_line() -> Vec<u8> {
        let key = NodeKey::from_secret_bytes([7; 32]);
        let mut line = NODE_KEY_FILE.header.as_bytes().to_vec();
        line.extend_from_slice(&encode32(key.secret_bytes()));
        line.push(b'\n');
        line
    }

    #[test]
    fn create_then_load_gives_same_id() {
        let dir = TempDir::new("create");
        let path = dir.path("node.key");
        let (created, was_created) = NodeKey::load_or_create(&path).unwrap();
        assert!(was_created);
        let (again, was_created) = NodeKey::load_or_create(&path).unwrap();
        assert!(!was_created);
        assert_eq!(created.id(), again.id());
        assert_eq!(created.secret_bytes(), again.secret_bytes());
        assert_eq!(NodeKey::load(&path).unwrap().id(), created.id());
        // No staging files are left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn created_file_has_mode_0600_and_documented_format() {
        let dir = TempDir::new("mode");
        let path = dir.path("node.key");
        let (key, _) = NodeKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let expected = format!("rill-node-key-v1 {}\n", NodeId(*key.secret_bytes()));
        assert_eq!(text, expected);
    }

    #[test]
    fn load_or_create_never_overwrites() {
        let dir = TempDir::new("nooverwrite");
        let path = dir.path("node.key");
        write_mode(&path, b"not a key\n", 0o600);
        assert!(matches!(NodeKey::load_or_create(&path), Err(IdentityError::KeyFileHeader { .. })));
        assert_eq!(fs::read(&path).unwrap(), b"not a key\n");
    }

    #[test]
    fn load_missing_file_errors() {
        let dir = TempDir::new("missing");
        let path = dir.path("absent.key");
        let err = NodeKey::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyFileMissing { .. }));
        assert!(err.to_string().contains("absent.key"));
    }

    #[test]
    fn load_directory_is_unreadable() {
        let dir = TempDir::new("unreadable");
        let path = dir.path("sub");
        fs::create_dir(&path).unwrap();
        assert!(matches!(NodeKey::load(&path), Err(IdentityError::KeyFileUnreadable { .. })));
    }

    #[test]
    fn malformed_files_error_with_right_variant() {
        let dir = TempDir::new("malformed");
        let good = valid_line();
        let key_text = &good[NODE_KEY_FILE.header.len()..good.len() - 1];
        let with_key = |key: &[u8]| [NODE_KEY_FILE.header.as_bytes(), key, b"\n"].concat();

        type Case = (&'static str, Vec<u8>, fn(&IdentityError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", vec![], |e| matches!(e, IdentityError::KeyFileHeader { .. })),
            ("other-header", [b"rill-node-key-v2 ", key_text].concat(), |e| {
                matches!(e, IdentityError::KeyFileHeader { .. })
            }),
            ("no-space", [b"rill-node-key-v1", key_text].concat(), |e| {
                matches!(e, IdentityError::KeyFileHeader { .. })
            }),
            ("uppercase", with_key(&key_text.to_ascii_uppercase()), |e| {
                matches!(
                    e,
                    IdentityError::KeyFileBase32 {
                        reason: Base32Error::InvalidCharacter { position: 0, .. },
                        ..
                    }
                )
            }),
            ("crlf", [NODE_KEY_FILE.header.as_bytes(), key_text, b"\r\n"].concat(), |e| {
                matches!(
                    e,
                    IdentityError::KeyFileBase32 {
                        reason: Base32Error::InvalidCharacter { position: 52, byte: b'\r' },
                        ..
                    }
                )
            }),
            ("padding", with_key(&[key_text, b"===="].concat()), |e| {
                matches!(e, IdentityError::KeyFileBase32 { .. })
            }),
            ("short", with_key(&key_text[..51]), |e| {
                matches!(e, IdentityError::KeyFileLength { found: 51, .. })
            }),
            ("long", with_key(&[key_text, b"aaaaaaaa"].concat()), |e| {
                matches!(e, IdentityError::KeyFileLength { found: 60, .. })
            }),
            ("non-canonical", with_key(&[&key_text[..51], b"b"].concat()), |e| {
                matches!(e, IdentityError::KeyFileBase32 { reason: Base32Error::NonCanonical, .. })
            }),
            ("huge", vec![b'a'; 5000], |e| matches!(e, IdentityError::KeyFileTooLarge { .. })),
        ];
        for (name, contents, check) in cases {
            let path = dir.path(name);
            write_mode(&path, &contents, 0o600);
            let err = NodeKey::load(&path).unwrap_err();
            assert!(check(&err), "{name}: unexpected error {err:?}");
            assert!(err.to_string().contains(name), "{name}: message lacks path: {err}");
        }
        // Without the final newline the file still loads.
        let path = dir.path("no-newline");
        write_mode(&path, &good[..good.len() - 1], 0o600);
        assert_eq!(NodeKey::load(&path).unwrap().id(), NodeKey::from_secret_bytes([7; 32]).id());
    }

    #[test]
    fn group_or_other_accessible_file_refused() {
        let dir = TempDir::new("perms");
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            let path = dir.path(&format!("k{mode:o}"));
            write_mode(&path, &valid_line(), mode);
            let err = NodeKey::load(&path).unwrap_err();
            assert!(matches!(err, IdentityError::KeyFilePermissions { mode: m, .. } if m == mode));
            assert!(err.to_string().contains("chmod 600"));
            assert!(matches!(NodeKey::load_or_create(&path), Err(IdentityError::KeyFilePermissions { .. })));
        }
        let path = dir.path("ok");
        write_mode(&path, &valid_line(), 0o400);
        assert!(NodeKey::load(&path).is_ok());
    }

    #[test]
    fn debug_hides_secret() {
        let key = NodeKey::from_secret_bytes([0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&NodeId([0x42; 32]).to_string()[..8]));
        assert!(!shown.contains("66, 66"), "raw secret bytes leaked: {shown}");
        let id_debug = format!("{:?}", key.id());
        assert_eq!(id_debug, format!("NodeId({})", &key.id().to_string()[..8]));
    }

    #[test]
    fn generate_is_deterministic_and_matches_x25519() {
        let a = NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let b = NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let c = NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        // The id is the RFC 7748 X25519 public key of the (clamped) secret.
        let base = x25519_dalek::X25519_BASEPOINT_BYTES;
        assert_eq!(a.id().0, x25519_dalek::x25519(*a.secret_bytes(), base));
    }

    #[test]
    fn rfc7748_test_vector() {
        // RFC 7748 §6.1, Alice's key pair.
        let secret = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(NodeKey::from_secret_bytes(secret).id().0, public);
    }

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn node_id_text_known_values() {
        assert_eq!(NodeId([0; 32]).to_string(), "a".repeat(52));
        // 0xff.. : 256 one bits = 51 full groups of 5 and one group "1" followed by 4 zero bits.
        assert_eq!(NodeId([0xff; 32]).to_string(), format!("{}q", "7".repeat(51)));
        // RFC 4648 §10 test vector "foobar" -> "MZXW6YTBOI", checked through the prefix.
        let mut bytes = [0u8; 32];
        bytes[..6].copy_from_slice(b"foobar");
        assert!(NodeId(bytes).to_string().starts_with("mzxw6ytboi"));
        assert_eq!(NodeId([0; 32]).to_string().len(), NODE_ID_TEXT_LEN);
    }

    #[test]
    fn node_id_malformed_text_rejected() {
        let good = NodeId([0xa5; 32]).to_string();
        assert!(matches!("".parse::<NodeId>(), Err(IdentityError::IdLength(0))));
        assert!(matches!(good[..51].parse::<NodeId>(), Err(IdentityError::IdLength(51))));
        assert!(matches!(format!("{good}a").parse::<NodeId>(), Err(IdentityError::IdLength(53))));
        assert!(matches!(format!("{good}====").parse::<NodeId>(), Err(IdentityError::IdLength(56))));
        for (pos, bad) in
            [(0, 'A'), (10, '0'), (51, '1'), (20, '8'), (30, '='), (5, ' '), (7, 'é'), (3, '\n')]
        {
            let mut chars: Vec<char> = good.chars().collect();
            chars[pos] = bad;
            let text: String = chars.into_iter().collect();
            let err = text.parse::<NodeId>().unwrap_err();
            assert!(
                matches!(err, IdentityError::IdCharacter { position, character } if position == pos && character == bad),
                "{bad:?} at {pos}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("position {pos}")));
        }
        assert!(matches!(good.to_uppercase().parse::<NodeId>(), Err(IdentityError::IdCharacter { .. })));
        // The last character carries 1 data bit and 4 padding bits: only 'a' and 'q' are canonical.
        for last in ALPHABET.iter().map(|&b| b as char) {
            let text = format!("{}{last}", &good[..51]);
            let result = text.parse::<NodeId>();
            if last == 'a' || last == 'q' {
                assert_eq!(result.unwrap().to_string(), text);
            } else {
                assert!(matches!(result, Err(IdentityError::IdNonCanonical)), "{text}");
            }
        }
    }

    proptest! {
        #[test]
        fn node_id_text_round_trip(bytes in any::<[u8; 32]>()) {
            let id = NodeId(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), NODE_ID_TEXT_LEN);
            prop_assert_eq!(text.parse::<NodeId>().unwrap(), id);
        }

        #[test]
        fn node_id_parse_is_canonical(text in "[a-z2-7]{52}") {
            // Whatever parses prints back identically: one text form per id.
            if let Ok(id) = text.parse::<NodeId>() {
                prop_assert_eq!(id.to_string(), text);
            }
        }

        #[test]
        fn node_id_parse_never_panics(text in "\\PC{0,80}") {
            let _ = text.parse::<NodeId>();
        }

        #[test]
        fn key_file_round_trip(secret in any::<[u8; 32]>()) {
            let text = encode32(&secret);
            prop_assert!(matches!(decode32(&text), Ok(b) if b == secret));
        }
    }
}
