//! `idmatch normalize`: one identifier per stdin line, one result per stdout line.

use std::io::{BufRead, BufWriter, Write};

use clap::Args;

use super::{CliResult, ProfileArgs};
use idmatch::normalize::Kind;

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// What the lines are: email or phone.
    #[arg(long)]
    pub kind: Kind,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

pub fn run(args: NormalizeArgs) -> CliResult {
    let normalizer = args.profile.normalizer();
    let stdin = std::io::stdin().lock();
    let mut stdout = BufWriter::new(std::io::stdout().lock());
    let mut out = String::new();
    for (index, line) in stdin.split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let result = match std::str::from_utf8(line) {
            Ok(text) => normalizer.normalize_into(args.kind, text, None, &mut out),
            Err(_) => Err(idmatch::normalize::Reject::BadEncoding),
        };
        match result {
            Ok(()) => writeln!(stdout, "{out}"),
            Err(reason) => writeln!(stdout, "!error {reason}"),
        }
        .map_err(|e| format!("writing result for input line {}: {e}", index + 1))?;
    }
    stdout.flush()?;
    Ok(())
}
