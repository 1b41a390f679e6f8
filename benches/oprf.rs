//! The OPRF engine (`psi::oprf`), phase by phase at 2^16 × 2^16 distinct tokens, and
//! a whole in-memory match.
//!
//! `cargo bench --no-default-features --bench oprf`. Phases, each through the
//! engine's public state machines: both setups (the base OTs), the receiver's
//! correction matrix (D, PRG expansion, correction, own bits, then H2 of its own
//! rows and its table), the sender's OPRF evaluation (PRG, gather, H2), the
//! receiver's comparison (lookups of the sender's outputs in its table).

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

fn corrections(receiver: &mut OprfReceiver<'_>) -> Vec<ReceiverMessage> {
    std::iter::from_fn(|| receiver.poll_outgoing()).collect()
}

fn phases(c: &mut Criterion) {
    let (r, s) = (set(0..N), set(N / 2..N + N / 2));
    let params = Params::derive(u64::from(N), u64::from(N)).unwrap();
    let mut g = c.benchmark_group(format!("oprf_2^16 ({params:?})"));
    g.sample_size(10);

    // Both setups: the receiver's and the sender's base OTs (one per column).
    g.bench_function("setups_base_ots", |b| b.iter(|| black_box(after_setups(&r, &s))));

    g.bench_function("receiver_correction_matrix_and_own_outputs", |b| {
        b.iter_batched(
            || after_setups(&r, &s),
            |(mut receiver, sender)| {
                black_box(corrections(&mut receiver));
                (receiver, sender)
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("sender_oprf_evaluation", |b| {
        b.iter_batched(
            || {
                let (mut receiver, sender) = after_setups(&r, &s);
                let messages = corrections(&mut receiver);
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

    g.bench_function("receiver_comparison", |b| {
        b.iter_batched(
            || {
                let (mut receiver, mut sender) = after_setups(&r, &s);
                for m in corrections(&mut receiver) {
                    sender.receive(m).unwrap();
                }
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
