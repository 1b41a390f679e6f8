//! A match over loopback TLS (server and client in this process, real gRPC over
//! HTTP/2) against the same match over the in-memory transport.
//!
//! `cargo bench --bench grpc`; the 1,000,000 × 1,000,000 end-to-end figure comes from
//! `scripts/e2e-grpc.sh` (two processes), quoted in the README.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use idmatch::key::Key;
use idmatch::local_match::{self, LocalMatchOptions};
use idmatch::normalize::{Normalizer, Profile, Region};
use idmatch::psi::{Protocol, ProtocolChoice, Reveal};
use idmatch::records::ColumnSpec;
use idmatch::service::client::{self, ClientOptions};
use idmatch::service::config::Config;
use idmatch::synth::{SynthOptions, generate};
use sha2::{Digest, Sha256};

const ROWS: usize = 5_000;

fn setup(dir: &Path) {
    generate(dir, &SynthOptions { rows: ROWS, overlap: 0.5, seed: 1, distinct: false }).unwrap();
    Key::generate_to_file(&dir.join("campaign.key")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("token"), "bench").unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nresults_dir = \"results\"\naudit_log = \"audit.jsonl\"\nstate_file = \"b.json\"\n\
         [tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [limits]\nmin_partner_set = 0\nmax_matches_per_partner_per_day = 1000000\nmax_identifiers_per_partner_per_day = 100000000000\n\
         [[partners]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\ncampaigns = [\"c\"]\nreveals = [\"partner\"]\n\
         [[campaigns]]\nid = \"c\"\nkey_file = \"campaign.key\"\naudience = \"members.csv\"\nregion = \"US\"\n",
        hex::encode(Sha256::digest(b"bench"))
    );
    std::fs::write(dir.join("server.toml"), config).unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let config = Config::load(&d.join("server.toml")).unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_reload, reload_rx) = tokio::sync::mpsc::channel(1);
    runtime.spawn(async move {
        idmatch::service::server::run(config, listener, std::future::pending(), reload_rx).await.unwrap()
    });
    let normalizer = Normalizer::new(Profile::IdmatchV1, Some(Region::from_code("US").unwrap()));
    let client_options = ClientOptions {
        server: format!("https://localhost:{port}"),
        campaign: "c".into(),
        key_file: d.join("campaign.key"),
        input: d.join("partner.csv"),
        output: d.join("grpc.csv"),
        reveal: Reveal::Partner,
        protocol: ProtocolChoice::Exactly(Protocol::Ecdh),
        normalizer: normalizer.clone(),
        columns: ColumnSpec::default(),
        suppress: None,
        bad_list_rows: Default::default(),
        ca: Some(d.join("server.pem")),
        cert: None,
        key: None,
        token_file: Some(d.join("token")),
        idle_timeout: Duration::from_secs(60),
        progress: None,
    };
    let local_options = LocalMatchOptions {
        owner: d.join("members.csv"),
        partner: d.join("partner.csv"),
        key_file: d.join("campaign.key"),
        reveal: Reveal::Partner,
        // The same engine as the gRPC client, so the two differ only by transport.
        protocol: ProtocolChoice::Exactly(Protocol::Ecdh),
        normalizer,
        columns: ColumnSpec::default(),
        optouts: None,
        optout_store: None,
        suppress: None,
        bad_list_rows: Default::default(),
        out_dir: d.join("local"),
        write_rejects: false,
        progress: None,
    };
    let mut g = c.benchmark_group("match_5000_rows");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * ROWS as u64));
    // The local match also reads and tokenizes the owner's file, which the server did
    // once at start: compare the two as an upper bound on the transport's cost.
    g.bench_function("in_memory_both_files", |b| b.iter(|| local_match::run(&local_options).unwrap()));
    g.bench_function("grpc_loopback_tls", |b| {
        b.iter(|| runtime.block_on(client::run(client_options.clone())).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
