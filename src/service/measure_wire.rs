//! The measurement's messages on the wire (docs/PROTOCOL.md §12.9): the typed §12.3
//! messages encoded and cut into `MeasureFrame`s, and frames put back together and
//! decoded, with every message bounded before it is buffered by the sizes the hello
//! and the accept announced; the learner ↔ its protobuf enum.
//!
//! This is the one place where the service turns measurement messages into bytes
//! and back ([`crate::measure::message::encode`] and `decode`); the state machines
//! and the roles over frames (`frames`) only ever see typed messages.

use crate::measure::elgamal::LIMBS;
#[cfg(feature = "server")]
use crate::measure::message::MAX_LABEL;
use crate::measure::message::{self, MASKED_LEN, MAX_BUNDLE, MAX_GROUPS, Message, MessageError, VALUE_LEN};
use crate::measure::proof::{MAX_PROOF_LEN, PEOPLE_PER_PROOF};
use crate::measure::{Learner, MeasureError};
use crate::psi::message::ELEMENT_LEN;
use crate::wire;

/// Measurement protocol version over gRPC: 5, the owner's blinding point in
/// `people` and the partner's trap bundles that check its re-blinding (version 4
/// let a cheating owner re-blind exposures with several keys, so that one target
/// counted many times over the noise); twisted ElGamal with the owner's
/// range proofs and the partner's noise in whatever the owner decrypts (version 3
/// let a cheating owner decode the partner's groups from exact sums of crafted
/// values; version 2 left the high limb's share without noise under a clip below
/// 2^16; version 1 let the owner decrypt for learner `partner`). Older versions are
/// refused.
pub const MEASURE_VERSION: u32 = 5;
/// Largest frame either side sends (smaller when the peer accepts less).
pub const SEND_FRAME_BYTES: usize = 1 << 20;
/// Smallest frame limit a side may announce.
pub const MIN_FRAME_BYTES: usize = 1024;
/// The `idmatch-error` kind of the owner's refusal of a hello that does not let it
/// learn exact figures (`owner_may_learn` false) where the campaign's learner is
/// `owner` or `both` and it has no noise (docs/PROTOCOL.md §12.9).
pub const OWNER_LEARNS_REFUSED: &str = "owner-learns-refused";
/// Largest `release` message (the JSON of the released figures) a partner accepts.
pub const MAX_RELEASE_BYTES: usize = 1 << 20;

/// Why a measurement frame or message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The measurement state machine refused a message.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// The peer's frames put together are not a well-formed message.
    #[error("malformed message: {0}")]
    Message(#[from] MessageError),
    /// This side's own message could not be encoded (never the peer's doing).
    #[error("cannot encode the {message} message: {source}")]
    Encode {
        /// The message.
        message: &'static str,
        /// Why.
        source: MessageError,
    },
    /// A frame larger than the receiver's limit.
    #[error("a frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's data length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame with no data that does not end a message.
    #[error("an empty frame that does not end a message")]
    EmptyFrame,
    /// The frames of one message add up to more than the announced sizes allow.
    #[error("the {message} message is over the {max} bytes the announced sizes allow")]
    MessageTooLarge {
        /// The message expected.
        message: &'static str,
        /// Its bound.
        max: usize,
    },
    #[cfg(feature = "server")]
    /// The frames of one message add up to more than this owner puts together
    /// (`max_measurement_message_bytes`), although the announced sizes allow it.
    #[error(
        "the {message} message is over this owner's limit of {limit} bytes per measurement message (max_measurement_message_bytes)"
    )]
    OverLimit {
        /// The message expected.
        message: &'static str,
        /// The owner's limit.
        limit: usize,
    },
    #[cfg(feature = "server")]
    /// A message whose sizes differ from those announced in the hello.
    #[error("the {what} of the exposures message ({got}) differs from the hello ({announced})")]
    Announced {
        /// `number of groups` or `number of bundles`.
        what: &'static str,
        /// What the hello said.
        announced: u64,
        /// What the message says.
        got: u64,
    },
    /// A message of the wrong kind for this point of the stream.
    #[error("unexpected {message} while {state}")]
    Unexpected {
        /// Where the receiver is.
        state: &'static str,
        /// What arrived.
        message: &'static str,
    },
    /// A message without a body, or an accept this client cannot use.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// Encodes outgoing messages and cuts them into frames lazily (one frame's copy at
