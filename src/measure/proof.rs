//! Range proofs of the owner's values: what lets a partner that does not trust the
//! owner let it decrypt the sums of the partner's groups (issue 20, attack 1).
//!
//! A cheating owner that decrypts group sums would otherwise give its target
//! people crafted values (`2^i` for target `i`) and read which targets the partner
//! put in which group from the bits of a sum. The owner therefore proves, for every
//! person and limb of `people` (§12.5), two things the partner verifies before it
//! sums anything:
//!
//! - **range**: `C2` commits to a value in `0..=L` (`L` the limb's bound for the
//!   campaign's clip, [`Bounds`]). `C2 = m·G + r·H` is a Pedersen commitment under
//!   `(G, H)` ([`super::elgamal::h`]), binding for the owner, so one aggregated
//!   Bulletproofs range proof (Bünz et al., IEEE S&P 2018; the `bulletproofs` crate,
//!   with `PedersenGens { B: G, B_blinding: H }`) covers a chunk of
//!   [`PEOPLE_PER_PROOF`] people. The crate proves ranges of `b ∈ {8, 16, 32, 64}`
//!   bits: `b` is the smallest with `max(L) < 2^b`, and unless `L + 1 = 2^b` the
//!   limb is proven twice, as `m` (commitment `C2`) and `m + 2^b − 1 − L`
//!   (commitment `C2 + (2^b − 1 − L)·G`, the same blinding), which together give
//!   `0 ≤ m ≤ L`. Values go person by person, low limb then high limb, each limb's
//!   `m` before its shifted value; the count is padded to a power of two with
//!   value 0 and blinding 0 (commitment the identity, which the verifier puts in
//!   itself). The commitments are not sent: the verifier derives them from `C2`.
//! - **consistency**: `C1 = r·Y` for the `r` of `C2`, by a Chaum–Pedersen-style
//!   proof of knowledge of `(m, r)` with `C1 = r·Y` and `C2 = m·G + r·H`, one per
//!   person and limb. Without it the owner could send `C1 + δ·G`, whose decryption
//!   moves by `x⁻¹·δ`, a value no range proof sees.
//!
//! Both are bound to the chunk's context ([`context`]: the key, the message's
//! people and the chunk's position) and to every ciphertext of the chunk, so a
//! proof cannot be moved or replayed. Verification of the consistency proofs is
//! batched in one multi-scalar multiplication with random weights.
//!
//! Security: sound against an owner that knows `x` (it does not know `log_G H`);
//! zero-knowledge for the values (the partner learns only that they are in range).
//! The crate's prover returns a proof for a value out of range too; only the
//! verifier rejects it, so the partner always verifies. The bytes: the range
//! proof (`32·(9 + 2·log2(b·v))` bytes for `v` padded values, the crate's
//! encoding) then, person by person, low limb then high limb,
//! `A1 ‖ A2 ‖ z_m ‖ z_r` (128 bytes; docs/PROTOCOL.md §12.5.2).

use std::sync::OnceLock;

use bulletproofs::{BulletproofGens, PedersenGens, RangeProof};
use curve25519_dalek::constants::{RISTRETTO_BASEPOINT_POINT, RISTRETTO_BASEPOINT_TABLE};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use merlin::Transcript;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use super::elgamal::{LIMBS, PublicKey, h, h_table, random_scalar};
use super::stats::Noise;
use crate::records::MAX_VALUE;

/// People per proof: one aggregated range proof covers up to 64 values, and a
/// person needs at most four (two limbs, each possibly proven twice).
pub const PEOPLE_PER_PROOF: usize = 16;
/// Bytes of one consistency proof: `A1 ‖ A2 ‖ z_m ‖ z_r`.
const CONSISTENCY_LEN: usize = 128;
/// The most values one range proof aggregates.
const MAX_VALUES: usize = PEOPLE_PER_PROOF * LIMBS * 2;
/// The longest proof of a chunk, for any clip up to 2^32 (32-bit ranges, 64
/// values: 11 inner-product rounds): what a receiver reserves per chunk.
pub const MAX_PROOF_LEN: usize = 32 * (9 + 2 * 11) + PEOPLE_PER_PROOF * LIMBS * CONSISTENCY_LEN;

/// One person's ciphertexts as points: `(C1, C2)` per limb.
pub type PersonCiphertexts = [(RistrettoPoint, RistrettoPoint); LIMBS];

