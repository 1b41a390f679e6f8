//! Tests only: the owner cheats against the partner's split (issue 20, attack 1),
//! by crafted values or by re-blinding with several keys.
//!
//! With learner `owner` the owner decrypts the partner's group sums. A cheating
//! owner gives target people crafted values (`2^i` for target `i`), so that a group's
//! exact sum spells out which targets the partner put in that group. Version 4
//! answers with two things, each played against here and checked independently of
//! the partner's code: the owner proves every value's limbs in the clip's range
//! (`people` carries the proofs, the partner verifies them before it sums), and the
//! partner adds its own noise to every count and limb before the owner decrypts.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::elgamal::{Ciphertext, Encryptor, LIMBS, PublicKey, random_scalar};
use super::message::{OwnerMessage, PartnerMessage, People, VALUE_LEN};
use super::proof::{self, PEOPLE_PER_PROOF};
use super::stats::Noise;
use super::*;
use crate::psi::group;

const NOISE: Noise = Noise { epsilon: 1.0, clip: 1_000 };

fn token(i: u32) -> Token {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&i.to_be_bytes());
    Token(t)
}

/// 400 outcome people; the first `targets` are the cheater's targets. Every person
/// is exposed once, in `control` (0) or `test` (1) at random (`seed`); the
/// targets' arms are returned as the truth to check a decoding against.
fn setting(targets: usize, seed: u64) -> (Vec<Person>, Vec<Exposure>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let people: Vec<Person> = (0..400).map(|i| Person { tokens: vec![token(i)], value: 0 }).collect();
    let mut arms: Vec<u8> = (0..400).map(|i| (i % 2) as u8).collect();
    arms.shuffle(&mut rng);
    let exposures = (0..400).map(|i| Exposure { tokens: vec![token(i)], group: arms[i as usize] }).collect();
    (people, exposures, arms[..targets].to_vec())
}

fn sides(people: &[Person], exposures: &[Exposure], seed: u64, proofs: bool) -> (Owner, Partner) {
    let owner = OwnerConfig {
        min_aggregate: 1,
        min_group_size: 1,
        learner: Learner::Owner,
        noise: Some(NOISE),
        seed: Some(seed),
        prove: proofs,
    };
    let partner = PartnerConfig {
        min_aggregate: 1,
        learner: Learner::Owner,
        noise: Some(NOISE),
        seed: Some(seed ^ 77),
        require_proofs: proofs,
    };
    let counts = vec![200, 200];
    (
        Owner::new(owner, people).unwrap(),
        Partner::new(partner, vec!["control".into(), "test".into()], counts, exposures).unwrap(),
    )
}

/// The honest owner's `people` message and the person behind each of its
/// positions (found by the owner's own blinding: the cheater knows its people).
fn people_message(owner: &mut Owner) -> People {
    match owner.poll_outgoing() {
        Some(OwnerMessage::People(p)) => p,
        other => panic!("{:?}", other.map(|m| m.name())),
    }
}

/// Re-encrypts the values of `sent` as the cheater wants them (`value_of(position)`,
/// limbs cut at the clip's split, whatever their size), under the owner's key, and
/// proves them with the real prover (which, like the crate it uses, does not check
/// its input: only the verifier can). `tweak` may then alter a ciphertext.
fn recrafted(
    sent: &People,
    value_of: impl Fn(usize) -> u64,
    tweak: impl Fn(usize, &mut [Ciphertext; LIMBS]),
) -> People {
    let key = PublicKey::from_bytes(&sent.public_key).unwrap();
    let encryptor = Encryptor::new(key);
    let split = NOISE.split();
    let bounds = proof::Bounds::for_noise(NOISE);
    let mut rng = StdRng::seed_from_u64(3);
    let mut values = Vec::new();
    let mut proofs = Vec::new();
    let n = sent.values.len();
    for chunk in 0..n.div_ceil(PEOPLE_PER_PROOF) {
        let positions = chunk * PEOPLE_PER_PROOF..((chunk + 1) * PEOPLE_PER_PROOF).min(n);
        let (mut limbs, mut randomness, mut points) = (Vec::new(), Vec::new(), Vec::new());
        for position in positions {
            let l = split.limbs(value_of(position));
            let r = [random_scalar(&mut rng), random_scalar(&mut rng)];
            let honest = [encryptor.encrypt_with(l[0] as i64, &r[0]), encryptor.encrypt_with(l[1] as i64, &r[1])];
            let mut c = honest;
            tweak(position, &mut c);
            let mut bytes = [0u8; VALUE_LEN];
            bytes[..64].copy_from_slice(&c[0].to_bytes());
            bytes[64..].copy_from_slice(&c[1].to_bytes());
            values.push(bytes);
            limbs.push(l);
            randomness.push(r);
            // The prover is given the honest ciphertexts; the message carries the tweaked.
            points.push(honest.map(|c| c.points()));
        }
        let context = proof::context(&key, n, chunk);
        proofs.push(proof::prove(&context, key.point(), bounds.limb_max(), &points, &limbs, &randomness).unwrap());
    }
    People { values, proofs, ..sent.clone() }
}

