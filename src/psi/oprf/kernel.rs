//! The symmetric-key work of the OPRF engine: the hash and PRF domains, the AES-CTR
//! PRG, and the bulk matrix kernels (clearing `D`, gathering one bit per token and
//! column, hashing rows to outputs), all on every core.
//!
//! Domains (byte-exact in `docs/PROTOCOL.md`, "OPRF engine"):
//! - `H1(t) = SHA-256("idmatch-oprf-v1 H1" ‖ t)[0..16]`: the PRF input of a token.
//! - PRF: group key `K_g = AES-128(prf_seed, LE128(g))`; positions
//!   `AES-128(K_g, H1(t))`, 32-bit little-endian lane `j` masked to `L` bits is the
//!   row of `t` in column `4g + j`.
//! - PRG: a column is the AES-128-CTR keystream under a 16-byte OT seed, counter
//!   block starting at 0 (128-bit big-endian counter).
//! - `H2(row) = SHA-256("idmatch-oprf-v1 H2" ‖ row)[0..ℓ2/8]`, `row` the token's `w`
//!   gathered bits, bit `i` = column `i`, least significant bit first, zero-padded.
//!
//! Invariants: a seed or the PRF seed never leaves this module in a `Debug` string;
//! the round keys (`aes` with `zeroize`) are wiped on drop. Matrix layout: a column
//! is `m/8` bytes, row `r` at byte `r >> 3`, bit `r & 7`. Gathered bits live in
//! [`Gathered`], one `[u64; 4]` per (column group, block of 64 tokens), bit `e` of
//! word `j` = token `64·b + e` in column `4g + j`: each group's slab is contiguous,
//! so groups are written without sharing and rows are rebuilt with 8×8 bit
//! transposes.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit, KeyIvInit, StreamCipher};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::params::{H1_LEN, MAX_WIDTH};
use crate::token::Token;

/// Columns per AES block of positions (four 32-bit lanes).
pub const GROUP: usize = 4;
/// Tokens per rayon task in the gather kernels (a multiple of 64).
const TASK_TOKENS: usize = 16384;

/// Domain-separation label of H1 (token → PRF input), `docs/PROTOCOL.md` §11.
pub const LABEL_H1: &[u8] = b"idmatch-oprf-v1 H1";
/// Domain-separation label of H2 (gathered bits → output), `docs/PROTOCOL.md` §11.
pub const LABEL_H2: &[u8] = b"idmatch-oprf-v1 H2";

/// One AES block.
pub type Block = aes::Block;
type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// `H1(t)` for every token, in order.
pub fn h1_all(tokens: &[Token]) -> Vec<Block> {
    tokens.par_iter().map(|t| h1(&t.0)).collect()
}

/// `H1(t) = SHA-256(LABEL_H1 ‖ t)[0..16]`.
pub fn h1(token: &[u8; 32]) -> Block {
    let digest = Sha256::new().chain_update(LABEL_H1).chain_update(token).finalize();
    let mut block = Block::default();
    block.copy_from_slice(&digest[..H1_LEN]);
    block
}

/// The PRF `F_k`: one AES-128 key per group of four columns.
pub struct Prf {
    keys: Vec<Aes128>,
}

impl Prf {
    /// Group keys `K_g = AES-128(prf_seed, LE128(g))` for `groups` groups.
    pub fn new(prf_seed: &[u8; 16], groups: usize) -> Prf {
        let master = Aes128::new(&Array::from(*prf_seed));
        let keys = (0..groups as u128)
            .map(|g| {
                let mut block = Block::from(g.to_le_bytes());
                master.encrypt_block(&mut block);
                let key = Aes128::new(&block);
                block.fill(0);
                key
            })
            .collect();
        Prf { keys }
    }

    /// Encrypts `blocks` (copies of `H1(t)`) in place under group `g`'s key: lane `j`
    /// of the result is the row of the token in column `4g + j`.
    pub fn positions(&self, group: usize, blocks: &mut [Block]) {
        self.keys[group].encrypt_blocks(blocks);
    }
}

