//! `idmatch tokens`: the hashed export some partners ingest.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, ProfileArgs, RejectArgs, format_stats};
use idmatch::key::Key;
use idmatch::optout::{BadRows, FileList, OptOutSource};
use idmatch::output::TokenExport;
use idmatch::prepare;
use idmatch::progress::Bars;
use idmatch::records::{ColumnSpec, ReadOptions, RejectWriter};
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
    let mut options = ReadOptions::new(args.profile.normalizer());
    options.columns = args.columns.spec();
    options.progress = Bars::on_stderr(true);
    // A member's several rows (one per email, say) share an id in a token export;
    // repeats are counted and reported, not refused.
    options.unique_ids = false;
    if let Some(path) = &args.rejects.rejects {
        options.rejects = Some(RejectWriter::create(path, args.rejects.rejects_include_values)?);
    }
    let optouts = args
        .optouts
        .as_deref()
        .map(|path| {
            let bad_rows = BadRows::skip_if(args.skip_bad_list_rows);
            FileList::read(path, args.profile.normalizer(), ColumnSpec::default(), None, bad_rows)
        })
        .transpose()?;
    let filter = optouts.as_ref().map(|list| list as &dyn OptOutSource);
    let set = prepare::read(&args.input, &tokenizer, options, filter.map(OptOutSource::digester))?;
    let excluded = prepare::excluded(&set, filter)?;
    let written = export.write(&set, &excluded, &KeyFingerprint::of(&key))?;
    print!("{}", format_stats(&args.input, set.stats()));
    if let (Some(list), Some(path)) = (&optouts, &args.optouts) {
        print!("{}", format_stats(path, list.stats()));
        super::matching::warn_skipped("opt-out list", list.stats());
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
