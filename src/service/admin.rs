//! The `OptOutAdmin` gRPC service: the owner's account system adds, removes and
//! checks opt-outs in the server's store while it runs. Every call needs the admin
//! credential; every change is also written to the server's audit log (time,
//! source, kind, count; never values). Store work runs on blocking threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::audit::{AuditLog, now_unix_ms};
use super::auth::{bearer_digest, is_partner_token};
use super::shared::Shared;
use crate::normalize::{Region, parse_region};
use crate::optout::store::{EntryKind, OptOutStore, StoreEntry, StoreError};
use crate::wire;
use crate::wire::opt_out_admin_server::OptOutAdmin;

/// One opt-out change, as audited.
#[derive(Debug, Serialize)]
struct ChangeRecord<'a> {
    time_unix_ms: u64,
    event: &'static str,
    source: &'a str,
    kind: &'a str,
    count: u64,
}

/// The service, sharing the server's store and audit log.
pub struct AdminService {
    pub(crate) store: Arc<OptOutStore>,
    pub(crate) audit: Arc<AuditLog>,
    /// SHA-256 of the admin bearer token.
    pub(crate) admin_token_sha256: [u8; 32],
    /// The server, for the partners configured now: a partner calling gets
    /// PERMISSION_DENIED rather than UNAUTHENTICATED.
    pub(crate) shared: Arc<Shared>,
}

impl AdminService {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check_credentials(request).inspect_err(|status| {
            self.shared.credentials_refused("optout_admin", request, status);
        })
    }

    fn check_credentials<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let digest = bearer_digest(request)
            .and_then(Result::ok)
            .ok_or_else(|| Status::unauthenticated("the admin service needs `authorization: Bearer <admin token>`"))?;
        if bool::from(digest.ct_eq(&self.admin_token_sha256)) {
            return Ok(());
        }
        if is_partner_token(&self.shared.state().partners, &digest) || request.peer_certs().is_some() {
            return Err(Status::permission_denied("partner credentials cannot manage opt-outs"));
        }
        Err(Status::unauthenticated("unknown admin token"))
    }

    fn audit(&self, event: &'static str, source: &str, kind: EntryKind, count: u64) {
        let record = ChangeRecord { time_unix_ms: now_unix_ms(), event, source, kind: kind.label(), count };
        if let Err(e) = self.audit.append(&record) {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }

    async fn change(
        &self,
        request: Request<wire::OptOutChange>,
        add: bool,
    ) -> Result<Response<wire::ChangeResult>, Status> {
        self.authorize(&request)?;
        let change = request.into_inner();
        let kind = entry_kind(change.kind)?;
        let region = region(&change.region)?;
        let store = self.store.clone();
        let source = change.source.clone();
        let changed = tokio::task::spawn_blocking(move || {
            if add {
                store.add(kind, &change.value, region, &change.source)
            } else {
                store.remove(kind, &change.value, region, &change.source)
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)?;
        self.audit(if add { "optout_add" } else { "optout_remove" }, &source, kind, u64::from(changed));
        Ok(Response::new(wire::ChangeResult { changed }))
    }
}

fn entry_kind(value: i32) -> Result<EntryKind, Status> {
    match wire::EntryKind::try_from(value) {
        Ok(wire::EntryKind::Email) => Ok(EntryKind::Email),
        Ok(wire::EntryKind::Phone) => Ok(EntryKind::Phone),
        Ok(wire::EntryKind::Id) => Ok(EntryKind::Id),
        _ => Err(Status::invalid_argument("kind must be email, phone or id")),
    }
}

fn region(code: &str) -> Result<Option<Region>, Status> {
    if code.trim().is_empty() {
        return Ok(None);
    }
    parse_region(code).map(Some).map_err(|_| Status::invalid_argument("region is not an ISO 3166 alpha-2 code"))
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Rejected { kind, reason } => Status::invalid_argument(format!("{kind} rejected: {reason}")),
        StoreError::BadSource(reason) => Status::invalid_argument(format!("invalid source label: {reason}")),
        other => {
            tracing::error!(error = %other, "opt-out store failure");
            Status::unavailable("opt-out store unavailable")
        }
    }
}

#[tonic::async_trait]
impl OptOutAdmin for AdminService {
    async fn add(&self, request: Request<wire::OptOutChange>) -> Result<Response<wire::ChangeResult>, Status> {
        self.change(request, true).await
    }

    async fn remove(&self, request: Request<wire::OptOutChange>) -> Result<Response<wire::ChangeResult>, Status> {
        self.change(request, false).await
    }

    async fn check(&self, request: Request<wire::OptOutQuery>) -> Result<Response<wire::CheckResult>, Status> {
        self.authorize(&request)?;
        let query = request.into_inner();
        let kind = entry_kind(query.kind)?;
        let region = region(&query.region)?;
        let store = self.store.clone();
        let opted_out = tokio::task::spawn_blocking(move || store.is_opted_out(kind, &query.value, region))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
        Ok(Response::new(wire::CheckResult { opted_out }))
    }

    async fn count(&self, request: Request<wire::CountRequest>) -> Result<Response<wire::Counts>, Status> {
        self.authorize(&request)?;
        let store = self.store.clone();
        let counts = tokio::task::spawn_blocking(move || store.count())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
        Ok(Response::new(wire::Counts {
            email: counts.email,
            phone: counts.phone,
            id: counts.id,
            total: counts.total(),
            profile: self.store.profile().name().to_owned(),
        }))
    }

    async fn import(
        &self,
        request: Request<Streaming<wire::ImportBatch>>,
    ) -> Result<Response<wire::ImportSummary>, Status> {
        self.authorize(&request)?;
        let mut stream = request.into_inner();
        let mut summary = wire::ImportSummary::default();
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.source.trim().is_empty() {
                return Err(Status::invalid_argument(format!("batch {}: source is required", summary.batches + 1)));
            }
            let store = self.store.clone();
            let source = batch.source.clone();
            let (outcome, batch_rejects) = tokio::task::spawn_blocking(move || {
                let mut entries: Vec<StoreEntry> = Vec::with_capacity(batch.entries.len());
                let mut rejects: Vec<String> = Vec::new();
                for e in &batch.entries {
                    let digest = entry_kind(e.kind).map_err(|_| "bad_kind".to_owned()).and_then(|kind| {
                        let region = region(&e.region).map_err(|_| "bad_region".to_owned())?;
                        store.digest(kind, &e.value, region).map_err(|err| match err {
                            StoreError::Rejected { reason, .. } => reason.code().to_owned(),
                            other => other.to_string(),
                        })
                    });
                    match digest {
                        Ok(entry) => entries.push(entry),
                        Err(reason) => rejects.push(reason),
                    }
                }
                store.backend().import_batch(&entries, &batch.source).map(|o| (o, rejects))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
            summary.batches += 1;
            summary.added += outcome.added.total();
            summary.already_present += outcome.present.total();
            for reason in batch_rejects {
                *rejected.entry(reason).or_default() += 1;
            }
            for kind in EntryKind::ALL {
                if outcome.added.get(kind) > 0 {
                    self.audit("optout_import", &source, kind, outcome.added.get(kind));
                }
            }
        }
        summary.rejected = rejected.into_iter().collect();
        Ok(Response::new(summary))
    }
}
