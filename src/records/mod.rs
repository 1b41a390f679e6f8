//! Records read from CSV, TSV or Parquet files (`input` tells them apart): each
//! record is an id plus the keyed tokens of its valid identifiers.
//!
//! Memory invariant: a [`RecordSet`] holds, per identifier, one [`Entry`] (32-byte
//! token, record index and kind) and, per record, its id text; never the raw file
//! text or the normalized identifiers. Every row and identifier that does not make it
//! into the set is counted in [`ReadStats`] and, if asked, written to a reject report.

mod columns;
mod input;
mod options;
#[cfg(feature = "parquet")]
mod parquet;
mod reader;
mod rejects;
mod row;
mod sink;
mod source;

use std::collections::BTreeMap;

use serde::Serialize;

pub use columns::{ColumnError, ColumnMap, ColumnSpec};
pub use options::{BadRows, Mode, Numbering, ParquetProblem, ReadError, ReadOptions};
pub use reader::{read, read_rows};
pub(crate) use reader::{read_digested, read_tokens};
pub use rejects::{RejectWriteError, RejectWriter};
pub use sink::Row;
pub use source::{InputLimits, LimitExceeded, STDIN};

use crate::normalize::{Kind, Profile};
use crate::token::Token;

/// One valid identifier of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The identifier's keyed token.
    pub token: Token,
    /// Index of its record in the [`RecordSet`] (see [`RecordSet::id`]).
    pub record: u32,
    /// Email or phone.
    pub kind: Kind,
}

/// Why a whole row was not turned into a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowProblem {
    /// The row has a different number of fields than the header.
    WrongFieldCount,
    /// The id column is empty.
    MissingId,
    /// The id is not valid UTF-8.
    BadEncoding,
    /// A quoted field runs across lines where no field may (an unbalanced `"`):
    /// never counted, always refused ([`ReadError::UnclosedQuote`]), because the rows
    /// after it would silently become part of one field.
    UnclosedQuote,
    /// The value column ([`Mode::Outcomes`]) is empty.
    MissingValue,
    /// The value column does not hold a non-negative decimal integer.
    BadValue,
    /// The value column holds an integer above [`MAX_VALUE`] (2^32).
    ValueTooLarge,
    /// The group column ([`Mode::Exposures`]) is empty or not valid UTF-8.
    MissingGroup,
}

/// The largest value a value column may hold: 2^32.
pub const MAX_VALUE: u64 = 1 << 32;

impl RowProblem {
    /// The machine-readable reason, as counted in [`ReadStats::bad_rows`] and written
    /// to reject reports (`wrong_field_count`, `missing_id`, ...).
    pub fn code(self) -> &'static str {
        match self {
            RowProblem::WrongFieldCount => "wrong_field_count",
            RowProblem::MissingId => "missing_id",
            RowProblem::BadEncoding => "bad_encoding",
            RowProblem::UnclosedQuote => "unclosed_quote",
            RowProblem::MissingValue => "missing_value",
            RowProblem::BadValue => "bad_value",
            RowProblem::ValueTooLarge => "value_too_large",
            RowProblem::MissingGroup => "missing_group",
        }
    }
}

/// Counts gathered while reading one file.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReadStats {
    /// Data rows in the file (header excluded).
    pub rows: u64,
    /// Rows that became records.
    pub records: u64,
    /// Rows that could not become records, by reason.
    pub bad_rows: BTreeMap<&'static str, u64>,
    /// Valid identifiers, by kind.
    pub identifiers: BTreeMap<&'static str, u64>,
    /// Rejected identifiers, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Empty identifier cells (not an error; a record may have only a phone).
    pub blank_cells: u64,
    /// Records without any valid identifier.
    pub records_without_identifiers: u64,
    /// Valid identifiers equal to one seen earlier in the file (same or other record).
    pub duplicate_identifiers: u64,
    /// Records whose id equals an earlier record's id (checked for files with an id
    /// column; a file read as [`Mode::Match`] refuses the first one).
    pub duplicate_ids: u64,
}

