//! Twisted exponential ElGamal on ristretto255: additively homomorphic encryption
//! of small integers, decrypted by a bounded discrete logarithm (baby-step
//! giant-step).
//!
//! `Enc(m; r) = (r·Y, m·G + r·H)` with `Y = x·H`, where `H` is a second generator
//! nobody knows the logarithm of ([`h`]): `C2` is a Pedersen commitment to `m`
//! with blinding `r`, binding even for the key holder (who knows `x = log_H Y` but
//! not `log_G H`), which is what lets the owner prove each value in range
//! ([`super::proof`]) and the partner check it (Chen et al., "PGC", ESORICS 2020).
//! Adding ciphertexts adds the plaintexts; adding `Enc(0)` re-randomizes.
//! Decryption recovers `m·G = C2 − x⁻¹·C1` and then `m` by baby-step giant-step,
//! which is only feasible for a known bound: values are therefore encrypted as
//! [`LIMBS`] limbs cut by a [`Split`] (the low `s` bits, then the rest; `s = 16`
//! without a clip, at most 2^16 in either limb for a value of 2^32), each summed
//! separately, so that a sum over `n` people stays within `n·2^s` per limb
//! (docs/PROTOCOL.md §12.5).
//!
//! Decryption by the partner (learner `partner`, §12.5.1): the partner sends only
//! `C1 + t·Y` for a fresh random `t` ([`Ciphertext::mask`]); that point is uniform
//! whatever the plaintext, so the owner learns nothing from it. The owner answers
//! with `D = x⁻¹·(C1 + t·Y) − η·G` ([`SecretKey::share`], `η` its noise), and the
//! partner recovers `(m + η)·G = C2 − D + t·H` ([`Masked::unmask`]). The partner
//! learns `m + η` and nothing of `x`; a partner that deviates could ask the owner to
//! decrypt any ciphertext it holds, so the owner answers one share per limb and
//! released group, and only semi-honest partners are covered (docs/PRIVACY.md).

use std::collections::HashMap;
use std::sync::OnceLock;

use curve25519_dalek::constants::{RISTRETTO_BASEPOINT_POINT, RISTRETTO_BASEPOINT_TABLE};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, IsIdentity};
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;
use zeroize::Zeroizing;

/// Bytes in one encoded ciphertext: `C1 ‖ C2`, two canonical ristretto255 encodings.
pub const CIPHERTEXT_LEN: usize = 64;
/// Limbs per encrypted value: `v mod 2^s` and `v >> s` ([`Split`]).
pub const LIMBS: usize = 2;
/// The largest number of baby steps a [`DlogTable`] holds (2^20, about 20 MB).
pub const MAX_BABY_STEPS: u64 = 1 << 20;

/// Why a ciphertext received from the peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CiphertextError {
    /// `C1` or `C2` is not a canonical ristretto255 encoding.
    #[error("ciphertext {index}: component {part} is not a canonical ristretto255 encoding")]
    NonCanonical {
        /// Position of the ciphertext in its message (0-based).
        index: usize,
        /// 1 for `C1`, 2 for `C2`.
        part: u8,
    },
    /// `C1` is the identity: the ciphertext was not randomized.
    #[error("ciphertext {index}: C1 is the identity element (not randomized)")]
    Unrandomized {
        /// Position of the ciphertext in its message (0-based).
        index: usize,
    },
}

/// A decryption that found no plaintext within its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the decrypted sum is not an integer in 0..={max}")]
pub struct DecryptError {
    /// The bound searched.
    pub max: u64,
}

/// The second generator `H`: `from_uniform_bytes(SHA-512("idmatch measure v4 H"))`,
/// a point whose discrete logarithm to `G` nobody knows (it is a hash). `C2` commits
/// to a limb under `G` and `H`, the generators of the range proofs.
pub fn h() -> &'static RistrettoPoint {
    static H: OnceLock<RistrettoPoint> = OnceLock::new();
    H.get_or_init(|| {
        use sha2::{Digest, Sha512};
        let wide: [u8; 64] = Sha512::digest(b"idmatch measure v4 H").into();
        RistrettoPoint::from_uniform_bytes(&wide)
    })
}

/// `H` as a precomputed table (fixed-base multiplications in encryption).
pub(crate) fn h_table() -> &'static RistrettoBasepointTable {
    static TABLE: OnceLock<RistrettoBasepointTable> = OnceLock::new();
    TABLE.get_or_init(|| RistrettoBasepointTable::create(h()))
}

