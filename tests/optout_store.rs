//! The durable opt-out store: the `idmatch optout` commands end to end, the store as an
//! opt-out source of a real match, crash safety, concurrent readers, bad input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use idmatch::key::Key;
use idmatch::normalize::{Normalizer, Profile, Region};
use idmatch::optout::store::{EntryKind, OptOutStore, StoreEntry, StoreError, StoreOptions};
use idmatch::optout::{OptOutSource, excluded_records};
use idmatch::prepare::{prepared_set, read_digested};
use idmatch::psi::{Owner, OwnerConfig, Partner, PartnerConfig, Reveal, run_in_memory};
use idmatch::records::{Mode, ReadOptions, RecordSet};
use idmatch::token::{Label, Token, Tokenizer};

fn idmatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idmatch")).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temporary directory with a store key and a store path.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    key_path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("store.key");
        let out = idmatch(&["keygen", "--out", key_path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let db = dir.path().join("optouts.db");
        Fixture { dir, db, key_path }
    }

    fn key(&self) -> Key {
        Key::load(&self.key_path).unwrap()
    }

    /// `idmatch optout <sub> <args> --db … --store-key …`
    fn optout(&self, sub: &str, args: &[&str]) -> Output {
        let mut all = vec!["optout", sub];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--db", self.db.to_str().unwrap(), "--store-key", self.key_path.to_str().unwrap()]);
        idmatch(&all)
    }

    /// Runs `optout <sub>` and returns its stdout, asserting exit 0.
    fn ok(&self, sub: &str, args: &[&str]) -> String {
        let out = self.optout(sub, args);
        assert!(out.status.success(), "optout {sub} {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    fn open(&self) -> OptOutStore {
        OptOutStore::open(&self.db, &self.key(), &StoreOptions::existing()).unwrap()
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

#[test]
fn add_remove_check_count_roundtrip() {
    let f = Fixture::new();
    let add = f.ok("add", &["--email", " John.Doe+news@GoogleMail.com", "--source", "account-settings"]);
    assert!(add.contains("added"), "{add}");
    // Any spelling that normalizes alike is the same opt-out.
    assert_eq!(f.ok("check", &["--email", "johndoe@gmail.com"]), "opted out\n");
    assert_eq!(f.ok("check", &["--email", "jane@example.com"]), "not opted out\n");
    assert!(f.ok("add", &["--email", "JOHNDOE@gmail.com"]).contains("already opted out"));
    f.ok("add", &["--phone", "(415) 555-2671", "--region", "US"]);
    assert_eq!(f.ok("check", &["--phone", "+14155552671"]), "opted out\n");
    f.ok("add", &["--id", " M-1001 "]);
    assert_eq!(f.ok("check", &["--id", "M-1001"]), "opted out\n");
    assert_eq!(f.ok("count", &[]), "3 opt-outs (email 1, phone 1, id 1)\n");

    let removed = f.ok("remove", &["--email", "John.Doe@gmail.com", "--source", "account-settings"]);
    assert!(removed.contains("removed"), "{removed}");
    assert_eq!(f.ok("check", &["--email", "johndoe@gmail.com"]), "not opted out\n");
    assert!(f.ok("remove", &["--email", "johndoe@gmail.com"]).contains("not opted out"));
    assert_eq!(f.ok("count", &[]), "2 opt-outs (email 0, phone 1, id 1)\n");

    // The export and the audit trail hold digests and counts, never values.
    let export = f.ok("export", &[]);
    // `--output -` is stdout too, not a file named `-`.
    assert_eq!(f.ok("export", &["--output", "-"]), export);
    assert!(!Path::new("-").exists());
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines[0], "digest_hex,kind,added_at,source");
    assert_eq!(lines.len(), 3, "{export}");
    let store = f.open();
    let phone = store.digester().token(Label::Phone, "+14155552671");
    assert!(export.contains(&format!("{},phone,", phone.to_hex())), "{export}");
    let audit = f.ok("audit", &[]);
    assert!(audit.starts_with("id,at,source,action,kind,requested,changed\n"), "{audit}");
    assert_eq!(audit.lines().count(), 1 + 6, "{audit}");
    assert!(audit.contains(",account-settings,remove,email,1,1\n"), "{audit}");
    assert!(audit.contains(",cli,add,email,1,0\n"), "{audit}");
    for output in [&export, &audit] {
        for secret in ["johndoe", "gmail", "4155552671", "M-1001"] {
            assert!(!output.contains(secret), "{secret} leaked: {output}");
        }
    }
    // Nor does the database file (or its write-ahead log).
    for file in [f.db.clone(), f.db.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(7).any(|w| w == b"johndoe") && !bytes.windows(6).any(|w| w == b"M-1001"));
    }
    assert_eq!(f.ok("verify", &[]), "ok: 2 opt-outs, profile idmatch-v1\n");
}

#[test]
fn usage_and_missing_store_errors() {
    let f = Fixture::new();
    assert_eq!(f.optout("add", &[]).status.code(), Some(2), "an identifier is required");
    assert_eq!(f.optout("add", &["--email", "a@b.com", "--phone", "+14155552671"]).status.code(), Some(2));
    assert!(idmatch(&["optout", "--help"]).status.success());
    for sub in ["add", "remove", "import", "check", "count", "export", "audit", "verify"] {
        assert!(idmatch(&["optout", sub, "--help"]).status.success(), "{sub} --help");
    }
    // Reading commands never create a store.
    let out = f.optout("check", &["--email", "a@example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no such file") && text(&out.stderr).contains("optouts.db"));
    assert!(!f.db.exists());
    // An invalid identifier names the kind and the reason, not the value.
    let out = f.optout("add", &["--email", "not-an-address"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("email rejected: missing_at"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("not-an-address"));
    let out = f.optout("add", &["--email", "a@example.com", "--source", ""]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("invalid source label"), "{}", text(&out.stderr));
}

#[test]
fn import_is_idempotent_and_reports_counts() {
    let f = Fixture::new();
    let list = f.write(
        "optouts.csv",
        "member_id,email,phone\nm1,Ann@Example.com,+14155552671\nm2,bob@example.com,\nm3,,+442071838750\nm4,ann@example.com,\n",
    );
    let list = list.to_str().unwrap();
    let first = f.ok("import", &[list]);
    // m1-m4 (4 ids) + 2 distinct emails + 2 phones.
    assert!(first.contains("added: 8 (email 2, phone 2, id 4)"), "{first}");
    assert!(first.contains("already present: 0 (email 0, phone 0, id 0)"), "{first}");
    assert!(first.contains("opt-outs: 8 distinct (9 identifiers and ids listed, 4 ids)"), "{first}");
    let second = f.ok("import", &[list]);
    assert!(second.contains("added: 0 (email 0, phone 0, id 0)"), "{second}");
    assert!(second.contains("already present: 8 (email 2, phone 2, id 4)"), "{second}");
    assert_eq!(f.ok("count", &[]), "8 opt-outs (email 2, phone 2, id 4)\n");
    let audit = f.ok("audit", &[]);
    assert!(audit.contains(",import:optouts.csv,import,email,2,2\n"), "{audit}");
    assert!(audit.contains(",import:optouts.csv,import,id,4,0\n"), "{audit}");
    assert_eq!(f.ok("check", &["--email", "ANN@example.com"]), "opted out\n");
    assert_eq!(f.ok("check", &["--id", "m3"]), "opted out\n");
    // An id-only list is a valid list too.
    let ids = f.write("ids.tsv", "customer_id\nm9\n\nm10\n");
    let out = f.ok("import", &[ids.to_str().unwrap(), "--source", "crm-export"]);
    assert!(out.contains("added: 2 (email 0, phone 0, id 2)"), "{out}");
    assert!(f.ok("export", &[]).contains(",id,") && f.ok("export", &[]).contains(",crm-export\n"));
}

#[test]
fn wrong_store_key_is_a_clear_error() {
    let f = Fixture::new();
    f.ok("add", &["--email", "a@example.com"]);
    let other = f.dir.path().join("other.key");
    assert!(idmatch(&["keygen", "--out", other.to_str().unwrap()]).status.success());
    let out = idmatch(&[
        "optout",
        "check",
        "--email",
        "a@example.com",
        "--db",
        f.db.to_str().unwrap(),
        "--store-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("optouts.db") && err.contains("store key does not match"), "{err}");
    let wrong = Key::load(&other).unwrap();
    let result = OptOutStore::open(&f.db, &wrong, &StoreOptions::existing());
    assert!(matches!(result, Err(StoreError::WrongKey { .. })), "{result:?}");
    // A different profile than the store's is refused as well.
    let out = f.optout("add", &["--email", "b@example.com", "--profile", "basic-v1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("created with normalization profile idmatch-v1"), "{}", text(&out.stderr));
}

#[test]
fn newer_schema_and_foreign_files_are_clear_errors() {
    let f = Fixture::new();
    f.ok("add", &["--email", "a@example.com"]);
    {
        let conn = rusqlite::Connection::open(&f.db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let out = f.optout("count", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("schema version 99") && err.contains("newer idmatch"), "{err}");

    let foreign = f.dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let result = OptOutStore::open(&foreign, &f.key(), &StoreOptions::create());
    assert!(matches!(result, Err(StoreError::NotAStore { .. })), "{result:?}");
    let text_file = f.write("notes.txt", "this is not a database, just some text that is long enough\n");
    let err = OptOutStore::open(&text_file, &f.key(), &StoreOptions::create()).unwrap_err().to_string();
    assert!(err.contains("notes.txt") && err.contains("not an SQLite database"), "{err}");
}

/// Reads a member file as the matching engine does: campaign tokens, store digests.
fn read_members(path: &Path, campaign: &Tokenizer, store: &OptOutStore) -> RecordSet {
    let options =
        ReadOptions::new(Normalizer::new(store.profile(), Some(Region::from_code("US").unwrap())), Mode::Match);
    let set = read_digested(path, campaign, options, store.digester()).unwrap();
    store.ensure_profile(&set).unwrap();
    set
}

/// Partner-side record ids that match the owner's non-excluded records.
fn matched_partner_ids(owner: &RecordSet, excluded: &[bool], partner: &RecordSet) -> Vec<String> {
    let owner_set = prepared_set(owner, excluded);
    let partner_set = prepared_set(partner, &[]);
    let mut o = Owner::new(OwnerConfig::local("t", Profile::IdmatchV1), &owner_set).unwrap();
    let mut p = Partner::new(PartnerConfig::new("t", Profile::IdmatchV1, Reveal::Both), &partner_set).unwrap();
    run_in_memory(&mut o, &mut p, |_| {}).unwrap();
    let matched = p.outcome().unwrap().matched.unwrap();
    let mut ids: Vec<String> =
        partner_set.matched_records(&matched).into_iter().map(|(r, _)| partner.id(r).to_owned()).collect();
    ids.sort();
    ids
}

#[test]
fn opted_out_members_never_appear_in_a_match() {
    let f = Fixture::new();
    let members = f.write(
        "members.csv",
        "id,email,phone\n\
         m1,john.doe@gmail.com,\n\
         m2,ann@example.com,(415) 555-2671\n\
         m3,carl@example.com,\n\
         m4,dora@example.com,+442071838750\n\
         m5,eve@example.com,\n",
    );
    let partner = f.write(
        "partner.csv",
        "id,email,phone\n\
         p1,JohnDoe+x@googlemail.com,\n\
         p2,,+14155552671\n\
         p3,carl@example.com,\n\
         p4,dora@example.com,\n\
         p5,eve@example.com,\n",
    );
    // Opted out: m1 by another spelling of its email, m2 by phone only, m3 by member id.
    f.ok("add", &["--email", "J.O.H.N.D.O.E@gmail.com", "--source", "account-settings"]);
    f.ok("add", &["--phone", "+1 415-555-2671"]);
    f.ok("add", &["--id", "m3"]);
    let store = f.open();
    let campaign = Tokenizer::new(&Key::from_bytes([9; 32]));
    let owner = read_members(&members, &campaign, &store);
    let partner = read_members(&partner, &campaign, &store);

    let excluded = excluded_records(&owner, &store).unwrap();
    assert_eq!(excluded, vec![true, true, true, false, false]);
    assert_eq!(matched_partner_ids(&owner, &excluded, &partner), vec!["p4", "p5"]);
    // Without the store all five would match.
    assert_eq!(matched_partner_ids(&owner, &[false; 5], &partner).len(), 5);

    // Opting back in (from another connection, as another process would) takes effect
    // for the next check of the same, already-read audience.
    let other = f.open();
    assert!(other.remove(EntryKind::Id, "m3", None, "account-settings").unwrap());
    let excluded = excluded_records(&owner, &store).unwrap();
    assert_eq!(excluded, vec![true, true, false, false, false]);
    assert_eq!(matched_partner_ids(&owner, &excluded, &partner), vec!["p3", "p4", "p5"]);
    // And so does a new opt-out.
    assert!(other.add(EntryKind::Email, "eve@example.com", None, "account-settings").unwrap());
    assert_eq!(excluded_records(&owner, &store).unwrap(), vec![true, true, false, false, true]);
}

fn sorted_email_digests(store: &OptOutStore, n: usize, prefix: &str) -> Vec<Token> {
    let mut digests: Vec<Token> =
        (0..n).map(|i| store.digester().token(Label::Email, &format!("{prefix}{i}@example.com"))).collect();
    digests.sort();
    digests
}

#[test]
fn sigkill_during_import_keeps_exactly_the_committed_batches() {
    const ROWS: usize = 60_000;
    const BATCH: usize = 500;
    let f = Fixture::new();
    let mut csv = String::with_capacity(ROWS * 24);
    csv.push_str("email\n");
    for i in 0..ROWS {
        csv.push_str(&format!("user{i}@example.com\n"));
    }
    let list = f.write("big.csv", &csv);
    let mut child = Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(["optout", "import", list.to_str().unwrap(), "--batch-size", &BATCH.to_string()])
        .args(["--db", f.db.to_str().unwrap(), "--store-key", f.key_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reported = 0;
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("committed batch ") {
            reported += 1;
            if reported == 3 {
                child.kill().unwrap();
                break;
            }
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert!(reported == 3 && !status.success(), "the import must be killed mid-way: {status:?}, {reported} batches");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    let store = f.open();
    let total = store.count().unwrap().total() as usize;
    assert_eq!(total % BATCH, 0, "a batch was half applied: {total} entries");
    let committed = total / BATCH;
    eprintln!("killed after {reported} reported batches; {committed} committed of {}", ROWS / BATCH);
    assert!(committed >= reported && committed < ROWS / BATCH, "{committed} batches committed, {reported} reported");
    // Batches are written in digest order: exactly the first `committed` are present.
    let digests = sorted_email_digests(&store, ROWS, "user");
    let present = store.contains(&digests).unwrap();
    assert!(present[..total].iter().all(|&p| p), "a reported batch is missing");
    assert!(present[total..].iter().all(|&p| !p), "part of the interrupted batch is present");
    assert_eq!(store.backend().verify().unwrap(), Vec::<String>::new());
    let conn = rusqlite::Connection::open(&f.db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let audit = f.ok("audit", &[]);
    assert_eq!(audit.lines().filter(|l| l.contains(",import,email,")).count(), committed);

    // Running the import again completes it.
    let again = f.ok("import", &[list.to_str().unwrap(), "--batch-size", "20000"]);
    assert!(again.contains(&format!("added: {} ", ROWS - total)), "{again}");
    assert!(again.contains(&format!("already present: {total} ")), "{again}");
    assert_eq!(store.count().unwrap().total() as usize, ROWS);
}

#[test]
fn readers_answer_while_a_bulk_import_writes() {
    const BATCH: usize = 1000;
    const BATCHES: usize = 30;
    let f = Fixture::new();
    let key = f.key();
    let writer = OptOutStore::open(&f.db, &key, &StoreOptions::create()).unwrap();
    let base = sorted_email_digests(&writer, 5000, "base");
    let entries: Vec<StoreEntry> = base.iter().map(|&digest| StoreEntry { digest, kind: EntryKind::Email }).collect();
    writer.backend().import_batch(&entries, "seed").unwrap();
    let incoming = sorted_email_digests(&writer, BATCH * BATCHES, "new");
    let done = Arc::new(AtomicBool::new(false));

    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (done, base, incoming, key, db) = (done.clone(), &base, &incoming, key.clone(), &f.db);
                scope.spawn(move || {
                    // Its own store: its own connections, as another process would have.
                    let store = OptOutStore::open(db, &key, &StoreOptions::existing()).unwrap();
                    let mut checks = 0;
                    let mut last_seen = 0;
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        assert!(store.contains(base).unwrap().iter().all(|&p| p), "a seeded entry went missing");
                        let seen = store.contains(incoming).unwrap().iter().filter(|&&p| p).count();
                        assert_eq!(seen % BATCH, 0, "a reader saw part of a batch");
                        assert!(seen >= last_seen, "a committed batch disappeared");
                        last_seen = seen;
                        checks += 1;
                        if finished && checks >= 3 {
                            break;
                        }
                    }
                    assert_eq!(last_seen, incoming.len());
                    checks
                })
            })
            .collect();
        for batch in incoming.chunks(BATCH) {
            let entries: Vec<StoreEntry> =
                batch.iter().map(|&digest| StoreEntry { digest, kind: EntryKind::Email }).collect();
            let outcome = writer.backend().import_batch(&entries, "bulk").unwrap();
            assert_eq!(outcome.added.email, BATCH as u64);
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() >= 3);
        }
    });
    assert_eq!(writer.count().unwrap().email, (5000 + BATCH * BATCHES) as u64);
}

#[test]
fn bad_rows_are_reported_with_line_and_reason_and_nothing_half_applied() {
    let f = Fixture::new();
    let list = f.write(
        "list.csv",
        "id,email,phone\n\
         a1,ok1@example.com,+14155552671\n\
         a2,no-at-sign,\n\
         a3,ok3@example.com,+1415555267,extra\n\
         a4,,1-800-FLOWERS\n\
         a5,ok5@example.com,\n",
    );
    let list = list.to_str().unwrap();
    let rejects = f.dir.path().join("rejects.csv");

    // By default the whole file is refused, and the store this first import would
    // have created is not left behind.
    let out = f.optout("import", &[list]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("line 3, column email: missing_at"), "{err}");
    assert!(err.contains("line 4: wrong_field_count"), "{err}");
    assert!(err.contains("line 5, column phone: letters_in_number"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(!err.contains("no-at-sign") && !err.contains("FLOWERS"), "{err}");
    assert!(!f.db.exists());

    // --skip-bad-rows: valid entries are imported, every reject is reported, and
    // the malformed row contributes nothing (not even its id).
    let out = f.optout("import", &[list, "--skip-bad-rows", "--rejects", rejects.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("bad rows: wrong_field_count 1"), "{stdout}");
    assert!(stdout.contains("rejected: 2 (letters_in_number 1, missing_at 1)"), "{stdout}");
    assert!(stderr.contains("line 3, column email: missing_at"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "line,column,reason\n3,email,missing_at\n4,,wrong_field_count\n5,phone,letters_in_number\n"
    );
    assert_eq!(f.ok("count", &[]), "7 opt-outs (email 2, phone 1, id 4)\n");
    assert_eq!(f.ok("check", &["--id", "a3"]), "not opted out\n");
    assert_eq!(f.ok("check", &["--id", "a2"]), "opted out\n");

    // A file that cannot be used at all changes nothing and names the file.
    let bad_header = f.write("nocols.csv", "name,city\nx,y\n");
    let out = f.optout("import", &[bad_header.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nocols.csv: header"), "{}", text(&out.stderr));
    let missing = f.optout("import", &["/nonexistent/list.csv"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/list.csv"));
    assert_eq!(f.ok("count", &[]), "7 opt-outs (email 2, phone 1, id 4)\n");
}

/// A failed import never leaves an empty store behind for a match to accept, an
/// import of which nothing could be used fails, and a match names the store it
/// consulted and its size in summary.json, warning when it is empty (issue 22,
/// item 3).
#[test]
fn a_failed_import_leaves_no_empty_store_and_a_match_says_which_store_it_used() {
    let f = Fixture::new();
    let out = f.optout("import", &[f.dir.path().join("missing.csv").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.csv"), "{}", text(&out.stderr));
    assert!(!f.db.exists(), "a missing file creates no store");
    let bad = f.write("bad.csv", "email\nnot-an-email\nalso bad\n");
    let out = f.optout("import", &[bad.to_str().unwrap(), "--skip-bad-rows"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("none of its 2 rows could be imported"), "{}", text(&out.stderr));
    assert!(!f.db.exists(), "nothing importable creates no store");

    // A match against a store path that does not exist is refused (not created).
    let key = f.dir.path().join("campaign.key");
    assert!(idmatch(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    let members = f.write("members.csv", "id,email\nm1,ann@example.com\nm2,bob@example.com\n");
    let partner = f.write("partner.csv", "id,email\np1,ann@example.com\n");
    let run = |out_dir: &str| {
        let out_dir = f.dir.path().join(out_dir);
        let mut args = vec!["match", "--owner", members.to_str().unwrap(), "--partner", partner.to_str().unwrap()];
        args.extend(["--key-file", key.to_str().unwrap(), "--optout-db", f.db.to_str().unwrap()]);
        args.extend(["--store-key", f.key_path.to_str().unwrap(), "--out-dir", out_dir.to_str().unwrap()]);
        (idmatch(&args), out_dir)
    };
    let (out, _) = run("out1");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(!f.db.exists());

    // An empty store (made on purpose) is used with a warning and named in the summary.
    let empty = f.write("empty.csv", "email\n");
    let out = f.optout("import", &[empty.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("has a header but no data rows"), "{}", text(&out.stderr));
    let (out, dir) = run("out2");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("holds no opt-outs"), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["optout_store"]["entries"], 0);
    assert_eq!(summary["optout_store"]["path"], f.db.to_str().unwrap());
    f.ok("add", &["--email", "Ann@Example.com"]);
    let (out, dir) = run("out3");
    assert!(out.status.success() && !text(&out.stderr).contains("holds no opt-outs"), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["optout_store"]["entries"], 1);
    assert_eq!(summary["intersection"], 0);
}
