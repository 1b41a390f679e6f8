//! The gRPC server and client end to end over loopback TLS: every reveal mode,
//! authentication and permissions, malformed and abandoned streams, concurrency,
//! opt-outs added while the server runs, the audit log and result files.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::pki::{Pki, ca, issue, pki};
use common::write;
use idmatch::key::Key;
use idmatch::normalize::{Normalizer, Profile, Region};
use idmatch::psi::group::BlindingKey;
use idmatch::psi::{Element, Protocol, ProtocolChoice, Reveal};
use idmatch::records::ColumnSpec;
use idmatch::service::client::{self, ClientError, ClientOptions};
use idmatch::service::config::Config;
use idmatch::service::server::{self, Reload, ServeError};
use idmatch::token::{KeyFingerprint, Token};
use idmatch::wire;
use idmatch::wire::matcher_client::MatcherClient;
use rcgen::ExtendedKeyUsagePurpose;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const TOKEN: &str = "acme-secret-token";
const ADMIN_TOKEN: &str = "account-system-admin-token";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What a test changes in the fixture's server.
#[derive(Default)]
struct Setup {
    mutual_tls: bool,
    /// Opt-outs from an opt-out store with the admin service, instead of a file.
    store: bool,
    /// Extra `[limits]` lines.
    limits: &'static str,
    /// Extra email-only members of the `spring` audience (none of them match).
    extra_members: usize,
}

/// A running server on loopback with TLS (mutual TLS optional) and its files.
struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
    pki: Pki,
    runtime: tokio::runtime::Runtime,
    reload: mpsc::Sender<Reload>,
}

impl Fixture {
    fn start(mutual_tls: bool, store: bool) -> Fixture {
        Fixture::with(Setup { mutual_tls, store, ..Setup::default() })
    }

    fn with(setup: Setup) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pki = pki();
        write(d, "ca.pem", &pki.ca_pem);
        write(d, "server.pem", &pki.server_cert);
        write(d, "server.key", &pki.server_key);
        write(d, "client.pem", &pki.client_cert);
        write(d, "client.key", &pki.client_key);
        write(d, "token", TOKEN);
        Key::generate_to_file(&d.join("campaign.key")).unwrap();
        let mut members = String::from("member_id,email,phone\n");
        let mut partner = String::from("id,email\n");
        for i in 0..1500 {
            members += &format!("m{i},user{i}@example.com,+1 415 555 {:04}\n", i % 10000);
            partner += &format!("p{i},USER{}@Example.com\n", i + 1000);
        }
        write(d, "autumn.csv", &members);
        for i in 0..setup.extra_members {
            members += &format!("x{i},extra{i}@big.example.com,\n");
        }
        write(d, "members.csv", &members);
        write(d, "partner.csv", &partner);
        write(d, "optouts.csv", "email\nnobody@example.com\n");
        let optouts = if setup.store {
            let store_key = Key::generate_to_file(&d.join("store.key")).unwrap();
            idmatch::optout::store::OptOutStore::open(
                &d.join("optouts.db"),
                &store_key,
                &idmatch::optout::store::StoreOptions::create(),
            )
            .unwrap();
            format!(
                "[optout_store]\ndb = \"optouts.db\"\nkey_file = \"store.key\"\nadmin_token_sha256 = \"{}\"\n",
                hex::encode(Sha256::digest(ADMIN_TOKEN.as_bytes()))
            )
        } else {
            "optouts = \"optouts.csv\"\n".to_owned()
        };
        let metrics_port = free_port();
        let token_sha = hex::encode(Sha256::digest(TOKEN.as_bytes()));
        let client_ca = if setup.mutual_tls { "client_ca = \"ca.pem\"" } else { "" };
        let cert_partner = if setup.mutual_tls {
            "[[partners]]\nname = \"acme-mtls\"\ncert_common_name = \"acme\"\ncampaigns = [\"spring\"]\nreveals = [\"partner\", \"owner\", \"both\", \"count\"]\n"
        } else {
            ""
        };
        let limits = if setup.limits.is_empty() {
            "max_concurrent_matches = 32\nmax_concurrent_matches_per_partner = 32\nidle_timeout_secs = 60"
        } else {
            setup.limits
        };
        let config = format!(
            r#"
listen = "127.0.0.1:0"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "budgets.json"
metrics_listen = "127.0.0.1:{metrics_port}"
{optouts}

[tls]
cert = "server.pem"
key = "server.key"
{client_ca}

[limits]
min_partner_set = 100
{limits}

[[partners]]
name = "acme"
token_sha256 = "{token_sha}"
campaigns = ["spring"]
reveals = ["partner", "owner", "both", "count"]
honest_client_trusted = true

[[partners]]
name = "limited"
token_sha256 = "{limited_sha}"
campaigns = ["autumn"]
reveals = ["count"]

{cert_partner}

[[campaigns]]
id = "spring"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
protocols = ["ecdh", "oprf"]

[[campaigns]]
id = "autumn"
key_file = "campaign.key"
audience = "autumn.csv"
region = "US"
"#,
            limited_sha = hex::encode(Sha256::digest(b"limited-token")),
        );
        let config_path = write(d, "server.toml", &config);
        write(d, "server.orig.toml", &config);
        let common::server::Running { runtime, port, reload } = common::server::serve(&config_path);
        Fixture { dir, port, metrics_port, pki, runtime, reload }
    }

    /// Rewrites `server.toml` (`edit` of the one the fixture started with) and
    /// reloads it, returning the reload's outcome.
    fn reload_with(&self, edit: impl FnOnce(String) -> String) -> Result<(), ServeError> {
        let text = std::fs::read_to_string(self.path("server.orig.toml")).unwrap();
        write(self.dir.path(), "server.toml", &edit(text));
        let (request, reply) = Reload::with_reply();
        self.runtime.block_on(async {
            self.reload.send(request).await.unwrap();
            reply.await.unwrap()
        })
    }

    /// The campaign key's fingerprint, as a client sends it.
    fn fingerprint(&self) -> Vec<u8> {
        KeyFingerprint::of(&Key::load(&self.path("campaign.key")).unwrap()).as_bytes().to_vec()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self, reveal: Reveal, output: &str) -> ClientOptions {
        ClientOptions {
            server: format!("https://localhost:{}", self.port),
            campaign: "spring".into(),
            key_file: self.path("campaign.key"),
            input: self.path("partner.csv"),
            output: self.path(output),
            reveal,
            protocol: ProtocolChoice::Auto,
            normalizer: Normalizer::new(Profile::IdmatchV1, Some(Region::from_code("US").unwrap())),
            columns: ColumnSpec::default(),
            suppress: None,
            bad_list_rows: Default::default(),
            ca: Some(self.path("ca.pem")),
            cert: None,
            key: None,
            token_file: Some(self.path("token")),
            idle_timeout: Duration::from_secs(10),
            progress: None,
        }
    }

    fn run(&self, options: ClientOptions) -> Result<client::ClientSummary, ClientError> {
        self.runtime.block_on(client::run(options))
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A raw gRPC client for malformed traffic.
    fn raw_channel(&self) -> Channel {
        let endpoint = self.raw_endpoint();
        self.runtime.block_on(async { endpoint.connect().await.unwrap() })
    }

    fn raw_endpoint(&self) -> Endpoint {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.pki.ca_pem));
        Endpoint::from_shared(format!("https://localhost:{}", self.port)).unwrap().tls_config(tls).unwrap()
    }

    /// A hello for `spring` in both mode, with the campaign key's fingerprint.
    fn hello(&self, size: u64) -> wire::PartnerMessage {
        hello_with(size, |h| h.key_fingerprint = self.fingerprint())
    }
}

fn matched_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().skip(1).map(|l| l.split(',').next().unwrap().to_owned()).collect()
}

const ENGINES: [Protocol; 2] = [Protocol::Ecdh, Protocol::Oprf];

