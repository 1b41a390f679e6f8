//! Reading a CSV/TSV file into a [`RecordSet`].
//!
//! A reader thread parses the file into batches of raw rows (recycled, so parsing
//! allocates little); the calling thread normalizes and tokenizes each batch on all
//! cores with rayon and appends the results in file order.
//!
//! [`read_rows`] runs the same pipeline (the same columns, rules, rejects and
//! counts) without building a set: it hands each record to a callback and keeps
//! nothing, so its memory does not grow with the file.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rayon::prelude::*;

use super::columns::clean;
use super::source::{InputLimits, LimitExceeded, Source, limit_exceeded};
use super::{
    ColumnError, ColumnMap, ColumnSpec, Entry, FilterDigests, MAX_VALUE, ReadStats, RecordSet, RejectWriteError,
    RejectWriter, RowProblem,
};
use crate::key::Key;
use crate::normalize::{Kind, Normalizer, Region, Reject, parse_region};
use crate::progress::{self, Meter, Progress, Unit};
use crate::token::{Label, Token, Tokenizer};

/// Rows per batch handed from the parser thread to the workers.
const BATCH_ROWS: usize = 8192;
/// Rows per worker task: each task's results share a few vectors ([`Chunk`]), so
/// reading allocates per chunk, not per row.
const CHUNK_ROWS: usize = 256;

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
    fn list(&self) -> bool {
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
    /// A quoted field is never closed ([`RowProblem::UnclosedQuote`]); always refused.
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
        "{path}: line {line}{column}: {reason}; this file must be read completely, so nothing was used (fix the row, or explicitly choose to skip bad rows)",
        column = if column.is_empty() { String::new() } else { format!(", column `{column}`") }
    )]
    Incomplete {
        /// The input file.
        path: PathBuf,
        /// Line of the offending row.
        line: u64,
        /// The offending column's (cleaned) header name; empty for a whole-row problem.
        column: String,
        /// The machine-readable reason (a [`RowProblem`] or reject code).
        reason: &'static str,
    },
    /// With [`Mode::Match`]: the earliest row whose id repeats an earlier row's id.
    #[error(
        "{path}: line {line}: the record id repeats the id of line {first_line}; match results name records by id, so ids must be unique (merge or renumber the rows)"
    )]
    DuplicateId {
        /// The input file.
        path: PathBuf,
        /// Line of the repeating row.
        line: u64,
        /// Line of the row whose id it repeats.
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

/// One record as [`read_rows`] hands it on: borrowed from the reader's buffers,
/// valid only during the call.
pub struct Row<'r> {
    /// The line the row starts on.
    pub line: u64,
    /// The record id, trimmed (empty when a list row leaves it empty); `None` when
    /// the file has no id column.
    pub id: Option<&'r str>,
    /// The region of the row's own region column, when it has a valid one (the
    /// default region of [`ReadOptions::normalizer`] applies otherwise).
    pub region: Option<Region>,
    identifiers: &'r [(Kind, Token, Option<Token>)],
    raw_text: &'r str,
    raw_spans: &'r [(usize, usize)],
}

impl<'r> Row<'r> {
    /// The row's valid identifiers, each once, as written in the file (not
    /// normalized: they normalized without a reject under the reader's rules).
    pub fn identifiers(&self) -> impl Iterator<Item = (Kind, &'r str)> + '_ {
        let text = self.raw_text;
        self.identifiers.iter().zip(self.raw_spans).map(move |(&(kind, _, _), &(from, to))| (kind, &text[from..to]))
    }
}

/// The callback of [`read_rows`].
type Visit<'v> = dyn FnMut(&Row<'_>) -> ControlFlow<()> + Send + 'v;

/// A parsed row and the line it starts on.
struct RawRow {
    line: u64,
    record: csv::ByteRecord,
}

