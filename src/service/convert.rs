//! Conversions between the engine's protocol messages ([`crate::psi::message`]) and
//! the protobuf wire types ([`crate::wire`]). Decoding validates everything the
//! protobuf layer cannot: a message body is present, the reveal mode is known, and a
//! chunk is a whole number of 32-byte elements.

use crate::psi::message::{Accept, Element, Hello, Summary};
use crate::psi::{OwnerMessage, PartnerMessage, ProtocolError, Reveal};
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

fn reveal_from_wire(value: i32) -> Result<Reveal, ProtocolError> {
    match wire::Reveal::try_from(value) {
        Ok(wire::Reveal::Partner) => Ok(Reveal::Partner),
        Ok(wire::Reveal::Owner) => Ok(Reveal::Owner),
        Ok(wire::Reveal::Both) => Ok(Reveal::Both),
        Ok(wire::Reveal::Count) => Ok(Reveal::Count),
        Ok(wire::Reveal::Unspecified) | Err(_) => Err(ProtocolError::Malformed("unknown reveal mode")),
    }
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
        }),
        PartnerMessage::PartnerElements(c) => PartnerBody::PartnerElements(elements(&c)),
        PartnerMessage::ReblindedOwnerElements(c) => PartnerBody::ReblindedOwnerElements(elements(&c)),
        PartnerMessage::Finished => PartnerBody::Finished(wire::Finished {}),
    };
    wire::PartnerMessage { body: Some(body) }
}

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
        }),
        PartnerBody::PartnerElements(e) => PartnerMessage::PartnerElements(parse(e)?),
        PartnerBody::ReblindedOwnerElements(e) => PartnerMessage::ReblindedOwnerElements(parse(e)?),
        PartnerBody::Finished(_) => PartnerMessage::Finished,
    })
}

/// Engine → wire, owner side.
pub fn owner_to_wire(message: OwnerMessage) -> wire::OwnerMessage {
    let body = match message {
        OwnerMessage::Accept(a) => OwnerBody::Accept(wire::Accept {
            version: a.version,
            owner_set_size: a.owner_set_size,
            max_chunk: a.max_chunk,
        }),
        OwnerMessage::ReblindedPartnerElements(c) => OwnerBody::ReblindedPartnerElements(elements(&c)),
        OwnerMessage::OwnerElements(c) => OwnerBody::OwnerElements(elements(&c)),
        OwnerMessage::Summary(s) => OwnerBody::Summary(wire::Summary {
            partner_set_size: s.partner_set_size,
            owner_set_size: s.owner_set_size,
            intersection: s.intersection,
        }),
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
        }),
        OwnerBody::ReblindedPartnerElements(e) => OwnerMessage::ReblindedPartnerElements(parse(e)?),
        OwnerBody::OwnerElements(e) => OwnerMessage::OwnerElements(parse(e)?),
        OwnerBody::Summary(s) => OwnerMessage::Summary(Summary {
            partner_set_size: s.partner_set_size,
            owner_set_size: s.owner_set_size,
            intersection: s.intersection,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_rejects_malformed() {
        let hello = PartnerMessage::Hello(Hello {
            version: 1,
            campaign: "c".into(),
            profile: "idmatch-v1".into(),
            reveal: Reveal::Count,
            partner_set_size: 7,
            key_fingerprint: vec![3; 32],
        });
        assert_eq!(partner_from_wire(partner_to_wire(hello.clone())).unwrap(), hello);
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