#[test]
fn every_reveal_mode_of_both_engines_over_tls_with_a_bearer_token() {
    let f = Fixture::start(false, false);
    let mut runs = 0;
    for protocol in ENGINES {
        for reveal in Reveal::ALL.into_iter().filter(|r| protocol.offers(*r)) {
            let out = format!("matches-{protocol}-{reveal}.csv");
            let mut options = f.options(reveal, &out);
            options.protocol = ProtocolChoice::Exactly(protocol);
            let summary = f.run(options).unwrap();
            runs += 1;
            assert_eq!(summary.protocol, protocol);
            let o = &summary.outcome;
            assert_eq!((o.partner_set_size, o.owner_set_size), (1500, 3000), "{protocol} {reveal}");
            assert_eq!(o.intersection, (reveal != Reveal::Owner).then_some(500), "{protocol} {reveal}");
            if matches!(reveal, Reveal::Partner | Reveal::Both) {
                let ids = matched_ids(&f.path(&out));
                assert_eq!(ids.len(), 500);
                assert!(ids.iter().all(|id| id[1..].parse::<usize>().unwrap() < 500));
            } else {
                assert!(!f.path(&out).exists(), "{protocol} {reveal}: nothing to write");
            }
        }
    }
    // Both engines write byte-identical partner files.
    for reveal in ["partner", "both"] {
        let read = |engine: &str| std::fs::read(f.path(&format!("matches-{engine}-{reveal}.csv"))).unwrap();
        assert_eq!(read("ecdh"), read("oprf"), "{reveal}");
    }
    // Owner and both modes left member results on the server, mode 0600: the same
    // 500 members under either engine.
    let results: Vec<_> = std::fs::read_dir(f.path("results")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(results.len(), 4);
    for path in &results {
        let ids = matched_ids(path);
        assert_eq!(ids.len(), 500);
        assert!(ids.iter().all(|id| (1000..1500).contains(&id[1..].parse::<usize>().unwrap())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
    let audit = f.audit_lines();
    assert_eq!(audit.len(), runs);
    assert!(audit.iter().all(|a| a["outcome"] == "ok" && a["partner"] == "acme" && a["partner_set_size"] == 1500));
    let engines: Vec<&str> = audit.iter().map(|a| a["protocol"].as_str().unwrap()).collect();
    assert_eq!(engines, ["ecdh", "ecdh", "ecdh", "ecdh", "oprf", "oprf", "oprf"]);
    let text = std::fs::read_to_string(f.path("audit.jsonl")).unwrap();
    assert!(!text.contains("example.com") && !text.contains(TOKEN));
}

/// `auto` gets the fastest engine the campaign allows for the reveal mode; an engine
/// the campaign does not allow is refused before anything is charged; a client from
/// before the `protocols` field gets ECDH.
#[test]
fn auto_gets_the_fastest_engine_the_campaign_allows() {
    let f = Fixture::start(false, false);
    let run = |reveal, choice| {
        let mut options = f.options(reveal, "auto.csv");
        options.protocol = choice;
        f.run(options)
    };
    assert_eq!(run(Reveal::Both, ProtocolChoice::Auto).unwrap().protocol, Protocol::Oprf);
    assert_eq!(run(Reveal::Count, ProtocolChoice::Auto).unwrap().protocol, Protocol::Ecdh);
    let err = run(Reveal::Count, ProtocolChoice::Exactly(Protocol::Oprf)).unwrap_err();
    assert!(matches!(err, ClientError::ProtocolChoice(_)), "refused before connecting: {err}");
    assert_eq!(f.audit_lines().len(), 2, "nothing reached the server");

    // A campaign that allows only ecdh.
    f.reload_with(|t| t.replace("protocols = [\"ecdh\", \"oprf\"]\n", "protocols = [\"ecdh\"]\n")).unwrap();
    assert_eq!(run(Reveal::Both, ProtocolChoice::Auto).unwrap().protocol, Protocol::Ecdh);
    let err = run(Reveal::Both, ProtocolChoice::Exactly(Protocol::Oprf)).unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied(_)), "{err}");
    assert_eq!(err.exit_code(), 6);
    assert!(err.to_string().contains("none of the offered protocols (oprf) is allowed"), "{err}");
    // An older client's hello names no engine: ECDH, and the accept says so.
    let (received, _) = raw_call_collect(&f, vec![f.hello(1500)]);
    let Some(wire::owner_message::Body::Accept(accept)) = &received[0].body else { panic!("{received:?}") };
    assert_eq!(accept.protocol, wire::Protocol::Ecdh as i32);
    assert!(accept.max_chunk > 0);
    // And a campaign configured with an unknown engine is refused with its name.
    let err = f.reload_with(|t| t.replace("[\"ecdh\", \"oprf\"]", "[\"rsa\"]"));
    let err = err.unwrap_err().to_string();
    assert!(err.contains("campaign `spring`: protocols: unknown protocol `rsa`"), "{err}");
    let audit = f.audit_lines();
    let engines: Vec<&str> = audit.iter().map(|a| a["protocol"].as_str().unwrap_or("-")).collect();
    assert_eq!(engines, ["oprf", "ecdh", "ecdh", "-", "ecdh"]);
    assert_eq!(audit[3]["outcome"], "PermissionDenied");
}

/// A partner the owner has not said it trusts to run an honest client gets the
/// oprf engine from `auto` like any other (it holds against a deviating
/// partner), and the zero-correction attack of issue 19 (a crafted correction
/// matrix that let the receiver evaluate the owner's OPRF offline under the
/// earlier, semi-honest engine) fails the consistency check: the owner sends no
/// output, ends the match with INVALID_ARGUMENT, and serves the next one.
#[test]
fn an_untrusted_partner_gets_oprf_and_the_zero_correction_attack_gets_no_output() {
    use idmatch::psi::oprf::Params;
    let f = Fixture::start(false, false);
    f.reload_with(|t| t.replace("honest_client_trusted = true\n", "")).unwrap();
    let run = |reveal, choice| {
        let mut options = f.options(reveal, "untrusted.csv");
        options.protocol = choice;
        f.run(options)
    };
    for reveal in [Reveal::Partner, Reveal::Owner, Reveal::Both] {
        let summary = run(reveal, ProtocolChoice::Auto).unwrap();
        assert_eq!(summary.protocol, Protocol::Oprf, "{reveal}");
        assert_eq!((summary.outcome.partner_set_size, summary.outcome.owner_set_size), (1500, 3000));
    }

    // The attacker's script: an oprf hello, a valid receiver setup, seeds, an
    // all-zero correction matrix of the right size, and a check of zeros.
    let hello = hello_with(1500, |h| {
        h.key_fingerprint = f.fingerprint();
        h.protocols = vec![wire::Protocol::Oprf as i32];
    });
    let total = Params::derive(3000, 1500).unwrap().matrix_bytes() as usize;
    let mut script = vec![hello, receiver_setup(1500, |_| {}), oprf(wire::oprf::Body::Seeds(vec![0; 32]))];
    let zeros = vec![0u8; total];
    script.extend(zeros.chunks(1 << 20).map(|c| oprf(wire::oprf::Body::Correction(c.to_vec()))));
    script.push(oprf(wire::oprf::Body::Check(vec![0; 5120])));
    let (received, status) = raw_call_collect(&f, script);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("consistency check failed"), "{}", status.message());
    let kinds: Vec<&str> = received
        .iter()
        .map(|m| match &m.body {
            Some(wire::owner_message::Body::Accept(_)) => "accept",
            Some(wire::owner_message::Body::Oprf(wire::Oprf { body: Some(b) })) => match b {
                wire::oprf::Body::SenderSetup(_) => "sender_setup",
                wire::oprf::Body::Opening(_) => "opening",
                wire::oprf::Body::Outputs(_) => "outputs",
                _ => "other oprf",
            },
            _ => "other",
        })
        .collect();
    // The owner's setup and opening may still be in flight when the status ends the
    // stream; an output never left.
    assert_eq!(kinds.first(), Some(&"accept"));
    assert!(!kinds.contains(&"outputs"), "no output left the owner: {kinds:?}");
    // A hello that offers an engine the campaign does not allow a million times is
    // refused in a short message (the offer is named once).
    f.reload_with(|t| t.replace("protocols = [\"ecdh\", \"oprf\"]\n", "protocols = [\"ecdh\"]\n")).unwrap();
    let long_offer = hello_with(1500, |h| {
        h.key_fingerprint = f.fingerprint();
        h.protocols = vec![wire::Protocol::Oprf as i32; 1_000_000];
    });
    let (received, status) = raw_call_collect(&f, vec![long_offer]);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(received.is_empty() && status.message().len() < 400, "{}", status.message());
    let audit = f.audit_lines();
    let outcomes: Vec<(&str, &str)> =
        audit.iter().map(|a| (a["outcome"].as_str().unwrap(), a["protocol"].as_str().unwrap_or("-"))).collect();
    let ok = ("ok", "oprf");
    assert_eq!(outcomes, [ok, ok, ok, ("InvalidArgument", "oprf"), ("PermissionDenied", "-")]);
    assert!(audit.iter().all(|a| a.to_string().len() < 2000), "audit lines stay short");
    // The server still serves.
    f.reload_with(|t| t).unwrap();
    assert_eq!(run(Reveal::Both, ProtocolChoice::Auto).unwrap().protocol, Protocol::Oprf);
}

#[test]
fn credentials_and_permissions_are_enforced() {
    let f = Fixture::start(false, false);
    write(f.dir.path(), "wrong-token", "not-the-token");
    let mut options = f.options(Reveal::Both, "x.csv");
    options.token_file = Some(f.path("wrong-token"));
    let err = f.run(options).unwrap_err();
    assert!(matches!(err, ClientError::Unauthenticated(_)), "{err}");
    assert_eq!(err.exit_code(), 5);

    let mut options = f.options(Reveal::Both, "x.csv");
    options.token_file = None;
    assert!(matches!(f.run(options).unwrap_err(), ClientError::Unauthenticated(_)));
    // Both refusals are audited (reason and address, never the token sent).
    let refused: Vec<_> = f.audit_lines().into_iter().filter(|a| a["event"] == "credentials_refused").collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["reason"], "unknown bearer token");
    assert_eq!(refused[0]["service"], "match");
    assert!(refused[1]["reason"].as_str().unwrap().starts_with("no credentials"));
    assert!(refused.iter().all(|a| a["outcome"] == "Unauthenticated" && a["peer"].is_string()));
    assert!(!std::fs::read_to_string(f.path("audit.jsonl")).unwrap().contains("not-the-token"));

    // A token file (or a client's TLS private key) other users can read is refused
    // before connecting, as key files are.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let exposed = write(f.dir.path(), "exposed-token", TOKEN);
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut options = f.options(Reveal::Both, "x.csv");
        options.token_file = Some(exposed);
        let err = f.run(options).unwrap_err().to_string();
        assert!(err.contains("token file") && err.contains("mode 0644") && err.contains("chmod 600"), "{err}");
        let audited = f.audit_lines().len();
        let key = write(f.dir.path(), "exposed.key", &f.pki.server_key);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut options = f.options(Reveal::Both, "x.csv");
        (options.cert, options.key) = (Some(f.path("server.pem")), Some(key));
        let err = f.run(options).unwrap_err().to_string();
        assert!(err.contains("TLS private key") && err.contains("mode 0640"), "{err}");
        assert_eq!(f.audit_lines().len(), audited, "nothing reached the server");
    }

    write(f.dir.path(), "limited-token", "limited-token");
    let mut options = f.options(Reveal::Count, "x.csv");
    options.token_file = Some(f.path("limited-token"));
    let err = f.run(options).unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied(_)), "{err}");
    assert_eq!(err.exit_code(), 6);

    let mut options = f.options(Reveal::Both, "x.csv");
    options.token_file = Some(f.path("limited-token"));
    options.campaign = "autumn".into();
    assert!(matches!(f.run(options).unwrap_err(), ClientError::PermissionDenied(_)));

    // A partner set below the minimum is refused as a limit.
    write(f.dir.path(), "tiny.csv", "id,email\n1,a@example.com\n");
    let mut options = f.options(Reveal::Both, "x.csv");
    options.input = f.path("tiny.csv");
    let err = f.run(options).unwrap_err();
    assert!(matches!(err, ClientError::ResourceExhausted(_)), "{err}");

    // The server still serves afterwards.
    f.run(f.options(Reveal::Count, "x.csv")).unwrap();
    let outcomes: Vec<String> = f.audit_lines().iter().map(|a| a["outcome"].as_str().unwrap().to_owned()).collect();
    assert!(outcomes.contains(&"PermissionDenied".to_owned()) && outcomes.contains(&"ResourceExhausted".to_owned()));
}

