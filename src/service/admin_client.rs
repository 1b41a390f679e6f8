//! The owner's client for the `OptOutAdmin` service: `idmatch optout … --server URL`
//! manages the opt-out store of a running `idmatch serve` (add, remove, check,
//! count, bulk import), authenticated with the admin bearer token.
//!
//! [`AdminClient::connect`] checks the URL and TLS files as the partner's client
//! does ([`client`](super::client)), reads the token file (refused when others can
//! read it) and connects once. A refused call maps to the partner client's
//! [`ClientError`] categories and exit codes (UNAUTHENTICATED 5, PERMISSION_DENIED
//! 6, …). Neither the token nor an identifier ever appears in an error.
//!
//! [`AdminClient::import`] streams a CSV/TSV list as `ImportBatch` messages and fails
//! closed like the local import. The list is read twice, row by row, with the
//! reader every input goes through ([`records::read_rows`]: the same columns, rules
//! and rejects, under the store's own profile, which the server reports): the first
//! pass checks every row, and unless bad rows are to be skipped a list with any
//! rejected row or identifier is refused before anything is sent; the second pass
//! sends. Memory is one batch, whatever the size of the list. The server commits
//! each batch as it arrives, so a list that changes between the passes stops the
//! import where the change is seen; the batches sent before it stay imported.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::client::{ClientError, TlsFiles, authorize, check_server, connect_to};
use super::driver::error_kind;
use crate::key::read_secret_file;
use crate::normalize::{Kind, Normalizer, Profile, Region};
use crate::optout::OptOutError;
use crate::optout::store::{Counts, EntryKind, StoreError, check_source};
use crate::progress::Progress;
use crate::psi::truncated;
use crate::records::{self, BadRows, ColumnSpec, Mode, ReadError, ReadOptions, ReadStats, RejectWriter, Row};
use crate::wire;
use crate::wire::opt_out_admin_client::OptOutAdminClient;

/// Entries per `ImportBatch` unless told otherwise (one transaction each on the
/// server).
pub const DEFAULT_BATCH_ENTRIES: usize = 10_000;

/// Largest encoded batch sent, whatever the entry count: well under the server's
/// default message limit (4 MiB).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Longest server status message shown whole.
const SERVER_MESSAGE_MAX_CHARS: usize = 1024;

/// Where the owner's server is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// `https://host:port` (or `http://` for a loopback test server).
    pub server: String,
    /// File holding the admin bearer token (its SHA-256 is `[optout_store]
    /// admin_token_sha256` in server.toml); must be private to its owner.
    pub token_file: PathBuf,
    /// CA bundle to verify the server (default: the system's trust store).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for a server that requires mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `cert`.
    pub key: Option<PathBuf>,
}

/// A list to import ([`AdminClient::import`]).
pub struct ImportList {
    /// The CSV/TSV file (with a header). Not standard input: it is read twice.
    pub file: PathBuf,
    /// Column names (unset ones are detected from the header).
    pub columns: ColumnSpec,
    /// Default region for national-format phone numbers (a row's region column
    /// overrides it).
    pub region: Option<Region>,
    /// The source label recorded with the entries and in the server's audit trail.
    pub source: String,
    /// Skip (and count) rejected rows and identifiers instead of refusing the list.
    pub skip_bad_rows: bool,
    /// Where the checking pass reports every rejected row and identifier.
    pub rejects: Option<RejectWriter>,
    /// Entries per batch (at most; a batch is also kept under 1 MiB).
    pub batch_entries: usize,
    /// Where to report reading the list (both passes), if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
}

