//! Binary oblivious key-value store (OKVS) in the style of PaXoS / RR22.
//!
//! An OKVS encodes a set of key-value pairs into a table `P` such that decoding the table at a key returns
//! that key's value, while the table reveals nothing about the keys when the values are random. This module
//! implements the binary "3 sparse + 64 dense" construction of Pinkas–Rosulek–Trieu–Yanai ("PSI from PaXoS",
//! EUROCRYPT 2020) and Raghuraman–Rindal ("Blazing Fast PSI from Improved OKVS and Subfield VOLE", CCS 2022).
//!
//! # Table and rows
//!
//! The table has `m` sparse cells followed by [`DENSE`] = 64 dense cells (length `m + 64`). Every key has a
//! [`Row`]: three distinct sparse positions `p0, p1, p2` in `[0, m)` and a 64-bit dense mask. Decoding is
//!
//! ```text
//! Decode(P, key) = P[p0] ⊕ P[p1] ⊕ P[p2] ⊕ (⊕ over bits b set in dense: P[m + b])
//! ```
//!
//! For a key given as 16 bytes `h` and a [`Layout`] built from `m ≥ 3` and a 16-byte seed:
//!
//! - `b0 = AES-128_seed(h)`, `b1 = AES-128_seed(h')` where `h'` is `h` with byte 0 XOR `0x01`;
//! - lanes `l0..l3` are the little-endian `u32` words of `b0` (`l3` is not used), `l4, l5` are the
//!   little-endian `u32` words 0 and 1 of `b1`;
//! - `p0 = (l0 as u64 · m) >> 32`;
//! - `p1 = (l1 as u64 · (m − 1)) >> 32`, then `if p1 ≥ p0 { p1 += 1 }`;
//! - `p2 = (l2 as u64 · (m − 2)) >> 32`, then with `(lo, hi) = (min(p0, p1), max(p0, p1))`:
//!   `if p2 ≥ lo { p2 += 1 }`, then `if p2 ≥ hi { p2 += 1 }`;
//! - `dense = l4 as u64 | (l5 as u64) << 32`.
//!
//! # Invariants
//!
//! - Rows are binary: every coefficient is 0 or 1 over GF(2), so decoding is XOR only and the same rows decode
//!   any [`Cell`] type (the protocol decodes both 128-bit values and 512-bit matrix rows).
//! - Decoding is XOR-linear in the table: `decode(P ⊕ Q) = decode(P) ⊕ decode(Q)`.
//! - The three sparse positions of a row are distinct and lie in `[0, m)`.
//! - [`encode`] either returns a table on which every key decodes to its value, or an [`OkvsError`]; it never
//!   panics and never returns a table that violates a key.
//! - Every cell of an encoded table that the keys do not determine is drawn uniformly from the caller's RNG;
//!   so for uniformly random values the whole table is uniformly random.
//!
//! # Encoding
//!
//! The sparse parts form a 3-uniform hypergraph on `m` vertices with one edge per key. [`encode`] peels it in
//! O(n): a position touched by exactly one remaining key lets that key be solved last through that position.
//! Keys that cannot be peeled form the 2-core; their sparse cells are drawn at random and their equations are
//! solved for the 64 dense cells by Gaussian elimination over GF(2). If that system has no solution (the core
//! is too large or contains contradicting rows) encoding fails with [`OkvsError::CoreUnsolvable`] and the
//! caller retries with a fresh seed. [`sparse_len_for`] sizes `m` so that this happens rarely (see there).

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;

/// Number of dense cells (and bits in [`Row::dense`]); they follow the `m` sparse cells in the table.
pub const DENSE: usize = 64;

/// Keys per rayon work item in [`Layout::rows`]; each item encrypts two AES blocks per key in one batch.
const ROWS_CHUNK: usize = 1024;

