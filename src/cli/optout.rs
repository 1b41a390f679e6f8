//! `idmatch optout`: the durable opt-out store (add, remove, import, check, count,
//! export, audit, verify). The store logic lives in [`idmatch::optout::store`]; with
//! `--server`, add, remove, import, check and count go to an owner's running server
//! through [`idmatch::service::admin_client`].

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CliResult, ColumnArgs, UsageError, format_stats, parse_profile, parse_region_arg};
use idmatch::key::Key;
use idmatch::normalize::{Profile, Region};
use idmatch::optout::OptOutError;
use idmatch::optout::store::{
    BatchReport, Counts, DEFAULT_BATCH_SIZE, EntryKind, ImportOptions, OptOutStore, StoreError, StoreOptions,
    format_rfc3339_ms,
};
use idmatch::progress::Bars;
use idmatch::records::{ReadStats, RejectWriter};
use idmatch::service::admin_client::{AdminClient, AdminOptions, DEFAULT_BATCH_ENTRIES, ImportList};
use idmatch::service::client::ClientError;

#[derive(Debug, Args)]
pub struct OptoutArgs {
    #[command(subcommand)]
    pub action: Action,
}

/// add, remove, import, check and count work on a local store (`--db FILE
/// --store-key FILE`) or on an owner's running server (`--server URL
/// --admin-token-file FILE`); export, audit and verify on a local store only.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Opt one member out, by email, phone or member id (a local store is created if missing).
    Add(ChangeArgs),
    /// Opt one member back in: removes the entry; the next match sees the change.
    Remove(ChangeArgs),
    /// Import a CSV/TSV list of opt-outs (email, phone and/or id columns; a local store is created if missing).
    Import(ImportArgs),
    /// Tell whether one identifier is opted out (prints `opted out` or `not opted out`; exit 0 either way).
    Check(CheckArgs),
    /// Print how many entries the store holds, by kind.
    Count(StoreArgs),
    /// Write every entry as CSV: digest_hex, kind, added_at, source (never a raw value). Local store only.
    Export(ExportArgs),
    /// Write the audit trail as CSV: id, at, source, action, kind, requested, changed (never a value). Local store only.
    Audit(ExportArgs),
    /// Check the database's integrity and its entry counts. Local store only.
    Verify(LocalStoreArgs),
}

/// A local store: the database file and its key.
#[derive(Debug, Args)]
pub struct LocalStoreArgs {
    /// The opt-out store database file (SQLite).
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// The store key file (`idmatch keygen`): one per installation, never a campaign key.
    #[arg(long, value_name = "FILE")]
    pub store_key: PathBuf,
}

/// The store a subcommand works on: a local database file, or an owner's running
/// server (`idmatch serve` with an `[optout_store]`).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Local store: the opt-out store database file (SQLite).
    #[arg(long, value_name = "FILE", required_unless_present = "server", requires = "store_key")]
    pub db: Option<PathBuf>,
    /// Local store: the store key file (`idmatch keygen`): one per installation, never a campaign key.
    #[arg(long, value_name = "FILE", requires = "db", conflicts_with = "server")]
    pub store_key: Option<PathBuf>,
    /// Remote store: the owner's server, `https://host:port` (plain `http://` only for a loopback test server).
    #[arg(long, value_name = "URL", conflicts_with = "db", requires = "admin_token_file")]
    pub server: Option<String>,
    /// Remote store: file holding the admin bearer token (its SHA-256 is `[optout_store] admin_token_sha256`); must be private (mode 0600).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

/// Where a [`StoreArgs`] points.
enum Location {
    Local(LocalStoreArgs),
    Remote(AdminOptions),
}

impl StoreArgs {
    fn location(&self) -> Result<Location, UsageError> {
        match (&self.db, &self.store_key, &self.server, &self.admin_token_file) {
            (Some(db), Some(store_key), None, None) => {
                Ok(Location::Local(LocalStoreArgs { db: db.clone(), store_key: store_key.clone() }))
            }
            (None, None, Some(server), Some(token_file)) => Ok(Location::Remote(AdminOptions {
                server: server.clone(),
                token_file: token_file.clone(),
                ca: self.tls.ca.clone(),
                cert: self.tls.cert.clone(),
                key: self.tls.key.clone(),
            })),
            _ => Err(UsageError(
                "give either --db FILE --store-key FILE (a local store) or --server URL --admin-token-file FILE (an owner's server)"
                    .into(),
            )),
        }
    }
}

