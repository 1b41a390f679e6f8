//! The gRPC `Matcher` service: one match per stream, served by the session
//! skeleton (`session`), which authenticates, audits and counts it.
//!
//! Checks run in the order of docs/PROTOCOL.md §9: the partner may use the
//! campaign, the owner's checks on the hello, then the opt-outs are applied as they
//! are now (before anything is blinded), and the daily budget is charged only once
//! every check on the hello has passed, just before `Accept` is sent. The summary
//! is held back for the skeleton to send once the match is audited.
//!
//! A stream whose hello names a run (docs/PROTOCOL.md §13.4) matches its shard of
//! the audience (the shard rule over the prepared audience), joins its run (`runs`)
//! after the opt-outs, charges the budget only if it is the run's first stream, and
//! hands its matches to the run, whose last stream writes the one results file.

use std::num::NonZeroU32;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::error;

use super::audit::{MatchRecord, now_unix_ms};
use super::convert::{owner_to_wire, partner_from_wire};
use super::driver::DriveError;
use super::metrics::Metrics;
use super::runs::{Finished, RunError, ShardHello};
use super::session::{self, Service, Session};
use super::shared::Shared;
use super::status::protocol_status;
use crate::output::write_match_file;
use crate::prepare;
use crate::psi::message::{DEFAULT_CHUNK, Hello, MAX_CHUNK};
use crate::psi::oprf::{self, ChunkLimits, MAX_CHUNK_BYTES, OprfOwner};
use crate::psi::{
    KindSet, Owner, OwnerConfig, OwnerMessage, OwnerOutcome, PartnerMessage, PreparedSet, Protocol, ProtocolError,
    Reveal, SetupError, untrusted,
};
use crate::wire;
use crate::wire::matcher_server::Matcher;

/// The gRPC `Matcher` service.
pub struct MatchService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Matcher for MatchService {
    type MatchStream = ReceiverStream<Result<wire::OwnerMessage, Status>>;

    async fn r#match(
        &self,
        request: Request<Streaming<wire::PartnerMessage>>,
    ) -> Result<Response<Self::MatchStream>, Status> {
        session::serve::<MatchService>(&self.shared, request)
    }
}

impl session::Record for MatchRecord {
    fn new(id: &str, partner: &str) -> MatchRecord {
        MatchRecord {
            time_unix_ms: now_unix_ms(),
            match_id: id.to_owned(),
            partner: partner.to_owned(),
            campaign: String::new(),
            reveal: None,
            protocol: None,
            partner_set_size: None,
            owner_set_size: None,
            opted_out_records: None,
            owner_matched_records: None,
            run_id: None,
            shard: None,
            outcome: session::outcome(None),
            duration_ms: 0,
        }
    }

    fn campaign(&self) -> &str {
        &self.campaign
    }

    fn end(&mut self, failure: Option<tonic::Code>, duration_ms: u64) {
        self.outcome = session::outcome(failure);
        self.duration_ms = duration_ms;
    }
}

impl Service for MatchService {
    const RPC: &'static str = "match";
    const NOUN: &'static str = "match";
    type Wire = wire::PartnerMessage;
    type Incoming = PartnerMessage;
    type Outgoing = wire::OwnerMessage;
    type Record = MatchRecord;

    fn decode(message: wire::PartnerMessage) -> Result<PartnerMessage, DriveError> {
        Ok(partner_from_wire(message)?)
    }

    fn started(metrics: &Metrics) {
        metrics.started();
    }

    fn finished(metrics: &Metrics, record: &MatchRecord, seconds: f64) {
        let processed = record.partner_set_size.unwrap_or(0) + record.owner_set_size.unwrap_or(0);
        metrics.finished(record.protocol.as_deref().unwrap_or("none"), processed, seconds);
    }

    fn failed(metrics: &Metrics, reason: &str, seconds: f64) {
        metrics.failed(reason, seconds);
    }

