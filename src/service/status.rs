//! The owner's refusals as gRPC statuses: each engine, measurement, stream and
//! budget error maps to one status code (docs/PROTOCOL.md §9, §11.5, §11.9 and
//! §12.9), with the error's text when it is the partner's doing and a fixed
//! message when it is the owner's own (logged here, never sent).

use tonic::Status;
use tracing::error;

use super::budget::BudgetError;
use super::driver::{DriveError, ERROR_KIND_KEY};
use super::measure_wire::FrameError;
use crate::measure::MeasureError;
use crate::psi::oprf::OprfError;
use crate::psi::{ProtocolError, untrusted};

/// `status` with its kind ([`ProtocolError::code`], [`BudgetError::code`]) in the
/// [`ERROR_KIND_KEY`] metadata entry.
pub(crate) fn with_code(mut status: Status, code: &'static str) -> Status {
    status.metadata_mut().insert(ERROR_KIND_KEY, tonic::metadata::MetadataValue::from_static(code));
    status
}

/// The gRPC status for a protocol error (see docs/PROTOCOL.md §9 and §11.9), its
/// kind in the `idmatch-error` metadata entry.
pub fn protocol_status(error: &ProtocolError) -> Status {
    with_code(protocol_status_code(error), error.code())
}

fn protocol_status_code(error: &ProtocolError) -> Status {
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
        CheckFailed | CommitmentMismatch => Status::invalid_argument(message),
        RevealNotOffered(_) => Status::permission_denied(message),
        SetSizeOutOfRange { .. } => Status::resource_exhausted(message),
        BadLength { .. }
        | BadChunk { .. }
        | BadChunkLimit { .. }
        | NotMultiple { .. }
        | TooMuchData { .. }
        | BadPoint { .. }
        | NonZeroPadding { .. } => Status::invalid_argument(message),
        BadConfig(_) | Rng(_) | TableEncoding { .. } => {
            error!(error = %error, "the OPRF engine failed");
            Status::internal("the owner could not continue the match")
        }
    }
}

/// The gRPC status for a session that stopped while driven: the engine's or the
/// measurement's refusal, a partner that went silent or stopped reading
/// (DEADLINE_EXCEEDED), went away (CANCELLED), or ended the stream with a status
/// of its own.
pub(crate) fn drive_status(error: DriveError) -> Status {
    match error {
        DriveError::Protocol(e) => protocol_status(&e),
        DriveError::Setup(_) => Status::internal("the owner could not start the match"),
        DriveError::Measure(e) => frame_status(&e),
        DriveError::Idle(d) => Status::deadline_exceeded(format!("no message from the partner for {}s", d.as_secs())),
        DriveError::Stalled(d) => {
            Status::deadline_exceeded(format!("the partner took none of the owner's messages for {}s", d.as_secs()))
        }
        DriveError::PeerClosed => Status::cancelled("the partner closed the stream before the match finished"),
        DriveError::Transport(m) => Status::cancelled(format!("stream broken: {m}")),
        DriveError::Remote { code, message, .. } => Status::new(code, untrusted(&message)),
    }
}

/// The gRPC status for a refused measurement frame or message (docs/PROTOCOL.md
/// §12.9): malformed bytes and impossible figures are INVALID_ARGUMENT; messages out
/// of order and sizes other than announced are FAILED_PRECONDITION; a message over
/// the owner's `max_measurement_message_bytes` is RESOURCE_EXHAUSTED.
fn frame_status(error: &FrameError) -> Status {
    let message = error.to_string();
    match error {
        FrameError::Measure(e) => measure_status(e, message),
        FrameError::Message(_)
        | FrameError::FrameTooLarge { .. }
        | FrameError::EmptyFrame
        | FrameError::MessageTooLarge { .. }
        | FrameError::Malformed(_) => Status::invalid_argument(message),
        FrameError::Announced { .. } | FrameError::Unexpected { .. } => Status::failed_precondition(message),
        FrameError::OverLimit { .. } => Status::resource_exhausted(message),
        FrameError::Encode { .. } => {
            error!(error = %error, "the measurement failed on the owner's side");
            Status::internal("the owner could not continue the measurement")
        }
    }
}

