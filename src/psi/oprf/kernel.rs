//! The symmetric-key work of the OPRF engine: the hash domains, the AES-CTR PRG,
//! the bit-matrix transposes between the wire's columns and the table's rows, the
//! consistency-check sums, and hashing decoded rows to outputs, on every core.
//!
//! Domains (byte-exact in `docs/PROTOCOL.md` §11.3):
//! - `H(t) = SHA-256("idmatch-oprf-v2 H" ‖ hash_key ‖ t)`: bytes `0..10` read as a
//!   little-endian integer and cut to 76 bits are `v(t)`, the value the receiver
//!   encodes; bytes `16..32` are the table key of `t` ([`super::okvs`] rows).
//! - PRG: a column is the AES-128-CTR keystream under a 16-byte seed, counter block
//!   starting at 0 (128-bit big-endian counter).
//! - Check challenge: `χ = PRG(seed_S ⊕ seed_R)`, 8 bytes per matrix row,
//!   little-endian: bit `b` of `χ_j` puts row `j` in combination `b`.
//! - `Out(t, r) = SHA-256("idmatch-oprf-v2 out" ‖ t ‖ r)[0..ℓ2/8]`, `r` the 64-byte
//!   decoded row (bit `i` = column `i`, least significant bit first; bit 511 zero).
//! - Commitment `SHA-256("idmatch-oprf-v2 commit" ‖ seed_S)`.
//!
//! Layout: a matrix row is a [`Row`] (`[u64; 8]`, bit `i` of word `i / 64` is column
//! `i`); a column is a `Vec` of `h / 64` words, row `r` at bit `r % 64` of word
//! `r / 64`, and goes on the wire as those words' little-endian bytes (row `r` at
//! byte `r >> 3`, bit `r & 7`). Invariants: seeds never appear in a `Debug` string; the PRG's round
//! keys are wiped on drop (`aes` with `zeroize`).

use aes::Aes128;
use aes::cipher::{Array, KeyIvInit, StreamCipher};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::params::CHECK_PLANES;
use crate::token::Token;

/// Domain-separation label of `H`, `docs/PROTOCOL.md` §11.3.
pub const LABEL_H: &[u8] = b"idmatch-oprf-v2 H";
/// Domain-separation label of `Out`, `docs/PROTOCOL.md` §11.3.
pub const LABEL_OUT: &[u8] = b"idmatch-oprf-v2 out";
/// Domain-separation label of the sender's commitment to its check seed.
pub const LABEL_COMMIT: &[u8] = b"idmatch-oprf-v2 commit";
/// Bits of `v(t)`: the code's dimension.
const VALUE_MASK: u128 = (1u128 << super::code::CODE_DIM) - 1;

/// One matrix row: 512 bits, the top one always zero.
pub type Row = [u64; 8];
type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// What `H` gives for one token: the value to encode and the table key.
#[derive(Clone, Copy)]
pub struct Hashed {
    /// `v(t)`, 76 bits.
    pub value: u128,
    /// The table key of `t`.
    pub key: [u8; 16],
}

/// `H(t)` for every token, in order.
pub fn hash_all(hash_key: &[u8; 16], tokens: &[Token]) -> Vec<Hashed> {
    tokens.par_iter().map(|t| hash(hash_key, &t.0)).collect()
}

/// `H(t)`.
pub fn hash(hash_key: &[u8; 16], token: &[u8; 32]) -> Hashed {
    let d = Sha256::new().chain_update(LABEL_H).chain_update(hash_key).chain_update(token).finalize();
    let mut value = [0u8; 16];
    value[..10].copy_from_slice(&d[..10]);
    let mut key = [0u8; 16];
    key.copy_from_slice(&d[16..32]);
    Hashed { value: u128::from_le_bytes(value) & VALUE_MASK, key }
}

