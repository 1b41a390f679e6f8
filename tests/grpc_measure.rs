//! Campaign measurement over gRPC (`Measurer.Measure`) end to end on loopback TLS:
//! figures against a plaintext computation (exact for learner `owner`; within the noise of
//! epsilon 2^16 for `partner` and `both`, which the server refuses without noise), opt-outs and
//! suppressions, the daily epsilon budget across a restart, refusals, and malformed
//! measurement traffic.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::measure::{csv_rows, plaintext, synth};
use common::write;
use idmatch::key::Key;
use idmatch::measure::message::{self, Exposures, GroupSum, MASKED_LEN, MaskedSum, Message};
use idmatch::normalize::{Normalizer, Profile, Region};
use idmatch::psi::group::BlindingKey;
use idmatch::records::ColumnSpec;
use idmatch::service::client::ClientError;
use idmatch::service::epsilon_ledger::{Ledger, LedgerError};
use idmatch::service::measure_client::{self, MeasureClientOptions, PartnerReport};
use idmatch::token::{KeyFingerprint, Token};
use idmatch::wire;
use idmatch::wire::measure_partner_message::Body;
use idmatch::wire::measurer_client::MeasurerClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const TOKEN: &str = "acme-measure-token";
/// A partner the owner does not trust to run an honest client.
const WARY_TOKEN: &str = "wary-measure-token";

/// A CA and a server certificate for localhost, written to `dir`.
fn write_pki(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "idmatch measure test ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    write(dir, "ca.pem", &ca.pem());
    write(dir, "server.pem", &cert.pem());
    write(dir, "server.key", &key.serialize_pem());
}

/// Opted-out outcome people (every third, by id) and suppressed exposures (every
/// fifth, by id).
fn write_lists(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let opted: BTreeSet<String> = csv_rows(&dir.join("outcomes.csv")).iter().step_by(3).map(|r| r[0].clone()).collect();
    let suppressed: BTreeSet<String> =
        csv_rows(&dir.join("exposures.csv")).iter().step_by(5).map(|r| r[0].clone()).collect();
    let list = |ids: &BTreeSet<String>| ids.iter().fold(String::from("id\n"), |s, id| s + id + "\n");
    write(dir, "optouts.csv", &list(&opted));
    write(dir, "suppress.csv", &list(&suppressed));
    (opted, suppressed)
}

/// The crafted outcomes of a cheating owner (issue 20, attack 1): every exposed
/// person is an outcome person, worth 0, except 20 targets worth 2^0 … 2^19 (people
/// with an email and a phone that no other exposure row has, not suppressed), so
/// that an exact group sum spells out which targets are in it.
fn write_crafted_outcomes(dir: &Path, suppressed: &BTreeSet<String>) {
    let rows = csv_rows(&dir.join("exposures.csv"));
    let count = |column: usize, value: &str| rows.iter().filter(|r| r[column] == value).count();
    let mut text = String::from("id,email,phone,value\n");
    let mut arms = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        let lone = !row[1].is_empty() && !row[2].is_empty() && count(1, &row[1]) == 1 && count(2, &row[2]) == 1;
        let value = if arms.len() < 20 && lone && !suppressed.contains(&row[0]) {
            arms.push(row[3].clone());
            1u64 << (arms.len() - 1)
        } else {
            0
        };
        text += &format!("c{n},{},{},{value}\n", row[1], row[2]);
    }
    assert_eq!(arms.len(), 20);
    write(dir, "crafted.csv", &text);
}

fn config_text() -> String {
    let token_sha = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let wary_sha = hex::encode(Sha256::digest(WARY_TOKEN.as_bytes()));
    let campaign = |id: &str, measurement: &str| {
        format!(
            "[[campaigns]]\nid = \"{id}\"\nkey_file = \"campaign.key\"\naudience = \"outcomes.csv\"\nregion = \"US\"\n{measurement}\n"
        )
    };
    let measurement = |learner: &str, extra: &str| {
        format!(
            "[campaigns.measurement]\noutcomes = \"outcomes.csv\"\nvalue_column = \"value\"\nlearner = \"{learner}\"\n{extra}"
        )
    };
    let mut text = format!(
        r#"listen = "127.0.0.1:0"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "state.json"
optouts = "optouts.csv"

[tls]
cert = "server.pem"
key = "server.key"

[limits]
idle_timeout_secs = 60

[[partners]]
name = "acme"
token_sha256 = "{token_sha}"
campaigns = ["spring", "summer", "autumn", "noisy", "noisy-twin", "winter", "dusk", "crafted", "crafted-noisy", "repeats"]
reveals = ["count"]
honest_client_trusted = true

[[partners]]
name = "wary"
token_sha256 = "{wary_sha}"
campaigns = ["spring", "summer", "autumn"]
reveals = ["count"]

"#
    );
    // spring and summer accept groups of any size, so that the malformed-traffic
    // test's tiny groups reach the later messages; the others keep the default
    // minimum group size (min_aggregate, 100).
    // A partner learns figures only with noise (the server refuses a learner
    // `partner` or `both` without epsilon): summer and autumn take the largest
    // epsilon, 2^16, so that their counts are exact but for a chance of about
    // e^−21845 and their sums off by a few hundred thousand at most.
    let nearly_exact = "epsilon = 65536.0\nvalue_max = 4294967296\nmax_epsilon_per_partner_per_day = 1e9\nmax_epsilon_per_partner_lifetime = 1e9\n";
    text += &campaign("spring", &measurement("owner", "min_group_size = 1\n"));
    text += &campaign("summer", &measurement("partner", &format!("min_group_size = 1\n{nearly_exact}")));
    text += &campaign("autumn", &measurement("both", nearly_exact));
    // Epsilon 1.0 per measurement; charged its worst case per outcome person,
    // ε/3·(w + 2·min(w, G)) = 2.0 with w = 2 identifiers (email and phone) and G = 2
    // groups. noisy-twin measures the same outcome dataset: one lifetime ledger.
    let noisy = "epsilon = 1.0\nvalue_max = 100000\nmax_epsilon_per_partner_per_day = 4.0\nmax_epsilon_per_partner_lifetime = 5.0\n";
    text += &campaign("noisy", &measurement("both", noisy));
    text += &campaign("noisy-twin", &measurement("both", noisy));
    text += &campaign(
        "dusk",
        &measurement(
            "partner",
            "epsilon = 1.0\nvalue_max = 100000\nmax_epsilon_per_partner_per_day = 2.0\nmax_epsilon_per_partner_lifetime = 100.0\n",
        ),
    );
    text += &campaign("winter", "");
    text += &campaign("hidden", &measurement("owner", ""));
    text += &campaign("crafted", "[campaigns.measurement]\noutcomes = \"crafted.csv\"\nlearner = \"owner\"\n");
    // The same crafted values, all within the clip (2^19 ≤ 2^20): the owner's range
    // proofs verify, and only the partner's noise stands between them and the split.
    let crafted_noisy = "[campaigns.measurement]\noutcomes = \"crafted.csv\"\nvalue_column = \"value\"\nlearner = \"owner\"\n\
        epsilon = 1.0\nvalue_max = 1048576\nmax_epsilon_per_partner_per_day = 10.0\nmax_epsilon_per_partner_lifetime = 10.0\n";
    text += &campaign("crafted-noisy", crafted_noisy);
    // Every outcome row three times (one row per purchase): summed per person.
    text += &campaign(
        "repeats",
        "[campaigns.measurement]\noutcomes = \"repeats.csv\"\nlearner = \"owner\"\nmin_group_size = 1\n",
    );
    text
}

