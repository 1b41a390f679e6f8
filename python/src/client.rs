//! `idmatch.match`: the partner's side of a match against `idmatch serve`, run by the
//! crate's own client (`idmatch::service::client::run`), exactly as
//! `idmatch match --server` runs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idmatch::normalize::Normalizer;
use idmatch::optout::BadRows;
use idmatch::psi::Reveal;
use idmatch::records::ColumnSpec;
use idmatch::service::client::{self, ClientOptions, ClientSummary};

use crate::errors::{Class, Failure};

/// What a match needs, free of Python objects (it runs without the GIL). Paths are
/// files: keys, tokens and records given as values were written to private
/// temporary files first.
pub struct MatchRequest {
    pub server: String,
    pub campaign: String,
    pub key_file: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub reveal: Reveal,
    pub normalizer: Normalizer,
    pub columns: ColumnSpec,
    pub suppress: Option<PathBuf>,
    pub bad_list_rows: BadRows,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub idle_timeout: Duration,
    pub progress: bool,
}

/// The one place this extension builds the crate's [`ClientOptions`]: when the
/// client gains options, this is the function to adapt.
fn client_options(request: MatchRequest) -> ClientOptions {
    ClientOptions {
        server: request.server,
        campaign: request.campaign,
        key_file: request.key_file,
        input: request.input,
        output: request.output,
        reveal: request.reveal,
        normalizer: request.normalizer,
        columns: request.columns,
        suppress: request.suppress,
        bad_list_rows: request.bad_list_rows,
        ca: request.ca,
        cert: request.cert,
        key: request.client_key,
        token_file: request.token_file,
        idle_timeout: request.idle_timeout,
        progress: request.progress,
    }
}

/// What the partner learned.
pub struct MatchOutcome {
    pub summary: ClientSummary,
    /// `(record id, matched kinds)` in input order, where the reveal mode tells the
    /// partner which records matched.
    pub matches: Option<Vec<(String, Vec<String>)>>,
}

/// Runs one match on a runtime of its own, as the CLI does.
pub fn run(request: MatchRequest) -> Result<MatchOutcome, Failure> {
    let output = request.output.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Class::Match, format!("cannot start the async runtime: {e}")))?;
    let summary = runtime.block_on(client::run(client_options(request))).map_err(Failure::from)?;
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
