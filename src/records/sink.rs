//! Appending the workers' results to the record set in file order: the counts,
//! the reject report, the group labels, the filter digests, the ids kept for the
//! repeat check; and refusing a row where the [`Mode`](super::Mode) says so.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::ops::ControlFlow;
use std::path::Path;

use rayon::prelude::*;

use super::options::{Numbering, ReadError};
use super::row::{Extra, RowParts};
use super::{ColumnMap, Entry, FilterDigests, RecordSet, RejectWriter, RowProblem};
use crate::normalize::{Kind, Region};
use crate::token::Token;

/// One record as [`read_rows`](super::read_rows) hands it on: borrowed from the reader's buffers,
/// valid only during the call.
pub struct Row<'r> {
    /// The line the row starts on (a Parquet file's row: see [`Row::numbering`]).
    pub line: u64,
    /// The record id, trimmed (empty when a list row leaves it empty); `None` when
    /// the file has no id column.
    pub id: Option<&'r str>,
    /// The region of the row's own region column, when it has a valid one (the
    /// default region of [`ReadOptions::normalizer`] applies otherwise).
    pub region: Option<Region>,
    pub(super) identifiers: &'r [(Kind, Token, Option<Token>)],
    pub(super) id_digest: Option<Token>,
    pub(super) raw_text: &'r str,
    pub(super) raw_spans: &'r [(usize, usize)],
    pub(super) numbering: Numbering,
}

impl<'r> Row<'r> {
    /// What [`Row::line`] counts: lines of a text file, or rows of a Parquet file.
    pub fn numbering(&self) -> Numbering {
        self.numbering
    }

    /// The row's valid identifiers, each once, as written in the file (not
    /// normalized: they normalized without a reject under the reader's rules).
    pub fn identifiers(&self) -> impl Iterator<Item = (Kind, &'r str)> + '_ {
        let text = self.raw_text;
        self.identifiers.iter().zip(self.raw_spans).map(move |(&(kind, _, _), &(from, to))| (kind, &text[from..to]))
    }

    /// The row's valid identifiers, each once, as keyed tokens: `(kind, token, filter
    /// digest)`, the digest present when the read had a filter's digester. Only
    /// rows from [`read_tokens`] carry tokens under the caller's key ([`read_rows`]
    /// keys them under a throwaway key, to find repeats within the row).
    pub fn tokens(&self) -> &'r [(Kind, Token, Option<Token>)] {
        self.identifiers
    }

    /// The record id's filter digest (rows from [`read_tokens`] with a digester):
    /// under label `id`, or `line` when the file has no id column, as in
    /// [`FilterDigests::ids`](super::FilterDigests::ids).
    pub fn id_digest(&self) -> Option<Token> {
        self.id_digest
    }
}

/// The callback of [`read_rows`](super::read_rows).
pub(super) type Visit<'v> = dyn FnMut(&Row<'_>) -> ControlFlow<()> + Send + 'v;

/// Where worker results are appended, in file order.
pub(super) struct Sink<'a, 'v> {
    pub(super) set: RecordSet,
    pub(super) digests: Option<FilterDigests>,
    /// `(hash of id, record, line)` per record, when ids are checked for repeats.
    pub(super) ids: Option<Vec<(u64, u32, u32)>>,
    pub(super) columns: &'a ColumnMap,
    pub(super) extra: Extra,
    /// Group label → index into the set's group names.
    pub(super) group_index: std::collections::HashMap<String, u32>,
    pub(super) rejects: Option<RejectWriter>,
    pub(super) path: &'a Path,
    /// What the rows' lines count.
    pub(super) numbering: Numbering,
    pub(super) complete: bool,
    /// [`read_rows`](super::read_rows)' callback: records go to it instead of into the set.
    pub(super) visit: Option<&'a mut Visit<'v>>,
}

impl Sink<'_, '_> {
    fn incomplete(&self, line: u64, column: Option<usize>, reason: &'static str) -> ReadError {
        let column = column.map_or_else(String::new, |c| self.columns.names[c].clone());
        ReadError::Incomplete { path: self.path.to_owned(), numbering: self.numbering, line, column, reason }
    }

    /// Appends one worker result to the set.
    pub(super) fn append(&mut self, row: RowParts<'_>) -> Result<(), ReadError> {
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
                id_digest: out.id_digest,
                raw_text,
                raw_spans,
                numbering: self.numbering,
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
pub(super) fn duplicate_ids(set: &RecordSet, mut ids: Vec<(u64, u32, u32)>) -> (u64, Option<(u64, u64)>) {
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
pub(super) fn count_duplicates(entries: &[Entry]) -> u64 {
    let prefix = |t: &Token| u64::from_be_bytes(t.head()[..8].try_into().unwrap_or_default());
    let order = crate::token::group_equal(entries.len(), |i| entries[i].token, prefix);
    let distinct = order.chunk_by(|a, b| a.0 == b.0 && entries[a.1].token == entries[b.1].token).count();
    (entries.len() - distinct) as u64
}
