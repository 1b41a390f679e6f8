//! The per-task pieces of `idmatch.spark`, each one call into the crate: one
//! partition of records into keyed tokens with their shard (`_shard_entries`),
//! one shard of a partner's run against the owner's server (`_match_shard`), one
//! shard file written (`_write_shard_file`), and the output directory those files
//! are staged in and committed from (`ShardDir`). The Spark plan itself (which
//! task does what, the shuffle, the merge) is Python, in `idmatch/spark.py`.
//!
//! Only tokens cross Spark's shuffle: a partition's raw identifiers are normalized
//! and tokenized where they are read, and the entries these functions return and
//! take hold the keyed token, its kind and shard, and the record's ordinal and id.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idmatch::key::Key;
use idmatch::normalize::Kind;
use idmatch::optout::BadRows;
use idmatch::output::OutDir;
use idmatch::prepare::{self, Filter};
use idmatch::psi::{PreparedSet, ProtocolChoice, Reveal};
use idmatch::records::{ColumnSpec, Mode, ReadOptions};
use idmatch::service::client::{self, OneShard, StreamOptions};
use idmatch::shard::file::ShardEntry;
use idmatch::shard::{ShardRule, ShardWriter, split};
use idmatch::token::{KeyFingerprint, Token, Tokenizer};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::errors::{Class, Failure, IntoPy};

/// The number of shards, `1..=MAX_SHARDS`.
fn shard_count(shards: u32) -> Result<NonZeroU32, Failure> {
    NonZeroU32::new(shards).filter(|n| n.get() <= idmatch::shard::MAX_SHARDS).ok_or_else(|| {
        Failure::usage(format!("shards must be between 1 and {}, not {shards}", idmatch::shard::MAX_SHARDS))
    })
}

fn kind(label: &str) -> Result<Kind, Failure> {
    Kind::ALL
        .into_iter()
        .find(|k| k.label() == label)
        .ok_or_else(|| Failure::input(format!("`{label}` is not an identifier kind (email or phone)")))
}

fn token_of(bytes: &[u8]) -> Result<Token, Failure> {
    let raw: [u8; 32] =
        bytes.try_into().map_err(|_| Failure::input(format!("a token is 32 bytes, not {}", bytes.len())))?;
    Ok(Token(raw))
}

fn load_key(key: Option<&Bound<'_, PyAny>>, key_file: Option<PathBuf>) -> Result<Key, Failure> {
    match crate::key_arg(key, key_file)? {
        crate::KeyArg::Key(k) => Ok(k.key().clone()),
        crate::KeyArg::File(path) => Key::load(&path).map_err(|e| Failure::new(Class::KeyFile, e)),
    }
}

/// One partition's records (dicts or tuples with `columns_`) read by the crate's
/// reader, checked against a filter list (the owner's opt-outs or the partner's
/// suppressions: a listed record reaches no shard), and turned into entries
/// `(shard, ordinal, kind, token, record id)` in record order, a record's entries
/// in the order of its identifiers; `ordinal` counts the partition's records from 0
/// (excluded ones included), as `idmatch shard` counts a file's. Returns the
/// entries and the partition's counts (`records`, `excluded_records` and the
/// reader's statistics, as JSON).
#[pyfunction]
#[pyo3(signature = (records, *, shards, key=None, key_file=None, columns_=None, profile="idmatch-v1", region=None, id_col=None, email_col=vec![], phone_col=vec![], region_col=None, filter_list=None, skip_bad_list_rows=false))]
#[allow(clippy::too_many_arguments)]
pub fn _shard_entries<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyAny>,
    shards: u32,
    key: Option<&Bound<'py, PyAny>>,
    key_file: Option<PathBuf>,
    columns_: Option<Vec<String>>,
    profile: &str,
    region: Option<&str>,
    id_col: Option<String>,
    email_col: Vec<String>,
    phone_col: Vec<String>,
    region_col: Option<String>,
    filter_list: Option<PathBuf>,
    skip_bad_list_rows: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let dir = crate::private_dir().py_err(py)?;
    let records_path = dir.path().join("records.csv");
    let prepared = (|| {
        let shards = shard_count(shards)?;
        let normalizer = crate::normalizer(profile, region)?;
        let key = load_key(key, key_file)?;
        let input = crate::records::input_file(dir.path(), Some(records), columns_, None)?;
        Ok((shards, normalizer, key, input))
    })();
    let temps: [(&Path, &str); 1] = [(&records_path, crate::records::RECORDS_NAME)];
    let (shards, normalizer, key, input) = prepared.map_err(|f| crate::renamed(f, &temps)).py_err(py)?;
    let columns = ColumnSpec { id: id_col, email: email_col, phone: phone_col, region: region_col };
    let read = py
        .detach(|| {
            let filter =
                Filter::list_or_none(filter_list.as_deref(), &normalizer, BadRows::skip_if(skip_bad_list_rows))
                    .map_err(Failure::input)?;
            // Ids may repeat here as in `idmatch shard`; the partner's match checks
            // its ids over the whole DataFrame.
            let mut options = ReadOptions::new(normalizer.clone(), Mode::Export);
            options.columns = columns;
            let side = prepare::prepare(&input, &Tokenizer::new(&key), options, &filter).map_err(Failure::input)?;
            let assignment = idmatch::shard::assignment(side.records(), &ShardRule::new(&key, shards));
            let stats = serde_json::to_string(side.records().stats())
                .map_err(|e| Failure::new(Class::Output, format!("read counts: {e}")))?;
            Ok::<_, Failure>((side, assignment, stats))
        })
        .map_err(|f| crate::renamed(f, &temps))
        .py_err(py)?;
    let (side, assignment, stats) = read;
    let set = side.records();
    let mut entries = Vec::with_capacity(set.entries().len());
    for (entry, &shard) in set.entries().iter().zip(&assignment) {
        if side.is_excluded(entry.record) {
            continue;
        }
        let row = (
            u32::from(shard),
            u64::from(entry.record),
            entry.kind.label(),
            PyBytes::new(py, &entry.token.0),
            set.id(entry.record),
        );
        entries.push(row.into_pyobject(py)?);
    }
    let counts = PyDict::new(py);
    counts.set_item("records", set.len())?;
    counts.set_item("excluded_records", side.excluded_records())?;
    counts.set_item("has_id_column", set.has_id_column())?;
    counts.set_item("stats", py.import("json")?.call_method1("loads", (stats,))?)?;
    PyTuple::new(py, [PyList::new(py, entries)?.into_any(), counts.into_any()])
}

