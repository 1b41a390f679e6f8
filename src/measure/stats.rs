//! What is released from the decrypted per-group figures: suppression under the
//! minimum aggregate, optional differential-privacy noise, conversion rates and lift
//! with its confidence interval (docs/PRIVACY.md, "Measurement").
//!
//! Where the owner decrypts (learner `owner` or `both`), [`release`] does all of it.
//! Where only the partner learns, the owner draws the sum's noise ([`Noise::limbs`])
//! and adds it inside its decryption shares to each limb; the partner, which knows
//! the exact counts anyway, noises them ([`noisy_count`]) and builds the same
//! figures with [`GroupFigures::new`] and [`Measurement::new`].

use rand::rngs::{OsRng, StdRng};
use rand::{Rng, SeedableRng};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::Learner;
use super::elgamal::{LIMBS, Split};
use super::laplace::{DiscreteLaplace, ScaleError};
use super::message::MAX_BUNDLE;
use super::partner::MAX_SHARE_RANGE;
use crate::records::MAX_VALUE;

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

/// A number, or `"<N"` (suppressed under `N`): what [`Figure`]'s `Serialize` writes.
impl<'de> Deserialize<'de> for Figure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Figure, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Value(u64),
            Suppressed(String),
        }
        match Written::deserialize(d)? {
            Written::Value(v) => Ok(Figure::Value(v)),
            Written::Suppressed(s) => s
                .strip_prefix('<')
                .and_then(|n| n.parse().ok())
                .map(Figure::Suppressed)
                .ok_or_else(|| de::Error::custom("a figure is a number or \"<N\"")),
        }
    }
}

/// One group's exact counts before release (never released as they are); its sum
/// is decrypted by [`release`] only if the group is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawGroup {
    /// The group label.
    pub label: String,
    /// Exposure records in the group.
    pub records: u64,
    /// `(matched exposure records, matched people)`, or `None` if the partner sent
    /// no sum for the group (suppressed on its side, possible without noise only).
    pub matched: Option<(u64, u64)>,
}

/// The released figures of one measurement (also the §12 `Release` message's JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// One line per group, in the partner's label order.
    pub groups: Vec<GroupFigures>,
    /// Lift of `test` over `control`, when both groups exist and are released.
    pub lift: Option<Lift>,
}

impl Measurement {
    /// The measurement of released group figures: lift from their rates.
    pub fn new(groups: Vec<GroupFigures>) -> Measurement {
        let lift = lift(&groups);
        Measurement { groups, lift }
    }
}

/// The figures as the CLI prints them: a line per group, then the lift.
impl std::fmt::Display for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |f: &mut std::fmt::Formatter<'_>, cells: [&dyn std::fmt::Display; 6]| {
            let [group, size, records, people, sum, rate] = cells;
            writeln!(f, "{group:<12} {size:>12} {records:>16} {people:>16} {sum:>16} {rate:>10}")
        };
        row(f, [&"group", &"size", &"matched_records", &"matched_people", &"sum", &"rate"])?;
        for g in &self.groups {
            let rate = match (g.conversion_rate, g.matched_outcome_people) {
                (Some(r), _) => format!("{:.4}%", r * 100.0),
                (None, Figure::Suppressed(min)) => format!("<{min}"),
                (None, Figure::Value(_)) => "-".to_owned(),
            };
            let cells = [g.matched_exposure_records, g.matched_outcome_people, g.sum].map(|x| x.to_string());
            row(f, [&g.group, &g.group_size, &cells[0], &cells[1], &cells[2], &rate])?;
        }
        let suppressed_under = |label: &str| {
            self.groups.iter().find(|g| g.group.eq_ignore_ascii_case(label)).map(|g| g.matched_outcome_people)
        };
        match (&self.lift, suppressed_under("test"), suppressed_under("control")) {
            (Some(l), ..) => writeln!(
                f,
                "lift (test vs control): absolute {:+.4} pp, relative {}, 95% CI [{:+.4}, {:+.4}] pp ({})",
                l.absolute * 100.0,
                l.relative.map_or_else(|| "n/a".to_owned(), |r| format!("{:+.2}%", r * 100.0)),
                l.ci95[0] * 100.0,
                l.ci95[1] * 100.0,
                l.method
            ),
            (None, Some(test), Some(control)) => {
                let min = [test, control].into_iter().find_map(|f| match f {
                    Figure::Suppressed(min) => Some(min),
                    Figure::Value(_) => None,
                });
                match min {
                    Some(min) => writeln!(f, "lift: suppressed (test or control under {min} matched people)"),
                    None => Ok(()),
                }
            }
            (None, ..) => Ok(()),
        }
    }
}

