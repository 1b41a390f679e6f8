//! The `idmatch` binary end to end: exit codes, outputs, error messages, secrets.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{example_key, idmatch, keygen, local_match, text};

fn idmatch_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn normalize_prints_one_line_per_input_in_order() {
    let out =
        idmatch_stdin(&["normalize", "--kind", "email"], "  John.Doe+x@GoogleMail.com\nno-at-sign\n\ninfo@Müller.de\n");
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "johndoe@gmail.com\n!error missing_at\n!error empty\ninfo@xn--mller-kva.de\n");
    let out = idmatch_stdin(&["normalize", "--kind", "phone", "--region", "GB"], "020 7183 8750\n+1234567890A\n");
    assert_eq!(text(&out.stdout), "+442071838750\n!error letters_in_number\n");
    let out = idmatch_stdin(&["normalize", "--kind", "email", "--profile", "basic-v1"], "John.Doe+x@GoogleMail.com\n");
    assert_eq!(text(&out.stdout), "john.doe+x@googlemail.com\n");
}

/// The three idmatch-v1 bugs of issue 22 (item 13), fixed in idmatch-v2 only: the
/// default profile's output does not change.
#[test]
fn normalize_profile_idmatch_v2_fixes_what_idmatch_v1_keeps() {
    let emails = "ｊｏｈｎ@example.com\n";
    let phones = "555-555-5555\ntel:201-555-0123;phone-context=+1\ntel:201-555-0123;phone-context=example.com\n";
    let run = |extra: &[&str], kind: &str, input: &str| {
        let mut args = vec!["normalize", "--kind", kind, "--region", "GB"];
        args.extend_from_slice(extra);
        let out = idmatch_stdin(&args, input);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    for v1 in [&[][..], &["--profile", "idmatch-v1"]] {
        assert_eq!(run(v1, "email", emails), "ｊｏｈｎ@example.com\n");
        assert_eq!(run(v1, "phone", phones), "+445555555555\n+442015550123\n+442015550123\n");
    }
    let v2 = &["--profile", "idmatch-v2"][..];
    assert_eq!(run(v2, "email", emails), "john@example.com\n");
    assert_eq!(run(v2, "phone", phones), "!error placeholder_number\n+12015550123\n!error unknown_country\n");
    let out = idmatch(&["normalize", "--kind", "email", "--profile", "idmatch-v3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("known: idmatch-v1, basic-v1, idmatch-v2"), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_2_and_other_errors_exit_1() {
    assert_eq!(idmatch(&["normalize", "--kind", "fax"]).status.code(), Some(2));
    assert_eq!(idmatch(&["normalize", "--kind", "email", "--region", "XX1"]).status.code(), Some(2));
    assert_eq!(idmatch(&["frobnicate"]).status.code(), Some(2));
    // Contradicting arguments clap cannot see: oprf does not offer count.
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let members = common::examples().join("members.csv");
    let out =
        local_match(&members, &members, &key, &dir.path().join("o"), &["--reveal", "count", "--protocol", "oprf"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("count"), "{}", text(&out.stderr));
    assert!(!dir.path().join("o").exists());
    // A measurement does not run in shards: said plainly, nothing written.
    let out_dir = dir.path().join("m");
    let measure = |more: &[&str]| {
        let common = ["measure", "--partner", members.to_str().unwrap(), "--key-file", &key, "--out-dir"];
        idmatch(&[&common[..], &[out_dir.to_str().unwrap()], more].concat())
    };
    let out = measure(&["--owner", members.to_str().unwrap(), "--shards", "4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not run in shards"), "{}", text(&out.stderr));
    assert!(!dir.path().join("m").exists());
    // --max-epsilon NaN would refuse every owner with a message about the owner.
    for bad in ["NaN", "-1", "0", "inf"] {
        let out = measure(&["--server", "https://127.0.0.1:1", "--campaign", "c", &format!("--max-epsilon={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("not a positive finite number"), "{}", text(&out.stderr));
    }
    let out = idmatch(&["tokens", "--key-file", "/nonexistent/k", "--input", "x.csv", "--output", "y.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/k"), "{}", text(&out.stderr));
    // --parallel is for the shard streams of a client run only.
    let partner = common::examples().join("partner.csv");
    let out = idmatch(&[
        "match",
        "--server",
        "http://127.0.0.1:1",
        "--campaign",
        "c",
        "--key-file",
        &key,
        "--input",
        partner.to_str().unwrap(),
        "--output",
        "x.csv",
        "--parallel",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--shards"), "{}", text(&out.stderr));
    assert!(idmatch(&["--help"]).status.success());
    for sub in ["normalize", "tokens", "keygen", "synth", "match"] {
        assert!(idmatch(&[sub, "--help"]).status.success(), "{sub} --help");
    }
}

/// The partner's clients refuse, before reading anything or connecting, a server URL
/// that would send the bearer token in clear over a network, a `--ca` that would be
/// silently ignored, and a URL without a scheme: usage errors, exit code 2.
#[test]
fn a_server_url_that_would_send_the_token_in_clear_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let partner = common::examples().join("partner.csv");
    let token = common::examples().join("partner.token");
    let client = |command: &str, server: &str, extra: &[&str]| {
        let output = dir.path().join("out");
        let mut args = vec![command, "--server", server, "--campaign", "spring-2026", "--key-file", &key];
        let (input, out) = if command == "match" { ("--input", "--output") } else { ("--partner", "--out-dir") };
        args.extend(["--token-file", token.to_str().unwrap(), input, partner.to_str().unwrap()]);
        args.extend([out, output.to_str().unwrap()]);
        args.extend(extra);
        idmatch(&args)
    };
    for command in ["match", "measure"] {
        // 192.0.2.1 is a documentation address (TEST-NET-1): nothing connects to it.
        let cases = [
            ("http://192.0.2.1:7443", &[][..], "allowed only to a loopback host"),
            ("http://example.com:7443", &[], "allowed only to a loopback host"),
            ("http://127.0.0.1:7443", &["--ca", "ca.pem"], "need an https:// server"),
            ("127.0.0.1:7443", &[], "expected https://host:port"),
        ];
        for (server, extra, reason) in cases {
            let out = client(command, server, extra);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {server}: {stderr}");
            assert!(stderr.contains(reason), "{command} {server}: {stderr}");
            assert!(!dir.path().join("out").exists(), "{command} {server}: nothing written");
        }
    }
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let out = idmatch(&["keygen", "--out", &key]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already exists"));
    let contents = std::fs::read_to_string(&key).unwrap();
    assert_eq!(contents.trim().len(), 64);
}

#[test]
fn tokens_reports_rejects_without_values_and_never_prints_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "member_id,email,mobile,country\n\
         a1,Alice@Example.com,020 7183 8750,GB\n\
         a2,secret-bad-value,+1234567890A,US\n\
         a3,alice@example.com,,\n\
         ,bob@example.com,,\n\
         a5,too,many,fields,here\n\
         a6,,(415) 555-2671,US\n",
    )
    .unwrap();
    let output = dir.path().join("tokens.csv");
    let rejects = dir.path().join("rejects.csv");
    let out = idmatch(&[
        "tokens",
        "--key-file",
        &key,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--rejects",
        rejects.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("rows: 6 (4 records, 2 bad rows: missing_id 1, wrong_field_count 1)"), "{summary}");
    assert!(summary.contains("identifiers: 4 (email 2, phone 2)"), "{summary}");
    assert!(summary.contains("rejected: 2 (letters_in_number 1, missing_at 1)"), "{summary}");
    assert!(summary.contains("duplicate identifiers: 1"), "{summary}");

    let tokens = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = tokens.lines().collect();
    assert_eq!(lines[0], "record_id,kind,token_hex");
    assert_eq!(lines.len(), 1 + 4);
    assert!(lines[1].starts_with("a1,email,") && lines[2].starts_with("a1,phone,"));
    let token_of = |line: &str| line.rsplit(',').next().unwrap().to_owned();
    assert_eq!(token_of(lines[1]), token_of(lines[3]), "a1 and a3 share a normalized email");
    // Plain CSV: a strict reader (fixed field count, first row the header) takes it.
    let mut strict = csv::ReaderBuilder::new().flexible(false).from_path(&output).unwrap();
    assert_eq!(strict.headers().unwrap(), vec!["record_id", "kind", "token_hex"]);
    let rows: Vec<csv::StringRecord> = strict.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r[2].len() == 64 && r[2].bytes().all(|b| b.is_ascii_hexdigit())));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.meta.json", output.display())).unwrap()).unwrap();
    assert_eq!(meta["profile"], "idmatch-v1");
    assert_eq!(meta["rows"], 4);
    // The key is named by its fingerprint (never the key): exports under different
    // keys can be told apart before anyone joins them.
    let fingerprint = idmatch::token::KeyFingerprint::of(&idmatch::key::Key::load(Path::new(&key)).unwrap());
    assert_eq!(meta["key_fingerprint"], hex::encode(fingerprint.as_bytes()));

    let report = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(
        report,
        "line,column,reason\n3,email,missing_at\n3,mobile,letters_in_number\n5,member_id,missing_id\n6,,wrong_field_count\n"
    );
    assert!(!report.contains("secret-bad-value"));

    let key_hex = std::fs::read_to_string(&key).unwrap();
    for stream in [&out.stdout, &out.stderr] {
        assert!(!text(stream).contains(key_hex.trim()));
    }

    // With --rejects-include-values the raw values are written, as asked.
    let out = idmatch(&[
        "tokens",
        "--key-file",
        &key,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--rejects",
        rejects.to_str().unwrap(),
        "--rejects-include-values",
    ]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&rejects).unwrap().contains("3,email,missing_at,secret-bad-value"));
}

#[test]
fn tokens_names_the_file_and_column_on_header_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let input = dir.path().join("in.tsv");
    std::fs::write(&input, "id\tname\n1\tx\n").unwrap();
    let out = idmatch(&["tokens", "--key-file", &key, "--input", input.to_str().unwrap(), "--output", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("in.tsv") && err.contains("no identifier column"), "{err}");
    let out = idmatch(&[
        "tokens",
        "--key-file",
        &key,
        "--input",
        input.to_str().unwrap(),
        "--output",
        "/dev/null",
        "--email-col",
        "mail",
    ]);
    assert!(text(&out.stderr).contains("no column named `mail`"));
}

#[test]
fn match_on_synthetic_data_finds_exactly_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out =
        idmatch(&["synth", "--rows", "600", "--overlap", "0.4", "--out-dir", data.to_str().unwrap(), "--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = keygen(dir.path());
    let results = dir.path().join("out");
    let out = idmatch(&[
        "match",
        "--owner",
        data.join("members.csv").to_str().unwrap(),
        "--partner",
        data.join("partner.csv").to_str().unwrap(),
        "--key-file",
        &key,
        "--region",
        "US",
        "--reveal",
        "both",
        "--out-dir",
        results.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let ids = |path: &Path, col: usize| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(col).unwrap().to_owned())
            .collect()
    };
    let truth = data.join("truth.csv");
    assert_eq!(ids(&results.join("partner_matches.csv"), 0), ids(&truth, 0));
    assert_eq!(ids(&results.join("owner_matches.csv"), 0), ids(&truth, 1));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["owner"]["rows"], 600);
    assert_eq!(summary["reveal"], "both");
    assert!(summary["intersection"].as_u64().unwrap() > 0);

    // Count mode: no match files, only the size.
    let counted = dir.path().join("count");
    let out = idmatch(&[
        "match",
        "--owner",
        data.join("members.csv").to_str().unwrap(),
        "--partner",
        data.join("partner.csv").to_str().unwrap(),
        "--key-file",
        &key,
        "--region",
        "US",
        "--reveal",
        "count",
        "--out-dir",
        counted.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(!counted.join("partner_matches.csv").exists() && !counted.join("owner_matches.csv").exists());
    let s2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(counted.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s2["intersection"], summary["intersection"]);
}

#[test]
fn match_honors_optouts_on_the_shipped_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let dir = tempfile::tempdir().unwrap();
    let out = idmatch(&[
        "match",
        "--owner",
        root.join("members.csv").to_str().unwrap(),
        "--partner",
        root.join("partner.csv").to_str().unwrap(),
        "--key-file",
        &example_key(dir.path()),
        "--optouts",
        root.join("optouts.csv").to_str().unwrap(),
        "--region",
        "US",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["owner"]["excluded_records"], 6);
    assert_eq!(summary["optout_list"]["rows"], 6, "the opt-out file's own counts are reported");
    assert_eq!(summary["suppression_list"], serde_json::Value::Null);
    let owner_matches = std::fs::read_to_string(dir.path().join("owner_matches.csv")).unwrap();
    for id in ["m0000102", "m0000429"] {
        assert!(!owner_matches.contains(id), "opted-out {id} matched");
    }
}

#[test]
fn match_honors_an_optout_store_managed_from_the_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("optouts.db");
    let store_key = dir.path().join("store.key");
    assert!(idmatch(&["keygen", "--out", store_key.to_str().unwrap()]).status.success());
    let store_args = ["--db", db.to_str().unwrap(), "--store-key", store_key.to_str().unwrap()];
    let campaign_key = example_key(dir.path());
    // m0000102 matches in the example; opt it out by id.
    let mut add = vec!["optout", "add", "--id", "m0000102", "--source", "account-settings"];
    add.extend(store_args);
    let out = idmatch(&add);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = |out_dir: &Path| {
        let out = idmatch(&[
            "match",
            "--owner",
            root.join("members.csv").to_str().unwrap(),
            "--partner",
            root.join("partner.csv").to_str().unwrap(),
            "--key-file",
            &campaign_key,
            "--optout-db",
            db.to_str().unwrap(),
            "--store-key",
            store_key.to_str().unwrap(),
            "--region",
            "US",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::read_to_string(out_dir.join("owner_matches.csv")).unwrap()
    };
    let with_optout = run(&dir.path().join("a"));
    assert!(!with_optout.contains("m0000102"));
    let mut remove = vec!["optout", "remove", "--id", "m0000102", "--source", "account-settings"];
    remove.extend(store_args);
    assert!(idmatch(&remove).status.success());
    assert!(run(&dir.path().join("b")).contains("m0000102"), "opting back in applies to the next match");
}

#[test]
fn tokens_leaves_out_opted_out_records() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "id,email,phone\n1,alice@example.com,\n2,bob@example.com,\n3,,+14155550100\n").unwrap();
    let optouts = dir.path().join("optouts.csv");
    std::fs::write(&optouts, "id,email,phone\n,ALICE@Example.com,\n,,(415) 555-0100\n").unwrap();
    let output = dir.path().join("tokens.csv");
    let out = idmatch(&[
        "tokens",
        "--key-file",
        &key,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--optouts",
        optouts.to_str().unwrap(),
        "--region",
        "US",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("records excluded by opt-outs: 2"));
    let rows: Vec<String> = std::fs::read_to_string(&output).unwrap().lines().skip(1).map(str::to_owned).collect();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].starts_with("2,email,"));
}

#[test]
fn synth_distinct_gives_exactly_n_distinct_identifiers_per_side_and_the_exact_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = idmatch(&[
        "synth",
        "--rows",
        "2000",
        "--overlap",
        "0.5",
        "--distinct",
        "--out-dir",
        data.to_str().unwrap(),
        "--seed",
        "5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = keygen(dir.path());
    let results = dir.path().join("out");
    let (members, partner) = (data.join("members.csv"), data.join("partner.csv"));
    let out = local_match(&members, &partner, &key, &results, &["--reveal", "count"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("summary.json")).unwrap()).unwrap();
    for side in ["owner", "partner"] {
        assert_eq!(summary[side]["rows"], 2000, "{side}");
        assert_eq!(summary[side]["blinded"], 2000, "{side}: distinct identifiers");
        assert_eq!(summary[side]["rejected"], serde_json::json!({}), "{side}");
    }
    assert_eq!(summary["intersection"], 1000);
    let truth = std::fs::read_to_string(data.join("truth.csv")).unwrap();
    assert_eq!(truth.lines().count(), 1 + 1000);
}

#[test]
fn oprf_and_ecdh_write_the_same_match_files_on_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let key = example_key(dir.path());
    let ex = common::examples();
    let (owner, partner, optouts) = (ex.join("members.csv"), ex.join("partner.csv"), ex.join("optouts.csv"));
    let run = |protocol: &str, reveal: &str| {
        let out = dir.path().join(format!("{protocol}-{reveal}"));
        let args =
            ["--protocol", protocol, "--reveal", reveal, "--optouts", optouts.to_str().unwrap(), "--region", "US"];
        let output = local_match(&owner, &partner, &key, &out, &args);
        assert!(output.status.success(), "{protocol} {reveal}: {}", text(&output.stderr));
        assert!(text(&output.stdout).contains(&format!("protocol: {protocol}")), "{}", text(&output.stdout));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["protocol"], protocol);
        let read = |name: &str| std::fs::read(out.join(name)).ok();
        (read("partner_matches.csv"), read("owner_matches.csv"), summary["intersection"].clone())
    };
    for reveal in ["partner", "owner", "both"] {
        let (ecdh, oprf) = (run("ecdh", reveal), run("oprf", reveal));
        assert_eq!(ecdh, oprf, "reveal {reveal}");
        assert!(ecdh.0.is_some() || ecdh.1.is_some(), "reveal {reveal} writes some matches");
    }
    // auto runs oprf where it can, and ecdh for count.
    let auto = local_match(&owner, &partner, &key, &dir.path().join("auto"), &["--reveal", "both"]);
    assert!(text(&auto.stdout).contains("protocol: oprf"), "{}", text(&auto.stdout));
    let count = local_match(&owner, &partner, &key, &dir.path().join("count"), &["--reveal", "count"]);
    assert!(text(&count.stdout).contains("protocol: ecdh"), "{}", text(&count.stdout));
    // oprf cannot run count: a clear refusal, nothing written.
    let refused = dir.path().join("refused");
    let out = local_match(&owner, &partner, &key, &refused, &["--reveal", "count", "--protocol", "oprf"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("protocol oprf does not offer reveal mode count"), "{}", text(&out.stderr));
    assert!(!refused.join("summary.json").exists());
}

/// `idmatch partner add` writes a token once (mode 0600) and prints a `[[partners]]`
/// entry that a server configuration accepts and that admits exactly that token;
/// `partner token-sha256` hashes a token file as the server does (issue 22, item 2).
#[test]
fn partner_add_issues_a_token_and_the_entry_that_admits_it() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("acme.token");
    let out = idmatch(&[
        "partner",
        "add",
        "acme",
        "--campaign",
        "spring-2026",
        "--reveal",
        "count",
        "--token-out",
        token_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(token.trim().len(), 64, "256 random bits in hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let entry = text(&out.stdout);
    assert!(!entry.contains(token.trim()), "the entry holds only the digest");
    let digest = hex::encode(Sha256::digest(token.trim().as_bytes()));
    assert!(entry.contains(&format!("token_sha256 = \"{digest}\"")), "{entry}");
    assert!(entry.contains("honest_client_trusted = false"), "{entry}");
    // `sha256sum acme.token` would hash the newline too: a digest that never matches.
    assert_ne!(hex::encode(Sha256::digest(token.as_bytes())), digest);
    let out = idmatch(&["partner", "token-sha256", token_file.to_str().unwrap()]);
    assert_eq!(text(&out.stdout).trim(), digest);

    // The entry, added to the example configuration, is a valid partner.
    let mut config = std::fs::read_to_string(common::examples().join("server.toml")).unwrap();
    config += &entry;
    let path = dir.path().join("server.toml");
    std::fs::write(&path, config).unwrap();
    let loaded = idmatch::service::config::Config::load(&path).unwrap();
    let acme = loaded.partners.iter().find(|p| p.name == "acme").unwrap();
    let policy = loaded.partner_policy(acme).unwrap();
    assert_eq!(policy.token_sha256, Some(idmatch::service::config::token_sha256(&token)));
    assert_eq!(policy.reveals, [idmatch::psi::Reveal::Count]);
    assert!(!policy.honest_client_trusted);

    // Never overwritten.
    let again = idmatch(&["partner", "add", "acme", "--campaign", "x", "--token-out", token_file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
}
