//! `idmatch tokens`: the hashed export some partners ingest.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, ProfileArgs, RejectArgs, format_stats};
use idmatch::key::Key;
use idmatch::optout::BadRows;
use idmatch::output::TokenExport;
use idmatch::prepare::{self, Filter};
use idmatch::progress::Bars;
use idmatch::records::{Mode, ReadOptions, RejectWriter};
use idmatch::token::{KeyFingerprint, Tokenizer};

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// The campaign key file (see `idmatch keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Input CSV or TSV file with a header row.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Output CSV with a `record_id,kind,token_hex` header; the profile and counts go to `<output>.meta.json`.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectArgs,
    /// Opt-out list (CSV with email, phone and/or id columns): opted-out records are not exported.
    #[arg(long, value_name = "FILE")]
    pub optouts: Option<PathBuf>,
    /// Skip (and count) unreadable rows of the opt-out list instead of refusing to export.
    #[arg(long, requires = "optouts")]
    pub skip_bad_list_rows: bool,
}

pub fn run(args: TokensArgs) -> CliResult {
    let key = Key::load(&args.key_file)?;
    // Created first, so an unwritable output fails before the work; it appears at
    // its path only once complete.
    let export = TokenExport::create(&args.output)?;
    let meta_path = export.meta_path().to_owned();
    let tokenizer = Tokenizer::new(&key);
    let normalizer = args.profile.normalizer();
    // A member's several rows (one per email, say) share an id in a token export;
    // repeats are counted and reported, not refused.
    let mut options = ReadOptions::new(normalizer.clone(), Mode::Export);
    options.columns = args.columns.spec();
    options.progress = Bars::on_stderr(true);
    if let Some(path) = &args.rejects.rejects {
        options.rejects = Some(RejectWriter::create(path, args.rejects.rejects_include_values)?);
    }
    let bad_rows = BadRows::skip_if(args.skip_bad_list_rows);
    let optouts = Filter::list_or_none(args.optouts.as_deref(), &normalizer, bad_rows)?;
    let side = prepare::prepare(&args.input, &tokenizer, options, &optouts)?;
    let written = export.write(&side, &KeyFingerprint::of(&key))?;
    let set = side.records();
    print!("{}", format_stats(&args.input, set.stats()));
    if let (Some(stats), Some(path)) = (optouts.list_stats(), &args.optouts) {
        print!("{}", format_stats(path, stats));
        super::matching::warn_skipped("opt-out list", stats);
        println!("records excluded by opt-outs: {}", written.excluded_records);
    }
    println!(
        "tokens written: {} to {} (profile {} in {})",
        written.rows,
        args.output.display(),
        set.profile(),
        meta_path.display()
    );
    Ok(())
}
