//! `server.toml`: the matching server's configuration, validated at start with
//! errors that name the setting and what is wrong. `examples/server.toml` is a
//! commented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::measure::stats::{DEFAULT_MIN_AGGREGATE, Noise};
use crate::measure::{Learner, laplace};
use crate::normalize::{Profile, Region, parse_region};
use crate::psi::{Protocol, Reveal};
use crate::records::ColumnSpec;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// TLS; required unless `listen` is a loopback address.
    pub tls: Option<TlsConfig>,
    /// Where per-match result files (owner/both modes) are written, mode 0600.
    pub results_dir: PathBuf,
    /// Append-only audit log, one JSON line per match.
    pub audit_log: PathBuf,
    /// Where per-partner daily budgets are kept across restarts.
    pub state_file: PathBuf,
    /// `text` (default) or `json` logs on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Prometheus metrics endpoint (`GET /metrics`), e.g. `127.0.0.1:9464`.
    pub metrics_listen: Option<SocketAddr>,
    /// Owner's opt-out list (CSV with email/phone/id columns), re-read at the start
    /// of a match whenever the file has changed.
    pub optouts: Option<PathBuf>,
    /// Skip (and log) rows of the `optouts` file that cannot be read, instead of
    /// refusing every match with `UNAVAILABLE` until the file is fixed.
    #[serde(default)]
    pub optouts_skip_bad_rows: bool,
    /// Owner's opt-out store (`idmatch optout`), consulted at the start of every
    /// match and managed over gRPC by `OptOutAdmin`. Exclusive with `optouts`.
    pub optout_store: Option<OptOutStoreConfig>,
    /// Concurrency, set-size, budget, timeout and message-size limits (`[limits]`).
    #[serde(default)]
    pub limits: Limits,
    /// Who may connect (`[[partners]]`, at least one; names unique).
    pub partners: Vec<PartnerConfig>,
    /// What may be matched (`[[campaigns]]`, at least one; ids unique).
    pub campaigns: Vec<CampaignConfig>,
    /// The file this was read from (re-read on reload).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The format of the server's log lines on stderr (`log_format`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`text`, the default).
    #[default]
    Text,
    /// One JSON object per line (`json`).
    Json,
}

/// The `[optout_store]` section: the durable opt-out store and its admin access.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OptOutStoreConfig {
    /// The SQLite database (created by `idmatch optout`).
    pub db: PathBuf,
    /// The store key file.
    pub key_file: PathBuf,
    /// SHA-256 (hex) of the admin bearer token for `OptOutAdmin`; must differ from
    /// every partner's.
    pub admin_token_sha256: String,
}

/// The `[tls]` section: the server's certificate and, for mutual TLS, the client CA.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

/// The `[limits]` section; every setting has a default.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Matches running at once, all partners together (default 16; positive); more
    /// are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_matches: usize,
    /// Concurrent matches of one partner (at most `max_concurrent_matches`; default
    /// 4, or `max_concurrent_matches` when that is smaller).
    pub max_concurrent_matches_per_partner: Option<usize>,
    /// Smallest partner set accepted (IAB PAIR recommends ≥ 1000 against probing).
    pub min_partner_set: u64,
    /// Largest partner set accepted, in distinct tokens announced in the hello
    /// (default 50 000 000).
    pub max_partner_set: u64,
    /// Matches one partner may start per UTC day (default 100).
    pub max_matches_per_partner_per_day: u64,
    /// Sum of announced partner set sizes one partner may match per UTC day
    /// (default 200 000 000).
    pub max_identifiers_per_partner_per_day: u64,
    /// A match whose partner sends nothing, or takes none of the owner's messages,
    /// for this long is ended (DEADLINE_EXCEEDED); in seconds, default 120, positive.
    pub idle_timeout_secs: u64,
    /// Largest gRPC message accepted, in bytes (default 4 MiB, at least 65536); also
    /// bounds the chunk size offered to the partner. Changes need a restart.
    pub max_message_bytes: usize,
    /// Largest measurement message (docs/PROTOCOL.md §12.3) the owner puts together
    /// from a partner's frames, in bytes (default 256 MiB, at least 65536): bounds
    /// the owner's memory per measurement stream whatever the hello announces (about
    /// twice this while the partner's exposures are blinded again). A hello whose
    /// bundles cannot fit is refused before anything is blinded or encrypted.
    pub max_measurement_message_bytes: usize,
    /// HTTP/2 keepalive: a PING on every connection this often...
    pub keepalive_interval_secs: u64,
    /// ...which must be answered within this long, or the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// TCP keepalive probes on idle connections after this long.
    pub tcp_keepalive_secs: u64,
    /// Threads of the pool on which the owner encrypts and proves its values when
    /// it learns measurement figures with noise (default: every core; positive).
    /// Fewer leaves the other cores to matches. Changes need a restart.
    pub proving_threads: Option<usize>,
    /// Measurements whose owner proves its values at once, all partners together
    /// (default 1, positive); more are refused with RESOURCE_EXHAUSTED before
    /// anything is charged. A measurement holds its slot from its charge, through
    /// the wait for the partner's exposures, until its proofs are done.
    pub max_concurrent_proofs: usize,
}

