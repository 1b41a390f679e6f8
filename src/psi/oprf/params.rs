//! Parameters of the OPRF engine, derived from the two set sizes alone, so that both
//! sides compute the same values and the receiver can refuse a sender that announces
//! different ones.
//!
//! Security invariants (Chase–Miao, CRYPTO 2020, §3 and the parameter analysis):
//!
//! - **Computational security κ = 128.** The base OTs (ristretto255), the AES-128
//!   PRG and PRF, and the minimum number `d = κ = 128` of matrix positions per
//!   sender element that the receiver cannot predict (see below).
//! - **Statistical security σ = 40.** Every failure event below has probability at
//!   most 2⁻⁴⁰.
//!
//! Derivation, for the receiver's `n_R` and the sender's `n_S` distinct tokens:
//!
//! 1. **Height** `m = 2^L` rows. A power of two, so that a 32-bit PRF lane masked
//!    to `L` bits is an exactly uniform row index. Candidates are
//!    `L0 = max(8, ⌈log2 n_R⌉)` and `L0 + 1`.
//! 2. **Width** `w` columns, for a given `L`. Each receiver token clears one
//!    uniformly random bit in each column of the all-ones matrix `D`, so a given
//!    bit stays 1 with probability `p = (1 − 1/m)^{n_R}`. A sender token `x` that
//!    the receiver does not hold lands on `w` independent positions; its output is
//!    hidden from the receiver as long as at least `d = 128` of them are 1 (each
//!    such position carries one unknown bit of the sender's secret choice string
//!    `s` into `H2`). `w` is the smallest width with
//!    `n_S · Pr[Binomial(w, p) < d] ≤ 2⁻σ` (union bound over the sender's tokens;
//!    `n_S` is taken as at least 1).
//! 3. **Choice of `L`**: the candidate with the smaller
//!    `cost = w · (m + n_S + n_R)`: the matrix bits (PRG output and the receiver's
//!    upload, `m·w`) plus one random matrix access per token and column; ties go to
//!    the smaller `L`. For `n_S = n_R = 10⁶` this gives `L = 21`, `w = 333`
//!    (87.3 MB of matrix) instead of `L = 20`, `w = 589` (77.2 MB, but 1.8× the
//!    random accesses).
//! 4. **ℓ1 = 128 bits**: `H1(t)` is the AES block the PRF is applied to. Two
//!    different tokens collide with probability `n_S·n_R·2⁻¹²⁸ ≤ 2⁻⁶⁸` at the
//!    largest allowed sizes, below `2⁻σ`.
//! 5. **ℓ2 = σ + ⌈log2 n_S⌉ + ⌈log2 n_R⌉ bits, rounded up to whole bytes** (the
//!    output length): a false match among the `n_S·n_R` comparisons has
//!    probability at most `n_S·n_R·2^{−ℓ2} ≤ 2⁻σ`. For 10⁶ × 10⁶: 80 bits, 10
//!    bytes.
//!
//! All arithmetic is IEEE-754 `+ − × /` on `f64` (correctly rounded on every
//! platform, no `exp`/`log`), with an explicit exponent so that nothing underflows:
//! the result is bit-for-bit the same on both sides.

use super::error::OprfError;

/// Computational security parameter κ, and the minimum number `d` of unknown
/// positions per non-matching sender token.
pub const KAPPA: u32 = 128;
/// Statistical security parameter σ.
pub const SIGMA: u32 = 40;
/// Smallest `L` (`m = 256` rows, 32-byte columns).
pub const MIN_LOG_HEIGHT: u32 = 8;
/// Largest `L` (row indices are 32-bit lanes).
pub const MAX_LOG_HEIGHT: u32 = 32;
/// Largest width the derivation may produce or a peer may announce.
pub const MAX_WIDTH: u32 = 2048;
/// Largest set (distinct tokens) either side may have: 2³⁰.
pub const MAX_SET_SIZE: u64 = 1 << 30;
/// Bytes of `H1(t)` (ℓ1 = 128 bits).
pub const H1_LEN: usize = 16;

