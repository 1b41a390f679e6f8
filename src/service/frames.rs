//! The measurement roles over a gRPC stream (docs/PROTOCOL.md §12.9).
//!
//! [`OwnerFrames`] and [`PartnerFrames`] wrap the sans-I/O [`measure::Owner`] and
//! [`measure::Partner`] as [`Driven`] roles, so the same driver (deadlines,
//! backpressure) runs a measurement as it runs a match. Each bounds the message it
//! expects next by the sizes the hello and the accept announced before a byte of
//! it is buffered; `measure_wire` cuts, joins, encodes and decodes.

use std::sync::Arc;

#[cfg(feature = "server")]
use crate::measure::OwnerState;
#[cfg(feature = "server")]
use crate::measure::message::{Exposures, MAX_GROUPS, PartnerMessage};
use crate::measure::message::{Message, OwnerMessage};
use crate::measure::{self, MeasureError, PartnerState};
use crate::progress::{self, Meter, Progress, Unit};
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
    /// Exposures taken in before `people` ([`ExposuresIntake`]), given to the owner
    /// once `people` has gone out, so that the partner works on `people` while the
    /// owner re-blinds.
    pending: Option<Exposures>,
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
            pending: None,
        }
    }

    /// With `exposures` already taken in and checked ([`ExposuresIntake`]): the
    /// owner re-blinds them once its `people` has been sent.
    pub fn with_exposures(mut self, exposures: Exposures) -> OwnerFrames {
        self.pending = Some(exposures);
        self
    }

    /// The state machine, for its result.
    pub fn owner(&self) -> &measure::Owner {
        &self.owner
    }

    fn on_frame(&mut self, frame: wire::MeasureFrame) -> Result<(), FrameError> {
        // A frame before `people` is out (an honest partner sends none): the
        // exposures come first, as they did on the wire.
        if let Some(x) = self.pending.take() {
            self.owner.receive(PartnerMessage::Exposures(x))?;
        }
        let groups = usize::try_from(self.groups).unwrap_or(MAX_GROUPS);
        let (name, max) = match self.owner.state() {
            OwnerState::AwaitingExposures => ("exposures", exposures_bound(groups, self.bundles)),
            OwnerState::AwaitingSums => ("sums", sums_bound(groups)),
            OwnerState::Done => return Err(FrameError::Unexpected { state: "done", message: "frame" }),
            OwnerState::Failed => return Err(MeasureError::Failed.into()),
        };
        let Some(message) = join_limited(&mut self.joiner, frame, name, max, self.max_message)? else { return Ok(()) };
        let message = PartnerMessage::try_from(message)
            .map_err(|other| MeasureError::Unexpected { state: self.owner.state().doing(), message: other.name() })?;
        if let PartnerMessage::Exposures(x) = &message {
            check_announced(x, self.groups, self.bundles)?;
        }
        Ok(self.owner.receive(message)?)
    }
}

/// Adds `frame` to the message `name` being joined, within `max` bytes and the
/// owner's `max_message` (over it: [`FrameError::OverLimit`]).
#[cfg(feature = "server")]
fn join_limited(
    joiner: &mut Joiner,
    frame: wire::MeasureFrame,
    name: &'static str,
    max: usize,
    max_message: usize,
) -> Result<Option<Message>, FrameError> {
    let limited = max > max_message;
    joiner.push(frame, name, max.min(max_message)).map_err(|e| match e {
        FrameError::MessageTooLarge { message, max: limit } if limited => FrameError::OverLimit { message, limit },
        other => other,
    })
}

/// The `exposures` message holds the groups and bundles the hello announced.
#[cfg(feature = "server")]
fn check_announced(x: &Exposures, groups: u64, bundles: u64) -> Result<(), FrameError> {
    let (g, n) = (x.labels.len() as u64, x.groups.len() as u64);
    if g != groups {
        return Err(FrameError::Announced { what: "number of groups", announced: groups, got: g });
    }
    if n != bundles {
        return Err(FrameError::Announced { what: "number of bundles", announced: bundles, got: n });
    }
    Ok(())
}

/// The partner's `exposures`, taken in before the owner prepares its people (the
/// partner sends them right after the accept): the owner checks them
/// ([`measure::Owner::check_exposures`]) before it blinds, encrypts or proves
/// anything, so a message it refuses costs it none of that. Bounded like
/// [`OwnerFrames`]; any other message is refused as out of order.
#[cfg(feature = "server")]
pub struct ExposuresIntake {
    groups: u64,
    bundles: u64,
    max_message: usize,
    joiner: Joiner,
    exposures: Option<Exposures>,
}

