//! `idmatch.tokens` / `idmatch.write_tokens`: the hashed export, as `idmatch tokens`
//! makes it (`src/cli/tokens.rs`): the crate's reader, tokenizer, opt-out list and
//! export writer (`idmatch::output::TokenExport`); the same rows, and with an output
//! file the same bytes and `.meta.json` sidecar.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use idmatch::key::Key;
use idmatch::normalize::Normalizer;
use idmatch::optout::BadRows;
use idmatch::output::TokenExport;
use idmatch::prepare::{self, Filter, Prepared};
use idmatch::progress::Progress;
use idmatch::records::{ColumnSpec, Mode, ReadOptions};
use idmatch::token::{KeyFingerprint, Tokenizer};

use crate::errors::{Class, Failure};

/// Everything an export needs, free of Python objects (it runs without the GIL).
pub struct TokensRequest {
    pub key: Key,
    pub input: PathBuf,
    pub normalizer: Normalizer,
    pub columns: ColumnSpec,
    pub optouts: Option<PathBuf>,
    pub bad_list_rows: BadRows,
    pub progress: Option<Arc<dyn Progress>>,
}

/// The tokenized records and which of them the opt-out list excludes.
pub struct Export {
    side: Prepared,
    fingerprint: KeyFingerprint,
}

/// One exported row: record id, kind, token hex.
pub type Row = (String, &'static str, String);

impl Export {
    /// Reads and tokenizes the input, as `idmatch tokens` does.
    pub fn read(request: TokensRequest) -> Result<Export, Failure> {
        let tokenizer = Tokenizer::new(&request.key);
        // As the CLI: a member's several rows share an id in a token export.
        let mut options = ReadOptions::new(request.normalizer.clone(), Mode::Export);
        options.columns = request.columns;
        options.progress = request.progress;
        let optouts = Filter::list_or_none(request.optouts.as_deref(), &request.normalizer, request.bad_list_rows)
            .map_err(Failure::input)?;
        let side = prepare::prepare(&request.input, &tokenizer, options, &optouts).map_err(Failure::input)?;
        Ok(Export { side, fingerprint: KeyFingerprint::of(&request.key) })
    }

    /// The rows, in the order the CLI writes them.
    pub fn rows(&self) -> Vec<Row> {
        let set = self.side.records();
        set.entries()
            .iter()
            .filter(|e| !self.side.is_excluded(e.record))
            .map(|e| (set.id(e.record).to_owned(), e.kind.label(), e.token.to_hex()))
            .collect()
    }

    /// Writes `output` and `<output>.meta.json` with the CLI's writer (whole or not
    /// at all, mode 0600) and returns the description.
    pub fn write(&self, output: &Path) -> Result<serde_json::Value, Failure> {
        let export = TokenExport::create(output).map_err(|e| Failure::new(Class::Output, e))?;
        let written = export.write(&self.side, &self.fingerprint).map_err(|e| Failure::new(Class::Output, e))?;
        Ok(written.description)
    }
}
