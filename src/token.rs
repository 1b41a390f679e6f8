//! Keyed tokens, the policy's "privacy-protective identifier":
//! `token = HMAC-SHA256(key, kind ":" normalized)`, 32 bytes.
//!
//! A [`Tokenizer`] computes the HMAC key schedule (the inner and outer padded hash
//! states) once; each token then clones that fixed-size state, so the hot path does
//! not allocate. The cloned states hold key-derived material and are zeroized on drop
//! (the `zeroize` features of `hmac` and `sha2`).
//!
//! [`KeyFingerprint`] identifies a campaign key without revealing it, so that two
//! parties can check they hold the same key before anything is exchanged.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::key::Key;
use crate::normalize::Kind;

/// A 32-byte keyed token. `Debug` does not print it: tokens are pseudonymous
/// identifiers and stay out of logs; [`Token::to_hex`] is for requested outputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 32]);

/// Byte-wise (lexicographic) order, computed on two big-endian `u128` halves: the
/// same order as comparing the bytes, without a `memcmp` call per comparison
/// (sorting millions of tokens is a large share of preparing a set).
impl Ord for Token {
    fn cmp(&self, other: &Token) -> std::cmp::Ordering {
        let halves = |t: &Token| {
            let (hi, lo) = t.0.split_at(16);
            (
                u128::from_be_bytes(hi.try_into().unwrap_or_default()),
                u128::from_be_bytes(lo.try_into().unwrap_or_default()),
            )
        };
        halves(self).cmp(&halves(other))
    }
}

impl PartialOrd for Token {
    fn partial_cmp(&self, other: &Token) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Token {
    /// The first 16 bytes, as a sort or shuffle key.
    pub fn head(&self) -> [u8; 16] {
        let mut head = [0u8; 16];
        head.copy_from_slice(&self.0[..16]);
        head
    }

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

/// The indices `0..n` of a list of tokens (`token(i)` is the i-th), each with its
/// `key`, ordered by key and, within a run of equal keys, by token: equal tokens are
/// adjacent. Sorting 16-byte (key, index) pairs moves a third of the bytes that
/// sorting the entries themselves would; whole tokens are compared only where two
/// keys are equal (equal tokens, or a key collision).
pub fn group_equal<T, K>(n: usize, token: T, key: K) -> Vec<(u64, usize)>
where
    T: Fn(usize) -> Token + Sync,
    K: Fn(&Token) -> u64 + Sync,
{
    use rayon::prelude::*;
    let mut order: Vec<(u64, usize)> = (0..n).into_par_iter().map(|i| (key(&token(i)), i)).collect();
    order.par_sort_unstable();
    for run in order.chunk_by_mut(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        run.sort_unstable_by_key(|&(_, i)| token(i));
    }
    order
}

/// Computes tokens under one key.
#[derive(Clone)]
pub struct Tokenizer {
    mac: Hmac<Sha256>,
}

impl Tokenizer {
    /// Precomputes the HMAC key schedule for `key`.
    #[allow(clippy::expect_used, reason = "HMAC takes keys of any length: this cannot fail")]
    pub fn new(key: &Key) -> Tokenizer {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes()).expect("HMAC accepts any key length");
        Tokenizer { mac }
    }

    /// `HMAC-SHA256(key, label ":" value)`.
    pub fn token(&self, label: Label, value: &str) -> Token {
        self.token_of_bytes(label, value.as_bytes())
    }

    /// `HMAC-SHA256(key, label ":" value)` of a value that is not text (a token's
    /// 32 bytes, for [`Label::Shard`]).
    pub fn token_of_bytes(&self, label: Label, value: &[u8]) -> Token {
        let mut mac = self.mac.clone();
        mac.update(label.as_str().as_bytes());
        mac.update(b":");
        mac.update(value);
        Token(mac.finalize().into_bytes().into())
    }
}

/// Every domain-separation label hashed before a value (`label ":" value`), in one
/// place: distinct labels keep an email, a phone number, a record id and a line
/// number with the same text from ever producing the same token or digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    /// A normalized email address.
    Email,
    /// A normalized phone number (E.164).
    Phone,
    /// A record id, for opt-out digests (`id`).
    Id,
    /// A record whose id is its line number (`line`): never equal to an opted-out
    /// id, so an opted-out id `42` cannot remove line 42.
    Line,
    /// The opt-out store's key fingerprint (`fingerprint`).
    StoreFingerprint,
    /// A token's shard (`shard`, followed by the token's 32 raw bytes:
    /// docs/PROTOCOL.md §13).
    Shard,
}

impl Label {
    /// The ASCII label.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Email => "email",
            Label::Phone => "phone",
            Label::Id => "id",
            Label::Line => "line",
            Label::StoreFingerprint => "fingerprint",
            Label::Shard => "shard",
        }
    }
}

impl From<Kind> for Label {
    fn from(kind: Kind) -> Label {
        match kind {
            Kind::Email => Label::Email,
            Kind::Phone => Label::Phone,
        }
    }
}

/// The domain-separation label of [`KeyFingerprint`]. It contains no `:`, so it can
/// never equal a token's `label ":" value` input.
pub const KEY_FINGERPRINT_LABEL: &str = "idmatch key fingerprint v1";