/// Shard `shard_index` of `shard_count` of the run `run_id` against the owner's
/// server, from `entries` `(record, kind, token)` (records numbered by the caller),
/// announcing `run_set_size` as the run's size. Returns the shard's figures and, in
/// `partner` and `both` modes, its matches `(record, kinds)`.
#[pyfunction]
#[pyo3(signature = (server, campaign, entries, *, run_id, shard_index, shard_count, run_set_size, key=None, key_file=None, reveal="partner", protocol="auto", token=None, token_file=None, ca=None, cert=None, client_key=None, profile="idmatch-v1", idle_timeout=300.0))]
#[allow(clippy::too_many_arguments)]
pub fn _match_shard<'py>(
    py: Python<'py>,
    server: String,
    campaign: String,
    entries: &Bound<'py, PyAny>,
    run_id: &[u8],
    shard_index: u32,
    shard_count: u32,
    run_set_size: u64,
    key: Option<&Bound<'py, PyAny>>,
    key_file: Option<PathBuf>,
    reveal: &str,
    protocol: &str,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    profile: &str,
    idle_timeout: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let dir = crate::private_dir().py_err(py)?;
    let d = dir.path();
    let (key_path, token_path) = (d.join("campaign.key"), d.join("token"));
    let temps: [(&Path, &str); 2] = [(&key_path, "key"), (&token_path, "token")];
    let prepared = (|| {
        let run_id: [u8; 16] =
            run_id.try_into().map_err(|_| Failure::usage(format!("a run id is 16 bytes, not {}", run_id.len())))?;
        let shard = OneShard { run_id, index: shard_index, shards: self::shard_count(shard_count)? };
        let reveal: Reveal = reveal.parse().map_err(Failure::usage)?;
        let protocol: ProtocolChoice = protocol.parse().map_err(Failure::usage)?;
        if !(idle_timeout.is_finite() && idle_timeout > 0.0) {
            return Err(Failure::usage("idle_timeout must be a positive number of seconds"));
        }
        let key_file = match crate::key_arg(key, key_file)? {
            crate::KeyArg::Key(k) => k.file_in(d)?,
            crate::KeyArg::File(path) => path,
        };
        let token_file = crate::token_file_arg(token, token_file, &token_path)?;
        if cert.is_some() != client_key.is_some() {
            return Err(Failure::usage("cert= and client_key= go together (mutual TLS)"));
        }
        let mut set = Vec::new();
        for item in entries.try_iter().map_err(|e| Failure::input(format!("entries: {e}")))? {
            let item = item.map_err(|e| Failure::input(format!("entries: {e}")))?;
            let (record, kind_label, token_bytes): (u32, String, Vec<u8>) =
                item.extract().map_err(|e| Failure::input(format!("entries: {e}")))?;
            set.push((token_of(&token_bytes)?, record, kind(&kind_label)?));
        }
        let options = StreamOptions {
            server,
            campaign,
            key_file,
            reveal,
            protocol,
            profile: crate::profile(profile)?,
            ca,
            cert,
            key: client_key,
            token_file,
            idle_timeout: Duration::from_secs_f64(idle_timeout),
        };
        Ok((options, shard, PreparedSet::new(set, 0)))
    })();
    let (options, shard, set) = prepared.map_err(|f| crate::renamed(f, &temps)).py_err(py)?;
    let outcome = py
        .detach(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::new(Class::Match, format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(client::run_prepared_shard(options, shard, run_set_size, set)).map_err(Failure::from)
        })
        .map_err(|f| crate::renamed(f, &temps))
        .py_err(py)?;
    let o = &outcome.outcome;
    let result = PyDict::new(py);
    result.set_item("protocol", outcome.protocol.name())?;
    result.set_item("partner_set_size", o.partner_set_size)?;
    result.set_item("owner_set_size", o.owner_set_size)?;
    result.set_item("blinded", o.blinded)?;
    result.set_item("intersection", o.intersection)?;
    let matches = match outcome.matches {
        Some(matches) => {
            let rows = matches
                .into_iter()
                .map(|(record, kinds)| {
                    let labels: Vec<&str> =
                        Kind::ALL.into_iter().filter(|&k| kinds.contains(k)).map(Kind::label).collect();
                    Ok((record, PyTuple::new(py, labels)?))
                })
                .collect::<PyResult<Vec<_>>>()?;
            Some(PyList::new(py, rows)?)
        }
        None => None,
    };
    result.set_item("matches", matches)?;
    Ok(result)
}

