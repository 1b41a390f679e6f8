//! The gRPC `Measurer` service: one campaign measurement per stream
//! (docs/PROTOCOL.md §12.9), served like a match by [`serve_stream`]: same
//! authentication, concurrency slots, idle deadline and message size limit.
//!
//! Checks on the hello, in order: the partner may use the campaign
//! (PERMISSION_DENIED), the campaign has measurement configured
//! (FAILED_PRECONDITION), version, profile and key fingerprint
//! (FAILED_PRECONDITION), the announced groups (INVALID_ARGUMENT) and bundles
//! (RESOURCE_EXHAUSTED over `max_partner_set`). Then the opt-outs as they are now
//! are applied to the outcomes, the owner's first message is prepared, and only then
//! is the daily budget charged (one match, the bundles as identifiers, and the
//! campaign's epsilon when it adds noise), just before `accept` goes out. When the
//! owner learns the figures they are written to the results directory before the
//! measurement is audited; the summary goes out last.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use super::audit::{MeasureRecord, now_unix_ms};
use super::budget::{Allowance, BudgetError, EpsilonCharge};
use super::config::PartnerPolicy;
use super::driver::{DriveError, Inbound, drive, receive_with_deadline, send_with_deadline};
use super::frames::{FrameError, MEASURE_VERSION, OwnerFrames, SEND_FRAME_BYTES, learner_to_wire};
use super::server::Shared;
use super::session::{drive_status, file_safe, protocol_status, serve_stream};
use super::state::State;
use crate::measure::message::MAX_GROUPS;
use crate::measure::side::{OwnerSide, SideReport, owner_people};
use crate::measure::stats::{GroupFigures, Lift};
use crate::measure::{self, Learner, MeasureError};
use crate::optout::BadRows;
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

type OwnerStream = ReceiverStream<Result<wire::MeasureOwnerMessage, Status>>;
type Outbound = mpsc::Sender<Result<wire::MeasureOwnerMessage, Status>>;

#[tonic::async_trait]
impl Measurer for MeasureService {
    type MeasureStream = OwnerStream;

    async fn measure(
        &self,
        request: Request<Streaming<wire::MeasurePartnerMessage>>,
    ) -> Result<Response<OwnerStream>, Status> {
        let decode = |m: wire::MeasurePartnerMessage| {
            m.body.ok_or(DriveError::Measure(FrameError::Malformed("a message without a body")))
        };
        serve_stream(&self.shared, "measure", request, decode, |ctx| {
            ctx.shared.metrics.measurement_started();
            let session = Session { shared: &ctx.shared, state: &ctx.state, partner: &ctx.partner, id: &ctx.id };
            session.run(ctx.inbound, ctx.outbound, ctx.runtime)
        })
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
    owner: &'a SideReport,
    exposure_bundles: u64,
    groups: &'a [GroupFigures],
    lift: &'a Option<Lift>,
}

struct Session<'a> {
    shared: &'a Shared,
    state: &'a State,
    partner: &'a PartnerPolicy,
    id: &'a str,
}

