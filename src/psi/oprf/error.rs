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
    UnexpectedMessage {
        /// The state this side was in.
        state: &'static str,
        /// The kind of message that arrived.
        message: &'static str,
    },
    /// The peer speaks another version of the OPRF engine.
    #[error("OPRF engine version {theirs} is not supported (this side speaks {ours})")]
    UnsupportedVersion {
        /// This side's value.
        ours: u32,
        /// The peer's value.
        theirs: u32,
    },
    /// `count` is ECDH-only: an OPRF receiver learns which of its own tokens matched.
    #[error("reveal mode {0} is not offered by the oprf engine (use ecdh)")]
    RevealNotOffered(Reveal),
    /// The receiver's setup asks for (or omits) the report back that this side
    /// expects (`both` mode on one side only).
    #[error("reveal mode mismatch: this side {}, the peer {}", report(*ours), report(*theirs))]
    ReportBackMismatch {
        /// This side's value.
        ours: bool,
        /// The peer's value.
        theirs: bool,
    },
    /// A set size (the peer's or one's own) is outside the configured range.
    #[error("{what} set size {size} is outside the allowed range {min}..={max}")]
    SetSizeOutOfRange {
        /// The field, stream or set concerned.
        what: &'static str,
        /// The announced set size (distinct tokens).
        size: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The sender announced parameters other than the ones both sides derive from
    /// the set sizes.
    #[error("parameter mismatch: {what} is {theirs} on the wire but {ours} by derivation")]
    ParameterMismatch {
        /// The field, stream or set concerned.
        what: &'static str,
        /// This side's value.
        ours: u64,
        /// The peer's value.
        theirs: u64,
    },
    /// A fixed-length field has the wrong length.
    #[error("{what}: {len} bytes, expected {expected}")]
    BadLength {
        /// The field, stream or set concerned.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The expected length or announced total, in bytes.
        expected: usize,
    },
    /// A chunk is empty or longer than allowed.
    #[error("{what}: a chunk of {len} bytes is not allowed (1..={max})")]
    BadChunk {
        /// The field, stream or set concerned.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A peer announced a chunk limit outside the range this build supports.
    #[error("{what} is {value}, outside {min}..={max}")]
    BadChunkLimit {
        /// The field, stream or set concerned.
        what: &'static str,
        /// The announced value.
        value: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// A chunk is not a whole number of fixed-size items.
    #[error("{what}: a chunk of {len} bytes is not a whole number of {unit}-byte items")]
    NotMultiple {
        /// The field, stream or set concerned.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The item size in bytes.
        unit: usize,
    },
    /// A chunk would take a stream past its announced total.
    #[error("{what}: {received} bytes received but {expected} were announced")]
    TooMuchData {
        /// The field, stream or set concerned.
        what: &'static str,
        /// The expected length or announced total, in bytes.
        expected: u64,
        /// Bytes received so far, this chunk included.
        received: u64,
    },
    /// A base-OT point does not decode (non-canonical, or the identity).
    #[error("{what}: point {index} is not a canonical non-identity ristretto255 encoding")]
    BadPoint {
        /// The field, stream or set concerned.
        what: &'static str,
        /// Position of the point in its message.
        index: usize,
    },
    /// Bits past the end of a bitmap are set.
    #[error("{what}: padding bits after the last element are not zero")]
    NonZeroPadding {
        /// The field, stream or set concerned.
        what: &'static str,
    },
    /// The receiver's correction is not what an honest receiver sends: a row of the
    /// matrix is not a code word (the consistency check of `docs/PROTOCOL.md`
    /// §11.4 failed). The sender sends no output.
    #[error("the consistency check failed: the correction matrix is not an encoding of any set (a deviating receiver)")]
    CheckFailed,
    /// The sender's opening is not the seed it committed to.
    #[error("the sender's check seed does not match its commitment (a deviating sender)")]
    CommitmentMismatch,
    /// The receiver could not encode its table in the allowed attempts (each fails
    /// with probability below 2⁻²⁰; a bug or an adversarial set, never expected).
    #[error("could not encode the receiver's table in {attempts} attempts")]
    TableEncoding {
        /// Attempts made, each with a fresh seed.
        attempts: u32,
    },
    /// A configuration that cannot run (a chunk size out of range, …).
    #[error("invalid OPRF configuration: {0}")]
    BadConfig(&'static str),
    /// The OS random number generator failed.
    #[error("random number generator failed: {0}")]
    Rng(String),
}

fn report(on: bool) -> &'static str {
    if on { "reports matches back (both)" } else { "does not report matches back" }
}
