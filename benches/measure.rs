//! Campaign measurement: the exponential ElGamal operations (encryption of a value,
//! homomorphic addition, re-randomization, decryption of a group sum), the
//! decryption by the partner (mask, the owner's share, unmask, the shifted search
//! with noise bounds) and the baby-step table.
//!
//! `cargo bench --bench measure`. Decryption is measured for the largest sum a group
//! of a million matched people can reach in one limb (`10^6 · 2^16`), with the table
//! sized as `idmatch measure` sizes it; the partner's search adds the noise bound of
//! `epsilon = 1` and a clip value of 2^32 on each side.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use curve25519_dalek::ristretto::CompressedRistretto;
use idmatch::measure::elgamal::{Ciphertext, DlogTable, Encryptor, SecretKey, Split};
use idmatch::measure::stats::Noise;
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
        bench.iter(|| enc.encrypt_value(black_box(123_456_789), Split::WIDE, &mut rng))
    });
    group.bench_function("add", |bench| bench.iter(|| black_box(&a).add(black_box(&b))));
    group.bench_function("rerandomize", |bench| bench.iter(|| enc.rerandomize(black_box(&a), &mut rng)));
    group.bench_function("decode ciphertext", |bench| {
        let bytes = a.to_bytes();
        bench.iter(|| Ciphertext::from_bytes(black_box(&bytes), 0))
    });
    let key = sk.public_key();
    group.bench_function("mask (partner)", |bench| bench.iter(|| black_box(&a).mask(&mut rng)));
    let masked = a.mask(&mut rng);
    let point = CompressedRistretto(masked.point_bytes()).decompress().unwrap();
    group.bench_function("share (owner)", |bench| bench.iter(|| sk.share(black_box(&point), -1234)));
    let share = sk.share(&point, -1234);
    group.bench_function("unmask (partner)", |bench| bench.iter(|| masked.unmask(black_box(&share), &key)));
    group.finish();

    let max = 1_000_000 * Split::WIDE.limb_max()[1];
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
    // The partner's search of a high limb: `−B ..= max + B`.
    let bound = Noise { epsilon: 1.0, clip: 1 << 32 }.limb_bounds().expect("epsilon 1 is in range")[1];
    let wide = DlogTable::new(DlogTable::baby_steps_for(max + 2 * bound));
    let m = max - 12_345;
    let masked = enc.encrypt(m, &mut rng).mask(&mut rng);
    let point = CompressedRistretto(masked.point_bytes()).decompress().unwrap();
    let noisy = masked.unmask(&sk.share(&point, -(bound as i64) / 2), &key);
    group.bench_function("partner: sum near the bound with noise, 10^6 people", |bench| {
        bench.iter(|| assert!(wide.solve_shifted(black_box(&noisy), bound, max + bound).is_some()))
    });
    group.finish();
}

criterion_group!(benches, elgamal);
criterion_main!(benches);
