//! The partner's measurement client: `idmatch measure --server https://host:port …`.
//! Reads the exposure file, applies the partner's suppressions, and runs the
//! partner's measurement role over one `Measurer.Measure` stream
//! (docs/PROTOCOL.md §12.9). Where the campaign lets the partner learn the figures,
//! they are written to `measurement.json` in the output directory (whole or not at
//! all) and returned.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

use super::client::{ClientError, PartnerFiles, TlsFiles, authorize, check_server, connect_to};
use super::driver::{DriveError, Driven, INBOUND_QUEUE, Inbound, drive, error_kind, receive_with_deadline};
use super::epsilon_ledger::{Entry, Ledger, LedgerError};
use super::frames::PartnerFrames;
use super::measure_wire::{
    FrameError, MEASURE_VERSION, MIN_FRAME_BYTES, OWNER_LEARNS_REFUSED, SEND_FRAME_BYTES, learner_from_wire,
};
use crate::measure::side::{PartnerSide, SideReport, partner_exposures};
use crate::measure::stats::{Measurement, Noise};
use crate::measure::{self, Learner, laplace};
use crate::normalize::Normalizer;
use crate::optout::BadRows;
use crate::output::{OutDir, OutputError, write_json};
use crate::prepare;
use crate::progress::Progress;
use crate::psi::ProtocolError;
use crate::records::{ColumnSpec, MAX_VALUE, Mode, ReadOptions};
use crate::token::Tokenizer;
use crate::wire;
use crate::wire::measure_owner_message::Body as OwnerBody;
use crate::wire::measure_partner_message::Body as PartnerBody;
use crate::wire::measurer_client::MeasurerClient;

/// Largest message the client accepts from the server (frames are at most 1 MiB).
const MAX_DECODING: usize = 8 << 20;

/// Everything the measurement client needs.
#[derive(Clone, Debug)]
pub struct MeasureClientOptions {
    /// `https://host:port` (or `http://` for a loopback test server).
    pub server: String,
    /// The campaign id on the server.
    pub campaign: String,
    /// The campaign key file shared with the owner.
    pub key_file: PathBuf,
    /// The exposure file (CSV/TSV with a header).
    pub input: PathBuf,
    /// The group column (e.g. `test`/`control`); `None`: one group, `all`.
    pub group_column: Option<String>,
    /// Normalization profile; must be the campaign's on the server.
    pub normalizer: Normalizer,
    /// Column names in the exposure file (unset ones are detected from the header).
    pub columns: ColumnSpec,
    /// The partner's suppression list: its records are removed before blinding.
    pub suppress: Option<PathBuf>,
    /// What to do with unreadable rows of the suppression list (default: refuse).
    pub bad_list_rows: BadRows,
    /// Where `measurement.json` is written when the partner learns the figures.
    pub out_dir: PathBuf,
    /// CA bundle to verify the server (required for https).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `cert`.
    pub key: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Longest wait for the server to send a message, or to take one of ours.
    pub idle_timeout: Duration,
    /// Whether the partner lets a measurement run in which the owner learns figures
    /// (learner `owner` or `both`) without noise. Default `false`: such a
    /// measurement is refused after the accept, before anything about the partner's
    /// people is sent, because a cheating owner can give target people crafted
    /// values and decode from exact group sums which of them the partner put in
    /// which group (docs/PRIVACY.md, "Cheating parties, by learner"). With noise the
    /// partner noises what the owner decrypts and requires its range proofs.
    pub trust_owner_with_split: bool,
    /// The largest epsilon this partner takes as protection from an owner that
    /// decrypts (default [`DEFAULT_MAX_EPSILON`]): the owner chooses the campaign's
    /// epsilon, and at a large one the partner's noise is nearly always 0, so an
    /// accept above it is treated as one without noise (refused unless
    /// [`MeasureClientOptions::trust_owner_with_split`]).
    pub max_epsilon: f64,
    /// Where reading the exposure file and the waits for the owner's people and
    /// for its blinding of the partner's bundles are shown (`None`: nowhere).
    pub progress: Option<Arc<dyn Progress>>,
    /// The partner's lifetime account of the epsilon owners learned its exposures
    /// at (`None`: no account kept): checked before anything is read or sent,
    /// charged after the accept, before anything about the people is sent.
    pub ledger: Option<Ledger>,
}

/// The default of [`MeasureClientOptions::max_epsilon`]: 4, the total of one
/// measurement (each figure gets a third of it).
pub const DEFAULT_MAX_EPSILON: f64 = 4.0;