impl ReadStats {
    /// Rejected identifiers, all reasons together.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    /// Rows that did not become records, all reasons together.
    pub fn bad_rows_total(&self) -> u64 {
        self.bad_rows.values().sum()
    }
    /// Valid identifiers, all kinds together (repeats included).
    pub fn identifiers_total(&self) -> u64 {
        self.identifiers.values().sum()
    }
}

/// The same records keyed a second time, under a filter's own key, in the same pass
/// as the tokens: one digest per record id and one per entry. A filter (an opt-out
/// list or store, a suppression list: see `crate::optout`) keeps its entries under
/// its own key, so a set is checked against it without re-reading the file and
/// without the raw identifiers ever being kept.
#[derive(Clone, Debug, Default)]
pub struct FilterDigests {
    /// One digest per record, in record order: the record id under the filter key
    /// (under a label no filter entry uses when the ids are line numbers).
    pub ids: Vec<Token>,
    /// One digest per [`Entry`], in the order of [`RecordSet::entries`].
    pub entries: Vec<Token>,
}

/// The records of one file. `Debug` shows counts only, never ids or tokens.
pub struct RecordSet {
    profile: Profile,
    id_column: bool,
    id_text: String,
    id_ends: Vec<usize>,
    entries: Vec<Entry>,
    filter_digests: Option<FilterDigests>,
    /// One value per record when read with a value column, else empty.
    values: Vec<u64>,
    /// One group index (into `group_names`) per record when read with a group column, else empty.
    groups: Vec<u32>,
    group_names: Vec<String>,
    stats: ReadStats,
}

impl std::fmt::Debug for RecordSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSet")
            .field("profile", &self.profile)
            .field("records", &self.len())
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl RecordSet {
    fn new(profile: Profile, id_column: bool) -> RecordSet {
        RecordSet {
            profile,
            id_column,
            id_text: String::new(),
            id_ends: Vec::new(),
            entries: Vec::new(),
            filter_digests: None,
            values: Vec::new(),
            groups: Vec::new(),
            group_names: Vec::new(),
            stats: ReadStats::default(),
        }
    }

    /// One record per token (ids `1`, `2`, …), for benchmarks and tests that start
    /// from tokens rather than files.
    pub fn from_tokens(profile: Profile, tokens: &[Token], kind: Kind) -> RecordSet {
        let mut set = RecordSet::new(profile, false);
        for (i, &token) in tokens.iter().enumerate() {
            let record = set.push_record(&(i + 1).to_string());
            set.entries.push(Entry { token, record, kind });
        }
        set.stats.rows = tokens.len() as u64;
        set.stats.records = tokens.len() as u64;
        set
    }

    /// The normalization profile the tokens were computed under.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Whether ids came from an id column (otherwise they are line numbers).
    pub fn has_id_column(&self) -> bool {
        self.id_column
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.id_ends.len()
    }

    /// Whether the set has no records.
    pub fn is_empty(&self) -> bool {
        self.id_ends.is_empty()
    }

    /// The id of record `index`. Panics if `index` is not below [`len`](Self::len).
    pub fn id(&self, index: u32) -> &str {
        let i = index as usize;
        let start = if i == 0 { 0 } else { self.id_ends[i - 1] };
        &self.id_text[start..self.id_ends[i]]
    }

    /// All entries, grouped by record in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The filter digests, if the set was read with a filter digester.
    pub fn filter_digests(&self) -> Option<&FilterDigests> {
        self.filter_digests.as_ref()
    }

    /// Record `index`'s value, when the file was read with a value column
    /// ([`Mode::Outcomes`]).
    pub fn value(&self, index: u32) -> Option<u64> {
        self.values.get(index as usize).copied()
    }

    /// Record `index`'s group label, when the file was read with a group column
    /// ([`Mode::Exposures`]).
    pub fn group(&self, index: u32) -> Option<&str> {
        let g = *self.groups.get(index as usize)?;
        self.group_names.get(g as usize).map(String::as_str)
    }

    /// The distinct group labels, in order of first appearance (empty without a group column).
    pub fn group_names(&self) -> &[String] {
        &self.group_names
    }

    /// The counts gathered while reading the file.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    fn push_record(&mut self, id: &str) -> u32 {
        let index = self.id_ends.len() as u32;
        self.id_text.push_str(id);
        self.id_ends.push(self.id_text.len());
        index
    }
}
