//! The partner's state machine: holds the exposure records and an ECDH scalar `a`;
//! sends its bundles, blinds the owner's people again, and computes per group the
//! matched counts and the homomorphic sum of the matched people's values. When the
//! owner decrypts (learner `owner` or `both`) and the campaign has noise, it first
//! verifies the owner's range proofs ([`super::proof`]) and then adds its own noise
//! to every count and limb it sends, so the owner never sees an exact figure of the
//! partner's groups (issue 20, attack 1). When only the partner learns (learner
//! `partner`), it sends each sum masked and no count, decrypts the sums from the
//! owner's shares, and noises the counts and releases the figures itself.
//!
//! Trap bundles mixed among the exposures ([`super::trap`]) check that the owner
//! re-blinds every exposure with one key and keeps each bundle whole.
//!
//! Sans-I/O like [`super::Owner`] ([`OwnerMessage`]s in, [`PartnerMessage`]s out); any error moves
//! it to [`PartnerState::Failed`].

use std::collections::{HashMap, VecDeque};

use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::elgamal::{Ciphertext, DecryptError, DlogTable, Encryptor, LIMBS, Masked, PublicKey, Split};
use super::message::{
    Exposures, GroupSum, MASKED_LEN, MAX_BUNDLE, MAX_GROUPS, MAX_LABEL, MaskedSum, Matched, MessageError, OwnerMessage,
    PartnerMessage, People, Shares, VALUE_LEN,
};
use super::proof::{self, PEOPLE_PER_PROOF};
use super::stats::{self, Measurement, Noise, Noising, RawGroup};
use super::trap::Traps;
use super::{Exposure, Learner, MeasureError, bundles, first_repeat, random_element};
use crate::psi::group::{self, BlindingKey};
use crate::psi::message::{ELEMENT_LEN, Element};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::traits::Identity;

/// The widest plaintext range the partner searches for one limb of a share
/// (`2^44`: at most 2^24 giant steps, a few seconds): a larger noise bound is refused.
pub const MAX_SHARE_RANGE: u64 = 1 << 44;

/// The partner's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartnerConfig {
    /// Groups with fewer matched people are sent as suppressed: no counts, no sum.
    pub min_aggregate: u64,
    /// Who receives the released figures (the partner then waits for them).
    pub learner: Learner,
    /// The measurement's noise as the accept announces it (epsilon and clip), when
    /// it adds noise: the clip fixes where values are cut into limbs
    /// ([`Split::for_clip`]), and with learner `partner` the partner noises the
    /// counts it releases (ε/3 each, as the owner would).
    pub noise: Option<Noise>,
    /// Seed of that noise (reproducible tests); `None`: from the OS.
    pub seed: Option<u64>,
    /// Refuse the owner's people unless every value comes with its range proof
    /// for the noise's clip (needs `noise`), checked before anything is summed:
    /// what lets the owner decrypt sums of the partner's groups without being
    /// trusted (learner `owner` or `both` over gRPC).
    pub require_proofs: bool,
}

/// Where the partner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerState {
    /// Exposures sent; waiting for the owner's people.
    AwaitingPeople,
    /// People blinded again; waiting for the exposures blinded again.
    AwaitingReblinded,
    /// Sums sent; waiting for the released figures.
    AwaitingRelease,
    /// Masked sums sent (learner `partner`); waiting for the owner's shares.
    AwaitingShares,
    /// Finished.
    Done,
    /// An error ended the session.
    Failed,
}

impl PartnerState {
    /// What the machine is doing, in errors (`awaiting exposures`, …).
    pub fn doing(self) -> &'static str {
        match self {
            PartnerState::AwaitingPeople => "awaiting people",
            PartnerState::AwaitingReblinded => "awaiting reblinded exposures",
            PartnerState::AwaitingRelease => "awaiting the release",
            PartnerState::AwaitingShares => "awaiting the shares",
            PartnerState::Done => "done",
            PartnerState::Failed => "failed",
        }
    }
}