/// Default of `max_concurrent_matches_per_partner`.
pub const DEFAULT_MATCHES_PER_PARTNER: usize = 4;

/// Default of `max_measurement_message_bytes`: 256 MiB, so at most about 512 MiB
/// per measurement stream.
pub const DEFAULT_MEASUREMENT_MESSAGE_BYTES: usize = 256 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_concurrent_matches: 16,
            min_partner_set: 1000,
            max_partner_set: 50_000_000,
            max_matches_per_partner_per_day: 100,
            max_identifiers_per_partner_per_day: 200_000_000,
            idle_timeout_secs: 120,
            max_message_bytes: 4 * 1024 * 1024,
            max_measurement_message_bytes: DEFAULT_MEASUREMENT_MESSAGE_BYTES,
            max_concurrent_matches_per_partner: None,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 20,
            tcp_keepalive_secs: 60,
            proving_threads: None,
            max_concurrent_proofs: 1,
        }
    }
}

impl Limits {
    /// [`idle_timeout_secs`](Self::idle_timeout_secs) as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The per-partner cap on concurrent matches.
    pub fn matches_per_partner(&self) -> usize {
        self.max_concurrent_matches_per_partner.unwrap_or(DEFAULT_MATCHES_PER_PARTNER.min(self.max_concurrent_matches))
    }

    /// Threads of the proving pool: [`proving_threads`](Self::proving_threads), or
    /// every core.
    pub fn proving_threads(&self) -> usize {
        self.proving_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The settings fixed for the life of the process (the gRPC server, its
    /// connections and the proving pool are built with them): a reload may not
    /// change them.
    pub(crate) fn restart_only(&self) -> (usize, u64, u64, u64, Option<usize>) {
        (
            self.max_message_bytes,
            self.keepalive_interval_secs,
            self.keepalive_timeout_secs,
            self.tcp_keepalive_secs,
            self.proving_threads,
        )
    }
}

/// One `[[partners]]` entry, as written; [`Config::partner_policy`] validates it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// The partner's name, in logs, the audit log, budgets and result file names.
    pub name: String,
    /// SHA-256 (hex) of the partner's bearer token.
    pub token_sha256: Option<String>,
    /// Common name (CN) of the partner's client certificate subject (mutual TLS).
    pub cert_common_name: Option<String>,
    /// Campaign ids this partner may match against.
    pub campaigns: Vec<String>,
    /// Reveal modes this partner may ask for: partner, owner, both, count.
    pub reveals: Vec<String>,
    /// The owner trusts this partner to run an honest (unmodified) client. Only then
    /// may it run measurements: the partner's client computes the matches, and a
    /// deviating one can link its bundles through the owner's reply to learn which
    /// of its people are in the outcomes, and, with learner `partner` or `both`,
    /// read one person's value exactly (docs/PRIVACY.md, "Cheating parties, by
    /// learner"). Default `false`: every measurement is refused with
    /// PERMISSION_DENIED. Matching does not read it; but `ecdh` reveal `count`
    /// keeps which records matched from an honest client only (docs/PRIVACY.md).
    #[serde(default)]
    pub honest_client_trusted: bool,
}

/// One `[[campaigns]]` entry, as written; [`Config::campaign_settings`] validates it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    /// The campaign id a partner's hello names.
    pub id: String,
    /// The campaign key file shared with the partners.
    pub key_file: PathBuf,
    /// The member audience (CSV/TSV).
    pub audience: PathBuf,
    /// Normalization profile name: `idmatch-v1` (the default), `basic-v1` or
    /// `idmatch-v2` (recommended for a new campaign); the partners must use the same.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Default region for national-format phone numbers.
    pub region: Option<String>,
    /// Column names in the audience file (default: detected from the header).
    #[serde(default)]
    pub columns: ColumnNames,
    /// The matching engines partners may use for this campaign, `ecdh` and/or
    /// `oprf` (a client's `auto` gets the fastest that offers its reveal mode).
    /// Default `["ecdh", "oprf"]`: both hold against a partner that deviates from
    /// the protocol (docs/PRIVACY.md, "Under `oprf`").
    #[serde(default = "default_protocols")]
    pub protocols: Vec<String>,
    /// Campaign measurement over the `Measurer` rpc (`[campaigns.measurement]`);
    /// without it the campaign refuses measurements.
    pub measurement: Option<MeasurementConfig>,
}

