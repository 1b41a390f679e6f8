//! The matching engine against a plain set intersection, opt-outs, the transcript,
//! and protocol errors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use idmatch::key::Key;
use idmatch::normalize::{Kind, Normalizer, Profile, Region};
use idmatch::optout::{BadRows, FileList, OptOutSource, excluded_records};
use idmatch::prepare::{prepared_set, read_digested};
use idmatch::psi::message::{Accept, Hello, PROTOCOL_VERSION};
use idmatch::psi::{
    Element, Observed, Owner, OwnerConfig, OwnerMessage, Partner, PartnerConfig, PartnerMessage, PreparedSet, Protocol,
    ProtocolError, Reveal, SetupError, run_in_memory,
};
use idmatch::records::{self, Mode, ReadOptions, RecordSet};
use idmatch::token::{KeyFingerprint, Tokenizer};
use proptest::prelude::*;

fn normalizer() -> Normalizer {
    Normalizer::new(Profile::IdmatchV1, Some(Region::from_code("US").unwrap()))
}

fn write_csv(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    path
}

fn read(path: &std::path::Path, tokenizer: &Tokenizer, digester: Option<&Tokenizer>) -> RecordSet {
    let options = ReadOptions::new(normalizer(), Mode::Match);
    match digester {
        Some(digester) => read_digested(path, tokenizer, options, digester).unwrap(),
        None => records::read(path, tokenizer, options).unwrap(),
    }
}

/// (owner matches, partner matches, partner's count) as id → kinds.
struct Result3 {
    owner: Option<BTreeMap<String, String>>,
    partner: Option<BTreeMap<String, String>>,
    count: Option<u64>,
    owner_blinded: u64,
}

fn run_match(owner: &RecordSet, owner_excluded: &[bool], partner: &RecordSet, reveal: Reveal) -> Result3 {
    let owner_set = prepared_set(owner, owner_excluded);
    let partner_set = prepared_set(partner, &[]);
    let mut o = Owner::new(OwnerConfig::local("c", Profile::IdmatchV1), &owner_set).unwrap();
    let mut p = Partner::new(PartnerConfig::new("c", Profile::IdmatchV1, reveal), &partner_set).unwrap();
    run_in_memory(&mut o, &mut p, |_| {}).unwrap();
    let oo = o.outcome().unwrap();
    let po = p.outcome().unwrap();
    let named = |records: &RecordSet, set: &PreparedSet, m: &Vec<bool>| {
        set.matched_records(m)
            .into_iter()
            .map(|(r, k)| (records.id(r).to_owned(), k.joined()))
            .collect::<BTreeMap<_, _>>()
    };
    Result3 {
        owner: oo.matched.as_ref().map(|m| named(owner, &owner_set, m)),
        partner: po.matched.as_ref().map(|m| named(partner, &partner_set, m)),
        count: po.intersection,
        owner_blinded: oo.blinded,
    }
}

/// Expected matches by plain set intersection of normalized identifiers.
fn expected(
    ours: &[(String, Option<String>, Option<String>)],
    theirs: &[(String, Option<String>, Option<String>)],
) -> BTreeMap<String, String> {
    let n = normalizer();
    let norm = |kind, v: &Option<String>| v.as_ref().and_then(|v| n.normalize(kind, v, None).ok());
    let their_emails: BTreeSet<String> = theirs.iter().filter_map(|r| norm(Kind::Email, &r.1)).collect();
    let their_phones: BTreeSet<String> = theirs.iter().filter_map(|r| norm(Kind::Phone, &r.2)).collect();
    let mut out = BTreeMap::new();
    for (id, email, phone) in ours {
        let e = norm(Kind::Email, email).is_some_and(|e| their_emails.contains(&e));
        let p = norm(Kind::Phone, phone).is_some_and(|p| their_phones.contains(&p));
        let kinds = match (e, p) {
            (true, true) => "email;phone",
            (true, false) => "email",
            (false, true) => "phone",
            _ => continue,
        };
        out.insert(id.clone(), kinds.to_owned());
    }
    out
}