/// The commitment to the sender's check seed.
pub fn commitment(seed: &[u8; 16]) -> [u8; 32] {
    Sha256::new().chain_update(LABEL_COMMIT).chain_update(seed).finalize().into()
}

/// The PRG output of `seed` as `words` little-endian words (a column).
pub fn prg_words(seed: &[u8; 16], words: usize) -> Vec<u64> {
    let mut out = vec![0u64; words];
    xor_prg_words(seed, &mut out);
    out
}

/// XORs the PRG output of `seed`, read as little-endian words, into `words`,
/// through a small buffer (no column-sized allocation).
pub fn xor_prg_words(seed: &[u8; 16], words: &mut [u64]) {
    let mut ctr = Aes128Ctr::new(&Array::from(*seed), &Array::from([0u8; 16]));
    let mut buffer = [0u8; 4096];
    for part in words.chunks_mut(buffer.len() / 8) {
        let bytes = &mut buffer[..8 * part.len()];
        bytes.fill(0);
        ctr.apply_keystream(bytes);
        for (w, b) in part.iter_mut().zip(bytes.chunks_exact(8)) {
            *w ^= u64::from_le_bytes(b.try_into().unwrap_or_default());
        }
    }
    buffer.zeroize();
}

/// Little-endian bytes to words (`bytes.len()` a multiple of 8).
pub fn to_words(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect()
}

/// Words to little-endian bytes.
pub fn to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The check challenge: one word per row.
pub fn challenge(sender_seed: &[u8; 16], receiver_seed: &[u8; 16], height: usize) -> Vec<u64> {
    let key: [u8; 16] = std::array::from_fn(|i| sender_seed[i] ^ receiver_seed[i]);
    prg_words(&key, height)
}

/// The `width` columns (each `rows.len() / 64` words) of `rows` (a multiple of 64
/// of them).
pub fn rows_to_columns(rows: &[Row], width: usize) -> Vec<Vec<u64>> {
    let blocks = rows.len() / 64;
    // One task per word of the row: 64 columns each.
    (0..width.div_ceil(64))
        .into_par_iter()
        .flat_map_iter(|word| {
            let columns = (width - 64 * word).min(64);
            let mut out = vec![vec![0u64; blocks]; columns];
            let mut block = [0u64; 64];
            for b in 0..blocks {
                for (r, slot) in block.iter_mut().enumerate() {
                    *slot = rows[64 * b + r][word];
                }
                transpose64(&mut block);
                for (column, &v) in out.iter_mut().zip(block.iter()) {
                    column[b] = v;
                }
            }
            out
        })
        .collect()
}

/// The rows of `columns` (at most 512, each of the same whole number of words, as
/// [`rows_to_columns`] returns them). Bits past the last column are zero.
pub fn columns_to_rows<C: AsRef<[u64]> + Sync>(columns: &[C]) -> Vec<Row> {
    let blocks = columns.first().map_or(0, |c| c.as_ref().len());
    let width = columns.len();
    let mut rows = vec![[0u64; 8]; 64 * blocks];
    rows.par_chunks_mut(64).enumerate().for_each(|(b, rows)| {
        let mut block = [0u64; 64];
        for word in 0..width.div_ceil(64) {
            block.fill(0);
            for (slot, column) in block.iter_mut().zip(&columns[64 * word..width.min(64 * word + 64)]) {
                *slot = column.as_ref()[b];
            }
            transpose64(&mut block);
            for (r, row) in rows.iter_mut().enumerate() {
                row[word] = block[r];
            }
        }
    });
    rows
}

/// Transposes a 64×64 bit matrix in place: bit `c` of word `r` ↔ bit `r` of word `c`.
fn transpose64(m: &mut [u64; 64]) {
    let mut width = 32;
    let mut mask = 0x0000_0000_FFFF_FFFFu64;
    while width != 0 {
        let mut k = 0;
        while k < 64 {
            for i in k..k + width {
                let t = ((m[i] >> width) ^ m[i + width]) & mask;
                m[i] ^= t << width;
                m[i + width] ^= t;
            }
            k += 2 * width;
        }
        width >>= 1;
        mask ^= mask << width;
    }
}

