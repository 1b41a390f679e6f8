//! How far long work has got (reading a file, sending a set), told to whoever shows
//! it.
//!
//! The library draws nothing. A long step asks the [`Progress`] its caller gave
//! (options carry an `Option<Arc<dyn Progress>>`; `None` reports nothing) for a
//! [`Meter`] and moves it; the command line and the Python package pass `Bars`
//! (feature `progress-bars`), which draws one bar per meter on stderr when stderr is
//! a terminal. Labels name files and phases, never a record or an identifier.

use std::sync::Arc;

#[cfg(feature = "progress-bars")]
mod bars;
#[cfg(feature = "progress-bars")]
pub use bars::Bars;

/// What a meter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of an input file.
    Bytes,
    /// Elements of a set (tokens, blinded points).
    Elements,
    /// Shards of an out-of-core match.
    Shards,
}

/// Where long work reports its progress: one [`Meter`] per task.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A new task named `label` of `total` units (0 when not yet known).
    fn start(&self, label: &str, total: u64, unit: Unit) -> Arc<dyn Meter>;
}

/// One task's progress.
pub trait Meter: Send + Sync {
    /// The task's size, when it becomes known.
    fn set_total(&self, total: u64);
    /// Units done so far.
    fn set_position(&self, done: u64);
    /// `units` more done.
    fn advance(&self, units: u64);
    /// The task is over (done or abandoned): stop showing it.
    fn finish(&self);
}

/// A meter from `progress`, or one that shows nothing without it.
pub(crate) fn start(progress: Option<&Arc<dyn Progress>>, label: &str, total: u64, unit: Unit) -> Arc<dyn Meter> {
    match progress {
        Some(progress) => progress.start(label, total, unit),
        None => Arc::new(Silent),
    }
}

/// The meter of work nobody watches.
struct Silent;

impl Meter for Silent {
    fn set_total(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
