//! Preparing one side of a match or measurement: the one path from a file to what an
//! engine takes, with the counts.
//!
//! A side is read ([`ReadOptions`]: normalizer, columns, [`Mode`](records::Mode),
//! reject report, limits, progress) under the campaign's tokenizer, each record
//! keyed a second time under its [`Filter`]'s own key in the same pass, then checked
//! against the filter, giving a [`Prepared`] side: the records and one exclusion flag
//! per record. The filter is a required argument: a side that has none says so with
//! [`Filter::None`]. From a [`Prepared`] side come the engines' inputs: the set to
//! blind ([`Prepared::set`]), the measurement owner's people and the partner's
//! exposures (`measure::side`, from [`Prepared::records`] and
//! [`Prepared::excluded`]), and the token export (`output::TokenExport::write`).
//!
//! The out-of-core match streams each side ([`stream`]) and checks it against its
//! filter batch by batch, before the shard files (`crate::shard`).
//!
//! The owner's server reads its audiences once, at load, and checks them against
//! its opt-outs as they are at each match: it reads with [`read_digested`] and
//! applies the flags the opt-out source gives at match time ([`prepared_set`]).
//!
//! Invariant: a record excluded by the filter contributes nothing to an engine's
//! input (no token, no person, no exported row; only the excluded count).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::normalize::{Normalizer, Profile};
use crate::optout::{BadRows, FileList, OptOutError, OptOutSource, excluded_records, open_store};
use crate::psi::PreparedSet;
use crate::records::{self, ReadError, ReadOptions, ReadStats, RecordSet};
use crate::token::Tokenizer;

/// Why a side could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The side's own file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The side's filter could not be loaded (an opt-out or suppression list that
    /// cannot be read completely, a store that cannot be opened, a key) or consulted.
    #[error(transparent)]
    Filter(#[from] OptOutError),
}

/// Who must never enter the engine from one side: the owner's opt-outs, the
/// partner's suppressions, or nobody ([`Filter::None`], said explicitly). `Debug`
/// shows counts and the store's path only.
pub enum Filter {
    /// No opt-out or suppression applies to this side.
    None,
    /// A list file (opt-outs or suppressions), held in memory under a random key.
    List(Box<FileList>),
    /// The installation's opt-out store.
    Store {
        /// The store, open.
        store: Box<dyn OptOutSource>,
        /// Its database file.
        path: PathBuf,
        /// Opt-outs it held when opened.
        entries: u64,
    },
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filter::None => f.write_str("Filter::None"),
            Filter::List(list) => f.debug_struct("Filter::List").field("rows", &list.stats().rows).finish(),
            Filter::Store { path, entries, .. } => {
                f.debug_struct("Filter::Store").field("path", path).field("entries", entries).finish()
            }
        }
    }
}

impl Filter {
    /// The list file at `path`, normalized under `normalizer` (the side's), read
    /// completely unless `bad_rows` is [`BadRows::Skip`].
    pub fn list(path: &Path, normalizer: &Normalizer, bad_rows: BadRows) -> Result<Filter, PrepareError> {
        Ok(Filter::List(Box::new(FileList::load(path, normalizer.clone(), bad_rows)?)))
    }

    /// The list file at `path` when one is configured, else [`Filter::None`].
    pub fn list_or_none(
        path: Option<&Path>,
        normalizer: &Normalizer,
        bad_rows: BadRows,
    ) -> Result<Filter, PrepareError> {
        path.map_or(Ok(Filter::None), |path| Filter::list(path, normalizer, bad_rows))
    }

    /// The opt-out store at `db` (which must exist, made under `profile`), opened with
    /// the store key in `key_file`.
    pub fn store(db: &Path, key_file: &Path, profile: Profile) -> Result<Filter, PrepareError> {
        let (store, entries) = open_store(db, key_file, profile)?;
        Ok(Filter::Store { store, path: db.to_owned(), entries })
    }

    /// The source consulted, if any.
    pub fn source(&self) -> Option<&dyn OptOutSource> {
        match self {
            Filter::None => None,
            Filter::List(list) => Some(list.as_ref()),
            Filter::Store { store, .. } => Some(store.as_ref()),
        }
    }

    /// How the list file was read (with [`BadRows::Skip`], what was skipped), for a
    /// list.
    pub fn list_stats(&self) -> Option<&ReadStats> {
        match self {
            Filter::List(list) => Some(list.stats()),
            Filter::None | Filter::Store { .. } => None,
        }
    }
}

/// One side read and checked against its filter. `Debug` shows counts only.
pub struct Prepared {
    records: RecordSet,
    /// Exactly one flag per record.
    excluded: Vec<bool>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("records", &self.records)
            .field("excluded_records", &self.excluded_records())
            .finish()
    }
}

impl Prepared {
    /// The records read, excluded ones included (their ids name matches in outputs).
    pub fn records(&self) -> &RecordSet {
        &self.records
    }

    /// One flag per record: whether the filter excluded it.
    pub fn excluded(&self) -> &[bool] {
        &self.excluded
    }

