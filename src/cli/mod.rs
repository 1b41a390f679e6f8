//! The `idmatch` command line: argument structures (clap derive) and one module per
//! subcommand that turns arguments into library calls and prints the results. No
//! matching logic lives here.

mod keygen;
mod matching;
mod measure;
mod normalize;
mod optout;
mod partner;
mod serve;
mod shard;
mod synth;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use idmatch::normalize::{Normalizer, Profile, Region, parse_region, region_problem};
use idmatch::records::{ColumnSpec, InputLimits};

/// Privacy-preserving identifier matching: normalize emails and phone numbers, turn
/// them into keyed tokens, and match two parties' lists revealing only the
/// intersection (ECDH PSI; the faster OPRF engine for local matches and for partners
/// the owner trusts to run an honest client), and measure campaigns over the
/// intersection. Inputs are CSV/TSV files, or `-` for standard input.
#[derive(Debug, Parser)]
#[command(name = "idmatch", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Largest input file (CSV/TSV, lists) accepted, in bytes; larger inputs end with an error.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = InputLimits::BUILT_IN.max_bytes)]
    pub max_input_bytes: u64,
    /// Longest line accepted in an input, in bytes.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = InputLimits::BUILT_IN.max_line_bytes)]
    pub max_line_bytes: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Normalize identifiers read from stdin, one per line (prints the value or `!error <reason>`).
    Normalize(normalize::NormalizeArgs),
    /// Turn the identifiers of a CSV/TSV file into keyed tokens (`record_id,kind,token_hex`).
    Tokens(tokens::TokensArgs),
    /// Write a new random 32-byte key file (mode 0600).
    Keygen(keygen::KeygenArgs),
    /// Write a synthetic members/partner pair with its truth file.
    Synth(synth::SynthArgs),
    /// Split a CSV/TSV file into N shard files of keyed tokens (opt-outs applied first), for matching shard by shard.
    Shard(shard::ShardArgs),
    /// Match by private set intersection: two local files (both roles here), or against an owner's server.
    Match(Box<matching::MatchArgs>),
    /// Campaign lift by private intersection-sum: per-group matched counts and value sums, both roles on two local files.
    Measure(Box<measure::MeasureArgs>),
    /// Run the owner's gRPC matching server.
    Serve(serve::ServeArgs),
    /// Manage the durable opt-out store (a local database file, or an owner's server with --server): add, remove, import, check, count, export, audit, verify.
    Optout(optout::OptoutArgs),
    /// Issue a partner's bearer token and its server.toml entry, or hash an existing token as the server does.
    Partner(partner::PartnerArgs),
}

/// Normalization settings shared by every command that reads identifiers.
#[derive(Debug, Args, Clone)]
pub struct ProfileArgs {
    /// Normalization profile (both parties must use the same): idmatch-v1, basic-v1 or idmatch-v2 (idmatch-v1 with three fixes, recommended for new campaigns).
    #[arg(long, default_value = "idmatch-v1", value_parser = parse_profile)]
    pub profile: Profile,
    /// Default region (ISO 3166 alpha-2) for national-format phone numbers.
    #[arg(long, value_parser = parse_region_arg)]
    pub region: Option<Region>,
}

impl ProfileArgs {
    pub fn normalizer(&self) -> Normalizer {
        Normalizer::new(self.profile, self.region)
    }
}

/// Column selection for CSV/TSV inputs; without these, columns are found by header name.
#[derive(Debug, Args, Clone, Default)]
pub struct ColumnArgs {
    /// Column holding the record id (default: id, record_id, member_id, user_id or customer_id; else the line number).
    #[arg(long, value_name = "NAME")]
    pub id_col: Option<String>,
    /// Email column (repeatable; default: email, e-mail, email_address).
    #[arg(long, value_name = "NAME")]
    pub email_col: Vec<String>,
    /// Phone column (repeatable; default: phone, phone_number, mobile, msisdn).
    #[arg(long, value_name = "NAME")]
    pub phone_col: Vec<String>,
    /// Column with each record's phone region (default: country or region).
    #[arg(long, value_name = "NAME")]
    pub region_col: Option<String>,
}

impl ColumnArgs {
    pub fn spec(&self) -> ColumnSpec {
        ColumnSpec {
            id: self.id_col.clone(),
            email: self.email_col.clone(),
            phone: self.phone_col.clone(),
            region: self.region_col.clone(),
        }
    }
}

