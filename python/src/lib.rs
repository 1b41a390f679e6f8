//! `idmatch._native`: the Python extension over the idmatch crate.
//!
//! Every rule lives in the crate: normalization, tokens, the record reader and the
//! partner's gRPC client. This extension converts arguments, results and errors, and
//! releases the GIL (`Python::detach`, formerly `allow_threads`) while the crate
//! works. `spark` holds the per-task calls of `idmatch.spark`. The public Python API, with its docstrings, is `idmatch/__init__.py`.

mod client;
mod errors;
mod key;
mod records;
mod spark;
mod tokens;

use std::path::{Path, PathBuf};
use std::time::Duration;

use idmatch::normalize::{Kind, Normalizer, Profile, Region, parse_region, region_problem};
use idmatch::optout::BadRows;
use idmatch::progress::Bars;
use idmatch::psi::{ProtocolChoice, Reveal};
use idmatch::records::ColumnSpec;
use idmatch::service::client::ClientOptions;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::errors::{Class, Failure, IntoPy};
use crate::key::PyKey;

fn profile(name: &str) -> Result<Profile, Failure> {
    name.parse().map_err(Failure::usage)
}

fn region(code: Option<&str>) -> Result<Option<Region>, Failure> {
    code.map(|c| parse_region(c).map_err(|_| Failure::usage(region_problem(c)))).transpose()
}

fn normalizer(profile_name: &str, region_code: Option<&str>) -> Result<Normalizer, Failure> {
    Ok(Normalizer::new(profile(profile_name)?, region(region_code)?))
}

