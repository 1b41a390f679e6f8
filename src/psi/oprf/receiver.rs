//! The OPRF receiver, as a state machine: send what [`OprfReceiver::poll_outgoing`]
//! returns, feed the sender's messages to [`OprfReceiver::receive`].
//!
//! The receiver learns which of its own tokens the sender also holds. It is the OT
//! sender of the base OTs; it builds the matrix `D` (all ones, then for every own
//! token `y` and column `i` the bit at row `v_i(y)` cleared), draws
//! `A_i = PRG(k_i^0)` and sends the correction `U_i = A_i ⊕ PRG(k_i^1) ⊕ D_i`, one
//! group of four columns at a time (computed lazily, on all cores, in
//! `poll_outgoing`), gathering its own bits `A_i[v_i(y)]` as it goes. Its outputs
//! `H2(A[v(y)])` are compared with the sender's.
//!
//! Invariants: the OT scalar and seeds are zeroized as soon as the correction is
//! sent; every length and count from the sender is checked before use, so no peer
//! input can panic; the parameters the sender announces must equal the derivation
//! from both sizes ([`Params::derive`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::error::OprfError;
use super::kernel::{self, Block, GROUP, Gathered, Prf};
use super::message::{MAX_CHUNK_BYTES, OPRF_VERSION, ReceiverMessage, ReceiverSetup, SenderMessage, SenderSetup};
use super::ot::{OtSender, Seed};
use super::params::{MAX_SET_SIZE, Params};
use super::{OprfConfig, check_chunk, check_chunk_limit, output_key};
use crate::psi::set::PreparedSet;

#[derive(Debug)]
enum State {
    AwaitingSenderSetup,
    SendingCorrection { next_group: usize },
    ReceivingOutputs { received: u64 },
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingSenderSetup => "awaiting sender setup",
            State::SendingCorrection { .. } => "sending the correction matrix",
            State::ReceivingOutputs { .. } => "receiving outputs",
            State::Done => "done",
        }
    }
}

/// The receiver's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverOutcome {
    /// `both` mode: the sender was told which of its outputs matched.
    pub report_back: bool,
    /// `n_R`, this side's distinct tokens.
    pub receiver_set_size: u64,
    /// `n_S`, as the sender announced it.
    pub sender_set_size: u64,
    /// The parameters both sides derived.
    pub params: Params,
    /// `matched[i]` for each of the receiver's tokens, in [`PreparedSet`] order.
    pub matched: Vec<bool>,
    /// Distinct matching tokens.
    pub intersection: u64,
    /// Wall time of each phase this side ran.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Everything the matrix phase needs; dropped (seeds zeroized) when it ends.
struct Job {
    params: Params,
    prf: Prf,
    seeds: Vec<[Seed; 2]>,
    h1s: Vec<Block>,
    gathered: Gathered,
}

/// Sorted outputs `(key, token index)` with a bucket index on the top bits.
struct Table {
    entries: Vec<(u128, u32)>,
    bits: u32,
    starts: Vec<u32>,
}

