//! The owner's state machine: holds the outcome values, the ElGamal key and an ECDH
//! scalar `b`; sends its people (with range proofs of their values where the
//! partner requires them), blinds the partner's bundles again, and decrypts the
//! per-group sums the partner has noised, or, when only the partner learns (learner `partner`), answers
//! the partner's masked sums with noisy decryption shares and sees neither a sum nor
//! a count.
//!
//! Sans-I/O: [`Owner::poll_outgoing`] yields the next [`OwnerMessage`] to send,
//! [`Owner::receive`] takes the peer's; turning them into bytes is the transport's
//! work ([`super::message`]). Any error moves the machine to [`OwnerState::Failed`].

use std::collections::VecDeque;

use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::elgamal::{DlogTable, Encryptor, LIMBS, SecretKey, Split};
use super::message::{
    Exposures, GroupSum, MASKED_LEN, MAX_BUNDLE, MaskedSum, MessageError, OwnerMessage, PartnerMessage, People, Shares,
    VALUE_LEN,
};
use super::partner::MAX_SHARE_RANGE;
use super::proof::{self, PEOPLE_PER_PROOF};
use super::stats::{self, Measurement, Noise, Noising, RawGroup};
use super::{Learner, MeasureError, Person, bundles, first_repeat, trap};
use crate::psi::group::{self, BlindingKey};
use crate::psi::message::{ELEMENT_LEN, Element};
use crate::records::MAX_VALUE;

/// The owner's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OwnerConfig {
    /// Groups with fewer matched people are released as suppressed (and not decrypted).
    pub min_aggregate: u64,
    /// The partner's exposures are refused ([`MeasureError::GroupTooSmall`]) when a
    /// group holds fewer bundles than this, but at least one (an empty group reveals
    /// nothing): the threshold on matched people cannot
    /// protect a group the partner made of one person (whether its sum is suppressed
    /// or not tells whether that person is in the outcomes). 1 accepts any group
    /// (local runs, where both files are the same operator's).
    pub min_group_size: u64,
    /// Who receives the released figures.
    pub learner: Learner,
    /// Differential-privacy noise on the released figures.
    pub noise: Option<Noise>,
    /// Seed of the noise generator (reproducible tests); `None`: from the OS.
    pub seed: Option<u64>,
    /// Prove every value's limbs in range for the noise's clip (`people` carries
    /// the proofs; needs `noise`): what a partner that does not trust the owner
    /// checks before it sums anything (learner `owner` or `both` over gRPC). Local
    /// runs, one operator's two files, skip the cost.
    pub prove: bool,
}

impl OwnerConfig {
    /// Where values are cut into limbs: for the noise's clip, or
    /// [`Split::WIDE`] without noise (the partner derives the same from the accept).
    pub fn split(&self) -> Split {
        self.noise.map_or(Split::WIDE, |n| n.split())
    }
}

impl Default for OwnerConfig {
    fn default() -> OwnerConfig {
        OwnerConfig {
            min_aggregate: stats::DEFAULT_MIN_AGGREGATE,
            min_group_size: stats::DEFAULT_MIN_AGGREGATE,
            learner: Learner::Owner,
            noise: None,
            seed: None,
            prove: false,
        }
    }
}

/// Where the owner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// People sent; waiting for the partner's exposures.
    AwaitingExposures,
    /// Exposures blinded again and sent back; waiting for the sums (masked ones
    /// when only the partner learns).
    AwaitingSums,
    /// The figures are released (learner `partner`: the shares are sent).
    Done,
    /// An error ended the session.
    Failed,
}

impl OwnerState {
    /// What the machine is doing, in errors (`awaiting exposures`, …).
    pub fn doing(self) -> &'static str {
        match self {
            OwnerState::AwaitingExposures => "awaiting exposures",
            OwnerState::AwaitingSums => "awaiting sums",
            OwnerState::Done => "done",
            OwnerState::Failed => "failed",
        }
    }
}

/// The owner's side of one measurement. `Debug` shows the state only.
pub struct Owner {
    config: OwnerConfig,
    state: OwnerState,
    blinding: BlindingKey,
    secret: SecretKey,
    people: u64,
    outgoing: VecDeque<OwnerMessage>,
    labels: Vec<String>,
    /// Per group, the partner's real bundles ([`trap::real_bundles`] of those received).
    bundles_per_group: Vec<u64>,
    bundle: u8,
    result: Option<Measurement>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").field("state", &self.state).field("people", &self.people).finish_non_exhaustive()
    }
}