/// A measurement of [`setting`]`(targets, seed)` with proofs, the owner's `people`
/// message taken from it (for the cheater to rework), the targets' positions in it
/// and their arms.
struct Cheat {
    owner: Owner,
    partner: Partner,
    sent: People,
    at: Vec<usize>,
    truth: Vec<u8>,
}

fn cheat(targets: usize, seed: u64) -> Cheat {
    let (people, exposures, truth) = setting(targets, seed);
    let (mut owner, partner) = sides(&people, &exposures, seed, true);
    let sent = people_message(&mut owner);
    let at = positions(&owner, &sent, targets);
    Cheat { owner, partner, sent, at, truth }
}

/// The position of each of the first `targets` people in the owner's shuffled
/// message: its bundle's first element is the blinded token, unique to the person.
fn positions(owner: &Owner, sent: &People, targets: usize) -> Vec<usize> {
    let k = usize::from(sent.bundle);
    (0..targets as u32)
        .map(|i| {
            let element = owner.blind_for_tests(&token(i));
            (0..sent.values.len()).find(|&p| sent.elements[p * k..(p + 1) * k].contains(&element)).unwrap()
        })
        .collect()
}

/// The honest owner's proofs pass, for a set of any size, none included; a
/// `people` message stripped of its proofs is refused when they are required.
#[test]
fn honest_proofs_pass_and_missing_ones_are_refused() {
    let (people, exposures, _) = setting(0, 4);
    for n in [0, 1, 16, 17, 400] {
        let (mut owner, mut partner) = sides(&people[..n], &exposures, 4, true);
        run_in_memory(&mut owner, &mut partner).unwrap();
        assert!(owner.result().is_some(), "{n} people");
    }
    let (mut owner, mut partner) = sides(&people, &exposures, 5, true);
    let sent = people_message(&mut owner);
    let err = partner.receive(OwnerMessage::People(People { proofs: Vec::new(), ..sent })).unwrap_err();
    assert!(matches!(err, MeasureError::ProofsMissing), "{err}");
}

/// Values beyond the clip (`2^i` for target `i`, up to `2^19`): the proof of a
/// chunk holding one fails, and the partner refuses `people` before it blinds or
/// sums anything. Checked against the targets' positions found independently.
#[test]
fn values_beyond_the_clip_are_refused_by_the_range_proofs() {
    let Cheat { mut partner, sent, at, .. } = cheat(20, 1);
    let crafted = recrafted(&sent, |p| at.iter().position(|&q| q == p).map_or(0, |i| 1 << i), |_, _| {});
    let err = partner.receive(OwnerMessage::People(crafted)).unwrap_err();
    let MeasureError::Proof { chunk, .. } = err else { panic!("{err}") };
    // A chunk holding a target above 1000 (targets 10 and up: 2^10 = 1024; the
    // chunks are checked in parallel, so any of them may be the one named).
    let beyond: Vec<usize> = at[10..].iter().map(|p| p / PEOPLE_PER_PROOF).collect();
    assert!(beyond.contains(&chunk), "chunk {chunk}, beyond the clip in {beyond:?}");
    assert_eq!(partner.state(), PartnerState::Failed);
    assert!(partner.poll_outgoing().is_none());
    // The same message with the honest values passes: the refusal is the values'.
    let Cheat { mut partner, sent, .. } = cheat(20, 2);
    partner.receive(OwnerMessage::People(recrafted(&sent, |_| 1_000, |_, _| {}))).unwrap();
}

