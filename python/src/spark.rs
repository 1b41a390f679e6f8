//! The per-task pieces of `idmatch.spark`, each working on whole Arrow record
//! batches, never on one Python object per row: a partition's records into keyed
//! tokens with their shard ([`ShardReader`]), one shard of a partner's run against
//! the owner's server (`_match_shard`), one shard file written from its entries
//! ([`ShardFileWriter`]), and the output directory those files are staged in and
//! committed from ([`ShardDir`]). The Spark plan itself (which task does what, the
//! shuffle, the merge) is Python, in `idmatch/spark.py`, which hands the columns of
//! each Arrow batch over as their buffers (`bytes`) and builds Arrow arrays from the
//! buffers these functions return.
//!
//! Column buffers: a variable-length column (strings, binary) crosses as
//! `(validity, offsets, data, offset, length, wide)`, the Arrow layout (validity a
//! bitmap or `None`, offsets 32-bit or, `wide`, 64-bit, `offset` the array's slice
//! offset); every offset is checked against the buffers before any value is read.
//! Fixed-width columns cross as their values' bytes in the machine's byte order
//! (Arrow's, in one process). Kinds are coded as in shard files: 0 email, 1 phone;
//! a record's matched kinds as a bit mask, `1 << code`.
//!
//! Only tokens cross Spark's shuffle: a partition's raw identifiers are normalized
//! and tokenized where they are read (written to a private temporary CSV file that
//! the crate's reader reads, as for `records=` elsewhere), and the columns
//! [`ShardReader::read`] returns hold the keyed token, its kind and shard, and the
//! record's ordinal and id.

use std::io::{BufWriter, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idmatch::key::Key;
use idmatch::normalize::{Kind, Normalizer};
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
use pyo3::types::{PyBytes, PyDict};

use crate::errors::{Class, Failure, IntoPy};

/// A variable-length Arrow column as Python hands it over:
/// `(validity, offsets, data, offset, length, wide)`.
type VarArg<'py> = (Option<Bound<'py, PyBytes>>, Bound<'py, PyBytes>, Bound<'py, PyBytes>, usize, usize, bool);

/// A variable-length Arrow column (utf8 or binary), borrowed from its buffers.
#[derive(Clone, Copy)]
struct VarColumn<'a> {
    validity: Option<&'a [u8]>,
    offsets: &'a [u8],
    data: &'a [u8],
    offset: usize,
    len: usize,
    wide: bool,
}

impl<'a> VarColumn<'a> {
    /// The column of `arg`, its buffers checked to be long enough for its length
    /// (each value's bounds are checked when it is read).
    fn of(arg: &'a VarArg<'_>, what: &str) -> Result<VarColumn<'a>, Failure> {
        let (validity, offsets, data, offset, len, wide) = arg;
        let width = if *wide { 8 } else { 4 };
        let needed = offset.checked_add(*len).and_then(|n| n.checked_add(1)).and_then(|n| n.checked_mul(width));
        if needed.is_none_or(|n| offsets.as_bytes().len() < n) {
            return Err(Failure::input(format!("{what}: the Arrow offsets buffer is too short for {len} values")));
        }
        let validity = validity.as_ref().map(|v| v.as_bytes());
        if validity.is_some_and(|v| (v.len() as u128) * 8 < (*offset as u128) + (*len as u128)) {
            return Err(Failure::input(format!("{what}: the Arrow validity bitmap is too short for {len} values")));
        }
        Ok(VarColumn {
            validity,
            offsets: offsets.as_bytes(),
            data: data.as_bytes(),
            offset: *offset,
            len: *len,
            wide: *wide,
        })
    }

    fn offset_at(&self, j: usize) -> Option<usize> {
        if self.wide {
            let raw = self.offsets.get(j * 8..j * 8 + 8)?;
            usize::try_from(i64::from_ne_bytes(raw.try_into().ok()?)).ok()
        } else {
            let raw = self.offsets.get(j * 4..j * 4 + 4)?;
            usize::try_from(i32::from_ne_bytes(raw.try_into().ok()?)).ok()
        }
    }

    /// Value `i` (`None` where null), or an error naming `what` if the offsets
    /// point outside the data.
    fn get(&self, i: usize, what: &str) -> Result<Option<&'a [u8]>, Failure> {
        let j = self.offset + i;
        if let Some(bits) = self.validity
            && bits[j / 8] >> (j % 8) & 1 == 0
        {
            return Ok(None);
        }
        let bounds = self.offset_at(j).zip(self.offset_at(j + 1));
        bounds
            .and_then(|(start, end)| self.data.get(start..end))
            .map(Some)
            .ok_or_else(|| Failure::input(format!("{what}: value {i}'s Arrow offsets are outside its data")))
    }
}

