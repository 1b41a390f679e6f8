//! Base oblivious transfers on ristretto255: Chou–Orlandi "simplest OT"
//! (LATINCRYPT 2015), `w` random 1-out-of-2 OTs of 16-byte seeds. Against a
//! deviating OT sender (the PSI receiver) the choice string stays hidden (`B_i` is
//! uniform); a deviating OT receiver (the PSI sender) can at most spoil its own
//! seeds: it learns at most one seed per column, so the correction's other pad
//! stays secret.
//!
//! - OT sender (the PSI **receiver**): draws `a`, sends `A = a·G`.
//! - OT receiver (the PSI **sender**), for each `i` with choice bit `s_i`: draws
//!   `b_i`, sends `B_i = b_i·G + s_i·A`, and keeps `k_i = KDF(i, A, B_i, b_i·A)`.
//! - OT sender: `k_i^0 = KDF(i, A, B_i, a·B_i)`, `k_i^1 = KDF(i, A, B_i, a·B_i − a·A)`;
//!   so `k_i = k_i^{s_i}` and the other seed is a hash of a CDH value the OT
//!   receiver cannot compute. `B_i` is uniform whatever `s_i` is, so the OT sender
//!   learns nothing about `s`.
//! - `KDF(i, A, B, P) = SHA-256("idmatch-oprf-v1 OT" ‖ LE32(i) ‖ A ‖ B ‖ P)[0..16]`,
//!   points as their 32-byte canonical encodings.
//!
//! Invariants: scalars come from the OS CSPRNG, fresh for every match, are
//! zeroized on drop and never printed; every point from the peer is decoded
//! canonically and the identity is refused (`BadPoint`), so nothing the peer sends
//! can make a party panic or multiply a degenerate point.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand::RngCore;
use rand::rngs::OsRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable};
use zeroize::Zeroizing;

use super::error::OprfError;

/// Domain-separation label of the base-OT key derivation, `docs/PROTOCOL.md` §11.
pub const LABEL_OT: &[u8] = b"idmatch-oprf-v1 OT";
/// Bytes of an encoded point.
pub const POINT_LEN: usize = 32;

/// A 16-byte OT seed (an AES-128 key for the PRG), zeroized on drop.
pub type Seed = Zeroizing<[u8; 16]>;

/// A uniformly random non-zero scalar from the OS CSPRNG.
pub fn random_scalar() -> Result<Zeroizing<Scalar>, OprfError> {
    loop {
        let mut wide = Zeroizing::new([0u8; 64]);
        OsRng.try_fill_bytes(wide.as_mut()).map_err(|e| OprfError::Rng(e.to_string()))?;
        let scalar = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
        if *scalar != Scalar::ZERO {
            return Ok(scalar);
        }
    }
}

/// `KDF(i, A, B, P)`.
pub fn kdf(index: u32, a: &[u8; 32], b: &[u8; 32], shared: &RistrettoPoint) -> Seed {
    let digest = Sha256::new()
        .chain_update(LABEL_OT)
        .chain_update(index.to_le_bytes())
        .chain_update(a)
        .chain_update(b)
        .chain_update(shared.compress().as_bytes())
        .finalize();
    let mut seed = Zeroizing::new([0u8; 16]);
    seed.copy_from_slice(&digest[..16]);
    seed
}

fn decode(bytes: &[u8], what: &'static str, index: usize) -> Result<RistrettoPoint, OprfError> {
    let point = CompressedRistretto::from_slice(bytes)
        .ok()
        .and_then(|c| c.decompress())
        .filter(|p| !p.is_identity())
        .ok_or(OprfError::BadPoint { what, index })?;
    Ok(point)
}

/// The OT sender's state (held by the PSI receiver).
pub struct OtSender {
    a: Zeroizing<Scalar>,
    point: [u8; 32],
}

impl OtSender {
    /// A fresh OT sender: a random scalar `a` and its point `A = a·G`.
    pub fn new() -> Result<OtSender, OprfError> {
        let a = random_scalar()?;
        let point = RistrettoPoint::mul_base(&a).compress().to_bytes();
        Ok(OtSender { a, point })
    }

    /// `A`, encoded.
    pub fn point(&self) -> [u8; 32] {
        self.point
    }

