//! The OPRF engine: private set intersection from an oblivious PRF built on an
//! actively secure OT extension (Orrù–Orsini–Scholl, CT-RSA 2017) and an oblivious
//! key-value store (PaXoS PSI, Pinkas–Rosulek–Trieu–Yanai, EUROCRYPT 2020, with a
//! 3-hash table as in Raghuraman–Rindal, CCS 2022), secure against a receiver or a
//! sender that deviates from the protocol, beside the ECDH engine of [`crate::psi`].
//!
//! Two roles. The **receiver** learns which of its own tokens the other side holds;
//! the **sender** learns only the receiver's set size (and, in `both` mode, which of
//! its own tokens matched, reported back by the receiver). Per reveal mode
//! ([`receiver_party`]): `partner` ⇒ the partner is the receiver; `owner` ⇒ the
//! owner is; `both` ⇒ the partner is the receiver and reports the owner's matches
//! back; `count` is not offered ([`OprfError::RevealNotOffered`]): an OPRF receiver
//! necessarily learns *which* of its tokens matched, more than a count.
//!
//! Flow (byte-exact in `docs/PROTOCOL.md` §11):
//! 1. receiver → `ReceiverSetup` (`n_R`, the OT point `A`);
//! 2. sender → `SenderSetup` (`n_S`, parameters, hash key, OT points `B_i`, a
//!    commitment to its check seed);
//! 3. receiver → `Seeds` (table seed, its check seed), `Correction` chunks
//!    (`w · h/8` bytes);
//! 4. sender → `Opening` (its check seed);
//! 5. receiver → `Check` (64 combinations of its rows and table);
//! 6. sender → `Outputs` chunks (`n_S · ℓ2/8` bytes), only if the check holds;
//! 7. receiver → `Matches` chunks (`both` only), then `Finished`.
//!
//! Security (docs/PRIVACY.md, "Under `oprf`"): whatever a receiver sends, the
//! sender's outputs it can compute are those of the points its table encodes:
//! `m + 64` (`m` derived from its announced set size), plus the few a search for
//! linear dependencies among 76-bit values can add, except with probability 2⁻⁴⁰;
//! it cannot evaluate the sender's function offline. The sender
//! sees the correction only under one-time pads it cannot remove and the check's
//! combinations only masked by random rows, so it learns nothing of the receiver's
//! set but its size.
//!
//! Invariants: all randomness (OT scalars, choice string, hash key, seeds) is fresh
//! from the OS CSPRNG for every match, so nothing of one match is usable in
//! another, and opt-outs applied before the [`PreparedSet`] is built keep their
//! meaning; secrets are zeroized when no longer needed and never appear in `Debug`
//! output; every field and count from the peer is checked before use, so malformed
//! input ends the match with a precise [`OprfError`] and never panics.
//!
//! Modules (all private; what an embedder needs is re-exported here):
//! - `params`: parameter derivation (`m`, `h`, `w`, ℓ2), [`Params`];
//! - `code`: the [511, 76, 171] BCH code;
//! - `okvs`: the receiver's table (3 sparse cells and 64 dense cells per key);
//! - `ot`: base OTs on ristretto255;
//! - `kernel`: hashing domains, PRG, transposes, check sums and outputs;
//! - `message`, `error`: the messages ([`OprfMessage`], …) and [`OprfError`];
//! - `receiver`, `sender`: one state machine per role ([`OprfReceiver`],
//!   [`OprfSender`]); [`run_in_memory`] drives both in one process;
//! - `party`: the owner's and the partner's side of an `oprf` match stream
//!   ([`OprfOwner`], [`OprfPartner`]), the roles wrapped in the messages the gRPC
//!   service carries for either engine.

#[cfg(test)]
mod cheating;
mod code;
mod error;
mod kernel;
mod message;
mod okvs;
mod ot;
mod params;
mod party;
mod receiver;
mod sender;

use std::time::{Duration, Instant};

