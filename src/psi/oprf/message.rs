//! The OPRF engine's messages. Each maps one-to-one onto a protobuf message whose
//! byte-string fields are the `Vec<u8>` fields here, kept raw: their lengths and
//! contents are checked by the state machines, so a malformed field is refused with
//! a precise [`OprfError`](super::OprfError) whatever the transport.
//!
//! Byte layouts (`docs/PROTOCOL.md`, "OPRF engine", is normative):
//! - `ReceiverSetup.ot_point`: 32 bytes, the OT point `A` (canonical ristretto255).
//! - `SenderSetup.hash_key`: 16 bytes; `SenderSetup.ot_points`: `w × 32` bytes,
//!   `B_0 ‖ … ‖ B_{w−1}`; `SenderSetup.commitment`: 32 bytes.
//! - `Seeds`: 32 bytes, the table seed then the receiver's check seed.
//! - `Correction`: a chunk of the correction matrix `U`, serialized column after
//!   column (`w · h/8` bytes in all; row `r` of a column at byte `r >> 3`, bit
//!   `r & 7`); chunk boundaries carry no meaning.
//! - `Opening`: 16 bytes, the sender's check seed.
//! - `Check`: 64 × 64 bytes of row sums, then 64 × 16 bytes of value sums
//!   (little-endian), 5120 bytes.
//! - `Outputs`: a chunk of whole `ℓ2/8`-byte OPRF outputs, in the sender's token
//!   order.
//! - `Matches` (`both` mode): a chunk of the bitmap over the sender's outputs, bit
//!   `i` (byte `i >> 3`, bit `i & 7`) set when output `i` matched; `⌈n_S / 8⌉` bytes
//!   in all, padding bits zero.

/// The engine version this build speaks.
pub const OPRF_VERSION: u32 = 2;
/// Largest chunk any party accepts or sends: 2 MiB, under gRPC's 4 MiB default.
pub const MAX_CHUNK_BYTES: u32 = 2 * 1024 * 1024;
/// Smallest chunk limit a party may announce.
pub const MIN_CHUNK_BYTES: u32 = 1024;

/// receiver → sender, first.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiverSetup {
    /// The OPRF engine version the receiver speaks ([`OPRF_VERSION`]).
    pub version: u32,
    /// `n_R`: the receiver's distinct tokens.
    pub receiver_set_size: u64,
    /// `both` mode: the receiver will report the sender's matches back.
    pub report_back: bool,
    /// Largest `Outputs` chunk, in bytes, the receiver accepts.
    pub max_chunk_bytes: u32,
    /// The base-OT point `A`, 32 bytes.
    pub ot_point: Vec<u8>,
}

/// sender → receiver, first.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderSetup {
    /// The OPRF engine version the sender speaks ([`OPRF_VERSION`]).
    pub version: u32,
    /// `n_S`: the sender's distinct tokens.
    pub sender_set_size: u64,
    /// `h`, matrix rows; like the next three, it must equal the derivation from
    /// the set sizes.
    pub height: u32,
    /// `m`, sparse cells of the receiver's table.
    pub sparse_len: u32,
    /// `w`, the matrix width (columns, one base OT each).
    pub width: u32,
    /// `ℓ2/8`, the length of one OPRF output in bytes.
    pub output_len: u32,
    /// Largest `Correction` / `Matches` chunk, in bytes, the sender accepts.
    pub max_chunk_bytes: u32,
    /// The key of `H`, 16 bytes, fresh for this match.
    pub hash_key: Vec<u8>,
    /// The base-OT points `B_i`, `w × 32` bytes.
    pub ot_points: Vec<u8>,
    /// `SHA-256("idmatch-oprf-v2 commit" ‖ seed_S)`, 32 bytes.
    pub commitment: Vec<u8>,
}

impl ReceiverSetup {
    /// Bytes of the fields, integers at their fixed width.
    fn payload_len(&self) -> usize {
        4 + 8 + 1 + 4 + self.ot_point.len()
    }
}

impl SenderSetup {
    /// Bytes of the fields, integers at their fixed width.
    fn payload_len(&self) -> usize {
        4 + 8 + 5 * 4 + self.hash_key.len() + self.ot_points.len() + self.commitment.len()
    }
}