#[test]
fn mutual_tls_identifies_the_partner_and_refuses_strangers() {
    let f = Fixture::start(true, false);
    let mut options = f.options(Reveal::Partner, "mtls.csv");
    options.token_file = None;
    options.cert = Some(f.path("client.pem"));
    options.key = Some(f.path("client.key"));
    let summary = f.run(options).unwrap();
    assert_eq!(summary.matched_records, Some(500));
    assert!(f.audit_lines().iter().any(|a| a["partner"] == "acme-mtls"));

    // A certificate from another CA is refused during the TLS handshake.
    let (_, other_issuer) = ca("some other ca");
    let (cert, key) = issue(&other_issuer, "acme", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    write(f.dir.path(), "stranger.pem", &cert);
    write(f.dir.path(), "stranger.key", &key);
    let mut options = f.options(Reveal::Partner, "x.csv");
    options.token_file = None;
    options.cert = Some(f.path("stranger.pem"));
    options.key = Some(f.path("stranger.key"));
    let err = f.run(options).unwrap_err();
    assert!(err.exit_code() != 0 && !matches!(err, ClientError::Protocol(_)), "{err}");

    // Without a CA file the server's certificate is checked against the system's
    // trust store, which does not hold the test CA: a TLS failure (exit code 4),
    // not a connection without verification.
    let mut options = f.options(Reveal::Partner, "y.csv");
    options.ca = None;
    let err = f.run(options).unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
    assert_eq!(err.exit_code(), 4);
}

#[test]
fn twenty_concurrent_matches_are_all_correct() {
    let f = Arc::new(Fixture::start(false, false));
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || {
                // Correctness under concurrency, not speed: twenty matches share two
                // (possibly busy) cores, so a client may wait long for the owner.
                let mut options = f.options(Reveal::Partner, &format!("c{i}.csv"));
                options.protocol = ProtocolChoice::Exactly(ENGINES[i % 2]);
                options.idle_timeout = Duration::from_secs(120);
                f.run(options).unwrap()
            })
        })
        .collect();
    for h in handles {
        let summary = h.join().unwrap();
        assert_eq!(summary.outcome.intersection, Some(500));
        assert_eq!(summary.matched_records, Some(500));
    }
    assert_eq!(f.audit_lines().iter().filter(|a| a["outcome"] == "ok").count(), 20);
}

#[test]
fn an_optout_added_while_running_is_honored_by_the_next_match_of_either_engine() {
    let f = Fixture::start(false, false);
    let run = |protocol, out: &str| {
        let mut options = f.options(Reveal::Both, out);
        options.protocol = ProtocolChoice::Exactly(protocol);
        f.run(options).unwrap()
    };
    for protocol in ENGINES {
        assert_eq!(run(protocol, "before.csv").outcome.intersection, Some(500));
    }
    // m1000's email is what partner p0 holds; opt it out by email and m1001 by id.
    // The file keeps its modification time, as after `cp -p` or a rewrite within
    // the clock's granularity: the server must notice the new content all the same.
    let optouts = f.path("optouts.csv");
    let rewrite_keeping_mtime = |text: &str| {
        let mtime = std::fs::metadata(&optouts).unwrap().modified().unwrap();
        write(f.dir.path(), "optouts.csv", text);
        std::fs::File::options().write(true).open(&optouts).unwrap().set_modified(mtime).unwrap();
        assert_eq!(std::fs::metadata(&optouts).unwrap().modified().unwrap(), mtime);
    };
    rewrite_keeping_mtime("id,email\n,User1000@Example.com\nm1001,\n");
    for protocol in ENGINES {
        let after = run(protocol, "after.csv");
        assert_eq!(after.outcome.intersection, Some(498), "{protocol}");
        assert_eq!(after.outcome.owner_set_size, 3000 - 4);
        let ids = matched_ids(&f.path("after.csv"));
        assert!(!ids.contains(&"p0".to_owned()) && !ids.contains(&"p1".to_owned()));
        let audit = f.audit_lines();
        assert_eq!(audit.last().unwrap()["opted_out_records"], 2);
    }
    // Same length, same time, one opt-out fewer (m1001 → m9999, not a member).
    rewrite_keeping_mtime("id,email\n,User1000@Example.com\nm9999,\n");
    assert_eq!(run(Protocol::Ecdh, "again.csv").outcome.intersection, Some(499));
}

fn raw_call(f: &Fixture, messages: Vec<wire::PartnerMessage>) -> tonic::Status {
    raw_call_collect(f, messages).1
}

/// Sends `messages`, then reads until the stream ends: what the owner sent, and how
/// it ended.
fn raw_call_collect(f: &Fixture, messages: Vec<wire::PartnerMessage>) -> (Vec<wire::OwnerMessage>, tonic::Status) {
    let channel = f.raw_channel();
    f.runtime.block_on(async move {
        let mut client = MatcherClient::new(channel);
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let mut received = Vec::new();
        let mut stream = match client.r#match(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return (received, status),
        };
        loop {
            match stream.message().await {
                Ok(Some(m)) => received.push(m),
                Ok(None) => return (received, tonic::Status::ok("stream ended")),
                Err(status) => return (received, status),
            }
        }
    })
}

/// A hello for `spring` in both mode without a key fingerprint, changed by `edit`.
fn hello_with(size: u64, edit: impl FnOnce(&mut wire::Hello)) -> wire::PartnerMessage {
    let mut hello = wire::Hello {
        version: 1,
        campaign: "spring".into(),
        profile: "idmatch-v1".into(),
        reveal: wire::Reveal::Both as i32,
        partner_set_size: size,
        key_fingerprint: Vec::new(),
        protocols: Vec::new(),
        run: None,
    };
    edit(&mut hello);
    wire::PartnerMessage { body: Some(wire::partner_message::Body::Hello(hello)) }
}

/// `n` valid elements (blinded tokens), as a partner would send them.
fn valid_elements(n: usize) -> wire::PartnerMessage {
    let tokens: Vec<Token> = (0..n).map(|i| Token([i as u8; 32])).collect();
    let blinded = BlindingKey::random().unwrap().blind_tokens(&tokens);
    elements(Element::join_chunk(&blinded))
}

fn elements(data: Vec<u8>) -> wire::PartnerMessage {
    wire::PartnerMessage { body: Some(wire::partner_message::Body::PartnerElements(wire::Elements { data })) }
}

#[test]
fn malformed_and_abandoned_streams_get_precise_codes_and_leave_no_state() {
    let f = Fixture::start(false, false);
    let code = |messages| raw_call(&f, messages).code();
    assert_eq!(code(vec![elements(vec![0; 32])]), tonic::Code::FailedPrecondition, "elements before hello");
    assert_eq!(code(vec![f.hello(200), elements(vec![1; 31])]), tonic::Code::InvalidArgument, "bad chunk length");
    assert_eq!(code(vec![f.hello(200), elements(vec![0; 64])]), tonic::Code::InvalidArgument, "identity element");
    assert_eq!(code(vec![f.hello(200), elements(vec![0xff; 32])]), tonic::Code::InvalidArgument, "non-canonical");
    let mut bad_profile = f.hello(200);
    if let Some(wire::partner_message::Body::Hello(h)) = &mut bad_profile.body {
        h.profile = "basic-v1".into();
    }
    assert_eq!(code(vec![bad_profile]), tonic::Code::FailedPrecondition, "profile mismatch");
    let oversize = elements(vec![0; 5 << 20]);
    assert_eq!(code(vec![f.hello(200), oversize]), tonic::Code::OutOfRange, "message over the size limit");
    // A client that announces 200 elements, sends none and stops: the server cancels
    // the match when the stream closes.
    let abandoned = code(vec![f.hello(200)]);
    assert!(matches!(abandoned, tonic::Code::Cancelled | tonic::Code::DeadlineExceeded), "{abandoned:?}");
    std::thread::sleep(Duration::from_millis(300));
    let audit = f.audit_lines();
    assert!(audit.len() >= 6, "every match is audited: {audit:?}");
    assert!(audit.iter().all(|a| a["outcome"] != "ok"));
    // And it keeps serving.
    assert_eq!(f.run(f.options(Reveal::Count, "ok.csv")).unwrap().outcome.intersection, Some(500));
}

fn oprf(body: wire::oprf::Body) -> wire::PartnerMessage {
    wire::PartnerMessage { body: Some(wire::partner_message::Body::Oprf(wire::Oprf { body: Some(body) })) }
}

/// A valid receiver setup for a partner of `size` tokens in `both` mode, edited.
fn receiver_setup(size: u64, edit: impl FnOnce(&mut wire::OprfReceiverSetup)) -> wire::PartnerMessage {
    let point = BlindingKey::random().unwrap().blind_tokens(&[Token([7; 32])])[0].0.to_vec();
    let mut setup = wire::OprfReceiverSetup {
        version: 2,
        receiver_set_size: size,
        report_back: true,
        max_chunk_bytes: 2 << 20,
        ot_point: point,
    };
    edit(&mut setup);
    oprf(wire::oprf::Body::ReceiverSetup(setup))
}

#[test]
fn malformed_oprf_traffic_gets_precise_codes_and_leaves_no_state() {
    use tonic::Code::{FailedPrecondition, InvalidArgument};
    let f = Fixture::start(false, false);
    let hello = hello_with(1500, |h| {
        h.key_fingerprint = f.fingerprint();
        h.protocols = vec![wire::Protocol::Oprf as i32];
    });
    let call = |later: Vec<wire::PartnerMessage>| {
        let mut messages = vec![hello.clone()];
        messages.extend(later);
        let (received, status) = raw_call_collect(&f, messages);
        let Some(wire::owner_message::Body::Accept(accept)) = &received[0].body else { panic!("{received:?}") };
        assert_eq!(accept.protocol, wire::Protocol::Oprf as i32);
        (status.code(), status.message().to_owned())
    };
    let cases: Vec<(&str, Vec<wire::PartnerMessage>, tonic::Code, &str)> = vec![
        (
            "no body",
            vec![wire::PartnerMessage { body: Some(wire::partner_message::Body::Oprf(wire::Oprf { body: None })) }],
            InvalidArgument,
            "oprf message without a body",
        ),
        (
            "size other than the hello's",
            vec![receiver_setup(1499, |_| {})],
            FailedPrecondition,
            "announces 1499 tokens but 1500",
        ),
        ("version", vec![receiver_setup(1500, |s| s.version = 3)], FailedPrecondition, "version 3 is not supported"),
        (
            "report back",
            vec![receiver_setup(1500, |s| s.report_back = false)],
            FailedPrecondition,
            "reveal mode mismatch",
        ),
        (
            "short point",
            vec![receiver_setup(1500, |s| s.ot_point.truncate(31))],
            InvalidArgument,
            "31 bytes, expected 32",
        ),
        (
            "identity point",
            vec![receiver_setup(1500, |s| s.ot_point = vec![0; 32])],
            InvalidArgument,
            "not a canonical",
        ),
        (
            "chunk limit",
            vec![receiver_setup(1500, |s| s.max_chunk_bytes = 10)],
            InvalidArgument,
            "max_chunk_bytes is 10",
        ),
        (
            "correction first",
            vec![oprf(wire::oprf::Body::Correction(vec![0; 64]))],
            FailedPrecondition,
            "unexpected correction message",
        ),
        ("ecdh elements", vec![valid_elements(4)], FailedPrecondition, "unexpected partner_elements message"),
        (
            "sender's message",
            vec![oprf(wire::oprf::Body::Outputs(vec![0; 10]))],
            FailedPrecondition,
            "unexpected oprf_outputs message",
        ),
        (
            "correction before the seeds",
            vec![receiver_setup(1500, |_| {}), oprf(wire::oprf::Body::Correction(vec![0; 64]))],
            FailedPrecondition,
            "unexpected correction message",
        ),
        (
            "short seeds",
            vec![receiver_setup(1500, |_| {}), oprf(wire::oprf::Body::Seeds(vec![0; 31]))],
            InvalidArgument,
            "seeds: 31 bytes, expected 32",
        ),
        (
            "empty correction",
            vec![
                receiver_setup(1500, |_| {}),
                oprf(wire::oprf::Body::Seeds(vec![0; 32])),
                oprf(wire::oprf::Body::Correction(vec![])),
            ],
            InvalidArgument,
            "a chunk of 0 bytes is not allowed",
        ),
        (
            "check before the correction",
            vec![
                receiver_setup(1500, |_| {}),
                oprf(wire::oprf::Body::Seeds(vec![0; 32])),
                oprf(wire::oprf::Body::Check(vec![0; 5120])),
            ],
            FailedPrecondition,
            "unexpected check message",
        ),
        (
            "finished before the correction",
            vec![
                receiver_setup(1500, |_| {}),
                wire::PartnerMessage { body: Some(wire::partner_message::Body::Finished(wire::Finished {})) },
            ],
            FailedPrecondition,
            "unexpected finished message",
        ),
    ];
    let n = cases.len();
    for (what, later, code, text) in cases {
        let (got, message) = call(later);
        assert_eq!(got, code, "{what}: {message}");
        assert!(message.contains(text), "{what}: {message}");
    }
    // Nothing written, every match audited as failed (under oprf), the server alive.
    assert!(std::fs::read_dir(f.path("results")).map_or(true, |mut d| d.next().is_none()));
    let audit = f.audit_lines();
    assert_eq!(audit.len(), n);
    assert!(audit.iter().all(|a| a["outcome"] != "ok" && a["protocol"] == "oprf"));
    let mut options = f.options(Reveal::Both, "after.csv");
    options.protocol = ProtocolChoice::Exactly(Protocol::Oprf);
    assert_eq!(f.run(options).unwrap().outcome.intersection, Some(500));
}

