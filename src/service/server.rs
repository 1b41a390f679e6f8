//! The owner's matching server: `idmatch serve --config server.toml`.
//!
//! Each `Match` stream is one match. Its protocol state (the [`Owner`] state machine
//! and its secret scalar) lives on a blocking thread for exactly as long as the
//! stream: when the stream ends or breaks, everything about the match is dropped.
//! Opt-outs are applied when each match starts, before anything is blinded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use super::admin::AdminService;
use super::audit::{AuditLog, MatchRecord, now_unix_ms};
use super::budget::{BudgetError, Budgets};
use super::config::{CampaignSettings, Config, ConfigError, PartnerPolicy, parse_sha256};
use super::convert::{owner_to_wire, partner_from_wire};
use super::driver::{DriveError, drive};
use super::metrics::Metrics;
use crate::key::{Key, KeyError};
use crate::local_match::write_match_file;
use crate::normalize::Normalizer;
use crate::optout::store::{OptOutStore, StoreError, StoreOptions};
use crate::optout::{FileList, OptOutError, excluded_records};
use crate::psi::message::{DEFAULT_CHUNK, MAX_CHUNK};
use crate::psi::{Owner, OwnerConfig, OwnerMessage, PartnerMessage, PreparedSet, ProtocolError};
use crate::records::{self, ReadError, ReadOptions, RecordSet};
use crate::token::Tokenizer;
use crate::wire;
use crate::wire::matcher_server::{Matcher, MatcherServer};
use crate::wire::opt_out_admin_server::OptOutAdminServer;

