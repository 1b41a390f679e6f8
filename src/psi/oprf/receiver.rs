//! The OPRF receiver, as a state machine: send what [`OprfReceiver::poll_outgoing`]
//! returns, feed the sender's messages to [`OprfReceiver::receive`].
//!
//! The receiver learns which of its own tokens the sender also holds. It is the OT
//! sender of the base OTs (seeds `k_i^0, k_i^1` for each of the `w` columns). It
//! encodes its set as a table `P` with `Decode(P, y) = v(y)` for every own token
//! ([`super::okvs`]), appends random rows, and sends the correction
//! `U_i = PRG(k_i^0) ⊕ PRG(k_i^1) ⊕ C_i`, where row `j` of the matrix `C` is the
//! code word of `P_j` ([`super::code`]). Its outputs are
//! `Out(y, Decode(T, y))` with `T` the rows of the columns `PRG(k_i^0)`. After the
//! sender opens its check seed it proves, with 64 random combinations of its rows,
//! that every row of `C` is a code word (`docs/PROTOCOL.md` §11.4).
//!
//! Invariants: the OT scalar and seeds are zeroized as soon as the correction is
//! computed; every length and count from the sender is checked before use, so no
//! peer input can panic; the parameters the sender announces must equal the
//! derivation from both sizes ([`Params::derive`]); the check is sent only after
//! the whole correction has left, and outputs are accepted only after the check.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::code::Encoder;
use super::error::OprfError;
use super::kernel::{self, Row};
use super::message::{MAX_CHUNK_BYTES, OPRF_VERSION, ReceiverMessage, ReceiverSetup, SenderMessage, SenderSetup};
use super::okvs::{self, Layout};
use super::ot::{OtSender, Seed};
use super::params::{MAX_SET_SIZE, Params};
use super::{OprfConfig, check_chunk, check_chunk_limit, output_key};
use crate::psi::set::PreparedSet;

/// Attempts at encoding the table, each with a fresh seed (one fails with
/// probability below 2⁻²⁰).
const ENCODE_ATTEMPTS: u32 = 8;
/// Bytes of the `Check` message: 64 row sums of 64 bytes, 64 value sums of 16.
pub(super) const CHECK_BYTES: usize = super::params::CHECK_PLANES * (64 + 16);

#[derive(Debug)]
enum State {
    AwaitingSenderSetup,
    AwaitingOpening,
    ReceivingOutputs { received: u64 },
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingSenderSetup => "awaiting sender setup",
            State::AwaitingOpening => "awaiting the sender's opening",
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

/// What the matrix phase needs; the seeds are zeroized when it ends.
struct Job {
    params: Params,
    hash_key: [u8; 16],
    commitment: [u8; 32],
    seeds: Vec<[Seed; 2]>,
}

/// What the check needs once the correction is out: the rows `T`, the table and
/// random rows `P` (both wiped when dropped: with the hash key they would tell
/// which tokens the table holds), and this side's check seed.
struct Committed {
    commitment: [u8; 32],
    check_seed: Zeroizing<[u8; 16]>,
    rows: Zeroizing<Vec<Row>>,
    values: Zeroizing<Vec<u128>>,
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
    committed: Option<Committed>,
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
            committed: None,
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
    /// The opening is accepted only once the whole correction matrix has been
    /// handed out by [`poll_outgoing`](Self::poll_outgoing), and outputs only once
    /// the check has: a sender cannot have computed either from what has not
    /// left, so they are then out of order (refused here, in the one place every
    /// transport goes through).
    pub fn receive(&mut self, message: SenderMessage) -> Result<(), OprfError> {
        let in_flight =
            matches!(self.state, State::AwaitingOpening | State::ReceivingOutputs { .. }) && !self.outbox.is_empty();
        match (&self.state, message) {
            (State::AwaitingSenderSetup, SenderMessage::Setup(setup)) => self.on_setup(setup),
            (State::AwaitingOpening, SenderMessage::Opening(seed)) if !in_flight => self.on_opening(&seed),
            (&State::ReceivingOutputs { received }, SenderMessage::Outputs(chunk)) if !in_flight => {
                self.on_outputs(received, &chunk)
            }
            (state, message) => Err(OprfError::UnexpectedMessage {
                state: if in_flight { "sending" } else { state.name() },
                message: message.name(),
            }),
        }
    }

    /// The next message to send, if any.
    pub fn poll_outgoing(&mut self) -> Option<ReceiverMessage> {
        self.outbox.pop_front()
    }