/// Every file of the fixture but `server.toml`: the synthetic campaign, its
/// opt-out and suppression lists (returned), the crafted and the repeated outcomes,
/// the PKI and both partners' tokens.
fn write_inputs(d: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    synth(d, 4000, 21);
    let (opted, suppressed) = write_lists(d);
    write_crafted_outcomes(d, &suppressed);
    let outcomes = std::fs::read_to_string(d.join("outcomes.csv")).unwrap();
    let (header, rows) = outcomes.split_once('\n').unwrap();
    let tripled: String = rows.lines().map(|row| format!("{row}\n{row}\n{row}\n")).collect();
    write(d, "repeats.csv", &format!("{header}\n{tripled}"));
    write_pki(d);
    write(d, "token", TOKEN);
    write(d, "wary-token", WARY_TOKEN);
    (opted, suppressed)
}

/// A running server on loopback TLS over a synthetic campaign, and its files.
struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    server: common::server::Running,
}

impl Fixture {
    fn start() -> (Fixture, BTreeSet<String>, BTreeSet<String>) {
        Fixture::start_with(&config_text())
    }

    /// [`Fixture::start`] with the server's configuration `config`.
    fn start_with(config: &str) -> (Fixture, BTreeSet<String>, BTreeSet<String>) {
        let dir = tempfile::tempdir().unwrap();
        let (opted, suppressed) = write_inputs(dir.path());
        write(dir.path(), "server.toml", config);
        (Fixture::serve(dir), opted, suppressed)
    }

    fn serve(dir: tempfile::TempDir) -> Fixture {
        let server = common::server::serve(&dir.path().join("server.toml"));
        Fixture { dir, port: server.port, server }
    }

    /// Stops the server (its runtime) and starts a new one on the same files.
    fn restart(self) -> Fixture {
        let Fixture { dir, server, .. } = self;
        server.runtime.shutdown_timeout(Duration::from_secs(5));
        Fixture::serve(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self, campaign: &str, out_dir: &str) -> MeasureClientOptions {
        MeasureClientOptions {
            server: format!("https://localhost:{}", self.port),
            campaign: campaign.into(),
            key_file: self.path("campaign.key"),
            input: self.path("exposures.csv"),
            group_column: Some("arm".into()),
            normalizer: Normalizer::new(Profile::IdmatchV1, Some(Region::from_code("US").unwrap())),
            columns: ColumnSpec::default(),
            suppress: Some(self.path("suppress.csv")),
            bad_list_rows: Default::default(),
            out_dir: self.path(out_dir),
            ca: Some(self.path("ca.pem")),
            cert: None,
            key: None,
            token_file: Some(self.path("token")),
            idle_timeout: Duration::from_secs(60),
            // Most tests measure learner owner and both: this partner trusts the owner.
            trust_owner_with_split: true,
            max_epsilon: idmatch::service::measure_client::DEFAULT_MAX_EPSILON,
            progress: None,
            ledger: None,
        }
    }

    fn run(&self, options: MeasureClientOptions) -> Result<PartnerReport, ClientError> {
        self.server.runtime.block_on(measure_client::run(options))
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The measurement files in the results directory.
    fn results(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(self.path("results")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        files.sort();
        files
    }

    /// A raw stream to the measurer, authenticated as the trusted partner: the
    /// sender of its messages (the stream stays open while it lives) and the owner's
    /// replies.
    async fn open(
        &self,
    ) -> (tokio::sync::mpsc::Sender<wire::MeasurePartnerMessage>, tonic::Streaming<wire::MeasureOwnerMessage>) {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read_to_string(self.path("ca.pem")).unwrap()));
        let endpoint =
            Endpoint::from_shared(format!("https://localhost:{}", self.port)).unwrap().tls_config(tls).unwrap();
        let channel = endpoint.connect().await.unwrap();
        let mut client = MeasurerClient::new(channel).max_encoding_message_size(64 << 20);
        let (sender, outgoing) = tokio::sync::mpsc::channel(4);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let replies = client.measure(request);
        (sender, replies.await.unwrap().into_inner())
    }

    fn fingerprint(&self) -> Vec<u8> {
        KeyFingerprint::of(&Key::load(&self.path("campaign.key")).unwrap()).as_bytes().to_vec()
    }

    /// Sends `messages` on a raw stream, then reads to the end: how it ended.
    fn raw(&self, messages: Vec<wire::MeasurePartnerMessage>) -> tonic::Status {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read_to_string(self.path("ca.pem")).unwrap()));
        let endpoint =
            Endpoint::from_shared(format!("https://localhost:{}", self.port)).unwrap().tls_config(tls).unwrap();
        self.server.runtime.block_on(async move {
            let channel = endpoint.connect().await.unwrap();
            let mut client = MeasurerClient::new(channel).max_encoding_message_size(64 << 20);
            let mut request = tonic::Request::new(tokio_stream::iter(messages));
            request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            let mut stream = match client.measure(request).await {
                Ok(r) => r.into_inner(),
                Err(status) => return status,
            };
            loop {
                match stream.message().await {
                    Ok(Some(wire::MeasureOwnerMessage {
                        body: Some(wire::measure_owner_message::Body::Summary(_)),
                    })) => {
                        return tonic::Status::ok("summary");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return tonic::Status::ok("stream ended"),
                    Err(status) => return status,
                }
            }
        })
    }

