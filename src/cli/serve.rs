//! `idmatch serve`: the owner's gRPC matching server. Binds the listener, then runs
//! the server until SIGTERM or Ctrl-C; SIGHUP re-reads the whole configuration.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use tokio::sync::mpsc;

use super::CliResult;
use idmatch::service::config::{Config, LogFormat};
use idmatch::service::server::{self, Reload, ServeError};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The server configuration (see examples/server.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: ServeArgs) -> CliResult {
    let config = Config::load(&args.config)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = config.listen;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
        let (reload_tx, reload_rx) = mpsc::channel(1);
        tokio::spawn(reload_on_sighup(reload_tx));
        server::run(config, listener, shutdown_signal(), reload_rx).await
    })?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn reload_on_sighup(reload: mpsc::Sender<Reload>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // A reload already queued covers this signal too.
            let _ = reload.try_send(Reload::new());
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}
