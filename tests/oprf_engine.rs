//! The OPRF engine (`psi::oprf`) against a plain set intersection, in every reveal
//! mode it offers, and its refusal of malformed or out-of-order messages.

use std::collections::BTreeSet;

use idmatch::normalize::Kind;
use idmatch::psi::oprf::{
    self, MAX_CHUNK_BYTES, Observed, OprfConfig, OprfError, OprfMatchError, OprfReceiver, OprfSender, Params, Party,
    ReceiverMessage, SenderMessage, match_local, receiver_party,
};
use idmatch::psi::{PreparedSet, Reveal};
use idmatch::token::Token;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// A token for identifier `value`: uniformly random-looking, like an HMAC output.
fn token(value: u32) -> Token {
    Token(Sha256::digest(value.to_le_bytes()).into())
}

/// A set whose record `r` holds the identifiers `records[r]` (as emails).
fn set(records: &[Vec<u32>]) -> PreparedSet {
    let entries = records
        .iter()
        .enumerate()
        .flat_map(|(r, values)| values.iter().map(move |&v| (token(v), r as u32, Kind::Email)))
        .collect();
    PreparedSet::new(entries, 0)
}

/// A set of distinct single-identifier records `values`.
fn flat(values: impl IntoIterator<Item = u32>) -> PreparedSet {
    set(&values.into_iter().map(|v| vec![v]).collect::<Vec<_>>())
}

/// Records of `mine` holding any identifier of `theirs`, in record order.
fn expected(mine: &[Vec<u32>], theirs: &[Vec<u32>]) -> Vec<u32> {
    let other: BTreeSet<u32> = theirs.iter().flatten().copied().collect();
    (0..mine.len() as u32).filter(|&r| mine[r as usize].iter().any(|v| other.contains(v))).collect()
}

fn records_of(set: &PreparedSet, matched: &[bool]) -> Vec<u32> {
    set.matched_records(matched).into_iter().map(|(r, _)| r).collect()
}

const OFFERED: [Reveal; 3] = [Reveal::Partner, Reveal::Owner, Reveal::Both];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Records repeat identifiers (within and across records), sets may be empty.
    #[test]
    fn engine_equals_plain_set_intersection(
        owner in prop::collection::vec(prop::collection::vec(0u32..80, 0..3), 0..40),
        partner in prop::collection::vec(prop::collection::vec(0u32..80, 0..3), 0..40),
        mode in 0usize..3,
    ) {
        let reveal = OFFERED[mode];
        let (o, p) = (set(&owner), set(&partner));
        let got = match_local(&o, &p, reveal).unwrap();
        let distinct = |rs: &[Vec<u32>]| rs.iter().flatten().copied().collect::<BTreeSet<u32>>();
        prop_assert_eq!(got.intersection, distinct(&owner).intersection(&distinct(&partner)).count() as u64);
        let partner_gets = matches!(reveal, Reveal::Partner | Reveal::Both);
        let owner_gets = matches!(reveal, Reveal::Owner | Reveal::Both);
        prop_assert_eq!(got.partner_matched.is_some(), partner_gets);
        prop_assert_eq!(got.owner_matched.is_some(), owner_gets);
        if let Some(m) = &got.partner_matched {
            prop_assert_eq!(records_of(&p, m), expected(&partner, &owner));
        }
        if let Some(m) = &got.owner_matched {
            prop_assert_eq!(records_of(&o, m), expected(&owner, &partner));
        }
    }
}