    fn hello(&self, groups: u32, bundles: u64) -> wire::MeasurePartnerMessage {
        self.hello_for("spring", groups, bundles)
    }

    fn hello_for(&self, campaign: &str, groups: u32, bundles: u64) -> wire::MeasurePartnerMessage {
        hello(wire::MeasureHello {
            version: 5,
            campaign: campaign.into(),
            profile: "idmatch-v1".into(),
            key_fingerprint: self.fingerprint(),
            exposure_bundles: bundles,
            groups,
            owner_may_learn: true,
        })
    }
}

fn hello(hello: wire::MeasureHello) -> wire::MeasurePartnerMessage {
    wire::MeasurePartnerMessage { body: Some(Body::Hello(hello)) }
}

fn frame(data: Vec<u8>, last: bool) -> wire::MeasurePartnerMessage {
    wire::MeasurePartnerMessage { body: Some(Body::Frame(wire::MeasureFrame { data, last })) }
}

/// A well-formed `exposures` message of `groups` groups and `n` one-element bundles.
fn exposures(groups: usize, n: usize) -> Vec<u8> {
    let tokens: Vec<Token> = (0..n as u64)
        .map(|i| {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&i.to_be_bytes());
            Token(t)
        })
        .collect();
    let elements = BlindingKey::random().unwrap().blind_tokens(&tokens);
    message::encode(&Message::Exposures(Exposures {
        labels: (0..groups).map(|g| format!("g{g}")).collect(),
        bundle: 1,
        groups: (0..n).map(|i| (i % groups) as u8).collect(),
        elements,
    }))
    .unwrap()
}

/// The released figures of a report or a results file, per group:
/// (size, matched records, matched people, sum).
/// The partner's released figures as the JSON `measurement.json` holds.
fn released(report: &PartnerReport) -> serde_json::Value {
    serde_json::to_value(report.release.as_ref().expect("the partner learns")).unwrap()
}

fn figures(groups: &serde_json::Value) -> Vec<(String, [u64; 4])> {
    groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let n = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("{k} is not a number: {g}"));
            (
                g["group"].as_str().unwrap().to_owned(),
                [n("group_size"), n("matched_exposure_records"), n("matched_outcome_people"), n("sum")],
            )
        })
        .collect()
}

/// The sums of `noisy` within 40 noise scales of `exact` (epsilon 2^16, clip 2^32:
/// `3·2^32/2^16` when the owner decrypts, `6·2^16/2^16·(1 + 2^16)` when the partner
/// does), every other figure equal.
fn nearly(noisy: &[(String, [u64; 4])], exact: &[(String, [u64; 4])]) {
    assert_eq!(noisy.len(), exact.len());
    for ((label, n), (expected_label, e)) in noisy.iter().zip(exact) {
        assert_eq!((label, &n[..3]), (expected_label, &e[..3]), "{noisy:?} {exact:?}");
        let off = n[3].abs_diff(e[3]);
        assert!(off <= 40 * 6 * (1 + (1 << 16)), "{label}: sum {} vs {}", n[3], e[3]);
    }
}

