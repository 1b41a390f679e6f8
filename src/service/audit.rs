//! The append-only audit log: one JSON line per match (and per opt-out change),
//! flushed to disk before the match's outcome is reported. It never contains
//! identifiers, tokens or keys: only names, sizes, counts and outcomes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One match, as audited.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MatchRecord {
    /// Milliseconds since the Unix epoch, UTC.
    pub time_unix_ms: u64,
    pub match_id: String,
    pub partner: String,
    pub campaign: String,
    pub reveal: Option<String>,
    /// The matching engine the owner chose (`ecdh` or `oprf`), once the hello passed.
    pub protocol: Option<String>,
    pub partner_set_size: Option<u64>,
    pub owner_set_size: Option<u64>,
    /// Audience records excluded by opt-outs at the start of this match.
    pub opted_out_records: Option<u64>,
    /// Matching member records, where the owner learns them.
    pub owner_matched_records: Option<u64>,
    /// The run this stream is a shard of (docs/PROTOCOL.md §13.3), in hex: the run
    /// has a line of its own (`"kind": "run"`), written once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// `i/N`: the stream's shard of its run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// `ok`, or the failure reason (a gRPC status code name).
    pub outcome: String,
    pub duration_ms: u64,
}

/// One measurement, as audited (`"kind": "measurement"`): sizes and who learned
/// what, never a value, identifier or figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeasureRecord {
    /// Milliseconds since the Unix epoch, UTC.
    pub time_unix_ms: u64,
    /// Always `measurement`.
    pub kind: &'static str,
    /// The measurement's id (the `idmatch-match-id` header).
    pub match_id: String,
    pub partner: String,
    pub campaign: String,
    /// Who receives the released figures (`owner`, `partner`, `both`), once the
    /// hello passed.
    pub learner: Option<String>,
    /// Whether the owner wrote the figures to its results directory.
    pub owner_learned: bool,
    /// Whether the figures were sent to the partner.
    pub partner_learned: bool,
    /// Exposure bundles and groups the partner announced.
    pub exposure_bundles: Option<u64>,
    pub groups: Option<u64>,
    /// Outcome records of the campaign, those excluded by opt-outs (a listed
    /// record and every other record of its person), and the people sent.
    pub outcome_records: Option<u64>,
    pub opted_out_records: Option<u64>,
    pub owner_people: Option<u64>,
    /// Epsilon charged to the partner's budgets: the measurement's worst case per
    /// outcome person (0 without noise).
    pub epsilon_spent: f64,
    /// The partner's total epsilon on the outcome dataset ever, this measurement
    /// included (with noise only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_spent_lifetime: Option<f64>,
    /// `ok`, or the failure reason (a gRPC status code name).
    pub outcome: String,
    pub duration_ms: u64,
}

/// A call refused for its credentials (`"event": "credentials_refused"`): which
/// service, why (a fixed message, never the token or anything the caller sent), and
/// the caller's address.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RefusedRecord {
    /// Milliseconds since the Unix epoch, UTC.
    pub time_unix_ms: u64,
    /// Always `credentials_refused`.
    pub event: &'static str,
    /// The rpc's service: `match`, `measure` or `optout_admin`.
    pub service: &'static str,
    /// The gRPC status code name (`Unauthenticated`, `PermissionDenied`).
    pub outcome: String,
    /// The server's reason, as sent to the caller.
    pub reason: String,
    /// The caller's address, when known.
    pub peer: Option<String>,
}

/// The log file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        Ok(AuditLog { path: path.to_owned(), file: Mutex::new(options.open(path)?) })
    }

    /// Appends one record and syncs it to disk.
    pub fn append(&self, record: &impl Serialize) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(&line)?;
        file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
