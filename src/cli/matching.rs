//! `idmatch match`: two local files, both roles in one process.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, ProfileArgs};
use crate::local_match::{self, LocalMatchOptions};
use crate::psi::Reveal;

#[derive(Debug, Args)]
pub struct MatchArgs {
    /// The owner's member file (CSV/TSV with a header).
    #[arg(long, value_name = "FILE")]
    pub owner: PathBuf,
    /// The partner's file (CSV/TSV with a header).
    #[arg(long, value_name = "FILE")]
    pub partner: PathBuf,
    /// The campaign key file shared by both parties (see `idmatch keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Who learns what: partner, owner, both, or count (the partner learns only the size).
    #[arg(long, default_value = "both", value_parser = parse_reveal)]
    pub reveal: Reveal,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// The owner's opt-out list (CSV with email, phone and/or id columns): opted-out members are never matched.
    #[arg(long, value_name = "FILE")]
    pub optouts: Option<PathBuf>,
    /// The partner's suppression list (same format), applied the same way on the partner's side.
    #[arg(long, value_name = "FILE")]
    pub suppress: Option<PathBuf>,
    /// Directory for partner_matches.csv, owner_matches.csv and summary.json (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Also write owner_rejects.csv and partner_rejects.csv (line, column, reason) to the output directory.
    #[arg(long)]
    pub write_rejects: bool,
}

fn parse_reveal(s: &str) -> Result<Reveal, String> {
    s.parse()
}

pub fn run(args: MatchArgs) -> CliResult {
    let options = LocalMatchOptions {
        owner: args.owner,
        partner: args.partner,
        key_file: args.key_file,
        reveal: args.reveal,
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        optouts: args.optouts,
        suppress: args.suppress,
        out_dir: args.out_dir.clone(),
        write_rejects: args.write_rejects,
        progress: true,
    };
    let summary = local_match::run(&options)?;
    let side = |name: &str, s: &local_match::SideSummary| {
        format!(
            "{name}: {} rows, {} identifiers ({} rejected), {} records excluded, {} distinct tokens blinded, matched records: {}",
            s.read.rows,
            s.read.identifiers_total(),
            s.read.rejected_total(),
            s.excluded_records,
            s.blinded,
            s.matched_records.map_or("not revealed".to_owned(), |m| m.to_string()),
        )
    };
    println!("{}", side("owner", &summary.owner));
    println!("{}", side("partner", &summary.partner));
    println!(
        "intersection: {} distinct identifiers; wrote {} to {}",
        summary.intersection.map_or("not revealed".to_owned(), |n| n.to_string()),
        summary.outputs.join(", "),
        args.out_dir.display()
    );
    Ok(())
}
