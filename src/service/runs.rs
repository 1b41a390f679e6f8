//! Sharded match runs on the owner's side (docs/PROTOCOL.md §13.3): the streams a
//! partner opens under one run id are one match: checked against each other,
//! charged to the budget once, assembled into one results file, audited once.
//!
//! A stream joins its run ([`Runs::join`]) once its hello has passed every other
//! check, and gets a [`RunShard`] back. The first stream to join creates the run and
//! charges the budget for the run's whole size; every later one must name the same
//! partner, campaign, reveal mode, `N` and run size, a shard not yet joined, and a
//! size that keeps the shards' sum within the run's (equal to it once all `N` are
//! in). A stream that disagrees fails the run; a stream of another partner naming
//! the run is refused and leaves it alone.
//!
//! Invariants: a run is in one of three states, open, done or failed, and leaves
//! open exactly once: done when its `N`th shard finishes (the owner's matches of all
//! shards, merged, are written to one results file first, atomically), failed when
//! any of its streams fails, is refused, or is dropped unfinished (a lost stream),
//! or when it sits open with no stream for longer than the idle timeout. The run's
//! audit record (`"kind": "run"`) is written then, once. A finished or failed run
//! is kept for a day, so its run id cannot be replayed.
//!
//! Shared between server processes: the registry is a directory of files,
//! `<state_file>.runs/` next to the budget state (README, "Several server
//! processes"): one `<run id>.json` per run and, while it is open, one
//! `<run id>.<shard>.matches` per finished shard (the owner's matches: record index
//! and kinds, nothing else). Every change is made under the exclusive lock of
//! `.lock` in that directory (`lockfile`), so the streams of one run may reach
//! different `idmatch serve` processes that share the state file: whichever
//! finishes the run's last shard merges the shards' matches, writes the results
//! file into its results directory and audits the run. The processes must load
//! the same audience (the run records its digest and fails if a stream's process
//! holds another). A process that dies while serving a stream leaves its run open
//! with a stream counted: such a run is failed once it has been untouched for
//! [`STALE`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Status;

use super::audit::{AuditLog, now_unix_ms};
use super::budget::BudgetError;
use super::lockfile;
use super::status::budget_status;
use crate::psi::{KindSet, Reveal, ShardRun, merge_matched_records};

/// How long a finished or failed run's id is remembered (and refused if replayed).
const REMEMBERED: Duration = Duration::from_secs(24 * 3600);

/// An open run untouched this long fails even with streams counted (their process
/// died without settling them).
const STALE: Duration = Duration::from_secs(6 * 3600);

/// How often a process looks through every run for abandoned and old ones (the
/// run a stream joins is always checked).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Why a stream may not join its run, or its run failed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RunError {
    /// The run id belongs to a run of another partner.
    #[error("this run id is in use; choose a new random run id")]
    InUse,
    /// The hello names the run differently from its first stream.
    #[error("this shard's hello differs from its run's first stream: {what} {got}, the run's is {run}")]
    Mismatch { what: &'static str, got: String, run: String },
    /// The shard joined the run already.
    #[error("shard {0} of this run has already joined it")]
    Repeated(u32),
    /// The shards' announced sizes do not add up to the run's size.
    #[error(
        "the run's shards announce {announced} tokens in all ({joined} of {shards} shards in), its hello {run_set_size}"
    )]
    Sizes { announced: u64, joined: u32, shards: u32, run_set_size: u64 },
    /// The run failed earlier (a stream failed, was refused or lost).
    #[error("this run has failed (a shard stream failed or was lost); start a new run with a new run id")]
    Failed,
    /// The run finished already: its id cannot be used again.
    #[error("this run has finished; start a new run with a new run id")]
    Finished,
    /// The server processes serving this run's streams hold different audiences
    /// for its campaign (a configuration at odds between processes).
    #[error("this run's streams reached owner servers holding different audiences; the run fails")]
    AudienceDiffers,
    /// The run registry (`<state_file>.runs/`) cannot be read or written.
    #[error("the owner's run registry is unavailable")]
    Registry,
    /// The run's first stream could not charge the run to the partner's budget:
    /// the run is not created.
    #[error(transparent)]
    Budget(BudgetError),
}

