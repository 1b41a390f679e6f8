//! `idmatch shard`: one input file into `N` shard files of keyed tokens.

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, ProfileArgs, RejectArgs, format_stats};
use idmatch::optout::BadRows;
use idmatch::progress::Bars;
use idmatch::records::RejectWriter;
use idmatch::shard::split::{self, SplitOptions};

#[derive(Debug, Args)]
pub struct ShardArgs {
    /// The campaign key file (see `idmatch keygen`); the shards are keyed by it.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Input CSV or TSV file with a header row.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// How many shards (1 to 4096); both parties must use the same number.
    #[arg(long, value_name = "N", value_parser = super::parse_shards)]
    pub shards: NonZeroU32,
    /// Directory for shard-IIIII-of-NNNNN.idms (created if missing; shard files of an earlier split are replaced).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectArgs,
    /// The owner's opt-out list (CSV with email, phone and/or id columns): opted-out records reach no shard.
    #[arg(long, value_name = "FILE")]
    pub optouts: Option<PathBuf>,
    /// The owner's opt-out store (see `idmatch optout`), instead of --optouts.
    #[arg(long, value_name = "FILE", conflicts_with = "optouts", requires = "store_key")]
    pub optout_db: Option<PathBuf>,
    /// The opt-out store's key file.
    #[arg(long, value_name = "FILE", requires = "optout_db")]
    pub store_key: Option<PathBuf>,
    /// Skip (and count) unreadable rows of the opt-out list instead of refusing to split.
    #[arg(long, requires = "optouts")]
    pub skip_bad_list_rows: bool,
}

pub fn run(args: ShardArgs) -> CliResult {
    let rejects = match &args.rejects.rejects {
        Some(path) => Some(RejectWriter::create(path, args.rejects.rejects_include_values)?),
        None => None,
    };
    let options = SplitOptions {
        input: args.input.clone(),
        key_file: args.key_file,
        shards: args.shards,
        out_dir: args.out_dir.clone(),
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        optouts: args.optouts.clone(),
        optout_store: args.optout_db.zip(args.store_key),
        bad_list_rows: BadRows::skip_if(args.skip_bad_list_rows),
        rejects,
        progress: Bars::on_stderr(true),
    };
    let summary = split::split(options)?;
    print!("{}", format_stats(&args.input, &summary.stats));
    super::matching::warn_if_empty(&args.input.display().to_string(), &summary.stats);
    if let (Some(stats), Some(path)) = (&summary.optout_list, &args.optouts) {
        print!("{}", format_stats(path, stats));
        super::matching::warn_skipped("opt-out list", stats);
    }
    if let Some(store) = &summary.optout_store {
        println!("opt-out store: {} ({} opt-outs)", store.path, store.entries);
    }
    println!("records excluded by opt-outs: {}", summary.excluded_records);
    let total: u64 = summary.files.iter().map(|(_, count)| count).sum();
    let (min, max) = summary.files.iter().fold((u64::MAX, 0), |(lo, hi), &(_, c)| (lo.min(c), hi.max(c)));
    println!(
        "wrote {} tokens in {} shard files to {} ({} to {} per shard)",
        total,
        summary.files.len(),
        args.out_dir.display(),
        min,
        max
    );
    Ok(())
}
