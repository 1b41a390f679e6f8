//! Drives one role's state machine ([`Endpoint`]) over a network stream.
//!
//! The driver runs on a blocking thread (never on the async runtime: blinding is
//! CPU work), connected to the async stream tasks by two channels. The inbound one
//! is unbounded, so the task reading the network never stops reading: two peers that
//! both have much to send can then never block each other (each side's buffered
//! input is bounded by the set size it accepted). It sends
//! every message the role has ready and, between outgoing chunks, takes in whatever
//! the peer has already sent, so the two directions overlap instead of
//! ping-ponging. It waits for the peer at most `idle` at a time.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc::{Sender, UnboundedReceiver};

use crate::psi::{Endpoint, ProtocolError};

/// Why a driven match stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the peer closed the stream before the match finished")]
    PeerClosed,
    #[error("the peer sent nothing for {0:?}")]
    Idle(Duration),
    #[error("transport: {0}")]
    Transport(String),
    /// The peer ended the stream with a gRPC status.
    #[error("{code:?}: {message}")]
    Remote { code: tonic::Code, message: String },
}

/// Runs `endpoint` to completion. `inbound` carries decoded peer messages (or the
/// transport's error); `outbound` takes this role's messages.
pub fn drive<E: Endpoint>(
    endpoint: &mut E,
    inbound: &mut UnboundedReceiver<Result<E::Incoming, DriveError>>,
    outbound: &Sender<E::Outgoing>,
    idle: Duration,
    runtime: &Handle,
) -> Result<(), DriveError> {
    loop {
        while let Some(message) = endpoint.poll_outgoing() {
            outbound.blocking_send(message).map_err(|_| DriveError::PeerClosed)?;
            while let Ok(incoming) = inbound.try_recv() {
                endpoint.receive(incoming?)?;
            }
        }
        if endpoint.is_done() {
            return Ok(());
        }
        let incoming = runtime
            .block_on(tokio::time::timeout(idle, inbound.recv()))
            .map_err(|_| DriveError::Idle(idle))?
            .ok_or(DriveError::PeerClosed)?;
        endpoint.receive(incoming?)?;
    }
}