/// `Σ_{j : bit b of χ_j} rows[j]` for each of the [`CHECK_PLANES`] combinations.
pub fn row_sums(rows: &[Row], chi: &[u64]) -> Vec<Row> {
    rows.par_chunks(4096)
        .zip(chi.par_chunks(4096))
        .map(|(rows, chi)| {
            let mut acc = vec![[0u64; 8]; CHECK_PLANES];
            for (row, &c) in rows.iter().zip(chi) {
                let mut bits = c;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    xor_row(&mut acc[b], row);
                }
            }
            acc
        })
        .reduce(
            || vec![[0u64; 8]; CHECK_PLANES],
            |mut a, b| {
                for (a, b) in a.iter_mut().zip(&b) {
                    xor_row(a, b);
                }
                a
            },
        )
}

/// `Σ_{j : bit b of χ_j} values[j]` for each combination.
pub fn value_sums(values: &[u128], chi: &[u64]) -> Vec<u128> {
    let mut acc = vec![0u128; CHECK_PLANES];
    for (&v, &c) in values.iter().zip(chi) {
        let mut bits = c;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            acc[b] ^= v;
        }
    }
    acc
}

/// `a ^= b`.
#[inline(always)]
pub fn xor_row(a: &mut Row, b: &Row) {
    for (a, b) in a.iter_mut().zip(b) {
        *a ^= b;
    }
}