impl std::fmt::Debug for Prf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prf({} group keys, <redacted>)", self.keys.len())
    }
}

/// Row of lane `j` of a position block, masked to `L` bits.
#[inline(always)]
pub fn lane(block: &Block, j: usize, mask: u32) -> usize {
    let b = &block[4 * j..4 * j + 4];
    (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & mask) as usize
}

/// XORs the PRG output of `seed` into `column`.
pub fn xor_prg(seed: &[u8; 16], column: &mut [u8]) {
    let mut ctr = Aes128Ctr::new(&Array::from(*seed), &Array::from([0u8; 16]));
    ctr.apply_keystream(column);
}

/// The PRG output of `seed`, `len` bytes.
pub fn prg(seed: &[u8; 16], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    xor_prg(seed, &mut out);
    out
}

/// Gathered bits of every token of one party, for every column.
pub struct Gathered {
    /// Blocks of 64 tokens: `⌈n / 64⌉`.
    blocks: usize,
    words: Vec<[u64; GROUP]>,
}

impl Gathered {
    /// Room for `tokens` tokens' bits in `width` columns, all zero.
    pub fn new(tokens: usize, width: usize) -> Gathered {
        let blocks = tokens.div_ceil(64);
        Gathered { blocks, words: vec![[0; GROUP]; blocks * width.div_ceil(GROUP)] }
    }

    /// Group `g`'s slab: one `[u64; 4]` per block of 64 tokens.
    fn slab(&mut self, group: usize) -> &mut [[u64; GROUP]] {
        &mut self.words[group * self.blocks..(group + 1) * self.blocks]
    }
}

/// Gathers, for every token, its bit in each column of group `g` from `columns`
/// (1 to 4 columns of `m/8` bytes), into `gathered`, splitting the tokens across
/// cores. `positions(start, out)` fills `out` with the position blocks of tokens
/// `start..start + out.len()`.
pub fn gather(
    gathered: &mut Gathered,
    group: usize,
    columns: &[&[u8]],
    mask: u32,
    tokens: usize,
    positions: impl Fn(usize, &mut [Block]) + Sync,
) {
    gathered.slab(group).par_chunks_mut(TASK_TOKENS / 64).enumerate().for_each(|(task, words)| {
        let start = task * TASK_TOKENS;
        let count = TASK_TOKENS.min(tokens - start);
        let mut pos = vec![Block::default(); count];
        positions(start, &mut pos);
        for (j, column) in columns.iter().enumerate() {
            gather_column(column, &pos, j, mask, words);
        }
    });
}

/// Gathers the bits of column `j` (lane `j` of `positions`) into word `j` of
/// `words` (one per 64 positions). One column at a time keeps it in cache.
#[inline]
pub fn gather_column(column: &[u8], positions: &[Block], j: usize, mask: u32, words: &mut [[u64; GROUP]]) {
    for (word, pos) in words.iter_mut().zip(positions.chunks(64)) {
        let mut bits = 0u64;
        for (e, p) in pos.iter().enumerate() {
            let row = lane(p, j, mask);
            bits |= u64::from((column[row >> 3] >> (row & 7)) & 1) << e;
        }
        word[j] = bits;
    }
}