/// Numerator and denominator of the expansion `c` in [`sparse_len_for`]: `m = ⌈c·n⌉ + SIZE_ADD`.
const SIZE_NUM: u128 = 127;
const SIZE_DEN: u128 = 100;
/// Additive constant of [`sparse_len_for`]; at least 3 so that every result is a valid sparse length.
const SIZE_ADD: u128 = 20;

/// Errors of layout construction, sizing and encoding. Decoding cannot fail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OkvsError {
    /// The sparse part must have at least 3 cells so that a row has three distinct positions.
    #[error("sparse table length {m} is too small: at least 3 cells are needed")]
    TableTooSmall { m: u32 },
    /// Key indices and sparse positions are `u32`; this many keys do not fit.
    #[error("{n} keys are too many: key indices and table positions must fit in u32")]
    TooManyKeys { n: u64 },
    /// [`encode`] needs exactly one value per row.
    #[error("{rows} rows but {values} values: encode needs exactly one value per row")]
    LengthMismatch { rows: usize, values: usize },
    /// A row handed to [`encode`] has a sparse position outside `[0, m)` or repeats a position, so it cannot
    /// have come from the layout.
    #[error("row {index} does not belong to this layout: sparse positions must be distinct and below m")]
    InvalidRow { index: usize },
    /// The keys left after peeling (the 2-core) give a linear system over the 64 dense cells that has no
    /// solution. This depends on the seed: the caller retries with a new seed.
    #[error(
        "the 2-core left after peeling ({core} keys) cannot be solved with the {DENSE} dense columns; \
         retry with a new seed"
    )]
    CoreUnsolvable { core: usize },
}

/// One key's row: three distinct sparse positions in `[0, m)` and the dense mask over the 64 dense cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub sparse: [u32; 3],
    pub dense: u64,
}

/// A cell type rows can be decoded over: u128 (values) and [u64; 8] (512-bit matrix rows).
///
/// `xor` must be the group operation of (GF(2)^k, ⊕): associative, commutative, every element its own inverse.
pub trait Cell: Copy + Send + Sync {
    /// `self ⊕ other`.
    fn xor(self, other: Self) -> Self;
}

impl Cell for u128 {
    #[inline]
    fn xor(self, other: Self) -> Self {
        self ^ other
    }
}

impl Cell for [u64; 8] {
    #[inline]
    fn xor(mut self, other: Self) -> Self {
        for (a, b) in self.iter_mut().zip(other) {
            *a ^= b;
        }
        self
    }
}

impl Row {
    /// Decodes this row over `table` (sparse cells first, then the [`DENSE`] dense cells):
    /// `table[p0] ⊕ table[p1] ⊕ table[p2] ⊕ (⊕ over bits b of dense: table[sparse_len + b])`.
    ///
    /// The result is XOR-linear in `table`.
    ///
    /// # Panics
    ///
    /// If `table` is shorter than `sparse_len + DENSE` or a sparse position is outside `table`; neither
    /// happens for a row of a [`Layout`] with `sparse_len == layout.sparse_len()` and a table of
    /// `layout.len()` cells.
    #[inline]
    pub fn decode<C: Cell>(&self, sparse_len: usize, table: &[C]) -> C {
        let dense_cells = &table[sparse_len..sparse_len + DENSE];
        let mut acc =
            table[self.sparse[0] as usize].xor(table[self.sparse[1] as usize]).xor(table[self.sparse[2] as usize]);
        let mut bits = self.dense;
        while bits != 0 {
            acc = acc.xor(dense_cells[bits.trailing_zeros() as usize]);
            bits &= bits - 1;
        }
        acc
    }
}

/// The shape of a table (`m` sparse cells + [`DENSE`] dense cells) and the keyed hash that maps keys to rows.
///
/// The AES key (the seed) is wiped when the layout is dropped and never printed by `Debug`.
pub struct Layout {
    m: u32,
    cipher: Aes128,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout").field("m", &self.m).finish_non_exhaustive()
    }
}

