//! `idmatch partner`: issue a partner's bearer token with the `[[partners]]` entry
//! that admits it, or compute the digest of an existing token exactly as the server
//! does.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliResult;
use idmatch::key::{read_secret_file, write_secret_file};
use idmatch::psi::Reveal;
use idmatch::service::config::{IssuedPartner, token_sha256};

#[derive(Debug, Args)]
pub struct PartnerArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create a partner's bearer token (written once, mode 0600) and print the
    /// `[[partners]]` entry for server.toml (it holds only the token's digest).
    Add(AddArgs),
    /// Print the `token_sha256` value for an existing token file, as the server
    /// computes it (surrounding whitespace, such as a trailing newline, excluded).
    TokenSha256(TokenArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The partner's name (in logs, the audit log, budgets and result file names).
    pub name: String,
    /// A campaign id the partner may match against (repeatable).
    #[arg(long = "campaign", value_name = "ID", required = true)]
    pub campaigns: Vec<String>,
    /// A reveal mode the partner may ask for: partner, owner, both or count (repeatable).
    #[arg(long = "reveal", value_name = "MODE", default_values = ["partner", "both", "count"], value_parser = parse_reveal)]
    pub reveals: Vec<Reveal>,
    /// The owner trusts this partner to run an honest, unmodified client: allows it
    /// measurements, whose matches its client computes (a modified client can learn
    /// which of its people are in the outcomes and, where it learns figures, one
    /// person's exact value; docs/PRIVACY.md). Off by default.
    #[arg(long)]
    pub honest_client_trusted: bool,
    /// Where to write the token (a new file, mode 0600; never overwritten). Give it to
    /// the partner over a secure channel, then delete your copy.
    #[arg(long, value_name = "FILE")]
    pub token_out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token file.
    pub token_file: PathBuf,
}

fn parse_reveal(s: &str) -> Result<Reveal, String> {
    s.parse()
}

pub fn run(args: PartnerArgs) -> CliResult {
    match args.action {
        Action::Add(args) => {
            let issued = IssuedPartner::new(&args.name, &args.campaigns, &args.reveals, args.honest_client_trusted)?;
            let mut line = zeroize::Zeroizing::new(issued.token.to_string());
            line.push('\n');
            write_secret_file(&args.token_out, line.as_bytes(), "token file")?;
            eprintln!(
                "wrote partner `{}`'s bearer token to {} (mode 0600); add these lines to server.toml and reload (SIGHUP):",
                args.name,
                args.token_out.display()
            );
            print!("{}", issued.entry);
        }
        Action::TokenSha256(args) => {
            let bytes = read_secret_file(&args.token_file, "token file")?;
            let token = std::str::from_utf8(&bytes)
                .map_err(|_| format!("token file {}: not UTF-8 text", args.token_file.display()))?;
            println!("{}", hex::encode(token_sha256(token)));
        }
    }
    Ok(())
}