/// Exactly one identifier.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct IdentifierArgs {
    /// An email address (normalized under the store's profile).
    #[arg(long, value_name = "ADDRESS")]
    pub email: Option<String>,
    /// A phone number (E.164, or national with --region).
    #[arg(long, value_name = "NUMBER")]
    pub phone: Option<String>,
    /// A member (record) id, as in the id column of member files.
    #[arg(long, value_name = "MEMBER_ID")]
    pub id: Option<String>,
}

impl IdentifierArgs {
    fn get(&self) -> (EntryKind, &str) {
        match (&self.email, &self.phone, &self.id) {
            (Some(v), _, _) => (EntryKind::Email, v),
            (_, Some(v), _) => (EntryKind::Phone, v),
            (_, _, Some(v)) => (EntryKind::Id, v),
            // clap's required group guarantees one of them.
            (None, None, None) => (EntryKind::Id, ""),
        }
    }
}

/// Normalization settings. The store records its profile when it is created.
#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// Local store: normalization profile: a new store records it (default idmatch-v1); an existing store must match (a server applies its store's own).
    #[arg(long, value_parser = parse_profile, conflicts_with = "server")]
    pub profile: Option<Profile>,
    /// Default region (ISO 3166 alpha-2) for national-format phone numbers.
    #[arg(long, value_parser = parse_region_arg)]
    pub region: Option<Region>,
}

#[derive(Debug, Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identifier: IdentifierArgs,
    #[command(flatten)]
    pub normalize: NormalizeArgs,
    /// Where the change comes from, recorded with the entry and in the audit trail (e.g. account-settings).
    #[arg(long, default_value = "cli", value_name = "LABEL")]
    pub source: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The list to import: CSV/TSV with a header (columns detected as for every input).
    #[arg(value_name = "LIST")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub normalize: NormalizeArgs,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// Source label recorded with the entries and in the audit trail (default: import:<file name>).
    #[arg(long, value_name = "LABEL")]
    pub source: Option<String>,
    /// Import the readable rows and skip (count and list) the rejected ones; by default a file with any rejected row or identifier is refused whole.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Write every rejected row and identifier (line, column, reason; no values) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Entries per transaction (local: 1,000,000, each committed batch reported on stderr; --server: 10,000 per ImportBatch).
    #[arg(long, hide = true)]
    pub batch_size: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identifier: IdentifierArgs,
    #[command(flatten)]
    pub normalize: NormalizeArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: LocalStoreArgs,
    /// Write the CSV to this file instead of stdout (`-` is stdout).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// How many rejects the import prints on stderr (all of them go to --rejects).
const REJECTS_SHOWN: usize = 10;

pub fn run(args: OptoutArgs) -> CliResult {
    match args.action {
        Action::Add(args) => change(args, true),
        Action::Remove(args) => change(args, false),
        Action::Import(args) => import(args),
        Action::Check(args) => check(args),
        Action::Count(args) => count(args),
        Action::Export(args) => export(args),
        Action::Audit(args) => audit(args),
        Action::Verify(args) => verify(args),
    }
}

fn open(
    store: &LocalStoreArgs,
    create: bool,
    profile: Option<Profile>,
) -> Result<OptOutStore, Box<dyn std::error::Error>> {
    let key = Key::load(&store.store_key)?;
    let options = StoreOptions { create, profile, ..StoreOptions::default() };
    Ok(OptOutStore::open(&store.db, &key, &options)?)
}

fn counts_text(counts: &Counts) -> String {
    format!("email {}, phone {}, id {}", counts.email, counts.phone, counts.id)
}

