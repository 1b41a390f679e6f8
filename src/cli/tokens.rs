//! `idmatch tokens`: the hashed export some partners ingest.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use rayon::prelude::*;

use super::{CliResult, ColumnArgs, ProfileArgs, RejectArgs, format_stats};
use idmatch::key::Key;
use idmatch::optout::{BadRows, FileList, OptOutSource};
use idmatch::output::Staged;
use idmatch::prepare;
use idmatch::records::{ColumnSpec, ReadOptions, RejectWriter};
use idmatch::token::Tokenizer;

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
    let mut staged = Staged::create(&args.output)?;
    let meta_path = meta_path(&args.output);
    let mut meta = Staged::create(&meta_path)?;
    let tokenizer = Tokenizer::new(&key);
    let mut options = ReadOptions::new(args.profile.normalizer());
    options.columns = args.columns.spec();
    options.progress = true;
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
    let is_out = |record: u32| excluded.get(record as usize).copied().unwrap_or(false);

    let write_err = |e: std::io::Error| format!("{}: {e}", args.output.display());
    let mut out = BufWriter::new(&mut staged);
    writeln!(out, "record_id,kind,token_hex").map_err(write_err)?;
    // Rows are formatted on all cores, a block at a time, and written in order.
    for block in set.entries().chunks(1 << 20) {
        let parts: Vec<Vec<u8>> = block
            .par_chunks(1 << 14)
            .map(|entries| {
                let mut w =
                    csv::WriterBuilder::new().has_headers(false).from_writer(Vec::with_capacity(entries.len() * 96));
                let mut hex_buf = [0u8; 64];
                for e in entries.iter().filter(|e| !is_out(e.record)) {
                    let token_hex = hex::encode_to_slice(e.token.0, &mut hex_buf).map(|()| &hex_buf[..]).unwrap_or(b"");
                    // Writing into a Vec cannot fail.
                    let _ = w.write_record([set.id(e.record).as_bytes(), e.kind.label().as_bytes(), token_hex]);
                }
                w.into_inner().unwrap_or_default()
            })
            .collect();
        for part in parts {
            out.write_all(&part).map_err(write_err)?;
        }
    }
    out.flush().map_err(write_err)?;
    drop(out);
    let excluded_records = excluded.iter().filter(|&&x| x).count();
    let written = set.entries().iter().filter(|e| !is_out(e.record)).count();
    let description = serde_json::json!({
        "format": "idmatch-tokens",
        "version": 1,
        "columns": ["record_id", "kind", "token_hex"],
        "profile": set.profile().name(),
        "rows": written,
        "records_excluded_by_optouts": excluded_records,
    });
    serde_json::to_writer_pretty(&mut meta, &description).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    staged.commit()?;
    meta.commit()?;
    print!("{}", format_stats(&args.input, set.stats()));
    if let (Some(list), Some(path)) = (&optouts, &args.optouts) {
        print!("{}", format_stats(path, list.stats()));
        super::matching::warn_skipped("opt-out list", list.stats());
        println!("records excluded by opt-outs: {excluded_records}");
    }
    println!(
        "tokens written: {written} to {} (profile {} in {})",
        args.output.display(),
        set.profile(),
        meta_path.display()
    );
    Ok(())
}

/// `tokens.csv` → `tokens.csv.meta.json`: the export's description, beside it.
fn meta_path(output: &std::path::Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".meta.json");
    PathBuf::from(name)
}
