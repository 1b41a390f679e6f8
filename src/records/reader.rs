//! Reading a CSV/TSV or Parquet file into a [`RecordSet`].
//!
//! A reader thread parses the file into batches of raw rows (`input`; recycled, so
//! parsing allocates little); the calling thread has each batch normalized and tokenized on
//! all cores with rayon (the per-row work: `row`) and appends the results in file
//! order (`sink`).
//!
//! [`read_rows`] runs the same pipeline (the same columns, rules, rejects and
//! counts) without building a set: it hands each record to a callback and keeps
//! nothing, so its memory does not grow with the file.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use super::input::Input;
use super::options::{BadRows, Mode, Numbering, ReadError, ReadOptions};
use super::row::{BATCH_ROWS, Chunk, RawRow, Worker, resolve_extra};
use super::sink::{Row, Sink, Visit, count_duplicates, duplicate_ids};
use super::{FilterDigests, ReadStats, RecordSet, RejectWriter};
use crate::key::Key;
use crate::progress::{self, Unit};
use crate::token::Tokenizer;
/// Rows per worker task: each task's results share a few vectors ([`Chunk`]), so
/// reading allocates per chunk, not per row.
const CHUNK_ROWS: usize = 256;

/// Reads `path` into a [`RecordSet`] of tokens under `tokenizer`, without
/// [`FilterDigests`]: a set that an opt-out or suppression filter will check is read
/// by `crate::prepare`, which keys it for the filter in the same pass.
pub fn read(path: &Path, tokenizer: &Tokenizer, options: ReadOptions) -> Result<RecordSet, ReadError> {
    read_with(path, tokenizer, None, options, None)
}

/// Reads `path` as [`read`] does, also keying every record id and identifier under
/// `digester` ([`FilterDigests`]), the key of the filter that will check the set.
pub(crate) fn read_digested(
    path: &Path,
    tokenizer: &Tokenizer,
    digester: &Tokenizer,
    options: ReadOptions,
) -> Result<RecordSet, ReadError> {
    read_with(path, tokenizer, Some(digester), options, None)
}

