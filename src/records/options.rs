//! What a read of one input file is asked for and how it fails: the file's
//! [`Mode`], the [`ReadOptions`], what to do with a list's [`BadRows`], and
//! [`ReadError`] (with [`ParquetProblem`] for what only a Parquet file can get
//! wrong, and the [`Numbering`] its positions are given in). The reader (`reader`), the per-row work (`row`) and the assembly in
//! file order (`sink`) all take these; none of them owns them.

use std::path::PathBuf;
use std::sync::Arc;

use super::source::{InputLimits, LimitExceeded};
use super::{ColumnError, ColumnSpec, RejectWriteError, RejectWriter};
use crate::normalize::Normalizer;
use crate::progress::Progress;

/// What a file holds, which decides the reader's rules for ids, bad rows and the
/// extra columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Records to match: two records with the same id refuse the file
    /// ([`ReadError::DuplicateId`]), because match outputs name records by id.
    Match,
    /// Records whose ids may repeat (a member's several rows in a token export):
    /// repeats are counted in [`ReadStats::duplicate_ids`](super::ReadStats::duplicate_ids).
    Export,
    /// A measurement's outcomes: one row per purchase, so ids may repeat, and
    /// `value_column` holds one non-negative integer (at most
    /// [`MAX_VALUE`](super::MAX_VALUE)) per record; a row whose value is missing or
    /// invalid is a bad row, counted and reported.
    Outcomes {
        /// The value column's name.
        value_column: String,
    },
    /// A measurement's exposures: one row per impression, so ids may repeat, and
    /// `group_column`, when given, holds each record's group label (e.g.
    /// `test`/`control`); a row with an empty label is a bad row.
    Exposures {
        /// The group column's name; `None`: one group.
        group_column: Option<String>,
    },
    /// A list (opt-outs, suppressions) rather than records: the identifier columns
    /// are optional when there is an id column, an empty id is no error, and a
    /// repeat is harmless. With [`BadRows::Refuse`] the file is refused at its first
    /// bad row or rejected identifier ([`ReadError::Incomplete`]) instead of counting
    /// and reporting it: lists that protect people are read this way unless the
    /// operator explicitly chooses to skip bad rows.
    List(BadRows),
}

/// What to do with the rows of a list file that cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadRows {
    /// Refuse the list (the default): an opt-out that cannot be read must not turn
    /// into a member who is matched.
    #[default]
    Refuse,
    /// Skip them, counting each in the list's statistics (the operator's explicit
    /// choice, e.g. `--skip-bad-list-rows`).
    Skip,
}

impl BadRows {
    /// [`BadRows::Skip`] when the operator asked for it, else [`BadRows::Refuse`].
    pub fn skip_if(skip: bool) -> BadRows {
        if skip { BadRows::Skip } else { BadRows::Refuse }
    }
}

impl Mode {
    pub(super) fn list(&self) -> bool {
        matches!(self, Mode::List(_))
    }
}

/// How to read one input file.
pub struct ReadOptions {
    /// What the file holds (default: [`Mode::Match`]).
    pub mode: Mode,
    /// Which columns hold the id, identifiers and region (default: detect from the header).
    pub columns: ColumnSpec,
    /// The normalization profile applied to every identifier.
    pub normalizer: Normalizer,
    /// Where to report rejects, if anywhere.
    pub rejects: Option<RejectWriter>,
    /// Where to report how many of the file's bytes have been read, if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
    /// Size limits on the input ([`InputLimits::default`]).
    pub limits: InputLimits,
}

impl ReadOptions {
    /// Options for reading `mode` under `normalizer`: detected columns, no reject
    /// report, no progress reported, the default limits.
    pub fn new(normalizer: Normalizer, mode: Mode) -> ReadOptions {
        ReadOptions {
            mode,
            columns: ColumnSpec::default(),
            normalizer,
            rejects: None,
            progress: None,
            limits: InputLimits::default(),
        }
    }
}

/// What the positions of a file's rows count, in errors, reject reports and the
/// record ids of a file without an id column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Numbering {
    /// Lines of a CSV/TSV file: the header is line 1, a row is named by the line it
    /// starts on.
    #[default]
    Lines,
    /// Rows of a Parquet file, from 1 across its row groups (it has no header row).
    Rows,
}

impl std::fmt::Display for Numbering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Numbering::Lines => "line",
            Numbering::Rows => "row",
        })
    }
}

