//! `idmatch tokens`: the hashed export some partners ingest.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, ProfileArgs, RejectArgs, format_stats};
use crate::key::Key;
use crate::records::{self, ReadOptions, RejectWriter};
use crate::token::Tokenizer;

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// The campaign key file (see `idmatch keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Input CSV or TSV file with a header row.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Output CSV: a `# idmatch-tokens profile=<name>` line, then `record_id,kind,token_hex` rows.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub rejects: RejectArgs,
}

pub fn run(args: TokensArgs) -> CliResult {
    let key = Key::load(&args.key_file)?;
    let tokenizer = Tokenizer::new(&key);
    let mut options = ReadOptions::new(args.profile.normalizer());
    options.columns = args.columns.spec();
    options.progress = true;
    if let Some(path) = &args.rejects.rejects {
        options.rejects = Some(RejectWriter::create(path, args.rejects.rejects_include_values)?);
    }
    let set = records::read(&args.input, &tokenizer, options)?;

    let write_err = |e: std::io::Error| format!("{}: {e}", args.output.display());
    let mut out = BufWriter::new(File::create(&args.output).map_err(write_err)?);
    writeln!(out, "# idmatch-tokens profile={}", set.profile()).map_err(write_err)?;
    let mut out = csv::Writer::from_writer(out);
    let csv_err = |e: csv::Error| format!("{}: {e}", args.output.display());
    out.write_record(["record_id", "kind", "token_hex"]).map_err(csv_err)?;
    for entry in set.entries() {
        out.write_record([set.id(entry.record), entry.kind.label(), &entry.token.to_hex()]).map_err(csv_err)?;
    }
    out.flush().map_err(write_err)?;
    print!("{}", format_stats(&args.input, set.stats()));
    println!("tokens written: {} to {}", set.entries().len(), args.output.display());
    Ok(())
}
