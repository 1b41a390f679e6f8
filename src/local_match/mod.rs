//! `idmatch match` on two local files: reads both, applies opt-outs and
//! suppressions, runs owner and partner over the in-memory transport, and writes the
//! match files and `summary.json`.
//!
//! Outputs appear together or not at all: they are written into a private staging
//! directory inside the output directory and renamed into place only when the whole
//! run has succeeded (summary last), so a failed run leaves the previous run's
//! outputs untouched and no partial file beside them.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::key::{Key, KeyError};
use crate::normalize::Normalizer;
use crate::optout::BadRows;
use crate::output::{OutDir, write_match_file};
use crate::prepare::{self, Filter, PrepareError, Prepared};
use crate::progress::Progress;
use crate::psi::oprf::{self, OprfMatchError};
use crate::psi::{
    LocalMatchError, Owner, OwnerConfig, Partner, PartnerConfig, PreparedSet, Protocol, ProtocolChoice,
    ProtocolChoiceError, Reveal, SetupError, run_in_memory,
};
use crate::records::{ColumnSpec, Mode, ReadOptions, ReadStats, RecordSet, RejectWriteError, RejectWriter};
use crate::token::Tokenizer;

pub mod memory;
pub mod sharded;

/// Everything a local match needs.
#[derive(Clone, Debug)]
pub struct LocalMatchOptions {
    /// The owner's member file (CSV/TSV with a header).
    pub owner: PathBuf,
    /// The partner's file (CSV/TSV with a header).
    pub partner: PathBuf,
    /// The campaign key file (see [`Key::load`]); both sides tokenize under it.
    pub key_file: PathBuf,
    /// Who learns which records match.
    pub reveal: Reveal,
    /// The matching engine: `auto` runs `oprf` for every reveal mode but `count`,
    /// which only `ecdh` offers.
    pub protocol: ProtocolChoice,
    /// Normalization profile applied to both files and to the opt-out/suppression lists.
    pub normalizer: Normalizer,
    /// Column names in the owner's and partner's files (unset ones are detected from the header).
    pub columns: ColumnSpec,
    /// The owner's opt-out list file; its members are removed before blinding.
    pub optouts: Option<PathBuf>,
    /// The owner's opt-out store and its key file (instead of `optouts`).
    pub optout_store: Option<(PathBuf, PathBuf)>,
    /// The partner's suppression list file, applied to the partner's side like opt-outs.
    pub suppress: Option<PathBuf>,
    /// What to do with unreadable rows of the opt-out and suppression files
    /// (default: refuse the match).
    pub bad_list_rows: BadRows,
    /// Directory for the outputs; created if missing (and removed again if the run fails).
    pub out_dir: PathBuf,
    /// Write `owner_rejects.csv` and `partner_rejects.csv` (without values).
    pub write_rejects: bool,
    /// Where to report reading the two files, if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
}

