//! Tests that play a receiver (a partner with valid credentials) which deviates from
//! the protocol against an honest sender (the owner), and check what it could learn
//! by a computation independent of the sender's code: issue 19, item 4, and
//! `docs/PRIVACY.md`, "Under `oprf`". Also the opposite direction: a sender whose
//! opening is not what it committed to.

use sha2::{Digest, Sha256};

use super::kernel::{self, Row};
use super::message::{MAX_CHUNK_BYTES, OPRF_VERSION, ReceiverMessage, ReceiverSetup, SenderMessage};
use super::okvs::Layout;
use super::ot::{OtSender, Seed};
use super::receiver::{self, fixed};
use super::{OprfConfig, OprfError, OprfReceiver, OprfSender, Params};
use crate::normalize::Kind;
use crate::psi::{PreparedSet, Reveal};
use crate::token::Token;

fn token(v: u32) -> Token {
    Token(Sha256::digest(v.to_le_bytes()).into())
}

fn set(range: std::ops::Range<u32>) -> PreparedSet {
    PreparedSet::new(range.map(|v| (token(v), v, Kind::Email)).collect(), 0)
}

/// A receiver that has done the base OTs (it holds both seeds of every column)
/// after announcing `announced` tokens, with the sender's setup in hand.
struct Cheater {
    params: Params,
    seeds: Vec<[Seed; 2]>,
    hash_key: [u8; 16],
}

impl Cheater {
    fn start(sender: &mut OprfSender<'_>, announced: u64) -> Cheater {
        let ot = OtSender::new().unwrap();
        sender
            .receive(ReceiverMessage::Setup(ReceiverSetup {
                version: OPRF_VERSION,
                receiver_set_size: announced,
                report_back: false,
                max_chunk_bytes: MAX_CHUNK_BYTES,
                ot_point: ot.point().to_vec(),
            }))
            .unwrap();
        let Some(SenderMessage::Setup(setup)) = sender.poll_outgoing() else { panic!("no sender setup") };
        let params = Params::derive(setup.sender_set_size, announced).unwrap();
        let seeds = ot.seeds(&setup.ot_points, params.width as usize).unwrap();
        Cheater { params, seeds, hash_key: fixed::<16>("hash_key", &setup.hash_key).unwrap() }
    }

    /// The rows of the columns `PRG(k_i^0)`: what this side knows of `Q`.
    fn own_rows(&self) -> Vec<Row> {
        let blocks = self.params.height as usize / 64;
        let columns: Vec<Vec<u64>> = self.seeds.iter().map(|s| kernel::prg_words(&s[0], blocks)).collect();
        kernel::columns_to_rows(&columns)
    }

    /// Sends seeds and `correction` (in allowed chunks); returns the opening.
    fn send_correction(
        &self,
        sender: &mut OprfSender<'_>,
        table_seed: [u8; 16],
        correction: &[u8],
    ) -> Result<[u8; 16], OprfError> {
        sender.receive(ReceiverMessage::Seeds([table_seed, [7; 16]].concat()))?;
        for chunk in correction.chunks(MAX_CHUNK_BYTES as usize) {
            sender.receive(ReceiverMessage::Correction(chunk.to_vec()))?;
        }
        let Some(SenderMessage::Opening(seed)) = sender.poll_outgoing() else { panic!("no opening") };
        Ok(fixed::<16>("opening", &seed).unwrap())
    }

    /// The check an honest receiver with rows `rows` and values `values` sends.
    fn check(&self, opening: &[u8; 16], rows: &[Row], values: &[u128]) -> Vec<u8> {
        receiver::check(rows, values, &kernel::challenge(opening, &[7; 16], self.params.height as usize))
    }
}

/// Every output the sender sent.
fn drain_outputs(sender: &mut OprfSender<'_>, output_len: usize) -> Vec<Vec<u8>> {
    let mut outputs = Vec::new();
    while let Some(message) = sender.poll_outgoing() {
        if let SenderMessage::Outputs(chunk) = message {
            outputs.extend(chunk.chunks(output_len).map(<[u8]>::to_vec));
        }
    }
    outputs
}

/// The zero correction of issue 19 (and a random one): without code words the
/// check fails and the sender sends no output at all, so there is nothing to
/// evaluate offline. Under the earlier semi-honest engine the zero correction
/// let the receiver recompute every owner output.
#[test]
fn a_zero_or_random_correction_fails_the_check_and_gets_no_output() {
    let owner = set(0..2000);
    for random in [false, true] {
        let mut sender = OprfSender::new(OprfConfig::new(Reveal::Partner), &owner).unwrap();
        let cheater = Cheater::start(&mut sender, 1000);
        let len = cheater.params.matrix_bytes() as usize;
        let correction = if random { kernel::to_bytes(&kernel::prg_words(&[42; 16], len / 8)) } else { vec![0; len] };
        let opening = cheater.send_correction(&mut sender, [1; 16], &correction).unwrap();
        // The cheater's best claim: its own rows (it knows PRG(k^0) and PRG(k^1) of
        // every column) and any table, here all zeros.
        let rows = cheater.own_rows();
        let check = cheater.check(&opening, &rows, &vec![0; rows.len()]);
        assert_eq!(sender.receive(ReceiverMessage::Check(check)), Err(OprfError::CheckFailed), "random: {random}");
        assert!(drain_outputs(&mut sender, cheater.params.output_len as usize).is_empty());
        assert!(sender.outcome().is_none());
    }
}