/// The parameters of one match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// `L`: the matrix has `m = 2^L` rows.
    pub log_height: u32,
    /// `w`: matrix columns (base OTs).
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
        let l0 = ceil_log2(receiver_size).max(MIN_LOG_HEIGHT);
        let mut best: Option<(u128, Params)> = None;
        for log_height in l0..=(l0 + 1).min(MAX_LOG_HEIGHT) {
            let width = min_width(log_height, sender_size, receiver_size)
                .ok_or(OprfError::BadConfig("no matrix width up to MAX_WIDTH is secure for these set sizes"))?;
            let cost =
                u128::from(width) * ((1u128 << log_height) + u128::from(sender_size) + u128::from(receiver_size));
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, Params { log_height, width, output_len: 0 }));
            }
        }
        let (_, mut params) = best.ok_or(OprfError::BadConfig("no matrix height candidate"))?;
        let bits = SIGMA + ceil_log2(sender_size) + ceil_log2(receiver_size);
        params.output_len = bits.div_ceil(8);
        Ok(params)
    }

    /// Rows `m`.
    pub fn height(&self) -> u64 {
        1u64 << self.log_height
    }

    /// Bytes per column: `m / 8`.
    pub fn column_bytes(&self) -> usize {
        1usize << (self.log_height - 3)
    }

    /// Bytes of the whole correction matrix: `w · m / 8`.
    pub fn matrix_bytes(&self) -> u64 {
        u64::from(self.width) << (self.log_height - 3)
    }
}

/// `⌈log2 n⌉`, with `⌈log2 0⌉ = ⌈log2 1⌉ = 0`.
pub fn ceil_log2(n: u64) -> u32 {
    if n <= 1 { 0 } else { 64 - (n - 1).leading_zeros() }
}

/// The smallest `w ≤ MAX_WIDTH` with `max(n_S, 1) · Pr[Bin(w, p) < KAPPA] ≤ 2^-SIGMA`,
/// `p = (1 − 2^-L)^{n_R}`; `None` if there is none.
pub fn min_width(log_height: u32, sender_size: u64, receiver_size: u64) -> Option<u32> {
    let secure = |w: u32| {
        let tail = binomial_lower_tail(w, one_probability(log_height, receiver_size), KAPPA);
        let bound = tail.mul(Ext::new(sender_size.max(1) as f64));
        bound.le(Ext::new(1.0 / (1u64 << SIGMA) as f64))
    };
    if !secure(MAX_WIDTH) {
        return None;
    }
    // The tail shrinks as w grows: binary search for the smallest secure width.
    let (mut lo, mut hi) = (KAPPA, MAX_WIDTH);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if secure(mid) { hi = mid } else { lo = mid + 1 }
    }
    Some(lo)
}

/// `p = (1 − 2^-L)^{n_R}`: a bit of `D` is still 1 after the receiver's tokens.
fn one_probability(log_height: u32, receiver_size: u64) -> f64 {
    let base = 1.0 - 1.0 / (1u64 << log_height) as f64;
    let (mut result, mut square, mut e) = (1.0f64, base, receiver_size);
    while e > 0 {
        if e & 1 == 1 {
            result *= square;
        }
        square *= square;
        e >>= 1;
    }
    result
}

/// `Pr[Binomial(w, p) < d]`, summed term by term with the recurrence
/// `t(k+1) = t(k) · (w−k)/(k+1) · p/(1−p)` from `t(0) = (1−p)^w`.
fn binomial_lower_tail(w: u32, p: f64, d: u32) -> Ext {
    let q = 1.0 - p;
    if q <= 0.0 {
        // Every bit stays 1: at least d ones whenever w ≥ d.
        return if w >= d { Ext::new(0.0) } else { Ext::new(1.0) };
    }
    let mut term = Ext::new(1.0);
    let mut e = w;
    let mut square = Ext::new(q);
    while e > 0 {
        if e & 1 == 1 {
            term = term.mul(square);
        }
        square = square.mul(square);
        e >>= 1;
    }
    let ratio = p / q;
    let mut sum = Ext::new(0.0);
    for k in 0..d.min(w + 1) {
        sum = sum.add(term);
        term = term.mul(Ext::new(f64::from(w - k) / f64::from(k + 1) * ratio));
    }
    sum
}

/// A non-negative number `mant · 2^(64·exp)` with `mant` kept in `[2⁻⁶⁴, 2⁶⁴)`
/// (or 0): f64 precision without underflow. Scaling by powers of two is exact.
#[derive(Clone, Copy, Debug)]
struct Ext {
    mant: f64,
    exp: i64,
}

const TWO_64: f64 = 18_446_744_073_709_551_616.0;
const TWO_M64: f64 = 1.0 / TWO_64;

impl Ext {
    fn new(value: f64) -> Ext {
        Ext { mant: value, exp: 0 }.normalized()
    }