/// One group's released figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

impl GroupFigures {
    /// A group of `size` records whose figures are `released` (matched records,
    /// matched people, sum: already noised where noise is asked for), or suppressed
    /// under `min_aggregate` when `None`; the rate from the released figures.
    pub fn new(label: &str, size: u64, released: Option<(u64, u64, u64)>, min_aggregate: u64) -> GroupFigures {
        let figure =
            |f: fn((u64, u64, u64)) -> u64| released.map_or(Figure::Suppressed(min_aggregate), |r| Figure::Value(f(r)));
        let people = figure(|r| r.1);
        GroupFigures {
            group: label.to_owned(),
            group_size: size,
            matched_exposure_records: figure(|r| r.0),
            matched_outcome_people: people,
            sum: figure(|r| r.2),
            conversion_rate: people.value().filter(|_| size > 0).map(|p| p as f64 / size as f64),
        }
    }
}

/// Lift of `test` over `control`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// How the interval is computed ([`CI_METHOD`]).
    pub method: String,
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

/// Noise on a limb is redrawn until its magnitude is at most this many times its
/// scale `Δ/ε`: the tail cut off has probability about `e^−40` (under 10^−17), the
/// price of a bounded search for the partner's decryption.
pub const NOISE_TAIL: f64 = 40.0;

/// `value` plus discrete Laplace noise of sensitivity `sensitivity` at `epsilon / 3`
/// (a count's share of a measurement's total `epsilon`), clamped at 0.
pub fn noisy_count<R: Rng>(value: u64, epsilon: f64, sensitivity: u64, rng: &mut R) -> Result<u64, ScaleError> {
    Ok(clamp(i128::from(value) + DiscreteLaplace::new(epsilon, 3, sensitivity)?.sample(rng)))
}

impl Noise {
    /// The privacy loss of one measurement for one outcome person in the worst case,
    /// the amount a budget is charged: with `identifiers` the most identifiers one
    /// person of the owner has (its bundle width `w`) and `groups` the partner's
    /// groups `G`. The owner refuses repeated elements in the partner's bundles, so
    /// such a person matches at most `w` exposure bundles, in at most `min(w, G)`
    /// groups: it moves the matched records by at most `w` in all, and the matched
    /// people and the sum of at most `min(w, G)` groups by 1 and the clip each.
    /// Each figure spends `ε/3` per unit of its sensitivity, so the total is
    /// `ε/3 · (w + 2·min(w, G))`: `ε` for a person with one identifier, `2ε` for
    /// one with an email and a phone split over two groups.
    pub fn worst_case_epsilon(self, groups: u64, identifiers: u64) -> f64 {
        let w = identifiers.max(1);
        let in_groups = w.min(groups.max(1));
        self.epsilon / 3.0 * (w + 2 * in_groups) as f64
    }

    /// Whether this noise can be drawn: `epsilon` within
    /// [`MIN_EPSILON`](super::laplace::MIN_EPSILON)`..=`[`MAX_EPSILON`](super::laplace::MAX_EPSILON)
    /// and `clip` at least 1.
    pub fn check(self) -> Result<(), ScaleError> {
        self.sum_noise().map(drop)
    }

    /// The sum's sensitivity: the clip, or [`MAX_VALUE`] (no value is larger).
    fn sensitivity(self) -> u64 {
        self.clip.min(MAX_VALUE)
    }