/// a time).
pub(super) struct Cutter {
    max: usize,
    message: Vec<u8>,
    offset: usize,
    pending: bool,
}

impl Cutter {
    /// Cuts frames of at most `max` bytes.
    pub fn new(max: usize) -> Cutter {
        Cutter { max: max.max(1), message: Vec::new(), offset: 0, pending: false }
    }

    /// Whether frames of the last message loaded are still to go.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Encodes `message` to be cut; the last one's frames must all have gone.
    pub fn load(&mut self, message: &Message) -> Result<(), FrameError> {
        self.message =
            message::encode(message).map_err(|source| FrameError::Encode { message: message.name(), source })?;
        self.offset = 0;
        self.pending = true;
        Ok(())
    }

    /// The next frame of the message loaded, if any is left.
    pub fn next(&mut self) -> Option<wire::MeasureFrame> {
        if !self.pending {
            return None;
        }
        let end = (self.offset + self.max).min(self.message.len());
        let data = self.message[self.offset..end].to_vec();
        self.offset = end;
        let last = end == self.message.len();
        if last {
            self.pending = false;
            self.message = Vec::new();
        }
        Some(wire::MeasureFrame { data, last })
    }
}

/// Puts incoming frames back together and decodes the message they make.
pub(super) struct Joiner {
    max_frame: usize,
    buffer: Vec<u8>,
}

impl Joiner {
    /// Accepts frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Joiner {
        Joiner { max_frame, buffer: Vec::new() }
    }

    /// Adds `frame` to the message `name` of at most `max` bytes; the message,
    /// decoded, once its last frame is in.
    pub fn push(
        &mut self,
        frame: wire::MeasureFrame,
        name: &'static str,
        max: usize,
    ) -> Result<Option<Message>, FrameError> {
        if frame.data.len() > self.max_frame {
            return Err(FrameError::FrameTooLarge { len: frame.data.len(), max: self.max_frame });
        }
        if frame.data.is_empty() && !frame.last {
            return Err(FrameError::EmptyFrame);
        }
        if self.buffer.len().saturating_add(frame.data.len()) > max {
            return Err(FrameError::MessageTooLarge { message: name, max });
        }
        self.buffer.extend_from_slice(&frame.data);
        if !frame.last {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.buffer);
        Ok(Some(message::decode(&bytes)?))
    }
}

/// `a·b`, saturating (bounds only ever limit).
fn bound(parts: &[usize]) -> usize {
    parts.iter().fold(1usize, |acc, &x| acc.saturating_mul(x))
}

#[cfg(feature = "server")]
/// Largest `exposures` (tag 2) message for `groups` groups and `n` bundles.
pub fn exposures_bound(groups: usize, n: u64) -> usize {
    let per = 1 + usize::from(MAX_BUNDLE) * ELEMENT_LEN;
    (1 + 1 + groups * (1 + MAX_LABEL) + 1 + 4).saturating_add(bound(&[usize::try_from(n).unwrap_or(usize::MAX), per]))
}

#[cfg(feature = "server")]
/// Smallest `exposures` (tag 2) message for `groups` groups and `n` bundles: labels
/// of one byte, bundles of one element.
pub fn exposures_min(groups: usize, n: u64) -> usize {
    let per = 1 + ELEMENT_LEN;
    (1 + 1 + groups * 2 + 1 + 4).saturating_add(bound(&[usize::try_from(n).unwrap_or(usize::MAX), per]))
}

/// Largest `reblinded` (tag 3) message for `n` bundles.
pub fn reblinded_bound(n: u64) -> usize {
    let per = 1 + usize::from(MAX_BUNDLE) * ELEMENT_LEN;
    (1 + 1 + 4usize).saturating_add(bound(&[usize::try_from(n).unwrap_or(usize::MAX), per]))
}