/// What a worker made of a run of consecutive rows: one [`RowOut`] per row, and
/// the rows' ids, identifiers, rejects and group labels in shared vectors, each row's
/// part ending where its `RowOut` says (and starting where the previous row's ends).
#[derive(Default)]
struct Chunk {
    rows: Vec<RowOut>,
    /// The ids, concatenated.
    ids: String,
    /// (kind, token, filter digest)
    identifiers: Vec<(Kind, Token, Option<Token>)>,
    /// (column, reason, raw value if the report wants values)
    rejects: Vec<(usize, Reject, Option<String>)>,
    /// The group labels, concatenated.
    groups: String,
    /// The valid identifiers as written, concatenated (only for [`read_rows`]).
    raw_text: String,
    /// Where each of `identifiers` is in `raw_text` (only for [`read_rows`]).
    raw_spans: Vec<(usize, usize)>,
}

/// Where one row's parts end in its [`Chunk`]'s vectors.
#[derive(Clone, Copy, Default)]
struct Ends {
    id: usize,
    identifiers: usize,
    rejects: usize,
    group: usize,
}

/// What a worker made of one row (its id, identifiers, rejects and group label are
/// in the [`Chunk`]).
struct RowOut {
    line: u64,
    /// Why the row is not a record, if it is not.
    problem: Option<RowProblem>,
    ends: Ends,
    /// The record id's filter digest, when a digester is set.
    id_digest: Option<Token>,
    blank_cells: u64,
    /// Valid identifiers by kind (emails, phones), repeats within the row included.
    valid: [u64; 2],
    /// Identifiers repeated within this row (e.g. the same email in two columns).
    repeated: u64,
    /// The value column's value, when there is one.
    value: Option<u64>,
    /// Whether the row has a group label (when there is a group column).
    group: bool,
    /// The row's own valid region, when it has a region column.
    region: Option<Region>,
}

/// One row's parts, borrowed from its [`Chunk`].
struct RowParts<'c> {
    out: &'c RowOut,
    id: &'c str,
    identifiers: &'c [(Kind, Token, Option<Token>)],
    rejects: &'c [(usize, Reject, Option<String>)],
    group: Option<&'c str>,
    raw_text: &'c str,
    /// One span per identifier when the raw values are kept, else empty.
    raw_spans: &'c [(usize, usize)],
}

impl Chunk {
    /// Where the parts pushed so far end.
    fn ends(&self) -> Ends {
        Ends {
            id: self.ids.len(),
            identifiers: self.identifiers.len(),
            rejects: self.rejects.len(),
            group: self.groups.len(),
        }
    }

    /// The rows with their parts, in order.
    fn parts(&self) -> impl Iterator<Item = RowParts<'_>> {
        let mut start = Ends::default();
        self.rows.iter().map(move |out| {
            let (from, to) = (start, out.ends);
            start = to;
            RowParts {
                out,
                id: &self.ids[from.id..to.id],
                identifiers: &self.identifiers[from.identifiers..to.identifiers],
                rejects: &self.rejects[from.rejects..to.rejects],
                group: out.group.then(|| &self.groups[from.group..to.group]),
                raw_text: &self.raw_text,
                raw_spans: self.raw_spans.get(from.identifiers..to.identifiers).unwrap_or_default(),
            }
        })
    }
}

/// Reads `path` into a [`RecordSet`] of tokens under `tokenizer`, without
/// [`FilterDigests`]: a set that an opt-out or suppression filter will check is read
/// by `crate::prepare`, which keys it for the filter in the same pass.
pub fn read(path: &Path, tokenizer: &Tokenizer, options: ReadOptions) -> Result<RecordSet, ReadError> {
    read_with(path, tokenizer, None, options, None)
}

/// Reads `path` as [`read`] does, also keying every record id and identifier under
/// `digester` ([`FilterDigests`]), the key of the filter that will check the set.
pub(crate) fn read_digested(
    path: &Path,
    tokenizer: &Tokenizer,
    digester: &Tokenizer,
    options: ReadOptions,
) -> Result<RecordSet, ReadError> {
    read_with(path, tokenizer, Some(digester), options, None)
}

