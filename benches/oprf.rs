//! The OPRF engine (`psi::oprf`), phase by phase at 2^16 × 2^16 distinct tokens, and
//! a whole in-memory match.
//!
//! `cargo bench --no-default-features --bench oprf`. Phases, each through the
//! engine's public state machines: both setups (the base OTs), the receiver's
//! table, code words, PRG expansion, correction and its own outputs, the sender's
//! `Q` (PRG, transpose), the check (both sides' sums) and the sender's outputs,
//! the receiver's comparison (lookups of the sender's outputs in its table).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use idmatch::normalize::Kind;
use idmatch::psi::oprf::{OprfConfig, OprfReceiver, OprfSender, Params, ReceiverMessage, SenderMessage, match_local};
use idmatch::psi::{PreparedSet, Reveal};
use idmatch::token::Token;
use sha2::{Digest, Sha256};

const N: u32 = 1 << 16;

fn set(range: std::ops::Range<u32>) -> PreparedSet {
    PreparedSet::new(range.map(|v| (Token(Sha256::digest(v.to_le_bytes()).into()), v, Kind::Email)).collect(), 0)
}

/// A receiver and a sender after both setups.
fn after_setups<'a>(r: &'a PreparedSet, s: &'a PreparedSet) -> (OprfReceiver<'a>, OprfSender<'a>) {
    let config = OprfConfig::new(Reveal::Partner);
    let mut receiver = OprfReceiver::new(config.clone(), r).unwrap();
    let mut sender = OprfSender::new(config, s).unwrap();
    sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
    receiver.receive(sender.poll_outgoing().unwrap()).unwrap();
    (receiver, sender)
}

/// A receiver and a sender after the correction and the sender's opening.
fn after_opening<'a>(r: &'a PreparedSet, s: &'a PreparedSet) -> (OprfReceiver<'a>, OprfSender<'a>) {
    let (mut receiver, mut sender) = after_setups(r, s);
    for m in drain(&mut receiver) {
        sender.receive(m).unwrap();
    }
    receiver.receive(sender.poll_outgoing().unwrap()).unwrap();
    (receiver, sender)
}

/// Everything the receiver has queued: after the setups, its seeds and correction.
fn drain(receiver: &mut OprfReceiver<'_>) -> Vec<ReceiverMessage> {
    std::iter::from_fn(|| receiver.poll_outgoing()).collect()
}

fn phases(c: &mut Criterion) {
    let (r, s) = (set(0..N), set(N / 2..N + N / 2));
    let params = Params::derive(u64::from(N), u64::from(N)).unwrap();
    let mut g = c.benchmark_group(format!("oprf_2^16 ({params:?})"));
    g.sample_size(10);

    // The sender's base OTs (one per column), its setup message.
    g.bench_function("sender_setup_base_ots", |b| {
        b.iter_batched(
            || {
                let config = OprfConfig::new(Reveal::Partner);
                let mut receiver = OprfReceiver::new(config.clone(), &r).unwrap();
                let setup = receiver.poll_outgoing().unwrap();
                (OprfSender::new(config, &s).unwrap(), setup)
            },
            |(mut sender, setup)| {
                sender.receive(setup).unwrap();
                black_box(sender.poll_outgoing())
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("receiver_table_correction_and_own_outputs", |b| {
        b.iter_batched(
            || {
                let config = OprfConfig::new(Reveal::Partner);
                let mut receiver = OprfReceiver::new(config.clone(), &r).unwrap();
                let mut sender = OprfSender::new(config, &s).unwrap();
                sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
                let setup = sender.poll_outgoing().unwrap();
                (receiver, sender, setup)
            },
            |(mut receiver, sender, setup)| {
                receiver.receive(setup).unwrap();
                (receiver, sender)
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("sender_q_matrix", |b| {
        b.iter_batched(
            || {
                let (mut receiver, sender) = after_setups(&r, &s);
                let messages = drain(&mut receiver);
                (receiver, sender, messages)
            },
            |(receiver, mut sender, messages)| {
                for m in messages {
                    sender.receive(m).unwrap();
                }
                (receiver, sender)
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("check_and_sender_outputs", |b| {
        b.iter_batched(
            || after_opening(&r, &s),
            |(mut receiver, mut sender)| {
                // The receiver's check sums, then the sender's check and outputs.
                sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
                (receiver, sender)
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("receiver_comparison", |b| {
        b.iter_batched(
            || {
                let (mut receiver, mut sender) = after_opening(&r, &s);
                sender.receive(receiver.poll_outgoing().unwrap()).unwrap();
                let outputs: Vec<SenderMessage> = std::iter::from_fn(|| sender.poll_outgoing()).collect();
                (receiver, sender, outputs)
            },
            |(mut receiver, sender, outputs)| {
                for m in outputs {
                    receiver.receive(m).unwrap();
                }
                (receiver, sender)
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("end_to_end_in_memory", |b| {
        b.iter(|| {
            let got = match_local(&s, &r, Reveal::Partner).unwrap();
            assert_eq!(got.intersection, u64::from(N / 2));
            got
        })
    });
    g.finish();
}

criterion_group!(benches, phases);
criterion_main!(benches);
