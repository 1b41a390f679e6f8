//! The binary BCH code \[511, 76, ≥171\] used as the linear code of the actively secure 1-out-of-N OT extension.
//!
//! Orrù, Orsini and Scholl, "Actively Secure 1-out-of-N OT Extension with Application to Private Set
//! Intersection", CT-RSA 2017, instantiate their OT extension with a binary linear code `C` of length `n`,
//! dimension `k` and minimum distance `d`; for security parameter 128 they use the \[511, 76, 171\] BCH code.
//! This module implements exactly that code, with the following byte-exact definition:
//!
//! - GF(2^9) is GF(2)\[x\] / (x^9 + x^4 + 1), and α = x (a primitive element, of multiplicative order 511).
//! - The generator polynomial g(x) is the lcm of the minimal polynomials over GF(2) of α^1, α^2, …, α^170
//!   (a narrow-sense primitive BCH code of designed distance 171). It has degree 435, so the code has dimension
//!   511 − 435 = 76. Its coefficients are hard-coded in [`GENERATOR`].
//! - Encoding is non-systematic: a message m ∈ {0,1}^76 is a `u128` whose bit i (i < 76, least significant
//!   first) is the coefficient of x^i of m(x); its codeword is c(x) = m(x)·g(x) over GF(2), of degree < 511.
//! - A [`Codeword`] is `[u64; 8]`: codeword bit i (the coefficient of x^i) is bit `i % 64` of word `i / 64`.
//!   Bit 511 (the top bit of word 7) is always 0.
//!
//! Invariants (all checked by the tests below):
//! - the encoding is GF(2)-linear: `encode(a ^ b) == encode(a) ^ encode(b)`, and `encode(0)` is all-zero;
//! - it is injective (the 76 rows x^i·g(x) are linearly independent);
//! - every non-zero codeword has Hamming weight ≥ 171 ([`CODE_DISTANCE`]): g vanishes at the 170 consecutive
//!   powers α^1, …, α^170, so the BCH bound gives minimum distance ≥ 171.

use std::sync::OnceLock;

/// Code length n: codewords have 511 bits.
pub const CODE_LEN: usize = 511;
/// Code dimension k: messages have 76 bits.
pub const CODE_DIM: usize = 76;
/// Designed distance d: every non-zero codeword has Hamming weight at least 171 (BCH bound).
pub const CODE_DISTANCE: usize = 171;

/// A codeword (or any 511-bit vector of the same shape): bit i is bit `i % 64` of word `i / 64`.
///
/// Codewords produced by [`Encoder::encode`] always have bit 511 (the top bit of word 7) clear.
pub type Codeword = [u64; 8];

/// The 436 coefficients of the generator polynomial g(x) (degree 435): bit i (bit `i % 64` of word `i / 64`)
/// is the coefficient of x^i. Bits 436 and above are 0.
///
/// g(x) = lcm of the minimal polynomials over GF(2) of α^1, …, α^170 in GF(2^9) = GF(2)\[x\]/(x^9 + x^4 + 1),
/// α = x; the tests recompute it from field arithmetic.
pub const GENERATOR: [u64; 7] = [
    0x8d8c59a7e1153e45,
    0x6e7cf2e2c8aaaae2,
    0x791732ac9184a83a,
    0x9b207848ffad3b37,
    0x24c0f6f91dbe79d8,
    0xb8a971bba5f0c3b5,
    0x000ad98bf9547f24,
];

/// Number of full 8-bit lookup tables: message bits 0..72.
const FULL_TABLES: usize = CODE_DIM / 8;
/// Number of message bits covered by the last (partial) table: message bits 72..76.
const TOP_BITS: usize = CODE_DIM % 8;

/// Table-driven encoder for the code.
///
/// Invariant: `low[t][b]` is the codeword of the message whose only non-zero bits are the bits of `b` placed at
/// positions `8t..8t+8`, and `top[b]` likewise for the 4 bits of `b` placed at positions 72..76. Encoding is
/// therefore one table lookup and an 8-word XOR per message byte.
pub struct Encoder {
    /// Tables for message bytes 0..9 (bits 0..72), 256 codewords each (boxed: 144 KiB).
    low: Box<[[Codeword; 256]; FULL_TABLES]>,
    /// Table for message bits 72..76 (the low nibble of byte 9).
    top: [Codeword; 1 << TOP_BITS],
}

