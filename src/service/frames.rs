//! The measurement roles over a gRPC stream (docs/PROTOCOL.md §12.9): the §12.3
//! messages cut into `MeasureFrame`s and put back together, with every message
//! bounded before it is buffered by the sizes the hello and the accept announced.
//!
//! [`OwnerFrames`] and [`PartnerFrames`] wrap the sans-I/O [`measure::Owner`] and
//! [`measure::Partner`] as [`Driven`] roles, so the same driver (deadlines,
//! backpressure) runs a measurement as it runs a match.

#[cfg(feature = "server")]
use crate::measure::OwnerState;
use crate::measure::elgamal::LIMBS;
#[cfg(feature = "server")]
use crate::measure::message::MAX_LABEL;
use crate::measure::message::{MASKED_LEN, MAX_BUNDLE, MAX_GROUPS, VALUE_LEN};
use crate::measure::{self, Learner, MeasureError, PartnerState};
use crate::psi::message::ELEMENT_LEN;
use crate::wire;
use crate::wire::measure_owner_message::Body as OwnerBody;
use crate::wire::measure_partner_message::Body as PartnerBody;

use super::driver::{DriveError, Driven};

/// Measurement protocol version over gRPC: 2, where learner `partner` decrypts on the
/// partner's side (version 1 let the owner decrypt for it, and is refused).
pub const MEASURE_VERSION: u32 = 2;
/// Largest frame either side sends (smaller when the peer accepts less).
pub const SEND_FRAME_BYTES: usize = 1 << 20;
/// Smallest frame limit a side may announce.
pub const MIN_FRAME_BYTES: usize = 1024;
/// Largest `release` message (the JSON of the released figures) a partner accepts.
pub const MAX_RELEASE_BYTES: usize = 1 << 20;

