//! `idmatch measure`: campaign lift by private intersection-sum, both roles on two
//! local files.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, ProfileArgs, format_stats};
use idmatch::measure::Learner;
use idmatch::measure::local::{self, MeasureOptions};
use idmatch::measure::stats::{DEFAULT_MIN_AGGREGATE, Noise};
use idmatch::optout::BadRows;

#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// The owner's outcome file (CSV/TSV with a header and a value column).
    #[arg(long, value_name = "FILE")]
    pub owner: PathBuf,
    /// The partner's exposure file (CSV/TSV with a header, optionally a group column).
    #[arg(long, value_name = "FILE")]
    pub partner: PathBuf,
    /// The owner's value column: a non-negative integer up to 2^32 per record (conversions, revenue in cents).
    #[arg(long, value_name = "NAME", default_value = "value")]
    pub value_col: String,
    /// The partner's group column (e.g. test/control); without it every exposure is in group `all`.
    #[arg(long, value_name = "NAME")]
    pub group_col: Option<String>,
    /// The campaign key file shared by both parties (see `idmatch keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// The owner's opt-out list: opted-out people are never sent.
    #[arg(long, value_name = "FILE")]
    pub optouts: Option<PathBuf>,
    /// The partner's suppression list, applied to the exposures.
    #[arg(long, value_name = "FILE")]
    pub suppress: Option<PathBuf>,
    /// Skip (and count) unreadable rows of the opt-out and suppression lists instead of refusing.
    #[arg(long)]
    pub skip_bad_list_rows: bool,
    /// Directory for measurement.json (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Also write owner_rejects.csv and partner_rejects.csv (line, column, reason) to the output directory.
    #[arg(long)]
    pub write_rejects: bool,
    /// Figures over fewer matched people are suppressed (written "<N>").
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_AGGREGATE)]
    pub min_aggregate: u64,
    /// Add discrete Laplace noise with this total epsilon to the released counts and sums.
    #[arg(long, value_name = "E", requires = "clip_value")]
    pub epsilon: Option<f64>,
    /// Clip every value at this before encryption (bounds the sum's sensitivity); required with --epsilon.
    #[arg(long, value_name = "MAX", requires = "epsilon")]
    pub clip_value: Option<u64>,
    /// Seed of the noise (reproducible runs; never use a fixed seed for a real release).
    #[arg(long, value_name = "S", requires = "epsilon")]
    pub seed: Option<u64>,
    /// Who receives the released figures: owner, partner or both.
    #[arg(long, default_value = "owner", value_parser = parse_learner)]
    pub learner: Learner,
}

fn parse_learner(s: &str) -> Result<Learner, String> {
    s.parse()
}

pub fn run(args: MeasureArgs) -> CliResult {
    let options = MeasureOptions {
        owner: args.owner,
        partner: args.partner,
        key_file: args.key_file,
        value_column: args.value_col,
        group_column: args.group_col,
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        optouts: args.optouts,
        suppress: args.suppress,
        bad_list_rows: BadRows::skip_if(args.skip_bad_list_rows),
        out_dir: args.out_dir.clone(),
        min_aggregate: args.min_aggregate,
        noise: args.epsilon.zip(args.clip_value).map(|(epsilon, clip)| Noise { epsilon, clip }),
        seed: args.seed,
        learner: args.learner,
        write_rejects: args.write_rejects,
        progress: true,
    };
    let report = local::run(&options)?;
    for (name, side) in [("owner", &report.owner), ("partner", &report.partner)] {
        print!("{name}: {}", format_stats(std::path::Path::new(&side.file), &side.read));
        println!(
            "  excluded records: {}; bundles sent: {}; identifiers shared with an earlier record (dropped): {}",
            side.excluded_records, side.bundles_sent, side.shared_identifiers_dropped
        );
    }
    print!("{}", local::format_table(&report));
    println!("wrote {}", args.out_dir.join("measurement.json").display());
    Ok(())
}
