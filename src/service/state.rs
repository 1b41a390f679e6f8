//! What the server loads from its configuration file: partners, campaigns with their
//! audiences read and tokenized, limits. A [`State`] is built whole (at start and on
//! every reload) and then swapped in at once; a running match keeps the state it
//! started with.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tracing::{info, warn};

use super::config::{CampaignSettings, Config, ConfigError, PartnerPolicy};
use super::error::ServeError;
use crate::key::Key;
use crate::normalize::Normalizer;
use crate::optout::store::OptOutStore;
use crate::optout::{BadRows, FileList, OptOutError, excluded_records};
use crate::prepare;
use crate::records::{Mode, ReadError, ReadOptions, RecordSet};
use crate::shard::ShardRule;
use crate::token::{KeyFingerprint, Tokenizer};

/// How many shard counts `N` a campaign keeps the audience's shard assignment for
/// (2 bytes per audience identifier each).
const KEPT_ASSIGNMENTS: usize = 4;

/// A campaign with its audience loaded and tokenized.
pub(crate) struct Campaign {
    pub settings: CampaignSettings,
    pub records: RecordSet,
    /// The outcome file, read and tokenized, when the campaign has measurement.
    pub outcomes: Option<RecordSet>,
    /// The campaign key's fingerprint: hellos must carry the same.
    pub key_fingerprint: KeyFingerprint,
    /// The opt-out list as last read, with the SHA-256 of the bytes it was read from.
    optouts: Mutex<Option<(ContentDigest, Arc<FileList>)>>,
    /// The campaign key, for the shard rule of sharded runs.
    key: Key,
    /// The shard of each audience entry under the last [`KEPT_ASSIGNMENTS`] `N`s
    /// runs asked for, most recent last.
    shards: Mutex<Vec<(u32, Arc<Vec<u16>>)>>,
    /// [`Campaign::audience_digest`], computed at the first sharded run.
    audience_digest: OnceLock<String>,
}

impl Campaign {
    /// The shard (docs/PROTOCOL.md §13) of each of the audience's entries, in order,
    /// for `shards` shards (at most [`crate::shard::MAX_SHARDS`]): computed (one
    /// keyed hash per identifier, without holding the cache's lock, so streams
    /// asking for other `N`s do not wait on it) and kept for the next runs with the
    /// same `N`, for the last [`KEPT_ASSIGNMENTS`] values of `N`; a reload, which
    /// may change the audience, starts afresh.
    pub fn shard_assignment(&self, shards: NonZeroU32) -> Arc<Vec<u16>> {
        let cached = |kept: &Vec<(u32, Arc<Vec<u16>>)>| {
            kept.iter().find(|(n, _)| *n == shards.get()).map(|(_, assignment)| assignment.clone())
        };
        if let Some(assignment) = cached(&self.shards.lock().unwrap_or_else(|p| p.into_inner())) {
            return assignment;
        }
        let assignment = Arc::new(crate::shard::assignment(&self.records, &ShardRule::new(&self.key, shards)));
        let mut kept = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if cached(&kept).is_none() {
            if kept.len() == KEPT_ASSIGNMENTS {
                kept.remove(0);
            }
            kept.push((shards.get(), assignment.clone()));
        }
        assignment
    }

    /// SHA-256 (hex) of the audience as loaded: its record count and every entry's
    /// token, record index and kind, in order. The streams of one run may be served
    /// by several server processes, and the owner's matches of their shards are
    /// merged by record index, so every process must hold the same audience: the
    /// run compares this digest (`runs`). It names no identifier (the tokens are
    /// keyed); computed once per loaded configuration.
    pub fn audience_digest(&self) -> &str {
        self.audience_digest.get_or_init(|| {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            hash.update((self.records.len() as u64).to_be_bytes());
            for entry in self.records.entries() {
                hash.update(entry.token.0);
                hash.update(entry.record.to_be_bytes());
                hash.update([entry.kind as u8]);
            }
            hex::encode(hash.finalize())
        })
    }
}

/// One loaded configuration.
pub(crate) struct State {
    pub config: Config,
    pub partners: Vec<PartnerPolicy>,
    pub campaigns: HashMap<String, Arc<Campaign>>,
}

/// Where opt-outs come from, for the life of the process.
pub(crate) struct OptOuts {
    /// The opt-out store, when configured (instead of a file).
    pub store: Option<Arc<OptOutStore>>,
    /// Key for opt-out digests, stable for the process (the store's own key, or a
    /// random one for a file): audiences are digested once at load.
    pub digester: Tokenizer,
}

fn config_error(config: &Config, problem: String) -> ServeError {
    ServeError::Config(ConfigError { path: config.path.clone(), problem })
}