/// The `n` values of a fixed-width column of `W`-byte values, checked for length.
fn fixed<'a, const W: usize>(
    bytes: &'a [u8],
    n: usize,
    what: &str,
) -> Result<impl Iterator<Item = [u8; W]> + 'a, Failure> {
    if bytes.len() != n.saturating_mul(W) {
        return Err(Failure::input(format!("{what}: {} bytes for {n} values of {W} bytes", bytes.len())));
    }
    Ok(bytes.chunks_exact(W).map(|c| c.try_into().expect("chunks of W bytes")))
}

/// The number of shards, `1..=MAX_SHARDS`.
fn shard_count(shards: u32) -> Result<NonZeroU32, Failure> {
    NonZeroU32::new(shards).filter(|n| n.get() <= idmatch::shard::MAX_SHARDS).ok_or_else(|| {
        Failure::usage(format!("shards must be between 1 and {}, not {shards}", idmatch::shard::MAX_SHARDS))
    })
}

/// A kind's code in shard files and in these columns: its place in `Kind::ALL`.
fn kind_code(kind: Kind) -> u8 {
    Kind::ALL.iter().position(|&k| k == kind).expect("every kind is in Kind::ALL") as u8
}

fn kind_of(code: u8) -> Result<Kind, Failure> {
    Kind::ALL
        .get(usize::from(code))
        .copied()
        .ok_or_else(|| Failure::input(format!("{code} is not an identifier kind's code (0 email, 1 phone)")))
}