/// Why a measurement frame or message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The measurement state machine refused a message.
    #[error(transparent)]
    Measure(#[from] MeasureError),
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

/// Cuts outgoing messages into frames lazily (one frame's copy at a time).
struct Cutter {
    max: usize,
    message: Vec<u8>,
    offset: usize,
    pending: bool,
}

impl Cutter {
    fn new(max: usize) -> Cutter {
        Cutter { max: max.max(1), message: Vec::new(), offset: 0, pending: false }
    }

    fn load(&mut self, message: Vec<u8>) {
        self.message = message;
        self.offset = 0;
        self.pending = true;
    }

    fn next(&mut self) -> Option<wire::MeasureFrame> {
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

/// Puts incoming frames back together.
struct Joiner {
    max_frame: usize,
    buffer: Vec<u8>,
}

impl Joiner {
    /// Adds `frame` to the message `name` of at most `max` bytes; the whole message
    /// once its last frame is in.
    fn push(
        &mut self,
        frame: wire::MeasureFrame,
        name: &'static str,
        max: usize,
    ) -> Result<Option<Vec<u8>>, FrameError> {
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
        Ok(frame.last.then(|| std::mem::take(&mut self.buffer)))
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

/// Largest `reblinded` (tag 3) message for `n` bundles.
fn reblinded_bound(n: u64) -> usize {
    let per = 1 + usize::from(MAX_BUNDLE) * ELEMENT_LEN;
    (1 + 1 + 4usize).saturating_add(bound(&[usize::try_from(n).unwrap_or(usize::MAX), per]))
}

/// Largest `people` (tag 1) message for `n` people.
fn people_bound(n: u64) -> usize {
    let per = usize::from(MAX_BUNDLE) * ELEMENT_LEN + VALUE_LEN;
    (1 + 32 + 1 + 4usize).saturating_add(bound(&[usize::try_from(n).unwrap_or(usize::MAX), per]))
}

#[cfg(feature = "server")]
/// Largest `sums` (tag 4) message for `groups` groups; `masked` (tag 6) is smaller.
fn sums_bound(groups: usize) -> usize {
    1 + 1 + groups * (8 + 1 + 8 + 8 + VALUE_LEN)
}

/// Largest `shares` (tag 7) message: noise bounds and at most 16 groups of shares.
const SHARES_BOUND: usize = 1 + 8 * LIMBS + 1 + MAX_GROUPS * MASKED_LEN;

#[cfg(feature = "server")]
/// The number of groups and of bundles an `exposures` message announces, when its
/// header is readable (the state machine reports anything else precisely).
fn exposures_shape(bytes: &[u8]) -> Option<(u64, u64)> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != measure::message::tag::EXPOSURES {
        return None;
    }
    let (&groups, mut rest) = rest.split_first()?;
    for _ in 0..groups {
        let (&len, tail) = rest.split_first()?;
        rest = tail.get(usize::from(len)..)?;
    }
    let n = rest.get(1..5)?;
    Some((u64::from(groups), u64::from(u32::from_be_bytes(n.try_into().ok()?))))
}

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

#[cfg(feature = "server")]
/// The owner's measurement role over frames.
pub struct OwnerFrames {
    owner: measure::Owner,
    groups: u64,
    bundles: u64,
    joiner: Joiner,
    cutter: Cutter,
}

#[cfg(feature = "server")]
impl OwnerFrames {
    /// `owner` (its `people` queued), for a hello announcing `groups` and `bundles`;
    /// frames of at most `max_frame` bytes are accepted, `send_frame` are sent.
    pub fn new(owner: measure::Owner, groups: u64, bundles: u64, max_frame: usize, send_frame: usize) -> OwnerFrames {
        OwnerFrames {
            owner,
            groups,
            bundles,
            joiner: Joiner { max_frame, buffer: Vec::new() },
            cutter: Cutter::new(send_frame),
        }
    }

    /// The state machine, for its result.
    pub fn owner(&self) -> &measure::Owner {
        &self.owner
    }

    fn on_frame(&mut self, frame: wire::MeasureFrame) -> Result<(), FrameError> {
        let groups = usize::try_from(self.groups).unwrap_or(MAX_GROUPS);
        let (name, max) = match self.owner.state() {
            OwnerState::AwaitingExposures => ("exposures", exposures_bound(groups, self.bundles)),
            OwnerState::AwaitingSums => ("sums", sums_bound(groups)),
            OwnerState::Done => return Err(FrameError::Unexpected { state: "done", message: "frame" }),
            OwnerState::Failed => return Err(MeasureError::Failed.into()),
        };
        let Some(message) = self.joiner.push(frame, name, max)? else { return Ok(()) };
        if self.owner.state() == OwnerState::AwaitingExposures
            && let Some((g, n)) = exposures_shape(&message)
        {
            if g != self.groups {
                return Err(FrameError::Announced { what: "number of groups", announced: self.groups, got: g });
            }
            if n != self.bundles {
                return Err(FrameError::Announced { what: "number of bundles", announced: self.bundles, got: n });
            }
        }
        Ok(self.owner.receive(&message)?)
    }
}

#[cfg(feature = "server")]
impl Driven for OwnerFrames {
    type Incoming = PartnerBody;
    type Outgoing = wire::MeasureOwnerMessage;

    fn receive(&mut self, message: PartnerBody) -> Result<(), DriveError> {
        match message {
            PartnerBody::Frame(frame) => Ok(self.on_frame(frame)?),
            PartnerBody::Hello(_) => Err(FrameError::Unexpected { state: "measuring", message: "hello" }.into()),
        }
    }

    fn poll_outgoing(&mut self) -> Option<wire::MeasureOwnerMessage> {
        if !self.cutter.pending {
            self.cutter.load(self.owner.poll_outgoing()?);
        }
        self.cutter.next().map(|f| wire::MeasureOwnerMessage { body: Some(OwnerBody::Frame(f)) })
    }

    fn is_done(&self) -> bool {
        self.owner.state() == OwnerState::Done && !self.cutter.pending
    }
}

/// The partner's measurement role over frames.
pub struct PartnerFrames {
    partner: measure::Partner,
    owner_people: u64,
    bundles: u64,
    joiner: Joiner,
    cutter: Cutter,
    summary: Option<wire::MeasureSummary>,
}

impl PartnerFrames {
    /// `partner` (its `exposures` queued, of `bundles` bundles), after an accept
    /// announcing `owner_people`; frames of at most `max_frame` bytes are accepted,
    /// `send_frame` are sent.
    pub fn new(
        partner: measure::Partner,
        bundles: u64,
        owner_people: u64,
        max_frame: usize,
        send_frame: usize,
    ) -> PartnerFrames {
        PartnerFrames {
            partner,
            owner_people,
            bundles,
            joiner: Joiner { max_frame, buffer: Vec::new() },
            cutter: Cutter::new(send_frame),
            summary: None,
        }
    }

    /// The state machine, for the release and the view.
    pub fn partner(&self) -> &measure::Partner {
        &self.partner
    }

    /// The owner's summary, once received.
    pub fn summary(&self) -> Option<&wire::MeasureSummary> {
        self.summary.as_ref()
    }

    fn on_frame(&mut self, frame: wire::MeasureFrame) -> Result<(), FrameError> {
        let (name, max) = match self.partner.state() {
            PartnerState::AwaitingPeople => ("people", people_bound(self.owner_people)),
            PartnerState::AwaitingReblinded => ("reblinded", reblinded_bound(self.bundles)),
            PartnerState::AwaitingRelease => ("release", MAX_RELEASE_BYTES),
            PartnerState::AwaitingShares => ("shares", SHARES_BOUND),
            PartnerState::Done => return Err(FrameError::Unexpected { state: "done", message: "frame" }),
            PartnerState::Failed => return Err(MeasureError::Failed.into()),
        };
        let Some(message) = self.joiner.push(frame, name, max)? else { return Ok(()) };
        Ok(self.partner.receive(&message)?)
    }
}

impl Driven for PartnerFrames {
    type Incoming = OwnerBody;
    type Outgoing = wire::MeasurePartnerMessage;

    fn receive(&mut self, message: OwnerBody) -> Result<(), DriveError> {
        match message {
            OwnerBody::Frame(frame) => Ok(self.on_frame(frame)?),
            OwnerBody::Summary(summary) if self.is_done() && self.summary.is_none() => {
                self.summary = Some(summary);
                Ok(())
            }
            OwnerBody::Summary(_) => Err(FrameError::Unexpected { state: "measuring", message: "summary" }.into()),
            OwnerBody::Accept(_) => Err(FrameError::Unexpected { state: "measuring", message: "accept" }.into()),
        }
    }

    fn poll_outgoing(&mut self) -> Option<wire::MeasurePartnerMessage> {
        if !self.cutter.pending {
            self.cutter.load(self.partner.poll_outgoing()?);
        }
        self.cutter.next().map(|f| wire::MeasurePartnerMessage { body: Some(PartnerBody::Frame(f)) })
    }

    fn is_done(&self) -> bool {
        self.partner.state() == PartnerState::Done && !self.cutter.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_and_join_back_and_bounds_hold() {
        let mut cutter = Cutter::new(3);
        cutter.load(vec![1, 2, 3, 4, 5, 6, 7]);
        let mut joiner = Joiner { max_frame: 3, buffer: Vec::new() };
        let mut whole = None;
        while let Some(frame) = cutter.next() {
            assert!(whole.is_none());
            whole = joiner.push(frame, "x", 7).unwrap();
        }
        assert_eq!(whole, Some(vec![1, 2, 3, 4, 5, 6, 7]));
        let frame = |data: Vec<u8>, last| wire::MeasureFrame { data, last };
        assert!(matches!(joiner.push(frame(vec![0; 4], true), "x", 100), Err(FrameError::FrameTooLarge { .. })));
        assert!(matches!(joiner.push(frame(vec![], false), "x", 100), Err(FrameError::EmptyFrame)));
        joiner.push(frame(vec![0; 3], false), "x", 5).unwrap();
        assert!(matches!(
            joiner.push(frame(vec![0; 3], true), "x", 5),
            Err(FrameError::MessageTooLarge { max: 5, .. })
        ));
    }

    #[test]
    fn the_exposures_header_is_read_without_decoding_the_rest() {
        let bytes = [2u8, 2, 3, b't', b'e', b's', 1, b'c', 1, 0, 0, 1, 0, 0xff];
        assert_eq!(exposures_shape(&bytes), Some((2, 256)));
        assert_eq!(exposures_shape(&bytes[..9]), None);
        assert_eq!(exposures_shape(&[1u8, 0]), None);
    }
}
