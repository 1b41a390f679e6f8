//! Prometheus metrics: matches started, finished (by engine) and failed (by
//! reason), identifiers processed and match durations, measurements started,
//! finished and failed (by reason), calls refused for their credentials (by
//! service), served as text at `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Engine {
    protocol: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    started: Counter,
    finished: Family<Engine, Counter>,
    failed: Family<Reason, Counter>,
    identifiers: Counter,
    duration: Histogram,
    measurements_started: Counter,
    measurements_finished: Counter,
    measurements_failed: Family<Reason, Counter>,
    credentials_refused: Family<Service, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("idmatch");
        let started = Counter::default();
        let finished = Family::<Engine, Counter>::default();
        let failed = Family::<Reason, Counter>::default();
        let identifiers = Counter::default();
        let duration = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register("matches_started", "Matches started", started.clone());
        registry.register(
            "matches_finished",
            "Matches finished successfully, by engine (ecdh, oprf)",
            finished.clone(),
        );
        registry.register("matches_failed", "Matches failed, by reason (gRPC status code)", failed.clone());
        registry.register(
            "identifiers_processed",
            "Distinct identifiers of finished matches (partner and owner sets)",
            identifiers.clone(),
        );
        registry.register("match_duration_seconds", "Duration of matches", duration.clone());
        let measurements_started = Counter::default();
        let measurements_finished = Counter::default();
        let measurements_failed = Family::<Reason, Counter>::default();
        registry.register("measurements_started", "Measurements started", measurements_started.clone());
        registry.register("measurements_finished", "Measurements finished successfully", measurements_finished.clone());
        registry.register(
            "measurements_failed",
            "Measurements failed, by reason (gRPC status code)",
            measurements_failed.clone(),
        );
        let credentials_refused = Family::<Service, Counter>::default();
        registry.register(
            "credentials_refused",
            "Calls refused for their credentials (unknown or malformed token, unknown certificate), by service",
            credentials_refused.clone(),
        );
        Metrics {
            registry,
            credentials_refused,
            started,
            finished,
            failed,
            identifiers,
            duration,
            measurements_started,
            measurements_finished,
            measurements_failed,
        }
    }
}

impl Metrics {
    pub fn started(&self) {
        self.started.inc();
    }

    pub fn finished(&self, protocol: &str, identifiers: u64, seconds: f64) {
        self.finished.get_or_create(&Engine { protocol: protocol.to_owned() }).inc();
        self.identifiers.inc_by(identifiers);
        self.duration.observe(seconds);
    }

    pub fn failed(&self, reason: &str, seconds: f64) {
        self.failed.get_or_create(&Reason { reason: reason.to_owned() }).inc();
        self.duration.observe(seconds);
    }

    pub fn measurement_started(&self) {
        self.measurements_started.inc();
    }

    pub fn measurement_finished(&self) {
        self.measurements_finished.inc();
    }

    pub fn credentials_refused(&self, service: &str) {
        self.credentials_refused.get_or_create(&Service { service: service.to_owned() }).inc();
    }

    pub fn measurement_failed(&self, reason: &str) {
        self.measurements_failed.get_or_create(&Reason { reason: reason.to_owned() }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