#[test]
fn health_and_metrics_endpoints_report_the_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let f = Fixture::start(false, false);
    f.run(f.options(Reveal::Count, "m.csv")).unwrap();
    write(f.dir.path(), "wrong-token", "not-the-token");
    let mut refused = f.options(Reveal::Count, "r.csv");
    refused.token_file = Some(f.path("wrong-token"));
    assert!(matches!(f.run(refused).unwrap_err(), ClientError::Unauthenticated(_)));
    let channel = f.raw_channel();
    let status = f.runtime.block_on(async move {
        let mut health = HealthClient::new(channel);
        let request = HealthCheckRequest { service: "idmatch.v1.Matcher".into() };
        health.check(request).await.unwrap().into_inner().status
    });
    assert_eq!(status, ServingStatus::Serving as i32);

    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", f.metrics_port)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.contains("idmatch_matches_started_total 1"), "{body}");
    assert!(body.contains("idmatch_matches_finished_total{protocol=\"ecdh\"} 1"), "{body}");
    assert!(body.contains("idmatch_match_duration_seconds_count 1"), "{body}");
    assert!(body.contains("idmatch_credentials_refused_total{service=\"match\"} 1"), "{body}");
}

#[test]
fn optouts_pushed_over_the_admin_service_apply_to_the_next_match() {
    use idmatch::wire::opt_out_admin_client::OptOutAdminClient;
    let f = Fixture::start(false, true);
    assert_eq!(f.run(f.options(Reveal::Partner, "a.csv")).unwrap().outcome.intersection, Some(500));
    let channel = f.raw_channel();
    let admin = |token: &'static str| {
        let channel = channel.clone();
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let _ = &channel;
            Ok(req)
        }
    };
    let change = |kind: wire::EntryKind, value: &str| wire::OptOutChange {
        kind: kind as i32,
        value: value.into(),
        region: "US".into(),
        source: "account-settings".into(),
    };
    let (added, counted, denied, checked) = f.runtime.block_on(async {
        let mut client = OptOutAdminClient::with_interceptor(channel.clone(), admin(ADMIN_TOKEN));
        let added = client.add(change(wire::EntryKind::Email, " USER1000@example.com")).await.unwrap().into_inner();
        client.add(change(wire::EntryKind::Id, "m1001")).await.unwrap();
        let counted = client.count(wire::CountRequest {}).await.unwrap().into_inner();
        let checked = client
            .check(wire::OptOutQuery {
                kind: wire::EntryKind::Email as i32,
                value: "user1000@example.com".into(),
                region: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut partner = OptOutAdminClient::with_interceptor(channel.clone(), admin(TOKEN));
        let denied = partner.count(wire::CountRequest {}).await.unwrap_err().code();
        (added, counted, denied, checked)
    });
    assert!(added.changed && checked.opted_out);
    assert_eq!((counted.email, counted.id, counted.total), (1, 1, 2));
    assert_eq!(denied, tonic::Code::PermissionDenied);

    let after = f.run(f.options(Reveal::Partner, "b.csv")).unwrap();
    assert_eq!(after.outcome.intersection, Some(498));
    assert_eq!(after.outcome.owner_set_size, 3000 - 4);

    // Bulk import over a stream: one transaction per batch, rejects counted by reason.
    let summary = f.runtime.block_on(async {
        let mut client = OptOutAdminClient::with_interceptor(channel.clone(), admin(ADMIN_TOKEN));
        let entry = |kind: wire::EntryKind, value: &str| wire::ImportEntry {
            kind: kind as i32,
            value: value.into(),
            region: "US".into(),
        };
        let batches = vec![
            wire::ImportBatch {
                source: "import:test".into(),
                entries: vec![
                    entry(wire::EntryKind::Email, "user1002@example.com"),
                    entry(wire::EntryKind::Email, "not-an-email"),
                ],
            },
            wire::ImportBatch {
                source: "import:test".into(),
                entries: vec![
                    entry(wire::EntryKind::Phone, "(415) 555-1003"),
                    entry(wire::EntryKind::Email, "user1000@example.com"),
                ],
            },
        ];
        client.import(tokio_stream::iter(batches)).await.unwrap().into_inner()
    });
    assert_eq!((summary.batches, summary.added, summary.already_present), (2, 2, 1));
    assert_eq!(summary.rejected.get("missing_at"), Some(&1));
    // m1000, m1001, m1002 (email) and m1003 (phone) are out now.
    assert_eq!(f.run(f.options(Reveal::Partner, "c.csv")).unwrap().outcome.intersection, Some(496));

    // Opting back in takes effect for the next match too.
    f.runtime.block_on(async {
        let mut client = OptOutAdminClient::with_interceptor(channel.clone(), admin(ADMIN_TOKEN));
        assert!(
            client.remove(change(wire::EntryKind::Email, "user1000@example.com")).await.unwrap().into_inner().changed
        );
    });
    assert_eq!(f.run(f.options(Reveal::Partner, "d.csv")).unwrap().outcome.intersection, Some(497));
    let audit = std::fs::read_to_string(f.path("audit.jsonl")).unwrap();
    assert!(audit.contains("\"event\":\"optout_add\"") && audit.contains("\"event\":\"optout_remove\""));
    assert!(!audit.contains("user1000") && !audit.contains("m1001"));
}

#[test]
fn a_reload_reloads_the_audience_without_a_restart() {
    let f = Fixture::start(false, false);
    assert_eq!(f.run(f.options(Reveal::Count, "a.csv")).unwrap().outcome.intersection, Some(500));
    let mut members = std::fs::read_to_string(f.path("members.csv")).unwrap();
    for i in 1500..1510 {
        members += &format!("n{i},user{i}@example.com,\n");
    }
    write(f.dir.path(), "members.csv", &members);
    f.reload_with(|text| text).unwrap();
    assert_eq!(f.run(f.options(Reveal::Count, "b.csv")).unwrap().outcome.intersection, Some(510));
}

fn audit_outcomes(f: &Fixture) -> Vec<String> {
    f.audit_lines().iter().map(|a| a["outcome"].as_str().unwrap().to_owned()).collect()
}

/// Waits (at most `limit`) until the audit log has `n` lines.
fn wait_for_audit(f: &Fixture, n: usize, limit: Duration) -> Vec<serde_json::Value> {
    let started = std::time::Instant::now();
    loop {
        let lines = f.audit_lines();
        if lines.len() >= n || started.elapsed() > limit {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a match, sends the hello and all its elements, then never reads: the
/// response stream is kept (so the server's sends pile up in flow control) but never
/// polled. The channel has small HTTP/2 windows, as a slow or hostile peer would.
fn stalled_match(f: &Fixture) -> impl Sized {
    stalled_match_then(f, Duration::ZERO, vec![])
}

/// Like [`stalled_match`], and sends `later` after `delay` (still never reading).
fn stalled_match_then(f: &Fixture, delay: Duration, later: Vec<wire::PartnerMessage>) -> impl Sized {
    let channel = f
        .runtime
        .block_on(f.raw_endpoint().initial_stream_window_size(65_535).initial_connection_window_size(65_535).connect());
    let messages = vec![
        hello_with(100, |h| {
            h.key_fingerprint = f.fingerprint();
            h.reveal = wire::Reveal::Partner as i32;
        }),
        valid_elements(100),
    ];
    f.runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for message in messages {
                let _ = tx.send(message).await;
            }
            tokio::time::sleep(delay).await;
            for message in later {
                let _ = tx.send(message).await;
            }
            tx.closed().await; // keep the request stream open until the call ends
        });
        let mut client = MatcherClient::new(channel.unwrap());
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        client.r#match(request).await.unwrap()
    })
}

#[test]
fn a_partner_that_sends_without_reading_is_refused_not_buffered() {
    // The owner blocks sending to a partner that does not read (as above); the
    // partner then sends chunks past the 100 elements it announced. They are checked
    // while the owner waits, not queued until a deadline: elements after all announced
    // ones arrived are an unexpected message (FAILED_PRECONDITION), at once.
    let f = Fixture::with(Setup {
        limits: "idle_timeout_secs = 60\nmax_message_bytes = 65536",
        extra_members: 30_000,
        ..Setup::default()
    });
    let started = std::time::Instant::now();
    let flood = stalled_match_then(&f, Duration::from_secs(8), (0..50).map(|_| valid_elements(100)).collect());
    let audit = wait_for_audit(&f, 1, Duration::from_secs(50));
    assert_eq!(audit.len(), 1, "still buffering after {:?}", started.elapsed());
    assert_eq!(audit[0]["outcome"], "FailedPrecondition", "{audit:?}");
    assert!(audit[0]["duration_ms"].as_u64().unwrap() < 30_000, "{audit:?}");
    drop(flood);
}

