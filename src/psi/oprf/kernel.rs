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
/// Tokens whose rows are computed at once in the gather kernels ([`GroupRows`]; a
/// multiple of 64 and of 256): 4 MiB of rows per core. Measured at 10⁶ × 10⁶ on
/// the 2-core reference machine, the receiver's matrix phase took 2.0 s with blocks
/// of 16,384 tokens, 1.6 s with 65,536 and 1.3 s with 262,144 (each column is
/// brought back into L2 once per block, so fewer blocks mean fewer reloads).
const ROW_BLOCK: usize = 262_144;

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

    /// Encrypts `h1s` (values `H1(t)`) under group `g`'s key into `out` (as long):
    /// lane `j` of an output block is the row of its token in column `4g + j`.
    /// `out` must be as long as `h1s` (every caller sizes it so).
    pub fn positions(&self, group: usize, h1s: &[Block], out: &mut [Block]) {
        debug_assert_eq!(h1s.len(), out.len());
        // The only error is a length mismatch, which the callers rule out.
        let _ = self.keys[group].encrypt_blocks_b2b(h1s, out);
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

/// The rows of up to [`ROW_BLOCK`] consecutive tokens in each column of one group,
/// one `u32` array per column: the PRF is evaluated once per token and group (four
/// lanes per AES block), and each column is then walked alone over the whole block,
/// so the column (`m/8` bytes, 256 KiB at 10⁶ tokens) stays in the core's L2 cache
/// for all of the block's random accesses.
pub struct GroupRows {
    /// `lanes[j * ROW_BLOCK + t]`: row of token `t` of the block in column `4g + j`.
    lanes: Vec<u32>,
    len: usize,
}

impl GroupRows {
    fn new() -> GroupRows {
        GroupRows { lanes: vec![0; GROUP * ROW_BLOCK], len: 0 }
    }

    /// Computes the rows of the tokens whose `H1` values are `h1s` (at most
    /// [`ROW_BLOCK`]) in group `group`'s columns, masked to `L` bits.
    fn fill(&mut self, prf: &Prf, group: usize, h1s: &[Block], mask: u32) {
        debug_assert!(h1s.len() <= ROW_BLOCK);
        let mut blocks = [Block::default(); 256];
        for (k, h1s) in h1s.chunks(blocks.len()).enumerate() {
            let blocks = &mut blocks[..h1s.len()];
            prf.positions(group, h1s, blocks);
            let first = k * 256;
            for j in 0..GROUP {
                let out = &mut self.lanes[j * ROW_BLOCK + first..][..blocks.len()];
                for (out, block) in out.iter_mut().zip(blocks.iter()) {
                    *out = lane(block, j, mask) as u32;
                }
            }
        }
        self.len = h1s.len();
    }

    /// The rows of the block's tokens in column `4g + j`.
    pub fn column(&self, j: usize) -> &[u32] {
        &self.lanes[j * ROW_BLOCK..j * ROW_BLOCK + self.len]
    }
}

/// Gathers, for every token, its bit in each column of group `g` from `columns`
/// (1 to 4 columns of `m/8` bytes), into `gathered`, splitting the tokens across
/// cores in blocks of [`ROW_BLOCK`].
pub fn gather(gathered: &mut Gathered, group: usize, columns: &[&[u8]], prf: &Prf, h1s: &[Block], mask: u32) {
    gathered.slab(group).par_chunks_mut(ROW_BLOCK / 64).zip(h1s.par_chunks(ROW_BLOCK)).for_each(|(words, h1s)| {
        let mut rows = GroupRows::new();
        rows.fill(prf, group, h1s, mask);
        for (j, column) in columns.iter().enumerate() {
            gather_column(column, rows.column(j), j, words);
        }
    });
}

/// Gathers the bits of a column at `rows` into word `j` of `words` (one per 64
/// rows).
#[inline]
pub fn gather_column(column: &[u8], rows: &[u32], j: usize, words: &mut [[u64; GROUP]]) {
    for (word, rows) in words.iter_mut().zip(rows.chunks(64)) {
        let mut bits = 0u64;
        for (e, &row) in rows.iter().enumerate() {
            bits |= u64::from((column[(row >> 3) as usize] >> (row & 7)) & 1) << e;
        }
        word[j] = bits;
    }
}

/// Group-parallel work: for each group `first..first + count` (one core per group),
/// `work(state, rows, words)` runs once per block of [`ROW_BLOCK`] tokens with the
/// tokens' rows in the group's columns and the slab words of those tokens.
pub fn for_groups<S: Send>(
    gathered: &mut Gathered,
    first: usize,
    states: Vec<S>,
    prf: &Prf,
    h1s: &[Block],
    mask: u32,
    work: impl Fn(&mut S, &GroupRows, &mut [[u64; GROUP]]) + Sync,
) -> Vec<S> {
    let blocks = gathered.blocks;
    let count = states.len();
    let slabs = &mut gathered.words[first * blocks..(first + count) * blocks];
    let mut states = states;
    if blocks == 0 {
        return states;
    }
    states.par_iter_mut().zip(slabs.par_chunks_mut(blocks)).enumerate().for_each(|(k, (state, slab))| {
        let mut rows = GroupRows::new();
        for (words, h1s) in slab.chunks_mut(ROW_BLOCK / 64).zip(h1s.chunks(ROW_BLOCK)) {
            rows.fill(prf, first + k, h1s, mask);
            work(state, &rows, words);
        }
    });
    states
}

/// Clears, in an all-ones column, every row in `rows`.
pub fn clear_rows(column: &mut [u8], rows: &[u32]) {
    for &row in rows {
        column[(row >> 3) as usize] &= !(1u8 << (row & 7));
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
            let mut pos = [Block::default()];
            prf.positions(g, &[h], &mut pos);
            assert_eq!(pos[0].as_slice(), bytes(&format!("AES(K_{g}, H1(t))")));
            let rows: Vec<usize> = get(&format!("rows_{g}")).split_whitespace().map(|r| r.parse().unwrap()).collect();
            let mask = (1u32 << 21) - 1;
            assert_eq!(rows, (0..4).map(|j| lane(&pos[0], j, mask)).collect::<Vec<_>>());
            let mut block_rows = GroupRows::new();
            block_rows.fill(&prf, g, &[h], mask);
            assert_eq!(rows, (0..4).map(|j| block_rows.column(j)[0] as usize).collect::<Vec<_>>());
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

    /// Both gather kernels read, for every token (more than one block of them),
    /// the bit of each column at the row the PRF gives, computed here block by block.
    #[test]
    fn gathers_read_the_bit_at_each_prf_row() {
        let (tokens, log_height) = (ROW_BLOCK + 70, 11);
        let mask = (1u32 << log_height) - 1;
        let column_bytes = 1usize << (log_height - 3);
        let columns: Vec<Vec<u8>> =
            (0..GROUP as u8).map(|j| (0..column_bytes).map(|i| (i as u8).wrapping_mul(37) ^ j).collect()).collect();
        let refs: Vec<&[u8]> = columns.iter().map(Vec::as_slice).collect();
        let h1s: Vec<Block> =
            (0..tokens as u32).map(|t| h1(&[t.to_le_bytes(), [7; 4]].concat().repeat(4).try_into().unwrap())).collect();
        let prf = Prf::new(&[9; 16], 2);
        let group = 1;
        let mut split = Gathered::new(tokens, 2 * GROUP);
        gather(&mut split, group, &refs, &prf, &h1s, mask);
        let mut by_group = Gathered::new(tokens, 2 * GROUP);
        let states = for_groups(&mut by_group, group, vec![()], &prf, &h1s, mask, |_, rows, words| {
            for (j, column) in refs.iter().enumerate() {
                gather_column(column, rows.column(j), j, words);
            }
        });
        assert_eq!(states.len(), 1);
        let key = &prf.keys[group];
        for (e, h) in h1s.iter().enumerate() {
            let mut block = *h;
            key.encrypt_block(&mut block);
            for (j, column) in columns.iter().enumerate() {
                let row = lane(&block, j, mask);
                let expected = u64::from((column[row >> 3] >> (row & 7)) & 1);
                let word = (group * split.blocks + e / 64, j);
                assert_eq!((split.words[word.0][word.1] >> (e % 64)) & 1, expected, "token {e} column {j}");
                assert_eq!((by_group.words[word.0][word.1] >> (e % 64)) & 1, expected, "token {e} column {j}");
            }
        }
        assert!(split.words[..split.blocks].iter().all(|w| *w == [0; GROUP]), "group 0 untouched");
    }
}