/// Reads `path` as [`read`] does (the same columns, normalization, rejects, reject
/// report, limits and [`BadRows`]) but keeps nothing: each record is
/// handed to `visit` ([`Row`]: its id, region and valid identifiers as written) in
/// file order, and only the counts are returned, so memory does not grow with the
/// file. `visit` returning [`ControlFlow::Break`] ends the read with
/// [`ReadError::Stopped`].
///
/// What needs the whole file is left out: ids are not checked for repeats (not
/// even under [`Mode::Match`]), and [`ReadStats::duplicate_identifiers`] counts only
/// repeats within a row.
pub fn read_rows(
    path: &Path,
    options: ReadOptions,
    visit: &mut (dyn FnMut(&Row<'_>) -> ControlFlow<()> + Send),
) -> Result<ReadStats, ReadError> {
    // The tokens only find an identifier repeated within its row; they never leave
    // this call, so any key does.
    let tokenizer = Tokenizer::new(&Key::from_bytes([0; 32]));
    read_with(path, &tokenizer, None, options, Some(visit)).map(|set| set.stats)
}

fn read_with(
    path: &Path,
    tokenizer: &Tokenizer,
    digester: Option<&Tokenizer>,
    mut options: ReadOptions,
    visit: Option<&mut Visit<'_>>,
) -> Result<RecordSet, ReadError> {
    let open_err = |source: std::io::Error| match limit_exceeded(&source) {
        Some(limit) => ReadError::TooLarge { path: path.to_owned(), limit: limit.clone() },
        None => ReadError::Open { path: path.to_owned(), source },
    };
    let (source, file_len) = Source::open(path, options.limits).map_err(open_err)?;
    let mut input = BufReader::with_capacity(64 << 10, source);
    let delimiter = sniff_delimiter(path, &mut input).map_err(open_err)?;
    let mut csv = csv::ReaderBuilder::new().delimiter(delimiter).flexible(true).has_headers(true).from_reader(input);
    let header: Vec<String> =
        csv.headers().map_err(|source| csv_error(path, 1, source))?.iter().map(str::to_owned).collect();
    if header.is_empty() || header.iter().all(|h| h.trim().is_empty()) {
        return Err(ReadError::NoHeader { path: path.to_owned() });
    }
    let columns = options
        .columns
        .resolve(&header, !options.mode.list())
        .map_err(|source| ReadError::Columns { path: path.to_owned(), source })?;

    let extra =
        resolve_extra(&columns, &options).map_err(|source| ReadError::Columns { path: path.to_owned(), source })?;

    let progress =
        progress::start(options.progress.as_ref(), &format!("reading {}", path.display()), file_len, Unit::Bytes);

    let keep_values = options.rejects.as_ref().is_some_and(RejectWriter::include_values);
    let keep_raw = visit.is_some();
    let mut sink = Sink {
        set: RecordSet::new(options.normalizer.profile(), columns.id.is_some()),
        digests: digester.map(|_| FilterDigests::default()),
        ids: (columns.id.is_some() && !options.mode.list() && !keep_raw).then(Vec::new),
        columns: &columns,
        extra,
        group_index: std::collections::HashMap::new(),
        rejects: options.rejects.take(),
        path,
        complete: options.mode == Mode::List(BadRows::Refuse),
        visit,
    };

    let (full_tx, full_rx) = sync_channel::<Result<Vec<RawRow>, (u64, csv::Error)>>(2);
    let (free_tx, free_rx) = sync_channel::<Vec<RawRow>>(4);
    for _ in 0..3 {
        let _ = free_tx.send(Vec::with_capacity(BATCH_ROWS));
    }
    let worker = Worker {
        list: options.mode.list(),
        columns: &columns,
        extra,
        normalizer: &options.normalizer,
        tokenizer,
        digester,
        keep_values,
        keep_raw,
    };
    std::thread::scope(|scope| -> Result<(), ReadError> {
        // Both channel ends this side holds are owned by this closure, so any early
        // return (a bad row, a failed reject write) drops them and the parser thread,
        // waiting on either, ends; the scope can then join it instead of hanging.
        let (full_rx, free_tx) = (full_rx, free_tx);
        let bar = progress.clone();
        scope.spawn(move || parse_rows(csv, full_tx, free_rx, bar));
        // Batch n+1 is normalized on the pool while this thread appends batch n.
        let mut pending: Vec<Chunk> = Vec::new();
        let append = |sink: &mut Sink, chunks: &[Chunk]| {
            chunks.iter().flat_map(Chunk::parts).try_for_each(|row| sink.append(row))
        };
        for batch in full_rx {
            let batch = batch.map_err(|(line, source)| csv_error(path, line, source))?;
            let (outs, appended) = rayon::join(
                || batch.par_chunks(CHUNK_ROWS).map_init(String::new, |buf, rows| worker.chunk(rows, buf)).collect(),
                || append(&mut sink, &pending),
            );
            appended?;
            pending = outs;
            let _ = free_tx.send(batch);
        }
        append(&mut sink, &pending)
    })?;
    progress.finish();
    let Sink { mut set, digests, ids, rejects, .. } = sink;
    set.stats.duplicate_identifiers += count_duplicates(&set.entries);
    if let Some(ids) = ids {
        let (count, first) = duplicate_ids(&set, ids);
        set.stats.duplicate_ids = count;
        if let (Mode::Match, Some((line, first_line))) = (&options.mode, first) {
            return Err(ReadError::DuplicateId { path: path.to_owned(), line, first_line });
        }
    }
    set.filter_digests = digests;
    if let Some(rejects) = rejects {
        rejects.finish()?;
    }
    Ok(set)
}

/// The value and group columns, resolved against the header.
#[derive(Clone, Copy, Debug, Default)]
struct Extra {
    value: Option<usize>,
    group: Option<usize>,
}

/// Finds the value or group column the mode names: it must exist and serve no other
/// role.
fn resolve_extra(columns: &ColumnMap, options: &ReadOptions) -> Result<Extra, ColumnError> {
    let find = |wanted: Option<&String>| -> Result<Option<usize>, ColumnError> {
        let Some(wanted) = wanted else { return Ok(None) };
        let wanted = clean(wanted);
        let index =
            columns.names.iter().position(|n| *n == wanted).ok_or_else(|| ColumnError::NotFound(wanted.clone()))?;
        if columns.used().any(|c| c == index) {
            return Err(ColumnError::Ambiguous(wanted));
        }
        Ok(Some(index))
    };
    let (value, group) = match &options.mode {
        Mode::Outcomes { value_column } => (find(Some(value_column))?, None),
        Mode::Exposures { group_column } => (None, find(group_column.as_ref())?),
        Mode::Match | Mode::Export | Mode::List(_) => (None, None),
    };
    Ok(Extra { value, group })
}

/// A value cell: a non-negative decimal integer of at most [`MAX_VALUE`].
fn parse_value(cell: &[u8]) -> Result<u64, RowProblem> {
    let digits = cell.trim_ascii();
    if digits.is_empty() {
        return Err(RowProblem::MissingValue);
    }
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RowProblem::BadValue);
    }
    let mut value: u64 = 0;
    for &d in digits {
        value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    if value > MAX_VALUE { Err(RowProblem::ValueTooLarge) } else { Ok(value) }
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

/// `.tsv`/`.tab` files are tab-separated; otherwise a first line with tabs and no
/// commas is taken as TSV; anything else is CSV.
fn sniff_delimiter(path: &Path, input: &mut BufReader<Source>) -> std::io::Result<u8> {
    use std::io::BufRead;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "tsv" || ext == "tab" {
        return Ok(b'\t');
    }
    let head = input.fill_buf()?;
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    Ok(if first_line.contains(&b'\t') && !first_line.contains(&b',') { b'\t' } else { b',' })
}

/// The parser thread: fills recycled batches and sends them on, in order.
fn parse_rows<R: Read>(
    mut csv: csv::Reader<R>,
    full: SyncSender<Result<Vec<RawRow>, (u64, csv::Error)>>,
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
                    let _ = full.send(Err((line, e)));
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

/// Per-row work, shared by the rayon workers.
struct Worker<'a> {
    list: bool,
    columns: &'a ColumnMap,
    extra: Extra,
    normalizer: &'a Normalizer,
    tokenizer: &'a Tokenizer,
    digester: Option<&'a Tokenizer>,
    keep_values: bool,
    /// Keep each valid identifier as written ([`read_rows`]).
    keep_raw: bool,
}

impl Worker<'_> {
    fn chunk(&self, rows: &[RawRow], buf: &mut String) -> Chunk {
        let mut chunk = Chunk { rows: Vec::with_capacity(rows.len()), ..Chunk::default() };
        for row in rows {
            let mut out = self.row(row, buf, &mut chunk);
            out.ends = chunk.ends();
            chunk.rows.push(out);
        }
        chunk
    }

    /// Reads one row, pushing its parts onto `chunk` (the caller records where they end).
    fn row(&self, row: &RawRow, buf: &mut String, chunk: &mut Chunk) -> RowOut {
        let record = &row.record;
        let first_identifier = chunk.identifiers.len();
        let mut out = RowOut {
            line: row.line,
            problem: None,
            ends: Ends::default(),
            id_digest: None,
            blank_cells: 0,
            valid: [0; 2],
            repeated: 0,
            value: None,
            group: false,
            region: None,
        };
        // Ids, identifiers and regions never span lines: a line break in one of
        // them, or in a row of the wrong length, is a quote that was never closed.
        let spans_lines = |cell: &[u8]| cell.contains(&b'\n') || cell.contains(&b'\r');
        if record.len() != self.columns.names.len() {
            out.problem = Some(if record.iter().any(spans_lines) {
                RowProblem::UnclosedQuote
            } else {
                RowProblem::WrongFieldCount
            });
            return out;
        }
        let extra = [self.extra.value, self.extra.group];
        if self.columns.used().chain(extra.into_iter().flatten()).any(|col| spans_lines(&record[col])) {
            out.problem = Some(RowProblem::UnclosedQuote);
            return out;
        }
        let id = match self.columns.id {
            None => {
                use std::fmt::Write;
                let start = chunk.ids.len();
                let _ = write!(chunk.ids, "{}", row.line);
                &chunk.ids[start..]
            }
            Some(col) => match std::str::from_utf8(&record[col]) {
                Err(_) => {
                    out.problem = Some(RowProblem::BadEncoding);
                    return out;
                }
                Ok(id) if id.trim().is_empty() && !self.list => {
                    out.problem = Some(RowProblem::MissingId);
                    return out;
                }
                Ok(id) => {
                    chunk.ids.push_str(id.trim());
                    id.trim()
                }
            },
        };
        if let Some(col) = self.extra.value {
            match parse_value(&record[col]) {
                Ok(value) => out.value = Some(value),
                Err(problem) => {
                    out.problem = Some(problem);
                    return out;
                }
            }
        }
        if let Some(col) = self.extra.group {
            match std::str::from_utf8(&record[col]).map(str::trim) {
                Ok(label) if !label.is_empty() => {
                    chunk.groups.push_str(label);
                    out.group = true;
                }
                _ => {
                    out.problem = Some(RowProblem::MissingGroup);
                    return out;
                }
            }
        }
        // Line numbers are not member ids: without an id column the record gets a
        // digest under a label no filter entry uses, so a filtered id `42` (an
        // opt-out by member id) can never remove line 42.
        let label = if self.columns.id.is_some() { Label::Id } else { Label::Line };
        out.id_digest = self.digester.map(|d| d.token(label, id));
        let region: Result<Option<Region>, Reject> = match self.columns.region.map(|c| &record[c]) {
            None => Ok(None),
            Some(cell) if cell.trim_ascii().is_empty() => Ok(None),
            Some(cell) => std::str::from_utf8(cell).map_err(|_| Reject::BadRegion).and_then(parse_region).map(Some),
        };
        out.region = region.ok().flatten();
        for &(col, kind) in &self.columns.identifiers {
            let cell = &record[col];
            if cell.trim_ascii().is_empty() {
                out.blank_cells += 1;
                continue;
            }
            let result = match std::str::from_utf8(cell) {
                Err(_) => Err(Reject::BadEncoding),
                Ok(text) => match (kind, region) {
                    (Kind::Phone, Err(reject)) => Err(reject),
                    (_, region) => self.normalizer.normalize_into(kind, text, region.ok().flatten(), buf),
                },
            };
            match result {
                Ok(()) => {
                    let token = self.tokenizer.token(kind.into(), buf);
                    out.valid[kind as usize] += 1;
                    if chunk.identifiers[first_identifier..].iter().any(|&(_, t, _)| t == token) {
                        out.repeated += 1;
                        continue;
                    }
                    let digest = self.digester.map(|d| d.token(kind.into(), buf));
                    chunk.identifiers.push((kind, token, digest));
                    if self.keep_raw {
                        // Valid UTF-8: it normalized.
                        let start = chunk.raw_text.len();
                        chunk.raw_text.push_str(&String::from_utf8_lossy(cell));
                        chunk.raw_spans.push((start, chunk.raw_text.len()));
                    }
                }
                Err(reason) => {
                    let value = self.keep_values.then(|| String::from_utf8_lossy(cell).into_owned());
                    chunk.rejects.push((col, reason, value));
                }
            }
        }
        out
    }
}

/// Where worker results are appended, in file order.
struct Sink<'a, 'v> {
    set: RecordSet,
    digests: Option<FilterDigests>,
    /// `(hash of id, record, line)` per record, when ids are checked for repeats.
    ids: Option<Vec<(u64, u32, u32)>>,
    columns: &'a ColumnMap,
    extra: Extra,
    /// Group label → index into the set's group names.
    group_index: std::collections::HashMap<String, u32>,
    rejects: Option<RejectWriter>,
    path: &'a Path,
    complete: bool,
    /// [`read_rows`]' callback: records go to it instead of into the set.
    visit: Option<&'a mut Visit<'v>>,
}

impl Sink<'_, '_> {
    fn incomplete(&self, line: u64, column: Option<usize>, reason: &'static str) -> ReadError {
        let column = column.map_or_else(String::new, |c| self.columns.names[c].clone());
        ReadError::Incomplete { path: self.path.to_owned(), line, column, reason }
    }

    /// Appends one worker result to the set.
    fn append(&mut self, row: RowParts<'_>) -> Result<(), ReadError> {
        let columns = self.columns;
        let RowParts { out, id, identifiers, rejects: row_rejects, group, raw_text, raw_spans } = row;
        match out.problem {
            None => {}
            Some(RowProblem::UnclosedQuote) => {
                return Err(ReadError::UnclosedQuote { path: self.path.to_owned(), line: out.line });
            }
            Some(problem) => {
                let column = match problem {
                    RowProblem::WrongFieldCount => None,
                    RowProblem::MissingValue | RowProblem::BadValue | RowProblem::ValueTooLarge => self.extra.value,
                    RowProblem::MissingGroup => self.extra.group,
                    _ => columns.id,
                };
                if self.complete {
                    return Err(self.incomplete(out.line, column, problem.code()));
                }
                let stats = &mut self.set.stats;
                stats.rows += 1;
                stats.blank_cells += out.blank_cells;
                *stats.bad_rows.entry(problem.code()).or_default() += 1;
                if let Some(rejects) = &mut self.rejects {
                    rejects.write(out.line, column.map_or("", |c| columns.names[c].as_str()), problem.code(), None)?;
                }
                return Ok(());
            }
        }
        if let (true, Some((col, reason, _))) = (self.complete, row_rejects.first()) {
            return Err(self.incomplete(out.line, Some(*col), reason.code()));
        }
        if self.set.id_ends.len() >= u32::MAX as usize {
            return Err(ReadError::TooManyRecords { path: self.path.to_owned() });
        }
        let stats = &mut self.set.stats;
        stats.rows += 1;
        stats.blank_cells += out.blank_cells;
        stats.duplicate_identifiers += out.repeated;
        stats.records += 1;
        for &(_, reason, _) in row_rejects {
            *stats.rejected.entry(reason.code()).or_default() += 1;
        }
        if let Some(rejects) = &mut self.rejects {
            for (col, reason, value) in row_rejects {
                rejects.write(out.line, &columns.names[*col], reason.code(), value.as_deref())?;
            }
        }
        if identifiers.is_empty() {
            stats.records_without_identifiers += 1;
        }
        for kind in Kind::ALL {
            if out.valid[kind as usize] > 0 {
                *stats.identifiers.entry(kind.label()).or_default() += out.valid[kind as usize];
            }
        }
        if let Some(visit) = &mut self.visit {
            let row = Row {
                line: out.line,
                id: columns.id.map(|_| id),
                region: out.region,
                identifiers,
                raw_text,
                raw_spans,
            };
            return match visit(&row) {
                ControlFlow::Continue(()) => Ok(()),
                ControlFlow::Break(()) => Err(ReadError::Stopped { path: self.path.to_owned() }),
            };
        }
        let record = self.set.push_record(id);
        if let Some(value) = out.value {
            self.set.values.push(value);
        }
        if let Some(label) = group {
            let index = match self.group_index.get(label) {
                Some(&index) => index,
                None => {
                    let index = self.set.group_names.len() as u32;
                    self.set.group_names.push(label.to_owned());
                    self.group_index.insert(label.to_owned(), index);
                    index
                }
            };
            self.set.groups.push(index);
        }
        if let Some(ids) = &mut self.ids {
            ids.push((ID_HASHER.hash_one(id), record, u32::try_from(out.line).unwrap_or(u32::MAX)));
        }
        if let (Some(digests), Some(id_digest)) = (&mut self.digests, out.id_digest) {
            digests.ids.push(id_digest);
            digests.entries.extend(identifiers.iter().filter_map(|&(_, _, d)| d));
        }
        self.set.entries.extend(identifiers.iter().map(|&(kind, token, _)| Entry { token, record, kind }));
        Ok(())
    }
}

/// Hashes record ids to find repeats (a fixed seed: the hashes never leave the
/// process and a collision only costs one string comparison).
static ID_HASHER: BuildHasherDefault<DefaultHasher> = BuildHasherDefault::new();

/// Records whose id equals an earlier record's, and the first such record's line
/// with the line of the record it repeats.
fn duplicate_ids(set: &RecordSet, mut ids: Vec<(u64, u32, u32)>) -> (u64, Option<(u64, u64)>) {
    ids.par_sort_unstable();
    let mut count = 0;
    let mut first: Option<(u64, u64)> = None;
    for run in ids.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        for (j, &(_, record, line)) in run.iter().enumerate().skip(1) {
            // Sorted by record within a run: earlier entries are earlier rows.
            if let Some(&(_, _, first_line)) = run[..j].iter().find(|e| set.id(e.1) == set.id(record)) {
                count += 1;
                if first.is_none_or(|(l, _)| u64::from(line) < l) {
                    first = Some((u64::from(line), u64::from(first_line)));
                }
            }
        }
    }
    (count, first)
}