/// Why a proof was refused (or could not be made). Never carries a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof's length is not the one its people need.
    #[error("the proof is {got} bytes where its people need {expected}")]
    Length {
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A chunk of no people or more than [`PEOPLE_PER_PROOF`].
    #[error("a proof covers 1 to 16 people, not {0}")]
    People(usize),
    /// A limb bound whose bit size the crate cannot prove (over 2^63).
    #[error("a limb bound of {0} cannot be proven")]
    Bound(u64),
    /// The aggregated range proof does not verify: a value out of its range, or
    /// damaged bytes.
    #[error("the range proof does not verify")]
    Range,
    /// A consistency proof does not verify: `C1` is not `r·Y` for the `r` of `C2`,
    /// or damaged bytes.
    #[error("person {person} of the chunk, limb {limb}: C1 is not formed with the randomness of C2")]
    Consistency {
        /// The person's position in the chunk.
        person: usize,
        /// The limb (0 low, 1 high).
        limb: usize,
    },
    /// The crate's prover refused (never for honest values within their bounds).
    #[error("the range prover failed")]
    Prover,
}

/// The range proof's generators: `G` and `H` as the crate's types, and the
/// crate's vector generators for 64 bits by 64 values.
fn generators() -> &'static (PedersenGens, BulletproofGens) {
    static GENS: OnceLock<(PedersenGens, BulletproofGens)> = OnceLock::new();
    GENS.get_or_init(|| {
        let point = |p: &RistrettoPoint| {
            // The same 32-byte encoding in both versions of the curve crate.
            dalek4::ristretto::CompressedRistretto(p.compress().to_bytes()).decompress()
        };
        let pedersen = match (point(&RISTRETTO_BASEPOINT_POINT), point(h())) {
            (Some(b), Some(b_blinding)) => PedersenGens { B: b, B_blinding: b_blinding },
            // Unreachable: both are valid points of one group.
            _ => PedersenGens::default(),
        };
        (pedersen, BulletproofGens::new(64, MAX_VALUES))
    })
}

/// The bit size of the range proofs for `limb_max`: the smallest of 8, 16, 32 and
/// 64 above every bound.
fn bits(limb_max: [u64; LIMBS]) -> Result<usize, ProofError> {
    let widest = limb_max.iter().copied().max().unwrap_or(0);
    match [8, 16, 32, 63].into_iter().find(|&b| widest < 1 << b) {
        Some(63) => Ok(64),
        Some(b) => Ok(b),
        None => Err(ProofError::Bound(widest)),
    }
}

/// Per limb, the shift `2^b − 1 − L` of the second value, or `None` when the limb
/// needs one value (`L + 1 = 2^b`).
fn shifts(limb_max: [u64; LIMBS], b: usize) -> [Option<u64>; LIMBS] {
    let top = if b == 64 { u64::MAX } else { (1u64 << b) - 1 };
    limb_max.map(|l| Some(top - l).filter(|&s| s > 0))
}

/// Values in a chunk's range proof, padded: `(padded, real)`.
fn value_counts(people: usize, limb_max: [u64; LIMBS], b: usize) -> (usize, usize) {
    let per_person: usize = shifts(limb_max, b).iter().map(|s| 1 + usize::from(s.is_some())).sum();
    let real = people * per_person;
    (real.next_power_of_two(), real)
}

/// The exact length of the proof of `people` people for `limb_max`.
pub fn proof_len(people: usize, limb_max: [u64; LIMBS]) -> Result<usize, ProofError> {
    if people == 0 || people > PEOPLE_PER_PROOF {
        return Err(ProofError::People(people));
    }
    let b = bits(limb_max)?;
    let (padded, _) = value_counts(people, limb_max, b);
    let rounds = (b * padded).trailing_zeros() as usize;
    Ok(32 * (9 + 2 * rounds) + people * LIMBS * CONSISTENCY_LEN)
}

/// The range proof's transcript: the context, `Y`, the bounds and every
/// ciphertext of the chunk (the crate then adds its own separators and the
/// commitments).
fn transcript(
    context: &[u8; 32],
    y: &RistrettoPoint,
    limb_max: [u64; LIMBS],
    ciphertexts: &[PersonCiphertexts],
) -> Transcript {
    let mut t = Transcript::new(b"idmatch measure v4 range");
    t.append_message(b"context", context);
    t.append_message(b"Y", y.compress().as_bytes());
    for l in limb_max {
        t.append_message(b"L", &l.to_be_bytes());
    }
    for (c1, c2) in ciphertexts.iter().flatten() {
        t.append_message(b"C1", c1.compress().as_bytes());
        t.append_message(b"C2", c2.compress().as_bytes());
    }
    t
}

