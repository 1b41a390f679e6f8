//! The OPRF sender, as a state machine: send what [`OprfSender::poll_outgoing`]
//! returns, feed the receiver's messages to [`OprfSender::receive`].
//!
//! The sender learns only the receiver's set size (and, in `both` mode, which of its
//! own tokens matched). It is the OT receiver of the base OTs, with a secret random
//! choice string `s ∈ {0,1}^w`; from the receiver's correction it obtains column
//! `C_i = PRG(k_i^{s_i}) ⊕ s_i·U_i`, which is `A_i` where `s_i = 0` and
//! `A_i ⊕ D_i` where `s_i = 1`. It evaluates the OPRF on its own tokens,
//! `ψ(x) = H2(C_1[v_1(x)] ‖ … ‖ C_w[v_w(x)])` truncated to `ℓ2` bits, group by group
//! as the correction arrives (on all cores), and sends the outputs in its
//! [`PreparedSet`] order (a uniformly random order).
//!
//! Invariants: `s`, the chosen seeds and the PRF seed are fresh for every match
//! (OS CSPRNG) and zeroized when no longer needed; every length and count from the
//! receiver is checked before use, so no peer input can panic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::error::OprfError;
use super::kernel::{self, Block, GROUP, Gathered, Prf};
use super::message::{OPRF_VERSION, ReceiverMessage, ReceiverSetup, SenderMessage, SenderSetup};
use super::ot::{self, Seed};
use super::params::{MAX_SET_SIZE, Params};
use super::receiver::add_phase;
use super::{OprfConfig, check_chunk, check_chunk_limit};
use crate::psi::set::PreparedSet;

#[derive(Debug)]
enum State {
    AwaitingReceiverSetup,
    ReceivingCorrection { received: u64 },
    SendingOutputs { sent: usize },
    AwaitingMatches { received: u64 },
    AwaitingFinished,
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingReceiverSetup => "awaiting receiver setup",
            State::ReceivingCorrection { .. } => "receiving the correction matrix",
            State::SendingOutputs { .. } => "sending outputs",
            State::AwaitingMatches { .. } => "awaiting matches",
            State::AwaitingFinished => "awaiting finished",
            State::Done => "done",
        }
    }
}

/// The sender's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderOutcome {
    /// `both` mode: the receiver reported this side's matches back.
    pub report_back: bool,
    /// `n_R`, as the receiver announced it.
    pub receiver_set_size: u64,
    /// `n_S`, this side's distinct tokens.
    pub sender_set_size: u64,
    /// The parameters both sides derived.
    pub params: Params,
    /// `both` mode: `matched[i]` for each of the sender's tokens, in
    /// [`PreparedSet`] order, as reported by the receiver.
    pub matched: Option<Vec<bool>>,
    /// Wall time of each phase this side ran.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Everything the matrix phase needs; dropped (seeds zeroized) when it ends.
struct Job {
    params: Params,
    prf: Prf,
    /// `k_i^{s_i}`.
    seeds: Vec<Seed>,
    /// `0xff` where `s_i = 1`, else `0`.
    choice_masks: Zeroizing<Vec<u8>>,
    h1s: Vec<Block>,
    gathered: Gathered,
    /// Correction bytes of the next, incomplete group.
    pending: Vec<u8>,
    next_group: usize,
}

/// The sender's state machine for one match.
pub struct OprfSender<'a> {
    config: OprfConfig,
    set: &'a PreparedSet,
    report_back: bool,
    state: State,
    outbox: VecDeque<SenderMessage>,
    job: Option<Job>,
    params: Option<Params>,
    receiver_set_size: u64,
    send_chunk: usize,
    outputs: Vec<u8>,
    matched_bitmap: Vec<u8>,
    phases: Vec<(&'static str, Duration)>,
}

impl<'a> OprfSender<'a> {
    /// Waits for the receiver's setup. Refuses `count`
    /// ([`OprfError::RevealNotOffered`]) and chunk limits out of range.
    pub fn new(config: OprfConfig, set: &'a PreparedSet) -> Result<OprfSender<'a>, OprfError> {
        let report_back = config.report_back()?;
        if set.len() as u64 > MAX_SET_SIZE {
            return Err(OprfError::SetSizeOutOfRange {
                what: "sender",
                size: set.len() as u64,
                min: 0,
                max: MAX_SET_SIZE,
            });
        }
        Ok(OprfSender {
            config,
            set,
            report_back,
            state: State::AwaitingReceiverSetup,
            outbox: VecDeque::new(),
            job: None,
            params: None,
            receiver_set_size: 0,
            send_chunk: 0,
            outputs: Vec::new(),
            matched_bitmap: Vec::new(),
            phases: Vec::new(),
        })
    }

    /// Whether the match has ended successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.outbox.is_empty()
    }

