//! The reject report: one CSV row per rejected identifier or row, with the file's
//! line number, the column and the machine-readable reason. Raw values are written
//! only when the user asked for them (`--rejects-include-values`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Writes `line,column,reason[,value]` rows.
pub struct RejectWriter {
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    include_values: bool,
}

/// The reject report could not be written.
#[derive(Debug, thiserror::Error)]
#[error("reject report {path}: {source}")]
pub struct RejectWriteError {
    /// The report file.
    pub path: PathBuf,
    /// The CSV or I/O error (I/O errors are wrapped as `csv::Error`).
    pub source: csv::Error,
}

impl RejectWriter {
    /// Creates (or truncates) the report at `path` and writes its header.
    pub fn create(path: &Path, include_values: bool) -> Result<RejectWriter, RejectWriteError> {
        let err = |source| RejectWriteError { path: path.to_owned(), source };
        let file = File::create(path).map_err(|e| err(e.into()))?;
        let mut writer = csv::Writer::from_writer(BufWriter::new(file));
        if include_values {
            writer.write_record(["line", "column", "reason", "value"]).map_err(err)?;
        } else {
            writer.write_record(["line", "column", "reason"]).map_err(err)?;
        }
        Ok(RejectWriter { path: path.to_owned(), writer, include_values })
    }

    /// Whether raw values are wanted (so the reader keeps them for rejected cells).
    pub fn include_values(&self) -> bool {
        self.include_values
    }

    /// Appends one reject.
    pub fn write(
        &mut self,
        line: u64,
        column: &str,
        reason: &str,
        value: Option<&str>,
    ) -> Result<(), RejectWriteError> {
        let line = line.to_string();
        let result = if self.include_values {
            self.writer.write_record([line.as_str(), column, reason, value.unwrap_or("")])
        } else {
            self.writer.write_record([line.as_str(), column, reason])
        };
        result.map_err(|source| RejectWriteError { path: self.path.clone(), source })
    }

    /// Flushes the report to disk.
    pub fn finish(mut self) -> Result<(), RejectWriteError> {
        self.writer.flush().map_err(|e| RejectWriteError { path: self.path.clone(), source: e.into() })
    }
}
