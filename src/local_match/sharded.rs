//! `idmatch match --shards N`: the local match out of core. Both inputs are split
//! ([`crate::shard::spill`]) into shard files in a private temporary directory inside the
//! output's staging directory, then matched shard by shard with the same engines,
//! and the per-shard results are merged back into record order. The outputs are
//! byte for byte those of the unsharded match ([`super::run`]): equal
//! tokens share a shard, so the intersection, the matched records and every count of
//! `summary.json` are sums over the shards.
//!
//! Memory: one shard of each side at a time (its entries, record ids and prepared
//! set, about 150 bytes per identifier plus the ids' text) plus the engines' state
//! for it, and while splitting a few batches of rows and one write buffer per
//! scratch file. Nothing per record survives from one shard to the next: ids
//! travel in the shard files, matched records go to scratch files and are merged by
//! record ordinal, record ids are checked for repeats bucket by bucket. What stays
//! in memory for the whole run is a fixed set of counts.
//!
//! Disk: the scratch directory holds about `45 + id length` bytes per identifier and
//! `13 + id length` bytes per record of each side, and each shard's files are
//! removed once it is matched; the directory is removed at the end, and with the
//! staging directory if the run fails or is killed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{
    Filters, LocalMatchFailure, LocalMatchOptions, MatchSummary, RejectReports, SideSummary, engine, run_staged,
    write_summary,
};
use crate::key::Key;
use crate::normalize::Kind;
use crate::output::{MatchRows, Staged};
use crate::prepare::PrepareError;
use crate::progress::Unit;
use crate::psi::{KindSet, PreparedSet, Protocol};
use crate::records::{Mode, ReadError, ReadOptions, RejectWriter};
use crate::shard::file::{Expected, ShardReader, ShardWriter};
use crate::shard::spill::{SpillError, Spilled, Targets, id_hash, spill};
use crate::shard::spool::{SpoolReader, SpoolWriter};
use crate::shard::{MAX_SHARDS, ShardFileError, ShardRule};
use crate::token::{KeyFingerprint, Token, Tokenizer};

/// Runs the match of `options` in `shards` shards (at most [`MAX_SHARDS`])
/// and writes the outputs the unsharded match writes: all of them on success, none
/// on failure.
pub fn run(options: &LocalMatchOptions, shards: NonZeroU32) -> Result<MatchSummary, LocalMatchFailure> {
    if shards.get() > MAX_SHARDS {
        return Err(LocalMatchFailure::TooManyShards { shards: shards.get() });
    }
    run_staged(options, |key, staging| run_into(options, key, staging, shards))
}

/// Input bytes per shard that [`default_shards`] aims at where memory allows: about
/// 750,000 records of the usual width, whose shard (both sides, all state) peaked at
/// about 350 MiB (README, "Scale"). Larger shards do not run faster: these fit the
/// CPU caches better than the whole set.
pub const BYTES_PER_SHARD: u64 = 32 << 20;

/// Peak memory per input byte of a shard that [`default_shards`] plans for: about 11
/// measured (350 MiB for 32 MiB shards), with a margin.
pub const MEMORY_PER_SHARD_BYTE: u64 = 16;

/// The smallest shard [`default_shards`] makes for lack of memory.
const MIN_BYTES_PER_SHARD: u64 = 1 << 20;

/// The number of shards `--shards auto` chose, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    /// `N`.
    pub shards: NonZeroU32,
    /// The input bytes of the larger file per shard that `N` aims at.
    pub bytes_per_shard: u64,
    /// The memory the plan assumed ([`super::memory::available`]), if known.
    pub memory: Option<u64>,
    /// Whether one shard is still expected to need more than `memory`
    /// (the input is too large for [`MAX_SHARDS`] shards of the size memory allows).
    pub short_of_memory: bool,
}

/// A number of shards for inputs of `largest` bytes (the larger of the two files)
/// with `memory` bytes available: one per [`BYTES_PER_SHARD`], or per
/// `memory / MEMORY_PER_SHARD_BYTE` if that is smaller (not below 1 MiB), at least 1
/// and at most [`MAX_SHARDS`].
pub fn default_shards(largest: u64, memory: Option<u64>) -> ShardPlan {
    let fits = memory.map_or(BYTES_PER_SHARD, |m| (m / MEMORY_PER_SHARD_BYTE).max(MIN_BYTES_PER_SHARD));
    let bytes_per_shard = BYTES_PER_SHARD.min(fits);
    let count = largest.div_ceil(bytes_per_shard).clamp(1, u64::from(MAX_SHARDS));
    let shards = NonZeroU32::new(count as u32).unwrap_or(NonZeroU32::MIN);
    let short_of_memory = memory.is_some_and(|m| largest.div_ceil(count).saturating_mul(MEMORY_PER_SHARD_BYTE) > m);
    ShardPlan { shards, bytes_per_shard, memory, short_of_memory }
}

