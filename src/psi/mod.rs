//! The matching engines: ECDH private set intersection on ristretto255 (this
//! module's roles, below), and the OPRF engine ([`oprf`]); [`Protocol`] names them and
//! says which is secure against a partner that deviates from the protocol.
//!
//! Two roles, the **owner** (holds the member audience and the opt-out list; runs the
//! server) and the **partner** (the marketing partner; the client). Each side blinds
//! its keyed tokens with a fresh secret scalar; the other side blinds them again;
//! doubly-blinded elements are equal exactly when the tokens are, so only the
//! intersection (or, by [`Reveal`] mode, less) is revealed. `docs/PROTOCOL.md` has
//! the byte-exact flow, `docs/PRIVACY.md` what each side learns.
//!
//! - [`group`]: hash-to-group, blinding, decoding (the only curve code);
//! - [`message`]: the protocol messages;
//! - `owner`, `partner`: one state machine per role ([`Owner`], [`Partner`]),
//!   transport-agnostic;
//! - `set`: deduplicated, shuffled token sets and the way back to records
//!   ([`PreparedSet`]);
//! - `protocol`: which engine runs a match ([`Protocol`], [`ProtocolChoice`]);
//! - `reveal`: who learns what ([`Reveal`]);
//! - `transport`: the in-memory transport;
//! - [`oprf`]: the second engine, OPRF-based PSI (PaXoS PSI, malicious-secure), for the reveal modes
//!   that name records.
//!
//! The API is what this module re-exports, plus two modules kept public on purpose:
//! [`group`] (the group operations that `docs/PROTOCOL.md` §3 specifies and gives
//! test vectors for, measured by `benches/psi.rs`) and [`message`] (the protocol
//! messages, field by field, that a transport carries).

mod error;
pub mod group;
pub mod message;
pub mod oprf;
mod owner;
mod partner;
mod protocol;
mod reveal;
mod set;
mod transport;

pub use error::{ProtocolError, SetupError, truncated, untrusted};
pub use message::{Element, OwnerMessage, PartnerMessage, ShardRun};
pub use owner::{Owner, OwnerConfig, OwnerOutcome};
pub use partner::{Partner, PartnerConfig, PartnerOutcome, check_accept};
pub use protocol::{Protocol, ProtocolChoice, ProtocolChoiceError};
pub use reveal::Reveal;
pub use set::{KindSet, PreparedSet, merge_matched_records};
pub use transport::{Endpoint, LocalMatchError, Observed, run_in_memory};