    /// Whether the filter excluded record `record` (a record index of
    /// [`Prepared::records`]).
    pub fn is_excluded(&self, record: u32) -> bool {
        // One flag per record: an index past the end is no record of this side.
        self.excluded.get(record as usize).copied().unwrap_or(true)
    }

    /// How many records the filter excluded.
    pub fn excluded_records(&self) -> u64 {
        self.excluded.iter().filter(|&&x| x).count() as u64
    }

    /// The set to blind (or evaluate): the distinct tokens of the records left in.
    pub fn set(&self) -> PreparedSet {
        prepared_set(&self.records, &self.excluded)
    }
}

/// The opt-out store a match consulted.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StoreSummary {
    /// The store's database file.
    pub path: String,
    /// Opt-outs it held when the match started (emails, phones and member ids). Zero
    /// is allowed (a new service), but the command line warns: a store that should
    /// hold a list and does not is how a failed import would show.
    pub entries: u64,
}

impl StoreSummary {
    /// What a summary says of `filter`, when it is the opt-out store.
    pub fn of(filter: &Filter) -> Option<StoreSummary> {
        match filter {
            Filter::Store { path, entries, .. } => {
                Some(StoreSummary { path: path.display().to_string(), entries: *entries })
            }
            Filter::None | Filter::List(_) => None,
        }
    }
}

/// Reads the side at `path` under `tokenizer` and checks it against `filter` now.
pub fn prepare(
    path: &Path,
    tokenizer: &Tokenizer,
    options: ReadOptions,
    filter: &Filter,
) -> Result<Prepared, PrepareError> {
    let Some(source) = filter.source() else {
        let records = records::read(path, tokenizer, options)?;
        let excluded = vec![false; records.len()];
        return Ok(Prepared { records, excluded });
    };
    let records = records::read_digested(path, tokenizer, source.digester(), options)?;
    let excluded = excluded_records(&records, source)?;
    Ok(Prepared { records, excluded })
}

/// Reads the side at `path` under `tokenizer` for a filter consulted later, at every
/// use, whose key is `digester` (the owner's server: audiences read once, opt-outs
/// as they are at each match). The set carries no flags: every engine input made
/// from it takes the flags the filter gives at that time ([`prepared_set`],
/// `measure::side`), and the caller must ask the filter for them (the server's
/// tests check that each of its entry points does).
pub fn read_digested(
    path: &Path,
    tokenizer: &Tokenizer,
    options: ReadOptions,
    digester: &Tokenizer,
) -> Result<RecordSet, ReadError> {
    records::read_digested(path, tokenizer, digester, options)
}

