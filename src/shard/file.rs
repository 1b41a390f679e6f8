//! The shard file (docs/PROTOCOL.md §13.2): one shard of one input's keyed tokens,
//! with the record ordinal, kind and record id of each, behind a header that names
//! the format version, the campaign key's fingerprint, the profile, `N`, the shard's
//! index, the entry count and a SHA-256 checksum of the entries.
//!
//! A [`ShardReader`] is opened for one expected key, profile, `N` and index, and
//! refuses a file that names others; it refuses a file whose entries stop before the
//! count, go past it, or do not hash to the checksum (a truncated or damaged file).
//! Its entries must not be used before [`ShardReader::finish`] has checked the
//! count and checksum: callers collect a shard, then finish, then use it.
//!
//! A [`ShardWriter`] creates a new file (never overwriting) with mode 0600 (tokens
//! with record ids are personal data) and writes the header last, once the count
//! and checksum are known. Callers write into a staging directory and rename the
//! finished files into place (`idmatch shard`), or into a private temporary
//! directory removed after use (the local match's spill).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::normalize::{Kind, Profile};
use crate::token::{KeyFingerprint, Token};

/// The first 8 bytes of every shard file.
pub const MAGIC: [u8; 8] = *b"IDMSHARD";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// The longest record id a shard file holds, in bytes.
pub const MAX_ID_BYTES: usize = 1 << 24;
/// Bytes of the header before the profile name.
const FIXED_HEADER: usize = 8 + 2 + 32 + 4 + 4 + 8 + 32 + 1;

/// Why a shard file could not be written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardFileError {
    /// Creating, reading or writing the file failed.
    #[error("shard file {path}: {source}")]
    Io {
        /// The shard file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file does not start with the shard file magic.
    #[error("{path} is not an idmatch shard file")]
    NotAShardFile {
        /// The file.
        path: PathBuf,
    },
    /// The file is of a format version this build does not read.
    #[error("shard file {path}: format version {version}, this build reads version {VERSION}")]
    Version {
        /// The shard file.
        path: PathBuf,
        /// The version it names.
        version: u16,
    },
    /// The file was made under another campaign key (its key fingerprint differs).
    #[error("shard file {path} was made under another campaign key (its key fingerprint differs from this key's)")]
    OtherKey {
        /// The shard file.
        path: PathBuf,
    },
    /// The file was made under another normalization profile.
    #[error("shard file {path} was made under profile {found}, not {expected}")]
    OtherProfile {
        /// The shard file.
        path: PathBuf,
        /// The profile it names.
        found: String,
        /// The profile expected.
        expected: &'static str,
    },
    /// The file belongs to a split into another number of shards.
    #[error("shard file {path} is one of {found} shards, not of {expected}: shards of different splits never match")]
    OtherShardCount {
        /// The shard file.
        path: PathBuf,
        /// The `N` it names.
        found: u32,
        /// The `N` expected.
        expected: u32,
    },
    /// The file holds another shard than the one expected.
    #[error("shard file {path} holds shard {found}, not shard {expected}")]
    OtherShard {
        /// The shard file.
        path: PathBuf,
        /// The index it names.
        found: u32,
        /// The index expected.
        expected: u32,
    },
    /// The file ends before its header or its entries do (a truncated file).
    #[error("shard file {path} is truncated: it ends after {read} of its {count} entries")]
    Truncated {
        /// The shard file.
        path: PathBuf,
        /// Entries read completely.
        read: u64,
        /// Entries the header announces.
        count: u64,
    },
    /// The entries do not hash to the header's checksum, or bytes follow the last one.
    #[error("shard file {path} is damaged: {reason}")]
    Damaged {
        /// The shard file.
        path: PathBuf,
        /// What is wrong, never any of the file's contents.
        reason: &'static str,
    },
    /// A record id is longer than a shard file holds ([`MAX_ID_BYTES`]).
    #[error("shard file {path}: a record id of {len} bytes is longer than the {MAX_ID_BYTES} a shard file holds")]
    IdTooLong {
        /// The shard file.
        path: PathBuf,
        /// The id's length.
        len: usize,
    },
}

/// A shard file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// The campaign key's fingerprint (docs/PROTOCOL.md §5.3).
    pub fingerprint: [u8; 32],
    /// The normalization profile's name.
    pub profile: String,
    /// `N`.
    pub shards: u32,
    /// This shard's index, below `N`.
    pub index: u32,
    /// Entries in the file.
    pub count: u64,
    /// SHA-256 of the entries, as written.
    pub checksum: [u8; 32],
}