/// What the partner learned in the clear: per group, the matched counts it
/// computed (its protocol leak; see docs/PRIVACY.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerView {
    /// Per group: (matched exposure records, matched people).
    pub matched: Vec<(u64, u64)>,
    /// Number of owner people received.
    pub owner_people: u64,
}

/// The owner's people, blinded twice, with their encrypted values.
struct OwnerSide {
    key: PublicKey,
    /// `B = b·G`, which the traps are checked against.
    blinding_point: Element,
    index: HashMap<Element, u32>,
    values: Vec<[u8; VALUE_LEN]>,
}

/// The partner's side of one measurement. `Debug` shows the state only.
pub struct Partner {
    config: PartnerConfig,
    state: PartnerState,
    blinding: BlindingKey,
    labels: Vec<String>,
    group_records: Vec<u64>,
    /// Per group, the bundles sent, traps included (the reblinded reply must keep them).
    bundles_per_group: Vec<u64>,
    /// The trap bundles mixed among the real ones ([`trap`]).
    traps: Traps,
    units: usize,
    bundle: u8,
    owner: Option<OwnerSide>,
    outgoing: VecDeque<PartnerMessage>,
    view: Option<PartnerView>,
    /// Learner `partner`: per group, the masked limbs of its sum (`None`: suppressed).
    masked: Vec<Option<[Masked; LIMBS]>>,
    release: Option<Measurement>,
}

impl std::fmt::Debug for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partner").field("state", &self.state).field("units", &self.units).finish_non_exhaustive()
    }
}

impl Partner {
    /// Blinds `exposures`, mixes in the trap bundles ([`super::trap`]; the message
    /// holds [`super::trap::bundles_sent`] bundles), shuffles them and queues the first message. `labels` names the
    /// groups (1 to 16); `group_records[g]` is the number of exposure records of
    /// group `g`, including those without a valid identifier (not sent).
    pub fn new(
        config: PartnerConfig,
        labels: Vec<String>,
        group_records: Vec<u64>,
        exposures: &[Exposure],
    ) -> Result<Partner, MeasureError> {
        if labels.is_empty() || labels.len() > MAX_GROUPS {
            return Err(MeasureError::Groups("between 1 and 16 groups are needed"));
        }
        if labels.iter().any(|l| l.is_empty() || l.len() > MAX_LABEL) {
            return Err(MeasureError::Groups("a group label is empty or longer than 64 bytes"));
        }
        if group_records.len() != labels.len() {
            return Err(MeasureError::Groups("one record count per group is needed"));
        }
        if config.require_proofs && config.noise.is_none() {
            return Err(MeasureError::ProofsNeedNoise);
        }
        if exposures.iter().any(|x| usize::from(x.group) >= labels.len()) {
            return Err(MeasureError::Groups("an exposure names a group beyond the labels"));
        }
        let widest = exposures.iter().map(|x| x.tokens.len()).max().unwrap_or(0);
        if widest > usize::from(MAX_BUNDLE) {
            return Err(MeasureError::TooManyIdentifiers(widest));
        }
        let mut seen = std::collections::HashSet::new();
        if exposures.iter().flat_map(|x| &x.tokens).any(|t| !seen.insert(t)) {
            // The owner refuses repeated elements (`RepeatedElement`): say so here.
            return Err(MeasureError::RepeatedToken);
        }
        drop(seen);
        let bundle = widest.max(1);
        let mut real_per_group = vec![0u64; labels.len()];
        for x in exposures {
            real_per_group[usize::from(x.group)] += 1;
        }
        let blinding = BlindingKey::random().map_err(|e| MeasureError::Rng(e.to_string()))?;
        let tokens: Vec<&[crate::token::Token]> = exposures.iter().map(|x| x.tokens.as_slice()).collect();
        let real = bundles(&blinding, &tokens, bundle)?;
        let (traps, trap_bundles) = Traps::draw(&real_per_group, bundle)?;
        // Real bundles and traps in one fresh random order.
        let mut order: Vec<usize> = (0..exposures.len() + trap_bundles.len()).collect();
        order.shuffle(&mut OsRng);
        let mut elements = Vec::with_capacity(order.len() * bundle);
        let mut groups = Vec::with_capacity(order.len());
        let mut bundles_per_group = vec![0u64; labels.len()];
        for i in order {
            let group = match exposures.get(i) {
                Some(x) => {
                    elements.extend_from_slice(&real[i * bundle..(i + 1) * bundle]);
                    x.group
                }
                None => {
                    let (group, trap) = &trap_bundles[i - exposures.len()];
                    elements.extend_from_slice(trap);
                    *group
                }
            };
            bundles_per_group[usize::from(group)] += 1;
            groups.push(group);
        }
        drop(real);
        let units = groups.len();
        let first =
            PartnerMessage::Exposures(Exposures { labels: labels.clone(), bundle: bundle as u8, groups, elements });
        Ok(Partner {
            config,
            state: PartnerState::AwaitingPeople,
            blinding,
            labels,
            group_records,
            bundles_per_group,
            traps,
            units,
            bundle: bundle as u8,
            owner: None,
            outgoing: VecDeque::from([first]),
            view: None,
            masked: Vec::new(),
            release: None,
        })
    }

