//! Everything that can go wrong in a match, in one place. Each case is precise
//! enough to map onto one gRPC status code (see `docs/PROTOCOL.md`).

use super::group::ElementError;
use super::message::{ChunkLengthError, Reveal};

/// A protocol violation or refusal, by either party.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message arrived that the current state does not accept.
    #[error("unexpected {message} message while {state}")]
    UnexpectedMessage { state: &'static str, message: &'static str },
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    UnsupportedVersion { ours: u32, theirs: u32 },
    #[error("normalization profile mismatch: this side uses {ours}, the peer uses {theirs}")]
    ProfileMismatch { ours: String, theirs: String },
    #[error("campaign mismatch: this side serves {ours}, the peer asked for {theirs}")]
    CampaignMismatch { ours: String, theirs: String },
    #[error("reveal mode {0} is not allowed here")]
    RevealNotAllowed(Reveal),
    #[error("partner set size {size} is outside the allowed range {min}..={max}")]
    SetSizeOutOfRange { size: u64, min: u64, max: u64 },
    #[error("a chunk of {len} elements is not allowed (1..={max})")]
    BadChunkSize { len: usize, max: u32 },
    #[error("{what}: received {received} elements but {expected} were announced")]
    TooManyElements { what: &'static str, expected: u64, received: u64 },
    #[error(transparent)]
    ChunkLength(#[from] ChunkLengthError),
    #[error(transparent)]
    BadElement(#[from] ElementError),
    #[error("the peer's summary disagrees with this side's counts: {0}")]
    SummaryMismatch(&'static str),
    /// A wire message that does not decode into a protocol message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("random number generator failed: {0}")]
    Rng(String),
}