impl RunError {
    /// The stable kind of the refusal (the `idmatch-error` metadata entry).
    pub fn code(&self) -> &'static str {
        match self {
            RunError::InUse => "run-in-use",
            RunError::Mismatch { .. } => "run-mismatch",
            RunError::Repeated(_) => "run-shard-repeated",
            RunError::Sizes { .. } => "run-sizes",
            RunError::Failed => "run-failed",
            RunError::Finished => "run-finished",
            RunError::AudienceDiffers => "run-audience-differs",
            RunError::Registry => "run-registry",
            RunError::Budget(e) => e.code(),
        }
    }

    /// The gRPC status: FAILED_PRECONDITION for a hello at odds with its run,
    /// ALREADY_EXISTS for a repeated shard or a used run id, ABORTED for a run that
    /// failed, INTERNAL when the registry cannot be used.
    pub fn status(self) -> Status {
        let code = self.code();
        let message = self.to_string();
        let status = match self {
            RunError::Budget(e) => return budget_status(e),
            RunError::InUse | RunError::Repeated(_) | RunError::Finished => Status::already_exists(message),
            RunError::Mismatch { .. } | RunError::Sizes { .. } => Status::failed_precondition(message),
            RunError::Failed | RunError::AudienceDiffers => Status::aborted(message),
            RunError::Registry => Status::internal(message),
        };
        super::status::with_code(status, code)
    }
}

/// What a stream's hello says about its run.
pub(crate) struct ShardHello<'a> {
    pub partner: &'a str,
    pub campaign: &'a str,
    pub reveal: Reveal,
    pub run: ShardRun,
    /// This shard's size (the hello's `partner_set_size`).
    pub size: u64,
    /// The digest of the audience this process serves the shard from.
    pub audience: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Open,
    Done,
    Failed,
}

/// One run, as kept in `<run id>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Run {
    partner: String,
    campaign: String,
    reveal: String,
    shard_count: u32,
    run_set_size: u64,
    audience: String,
    /// The shards joined so far, in joining order.
    joined: Vec<u32>,
    announced: u64,
    finished: u32,
    /// Streams joined and not yet settled, in every process.
    active: u32,
    phase: Phase,
    started_unix_ms: u64,
    /// The last join, finish or settle.
    touched_unix_ms: u64,
    owner_set_size: u64,
    protocol: Option<String>,
}

impl Run {
    fn untouched_for(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.touched_unix_ms))
    }

    /// Keeps of a settled run only what refuses its id: its shard list goes.
    fn settle(&mut self, phase: Phase) {
        self.phase = phase;
        self.joined = Vec::new();
        self.touched_unix_ms = now_unix_ms();
    }
}

/// A run's line in the audit log (`"kind": "run"`): sizes and outcome, never an
/// identifier. The streams of the run have lines of their own, with its run id.
#[derive(Debug, Serialize)]
struct RunRecord<'a> {
    time_unix_ms: u64,
    kind: &'static str,
    run_id: String,
    partner: &'a str,
    campaign: &'a str,
    reveal: &'a str,
    protocol: Option<&'a str>,
    shard_count: u32,
    run_set_size: u64,
    shards_finished: u32,
    owner_set_size: u64,
    owner_matched_records: Option<u64>,
    results_file: Option<&'a str>,
    outcome: String,
    duration_ms: u64,
}

/// The run registry: a directory shared by the server processes that share the
/// budget state.
pub(crate) struct Runs {
    dir: PathBuf,
    /// When this process last swept every run (ms since the epoch).
    swept: std::sync::atomic::AtomicU64,
}