impl ShardHeader {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER + self.profile.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.shards.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.checksum);
        // Profile names are short ASCII constants.
        out.push(self.profile.len() as u8);
        out.extend_from_slice(self.profile.as_bytes());
        out
    }
}

/// One entry: a token of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    /// The record's number in its input: 0 for the first row that became a record,
    /// counting every record (also those excluded by opt-outs), in file order.
    pub ordinal: u64,
    /// Email or phone.
    pub kind: Kind,
    /// The identifier's keyed token.
    pub token: Token,
}

/// What a shard file must be to be used.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The campaign key's fingerprint.
    pub fingerprint: &'a KeyFingerprint,
    /// The normalization profile.
    pub profile: Profile,
    /// `N`.
    pub shards: u32,
    /// The shard's index.
    pub index: u32,
}

/// Writes one shard file.
pub struct ShardWriter {
    path: PathBuf,
    out: BufWriter<File>,
    header: ShardHeader,
    hasher: Sha256,
}

impl ShardWriter {
    /// Creates a new file at `path` (mode 0600; an existing file is an error) for
    /// shard `index` of `shards` under the key and profile named; `buffer` bytes are
    /// buffered in memory.
    pub fn create(
        path: &Path,
        fingerprint: &KeyFingerprint,
        profile: Profile,
        shards: u32,
        index: u32,
        buffer: usize,
    ) -> Result<ShardWriter, ShardFileError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io = |source| ShardFileError::Io { path: path.to_owned(), source };
        let file = options.open(path).map_err(io)?;
        let header = ShardHeader {
            fingerprint: *fingerprint.as_bytes(),
            profile: profile.name().to_owned(),
            shards,
            index,
            count: 0,
            checksum: [0; 32],
        };
        let mut out = BufWriter::with_capacity(buffer, file);
        // A placeholder, rewritten by `finish`: a file left unfinished has a zero
        // count and checksum and is refused as damaged.
        out.write_all(&header.encode()).map_err(io)?;
        Ok(ShardWriter { path: path.to_owned(), out, header, hasher: Sha256::new() })
    }

    /// Appends one entry with its record's id.
    pub fn push(&mut self, entry: &ShardEntry, id: &str) -> Result<(), ShardFileError> {
        if id.len() > MAX_ID_BYTES {
            return Err(ShardFileError::IdTooLong { path: self.path.clone(), len: id.len() });
        }
        let mut head = [0u8; 8 + 1 + 32 + 4];
        head[..8].copy_from_slice(&entry.ordinal.to_be_bytes());
        head[8] = entry.kind as u8;
        head[9..41].copy_from_slice(&entry.token.0);
        head[41..].copy_from_slice(&(id.len() as u32).to_be_bytes());
        self.hasher.update(head);
        self.hasher.update(id.as_bytes());
        let io = |source| ShardFileError::Io { path: self.path.clone(), source };
        self.out.write_all(&head).map_err(io)?;
        self.out.write_all(id.as_bytes()).map_err(io)?;
        self.header.count += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn count(&self) -> u64 {
        self.header.count
    }

    /// Writes the header with the count and checksum and returns the file (for the
    /// caller to sync if it must survive a crash).
    pub fn finish(self) -> Result<File, ShardFileError> {
        let ShardWriter { path, out, mut header, hasher } = self;
        let io = |source| ShardFileError::Io { path: path.clone(), source };
        header.checksum = hasher.finalize().into();
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(io::SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header.encode()).map_err(io)?;
        Ok(file)
    }
}

/// Reads one shard file, checking it against what is expected.
pub struct ShardReader {
    path: PathBuf,
    input: BufReader<File>,
    header: ShardHeader,
    read: u64,
    hasher: Sha256,
}

impl ShardReader {
    /// Opens `path` and checks its header against `expected`.
    pub fn open(path: &Path, expected: Expected<'_>) -> Result<ShardReader, ShardFileError> {
        let io = |source| ShardFileError::Io { path: path.to_owned(), source };
        let mut input = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let header = read_header(path, &mut input)?;
        let path_buf = || path.to_owned();
        if !expected.fingerprint.matches(&header.fingerprint) {
            return Err(ShardFileError::OtherKey { path: path_buf() });
        }
        if header.profile != expected.profile.name() {
            let expected = expected.profile.name();
            return Err(ShardFileError::OtherProfile { path: path_buf(), found: header.profile, expected });
        }
        if header.shards != expected.shards {
            let (found, expected) = (header.shards, expected.shards);
            return Err(ShardFileError::OtherShardCount { path: path_buf(), found, expected });
        }
        if header.index != expected.index {
            let (found, expected) = (header.index, expected.index);
            return Err(ShardFileError::OtherShard { path: path_buf(), found, expected });
        }
        Ok(ShardReader { path: path.to_owned(), input, header, read: 0, hasher: Sha256::new() })
    }

