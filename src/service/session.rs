//! The gRPC `Matcher` service: one match per stream, on its own blocking thread.
//!
//! A match's protocol state (the [`Owner`] state machine and its secret scalar)
//! lives on that thread for exactly as long as the stream: when the stream ends or
//! breaks, everything about the match is dropped. Opt-outs are applied when each
//! match starts, before anything is blinded. The daily budget is charged only once
//! every check on the hello has passed, just before `Accept` is sent.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use super::audit::{MatchRecord, now_unix_ms};
use super::auth::authenticate;
use super::budget::{Allowance, BudgetError};
use super::config::PartnerPolicy;
use super::convert::{owner_to_wire, partner_from_wire};
use super::driver::{DriveError, INBOUND_QUEUE, Inbound, drive, receive_with_deadline, send_with_deadline};
use super::server::Shared;
use super::state::State;
use crate::optout::BadRows;
use crate::output::write_match_file;
use crate::prepare;
use crate::psi::message::{DEFAULT_CHUNK, MAX_CHUNK};
use crate::psi::oprf::{ChunkLimits, MAX_CHUNK_BYTES, OprfError, OprfOwner};
use crate::psi::{Owner, OwnerConfig, OwnerMessage, PartnerMessage, Protocol, ProtocolError, SetupError, untrusted};
use crate::wire;
use crate::wire::matcher_server::Matcher;

/// The gRPC `Matcher` service.
pub struct MatchService {
    pub(crate) shared: Arc<Shared>,
}

type OwnerStream = ReceiverStream<Result<wire::OwnerMessage, Status>>;
type Outbound = mpsc::Sender<Result<wire::OwnerMessage, Status>>;

#[tonic::async_trait]
impl Matcher for MatchService {
    type MatchStream = OwnerStream;

    async fn r#match(
        &self,
        request: Request<Streaming<wire::PartnerMessage>>,
    ) -> Result<Response<OwnerStream>, Status> {
        serve_stream(
            &self.shared,
            "match",
            request,
            |m| partner_from_wire(m).map_err(DriveError::from),
            move |ctx| {
                let session =
                    Session { shared: &ctx.shared, state: &ctx.state, partner: &ctx.partner, match_id: &ctx.id };
                ctx.shared.metrics.started();
                session.run(ctx.inbound, ctx.outbound, ctx.runtime)
            },
        )
    }
}

/// What a stream's blocking session gets: the state it started with, the
/// authenticated partner, its id, the peer's decoded messages and the way out.
pub(crate) struct StreamContext<'a, M, O> {
    pub shared: Arc<Shared>,
    pub state: Arc<State>,
    pub partner: PartnerPolicy,
    pub id: String,
    pub inbound: Inbound<M>,
    pub outbound: &'a mpsc::Sender<Result<O, Status>>,
    pub runtime: &'a tokio::runtime::Handle,
}

/// Serves one bidirectional stream the way every owner rpc is served
/// (`Matcher.Match`, `Measurer.Measure`): authenticates the partner, takes a
/// concurrency slot (RESOURCE_EXHAUSTED when none is free), gives the stream an id
/// (the `idmatch-match-id` response header), decodes the partner's messages on a
/// network task into a bounded queue, and runs `session` on a blocking thread. The
/// slot is given back when `session` returns, before its error (if any) is
/// delivered.
pub(crate) fn serve_stream<I, M, O>(
    shared: &Arc<Shared>,
    service: &'static str,
    request: Request<Streaming<I>>,
    decode: impl Fn(I) -> Result<M, DriveError> + Send + 'static,
    session: impl FnOnce(StreamContext<'_, M, O>) -> Result<(), Status> + Send + 'static,
) -> Result<Response<ReceiverStream<Result<O, Status>>>, Status>
where
    I: Send + 'static,
    M: Send + 'static,
    O: Send + 'static,
{
    let shared = shared.clone();
    let state = shared.state();
    let partner = match authenticate(&state.partners, &request) {
        Ok(partner) => partner.clone(),
        Err(status) => {
            shared.credentials_refused(service, &request, &status);
            return Err(status);
        }
    };
    let limits = &state.config.limits;
    let slot = shared
        .slots
        .acquire(&partner.name, limits.max_concurrent_matches, limits.matches_per_partner())
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    let id = hex::encode(rand::random::<[u8; 8]>());

    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let mut stream = request.into_inner();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let message = item.map_err(inbound_error).and_then(&decode);
            let failed = message.is_err();
            if inbound_tx.send(message).await.is_err() || failed {
                break;
            }
        }
    });
    let (response_tx, response_rx) = mpsc::channel(4);
    let runtime = tokio::runtime::Handle::current();
    let header = id.clone();
    tokio::task::spawn_blocking(move || {
        let idle = state.config.limits.idle_timeout();
        let context = StreamContext {
            shared,
            state,
            partner,
            id,
            inbound: inbound_rx,
            outbound: &response_tx,
            runtime: &runtime,
        };
        let result = session(context);
        drop(slot);
        if let Err(status) = result {
            // Delivered (if the partner still reads) without holding the slot.
            runtime.spawn(async move {
                let _ = tokio::time::timeout(idle, response_tx.send(Err(status))).await;
            });
        }
    });
    let mut response = Response::new(ReceiverStream::new(response_rx));
    if let Ok(value) = header.parse() {
        response.metadata_mut().insert("idmatch-match-id", value);
    }
    Ok(response)
}