/// The partner's `measurement.json` (and what [`run`] returns).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PartnerReport {
    /// The campaign id.
    pub campaign: String,
    /// The measurement id the server gave (`idmatch-match-id`).
    pub measurement_id: String,
    /// Normalization profile.
    pub profile: String,
    /// Who receives the released figures (the campaign's setting).
    pub learner: String,
    /// Figures over fewer matched people are written as `"<N>"`.
    pub min_aggregate: u64,
    /// Total epsilon of the noise, if any.
    pub epsilon: Option<f64>,
    /// The epsilon the owner's server charged this measurement to the partner's
    /// budgets: its worst case for one outcome person (0 without noise).
    pub epsilon_spent: f64,
    /// People the owner sent (after its opt-outs).
    pub owner_people: u64,
    /// The partner's own counts.
    pub partner: SideReport,
    /// The released figures (`groups`, `lift`), when the partner learns them.
    pub release: Option<Measurement>,
}

/// Runs one measurement against the server. Writes `measurement.json` into
/// `out_dir` when the partner learns the figures. The directory (and a private
/// staging directory in it) is created before anything is read or sent, so an
/// unwritable output fails before the owner does any work or charges any budget.
pub async fn run(options: MeasureClientOptions) -> Result<PartnerReport, ClientError> {
    let tls = TlsFiles { ca: options.ca.as_ref(), cert: options.cert.as_ref(), key: options.key.as_ref() };
    check_server(&options.server, tls)?;
    let out =
        OutDir::create(&options.out_dir).map_err(|source| OutputError { path: options.out_dir.clone(), source })?;
    if let Some(ledger) = &options.ledger
        && let Err(e) = ledger.check()
    {
        out.discard();
        return Err(e.into());
    }
    let result = measure(&options, tls, out.staging()).await;
    match result {
        Ok(report) if report.release.is_some() => {
            out.commit(&["measurement.json"])
                .map_err(|source| OutputError { path: options.out_dir.clone(), source })?;
            Ok(report)
        }
        other => {
            out.discard();
            other
        }
    }
}