    /// `a·P(t)`: where a cheating owner given this oracle finds a target's
    /// exposure bundle (tests).
    #[cfg(test)]
    pub(crate) fn blind_for_tests(&self, token: &crate::token::Token) -> Element {
        self.blinding.blind_tokens(std::slice::from_ref(token))[0]
    }

    /// Whether `bundle` (as sent) is one of the traps (tests).
    #[cfg(test)]
    pub(crate) fn is_trap_for_tests(&self, bundle: &[Element]) -> bool {
        self.traps.holds(bundle)
    }

    /// Where the partner is.
    pub fn state(&self) -> PartnerState {
        self.state
    }

    /// The next message to send, if any.
    pub fn poll_outgoing(&mut self) -> Option<PartnerMessage> {
        self.outgoing.pop_front()
    }

    /// The counts the partner computed, once it has sent its sums.
    pub fn view(&self) -> Option<&PartnerView> {
        self.view.as_ref()
    }

    /// The released figures, when the partner is a learner: those the owner sent
    /// (learner `both`) or those the partner decrypted itself (learner `partner`).
    pub fn release(&self) -> Option<&Measurement> {
        self.release.as_ref()
    }

    /// Takes one message from the owner.
    pub fn receive(&mut self, message: OwnerMessage) -> Result<(), MeasureError> {
        if self.state == PartnerState::Failed {
            return Err(MeasureError::Failed);
        }
        let result = self.step(message);
        if result.is_err() {
            self.state = PartnerState::Failed;
            self.outgoing.clear();
        }
        result
    }

    fn step(&mut self, message: OwnerMessage) -> Result<(), MeasureError> {
        message.validate()?;
        match (self.state, message) {
            (PartnerState::AwaitingPeople, OwnerMessage::People(p)) => {
                let key = PublicKey::from_bytes(&p.public_key).ok_or(MeasureError::BadPublicKey)?;
                self.check_people(&key, &p)?;
                let k = usize::from(p.bundle);
                let reblinded = self.blinding.reblind(&p.elements)?;
                let mut index = HashMap::with_capacity(reblinded.len());
                for (i, e) in reblinded.into_iter().enumerate() {
                    index.entry(e).or_insert((i / k) as u32);
                }
                let blinding_point = Element(p.blinding_point);
                group::decode(&blinding_point, 0).map_err(|_| MeasureError::BadBlindingPoint)?;
                self.owner = Some(OwnerSide { key, blinding_point, index, values: p.values });
                self.state = PartnerState::AwaitingReblinded;
                Ok(())
            }
            (PartnerState::AwaitingReblinded, OwnerMessage::Reblinded(x)) => self.on_reblinded(&x),
            (PartnerState::AwaitingShares, OwnerMessage::Shares(shares)) => self.on_shares(&shares),
            (PartnerState::AwaitingRelease, OwnerMessage::Release(json)) => {
                self.release = Some(serde_json::from_slice(&json).map_err(|_| MeasureError::BadRelease)?);
                self.state = PartnerState::Done;
                Ok(())
            }
            (state, other) => Err(MeasureError::Unexpected { state: state.doing(), message: other.name() }),
        }
    }