/// The owner's ElGamal secret `x` and its inverse: zeroized on drop, never printed.
pub struct SecretKey {
    x: Zeroizing<Scalar>,
    inverse: Zeroizing<Scalar>,
}

impl SecretKey {
    /// A uniformly random non-zero scalar from `rng`.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> SecretKey {
        SecretKey::from_scalar(random_scalar(rng))
    }

    fn from_scalar(x: Scalar) -> SecretKey {
        SecretKey { inverse: Zeroizing::new(x.invert()), x: Zeroizing::new(x) }
    }

    /// `SHA-512(label) mod ℓ`: fixed keys for the test vectors of docs/PROTOCOL.md §12
    /// only, so compiled into tests only: no build of the library can make one.
    #[cfg(test)]
    pub(crate) fn from_label(label: &str) -> SecretKey {
        SecretKey::from_scalar(label_scalar(label))
    }

    /// `Y = x·H`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(&*self.x * h_table())
    }

    /// `m·G = C2 − x⁻¹·C1`, then `m` in `−below..=max` by baby-step giant-step over
    /// `table` (`below`: the largest negative noise the sum may carry).
    pub fn decrypt(
        &self,
        ciphertext: &Ciphertext,
        below: u64,
        max: u64,
        table: &DlogTable,
    ) -> Result<i128, DecryptError> {
        let point = ciphertext.c2 - ciphertext.c1 * *self.inverse;
        table.solve_shifted(&point, below, max).ok_or(DecryptError { max })
    }

    /// The decryption share of a masked point `M = C1 + t·Y`: `x⁻¹·M − η·G`, where
    /// `η` is the noise the owner adds to the plaintext the partner will recover.
    pub fn share(&self, masked: &RistrettoPoint, noise: i64) -> RistrettoPoint {
        masked * *self.inverse - &signed_scalar(noise) * RISTRETTO_BASEPOINT_TABLE
    }
}

/// `n` as a scalar, negative values as `ℓ − |n|`.
pub(crate) fn signed_scalar(n: i64) -> Scalar {
    let magnitude = Scalar::from(n.unsigned_abs());
    if n < 0 { -magnitude } else { magnitude }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// `SHA-512(label) mod ℓ` (test vectors; tests only).
#[cfg(test)]
pub(crate) fn label_scalar(label: &str) -> Scalar {
    use sha2::{Digest, Sha512};
    let wide: [u8; 64] = Sha512::digest(label.as_bytes()).into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// A uniformly random non-zero scalar (64 bytes reduced mod ℓ).
pub fn random_scalar<R: RngCore + CryptoRng>(rng: &mut R) -> Scalar {
    loop {
        let mut wide = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(wide.as_mut());
        let s = Scalar::from_bytes_mod_order_wide(&wide);
        if s != Scalar::ZERO {
            return s;
        }
    }
}

/// The public key `Y = x·H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(RistrettoPoint);

impl PublicKey {
    /// The 32-byte canonical encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.compress().to_bytes()
    }

    /// The point `Y`, for the proofs.
    pub fn point(&self) -> &RistrettoPoint {
        &self.0
    }

    /// Decodes a peer's public key, refusing non-canonical encodings and the identity.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        CompressedRistretto(*bytes).decompress().filter(|p| !p.is_identity()).map(PublicKey)
    }
}

/// `(C1, C2)`: one encrypted limb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    c1: RistrettoPoint,
    c2: RistrettoPoint,
}

impl Ciphertext {
    /// `(O, O)`: the neutral element of homomorphic addition (not a valid ciphertext
    /// to send: re-randomize a sum before it leaves).
    pub fn zero() -> Ciphertext {
        Ciphertext { c1: RistrettoPoint::identity(), c2: RistrettoPoint::identity() }
    }

    /// `C1 ‖ C2`.
    pub fn to_bytes(&self) -> [u8; CIPHERTEXT_LEN] {
        let mut out = [0u8; CIPHERTEXT_LEN];
        out[..32].copy_from_slice(self.c1.compress().as_bytes());
        out[32..].copy_from_slice(self.c2.compress().as_bytes());
        out
    }

