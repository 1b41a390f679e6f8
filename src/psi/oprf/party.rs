//! The OPRF engine inside a match stream (`docs/PROTOCOL.md` §11.9): the owner's
//! and the partner's side once `Hello`/`Accept` chose `oprf`, as [`Endpoint`]s
//! over the same [`PartnerMessage`] / [`OwnerMessage`] as the ECDH engine, so one
//! driver and one gRPC stream carry either engine.
//!
//! Each party plays the role its reveal mode gives it ([`receiver_party`]). Engine
//! messages travel as `Oprf(…)`. The receiver's `Finished` is the stream's
//! [`PartnerMessage::Finished`] when the partner receives; when the owner receives
//! (`owner` mode) it is not sent: the owner's [`Summary`] ends every match, as under
//! ECDH, and stands for it.
//!
//! Invariants: the owner holds the partner to the set size of its hello (the size
//! the owner's limits and daily budget were checked against), and the partner holds
//! the owner to the size of its accept ([`ProtocolError::AnnouncedSizeMismatch`]);
//! a message from the wrong role or out of order ends the match
//! ([`ProtocolError::UnexpectedMessage`], or the engine's
//! [`OprfError::UnexpectedMessage`](super::OprfError::UnexpectedMessage)); the partner checks the owner's summary
//! against its own counts, as under ECDH.

use std::collections::VecDeque;

use super::{
    OprfConfig, OprfMessage, OprfReceiver, OprfSender, Party, ReceiverMessage, ReceiverOutcome, SenderOutcome,
    receiver_party,
};
use crate::psi::message::{Accept, Hello, PROTOCOL_VERSION, Summary};
use crate::psi::partner::check_summary;
use crate::psi::{
    Endpoint, OwnerMessage, OwnerOutcome, PartnerMessage, PartnerOutcome, PreparedSet, Protocol, ProtocolError, Reveal,
    SetupError,
};

/// Chunk limits of one side's OPRF messages, in bytes (within
/// [`MIN_CHUNK_BYTES`](super::MIN_CHUNK_BYTES)`..=`[`MAX_CHUNK_BYTES`](super::MAX_CHUNK_BYTES)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest chunk this side accepts (announced in its setup message).
    pub max_chunk_bytes: u32,
    /// Largest chunk this side sends (also capped by the peer's limit).
    pub send_chunk_bytes: u32,
}

impl Default for ChunkLimits {
    /// 2 MiB both ways.
    fn default() -> ChunkLimits {
        ChunkLimits { max_chunk_bytes: super::MAX_CHUNK_BYTES, send_chunk_bytes: super::MAX_CHUNK_BYTES }
    }
}