/// Identifiers that equal one seen earlier: total minus distinct tokens.
fn count_duplicates(entries: &[Entry]) -> u64 {
    let prefix = |t: &Token| u64::from_be_bytes(t.head()[..8].try_into().unwrap_or_default());
    let order = crate::token::group_equal(entries.len(), |i| entries[i].token, prefix);
    let distinct = order.chunk_by(|a, b| a.0 == b.0 && entries[a.1].token == entries[b.1].token).count();
    (entries.len() - distinct) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Profile;

    /// A [`Progress`] (and its meters) that logs what it is told.
    #[derive(Clone, Debug, Default)]
    struct Logged(Arc<std::sync::Mutex<Vec<String>>>);

    impl Logged {
        fn log(&self, event: String) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Progress for Logged {
        fn start(&self, label: &str, total: u64, unit: Unit) -> Arc<dyn Meter> {
            self.log(format!("start {label} {total} {unit:?}"));
            Arc::new(self.clone())
        }
    }

    impl Meter for Logged {
        fn set_total(&self, total: u64) {
            self.log(format!("total {total}"));
        }
        fn set_position(&self, done: u64) {
            self.log(format!("at {done}"));
        }
        fn advance(&self, units: u64) {
            self.log(format!("advance {units}"));
        }
        fn finish(&self) {
            self.log("finish".to_owned());
        }
    }

    #[test]
    fn reading_reports_the_bytes_read_to_the_callers_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.csv");
        let text = "id,email\n1,a@example.com\n2,b@example.com\n";
        std::fs::write(&path, text).unwrap();
        let logged = Logged::default();
        let mut options = ReadOptions::new(Normalizer::new(Profile::IdmatchV1, None), Mode::Match);
        options.progress = Some(Arc::new(logged.clone()));
        let set = read(&path, &Tokenizer::new(&Key::from_bytes([1; 32])), options).unwrap();
        assert_eq!(set.len(), 2);
        let log = logged.0.lock().unwrap().clone();
        let len = text.len();
        assert_eq!(
            log,
            [format!("start reading {} {len} Bytes", path.display()), format!("at {len}"), "finish".into()]
        );
    }

    #[test]
    fn read_rows_hands_on_each_record_as_written_and_counts_as_read_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        let text = "member_id,email,phone,country\n\
                    m1, John.Doe@Example.com ,(415) 555-0100,US\n\
                    m2,not-an-email,020 7183 8750,GB\n\
                    ,a@example.com,a@example.com,\n\
                    m4,x@example.com,+1 415 555 0101,XX\n\
                    m5,too,many,fields,here\n";
        std::fs::write(&path, text).unwrap();
        let options = || {
            ReadOptions::new(
                Normalizer::new(Profile::IdmatchV1, Region::from_code("US").ok()),
                Mode::List(BadRows::Skip),
            )
        };
        /// Line, id, region, identifiers.
        type Seen = (u64, Option<String>, Option<String>, Vec<(Kind, String)>);
        let mut rows: Vec<Seen> = Vec::new();
        let stats = read_rows(&path, options(), &mut |row: &Row<'_>| {
            let identifiers = row.identifiers().map(|(k, v)| (k, v.to_owned())).collect();
            rows.push((row.line, row.id.map(str::to_owned), row.region.map(|r| r.to_string()), identifiers));
            ControlFlow::Continue(())
        })
        .unwrap();
        let tokenizer = Tokenizer::new(&Key::from_bytes([1; 32]));
        assert_eq!(stats, read(&path, &tokenizer, options()).unwrap().stats().clone());
        let s = |v: &str| v.to_owned();
        assert_eq!(
            rows,
            vec![
                (
                    2,
                    Some(s("m1")),
                    Some(s("US")),
                    vec![(Kind::Email, s(" John.Doe@Example.com ")), (Kind::Phone, s("(415) 555-0100"))]
                ),
                (3, Some(s("m2")), Some(s("GB")), vec![(Kind::Phone, s("020 7183 8750"))]),
                (4, Some(s("")), None, vec![(Kind::Email, s("a@example.com"))]),
                (5, Some(s("m4")), None, vec![(Kind::Email, s("x@example.com"))]),
            ]
        );
        assert_eq!((stats.rows, stats.records, stats.rejected_total(), stats.bad_rows_total()), (5, 4, 3, 1));

        // Refusing at the first problem, and stopping when asked.
        let mut complete = options();
        complete.mode = Mode::List(BadRows::Refuse);
        let err = read_rows(&path, complete, &mut |_: &Row<'_>| ControlFlow::Continue(())).unwrap_err();
        assert!(matches!(err, ReadError::Incomplete { line: 3, reason: "missing_at", .. }), "{err}");
        let mut seen = 0;
        let err = read_rows(&path, options(), &mut |_: &Row<'_>| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap_err();
        assert!(matches!(err, ReadError::Stopped { .. }) && seen == 1, "{err}");
    }
}