    /// The result, once the match is done.
    pub fn outcome(self) -> Option<ReceiverOutcome> {
        let params = self.params?;
        (matches!(self.state, State::Done) && self.table.is_none() && self.committed.is_none()).then(|| {
            ReceiverOutcome {
                report_back: self.report_back,
                receiver_set_size: self.set.len() as u64,
                sender_set_size: self.sender_set_size,
                params,
                intersection: self.matched.iter().filter(|&&m| m).count() as u64,
                matched: self.matched,
                phases: self.phases,
            }
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
            ("height", params.height, setup.height),
            ("sparse_len", params.sparse_len, setup.sparse_len),
            ("width", params.width, setup.width),
            ("output_len", params.output_len, setup.output_len),
        ] {
            if ours != theirs {
                return Err(OprfError::ParameterMismatch { what, ours: u64::from(ours), theirs: u64::from(theirs) });
            }
        }
        check_chunk_limit("sender setup max_chunk_bytes", setup.max_chunk_bytes)?;
        let hash_key = fixed::<16>("sender setup hash_key", &setup.hash_key)?;
        let commitment = fixed::<32>("sender setup commitment", &setup.commitment)?;
        let ot = self.ot.take().ok_or(OprfError::BadConfig("the OT secret is gone"))?;
        let seeds = ot.seeds(&setup.ot_points, params.width as usize)?;
        drop(ot);
        self.phases.push(("receiver: base OTs", start.elapsed()));
        self.params = Some(params);
        self.sender_set_size = size;
        self.send_chunk = self.config.send_chunk_bytes.min(setup.max_chunk_bytes) as usize;
        self.encode(Job { params, hash_key, commitment, seeds })?;
        self.state = State::AwaitingOpening;
        Ok(())
    }

    /// Encodes the table, computes the correction matrix and this side's outputs,
    /// and queues `Seeds` and the correction.
    fn encode(&mut self, job: Job) -> Result<(), OprfError> {
        let Job { params, hash_key, commitment, seeds } = job;
        let start = Instant::now();
        let tokens = self.set.tokens();
        let (table_seed, rows, values) = table(params, &hash_key, tokens)?;
        self.phases.push(("receiver: H, table", start.elapsed()));

        let start = Instant::now();
        let (own_rows, correction) = matrix(params, &seeds, &values);
        drop(seeds);
        let mut check_seed = Zeroizing::new([0u8; 16]);
        OsRng.try_fill_bytes(check_seed.as_mut()).map_err(|e| OprfError::Rng(e.to_string()))?;
        self.outbox.push_back(ReceiverMessage::Seeds([table_seed, *check_seed].concat()));
        // Chunks straight from the columns' words (little-endian), column after column.
        let mut chunk = Vec::with_capacity(self.send_chunk);
        for word in correction.into_iter().flatten() {
            let bytes = word.to_le_bytes();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let take = rest.len().min(self.send_chunk - chunk.len());
                chunk.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if chunk.len() == self.send_chunk {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(self.send_chunk));
                    self.outbox.push_back(ReceiverMessage::Correction(full));
                }
            }
        }
        if !chunk.is_empty() {
            self.outbox.push_back(ReceiverMessage::Correction(chunk));
        }
        self.phases.push(("receiver: code words, PRG, correction", start.elapsed()));

        let start = Instant::now();
        let table_cells = &own_rows[..params.table_len()];
        let output_len = params.output_len as usize;
        let mut outputs = vec![0u8; tokens.len() * output_len];
        outputs.par_chunks_mut(output_len).zip(tokens.par_iter().zip(rows.par_iter())).for_each(|(out, (t, row))| {
            kernel::output(&t.0, &row.decode(params.sparse_len as usize, table_cells), out);
        });
        self.table = Some(Table::new(&outputs, output_len));
        self.phases.push(("receiver: own outputs, table", start.elapsed()));
        self.committed =
            Some(Committed { commitment, check_seed, rows: Zeroizing::new(own_rows), values: Zeroizing::new(values) });
        Ok(())
    }