#[test]
fn each_learner_gets_its_figures_over_tls() {
    let (f, opted, suppressed) = Fixture::start();
    let expected: Vec<(String, [u64; 4])> = plaintext(f.dir.path(), &opted, &suppressed).into_iter().collect();
    assert_eq!(expected.len(), 2);
    assert!(expected.iter().all(|(_, e)| e[2] >= 100), "both groups are released: {expected:?}");

    // owner: the results file, nothing for the partner.
    let report = f.run(f.options("spring", "out-spring")).unwrap();
    assert_eq!(report.learner, "owner");
    assert!(report.release.is_none());
    assert!(!f.path("out-spring/measurement.json").exists());
    let results = f.results();
    assert_eq!(results.len(), 1, "{results:?}");
    let name = results[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("spring-acme-") && name.ends_with(".measurement.json"), "{name}");
    assert!(name.contains(&report.measurement_id));
    let text = std::fs::read_to_string(&results[0]).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(figures(&file["groups"]), expected);
    assert_eq!(file["owner"]["excluded_records"], opted.len() as u64);
    assert!(!text.contains('@') && !text.contains("\"m0"), "no identifiers or ids: {text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&results[0]).unwrap().permissions().mode() & 0o077, 0);
    }
    assert_eq!(report.partner.excluded_records, suppressed.len() as u64);
    assert_eq!(report.owner_people, file["owner"]["bundles_sent"].as_u64().unwrap());

    // partner: measurement.json in its output directory, no results file.
    let report = f.run(f.options("summer", "out-summer")).unwrap();
    assert_eq!(report.learner, "partner");
    nearly(&figures(&released(&report)["groups"]), &expected);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("out-summer/measurement.json")).unwrap()).unwrap();
    assert_eq!(figures(&written["release"]["groups"]), figures(&released(&report)["groups"]));
    assert!(!written["release"]["lift"].is_null());
    assert_eq!(f.results().len(), 1);
    let table = report.release.as_ref().unwrap().to_string();
    assert!(table.contains("control") && table.contains("lift"), "{table}");

    // both.
    let report = f.run(f.options("autumn", "out-autumn")).unwrap();
    nearly(&figures(&released(&report)["groups"]), &expected);
    assert!(f.path("out-autumn/measurement.json").exists());
    assert_eq!(f.results().len(), 2);

    let audit = f.audit();
    assert_eq!(audit.len(), 3);
    let learned: Vec<(bool, bool)> = audit
        .iter()
        .map(|a| {
            assert_eq!(a["kind"], "measurement");
            assert_eq!(a["outcome"], "ok");
            assert_eq!(a["opted_out_records"], opted.len() as u64);
            assert_eq!(a["groups"], 2);
            (a["owner_learned"].as_bool().unwrap(), a["partner_learned"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(learned, [(true, false), (false, true), (true, true)]);
    let log = std::fs::read_to_string(f.path("audit.jsonl")).unwrap();
    assert!(!log.contains('@') && !log.contains("\"sum\""), "{log}");
}

/// One row per purchase over gRPC too (issue 20, item 5): the owner's server sums
/// a person's rows. `repeats.csv` holds every outcome row three times (same id,
/// same identifiers): the same matched people as the plaintext join and three
/// times its sums, exactly, with the opt-outs applied to every row of a person.
#[test]
fn repeated_purchases_are_summed_by_the_server() {
    let (f, opted, suppressed) = Fixture::start();
    let expected: Vec<(String, [u64; 4])> = plaintext(f.dir.path(), &opted, &suppressed).into_iter().collect();
    let report = f.run(f.options("repeats", "out-repeats")).unwrap();
    assert_eq!(report.learner, "owner");
    let results = f.results();
    assert_eq!(results.len(), 1, "{results:?}");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results[0]).unwrap()).unwrap();
    let tripled: Vec<(String, [u64; 4])> =
        expected.iter().map(|(label, e)| (label.clone(), [e[0], e[1], e[2], 3 * e[3]])).collect();
    assert_eq!(figures(&file["groups"]), tripled);
    let owner = &file["owner"];
    let rows = owner["records"].as_u64().unwrap_or_else(|| panic!("{owner}"));
    assert_eq!(owner["records_merged"].as_u64(), Some(rows / 3 * 2 - 2 * opted.len() as u64), "{owner}");
    assert_eq!(owner["excluded_records"].as_u64(), Some(3 * opted.len() as u64), "{owner}");
}

/// Learner `partner` with noise: the partner decrypts noisy sums the owner never
/// sees, noises the counts itself, and the owner writes nothing.
#[test]
fn a_partner_only_learner_gets_noisy_figures_the_owner_never_sees() {
    let (f, opted, suppressed) = Fixture::start();
    let exact: Vec<(String, [u64; 4])> = plaintext(f.dir.path(), &opted, &suppressed).into_iter().collect();
    let report = f.run(f.options("dusk", "out")).unwrap();
    assert_eq!((report.learner.as_str(), report.epsilon), ("partner", Some(1.0)));
    let noisy = figures(&released(&report)["groups"]);
    assert_eq!(noisy.len(), exact.len());
    let mut moved = 0;
    for ((label, n), (exact_label, e)) in noisy.iter().zip(&exact) {
        assert_eq!(label, exact_label);
        assert_eq!(n[0], e[0], "group sizes are not noised");
        // Each limb's noise is cut at 40 scales: 40·Δ/(ε/6) with Δ = 65535 and 1.
        let bound = 40 * 6 * (65_535 + (1 << 16));
        assert!(n[3].abs_diff(e[3]) <= bound, "{label}: {} vs {}", n[3], e[3]);
        moved += usize::from(n[3] != e[3]) + usize::from(n[2] != e[2]);
    }
    assert!(moved >= 2, "noise on the sums and counts: {noisy:?} vs {exact:?}");
    assert!(f.results().is_empty(), "the owner writes nothing");
    let audit = f.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0]["owner_learned"].as_bool(), audit[0]["partner_learned"].as_bool()), (Some(false), Some(true)));
    // ε/3·(w + 2·min(w, G)) with w = 2 identifiers per person, G = 2 groups.
    assert_eq!(audit[0]["epsilon_spent"], 2.0);
    assert_eq!(audit[0]["epsilon_spent_lifetime"], 2.0);
    // The partner's own measurement.json says what it was charged, as the audit does.
    assert_eq!(report.epsilon_spent, 2.0);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("out/measurement.json")).unwrap()).unwrap();
    assert_eq!(file["epsilon_spent"], 2.0);
}

