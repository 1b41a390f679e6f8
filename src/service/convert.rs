//! Conversions between the engines' protocol messages ([`crate::psi::message`],
//! [`crate::psi::oprf::OprfMessage`]) and the protobuf wire types ([`crate::wire`]).
//! Decoding validates everything the protobuf layer cannot: a message body is
//! present, the reveal mode and engines are known, and an ECDH chunk is a whole
//! number of 32-byte elements. OPRF byte fields are passed on raw: the OPRF state
//! machines check them.

#[cfg(feature = "server")]
use crate::psi::message::Hello;
use crate::psi::message::{Accept, Element, Summary};
use crate::psi::oprf::{OprfMessage, ReceiverSetup, SenderSetup};
use crate::psi::{OwnerMessage, PartnerMessage, Protocol, ProtocolError, Reveal, ShardRun};
use crate::wire;
use crate::wire::owner_message::Body as OwnerBody;
use crate::wire::partner_message::Body as PartnerBody;

fn reveal_to_wire(reveal: Reveal) -> wire::Reveal {
    match reveal {
        Reveal::Partner => wire::Reveal::Partner,
        Reveal::Owner => wire::Reveal::Owner,
        Reveal::Both => wire::Reveal::Both,
        Reveal::Count => wire::Reveal::Count,
    }
}

#[cfg(feature = "server")]
fn reveal_from_wire(value: i32) -> Result<Reveal, ProtocolError> {
    match wire::Reveal::try_from(value) {
        Ok(wire::Reveal::Partner) => Ok(Reveal::Partner),
        Ok(wire::Reveal::Owner) => Ok(Reveal::Owner),
        Ok(wire::Reveal::Both) => Ok(Reveal::Both),
        Ok(wire::Reveal::Count) => Ok(Reveal::Count),
        Ok(wire::Reveal::Unspecified) | Err(_) => Err(ProtocolError::Malformed("unknown reveal mode")),
    }
}

fn protocol_to_wire(protocol: Protocol) -> wire::Protocol {
    match protocol {
        Protocol::Ecdh => wire::Protocol::Ecdh,
        Protocol::Oprf => wire::Protocol::Oprf,
    }
}

#[cfg(feature = "server")]
/// The engines a hello offers, in the partner's order of preference, each once.
/// Values this build does not know (engines of a newer client) are skipped, as TLS
/// skips unknown cipher suites, and repeats are dropped, so the list (and every
/// message or log line that names it) holds at most one entry per known engine
/// whatever its length on the wire; a list of nothing but unknown engines is refused
/// (an empty list would mean `ecdh`).
fn protocols_from_wire(values: &[i32]) -> Result<Vec<Protocol>, ProtocolError> {
    let mut known: Vec<Protocol> = Vec::new();
    for &v in values {
        let protocol = match wire::Protocol::try_from(v) {
            Ok(wire::Protocol::Ecdh) => Protocol::Ecdh,
            Ok(wire::Protocol::Oprf) => Protocol::Oprf,
            Ok(wire::Protocol::Unspecified) | Err(_) => continue,
        };
        if !known.contains(&protocol) {
            known.push(protocol);
        }
    }
    if known.is_empty() && !values.is_empty() {
        return Err(ProtocolError::Malformed("the hello offers no protocol this owner knows"));
    }
    Ok(known)
}

/// The engine an accept names: unspecified (an owner from before the field) is ECDH.
fn accepted_protocol_from_wire(value: i32) -> Result<Protocol, ProtocolError> {
    match wire::Protocol::try_from(value) {
        Ok(wire::Protocol::Unspecified | wire::Protocol::Ecdh) => Ok(Protocol::Ecdh),
        Ok(wire::Protocol::Oprf) => Ok(Protocol::Oprf),
        Err(_) => Err(ProtocolError::Malformed("unknown protocol in the accept")),
    }
}