#[test]
fn stalled_readers_are_cut_off_within_the_idle_timeout_and_free_their_slots() {
    // 30,000 extra owner elements (1 MB) are far more than the channels and HTTP/2
    // buffers hold, so the owner blocks sending to a partner that does not read.
    let f = Fixture::with(Setup {
        limits: "max_concurrent_matches = 3\nmax_concurrent_matches_per_partner = 2\nidle_timeout_secs = 5\nmax_message_bytes = 65536",
        extra_members: 30_000,
        ..Setup::default()
    });
    let stalled = [stalled_match(&f), stalled_match(&f)];
    // The per-partner cap refuses a third match of the same partner, naming the limit.
    let err = f.run(f.options(Reveal::Partner, "refused.csv")).unwrap_err();
    assert!(
        matches!(&err, ClientError::ResourceExhausted(m) if m.contains("max_concurrent_matches_per_partner")),
        "{err}"
    );
    // Both stalled matches end once the owner has been blocked for the idle timeout
    // (plus the blinding before it, which takes many seconds on a loaded 2-core
    // machine), audited. Without the deadline they would never end: the wait returns
    // as soon as both are audited, so a generous limit costs nothing when it passes.
    let audit = wait_for_audit(&f, 2, Duration::from_secs(60));
    let deadline: Vec<_> = audit.iter().filter(|a| a["outcome"] == "DeadlineExceeded").collect();
    assert_eq!(deadline.len(), 2, "{audit:?}");
    assert!(deadline.iter().all(|a| a["partner"] == "acme"));
    // Their slots are free again, though the stalled clients still hold their streams.
    let summary = f.run(f.options(Reveal::Partner, "after.csv")).unwrap();
    assert_eq!(summary.matched_records, Some(500));
    drop(stalled);
}

#[test]
fn a_wrong_campaign_key_is_refused_before_any_element_and_nothing_is_written() {
    let f = Fixture::start(false, false);
    Key::generate_to_file(&f.path("other.key")).unwrap();
    let mut options = f.options(Reveal::Both, "wrong-key.csv");
    options.key_file = f.path("other.key");
    let err = f.run(options).unwrap_err();
    assert!(matches!(err, ClientError::KeyMismatch(_)), "{err}");
    assert_eq!(err.exit_code(), 8);
    let message = err.to_string();
    assert!(message.contains("campaign key mismatch"), "{message}");
    assert!(!message.contains(&hex::encode(f.fingerprint())), "never the fingerprint");
    // No results file, no temporary file left behind, the failure audited.
    let files: Vec<_> = std::fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!files.iter().any(|n| n.to_string_lossy().contains("wrong-key")), "{files:?}");
    assert_eq!(std::fs::read_dir(f.path("results")).unwrap().count(), 0);
    assert_eq!(audit_outcomes(&f), ["FailedPrecondition"]);

    // On the wire: the refusal is the owner's first answer, not even an Accept.
    let (received, status) = raw_call_collect(&f, vec![hello_with(200, |h| h.key_fingerprint = vec![7; 32])]);
    assert!(received.is_empty(), "{received:?}");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "campaign key mismatch: the partner's key is not this campaign's key");
    // A client without a fingerprint (older than the field) is refused too.
    let (received, status) = raw_call_collect(&f, vec![hello_with(200, |_| {})]);
    assert!(received.is_empty());
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("no campaign key fingerprint"), "{}", status.message());
    // The right key still matches.
    assert_eq!(f.run(f.options(Reveal::Both, "ok.csv")).unwrap().matched_records, Some(500));
}

#[test]
fn huge_peer_strings_are_truncated_in_statuses_and_the_audit_log() {
    let f = Fixture::start(false, false);
    let huge = "x".repeat(262_144);
    let mut hello = f.hello(200);
    if let Some(wire::partner_message::Body::Hello(h)) = &mut hello.body {
        h.profile = huge.clone();
    }
    let status = raw_call(&f, vec![hello]);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().len() < 300 && status.message().contains("(262144 bytes)"), "{}", status.message());
    let status = raw_call(&f, vec![hello_with(200, |h| h.campaign = huge.clone())]);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().len() < 300);
    let audit = std::fs::read_to_string(f.path("audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 2);
    assert!(audit.lines().all(|l| l.len() < 1000), "{audit}");
    assert!(audit.contains("…(262144 bytes)"));
}

#[test]
fn refused_hellos_do_not_consume_the_daily_budget() {
    let f = Fixture::with(Setup {
        limits: "max_matches_per_partner_per_day = 1\nidle_timeout_secs = 15",
        ..Setup::default()
    });
    Key::generate_to_file(&f.path("other.key")).unwrap();
    let mut wrong_key = f.options(Reveal::Both, "x.csv");
    wrong_key.key_file = f.path("other.key");
    assert!(matches!(f.run(wrong_key).unwrap_err(), ClientError::KeyMismatch(_)));
    let fingerprint = f.fingerprint();
    let refused = [
        hello_with(200, |h| {
            h.key_fingerprint = fingerprint.clone();
            h.profile = "basic-v1".into();
        }),
        hello_with(200, |h| {
            h.key_fingerprint = fingerprint.clone();
            h.version = 2;
        }),
        hello_with(200, |h| {
            h.key_fingerprint = fingerprint.clone();
            h.campaign = "autumn".into();
        }),
        hello_with(5, |h| h.key_fingerprint = fingerprint.clone()),
    ];
    for hello in refused {
        assert_ne!(raw_call(&f, vec![hello]).code(), tonic::Code::Ok);
    }
    assert_eq!(audit_outcomes(&f).len(), 5);
    // The day's one match is still available, and then used up.
    f.run(f.options(Reveal::Both, "ok.csv")).unwrap();
    let err = f.run(f.options(Reveal::Both, "ok.csv")).unwrap_err();
    assert!(matches!(&err, ClientError::ResourceExhausted(m) if m.contains("daily match budget")), "{err}");
}

#[test]
fn a_killed_partner_is_recorded_as_cancelled() {
    let f = Fixture::start(false, false);
    // The partner runs in its own runtime, which is then shut down mid-match: its
    // connection closes as if the process had been killed.
    let client_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let endpoint = f.raw_endpoint();
    let messages = vec![f.hello(200), valid_elements(100)];
    client_runtime.block_on(async move {
        let mut client = MatcherClient::new(endpoint.connect().await.unwrap());
        let stream = tokio_stream::StreamExt::chain(tokio_stream::iter(messages), tokio_stream::pending());
        let mut request = tonic::Request::new(stream);
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let mut responses = client.r#match(request).await.unwrap().into_inner();
        // Accept, then the first re-blinded chunk: the match is under way.
        responses.message().await.unwrap().unwrap();
        responses.message().await.unwrap().unwrap();
        std::mem::forget(responses);
    });
    client_runtime.shutdown_background();
    let audit = wait_for_audit(&f, 1, Duration::from_secs(8));
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["outcome"], "Cancelled");
    assert_eq!(audit[0]["partner_set_size"], 200);
}

