//! Opt-outs: members who must never be matched, applied before anything is blinded.
//!
//! An [`OptOutSource`] indexes opted-out identifiers and record ids by keyed digest
//! (`HMAC-SHA256(source key, label ":" value)` with label `email`, `phone` or `id`),
//! never by raw value. A record set is read with the source's digester once (at
//! load); [`excluded_records`] then asks the source which records are out, so a
//! source that changes (a live store) is honored by the next match without
//! re-reading the audience.
//!
//! [`FileList`] is the file-backed source: a CSV of opted-out emails, phones and/or
//! record ids, held in memory under a random per-process key.
//!
//! Fail-closed invariant: a list is used only if it was read completely. Any row or
//! identifier that cannot be read (a malformed row, a bad encoding, an identifier
//! that does not normalize, a quote that is never closed) refuses the whole list, and
//! with it the match, unless the operator explicitly chose [`BadRows::Skip`]; the
//! skipped rows are then counted in [`FileList::stats`] for the caller to report.
//!
//! [`store::OptOutStore`] is the durable source: the installation's opt-out store
//! (SQLite, behind the [`store::Backend`] trait) under its own store key, kept across
//! runs, with an audit trail; `idmatch optout` manages it.

use std::collections::HashSet;
use std::path::Path;

use crate::key::{Key, KeyError};
use crate::normalize::Normalizer;
pub use crate::records::BadRows;
use crate::records::{self, Mode, ReadError, ReadOptions, ReadStats, RecordSet};
use crate::token::{Label, Token, Tokenizer};

#[cfg(feature = "sqlite")]
pub mod store;
#[cfg(feature = "sqlite")]
pub use store::OptOutStore;

/// The opt-out store at `db` (which must exist, made under `profile`) opened with the
/// store key in `key_file`, and how many opt-outs it holds.
#[cfg(feature = "sqlite")]
pub fn open_store(
    db: &std::path::Path,
    key_file: &std::path::Path,
    profile: crate::normalize::Profile,
) -> Result<(Box<dyn OptOutSource>, u64), OptOutError> {
    let options = store::StoreOptions { profile: Some(profile), ..store::StoreOptions::existing() };
    let store = OptOutStore::open(db, &Key::load(key_file)?, &options)?;
    let entries = store.count()?.total();
    Ok((Box::new(store), entries))
}

/// Without the `sqlite` feature there is no store to open.
#[cfg(not(feature = "sqlite"))]
pub fn open_store(
    db: &std::path::Path,
    _key_file: &std::path::Path,
    _profile: crate::normalize::Profile,
) -> Result<(Box<dyn OptOutSource>, u64), OptOutError> {
    Err(OptOutError::NoStoreSupport { path: db.display().to_string() })
}

/// Why opt-outs could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptOutError {
    /// The record set carries no [`FilterDigests`](crate::records::FilterDigests), or
    /// not one per record and per entry: it was not read with the source's digester.
    #[error("the record set was read without this opt-out source's digests")]
    NotDigested,
    /// [`OptOutSource::contains`] returned a different number of answers than digests asked.
    #[error("opt-out source answered {answered} of {asked} lookups; refusing to guess the rest")]
    ShortAnswer {
        /// Digests asked about.
        asked: usize,
        /// Answers received.
        answered: usize,
    },
    /// The opt-out store failed; the store's own error, typed.
    #[cfg(feature = "sqlite")]
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// An opt-out store was asked for, but this build has no `sqlite` feature.
    #[error("{path}: this build of idmatch has no opt-out store (built without the `sqlite` feature)")]
    NoStoreSupport {
        /// The store's database path, as given.
        path: String,
    },
    /// The opt-out or suppression list file could not be read (completely, unless
    /// [`BadRows::Skip`]).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A key could not be generated (a list's per-process key) or loaded (a store key).
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A set of opted-out digests. `Send + Sync`: the two sides of a local match are
/// read and checked at once.
pub trait OptOutSource: Send + Sync {
    /// The keyed hash under which this source indexes identifiers and ids.
    fn digester(&self) -> &Tokenizer;
    /// For each digest, whether it is opted out now.
    fn contains(&self, digests: &[Token]) -> Result<Vec<bool>, OptOutError>;
}

/// One flag per record of `records`: set when its id or any of its identifiers is
/// opted out in `source`. `records` must have been read with `source.digester()`.
pub fn excluded_records(records: &RecordSet, source: &dyn OptOutSource) -> Result<Vec<bool>, OptOutError> {
    let digests = records.filter_digests().ok_or(OptOutError::NotDigested)?;
    if digests.ids.len() != records.len() || digests.entries.len() != records.entries().len() {
        return Err(OptOutError::NotDigested);
    }
    let answers = |asked: &[Token]| -> Result<Vec<bool>, OptOutError> {
        let answers = source.contains(asked)?;
        if answers.len() != asked.len() {
            return Err(OptOutError::ShortAnswer { asked: asked.len(), answered: answers.len() });
        }
        Ok(answers)
    };
    let mut excluded = answers(&digests.ids)?;
    let by_entry = answers(&digests.entries)?;
    for (entry, out) in records.entries().iter().zip(by_entry) {
        if out {
            excluded[entry.record as usize] = true;
        }
    }
    Ok(excluded)
}

/// Opt-outs (or a partner's suppressions) from a CSV file, held in memory.
pub struct FileList {
    digester: Tokenizer,
    digests: HashSet<Token>,
    stats: ReadStats,
}

impl FileList {
    /// Reads `path` under a fresh random key: identifiers from the usual email/phone
    /// columns (normalized under `normalizer`, so `John.Doe@GMail.com` opts out
    /// `johndoe@gmail.com`) and record ids from an id column if there is one; rows
    /// that cannot be read refuse the list unless `bad_rows` is [`BadRows::Skip`].
    pub fn load(path: &Path, normalizer: Normalizer, bad_rows: BadRows) -> Result<FileList, OptOutError> {
        FileList::load_under(path, normalizer, Tokenizer::new(&Key::generate()?), bad_rows)
    }

    /// Like [`FileList::load`], under a given digester, so that a list re-read later
    /// matches record sets digested once at load (a long-running server).
    pub fn load_under(
        path: &Path,
        normalizer: Normalizer,
        digester: Tokenizer,
        bad_rows: BadRows,
    ) -> Result<FileList, OptOutError> {
        let set = records::read(path, &digester, ReadOptions::new(normalizer, Mode::List(bad_rows)))?;
        let mut digests: HashSet<Token> = set.entries().iter().map(|e| e.token).collect();
        if set.has_id_column() {
            let listed = (0..set.len() as u32).map(|r| set.id(r)).filter(|id| !id.is_empty());
            for id in listed {
                digests.insert(digester.token(Label::Id, id));
            }
        }
        Ok(FileList { digester, digests, stats: set.stats().clone() })
    }

    /// How the file was read (rows, identifiers, rejects; with [`BadRows::Skip`],
    /// the skipped rows and identifiers).
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }
}

impl OptOutSource for FileList {
    fn digester(&self) -> &Tokenizer {
        &self.digester
    }

    fn contains(&self, digests: &[Token]) -> Result<Vec<bool>, OptOutError> {
        Ok(digests.iter().map(|d| self.digests.contains(d)).collect())
    }
}
