//! One session per stream: the skeleton every owner rpc that runs a protocol is
//! served by (`Matcher.Match`, `Measurer.Measure`), written once; each [`Service`]
//! supplies only what differs (decoding its messages, checking its hello, running
//! its role, its audit record and metrics).
//!
//! [`serve`] authenticates the partner (a refusal is logged, counted and audited),
//! takes a concurrency slot (RESOURCE_EXHAUSTED when none is free), gives the
//! stream an id (the `idmatch-match-id` response header), decodes the partner's
//! messages on a network task into a bounded queue, and runs the session on a
//! blocking thread with the configuration it started with. The session's protocol
//! state (its roles and their secrets) lives on that thread for exactly as long as
//! the stream: when the stream ends or breaks, everything about it is dropped.
//!
//! Invariants, for every service: a session is audited (one record, with its
//! status code as `outcome`) before its last message (the summary) is sent, so a
//! partner never holds a result the owner has not recorded; the slot is given back
//! when the session ends, before its error (if any) is delivered; a budget is
//! charged through [`Session::charge`] only, so a refusal is always
//! RESOURCE_EXHAUSTED (ALREADY_EXISTS for a replayed run id) and an unreadable
//! budget state always INTERNAL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use super::auth::authenticate;
use super::budget::{Allowance, BudgetError, Budgets};
use super::config::PartnerPolicy;
use super::driver::{DriveError, Driven, INBOUND_QUEUE, Inbound, drive, receive_with_deadline, send_with_deadline};
use super::metrics::Metrics;
use super::shared::Shared;
use super::state::{Campaign, State};
use super::status::{budget_status, drive_status, inbound_error};
use crate::optout::BadRows;
use crate::records::RecordSet;

/// What one owner rpc adds to the skeleton.
pub(crate) trait Service: Send + 'static {
    /// The rpc in logs, metrics and audited refusals: `match` or `measure`.
    const RPC: &'static str;
    /// One session in log lines: `match` or `measurement`.
    const NOUN: &'static str;
    /// The partner's messages as the wire carries them.
    type Wire: Send + 'static;
    /// The partner's messages, decoded.
    type Incoming: Send + 'static;
    /// The owner's messages as the wire carries them.
    type Outgoing: Send + 'static;
    /// The session's audit record.
    type Record: Record;

    /// Decodes one of the partner's messages (an error ends the session).
    fn decode(message: Self::Wire) -> Result<Self::Incoming, DriveError>;

    /// Runs the session from the partner's hello on, filling in `record`; returns
    /// the last message, which the skeleton sends once the session is audited.
    fn run(session: &mut Session<'_, Self>, record: &mut Self::Record) -> Result<Option<Self::Outgoing>, Status>
    where
        Self: Sized;

    /// Counts a session started.
    fn started(metrics: &Metrics);
    /// Counts a session finished, as `record` describes it, after `seconds`.
    fn finished(metrics: &Metrics, record: &Self::Record, seconds: f64);
    /// Counts a session failed with `reason` (a gRPC status code name) after `seconds`.
    fn failed(metrics: &Metrics, reason: &str, seconds: f64);
}

/// A session's line in the audit log.
pub(crate) trait Record: Serialize + Send {
    /// A record of the session `id` of `partner`, started now.
    fn new(id: &str, partner: &str) -> Self;
    /// The campaign the hello named, as far as the session got (for log lines).
    fn campaign(&self) -> &str;
    /// Ends the record: `failure` is the status code the session failed with
    /// (`None`: it succeeded), `duration_ms` how long it ran.
    fn end(&mut self, failure: Option<tonic::Code>, duration_ms: u64);
}

/// The gRPC `outcome` of an audit record: `ok`, or the status code's name.
pub(crate) fn outcome(failure: Option<tonic::Code>) -> String {
    failure.map_or_else(|| "ok".to_owned(), |code| format!("{code:?}"))
}

/// One session on its blocking thread: the configuration it started with, the
/// authenticated partner, the stream's id, and the way in and out.
pub(crate) struct Session<'a, S: Service> {
    pub shared: &'a Shared,
    pub state: &'a State,
    pub partner: &'a PartnerPolicy,
    pub id: &'a str,
    /// The longest wait for the partner, in either direction.
    pub idle: Duration,
    inbound: Inbound<S::Incoming>,
    outbound: &'a mpsc::Sender<Result<S::Outgoing, Status>>,
    runtime: &'a Handle,
}

/// The owner's side of a stream of service `S`, as tonic sends it.
pub(crate) type OwnerStream<S> = ReceiverStream<Result<<S as Service>::Outgoing, Status>>;

