//! `idmatch.match`: the partner's side of a match against `idmatch serve`, run by the
//! crate's own client (`idmatch::service::client::run`), exactly as
//! `idmatch match --server` runs it.

use std::path::Path;

use idmatch::service::client::{self, ClientOptions, ClientSummary};

use crate::errors::{Class, Failure};

/// What the partner learned.
pub struct MatchOutcome {
    pub summary: ClientSummary,
    /// `(record id, matched kinds)` in input order, where the reveal mode tells the
    /// partner which records matched.
    pub matches: Option<Vec<(String, Vec<String>)>>,
}

/// Runs one match on a runtime of its own, as the CLI does.
/// `options` holds no Python objects (the match runs without the GIL): keys, tokens
/// and records given as values were written to private temporary files first.
pub fn run(options: ClientOptions) -> Result<MatchOutcome, Failure> {
    let output = options.output.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Class::Match, format!("cannot start the async runtime: {e}")))?;
    let summary = runtime.block_on(client::run(options)).map_err(Failure::from)?;
    drop(runtime);
    let matches = match summary.matched_records {
        Some(_) => Some(read_matches(&output)?),
        None => None,
    };
    Ok(MatchOutcome { summary, matches })
}

/// Reads back the `record_id,matched_kinds` file the client wrote.
fn read_matches(path: &Path) -> Result<Vec<(String, Vec<String>)>, Failure> {
    let fail = |e: csv::Error| Failure::new(Class::Output, format!("{}: {e}", path.display()));
    let mut reader = csv::Reader::from_path(path).map_err(fail)?;
    let mut matches = Vec::new();
    for row in reader.records() {
        let row = row.map_err(fail)?;
        let (Some(id), Some(kinds)) = (row.get(0), row.get(1)) else {
            return Err(Failure::new(Class::Output, format!("{}: a row without two fields", path.display())));
        };
        matches.push((id.to_owned(), kinds.split(';').map(str::to_owned).collect()));
    }
    Ok(matches)
}