async fn measure(
    options: &MeasureClientOptions,
    tls: TlsFiles<'_>,
    staging: &std::path::Path,
) -> Result<PartnerReport, ClientError> {
    let PartnerFiles { key, fingerprint, token, suppress } = PartnerFiles::load(
        &options.key_file,
        options.token_file.as_ref(),
        options.suppress.as_ref(),
        &options.normalizer,
        options.bad_list_rows,
    )?;
    // One row per impression: repeated ids are one person's rows (measure::people).
    let mut read =
        ReadOptions::new(options.normalizer.clone(), Mode::Exposures { group_column: options.group_column.clone() });
    read.columns = options.columns.clone();
    read.progress = options.progress.clone();
    let input = options.input.clone();
    let PartnerSide { labels, group_people, exposures, report: mut side } = tokio::task::spawn_blocking(move || {
        let side = prepare::prepare(&input, &Tokenizer::new(&key), read, &suppress)?;
        partner_exposures(side.records(), side.excluded()).map_err(|e| ClientError::Measurement(e.to_string()))
    })
    .await
    .map_err(|e| ClientError::Stream(e.to_string()))??;
    side.file = options.input.display().to_string();

    let channel = connect_to(&options.server, tls).await?;
    let (out_tx, out_rx) = mpsc::channel::<wire::MeasurePartnerMessage>(4);
    let mut request = Request::new(ReceiverStream::new(out_rx));
    authorize(&mut request, token.as_deref())?;
    let hello = wire::MeasureHello {
        version: MEASURE_VERSION,
        campaign: options.campaign.clone(),
        profile: options.normalizer.profile().name().to_owned(),
        key_fingerprint: fingerprint.as_bytes().to_vec(),
        exposure_bundles: measure::trap::bundles_sent(&exposures, labels.len()),
        groups: labels.len() as u32,
        owner_may_learn: options.trust_owner_with_split,
    };
    out_tx
        .send(wire::MeasurePartnerMessage { body: Some(PartnerBody::Hello(hello)) })
        .await
        .map_err(|e| ClientError::Stream(e.to_string()))?;
    let mut client =
        MeasurerClient::new(channel).max_decoding_message_size(MAX_DECODING).max_encoding_message_size(MAX_DECODING);
    let response =
        client.measure(request).await.map_err(|s| status_error(s.code(), s.message(), error_kind(&s).as_deref()))?;
    let measurement_id =
        response.metadata().get("idmatch-match-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut responses = response.into_inner();
    let (in_tx, mut in_rx) = mpsc::channel(INBOUND_QUEUE);
    let reader = tokio::spawn(async move {
        while let Some(item) = responses.next().await {
            let message = match item {
                Ok(m) => m.body.ok_or(DriveError::Measure(FrameError::Malformed("a message without a body"))),
                Err(status) => Err(DriveError::remote(&status, status.message().to_owned())),
            };
            let failed = message.is_err();
            if in_tx.send(message).await.is_err() || failed {
                break;
            }
        }
    });
    let idle = options.idle_timeout;
    let runtime = tokio::runtime::Handle::current();
    let bundles = measure::trap::bundles_sent(&exposures, labels.len());
    let (trust_owner, max_epsilon) = (options.trust_owner_with_split, options.max_epsilon);
    let progress = options.progress.clone();
    let ledger = options.ledger.clone().map(|ledger| {
        let entry = Entry {
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            server: options.server.clone(),
            campaign: options.campaign.clone(),
            measurement_id: measurement_id.clone(),
            epsilon: 0.0,
        };
        (ledger, entry)
    });
    let driver = tokio::task::spawn_blocking(move || {
        let partner = PartnerInput {
            labels,
            group_records: group_people,
            exposures: &exposures,
            bundles,
            trust_owner,
            max_epsilon,
            progress,
            ledger,
        };
        run_partner(partner, &mut in_rx, &out_tx, idle, &runtime)
    });
    let outcome = driver.await.map_err(|e| ClientError::Stream(e.to_string()))?;
    reader.abort();
    let outcome = outcome.map_err(|e| match e {
        DriveError::Protocol(p) => ClientError::Protocol(p),
        DriveError::Remote { code, message, kind } => status_error(code, &message, kind.as_deref()),
        DriveError::Measure(m) => ClientError::Measurement(m.to_string()),
        other => ClientError::Stream(other.to_string()),
    })?;
    let (accept, learner, release, epsilon_spent) = match outcome {
        Partnered::Done(outcome) => outcome,
        Partnered::OwnerWouldLearn => return Err(ClientError::OwnerWouldLearn),
        Partnered::Ledger(e) => return Err(e.into()),
    };
    let report = PartnerReport {
        campaign: options.campaign.clone(),
        measurement_id,
        profile: options.normalizer.profile().name().to_owned(),
        learner: learner.name().to_owned(),
        min_aggregate: accept.min_aggregate,
        epsilon: accept.epsilon,
        epsilon_spent,
        owner_people: accept.owner_people,
        partner: side,
        release,
    };
    if report.release.is_some() {
        write_json(staging, "measurement.json", &report).map_err(|e| ClientError::Measurement(e.to_string()))?;
    }
    Ok(report)
}

/// The client error for a status the owner ended a measurement with: a refusal
/// because the partner did not let the owner learn figures is this side's
/// [`ClientError::OwnerWouldLearn`]; the others as for a match.
fn status_error(code: tonic::Code, message: &str, kind: Option<&str>) -> ClientError {
    match kind {
        Some(OWNER_LEARNS_REFUSED) => ClientError::OwnerWouldLearn,
        _ => ClientError::from_status(code, message, kind),
    }
}

type PartnerOutcome = (wire::MeasureAccept, Learner, Option<Measurement>, f64);

/// How the partner's role ended, short of an error.
enum Partnered {
    /// The measurement ran: the accept, the learner, the release, if any, and the
    /// epsilon the owner's server charged (its summary).
    Done(PartnerOutcome),
    /// Refused after the accept: the owner would learn figures, and the partner
    /// did not trust it with its split ([`MeasureClientOptions::trust_owner_with_split`]).
    /// (An owner that reads `owner_may_learn` refuses before the accept.)
    OwnerWouldLearn,
    /// Refused after the accept by the partner's epsilon ledger.
    Ledger(LedgerError),
}

/// How long the owner may take to prove one person's value before its `people`
/// arrives: 20 ms, about 1.5 times the single-core proving time at the widest clip
/// (README, "Campaign measurement").
const PROVING_ALLOWANCE_PER_PERSON: Duration = Duration::from_millis(20);

/// The extra wait for an owner that proves `people` people (at most a day).
fn proving_allowance(people: u64) -> Duration {
    PROVING_ALLOWANCE_PER_PERSON
        .saturating_mul(u32::try_from(people).unwrap_or(u32::MAX))
        .min(Duration::from_secs(86_400))
}

/// The noise an accept announces: an `epsilon` (checked by the caller) comes with
/// the campaign's clip value, in `1..=2^32`, and no clip comes without one. The clip
/// fixes where values are cut into limbs, so an accept without it is refused rather
/// than guessed (docs/PROTOCOL.md §12.9, version 3).
fn accept_noise(epsilon: Option<f64>, clip: Option<u64>) -> Result<Option<Noise>, FrameError> {
    match (epsilon, clip) {
        (None, None) => Ok(None),
        (Some(epsilon), Some(clip)) if (1..=MAX_VALUE).contains(&clip) => Ok(Some(Noise { epsilon, clip })),
        _ => Err(FrameError::Malformed("the accept's clip value is missing, unexpected or not in 1..=2^32")),
    }
}

/// The partner's side of a measurement, as the client read it.
struct PartnerInput<'a> {
    labels: Vec<String>,
    group_records: Vec<u64>,
    exposures: &'a [measure::Exposure],
    bundles: u64,
    /// [`MeasureClientOptions::trust_owner_with_split`].
    trust_owner: bool,
    /// [`MeasureClientOptions::max_epsilon`].
    max_epsilon: f64,
    /// [`MeasureClientOptions::progress`].
    progress: Option<Arc<dyn Progress>>,
    /// [`MeasureClientOptions::ledger`], and what its entry for this measurement
    /// says but the epsilon.
    ledger: Option<(Ledger, Entry)>,
}