/// Runs `work` against the owner's server: one connection, on a runtime of its own.
fn remote<T>(
    options: &AdminOptions,
    work: impl AsyncFnOnce(&mut AdminClient) -> Result<T, ClientError>,
) -> CliResult<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(runtime.block_on(async {
        let mut client = AdminClient::connect(options).await?;
        work(&mut client).await
    })?)
}

fn change(args: ChangeArgs, add: bool) -> CliResult {
    let (kind, value) = args.identifier.get();
    let (region, source) = (args.normalize.region, args.source.as_str());
    let changed = match args.store.location()? {
        Location::Local(local) => {
            let store = open(&local, add, args.normalize.profile)?;
            if add { store.add(kind, value, region, source)? } else { store.remove(kind, value, region, source)? }
        }
        Location::Remote(options) => remote(&options, async |client| {
            if add {
                client.add(kind, value, region, source).await
            } else {
                client.remove(kind, value, region, source).await
            }
        })?,
    };
    match (add, changed) {
        (true, true) => println!("added: {kind} opted out (source {source})"),
        (true, false) => println!("already opted out: {kind} (nothing changed)"),
        (false, true) => println!("removed: {kind} opted back in (source {source})"),
        (false, false) => println!("not opted out: {kind} (nothing removed)"),
    }
    Ok(())
}

fn check(args: CheckArgs) -> CliResult {
    let (kind, value) = args.identifier.get();
    let region = args.normalize.region;
    let out = match args.store.location()? {
        Location::Local(local) => open(&local, false, args.normalize.profile)?.is_opted_out(kind, value, region)?,
        Location::Remote(options) => remote(&options, async |client| client.is_opted_out(kind, value, region).await)?,
    };
    println!("{}", if out { "opted out" } else { "not opted out" });
    Ok(())
}

fn count(args: StoreArgs) -> CliResult {
    let counts = match args.location()? {
        Location::Local(local) => open(&local, false, None)?.count()?,
        Location::Remote(options) => remote(&options, async |client| client.count().await)?,
    };
    println!("{} opt-outs ({})", counts.total(), counts_text(&counts));
    Ok(())
}

fn verify(args: LocalStoreArgs) -> CliResult {
    let store = open(&args, false, None)?;
    let problems = store.backend().verify()?;
    if problems.is_empty() {
        println!("ok: {} opt-outs, profile {}", store.count()?.total(), store.profile());
        return Ok(());
    }
    for problem in &problems {
        println!("{problem}");
    }
    Err(format!("opt-out store {}: {} problems found", args.db.display(), problems.len()).into())
}

/// A CSV writer on `--output` or stdout.
type CsvOut = csv::Writer<Box<dyn Write>>;

/// A CSV writer on `--output` or stdout (no `--output`, or `-`), and how to name it
/// in errors.
fn csv_output(output: Option<&Path>) -> Result<(CsvOut, String), Box<dyn std::error::Error>> {
    Ok(match output.filter(|path| path.as_os_str() != idmatch::records::STDIN) {
        Some(path) => {
            let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (csv::Writer::from_writer(Box::new(BufWriter::new(file))), path.display().to_string())
        }
        None => (csv::Writer::from_writer(Box::new(BufWriter::new(std::io::stdout().lock()))), "stdout".to_owned()),
    })
}

fn export(args: ExportArgs) -> CliResult {
    let store = open(&args.store, false, None)?;
    let (mut out, name) = csv_output(args.output.as_deref())?;
    let named = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    out.write_record(["digest_hex", "kind", "added_at", "source"]).map_err(|e| named(&e))?;
    let written = store
        .backend()
        .export(&mut |row| {
            let record = [row.digest.to_hex(), row.kind.label().to_owned(), format_rfc3339_ms(row.added_ms)];
            out.write_record([&record[0], &record[1], &record[2], &row.source]).map_err(std::io::Error::other)
        })
        .map_err(|e| named(&e))?;
    out.flush().map_err(|e| named(&e))?;
    if name != "stdout" {
        eprintln!("exported {written} opt-outs to {name}");
    }
    Ok(())
}

