//! Output files that appear whole or not at all, and the one writer of match files.
//!
//! A [`Staged`] file is written under a temporary name in its destination's
//! directory (mode 0600: outputs hold personal data) and renamed into place by
//! [`Staged::commit`] only once it is complete; dropped uncommitted (an error, a
//! panic), it is removed. Creating it first also proves that the destination is
//! writable before any work is done, so a long match never ends in "cannot write".

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::psi::KindSet;
use crate::records::RecordSet;

/// An output file could not be created or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    /// The destination path.
    pub path: PathBuf,
    /// The underlying I/O error.
    pub source: io::Error,
}

/// A file being written, invisible at its path until committed.
pub struct Staged {
    path: PathBuf,
    file: NamedTempFile<File>,
}

impl Staged {
    /// Creates the temporary file beside `path` (which must not be a directory).
    pub fn create(path: &Path) -> Result<Staged, OutputError> {
        let err = |source| OutputError { path: path.to_owned(), source };
        if path.is_dir() {
            return Err(err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory, not a file")));
        }
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let file =
            tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir).map_err(err)?;
        Ok(Staged { path: path.to_owned(), file })
    }

    /// Where the file will appear.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file and renames it into place (replacing an older file there).
    pub fn commit(self) -> Result<(), OutputError> {
        let path = self.path;
        self.file.as_file().sync_all().map_err(|source| OutputError { path: path.clone(), source })?;
        self.file.persist(&path).map_err(|e| OutputError { path: path.clone(), source: e.error })?;
        Ok(())
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes a match file to `path`, mode 0600 (match results are personal data),
/// whole or not at all.
pub fn write_match_file(path: &Path, records: &RecordSet, matches: &[(u32, KindSet)]) -> Result<(), OutputError> {
    let mut staged = Staged::create(path)?;
    write_matches(&mut staged, records, matches).map_err(|source| OutputError { path: path.to_owned(), source })?;
    staged.commit()
}

/// The match file format: a `record_id,matched_kinds` header, then one row per
/// matched record in record order, its kinds as `email`, `phone` or `email;phone`.
pub fn write_matches(out: &mut impl Write, records: &RecordSet, matches: &[(u32, KindSet)]) -> io::Result<()> {
    let mut out = csv::Writer::from_writer(BufWriter::new(out));
    out.write_record(["record_id", "matched_kinds"])?;
    for (record, kinds) in matches {
        out.write_record([records.id(*record), &kinds.joined()])?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_when_committed_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut staged = Staged::create(&path).unwrap();
        staged.write_all(b"a,b\n").unwrap();
        assert!(!path.exists());
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a,b\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let mut dropped = Staged::create(&path).unwrap();
        dropped.write_all(b"partial").unwrap();
        drop(dropped);
        assert_eq!(std::fs::read(&path).unwrap(), b"a,b\n", "an uncommitted file leaves the old one alone");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "and no temporary file behind");
    }

    #[test]
    fn unwritable_destinations_fail_at_creation() {
        let dir = tempfile::tempdir().unwrap();
        let err = Staged::create(dir.path()).err().unwrap().to_string();
        assert!(err.contains("directory"), "{err}");
        let missing = dir.path().join("no/such/dir/out.csv");
        let err = Staged::create(&missing).err().unwrap().to_string();
        assert!(err.contains("no/such/dir/out.csv"), "{err}");
    }
}