/// One match on its blocking thread, with the state it started with.
struct Session<'a> {
    shared: &'a Shared,
    state: &'a State,
    partner: &'a PartnerPolicy,
    match_id: &'a str,
}

impl Session<'_> {
    fn run(
        &self,
        mut inbound: Inbound<PartnerMessage>,
        outbound: &Outbound,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), Status> {
        let started = Instant::now();
        let mut record = MatchRecord {
            time_unix_ms: now_unix_ms(),
            match_id: self.match_id.to_owned(),
            partner: self.partner.name.clone(),
            campaign: String::new(),
            reveal: None,
            protocol: None,
            partner_set_size: None,
            owner_set_size: None,
            opted_out_records: None,
            owner_matched_records: None,
            outcome: "ok".to_owned(),
            duration_ms: 0,
        };
        let result = self.run_match(&mut inbound, outbound, runtime, &mut record);
        record.duration_ms = started.elapsed().as_millis() as u64;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                let processed = record.partner_set_size.unwrap_or(0) + record.owner_set_size.unwrap_or(0);
                let protocol = record.protocol.as_deref().unwrap_or("none");
                self.shared.metrics.finished(protocol, processed, seconds);
                info!(match_id = self.match_id, partner = %record.partner, campaign = %record.campaign, protocol, seconds, "match finished");
            }
            Err(status) => {
                record.outcome = format!("{:?}", status.code());
                self.shared.metrics.failed(&record.outcome, seconds);
                warn!(match_id = self.match_id, partner = %record.partner, campaign = %record.campaign, code = ?status.code(), reason = status.message(), "match failed");
            }
        }
        if let Err(e) = self.shared.audit.append(&record) {
            error!(path = %self.shared.audit.path().display(), error = %e, "could not write the audit log");
        }
        // The summary goes out only now that the match is audited.
        if let Some(summary) = result? {
            let idle = self.state.config.limits.idle_timeout();
            let _ = send_with_deadline(outbound, Ok(owner_to_wire(summary)), idle, runtime);
        }
        Ok(())
    }

    /// Runs the match; returns the summary, held back for the caller to send.
    fn run_match(
        &self,
        inbound: &mut Inbound<PartnerMessage>,
        outbound: &Outbound,
        runtime: &tokio::runtime::Handle,
        record: &mut MatchRecord,
    ) -> Result<Option<OwnerMessage>, Status> {
        let limits = &self.state.config.limits;
        let idle = limits.idle_timeout();
        let first = receive_with_deadline(inbound, idle, runtime).map_err(drive_status)?;
        let PartnerMessage::Hello(hello) = &first else {
            return Err(protocol_status(&ProtocolError::UnexpectedMessage {
                state: "awaiting hello",
                message: first.name(),
            }));
        };
        record.campaign = untrusted(&hello.campaign);
        record.reveal = Some(hello.reveal.name().to_owned());
        record.partner_set_size = Some(hello.partner_set_size);
        // Checks, in the order of docs/PROTOCOL.md §9: the partner may use the
        // campaign, then the owner's checks on the hello (version, campaign, profile,
        // key fingerprint, reveal mode, engine, set size)...
        let campaign = self
            .partner
            .campaigns
            .contains(&hello.campaign)
            .then(|| self.state.campaigns.get(&hello.campaign))
            .flatten()
            .ok_or_else(|| Status::permission_denied("this partner may not use that campaign"))?;
        let max_chunk = (limits.max_message_bytes.saturating_sub(1024) / 32).clamp(1, MAX_CHUNK as usize) as u32;
        let config = OwnerConfig {
            campaign: campaign.settings.id.clone(),
            profile: campaign.settings.profile,
            allowed_reveals: self.partner.reveals.clone(),
            min_partner_set: limits.min_partner_set,
            max_partner_set: limits.max_partner_set,
            max_chunk,
            send_chunk: DEFAULT_CHUNK.min(max_chunk),
            key_fingerprint: Some(campaign.key_fingerprint),
            allowed_protocols: self.partner.protocols(&campaign.settings),
        };
        let protocol = config.check_hello(hello).map_err(|e| match e {
            // The campaign allows an engine the hello offers, but not for this
            // partner: say why, so the partner's engineer knows whom to ask.
            ProtocolError::ProtocolNotAllowed { .. }
                if hello.offered_protocols().iter().any(|p| {
                    p.offers(hello.reveal)
                        && campaign.settings.protocols.contains(p)
                        && !config.allowed_protocols.contains(p)
                }) =>
            {
                Status::permission_denied(
                    "the oprf engine is secure against semi-honest partners only; this owner allows it only for \
                     partners it trusts to run an honest client (honest_client_trusted), which this partner is not: \
                     offer ecdh or auto",
                )
            }
            other => protocol_status(&other),
        })?;
        record.protocol = Some(protocol.name().to_owned());
        // ...then the opt-outs as they are now...
        let config_file = &self.state.config;
        let bad_rows = BadRows::skip_if(config_file.optouts_skip_bad_rows);
        let excluded = self
            .shared
            .optouts
            .excluded(campaign, &campaign.records, config_file.optouts.as_deref(), bad_rows)
            .map_err(|e| {
                error!(error = %e, "opt-outs unavailable; refusing to match");
                Status::unavailable("opt-outs unavailable")
            })?;
        let set = prepare::prepared_set(&campaign.records, &excluded);
        record.opted_out_records = Some(set.excluded_records());
        record.owner_set_size = Some(set.len() as u64);
        let start_failed = |e: SetupError| {
            error!(match_id = self.match_id, campaign = %campaign.settings.id, error = %e, "could not start the owner's side");
            Status::internal("the owner could not start the match")
        };
        // ...and only then the daily budget, just before `Accept` goes out.
        let charge = || {
            let allowance = Allowance {
                matches: limits.max_matches_per_partner_per_day,
                identifiers: limits.max_identifiers_per_partner_per_day,
            };
            self.shared.budgets.charge(&self.partner.name, hello.partner_set_size, allowance).map_err(|e| match e {
                BudgetError::State { .. } => {
                    error!(error = %e, "budget state unavailable");
                    Status::internal("budget state unavailable")
                }
                other => Status::resource_exhausted(other.to_string()),
            })
        };
        let mut summary = None;
        let convert = |message: OwnerMessage| match message {
            OwnerMessage::Summary(_) => {
                summary = Some(message);
                None
            }
            other => Some(Ok(owner_to_wire(other))),
        };
        let outcome = match protocol {
            Protocol::Ecdh => {
                let mut owner = Owner::new(config, &set).map_err(start_failed)?;
                owner.receive(first.clone()).map_err(|e| protocol_status(&e))?;
                charge()?;
                drive(&mut owner, inbound, outbound, convert, idle, runtime).map_err(drive_status)?;
                owner.outcome()
            }
            Protocol::Oprf => {
                let limit = limits.max_message_bytes.saturating_sub(1024).min(MAX_CHUNK_BYTES as usize) as u32;
                let chunks = ChunkLimits { max_chunk_bytes: limit, send_chunk_bytes: limit };
                let mut owner = OprfOwner::new(hello, &set, chunks).map_err(start_failed)?;
                charge()?;
                drive(&mut owner, inbound, outbound, convert, idle, runtime).map_err(drive_status)?;
                owner.outcome()
            }
        };
        let outcome = outcome.ok_or_else(|| Status::internal("match ended in an unfinished state"))?;
        if let Some(matched) = &outcome.matched {
            let matches = set.matched_records(matched);
            record.owner_matched_records = Some(matches.len() as u64);
            let name =
                format!("{}-{}-{}.csv", file_safe(&campaign.settings.id), file_safe(&self.partner.name), self.match_id);
            let path = self.state.config.results_dir.join(name);
            write_match_file(&path, &campaign.records, &matches).map_err(|e| {
                error!(error = %e, "could not write match results");
                Status::internal("could not store the match results")
            })?;
        }
        Ok(summary)
    }
}

