//! The only code that touches the curve: hashing tokens to ristretto255, blinding
//! with a secret scalar, and decoding a peer's elements.
//!
//! Security properties:
//! - `P(t) = RistrettoPoint::from_uniform_bytes(SHA-512(t))`, the one-way map of
//!   RFC 9496 §4.3.4: nobody knows a discrete log of `P(t)`, so `s·P(t)` reveals
//!   nothing about `t` to anyone without `s`.
//! - A [`BlindingKey`] is a uniformly random non-zero scalar from the OS CSPRNG,
//!   zeroized on drop, never printed, and used for one match only.
//! - Blinding commutes: `a·(b·P) = b·(a·P)`, which is what lets the two parties
//!   compare doubly-blinded elements without either learning the other's tokens.
//! - Decoding rejects non-canonical encodings and the identity element, so a peer
//!   cannot make us multiply a low-order or degenerate point.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand::RngCore;
use rand::rngs::OsRng;
use rayon::prelude::*;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::message::Element;
use crate::token::Token;

/// Rayon splits per-chunk work no finer than this many elements.
const MIN_PAR_LEN: usize = 64;

/// Why an element received from the peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElementError {
    #[error("element {index} of the chunk is not a canonical ristretto255 encoding")]
    NonCanonical { index: usize },
    #[error("element {index} of the chunk is the identity element")]
    Identity { index: usize },
}

/// A party's secret scalar for one match.
pub struct BlindingKey(Zeroizing<Scalar>);

impl BlindingKey {
    /// Draws a uniformly random non-zero scalar from the OS CSPRNG (64 bytes reduced
    /// mod ℓ; the bias is below 2⁻²⁵⁰).
    pub fn random() -> Result<BlindingKey, rand::Error> {
        loop {
            let mut wide = Zeroizing::new([0u8; 64]);
            OsRng.try_fill_bytes(wide.as_mut())?;
            let scalar = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
            if *scalar != Scalar::ZERO {
                return Ok(BlindingKey(scalar));
            }
        }
    }

    /// `s·P(t)` for each token, encoded; runs on all cores.
    pub fn blind_tokens(&self, tokens: &[Token]) -> Vec<Element> {
        tokens.par_iter().with_min_len(MIN_PAR_LEN).map(|t| self.blind_token(t)).collect()
    }

    /// `s·P(t)`, encoded.
    pub fn blind_token(&self, token: &Token) -> Element {
        encode(&(hash_to_group(token) * *self.0))
    }

    /// `s·X` for each of the peer's elements `X`, encoded; runs on all cores.
    pub fn reblind(&self, elements: &[Element]) -> Result<Vec<Element>, ElementError> {
        elements
            .par_iter()
            .with_min_len(MIN_PAR_LEN)
            .enumerate()
            .map(|(index, e)| Ok(encode(&(decode(e, index)? * *self.0))))
            .collect()
    }
}

impl std::fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindingKey(<redacted>)")
    }
}

/// `P(t)`: the RFC 9496 one-way map applied to SHA-512 of the 32-byte token.
pub fn hash_to_group(token: &Token) -> RistrettoPoint {
    let wide: [u8; 64] = Sha512::digest(token.0).into();
    RistrettoPoint::from_uniform_bytes(&wide)
}

fn encode(point: &RistrettoPoint) -> Element {
    Element(point.compress().to_bytes())
}

/// Decodes a peer's element, refusing non-canonical encodings and the identity.
pub fn decode(element: &Element, index: usize) -> Result<RistrettoPoint, ElementError> {
    let point = CompressedRistretto(element.0).decompress().ok_or(ElementError::NonCanonical { index })?;
    if point.is_identity() {
        return Err(ElementError::Identity { index });
    }
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blinding_commutes() {
        let (a, b) = (BlindingKey::random().unwrap(), BlindingKey::random().unwrap());
        let tokens = [Token([1; 32]), Token([2; 32])];
        let ab = b.reblind(&a.blind_tokens(&tokens)).unwrap();
        let ba = a.reblind(&b.blind_tokens(&tokens)).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab[0], ab[1]);
    }

    #[test]
    fn rejects_identity_and_non_canonical() {
        let key = BlindingKey::random().unwrap();
        let identity = Element([0; 32]);
        assert_eq!(key.reblind(&[identity]), Err(ElementError::Identity { index: 0 }));
        let good = key.blind_token(&Token([3; 32]));
        // 2^255 - 1 is not a canonical field element encoding.
        let bad = Element([0xff; 32]);
        assert_eq!(key.reblind(&[good, bad]), Err(ElementError::NonCanonical { index: 1 }));
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", BlindingKey::random().unwrap()), "BlindingKey(<redacted>)");
    }
}