fn audit(args: ExportArgs) -> CliResult {
    let store = open(&args.store, false, None)?;
    let (mut out, name) = csv_output(args.output.as_deref())?;
    let named = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    out.write_record(["id", "at", "source", "action", "kind", "requested", "changed"]).map_err(|e| named(&e))?;
    let written = store
        .backend()
        .audit(&mut |event| {
            out.write_record([
                event.id.to_string().as_str(),
                &format_rfc3339_ms(event.at_ms),
                &event.source,
                event.action.label(),
                event.kind.label(),
                &event.requested.to_string(),
                &event.changed.to_string(),
            ])
            .map_err(std::io::Error::other)
        })
        .map_err(|e| named(&e))?;
    out.flush().map_err(|e| named(&e))?;
    if name != "stdout" {
        eprintln!("exported {written} audit events to {name}");
    }
    Ok(())
}

/// The reject report: the user's `--rejects` file, or a temporary one whose first
/// lines are shown and which is removed afterwards (created private, mode 0600, under
/// an unpredictable name).
struct Rejects {
    path: PathBuf,
    /// Removes the temporary report when dropped.
    temporary: Option<tempfile::TempPath>,
}

impl Rejects {
    fn new(requested: Option<PathBuf>) -> std::io::Result<Rejects> {
        Ok(match requested {
            Some(path) => Rejects { path, temporary: None },
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("idmatch-optout-rejects-")
                    .suffix(".csv")
                    .tempfile()?
                    .into_temp_path();
                Rejects { path: temp.to_path_buf(), temporary: Some(temp) }
            }
        })
    }

    /// Prints the first rejects (`line N, column C: reason`) on stderr.
    fn show(&self, total: u64) {
        let Ok(file) = File::open(&self.path) else { return };
        let lines: Vec<String> =
            BufReader::new(file).lines().skip(1).take(REJECTS_SHOWN).map_while(Result::ok).collect();
        for line in &lines {
            let mut fields = line.splitn(3, ',');
            if let (Some(row), Some(column), Some(reason)) = (fields.next(), fields.next(), fields.next()) {
                let column = if column.is_empty() { String::new() } else { format!(", column {column}") };
                eprintln!("  line {row}{column}: {reason}");
            }
        }
        let rest = total.saturating_sub(lines.len() as u64);
        if rest > 0 {
            if self.temporary.is_some() {
                eprintln!("  … and {rest} more (write them all with --rejects FILE)");
            } else {
                eprintln!("  … and {rest} more in {}", self.path.display());
            }
        }
    }
}

/// The source label of an import: `--source`, or `import:<file name>`.
fn import_source(args: &ImportArgs) -> String {
    args.source.clone().unwrap_or_else(|| {
        format!(
            "import:{}",
            args.file.file_name().map_or_else(|| args.file.display().to_string(), |n| n.to_string_lossy().into_owned())
        )
    })
}

/// Imports a list, into a local store or through an owner's server.
fn import(args: ImportArgs) -> CliResult {
    match args.store.location()? {
        Location::Local(local) => import_local(&args, &local),
        Location::Remote(options) => import_remote(&args, &options),
    }
}

