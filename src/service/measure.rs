//! The gRPC `Measurer` service: one campaign measurement per stream
//! (docs/PROTOCOL.md §12.9), served like a match by the session skeleton
//! (`session`): same authentication, concurrency slots, idle deadline, message
//! size limit, audit and metrics.
//!
//! Checks on the hello, in order: the partner may use the campaign
//! (PERMISSION_DENIED), the campaign has measurement configured
//! (FAILED_PRECONDITION), the owner trusts the partner to run an honest client
//! (`honest_client_trusted`, PERMISSION_DENIED), version, profile and key fingerprint
//! (FAILED_PRECONDITION), the announced groups (INVALID_ARGUMENT) and bundles
//! (RESOURCE_EXHAUSTED over `max_partner_set`). Then the opt-outs as they are now
//! are applied to the outcomes, a proving slot is taken when the owner will prove
//! its values (`proving`: RESOURCE_EXHAUSTED while `max_concurrent_proofs`
//! measurements prove), and the budgets are charged (one match and the bundles as
//! identifiers from the daily ones; with noise, the measurement's worst-case
//! epsilon for one outcome person from the partner's daily budget on the campaign
//! and its lifetime budget on the outcome dataset) before the owner sends `accept`.
//! Then the partner's exposures are taken in whole and checked
//! ([`ExposuresIntake`], `measure::Owner::check_exposures`: repeated elements,
//! groups under `min_group_size`) before the owner blinds, encrypts and proves its
//! outcomes, so a refused message costs it none of that. When the
//! owner learns the figures they are written to the results directory before the
//! measurement is audited; the summary goes out last.

use std::sync::Arc;

use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::error;

use super::audit::{MeasureRecord, now_unix_ms};
use super::budget::EpsilonCharge;
use super::driver::DriveError;
use super::frames::{ExposuresIntake, OwnerFrames};
use super::measure_wire::{
    FrameError, MEASURE_VERSION, OWNER_LEARNS_REFUSED, SEND_FRAME_BYTES, exposures_min, learner_to_wire,
};
use super::metrics::Metrics;
use super::session::{self, Service, Session};
use super::shared::Shared;
use super::status::{drive_status, protocol_status, with_code};
use crate::measure::message::MAX_GROUPS;
use crate::measure::side::{OwnerSide, SideReport, owner_people};
use crate::measure::stats::{GroupFigures, Lift};
use crate::measure::{self, Learner};
use crate::output::write_json;
use crate::psi::{ProtocolError, untrusted};
use crate::wire;
use crate::wire::measure_owner_message::Body as OwnerBody;
use crate::wire::measure_partner_message::Body as PartnerBody;
use crate::wire::measurer_server::Measurer;

/// The gRPC `Measurer` service.
pub struct MeasureService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Measurer for MeasureService {
    type MeasureStream = ReceiverStream<Result<wire::MeasureOwnerMessage, Status>>;

    async fn measure(
        &self,
        request: Request<Streaming<wire::MeasurePartnerMessage>>,
    ) -> Result<Response<Self::MeasureStream>, Status> {
        session::serve::<MeasureService>(&self.shared, request)
    }
}

/// What the owner writes to its results directory when it learns the figures:
/// `<campaign>-<partner>-<id>.measurement.json`.
#[derive(Serialize)]
struct ServerReport<'a> {
    campaign: &'a str,
    partner: &'a str,
    measurement_id: &'a str,
    profile: &'a str,
    learner: &'static str,
    min_aggregate: u64,
    epsilon: Option<f64>,
    clip_value: Option<u64>,
    /// What the measurement charged the partner's budgets (its worst case per
    /// person), and its total on the outcome dataset since the first measurement.
    epsilon_charged: f64,
    epsilon_spent_lifetime: Option<f64>,
    outcome_dataset: &'a str,
    owner: &'a SideReport,
    exposure_bundles: u64,
    groups: &'a [GroupFigures],
    lift: &'a Option<Lift>,
}