    /// Decodes a peer's ciphertext (`index`: its position, for the error): both parts
    /// canonical, `C1` not the identity.
    pub fn from_bytes(bytes: &[u8; CIPHERTEXT_LEN], index: usize) -> Result<Ciphertext, CiphertextError> {
        let part = |range: std::ops::Range<usize>, part: u8| {
            let mut b = [0u8; 32];
            b.copy_from_slice(&bytes[range]);
            CompressedRistretto(b).decompress().ok_or(CiphertextError::NonCanonical { index, part })
        };
        let (c1, c2) = (part(0..32, 1)?, part(32..64, 2)?);
        if c1.is_identity() {
            return Err(CiphertextError::Unrandomized { index });
        }
        Ok(Ciphertext { c1, c2 })
    }

    /// The homomorphic sum: decrypts to the sum of the plaintexts.
    pub fn add(&self, other: &Ciphertext) -> Ciphertext {
        Ciphertext { c1: self.c1 + other.c1, c2: self.c2 + other.c2 }
    }

    /// Masks the ciphertext for decryption by its holder: `C1 + t·Y` for a fresh
    /// uniform `t` is what goes to the key owner; `C2` and `t` stay here.
    pub fn mask<R: RngCore + CryptoRng>(&self, key: &PublicKey, rng: &mut R) -> Masked {
        self.mask_with(key, Zeroizing::new(random_scalar(rng)))
    }

    /// [`Ciphertext::mask`] with a given `t` (test vectors only).
    pub fn mask_with(&self, key: &PublicKey, t: Zeroizing<Scalar>) -> Masked {
        Masked { point: self.c1 + key.0 * *t, c2: self.c2, t }
    }

    /// `(C1, C2)`, for the proofs.
    pub fn points(&self) -> (RistrettoPoint, RistrettoPoint) {
        (self.c1, self.c2)
    }
}

/// A ciphertext masked for decryption by the partner (see the module doc). `Debug`
/// shows nothing of `t`.
pub struct Masked {
    point: RistrettoPoint,
    c2: RistrettoPoint,
    t: Zeroizing<Scalar>,
}

impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Masked(<redacted>)")
    }
}

impl Masked {
    /// `C1 + t·Y`, the 32 bytes sent to the key owner.
    pub fn point_bytes(&self) -> [u8; 32] {
        self.point.compress().to_bytes()
    }

    /// `(m + η)·G = C2 − D + t·H` from the key owner's share `D`.
    pub fn unmask(&self, share: &RistrettoPoint) -> RistrettoPoint {
        self.c2 - share + &*self.t * h_table()
    }
}

/// Encryption under one public key, with a precomputed table for `Y`.
pub struct Encryptor {
    key: PublicKey,
    table: Box<RistrettoBasepointTable>,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Precomputes the table for `key` (a few hundred microseconds).
    pub fn new(key: PublicKey) -> Encryptor {
        Encryptor { key, table: Box::new(RistrettoBasepointTable::create(&key.0)) }
    }

    /// `Enc(m; r) = (r·Y, m·G + r·H)`; `m` may be negative (noise).
    pub fn encrypt_with(&self, m: i64, r: &Scalar) -> Ciphertext {
        let m_g = &signed_scalar(m) * RISTRETTO_BASEPOINT_TABLE;
        Ciphertext { c1: r * &*self.table, c2: m_g + r * h_table() }
    }

    /// `Enc(m)` with a fresh random `r`.
    pub fn encrypt<R: RngCore + CryptoRng>(&self, m: i64, rng: &mut R) -> Ciphertext {
        self.encrypt_with(m, &Zeroizing::new(random_scalar(rng)))
    }

    /// A value within `split`'s clip as its [`LIMBS`] limbs ([`Split::limbs`]), and
    /// each limb's `r` (for the range proofs; zeroized on drop).
    pub fn encrypt_value<R: RngCore + CryptoRng>(
        &self,
        value: u64,
        split: Split,
        rng: &mut R,
    ) -> ([Ciphertext; LIMBS], Zeroizing<[Scalar; LIMBS]>) {
        let r = Zeroizing::new([random_scalar(rng), random_scalar(rng)]);
        let [low, high] = split.limbs(value).map(|l| l as i64);
        ([self.encrypt_with(low, &r[0]), self.encrypt_with(high, &r[1])], r)
    }

    /// `C + Enc(0)`: the same plaintext, unlinkable to `C`.
    pub fn rerandomize<R: RngCore + CryptoRng>(&self, ciphertext: &Ciphertext, rng: &mut R) -> Ciphertext {
        ciphertext.add(&self.encrypt(0, rng))
    }
}