#[test]
fn roles_per_reveal_mode_and_count_is_refused() {
    assert_eq!(receiver_party(Reveal::Partner), Ok(Party::Partner));
    assert_eq!(receiver_party(Reveal::Owner), Ok(Party::Owner));
    assert_eq!(receiver_party(Reveal::Both), Ok(Party::Partner));
    assert_eq!(receiver_party(Reveal::Count), Err(OprfError::RevealNotOffered(Reveal::Count)));
    let s = flat(0..3);
    assert_eq!(
        OprfReceiver::new(OprfConfig::new(Reveal::Count), &s).err(),
        Some(OprfError::RevealNotOffered(Reveal::Count))
    );
    assert_eq!(
        OprfSender::new(OprfConfig::new(Reveal::Count), &s).err(),
        Some(OprfError::RevealNotOffered(Reveal::Count))
    );
    assert!(matches!(
        match_local(&s, &s, Reveal::Count),
        Err(OprfMatchError::Receiver(OprfError::RevealNotOffered(_)))
    ));
    let mut bad = OprfConfig::new(Reveal::Partner);
    bad.max_chunk_bytes = 10;
    assert!(matches!(OprfReceiver::new(bad, &s).err(), Some(OprfError::BadChunkLimit { value: 10, .. })));
}

#[test]
fn empty_one_element_and_full_overlap() {
    for reveal in OFFERED {
        let empty = flat([]);
        let one = flat([7]);
        let other = flat([8]);
        let got = match_local(&empty, &empty, reveal).unwrap();
        assert_eq!(got.intersection, 0);
        assert_eq!(match_local(&one, &one, reveal).unwrap().intersection, 1);
        assert_eq!(match_local(&one, &other, reveal).unwrap().intersection, 0);
        assert_eq!(match_local(&one, &empty, reveal).unwrap().intersection, 0);
        assert_eq!(match_local(&empty, &one, reveal).unwrap().intersection, 0);
        let big = flat(0..3000);
        let got = match_local(&big, &flat(1500..4500), reveal).unwrap();
        assert_eq!(got.intersection, 1500, "{reveal}");
        let full = match_local(&big, &big, reveal).unwrap();
        assert_eq!(full.intersection, 3000);
        for m in [full.owner_matched, full.partner_matched].into_iter().flatten() {
            assert!(m.iter().all(|&b| b));
        }
    }
}

/// 10 × 100,000, each set on either side in every mode (so the large set is the
/// receiver's in some runs, the sender's in others): exact matches, and the traffic
/// follows the parameters.
#[test]
fn unbalanced_sets() {
    unbalanced(100_000);
}

/// The same at 10 × 1,000,000 (about a minute in the dev profile): `cargo test --
/// --ignored`, the slow suite the README names.
#[test]
#[ignore = "slow (about a minute): run with cargo test -- --ignored"]
fn unbalanced_sets_at_a_million() {
    unbalanced(1_000_000);
}

/// `n` identifiers against 10, seven of them in common (among them the first and
/// the last of the large set).
fn unbalanced(n: u32) {
    let small = flat([3, n / 10 - 1, n / 20 * 3, n - 1, n + n / 4, 2 * n, 2 * n + 1, 5, 6, 7]);
    let large = flat(0..n);
    for reveal in OFFERED {
        for (owner, partner) in [(&large, &small), (&small, &large)] {
            let got = match_local(owner, partner, reveal).unwrap();
            assert_eq!(got.intersection, 7, "{reveal}");
            let (receiving, sending) = if reveal == Reveal::Owner { (owner, partner) } else { (partner, owner) };
            let matched = |m: &Option<Vec<bool>>| m.as_ref().map(|m| m.iter().filter(|&&b| b).count());
            assert_eq!(matched(&got.partner_matched), (reveal != Reveal::Owner).then_some(7), "{reveal}");
            assert_eq!(matched(&got.owner_matched), (reveal != Reveal::Partner).then_some(7), "{reveal}");
            let params = Params::derive(sending.len() as u64, receiving.len() as u64).unwrap();
            let setup_r = 4 + 8 + 1 + 4 + 32;
            let report = if reveal == Reveal::Both { sending.len().div_ceil(8) as u64 } else { 0 };
            let (seeds, check) = (32, 5120);
            assert_eq!(got.traffic.receiver_to_sender_bytes, setup_r + seeds + params.matrix_bytes() + check + report);
            let setup_s = 4 + 8 + 5 * 4 + 16 + 32 * u64::from(params.width) + 32;
            let (opening, outputs) = (16, sending.len() as u64 * u64::from(params.output_len));
            assert_eq!(got.traffic.sender_to_receiver_bytes, setup_s + opening + outputs);
        }
    }
}