impl Table {
    fn new(outputs: &[u8], output_len: usize) -> Table {
        let mut entries: Vec<(u128, u32)> =
            outputs.par_chunks(output_len).enumerate().map(|(i, o)| (output_key(o), i as u32)).collect();
        entries.par_sort_unstable();
        let bits = super::params::ceil_log2(entries.len() as u64).min(24);
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for &(key, _) in &entries {
            starts[bucket(key, bits) + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        Table { entries, bits, starts }
    }

    /// The receiver token whose output is `key`, if any.
    fn find(&self, key: u128) -> Option<u32> {
        let b = bucket(key, self.bits);
        let range = &self.entries[self.starts[b] as usize..self.starts[b + 1] as usize];
        range.binary_search_by(|e| e.0.cmp(&key)).ok().map(|i| range[i].1)
    }
}

fn bucket(key: u128, bits: u32) -> usize {
    if bits == 0 { 0 } else { (key >> (128 - bits)) as usize }
}

/// The receiver's state machine for one match. Its OT secret and seeds live at
/// most as long as this value.
pub struct OprfReceiver<'a> {
    config: OprfConfig,
    set: &'a PreparedSet,
    report_back: bool,
    ot: Option<OtSender>,
    state: State,
    outbox: VecDeque<ReceiverMessage>,
    job: Option<Job>,
    params: Option<Params>,
    sender_set_size: u64,
    /// Bytes per chunk this side sends: min(own send size, sender's limit).
    send_chunk: usize,
    table: Option<Table>,
    matched: Vec<bool>,
    sender_matched: Vec<u8>,
    phases: Vec<(&'static str, Duration)>,
}

impl<'a> OprfReceiver<'a> {
    /// Starts a match for `set`; the setup message is ready at once. Refuses
    /// `count` ([`OprfError::RevealNotOffered`]) and chunk limits out of range.
    pub fn new(config: OprfConfig, set: &'a PreparedSet) -> Result<OprfReceiver<'a>, OprfError> {
        let report_back = config.report_back()?;
        if set.len() as u64 > MAX_SET_SIZE {
            return Err(OprfError::SetSizeOutOfRange {
                what: "receiver",
                size: set.len() as u64,
                min: 0,
                max: MAX_SET_SIZE,
            });
        }
        let start = Instant::now();
        let ot = OtSender::new()?;
        let setup = ReceiverSetup {
            version: OPRF_VERSION,
            receiver_set_size: set.len() as u64,
            report_back,
            max_chunk_bytes: config.max_chunk_bytes,
            ot_point: ot.point().to_vec(),
        };
        Ok(OprfReceiver {
            config,
            set,
            report_back,
            ot: Some(ot),
            state: State::AwaitingSenderSetup,
            outbox: VecDeque::from([ReceiverMessage::Setup(setup)]),
            job: None,
            params: None,
            sender_set_size: 0,
            send_chunk: MAX_CHUNK_BYTES as usize,
            table: None,
            matched: vec![false; set.len()],
            sender_matched: Vec::new(),
            phases: vec![("receiver: OT point", start.elapsed())],
        })
    }

    /// Whether the match has ended successfully (and everything was sent).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.outbox.is_empty()
    }

    /// Handles one message from the sender. Any error ends the match.
    ///
    /// Outputs are accepted only once the whole correction matrix has been handed
    /// out by [`poll_outgoing`](Self::poll_outgoing): the state machine moves to
    /// receiving outputs when the last correction chunk is computed, but until that
    /// chunk has left, a sender cannot have computed an output from it, so outputs
    /// then are out of order (refused here, in the one place every transport goes
    /// through).
    pub fn receive(&mut self, message: SenderMessage) -> Result<(), OprfError> {
        // In `ReceivingOutputs` the outbox holds nothing but correction chunks.
        let correction_in_flight = matches!(self.state, State::ReceivingOutputs { .. }) && !self.outbox.is_empty();
        match (&self.state, message) {
            (State::AwaitingSenderSetup, SenderMessage::Setup(setup)) => self.on_setup(setup),
            (&State::ReceivingOutputs { received }, SenderMessage::Outputs(chunk)) if !correction_in_flight => {
                self.on_outputs(received, &chunk)
            }
            (state, message) => Err(OprfError::UnexpectedMessage {
                state: if correction_in_flight { "sending the correction matrix" } else { state.name() },
                message: message.name(),
            }),
        }
    }

    /// The next message to send, if any. The correction matrix is computed here,
    /// one batch of column groups per call.
    pub fn poll_outgoing(&mut self) -> Option<ReceiverMessage> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        match self.state {
            State::SendingCorrection { next_group } => {
                self.correction_batch(next_group);
                self.outbox.pop_front()
            }
            State::ReceivingOutputs { .. } => {
                // Nothing to send: a good moment to hash our own rows.
                self.ensure_table();
                None
            }
            _ => None,
        }
    }

    /// The result, once the match is done.
    pub fn outcome(self) -> Option<ReceiverOutcome> {
        let params = self.params?;
        matches!(self.state, State::Done).then(|| ReceiverOutcome {
            report_back: self.report_back,
            receiver_set_size: self.set.len() as u64,
            sender_set_size: self.sender_set_size,
            params,
            intersection: self.matched.iter().filter(|&&m| m).count() as u64,
            matched: self.matched,
            phases: self.phases,
        })
    }

    fn on_setup(&mut self, setup: SenderSetup) -> Result<(), OprfError> {
        let start = Instant::now();
        if setup.version != OPRF_VERSION {
            return Err(OprfError::UnsupportedVersion { ours: OPRF_VERSION, theirs: setup.version });
        }
        let size = setup.sender_set_size;
        let (min, max) = (self.config.min_peer_set, self.config.max_peer_set.min(MAX_SET_SIZE));
        if size < min || size > max {
            return Err(OprfError::SetSizeOutOfRange { what: "sender", size, min, max });
        }
        let params = Params::derive(size, self.set.len() as u64)?;
        for (what, ours, theirs) in [
            ("log_height", params.log_height, setup.log_height),
            ("width", params.width, setup.width),
            ("output_len", params.output_len, setup.output_len),
        ] {
            if ours != theirs {
                return Err(OprfError::ParameterMismatch { what, ours: u64::from(ours), theirs: u64::from(theirs) });
            }
        }
        check_chunk_limit("sender setup max_chunk_bytes", setup.max_chunk_bytes)?;
        let prf_seed: [u8; 16] = setup.prf_seed.as_slice().try_into().map_err(|_| OprfError::BadLength {
            what: "sender setup prf_seed",
            len: setup.prf_seed.len(),
            expected: 16,
        })?;
        let ot = self.ot.take().ok_or(OprfError::BadConfig("the OT secret is gone"))?;
        let seeds = ot.seeds(&setup.ot_points, params.width as usize)?;
        drop(ot);
        self.phases.push(("receiver: base OTs", start.elapsed()));
        let start = Instant::now();
        let width = params.width as usize;
        self.job = Some(Job {
            params,
            prf: Prf::new(&prf_seed, width.div_ceil(GROUP)),
            seeds,
            h1s: kernel::h1_all(self.set.tokens()),
            gathered: Gathered::new(self.set.len(), width),
        });
        self.phases.push(("receiver: H1", start.elapsed()));
        self.params = Some(params);
        self.sender_set_size = size;
        self.send_chunk = self.config.send_chunk_bytes.min(setup.max_chunk_bytes) as usize;
        self.state = State::SendingCorrection { next_group: 0 };
        Ok(())
    }

    /// Computes the next groups' correction columns (one core per group) and
    /// queues them as chunks.
    fn correction_batch(&mut self, first: usize) {
        let Some(job) = self.job.as_mut() else { return };
        let start = Instant::now();
        let params = job.params;
        let width = params.width as usize;
        let groups = width.div_ceil(GROUP);
        let group_bytes = GROUP * params.column_bytes();
        let batch = (self.send_chunk / group_bytes).max(2 * rayon::current_num_threads());
        let end = (first + batch).min(groups);
        let data = correction_groups(job, first, end);
        for chunk in data.chunks(self.send_chunk) {
            self.outbox.push_back(ReceiverMessage::Correction(chunk.to_vec()));
        }
        add_phase(&mut self.phases, "receiver: matrix, PRG, correction, gather", start.elapsed());
        if end == groups {
            // The seeds are no longer needed (zeroized on drop). Our own rows are
            // hashed once the last chunk is out (`ensure_table`).
            job.seeds.clear();
            self.state = State::ReceivingOutputs { received: 0 };
            if self.sender_set_size == 0 {
                self.finish();
            }
        } else {
            self.state = State::SendingCorrection { next_group: end };
        }
    }

    fn build_table(&mut self, job: Job) {
        let start = Instant::now();
        let n = self.set.len();
        let params = job.params;
        let Job { gathered, .. } = job;
        let outputs = kernel::outputs(&gathered, n, params.width as usize, params.output_len as usize);
        drop(gathered);
        self.table = Some(Table::new(&outputs, params.output_len as usize));
        self.phases.push(("receiver: H2 of own rows, table", start.elapsed()));
    }

    fn ensure_table(&mut self) {
        if self.table.is_none()
            && let Some(job) = self.job.take()
        {
            self.build_table(job);
        }
    }

    fn on_outputs(&mut self, received: u64, chunk: &[u8]) -> Result<(), OprfError> {
        let Some(params) = self.params else { return Err(OprfError::BadConfig("no parameters")) };
        let output_len = params.output_len as usize;
        let total = self.sender_set_size * output_len as u64;
        check_chunk("outputs", chunk.len(), self.config.max_chunk_bytes, received, total)?;
        if !chunk.len().is_multiple_of(output_len) {
            return Err(OprfError::NotMultiple { what: "outputs", len: chunk.len(), unit: output_len });
        }
        let start = Instant::now();
        self.ensure_table();
        let Some(table) = self.table.as_ref() else { return Err(OprfError::BadConfig("no table")) };
        let hits: Vec<(usize, u32)> = chunk
            .par_chunks(output_len)
            .enumerate()
            .filter_map(|(i, o)| table.find(output_key(o)).map(|t| (i, t)))
            .collect();
        let first = (received / output_len as u64) as usize;
        if self.report_back && self.sender_matched.is_empty() {
            self.sender_matched = vec![0u8; (self.sender_set_size as usize).div_ceil(8)];
        }
        for (i, token) in hits {
            self.matched[token as usize] = true;
            if self.report_back {
                let s = first + i;
                self.sender_matched[s >> 3] |= 1 << (s & 7);
            }
        }
        add_phase(&mut self.phases, "receiver: compare", start.elapsed());
        let received = received + chunk.len() as u64;
        self.state = State::ReceivingOutputs { received };
        if received == total {
            self.finish();
        }
        Ok(())
    }

    /// All outputs are in: report back (`both`), then `Finished`.
    fn finish(&mut self) {
        if self.report_back {
            let bitmap = std::mem::take(&mut self.sender_matched);
            for chunk in bitmap.chunks(self.send_chunk) {
                self.outbox.push_back(ReceiverMessage::Matches(chunk.to_vec()));
            }
        }
        self.outbox.push_back(ReceiverMessage::Finished);
        self.table = None;
        self.state = State::Done;
    }
}

/// One group's `A` columns and `D` columns.
type GroupColumns = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The correction columns `U_i` of groups `first..end`, concatenated, gathering
/// the receiver's own bits of `A` on the way; one core per group, each column of
/// D and then of A walked alone over a block of tokens ([`kernel::for_groups`]).
fn correction_groups(job: &mut Job, first: usize, end: usize) -> Vec<u8> {
    let params = job.params;
    let width = params.width as usize;
    let column_bytes = params.column_bytes();
    let mask = (params.height() - 1) as u32;
    let seeds = &job.seeds;
    // Per group: (A columns, D columns), A = PRG(k^0), D all ones.
    let states: Vec<GroupColumns> = (first..end)
        .into_par_iter()
        .map(|g| {
            let columns = GROUP.min(width - GROUP * g);
            let a = (0..columns).map(|j| kernel::prg(&seeds[GROUP * g + j][0], column_bytes)).collect();
            (a, vec![vec![0xffu8; column_bytes]; columns])
        })
        .collect();
    let states =
        kernel::for_groups(&mut job.gathered, first, states, &job.prf, &job.h1s, mask, |(a, d), rows, words| {
            for (j, (a, d)) in a.iter().zip(d.iter_mut()).enumerate() {
                kernel::clear_rows(d, rows.column(j));
                kernel::gather_column(a, rows.column(j), j, words);
            }
        });
    let columns: Vec<Vec<u8>> = states
        .into_par_iter()
        .enumerate()
        .flat_map_iter(|(k, (a, d))| {
            let g = first + k;
            a.into_iter().zip(d).enumerate().map(move |(j, (a, mut u))| {
                for (u, a) in u.iter_mut().zip(&a) {
                    *u ^= a;
                }
                kernel::xor_prg(&seeds[GROUP * g + j][1], &mut u);
                u
            })
        })
        .collect();
    columns.concat()
}

pub(super) fn add_phase(phases: &mut Vec<(&'static str, Duration)>, name: &'static str, d: Duration) {
    match phases.iter_mut().find(|(n, _)| *n == name) {
        Some((_, total)) => *total += d,
        None => phases.push((name, d)),
    }
}
