//! What the owner's server shares between its streams ([`Shared`]): the loaded
//! configuration (swapped whole on a reload; a running stream keeps the one it
//! started with), where opt-outs come from, the audit log, daily budgets, metrics,
//! concurrency slots and sharded runs.

use std::sync::{Arc, RwLock};

use super::audit::{AuditLog, RefusedRecord, now_unix_ms};
use super::budget::Budgets;
use super::config::{Config, ConfigError};
use super::error::ServeError;
use super::metrics::Metrics;
use super::proving::Proving;
use super::runs::Runs;
use super::slots::Slots;
use super::state::{OptOuts, State};
use crate::key::Key;
use crate::optout::store::{OptOutStore, StoreOptions};
use crate::token::Tokenizer;

/// Everything the server shares between streams.
pub(crate) struct Shared {
    state: RwLock<Arc<State>>,
    pub optouts: Arc<OptOuts>,
    pub audit: Arc<AuditLog>,
    pub budgets: Budgets,
    pub metrics: Arc<Metrics>,
    pub slots: Slots,
    /// The pool and the cap for the owner's measurement proofs.
    pub proving: Proving,
    /// Sharded match runs, in a registry shared by the processes that share the
    /// budget state (see `runs`).
    pub runs: Runs,
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
        let record = RefusedRecord {
            time_unix_ms: now_unix_ms(),
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
    pub async fn reload(&self) -> Result<(), ServeError> {
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

    /// Checks `config`, opens what the server keeps for its life (results
    /// directory, audit log, opt-out store, budget state) and loads the audiences.
    pub async fn start(config: Config) -> Result<Shared, ServeError> {
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
        let runs_dir = super::runs::registry_dir(&config.state_file);
        let runs = Runs::open(&runs_dir).map_err(|source| ServeError::Io { path: runs_dir, source })?;
        let proving =
            Proving::new(config.limits.proving_threads()).map_err(|e| ServeError::ProvingPool(e.to_string()))?;
        let state = State::load(config, &optouts).await?;
        Ok(Shared {
            state: RwLock::new(Arc::new(state)),
            optouts,
            audit,
            budgets,
            metrics: Arc::new(Metrics::default()),
            slots: Slots::default(),
            proving,
            runs,
        })
    }
}