    /// The header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// The next entry, its record id in `id` (replaced); `None` after the last one
    /// the header announces. Not checked until [`ShardReader::finish`].
    pub fn next_entry(&mut self, id: &mut String) -> Result<Option<ShardEntry>, ShardFileError> {
        if self.read == self.header.count {
            return Ok(None);
        }
        let truncated =
            |r: &ShardReader| ShardFileError::Truncated { path: r.path.clone(), read: r.read, count: r.header.count };
        let mut head = [0u8; 8 + 1 + 32 + 4];
        read_exact(&mut self.input, &mut head).map_err(|e| self.io_or(e, truncated))?;
        let damaged = |reason| ShardFileError::Damaged { path: self.path.clone(), reason };
        let kind = match head[8] {
            0 => Kind::Email,
            1 => Kind::Phone,
            _ => return Err(damaged("an entry has an unknown kind")),
        };
        let len = u32::from_be_bytes([head[41], head[42], head[43], head[44]]) as usize;
        if len > MAX_ID_BYTES {
            return Err(damaged("an entry's record id is longer than a shard file holds"));
        }
        let mut bytes = std::mem::take(id).into_bytes();
        bytes.resize(len, 0);
        read_exact(&mut self.input, &mut bytes).map_err(|e| self.io_or(e, truncated))?;
        self.hasher.update(head);
        self.hasher.update(&bytes);
        *id = String::from_utf8(bytes).map_err(|_| damaged("an entry's record id is not UTF-8"))?;
        let mut token = [0u8; 32];
        token.copy_from_slice(&head[9..41]);
        let mut ordinal = [0u8; 8];
        ordinal.copy_from_slice(&head[..8]);
        self.read += 1;
        Ok(Some(ShardEntry { ordinal: u64::from_be_bytes(ordinal), kind, token: Token(token) }))
    }

    /// Checks that every announced entry was read, that nothing follows them and that
    /// they hash to the header's checksum.
    pub fn finish(mut self) -> Result<(), ShardFileError> {
        let damaged = |reason| ShardFileError::Damaged { path: self.path.clone(), reason };
        if self.read != self.header.count {
            return Err(damaged("its entries were not all read"));
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => return Err(damaged("bytes follow its last entry")),
            Err(source) => return Err(ShardFileError::Io { path: self.path.clone(), source }),
        }
        let sum: [u8; 32] = self.hasher.clone().finalize().into();
        if sum != self.header.checksum {
            return Err(damaged("its entries do not match the header's checksum"));
        }
        Ok(())
    }

    /// An I/O error, or `truncated` when the file ended early.
    fn io_or(&self, e: io::Error, truncated: impl Fn(&ShardReader) -> ShardFileError) -> ShardFileError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            truncated(self)
        } else {
            ShardFileError::Io { path: self.path.clone(), source: e }
        }
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    input.read_exact(buf)
}