fn shard_run_to_wire(run: ShardRun) -> wire::ShardRun {
    wire::ShardRun {
        run_id: run.run_id.to_vec(),
        shard_index: run.shard_index,
        shard_count: run.shard_count,
        run_set_size: run.run_set_size,
    }
}

#[cfg(feature = "server")]
/// A hello's run, checked: a 16-byte run id, `N` in `1..=MAX_SHARDS`, a shard in `0..N`.
fn shard_run_from_wire(run: wire::ShardRun) -> Result<ShardRun, ProtocolError> {
    let run_id = run.run_id.try_into().map_err(|_| ProtocolError::Malformed("the run id is not 16 bytes"))?;
    if run.shard_count == 0 || run.shard_count > crate::shard::MAX_SHARDS {
        return Err(ProtocolError::Malformed("the run's shard count is not in 1..=4096"));
    }
    if run.shard_index >= run.shard_count {
        return Err(ProtocolError::Malformed("the run's shard index is not below its shard count"));
    }
    Ok(ShardRun { run_id, shard_index: run.shard_index, shard_count: run.shard_count, run_set_size: run.run_set_size })
}

fn receiver_setup_to_wire(s: ReceiverSetup) -> wire::OprfReceiverSetup {
    wire::OprfReceiverSetup {
        version: s.version,
        receiver_set_size: s.receiver_set_size,
        report_back: s.report_back,
        max_chunk_bytes: s.max_chunk_bytes,
        ot_point: s.ot_point,
    }
}

fn receiver_setup_from_wire(s: wire::OprfReceiverSetup) -> ReceiverSetup {
    ReceiverSetup {
        version: s.version,
        receiver_set_size: s.receiver_set_size,
        report_back: s.report_back,
        max_chunk_bytes: s.max_chunk_bytes,
        ot_point: s.ot_point,
    }
}

fn sender_setup_to_wire(s: SenderSetup) -> wire::OprfSenderSetup {
    wire::OprfSenderSetup {
        version: s.version,
        sender_set_size: s.sender_set_size,
        height: s.height,
        sparse_len: s.sparse_len,
        width: s.width,
        output_len: s.output_len,
        max_chunk_bytes: s.max_chunk_bytes,
        hash_key: s.hash_key,
        ot_points: s.ot_points,
        commitment: s.commitment,
    }
}

fn sender_setup_from_wire(s: wire::OprfSenderSetup) -> SenderSetup {
    SenderSetup {
        version: s.version,
        sender_set_size: s.sender_set_size,
        height: s.height,
        sparse_len: s.sparse_len,
        width: s.width,
        output_len: s.output_len,
        max_chunk_bytes: s.max_chunk_bytes,
        hash_key: s.hash_key,
        ot_points: s.ot_points,
        commitment: s.commitment,
    }
}

fn oprf_to_wire(message: OprfMessage) -> wire::Oprf {
    use wire::oprf::Body;
    let body = match message {
        OprfMessage::ReceiverSetup(s) => Body::ReceiverSetup(receiver_setup_to_wire(s)),
        OprfMessage::SenderSetup(s) => Body::SenderSetup(sender_setup_to_wire(s)),
        OprfMessage::Seeds(data) => Body::Seeds(data),
        OprfMessage::Correction(data) => Body::Correction(data),
        OprfMessage::Opening(data) => Body::Opening(data),
        OprfMessage::Check(data) => Body::Check(data),
        OprfMessage::Outputs(data) => Body::Outputs(data),
        OprfMessage::Matches(data) => Body::Matches(data),
    };
    wire::Oprf { body: Some(body) }
}

