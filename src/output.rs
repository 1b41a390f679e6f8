//! Output files that appear whole or not at all, the one writer of match files, the
//! one writer of token exports (`idmatch tokens`, and the Python package), and of
//! JSON reports (`measurement.json`).
//!
//! A [`Staged`] file is written under a temporary name in its destination's
//! directory (mode 0600: outputs hold personal data) and renamed into place by
//! [`Staged::commit`] only once it is complete; dropped uncommitted (an error, a
//! panic), it is removed. Creating it first also proves that the destination is
//! writable before any work is done, so a long match never ends in "cannot write".
//!
//! An [`OutDir`] is an output directory and its private staging directory: the
//! directories a run had to create are removed again when it fails, and staging
//! directories left by a run that was killed (SIGINT, SIGTERM, SIGKILL: no
//! destructor ran) are removed by the next run into the same directory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tempfile::NamedTempFile;

use crate::prepare::Prepared;
use crate::psi::KindSet;
use crate::records::RecordSet;
use crate::token::KeyFingerprint;

/// An output file could not be created or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    /// The destination path.
    pub path: PathBuf,
    /// The underlying I/O error.
    pub source: io::Error,
}

/// Prefix of a staging directory's name; the creating process's id follows.
const STAGING_PREFIX: &str = ".idmatch-staging-";

/// An output directory being written through a staging directory inside it.
pub struct OutDir {
    path: PathBuf,
    /// Directories this run created, deepest first.
    created: Vec<PathBuf>,
    staging: Option<tempfile::TempDir>,
}