/// The registry's directory for the budget state file `state_file`.
pub(crate) fn registry_dir(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".runs");
    PathBuf::from(name)
}

/// What the lock holder may do with the registry's files.
struct Registry<'a> {
    dir: &'a Path,
    _lock: std::fs::File,
}

impl Registry<'_> {
    fn run_path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(format!("{}.json", hex::encode(id)))
    }

    fn matches_path(dir: &Path, id: &[u8; 16], shard: u32) -> PathBuf {
        dir.join(format!("{}.{shard}.matches", hex::encode(id)))
    }

    fn load(&self, id: &[u8; 16]) -> Result<Option<Run>, RunError> {
        match std::fs::read(self.run_path(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| registry_error(&self.run_path(id), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(registry_error(&self.run_path(id), e)),
        }
    }

    fn save(&self, id: &[u8; 16], run: &Run) -> Result<(), RunError> {
        let path = self.run_path(id);
        let bytes = serde_json::to_vec(run).map_err(|e| registry_error(&path, e))?;
        write_replacing(&path, &bytes).map_err(|e| registry_error(&path, e))
    }

    /// Removes the shards' match files of a settled run.
    fn remove_matches(&self, id: &[u8; 16], shard_count: u32) {
        for shard in 0..shard_count {
            let _ = std::fs::remove_file(Self::matches_path(self.dir, id, shard));
        }
    }

    /// Fails the run `id` (open) and audits it with `outcome`.
    fn fail(&self, audit: &AuditLog, id: &[u8; 16], run: &mut Run, outcome: &str) -> Result<(), RunError> {
        if run.phase != Phase::Open {
            return Ok(());
        }
        run.settle(Phase::Failed);
        self.save(id, run)?;
        self.remove_matches(id, run.shard_count);
        audit_run(audit, id, run, None, None, outcome.to_owned());
        Ok(())
    }

    /// Checks the open run `id` against the clock: failed if it sits with no
    /// stream for longer than `idle`, or untouched for [`STALE`] whatever its streams.
    fn expire(&self, audit: &AuditLog, id: &[u8; 16], run: &mut Run, idle: Duration) -> Result<(), RunError> {
        let untouched = run.untouched_for(now_unix_ms());
        if run.phase == Phase::Open && ((run.active == 0 && untouched > idle) || untouched > STALE) {
            self.fail(audit, id, run, "DeadlineExceeded")?;
        }
        Ok(())
    }

    /// Every run: abandoned ones fail, settled ones older than [`REMEMBERED`] go.
    fn sweep(&self, audit: &AuditLog, idle: Duration) -> Result<(), RunError> {
        let entries = std::fs::read_dir(self.dir).map_err(|e| registry_error(self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(parse_run_id) else {
                continue;
            };
            let Some(mut run) = self.load(&id)? else { continue };
            self.expire(audit, &id, &mut run, idle)?;
            if run.phase != Phase::Open && run.untouched_for(now_unix_ms()) > REMEMBERED {
                let _ = std::fs::remove_file(self.run_path(&id));
            }
        }
        Ok(())
    }
}

fn parse_run_id(hex_id: &str) -> Option<[u8; 16]> {
    let mut id = [0; 16];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(id)
}

/// A registry file that cannot be used: logged with its path, refused without it.
fn registry_error(path: &Path, e: impl std::fmt::Display) -> RunError {
    tracing::error!(path = %path.display(), error = %e, "the run registry cannot be used");
    RunError::Registry
}

/// Writes `bytes` to `path` through a temporary file and a rename (mode 0600).
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// One shard's matches as stored: per match the record index (4 bytes,
/// big-endian) and the kinds (1 byte).
fn encode_matches(matches: &[(u32, KindSet)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(matches.len() * 5);
    for (record, kinds) in matches {
        bytes.extend_from_slice(&record.to_be_bytes());
        bytes.push(kinds.bits());
    }
    bytes
}

fn decode_matches(bytes: &[u8], into: &mut Vec<(u32, KindSet)>) -> Option<()> {
    if !bytes.len().is_multiple_of(5) {
        return None;
    }
    for chunk in bytes.chunks_exact(5) {
        let record = u32::from_be_bytes(chunk[..4].try_into().ok()?);
        into.push((record, KindSet::from_bits(chunk[4])?));
    }
    Some(())
}

impl Runs {
    /// Opens (creating it, mode 0700) the registry directory `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Runs> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir)?;
        Ok(Runs { dir: dir.to_owned(), swept: std::sync::atomic::AtomicU64::new(0) })
    }

    /// The registry, locked until the returned value drops.
    fn lock(&self) -> Result<Registry<'_>, RunError> {
        let lock = lockfile::exclusive(&self.dir.join(".lock")).map_err(|e| registry_error(&self.dir, e))?;
        Ok(Registry { dir: &self.dir, _lock: lock })
    }

    /// Joins `hello`'s stream to its run (see the module documentation); a run left
    /// open with no stream for longer than `idle` is failed first.
    ///
    /// The stream that creates the run calls `charge` (the run's whole size to the
    /// partner's budget) while it holds the registry's lock, and the run exists only
    /// once that charge is taken: no other stream can join a run, and so exchange
    /// anything, before the run is paid for. A refused charge creates nothing.
    pub fn join<'a>(
        &'a self,
        audit: &'a AuditLog,
        hello: &ShardHello<'_>,
        idle: Duration,
        charge: impl FnOnce() -> Result<(), BudgetError>,
    ) -> Result<RunShard<'a>, RunError> {
        let registry = self.lock()?;
        let now = now_unix_ms();
        let last = self.swept.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= SWEEP_EVERY.as_millis() as u64 {
            self.swept.store(now, std::sync::atomic::Ordering::Relaxed);
            registry.sweep(audit, idle)?;
        }
        let id = hello.run.run_id;
        let ticket = || RunShard { runs: self, audit, id, shard: hello.run.shard_index, settled: false };
        let Some(mut run) = registry.load(&id)? else {
            let run = Run {
                partner: hello.partner.to_owned(),
                campaign: hello.campaign.to_owned(),
                reveal: hello.reveal.name().to_owned(),
                shard_count: hello.run.shard_count,
                run_set_size: hello.run.run_set_size,
                audience: hello.audience.to_owned(),
                joined: vec![hello.run.shard_index],
                announced: hello.size,
                finished: 0,
                active: 1,
                phase: Phase::Open,
                started_unix_ms: now,
                touched_unix_ms: now,
                owner_set_size: 0,
                protocol: None,
            };
            if let Err(e) = check_sizes(&run) {
                let mut run = run;
                registry.save(&id, &run)?;
                registry.fail(audit, &id, &mut run, "FailedPrecondition")?;
                return Err(e);
            }
            charge().map_err(RunError::Budget)?;
            registry.save(&id, &run)?;
            return Ok(ticket());
        };

        if run.partner != hello.partner {
            return Err(RunError::InUse);
        }
        registry.expire(audit, &id, &mut run, idle)?;
        match run.phase {
            Phase::Done => return Err(RunError::Finished),
            Phase::Failed => return Err(RunError::Failed),
            // Every shard has finished and the last one is writing the results: the
            // run is as good as done, and a late stream (a retried task) is refused
            // as for a done run, without failing it (which would audit it twice).
            Phase::Open if run.finished == run.shard_count => return Err(RunError::Finished),
            Phase::Open => {}
        }
        let index = hello.run.shard_index;
        let mismatch = |what, got: String, run: String| Err(RunError::Mismatch { what, got, run });
        let checked = if run.campaign != hello.campaign {
            mismatch("campaign", "differs".into(), "another".into())
        } else if run.reveal != hello.reveal.name() {
            mismatch("reveal mode", hello.reveal.name().into(), run.reveal.clone())
        } else if run.shard_count != hello.run.shard_count {
            mismatch("shard count", hello.run.shard_count.to_string(), run.shard_count.to_string())
        } else if run.run_set_size != hello.run.run_set_size {
            mismatch("run set size", hello.run.run_set_size.to_string(), run.run_set_size.to_string())
        } else if run.joined.contains(&index) {
            Err(RunError::Repeated(index))
        } else if run.audience != hello.audience {
            Err(RunError::AudienceDiffers)
        } else {
            run.joined.push(index);
            run.announced = run.announced.saturating_add(hello.size);
            run.active += 1;
            run.touched_unix_ms = now;
            check_sizes(&run)
        };
        match checked {
            Ok(()) => {
                registry.save(&id, &run)?;
                Ok(ticket())
            }
            Err(e) => {
                // A shard at odds with its run fails the run: fail closed.
                let outcome = match e {
                    RunError::Mismatch { .. } | RunError::Sizes { .. } => "FailedPrecondition",
                    RunError::Repeated(_) => "AlreadyExists",
                    _ => "Aborted",
                };
                registry.fail(audit, &id, &mut run, outcome)?;
                Err(e)
            }
        }
    }
}

