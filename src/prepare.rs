//! Preparing one side of a match: the one path from a file to the set that is
//! blinded, with its counts.
//!
//! read (normalize, token, and the filter's digests in the same pass) → opt-out or
//! suppression filter → [`PreparedSet`] (distinct tokens, shuffled, with the way back
//! to records). The local match, the partner's clients, the owner's server,
//! measurements and `idmatch tokens` go through [`read`] and then [`prepared_set`] or
//! [`excluded`]; the filter is an explicit argument of each (an `Option`, so a caller
//! that has none says so), but nothing here can force a caller to pass the list it
//! was configured with: each entry point's tests check that it does.
//!
//! Invariant: a record excluded by the filter contributes nothing to the prepared set
//! (no token, no count but [`PreparedSet::excluded_records`]).

use std::path::Path;

use crate::optout::{OptOutError, OptOutSource, excluded_records};
use crate::psi::PreparedSet;
use crate::records::{self, ReadError, ReadOptions, RecordSet};
use crate::token::Tokenizer;

/// Reads `path` into records under `tokenizer`, with the opt-out digests that a
/// filter keyed by `filter_digester` needs (the digester of an [`OptOutSource`], or
/// of a source that will be consulted later, as the server does at every match).
pub fn read(
    path: &Path,
    tokenizer: &Tokenizer,
    mut options: ReadOptions,
    filter_digester: Option<&Tokenizer>,
) -> Result<RecordSet, ReadError> {
    options.filter_digester = filter_digester.cloned();
    records::read(path, tokenizer, options)
}

/// One flag per record: excluded by `filter` now (none without a filter).
pub fn excluded(records: &RecordSet, filter: Option<&dyn OptOutSource>) -> Result<Vec<bool>, OptOutError> {
    match filter {
        Some(filter) => excluded_records(records, filter),
        None => Ok(vec![false; records.len()]),
    }
}

/// The set to blind: the tokens of the records `filter` leaves in.
pub fn prepare(records: &RecordSet, filter: Option<&dyn OptOutSource>) -> Result<PreparedSet, OptOutError> {
    Ok(prepared_set(records, &excluded(records, filter)?))
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

/// The shard (under `rule`) of each of `records.entries()`, in order: computed once
/// per run and side, one keyed hash per identifier. `rule` has at most
/// [`crate::shard::MAX_SHARDS`] shards, so a shard fits 16 bits.
pub fn shard_assignment(records: &RecordSet, rule: &crate::shard::ShardRule) -> Vec<u16> {
    use rayon::prelude::*;
    records.entries().par_iter().map(|e| rule.shard_of(&e.token) as u16).collect()
}
