// TEMPORARY experiment file: delete before handing back.
use std::time::Instant;
use idmatch::key::Key;
use idmatch::optout::OptOutSource;
use idmatch::optout::store::{LookupStrategy, OptOutStore, StoreOptions};
use idmatch::token::Tokenizer;
use rayon::prelude::*;

#[test]
fn exp_check() {
    let db = std::env::var("EXP_DB").unwrap_or("/tmp/optbench/optouts.db".into());
    let t = Tokenizer::new(&Key::from_bytes([3; 32]));
    let q1: Vec<_> = (0..1_000_000u64).into_par_iter().map(|i| t.token("id", &i.to_string())).collect();
    let q2: Vec<_> = (0..2_000_000u64).into_par_iter().map(|i| t.token("email", &i.to_string())).collect();
    let strategies = match std::env::var("EXP_STRAT").as_deref() { Ok("seek") => vec![LookupStrategy::Seek], Ok("scan") => vec![LookupStrategy::Scan], _ => vec![LookupStrategy::Seek, LookupStrategy::Scan, LookupStrategy::Seek, LookupStrategy::Scan] };
    for lookup in strategies {
        let mut o = StoreOptions::existing();
        o.tuning.lookup = lookup;
        if let Ok(m) = std::env::var("EXP_MMAP") { o.tuning.mmap_mib = m.parse().unwrap(); o.tuning.reader_cache_mib = 600; }
        let store = OptOutStore::open(std::path::Path::new(&db), &Key::from_bytes([0x5a; 32]), &o).unwrap();
        let t0 = Instant::now();
        let a = store.contains(&q1).unwrap();
        let t1 = t0.elapsed().as_secs_f64();
        let b = store.contains(&q2).unwrap();
        let t2 = t0.elapsed().as_secs_f64() - t1;
        println!("{lookup:?}: 1M {t1:.3}s, 2M {t2:.3}s, found {}", a.iter().chain(&b).filter(|&&x| x).count());
    }
}
