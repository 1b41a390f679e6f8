//! The partner's traps: exposure bundles of random points `r·G` whose discrete logs
//! `r` only the partner knows, mixed among its real bundles, that let it check the
//! owner's re-blinding (PROTOCOL.md §12.4, step 5).
//!
//! An honest owner returns `b·X` for every element `X` it was sent, with one scalar
//! `b`, each bundle kept whole (re-sorted) and in its group, bundles shuffled. A
//! cheating owner could instead re-blind some elements with other scalars `b'`, so
//! that one exposure element, copied into several bundles as `b'·X`, matches
//! several of its people made for the purpose (`b'·P(t)`), and one exposed person
//! counts many times over the noise (PRIVACY.md, "Measurement"). Re-blinded
//! elements are unlinkable, so the partner cannot see this on its real bundles; on
//! a trap it can: `b·(r·G) = r·B`, with `B = b·G` sent in `people` before the
//! owner re-blinds any exposure (over gRPC the owner has received the exposures by
//! then, which does not help it: `r·B` for an unknown `r` is computable only
//! through `b`). Every trap bundle must come back whole, in its group,
//! as `r·B` element for element, or the partner refuses the reply before it
//! computes anything ([`MeasureError::TrapSprung`]).
//!
//! Security property: traps are uniform random points, as indistinguishable from
//! blinded identifiers and from padding as those are from each other (decisional
//! Diffie–Hellman), so an owner that rewrites a fraction `f` of a group's bundles
//! passes its `T` traps with probability about `(1 − f)^T`. Tampering that gains
//! anything must touch many bundles blindly: to add `m` to its target's count with
//! chance `p` (the target's bundle among the sources it copies, each copy worth up
//! to `w`, the target's identifiers) it rewrites about `p·m/w` of the bundles, and
//! passes unseen with chance about `p·e^(−p·m·T/w)`, at most `w/(e·m·T)`. That is
//! a `δ` per measurement, not a proof: about `1.4·10⁻⁴` for `w = 2`, a shift of
//! `m = 20` (a few noise scales at `ε = 1`) and the 256 traps of a small group,
//! about `2·10⁻⁶` for a group of a million bundles (15,625 traps). A verifiable
//! shuffle would make it exact and is not built (docs/PRIVACY.md).
//!
//! Invariant: a group with `n > 0` real bundles gets [`count`]`(n)` traps, and
//! `n + count(n)` is strictly increasing in `n`, so the owner recovers `n` from
//! what it received ([`real_bundles`]) for its minimum group size and its checks
//! of the partner's group sizes, without learning which bundles are traps.

use std::collections::HashMap;

use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::RngCore;
use rand::rngs::OsRng;
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::message::Exposures;
use super::{Exposure, MeasureError};
use crate::psi::group;
use crate::psi::message::Element;

/// One trap per this many real bundles of a group (rounded up).
pub const RATE: u64 = 64;
/// The fewest traps of a group with any real bundle (small groups are cheap, and
/// the bound above shrinks with the traps).
pub const MIN_PER_GROUP: u64 = 256;

/// Traps for a group of `real` bundles: none for an empty group, otherwise
/// `max(256, ⌈real/64⌉)`.
pub fn count(real: u64) -> u64 {
    if real == 0 { 0 } else { real.div_ceil(RATE).max(MIN_PER_GROUP) }
}

/// The real bundles of a group in which `sent` bundles arrived: the largest `n` with
/// `n + count(n) ≤ sent` (exactly the real bundles when the partner is honest).
pub fn real_bundles(sent: u64) -> u64 {
    let (mut low, mut high) = (0u64, sent);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if mid.saturating_add(count(mid)) <= sent { low = mid } else { high = mid - 1 }
    }
    low
}

/// Bundles the partner sends for `exposures` in `groups` groups: the real ones
/// and their traps (what its hello announces).
pub fn bundles_sent(exposures: &[Exposure], groups: usize) -> u64 {
    let mut real = vec![0u64; groups];
    for x in exposures {
        if let Some(n) = real.get_mut(usize::from(x.group)) {
            *n += 1;
        }
    }
    real.iter().map(|&n| n + count(n)).sum()
}

