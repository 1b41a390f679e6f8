//! Drives one role's state machine ([`Endpoint`]) over a network stream.
//!
//! The driver runs on a blocking thread (never on the async runtime: blinding is
//! CPU work), connected to the async stream tasks by two channels. The inbound one
//! is unbounded, so the task reading the network never stops reading: two peers that
//! both have much to send can then never block each other (each side's buffered
//! input is bounded by the set size it accepted). It sends
//! every message the role has ready and, between outgoing chunks, takes in whatever
//! the peer has already sent, so the two directions overlap instead of
//! ping-ponging. It waits for the peer at most `idle` at a time, in both directions:
//! a peer that sends nothing, or takes none of our messages (its flow-control window
//! stays full), for that long ends the match.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Sender, UnboundedReceiver};

use crate::psi::{Endpoint, ProtocolError, SetupError};

/// Why a driven match stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// This side's state machine could not start (never the peer's fault).
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("the peer closed the stream before the match finished")]
    PeerClosed,
    #[error("the peer sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the peer took none of our messages for {0:?}")]
    Stalled(Duration),
    #[error("transport: {0}")]
    Transport(String),
    /// The peer ended the stream with a gRPC status.
    #[error("{code:?}: {message}")]
    Remote { code: tonic::Code, message: String },
}

/// Sends `value` into `tx`, waiting at most `deadline` for room: [`DriveError::Stalled`]
/// when the receiving side takes nothing for that long, [`DriveError::PeerClosed`]
/// when it is gone.
pub fn send_with_deadline<T>(tx: &Sender<T>, value: T, deadline: Duration, runtime: &Handle) -> Result<(), DriveError> {
    let value = match tx.try_send(value) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Closed(_)) => return Err(DriveError::PeerClosed),
        Err(TrySendError::Full(value)) => value,
    };
    match runtime.block_on(async { tokio::time::timeout(deadline, tx.send(value)).await }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(DriveError::PeerClosed),
        Err(_) => Err(DriveError::Stalled(deadline)),
    }
}

/// Runs `endpoint` to completion. `inbound` carries decoded peer messages (or the
/// transport's error); `send` takes this role's messages (and should give up after
/// `idle`, see [`send_with_deadline`]).
pub fn drive<E: Endpoint>(
    endpoint: &mut E,
    inbound: &mut UnboundedReceiver<Result<E::Incoming, DriveError>>,
    mut send: impl FnMut(E::Outgoing) -> Result<(), DriveError>,
    idle: Duration,
    runtime: &Handle,
) -> Result<(), DriveError> {
    loop {
        while let Some(message) = endpoint.poll_outgoing() {
            send(message)?;
            while let Ok(incoming) = inbound.try_recv() {
                endpoint.receive(incoming?)?;
            }
        }
        if endpoint.is_done() {
            return Ok(());
        }
        let incoming = runtime
            .block_on(async { tokio::time::timeout(idle, inbound.recv()).await })
            .map_err(|_| DriveError::Idle(idle))?
            .ok_or(DriveError::PeerClosed)?;
        endpoint.receive(incoming?)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_that_takes_nothing_stalls_the_sender_within_the_deadline() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let deadline = Duration::from_millis(50);
        send_with_deadline(&tx, 1, deadline, runtime.handle()).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(send_with_deadline(&tx, 2, deadline, runtime.handle()), Err(DriveError::Stalled(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(rx);
        assert!(matches!(send_with_deadline(&tx, 3, deadline, runtime.handle()), Err(DriveError::PeerClosed)));
    }
}
