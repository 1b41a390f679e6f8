//! The partner's client: `idmatch match --server https://host:port …`. Reads the
//! partner's file, applies its suppressions, and runs the partner state machine over
//! one gRPC stream to the owner's server, or over the shard streams of a run
//! (docs/PROTOCOL.md §13.4): all `N` of them from this process ([`run_sharded`]),
//! or only shard `i` of a run whose other shards other processes run
//! ([`run_one_shard`], `--shard i/N --run-id`; [`run_prepared_shard`] for a shard
//! set tokenized elsewhere, as Spark's executors do).
//!
//! The output file is prepared before anything else (a temporary file next to it,
//! renamed into place only when the match succeeded), so an unwritable `--output`
//! fails before the owner runs, charges or records a match.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::convert::{owner_from_wire, partner_to_wire};
use super::driver::{DriveError, INBOUND_QUEUE, Inbound, drive, error_kind, receive_with_deadline, send_with_deadline};
use super::epsilon_ledger::LedgerError;
use crate::key::{Key, KeyError, read_secret_file};
use crate::local_match::memory;
use crate::normalize::{Normalizer, Profile};
use crate::optout::{BadRows, OptOutError};
use crate::output::{OutputError, Staged, write_matches};
use crate::prepare::{self, Filter, PrepareError, Prepared};
use crate::progress::{self, Meter, Progress, Unit};
use crate::psi::oprf::{self, ChunkLimits, OprfError, OprfPartner};
use crate::psi::{
    KindSet, OwnerMessage, Partner, PartnerConfig, PartnerMessage, PartnerOutcome, PreparedSet, Protocol,
    ProtocolChoice, ProtocolChoiceError, ProtocolError, Reveal, SetupError, ShardRun, check_accept,
    merge_matched_records, truncated, untrusted,
};
use crate::records::{ColumnSpec, Mode, ReadError, ReadOptions, ReadStats};
use crate::shard::ShardRule;
use crate::token::{KeyFingerprint, Tokenizer};
use crate::wire::matcher_client::MatcherClient;

/// Everything the client needs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `https://host:port` (or `http://` for a loopback test server).
    pub server: String,
    /// The campaign id on the server.
    pub campaign: String,
    /// The campaign key file shared with the owner.
    pub key_file: PathBuf,
    /// The partner's file (CSV/TSV with a header).
    pub input: PathBuf,
    /// Where `record_id,matched_kinds` is written (`partner` and `both` modes only);
    /// created before connecting, so an unwritable path fails early.
    pub output: PathBuf,
    /// Who learns what.
    pub reveal: Reveal,
    /// The matching engine: one, or `auto` (offer every engine that has the reveal
    /// mode, fastest first; the owner runs the first its campaign allows).
    pub protocol: ProtocolChoice,
    /// Normalization profile; must be the campaign's on the server.
    pub normalizer: Normalizer,
    /// Column names in the input file (unset ones are detected from the header).
    pub columns: ColumnSpec,
    /// The partner's suppression list: its records are removed before blinding.
    pub suppress: Option<PathBuf>,
    /// What to do with rows of the suppression list that cannot be read (default:
    /// refuse, before connecting).
    pub bad_list_rows: BadRows,
    /// CA bundle to verify the server (default: the system's web PKI roots are not
    /// used; a CA file is required for https).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS (not the campaign key); needs `cert`.
    pub key: Option<PathBuf>,
    /// File holding the bearer token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Longest wait for the server to send a message, or to take one of ours; the
    /// match then ends with an error.
    pub idle_timeout: Duration,
    /// Where to report reading the input and each phase of the match, if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSummary {
    /// The engine the owner chose.
    pub protocol: Protocol,
    /// The partner state machine's result (sizes, intersection, matched tokens).
    pub outcome: PartnerOutcome,
    /// Records written to the output file, in `partner` and `both` modes.
    pub matched_records: Option<u64>,
    /// Records removed by the suppression list before blinding.
    pub suppressed_records: u64,
    /// How the suppression list was read (with [`BadRows::Skip`], what was skipped).
    pub suppression_list: Option<ReadStats>,
    /// The run, for a sharded match: its id (the owner's results file is named after
    /// it), `N` and the run's whole set size.
    pub run: Option<Run>,
    /// The shard this process ran, when it ran only one of its run
    /// ([`run_one_shard`]): `outcome` then holds that shard's figures only.
    pub shard: Option<u32>,
}