/// Streams the side at `path` under `tokenizer`, record by record, keeping nothing
/// ([`records::Row`]: its tokens, and with a `digester` its filter digests): the
/// out-of-core match (`crate::shard`), which checks each batch of records against
/// the filter whose key is `digester` before any token reaches a shard file.
pub(crate) fn stream(
    path: &Path,
    tokenizer: &Tokenizer,
    options: ReadOptions,
    digester: Option<&Tokenizer>,
    visit: &mut (dyn FnMut(&records::Row<'_>) -> std::ops::ControlFlow<()> + Send),
) -> Result<ReadStats, ReadError> {
    records::read_tokens(path, tokenizer, digester, options, visit)
}

/// The set to blind from `records`, leaving out every record whose flag in
/// `excluded` is set (`excluded` is empty or has one flag per record).
pub fn prepared_set(records: &RecordSet, excluded: &[bool]) -> PreparedSet {
    prepared_subset(records, excluded, |_| true)
}

/// The set of `records` not `excluded` whose tokens are in shard `index` of
/// `shard_of` (the shard of each of `records.entries()`, in order): one shard of a
/// sharded run (docs/PROTOCOL.md §13.3). Record numbers stay those of `records`, so
/// the shards' matches merge into the whole set's.
pub fn prepared_shard(records: &RecordSet, excluded: &[bool], shard_of: &[u16], index: u32) -> PreparedSet {
    prepared_subset(records, excluded, |i| shard_of.get(i).is_some_and(|&s| u32::from(s) == index))
}

/// The most tokens that any of the `shards` shards of `shard_of` holds once the
/// `excluded` records are left out, counted before deduplication (so at least each
/// shard's [`prepared_shard`] size): what the owner pads every shard of a run to, so
/// that its shard sizes say only this one number (docs/PROTOCOL.md §13.4). One pass,
/// no sorting: it is computed again for each stream, under the opt-outs of the day.
pub fn shard_size_bound(records: &RecordSet, excluded: &[bool], shard_of: &[u16], shards: u32) -> usize {
    let mut sizes = vec![0usize; shards as usize];
    for (entry, &shard) in records.entries().iter().zip(shard_of) {
        if !excluded.get(entry.record as usize).copied().unwrap_or(false)
            && let Some(size) = sizes.get_mut(usize::from(shard))
        {
            *size += 1;
        }
    }
    sizes.into_iter().max().unwrap_or(0)
}

/// The set of the entries of `records` whose record is not `excluded` and whose
/// position passes `keep`.
fn prepared_subset(records: &RecordSet, excluded: &[bool], keep: impl Fn(usize) -> bool) -> PreparedSet {
    let is_excluded = |r: u32| excluded.get(r as usize).copied().unwrap_or(false);
    let entries = records
        .entries()
        .iter()
        .enumerate()
        .filter(|(i, e)| !is_excluded(e.record) && keep(*i))
        .map(|(_, e)| (e.token, e.record, e.kind));
    PreparedSet::new(entries.collect(), excluded.iter().filter(|&&x| x).count() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::key::Key;
    use crate::records::Mode;

    const MEMBERS: &str = "id,email,phone\n\
                           m1,alice@example.com,\n\
                           m2,,+1 415 555 0102\n\
                           m3,carol@example.com,+1 415 555 0103\n\
                           m4,dave@example.com,\n";
    /// Opts out m1 by email (written differently), m2 by phone, m4 by id.
    const OPTOUTS: &str = "id,email,phone\n,Alice@Example.com,\n,,(415) 555-0102\nm4,,\n";

    fn normalizer() -> Normalizer {
        Normalizer::new(Profile::IdmatchV1, crate::normalize::Region::from_code("US").ok())
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn prepare_members(path: &Path, filter: &Filter) -> Result<Prepared, PrepareError> {
        let tokenizer = Tokenizer::new(&Key::from_bytes([3; 32]));
        prepare(path, &tokenizer, ReadOptions::new(normalizer(), Mode::Match), filter)
    }

    #[test]
    fn no_filter_flags_nothing_and_a_list_flags_exactly_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let members = write(&dir, "members.csv", MEMBERS);

        let all = prepare_members(&members, &Filter::None).unwrap();
        assert_eq!(all.excluded(), [false; 4]);
        assert_eq!((all.excluded_records(), all.set().len(), all.set().excluded_records()), (0, 5, 0));

        let list = Filter::list(&write(&dir, "optouts.csv", OPTOUTS), &normalizer(), BadRows::Refuse).unwrap();
        assert_eq!(list.list_stats().map(|s| s.rows), Some(3));
        let filtered = prepare_members(&members, &list).unwrap();
        assert_eq!(filtered.excluded(), [true, true, false, true]);
        assert!(filtered.is_excluded(0) && !filtered.is_excluded(2));
        assert_eq!(filtered.excluded_records(), 3);
        // Only m3's two identifiers are left to blind; every record is still there
        // (its id names it in outputs).
        let set = filtered.set();
        assert_eq!((set.len(), set.excluded_records(), filtered.records().len()), (2, 3, 4));
        let m3: HashSet<_> = filtered.records().entries().iter().filter(|e| e.record == 2).map(|e| e.token).collect();
        assert_eq!(set.tokens().iter().copied().collect::<HashSet<_>>(), m3);
    }

    #[test]
    fn a_set_read_for_a_later_filter_gets_the_same_flags() {
        let dir = tempfile::tempdir().unwrap();
        let members = write(&dir, "members.csv", MEMBERS);
        let Filter::List(list) =
            Filter::list(&write(&dir, "optouts.csv", OPTOUTS), &normalizer(), BadRows::Refuse).unwrap()
        else {
            unreachable!("a list filter")
        };
        let tokenizer = Tokenizer::new(&Key::from_bytes([3; 32]));
        let options = ReadOptions::new(normalizer(), Mode::Match);
        let records = read_digested(&members, &tokenizer, options, list.digester()).unwrap();
        let excluded = excluded_records(&records, list.as_ref()).unwrap();
        assert_eq!(excluded, [true, true, false, true]);
        assert_eq!(prepared_set(&records, &excluded).len(), 2);
        // Read without the filter's digests, the set cannot be checked: refused, not
        // passed through.
        let undigested = records::read(&members, &tokenizer, ReadOptions::new(normalizer(), Mode::Match)).unwrap();
        assert!(matches!(excluded_records(&undigested, list.as_ref()), Err(OptOutError::NotDigested)));
    }

    #[test]
    fn the_side_and_its_filter_fail_as_different_cases() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.csv");
        let side = prepare_members(&missing, &Filter::None).unwrap_err();
        assert!(matches!(side, PrepareError::Read(ReadError::Open { .. })), "{side}");
        let list = Filter::list(&missing, &normalizer(), BadRows::Refuse).unwrap_err();
        assert!(matches!(list, PrepareError::Filter(OptOutError::Read(ReadError::Open { .. }))), "{list}");
        // An unreadable row refuses a list unless skipping was chosen.
        let bad = write(&dir, "bad.csv", "email\nnot-an-email\nbob@example.com\n");
        let refused = Filter::list(&bad, &normalizer(), BadRows::Refuse).unwrap_err();
        assert!(matches!(refused, PrepareError::Filter(OptOutError::Read(ReadError::Incomplete { .. }))));
        let skipped = Filter::list(&bad, &normalizer(), BadRows::Skip).unwrap();
        assert_eq!(skipped.list_stats().map(|s| (s.records, s.rejected_total())), Some((2, 1)));
    }
}
