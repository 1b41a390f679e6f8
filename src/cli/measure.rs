//! `idmatch measure`: campaign lift by private intersection-sum, both roles on two
//! local files, or, with `--server`, the partner's side against an owner's server.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, CredentialArgs, ProfileArgs, format_stats};
use idmatch::measure::Learner;
use idmatch::measure::local::{self, MeasureOptions};
use idmatch::measure::side::SideReport;
use idmatch::measure::stats::{DEFAULT_MIN_AGGREGATE, Noise};
use idmatch::optout::BadRows;
use idmatch::progress::Bars;
use idmatch::service::epsilon_ledger::Ledger;
use idmatch::service::measure_client::{self, MeasureClientOptions};

#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Local mode: the owner's outcome file (CSV/TSV with a header and a value column).
    #[arg(long, value_name = "FILE", required_unless_present = "server", conflicts_with = "server")]
    pub owner: Option<PathBuf>,
    /// The partner's exposure file (CSV/TSV with a header, optionally a group column).
    #[arg(long, value_name = "FILE")]
    pub partner: PathBuf,
    /// Client mode: the owner's server, `https://host:port` (plain `http://` only for a loopback test server).
    #[arg(long, value_name = "URL", requires = "campaign")]
    pub server: Option<String>,
    /// Client mode: the campaign id on the server (its measurement settings apply).
    #[arg(long, requires = "server")]
    pub campaign: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Local mode: the owner's value column: a non-negative integer up to 2^32 per record (conversions, revenue in cents).
    #[arg(long, value_name = "NAME", default_value = "value", conflicts_with = "server")]
    pub value_col: String,
    /// The partner's group column (e.g. test/control); without it every exposure is in group `all`.
    #[arg(long, value_name = "NAME")]
    pub group_col: Option<String>,
    /// The campaign key file shared by both parties (see `idmatch keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// Local mode: the owner's opt-out list: opted-out people are never sent.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    pub optouts: Option<PathBuf>,
    /// Local mode: the owner's opt-out store (see `idmatch optout`), instead of --optouts.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["server", "optouts"], requires = "store_key")]
    pub optout_db: Option<PathBuf>,
    /// Local mode: the opt-out store's key file.
    #[arg(long, value_name = "FILE", requires = "optout_db")]
    pub store_key: Option<PathBuf>,
    /// The partner's suppression list, applied to the exposures.
    #[arg(long, value_name = "FILE")]
    pub suppress: Option<PathBuf>,
    /// Skip (and count) unreadable rows of the opt-out and suppression lists instead of refusing.
    #[arg(long)]
    pub skip_bad_list_rows: bool,
    /// Directory for measurement.json (created if missing); with --server written only where the partner learns the figures.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Local mode: also write owner_rejects.csv and partner_rejects.csv (line, column, reason) to the output directory.
    #[arg(long, conflicts_with = "server")]
    pub write_rejects: bool,
    /// Local mode: figures over fewer matched people are suppressed (written "<N>"); with --server the campaign's setting applies.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_AGGREGATE, conflicts_with = "server")]
    pub min_aggregate: u64,
    /// Add discrete Laplace noise with this total epsilon to the released counts and sums.
    #[arg(long, value_name = "E", requires = "clip_value", conflicts_with = "server")]
    pub epsilon: Option<f64>,
    /// Clip every value at this before encryption (bounds the sum's sensitivity); required with --epsilon.
    #[arg(long, value_name = "MAX", requires = "epsilon")]
    pub clip_value: Option<u64>,
    /// Seed of the noise (reproducible runs; never use a fixed seed for a real release).
    #[arg(long, value_name = "S", requires = "epsilon")]
    pub seed: Option<u64>,
    /// Local mode: who receives the released figures: owner, partner or both (with --server, the campaign's setting).
    #[arg(long, default_value = "owner", value_parser = parse_learner, conflicts_with = "server")]
    pub learner: Learner,
    /// Client mode: run even if the campaign releases exact figures to the owner (learner owner or both, no
    /// epsilon). A cheating owner could then decode which of your exposed people you put in which group
    /// (docs/PRIVACY.md): without this flag such a measurement is refused (exit code 9) before anything about your
    /// people is sent. Not needed with an epsilon: you noise what the owner decrypts and check its range proofs.
    #[arg(long, requires = "server")]
    pub trust_owner_with_split: bool,
    /// Client mode: the largest campaign epsilon you take as protection when the owner learns figures
    /// (learner owner or both). The owner chooses the epsilon, and at a large one your noise is nearly always 0:
    /// above this the measurement is refused (exit code 9) unless --trust-owner-with-split.
    #[arg(
        long,
        value_name = "E",
        default_value_t = idmatch::service::measure_client::DEFAULT_MAX_EPSILON,
        value_parser = parse_positive_epsilon,
        requires = "server"
    )]
    pub max_epsilon: f64,
    /// Client mode: keep a lifetime account, in this JSON file, of the epsilon at which owners learned figures of
    /// your exposures (learner owner or both). Each such measurement is charged the campaign's epsilon after the
    /// owner's accept and before anything about your people is sent; one that would pass --max-epsilon-lifetime
    /// is refused (exit code 9), as is one where the owner would learn exact figures.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub epsilon_ledger: Option<PathBuf>,
    /// Client mode: the lifetime epsilon budget of each exposure dataset in --epsilon-ledger.
    #[arg(
        long,
        value_name = "E",
        default_value_t = idmatch::service::epsilon_ledger::DEFAULT_LIFETIME,
        value_parser = parse_positive_epsilon,
        requires = "epsilon_ledger"
    )]
    pub max_epsilon_lifetime: f64,
    /// Client mode: the name the ledger charges these exposures under (default: the campaign id); give the same
    /// name to measurements of the same people under different campaigns.
    #[arg(long, value_name = "NAME", requires = "epsilon_ledger")]
    pub exposure_dataset: Option<String>,
    /// Not available: a measurement runs in one process (README, "Scale"); taken only to refuse it clearly.
    #[arg(long, value_name = "N", hide = true)]
    pub shards: Option<String>,
}