/// Why the client failed; [`ClientError::exit_code`] gives distinct exit codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The campaign key file could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The input file or the suppression list could not be read, or the list applied.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// An opt-out list to import could not be read (`idmatch optout import --server`).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The server's opt-out store refused a request, or a list to import was
    /// refused before sending (`idmatch optout --server`).
    #[error(transparent)]
    OptOut(#[from] OptOutError),
    /// The output file could not be created, written or renamed into place.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A shard file to match from could not be used (`--shard-files`).
    #[error(transparent)]
    ShardFile(#[from] crate::shard::file::ShardFileError),
    /// The CA bundle, client certificate, client key or token file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The server URL and the TLS options do not fit together: no `http://` or
    /// `https://` scheme, `http://` to a host that is not loopback (the token would
    /// travel in clear), or `--ca`/`--cert`/`--key` with `http://` (exit code 2, as
    /// the command line's other usage errors).
    #[error("{0}")]
    Usage(String),
    /// The server URL is invalid or the connection failed for a non-TLS reason
    /// (exit code 3).
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The server URL, as given.
        server: String,
        /// Why the connection failed.
        reason: String,
    },
    /// TLS could not be set up (no `--ca` for https, `--cert` without `--key`, a bad
    /// PEM) or the handshake failed (exit code 4).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The server returned UNAUTHENTICATED, or the token cannot be sent as a header
    /// (exit code 5).
    #[error("the server refused the credentials: {0}")]
    Unauthenticated(String),
    /// The server returned PERMISSION_DENIED: campaign or reveal mode not allowed
    /// for this partner (exit code 6).
    #[error("not allowed: {0}")]
    PermissionDenied(String),
    /// The server returned RESOURCE_EXHAUSTED: concurrency, set-size or daily budget
    /// limit (exit code 7).
    #[error("limit reached: {0}")]
    ResourceExhausted(String),
    /// The owner's campaign key differs from ours (or the owner could not check it).
    #[error("the server refused the match: {0}")]
    KeyMismatch(String),
    /// The server ended the match with any other gRPC status (`Code: message`).
    #[error("the server ended the match: {0}")]
    Server(String),
    /// The server refused an opt-out store request (`idmatch optout --server`) with
    /// any other gRPC status (`Code: message`): a value that does not normalize, a
    /// store that cannot answer, or no opt-out store on the server.
    #[error("the server refused the request: {0}")]
    Refused(String),
    /// A remote opt-out import (`idmatch optout import --server`) was refused or
    /// stopped on this side: the list changed while it was sent, nothing in it could
    /// be checked, or the server rejected entries the check had passed.
    #[error("import: {0}")]
    Import(String),
    /// The engine asked for does not offer the reveal mode (`oprf` with `count`).
    #[error(transparent)]
    ProtocolChoice(#[from] ProtocolChoiceError),
    /// The owner sent something the partner's state machine refused.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The partner's state machine could not start (its random number generator).
    #[error("could not start the match: {0}")]
    Setup(#[from] SetupError),
    /// This side refused a measurement in which the owner learns exact or nearly
    /// exact figures (learner `owner` or `both`, no epsilon or one above
    /// `--max-epsilon`) because the partner did not say it trusts the owner with its
    /// split (`--trust-owner-with-split`): nothing about its people was sent (exit
    /// code 9).
    #[error(
        "the campaign's measurement releases figures to the owner (learner owner or both) with no epsilon, or one \
         above your --max-epsilon (then your noise is nearly always 0): a cheating owner could decode from them \
         which of your exposed people you put in which group (docs/PRIVACY.md). Nothing about your people was \
         sent. Give --trust-owner-with-split only if you trust the owner's server to follow the protocol, or ask \
         the owner for an epsilon within your maximum (your noise and its range proofs then protect your split) or \
         for learner = \"partner\""
    )]
    OwnerWouldLearn,
    /// The partner's epsilon ledger (`--epsilon-ledger`) refused the measurement:
    /// the exposure dataset's lifetime budget would be passed, or the owner would
    /// learn exact figures (exit code 9; nothing about the people was sent); or
    /// the ledger could not be read or written (exit code 1).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A measurement could not be run or its result written (`idmatch measure
    /// --server`): the exposures, the owner's messages or the output directory.
    #[error("measurement: {0}")]
    Measurement(String),
    /// The stream ended early (closed, idle or stalled past `idle_timeout`, broken),
    /// or a background task failed.
    #[error("{0}")]
    Stream(String),
}

impl ClientError {
    /// 2 usage, 3 unreachable, 4 TLS, 5 credentials, 6 permission, 7 limits, 8
    /// campaign key mismatch, 9 a measurement this side refused (the owner would
    /// learn figures it is not allowed to, or its epsilon ledger is spent), 1
    /// anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Unreachable { .. } => 3,
            ClientError::Tls(_) => 4,
            ClientError::Unauthenticated(_) => 5,
            ClientError::PermissionDenied(_) => 6,
            ClientError::ResourceExhausted(_) => 7,
            ClientError::KeyMismatch(_) => 8,
            ClientError::OwnerWouldLearn => 9,
            ClientError::Ledger(LedgerError::Spent { .. } | LedgerError::Exact) => 9,
            _ => 1,
        }
    }

    /// The client error for a status the server ended a call with: by its code,
    /// and by the kind of refusal it named (`kind`, the `idmatch-error` metadata
    /// entry), never by its message text.
    pub(super) fn from_status(code: tonic::Code, message: &str, kind: Option<&str>) -> ClientError {
        let message = truncated(message, SERVER_MESSAGE_MAX_CHARS);
        let key_refused = kind.is_some_and(|kind| {
            [ProtocolError::KeyMismatch, ProtocolError::KeyFingerprintMissing].iter().any(|e| kind == e.code())
        });
        match code {
            tonic::Code::Unauthenticated => ClientError::Unauthenticated(message),
            tonic::Code::PermissionDenied => ClientError::PermissionDenied(message),
            tonic::Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            tonic::Code::FailedPrecondition if key_refused => ClientError::KeyMismatch(message),
            code => ClientError::Server(format!("{code:?}: {message}")),
        }
    }
}

