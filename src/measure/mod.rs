//! Campaign measurement: private intersection-sum with lift, in the style of Google's
//! Private Join and Compute.
//!
//! The partner holds exposure records (identifiers and a group such as `test` or
//! `control`); the owner holds outcome records (identifiers and a non-negative
//! integer value). Identifiers are compared doubly blinded on ristretto255 (as in
//! [`crate::psi`]); values travel encrypted under the owner's twisted ElGamal key,
//! are summed homomorphically by the partner over the matched people of each group,
//! and only the per-group sums are decrypted: by the owner (with a campaign epsilon,
//! once the partner has checked its range proofs and added its own noise), or, when only the
//! partner learns, by the partner from the owner's decryption shares of masked sums
//! (the owner then never sees a sum). Every bundle and ciphertext list is shuffled,
//! so neither side can tie a match to a record.
//! docs/PROTOCOL.md §12 gives the messages byte for byte; docs/PRIVACY.md
//! ("Measurement") says what each side learns.
//!
//! People, not identifiers: each person's (or exposure record's) identifier
//! elements travel together as one padded bundle; a record matches a person if any
//! of their elements are equal, and each person is counted and summed once per
//! group however many identifiers matched.
//!
//! Submodules:
//! - [`elgamal`]: twisted exponential ElGamal, limbs, baby-step giant-step decryption.
//! - [`proof`]: the owner's range proofs of its values (Bulletproofs) and the
//!   consistency proofs of their first components, which the partner verifies
//!   before the owner may decrypt sums of its groups.
//! - [`message`]: the seven messages and their byte encoding (the state machines
//!   take and return them typed; only a transport encodes them).
//! - [`owner`]: the owner's state machine (outcomes, key holder, decrypts).
//! - [`partner`]: the partner's state machine (exposures, computes the sums).
//! - [`stats`]: suppression, differential-privacy noise, rates, lift and its interval.
//! - [`trap`]: the partner's trap bundles, which check that the owner re-blinded
//!   every exposure with one key and kept each bundle whole.
//! - [`people`]: who is one person (records linked by an identifier or an id).
//! - [`side`]: a prepared side as the engine takes it: the owner's people, the
//!   partner's exposures, and their counts (used by `local` and the service).
//! - [`local`]: `idmatch measure` on two local files, writing `measurement.json`.

#[cfg(test)]
mod cheating;
pub mod elgamal;
pub(crate) mod laplace;
pub mod local;
pub mod message;
mod owner;
mod partner;
mod people;
pub mod proof;
pub mod side;
pub mod stats;
pub mod trap;

use std::fmt;
use std::str::FromStr;

use curve25519_dalek::ristretto::RistrettoPoint;
use rand::RngCore;
use rand::rngs::OsRng;

pub use laplace::ScaleError;
pub use owner::{Owner, OwnerConfig, OwnerState};
pub use partner::{Partner, PartnerConfig, PartnerState};
pub use stats::{Measurement, SearchTooWide};

use crate::psi::group::ElementError;
use crate::psi::message::Element;
use crate::token::Token;
use elgamal::{CiphertextError, DecryptError};
use message::MessageError;

/// One outcome person of the owner: the tokens of their identifiers (distinct, and
/// no token shared with another person) and their value. `Debug` shows counts only.
#[derive(Clone, PartialEq, Eq)]
pub struct Person {
    /// The person's tokens.
    pub tokens: Vec<Token>,
    /// The outcome value (at most 2^32).
    pub value: u64,
}

impl fmt::Debug for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Person").field("tokens", &self.tokens.len()).finish_non_exhaustive()
    }
}

/// One exposure record of the partner: its tokens and its group (an index into the
/// partner's group labels). `Debug` shows counts only.
#[derive(Clone, PartialEq, Eq)]
pub struct Exposure {
    /// The record's tokens.
    pub tokens: Vec<Token>,
    /// Index of the record's group label.
    pub group: u8,
}

impl fmt::Debug for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exposure").field("tokens", &self.tokens.len()).field("group", &self.group).finish()
    }
}

/// Who receives the released figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Learner {
    /// The owner (it decrypts the sums).
    #[default]
    Owner,
    /// The partner only: it sends its sums masked and decrypts them from the
    /// owner's noisy decryption shares; the owner sees no sum.
    Partner,
    /// Both: the owner decrypts, releases, and sends the released figures.
    Both,
}

impl Learner {
    /// `owner`, `partner` or `both`.
    pub fn name(self) -> &'static str {
        match self {
            Learner::Owner => "owner",
            Learner::Partner => "partner",
            Learner::Both => "both",
        }
    }

    /// Whether the partner receives the release message.
    pub fn partner_learns(self) -> bool {
        self != Learner::Owner
    }
}

impl FromStr for Learner {
    type Err = String;
    fn from_str(s: &str) -> Result<Learner, String> {
        match s {
            "owner" => Ok(Learner::Owner),
            "partner" => Ok(Learner::Partner),
            "both" => Ok(Learner::Both),
            other => Err(format!("unknown learner `{other}` (owner, partner or both)")),
        }
    }
}