#[test]
fn a_reload_revokes_a_partner_and_a_broken_config_keeps_the_old_one() {
    let f = Fixture::start(false, false);
    f.run(f.options(Reveal::Count, "a.csv")).unwrap();
    let token_sha = hex::encode(Sha256::digest(TOKEN.as_bytes()));

    // A broken file, a missing audience, a changed listen address: each refused,
    // and the configuration loaded before keeps serving.
    let err = f.reload_with(|text| text.replace("[limits]", "[limits\n")).unwrap_err();
    assert!(err.to_string().contains("server.toml"), "{err}");
    f.run(f.options(Reveal::Count, "b.csv")).unwrap();
    let err = f.reload_with(|text| text.replace("\"autumn.csv\"", "\"missing.csv\"")).unwrap_err();
    assert!(err.to_string().contains("missing.csv"), "{err}");
    let err = f.reload_with(|text| text.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap_err();
    assert!(err.to_string().contains("listen"), "{err}");
    f.run(f.options(Reveal::Count, "c.csv")).unwrap();

    // Revoking the partner (its token no longer listed) applies to its next match.
    f.reload_with(|text| text.replace(&token_sha, &"0".repeat(64))).unwrap();
    let err = f.run(f.options(Reveal::Count, "d.csv")).unwrap_err();
    assert!(matches!(err, ClientError::Unauthenticated(_)), "{err}");
}

#[test]
fn an_unwritable_output_fails_before_the_match() {
    let f = Fixture::start(false, false);
    let mut options = f.options(Reveal::Both, "x.csv");
    options.output = f.path("no-such-dir").join("matches.csv");
    let err = f.run(options).unwrap_err();
    assert!(err.to_string().contains("no-such-dir/matches.csv"), "{err}");
    // The server never saw a match: no audit line, no results, no budget used.
    assert!(f.audit_lines().is_empty());
    let results = f.path("results");
    assert!(!results.exists() || std::fs::read_dir(&results).unwrap().count() == 0);
    assert!(!f.path("budgets.json").exists());
    // A successful match leaves only the output (no temporary file).
    f.run(f.options(Reveal::Both, "out.csv")).unwrap();
    let tmp = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"));
    assert_eq!(tmp.count(), 0);
}

/// The `idmatch serve` process: text logs redirected to a file carry no colour
/// escape codes; SIGHUP reloads the configuration; SIGTERM stops the server.
#[cfg(unix)]
#[test]
fn serve_logs_without_colours_reloads_on_sighup_and_stops_on_sigterm() {
    let f = Fixture::start(false, false);
    let log = std::fs::File::create(f.path("serve.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(["serve", "--config"])
        .arg(f.path("server.toml"))
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let wait_for = |needle: &str| {
        for _ in 0..200 {
            if std::fs::read_to_string(f.path("serve.log")).unwrap().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no `{needle}` in the log: {}", std::fs::read_to_string(f.path("serve.log")).unwrap());
    };
    let signal = |name: &str| {
        let status = std::process::Command::new("kill").args([name, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
    };
    wait_for("serving");
    signal("-HUP");
    wait_for("configuration reloaded");
    signal("-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(f.path("serve.log")).unwrap();
    assert!(!text.contains('\u{1b}'), "{text}");
}

#[test]
fn a_malformed_optout_file_refuses_every_match_until_fixed_or_explicitly_skipped() {
    let f = Fixture::start(false, false);
    // m1000's email is what partner p0 holds. Line 3 opens a quote that is never
    // closed: read leniently, it would swallow the opt-out on line 4.
    write(f.dir.path(), "optouts.csv", "id,email\nm1001,\nm7,\"oops@example.com\n,User1000@Example.com\n");
    let err = f.run(f.options(Reveal::Both, "a.csv")).unwrap_err();
    assert!(err.to_string().contains("Unavailable") && err.to_string().contains("opt-outs"), "{err}");
    assert!(!f.path("a.csv").exists(), "nothing was written for the partner");
    let results = f.path("results");
    assert!(!results.exists() || std::fs::read_dir(&results).unwrap().count() == 0, "nor for the owner");
    assert_eq!(f.audit_lines().last().unwrap()["outcome"], "Unavailable");

    // A malformed row (too many fields) refuses too, unless the operator opts in.
    write(f.dir.path(), "optouts.csv", "id,email\nm1001,\nm7,x@example.com,extra\n,User1000@Example.com\n");
    assert!(f.run(f.options(Reveal::Both, "b.csv")).is_err());
    f.reload_with(|text| {
        text.replace("optouts = \"optouts.csv\"", "optouts = \"optouts.csv\"\noptouts_skip_bad_rows = true")
    })
    .unwrap();
    let summary = f.run(f.options(Reveal::Both, "c.csv")).unwrap();
    assert_eq!(summary.outcome.intersection, Some(498), "the readable opt-outs still apply");
    let ids = matched_ids(&f.path("c.csv"));
    assert!(!ids.contains(&"p0".to_owned()) && !ids.contains(&"p1".to_owned()), "no opted-out member matched");
}

#[test]
fn a_config_built_in_code_is_validated_like_a_loaded_one() {
    let f = Fixture::start(false, false);
    let mut config = Config::load(&f.path("server.toml")).unwrap();
    config.limits.max_message_bytes = 100;
    let err = f.runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_reload, reload_rx) = mpsc::channel(1);
        server::run(config, listener, std::future::ready(()), reload_rx).await.unwrap_err()
    });
    assert!(err.to_string().contains("max_message_bytes"), "{err}");
}

#[test]
fn one_credential_names_one_partner() {
    let f = Fixture::start(false, false);
    let config = Config::load(&f.path("server.toml")).unwrap();
    assert!(config.validate().is_ok());
    let mut twin = config.partners[0].clone();
    twin.name = "acme-twin".into();
    twin.campaigns.clear();
    let mut same_token = config.clone();
    same_token.partners.push(twin.clone());
    let err = same_token.validate().unwrap_err();
    assert!(err.contains("`acme` and `acme-twin` have the same token_sha256"), "{err}");
    // A different token is fine.
    twin.token_sha256 = Some(hex::encode(Sha256::digest(b"another token")));
    let mut other_token = config.clone();
    other_token.partners.push(twin);
    assert!(other_token.validate().is_ok());
}

// Sharded runs (docs/PROTOCOL.md §13.3).

fn sharding(shards: u32) -> client::Sharding {
    client::Sharding {
        shards: std::num::NonZeroU32::new(shards).unwrap(),
        parallel: std::num::NonZeroUsize::new(2).unwrap(),
    }
}

fn run_records(f: &Fixture) -> Vec<serde_json::Value> {
    f.audit_lines().into_iter().filter(|a| a["kind"] == "run").collect()
}

fn results_files(f: &Fixture) -> Vec<PathBuf> {
    // The server creates the directory as it starts.
    let Ok(dir) = std::fs::read_dir(f.path("results")) else { return Vec::new() };
    let mut files: Vec<_> = dir.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn a_sharded_run_gives_the_outputs_of_one_match_in_every_mode_of_both_engines() {
    let f = Fixture::start(false, false);
    let mut runs = 0;
    for protocol in ENGINES {
        for reveal in Reveal::ALL.into_iter().filter(|r| protocol.offers(*r)) {
            let (whole_out, sharded_out) =
                (format!("whole-{protocol}-{reveal}.csv"), format!("run-{protocol}-{reveal}.csv"));
            let mut options = f.options(reveal, &whole_out);
            options.protocol = ProtocolChoice::Exactly(protocol);
            let before = results_files(&f);
            let whole = f.run(options.clone()).unwrap();
            let whole_results: Vec<_> = results_files(&f).into_iter().filter(|p| !before.contains(p)).collect();
            options.output = f.path(&sharded_out);
            let sharded = f.runtime.block_on(client::run_sharded(options, sharding(3))).unwrap();
            runs += 1;
            let run_results: Vec<_> =
                results_files(&f).into_iter().filter(|p| !before.contains(p) && !whole_results.contains(p)).collect();
            assert_eq!(sharded.protocol, protocol);
            let (w, s) = (&whole.outcome, &sharded.outcome);
            assert_eq!(
                (s.partner_set_size, s.intersection),
                (w.partner_set_size, w.intersection),
                "{protocol} {reveal}"
            );
            // The owner pads its shards to one size: the partner sees 3 of it.
            assert!(s.owner_set_size >= w.owner_set_size && s.owner_set_size.is_multiple_of(3), "{protocol} {reveal}");
            assert_eq!(sharded.matched_records, whole.matched_records, "{protocol} {reveal}");
            if reveal.partner_learns_records() {
                assert_eq!(
                    std::fs::read(f.path(&sharded_out)).unwrap(),
                    std::fs::read(f.path(&whole_out)).unwrap(),
                    "{protocol} {reveal}"
                );
            } else {
                assert!(!f.path(&sharded_out).exists(), "{protocol} {reveal}");
            }
            // The owner's results of the run: one file, the same rows as the
            // unsharded match's.
            assert_eq!(run_results.len(), whole_results.len(), "{protocol} {reveal}");
            for (run, one) in run_results.iter().zip(&whole_results) {
                assert!(run.file_name().unwrap().to_str().unwrap().starts_with("spring-acme-run-"), "{run:?}");
                assert_eq!(std::fs::read(run).unwrap(), std::fs::read(one).unwrap(), "{protocol} {reveal}");
            }
            let record = run_records(&f).pop().unwrap();
            // The owner's shards hold different numbers of tokens (its audit says
            // so), and the partner saw each as large as the largest.
            let streams: Vec<_> = f.audit_lines().into_iter().filter(|a| a["run_id"] == record["run_id"]).collect();
            let real: Vec<u64> =
                streams.iter().filter_map(|a| a.get("shard").and(a["owner_set_size"].as_u64())).collect();
            assert_eq!(real.len(), 3);
            assert!(real.iter().any(|&n| n != real[0]), "{real:?}");
            assert_eq!(s.owner_set_size, 3 * real.iter().max().unwrap(), "{protocol} {reveal}");
            assert_eq!(record["outcome"], "ok");
            assert_eq!(record["shard_count"], 3);
            assert_eq!(record["shards_finished"], 3);
            // The partner padded its shards to one size too; the audit counts the
            // owner's real tokens.
            let run_set_size = record["run_set_size"].as_u64().unwrap();
            assert!(run_set_size >= 1500 && run_set_size.is_multiple_of(3), "{run_set_size}");
            assert_eq!(record["owner_set_size"], 3000);
            assert_eq!(record["protocol"], protocol.to_string());
            assert_eq!(
                record["results_file"].is_string(),
                matches!(reveal, Reveal::Owner | Reveal::Both),
                "{protocol} {reveal}"
            );
        }
    }
    assert_eq!(run_records(&f).len(), runs);
    // Each stream has its line too, naming its run and shard.
    let shards: Vec<_> = f.audit_lines().into_iter().filter(|a| a.get("shard").is_some()).collect();
    assert_eq!(shards.len(), 3 * runs);
    assert!(shards.iter().all(|a| a["outcome"] == "ok" && a["run_id"].as_str().unwrap().len() == 32));
    // Every stream of a run announced the same padded size.
    for run in shards.chunk_by(|a, b| a["run_id"] == b["run_id"]) {
        assert!(run.iter().all(|a| a["partner_set_size"] == run[0]["partner_set_size"]), "{run:?}");
    }
}

#[test]
fn a_run_is_one_match_in_the_budget_and_its_set_size_range() {
    let f = Fixture::with(Setup {
        limits: "max_matches_per_partner_per_day = 1\nmax_identifiers_per_partner_per_day = 10000\nidle_timeout_secs = 15",
        ..Setup::default()
    });
    // Sixteen shards of about 94 tokens: each under min_partner_set (100), which
    // applies to the run's size (1500); the run is charged once, for its size.
    // In count mode each shard is held to the minimum too (the partner learns each
    // shard's count): 64 shards of about 23 tokens are all refused, before anything
    // is charged.
    let count = f.runtime.block_on(client::run_sharded(f.options(Reveal::Count, "count.csv"), sharding(64)));
    assert!(matches!(&count, Err(ClientError::ResourceExhausted(m)) if m.contains("set size")), "{count:?}");
    let summary = f.runtime.block_on(client::run_sharded(f.options(Reveal::Both, "run.csv"), sharding(16))).unwrap();
    assert_eq!(summary.outcome.intersection, Some(500));
    let err = f.run(f.options(Reveal::Both, "again.csv")).unwrap_err();
    assert!(matches!(&err, ClientError::ResourceExhausted(m) if m.contains("daily match budget")), "{err}");
    let runs = run_records(&f);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["outcome"], "ok");
    let budgets: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path("budgets.json")).unwrap()).unwrap();
    assert_eq!(budgets["partners"]["acme"]["matches"], 1);
    // Charged once, for what the partner's oprf tables over the run's padded size
    // can hold: 1.25 times it plus 215 per shard.
    let run_set_size = runs[0]["run_set_size"].as_u64().unwrap();
    assert!(run_set_size >= 1500);
    let charged = budgets["partners"]["acme"]["identifiers"].as_u64().unwrap();
    assert_eq!(charged, idmatch::psi::oprf::receiver_capacity(run_set_size, 16));
    assert!(charged > run_set_size * 5 / 4 + 16 * 214, "{charged}");
}

/// Issue 19's review: under oprf each shard's table has a fixed slack (214 cells
/// even for an empty shard) that a cheating receiver can fill with chosen
/// candidates, so a run of 4,096 nearly empty shards announcing 1,000 tokens could
/// test some 880,000. The owner charges what the tables hold, so such a run is
/// refused by the identifier budget before any shard exchanges anything; the same
/// hello under ecdh (every tested token costs an element sent) is charged its size.
#[test]
fn a_run_of_empty_oprf_shards_pays_for_what_its_tables_can_hold() {
    let f = Fixture::with(Setup {
        limits: "max_identifiers_per_partner_per_day = 100000\nidle_timeout_secs = 15",
        ..Setup::default()
    });
    let hello = |protocol: wire::Protocol, id: u8| {
        let mut m = shard_hello(&f, [id; 16], 0, 4096, 1000, 1000);
        if let Some(wire::partner_message::Body::Hello(h)) = &mut m.body {
            h.protocols = vec![protocol as i32];
        }
        m
    };
    let (received, status) = raw_call_collect(&f, vec![hello(wire::Protocol::Oprf, 1)]);
    assert!(received.is_empty(), "{received:?}");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(kind(&status), "budget-identifiers");
    let budgets: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path("budgets.json")).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null);
    assert!(budgets["partners"]["acme"]["identifiers"].as_u64().unwrap_or(0) == 0, "nothing charged: {budgets}");
    // Under ecdh the run costs its announced size and is accepted.
    let (received, _) = raw_call_collect(&f, vec![hello(wire::Protocol::Ecdh, 2)]);
    assert!(matches!(received.first().and_then(|m| m.body.as_ref()), Some(wire::owner_message::Body::Accept(_))));
    let budgets: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path("budgets.json")).unwrap()).unwrap();
    assert_eq!(budgets["partners"]["acme"]["identifiers"], 1000);
}