fn normalize(kind: Kind, value: &Bound<'_, PyAny>, normalizer: Result<Normalizer, Failure>) -> Result<String, Failure> {
    let normalizer = normalizer?;
    let text = value.cast::<PyString>().map_err(|_| {
        Failure::new(Class::Usage, format!("the {kind} to normalize must be a str, not {}", type_name(value)))
    })?;
    // A str with lone surrogates is not Unicode text: as a CSV cell that is not UTF-8.
    let Ok(text) = text.to_str() else {
        return Err(Failure::Normalization { kind: kind.label(), reason: "bad_encoding" });
    };
    normalizer.normalize(kind, text, None).map_err(|r| Failure::Normalization { kind: kind.label(), reason: r.code() })
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// The normalized email address, or NormalizationError (its `reason` is the CLI's
/// reject code, e.g. `missing_at`).
#[pyfunction]
#[pyo3(signature = (value, profile = "idmatch-v1"))]
fn normalize_email(py: Python<'_>, value: &Bound<'_, PyAny>, profile: &str) -> PyResult<String> {
    normalize(Kind::Email, value, normalizer(profile, None)).py_err(py)
}

/// The phone number in E.164, or NormalizationError (`reason` as the CLI's, e.g.
/// `unknown_country` for a national number without a region).
#[pyfunction]
#[pyo3(signature = (value, region = None, profile = "idmatch-v1"))]
fn normalize_phone(py: Python<'_>, value: &Bound<'_, PyAny>, region: Option<&str>, profile: &str) -> PyResult<String> {
    normalize(Kind::Phone, value, normalizer(profile, region)).py_err(py)
}

/// The campaign key: a `Key`, 32 `bytes`, or a key file (`key_file`).
enum KeyArg {
    Key(PyKey),
    File(PathBuf),
}

fn key_arg(key: Option<&Bound<'_, PyAny>>, key_file: Option<PathBuf>) -> Result<KeyArg, Failure> {
    match (key, key_file) {
        (Some(key), None) => {
            if let Ok(key) = key.cast::<PyKey>() {
                Ok(KeyArg::Key(key.get().clone()))
            } else if let Ok(bytes) = key.extract::<&[u8]>() {
                Ok(KeyArg::Key(PyKey::from_byte_slice(bytes)?))
            } else {
                Err(Failure::usage(format!(
                    "key= takes an idmatch.Key or 32 bytes, not {} (a key file goes in key_file=)",
                    type_name(key)
                )))
            }
        }
        (None, Some(path)) => Ok(KeyArg::File(path)),
        (Some(_), Some(_)) => Err(Failure::usage("give key= or key_file=, not both")),
        (None, None) => Err(Failure::usage("a campaign key is needed: key= (idmatch.Key or bytes) or key_file=")),
    }
}

fn columns(
    id_col: Option<String>,
    email_col: Vec<String>,
    phone_col: Vec<String>,
    region_col: Option<String>,
) -> ColumnSpec {
    ColumnSpec { id: id_col, email: email_col, phone: phone_col, region: region_col }
}

/// The bearer token file: `token_file`, or `token` written to the private file
/// `temp`.
fn token_file_arg(token: Option<String>, token_file: Option<PathBuf>, temp: &Path) -> Result<Option<PathBuf>, Failure> {
    match (token, token_file) {
        (Some(_), Some(_)) => Err(Failure::usage("give token= or token_file=, not both")),
        (Some(token), None) => {
            key::write_private(temp, token.as_bytes())
                .map_err(|e| Failure::new(Class::Output, format!("temporary token file: {e}")))?;
            Ok(Some(temp.to_owned()))
        }
        (None, file) => Ok(file),
    }
}

/// A private directory (mode 0700) for the temporary files of one call, removed
/// when the call returns.
fn private_dir() -> Result<tempfile::TempDir, Failure> {
    tempfile::Builder::new()
        .prefix("idmatch-py-")
        .tempdir()
        .map_err(|e| Failure::new(Class::Output, format!("cannot create a private temporary directory: {e}")))
}

/// Names temporary files in messages as the caller knows them.
fn renamed(failure: Failure, temps: &[(&Path, &str)]) -> Failure {
    temps.iter().fold(failure, |f, (path, name)| f.renaming(path, name))
}

/// The hashed export; see `idmatch.tokens` and `idmatch.write_tokens`.
#[pyfunction]
#[pyo3(signature = (key=None, records=None, *, key_file=None, input=None, columns_=None, output=None, profile="idmatch-v1", region=None, id_col=None, email_col=vec![], phone_col=vec![], region_col=None, optouts=None, skip_bad_list_rows=false, progress=false))]
#[allow(clippy::too_many_arguments)]
fn _tokens<'py>(
    py: Python<'py>,
    key: Option<&Bound<'py, PyAny>>,
    records: Option<&Bound<'py, PyAny>>,
    key_file: Option<PathBuf>,
    input: Option<PathBuf>,
    columns_: Option<Vec<String>>,
    output: Option<PathBuf>,
    profile: &str,
    region: Option<&str>,
    id_col: Option<String>,
    email_col: Vec<String>,
    phone_col: Vec<String>,
    region_col: Option<String>,
    optouts: Option<PathBuf>,
    skip_bad_list_rows: bool,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let dir = private_dir().py_err(py)?;
    let prepared = (|| {
        let normalizer = normalizer(profile, region)?;
        let key = match key_arg(key, key_file)? {
            KeyArg::Key(k) => k.key().clone(),
            KeyArg::File(path) => idmatch::key::Key::load(&path).map_err(|e| Failure::new(Class::KeyFile, e))?,
        };
        let input = records::input_file(dir.path(), records, columns_, input)?;
        Ok(tokens::TokensRequest {
            key,
            input,
            normalizer,
            columns: columns(id_col, email_col, phone_col, region_col),
            optouts,
            bad_list_rows: BadRows::skip_if(skip_bad_list_rows),
            progress: Bars::on_stderr(progress),
        })
    })();
    let records_path = dir.path().join("records.csv");
    let temps: [(&Path, &str); 1] = [(&records_path, records::RECORDS_NAME)];
    let request = prepared.map_err(|f| renamed(f, &temps)).py_err(py)?;
    match output {
        Some(output) => {
            let description = py
                .detach(|| tokens::Export::read(request).and_then(|export| export.write(&output)))
                .map_err(|f| renamed(f, &temps))
                .py_err(py)?;
            let json = py.import("json")?;
            json.call_method1("loads", (description.to_string(),))
        }
        None => {
            let rows = py
                .detach(|| tokens::Export::read(request).map(|export| export.rows()))
                .map_err(|f| renamed(f, &temps))
                .py_err(py)?;
            Ok(PyList::new(py, rows)?.into_any())
        }
    }
}