impl session::Record for MeasureRecord {
    fn new(id: &str, partner: &str) -> MeasureRecord {
        MeasureRecord {
            time_unix_ms: now_unix_ms(),
            kind: "measurement",
            match_id: id.to_owned(),
            partner: partner.to_owned(),
            campaign: String::new(),
            learner: None,
            owner_learned: false,
            partner_learned: false,
            exposure_bundles: None,
            groups: None,
            outcome_records: None,
            opted_out_records: None,
            owner_people: None,
            epsilon_spent: 0.0,
            epsilon_spent_lifetime: None,
            outcome: session::outcome(None),
            duration_ms: 0,
        }
    }

    fn campaign(&self) -> &str {
        &self.campaign
    }

    /// A failed measurement taught nobody anything: its summary is never sent.
    fn end(&mut self, failure: Option<tonic::Code>, duration_ms: u64) {
        if failure.is_some() {
            self.owner_learned = false;
            self.partner_learned = false;
        }
        self.outcome = session::outcome(failure);
        self.duration_ms = duration_ms;
    }
}

impl Service for MeasureService {
    const RPC: &'static str = "measure";
    const NOUN: &'static str = "measurement";
    type Wire = wire::MeasurePartnerMessage;
    type Incoming = PartnerBody;
    type Outgoing = wire::MeasureOwnerMessage;
    type Record = MeasureRecord;

    fn decode(message: wire::MeasurePartnerMessage) -> Result<PartnerBody, DriveError> {
        message.body.ok_or(DriveError::Measure(FrameError::Malformed("a message without a body")))
    }

    fn started(metrics: &Metrics) {
        metrics.measurement_started();
    }

    fn finished(metrics: &Metrics, _: &MeasureRecord, _: f64) {
        metrics.measurement_finished();
    }

    fn failed(metrics: &Metrics, reason: &str, _: f64) {
        metrics.measurement_failed(reason);
    }