impl Layout {
    /// A layout with `m` sparse cells whose rows are derived with AES-128 keyed by `seed`.
    ///
    /// # Errors
    ///
    /// [`OkvsError::TableTooSmall`] if `m < 3`.
    pub fn new(m: u32, seed: [u8; 16]) -> Result<Layout, OkvsError> {
        if m < 3 {
            return Err(OkvsError::TableTooSmall { m });
        }
        Ok(Layout { m, cipher: Aes128::new(&seed.into()) })
    }

    /// Number of sparse cells `m`; dense cell `b` is at table index `m + b`.
    pub fn sparse_len(&self) -> usize {
        self.m as usize
    }

    /// Table length `m + 64`.
    #[allow(clippy::len_without_is_empty)] // a table is never empty: it has at least 3 + 64 cells
    pub fn len(&self) -> usize {
        self.m as usize + DENSE
    }

    /// The row of `key` (see the module documentation for the exact definition).
    pub fn row(&self, key: &[u8; 16]) -> Row {
        let mut rows = [Row { sparse: [0; 3], dense: 0 }];
        self.fill_rows(std::slice::from_ref(key), &mut rows);
        rows[0]
    }

    /// The rows of `keys`, in order, computed in parallel; equal to mapping [`Layout::row`] over `keys`.
    pub fn rows(&self, keys: &[[u8; 16]]) -> Vec<Row> {
        let mut rows = vec![Row { sparse: [0; 3], dense: 0 }; keys.len()];
        rows.par_chunks_mut(ROWS_CHUNK)
            .zip(keys.par_chunks(ROWS_CHUNK))
            .for_each(|(out, keys)| self.fill_rows(keys, out));
        rows
    }

    /// Computes the rows of `keys` into `out` (same length) with one batched AES call.
    fn fill_rows(&self, keys: &[[u8; 16]], out: &mut [Row]) {
        let mut blocks: Vec<aes::Block> = Vec::with_capacity(2 * keys.len());
        for key in keys {
            let mut flipped = *key;
            flipped[0] ^= 0x01;
            blocks.push((*key).into());
            blocks.push(flipped.into());
        }
        self.cipher.encrypt_blocks(&mut blocks);
        for (row, pair) in out.iter_mut().zip(blocks.chunks_exact(2)) {
            *row = row_from_blocks(self.m, &pair[0].0, &pair[1].0);
        }
    }
}

/// Little-endian `u32` word `i` of a 16-byte block.
#[inline]
fn lane(block: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]])
}

/// `(x · range) >> 32`: maps a uniform u32 to `[0, range)`.
#[inline]
fn scale(x: u32, range: u32) -> u32 {
    ((u64::from(x) * u64::from(range)) >> 32) as u32
}

/// The row for the encrypted blocks `b0 = AES(h)`, `b1 = AES(h ⊕ 0x01)`; requires `m ≥ 3`.
#[inline]
fn row_from_blocks(m: u32, b0: &[u8; 16], b1: &[u8; 16]) -> Row {
    let p0 = scale(lane(b0, 0), m);
    let mut p1 = scale(lane(b0, 1), m - 1);
    if p1 >= p0 {
        p1 += 1;
    }
    let mut p2 = scale(lane(b0, 2), m - 2);
    let (lo, hi) = (p0.min(p1), p0.max(p1));
    if p2 >= lo {
        p2 += 1;
    }
    if p2 >= hi {
        p2 += 1;
    }
    Row { sparse: [p0, p1, p2], dense: u64::from(lane(b1, 0)) | u64::from(lane(b1, 1)) << 32 }
}

/// The sparse size `m = ⌈1.27·n⌉ + 20` for `n` keys.
///
/// Measured (see the `size_rule` test): with this `m` one [`encode`] attempt fails with probability well
/// below 2^-20 for every `n` up to 10^7; failures are concentrated in mid-sized sets around `n ≈ 10^3–10^4`
/// where finite-size fluctuations of the peeling threshold (`c ≈ 1.222`) are largest.
///
/// # Errors
///
/// [`OkvsError::TooManyKeys`] if `m` does not fit in `u32` (about 3.4·10^9 keys).
pub fn sparse_len_for(n: u64) -> Result<u32, OkvsError> {
    let m = (u128::from(n) * SIZE_NUM).div_ceil(SIZE_DEN) + SIZE_ADD;
    u32::try_from(m).map_err(|_| OkvsError::TooManyKeys { n })
}