    /// The sender opened its check seed: prove the rows are code words.
    fn on_opening(&mut self, seed: &[u8]) -> Result<(), OprfError> {
        let start = Instant::now();
        let seed = fixed::<16>("opening", seed)?;
        let Some(committed) = self.committed.take() else { return Err(OprfError::BadConfig("nothing committed")) };
        if kernel::commitment(&seed) != committed.commitment {
            return Err(OprfError::CommitmentMismatch);
        }
        let chi = kernel::challenge(&seed, &committed.check_seed, committed.rows.len());
        self.outbox.push_back(ReceiverMessage::Check(check(&committed.rows, &committed.values, &chi)));
        self.phases.push(("receiver: check", start.elapsed()));
        self.state = State::ReceivingOutputs { received: 0 };
        if self.sender_set_size == 0 {
            self.finish();
        }
        Ok(())
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

/// The receiver's encoded table: its seed, each token's row, and the `h` values
/// (the table's cells, then random rows).
pub(super) type Encoded = ([u8; 16], Vec<okvs::Row>, Vec<u128>);

/// The receiver's table for `tokens` under `hash_key`, then random rows up to the
/// matrix height.
pub(super) fn table(params: Params, hash_key: &[u8; 16], tokens: &[crate::token::Token]) -> Result<Encoded, OprfError> {
    let hashed = kernel::hash_all(hash_key, tokens);
    let keys: Zeroizing<Vec<[u8; 16]>> = Zeroizing::new(hashed.iter().map(|h| h.key).collect());
    let targets: Zeroizing<Vec<u128>> = Zeroizing::new(hashed.iter().map(|h| h.value).collect());
    drop(hashed);
    let mut rng = StdRng::from_rng(OsRng).map_err(|e| OprfError::Rng(e.to_string()))?;
    for _ in 0..ENCODE_ATTEMPTS {
        let mut table_seed = [0u8; 16];
        rng.fill_bytes(&mut table_seed);
        let layout = Layout::new(params.sparse_len, table_seed)
            .map_err(|_| OprfError::BadConfig("table smaller than 3 cells"))?;
        let rows = layout.rows(&keys);
        if let Ok(table) = okvs::encode(&layout, &rows, &targets, &mut rng) {
            // The cells, then the random rows, in one allocation; the encoder's
            // copy is wiped.
            let table = Zeroizing::new(table);
            let mut values = Vec::with_capacity(params.height as usize);
            values.extend_from_slice(&table);
            values.extend((table.len()..params.height as usize).map(|_| {
                let mut v = [0u8; 16];
                rng.fill_bytes(&mut v);
                u128::from_le_bytes(v)
            }));
            return Ok((table_seed, rows, values));
        }
    }
    Err(OprfError::TableEncoding { attempts: ENCODE_ATTEMPTS })
}

/// The rows `T` (of the columns `PRG(k_i^0)`) and the correction columns
/// `U_i = PRG(k_i^0) ⊕ PRG(k_i^1) ⊕ C_i` for the table and random rows `values`
/// (`h` of them), `C_j` the code word of `values[j]`.
pub(super) fn matrix(params: Params, seeds: &[[Seed; 2]], values: &[u128]) -> (Vec<Row>, Vec<Vec<u64>>) {
    let code = Encoder::get();
    // The code words of the table (and below, the T columns) tell which tokens it
    // holds: wiped when dropped.
    let words: Zeroizing<Vec<Row>> = Zeroizing::new(values.par_iter().map(|&v| code.encode(v)).collect());
    let code_columns = kernel::rows_to_columns(&words, params.width as usize);
    drop(words);
    let blocks = params.height as usize / 64;
    let (own, correction): (Vec<Vec<u64>>, Vec<Vec<u64>>) = code_columns
        .into_par_iter()
        .zip(seeds.par_iter())
        .map(|(mut u, seeds)| {
            let own = kernel::prg_words(&seeds[0], blocks);
            for (u, t) in u.iter_mut().zip(&own) {
                *u ^= t;
            }
            kernel::xor_prg_words(&seeds[1], &mut u);
            (own, u)
        })
        .unzip();
    let own = Zeroizing::new(own);
    (kernel::columns_to_rows(&own), correction)
}

/// The `Check` message: the row sums of `T`, then the value sums of `P`, for the
/// challenge `chi`.
pub(super) fn check(rows: &[Row], values: &[u128], chi: &[u64]) -> Vec<u8> {
    let mut check = Vec::with_capacity(CHECK_BYTES);
    for row in &kernel::row_sums(rows, chi) {
        check.extend(kernel::to_bytes(row));
    }
    for v in &kernel::value_sums(values, chi) {
        check.extend(v.to_le_bytes());
    }
    check
}

/// A fixed-length field from the peer.
pub(super) fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], OprfError> {
    bytes.try_into().map_err(|_| OprfError::BadLength { what, len: bytes.len(), expected: N })
}

pub(super) fn add_phase(phases: &mut Vec<(&'static str, Duration)>, name: &'static str, d: Duration) {
    match phases.iter_mut().find(|(n, _)| *n == name) {
        Some((_, total)) => *total += d,
        None => phases.push((name, d)),
    }
}
