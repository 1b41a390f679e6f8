//! Normalize + token throughput, per identifier kind, single-threaded.
//!
//! `cargo bench --bench tokens`; figures are quoted in the README.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idmatch::key::Key;
use idmatch::normalize::{Kind, Normalizer, Profile, Region};
use idmatch::token::{Label, Tokenizer};

fn emails(n: usize) -> Vec<String> {
    let domains = ["gmail.com", "Yahoo.com", "outlook.com", "example.org", "GoogleMail.com", "mail.example.net"];
    (0..n).map(|i| format!(" First.Last{i}+tag@{} ", domains[i % domains.len()])).collect()
}

fn phones(n: usize) -> Vec<String> {
    let formats = ["(415) 555-{:04}", "+1 212 555 {:04}", "1-646-555-{:04}", "tel:+1702555{:04}", "001 305 555 {:04}"];
    (0..n)
        .map(|i| {
            formats[i % formats.len()]
                .replace("{:04}", &format!("{:04}", 1000 + i % 9000))
                .replace("555", &format!("{}", 200 + i % 700))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let normalizer = Normalizer::new(Profile::IdmatchV1, Some(Region::from_code("US").unwrap()));
    let tokenizer = Tokenizer::new(&Key::from_bytes([42; 32]));
    let mut group = c.benchmark_group("normalize_and_token");
    for (kind, inputs) in [(Kind::Email, emails(4096)), (Kind::Phone, phones(4096))] {
        let valid = inputs.iter().filter(|s| normalizer.normalize(kind, s, None).is_ok()).count();
        assert_eq!(valid, inputs.len(), "bench inputs must all be valid {kind}s");
        group.throughput(Throughput::Elements(inputs.len() as u64));
        group.bench_with_input(BenchmarkId::new("one_core", kind.label()), &inputs, |b, inputs| {
            let mut buf = String::with_capacity(128);
            b.iter(|| {
                let mut acc = 0u8;
                for s in inputs {
                    if normalizer.normalize_into(kind, s, None, &mut buf).is_ok() {
                        acc ^= tokenizer.token(kind.into(), &buf).0[0];
                    }
                }
                acc
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("token_only");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hmac_sha256", |b| b.iter(|| tokenizer.token(Label::Email, "first.last123@example.com")));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