/// Runs a receiver and a sender until `stop` says so; returns them.
fn pair<'a>(r: &'a PreparedSet, s: &'a PreparedSet, reveal: Reveal) -> (OprfReceiver<'a>, OprfSender<'a>) {
    (OprfReceiver::new(OprfConfig::new(reveal), r).unwrap(), OprfSender::new(OprfConfig::new(reveal), s).unwrap())
}

fn setups(receiver: &mut OprfReceiver<'_>, sender: &mut OprfSender<'_>) -> (oprf::ReceiverSetup, oprf::SenderSetup) {
    let Some(ReceiverMessage::Setup(rs)) = receiver.poll_outgoing() else { panic!("receiver setup first") };
    sender.receive(ReceiverMessage::Setup(rs.clone())).unwrap();
    let Some(SenderMessage::Setup(ss)) = sender.poll_outgoing() else { panic!("sender setup next") };
    (rs, ss)
}

#[test]
fn out_of_order_messages_are_refused_in_one_place() {
    let (a, b) = (flat(0..50), flat(25..75));
    let (mut receiver, mut sender) = pair(&a, &b, Reveal::Partner);
    assert_eq!(
        sender.receive(ReceiverMessage::Correction(vec![0; 32])),
        Err(OprfError::UnexpectedMessage { state: "awaiting receiver setup", message: "correction" })
    );
    assert_eq!(
        receiver.receive(SenderMessage::Outputs(vec![0; 10])),
        Err(OprfError::UnexpectedMessage { state: "awaiting sender setup", message: "outputs" })
    );
    let (rs, ss) = setups(&mut receiver, &mut sender);
    assert_eq!(
        sender.receive(ReceiverMessage::Setup(rs)),
        Err(OprfError::UnexpectedMessage { state: "awaiting seeds", message: "receiver_setup" })
    );
    assert_eq!(
        sender.receive(ReceiverMessage::Correction(vec![0; 32])),
        Err(OprfError::UnexpectedMessage { state: "awaiting seeds", message: "correction" })
    );
    receiver.receive(SenderMessage::Setup(ss.clone())).unwrap();
    assert_eq!(
        receiver.receive(SenderMessage::Setup(ss)),
        Err(OprfError::UnexpectedMessage { state: "sending", message: "sender_setup" })
    );
    // An opening or outputs before the whole correction matrix has left are out of
    // order, even once the receiver has computed its last chunk (owner mode: the
    // owner is the receiver, and a sender cannot have used a chunk it has not
    // received); so are outputs before the check has left.
    let mut config = OprfConfig::new(Reveal::Owner);
    config.send_chunk_bytes = oprf::MIN_CHUNK_BYTES;
    let mut receiver = OprfReceiver::new(config, &a).unwrap();
    let mut sender = OprfSender::new(OprfConfig::new(Reveal::Owner), &b).unwrap();
    let (_, ss) = setups(&mut receiver, &mut sender);
    receiver.receive(SenderMessage::Setup(ss)).unwrap();
    let seeds = receiver.poll_outgoing();
    assert!(matches!(seeds, Some(ReceiverMessage::Seeds(_))), "the seeds come first");
    sender.receive(seeds.unwrap()).unwrap();
    let first = receiver.poll_outgoing().unwrap();
    assert!(matches!(first, ReceiverMessage::Correction(_)), "the first chunk is out");
    assert_eq!(
        receiver.receive(SenderMessage::Outputs(vec![0; 10])),
        Err(OprfError::UnexpectedMessage { state: "sending", message: "outputs" })
    );
    assert_eq!(
        receiver.receive(SenderMessage::Opening(vec![0; 16])),
        Err(OprfError::UnexpectedMessage { state: "sending", message: "opening" })
    );
    sender.receive(first).unwrap();
    while let Some(m) = receiver.poll_outgoing() {
        sender.receive(m).unwrap();
    }
    // Matches before the outputs are out of order.
    assert_eq!(
        sender.receive(ReceiverMessage::Matches(vec![0])),
        Err(OprfError::UnexpectedMessage { state: "awaiting the check", message: "matches" })
    );
    let Some(opening) = sender.poll_outgoing() else { panic!("the opening") };
    receiver.receive(opening).unwrap();
    assert_eq!(
        receiver.receive(SenderMessage::Outputs(vec![0; 10])),
        Err(OprfError::UnexpectedMessage { state: "sending", message: "outputs" })
    );
    // Matches are refused outside `both` mode, even at the end.
    let (mut receiver, mut sender) = pair(&a, &b, Reveal::Partner);
    let mut log = Vec::new();
    oprf::run_in_memory(&mut receiver, &mut sender, |m| {
        if let Observed::FromReceiver(m) = m {
            log.push(m.name());
        }
    })
    .unwrap();
    assert_eq!(log.first(), Some(&"receiver_setup"));
    assert_eq!(log.last(), Some(&"finished"));
    assert!(!log.contains(&"matches"));
    assert_eq!(
        sender.receive(ReceiverMessage::Matches(vec![0])),
        Err(OprfError::UnexpectedMessage { state: "done", message: "matches" })
    );
}