/// Serves one stream of service `S` (see the module documentation).
pub(crate) fn serve<S: Service>(
    shared: &Arc<Shared>,
    request: Request<Streaming<S::Wire>>,
) -> Result<Response<OwnerStream<S>>, Status> {
    let shared = shared.clone();
    let state = shared.state();
    let partner = match authenticate(&state.partners, &request) {
        Ok(partner) => partner.clone(),
        Err(status) => {
            shared.credentials_refused(S::RPC, &request, &status);
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
            let message = item.map_err(inbound_error).and_then(S::decode);
            let failed = message.is_err();
            if inbound_tx.send(message).await.is_err() || failed {
                break;
            }
        }
    });
    let (response_tx, response_rx) = mpsc::channel(4);
    let runtime = Handle::current();
    let header = id.clone();
    tokio::task::spawn_blocking(move || {
        let idle = state.config.limits.idle_timeout();
        let mut session = Session::<S> {
            shared: &shared,
            state: &state,
            partner: &partner,
            id: &id,
            idle,
            inbound: inbound_rx,
            outbound: &response_tx,
            runtime: &runtime,
        };
        let result = session.run();
        drop(session);
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

impl<'a, S: Service> Session<'a, S> {
    /// A check of whether the partner went away (the stream's response side was
    /// dropped: the partner cancelled or its connection broke), for long work
    /// that should stop then.
    pub fn partner_gone(&self) -> impl Fn() -> bool + Sync + use<S> {
        let outbound = self.outbound.clone();
        move || outbound.is_closed()
    }

    /// The skeleton: the service's run between the metrics and the audit record,
    /// then the last message.
    fn run(&mut self) -> Result<(), Status> {
        S::started(&self.shared.metrics);
        let started = Instant::now();
        let mut record = S::Record::new(self.id, &self.partner.name);
        let result = S::run(self, &mut record);
        let seconds = started.elapsed().as_secs_f64();
        let failure = result.as_ref().err().map(Status::code);
        record.end(failure, started.elapsed().as_millis() as u64);
        let campaign = record.campaign();
        match &result {
            Ok(_) => {
                S::finished(&self.shared.metrics, &record, seconds);
                info!(match_id = self.id, partner = %self.partner.name, %campaign, seconds, "{} finished", S::NOUN);
            }
            Err(status) => {
                S::failed(&self.shared.metrics, &outcome(failure), seconds);
                warn!(match_id = self.id, partner = %self.partner.name, %campaign, code = ?status.code(), reason = status.message(), "{} failed", S::NOUN);
            }
        }
        if let Err(e) = self.shared.audit.append(&record) {
            error!(path = %self.shared.audit.path().display(), error = %e, "could not write the audit log");
        }
        // The last message goes out only now that the session is audited.
        if let Some(last) = result? {
            let _ = self.send(last);
        }
        Ok(())
    }

    /// The partner's next message, waiting at most `idle` for it.
    pub fn receive(&mut self) -> Result<S::Incoming, Status> {
        receive_with_deadline(&mut self.inbound, self.idle, self.runtime).map_err(drive_status)
    }

    /// Sends `message`, waiting at most `idle` for the partner to make room.
    pub fn send(&self, message: S::Outgoing) -> Result<(), Status> {
        send_with_deadline(self.outbound, Ok(message), self.idle, self.runtime).map_err(drive_status)
    }

    /// Runs `role` to its end over the stream; each of its messages goes out
    /// through `convert`, which may keep one back (returning `None`).
    pub fn drive<R: Driven<Incoming = S::Incoming>>(
        &mut self,
        role: &mut R,
        mut convert: impl FnMut(R::Outgoing) -> Option<S::Outgoing>,
    ) -> Result<(), Status> {
        let convert = |message| convert(message).map(Ok);
        drive(role, &mut self.inbound, self.outbound, convert, self.idle, self.runtime).map_err(drive_status)
    }

    /// The campaign `id` names, if this partner may use it: PERMISSION_DENIED for a
    /// campaign it may not use and for one that does not exist alike.
    pub fn campaign(&self, id: &str) -> Result<&'a Arc<Campaign>, Status> {
        let state: &'a State = self.state;
        self.partner
            .campaigns
            .iter()
            .any(|c| c == id)
            .then(|| state.campaigns.get(id))
            .flatten()
            .ok_or_else(|| Status::permission_denied("this partner may not use that campaign"))
    }

    /// The opt-out flags of `records` (the audience or the outcomes of `campaign`)
    /// as the opt-outs are now; UNAVAILABLE when they cannot be read, so nothing
    /// runs without them.
    pub fn excluded(&self, campaign: &Campaign, records: &RecordSet) -> Result<Vec<bool>, Status> {
        let config = &self.state.config;
        let bad_rows = BadRows::skip_if(config.optouts_skip_bad_rows);
        self.shared.optouts.excluded(campaign, records, config.optouts.as_deref(), bad_rows).map_err(|e| {
            error!(service = S::RPC, error = %e, "opt-outs unavailable; refusing");
            Status::unavailable("opt-outs unavailable")
        })
    }

    /// Charges the partner's daily budget through `charge`, given the configured
    /// allowance.
    pub fn charge<T>(
        &self,
        charge: impl FnOnce(&Budgets, &str, Allowance) -> Result<T, BudgetError>,
    ) -> Result<T, Status> {
        charge(&self.shared.budgets, &self.partner.name, self.allowance()).map_err(budget_status)
    }

    /// The partner's daily allowance under the configuration the stream started with.
    pub fn allowance(&self) -> Allowance {
        let limits = &self.state.config.limits;
        Allowance {
            matches: limits.max_matches_per_partner_per_day,
            identifiers: limits.max_identifiers_per_partner_per_day,
        }
    }

    /// The name of a file of this session's partner in the results directory:
    /// `<campaign>-<partner>-<id><suffix>` (`id`: the session's, or its run's),
    /// every character outside `[A-Za-z0-9_-]` of the campaign and partner replaced
    /// by `_`.
    pub fn results_name(&self, campaign: &str, id: &str, suffix: &str) -> String {
        let safe = |name: &str| -> String {
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
        };
        format!("{}-{}-{id}{suffix}", safe(campaign), safe(&self.partner.name))
    }
}