/// Reads `path` as [`read`] does (the same columns, normalization, rejects, reject
/// report, limits and [`BadRows`]) but keeps nothing: each record is
/// handed to `visit` ([`Row`]: its id, region and valid identifiers as written) in
/// file order, and only the counts are returned, so memory does not grow with the
/// file. `visit` returning [`ControlFlow::Break`] ends the read with
/// [`ReadError::Stopped`].
///
/// What needs the whole file is left out: ids are not checked for repeats (not
/// even under [`Mode::Match`]), and [`ReadStats::duplicate_identifiers`] counts only
/// repeats within a row.
pub fn read_rows(
    path: &Path,
    options: ReadOptions,
    visit: &mut (dyn FnMut(&Row<'_>) -> ControlFlow<()> + Send),
) -> Result<ReadStats, ReadError> {
    // The tokens only find an identifier repeated within its row; they never leave
    // this call, so any key does.
    let tokenizer = Tokenizer::new(&Key::from_bytes([0; 32]));
    read_with(path, &tokenizer, None, options, Some(visit)).map(|set| set.stats)
}

/// Reads `path` as [`read_rows`] does (streaming, nothing kept, the same rules and
/// counts), with each record's identifiers keyed under `tokenizer` and, with a
/// `digester`, digested for the filter that will check them ([`Row::tokens`],
/// [`Row::id_digest`]): the input of an out-of-core match (`crate::shard`), which
/// reads it through `crate::prepare::stream` like every side.
///
/// As with [`read_rows`], what needs the whole file is the caller's: ids are not
/// checked for repeats, and [`ReadStats::duplicate_identifiers`] counts only repeats
/// within a row.
pub(crate) fn read_tokens(
    path: &Path,
    tokenizer: &Tokenizer,
    digester: Option<&Tokenizer>,
    options: ReadOptions,
    visit: &mut (dyn FnMut(&Row<'_>) -> ControlFlow<()> + Send),
) -> Result<ReadStats, ReadError> {
    read_with(path, tokenizer, digester, options, Some(visit)).map(|set| set.stats)
}

fn read_with(
    path: &Path,
    tokenizer: &Tokenizer,
    digester: Option<&Tokenizer>,
    mut options: ReadOptions,
    visit: Option<&mut Visit<'_>>,
) -> Result<RecordSet, ReadError> {
    let (mut input, header, file_len) = Input::open(path, options.limits)?;
    if header.is_empty() || header.iter().all(|h| h.trim().is_empty()) {
        return Err(ReadError::NoHeader { path: path.to_owned() });
    }
    let columns = options
        .columns
        .resolve(&header, !options.mode.list())
        .map_err(|source| ReadError::Columns { path: path.to_owned(), source })?;

    let extra =
        resolve_extra(&columns, &options).map_err(|source| ReadError::Columns { path: path.to_owned(), source })?;
    let used: Vec<usize> = columns.used().chain(extra.value).chain(extra.group).collect();
    input.select(path, &used)?;
    let numbering = input.numbering();

    let progress =
        progress::start(options.progress.as_ref(), &format!("reading {}", path.display()), file_len, Unit::Bytes);

    let keep_values = options.rejects.as_ref().is_some_and(RejectWriter::include_values);
    let keep_raw = visit.is_some();
    let mut sink = Sink {
        set: RecordSet::new(options.normalizer.profile(), columns.id.is_some()),
        digests: digester.map(|_| FilterDigests::default()),
        ids: (columns.id.is_some() && !options.mode.list() && !keep_raw).then(Vec::new),
        columns: &columns,
        extra,
        group_index: std::collections::HashMap::new(),
        rejects: options.rejects.take(),
        path,
        numbering,
        complete: options.mode == Mode::List(BadRows::Refuse),
        visit,
    };

    let (full_tx, full_rx) = sync_channel::<Result<Vec<RawRow>, ReadError>>(2);
    let (free_tx, free_rx) = sync_channel::<Vec<RawRow>>(4);
    for _ in 0..3 {
        let _ = free_tx.send(Vec::with_capacity(BATCH_ROWS));
    }
    let worker = Worker {
        list: options.mode.list(),
        quoted: numbering == Numbering::Lines,
        columns: &columns,
        extra,
        normalizer: &options.normalizer,
        tokenizer,
        digester,
        keep_values,
        keep_raw,
    };
    std::thread::scope(|scope| -> Result<(), ReadError> {
        // Both channel ends this side holds are owned by this closure, so any early
        // return (a bad row, a failed reject write) drops them and the parser thread,
        // waiting on either, ends; the scope can then join it instead of hanging.
        let (full_rx, free_tx) = (full_rx, free_tx);
        let bar = progress.clone();
        scope.spawn(move || input.send_rows(path, full_tx, free_rx, bar));
        // Batch n+1 is normalized on the pool while this thread appends batch n.
        let mut pending: Vec<Chunk> = Vec::new();
        let append = |sink: &mut Sink, chunks: &[Chunk]| {
            chunks.iter().flat_map(Chunk::parts).try_for_each(|row| sink.append(row))
        };
        for batch in full_rx {
            let batch = batch?;
            let (outs, appended) = rayon::join(
                || batch.par_chunks(CHUNK_ROWS).map_init(String::new, |buf, rows| worker.chunk(rows, buf)).collect(),
                || append(&mut sink, &pending),
            );
            appended?;
            pending = outs;
            let _ = free_tx.send(batch);
        }
        append(&mut sink, &pending)
    })?;
    progress.finish();
    let Sink { mut set, digests, ids, rejects, .. } = sink;
    set.stats.duplicate_identifiers += count_duplicates(&set.entries);
    if let Some(ids) = ids {
        let (count, first) = duplicate_ids(&set, ids);
        set.stats.duplicate_ids = count;
        if let (Mode::Match, Some((line, first_line))) = (&options.mode, first) {
            return Err(ReadError::DuplicateId { path: path.to_owned(), numbering, line, first_line });
        }
    }
    set.filter_digests = digests;
    if let Some(rejects) = rejects {
        rejects.finish()?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{Kind, Normalizer, Profile, Region};
    use std::sync::Arc;

    use crate::progress::{Meter, Progress};

    /// A [`Progress`] (and its meters) that logs what it is told.
    #[derive(Clone, Debug, Default)]
    struct Logged(Arc<std::sync::Mutex<Vec<String>>>);

    impl Logged {
        fn log(&self, event: String) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Progress for Logged {
        fn start(&self, label: &str, total: u64, unit: Unit) -> Arc<dyn Meter> {
            self.log(format!("start {label} {total} {unit:?}"));
            Arc::new(self.clone())
        }
    }

    impl Meter for Logged {
        fn set_total(&self, total: u64) {
            self.log(format!("total {total}"));
        }
        fn set_position(&self, done: u64) {
            self.log(format!("at {done}"));
        }
        fn advance(&self, units: u64) {
            self.log(format!("advance {units}"));
        }
        fn finish(&self) {
            self.log("finish".to_owned());
        }
    }

    #[test]
    fn reading_reports_the_bytes_read_to_the_callers_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.csv");
        let text = "id,email\n1,a@example.com\n2,b@example.com\n";
        std::fs::write(&path, text).unwrap();
        let logged = Logged::default();
        let mut options = ReadOptions::new(Normalizer::new(Profile::IdmatchV1, None), Mode::Match);
        options.progress = Some(Arc::new(logged.clone()));
        let set = read(&path, &Tokenizer::new(&Key::from_bytes([1; 32])), options).unwrap();
        assert_eq!(set.len(), 2);
        let log = logged.0.lock().unwrap().clone();
        let len = text.len();
        assert_eq!(
            log,
            [format!("start reading {} {len} Bytes", path.display()), format!("at {len}"), "finish".into()]
        );
    }

    #[test]
    fn read_rows_hands_on_each_record_as_written_and_counts_as_read_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        let text = "member_id,email,phone,country\n\
                    m1, John.Doe@Example.com ,(415) 555-0100,US\n\
                    m2,not-an-email,020 7183 8750,GB\n\
                    ,a@example.com,a@example.com,\n\
                    m4,x@example.com,+1 415 555 0101,XX\n\
                    m5,too,many,fields,here\n";
        std::fs::write(&path, text).unwrap();
        let options = || {
            ReadOptions::new(
                Normalizer::new(Profile::IdmatchV1, Region::from_code("US").ok()),
                Mode::List(BadRows::Skip),
            )
        };
        /// Line, id, region, identifiers.
        type Seen = (u64, Option<String>, Option<String>, Vec<(Kind, String)>);
        let mut rows: Vec<Seen> = Vec::new();
        let stats = read_rows(&path, options(), &mut |row: &Row<'_>| {
            let identifiers = row.identifiers().map(|(k, v)| (k, v.to_owned())).collect();
            rows.push((row.line, row.id.map(str::to_owned), row.region.map(|r| r.to_string()), identifiers));
            ControlFlow::Continue(())
        })
        .unwrap();
        let tokenizer = Tokenizer::new(&Key::from_bytes([1; 32]));
        assert_eq!(stats, read(&path, &tokenizer, options()).unwrap().stats().clone());
        let s = |v: &str| v.to_owned();
        assert_eq!(
            rows,
            vec![
                (
                    2,
                    Some(s("m1")),
                    Some(s("US")),
                    vec![(Kind::Email, s(" John.Doe@Example.com ")), (Kind::Phone, s("(415) 555-0100"))]
                ),
                (3, Some(s("m2")), Some(s("GB")), vec![(Kind::Phone, s("020 7183 8750"))]),
                (4, Some(s("")), None, vec![(Kind::Email, s("a@example.com"))]),
                (5, Some(s("m4")), None, vec![(Kind::Email, s("x@example.com"))]),
            ]
        );
        assert_eq!((stats.rows, stats.records, stats.rejected_total(), stats.bad_rows_total()), (5, 4, 3, 1));

        // Refusing at the first problem, and stopping when asked.
        let mut complete = options();
        complete.mode = Mode::List(BadRows::Refuse);
        let err = read_rows(&path, complete, &mut |_: &Row<'_>| ControlFlow::Continue(())).unwrap_err();
        assert!(matches!(err, ReadError::Incomplete { line: 3, reason: "missing_at", .. }), "{err}");
        let mut seen = 0;
        let err = read_rows(&path, options(), &mut |_: &Row<'_>| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap_err();
        assert!(matches!(err, ReadError::Stopped { .. }) && seen == 1, "{err}");
    }
}