impl Owner {
    /// Blinds and encrypts `people` (shuffled) and queues the first message.
    pub fn new(config: OwnerConfig, people: &[Person]) -> Result<Owner, MeasureError> {
        Owner::prepare(config, people, &|| false)
    }

    /// [`Owner::new`], which gives up ([`MeasureError::Abandoned`]) as soon as
    /// `abandoned` says so, checked before each chunk of [`PEOPLE_PER_PROOF`]
    /// people is encrypted and proven: the server stops proving for a partner that
    /// went away (minutes of CPU for a million people) within a chunk's time.
    pub fn prepare(
        config: OwnerConfig,
        people: &[Person],
        abandoned: &(dyn Fn() -> bool + Sync),
    ) -> Result<Owner, MeasureError> {
        if config.prove && config.noise.is_none() {
            return Err(MeasureError::ProofsNeedNoise);
        }
        let blinding = BlindingKey::random().map_err(|e| MeasureError::Rng(e.to_string()))?;
        let secret = SecretKey::random(&mut OsRng);
        let widest = people.iter().map(|p| p.tokens.len()).max().unwrap_or(0);
        if widest > usize::from(MAX_BUNDLE) {
            return Err(MeasureError::TooManyIdentifiers(widest));
        }
        if people.iter().any(|p| p.value > MAX_VALUE) {
            return Err(MeasureError::ValueTooLarge);
        }
        // The limbs are cut for the clip: a value above it would overflow them.
        if let Some(clip) = config.noise.map(|n| n.clip)
            && people.iter().any(|p| p.value > clip)
        {
            return Err(MeasureError::ValueAboveClip);
        }
        let split = config.split();
        let bundle = widest.max(1);
        let mut order: Vec<&Person> = people.iter().collect();
        order.shuffle(&mut OsRng);
        let tokens: Vec<&[crate::token::Token]> = order.iter().map(|p| p.tokens.as_slice()).collect();
        let elements = bundles(&blinding, &tokens, bundle)?;
        let public_key = secret.public_key();
        let encryptor = Encryptor::new(public_key);
        // Chunk by chunk (on all cores): encrypt, write the bytes in place, prove
        // the chunk if asked; the points and randomness of one chunk at a time.
        let bounds = config.noise.filter(|_| config.prove).map(proof::Bounds::for_noise);
        let people = order.len();
        let mut values = vec![[0u8; VALUE_LEN]; people];
        let proofs: Vec<Option<Vec<u8>>> = values
            .par_chunks_mut(PEOPLE_PER_PROOF)
            .zip(order.par_chunks(PEOPLE_PER_PROOF))
            .enumerate()
            .map(|(chunk, (out, persons))| {
                if abandoned() {
                    return Err(MeasureError::Abandoned);
                }
                let encrypted: Vec<_> =
                    persons.iter().map(|p| encryptor.encrypt_value(p.value, split, &mut OsRng)).collect();
                for (bytes, (limbs, _)) in out.iter_mut().zip(&encrypted) {
                    for (i, c) in limbs.iter().enumerate() {
                        bytes[i * 64..(i + 1) * 64].copy_from_slice(&c.to_bytes());
                    }
                }
                let Some(bounds) = bounds else { return Ok(None) };
                let limbs = Zeroizing::new(persons.iter().map(|p| split.limbs(p.value)).collect::<Vec<_>>());
                let randomness = Zeroizing::new(encrypted.iter().map(|(_, r)| **r).collect::<Vec<_>>());
                let points: Vec<_> = encrypted.iter().map(|(c, _)| c.map(|c| c.points())).collect();
                let context = proof::context(&public_key, people, chunk);
                proof::prove(&context, public_key.point(), bounds.limb_max(), &points, &limbs, &randomness)
                    .map(Some)
                    .map_err(MeasureError::from)
            })
            .collect::<Result<_, _>>()?;
        let proofs: Vec<Vec<u8>> = proofs.into_iter().flatten().collect();
        let first = OwnerMessage::People(People {
            public_key: public_key.to_bytes(),
            blinding_point: blinding.public_point().0,
            bundle: bundle as u8,
            elements,
            values,
            proofs,
        });
        Ok(Owner {
            config,
            state: OwnerState::AwaitingExposures,
            blinding,
            secret,
            people: people as u64,
            outgoing: VecDeque::from([first]),
            labels: Vec::new(),
            bundles_per_group: Vec::new(),
            bundle: 0,
            result: None,
        })
    }

