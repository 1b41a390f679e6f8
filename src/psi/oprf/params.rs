//! Parameters of the OPRF engine, derived from the two set sizes alone, so that both
//! sides compute the same values and the receiver can refuse a sender that announces
//! different ones.
//!
//! Security invariants (PaXoS PSI, Pinkas–Rosulek–Trieu–Yanai, EUROCRYPT 2020, on
//! the actively secure OT extension of Orrù–Orsini–Scholl, CT-RSA 2017):
//!
//! - **Computational security κ = 128.** The base OTs (ristretto255), the AES-128
//!   PRG, SHA-256, and at least κ bits of the sender's secret choice string `s` in
//!   every output the receiver did not program (below).
//! - **Statistical security σ = 40.** Every failure event below has probability at
//!   most 2⁻⁴⁰.
//!
//! Derivation, for the receiver's `n_R` and the sender's `n_S` distinct tokens:
//!
//! 1. **Width** `w = 511` columns (one base OT each): the length of the BCH code
//!    [511, 76, 171] ([`super::code`]). Two different code words differ in at least
//!    `d = 171 = κ + σ + 3` positions; the consistency check lets a cheating
//!    receiver learn at most σ bits of `s` unless it is caught with probability
//!    `1 − 2⁻σ`, so every output it did not program keeps at least κ unknown bits.
//! 2. **Table** `m = sparse_len_for(n_R)` sparse cells plus 64 dense cells
//!    ([`super::okvs`]): the receiver's encoding of `{H(y) : y}`. A receiver,
//!    whatever it sends, programs `m + 64` points (the table's degrees of freedom;
//!    each point beyond needs a linear dependency among its candidates whose 76-bit
//!    values cancel), the bound on what a cheating receiver learns.
//! 3. **Height** `h` rows: the table, then at least [`MASK_ROWS`] rows of fresh
//!    random values that hide the linear combinations the check reveals, rounded up
//!    to a multiple of 64: `h = ⌈(m + 64 + 104) / 64⌉ · 64`.
//! 4. **Check**: [`CHECK_PLANES`] = 64 random combinations of the rows; a row that
//!    is not a code word passes all 64 with probability at most 2⁻⁶⁴, unless its
//!    error lies on positions the receiver then has to guess (learning at most σ of
//!    them except with probability 2⁻σ). `MASK_ROWS = 64 + σ` random rows make the
//!    revealed combinations of the table uniform except with probability 2⁻σ.
//! 5. **ℓ2 = σ + ⌈log2 n_S⌉ + ⌈log2 n_R⌉ bits, rounded up to whole bytes** (the
//!    output length): a false match among the `n_S·n_R` comparisons has
//!    probability at most `n_S·n_R·2^{−ℓ2} ≤ 2⁻σ`. For 10⁶ × 10⁶: 80 bits, 10
//!    bytes.

use super::code::{CODE_DISTANCE, CODE_LEN};
use super::error::OprfError;
use super::okvs::{self, DENSE};

/// Statistical security parameter σ.
pub const SIGMA: u32 = 40;
/// Largest set (distinct tokens) either side may have: 2³⁰.
pub const MAX_SET_SIZE: u64 = 1 << 30;
/// The code's distance covers κ = 128 unknown positions plus σ the check may leak.
const _: () = assert!(CODE_DISTANCE >= 128 + SIGMA as usize);
/// Matrix columns: the code length.
pub const WIDTH: u32 = CODE_LEN as u32;
/// Random combinations of the rows in the consistency check (one bit each of a
/// 64-bit word per row).
pub const CHECK_PLANES: usize = 64;
/// Least number of random rows after the table: `CHECK_PLANES + σ`.
pub const MASK_ROWS: u64 = CHECK_PLANES as u64 + SIGMA as u64;

/// The parameters of one match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// `m`: sparse cells of the receiver's table.
    pub sparse_len: u32,
    /// `h`: matrix rows (a multiple of 64).
    pub height: u32,
    /// `w`: matrix columns (base OTs), always [`WIDTH`].
    pub width: u32,
    /// `ℓ2 / 8`: bytes of each OPRF output sent by the sender.
    pub output_len: u32,
}