/// The padded shard size a `--shard I/N` process printed.
fn announced_shard_size(stdout: &str) -> u64 {
    let rest = stdout.split("every shard announced as ").nth(1).expect("the run line");
    rest.split(' ').next().unwrap().parse().unwrap()
}

/// Opens shard `index` of `shards` of run `run_id` (`size` tokens of `run_size`)
/// and keeps it open, unread, until the returned handle is dropped.
fn open_shard(f: &Fixture, run_id: [u8; 16], index: u32, shards: u32, size: u64, run_size: u64) -> impl Sized {
    let hello = shard_hello(f, run_id, index, shards, size, run_size);
    let channel = f.raw_channel();
    f.runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let _ = tx.send(hello).await;
            tx.closed().await; // keep the request stream open until the call ends
        });
        let mut client = MatcherClient::new(channel);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let mut response = client.r#match(request).await.unwrap().into_inner();
        // The owner accepted: the shard has joined its run.
        assert!(response.message().await.unwrap().is_some());
        response
    })
}

fn shard_hello(
    f: &Fixture,
    run_id: [u8; 16],
    index: u32,
    shards: u32,
    size: u64,
    run_size: u64,
) -> wire::PartnerMessage {
    hello_with(size, |h| {
        h.key_fingerprint = f.fingerprint();
        h.run = Some(wire::ShardRun {
            run_id: run_id.to_vec(),
            shard_index: index,
            shard_count: shards,
            run_set_size: run_size,
        });
    })
}

fn kind(status: &tonic::Status) -> String {
    status.metadata().get("idmatch-error").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[test]
fn shards_that_disagree_with_their_run_are_refused_and_fail_it() {
    let f = Fixture::start(false, false);
    for (n, size, run_size, want) in [
        // Another N than the run's first stream.
        (3, 100, 200, "run-mismatch"),
        // Another run size.
        (2, 100, 300, "run-mismatch"),
        // Sizes that do not add up to the run's once all shards are in.
        (2, 50, 200, "run-sizes"),
        (2, 150, 200, "run-sizes"),
    ] {
        let run_id: [u8; 16] = rand::random();
        let first = open_shard(&f, run_id, 0, 2, 100, 200);
        let status = raw_call(&f, vec![shard_hello(&f, run_id, 1, n, size, run_size)]);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert_eq!(kind(&status), want, "{status:?}");
        // The run failed as a whole: its shards are refused from now on.
        let later = raw_call(&f, vec![shard_hello(&f, run_id, 1, 2, 100, 200)]);
        assert_eq!((later.code(), kind(&later).as_str()), (tonic::Code::Aborted, "run-failed"), "{later:?}");
        drop(first);
    }
    // A shard joined twice, and a shard larger than its run.
    let run_id: [u8; 16] = rand::random();
    let _first = open_shard(&f, run_id, 0, 2, 100, 200);
    let twice = raw_call(&f, vec![shard_hello(&f, run_id, 0, 2, 100, 200)]);
    assert_eq!((twice.code(), kind(&twice).as_str()), (tonic::Code::AlreadyExists, "run-shard-repeated"));
    let too_big = raw_call(&f, vec![shard_hello(&f, rand::random(), 0, 2, 300, 200)]);
    assert_eq!((too_big.code(), kind(&too_big).as_str()), (tonic::Code::FailedPrecondition, "run-sizes"));
    // A run id of another partner is refused and leaves that run alone.
    // (Malformed runs are refused when decoded.)
    let bad_id = raw_call(
        &f,
        vec![hello_with(100, |h| {
            h.key_fingerprint = f.fingerprint();
            h.run = Some(wire::ShardRun { run_id: vec![1; 8], shard_index: 0, shard_count: 2, run_set_size: 200 });
        })],
    );
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    // Each failed run is audited once, and no results file was written.
    let failed: Vec<_> = run_records(&f).into_iter().filter(|r| r["outcome"] != "ok").collect();
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(results_files(&f).is_empty());
}

#[test]
fn a_run_that_loses_a_shard_stream_fails_as_a_whole() {
    let f = Fixture::start(false, false);
    // Shard 0 of a partner's run finishes; shard 1 is lost (the stream ends after
    // the hello).
    let run_id: [u8; 16] = rand::random();
    let lost = raw_call(&f, vec![shard_hello(&f, run_id, 1, 2, 100, 200)]);
    assert_ne!(lost.code(), tonic::Code::Ok);
    let later = raw_call(&f, vec![shard_hello(&f, run_id, 0, 2, 100, 200)]);
    assert_eq!((later.code(), kind(&later).as_str()), (tonic::Code::Aborted, "run-failed"), "{later:?}");
    let runs = run_records(&f);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "Cancelled");
    assert_eq!(runs[0]["run_id"], hex::encode(run_id));
    assert!(results_files(&f).is_empty());
}

#[test]
fn a_client_whose_shard_is_refused_writes_nothing_and_the_run_fails() {
    // One match at a time for the partner: of two shard streams opened at once, the
    // second is refused (RESOURCE_EXHAUSTED), the client ends the first, and the
    // owner fails the run.
    let f = Fixture::with(Setup {
        limits: "max_concurrent_matches = 4\nmax_concurrent_matches_per_partner = 1\nidle_timeout_secs = 15",
        ..Setup::default()
    });
    let err = f.runtime.block_on(client::run_sharded(f.options(Reveal::Both, "none.csv"), sharding(2))).unwrap_err();
    assert!(matches!(err, ClientError::ResourceExhausted(_)), "{err}");
    assert!(!f.path("none.csv").exists());
    // The first shard's stream ends as the client gives up; the run, if it had
    // started, fails: audited once, no results file.
    let lines = wait_for_audit(&f, 1, Duration::from_secs(10));
    let runs: Vec<_> = lines.iter().filter(|a| a["kind"] == "run").collect();
    assert!(runs.len() <= 1 && runs.iter().all(|r| r["outcome"] != "ok"), "{runs:?}");
    assert!(results_files(&f).is_empty());
}

/// `idmatch match --server … --shard i/N --run-id ID` in `args`, as its own process.
fn shard_process(f: &Fixture, input: &Path, output: &str, args: &[&str]) -> std::process::Output {
    shard_process_at(f, f.port, input, output, args)
}

/// [`shard_process`] against the server on `port`.
fn shard_process_at(f: &Fixture, port: u16, input: &Path, output: &str, args: &[&str]) -> std::process::Output {
    let server = format!("https://localhost:{port}");
    std::process::Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(["match", "--server", &server, "--campaign", "spring", "--region", "US", "--reveal", "both"])
        .arg("--ca")
        .arg(f.path("ca.pem"))
        .arg("--token-file")
        .arg(f.path("token"))
        .arg("--key-file")
        .arg(f.path("campaign.key"))
        // With --shard-files the files are the input.
        .args(if args.contains(&"--shard-files") {
            vec![]
        } else {
            vec![std::ffi::OsStr::new("--input"), input.as_os_str()]
        })
        .arg("--output")
        .arg(f.path(output))
        .args(args)
        .output()
        .unwrap()
}

/// `record_id → matched_kinds` of a match file, kinds merged over repeated ids.
fn merged_matches(paths: &[PathBuf]) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut merged = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for path in paths {
        for line in std::fs::read_to_string(path).unwrap().lines().skip(1) {
            let (id, kinds) = line.split_once(',').unwrap();
            merged.entry(id.to_owned()).or_default().extend(kinds.split(';').map(str::to_owned));
        }
    }
    merged
}

