//! The partner's epsilon ledger (`idmatch measure --server --epsilon-ledger FILE`):
//! how much the owners have learned about the partner's exposures, in epsilon, per
//! exposure dataset, over every measurement run with the file.
//!
//! Why: with learner `owner` or `both` the owner decrypts figures the partner
//! noised for one measurement at the campaign's `ε`. A partner that measures the
//! same exposures again and again hands the owner independent noisy copies, and
//! their average converges on the exact figures: `k` measurements release `k·ε`
//! (sequential composition). The owner's server keeps a lifetime ledger for its
//! outcome data; this is the partner's, for its exposures, kept on its side, since
//! the owner is the party it protects against.
//!
//! Rules (fail closed):
//! - a measurement in which the owner learns noisy figures is charged the accept's
//!   `ε` against the dataset's lifetime budget **after the accept and before
//!   anything about the partner's people is sent**; one that would pass the budget
//!   is refused there ([`LedgerError::Spent`]), and the charge stays when the
//!   measurement fails later (the owner may have learned the figures);
//! - a measurement in which the owner learns exact figures (no `ε`, allowed by
//!   `--trust-owner-with-split`) cannot be accounted for in `ε`: with a ledger it is
//!   refused ([`LedgerError::Exact`]);
//! - learner `partner` releases nothing to the owner and is not charged;
//! - a ledger that cannot be read, parsed, locked or written refuses the
//!   measurement ([`LedgerError::Io`], [`LedgerError::Malformed`]); it is never
//!   replaced by an empty one. Before connecting, [`Ledger::check`] reads it and
//!   refuses a dataset whose budget is spent, so such a run costs the owner nothing.
//!
//! The file: JSON, `{"version": 1, "datasets": {NAME: {"spent": ε, "measurements":
//! [{"time_unix_ms", "server", "campaign", "measurement_id", "epsilon"}]}}}`, mode
//! 0600, replaced atomically (a temporary file, synced, renamed) under an exclusive
//! lock on `FILE.lock`, so concurrent clients sharing a ledger charge one after the
//! other. It holds no identifier and no key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lockfile;

/// The ledger's format version.
const VERSION: u32 = 1;

/// The default lifetime budget per exposure dataset: three measurements at the
/// default `--max-epsilon` (4).
pub const DEFAULT_LIFETIME: f64 = 12.0;

/// Why the ledger refused a measurement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ledger or its lock file could not be read, created or written.
    #[error("epsilon ledger {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The ledger is not one this version wrote.
    #[error("epsilon ledger {path}: {reason}; it is left as it is")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The measurement would pass the dataset's lifetime budget.
    #[error(
        "exposure dataset `{dataset}` has spent epsilon {spent} of its lifetime budget of {lifetime} \
         (--max-epsilon-lifetime); {}, so nothing about your people was sent",
        match epsilon { Some(e) => format!("this measurement would add {e}"), None => "nothing more fits".into() }
    )]
    Spent {
        /// The exposure dataset.
        dataset: String,
        /// Spent so far.
        spent: f64,
        /// This measurement's charge (`None`: refused before connecting).
        epsilon: Option<f64>,
        /// The budget.
        lifetime: f64,
    },
    /// The owner would learn exact figures, which no epsilon accounts for.
    #[error(
        "the campaign releases exact figures to the owner (no epsilon), which the epsilon ledger cannot account \
         for; nothing about your people was sent. Ask the owner for an epsilon, or run without --epsilon-ledger"
    )]
    Exact,
}

/// One charged measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// When it was charged (Unix milliseconds).
    pub time_unix_ms: u64,
    /// The owner's server, as given.
    pub server: String,
    /// The campaign id.
    pub campaign: String,
    /// The id the server gave the measurement.
    pub measurement_id: String,
    /// The campaign's epsilon, charged.
    pub epsilon: f64,
}

/// One exposure dataset's account.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The sum of the entries' epsilons.
    pub spent: f64,
    /// Every charged measurement, oldest first.
    pub measurements: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    datasets: BTreeMap<String, Account>,
}

/// A ledger file, its lifetime budget and the dataset a measurement charges.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// The ledger file.
    pub path: PathBuf,
    /// The exposure dataset charged.
    pub dataset: String,
    /// The lifetime budget of every dataset, in epsilon (positive, finite).
    pub lifetime: f64,
}

impl Ledger {
    /// Refuses, before anything is sent, a dataset whose budget is spent, or a
    /// ledger that cannot be locked or read.
    pub fn check(&self) -> Result<(), LedgerError> {
        let _lock = self.lock()?;
        let spent = self.account()?.spent;
        if spent < self.lifetime { Ok(()) } else { Err(self.spent(spent, None)) }
    }

    /// The exclusive lock on `FILE.lock`, held while it lives.
    fn lock(&self) -> Result<std::fs::File, LedgerError> {
        let path = self.path.with_extension("lock");
        lockfile::exclusive(&path).map_err(|source| LedgerError::Io { path, source })
    }

    /// The dataset's account as the file holds it now (empty if there is no file).
    pub fn account(&self) -> Result<Account, LedgerError> {
        Ok(self.read()?.datasets.remove(&self.dataset).unwrap_or_default())
    }