/// The encoded descriptor set served by gRPC reflection.
const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("idmatch_descriptor");

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    OptOut(#[from] OptOutError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A campaign with its audience loaded and tokenized.
struct Campaign {
    settings: CampaignSettings,
    records: RecordSet,
    /// The opt-out list as last read, with the file's modification time.
    optouts: Mutex<Option<(SystemTime, Arc<FileList>)>>,
}

/// Everything the server shares between matches.
struct Shared {
    config: Config,
    partners: Vec<PartnerPolicy>,
    campaigns: RwLock<HashMap<String, Arc<Campaign>>>,
    /// The opt-out store, when configured (instead of a file).
    optout_store: Option<Arc<OptOutStore>>,
    /// Key for opt-out digests, stable for the process (the store's own key, or a
    /// random one for a file): audiences are digested once at load.
    optout_digester: Tokenizer,
    audit: Arc<AuditLog>,
    budgets: Budgets,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
}

/// Loads the audiences, then serves until SIGTERM or Ctrl-C. SIGHUP reloads the
/// audiences.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let shared = Arc::new(Shared::new(config)?);
    shared.load_campaigns().await?;

    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20));
    match &shared.config.tls {
        Some(tls) => {
            let read =
                |path: &PathBuf| std::fs::read(path).map_err(|source| ServeError::Io { path: path.clone(), source });
            let mut tls_config = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
            if let Some(ca) = &tls.client_ca {
                tls_config = tls_config.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            builder = builder.tls_config(tls_config)?;
        }
        None => warn!(
            listen = %shared.config.listen,
            "PLAINTEXT: serving without TLS; allowed only because the address is loopback"
        ),
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MatcherServer<MatchService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Io {
            path: PathBuf::from("reflection"),
            source: std::io::Error::other(e.to_string()),
        })?;
    let max_message = shared.config.limits.max_message_bytes;
    let matcher = MatcherServer::new(MatchService { shared: shared.clone() })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = shared.config.metrics_listen {
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
    tokio::spawn(reload_on_sighup(shared.clone()));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    info!(listen = %shared.config.listen, tls = shared.config.tls.is_some(), "serving");
    let admin = match (&shared.optout_store, &shared.config.optout_store) {
        (Some(store), Some(settings)) => Some(
            OptOutAdminServer::new(AdminService {
                store: store.clone(),
                audit: shared.audit.clone(),
                admin_token_sha256: parse_sha256(&settings.admin_token_sha256)
                    .map_err(|problem| ConfigError { path: PathBuf::from("server config"), problem })?,
                partner_token_sha256: shared.partners.iter().filter_map(|p| p.token_sha256).collect(),
            })
            .max_decoding_message_size(max_message),
        ),
        _ => None,
    };
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(matcher)
        .add_optional_service(admin)
        .serve_with_shutdown(shared.config.listen, async move {
            let _ = stop.wait_for(|s| *s).await;
            info!("shutting down: finishing running matches");
        })
        .await?;
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

async fn reload_on_sighup(shared: Arc<Shared>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading audiences");
            if let Err(e) = shared.load_campaigns().await {
                error!(error = %e, "reload failed; keeping the audiences loaded before");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = shared;
}

impl Shared {
    fn new(config: Config) -> Result<Shared, ServeError> {
        let partners = config
            .partners
            .iter()
            .map(|p| config.partner_policy(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| ConfigError { path: PathBuf::from("server config"), problem })?;
        let results = &config.results_dir;
        std::fs::create_dir_all(results).map_err(|source| ServeError::Io { path: results.clone(), source })?;
        let audit = Arc::new(
            AuditLog::open(&config.audit_log)
                .map_err(|source| ServeError::Io { path: config.audit_log.clone(), source })?,
        );
        let optout_store = match &config.optout_store {
            Some(store) => {
                let key = Key::load(&store.key_file)?;
                Some(Arc::new(OptOutStore::open(&store.db, &key, &StoreOptions::existing())?))
            }
            None => None,
        };
        let optout_digester = match &optout_store {
            Some(store) => store.digester().clone(),
            None => Tokenizer::new(&Key::generate()?),
        };
        let limits = &config.limits;
        let budgets = Budgets::open(
            &config.state_file,
            limits.max_matches_per_partner_per_day,
            limits.max_identifiers_per_partner_per_day,
        )?;
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_matches));
        Ok(Shared {
            partners,
            campaigns: RwLock::new(HashMap::new()),
            optout_store,
            optout_digester,
            audit,
            budgets,
            metrics: Arc::new(Metrics::default()),
            slots,
            config,
        })
    }

    /// Reads and tokenizes every campaign's audience (on blocking threads), then
    /// swaps them in at once.
    async fn load_campaigns(self: &Arc<Self>) -> Result<(), ServeError> {
        let mut loaded = HashMap::new();
        for entry in &self.config.campaigns {
            let settings = self
                .config
                .campaign_settings(entry)
                .map_err(|problem| ConfigError { path: PathBuf::from("server config"), problem })?;
            let shared = self.clone();
            let campaign = tokio::task::spawn_blocking(move || shared.load_campaign(settings))
                .await
                .map_err(|e| ServeError::Io { path: entry.audience.clone(), source: std::io::Error::other(e) })??;
            loaded.insert(entry.id.clone(), Arc::new(campaign));
        }
        *self.campaigns.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    fn load_campaign(&self, settings: CampaignSettings) -> Result<Campaign, ServeError> {
        let started = Instant::now();
        info!(campaign = %settings.id, audience = %settings.audience.display(), "loading audience");
        let key = Key::load(&settings.key_file)?;
        let mut options = ReadOptions::new(Normalizer::new(settings.profile, settings.region));
        options.columns = settings.columns.clone();
        options.optout_digester = Some(self.optout_digester.clone());
        options.progress = true;
        let records = records::read(&settings.audience, &Tokenizer::new(&key), options)?;
        if let Some(store) = &self.optout_store {
            store.ensure_profile(&records).map_err(OptOutError::from)?;
        }
        let stats = records.stats();
        info!(
            campaign = %settings.id,
            records = stats.records,
            identifiers = stats.identifiers_total(),
            rejected = stats.rejected_total(),
            bad_rows = stats.bad_rows_total(),
            seconds = started.elapsed().as_secs_f64(),
            "audience loaded"
        );
        Ok(Campaign { settings, records, optouts: Mutex::new(None) })
    }

    /// The opt-out flags for `campaign` now, re-reading the list if it changed.
    fn excluded(&self, campaign: &Campaign) -> Result<Vec<bool>, OptOutError> {
        if let Some(store) = &self.optout_store {
            return excluded_records(&campaign.records, store.as_ref());
        }
        let Some(path) = &self.config.optouts else { return Ok(Vec::new()) };
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| OptOutError::Read(ReadError::Open { path: path.clone(), source: e }))?;
        let list = {
            let mut cached = campaign.optouts.lock().unwrap_or_else(|p| p.into_inner());
            match &*cached {
                Some((when, list)) if *when == modified => list.clone(),
                _ => {
                    let normalizer = Normalizer::new(campaign.settings.profile, campaign.settings.region);
                    let list = Arc::new(FileList::load_with_digester(
                        path,
                        normalizer,
                        Default::default(),
                        self.optout_digester.clone(),
                    )?);
                    let stats = list.stats();
                    info!(
                        path = %path.display(),
                        rows = stats.rows,
                        identifiers = stats.identifiers_total(),
                        rejected = stats.rejected_total(),
                        bad_rows = stats.bad_rows_total(),
                        "opt-out list read"
                    );
                    if stats.rejected_total() + stats.bad_rows_total() > 0 {
                        warn!(path = %path.display(), "opt-out list has rejected entries; they opt nobody out");
                    }
                    *cached = Some((modified, list.clone()));
                    list
                }
            }
        };
        excluded_records(&campaign.records, list.as_ref())
    }

    /// Finds the partner a request's credentials belong to.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<&PartnerPolicy, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let token =
                value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
                    Status::unauthenticated("malformed authorization header (expected `Bearer <token>`)")
                })?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            return self
                .partners
                .iter()
                .find(|p| p.token_sha256.is_some_and(|d| bool::from(d.ct_eq(&digest))))
                .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        if let Some(certs) = request.peer_certs()
            && let Some(cert) = certs.first()
        {
            let cn = common_name(cert.as_ref())
                .ok_or_else(|| Status::unauthenticated("client certificate has no common name"))?;
            return self
                .partners
                .iter()
                .find(|p| p.cert_common_name.as_deref() == Some(cn.as_str()))
                .ok_or_else(|| Status::unauthenticated("client certificate is not a configured partner"));
        }
        Err(Status::unauthenticated("no credentials: send a bearer token or a client certificate"))
    }
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
}

