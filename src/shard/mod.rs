//! Sharding: a keyed partition of tokens into `N` shards that both parties compute
//! identically from the campaign key (docs/PROTOCOL.md §13), so that one match of
//! two large sets becomes `N` independent matches of two small ones.
//!
//! `shard(t) = ⌊x · N / 2⁶⁴⌋` where `x` is the first 8 bytes, big-endian, of
//! `HMAC-SHA256(campaign_key, "shard:" ‖ t)` and `t` is the 32-byte token: equal
//! tokens land in the same shard, so the intersection of the two sets is the
//! disjoint union of the shards' intersections. The shard is a keyed pseudo-random
//! function of the token under a label of its own ([`Label::Shard`]): it is
//! independent of the bits the engines hash (the token itself) and, for whoever does
//! not hold the campaign key, of the identifier. Multiply-shift maps the 64-bit
//! value onto `0..N` for any `N`, not only powers of two: every shard receives
//! `⌊2⁶⁴/N⌋` or `⌈2⁶⁴/N⌉` of the 2⁶⁴ values, so a shard's probability differs from
//! `1/N` by less than `2⁻⁶⁴`.
//!
//! Opt-outs and suppressions are applied before sharding: a record excluded by them
//! reaches no shard file.
//!
//! - [`file`]: the shard file format (`idmatch shard`'s output and the local match's
//!   spill), refused when made under another key, for another `N`, for another
//!   shard, or truncated;
//! - [`spill`]: streaming one input file into `N` shard files, filter first;
//! - [`split`]: `idmatch shard`, one input into `N` shard files, atomically;
//! - [`local`]: the out-of-core local match (`idmatch match --shards N`);
//! - `spool`: the local match's private scratch records (ids to check for repeats,
//!   matched records to merge).

pub mod file;
pub mod spill;
pub mod split;
pub(crate) mod spool;

use std::num::NonZeroU32;

use crate::key::Key;
use crate::records::RecordSet;
use crate::token::{Label, Token, Tokenizer};

pub use file::{ShardFileError, ShardHeader, ShardReader, ShardWriter};

/// The largest number of shards: each shard is a file (several in a local match)
/// open at once while an input is split.
pub const MAX_SHARDS: u32 = 4096;

/// Which shard each token belongs to, under one campaign key and one `N`.
/// `Debug` does not print the key.
#[derive(Clone, Debug)]
pub struct ShardRule {
    keyed: Tokenizer,
    shards: NonZeroU32,
}

impl ShardRule {
    /// The rule for `shards` shards under `key` (the campaign key).
    pub fn new(key: &Key, shards: NonZeroU32) -> ShardRule {
        ShardRule { keyed: Tokenizer::new(key), shards }
    }

    /// `N`.
    pub fn shards(&self) -> u32 {
        self.shards.get()
    }

    /// The shard of `token`, in `0..N`.
    pub fn shard_of(&self, token: &Token) -> u32 {
        let h = self.keyed.token_of_bytes(Label::Shard, &token.0);
        let mut head = [0u8; 8];
        head.copy_from_slice(&h.0[..8]);
        multiply_shift(u64::from_be_bytes(head), self.shards.get())
    }
}

/// `⌊x · n / 2⁶⁴⌋`: `x` mapped onto `0..n`, every value receiving `⌊2⁶⁴/n⌋` or
/// `⌈2⁶⁴/n⌉` of the inputs.
pub(crate) fn multiply_shift(x: u64, n: u32) -> u32 {
    ((u128::from(x) * u128::from(n)) >> 64) as u32
}

/// The shard (under `rule`) of each of `records.entries()`, in order, for
/// `crate::prepare::prepared_shard`: computed once per run and side, one keyed hash
/// per identifier. `rule` has at most [`MAX_SHARDS`] shards, so a shard fits 16 bits.
pub fn assignment(records: &RecordSet, rule: &ShardRule) -> Vec<u16> {
    use rayon::prelude::*;
    records.entries().par_iter().map(|e| rule.shard_of(&e.token) as u16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Kind;

    /// docs/PROTOCOL.md §13.1's vectors, parsed from the document itself: the
    /// `message`, `t` and `h` lines of the section's block of vectors, and every
    /// `N = n → shard s` line below a message.
    #[test]
    fn protocol_doc_shard_vectors_hold() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section = doc.split("### 13.1").nth(1).expect("PROTOCOL.md has a §13.1");
        let block = section
            .split("```")
            .skip(1)
            .step_by(2)
            .find(|block| block.contains("message ="))
            .expect("§13.1 has a block of test vectors");
        let key = Key::from_bytes([0x0b; 32]);
        let tokenizer = Tokenizer::new(&key);
        let (mut token, mut checked) = (None, 0);
        for line in block.lines().map(str::trim) {
            let Some((name, value)) = line.split_once('=') else { continue };
            let (name, value) = (name.trim(), value.trim());
            match name {
                "message" => {
                    let message = value.trim_matches('"');
                    let (kind, normalized) = message.split_once(':').expect("kind:value");
                    let kind = if kind == "email" { Kind::Email } else { Kind::Phone };
                    token = Some(tokenizer.token(kind.into(), normalized));
                }
                "t" => assert_eq!(token.expect("a message first").to_hex(), value),
                "h" => {
                    let h = tokenizer.token_of_bytes(Label::Shard, &token.expect("a message first").0);
                    assert_eq!(h.to_hex(), value);
                }
                "N" => {
                    let (n, shard) = value.split_once("→ shard").expect("N = n → shard s");
                    let n: u32 = n.trim().parse().expect("N");
                    let want: u32 = shard.trim().parse().expect("shard");
                    let rule = ShardRule::new(&key, NonZeroU32::new(n).expect("N > 0"));
                    assert_eq!(rule.shard_of(&token.expect("a message first")), want, "N = {n}");
                    checked += 1;
                }
                _ => {}
            }
        }
        assert!(checked >= 10, "§13.1 lists the vectors ({checked} checked)");
    }

    #[test]
    fn multiply_shift_is_exact_at_the_edges_and_balanced() {
        assert_eq!(multiply_shift(0, 7), 0);
        assert_eq!(multiply_shift(u64::MAX, 7), 6);
        assert_eq!(multiply_shift(u64::MAX, 1), 0);
        assert_eq!(multiply_shift(u64::MAX, u32::MAX), u32::MAX - 1);
        // Tokens spread over the shards: each of 7 shards gets 1/7 of 70,000 tokens
        // within a few standard deviations (about 92).
        let key = Key::from_bytes([5; 32]);
        let rule = ShardRule::new(&key, NonZeroU32::new(7).unwrap());
        let tokenizer = Tokenizer::new(&key);
        let mut counts = [0u32; 7];
        for i in 0..70_000 {
            counts[rule.shard_of(&tokenizer.token(Label::Email, &i.to_string())) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c.abs_diff(10_000) < 500), "{counts:?}");
    }

    #[test]
    fn the_rule_depends_on_the_key_and_not_on_the_token_prefix() {
        let n = NonZeroU32::new(1000).unwrap();
        let a = ShardRule::new(&Key::from_bytes([1; 32]), n);
        let b = ShardRule::new(&Key::from_bytes([2; 32]), n);
        let tokens: Vec<Token> = (0..64u8).map(|i| Token([i; 32])).collect();
        let differ = tokens.iter().filter(|t| a.shard_of(t) != b.shard_of(t)).count();
        assert!(differ > 50, "{differ} of 64 tokens change shard with the key");
        assert!(format!("{a:?}").contains("redacted"));
    }
}