/// Group-parallel work: for each group `first..first + count` (one core per group),
/// `work(g, slab, positions)` runs once per block of `TASK_TOKENS` tokens with the
/// tokens' position blocks under `K_g` and the slab words of those tokens.
pub fn for_groups<S: Send>(
    gathered: &mut Gathered,
    first: usize,
    states: Vec<S>,
    prf: &Prf,
    h1s: &[Block],
    work: impl Fn(usize, &mut S, &[Block], &mut [[u64; GROUP]]) + Sync,
) -> Vec<S> {
    let blocks = gathered.blocks;
    let count = states.len();
    let slabs = &mut gathered.words[first * blocks..(first + count) * blocks];
    let mut states = states;
    let run = |g: usize, state: &mut S, slab: &mut [[u64; GROUP]]| {
        let mut pos = vec![Block::default(); TASK_TOKENS.min(h1s.len())];
        for (task, words) in slab.chunks_mut(TASK_TOKENS / 64).enumerate() {
            let start = task * TASK_TOKENS;
            let n = TASK_TOKENS.min(h1s.len() - start);
            pos[..n].copy_from_slice(&h1s[start..start + n]);
            prf.positions(g, &mut pos[..n]);
            work(g, state, &pos[..n], words);
        }
    };
    if blocks == 0 {
        return states;
    }
    states.par_iter_mut().zip(slabs.par_chunks_mut(blocks)).enumerate().for_each(|(k, (state, slab))| {
        run(first + k, state, slab);
    });
    states
}

/// Clears, in an all-ones column, the row of every position block's lane `j`.
pub fn clear_rows(column: &mut [u8], positions: &[Block], j: usize, mask: u32) {
    for p in positions {
        let row = lane(p, j, mask);
        column[row >> 3] &= !(1u8 << (row & 7));
    }
}

/// `H2` of every token's row of `width` gathered bits, truncated to `output_len`
/// bytes, concatenated in token order.
pub fn outputs(gathered: &Gathered, tokens: usize, width: usize, output_len: usize) -> Vec<u8> {
    let row_len = width.div_ceil(8);
    let mut out = vec![0u8; tokens * output_len];
    out.par_chunks_mut(64 * output_len).enumerate().for_each(|(b, out)| {
        let mut rows = vec![[0u8; MAX_WIDTH as usize / 8]; 64];
        transpose_block(gathered, b, width, &mut rows);
        for (row, out) in rows.iter().zip(out.chunks_mut(output_len)) {
            let digest = Sha256::new().chain_update(LABEL_H2).chain_update(&row[..row_len]).finalize();
            out.copy_from_slice(&digest[..output_len]);
        }
    });
    out
}

/// Rebuilds the rows of block `b` (64 tokens): `rows[e]` bit `i` = column `i`.
#[allow(clippy::needless_range_loop, reason = "`byte` indexes columns and every row alike")]
fn transpose_block(gathered: &Gathered, b: usize, width: usize, rows: &mut [[u8; MAX_WIDTH as usize / 8]]) {
    let word = |i: usize| if i < width { gathered.words[(i / GROUP) * gathered.blocks + b][i % GROUP] } else { 0 };
    for byte in 0..width.div_ceil(8) {
        let cols: [u64; 8] = std::array::from_fn(|j| word(8 * byte + j));
        for eb in 0..8 {
            // Row j of the 8×8 matrix: column 8·byte + j, tokens 8·eb .. 8·eb + 8.
            let x = u64::from_le_bytes(std::array::from_fn(|j| (cols[j] >> (8 * eb)) as u8));
            let t = transpose8(x).to_le_bytes();
            for (e, &v) in t.iter().enumerate() {
                rows[8 * eb + e][byte] = v;
            }
        }
    }
}

