//! `idmatch.Key`: a campaign key held by Python code, never shown.

use std::io::Write;
use std::path::{Path, PathBuf};

use idmatch::key::{KEY_LEN, Key};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use zeroize::Zeroizing;

use crate::errors::{Class, Failure, IntoPy};

/// Where a key came from: the match client takes a key *file*, so a key given as
/// bytes is written to a private temporary file for the duration of a match.
#[derive(Clone)]
enum Source {
    File(PathBuf),
    Bytes(Zeroizing<[u8; KEY_LEN]>),
}

/// A 32-byte campaign key. Its `repr` and `str` never show the key; it cannot be
/// pickled or copied into a string.
///
/// Make one with `Key.load(path)` (a key file written by `idmatch keygen`, mode
/// 0600), `Key.generate_to_file(path)`, or `Key.from_bytes(b)` (32 bytes).
#[pyclass(name = "Key", module = "idmatch", frozen)]
#[derive(Clone)]
pub struct PyKey {
    key: Key,
    source: Source,
}

impl PyKey {
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// A key file holding this key: its own file, or a new private file in `dir`.
    pub fn file_in(&self, dir: &Path) -> Result<PathBuf, Failure> {
        match &self.source {
            Source::File(path) => Ok(path.clone()),
            Source::Bytes(bytes) => {
                let path = dir.join("campaign.key");
                let mut line = Zeroizing::new(hex::encode(bytes.as_ref()));
                line.push('\n');
                write_private(&path, line.as_bytes())
                    .map_err(|e| Failure::new(Class::Output, format!("temporary key file: {e}")))?;
                Ok(path)
            }
        }
    }

    pub fn from_byte_slice(bytes: &[u8]) -> Result<PyKey, Failure> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Failure::new(Class::KeyFile, format!("a key is exactly {KEY_LEN} bytes, not {}", bytes.len()))
        })?;
        let array = Zeroizing::new(array);
        if array.iter().all(|&b| b == 0) {
            return Err(Failure::new(Class::KeyFile, "the key is all zeros"));
        }
        Ok(PyKey { key: Key::from_bytes(*array), source: Source::Bytes(array) })
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes `contents`.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.flush()
}

#[pymethods]
impl PyKey {
    /// Reads a key file (one line of 64 hex digits). Like the CLI, refuses a file
    /// that group or other users can read or write (`chmod 600` it).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyKey> {
        Key::load(&path)
            .map(|key| PyKey { key, source: Source::File(path) })
            .map_err(|e| Failure::new(Class::KeyFile, e))
            .py_err(py)
    }

    /// Draws a new key from the OS CSPRNG and writes it to a new file (mode 0600),
    /// like `idmatch keygen`; never overwrites an existing file.
    #[staticmethod]
    fn generate_to_file(py: Python<'_>, path: PathBuf) -> PyResult<PyKey> {
        Key::generate_to_file(&path)
            .map(|key| PyKey { key, source: Source::File(path) })
            .map_err(|e| Failure::new(Class::KeyFile, e))
            .py_err(py)
    }

    /// A key from its 32 raw bytes.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<PyKey> {
        PyKey::from_byte_slice(data).py_err(py)
    }

    /// A key from its 64 hex digits (surrounding whitespace allowed).
    #[staticmethod]
    fn from_hex(py: Python<'_>, text: &str) -> PyResult<PyKey> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        let hex_part = text.trim();
        if hex_part.len() != 2 * KEY_LEN || hex::decode_to_slice(hex_part, bytes.as_mut()).is_err() {
            return Err(Failure::new(Class::KeyFile, "a hex key is exactly 64 hex digits (32 bytes)").into_pyerr(py));
        }
        PyKey::from_byte_slice(bytes.as_ref()).py_err(py)
    }

    /// The key file this key was loaded from, if any.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        match &self.source {
            Source::File(path) => Some(path.clone()),
            Source::Bytes(_) => None,
        }
    }

    fn __repr__(&self) -> String {
        match &self.source {
            Source::File(path) => format!("Key(<redacted>, path={:?})", path.display().to_string()),
            Source::Bytes(_) => "Key(<redacted>)".to_owned(),
        }
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("an idmatch.Key cannot be pickled: keep keys in key files (mode 0600)"))
    }
}