/// A campaign's `[campaigns.measurement]` table, as written;
/// [`Config::campaign_settings`] validates it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementConfig {
    /// The owner's outcome file (CSV/TSV with a header and the value column).
    pub outcomes: PathBuf,
    /// Column names in the outcome file (default: detected from the header).
    #[serde(default)]
    pub columns: ColumnNames,
    /// The value column: a non-negative integer up to 2^32 per record (default `value`).
    #[serde(default = "default_value_column")]
    pub value_column: String,
    /// Who receives the released figures: `owner` (default), `partner` or `both`.
    #[serde(default = "default_learner")]
    pub learner: String,
    /// Figures over fewer matched people are suppressed (default 100, positive).
    #[serde(default = "default_min_aggregate")]
    pub min_aggregate: u64,
    /// A measurement whose partner puts fewer exposed people than this in any group
    /// is refused before anything is summed (default: `min_aggregate`): groups of one
    /// person would tell the partner who is in the outcomes, whatever the threshold.
    pub min_group_size: Option<u64>,
    /// Total epsilon of the discrete Laplace noise of one measurement; no noise when
    /// absent. Needs `value_max`, `max_epsilon_per_partner_per_day` and
    /// `max_epsilon_per_partner_lifetime`.
    pub epsilon: Option<f64>,
    /// Values are clipped at this before encryption (the sum's sensitivity).
    pub value_max: Option<u64>,
    /// Epsilon one partner may spend on this campaign per UTC day (each measurement
    /// charged its worst case per person).
    pub max_epsilon_per_partner_per_day: Option<f64>,
    /// Epsilon one partner may ever spend on the outcome dataset, summed over every
    /// campaign that measures the same dataset and never reset.
    pub max_epsilon_per_partner_lifetime: Option<f64>,
    /// The name of the outcome dataset in the lifetime ledger (default: the
    /// `outcomes` path as written): campaigns naming the same dataset share it.
    pub outcome_dataset: Option<String>,
}

fn default_value_column() -> String {
    "value".to_owned()
}

fn default_learner() -> String {
    Learner::Owner.name().to_owned()
}

fn default_min_aggregate() -> u64 {
    DEFAULT_MIN_AGGREGATE
}

/// A campaign's validated measurement settings.
#[derive(Debug, Clone)]
pub struct MeasurementSettings {
    /// The outcome file.
    pub outcomes: PathBuf,
    /// Column names in the outcome file.
    pub columns: ColumnSpec,
    /// The value column.
    pub value_column: String,
    /// Who receives the released figures.
    pub learner: Learner,
    /// The minimum aggregate.
    pub min_aggregate: u64,
    /// The smallest group (exposure bundles) the owner accepts.
    pub min_group_size: u64,
    /// The noise, when configured (`epsilon` and `value_max`).
    pub noise: Option<Noise>,
    /// The clip value (also without noise).
    pub value_max: Option<u64>,
    /// The daily epsilon budget of each partner on this campaign (with noise only).
    pub max_epsilon_per_day: Option<f64>,
    /// The lifetime epsilon budget of each partner on the outcome dataset (with
    /// noise only).
    pub max_epsilon_lifetime: Option<f64>,
    /// The outcome dataset's name in the lifetime ledger.
    pub outcome_dataset: String,
}

fn default_profile() -> String {
    Profile::IdmatchV1.name().to_owned()
}

fn default_protocols() -> Vec<String> {
    Protocol::ALL.iter().map(|p| p.name().to_owned()).collect()
}

/// A campaign's `columns` table: the [`ColumnSpec`] as written in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnNames {
    /// The record id column (default: detected).
    pub id: Option<String>,
    /// Email columns (default: detected).
    #[serde(default)]
    pub email: Vec<String>,
    /// Phone columns (default: detected).
    #[serde(default)]
    pub phone: Vec<String>,
    /// The per-record phone region column (default: detected).
    pub region: Option<String>,
}

impl ColumnNames {
    /// The same names as a [`ColumnSpec`].
    pub fn spec(&self) -> ColumnSpec {
        ColumnSpec {
            id: self.id.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            region: self.region.clone(),
        }
    }
}