/// One trap bundle as sent: its group and its elements (sorted).
pub type TrapBundle = (u8, Vec<Element>);

/// The partner's traps of one measurement: per trap bundle its group and the
/// secret scalars of its elements (zeroized on drop). `Debug` shows the count only.
pub struct Traps {
    groups: Vec<u8>,
    scalars: Zeroizing<Vec<Scalar>>,
    bundle: usize,
}

impl std::fmt::Debug for Traps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traps").field("bundles", &self.groups.len()).finish_non_exhaustive()
    }
}

impl Traps {
    /// Draws the traps for groups of `real[g]` real bundles of `bundle` elements:
    /// returns them with their bundles (group, elements sorted as real ones are).
    pub fn draw(real: &[u64], bundle: usize) -> Result<(Traps, Vec<TrapBundle>), MeasureError> {
        let groups: Vec<u8> =
            real.iter().enumerate().flat_map(|(g, &n)| std::iter::repeat_n(g as u8, count(n) as usize)).collect();
        let mut scalars = Zeroizing::new(Vec::with_capacity(groups.len() * bundle));
        for _ in 0..groups.len() * bundle {
            let mut wide = Zeroizing::new([0u8; 64]);
            OsRng.try_fill_bytes(wide.as_mut()).map_err(|e| MeasureError::Rng(e.to_string()))?;
            scalars.push(Scalar::from_bytes_mod_order_wide(&wide));
        }
        let bundles = groups
            .iter()
            .zip(scalars.chunks(bundle))
            .map(|(&g, rs)| {
                let mut elements: Vec<Element> =
                    rs.iter().map(|r| Element(RistrettoPoint::mul_base(r).compress().to_bytes())).collect();
                elements.sort_unstable();
                (g, elements)
            })
            .collect();
        Ok((Traps { groups, scalars, bundle }, bundles))
    }

    /// Whether `bundle` (sorted, as sent) is one of these traps (tests).
    #[cfg(test)]
    pub(crate) fn holds(&self, bundle: &[Element]) -> bool {
        self.scalars.chunks(self.bundle).any(|rs| {
            let mut elements: Vec<Element> =
                rs.iter().map(|r| Element(RistrettoPoint::mul_base(r).compress().to_bytes())).collect();
            elements.sort_unstable();
            elements == bundle
        })
    }