/// Why a local match failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalMatchFailure {
    /// The campaign key file could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The owner's or the partner's file, the opt-out list, the opt-out store or the
    /// suppression list could not be read or used.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// A reject report could not be created or written.
    #[error(transparent)]
    Rejects(#[from] RejectWriteError),
    /// The in-memory protocol run between owner and partner failed.
    #[error(transparent)]
    Protocol(#[from] LocalMatchError),
    /// The owner or partner state machine refused its configuration or set.
    #[error("{0}")]
    Setup(#[from] SetupError),
    /// The protocol asked for cannot run this match (`oprf` with `count`).
    #[error(transparent)]
    ProtocolChoice(#[from] ProtocolChoiceError),
    /// The OPRF engine failed.
    #[error(transparent)]
    Oprf(#[from] OprfMatchError),
    /// Both an opt-out list and an opt-out store were given: which one protects the
    /// members would be a guess.
    #[error("give the owner's opt-outs as a list or as a store, not both")]
    TwoOptOutSources,
    /// Creating the output directory or writing, renaming or removing an output failed.
    #[error("{path}: {source}")]
    Write {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A shard file of a sharded match (`--shards`) could not be written or read back.
    #[error(transparent)]
    Shard(#[from] crate::shard::ShardFileError),
    /// More shards asked for than a sharded match splits into.
    #[error("{shards} shards asked for; at most {max}", max = crate::shard::MAX_SHARDS)]
    TooManyShards {
        /// `N` as asked.
        shards: u32,
    },
}

/// One side's counts, as written to `summary.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SideSummary {
    /// The side's input file, as given.
    pub file: String,
    /// How the input file was read (flattened into this object in JSON).
    #[serde(flatten)]
    pub read: ReadStats,
    /// Records removed by opt-outs (owner) or suppressions (partner) before blinding.
    pub excluded_records: u64,
    /// Identifiers of the remaining records.
    pub identifiers_after_exclusion: u64,
    /// Identifiers removed as duplicates before blinding.
    pub deduplicated: u64,
    /// Distinct tokens that entered the protocol (blinded and sent under `ecdh`,
    /// evaluated under `oprf`).
    pub blinded: u64,
    /// Records that matched, where this side learns it.
    pub matched_records: Option<u64>,
}

/// The whole `summary.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MatchSummary {
    /// Name of the normalization profile used.
    pub profile: String,
    /// Name of the reveal mode (`partner`, `owner`, `both` or `count`).
    pub reveal: String,
    /// The matching engine that ran (`ecdh` or `oprf`).
    pub protocol: String,
    /// The owner's counts.
    pub owner: SideSummary,
    /// The partner's counts.
    pub partner: SideSummary,
    /// Distinct matching tokens, where either side learns it.
    pub intersection: Option<u64>,
    /// How the opt-out file (`--optouts`) was read: its rows, identifiers and rejects.
    pub optout_list: Option<ReadStats>,
    /// The opt-out store (`--optout-db`) the match consulted, when one did.
    pub optout_store: Option<StoreSummary>,
    /// How the partner's suppression file was read.
    pub suppression_list: Option<ReadStats>,
    /// Files written, relative to the output directory.
    pub outputs: Vec<String>,
}

pub use crate::prepare::StoreSummary;

/// Every file a local match may write, relative to the output directory.
const OUTPUTS: [&str; 5] =
    ["partner_matches.csv", "owner_matches.csv", "owner_rejects.csv", "partner_rejects.csv", "summary.json"];

/// Runs the match and writes its outputs into `options.out_dir`: all of them on
/// success (removing older ones this run does not produce), none on failure.
pub fn run(options: &LocalMatchOptions) -> Result<MatchSummary, LocalMatchFailure> {
    run_staged(options, |key, staging| run_into(options, key, staging))
}

/// Loads the key and runs `into` (which writes every output into the staging
/// directory it is given and lists them in its summary), then moves the outputs into
/// place: all of them on success, none on failure. The one frame of the unsharded
/// and the sharded ([`sharded`]) match.
pub(crate) fn run_staged(
    options: &LocalMatchOptions,
    into: impl FnOnce(&Key, &Path) -> Result<MatchSummary, LocalMatchFailure>,
) -> Result<MatchSummary, LocalMatchFailure> {
    if options.optouts.is_some() && options.optout_store.is_some() {
        return Err(LocalMatchFailure::TwoOptOutSources);
    }
    let key = Key::load(&options.key_file)?;
    let out_dir = &options.out_dir;
    let write_err = |source| LocalMatchFailure::Write { path: out_dir.clone(), source };
    let staged = OutDir::create(out_dir).map_err(write_err)?;
    let summary = match into(&key, staged.staging()) {
        Ok(summary) => summary,
        Err(e) => {
            staged.discard();
            return Err(e);
        }
    };
    for stale in OUTPUTS.iter().filter(|name| !summary.outputs.iter().any(|o| o == *name)) {
        match std::fs::remove_file(out_dir.join(stale)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LocalMatchFailure::Write { path: out_dir.join(stale), source: e });
            }
            _ => {}
        }
    }
    // `summary.json` is the last output listed: it appears after the files it describes.
    let names: Vec<&str> = summary.outputs.iter().map(String::as_str).collect();
    staged.commit(&names).map_err(write_err)?;
    Ok(summary)
}

/// The match itself, writing every output into `out_dir` (the staging directory).
fn run_into(options: &LocalMatchOptions, key: &Key, out_dir: &Path) -> Result<MatchSummary, LocalMatchFailure> {
    let tokenizer = Tokenizer::new(key);

    let filters = Filters::load(options)?;
    let Filters { optouts, suppress } = &filters;
    let RejectReports { owner: owner_rejects, partner: partner_rejects, names: mut outputs } =
        RejectReports::create(options, out_dir)?;
    // The two sides are prepared at once: each reader's parsing thread is its own
    // bottleneck, and the rayon workers that normalize and tokenize are shared.
    let (owner, partner) = std::thread::scope(|scope| {
        let partner = scope.spawn(|| prepare_side(&options.partner, &tokenizer, options, partner_rejects, suppress));
        let owner = prepare_side(&options.owner, &tokenizer, options, owner_rejects, optouts);
        // A panic there is a bug, not bad input: it goes on as a panic.
        (owner, partner.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (owner, partner) = (owner?, partner?);
    let (owner_set, partner_set) = rayon::join(|| owner.set(), || partner.set());
    let (owner_records, partner_records) = (owner.records(), partner.records());

    let protocol = options.protocol.resolve(options.reveal, &Protocol::ALL)?;
    let outcome = engine(protocol, key, options, &owner_set, &partner_set)?;

    let mut write_matches = |name: &str, records: &RecordSet, set: &PreparedSet, matched: &[bool]| {
        let matches = set.matched_records(matched);
        write_match_file(&out_dir.join(name), records, &matches)
            .map_err(|e| LocalMatchFailure::Write { path: e.path, source: e.source })?;
        outputs.push(name.to_owned());
        Ok::<u64, LocalMatchFailure>(matches.len() as u64)
    };
    let partner_matched = match &outcome.partner_matched {
        Some(m) => Some(write_matches("partner_matches.csv", partner_records, &partner_set, m)?),
        None => None,
    };
    let owner_matched = match &outcome.owner_matched {
        Some(m) => Some(write_matches("owner_matches.csv", owner_records, &owner_set, m)?),
        None => None,
    };
    let owner_intersection = outcome.owner_matched.as_ref().map(|m| m.iter().filter(|&&x| x).count() as u64);
    outputs.push("summary.json".to_owned());
    let sides = [
        side_summary(&options.owner, owner_records, &owner_set, outcome.owner_sent, owner_matched),
        side_summary(&options.partner, partner_records, &partner_set, outcome.partner_sent, partner_matched),
    ];
    write_summary(out_dir, options, protocol, sides, outcome.intersection.or(owner_intersection), &filters, outputs)
}

/// The summary of a finished match (sharded or not) from its two sides, written as
/// `summary.json` into `out_dir` (the last of `outputs`).
pub(crate) fn write_summary(
    out_dir: &Path,
    options: &LocalMatchOptions,
    protocol: Protocol,
    [owner, partner]: [SideSummary; 2],
    intersection: Option<u64>,
    filters: &Filters,
    outputs: Vec<String>,
) -> Result<MatchSummary, LocalMatchFailure> {
    let summary = MatchSummary {
        profile: options.normalizer.profile().name().to_owned(),
        reveal: options.reveal.name().to_owned(),
        protocol: protocol.name().to_owned(),
        owner,
        partner,
        intersection,
        optout_list: filters.optouts.list_stats().cloned(),
        optout_store: StoreSummary::of(&filters.optouts),
        suppression_list: filters.suppress.list_stats().cloned(),
        outputs,
    };
    let path = out_dir.join("summary.json");
    let write_err = |source| LocalMatchFailure::Write { path: path.clone(), source };
    let file = File::create(&path).map_err(write_err)?;
    serde_json::to_writer_pretty(BufWriter::new(file), &summary).map_err(|e| write_err(e.into()))?;
    Ok(summary)
}

/// The owner's opt-outs (a list or the store) and the partner's suppressions, as a
/// local match's options name them (both sharded and not).
pub(crate) struct Filters {
    pub(crate) optouts: Filter,
    pub(crate) suppress: Filter,
}

impl Filters {
    pub(crate) fn load(options: &LocalMatchOptions) -> Result<Filters, PrepareError> {
        let (normalizer, bad_rows) = (&options.normalizer, options.bad_list_rows);
        let optouts = match &options.optout_store {
            Some((db, key_file)) => Filter::store(db, key_file, normalizer.profile())?,
            None => Filter::list_or_none(options.optouts.as_deref(), normalizer, bad_rows)?,
        };
        let suppress = Filter::list_or_none(options.suppress.as_deref(), normalizer, bad_rows)?;
        Ok(Filters { optouts, suppress })
    }
}

/// The reject reports a local match writes into its output directory (none without
/// `write_rejects`), and their names.
pub(crate) struct RejectReports {
    pub(crate) owner: Option<RejectWriter>,
    pub(crate) partner: Option<RejectWriter>,
    pub(crate) names: Vec<String>,
}

impl RejectReports {
    pub(crate) fn create(options: &LocalMatchOptions, out_dir: &Path) -> Result<RejectReports, RejectWriteError> {
        let names = ["owner_rejects.csv", "partner_rejects.csv"];
        let create =
            |name: &str| options.write_rejects.then(|| RejectWriter::create(&out_dir.join(name), false)).transpose();
        let listed = if options.write_rejects { names.map(str::to_owned).to_vec() } else { Vec::new() };
        Ok(RejectReports { owner: create(names[0])?, partner: create(names[1])?, names: listed })
    }
}

/// Reads one side's file and checks it against its `filter` (the opt-out or
/// suppression source).
fn prepare_side(
    path: &Path,
    tokenizer: &Tokenizer,
    options: &LocalMatchOptions,
    rejects: Option<RejectWriter>,
    filter: &Filter,
) -> Result<Prepared, PrepareError> {
    let mut read = ReadOptions::new(options.normalizer.clone(), Mode::Match);
    read.columns = options.columns.clone();
    read.rejects = rejects;
    read.progress = options.progress.clone();
    prepare::prepare(path, tokenizer, read, filter)
}

/// What either engine hands back to the local match.
pub(crate) struct Engined {
    pub(crate) owner_matched: Option<Vec<bool>>,
    pub(crate) partner_matched: Option<Vec<bool>>,
    /// The intersection size, where the partner learns it.
    pub(crate) intersection: Option<u64>,
    /// Distinct tokens of each side that entered the protocol.
    pub(crate) owner_sent: u64,
    pub(crate) partner_sent: u64,
}

/// Runs `protocol` on the two sets, both roles in this process.
pub(crate) fn engine(
    protocol: Protocol,
    key: &Key,
    options: &LocalMatchOptions,
    owner_set: &PreparedSet,
    partner_set: &PreparedSet,
) -> Result<Engined, LocalMatchFailure> {
    Ok(match protocol {
        Protocol::Ecdh => match_ecdh(key, options, owner_set, partner_set)?,
        Protocol::Oprf => {
            let o = oprf::match_local(owner_set, partner_set, options.reveal)?;
            Engined {
                owner_matched: o.owner_matched,
                partner_matched: o.partner_matched,
                intersection: Some(o.intersection).filter(|_| options.reveal != Reveal::Owner),
                owner_sent: owner_set.len() as u64,
                partner_sent: partner_set.len() as u64,
            }
        }
    })
}

/// Both roles of the ECDH engine over the in-memory transport.
fn match_ecdh(
    key: &Key,
    options: &LocalMatchOptions,
    owner_set: &PreparedSet,
    partner_set: &PreparedSet,
) -> Result<Engined, LocalMatchFailure> {
    let profile = options.normalizer.profile();
    let fingerprint = crate::token::KeyFingerprint::of(key);
    let mut owner = Owner::new(OwnerConfig::local("local", profile).with_key_fingerprint(fingerprint), owner_set)?;
    let partner_config = PartnerConfig::new("local", profile, options.reveal).with_key_fingerprint(fingerprint);
    let mut partner = Partner::new(partner_config, partner_set)?;
    run_in_memory(&mut owner, &mut partner, |_| {})?;
    let owner_outcome = owner.outcome().ok_or(LocalMatchError::Stalled)?;
    let partner_outcome = partner.outcome().ok_or(LocalMatchError::Stalled)?;
    Ok(Engined {
        owner_matched: owner_outcome.matched,
        partner_matched: partner_outcome.matched,
        intersection: partner_outcome.intersection,
        owner_sent: owner_outcome.blinded,
        partner_sent: partner_outcome.blinded,
    })
}

fn side_summary(
    path: &Path,
    records: &RecordSet,
    set: &PreparedSet,
    blinded: u64,
    matched: Option<u64>,
) -> SideSummary {
    SideSummary {
        file: path.display().to_string(),
        read: records.stats().clone(),
        excluded_records: set.excluded_records(),
        identifiers_after_exclusion: set.identifiers(),
        deduplicated: set.identifiers() - set.len() as u64,
        blinded,
        matched_records: matched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Profile;

    #[test]
    fn an_optout_list_and_an_optout_store_together_are_refused_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let missing = |name: &str| dir.path().join(name);
        let options = LocalMatchOptions {
            owner: missing("members.csv"),
            partner: missing("partner.csv"),
            key_file: missing("campaign.key"),
            reveal: Reveal::Both,
            protocol: ProtocolChoice::Auto,
            normalizer: Normalizer::new(Profile::IdmatchV1, None),
            columns: ColumnSpec::default(),
            optouts: Some(missing("optouts.csv")),
            optout_store: Some((missing("optouts.db"), missing("store.key"))),
            suppress: None,
            bad_list_rows: BadRows::Refuse,
            out_dir: missing("out"),
            write_rejects: false,
            progress: None,
        };
        assert!(matches!(run(&options), Err(LocalMatchFailure::TwoOptOutSources)));
        assert!(!missing("out").exists());
    }
}