/// Longest server status message shown whole.
const SERVER_MESSAGE_MAX_CHARS: usize = 1024;

/// HTTP/2 keepalive: a PING this often, answered within [`KEEPALIVE_TIMEOUT`], or
/// the connection (and the match) is given up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

pub(super) fn read_file(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::File { path: path.clone(), source })
}

/// What every partner client loads before reading its input: the campaign key (and
/// its fingerprint for the hello), the bearer token, and the suppression list.
pub(super) struct PartnerFiles {
    pub key: Key,
    pub fingerprint: KeyFingerprint,
    pub token: Option<String>,
    pub suppress: Filter,
}

impl PartnerFiles {
    pub(super) fn load(
        key_file: &Path,
        token_file: Option<&PathBuf>,
        suppress: Option<&PathBuf>,
        normalizer: &Normalizer,
        bad_list_rows: BadRows,
    ) -> Result<PartnerFiles, ClientError> {
        let key = Key::load(key_file)?;
        let fingerprint = KeyFingerprint::of(&key);
        let token = token_file
            .map(|p| read_secret_file(p, "token file").map(|b| String::from_utf8_lossy(&b).trim().to_owned()))
            .transpose()?;
        let suppress = Filter::list_or_none(suppress.map(PathBuf::as_path), normalizer, bad_list_rows)?;
        Ok(PartnerFiles { key, fingerprint, token, suppress })
    }
}

/// Puts the bearer token, if any, in the request's `authorization` header.
pub(super) fn authorize<T>(request: &mut Request<T>, token: Option<&str>) -> Result<(), ClientError> {
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::Unauthenticated("the token file holds characters not allowed in a header".into())
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

/// The TLS files of a connection (`--ca`, `--cert`, `--key`).
#[derive(Clone, Copy, Default)]
pub(super) struct TlsFiles<'a> {
    pub ca: Option<&'a PathBuf>,
    pub cert: Option<&'a PathBuf>,
    pub key: Option<&'a PathBuf>,
}

impl ClientOptions {
    /// How this match reaches the owner and what it asks for.
    pub(crate) fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            server: self.server.clone(),
            campaign: self.campaign.clone(),
            key_file: self.key_file.clone(),
            reveal: self.reveal,
            protocol: self.protocol,
            profile: self.normalizer.profile(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token_file: self.token_file.clone(),
            idle_timeout: self.idle_timeout,
        }
    }
}

/// How a partner's stream reaches the owner and what it asks for: the part of
/// [`ClientOptions`] that [`run_prepared_shard`] needs, whose caller brings the set
/// already tokenized and split (Spark's executors).
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// `https://host:port` (or `http://` for a loopback test server).
    pub server: String,
    /// The campaign id on the server.
    pub campaign: String,
    /// The campaign key file shared with the owner (its fingerprint goes in the hello).
    pub key_file: PathBuf,
    /// Who learns what.
    pub reveal: Reveal,
    /// The matching engine: one, or `auto`.
    pub protocol: ProtocolChoice,
    /// The normalization profile the set was tokenized under; must be the campaign's.
    pub profile: Profile,
    /// CA bundle to verify the server (default: the system's trust store).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS (not the campaign key); needs `cert`.
    pub key: Option<PathBuf>,
    /// File holding the bearer token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Longest wait for the server to send a message, or to take one of ours.
    pub idle_timeout: Duration,
}

impl StreamOptions {
    fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles { ca: self.ca.as_ref(), cert: self.cert.as_ref(), key: self.key.as_ref() }
    }
}

/// Checks that `server` and the TLS files fit together, before any work and again
/// before connecting: `https://host[:port]` (TLS, the system's trust store or the
/// `--ca` file), or `http://` to a loopback host only (`localhost`, `127.0.0.0/8`,
/// `[::1]`), with no TLS files. Anything else would send the bearer token in clear
/// over a network or silently ignore a `--ca`, so it is refused as a usage error.
pub(super) fn check_server(server: &str, files: TlsFiles<'_>) -> Result<(), ClientError> {
    let usage = |problem: &str| ClientError::Usage(format!("--server {}: {problem}", untrusted(server)));
    let uri: tonic::transport::Uri =
        server.parse().map_err(|e| usage(&format!("not a URL ({e}); expected https://host:port")))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
            if !(host.eq_ignore_ascii_case("localhost") || ip.is_ok_and(|ip| ip.is_loopback())) {
                return Err(usage(
                    "http:// (no TLS) is allowed only to a loopback host (localhost, 127.0.0.1, [::1]): \
                     the token would cross the network in clear; use https://",
                ));
            }
            if files.ca.is_some() || files.cert.is_some() || files.key.is_some() {
                return Err(usage("--ca, --cert and --key need an https:// server; http:// uses no TLS"));
            }
            Ok(())
        }
        _ => Err(usage("expected https://host:port (or http:// to a loopback test server)")),
    }
}