    /// Every value of the owner's people must decode, whether or not its person
    /// will match (a bad ciphertext found only when summing would tell the owner
    /// that its person matched); with [`PartnerConfig::require_proofs`] every chunk
    /// must also carry a proof that verifies for the campaign's clip; without, the
    /// owner must send none. All on all cores, before anything is used.
    fn check_people(&self, key: &PublicKey, p: &People) -> Result<(), MeasureError> {
        let bounds = match self.config.noise.filter(|_| self.config.require_proofs) {
            None if p.proofs.is_empty() => None,
            None => return Err(MeasureError::UnexpectedProofs),
            // No people, no chunks: nothing to prove.
            Some(_) if p.proofs.is_empty() && !p.values.is_empty() => return Err(MeasureError::ProofsMissing),
            Some(noise) => Some(proof::Bounds::for_noise(noise)),
        };
        let people = p.values.len();
        p.values.par_chunks(PEOPLE_PER_PROOF).enumerate().try_for_each(|(chunk, values)| {
            let mut ciphertexts = Vec::with_capacity(values.len());
            for (i, value) in values.iter().enumerate() {
                let mut limbs = [(RistrettoPoint::identity(), RistrettoPoint::identity()); LIMBS];
                for (l, limb) in limbs.iter_mut().enumerate() {
                    let mut c = [0u8; 64];
                    c.copy_from_slice(&value[l * 64..(l + 1) * 64]);
                    *limb = Ciphertext::from_bytes(&c, (chunk * PEOPLE_PER_PROOF + i) * LIMBS + l)?.points();
                }
                ciphertexts.push(limbs);
            }
            let Some(bounds) = bounds else { return Ok(()) };
            // `validate` has checked one proof per chunk.
            let bytes = p.proofs.get(chunk).ok_or(MeasureError::ProofsMissing)?;
            let context = proof::context(key, people, chunk);
            proof::verify(&context, key.point(), bounds.limb_max(), &ciphertexts, bytes)
                .map_err(|source| MeasureError::Proof { chunk, source })
        })
    }

