//! The durable opt-out store (SQLite backend): bulk import and bulk check.
//!
//! `cargo bench --bench optout` runs criterion on small sizes (a 200,000-entry store)
//! so it finishes in a few minutes. The big targets (10,000,000 entries) are measured
//! once, without criterion, by
//!
//! ```sh
//! IDMATCH_OPTOUT_BIG=10000000 cargo bench --bench optout
//! ```
//!
//! which builds a store of that many entries in `$IDMATCH_OPTOUT_DIR` (default: a
//! temporary directory) with the import path's sorted batches, reads a 1,000,000-record
//! audience file and checks it with `excluded_records`, and prints the import rate,
//! the check time and the database size.

use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use idmatch::key::Key;
use idmatch::normalize::{Normalizer, Profile};
use idmatch::optout::store::{DEFAULT_BATCH_SIZE, EntryKind, LookupStrategy, OptOutStore, StoreEntry, StoreOptions};
use idmatch::optout::{OptOutSource, excluded_records};
use idmatch::prepare::read_digested;
use idmatch::records::{Mode, ReadOptions};
use idmatch::token::{Label, Token, Tokenizer};
use rayon::prelude::*;

const STORE_KEY: [u8; 32] = [0x5a; 32];

/// `n` distinct store entries, sorted by digest as the import writes them: emails
/// `filler<i>@example.net`, ids and phones interleaved.
fn filler(store: &OptOutStore, n: usize, offset: usize) -> Vec<StoreEntry> {
    let digester = store.digester();
    let mut entries: Vec<StoreEntry> = (offset..offset + n)
        .into_par_iter()
        .map(|i| match i % 4 {
            0 => StoreEntry { digest: digester.token(Label::Id, &format!("f{i}")), kind: EntryKind::Id },
            _ => StoreEntry {
                digest: digester.token(Label::Email, &format!("filler{i}@example.net")),
                kind: EntryKind::Email,
            },
        })
        .collect();
    entries.par_sort_unstable_by(|a, b| a.digest.cmp(&b.digest));
    entries
}

