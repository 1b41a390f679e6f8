//! The partner's state machine: holds the exposure records and an ECDH scalar `a`;
//! sends its bundles, blinds the owner's people again, and computes per group the
//! matched counts and the homomorphic sum of the matched people's values.
//!
//! Sans-I/O like [`super::Owner`]; any error moves it to [`PartnerState::Failed`].

use std::collections::{HashMap, VecDeque};

use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::elgamal::{Ciphertext, Encryptor, LIMBS, PublicKey};
use super::message::{self, Exposures, GroupSum, MAX_BUNDLE, MAX_GROUPS, MAX_LABEL, Matched, Message, VALUE_LEN};
use super::{Exposure, Learner, MeasureError, bundles};
use crate::psi::group::BlindingKey;
use crate::psi::message::Element;

/// The partner's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartnerConfig {
    /// Groups with fewer matched people are sent as suppressed: no counts, no sum.
    pub min_aggregate: u64,
    /// Who receives the released figures (the partner then waits for them).
    pub learner: Learner,
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
    /// Finished.
    Done,
    /// An error ended the session.
    Failed,
}

impl PartnerState {
    fn doing(self) -> &'static str {
        match self {
            PartnerState::AwaitingPeople => "awaiting people",
            PartnerState::AwaitingReblinded => "awaiting reblinded exposures",
            PartnerState::AwaitingRelease => "awaiting the release",
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
    units: usize,
    bundle: u8,
    owner: Option<OwnerSide>,
    outgoing: VecDeque<Vec<u8>>,
    view: Option<PartnerView>,
    release: Option<serde_json::Value>,
}

impl std::fmt::Debug for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partner").field("state", &self.state).field("units", &self.units).finish_non_exhaustive()
    }
}

impl Partner {
    /// Blinds `exposures` (shuffled) and queues the first message. `labels` names the
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
        if exposures.iter().any(|x| usize::from(x.group) >= labels.len()) {
            return Err(MeasureError::Groups("an exposure names a group beyond the labels"));
        }
        let widest = exposures.iter().map(|x| x.tokens.len()).max().unwrap_or(0);
        if widest > usize::from(MAX_BUNDLE) {
            return Err(MeasureError::TooManyIdentifiers(widest));
        }
        let bundle = widest.max(1);
        let blinding = BlindingKey::random().map_err(|e| MeasureError::Rng(e.to_string()))?;
        let mut order: Vec<&Exposure> = exposures.iter().collect();
        order.shuffle(&mut OsRng);
        let tokens: Vec<&[crate::token::Token]> = order.iter().map(|x| x.tokens.as_slice()).collect();
        let elements = bundles(&blinding, &tokens, bundle)?;
        let first = message::encode(&Message::Exposures(Exposures {
            labels: labels.clone(),
            bundle: bundle as u8,
            groups: order.iter().map(|x| x.group).collect(),
            elements,
        }))?;
        Ok(Partner {
            config,
            state: PartnerState::AwaitingPeople,
            blinding,
            labels,
            group_records,
            units: exposures.len(),
            bundle: bundle as u8,
            owner: None,
            outgoing: VecDeque::from([first]),
            view: None,
            release: None,
        })
    }

    /// Where the partner is.
    pub fn state(&self) -> PartnerState {
        self.state
    }

    /// The next message to send, if any.
    pub fn poll_outgoing(&mut self) -> Option<Vec<u8>> {
        self.outgoing.pop_front()
    }

    /// The counts the partner computed, once it has sent its sums.
    pub fn view(&self) -> Option<&PartnerView> {
        self.view.as_ref()
    }

    /// The released figures the owner sent (when the partner is a learner).
    pub fn release(&self) -> Option<&serde_json::Value> {
        self.release.as_ref()
    }

    /// Takes one message from the owner.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), MeasureError> {
        if self.state == PartnerState::Failed {
            return Err(MeasureError::Failed);
        }
        let result = self.step(bytes);
        if result.is_err() {
            self.state = PartnerState::Failed;
            self.outgoing.clear();
        }
        result
    }

    fn step(&mut self, bytes: &[u8]) -> Result<(), MeasureError> {
        match (self.state, message::decode(bytes)?) {
            (PartnerState::AwaitingPeople, Message::People(p)) => {
                let key = PublicKey::from_bytes(&p.public_key).ok_or(MeasureError::BadPublicKey)?;
                let k = usize::from(p.bundle);
                let reblinded = self.blinding.reblind(&p.elements)?;
                let mut index = HashMap::with_capacity(reblinded.len());
                for (i, e) in reblinded.into_iter().enumerate() {
                    index.entry(e).or_insert((i / k) as u32);
                }
                self.owner = Some(OwnerSide { key, index, values: p.values });
                self.state = PartnerState::AwaitingReblinded;
                Ok(())
            }
            (PartnerState::AwaitingReblinded, Message::Reblinded(x)) => self.on_reblinded(&x),
            (PartnerState::AwaitingRelease, Message::Release(json)) => {
                self.release = Some(serde_json::from_slice(&json).map_err(|_| MeasureError::BadRelease)?);
                self.state = PartnerState::Done;
                Ok(())
            }
            (state, other) => Err(MeasureError::Unexpected { state: state.doing(), message: other.name() }),
        }
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
                return Err(message::MessageError::GroupOutOfRange { index: i, group: g as u8, groups }.into());
            }
            sent[g] += 1;
            let before = people[g].len();
            people[g].extend(x.elements[i * k..(i + 1) * k].iter().filter_map(|e| owner.index.get(e).copied()));
            if people[g].len() > before {
                records[g] += 1;
            }
        }
        for (g, &count) in sent.iter().enumerate() {
            if count > self.group_records[g] {
                return Err(MeasureError::Inconsistent { group: g, reason: "more bundles than records" });
            }
        }
        let encryptor = Encryptor::new(owner.key);
        let mut lines = Vec::with_capacity(groups);
        let mut view = Vec::with_capacity(groups);
        for (g, matched) in people.iter_mut().enumerate() {
            matched.par_sort_unstable();
            matched.dedup();
            view.push((records[g], matched.len() as u64));
            let line = if (matched.len() as u64) < self.config.min_aggregate || matched.is_empty() {
                None
            } else {
                let sum = matched
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
                    .try_reduce(|| [Ciphertext::zero(); LIMBS], |a, b| Ok([a[0].add(&b[0]), a[1].add(&b[1])]))?;
                let mut out = [0u8; VALUE_LEN];
                for (l, limb) in sum.iter().enumerate() {
                    out[l * 64..(l + 1) * 64].copy_from_slice(&encryptor.rerandomize(limb, &mut OsRng).to_bytes());
                }
                Some(Matched { records: records[g], people: matched.len() as u64, sum: out })
            };
            lines.push(GroupSum { records: self.group_records[g], matched: line });
        }
        self.view = Some(PartnerView { matched: view, owner_people: owner.values.len() as u64 });
        self.outgoing.push_back(message::encode(&Message::Sums(lines))?);
        self.state =
            if self.config.learner.partner_learns() { PartnerState::AwaitingRelease } else { PartnerState::Done };
        Ok(())
    }
}