/// The partner's side of a match; see `idmatch.match`.
#[pyfunction]
#[pyo3(signature = (server, campaign, *, key=None, key_file=None, records=None, input=None, columns_=None, output=None, reveal="partner", protocol="auto", token=None, token_file=None, ca=None, cert=None, client_key=None, region=None, profile="idmatch-v1", suppress=None, skip_bad_list_rows=false, id_col=None, email_col=vec![], phone_col=vec![], region_col=None, idle_timeout=300.0, progress=false))]
#[allow(clippy::too_many_arguments)]
fn _match<'py>(
    py: Python<'py>,
    server: String,
    campaign: String,
    key: Option<&Bound<'py, PyAny>>,
    key_file: Option<PathBuf>,
    records: Option<&Bound<'py, PyAny>>,
    input: Option<PathBuf>,
    columns_: Option<Vec<String>>,
    output: Option<PathBuf>,
    reveal: &str,
    protocol: &str,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    region: Option<&str>,
    profile: &str,
    suppress: Option<PathBuf>,
    skip_bad_list_rows: bool,
    id_col: Option<String>,
    email_col: Vec<String>,
    phone_col: Vec<String>,
    region_col: Option<String>,
    idle_timeout: f64,
    progress: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let dir = private_dir().py_err(py)?;
    let d = dir.path();
    let (records_path, key_path, token_path, output_path) =
        (d.join("records.csv"), d.join("campaign.key"), d.join("token"), d.join("matches.csv"));
    let temps: [(&Path, &str); 4] = [
        (&records_path, records::RECORDS_NAME),
        (&key_path, "key"),
        (&token_path, "token"),
        (&output_path, "the temporary match output"),
    ];
    let prepared = (|| {
        let reveal: Reveal = reveal.parse().map_err(Failure::usage)?;
        let protocol: ProtocolChoice = protocol.parse().map_err(Failure::usage)?;
        protocol.offer(reveal).map_err(|e| Failure::usage(e.to_string()))?;
        let normalizer = normalizer(profile, region)?;
        if !(idle_timeout.is_finite() && idle_timeout > 0.0) {
            return Err(Failure::usage("idle_timeout must be a positive number of seconds"));
        }
        let key_file = match key_arg(key, key_file)? {
            KeyArg::Key(k) => k.file_in(d)?,
            KeyArg::File(path) => path,
        };
        let token_file = token_file_arg(token, token_file, &token_path)?;
        if cert.is_some() != client_key.is_some() {
            return Err(Failure::usage("cert= and client_key= go together (mutual TLS)"));
        }
        let input = records::input_file(d, records, columns_, input)?;
        Ok(ClientOptions {
            server,
            campaign,
            key_file,
            input,
            output: output.unwrap_or_else(|| output_path.clone()),
            reveal,
            protocol,
            normalizer,
            columns: columns(id_col, email_col, phone_col, region_col),
            suppress,
            bad_list_rows: BadRows::skip_if(skip_bad_list_rows),
            ca,
            cert,
            key: client_key,
            token_file,
            idle_timeout: Duration::from_secs_f64(idle_timeout),
            progress: Bars::on_stderr(progress),
        })
    })();
    let request = prepared.map_err(|f| renamed(f, &temps)).py_err(py)?;
    let outcome = py.detach(|| client::run(request)).map_err(|f| renamed(f, &temps)).py_err(py)?;
    let o = &outcome.summary.outcome;
    let result = PyDict::new(py);
    result.set_item("reveal", o.reveal.name())?;
    result.set_item("protocol", outcome.summary.protocol.name())?;
    result.set_item("partner_set_size", o.partner_set_size)?;
    result.set_item("owner_set_size", o.owner_set_size)?;
    result.set_item("blinded", o.blinded)?;
    result.set_item("intersection", o.intersection)?;
    result.set_item("matched_records", outcome.summary.matched_records)?;
    result.set_item("suppressed_records", outcome.summary.suppressed_records)?;
    let suppression_list = match &outcome.summary.suppression_list {
        Some(stats) => {
            let json = serde_json::to_string(stats)
                .map_err(|e| Failure::new(Class::Output, format!("suppression list counts: {e}")))
                .py_err(py)?;
            Some(py.import("json")?.call_method1("loads", (json,))?)
        }
        None => None,
    };
    result.set_item("suppression_list", suppression_list)?;
    let matches = match outcome.matches {
        Some(matches) => {
            let items = matches
                .into_iter()
                .map(|(id, kinds)| Ok((id, PyTuple::new(py, kinds)?)))
                .collect::<PyResult<Vec<_>>>()?;
            Some(PyList::new(py, items)?)
        }
        None => None,
    };
    result.set_item("matches", matches)?;
    Ok(result)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyKey>()?;
    m.add_function(wrap_pyfunction!(normalize_email, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_phone, m)?)?;
    m.add_function(wrap_pyfunction!(_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(_match, m)?)?;
    m.add_class::<spark::ShardReader>()?;
    m.add_function(wrap_pyfunction!(spark::_match_shard, m)?)?;
    m.add_class::<spark::ShardFileWriter>()?;
    m.add_class::<spark::ShardDir>()?;
    m.add("PROFILES", Profile::ALL.map(Profile::name).to_vec())?;
    m.add("REVEALS", Reveal::ALL.map(Reveal::name).to_vec())?;
    Ok(())
}
