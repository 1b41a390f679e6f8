//! What is released from the decrypted per-group figures: suppression under the
//! minimum aggregate, optional differential-privacy noise, conversion rates and lift
//! with its confidence interval (docs/PRIVACY.md, "Measurement").

use rand::Rng;
use serde::{Serialize, Serializer};

/// The default minimum number of matched people behind any released figure.
pub const DEFAULT_MIN_AGGREGATE: u64 = 100;

/// One released figure: a number, or suppressed because it rests on fewer matched
/// people than the minimum aggregate (written `"<100"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// The figure (noisy if noise was asked for).
    Value(u64),
    /// Suppressed: fewer than this many matched people.
    Suppressed(u64),
}

impl Figure {
    /// The number, unless suppressed.
    pub fn value(self) -> Option<u64> {
        match self {
            Figure::Value(v) => Some(v),
            Figure::Suppressed(_) => None,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Figure::Value(v) => write!(f, "{v}"),
            Figure::Suppressed(min) => write!(f, "<{min}"),
        }
    }
}

impl Serialize for Figure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Figure::Value(v) => s.serialize_u64(*v),
            Figure::Suppressed(_) => s.serialize_str(&self.to_string()),
        }
    }
}

/// One group's exact figures after decryption (never released as they are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawGroup {
    /// The group label.
    pub label: String,
    /// Exposure records in the group.
    pub records: u64,
    /// `(matched exposure records, matched people, sum of values)`, or `None` if the
    /// partner suppressed the group.
    pub matched: Option<(u64, u64, u64)>,
}

/// One group's released figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupFigures {
    /// The group label.
    pub group: String,
    /// Exposure records in the group (known to both sides; never noised).
    pub group_size: u64,
    /// Exposure records matching at least one outcome person.
    pub matched_exposure_records: Figure,
    /// Outcome people matching at least one exposure record of the group.
    pub matched_outcome_people: Figure,
    /// Sum of the matched people's values.
    pub sum: Figure,
    /// Matched outcome people / group size.
    pub conversion_rate: Option<f64>,
}

/// Lift of `test` over `control`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lift {
    /// Conversion rate of `test`.
    pub test_rate: f64,
    /// Conversion rate of `control`.
    pub control_rate: f64,
    /// `test_rate − control_rate`.
    pub absolute: f64,
    /// `absolute / control_rate` (`None` when the control rate is 0).
    pub relative: Option<f64>,
    /// 95% confidence interval of `absolute`.
    pub ci95: [f64; 2],
    /// How the interval is computed.
    pub method: &'static str,
}

/// The CI method, as written to `measurement.json`.
pub const CI_METHOD: &str = "two-proportion normal approximation (unpooled Wald), z = 1.959964";

/// Differential-privacy noise on the released counts and sums.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Noise {
    /// The total epsilon of one measurement, split equally between the three noised
    /// figures of a group (matched records, matched people, sum).
    pub epsilon: f64,
    /// Values are clipped to at most this before encryption: the sum's sensitivity.
    pub clip: u64,
}

/// A two-sided geometric (discrete Laplace) draw with `P(k) ∝ exp(−ε|k|/Δ)`: the
/// difference of two geometric variables with success probability `1 − exp(−ε/Δ)`.
pub fn discrete_laplace<R: Rng>(epsilon: f64, sensitivity: f64, rng: &mut R) -> i64 {
    let alpha = (-epsilon / sensitivity).exp();
    let geometric = |rng: &mut R| -> i64 {
        // Failures before the first success: floor(ln U / ln α), U uniform in (0, 1].
        let u: f64 = 1.0 - rng.r#gen::<f64>();
        (u.ln() / alpha.ln()).floor().min(i64::MAX as f64 / 4.0) as i64
    };
    geometric(rng) - geometric(rng)
}

/// Releases `raw`: suppresses every figure of a group with fewer than
/// `min_aggregate` matched people, adds noise if asked, then derives rates and lift
/// from the released figures only.
pub fn release<R: Rng>(
    raw: &[RawGroup],
    min_aggregate: u64,
    noise: Option<Noise>,
    rng: &mut R,
) -> (Vec<GroupFigures>, Option<Lift>) {
    let groups: Vec<GroupFigures> = raw
        .iter()
        .map(|g| {
            let suppressed = Figure::Suppressed(min_aggregate);
            let (records, people, sum) = match g.matched {
                Some((records, people, sum)) if people >= min_aggregate => {
                    let mut noisy = |value: u64, sensitivity: f64| match noise {
                        None => Figure::Value(value),
                        Some(n) => {
                            let v = value as i128 + i128::from(discrete_laplace(n.epsilon / 3.0, sensitivity, rng));
                            Figure::Value(v.clamp(0, i128::from(u64::MAX)) as u64)
                        }
                    };
                    let clip = noise.map_or(1.0, |n| n.clip.max(1) as f64);
                    (noisy(records, 1.0), noisy(people, 1.0), noisy(sum, clip))
                }
                _ => (suppressed, suppressed, suppressed),
            };
            let conversion_rate = people.value().filter(|_| g.records > 0).map(|p| p as f64 / g.records as f64);
            GroupFigures {
                group: g.label.clone(),
                group_size: g.records,
                matched_exposure_records: records,
                matched_outcome_people: people,
                sum,
                conversion_rate,
            }
        })
        .collect();
    let lift = lift(&groups);
    (groups, lift)
}

