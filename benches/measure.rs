//! Campaign measurement: the twisted ElGamal operations (encryption of a value,
//! homomorphic addition, re-randomization, decryption of a group sum), the
//! decryption by the partner (mask, the owner's share, unmask, the shifted search
//! with noise bounds), the baby-step table, and the owner's range proofs (proving
//! and verifying a chunk of 16 people, for a clip of 1000 and of 2^32).
//!
//! `cargo bench --bench measure`. Decryption is measured for the largest sum a group
//! of a million matched people can reach in one limb (`10^6 · 2^16`), with the table
//! sized as `idmatch measure` sizes it; the partner's search adds the noise bound of
//! `epsilon = 1` and a clip value of 2^32 on each side.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use curve25519_dalek::ristretto::CompressedRistretto;
use idmatch::measure::elgamal::{Ciphertext, DlogTable, Encryptor, SecretKey, Split};
use idmatch::measure::proof::{self, PEOPLE_PER_PROOF};
use idmatch::measure::stats::Noise;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn elgamal(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let sk = SecretKey::random(&mut rng);
    let enc = Encryptor::new(sk.public_key());
    let key = sk.public_key();
    let a = enc.encrypt(12_345, &mut rng);
    let b = enc.encrypt(54_321, &mut rng);
    let mut group = c.benchmark_group("elgamal");
    group.bench_function("encrypt value (2 limbs)", |bench| {
        bench.iter(|| enc.encrypt_value(black_box(123_456_789), Split::WIDE, &mut rng))
    });
    group.bench_function("add", |bench| bench.iter(|| black_box(&a).add(black_box(&b))));
    group.bench_function("rerandomize", |bench| bench.iter(|| enc.rerandomize(black_box(&a), &mut rng)));
    group.bench_function("decode ciphertext", |bench| {
        let bytes = a.to_bytes();
        bench.iter(|| Ciphertext::from_bytes(black_box(&bytes), 0))
    });
    group.bench_function("mask (partner)", |bench| bench.iter(|| black_box(&a).mask(&key, &mut rng)));
    let masked = a.mask(&key, &mut rng);
    let point = CompressedRistretto(masked.point_bytes()).decompress().unwrap();
    group.bench_function("share (owner)", |bench| bench.iter(|| sk.share(black_box(&point), -1234)));
    let share = sk.share(&point, -1234);
    group.bench_function("unmask (partner)", |bench| bench.iter(|| masked.unmask(black_box(&share))));
    group.finish();

    let max = 1_000_000 * Split::WIDE.limb_max()[1];
    let steps = DlogTable::baby_steps_for(max);
    let mut group = c.benchmark_group("decrypt");
    group.sample_size(10);
    group.bench_function(format!("table of {steps} baby steps"), |bench| bench.iter(|| DlogTable::new(steps)));
    let table = DlogTable::new(steps);
    for (name, m) in [("sum near the bound", max - 12_345), ("sum in the middle", max / 2)] {
        let ct = enc.encrypt(m as i64, &mut rng);
        group.bench_function(format!("{name}, 10^6 people"), |bench| {
            bench.iter(|| assert_eq!(sk.decrypt(black_box(&ct), 0, max, &table), Ok(i128::from(m))))
        });
    }
    // The partner's search of a high limb: `−B ..= max + B`.
    let bound = Noise { epsilon: 1.0, clip: 1 << 32 }.limb_bounds().expect("epsilon 1 is in range")[1];
    let wide = DlogTable::new(DlogTable::baby_steps_for(max + 2 * bound));
    let m = max - 12_345;
    let masked = enc.encrypt(m as i64, &mut rng).mask(&key, &mut rng);
    let point = CompressedRistretto(masked.point_bytes()).decompress().unwrap();
    let noisy = masked.unmask(&sk.share(&point, -(bound as i64) / 2));
    group.bench_function("partner: sum near the bound with noise, 10^6 people", |bench| {
        bench.iter(|| assert!(wide.solve_shifted(black_box(&noisy), bound, max + bound).is_some()))
    });
    group.finish();
}

/// One chunk of [`PEOPLE_PER_PROOF`] people: the owner proves it, the partner
/// verifies it (per chunk; divide by 16 for a person).
fn proofs(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let sk = SecretKey::random(&mut rng);
    let key = sk.public_key();
    let enc = Encryptor::new(key);
    let mut group = c.benchmark_group("range proofs, chunk of 16 people");
    group.sample_size(10);
    for clip in [1_000u64, 1 << 32] {
        let noise = Noise { epsilon: 1.0, clip };
        let (split, bounds) = (noise.split(), proof::Bounds::for_noise(noise).limb_max());
        let values: Vec<u64> = (0..PEOPLE_PER_PROOF as u64).map(|i| clip - i).collect();
        let encrypted: Vec<_> = values.iter().map(|&v| enc.encrypt_value(v, split, &mut rng)).collect();
        let limbs: Vec<_> = values.iter().map(|&v| split.limbs(v)).collect();
        let randomness: Vec<_> = encrypted.iter().map(|(_, r)| **r).collect();
        let points: Vec<proof::PersonCiphertexts> =
            encrypted.iter().map(|(c, _)| [c[0].points(), c[1].points()]).collect();
        let context = proof::context(&key, 16, 0);
        group.bench_function(format!("prove, clip {clip}"), |bench| {
            bench.iter(|| proof::prove(&context, key.point(), bounds, &points, black_box(&limbs), &randomness).unwrap())
        });
        let bytes = proof::prove(&context, key.point(), bounds, &points, &limbs, &randomness).unwrap();
        group.bench_function(format!("verify, clip {clip}"), |bench| {
            bench.iter(|| proof::verify(&context, key.point(), bounds, black_box(&points), &bytes).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, elgamal, proofs);
criterion_main!(benches);
