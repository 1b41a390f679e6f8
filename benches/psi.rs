//! The matching engine: per-operation costs of the protocol's curve work (its floor)
//! and whole in-memory matches.
//!
//! `cargo bench --bench psi`. The floor for an n × n match is
//! `n · (2·hash + 4·mul + 4·compress + 2·decompress) / cores`; the README compares
//! `idmatch match` against it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use idmatch::normalize::{Kind, Profile};
use idmatch::prepare::prepared_set;
use idmatch::psi::group::{BlindingKey, hash_to_group};
use idmatch::psi::message::Element;
use idmatch::psi::{Owner, OwnerConfig, Partner, PartnerConfig, Reveal, run_in_memory};
use idmatch::records::RecordSet;
use idmatch::token::Token;

fn tokens(n: usize, offset: usize) -> Vec<Token> {
    (0..n)
        .map(|i| {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&((i + offset) as u64).to_le_bytes());
            Token(t)
        })
        .collect()
}

fn group_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_op");
    g.throughput(Throughput::Elements(1));
    let token = Token([7; 32]);
    let point = hash_to_group(&token);
    let scalar = Scalar::from_bytes_mod_order_wide(&[9; 64]);
    let compressed = point.compress();
    g.bench_function("hash_to_group", |b| b.iter(|| hash_to_group(black_box(&token))));
    g.bench_function("scalar_mul", |b| b.iter(|| black_box(point) * black_box(scalar)));
    g.bench_function("compress", |b| b.iter(|| black_box(point).compress()));
    g.bench_function("decompress", |b| b.iter(|| black_box(compressed).decompress()));
    let points: Vec<RistrettoPoint> = (0..256).map(|i| hash_to_group(&Token([i as u8; 32]))).collect();
    g.throughput(Throughput::Elements(points.len() as u64));
    g.bench_function("double_and_compress_batch_256", |b| {
        b.iter(|| RistrettoPoint::double_and_compress_batch(black_box(&points)))
    });
    g.finish();

    let mut g = c.benchmark_group("blinding_all_cores");
    let key = BlindingKey::random().unwrap();
    let batch = tokens(4096, 0);
    let blinded: Vec<Element> = key.blind_tokens(&batch);
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("blind_tokens_4096", |b| b.iter(|| key.blind_tokens(black_box(&batch))));
    g.bench_function("reblind_4096", |b| b.iter(|| key.reblind(black_box(&blinded)).unwrap()));
    g.finish();
}

fn whole_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("match_in_memory");
    g.sample_size(10);
    let n = 10_000usize;
    let owner = RecordSet::from_tokens(Profile::IdmatchV1, &tokens(n, 0), Kind::Email);
    let partner = RecordSet::from_tokens(Profile::IdmatchV1, &tokens(n, n / 2), Kind::Email);
    let (os, ps) = (prepared_set(&owner, &[]), prepared_set(&partner, &[]));
    g.throughput(Throughput::Elements(2 * n as u64));
    for reveal in [Reveal::Both, Reveal::Partner] {
        g.bench_with_input(BenchmarkId::new(reveal.name(), n), &reveal, |b, &reveal| {
            b.iter(|| {
                let mut o = Owner::new(OwnerConfig::local("bench", Profile::IdmatchV1), &os).unwrap();
                let mut p = Partner::new(PartnerConfig::new("bench", Profile::IdmatchV1, reveal), &ps).unwrap();
                run_in_memory(&mut o, &mut p, |_| {}).unwrap();
                p.outcome().unwrap().intersection
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = group_ops, whole_match
}
criterion_main!(benches);
