//! Protocol messages: the values that cross between owner and partner, apart from
//! the logic that produces them. The gRPC service maps these one-to-one onto
//! `proto/idmatch/v1/match.proto`; the in-memory transport passes them as they are.
//! `docs/PROTOCOL.md` gives their byte-exact encoding.

use super::oprf::OprfMessage;
use super::protocol::Protocol;
use super::reveal::Reveal;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Elements per chunk the partner sends unless the owner asks for fewer.
pub const DEFAULT_CHUNK: u32 = 4096;
/// Largest chunk any party accepts (2 MiB of elements, under gRPC's 4 MiB default).
pub const MAX_CHUNK: u32 = 65536;
/// Bytes in one encoded group element.
pub const ELEMENT_LEN: usize = 32;

/// A ristretto255 element in its 32-byte canonical encoding, always blinded by at
/// least one party's secret scalar: it reveals nothing about the token beneath.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Element(pub [u8; ELEMENT_LEN]);

/// A chunk whose byte length is not a multiple of 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a chunk of {len} bytes is not a whole number of 32-byte elements")]
pub struct ChunkLengthError {
    /// The chunk's length in bytes.
    pub len: usize,
}

impl Element {
    /// Splits concatenated 32-byte encodings (the wire form of a chunk).
    pub fn parse_chunk(bytes: &[u8]) -> Result<Vec<Element>, ChunkLengthError> {
        if !bytes.len().is_multiple_of(ELEMENT_LEN) {
            return Err(ChunkLengthError { len: bytes.len() });
        }
        let (chunks, _) = bytes.as_chunks::<ELEMENT_LEN>();
        Ok(chunks.iter().map(|&c| Element(c)).collect())
    }

    /// Concatenates encodings (the wire form of a chunk).
    pub fn join_chunk(elements: &[Element]) -> Vec<u8> {
        elements.iter().flat_map(|e| e.0).collect()
    }
}

/// partner → owner, first: what the partner wants to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the partner speaks; the owner requires [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The campaign id the partner asks to match against.
    pub campaign: String,
    /// Normalization profile name (e.g. `idmatch-v1`).
    pub profile: String,
    /// Who learns what, as the partner asks.
    pub reveal: Reveal,
    /// Number of distinct tokens the partner will send.
    pub partner_set_size: u64,
    /// `HMAC-SHA256(campaign key, "idmatch key fingerprint v1")`
    /// ([`KeyFingerprint`](crate::token::KeyFingerprint)); empty when the partner sent
    /// none (a client from before the field), which a checking owner refuses.
    pub key_fingerprint: Vec<u8>,
    /// The engines the partner can run, most preferred first; empty (a client from
    /// before the field) means `[ecdh]` ([`Hello::offered_protocols`]).
    pub protocols: Vec<Protocol>,
    /// The run this stream is one shard of (docs/PROTOCOL.md §13.3); `None` for a
    /// whole match (and from a client from before the field).
    pub run: Option<ShardRun>,
}

/// One shard stream of a sharded match run (docs/PROTOCOL.md §13.3). Checked when
/// decoded: `run_id` is 16 bytes, `shard_count` in `1..=MAX_SHARDS`, `shard_index <
/// shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardRun {
    /// Chosen at random by the partner, shared by every stream of the run.
    pub run_id: [u8; 16],
    /// This stream's shard, in `0..shard_count`.
    pub shard_index: u32,
    /// `N`.
    pub shard_count: u32,
    /// The partner's whole set size: the sum of the shards' `partner_set_size`.
    pub run_set_size: u64,
}

impl Hello {
    /// The engines offered, most preferred first: `protocols`, or `[ecdh]` when the
    /// hello names none.
    pub fn offered_protocols(&self) -> &[Protocol] {
        if self.protocols.is_empty() { &[Protocol::Ecdh] } else { &self.protocols }
    }
}

/// owner → partner, first: the owner agrees and states its own size and chunk limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// Protocol version the owner speaks; the partner requires [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Number of distinct tokens (after opt-outs) the owner will send.
    pub owner_set_size: u64,
    /// Largest chunk, in elements, the owner accepts (`ecdh`; 0 under `oprf`,
    /// whose setups carry their own limits).
    pub max_chunk: u32,
    /// The engine the owner runs, one the hello offered.
    pub protocol: Protocol,
}

/// owner → partner, last: the owner's view of the finished match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Distinct partner tokens, as announced in the hello.
    pub partner_set_size: u64,
    /// Distinct owner tokens, as announced in the accept.
    pub owner_set_size: u64,
    /// Distinct matching tokens the owner found; present only in `both` mode (where
    /// the partner knows it already).
    pub intersection: Option<u64>,
}

/// Messages from the partner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartnerMessage {
    /// The opening request.
    Hello(Hello),
    /// `A_i = a·P(c_i)`, in the partner's (shuffled) order.
    PartnerElements(Vec<Element>),
    /// `a·B_j`, in the order the owner sent `B_j` (owner and both modes).
    ReblindedOwnerElements(Vec<Element>),
    /// The partner has everything it needs and sends nothing more.
    Finished,
    /// An OPRF engine message, from the role the partner plays (`oprf` only).
    Oprf(OprfMessage),
}

/// Messages from the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerMessage {
    /// The reply to a hello that passed every check.
    Accept(Accept),
    /// `b·A_i`, in the order received (shuffled as a whole in count mode; not sent in
    /// owner mode).
    ReblindedPartnerElements(Vec<Element>),
    /// `B_j = b·P(s_j)` for the owner's tokens that survive opt-outs, shuffled.
    OwnerElements(Vec<Element>),
    /// The last message: in reply to [`PartnerMessage::Finished`], or (`oprf` in
    /// `owner` mode) once the owner, as receiver, has all outputs.
    Summary(Summary),
    /// An OPRF engine message, from the role the owner plays (`oprf` only).
    Oprf(OprfMessage),
}

impl PartnerMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            PartnerMessage::Hello(_) => "hello",
            PartnerMessage::PartnerElements(_) => "partner_elements",
            PartnerMessage::ReblindedOwnerElements(_) => "reblinded_owner_elements",
            PartnerMessage::Finished => "finished",
            PartnerMessage::Oprf(m) => m.name(),
        }
    }
}

impl OwnerMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            OwnerMessage::Accept(_) => "accept",
            OwnerMessage::ReblindedPartnerElements(_) => "reblinded_partner_elements",
            OwnerMessage::OwnerElements(_) => "owner_elements",
            OwnerMessage::Summary(_) => "summary",
            OwnerMessage::Oprf(m) => m.name(),
        }
    }
}