    fn run(
        session: &mut Session<'_, MatchService>,
        record: &mut MatchRecord,
    ) -> Result<Option<wire::OwnerMessage>, Status> {
        let state = session.state;
        let limits = &state.config.limits;
        let first = session.receive()?;
        let PartnerMessage::Hello(hello) = &first else {
            return Err(protocol_status(&ProtocolError::UnexpectedMessage {
                state: "awaiting hello",
                message: first.name(),
            }));
        };
        record.campaign = untrusted(&hello.campaign);
        record.reveal = Some(hello.reveal.name().to_owned());
        record.partner_set_size = Some(hello.partner_set_size);
        if let Some(run) = hello.run {
            record.run_id = Some(hex::encode(run.run_id));
            record.shard = Some(format!("{}/{}", run.shard_index, run.shard_count));
        }
        // Checks, in the order of docs/PROTOCOL.md §9: the partner may use the
        // campaign, then the owner's checks on the hello (version, campaign, profile,
        // key fingerprint, reveal mode, engine, set size)...
        let campaign = session.campaign(&hello.campaign)?;
        let max_chunk = (limits.max_message_bytes.saturating_sub(1024) / 32).clamp(1, MAX_CHUNK as usize) as u32;
        let config = OwnerConfig {
            campaign: campaign.settings.id.clone(),
            profile: campaign.settings.profile,
            allowed_reveals: session.partner.reveals.clone(),
            min_partner_set: limits.min_partner_set,
            max_partner_set: limits.max_partner_set,
            max_chunk,
            send_chunk: DEFAULT_CHUNK.min(max_chunk),
            key_fingerprint: Some(campaign.key_fingerprint),
            allowed_protocols: campaign.settings.protocols.clone(),
        };
        let protocol = config.check_hello(hello).map_err(|e| protocol_status(&e))?;
        record.protocol = Some(protocol.name().to_owned());
        // ...a shard joins its run (checked against the run's other shards; the
        // run's first stream charges the daily budget for the run's whole size as
        // it creates the run, so no stream of a run exchanges anything before the
        // run is paid for)...
        let shared: &Shared = session.shared;
        let joined = match hello.run {
            None => None,
            Some(run) => {
                let shard = ShardHello {
                    partner: &session.partner.name,
                    campaign: &campaign.settings.id,
                    reveal: hello.reveal,
                    run,
                    size: hello.partner_set_size,
                    audience: campaign.audience_digest(),
                };
                let (partner, allowance) = (&session.partner.name, session.allowance());
                let identifiers = charged_identifiers(protocol, hello.reveal, run.run_set_size, run.shard_count);
                let charge = || shared.budgets.charge_run(partner, &hex::encode(run.run_id), identifiers, allowance);
                Some(shared.runs.join(&shared.audit, &shard, session.idle, charge).map_err(RunError::status)?)
            }
        };
        // ...then the opt-outs as they are now (a shard of a run: its part of the
        // audience, by the shard rule of docs/PROTOCOL.md §13)...
        let prepared = session.excluded(campaign, &campaign.records).and_then(|excluded| match hello.run {
            None => Ok(prepare::prepared_set(&campaign.records, &excluded)),
            Some(run) => {
                let shards = NonZeroU32::new(run.shard_count)
                    .ok_or_else(|| protocol_status(&ProtocolError::Malformed("a run of zero shards")))?;
                let assignment = campaign.shard_assignment(shards);
                let mut set = prepare::prepared_shard(&campaign.records, &excluded, &assignment, run.shard_index);
                // Every shard as large as the largest could be: the partner learns
                // one size, not how the audience falls into shards (§13.4).
                set.pad_to(prepare::shard_size_bound(&campaign.records, &excluded, &assignment, shards.get()));
                Ok(set)
            }
        });
        let set = match prepared {
            Ok(set) => set,
            Err(status) => {
                if let Some(shard) = joined {
                    shard.fail(&status);
                }
                return Err(status);
            }
        };
        record.opted_out_records = Some(set.excluded_records());
        // The audit counts the audience's tokens, not the dummies sent with them.
        let owner_tokens = (set.len() - set.dummies()) as u64;
        record.owner_set_size = Some(owner_tokens);
        // ...and only then the daily budget of a match alone, just before `Accept`
        // goes out.
        let identifiers = charged_identifiers(protocol, hello.reveal, hello.partner_set_size, 1);
        let charge = |session: &Session<'_, MatchService>| match joined {
            None => session.charge(|budgets, partner, allowance| budgets.charge(partner, identifiers, allowance)),
            Some(_) => Ok(()),
        };
        let (outcome, summary) = match exchange(session, &first, hello, config, protocol, &set, charge) {
            Ok(done) => done,
            Err(status) => {
                if let Some(shard) = joined {
                    shard.fail(&status);
                }
                return Err(status);
            }
        };
        let matches = outcome.matched.as_ref().map(|matched| set.matched_records(matched));
        record.owner_matched_records = matches.as_ref().map(|m| m.len() as u64);
        let write = |name: &str, matches: &[(u32, KindSet)]| {
            write_match_file(&state.config.results_dir.join(name), &campaign.records, matches).map_err(|e| {
                error!(error = %e, "could not write match results");
                Status::internal("could not store the match results")
            })
        };
        match joined {
            None => {
                if let Some(matches) = &matches {
                    write(&session.results_name(&campaign.settings.id, session.id, ".csv"), matches)?;
                }
            }
            // A shard: the run's results are one file, written when its last shard
            // finishes, from the matches of all of them.
            Some(mut shard) => match shard.finish(owner_tokens, protocol.name(), matches) {
                Err(e) => return Err(e.status()),
                Ok(Finished::Shard) => {}
                Ok(Finished::Last { matches }) => {
                    let id = format!("run-{}", shard.run_id());
                    let name = session.results_name(&campaign.settings.id, &id, ".csv");
                    if let Some(matches) = &matches
                        && let Err(status) = write(&name, matches)
                    {
                        shard.fail(&status);
                        return Err(status);
                    }
                    let matched = matches.as_ref().map(|m| m.len() as u64);
                    shard.done(matched, matches.is_some().then_some(name.as_str()));
                }
            },
        }
        Ok(summary.map(owner_to_wire))
    }
}