#[cfg(feature = "server")]
impl ExposuresIntake {
    /// For a hello announcing `groups` and `bundles`; frames of at most `max_frame`
    /// bytes, a message of at most `max_message`.
    pub fn new(groups: u64, bundles: u64, max_frame: usize, max_message: usize) -> ExposuresIntake {
        ExposuresIntake { groups, bundles, max_message, joiner: Joiner::new(max_frame), exposures: None }
    }

    /// The message, once it has arrived whole.
    pub fn into_exposures(self) -> Option<Exposures> {
        self.exposures
    }
}

#[cfg(feature = "server")]
impl Driven for ExposuresIntake {
    type Incoming = PartnerBody;
    type Outgoing = wire::MeasureOwnerMessage;

    fn receive(&mut self, message: PartnerBody) -> Result<(), DriveError> {
        let PartnerBody::Frame(frame) = message else {
            return Err(FrameError::Unexpected { state: "measuring", message: "hello" }.into());
        };
        if self.exposures.is_some() {
            return Err(FrameError::Unexpected { state: "preparing", message: "frame" }.into());
        }
        let groups = usize::try_from(self.groups).unwrap_or(MAX_GROUPS);
        let bound = exposures_bound(groups, self.bundles);
        let Some(message) = join_limited(&mut self.joiner, frame, "exposures", bound, self.max_message)? else {
            return Ok(());
        };
        // `decode` yields well-formed messages only (`Message::validate`).
        let Message::Exposures(x) = message else {
            let unexpected = MeasureError::Unexpected { state: "awaiting exposures", message: message.name() };
            return Err(FrameError::from(unexpected).into());
        };
        check_announced(&x, self.groups, self.bundles)?;
        self.exposures = Some(x);
        Ok(())
    }

    fn poll_outgoing(&mut self) -> Result<Option<wire::MeasureOwnerMessage>, DriveError> {
        Ok(None)
    }

    fn is_done(&self) -> bool {
        self.exposures.is_some()
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
            let mut message = self.owner.poll_outgoing();
            if message.is_none()
                && let Some(x) = self.pending.take()
            {
                // `people` is out: re-blind the exposures taken in before it.
                self.owner.receive(PartnerMessage::Exposures(x)).map_err(FrameError::from)?;
                message = self.owner.poll_outgoing();
            }
            let Some(message) = message else { return Ok(None) };
            self.cutter.load(&Message::from(message))?;
        }
        Ok(self.cutter.next().map(|f| wire::MeasureOwnerMessage { body: Some(OwnerBody::Frame(f)) }))
    }

    fn is_done(&self) -> bool {
        self.owner.state() == OwnerState::Done && !self.cutter.pending() && self.pending.is_none()
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
    waits: Waits,
}

/// What the partner shows while it waits for the owner's two large messages: its
/// people (which take minutes to come when the owner proves them) and the
/// partner's bundles blinded again. One meter each, filled when the message has
/// arrived; nothing shown without a [`Progress`].
struct Waits {
    progress: Option<Arc<dyn Progress>>,
    /// The state waited in, its meter and the meter's total.
    current: Option<(PartnerState, Arc<dyn Meter>, u64)>,
}

impl Waits {
    /// Finishes the meter of a state left behind and starts the next one's.
    fn follow(&mut self, state: PartnerState, owner_people: u64, bundles: u64) {
        if let Some((waited, meter, total)) = &self.current {
            if *waited == state {
                return;
            }
            meter.set_position(*total);
            meter.finish();
            self.current = None;
        }
        let (label, total) = match state {
            PartnerState::AwaitingPeople => ("the owner's people", owner_people),
            PartnerState::AwaitingReblinded => ("your bundles, blinded again", bundles),
            _ => return,
        };
        let meter = progress::start(self.progress.as_ref(), label, total, Unit::Elements);
        self.current = Some((state, meter, total));
    }
}