#[test]
fn refusals_and_the_epsilon_budget_across_a_restart() {
    let (f, _, _) = Fixture::start();
    // Not configured for measurement, not allowed, unknown.
    let err = f.run(f.options("winter", "w")).unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(m) if m.starts_with("FailedPrecondition") && m.contains("no measurement")),
        "{err}"
    );
    let err = f.run(f.options("hidden", "h")).unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied(_)), "{err}");
    // A wrong campaign key is refused before anything is exchanged.
    let mut wrong = f.options("spring", "k");
    wrong.key_file = f.path("other.key");
    Key::generate_to_file(&wrong.key_file).unwrap();
    assert!(matches!(f.run(wrong).unwrap_err(), ClientError::KeyMismatch(_)));
    assert!(f.results().is_empty());
    // An output directory that cannot be created fails before anything is sent: the
    // owner does no work, charges no budget and audits nothing (issue 20, item 7).
    let audited = f.audit().len();
    write(f.dir.path(), "not-a-dir", "");
    let err = f.run(f.options("noisy", "not-a-dir/out")).unwrap_err();
    assert!(matches!(err, ClientError::Output(_)), "{err}");
    assert_eq!(f.audit().len(), audited);
    // Refused measurements leave no directory behind.
    assert!(!f.path("w").exists() && !f.path("h").exists() && !f.path("k").exists());

    // Epsilon 1.0 per measurement, charged 2.0 (see config_text); 4.0 per day, 5.0
    // ever on the outcome dataset.
    for _ in 0..2 {
        let report = f.run(f.options("noisy", "n")).unwrap();
        assert_eq!(report.epsilon, Some(1.0));
        assert!(report.release.is_some());
    }
    let refused = f.run(f.options("noisy", "n")).unwrap_err();
    let ClientError::ResourceExhausted(message) = &refused else { panic!("{refused}") };
    assert!(message.contains("daily epsilon budget of 4") && message.contains("noisy"), "{message}");
    // Another campaign on the same outcomes has a daily budget of its own, but
    // not a lifetime of its own: 4.0 + 2.0 > 5.0.
    let refused = f.run(f.options("noisy-twin", "n")).unwrap_err();
    let ClientError::ResourceExhausted(message) = &refused else { panic!("{refused}") };
    assert!(message.contains("lifetime epsilon budget of 5") && message.contains("outcomes.csv"), "{message}");
    // Noise-free campaigns are not limited by it.
    f.run(f.options("spring", "s")).unwrap();
    let state = std::fs::read_to_string(f.path("state.json")).unwrap();
    assert!(state.contains("noisy"), "{state}");

    let f = f.restart();
    let refused = f.run(f.options("noisy", "n")).unwrap_err();
    assert!(matches!(refused, ClientError::ResourceExhausted(_)), "{refused}");
    let audit = f.audit();
    let outcomes: Vec<&str> = audit.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        [
            "FailedPrecondition",
            "PermissionDenied",
            "FailedPrecondition",
            "ok",
            "ok",
            "ResourceExhausted",
            "ResourceExhausted",
            "ok",
            "ResourceExhausted"
        ]
    );
    let spent: Vec<f64> = audit.iter().map(|a| a["epsilon_spent"].as_f64().unwrap()).collect();
    assert_eq!(spent, [0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
    let lifetime: Vec<Option<f64>> = audit.iter().map(|a| a["epsilon_spent_lifetime"].as_f64()).collect();
    assert_eq!(lifetime, [None, None, None, Some(2.0), Some(4.0), None, None, None, None]);
    // The owner's results carry the charge and the ledger.
    let mut ledger: Vec<(f64, f64, String)> = std::fs::read_dir(f.path("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("noisy-acme-"))
        .map(|p| {
            let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let n = |k: &str| r[k].as_f64().unwrap();
            (n("epsilon_charged"), n("epsilon_spent_lifetime"), r["outcome_dataset"].as_str().unwrap().to_owned())
        })
        .collect();
    ledger.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(ledger.len(), 2);
    assert_eq!((ledger[0].0, ledger[0].1, ledger[1].1), (2.0, 2.0, 4.0));
    assert!(ledger[0].2.ends_with("outcomes.csv"), "{}", ledger[0].2);
}

/// Proving is the server's most expensive work (issue 20, item 6): while one
/// measurement's owner proves its values, another that would prove is refused with
/// RESOURCE_EXHAUSTED before its charge; a partner that goes away stops the
/// proving for it, and measurements run again. Proving on one thread
/// (`proving_threads = 1`) for the width of the window; the budgets tell,
/// independently of the audit, what was charged.
#[test]
fn a_second_measurement_is_refused_while_the_owner_proves_and_the_first_stops_when_its_partner_goes() {
    let (f, _, _) = Fixture::start_with(&config_text().replace("[limits]\n", "[limits]\nproving_threads = 1\n"));
    let busy = f.server.runtime.block_on(async {
        // A: learner both with noise, so the owner proves its outcome people after
        // the accept and the partner's exposures, before the people message.
        let (sender, mut replies) = f.open().await;
        sender.send(f.hello_for("noisy", 2, 1000)).await.unwrap();
        let accept = replies.message().await.unwrap().unwrap();
        let Some(wire::measure_owner_message::Body::Accept(accept)) = accept.body else { panic!("{accept:?}") };
        assert!(accept.owner_people > 500, "{accept:?}");
        sender.send(frame(exposures(2, 1000), true)).await.unwrap();
        // B, while A's owner proves.
        let (other, mut refused) = f.open().await;
        other.send(f.hello_for("noisy", 2, 1000)).await.unwrap();
        let busy = refused.message().await.unwrap_err();
        // A's partner goes away: the owner stops proving for it, and C is accepted.
        drop((sender, replies, other, refused));
        let gone = std::time::Instant::now();
        let (c, mut c_replies, accepted) = loop {
            let (c, mut c_replies) = f.open().await;
            c.send(f.hello_for("noisy", 2, 1000)).await.unwrap();
            match c_replies.message().await {
                Ok(Some(_accept)) => break (c, c_replies, gone.elapsed()),
                Err(status) if status.message().contains("max_concurrent_proofs") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => panic!("{other:?}"),
            }
        };
        // C's people come once its proofs are done: the time A's would have taken.
        c.send(frame(exposures(2, 1000), true)).await.unwrap();
        let started = std::time::Instant::now();
        c_replies.message().await.unwrap().unwrap();
        let proving = started.elapsed();
        drop(c);
        (busy, accepted, proving)
    });
    let (busy, accepted, proving) = busy;
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("max_concurrent_proofs = 1"), "{}", busy.message());
    assert!(accepted * 4 < proving, "C accepted {accepted:?} after A's partner went; proving takes {proving:?}");
    // The daily budget is 4.0 and a measurement is charged 2.0: A and C fit, so B
    // charged nothing (C would have been refused otherwise), and the day is spent.
    let refused = f.run(f.options("noisy", "n")).unwrap_err();
    assert!(matches!(&refused, ClientError::ResourceExhausted(m) if m.contains("daily epsilon budget")), "{refused}");
    let audit = f.audit();
    let spent: Vec<(&str, f64)> =
        audit.iter().map(|a| (a["outcome"].as_str().unwrap(), a["epsilon_spent"].as_f64().unwrap())).collect();
    assert!(spent.contains(&("ResourceExhausted", 0.0)) && spent.contains(&("Cancelled", 2.0)), "{spent:?}");
}

/// The owner checks the partner's exposures as soon as they arrive, before it
/// blinds, encrypts or proves its people: on a campaign whose owner proves
/// (learner both, with noise), exposures with a group under `min_group_size` (5
/// real bundles per group, 100 required) or with a repeated element are refused
/// right after the accept, and no `people` frame ever comes (before, the owner
/// proved all its people first and refused only then).
#[test]
fn refused_exposures_cost_the_owner_no_proving() {
    let (f, _, _) = Fixture::start();
    let mut repeated = message::decode(&exposures(2, 1000)).unwrap();
    let Message::Exposures(x) = &mut repeated else { panic!() };
    x.elements[7] = x.elements[3];
    let repeated = message::encode(&repeated).unwrap();
    for (bytes, bundles, code, says) in [
        (exposures(2, 522), 522, tonic::Code::FailedPrecondition, "groups of at least 100"),
        (repeated, 1000, tonic::Code::InvalidArgument, "repeats an element"),
    ] {
        let status = f.server.runtime.block_on(async {
            let (sender, mut replies) = f.open().await;
            sender.send(f.hello_for("noisy", 2, bundles)).await.unwrap();
            let accept = replies.message().await.unwrap().unwrap();
            assert!(matches!(accept.body, Some(wire::measure_owner_message::Body::Accept(_))), "{accept:?}");
            sender.send(frame(bytes, true)).await.unwrap();
            // The next reply is the refusal, not the first frame of `people`.
            let next = replies.message().await;
            drop(sender);
            next.expect_err("the owner sent its people before refusing the exposures")
        });
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(says), "{}", status.message());
    }
}

/// The partner's epsilon ledger against an owner that would average its noise
/// over repeated measurements: each measurement in which the owner learns figures
/// is charged the campaign's epsilon before the partner's people leave, under one
/// exposure dataset across campaigns, and refused once the lifetime budget would
/// be passed; the ledger's entries are checked against the owner's audit.
#[test]
fn the_partners_epsilon_ledger_stops_repeated_measurements_of_its_exposures() {
    // A measurement refused after the accept leaves the owner proving for a
    // moment: room for the next one.
    let (f, _, _) = Fixture::start_with(&config_text().replace("[limits]\n", "[limits]\nmax_concurrent_proofs = 4\n"));
    let ledger = |dataset: &str, lifetime: f64| {
        Some(Ledger { path: f.path("partner-ledger.json"), dataset: dataset.into(), lifetime })
    };
    let with =
        |campaign: &str, out: &str, ledger: Option<Ledger>| MeasureClientOptions { ledger, ..f.options(campaign, out) };
    // A budget smaller than one measurement (learner both, epsilon 1.0): refused
    // after the accept, before the exposures; the owner writes no figures and the
    // ledger charges nothing.
    let err = f.run(with("noisy", "n1", ledger("small", 0.5))).unwrap_err();
    assert!(matches!(&err, ClientError::Ledger(LedgerError::Spent { epsilon, .. }) if *epsilon == Some(1.0)), "{err}");
    assert_eq!(err.exit_code(), 9);
    assert!(f.results().is_empty());
    // Exact figures for the owner (trusted with the split) cannot be accounted for.
    let err = f.run(with("spring", "s", ledger("small", 0.5))).unwrap_err();
    assert!(matches!(err, ClientError::Ledger(LedgerError::Exact)), "{err}");
    assert_eq!(err.exit_code(), 9);
    assert!(f.results().is_empty());
    // One measurement fits a budget of 1.0...
    let report = f.run(with("noisy-twin", "n2", ledger("exposures", 1.0))).unwrap();
    assert_eq!(report.epsilon, Some(1.0));
    // ...and then the same exposures under another campaign are refused before
    // connecting: the owner sees nothing.
    let audited = f.audit().len();
    let err = f.run(with("noisy", "n3", ledger("exposures", 1.0))).unwrap_err();
    assert!(matches!(&err, ClientError::Ledger(LedgerError::Spent { epsilon, .. }) if epsilon.is_none()), "{err}");
    assert_eq!(f.audit().len(), audited);
    // Learner partner releases nothing to the owner: not charged.
    f.run(with("summer", "summer", ledger("small", 0.5))).unwrap();

    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("partner-ledger.json")).unwrap()).unwrap();
    assert_eq!(file["datasets"]["exposures"]["spent"], 1.0);
    assert!(file["datasets"].get("small").is_none(), "{file}");
    let charged: BTreeSet<(String, String)> = file["datasets"]["exposures"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["campaign"].as_str().unwrap().to_owned(), m["measurement_id"].as_str().unwrap().to_owned()))
        .collect();
    let owner_learned: BTreeSet<(String, String)> = f
        .audit()
        .iter()
        .filter(|a| a["outcome"] == "ok" && a["owner_learned"] == true)
        .map(|a| (a["campaign"].as_str().unwrap().to_owned(), a["match_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(charged, owner_learned);
    assert_eq!(charged.len(), 1);
}

#[test]
fn malformed_measurement_traffic_gets_precise_codes_writes_nothing_and_the_server_keeps_serving() {
    use tonic::Code::*;
    let (f, opted, suppressed) = Fixture::start();
    let code = |messages| f.raw(messages).code();
    let sums = vec![4u8, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0];
    let two_sums = message::encode(&Message::Sums(vec![
        GroupSum { records: 10, matched: None },
        GroupSum { records: 10, matched: None },
    ]))
    .unwrap();
    // Learner `partner`'s message: two groups of 10 records, every point's bytes
    // `byte` (0xff: not a canonical encoding).
    // The exposures below: two groups of 261 bundles, 5 real ones and their 256
    // traps as the owner counts them (`trap::real_bundles`).
    let masked = |byte: u8| {
        let line = MaskedSum { records: 10, points: [byte; MASKED_LEN] };
        message::encode(&Message::Masked(vec![line.clone(), line])).unwrap()
    };
    let cases: Vec<(&str, Vec<wire::MeasurePartnerMessage>, tonic::Code)> = vec![
        ("a frame before the hello", vec![frame(vec![1], true)], FailedPrecondition),
        ("a message without a body", vec![wire::MeasurePartnerMessage { body: None }], InvalidArgument),
        ("no groups", vec![f.hello(0, 10)], InvalidArgument),
        ("17 groups", vec![f.hello(17, 10)], InvalidArgument),
        ("too many bundles", vec![f.hello(2, 1 << 40)], ResourceExhausted),
        (
            "another profile",
            vec![hello(wire::MeasureHello {
                version: 5,
                campaign: "spring".into(),
                profile: "basic-v1".into(),
                key_fingerprint: f.fingerprint(),
                exposure_bundles: 10,
                groups: 2,
                owner_may_learn: true,
            })],
            FailedPrecondition,
        ),
        (
            "no key fingerprint",
            vec![hello(wire::MeasureHello {
                version: 5,
                campaign: "spring".into(),
                profile: "idmatch-v1".into(),
                key_fingerprint: Vec::new(),
                exposure_bundles: 10,
                groups: 2,
                owner_may_learn: true,
            })],
            FailedPrecondition,
        ),
        (
            "version 1 (where the owner decrypted for a partner-only learner)",
            vec![hello(wire::MeasureHello {
                version: 1,
                campaign: "summer".into(),
                profile: "idmatch-v1".into(),
                key_fingerprint: f.fingerprint(),
                exposure_bundles: 10,
                groups: 2,
                owner_may_learn: true,
            })],
            FailedPrecondition,
        ),
        (
            "plain sums where only the partner learns",
            vec![f.hello_for("summer", 2, 522), frame(exposures(2, 522), true), frame(two_sums.clone(), true)],
            FailedPrecondition,
        ),
        (
            "masked sums where the owner learns",
            vec![f.hello(2, 522), frame(exposures(2, 522), true), frame(masked(1), true)],
            FailedPrecondition,
        ),
        (
            "a masked sum that is no point",
            vec![f.hello_for("summer", 2, 522), frame(exposures(2, 522), true), frame(masked(0xff), true)],
            InvalidArgument,
        ),
        (
            "groups of 5 exposed people where 100 is the minimum",
            vec![f.hello_for("autumn", 2, 522), frame(exposures(2, 522), true)],
            FailedPrecondition,
        ),
        ("a second hello", vec![f.hello(2, 522), f.hello(2, 522)], FailedPrecondition),
        ("garbage", vec![f.hello(2, 522), frame(vec![0xee, 1, 2, 3], true)], InvalidArgument),
        ("truncated", vec![f.hello(2, 522), frame(exposures(2, 522)[..200].to_vec(), true)], InvalidArgument),
        ("sums before exposures", vec![f.hello(1, 10), frame(sums, true)], FailedPrecondition),
        ("other group count", vec![f.hello(3, 522), frame(exposures(2, 522), true)], FailedPrecondition),
        ("other bundle count", vec![f.hello(2, 522), frame(exposures(2, 523)[..].to_vec(), true)], FailedPrecondition),
        ("an empty frame", vec![f.hello(2, 522), frame(Vec::new(), false)], InvalidArgument),
        ("over the announced size", vec![f.hello(1, 1), frame(vec![2; 4000], false)], InvalidArgument),
        ("over the message size limit", vec![f.hello(2, 522), frame(vec![2; 5 << 20], false)], OutOfRange),
    ];
    let n = cases.len();
    for (what, messages, expected) in cases {
        assert_eq!(code(messages), expected, "{what}");
    }
    // A partner that announces its exposures and goes away.
    let gone = code(vec![f.hello(2, 522)]);
    assert!(matches!(gone, Cancelled | DeadlineExceeded), "{gone:?}");
    std::thread::sleep(Duration::from_millis(300));
    let audit = f.audit();
    assert_eq!(audit.len(), n + 1, "every stream is audited: {audit:?}");
    assert!(audit.iter().all(|a| a["outcome"] != "ok" && !a["owner_learned"].as_bool().unwrap()));
    assert!(f.results().is_empty(), "nothing written");

    // Still serving, with the figures (noisy sums, epsilon 2^16).
    let expected: Vec<(String, [u64; 4])> = plaintext(f.dir.path(), &opted, &suppressed).into_iter().collect();
    let report = f.run(f.options("autumn", "out")).unwrap_or_else(|e| panic!("{e}: {:?}", f.audit().last()));
    nearly(&figures(&released(&report)["groups"]), &expected);
    assert_eq!(f.audit().last().unwrap()["outcome"], "ok");
}

#[test]
fn the_command_line_client_prints_and_writes_what_the_partner_learns() {
    let (f, opted, suppressed) = Fixture::start();
    let run = |campaign: &str, out: &str, extra: &[&str]| {
        let path = |name: &str| f.path(name).display().to_string();
        let mut args: Vec<String> = [
            "measure",
            "--server",
            &format!("https://localhost:{}", f.port),
            "--campaign",
            campaign,
            "--key-file",
            &path("campaign.key"),
            "--partner",
            &path("exposures.csv"),
            "--group-col",
            "arm",
            "--region",
            "US",
            "--suppress",
            &path("suppress.csv"),
            "--ca",
            &path("ca.pem"),
            "--token-file",
            &path("token"),
            "--out-dir",
            &path(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_idmatch")).args(&args).output().unwrap()
    };
    let out = run("summer", "cli-summer", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let expected = plaintext(f.dir.path(), &opted, &suppressed);
    assert!(stdout.contains("lift (test vs control)"), "{stdout}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("cli-summer/measurement.json")).unwrap()).unwrap();
    let written = figures(&written["release"]["groups"]);
    nearly(&written, &expected.into_iter().collect::<Vec<_>>());
    let control = written.iter().find(|(g, _)| g == "control").unwrap().1;
    assert!(stdout.contains("control") && stdout.contains(&control[3].to_string()), "{stdout}");

    // The owner learns: refused unless the partner trusts it (exit code 9), and
    // then nothing is written on the partner's side.
    let out = run("spring", "cli-spring", &[]);
    assert_eq!(out.status.code(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-owner-with-split"));
    let out = run("spring", "cli-spring", &["--trust-owner-with-split"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("to the owner only"));
    assert!(!f.path("cli-spring").exists());
    // Refusals keep the client's exit codes; local-only flags are usage errors.
    let out = run("hidden", "x", &[]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run("spring", "x", &["--owner", "outcomes.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run("spring", "x", &["--epsilon", "1", "--clip-value", "5"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The owner's memory per measurement stream is bounded whatever the hello
/// announces (issue 20, item 6): a hello whose exposures cannot fit
/// `max_measurement_message_bytes` even with one identifier per bundle is refused
/// before the owner blinds, encrypts or charges anything; one whose frames pass the
/// limit is cut off there; within the limit a measurement runs as usual.
#[test]
fn the_owner_puts_together_no_message_over_its_limit() {
    use tonic::Code::ResourceExhausted;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (opted, suppressed) = write_inputs(d);
    let limited = "idle_timeout_secs = 60\nmax_measurement_message_bytes = 1048576";
    write(d, "server.toml", &config_text().replace("idle_timeout_secs = 60", limited));
    let f = Fixture::serve(dir);

    // 40,000 bundles take at least 40,000 · 33 bytes: refused at the hello.
    let status = f.raw(vec![f.hello(2, 40_000)]);
    assert_eq!(status.code(), ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("at least 1320011 bytes") && status.message().contains("limit of 1048576 bytes"),
        "{}",
        status.message()
    );
    let audit = f.audit();
    assert_eq!(audit[0]["outcome"], "ResourceExhausted");
    assert!(audit[0]["owner_people"].is_null(), "nothing blinded or encrypted: {:?}", audit[0]);
    assert!(!f.path("state.json").exists(), "no budget charged");

    // 20,000 bundles of one identifier would fit; frames past the limit are refused.
    let status = f.raw(vec![f.hello(2, 20_000), frame(vec![2; 600_000], false), frame(vec![2; 600_000], false)]);
    assert_eq!(status.code(), ResourceExhausted, "{status:?}");
    assert!(status.message().contains("over this owner's limit of 1048576 bytes"), "{}", status.message());
    assert!(f.results().is_empty());

    // Within the limit, the figures (noisy sums, epsilon 2^16).
    let expected: Vec<(String, [u64; 4])> = plaintext(f.dir.path(), &opted, &suppressed).into_iter().collect();
    let report = f.run(f.options("autumn", "out")).unwrap_or_else(|e| panic!("{e}: {:?}", f.audit().last()));
    nearly(&figures(&released(&report)["groups"]), &expected);
}

/// Issue 20, attack 1, played by the owner: crafted outcome values (2^0 … 2^19 for
/// 20 targets) make the exact group sums spell out which targets the partner put in
/// which group. The partner's client therefore refuses a measurement whose owner
/// learns figures unless the partner says it trusts the owner; and the owner
/// refuses a measurement whose partner learns figures to a partner it does not
/// trust to run an honest client.
#[test]
fn learning_figures_needs_the_other_sides_trust() {
    let (f, _, _) = Fixture::start();
    // Untrusting (the default): the hello says so (owner_may_learn false) and the
    // owner refuses it before charging or encrypting anything (the client would
    // stop at the accept of an owner that did not): nothing about the partner's
    // people sent, exit code 9, no results file, no budget spent.
    let charged = |f: &Fixture| {
        let state = std::fs::read(f.path("state.json")).ok();
        let state: Option<serde_json::Value> = state.and_then(|b| serde_json::from_slice(&b).ok());
        state.and_then(|s| s["partners"]["acme"]["matches"].as_u64()).unwrap_or(0)
    };
    let mut wary = f.options("crafted", "out-wary");
    wary.trust_owner_with_split = false;
    let refused = f.run(wary).unwrap_err();
    assert!(matches!(refused, ClientError::OwnerWouldLearn), "{refused}");
    assert_eq!(refused.exit_code(), 9);
    assert!(refused.to_string().contains("--trust-owner-with-split"), "{refused}");
    assert!(f.results().is_empty() && !f.path("out-wary/measurement.json").exists());
    // The owner audits the stream once it sees it end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while f.audit().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let audit = f.audit();
    assert_eq!(audit.len(), 1);
    assert_ne!(audit[0]["outcome"], "ok");
    assert_eq!(audit[0]["owner_learned"], false, "{}", audit[0]);
    assert_eq!(charged(&f), 0, "a refused hello charges nothing");

    // Trusting: the owner's exact sums decode the split, target by target.
    f.run(f.options("crafted", "out-trusting")).unwrap();
    assert_eq!(charged(&f), 1);
    let results = f.results();
    assert_eq!(results.len(), 1);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results[0]).unwrap()).unwrap();
    let sum = |arm: &str| figures(&file["groups"]).into_iter().find(|(g, _)| g == arm).unwrap().1[3];
    let decoded = |arm: &str| (0..20).filter(|i| sum(arm) >> i & 1 == 1).collect::<Vec<usize>>();
    // The targets' arms, independently: crafted.csv's row n is exposures.csv's row n.
    let exposures = csv_rows(&f.path("exposures.csv"));
    let mut arms = vec![String::new(); 20];
    for (n, row) in csv_rows(&f.path("crafted.csv")).iter().enumerate() {
        let value: u64 = row[3].parse().unwrap();
        if value > 0 {
            arms[value.trailing_zeros() as usize] = exposures[n][3].clone();
        }
    }
    let in_arm = |arm: &str| (0..20).filter(|&i| arms[i] == arm).collect::<Vec<usize>>();
    assert!(!in_arm("test").is_empty() && !in_arm("control").is_empty(), "{arms:?}");
    assert_eq!(decoded("test"), in_arm("test"));
    assert_eq!(decoded("control"), in_arm("control"));

    // With an epsilon the partner needs no trust (default settings): the same
    // crafted values, within the campaign's clip so that the owner's range proofs
    // verify, reach the owner only through the partner's noise, drawn before the
    // owner decrypts (scale about 8·10^6 on a sum, against targets of 2^0 … 2^19).
    // The decoding that was exact above now fails (all 20 right by chance: 2^-20).
    let mut noisy = f.options("crafted-noisy", "out-noisy");
    noisy.trust_owner_with_split = false;
    f.run(noisy).unwrap_or_else(|e| panic!("{e}: {:?}", f.audit().last()));
    let noisy_file = f.results().into_iter().find(|p| p.to_string_lossy().contains("crafted-noisy")).unwrap();
    let noisy_file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(noisy_file).unwrap()).unwrap();
    let noisy_sum = |arm: &str| figures(&noisy_file["groups"]).into_iter().find(|(g, _)| g == arm).unwrap().1[3];
    let noisy_decoded = |arm: &str| (0..20).filter(|i| noisy_sum(arm) >> i & 1 == 1).collect::<Vec<usize>>();
    assert_ne!((noisy_sum("test"), noisy_sum("control")), (sum("test"), sum("control")));
    assert!(
        noisy_decoded("test") != in_arm("test") || noisy_decoded("control") != in_arm("control"),
        "the noisy sums decoded every target"
    );
    assert_eq!(f.audit().last().unwrap()["owner_learned"], true);
    // But the owner chooses epsilon: at 2^16 (campaign `autumn`) the partner's
    // noise is nearly always 0, so an untrusting partner refuses it (its
    // --max-epsilon, 4 by default), before anything about its people is sent.
    let mut too_exact = f.options("autumn", "out-too-exact");
    too_exact.trust_owner_with_split = false;
    let refused = f.run(too_exact).unwrap_err();
    assert!(matches!(refused, ClientError::OwnerWouldLearn), "{refused}");
    assert!(refused.to_string().contains("--max-epsilon"), "{refused}");
    assert!(!f.path("out-too-exact/measurement.json").exists());

    // The owner's side: a partner it does not trust gets no figures of its values.
    let mut untrusted = f.options("summer", "out-untrusted");
    untrusted.token_file = Some(f.path("wary-token"));
    let denied = f.run(untrusted).unwrap_err();
    assert!(matches!(&denied, ClientError::PermissionDenied(m) if m.contains("honest_client_trusted")), "{denied}");
    assert!(!f.path("out-untrusted/measurement.json").exists());
    let last = f.audit().pop().unwrap();
    assert_eq!((last["partner"].as_str(), last["epsilon_spent"].as_f64()), (Some("wary"), Some(0.0)), "{last}");
    // Nor one where only the owner learns: the partner's client computes the
    // matches, and a modified one links its bundles through the reply to read which
    // of its people are in the outcomes (measure::tests, `a_partner_links_…`).
    let mut owner_learns = f.options("spring", "out-wary-spring");
    owner_learns.token_file = Some(f.path("wary-token"));
    let denied = f.run(owner_learns).unwrap_err();
    assert!(matches!(&denied, ClientError::PermissionDenied(m) if m.contains("honest_client_trusted")), "{denied}");
    let last = f.audit().pop().unwrap();
    assert_eq!((last["partner"].as_str(), last["epsilon_spent"].as_f64()), (Some("wary"), Some(0.0)), "{last}");
}