/// A configuration problem, naming the file and the setting.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// What is wrong (unreadable file, TOML error, or the failed check).
    pub problem: String,
}

/// A partner's validated permissions.
#[derive(Debug, Clone)]
pub struct PartnerPolicy {
    /// The partner's name.
    pub name: String,
    /// SHA-256 of its bearer token, if it authenticates by token.
    pub token_sha256: Option<[u8; 32]>,
    /// Its client certificate's common name, if it authenticates by mutual TLS.
    pub cert_common_name: Option<String>,
    /// Campaign ids it may match against (each a configured campaign).
    pub campaigns: Vec<String>,
    /// Reveal modes it may ask for.
    pub reveals: Vec<Reveal>,
    /// Whether the owner trusts it to run an honest client
    /// ([`PartnerConfig::honest_client_trusted`]).
    pub honest_client_trusted: bool,
}

/// A campaign's validated settings.
#[derive(Debug, Clone)]
pub struct CampaignSettings {
    /// The campaign id.
    pub id: String,
    /// The campaign key file.
    pub key_file: PathBuf,
    /// The member audience file.
    pub audience: PathBuf,
    /// The normalization profile.
    pub profile: Profile,
    /// Default region for national-format phone numbers.
    pub region: Option<Region>,
    /// Column names in the audience file.
    pub columns: ColumnSpec,
    /// The matching engines allowed (not empty, no repeats).
    pub protocols: Vec<Protocol>,
    /// Campaign measurement, when configured.
    pub measurement: Option<MeasurementSettings>,
}

