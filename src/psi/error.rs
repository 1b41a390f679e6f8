//! Everything that can go wrong in a match, in one place, split by whose fault it
//! is: [`SetupError`] is this side's own (its configuration, its random number
//! generator) and happens before any message; [`ProtocolError`] is about what the
//! peer sent or asked for. Each protocol case is precise enough to map onto one gRPC
//! status code; that mapping lives at the wire boundary (`service::session`, see
//! `docs/PROTOCOL.md`), not here.

use super::group::ElementError;
use super::message::ChunkLengthError;
use super::oprf::OprfError;
use super::protocol::Protocol;
use super::reveal::Reveal;

/// Why a state machine could not be started: a fault of this side, never the
/// peer's (a gRPC server reports it as `INTERNAL`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A configured chunk size of zero elements (either side's `send_chunk`, the
    /// owner's `max_chunk`).
    #[error("chunk sizes must be at least 1 element")]
    ZeroChunk,
    /// The OS CSPRNG failed while drawing the blinding scalar (its error, as text).
    #[error("random number generator failed: {0}")]
    Rng(String),
    /// The OPRF engine refused this side's configuration or could not draw its
    /// randomness.
    #[error("the OPRF engine could not start: {0}")]
    Oprf(OprfError),
}

/// What the peer did wrong, or asked for and this side refuses: a message out of
/// order or malformed, a mismatch of version, profile, campaign or key, a request
/// outside this side's policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message arrived that the current state does not accept.
    #[error("unexpected {message} message while {state}")]
    UnexpectedMessage {
        /// The receiving side's state, e.g. `awaiting hello`.
        state: &'static str,
        /// The message's name, e.g. `partner_elements`.
        message: &'static str,
    },
    /// The peer's hello or accept names a protocol version other than this build's.
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    UnsupportedVersion {
        /// This build's [`PROTOCOL_VERSION`](super::message::PROTOCOL_VERSION).
        ours: u32,
        /// The version the peer sent.
        theirs: u32,
    },
    /// The partner's hello names another normalization profile than the owner's.
    #[error("normalization profile mismatch: this side uses {ours}, the peer uses {theirs}")]
    ProfileMismatch {
        /// This side's profile name.
        ours: String,
        /// The peer's profile name, cut with [`untrusted`].
        theirs: String,
    },
    /// The partner's hello names another campaign than the one the owner serves.
    #[error("campaign mismatch: this side serves {ours}, the peer asked for {theirs}")]
    CampaignMismatch {
        /// This side's campaign id.
        ours: String,
        /// The campaign id the peer asked for, cut with [`untrusted`].
        theirs: String,
    },
    /// The partner's key fingerprint differs from the owner's: the two sides do not
    /// hold the same campaign key, so nothing could match.
    #[error("campaign key mismatch: the partner's key is not this campaign's key")]
    KeyMismatch,
    /// The hello carries no key fingerprint (a client older than the field).
    #[error(
        "the hello carries no campaign key fingerprint: upgrade the client (the owner refuses to match unchecked keys)"
    )]
    KeyFingerprintMissing,
    /// The partner asked for a reveal mode outside the owner's allowed ones.
    #[error("reveal mode {0} is not allowed here")]
    RevealNotAllowed(Reveal),
    /// The partner's announced set size is outside the owner's allowed range
    /// (probing protection).
    #[error("partner set size {size} is outside the allowed range {min}..={max}")]
    SetSizeOutOfRange {
        /// The size the partner announced.
        size: u64,
        /// Smallest size allowed.
        min: u64,
        /// Largest size allowed.
        max: u64,
    },
    /// An empty chunk, one larger than the receiver's limit, or an accept announcing a
    /// zero chunk limit (`len` and `max` both 0).
    #[error("a chunk of {len} elements is not allowed (1..={max})")]
    BadChunkSize {
        /// Elements in the chunk.
        len: usize,
        /// Largest chunk the receiver accepts, in elements.
        max: u32,
    },
    /// A chunk would take the elements received past the number announced or sent.
    #[error("{what}: received {received} elements but {expected} were announced")]
    TooManyElements {
        /// Which element stream, e.g. `partner elements`.
        what: &'static str,
        /// Elements announced (or, for returned elements, sent).
        expected: u64,
        /// Elements received, counting the offending chunk.
        received: u64,
    },
    /// A wire chunk whose byte length is not a multiple of 32.
    #[error(transparent)]
    ChunkLength(#[from] ChunkLengthError),
    /// A received element does not decode, or is the identity.
    #[error(transparent)]
    BadElement(#[from] ElementError),
    /// The owner's summary disagrees with the partner's own counts; names the count
    /// (`partner set size`, `owner set size` or `intersection size`).
    #[error("the peer's summary disagrees with this side's counts: {0}")]
    SummaryMismatch(&'static str),
    /// A wire message that does not decode into a protocol message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// None of the engines the hello offers is allowed for this campaign and
    /// reveal mode.
    #[error(
        "none of the offered protocols ({offered}) is allowed for this campaign with reveal mode {reveal} (allowed: {allowed})"
    )]
    ProtocolNotAllowed {
        /// The engines the hello offered, comma-separated.
        offered: String,
        /// The reveal mode asked for.
        reveal: Reveal,
        /// The engines this side allows for that mode, comma-separated (may be empty).
        allowed: String,
    },
    /// The owner's accept names an engine this side did not offer.
    #[error("the owner chose protocol {chosen}, which this side did not offer (offered: {offered})")]
    UnofferedProtocol {
        /// The engine the accept names.
        chosen: Protocol,
        /// The engines this side offered, comma-separated.
        offered: String,
    },
    /// A size in an engine message differs from the one announced in the
    /// hello or accept (which the owner's limits and budget were checked against).
    #[error("{what} announces {announced} tokens but {expected} were announced at the start of the match")]
    AnnouncedSizeMismatch {
        /// The message and field, e.g. `oprf_receiver_setup.receiver_set_size`.
        what: &'static str,
        /// The size in that message.
        announced: u64,
        /// The size announced in the hello (partner) or accept (owner).
        expected: u64,
    },
    /// The OPRF engine refused a message (or, `OprfError::Rng`, could not draw
    /// randomness while handling one).
    #[error("oprf: {0}")]
    Oprf(#[from] OprfError),
}

impl ProtocolError {
    /// A stable machine-readable name of the error's kind, which the owner's server
    /// sends beside the gRPC status (the `idmatch-error` metadata entry,
    /// docs/PROTOCOL.md §9), so that a client tells errors apart without reading
    /// their text.
    pub fn code(&self) -> &'static str {
        use ProtocolError::*;
        match self {
            UnexpectedMessage { .. } => "unexpected-message",
            UnsupportedVersion { .. } => "unsupported-version",
            ProfileMismatch { .. } => "profile-mismatch",
            CampaignMismatch { .. } => "campaign-mismatch",
            KeyMismatch => "key-mismatch",
            KeyFingerprintMissing => "key-fingerprint-missing",
            RevealNotAllowed(_) => "reveal-not-allowed",
            SetSizeOutOfRange { .. } => "set-size-out-of-range",
            BadChunkSize { .. } => "bad-chunk-size",
            TooManyElements { .. } => "too-many-elements",
            ChunkLength(_) => "chunk-length",
            BadElement(_) => "bad-element",
            SummaryMismatch(_) => "summary-mismatch",
            Malformed(_) => "malformed",
            ProtocolNotAllowed { .. } => "protocol-not-allowed",
            UnofferedProtocol { .. } => "unoffered-protocol",
            AnnouncedSizeMismatch { .. } => "announced-size-mismatch",
            Oprf(_) => "oprf",
        }
    }
}

/// Longest peer-supplied text kept whole in errors, logs and audit records.
pub const UNTRUSTED_MAX_CHARS: usize = 64;

/// A peer-supplied string made safe to echo into a status message, a log or an
/// audit record: at most `UNTRUSTED_MAX_CHARS` (64) characters, then `…(N bytes)` giving
/// the original length. Every such string goes through here.
pub fn untrusted(text: &str) -> String {
    truncated(text, UNTRUSTED_MAX_CHARS)
}

/// `text` cut to at most `max_chars` characters, then `…(N bytes)` giving the
/// original length (for a peer's longer free-text messages, such as the server's
/// status messages shown by the client).
pub fn truncated(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_strings_are_truncated() {
        assert_eq!(untrusted("spring"), "spring");
        let exact = "é".repeat(UNTRUSTED_MAX_CHARS);
        assert_eq!(untrusted(&exact), exact);
        let long = "x".repeat(262_144);
        assert_eq!(untrusted(&long), format!("{}…(262144 bytes)", "x".repeat(64)));
        assert!(untrusted(&"é".repeat(1000)).ends_with("…(2000 bytes)"));
    }
}
