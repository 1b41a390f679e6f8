//! `idmatch measure` on two local files: reads the owner's outcomes and the
//! partner's exposures, applies opt-outs and suppressions, runs both roles over the
//! in-memory transport and writes `measurement.json`.
//!
//! `measurement.json` appears whole or not at all (written to a temporary file in
//! the output directory, then renamed). It holds aggregate figures only: no record,
//! id or identifier of either side.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::message::MAX_BUNDLE;
use super::owner::OwnerConfig;
use super::partner::PartnerConfig;
use super::people::People;
use super::stats::{GroupFigures, Lift, Noise};
use super::{Exposure, Learner, MeasureError, Measurement, Owner, Partner, Person, run_in_memory};
use crate::key::{Key, KeyError};
use crate::normalize::Normalizer;
use crate::optout::{BadRows, FileList, OptOutError, OptOutSource, open_store};
use crate::output::OutDir;
use crate::prepare;
use crate::progress::Progress;
use crate::records::{
    ColumnSpec, MAX_VALUE, ReadError, ReadOptions, ReadStats, RecordSet, RejectWriteError, RejectWriter,
};
use crate::token::Tokenizer;

/// The label of the one group used when the exposures have no group column.
pub const DEFAULT_GROUP: &str = "all";

/// Everything a local measurement needs.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// The owner's outcome file (CSV/TSV with a header).
    pub owner: PathBuf,
    /// The partner's exposure file (CSV/TSV with a header).
    pub partner: PathBuf,
    /// The campaign key file both sides tokenize under.
    pub key_file: PathBuf,
    /// The owner's value column (non-negative integers up to 2^32).
    pub value_column: String,
    /// The partner's group column; `None`: one group, `all`.
    pub group_column: Option<String>,
    /// Normalization profile for both files and the lists.
    pub normalizer: Normalizer,
    /// Id and identifier columns of both files (unset ones are detected).
    pub columns: ColumnSpec,
    /// The owner's opt-out list: opted-out people are never sent.
    pub optouts: Option<PathBuf>,
    /// The owner's opt-out store and its key file (instead of `optouts`).
    pub optout_store: Option<(PathBuf, PathBuf)>,
    /// The partner's suppression list, applied to the exposures the same way.
    pub suppress: Option<PathBuf>,
    /// What to do with unreadable rows of the lists (default: refuse).
    pub bad_list_rows: BadRows,
    /// Directory for `measurement.json` (created if missing).
    pub out_dir: PathBuf,
    /// Figures over fewer matched people are suppressed.
    pub min_aggregate: u64,
    /// Differential-privacy noise (values are clipped to `clip` first).
    pub noise: Option<Noise>,
    /// Seed of the noise generator; `None`: from the OS.
    pub seed: Option<u64>,
    /// Who receives the released figures.
    pub learner: Learner,
    /// Also write `owner_rejects.csv` and `partner_rejects.csv` (line, column,
    /// reason; no values) to the output directory.
    pub write_rejects: bool,
    /// Where to report reading the two files, if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
}