impl Config {
    /// Reads and validates `path`. Relative paths inside are taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |problem: String| ConfigError { path: path.to_owned(), problem };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate().map_err(err)?;
        config.path = path.to_owned();
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.results_dir);
        fix(&mut self.audit_log);
        fix(&mut self.state_file);
        if let Some(p) = &mut self.optouts {
            fix(p);
        }
        if let Some(store) = &mut self.optout_store {
            fix(&mut store.db);
            fix(&mut store.key_file);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        for c in &mut self.campaigns {
            fix(&mut c.key_file);
            fix(&mut c.audience);
            if let Some(m) = &mut c.measurement {
                fix(&mut m.outcomes);
            }
        }
    }

    /// Checks every setting (done by [`Config::load`]; the server checks again, for
    /// configurations built in code).
    pub fn validate(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "listen = {}: plaintext is allowed only on a loopback address; add a [tls] section",
                self.listen
            ));
        }
        if self.optouts.is_some() && self.optout_store.is_some() {
            return Err("set either optouts (a file) or [optout_store], not both".into());
        }
        if let Some(store) = &self.optout_store {
            let admin = parse_sha256(&store.admin_token_sha256)
                .map_err(|e| format!("[optout_store] admin_token_sha256: {e}"))?;
            if self.partners.iter().any(|p| p.token_sha256.as_deref().and_then(|t| parse_sha256(t).ok()) == Some(admin))
            {
                return Err("[optout_store] admin_token_sha256 equals a partner's token".into());
            }
        }
        let l = &self.limits;
        if l.max_concurrent_matches == 0 || l.idle_timeout_secs == 0 || l.max_message_bytes < 64 * 1024 {
            return Err("[limits]: max_concurrent_matches and idle_timeout_secs must be positive and max_message_bytes at least 65536".into());
        }
        if l.proving_threads == Some(0) || l.max_concurrent_proofs == 0 {
            return Err("[limits]: proving_threads and max_concurrent_proofs must be positive".into());
        }
        if l.max_measurement_message_bytes < 64 * 1024 {
            return Err("[limits]: max_measurement_message_bytes must be at least 65536".into());
        }
        if l.max_concurrent_matches_per_partner.is_some_and(|n| n == 0 || n > l.max_concurrent_matches) {
            return Err(format!(
                "[limits]: max_concurrent_matches_per_partner must be between 1 and max_concurrent_matches ({})",
                l.max_concurrent_matches
            ));
        }
        if l.keepalive_interval_secs == 0 || l.keepalive_timeout_secs == 0 || l.tcp_keepalive_secs == 0 {
            return Err(
                "[limits]: keepalive_interval_secs, keepalive_timeout_secs and tcp_keepalive_secs must be positive"
                    .into(),
            );
        }
        if l.min_partner_set > l.max_partner_set {
            return Err("[limits]: min_partner_set is larger than max_partner_set".into());
        }
        if self.campaigns.is_empty() || self.partners.is_empty() {
            return Err("at least one [[campaigns]] and one [[partners]] entry are required".into());
        }
        for (i, c) in self.campaigns.iter().enumerate() {
            if self.campaigns[..i].iter().any(|o| o.id == c.id) {
                return Err(format!("campaign id `{}` appears twice", c.id));
            }
            self.campaign_settings(c)?;
        }
        for (i, p) in self.partners.iter().enumerate() {
            if self.partners[..i].iter().any(|o| o.name == p.name) {
                return Err(format!("partner name `{}` appears twice", p.name));
            }
            let policy = self.partner_policy(p)?;
            // One credential, one partner: otherwise authentication would pick
            // whichever entry comes first, with its campaigns and reveal modes.
            for earlier in &self.partners[..i] {
                let earlier = self.partner_policy(earlier)?;
                if policy.token_sha256.is_some() && policy.token_sha256 == earlier.token_sha256 {
                    return Err(format!("partners `{}` and `{}` have the same token_sha256", earlier.name, p.name));
                }
                if policy.cert_common_name.is_some() && policy.cert_common_name == earlier.cert_common_name {
                    return Err(format!("partners `{}` and `{}` have the same cert_common_name", earlier.name, p.name));
                }
            }
        }
        Ok(())
    }

    /// The validated settings of one campaign entry.
    pub fn campaign_settings(&self, c: &CampaignConfig) -> Result<CampaignSettings, String> {
        let profile: Profile = c.profile.parse().map_err(|e| format!("campaign `{}`: {e}", c.id))?;
        let region = c
            .region
            .as_deref()
            .map(|r| {
                parse_region(r)
                    .map_err(|_| format!("campaign `{}`: region `{r}` is not an ISO 3166 alpha-2 code", c.id))
            })
            .transpose()?;
        let mut protocols: Vec<Protocol> = Vec::new();
        for name in &c.protocols {
            let protocol: Protocol = name.parse().map_err(|e| format!("campaign `{}`: protocols: {e}", c.id))?;
            if protocols.contains(&protocol) {
                return Err(format!("campaign `{}`: protocols: `{name}` is listed twice", c.id));
            }
            protocols.push(protocol);
        }
        if protocols.is_empty() {
            return Err(format!("campaign `{}`: protocols: allow at least one of ecdh, oprf", c.id));
        }
        let measurement = c.measurement.as_ref().map(|m| measurement_settings(m, &c.id)).transpose()?;
        Ok(CampaignSettings {
            id: c.id.clone(),
            key_file: c.key_file.clone(),
            audience: c.audience.clone(),
            profile,
            region,
            columns: c.columns.spec(),
            protocols,
            measurement,
        })
    }

    /// The validated policy of one partner entry.
    pub fn partner_policy(&self, p: &PartnerConfig) -> Result<PartnerPolicy, String> {
        let token_sha256 = p
            .token_sha256
            .as_deref()
            .map(|hex_digest| parse_sha256(hex_digest).map_err(|e| format!("partner `{}`: token_sha256: {e}", p.name)))
            .transpose()?;
        if token_sha256.is_none() && p.cert_common_name.is_none() {
            return Err(format!("partner `{}`: set token_sha256 or cert_common_name", p.name));
        }
        if p.cert_common_name.is_some() && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
            return Err(format!("partner `{}`: cert_common_name needs [tls] client_ca (mutual TLS)", p.name));
        }
        for c in &p.campaigns {
            if !self.campaigns.iter().any(|k| &k.id == c) {
                return Err(format!("partner `{}`: unknown campaign `{c}`", p.name));
            }
        }
        let reveals = p
            .reveals
            .iter()
            .map(|r| r.parse::<Reveal>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("partner `{}`: {e}", p.name))?;
        Ok(PartnerPolicy {
            name: p.name.clone(),
            token_sha256,
            cert_common_name: p.cert_common_name.clone(),
            campaigns: p.campaigns.clone(),
            reveals,
            honest_client_trusted: p.honest_client_trusted,
        })
    }
}

