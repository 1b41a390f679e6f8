//! The measurement roles over a gRPC stream (docs/PROTOCOL.md §12.9).
//!
//! [`OwnerFrames`] and [`PartnerFrames`] wrap the sans-I/O [`measure::Owner`] and
//! [`measure::Partner`] as [`Driven`] roles, so the same driver (deadlines,
//! backpressure) runs a measurement as it runs a match. Each bounds the message it
//! expects next by the sizes the hello and the accept announced before a byte of
//! it is buffered; `measure_wire` cuts, joins, encodes and decodes.

#[cfg(feature = "server")]
use crate::measure::OwnerState;
#[cfg(feature = "server")]
use crate::measure::message::{MAX_GROUPS, PartnerMessage};
use crate::measure::message::{Message, OwnerMessage};
use crate::measure::{self, MeasureError, PartnerState};
use crate::wire;
use crate::wire::measure_owner_message::Body as OwnerBody;
use crate::wire::measure_partner_message::Body as PartnerBody;

use super::driver::{DriveError, Driven};
use super::measure_wire::{Cutter, FrameError, Joiner, MAX_RELEASE_BYTES, SHARES_BOUND, people_bound, reblinded_bound};
#[cfg(feature = "server")]
use super::measure_wire::{exposures_bound, sums_bound};

#[cfg(feature = "server")]
/// The owner's measurement role over frames.
pub struct OwnerFrames {
    owner: measure::Owner,
    groups: u64,
    bundles: u64,
    max_message: usize,
    joiner: Joiner,
    cutter: Cutter,
}

#[cfg(feature = "server")]
impl OwnerFrames {
    /// `owner` (its `people` queued), for a hello announcing `groups` and `bundles`;
    /// frames of at most `max_frame` bytes are accepted, `send_frame` are sent, and
    /// no message of more than `max_message` bytes is put together, whatever the
    /// hello announced.
    pub fn new(
        owner: measure::Owner,
        groups: u64,
        bundles: u64,
        max_frame: usize,
        send_frame: usize,
        max_message: usize,
    ) -> OwnerFrames {
        OwnerFrames {
            owner,
            groups,
            bundles,
            max_message,
            joiner: Joiner::new(max_frame),
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
        let limited = max > self.max_message;
        let max = max.min(self.max_message);
        let pushed = self.joiner.push(frame, name, max).map_err(|e| match e {
            FrameError::MessageTooLarge { message, max: limit } if limited => FrameError::OverLimit { message, limit },
            other => other,
        });
        let Some(message) = pushed? else { return Ok(()) };
        let message = PartnerMessage::try_from(message)
            .map_err(|other| MeasureError::Unexpected { state: self.owner.state().doing(), message: other.name() })?;
        if let PartnerMessage::Exposures(x) = &message {
            let (g, n) = (x.labels.len() as u64, x.groups.len() as u64);
            if g != self.groups {
                return Err(FrameError::Announced { what: "number of groups", announced: self.groups, got: g });
            }
            if n != self.bundles {
                return Err(FrameError::Announced { what: "number of bundles", announced: self.bundles, got: n });
            }
        }
        Ok(self.owner.receive(message)?)
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

    fn poll_outgoing(&mut self) -> Result<Option<wire::MeasureOwnerMessage>, DriveError> {
        if !self.cutter.pending() {
            let Some(message) = self.owner.poll_outgoing() else { return Ok(None) };
            self.cutter.load(&Message::from(message))?;
        }
        Ok(self.cutter.next().map(|f| wire::MeasureOwnerMessage { body: Some(OwnerBody::Frame(f)) }))
    }

    fn is_done(&self) -> bool {
        self.owner.state() == OwnerState::Done && !self.cutter.pending()
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
            joiner: Joiner::new(max_frame),
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
        let message = OwnerMessage::try_from(message)
            .map_err(|other| MeasureError::Unexpected { state: self.partner.state().doing(), message: other.name() })?;
        Ok(self.partner.receive(message)?)
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

    fn poll_outgoing(&mut self) -> Result<Option<wire::MeasurePartnerMessage>, DriveError> {
        if !self.cutter.pending() {
            let Some(message) = self.partner.poll_outgoing() else { return Ok(None) };
            self.cutter.load(&Message::from(message))?;
        }
        Ok(self.cutter.next().map(|f| wire::MeasurePartnerMessage { body: Some(PartnerBody::Frame(f)) }))
    }

    fn is_done(&self) -> bool {
        self.partner.state() == PartnerState::Done && !self.cutter.pending()
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::measure::message::{self, People, VALUE_LEN};
    use crate::measure::{OwnerConfig, Person};
    use crate::psi::message::Element;
    use crate::token::Token;

    /// The owner's role for a hello of one group and `bundles` bundles, taking
    /// messages of at most `max_message` bytes.
    fn owner_frames(bundles: u64, max_message: usize) -> OwnerFrames {
        let people = [Person { tokens: vec![Token([1; 32])], value: 1 }];
        let owner = measure::Owner::new(OwnerConfig::default(), &people).unwrap();
        OwnerFrames::new(owner, 1, bundles, 1 << 20, 1 << 20, max_message)
    }

    fn frame(data: Vec<u8>, last: bool) -> PartnerBody {
        PartnerBody::Frame(wire::MeasureFrame { data, last })
    }

    #[test]
    fn the_owner_refuses_an_owners_message_and_frames_past_either_bound() {
        let people = Message::People(People {
            public_key: [1; 32],
            bundle: 1,
            elements: vec![Element([2; 32])],
            values: vec![[3; VALUE_LEN]],
            proofs: Vec::new(),
        });
        let mut frames = owner_frames(1, 1 << 20);
        let refused = frames.receive(frame(message::encode(&people).unwrap(), true));
        assert!(
            matches!(
                refused,
                Err(DriveError::Measure(FrameError::Measure(MeasureError::Unexpected {
                    state: "awaiting exposures",
                    message: "people"
                })))
            ),
            "{refused:?}"
        );
        // 1000 bundles may take far more than 70,000 bytes: the owner's limit speaks.
        let mut frames = owner_frames(1000, 70_000);
        frames.receive(frame(vec![2; 60_000], false)).unwrap();
        let refused = frames.receive(frame(vec![2; 20_000], false));
        assert!(
            matches!(refused, Err(DriveError::Measure(FrameError::OverLimit { message: "exposures", limit: 70_000 }))),
            "{refused:?}"
        );
        // One bundle cannot take 70,000 bytes: the announced sizes speak.
        let mut frames = owner_frames(1, 70_000);
        let refused = frames.receive(frame(vec![2; 60_000], false));
        assert!(matches!(refused, Err(DriveError::Measure(FrameError::MessageTooLarge { .. }))), "{refused:?}");
    }
}
