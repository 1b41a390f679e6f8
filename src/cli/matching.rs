//! `idmatch match`: two local files with both roles in one process, or, with
//! `--server`, the partner's side against an owner's gRPC server.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, ColumnArgs, CredentialArgs, ProfileArgs, UsageError};
use idmatch::local_match::{self, LocalMatchOptions};
use idmatch::optout::BadRows;
use idmatch::progress::Bars;
use idmatch::psi::{ProtocolChoice, Reveal};
use idmatch::service::client::{self, ClientOptions, OneShard, Sharding};
use idmatch::service::shard_files;

#[derive(Debug, Args)]
pub struct MatchArgs {
    /// Local mode: the owner's member file (CSV/TSV with a header).
    #[arg(long, value_name = "FILE", required_unless_present = "server", conflicts_with = "server")]
    pub owner: Option<PathBuf>,
    /// Local mode: the partner's file (CSV/TSV with a header).
    #[arg(long, value_name = "FILE", required_unless_present = "server", conflicts_with = "server")]
    pub partner: Option<PathBuf>,
    /// Client mode: the owner's server, `https://host:port` (plain `http://` only for a loopback test server).
    #[arg(long, value_name = "URL", requires_all = ["campaign", "input", "output"])]
    pub server: Option<String>,
    /// Client mode: the campaign id on the server.
    #[arg(long, requires = "server")]
    pub campaign: Option<String>,
    /// Client mode: the partner's file.
    #[arg(long, value_name = "FILE", requires = "server", conflicts_with = "shard_files")]
    pub input: Option<PathBuf>,
    /// Client mode with --shard I/N: read shard I (and, for the run's size, the other files' tokens) from the
    /// shard-IIIII-of-NNNNN.idms files `idmatch shard --shards N` wrote into DIR with this key, instead of reading
    /// --input; the suppressions are those the files were written with.
    #[arg(long, value_name = "DIR", requires = "shard", conflicts_with = "suppress")]
    pub shard_files: Option<PathBuf>,
    /// Client mode: where to write `record_id,matched_kinds` (partner and both modes).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// The campaign key file shared by both parties (see `idmatch keygen`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Who learns what: partner, owner, both, or count (the partner learns only the size).
    #[arg(long, default_value = "both", value_parser = parse_reveal)]
    pub reveal: Reveal,
    /// The matching engine: auto (oprf for partner, owner and both; ecdh for count), ecdh or oprf.
    /// With --server, auto offers both and the owner runs the fastest its campaign allows. Both
    /// hold against a modified client (docs/PRIVACY.md).
    #[arg(long, default_value = "auto", value_parser = parse_protocol)]
    pub protocol: ProtocolChoice,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// Local mode: the owner's opt-out list (CSV with email, phone and/or id columns): opted-out members are never matched.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    pub optouts: Option<PathBuf>,
    /// Local mode: the owner's opt-out store (see `idmatch optout`), instead of --optouts.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["server", "optouts"], requires = "store_key")]
    pub optout_db: Option<PathBuf>,
    /// Local mode: the opt-out store's key file.
    #[arg(long, value_name = "FILE", requires = "optout_db")]
    pub store_key: Option<PathBuf>,
    /// The partner's suppression list (same format), applied the same way on the partner's side.
    #[arg(long, value_name = "FILE")]
    pub suppress: Option<PathBuf>,
    /// Skip (and count) unreadable rows of the opt-out and suppression lists instead of refusing the match.
    #[arg(long)]
    pub skip_bad_list_rows: bool,
    /// Local mode: directory for partner_matches.csv, owner_matches.csv and summary.json (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "server", conflicts_with = "server")]
    pub out_dir: Option<PathBuf>,
    /// Local mode: also write owner_rejects.csv and partner_rejects.csv (line, column, reason) to the output directory.
    #[arg(long, conflicts_with = "server")]
    pub write_rejects: bool,
    /// Match in N shards (1 to 4096). Local mode: out of core (`auto`: one shard per 32 MiB of the larger file, smaller
    /// shards if the memory available, or the cgroup's limit, is short):
    /// both files are split into shard files in a private directory inside --out-dir and matched one shard at a
    /// time, so memory follows the shard, not the input. Client mode: a run of N shard streams to the server,
    /// --parallel at a time, all or nothing. The outputs are the same as without it.
    #[arg(long, value_name = "N|auto", value_parser = parse_shard_count)]
    pub shards: Option<ShardCount>,
    /// Client mode with --shards: shard streams open at once.
    #[arg(long, value_name = "P", default_value = "2", requires_all = ["server", "shards"])]
    pub parallel: std::num::NonZeroUsize,
    /// Client mode: run only shard I of a run of N shard streams (0 <= I < N <= 4096), the others being run by
    /// other processes with the same --run-id, input and key (e.g. the pods of an Indexed Job:
    /// --shard $JOB_COMPLETION_INDEX/N). Reads the whole input to announce the run's size; writes only this
    /// shard's matches (merge the N outputs by record id). A shard run twice fails the whole run.
    #[arg(long, value_name = "I/N", value_parser = parse_one_shard, requires_all = ["server", "run_id"], conflicts_with = "shards")]
    pub shard: Option<(u32, std::num::NonZeroU32)>,
    /// Client mode with --shard: the run id, 32 hex digits (16 random bytes, `openssl rand -hex 16`), the same for
    /// every shard of the run and new for every run (a finished or failed run's id is refused).
    #[arg(long, value_name = "HEX", value_parser = parse_run_id, requires = "shard")]
    pub run_id: Option<[u8; 16]>,
}

