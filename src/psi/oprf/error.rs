//! Everything that can go wrong in an OPRF match, in one enum. Each case is precise
//! enough to map onto one gRPC status code (`docs/PROTOCOL.md`, "OPRF engine").
//! Errors never carry a token, a key, a seed or any other secret.

use crate::psi::Reveal;

/// A protocol violation or refusal by either role of the OPRF engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OprfError {
    /// A message arrived that the current state does not accept.
    #[error("unexpected {message} message while {state}")]
    UnexpectedMessage { state: &'static str, message: &'static str },
    #[error("OPRF engine version {theirs} is not supported (this side speaks {ours})")]
    UnsupportedVersion { ours: u32, theirs: u32 },
    /// `count` is ECDH-only: an OPRF receiver learns which of its own tokens matched.
    #[error("reveal mode {0} is not offered by the oprf engine (use ecdh)")]
    RevealNotOffered(Reveal),
    /// The receiver's setup asks for (or omits) the report back that this side
    /// expects (`both` mode on one side only).
    #[error("reveal mode mismatch: this side {}, the peer {}", report(*ours), report(*theirs))]
    ReportBackMismatch { ours: bool, theirs: bool },
    #[error("{what} set size {size} is outside the allowed range {min}..={max}")]
    SetSizeOutOfRange { what: &'static str, size: u64, min: u64, max: u64 },
    /// The sender announced parameters other than the ones both sides derive from
    /// the set sizes.
    #[error("parameter mismatch: {what} is {theirs} on the wire but {ours} by derivation")]
    ParameterMismatch { what: &'static str, ours: u64, theirs: u64 },
    /// A fixed-length field has the wrong length.
    #[error("{what}: {len} bytes, expected {expected}")]
    BadLength { what: &'static str, len: usize, expected: usize },
    /// A chunk is empty or longer than allowed.
    #[error("{what}: a chunk of {len} bytes is not allowed (1..={max})")]
    BadChunk { what: &'static str, len: usize, max: usize },
    /// A peer announced a chunk limit outside the range this build supports.
    #[error("{what} is {value}, outside {min}..={max}")]
    BadChunkLimit { what: &'static str, value: u32, min: u32, max: u32 },
    /// A chunk is not a whole number of fixed-size items.
    #[error("{what}: a chunk of {len} bytes is not a whole number of {unit}-byte items")]
    NotMultiple { what: &'static str, len: usize, unit: usize },
    /// A chunk would take a stream past its announced total.
    #[error("{what}: {received} bytes received but {expected} were announced")]
    TooMuchData { what: &'static str, expected: u64, received: u64 },
    /// A base-OT point does not decode (non-canonical, or the identity).
    #[error("{what}: point {index} is not a canonical non-identity ristretto255 encoding")]
    BadPoint { what: &'static str, index: usize },
    /// Bits past the end of a bitmap are set.
    #[error("{what}: padding bits after the last element are not zero")]
    NonZeroPadding { what: &'static str },
    /// A configuration that cannot run (a chunk size out of range, …).
    #[error("invalid OPRF configuration: {0}")]
    BadConfig(&'static str),
    #[error("random number generator failed: {0}")]
    Rng(String),
}

fn report(on: bool) -> &'static str {
    if on { "reports matches back (both)" } else { "does not report matches back" }
}