    /// `b·P(t)`: where a cheating owner finds its own people in `people` (tests).
    #[cfg(test)]
    pub(crate) fn blind_for_tests(&self, token: &crate::token::Token) -> Element {
        self.blinding.blind_tokens(std::slice::from_ref(token))[0]
    }

    /// `b·X` for each of `elements`: the honest re-blinding a cheating owner
    /// starts from (tests).
    #[cfg(test)]
    pub(crate) fn reblind_for_tests(&self, elements: &[Element]) -> Vec<Element> {
        self.blinding.reblind(elements).unwrap()
    }

    /// Where the owner is.
    pub fn state(&self) -> OwnerState {
        self.state
    }

    /// The next message to send, if any.
    pub fn poll_outgoing(&mut self) -> Option<OwnerMessage> {
        self.outgoing.pop_front()
    }

    /// The released figures, once [`OwnerState::Done`]; never with learner
    /// `partner`, where the owner does not decrypt.
    pub fn result(&self) -> Option<&Measurement> {
        self.result.as_ref()
    }

    /// Takes one message from the partner.
    pub fn receive(&mut self, message: PartnerMessage) -> Result<(), MeasureError> {
        if self.state == OwnerState::Failed {
            return Err(MeasureError::Failed);
        }
        let result = self.step(message);
        if result.is_err() {
            self.state = OwnerState::Failed;
            self.outgoing.clear();
        }
        result
    }

    fn step(&mut self, message: PartnerMessage) -> Result<(), MeasureError> {
        message.validate()?;
        match (self.state, message) {
            (OwnerState::AwaitingExposures, PartnerMessage::Exposures(x)) => self.on_exposures(x),
            (OwnerState::AwaitingSums, PartnerMessage::Sums(lines)) if self.config.learner != Learner::Partner => {
                self.on_sums(&lines)
            }
            (OwnerState::AwaitingSums, PartnerMessage::Masked(lines)) if self.config.learner == Learner::Partner => {
                self.on_masked(&lines)
            }
            (state, other) => Err(MeasureError::Unexpected { state: state.doing(), message: other.name() }),
        }
    }

    /// The owner's checks of the partner's `exposures`, before anything is done with
    /// them: no element repeats (with every token in at most one bundle, one of the
    /// owner's people, at most `bundle` tokens, matches at most `bundle` exposure
    /// bundles, the bound the budget's per-person charge rests on,
    /// [`super::stats::Noise::worst_case_epsilon`]), and no group holds fewer than
    /// `min_group_size` real bundles ([`trap::real_bundles`]; an empty group
    /// passes). Returns the real bundles per group. The server calls it as soon as
    /// the message has arrived, before it blinds, encrypts or proves its people, so
    /// a refused message costs it none of that.
    pub fn check_exposures(x: &Exposures, min_group_size: u64) -> Result<Vec<u64>, MeasureError> {
        let k = usize::from(x.bundle);
        if let Some(at) = first_repeat(&x.elements) {
            return Err(MeasureError::RepeatedElement { bundle: (at / k.max(1)) as u64 });
        }
        let mut per_group = vec![0u64; x.labels.len()];
        for (index, &g) in x.groups.iter().enumerate() {
            let groups = per_group.len();
            *per_group.get_mut(usize::from(g)).ok_or(MessageError::GroupOutOfRange { index, group: g, groups })? += 1;
        }
        // The minimum is of real bundles: `per_group` holds the partner's traps too
        // (`trap::count` of them, which the owner cannot tell apart).
        let real: Vec<u64> = per_group.iter().map(|&n| trap::real_bundles(n)).collect();
        if let Some((group, &bundles)) =
            real.iter().enumerate().find(|&(g, &real)| per_group[g] > 0 && real < min_group_size)
        {
            return Err(MeasureError::GroupTooSmall { group, bundles, min: min_group_size });
        }
        Ok(real)
    }