#[test]
fn malformed_setups_are_refused_with_the_precise_error() {
    let (a, b) = (flat(0..50), flat(25..75));
    let sender_error = |edit: &dyn Fn(&mut oprf::ReceiverSetup), config: OprfConfig| {
        let (mut receiver, _) = pair(&a, &b, Reveal::Partner);
        let mut sender = OprfSender::new(config, &b).unwrap();
        let Some(ReceiverMessage::Setup(mut rs)) = receiver.poll_outgoing() else { panic!() };
        edit(&mut rs);
        sender.receive(ReceiverMessage::Setup(rs)).unwrap_err()
    };
    let partner = OprfConfig::new(Reveal::Partner);
    assert_eq!(sender_error(&|s| s.version = 1, partner.clone()), OprfError::UnsupportedVersion { ours: 2, theirs: 1 });
    assert_eq!(
        sender_error(&|s| s.report_back = true, partner.clone()),
        OprfError::ReportBackMismatch { ours: false, theirs: true }
    );
    assert_eq!(
        sender_error(&|_| {}, OprfConfig { min_peer_set: 1000, ..partner.clone() }),
        OprfError::SetSizeOutOfRange { what: "receiver", size: 50, min: 1000, max: 1 << 30 }
    );
    assert!(matches!(
        sender_error(&|s| s.receiver_set_size = u64::MAX, partner.clone()),
        OprfError::SetSizeOutOfRange { .. }
    ));
    assert!(matches!(
        sender_error(&|s| s.max_chunk_bytes = 0, partner.clone()),
        OprfError::BadChunkLimit { value: 0, .. }
    ));
    assert_eq!(
        sender_error(&|s| s.ot_point.truncate(31), partner.clone()),
        OprfError::BadLength { what: "receiver setup ot_point", len: 31, expected: 32 }
    );
    assert_eq!(
        sender_error(&|s| s.ot_point = vec![0; 32], partner.clone()),
        OprfError::BadPoint { what: "receiver setup ot_point", index: 0 }
    );

    let receiver_error = |edit: &dyn Fn(&mut oprf::SenderSetup)| {
        let (mut receiver, mut sender) = pair(&a, &b, Reveal::Partner);
        let (_, mut ss) = setups(&mut receiver, &mut sender);
        edit(&mut ss);
        receiver.receive(SenderMessage::Setup(ss)).unwrap_err()
    };
    let p = Params::derive(50, 50).unwrap();
    assert_eq!(
        receiver_error(&|s| s.width += 1),
        OprfError::ParameterMismatch { what: "width", ours: u64::from(p.width), theirs: u64::from(p.width) + 1 }
    );
    assert_eq!(
        receiver_error(&|s| s.height = 30),
        OprfError::ParameterMismatch { what: "height", ours: u64::from(p.height), theirs: 30 }
    );
    assert_eq!(
        receiver_error(&|s| s.sparse_len += 1),
        OprfError::ParameterMismatch {
            what: "sparse_len",
            ours: u64::from(p.sparse_len),
            theirs: u64::from(p.sparse_len) + 1
        }
    );
    assert!(matches!(receiver_error(&|s| s.output_len = 3), OprfError::ParameterMismatch { what: "output_len", .. }));
    // A different announced size derives different parameters.
    assert!(matches!(receiver_error(&|s| s.sender_set_size = 1 << 20), OprfError::ParameterMismatch { .. }));
    assert_eq!(
        receiver_error(&|s| s.hash_key.push(0)),
        OprfError::BadLength { what: "sender setup hash_key", len: 17, expected: 16 }
    );
    assert_eq!(
        receiver_error(&|s| s.commitment.pop().map_or((), drop)),
        OprfError::BadLength { what: "sender setup commitment", len: 31, expected: 32 }
    );
    assert_eq!(
        receiver_error(&|s| s.ot_points.truncate(32 * 5)),
        OprfError::BadLength { what: "sender setup ot_points", len: 160, expected: 32 * p.width as usize }
    );
    assert_eq!(
        receiver_error(&|s| s.ot_points[32 * 3..32 * 4].fill(0xff)),
        OprfError::BadPoint { what: "sender setup ot_points", index: 3 }
    );
    assert_eq!(receiver_error(&|s| s.version = 0), OprfError::UnsupportedVersion { ours: 2, theirs: 0 });
    assert!(matches!(receiver_error(&|s| s.max_chunk_bytes = MAX_CHUNK_BYTES + 1), OprfError::BadChunkLimit { .. }));
}