/// Largest `people` (tag 1) message for `n` people, with their range proofs.
pub fn people_bound(n: u64) -> usize {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let per = usize::from(MAX_BUNDLE) * ELEMENT_LEN + VALUE_LEN;
    let proofs = bound(&[n.div_ceil(PEOPLE_PER_PROOF), 4 + MAX_PROOF_LEN]);
    (1 + 32 + 32 + 1 + 4 + 4usize).saturating_add(bound(&[n, per])).saturating_add(proofs)
}

#[cfg(feature = "server")]
/// Largest `sums` (tag 4) message for `groups` groups; `masked` (tag 6) is smaller.
pub fn sums_bound(groups: usize) -> usize {
    1 + 1 + groups * (8 + 1 + 8 + 8 + VALUE_LEN)
}

/// Largest `shares` (tag 7) message: noise bounds and at most 16 groups of shares.
pub const SHARES_BOUND: usize = 1 + 8 * LIMBS + 1 + MAX_GROUPS * MASKED_LEN;

#[cfg(feature = "server")]
/// Learner ↔ wire.
pub fn learner_to_wire(learner: Learner) -> wire::Learner {
    match learner {
        Learner::Owner => wire::Learner::Owner,
        Learner::Partner => wire::Learner::Partner,
        Learner::Both => wire::Learner::Both,
    }
}

/// The learner an accept names.
pub fn learner_from_wire(value: i32) -> Result<Learner, FrameError> {
    match wire::Learner::try_from(value) {
        Ok(wire::Learner::Owner) => Ok(Learner::Owner),
        Ok(wire::Learner::Partner) => Ok(Learner::Partner),
        Ok(wire::Learner::Both) => Ok(Learner::Both),
        _ => Err(FrameError::Malformed("unknown learner in the accept")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::message::Exposures;
    use crate::psi::message::Element;

    #[test]
    fn messages_cut_and_join_back_and_bounds_hold() {
        let release = Message::Release(b"{\"groups\":[]}".to_vec());
        let mut cutter = Cutter::new(3);
        cutter.load(&release).unwrap();
        let mut joiner = Joiner::new(3);
        let mut whole = None;
        while let Some(frame) = cutter.next() {
            assert!(whole.is_none());
            whole = joiner.push(frame, "release", 100).unwrap();
        }
        assert!(!cutter.pending());
        assert_eq!(whole, Some(release));
        let frame = |data: Vec<u8>, last| wire::MeasureFrame { data, last };
        assert!(matches!(joiner.push(frame(vec![0; 4], true), "x", 100), Err(FrameError::FrameTooLarge { .. })));
        assert!(matches!(joiner.push(frame(vec![], false), "x", 100), Err(FrameError::EmptyFrame)));
        joiner.push(frame(vec![0; 3], false), "x", 5).unwrap();
        assert!(matches!(
            joiner.push(frame(vec![0; 3], true), "x", 5),
            Err(FrameError::MessageTooLarge { max: 5, .. })
        ));
        let mut joiner = Joiner::new(3);
        assert!(matches!(
            joiner.push(frame(vec![0xee, 1], true), "x", 5),
            Err(FrameError::Message(MessageError::UnknownTag(0xee)))
        ));
        // Our own message, ill-formed, is refused before anything is sent.
        let bad = Message::Exposures(Exposures { labels: vec![], bundle: 1, groups: vec![], elements: vec![] });
        assert!(matches!(cutter.load(&bad), Err(FrameError::Encode { message: "exposures", .. })));
        assert!(cutter.next().is_none());
        let one = Element([1; ELEMENT_LEN]);
        let good =
            Message::Exposures(Exposures { labels: vec!["a".into()], bundle: 1, groups: vec![0], elements: vec![one] });
        cutter.load(&good).unwrap();
        assert!(cutter.next().is_some());
    }
}
