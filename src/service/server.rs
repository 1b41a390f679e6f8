//! The owner's matching server: `idmatch serve --config server.toml`.
//!
//! [`run`] serves on an already bound listener until its shutdown future resolves,
//! and re-reads the configuration file on each [`Reload`] it receives (the command
//! line sends one on SIGHUP): partners, campaigns (audiences) and limits are loaded
//! anew and swapped in at once; on any error the previous configuration keeps
//! serving. Matches already running keep the configuration they started with.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{error, info, warn};

use super::admin::AdminService;
use super::config::{Config, ConfigError, parse_sha256};
use super::matcher::MatchService;
use super::measure::MeasureService;
use super::shared::Shared;
use crate::wire::matcher_server::MatcherServer;
use crate::wire::measurer_server::MeasurerServer;
use crate::wire::opt_out_admin_server::OptOutAdminServer;

pub use super::error::ServeError;
pub use super::status::protocol_status;

/// The encoded descriptor set served by gRPC reflection.
const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("idmatch_descriptor");

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

/// Loads the audiences, then serves on `listener` until `shutdown` resolves
/// (finishing running matches), reloading the configuration on each [`Reload`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reload: mpsc::Receiver<Reload>,
) -> Result<(), ServeError> {
    let shared = Arc::new(Shared::start(config).await?);
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