#[test]
fn malformed_chunks_are_refused_with_the_precise_error() {
    let (a, b) = (flat(0..50), flat(25..75));
    let p = Params::derive(50, 50).unwrap();
    let total = p.matrix_bytes();
    let after_setups = || {
        let (mut receiver, mut sender) = pair(&a, &b, Reveal::Both);
        let (_, ss) = setups(&mut receiver, &mut sender);
        receiver.receive(SenderMessage::Setup(ss)).unwrap();
        sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
        (receiver, sender)
    };
    let (_, mut sender) = after_setups();
    assert_eq!(
        sender.receive(ReceiverMessage::Seeds(vec![0; 32])),
        Err(OprfError::UnexpectedMessage { state: "receiving the correction matrix", message: "seeds" })
    );
    let (mut receiver, mut sender) = pair(&a, &b, Reveal::Both);
    setups(&mut receiver, &mut sender);
    assert_eq!(
        sender.receive(ReceiverMessage::Seeds(vec![0; 31])),
        Err(OprfError::BadLength { what: "seeds", len: 31, expected: 32 })
    );
    let (_, mut sender) = after_setups();
    assert_eq!(
        sender.receive(ReceiverMessage::Correction(vec![])),
        Err(OprfError::BadChunk { what: "correction", len: 0, max: MAX_CHUNK_BYTES as usize })
    );
    let (_, mut sender) = after_setups();
    assert_eq!(
        sender.receive(ReceiverMessage::Correction(vec![0; total as usize + 1])),
        Err(OprfError::TooMuchData { what: "correction", expected: total, received: total + 1 })
    );
    let (_, mut sender) = after_setups();
    assert_eq!(
        sender.receive(ReceiverMessage::Correction(vec![0; MAX_CHUNK_BYTES as usize + 1])),
        Err(OprfError::BadChunk {
            what: "correction",
            len: MAX_CHUNK_BYTES as usize + 1,
            max: MAX_CHUNK_BYTES as usize
        })
    );
    // Outputs that are not whole outputs, or too many of them.
    let (mut receiver, mut sender) = after_setups();
    exchange_until_outputs(&mut receiver, &mut sender);
    let len = p.output_len as usize;
    assert_eq!(
        receiver.receive(SenderMessage::Outputs(vec![0; len + 1])),
        Err(OprfError::NotMultiple { what: "outputs", len: len + 1, unit: len })
    );
    assert_eq!(
        receiver.receive(SenderMessage::Outputs(vec![0; 51 * len])),
        Err(OprfError::TooMuchData { what: "outputs", expected: 50 * len as u64, received: 51 * len as u64 })
    );
    // A report-back bitmap with a padding bit set (50 outputs: 7 bytes, 6 padding bits).
    let Some(SenderMessage::Outputs(out)) = sender.poll_outgoing() else { panic!() };
    receiver.receive(SenderMessage::Outputs(out)).unwrap();
    assert!(matches!(receiver.poll_outgoing(), Some(ReceiverMessage::Matches(_))));
    assert_eq!(
        sender.receive(ReceiverMessage::Matches(vec![0, 0, 0, 0, 0, 0, 0x80])),
        Err(OprfError::NonZeroPadding { what: "matches" })
    );
    let (mut receiver, mut sender) = after_setups();
    exchange_until_outputs(&mut receiver, &mut sender);
    let Some(SenderMessage::Outputs(out)) = sender.poll_outgoing() else { panic!() };
    receiver.receive(SenderMessage::Outputs(out)).unwrap();
    assert_eq!(
        sender.receive(ReceiverMessage::Matches(vec![0; 8])),
        Err(OprfError::TooMuchData { what: "matches", expected: 7, received: 8 })
    );
    assert_eq!(
        sender.receive(ReceiverMessage::Finished),
        Err(OprfError::UnexpectedMessage { state: "awaiting matches", message: "finished" })
    );
}