#[test]
fn one_shard_per_process_gives_the_unsharded_matches_and_a_shard_run_twice_fails_its_run() {
    let f = Fixture::start(false, false);
    // Emails and phones, so that a record's two identifiers fall into different
    // shards: p1000.. match m0.. by email, p500..p1499 by phone, some by both.
    let mut partner = String::from("id,email,phone\n");
    for i in 0..1500 {
        partner += &format!("p{i},USER{}@Example.com,(415) 555-{:04}\n", i + 1000, (i + 500) % 10000);
    }
    let input = write(f.dir.path(), "partner-two-kinds.csv", &partner);
    let mut options = f.options(Reveal::Both, "whole.csv");
    options.input = input.clone();
    let before = results_files(&f);
    let whole = f.run(options).unwrap();
    let whole_results: Vec<_> = results_files(&f).into_iter().filter(|p| !before.contains(p)).collect();
    let expected = merged_matches(&[f.path("whole.csv")]);
    assert!(expected.values().any(|k| k.len() == 2) && expected.len() > 900, "{}", expected.len());

    // Four processes, one shard each, all at once, under one run id.
    let run_id = hex::encode(rand::random::<[u8; 16]>());
    let shards: Vec<_> = std::thread::scope(|s| {
        let spawned: Vec<_> = (0..4)
            .map(|i| {
                let (f, input, run_id) = (&f, &input, &run_id);
                s.spawn(move || {
                    shard_process(
                        f,
                        input,
                        &format!("shard-{i}.csv"),
                        &["--shard", &format!("{i}/4"), "--run-id", run_id],
                    )
                })
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in shards.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "shard {i}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("run {run_id}: shard {i} of 4, every shard announced as ")), "{stdout}");
    }
    // Each process wrote its shard's matches; merged by record id they are the
    // unsharded match's, and no shard alone holds them all.
    let outputs: Vec<_> = (0..4).map(|i| f.path(&format!("shard-{i}.csv"))).collect();
    assert_eq!(merged_matches(&outputs), expected);
    assert!(outputs.iter().all(|p| merged_matches(std::slice::from_ref(p)).len() < expected.len()));
    let record = run_records(&f).pop().unwrap();
    assert_eq!((record["outcome"].as_str(), record["run_id"].as_str()), (Some("ok"), Some(run_id.as_str())));
    // Each process announced the same padded shard size; the run's size is 4 of it.
    let sizes: Vec<u64> =
        shards.iter().map(|out| announced_shard_size(&String::from_utf8_lossy(&out.stdout))).collect();
    assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
    assert_eq!(record["run_set_size"], 4 * sizes[0]);
    assert!(4 * sizes[0] >= whole.outcome.partner_set_size);
    // The owner's results of the run are those of the unsharded match.
    let run_file = f.path("results").join(format!("spring-acme-run-{run_id}.csv"));
    assert_eq!(std::fs::read(run_file).unwrap(), std::fs::read(&whole_results[0]).unwrap());

    // A shard run again (a retried pod) is refused: the run is over.
    let again = shard_process(&f, &input, "again.csv", &["--shard", "2/4", "--run-id", &run_id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("this run has finished"));
    assert!(!f.path("again.csv").exists());
    // In a run not yet complete, a shard run twice fails the whole run: the other
    // shards are then refused, and nothing is written on either side.
    let run_id = hex::encode(rand::random::<[u8; 16]>());
    let first = shard_process(&f, &input, "r0.csv", &["--shard", "0/2", "--run-id", &run_id]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let twice = shard_process(&f, &input, "r0-again.csv", &["--shard", "0/2", "--run-id", &run_id]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("shard 0 of this run has already joined it"));
    let other = shard_process(&f, &input, "r1.csv", &["--shard", "1/2", "--run-id", &run_id]);
    assert!(String::from_utf8_lossy(&other.stderr).contains("this run has failed"), "{other:?}");
    assert!(!f.path("r1.csv").exists() && !f.path("r0-again.csv").exists());
    let failed = run_records(&f).pop().unwrap();
    assert_eq!((failed["run_id"].as_str(), failed["outcome"] != "ok"), (Some(run_id.as_str()), true));
    assert!(!f.path("results").join(format!("spring-acme-run-{run_id}.csv")).exists());

    // Usage errors (exit code 2), before anything is read or sent.
    for args in [
        &["--shard", "4/4", "--run-id", &run_id][..],
        &["--shard", "0/4"],
        &["--shard", "0/4", "--run-id", "abc"],
        &["--shard", "0/4", "--run-id", &run_id, "--shards", "4"],
        &["--shard", "0", "--run-id", &run_id],
    ] {
        let out = shard_process(&f, &input, "usage.csv", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Two servers started from the same configuration (one state file, results
/// directory and audit log; what two `idmatch serve` processes behind one address
/// share, README "Several server processes"): a run whose shards reach both is one
/// run, charged once, its owner results one file equal to the unsharded match's.
#[test]
fn a_runs_shards_may_reach_different_server_processes() {
    let f = Fixture::start(false, false);
    let config = std::fs::read_to_string(f.path("server.toml")).unwrap();
    let metrics = format!("127.0.0.1:{}", f.metrics_port);
    assert!(config.contains(&metrics));
    let second = write(f.dir.path(), "server-2.toml", &config.replace(&metrics, &format!("127.0.0.1:{}", free_port())));
    let other = common::server::serve(&second);
    let input = f.path("partner.csv");
    let before = results_files(&f);
    f.run(f.options(Reveal::Both, "whole.csv")).unwrap();
    let whole_results: Vec<_> = results_files(&f).into_iter().filter(|p| !before.contains(p)).collect();

    let run_id = hex::encode(rand::random::<[u8; 16]>());
    let shards: Vec<_> = std::thread::scope(|s| {
        let spawned: Vec<_> = (0..4u16)
            .map(|i| {
                let (f, input, run_id) = (&f, &input, &run_id);
                let port = if i % 2 == 0 { f.port } else { other.port };
                s.spawn(move || {
                    let shard = format!("{i}/4");
                    shard_process_at(
                        f,
                        port,
                        input,
                        &format!("shard-{i}.csv"),
                        &["--shard", &shard, "--run-id", run_id],
                    )
                })
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in shards.iter().enumerate() {
        assert!(out.status.success(), "shard {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let outputs: Vec<_> = (0..4).map(|i| f.path(&format!("shard-{i}.csv"))).collect();
    assert_eq!(merged_matches(&outputs), merged_matches(&[f.path("whole.csv")]));
    // One run line, by whichever server finished the last shard; one results file.
    let runs = run_records(&f);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0]["outcome"].as_str(), runs[0]["shards_finished"].as_u64()), (Some("ok"), Some(4)));
    let run_file = f.path("results").join(format!("spring-acme-run-{run_id}.csv"));
    assert_eq!(std::fs::read(run_file).unwrap(), std::fs::read(&whole_results[0]).unwrap());
    // Charged once in the shared state: the unsharded match and the run.
    let budgets: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path("budgets.json")).unwrap()).unwrap();
    assert_eq!(budgets["partners"]["acme"]["matches"], 2);
    // Either server refuses the finished run's shards.
    for port in [f.port, other.port] {
        let again = shard_process_at(&f, port, &input, "again.csv", &["--shard", "1/4", "--run-id", &run_id]);
        assert!(String::from_utf8_lossy(&again.stderr).contains("this run has finished"), "{again:?}");
    }
    // No shard's matches are left in the registry.
    let registry: Vec<_> = std::fs::read_dir(f.path("budgets.json.runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".matches"))
        .collect();
    assert!(registry.is_empty(), "{registry:?}");
}

/// `idmatch match --server … --shard I/N --run-id ID --shard-files DIR`: each
/// process reads its shard from the files `idmatch shard` wrote (the other files
/// for the run's size only), and the run gives the unsharded match's results. A
/// file of another split, or a damaged one, is refused before anything is sent.
#[test]
fn shard_processes_read_the_files_idmatch_shard_wrote() {
    let f = Fixture::start(false, false);
    let mut partner = String::from("id,email,phone\n");
    for i in 0..1500 {
        partner += &format!("p{i},USER{}@Example.com,(415) 555-{:04}\n", i + 1000, (i + 500) % 10000);
    }
    let input = write(f.dir.path(), "partner-two-kinds.csv", &partner);
    let mut options = f.options(Reveal::Both, "whole.csv");
    options.input = input.clone();
    let before = results_files(&f);
    let whole = f.run(options).unwrap();
    let whole_results: Vec<_> = results_files(&f).into_iter().filter(|p| !before.contains(p)).collect();
    let split = |n: &str, dir: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idmatch"))
            .args(["shard", "--region", "US", "--shards", n, "--key-file"])
            .arg(f.path("campaign.key"))
            .arg("--input")
            .arg(&input)
            .arg("--out-dir")
            .arg(f.path(dir))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    split("4", "shards");
    let dir = f.path("shards");
    let files = dir.to_str().unwrap();

    let run_id = hex::encode(rand::random::<[u8; 16]>());
    let shards: Vec<_> = std::thread::scope(|s| {
        let spawned: Vec<_> = (0..4)
            .map(|i| {
                let (f, input, run_id) = (&f, &input, &run_id);
                s.spawn(move || {
                    let shard = format!("{i}/4");
                    let args = ["--shard", &shard, "--run-id", run_id, "--shard-files", files];
                    shard_process(f, input, &format!("shard-{i}.csv"), &args)
                })
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in shards.iter().enumerate() {
        assert!(out.status.success(), "shard {i}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("run {run_id}: shard {i} of 4, every shard announced as ")), "{stdout}");
    }
    // From the files as from the input: one padded size, at least a quarter of the set.
    let sizes: Vec<u64> =
        shards.iter().map(|out| announced_shard_size(&String::from_utf8_lossy(&out.stdout))).collect();
    assert!(sizes.iter().all(|&s| s == sizes[0]) && 4 * sizes[0] >= whole.outcome.partner_set_size, "{sizes:?}");
    let outputs: Vec<_> = (0..4).map(|i| f.path(&format!("shard-{i}.csv"))).collect();
    assert_eq!(merged_matches(&outputs), merged_matches(&[f.path("whole.csv")]));
    let run_file = f.path("results").join(format!("spring-acme-run-{run_id}.csv"));
    assert_eq!(std::fs::read(run_file).unwrap(), std::fs::read(&whole_results[0]).unwrap());

    // Refused before anything is sent (no run is started: the same shard of a new
    // run id still works afterwards): a file of a split into another N, and a file
    // whose entries were damaged.
    split("3", "shards-of-3");
    std::fs::copy(f.path("shards-of-3").join("shard-00001-of-00003.idms"), dir.join("shard-00001-of-00004.idms"))
        .unwrap();
    let run_id = hex::encode(rand::random::<[u8; 16]>());
    let args = ["--shard", "0/4", "--run-id", &run_id, "--shard-files", files];
    let other_n = shard_process(&f, &input, "other-n.csv", &args);
    assert_eq!(other_n.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other_n.stderr).contains("is one of 3 shards, not of 4"), "{other_n:?}");
    split("4", "shards");
    let damaged = dir.join("shard-00002-of-00004.idms");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    let out = shard_process(&f, &input, "damaged.csv", &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard-00002-of-00004.idms"), "{out:?}");
    assert!(!f.path("other-n.csv").exists() && !f.path("damaged.csv").exists());
    assert!(!run_records(&f).iter().any(|r| r["run_id"] == run_id.as_str()));
}

/// A caller that brings its own shard set (Spark's tasks) must announce the run as
/// `N` shards of the largest shard's size: a shard larger than its share is refused
/// before anything is sent, and a right one is padded to its share.
#[test]
fn a_prepared_shard_is_padded_to_its_share_of_the_announced_run() {
    let f = Fixture::start(false, false);
    let set = || {
        let entries = (0..50u8).map(|i| (Token([i; 32]), u32::from(i), idmatch::normalize::Kind::Email)).collect();
        idmatch::psi::PreparedSet::new(entries, 0)
    };
    let options = client::StreamOptions {
        server: format!("https://localhost:{}", f.port),
        campaign: "spring".into(),
        key_file: f.path("campaign.key"),
        reveal: Reveal::Partner,
        protocol: ProtocolChoice::Auto,
        profile: Profile::IdmatchV1,
        ca: Some(f.path("ca.pem")),
        cert: None,
        key: None,
        token_file: Some(f.path("token")),
        idle_timeout: Duration::from_secs(10),
    };
    let shard =
        |index| client::OneShard { run_id: rand::random(), index, shards: std::num::NonZeroU32::new(2).unwrap() };
    for bad in [99, 101, 60] {
        let refused = f.runtime.block_on(client::run_prepared_shard(options.clone(), shard(0), bad, set()));
        assert!(
            matches!(&refused, Err(ClientError::Usage(m)) if m.contains("2 times the largest shard")),
            "{refused:?}"
        );
    }
    assert!(run_records(&f).is_empty() && f.audit_lines().is_empty(), "nothing reached the owner");
    // 2 × 150: shard 0 goes out as 150 tokens (50 and 100 dummies), and its summary
    // counts the 50.
    let done = f.runtime.block_on(client::run_prepared_shard(options, shard(0), 300, set())).unwrap();
    assert_eq!(done.outcome.partner_set_size, 50);
    let stream = f.audit_lines().pop().unwrap();
    assert_eq!(stream["partner_set_size"], 150);
    assert_eq!(done.matches, Some(vec![]), "the dummies matched nothing");
}
