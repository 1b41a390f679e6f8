//! Failures, as plain Rust values (they cross `Python::detach`), and their Python
//! exceptions (defined in `idmatch/_errors.py`, so that they can carry attributes).
//!
//! Messages come from the crate's own errors, the same text the CLI prints. No
//! message ever holds key bytes, a bearer token or a raw identifier: the crate's
//! errors never do, and the values this extension adds are paths and reason codes.

use std::path::Path;

use idmatch::service::client::ClientError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Why a call failed: a Python exception class of `idmatch._errors` and its message.
#[derive(Debug)]
pub enum Failure {
    /// A value that does not normalize; `reason` is the CLI's reject code.
    Normalization { kind: &'static str, reason: &'static str },
    /// Any other failure.
    Other { class: Class, message: String },
}

/// The exception classes, each one of the CLI's categories of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A bad argument: the CLI's usage errors (exit code 2).
    Usage,
    /// A key file that cannot be used (missing, malformed, readable by others).
    KeyFile,
    /// Records, an input file or a list that cannot be read.
    Input,
    /// An output that could not be written.
    Output,
    /// Exit code 3.
    Unreachable,
    /// Exit code 4.
    Tls,
    /// Exit code 5.
    Credentials,
    /// Exit code 6.
    PermissionDenied,
    /// Exit code 7.
    Limit,
    /// Exit code 8: the owner's campaign key differs from the partner's.
    KeyMismatch,
    /// The server ended the match, or the exchange broke the protocol.
    Protocol,
    /// The match could not start on this side (the base class: no narrower category),
    /// e.g. no async runtime or random number generator.
    Match,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Usage => "UsageError",
            Class::KeyFile => "KeyFileError",
            Class::Input => "InputError",
            Class::Output => "OutputError",
            Class::Unreachable => "UnreachableError",
            Class::Tls => "TlsError",
            Class::Credentials => "CredentialsError",
            Class::PermissionDenied => "PermissionDeniedError",
            Class::Limit => "LimitError",
            Class::KeyMismatch => "KeyMismatchError",
            Class::Protocol => "ProtocolError",
            Class::Match => "MatchError",
        }
    }
}

impl Failure {
    pub fn new(class: Class, message: impl ToString) -> Failure {
        Failure::Other { class, message: message.to_string() }
    }

    pub fn usage(message: impl ToString) -> Failure {
        Failure::new(Class::Usage, message)
    }

    pub fn input(message: impl ToString) -> Failure {
        Failure::new(Class::Input, message)
    }

    /// Replaces the path of a private temporary file by what the caller knows it as
    /// (`records`, `key`, `token`), so that messages name the caller's inputs.
    pub fn renaming(self, temp: &Path, name: &str) -> Failure {
        match self {
            Failure::Other { class, message } => {
                Failure::Other { class, message: message.replace(&temp.display().to_string(), name) }
            }
            other => other,
        }
    }

    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let module = py.import("idmatch._errors")?;
            let kwargs = PyDict::new(py);
            let (class, message) = match self {
                Failure::Normalization { kind, reason } => {
                    kwargs.set_item("reason", reason)?;
                    kwargs.set_item("kind", kind)?;
                    ("NormalizationError", format!("the {kind} does not normalize: {reason}"))
                }
                Failure::Other { class, message } => (class.name(), message),
            };
            let value = module.getattr(class)?.call((message,), Some(&kwargs))?;
            Ok(PyErr::from_value(value))
        };
        build().unwrap_or_else(|e| e)
    }
}

impl From<ClientError> for Failure {
    /// The CLI's categories: its exit code decides the class (2 usage, 3 unreachable,
    /// 4 TLS, 5 credentials, 6 permission, 7 limits, 8 key mismatch); the rest by what
    /// failed.
    fn from(error: ClientError) -> Failure {
        let class = match error.exit_code() {
            2 => Class::Usage,
            3 => Class::Unreachable,
            4 => Class::Tls,
            5 => Class::Credentials,
            6 => Class::PermissionDenied,
            7 => Class::Limit,
            8 => Class::KeyMismatch,
            _ => match &error {
                ClientError::Key(_) => Class::KeyFile,
                ClientError::Prepare(_) | ClientError::Read(_) | ClientError::OptOut(_) | ClientError::File { .. } => {
                    Class::Input
                }
                ClientError::Output(_) => Class::Output,
                ClientError::Setup(_) => Class::Match,
                _ => Class::Protocol,
            },
        };
        Failure::new(class, error)
    }
}

/// `Result<T, Failure>` → `PyResult<T>`, once the GIL is held again.
pub trait IntoPy<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Failure> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|f| f.into_pyerr(py))
    }
}