impl OutDir {
    /// Creates `path` (and its missing parents) and a private staging directory in
    /// it, first removing staging directories whose process is gone.
    pub fn create(path: &Path) -> io::Result<OutDir> {
        let mut created = Vec::new();
        let mut missing = Some(path);
        while let Some(dir) = missing.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            created.push(dir.to_owned());
            missing = dir.parent();
        }
        std::fs::create_dir_all(path)?;
        remove_abandoned_staging(path);
        let prefix = format!("{STAGING_PREFIX}{}-", std::process::id());
        let staging = tempfile::Builder::new().prefix(&prefix).tempdir_in(path)?;
        Ok(OutDir { path: path.to_owned(), created, staging: Some(staging) })
    }

    /// The output directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The staging directory: write here, then move into [`OutDir::path`].
    pub fn staging(&self) -> &Path {
        self.staging.as_ref().map_or(&self.path, |s| s.path())
    }

    /// A successful run: moves `names` (written into the staging directory) into
    /// the output directory, in order (so the last listed appears last), then
    /// removes the staging directory.
    pub fn commit(self, names: &[&str]) -> io::Result<()> {
        for name in names {
            std::fs::rename(self.staging().join(name), self.path.join(name))?;
        }
        Ok(())
    }

    /// A failed run: removes the staging directory and every directory this run
    /// created (those left empty).
    pub fn discard(mut self) {
        drop(self.staging.take());
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes the staging directories in `dir` whose creating process no longer runs
/// (Linux: no `/proc/PID`). Elsewhere, or when unsure, it leaves them.
fn remove_abandoned_staging(dir: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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

/// Writes `value` as pretty JSON to `out_dir/name` (the directory created if
/// missing), mode 0600, whole or not at all ([`Staged`]).
pub fn write_json(out_dir: &Path, name: &str, value: &impl serde::Serialize) -> Result<(), OutputError> {
    std::fs::create_dir_all(out_dir).map_err(|source| OutputError { path: out_dir.to_owned(), source })?;
    let path = out_dir.join(name);
    let mut staged = Staged::create(&path)?;
    let err = |source| OutputError { path: path.clone(), source };
    serde_json::to_writer_pretty(&mut staged, value).map_err(|e| err(e.into()))?;
    staged.write_all(b"\n").map_err(err)?;
    staged.commit()
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
    let mut rows = MatchRows::new(out)?;
    for (record, kinds) in matches {
        rows.push(records.id(*record), *kinds)?;
    }
    rows.finish().map(drop)
}

/// A match file written a row at a time (the format of [`write_matches`]), for
/// callers that produce the matched records in record order without a
/// [`RecordSet`] (the sharded match).
pub struct MatchRows<W: Write> {
    out: csv::Writer<BufWriter<W>>,
}

impl<W: Write> MatchRows<W> {
    /// Writes the header.
    pub fn new(out: W) -> io::Result<MatchRows<W>> {
        let mut out = csv::Writer::from_writer(BufWriter::new(out));
        out.write_record(["record_id", "matched_kinds"])?;
        Ok(MatchRows { out })
    }

    /// Writes one matched record.
    pub fn push(&mut self, id: &str, kinds: KindSet) -> io::Result<()> {
        Ok(self.out.write_record([id, &kinds.joined()])?)
    }

    /// Flushes the rows and hands back the destination.
    pub fn finish(self) -> io::Result<W> {
        let buffered = self.out.into_inner().map_err(|e| e.into_error())?;
        buffered.into_inner().map_err(io::IntoInnerError::into_error)
    }
}

/// The hashed export of `idmatch tokens`: a plain CSV `record_id,kind,token_hex`
/// and its description in `<output>.meta.json` (format, version, profile, counts).
/// Both files are created first, so an unwritable output fails before any work, and
/// both appear only once complete.
pub struct TokenExport {
    csv: Staged,
    meta: Staged,
}

/// What [`TokenExport::write`] wrote.
#[derive(Clone, Debug)]
pub struct TokenExportSummary {
    /// Rows written (one per distinct identifier of each record left in).
    pub rows: u64,
    /// Records the opt-out list left out.
    pub excluded_records: u64,
    /// The content of `<output>.meta.json`.
    pub description: serde_json::Value,
}

impl TokenExport {
    /// Creates (staged, invisible until written) `output` and `<output>.meta.json`.
    pub fn create(output: &Path) -> Result<TokenExport, OutputError> {
        let csv = Staged::create(output)?;
        let meta = Staged::create(&token_meta_path(output))?;
        Ok(TokenExport { csv, meta })
    }

    /// Where the description goes.
    pub fn meta_path(&self) -> &Path {
        self.meta.path()
    }

    /// Writes the rows of the records of `side` its filter left in, in record order,
    /// then the description, which names the campaign key by its `fingerprint`
    /// (docs/PROTOCOL.md §5.3): two exports join only if their fingerprints are equal.
    pub fn write(mut self, side: &Prepared, fingerprint: &KeyFingerprint) -> Result<TokenExportSummary, OutputError> {
        let records = side.records();
        let is_out = |record: u32| side.is_excluded(record);
        let output = self.csv.path().to_owned();
        let write_err = |source: io::Error| OutputError { path: output.clone(), source };
        let mut out = BufWriter::new(&mut self.csv);
        writeln!(out, "record_id,kind,token_hex").map_err(write_err)?;
        // Rows are formatted on all cores, a block at a time, and written in order.
        for block in records.entries().chunks(1 << 20) {
            let parts: Vec<Vec<u8>> = block
                .par_chunks(1 << 14)
                .map(|entries| {
                    let mut w = csv::WriterBuilder::new()
                        .has_headers(false)
                        .from_writer(Vec::with_capacity(entries.len() * 96));
                    let mut hex_buf = [0u8; 64];
                    for e in entries.iter().filter(|e| !is_out(e.record)) {
                        let token_hex =
                            hex::encode_to_slice(e.token.0, &mut hex_buf).map(|()| &hex_buf[..]).unwrap_or(b"");
                        // Writing into a Vec cannot fail.
                        let _ = w.write_record([records.id(e.record).as_bytes(), e.kind.label().as_bytes(), token_hex]);
                    }
                    w.into_inner().unwrap_or_default()
                })
                .collect();
            for part in parts {
                out.write_all(&part).map_err(write_err)?;
            }
        }
        out.flush().map_err(write_err)?;
        drop(out);
        let excluded_records = side.excluded_records();
        let rows = records.entries().iter().filter(|e| !is_out(e.record)).count() as u64;
        let description = serde_json::json!({
            "format": "idmatch-tokens",
            "version": 1,
            "columns": ["record_id", "kind", "token_hex"],
            "profile": records.profile().name(),
            "key_fingerprint": hex::encode(fingerprint.as_bytes()),
            "rows": rows,
            "records_excluded_by_optouts": excluded_records,
        });
        let meta_path = self.meta.path().to_owned();
        serde_json::to_writer_pretty(&mut self.meta, &description)
            .map_err(|e| OutputError { path: meta_path, source: e.into() })?;
        self.csv.commit()?;
        self.meta.commit()?;
        Ok(TokenExportSummary { rows, excluded_records, description })
    }
}

/// `tokens.csv` → `tokens.csv.meta.json`: the export's description, beside it.
pub fn token_meta_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".meta.json");
    PathBuf::from(name)
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