/// The shards' sizes: within the run's size, and equal to it once all are in.
fn check_sizes(run: &Run) -> Result<(), RunError> {
    let joined = run.joined.len() as u32;
    if run.announced > run.run_set_size || (joined == run.shard_count && run.announced != run.run_set_size) {
        return Err(RunError::Sizes {
            announced: run.announced,
            joined,
            shards: run.shard_count,
            run_set_size: run.run_set_size,
        });
    }
    Ok(())
}

fn audit_run(
    audit: &AuditLog,
    id: &[u8; 16],
    run: &Run,
    matched: Option<u64>,
    results_file: Option<&str>,
    outcome: String,
) {
    let record = RunRecord {
        time_unix_ms: now_unix_ms(),
        kind: "run",
        run_id: hex::encode(id),
        partner: &run.partner,
        campaign: &run.campaign,
        reveal: &run.reveal,
        protocol: run.protocol.as_deref(),
        shard_count: run.shard_count,
        run_set_size: run.run_set_size,
        shards_finished: run.finished,
        owner_set_size: run.owner_set_size,
        owner_matched_records: matched,
        results_file,
        outcome,
        duration_ms: now_unix_ms().saturating_sub(run.started_unix_ms),
    };
    if let Err(e) = audit.append(&record) {
        tracing::error!(path = %audit.path().display(), error = %e, "could not write the audit log");
    }
}