/// A broken or reset stream (the partner killed, the connection lost) is the
/// partner going away, CANCELLED, whatever h2 or hyper called it; other statuses
/// (such as a message over the size limit) keep their code.
pub(crate) fn inbound_error(status: Status) -> DriveError {
    use tonic::Code::*;
    match status.code() {
        Unknown | Cancelled | Unavailable | Internal => DriveError::Transport(untrusted(status.message())),
        code => DriveError::Remote { code, message: untrusted(status.message()) },
    }
}

pub(crate) fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The gRPC status for a protocol error (see docs/PROTOCOL.md §9 and §11.9).
pub fn protocol_status(error: &ProtocolError) -> Status {
    use ProtocolError::*;
    let message = error.to_string();
    match error {
        BadChunkSize { .. } | TooManyElements { .. } | ChunkLength(_) | BadElement(_) | Malformed(_) => {
            Status::invalid_argument(message)
        }
        UnexpectedMessage { .. }
        | UnsupportedVersion { .. }
        | ProfileMismatch { .. }
        | KeyMismatch
        | KeyFingerprintMissing
        | SummaryMismatch(_)
        | UnofferedProtocol { .. }
        | AnnouncedSizeMismatch { .. } => Status::failed_precondition(message),
        CampaignMismatch { .. } => Status::failed_precondition("campaign mismatch"),
        RevealNotAllowed(_) | ProtocolNotAllowed { .. } => Status::permission_denied(message),
        SetSizeOutOfRange { .. } => Status::resource_exhausted(message),
        Oprf(e) => oprf_status(e, message),
    }
}