/// Why `--shards` is refused: said once, for the local and the client mode.
const NO_SHARDED_MEASUREMENT: &str = "idmatch measure does not run in shards: a measurement runs in one process \
     (the owner's memory per stream is bounded by max_measurement_message_bytes); drop --shards. Sharded \
     measurement (per-shard encrypted sums added before one decryption) is not built yet";

fn parse_learner(s: &str) -> Result<Learner, String> {
    s.parse()
}

/// `--max-epsilon` and `--max-epsilon-lifetime`: a positive finite number (NaN or a negative one would refuse
/// every accept with a message about the owner, not about the argument).
fn parse_positive_epsilon(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(e) if e.is_finite() && e > 0.0 => Ok(e),
        _ => Err(format!("`{s}` is not a positive finite number")),
    }
}

pub fn run(args: MeasureArgs) -> CliResult {
    if args.shards.is_some() {
        return Err(super::UsageError(NO_SHARDED_MEASUREMENT.into()).into());
    }
    if args.server.is_some() {
        return run_client(args);
    }
    let Some(owner) = args.owner else {
        return Err("--owner is required without --server".into());
    };
    let options = MeasureOptions {
        owner,
        partner: args.partner,
        key_file: args.key_file,
        value_column: args.value_col,
        group_column: args.group_col,
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        optouts: args.optouts,
        optout_store: args.optout_db.zip(args.store_key),
        suppress: args.suppress,
        bad_list_rows: BadRows::skip_if(args.skip_bad_list_rows),
        out_dir: args.out_dir.clone(),
        min_aggregate: args.min_aggregate,
        noise: args.epsilon.zip(args.clip_value).map(|(epsilon, clip)| Noise { epsilon, clip }),
        seed: args.seed,
        learner: args.learner,
        write_rejects: args.write_rejects,
        progress: Bars::on_stderr(true),
    };
    let report = local::run(&options)?;
    for (name, side) in [("owner", &report.owner), ("partner", &report.partner)] {
        print_side(name, side);
    }
    print!("{}", report.figures);
    print_noise(report.epsilon, report.clip_value);
    if let Some(seed) = report.noise_seed {
        eprintln!(
            "idmatch: warning: the noise was drawn from --seed {seed}: these figures are predictable; never release them"
        );
    }
    println!("wrote {}", args.out_dir.join("measurement.json").display());
    Ok(())
}

