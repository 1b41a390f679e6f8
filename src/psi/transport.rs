//! The in-memory transport: runs both roles in one process, passing the very
//! messages a network transport would carry. Used by `idmatch match` on two local
//! files and by tests; an optional observer sees every message (transcript tests).

use super::error::ProtocolError;
use super::message::{OwnerMessage, PartnerMessage};
use super::owner::Owner;
use super::partner::Partner;

/// One message as it crossed the in-memory wire.
#[derive(Clone, Copy, Debug)]
pub enum Observed<'m> {
    /// A message the partner sent to the owner.
    FromPartner(&'m PartnerMessage),
    /// A message the owner sent to the partner.
    FromOwner(&'m OwnerMessage),
}

/// Which side failed, and how.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalMatchError {
    /// The owner refused a message from the partner.
    #[error("owner: {0}")]
    Owner(ProtocolError),
    /// The partner refused a message from the owner.
    #[error("partner: {0}")]
    Partner(ProtocolError),
    /// Neither side had anything to send but the match was not done (a protocol bug).
    #[error("the match stalled before both sides finished (a protocol bug)")]
    Stalled,
}

/// Drives `owner` and `partner` to completion, showing every message to `observe`:
/// the ECDH engine's [`Owner`] and [`Partner`], or the OPRF engine's sides
/// ([`super::oprf::OprfOwner`], [`super::oprf::OprfPartner`]) after their accept.
pub fn run_in_memory<O, P>(
    owner: &mut O,
    partner: &mut P,
    mut observe: impl FnMut(Observed<'_>),
) -> Result<(), LocalMatchError>
where
    O: Endpoint<Incoming = PartnerMessage, Outgoing = OwnerMessage>,
    P: Endpoint<Incoming = OwnerMessage, Outgoing = PartnerMessage>,
{
    loop {
        let mut progressed = false;
        while let Some(message) = partner.poll_outgoing() {
            observe(Observed::FromPartner(&message));
            owner.receive(message).map_err(LocalMatchError::Owner)?;
            progressed = true;
        }
        while let Some(message) = owner.poll_outgoing() {
            observe(Observed::FromOwner(&message));
            partner.receive(message).map_err(LocalMatchError::Partner)?;
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

/// What every transport needs from a role's state machine.
pub trait Endpoint {
    /// Messages this role receives.
    type Incoming;
    /// Messages this role sends.
    type Outgoing;
    /// Handles one message from the peer; an error ends the match.
    fn receive(&mut self, message: Self::Incoming) -> Result<(), ProtocolError>;
    /// The next message to send, if one is ready.
    fn poll_outgoing(&mut self) -> Option<Self::Outgoing>;
    /// Whether this role has finished successfully.
    fn is_done(&self) -> bool;
}

impl Endpoint for Owner<'_> {
    type Incoming = PartnerMessage;
    type Outgoing = OwnerMessage;
    fn receive(&mut self, message: PartnerMessage) -> Result<(), ProtocolError> {
        Owner::receive(self, message)
    }
    fn poll_outgoing(&mut self) -> Option<OwnerMessage> {
        Owner::poll_outgoing(self)
    }
    fn is_done(&self) -> bool {
        Owner::is_done(self)
    }
}

impl Endpoint for Partner<'_> {
    type Incoming = OwnerMessage;
    type Outgoing = PartnerMessage;
    fn receive(&mut self, message: OwnerMessage) -> Result<(), ProtocolError> {
        Partner::receive(self, message)
    }
    fn poll_outgoing(&mut self) -> Option<PartnerMessage> {
        Partner::poll_outgoing(self)
    }
    fn is_done(&self) -> bool {
        Partner::is_done(self)
    }
}