impl PartnerFrames {
    /// `partner` (its `exposures` queued, of `bundles` bundles), after an accept
    /// announcing `owner_people`; frames of at most `max_frame` bytes are accepted,
    /// `send_frame` are sent; the waits for the owner's large messages are shown on
    /// `progress`.
    pub fn new(
        partner: measure::Partner,
        bundles: u64,
        owner_people: u64,
        (max_frame, send_frame): (usize, usize),
        progress: Option<Arc<dyn Progress>>,
    ) -> PartnerFrames {
        let mut waits = Waits { progress, current: None };
        waits.follow(partner.state(), owner_people, bundles);
        PartnerFrames {
            partner,
            owner_people,
            bundles,
            joiner: Joiner::new(max_frame),
            cutter: Cutter::new(send_frame),
            summary: None,
            waits,
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
        self.partner.receive(message)?;
        self.waits.follow(self.partner.state(), self.owner_people, self.bundles);
        Ok(())
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

    /// A meter that remembers what it was told.
    #[derive(Debug)]
    struct Recording {
        label: String,
        total: u64,
        position: std::sync::atomic::AtomicU64,
        finished: std::sync::atomic::AtomicBool,
    }

    impl Meter for Recording {
        fn set_total(&self, _: u64) {}
        fn set_position(&self, done: u64) {
            self.position.store(done, std::sync::atomic::Ordering::Relaxed);
        }
        fn advance(&self, units: u64) {
            self.position.fetch_add(units, std::sync::atomic::Ordering::Relaxed);
        }
        fn finish(&self) {
            self.finished.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[derive(Debug, Default)]
    struct Recorded(std::sync::Mutex<Vec<Arc<Recording>>>);

    impl Progress for Recorded {
        fn start(&self, label: &str, total: u64, _: Unit) -> Arc<dyn Meter> {
            let meter = Arc::new(Recording {
                label: label.to_owned(),
                total,
                position: Default::default(),
                finished: Default::default(),
            });
            self.0.lock().unwrap().push(meter.clone());
            meter
        }
    }

    /// The partner shows its waits for the owner's people and for its own bundles
    /// blinded again, each filled and finished once its message has arrived.
    #[test]
    fn the_partner_shows_its_waits_for_the_owners_large_messages() {
        let people: Vec<Person> =
            (0..3u8).map(|i| Person { tokens: vec![Token([i + 1; 32])], value: u64::from(i) }).collect();
        let owner =
            measure::Owner::new(OwnerConfig { min_aggregate: 1, min_group_size: 1, ..OwnerConfig::default() }, &people)
                .unwrap();
        let exposures: Vec<measure::Exposure> =
            (1..3u8).map(|i| measure::Exposure { tokens: vec![Token([i; 32])], group: 0 }).collect();
        // Two exposures and their 256 traps.
        let sent = measure::trap::bundles_sent(&exposures, 1);
        assert_eq!(sent, 258);
        let mut owner = OwnerFrames::new(owner, 1, sent, 1 << 20, 1 << 20, 1 << 24);
        let config = measure::PartnerConfig {
            min_aggregate: 1,
            learner: measure::Learner::Owner,
            noise: None,
            seed: None,
            require_proofs: false,
        };
        let partner = measure::Partner::new(config, vec!["all".into()], vec![2], &exposures).unwrap();
        let recorded = Arc::new(Recorded::default());
        let mut partner = PartnerFrames::new(partner, sent, 3, (1 << 20, 1 << 20), Some(recorded.clone() as _));
        while !(owner.is_done() && partner.is_done()) {
            let mut moved = false;
            while let Some(m) = owner.poll_outgoing().unwrap() {
                partner.receive(m.body.unwrap()).unwrap();
                moved = true;
            }
            while let Some(m) = partner.poll_outgoing().unwrap() {
                owner.receive(m.body.unwrap()).unwrap();
                moved = true;
            }
            assert!(moved, "stuck");
        }
        let meters = recorded.0.lock().unwrap();
        let seen: Vec<_> = meters
            .iter()
            .map(|m| {
                let position = m.position.load(std::sync::atomic::Ordering::Relaxed);
                (m.label.as_str(), m.total, position, m.finished.load(std::sync::atomic::Ordering::Relaxed))
            })
            .collect();
        assert_eq!(seen, [("the owner's people", 3, 3, true), ("your bundles, blinded again", 258, 258, true)]);
    }

    #[test]
    fn the_owner_refuses_an_owners_message_and_frames_past_either_bound() {
        let people = Message::People(People {
            public_key: [1; 32],
            blinding_point: [1; 32],
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