pub use error::OprfError;
pub use message::{
    MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, OPRF_VERSION, OprfMessage, ReceiverMessage, ReceiverSetup, SenderMessage,
    SenderSetup,
};
pub use params::{Params, receiver_capacity};
pub use party::{ChunkLimits, OprfOwner, OprfPartner};
pub use receiver::{OprfReceiver, ReceiverOutcome};
pub use sender::{OprfSender, SenderOutcome};

use crate::psi::{PreparedSet, Reveal};

/// What one side of an OPRF match accepts and sends.
#[derive(Clone, Debug)]
pub struct OprfConfig {
    /// `partner`, `owner` or `both`; `count` is refused.
    pub reveal: Reveal,
    /// Smallest peer set accepted (distinct tokens).
    pub min_peer_set: u64,
    /// Largest peer set accepted (distinct tokens).
    pub max_peer_set: u64,
    /// Largest chunk, in bytes, this side accepts (announced to the peer).
    pub max_chunk_bytes: u32,
    /// Largest chunk this side sends (also capped by the peer's announced limit).
    pub send_chunk_bytes: u32,
}

impl OprfConfig {
    /// Any peer set size, 2 MiB chunks both ways.
    pub fn new(reveal: Reveal) -> OprfConfig {
        OprfConfig {
            reveal,
            min_peer_set: 0,
            max_peer_set: params::MAX_SET_SIZE,
            max_chunk_bytes: MAX_CHUNK_BYTES,
            send_chunk_bytes: MAX_CHUNK_BYTES,
        }
    }

    /// Whether the receiver reports matches back (`both`); refuses `count` and chunk
    /// sizes out of range.
    fn report_back(&self) -> Result<bool, OprfError> {
        check_chunk_limit("max_chunk_bytes", self.max_chunk_bytes)?;
        check_chunk_limit("send_chunk_bytes", self.send_chunk_bytes)?;
        match self.reveal {
            Reveal::Partner | Reveal::Owner => Ok(false),
            Reveal::Both => Ok(true),
            Reveal::Count => Err(OprfError::RevealNotOffered(Reveal::Count)),
        }
    }
}

/// One of the two parties of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// The owner (the member audience, the server).
    Owner,
    /// The partner (the client).
    Partner,
}

/// The party that plays the OPRF receiver for `reveal` (the other one is the
/// sender): `partner` and `both` ⇒ the partner, `owner` ⇒ the owner; `count` ⇒
/// [`OprfError::RevealNotOffered`].
pub fn receiver_party(reveal: Reveal) -> Result<Party, OprfError> {
    match reveal {
        Reveal::Partner | Reveal::Both => Ok(Party::Partner),
        Reveal::Owner => Ok(Party::Owner),
        Reveal::Count => Err(OprfError::RevealNotOffered(Reveal::Count)),
    }
}

/// A chunk limit announced by a peer (or configured) must be within
/// `MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES`.
fn check_chunk_limit(what: &'static str, value: u32) -> Result<(), OprfError> {
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&value) {
        return Err(OprfError::BadChunkLimit { what, value, min: MIN_CHUNK_BYTES, max: MAX_CHUNK_BYTES });
    }
    Ok(())
}

/// A chunk is non-empty, within `max` bytes, and does not take its stream past the
/// announced `total` bytes.
fn check_chunk(what: &'static str, len: usize, max: u32, received: u64, total: u64) -> Result<(), OprfError> {
    if len == 0 || len > max as usize {
        return Err(OprfError::BadChunk { what, len, max: max as usize });
    }
    if received + len as u64 > total {
        return Err(OprfError::TooMuchData { what, expected: total, received: received + len as u64 });
    }
    Ok(())
}

/// An output (at most 16 bytes) as a `u128` with its first byte most significant,
/// zero-padded: outputs compare as byte strings.
fn output_key(output: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    bytes[..output.len()].copy_from_slice(output);
    u128::from_be_bytes(bytes)
}