/// A channel to the owner's server at `server` (TLS for `https://`: the server's
/// certificate is checked against the `--ca` file when given, otherwise against the
/// system's trust store; mutual TLS with a client certificate and key).
pub(super) async fn connect_to(server: &str, files: TlsFiles<'_>) -> Result<Channel, ClientError> {
    check_server(server, files)?;
    let unreachable = |reason: String| ClientError::Unreachable { server: server.to_owned(), reason };
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| unreachable(e.to_string()))?
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE));
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        match files.ca {
            Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read_file(ca)?)),
            None => tls = tls.with_native_roots(),
        }
        match (files.cert, files.key) {
            (Some(cert), Some(key)) => {
                let key = read_secret_file(key, "TLS private key")?;
                tls = tls.identity(Identity::from_pem(read_file(cert)?, key.as_slice()));
            }
            (None, None) => {}
            _ => return Err(ClientError::Tls("--cert and --key go together".into())),
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| {
        let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        if is_tls_failure(&e) { ClientError::Tls(reason) } else { unreachable(reason) }
    })
}

/// Whether a connection failed in TLS (a rustls error anywhere in its source chain,
/// also inside an I/O error): an untrusted certificate, a plaintext server answering
/// a TLS client, a refused client certificate.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let inner_io = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if e.is::<rustls::Error>() || inner_io.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        next = e.source().or(inner_io.map(|inner| inner as &(dyn std::error::Error + 'static)));
    }
    false
}

/// How `idmatch match --server … --shards N` splits a match into a run of shard
/// streams (docs/PROTOCOL.md §13.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharding {
    /// `N`, at most [`crate::shard::MAX_SHARDS`].
    pub shards: NonZeroU32,
    /// Shard streams open at once.
    pub parallel: NonZeroUsize,
}

/// Shard `index` of a run of `shards` shard streams named `run_id`, which this
/// process runs while other processes run the other shards (`idmatch match --server
/// … --shard i/N --run-id ID`: the pods of a Kubernetes Indexed Job, Spark's tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OneShard {
    /// The run id: chosen at random by whoever starts the run, the same in every
    /// shard's process, never used for another run.
    pub run_id: [u8; 16],
    /// `i`, below `shards`.
    pub index: u32,
    /// `N`, at most [`crate::shard::MAX_SHARDS`].
    pub shards: NonZeroU32,
}

impl OneShard {
    fn check(&self) -> Result<(), ClientError> {
        let (i, n) = (self.index, self.shards.get());
        if n > crate::shard::MAX_SHARDS {
            return Err(ClientError::Usage(format!("--shard {i}/{n}: at most {} shards", crate::shard::MAX_SHARDS)));
        }
        if i >= n {
            return Err(ClientError::Usage(format!(
                "--shard {i}/{n}: the shard index must be below {n} (0 to {})",
                n - 1
            )));
        }
        Ok(())
    }
}

/// Parses a run id: 32 hexadecimal digits (16 bytes), as `openssl rand -hex 16`
/// prints one.
pub fn parse_run_id(text: &str) -> Result<[u8; 16], String> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(text.trim(), &mut id).map_err(|_| {
        format!(
            "a run id is 32 hexadecimal digits (16 random bytes, e.g. `openssl rand -hex 16`), not `{}`",
            untrusted(text)
        )
    })?;
    Ok(id)
}

/// The streams of a match that this process runs.
#[derive(Clone, Copy, Debug)]
enum Streams {
    /// One stream, no run.
    Whole,
    /// Every shard stream of a new run.
    All(Sharding),
    /// One shard stream of a run.
    One(OneShard),
}

/// Runs one match against the server and writes the partner's matches.
pub async fn run(options: ClientOptions) -> Result<ClientSummary, ClientError> {
    run_with(options, Streams::Whole).await
}

/// Runs one match against the server as a run of `sharding.shards` shard streams
/// (`sharding.parallel` at a time), and writes the partner's matches: the same file
/// as [`run`] writes, or nothing if any shard fails (the owner then fails the whole
/// run). The summary's `outcome` sums the shards' figures; its `matched` is `None`
/// (the matches are per shard; `matched_records` counts them).
pub async fn run_sharded(options: ClientOptions, sharding: Sharding) -> Result<ClientSummary, ClientError> {
    if sharding.shards.get() > crate::shard::MAX_SHARDS {
        return Err(ClientError::Usage(format!("--shards: at most {} shards", crate::shard::MAX_SHARDS)));
    }
    run_with(options, Streams::All(sharding)).await
}

/// Runs shard `shard.index` of the run `shard.run_id` only, while other processes
/// run its other shards. Reads and splits the whole input as [`run_sharded`] does,
/// and announces the run's whole size (the sum of every shard's distinct tokens,
/// which each process computes alike from the same input and key), but opens only
/// this shard's stream and writes only this shard's matches: the union of the
/// shards' outputs, kinds merged per record id (a record's email and phone can fall
/// into different shards), is the output of the unsharded match. The summary's
/// `outcome` holds this shard's figures.
///
/// Not idempotent, by design: the owner takes each shard of a run once, so a shard
/// run a second time (a retried pod or task) is refused (`run-shard-repeated`) and
/// fails the whole run, which then needs a new run id.
pub async fn run_one_shard(options: ClientOptions, shard: OneShard) -> Result<ClientSummary, ClientError> {
    shard.check()?;
    run_with(options, Streams::One(shard)).await
}