/// Writes shard `index` of `shards` into `dir` under its name
/// (`shard-IIIII-of-NNNNN.idms`, a new file, mode 0600) for the key and profile,
/// from `entries` `(ordinal, kind, token, record id)` in file order, with the
/// crate's writer: the bytes `idmatch shard` writes for the same entries. Returns
/// the number of entries.
#[pyfunction]
#[pyo3(signature = (dir, entries, *, shards, index, key=None, key_file=None, profile="idmatch-v1"))]
#[allow(clippy::too_many_arguments)]
pub fn _write_shard_file(
    py: Python<'_>,
    dir: PathBuf,
    entries: &Bound<'_, PyAny>,
    shards: u32,
    index: u32,
    key: Option<&Bound<'_, PyAny>>,
    key_file: Option<PathBuf>,
    profile: &str,
) -> PyResult<u64> {
    let written = (|| {
        let n = shard_count(shards)?;
        if index >= n.get() {
            return Err(Failure::usage(format!("shard index {index} is not below {n}")));
        }
        let key = load_key(key, key_file)?;
        let profile = crate::profile(profile)?;
        let path = dir.join(split::shard_file_name(index, n.get()));
        let output = |e: idmatch::shard::ShardFileError| Failure::new(Class::Output, e);
        let mut writer =
            ShardWriter::create(&path, &KeyFingerprint::of(&key), profile, n.get(), index, 1 << 20).map_err(output)?;
        for item in entries.try_iter().map_err(|e| Failure::input(format!("entries: {e}")))? {
            let item = item.map_err(|e| Failure::input(format!("entries: {e}")))?;
            let (ordinal, kind_label, token_bytes, id): (u64, String, Vec<u8>, String) =
                item.extract().map_err(|e| Failure::input(format!("entries: {e}")))?;
            let entry = ShardEntry { ordinal, kind: kind(&kind_label)?, token: token_of(&token_bytes)? };
            writer.push(&entry, &id).map_err(output)?;
        }
        let count = writer.count();
        let file = writer.finish().map_err(output)?;
        file.sync_all().map_err(|e| Failure::new(Class::Output, format!("{}: {e}", path.display())))?;
        Ok(count)
    })();
    written.py_err(py)
}

/// An output directory of shard files and its private staging directory inside
/// it (the crate's `OutDir`): the tasks write the files into `staging`, then
/// `commit(shards)` moves all of them into place at once and removes the shard
/// files of an earlier split, as `idmatch shard` does; `discard()` leaves the
/// directory as it was.
#[pyclass(name = "ShardDir", module = "idmatch._native")]
pub struct ShardDir {
    staged: Option<OutDir>,
}

#[pymethods]
impl ShardDir {
    #[new]
    fn new(py: Python<'_>, out_dir: PathBuf) -> PyResult<ShardDir> {
        let staged = OutDir::create(&out_dir)
            .map_err(|e| Failure::new(Class::Output, format!("{}: {e}", out_dir.display())))
            .py_err(py)?;
        Ok(ShardDir { staged: Some(staged) })
    }

    /// The staging directory the shard files are written into.
    #[getter]
    fn staging(&self, py: Python<'_>) -> PyResult<PathBuf> {
        self.open().map(|s| s.staging().to_owned()).py_err(py)
    }

    /// Moves the `shards` files into place; returns their paths in shard order.
    fn commit(&mut self, py: Python<'_>, shards: u32) -> PyResult<Vec<PathBuf>> {
        let committed = (|| {
            let n = shard_count(shards)?;
            self.open()?;
            let staged = self.staged.take().ok_or_else(|| Failure::usage("the shard directory is closed"))?;
            split::commit(staged, n).map_err(|e| Failure::new(Class::Output, e))
        })();
        committed.py_err(py)
    }

    /// Removes the staging directory and what it holds.
    fn discard(&mut self) {
        if let Some(staged) = self.staged.take() {
            staged.discard();
        }
    }
}

impl ShardDir {
    fn open(&self) -> Result<&OutDir, Failure> {
        self.staged.as_ref().ok_or_else(|| Failure::usage("the shard directory was committed or discarded"))
    }
}