/// A receiver that announces 100 tokens but wants to test 3,000 candidates (the
/// owner's 2,000 among them): it cannot encode more keys than its table holds;
/// it encodes as many as fit and follows the protocol, so the check passes. What
/// it then learns, computed two ways independent of the sender's code (its own
/// predictions matched against the outputs, and the algebraic condition
/// `Decode(P, x) = v(x)` on its table), is exactly the owner's tokens among those
/// it encoded: at most `m + 64`, never the owner's whole set.
#[test]
fn a_receiver_learns_at_most_what_its_announced_table_encodes() {
    let owner = set(0..2000);
    let candidates: Vec<Token> = (0..3000).map(token).collect();
    let announced = 100;
    let mut sender = OprfSender::new(OprfConfig::new(Reveal::Partner), &owner).unwrap();
    let cheater = Cheater::start(&mut sender, announced);
    let params = cheater.params;
    let capacity = params.table_len();
    assert!(capacity < 400, "{capacity}");
    // Five times the table's capacity cannot be encoded at all.
    assert!(matches!(
        receiver::table(params, &cheater.hash_key, &candidates[..5 * capacity]),
        Err(OprfError::TableEncoding { .. })
    ));
    // As many as fit: from the capacity down.
    let (encoded, (table_seed, _, values)) = (1..=capacity)
        .rev()
        .find_map(|k| receiver::table(params, &cheater.hash_key, &candidates[..k]).ok().map(|t| (k, t)))
        .unwrap();
    assert!(encoded > announced as usize, "more than announced fits ({encoded}), but no more than the table");
    let (rows, correction) = receiver::matrix(params, &cheater.seeds, &values);
    let opening = cheater.send_correction(&mut sender, table_seed, &kernel::to_bytes(&correction.concat())).unwrap();
    sender.receive(ReceiverMessage::Check(cheater.check(&opening, &rows, &values))).unwrap();
    let output_len = params.output_len as usize;
    let outputs: std::collections::HashSet<Vec<u8>> = drain_outputs(&mut sender, output_len).into_iter().collect();
    assert_eq!(outputs.len(), 2000);

    // Way 1: every candidate's prediction from what the cheater holds.
    let layout = Layout::new(params.sparse_len, table_seed).unwrap();
    let cells = &rows[..capacity];
    let learned: Vec<u32> = (0..3000u32)
        .filter(|&v| {
            let t = token(v);
            let hashed = kernel::hash(&cheater.hash_key, &t.0);
            let mut out = vec![0u8; output_len];
            kernel::output(&t.0, &layout.row(&hashed.key).decode(params.sparse_len as usize, cells), &mut out);
            outputs.contains(&out)
        })
        .collect();
    // Way 2: the tokens the table programs, by its algebra alone.
    let table = &values[..capacity];
    let programmed: Vec<u32> = (0..3000u32)
        .filter(|&v| {
            let hashed = kernel::hash(&cheater.hash_key, &token(v).0);
            let decoded: u128 = layout.row(&hashed.key).decode(params.sparse_len as usize, table);
            decoded & ((1 << 76) - 1) == hashed.value
        })
        .collect();
    let expected: Vec<u32> = (0..encoded as u32).collect();
    assert_eq!(programmed, expected, "the table programs exactly the encoded candidates");
    assert_eq!(learned, expected, "the owner's tokens among them (all candidates below 2000 are the owner's)");
    assert!(learned.len() <= capacity && learned.len() < 2000);
}

/// A correction sized for a larger set than announced is refused by its size.
#[test]
fn a_correction_for_more_items_than_announced_is_refused_or_useless() {
    let owner = set(0..2000);
    let mut sender = OprfSender::new(OprfConfig::new(Reveal::Partner), &owner).unwrap();
    let cheater = Cheater::start(&mut sender, 100);
    let large = Params::derive(2000, 2000).unwrap();
    let too_long = vec![0u8; large.matrix_bytes() as usize];
    assert!(matches!(
        cheater.send_correction(&mut sender, [1; 16], &too_long),
        Err(OprfError::TooMuchData { what: "correction", .. })
    ));
}

/// A sender whose opening is not the seed it committed to is refused before the
/// receiver reveals any combination of its table.
#[test]
fn a_sender_cannot_open_another_check_seed() {
    let (owner, partner) = (set(0..300), set(100..400));
    let mut receiver = OprfReceiver::new(OprfConfig::new(Reveal::Partner), &partner).unwrap();
    let mut sender = OprfSender::new(OprfConfig::new(Reveal::Partner), &owner).unwrap();
    sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
    receiver.receive(sender.poll_outgoing().unwrap()).unwrap();
    while let Some(m) = receiver.poll_outgoing() {
        sender.receive(m).unwrap();
    }
    let Some(SenderMessage::Opening(mut seed)) = sender.poll_outgoing() else { panic!("no opening") };
    seed[0] ^= 1;
    assert_eq!(receiver.receive(SenderMessage::Opening(seed)), Err(OprfError::CommitmentMismatch));
    assert!(receiver.poll_outgoing().is_none(), "no check was sent");
}