    fn normalized(mut self) -> Ext {
        if self.mant == 0.0 || !self.mant.is_finite() {
            self.exp = 0;
            return self;
        }
        while self.mant >= TWO_64 {
            self.mant *= TWO_M64;
            self.exp += 1;
        }
        while self.mant < TWO_M64 {
            self.mant *= TWO_64;
            self.exp -= 1;
        }
        self
    }

    fn mul(self, other: Ext) -> Ext {
        Ext { mant: self.mant * other.mant, exp: self.exp + other.exp }.normalized()
    }

    fn add(self, other: Ext) -> Ext {
        if self.mant == 0.0 {
            return other;
        }
        if other.mant == 0.0 {
            return self;
        }
        let (hi, lo) = if self.exp >= other.exp { (self, other) } else { (other, self) };
        let diff = hi.exp - lo.exp;
        if diff > 2 {
            // lo < 2^-64 · hi: below f64 precision.
            return hi;
        }
        let mut scaled = lo.mant;
        for _ in 0..diff {
            scaled *= TWO_M64;
        }
        Ext { mant: hi.mant + scaled, exp: hi.exp }.normalized()
    }

    /// `self ≤ other`.
    fn le(self, other: Ext) -> bool {
        if self.mant == 0.0 {
            return true;
        }
        if other.mant == 0.0 {
            return false;
        }
        let diff = self.exp - other.exp;
        if diff > 2 {
            return false;
        }
        if diff < -2 {
            return true;
        }
        let (mut a, mut b) = (self.mant, other.mant);
        for _ in 0..diff.max(0) {
            a *= TWO_64;
        }
        for _ in 0..(-diff).max(0) {
            b *= TWO_64;
        }
        a <= b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widths of the paper's semi-honest parameter table for `m = n_R = n_S = n`
    /// (independently recomputed with `lgamma` in Python): 609, 615, 621, 627, 633
    /// for n = 2^16 … 2^24 sender tokens at p = (1 − 1/m)^m.
    #[test]
    fn widths_match_the_paper_table() {
        for (log_n, w) in [(16, 609), (18, 615), (20, 621), (22, 627), (24, 633)] {
            assert_eq!(min_width(20, 1 << log_n, 1 << 20), Some(w), "n_S = 2^{log_n}");
        }
        assert_eq!(min_width(16, 1 << 16, 1 << 16), Some(609));
    }

    #[test]
    fn million_by_million() {
        let p = Params::derive(1_000_000, 1_000_000).unwrap();
        assert_eq!(p, Params { log_height: 21, width: 333, output_len: 10 });
        assert_eq!(min_width(20, 1_000_000, 1_000_000), Some(589));
        assert_eq!(p.matrix_bytes(), 333 << 18);
    }

    #[test]
    fn tiny_and_empty_sets() {
        // No receiver token: every bit of D is 1, so w = κ suffices.
        assert_eq!(Params::derive(5, 0).unwrap(), Params { log_height: 8, width: 128, output_len: 6 });
        // One receiver token in 256 rows: each position is 1 with p = 255/256;
        // 128 columns would leave fewer than 128 ones with probability ≈ 0.39.
        let one = Params::derive(1, 1).unwrap();
        assert_eq!(one.log_height, 8);
        assert!(one.width > 128 && one.width < 160, "{one:?}");
        assert_eq!(Params::derive(0, 0).unwrap().output_len, 5);
    }

    #[test]
    fn too_large_sets_are_refused() {
        assert!(matches!(Params::derive(MAX_SET_SIZE + 1, 1), Err(OprfError::SetSizeOutOfRange { .. })));
        assert!(Params::derive(MAX_SET_SIZE, MAX_SET_SIZE).is_ok());
    }

    #[test]
    fn ext_arithmetic_does_not_underflow() {
        let tiny = Ext::new(1e-300).mul(Ext::new(1e-300));
        assert!(tiny.mant > 0.0);
        assert!(tiny.le(Ext::new(1e-300)));
        assert!(!Ext::new(1e-300).le(tiny));
        assert!(Ext::new(2.0).add(Ext::new(3.0)).le(Ext::new(5.0)));
        assert!(Ext::new(5.0).le(Ext::new(2.0).add(Ext::new(3.0))));
        assert_eq!(ceil_log2(0), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(1_000_000), 20);
        assert_eq!(ceil_log2(1 << 20), 20);
        assert_eq!(ceil_log2((1 << 20) + 1), 21);
    }
}