    /// Re-blinds the partner's bundles after [`Owner::check_exposures`].
    ///
    /// Memory: the partner's elements are dropped once blinded again, so at most two
    /// copies of the message's elements are held at once (the reblinded ones and
    /// their shuffled reply); the check's index, a quarter of the elements' size,
    /// is gone before re-blinding starts.
    fn on_exposures(&mut self, mut x: Exposures) -> Result<(), MeasureError> {
        let k = usize::from(x.bundle);
        // From here on the owner's checks are of real bundles: traps match nobody.
        let real = Owner::check_exposures(&x, self.config.min_group_size)?;
        let reblinded = self.blinding.reblind(&std::mem::take(&mut x.elements))?;
        let mut order: Vec<usize> = (0..x.groups.len()).collect();
        order.shuffle(&mut OsRng);
        let mut elements: Vec<Element> = Vec::with_capacity(reblinded.len());
        let mut groups = Vec::with_capacity(order.len());
        for i in order {
            let start = elements.len();
            elements.extend_from_slice(&reblinded[i * k..(i + 1) * k]);
            elements[start..].sort_unstable();
            groups.push(x.groups[i]);
        }
        self.labels = x.labels;
        self.bundles_per_group = real;
        self.bundle = x.bundle;
        let reply = Exposures { labels: Vec::new(), bundle: self.bundle, groups, elements };
        self.outgoing.push_back(OwnerMessage::Reblinded(reply));
        self.state = OwnerState::AwaitingSums;
        Ok(())
    }

    /// `sums` and `masked` have one line per group, and each group's `records` is
    /// at least the real bundles received in it (traps left out, [`trap::real_bundles`]).
    fn check_sizes(&self, records: impl ExactSizeIterator<Item = u64>) -> Result<(), MeasureError> {
        if records.len() != self.labels.len() {
            return Err(MeasureError::Mismatch {
                what: "group lines",
                expected: self.labels.len() as u64,
                got: records.len() as u64,
            });
        }
        for (g, records) in records.enumerate() {
            if records < self.bundles_per_group[g] {
                return Err(MeasureError::Inconsistent { group: g, reason: "fewer records than bundles sent" });
            }
        }
        Ok(())
    }