/// The result of peeling: keys in peel order with the position each one is solved through, and the 2-core.
struct Peeling {
    /// `(key, free position)` in the order keys were removed; assigning in reverse order is always possible.
    order: Vec<(u32, u32)>,
    /// Keys that could not be peeled, in index order.
    core: Vec<u32>,
}

/// Peels the 3-uniform hypergraph of `rows` on `m` vertices in O(n + m).
///
/// Requires every row's positions to be distinct and below `m`, and `rows.len() ≤ u32::MAX`.
fn peel(m: usize, rows: &[Row]) -> Peeling {
    // Per position: [number of remaining incident keys, XOR of their indices].
    let mut incidence = vec![[0u32; 2]; m];
    for (k, row) in (0u32..).zip(rows) {
        for &p in &row.sparse {
            let cell = &mut incidence[p as usize];
            cell[0] += 1;
            cell[1] ^= k;
        }
    }
    let mut stack: Vec<u32> = (0u32..).zip(&incidence).filter(|(_, c)| c[0] == 1).map(|(p, _)| p).collect();
    let mut order = Vec::with_capacity(rows.len());
    while let Some(p) = stack.pop() {
        let [degree, k] = incidence[p as usize];
        if degree != 1 {
            continue; // its last key was peeled through another position
        }
        order.push((k, p));
        for &q in &rows[k as usize].sparse {
            let cell = &mut incidence[q as usize];
            cell[0] -= 1;
            cell[1] ^= k;
            if cell[0] == 1 {
                stack.push(q);
            }
        }
    }
    let mut peeled = vec![false; rows.len()];
    for &(k, _) in &order {
        peeled[k as usize] = true;
    }
    let core = (0u32..).zip(&peeled).filter(|(_, done)| !**done).map(|(k, _)| k).collect();
    Peeling { order, core }
}

/// Solves the core keys' equations `dense · D = value ⊕ P[p0] ⊕ P[p1] ⊕ P[p2]` for the dense cells
/// `D = table[m..m + 64]`, whose current (random) values are kept for unknowns the system leaves free.
fn solve_dense(m: usize, core: &[u32], rows: &[Row], values: &[u128], table: &mut [u128]) -> Result<(), OkvsError> {
    // basis[b] = (mask, rhs) with highest mask bit b, or mask 0 if no equation has pivot b yet.
    let mut basis = [(0u64, 0u128); DENSE];
    for &k in core {
        let row = rows[k as usize];
        let mut mask = row.dense;
        let mut rhs = values[k as usize] ^ row.sparse.iter().fold(0, |acc, &p| acc ^ table[p as usize]);
        while mask != 0 {
            let pivot = 63 - mask.leading_zeros() as usize;
            if basis[pivot].0 == 0 {
                basis[pivot] = (mask, rhs);
                break;
            }
            mask ^= basis[pivot].0;
            rhs ^= basis[pivot].1;
        }
        if mask == 0 && rhs != 0 {
            return Err(OkvsError::CoreUnsolvable { core: core.len() });
        }
    }
    // Back substitution in increasing pivot order: every other bit of a basis mask is below its pivot.
    let dense = &mut table[m..m + DENSE];
    for (pivot, &(mask, rhs)) in basis.iter().enumerate() {
        if mask != 0 {
            let mut x = rhs;
            let mut rest = mask & !(1u64 << pivot);
            while rest != 0 {
                x ^= dense[rest.trailing_zeros() as usize];
                rest &= rest - 1;
            }
            dense[pivot] = x;
        }
    }
    Ok(())
}