/// One message as it crossed the in-memory wire.
#[derive(Clone, Copy, Debug)]
pub enum Observed<'m> {
    /// Sent by the receiver.
    FromReceiver(&'m ReceiverMessage),
    /// Sent by the sender.
    FromSender(&'m SenderMessage),
}

/// Which side failed, and how.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OprfMatchError {
    #[error("receiver: {0}")]
    /// The receiver failed (or refused the sender's message).
    Receiver(OprfError),
    #[error("sender: {0}")]
    /// The sender failed (or refused the receiver's message).
    Sender(OprfError),
    #[error("the match stalled before both sides finished (a protocol bug)")]
    /// Neither side had anything to send (a bug, never the data).
    Stalled,
}

/// Payload bytes and messages in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Payload bytes the receiver sent.
    pub receiver_to_sender_bytes: u64,
    /// Payload bytes the sender sent.
    pub sender_to_receiver_bytes: u64,
    /// Messages the receiver sent.
    pub receiver_messages: u64,
    /// Messages the sender sent.
    pub sender_messages: u64,
}

/// Drives `receiver` and `sender` to completion in one process, showing every
/// message to `observe`; returns the traffic.
pub fn run_in_memory(
    receiver: &mut OprfReceiver<'_>,
    sender: &mut OprfSender<'_>,
    mut observe: impl FnMut(Observed<'_>),
) -> Result<Traffic, OprfMatchError> {
    let mut traffic = Traffic::default();
    loop {
        let mut progressed = false;
        while let Some(message) = receiver.poll_outgoing() {
            observe(Observed::FromReceiver(&message));
            traffic.receiver_to_sender_bytes += message.payload_len() as u64;
            traffic.receiver_messages += 1;
            sender.receive(message).map_err(OprfMatchError::Sender)?;
            progressed = true;
        }
        while let Some(message) = sender.poll_outgoing() {
            observe(Observed::FromSender(&message));
            traffic.sender_to_receiver_bytes += message.payload_len() as u64;
            traffic.sender_messages += 1;
            receiver.receive(message).map_err(OprfMatchError::Receiver)?;
            progressed = true;
        }
        if receiver.is_done() && sender.is_done() {
            return Ok(traffic);
        }
        if !progressed {
            return Err(OprfMatchError::Stalled);
        }
    }
}

/// The result of [`match_local`]: each party's matches where its reveal mode gives
/// them, and the traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalOutcome {
    /// `matched[i]` per owner token, where the mode lets the owner learn it.
    pub owner_matched: Option<Vec<bool>>,
    /// `matched[i]` per partner token, where the mode lets the partner learn it.
    pub partner_matched: Option<Vec<bool>>,
    /// Distinct matching tokens.
    pub intersection: u64,
    /// Bytes and messages each way.
    pub traffic: Traffic,
    /// Wall time of the match (both roles).
    pub wall: Duration,
}

/// Matches an owner's and a partner's prepared sets in one process with the roles
/// of [`receiver_party`] (what `idmatch match --protocol oprf` needs).
pub fn match_local(owner: &PreparedSet, partner: &PreparedSet, reveal: Reveal) -> Result<LocalOutcome, OprfMatchError> {
    let start = Instant::now();
    let role = receiver_party(reveal).map_err(OprfMatchError::Receiver)?;
    let (receiving, sending) = match role {
        Party::Partner => (partner, owner),
        Party::Owner => (owner, partner),
    };
    let mut receiver = OprfReceiver::new(OprfConfig::new(reveal), receiving).map_err(OprfMatchError::Receiver)?;
    let mut sender = OprfSender::new(OprfConfig::new(reveal), sending).map_err(OprfMatchError::Sender)?;
    let traffic = run_in_memory(&mut receiver, &mut sender, |_| {})?;
    let r = receiver.outcome().ok_or(OprfMatchError::Stalled)?;
    let s = sender.outcome().ok_or(OprfMatchError::Stalled)?;
    let (receiver_matched, sender_matched) = (Some(r.matched), s.matched);
    let (owner_matched, partner_matched) = match role {
        Party::Partner => (sender_matched, receiver_matched),
        Party::Owner => (receiver_matched, sender_matched),
    };
    Ok(LocalOutcome { owner_matched, partner_matched, intersection: r.intersection, traffic, wall: start.elapsed() })
}