impl Session<'_> {
    fn run(
        &self,
        mut inbound: Inbound<PartnerBody>,
        outbound: &Outbound,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), Status> {
        let started = Instant::now();
        let mut record = MeasureRecord {
            time_unix_ms: now_unix_ms(),
            kind: "measurement",
            match_id: self.id.to_owned(),
            partner: self.partner.name.clone(),
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
            outcome: "ok".to_owned(),
            duration_ms: 0,
        };
        let result = self.measure(&mut inbound, outbound, runtime, &mut record);
        record.duration_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => {
                self.shared.metrics.measurement_finished();
                info!(match_id = self.id, partner = %record.partner, campaign = %record.campaign, seconds = started.elapsed().as_secs_f64(), "measurement finished");
            }
            Err(status) => {
                record.outcome = format!("{:?}", status.code());
                record.owner_learned = false;
                record.partner_learned = false;
                self.shared.metrics.measurement_failed(&record.outcome);
                warn!(match_id = self.id, partner = %record.partner, campaign = %record.campaign, code = ?status.code(), reason = status.message(), "measurement failed");
            }
        }
        if let Err(e) = self.shared.audit.append(&record) {
            error!(path = %self.shared.audit.path().display(), error = %e, "could not write the audit log");
        }
        // The summary goes out only now that the measurement is audited.
        let summary = result?;
        let idle = self.state.config.limits.idle_timeout();
        let message = wire::MeasureOwnerMessage { body: Some(OwnerBody::Summary(summary)) };
        let _ = send_with_deadline(outbound, Ok(message), idle, runtime);
        Ok(())
    }

    fn measure(
        &self,
        inbound: &mut Inbound<PartnerBody>,
        outbound: &Outbound,
        runtime: &tokio::runtime::Handle,
        record: &mut MeasureRecord,
    ) -> Result<wire::MeasureSummary, Status> {
        let limits = &self.state.config.limits;
        let idle = limits.idle_timeout();
        let first = receive_with_deadline(inbound, idle, runtime).map_err(drive_status)?;
        let PartnerBody::Hello(hello) = first else {
            return Err(Status::failed_precondition("unexpected frame while awaiting hello"));
        };
        record.campaign = untrusted(&hello.campaign);
        record.exposure_bundles = Some(hello.exposure_bundles);
        record.groups = Some(u64::from(hello.groups));
        let campaign = self
            .partner
            .campaigns
            .contains(&hello.campaign)
            .then(|| self.state.campaigns.get(&hello.campaign))
            .flatten()
            .ok_or_else(|| Status::permission_denied("this partner may not use that campaign"))?;
        let (Some(settings), Some(outcomes)) = (&campaign.settings.measurement, &campaign.outcomes) else {
            return Err(Status::failed_precondition("this campaign has no measurement configured"));
        };
        record.learner = Some(settings.learner.name().to_owned());
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
        // Opt-outs as they are now, on the outcomes, before anything is encrypted.
        let config = &self.state.config;
        let bad_rows = BadRows::skip_if(config.optouts_skip_bad_rows);
        let excluded =
            self.shared.optouts.excluded(campaign, outcomes, config.optouts.as_deref(), bad_rows).map_err(|e| {
                error!(error = %e, "opt-outs unavailable; refusing to measure");
                Status::unavailable("opt-outs unavailable")
            })?;
        let OwnerSide { people, report: mut side } = owner_people(outcomes, &excluded, settings.value_max);
        side.file = settings.outcomes.display().to_string();
        record.outcome_records = Some(outcomes.len() as u64);
        record.opted_out_records = Some(side.excluded_records);
        record.owner_people = Some(people.len() as u64);
        // The daily budget before the expensive part (blinding and encrypting every
        // outcome person): a partner whose budget is spent costs a refusal, not the
        // owner's CPU (issue 20, item 6). A failure after this point is the owner's
        // own (its random number generator) and still counts against the budget.
        let allowance = Allowance {
            matches: limits.max_matches_per_partner_per_day,
            identifiers: limits.max_identifiers_per_partner_per_day,
        };
        let epsilon = settings.noise.zip(settings.max_epsilon_per_day).map(|(noise, daily)| EpsilonCharge {
            campaign: &campaign.settings.id,
            epsilon: noise.epsilon,
            daily,
        });
        self.shared
            .budgets
            .charge_measurement(&self.partner.name, hello.exposure_bundles, allowance, epsilon)
            .map_err(|e| match e {
                BudgetError::State { .. } => {
                    error!(error = %e, "budget state unavailable");
                    Status::internal("budget state unavailable")
                }
                other => Status::resource_exhausted(other.to_string()),
            })?;
        record.epsilon_spent = epsilon.map_or(0.0, |e| e.epsilon);
        let owner_config = measure::OwnerConfig {
            min_aggregate: settings.min_aggregate,
            min_group_size: settings.min_group_size,
            learner: settings.learner,
            noise: settings.noise,
            seed: None,
        };
        let owner = measure::Owner::new(owner_config, &people).map_err(|e| {
            error!(match_id = self.id, campaign = %campaign.settings.id, error = %e, "could not start the owner's side");
            Status::internal("the owner could not start the measurement")
        })?;
        drop(people);
        let max_frame = limits.max_message_bytes.saturating_sub(1024);
        let accept = wire::MeasureAccept {
            version: MEASURE_VERSION,
            learner: learner_to_wire(settings.learner).into(),
            min_aggregate: settings.min_aggregate,
            owner_people: record.owner_people.unwrap_or(0),
            max_frame_bytes: u32::try_from(max_frame).unwrap_or(u32::MAX),
            epsilon: settings.noise.map(|n| n.epsilon),
        };
        let message = wire::MeasureOwnerMessage { body: Some(OwnerBody::Accept(accept)) };
        send_with_deadline(outbound, Ok(message), idle, runtime).map_err(drive_status)?;
        let mut frames = OwnerFrames::new(
            owner,
            u64::from(hello.groups),
            hello.exposure_bundles,
            max_frame,
            SEND_FRAME_BYTES.min(max_frame),
        );
        drive(&mut frames, inbound, outbound, |m| Some(Ok(m)), idle, runtime).map_err(drive_status)?;
        // With learner `partner` the owner decrypted nothing and writes nothing.
        if settings.learner != Learner::Partner {
            let result = frames.owner().result().ok_or_else(|| Status::internal("measurement ended unfinished"))?;
            let name = format!(
                "{}-{}-{}.measurement.json",
                file_safe(&campaign.settings.id),
                file_safe(&self.partner.name),
                self.id
            );
            let report = ServerReport {
                campaign: &campaign.settings.id,
                partner: &self.partner.name,
                measurement_id: self.id,
                profile,
                learner: settings.learner.name(),
                min_aggregate: settings.min_aggregate,
                epsilon: settings.noise.map(|n| n.epsilon),
                clip_value: settings.value_max,
                owner: &side,
                exposure_bundles: hello.exposure_bundles,
                groups: &result.groups,
                lift: &result.lift,
            };
            write_json(&config.results_dir, &name, &report).map_err(|e| {
                error!(error = %e, "could not write the measurement results");
                Status::internal("could not store the measurement results")
            })?;
        }
        record.owner_learned = settings.learner != Learner::Partner;
        record.partner_learned = settings.learner.partner_learns();
        Ok(wire::MeasureSummary {
            owner_people: record.owner_people.unwrap_or(0),
            exposure_bundles: hello.exposure_bundles,
            groups: hello.groups,
            learner: learner_to_wire(settings.learner).into(),
            epsilon_spent: record.epsilon_spent,
        })
    }
}