fn to_csv(rows: &[(String, Option<String>, Option<String>)]) -> String {
    let mut s = String::from("id,email,phone\n");
    for (id, e, p) in rows {
        s += &format!("{id},{},{}\n", e.as_deref().unwrap_or(""), p.as_deref().unwrap_or(""));
    }
    s
}

/// Records drawn from a small universe, so sets overlap, repeat and vary in format.
fn rows(prefix: &'static str) -> impl Strategy<Value = Vec<(String, Option<String>, Option<String>)>> {
    let email = prop_oneof![
        (0u32..40).prop_map(|i| format!("user{i}@example.com")),
        (0u32..40).prop_map(|i| format!("  USER{i}@Example.COM ")),
        (0u32..10).prop_map(|i| format!("u.s.e.r{i}+tag@gmail.com")),
        (0u32..10).prop_map(|i| format!("user{i}@googlemail.com")),
        Just("not-an-email".to_owned()),
    ];
    let phone = prop_oneof![
        (0u32..40).prop_map(|i| format!("+1 415 555 {:04}", 1000 + i)),
        (0u32..40).prop_map(|i| format!("(415) 555-{:04}", 1000 + i)),
        Just("555-555-5555".to_owned()),
    ];
    prop::collection::vec((prop::option::of(email), prop::option::of(phone)), 0..40)
        .prop_map(move |v| v.into_iter().enumerate().map(|(i, (e, p))| (format!("{prefix}{i}"), e, p)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn engine_equals_plain_set_intersection(owner_rows in rows("m"), partner_rows in rows("p"), mode in 0usize..4) {
        let reveal = Reveal::ALL[mode];
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = Tokenizer::new(&Key::from_bytes([9; 32]));
        let owner = read(&write_csv(&dir, "o.csv", &to_csv(&owner_rows)), &tokenizer, None);
        let partner = read(&write_csv(&dir, "p.csv", &to_csv(&partner_rows)), &tokenizer, None);
        let got = run_match(&owner, &[], &partner, reveal);
        let want_partner = expected(&partner_rows, &owner_rows);
        let want_owner = expected(&owner_rows, &partner_rows);
        prop_assert_eq!(got.partner.as_ref(), matches!(reveal, Reveal::Partner | Reveal::Both).then_some(&want_partner));
        prop_assert_eq!(got.owner.as_ref(), matches!(reveal, Reveal::Owner | Reveal::Both).then_some(&want_owner));
        let n = normalizer();
        let distinct = |rows: &[(String, Option<String>, Option<String>)]| -> BTreeSet<(Kind, String)> {
            rows.iter().flat_map(|r| [
                r.1.as_ref().and_then(|v| n.normalize(Kind::Email, v, None).ok()).map(|v| (Kind::Email, v)),
                r.2.as_ref().and_then(|v| n.normalize(Kind::Phone, v, None).ok()).map(|v| (Kind::Phone, v)),
            ]).flatten().collect()
        };
        let want_count = distinct(&owner_rows).intersection(&distinct(&partner_rows)).count() as u64;
        prop_assert_eq!(got.count, (reveal != Reveal::Owner).then_some(want_count));
        prop_assert_eq!(got.owner_blinded, distinct(&owner_rows).len() as u64);
    }
}

#[test]
fn empty_and_disjoint_and_full_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::new(&Key::from_bytes([3; 32]));
    let empty = read(&write_csv(&dir, "e.csv", "id,email\n"), &tokenizer, None);
    let a = read(
        &write_csv(&dir, "a.csv", "id,email,phone\n1,a@example.com,+14155550100\n2,b@example.com,\n"),
        &tokenizer,
        None,
    );
    let b = read(&write_csv(&dir, "b.csv", "id,email\nx,c@example.com\n"), &tokenizer, None);
    for reveal in Reveal::ALL {
        let r = run_match(&empty, &[], &a, reveal);
        assert_eq!(r.count, (reveal != Reveal::Owner).then_some(0));
        let r = run_match(&a, &[], &empty, reveal);
        assert_eq!(r.owner.map(|m| m.len()), matches!(reveal, Reveal::Owner | Reveal::Both).then_some(0));
        let r = run_match(&a, &[], &b, reveal);
        assert_eq!(r.count, (reveal != Reveal::Owner).then_some(0));
        let r = run_match(&a, &[], &a, reveal);
        assert_eq!(r.count, (reveal != Reveal::Owner).then_some(3));
        if let Some(p) = r.partner {
            assert_eq!(p.get("1").map(String::as_str), Some("email;phone"));
            assert_eq!(p.get("2").map(String::as_str), Some("email"));
        }
    }
}

#[test]
fn opted_out_records_are_never_blinded_matched_or_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::new(&Key::from_bytes([5; 32]));
    let members = "id,email,phone\nm1,alice@example.com,+14155550101\nm2,bob@example.com,+14155550102\nm3,carol@example.com,+14155550103\nm4,dave@example.com,\n";
    let partner_text =
        "id,email,phone\np1,ALICE@example.com,\np2,,415-555-0102\np3,carol@example.com,\np4,dave@example.com,\n";
    // m1 opted out by email in another format, m2 by phone, m4 by record id.
    let optouts = FileList::load(
        &write_csv(&dir, "optouts.csv", "id,email,phone\n,Alice@Example.com,\n,,(415) 555-0102\nm4,,\n"),
        normalizer(),
        BadRows::Refuse,
    )
    .unwrap();
    let owner = read(&write_csv(&dir, "m.csv", members), &tokenizer, Some(optouts.digester()));
    let partner = read(&write_csv(&dir, "p.csv", partner_text), &tokenizer, None);
    let excluded = excluded_records(&owner, &optouts).unwrap();
    assert_eq!(excluded, vec![true, true, false, true]);

    // The same match with the opted-out members removed from the file altogether.
    let without =
        read(&write_csv(&dir, "m2.csv", "id,email,phone\nm3,carol@example.com,+14155550103\n"), &tokenizer, None);
    for reveal in Reveal::ALL {
        let r = run_match(&owner, &excluded, &partner, reveal);
        let baseline = run_match(&without, &[], &partner, reveal);
        assert_eq!(r.owner_blinded, 2, "only m3's two identifiers are blinded");
        assert_eq!(r.count, baseline.count);
        assert_eq!(r.partner, baseline.partner);
        if let Some(owner_matches) = &r.owner {
            assert_eq!(owner_matches.keys().collect::<Vec<_>>(), vec!["m3"]);
        }
        if let Some(p) = &r.partner {
            assert_eq!(p.keys().collect::<Vec<_>>(), vec!["p3"]);
        }
    }
}