/// The consistency proof's challenge `e`: `SHA-512("idmatch measure v4
/// consistency" ‖ context ‖ Y ‖ L_low ‖ L_high ‖ person (u32) ‖ limb (u8) ‖ C1 ‖
/// C2 ‖ A1 ‖ A2)` reduced mod `ℓ` (integers big-endian).
#[allow(clippy::too_many_arguments)]
fn challenge(
    context: &[u8; 32],
    y: &RistrettoPoint,
    limb_max: [u64; LIMBS],
    person: usize,
    limb: usize,
    (c1, c2): (RistrettoPoint, RistrettoPoint),
    a1: &RistrettoPoint,
    a2: &RistrettoPoint,
) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(b"idmatch measure v4 consistency");
    hash.update(context);
    hash.update(y.compress().as_bytes());
    for l in limb_max {
        hash.update(l.to_be_bytes());
    }
    hash.update((person as u32).to_be_bytes());
    hash.update([limb as u8]);
    for p in [c1, c2, *a1, *a2] {
        hash.update(p.compress().as_bytes());
    }
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// Proves a chunk: `ciphertexts[i]` encrypts person `i`'s limbs `limbs[i]` with
/// the randomness `randomness[i]` under `y` (twisted ElGamal, §12.5: `C1 = r·Y`,
/// `C2 = m·G + r·H`; the proof of a ciphertext not so formed does not verify).
pub fn prove(
    context: &[u8; 32],
    y: &RistrettoPoint,
    limb_max: [u64; LIMBS],
    ciphertexts: &[PersonCiphertexts],
    limbs: &[[u64; LIMBS]],
    randomness: &[[Scalar; LIMBS]],
) -> Result<Vec<u8>, ProofError> {
    let people = limbs.len();
    let expected = proof_len(people, limb_max)?;
    if randomness.len() != people || ciphertexts.len() != people {
        return Err(ProofError::People(randomness.len().max(ciphertexts.len())));
    }
    let b = bits(limb_max)?;
    let shift = shifts(limb_max, b);
    let (padded, _) = value_counts(people, limb_max, b);
    let mut values = Zeroizing::new(Vec::with_capacity(padded));
    let mut blindings = Zeroizing::new(Vec::with_capacity(padded));
    for (m, r) in limbs.iter().zip(randomness) {
        for l in 0..LIMBS {
            // The randomness crosses to dalek 4 through its bytes: both copies are
            // wiped when dropped.
            let bytes = Zeroizing::new(r[l].to_bytes());
            let blinding = Zeroizing::new(dalek4::scalar::Scalar::from_bytes_mod_order(*bytes));
            values.push(m[l]);
            blindings.push(*blinding);
            if let Some(s) = shift[l] {
                values.push(m[l].checked_add(s).ok_or(ProofError::Prover)?);
                blindings.push(*blinding);
            }
        }
    }
    values.resize(padded, 0);
    blindings.resize(padded, dalek4::scalar::Scalar::ZERO);
    let (pedersen, vectors) = generators();
    let mut t = transcript(context, y, limb_max, ciphertexts);
    let (range, _) = RangeProof::prove_multiple(vectors, pedersen, &mut t, &values, &blindings, b)
        .map_err(|_| ProofError::Prover)?;
    let mut out = range.to_bytes();
    for (person, ((m, r), c)) in limbs.iter().zip(randomness).zip(ciphertexts).enumerate() {
        for l in 0..LIMBS {
            let (k_m, k_r) = (Zeroizing::new(random_scalar(&mut OsRng)), Zeroizing::new(random_scalar(&mut OsRng)));
            let a1 = y * *k_r;
            let a2 = &*k_m * RISTRETTO_BASEPOINT_TABLE + &*k_r * h_table();
            let e = challenge(context, y, limb_max, person, l, c[l], &a1, &a2);
            let z_m = *k_m + e * Scalar::from(m[l]);
            let z_r = *k_r + e * r[l];
            for part in [a1.compress().to_bytes(), a2.compress().to_bytes(), z_m.to_bytes(), z_r.to_bytes()] {
                out.extend(part);
            }
        }
    }
    if out.len() != expected {
        return Err(ProofError::Length { expected, got: out.len() });
    }
    Ok(out)
}