impl Encoder {
    /// The process-wide encoder; its tables (about 145 KiB) are built on first use.
    pub fn get() -> &'static Encoder {
        static ENCODER: OnceLock<Encoder> = OnceLock::new();
        ENCODER.get_or_init(Encoder::build)
    }

    /// Build all lookup tables from the rows x^i·g(x), i < 76.
    fn build() -> Encoder {
        let rows: [Codeword; CODE_DIM] = std::array::from_fn(shifted_generator);
        // A fixed-size array (rather than a Vec) lets the compiler fully unroll the encode loop (~2.5x faster).
        let low = Box::new(std::array::from_fn(|t| subset_table(&rows[8 * t..8 * t + 8])));
        let top = subset_table(&rows[FULL_TABLES * 8..]);
        Encoder { low, top }
    }

    /// Encode: returns c(x) = m(x)·g(x), where bit i of `message` is the coefficient of x^i of m(x).
    ///
    /// Bits of `message` at or above [`CODE_DIM`] (76) are ignored. The result always has bit 511 clear.
    pub fn encode(&self, message: u128) -> Codeword {
        let bytes = message.to_le_bytes();
        // Byte 9 holds message bits 72..80; only its low nibble (bits 72..76) belongs to the message.
        let mut word = self.top[usize::from(bytes[FULL_TABLES] & 0x0f)];
        // Bytes 0..9 hold message bits 0..72; bytes 10..16 (bits 80..128) are never read.
        for (table, &byte) in self.low.iter().zip(&bytes) {
            xor_assign(&mut word, &table[usize::from(byte)]);
        }
        word
    }
}

/// Hamming weight (number of set bits) of a codeword-shaped vector.
#[cfg(test)]
pub fn weight(word: &Codeword) -> u32 {
    word.iter().map(|w| w.count_ones()).sum()
}

/// `acc ^= other`, word by word.
fn xor_assign(acc: &mut Codeword, other: &Codeword) {
    for (a, o) in acc.iter_mut().zip(other) {
        *a ^= o;
    }
}

/// x^shift · g(x) as a codeword; requires `shift < CODE_DIM`, so that the degree 435 + shift is at most 510.
fn shifted_generator(shift: usize) -> Codeword {
    let (words, bits) = (shift / 64, shift % 64);
    let mut out = [0u64; 8];
    for (i, &g) in GENERATOR.iter().enumerate() {
        out[i + words] ^= g << bits;
        if bits != 0 && i + words + 1 < out.len() {
            out[i + words + 1] ^= g >> (64 - bits);
        }
    }
    out
}

