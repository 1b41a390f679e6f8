//! An in-process `idmatch serve` on a loopback port, for the gRPC tests.

use std::path::Path;

use idmatch::service::config::Config;
use idmatch::service::server::{self, Reload};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// A running server: its runtime (dropping it stops the server), its port, and the
/// way to ask it for a reload.
pub struct Running {
    pub runtime: Runtime,
    pub port: u16,
    pub reload: mpsc::Sender<Reload>,
}

/// Loads `config_path` and serves it on a loopback port the test binds itself (port
/// 0, handed over: no port race). Connections wait in the listener's backlog until
/// the audiences are loaded.
pub fn serve(config_path: &Path) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = Config::load(config_path).unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reload, reload_rx) = mpsc::channel(1);
    runtime.spawn(async move {
        server::run(config, listener, std::future::pending(), reload_rx).await.unwrap();
    });
    Running { runtime, port, reload }
}
