//! Exact discrete Laplace sampling in integer arithmetic (Canonne, Kamath and
//! Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020,
//! Algorithms 1 and 2).
//!
//! A [`DiscreteLaplace`] of scale `t/s` draws `k` with probability proportional to
//! `exp(−|k|·s/t)`, exactly: every step is a uniform integer or a Bernoulli trial
//! with a rational probability, so there is no floating-point logarithm whose
//! rounding shapes the tails (the sampler it replaces, `⌊ln U / ln α⌋`, could not
//! reach values past about 2^53 scale units and was biased there). The scale comes
//! from the caller's `ε` exactly: an `f64` is a dyadic rational `m·2^e`, so
//! `Δ·share/ε` is the rational `Δ·share·2^−e / m`, reduced ([`DiscreteLaplace::new`]).
//!
//! Invariant: `t ≥ 1`, `s ≥ 1` and `t < 2^120` (a larger scale is refused), so every intermediate product fits
//! in a `u128` except with probability below `2^−100` (see [`DiscreteLaplace::sample`]).
//! Draws are `i128`, so no draw is clamped.

use rand::Rng;

/// The smallest total ε a measurement accepts: `2^−16` (≈ 0.000015), far below any
/// useful release, and small enough to keep every scale in integer range.
pub const MIN_EPSILON: f64 = 1.0 / 65_536.0;
/// The largest total ε a measurement accepts: `2^16` (no privacy at all long before).
pub const MAX_EPSILON: f64 = 65_536.0;

/// Why a scale cannot be sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// ε is not finite, or outside [`MIN_EPSILON`]`..=`[`MAX_EPSILON`].
    #[error("epsilon must be a finite number from 2^-16 to 2^16")]
    Epsilon,
    /// The sensitivity or the share of ε is 0.
    #[error("the sensitivity and the share of epsilon must be at least 1")]
    Zero,
    /// The scale is `2^120` or more (a sensitivity far above any value's bound).
    #[error("the noise scale is too large")]
    TooLarge,
}

/// The discrete Laplace distribution of scale `t/s`: `P(k) ∝ exp(−|k|·s/t)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscreteLaplace {
    t: u128,
    s: u128,
}

impl DiscreteLaplace {
    /// The noise for a figure of sensitivity `sensitivity` that spends `ε / share`
    /// (for example a count's third of a measurement's `ε`): scale
    /// `sensitivity · share / ε`, exactly.
    pub fn new(epsilon: f64, share: u64, sensitivity: u64) -> Result<DiscreteLaplace, ScaleError> {
        if !(MIN_EPSILON..=MAX_EPSILON).contains(&epsilon) {
            return Err(ScaleError::Epsilon);
        }
        if share == 0 || sensitivity == 0 {
            return Err(ScaleError::Zero);
        }
        let (mantissa, exponent) = dyadic(epsilon);
        // scale = sensitivity · share / (mantissa · 2^exponent); |exponent| ≤ 16 + 52.
        let numerator = u128::from(sensitivity) * u128::from(share);
        let (t, s) = if exponent < 0 {
            let shift = exponent.unsigned_abs();
            if numerator.leading_zeros() < shift + 8 {
                return Err(ScaleError::TooLarge);
            }
            (numerator << shift, u128::from(mantissa))
        } else if numerator >> 120 != 0 {
            return Err(ScaleError::TooLarge);
        } else {
            (numerator, u128::from(mantissa) << exponent)
        };
        let g = gcd(t, s);
        Ok(DiscreteLaplace { t: t / g, s: s / g })
    }

    /// The scale as the reduced fraction `(t, s)`.
    pub fn scale(self) -> (u128, u128) {
        (self.t, self.s)
    }

    /// One draw (CKS20, Algorithm 2).
    pub fn sample<R: Rng + ?Sized>(self, rng: &mut R) -> i128 {
        let DiscreteLaplace { t, s } = self;
        loop {
            let u = rng.gen_range(0..t);
            if !bernoulli_exp(u, t, rng) {
                continue;
            }
            let mut v: u128 = 0;
            while bernoulli_exp(1, 1, rng) {
                v += 1;
            }
            // v is geometric with ratio e^−1: v ≥ 2^7 already has probability
            // e^−128 < 2^−184, so an overflow (v·t ≥ 2^128 needs v > 2^8) is redrawn.
            let Some(x) = v.checked_mul(t).and_then(|vt| vt.checked_add(u)) else { continue };
            let y = x / s;
            let negative = rng.r#gen::<bool>();
            if negative && y == 0 {
                continue;
            }
            let Ok(y) = i128::try_from(y) else { continue };
            return if negative { -y } else { y };
        }
    }
}

/// `Bernoulli(exp(−n/d))` for `0 ≤ n/d`, exactly (CKS20, Algorithm 1, with the
/// integer part handled as repeated `Bernoulli(exp(−1))`).
fn bernoulli_exp<R: Rng + ?Sized>(n: u128, d: u128, rng: &mut R) -> bool {
    let (whole, rest) = (n / d, n % d);
    for _ in 0..whole {
        if !bernoulli_exp_below_one(1, 1, rng) {
            return false;
        }
    }
    bernoulli_exp_below_one(rest, d, rng)
}