/// The gRPC status for a refused measurement frame or message (docs/PROTOCOL.md
/// §12.9): malformed bytes and impossible figures are INVALID_ARGUMENT; messages out
/// of order and sizes other than announced are FAILED_PRECONDITION.
pub(crate) fn frame_status(error: &FrameError) -> Status {
    let message = error.to_string();
    match error {
        FrameError::Measure(e) => measure_status(e, message),
        FrameError::FrameTooLarge { .. }
        | FrameError::EmptyFrame
        | FrameError::MessageTooLarge { .. }
        | FrameError::Malformed(_) => Status::invalid_argument(message),
        FrameError::Announced { .. } | FrameError::Unexpected { .. } => Status::failed_precondition(message),
    }
}

fn measure_status(error: &MeasureError, message: String) -> Status {
    use MeasureError::*;
    match error {
        Message(_)
        | Element(_)
        | Ciphertext(_)
        | BadPublicKey
        | Mismatch { .. }
        | Inconsistent { .. }
        | Decrypt { .. }
        | BadRelease
        | Groups(_)
        | TooManyIdentifiers(_) => Status::invalid_argument(message),
        GroupTooSmall { .. } => Status::failed_precondition(message),
        Unexpected { .. } | Failed => Status::failed_precondition(message),
        ValueTooLarge | Rng(_) | Stalled => {
            error!(error = %error, "the measurement failed on the owner's side");
            Status::internal("the owner could not continue the measurement")
        }
    }
}