fn measure_status(error: &MeasureError, message: String) -> Status {
    use MeasureError::*;
    match error {
        Message(_)
        | Element(_)
        | Ciphertext(_)
        | BadPublicKey
        | BadBlindingPoint
        | TrapSprung(_)
        | Mismatch { .. }
        | Inconsistent { .. }
        | RepeatedElement { .. }
        | RepeatedToken
        | Decrypt { .. }
        | BadRelease
        | ProofsMissing
        | UnexpectedProofs
        | Proof { .. }
        | Groups(_)
        | TooManyIdentifiers(_) => Status::invalid_argument(message),
        GroupTooSmall { .. } => Status::failed_precondition(message),
        Unexpected { .. } | Failed => Status::failed_precondition(message),
        Abandoned => Status::cancelled(message),
        ValueTooLarge | ValueAboveClip | Prove(_) | ProofsNeedNoise | Rng(_) | Noise(_) | Stalled => {
            error!(error = %error, "the measurement failed on the owner's side");
            Status::internal("the owner could not continue the measurement")
        }
    }
}

/// The gRPC status for a refused budget charge: RESOURCE_EXHAUSTED with the limit
/// reached, ALREADY_EXISTS for a run id charged before, or INTERNAL when the budget
/// state cannot be read or written.
pub(crate) fn budget_status(error: BudgetError) -> Status {
    let status = match &error {
        BudgetError::State { .. } | BudgetError::Corrupt { .. } => {
            error!(error = %error, "budget state unavailable");
            Status::internal("budget state unavailable")
        }
        BudgetError::RunReplayed => Status::already_exists(error.to_string()),
        other => Status::resource_exhausted(other.to_string()),
    };
    with_code(status, error.code())
}

/// A broken or reset stream (the partner killed, the connection lost) is the
/// partner going away, CANCELLED, whatever h2 or hyper called it; other statuses
/// (such as a message over the size limit) keep their code.
pub(crate) fn inbound_error(status: Status) -> DriveError {
    use tonic::Code::*;
    match status.code() {
        Unknown | Cancelled | Unavailable | Internal => DriveError::Transport(untrusted(status.message())),
        _ => DriveError::remote(&status, untrusted(status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::client::ClientError;
    use crate::service::driver::error_kind;

    /// The kind travels in metadata, and the client goes by it alone: the same text
    /// without the entry is an ordinary server error.
    #[test]
    fn refusals_name_their_kind_and_clients_read_the_kind_not_the_text() {
        let status = protocol_status(&ProtocolError::KeyMismatch);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(error_kind(&status).as_deref(), Some("key-mismatch"));
        let client = |kind: Option<&str>| ClientError::from_status(status.code(), status.message(), kind);
        assert!(matches!(client(error_kind(&status).as_deref()), ClientError::KeyMismatch(_)));
        assert!(matches!(client(None), ClientError::Server(_)));
        assert!(matches!(client(Some("profile-mismatch")), ClientError::Server(_)));
        let missing = protocol_status(&ProtocolError::KeyFingerprintMissing);
        assert!(matches!(
            ClientError::from_status(missing.code(), missing.message(), error_kind(&missing).as_deref()),
            ClientError::KeyMismatch(_)
        ));

        let budget = budget_status(BudgetError::LifetimeEpsilon {
            dataset: "o.csv".into(),
            lifetime: 5.0,
            spent: 4.0,
            asked: 2.0,
        });
        assert_eq!(budget.code(), tonic::Code::ResourceExhausted);
        assert_eq!(error_kind(&budget).as_deref(), Some("budget-epsilon-lifetime"));
        // Every protocol error has a kind of its own.
        let kinds = [
            ProtocolError::KeyMismatch.code(),
            ProtocolError::KeyFingerprintMissing.code(),
            ProtocolError::Malformed("x").code(),
            ProtocolError::SummaryMismatch("x").code(),
        ];
        assert_eq!(kinds.iter().collect::<std::collections::BTreeSet<_>>().len(), kinds.len());
    }
}
