//! Importing an opt-out list file into the store.
//!
//! The whole file is read and validated first (column detection, normalization,
//! rejects: [`records::read`] with `list: true`, tokens under the store key), so a
//! file that cannot be read changes nothing. The digests are then deduplicated,
//! sorted, and written in batches of [`ImportOptions::batch_size`], one transaction
//! (and one audit event per kind) per batch, in digest order: each batch touches
//! only its own key range of the table, which keeps a large import from rewriting
//! the same pages batch after batch. Re-running an import is harmless: entries
//! already present are counted, not duplicated.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::{Counts, EntryKind, OptOutStore, StoreEntry, StoreError, check_source, digest_order};
use crate::normalize::{Normalizer, Region};
use crate::progress::Progress;
use crate::records::{self, BadRows, ColumnSpec, Mode, ReadOptions, ReadStats, RejectWriter};
use crate::token::Label;

/// Entries per transaction unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1_000_000;

/// How to import a list file.
pub struct ImportOptions {
    /// Column names (default: detected from the header, as for every input).
    pub columns: ColumnSpec,
    /// Default region for national-format phone numbers.
    pub region: Option<Region>,
    /// The source label recorded with every entry and audit event.
    pub source: String,
    /// Entries per transaction.
    pub batch_size: usize,
    /// Refuse the whole file (import nothing) if any row or identifier is rejected
    /// (the default: an opt-out that cannot be read must not go missing quietly).
    pub strict: bool,
    /// Where to report rejected rows and identifiers (line, column, reason).
    pub rejects: Option<RejectWriter>,
    /// Where to report reading the list, if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
}

impl ImportOptions {
    /// Strict import under the `source` label: detected columns, no default region,
    /// the default batch size, no reject report, no progress reported.
    pub fn new(source: impl Into<String>) -> ImportOptions {
        ImportOptions {
            columns: ColumnSpec::default(),
            region: None,
            source: source.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            strict: true,
            rejects: None,
            progress: None,
        }
    }
}

/// Reported after each committed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// 1-based batch number.
    pub index: u64,
    /// Batches in this import.
    pub batches: u64,
    /// Entries in this batch.
    pub entries: u64,
    /// Entries of this batch that were new.
    pub added: u64,
    /// Entries in all batches committed so far.
    pub committed: u64,
    /// Distinct entries of the whole import.
    pub total: u64,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// How the file was read: rows, identifiers, rejects by reason, bad rows by reason.
    pub read: ReadStats,
    /// Non-empty record ids listed (when the file has an id column).
    pub ids: u64,
    /// Identifiers and ids found, duplicates included.
    pub candidates: u64,
    /// Distinct entries written.
    pub distinct: u64,
    /// Entries that were new.
    pub added: Counts,
    /// Entries that were already in the store.
    pub present: Counts,
    /// Transactions committed.
    pub batches: u64,
}

pub(super) fn import_file(
    store: &OptOutStore,
    path: &Path,
    mut options: ImportOptions,
    on_batch: &mut dyn FnMut(&BatchReport),
) -> Result<ImportReport, StoreError> {
    check_source(&options.source)?;
    // Bad rows are counted in the read and judged after it (`strict`).
    let mut read = ReadOptions::new(Normalizer::new(store.profile(), options.region), Mode::List(BadRows::Skip));
    read.columns = std::mem::take(&mut options.columns);
    read.progress = options.progress.clone();
    read.rejects = options.rejects.take();
    // The reader's tokens are exactly the store digests: same key, same labels.
    let set = records::read(path, store.digester(), read)?;
    let stats = set.stats().clone();
    if let (true, Some(refused)) = (options.strict, StoreError::strict_rejected(path, &stats)) {
        return Err(refused);
    }

    let mut entries: Vec<StoreEntry> =
        set.entries().iter().map(|e| StoreEntry { digest: e.token, kind: EntryKind::from(e.kind) }).collect();
    let mut ids = 0;
    if set.has_id_column() {
        let digester = store.digester();
        let id_entries: Vec<StoreEntry> = (0..set.len() as u32)
            .into_par_iter()
            .filter_map(|r| {
                let id = set.id(r);
                (!id.is_empty()).then(|| StoreEntry { digest: digester.token(Label::Id, id), kind: EntryKind::Id })
            })
            .collect();
        ids = id_entries.len() as u64;
        entries.extend(id_entries);
    }
    drop(set);
    let candidates = entries.len() as u64;
    entries.par_sort_unstable_by(|a, b| digest_order(&a.digest, &b.digest));
    entries.dedup_by(|a, b| a.digest == b.digest);

    let batch_size = options.batch_size.max(1);
    let total = entries.len() as u64;
    let batches = entries.len().div_ceil(batch_size) as u64;
    let mut report = ImportReport { read: stats, ids, candidates, distinct: total, ..ImportReport::default() };
    let backend = store.backend();
    let mut committed = 0u64;
    for (i, batch) in entries.chunks(batch_size).enumerate() {
        let outcome = backend.import_batch(batch, &options.source).map_err(|e| StoreError::ImportInterrupted {
            committed_batches: i as u64,
            committed_entries: committed,
            source: Box::new(e),
        })?;
        committed += batch.len() as u64;
        for kind in EntryKind::ALL {
            report.added.add(kind, outcome.added.get(kind));
            report.present.add(kind, outcome.present.get(kind));
        }
        report.batches += 1;
        on_batch(&BatchReport {
            index: i as u64 + 1,
            batches,
            entries: batch.len() as u64,
            added: outcome.added.total(),
            committed,
            total,
        });
    }
    backend.flush()?;
    Ok(report)
}