/// One stream's place in its run, from its join to its end. Dropped without
/// [`finish`](Self::finish) succeeding (the stream failed, was refused after the
/// join, or was lost), it fails the run.
pub(crate) struct RunShard<'a> {
    runs: &'a Runs,
    audit: &'a AuditLog,
    id: [u8; 16],
    shard: u32,
    settled: bool,
}

/// What a shard's end leaves to do.
pub(crate) enum Finished {
    /// Other shards are still to finish.
    Shard,
    /// This was the run's last shard: the owner's matches of the whole run (owner
    /// and both modes), merged, to be written and then passed to [`RunShard::done`].
    Last { matches: Option<Vec<(u32, KindSet)>> },
}

impl RunShard<'_> {
    /// The run id, in hex (log lines, the results file's name).
    pub fn run_id(&self) -> String {
        hex::encode(self.id)
    }

    /// Records this shard's end: the owner's set size for it, the engine, and its
    /// matches (owner and both modes), kept in the registry until the run's last
    /// shard merges them. A run that failed meanwhile is refused.
    pub fn finish(
        &mut self,
        owner_set_size: u64,
        protocol: &'static str,
        matches: Option<Vec<(u32, KindSet)>>,
    ) -> Result<Finished, RunError> {
        let registry = self.runs.lock()?;
        let mut run = registry.load(&self.id)?.ok_or(RunError::Failed)?;
        if run.phase != Phase::Open {
            self.settled = true;
            return Err(RunError::Failed);
        }
        let owner_learns = matches.is_some();
        if let Some(matches) = &matches {
            let path = Registry::matches_path(registry.dir, &self.id, self.shard);
            write_replacing(&path, &encode_matches(matches)).map_err(|e| registry_error(&path, e))?;
        }
        run.finished += 1;
        run.touched_unix_ms = now_unix_ms();
        run.owner_set_size += owner_set_size;
        run.protocol = Some(protocol.to_owned());
        let last = run.finished == run.shard_count;
        if !last {
            run.active -= 1;
            self.settled = true;
        }
        registry.save(&self.id, &run)?;
        if !last {
            return Ok(Finished::Shard);
        }
        // The last shard: the run stays open (and this stream unsettled) until its
        // results are written and `done` is called. Every shard has finished and
        // this stream is still counted, so nothing changes the run while its
        // shards' matches are read without the lock.
        drop(registry);
        if !owner_learns {
            return Ok(Finished::Last { matches: None });
        }
        let mut all = Vec::new();
        for shard in 0..run.shard_count {
            let path = Registry::matches_path(&self.runs.dir, &self.id, shard);
            let bytes = std::fs::read(&path).map_err(|e| registry_error(&path, e))?;
            decode_matches(&bytes, &mut all).ok_or_else(|| registry_error(&path, "not a matches file"))?;
        }
        Ok(Finished::Last { matches: Some(merge_matched_records(all)) })
    }

    /// Ends the run after its last shard: its results (`matched` records, in
    /// `results_file`) are written; audits it as `ok`.
    pub fn done(mut self, matched: Option<u64>, results_file: Option<&str>) {
        self.settled = true;
        let settled = self.runs.lock().and_then(|registry| {
            let Some(mut run) = registry.load(&self.id)? else { return Ok(()) };
            if run.phase != Phase::Open {
                // Settled meanwhile (another process's sweep): audited there, once.
                tracing::error!(run_id = %self.run_id(), "a run settled before its last shard recorded it as done");
                return Ok(());
            }
            run.active = run.active.saturating_sub(1);
            run.settle(Phase::Done);
            registry.save(&self.id, &run)?;
            registry.remove_matches(&self.id, run.shard_count);
            audit_run(self.audit, &self.id, &run, matched, results_file, "ok".to_owned());
            Ok(())
        });
        if let Err(e) = settled {
            tracing::error!(run_id = %self.run_id(), error = %e, "a finished run could not be recorded as done");
        }
    }

    /// Fails the run with `status`'s code as its audited outcome.
    pub fn fail(mut self, status: &Status) {
        self.fail_with(&format!("{:?}", status.code()));
    }

    fn fail_with(&mut self, outcome: &str) {
        if self.settled {
            return;
        }
        self.settled = true;
        let failed = self.runs.lock().and_then(|registry| {
            let Some(mut run) = registry.load(&self.id)? else { return Ok(()) };
            run.active = run.active.saturating_sub(1);
            if run.phase == Phase::Open {
                registry.fail(self.audit, &self.id, &mut run, outcome)
            } else {
                registry.save(&self.id, &run)
            }
        });
        if let Err(e) = failed {
            tracing::error!(run_id = %self.run_id(), error = %e, "a failed run could not be recorded as failed");
        }
    }
}

