//! `idmatch optout … --server`: the `idmatch` binary managing the opt-out store of a
//! real in-process server over TLS (add, remove, check, count, import), the exit
//! codes of refused credentials and usage errors, and imports that fail closed.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::pki::pki;
use common::{text, write};
use idmatch::key::Key;
use idmatch::optout::store::{OptOutStore, StoreOptions};
use sha2::{Digest, Sha256};

const PARTNER_TOKEN: &str = "acme-partner-token";
const ADMIN_TOKEN: &str = "owner-account-system-admin-token";
const MEMBERS: usize = 150;

/// A server on loopback TLS with an opt-out store, the admin service and one
/// campaign, and its files.
struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    /// Runs the server.
    _server: common::server::Running,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::with_limits("")
    }

    /// With extra `[limits]` lines.
    fn with_limits(limits: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        pki().write_to(d);
        write(d, "partner.token", PARTNER_TOKEN);
        write(d, "admin.token", &format!("{ADMIN_TOKEN}\n"));
        Key::generate_to_file(&d.join("campaign.key")).unwrap();
        let store_key = Key::generate_to_file(&d.join("store.key")).unwrap();
        OptOutStore::open(&d.join("optouts.db"), &store_key, &StoreOptions::create()).unwrap();
        let mut members = String::from("member_id,email,phone\n");
        let mut partner = String::from("id,email\n");
        for i in 0..MEMBERS {
            members += &format!("m{i},user{i}@example.com,+1 415 555 {i:04}\n");
            partner += &format!("p{i},USER{i}@Example.com\n");
        }
        write(d, "members.csv", &members);
        write(d, "partner.csv", &partner);
        let config = format!(
            r#"listen = "127.0.0.1:0"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "budgets.json"

[optout_store]
db = "optouts.db"
key_file = "store.key"
admin_token_sha256 = "{admin}"

[tls]
cert = "server.pem"
key = "server.key"

[limits]
min_partner_set = 10
{limits}

[[partners]]
name = "acme"
token_sha256 = "{partner}"
campaigns = ["spring"]
reveals = ["partner"]

[[campaigns]]
id = "spring"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
"#,
            admin = hex::encode(Sha256::digest(ADMIN_TOKEN)),
            partner = hex::encode(Sha256::digest(PARTNER_TOKEN)),
        );
        let server = common::server::serve(&write(d, "server.toml", &config));
        Fixture { dir, port: server.port, _server: server }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// `idmatch optout <action> <args> --server … --admin-token-file <token> --ca …`.
    fn optout_with(&self, action: &str, args: &[&str], token: &Path) -> Output {
        let (server, ca) = (self.server(), self.path("ca.pem"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_idmatch"));
        command.args(["optout", action]).args(args);
        command.args(["--server", &server, "--admin-token-file"]).arg(token).arg("--ca").arg(ca);
        command.output().unwrap()
    }

    fn optout(&self, action: &str, args: &[&str]) -> Output {
        self.optout_with(action, args, &self.path("admin.token"))
    }

    /// Runs an optout command that must succeed; its stdout.
    fn ok(&self, action: &str, args: &[&str]) -> String {
        let out = self.optout(action, args);
        assert!(out.status.success(), "optout {action} {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn count(&self) -> String {
        self.ok("count", &[]).trim().to_owned()
    }

    /// The partner's matched record ids after a match (partner reveal), through
    /// `idmatch match --server`.
    fn matched(&self, name: &str) -> BTreeSet<String> {
        let output = self.path(name);
        let out = Command::new(env!("CARGO_BIN_EXE_idmatch"))
            .args(["match", "--server", &self.server(), "--campaign", "spring", "--reveal", "partner"])
            .arg("--ca")
            .arg(self.path("ca.pem"))
            .arg("--key-file")
            .arg(self.path("campaign.key"))
            .arg("--token-file")
            .arg(self.path("partner.token"))
            .arg("--input")
            .arg(self.path("partner.csv"))
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
        assert!(out.status.success(), "match: {}", text(&out.stderr));
        let matches = std::fs::read_to_string(output).unwrap();
        matches.lines().skip(1).map(|l| l.split(',').next().unwrap().to_owned()).collect()
    }
}

/// Partner ids p0… except those of the members `out`.
fn all_but(out: &[usize]) -> BTreeSet<String> {
    (0..MEMBERS).filter(|i| !out.contains(i)).map(|i| format!("p{i}")).collect()
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

#[test]
fn add_check_count_import_and_remove_over_tls_apply_to_the_next_match() {
    let f = Fixture::start();
    assert_eq!(f.count(), "0 opt-outs (email 0, phone 0, id 0)");
    assert_eq!(f.matched("before.csv"), all_but(&[]));

    let added = f.ok("add", &["--email", " USER3@Example.com", "--source", "account-settings"]);
    assert_eq!(added.trim(), "added: email opted out (source account-settings)");
    f.ok("add", &["--id", "m4"]);
    f.ok("add", &["--phone", "(415) 555-0005", "--region", "US"]);
    let again = f.ok("add", &["--email", "user3@example.com"]);
    assert_eq!(again.trim(), "already opted out: email (nothing changed)");
    assert_eq!(f.ok("check", &["--email", "User3@example.com"]).trim(), "opted out");
    assert_eq!(f.ok("check", &["--email", "user9@example.com"]).trim(), "not opted out");
    assert_eq!(f.ok("check", &["--phone", "+14155550005"]).trim(), "opted out");
    assert_eq!(f.count(), "3 opt-outs (email 1, phone 1, id 1)");
    // The next match leaves out the member opted out by email, by id and by phone.
    assert_eq!(f.matched("after-add.csv"), all_but(&[3, 4, 5]));

    // A list over the ImportBatch stream, two entries per batch: an email, a phone
    // in the row's region, an id, and an email already opted out.
    let list = write(
        f.dir.path(),
        "list.csv",
        "email,phone,country,member_id\nuser10@example.com,,,\n,(415) 555-0011,US,\n,,,m12\nUSER3@example.com,,,\n",
    );
    let out = f.optout("import", &[list.to_str().unwrap(), "--batch-size", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains("  opt-outs: 4 identifiers and ids sent (1 ids), checked under the store's profile idmatch-v1"),
        "{report}"
    );
    assert!(report.contains("  added: 3\n") && report.contains("  already present: 1 "), "{report}");
    assert!(report.contains("  batches committed: 2 (source import:list.csv)"), "{report}");
    assert!(
        report.contains(&format!("server {} now holds 6 opt-outs (email 2, phone 2, id 2)", f.server())),
        "{report}"
    );
    assert_eq!(f.matched("after-import.csv"), all_but(&[3, 4, 5, 10, 11, 12]));

    // Opting back in applies to the next match too.
    assert_eq!(f.ok("remove", &["--email", "user3@example.com"]).trim(), "removed: email opted back in (source cli)");
    assert_eq!(f.ok("remove", &["--email", "user3@example.com"]).trim(), "not opted out: email (nothing removed)");
    assert_eq!(f.count(), "5 opt-outs (email 1, phone 2, id 2)");
    assert_eq!(f.matched("after-remove.csv"), all_but(&[4, 5, 10, 11, 12]));

    // The server's audit log has the changes and their sources, never a value.
    let audit = std::fs::read_to_string(f.path("audit.jsonl")).unwrap();
    for event in ["optout_add", "optout_remove", "optout_import"] {
        assert!(audit.contains(&format!("\"event\":\"{event}\"")), "{event}: {audit}");
    }
    assert!(audit.contains("account-settings") && audit.contains("import:list.csv"));
    // (Phone digits as they were given or normalized: a bare "555" could be part
    // of a timestamp or a duration.)
    for value in ["user3", "user10", "555-00", "4155550", "\"m12\""] {
        assert!(!audit.contains(value), "{value} in the audit log");
    }
}

#[test]
fn a_value_the_server_cannot_normalize_is_refused_without_the_value() {
    let f = Fixture::start();
    // A national number without a region: the store has no default region.
    let out = f.optout("add", &["--phone", "(415) 555-0099"]);
    assert_eq!(exit_code(&out), 1, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the server refused the request: InvalidArgument: phone rejected: unknown_country"),
        "{stderr}"
    );
    assert!(!stderr.contains("555"), "{stderr}");
    assert_eq!(f.count(), "0 opt-outs (email 0, phone 0, id 0)");
}

#[test]
fn refused_credentials_and_usage_errors_have_their_exit_codes() {
    let f = Fixture::start();
    let d = f.dir.path();
    // An unknown admin token: UNAUTHENTICATED, exit 5; the token is never printed.
    let wrong = write(d, "wrong.token", "not-the-admin-token-s3cr3t");
    let out = f.optout_with("count", &[], &wrong);
    assert_eq!(exit_code(&out), 5, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the server refused the credentials"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("s3cr3t"));
    // A partner's token: PERMISSION_DENIED, exit 6, for a change as for a count.
    let partner = f.path("partner.token");
    let out = f.optout_with("add", &["--email", "user1@example.com"], &partner);
    assert_eq!(exit_code(&out), 6, "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains(PARTNER_TOKEN) && !text(&out.stderr).contains("user1@"));
    assert_eq!(exit_code(&f.optout_with("count", &[], &partner)), 6);
    // A token file others can read is refused before anything is sent.
    let exposed = write(d, "exposed.token", ADMIN_TOKEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = f.optout_with("add", &["--id", "m1"], &exposed);
        assert_eq!(exit_code(&out), 1, "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("admin token file"), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("mode 0644"), "{}", text(&out.stderr));
        assert!(!text(&out.stderr).contains(ADMIN_TOKEN));
    }
    // A local store and a server at once: a usage error, exit 2.
    let out = f.optout("count", &["--db", f.path("optouts.db").to_str().unwrap()]);
    assert_eq!(exit_code(&out), 2, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot be used with"), "{}", text(&out.stderr));
    let out = f.optout("add", &["--email", "a@example.com", "--store-key", f.path("store.key").to_str().unwrap()]);
    assert_eq!(exit_code(&out), 2, "{}", text(&out.stderr));
    // export, audit and verify are local only.
    assert_eq!(exit_code(&f.optout("export", &[])), 2);
    // Standard input cannot be read twice.
    assert_eq!(exit_code(&f.optout("import", &["-"])), 2);
    // Plain http:// to a host that is not loopback would send the token in clear.
    let out = common::idmatch(&[
        "optout",
        "count",
        "--server",
        "http://owner.example:7443",
        "--admin-token-file",
        f.path("admin.token").to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&out), 2, "{}", text(&out.stderr));
    // No server listening: unreachable, exit 3.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = common::idmatch(&[
        "optout",
        "count",
        "--server",
        &format!("https://127.0.0.1:{closed}"),
        "--admin-token-file",
        f.path("admin.token").to_str().unwrap(),
        "--ca",
        f.path("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&out), 3, "{}", text(&out.stderr));
    // A server certificate the system's trust store does not know (no --ca): TLS, exit 4.
    let out = common::idmatch(&[
        "optout",
        "count",
        "--server",
        &f.server(),
        "--admin-token-file",
        f.path("admin.token").to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&out), 4, "{}", text(&out.stderr));
    assert_eq!(f.count(), "0 opt-outs (email 0, phone 0, id 0)");
}

#[test]
fn a_list_with_a_bad_row_sends_nothing_unless_bad_rows_are_skipped() {
    let f = Fixture::start();
    let d = f.dir.path();
    f.ok("add", &["--id", "m1"]);
    let before = "1 opt-outs (email 0, phone 0, id 1)";
    assert_eq!(f.count(), before);

    // One identifier that does not normalize refuses the whole list: nothing sent.
    let bad = write(d, "bad.csv", "email\nuser20@example.com\nnot-an-email\nuser21@example.com\n");
    let rejects = f.path("rejects.csv");
    let out = f.optout("import", &[bad.to_str().unwrap(), "--rejects", rejects.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 1, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nothing was sent") && stderr.contains("line 3, column email: missing_at"), "{stderr}");
    assert!(stderr.contains("1 rejected identifiers and 0 bad rows; nothing was imported"), "{stderr}");
    assert!(!stderr.contains("not-an-email") && !stderr.contains("user20"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&rejects).unwrap(), "line,column,reason\n3,email,missing_at\n");
    assert_eq!(f.count(), before);
    assert_eq!(f.ok("check", &["--email", "user20@example.com"]).trim(), "not opted out");

    // A row with the wrong number of fields, and a quote that is never closed.
    let short = write(d, "short.csv", "email,member_id\nuser22@example.com,m22\nuser23@example.com\n");
    assert_eq!(exit_code(&f.optout("import", &[short.to_str().unwrap()])), 1);
    let quote = write(d, "quote.csv", "email\nuser24@example.com\n\"user25@example.com\nuser26@example.com\n");
    let out = f.optout("import", &[quote.to_str().unwrap(), "--skip-bad-rows"]);
    assert_eq!(exit_code(&out), 1, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("never closed"), "{}", text(&out.stderr));
    assert_eq!(f.count(), before);

    // --skip-bad-rows imports the rest and reports what it skipped.
    let out = f.optout("import", &[bad.to_str().unwrap(), "--skip-bad-rows"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("line 3, column email: missing_at"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("  added: 2\n"), "{}", text(&out.stdout));
    assert_eq!(f.count(), "3 opt-outs (email 2, phone 0, id 1)");

    // A list none of whose rows can be imported fails, even when skipping.
    let none = write(d, "none.csv", "email\nnope\n");
    let out = f.optout("import", &[none.to_str().unwrap(), "--skip-bad-rows"]);
    assert_eq!(exit_code(&out), 1, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("none of its 1 rows could be imported"), "{}", text(&out.stderr));
    assert_eq!(f.count(), "3 opt-outs (email 2, phone 0, id 1)");
}

#[test]
fn a_large_list_is_streamed_in_batches() {
    let f = Fixture::start();
    let rows = 25_000;
    let mut list = String::from("email\n");
    for i in 0..rows {
        list += &format!("bulk{i}@example.org\n");
    }
    let path = write(f.dir.path(), "bulk.csv", &list);
    let out = f.optout("import", &[path.to_str().unwrap(), "--source", "crm-export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains(&format!("  added: {rows}\n")), "{report}");
    assert!(report.contains("  batches committed: 3 (source crm-export)"), "{report}");
    assert_eq!(f.count(), format!("{rows} opt-outs (email {rows}, phone 0, id 0)"));
    // Again: everything is already present.
    let out = f.optout("import", &[path.to_str().unwrap()]);
    assert!(text(&out.stdout).contains(&format!("  already present: {rows} ")), "{}", text(&out.stdout));
    assert_eq!(f.count(), format!("{rows} opt-outs (email {rows}, phone 0, id 0)"));
}

#[test]
fn a_server_that_refuses_the_first_batch_imports_nothing() {
    // The smallest message limit a server accepts: a batch of 10,000 emails is larger.
    let f = Fixture::with_limits("max_message_bytes = 65536");
    let mut list = String::from("email\n");
    for i in 0..20_000 {
        list += &format!("bulk{i}@example.org\n");
    }
    let path = write(f.dir.path(), "bulk.csv", &list);
    let out = f.optout("import", &[path.to_str().unwrap()]);
    assert_eq!(exit_code(&out), 1, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the server refused the request: OutOfRange") && stderr.contains("max_message_bytes"),
        "{stderr}"
    );
    assert_eq!(f.count(), "0 opt-outs (email 0, phone 0, id 0)");
    // Smaller batches fit.
    let out = f.optout("import", &[path.to_str().unwrap(), "--batch-size", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("  batches committed: 20 "), "{}", text(&out.stdout));
    assert_eq!(f.count(), "20000 opt-outs (email 20000, phone 0, id 0)");
}