/// Reads the accept, runs the partner's role to its end and waits for the summary.
/// A measurement whose owner learns figures, without the partner's trust, ends
/// right after the accept: nothing of the partner's people has left it then.
fn run_partner(
    input: PartnerInput<'_>,
    inbound: &mut Inbound<OwnerBody>,
    outbound: &mpsc::Sender<wire::MeasurePartnerMessage>,
    idle: Duration,
    runtime: &tokio::runtime::Handle,
) -> Result<Partnered, DriveError> {
    let accept = match receive_with_deadline(inbound, idle, runtime)? {
        OwnerBody::Accept(accept) => accept,
        _ => return Err(FrameError::Unexpected { state: "awaiting accept", message: "frame or summary" }.into()),
    };
    if accept.version != MEASURE_VERSION {
        return Err(ProtocolError::UnsupportedVersion { ours: MEASURE_VERSION, theirs: accept.version }.into());
    }
    let learner = learner_from_wire(accept.learner)?;
    if accept.epsilon.is_some_and(|e| !(laplace::MIN_EPSILON..=laplace::MAX_EPSILON).contains(&e)) {
        return Err(FrameError::Malformed("the accept's epsilon is not a number from 2^-16 to 2^16").into());
    }
    let noise = accept_noise(accept.epsilon, accept.clip_value)?;
    // With noise the partner noises what the owner decrypts and checks its range
    // proofs; without, the owner would decrypt exact sums of values nobody checked.
    let owner_learns = learner != Learner::Partner;
    // The owner picks epsilon: only one up to this partner's maximum protects it.
    let protected = noise.is_some_and(|n| n.epsilon <= input.max_epsilon);
    if owner_learns && !protected && !input.trust_owner {
        return Ok(Partnered::OwnerWouldLearn);
    }
    if (accept.max_frame_bytes as usize) < MIN_FRAME_BYTES || accept.min_aggregate == 0 {
        return Err(FrameError::Malformed("the accept's frame limit or minimum aggregate is too small").into());
    }
    let PartnerInput { labels, group_records, exposures, bundles, progress, ledger, .. } = input;
    let require_proofs = owner_learns && noise.is_some();
    let config =
        measure::PartnerConfig { min_aggregate: accept.min_aggregate, learner, noise, seed: None, require_proofs };
    // The owner proves its people after its accept, before `people` comes: the
    // wait for each of its messages grows by the proving allowance per person.
    let idle = if require_proofs { idle.saturating_add(proving_allowance(accept.owner_people)) } else { idle };
    let partner = measure::Partner::new(config, labels, group_records, exposures).map_err(FrameError::from)?;
    // What the owner will learn is charged to the partner's ledger once the accept
    // passed its checks and the exposures are blinded, just before anything about
    // the people leaves: a refusal ends the measurement here, and a measurement
    // that fails before sending is never charged.
    if let Some((ledger, entry)) = ledger.as_ref().filter(|_| owner_learns)
        && let Err(e) = ledger.charge(noise.map(|n| n.epsilon), entry.clone())
    {
        return Ok(Partnered::Ledger(e));
    }
    let send = SEND_FRAME_BYTES.min(accept.max_frame_bytes as usize);
    let mut frames = PartnerFrames::new(partner, bundles, accept.owner_people, (MAX_DECODING - 1024, send), progress);
    drive(&mut frames, inbound, outbound, Some, idle, runtime)?;
    if frames.summary().is_none() {
        let last = receive_with_deadline(inbound, idle, runtime)?;
        frames.receive(last)?;
    }
    let release = frames.partner().release().cloned();
    if learner.partner_learns() && release.is_none() {
        return Err(FrameError::Malformed("the owner sent no release").into());
    }
    let epsilon_spent = frames.summary().map_or(0.0, |s| s.epsilon_spent);
    Ok(Partnered::Done((accept, learner, release, epsilon_spent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an owner that does not read `owner_may_learn` (an older server, or
    /// one that cheats), the partner still stops at an accept where the owner
    /// would learn exact figures: nothing is sent. With noise it goes on (its own
    /// noise and the owner's range proofs protect its split).
    #[test]
    fn a_partner_that_does_not_trust_the_owner_stops_at_an_accept_where_the_owner_learns() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for (learner, trust, epsilon, stops) in [
            (wire::Learner::Owner, false, None, true),
            (wire::Learner::Both, false, None, true),
            (wire::Learner::Partner, false, None, false),
            (wire::Learner::Owner, true, None, false),
            (wire::Learner::Owner, false, Some(1.0), false),
            (wire::Learner::Both, false, Some(1.0), false),
            // Issue 20, the review's H1: an owner that announces epsilon 2^16 would
            // get figures whose noise is nearly always 0.
            (wire::Learner::Owner, false, Some(65_536.0), true),
            (wire::Learner::Owner, true, Some(65_536.0), false),
        ] {
            let (in_tx, mut inbound) = mpsc::channel(4);
            let (outbound, mut sent) = mpsc::channel(4);
            let accept = wire::MeasureAccept {
                version: MEASURE_VERSION,
                learner: learner.into(),
                min_aggregate: 1,
                owner_people: 0,
                max_frame_bytes: SEND_FRAME_BYTES as u32,
                epsilon,
                clip_value: epsilon.map(|_| 1_000),
            };
            in_tx.try_send(Ok(OwnerBody::Accept(accept))).unwrap();
            drop(in_tx);
            let input = PartnerInput {
                labels: vec!["all".into()],
                group_records: vec![0],
                exposures: &[],
                bundles: 0,
                trust_owner: trust,
                max_epsilon: DEFAULT_MAX_EPSILON,
                progress: None,
                ledger: None,
            };
            let result = run_partner(input, &mut inbound, &outbound, Duration::from_secs(5), runtime.handle());
            assert_eq!(matches!(result, Ok(Partnered::OwnerWouldLearn)), stops, "{learner:?} {trust} {epsilon:?}");
            if stops {
                assert!(sent.try_recv().is_err(), "nothing sent after the accept");
            }
        }
    }

    /// The wait for an owner that proves grows with its people, up to a day.
    #[test]
    fn the_wait_for_proofs_grows_with_the_owners_people() {
        assert_eq!(proving_allowance(0), Duration::ZERO);
        assert_eq!(proving_allowance(1_000_000), Duration::from_secs(20_000));
        assert_eq!(proving_allowance(u64::MAX), Duration::from_secs(86_400));
    }

    #[test]
    fn an_accept_with_noise_carries_a_clip_and_one_without_carries_none() {
        assert_eq!(accept_noise(None, None).unwrap(), None);
        assert_eq!(accept_noise(Some(1.0), Some(1_000)).unwrap(), Some(Noise { epsilon: 1.0, clip: 1_000 }));
        assert_eq!(accept_noise(Some(1.0), Some(MAX_VALUE)).unwrap(), Some(Noise { epsilon: 1.0, clip: MAX_VALUE }));
        for (epsilon, clip) in
            [(Some(1.0), None), (None, Some(5)), (Some(1.0), Some(0)), (Some(1.0), Some(MAX_VALUE + 1))]
        {
            let err = accept_noise(epsilon, clip).unwrap_err();
            assert!(err.to_string().contains("clip value"), "{epsilon:?} {clip:?}: {err}");
        }
    }
}