/// What a remote import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteImportReport {
    /// How the list was read (the checking pass).
    pub read: ReadStats,
    /// The store's normalization profile, under which the list was checked.
    pub profile: Profile,
    /// Non-empty record ids listed (when the list has an id column).
    pub ids: u64,
    /// Entries sent: identifiers and ids, a value repeated across rows each time.
    pub sent: u64,
    /// Batches the server committed.
    pub batches: u64,
    /// Entries that were new.
    pub added: u64,
    /// Entries already in the store (repeats within the list included).
    pub already_present: u64,
    /// Entries the server rejected, by reason (none when the profiles agree).
    pub rejected_by_server: BTreeMap<String, u64>,
}

/// A connection to the owner's `OptOutAdmin` service.
pub struct AdminClient {
    server: String,
    client: OptOutAdminClient<Channel>,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient").field("server", &self.server).finish_non_exhaustive()
    }
}

impl AdminClient {
    /// Checks the URL against the TLS files (a usage error before any file is read),
    /// reads the token file and connects.
    pub async fn connect(options: &AdminOptions) -> Result<AdminClient, ClientError> {
        let tls = TlsFiles { ca: options.ca.as_ref(), cert: options.cert.as_ref(), key: options.key.as_ref() };
        check_server(&options.server, tls)?;
        let bytes = read_secret_file(&options.token_file, "admin token file")?;
        let token = Zeroizing::new(String::from_utf8_lossy(&bytes).trim().to_owned());
        if token.is_empty() {
            return Err(ClientError::Unauthenticated(format!(
                "the admin token file {} is empty",
                options.token_file.display()
            )));
        }
        let channel = connect_to(&options.server, tls).await?;
        Ok(AdminClient { server: options.server.clone(), client: OptOutAdminClient::new(channel), token })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, ClientError> {
        let mut request = Request::new(message);
        authorize(&mut request, Some(&self.token))?;
        Ok(request)
    }

    /// Opts one identifier out (normalized by the server under the store's
    /// profile); `true` if it was not opted out before.
    pub async fn add(
        &mut self,
        kind: EntryKind,
        value: &str,
        region: Option<Region>,
        source: &str,
    ) -> Result<bool, ClientError> {
        self.change_one(true, kind, value, region, source).await
    }

    /// Opts one identifier back in; `true` if it was opted out.
    pub async fn remove(
        &mut self,
        kind: EntryKind,
        value: &str,
        region: Option<Region>,
        source: &str,
    ) -> Result<bool, ClientError> {
        self.change_one(false, kind, value, region, source).await
    }

    /// `Add` (`add`) or `Remove`: whether the store changed.
    async fn change_one(
        &mut self,
        add: bool,
        kind: EntryKind,
        value: &str,
        region: Option<Region>,
        source: &str,
    ) -> Result<bool, ClientError> {
        let request = self.request(change(kind, value, region, source))?;
        let result = if add { self.client.add(request).await } else { self.client.remove(request).await };
        Ok(result.map_err(|s| refused(&self.server, &s))?.into_inner().changed)
    }

    /// Whether one identifier is opted out now.
    pub async fn is_opted_out(
        &mut self,
        kind: EntryKind,
        value: &str,
        region: Option<Region>,
    ) -> Result<bool, ClientError> {
        let query = wire::OptOutQuery { kind: wire_kind(kind) as i32, value: value.to_owned(), region: code(region) };
        let request = self.request(query)?;
        let result = self.client.check(request).await.map_err(|s| refused(&self.server, &s))?;
        Ok(result.into_inner().opted_out)
    }

    /// The store's entries, by kind.
    pub async fn count(&mut self) -> Result<Counts, ClientError> {
        Ok(self.counts().await?.0)
    }

    /// The store's entries and its profile (`None` from a server too old to say).
    async fn counts(&mut self) -> Result<(Counts, Option<Profile>), ClientError> {
        let request = self.request(wire::CountRequest {})?;
        let counts = self.client.count(request).await.map_err(|s| refused(&self.server, &s))?.into_inner();
        let profile = match counts.profile.as_str() {
            "" => None,
            name => Some(name.parse::<Profile>().map_err(|e| ClientError::Refused(truncated(&e, 200)))?),
        };
        Ok((Counts { email: counts.email, phone: counts.phone, id: counts.id }, profile))
    }

    /// Imports a list: checks it whole under the store's profile, then streams it in
    /// batches (see the module documentation). Fails with the local import's
    /// [`StoreError::StrictRejected`] (nothing sent) when a row or identifier is
    /// rejected and `skip_bad_rows` is off.
    pub async fn import(&mut self, list: ImportList) -> Result<RemoteImportReport, ClientError> {
        if list.file.as_os_str() == records::STDIN {
            return Err(ClientError::Usage(
                "optout import --server reads the list twice (checks every row, then sends it): give a file, not -"
                    .into(),
            ));
        }
        check_source(&list.source).map_err(store_error)?;
        // Authenticates, and gives the profile to check the list under.
        let profile = self.counts().await?.1.ok_or_else(|| {
            ClientError::Import(
                "the server does not report its store's normalization profile (an older idmatch serve), so the list \
                 cannot be checked before it is sent; upgrade the server"
                    .into(),
            )
        })?;
        let file = Arc::new(list.file);
        let stamp = FileStamp::of(&file)?;
        let normalizer = Normalizer::new(profile, list.region);

        // First pass: check every row; nothing is sent.
        // Bad rows are counted in this pass and judged after it.
        let mut options = ReadOptions::new(normalizer.clone(), Mode::List(BadRows::Skip));
        options.columns = list.columns.clone();
        options.progress = list.progress.clone();
        options.rejects = list.rejects;
        let path = file.clone();
        let (read, planned) = tokio::task::spawn_blocking(move || {
            let mut planned = Planned::default();
            let read = records::read_rows(&path, options, &mut |row: &Row<'_>| {
                planned.count(row);
                ControlFlow::Continue(())
            })?;
            Ok::<_, ClientError>((read, planned))
        })
        .await
        .map_err(|e| ClientError::Stream(e.to_string()))??;
        if let (false, Some(refused)) = (list.skip_bad_rows, StoreError::strict_rejected(&file, &read)) {
            return Err(store_error(refused));
        }
        let mut report = RemoteImportReport { read, profile, ids: planned.ids, ..RemoteImportReport::default() };
        if planned.entries == 0 {
            return Ok(report);
        }

        // Second pass: the same rows, sent in batches as they are read.
        if stamp.changed(&file)? {
            return Err(ClientError::Import(format!(
                "{}: the list changed after it was checked (its size or modification time differs); nothing was sent",
                file.display()
            )));
        }
        // A row rejected now was not rejected in the first pass: the file changed.
        let mut options = ReadOptions::new(normalizer, Mode::List(BadRows::skip_if(list.skip_bad_rows)));
        options.columns = list.columns;
        options.progress = list.progress.clone();
        let (tx, rx) = mpsc::channel::<wire::ImportBatch>(2);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (file, stop) = (file.clone(), stop.clone());
            let mut batcher = Batcher::new(list.source.clone(), tx.clone(), list.batch_entries, list.region);
            tokio::task::spawn_blocking(move || {
                let read = records::read_rows(&file, options, &mut |row: &Row<'_>| {
                    if stop.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { batcher.push(row) }
                });
                let sent = batcher.finish(read.is_ok());
                (read, sent)
            })
        };
        let server = self.server.clone();
        let request = self.request(ReceiverStream::new(rx))?;
        let call = self.client.import(request);
        tokio::pin!(call);
        // `tx` is kept here until the read is judged, so the stream cannot end (and
        // the server commit what it has) before.
        let read_result = tokio::select! {
            joined = reader => joined,
            response = &mut call => {
                stop.store(true, Ordering::Relaxed);
                return Err(match response {
                    Err(status) => refused(&server, &status),
                    Ok(_) => ClientError::Refused("the server ended the import before the list was sent".into()),
                });
            }
        };
        let problem = match read_result {
            Err(e) => Some(format!("reading failed: {e}")),
            Ok((_, None)) => {
                // The server stopped taking batches: its answer says why.
                drop(tx);
                return Err(match call.await {
                    Err(status) => refused(&server, &status),
                    Ok(_) => ClientError::Refused("the server ended the import before the list was sent".into()),
                });
            }
            Ok((Err(ReadError::Incomplete { numbering, line, reason, .. }), Some(_))) => {
                Some(format!("the list changed after it was checked: {numbering} {line} is refused now ({reason})"))
            }
            Ok((Err(e), Some(_))) => Some(e.to_string()),
            Ok((Ok(again), Some(sent))) => {
                report.sent = sent;
                if stamp.changed(&file).unwrap_or(true) {
                    Some("the list changed after it was checked: its size or modification time differs".into())
                } else if again != report.read || sent != planned.entries {
                    Some("the list changed after it was checked: its rows differ".into())
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            // The protocol has no abort message: a batch without a source is
            // refused by the server, which then stops reading; the batches sent
            // before it stay committed.
            let _ = tx.send(wire::ImportBatch::default()).await;
            drop(tx);
            let _ = call.await;
            return Err(ClientError::Import(format!(
                "{}: the import was stopped ({problem}); the batches the server had received before stay imported \
                 (importing the list again is safe)",
                file.display()
            )));
        }
        drop(tx);
        let summary = call.await.map_err(|s| refused(&server, &s))?.into_inner();
        report.batches = summary.batches;
        report.added = summary.added;
        report.already_present = summary.already_present;
        report.rejected_by_server = summary.rejected.into_iter().collect();
        let refused_here: u64 = report.rejected_by_server.values().sum();
        if refused_here > 0 && !list.skip_bad_rows {
            return Err(ClientError::Import(format!(
                "{}: the server rejected {refused_here} entries that were checked here under its profile {profile} \
                 ({}); the others were imported",
                file.display(),
                report.rejected_by_server.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(report)
    }
}

/// The client error for a refused call: the partner client's categories for
/// credentials and limits, unreachable for a broken connection.
fn refused(server: &str, status: &tonic::Status) -> ClientError {
    let message = truncated(status.message(), SERVER_MESSAGE_MAX_CHARS);
    match status.code() {
        code @ (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted) => {
            ClientError::from_status(code, &message, error_kind(status).as_deref())
        }
        // A transport failure carries its cause; a status the server sent does not.
        tonic::Code::Unavailable if std::error::Error::source(status).is_some() => {
            ClientError::Unreachable { server: server.to_owned(), reason: message }
        }
        tonic::Code::Unimplemented => ClientError::Refused(
            "the server has no opt-out store (no [optout_store] in its server.toml), so no OptOutAdmin service".into(),
        ),
        tonic::Code::OutOfRange => ClientError::Refused(format!(
            "OutOfRange: {message} (an import batch is at most {} KiB: the server's [limits] max_message_bytes must \
             allow it)",
            MAX_BATCH_BYTES >> 10
        )),
        code => ClientError::Refused(format!("{code:?}: {message}")),
    }
}

fn store_error(error: StoreError) -> ClientError {
    ClientError::OptOut(OptOutError::Store(error))
}

fn wire_kind(kind: EntryKind) -> wire::EntryKind {
    match kind {
        EntryKind::Email => wire::EntryKind::Email,
        EntryKind::Phone => wire::EntryKind::Phone,
        EntryKind::Id => wire::EntryKind::Id,
    }
}

fn code(region: Option<Region>) -> String {
    region.map(|r| r.to_string()).unwrap_or_default()
}

fn change(kind: EntryKind, value: &str, region: Option<Region>, source: &str) -> wire::OptOutChange {
    wire::OptOutChange {
        kind: wire_kind(kind) as i32,
        value: value.to_owned(),
        region: code(region),
        source: source.to_owned(),
    }
}

/// A row's entries: its valid identifiers (a phone with the region it was read
/// under) and its non-empty id.
fn entries<'r>(row: &'r Row<'_>, default_region: Option<Region>) -> impl Iterator<Item = wire::ImportEntry> + 'r {
    let identifiers = row.identifiers().map(move |(kind, value)| {
        let (kind, region) = match kind {
            Kind::Email => (EntryKind::Email, None),
            Kind::Phone => (EntryKind::Phone, row.region.or(default_region)),
        };
        wire::ImportEntry { kind: wire_kind(kind) as i32, value: value.to_owned(), region: code(region) }
    });
    let id = row.id.filter(|id| !id.is_empty()).map(|id| wire::ImportEntry {
        kind: wire::EntryKind::Id as i32,
        value: id.to_owned(),
        region: String::new(),
    });
    identifiers.chain(id)
}

/// What the checking pass found to send.
#[derive(Default)]
struct Planned {
    entries: u64,
    ids: u64,
}

impl Planned {
    fn count(&mut self, row: &Row<'_>) {
        let id = u64::from(row.id.is_some_and(|id| !id.is_empty()));
        self.ids += id;
        self.entries += row.identifiers().count() as u64 + id;
    }
}

/// Groups the sending pass's entries into batches and hands them to the stream.
struct Batcher {
    source: String,
    tx: mpsc::Sender<wire::ImportBatch>,
    batch_entries: usize,
    default_region: Option<Region>,
    entries: Vec<wire::ImportEntry>,
    bytes: usize,
    sent: u64,
    /// The server stopped taking batches.
    closed: bool,
}

impl Batcher {
    fn new(
        source: String,
        tx: mpsc::Sender<wire::ImportBatch>,
        batch_entries: usize,
        default_region: Option<Region>,
    ) -> Batcher {
        let batch_entries = batch_entries.max(1);
        Batcher { source, tx, batch_entries, default_region, entries: Vec::new(), bytes: 0, sent: 0, closed: false }
    }

    fn push(&mut self, row: &Row<'_>) -> ControlFlow<()> {
        for entry in entries(row, self.default_region) {
            let size = entry.encoded_len() + 4;
            if !self.entries.is_empty()
                && (self.entries.len() >= self.batch_entries || self.bytes + size > MAX_BATCH_BYTES)
            {
                self.send()?;
            }
            self.bytes += size;
            self.entries.push(entry);
        }
        ControlFlow::Continue(())
    }

    fn send(&mut self) -> ControlFlow<()> {
        let entries = std::mem::take(&mut self.entries);
        let count = entries.len() as u64;
        self.bytes = 0;
        let batch = wire::ImportBatch { source: self.source.clone(), entries };
        if self.tx.blocking_send(batch).is_err() {
            self.closed = true;
            return ControlFlow::Break(());
        }
        self.sent += count;
        ControlFlow::Continue(())
    }

    /// Sends the last batch when the whole list was read; the entries sent, or
    /// `None` if the server stopped taking them.
    fn finish(mut self, read_whole: bool) -> Option<u64> {
        if read_whole && !self.closed && !self.entries.is_empty() {
            let _ = self.send();
        }
        (!self.closed).then_some(self.sent)
    }
}

/// A file's length and modification time, to see that it did not change between
/// the checking and the sending pass.
#[derive(PartialEq, Eq)]
struct FileStamp(u64, Option<SystemTime>);

impl FileStamp {
    fn of(path: &Path) -> Result<FileStamp, ClientError> {
        let meta = std::fs::metadata(path).map_err(|source| ClientError::File { path: path.to_owned(), source })?;
        Ok(FileStamp(meta.len(), meta.modified().ok()))
    }

    fn changed(&self, path: &Path) -> Result<bool, ClientError> {
        Ok(FileStamp::of(path)? != *self)
    }
}