impl Params {
    /// Derives the parameters for a sender with `sender_size` and a receiver with
    /// `receiver_size` distinct tokens (module documentation).
    pub fn derive(sender_size: u64, receiver_size: u64) -> Result<Params, OprfError> {
        for (size, what) in [(sender_size, "sender"), (receiver_size, "receiver")] {
            if size > MAX_SET_SIZE {
                return Err(OprfError::SetSizeOutOfRange { what, size, min: 0, max: MAX_SET_SIZE });
            }
        }
        let sparse_len = okvs::sparse_len_for(receiver_size)
            .map_err(|_| OprfError::BadConfig("no table size for this receiver set size"))?;
        let height = (u64::from(sparse_len) + DENSE as u64 + MASK_ROWS).div_ceil(64) * 64;
        let height = u32::try_from(height).map_err(|_| OprfError::BadConfig("matrix height above 2^32"))?;
        let bits = SIGMA + ceil_log2(sender_size) + ceil_log2(receiver_size);
        Ok(Params { sparse_len, height, width: WIDTH, output_len: bits.div_ceil(8) })
    }

    /// Cells of the receiver's table: `m + 64`.
    pub fn table_len(&self) -> usize {
        self.sparse_len as usize + DENSE
    }

    /// Bytes per column: `h / 8`.
    pub fn column_bytes(&self) -> usize {
        self.height as usize / 8
    }

    /// Bytes of the whole correction matrix: `w · h / 8`.
    pub fn matrix_bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) / 8
    }
}

/// The most sender outputs a receiver that announced `announced` tokens in all,
/// over `streams` matches (a sharded run's shards, or 1), can learn by what its
/// tables encode: `Σ (m_i + 64)` over the streams. For one stream that is exactly
/// `m + 64`; for a run, whatever the split, at most `⌈1.25·announced⌉ + 215·streams`
/// (each stream's `⌈1.25·n_i⌉ + 150 + 64`). What the owner charges a partner's
/// identifier budget for a match where the partner is the receiver
/// (docs/PRIVACY.md, "Under `oprf`"): the table's slack, and a run of many nearly
/// empty shards, are paid for like tokens sent. Saturates instead of overflowing.
pub fn receiver_capacity(announced: u64, streams: u64) -> u64 {
    if streams <= 1 {
        return okvs::sparse_len_for(announced).map_or(u64::MAX, |m| u64::from(m).saturating_add(DENSE as u64));
    }
    let bound = (u128::from(announced) * 5).div_ceil(4) + u128::from(streams) * (1 + 150 + DENSE as u128);
    u64::try_from(bound).unwrap_or(u64::MAX)
}

/// `⌈log2 n⌉`, with `⌈log2 0⌉ = ⌈log2 1⌉ = 0`.
pub fn ceil_log2(n: u64) -> u32 {
    if n <= 1 { 0 } else { 64 - (n - 1).leading_zeros() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn million_by_million() {
        let p = Params::derive(1_000_000, 1_000_000).unwrap();
        assert_eq!(p.width, 511);
        assert_eq!(p.output_len, 10);
        assert_eq!(p.height % 64, 0);
        assert!(u64::from(p.height) >= u64::from(p.sparse_len) + 64 + MASK_ROWS);
        assert!(u64::from(p.height) < u64::from(p.sparse_len) + 64 + MASK_ROWS + 64);
        // The correction matrix stays under the 120 MB budget with room for
        // the outputs.
        assert!(p.matrix_bytes() < 100_000_000, "{}", p.matrix_bytes());
    }

    #[test]
    fn tiny_and_empty_sets() {
        for (s, r) in [(0, 0), (0, 1), (1, 0), (1, 1), (5, 3)] {
            let p = Params::derive(s, r).unwrap();
            assert!(u64::from(p.height) >= u64::from(p.sparse_len) + 64 + MASK_ROWS, "{s} {r}");
            assert!(p.output_len >= 5);
        }
    }

    #[test]
    fn capacity_bounds_every_split_of_a_run() {
        let table = |n: u64| Params::derive(0, n).unwrap().table_len() as u64;
        assert_eq!(receiver_capacity(1000, 1), table(1000));
        assert_eq!(receiver_capacity(1000, 1), 1464);
        for (sizes, streams) in [(vec![1000u64, 0, 0, 0], 4u64), (vec![250; 4], 4), (vec![0; 4096], 4096)] {
            let run: u64 = sizes.iter().sum();
            let exact: u64 = sizes.iter().map(|&n| table(n)).sum();
            assert!(exact <= receiver_capacity(run, streams), "{sizes:?}");
        }
        // 4,096 empty shards: each still has a table of 214 cells to program.
        assert!(receiver_capacity(0, 4096) >= 4096 * 214);
        assert_eq!(receiver_capacity(u64::MAX, 1 << 20), u64::MAX);
    }

    #[test]
    fn too_large_sets_are_refused() {
        assert!(matches!(Params::derive(MAX_SET_SIZE + 1, 1), Err(OprfError::SetSizeOutOfRange { .. })));
        assert!(matches!(Params::derive(1, MAX_SET_SIZE + 1), Err(OprfError::SetSizeOutOfRange { .. })));
    }
}
