//! A party's prepared set: its records' tokens deduplicated and shuffled, with the
//! way back from each distinct token to every record (and kind) that carried it.
//!
//! Invariant: the order of the distinct tokens, which is the order in which they are
//! blinded and sent, is a fresh random permutation for every set (the order of
//! `AES-128(k, token[0..16])` under a key `k` drawn for this set alone and then
//! dropped): it says nothing about the tokens, the records or the file.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::normalize::Kind;
use crate::token::Token;

/// The kinds through which one record matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u8);

impl KindSet {
    /// Adds `kind`.
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= 1 << kind as u8;
    }
    /// Whether `kind` is in the set.
    pub fn contains(self, kind: Kind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }
    /// The set as one byte: bit `k` for the kind of value `k` (a run's stored
    /// matches, `service::runs`).
    #[cfg(feature = "server")]
    pub(crate) fn bits(self) -> u8 {
        self.0
    }
    /// The set of [`bits`](Self::bits), if it names only known kinds.
    #[cfg(feature = "server")]
    pub(crate) fn from_bits(bits: u8) -> Option<KindSet> {
        let known = Kind::ALL.into_iter().fold(0u8, |all, kind| all | 1 << kind as u8);
        (bits & !known == 0).then_some(KindSet(bits))
    }
    /// `email`, `phone` or `email;phone`.
    pub fn joined(self) -> String {
        Kind::ALL.into_iter().filter(|&k| self.contains(k)).map(Kind::label).collect::<Vec<_>>().join(";")
    }
}

/// Distinct tokens of the surviving records, in random order, with their holders.
///
/// A set may be [padded](Self::pad_to) with dummy tokens, held by no record: they are
/// blinded and sent like the others, and match nothing.
#[derive(Debug)]
pub struct PreparedSet {
    tokens: Vec<Token>,
    /// `holders[starts[i]..starts[i + 1]]` are the (record, kind) pairs of token i
    /// (none for a dummy).
    holders: Vec<(u32, Kind)>,
    starts: Vec<usize>,
    excluded_records: u64,
    identifiers: u64,
    dummies: usize,
}

impl PreparedSet {
    /// Prepares the `(token, record, kind)` entries of the records that survived
    /// the opt-out or suppression filter (`excluded_records` is how many did not;
    /// see [`crate::prepare`]).
    pub fn new(entries: Vec<(Token, u32, Kind)>, excluded_records: u64) -> PreparedSet {
        let identifiers = entries.len() as u64;
        let mut shuffle_key = Zeroizing::new([0u8; 16]);
        rand::thread_rng().fill_bytes(&mut shuffle_key[..]);
        let shuffle = Aes128::new(&Array::from(*shuffle_key));
        let key = |t: &Token| {
            let mut block = Array::from(t.head());
            shuffle.encrypt_block(&mut block);
            u64::from_le_bytes(block[..8].try_into().unwrap_or_default())
        };
        let order = crate::token::group_equal(entries.len(), |i| entries[i].0, key);
        let mut tokens = Vec::new();
        let mut holders = Vec::with_capacity(entries.len());
        let mut starts = Vec::new();
        for run in order.chunk_by(|a, b| a.0 == b.0 && entries[a.1].0 == entries[b.1].0) {
            tokens.push(entries[run[0].1].0);
            starts.push(holders.len());
            holders.extend(run.iter().map(|&(_, i)| (entries[i].1, entries[i].2)));
        }
        starts.push(holders.len());
        PreparedSet { tokens, holders, starts, excluded_records, identifiers, dummies: 0 }
    }

    /// Adds dummy tokens until the set has `size` tokens (nothing if it has as many
    /// already), then puts all of them in a fresh uniformly random order: how the
    /// shards of a run are made one size, so that their sizes say nothing about which
    /// identifiers fall into which shard (docs/PRIVACY.md, "Shards").
    ///
    /// Security: a dummy is 32 bytes from the thread's CSPRNG, so it equals a real
    /// token of either side with probability about `n · 2^-256`, and it is blinded
    /// and sent like a real one; after the shuffle its position says nothing either.
    /// It is held by no record, so it never reaches an output.
    pub fn pad_to(&mut self, size: usize) {
        use rand::seq::SliceRandom;
        let len = self.tokens.len();
        if size <= len {
            return;
        }
        let mut rng = rand::thread_rng();
        let mut order: Vec<usize> = (0..size).collect();
        order.shuffle(&mut rng);
        let mut tokens = Vec::with_capacity(size);
        let mut holders = Vec::with_capacity(self.holders.len());
        let mut starts = Vec::with_capacity(size + 1);
        for i in order {
            starts.push(holders.len());
            if i < len {
                tokens.push(self.tokens[i]);
                holders.extend_from_slice(&self.holders[self.starts[i]..self.starts[i + 1]]);
            } else {
                let mut dummy = [0u8; 32];
                rng.fill_bytes(&mut dummy);
                tokens.push(Token(dummy));
            }
        }
        starts.push(holders.len());
        self.dummies += size - len;
        (self.tokens, self.holders, self.starts) = (tokens, holders, starts);
    }

