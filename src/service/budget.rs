//! Per-partner daily budgets (matches and identifiers per UTC day), kept in a small
//! JSON state file so that they survive a restart. The file is replaced atomically
//! (write to a temporary file, then rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::audit::now_unix_ms;

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
}

/// Why a match was refused by its budget.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetError {
    #[error("daily match budget of {0} used up")]
    Matches(u64),
    #[error("daily identifier budget of {0} would be exceeded")]
    Identifiers(u64),
    #[error("budget state {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

/// The budgets of every partner. The limits are given with each charge, so that a
/// configuration reload changes them without losing what was used today.
pub struct Budgets {
    path: PathBuf,
    state: Mutex<State>,
}

/// A partner's daily allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub matches: u64,
    pub identifiers: u64,
}

fn today() -> u64 {
    now_unix_ms() / 86_400_000
}

impl Budgets {
    /// Loads the state file (a missing file means nothing used yet).
    pub fn open(path: &Path) -> Result<Budgets, BudgetError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BudgetError::State { path: path.to_owned(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(BudgetError::State { path: path.to_owned(), reason: e.to_string() }),
        };
        Ok(Budgets { path: path.to_owned(), state: Mutex::new(state) })
    }

    /// Charges one match of `identifiers` to `partner`, or refuses it.
    pub fn charge(&self, partner: &str, identifiers: u64, allowance: Allowance) -> Result<(), BudgetError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let day = today();
        if state.day != day {
            *state = State { day, partners: BTreeMap::new() };
        }
        let usage = state.partners.get(partner).copied().unwrap_or_default();
        if usage.matches >= allowance.matches {
            return Err(BudgetError::Matches(allowance.matches));
        }
        if usage.identifiers.saturating_add(identifiers) > allowance.identifiers {
            return Err(BudgetError::Identifiers(allowance.identifiers));
        }
        // The new usage counts only once it is on disk: a failed write refuses the
        // match without spending the partner's budget.
        let mut next = state.clone();
        next.partners.insert(
            partner.to_owned(),
            Usage { matches: usage.matches + 1, identifiers: usage.identifiers + identifiers },
        );
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| self.state_error(e))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| self.state_error(e))?;
        *state = next;
        Ok(())
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