/// `Bernoulli(exp(−n/d))` for `0 ≤ n/d ≤ 1`: the first `K` with a failed
/// `Bernoulli(n/(d·K))` is odd with probability `exp(−n/d)`.
fn bernoulli_exp_below_one<R: Rng + ?Sized>(n: u128, d: u128, rng: &mut R) -> bool {
    let mut k: u128 = 1;
    loop {
        // Bernoulli(n / (d·k)); d·k cannot overflow before k passes 2^8, which
        // needs 2^8 successes of probability at most 1/k each.
        let Some(dk) = d.checked_mul(k) else { return k % 2 == 1 };
        if rng.gen_range(0..dk) >= n {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// `x = mantissa · 2^exponent` exactly, the mantissa odd (or 0).
fn dyadic(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let exponent_bits = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mut mantissa, mut exponent) =
        if exponent_bits == 0 { (fraction, -1074) } else { (fraction | (1 << 52), exponent_bits - 1075) };
    if mantissa != 0 {
        let zeros = mantissa.trailing_zeros();
        mantissa >>= zeros;
        exponent += zeros as i32;
    }
    (mantissa, exponent)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_scale_is_the_exact_rational_of_the_f64() {
        // 0.5 = 1·2^−1: scale 1·3/0.5 = 6.
        assert_eq!(DiscreteLaplace::new(0.5, 3, 1).unwrap().scale(), (6, 1));
        // 0.1 is 3602879701896397·2^−55 exactly: scale 1000·3·2^55 / 3602879701896397.
        let (t, s) = DiscreteLaplace::new(0.1, 3, 1_000).unwrap().scale();
        assert_eq!(s, 3_602_879_701_896_397);
        assert_eq!(t, 3_000u128 << 55);
        assert!(((t as f64 / s as f64) - 30_000.0).abs() < 1e-9);
        // The largest scale in range still fits with room: 2^32 · 6 / 2^−16.
        let (t, s) = DiscreteLaplace::new(MIN_EPSILON, 6, 1 << 32).unwrap().scale();
        assert_eq!((t, s), (6u128 << 48, 1));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, MIN_EPSILON / 2.0, MAX_EPSILON * 2.0] {
            assert_eq!(DiscreteLaplace::new(bad, 1, 1), Err(ScaleError::Epsilon), "{bad}");
        }
        assert_eq!(DiscreteLaplace::new(1.0, 0, 1), Err(ScaleError::Zero));
        assert_eq!(DiscreteLaplace::new(1.0, 1, 0), Err(ScaleError::Zero));
        assert_eq!(DiscreteLaplace::new(MIN_EPSILON, u64::MAX, u64::MAX), Err(ScaleError::TooLarge));
    }

    #[test]
    fn bernoulli_exp_has_the_exact_probability() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000;
        for (num, den) in [(0u128, 1u128), (1, 3), (1, 1), (5, 2)] {
            let hits = (0..n).filter(|_| bernoulli_exp(num, den, &mut rng)).count() as f64 / n as f64;
            let p = (-(num as f64) / den as f64).exp();
            // Four standard deviations of a binomial proportion.
            assert!((hits - p).abs() <= 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-12, "{num}/{den}: {hits} vs {p}");
        }
    }

    /// The draws follow `P(k) = (1 − α)/(1 + α) · α^|k|`, `α = e^(−s/t)`: a
    /// chi-square test over the values up to ±12 and the two tails, against the
    /// exact probabilities computed independently here.
    #[test]
    fn draws_follow_the_discrete_laplace_probabilities() {
        let mut rng = StdRng::seed_from_u64(2024);
        let laplace = DiscreteLaplace::new(0.75, 1, 2).unwrap();
        let (t, s) = laplace.scale();
        let alpha = (-(s as f64) / t as f64).exp();
        let p = |k: i128| (1.0 - alpha) / (1.0 + alpha) * alpha.powi(k.unsigned_abs() as i32);
        let n = 300_000;
        let mut counts = std::collections::HashMap::<i128, u64>::new();
        for _ in 0..n {
            *counts.entry(laplace.sample(&mut rng).clamp(-13, 13)).or_default() += 1;
        }
        let tail = (13..2_000).map(p).sum::<f64>();
        let chi2: f64 = (-13i128..=13)
            .map(|k| {
                let expected = n as f64 * if k.abs() == 13 { tail } else { p(k) };
                let seen = counts.get(&k).copied().unwrap_or(0) as f64;
                (seen - expected).powi(2) / expected
            })
            .sum();
        // 26 degrees of freedom: the 99.9% quantile is 54.05.
        assert!(chi2 < 54.05, "chi-square {chi2}");
    }

    #[test]
    fn a_huge_scale_reaches_past_the_old_floating_point_cap() {
        // Scale 2^66 (sensitivity 2^32 at ε = 2^−16 with a share of 2^18... here
        // sensitivity 2^32, share 2^18): most draws are larger than 2^62, which
        // `⌊ln U / ln α⌋` capped at i64::MAX / 4.
        let laplace = DiscreteLaplace::new(MIN_EPSILON, 1 << 18, 1 << 32).unwrap();
        assert_eq!(laplace.scale(), (1u128 << 66, 1));
        let mut rng = StdRng::seed_from_u64(5);
        let beyond = (0..1_000).filter(|_| laplace.sample(&mut rng).unsigned_abs() > 1u128 << 62).count();
        assert!(beyond > 900, "{beyond}");
    }
}