fn token_of(bytes: Option<&[u8]>) -> Result<Token, Failure> {
    let bytes = bytes.ok_or_else(|| Failure::input("a token is missing (null)"))?;
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

/// Appends 32-bit Arrow offsets for values of these lengths (the first offset
/// already in `offsets`), or fails if the data outgrows them.
fn push_offset(offsets: &mut Vec<u8>, end: usize, what: &str) -> Result<(), Failure> {
    let end = i32::try_from(end)
        .map_err(|_| Failure::new(Class::Output, format!("{what}: more than 2 GiB in one Arrow batch")))?;
    offsets.extend_from_slice(&end.to_ne_bytes());
    Ok(())
}

/// One task's reader of a partition's records, in Arrow batches: the crate's
/// reader (column detection, normalization, counting and errors as for a CSV file),
/// the filter list (the owner's opt-outs or the partner's suppressions: a listed
/// record reaches no shard), the campaign key's tokens and shards. The key, the
/// list and the private temporary directory are loaded once per task.
#[pyclass(name = "ShardReader", module = "idmatch._native")]
pub struct ShardReader {
    dir: tempfile::TempDir,
    columns: Vec<String>,
    shards: NonZeroU32,
    partition_keys: Vec<i32>,
    key: Key,
    normalizer: Normalizer,
    spec: ColumnSpec,
    filter: Filter,
}

#[pymethods]
impl ShardReader {
    /// A reader of batches of the columns `columns`, for `shards` shards;
    /// `partition_keys[s]` is the value of the `pkey` column for shard `s`.
    #[new]
    #[pyo3(signature = (columns, *, shards, partition_keys, key=None, key_file=None, profile="idmatch-v1", region=None, id_col=None, email_col=vec![], phone_col=vec![], region_col=None, filter_list=None, skip_bad_list_rows=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        columns: Vec<String>,
        shards: u32,
        partition_keys: Vec<i32>,
        key: Option<&Bound<'_, PyAny>>,
        key_file: Option<PathBuf>,
        profile: &str,
        region: Option<&str>,
        id_col: Option<String>,
        email_col: Vec<String>,
        phone_col: Vec<String>,
        region_col: Option<String>,
        filter_list: Option<PathBuf>,
        skip_bad_list_rows: bool,
    ) -> PyResult<ShardReader> {
        let made = (|| {
            let shards = shard_count(shards)?;
            if partition_keys.len() != shards.get() as usize {
                return Err(Failure::usage(format!("{} partition keys for {shards} shards", partition_keys.len())));
            }
            let normalizer = crate::normalizer(profile, region)?;
            let key = load_key(key, key_file)?;
            let dir = crate::private_dir()?;
            let filter =
                Filter::list_or_none(filter_list.as_deref(), &normalizer, BadRows::skip_if(skip_bad_list_rows))
                    .map_err(Failure::input)?;
            let spec = ColumnSpec { id: id_col, email: email_col, phone: phone_col, region: region_col };
            Ok(ShardReader { dir, columns, shards, partition_keys, key, normalizer, spec, filter })
        })();
        made.py_err(py)
    }

    /// Reads one batch of `length` records, one column buffer per column, and
    /// returns its entries in record order (a record's in the order of its
    /// identifiers; records the filter list names have none) as column buffers:
    /// `shard`, `pkey` (int32), `pos` (int64, from `first_position`), `ordinal`
    /// (int64: the record's number in the partition, from `first_ordinal`, excluded
    /// records counted), `kind` (int8), `token` and `record_id` (binary and utf8,
    /// as `(offsets, data)` with 32-bit offsets), with `n` the entries; and the
    /// batch's counts: `records`, `excluded_records`, `has_id_column` and `stats`
    /// (the reader's).
    fn read<'py>(
        &self,
        py: Python<'py>,
        values: Vec<VarArg<'py>>,
        length: usize,
        first_ordinal: u64,
        first_position: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let records_path = self.dir.path().join("records.csv");
        let temps: [(&Path, &str); 1] = [(&records_path, crate::records::RECORDS_NAME)];
        let columns = (|| {
            if values.len() != self.columns.len() {
                return Err(Failure::usage(format!("{} columns for {} names", values.len(), self.columns.len())));
            }
            let columns = values
                .iter()
                .zip(&self.columns)
                .map(|(v, name)| VarColumn::of(v, name))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some((c, name)) = columns.iter().zip(&self.columns).find(|(c, _)| c.len != length) {
                return Err(Failure::usage(format!("column {name} has {} values, the batch {length}", c.len)));
            }
            Ok(columns)
        })()
        .py_err(py)?;
        let read = py
            .detach(|| {
                self.write_csv(&records_path, &columns)?;
                let mut options = ReadOptions::new(self.normalizer.clone(), Mode::Export);
                options.columns = self.spec.clone();
                let side = prepare::prepare(&records_path, &Tokenizer::new(&self.key), options, &self.filter)
                    .map_err(Failure::input)?;
                let assignment = idmatch::shard::assignment(side.records(), &ShardRule::new(&self.key, self.shards));
                let stats = serde_json::to_string(side.records().stats())
                    .map_err(|e| Failure::new(Class::Output, format!("read counts: {e}")))?;
                let out = self.entries(&side, &assignment, first_ordinal, first_position)?;
                Ok::<_, Failure>((side, out, stats))
            })
            .map_err(|f| crate::renamed(f, &temps))
            .py_err(py)?;
        let (side, out, stats) = read;
        let result = PyDict::new(py);
        result.set_item("n", out.n)?;
        for (name, bytes) in [
            ("shard", &out.shard),
            ("pkey", &out.pkey),
            ("pos", &out.pos),
            ("ordinal", &out.ordinal),
            ("kind", &out.kind),
            ("token_offsets", &out.token_offsets),
            ("token_data", &out.token_data),
            ("id_offsets", &out.id_offsets),
            ("id_data", &out.id_data),
        ] {
            result.set_item(name, PyBytes::new(py, bytes))?;
        }
        let set = side.records();
        result.set_item("records", set.len())?;
        result.set_item("excluded_records", side.excluded_records())?;
        result.set_item("has_id_column", set.has_id_column())?;
        result.set_item("stats", py.import("json")?.call_method1("loads", (stats,))?)?;
        Ok(result)
    }
}