    /// The noise of a sum the owner decrypts: sensitivity the clip, `ε/3`.
    fn sum_noise(self) -> Result<DiscreteLaplace, ScaleError> {
        DiscreteLaplace::new(self.epsilon, 3, self.sensitivity())
    }

    /// Where values clipped at this noise's clip are cut into limbs: both sides
    /// derive it from the clip the campaign announces.
    pub fn split(self) -> Split {
        Split::for_clip(self.sensitivity())
    }

    /// The sum's `ε/3` spent on its limbs, for decryption by the partner, which
    /// learns each limb's noisy sum: `ε/6` per limb, each with the sensitivity of a
    /// slot ([`Split::slot_sensitivity`], the largest limb of any value up to the
    /// clip), not of the limb an honest partner puts there. A partner that puts one
    /// person's low limb in the high slot (or the other way round), or the same
    /// limb in both, reads it with noise of that scale: by sequential composition
    /// the two slots together are `ε/3`-DP for one person's value, whatever the
    /// partner placed in them (issue 20, attack 2). Every slot is noised, also a
    /// limb that cannot change for honest values.
    fn share_noise(self) -> Result<[DiscreteLaplace; LIMBS], ScaleError> {
        let slot = DiscreteLaplace::new(self.epsilon, 6, self.split().slot_sensitivity(self.sensitivity()))?;
        Ok([slot; LIMBS])
    }

    /// The sum's `ε/3` spent on the limbs the partner noises before the owner
    /// decrypts them (learner `owner` or `both`): each limb with its own proven
    /// bound ([`Split::limb_bounds`]: the owner's range proofs hold it there) times
    /// `reach`, the people one exposure record can match (the partner's bundle
    /// width: its elements each equal at most one of the owner's), so one record
    /// moves a limb's sum by at most that. The low limb gets `ε/12` and the high
    /// one `ε/4`: the released sum is `low + high·2^s`, so the high limb's noise,
    /// multiplied by `2^s`, is nearly all of it, and gets most of the budget (the
    /// sum's noise is then about `4·reach·V/ε`, against `6·reach·V/ε` for an even
    /// split). By sequential composition the limbs together are `ε/3`-DP for one
    /// exposure record, whatever values the owner proved.
    fn partner_noise(self, reach: u64) -> Result<[DiscreteLaplace; LIMBS], ScaleError> {
        let [low, high] = self.split().limb_bounds(self.sensitivity()).map(|b| b.max(1).saturating_mul(reach.max(1)));
        Ok([DiscreteLaplace::new(self.epsilon, 12, low)?, DiscreteLaplace::new(self.epsilon, 4, high)?])
    }

    /// Per limb, the largest noise of the owner's shares ([`Noise::limbs`]):
    /// `⌈40·6Δ/ε⌉`, the limb's scale times [`NOISE_TAIL`] (the same for both limbs).
    pub fn limb_bounds(self) -> Result<[u64; LIMBS], ScaleError> {
        Ok(tail_bounds(self.share_noise()?))
    }

    /// The owner's share noise, one draw per limb within its [`Noise::limb_bounds`]
    /// (redrawn past it): by sequential composition the limbs together are
    /// `ε/3`-DP for one person's value, as the sum is when the owner adds the noise
    /// after decrypting (up to the tail cut off).
    pub fn limbs<R: Rng>(self, rng: &mut R) -> Result<[i64; LIMBS], ScaleError> {
        draw_within(self.share_noise()?, rng)
    }

    /// Per limb, the largest noise of the partner's ([`Noise::partner_limbs`]):
    /// what the owner adds to its search on either side, derived from the
    /// campaign, never from a message.
    pub fn partner_limb_bounds(self, reach: u64) -> Result<[u64; LIMBS], ScaleError> {
        Ok(tail_bounds(self.partner_noise(reach)?))
    }