impl Drop for RunShard<'_> {
    fn drop(&mut self) {
        // A stream that ends without settling (a panic, or a path that forgot to)
        // fails its run: fail closed.
        self.fail_with("Aborted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Kind;

    fn hello(partner: &str, index: u32, size: u64) -> ShardHello<'_> {
        ShardHello {
            partner,
            campaign: "spring",
            reveal: Reveal::Partner,
            run: ShardRun { run_id: [9; 16], shard_index: index, shard_count: 2, run_set_size: 20 },
            size,
            audience: "audience-1",
        }
    }

    /// A charge that always passes.
    fn free() -> Result<(), BudgetError> {
        Ok(())
    }

    fn registry(dir: &tempfile::TempDir) -> Runs {
        Runs::open(&registry_dir(&dir.path().join("state.json"))).unwrap()
    }

    fn audited(path: &std::path::Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn another_partner_cannot_join_or_disturb_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let runs = registry(&dir);
        let idle = Duration::from_secs(60);
        let charges = std::cell::Cell::new(0);
        let charge = || {
            charges.set(charges.get() + 1);
            Ok(())
        };
        let mut first = runs.join(&audit, &hello("acme", 0, 10), idle, charge).unwrap();
        assert_eq!(runs.join(&audit, &hello("mallory", 1, 10), idle, free).err(), Some(RunError::InUse));
        let mut second = runs.join(&audit, &hello("acme", 1, 10), idle, charge).unwrap();
        // Only the stream that created the run charged it.
        assert_eq!(charges.get(), 1);
        assert!(matches!(first.finish(5, "ecdh", None), Ok(Finished::Shard)));
        let Ok(Finished::Last { matches: None }) = second.finish(7, "ecdh", None) else { panic!("not the last") };
        second.done(None, None);
        // A replayed run id is refused; the run was audited once, as ok.
        assert_eq!(runs.join(&audit, &hello("acme", 0, 10), idle, free).err(), Some(RunError::Finished));
        let lines = audited(audit.path());
        assert_eq!(lines.len(), 1);
        assert_eq!((&lines[0]["outcome"], &lines[0]["owner_set_size"]), (&"ok".into(), &12.into()));
    }

    /// A retried shard that arrives while the last shard writes the run's results
    /// (every shard finished, the run not yet done) is refused as for a finished run
    /// and does not fail it: the run is audited once, as ok (it was audited twice,
    /// failed then ok, before).
    #[test]
    fn a_shard_repeated_while_the_last_one_writes_the_results_is_refused_once() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let runs = registry(&dir);
        let idle = Duration::from_secs(60);
        let mut first = runs.join(&audit, &hello("acme", 0, 10), idle, free).unwrap();
        let mut second = runs.join(&audit, &hello("acme", 1, 10), idle, free).unwrap();
        assert!(matches!(first.finish(5, "ecdh", None), Ok(Finished::Shard)));
        let Ok(Finished::Last { .. }) = second.finish(7, "ecdh", None) else { panic!("not the last") };
        assert_eq!(runs.join(&audit, &hello("acme", 0, 10), idle, free).err(), Some(RunError::Finished));
        second.done(None, None);
        let lines = audited(audit.path());
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["outcome"], "ok");
    }

    #[test]
    fn a_run_left_without_streams_past_the_idle_timeout_fails_once() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let runs = registry(&dir);
        let mut first = runs.join(&audit, &hello("acme", 0, 10), Duration::ZERO, free).unwrap();
        assert!(matches!(first.finish(5, "ecdh", None), Ok(Finished::Shard)));
        drop(first);
        std::thread::sleep(Duration::from_millis(5));
        // The next join, of any run, expires it; its missing shard is then refused.
        assert_eq!(runs.join(&audit, &hello("acme", 1, 10), Duration::ZERO, free).err(), Some(RunError::Failed));
        let lines = audited(audit.path());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["outcome"], "DeadlineExceeded");
        assert_eq!(lines[0]["shards_finished"], 1);
    }

    /// Two server processes sharing the state file (two registries on one
    /// directory): a run's shards served by both are one run, its owner matches
    /// merged across processes (a record's email and phone in different shards),
    /// audited once; a process restarted later still refuses the run id.
    #[test]
    fn a_runs_shards_may_reach_different_processes() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let (a, b) = (registry(&dir), registry(&dir));
        let idle = Duration::from_secs(60);
        let owner = |index, size| ShardHello { reveal: Reveal::Owner, ..hello("acme", index, size) };
        let kinds = |kinds: &[Kind]| {
            let mut set = KindSet::default();
            kinds.iter().for_each(|&k| set.insert(k));
            set
        };
        let mut first = a.join(&audit, &owner(0, 12), idle, free).unwrap();
        let mut second = b.join(&audit, &owner(1, 8), idle, free).unwrap();
        let shard0 = vec![(3, kinds(&[Kind::Email])), (7, kinds(&[Kind::Phone]))];
        let shard1 = vec![(1, kinds(&[Kind::Email])), (3, kinds(&[Kind::Phone]))];
        assert!(matches!(first.finish(50, "oprf", Some(shard0)), Ok(Finished::Shard)));
        let Ok(Finished::Last { matches: Some(merged) }) = second.finish(60, "oprf", Some(shard1)) else {
            panic!("the second process did not finish the run")
        };
        assert_eq!(
            merged,
            vec![(1, kinds(&[Kind::Email])), (3, kinds(&[Kind::Email, Kind::Phone])), (7, kinds(&[Kind::Phone]))]
        );
        second.done(Some(3), Some("results.csv"));
        let lines = audited(audit.path());
        assert_eq!(lines.len(), 1);
        assert_eq!((&lines[0]["outcome"], &lines[0]["owner_set_size"]), (&"ok".into(), &110.into()));
        // No match file is left behind; a third process refuses the finished run.
        let left: Vec<_> = std::fs::read_dir(registry_dir(&dir.path().join("state.json")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".matches"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(registry(&dir).join(&audit, &owner(0, 12), idle, free).err(), Some(RunError::Finished));
    }

    /// A process holding another audience cannot add its shard to a run: the
    /// owner's matches would be merged by record indices of different files.
    #[test]
    fn a_process_with_another_audience_fails_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let (a, b) = (registry(&dir), registry(&dir));
        let idle = Duration::from_secs(60);
        let _first = a.join(&audit, &hello("acme", 0, 10), idle, free).unwrap();
        let other = ShardHello { audience: "audience-2", ..hello("acme", 1, 10) };
        assert_eq!(b.join(&audit, &other, idle, free).err(), Some(RunError::AudienceDiffers));
        assert_eq!(b.join(&audit, &hello("acme", 1, 10), idle, free).err(), Some(RunError::Failed));
        let lines = audited(audit.path());
        assert_eq!((lines.len(), &lines[0]["outcome"]), (1, &"Aborted".into()));
    }
}