/// `--shard I/N`.
fn parse_one_shard(s: &str) -> Result<(u32, std::num::NonZeroU32), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}` is not I/N (e.g. 3/8)"))?;
    let n = super::parse_shards(n)?;
    let i: u32 = i.parse().map_err(|_| format!("`{i}` is not a shard index (0 to {})", n.get() - 1))?;
    if i >= n.get() {
        return Err(format!("shard index {i} is not below N = {n} (0 to {})", n.get() - 1));
    }
    Ok((i, n))
}

fn parse_run_id(s: &str) -> Result<[u8; 16], String> {
    client::parse_run_id(s)
}

/// `--shards`: a number, or one chosen from the input sizes.
#[derive(Clone, Copy, Debug)]
pub enum ShardCount {
    Auto,
    Exactly(std::num::NonZeroU32),
}

fn parse_shard_count(s: &str) -> Result<ShardCount, String> {
    if s == "auto" { Ok(ShardCount::Auto) } else { super::parse_shards(s).map(ShardCount::Exactly) }
}

/// The number of shards for `--shards auto`, from the sizes of the two files and
/// the memory available, said on standard error.
fn auto_shards(owner: &std::path::Path, partner: &std::path::Path) -> Result<std::num::NonZeroU32, UsageError> {
    use idmatch::local_match::{memory, sharded};
    let size = |path: &std::path::Path| {
        std::fs::metadata(path).ok().filter(std::fs::Metadata::is_file).map(|m| m.len()).ok_or_else(|| {
            UsageError(format!("--shards auto needs the size of {}: give --shards N instead", path.display()))
        })
    };
    let plan = sharded::default_shards(size(owner)?.max(size(partner)?), memory::available());
    let mib = |bytes: u64| bytes >> 20;
    let memory = plan.memory.map_or("unknown".to_owned(), |m| format!("{} MiB", mib(m)));
    eprintln!(
        "--shards auto: {} shards of up to {} MiB of input each ({} MiB of memory planned per MiB of input; \
         memory available: {memory})",
        plan.shards,
        mib(plan.bytes_per_shard),
        sharded::MEMORY_PER_SHARD_BYTE,
    );
    if plan.short_of_memory {
        eprintln!(
            "warning: a shard of this input may need more memory than is available ({memory}); \
             free some, or give --shards N"
        );
    }
    Ok(plan.shards)
}

fn parse_reveal(s: &str) -> Result<Reveal, String> {
    s.parse()
}

fn parse_protocol(s: &str) -> Result<ProtocolChoice, String> {
    s.parse()
}

pub fn run(args: MatchArgs) -> CliResult {
    // `--protocol oprf --reveal count` is a contradiction in the arguments: a usage
    // error (exit 2), before anything is read.
    args.protocol.offer(args.reveal).map_err(|e| UsageError(e.to_string()))?;
    if args.server.is_some() {
        return run_client(args);
    }
    let (Some(owner), Some(partner), Some(out_dir)) = (args.owner.clone(), args.partner.clone(), args.out_dir.clone())
    else {
        return Err(UsageError("local mode needs --owner, --partner and --out-dir".into()).into());
    };
    let options = LocalMatchOptions {
        owner,
        partner,
        key_file: args.key_file,
        reveal: args.reveal,
        protocol: args.protocol,
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        optouts: args.optouts,
        optout_store: args.optout_db.zip(args.store_key),
        suppress: args.suppress,
        bad_list_rows: BadRows::skip_if(args.skip_bad_list_rows),
        out_dir: out_dir.clone(),
        write_rejects: args.write_rejects,
        progress: Bars::on_stderr(true),
    };
    let shards = match args.shards {
        Some(ShardCount::Auto) => Some(auto_shards(&options.owner, &options.partner)?),
        Some(ShardCount::Exactly(n)) => Some(n),
        None => None,
    };
    let summary = match shards {
        Some(shards) => {
            println!("shards: {shards}");
            idmatch::local_match::sharded::run(&options, shards)?
        }
        None => local_match::run(&options)?,
    };
    let side = |name: &str, s: &local_match::SideSummary| {
        format!(
            "{name}: {} rows, {} identifiers ({} rejected), {} records excluded, {} distinct tokens matched on, matched records: {}",
            s.read.rows,
            s.read.identifiers_total(),
            s.read.rejected_total(),
            s.excluded_records,
            s.blinded,
            s.matched_records.map_or("not revealed".to_owned(), |m| m.to_string()),
        )
    };
    warn_if_empty(&summary.owner.file, &summary.owner.read);
    warn_if_empty(&summary.partner.file, &summary.partner.read);
    if let Some(store) = &summary.optout_store {
        println!("opt-out store: {} ({} opt-outs)", store.path, store.entries);
        if store.entries == 0 {
            eprintln!(
                "idmatch: warning: opt-out store {} holds no opt-outs: if it should hold your list, import it (idmatch optout import) before matching",
                store.path
            );
        }
    }
    for (name, list) in [("opt-out list", &summary.optout_list), ("suppression list", &summary.suppression_list)] {
        if let Some(stats) = list {
            println!(
                "{name}: {} rows, {} identifiers ({} rejected, {} bad rows)",
                stats.rows,
                stats.identifiers_total(),
                stats.rejected_total(),
                stats.bad_rows_total()
            );
            warn_skipped(name, stats);
            warn_if_empty(name, stats);
        }
    }
    println!("protocol: {}", summary.protocol);
    println!("{}", side("owner", &summary.owner));
    println!("{}", side("partner", &summary.partner));
    println!(
        "intersection: {} distinct identifiers; wrote {} to {}",
        summary.intersection.map_or("not revealed".to_owned(), |n| n.to_string()),
        summary.outputs.join(", "),
        out_dir.display()
    );
    Ok(())
}

/// Says on stderr that `file` had a header but no data rows (a run over nothing
/// succeeds, but is rarely what was meant).
pub(super) fn warn_if_empty(file: &str, stats: &idmatch::records::ReadStats) {
    if stats.rows == 0 {
        eprintln!("idmatch: warning: {file} has a header but no data rows");
    }
}

/// Says on stderr what `--skip-bad-list-rows` skipped (the counts are in summary.json).
pub(super) fn warn_skipped(name: &str, stats: &idmatch::records::ReadStats) {
    let skipped = stats.rejected_total() + stats.bad_rows_total();
    if skipped > 0 {
        eprintln!(
            "idmatch: warning: {name}: skipped {} bad rows and {} rejected identifiers (--skip-bad-list-rows); they opt nobody out",
            stats.bad_rows_total(),
            stats.rejected_total()
        );
    }
}

fn run_client(args: MatchArgs) -> CliResult {
    let input = args.input.or_else(|| args.shard_files.clone());
    let (Some(server), Some(campaign), Some(input), Some(output)) = (args.server, args.campaign, input, args.output)
    else {
        return Err(UsageError("--server needs --campaign, --input (or --shard-files) and --output".into()).into());
    };
    let options = ClientOptions {
        server,
        campaign,
        key_file: args.key_file,
        input,
        output: output.clone(),
        reveal: args.reveal,
        protocol: args.protocol,
        normalizer: args.profile.normalizer(),
        columns: args.columns.spec(),
        suppress: args.suppress,
        bad_list_rows: BadRows::skip_if(args.skip_bad_list_rows),
        ca: args.credentials.tls.ca,
        cert: args.credentials.tls.cert,
        key: args.credentials.tls.key,
        token_file: args.credentials.token_file,
        idle_timeout: std::time::Duration::from_secs(300),
        progress: Bars::on_stderr(true),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = match args.shards {
        Some(ShardCount::Auto) => {
            return Err(UsageError("--shards auto is for local matches; with --server give --shards N".into()).into());
        }
        Some(ShardCount::Exactly(shards)) => {
            runtime.block_on(client::run_sharded(options, Sharding { shards, parallel: args.parallel }))?
        }
        None => match (args.shard, args.run_id) {
            (Some((index, shards)), Some(run_id)) => {
                let shard = OneShard { run_id, index, shards };
                match args.shard_files {
                    Some(dir) => runtime.block_on(shard_files::run(options, shard, dir))?,
                    None => runtime.block_on(client::run_one_shard(options, shard))?,
                }
            }
            (None, None) => runtime.block_on(client::run(options))?,
            _ => return Err(UsageError("--shard and --run-id go together".into()).into()),
        },
    };
    if let Some(run) = &summary.run {
        match summary.shard {
            Some(shard) => println!(
                "run {}: shard {shard} of {}, every shard announced as {} tokens (dummies included)",
                hex::encode(run.run_id),
                run.shard_count,
                run.run_set_size / u64::from(run.shard_count)
            ),
            None => println!("run {}: {} shards", hex::encode(run.run_id), run.shard_count),
        }
    }
    if let Some(stats) = &summary.suppression_list {
        warn_skipped("suppression list", stats);
    }
    let o = &summary.outcome;
    println!(
        "protocol {}: partner set {} (after {} suppressed records), owner set {}; intersection: {}; matched records: {}",
        summary.protocol,
        o.partner_set_size,
        summary.suppressed_records,
        o.owner_set_size,
        o.intersection.map_or("not revealed".to_owned(), |n| n.to_string()),
        summary.matched_records.map_or("not revealed".to_owned(), |n| format!("{n}, written to {}", output.display())),
    );
    Ok(())
}