fn oprf_from_wire(message: wire::Oprf) -> Result<OprfMessage, ProtocolError> {
    use wire::oprf::Body;
    Ok(match message.body.ok_or(ProtocolError::Malformed("oprf message without a body"))? {
        Body::ReceiverSetup(s) => OprfMessage::ReceiverSetup(receiver_setup_from_wire(s)),
        Body::SenderSetup(s) => OprfMessage::SenderSetup(sender_setup_from_wire(s)),
        Body::Seeds(data) => OprfMessage::Seeds(data),
        Body::Correction(data) => OprfMessage::Correction(data),
        Body::Opening(data) => OprfMessage::Opening(data),
        Body::Check(data) => OprfMessage::Check(data),
        Body::Outputs(data) => OprfMessage::Outputs(data),
        Body::Matches(data) => OprfMessage::Matches(data),
    })
}

fn elements(chunk: &[Element]) -> wire::Elements {
    wire::Elements { data: Element::join_chunk(chunk) }
}

fn parse(elements: wire::Elements) -> Result<Vec<Element>, ProtocolError> {
    Ok(Element::parse_chunk(&elements.data)?)
}

/// Engine → wire, partner side.
pub fn partner_to_wire(message: PartnerMessage) -> wire::PartnerMessage {
    let body = match message {
        PartnerMessage::Hello(h) => PartnerBody::Hello(wire::Hello {
            version: h.version,
            campaign: h.campaign,
            profile: h.profile,
            reveal: reveal_to_wire(h.reveal) as i32,
            partner_set_size: h.partner_set_size,
            key_fingerprint: h.key_fingerprint,
            protocols: h.protocols.into_iter().map(|p| protocol_to_wire(p) as i32).collect(),
            run: h.run.map(shard_run_to_wire),
        }),
        PartnerMessage::PartnerElements(c) => PartnerBody::PartnerElements(elements(&c)),
        PartnerMessage::ReblindedOwnerElements(c) => PartnerBody::ReblindedOwnerElements(elements(&c)),
        PartnerMessage::Finished => PartnerBody::Finished(wire::Finished {}),
        PartnerMessage::Oprf(m) => PartnerBody::Oprf(oprf_to_wire(m)),
    };
    wire::PartnerMessage { body: Some(body) }
}

#[cfg(feature = "server")]
/// Wire → engine, partner side.
pub fn partner_from_wire(message: wire::PartnerMessage) -> Result<PartnerMessage, ProtocolError> {
    Ok(match message.body.ok_or(ProtocolError::Malformed("partner message without a body"))? {
        PartnerBody::Hello(h) => PartnerMessage::Hello(Hello {
            version: h.version,
            campaign: h.campaign,
            profile: h.profile,
            reveal: reveal_from_wire(h.reveal)?,
            partner_set_size: h.partner_set_size,
            key_fingerprint: h.key_fingerprint,
            protocols: protocols_from_wire(&h.protocols)?,
            run: h.run.map(shard_run_from_wire).transpose()?,
        }),
        PartnerBody::PartnerElements(e) => PartnerMessage::PartnerElements(parse(e)?),
        PartnerBody::ReblindedOwnerElements(e) => PartnerMessage::ReblindedOwnerElements(parse(e)?),
        PartnerBody::Finished(_) => PartnerMessage::Finished,
        PartnerBody::Oprf(m) => PartnerMessage::Oprf(oprf_from_wire(m)?),
    })
}

#[cfg(feature = "server")]
/// Engine → wire, owner side.
pub fn owner_to_wire(message: OwnerMessage) -> wire::OwnerMessage {
    let body = match message {
        OwnerMessage::Accept(a) => OwnerBody::Accept(wire::Accept {
            version: a.version,
            owner_set_size: a.owner_set_size,
            max_chunk: a.max_chunk,
            protocol: protocol_to_wire(a.protocol) as i32,
        }),
        OwnerMessage::ReblindedPartnerElements(c) => OwnerBody::ReblindedPartnerElements(elements(&c)),
        OwnerMessage::OwnerElements(c) => OwnerBody::OwnerElements(elements(&c)),
        OwnerMessage::Summary(s) => OwnerBody::Summary(wire::Summary {
            partner_set_size: s.partner_set_size,
            owner_set_size: s.owner_set_size,
            intersection: s.intersection,
        }),
        OwnerMessage::Oprf(m) => OwnerBody::Oprf(oprf_to_wire(m)),
    };
    wire::OwnerMessage { body: Some(body) }
}