/// `Out(t, r)` into `out` (`ℓ2/8` bytes).
pub fn output(token: &[u8; 32], row: &Row, out: &mut [u8]) {
    let mut hasher = Sha256::new().chain_update(LABEL_OUT).chain_update(token);
    for w in row {
        hasher.update(w.to_le_bytes());
    }
    let digest = hasher.finalize();
    out.copy_from_slice(&digest[..out.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md §11.7, parsed from the document itself so that it cannot
    /// drift from the code.
    #[test]
    fn protocol_doc_oprf_vectors_hold() {
        use curve25519_dalek::ristretto::CompressedRistretto;

        let doc = include_str!("../../../docs/PROTOCOL.md");
        let section = doc.split("### 11.7").nth(1).expect("PROTOCOL.md has a §11.7");
        let block = section.split("```").nth(1).expect("§11.7 has a code block");
        // `name = value [(comment)]`; a line without `=` continues the value above.
        let mut values: Vec<(String, String)> = Vec::new();
        for line in block.lines() {
            let line = line.split("  (").next().unwrap_or("").trim();
            match line.split_once(" = ") {
                Some((name, value)) => values.push((name.trim().to_owned(), value.trim().to_owned())),
                None if !line.is_empty() => values.last_mut().unwrap().1.push_str(&format!(" {line}")),
                None => {}
            }
        }
        let get = |name: &str| values.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1.clone();
        let bytes = |name: &str| hex::decode(get(name).replace(' ', "")).unwrap();
        let arr16 = |name: &str| -> [u8; 16] { bytes(name).try_into().unwrap() };
        let arr32 = |name: &str| -> [u8; 32] { bytes(name).try_into().unwrap() };
        let words = |name: &str| -> Vec<u64> {
            get(name).split_whitespace().map(|w| u64::from_str_radix(w, 16).unwrap()).collect()
        };

        let t = arr32("t");
        let hashed = hash(&arr16("hash_key"), &t);
        let full = Sha256::new().chain_update(LABEL_H).chain_update(arr16("hash_key")).chain_update(t).finalize();
        assert_eq!(full.as_slice(), bytes("H(t)"));
        assert_eq!(hashed.value, u128::from_str_radix(&get("v(t)"), 16).unwrap());
        assert_eq!(hashed.key.as_slice(), bytes("key(t)"));
        let layout = super::super::okvs::Layout::new(1000, arr16("table_seed")).unwrap();
        let row = layout.row(&hashed.key);
        let sparse: Vec<u32> = get("sparse").split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(row.sparse.as_slice(), sparse);
        assert_eq!(row.dense, u64::from_str_radix(&get("dense"), 16).unwrap());
        let word = super::super::code::Encoder::get().encode(hashed.value);
        assert_eq!(word.as_slice(), words("code(v(t))"));
        let mut out = [0u8; 10];
        output(&t, &word, &mut out);
        assert_eq!(out.as_slice(), bytes("Out(t, code(v(t)))"));
        assert_eq!(commitment(&arr16("check_seed")).as_slice(), bytes("commitment"));
        assert_eq!(challenge(&arr16("check_seed"), &arr16("receiver_seed"), 3), words("chi_0 chi_1 chi_2"));
        assert_eq!(to_bytes(&prg_words(&arr16("prg_key"), 6)), bytes("PRG(prg_key)[0..48]"));
        let point = |name: &str| CompressedRistretto(arr32(name)).decompress().unwrap();
        let shared = point("P");
        assert_eq!(*super::super::ot::kdf(5, &arr32("A"), &arr32("B"), &shared), arr16("KDF(5, A, B, P)"));
        // b0 and b1 through AES directly, as the spec defines them.
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let aes = Aes128::new(&Array::from(arr16("table_seed")));
        let mut b0 = Array::from(hashed.key);
        aes.encrypt_block(&mut b0);
        assert_eq!(b0.as_slice(), bytes("b0"));
        let mut b1 = Array::from(hashed.key);
        b1[0] ^= 1;
        aes.encrypt_block(&mut b1);
        assert_eq!(b1.as_slice(), bytes("b1"));
    }

    #[test]
    fn transpose64_is_a_transpose() {
        let mut m: [u64; 64] = std::array::from_fn(|r| (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (r as u64));
        let original = m;
        transpose64(&mut m);
        for (r, row) in original.iter().enumerate() {
            for (c, column) in m.iter().enumerate() {
                assert_eq!((row >> c) & 1, (column >> r) & 1, "{r} {c}");
            }
        }
    }

    #[test]
    fn rows_and_columns_round_trip() {
        let width = 511;
        let rows: Vec<Row> = (0..192u64)
            .map(|r| {
                let mut row: Row =
                    std::array::from_fn(|w| (r + 1).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (w as u64) << 7);
                row[7] &= !(1 << 63);
                row
            })
            .collect();
        let columns = rows_to_columns(&rows, width);
        assert_eq!((columns.len(), columns[0].len()), (width, 3));
        for (r, row) in rows.iter().enumerate() {
            for (c, column) in columns.iter().enumerate() {
                let bit = (column[r / 64] >> (r % 64)) & 1;
                assert_eq!(bit, (row[c / 64] >> (c % 64)) & 1, "row {r} column {c}");
            }
        }
        assert_eq!(columns_to_rows(&columns), rows);
    }

    #[test]
    fn sums_follow_the_challenge_bits() {
        let rows: Vec<Row> = (0..5000u64).map(|r| [r, r << 1, r << 2, r << 3, r << 4, r << 5, r << 6, r]).collect();
        let values: Vec<u128> = (0..5000u128).map(|v| v * 0x1_0000_0001).collect();
        let chi = prg_words(&[3; 16], 5000);
        let sums = row_sums(&rows, &chi);
        let vsums = value_sums(&values, &chi);
        for b in [0, 17, 63] {
            let mut expected = [0u64; 8];
            let mut value = 0u128;
            for j in (0..5000).filter(|&j| (chi[j] >> b) & 1 == 1) {
                xor_row(&mut expected, &rows[j]);
                value ^= values[j];
            }
            assert_eq!(sums[b], expected);
            assert_eq!(vsums[b], value);
        }
    }
}