#[test]
fn transcript_carries_only_group_elements_and_hello_fields() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::new(&Key::from_bytes([7; 32]));
    let text = "id,email,phone\n1,alice@example.com,+14155550101\n2,bob@example.com,\n";
    let owner = read(&write_csv(&dir, "o.csv", text), &tokenizer, None);
    let partner = read(&write_csv(&dir, "p.csv", text), &tokenizer, None);
    let tokens: BTreeSet<[u8; 32]> = owner.entries().iter().map(|e| e.token.0).collect();
    let (os, ps) = (prepared_set(&owner, &[]), prepared_set(&partner, &[]));
    let mut o = Owner::new(OwnerConfig::local("spring-campaign", Profile::IdmatchV1), &os).unwrap();
    let mut p = Partner::new(PartnerConfig::new("spring-campaign", Profile::IdmatchV1, Reveal::Both), &ps).unwrap();
    let mut elements: Vec<Element> = Vec::new();
    let mut names = Vec::new();
    run_in_memory(&mut o, &mut p, |m| match m {
        Observed::FromPartner(PartnerMessage::Hello(h)) => {
            assert_eq!(
                (h.campaign.as_str(), h.profile.as_str(), h.partner_set_size),
                ("spring-campaign", "idmatch-v1", 3)
            );
            names.push("hello");
        }
        Observed::FromPartner(PartnerMessage::PartnerElements(c) | PartnerMessage::ReblindedOwnerElements(c))
        | Observed::FromOwner(OwnerMessage::ReblindedPartnerElements(c) | OwnerMessage::OwnerElements(c)) => {
            elements.extend(c.iter().copied());
            names.push("elements");
        }
        Observed::FromPartner(PartnerMessage::Finished) => names.push("finished"),
        Observed::FromOwner(OwnerMessage::Accept(a)) => {
            assert_eq!(a.owner_set_size, 3);
            names.push("accept");
        }
        Observed::FromOwner(OwnerMessage::Summary(s)) => {
            assert_eq!((s.partner_set_size, s.owner_set_size, s.intersection), (3, 3, Some(3)));
            names.push("summary");
        }
        Observed::FromPartner(PartnerMessage::Oprf(_)) | Observed::FromOwner(OwnerMessage::Oprf(_)) => {
            names.push("oprf (never under ecdh)")
        }
    })
    .unwrap();
    assert_eq!(names, ["hello", "accept", "elements", "elements", "elements", "elements", "finished", "summary"]);
    // 3 A_i, 3 b·A_i, 3 B_j, 3 a·B_j: every one a valid group element, none a token or
    // any substring of an identifier.
    assert_eq!(elements.len(), 12);
    let distinct: BTreeSet<_> = elements.iter().collect();
    assert_eq!(distinct.len(), 9, "b·A_i equal a·B_j for the 3 shared tokens, all else distinct");
    for e in &elements {
        assert!(!tokens.contains(&e.0));
        assert!(curve25519_dalek::ristretto::CompressedRistretto(e.0).decompress().is_some());
        for needle in [&b"alice"[..], b"example", b"4155550101"] {
            assert!(!e.0.windows(needle.len()).any(|w| w == needle));
        }
    }
}