/// TLS to the owner's server (with `--server`), for every client command.
#[derive(Debug, Args, Clone, Default)]
pub struct TlsArgs {
    /// With --server: CA bundle (PEM) that signed the server's certificate (default: the system's trust store).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca: Option<PathBuf>,
    /// With --server: client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires_all = ["server", "key"])]
    pub cert: Option<PathBuf>,
    /// With --server: client private key (PEM) for mutual TLS; must be private (mode 0600).
    #[arg(long, value_name = "FILE", requires_all = ["server", "cert"])]
    pub key: Option<PathBuf>,
}

/// How a partner client reaches and authenticates to the owner's server (with `--server`).
#[derive(Debug, Args, Clone, Default)]
pub struct CredentialArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Client mode: file holding the bearer token the owner issued; must be private (mode 0600).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
}

/// Where to write the reject report.
#[derive(Debug, Args, Clone, Default)]
pub struct RejectArgs {
    /// Write every rejected identifier and row (line, column, reason) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Also write the raw rejected values to the reject report (they are personal data).
    #[arg(long, requires = "rejects")]
    pub rejects_include_values: bool,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    s.parse()
}

fn parse_region_arg(s: &str) -> Result<Region, String> {
    parse_region(s).map_err(|_| region_problem(s))
}

/// Runs a parsed command line; the returned code is the process's exit status: 0
/// success, 2 usage errors (clap's, and [`UsageError`]), the client's codes 3–8
/// (`ClientError::exit_code`), 1 any other failure.
pub fn run(cli: Cli) -> ExitCode {
    InputLimits::set_process_default(InputLimits {
        max_bytes: cli.max_input_bytes,
        max_line_bytes: cli.max_line_bytes,
    });
    let result = match cli.command {
        Command::Normalize(args) => normalize::run(args),
        Command::Tokens(args) => tokens::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Shard(args) => shard::run(args),
        Command::Match(args) => matching::run(*args),
        Command::Measure(args) => measure::run(*args),
        Command::Serve(args) => serve::run(args),
        Command::Optout(args) => optout::run(args),
        Command::Partner(args) => partner::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("idmatch: error: {err}");
            if err.is::<UsageError>() {
                return ExitCode::from(2);
            }
            match err.downcast_ref::<idmatch::service::client::ClientError>() {
                Some(client_error) => ExitCode::from(client_error.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Errors reported by commands: each wraps the library's precise error.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Arguments that contradict each other in a way clap cannot see: exit code 2, like
/// clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A human-readable summary of one file's read statistics.
pub fn format_stats(path: &std::path::Path, stats: &idmatch::records::ReadStats) -> String {
    let list = |map: &std::collections::BTreeMap<&'static str, u64>| {
        map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    let mut s = format!("{}:\n", path.display());
    s += &format!("  rows: {} ({} records", stats.rows, stats.records);
    if stats.bad_rows_total() > 0 {
        s += &format!(", {} bad rows: {}", stats.bad_rows_total(), list(&stats.bad_rows));
    }
    s += ")\n";
    s += &format!("  identifiers: {} ({})\n", stats.identifiers_total(), list(&stats.identifiers));
    s += &format!("  rejected: {}", stats.rejected_total());
    if stats.rejected_total() > 0 {
        s += &format!(" ({})", list(&stats.rejected));
    }
    s += "\n";
    s += &format!("  blank cells: {}\n", stats.blank_cells);
    s += &format!("  records without a valid identifier: {}\n", stats.records_without_identifiers);
    s += &format!("  duplicate identifiers: {}\n", stats.duplicate_identifiers);
    if stats.duplicate_ids > 0 {
        s += &format!("  records repeating an earlier record's id: {}\n", stats.duplicate_ids);
    }
    s
}

/// A number of shards (`--shards`): `1..=4096`.
fn parse_shards(s: &str) -> Result<std::num::NonZeroU32, String> {
    let n: u32 = s.parse().map_err(|_| format!("`{s}` is not a number of shards"))?;
    match std::num::NonZeroU32::new(n) {
        Some(n) if n.get() <= idmatch::shard::MAX_SHARDS => Ok(n),
        _ => Err(format!("the number of shards must be between 1 and {}", idmatch::shard::MAX_SHARDS)),
    }
}