/// Where a value is cut into its two limbs: the low `s` bits and the rest.
///
/// Invariant: for every value `v ≤ clip` (and `clip ≤ 2^32`), both limbs are at
/// most `2^s` ([`Split::limb_max`]), so a sum over `p` people decrypts within
/// `p·2^s` per limb. Security: with learner `partner` the owner decrypts whatever
/// point the partner puts in a limb's slot, so each slot's noise is scaled for the
/// largest limb of *any* one person, in either slot ([`Split::slot_sensitivity`]):
/// cutting at half the clip's bits keeps that near `√clip`, and the noise on the
/// released sum (the high limb's noise times `2^s`) near the clip's own scale.
/// Both sides derive the split from the clip the campaign announces, never from a
/// value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    bits: u32,
}

impl Split {
    /// Without a clip (values up to 2^32): 16 bits, at most 2^16 in the high limb.
    pub const WIDE: Split = Split { bits: 16 };

    /// The split for values clipped at `clip` (at most 2^32): `s = ⌈b/2⌉` for a
    /// clip of `b` bits, between 1 and 16.
    pub fn for_clip(clip: u64) -> Split {
        let b = u64::BITS - clip.clamp(1, 1 << 32).leading_zeros();
        Split { bits: b.div_ceil(2).clamp(1, 16) }
    }

    /// `s`, the bits of the low limb.
    pub fn bits(self) -> u32 {
        self.bits
    }

    /// `[v mod 2^s, v >> s]`.
    pub fn limbs(self, value: u64) -> [u64; LIMBS] {
        [value & ((1 << self.bits) - 1), value >> self.bits]
    }

    /// Per limb, the largest limb of one person's value (`2^s − 1` and `2^s`): the
    /// per-person bound of a limb's sum.
    pub fn limb_max(self) -> [u64; LIMBS] {
        [(1 << self.bits) - 1, 1 << self.bits]
    }

    /// The largest limb, low or high, of any value up to `clip`: what one person's
    /// ciphertext can put in either slot of a group's sum.
    pub fn slot_sensitivity(self, clip: u64) -> u64 {
        let [low, high] = self.limb_bounds(clip);
        low.max(high)
    }

    /// Per limb, the largest limb of a value up to `clip`: `min(clip, 2^s − 1)`
    /// and `clip >> s` (`clip` at most 2^32). What the owner's range proofs prove
    /// and what the partner's noise is scaled for (a proven value is below
    /// `clip + 2^s`).
    pub fn limb_bounds(self, clip: u64) -> [u64; LIMBS] {
        let clip = clip.min(1 << 32);
        [clip.min((1 << self.bits) - 1), clip >> self.bits]
    }

    /// `low + high·2^s`.
    pub fn join(self, low: i128, high: i128) -> i128 {
        low + (high << self.bits)
    }
}

/// Baby steps: `compress(j·G)` for `j < m`, keyed by its first 8 bytes; giant step `m·G`.
pub struct DlogTable {
    baby_steps: u64,
    table: HashMap<u64, u32>,
    /// `(m·G)/2`: giant steps are taken on halved points and encoded doubled, so that
    /// one field inversion serves a whole batch (`double_and_compress_batch`).
    giant_half: RistrettoPoint,
}

impl std::fmt::Debug for DlogTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlogTable").field("baby_steps", &self.baby_steps).finish_non_exhaustive()
    }
}

/// Points per batch encoding.
const BATCH: u64 = 1024;

fn key_of(bytes: &[u8; 32]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(k)
}

impl DlogTable {
    /// The baby-step count for sums of at most `max`: about `√max`, a power of two
    /// between 2^8 and [`MAX_BABY_STEPS`], so that baby and giant steps balance.
    pub fn baby_steps_for(max: u64) -> u64 {
        let root = (max as f64).sqrt().ceil() as u64;
        root.next_power_of_two().clamp(1 << 8, MAX_BABY_STEPS)
    }