    /// The partner's noise on each limb of a group's sum before the owner decrypts
    /// it ([`Noise::partner_noise`]'s scales), each within its bound.
    pub fn partner_limbs<R: Rng>(self, reach: u64, rng: &mut R) -> Result<[i64; LIMBS], ScaleError> {
        draw_within(self.partner_noise(reach)?, rng)
    }

    /// The widest plaintext range, over both limbs, that decrypting a group's sum of
    /// at most `people` people searches under `learner`: `people · limb_max` plus
    /// twice the noise bound (below 0 and above), the partner's for any bundle width
    /// up to [`MAX_BUNDLE`] when the owner decrypts, the owner's shares' when the
    /// partner does. Within [`MAX_SHARE_RANGE`] or refused, when the campaign is
    /// loaded (`people` 0: the noise alone) and before a measurement is charged (the
    /// owner's people), so that no run is charged for a search it will refuse.
    pub fn check_search(self, learner: Learner, people: u64) -> Result<(), SearchTooWide> {
        let noise = match learner {
            Learner::Partner => self.limb_bounds(),
            Learner::Owner | Learner::Both => self.partner_limb_bounds(u64::from(MAX_BUNDLE)),
        }
        .map_err(SearchTooWide::Scale)?;
        let limb_max = self.split().limb_max();
        let range = (0..LIMBS)
            .map(|l| people.saturating_mul(limb_max[l]).saturating_add(noise[l].saturating_mul(2)))
            .max()
            .unwrap_or(0);
        if range > MAX_SHARE_RANGE {
            return Err(SearchTooWide::Range { range, people });
        }
        Ok(())
    }
}

/// Why a campaign's noise cannot be searched ([`Noise::check_search`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SearchTooWide {
    /// The noise itself cannot be drawn.
    #[error(transparent)]
    Scale(ScaleError),
    /// The search would exceed [`MAX_SHARE_RANGE`] (2^44).
    #[error(
        "decrypting a sum of {people} people would search {range} values, above the limit of 2^44: raise epsilon \
         or lower value_max (the noise bound grows with value_max / epsilon)"
    )]
    Range {
        /// The widest range, in plaintext values.
        range: u64,
        /// The people it was computed for (0: the noise alone).
        people: u64,
    },
}

/// Per limb, `⌈scale · NOISE_TAIL⌉`: the most noise a draw may carry.
fn tail_bounds(noise: [DiscreteLaplace; LIMBS]) -> [u64; LIMBS] {
    noise.map(|n| {
        let (t, s) = n.scale();
        (NOISE_TAIL as u128 * t).div_ceil(s).min(u128::from(u64::MAX)) as u64
    })
}

/// One draw per limb, redrawn until within its [`tail_bounds`].
fn draw_within<R: Rng>(noise: [DiscreteLaplace; LIMBS], rng: &mut R) -> Result<[i64; LIMBS], ScaleError> {
    let bounds = tail_bounds(noise);
    let mut out = [0i64; LIMBS];
    for ((draw, bound), n) in out.iter_mut().zip(bounds).zip(noise) {
        *draw = loop {
            let d = n.sample(rng);
            if d.unsigned_abs() <= u128::from(bound)
                && let Ok(d) = i64::try_from(d)
            {
                break d;
            }
        };
    }
    Ok(out)
}

/// The standard deviation of a discrete Laplace of scale `Δ/ε`: `√(2α)/(1 − α)`, `α = e^(−ε/Δ)`.
#[cfg(test)]
pub(crate) fn laplace_sd(epsilon: f64, sensitivity: f64) -> f64 {
    let a = (-epsilon / sensitivity).exp();
    (2.0 * a).sqrt() / (1.0 - a)
}

/// The mean and the (population) standard deviation of `values`.
#[cfg(test)]
pub(crate) fn mean_sd(values: &[f64]) -> (f64, f64) {
    let m = values.iter().sum::<f64>() / values.len() as f64;
    (m, (values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / values.len() as f64).sqrt())
}