/// The columns [`ShardReader::read`] returns, as buffers.
#[derive(Default)]
struct EntryColumns {
    n: usize,
    shard: Vec<u8>,
    pkey: Vec<u8>,
    pos: Vec<u8>,
    ordinal: Vec<u8>,
    kind: Vec<u8>,
    token_offsets: Vec<u8>,
    token_data: Vec<u8>,
    id_offsets: Vec<u8>,
    id_data: Vec<u8>,
}

impl ShardReader {
    /// The batch as the private CSV file the crate's reader reads (null cells blank).
    fn write_csv(&self, path: &Path, columns: &[VarColumn<'_>]) -> Result<(), Failure> {
        let io = |e: std::io::Error| Failure::new(Class::Output, format!("temporary records file: {e}"));
        let file = if path.exists() {
            std::fs::OpenOptions::new().write(true).truncate(true).open(path)
        } else {
            crate::key::write_private(path, b"").and_then(|()| std::fs::OpenOptions::new().write(true).open(path))
        };
        let mut out = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file.map_err(io)?));
        let csv = |e: csv::Error| io(e.into());
        out.write_record(&self.columns).map_err(csv)?;
        let rows = columns.first().map_or(0, |c| c.len);
        for i in 0..rows {
            for (column, name) in columns.iter().zip(&self.columns) {
                out.write_field(column.get(i, name)?.unwrap_or_default()).map_err(csv)?;
            }
            out.write_record(None::<&[u8]>).map_err(csv)?;
        }
        out.flush().map_err(io)?;
        out.into_inner().map_err(|e| io(e.into_error()))?.flush().map_err(io)
    }

    fn entries(
        &self,
        side: &prepare::Prepared,
        assignment: &[u16],
        first_ordinal: u64,
        first_position: u64,
    ) -> Result<EntryColumns, Failure> {
        let set = side.records();
        let mut out = EntryColumns::default();
        out.token_offsets.extend_from_slice(&0i32.to_ne_bytes());
        out.id_offsets.extend_from_slice(&0i32.to_ne_bytes());
        for (entry, &shard) in set.entries().iter().zip(assignment) {
            if side.is_excluded(entry.record) {
                continue;
            }
            let ordinal = first_ordinal + u64::from(entry.record);
            let position = first_position + out.n as u64;
            out.shard.extend_from_slice(&i32::from(shard).to_ne_bytes());
            out.pkey.extend_from_slice(&self.partition_keys[usize::from(shard)].to_ne_bytes());
            out.pos.extend_from_slice(&(position as i64).to_ne_bytes());
            out.ordinal.extend_from_slice(&(ordinal as i64).to_ne_bytes());
            out.kind.push(kind_code(entry.kind));
            out.token_data.extend_from_slice(&entry.token.0);
            push_offset(&mut out.token_offsets, out.token_data.len(), "tokens")?;
            out.id_data.extend_from_slice(set.id(entry.record).as_bytes());
            push_offset(&mut out.id_offsets, out.id_data.len(), "record ids")?;
            out.n += 1;
        }
        Ok(out)
    }
}