/// One party's engine role, and the set size the peer announced before the engine
/// started.
enum Role<'a> {
    Receiver(OprfReceiver<'a>),
    Sender(OprfSender<'a>),
}

/// What a role's poll produced.
enum Step {
    Send(OprfMessage),
    /// The receiver's `Finished`.
    Finished,
}

impl<'a> Role<'a> {
    fn start(
        me: Party,
        reveal: Reveal,
        peer_size: u64,
        limits: ChunkLimits,
        set: &'a PreparedSet,
    ) -> Result<Role<'a>, SetupError> {
        let config = OprfConfig {
            reveal,
            min_peer_set: peer_size,
            max_peer_set: peer_size,
            max_chunk_bytes: limits.max_chunk_bytes,
            send_chunk_bytes: limits.send_chunk_bytes,
        };
        let receiver = receiver_party(reveal).map_err(SetupError::Oprf)?;
        Ok(if receiver == me {
            Role::Receiver(OprfReceiver::new(config, set).map_err(SetupError::Oprf)?)
        } else {
            Role::Sender(OprfSender::new(config, set).map_err(SetupError::Oprf)?)
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Role::Receiver(_) => "running oprf as the receiver",
            Role::Sender(_) => "running oprf as the sender",
        }
    }

    fn poll(&mut self) -> Option<Step> {
        match self {
            Role::Receiver(r) => {
                r.poll_outgoing().map(|m| OprfMessage::from_receiver(m).map_or(Step::Finished, Step::Send))
            }
            Role::Sender(s) => s.poll_outgoing().map(|m| Step::Send(OprfMessage::from_sender(m))),
        }
    }

    /// Hands the peer's engine message to the role, after checking that a setup
    /// announces the size announced at the start (`peer_size`).
    fn receive(&mut self, message: OprfMessage, peer_size: u64) -> Result<(), ProtocolError> {
        let unexpected = |state, m: OprfMessage| ProtocolError::UnexpectedMessage { state, message: m.name() };
        let name = self.name();
        match self {
            Role::Receiver(r) => {
                let message = message.into_sender_message().map_err(|m| unexpected(name, m))?;
                if let super::SenderMessage::Setup(setup) = &message {
                    check_size("oprf_sender_setup.sender_set_size", setup.sender_set_size, peer_size)?;
                }
                Ok(r.receive(message)?)
            }
            Role::Sender(s) => {
                let message = message.into_receiver_message().map_err(|m| unexpected(name, m))?;
                if let ReceiverMessage::Setup(setup) = &message {
                    check_size("oprf_receiver_setup.receiver_set_size", setup.receiver_set_size, peer_size)?;
                }
                Ok(s.receive(message)?)
            }
        }
    }

    /// The receiver's `Finished` arrived (only a sender takes it).
    fn finished(&mut self) -> Result<(), ProtocolError> {
        match self {
            Role::Sender(s) => Ok(s.receive(ReceiverMessage::Finished)?),
            Role::Receiver(_) => {
                Err(ProtocolError::UnexpectedMessage { state: "running oprf as the receiver", message: "finished" })
            }
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Role::Receiver(r) => r.is_done(),
            Role::Sender(s) => s.is_done(),
        }
    }

    fn outcome(self) -> Option<Outcome> {
        match self {
            Role::Receiver(r) => r.outcome().map(Outcome::Receiver),
            Role::Sender(s) => s.outcome().map(Outcome::Sender),
        }
    }
}

fn check_size(what: &'static str, announced: u64, expected: u64) -> Result<(), ProtocolError> {
    if announced != expected {
        return Err(ProtocolError::AnnouncedSizeMismatch { what, announced, expected });
    }
    Ok(())
}

enum Outcome {
    Receiver(ReceiverOutcome),
    Sender(SenderOutcome),
}

impl Outcome {
    /// This side's matches, where its role gives them.
    fn matched(self) -> Option<Vec<bool>> {
        match self {
            Outcome::Receiver(r) => Some(r.matched),
            Outcome::Sender(s) => s.matched,
        }
    }
}

/// The owner's side of an `oprf` match, from the accept to the summary.
pub struct OprfOwner<'a> {
    role: Option<Role<'a>>,
    reveal: Reveal,
    partner_set_size: u64,
    owner_set_size: u64,
    outbox: VecDeque<OwnerMessage>,
    outcome: Option<OwnerOutcome>,
}

impl<'a> OprfOwner<'a> {
    /// Starts the owner's side for a hello that passed
    /// [`OwnerConfig::check_hello`](crate::psi::OwnerConfig::check_hello) with
    /// `oprf` chosen; the accept is the first message to send. `set` is the owner's
    /// prepared set, after opt-outs.
    pub fn new(hello: &Hello, set: &'a PreparedSet, limits: ChunkLimits) -> Result<OprfOwner<'a>, SetupError> {
        let role = Role::start(Party::Owner, hello.reveal, hello.partner_set_size, limits, set)?;
        let accept = Accept {
            version: PROTOCOL_VERSION,
            owner_set_size: set.len() as u64,
            max_chunk: 0,
            protocol: Protocol::Oprf,
        };
        Ok(OprfOwner {
            role: Some(role),
            reveal: hello.reveal,
            partner_set_size: hello.partner_set_size,
            owner_set_size: set.len() as u64,
            outbox: VecDeque::from([OwnerMessage::Accept(accept)]),
            outcome: None,
        })
    }

    /// Handles one message from the partner; an error ends the match.
    pub fn receive(&mut self, message: PartnerMessage) -> Result<(), ProtocolError> {
        let Some(role) = self.role.as_mut() else {
            return Err(ProtocolError::UnexpectedMessage { state: "done", message: message.name() });
        };
        match message {
            PartnerMessage::Oprf(m) => role.receive(m, self.partner_set_size),
            PartnerMessage::Finished => role.finished(),
            other => Err(ProtocolError::UnexpectedMessage { state: role.name(), message: other.name() }),
        }
    }

    /// The next message to send, if one is ready; the summary once the engine is
    /// done.
    pub fn poll_outgoing(&mut self) -> Option<OwnerMessage> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        let role = self.role.as_mut()?;
        loop {
            match role.poll() {
                Some(Step::Send(m)) => return Some(OwnerMessage::Oprf(m)),
                // The owner's summary stands for the receiver's `Finished`.
                Some(Step::Finished) => continue,
                None => break,
            }
        }
        if !role.is_done() {
            return None;
        }
        let matched = self.role.take().and_then(Role::outcome).and_then(Outcome::matched);
        let intersection = matched.as_ref().map(|m| m.iter().filter(|&&b| b).count() as u64);
        self.outcome = Some(OwnerOutcome {
            reveal: self.reveal,
            partner_set_size: self.partner_set_size,
            owner_set_size: self.owner_set_size,
            blinded: self.owner_set_size,
            matched,
        });
        Some(OwnerMessage::Summary(Summary {
            partner_set_size: self.partner_set_size,
            owner_set_size: self.owner_set_size,
            intersection: (self.reveal == Reveal::Both).then_some(intersection).flatten(),
        }))
    }