/// What is wrong with a Parquet file (see [`ReadError::Parquet`]). Row groups are
/// counted from 0, as Parquet tools count them; rows from 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetProblem {
    /// The file is Parquet (by its `.parquet` name or its `PAR1` magic), and this
    /// build has no Parquet reader.
    #[error(
        "this is a Parquet file (named .parquet, or starting with the PAR1 magic), and this idmatch was built without Parquet support (cargo feature `parquet`)"
    )]
    NotBuilt,
    /// Standard input starts with the `PAR1` magic: Parquet needs a file.
    #[error("a Parquet file cannot be read from standard input (its footer, at the end, is read first): give its path")]
    Stdin,
    /// The footer (schema and row groups) cannot be read: truncated, damaged, or
    /// not Parquet at all.
    #[cfg(feature = "parquet")]
    #[error("not a readable Parquet file (truncated, damaged, or not Parquet at all): {0}")]
    Footer(parquet::errors::ParquetError),
    /// A column the read uses is of a type idmatch does not read.
    #[error(
        "column `{column}` is {found}; the columns idmatch reads must hold strings (UTF8) or integers (a null is a blank cell)"
    )]
    ColumnType {
        /// The column's name, as in the schema.
        column: String,
        /// Its type, as Parquet names it.
        found: String,
    },
    /// A row group, or a page of one of its columns, could not be decoded.
    #[cfg(feature = "parquet")]
    #[error(
        "row group {row_group}{column}, from row {row}: {source}",
        column = if column.is_empty() { String::new() } else { format!(", column `{column}`") }
    )]
    Decode {
        /// The row group, from 0.
        row_group: usize,
        /// The column's name, as in the schema; empty when the row group itself failed.
        column: String,
        /// The first row of the batch being read, from 1 across the file.
        row: u64,
        /// The decoder's error.
        source: parquet::errors::ParquetError,
    },
    /// A column holds fewer rows than its row group's metadata says.
    #[error("row group {row_group}, column `{column}`: the column ends at row {row}, before the row group does")]
    ShortColumn {
        /// The row group, from 0.
        row_group: usize,
        /// The column's name, as in the schema.
        column: String,
        /// The first row the column does not have, from 1 across the file.
        row: u64,
    },
    /// The Parquet decoder panicked (a damaged file it does not catch).
    #[error(
        "the Parquet decoder failed on {part} (the file is damaged)",
        part = row_group.map_or_else(|| "the footer".to_owned(), |g| format!("row group {g}"))
    )]
    Panicked {
        /// The row group, from 0; `None`: the footer.
        row_group: Option<usize>,
    },
}

/// Why a file could not be read. Identifier-level problems are not errors: they are
/// counted and reported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The input went past one of its size limits ([`InputLimits`]).
    #[error("{path}: {limit}")]
    TooLarge {
        /// The input file.
        path: PathBuf,
        /// Which limit, and where.
        limit: LimitExceeded,
    },
    /// The file could not be opened or its first bytes read.
    #[error("{path}: {source}")]
    Open {
        /// The input file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A Parquet file could not be read.
    #[error("{path}: {problem}")]
    Parquet {
        /// The input file.
        path: PathBuf,
        /// What is wrong with it.
        problem: ParquetProblem,
    },
    /// The CSV parser failed (an I/O error while reading, or malformed CSV).
    #[error("{path}: line {line}: {source}")]
    Csv {
        /// The input file.
        path: PathBuf,
        /// Line where the parser stopped (1 for the header; 0 if unknown).
        line: u64,
        /// The parser's error.
        source: csv::Error,
    },
    /// The file has no header row, or only blank header names.
    #[error("{path}: the file is empty (a header row is required)")]
    NoHeader {
        /// The input file.
        path: PathBuf,
    },
    /// The header does not give usable columns for the [`ColumnSpec`].
    #[error("{path}: header: {source}")]
    Columns {
        /// The input file.
        path: PathBuf,
        /// What is wrong with the columns.
        source: ColumnError,
    },
    /// The file has more records than a `u32` record index can address.
    #[error("{path}: more than {max} records", max = u32::MAX)]
    TooManyRecords {
        /// The input file.
        path: PathBuf,
    },
    /// A quoted field is never closed ([`RowProblem::UnclosedQuote`](super::RowProblem::UnclosedQuote)); always refused.
    #[error(
        "{path}: line {line}: a quoted field opened on this line is never closed (unbalanced `\"`), so the rest of the file would be read as one field; fix the quoting and read the file again"
    )]
    UnclosedQuote {
        /// The input file.
        path: PathBuf,
        /// Line of the row where the unclosed field starts.
        line: u64,
    },
    /// With [`Mode::List`]`(`[`BadRows::Refuse`]`)`: the first bad row or rejected identifier.
    #[error(
        "{path}: {numbering} {line}{column}: {reason}; this file must be read completely, so nothing was used (fix the row, or explicitly choose to skip bad rows)",
        column = if column.is_empty() { String::new() } else { format!(", column `{column}`") }
    )]
    Incomplete {
        /// The input file.
        path: PathBuf,
        /// What `line` counts.
        numbering: Numbering,
        /// Line (or Parquet row) of the offending row.
        line: u64,
        /// The offending column's (cleaned) header name; empty for a whole-row problem.
        column: String,
        /// The machine-readable reason (a [`RowProblem`](super::RowProblem) or reject code).
        reason: &'static str,
    },
    /// With [`Mode::Match`]: the earliest row whose id repeats an earlier row's id.
    #[error(
        "{path}: {numbering} {line}: the record id repeats the id of {numbering} {first_line}; match results name records by id, so ids must be unique (merge or renumber the rows)"
    )]
    DuplicateId {
        /// The input file.
        path: PathBuf,
        /// What `line` and `first_line` count.
        numbering: Numbering,
        /// Line (or Parquet row) of the repeating row.
        line: u64,
        /// Line (or Parquet row) of the row whose id it repeats.
        first_line: u64,
    },
    /// The reject report could not be written.
    #[error(transparent)]
    Rejects(#[from] RejectWriteError),
    /// [`read_rows`]' callback asked to stop (the caller knows why).
    #[error("{path}: reading stopped before the end of the file")]
    Stopped {
        /// The input file.
        path: PathBuf,
    },
}
