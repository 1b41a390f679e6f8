//! `idmatch serve`: the owner's gRPC matching server.

use std::path::PathBuf;

use clap::Args;

use super::CliResult;
use crate::service::config::{Config, LogFormat};

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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(crate::service::server::serve(config))?;
    Ok(())
}