/// One parsed consistency proof.
struct Consistency {
    a1: RistrettoPoint,
    a2: RistrettoPoint,
    z_m: Scalar,
    z_r: Scalar,
}

fn parse_consistency(bytes: &[u8], person: usize, limb: usize) -> Result<Consistency, ProofError> {
    let refused = ProofError::Consistency { person, limb };
    let part = |i: usize| -> Result<[u8; 32], ProofError> {
        bytes.get(i * 32..(i + 1) * 32).and_then(|b| b.try_into().ok()).ok_or(refused.clone())
    };
    let point = |b: [u8; 32]| CompressedRistretto(b).decompress().ok_or(refused.clone());
    let scalar = |b: [u8; 32]| Option::<Scalar>::from(Scalar::from_canonical_bytes(b)).ok_or(refused.clone());
    Ok(Consistency { a1: point(part(0)?)?, a2: point(part(1)?)?, z_m: scalar(part(2)?)?, z_r: scalar(part(3)?)? })
}

/// Verifies a chunk of 1 to [`PEOPLE_PER_PROOF`] people's ciphertexts (`(C1, C2)`
/// per limb, decoded) against the peer's proof bytes. Never panics on any bytes.
pub fn verify(
    context: &[u8; 32],
    y: &RistrettoPoint,
    limb_max: [u64; LIMBS],
    ciphertexts: &[PersonCiphertexts],
    proof: &[u8],
) -> Result<(), ProofError> {
    let people = ciphertexts.len();
    let expected = proof_len(people, limb_max)?;
    if proof.len() != expected {
        return Err(ProofError::Length { expected, got: proof.len() });
    }
    let range_len = expected - people * LIMBS * CONSISTENCY_LEN;
    let (range_bytes, consistency_bytes) = proof.split_at(range_len);
    // Consistency first (cheap, batched): Σ w1·(z_r·Y − A1 − e·C1) + w2·(z_m·G +
    // z_r·H − A2 − e·C2) = O, with fresh random weights.
    let mut proofs = Vec::with_capacity(people * LIMBS);
    for (i, bytes) in consistency_bytes.chunks_exact(CONSISTENCY_LEN).enumerate() {
        proofs.push((i / LIMBS, i % LIMBS, parse_consistency(bytes, i / LIMBS, i % LIMBS)?));
    }
    let (mut on_y, mut on_g, mut on_h) = (Scalar::ZERO, Scalar::ZERO, Scalar::ZERO);
    let mut scalars = Vec::with_capacity(3 + 4 * proofs.len());
    let mut points = Vec::with_capacity(3 + 4 * proofs.len());
    for (person, limb, p) in &proofs {
        let c = ciphertexts[*person][*limb];
        let e = challenge(context, y, limb_max, *person, *limb, c, &p.a1, &p.a2);
        let (w1, w2) = (random_scalar(&mut OsRng), random_scalar(&mut OsRng));
        on_y += w1 * p.z_r;
        on_g += w2 * p.z_m;
        on_h += w2 * p.z_r;
        scalars.extend([-w1, -(w1 * e), -w2, -(w2 * e)]);
        points.extend([p.a1, c.0, p.a2, c.1]);
    }
    scalars.extend([on_y, on_g, on_h]);
    points.extend([*y, RISTRETTO_BASEPOINT_POINT, *h()]);
    if !RistrettoPoint::vartime_multiscalar_mul(&scalars, &points).is_identity() {
        // Name the first proof that fails on its own.
        let failing = proofs.iter().find(|(person, limb, p)| {
            let c = ciphertexts[*person][*limb];
            let e = challenge(context, y, limb_max, *person, *limb, c, &p.a1, &p.a2);
            y * p.z_r != p.a1 + c.0 * e || &p.z_m * RISTRETTO_BASEPOINT_TABLE + &p.z_r * h_table() != p.a2 + c.1 * e
        });
        let (person, limb) = failing.map_or((0, 0), |(person, limb, _)| (*person, *limb));
        return Err(ProofError::Consistency { person, limb });
    }
    // Then the range proof, over the commitments derived from C2.
    let b = bits(limb_max)?;
    let shift = shifts(limb_max, b);
    let (padded, _) = value_counts(people, limb_max, b);
    let mut commitments = Vec::with_capacity(padded);
    for limbs in ciphertexts {
        for (l, (_, c2)) in limbs.iter().enumerate() {
            commitments.push(dalek4::ristretto::CompressedRistretto(c2.compress().to_bytes()));
            if let Some(s) = shift[l] {
                let shifted = c2 + &Scalar::from(s) * RISTRETTO_BASEPOINT_TABLE;
                commitments.push(dalek4::ristretto::CompressedRistretto(shifted.compress().to_bytes()));
            }
        }
    }
    // Padding: value 0, blinding 0, the identity (all-zero encoding).
    commitments.resize(padded, dalek4::ristretto::CompressedRistretto([0; 32]));
    let range = RangeProof::from_bytes(range_bytes).map_err(|_| ProofError::Range)?;
    let (pedersen, vectors) = generators();
    let mut t = transcript(context, y, limb_max, ciphertexts);
    range.verify_multiple(vectors, pedersen, &mut t, &commitments, b).map_err(|_| ProofError::Range)
}