    /// Builds the table of `baby_steps` entries (at most [`MAX_BABY_STEPS`]) on all cores.
    pub fn new(baby_steps: u64) -> DlogTable {
        let baby_steps = baby_steps.clamp(1, MAX_BABY_STEPS);
        let half = Scalar::from(2u8).invert();
        let g_half = RISTRETTO_BASEPOINT_POINT * half;
        let batches = baby_steps.div_ceil(BATCH);
        let table: HashMap<u64, u32> = (0..batches)
            .into_par_iter()
            .flat_map_iter(|b| {
                let start = b * BATCH;
                let end = (start + BATCH).min(baby_steps);
                let mut point = g_half * Scalar::from(start);
                let mut halves = Vec::with_capacity((end - start) as usize);
                for _ in start..end {
                    halves.push(point);
                    point += g_half;
                }
                let encoded = RistrettoPoint::double_and_compress_batch(&halves);
                encoded.into_iter().enumerate().map(move |(i, c)| (key_of(c.as_bytes()), (start + i as u64) as u32))
            })
            .collect();
        let giant_half = RISTRETTO_BASEPOINT_POINT * (Scalar::from(baby_steps) * half);
        DlogTable { baby_steps, table, giant_half }
    }

    /// The number of baby steps `m`.
    pub fn baby_steps(&self) -> u64 {
        self.baby_steps
    }

    /// `m` in `−below..=max` with `m·G = point`, if there is one: a search of
    /// `(m + below)·G` over `0..=max + below`.
    pub fn solve_shifted(&self, point: &RistrettoPoint, below: u64, max: u64) -> Option<i128> {
        let range = max.checked_add(below)?;
        let shifted = point + &Scalar::from(below) * RISTRETTO_BASEPOINT_TABLE;
        self.solve(&shifted, range).map(|m| i128::from(m) - i128::from(below))
    }