    /// Checks the owner's `reply` against `blinding_point` (`B`, from `people`):
    /// every trap bundle is in it once, whole (its `k` elements `r·B` in one
    /// bundle) and in its group. The reply's shape (bundle size, bundles per group)
    /// is checked by the caller.
    pub fn check(&self, blinding_point: &Element, reply: &Exposures) -> Result<(), MeasureError> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let b = group::decode(blinding_point, 0).map_err(|_| MeasureError::BadBlindingPoint)?;
        let table = RistrettoBasepointTable::create(&b);
        let expected: Vec<Element> =
            self.scalars.par_iter().map(|r| Element((r * &table).compress().to_bytes())).collect();
        let trap_of: HashMap<Element, usize> =
            expected.into_iter().enumerate().map(|(i, e)| (e, i / self.bundle)).collect();
        let k = self.bundle;
        // Per trap: the reply bundle its first element was found in, and how many.
        let mut found: Vec<Option<(usize, usize)>> = vec![None; self.groups.len()];
        for (i, e) in reply.elements.iter().enumerate() {
            let Some(&t) = trap_of.get(e) else { continue };
            let at = i / k.max(1);
            match &mut found[t] {
                None => found[t] = Some((at, 1)),
                Some((first, seen)) if *first == at => *seen += 1,
                Some(_) => return Err(MeasureError::TrapSprung("a bundle came back split")),
            }
        }
        for (t, found) in found.iter().enumerate() {
            match found {
                Some((at, seen)) if *seen == k => {
                    if reply.groups.get(*at) != Some(&self.groups[t]) {
                        return Err(MeasureError::TrapSprung("a bundle came back in another group"));
                    }
                }
                // Found in one bundle but not whole: an element is missing.
                Some(_) => return Err(MeasureError::TrapSprung("an element came back blinded with another key")),
                None => return Err(MeasureError::TrapSprung("a bundle came back blinded with another key")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner's honest reply to `bundles` (each element times `b`, bundles
    /// re-sorted, in reverse order as a shuffle), and `B = b·G`.
    fn reply(bundles: &[TrapBundle], b: &Scalar) -> (Element, Exposures) {
        let mut elements = Vec::new();
        let mut groups = Vec::new();
        for (g, bundle) in bundles.iter().rev() {
            let mut blinded: Vec<Element> =
                bundle.iter().map(|e| Element((group::decode(e, 0).unwrap() * b).compress().to_bytes())).collect();
            blinded.sort_unstable();
            elements.extend(blinded);
            groups.push(*g);
        }
        let point = Element(RistrettoPoint::mul_base(b).compress().to_bytes());
        (point, Exposures { labels: Vec::new(), bundle: 2, groups, elements })
    }

    /// An honest reply passes; one trap element blinded with another key, two trap
    /// bundles' elements swapped, or a trap moved to the other group are each
    /// refused with their reason; and a blinding point that is not one is refused.
    #[test]
    fn every_trap_must_come_back_whole_in_its_group_under_the_announced_key() {
        let (traps, bundles) = Traps::draw(&[3, 5], 2).unwrap();
        assert_eq!(bundles.len(), 512);
        assert!(bundles.iter().all(|(_, b)| b.len() == 2 && b[0] < b[1]));
        let b = Scalar::from(7u64);
        let (point, honest) = reply(&bundles, &b);
        traps.check(&point, &honest).unwrap();

        let reason = |x: &Exposures| reason_with(&traps, &point, x);
        let mut other_key = honest.clone();
        let e = group::decode(&other_key.elements[5], 0).unwrap();
        other_key.elements[5] = Element((e * Scalar::from(3u64)).compress().to_bytes());
        assert_eq!(reason(&other_key), "an element came back blinded with another key");
        let mut split = honest.clone();
        split.elements.swap(1, 2);
        assert_eq!(reason(&split), "a bundle came back split");
        let mut moved = honest.clone();
        moved.groups[0] = 1 - moved.groups[0];
        assert_eq!(reason(&moved), "a bundle came back in another group");
        let (wrong_point, _) = reply(&bundles, &Scalar::from(8u64));
        assert_eq!(reason_with(&traps, &wrong_point, &honest), "a bundle came back blinded with another key");
        assert!(matches!(traps.check(&Element([0; 32]), &honest), Err(MeasureError::BadBlindingPoint)));
    }

    fn reason_with(traps: &Traps, point: &Element, x: &Exposures) -> &'static str {
        match traps.check(point, x) {
            Err(MeasureError::TrapSprung(reason)) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_owner_recovers_the_real_bundles_of_every_group() {
        assert_eq!((count(0), count(1), count(16_384), count(16_385), count(64_000)), (0, 256, 256, 257, 1000));
        let mut last = 0;
        for n in (0..5000).chain([1 << 20, 50_000_000]) {
            let sent = n + count(n);
            assert!(n == 0 || sent > last, "n + count(n) must grow with n");
            last = sent;
            assert_eq!(real_bundles(sent), n);
        }
        // A group of fewer bundles than one group's traps holds no real one.
        assert_eq!((real_bundles(0), real_bundles(1), real_bundles(256), real_bundles(257)), (0, 0, 0, 1));
        let exposures: Vec<Exposure> = [1, 2, 2].iter().map(|&group| Exposure { tokens: Vec::new(), group }).collect();
        assert_eq!(bundles_sent(&exposures, 3), 257 + 258);
    }
}