    /// Charges one measurement of `epsilon` (`None`: the owner learns exact figures,
    /// refused), or refuses it when the budget would be passed: under the lock, the
    /// file read, checked, extended and replaced.
    pub fn charge(&self, epsilon: Option<f64>, entry: Entry) -> Result<Account, LedgerError> {
        let epsilon = epsilon.ok_or(LedgerError::Exact)?;
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let account = file.datasets.entry(self.dataset.clone()).or_default();
        let spent = account.spent + epsilon;
        // A tolerance for the sums of decimal epsilons (0.1 + 0.2 > 0.3).
        if spent > self.lifetime * (1.0 + 1e-9) {
            return Err(self.spent(account.spent, Some(epsilon)));
        }
        account.spent = spent;
        account.measurements.push(Entry { epsilon, ..entry });
        let account = account.clone();
        self.write(&file)?;
        Ok(account)
    }

    fn spent(&self, spent: f64, epsilon: Option<f64>) -> LedgerError {
        LedgerError::Spent { dataset: self.dataset.clone(), spent, epsilon, lifetime: self.lifetime }
    }

    fn read(&self) -> Result<File, LedgerError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(File { version: VERSION, datasets: BTreeMap::new() });
            }
            Err(source) => return Err(LedgerError::Io { path: self.path.clone(), source }),
        };
        let malformed = |reason: String| LedgerError::Malformed { path: self.path.clone(), reason };
        let file: File = serde_json::from_str(&text).map_err(|e| malformed(format!("not a ledger ({e})")))?;
        if file.version != VERSION {
            return Err(malformed(format!("version {} where this idmatch writes {VERSION}", file.version)));
        }
        if let Some((name, _)) = file.datasets.iter().find(|(_, a)| !a.spent.is_finite() || a.spent < 0.0) {
            return Err(malformed(format!("dataset `{name}` has a spent epsilon that is not a non-negative number")));
        }
        Ok(file)
    }

    fn write(&self, file: &File) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io { path: self.path.clone(), source };
        let text = serde_json::to_string_pretty(file).map_err(|e| io(std::io::Error::other(e)))?;
        write_replacing(&self.path, text.as_bytes()).map_err(io)
    }
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600), syncs it and
/// renames it over `path`.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(&tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            time_unix_ms: 1,
            server: "https://owner.example:7443".into(),
            campaign: "spring".into(),
            measurement_id: id.into(),
            epsilon: 0.0,
        }
    }

    #[test]
    fn charges_add_up_to_the_lifetime_budget_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger { path: dir.path().join("ledger.json"), dataset: "spring".into(), lifetime: 1.0 };
        ledger.check().unwrap();
        for i in 0..3 {
            ledger.charge(Some(0.1 + 0.2 * f64::from(i % 2)), entry(&format!("m{i}"))).unwrap();
        }
        // 0.1 + 0.3 + 0.1 = 0.5; 0.5 more fits exactly, then nothing.
        let account = ledger.charge(Some(0.5), entry("m3")).unwrap();
        assert!((account.spent - 1.0).abs() < 1e-12 && account.measurements.len() == 4, "{account:?}");
        let err = ledger.charge(Some(0.01), entry("m4")).unwrap_err();
        assert!(matches!(err, LedgerError::Spent { epsilon: Some(e), .. } if e == 0.01), "{err}");
        assert!(matches!(ledger.check().unwrap_err(), LedgerError::Spent { .. }));
        // Another dataset has its own account in the same file.
        let other = Ledger { dataset: "summer".into(), ..ledger.clone() };
        other.check().unwrap();
        other.charge(Some(1.0), entry("s0")).unwrap();
        assert_eq!(ledger.account().unwrap().measurements.len(), 4);
        // Exact figures are refused and charge nothing.
        assert!(matches!(other.charge(None, entry("s1")).unwrap_err(), LedgerError::Exact));
        assert_eq!(other.account().unwrap().measurements.len(), 1);
    }

    #[test]
    fn a_ledger_that_cannot_be_read_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let ledger = Ledger { path: path.clone(), dataset: "spring".into(), lifetime: 10.0 };
        for text in ["", "{\"version\": 1}", "{\"version\": 2, \"datasets\": {}}", "[1, 2]"] {
            std::fs::write(&path, text).unwrap();
            assert!(matches!(ledger.check().unwrap_err(), LedgerError::Malformed { .. }), "{text}");
            assert!(matches!(ledger.charge(Some(1.0), entry("m")).unwrap_err(), LedgerError::Malformed { .. }));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        let negative = r#"{"version": 1, "datasets": {"spring": {"spent": -5.0, "measurements": []}}}"#;
        std::fs::write(&path, negative).unwrap();
        assert!(matches!(ledger.check().unwrap_err(), LedgerError::Malformed { .. }));
        // A directory where the file should be; a directory that does not exist.
        let ledger = Ledger { path: dir.path().to_owned(), ..ledger };
        assert!(matches!(ledger.check().unwrap_err(), LedgerError::Io { .. }));
        let ledger = Ledger { path: dir.path().join("missing/ledger.json"), ..ledger };
        assert!(matches!(ledger.check().unwrap_err(), LedgerError::Io { .. }));
    }
}
