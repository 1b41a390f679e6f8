//! `idmatch measure` on two local files: reads the owner's outcomes and the
//! partner's exposures, applies opt-outs and suppressions, runs both roles over the
//! in-memory transport and writes `measurement.json`.
//!
//! `measurement.json` appears whole or not at all (written to a temporary file in
//! the output directory, then renamed). It holds aggregate figures only: no record,
//! id or identifier of either side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::owner::OwnerConfig;
use super::partner::PartnerConfig;
use super::side::{OwnerSide, PartnerSide, SideReport, TooManyGroups, owner_people, partner_exposures};
use super::stats::Noise;
use super::{Learner, MeasureError, Measurement, Owner, Partner, run_in_memory};
use crate::key::{Key, KeyError};
use crate::normalize::Normalizer;
use crate::optout::BadRows;
use crate::output::{OutDir, write_json};
use crate::prepare::{self, Filter, PrepareError, Prepared};
use crate::progress::Progress;
use crate::records::{ColumnSpec, Mode, ReadOptions, RejectWriteError, RejectWriter};
use crate::token::Tokenizer;

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
    /// An input file, the opt-out list or store, or the suppression list could not
    /// be read or used.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// Both an opt-out list and an opt-out store were given: which one is meant?
    #[error("give either an opt-out list or an opt-out store, not both")]
    TwoOptOutSources,
    /// A reject report could not be written.
    #[error(transparent)]
    Rejects(#[from] RejectWriteError),
    /// The protocol between the two roles failed.
    #[error(transparent)]
    Protocol(#[from] MeasureError),
    /// Epsilon must be within the sampler's range, and the clip value positive.
    #[error("--epsilon must be a number from 2^-16 (about 0.0000153) to 2^16 (65536) and --clip-value at least 1")]
    BadNoise,
    /// More than 16 distinct groups in the exposures.
    #[error(transparent)]
    TooManyGroups(#[from] TooManyGroups),
    /// Creating the output directory or writing `measurement.json` failed.
    #[error("{path}: {source}")]
    Write {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
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
    /// The seed the noise was drawn from when `--seed` fixed it (tests only: such
    /// figures are predictable and must never be released); `null` when the noise
    /// came from the operating system's generator.
    pub noise_seed: Option<u64>,
    /// The owner's counts.
    pub owner: SideReport,
    /// The partner's counts.
    pub partner: SideReport,
    /// The released figures (`groups` in label order, and `lift`).
    #[serde(flatten)]
    pub figures: Measurement,
}

/// Runs the measurement and writes `measurement.json` (and with `write_rejects` the
/// reject reports) into `options.out_dir`. The directory is created, with a private
/// staging directory, before any work, so an unwritable output fails first; the
/// files appear together once complete, and a failed run leaves nothing (not even
/// the directories it created).
pub fn run(options: &MeasureOptions) -> Result<MeasurementReport, MeasureFailure> {
    if let Some(n) = options.noise
        && (n.clip == 0 || n.check().is_err())
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
    let (normalizer, bad_rows) = (&options.normalizer, options.bad_list_rows);
    let optouts = match (&options.optout_store, &options.optouts) {
        (Some(_), Some(_)) => return Err(MeasureFailure::TwoOptOutSources),
        (Some((db, key_file)), None) => Filter::store(db, key_file, normalizer.profile())?,
        (None, list) => Filter::list_or_none(list.as_deref(), normalizer, bad_rows)?,
    };
    let suppress = Filter::list_or_none(options.suppress.as_deref(), normalizer, bad_rows)?;
    // One row per purchase or impression: repeated ids are one person's rows.
    let read = |path: &Path, mode: Mode, rejects: &str, filter: &Filter| -> Result<Prepared, MeasureFailure> {
        let mut read = ReadOptions::new(normalizer.clone(), mode);
        read.columns = options.columns.clone();
        read.progress = options.progress.clone();
        if options.write_rejects {
            read.rejects = Some(RejectWriter::create(&out_dir.join(rejects), false)?);
        }
        Ok(prepare::prepare(path, &tokenizer, read, filter)?)
    };
    let value_column = options.value_column.clone();
    let owner = read(&options.owner, Mode::Outcomes { value_column }, "owner_rejects.csv", &optouts)?;
    let group_column = options.group_column.clone();
    let partner = read(&options.partner, Mode::Exposures { group_column }, "partner_rejects.csv", &suppress)?;

    let clip = options.noise.map(|n| n.clip);
    let OwnerSide { people, report: mut owner_report } = owner_people(owner.records(), owner.excluded(), clip);
    owner_report.file = options.owner.display().to_string();
    let PartnerSide { labels, group_people, exposures, report: mut partner_report } =
        partner_exposures(partner.records(), partner.excluded())?;
    partner_report.file = options.partner.display().to_string();

    let owner_config = OwnerConfig {
        min_aggregate: options.min_aggregate,
        // Both files are this operator's: no group can be crafted against it.
        min_group_size: 1,
        learner: options.learner,
        noise: options.noise,
        seed: options.seed,
        // One operator's two files: nobody to prove the values to.
        prove: false,
    };
    let partner_config = PartnerConfig {
        min_aggregate: options.min_aggregate,
        learner: options.learner,
        noise: options.noise,
        // Its own stream, so that its count noise is independent of the owner's.
        seed: options.seed.map(|s| s ^ 0x9e37_79b9_7f4a_7c15),
        require_proofs: false,
    };
    let mut owner = Owner::new(owner_config, &people)?;
    let mut partner = Partner::new(partner_config, labels, group_people, &exposures)?;
    run_in_memory(&mut owner, &mut partner)?;
    // The figures of the side that decrypted: the partner's alone with learner `partner`.
    let decrypted = if options.learner == Learner::Partner { partner.release() } else { owner.result() };
    let figures = decrypted.cloned().ok_or(MeasureError::Stalled)?;
    let report = MeasurementReport {
        profile: options.normalizer.profile().name().to_owned(),
        learner: options.learner.name().to_owned(),
        min_aggregate: options.min_aggregate,
        epsilon: options.noise.map(|n| n.epsilon),
        clip_value: clip,
        noise_seed: options.noise.and(options.seed),
        owner: owner_report,
        partner: partner_report,
        figures,
    };
    write_json(out_dir, "measurement.json", &report)
        .map_err(|e| MeasureFailure::Write { path: e.path, source: e.source })?;
    Ok(report)
}