/// Transposes an 8×8 bit matrix, bit `8r + c` ↔ bit `8c + r`.
#[inline(always)]
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
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
                None if !line.is_empty() => values.last_mut().unwrap().1.push_str(line),
                None => {}
            }
        }
        let get = |name: &str| values.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1.clone();
        let bytes = |name: &str| hex::decode(get(name)).unwrap();
        let arr16 = |name: &str| -> [u8; 16] { bytes(name).try_into().unwrap() };
        let arr32 = |name: &str| -> [u8; 32] { bytes(name).try_into().unwrap() };

        let t = arr32("t");
        let h = h1(&t);
        assert_eq!(h.as_slice(), bytes("H1(t)"));
        let seed = arr16("prf_seed");
        let prf = Prf::new(&seed, 2);
        let master = Aes128::new(&Array::from(seed));
        for g in 0..2usize {
            let mut key = Block::from((g as u128).to_le_bytes());
            master.encrypt_block(&mut key);
            assert_eq!(key.as_slice(), bytes(&format!("K_{g}")));
            let mut pos = [h];
            prf.positions(g, &mut pos);
            assert_eq!(pos[0].as_slice(), bytes(&format!("AES(K_{g}, H1(t))")));
            let rows: Vec<usize> = get(&format!("rows_{g}")).split_whitespace().map(|r| r.parse().unwrap()).collect();
            let mask = (1u32 << 21) - 1;
            assert_eq!(rows, (0..4).map(|j| lane(&pos[0], j, mask)).collect::<Vec<_>>());
        }
        assert_eq!(prg(&arr16("prg_key"), 48), bytes("PRG(prg_key)[0..48]"));

        // H2 through the real path: 64 tokens whose rows are all `row`.
        let row = bytes("row");
        let width = 333;
        let mut g = Gathered::new(64, width);
        for i in (0..width).filter(|i| (row[i >> 3] >> (i & 7)) & 1 == 1) {
            g.words[(i / GROUP) * g.blocks][i % GROUP] = u64::MAX;
        }
        let out = outputs(&g, 64, width, 10);
        assert_eq!(&out[..10], bytes("H2(row)"));
        assert_eq!(&out[630..], bytes("H2(row)"));

        let point = |name: &str| CompressedRistretto(arr32(name)).decompress().unwrap();
        let shared = point("P");
        assert_eq!(*super::super::ot::kdf(5, &arr32("A"), &arr32("B"), &shared), arr16("KDF(5, A, B, P)"));
    }

    #[test]
    fn transpose8_is_a_transpose() {
        for seed in [0x0123_4567_89ab_cdefu64, 1, 1 << 63, 0xdead_beef_f00d_cafe] {
            let t = transpose8(seed);
            for r in 0..8 {
                for c in 0..8 {
                    assert_eq!((seed >> (8 * r + c)) & 1, (t >> (8 * c + r)) & 1);
                }
            }
        }
    }

    #[test]
    fn rows_are_rebuilt_from_gathered_columns() {
        let (tokens, width) = (130, 13);
        let mut g = Gathered::new(tokens, width);
        // Token e's bit in column i: (e * 7 + i * 3).is_multiple_of(5).
        let bit = |e: usize, i: usize| (e * 7 + i * 3).is_multiple_of(5);
        for i in 0..width {
            for e in 0..tokens {
                if bit(e, i) {
                    g.words[(i / GROUP) * g.blocks + e / 64][i % GROUP] |= 1 << (e % 64);
                }
            }
        }
        for b in 0..g.blocks {
            let mut rows = vec![[0u8; MAX_WIDTH as usize / 8]; 64];
            transpose_block(&g, b, width, &mut rows);
            for (e, row) in rows.iter().enumerate().filter(|(e, _)| 64 * b + e < tokens) {
                for i in 0..width {
                    assert_eq!((row[i >> 3] >> (i & 7)) & 1 == 1, bit(64 * b + e, i), "token {e} column {i}");
                }
                assert_eq!(row[1] >> 5, 0, "padding bits are zero");
            }
        }
    }

    #[test]
    fn gather_reads_the_bit_at_each_position() {
        let column: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
        let mask = 255;
        let tokens = 70;
        let mut g = Gathered::new(tokens, 1);
        // Position of token e, lane 0: row e * 3 % 256.
        gather(&mut g, 0, &[&column], mask, tokens, |start, out| {
            for (k, b) in out.iter_mut().enumerate() {
                *b = Block::from(((((start + k) * 3) % 256) as u128).to_le_bytes());
            }
        });
        for e in 0..tokens {
            let row = e * 3 % 256;
            let expected = (column[row >> 3] >> (row & 7)) & 1;
            assert_eq!((g.words[e / 64][0] >> (e % 64)) & 1, u64::from(expected));
        }
    }
}
