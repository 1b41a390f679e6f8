//! The matching engine: ECDH private set intersection on ristretto255.
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
//! - [`owner`], [`partner`]: one state machine per role, transport-agnostic;
//! - [`set`]: deduplicated, shuffled token sets and the way back to records;
//! - [`transport`]: the in-memory transport.

pub mod error;
pub mod group;
pub mod message;
pub mod oprf;
pub mod owner;
pub mod partner;
pub mod set;
pub mod transport;

pub use error::{ProtocolError, truncated, untrusted};
pub use message::{Element, OwnerMessage, PartnerMessage, Reveal};
pub use owner::{Owner, OwnerConfig, OwnerOutcome};
pub use partner::{Partner, PartnerConfig, PartnerOutcome};
pub use set::{KindSet, PreparedSet};
pub use transport::{Endpoint, LocalMatchError, Observed, run_in_memory};
