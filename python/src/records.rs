//! Records given as Python objects become a private temporary CSV file, which the
//! crate's own reader then reads exactly as it reads `--input` files: the same column
//! detection, normalization, counting and errors. No second reader exists.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyString};

use crate::errors::{Class, Failure};

/// What error messages call records that came as Python objects (line 1 is the
/// header, so record `k`, counted from 0, is line `k + 2`).
pub const RECORDS_NAME: &str = "records";

/// The input file to read: the caller's `input` path, or `records` written to `dir`.
/// Exactly one of them must be given.
pub fn input_file(
    dir: &Path,
    records: Option<&Bound<'_, PyAny>>,
    columns: Option<Vec<String>>,
    input: Option<PathBuf>,
) -> Result<PathBuf, Failure> {
    match (records, input) {
        (Some(records), None) => {
            let path = dir.join("records.csv");
            write_records(&path, records, columns)?;
            Ok(path)
        }
        (None, Some(input)) => {
            if columns.is_some() {
                return Err(Failure::usage("columns= names the fields of records=; an input file has its own header"));
            }
            Ok(input)
        }
        (Some(_), Some(_)) => Err(Failure::usage("give records= or input=, not both")),
        (None, None) => Err(Failure::usage("give the records (records=) or a CSV/TSV file (input=)")),
    }
}

fn write_records(path: &Path, records: &Bound<'_, PyAny>, columns: Option<Vec<String>>) -> Result<(), Failure> {
    let py_err = |e: PyErr| Failure::input(format!("{RECORDS_NAME}: {e}"));
    if records.is_instance_of::<PyString>() || records.is_instance_of::<PyBytes>() {
        return Err(Failure::usage(
            "records= takes an iterable of dicts or tuples (or a pandas DataFrame); for a file, use input=",
        ));
    }
    let file = crate::key::write_private(path, b"").and_then(|()| std::fs::OpenOptions::new().write(true).open(path));
    let mut out = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file.map_err(io_err)?));
    let explicit_columns = columns.is_some();
    let mut header = columns;
    let mut header_written = false;
    for (index, item) in records.try_iter().map_err(py_err)?.enumerate() {
        let item = item.map_err(py_err)?;
        let at = |what: &str| Failure::input(format!("{RECORDS_NAME}: record {index} (line {}): {what}", index + 2));
        if let Ok(dict) = item.cast::<PyDict>() {
            if header.is_none() {
                let names = dict.keys().iter().map(|k| k.str().map(|s| s.to_string())).collect::<PyResult<_>>();
                header = Some(names.map_err(py_err)?);
            }
            let names = header.as_deref().unwrap_or_default();
            write_header_once(&mut out, names, &mut header_written)?;
            let mut found = 0;
            for name in names {
                match dict.get_item(name).map_err(py_err)? {
                    Some(value) => {
                        found += 1;
                        write_cell(&mut out, &value).map_err(|e| at(&e))?;
                    }
                    None => out.write_field(b"").map_err(csv_err)?,
                }
            }
            if !explicit_columns && found != dict.len() {
                let extra: Vec<String> = dict
                    .keys()
                    .iter()
                    .filter_map(|k| k.str().ok().map(|s| s.to_string()))
                    .filter(|k| !names.contains(k))
                    .collect();
                return Err(at(&format!(
                    "has fields the first record does not have ({}); pass columns=[...] to name every field",
                    extra.join(", ")
                )));
            }
        } else {
            if item.is_instance_of::<PyString>() || item.is_instance_of::<PyBytes>() {
                return Err(at("is a string; each record is a dict or a tuple"));
            }
            let Some(names) = header.as_deref() else {
                return Err(Failure::usage("records given as tuples need columns=[...] naming their fields"));
            };
            write_header_once(&mut out, names, &mut header_written)?;
            let mut fields = 0;
            for value in item.try_iter().map_err(|_| at("is neither a dict nor a tuple"))? {
                write_cell(&mut out, &value.map_err(py_err)?).map_err(|e| at(&e))?;
                fields += 1;
            }
            if fields != names.len() {
                return Err(at(&format!("has {fields} fields, but there are {} columns", names.len())));
            }
        }
        out.write_record(None::<&[u8]>).map_err(csv_err)?;
    }
    match header.as_deref() {
        Some(names) => write_header_once(&mut out, names, &mut header_written)?,
        None => return Err(Failure::input(format!("{RECORDS_NAME}: no records, and no columns= to make a header"))),
    }
    out.flush().map_err(io_err)?;
    out.into_inner().map_err(|e| io_err(e.into_error()))?.flush().map_err(io_err)
}

fn io_err(e: std::io::Error) -> Failure {
    Failure::new(Class::Output, format!("temporary records file: {e}"))
}

fn csv_err(e: csv::Error) -> Failure {
    io_err(e.into())
}

fn write_header_once<W: Write>(out: &mut csv::Writer<W>, names: &[String], written: &mut bool) -> Result<(), Failure> {
    if !*written {
        out.write_record(names).map_err(csv_err)?;
        *written = true;
    }
    Ok(())
}

/// Writes one field: `None` and NaN are blank cells, `str` as is (a string with lone
/// surrogates as the bytes they stand for, which the reader reports as
/// `bad_encoding`, as it does for such a cell in a file), `bytes` as is, anything
/// else as `str(value)`.
fn write_cell<W: Write>(out: &mut csv::Writer<W>, value: &Bound<'_, PyAny>) -> Result<(), String> {
    let result = if value.is_none() {
        out.write_field(b"")
    } else if let Ok(text) = value.cast::<PyString>() {
        match text.to_str() {
            Ok(s) => out.write_field(s),
            Err(_) => {
                let raw = text.call_method1("encode", ("utf-8", "surrogatepass")).map_err(|e| e.to_string())?;
                let raw = raw.cast::<PyBytes>().map_err(|e| e.to_string())?;
                out.write_field(raw.as_bytes())
            }
        }
    } else if let Ok(raw) = value.cast::<PyBytes>() {
        out.write_field(raw.as_bytes())
    } else if value.cast::<PyFloat>().is_ok_and(|f| f.value().is_nan()) {
        out.write_field(b"")
    } else {
        let text = value.str().map_err(|e| e.to_string())?;
        out.write_field(text.to_str().map_err(|e| e.to_string())?)
    };
    result.map_err(|e| format!("temporary records file: {e}"))
}