    /// Handles one message from the receiver. Any error ends the match.
    pub fn receive(&mut self, message: ReceiverMessage) -> Result<(), OprfError> {
        match (&self.state, message) {
            (State::AwaitingReceiverSetup, ReceiverMessage::Setup(setup)) => self.on_setup(setup),
            (&State::ReceivingCorrection { received }, ReceiverMessage::Correction(chunk)) => {
                self.on_correction(received, chunk)
            }
            (&State::AwaitingMatches { received }, ReceiverMessage::Matches(chunk)) => {
                self.on_matches(received, &chunk)
            }
            (State::AwaitingFinished, ReceiverMessage::Finished) => {
                self.state = State::Done;
                Ok(())
            }
            (state, message) => Err(OprfError::UnexpectedMessage { state: state.name(), message: message.name() }),
        }
    }

    /// The next message to send, if any.
    pub fn poll_outgoing(&mut self) -> Option<SenderMessage> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        let State::SendingOutputs { sent } = self.state else { return None };
        let output_len = self.params?.output_len as usize;
        let per_chunk = (self.send_chunk / output_len).max(1) * output_len;
        let end = (sent + per_chunk).min(self.outputs.len());
        let chunk = self.outputs[sent..end].to_vec();
        if end == self.outputs.len() {
            self.outputs = Vec::new();
            self.after_outputs();
        } else {
            self.state = State::SendingOutputs { sent: end };
        }
        Some(SenderMessage::Outputs(chunk))
    }

    /// The result, once the match is done.
    pub fn outcome(self) -> Option<SenderOutcome> {
        let params = self.params?;
        let n = self.set.len();
        matches!(self.state, State::Done).then(|| SenderOutcome {
            report_back: self.report_back,
            receiver_set_size: self.receiver_set_size,
            sender_set_size: n as u64,
            params,
            matched: self
                .report_back
                .then(|| (0..n).map(|i| (self.matched_bitmap[i >> 3] >> (i & 7)) & 1 == 1).collect()),
            phases: self.phases,
        })
    }

    fn on_setup(&mut self, setup: ReceiverSetup) -> Result<(), OprfError> {
        let start = Instant::now();
        if setup.version != OPRF_VERSION {
            return Err(OprfError::UnsupportedVersion { ours: OPRF_VERSION, theirs: setup.version });
        }
        if setup.report_back != self.report_back {
            return Err(OprfError::ReportBackMismatch { ours: self.report_back, theirs: setup.report_back });
        }
        let size = setup.receiver_set_size;
        let (min, max) = (self.config.min_peer_set, self.config.max_peer_set.min(MAX_SET_SIZE));
        if size < min || size > max {
            return Err(OprfError::SetSizeOutOfRange { what: "receiver", size, min, max });
        }
        check_chunk_limit("receiver setup max_chunk_bytes", setup.max_chunk_bytes)?;
        let params = Params::derive(self.set.len() as u64, size)?;
        let width = params.width as usize;
        let mut random = Zeroizing::new(vec![0u8; width + 16]);
        OsRng.try_fill_bytes(&mut random).map_err(|e| OprfError::Rng(e.to_string()))?;
        let choices: Zeroizing<Vec<bool>> = Zeroizing::new(random[..width].iter().map(|b| b & 1 == 1).collect());
        let mut prf_seed = Zeroizing::new([0u8; 16]);
        prf_seed.copy_from_slice(&random[width..]);
        let (ot_points, seeds) = ot::receive(&setup.ot_point, &choices)?;
        self.phases.push(("sender: base OTs", start.elapsed()));
        let start = Instant::now();
        self.job = Some(Job {
            params,
            prf: Prf::new(&prf_seed, width.div_ceil(GROUP)),
            seeds,
            choice_masks: Zeroizing::new(choices.iter().map(|&c| if c { 0xff } else { 0 }).collect()),
            h1s: kernel::h1_all(self.set.tokens()),
            gathered: Gathered::new(self.set.len(), width),
            pending: Vec::new(),
            next_group: 0,
        });
        self.phases.push(("sender: H1", start.elapsed()));
        self.outbox.push_back(SenderMessage::Setup(SenderSetup {
            version: OPRF_VERSION,
            sender_set_size: self.set.len() as u64,
            log_height: params.log_height,
            width: params.width,
            output_len: params.output_len,
            max_chunk_bytes: self.config.max_chunk_bytes,
            prf_seed: prf_seed.to_vec(),
            ot_points,
        }));
        self.params = Some(params);
        self.receiver_set_size = size;
        self.send_chunk = self.config.send_chunk_bytes.min(setup.max_chunk_bytes) as usize;
        self.state = State::ReceivingCorrection { received: 0 };
        Ok(())
    }

    fn on_correction(&mut self, received: u64, chunk: Vec<u8>) -> Result<(), OprfError> {
        let Some(job) = self.job.as_mut() else { return Err(OprfError::BadConfig("no matrix job")) };
        let total = job.params.matrix_bytes();
        check_chunk("correction", chunk.len(), self.config.max_chunk_bytes, received, total)?;
        let start = Instant::now();
        let len = chunk.len();
        if job.pending.is_empty() {
            job.pending = chunk;
        } else {
            job.pending.extend_from_slice(&chunk);
        }
        let column_bytes = job.params.column_bytes();
        let width = job.params.width as usize;
        let groups = width.div_ceil(GROUP);
        let mut complete = 0;
        let mut bytes = 0;
        while job.next_group + complete < groups {
            let g = job.next_group + complete;
            let group_bytes = GROUP.min(width - GROUP * g) * column_bytes;
            if job.pending.len() < bytes + group_bytes {
                break;
            }
            bytes += group_bytes;
            complete += 1;
        }
        let data = std::mem::take(&mut job.pending);
        if complete == 1 {
            // One group: split its tokens across cores.
            evaluate_group(job, job.next_group, &data[..bytes]);
        } else if complete > 1 {
            evaluate_groups(job, job.next_group, complete, &data[..bytes]);
        }
        job.pending = data;
        job.next_group += complete;
        let offset = bytes;
        job.pending.drain(..offset);
        add_phase(&mut self.phases, "sender: PRG, gather", start.elapsed());
        let received = received + len as u64;
        if received < total {
            self.state = State::ReceivingCorrection { received };
            return Ok(());
        }
        // The whole matrix is in, so every group has been evaluated: hash the rows.
        let start = Instant::now();
        if let Some(job) = self.job.take() {
            let Job { params, gathered, .. } = job;
            self.outputs =
                kernel::outputs(&gathered, self.set.len(), params.width as usize, params.output_len as usize);
        }
        self.phases.push(("sender: H2 (OPRF outputs)", start.elapsed()));
        if self.outputs.is_empty() {
            self.after_outputs();
        } else {
            self.state = State::SendingOutputs { sent: 0 };
        }
        Ok(())
    }

    fn on_matches(&mut self, received: u64, chunk: &[u8]) -> Result<(), OprfError> {
        let n = self.set.len();
        let total = n.div_ceil(8) as u64;
        check_chunk("matches", chunk.len(), self.config.max_chunk_bytes, received, total)?;
        self.matched_bitmap.extend_from_slice(chunk);
        let received = received + chunk.len() as u64;
        if received == total {
            if !n.is_multiple_of(8) && self.matched_bitmap.last().is_some_and(|&b| b >> (n % 8) != 0) {
                return Err(OprfError::NonZeroPadding { what: "matches" });
            }
            self.state = State::AwaitingFinished;
        } else {
            self.state = State::AwaitingMatches { received };
        }
        Ok(())
    }

    /// All outputs are sent: wait for the matches (`both`) or for `Finished`.
    fn after_outputs(&mut self) {
        self.state = if self.report_back && !self.set.is_empty() {
            State::AwaitingMatches { received: 0 }
        } else {
            State::AwaitingFinished
        };
    }
}