/// Shard `shard_index` of `shard_count` of the run `run_id` against the owner's
/// server, from the shard's entries as two columns (`kinds`, int8 codes, and
/// `tokens`, a binary column of 32-byte tokens), each entry its own record
/// numbered by its row, announcing `run_set_size` as the run's size. Returns the
/// shard's figures and, in `partner` and `both` modes, its matches as two column
/// buffers: `rows` (uint32, the entries' rows, ascending) and `kinds` (uint8, the
/// bit mask of the kinds matched).
#[pyfunction]
#[pyo3(signature = (server, campaign, kinds, tokens, *, run_id, shard_index, shard_count, run_set_size, key=None, key_file=None, reveal="partner", protocol="auto", token=None, token_file=None, ca=None, cert=None, client_key=None, profile="idmatch-v1", idle_timeout=300.0))]
#[allow(clippy::too_many_arguments)]
pub fn _match_shard<'py>(
    py: Python<'py>,
    server: String,
    campaign: String,
    kinds: &[u8],
    tokens: VarArg<'py>,
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
        let tokens = VarColumn::of(&tokens, "tokens")?;
        let n = tokens.len;
        if n != kinds.len() {
            return Err(Failure::usage(format!("{} kinds for {n} tokens", kinds.len())));
        }
        let n32 =
            u32::try_from(n).map_err(|_| Failure::usage(format!("{n} entries in one shard: at most 2^32 - 1")))?;
        let mut set = Vec::with_capacity(n);
        for (row, &code) in (0..n32).zip(kinds) {
            set.push((token_of(tokens.get(row as usize, "tokens")?)?, row, kind_of(code)?));
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
        Some(mut matches) => {
            matches.sort_unstable_by_key(|&(row, _)| row);
            let mut rows = Vec::with_capacity(matches.len() * 4);
            let mut masks = Vec::with_capacity(matches.len());
            for (row, kinds) in matches {
                rows.extend_from_slice(&row.to_ne_bytes());
                masks.push(
                    Kind::ALL.into_iter().filter(|&k| kinds.contains(k)).map(|k| 1u8 << kind_code(k)).sum::<u8>(),
                );
            }
            let columns = PyDict::new(py);
            columns.set_item("rows", PyBytes::new(py, &rows))?;
            columns.set_item("kinds", PyBytes::new(py, &masks))?;
            Some(columns)
        }
        None => None,
    };
    result.set_item("matches", matches)?;
    Ok(result)
}

/// One shard file being written, `shard-IIIII-of-NNNNN.idms` in `dir` (a new
/// file, mode 0600), for the key and profile, with the crate's writer: the bytes
/// `idmatch shard` writes for the same entries. Batches of entries are pushed in
/// file order; `finish()` completes and syncs the file. A writer dropped unfinished
/// leaves an incomplete file, which every reader refuses (the staging directory
/// it is in is discarded).
#[pyclass(name = "ShardFileWriter", module = "idmatch._native")]
pub struct ShardFileWriter {
    path: PathBuf,
    partial: PathBuf,
    writer: Option<ShardWriter>,
    partition_offsets: Vec<u64>,
}

