//! The owner's matching server: `idmatch serve --config server.toml`.
//!
//! [`run`] serves on an already bound listener until its shutdown future resolves,
//! and re-reads the configuration file on each [`Reload`] it receives (the command
//! line sends one on SIGHUP): partners, campaigns (audiences) and limits are loaded
//! anew and swapped in at once; on any error the previous configuration keeps
//! serving. Matches already running keep the configuration they started with.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{error, info, warn};

use super::admin::AdminService;
use super::audit::AuditLog;
use super::budget::{BudgetError, Budgets};
use super::config::{Config, ConfigError, parse_sha256};
use super::measure::MeasureService;
use super::metrics::Metrics;
use super::session::MatchService;
use super::slots::Slots;
use super::state::{OptOuts, State};
use crate::key::{Key, KeyError};
use crate::optout::OptOutError;
use crate::optout::store::{OptOutStore, StoreError, StoreOptions};
use crate::records::ReadError;
use crate::token::Tokenizer;
use crate::wire::matcher_server::MatcherServer;
use crate::wire::measurer_server::MeasurerServer;
use crate::wire::opt_out_admin_server::OptOutAdminServer;

pub use super::session::protocol_status;

/// The encoded descriptor set served by gRPC reflection.
const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("idmatch_descriptor");

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
    /// tonic refused the TLS configuration, or the gRPC server failed while serving.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The opt-out store could not be opened (missing, wrong key, newer schema, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request to re-read the configuration file.
#[derive(Debug, Default)]
pub struct Reload {
    reply: Option<oneshot::Sender<Result<(), ServeError>>>,
}

impl Reload {
    /// A reload whose outcome is only logged (SIGHUP).
    pub fn new() -> Reload {
        Reload::default()
    }

    /// A reload whose outcome is also sent back.
    pub fn with_reply() -> (Reload, oneshot::Receiver<Result<(), ServeError>>) {
        let (tx, rx) = oneshot::channel();
        (Reload { reply: Some(tx) }, rx)
    }
}

/// Everything the server shares between matches.
pub(crate) struct Shared {
    state: RwLock<Arc<State>>,
    pub optouts: Arc<OptOuts>,
    pub audit: Arc<AuditLog>,
    pub budgets: Budgets,
    pub metrics: Arc<Metrics>,
    pub slots: Slots,
}

impl Shared {
    /// The configuration now (a match keeps the one it started with).
    pub fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a call refused for its credentials: a warning in the log, the
    /// `credentials_refused` metric and a line in the audit log. Nothing the caller
    /// sent is recorded (`status` carries a fixed reason), only its address.
    pub fn credentials_refused<T>(&self, service: &'static str, request: &tonic::Request<T>, status: &tonic::Status) {
        let peer = request.remote_addr().map(|a| a.to_string());
        tracing::warn!(
            service,
            peer = peer.as_deref().unwrap_or("-"),
            reason = status.message(),
            "credentials refused"
        );
        self.metrics.credentials_refused(service);
        let record = super::audit::RefusedRecord {
            time_unix_ms: super::audit::now_unix_ms(),
            event: "credentials_refused",
            service,
            outcome: format!("{:?}", status.code()),
            reason: status.message().to_owned(),
            peer,
        };
        if let Err(e) = self.audit.append(&record) {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }

    /// Re-reads the configuration file and swaps it in, or leaves the current one.
    async fn reload(&self) -> Result<(), ServeError> {
        let old = self.state();
        let path = old.config.path.clone();
        let config = Config::load(&path)?;
        if let Some(problem) = old.config.reload_refusal(&config) {
            return Err(ConfigError { path, problem }.into());
        }
        let state = State::load(config, &self.optouts).await?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        Ok(())
    }
}

async fn start(config: Config) -> Result<Shared, ServeError> {
    // A `Config` built in code (public fields) is checked like one loaded from a file.
    config.validate().map_err(|problem| ConfigError { path: config.path.clone(), problem })?;
    let results = &config.results_dir;
    std::fs::create_dir_all(results).map_err(|source| ServeError::Io { path: results.clone(), source })?;
    let audit = Arc::new(
        AuditLog::open(&config.audit_log)
            .map_err(|source| ServeError::Io { path: config.audit_log.clone(), source })?,
    );
    let store = match &config.optout_store {
        Some(store) => {
            let key = Key::load(&store.key_file)?;
            Some(Arc::new(OptOutStore::open(&store.db, &key, &StoreOptions::existing())?))
        }
        None => None,
    };
    let digester = match &store {
        Some(store) => store.digester().clone(),
        None => Tokenizer::new(&Key::generate()?),
    };
    let optouts = Arc::new(OptOuts { store, digester });
    let budgets = Budgets::open(&config.state_file)?;
    let state = State::load(config, &optouts).await?;
    Ok(Shared {
        state: RwLock::new(Arc::new(state)),
        optouts,
        audit,
        budgets,
        metrics: Arc::new(Metrics::default()),
        slots: Slots::default(),
    })
}

/// Loads the audiences, then serves on `listener` until `shutdown` resolves
/// (finishing running matches), reloading the configuration on each [`Reload`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reload: mpsc::Receiver<Reload>,
) -> Result<(), ServeError> {
    let shared = Arc::new(start(config).await?);
    let state = shared.state();
    let config = &state.config;
    let limits = &config.limits;

    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)));
    match &config.tls {
        Some(tls) => {
            let read =
                |path: &PathBuf| std::fs::read(path).map_err(|source| ServeError::Io { path: path.clone(), source });
            let key = crate::key::read_secret_file(&tls.key, "TLS private key")?;
            let mut tls_config = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, key.as_slice()));
            if let Some(ca) = &tls.client_ca {
                tls_config = tls_config.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            builder = builder.tls_config(tls_config)?;
        }
        None => warn!(
            listen = %config.listen,
            "PLAINTEXT: serving without TLS; allowed only because the address is loopback"
        ),
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MatcherServer<MatchService>>().await;
    health_reporter.set_serving::<MeasurerServer<MeasureService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Io {
            path: PathBuf::from("reflection"),
            source: std::io::Error::other(e.to_string()),
        })?;
    let max_message = limits.max_message_bytes;
    let matcher = MatcherServer::new(MatchService { shared: shared.clone() })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let measurer = MeasurerServer::new(MeasureService { shared: shared.clone() })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = config.metrics_listen {
        let metrics = shared.metrics.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = super::metrics::serve(metrics, addr, shutdown).await {
                error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
        info!(%addr, "metrics at /metrics");
    }
    let reloading = shared.clone();
    tokio::spawn(async move {
        while let Some(request) = reload.recv().await {
            info!("reloading the configuration");
            let result = reloading.reload().await;
            match &result {
                Ok(()) => info!("configuration reloaded"),
                Err(e) => error!(error = %e, "reload failed; keeping the configuration loaded before"),
            }
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        }
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    info!(listen = %addr, tls = config.tls.is_some(), "serving");
    let admin = match (&shared.optouts.store, &config.optout_store) {
        (Some(store), Some(settings)) => Some(
            OptOutAdminServer::new(AdminService {
                store: store.clone(),
                audit: shared.audit.clone(),
                admin_token_sha256: parse_sha256(&settings.admin_token_sha256)
                    .map_err(|problem| ConfigError { path: config.path.clone(), problem })?,
                shared: shared.clone(),
            })
            .max_decoding_message_size(max_message),
        ),
        _ => None,
    };
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(limits.tcp_keepalive_secs)));
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(matcher)
        .add_service(measurer)
        .add_optional_service(admin)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
            info!("shutting down: finishing running matches");
        })
        .await?;
    Ok(())
}