    /// Both seeds of every OT from the receiver's concatenated `B_i` (exactly
    /// `count` points); runs on all cores.
    pub fn seeds(&self, points: &[u8], count: usize) -> Result<Vec<[Seed; 2]>, OprfError> {
        if points.len() != count * POINT_LEN {
            return Err(OprfError::BadLength {
                what: "sender setup ot_points",
                len: points.len(),
                expected: count * POINT_LEN,
            });
        }
        let a_point = decode(&self.point, "own OT point", 0)?;
        // a·A turns either seed into the other: wiped when dropped.
        let a_a = Zeroizing::new(a_point * *self.a);
        points
            .par_chunks(POINT_LEN)
            .enumerate()
            .map(|(i, bytes)| {
                let b = decode(bytes, "sender setup ot_points", i)?;
                let b_bytes: [u8; 32] = b.compress().to_bytes();
                let shared0 = b * *self.a;
                let shared1 = shared0 - *a_a;
                Ok([kdf(i as u32, &self.point, &b_bytes, &shared0), kdf(i as u32, &self.point, &b_bytes, &shared1)])
            })
            .collect()
    }
}

impl std::fmt::Debug for OtSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtSender(<redacted>)")
    }
}

/// The OT receiver's side (run by the PSI sender): for the sender's `A` and the
/// secret `choices`, the concatenated `B_i` to send and the chosen seeds.
pub fn receive(a_bytes: &[u8], choices: &[bool]) -> Result<(Vec<u8>, Vec<Seed>), OprfError> {
    if a_bytes.len() != POINT_LEN {
        return Err(OprfError::BadLength { what: "receiver setup ot_point", len: a_bytes.len(), expected: POINT_LEN });
    }
    let a_point = decode(a_bytes, "receiver setup ot_point", 0)?;
    let a_enc: [u8; 32] = a_point.compress().to_bytes();
    let scalars = choices.iter().map(|_| random_scalar()).collect::<Result<Vec<_>, _>>()?;
    let pairs: Vec<([u8; 32], Seed)> = scalars
        .par_iter()
        .zip(choices.par_iter())
        .enumerate()
        .map(|(i, (b, &choice))| {
            let mut point = RistrettoPoint::mul_base(b);
            // Adds A or the identity without branching on the secret choice bit.
            point += RistrettoPoint::conditional_select(
                &RistrettoPoint::default(),
                &a_point,
                Choice::from(u8::from(choice)),
            );
            let encoded = point.compress().to_bytes();
            let seed = kdf(i as u32, &a_enc, &encoded, &(a_point * **b));
            (encoded, seed)
        })
        .collect();
    let mut points = Vec::with_capacity(choices.len() * POINT_LEN);
    let mut seeds = Vec::with_capacity(choices.len());
    for (p, s) in pairs {
        points.extend_from_slice(&p);
        seeds.push(s);
    }
    Ok((points, seeds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_seed_equals_the_senders_seed_for_that_choice() {
        let sender = OtSender::new().unwrap();
        let choices: Vec<bool> = (0..50).map(|i| i % 3 == 0).collect();
        let (points, chosen) = receive(&sender.point(), &choices).unwrap();
        let both = sender.seeds(&points, choices.len()).unwrap();
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(*chosen[i], *both[i][usize::from(*c)], "OT {i}");
            assert_ne!(*chosen[i], *both[i][usize::from(!*c)], "OT {i}");
        }
    }

    #[test]
    fn bad_points_are_refused() {
        let sender = OtSender::new().unwrap();
        assert_eq!(
            receive(&[0u8; 32], &[true]).unwrap_err(),
            OprfError::BadPoint { what: "receiver setup ot_point", index: 0 }
        );
        assert_eq!(
            receive(&[0xffu8; 32], &[true]).unwrap_err(),
            OprfError::BadPoint { what: "receiver setup ot_point", index: 0 }
        );
        assert!(matches!(receive(&[1u8; 31], &[true]).unwrap_err(), OprfError::BadLength { len: 31, .. }));
        let (mut points, _) = receive(&sender.point(), &[false, true]).unwrap();
        points[32..].fill(0);
        assert_eq!(
            sender.seeds(&points, 2).unwrap_err(),
            OprfError::BadPoint { what: "sender setup ot_points", index: 1 }
        );
        assert!(matches!(sender.seeds(&points, 3).unwrap_err(), OprfError::BadLength { expected: 96, .. }));
    }
}