/// In range but with `C1` shifted (`C1 − 2^i·x·G`... as the owner may compute it:
/// any `C1` not `r·Y` for the `r` of `C2`): the owner's own decryption of a sum
/// would move by the shift (`2^i` per target), so the consistency proof must fail.
#[test]
fn a_first_component_off_its_randomness_is_refused() {
    let Cheat { mut partner, sent, at, .. } = cheat(4, 3);
    let shifted = recrafted(
        &sent,
        |_| 0,
        |p, c| {
            if p == at[2] {
                let (c1, c2) = c[1].points();
                let moved = c1 - RISTRETTO_BASEPOINT_POINT * Scalar::from(1u64 << 20);
                let mut bytes = [0u8; 64];
                bytes[..32].copy_from_slice(moved.compress().as_bytes());
                bytes[32..].copy_from_slice(c2.compress().as_bytes());
                *c = [c[0], Ciphertext::from_bytes(&bytes, 0).unwrap()];
            }
        },
    );
    let err = partner.receive(OwnerMessage::People(shifted)).unwrap_err();
    assert!(matches!(err, MeasureError::Proof { chunk, .. } if chunk == at[2] / PEOPLE_PER_PROOF), "{err}");
}

/// The best the cheater can do within the clip: target `i` valued `2^i` for
/// `i < 10` (all at most 1000, every proof verifies), everyone else 0, and decode
/// each target's arm from the bits of the `test` group's sum. The partner's noise
/// is in the sum before the owner decrypts it, so the decoding is a coin toss: over
/// twelve runs, checked against the arms the exposures really hold, it gets about
/// half right (without the partner's noise it would get every one).
#[test]
fn values_within_the_clip_decode_no_better_than_chance() {
    let (targets, runs) = (10, 12);
    let (mut right, mut total, mut exact) = (0, 0, 0);
    for seed in 0..runs {
        let Cheat { mut owner, mut partner, sent, at, truth } = cheat(targets, 100 + seed);
        let crafted = recrafted(&sent, |p| at.iter().position(|&q| q == p).map_or(0, |i| 1 << i), |_, _| {});
        partner.receive(OwnerMessage::People(crafted)).unwrap();
        run_in_memory(&mut owner, &mut partner).unwrap();
        let test = owner.result().unwrap().groups[1].sum.value().unwrap();
        let in_test: u64 = (0..targets).filter(|&i| truth[i] == 1).map(|i| 1 << i).sum();
        exact += usize::from(test == in_test);
        for (i, &arm) in truth.iter().enumerate() {
            let decoded = u8::from((test >> i) & 1 == 1);
            right += usize::from(decoded == arm);
            total += 1;
        }
    }
    assert!(exact <= 1, "{exact} of {runs} sums exact");
    assert!(right * 4 <= total * 3, "{right} of {total} arms decoded");
    assert!(right * 4 >= total, "{right} of {total}: a decoding worse than chance would also tell");
}

/// A value that does not decode (here `C1` the identity) is refused when `people`
/// arrives, also when its person matches nothing and proofs are not required: found
/// only when summing, the failure would tell the owner that the person matched
/// (the review's M2). And a side set up to prove without noise is refused.
#[test]
fn a_bad_ciphertext_is_refused_on_arrival_whether_or_not_its_person_matches() {
    let (people, exposures, _) = setting(0, 6);
    // Only the first 200 people are exposed: person 300 matches nothing.
    let (mut owner, mut partner) = sides(&people, &exposures[..200], 6, false);
    let mut sent = people_message(&mut owner);
    let k = usize::from(sent.bundle);
    let element = owner.blind_for_tests(&token(300));
    let at = (0..sent.values.len()).find(|&p| sent.elements[p * k..(p + 1) * k].contains(&element)).unwrap();
    sent.values[at][..32].fill(0);
    let err = partner.receive(OwnerMessage::People(sent)).unwrap_err();
    assert!(matches!(err, MeasureError::Ciphertext(_)), "{err}");

    let mut config = OwnerConfig { prove: true, ..OwnerConfig::default() };
    assert!(matches!(Owner::new(config, &people), Err(MeasureError::ProofsNeedNoise)));
    config.noise = Some(NOISE);
    assert!(Owner::new(config, &people).is_ok());
    let partner =
        PartnerConfig { min_aggregate: 1, learner: Learner::Owner, noise: None, seed: None, require_proofs: true };
    let refused = Partner::new(partner, vec!["all".into()], vec![1], &exposures[..1]);
    assert!(matches!(refused, Err(MeasureError::ProofsNeedNoise)));
}