// ---- idmatch's side of the proofs: what is proven, and where --------------------

/// The range each limb is proven in, for a campaign's clip `V`: the low limb in
/// `0..=min(V, 2^s − 1)`, the high limb in `0..=V >> s` (the clip's split `s`,
/// [`super::elgamal::Split::limb_bounds`]), so a proven value is below `V + 2^s`
/// whatever the owner encrypted, and the partner's noise, scaled for each limb's
/// bound (`Noise::partner_limbs`), covers every proven value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds([u64; LIMBS]);

impl Bounds {
    /// The bounds for `noise`'s clip, as both sides derive them from the accept.
    pub fn for_noise(noise: Noise) -> Bounds {
        Bounds(noise.split().limb_bounds(noise.clip.min(MAX_VALUE)))
    }

    /// Per limb, the largest value proven.
    pub fn limb_max(self) -> [u64; LIMBS] {
        self.0
    }
}

/// The context a chunk's proof is bound to: `SHA-256("idmatch measure v4 proof" ‖
/// Y ‖ people (u64, big-endian) ‖ chunk (u64, big-endian))`, so a proof cannot be
/// moved to another key, another message or another position.
pub fn context(key: &PublicKey, people: usize, chunk: usize) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"idmatch measure v4 proof");
    hash.update(key.to_bytes());
    hash.update((people as u64).to_be_bytes());
    hash.update((chunk as u64).to_be_bytes());
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::elgamal::{Encryptor, SecretKey};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Encrypts `values` (limbs) under a fresh key: the key, the ciphertexts and each
    /// limb's `r`.
    fn chunk(values: &[[u64; LIMBS]], rng: &mut StdRng) -> (SecretKey, Vec<PersonCiphertexts>, Vec<[Scalar; LIMBS]>) {
        let secret = SecretKey::random(rng);
        let encryptor = Encryptor::new(secret.public_key());
        let randomness: Vec<[Scalar; LIMBS]> =
            values.iter().map(|_| [random_scalar(rng), random_scalar(rng)]).collect();
        let ciphertexts = values
            .iter()
            .zip(&randomness)
            .map(|(v, r)| std::array::from_fn(|l| encryptor.encrypt_with(v[l] as i64, &r[l]).points()))
            .collect();
        (secret, ciphertexts, randomness)
    }

    #[test]
    fn honest_chunks_verify_and_their_length_is_exact() {
        let mut rng = StdRng::seed_from_u64(1);
        for limb_max in [[255, 256], [65_535, 65_536], [31, 32], [1, 0], [255, 255]] {
            for people in [1, 5, 16] {
                let values: Vec<[u64; LIMBS]> =
                    (0..people as u64).map(|i| [i % (limb_max[0] + 1), limb_max[1]]).collect();
                let (secret, ciphertexts, randomness) = chunk(&values, &mut rng);
                let y = *secret.public_key().point();
                let proof = prove(&[7; 32], &y, limb_max, &ciphertexts, &values, &randomness).unwrap();
                assert_eq!(proof.len(), proof_len(people, limb_max).unwrap());
                verify(&[7; 32], &y, limb_max, &ciphertexts, &proof).unwrap();
            }
        }
    }

    /// A limb one above its bound, and a value of 2^40, fail the range proof though
    /// the prover makes one; a shifted `C1` fails the consistency proof; any flipped
    /// byte, a truncated or extended proof, another context or key: refused.
    #[test]
    fn out_of_range_values_shifted_c1_and_damaged_proofs_are_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let limb_max = [31, 32];
        for bad in [[32, 0], [0, 33], [1 << 40, 0]] {
            let values = vec![[3, 4], bad, [5, 6]];
            let (secret, ciphertexts, randomness) = chunk(&values, &mut rng);
            let y = *secret.public_key().point();
            let proof = prove(&[1; 32], &y, limb_max, &ciphertexts, &values, &randomness).unwrap();
            assert_eq!(verify(&[1; 32], &y, limb_max, &ciphertexts, &proof), Err(ProofError::Range), "{bad:?}");
        }
        let values = vec![[3, 4], [31, 32], [0, 0]];
        let (secret, mut ciphertexts, randomness) = chunk(&values, &mut rng);
        let y = *secret.public_key().point();
        let proof = prove(&[1; 32], &y, limb_max, &ciphertexts, &values, &randomness).unwrap();
        verify(&[1; 32], &y, limb_max, &ciphertexts, &proof).unwrap();
        assert!(verify(&[2; 32], &y, limb_max, &ciphertexts, &proof).is_err(), "another context");
        let other = *SecretKey::random(&mut rng).public_key().point();
        assert!(verify(&[1; 32], &other, limb_max, &ciphertexts, &proof).is_err(), "another key");
        for at in (0..proof.len()).step_by(37) {
            let mut flipped = proof.clone();
            flipped[at] ^= 1;
            assert!(verify(&[1; 32], &y, limb_max, &ciphertexts, &flipped).is_err(), "byte {at}");
        }
        let expected = proof.len();
        for len in [0, 1, expected - 1, expected + 1, expected + 32] {
            let mut resized = proof.clone();
            resized.resize(len, 0);
            assert_eq!(
                verify(&[1; 32], &y, limb_max, &ciphertexts, &resized),
                Err(ProofError::Length { expected, got: len })
            );
        }
        ciphertexts[1][1].0 += RISTRETTO_BASEPOINT_POINT;
        assert_eq!(
            verify(&[1; 32], &y, limb_max, &ciphertexts, &proof),
            Err(ProofError::Consistency { person: 1, limb: 1 })
        );
        assert_eq!(proof_len(0, limb_max), Err(ProofError::People(0)));
        assert_eq!(proof_len(17, limb_max), Err(ProofError::People(17)));
    }

    /// What the proofs are for: an honest ciphertext decrypts to its limb.
    #[test]
    fn proven_ciphertexts_decrypt_to_their_limbs() {
        let mut rng = StdRng::seed_from_u64(3);
        let values = vec![[17, 2]];
        let (secret, ciphertexts, _) = chunk(&values, &mut rng);
        let table = crate::measure::elgamal::DlogTable::new(256);
        for l in 0..LIMBS {
            let (c1, c2) = ciphertexts[0][l];
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(c1.compress().as_bytes());
            bytes[32..].copy_from_slice(c2.compress().as_bytes());
            let c = crate::measure::elgamal::Ciphertext::from_bytes(&bytes, 0).unwrap();
            assert_eq!(secret.decrypt(&c, 0, 100, &table), Ok(i128::from(values[0][l])));
        }
    }

    #[test]
    fn bounds_follow_the_clip() {
        assert_eq!(Bounds::for_noise(Noise { epsilon: 1.0, clip: 1_000 }).limb_max(), [31, 31]);
        assert_eq!(Bounds::for_noise(Noise { epsilon: 1.0, clip: 1 }).limb_max(), [1, 0]);
        assert_eq!(Bounds::for_noise(Noise { epsilon: 1.0, clip: 1 << 32 }).limb_max(), [65_535, 65_536]);
        assert_eq!(bits([31, 31]), Ok(8));
        assert_eq!(bits([65_535, 65_536]), Ok(32));
        assert_eq!(shifts([255, 200], 8), [None, Some(55)]);
        // The longest chunk is the widest clip's.
        for clip in [1, 1_000, 65_536, 1 << 20, 1 << 32] {
            let bounds = Bounds::for_noise(Noise { epsilon: 1.0, clip }).limb_max();
            assert!(proof_len(PEOPLE_PER_PROOF, bounds).unwrap() <= MAX_PROOF_LEN, "{clip}");
        }
        assert_eq!(proof_len(PEOPLE_PER_PROOF, [65_535, 65_536]), Ok(MAX_PROOF_LEN));
    }
}