/// `C_i = PRG(k_i^{s_i}) ⊕ (s_i · U_i)` for column `i` from its correction `u`.
fn sender_column(job: &Job, i: usize, u: &[u8]) -> Vec<u8> {
    let choice = job.choice_masks[i];
    let mut c: Vec<u8> = u.iter().map(|&b| b & choice).collect();
    kernel::xor_prg(&job.seeds[i], &mut c);
    c
}

/// Evaluates `count` complete groups from `first`, one core per group.
fn evaluate_groups(job: &mut Job, first: usize, count: usize, correction: &[u8]) {
    use rayon::prelude::*;
    let params = job.params;
    let column_bytes = params.column_bytes();
    let mask = (params.height() - 1) as u32;
    let states: Vec<Vec<Vec<u8>>> = {
        let job = &*job;
        correction
            .par_chunks(GROUP * column_bytes)
            .enumerate()
            .map(|(k, group)| {
                group
                    .chunks(column_bytes)
                    .enumerate()
                    .map(|(j, u)| sender_column(job, GROUP * (first + k) + j, u))
                    .collect()
            })
            .collect()
    };
    debug_assert_eq!(states.len(), count);
    kernel::for_groups(&mut job.gathered, first, states, &job.prf, &job.h1s, mask, |columns, rows, words| {
        for (j, c) in columns.iter().enumerate() {
            kernel::gather_column(c, rows.column(j), j, words);
        }
    });
}

/// Builds `C_i = PRG(k_i^{s_i}) ⊕ (s_i · U_i)` for the columns of group `g` and
/// gathers the sender's bits `C_i[v_i(x)]`.
fn evaluate_group(job: &mut Job, g: usize, correction: &[u8]) {
    use rayon::prelude::*;
    let params = job.params;
    let column_bytes = params.column_bytes();
    let mask = (params.height() - 1) as u32;
    let columns: Vec<Vec<u8>> =
        correction.par_chunks(column_bytes).enumerate().map(|(j, u)| sender_column(job, GROUP * g + j, u)).collect();
    let refs: Vec<&[u8]> = columns.iter().map(Vec::as_slice).collect();
    kernel::gather(&mut job.gathered, g, &refs, &job.prf, &job.h1s, mask);
}