fn small_sets() -> (PreparedSet, PreparedSet) {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::new(&Key::from_bytes([1; 32]));
    let r = read(&write_csv(&dir, "a.csv", "id,email\n1,a@example.com\n2,b@example.com\n"), &tokenizer, None);
    (prepared_set(&r, &[]), prepared_set(&r, &[]))
}

fn hello_for(reveal: Reveal, size: u64) -> PartnerMessage {
    PartnerMessage::Hello(Hello {
        version: PROTOCOL_VERSION,
        campaign: "c".into(),
        profile: "idmatch-v1".into(),
        reveal,
        partner_set_size: size,
        key_fingerprint: Vec::new(),
        protocols: Vec::new(),
        run: None,
    })
}

/// A wrong or missing key fingerprint is refused on the hello: the owner sends
/// nothing (not even `Accept`), and the partner sends no element before `Accept`.
#[test]
fn a_wrong_or_missing_key_fingerprint_is_refused_before_any_element() {
    let (os, ps) = small_sets();
    let ours = KeyFingerprint::of(&Key::from_bytes([1; 32]));
    let theirs = KeyFingerprint::of(&Key::from_bytes([2; 32]));
    let config = OwnerConfig::local("c", Profile::IdmatchV1).with_key_fingerprint(ours);

    let mut p =
        Partner::new(PartnerConfig::new("c", Profile::IdmatchV1, Reveal::Both).with_key_fingerprint(theirs), &ps)
            .unwrap();
    let hello = p.poll_outgoing().unwrap();
    assert!(p.poll_outgoing().is_none(), "no element before accept");
    let mut o = Owner::new(config.clone(), &os).unwrap();
    let err = o.receive(hello).unwrap_err();
    assert_eq!(err, ProtocolError::KeyMismatch);
    assert_eq!(err.to_string(), "campaign key mismatch: the partner's key is not this campaign's key");
    assert!(o.poll_outgoing().is_none(), "nothing sent after a refused hello");

    let mut o = Owner::new(config.clone(), &os).unwrap();
    assert_eq!(o.receive(hello_for(Reveal::Both, 2)), Err(ProtocolError::KeyFingerprintMissing));
    assert!(o.poll_outgoing().is_none());

    // The same key on both sides matches, through the engine's own configs.
    let mut o = Owner::new(config, &os).unwrap();
    let mut p = Partner::new(PartnerConfig::new("c", Profile::IdmatchV1, Reveal::Both).with_key_fingerprint(ours), &ps)
        .unwrap();
    run_in_memory(&mut o, &mut p, |_| {}).unwrap();
    assert_eq!(p.outcome().unwrap().intersection, Some(2));
}

