//! `idmatch shard`: one input file split into `N` shard files of keyed tokens with
//! their record ids and kinds, opt-outs applied first, for a party that matches (or
//! serves) shard by shard.
//!
//! The files appear together or not at all: they are written into a private staging
//! directory inside the output directory (mode 0600 each), synced, and renamed into
//! place only once the whole input was read; a failed split leaves the output
//! directory as it was. Shard files of an earlier split into another `N` are then
//! removed, so the directory never holds two splits.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use super::spill::{SpillError, Spilled, Targets, spill};
use super::{MAX_SHARDS, ShardRule, ShardWriter};
use crate::key::{Key, KeyError};
use crate::normalize::Normalizer;
use crate::optout::BadRows;
use crate::output::OutDir;
use crate::prepare::{Filter, PrepareError, StoreSummary};
use crate::records::{ColumnSpec, Mode, ReadOptions, ReadStats, RejectWriter};
use crate::token::{KeyFingerprint, Tokenizer};

/// Everything a split needs.
pub struct SplitOptions {
    /// The input file (CSV/TSV with a header).
    pub input: PathBuf,
    /// The campaign key file.
    pub key_file: PathBuf,
    /// `N`, at most [`MAX_SHARDS`].
    pub shards: NonZeroU32,
    /// Where the shard files go; created if missing.
    pub out_dir: PathBuf,
    /// The normalization profile (and default region).
    pub normalizer: Normalizer,
    /// The input's columns (unset ones are detected from the header).
    pub columns: ColumnSpec,
    /// The owner's opt-out list file.
    pub optouts: Option<PathBuf>,
    /// The owner's opt-out store and its key file (instead of `optouts`).
    pub optout_store: Option<(PathBuf, PathBuf)>,
    /// What to do with unreadable rows of the opt-out list (default: refuse).
    pub bad_list_rows: BadRows,
    /// Where to report the input's rejects, if anywhere.
    pub rejects: Option<RejectWriter>,
    /// Where to report how many of the input's bytes have been read, if anywhere.
    pub progress: Option<std::sync::Arc<dyn crate::progress::Progress>>,
}