/// Correction, opening and check: afterwards the sender's outputs are ready.
fn exchange_until_outputs(receiver: &mut OprfReceiver<'_>, sender: &mut OprfSender<'_>) {
    while let Some(m) = receiver.poll_outgoing() {
        sender.receive(m).unwrap();
    }
    receiver.receive(sender.poll_outgoing().unwrap()).unwrap();
    sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
}

#[test]
fn chunks_respect_the_limits_and_secrets_stay_out_of_debug() {
    let (a, b) = (flat(0..20_000), flat(10_000..30_000));
    let mut config = OprfConfig::new(Reveal::Both);
    config.max_chunk_bytes = 64 * 1024;
    config.send_chunk_bytes = 64 * 1024;
    let mut receiver = OprfReceiver::new(config.clone(), &a).unwrap();
    let mut sender = OprfSender::new(config, &b).unwrap();
    let mut largest = 0;
    let mut debug = String::new();
    oprf::run_in_memory(&mut receiver, &mut sender, |m| {
        let len = match m {
            Observed::FromReceiver(m) => m.payload_len(),
            Observed::FromSender(m) => m.payload_len(),
        };
        largest = largest.max(len);
        if debug.len() < 10_000 {
            debug.push_str(&format!("{m:?}\n"));
        }
    })
    .unwrap();
    assert!(largest <= 64 * 1024, "{largest}");
    assert!(debug.contains("hash_key: <16 bytes>") && debug.contains("commitment: <32 bytes>"), "{debug}");
    assert!(debug.contains("correction(<65536 bytes>)"), "{debug}");
    let r = receiver.outcome().unwrap();
    let s = sender.outcome().unwrap();
    assert_eq!(r.intersection, 10_000);
    assert_eq!(s.matched.unwrap().iter().filter(|&&m| m).count(), 10_000);
}

/// The stream sides (`OprfOwner`, `OprfPartner`), as the gRPC service runs them:
/// a hello that chose `oprf`, the accept, then the engine wrapped in the match
/// stream's messages.
mod stream {
    use super::*;
    use idmatch::psi::message::{Accept, Hello, PROTOCOL_VERSION, Summary};
    use idmatch::psi::oprf::{ChunkLimits, OprfMessage, OprfOwner, OprfPartner};
    use idmatch::psi::{LocalMatchError, OwnerMessage, PartnerMessage, Protocol, ProtocolError, run_in_memory};