/// The noise line under the figures, when there is noise.
fn print_noise(epsilon: Option<f64>, clip: Option<u64>) {
    if let Some(e) = epsilon {
        let clipped = clip.map_or_else(String::new, |c| format!(", values clipped at {c}"));
        println!("noise: discrete Laplace, epsilon {e} (ε/3 per figure){clipped}");
    }
}

/// One side's reading and person counts, with warnings for what was left out.
fn print_side(name: &str, side: &SideReport) {
    print!("{name}: {}", format_stats(std::path::Path::new(&side.file), &side.read));
    println!(
        "  excluded records: {} (their people left out whole: {}, with {} more records); people: {} ({} records joined an earlier record's person); bundles sent: {}",
        side.excluded_records,
        side.people_excluded,
        side.records_excluded_with_person,
        side.people,
        side.records_merged,
        side.bundles_sent
    );
    super::matching::warn_if_empty(&side.file, &side.read);
    if side.people_in_several_groups > 0 {
        eprintln!(
            "idmatch: warning: {name}: {} people have records in more than one group; they are left out of every group",
            side.people_in_several_groups
        );
    }
    if side.people_with_too_many_identifiers > 0 {
        eprintln!(
            "idmatch: warning: {name}: {} people link more than 16 identifiers; they are left out",
            side.people_with_too_many_identifiers
        );
    }
}

fn run_client(args: MeasureArgs) -> CliResult {
    let (Some(server), Some(campaign)) = (args.server, args.campaign) else {
        return Err("--server needs --campaign".into());
    };
    let options = MeasureClientOptions {
        server,
        campaign: campaign.clone(),
        key_file: args.key_file,
        input: args.partner,
        group_column: args.group_col,
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        suppress: args.suppress,
        bad_list_rows: BadRows::skip_if(args.skip_bad_list_rows),
        out_dir: args.out_dir.clone(),
        ca: args.credentials.tls.ca,
        cert: args.credentials.tls.cert,
        key: args.credentials.tls.key,
        token_file: args.credentials.token_file,
        idle_timeout: std::time::Duration::from_secs(300),
        trust_owner_with_split: args.trust_owner_with_split,
        max_epsilon: args.max_epsilon,
        progress: Bars::on_stderr(true),
        ledger: args.epsilon_ledger.map(|path| Ledger {
            path,
            dataset: args.exposure_dataset.unwrap_or_else(|| campaign.clone()),
            lifetime: args.max_epsilon_lifetime,
        }),
    };
    let ledger = options.ledger.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(measure_client::run(options))?;
    if let Some(ledger) = ledger {
        let account = ledger.account()?;
        println!(
            "epsilon ledger {}: exposure dataset `{}` has spent {} of {} in {} measurement(s)",
            ledger.path.display(),
            ledger.dataset,
            account.spent,
            ledger.lifetime,
            account.measurements.len()
        );
    }
    print_side("partner", &report.partner);
    println!("owner people: {}; measurement id: {}", report.owner_people, report.measurement_id);
    match &report.release {
        Some(release) => {
            print!("{release}");
            print_noise(report.epsilon, None);
            println!("wrote {}", args.out_dir.join("measurement.json").display());
        }
        None => println!("the campaign releases the figures to the owner only (learner = {})", report.learner),
    }
    Ok(())
}
