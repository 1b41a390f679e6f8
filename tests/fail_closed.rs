//! Fail closed (issue 8), through the binary: an opt-out list that cannot be read
//! completely refuses the match, CSV quoting errors name the line where the runaway
//! quote starts, stores are opened and never created by reading commands, regions
//! are validated, repeated record ids are refused where outputs name records by id,
//! exposed key files are refused, a failed run leaves no output behind, and a read
//! that stops early returns its error instead of hanging.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use idmatch::key::Key;
use idmatch::normalize::{Normalizer, Profile};
use idmatch::records::{self, BadRows, Mode, ReadError, ReadOptions};
use idmatch::token::Tokenizer;

use common::{example_key, examples, idmatch, keygen, local_match, text, tokens};

/// A local match of the shipped example with `optouts` and extra arguments.
fn match_example(dir: &Path, optouts: &Path, out_dir: &Path, extra: &[&str]) -> Output {
    let key = example_key(dir);
    let mut args = vec!["--optouts", optouts.to_str().unwrap(), "--region", "US"];
    args.extend(extra);
    local_match(&examples().join("members.csv"), &examples().join("partner.csv"), &key, out_dir, &args)
}

/// The shipped opt-out list with `extra` rows inserted after its first data row.
fn optouts_with(dir: &Path, extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(examples().join("optouts.csv")).unwrap();
    let mut lines: Vec<&str> = shipped.lines().collect();
    lines.insert(2, extra);
    let path = dir.join("optouts.csv");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    files.sort();
    files
}