fn open_new(dir: &Path) -> OptOutStore {
    let path = dir.join("optouts.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    OptOutStore::open(&path, &Key::from_bytes(STORE_KEY), &StoreOptions::create()).unwrap()
}

fn import(store: &OptOutStore, entries: &[StoreEntry], batch: usize) {
    for chunk in entries.chunks(batch) {
        store.backend().import_batch(chunk, "bench").unwrap();
    }
    store.backend().flush().unwrap();
}

fn random_tokens(n: usize, seed: u64) -> Vec<Token> {
    let t = Tokenizer::new(&Key::from_bytes([0x33; 32]));
    (0..n as u64).into_par_iter().map(|i| t.token(Label::Email, &(seed + i).to_string())).collect()
}

fn bench(c: &mut Criterion) {
    const STORE: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();

    let mut group = c.benchmark_group("optout_import");
    group.sample_size(10);
    let store = open_new(dir.path());
    let entries = filler(&store, STORE, 0);
    drop(store);
    group.throughput(Throughput::Elements(STORE as u64));
    group.bench_function(BenchmarkId::new("fresh_store", STORE), |b| {
        b.iter_batched(
            || open_new(dir.path()),
            |store| import(&store, &entries, 100_000),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();

    let store = open_new(dir.path());
    import(&store, &entries, 100_000);
    // Queries: a quarter present, the rest absent.
    let mut queries = random_tokens(3 * STORE / 8, 1);
    queries.extend(entries.iter().step_by(8).map(|e| e.digest));
    let mut group = c.benchmark_group("optout_contains_many");
    group.sample_size(10);
    for n in [1_000usize, 20_000, queries.len()] {
        let qs = &queries[queries.len() - n..];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(format!("store_{STORE}"), n), qs, |b, qs| {
            b.iter(|| black_box(store.contains(qs).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

/// The big targets, once: see the module documentation.
fn big(n: usize) {
    let dir = match std::env::var_os("IDMATCH_OPTOUT_DIR") {
        Some(d) => (None, std::path::PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let (_keep, dir) = dir;
    std::fs::create_dir_all(&dir).unwrap();
    const AUDIENCE: usize = 1_000_000;
    let store = open_new(&dir);
    let digester = store.digester().clone();

    // The audience: m<i>, aud<i>@example.org, a phone. Opted out: the email of every
    // 10th member and the id of every 20th (offset 5): 150,000 records.
    let mut entries: Vec<StoreEntry> = (0..AUDIENCE)
        .into_par_iter()
        .filter_map(|i| match i % 20 {
            0 | 10 => Some(StoreEntry {
                digest: digester.token(Label::Email, &format!("aud{i}@example.org")),
                kind: EntryKind::Email,
            }),
            5 => Some(StoreEntry { digest: digester.token(Label::Id, &format!("m{i}")), kind: EntryKind::Id }),
            _ => None,
        })
        .collect();
    let t = Instant::now();
    entries.extend(filler(&store, n - entries.len(), 0));
    entries.par_sort_unstable_by(|a, b| a.digest.cmp(&b.digest));
    println!("generated and sorted {} entries in {:.2} s", entries.len(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    import(&store, &entries, DEFAULT_BATCH_SIZE);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "import: {} entries in {:.2} s = {:.0} entries/s (batches of {DEFAULT_BATCH_SIZE}, synchronous=FULL)",
        entries.len(),
        secs,
        entries.len() as f64 / secs
    );
    drop(entries);
    let db = dir.join("optouts.db");
    let size = std::fs::metadata(&db).unwrap().len();
    println!(
        "database: {} bytes = {:.1} MiB ({:.1} bytes/entry)",
        size,
        size as f64 / 1048576.0,
        size as f64 / n as f64
    );

    let audience = dir.join("audience.csv");
    let mut out = BufWriter::new(std::fs::File::create(&audience).unwrap());
    writeln!(out, "id,email,phone").unwrap();
    for i in 0..AUDIENCE {
        writeln!(out, "m{i},aud{i}@example.org,+1 212 {:03} {:04}", 200 + (i / 10_000) % 800, i % 10_000).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let campaign = Tokenizer::new(&Key::from_bytes([0x77; 32]));
    let t = Instant::now();
    let options = ReadOptions::new(Normalizer::new(Profile::IdmatchV1, None), Mode::Match);
    let set = read_digested(&audience, &campaign, options, store.digester()).unwrap();
    println!(
        "audience: read {} records ({} identifiers) in {:.2} s (normalize, campaign token and store digest; paid by any match)",
        set.len(),
        set.entries().len(),
        t.elapsed().as_secs_f64()
    );
    drop(store);
    let strategies = [LookupStrategy::Auto, LookupStrategy::Seek, LookupStrategy::Scan, LookupStrategy::Auto];
    for (round, lookup) in strategies.into_iter().enumerate() {
        // A fresh store handle each time: no warm connections.
        let mut options = StoreOptions::existing();
        options.tuning.lookup = lookup;
        let store = OptOutStore::open(&db, &Key::from_bytes(STORE_KEY), &options).unwrap();
        let t = Instant::now();
        let excluded = excluded_records(&set, &store).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let n_excluded = excluded.iter().filter(|&&x| x).count();
        assert_eq!(n_excluded, AUDIENCE / 10 + AUDIENCE / 20);
        println!(
            "check {round} ({lookup:?}): excluded_records over {} records ({} ids + {} identifiers) against {} entries: {:.3} s, {} excluded",
            set.len(),
            set.len(),
            set.entries().len(),
            n,
            secs,
            n_excluded
        );
    }
}

fn main() {
    if let Ok(n) = std::env::var("IDMATCH_OPTOUT_BIG") {
        big(n.parse().expect("IDMATCH_OPTOUT_BIG must be a number of entries"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