/// Imports a list into a local store. A store this import created is removed again
/// when the import fails, so a failed first import (a missing or malformed file)
/// never leaves an empty store behind for a match to accept; a file with data rows
/// none of which could be imported (every row skipped under `--skip-bad-rows`) is a
/// failure too.
fn import_local(args: &ImportArgs, local: &LocalStoreArgs) -> CliResult {
    let created = !local.db.exists();
    let result = import_into_store(args, local);
    if result.is_err() && created {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = local.db.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn import_into_store(args: &ImportArgs, local: &LocalStoreArgs) -> CliResult {
    if args.file.as_os_str() != idmatch::records::STDIN {
        // Before the store is created: a missing or unreadable file creates nothing.
        File::open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    }
    let store = open(local, true, args.normalize.profile)?;
    let source = import_source(args);
    let rejects = Rejects::new(args.rejects.clone())?;
    let mut options = ImportOptions::new(source.clone());
    options.columns = args.columns.spec();
    options.region = args.normalize.region;
    options.batch_size = args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    options.strict = !args.skip_bad_rows;
    options.progress = Bars::on_stderr(true);
    options.rejects = Some(RejectWriter::create(&rejects.path, false)?);
    let mut on_batch = |b: &BatchReport| {
        eprintln!(
            "committed batch {}/{}: {} entries ({} new); {} of {} written",
            b.index, b.batches, b.entries, b.added, b.committed, b.total
        );
    };
    let report = match store.import_file(&args.file, options, &mut on_batch) {
        Ok(report) => report,
        Err(err @ StoreError::StrictRejected { rejected, bad_rows, .. }) => {
            eprintln!("rejected rows and identifiers:");
            rejects.show(rejected + bad_rows);
            return Err(err.into());
        }
        Err(err) => return Err(err.into()),
    };
    print!("{}", format_stats(&args.file, &report.read));
    println!(
        "  opt-outs: {} distinct ({} identifiers and ids listed, {} ids)",
        report.distinct, report.candidates, report.ids
    );
    println!("  added: {} ({})", report.added.total(), counts_text(&report.added));
    println!("  already present: {} ({})", report.present.total(), counts_text(&report.present));
    println!("  batches committed: {} (source {source})", report.batches);
    let now = store.count()?;
    println!("store {} now holds {} opt-outs ({})", local.db.display(), now.total(), counts_text(&now));
    imported_something(args, &report.read, &rejects, report.candidates)
}

/// Imports a list through the owner's server: checked whole first (nothing is sent
/// if a row is refused), then streamed in batches.
fn import_remote(args: &ImportArgs, options: &AdminOptions) -> CliResult {
    let source = import_source(args);
    let rejects = Rejects::new(args.rejects.clone())?;
    let list = ImportList {
        file: args.file.clone(),
        columns: args.columns.spec(),
        region: args.normalize.region,
        source: source.clone(),
        skip_bad_rows: args.skip_bad_rows,
        rejects: Some(RejectWriter::create(&rejects.path, false)?),
        batch_entries: args.batch_size.unwrap_or(DEFAULT_BATCH_ENTRIES),
        progress: Bars::on_stderr(true),
    };
    let result = remote(options, async |client| {
        let report = client.import(list).await?;
        let now = client.count().await?;
        Ok((report, now))
    });
    let (report, now) = match result {
        Ok(done) => done,
        Err(err) => {
            if let Some(ClientError::OptOut(OptOutError::Store(StoreError::StrictRejected {
                rejected,
                bad_rows,
                ..
            }))) = err.downcast_ref::<ClientError>()
            {
                eprintln!("rejected rows and identifiers (nothing was sent):");
                rejects.show(rejected + bad_rows);
            }
            return Err(err);
        }
    };
    print!("{}", format_stats(&args.file, &report.read));
    println!(
        "  opt-outs: {} identifiers and ids sent ({} ids), checked under the store's profile {}",
        report.sent, report.ids, report.profile
    );
    println!("  added: {}", report.added);
    println!("  already present: {} (repeats within the list included)", report.already_present);
    if !report.rejected_by_server.is_empty() {
        let reasons: Vec<String> = report.rejected_by_server.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!("  rejected by the server: {}", reasons.join(", "));
    }
    println!("  batches committed: {} (source {source})", report.batches);
    println!("server {} now holds {} opt-outs ({})", options.server, now.total(), counts_text(&now));
    imported_something(args, &report.read, &rejects, report.sent)
}

/// What both imports report after their summary: the rejects that were skipped, an
/// empty file, and a failure when the file has rows but none could be imported.
fn imported_something(args: &ImportArgs, read: &ReadStats, rejects: &Rejects, entries: u64) -> CliResult {
    let problems = read.rejected_total() + read.bad_rows_total();
    if problems > 0 {
        eprintln!("rejected rows and identifiers (not imported):");
        rejects.show(problems);
    }
    super::matching::warn_if_empty(&args.file.display().to_string(), read);
    if read.rows > 0 && entries == 0 {
        return Err(format!(
            "{}: none of its {} rows could be imported ({problems} rejected identifiers and bad rows); nothing was added",
            args.file.display(),
            read.rows
        )
        .into());
    }
    Ok(())
}