/// Lift of the group labelled `test` over `control`, if both have a released rate.
fn lift(groups: &[GroupFigures]) -> Option<Lift> {
    let find = |label: &str| groups.iter().find(|g| g.group.eq_ignore_ascii_case(label));
    let (test, control) = (find("test")?, find("control")?);
    let (pt, pc) = (test.conversion_rate?, control.conversion_rate?);
    let var = |p: f64, n: u64| {
        let p = p.clamp(0.0, 1.0);
        p * (1.0 - p) / n as f64
    };
    let se = (var(pt, test.group_size) + var(pc, control.group_size)).sqrt();
    let absolute = pt - pc;
    let z = 1.959_964;
    Some(Lift {
        test_rate: pt,
        control_rate: pc,
        absolute,
        relative: (pc > 0.0).then(|| absolute / pc),
        ci95: [absolute - z * se, absolute + z * se],
        method: CI_METHOD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn group(label: &str, records: u64, matched: Option<(u64, u64, u64)>) -> RawGroup {
        RawGroup { label: label.into(), records, matched }
    }

    #[test]
    fn suppresses_under_the_minimum_and_computes_lift() {
        let raw = [group("test", 10_000, Some((600, 500, 9_000))), group("control", 10_000, Some((450, 400, 7_000)))];
        let (groups, lift) = release(&raw, 100, None, &mut StdRng::seed_from_u64(1));
        assert_eq!(groups[0].matched_outcome_people, Figure::Value(500));
        let lift = lift.unwrap();
        assert!((lift.absolute - 0.01).abs() < 1e-12);
        assert!((lift.relative.unwrap() - 0.25).abs() < 1e-12);
        // se = sqrt(.05·.95/1e4 + .04·.96/1e4) = 0.0029240383...
        let se = (0.05f64 * 0.95 / 1e4 + 0.04 * 0.96 / 1e4).sqrt();
        assert!((lift.ci95[0] - (0.01 - 1.959964 * se)).abs() < 1e-12);
        assert!((lift.ci95[1] - (0.01 + 1.959964 * se)).abs() < 1e-12);

        let raw = [group("test", 10_000, Some((120, 99, 9_000))), group("control", 50, None)];
        let (groups, lift) = release(&raw, 100, None, &mut StdRng::seed_from_u64(1));
        assert_eq!(groups[0].sum, Figure::Suppressed(100));
        assert_eq!(serde_json::to_value(groups[0].sum).unwrap(), serde_json::json!("<100"));
        assert_eq!(groups[1].matched_exposure_records, Figure::Suppressed(100));
        assert!(lift.is_none());
    }

    #[test]
    fn discrete_laplace_has_mean_zero_and_the_expected_spread() {
        let mut rng = StdRng::seed_from_u64(42);
        let (epsilon, sensitivity) = (0.5, 1.0);
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| discrete_laplace(epsilon, sensitivity, &mut rng) as f64).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64;
        let alpha = (-epsilon / sensitivity).exp();
        let expected = 2.0 * alpha / (1.0 - alpha).powi(2);
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var / expected - 1.0).abs() < 0.03, "variance {var}, expected {expected}");
    }

    #[test]
    fn noisy_releases_are_unbiased_and_reproducible() {
        let raw = [group("all", 100_000, Some((5_000, 4_000, 1_000_000)))];
        let noise = Some(Noise { epsilon: 1.0, clip: 1_000 });
        let runs = 4_000;
        let mut rng = StdRng::seed_from_u64(3);
        let (mut people, mut sums) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (g, _) = release(&raw, 100, noise, &mut rng);
            people.push(g[0].matched_outcome_people.value().unwrap() as f64);
            sums.push(g[0].sum.value().unwrap() as f64);
        }
        let stats = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
        };
        // ε/3 per figure: the people count's noise has scale 3, the sum's 3·clip.
        let (mp, sp) = stats(&people);
        let (ms, ss) = stats(&sums);
        let sd = |eps: f64, delta: f64| {
            let a = (-eps / delta).exp();
            (2.0 * a).sqrt() / (1.0 - a)
        };
        assert!((mp - 4_000.0).abs() < 0.3, "{mp}");
        assert!((sp / sd(1.0 / 3.0, 1.0) - 1.0).abs() < 0.06, "{sp}");
        assert!((ms - 1_000_000.0).abs() < 300.0, "{ms}");
        assert!((ss / sd(1.0 / 3.0, 1_000.0) - 1.0).abs() < 0.06, "{ss}");
        let again = release(&raw, 100, noise, &mut StdRng::seed_from_u64(9)).0;
        assert_eq!(again, release(&raw, 100, noise, &mut StdRng::seed_from_u64(9)).0);
    }
}
