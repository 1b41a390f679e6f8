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

/// Why an element received from the peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElementError {
    /// The bytes are not a canonical ristretto255 encoding.
    #[error("element {index} of the chunk is not a canonical ristretto255 encoding")]
    NonCanonical {
        /// Position of the element in its chunk (0-based).
        index: usize,
    },
    /// The element is the identity, which would blind to itself.
    #[error("element {index} of the chunk is the identity element")]
    Identity {
        /// Position of the element in its chunk (0-based).
        index: usize,
    },
}

/// Elements compressed together: one shared field inversion per batch.
const COMPRESS_BATCH: usize = 256;

/// A party's secret scalar `s` for one match.
///
/// Invariant: the value stored is `h = s/2`, and every blinded element is encoded
/// as `compress(2·(h·X))` with `RistrettoPoint::double_and_compress_batch`, which
/// shares one field inversion across a batch. Since 2 is invertible mod ℓ, drawing
/// `h` uniformly from the non-zero scalars makes `s = 2h` uniform non-zero too.
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
        tokens
            .par_chunks(COMPRESS_BATCH)
            .flat_map_iter(|batch| {
                let halves: Vec<RistrettoPoint> = batch.iter().map(|t| hash_to_group(t) * *self.0).collect();
                double_and_encode(&halves)
            })
            .collect()
    }

    /// `s·X` for each of the peer's elements `X`, encoded; runs on all cores.
    pub fn reblind(&self, elements: &[Element]) -> Result<Vec<Element>, ElementError> {
        let batches: Vec<Vec<Element>> = elements
            .par_chunks(COMPRESS_BATCH)
            .enumerate()
            .map(|(b, batch)| {
                let halves = batch
                    .iter()
                    .enumerate()
                    .map(|(i, e)| Ok(decode(e, b * COMPRESS_BATCH + i)? * *self.0))
                    .collect::<Result<Vec<RistrettoPoint>, ElementError>>()?;
                Ok(double_and_encode(&halves))
            })
            .collect::<Result<_, ElementError>>()?;
        Ok(batches.concat())
    }

    /// `s·G` (`G` the ristretto255 base point), encoded: what lets the peer predict
    /// `s·X` for points `X = r·G` whose `r` it knows (the measurement partner's traps,
    /// `measure::trap`). Revealing it tells nothing of `s·P(t)` for an unknown `t`
    /// (decisional Diffie–Hellman).
    pub fn public_point(&self) -> Element {
        double_and_encode(&[RistrettoPoint::mul_base(&self.0)])[0]
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

/// `compress(2·X)` for each point, sharing one inversion across the batch.
fn double_and_encode(points: &[RistrettoPoint]) -> Vec<Element> {
    RistrettoPoint::double_and_compress_batch(points).into_iter().map(|c| Element(c.to_bytes())).collect()
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
    fn batched_encoding_equals_plain_scalar_multiplication() {
        let key = BlindingKey::random().unwrap();
        let s = *key.0 + *key.0;
        let tokens: Vec<Token> = (0..600u16).map(|i| Token([(i % 251) as u8; 32])).collect();
        let plain: Vec<Element> =
            tokens.iter().map(|t| Element((hash_to_group(t) * s).compress().to_bytes())).collect();
        assert_eq!(key.blind_tokens(&tokens), plain);
        let again: Vec<Element> =
            plain.iter().map(|e| Element((decode(e, 0).unwrap() * s).compress().to_bytes())).collect();
        assert_eq!(key.reblind(&plain).unwrap(), again);
    }

    #[test]
    fn rejects_identity_and_non_canonical() {
        let key = BlindingKey::random().unwrap();
        let identity = Element([0; 32]);
        assert_eq!(key.reblind(&[identity]), Err(ElementError::Identity { index: 0 }));
        let good = key.blind_tokens(&[Token([3; 32])])[0];
        // 2^255 - 1 is not a canonical field element encoding.
        let bad = Element([0xff; 32]);
        assert_eq!(key.reblind(&[good, bad]), Err(ElementError::NonCanonical { index: 1 }));
    }

    /// A blinding key with a fixed scalar `s` (test vectors only).
    fn fixed(s: Scalar) -> BlindingKey {
        BlindingKey(Zeroizing::new(s * Scalar::from(2u8).invert()))
    }

    /// docs/PROTOCOL.md §3.5, parsed from the document itself so that it cannot
    /// drift from the code: the token, `P(t)`, both scalars (derived from their
    /// labels), `A`, `B` and `b·A = a·B`.
    #[test]
    fn protocol_doc_group_vectors_hold() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section = doc.split("### 3.5").nth(1).expect("PROTOCOL.md has a §3.5");
        let block = section.split("```").nth(1).expect("§3.5 has a code block");
        // `name = hex`; a name whose value is not hex (`a = SHA-512(…) mod ℓ`) names
        // the `= hex` line after it; a hex value may continue on the next line.
        let mut values: Vec<(String, String)> = Vec::new();
        let mut name = String::new();
        for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let is_hex = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit());
            match (line.split_once('='), line.rsplit_once('=')) {
                (Some((left, _)), Some((_, value))) => {
                    if !left.trim().is_empty() {
                        name = line.to_owned();
                    }
                    if is_hex(value.trim()) {
                        values.push((name.clone(), value.trim().to_owned()));
                    }
                }
                _ if is_hex(line) => {
                    if let Some(last) = values.last_mut() {
                        last.1.push_str(line);
                    }
                }
                _ => {}
            }
        }
        let get = |prefix: &str| -> [u8; 32] {
            let hex_value = &values.iter().find(|(n, _)| n.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}")).1;
            hex::decode(hex_value).unwrap()[..32].try_into().unwrap()
        };
        let label_scalar = |label: &str| {
            let wide: [u8; 64] = Sha512::digest(label.as_bytes()).into();
            Scalar::from_bytes_mod_order_wide(&wide)
        };
        let t = Token(get("t"));
        assert_eq!(hash_to_group(&t).compress().to_bytes(), get("P(t)"));
        let (a, b) = (label_scalar("idmatch test scalar a"), label_scalar("idmatch test scalar b"));
        assert_eq!(a.to_bytes(), get("a = SHA-512"));
        assert_eq!(b.to_bytes(), get("b = SHA-512"));
        let (ka, kb) = (fixed(a), fixed(b));
        let big_a = ka.blind_tokens(&[t])[0];
        let big_b = kb.blind_tokens(&[t])[0];
        assert_eq!(big_a.0, get("A = a"));
        assert_eq!(big_b.0, get("B = b"));
        assert_eq!(kb.reblind(&[big_a]).unwrap()[0].0, get("b·A"));
        assert_eq!(ka.reblind(&[big_b]).unwrap()[0].0, get("b·A"));
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", BlindingKey::random().unwrap()), "BlindingKey(<redacted>)");
    }
}
