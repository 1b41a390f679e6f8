//! Secret keys: 32 random bytes, stored as one line of lowercase hex in a key file
//! created with mode 0600.
//!
//! Security properties: a [`Key`] never prints its bytes (`Debug` shows
//! `<redacted>`), is zeroized on drop, and no error built from a key file ever
//! contains the file's contents, only its path and what was wrong. As ssh does with
//! private keys, a key file that its group or other users can read or write is
//! refused ([`KeyError::Exposed`]): such a key may already be someone else's.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

/// Length of every key, in bytes.
pub const KEY_LEN: usize = 32;

/// A 32-byte secret key (a campaign key shared by the two parties, or an opt-out
/// store key private to one installation).
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Opening, reading, writing or syncing the key file (or another secret file)
    /// failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file holds: `key file`, `token file`, `TLS private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not one line of 64 hex digits, or the key is all zeros.
    #[error("key file {path}: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it; never any of the file's contents.
        reason: &'static str,
    },
    /// [`Key::generate_to_file`] (or [`write_secret_file`]) found a file already at
    /// the path.
    #[error("{what} {path} already exists; refusing to overwrite it")]
    Exists {
        /// What the file would have held: `key file`, `token file`.
        what: &'static str,
        /// The existing file, left untouched.
        path: PathBuf,
    },
    /// On Unix, the key file (or another secret file: a bearer token, a TLS private
    /// key) can be read or written by its group or others.
    #[error(
        "{what} {path} is accessible by other users (mode {mode:04o}); it must be private to its owner: run `chmod 600 {path}`"
    )]
    Exposed {
        /// What the file holds: `key file`, `token file`, `TLS private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// The operating system's CSPRNG failed while generating a key.
    #[error("the operating system's random number generator failed: {0}")]
    Rng(rand::Error),
}

impl Key {
    /// Draws a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Key, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.try_fill_bytes(bytes.as_mut()).map_err(KeyError::Rng)?;
        Ok(Key(bytes))
    }

    /// Builds a key from raw bytes (tests and benches).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// Reads a key file: one line of 64 hex digits, surrounding whitespace allowed.
    /// On Unix the file must not be readable or writable by group or others.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let malformed = |reason| KeyError::Malformed { path: path.to_owned(), reason };
        let text = read_secret_file(path, "key file")?;
        let hex_part = text.trim_ascii();
        if hex_part.len() != 2 * KEY_LEN {
            return Err(malformed("expected exactly 64 hex digits (32 bytes) on one line"));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(hex_part, bytes.as_mut())
            .map_err(|_| malformed("contains a character that is not a hex digit"))?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(malformed("the key is all zeros"));
        }
        Ok(Key(bytes))
    }

    /// Generates a key and writes it to a new file with mode 0600. Never overwrites.
    pub fn generate_to_file(path: &Path) -> Result<Key, KeyError> {
        let key = Key::generate()?;
        let mut line = Zeroizing::new(hex::encode(key.0.as_ref()));
        line.push('\n');
        write_secret_file(path, line.as_bytes(), "key file")?;
        Ok(key)
    }

    /// The key bytes, for the keyed-hash constructors in this crate only.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Writes `bytes` to a new file at `path` (`what`: a key file, a bearer token), mode
/// 0600 on Unix, synced to disk. Never overwrites: an existing file is
/// [`KeyError::Exists`].
pub fn write_secret_file(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), KeyError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists { what, path: path.to_owned() }
        } else {
            KeyError::Io { what, path: path.to_owned(), source }
        }
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a file that holds a secret (`what`: a key file, a bearer token, a TLS
/// private key), refusing on Unix one that its group or others can read or write,
/// as ssh does: a secret that other accounts can read is not a secret. The bytes are
/// zeroized when dropped.
pub fn read_secret_file(path: &Path, what: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io { what, path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { what, path: path.to_owned(), mode });
        }
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(256));
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = Key::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "<redacted>");
    }

    #[test]
    fn generate_load_roundtrip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.hex");
        let key = Key::generate_to_file(&path).unwrap();
        let loaded = Key::load(&path).unwrap();
        assert_eq!(key.bytes(), loaded.bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(Key::generate_to_file(&path), Err(KeyError::Exists { .. })));
    }

    /// Writes `contents` to a new file readable by its owner only.
    fn private_file(path: &Path, contents: &str) {
        std::fs::write(path, contents).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_files_others_can_access_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.hex");
        Key::generate_to_file(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Key::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Exposed { .. }), "{mode:o}: {err}");
            let text = err.to_string();
            assert!(text.contains("chmod 600") && text.contains(&format!("{mode:04o}")), "{text}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Key::load(&path).unwrap();
        }
    }

    #[test]
    fn malformed_files_name_the_reason_not_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.hex");
        private_file(&path, &"zz".repeat(32));
        let err = Key::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a hex digit") && !err.contains("zzzz"), "{err}");
        private_file(&path, "abcd");
        assert!(Key::load(&path).unwrap_err().to_string().contains("64 hex digits"));
        private_file(&path, &"00".repeat(32));
        assert!(Key::load(&path).unwrap_err().to_string().contains("all zeros"));
    }
}