    fn run(
        session: &mut Session<'_, MeasureService>,
        record: &mut MeasureRecord,
    ) -> Result<Option<wire::MeasureOwnerMessage>, Status> {
        let state = session.state;
        let limits = &state.config.limits;
        let PartnerBody::Hello(hello) = session.receive()? else {
            return Err(Status::failed_precondition("unexpected frame while awaiting hello"));
        };
        record.campaign = untrusted(&hello.campaign);
        record.exposure_bundles = Some(hello.exposure_bundles);
        record.groups = Some(u64::from(hello.groups));
        let campaign = session.campaign(&hello.campaign)?;
        let (Some(settings), Some(outcomes)) = (&campaign.settings.measurement, &campaign.outcomes) else {
            return Err(Status::failed_precondition("this campaign has no measurement configured"));
        };
        record.learner = Some(settings.learner.name().to_owned());
        // The partner computes the matches itself: a modified client can link its
        // bundles through the owner's reply and read which of its exposures are in
        // the outcomes, and one that learns figures can read one person's value
        // exactly (docs/PRIVACY.md, "Cheating parties, by learner"). So measurements
        // run only for partners the owner trusts to run an honest client, refused
        // before anything is read, encrypted or charged.
        if !session.partner.honest_client_trusted {
            return Err(Status::permission_denied(format!(
                "measurements let the partner's client compute the matches (and with learner = partner or both, \
                 decrypt figures of the owner's values), which a modified client could turn into which of its \
                 people are in the outcomes; the owner runs them only for partners it trusts to run an honest \
                 client (honest_client_trusted), which this partner is not (this campaign's learner: {})",
                settings.learner.name()
            )));
        }
        // And the owner learns exact figures only where the partner lets it: with
        // noise the partner noises every figure before the owner decrypts it and
        // checks the owner's range proofs (since version 4), without noise the owner
        // would decrypt exact sums, from which crafted values decode the groups.
        if settings.learner != Learner::Partner && settings.noise.is_none() && !hello.owner_may_learn {
            return Err(with_code(
                Status::failed_precondition(format!(
                    "this campaign's measurement releases exact figures to the owner (learner = {}, no epsilon), \
                     and the partner's hello does not allow that (owner_may_learn)",
                    settings.learner.name()
                )),
                OWNER_LEARNS_REFUSED,
            ));
        }
        if hello.version != MEASURE_VERSION {
            return Err(protocol_status(&ProtocolError::UnsupportedVersion {
                ours: MEASURE_VERSION,
                theirs: hello.version,
            }));
        }
        let profile = campaign.settings.profile.name();
        if hello.profile != profile {
            return Err(protocol_status(&ProtocolError::ProfileMismatch {
                ours: profile.to_owned(),
                theirs: untrusted(&hello.profile),
            }));
        }
        if hello.key_fingerprint.is_empty() {
            return Err(protocol_status(&ProtocolError::KeyFingerprintMissing));
        }
        if !campaign.key_fingerprint.matches(&hello.key_fingerprint) {
            return Err(protocol_status(&ProtocolError::KeyMismatch));
        }
        if hello.groups == 0 || hello.groups as usize > MAX_GROUPS {
            return Err(Status::invalid_argument(format!(
                "the hello announces {} groups; 1 to {MAX_GROUPS} are allowed",
                hello.groups
            )));
        }
        let max_bundles = limits.max_partner_set.min(u64::from(u32::MAX));
        if hello.exposure_bundles > max_bundles {
            return Err(protocol_status(&ProtocolError::SetSizeOutOfRange {
                size: hello.exposure_bundles,
                min: 0,
                max: max_bundles,
            }));
        }
        // The owner's memory for this stream is bounded whatever the hello says: an
        // exposures message that cannot fit even with one identifier per bundle is
        // refused now, before anything is blinded, encrypted or charged; a larger
        // one is refused when its frames pass the limit (`OwnerFrames`).
        let max_message = limits.max_measurement_message_bytes;
        let smallest = exposures_min(hello.groups as usize, hello.exposure_bundles);
        if smallest > max_message {
            return Err(Status::resource_exhausted(format!(
                "the hello announces {} exposure bundles: their exposures message takes at least {smallest} bytes, \
                 over this owner's limit of {max_message} bytes per measurement message \
                 (max_measurement_message_bytes)",
                hello.exposure_bundles
            )));
        }
        // Opt-outs as they are now, on the outcomes, before anything is encrypted.
        let excluded = session.excluded(campaign, outcomes)?;
        let OwnerSide { people, report: mut side } = owner_people(outcomes, &excluded, settings.value_max);
        side.file = settings.outcomes.display().to_string();
        record.outcome_records = Some(outcomes.len() as u64);
        // Every record left out by the opt-outs: those listed and the other
        // records of their people.
        record.opted_out_records = Some(side.excluded_records + side.records_excluded_with_person);
        record.owner_people = Some(people.len() as u64);
        // A search the decrypting side would refuse is refused before the charge.
        if let Some(noise) = settings.noise {
            noise.check_search(settings.learner, people.len() as u64).map_err(|e| {
                Status::failed_precondition(format!("this campaign's measurement cannot run on the owner's data: {e}"))
            })?;
        }
        // The owner proves its values whenever it decrypts the groups' sums (the
        // partner checks them): the most expensive part of the server, in a pool
        // of its own, and refused before the charge when others are proving now.
        let prove = settings.learner != Learner::Partner && settings.noise.is_some();
        let proving = prove
            .then(|| session.shared.proving.acquire(limits.max_concurrent_proofs))
            .transpose()
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        // The daily budget before the expensive part (blinding and encrypting every
        // outcome person): a partner whose budget is spent costs a refusal, not the
        // owner's CPU (issue 20, item 6). A failure after this point is the owner's
        // own (its random number generator) and still counts against the budget.
        // Each measurement is charged its worst case for one outcome person.
        let widest = people.iter().map(|p| p.tokens.len() as u64).max().unwrap_or(1);
        let epsilon = match (settings.noise, settings.max_epsilon_per_day, settings.max_epsilon_lifetime) {
            (Some(noise), Some(daily), Some(lifetime)) => Some(EpsilonCharge {
                campaign: &campaign.settings.id,
                dataset: &settings.outcome_dataset,
                epsilon: noise.worst_case_epsilon(u64::from(hello.groups), widest),
                daily,
                lifetime,
            }),
            _ => None,
        };
        let spent = session.charge(|budgets, partner, allowance| {
            budgets.charge_measurement(partner, hello.exposure_bundles, allowance, epsilon)
        })?;
        record.epsilon_spent = epsilon.map_or(0.0, |e| e.epsilon);
        record.epsilon_spent_lifetime = epsilon.map(|_| spent.lifetime);
        let owner_config = measure::OwnerConfig {
            min_aggregate: settings.min_aggregate,
            min_group_size: settings.min_group_size,
            learner: settings.learner,
            noise: settings.noise,
            seed: None,
            prove,
        };
        // The accept goes first: it needs only the sizes, and the partner, which
        // learns from it how many people the owner will prove, waits for the proofs
        // accordingly (a million people take minutes on a few cores).
        let max_frame = limits.max_message_bytes.saturating_sub(1024);
        let accept = wire::MeasureAccept {
            version: MEASURE_VERSION,
            learner: learner_to_wire(settings.learner).into(),
            min_aggregate: settings.min_aggregate,
            owner_people: record.owner_people.unwrap_or(0),
            max_frame_bytes: u32::try_from(max_frame).unwrap_or(u32::MAX),
            epsilon: settings.noise.map(|n| n.epsilon),
            clip_value: settings.noise.map(|n| n.clip),
        };
        session.send(wire::MeasureOwnerMessage { body: Some(OwnerBody::Accept(accept)) })?;
        // The partner's exposures come right after the accept: checked before the
        // owner blinds, encrypts or proves anything (repeated elements, groups under
        // `min_group_size`), so a message the owner refuses costs it none of that.
        let mut intake = ExposuresIntake::new(u64::from(hello.groups), hello.exposure_bundles, max_frame, max_message);
        session.drive(&mut intake, Some)?;
        let exposures = intake.into_exposures().ok_or_else(|| Status::internal("the exposures did not arrive"))?;
        let refused = |e: measure::MeasureError| drive_status(DriveError::Measure(e.into()));
        measure::Owner::check_exposures(&exposures, settings.min_group_size).map_err(refused)?;
        // Proving takes minutes for a million people: stopped when the partner goes.
        let gone = session.partner_gone();
        let start = || measure::Owner::prepare(owner_config, &people, &gone);
        let owner = match &proving {
            Some(slot) => session.shared.proving.run(slot, start),
            None => start(),
        };
        drop(proving);
        let owner = owner.map_err(|e| {
            if matches!(e, measure::MeasureError::Abandoned) {
                return Status::cancelled(e.to_string());
            }
            error!(match_id = session.id, campaign = %campaign.settings.id, error = %e, "could not start the owner's side");
            Status::internal("the owner could not start the measurement")
        })?;
        drop(people);
        // The exposures are re-blinded once `people` has gone out.
        let mut frames = OwnerFrames::new(
            owner,
            u64::from(hello.groups),
            hello.exposure_bundles,
            max_frame,
            SEND_FRAME_BYTES.min(max_frame),
            max_message,
        )
        .with_exposures(exposures);
        session.drive(&mut frames, Some)?;
        // With learner `partner` the owner decrypted nothing and writes nothing.
        if settings.learner != Learner::Partner {
            let result = frames.owner().result().ok_or_else(|| Status::internal("measurement ended unfinished"))?;
            let name = session.results_name(&campaign.settings.id, session.id, ".measurement.json");
            let report = ServerReport {
                campaign: &campaign.settings.id,
                partner: &session.partner.name,
                measurement_id: session.id,
                profile,
                learner: settings.learner.name(),
                min_aggregate: settings.min_aggregate,
                epsilon: settings.noise.map(|n| n.epsilon),
                clip_value: settings.value_max,
                epsilon_charged: record.epsilon_spent,
                epsilon_spent_lifetime: record.epsilon_spent_lifetime,
                outcome_dataset: &settings.outcome_dataset,
                owner: &side,
                exposure_bundles: hello.exposure_bundles,
                groups: &result.groups,
                lift: &result.lift,
            };
            write_json(&state.config.results_dir, &name, &report).map_err(|e| {
                error!(error = %e, "could not write the measurement results");
                Status::internal("could not store the measurement results")
            })?;
        }
        record.owner_learned = settings.learner != Learner::Partner;
        record.partner_learned = settings.learner.partner_learns();
        let summary = wire::MeasureSummary {
            owner_people: record.owner_people.unwrap_or(0),
            exposure_bundles: hello.exposure_bundles,
            groups: hello.groups,
            learner: learner_to_wire(settings.learner).into(),
            epsilon_spent: record.epsilon_spent,
        };
        Ok(Some(wire::MeasureOwnerMessage { body: Some(OwnerBody::Summary(summary)) }))
    }
}
