//! Keyed tokens, the policy's "privacy-protective identifier":
//! `token = HMAC-SHA256(key, kind ":" normalized)`, 32 bytes.
//!
//! A [`Tokenizer`] computes the HMAC key schedule (the inner and outer padded hash
//! states) once; each token then clones that fixed-size state, so the hot path does
//! not allocate. The cloned states hold key-derived material and are zeroized on drop
//! (the `zeroize` features of `hmac` and `sha2`).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::key::Key;

/// A 32-byte keyed token. `Debug` does not print it: tokens are pseudonymous
/// identifiers and stay out of logs; [`Token::to_hex`] is for requested outputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub [u8; 32]);

impl Token {
    /// Lowercase hex, for token files the user asked for.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Computes tokens under one key.
#[derive(Clone)]
pub struct Tokenizer {
    mac: Hmac<Sha256>,
}

impl Tokenizer {
    pub fn new(key: &Key) -> Tokenizer {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes()).expect("HMAC accepts any key length");
        Tokenizer { mac }
    }

    /// `HMAC-SHA256(key, label ":" value)`; `label` is `email`, `phone`, or (for
    /// opt-out digests) `id`.
    pub fn token(&self, label: &str, value: &str) -> Token {
        let mut mac = self.mac.clone();
        mac.update(label.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        Token(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokenizer(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_style_reference() {
        // HMAC-SHA256(key = 32 x 0x0b, "email:alice@example.com"), computed independently
        // with Python's hmac module.
        let tokenizer = Tokenizer::new(&Key::from_bytes([0x0b; 32]));
        let t = tokenizer.token("email", "alice@example.com");
        assert_eq!(t.to_hex(), REFERENCE);
    }

    const REFERENCE: &str = "60014137f9c0d61f613b64d32a71b9f962bbe34e3f7a0bf0088a71a445414f90";

    #[test]
    fn kind_separates_domains_and_key_matters() {
        let a = Tokenizer::new(&Key::from_bytes([1; 32]));
        let b = Tokenizer::new(&Key::from_bytes([2; 32]));
        assert_ne!(a.token("email", "x"), a.token("phone", "x"));
        assert_ne!(a.token("email", "x"), b.token("email", "x"));
        assert_eq!(a.token("email", "x"), a.clone().token("email", "x"));
        assert_eq!(format!("{:?}", a.token("email", "x")), "Token(<redacted>)");
    }
}