/// The table of all XOR-combinations of `rows`: entry `b` is the XOR of `rows[j]` over the set bits `j` of `b`.
/// Requires `N == 1 << rows.len()`.
fn subset_table<const N: usize>(rows: &[Codeword]) -> [Codeword; N] {
    debug_assert_eq!(N, 1 << rows.len());
    let mut table = [[0u64; 8]; N];
    for b in 1..N {
        // Entry b = entry (b without its lowest set bit) ^ row of that lowest bit.
        let mut entry = table[b & (b - 1)];
        xor_assign(&mut entry, &rows[b.trailing_zeros() as usize]);
        table[b] = entry;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// x^9 + x^4 + 1.
    const FIELD_POLY: u16 = 0x211;
    /// Order of the multiplicative group of GF(2^9).
    const GROUP_ORDER: usize = 511;
    const MESSAGE_MASK: u128 = (1 << CODE_DIM) - 1;

    /// GF(2^9) with exp/log tables for α = x.
    struct Field {
        exp: [u16; GROUP_ORDER],
        log: [usize; 512],
    }

    impl Field {
        fn new() -> Field {
            let mut exp = [0u16; GROUP_ORDER];
            let mut log = [usize::MAX; 512];
            let mut x: u16 = 1;
            for (i, e) in exp.iter_mut().enumerate() {
                // α has order exactly 511 iff the powers α^0..α^510 are all distinct (and non-zero).
                assert_eq!(log[usize::from(x)], usize::MAX, "x is not primitive modulo the field polynomial");
                *e = x;
                log[usize::from(x)] = i;
                x <<= 1;
                if x & 0x200 != 0 {
                    x ^= FIELD_POLY;
                }
            }
            assert_eq!(x, 1);
            Field { exp, log }
        }

        fn alpha_pow(&self, i: usize) -> u16 {
            self.exp[i % GROUP_ORDER]
        }

        fn mul(&self, a: u16, b: u16) -> u16 {
            if a == 0 || b == 0 {
                0
            } else {
                self.exp[(self.log[usize::from(a)] + self.log[usize::from(b)]) % GROUP_ORDER]
            }
        }
    }

    /// Polynomial product over GF(2); coefficient vectors, lowest degree first.
    fn gf2_poly_mul(a: &[bool], b: &[bool]) -> Vec<bool> {
        let mut out = vec![false; a.len() + b.len() - 1];
        for (i, &ai) in a.iter().enumerate() {
            if ai {
                for (j, &bj) in b.iter().enumerate() {
                    out[i + j] ^= bj;
                }
            }
        }
        out
    }

    fn bit(words: &[u64], i: usize) -> bool {
        words[i / 64] >> (i % 64) & 1 == 1
    }

    fn bits(words: &[u64], len: usize) -> Vec<bool> {
        (0..len).map(|i| bit(words, i)).collect()
    }

    fn degree(words: &[u64]) -> Option<usize> {
        (0..words.len() * 64).rev().find(|&i| bit(words, i))
    }

    /// Recompute g(x) from GF(2^9): product of the distinct minimal polynomials of α^1..α^170.
    fn compute_generator(field: &Field) -> Vec<bool> {
        let mut covered = [false; GROUP_ORDER];
        let mut g = vec![true];
        for r in 1..CODE_DISTANCE {
            if covered[r] {
                continue;
            }
            // Minimal polynomial of α^r = product of (x + α^j) over the cyclotomic coset {r·2^s mod 511}.
            let mut min_poly: Vec<u16> = vec![1];
            let mut j = r;
            loop {
                covered[j] = true;
                let root = field.alpha_pow(j);
                let mut next = vec![0u16; min_poly.len() + 1];
                for (k, &c) in min_poly.iter().enumerate() {
                    next[k + 1] ^= c;
                    next[k] ^= field.mul(root, c);
                }
                min_poly = next;
                j = j * 2 % GROUP_ORDER;
                if j == r {
                    break;
                }
            }
            assert!(min_poly.iter().all(|&c| c <= 1), "minimal polynomial of α^{r} not over GF(2)");
            g = gf2_poly_mul(&g, &min_poly.iter().map(|&c| c == 1).collect::<Vec<_>>());
        }
        g
    }

    /// Slow reference encoder: schoolbook product m(x)·g(x).
    fn reference_encode(message: u128) -> Vec<bool> {
        let m: Vec<bool> = (0..CODE_DIM).map(|i| message >> i & 1 == 1).collect();
        let mut c = gf2_poly_mul(&m, &bits(&GENERATOR, CODE_LEN - CODE_DIM + 1));
        c.push(false); // pad to 512 bits: bit 511 is zero
        c
    }

    fn xor(a: &Codeword, b: &Codeword) -> Codeword {
        let mut out = *a;
        xor_assign(&mut out, b);
        out
    }

    #[test]
    fn generator_matches_field_computation() {
        let g = compute_generator(&Field::new());
        assert_eq!(g.len() - 1, CODE_LEN - CODE_DIM, "deg g must be 435");
        assert_eq!(g.last(), Some(&true));
        assert_eq!(degree(&GENERATOR), Some(CODE_LEN - CODE_DIM));
        assert_eq!(bits(&GENERATOR, GENERATOR.len() * 64)[..g.len()], g[..]);
    }

    #[test]
    fn generator_vanishes_at_alpha_1_to_170() {
        let field = Field::new();
        let coefficients = bits(&GENERATOR, CODE_LEN - CODE_DIM + 1);
        for i in 1..CODE_DISTANCE {
            let x = field.alpha_pow(i);
            // Horner's rule, highest coefficient first.
            let value = coefficients.iter().rev().fold(0u16, |acc, &c| field.mul(acc, x) ^ u16::from(c));
            assert_eq!(value, 0, "g(α^{i}) != 0");
        }
    }

    #[test]
    fn encoding_is_linear_and_ignores_high_bits() {
        let encoder = Encoder::get();
        assert_eq!(encoder.encode(0), [0; 8]);
        assert_eq!(encoder.encode(1 << CODE_DIM), [0; 8]);
        assert_eq!(encoder.encode(u128::MAX), encoder.encode(MESSAGE_MASK));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let (a, b, high): (u128, u128, u128) = (rng.r#gen(), rng.r#gen(), rng.r#gen());
            assert_eq!(encoder.encode(a ^ b), xor(&encoder.encode(a), &encoder.encode(b)));
            assert_eq!(encoder.encode(a), encoder.encode((a & MESSAGE_MASK) | (high << CODE_DIM)));
        }
    }

    #[test]
    fn table_encoder_matches_polynomial_product() {
        let encoder = Encoder::get();
        let mut rng = StdRng::seed_from_u64(2);
        let singles = (0..CODE_DIM).map(|i| 1u128 << i);
        let randoms = (0..2_000).map(|_| rng.r#gen::<u128>() & MESSAGE_MASK);
        for message in [MESSAGE_MASK].into_iter().chain(singles).chain(randoms) {
            assert_eq!(bits(&encoder.encode(message), 512), reference_encode(message), "message {message:#x}");
        }
    }

    #[test]
    fn nonzero_codewords_have_weight_at_least_171() {
        let encoder = Encoder::get();
        let mut rng = StdRng::seed_from_u64(3);
        let singles = (0..CODE_DIM).map(|i| 1u128 << i);
        let pairs = (0..CODE_DIM).flat_map(|i| (0..i).map(move |j| 1u128 << i | 1 << j));
        let randoms = (0..200_000).map(|_| rng.r#gen::<u128>() & MESSAGE_MASK);
        let mut checked = 0;
        for message in singles.chain(pairs).chain(randoms).filter(|&m| m != 0) {
            let codeword = encoder.encode(message);
            assert!(weight(&codeword) >= CODE_DISTANCE as u32, "message {message:#x} has weight {}", weight(&codeword));
            assert_eq!(codeword[7] >> 63, 0, "bit 511 set for message {message:#x}");
            checked += 1;
        }
        assert!(checked >= 76 + 2850 + 199_000);
    }

    #[test]
    fn generator_rows_are_linearly_independent() {
        let encoder = Encoder::get();
        let mut rows: Vec<Codeword> = (0..CODE_DIM).map(|i| encoder.encode(1 << i)).collect();
        let mut rank = 0;
        for column in 0..512 {
            let Some(pivot) = (rank..rows.len()).find(|&r| bit(&rows[r], column)) else { continue };
            rows.swap(rank, pivot);
            let pivot_row = rows[rank];
            for (r, row) in rows.iter_mut().enumerate() {
                if r != rank && bit(row, column) {
                    xor_assign(row, &pivot_row);
                }
            }
            rank += 1;
        }
        assert_eq!(rank, CODE_DIM);
    }

    #[test]
    fn known_answer_vectors() {
        let encoder = Encoder::get();
        let mut expected_one = [0u64; 8];
        expected_one[..GENERATOR.len()].copy_from_slice(&GENERATOR);
        assert_eq!(encoder.encode(1), expected_one);
        assert_eq!(
            encoder.encode(0x0123_4567_89ab_cdef_0123),
            [
                0x3823b4019f35cf6f,
                0x50ebc21ba39cd5c7,
                0x2985b4da70366c7c,
                0x1669d95ea1bb6def,
                0xc4dd4839d9207116,
                0xc7af78027e339d38,
                0x904caed8a9ee1954,
                0x0b9f441b44de1bdb,
            ]
        );
    }
}