/// The validated `[campaigns.measurement]` table of campaign `id`.
fn measurement_settings(m: &MeasurementConfig, id: &str) -> Result<MeasurementSettings, String> {
    let err = |field: &str, reason: String| format!("campaign `{id}`: [campaigns.measurement] {field}: {reason}");
    let learner: Learner = m.learner.parse().map_err(|e| err("learner", e))?;
    if m.value_column.trim().is_empty() {
        return Err(err("value_column", "must not be empty".into()));
    }
    if m.min_aggregate == 0 {
        return Err(err("min_aggregate", "must be at least 1".into()));
    }
    if m.min_group_size == Some(0) {
        return Err(err("min_group_size", "must be at least 1".into()));
    }
    if m.value_max == Some(0) {
        return Err(err("value_max", "must be at least 1".into()));
    }
    // The owner holds the values; a partner that learns figures of them must get
    // them noised (issue 20): there is no exact release to another party.
    if learner.partner_learns() && m.epsilon.is_none() {
        return Err(err(
            "epsilon",
            format!(
                "is required with learner `{}`: the partner learns figures of the owner's values, which are released to another party only with noise (also set value_max and the two epsilon budgets)",
                learner.name()
            ),
        ));
    }
    if let Some(e) = m.epsilon
        && !(laplace::MIN_EPSILON..=laplace::MAX_EPSILON).contains(&e)
    {
        return Err(err("epsilon", format!("{e} is not a number from 2^-16 (about 0.0000153) to 2^16 (65536)")));
    }
    for (field, budget) in [
        ("max_epsilon_per_partner_per_day", m.max_epsilon_per_partner_per_day),
        ("max_epsilon_per_partner_lifetime", m.max_epsilon_per_partner_lifetime),
    ] {
        if let Some(b) = budget
            && (!b.is_finite() || b <= 0.0)
        {
            return Err(err(field, format!("{b} is not a positive finite number")));
        }
    }
    for (field, budget) in [
        ("max_epsilon_per_partner_per_day", m.max_epsilon_per_partner_per_day),
        ("max_epsilon_per_partner_lifetime", m.max_epsilon_per_partner_lifetime),
    ] {
        match (m.epsilon, budget) {
            (None, Some(_)) => return Err(err(field, "needs epsilon".into())),
            (Some(_), None) => return Err(err(field, "is required with epsilon".into())),
            (Some(epsilon), Some(budget)) if budget < epsilon => {
                return Err(err(
                    field,
                    format!("{budget} is smaller than epsilon ({epsilon}): no measurement could run"),
                ));
            }
            _ => {}
        }
    }
    let noise = match (m.epsilon, m.value_max) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(err("value_max", "is required with epsilon (it bounds the sum's sensitivity)".into()));
        }
        (Some(epsilon), Some(clip)) => Some(Noise { epsilon, clip }),
    };
    // The review's L3: a noise bound the decrypting side could not search would
    // fail every run, after its charge.
    if let Some(noise) = noise {
        noise.check_search(learner, 0).map_err(|e| err("epsilon", e.to_string()))?;
    }
    let outcome_dataset = match &m.outcome_dataset {
        Some(name) if name.trim().is_empty() => return Err(err("outcome_dataset", "must not be empty".into())),
        Some(name) => name.trim().to_owned(),
        None => m.outcomes.display().to_string(),
    };
    Ok(MeasurementSettings {
        outcomes: m.outcomes.clone(),
        columns: m.columns.spec(),
        value_column: m.value_column.trim().to_owned(),
        learner,
        min_aggregate: m.min_aggregate,
        min_group_size: m.min_group_size.unwrap_or(m.min_aggregate),
        noise,
        value_max: m.value_max,
        max_epsilon_per_day: noise.and(m.max_epsilon_per_partner_per_day),
        max_epsilon_lifetime: noise.and(m.max_epsilon_per_partner_lifetime),
        outcome_dataset,
    })
}

impl Config {
    /// Why `new` cannot replace `self` on a reload, if it cannot: the listening
    /// socket, TLS, files held open and the server's HTTP/2 settings are fixed until
    /// a restart.
    pub fn reload_refusal(&self, new: &Config) -> Option<String> {
        let changed = [
            ("listen", self.listen != new.listen),
            ("[tls]", self.tls != new.tls),
            ("results_dir", self.results_dir != new.results_dir),
            ("audit_log", self.audit_log != new.audit_log),
            ("state_file", self.state_file != new.state_file),
            ("log_format", self.log_format != new.log_format),
            ("metrics_listen", self.metrics_listen != new.metrics_listen),
            ("[optout_store]", self.optout_store != new.optout_store),
            (
                "[limits] max_message_bytes, keepalive settings or proving_threads",
                self.limits.restart_only() != new.limits.restart_only(),
            ),
        ];
        let names: Vec<&str> = changed.iter().filter(|(_, c)| *c).map(|(name, _)| *name).collect();
        (!names.is_empty()).then(|| format!("{} changed: these take effect only on a restart", names.join(", ")))
    }
}

