//! Streaming one input file into `N` shard files: read (normalize, token and filter
//! digests in one pass, `prepare::stream`) → opt-out or suppression filter →
//! shard rule → shard files, in batches, in bounded memory (a few batches of rows,
//! and one write buffer per open file) whatever the size of the input.
//!
//! Invariant: a record the filter excludes reaches no shard file of [`Targets::kept`];
//! the local match may ask for its tokens in [`Targets::excluded`], only to count
//! identifiers repeated across records as the unsharded match does. Every record
//! gets its ordinal (its number among the file's records, excluded ones included),
//! so that outputs can be put back in file order.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use super::file::{ShardEntry, ShardFileError, ShardWriter};
use super::spool::SpoolWriter;
use super::{ShardRule, multiply_shift};
use crate::normalize::Kind;
use crate::optout::{OptOutError, OptOutSource};
use crate::records::{Numbering, ReadError, ReadOptions, ReadStats, Row};
use crate::token::{Token, Tokenizer};

/// Records per batch handed from the reading thread to the one writing shards.
const BATCH_RECORDS: usize = 1 << 15;

/// Why an input could not be split.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// The input could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The opt-out or suppression filter could not be applied.
    #[error(transparent)]
    OptOut(#[from] OptOutError),
    /// A shard file could not be written.
    #[error(transparent)]
    Shard(#[from] ShardFileError),
    /// A scratch file of the local match could not be written.
    #[error("scratch file in {dir}: {source}")]
    Scratch {
        /// The private directory of the scratch files.
        dir: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// The files one input is split into, one per shard of each kind asked for.
pub struct Targets {
    /// The tokens of the records the filter leaves in.
    pub kept: Vec<ShardWriter>,
    /// The tokens of the records it excludes (the local match, to count repeats).
    pub excluded: Option<Vec<ShardWriter>>,
    /// Record ids with their lines, split by a hash of the id, to check ids for
    /// repeats shard by shard (the local match), in the directory named.
    pub(crate) ids: Option<(PathBuf, Vec<SpoolWriter>)>,
}

/// What splitting one input counted.
#[derive(Clone, Debug, Default)]
pub struct Spilled {
    /// How the file was read; [`ReadStats::duplicate_identifiers`] counts only
    /// repeats within a row and [`ReadStats::duplicate_ids`] nothing: the rest needs
    /// the shards.
    pub stats: ReadStats,
    /// Records the filter excluded.
    pub excluded_records: u64,
    /// Whether the file has an id column (otherwise the ids are line numbers).
    pub id_column: bool,
    /// What the records' lines count (a Parquet file's are rows).
    pub numbering: Numbering,
}

/// One batch of records as read: per record, its line, id, id digest and the end of
/// its ids and entries in the shared vectors.
#[derive(Default)]
struct Batch {
    records: Vec<(u64, usize, usize, Option<Token>)>,
    ids: String,
    entries: Vec<(Kind, Token, Option<Token>)>,
    id_column: bool,
    numbering: Numbering,
}

impl Batch {
    fn push(&mut self, row: &Row<'_>) {
        match row.id {
            Some(id) => self.ids.push_str(id),
            None => {
                use std::fmt::Write;
                let _ = write!(self.ids, "{}", row.line);
            }
        }
        self.id_column = row.id.is_some();
        self.numbering = row.numbering();
        self.entries.extend_from_slice(row.tokens());
        self.records.push((row.line, self.ids.len(), self.entries.len(), row.id_digest()));
    }
}

/// A fixed 64-bit hash of a record id (FNV-1a), to spread ids over the buckets of
/// the repeat check and to group equal ids in one: not keyed and not collision
/// resistant, and needs neither (equal hashes are compared as text).
pub(crate) fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Reads `path` under `tokenizer` and `options` and writes each record's tokens to
/// the shard [`ShardRule::shard_of`] names among `targets`: into `targets.kept`
/// unless `filter` excludes the record (by id or by any identifier). The writers are
/// left open for the caller to finish.
pub fn spill<F: OptOutSource + ?Sized>(
    path: &Path,
    tokenizer: &Tokenizer,
    options: ReadOptions,
    filter: Option<&F>,
    rule: &ShardRule,
    targets: &mut Targets,
) -> Result<Spilled, SpillError> {
    let mut spilled = Spilled::default();
    let mut ordinal = 0u64;
    std::thread::scope(|scope| {
        let (full, batches) = sync_channel::<Batch>(2);
        let reader = scope.spawn(move || {
            let mut batch = Batch::default();
            let stats = {
                let mut visit = |row: &Row<'_>| {
                    batch.push(row);
                    if batch.records.len() < BATCH_RECORDS {
                        return ControlFlow::Continue(());
                    }
                    // The writing side is gone only after an error of its own.
                    match full.send(std::mem::take(&mut batch)) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(_) => ControlFlow::Break(()),
                    }
                };
                crate::prepare::stream(path, tokenizer, options, filter.map(|f| f.digester()), &mut visit)?
            };
            let _ = full.send(batch);
            Ok::<ReadStats, ReadError>(stats)
        });
        let written = batches.into_iter().try_for_each(|batch| {
            spilled.id_column |= batch.id_column;
            if !batch.records.is_empty() {
                spilled.numbering = batch.numbering;
            }
            write_batch(&batch, filter, rule, targets, &mut ordinal, &mut spilled.excluded_records)
        });
        // A panic there is a bug, not bad input: it goes on as a panic.
        let read = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written?;
        spilled.stats = read?;
        Ok(spilled)
    })
}

/// Filters one batch and writes it to the shards.
fn write_batch<F: OptOutSource + ?Sized>(
    batch: &Batch,
    filter: Option<&F>,
    rule: &ShardRule,
    targets: &mut Targets,
    ordinal: &mut u64,
    excluded_records: &mut u64,
) -> Result<(), SpillError> {
    let excluded = match filter {
        None => vec![false; batch.records.len()],
        Some(filter) => excluded(batch, filter)?,
    };
    let shards = shards_of(&batch.entries, rule);
    let (mut id_start, mut entry_start) = (0, 0);
    for (&(line, id_end, entries_end, _), out) in batch.records.iter().zip(excluded) {
        let id = &batch.ids[id_start..id_end];
        let entries = entry_start..entries_end;
        (id_start, entry_start) = (id_end, entries_end);
        let writers = match (out, &mut targets.excluded) {
            (false, _) => Some(&mut targets.kept),
            (true, excluded) => excluded.as_mut(),
        };
        *excluded_records += u64::from(out);
        if let Some(writers) = writers {
            for (&(kind, token, _), &shard) in batch.entries[entries.clone()].iter().zip(&shards[entries]) {
                writers[shard as usize].push(&ShardEntry { ordinal: *ordinal, kind, token }, id)?;
            }
        }
        if let (Some((dir, ids)), true) = (&mut targets.ids, batch.id_column) {
            let bucket = multiply_shift(id_hash(id), ids.len() as u32) as usize;
            ids[bucket].push(line, 0, id).map_err(|source| SpillError::Scratch { dir: dir.clone(), source })?;
        }
        *ordinal += 1;
    }
    Ok(())
}

/// The shard of each entry, on all cores: on plain threads of its own, not on the
/// rayon pool, because the reading side blocks pool threads while it waits for this
/// side to take its batches (a pool job here could wait for them forever).
fn shards_of(entries: &[(Kind, Token, Option<Token>)], rule: &ShardRule) -> Vec<u32> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let part = entries.len().div_ceil(threads).max(1024);
    let mut shards = vec![0u32; entries.len()];
    std::thread::scope(|scope| {
        for (entries, shards) in entries.chunks(part).zip(shards.chunks_mut(part)) {
            scope.spawn(move || {
                for ((_, token, _), shard) in entries.iter().zip(shards) {
                    *shard = rule.shard_of(token);
                }
            });
        }
    });
    shards
}

/// One flag per record of `batch`: its id or one of its identifiers is in `filter`.
fn excluded<F: OptOutSource + ?Sized>(batch: &Batch, filter: &F) -> Result<Vec<bool>, OptOutError> {
    let ask = |digests: Vec<Option<Token>>| -> Result<Vec<bool>, OptOutError> {
        let digests: Vec<Token> = digests.into_iter().collect::<Option<_>>().ok_or(OptOutError::NotDigested)?;
        let answers = filter.contains(&digests)?;
        if answers.len() != digests.len() {
            return Err(OptOutError::ShortAnswer { asked: digests.len(), answered: answers.len() });
        }
        Ok(answers)
    };
    let mut out = ask(batch.records.iter().map(|r| r.3).collect())?;
    let by_entry = ask(batch.entries.iter().map(|e| e.2).collect())?;
    let mut entry = 0;
    for (record, &(_, _, entries_end, _)) in batch.records.iter().enumerate() {
        out[record] |= by_entry[entry..entries_end].iter().any(|&x| x);
        entry = entries_end;
    }
    Ok(out)
}