    fn on_reblinded(&mut self, x: &Exposures) -> Result<(), MeasureError> {
        let Some(owner) = &self.owner else { return Err(MeasureError::Failed) };
        if x.bundle != self.bundle {
            return Err(MeasureError::Mismatch {
                what: "elements per bundle",
                expected: u64::from(self.bundle),
                got: u64::from(x.bundle),
            });
        }
        if x.groups.len() != self.units {
            return Err(MeasureError::Mismatch {
                what: "bundles",
                expected: self.units as u64,
                got: x.groups.len() as u64,
            });
        }
        let groups = self.labels.len();
        let k = usize::from(x.bundle);
        let mut records = vec![0u64; groups];
        let mut people: Vec<Vec<u32>> = vec![Vec::new(); groups];
        let mut sent = vec![0u64; groups];
        for (i, &g) in x.groups.iter().enumerate() {
            let g = usize::from(g);
            if g >= groups {
                return Err(MessageError::GroupOutOfRange { index: i, group: g as u8, groups }.into());
            }
            sent[g] += 1;
            let before = people[g].len();
            people[g].extend(x.elements[i * k..(i + 1) * k].iter().filter_map(|e| owner.index.get(e).copied()));
            if people[g].len() > before {
                records[g] += 1;
            }
        }
        // The owner may shuffle the bundles but not move one to another group or
        // copy one: each group keeps its bundles and no element repeats (an honest
        // reblinding is injective on distinct elements), so one exposure record's
        // elements count in one group, at most `k` people. Re-pairing elements
        // between bundles of one group cannot be seen (they are unlinkable): one
        // record may then add up to `k` matched records, which its noise covers.
        for (g, &count) in sent.iter().enumerate() {
            if count != self.bundles_per_group[g] {
                return Err(MeasureError::Inconsistent {
                    group: g,
                    reason: "the reblinded bundles moved between groups",
                });
            }
        }
        if let Some(at) = first_repeat(&x.elements) {
            return Err(MeasureError::RepeatedElement { bundle: (at / k.max(1)) as u64 });
        }
        // Every trap whole, in its group, blinded with the announced key: the owner
        // used one scalar for every element (with all but a tiny probability, §12.4).
        self.traps.check(&owner.blinding_point, x)?;
        let encryptor = Encryptor::new(owner.key);
        let only_partner = self.config.learner == Learner::Partner;
        // When the owner decrypts, the partner's own noise goes into every count and
        // limb it sends, so the owner never sees an exact figure of the partner's
        // groups: one exposure record reaches at most `k` of the owner's people.
        let reach = u64::from(self.bundle);
        let mut rng = stats::noise_rng(self.config.seed)?;
        let owner_noise = self.config.noise.filter(|_| !only_partner);
        let mut lines = Vec::with_capacity(groups);
        let mut masked_lines = Vec::with_capacity(groups);
        let mut view = Vec::with_capacity(groups);
        for (g, matched) in people.iter_mut().enumerate() {
            matched.par_sort_unstable();
            matched.dedup();
            view.push((records[g], matched.len() as u64));
            // Without noise the exact count suppresses here; with noise every group
            // is summed (an empty one to `Enc(0)`) and only the noisy count decides,
            // on the side that releases (`stats::release`).
            let exact_suppress = self.config.noise.is_none()
                && ((matched.len() as u64) < self.config.min_aggregate || matched.is_empty());
            let sum = if exact_suppress {
                None
            } else {
                Some(
                    matched
                        .par_iter()
                        .map(|&p| {
                            let bytes = &owner.values[p as usize];
                            let mut limbs = [Ciphertext::zero(); LIMBS];
                            for (l, limb) in limbs.iter_mut().enumerate() {
                                let mut c = [0u8; 64];
                                c.copy_from_slice(&bytes[l * 64..(l + 1) * 64]);
                                *limb = Ciphertext::from_bytes(&c, p as usize * LIMBS + l)?;
                            }
                            Ok::<_, MeasureError>(limbs)
                        })
                        .try_reduce(|| [Ciphertext::zero(); LIMBS], |a, b| Ok([a[0].add(&b[0]), a[1].add(&b[1])]))?,
                )
            };
            let (matched_records, people) = match owner_noise {
                None => (records[g], matched.len() as u64),
                Some(n) => (
                    stats::noisy_count(records[g], n.epsilon, reach, &mut rng)?,
                    stats::noisy_count(matched.len() as u64, n.epsilon, reach, &mut rng)?,
                ),
            };
            let limb_noise = owner_noise.map_or(Ok([0; LIMBS]), |n| n.partner_limbs(reach, &mut rng))?;
            if only_partner {
                // The owner gets `C1 + t·Y` per limb, and random points for a group
                // suppressed here, so it cannot tell which; `C2` and `t` stay here.
                let masked = sum.map(|limbs| limbs.map(|limb| limb.mask(&owner.key, &mut OsRng)));
                let mut points = [0u8; MASKED_LEN];
                for (l, out) in points.chunks_exact_mut(ELEMENT_LEN).enumerate() {
                    let point = match &masked {
                        Some(limbs) => limbs[l].point_bytes(),
                        None => random_element()?.0,
                    };
                    out.copy_from_slice(&point);
                }
                masked_lines.push(MaskedSum { records: self.group_records[g], points });
                self.masked.push(masked);
            } else {
                // Plus `Enc(η)` with fresh randomness: noised, and re-randomized so the
                // owner cannot recognise its own ciphertexts.
                let line = sum.map(|limbs| {
                    let mut out = [0u8; VALUE_LEN];
                    for (l, limb) in limbs.iter().enumerate() {
                        let noised = limb.add(&encryptor.encrypt(limb_noise[l], &mut OsRng));
                        out[l * 64..(l + 1) * 64].copy_from_slice(&noised.to_bytes());
                    }
                    Matched { records: matched_records, people, sum: out }
                });
                lines.push(GroupSum { records: self.group_records[g], matched: line });
            }
        }
        self.view = Some(PartnerView { matched: view, owner_people: owner.values.len() as u64 });
        let (message, next) = match self.config.learner {
            Learner::Partner => (PartnerMessage::Masked(masked_lines), PartnerState::AwaitingShares),
            Learner::Both => (PartnerMessage::Sums(lines), PartnerState::AwaitingRelease),
            Learner::Owner => (PartnerMessage::Sums(lines), PartnerState::Done),
        };
        self.outgoing.push_back(message);
        self.state = next;
        Ok(())
    }