/// Why a split failed; nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The campaign key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The opt-outs could not be loaded.
    #[error(transparent)]
    OptOut(#[from] PrepareError),
    /// The input could not be read, filtered or written out.
    #[error(transparent)]
    Spill(#[from] SpillError),
    /// Both an opt-out list and an opt-out store were given.
    #[error("give the opt-outs as a list or as a store, not both")]
    TwoOptOutSources,
    /// More shards than a split writes.
    #[error("{shards} shards asked for; at most {MAX_SHARDS}")]
    TooManyShards {
        /// `N` as asked.
        shards: u32,
    },
    /// The output directory or a file in it could not be created, synced or renamed.
    #[error("{path}: {source}")]
    Write {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// What a split wrote.
#[derive(Debug)]
pub struct SplitSummary {
    /// How the input was read (repeats of identifiers and ids are counted within
    /// rows only: the shards are never gathered).
    pub stats: ReadStats,
    /// Records excluded by the opt-outs.
    pub excluded_records: u64,
    /// How the opt-out list was read, when there was one.
    pub optout_list: Option<ReadStats>,
    /// The opt-out store consulted, when there was one.
    pub optout_store: Option<StoreSummary>,
    /// The shard files, in shard order, each with its entry count.
    pub files: Vec<(PathBuf, u64)>,
}

/// The name of shard `index` of `shards`: `shard-00003-of-00016.idms`.
pub fn shard_file_name(index: u32, shards: u32) -> String {
    format!("shard-{index:05}-of-{shards:05}.idms")
}

/// Whether `name` is a shard file's name (of any split).
fn is_shard_file_name(name: &str) -> bool {
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("shard-")
        .and_then(|rest| rest.strip_suffix(".idms"))
        .and_then(|rest| rest.split_once("-of-"))
        .is_some_and(|(i, n)| digits(i) && digits(n))
}

/// Splits `options.input` into `options.shards` shard files in `options.out_dir`.
pub fn split(mut options: SplitOptions) -> Result<SplitSummary, SplitError> {
    if options.optouts.is_some() && options.optout_store.is_some() {
        return Err(SplitError::TwoOptOutSources);
    }
    let n = options.shards.get();
    if n > MAX_SHARDS {
        return Err(SplitError::TooManyShards { shards: n });
    }
    let key = Key::load(&options.key_file)?;
    let optouts = match &options.optout_store {
        Some((db, key_file)) => Filter::store(db, key_file, options.normalizer.profile())?,
        None => Filter::list_or_none(options.optouts.as_deref(), &options.normalizer, options.bad_list_rows)?,
    };
    let out_dir = &options.out_dir;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SplitError::Write { path, source }
    };
    let staged = OutDir::create(out_dir).map_err(write_err(out_dir))?;
    let rejects = options.rejects.take();
    let result = write_shards(&options, &key, &optouts, rejects, staged.staging());
    let (written, spilled) = match result {
        Ok(done) => done,
        Err(e) => {
            staged.discard();
            return Err(e);
        }
    };
    let files = commit(staged, options.shards)?;
    Ok(SplitSummary {
        stats: spilled.stats,
        excluded_records: spilled.excluded_records,
        optout_list: optouts.list_stats().cloned(),
        optout_store: StoreSummary::of(&optouts),
        files: files.into_iter().zip(written).collect(),
    })
}

/// Moves the `shards` shard files written into `staged`'s staging directory into
/// place together, then removes the shard files of an earlier split into another
/// `N`, and returns the files' paths in shard order: the end of [`split`], and of a
/// split whose files other processes wrote into the staging directory (Spark's
/// tasks, `idmatch.spark.write_shards`).
pub fn commit(staged: OutDir, shards: NonZeroU32) -> Result<Vec<PathBuf>, SplitError> {
    let n = shards.get();
    let out_dir = staged.path().to_owned();
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SplitError::Write { path, source }
    };
    let names: Vec<String> = (0..n).map(|i| shard_file_name(i, n)).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    staged.commit(&name_refs).map_err(write_err(&out_dir))?;
    let entries = std::fs::read_dir(&out_dir).map_err(write_err(&out_dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_shard_file_name(&name) && !names.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(write_err(&entry.path()))?;
        }
    }
    Ok(names.iter().map(|name| out_dir.join(name)).collect())
}

/// Writes and syncs the shard files into `staging`; returns each one's entry count.
fn write_shards(
    options: &SplitOptions,
    key: &Key,
    optouts: &Filter,
    rejects: Option<RejectWriter>,
    staging: &Path,
) -> Result<(Vec<u64>, Spilled), SplitError> {
    let n = options.shards.get();
    let fingerprint = KeyFingerprint::of(key);
    let profile = options.normalizer.profile();
    let buffer = ((8usize << 20) / n as usize).clamp(16 << 10, 1 << 20);
    let kept = (0..n)
        .map(|i| ShardWriter::create(&staging.join(shard_file_name(i, n)), &fingerprint, profile, n, i, buffer))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SpillError::from)?;
    let mut targets = Targets { kept, excluded: None, ids: None };
    let mut read = ReadOptions::new(options.normalizer.clone(), Mode::Match);
    read.columns = options.columns.clone();
    read.progress = options.progress.clone();
    read.rejects = rejects;
    let rule = ShardRule::new(key, options.shards);
    let spilled = spill(&options.input, &Tokenizer::new(key), read, optouts.source(), &rule, &mut targets)?;
    let mut counts = Vec::with_capacity(n as usize);
    for writer in targets.kept {
        counts.push(writer.count());
        let file = writer.finish().map_err(SpillError::from)?;
        file.sync_all().map_err(|source| SplitError::Write { path: staging.to_owned(), source })?;
    }
    Ok((counts, spilled))
}