/// Messages from the receiver.
#[derive(Clone, PartialEq, Eq)]
pub enum ReceiverMessage {
    /// The receiver's setup (first message).
    Setup(ReceiverSetup),
    /// The table seed and the receiver's check seed (before the correction).
    Seeds(Vec<u8>),
    /// A chunk of the correction matrix.
    Correction(Vec<u8>),
    /// The check sums (after the sender's opening).
    Check(Vec<u8>),
    /// A chunk of the matched bitmap (`both` mode).
    Matches(Vec<u8>),
    /// The receiver has everything and sends nothing more.
    Finished,
}

/// Messages from the sender.
#[derive(Clone, PartialEq, Eq)]
pub enum SenderMessage {
    /// The sender's setup (its first message).
    Setup(SenderSetup),
    /// The sender's check seed (after the whole correction).
    Opening(Vec<u8>),
    /// A chunk of OPRF outputs.
    Outputs(Vec<u8>),
}

impl ReceiverMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ReceiverMessage::Setup(_) => "receiver_setup",
            ReceiverMessage::Seeds(_) => "seeds",
            ReceiverMessage::Correction(_) => "correction",
            ReceiverMessage::Check(_) => "check",
            ReceiverMessage::Matches(_) => "matches",
            ReceiverMessage::Finished => "finished",
        }
    }

    /// Bytes of the message's fields (integers counted at their fixed width): the
    /// payload a transport carries, without its framing.
    pub fn payload_len(&self) -> usize {
        match self {
            ReceiverMessage::Setup(s) => s.payload_len(),
            ReceiverMessage::Seeds(d)
            | ReceiverMessage::Correction(d)
            | ReceiverMessage::Check(d)
            | ReceiverMessage::Matches(d) => d.len(),
            ReceiverMessage::Finished => 0,
        }
    }
}

impl SenderMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            SenderMessage::Setup(_) => "sender_setup",
            SenderMessage::Opening(_) => "opening",
            SenderMessage::Outputs(_) => "outputs",
        }
    }

    /// Bytes of the message's fields (integers counted at their fixed width).
    pub fn payload_len(&self) -> usize {
        match self {
            SenderMessage::Setup(s) => s.payload_len(),
            SenderMessage::Opening(d) | SenderMessage::Outputs(d) => d.len(),
        }
    }
}

/// An engine message of either role as a match stream carries it
/// (`docs/PROTOCOL.md` §11.9): `PartnerMessage::Oprf` / `OwnerMessage::Oprf`, the
/// stream's direction saying which party sent it. The receiver's `Finished` is not
/// here: the partner sends the stream's own `finished`, and an owner receiver ends
/// with its `Summary`.
#[derive(Clone, PartialEq, Eq)]
pub enum OprfMessage {
    /// [`ReceiverMessage::Setup`].
    ReceiverSetup(ReceiverSetup),
    /// [`SenderMessage::Setup`].
    SenderSetup(SenderSetup),
    /// [`ReceiverMessage::Seeds`].
    Seeds(Vec<u8>),
    /// [`ReceiverMessage::Correction`].
    Correction(Vec<u8>),
    /// [`SenderMessage::Opening`].
    Opening(Vec<u8>),
    /// [`ReceiverMessage::Check`].
    Check(Vec<u8>),
    /// [`SenderMessage::Outputs`].
    Outputs(Vec<u8>),
    /// [`ReceiverMessage::Matches`].
    Matches(Vec<u8>),
}