/// The digest a `token_sha256` setting holds for bearer token `token`: SHA-256 of
/// the token without surrounding whitespace, as the server compares it (so a token
/// file's trailing newline does not count; `sha256sum token` does count it, and
/// gives a digest that never authenticates: use `idmatch partner token-sha256`).
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.trim().as_bytes()).into()
}

/// A new partner credential: a bearer token of 256 random bits (64 hex digits) and
/// the `[[partners]]` entry that admits it, ready to paste into `server.toml`.
pub struct IssuedPartner {
    /// The token, for the partner only (zeroized when dropped).
    pub token: zeroize::Zeroizing<String>,
    /// The configuration entry (TOML), holding only the token's digest.
    pub entry: String,
}

impl IssuedPartner {
    /// Draws a token from the operating system's CSPRNG and writes the entry for
    /// partner `name` allowed `campaigns` and `reveals` (and, with
    /// `honest_client_trusted`, measurements that release figures to the partner).
    pub fn new(
        name: &str,
        campaigns: &[String],
        reveals: &[Reveal],
        honest_client_trusted: bool,
    ) -> Result<IssuedPartner, rand::Error> {
        use rand::RngCore;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.try_fill_bytes(bytes.as_mut())?;
        let token = zeroize::Zeroizing::new(hex::encode(bytes.as_ref()));
        let quoted = |items: Vec<&str>| items.iter().map(|s| toml_string(s)).collect::<Vec<_>>().join(", ");
        let entry = format!(
            "[[partners]]\nname = {}\ntoken_sha256 = \"{}\"\ncampaigns = [{}]\nreveals = [{}]\nhonest_client_trusted = {}\n",
            toml_string(name),
            hex::encode(token_sha256(&token)),
            quoted(campaigns.iter().map(String::as_str).collect()),
            quoted(reveals.iter().map(|r| r.name()).collect()),
            honest_client_trusted,
        );
        Ok(IssuedPartner { token, entry })
    }
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A SHA-256 digest written as 64 hex digits.
pub fn parse_sha256(hex_digest: &str) -> Result<[u8; 32], String> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| "must be 64 hex digits".to_owned())?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(measurement: &str) -> Config {
        let text = format!(
            r#"
listen = "127.0.0.1:0"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "state.json"

[[partners]]
name = "acme"
token_sha256 = "{}"
campaigns = ["spring"]
reveals = ["count"]

[[campaigns]]
id = "spring"
key_file = "campaign.key"
audience = "members.csv"
{measurement}
"#,
            "ab".repeat(32)
        );
        toml::from_str(&text).unwrap()
    }

    fn problem(measurement: &str) -> String {
        config_with(measurement).validate().unwrap_err()
    }

    #[test]
    fn measurement_settings_default_and_validate() {
        let config = config_with("[campaigns.measurement]\noutcomes = \"outcomes.csv\"\n");
        config.validate().unwrap();
        let m = config.campaign_settings(&config.campaigns[0]).unwrap().measurement.unwrap();
        assert_eq!((m.learner, m.min_aggregate, m.value_column.as_str()), (Learner::Owner, 100, "value"));
        assert_eq!((m.noise, m.max_epsilon_per_day), (None, None));
        assert!(config_with("").campaign_settings(&config_with("").campaigns[0]).unwrap().measurement.is_none());

        let noisy = config_with(
            "[campaigns.measurement]\noutcomes = \"o.csv\"\nlearner = \"both\"\nepsilon = 1.5\nvalue_max = 5000\nmax_epsilon_per_partner_per_day = 3\nmax_epsilon_per_partner_lifetime = 30\n",
        );
        let m = noisy.campaign_settings(&noisy.campaigns[0]).unwrap().measurement.unwrap();
        assert_eq!(m.noise, Some(Noise { epsilon: 1.5, clip: 5000 }));
        assert_eq!((m.learner, m.max_epsilon_per_day), (Learner::Both, Some(3.0)));
        assert_eq!((m.max_epsilon_lifetime, m.outcome_dataset.as_str()), (Some(30.0), "o.csv"));
    }

    #[test]
    fn measurement_problems_name_the_campaign_the_field_and_the_reason() {
        let base = "[campaigns.measurement]\noutcomes = \"o.csv\"\n";
        let cases = [
            ("learner = \"everyone\"", "learner: unknown learner `everyone`"),
            ("learner = \"partner\"", "epsilon: is required with learner `partner`: the partner learns figures"),
            ("learner = \"both\"\nvalue_max = 10", "epsilon: is required with learner `both`"),
            ("min_aggregate = 0", "min_aggregate: must be at least 1"),
            ("value_column = \" \"", "value_column: must not be empty"),
            (
                "epsilon = -1.0\nvalue_max = 10\nmax_epsilon_per_partner_per_day = 1",
                "epsilon: -1 is not a number from 2^-16",
            ),
            (
                "epsilon = 1e6\nvalue_max = 10\nmax_epsilon_per_partner_per_day = 1e7",
                "epsilon: 1000000 is not a number from",
            ),
            (
                "epsilon = 1.0\nmax_epsilon_per_partner_per_day = 1\nmax_epsilon_per_partner_lifetime = 9",
                "value_max: is required with epsilon",
            ),
            (
                "epsilon = 1.0\nvalue_max = 10\nmax_epsilon_per_partner_per_day = 1",
                "max_epsilon_per_partner_lifetime: is required with epsilon",
            ),
            (
                "epsilon = 2.0\nvalue_max = 10\nmax_epsilon_per_partner_per_day = 2\nmax_epsilon_per_partner_lifetime = 1",
                "max_epsilon_per_partner_lifetime: 1 is smaller than epsilon (2)",
            ),
            ("max_epsilon_per_partner_lifetime = 1", "max_epsilon_per_partner_lifetime: needs epsilon"),
            ("outcome_dataset = \" \"", "outcome_dataset: must not be empty"),
            ("epsilon = 1.0\nvalue_max = 10", "max_epsilon_per_partner_per_day: is required with epsilon"),
            ("max_epsilon_per_partner_per_day = 1", "max_epsilon_per_partner_per_day: needs epsilon"),
            ("epsilon = 2.0\nvalue_max = 10\nmax_epsilon_per_partner_per_day = 1", "1 is smaller than epsilon (2)"),
            ("value_max = 0", "value_max: must be at least 1"),
            (
                "epsilon = 0.0000153\nvalue_max = 4294967296\nmax_epsilon_per_partner_per_day = 1\nmax_epsilon_per_partner_lifetime = 1",
                "epsilon: decrypting a sum of 0 people would search",
            ),
        ];
        for (extra, expected) in cases {
            let p = problem(&format!("{base}{extra}\n"));
            assert!(p.starts_with("campaign `spring`: [campaigns.measurement] "), "{p}");
            assert!(p.contains(expected), "{extra}: {p}");
        }
        let unknown: Result<Config, _> = toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\nresults_dir = \"r\"\naudit_log = \"a\"\nstate_file = \"s\"\npartners = []\n[[campaigns]]\nid = \"x\"\nkey_file = \"k\"\naudience = \"a\"\n{base}epsilonn = 1\n"
        ));
        assert!(unknown.unwrap_err().to_string().contains("epsilonn"));
    }

    #[test]
    fn the_measurement_message_limit_defaults_to_256_mib_and_is_at_least_64_kib() {
        assert_eq!(config_with("").limits.max_measurement_message_bytes, 256 << 20);
        let mut config = config_with("");
        config.limits.max_measurement_message_bytes = 65_535;
        assert_eq!(config.validate().unwrap_err(), "[limits]: max_measurement_message_bytes must be at least 65536");
        config.limits.max_measurement_message_bytes = 65_536;
        config.validate().unwrap();
    }

    #[test]
    fn campaign_profile_is_any_known_profile_default_idmatch_v1() {
        // `config_with` puts its argument inside the campaign entry.
        for profile in Profile::ALL {
            let config = config_with(&format!("profile = \"{profile}\"\n"));
            assert_eq!(config.campaign_settings(&config.campaigns[0]).unwrap().profile, profile);
        }
        let config = config_with("");
        assert_eq!(config.campaign_settings(&config.campaigns[0]).unwrap().profile, Profile::IdmatchV1);
        let config = config_with("profile = \"idmatch-v3\"\n");
        let err = config.campaign_settings(&config.campaigns[0]).unwrap_err();
        assert!(err.contains("campaign `spring`: unknown normalization profile `idmatch-v3`"), "{err}");
        assert!(err.contains("(known: idmatch-v1, basic-v1, idmatch-v2)"), "{err}");
    }

    #[test]
    fn relative_outcome_paths_are_taken_from_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_with("[campaigns.measurement]\noutcomes = \"outcomes.csv\"\n");
        config.resolve_paths(dir.path());
        assert_eq!(config.campaigns[0].measurement.as_ref().unwrap().outcomes, dir.path().join("outcomes.csv"));
    }
}