/// One shard of a run, with its partner's matches (record numbers as in the set).
#[derive(Debug)]
pub struct ShardMatch {
    /// The engine the owner chose.
    pub protocol: Protocol,
    /// This shard's figures (sizes, intersection).
    pub outcome: PartnerOutcome,
    /// The set's matched records and their kinds, in `partner` and `both` modes.
    pub matches: Option<Vec<(u32, KindSet)>>,
}

/// Runs shard `shard.index` of the run `shard.run_id` from `set`, a shard set its
/// caller tokenized, filtered (suppressions) and split by the campaign key's shard
/// rule itself, announcing `run_set_size` as the run's size: Spark's executors, one
/// task per shard. `run_set_size` must be [`padded_run_size`] of every shard's
/// distinct tokens; `set` is padded to its `N`th part. The same stream as
/// [`run_one_shard`] opens, under the same rule for a shard run twice.
pub async fn run_prepared_shard(
    options: StreamOptions,
    shard: OneShard,
    run_set_size: u64,
    mut set: PreparedSet,
) -> Result<ShardMatch, ClientError> {
    shard.check()?;
    let shards = u64::from(shard.shards.get());
    let shard_size = run_set_size / shards;
    if !run_set_size.is_multiple_of(shards) || (set.len() as u64) > shard_size {
        return Err(ClientError::Usage(format!(
            "the run's size {run_set_size} must be {shards} times the largest shard's distinct tokens \
             (shard {} has {})",
            shard.index,
            set.len()
        )));
    }
    set.pad_to(shard_size as usize);
    check_server(&options.server, options.tls_files())?;
    let offered = options.protocol.offer(options.reveal)?;
    let normalizer = Normalizer::new(options.profile, None);
    let PartnerFiles { fingerprint, token, .. } =
        PartnerFiles::load(&options.key_file, options.token_file.as_ref(), None, &normalizer, BadRows::Refuse)?;
    let streams = ShardStreams::open(&options, fingerprint, token, offered).await?;
    let run = Run { run_id: shard.run_id, shard_count: shard.shards.get(), run_set_size };
    let (protocol, outcome, matches) = streams.run(run, vec![(shard.index, Arc::new(set))], NonZeroUsize::MIN).await?;
    Ok(ShardMatch { protocol, outcome, matches })
}

async fn run_with(options: ClientOptions, streams: Streams) -> Result<ClientSummary, ClientError> {
    let stream_options = options.stream_options();
    check_server(&stream_options.server, stream_options.tls_files())?;
    let offered = options.protocol.offer(options.reveal)?;
    let output = options.reveal.partner_learns_records().then(|| Staged::create(&options.output)).transpose()?;
    let PartnerFiles { key, fingerprint, token, suppress } = PartnerFiles::load(
        &options.key_file,
        options.token_file.as_ref(),
        options.suppress.as_ref(),
        &options.normalizer,
        options.bad_list_rows,
    )?;
    let suppression_list_stats = suppress.list_stats().cloned();
    let mut read = ReadOptions::new(options.normalizer.clone(), Mode::Match);
    read.columns = options.columns.clone();
    read.progress = options.progress.clone();
    let input = options.input.clone();
    // Reading, suppressing and preparing the sets are CPU work: off the runtime.
    let (side, run, sets) = tokio::task::spawn_blocking(move || {
        let side = prepare::prepare(&input, &Tokenizer::new(&key), read, &suppress)?;
        let (run, sets) = plan(&side, &key, streams);
        Ok::<_, ClientError>((side, run, sets))
    })
    .await
    .map_err(|e| ClientError::Stream(e.to_string()))??;
    let suppressed_records = side.excluded_records();

    let streams_open = ShardStreams::open(&stream_options, fingerprint, token, offered).await?;
    let (protocol, outcome, matches) = match run {
        None => {
            let (_, set) = sets.into_iter().next().ok_or_else(|| ClientError::Stream("no set to match".into()))?;
            let phases = Phases::new(options.progress.as_ref(), set.len() as u64, options.reveal);
            let ShardStreams { channel, token, config, idle } = streams_open;
            let (protocol, outcome) = stream_match(channel, token, config, set.clone(), idle, phases).await?;
            let matches = outcome.matched.as_ref().map(|matched| set.matched_records(matched));
            (protocol, outcome, matches)
        }
        Some(run) => {
            let parallel = match streams {
                Streams::All(sharding) => sharding.parallel,
                Streams::Whole | Streams::One(_) => NonZeroUsize::MIN,
            };
            streams_open.run(run, sets, parallel).await?
        }
    };

    let matched_records = match (&matches, output) {
        (Some(matches), Some(mut output)) => {
            write_matches(&mut output, side.records(), matches)
                .map_err(|source| OutputError { path: options.output.clone(), source })?;
            output.commit()?;
            Some(matches.len() as u64)
        }
        _ => None,
    };
    let shard = match streams {
        Streams::One(shard) => Some(shard.index),
        Streams::Whole | Streams::All(_) => None,
    };
    Ok(ClientSummary {
        protocol,
        outcome,
        matched_records,
        suppressed_records,
        suppression_list: suppression_list_stats,
        run,
        shard,
    })
}