/// Reads and decodes the header (magic, version, then the fields).
fn read_header(path: &Path, input: &mut impl Read) -> Result<ShardHeader, ShardFileError> {
    let truncated = || ShardFileError::Truncated { path: path.to_owned(), read: 0, count: 0 };
    let io = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            truncated()
        } else {
            ShardFileError::Io { path: path.to_owned(), source: e }
        }
    };
    let mut fixed = [0u8; FIXED_HEADER];
    let mut got = 0;
    while got < fixed.len() {
        match input.read(&mut fixed[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    if got < MAGIC.len() || fixed[..8] != MAGIC {
        return Err(ShardFileError::NotAShardFile { path: path.to_owned() });
    }
    let version = u16::from_be_bytes([fixed[8], fixed[9]]);
    if got >= 10 && version != VERSION {
        return Err(ShardFileError::Version { path: path.to_owned(), version });
    }
    if got < FIXED_HEADER {
        return Err(truncated());
    }
    let be32 = |at: usize| u32::from_be_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&fixed[10..42]);
    let mut count = [0u8; 8];
    count.copy_from_slice(&fixed[50..58]);
    let mut checksum = [0u8; 32];
    checksum.copy_from_slice(&fixed[58..90]);
    let mut profile = vec![0u8; usize::from(fixed[90])];
    input.read_exact(&mut profile).map_err(io)?;
    let profile = String::from_utf8(profile)
        .map_err(|_| ShardFileError::Damaged { path: path.to_owned(), reason: "its profile name is not UTF-8" })?;
    Ok(ShardHeader {
        fingerprint,
        profile,
        shards: be32(42),
        index: be32(46),
        count: u64::from_be_bytes(count),
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn fingerprint(byte: u8) -> KeyFingerprint {
        KeyFingerprint::of(&Key::from_bytes([byte; 32]))
    }

    /// Writes shard 1 of 3 with three entries under key 1.
    fn write(path: &Path) {
        let mut w = ShardWriter::create(path, &fingerprint(1), Profile::IdmatchV1, 3, 1, 4096).unwrap();
        for (i, id) in ["m1", "m2", ""].iter().enumerate() {
            let kind = if i == 1 { Kind::Phone } else { Kind::Email };
            w.push(&ShardEntry { ordinal: i as u64 * 10, kind, token: Token([i as u8; 32]) }, id).unwrap();
        }
        assert_eq!(w.count(), 3);
        w.finish().unwrap();
    }

    fn read(
        path: &Path,
        fp: &KeyFingerprint,
        shards: u32,
        index: u32,
    ) -> Result<Vec<(ShardEntry, String)>, ShardFileError> {
        let expected = Expected { fingerprint: fp, profile: Profile::IdmatchV1, shards, index };
        let mut reader = ShardReader::open(path, expected)?;
        let (mut out, mut id) = (Vec::new(), String::new());
        while let Some(entry) = reader.next_entry(&mut id)? {
            out.push((entry, id.clone()));
        }
        reader.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trips_with_mode_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.shard");
        write(&path);
        let entries = read(&path, &fingerprint(1), 3, 1).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].0, ShardEntry { ordinal: 10, kind: Kind::Phone, token: Token([1; 32]) });
        assert_eq!((entries[0].1.as_str(), entries[2].1.as_str()), ("m1", ""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = ShardWriter::create(&path, &fingerprint(1), Profile::IdmatchV1, 3, 1, 4096);
        assert!(matches!(again, Err(ShardFileError::Io { .. })));
    }

    #[test]
    fn another_key_profile_split_or_shard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.shard");
        write(&path);
        let err = read(&path, &fingerprint(2), 3, 1).unwrap_err();
        assert!(matches!(err, ShardFileError::OtherKey { .. }) && err.to_string().contains("another campaign key"));
        let err = read(&path, &fingerprint(1), 4, 1).unwrap_err();
        assert!(matches!(err, ShardFileError::OtherShardCount { found: 3, expected: 4, .. }), "{err}");
        assert!(err.to_string().contains("one of 3 shards, not of 4"), "{err}");
        let err = read(&path, &fingerprint(1), 3, 2).unwrap_err();
        assert!(matches!(err, ShardFileError::OtherShard { found: 1, expected: 2, .. }), "{err}");
        let expected = Expected { fingerprint: &fingerprint(1), profile: Profile::IdmatchV2, shards: 3, index: 1 };
        let err = ShardReader::open(&path, expected).err().unwrap();
        assert!(matches!(err, ShardFileError::OtherProfile { .. }), "{err}");
    }

    #[test]
    fn truncated_damaged_or_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.shard");
        write(&path);
        let whole = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.shard");
        for len in [whole.len() - 1, whole.len() - 40, FIXED_HEADER + 10, 20] {
            std::fs::write(&cut, &whole[..len]).unwrap();
            let err = read(&cut, &fingerprint(1), 3, 1).unwrap_err();
            assert!(matches!(err, ShardFileError::Truncated { .. }), "{len}: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        let mut flipped = whole.clone();
        // A bit of the first entry's token (after the header and `idmatch-v1`).
        flipped[FIXED_HEADER + 10 + 20] ^= 1;
        std::fs::write(&cut, &flipped).unwrap();
        let err = read(&cut, &fingerprint(1), 3, 1).unwrap_err();
        assert!(matches!(err, ShardFileError::Damaged { .. }) && err.to_string().contains("checksum"), "{err}");
        let mut longer = whole.clone();
        longer.push(0);
        std::fs::write(&cut, &longer).unwrap();
        let err = read(&cut, &fingerprint(1), 3, 1).unwrap_err();
        assert!(err.to_string().contains("follow its last entry"), "{err}");
        std::fs::write(&cut, b"record_id,kind,token_hex\n").unwrap();
        let err = read(&cut, &fingerprint(1), 3, 1).unwrap_err();
        assert!(matches!(err, ShardFileError::NotAShardFile { .. }), "{err}");
        let mut future = whole;
        future[9] = 2;
        std::fs::write(&cut, &future).unwrap();
        let err = read(&cut, &fingerprint(1), 3, 1).unwrap_err();
        assert!(matches!(err, ShardFileError::Version { version: 2, .. }), "{err}");
    }
}