    /// The distinct tokens, in the order they are blinded and sent.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Number of tokens sent: the distinct tokens and the dummies.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Number of dummy tokens ([`pad_to`](Self::pad_to)).
    pub fn dummies(&self) -> usize {
        self.dummies
    }

    /// Whether there are no tokens to send.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Records left out before blinding.
    pub fn excluded_records(&self) -> u64 {
        self.excluded_records
    }

    /// Identifiers of the surviving records, before deduplication.
    pub fn identifiers(&self) -> u64 {
        self.identifiers
    }

    /// The records holding any matched token, in record order, with the kinds that
    /// matched. `matched[i]` says whether token i matched; `matched` must not be longer
    /// than [`len`](Self::len) (it panics otherwise).
    pub fn matched_records(&self, matched: &[bool]) -> Vec<(u32, KindSet)> {
        let mut by_record: Vec<(u32, KindSet)> = Vec::new();
        for (i, _) in matched.iter().enumerate().filter(|(_, m)| **m) {
            for &(record, kind) in &self.holders[self.starts[i]..self.starts[i + 1]] {
                let mut kinds = KindSet::default();
                kinds.insert(kind);
                by_record.push((record, kinds));
            }
        }
        merge_matched_records(by_record)
    }
}

/// `matches` (record, kinds) pairs in any order, repeats included, as one list in
/// record order with each record once, its kinds the union of its pairs': how one
/// set's matches are gathered, and how the matches of a sharded run's shards (a
/// record's email and phone may fall in different shards) are merged.
pub fn merge_matched_records(mut matches: Vec<(u32, KindSet)>) -> Vec<(u32, KindSet)> {
    matches.sort_unstable_by_key(|&(r, _)| r);
    matches.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            earlier.1.0 |= later.1.0;
            true
        } else {
            false
        }
    });
    matches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(byte: u8) -> Token {
        Token([byte; 32])
    }

    /// Records 0..4, record 3 holding token 1 too (by phone).
    fn four_records() -> PreparedSet {
        let mut entries: Vec<_> = (0..4u32).map(|r| (token(r as u8), r, Kind::Email)).collect();
        entries.push((token(1), 3, Kind::Phone));
        PreparedSet::new(entries, 0)
    }

    #[test]
    fn padding_adds_dummies_that_no_record_holds_in_random_places() {
        let mut moved_forward = false;
        for _ in 0..20 {
            let mut set = four_records();
            let real: Vec<Token> = set.tokens().to_vec();
            set.pad_to(8);
            assert_eq!((set.len(), set.dummies(), set.identifiers()), (8, 4, 5));
            let dummies: Vec<usize> = (0..8).filter(|&i| !real.contains(&set.tokens()[i])).collect();
            assert_eq!(dummies.len(), 4, "every real token is still there, once");
            moved_forward |= dummies.iter().any(|&i| i < 4);
            // Everything matched: the real tokens' records, and nothing for the dummies.
            let only_dummies: Vec<bool> = (0..8).map(|i| dummies.contains(&i)).collect();
            assert_eq!(set.matched_records(&only_dummies), vec![]);
            let all = set.matched_records(&[true; 8]);
            assert_eq!(all.iter().map(|m| m.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
            assert_eq!(all[3].1.joined(), "email;phone");
        }
        // All four dummies at the end in 20 shuffles of 8: probability 70^-20.
        assert!(moved_forward, "dummies are shuffled among the real tokens");
    }

    #[test]
    fn padding_to_no_more_than_the_size_changes_nothing() {
        let mut set = four_records();
        let before = set.tokens().to_vec();
        set.pad_to(3);
        set.pad_to(4);
        assert_eq!((set.tokens(), set.dummies()), (&before[..], 0));
    }
}