    /// `m` in `0..=max` with `m·G = point`, if there is one.
    pub fn solve(&self, point: &RistrettoPoint, max: u64) -> Option<u64> {
        let half = Scalar::from(2u8).invert();
        let target_half = point * half;
        let giants = max / self.baby_steps + 1;
        (0..giants.div_ceil(BATCH)).into_par_iter().find_map_first(|b| {
            let start = b * BATCH;
            let end = (start + BATCH).min(giants);
            let mut current = target_half - self.giant_half * Scalar::from(start);
            let mut halves = Vec::with_capacity((end - start) as usize);
            for _ in start..end {
                halves.push(current);
                current -= self.giant_half;
            }
            let encoded = RistrettoPoint::double_and_compress_batch(&halves);
            encoded.iter().enumerate().find_map(|(i, c)| {
                let j = *self.table.get(&key_of(c.as_bytes()))?;
                let m = (start + i as u64) * self.baby_steps + u64::from(j);
                // The key is 8 bytes of the encoding: confirm the whole point.
                (m <= max && &Scalar::from(m) * RISTRETTO_BASEPOINT_TABLE == *point).then_some(m)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn encrypts_adds_rerandomizes_and_decrypts() {
        let mut rng = StdRng::seed_from_u64(7);
        let sk = SecretKey::random(&mut rng);
        let enc = Encryptor::new(sk.public_key());
        let table = DlogTable::new(1 << 10);
        let values = [0u64, 1, 65535, 65536, 123_456, 1 << 32];
        let mut sums = [Ciphertext::zero(); LIMBS];
        for &v in &values {
            let (cts, _) = enc.encrypt_value(v, Split::WIDE, &mut rng);
            for (s, c) in sums.iter_mut().zip(&cts) {
                *s = s.add(c);
            }
        }
        let sums = sums.map(|s| enc.rerandomize(&s, &mut rng));
        let bound = values.len() as u64 * Split::WIDE.limb_max()[1];
        let low = sk.decrypt(&sums[0], 0, bound, &table).unwrap();
        let high = sk.decrypt(&sums[1], 0, bound, &table).unwrap();
        let sum = Split::WIDE.join(low, high);
        assert_eq!(sum, i128::from(values.iter().sum::<u64>()));
        let one = enc.encrypt(5, &mut rng);
        assert_eq!(sk.decrypt(&one, 0, 4, &table), Err(DecryptError { max: 4 }));
        assert_ne!(enc.rerandomize(&one, &mut rng), one);
        // Negative plaintexts (noise) decrypt within the range below 0.
        let noisy = enc.encrypt(-7, &mut rng).add(&enc.encrypt(3, &mut rng));
        assert_eq!(sk.decrypt(&noisy, 7, 10, &table), Ok(-4));
        assert_eq!(sk.decrypt(&noisy, 3, 10, &table), Err(DecryptError { max: 10 }));
        // C2 commits under G and H, two generators, and C1 is a multiple of Y.
        assert_ne!(*h(), RISTRETTO_BASEPOINT_POINT);
        let r = random_scalar(&mut rng);
        let c = enc.encrypt_with(9, &r);
        assert_eq!(c.points(), (sk.public_key().0 * r, RISTRETTO_BASEPOINT_POINT * Scalar::from(9u8) + h() * r));
    }

    /// Every value up to the clip has both limbs within `2^s`, and the slot
    /// sensitivity is the largest limb any of them has, in either slot.
    #[test]
    fn splits_bound_both_limbs_by_the_clip() {
        for clip in [1u64, 2, 3, 7, 100, 1000, 65_535, 65_536, 1 << 20, (1 << 32) - 1, 1 << 32] {
            let split = Split::for_clip(clip);
            let [low_max, high_max] = split.limb_max();
            let mut largest = 0;
            for v in (0..=clip.min(5000)).chain(clip.saturating_sub(5000)..=clip) {
                let [low, high] = split.limbs(v);
                assert!(low <= low_max && high <= high_max, "clip {clip}, v {v}");
                assert_eq!(split.join(low.into(), high.into()), i128::from(v));
                largest = largest.max(low).max(high);
            }
            assert_eq!(split.slot_sensitivity(clip), largest, "clip {clip}");
        }
        assert_eq!(Split::for_clip(1 << 32), Split::WIDE);
        assert_eq!(Split::for_clip(1000).bits(), 5);
    }

    #[test]
    fn large_sums_decrypt_with_a_balanced_table() {
        let mut rng = StdRng::seed_from_u64(8);
        let sk = SecretKey::random(&mut rng);
        let enc = Encryptor::new(sk.public_key());
        let max = 10_000 * Split::WIDE.limb_max()[1];
        let table = DlogTable::new(DlogTable::baby_steps_for(max));
        for m in [0, 1, max / 3 + 17, max] {
            assert_eq!(sk.decrypt(&enc.encrypt(m as i64, &mut rng), 0, max, &table), Ok(i128::from(m)));
        }
    }

    #[test]
    fn masked_decryption_recovers_the_plaintext_plus_the_noise() {
        let mut rng = StdRng::seed_from_u64(10);
        let sk = SecretKey::random(&mut rng);
        let key = sk.public_key();
        let enc = Encryptor::new(key);
        let table = DlogTable::new(1 << 10);
        for (m, noise) in [(0u64, 0i64), (5, -9), (70_000, 1234), (1 << 20, -(1 << 20))] {
            let c = enc.encrypt(m as i64, &mut rng);
            let masked = c.mask(&key, &mut rng);
            // The owner's view: a point unrelated to C1.
            assert_ne!(masked.point_bytes(), c.to_bytes()[..32]);
            let point = CompressedRistretto(masked.point_bytes()).decompress().unwrap();
            let recovered = masked.unmask(&sk.share(&point, noise));
            let below = 1 << 21;
            assert_eq!(table.solve_shifted(&recovered, below, 1 << 22), Some(i128::from(m) + i128::from(noise)));
        }
        // Outside the range: none.
        let c = enc.encrypt(3, &mut rng);
        let masked = c.mask(&key, &mut rng);
        let recovered = masked.unmask(&sk.share(&masked.point, -10));
        assert_eq!(table.solve_shifted(&recovered, 6, 100), None);
        assert_eq!(table.solve_shifted(&recovered, 7, 100), Some(-7));
        assert_eq!(format!("{masked:?}"), "Masked(<redacted>)");
    }

    #[test]
    fn ciphertext_round_trips_and_refuses_bad_points() {
        let mut rng = StdRng::seed_from_u64(9);
        let enc = Encryptor::new(SecretKey::random(&mut rng).public_key());
        let c = enc.encrypt(3, &mut rng);
        assert_eq!(Ciphertext::from_bytes(&c.to_bytes(), 0), Ok(c));
        let mut bad = c.to_bytes();
        bad[40] = 0xff;
        bad[63] = 0xff;
        assert_eq!(Ciphertext::from_bytes(&bad, 4), Err(CiphertextError::NonCanonical { index: 4, part: 2 }));
        let mut zero = c.to_bytes();
        zero[..32].fill(0);
        assert_eq!(Ciphertext::from_bytes(&zero, 1), Err(CiphertextError::Unrandomized { index: 1 }));
        assert_eq!(format!("{:?}", SecretKey::random(&mut rng)), "SecretKey(<redacted>)");
    }
}