/// Byte tables for `dense · D`: `tables[j][x]` is the XOR of the dense cells `8j + i` for the bits `i` of `x`.
fn dense_tables(dense: &[u128]) -> Vec<[u128; 256]> {
    dense
        .chunks_exact(8)
        .map(|cells| {
            let mut t = [0u128; 256];
            for x in 1..256usize {
                t[x] = t[x & (x - 1)] ^ cells[x.trailing_zeros() as usize];
            }
            t
        })
        .collect()
}

/// Solve for P (length m + 64) with decode(P, rows[i]) == values[i] for all i; cells no key constrains are
/// drawn from `rng` (uniform u128).
///
/// `rows` must come from `layout` (e.g. [`Layout::rows`]). Runs in O(n + m) plus O(64 · core) for the keys
/// that cannot be peeled. On success every key decodes to its value; undetermined cells (and the free
/// solutions of the dense system) are uniform.
///
/// # Errors
///
/// - [`OkvsError::LengthMismatch`] if `rows.len() != values.len()`;
/// - [`OkvsError::TooManyKeys`] if there are more than `u32::MAX` rows;
/// - [`OkvsError::InvalidRow`] if a row has a sparse position `≥ m` or a repeated position;
/// - [`OkvsError::CoreUnsolvable`] if the keys left after peeling cannot be satisfied by the 64 dense cells
///   (rare for `m ≥ sparse_len_for(n)`, always for two equal rows with different values): retry with a new
///   seed.
pub fn encode<R: RngCore + CryptoRng>(
    layout: &Layout,
    rows: &[Row],
    values: &[u128],
    rng: &mut R,
) -> Result<Vec<u128>, OkvsError> {
    if rows.len() != values.len() {
        return Err(OkvsError::LengthMismatch { rows: rows.len(), values: values.len() });
    }
    if u32::try_from(rows.len()).is_err() {
        return Err(OkvsError::TooManyKeys { n: rows.len() as u64 });
    }
    let m = layout.m;
    if let Some(index) = rows.iter().position(|r| {
        let [a, b, c] = r.sparse;
        a >= m || b >= m || c >= m || a == b || a == c || b == c
    }) {
        return Err(OkvsError::InvalidRow { index });
    }
    let m = layout.sparse_len();
    let peeling = peel(m, rows);
    // Start from a uniformly random table; then overwrite exactly the cells the keys determine.
    let mut table: Vec<u128> =
        (0..layout.len()).map(|_| (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())).collect();
    solve_dense(m, &peeling.core, rows, values, &mut table)?;
    let tables = dense_tables(&table[m..]);
    for &(k, p) in peeling.order.iter().rev() {
        let row = rows[k as usize];
        let dense = row.dense.to_le_bytes().iter().zip(&tables).fold(0, |acc, (&byte, t)| acc ^ t[byte as usize]);
        let sparse = row.sparse.iter().filter(|&&q| q != p).fold(0, |acc, &q| acc ^ table[q as usize]);
        table[p as usize] = values[k as usize] ^ dense ^ sparse;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Mutex;
    use std::time::Instant;

    /// `n` distinct keys (little-endian counters offset by `salt`).
    fn keys(n: usize, salt: u64) -> Vec<[u8; 16]> {
        (0..n as u128).map(|i| (i | u128::from(salt) << 64).to_le_bytes()).collect()
    }

    /// Encodes random values for `keys` with `sparse_len_for`, retrying with a fresh seed up to 3 times as the
    /// caller does; returns the layout, the rows, the values and the table.
    fn encode_random(keys: &[[u8; 16]], rng: &mut StdRng) -> (Layout, Vec<Row>, Vec<u128>, Vec<u128>) {
        let m = sparse_len_for(keys.len() as u64).unwrap();
        let values: Vec<u128> = (0..keys.len()).map(|_| rng.r#gen()).collect();
        for _ in 0..3 {
            let layout = Layout::new(m, rng.r#gen()).unwrap();
            let rows = layout.rows(keys);
            if let Ok(table) = encode(&layout, &rows, &values, rng) {
                return (layout, rows, values, table);
            }
        }
        panic!("3 encoding attempts failed for n = {}", keys.len());
    }

    #[test]
    fn round_trip() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [0, 1, 2, 3, 10, 1000, 100_000] {
            let keys = keys(n, 7);
            let (layout, rows, values, table) = encode_random(&keys, &mut rng);
            assert_eq!(table.len(), layout.len());
            for (i, (row, value)) in rows.iter().zip(&values).enumerate() {
                assert_eq!(row.decode(layout.sparse_len(), &table), *value, "n = {n}, key {i}");
            }
        }
    }

    #[test]
    fn wide_cells_decode_like_u128_and_linearly() {
        let mut rng = StdRng::seed_from_u64(2);
        let keys = keys(500, 3);
        let (layout, rows, values, table) = encode_random(&keys, &mut rng);
        // Words 0 and 1 of every wide cell carry the u128 table; the other words are random.
        let wide: Vec<[u64; 8]> = table
            .iter()
            .map(|&c| {
                let mut w: [u64; 8] = rng.r#gen();
                w[0] = c as u64;
                w[1] = (c >> 64) as u64;
                w
            })
            .collect();
        let other: Vec<[u64; 8]> = (0..layout.len()).map(|_| rng.r#gen()).collect();
        let sum: Vec<[u64; 8]> = wide.iter().zip(&other).map(|(a, b)| a.xor(*b)).collect();
        for (row, value) in rows.iter().zip(&values) {
            let d = row.decode(layout.sparse_len(), &wide);
            assert_eq!(u128::from(d[0]) | u128::from(d[1]) << 64, *value);
            let expected = d.xor(row.decode(layout.sparse_len(), &other));
            assert_eq!(row.decode(layout.sparse_len(), &sum), expected);
        }
    }

    #[test]
    fn positions_distinct_and_in_range() {
        let mut rng = StdRng::seed_from_u64(3);
        for m in [3u32, 4, 5, 1000] {
            let layout = Layout::new(m, rng.r#gen()).unwrap();
            let keys: Vec<[u8; 16]> = (0..20_000).map(|_| rng.r#gen()).collect();
            let rows = layout.rows(&keys);
            let mut seen = vec![false; m as usize];
            for (key, row) in keys.iter().zip(&rows) {
                assert_eq!(layout.row(key), *row);
                let [a, b, c] = row.sparse;
                assert!(a < m && b < m && c < m, "m = {m}: {row:?}");
                assert!(a != b && a != c && b != c, "m = {m}: {row:?}");
                for p in row.sparse {
                    seen[p as usize] = true;
                }
            }
            assert!(seen.iter().all(|&s| s), "m = {m}: some position never used");
        }
    }

    #[test]
    fn fixed_vector() {
        let layout = Layout::new(1000, std::array::from_fn(|i| i as u8)).unwrap();
        let row = layout.row(&std::array::from_fn(|i| 0x10 + i as u8));
        println!("{row:?}");
        assert_eq!(row, Row { sparse: [456, 429, 69], dense: 0x2bed_43a4_46ce_9ac2 });
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let mut rng = StdRng::seed_from_u64(4);
        assert_eq!(Layout::new(2, [0; 16]).unwrap_err(), OkvsError::TableTooSmall { m: 2 });
        let layout = Layout::new(100, rng.r#gen()).unwrap();
        let key: [u8; 16] = rng.r#gen();
        let rows = layout.rows(&[key, key]);
        assert_eq!(encode(&layout, &rows, &[1, 2], &mut rng), Err(OkvsError::CoreUnsolvable { core: 2 }));
        // Identical keys with equal values are consistent.
        let table = encode(&layout, &rows, &[5, 5], &mut rng).unwrap();
        assert_eq!(rows[0].decode(100, &table), 5);
        assert_eq!(encode(&layout, &rows, &[1], &mut rng), Err(OkvsError::LengthMismatch { rows: 2, values: 1 }));
        let bad = [rows[0], Row { sparse: [1, 100, 2], dense: 0 }];
        assert_eq!(encode(&layout, &bad, &[1, 2], &mut rng), Err(OkvsError::InvalidRow { index: 1 }));
        let bad = [Row { sparse: [7, 3, 7], dense: 0 }];
        assert_eq!(encode(&layout, &bad, &[1], &mut rng), Err(OkvsError::InvalidRow { index: 0 }));
        // Far more keys than cells: the core cannot be solved.
        let rows = layout.rows(&keys(1000, 0));
        assert!(matches!(encode(&layout, &rows, &[0; 1000], &mut rng), Err(OkvsError::CoreUnsolvable { .. })));
        assert_eq!(sparse_len_for(u64::MAX), Err(OkvsError::TooManyKeys { n: u64::MAX }));
        assert!(!format!("{layout:?}").contains("cipher"));
    }

    #[test]
    fn non_key_decodes_to_unrelated_value() {
        let mut rng = StdRng::seed_from_u64(5);
        let keys = keys(1000, 9);
        let (layout, _, _, table) = encode_random(&keys, &mut rng);
        let target: u128 = rng.r#gen();
        let outsider = layout.row(&rng.r#gen());
        assert_ne!(outsider.decode(layout.sparse_len(), &table), target);
    }

    /// One encoding attempt for `n` fresh keys with sparse size `m`: (core size, success).
    fn attempt(n: usize, m: u32, rng: &mut StdRng) -> (usize, bool) {
        let layout = Layout::new(m, rng.r#gen()).unwrap();
        let rows = layout.rows(&keys(n, rng.r#gen()));
        let core = peel(m as usize, &rows).core.len();
        if core == 0 {
            return (0, true);
        }
        let values: Vec<u128> = (0..n).map(|_| rng.r#gen()).collect();
        (core, encode(&layout, &rows, &values, rng).is_ok())
    }

    fn stats(n: usize, m: u32, trials: u64, base: u64) -> String {
        let hist = Mutex::new(std::collections::BTreeMap::<usize, u64>::new());
        let fails = std::sync::atomic::AtomicU64::new(0);
        let start = Instant::now();
        (0..trials).into_par_iter().for_each(|t| {
            let mut rng = StdRng::seed_from_u64(base ^ (t << 20) ^ n as u64);
            let (core, ok) = attempt(n, m, &mut rng);
            if !ok {
                fails.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            *hist.lock().unwrap().entry(core).or_default() += 1;
        });
        let hist = hist.into_inner().unwrap();
        let nonzero: u64 = hist.iter().filter(|(k, _)| **k > 0).map(|(_, v)| v).sum();
        let over = |t: usize| -> u64 { hist.iter().filter(|(k, _)| **k > t).map(|(_, v)| v).sum() };
        let max = hist.keys().max().copied().unwrap_or(0);
        let small: Vec<String> =
            hist.iter().filter(|(k, _)| **k > 0 && **k <= 64).map(|(k, v)| format!("{k}:{v}")).take(12).collect();
        format!(
            "n={n} m={m} trials={trials} fails={} core>0:{nonzero} >8:{} >16:{} >32:{} >64:{} max={max} [{}] {:.1}s",
            fails.into_inner(),
            over(8),
            over(16),
            over(32),
            over(64),
            small.join(" "),
            start.elapsed().as_secs_f64()
        )
    }

    #[test]
    #[ignore]
    fn explore() {
        let var = |k: &str| std::env::var(k).unwrap();
        let c: f64 = var("C").parse().unwrap();
        let a: u32 = var("A").parse().unwrap();
        let trials: u64 = var("T").parse().unwrap();
        for n in var("N").split(',') {
            let n: usize = n.parse().unwrap();
            let m = (c * n as f64).ceil() as u32 + a;
            println!("{}", stats(n, m, trials, 0xabcdef));
        }
    }
}
