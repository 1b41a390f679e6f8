//! Per-row work, on the rayon workers: one raw row (of a CSV/TSV or Parquet file) into its record's parts — the
//! id, each identifier normalized, tokenized and (for a filter) digested, the value
//! or group label the [`Mode`] asks for, and the rejects — gathered per run of rows
//! in a [`Chunk`] so that reading allocates per chunk, not per row.

use super::columns::clean;
use super::options::{Mode, ReadOptions};
use super::{ColumnError, ColumnMap, MAX_VALUE, RowProblem};
use crate::normalize::{Kind, Normalizer, Region, Reject, parse_region};
use crate::token::{Label, Token, Tokenizer};

/// Rows per batch handed from the parsing thread (CSV/TSV or Parquet) to the workers.
pub(super) const BATCH_ROWS: usize = 8192;

/// Batches of rows as the parsing thread sends them; the first error ends the read.
pub(super) type Batches = std::sync::mpsc::SyncSender<Result<Vec<RawRow>, super::options::ReadError>>;

/// A parsed row and its position: the line it starts on, or its Parquet row.
pub(super) struct RawRow {
    pub(super) line: u64,
    pub(super) record: csv::ByteRecord,
}

/// What a worker made of a run of consecutive rows: one [`RowOut`] per row, and
/// the rows' ids, identifiers, rejects and group labels in shared vectors, each row's
/// part ending where its `RowOut` says (and starting where the previous row's ends).
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) rows: Vec<RowOut>,
    /// The ids, concatenated.
    pub(super) ids: String,
    /// (kind, token, filter digest)
    pub(super) identifiers: Vec<(Kind, Token, Option<Token>)>,
    /// (column, reason, raw value if the report wants values)
    pub(super) rejects: Vec<(usize, Reject, Option<String>)>,
    /// The group labels, concatenated.
    pub(super) groups: String,
    /// The valid identifiers as written, concatenated (only for [`read_rows`](super::read_rows)).
    pub(super) raw_text: String,
    /// Where each of `identifiers` is in `raw_text` (only for [`read_rows`](super::read_rows)).
    pub(super) raw_spans: Vec<(usize, usize)>,
}

/// Where one row's parts end in its [`Chunk`]'s vectors.
#[derive(Clone, Copy, Default)]
pub(super) struct Ends {
    pub(super) id: usize,
    pub(super) identifiers: usize,
    pub(super) rejects: usize,
    pub(super) group: usize,
}

/// What a worker made of one row (its id, identifiers, rejects and group label are
/// in the [`Chunk`]).
pub(super) struct RowOut {
    pub(super) line: u64,
    /// Why the row is not a record, if it is not.
    pub(super) problem: Option<RowProblem>,
    pub(super) ends: Ends,
    /// The record id's filter digest, when a digester is set.
    pub(super) id_digest: Option<Token>,
    pub(super) blank_cells: u64,
    /// Valid identifiers by kind (emails, phones), repeats within the row included.
    pub(super) valid: [u64; 2],
    /// Identifiers repeated within this row (e.g. the same email in two columns).
    pub(super) repeated: u64,
    /// The value column's value, when there is one.
    pub(super) value: Option<u64>,
    /// Whether the row has a group label (when there is a group column).
    pub(super) group: bool,
    /// The row's own valid region, when it has a region column.
    pub(super) region: Option<Region>,
}

/// One row's parts, borrowed from its [`Chunk`].
pub(super) struct RowParts<'c> {
    pub(super) out: &'c RowOut,
    pub(super) id: &'c str,
    pub(super) identifiers: &'c [(Kind, Token, Option<Token>)],
    pub(super) rejects: &'c [(usize, Reject, Option<String>)],
    pub(super) group: Option<&'c str>,
    pub(super) raw_text: &'c str,
    /// One span per identifier when the raw values are kept, else empty.
    pub(super) raw_spans: &'c [(usize, usize)],
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
    pub(super) fn parts(&self) -> impl Iterator<Item = RowParts<'_>> {
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

/// The value and group columns, resolved against the header.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Extra {
    pub(super) value: Option<usize>,
    pub(super) group: Option<usize>,
}

/// Finds the value or group column the mode names: it must exist and serve no other
/// role.
pub(super) fn resolve_extra(columns: &ColumnMap, options: &ReadOptions) -> Result<Extra, ColumnError> {
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
pub(super) fn parse_value(cell: &[u8]) -> Result<u64, RowProblem> {
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

/// Per-row work, shared by the rayon workers.
pub(super) struct Worker<'a> {
    pub(super) list: bool,
    /// Cells come from quoted text (CSV/TSV), where a line break in an id,
    /// identifier, region, value or group can only be a quote never closed; a
    /// Parquet cell may hold one.
    pub(super) quoted: bool,
    pub(super) columns: &'a ColumnMap,
    pub(super) extra: Extra,
    pub(super) normalizer: &'a Normalizer,
    pub(super) tokenizer: &'a Tokenizer,
    pub(super) digester: Option<&'a Tokenizer>,
    pub(super) keep_values: bool,
    /// Keep each valid identifier as written ([`read_rows`](super::read_rows)).
    pub(super) keep_raw: bool,
}

impl Worker<'_> {
    pub(super) fn chunk(&self, rows: &[RawRow], buf: &mut String) -> Chunk {
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
        let spans_lines = |cell: &[u8]| self.quoted && (cell.contains(&b'\n') || cell.contains(&b'\r'));
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