/// The gRPC `Matcher` service.
pub struct MatchService {
    shared: Arc<Shared>,
}

type OwnerStream = ReceiverStream<Result<wire::OwnerMessage, Status>>;

#[tonic::async_trait]
impl Matcher for MatchService {
    type MatchStream = OwnerStream;

    async fn r#match(
        &self,
        request: Request<Streaming<wire::PartnerMessage>>,
    ) -> Result<Response<OwnerStream>, Status> {
        let shared = self.shared.clone();
        let partner = shared.authenticate(&request)?.clone();
        let permit = shared
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many concurrent matches; try again later"))?;
        let match_id = hex::encode(rand::random::<[u8; 8]>());
        shared.metrics.started();

        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let mut stream = request.into_inner();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let message = match item {
                    Ok(m) => partner_from_wire(m).map_err(DriveError::from),
                    Err(status) => {
                        Err(DriveError::Remote { code: status.code(), message: status.message().to_owned() })
                    }
                };
                let failed = message.is_err();
                if inbound_tx.send(message).is_err() || failed {
                    break;
                }
            }
        });
        let (owner_tx, mut owner_rx) = mpsc::channel::<OwnerMessage>(4);
        let (response_tx, response_rx) = mpsc::channel(4);
        let (done_tx, done_rx) = oneshot::channel::<Result<(), Status>>();
        // Forwards the owner's messages, holding the summary back until the session
        // has written its audit record: the partner never sees a summary for a
        // match that is not audited.
        tokio::spawn(async move {
            let mut held: Option<OwnerMessage> = None;
            while let Some(message) = owner_rx.recv().await {
                if matches!(message, OwnerMessage::Summary(_)) {
                    held = Some(message);
                } else if response_tx.send(Ok(owner_to_wire(message))).await.is_err() {
                    return;
                }
            }
            let done = done_rx.await.unwrap_or_else(|_| Err(Status::internal("match session ended unexpectedly")));
            if let Some(last) = held {
                let _ = response_tx.send(Ok(owner_to_wire(last))).await;
            }
            if let Err(status) = done {
                let _ = response_tx.send(Err(status)).await;
            }
        });
        let runtime = tokio::runtime::Handle::current();
        let id = match_id.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let session = Session { shared: &shared, partner: &partner, match_id: &id, started: Instant::now() };
            let _ = done_tx.send(session.run(inbound_rx, owner_tx, &runtime));
        });
        let mut response = Response::new(ReceiverStream::new(response_rx));
        if let Ok(value) = match_id.parse() {
            response.metadata_mut().insert("idmatch-match-id", value);
        }
        Ok(response)
    }
}