/// `HMAC-SHA256(key, "idmatch key fingerprint v1")`: names a campaign key without
/// revealing it (docs/PROTOCOL.md §5.3). `Debug` does not print it.
#[derive(Clone, Copy)]
pub struct KeyFingerprint([u8; 32]);

impl KeyFingerprint {
    /// The fingerprint of `key`.
    pub fn of(key: &Key) -> KeyFingerprint {
        let mut mac = Tokenizer::new(key).mac;
        mac.update(KEY_FINGERPRINT_LABEL.as_bytes());
        KeyFingerprint(mac.finalize().into_bytes().into())
    }

    /// The 32 bytes sent in `Hello.key_fingerprint`.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `theirs` (as received, of any length) is this fingerprint, in constant
    /// time.
    pub fn matches(&self, theirs: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        theirs.len() == self.0.len() && bool::from(self.0.ct_eq(theirs))
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFingerprint(<redacted>)")
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
    fn group_equal_makes_equal_tokens_adjacent_even_when_keys_collide() {
        let tokens: Vec<Token> = [3u8, 1, 3, 2, 1, 3].iter().map(|&b| Token([b; 32])).collect();
        // A key that collides for every token: the tokens alone must group them.
        for key in [|_: &Token| 7u64, |t: &Token| u64::from(t.0[0])] {
            let order = group_equal(tokens.len(), |i| tokens[i], key);
            let mut seen: Vec<Token> = Vec::new();
            for run in order.chunk_by(|a, b| tokens[a.1] == tokens[b.1]) {
                assert!(!seen.contains(&tokens[run[0].1]), "a token appears in two runs");
                seen.push(tokens[run[0].1]);
            }
            assert_eq!(seen.len(), 3);
            let mut indices: Vec<usize> = order.iter().map(|&(_, i)| i).collect();
            indices.sort_unstable();
            assert_eq!(indices, (0..tokens.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn tokens_order_as_their_bytes() {
        let tokenizer = Tokenizer::new(&Key::from_bytes([3; 32]));
        let mut tokens: Vec<Token> = (0..2000).map(|i| tokenizer.token(Label::Email, &i.to_string())).collect();
        // Tokens equal in their first half, or in all but the last byte.
        let mut near = tokens[0];
        near.0[31] ^= 1;
        let mut half = tokens[1];
        half.0[16..].copy_from_slice(&tokens[0].0[16..]);
        tokens.extend([near, half, tokens[0]]);
        for a in &tokens[..50] {
            for b in &tokens {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0));
            }
        }
        let mut sorted = tokens.clone();
        sorted.sort();
        tokens.sort_by_key(|t| t.0);
        assert!(sorted == tokens);
    }

    #[test]
    fn matches_rfc_4231_style_reference() {
        // HMAC-SHA256(key = 32 x 0x0b, "email:alice@example.com"), computed independently
        // with Python's hmac module.
        let tokenizer = Tokenizer::new(&Key::from_bytes([0x0b; 32]));
        let t = tokenizer.token(Label::Email, "alice@example.com");
        assert_eq!(t.to_hex(), REFERENCE);
    }

    /// The test vector of docs/PROTOCOL.md §5.3 (computed independently with
    /// Python's hmac module).
    const FINGERPRINT_VECTORS: [([u8; 32], &str); 2] = [
        ([0x0b; 32], "f2a2bd38726d1c8e3bb623206b05ff3571e146a34cfeb3046eec234b62d5269c"),
        (
            [
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                28, 29, 30, 31,
            ],
            "4a81e5160f0b3ba4909cb5e4356aa16f670713b9aa1bbf72b835165d0b386003",
        ),
    ];

    #[test]
    fn key_fingerprint_matches_the_protocol_test_vector() {
        let protocol = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
        for (bytes, want) in FINGERPRINT_VECTORS {
            let fingerprint = KeyFingerprint::of(&Key::from_bytes(bytes));
            assert_eq!(hex::encode(fingerprint.as_bytes()), want);
            assert!(protocol.contains(want), "docs/PROTOCOL.md lists {want}");
            assert!(fingerprint.matches(&hex::decode(want).unwrap()));
            assert!(!fingerprint.matches(&[]) && !fingerprint.matches(&[0; 32]) && !fingerprint.matches(&[0; 33]));
        }
        assert_eq!(format!("{:?}", KeyFingerprint::of(&Key::from_bytes([1; 32]))), "KeyFingerprint(<redacted>)");
    }

    const REFERENCE: &str = "60014137f9c0d61f613b64d32a71b9f962bbe34e3f7a0bf0088a71a445414f90";

    #[test]
    fn kind_separates_domains_and_key_matters() {
        let a = Tokenizer::new(&Key::from_bytes([1; 32]));
        let b = Tokenizer::new(&Key::from_bytes([2; 32]));
        assert_ne!(a.token(Label::Email, "x"), a.token(Label::Phone, "x"));
        assert_ne!(a.token(Label::Email, "x"), b.token(Label::Email, "x"));
        assert_eq!(a.token(Label::Email, "x"), a.clone().token(Label::Email, "x"));
        assert_eq!(format!("{:?}", a.token(Label::Email, "x")), "Token(<redacted>)");
    }
}
