//! The partner's shard client over shard files: one shard stream of a run
//! (docs/PROTOCOL.md §13.4) read from the files `idmatch shard` wrote (§13.2)
//! instead of from the input itself, so that each process of a run (an Indexed
//! Job's pod) reads its own shard file and the other files' tokens, never the
//! whole input with its raw identifiers.
//!
//! Every one of the `N` files is opened and checked as §13.2 requires (campaign
//! key, profile, `N`, index, length, checksum) before any of its entries is used:
//! the run's size is the sum of each file's distinct tokens, read one file at a
//! time (memory holds one shard's tokens), and the set matched is file `I`'s. The
//! suppressions are those the files were written under: nothing is re-applied.

use std::path::{Path, PathBuf};

use super::client::{ClientError, ClientOptions, ClientSummary, OneShard, Run, ShardMatch, run_prepared_shard};
use crate::key::Key;
use crate::normalize::Profile;
use crate::output::{MatchRows, OutputError, Staged};
use crate::psi::PreparedSet;
use crate::shard::file::{Expected, ShardReader};
use crate::shard::split::shard_file_name;
use crate::token::KeyFingerprint;

/// Shard `I` of a run, read from a directory of shard files.
struct ShardInput {
    /// The sum over the `N` files of their distinct tokens.
    run_set_size: u64,
    /// File `I`'s entries, records numbered in file order.
    set: PreparedSet,
    /// The record ids of file `I`, by those numbers.
    ids: Vec<String>,
}

/// Runs `shard` of its run from the shard files in `dir` and writes the shard's
/// matched records (by the record ids the file carries) to `options.output`, in
/// the format of every match file. `options.input` and the suppression list are
/// not read: the files were written from an input, with its suppressions applied.
pub async fn run(options: ClientOptions, shard: OneShard, dir: PathBuf) -> Result<ClientSummary, ClientError> {
    if options.suppress.is_some() {
        return Err(ClientError::Usage(
            "--shard-files: the shard files carry the suppressions they were written with; \
             split again (idmatch shard --suppress) instead of giving a list here"
                .into(),
        ));
    }
    let output = options.reveal.partner_learns_records().then(|| Staged::create(&options.output)).transpose()?;
    let fingerprint = KeyFingerprint::of(&Key::load(&options.key_file)?);
    let profile = options.normalizer.profile();
    let input = tokio::task::spawn_blocking(move || read(&dir, &fingerprint, profile, shard))
        .await
        .map_err(|e| ClientError::Stream(e.to_string()))??;
    let run = Run { run_id: shard.run_id, shard_count: shard.shards.get(), run_set_size: input.run_set_size };
    let ShardMatch { protocol, outcome, matches } =
        run_prepared_shard(options.stream_options(), shard, input.run_set_size, input.set).await?;
    let matched_records = match (&matches, output) {
        (Some(matches), Some(mut output)) => {
            let failed = |source| OutputError { path: options.output.clone(), source };
            let mut rows = MatchRows::new(&mut output).map_err(failed)?;
            for (record, kinds) in matches {
                rows.push(&input.ids[*record as usize], *kinds).map_err(failed)?;
            }
            rows.finish().map_err(failed)?;
            output.commit()?;
            Some(matches.len() as u64)
        }
        _ => None,
    };
    Ok(ClientSummary {
        protocol,
        outcome,
        matched_records,
        suppressed_records: 0,
        suppression_list: None,
        run: Some(run),
        shard: Some(shard.index),
    })
}

/// Reads and checks the `N` files of `dir`: every file's distinct tokens counted,
/// file `I`'s entries kept.
fn read(
    dir: &Path,
    fingerprint: &KeyFingerprint,
    profile: Profile,
    shard: OneShard,
) -> Result<ShardInput, ClientError> {
    let shards = shard.shards.get();
    let (mut sizes, mut mine) = (Vec::new(), None);
    for index in 0..shards {
        let path = dir.join(shard_file_name(index, shards));
        let expected = Expected { fingerprint, profile, shards, index };
        let mut reader = ShardReader::open(&path, expected)?;
        let (mut tokens, mut entries, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        let (mut id, mut last_ordinal) = (String::new(), None);
        while let Some(entry) = reader.next_entry(&mut id)? {
            tokens.push(entry.token);
            if index == shard.index {
                if last_ordinal != Some(entry.ordinal) {
                    last_ordinal = Some(entry.ordinal);
                    ids.push(id.clone());
                }
                entries.push((entry.token, (ids.len() - 1) as u32, entry.kind));
            }
        }
        // Length and checksum: nothing of the file counts before they pass.
        reader.finish()?;
        tokens.sort_unstable();
        tokens.dedup();
        sizes.push(tokens.len());
        if index == shard.index {
            mine = Some((PreparedSet::new(entries, 0), ids));
        }
    }
    let (set, ids) =
        mine.ok_or_else(|| ClientError::Usage(format!("shard {} is not below N = {shards}", shard.index)))?;
    Ok(ShardInput { run_set_size: super::client::padded_run_size(sizes), set, ids })
}