/// A run as its streams announce it (docs/PROTOCOL.md §13.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The run id, the same in every stream of the run.
    pub run_id: [u8; 16],
    /// `N`.
    pub shard_count: u32,
    /// The partner's whole set size as announced: [`padded_run_size`].
    pub run_set_size: u64,
}

/// The `run_set_size` a partner announces for a run whose shards hold `sizes`
/// distinct tokens: `N` times the largest, since every shard is padded to that size
/// with dummy tokens (`PreparedSet::pad_to`), so the owner learns one shard size,
/// not how the partner's identifiers fall into shards (docs/PROTOCOL.md §13.4).
pub fn padded_run_size(sizes: impl IntoIterator<Item = usize>) -> u64 {
    let (mut shards, mut largest) = (0u64, 0usize);
    for size in sizes {
        shards += 1;
        largest = largest.max(size);
    }
    shards * largest as u64
}

/// The sets this process matches, each with its shard index, and the run they
/// belong to (none for a whole match): the whole set; every shard of a new run
/// under a random id; or one shard of a given run, whose size is still the sum over
/// every shard.
fn plan(side: &Prepared, key: &Key, streams: Streams) -> (Option<Run>, Vec<(u32, Arc<PreparedSet>)>) {
    let shards = match streams {
        Streams::Whole => return (None, vec![(0, Arc::new(side.set()))]),
        Streams::All(sharding) => sharding.shards,
        Streams::One(shard) => shard.shards,
    };
    let assignment = crate::shard::assignment(side.records(), &ShardRule::new(key, shards));
    let (mut sizes, mut sets) = (Vec::new(), Vec::new());
    for i in 0..shards.get() {
        let set = prepare::prepared_shard(side.records(), side.excluded(), &assignment, i);
        sizes.push(set.len());
        let wanted = match streams {
            Streams::One(shard) => shard.index == i,
            Streams::Whole | Streams::All(_) => true,
        };
        if wanted {
            sets.push((i, set));
        }
    }
    let run_set_size = padded_run_size(sizes);
    let shard_size = (run_set_size / u64::from(shards.get())) as usize;
    let sets = sets
        .into_iter()
        .map(|(i, mut set)| {
            set.pad_to(shard_size);
            (i, Arc::new(set))
        })
        .collect();
    let run_id = match streams {
        Streams::One(shard) => shard.run_id,
        Streams::Whole | Streams::All(_) => rand::random(),
    };
    (Some(Run { run_id, shard_count: shards.get(), run_set_size }), sets)
}

/// The shard streams of one run: the connection, the credentials, the hello's
/// settings shared by every shard, and the idle timeout.
struct ShardStreams {
    channel: Channel,
    token: Option<Arc<str>>,
    config: PartnerConfig,
    idle: Duration,
}

impl ShardStreams {
    /// Connects to the owner and sets up the hello every stream of this match sends.
    async fn open(
        options: &StreamOptions,
        fingerprint: KeyFingerprint,
        token: Option<String>,
        offered: Vec<Protocol>,
    ) -> Result<ShardStreams, ClientError> {
        let channel = connect_to(&options.server, options.tls_files()).await?;
        let mut config =
            PartnerConfig::new(&options.campaign, options.profile, options.reveal).with_key_fingerprint(fingerprint);
        config.protocols = offered;
        Ok(ShardStreams { channel, token: token.map(Arc::from), config, idle: options.idle_timeout })
    }

    /// Matches each of `sets` (shard index, set) over its own stream of `run`,
    /// `parallel` at a time; the first shard to fail ends the others (the owner
    /// then fails the run) and is the run's error. Returns the engine, the shards'
    /// figures summed, and the partner's matches of these shards merged.
    async fn run(
        self,
        run: Run,
        sets: Vec<(u32, Arc<PreparedSet>)>,
        parallel: NonZeroUsize,
    ) -> Result<(Protocol, PartnerOutcome, Option<Vec<(u32, KindSet)>>), ClientError> {
        let Run { run_id, shard_count, run_set_size } = run;
        let permits = Arc::new(tokio::sync::Semaphore::new(parallel.get()));
        let mut streams = tokio::task::JoinSet::new();
        for (shard_index, set) in sets {
            let mut config = self.config.clone();
            config.run = Some(ShardRun { run_id, shard_index, shard_count, run_set_size });
            let (channel, token, permits, idle) =
                (self.channel.clone(), self.token.clone(), permits.clone(), self.idle);
            let phases = Phases::new(None, set.len() as u64, config.reveal);
            streams.spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| ClientError::Stream(e.to_string()))?;
                let (protocol, mut outcome) = stream_match(channel, token, config, set.clone(), idle, phases).await?;
                let matches = outcome.matched.as_ref().map(|matched| set.matched_records(matched));
                // The summary counts the partner's tokens, not the dummies sent with them.
                outcome.partner_set_size -= set.dummies() as u64;
                Ok::<_, ClientError>((protocol, outcome, matches))
            });
        }
        let mut total = PartnerOutcome {
            reveal: self.config.reveal,
            partner_set_size: 0,
            owner_set_size: 0,
            blinded: 0,
            intersection: None,
            matched: None,
        };
        let (mut protocol, mut matches) = (None, None::<Vec<(u32, KindSet)>>);
        while let Some(joined) = streams.join_next().await {
            // Dropping `streams` on an error ends the other shards' streams.
            let (engine, outcome, shard_matches) = joined.map_err(|e| ClientError::Stream(e.to_string()))??;
            if *protocol.get_or_insert(engine) != engine {
                return Err(ClientError::Stream("the owner chose different engines for the shards of one run".into()));
            }
            total.partner_set_size += outcome.partner_set_size;
            total.owner_set_size += outcome.owner_set_size;
            total.blinded += outcome.blinded;
            if let Some(x) = outcome.intersection {
                *total.intersection.get_or_insert(0) += x;
            }
            if let Some(mut m) = shard_matches {
                matches.get_or_insert_with(Vec::new).append(&mut m);
            }
        }
        let protocol = protocol.ok_or_else(|| ClientError::Stream("a run of no shards".into()))?;
        Ok((protocol, total, matches.map(merge_matched_records)))
    }
}