#[pymethods]
impl ShardFileWriter {
    /// Shard `index` of `shards`, written under a name of this attempt's own
    /// (`attempt`: Spark's attempt number, so that a retried or speculative task
    /// never meets a copy's file) and renamed to the shard file's name by
    /// `finish()`; an entry of partition `p` with ordinal `o` is record
    /// `partition_offsets[p] + o` of the input.
    #[new]
    #[pyo3(signature = (dir, *, shards, index, partition_offsets, attempt=0, key=None, key_file=None, profile="idmatch-v1"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dir: PathBuf,
        shards: u32,
        index: u32,
        partition_offsets: Vec<u64>,
        attempt: u32,
        key: Option<&Bound<'_, PyAny>>,
        key_file: Option<PathBuf>,
        profile: &str,
    ) -> PyResult<ShardFileWriter> {
        let made = (|| {
            let n = shard_count(shards)?;
            if index >= n.get() {
                return Err(Failure::usage(format!("shard index {index} is not below {n}")));
            }
            let key = load_key(key, key_file)?;
            let profile = crate::profile(profile)?;
            let path = dir.join(split::shard_file_name(index, n.get()));
            let partial = dir.join(format!(".{}.attempt-{attempt}", split::shard_file_name(index, n.get())));
            let writer = ShardWriter::create(&partial, &KeyFingerprint::of(&key), profile, n.get(), index, 1 << 20)
                .map_err(|e| Failure::new(Class::Output, e))?;
            Ok(ShardFileWriter { path, partial, writer: Some(writer), partition_offsets })
        })();
        made.py_err(py)
    }

    /// Appends `length` entries given as columns: `part` (int32, the input
    /// partition), `ordinal` (int64, the record's number in its partition), `kind`
    /// (int8), `tokens` and `ids` (binary and utf8 column buffers).
    #[allow(clippy::too_many_arguments)]
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        length: usize,
        part: &[u8],
        ordinal: &[u8],
        kind: &[u8],
        tokens: VarArg<'py>,
        ids: VarArg<'py>,
    ) -> PyResult<()> {
        let (tokens, ids) = (VarColumn::of(&tokens, "tokens"), VarColumn::of(&ids, "record ids"));
        let offsets = &self.partition_offsets;
        let writer = self.writer.as_mut();
        py.detach(|| {
            let writer = writer.ok_or_else(|| Failure::usage("the shard file is finished"))?;
            let (tokens, ids) = (tokens?, ids?);
            if tokens.len != length || ids.len != length {
                return Err(Failure::usage(format!("{} tokens and {} ids for {length} entries", tokens.len, ids.len)));
            }
            let parts = fixed::<4>(part, length, "part")?;
            let ordinals = fixed::<8>(ordinal, length, "ordinal")?;
            let kinds = fixed::<1>(kind, length, "kind")?;
            for (i, ((p, o), k)) in parts.zip(ordinals).zip(kinds).enumerate() {
                let (p, o) = (i32::from_ne_bytes(p), i64::from_ne_bytes(o));
                let base = usize::try_from(p).ok().and_then(|p| offsets.get(p)).ok_or_else(|| {
                    Failure::input(format!("entry {i} names partition {p}, not one of {}", offsets.len()))
                })?;
                let o = u64::try_from(o).map_err(|_| Failure::input(format!("entry {i} has ordinal {o}")))?;
                let id = ids.get(i, "record ids")?.unwrap_or_default();
                let id = std::str::from_utf8(id)
                    .map_err(|_| Failure::input(format!("entry {i}'s record id is not UTF-8")))?;
                let entry =
                    ShardEntry { ordinal: base + o, kind: kind_of(k[0])?, token: token_of(tokens.get(i, "tokens")?)? };
                writer.push(&entry, id).map_err(|e| Failure::new(Class::Output, e))?;
            }
            Ok(())
        })
        .py_err(py)
    }

    /// Completes the file (count and checksum), syncs it, renames it to the shard
    /// file's name (replacing a copy's, which has the same bytes), and returns its
    /// entries.
    fn finish(&mut self, py: Python<'_>) -> PyResult<u64> {
        let (path, partial) = (self.path.clone(), self.partial.clone());
        let writer = self.writer.take();
        let finished = py.detach(move || {
            let writer = writer.ok_or_else(|| Failure::usage("the shard file is finished"))?;
            let count = writer.count();
            let file = writer.finish().map_err(|e| Failure::new(Class::Output, e))?;
            let io = |e: std::io::Error| Failure::new(Class::Output, format!("{}: {e}", path.display()));
            file.sync_all().map_err(io)?;
            std::fs::rename(&partial, &path).map_err(io)?;
            Ok(count)
        });
        finished.py_err(py)
    }
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