impl OprfMessage {
    /// The message's name, for errors and logs (the protobuf field's name).
    pub fn name(&self) -> &'static str {
        match self {
            OprfMessage::ReceiverSetup(_) => "oprf_receiver_setup",
            OprfMessage::SenderSetup(_) => "oprf_sender_setup",
            OprfMessage::Seeds(_) => "oprf_seeds",
            OprfMessage::Correction(_) => "oprf_correction",
            OprfMessage::Opening(_) => "oprf_opening",
            OprfMessage::Check(_) => "oprf_check",
            OprfMessage::Outputs(_) => "oprf_outputs",
            OprfMessage::Matches(_) => "oprf_matches",
        }
    }

    /// The receiver's message, for a stream (`None` for `Finished`, which the
    /// stream carries otherwise).
    pub fn from_receiver(message: ReceiverMessage) -> Option<OprfMessage> {
        match message {
            ReceiverMessage::Setup(s) => Some(OprfMessage::ReceiverSetup(s)),
            ReceiverMessage::Seeds(d) => Some(OprfMessage::Seeds(d)),
            ReceiverMessage::Correction(d) => Some(OprfMessage::Correction(d)),
            ReceiverMessage::Check(d) => Some(OprfMessage::Check(d)),
            ReceiverMessage::Matches(d) => Some(OprfMessage::Matches(d)),
            ReceiverMessage::Finished => None,
        }
    }

    /// The sender's message, for a stream.
    pub fn from_sender(message: SenderMessage) -> OprfMessage {
        match message {
            SenderMessage::Setup(s) => OprfMessage::SenderSetup(s),
            SenderMessage::Opening(d) => OprfMessage::Opening(d),
            SenderMessage::Outputs(d) => OprfMessage::Outputs(d),
        }
    }

    /// A message for the sender, or `Err(self)` when only a sender sends it.
    pub fn into_receiver_message(self) -> Result<ReceiverMessage, OprfMessage> {
        match self {
            OprfMessage::ReceiverSetup(s) => Ok(ReceiverMessage::Setup(s)),
            OprfMessage::Seeds(d) => Ok(ReceiverMessage::Seeds(d)),
            OprfMessage::Correction(d) => Ok(ReceiverMessage::Correction(d)),
            OprfMessage::Check(d) => Ok(ReceiverMessage::Check(d)),
            OprfMessage::Matches(d) => Ok(ReceiverMessage::Matches(d)),
            other => Err(other),
        }
    }

    /// A message for the receiver, or `Err(self)` when only a receiver sends it.
    pub fn into_sender_message(self) -> Result<SenderMessage, OprfMessage> {
        match self {
            OprfMessage::SenderSetup(s) => Ok(SenderMessage::Setup(s)),
            OprfMessage::Opening(d) => Ok(SenderMessage::Opening(d)),
            OprfMessage::Outputs(d) => Ok(SenderMessage::Outputs(d)),
            other => Err(other),
        }
    }

    /// Payload bytes, as [`ReceiverMessage::payload_len`] counts them.
    pub fn payload_len(&self) -> usize {
        match self {
            OprfMessage::ReceiverSetup(s) => s.payload_len(),
            OprfMessage::SenderSetup(s) => s.payload_len(),
            OprfMessage::Seeds(d)
            | OprfMessage::Correction(d)
            | OprfMessage::Opening(d)
            | OprfMessage::Check(d)
            | OprfMessage::Outputs(d)
            | OprfMessage::Matches(d) => d.len(),
        }
    }
}

impl std::fmt::Debug for OprfMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OprfMessage::ReceiverSetup(s) => s.fmt(f),
            OprfMessage::SenderSetup(s) => s.fmt(f),
            other => write!(f, "{}(<{} bytes>)", other.name(), other.payload_len()),
        }
    }
}

/// Sizes only: no key or seed in a `Debug` string.
impl std::fmt::Debug for SenderSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderSetup")
            .field("version", &self.version)
            .field("sender_set_size", &self.sender_set_size)
            .field("height", &self.height)
            .field("sparse_len", &self.sparse_len)
            .field("width", &self.width)
            .field("output_len", &self.output_len)
            .field("max_chunk_bytes", &self.max_chunk_bytes)
            .field("hash_key", &format_args!("<{} bytes>", self.hash_key.len()))
            .field("ot_points", &format_args!("<{} bytes>", self.ot_points.len()))
            .field("commitment", &format_args!("<{} bytes>", self.commitment.len()))
            .finish()
    }
}

impl std::fmt::Debug for ReceiverSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverSetup")
            .field("version", &self.version)
            .field("receiver_set_size", &self.receiver_set_size)
            .field("report_back", &self.report_back)
            .field("max_chunk_bytes", &self.max_chunk_bytes)
            .field("ot_point", &format_args!("<{} bytes>", self.ot_point.len()))
            .finish()
    }
}

impl std::fmt::Debug for ReceiverMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceiverMessage::Setup(s) => s.fmt(f),
            other => write!(f, "{}(<{} bytes>)", other.name(), other.payload_len()),
        }
    }
}

impl std::fmt::Debug for SenderMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderMessage::Setup(s) => s.fmt(f),
            other => write!(f, "{}(<{} bytes>)", other.name(), other.payload_len()),
        }
    }
}
