//! Per-partner budgets, kept in a small JSON state file so that they survive a
//! restart: matches and identifiers per UTC day, the epsilon of measurements per
//! campaign per UTC day, and the epsilon of measurements per outcome dataset over
//! the server's lifetime (never reset: the noise of repeated measurements averages
//! away, so only a total bounds what a partner learns about one person). The file
//! is replaced atomically (write to a temporary file, then rename).
//!
//! Several server processes may share one state file (README, "Several server
//! processes"): every charge takes the exclusive lock of `<state_file>.lock`
//! (`lockfile`), reads the file as it is now, decides, writes it back and only
//! then releases the lock, so two processes never charge against the same copy.
//! A state file that disappears after this process has seen it is an error, not a
//! fresh start: deleting it must not hand every partner a new budget.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::audit::now_unix_ms;
use super::lockfile;

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Usage {
    matches: u64,
    identifiers: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Days since the Unix epoch (UTC) the counts belong to.
    day: u64,
    partners: BTreeMap<String, Usage>,
    /// Epsilon spent today, by partner, then campaign (absent in files written
    /// before measurements).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    epsilon: BTreeMap<String, BTreeMap<String, f64>>,
    /// Epsilon spent ever, by partner, then outcome dataset (kept across days).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    lifetime_epsilon: BTreeMap<String, BTreeMap<String, f64>>,
    /// The sharded runs charged today, by partner, then run id (hex): a run is one
    /// match, charged by its first stream, and its id is never charged (or served)
    /// again, also after a restart.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    runs: BTreeMap<String, BTreeSet<String>>,
}

/// Why a match was refused by its budget.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum BudgetError {
    #[error("daily match budget of {0} used up")]
    Matches(u64),
    #[error("daily identifier budget of {0} would be exceeded")]
    Identifiers(u64),
    #[error(
        "daily epsilon budget of {daily} for this partner on campaign `{campaign}` would be exceeded: {spent} spent today, this measurement needs {asked}"
    )]
    Epsilon { campaign: String, daily: f64, spent: f64, asked: f64 },
    #[error(
        "lifetime epsilon budget of {lifetime} for this partner on outcome dataset `{dataset}` would be exceeded: {spent} spent so far, this measurement needs {asked}"
    )]
    LifetimeEpsilon { dataset: String, lifetime: f64, spent: f64, asked: f64 },
    /// The run id was charged before: a run is charged (and served) once.
    #[error("this run id was used before today; start a new run with a new run id")]
    RunReplayed,
    #[error("budget state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    /// The state file exists but is not a budget state (truncated, edited, another
    /// file): the server refuses to start rather than forget what was spent.
    #[error(
        "budget state {path} cannot be read ({reason}); it records each partner's budget used today and the epsilon each partner \
         ever spent on each outcome dataset (state_file in server.toml). Restore it from a backup: moving it aside would also \
         forget the lifetime epsilon budgets, which protect the outcome data against repeated measurements"
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl BudgetError {
    /// A stable machine-readable name of the refusal, sent beside the gRPC status
    /// (the `idmatch-error` metadata entry, docs/PROTOCOL.md §9).
    pub fn code(&self) -> &'static str {
        match self {
            BudgetError::Matches(_) => "budget-matches",
            BudgetError::Identifiers(_) => "budget-identifiers",
            BudgetError::Epsilon { .. } => "budget-epsilon-daily",
            BudgetError::LifetimeEpsilon { .. } => "budget-epsilon-lifetime",
            BudgetError::RunReplayed => "budget-run-replayed",
            BudgetError::State { .. } | BudgetError::Corrupt { .. } => "budget-state",
        }
    }
}

/// The budgets of every partner. The limits are given with each charge, so that a
/// configuration reload changes them without losing what was used today.
pub struct Budgets {
    path: PathBuf,
    lock: PathBuf,
    /// Whether this process has read or written the file: from then on it must exist.
    seen: AtomicBool,
}

/// A partner's daily allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub matches: u64,
    pub identifiers: u64,
}

/// The epsilon one measurement spends (its worst case per person) on one campaign
/// and its outcome dataset, with the partner's daily budget on the campaign and
/// lifetime budget on the dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpsilonCharge<'a> {
    pub campaign: &'a str,
    pub dataset: &'a str,
    pub epsilon: f64,
    pub daily: f64,
    pub lifetime: f64,
}

/// What a partner has spent once a charge is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpsilonSpent {
    /// On the campaign today, this measurement included.
    pub today: f64,
    /// On the outcome dataset ever, this measurement included.
    pub lifetime: f64,
}

