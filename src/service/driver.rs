//! Drives one role's state machine ([`Endpoint`]) over a network stream.
//!
//! The driver runs on a blocking thread (never on the async runtime: blinding is
//! CPU work), connected to the async stream tasks by two bounded channels. It sends
//! every message the role has ready and takes in whatever the peer has sent, also
//! while it waits for room to send, so the two directions overlap and two peers that
//! both have much to send never block each other.
//!
//! Memory invariant: nothing from the peer waits unvalidated in this process beyond
//! the inbound channel's few messages. When the driver does not take messages in,
//! the task reading the network stops reading and HTTP/2 flow control holds the peer
//! back; every message taken in goes through the state machine at once, which
//! refuses anything past the sizes it accepted. A peer that sends without reading
//! therefore cannot grow this side's memory.
//!
//! Deadlines: the driver waits for the peer at most `idle` at a time, in both
//! directions: a peer that sends nothing, or takes none of our messages (its
//! flow-control window stays full) while sending nothing either, for that long ends
//! the match.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender};

use super::measure_wire::FrameError;
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
    /// A measurement message or frame was refused (docs/PROTOCOL.md §12.9).
    #[error(transparent)]
    Measure(#[from] FrameError),
    #[error("the peer closed the stream before the match finished")]
    PeerClosed,
    #[error("the peer sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the peer took none of our messages for {0:?}")]
    Stalled(Duration),
    #[cfg(feature = "server")]
    #[error("transport: {0}")]
    Transport(String),
    /// The peer ended the stream with a gRPC status, and the kind of refusal its
    /// [`ERROR_KIND_KEY`] metadata entry named, if any.
    #[error("{code:?}: {message}")]
    Remote { code: tonic::Code, message: String, kind: Option<String> },
}

/// The metadata entry in which the owner's server names the kind of a refusal
/// (`key-mismatch`, `budget-epsilon-lifetime`, … docs/PROTOCOL.md §9): clients
/// recognise errors by it, never by the status message, whose text may change.
pub const ERROR_KIND_KEY: &str = "idmatch-error";

/// The kind a status names in [`ERROR_KIND_KEY`] (at most 64 characters of it).
pub(crate) fn error_kind(status: &tonic::Status) -> Option<String> {
    let value = status.metadata().get(ERROR_KIND_KEY)?.to_str().ok()?;
    Some(crate::psi::untrusted(value))
}

impl DriveError {
    /// The peer's status as an error, with `message` (the caller's cut of it).
    pub(crate) fn remote(status: &tonic::Status, message: String) -> DriveError {
        DriveError::Remote { code: status.code(), message, kind: error_kind(status) }
    }
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

/// The peer's next message, waiting at most `idle`: [`DriveError::Idle`] when none
/// comes, [`DriveError::PeerClosed`] when the stream ended.
pub fn receive_with_deadline<M>(inbound: &mut Inbound<M>, idle: Duration, runtime: &Handle) -> Result<M, DriveError> {
    runtime
        .block_on(async { tokio::time::timeout(idle, inbound.recv()).await })
        .map_err(|_| DriveError::Idle(idle))?
        .ok_or(DriveError::PeerClosed)?
}

/// A role the driver can run: a matching engine's [`Endpoint`], or a measurement
/// role over frames.
pub trait Driven {
    /// Messages this role receives.
    type Incoming;
    /// Messages this role sends.
    type Outgoing;
    /// Handles one message from the peer; an error ends the session.
    fn receive(&mut self, message: Self::Incoming) -> Result<(), DriveError>;
    /// The next message to send, if one is ready; an error (this side's own
    /// message could not be encoded) ends the session.
    fn poll_outgoing(&mut self) -> Result<Option<Self::Outgoing>, DriveError>;
    /// Whether this role has finished successfully.
    fn is_done(&self) -> bool;
}

impl<E: Endpoint> Driven for E {
    type Incoming = E::Incoming;
    type Outgoing = E::Outgoing;
    fn receive(&mut self, message: E::Incoming) -> Result<(), DriveError> {
        Ok(Endpoint::receive(self, message)?)
    }
    fn poll_outgoing(&mut self) -> Result<Option<E::Outgoing>, DriveError> {
        Ok(Endpoint::poll_outgoing(self))
    }
    fn is_done(&self) -> bool {
        Endpoint::is_done(self)
    }
}

/// Messages from the peer as the network task hands them over: decoded messages,
/// or the transport's error.
pub type Inbound<M> = Receiver<Result<M, DriveError>>;

/// How many peer messages may wait between the network task and the driver.
pub const INBOUND_QUEUE: usize = 4;

/// Runs `endpoint` to completion. `inbound` carries the peer's messages; each
/// outgoing message goes through `convert` (which may keep it, returning `None`)
/// into `outbound`.
pub fn drive<E: Driven, T>(
    endpoint: &mut E,
    inbound: &mut Inbound<E::Incoming>,
    outbound: &Sender<T>,
    mut convert: impl FnMut(E::Outgoing) -> Option<T>,
    idle: Duration,
    runtime: &Handle,
) -> Result<(), DriveError> {
    let mut inbound_open = true;
    loop {
        while let Some(message) = endpoint.poll_outgoing()? {
            if let Some(item) = convert(message) {
                send_taking_in(endpoint, inbound, &mut inbound_open, outbound, item, idle, runtime)?;
            }
            while let Ok(incoming) = inbound.try_recv() {
                endpoint.receive(incoming?)?;
            }
        }
        if endpoint.is_done() {
            return Ok(());
        }
        let incoming = receive_with_deadline(inbound, idle, runtime)?;
        endpoint.receive(incoming)?;
    }
}

/// What ended one wait for room in the outbound channel.
enum Waited<M, T> {
    /// Sent (`true`), or the receiving side is gone (`false`).
    Room(bool),
    /// A peer message arrived first (`None`: the peer will send no more); the item
    /// still waits to be sent.
    Incoming(Option<Result<M, DriveError>>, T),
}

/// Sends `item`, taking in the peer's messages while the outbound channel is full.
/// [`DriveError::Stalled`] when, for `idle`, the peer neither takes a message nor
/// sends one.
fn send_taking_in<E: Driven, T>(
    endpoint: &mut E,
    inbound: &mut Inbound<E::Incoming>,
    inbound_open: &mut bool,
    outbound: &Sender<T>,
    item: T,
    idle: Duration,
    runtime: &Handle,
) -> Result<(), DriveError> {
    let mut item = match outbound.try_send(item) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Closed(_)) => return Err(DriveError::PeerClosed),
        Err(TrySendError::Full(item)) => item,
    };
    loop {
        let open = *inbound_open;
        let waited = runtime.block_on(async {
            tokio::time::timeout(idle, async {
                tokio::select! {
                    biased;
                    permit = outbound.reserve() => Waited::Room(permit.map(|p| p.send(item)).is_ok()),
                    incoming = inbound.recv(), if open => Waited::Incoming(incoming, item),
                }
            })
            .await
        });
        match waited.map_err(|_| DriveError::Stalled(idle))? {
            Waited::Room(true) => return Ok(()),
            Waited::Room(false) => return Err(DriveError::PeerClosed),
            Waited::Incoming(None, back) => {
                *inbound_open = false;
                item = back;
            }
            Waited::Incoming(Some(message), back) => {
                endpoint.receive(message?)?;
                item = back;
            }
        }
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
