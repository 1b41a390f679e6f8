//! Why the owner's server could not start, or a configuration reload was refused
//! ([`ServeError`]): what loading the configuration, keys, audiences, opt-outs,
//! budgets and TLS files, and serving, can fail with.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::budget::BudgetError;
use super::config::ConfigError;
use crate::key::KeyError;
use crate::optout::OptOutError;
use crate::optout::store::StoreError;
use crate::records::ReadError;

/// Why the server could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is unreadable or invalid, or a reload changes a
    /// restart-only setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A campaign key or the opt-out store key could not be loaded, or a random key
    /// could not be generated.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A campaign's audience file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The opt-out list file could not be read.
    #[error(transparent)]
    OptOut(#[from] OptOutError),
    /// The budget state file is unreadable or malformed.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// A file or directory the server needs (results directory, audit log, TLS
    /// files) could not be created, opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The listening socket could not be bound, or its address read.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured `listen` address.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The thread pool for the owner's measurement proofs could not be started.
    #[error("cannot start the proving pool ([limits] proving_threads): {0}")]
    ProvingPool(String),
    /// tonic refused the TLS configuration, or the gRPC server failed while serving.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The opt-out store could not be opened (missing, wrong key, newer schema, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
}