/// Runs the engine `protocol` over the stream from the partner's hello (`first`)
/// on, charging the budget (`charge`) just before the accept goes out; returns the
/// owner's outcome and the summary, held back for the skeleton to send once the
/// match is audited.
fn exchange(
    session: &mut Session<'_, MatchService>,
    first: &PartnerMessage,
    hello: &Hello,
    config: OwnerConfig,
    protocol: Protocol,
    set: &PreparedSet,
    charge: impl FnOnce(&Session<'_, MatchService>) -> Result<(), Status>,
) -> Result<(OwnerOutcome, Option<OwnerMessage>), Status> {
    let limits = &session.state.config.limits;
    let match_id = session.id;
    let campaign = &config.campaign;
    let start_failed = |e: SetupError| {
        error!(match_id, %campaign, error = %e, "could not start the owner's side");
        Status::internal("the owner could not start the match")
    };
    let mut summary = None;
    let convert = |message: OwnerMessage| match message {
        OwnerMessage::Summary(_) => {
            summary = Some(message);
            None
        }
        other => Some(owner_to_wire(other)),
    };
    let outcome = match protocol {
        Protocol::Ecdh => {
            let mut owner = Owner::new(config.clone(), set).map_err(start_failed)?;
            owner.receive(first.clone()).map_err(|e| protocol_status(&e))?;
            charge(session)?;
            session.drive(&mut owner, convert)?;
            owner.outcome()
        }
        Protocol::Oprf => {
            let limit = limits.max_message_bytes.saturating_sub(1024).min(MAX_CHUNK_BYTES as usize) as u32;
            let chunks = ChunkLimits { max_chunk_bytes: limit, send_chunk_bytes: limit };
            let mut owner = OprfOwner::new(hello, set, chunks).map_err(start_failed)?;
            charge(session)?;
            session.drive(&mut owner, convert)?;
            owner.outcome()
        }
    };
    let outcome = outcome.ok_or_else(|| Status::internal("match ended in an unfinished state"))?;
    Ok((outcome, summary))
}

/// Identifiers charged to the partner's daily budget for a match (or a run of
/// `streams` shards) announcing `announced` tokens: the announced size, except where
/// the partner is the `oprf` receiver, which can learn the outputs of as many
/// tokens as its tables hold ([`oprf::receiver_capacity`]: about 1.25× plus 214 per
/// stream), so that is what it pays for.
fn charged_identifiers(protocol: Protocol, reveal: Reveal, announced: u64, streams: u32) -> u64 {
    match (protocol, oprf::receiver_party(reveal)) {
        (Protocol::Oprf, Ok(oprf::Party::Partner)) => oprf::receiver_capacity(announced, u64::from(streams)),
        _ => announced,
    }
}