/// One match on its blocking thread.
struct Session<'a> {
    shared: &'a Shared,
    partner: &'a PartnerPolicy,
    match_id: &'a str,
    started: Instant,
}

impl Session<'_> {
    fn run(
        &self,
        mut inbound: mpsc::UnboundedReceiver<Result<PartnerMessage, DriveError>>,
        outbound: mpsc::Sender<OwnerMessage>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), Status> {
        let mut record = MatchRecord {
            time_unix_ms: now_unix_ms(),
            match_id: self.match_id.to_owned(),
            partner: self.partner.name.clone(),
            campaign: String::new(),
            reveal: None,
            partner_set_size: None,
            owner_set_size: None,
            opted_out_records: None,
            owner_matched_records: None,
            outcome: "ok".to_owned(),
            duration_ms: 0,
        };
        let result = self.run_match(&mut inbound, &outbound, runtime, &mut record);
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        let seconds = self.started.elapsed().as_secs_f64();
        match &result {
            Ok(()) => {
                let processed = record.partner_set_size.unwrap_or(0) + record.owner_set_size.unwrap_or(0);
                self.shared.metrics.finished(processed, seconds);
                info!(match_id = self.match_id, partner = %record.partner, campaign = %record.campaign, seconds, "match finished");
            }
            Err(status) => {
                record.outcome = format!("{:?}", status.code());
                self.shared.metrics.failed(&record.outcome, seconds);
                warn!(match_id = self.match_id, partner = %record.partner, code = ?status.code(), reason = status.message(), "match failed");
            }
        }
        if let Err(e) = self.shared.audit.append(&record) {
            error!(path = %self.shared.audit.path().display(), error = %e, "could not write the audit log");
        }
        result
    }

    fn run_match(
        &self,
        inbound: &mut mpsc::UnboundedReceiver<Result<PartnerMessage, DriveError>>,
        outbound: &mpsc::Sender<OwnerMessage>,
        runtime: &tokio::runtime::Handle,
        record: &mut MatchRecord,
    ) -> Result<(), Status> {
        let limits = &self.shared.config.limits;
        let first = runtime
            .block_on(tokio::time::timeout(limits.idle_timeout(), inbound.recv()))
            .map_err(|_| drive_status(DriveError::Idle(limits.idle_timeout())))?
            .ok_or_else(|| drive_status(DriveError::PeerClosed))?
            .map_err(drive_status)?;
        let PartnerMessage::Hello(hello) = &first else {
            return Err(protocol_status(&ProtocolError::UnexpectedMessage {
                state: "awaiting hello",
                message: first.name(),
            }));
        };
        record.campaign = hello.campaign.clone();
        record.reveal = Some(hello.reveal.name().to_owned());
        record.partner_set_size = Some(hello.partner_set_size);
        if !self.partner.campaigns.contains(&hello.campaign) {
            return Err(Status::permission_denied("this partner may not use that campaign"));
        }
        if !self.partner.reveals.contains(&hello.reveal) {
            return Err(Status::permission_denied(format!("this partner may not use reveal mode {}", hello.reveal)));
        }
        let campaign = self
            .shared
            .campaigns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hello.campaign)
            .cloned()
            .ok_or_else(|| Status::permission_denied("this partner may not use that campaign"))?;
        if hello.partner_set_size >= limits.min_partner_set && hello.partner_set_size <= limits.max_partner_set {
            self.shared.budgets.charge(&self.partner.name, hello.partner_set_size).map_err(|e| match e {
                BudgetError::State { .. } => Status::internal("budget state unavailable"),
                other => Status::resource_exhausted(other.to_string()),
            })?;
        }
        let excluded = self.shared.excluded(&campaign).map_err(|e| {
            error!(error = %e, "opt-outs unavailable; refusing to match");
            Status::unavailable("opt-outs unavailable")
        })?;
        let set = PreparedSet::new(&campaign.records, &excluded);
        record.opted_out_records = Some(set.excluded_records());
        record.owner_set_size = Some(set.len() as u64);
        let max_chunk = ((limits.max_message_bytes - 1024) / 32).min(MAX_CHUNK as usize) as u32;
        let config = OwnerConfig {
            campaign: campaign.settings.id.clone(),
            profile: campaign.settings.profile,
            allowed_reveals: self.partner.reveals.clone(),
            min_partner_set: limits.min_partner_set,
            max_partner_set: limits.max_partner_set,
            max_chunk,
            send_chunk: DEFAULT_CHUNK.min(max_chunk),
        };
        let mut owner = Owner::new(config, &set).map_err(|e| protocol_status(&e))?;
        owner.receive(first).map_err(|e| protocol_status(&e))?;
        drive(&mut owner, inbound, outbound, limits.idle_timeout(), runtime).map_err(drive_status)?;
        let outcome = owner.outcome().ok_or_else(|| Status::internal("match ended in an unfinished state"))?;
        if let Some(matched) = &outcome.matched {
            let matches = set.matched_records(matched);
            record.owner_matched_records = Some(matches.len() as u64);
            let name =
                format!("{}-{}-{}.csv", file_safe(&campaign.settings.id), file_safe(&self.partner.name), self.match_id);
            let path = self.shared.config.results_dir.join(name);
            write_match_file(&path, &campaign.records, &matches).map_err(|e| {
                error!(error = %e, "could not write match results");
                Status::internal("could not store the match results")
            })?;
        }
        Ok(())
    }
}

fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The gRPC status for a protocol error (see docs/PROTOCOL.md).
pub fn protocol_status(error: &ProtocolError) -> Status {
    use ProtocolError::*;
    let message = error.to_string();
    match error {
        BadChunkSize { .. } | TooManyElements { .. } | ChunkLength(_) | BadElement(_) | Malformed(_) => {
            Status::invalid_argument(message)
        }
        UnexpectedMessage { .. } | UnsupportedVersion { .. } | ProfileMismatch { .. } | SummaryMismatch(_) => {
            Status::failed_precondition(message)
        }
        CampaignMismatch { .. } => Status::failed_precondition("campaign mismatch"),
        RevealNotAllowed(_) => Status::permission_denied(message),
        SetSizeOutOfRange { .. } => Status::resource_exhausted(message),
        Rng(_) => Status::internal("random number generator failed"),
    }
}

fn drive_status(error: DriveError) -> Status {
    match error {
        DriveError::Protocol(e) => protocol_status(&e),
        DriveError::Idle(d) => Status::deadline_exceeded(format!("no message from the partner for {}s", d.as_secs())),
        DriveError::PeerClosed => Status::cancelled("the partner closed the stream before the match finished"),
        DriveError::Transport(m) => Status::cancelled(format!("stream broken: {m}")),
        DriveError::Remote { code, message } => Status::new(code, message),
    }
}
