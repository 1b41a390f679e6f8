//! Campaign measurement: the exponential ElGamal operations (encryption of a value,
//! homomorphic addition, re-randomization, decryption of a group sum) and the
//! baby-step table.
//!
//! `cargo bench --bench measure`. Decryption is measured for the largest sum a group
//! of a million matched people can reach in one limb (`10^6 · 2^16`), with the table
//! sized as `idmatch measure` sizes it.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use idmatch::measure::elgamal::{Ciphertext, DlogTable, Encryptor, MAX_HIGH_LIMB, SecretKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn elgamal(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let sk = SecretKey::random(&mut rng);
    let enc = Encryptor::new(sk.public_key());
    let a = enc.encrypt(12_345, &mut rng);
    let b = enc.encrypt(54_321, &mut rng);
    let mut group = c.benchmark_group("elgamal");
    group.bench_function("encrypt value (2 limbs)", |bench| {
        bench.iter(|| enc.encrypt_value(black_box(123_456_789), &mut rng))
    });
    group.bench_function("add", |bench| bench.iter(|| black_box(&a).add(black_box(&b))));
    group.bench_function("rerandomize", |bench| bench.iter(|| enc.rerandomize(black_box(&a), &mut rng)));
    group.bench_function("decode ciphertext", |bench| {
        let bytes = a.to_bytes();
        bench.iter(|| Ciphertext::from_bytes(black_box(&bytes), 0))
    });
    group.finish();

    let max = 1_000_000 * MAX_HIGH_LIMB;
    let steps = DlogTable::baby_steps_for(max);
    let mut group = c.benchmark_group("decrypt");
    group.sample_size(10);
    group.bench_function(format!("table of {steps} baby steps"), |bench| bench.iter(|| DlogTable::new(steps)));
    let table = DlogTable::new(steps);
    for (name, m) in [("sum near the bound", max - 12_345), ("sum in the middle", max / 2)] {
        let ct = enc.encrypt(m, &mut rng);
        group.bench_function(format!("{name}, 10^6 people"), |bench| {
            bench.iter(|| assert_eq!(sk.decrypt(black_box(&ct), max, &table), Ok(m)))
        });
    }
    group.finish();
}

criterion_group!(benches, elgamal);
criterion_main!(benches);