impl State {
    /// Validates the partners and reads and tokenizes every campaign's audience (on
    /// blocking threads).
    pub async fn load(config: Config, optouts: &Arc<OptOuts>) -> Result<State, ServeError> {
        let partners = config
            .partners
            .iter()
            .map(|p| config.partner_policy(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| config_error(&config, problem))?;
        let mut campaigns = HashMap::new();
        for entry in &config.campaigns {
            let settings = config.campaign_settings(entry).map_err(|problem| config_error(&config, problem))?;
            let optouts = optouts.clone();
            let campaign = tokio::task::spawn_blocking(move || load_campaign(settings, &optouts))
                .await
                .map_err(|e| ServeError::Io { path: entry.audience.clone(), source: std::io::Error::other(e) })??;
            campaigns.insert(entry.id.clone(), Arc::new(campaign));
        }
        Ok(State { config, partners, campaigns })
    }
}

fn load_campaign(settings: CampaignSettings, optouts: &OptOuts) -> Result<Campaign, ServeError> {
    let started = Instant::now();
    info!(campaign = %settings.id, audience = %settings.audience.display(), "loading audience");
    let key = Key::load(&settings.key_file)?;
    let mut options = ReadOptions::new(Normalizer::new(settings.profile, settings.region), Mode::Match);
    options.columns = settings.columns.clone();
    // Digested once under the opt-outs' stable key; filtered again at every match.
    let records = prepare::read_digested(&settings.audience, &Tokenizer::new(&key), options, &optouts.digester)?;
    if let Some(store) = &optouts.store {
        store.ensure_profile(&records).map_err(OptOutError::from)?;
    }
    let outcomes = match &settings.measurement {
        Some(m) => {
            info!(campaign = %settings.id, outcomes = %m.outcomes.display(), "loading outcomes");
            let owner_learns = m.learner != crate::measure::Learner::Partner;
            let default_max = super::measure_client::DEFAULT_MAX_EPSILON;
            if let Some(noise) = m.noise.filter(|n| owner_learns && n.epsilon > default_max) {
                warn!(
                    campaign = %settings.id,
                    epsilon = noise.epsilon,
                    "the measurement's epsilon is above the {default_max} that partner clients take by default when the owner learns the figures (--max-epsilon): a partner that does not raise it refuses this campaign's measurements (exit code 9)"
                );
            }
            // One row per purchase: repeated ids are one person's rows (measure::people).
            let mode = Mode::Outcomes { value_column: m.value_column.clone() };
            let mut options = ReadOptions::new(Normalizer::new(settings.profile, settings.region), mode);
            options.columns = m.columns.clone();
            let outcomes = prepare::read_digested(&m.outcomes, &Tokenizer::new(&key), options, &optouts.digester)?;
            let stats = outcomes.stats();
            info!(
                campaign = %settings.id,
                records = stats.records,
                rejected = stats.rejected_total(),
                bad_rows = stats.bad_rows_total(),
                "outcomes loaded"
            );
            Some(outcomes)
        }
        None => None,
    };
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
    Ok(Campaign {
        settings,
        records,
        outcomes,
        key_fingerprint: KeyFingerprint::of(&key),
        optouts: Mutex::new(None),
        key,
        shards: Mutex::new(Vec::new()),
        audience_digest: OnceLock::new(),
    })
}

impl OptOuts {
    /// The opt-out flags of `records` (the audience or the outcomes of `campaign`)
    /// now, from the store or from the list at `file` (re-read if it changed).
    /// Rows of the list that cannot be read refuse the match unless `bad_rows` is
    /// [`BadRows::Skip`] (`optouts_skip_bad_rows`).
    pub fn excluded(
        &self,
        campaign: &Campaign,
        records: &RecordSet,
        file: Option<&Path>,
        bad_rows: BadRows,
    ) -> Result<Vec<bool>, OptOutError> {
        if let Some(store) = &self.store {
            return excluded_records(records, store.as_ref());
        }
        let Some(path) = file else { return Ok(Vec::new()) };
        let list = self.file_list(campaign, path, bad_rows)?;
        excluded_records(records, list.as_ref())
    }

    /// The list at `path` as it is now. Whether it changed is decided by its content,
    /// hashed at every call, never by its modification time (a rewrite within the
    /// clock's granularity, or `cp -p`, keeps the time but not the content). A list
    /// that changes while it is being read is read again, and refused if it keeps
    /// changing: the cache only ever holds a list whose bytes hashed the same before
    /// and after it was parsed.
    fn file_list(&self, campaign: &Campaign, path: &Path, bad_rows: BadRows) -> Result<Arc<FileList>, OptOutError> {
        let mut cached = campaign.optouts.lock().unwrap_or_else(|p| p.into_inner());
        let mut before = ContentDigest::of(path)?;
        if let Some((digest, list)) = &*cached
            && *digest == before
        {
            return Ok(list.clone());
        }
        let normalizer = Normalizer::new(campaign.settings.profile, campaign.settings.region);
        let mut attempts = 0;
        let list = loop {
            let list = FileList::load_under(path, normalizer.clone(), self.digester.clone(), bad_rows)?;
            let after = ContentDigest::of(path)?;
            if after == before {
                break Arc::new(list);
            }
            attempts += 1;
            if attempts == 3 {
                return Err(OptOutError::Read(ReadError::Open {
                    path: PathBuf::from(path),
                    source: std::io::Error::other("the file kept changing while it was read (3 attempts)"),
                }));
            }
            before = after;
        };
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
            warn!(
                path = %path.display(),
                bad_rows = stats.bad_rows_total(),
                rejected = stats.rejected_total(),
                "opt-out list: skipped rows that cannot be read (optouts_skip_bad_rows); they opt nobody out"
            );
        }
        *cached = Some((before, list.clone()));
        Ok(list)
    }
}

/// SHA-256 of a file's bytes: how the server tells that an opt-out list changed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ContentDigest([u8; 32]);

impl ContentDigest {
    fn of(path: &Path) -> Result<ContentDigest, OptOutError> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let failed = |source| OptOutError::Read(ReadError::Open { path: PathBuf::from(path), source });
        let mut file = std::fs::File::open(path).map_err(failed)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(ContentDigest(hasher.finalize().into()))
    }
}