    /// Checks every line against what the owner knows, then releases
    /// ([`stats::release`]): suppression is decided on the counts (noisy ones when
    /// the campaign has noise) before anything is decrypted, so a suppressed
    /// group's sum is never decrypted (fail closed).
    fn on_sums(&mut self, lines: &[GroupSum]) -> Result<(), MeasureError> {
        self.check_sizes(lines.iter().map(|l| l.records))?;
        let mut raw = Vec::with_capacity(lines.len());
        for (g, line) in lines.iter().enumerate() {
            // Noisy counts (with noise) may pass any bound; they widen nothing, since
            // the search below is bounded by the group's bundles, not by a count.
            if let Some(m) = line.matched.as_ref().filter(|_| self.config.noise.is_none()) {
                if m.records > line.records {
                    return Err(MeasureError::Inconsistent { group: g, reason: "more matched records than records" });
                }
                if m.people > self.people {
                    return Err(MeasureError::Inconsistent { group: g, reason: "more matched people than people" });
                }
                // Each exposure bundle matches at most one record of its own and, with
                // `k` elements each equal to at most one of the owner's, `k` people:
                // a claim beyond that is not a count of this group (it would only
                // widen the search the owner runs for a crafted sum).
                let bundles = self.bundles_per_group[g];
                if m.records > bundles {
                    return Err(MeasureError::Inconsistent { group: g, reason: "more matched records than bundles" });
                }
                if m.people > bundles.saturating_mul(u64::from(self.bundle)) {
                    return Err(MeasureError::Inconsistent {
                        group: g,
                        reason: "more matched people than the bundles' elements",
                    });
                }
            }
            let matched = line.matched.as_ref().map(|m| (m.records, m.people));
            raw.push(RawGroup { label: self.labels[g].clone(), records: line.records, matched });
        }
        // With noise the counts and limbs arrive noised by the partner (§12.4): the
        // owner searches below 0 by the partner's noise bound, which it derives from
        // the campaign (never from the message), and above for every person the
        // group's bundles could have matched, not for the noisy count.
        let split = self.config.split();
        let below = self.config.noise.map_or(Ok([0; LIMBS]), |n| n.partner_limb_bounds(u64::from(self.bundle)))?;
        let bound = |g: usize, limb: usize| {
            let people = self.people.min(self.bundles_per_group[g].saturating_mul(u64::from(self.bundle)));
            people.saturating_mul(split.limb_max()[limb]).saturating_add(below[limb])
        };
        let mut largest = 0;
        for (g, _) in lines.iter().enumerate().filter(|(_, l)| l.matched.is_some()) {
            for (limb, below) in below.iter().enumerate() {
                let range = bound(g, limb).saturating_add(*below);
                if range > MAX_SHARE_RANGE {
                    return Err(MeasureError::Inconsistent { group: g, reason: "the noise bound is too large" });
                }
                largest = largest.max(range);
            }
        }
        let mut table: Option<DlogTable> = None;
        let secret = &self.secret;
        let decrypt = |g: usize| {
            let Some(m) = &lines[g].matched else { return Err(MeasureError::Failed) };
            let table = table.get_or_insert_with(|| DlogTable::new(DlogTable::baby_steps_for(largest)));
            let mut parts = [0i128; LIMBS];
            for (limb, part) in parts.iter_mut().enumerate() {
                let mut bytes = [0u8; 64];
                bytes.copy_from_slice(&m.sum[limb * 64..(limb + 1) * 64]);
                let ct = super::elgamal::Ciphertext::from_bytes(&bytes, g * LIMBS + limb)?;
                *part = secret
                    .decrypt(&ct, below[limb], bound(g, limb), table)
                    .map_err(|source| MeasureError::Decrypt { group: g, source })?;
            }
            Ok(split.join(parts[0], parts[1]))
        };
        // The partner's noise protects its groups from the owner; the owner adds its
        // own to the sums only when the partner learns them too (learner `both`),
        // since the partner could take its own noise out.
        let noising = Noising { counts: None, sum: self.config.noise.filter(|_| self.config.learner.partner_learns()) };
        let mut rng = stats::noise_rng(self.config.seed)?;
        let result = stats::release(&raw, self.config.min_aggregate, noising, &mut rng, decrypt)?;
        if self.config.learner.partner_learns() {
            let json = serde_json::to_vec(&result).map_err(|_| MeasureError::BadRelease)?;
            self.outgoing.push_back(OwnerMessage::Release(json));
        }
        self.result = Some(result);
        self.state = OwnerState::Done;
        Ok(())
    }

    /// Learner `partner`: per group and limb a decryption share `x⁻¹·M − η·G` of the
    /// masked point, `η` the sum's noise. The owner decrypts nothing; each masked
    /// point is uniformly random to it, and the lines carry no counts, so it learns
    /// neither sums nor counts (nor which groups the partner suppresses: every group
    /// has a line, and every line gets its shares).
    fn on_masked(&mut self, lines: &[MaskedSum]) -> Result<(), MeasureError> {
        self.check_sizes(lines.iter().map(|l| l.records))?;
        let mut rng = stats::noise_rng(self.config.seed)?;
        let noise = self.config.noise;
        let mut shares = Vec::with_capacity(lines.len());
        for (g, line) in lines.iter().enumerate() {
            let limb_noise = noise.map_or(Ok([0; LIMBS]), |n| n.limbs(&mut rng))?;
            let mut out = [0u8; MASKED_LEN];
            for (limb, eta) in limb_noise.iter().enumerate() {
                let at = limb * ELEMENT_LEN..(limb + 1) * ELEMENT_LEN;
                let element = Element(line.points[at.clone()].try_into().unwrap_or([0; ELEMENT_LEN]));
                let point = group::decode(&element, g * LIMBS + limb)?;
                out[at].copy_from_slice(self.secret.share(&point, *eta).compress().as_bytes());
            }
            shares.push(out);
        }
        let noise_bounds = noise.map_or(Ok([0; LIMBS]), |n| n.limb_bounds())?;
        self.outgoing.push_back(OwnerMessage::Shares(Shares { noise_bounds, shares }));
        self.state = OwnerState::Done;
        Ok(())
    }
}