/// Runs one match (a whole one, or one shard of a run) over a stream of its own
/// on `channel`.
async fn stream_match(
    channel: Channel,
    token: Option<Arc<str>>,
    config: PartnerConfig,
    set: Arc<PreparedSet>,
    idle: Duration,
    phases: Phases,
) -> Result<(Protocol, PartnerOutcome), ClientError> {
    let (out_tx, out_rx) = mpsc::channel::<PartnerMessage>(4);
    let sent = phases.sent_count.clone();
    let request_stream = ReceiverStream::new(out_rx).map(move |message| {
        if let PartnerMessage::PartnerElements(chunk) = &message {
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        partner_to_wire(message)
    });
    let mut request = Request::new(request_stream);
    authorize(&mut request, token.as_deref())?;
    if let Some(run) = &config.run {
        // For a load balancer to send every stream of a run to one owner process
        // (README, "Sharded runs").
        if let Ok(value) = hex::encode(run.run_id).parse() {
            request.metadata_mut().insert(RUN_ID_HEADER, value);
        }
    }
    // Start the partner (its hello is the first message) before the call, so the
    // request stream has something to send.
    let (in_tx, mut in_rx) = mpsc::channel(INBOUND_QUEUE);
    let runtime = tokio::runtime::Handle::current();
    let driver = tokio::task::spawn_blocking(move || {
        let partner = Partner::new(config.clone(), &set)?;
        negotiate_and_drive(partner, &config, &set, &mut in_rx, &out_tx, idle, &runtime)
    });
    let mut client = MatcherClient::new(channel).max_decoding_message_size(8 << 20).max_encoding_message_size(8 << 20);
    let response = match client.r#match(request).await {
        Ok(r) => r,
        Err(status) => {
            driver.abort();
            return Err(ClientError::from_status(status.code(), status.message(), error_kind(&status).as_deref()));
        }
    };
    let mut responses = response.into_inner();
    let shown = phases.clone();
    let reader = tokio::spawn(async move {
        while let Some(item) = responses.next().await {
            let message = match item {
                Ok(m) => owner_from_wire(m).inspect(|m| shown.observe(m)).map_err(DriveError::from),
                Err(status) => Err(DriveError::remote(&status, status.message().to_owned())),
            };
            let failed = message.is_err();
            if in_tx.send(message).await.is_err() || failed {
                break;
            }
        }
    });
    // Aborted if this future is dropped (another shard of the run failed).
    let reader = AbortOnDrop(reader);
    let result = driver.await.map_err(|e| ClientError::Stream(e.to_string()))?.map_err(|e| match e {
        DriveError::Protocol(p) => ClientError::Protocol(p),
        DriveError::Setup(s) => ClientError::Setup(s),
        DriveError::Remote { code, message, kind } => ClientError::from_status(code, &message, kind.as_deref()),
        other => ClientError::Stream(other.to_string()),
    });
    drop(reader);
    phases.finish();
    result
}

/// The request header naming a shard stream's run (hex), for load balancers.
pub const RUN_ID_HEADER: &str = "idmatch-run-id";

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// In `owner` mode the partner is the OPRF sender and holds the matrix of the
/// owner's announced size (about twice, while it transposes): an owner set whose
/// matrix would not fit in the memory this process can count on (`available`, when
/// known) is refused with a precise error before anything more is sent, rather than
/// the client being killed (a cheating or misconfigured owner may announce 2³⁰).
fn matrix_fits(reveal: Reveal, own: u64, owner: u64, available: Option<u64>) -> Result<(), OprfError> {
    if !matches!(oprf::receiver_party(reveal), Ok(oprf::Party::Owner)) {
        return Ok(());
    }
    let (Some(available), Ok(params)) = (available, oprf::Params::derive(own, owner)) else { return Ok(()) };
    if params.matrix_bytes().saturating_mul(2) <= available {
        return Ok(());
    }
    // About 160 bytes per owner token: 511 bits per table row, 1.25 rows per token, twice.
    Err(OprfError::SetSizeOutOfRange {
        what: "owner (its oprf matrix must fit twice in this machine's available memory: use shards or ecdh)",
        size: owner,
        min: 0,
        max: available / 160,
    })
}