/// Why a measurement session failed. Never carries keys, tokens or identifiers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The peer's bytes are not a well-formed message.
    #[error("malformed message: {0}")]
    Message(#[from] MessageError),
    /// An element of the peer's message is not a valid blinded element.
    #[error("bad element in the peer's message: {0}")]
    Element(#[from] ElementError),
    /// A ciphertext of the peer's message is not valid.
    #[error("bad ciphertext in the peer's message: {0}")]
    Ciphertext(#[from] CiphertextError),
    /// The owner's public key is not a canonical non-identity element.
    #[error("the owner's public key is not a valid ristretto255 element")]
    BadPublicKey,
    /// The owner's blinding point `B = b·G` is not a canonical non-identity element.
    #[error("the owner's blinding point is not a valid ristretto255 element")]
    BadBlindingPoint,
    /// One of the partner's trap bundles did not come back as `b·(r·G) = r·B`,
    /// whole and in its group: the owner did not re-blind every exposure with the
    /// one key it announced ([`trap`]). Nothing is matched or summed.
    #[error("the owner's reblinded exposures fail the partner's trap check: {0}")]
    TrapSprung(&'static str),
    /// A message arrived that this state does not accept.
    #[error("unexpected `{message}` message while {state}")]
    Unexpected {
        /// The state machine's state.
        state: &'static str,
        /// The message's name.
        message: &'static str,
    },
    /// A reply does not fit what was sent (bundle size, number of bundles or groups).
    #[error("the peer's reply has {got} {what}, {expected} expected")]
    Mismatch {
        /// What was counted.
        what: &'static str,
        /// What was sent.
        expected: u64,
        /// What came back.
        got: u64,
    },
    /// The partner's figures for a group contradict what the owner knows.
    #[error("group {group}: {reason}")]
    Inconsistent {
        /// Position of the group.
        group: usize,
        /// What is impossible.
        reason: &'static str,
    },
    /// A sum did not decrypt within its bound: the partner did not sum valid ciphertexts.
    #[error("group {group}: {source}")]
    Decrypt {
        /// Position of the group.
        group: usize,
        /// The bound searched.
        source: DecryptError,
    },
    /// An element appears twice in the partner's exposure bundles. An honest
    /// partner's bundles never repeat one (a token belongs to one person, padding
    /// is random); a repeat would let one of the owner's people count many times
    /// over, past the sensitivity the noise and the budget are computed for.
    #[error("exposure bundle {bundle} repeats an element of an earlier bundle (or of itself)")]
    RepeatedElement {
        /// Position of the bundle (in the partner's order).
        bundle: u64,
    },
    /// The partner's own exposures give one identifier to two of them: the rows of
    /// one person are merged first (`measure::people`), so this is a caller's error.
    #[error("an identifier appears in two exposures; merge the rows of one person first")]
    RepeatedToken,
    /// The partner's group holds fewer exposure bundles than the owner accepts.
    #[error("group {group} holds {bundles} exposed people; this owner accepts groups of at least {min}")]
    GroupTooSmall {
        /// Position of the group.
        group: usize,
        /// Bundles in it.
        bundles: u64,
        /// The owner's minimum.
        min: u64,
    },
    /// Too many or too few groups, or a label too long or empty.
    #[error("groups: {0}")]
    Groups(&'static str),
    /// A person or record has more identifiers than a bundle holds.
    #[error("a record has {0} identifiers; a bundle holds at most 16")]
    TooManyIdentifiers(usize),
    /// A value above 2^32.
    #[error("a value is above 2^32")]
    ValueTooLarge,
    /// A value above the noise's clip: values are clipped before they are encrypted
    /// (`measure::side`), and the limbs are cut for the clip.
    #[error("a value is above the clip value")]
    ValueAboveClip,
    /// The release message is not the JSON of released figures.
    #[error("the release message is not the JSON of released figures")]
    BadRelease,
    /// The OS random number generator failed.
    #[error("random number generator: {0}")]
    Rng(String),
    /// The noise's epsilon or sensitivity cannot be sampled (out of range).
    #[error("noise: {0}")]
    Noise(#[from] laplace::ScaleError),
    /// The owner's range proofs are required (the owner decrypts, the campaign has
    /// noise) and `people` carries none.
    #[error("the owner's people carry no range proofs, which this partner requires before the owner may decrypt")]
    ProofsMissing,
    /// A side configured to make or require range proofs without noise: the
    /// proofs bound the values by the noise's clip (a configuration error, never
    /// the peer's doing).
    #[error("range proofs need the measurement's noise (its clip bounds the values)")]
    ProofsNeedNoise,
    /// The owner stopped preparing its people: the caller said the measurement
    /// was abandoned (its partner went away) ([`Owner::prepare`]).
    #[error("the owner stopped preparing its people: the measurement was abandoned")]
    Abandoned,
    /// `people` carries range proofs nobody asked for (no clip to check them against).
    #[error("the owner's people carry range proofs this measurement does not use")]
    UnexpectedProofs,
    /// A chunk's range proof does not verify: a value out of the clip's range, a
    /// ciphertext not formed as encrypted, or damaged proof bytes.
    #[error("the owner's range proof of people chunk {chunk} does not verify: {source}")]
    Proof {
        /// The chunk (of [`proof::PEOPLE_PER_PROOF`] people, in message order).
        chunk: usize,
        /// Why.
        source: proof::ProofError,
    },
    /// The owner could not prove its own values (never the peer's doing).
    #[error("could not prove the values in range: {0}")]
    Prove(#[from] proof::ProofError),
    /// The session failed earlier; it accepts nothing more.
    #[error("the session already failed")]
    Failed,
    /// The in-memory run ended before both sides were done.
    #[error("the run stalled before both sides were done")]
    Stalled,
}

/// The position of the first element that repeats an earlier one, if any: the
/// elements' positions sorted by (bytes, position), so equal elements sit together
/// in order of appearance (8 bytes per element, not a copy of each).
pub(crate) fn first_repeat(elements: &[Element]) -> Option<usize> {
    let mut order: Vec<usize> = (0..elements.len()).collect();
    order.sort_unstable_by(|&a, &b| elements[a].0.cmp(&elements[b].0).then(a.cmp(&b)));
    order.windows(2).filter(|w| elements[w[0]] == elements[w[1]]).map(|w| w[1]).min()
}

/// A random element (uniform; padding of bundles, indistinguishable from blinded ones).
pub(crate) fn random_element() -> Result<Element, MeasureError> {
    let mut wide = [0u8; 64];
    OsRng.try_fill_bytes(&mut wide).map_err(|e| MeasureError::Rng(e.to_string()))?;
    Ok(Element(RistrettoPoint::from_uniform_bytes(&wide).compress().to_bytes()))
}

/// Blinded bundles: `bundle` elements per item (its blinded tokens, then random
/// padding), sorted within the bundle, in the order of `items`.
pub(crate) fn bundles(
    key: &crate::psi::group::BlindingKey,
    items: &[&[Token]],
    bundle: usize,
) -> Result<Vec<Element>, MeasureError> {
    let tokens: Vec<Token> = items.iter().flat_map(|t| t.iter().copied()).collect();
    let blinded = key.blind_tokens(&tokens);
    let mut out = Vec::with_capacity(items.len() * bundle);
    let mut next = blinded.into_iter();
    for item in items {
        let start = out.len();
        out.extend(next.by_ref().take(item.len()));
        for _ in item.len()..bundle {
            out.push(random_element()?);
        }
        out[start..].sort_unstable();
    }
    Ok(out)
}

/// Runs both roles to the end, passing their messages in memory as they are (the
/// local run; the gRPC service carries the same messages encoded, §12.3).
pub fn run_in_memory(owner: &mut Owner, partner: &mut Partner) -> Result<(), MeasureError> {
    loop {
        let mut progressed = false;
        while let Some(message) = owner.poll_outgoing() {
            partner.receive(message)?;
            progressed = true;
        }
        while let Some(message) = partner.poll_outgoing() {
            owner.receive(message)?;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    if owner.state() == OwnerState::Done && partner.state() == PartnerState::Done {
        Ok(())
    } else {
        Err(MeasureError::Stalled)
    }
}

#[cfg(test)]
mod tests {
    use super::elgamal::{Ciphertext, DlogTable, Encryptor, LIMBS, PublicKey};
    use super::message::{self, GroupSum, Matched, Message, OwnerMessage, PartnerMessage, VALUE_LEN};
    use super::stats::Noise;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn token(i: u32) -> Token {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_be_bytes());
        Token(t)
    }

    fn configs(min: u64, learner: Learner) -> (OwnerConfig, PartnerConfig) {
        (
            OwnerConfig { min_aggregate: min, min_group_size: 1, learner, noise: None, seed: Some(1), prove: false },
            PartnerConfig { min_aggregate: min, learner, noise: None, seed: Some(2), require_proofs: false },
        )
    }

    fn pair(people: &[Person], exposures: &[Exposure], min: u64, counts: Vec<u64>) -> (Owner, Partner) {
        let (oc, pc) = configs(min, Learner::Both);
        let owner = Owner::new(oc, people).unwrap();
        let partner =
            Partner::new(pc, vec!["control".into(), "test".into(), "empty".into()], counts, exposures).unwrap();
        (owner, partner)
    }

    /// People, exposures, and per group (matched records, matched people, sum).
    type Fixture = (Vec<Person>, Vec<Exposure>, Vec<(u64, u64, u64)>);

    /// Random people (one or two tokens each, the second in a disjoint range) and
    /// exposures that match some of them through one or both tokens; per group the
    /// plaintext figures: matched records, the set of matched people, their sum.
    fn fixture() -> Fixture {
        let mut rng = StdRng::seed_from_u64(5);
        let people: Vec<Person> = (0..400u32)
            .map(|i| {
                let mut tokens = vec![token(i)];
                if i % 3 == 0 {
                    tokens.push(token(100_000 + i));
                }
                Person { tokens, value: if i % 7 == 0 { 1 << 32 } else { rng.gen_range(0..100_000) } }
            })
            .collect();
        let mut exposures = Vec::new();
        for i in 0..900u32 {
            let group = (i % 2) as u8;
            // Every token in one exposure only (the people are merged).
            let tokens = match i % 5 {
                // Both identifiers of a person with two: still one person.
                0 if i % 3 == 0 => vec![token(i), token(100_000 + i)],
                1 => vec![token(100_000 + i)],
                2 => vec![token(50_000 + i)],
                _ => vec![token(i)],
            };
            exposures.push(Exposure { tokens, group });
        }
        let mut expected = vec![(0u64, std::collections::BTreeSet::new()); 2];
        for x in &exposures {
            let hits: Vec<usize> =
                (0..people.len()).filter(|&p| people[p].tokens.iter().any(|t| x.tokens.contains(t))).collect();
            if !hits.is_empty() {
                expected[x.group as usize].0 += 1;
                expected[x.group as usize].1.extend(hits);
            }
        }
        let expected = expected
            .into_iter()
            .map(|(records, set)| {
                assert!(set.len() > 50);
                (records, set.len() as u64, set.iter().map(|&p| people[p].value).sum())
            })
            .collect();
        (people, exposures, expected)
    }

    fn fixture_pair(
        people: &[Person],
        exposures: &[Exposure],
        learner: Learner,
        noise: Option<Noise>,
        seed: u64,
    ) -> (Owner, Partner) {
        // Both sides see the campaign's noise (the accept carries it).
        let (mut oc, mut pc) = configs(1, learner);
        (oc.noise, oc.seed, pc.noise) = (noise, Some(seed), noise);
        let counts = vec![450, 450 + 3];
        (
            Owner::new(oc, people).unwrap(),
            Partner::new(pc, vec!["control".into(), "test".into()], counts, exposures).unwrap(),
        )
    }

    /// One group `all` of `exposures` measured with `noise` under `min_aggregate`
    /// 100, the owner's and the partner's noise seeded with `seeds`: the figures of
    /// the side that decrypts.
    fn noisy_run(
        learner: Learner,
        noise: Noise,
        seeds: (u64, u64),
        people: &[Person],
        exposures: &[Exposure],
    ) -> Measurement {
        let (mut oc, mut pc) = configs(100, learner);
        (oc.noise, oc.seed, pc.noise, pc.seed) = (Some(noise), Some(seeds.0), Some(noise), Some(seeds.1));
        let mut owner = Owner::new(oc, people).unwrap();
        let records = vec![exposures.len() as u64];
        let mut partner = Partner::new(pc, vec!["all".into()], records, exposures).unwrap();
        run_in_memory(&mut owner, &mut partner).unwrap();
        decrypted(learner, &owner, &partner)
    }

    /// The released figures of the side that decrypts: the partner's with learner
    /// `partner` (the owner then has none), the owner's otherwise.
    fn decrypted(learner: Learner, owner: &Owner, partner: &Partner) -> Measurement {
        if learner == Learner::Partner {
            assert!(owner.result().is_none(), "the owner must not hold figures");
            partner.release().unwrap().clone()
        } else {
            owner.result().unwrap().clone()
        }
    }

    #[test]
    fn sums_and_counts_equal_the_plaintext_computation_for_every_learner() {
        let (people, exposures, expected) = fixture();
        for learner in [Learner::Owner, Learner::Both, Learner::Partner] {
            let (mut owner, mut partner) = fixture_pair(&people, &exposures, learner, None, 1);
            run_in_memory(&mut owner, &mut partner).unwrap();
            let result = decrypted(learner, &owner, &partner);
            for (g, &(records, matched, sum)) in expected.iter().enumerate() {
                let line = &result.groups[g];
                assert_eq!(line.matched_exposure_records, stats::Figure::Value(records), "{learner:?} group {g}");
                assert_eq!(line.matched_outcome_people, stats::Figure::Value(matched), "{learner:?} group {g}");
                assert_eq!(line.sum, stats::Figure::Value(sum), "{learner:?} group {g}");
            }
            assert_eq!(result.groups[1].group_size, 453);
            assert!(result.lift.is_some());
            assert_eq!(partner.view().unwrap().owner_people, 400);
            match learner {
                Learner::Owner => assert!(partner.release().is_none()),
                // The groups exactly (the lift's floats went through JSON text with `both`).
                _ => assert_eq!(partner.release().unwrap().groups, result.groups),
            }
        }
    }

    /// Values cut at the clip's split (1000: 5 bits) add up to the plaintext sum for
    /// every learner. At ε = 2^16 the noise's scales are 0.05 (owner) and 0.02
    /// (each slot, partner): a draw other than 0 has probability under e^−21.
    #[test]
    fn sums_cut_at_the_clips_split_add_up_for_every_learner() {
        let (people, exposures, _) = fixture();
        let people: Vec<Person> = people.into_iter().map(|p| Person { value: p.value % 1_001, ..p }).collect();
        let exact = |g: u8| -> u64 {
            let matched: std::collections::BTreeSet<usize> = exposures
                .iter()
                .filter(|x| x.group == g)
                .flat_map(|x| (0..people.len()).filter(|&p| people[p].tokens.iter().any(|t| x.tokens.contains(t))))
                .collect();
            matched.iter().map(|&p| people[p].value).sum()
        };
        let expected = [exact(0), exact(1)];
        let noise = Noise { epsilon: 65_536.0, clip: 1_000 };
        assert_eq!(noise.split().bits(), 5);
        for learner in [Learner::Owner, Learner::Both, Learner::Partner] {
            let (mut owner, mut partner) = fixture_pair(&people, &exposures, learner, Some(noise), 3);
            run_in_memory(&mut owner, &mut partner).unwrap();
            let result = decrypted(learner, &owner, &partner);
            for (g, &sum) in expected.iter().enumerate() {
                assert_eq!(result.groups[g].sum, stats::Figure::Value(sum), "{learner:?} group {g}");
            }
        }
    }

    /// Steps both sides until the partner's `masked` message (learner `partner`),
    /// returning its lines.
    fn to_masked(owner: &mut Owner, partner: &mut Partner) -> Vec<message::MaskedSum> {
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        owner.receive(partner.poll_outgoing().unwrap()).unwrap();
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        let masked = partner.poll_outgoing().unwrap();
        // Sizes only: one line per group of records and two points, no count.
        assert_eq!(
            message::encode(&Message::from(masked.clone())).unwrap().len(),
            2 + partner.view().unwrap().matched.len() * (8 + 64)
        );
        let PartnerMessage::Masked(lines) = masked else { panic!() };
        lines
    }

    fn shares_of(owner: &mut Owner, lines: Vec<message::MaskedSum>) -> message::Shares {
        owner.receive(PartnerMessage::Masked(lines)).unwrap();
        let OwnerMessage::Shares(shares) = owner.poll_outgoing().unwrap() else { panic!() };
        shares
    }

    /// A cheating partner under learner `partner` with noise: one measurement of
    /// `people` against `exposures` (one group, "all"), the owner's noise drawn from
    /// `seed`, in which the partner puts `craft(the owner's people message)` in group
    /// 0's slots instead of its masked sums. Returns the owner's shares, what was
    /// crafted and the owner's key, for the caller to unmask as the cheater would.
    fn crafted_shares(
        noise: Noise,
        seed: u64,
        people: &[Person],
        exposures: &[Exposure],
        craft: impl FnOnce(&message::People, &PublicKey) -> [elgamal::Masked; LIMBS],
    ) -> (message::Shares, [elgamal::Masked; LIMBS]) {
        let (mut oc, mut pc) = configs(100, Learner::Partner);
        (oc.noise, oc.seed, pc.noise) = (Some(noise), Some(seed), Some(noise));
        let mut owner = Owner::new(oc, people).unwrap();
        let mut partner = Partner::new(pc, vec!["all".into()], vec![exposures.len() as u64], exposures).unwrap();
        let first = owner.poll_outgoing().unwrap();
        let OwnerMessage::People(sent) = &first else { panic!() };
        let key = PublicKey::from_bytes(&sent.public_key).unwrap();
        let crafted = craft(sent, &key);
        partner.receive(first).unwrap();
        owner.receive(partner.poll_outgoing().unwrap()).unwrap();
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        let PartnerMessage::Masked(mut lines) = partner.poll_outgoing().unwrap() else { panic!() };
        for (slot, masked) in crafted.iter().enumerate() {
            lines[0].points[slot * 32..slot * 32 + 32].copy_from_slice(&masked.point_bytes());
        }
        (shares_of(&mut owner, lines), crafted)
    }

    #[test]
    fn with_learner_partner_the_owner_sees_only_masked_points_and_refuses_plain_sums() {
        let (people, exposures, _) = fixture();
        // What the owner receives: per group its size and two points, each fresh.
        let (mut owner, mut partner) = fixture_pair(&people, &exposures, Learner::Partner, None, 1);
        let lines = to_masked(&mut owner, &mut partner);
        let (mut owner2, mut partner2) = fixture_pair(&people, &exposures, Learner::Partner, None, 1);
        let again = to_masked(&mut owner2, &mut partner2);
        for (a, b) in lines.iter().zip(&again) {
            assert_eq!(a.records, b.records);
            assert_ne!(a.points, b.points, "masks are fresh per run");
        }
        // A partner that sends decryptable sums instead is refused: the owner never
        // decrypts for a partner-only learner.
        let sums = PartnerMessage::Sums(vec![
            GroupSum { records: 450, matched: None },
            GroupSum { records: 453, matched: None },
        ]);
        assert!(matches!(
            owner.receive(sums),
            Err(MeasureError::Unexpected { state: "awaiting sums", message: "sums" })
        ));
        // And an owner of learner `owner` refuses masked sums.
        let (mut owner, mut partner) = fixture_pair(&people, &exposures, Learner::Owner, None, 1);
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        owner.receive(partner.poll_outgoing().unwrap()).unwrap();
        assert!(matches!(
            owner.receive(PartnerMessage::Masked(lines)),
            Err(MeasureError::Unexpected { state: "awaiting sums", message: "masked" })
        ));
    }

    /// A cheating partner repeats the bundle of the person it targets (so that one
    /// of the owner's people would count a hundred times in the matched records),
    /// or repeats an element inside one bundle: the owner refuses before it
    /// re-blinds anything, whatever the learner.
    #[test]
    fn the_owner_refuses_exposure_bundles_that_repeat_an_element() {
        let (people, exposures, _) = fixture();
        for learner in [Learner::Owner, Learner::Partner] {
            let (mut owner, mut partner) = fixture_pair(&people, &exposures, learner, None, 1);
            partner.receive(owner.poll_outgoing().unwrap()).unwrap();
            let PartnerMessage::Exposures(honest) = partner.poll_outgoing().unwrap() else {
                panic!("the partner's first message is its exposures")
            };
            let k = usize::from(honest.bundle);
            let n = honest.groups.len();
            let mut copies = honest.clone();
            for _ in 0..100 {
                copies.elements.extend_from_slice(&honest.elements[..k]);
                copies.groups.push(honest.groups[0]);
            }
            let (mut fresh, _) = fixture_pair(&people, &exposures, learner, None, 1);
            fresh.poll_outgoing();
            assert!(matches!(
                fresh.receive(PartnerMessage::Exposures(copies)),
                Err(MeasureError::RepeatedElement { bundle }) if bundle == n as u64
            ));
            assert!(fresh.poll_outgoing().is_none() && fresh.state() == OwnerState::Failed);
            let mut inside = honest.clone();
            inside.elements[1] = inside.elements[0];
            assert!(matches!(
                owner.receive(PartnerMessage::Exposures(inside)),
                Err(MeasureError::RepeatedElement { bundle: 0 })
            ));
        }
    }

    #[test]
    fn the_owner_checks_masked_sizes_and_points() {
        let (people, exposures, _) = fixture();
        let run = |edit: &dyn Fn(&mut Vec<message::MaskedSum>)| {
            let (mut owner, mut partner) = fixture_pair(&people, &exposures, Learner::Partner, None, 1);
            let mut lines = to_masked(&mut owner, &mut partner);
            edit(&mut lines);
            owner.receive(PartnerMessage::Masked(lines))
        };
        assert!(matches!(
            run(&|l| l.truncate(1)),
            Err(MeasureError::Mismatch { what: "group lines", expected: 2, got: 1 })
        ));
        assert!(matches!(
            run(&|l| l[1].records = 10),
            Err(MeasureError::Inconsistent { group: 1, reason: "fewer records than bundles sent" })
        ));
        assert!(matches!(
            run(&|l| l[1].points[32..].fill(0)),
            Err(MeasureError::Element(ElementError::Identity { index: 3 }))
        ));
        assert!(matches!(
            run(&|l| l[0].points[..32].fill(0xff)),
            Err(MeasureError::Element(ElementError::NonCanonical { index: 0 }))
        ));
    }

    #[test]
    fn the_partner_refuses_shares_that_do_not_fit() {
        let people: Vec<Person> = (0..300).map(|i| Person { tokens: vec![token(i)], value: 10 }).collect();
        let exposures: Vec<Exposure> = (0..300)
            .map(|i| Exposure { tokens: vec![token(if i < 250 { i } else { 1000 + i })], group: u8::from(i >= 200) })
            .collect();
        // control: 200 matched; test: 50 matched (under 100, suppressed); empty: none.
        let pair = || {
            let (oc, pc) = configs(100, Learner::Partner);
            let labels = vec!["control".into(), "test".into(), "empty".into()];
            (Owner::new(oc, &people).unwrap(), Partner::new(pc, labels, vec![200, 100, 5], &exposures).unwrap())
        };
        let (mut owner, mut partner) = pair();
        let lines = to_masked(&mut owner, &mut partner);
        // Every group has a line, suppressed or not.
        assert_eq!(lines.iter().map(|l| l.records).collect::<Vec<_>>(), [200, 100, 5]);
        let shares = shares_of(&mut owner, lines);
        assert_eq!(shares.noise_bounds, [0, 0]);
        assert_eq!(shares.shares.len(), 3);
        let refused = |shares: message::Shares| {
            let (mut o, mut p) = pair();
            to_masked(&mut o, &mut p);
            let result = p.receive(OwnerMessage::Shares(shares));
            assert_eq!(p.state(), PartnerState::Failed);
            result
        };

        let mut short = shares.clone();
        short.shares.pop();
        assert!(matches!(refused(short), Err(MeasureError::Mismatch { what: "group shares", expected: 3, got: 2 })));
        // A noise bound beyond what the partner searches.
        let mut wide = shares.clone();
        wide.noise_bounds[1] = partner::MAX_SHARE_RANGE;
        assert!(matches!(
            refused(wide),
            Err(MeasureError::Inconsistent { group: 0, reason: "the noise bound is too large" })
        ));
        // A share that is no point.
        let mut bad = shares.clone();
        bad.shares[0][..32].fill(0xff);
        assert!(matches!(refused(bad), Err(MeasureError::Element(ElementError::NonCanonical { index: 0 }))));
        // A share that is not the owner's: the limb does not decrypt within its bound.
        let mut wrong = shares.clone();
        wrong.shares[0][..32].copy_from_slice(&random_element().unwrap().0);
        assert!(matches!(refused(wrong), Err(MeasureError::Decrypt { group: 0, .. })));
        // Shares made for another session's masks do not decrypt either.
        assert!(matches!(refused(shares.clone()), Err(MeasureError::Decrypt { group: 0, .. })));
        // The session's own shares release the figures; the shares of the groups the
        // partner suppressed are dropped, whatever they are.
        let mut own = shares;
        own.shares[1] = [0xff; 64];
        partner.receive(OwnerMessage::Shares(own)).unwrap();
        let g = &partner.release().unwrap().groups;
        assert_eq!(g[0].sum, stats::Figure::Value(2000));
        assert_eq!(g[1].sum, stats::Figure::Suppressed(100));
        assert_eq!(g[2].matched_outcome_people, stats::Figure::Suppressed(100));
        assert!(owner.result().is_none());
    }

    /// A cheating owner (learner `owner`) may shuffle the reblinded bundles but not
    /// move one to another group or copy one over another: either would let one
    /// exposure record count twice or in a group the owner chose, beyond the reach
    /// the partner's noise is scaled for. Both are refused before anything is summed.
    #[test]
    fn the_partner_refuses_reblinded_bundles_moved_between_groups_or_copied() {
        let (people, exposures, _) = fixture();
        for copy in [false, true] {
            let (mut owner, mut partner) = fixture_pair(&people, &exposures, Learner::Owner, None, 1);
            partner.receive(owner.poll_outgoing().unwrap()).unwrap();
            owner.receive(partner.poll_outgoing().unwrap()).unwrap();
            let Some(OwnerMessage::Reblinded(mut x)) = owner.poll_outgoing() else { panic!("no reblinded") };
            let k = usize::from(x.bundle);
            if copy {
                // Bundle 0's elements over another bundle of the same group.
                let j = (1..x.groups.len()).find(|&j| x.groups[j] == x.groups[0]).unwrap();
                let first = x.elements[..k].to_vec();
                x.elements[j * k..(j + 1) * k].copy_from_slice(&first);
            } else {
                x.groups[0] = 1 - x.groups[0];
            }
            let err = partner.receive(OwnerMessage::Reblinded(x)).unwrap_err();
            match (copy, &err) {
                (true, MeasureError::RepeatedElement { .. }) => {}
                (false, MeasureError::Inconsistent { reason, .. }) if reason.contains("moved between groups") => {}
                _ => panic!("copy {copy}: {err}"),
            }
            assert!(partner.poll_outgoing().is_none(), "nothing summed or sent");
        }
    }

    /// Noise through the whole protocol, with fixed seeds, for the two sides that
    /// decrypt: the released sums centre on the exact sum with the spread the
    /// limbs' noise gives (`sd_low² + (2^16·sd_high)²`), and the counts are noised
    /// too. With learner `partner` the owner's shares carry noise for one person
    /// per slot; with learner `owner` the partner's `Enc(η)` carries noise for the
    /// `k = 2` people one of its records could match, and its counts noise for
    /// `k` people (matched people) and one record.
    #[test]
    fn decrypted_noise_has_the_expected_mean_and_spread_for_each_learner() {
        let people: Vec<Person> =
            (0..120).map(|i| Person { tokens: vec![token(i)], value: if i % 2 == 0 { 1 << 32 } else { 7 } }).collect();
        let exact = 60 * (1u64 << 32) + 60 * 7;
        let noise = Noise { epsilon: 3.0, clip: 1 << 32 };
        let runs = 150;
        for (learner, width) in [(Learner::Partner, 1u32), (Learner::Owner, 2)] {
            // Each record's second identifier (with width 2) matches nobody.
            let exposures: Vec<Exposure> = (0..120)
                .map(|i| Exposure { tokens: (0..width).map(|w| token(i + 10_000 * w)).collect(), group: 0 })
                .collect();
            let (mut sums, mut people_counts, mut record_counts) = (Vec::new(), Vec::new(), Vec::new());
            for seed in 0..runs {
                let figures = noisy_run(learner, noise, (seed, seed + 1_000), &people, &exposures);
                let g = &figures.groups[0];
                sums.push(g.sum.value().unwrap() as f64);
                people_counts.push(g.matched_outcome_people.value().unwrap() as f64);
                record_counts.push(g.matched_exposure_records.value().unwrap() as f64);
            }
            // Learner partner: the owner's share noise, ε/6 per slot of sensitivity
            // 2^16. Learner owner: the partner's, ε/12 on the low limb (its bound
            // 2^16 − 1) and ε/4 on the high one (2^16), each times the reach.
            let sd = stats::laplace_sd;
            let w = f64::from(width);
            let (low, high) = match learner {
                Learner::Partner => (sd(0.5, 65_536.0), sd(0.5, 65_536.0)),
                _ => (sd(0.25, 65_535.0 * w), sd(0.75, 65_536.0 * w)),
            };
            let expected_sd = (low.powi(2) + (65_536.0 * high).powi(2)).sqrt();
            let (mean, spread) = stats::mean_sd(&sums);
            let within = 4.0 * expected_sd / (runs as f64).sqrt();
            assert!((mean - exact as f64).abs() < within, "{learner:?}: mean {mean}, exact {exact}");
            assert!((spread / expected_sd - 1.0).abs() < 0.3, "{learner:?}: spread {spread}, expected {expected_sd}");
            assert!(people_counts.iter().any(|&p| p != 120.0), "the counts are noised");
            let (people_mean, people_sd) = stats::mean_sd(&people_counts);
            let count_sd = sd(1.0, f64::from(width));
            assert!((people_mean - 120.0).abs() < 4.0 * count_sd / (runs as f64).sqrt(), "{people_mean}");
            assert!((people_sd / count_sd - 1.0).abs() < 0.3, "{learner:?}: count spread {people_sd}");
            // Matched records: the partner's noise covers the `k` records one record's
            // elements can become when the owner re-pairs them; the partner's own
            // release (learner partner) noises for one.
            let records_sd = if learner == Learner::Partner { sd(1.0, 1.0) } else { count_sd };
            let (_, spread) = stats::mean_sd(&record_counts);
            assert!((spread / records_sd - 1.0).abs() < 0.3, "{learner:?}: records spread {spread}");
        }
    }

    /// Issue 20, attack 2: a partner (learner `partner`) that puts one person's
    /// limb ciphertexts in a group's slots, the low limb in the high slot and the
    /// high limb in the low one, instead of the group's sums. Under version 2 the
    /// high slot carried no noise with a clip below 2^16, so the person's low limb
    /// came back exact. Now every slot's noise is scaled for the largest limb of any
    /// value up to the clip: checked here by unmasking the shares as the cheater
    /// would, against the person's limbs computed independently.
    #[test]
    fn a_partner_that_substitutes_a_persons_limbs_reads_them_only_with_noise() {
        let (value, noise) = (1_000u64, Noise { epsilon: 0.25, clip: 1_000 });
        // Cut at 5 bits: 1000 = 8 + 31·2^5; a slot's sensitivity is 31, at ε/6.
        let truth = [1_000 % 32, 1_000 / 32];
        let (sensitivity, epsilon) = (31.0, noise.epsilon / 6.0);
        let bound = noise.limb_bounds().unwrap()[0];
        assert_eq!(bound, (40.0 * sensitivity / epsilon).ceil() as u64);
        let people: Vec<Person> = (0..120).map(|i| Person { tokens: vec![token(i)], value }).collect();
        let exposures: Vec<Exposure> = (0..120).map(|i| Exposure { tokens: vec![token(i)], group: 0 }).collect();
        let table = DlogTable::new(DlogTable::baby_steps_for(2 * bound + 32));
        let mut rng = StdRng::seed_from_u64(77);
        let mut deviations = Vec::new();
        for seed in 0..24 {
            // Slot 0 (low) gets the person's high limb, slot 1 (high) its low limb.
            let (shares, crafted) = crafted_shares(noise, seed, &people, &exposures, |sent, key| {
                let limb = |l: usize| {
                    let bytes: [u8; 64] = sent.values[0][l * 64..(l + 1) * 64].try_into().unwrap();
                    Ciphertext::from_bytes(&bytes, 0).unwrap()
                };
                [limb(1).mask(key, &mut rng), limb(0).mask(key, &mut rng)]
            });
            let placed = [truth[1], truth[0]];
            assert_eq!(shares.noise_bounds, [bound, bound]);
            for slot in 0..LIMBS {
                let bytes: [u8; 32] = shares.shares[0][slot * 32..(slot + 1) * 32].try_into().unwrap();
                let share = curve25519_dalek::ristretto::CompressedRistretto(bytes).decompress().unwrap();
                let read = table.solve_shifted(&crafted[slot].unmask(&share), bound, 31 + bound).unwrap();
                deviations.push(read - i128::from(placed[slot]));
            }
        }
        assert!(deviations.iter().all(|&d| d != 0), "an exact read: {deviations:?}");
        assert!(deviations.iter().all(|d| d.unsigned_abs() <= u128::from(bound)), "{deviations:?}");
        // E|η| = 2α/(1 − α²) for a discrete Laplace of α = e^(−ε/Δ): about 744 here.
        let alpha = (-epsilon / sensitivity).exp();
        let expected = 2.0 * alpha / (1.0 - alpha * alpha);
        let mean = deviations.iter().map(|d| d.unsigned_abs() as f64).sum::<f64>() / deviations.len() as f64;
        assert!((0.6..1.5).contains(&(mean / expected)), "mean |noise| {mean}, expected {expected}");
    }

    /// Open (docs/PRIVACY.md, "Cheating parties", point 3): a partner links its
    /// own bundles through `reblinded` and so reads, target by target in one
    /// measurement, which of its exposures are in the owner's outcome file. Into
    /// each target's bundle it puts `a·P(t)` and `c·a·P(t)` with a secret `c` per
    /// target; the owner cannot see the relation (decisional Diffie–Hellman) and
    /// re-blinds both with `b`, so the reply bundle holding `Y` and `c·Y` is the
    /// target's, and `Y` is in the partner's own `a·(b·P(t'))` set exactly when
    /// the target is one of the owner's people. Played at the message level,
    /// checked against the owner's people. Should this ever be closed, this test
    /// fails and must become a refusal.
    #[test]
    fn a_partner_links_its_bundles_through_the_reply_and_reads_each_targets_membership() {
        use crate::psi::group::{BlindingKey, decode};
        use curve25519_dalek::scalar::Scalar;
        let people: Vec<Person> = (0..200).map(|i| Person { tokens: vec![token(i)], value: 1 }).collect();
        // Tokens 180..220: the first 20 are the owner's people, the other 20 are not.
        let targets: Vec<u32> = (180..220).collect();
        let (config, _) = configs(1, Learner::Owner);
        let mut owner = Owner::new(config, &people).unwrap();
        let Some(OwnerMessage::People(sent)) = owner.poll_outgoing() else { panic!("no people") };
        let a = BlindingKey::random().unwrap();
        let mut rng = StdRng::seed_from_u64(91);
        let secrets: Vec<Scalar> = targets.iter().map(|_| Scalar::from(rng.r#gen::<u64>())).collect();
        let mut elements = Vec::new();
        for (&t, c) in targets.iter().zip(&secrets) {
            let x = a.blind_tokens(&[token(t)])[0];
            let cx = Element((decode(&x, 0).unwrap() * c).compress().to_bytes());
            let mut bundle = [x, cx];
            bundle.sort_unstable();
            elements.extend(bundle);
        }
        // Then bundles of random elements as its traps would be, for the owner's
        // count of real bundles (`trap::real_bundles`).
        let fillers = trap::count(targets.len() as u64) as usize;
        for _ in 0..fillers {
            let mut bundle = [random_element().unwrap(), random_element().unwrap()];
            bundle.sort_unstable();
            elements.extend(bundle);
        }
        let groups = vec![0; targets.len() + fillers];
        let x = message::Exposures { labels: vec!["all".into()], bundle: 2, groups, elements };
        owner.receive(PartnerMessage::Exposures(x)).unwrap();
        let Some(OwnerMessage::Reblinded(back)) = owner.poll_outgoing() else { panic!("no reply") };
        let mine: std::collections::HashSet<Element> = a.reblind(&sent.elements).unwrap().into_iter().collect();
        let mut read = std::collections::BTreeMap::new();
        for pair in back.elements.chunks(2) {
            let (y0, y1) = (decode(&pair[0], 0).unwrap(), decode(&pair[1], 1).unwrap());
            for (&t, c) in targets.iter().zip(&secrets) {
                let base = if y0 * c == y1 {
                    pair[0]
                } else if y1 * c == y0 {
                    pair[1]
                } else {
                    continue;
                };
                read.insert(t, mine.contains(&base));
            }
        }
        assert_eq!(read.len(), targets.len(), "every target's bundle is found in the reply");
        for (t, member) in read {
            assert_eq!(member, t < 200, "target {t}: read from the partner's own matching");
        }
    }

    /// Issue 20, the open read behind the owner's `honest_client_trusted` gate: a
    /// partner (learner `partner`) that sends `c·C1` of one person's limb, with `c`
    /// above twice the slot's noise bound, gets back `c·m + η` and rounds it to `m`
    /// exactly, noise or not. Played here as the cheater would, both limbs of the
    /// first person of `people`; the value read is checked against the owner's
    /// values (distinct and far apart from what noise of this scale would give).
    /// Should this read ever be closed, this test fails and must become a refusal.
    #[test]
    fn a_partner_that_scales_a_persons_ciphertext_reads_its_value_exactly() {
        use curve25519_dalek::ristretto::CompressedRistretto;
        let noise = Noise { epsilon: 0.25, clip: 1_000 };
        let bound = noise.limb_bounds().unwrap()[0];
        // Values 881 ..= 1000, cut at 5 bits; one person's limbs are at most 31.
        let values: Vec<u64> = (0..120).map(|i| 1_000 - i).collect();
        let people: Vec<Person> =
            values.iter().enumerate().map(|(i, &value)| Person { tokens: vec![token(i as u32)], value }).collect();
        let exposures: Vec<Exposure> = (0..120).map(|i| Exposure { tokens: vec![token(i)], group: 0 }).collect();
        let c = 2 * bound + 1;
        let table = DlogTable::new(DlogTable::baby_steps_for(c * 31 + 2 * bound));
        let mut rng = StdRng::seed_from_u64(78);
        let mut read_values = std::collections::BTreeSet::new();
        for seed in 0..8 {
            // c·(C1, C2) of the first person's limb l: c·C1 is what the owner sees.
            let (shares, crafted) = crafted_shares(noise, seed, &people, &exposures, |sent, key| {
                let mut scaled = |l: usize| {
                    let mut bytes = [0u8; 64];
                    for part in 0..2 {
                        let at = l * 64 + part * 32;
                        let point = CompressedRistretto(sent.values[0][at..at + 32].try_into().unwrap());
                        let point = point.decompress().unwrap() * curve25519_dalek::scalar::Scalar::from(c);
                        bytes[part * 32..part * 32 + 32].copy_from_slice(point.compress().as_bytes());
                    }
                    Ciphertext::from_bytes(&bytes, 0).unwrap().mask(key, &mut rng)
                };
                [scaled(0), scaled(1)]
            });
            assert_eq!(shares.noise_bounds, [bound, bound], "the owner noised both slots");
            let limbs: Vec<u64> = (0..LIMBS)
                .map(|slot| {
                    let bytes: [u8; 32] = shares.shares[0][slot * 32..(slot + 1) * 32].try_into().unwrap();
                    let share = CompressedRistretto(bytes).decompress().unwrap();
                    let noisy = table.solve_shifted(&crafted[slot].unmask(&share), bound, c * 31 + bound);
                    let noisy = noisy.expect("c·m + η is within the search");
                    // Round to the nearest multiple of c: |η| ≤ bound < c/2.
                    u64::try_from((noisy + i128::from(c / 2)).div_euclid(i128::from(c))).unwrap()
                })
                .collect();
            read_values.insert(limbs[0] + (limbs[1] << 5));
        }
        assert!(read_values.iter().all(|v| values.contains(v)), "{read_values:?} are not all owner values");
        assert!(read_values.len() > 1, "different people read in different runs: {read_values:?}");
    }

    /// Issue 20, attack 3, through the whole protocol: with noise, a group of exactly
    /// `min_aggregate` matched people is released in some runs and suppressed in
    /// others, whoever releases (the owner decrypting, or the partner under learner
    /// `partner`); the partner sends a sum for every group, so no exact count
    /// decides first.
    #[test]
    fn a_group_at_the_threshold_is_not_decided_by_its_exact_count() {
        let people: Vec<Person> = (0..100).map(|i| Person { tokens: vec![token(i)], value: 10 }).collect();
        let exposures: Vec<Exposure> = (0..100).map(|i| Exposure { tokens: vec![token(i)], group: 0 }).collect();
        let noise = Noise { epsilon: 1.0, clip: 10 };
        for learner in [Learner::Owner, Learner::Both, Learner::Partner] {
            let mut outcomes = std::collections::BTreeSet::new();
            for seed in 0..30 {
                let figures = noisy_run(learner, noise, (seed, seed + 500), &people, &exposures);
                let g = &figures.groups[0];
                outcomes.insert(g.matched_outcome_people.value().is_some());
                if let Some(p) = g.matched_outcome_people.value() {
                    assert!(p >= 100, "{learner:?}: released with a noisy count of {p}");
                }
            }
            assert_eq!(outcomes.len(), 2, "{learner:?}: always {outcomes:?}");
        }
    }

    /// Values are cut into limbs for the clip: the owner refuses to encrypt a value
    /// above it (the caller clips first, `side::owner_people`).
    #[test]
    fn the_owner_refuses_values_above_the_clip() {
        let people = [Person { tokens: vec![token(1)], value: 1_001 }];
        let config = OwnerConfig { noise: Some(Noise { epsilon: 1.0, clip: 1_000 }), ..OwnerConfig::default() };
        assert!(matches!(Owner::new(config, &people), Err(MeasureError::ValueAboveClip)));
    }

    /// The one-person-group attack: a partner that makes each target its own group
    /// learns from suppressed-or-not whether the target is in the outcomes. The owner
    /// refuses any non-empty group under its minimum before anything is summed.
    #[test]
    fn groups_under_the_owner_minimum_are_refused() {
        let people: Vec<Person> = (0..300).map(|i| Person { tokens: vec![token(i)], value: 10 }).collect();
        // control: 299 people; test: one target.
        let exposures: Vec<Exposure> =
            (0..300).map(|i| Exposure { tokens: vec![token(i)], group: u8::from(i == 0) }).collect();
        let (mut oc, pc) = configs(100, Learner::Both);
        oc.min_group_size = 100;
        let mut owner = Owner::new(oc, &people).unwrap();
        let labels = vec!["control".into(), "test".into(), "empty".into()];
        let mut partner = Partner::new(pc, labels.clone(), vec![299, 1, 0], &exposures).unwrap();
        let err = run_in_memory(&mut owner, &mut partner).unwrap_err();
        assert!(matches!(err, MeasureError::GroupTooSmall { group: 1, bundles: 1, min: 100 }), "{err}");
        assert!(owner.result().is_none() && partner.release().is_none());
        // Groups at the minimum (and the empty one) pass.
        let exposures: Vec<Exposure> =
            (0..300).map(|i| Exposure { tokens: vec![token(i)], group: u8::from(i < 100) }).collect();
        let (mut oc, _) = configs(100, Learner::Both);
        oc.min_group_size = 100;
        let mut owner = Owner::new(oc, &people).unwrap();
        let mut partner = Partner::new(pc, labels, vec![200, 100, 0], &exposures).unwrap();
        run_in_memory(&mut owner, &mut partner).unwrap();
        assert!(owner.result().is_some());
    }

    #[test]
    fn empty_groups_and_groups_under_the_minimum_are_suppressed() {
        let people: Vec<Person> = (0..300).map(|i| Person { tokens: vec![token(i)], value: 10 }).collect();
        let exposures: Vec<Exposure> = (0..300)
            .map(|i| Exposure { tokens: vec![token(if i < 250 { i } else { 1000 + i })], group: u8::from(i >= 200) })
            .collect();
        // control: 200 matched; test: 50 matched (under 100); empty: none.
        let (mut owner, mut partner) = pair(&people, &exposures, 100, vec![200, 100, 5]);
        run_in_memory(&mut owner, &mut partner).unwrap();
        let g = &owner.result().unwrap().groups;
        assert_eq!(g[0].sum, stats::Figure::Value(2000));
        assert_eq!(g[1].sum, stats::Figure::Suppressed(100));
        assert_eq!(g[1].matched_outcome_people, stats::Figure::Suppressed(100));
        assert_eq!(g[2].matched_exposure_records, stats::Figure::Suppressed(100));
        assert_eq!(g[2].group_size, 5);
        assert!(owner.result().unwrap().lift.is_none());
    }

    fn people_message(owner: &mut Owner) -> message::People {
        match owner.poll_outgoing().unwrap() {
            OwnerMessage::People(p) => p,
            other => panic!("{}", other.name()),
        }
    }

    #[test]
    fn malformed_messages_give_precise_errors() {
        let people: Vec<Person> = (0..3).map(|i| Person { tokens: vec![token(i)], value: 1 }).collect();
        let exposures: Vec<Exposure> = (0..3).map(|i| Exposure { tokens: vec![token(i)], group: 0 }).collect();

        // Ill-formed (elements that do not fill the bundles), bad points, identity,
        // bad key, out of order, then refused for good.
        let (mut owner, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        let good = people_message(&mut owner);
        let mut short = good.clone();
        short.elements.pop();
        assert!(matches!(
            partner.receive(OwnerMessage::People(short)),
            Err(MeasureError::Message(message::MessageError::ElementCount { message: "people", expected: 3, got: 2 }))
        ));
        assert_eq!(partner.state(), PartnerState::Failed);
        assert!(matches!(partner.receive(OwnerMessage::People(good.clone())), Err(MeasureError::Failed)));

        let (_, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        let mut bad = good.clone();
        bad.elements[1] = crate::psi::message::Element([0xff; 32]);
        assert!(matches!(
            partner.receive(OwnerMessage::People(bad)),
            Err(MeasureError::Element(ElementError::NonCanonical { index: 1 }))
        ));
        let (_, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        let mut bad = good.clone();
        bad.elements[2] = crate::psi::message::Element([0; 32]);
        assert!(matches!(
            partner.receive(OwnerMessage::People(bad)),
            Err(MeasureError::Element(ElementError::Identity { index: 2 }))
        ));
        let (_, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        let mut bad = good.clone();
        bad.public_key = [0; 32];
        assert!(matches!(partner.receive(OwnerMessage::People(bad)), Err(MeasureError::BadPublicKey)));
        let (_, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        let reblinded = OwnerMessage::Reblinded(message::Exposures {
            labels: vec![],
            bundle: 1,
            groups: vec![0],
            elements: vec![good.elements[0]],
        });
        assert!(matches!(
            partner.receive(reblinded),
            Err(MeasureError::Unexpected { state: "awaiting people", message: "reblinded" })
        ));

        // The owner: sums before exposures; a wrong bundle count back at the partner.
        let (mut owner, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        let sums = PartnerMessage::Sums(vec![GroupSum { records: 1, matched: None }]);
        assert!(matches!(
            owner.receive(sums),
            Err(MeasureError::Unexpected { state: "awaiting exposures", message: "sums" })
        ));
        let (mut owner, _) = pair(&people, &exposures, 1, vec![3, 0, 0]);
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        owner.receive(partner.poll_outgoing().unwrap()).unwrap();
        let OwnerMessage::Reblinded(mut back) = owner.poll_outgoing().unwrap() else { panic!() };
        back.groups.pop();
        back.elements.pop();
        assert!(matches!(
            partner.receive(OwnerMessage::Reblinded(back)),
            Err(MeasureError::Mismatch { what: "bundles", expected: 259, got: 258 })
        ));
    }

    #[test]
    fn forged_sums_are_refused() {
        let people: Vec<Person> = (0..3).map(|i| Person { tokens: vec![token(i)], value: 1 }).collect();
        let exposures: Vec<Exposure> = (0..3).map(|i| Exposure { tokens: vec![token(i)], group: 0 }).collect();
        let run_to_sums = || {
            let (mut owner, mut partner) = pair(&people, &exposures, 1, vec![3, 0, 0]);
            let first = owner.poll_outgoing().unwrap();
            let OwnerMessage::People(people) = &first else { panic!() };
            let key = PublicKey::from_bytes(&people.public_key).unwrap();
            partner.receive(first).unwrap();
            owner.receive(partner.poll_outgoing().unwrap()).unwrap();
            partner.receive(owner.poll_outgoing().unwrap()).unwrap();
            let PartnerMessage::Sums(lines) = partner.poll_outgoing().unwrap() else { panic!() };
            (owner, key, lines)
        };
        // A sum far above what 3 people can reach.
        let (mut owner, key, mut lines) = run_to_sums();
        let enc = Encryptor::new(key);
        let mut sum = [0u8; VALUE_LEN];
        sum[..64].copy_from_slice(&enc.encrypt(1 << 40, &mut StdRng::seed_from_u64(1)).to_bytes());
        sum[64..].copy_from_slice(&enc.encrypt(0, &mut StdRng::seed_from_u64(2)).to_bytes());
        lines[0].matched = Some(Matched { records: 3, people: 3, sum });
        assert!(matches!(owner.receive(PartnerMessage::Sums(lines)), Err(MeasureError::Decrypt { group: 0, .. })));
        // More matched people than the owner has.
        let (mut owner, _, mut lines) = run_to_sums();
        if let Some(m) = &mut lines[0].matched {
            m.people = 4;
        }
        assert!(matches!(owner.receive(PartnerMessage::Sums(lines)), Err(MeasureError::Inconsistent { group: 0, .. })));
        // More matched records than bundles of the group, or more matched people
        // than their elements: 3 one-element bundles match at most 3 people.
        let (mut owner, _, mut lines) = run_to_sums();
        lines[0].records = 10;
        if let Some(m) = &mut lines[0].matched {
            m.records = 4;
        }
        assert!(matches!(
            owner.receive(PartnerMessage::Sums(lines)),
            Err(MeasureError::Inconsistent { group: 0, reason: "more matched records than bundles" })
        ));
        let ten: Vec<Person> = (0..10).map(|i| Person { tokens: vec![token(i)], value: 1 }).collect();
        let (mut owner, mut partner) = pair(&ten, &exposures, 1, vec![3, 0, 0]);
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        owner.receive(partner.poll_outgoing().unwrap()).unwrap();
        partner.receive(owner.poll_outgoing().unwrap()).unwrap();
        let PartnerMessage::Sums(mut lines) = partner.poll_outgoing().unwrap() else { panic!() };
        if let Some(m) = &mut lines[0].matched {
            m.people = 4;
        }
        assert!(matches!(
            owner.receive(PartnerMessage::Sums(lines)),
            Err(MeasureError::Inconsistent { group: 0, reason: "more matched people than the bundles' elements" })
        ));
        // A missing group line.
        let (mut owner, _, mut lines) = run_to_sums();
        lines.pop();
        assert!(matches!(
            owner.receive(PartnerMessage::Sums(lines)),
            Err(MeasureError::Mismatch { what: "group lines", expected: 3, got: 2 })
        ));
    }
}

#[cfg(test)]
mod vectors {
    use super::elgamal::{DlogTable, Encryptor, SecretKey, Split, label_scalar};
    use super::message::{self, GroupSum, MASKED_LEN, MaskedSum, Matched, Message, Shares, VALUE_LEN};
    use curve25519_dalek::ristretto::CompressedRistretto;
    use zeroize::Zeroizing;

    /// docs/PROTOCOL.md §12.7, parsed from the document itself: the ElGamal key,
    /// an encryption with a fixed `r`, and the encoding of a `sums` message.
    #[test]
    fn protocol_doc_measurement_vectors_hold() {
        let x = SecretKey::from_label("idmatch test elgamal x");
        let r = label_scalar("idmatch test elgamal r");
        let y = x.public_key();
        let enc = Encryptor::new(y);
        let [low, high] = Split::WIDE.limbs(123_456);
        let c_low = enc.encrypt_with(low as i64, &r);
        let c_high = enc.encrypt_with(high as i64, &r);
        let mut sum = [0u8; VALUE_LEN];
        sum[..64].copy_from_slice(&c_low.to_bytes());
        sum[64..].copy_from_slice(&c_high.to_bytes());
        let sums = Message::Sums(vec![
            GroupSum { records: 1000, matched: Some(Matched { records: 150, people: 120, sum }) },
            GroupSum { records: 7, matched: None },
        ]);
        // Learner `partner`: each limb masked with its own `t`, the owner's shares
        // with noise η = −5 and 2 (every slot is noised), and what the partner recovers.
        let (t, t2) = (label_scalar("idmatch test elgamal t"), label_scalar("idmatch test elgamal t2"));
        let m_low = c_low.mask_with(&y, Zeroizing::new(t));
        let m_high = c_high.mask_with(&y, Zeroizing::new(t2));
        let point = |bytes: [u8; 32]| CompressedRistretto(bytes).decompress().unwrap();
        let d_low = x.share(&point(m_low.point_bytes()), -5);
        let d_high = x.share(&point(m_high.point_bytes()), 2);
        let table = DlogTable::new(256);
        assert_eq!(table.solve_shifted(&m_low.unmask(&d_low), 40, 65_535), Some(57_915));
        assert_eq!(table.solve_shifted(&m_high.unmask(&d_high), 40, 65_536), Some(3));
        let pair = |a: [u8; 32], b: [u8; 32]| {
            let mut out = [0u8; MASKED_LEN];
            out[..32].copy_from_slice(&a);
            out[32..].copy_from_slice(&b);
            out
        };
        let masked =
            Message::Masked(vec![MaskedSum { records: 1000, points: pair(m_low.point_bytes(), m_high.point_bytes()) }]);
        let shares = Message::Shares(Shares {
            noise_bounds: [40, 40],
            shares: vec![pair(d_low.compress().to_bytes(), d_high.compress().to_bytes())],
        });
        let computed = [
            ("H", hex::encode(super::elgamal::h().compress().to_bytes())),
            ("x", hex::encode(label_scalar("idmatch test elgamal x").to_bytes())),
            ("Y", hex::encode(y.to_bytes())),
            ("r", hex::encode(r.to_bytes())),
            ("Enc(57920; r)", hex::encode(c_low.to_bytes())),
            ("Enc(1; r)", hex::encode(c_high.to_bytes())),
            ("sums", hex::encode(message::encode(&sums).unwrap())),
            ("t", hex::encode(t.to_bytes())),
            ("t2", hex::encode(t2.to_bytes())),
            ("M_low", hex::encode(m_low.point_bytes())),
            ("M_high", hex::encode(m_high.point_bytes())),
            ("D_low", hex::encode(d_low.compress().to_bytes())),
            ("D_high", hex::encode(d_high.compress().to_bytes())),
            ("masked", hex::encode(message::encode(&masked).unwrap())),
            ("shares", hex::encode(message::encode(&shares).unwrap())),
        ];
        let doc = include_str!("../../docs/PROTOCOL.md");
        let block = doc.split("### 12.7").nth(1).and_then(|s| s.split("```").nth(1)).unwrap_or("");
        // `name = hex` lines; a line of bare hex continues the value above it.
        let mut values: Vec<(String, String)> = Vec::new();
        for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let is_hex = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit());
            match line.rsplit_once(" = ") {
                Some((name, value)) if is_hex(value.trim()) => {
                    let name = name.split(" = ").next().unwrap_or(name).trim();
                    values.push((name.to_owned(), value.trim().to_owned()));
                }
                _ if is_hex(line) => values.last_mut().unwrap().1.push_str(line),
                _ => {}
            }
        }
        for (name, hex_value) in &computed {
            let documented = values.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            assert_eq!(documented, Some(hex_value.as_str()), "{name}; computed: {computed:#?}");
        }
        assert_eq!(x.decrypt(&c_low, 0, 65_536, &super::elgamal::DlogTable::new(256)), Ok(57_920));
    }
}

#[cfg(test)]
mod redaction {
    use super::*;

    #[test]
    fn debug_output_shows_counts_never_tokens_or_keys() {
        let person = Person { tokens: vec![Token([0xab; 32])], value: 77 };
        let exposure = Exposure { tokens: vec![Token([0xcd; 32])], group: 1 };
        let shown = format!("{person:?} {exposure:?}");
        assert!(!shown.contains("ab") && !shown.contains("cd") && !shown.contains("77"), "{shown}");
        let owner = Owner::new(OwnerConfig::default(), std::slice::from_ref(&person)).unwrap();
        assert_eq!(format!("{owner:?}"), "Owner { state: AwaitingExposures, people: 1, .. }");
    }
}
