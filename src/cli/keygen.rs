//! `idmatch keygen`.

use std::path::PathBuf;

use clap::Args;

use super::CliResult;
use idmatch::key::Key;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key file to create (refuses to overwrite an existing file).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: KeygenArgs) -> CliResult {
    Key::generate_to_file(&args.out)?;
    eprintln!(
        "wrote a new 32-byte key to {} (mode 0600); share it with your matching partner over a secure channel",
        args.out.display()
    );
    Ok(())
}