/// Why a local measurement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureFailure {
    /// The campaign key file could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An input file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The opt-out or suppression list could not be used.
    #[error(transparent)]
    OptOut(#[from] OptOutError),
    /// Both an opt-out list and an opt-out store were given: which one is meant?
    #[error("give either an opt-out list or an opt-out store, not both")]
    TwoOptOutSources,
    /// A reject report could not be written.
    #[error(transparent)]
    Rejects(#[from] RejectWriteError),
    /// The protocol between the two roles failed.
    #[error(transparent)]
    Protocol(#[from] MeasureError),
    /// Epsilon must be a positive finite number, and the clip value positive.
    #[error("--epsilon must be a positive finite number and --clip-value at least 1")]
    BadNoise,
    /// More than 16 distinct groups in the exposures.
    #[error("{0} groups in the exposure file; at most 16 are supported")]
    TooManyGroups(usize),
    /// Creating the output directory or writing `measurement.json` failed.
    #[error("{path}: {source}")]
    Write {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// One side's counts, as written to `measurement.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SideReport {
    /// The input file, as given.
    pub file: String,
    /// How the file was read (flattened).
    #[serde(flatten)]
    pub read: ReadStats,
    /// Records removed by opt-outs (owner) or suppressions (partner).
    pub excluded_records: u64,
    /// Records left after exclusion (the partner's group sizes add up to this).
    pub records_after_exclusion: u64,
    /// Persons: records linked by a shared identifier or record id are one person
    /// (one row per purchase or impression).
    pub people: u64,
    /// Records that joined a person an earlier record started.
    pub records_merged: u64,
    /// Bundles sent: persons with at least one identifier, less those left out below.
    pub bundles_sent: u64,
    /// Partner: persons whose records are in more than one group, left out of all.
    pub people_in_several_groups: u64,
    /// Persons with more than 16 distinct identifiers (a bundle's limit), left out.
    pub people_with_too_many_identifiers: u64,
    /// Owner: persons whose summed value was lowered to the clip value.
    pub clipped_values: u64,
}

/// The whole `measurement.json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MeasurementReport {
    /// Normalization profile.
    pub profile: String,
    /// Who received the released figures.
    pub learner: String,
    /// Figures over fewer matched people are written as `"<N>"`.
    pub min_aggregate: u64,
    /// Total epsilon of the noise, if any.
    pub epsilon: Option<f64>,
    /// The clip value of the noise, if any.
    pub clip_value: Option<u64>,
    /// The owner's counts.
    pub owner: SideReport,
    /// The partner's counts.
    pub partner: SideReport,
    /// Per group, in label order.
    pub groups: Vec<GroupFigures>,
    /// Lift of `test` over `control`.
    pub lift: Option<Lift>,
}

/// Runs the measurement and writes `measurement.json` (and with `write_rejects` the
/// reject reports) into `options.out_dir`. The directory is created, with a private
/// staging directory, before any work, so an unwritable output fails first; the
/// files appear together once complete, and a failed run leaves nothing (not even
/// the directories it created).
pub fn run(options: &MeasureOptions) -> Result<MeasurementReport, MeasureFailure> {
    if let Some(n) = options.noise
        && (!n.epsilon.is_finite() || n.epsilon <= 0.0 || n.clip == 0)
    {
        return Err(MeasureFailure::BadNoise);
    }
    let write_err = |source| MeasureFailure::Write { path: options.out_dir.clone(), source };
    let out = OutDir::create(&options.out_dir).map_err(write_err)?;
    match measure_into(options, out.staging()) {
        Ok(report) => {
            let mut names = vec!["measurement.json"];
            if options.write_rejects {
                names.splice(0..0, ["owner_rejects.csv", "partner_rejects.csv"]);
            }
            out.commit(&names).map_err(write_err)?;
            Ok(report)
        }
        Err(e) => {
            out.discard();
            Err(e)
        }
    }
}

/// The measurement itself, writing every output into `out_dir` (the staging
/// directory).
fn measure_into(options: &MeasureOptions, out_dir: &Path) -> Result<MeasurementReport, MeasureFailure> {
    let key = Key::load(&options.key_file)?;
    let tokenizer = Tokenizer::new(&key);
    let list = |path: &Option<PathBuf>| {
        path.as_ref()
            .map(|p| FileList::read(p, options.normalizer.clone(), ColumnSpec::default(), None, options.bad_list_rows))
            .transpose()
    };
    let optouts: Option<Box<dyn OptOutSource>> = match (&options.optout_store, &options.optouts) {
        (Some(_), Some(_)) => return Err(MeasureFailure::TwoOptOutSources),
        (Some((db, key_file)), None) => Some(open_store(db, key_file, options.normalizer.profile())?.0),
        (None, _) => list(&options.optouts)?.map(|l| Box::new(l) as Box<dyn OptOutSource>),
    };
    let suppress = list(&options.suppress)?;
    let read = |path: &Path, filter: Option<&dyn OptOutSource>, value: bool| -> Result<RecordSet, MeasureFailure> {
        let mut read = ReadOptions::new(options.normalizer.clone());
        // One row per purchase or impression: repeated ids are one person's rows.
        read.unique_ids = false;
        read.columns = options.columns.clone();
        read.progress = options.progress.clone();
        if options.write_rejects {
            let name = if value { "owner_rejects.csv" } else { "partner_rejects.csv" };
            read.rejects = Some(RejectWriter::create(&out_dir.join(name), false)?);
        }
        if value {
            read.value_column = Some(options.value_column.clone());
        } else {
            read.group_column = options.group_column.clone();
        }
        Ok(prepare::read(path, &tokenizer, read, filter.map(OptOutSource::digester))?)
    };
    let suppress = suppress.as_ref().map(|l| l as &dyn OptOutSource);
    let owner_records = read(&options.owner, optouts.as_deref(), true)?;
    let partner_records = read(&options.partner, suppress, false)?;
    let owner_excluded = prepare::excluded(&owner_records, optouts.as_deref())?;
    let partner_excluded = prepare::excluded(&partner_records, suppress)?;

    let clip = options.noise.map(|n| n.clip);
    let (people, mut owner_report) = owner_people(&owner_records, &owner_excluded, clip);
    owner_report.file = options.owner.display().to_string();
    let (labels, group_records, exposures, mut partner_report) =
        partner_exposures(&partner_records, &partner_excluded)?;
    partner_report.file = options.partner.display().to_string();

    let owner_config = OwnerConfig {
        min_aggregate: options.min_aggregate,
        // Both files are this operator's: no group can be crafted against it.
        min_group_size: 1,
        learner: options.learner,
        noise: options.noise,
        seed: options.seed,
    };
    let partner_config = PartnerConfig {
        min_aggregate: options.min_aggregate,
        learner: options.learner,
        epsilon: options.noise.map(|n| n.epsilon),
        // Its own stream, so that its count noise is independent of the owner's.
        seed: options.seed.map(|s| s ^ 0x9e37_79b9_7f4a_7c15),
    };
    let mut owner = Owner::new(owner_config, &people)?;
    let mut partner = Partner::new(partner_config, labels, group_records, &exposures)?;
    run_in_memory(&mut owner, &mut partner)?;
    // The figures of the side that decrypted: the partner's alone with learner `partner`.
    let decrypted = if options.learner == Learner::Partner { partner.measurement() } else { owner.result() };
    let Measurement { groups, lift } = decrypted.cloned().ok_or(MeasureError::Stalled)?;
    let report = MeasurementReport {
        profile: options.normalizer.profile().name().to_owned(),
        learner: options.learner.name().to_owned(),
        min_aggregate: options.min_aggregate,
        epsilon: options.noise.map(|n| n.epsilon),
        clip_value: clip,
        owner: owner_report,
        partner: partner_report,
        groups,
        lift,
    };
    write_json(out_dir, "measurement.json", &report)?;
    Ok(report)
}

/// Writes `value` as pretty JSON to `out_dir/name` (the directory created if
/// missing) whole or not at all: a private temporary file (mode 0600) in the same
/// directory, synced, then renamed.
pub fn write_json(out_dir: &Path, name: &str, value: &impl Serialize) -> Result<(), MeasureFailure> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| MeasureFailure::Write { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(err(out_dir))?;
    let path = out_dir.join(name);
    let mut file = tempfile::Builder::new().prefix(".measurement-").tempfile_in(out_dir).map_err(err(out_dir))?;
    serde_json::to_writer_pretty(&mut file, value).map_err(|e| err(&path)(e.into()))?;
    file.write_all(b"\n").map_err(err(&path))?;
    file.as_file().sync_all().map_err(err(&path))?;
    file.persist(&path).map_err(|e| err(&path)(e.error))?;
    Ok(())
}

/// The owner's people: records linked by a shared identifier or id are one person
/// ([`People`]), whose value is the sum of its records' values (one row per purchase
/// counts every purchase), clipped to `clip` when given and to
/// [`MAX_VALUE`](crate::records::MAX_VALUE) in any case. A person with more
/// identifiers than a bundle holds is left out and counted.
pub(crate) fn owner_people(records: &RecordSet, excluded: &[bool], clip: Option<u64>) -> (Vec<Person>, SideReport) {
    let people = People::of(records, excluded);
    let mut report = side_report(records, excluded, &people);
    let mut sent = Vec::with_capacity(people.len());
    for (members, tokens) in people.records.iter().zip(people.tokens) {
        if tokens.is_empty() {
            continue;
        }
        if tokens.len() > usize::from(MAX_BUNDLE) {
            report.people_with_too_many_identifiers += 1;
            continue;
        }
        let total = members.iter().fold(0u64, |sum, &r| sum.saturating_add(records.value(r).unwrap_or(0)));
        let limit = clip.unwrap_or(MAX_VALUE).min(MAX_VALUE);
        if total > limit {
            report.clipped_values += 1;
        }
        sent.push(Person { tokens, value: total.min(limit) });
    }
    report.bundles_sent = sent.len() as u64;
    (sent, report)
}

fn side_report(records: &RecordSet, excluded: &[bool], people: &People) -> SideReport {
    let excluded_records = excluded.iter().filter(|&&x| x).count() as u64;
    SideReport {
        file: String::new(),
        read: records.stats().clone(),
        excluded_records,
        records_after_exclusion: records.len() as u64 - excluded_records,
        people: people.len() as u64,
        records_merged: people.records_merged,
        bundles_sent: 0,
        people_in_several_groups: 0,
        people_with_too_many_identifiers: 0,
        clipped_values: 0,
    }
}

pub(crate) type PartnerSide = (Vec<String>, Vec<u64>, Vec<Exposure>, SideReport);

/// The partner's groups (sorted labels), people per group, and exposures: one
/// exposure per person ([`People`]: records linked by a shared identifier or id),
/// in the group of its records. A person whose records are in different groups
/// (seen in both test and control) is left out of every group and counted: it would
/// otherwise bias the comparison. So are persons with more identifiers than a
/// bundle holds. Group sizes count the persons left in, with or without
/// identifiers, so sizes and matched counts are of the same unit.
pub(crate) fn partner_exposures(records: &RecordSet, excluded: &[bool]) -> Result<PartnerSide, MeasureFailure> {
    let label_of = |r: u32| records.group(r).unwrap_or(DEFAULT_GROUP);
    let mut labels: Vec<String> = (0..records.len() as u32)
        .filter(|&r| !excluded.get(r as usize).copied().unwrap_or(false))
        .map(|r| label_of(r).to_owned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    labels.sort();
    if labels.is_empty() {
        labels.push(DEFAULT_GROUP.to_owned());
    }
    if labels.len() > super::message::MAX_GROUPS {
        return Err(MeasureFailure::TooManyGroups(labels.len()));
    }
    let people = People::of(records, excluded);
    let mut report = side_report(records, excluded, &people);
    let mut group_people = vec![0u64; labels.len()];
    let mut exposures = Vec::new();
    for (members, tokens) in people.records.iter().zip(people.tokens) {
        let label = label_of(members[0]);
        if members.iter().any(|&r| label_of(r) != label) {
            report.people_in_several_groups += 1;
            continue;
        }
        if tokens.len() > usize::from(MAX_BUNDLE) {
            report.people_with_too_many_identifiers += 1;
            continue;
        }
        let group = labels.iter().position(|l| l == label).unwrap_or(0);
        group_people[group] += 1;
        if !tokens.is_empty() {
            exposures.push(Exposure { tokens, group: group as u8 });
        }
    }
    report.bundles_sent = exposures.len() as u64;
    Ok((labels, group_people, exposures, report))
}

/// The readable table printed by `idmatch measure`.
pub fn format_table(report: &MeasurementReport) -> String {
    let mut s = format!(
        "{:<12} {:>12} {:>16} {:>16} {:>16} {:>10}\n",
        "group", "size", "matched_records", "matched_people", "sum", "rate"
    );
    for g in &report.groups {
        let rate =
            g.conversion_rate.map_or_else(|| format!("<{}", report.min_aggregate), |r| format!("{:.4}%", r * 100.0));
        s += &format!(
            "{:<12} {:>12} {:>16} {:>16} {:>16} {:>10}\n",
            g.group,
            g.group_size,
            g.matched_exposure_records.to_string(),
            g.matched_outcome_people.to_string(),
            g.sum.to_string(),
            rate
        );
    }
    match &report.lift {
        Some(l) => {
            s += &format!(
                "lift (test vs control): absolute {:+.4} pp, relative {}, 95% CI [{:+.4}, {:+.4}] pp ({})\n",
                l.absolute * 100.0,
                l.relative.map_or_else(|| "n/a".to_owned(), |r| format!("{:+.2}%", r * 100.0)),
                l.ci95[0] * 100.0,
                l.ci95[1] * 100.0,
                l.method
            );
        }
        None if report.groups.iter().any(|g| g.group == "test") => {
            s += &format!("lift: suppressed (test or control under {} matched people)\n", report.min_aggregate);
        }
        None => {}
    }
    if let Some(e) = report.epsilon {
        s += &format!(
            "noise: discrete Laplace, epsilon {e} (ε/3 per figure), values clipped at {}\n",
            report.clip_value.unwrap_or(0)
        );
    }
    s
}
