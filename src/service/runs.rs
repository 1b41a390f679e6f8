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
//! What is NOT shared between server processes: this registry lives in the
//! process's memory. Every stream of one run must reach the same `idmatch serve`
//! process (the client sends the run id in the `idmatch-run-id` request header for
//! a load balancer to hash on); a shard that reaches another process starts a run
//! there, which is charged again and never completes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::Status;

use super::audit::{AuditLog, now_unix_ms};
use crate::psi::{KindSet, Reveal, ShardRun, merge_matched_records};

/// How long a finished or failed run's id is remembered (and refused if replayed).
const REMEMBERED: Duration = Duration::from_secs(24 * 3600);

/// Why a stream may not join its run, or its run failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
        }
    }

    /// The gRPC status: FAILED_PRECONDITION for a hello at odds with its run,
    /// ALREADY_EXISTS for a repeated shard or a used run id, ABORTED for a run that
    /// failed.
    pub fn status(&self) -> Status {
        let status = match self {
            RunError::InUse | RunError::Repeated(_) | RunError::Finished => Status::already_exists(self.to_string()),
            RunError::Mismatch { .. } | RunError::Sizes { .. } => Status::failed_precondition(self.to_string()),
            RunError::Failed => Status::aborted(self.to_string()),
        };
        super::status::with_code(status, self.code())
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
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Open,
    Done,
    Failed,
}

/// One run.
struct Run {
    partner: String,
    campaign: String,
    reveal: Reveal,
    shard_count: u32,
    run_set_size: u64,
    joined: Vec<bool>,
    joined_count: u32,
    announced: u64,
    finished: u32,
    /// Streams joined and not yet settled.
    active: u32,
    phase: Phase,
    started: Instant,
    /// The last join or settle.
    touched: Instant,
    owner_set_size: u64,
    /// The owner's matches of the finished shards (owner and both modes).
    matches: Vec<(u32, KindSet)>,
    protocol: Option<&'static str>,
}

impl Run {
    /// Keeps of a settled run only what refuses its id (about 200 bytes, for
    /// [`REMEMBERED`]): its shards' flags and matches go.
    fn settle(&mut self) {
        self.joined = Vec::new();
        self.matches = Vec::new();
        self.touched = Instant::now();
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
    reveal: &'static str,
    protocol: Option<&'static str>,
    shard_count: u32,
    run_set_size: u64,
    shards_finished: u32,
    owner_set_size: u64,
    owner_matched_records: Option<u64>,
    results_file: Option<&'a str>,
    outcome: String,
    duration_ms: u64,
}

/// The runs of one server process.
#[derive(Default)]
pub(crate) struct Runs {
    runs: Mutex<HashMap<[u8; 16], Run>>,
}

/// Whether the stream that joined created its run (and must charge the budget).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    First,
    Later,
}