/// Wire → engine, owner side.
pub fn owner_from_wire(message: wire::OwnerMessage) -> Result<OwnerMessage, ProtocolError> {
    Ok(match message.body.ok_or(ProtocolError::Malformed("owner message without a body"))? {
        OwnerBody::Accept(a) => OwnerMessage::Accept(Accept {
            version: a.version,
            owner_set_size: a.owner_set_size,
            max_chunk: a.max_chunk,
            protocol: accepted_protocol_from_wire(a.protocol)?,
        }),
        OwnerBody::ReblindedPartnerElements(e) => OwnerMessage::ReblindedPartnerElements(parse(e)?),
        OwnerBody::OwnerElements(e) => OwnerMessage::OwnerElements(parse(e)?),
        OwnerBody::Summary(s) => OwnerMessage::Summary(Summary {
            partner_set_size: s.partner_set_size,
            owner_set_size: s.owner_set_size,
            intersection: s.intersection,
        }),
        OwnerBody::Oprf(m) => OwnerMessage::Oprf(oprf_from_wire(m)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md §13.4's example of a hello's `run`, byte for byte.
    #[test]
    fn protocol_doc_shard_run_bytes_hold() {
        use prost::Message;
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section = doc.split("### 13.4").nth(1).expect("PROTOCOL.md has a §13.4");
        let block = section.split("```").nth(1).expect("§13.4 has a block of bytes");
        let bytes: Vec<u8> = block.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex bytes")).collect();
        let run = ShardRun {
            run_id: std::array::from_fn(|i| i as u8),
            shard_index: 2,
            shard_count: 8,
            run_set_size: 1_000_000,
        };
        let hello = wire::Hello { run: Some(shard_run_to_wire(run)), ..Default::default() };
        assert_eq!(hello.encode_to_vec(), bytes);
        assert_eq!(wire::Hello::decode(bytes.as_slice()).unwrap().run.map(shard_run_from_wire), Some(Ok(run)));
    }

    #[test]
    fn roundtrips_and_rejects_malformed() {
        let hello = PartnerMessage::Hello(Hello {
            version: 1,
            campaign: "c".into(),
            profile: "idmatch-v1".into(),
            reveal: Reveal::Count,
            partner_set_size: 7,
            key_fingerprint: vec![3; 32],
            protocols: vec![Protocol::Oprf, Protocol::Ecdh],
            run: None,
        });
        assert_eq!(partner_from_wire(partner_to_wire(hello.clone())).unwrap(), hello);
        let PartnerMessage::Hello(mut sharded) = hello.clone() else { unreachable!() };
        sharded.run = Some(ShardRun { run_id: [7; 16], shard_index: 2, shard_count: 3, run_set_size: 20 });
        let sharded = PartnerMessage::Hello(sharded);
        assert_eq!(partner_from_wire(partner_to_wire(sharded.clone())).unwrap(), sharded);
        // A run id other than 16 bytes, N out of range, or a shard outside 0..N.
        for (run_id, shard_index, shard_count) in [(15, 0, 2), (16, 0, 0), (16, 2, 2), (16, 0, 4097)] {
            let run = wire::ShardRun { run_id: vec![1; run_id], shard_index, shard_count, run_set_size: 9 };
            let message = wire::PartnerMessage {
                body: Some(PartnerBody::Hello(wire::Hello { reveal: 1, run: Some(run), ..Default::default() })),
            };
            assert!(
                matches!(partner_from_wire(message), Err(ProtocolError::Malformed(_))),
                "{run_id} {shard_index}/{shard_count}"
            );
        }
        let accept =
            OwnerMessage::Accept(Accept { version: 1, owner_set_size: 9, max_chunk: 0, protocol: Protocol::Oprf });
        assert_eq!(owner_from_wire(owner_to_wire(accept.clone())).unwrap(), accept);
        let setup = OprfMessage::SenderSetup(SenderSetup {
            version: 2,
            sender_set_size: 5,
            height: 256,
            sparse_len: 40,
            width: 511,
            output_len: 6,
            max_chunk_bytes: 4096,
            hash_key: vec![1; 16],
            ot_points: vec![2; 64],
            commitment: vec![4; 32],
        });
        for m in [
            setup,
            OprfMessage::Seeds(vec![5; 32]),
            OprfMessage::Correction(vec![1, 2]),
            OprfMessage::Opening(vec![6; 16]),
            OprfMessage::Check(vec![7; 5120]),
            OprfMessage::Outputs(vec![3]),
            OprfMessage::Matches(vec![]),
        ] {
            assert_eq!(
                owner_from_wire(owner_to_wire(OwnerMessage::Oprf(m.clone()))).unwrap(),
                OwnerMessage::Oprf(m.clone())
            );
            assert_eq!(
                partner_from_wire(partner_to_wire(PartnerMessage::Oprf(m.clone()))).unwrap(),
                PartnerMessage::Oprf(m)
            );
        }
        // An owner from before the field accepts with ECDH; engines a newer client
        // offers are skipped, a hello offering only unknown ones is refused.
        let old_accept =
            wire::OwnerMessage { body: Some(OwnerBody::Accept(wire::Accept { version: 1, ..Default::default() })) };
        assert!(matches!(
            owner_from_wire(old_accept),
            Ok(OwnerMessage::Accept(Accept { protocol: Protocol::Ecdh, .. }))
        ));
        let hello_with = |protocols: Vec<i32>| wire::PartnerMessage {
            body: Some(PartnerBody::Hello(wire::Hello { reveal: 1, protocols, ..Default::default() })),
        };
        let Ok(PartnerMessage::Hello(h)) = partner_from_wire(hello_with(vec![9, 2, 1])) else { panic!() };
        assert_eq!(h.protocols, [Protocol::Oprf, Protocol::Ecdh]);
        // A million entries: each known engine once, in the order first offered.
        let long: Vec<i32> = [1, 2, 7].into_iter().cycle().take(1_000_000).collect();
        let Ok(PartnerMessage::Hello(h)) = partner_from_wire(hello_with(long)) else { panic!() };
        assert_eq!(h.protocols, [Protocol::Ecdh, Protocol::Oprf]);
        let Ok(PartnerMessage::Hello(h)) = partner_from_wire(hello_with(vec![])) else { panic!() };
        assert_eq!(h.offered_protocols(), [Protocol::Ecdh]);
        assert_eq!(
            partner_from_wire(hello_with(vec![9])),
            Err(ProtocolError::Malformed("the hello offers no protocol this owner knows"))
        );
        let empty_oprf = wire::PartnerMessage { body: Some(PartnerBody::Oprf(wire::Oprf { body: None })) };
        assert_eq!(partner_from_wire(empty_oprf), Err(ProtocolError::Malformed("oprf message without a body")));
        let chunk = OwnerMessage::OwnerElements(vec![Element([1; 32]), Element([2; 32])]);
        assert_eq!(owner_from_wire(owner_to_wire(chunk.clone())).unwrap(), chunk);
        assert_eq!(
            partner_from_wire(wire::PartnerMessage { body: None }),
            Err(ProtocolError::Malformed("partner message without a body"))
        );
        let bad =
            wire::PartnerMessage { body: Some(PartnerBody::PartnerElements(wire::Elements { data: vec![0; 31] })) };
        assert!(matches!(partner_from_wire(bad), Err(ProtocolError::ChunkLength(_))));
        let bad_reveal =
            wire::PartnerMessage { body: Some(PartnerBody::Hello(wire::Hello { reveal: 0, ..Default::default() })) };
        assert_eq!(partner_from_wire(bad_reveal), Err(ProtocolError::Malformed("unknown reveal mode")));
    }
}