/// The gRPC status for an OPRF engine error (docs/PROTOCOL.md §11.5).
fn oprf_status(error: &OprfError, message: String) -> Status {
    use OprfError::*;
    match error {
        UnexpectedMessage { .. } | UnsupportedVersion { .. } | ReportBackMismatch { .. } | ParameterMismatch { .. } => {
            Status::failed_precondition(message)
        }
        RevealNotOffered(_) => Status::permission_denied(message),
        SetSizeOutOfRange { .. } => Status::resource_exhausted(message),
        BadLength { .. }
        | BadChunk { .. }
        | BadChunkLimit { .. }
        | NotMultiple { .. }
        | TooMuchData { .. }
        | BadPoint { .. }
        | NonZeroPadding { .. } => Status::invalid_argument(message),
        BadConfig(_) | Rng(_) => {
            error!(error = %error, "the OPRF engine failed");
            Status::internal("the owner could not continue the match")
        }
    }
}

pub(crate) fn drive_status(error: DriveError) -> Status {
    match error {
        DriveError::Protocol(e) => protocol_status(&e),
        DriveError::Setup(_) => Status::internal("the owner could not start the match"),
        DriveError::Measure(e) => super::measure::frame_status(&e),
        DriveError::Idle(d) => Status::deadline_exceeded(format!("no message from the partner for {}s", d.as_secs())),
        DriveError::Stalled(d) => {
            Status::deadline_exceeded(format!("the partner took none of the owner's messages for {}s", d.as_secs()))
        }
        DriveError::PeerClosed => Status::cancelled("the partner closed the stream before the match finished"),
        DriveError::Transport(m) => Status::cancelled(format!("stream broken: {m}")),
        DriveError::Remote { code, message } => Status::new(code, untrusted(&message)),
    }
}