/// Peer-supplied strings echoed into errors are truncated.
#[test]
fn a_huge_campaign_string_is_truncated_in_the_error() {
    let (os, _) = small_sets();
    let mut o = Owner::new(OwnerConfig::local("c", Profile::IdmatchV1), &os).unwrap();
    let mut h = hello_for(Reveal::Both, 2);
    if let PartnerMessage::Hello(h) = &mut h {
        h.campaign = "x".repeat(262_144);
    }
    let message = o.receive(h).unwrap_err().to_string();
    assert!(message.len() < 200 && message.contains("…(262144 bytes)"), "{message}");
}

#[test]
fn a_bad_local_configuration_is_a_setup_error_not_a_peer_fault() {
    let (os, _) = small_sets();
    for zero_send in [true, false] {
        let mut config = OwnerConfig::local("c", Profile::IdmatchV1);
        if zero_send {
            config.send_chunk = 0
        } else {
            config.max_chunk = 0
        }
        assert!(matches!(Owner::new(config, &os), Err(SetupError::ZeroChunk)));
    }
    let mut config = PartnerConfig::new("c", Profile::IdmatchV1, Reveal::Partner);
    config.send_chunk = 0;
    assert!(matches!(Partner::new(config, &os), Err(SetupError::ZeroChunk)));
}

#[test]
fn out_of_order_and_malformed_messages_are_precise_errors() {
    let (os, _) = small_sets();
    let config = OwnerConfig::local("c", Profile::IdmatchV1);
    let good = Element(curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED.to_bytes());

    let mut o = Owner::new(config.clone(), &os).unwrap();
    assert_eq!(
        o.receive(PartnerMessage::PartnerElements(vec![good])),
        Err(ProtocolError::UnexpectedMessage { state: "awaiting hello", message: "partner_elements" })
    );

    let mut o = Owner::new(config.clone(), &os).unwrap();
    let mut h = hello_for(Reveal::Both, 2);
    if let PartnerMessage::Hello(h) = &mut h {
        h.profile = "basic-v1".into();
    }
    assert!(matches!(o.receive(h), Err(ProtocolError::ProfileMismatch { .. })));

    let mut o = Owner::new(config.clone(), &os).unwrap();
    let mut h = hello_for(Reveal::Both, 2);
    if let PartnerMessage::Hello(h) = &mut h {
        h.version = 99;
    }
    assert_eq!(o.receive(h), Err(ProtocolError::UnsupportedVersion { ours: 1, theirs: 99 }));

    let mut strict = config.clone();
    strict.min_partner_set = 1000;
    strict.allowed_reveals = vec![Reveal::Partner];
    let mut o = Owner::new(strict.clone(), &os).unwrap();
    assert_eq!(o.receive(hello_for(Reveal::Both, 2000)), Err(ProtocolError::RevealNotAllowed(Reveal::Both)));
    let mut o = Owner::new(strict, &os).unwrap();
    assert!(matches!(o.receive(hello_for(Reveal::Partner, 2)), Err(ProtocolError::SetSizeOutOfRange { size: 2, .. })));

    let mut o = Owner::new(config.clone(), &os).unwrap();
    o.receive(hello_for(Reveal::Both, 2)).unwrap();
    assert_eq!(
        o.receive(PartnerMessage::PartnerElements(vec![])),
        Err(ProtocolError::BadChunkSize { len: 0, max: 65536 })
    );
    assert!(matches!(
        o.receive(PartnerMessage::PartnerElements(vec![Element([0; 32])])),
        Err(ProtocolError::BadElement(idmatch::psi::group::ElementError::Identity { index: 0 }))
    ));
    assert!(matches!(
        o.receive(PartnerMessage::PartnerElements(vec![good, Element([0xff; 32])])),
        Err(ProtocolError::BadElement(idmatch::psi::group::ElementError::NonCanonical { index: 1 }))
    ));
    assert!(matches!(
        o.receive(PartnerMessage::PartnerElements(vec![good; 3])),
        Err(ProtocolError::TooManyElements { expected: 2, received: 3, .. })
    ));
    assert!(matches!(o.receive(PartnerMessage::Finished), Err(ProtocolError::UnexpectedMessage { .. })));

    assert_eq!(Element::parse_chunk(&[0u8; 33]).unwrap_err().len, 33);
    assert_eq!(Element::parse_chunk(&[0u8; 64]).unwrap().len(), 2);
}