impl From<SpillError> for LocalMatchFailure {
    fn from(e: SpillError) -> LocalMatchFailure {
        match e {
            SpillError::Read(e) => LocalMatchFailure::Prepare(PrepareError::Read(e)),
            SpillError::OptOut(e) => LocalMatchFailure::Prepare(PrepareError::Filter(e)),
            SpillError::Shard(e) => LocalMatchFailure::Shard(e),
            SpillError::Scratch { dir, source } => LocalMatchFailure::Write { path: dir, source },
        }
    }
}

/// The two sides.
#[derive(Clone, Copy)]
enum Side {
    Owner,
    Partner,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Owner => "owner",
            Side::Partner => "partner",
        }
    }
}

/// The private scratch directory and the names of its files.
struct Scratch {
    dir: tempfile::TempDir,
    shards: u32,
    /// Bytes buffered per open scratch file while splitting.
    buffer: usize,
}

impl Scratch {
    fn path(&self, side: Side, what: &str, shard: u32) -> PathBuf {
        self.dir.path().join(format!("{}-{what}-{shard}", side.name()))
    }

    fn io(&self) -> impl Fn(std::io::Error) -> LocalMatchFailure + '_ {
        |source| LocalMatchFailure::Write { path: self.dir.path().to_owned(), source }
    }

    /// One side's split targets: kept and excluded tokens, ids to check.
    fn targets(
        &self,
        side: Side,
        fingerprint: &KeyFingerprint,
        options: &LocalMatchOptions,
    ) -> Result<Targets, LocalMatchFailure> {
        let profile = options.normalizer.profile();
        let writers = |what: &str| -> Result<Vec<ShardWriter>, ShardFileError> {
            (0..self.shards)
                .map(|i| {
                    ShardWriter::create(&self.path(side, what, i), fingerprint, profile, self.shards, i, self.buffer)
                })
                .collect()
        };
        let ids = (0..self.shards)
            .map(|i| SpoolWriter::create(&self.path(side, "ids", i), self.buffer))
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.io())?;
        Ok(Targets {
            kept: writers("kept")?,
            excluded: Some(writers("excluded")?),
            ids: Some((self.dir.path().to_owned(), ids)),
        })
    }
}

/// Closes one side's split targets.
fn finish(targets: Targets, scratch: &Scratch) -> Result<(), LocalMatchFailure> {
    for writer in targets.kept.into_iter().chain(targets.excluded.into_iter().flatten()) {
        writer.finish()?;
    }
    for ids in targets.ids.into_iter().flat_map(|(_, ids)| ids) {
        ids.finish().map_err(scratch.io())?;
    }
    Ok(())
}

/// Counts summed over the shards, for one side.
#[derive(Default)]
struct Totals {
    /// Identifiers of the records left in.
    identifiers: u64,
    /// Their distinct tokens.
    distinct: u64,
    /// Identifiers equal to an earlier one of another record, excluded records included.
    repeated: u64,
    /// Distinct tokens that entered the protocol.
    sent: u64,
}

