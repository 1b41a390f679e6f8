//! `idmatch synth`.

use std::path::PathBuf;

use clap::Args;

use super::CliResult;
use idmatch::synth::{SynthOptions, generate, measurement_files};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Rows in each file.
    #[arg(long)]
    pub rows: usize,
    /// Share of the partner's rows that are also members (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f64,
    /// Directory for members.csv, partner.csv and truth.csv (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Random seed; the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// One valid email per row and no phone: exactly --rows distinct identifiers per file, for benchmarks.
    #[arg(long)]
    pub distinct: bool,
    /// Also write exposures.csv (partner rows with a test/control `arm`) and outcomes.csv (converting members with a `value`) for `idmatch measure`; the other files are unchanged.
    #[arg(long)]
    pub measure: bool,
}

pub fn run(args: SynthArgs) -> CliResult {
    let options = &SynthOptions { rows: args.rows, overlap: args.overlap, seed: args.seed, distinct: args.distinct };
    let summary = generate(&args.out_dir, options)?;
    println!(
        "wrote {dir}/members.csv ({m} rows), {dir}/partner.csv ({p} rows), {dir}/truth.csv ({t} matching pairs; {s} people in both files)",
        dir = args.out_dir.display(),
        m = summary.members,
        p = summary.partners,
        t = summary.truth_pairs,
        s = summary.shared_people,
    );
    if args.measure {
        let m = measurement_files(&args.out_dir, args.seed)?;
        println!(
            "wrote {dir}/exposures.csv ({e} rows with an arm), {dir}/outcomes.csv ({o} converting members with a value)",
            dir = args.out_dir.display(),
            e = m.exposures,
            o = m.outcomes,
        );
    }
    Ok(())
}