#[test]
fn a_runaway_quote_in_the_optout_list_refuses_the_match_and_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    // Line 3 opens a quote that is never closed: the rest of the file would become
    // one field, and the members listed after it would be matched.
    let optouts = optouts_with(dir.path(), "m0000001,\"someone@example.com,");
    let out_dir = dir.path().join("out");
    let out = match_example(dir.path(), &optouts, &out_dir, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("optouts.csv: line 3") && stderr.contains("never closed"), "{stderr}");
    assert!(!out_dir.exists(), "a refused match leaves no output directory behind");
    // Skipping bad rows does not skip a runaway quote: it would drop every row after it.
    let out = match_example(dir.path(), &optouts, &out_dir, &["--skip-bad-list-rows"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn a_malformed_optout_row_refuses_the_match_unless_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let optouts = optouts_with(dir.path(), "m0000001,too,many,fields");
    let out_dir = dir.path().join("out");
    let out = match_example(dir.path(), &optouts, &out_dir, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3") && stderr.contains("wrong_field_count"), "{stderr}");
    assert!(!out_dir.exists());

    let out = match_example(dir.path(), &optouts, &out_dir, &["--skip-bad-list-rows"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 1 bad rows"), "the skipped row is reported: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["optout_list"]["bad_rows"]["wrong_field_count"], 1);
    assert_eq!(summary["owner"]["excluded_records"], 6, "every readable opt-out still applies");
    let owner_matches = std::fs::read_to_string(out_dir.join("owner_matches.csv")).unwrap();
    for id in ["m0000102", "m0000429", "m0000967", "m0000210"] {
        assert!(!owner_matches.contains(id), "opted-out {id} matched");
    }
}

#[test]
fn an_optout_identifier_that_does_not_normalize_refuses_the_match() {
    let dir = tempfile::tempdir().unwrap();
    let optouts = optouts_with(dir.path(), ",not-an-email,");
    let out = match_example(dir.path(), &optouts, &dir.path().join("out"), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3, column `email`: missing_at"), "{stderr}");
    assert!(!stderr.contains("not-an-email"), "raw identifiers never appear in errors: {stderr}");
}

#[test]
fn a_runaway_quote_in_an_input_names_its_line_even_when_the_field_count_fits() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let input = dir.path().join("in.csv");
    // Two columns: the unclosed quote on line 3 swallows the rows after it into the
    // email field, which still gives a row of the right length.
    std::fs::write(&input, "id,email\n1,a@example.com\n2,\"b@example.com\n3,c@example.com\n4,d@example.com\n").unwrap();
    let output = dir.path().join("tokens.csv");
    let out = tokens(&key, &input, &output, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in.csv: line 3") && stderr.contains("never closed"), "{stderr}");
    assert!(!output.exists(), "nothing is exported from a file that was not read completely");
}

#[test]
fn optout_import_refuses_a_malformed_file_unless_asked_to_skip() {
    let dir = tempfile::tempdir().unwrap();
    let store_key = keygen(dir.path());
    let db = dir.path().join("optouts.db");
    let store = ["--db", db.to_str().unwrap(), "--store-key", &store_key];
    let list = dir.path().join("list.csv");
    let mut rows = String::from("email\n");
    for i in 0..5000 {
        rows += &format!("member{i}@example.com\n");
    }
    std::fs::write(&list, format!("{rows}\"unclosed@example.com\nlast@example.com\n")).unwrap();
    let import = |extra: &[&str]| {
        let mut args = vec!["optout", "import", list.to_str().unwrap()];
        args.extend(store);
        args.extend(extra);
        idmatch(&args)
    };
    let out = import(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 5002") && stderr.contains("never closed"), "{stderr}");

    std::fs::write(&list, format!("{rows}not-an-email\n")).unwrap();
    let out = import(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a rejected row refuses the import by default: {stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    let mut count = vec!["optout", "count"];
    count.extend(store);
    let counted = idmatch(&count);
    assert_eq!(counted.status.code(), Some(1), "the failed first import left no store: {}", text(&counted.stdout));

    let out = import(&["--skip-bad-rows"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("added: 5000"), "{}", text(&out.stdout));
}

#[test]
fn an_empty_file_is_never_taken_for_an_empty_optout_store() {
    let dir = tempfile::tempdir().unwrap();
    let store_key = keygen(dir.path());
    let db = dir.path().join("optouts.db");
    std::fs::write(&db, b"").unwrap();
    let store = ["--db", db.to_str().unwrap(), "--store-key", &store_key];
    for command in [vec!["count"], vec!["verify"], vec!["check", "--email", "a@example.com"]] {
        let mut args = vec!["optout"];
        args.extend(&command);
        args.extend(store);
        let out = idmatch(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(stderr.contains("optouts.db") && stderr.contains("empty"), "{command:?}: {stderr}");
    }
    let campaign_key = example_key(dir.path());
    let out_dir = dir.path().join("out");
    let out = local_match(
        &examples().join("members.csv"),
        &examples().join("partner.csv"),
        &campaign_key,
        &out_dir,
        &["--optout-db", db.to_str().unwrap(), "--store-key", &store_key],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!out_dir.exists());
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "the empty file was left as it was");
    // `add` creates the store, even in an existing empty file.
    let mut add = vec!["optout", "add", "--email", "a@example.com"];
    add.extend(store);
    assert!(idmatch(&add).status.success());
}

#[test]
fn a_store_with_a_negative_schema_version_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store_key = keygen(dir.path());
    let db = dir.path().join("optouts.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA application_id = 1229213519; PRAGMA user_version = -1;").unwrap();
    drop(conn);
    let out = idmatch(&["optout", "count", "--db", db.to_str().unwrap(), "--store-key", &store_key]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("schema version is negative"), "{stderr}");
}

#[test]
fn regions_without_phone_rules_are_usage_errors() {
    for region in ["UK", "XX", "uk"] {
        let out = idmatch(&["normalize", "--kind", "phone", "--region", region]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{region}: {stderr}");
        assert!(stderr.contains(&format!("`{region}` is not an ISO 3166 alpha-2 region")), "{stderr}");
    }
    assert!(text(&idmatch(&["normalize", "--kind", "phone", "--region", "UK"]).stderr).contains("GB"));
    let out = idmatch(&["normalize", "--kind", "phone", "--region", "gb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn repeated_record_ids_are_refused_for_matching_and_counted_for_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let owner = dir.path().join("owner.csv");
    std::fs::write(&owner, "id,email\n1,a@example.com\n2,b@example.com\n1,c@example.com\n").unwrap();
    let partner = dir.path().join("partner.csv");
    std::fs::write(&partner, "id,email\np1,a@example.com\np2,c@example.com\n").unwrap();
    let out_dir = dir.path().join("out");
    let out = local_match(&owner, &partner, &key, &out_dir, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("owner.csv: line 4: the record id repeats the id of line 2"), "{stderr}");
    assert!(!out_dir.exists());

    let output = dir.path().join("tokens.csv");
    let out = tokens(&key, &owner, &output, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("records repeating an earlier record's id: 1"), "{}", text(&out.stdout));
}

#[cfg(unix)]
#[test]
fn key_files_readable_by_others_are_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let input = examples().join("members.csv");
    let output = dir.path().join("tokens.csv");
    let out = tokens(&key, &input, &output, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("accessible by other users (mode 0644)") && stderr.contains("chmod 600"), "{stderr}");
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(!stderr.contains(key_text.trim()), "the key never appears in errors");
}

#[test]
fn a_failed_run_leaves_the_previous_outputs_untouched_and_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let good = optouts_with(dir.path(), "m0000001,,");
    let out = match_example(dir.path(), &good, &out_dir, &["--write-rejects"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = listing(&out_dir);
    assert_eq!(
        before.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        ["owner_matches.csv", "owner_rejects.csv", "partner_matches.csv", "partner_rejects.csv", "summary.json"]
    );
    // The partner file fails after the owner's file was read and its rejects written.
    let partner = dir.path().join("partner.csv");
    std::fs::write(&partner, "id,email\np1,a@example.com\np1,b@example.com\n").unwrap();
    let key = example_key(dir.path());
    let out =
        local_match(&examples().join("members.csv"), &partner, &key, &out_dir, &["--write-rejects", "--region", "US"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(listing(&out_dir), before, "outputs are replaced together or not at all");

    // A successful run that reveals less removes the outputs it no longer makes.
    let out = match_example(dir.path(), &good, &out_dir, &["--reveal", "partner"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names: Vec<String> = listing(&out_dir).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["partner_matches.csv", "summary.json"]);
}

/// Runs `read` on another thread; `None` if it has not returned within `limit`
/// (a hang is a failure of its own, not a test that never ends).
fn read_within(path: &Path, options: ReadOptions, limit: Duration) -> Option<Result<(), ReadError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let tokenizer = Tokenizer::new(&Key::from_bytes([7; 32]));
        let _ = tx.send(records::read(&path, &tokenizer, options).map(drop));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn an_error_deep_in_a_large_file_returns_instead_of_hanging() {
    // Many batches of rows, with the problem far past the first few, so the reader
    // stops while the parser thread still has work queued.
    let dir = tempfile::tempdir().unwrap();
    let rows = 120_000;
    let write = |name: &str, bad: &str| {
        let mut body = String::from("email\n");
        for i in 0..rows {
            body.push_str(&if i == 90_000 { bad.to_owned() } else { format!("m{i}@example.com") });
            body.push('\n');
        }
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let list = |complete| {
        let bad_rows = if complete { BadRows::Refuse } else { BadRows::Skip };
        ReadOptions::new(Normalizer::new(Profile::IdmatchV1, None), Mode::List(bad_rows))
    };
    let limit = Duration::from_secs(120);
    let bad_email = write("bad-email.csv", "not-an-email");
    let result = read_within(&bad_email, list(true), limit).expect("read hung on a rejected identifier");
    assert!(matches!(result, Err(ReadError::Incomplete { line: 90_002, .. })), "{result:?}");
    let runaway = write("runaway.csv", "\"m@example.com");
    let result = read_within(&runaway, list(false), limit).expect("read hung on a runaway quote");
    assert!(matches!(result, Err(ReadError::UnclosedQuote { line: 90_002, .. })), "{result:?}");
    // The same file without the problem reads.
    let good = write("good.csv", "m-ok@example.com");
    assert!(matches!(read_within(&good, list(true), limit), Some(Ok(()))));
}

/// Windows line endings (a spreadsheet's CSV export) give the same line numbers as
/// Unix ones, in errors and in reject reports (issue 22, item 1).
#[test]
fn crlf_files_report_the_lines_an_editor_shows() {
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let partner = examples().join("partner.csv");
    for ending in ["\n", "\r\n"] {
        let owner = dir.path().join("owner.csv");
        let rows = ["id,email", "1,a@example.com", "2,not-an-email", "3,c@example.com", "1,d@example.com"];
        std::fs::write(&owner, rows.join(ending) + ending).unwrap();
        let out = local_match(&owner, &partner, &key, &dir.path().join("out"), &[]);
        let stderr = text(&out.stderr);
        assert!(stderr.contains("line 5: the record id repeats the id of line 2"), "{ending:?}: {stderr}");
        // The reject report names line 3 for the bad email.
        let rejects = dir.path().join("rejects.csv");
        let out = tokens(&key, &owner, &dir.path().join("t.csv"), &["--rejects", rejects.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report = std::fs::read_to_string(&rejects).unwrap();
        assert!(report.lines().nth(1).unwrap().starts_with("3,email,"), "{ending:?}: {report}");
    }
}

/// An input past its size limits ends with an error naming the limit and the line,
/// in bounded memory and time, instead of being buffered whole (issue 22, item 6).
#[test]
fn inputs_past_their_size_limits_are_refused_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let long = dir.path().join("long.csv");
    std::fs::write(&long, format!("id,email\n1,a@example.com\n2,{}@example.com\n", "x".repeat(300))).unwrap();
    let out = tokens(&key, &long, &dir.path().join("t.csv"), &["--max-line-bytes", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("long.csv: line 3 is longer than 100 bytes"), "{}", text(&out.stderr));
    assert!(!dir.path().join("t.csv").exists());
    let out = tokens(&key, &long, &dir.path().join("t.csv"), &["--max-input-bytes", "50"]);
    assert!(text(&out.stderr).contains("larger than 50 bytes"), "{}", text(&out.stderr));
    // An endless input: refused at the first line past the default 1 MiB.
    #[cfg(unix)]
    {
        let started = std::time::Instant::now();
        let out = tokens(&key, Path::new("/dev/zero"), &dir.path().join("t.csv"), &[]);
        assert!(text(&out.stderr).contains("line 1 is longer than 1048576 bytes"), "{}", text(&out.stderr));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

/// `-` reads standard input, with the same result as the file (issue 22, item 8).
#[test]
fn a_dash_reads_standard_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let from_file = dir.path().join("file.csv");
    assert!(tokens(&key, &examples().join("partner.csv"), &from_file, &["--region", "US"]).status.success());
    let from_stdin = dir.path().join("stdin.csv");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(["tokens", "--key-file", &key, "--input", "-", "--region", "US", "--output"])
        .arg(&from_stdin)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&std::fs::read(examples().join("partner.csv")).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&from_file).unwrap(), std::fs::read(&from_stdin).unwrap());
}

/// A failed run removes the directories it created for `--out-dir`, and a staging
/// directory left by a killed run (its process gone) is removed by the next run into
/// the same directory (issue 22, item 9).
#[test]
fn failed_and_killed_runs_leave_no_directories_behind() {
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let missing = dir.path().join("missing.csv");
    let nested = dir.path().join("a/b/c");
    let out = local_match(&missing, &examples().join("partner.csv"), &key, &nested, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("a").exists(), "a/b/c and its parents were removed");

    let out_dir = dir.path().join("out");
    #[cfg(target_os = "linux")]
    {
        // A pid above the kernel's maximum (4194304) never runs.
        let abandoned = out_dir.join(".idmatch-staging-999999999-abcdef");
        std::fs::create_dir_all(&abandoned).unwrap();
        std::fs::write(abandoned.join("partner_matches.csv"), "p1,email\n").unwrap();
        let out = local_match(&examples().join("members.csv"), &examples().join("partner.csv"), &key, &out_dir, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!abandoned.exists());
        let left: Vec<_> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