impl Runs {
    /// Joins `hello`'s stream to its run (see the module documentation); a run left
    /// open with no stream for longer than `idle` is failed first.
    pub fn join<'a>(
        &'a self,
        audit: &'a AuditLog,
        hello: &ShardHello<'_>,
        idle: Duration,
    ) -> Result<(RunShard<'a>, Joined), RunError> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        expire(&mut runs, audit, idle);
        let id = hello.run.run_id;
        let ticket = || RunShard { runs: self, audit, id, settled: false };
        let Some(run) = runs.get_mut(&id) else {
            let mut joined = vec![false; hello.run.shard_count as usize];
            joined[hello.run.shard_index as usize] = true;
            let now = Instant::now();
            let run = Run {
                partner: hello.partner.to_owned(),
                campaign: hello.campaign.to_owned(),
                reveal: hello.reveal,
                shard_count: hello.run.shard_count,
                run_set_size: hello.run.run_set_size,
                joined,
                joined_count: 1,
                announced: hello.size,
                finished: 0,
                active: 1,
                phase: Phase::Open,
                started: now,
                touched: now,
                owner_set_size: 0,
                matches: Vec::new(),
                protocol: None,
            };
            let checked = check_sizes(&run);
            runs.insert(id, run);
            return match checked {
                Ok(()) => Ok((ticket(), Joined::First)),
                Err(e) => {
                    fail(&mut runs, audit, &id, "FailedPrecondition");
                    Err(e)
                }
            };
        };
        if run.partner != hello.partner {
            return Err(RunError::InUse);
        }
        let refusal = match run.phase {
            Phase::Done => Some(RunError::Finished),
            Phase::Failed => Some(RunError::Failed),
            Phase::Open => None,
        };
        if let Some(e) = refusal {
            return Err(e);
        }
        let index = hello.run.shard_index;
        let mismatch = |what, got: String, run: String| Err(RunError::Mismatch { what, got, run });
        let checked = if run.campaign != hello.campaign {
            mismatch("campaign", "differs".into(), "another".into())
        } else if run.reveal != hello.reveal {
            mismatch("reveal mode", hello.reveal.name().into(), run.reveal.name().into())
        } else if run.shard_count != hello.run.shard_count {
            mismatch("shard count", hello.run.shard_count.to_string(), run.shard_count.to_string())
        } else if run.run_set_size != hello.run.run_set_size {
            mismatch("run set size", hello.run.run_set_size.to_string(), run.run_set_size.to_string())
        } else if run.joined[index as usize] {
            Err(RunError::Repeated(index))
        } else {
            run.joined[index as usize] = true;
            run.joined_count += 1;
            run.announced = run.announced.saturating_add(hello.size);
            run.active += 1;
            run.touched = Instant::now();
            check_sizes(run)
        };
        match checked {
            Ok(()) => Ok((ticket(), Joined::Later)),
            Err(e) => {
                // A shard at odds with its run fails the run: fail closed.
                fail(&mut runs, audit, &id, &format!("{:?}", e.status().code()));
                Err(e)
            }
        }
    }
}

/// The shards' sizes: within the run's size, and equal to it once all are in.
fn check_sizes(run: &Run) -> Result<(), RunError> {
    let all_in = run.joined_count == run.shard_count;
    if run.announced > run.run_set_size || (all_in && run.announced != run.run_set_size) {
        return Err(RunError::Sizes {
            announced: run.announced,
            joined: run.joined_count,
            shards: run.shard_count,
            run_set_size: run.run_set_size,
        });
    }
    Ok(())
}

/// Fails runs open with no stream for longer than `idle`, and forgets settled runs
/// older than [`REMEMBERED`].
fn expire(runs: &mut HashMap<[u8; 16], Run>, audit: &AuditLog, idle: Duration) {
    let abandoned: Vec<[u8; 16]> = runs
        .iter()
        .filter(|(_, r)| r.phase == Phase::Open && r.active == 0 && r.touched.elapsed() > idle)
        .map(|(id, _)| *id)
        .collect();
    for id in abandoned {
        fail(runs, audit, &id, "DeadlineExceeded");
    }
    runs.retain(|_, r| r.phase == Phase::Open || r.touched.elapsed() < REMEMBERED);
}