/// Sends the hello, reads the owner's accept, and runs the engine it names: the
/// ECDH `partner` it was given, or the OPRF engine's partner side.
fn negotiate_and_drive(
    mut partner: Partner<'_>,
    config: &PartnerConfig,
    set: &PreparedSet,
    inbound: &mut Inbound<OwnerMessage>,
    outbound: &mpsc::Sender<PartnerMessage>,
    idle: Duration,
    runtime: &tokio::runtime::Handle,
) -> Result<(Protocol, PartnerOutcome), DriveError> {
    let hello = partner.poll_outgoing().ok_or(DriveError::PeerClosed)?;
    send_with_deadline(outbound, hello, idle, runtime)?;
    let first = receive_with_deadline(inbound, idle, runtime)?;
    let protocol = match &first {
        OwnerMessage::Accept(accept) => {
            check_accept(accept, &config.protocols)?;
            accept.protocol
        }
        // Anything else is refused by the ECDH state machine, which awaits the accept.
        _ => Protocol::Ecdh,
    };
    let outcome = match (protocol, first) {
        (Protocol::Oprf, OwnerMessage::Accept(accept)) => {
            matrix_fits(config.reveal, set.len() as u64, accept.owner_set_size, memory::available())
                .map_err(|e| DriveError::Setup(SetupError::Oprf(e)))?;
            let mut oprf = OprfPartner::new(config.reveal, accept.owner_set_size, set, ChunkLimits::default())?;
            drive(&mut oprf, inbound, outbound, Some, idle, runtime)?;
            oprf.outcome()
        }
        (_, first) => {
            partner.receive(first)?;
            drive(&mut partner, inbound, outbound, Some, idle, runtime)?;
            partner.outcome()
        }
    };
    Ok((protocol, outcome.ok_or(DriveError::PeerClosed)?))
}

/// One meter per phase of the match.
#[derive(Clone)]
struct Phases {
    sent: Arc<dyn Meter>,
    /// Elements sent so far, counted by the request stream and shown on `sent` as
    /// the owner's messages arrive: the stream holds a plain counter, not the meter,
    /// so that a shard's stream stays provably `Send`.
    sent_count: Arc<AtomicU64>,
    returned: Arc<dyn Meter>,
    owner: Arc<dyn Meter>,
    partner_size: u64,
    reveal: Reveal,
}

impl Phases {
    fn new(progress: Option<&Arc<dyn Progress>>, partner_size: u64, reveal: Reveal) -> Phases {
        let meter = |label: &str, total: u64| progress::start(progress, label, total, Unit::Elements);
        Phases {
            sent: meter("blinded and sent", partner_size),
            sent_count: Arc::new(AtomicU64::new(0)),
            returned: meter("re-blinded by the owner", 0),
            owner: meter("owner elements re-blinded", 0),
            partner_size,
            reveal,
        }
    }

    fn observe(&self, message: &OwnerMessage) {
        self.sent.set_position(self.sent_count.load(Ordering::Relaxed));
        match message {
            // The meters count the ECDH engine's elements.
            OwnerMessage::Accept(accept) if accept.protocol == Protocol::Oprf => self.finish(),
            OwnerMessage::Accept(accept) => {
                self.owner.set_total(accept.owner_set_size);
                self.returned.set_total(if self.reveal.owner_returns_partner_elements() {
                    self.partner_size
                } else {
                    0
                });
            }
            OwnerMessage::ReblindedPartnerElements(chunk) => self.returned.advance(chunk.len() as u64),
            OwnerMessage::OwnerElements(chunk) => self.owner.advance(chunk.len() as u64),
            OwnerMessage::Summary(_) | OwnerMessage::Oprf(_) => {}
        }
    }

    fn finish(&self) {
        self.sent.set_position(self.sent_count.load(Ordering::Relaxed));
        for meter in [&self.sent, &self.returned, &self.owner] {
            meter.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19's review: an owner announcing a huge set in `owner` mode (the partner
    /// then holds the matrix) is refused before the client allocates it; in the
    /// other modes, or with memory enough or unknown, nothing is refused.
    #[test]
    fn an_owner_matrix_beyond_memory_is_refused_in_owner_mode_only() {
        let gib = 1u64 << 30;
        let refused = matrix_fits(Reveal::Owner, 1000, 1 << 30, Some(8 * gib)).unwrap_err();
        assert!(matches!(refused, OprfError::SetSizeOutOfRange { size, max, .. } if size == 1 << 30 && max < size));
        assert!(refused.to_string().contains("available memory"), "{refused}");
        assert_eq!(matrix_fits(Reveal::Owner, 1000, 1_000_000, Some(8 * gib)), Ok(()));
        assert_eq!(matrix_fits(Reveal::Owner, 1000, 1 << 30, None), Ok(()));
        for reveal in [Reveal::Partner, Reveal::Both] {
            assert_eq!(matrix_fits(reveal, 1000, 1 << 30, Some(gib)), Ok(()), "{reveal}");
        }
    }
}