    fn hello(reveal: Reveal, partner_set_size: u64) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            campaign: "c".into(),
            profile: "idmatch-v1".into(),
            reveal,
            partner_set_size,
            key_fingerprint: vec![],
            protocols: vec![Protocol::Oprf],
            run: None,
        }
    }

    /// The owner's side with its accept taken, and the partner's side started from it.
    fn sides<'a>(
        owner_set: &'a PreparedSet,
        partner_set: &'a PreparedSet,
        reveal: Reveal,
    ) -> (OprfOwner<'a>, OprfPartner<'a>) {
        let limits = ChunkLimits { max_chunk_bytes: 4096, send_chunk_bytes: 4096 };
        let mut owner = OprfOwner::new(&hello(reveal, partner_set.len() as u64), owner_set, limits).unwrap();
        let Some(OwnerMessage::Accept(accept)) = owner.poll_outgoing() else { panic!("no accept") };
        assert_eq!(
            accept,
            Accept {
                version: PROTOCOL_VERSION,
                owner_set_size: owner_set.len() as u64,
                max_chunk: 0,
                protocol: Protocol::Oprf
            }
        );
        let partner = OprfPartner::new(reveal, accept.owner_set_size, partner_set, limits).unwrap();
        (owner, partner)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Through the stream sides, each party learns exactly what its mode gives
        /// it; the owner's summary agrees.
        #[test]
        fn stream_sides_equal_plain_set_intersection(
            owner in prop::collection::vec(prop::collection::vec(0u32..60, 0..3), 0..30),
            partner in prop::collection::vec(prop::collection::vec(0u32..60, 0..3), 0..30),
            mode in 0usize..3,
        ) {
            let reveal = OFFERED[mode];
            let (o, p) = (set(&owner), set(&partner));
            let (mut owner_side, mut partner_side) = sides(&o, &p, reveal);
            let mut summary = None;
            run_in_memory(&mut owner_side, &mut partner_side, |m| {
                if let idmatch::psi::Observed::FromOwner(OwnerMessage::Summary(s)) = m {
                    summary = Some(s.clone());
                }
            })
            .unwrap();
            let (ours, theirs) = (owner_side.outcome().unwrap(), partner_side.outcome().unwrap());
            let distinct = |rs: &[Vec<u32>]| rs.iter().flatten().copied().collect::<BTreeSet<u32>>();
            let intersection = distinct(&owner).intersection(&distinct(&partner)).count() as u64;
            let summary = summary.unwrap();
            prop_assert_eq!(summary.intersection, (reveal == Reveal::Both).then_some(intersection));
            prop_assert_eq!((summary.partner_set_size, summary.owner_set_size), (p.len() as u64, o.len() as u64));
            prop_assert_eq!(theirs.intersection, (reveal != Reveal::Owner).then_some(intersection));
            prop_assert_eq!(ours.matched.is_some(), reveal != Reveal::Partner);
            prop_assert_eq!(theirs.matched.is_some(), reveal != Reveal::Owner);
            if let Some(m) = &theirs.matched {
                prop_assert_eq!(records_of(&p, m), expected(&partner, &owner));
            }
            if let Some(m) = &ours.matched {
                prop_assert_eq!(records_of(&o, m), expected(&owner, &partner));
            }
        }
    }

    /// A setup announcing another size than the hello (owner) or the accept
    /// (partner) is refused before the engine sees it.
    #[test]
    fn setups_are_held_to_the_announced_sizes() {
        let (o, p) = (flat(0..50), flat(25..60));
        // The partner receives (partner mode): its setup must announce the hello's size.
        let limits = ChunkLimits::default();
        let mut owner = OprfOwner::new(&hello(Reveal::Partner, 34), &o, limits).unwrap();
        owner.poll_outgoing();
        let mut partner = OprfPartner::new(Reveal::Partner, 50, &p, limits).unwrap();
        let Some(PartnerMessage::Oprf(setup)) = partner.poll_outgoing() else { panic!("no setup") };
        assert_eq!(
            owner.receive(PartnerMessage::Oprf(setup)),
            Err(ProtocolError::AnnouncedSizeMismatch {
                what: "oprf_receiver_setup.receiver_set_size",
                announced: 35,
                expected: 34
            })
        );
        // The owner receives (owner mode): its setup must announce the accept's size
        // to the partner, and the partner's sender setup the hello's to the owner.
        let mut owner = OprfOwner::new(&hello(Reveal::Owner, 35), &o, limits).unwrap();
        owner.poll_outgoing();
        let Some(OwnerMessage::Oprf(setup)) = owner.poll_outgoing() else { panic!("no setup") };
        let mut partner = OprfPartner::new(Reveal::Owner, 49, &p, limits).unwrap();
        assert_eq!(
            partner.receive(OwnerMessage::Oprf(setup.clone())),
            Err(ProtocolError::AnnouncedSizeMismatch {
                what: "oprf_receiver_setup.receiver_set_size",
                announced: 50,
                expected: 49
            })
        );
        let mut partner = OprfPartner::new(Reveal::Owner, 50, &p, limits).unwrap();
        partner.receive(OwnerMessage::Oprf(setup)).unwrap();
        let Some(PartnerMessage::Oprf(sender_setup)) = partner.poll_outgoing() else { panic!("no sender setup") };
        let OprfMessage::SenderSetup(mut s) = sender_setup else { panic!("not a sender setup") };
        s.sender_set_size = 36;
        assert_eq!(
            owner.receive(PartnerMessage::Oprf(OprfMessage::SenderSetup(s))),
            Err(ProtocolError::AnnouncedSizeMismatch {
                what: "oprf_sender_setup.sender_set_size",
                announced: 36,
                expected: 35
            })
        );
    }

    /// Messages of the other engine, of the other role, or out of order end the
    /// match with the precise error; so does a summary that disagrees.
    #[test]
    fn wrong_messages_and_summaries_are_refused() {
        let (o, p) = (flat(0..40), flat(20..70));
        let (mut owner, mut partner) = sides(&o, &p, Reveal::Partner);
        assert_eq!(
            owner.receive(PartnerMessage::PartnerElements(vec![])),
            Err(ProtocolError::UnexpectedMessage { state: "running oprf as the sender", message: "partner_elements" })
        );
        let (mut owner, _) = sides(&o, &p, Reveal::Partner);
        assert_eq!(
            owner.receive(PartnerMessage::Oprf(OprfMessage::Outputs(vec![0; 10]))),
            Err(ProtocolError::UnexpectedMessage { state: "running oprf as the sender", message: "oprf_outputs" })
        );
        assert!(matches!(
            partner.receive(OwnerMessage::Oprf(OprfMessage::Outputs(vec![0; 10]))),
            Err(ProtocolError::Oprf(OprfError::UnexpectedMessage { .. }))
        ));
        let (_, mut partner) = sides(&o, &p, Reveal::Partner);
        let early = Summary { partner_set_size: 50, owner_set_size: 40, intersection: None };
        assert_eq!(
            partner.receive(OwnerMessage::Summary(early)),
            Err(ProtocolError::UnexpectedMessage { state: "running oprf as the receiver", message: "summary" })
        );
        // A whole run whose summary lies about the intersection.
        let (mut owner, mut partner) = sides(&o, &p, Reveal::Both);
        let result = drive_with(&mut owner, &mut partner, |m| match m {
            OwnerMessage::Summary(s) => {
                OwnerMessage::Summary(Summary { intersection: s.intersection.map(|i| i + 1), ..s })
            }
            other => other,
        });
        assert!(matches!(result, Err(LocalMatchError::Partner(ProtocolError::SummaryMismatch("intersection size")))));
    }

    /// Like `run_in_memory`, with the owner's messages rewritten by `tamper`.
    fn drive_with(
        owner: &mut OprfOwner<'_>,
        partner: &mut OprfPartner<'_>,
        mut tamper: impl FnMut(OwnerMessage) -> OwnerMessage,
    ) -> Result<(), LocalMatchError> {
        loop {
            let mut progressed = false;
            while let Some(m) = partner.poll_outgoing() {
                owner.receive(m).map_err(LocalMatchError::Owner)?;
                progressed = true;
            }
            while let Some(m) = owner.poll_outgoing() {
                partner.receive(tamper(m)).map_err(LocalMatchError::Partner)?;
                progressed = true;
            }
            if owner.is_done() && partner.is_done() {
                return Ok(());
            }
            if !progressed {
                return Err(LocalMatchError::Stalled);
            }
        }
    }
}
