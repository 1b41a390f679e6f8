//! The OPRF sender, as a state machine: send what [`OprfSender::poll_outgoing`]
//! returns, feed the receiver's messages to [`OprfSender::receive`].
//!
//! The sender learns only the receiver's set size (and, in `both` mode, which of its
//! own tokens matched). It is the OT receiver of the base OTs, with a secret random
//! choice string `s ∈ {0,1}^w`; from the receiver's correction it obtains column
//! `Q_i = PRG(k_i^{s_i}) ⊕ s_i·U_i`, so row `j` of `Q` is `T_j ⊕ (C_j ∧ s)`. Once
//! the whole correction is in, it opens the check seed it committed to, and checks
//! the receiver's 64 combinations `Σ χ_j Q_j = T̃ ⊕ (code(P̃) ∧ s)`: only if every
//! row of `C` is a code word (up to positions the receiver then had to guess) does
//! it evaluate its tokens, `ψ(x) = Out(x, Decode(Q, x) ⊕ (code(v(x)) ∧ s))`, and
//! send the outputs in its [`PreparedSet`] order (a uniformly random order).
//!
//! Invariants: `s`, the chosen seeds, the hash key and the check seed are fresh
//! for every match (OS CSPRNG) and zeroized when no longer needed; no output is
//! computed before the check passed; every length and count from the receiver is
//! checked before use, so no peer input can panic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::rngs::OsRng;
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::code::Encoder;
use super::error::OprfError;
use super::kernel::{self, Row};
use super::message::{OPRF_VERSION, ReceiverMessage, ReceiverSetup, SenderMessage, SenderSetup};
use super::okvs::Layout;
use super::ot::{self, Seed};
use super::params::{CHECK_PLANES, MAX_SET_SIZE, Params};
use super::receiver::{CHECK_BYTES, add_phase, fixed};
use super::{OprfConfig, check_chunk, check_chunk_limit};
use crate::psi::set::PreparedSet;

#[derive(Debug)]
enum State {
    AwaitingReceiverSetup,
    AwaitingSeeds,
    ReceivingCorrection { received: u64 },
    AwaitingCheck,
    SendingOutputs { sent: usize },
    AwaitingMatches { received: u64 },
    AwaitingFinished,
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingReceiverSetup => "awaiting receiver setup",
            State::AwaitingSeeds => "awaiting seeds",
            State::ReceivingCorrection { .. } => "receiving the correction matrix",
            State::AwaitingCheck => "awaiting the check",
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

/// The secrets of one match; zeroized on drop.
struct Job {
    params: Params,
    /// `k_i^{s_i}`.
    seeds: Vec<Seed>,
    /// `s` as a row: bit `i` set where `s_i = 1`.
    choice: Zeroizing<Row>,
    hash_key: Zeroizing<[u8; 16]>,
    check_seed: Zeroizing<[u8; 16]>,
    /// From `Seeds`: the table seed and the receiver's check seed.
    table_seed: [u8; 16],
    receiver_seed: [u8; 16],
    /// Correction bytes of the next, incomplete column.
    pending: Vec<u8>,
    /// The columns `Q_i` computed so far, one per complete correction column.
    columns: Zeroizing<Vec<Vec<u64>>>,
    /// `Q` as rows, once the whole correction is in (with `s`, it evaluates the OPRF).
    rows: Zeroizing<Vec<Row>>,
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