    /// Learner `partner`: unmasks each released group's limbs with the owner's
    /// shares, finds `m + η` per limb within `−bound..=p·L + bound`, noises the
    /// counts, and releases the figures (the sum clamped at 0). The shares of
    /// groups suppressed here are dropped.
    fn on_shares(&mut self, shares: &Shares) -> Result<(), MeasureError> {
        let Some(view) = &self.view else { return Err(MeasureError::Failed) };
        let groups = self.labels.len();
        if shares.shares.len() != groups {
            return Err(MeasureError::Mismatch {
                what: "group shares",
                expected: groups as u64,
                got: shares.shares.len() as u64,
            });
        }
        // Per limb, the largest plaintext of one person's value, and the search.
        let split = self.config.noise.map_or(Split::WIDE, Noise::split);
        let limb_max = split.limb_max();
        let max =
            |people: u64, limb: usize| people.saturating_mul(limb_max[limb]).saturating_add(shares.noise_bounds[limb]);
        let mut widest = 0;
        for (g, masked) in self.masked.iter().enumerate() {
            if masked.is_some() {
                for limb in 0..LIMBS {
                    let range = max(view.matched[g].1, limb).saturating_add(shares.noise_bounds[limb]);
                    if range > MAX_SHARE_RANGE {
                        return Err(MeasureError::Inconsistent { group: g, reason: "the noise bound is too large" });
                    }
                    widest = widest.max(range);
                }
            }
        }
        let table = DlogTable::new(DlogTable::baby_steps_for(widest));
        let raw: Vec<RawGroup> = (0..groups)
            .map(|g| RawGroup {
                label: self.labels[g].clone(),
                records: self.group_records[g],
                matched: self.masked[g].as_ref().map(|_| view.matched[g]),
            })
            .collect();
        // Only the shares of groups released on the (noisy) counts are unmasked.
        let masked = &self.masked;
        let unmask = |g: usize| {
            let Some(limbs) = &masked[g] else { return Err(MeasureError::Failed) };
            let share = &shares.shares[g];
            let mut parts = [0i128; LIMBS];
            for (l, (limb, part)) in limbs.iter().zip(&mut parts).enumerate() {
                let element =
                    Element(share[l * ELEMENT_LEN..(l + 1) * ELEMENT_LEN].try_into().unwrap_or([0; ELEMENT_LEN]));
                let point = group::decode(&element, g * LIMBS + l)?;
                let (bound, max) = (shares.noise_bounds[l], max(view.matched[g].1, l));
                *part = table
                    .solve_shifted(&limb.unmask(&point), bound, max)
                    .ok_or(MeasureError::Decrypt { group: g, source: DecryptError { max } })?;
            }
            Ok(split.join(parts[0], parts[1]))
        };
        // The sums carry the owner's noise already; the partner noises the counts.
        let noising = Noising { counts: self.config.noise.map(|n| n.epsilon), sum: None };
        let mut rng = stats::noise_rng(self.config.seed)?;
        let measurement = stats::release(&raw, self.config.min_aggregate, noising, &mut rng, unmask)?;
        self.release = Some(measurement);
        self.masked.clear();
        self.state = PartnerState::Done;
        Ok(())
    }
}