/// A small tolerance, so that a budget of 3 fits three charges of 1.0 whatever the
/// rounding of their sum.
fn fits(spent: f64, asked: f64, budget: f64) -> bool {
    spent + asked <= budget * (1.0 + 1e-9)
}

fn today() -> u64 {
    now_unix_ms() / 86_400_000
}

impl Budgets {
    /// Opens the state file (a missing file means nothing used yet), checking that
    /// it can be read: a corrupt one stops the server at start.
    pub fn open(path: &Path) -> Result<Budgets, BudgetError> {
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let budgets = Budgets { path: path.to_owned(), lock: PathBuf::from(name), seen: AtomicBool::new(false) };
        budgets.read()?;
        Ok(budgets)
    }

    /// The state as it is on disk now (call with the lock held, or to check it).
    fn read(&self) -> Result<State, BudgetError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                self.seen.store(true, Ordering::Relaxed);
                serde_json::from_slice(&bytes)
                    .map_err(|e| BudgetError::Corrupt { path: self.path.clone(), reason: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.seen.load(Ordering::Relaxed) => {
                Ok(State::default())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.state_error("the file has disappeared since this server read it; restore it from a backup"))
            }
            Err(e) => Err(self.state_error(e)),
        }
    }

    /// Charges one match of `identifiers` to `partner`, or refuses it.
    pub fn charge(&self, partner: &str, identifiers: u64, allowance: Allowance) -> Result<(), BudgetError> {
        self.charge_measurement(partner, identifiers, allowance, None).map(drop)
    }

    /// Charges the sharded run `run` (its id in hex) of `identifiers` (its whole
    /// size) to `partner` as one match, and records its id: a run id charged before
    /// today is refused ([`BudgetError::RunReplayed`]).
    pub fn charge_run(
        &self,
        partner: &str,
        run: &str,
        identifiers: u64,
        allowance: Allowance,
    ) -> Result<(), BudgetError> {
        self.charge_all(partner, identifiers, allowance, None, Some(run)).map(drop)
    }

    /// Charges one measurement to `partner`: one match of `identifiers` (exposure
    /// bundles), and with noise its epsilon against the campaign's daily budget
    /// and the outcome dataset's lifetime budget. All or nothing.
    pub fn charge_measurement(
        &self,
        partner: &str,
        identifiers: u64,
        allowance: Allowance,
        epsilon: Option<EpsilonCharge<'_>>,
    ) -> Result<EpsilonSpent, BudgetError> {
        self.charge_all(partner, identifiers, allowance, epsilon, None)
    }

    fn charge_all(
        &self,
        partner: &str,
        identifiers: u64,
        allowance: Allowance,
        epsilon: Option<EpsilonCharge<'_>>,
        run: Option<&str>,
    ) -> Result<EpsilonSpent, BudgetError> {
        // Held to the end: the read, the decision and the write are one step for
        // every process sharing the file.
        let _lock = lockfile::exclusive(&self.lock).map_err(|e| self.state_error(e))?;
        let mut state = self.read()?;
        let day = today();
        if state.day != day {
            let lifetime_epsilon = std::mem::take(&mut state.lifetime_epsilon);
            state = State { day, lifetime_epsilon, ..State::default() };
        }
        if let Some(run) = run
            && state.runs.get(partner).is_some_and(|runs| runs.contains(run))
        {
            return Err(BudgetError::RunReplayed);
        }
        let usage = state.partners.get(partner).copied().unwrap_or_default();
        if usage.matches >= allowance.matches {
            return Err(BudgetError::Matches(allowance.matches));
        }
        if usage.identifiers.saturating_add(identifiers) > allowance.identifiers {
            return Err(BudgetError::Identifiers(allowance.identifiers));
        }
        let mut next = state.clone();
        let mut spent = EpsilonSpent::default();
        if let Some(charge) = epsilon {
            let day_spent = state.epsilon.get(partner).and_then(|c| c.get(charge.campaign)).copied().unwrap_or(0.0);
            if !fits(day_spent, charge.epsilon, charge.daily) {
                return Err(BudgetError::Epsilon {
                    campaign: charge.campaign.to_owned(),
                    daily: charge.daily,
                    spent: day_spent,
                    asked: charge.epsilon,
                });
            }
            let ever = state.lifetime_epsilon.get(partner).and_then(|d| d.get(charge.dataset)).copied().unwrap_or(0.0);
            if !fits(ever, charge.epsilon, charge.lifetime) {
                return Err(BudgetError::LifetimeEpsilon {
                    dataset: charge.dataset.to_owned(),
                    lifetime: charge.lifetime,
                    spent: ever,
                    asked: charge.epsilon,
                });
            }
            spent = EpsilonSpent { today: day_spent + charge.epsilon, lifetime: ever + charge.epsilon };
            next.epsilon.entry(partner.to_owned()).or_default().insert(charge.campaign.to_owned(), spent.today);
            next.lifetime_epsilon
                .entry(partner.to_owned())
                .or_default()
                .insert(charge.dataset.to_owned(), spent.lifetime);
        }
        if let Some(run) = run {
            next.runs.entry(partner.to_owned()).or_default().insert(run.to_owned());
        }
        // The new usage counts only once it is on disk: a failed write refuses the
        // match without spending the partner's budget.
        next.partners.insert(
            partner.to_owned(),
            Usage { matches: usage.matches + 1, identifiers: usage.identifiers + identifiers },
        );
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| self.state_error(e))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| self.state_error(e))?;
        self.seen.store(true, Ordering::Relaxed);
        Ok(spent)
    }

    fn state_error(&self, e: impl std::fmt::Display) -> BudgetError {
        BudgetError::State { path: self.path.clone(), reason: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let allow = Allowance { matches: 2, identifiers: 100 };
        let b = Budgets::open(&path).unwrap();
        b.charge("acme", 40, allow).unwrap();
        assert_eq!(b.charge("acme", 70, allow), Err(BudgetError::Identifiers(100)));
        let b = Budgets::open(&path).unwrap();
        b.charge("acme", 10, allow).unwrap();
        assert_eq!(b.charge("acme", 1, allow), Err(BudgetError::Matches(2)));
        b.charge("other", 1, allow).unwrap();
        // A larger allowance (after a reload) applies to what was used already.
        b.charge("acme", 1, Allowance { matches: 3, identifiers: 100 }).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        for text in ["", "{\"day\": 1", "not json"] {
            std::fs::write(&path, text).unwrap();
            let Err(err) = Budgets::open(&path) else { panic!("{text:?} accepted") };
            assert!(matches!(err, BudgetError::Corrupt { .. }), "{err}");
            let message = err.to_string();
            assert!(message.contains("restore it from a backup") || message.contains("Restore it"), "{message}");
            // Moving the file aside would also forget the lifetime epsilon budgets.
            assert!(message.contains("lifetime epsilon") && !message.contains("mv "), "{message}");
        }
    }

    #[test]
    fn epsilon_budgets_are_per_partner_and_campaign_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let allow = Allowance { matches: 100, identifiers: 1000 };
        let spring = |epsilon| {
            Some(EpsilonCharge { campaign: "spring", dataset: "o.csv", epsilon, daily: 3.0, lifetime: 100.0 })
        };
        let b = Budgets::open(&path).unwrap();
        b.charge_measurement("acme", 10, allow, spring(1.0)).unwrap();
        b.charge_measurement("acme", 10, allow, spring(1.0)).unwrap();
        let b = Budgets::open(&path).unwrap();
        assert_eq!(
            b.charge_measurement("acme", 10, allow, spring(1.5)),
            Err(BudgetError::Epsilon { campaign: "spring".into(), daily: 3.0, spent: 2.0, asked: 1.5 })
        );
        // The refused measurement charged nothing, not even a match.
        b.charge_measurement("acme", 10, allow, spring(1.0)).unwrap();
        assert!(matches!(b.charge_measurement("acme", 10, allow, spring(0.1)), Err(BudgetError::Epsilon { .. })));
        // Other campaigns and other partners have budgets of their own.
        let autumn =
            Some(EpsilonCharge { campaign: "autumn", dataset: "other.csv", epsilon: 1.0, daily: 1.0, lifetime: 1.0 });
        b.charge_measurement("acme", 10, allow, autumn).unwrap();
        b.charge_measurement("other", 10, allow, spring(3.0)).unwrap();
        // Without noise nothing is spent, and the match budget still applies.
        b.charge_measurement("acme", 10, allow, None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"epsilon\""), "{text}");
        let b = Budgets::open(&path).unwrap();
        assert!(matches!(b.charge_measurement("acme", 1, allow, spring(0.5)), Err(BudgetError::Epsilon { .. })));
        assert_eq!(b.charge_measurement("acme", 1000, allow, None), Err(BudgetError::Identifiers(1000)));
    }

    /// The lifetime ledger is per partner and outcome dataset: campaigns on the
    /// same dataset share it, and a new day (which resets the daily budgets) does
    /// not reset it.
    #[test]
    fn the_lifetime_epsilon_budget_spans_campaigns_and_days() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let allow = Allowance { matches: 100, identifiers: 1000 };
        let charge = |campaign, epsilon| {
            Some(EpsilonCharge { campaign, dataset: "purchases", epsilon, daily: 10.0, lifetime: 5.0 })
        };
        let b = Budgets::open(&path).unwrap();
        assert_eq!(
            b.charge_measurement("acme", 1, allow, charge("spring", 2.0)).unwrap(),
            EpsilonSpent { today: 2.0, lifetime: 2.0 }
        );
        assert_eq!(
            b.charge_measurement("acme", 1, allow, charge("autumn", 2.0)).unwrap(),
            EpsilonSpent { today: 2.0, lifetime: 4.0 }
        );
        // Yesterday's file: the daily budgets start again, the lifetime one does not.
        let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["day"] = serde_json::json!(today() - 1);
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        let b = Budgets::open(&path).unwrap();
        assert_eq!(
            b.charge_measurement("acme", 1, allow, charge("winter", 1.5)),
            Err(BudgetError::LifetimeEpsilon { dataset: "purchases".into(), lifetime: 5.0, spent: 4.0, asked: 1.5 })
        );
        assert_eq!(
            b.charge_measurement("acme", 1, allow, charge("winter", 1.0)).unwrap(),
            EpsilonSpent { today: 1.0, lifetime: 5.0 }
        );
        // Another partner has a ledger of its own.
        b.charge_measurement("other", 1, allow, charge("spring", 5.0)).unwrap();
    }

    #[test]
    fn a_state_file_from_before_measurements_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let day = today();
        std::fs::write(
            &path,
            format!("{{\"day\": {day}, \"partners\": {{\"acme\": {{\"matches\": 2, \"identifiers\": 5}}}}}}"),
        )
        .unwrap();
        let b = Budgets::open(&path).unwrap();
        assert_eq!(b.charge("acme", 1, Allowance { matches: 2, identifiers: 100 }), Err(BudgetError::Matches(2)));
    }

    #[test]
    fn a_run_is_charged_once_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let allow = Allowance { matches: 5, identifiers: 1000 };
        let b = Budgets::open(&path).unwrap();
        b.charge_run("acme", "00ff", 300, allow).unwrap();
        assert_eq!(b.charge_run("acme", "00ff", 300, allow), Err(BudgetError::RunReplayed));
        let b = Budgets::open(&path).unwrap();
        assert_eq!(b.charge_run("acme", "00ff", 300, allow), Err(BudgetError::RunReplayed));
        // Another partner's run ids are its own; one run was one match.
        b.charge_run("other", "00ff", 300, allow).unwrap();
        assert_eq!(b.charge("acme", 701, allow), Err(BudgetError::Identifiers(1000)));
        b.charge("acme", 700, allow).unwrap();
    }

    /// Two servers sharing one state file (two `Budgets` on one path, as two
    /// processes would have): each charge sees the other's, also when they race.
    #[test]
    fn servers_sharing_a_state_file_share_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let allow = Allowance { matches: 1000, identifiers: 100 };
        let (a, b) = (Budgets::open(&path).unwrap(), Budgets::open(&path).unwrap());
        a.charge("acme", 40, allow).unwrap();
        b.charge("acme", 40, allow).unwrap();
        // Each alone has charged 40; together 80, so 30 more is over the 100.
        assert_eq!(a.charge("acme", 30, allow), Err(BudgetError::Identifiers(100)));
        assert_eq!(b.charge("acme", 30, allow), Err(BudgetError::Identifiers(100)));
        // Racing: 2 × 200 charges of one match each against a budget of 250 matches.
        let allow = Allowance { matches: 250, identifiers: u64::MAX };
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for budgets in [&a, &b] {
                let granted = &granted;
                scope.spawn(move || {
                    for _ in 0..200 {
                        if budgets.charge("racer", 1, allow).is_ok() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 250);
        let state: State = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(state.partners["racer"].matches, 250);
    }

    /// Deleting the state file under a running server does not reset the budgets.
    #[test]
    fn a_state_file_deleted_while_serving_refuses_charges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let allow = Allowance { matches: 1, identifiers: 100 };
        let b = Budgets::open(&path).unwrap();
        b.charge("acme", 10, allow).unwrap();
        std::fs::remove_file(&path).unwrap();
        let Err(err) = b.charge("acme", 10, allow) else { panic!("a deleted state file reset the budget") };
        assert!(err.to_string().contains("disappeared"), "{err}");
    }

    #[test]
    fn a_failed_write_spends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("budgets.json");
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let allow = Allowance { matches: 1, identifiers: 100 };
        let b = Budgets::open(&path).unwrap();
        std::fs::remove_dir(dir.path().join("state")).unwrap();
        assert!(matches!(b.charge("acme", 10, allow), Err(BudgetError::State { .. })));
        std::fs::create_dir(dir.path().join("state")).unwrap();
        b.charge("acme", 10, allow).unwrap();
    }
}