/// The generator of a side's noise: from `seed` (reproducible tests), or seeded
/// from the OS.
pub fn noise_rng(seed: Option<u64>) -> Result<StdRng, super::MeasureError> {
    match seed {
        Some(seed) => Ok(StdRng::seed_from_u64(seed)),
        None => StdRng::from_rng(OsRng).map_err(|e| super::MeasureError::Rng(e.to_string())),
    }
}

/// A noisy figure clamped to `0..=u64::MAX` (post-processing).
pub fn clamp(value: i128) -> u64 {
    value.clamp(0, i128::from(u64::MAX)) as u64
}

/// The noise the releasing side adds itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Noising {
    /// The measurement's total ε, when the counts are noised here (`ε/3` each).
    pub counts: Option<f64>,
    /// The sums' noise, when it is added here; `None` when there is none or when
    /// the sums arrive noised already (learner `partner`: the owner's shares carry it).
    pub sum: Option<Noise>,
}

impl Noising {
    /// All of `noise` added here (the owner decrypts).
    pub fn all(noise: Option<Noise>) -> Noising {
        Noising { counts: noise.map(|n| n.epsilon), sum: noise }
    }
}

/// Releases `raw`, the one path from exact figures to released ones (the owner when
/// it decrypts, the partner under learner `partner`).
///
/// Per group, first the counts: with noise (`noising.counts`), each count gets its
/// discrete Laplace draw and the group is suppressed when its **noisy** matched
/// people count is under `min_aggregate`; without noise, when the exact count is.
/// Deciding on the exact count would make suppression itself an exact threshold (a
/// group at the minimum flips with one person, issue 20, attack 3), so with noise no
/// exact count decides anything. Only then, for a released group, `sum(g)` is asked
/// for its exact sum (the caller decrypts it there: a suppressed group's sum is
/// never decrypted), the sum's noise of `noising` is added, and the figures are
/// clamped at 0. Rates and lift are derived from the released figures only.
pub fn release<R: Rng>(
    raw: &[RawGroup],
    min_aggregate: u64,
    noising: Noising,
    rng: &mut R,
    mut sum: impl FnMut(usize) -> Result<i128, super::MeasureError>,
) -> Result<Measurement, super::MeasureError> {
    let sum_noise = noising.sum.map(Noise::sum_noise).transpose()?;
    let mut groups = Vec::with_capacity(raw.len());
    for (g, group) in raw.iter().enumerate() {
        let counts = match (group.matched, noising.counts) {
            (None, _) => None,
            (Some((records, people)), Some(e)) => {
                Some((noisy_count(records, e, 1, rng)?, noisy_count(people, e, 1, rng)?))
            }
            (Some(exact), None) => Some(exact),
        };
        let released = match counts.filter(|&(_, people)| people >= min_aggregate) {
            None => None,
            Some((records, people)) => {
                let noisy = sum(g)? + sum_noise.map_or(0, |n| n.sample(rng));
                Some((records, people, clamp(noisy)))
            }
        };
        groups.push(GroupFigures::new(&group.label, group.records, released, min_aggregate));
    }
    Ok(Measurement::new(groups))
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
        method: CI_METHOD.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn group(label: &str, records: u64, matched: Option<(u64, u64, u64)>) -> RawGroup {
        RawGroup { label: label.into(), records, matched: matched.map(|(r, p, _)| (r, p)) }
    }

    /// [`release`] of `raw`, each group's sum the third figure of `figures`.
    fn release_of(
        raw: &[RawGroup],
        figures: &[Option<(u64, u64, u64)>],
        noising: Noising,
        rng: &mut StdRng,
    ) -> Measurement {
        release(raw, 100, noising, rng, |g| Ok(i128::from(figures[g].unwrap().2))).unwrap()
    }

    #[test]
    fn suppresses_under_the_minimum_and_computes_lift() {
        let figures = [Some((600, 500, 9_000)), Some((450, 400, 7_000))];
        let raw = [group("test", 10_000, figures[0]), group("control", 10_000, figures[1])];
        let Measurement { groups, lift } =
            release_of(&raw, &figures, Noising::default(), &mut StdRng::seed_from_u64(1));
        assert_eq!(groups[0].matched_outcome_people, Figure::Value(500));
        let lift = lift.unwrap();
        assert!((lift.absolute - 0.01).abs() < 1e-12);
        assert!((lift.relative.unwrap() - 0.25).abs() < 1e-12);
        // se = sqrt(.05·.95/1e4 + .04·.96/1e4) = 0.0029240383...
        let se = (0.05f64 * 0.95 / 1e4 + 0.04 * 0.96 / 1e4).sqrt();
        assert!((lift.ci95[0] - (0.01 - 1.959964 * se)).abs() < 1e-12);
        assert!((lift.ci95[1] - (0.01 + 1.959964 * se)).abs() < 1e-12);

        let raw = [group("test", 10_000, Some((120, 99, 9_000))), group("control", 50, None)];
        // A suppressed group's sum is never asked for.
        let Measurement { groups, lift } =
            release(&raw, 100, Noising::default(), &mut StdRng::seed_from_u64(1), |_| panic!("decrypted")).unwrap();
        assert_eq!(groups[0].sum, Figure::Suppressed(100));
        assert_eq!(serde_json::to_value(groups[0].sum).unwrap(), serde_json::json!("<100"));
        assert_eq!(groups[1].matched_exposure_records, Figure::Suppressed(100));
        assert!(lift.is_none());
    }

    /// The review's L3: a campaign whose noise (or whose noise and people) the
    /// decrypting side could not search is refused up front, for each learner.
    #[test]
    fn searches_beyond_two_to_the_44_are_refused_before_any_run() {
        let usual = Noise { epsilon: 1.0, clip: 1 << 32 };
        for learner in [Learner::Owner, Learner::Partner, Learner::Both] {
            assert_eq!(usual.check_search(learner, 0), Ok(()));
            assert_eq!(usual.check_search(learner, 10_000_000), Ok(()));
        }
        // At ε = 2^-16 and clip 2^32 the partner's noise for a 16-wide bundle is
        // about 2^43 per side; the owner's share noise is narrower.
        let tiny = Noise { epsilon: 1.0 / 65_536.0, clip: 1 << 32 };
        assert!(matches!(tiny.check_search(Learner::Owner, 0), Err(SearchTooWide::Range { people: 0, .. })));
        assert!(matches!(tiny.check_search(Learner::Both, 0), Err(SearchTooWide::Range { .. })));
        let small = Noise { epsilon: 1.0 / 256.0, clip: 1 << 20 };
        assert_eq!(small.check_search(Learner::Partner, 0), Ok(()));
        // The people term alone: 2^30 people with high limbs up to 2^10 each.
        let people = 1 << 36;
        let err = small.check_search(Learner::Partner, people).unwrap_err();
        assert!(matches!(err, SearchTooWide::Range { range, .. } if range > MAX_SHARE_RANGE), "{err}");
        assert!(err.to_string().contains("raise epsilon or lower value_max"), "{err}");
    }

    /// Issue 20, attack 3: with noise, a group exactly at `min_aggregate` matched
    /// people (and one just under it) is released or suppressed by the noisy count,
    /// not decided by the exact one; a released group's people figure is the very
    /// noisy count the decision used (so it is never under the minimum).
    #[test]
    fn with_noise_suppression_is_decided_on_the_noisy_count() {
        for people in [99, 100] {
            let figures = [Some((people, people, 1_000))];
            let raw = [group("all", 10_000, figures[0])];
            let mut rng = StdRng::seed_from_u64(people);
            let mut released = 0;
            for _ in 0..200 {
                let g = &release_of(&raw, &figures, Noising::all(Some(Noise { epsilon: 1.0, clip: 10 })), &mut rng)
                    .groups[0];
                if let Figure::Value(p) = g.matched_outcome_people {
                    assert!(p >= 100, "{p}");
                    released += 1;
                } else {
                    assert_eq!(g.sum, Figure::Suppressed(100));
                }
            }
            // P(noisy ≥ 100) is about 0.59 at 100 and 0.41 at 99 (scale 3).
            assert!((40..160).contains(&released), "{people} people: released {released} of 200");
        }
        // Without noise the exact count decides, as documented.
        let figures = [Some((100, 100, 1_000)), Some((99, 99, 1_000))];
        let raw = [group("a", 10_000, figures[0]), group("b", 10_000, figures[1])];
        let m = release_of(&raw, &figures, Noising::default(), &mut StdRng::seed_from_u64(1));
        assert_eq!((m.groups[0].sum, m.groups[1].sum), (Figure::Value(1_000), Figure::Suppressed(100)));
    }

    #[test]
    fn the_worst_case_charge_counts_every_figure_a_person_can_move() {
        let noise = Noise { epsilon: 1.5, clip: 100 };
        assert_eq!(noise.worst_case_epsilon(2, 1), 1.5);
        assert_eq!(noise.worst_case_epsilon(1, 2), 0.5 * 4.0);
        assert_eq!(noise.worst_case_epsilon(2, 2), 0.5 * 6.0);
        assert_eq!(noise.worst_case_epsilon(16, 16), 0.5 * 48.0);
        assert_eq!(noise.worst_case_epsilon(0, 0), 1.5);
    }

    #[test]
    fn released_figures_read_back_as_written_and_print_one_table() {
        let figures = [Some((600, 500, 9_000)), None];
        let raw = [group("test", 10_000, figures[0]), group("control", 80, None)];
        let m = release_of(&raw, &figures, Noising::default(), &mut StdRng::seed_from_u64(1));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Measurement>(&json).unwrap(), m);
        let table = m.to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].starts_with("test") && lines[1].ends_with("5.0000%"), "{table}");
        assert!(lines[2].starts_with("control") && lines[2].ends_with("<100"), "{table}");
        assert_eq!(lines[3], "lift: suppressed (test or control under 100 matched people)");
        for bad in [r#""100""#, r#""<""#, r#""<-3""#, "-1", "1.5", "null"] {
            assert!(serde_json::from_str::<Figure>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::from_str::<Figure>(r#""<50""#).unwrap(), Figure::Suppressed(50));
    }

    #[test]
    fn discrete_laplace_has_mean_zero_and_the_expected_spread() {
        let mut rng = StdRng::seed_from_u64(42);
        let (epsilon, sensitivity) = (0.5, 1.0);
        let n = 200_000;
        let laplace = DiscreteLaplace::new(epsilon, 1, 1).unwrap();
        let draws: Vec<f64> = (0..n).map(|_| laplace.sample(&mut rng) as f64).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64;
        let alpha = (-epsilon / sensitivity).exp();
        let expected = 2.0 * alpha / (1.0 - alpha).powi(2);
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var / expected - 1.0).abs() < 0.03, "variance {var}, expected {expected}");
    }

    #[test]
    fn noisy_releases_are_unbiased_and_reproducible() {
        let figures = [Some((5_000, 4_000, 1_000_000))];
        let raw = [group("all", 100_000, figures[0])];
        let noise = Some(Noise { epsilon: 1.0, clip: 1_000 });
        let runs = 4_000;
        let mut rng = StdRng::seed_from_u64(3);
        let (mut people, mut sums) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let g = release_of(&raw, &figures, Noising::all(noise), &mut rng).groups;
            people.push(g[0].matched_outcome_people.value().unwrap() as f64);
            sums.push(g[0].sum.value().unwrap() as f64);
        }
        let stats = mean_sd;
        // ε/3 per figure: the people count's noise has scale 3, the sum's 3·clip.
        let (mp, sp) = stats(&people);
        let (ms, ss) = stats(&sums);
        let sd = laplace_sd;
        assert!((mp - 4_000.0).abs() < 0.3, "{mp}");
        assert!((sp / sd(1.0 / 3.0, 1.0) - 1.0).abs() < 0.06, "{sp}");
        assert!((ms - 1_000_000.0).abs() < 300.0, "{ms}");
        assert!((ss / sd(1.0 / 3.0, 1_000.0) - 1.0).abs() < 0.06, "{ss}");
        let again = |seed| release_of(&raw, &figures, Noising::all(noise), &mut StdRng::seed_from_u64(seed));
        assert_eq!(again(9), again(9));
    }

    /// The partner's noise before the owner decrypts: each limb for its own
    /// proven bound times the reach, `ε/12` low and `ε/4` high.
    #[test]
    fn partner_noise_follows_each_limbs_bound_and_the_reach() {
        let sd = laplace_sd;
        let mut rng = StdRng::seed_from_u64(12);
        // Clip 100,000: s = 9, limbs up to 511 and 195; a reach of 2.
        let noise = Noise { epsilon: 1.5, clip: 100_000 };
        let (low, high) = (2.0_f64 * 511.0, 2.0_f64 * 195.0);
        let bounds = [(40.0 * low * 12.0 / 1.5).ceil() as u64, (40.0 * high * 4.0 / 1.5).ceil() as u64];
        assert_eq!(noise.partner_limb_bounds(2).unwrap(), bounds);
        let draws: Vec<[i64; LIMBS]> = (0..40_000).map(|_| noise.partner_limbs(2, &mut rng).unwrap()).collect();
        for (limb, (sensitivity, epsilon)) in [(low, 1.5 / 12.0), (high, 1.5 / 4.0)].into_iter().enumerate() {
            let (m, s) = mean_sd(&draws.iter().map(|d| d[limb] as f64).collect::<Vec<_>>());
            assert!(draws.iter().all(|d| d[limb].unsigned_abs() <= bounds[limb]));
            assert!(m.abs() < 0.02 * sd(epsilon, sensitivity), "{m}");
            assert!((s / sd(epsilon, sensitivity) - 1.0).abs() < 0.03, "limb {limb}: {s}");
        }
        // A clip of 1: the high limb is always 0, still noised (sensitivity 1).
        assert_eq!(Noise { epsilon: 1.0, clip: 1 }.partner_limb_bounds(1).unwrap(), [480, 160]);
    }

    #[test]
    fn limb_noise_is_bounded_centred_and_spread_as_its_sensitivities_say() {
        let sd = laplace_sd;
        let stats = mean_sd;
        let mut rng = StdRng::seed_from_u64(11);
        // Every slot is noised for the largest limb of any value up to the clip, at
        // ε/6: a clip of 1000 is cut at 5 bits (limbs up to 31), and the high limb,
        // honestly up to 1000 >> 5 = 31, gets the same noise as the low one.
        for (noise, sensitivity) in
            [(Noise { epsilon: 1.5, clip: 1_000 }, 31.0), (Noise { epsilon: 3.0, clip: 1 << 32 }, 65_536.0)]
        {
            let epsilon = noise.epsilon / 6.0;
            let bound = (40.0 * sensitivity / epsilon).ceil() as u64;
            assert_eq!(noise.limb_bounds().unwrap(), [bound, bound]);
            let draws: Vec<[i64; LIMBS]> = (0..40_000).map(|_| noise.limbs(&mut rng).unwrap()).collect();
            assert!(draws.iter().all(|d| d[0].unsigned_abs() <= bound && d[1].unsigned_abs() <= bound));
            for limb in 0..LIMBS {
                let (m, s) = stats(&draws.iter().map(|d| d[limb] as f64).collect::<Vec<_>>());
                assert!(m.abs() < 0.02 * sd(epsilon, sensitivity), "{m}");
                assert!((s / sd(epsilon, sensitivity) - 1.0).abs() < 0.03, "{s}");
            }
        }
        let large = Noise { epsilon: 3.0, clip: 1 << 32 };
        // Reproducible from a seed.
        let again = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10).map(|_| large.limbs(&mut rng).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(again(4), again(4));
    }
}