fn run_into(
    options: &LocalMatchOptions,
    key: &Key,
    out_dir: &Path,
    shards: NonZeroU32,
) -> Result<MatchSummary, LocalMatchFailure> {
    let protocol = options.protocol.resolve(options.reveal, &Protocol::ALL)?;
    let tokenizer = Tokenizer::new(key);
    let fingerprint = KeyFingerprint::of(key);
    let rule = ShardRule::new(key, shards);
    let n = shards.get();
    let filters = Filters::load(options)?;
    let Filters { optouts, suppress } = &filters;
    let RejectReports { owner: owner_rejects, partner: partner_rejects, names: mut outputs } =
        RejectReports::create(options, out_dir)?;
    let scratch = Scratch {
        dir: tempfile::Builder::new()
            .prefix(".shards-")
            .tempdir_in(out_dir)
            .map_err(|source| LocalMatchFailure::Write { path: out_dir.to_owned(), source })?,
        shards: n,
        buffer: ((8usize << 20) / n as usize).clamp(16 << 10, 1 << 20),
    };
    let mut owner_targets = scratch.targets(Side::Owner, &fingerprint, options)?;
    let mut partner_targets = scratch.targets(Side::Partner, &fingerprint, options)?;
    let read_options = |rejects: Option<RejectWriter>| {
        let mut read = ReadOptions::new(options.normalizer.clone(), Mode::Match);
        read.columns = options.columns.clone();
        read.rejects = rejects;
        read.progress = options.progress.clone();
        read
    };
    // The two files are split at once, as the unsharded match reads them; the
    // owner's filter (a store is not `Sync`) is consulted on this thread.
    let (owner, partner) = std::thread::scope(|scope| {
        let partner = scope.spawn(|| {
            let filter = suppress.source();
            spill(&options.partner, &tokenizer, read_options(partner_rejects), filter, &rule, &mut partner_targets)
        });
        let owner =
            spill(&options.owner, &tokenizer, read_options(owner_rejects), optouts.source(), &rule, &mut owner_targets);
        // A panic there is a bug, not bad input: it goes on as a panic.
        (owner, partner.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (owner, partner) = (owner?, partner?);
    finish(owner_targets, &scratch)?;
    finish(partner_targets, &scratch)?;
    check_unique_ids(&scratch, Side::Owner, &options.owner, &owner)?;
    check_unique_ids(&scratch, Side::Partner, &options.partner, &partner)?;

    let (mut owner_totals, mut partner_totals) = (Totals::default(), Totals::default());
    let mut intersection: Option<u64> = None;
    let (mut owner_reveal, mut partner_reveal) = (false, false);
    let expected =
        |index| Expected { fingerprint: &fingerprint, profile: options.normalizer.profile(), shards: n, index };
    let progress = crate::progress::start(options.progress.as_ref(), "matching shards", u64::from(n), Unit::Shards);
    for i in 0..n {
        progress.set_position(u64::from(i));
        let (o, p) = rayon::join(
            || ShardSet::load(&scratch, Side::Owner, expected(i)),
            || ShardSet::load(&scratch, Side::Partner, expected(i)),
        );
        let (o, p) = (o?, p?);
        let outcome = engine(protocol, key, options, &o.set, &p.set)?;
        for (side, set, matched, reveal) in [
            (Side::Owner, &o, &outcome.owner_matched, &mut owner_reveal),
            (Side::Partner, &p, &outcome.partner_matched, &mut partner_reveal),
        ] {
            if let Some(matched) = matched {
                *reveal = true;
                set.write_matched(&scratch.path(side, "matched", i), matched).map_err(scratch.io())?;
            }
        }
        let owner_intersection = outcome.owner_matched.as_ref().map(|m| m.iter().filter(|&&x| x).count() as u64);
        if let Some(x) = outcome.intersection.or(owner_intersection) {
            *intersection.get_or_insert(0) += x;
        }
        o.add_to(&mut owner_totals, outcome.owner_sent);
        p.add_to(&mut partner_totals, outcome.partner_sent);
    }
    progress.finish();

    let mut merged = |side: Side, name: &str| -> Result<u64, LocalMatchFailure> {
        let path = out_dir.join(name);
        let count = merge_matched(&scratch, side, &path)?;
        outputs.push(name.to_owned());
        Ok(count)
    };
    let partner_matched = if partner_reveal { Some(merged(Side::Partner, "partner_matches.csv")?) } else { None };
    let owner_matched = if owner_reveal { Some(merged(Side::Owner, "owner_matches.csv")?) } else { None };
    drop(scratch);
    outputs.push("summary.json".to_owned());
    let side = |path: &Path, spilled: Spilled, totals: &Totals, matched_records| {
        let mut read = spilled.stats;
        read.duplicate_identifiers += totals.repeated;
        SideSummary {
            file: path.display().to_string(),
            read,
            excluded_records: spilled.excluded_records,
            identifiers_after_exclusion: totals.identifiers,
            deduplicated: totals.identifiers - totals.distinct,
            blinded: totals.sent,
            matched_records,
        }
    };
    let sides = [
        side(&options.owner, owner, &owner_totals, owner_matched),
        side(&options.partner, partner, &partner_totals, partner_matched),
    ];
    write_summary(out_dir, options, protocol, sides, intersection, &filters, outputs)
}

/// One side's shard in memory: the prepared set of its kept tokens, each local
/// record's ordinal and id, and the counts.
struct ShardSet {
    set: PreparedSet,
    ordinals: Vec<u64>,
    id_text: String,
    id_ends: Vec<usize>,
    identifiers: u64,
    /// Identifiers equal to an earlier one, excluded records' included.
    repeated: u64,
}

impl ShardSet {
    /// Reads shard `expected.index` of `side` (its kept and excluded tokens, each
    /// file checked whole before use) and removes its files.
    fn load(scratch: &Scratch, side: Side, expected: Expected<'_>) -> Result<ShardSet, LocalMatchFailure> {
        let i = expected.index;
        let kept_path = scratch.path(side, "kept", i);
        let mut reader = ShardReader::open(&kept_path, expected)?;
        // The count is checked only at the end: it bounds the first allocation, no more.
        let capacity = usize::try_from(reader.header().count.min(1 << 24)).unwrap_or(0);
        let mut entries: Vec<(Token, u32, Kind)> = Vec::with_capacity(capacity);
        let (mut ordinals, mut id_text, mut id_ends) = (Vec::new(), String::new(), Vec::new());
        let mut id = String::new();
        while let Some(entry) = reader.next_entry(&mut id)? {
            // A record's entries in one shard are consecutive: it was written whole.
            if ordinals.last() != Some(&entry.ordinal) {
                ordinals.push(entry.ordinal);
                id_text.push_str(&id);
                id_ends.push(id_text.len());
            }
            entries.push((entry.token, (ordinals.len() - 1) as u32, entry.kind));
        }
        reader.finish()?;
        let excluded_path = scratch.path(side, "excluded", i);
        let mut reader = ShardReader::open(&excluded_path, expected)?;
        let mut excluded: Vec<Token> = Vec::new();
        while let Some(entry) = reader.next_entry(&mut id)? {
            excluded.push(entry.token);
        }
        reader.finish()?;
        for path in [&kept_path, &excluded_path] {
            std::fs::remove_file(path).map_err(scratch.io())?;
        }
        let identifiers = entries.len() as u64;
        let repeated = if excluded.is_empty() {
            None
        } else {
            // Repeats across kept and excluded records, as the unsharded read counts them.
            let mut all: Vec<Token> = entries.iter().map(|e| e.0).chain(excluded).collect();
            all.par_sort_unstable();
            let distinct = all.chunk_by(|a, b| a == b).count();
            Some((all.len() - distinct) as u64)
        };
        let set = PreparedSet::new(entries, 0);
        let repeated = repeated.unwrap_or(identifiers - set.len() as u64);
        Ok(ShardSet { set, ordinals, id_text, id_ends, identifiers, repeated })
    }

    fn id(&self, local: u32) -> &str {
        let i = local as usize;
        let start = if i == 0 { 0 } else { self.id_ends[i - 1] };
        &self.id_text[start..self.id_ends[i]]
    }

    /// Writes the records holding a matched token, in record order: ordinal, kinds, id.
    fn write_matched(&self, path: &Path, matched: &[bool]) -> std::io::Result<()> {
        let mut out = SpoolWriter::create(path, 256 << 10)?;
        for (local, kinds) in self.set.matched_records(matched) {
            out.push(self.ordinals[local as usize], kinds_tag(kinds), self.id(local))?;
        }
        out.finish()
    }

    fn add_to(&self, totals: &mut Totals, sent: u64) {
        totals.identifiers += self.identifiers;
        totals.distinct += self.set.len() as u64;
        totals.repeated += self.repeated;
        totals.sent += sent;
    }
}

/// A [`KindSet`] as one byte: bit `k` for kind `k`.
fn kinds_tag(kinds: KindSet) -> u8 {
    Kind::ALL.into_iter().filter(|&k| kinds.contains(k)).fold(0, |tag, k| tag | 1 << k as u8)
}

/// Adds the kinds of `tag` to `kinds`.
fn add_kinds(kinds: &mut KindSet, tag: u8) {
    for k in Kind::ALL.into_iter().filter(|&k| tag & (1 << k as u8) != 0) {
        kinds.insert(k);
    }
}

/// Merges one side's per-shard matched records (each in record order) into the
/// match file at `path`, one row per record with the kinds of all its shards;
/// returns the rows written.
fn merge_matched(scratch: &Scratch, side: Side, path: &Path) -> Result<u64, LocalMatchFailure> {
    let io = scratch.io();
    let mut readers: Vec<SpoolReader> = (0..scratch.shards)
        .map(|i| SpoolReader::open(&scratch.path(side, "matched", i)))
        .collect::<Result<_, _>>()
        .map_err(&io)?;
    let mut heads: Vec<(String, u8)> = vec![(String::new(), 0); readers.len()];
    let mut heap = BinaryHeap::new();
    for (i, reader) in readers.iter_mut().enumerate() {
        if let Some((ordinal, tag)) = reader.next_record(&mut heads[i].0).map_err(&io)? {
            heads[i].1 = tag;
            heap.push(Reverse((ordinal, i)));
        }
    }
    let write_err = |source| LocalMatchFailure::Write { path: path.to_owned(), source };
    let staged = Staged::create(path).map_err(|e| LocalMatchFailure::Write { path: e.path, source: e.source })?;
    let mut rows = MatchRows::new(staged).map_err(write_err)?;
    let mut count = 0u64;
    while let Some(Reverse((ordinal, first))) = heap.pop() {
        let mut kinds = KindSet::default();
        add_kinds(&mut kinds, heads[first].1);
        let id = std::mem::take(&mut heads[first].0);
        let mut advance = vec![first];
        while let Some(&Reverse((next, i))) = heap.peek()
            && next == ordinal
        {
            heap.pop();
            add_kinds(&mut kinds, heads[i].1);
            advance.push(i);
        }
        rows.push(&id, kinds).map_err(write_err)?;
        count += 1;
        heads[first].0 = id;
        for i in advance {
            if let Some((ordinal, tag)) = readers[i].next_record(&mut heads[i].0).map_err(&io)? {
                heads[i].1 = tag;
                heap.push(Reverse((ordinal, i)));
            }
        }
    }
    let staged = rows.finish().map_err(write_err)?;
    staged.commit().map_err(|e| LocalMatchFailure::Write { path: e.path, source: e.source })?;
    Ok(count)
}

/// Refuses a side whose file gives two records the same id (as the unsharded read
/// does, naming the earliest repeating line and the line it repeats), checking the
/// buckets of ids on all cores, one bucket per task.
fn check_unique_ids(scratch: &Scratch, side: Side, input: &Path, spilled: &Spilled) -> Result<(), LocalMatchFailure> {
    let repeats = (0..scratch.shards)
        .into_par_iter()
        .map(|i| {
            let path = scratch.path(side, "ids", i);
            let repeat = if spilled.id_column { first_repeat(&path).map_err(scratch.io())? } else { None };
            std::fs::remove_file(&path).map_err(scratch.io())?;
            Ok(repeat)
        })
        .collect::<Result<Vec<_>, LocalMatchFailure>>()?;
    match repeats.into_iter().flatten().min() {
        Some((line, first_line)) => {
            let numbering = spilled.numbering;
            Err(PrepareError::Read(ReadError::DuplicateId { path: input.to_owned(), numbering, line, first_line })
                .into())
        }
        None => Ok(()),
    }
}

/// The earliest line of one bucket of ids whose id repeats an earlier line's, and
/// the line of that id's first appearance.
fn first_repeat(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    let mut reader = SpoolReader::open(path)?;
    let (mut text, mut ids) = (String::new(), Vec::new());
    let mut id = String::new();
    while let Some((line, _)) = reader.next_record(&mut id)? {
        let start = text.len();
        text.push_str(&id);
        ids.push((id_hash(&id), line, start, text.len()));
    }
    // Equal ids are adjacent, in line order (the file is in line order).
    ids.sort_unstable_by_key(|&(hash, line, _, _)| (hash, line));
    let mut first: Option<(u64, u64)> = None;
    for run in ids.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        for (j, &(_, line, from, to)) in run.iter().enumerate().skip(1) {
            if let Some(&(_, first_line, ..)) = run[..j].iter().find(|e| text[e.2..e.3] == text[from..to])
                && first.is_none_or(|(l, _)| line < l)
            {
                first = Some((line, first_line));
            }
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_number_of_shards_follows_the_input_size() {
        let n = |largest, memory| default_shards(largest, memory).shards.get();
        let plenty = Some(24 << 30);
        for memory in [None, plenty] {
            assert_eq!(n(0, memory), 1);
            assert_eq!(n(BYTES_PER_SHARD, memory), 1);
            assert_eq!(n(BYTES_PER_SHARD + 1, memory), 2);
            assert_eq!(n(4 << 30, memory), 128);
            assert_eq!(n(u64::MAX, memory), super::MAX_SHARDS);
        }
        assert!(!default_shards(4 << 30, plenty).short_of_memory);
    }

    #[test]
    fn the_default_number_of_shards_follows_the_memory_left() {
        // 256 MiB left (a small container): shards of 16 MiB of input, twice as many.
        let plan = default_shards(4 << 30, Some(256 << 20));
        assert_eq!((plan.shards.get(), plan.bytes_per_shard, plan.short_of_memory), (256, 16 << 20, false));
        // Almost nothing left: shards of 1 MiB, never smaller.
        let plan = default_shards(64 << 20, Some(1 << 20));
        assert_eq!((plan.shards.get(), plan.bytes_per_shard, plan.short_of_memory), (64, 1 << 20, true));
        // More input than 4096 shards of the size memory allows: said, not hidden.
        let plan = default_shards(64 << 30, Some(64 << 20));
        assert_eq!((plan.shards.get(), plan.short_of_memory), (super::MAX_SHARDS, true));
    }
}
