//! One input file as a header and batches of raw rows, whatever its format: CSV or
//! TSV through the CSV parser, or Parquet (`super::parquet`, cargo feature
//! `parquet`). Everything after (columns, the per-row work, the sink) sees the same
//! [`RawRow`]s either way.
//!
//! Detection: a file named `*.parquet` (any case), or one whose first bytes are the
//! Parquet magic `PAR1`, is read as Parquet (and refused if it is not valid
//! Parquet); anything else is text: `.tsv`/`.tab` files, and files whose first line
//! has tabs and no commas, are tab-separated, the rest comma-separated.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use super::options::{Numbering, ParquetProblem, ReadError};
#[cfg(feature = "parquet")]
use super::parquet::ParquetInput;
use super::row::{BATCH_ROWS, Batches, RawRow};
use super::source::{InputLimits, STDIN, Source, limit_exceeded};
use crate::progress::Meter;

/// An opened input, its header read.
pub(super) enum Input {
    /// CSV or TSV.
    Text(csv::Reader<BufReader<Source>>),
    /// Parquet.
    #[cfg(feature = "parquet")]
    Parquet(ParquetInput),
}

impl Input {
    /// Opens `path` (standard input for `-`), detects its format and reads its
    /// header; also returns its length in bytes when known (for progress), else 0.
    pub(super) fn open(path: &Path, limits: InputLimits) -> Result<(Input, Vec<String>, u64), ReadError> {
        let open_err = |source: std::io::Error| match limit_exceeded(&source) {
            Some(limit) => ReadError::TooLarge { path: path.to_owned(), limit: limit.clone() },
            None => ReadError::Open { path: path.to_owned(), source },
        };
        let named_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        if named_parquet && path.as_os_str() != STDIN {
            return open_parquet(path, limits);
        }
        let (source, len) = Source::open(path, limits).map_err(open_err)?;
        let mut input = BufReader::with_capacity(64 << 10, source);
        let head = input.fill_buf().map_err(open_err)?;
        if named_parquet || head.starts_with(b"PAR1") {
            if path.as_os_str() == STDIN {
                return Err(ReadError::Parquet { path: path.to_owned(), problem: ParquetProblem::Stdin });
            }
            return open_parquet(path, limits);
        }
        let delimiter = sniff_delimiter(path, head);
        let mut csv =
            csv::ReaderBuilder::new().delimiter(delimiter).flexible(true).has_headers(true).from_reader(input);
        let header = csv.headers().map_err(|source| csv_error(path, 1, source))?.iter().map(str::to_owned).collect();
        Ok((Input::Text(csv), header, len))
    }

    /// What the rows' positions count.
    pub(super) fn numbering(&self) -> Numbering {
        match self {
            Input::Text(_) => Numbering::Lines,
            #[cfg(feature = "parquet")]
            Input::Parquet(_) => Numbering::Rows,
        }
    }

    /// Chooses the columns the read takes values from (indices into the header):
    /// a Parquet file decodes only those, and refuses one of a type it cannot read;
    /// a text file hands on every cell.
    #[cfg_attr(not(feature = "parquet"), allow(unused_variables))]
    pub(super) fn select(&mut self, path: &Path, used: &[usize]) -> Result<(), ReadError> {
        match self {
            Input::Text(_) => Ok(()),
            #[cfg(feature = "parquet")]
            Input::Parquet(parquet) => {
                parquet.select(used).map_err(|problem| ReadError::Parquet { path: path.to_owned(), problem })
            }
        }
    }

    /// The parsing thread: fills the recycled batches from `free` (at most
    /// [`BATCH_ROWS`] rows each) and sends them on `full`, in order, then returns,
    /// which closes `full`; an error is the last thing sent.
    pub(super) fn send_rows(self, path: &Path, full: Batches, free: Receiver<Vec<RawRow>>, progress: Arc<dyn Meter>) {
        match self {
            Input::Text(csv) => send_csv_rows(path, csv, full, free, progress),
            #[cfg(feature = "parquet")]
            Input::Parquet(parquet) => parquet.send_rows(path, full, free, progress),
        }
    }
}

#[cfg(feature = "parquet")]
fn open_parquet(path: &Path, limits: InputLimits) -> Result<(Input, Vec<String>, u64), ReadError> {
    let (parquet, header, len) = ParquetInput::open(path, limits)?;
    Ok((Input::Parquet(parquet), header, len))
}

#[cfg(not(feature = "parquet"))]
fn open_parquet(path: &Path, _: InputLimits) -> Result<(Input, Vec<String>, u64), ReadError> {
    Err(ReadError::Parquet { path: path.to_owned(), problem: ParquetProblem::NotBuilt })
}

/// The error for a failed parse at `line`: a limit of the input, or the parser's.
fn csv_error(path: &Path, line: u64, source: csv::Error) -> ReadError {
    if let csv::ErrorKind::Io(io) = source.kind()
        && let Some(limit) = limit_exceeded(io)
    {
        return ReadError::TooLarge { path: path.to_owned(), limit: limit.clone() };
    }
    ReadError::Csv { path: path.to_owned(), line, source }
}

/// `.tsv`/`.tab` files are tab-separated; otherwise a first line (in `head`, the
/// first buffered bytes) with tabs and no commas is taken as TSV; anything else is
/// CSV.
fn sniff_delimiter(path: &Path, head: &[u8]) -> u8 {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "tsv" || ext == "tab" {
        return b'\t';
    }
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if first_line.contains(&b'\t') && !first_line.contains(&b',') { b'\t' } else { b',' }
}

/// The CSV parsing thread: fills recycled batches and sends them on, in order.
fn send_csv_rows(
    path: &Path,
    mut csv: csv::Reader<BufReader<Source>>,
    full: Batches,
    free: Receiver<Vec<RawRow>>,
    progress: Arc<dyn Meter>,
) {
    let mut spare: Vec<csv::ByteRecord> = Vec::new();
    for mut batch in free {
        spare.extend(batch.drain(..).map(|row| row.record));
        while batch.len() < BATCH_ROWS {
            let mut record = spare.pop().unwrap_or_default();
            match csv.read_byte_record(&mut record) {
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    batch.push(RawRow { line, record });
                }
                Ok(false) => break,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    let _ = full.send(Err(csv_error(path, line, e)));
                    return;
                }
            }
        }
        progress.set_position(csv.position().byte());
        let done = batch.len() < BATCH_ROWS;
        if full.send(Ok(batch)).is_err() || done {
            return;
        }
    }
}