/// Fails the open run `id` and audits it with `outcome`; nothing if it is settled.
fn fail(runs: &mut HashMap<[u8; 16], Run>, audit: &AuditLog, id: &[u8; 16], outcome: &str) {
    let Some(run) = runs.get_mut(id) else { return };
    if run.phase != Phase::Open {
        return;
    }
    run.phase = Phase::Failed;
    run.settle();
    audit_run(audit, id, run, None, None, outcome.to_owned());
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
        reveal: run.reveal.name(),
        protocol: run.protocol,
        shard_count: run.shard_count,
        run_set_size: run.run_set_size,
        shards_finished: run.finished,
        owner_set_size: run.owner_set_size,
        owner_matched_records: matched,
        results_file,
        outcome,
        duration_ms: run.started.elapsed().as_millis() as u64,
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
    /// matches (owner and both modes). A run that failed meanwhile is refused.
    pub fn finish(
        &mut self,
        owner_set_size: u64,
        protocol: &'static str,
        matches: Option<Vec<(u32, KindSet)>>,
    ) -> Result<Finished, RunError> {
        let mut runs = self.runs.runs.lock().unwrap_or_else(|p| p.into_inner());
        let run = runs.get_mut(&self.id).ok_or(RunError::Failed)?;
        if run.phase != Phase::Open {
            self.settled = true;
            return Err(RunError::Failed);
        }
        run.finished += 1;
        run.touched = Instant::now();
        run.owner_set_size += owner_set_size;
        run.protocol = Some(protocol);
        let owner_learns = matches.is_some();
        if let Some(mut m) = matches {
            run.matches.append(&mut m);
        }
        if run.finished < run.shard_count {
            run.active -= 1;
            self.settled = true;
            return Ok(Finished::Shard);
        }
        // The last shard: the run stays open (and this stream unsettled) until its
        // results are written and `done` is called.
        let matches = owner_learns.then(|| merge_matched_records(std::mem::take(&mut run.matches)));
        Ok(Finished::Last { matches })
    }

    /// Ends the run after its last shard: its results (`matched` records, in
    /// `results_file`) are written; audits it as `ok`.
    pub fn done(mut self, matched: Option<u64>, results_file: Option<&str>) {
        let mut runs = self.runs.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(run) = runs.get_mut(&self.id) {
            run.phase = Phase::Done;
            run.active -= 1;
            run.settle();
            audit_run(self.audit, &self.id, run, matched, results_file, "ok".to_owned());
        }
        self.settled = true;
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
        let mut runs = self.runs.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(run) = runs.get_mut(&self.id) {
            run.active = run.active.saturating_sub(1);
        }
        fail(&mut runs, self.audit, &self.id, outcome);
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

    fn hello(partner: &str, index: u32, size: u64) -> ShardHello<'_> {
        ShardHello {
            partner,
            campaign: "spring",
            reveal: Reveal::Partner,
            run: ShardRun { run_id: [9; 16], shard_index: index, shard_count: 2, run_set_size: 20 },
            size,
        }
    }

    fn audited(path: &std::path::Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn another_partner_cannot_join_or_disturb_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let runs = Runs::default();
        let idle = Duration::from_secs(60);
        let (mut first, joined) = runs.join(&audit, &hello("acme", 0, 10), idle).unwrap();
        assert_eq!(joined, Joined::First);
        assert_eq!(runs.join(&audit, &hello("mallory", 1, 10), idle).err(), Some(RunError::InUse));
        let (mut second, joined) = runs.join(&audit, &hello("acme", 1, 10), idle).unwrap();
        assert_eq!(joined, Joined::Later);
        assert!(matches!(first.finish(5, "ecdh", None), Ok(Finished::Shard)));
        let Ok(Finished::Last { matches: None }) = second.finish(7, "ecdh", None) else { panic!("not the last") };
        second.done(None, None);
        // A replayed run id is refused; the run was audited once, as ok.
        assert_eq!(runs.join(&audit, &hello("acme", 0, 10), idle).err(), Some(RunError::Finished));
        let lines = audited(audit.path());
        assert_eq!(lines.len(), 1);
        assert_eq!((&lines[0]["outcome"], &lines[0]["owner_set_size"]), (&"ok".into(), &12.into()));
    }

    #[test]
    fn a_run_left_without_streams_past_the_idle_timeout_fails_once() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let runs = Runs::default();
        let (mut first, _) = runs.join(&audit, &hello("acme", 0, 10), Duration::ZERO).unwrap();
        assert!(matches!(first.finish(5, "ecdh", None), Ok(Finished::Shard)));
        drop(first);
        std::thread::sleep(Duration::from_millis(5));
        // The next join, of any run, expires it; its missing shard is then refused.
        assert_eq!(runs.join(&audit, &hello("acme", 1, 10), Duration::ZERO).err(), Some(RunError::Failed));
        let lines = audited(audit.path());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["outcome"], "DeadlineExceeded");
        assert_eq!(lines[0]["shards_finished"], 1);
    }
}