#[test]
fn partner_rejects_out_of_order_owner_messages() {
    let (_, ps) = small_sets();
    let mut p = Partner::new(PartnerConfig::new("c", Profile::IdmatchV1, Reveal::Partner), &ps).unwrap();
    assert!(matches!(p.poll_outgoing(), Some(PartnerMessage::Hello(_))));
    assert_eq!(
        p.receive(OwnerMessage::OwnerElements(vec![Element([0; 32])])),
        Err(ProtocolError::UnexpectedMessage { state: "awaiting accept", message: "owner_elements" })
    );
    p.receive(OwnerMessage::Accept(Accept {
        version: PROTOCOL_VERSION,
        owner_set_size: 1,
        max_chunk: 1,
        protocol: Protocol::Ecdh,
    }))
    .unwrap();
    // Chunks now respect the owner's limit of one element.
    assert!(matches!(p.poll_outgoing(), Some(PartnerMessage::PartnerElements(c)) if c.len() == 1));
    // The owner may not return more elements than the partner has sent.
    assert!(matches!(
        p.receive(OwnerMessage::ReblindedPartnerElements(vec![Element([1; 32]); 2])),
        Err(ProtocolError::TooManyElements { .. })
    ));
}

/// A network-like driver: one message per side per turn, so replies interleave with
/// sending (the owner gets re-blinded elements back while it is still sending).
fn run_interleaved(owner: &mut Owner<'_>, partner: &mut Partner<'_>) {
    for _ in 0..100_000 {
        let to_owner = partner.poll_outgoing();
        let to_partner = owner.poll_outgoing();
        let idle = to_owner.is_none() && to_partner.is_none();
        if let Some(m) = to_owner {
            owner.receive(m).unwrap();
        }
        if let Some(m) = to_partner {
            partner.receive(m).unwrap();
        }
        if owner.is_done() && partner.is_done() {
            return;
        }
        assert!(!idle, "stalled");
    }
    panic!("did not finish");
}

#[test]
fn small_interleaved_chunks_give_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::new(&Key::from_bytes([8; 32]));
    let mut owner_text = String::from("id,email\n");
    let mut partner_text = String::from("id,email\n");
    for i in 0..50 {
        owner_text += &format!("m{i},user{i}@example.com\n");
        partner_text += &format!("p{i},user{}@example.com\n", i + 25);
    }
    let owner = read(&write_csv(&dir, "o.csv", &owner_text), &tokenizer, None);
    let partner = read(&write_csv(&dir, "p.csv", &partner_text), &tokenizer, None);
    let (os, ps) = (prepared_set(&owner, &[]), prepared_set(&partner, &[]));
    for reveal in Reveal::ALL {
        let mut config = OwnerConfig::local("c", Profile::IdmatchV1);
        config.send_chunk = 3;
        config.max_chunk = 4;
        let mut o = Owner::new(config, &os).unwrap();
        let mut p = Partner::new(PartnerConfig::new("c", Profile::IdmatchV1, reveal), &ps).unwrap();
        run_interleaved(&mut o, &mut p);
        let (oo, po) = (o.outcome().unwrap(), p.outcome().unwrap());
        assert_eq!(po.intersection, (reveal != Reveal::Owner).then_some(25));
        if let Some(m) = oo.matched {
            assert_eq!(m.iter().filter(|&&x| x).count(), 25);
        }
        if let Some(m) = po.matched {
            assert_eq!(m.iter().filter(|&&x| x).count(), 25);
        }
    }
}

#[test]
fn line_number_ids_are_never_opted_out_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::new(&Key::from_bytes([4; 32]));
    let optouts = FileList::load(&write_csv(&dir, "o.csv", "id\n2\n3\n"), normalizer(), BadRows::Refuse).unwrap();
    // No id column: records are identified by line numbers 2 and 3.
    let records =
        read(&write_csv(&dir, "a.csv", "email\na@example.com\nb@example.com\n"), &tokenizer, Some(optouts.digester()));
    assert_eq!(records.id(0), "2");
    assert_eq!(excluded_records(&records, &optouts).unwrap(), vec![false, false]);
}