    /// Whether the match has ended (summary sent) successfully.
    pub fn is_done(&self) -> bool {
        self.outcome.is_some() && self.outbox.is_empty()
    }

    /// The result, once the match is done: in `owner` and `both` modes which owner
    /// tokens matched.
    pub fn outcome(self) -> Option<OwnerOutcome> {
        self.outcome
    }
}

/// The partner's side of an `oprf` match, from the accept to the summary.
pub struct OprfPartner<'a> {
    /// `None` once the summary is checked.
    role: Option<Role<'a>>,
    reveal: Reveal,
    partner_set_size: u64,
    owner_set_size: u64,
    outcome: Option<PartnerOutcome>,
}

impl<'a> OprfPartner<'a> {
    /// Starts the partner's side after an accept that names `oprf` (and whose
    /// version the caller checked): `owner_set_size` is the accept's. In `partner`
    /// and `both` modes (the partner receives) its setup is the first message.
    pub fn new(
        reveal: Reveal,
        owner_set_size: u64,
        set: &'a PreparedSet,
        limits: ChunkLimits,
    ) -> Result<OprfPartner<'a>, SetupError> {
        Ok(OprfPartner {
            role: Some(Role::start(Party::Partner, reveal, owner_set_size, limits, set)?),
            reveal,
            partner_set_size: set.len() as u64,
            owner_set_size,
            outcome: None,
        })
    }

    /// Handles one message from the owner; an error ends the match.
    pub fn receive(&mut self, message: OwnerMessage) -> Result<(), ProtocolError> {
        let Some(role) = self.role.as_mut() else {
            return Err(ProtocolError::UnexpectedMessage { state: "done", message: message.name() });
        };
        match message {
            OwnerMessage::Oprf(m) => role.receive(m, self.owner_set_size),
            OwnerMessage::Summary(summary) => {
                if let Role::Sender(_) = role {
                    // `owner` mode: the owner, as receiver, ends with its summary.
                    role.finished()?;
                }
                if !role.is_done() {
                    return Err(ProtocolError::UnexpectedMessage { state: role.name(), message: "summary" });
                }
                // A partner sender (owner mode) has no matches: no report back to it.
                let matched = self.role.take().and_then(Role::outcome).and_then(Outcome::matched);
                self.on_summary(&summary, matched)
            }
            other => Err(ProtocolError::UnexpectedMessage { state: role.name(), message: other.name() }),
        }
    }

    fn on_summary(&mut self, summary: &Summary, matched: Option<Vec<bool>>) -> Result<(), ProtocolError> {
        let intersection = matched.as_ref().map(|m| m.iter().filter(|&&b| b).count() as u64);
        let expected =
            Summary { partner_set_size: self.partner_set_size, owner_set_size: self.owner_set_size, intersection };
        check_summary(summary, &expected)?;
        self.outcome = Some(PartnerOutcome {
            reveal: self.reveal,
            partner_set_size: self.partner_set_size,
            owner_set_size: self.owner_set_size,
            blinded: self.partner_set_size,
            intersection,
            matched,
        });
        Ok(())
    }

    /// The next message to send, if one is ready.
    pub fn poll_outgoing(&mut self) -> Option<PartnerMessage> {
        self.role.as_mut()?.poll().map(|step| match step {
            Step::Send(m) => PartnerMessage::Oprf(m),
            Step::Finished => PartnerMessage::Finished,
        })
    }

    /// Whether the match has ended (the owner's summary checked) successfully.
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The result, once the match is done: in `partner` and `both` modes which
    /// partner tokens matched, and the intersection size.
    pub fn outcome(self) -> Option<PartnerOutcome> {
        self.outcome
    }
}

impl Endpoint for OprfOwner<'_> {
    type Incoming = PartnerMessage;
    type Outgoing = OwnerMessage;
    fn receive(&mut self, message: PartnerMessage) -> Result<(), ProtocolError> {
        OprfOwner::receive(self, message)
    }
    fn poll_outgoing(&mut self) -> Option<OwnerMessage> {
        OprfOwner::poll_outgoing(self)
    }
    fn is_done(&self) -> bool {
        OprfOwner::is_done(self)
    }
}

impl Endpoint for OprfPartner<'_> {
    type Incoming = OwnerMessage;
    type Outgoing = PartnerMessage;
    fn receive(&mut self, message: OwnerMessage) -> Result<(), ProtocolError> {
        OprfPartner::receive(self, message)
    }
    fn poll_outgoing(&mut self) -> Option<PartnerMessage> {
        OprfPartner::poll_outgoing(self)
    }
    fn is_done(&self) -> bool {
        OprfPartner::is_done(self)
    }
}