/// Attack 1 by re-blinding: the owner re-blinds `copies` other bundles of the
/// target's group with fresh scalars `b_j` as `b_j·(a·P(t))`, and adds people
/// `b_j·P(t)` valued as the target, so the target's value counts `1 + copies` times
/// in its group's sum, past the noise scaled for one exposure. The cheater is given
/// an oracle for where the target's exposure bundle is (the partner's key): the
/// strongest cheater short of breaking decisional Diffie–Hellman. `trap_aware`
/// also lets it see which bundles are traps, which it cannot in reality. Returns
/// the partner's verdict on the reply, the owner's result if the run went on, and
/// the target's group.
fn reblinding_cheat(copies: Option<usize>, trap_aware: bool, seed: u64) -> (Result<(), MeasureError>, Owner, u8) {
    let (mut people, exposures, _) = setting(1, seed);
    people[0].value = 1;
    let owner_config = OwnerConfig {
        min_aggregate: 1,
        min_group_size: 1,
        learner: Learner::Owner,
        noise: None,
        seed: None,
        prove: false,
    };
    let partner_config =
        PartnerConfig { min_aggregate: 1, learner: Learner::Owner, noise: None, seed: None, require_proofs: false };
    let mut owner = Owner::new(owner_config, &people).unwrap();
    let mut partner =
        Partner::new(partner_config, vec!["control".into(), "test".into()], vec![200, 200], &exposures).unwrap();
    let mut sent = people_message(&mut owner);
    let Some(PartnerMessage::Exposures(x)) = partner.poll_outgoing() else { panic!("no exposures") };
    assert_eq!((sent.bundle, x.bundle), (1, 1));
    let target = partner.blind_for_tests(&token(0));
    let at = x.elements.iter().position(|e| *e == target).unwrap();
    let group = x.groups[at];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut victims: Vec<usize> = (0..x.groups.len())
        .filter(|&i| i != at && x.groups[i] == group)
        .filter(|&i| !trap_aware || !partner.is_trap_for_tests(&x.elements[i..i + 1]))
        .collect();
    victims.shuffle(&mut rng);
    victims.truncate(copies.unwrap_or(victims.len() * 3 / 4));
    let scalars: Vec<Scalar> = victims.iter().map(|_| random_scalar(&mut rng)).collect();
    // The cheater's extra people `b_j·P(t)`, each valued as the target.
    let mine = owner.blind_for_tests(&token(0));
    let value = sent.values[sent.elements.iter().position(|e| *e == mine).unwrap()];
    for b in &scalars {
        sent.elements.push(Element((group::hash_to_group(&token(0)) * b).compress().to_bytes()));
        sent.values.push(value);
    }
    partner.receive(OwnerMessage::People(sent)).unwrap();
    owner.receive(PartnerMessage::Exposures(x.clone())).unwrap();
    let Some(OwnerMessage::Reblinded(mut back)) = owner.poll_outgoing() else { panic!("no reply") };
    let a_target = group::decode(&target, 0).unwrap();
    for (&victim, b) in victims.iter().zip(&scalars) {
        let honest = owner.reblind_for_tests(&x.elements[victim..victim + 1])[0];
        let place = back.elements.iter().position(|e| *e == honest).unwrap();
        back.elements[place] = Element((a_target * b).compress().to_bytes());
    }
    let verdict = partner.receive(OwnerMessage::Reblinded(back));
    if verdict.is_ok() {
        run_in_memory(&mut owner, &mut partner).unwrap();
    }
    (verdict, owner, group)
}

/// The trap bundles catch an owner that re-blinds with more than one key: without
/// knowing which bundles are traps it cannot rewrite enough bundles to gain
/// anything and miss all 256 traps of the group (here it rewrites three quarters of
/// the group's bundles: it passes with probability `(1/4)^256`). Only the trap-aware
/// cheater (an oracle it does not have) gets through, and then its target's value
/// counts `1 + copies` times, checked against the truth computed apart: what the
/// traps are there to stop.
#[test]
fn an_owner_reblinding_with_several_keys_is_caught_by_the_traps() {
    for seed in 0..3 {
        let (verdict, owner, _) = reblinding_cheat(None, false, 40 + seed);
        assert!(matches!(verdict, Err(MeasureError::TrapSprung(_))), "{verdict:?}");
        assert!(owner.result().is_none());
    }
    let copies = 5;
    let (verdict, owner, group) = reblinding_cheat(Some(copies), true, 50);
    verdict.unwrap();
    let result = owner.result().unwrap();
    assert_eq!(result.groups[usize::from(group)].sum.value(), Some(1 + copies as u64));
    assert_eq!(result.groups[1 - usize::from(group)].sum.value(), Some(0));
}
