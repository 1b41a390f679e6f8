//! The owner's proving work in measurement (issue 20, item 6): when the owner
//! learns figures with noise it encrypts every outcome person's value and proves it
//! within the clip, about 4 ms of one core per person at a clip of 1000 and 13 ms
//! at 2^32 (README, "Campaign measurement"): an hour of CPU or more per million
//! people, which one partner with a valid budget can start.
//!
//! Two bounds keep that in the operator's hands:
//!
//! - **a thread pool of its own** (`proving_threads`, default: every core): the
//!   cores proving may take, apart from the global pool on which matches blind.
//!   Measured (README, "Limits"): a 100k × 100k ECDH match over TLS took 1.6 times
//!   its time alone while the owner proved on both cores, 1.4 times with
//!   `proving_threads = 1` (the proofs then took 1.6 times as long);
//! - **at most `max_concurrent_proofs` measurements prove at once** (default 1): a
//!   further one is refused with RESOURCE_EXHAUSTED before anything is charged,
//!   read or encrypted, rather than queued behind the first with a partner waiting
//!   on a proving allowance computed for its own measurement alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A refusal: as many measurements as allowed are proving now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the owner is proving the values of {0} other measurement(s) now (max_concurrent_proofs = {0}); try again later"
)]
pub(crate) struct ProvingBusy(pub usize);

/// The proving pool and the count of measurements using it.
pub(crate) struct Proving {
    pool: rayon::ThreadPool,
    running: Arc<AtomicUsize>,
}

/// One measurement's right to prove, given back when dropped.
#[derive(Debug)]
pub(crate) struct ProvingSlot {
    running: Arc<AtomicUsize>,
}

impl Proving {
    /// A pool of `threads` threads (`idmatch-prove-N`).
    pub fn new(threads: usize) -> Result<Proving, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("idmatch-prove-{i}"))
            .build()?;
        Ok(Proving { pool, running: Arc::new(AtomicUsize::new(0)) })
    }

    /// A slot, if fewer than `max` measurements prove now.
    pub fn acquire(&self, max: usize) -> Result<ProvingSlot, ProvingBusy> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| ProvingBusy(max))?;
        Ok(ProvingSlot { running: self.running.clone() })
    }

    /// Runs `work` on the proving pool (its parallel iterators use the pool's
    /// threads, not the global pool's); the slot shows the caller holds one.
    pub fn run<R: Send>(&self, _slot: &ProvingSlot, work: impl FnOnce() -> R + Send) -> R {
        self.pool.install(work)
    }
}

impl Drop for ProvingSlot {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::time::Duration;

    #[test]
    fn slots_are_counted_and_given_back() {
        let proving = Proving::new(1).unwrap();
        let first = proving.acquire(1).unwrap();
        assert_eq!(proving.acquire(1).unwrap_err(), ProvingBusy(1));
        let second = proving.acquire(2).unwrap();
        drop(first);
        let third = proving.acquire(2).unwrap();
        assert_eq!(proving.acquire(2).unwrap_err(), ProvingBusy(2));
        drop((second, third));
        assert!(proving.acquire(1).is_ok());
    }

    /// The work's parallel iterators run on the proving pool's threads only, and a
    /// job on the global pool finishes while the proving pool is fully occupied.
    #[test]
    fn proving_runs_on_its_own_pool_and_leaves_the_global_one_free() {
        let proving = Proving::new(2).unwrap();
        let slot = proving.acquire(1).unwrap();
        let names: Vec<String> = proving.run(&slot, || {
            (0..64).into_par_iter().map(|_| std::thread::current().name().unwrap_or_default().to_owned()).collect()
        });
        assert!(names.iter().all(|n| n.starts_with("idmatch-prove-")), "{names:?}");

        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let (done, finished) = std::sync::mpsc::channel::<u64>();
        std::thread::scope(|scope| {
            let busy = scope.spawn(|| {
                proving.run(&slot, || {
                    (0..2).into_par_iter().for_each(|_| {
                        // Both threads wait until the global pool has done its job.
                        let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(60));
                    })
                })
            });
            scope.spawn(move || done.send((0..1000u64).into_par_iter().sum()));
            // Were the work on the global pool, its job would wait the full minute.
            let sum = finished.recv_timeout(Duration::from_secs(20));
            release.send(()).unwrap();
            release.send(()).unwrap();
            busy.join().unwrap();
            assert_eq!(sum, Ok(499_500));
        });
    }
}
