//! One in-process OPRF match of `N` × `N` distinct random 32-byte tokens (HMAC
//! outputs are uniformly random) with 50% overlap, printing wall time, per-phase
//! times of each role and the bytes in each direction.
//!
//! `cargo run --release --example oprf_match -- [N] [partner|owner|both]`
//! (default 1,000,000, `partner`). Wrap in `/usr/bin/time -v` for CPU seconds and
//! peak RSS.

use std::time::Instant;

use idmatch::normalize::Kind;
use idmatch::psi::oprf::{self, OprfConfig, OprfReceiver, OprfSender};
use idmatch::psi::{PreparedSet, Reveal};
use idmatch::token::Token;
use rand::RngCore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let reveal: Reveal = args.next().map(|a| a.parse()).transpose()?.unwrap_or(Reveal::Partner);
    let mut rng = rand::thread_rng();
    let mut random = |count: usize| -> Vec<Token> {
        (0..count)
            .map(|_| {
                let mut t = [0u8; 32];
                rng.fill_bytes(&mut t);
                Token(t)
            })
            .collect()
    };
    let (shared, only_r, only_s) = (random(n / 2), random(n - n / 2), random(n - n / 2));
    let entries = |a: &[Token], b: &[Token]| {
        a.iter().chain(b).enumerate().map(|(i, &t)| (t, i as u32, Kind::Email)).collect::<Vec<_>>()
    };
    let receiving = PreparedSet::new(entries(&shared, &only_r), 0);
    let sending = PreparedSet::new(entries(&shared, &only_s), 0);
    drop((only_r, only_s));

    let start = Instant::now();
    let mut receiver = OprfReceiver::new(OprfConfig::new(reveal), &receiving)?;
    let mut sender = OprfSender::new(OprfConfig::new(reveal), &sending)?;
    let traffic = oprf::run_in_memory(&mut receiver, &mut sender, |_| {})?;
    let wall = start.elapsed();
    let r = receiver.outcome().ok_or("receiver not done")?;
    let s = sender.outcome().ok_or("sender not done")?;
    assert_eq!(r.intersection, (n / 2) as u64, "exact intersection");
    println!("{n} x {n} distinct tokens, 50% overlap, reveal {reveal}: wall {:.3} s", wall.as_secs_f64());
    println!("parameters: {:?}", r.params);
    println!(
        "bytes receiver -> sender {} ({:.1} MB, {} messages); sender -> receiver {} ({:.1} MB, {} messages)",
        traffic.receiver_to_sender_bytes,
        traffic.receiver_to_sender_bytes as f64 / 1e6,
        traffic.receiver_messages,
        traffic.sender_to_receiver_bytes,
        traffic.sender_to_receiver_bytes as f64 / 1e6,
        traffic.sender_messages
    );
    for (name, d) in r.phases.iter().chain(&s.phases) {
        println!("  {name:<45} {:>8.3} s", d.as_secs_f64());
    }
    if let Some(m) = s.matched {
        assert_eq!(m.iter().filter(|&&b| b).count(), n / 2);
    }
    Ok(())
}