    /// Handles one message from the receiver. Any error ends the match. Seeds and
    /// the check may arrive before this side's setup or opening has left (a
    /// receiver may pipeline them): sent that early they cannot depend on the
    /// commitment or the challenge, so a check then fails like any other wrong one.
    pub fn receive(&mut self, message: ReceiverMessage) -> Result<(), OprfError> {
        match (&self.state, message) {
            (State::AwaitingReceiverSetup, ReceiverMessage::Setup(setup)) => self.on_setup(setup),
            (State::AwaitingSeeds, ReceiverMessage::Seeds(seeds)) => self.on_seeds(&seeds),
            (&State::ReceivingCorrection { received }, ReceiverMessage::Correction(chunk)) => {
                self.on_correction(received, &chunk)
            }
            (State::AwaitingCheck, ReceiverMessage::Check(check)) => self.on_check(&check),
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
        let mut random = Zeroizing::new(vec![0u8; width + 32]);
        OsRng.try_fill_bytes(&mut random).map_err(|e| OprfError::Rng(e.to_string()))?;
        let choices: Zeroizing<Vec<bool>> = Zeroizing::new(random[..width].iter().map(|b| b & 1 == 1).collect());
        let mut choice = Zeroizing::new([0u64; 8]);
        for (i, _) in choices.iter().enumerate().filter(|(_, c)| **c) {
            choice[i / 64] |= 1 << (i % 64);
        }
        let mut hash_key = Zeroizing::new([0u8; 16]);
        hash_key.copy_from_slice(&random[width..width + 16]);
        let mut check_seed = Zeroizing::new([0u8; 16]);
        check_seed.copy_from_slice(&random[width + 16..]);
        let (ot_points, seeds) = ot::receive(&setup.ot_point, &choices)?;
        self.phases.push(("sender: base OTs", start.elapsed()));
        self.outbox.push_back(SenderMessage::Setup(SenderSetup {
            version: OPRF_VERSION,
            sender_set_size: self.set.len() as u64,
            height: params.height,
            sparse_len: params.sparse_len,
            width: params.width,
            output_len: params.output_len,
            max_chunk_bytes: self.config.max_chunk_bytes,
            hash_key: hash_key.to_vec(),
            ot_points,
            commitment: kernel::commitment(&check_seed).to_vec(),
        }));
        self.job = Some(Job {
            params,
            seeds,
            choice,
            hash_key,
            check_seed,
            table_seed: [0; 16],
            receiver_seed: [0; 16],
            pending: Vec::new(),
            columns: Zeroizing::new(Vec::new()),
            rows: Zeroizing::new(Vec::new()),
        });
        self.params = Some(params);
        self.receiver_set_size = size;
        self.send_chunk = self.config.send_chunk_bytes.min(setup.max_chunk_bytes) as usize;
        self.state = State::AwaitingSeeds;
        Ok(())
    }

    fn on_seeds(&mut self, seeds: &[u8]) -> Result<(), OprfError> {
        let seeds = fixed::<32>("seeds", seeds)?;
        let Some(job) = self.job.as_mut() else { return Err(OprfError::BadConfig("no matrix job")) };
        job.table_seed.copy_from_slice(&seeds[..16]);
        job.receiver_seed.copy_from_slice(&seeds[16..]);
        self.state = State::ReceivingCorrection { received: 0 };
        Ok(())
    }

    /// Takes a correction chunk: every column it completes becomes
    /// `Q_i = PRG(k_i^{s_i}) ⊕ s_i·U_i` at once (on all cores), so only one
    /// incomplete column is ever buffered.
    fn on_correction(&mut self, received: u64, chunk: &[u8]) -> Result<(), OprfError> {
        let Some(job) = self.job.as_mut() else { return Err(OprfError::BadConfig("no matrix job")) };
        let total = job.params.matrix_bytes();
        check_chunk("correction", chunk.len(), self.config.max_chunk_bytes, received, total)?;
        let start = Instant::now();
        job.pending.extend_from_slice(chunk);
        let column_bytes = job.params.column_bytes();
        let complete = job.pending.len() / column_bytes;
        if complete > 0 {
            let first = job.columns.len();
            let (seeds, choice) = (&job.seeds, &job.choice);
            let columns: Vec<Vec<u64>> = job.pending[..complete * column_bytes]
                .par_chunks(column_bytes)
                .enumerate()
                .map(|(k, u)| {
                    let i = first + k;
                    // The same work whatever s_i is (no branch on the secret).
                    let mask = 0u64.wrapping_sub((choice[i / 64] >> (i % 64)) & 1);
                    let mut q = kernel::prg_words(&seeds[i], column_bytes / 8);
                    for (q, u) in q.iter_mut().zip(u.chunks_exact(8)) {
                        *q ^= u64::from_le_bytes(u.try_into().unwrap_or_default()) & mask;
                    }
                    q
                })
                .collect();
            job.columns.extend(columns);
            job.pending.drain(..complete * column_bytes);
        }
        let received = received + chunk.len() as u64;
        if received < total {
            add_phase(&mut self.phases, "sender: PRG, Q", start.elapsed());
            self.state = State::ReceivingCorrection { received };
            return Ok(());
        }
        // The whole matrix is in (every column complete): Q as rows, then open the
        // check seed.
        job.rows = Zeroizing::new(kernel::columns_to_rows(&job.columns));
        job.columns = Zeroizing::new(Vec::new());
        job.seeds.clear();
        self.outbox.push_back(SenderMessage::Opening(job.check_seed.to_vec()));
        add_phase(&mut self.phases, "sender: PRG, Q", start.elapsed());
        self.state = State::AwaitingCheck;
        Ok(())
    }

    /// Checks the receiver's combinations, then evaluates every own token.
    fn on_check(&mut self, check: &[u8]) -> Result<(), OprfError> {
        let start = Instant::now();
        if check.len() != CHECK_BYTES {
            return Err(OprfError::BadLength { what: "check", len: check.len(), expected: CHECK_BYTES });
        }
        let Some(job) = self.job.take() else { return Err(OprfError::BadConfig("no matrix job")) };
        let code = Encoder::get();
        let (row_bytes, value_bytes) = check.split_at(CHECK_PLANES * 64);
        let chi = kernel::challenge(&job.check_seed, &job.receiver_seed, job.rows.len());
        let sums = kernel::row_sums(&job.rows, &chi);
        let mut difference = 0u64;
        for (b, sum) in sums.iter().enumerate() {
            let claimed = kernel::to_words(&row_bytes[64 * b..64 * (b + 1)]);
            let value = u128::from_le_bytes(value_bytes[16 * b..16 * (b + 1)].try_into().unwrap_or_default());
            let word = code.encode(value);
            for w in 0..8 {
                difference |= sum[w] ^ claimed[w] ^ (word[w] & job.choice[w]);
            }
        }
        if difference != 0 {
            return Err(OprfError::CheckFailed);
        }
        self.phases.push(("sender: check", start.elapsed()));

        let start = Instant::now();
        let params = job.params;
        let layout = Layout::new(params.sparse_len, job.table_seed)
            .map_err(|_| OprfError::BadConfig("table smaller than 3 cells"))?;
        let tokens = self.set.tokens();
        let output_len = params.output_len as usize;
        let cells = &job.rows[..params.table_len()];
        let mut outputs = vec![0u8; tokens.len() * output_len];
        outputs.par_chunks_mut(output_len).zip(tokens.par_iter()).for_each(|(out, t)| {
            let hashed = kernel::hash(&job.hash_key, &t.0);
            let mut row = layout.row(&hashed.key).decode(params.sparse_len as usize, cells);
            let word = code.encode(hashed.value);
            for w in 0..8 {
                row[w] ^= word[w] & job.choice[w];
            }
            kernel::output(&t.0, &row, out);
        });
        drop(job);
        self.outputs = outputs;
        self.phases.push(("sender: outputs", start.elapsed()));
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