#[cfg(test)]
mod charge_tests {
    use super::*;

    /// A run whose first stream cannot pay for it does not exist: a second stream
    /// of it cannot join a run nobody paid for, it must create (and pay for) it.
    #[test]
    fn a_refused_charge_creates_no_run() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let runs = Runs::open(&registry_dir(&dir.path().join("state.json"))).unwrap();
        let hello = |index| ShardHello {
            partner: "acme",
            campaign: "spring",
            reveal: Reveal::Partner,
            run: ShardRun { run_id: [7; 16], shard_index: index, shard_count: 2, run_set_size: 20 },
            size: 10,
            audience: "a",
        };
        let idle = Duration::from_secs(60);
        let refused = runs.join(&audit, &hello(0), idle, || Err(BudgetError::Matches(3))).err();
        assert_eq!(refused, Some(RunError::Budget(BudgetError::Matches(3))));
        let again = runs.join(&audit, &hello(1), idle, || Err(BudgetError::Matches(3))).err();
        assert_eq!(again, Some(RunError::Budget(BudgetError::Matches(3))));
        // Once paid for, the run exists and its other shard joins without paying.
        let _paid = runs.join(&audit, &hello(0), idle, || Ok(())).unwrap();
        let _second =
            runs.join(&audit, &hello(1), idle, || -> Result<(), BudgetError> { panic!("charged twice") }).unwrap();
    }
}
