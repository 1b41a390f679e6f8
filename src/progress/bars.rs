//! [`Bars`]: progress bars on stderr (indicatif), for the command line and the
//! Python package.

use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Meter, Progress, Unit};

/// Progress bars on stderr, one line per meter, drawn together (two files read at
/// once show two bars); nothing is drawn when stderr is not a terminal.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
}

impl Bars {
    /// Bars on stderr when `show`, else no progress at all (`None`).
    pub fn on_stderr(show: bool) -> Option<Arc<dyn Progress>> {
        show.then(|| Arc::new(Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) }) as _)
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, total: u64, unit: Unit) -> Arc<dyn Meter> {
        let template = match unit {
            Unit::Bytes => "{msg} {wide_bar} {bytes}/{total_bytes} ({elapsed}, eta {eta})",
            Unit::Elements | Unit::Shards => "{msg:32} {wide_bar} {pos}/{len} ({elapsed}, eta {eta})",
        };
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_message(label.to_owned());
        // Redrawn every second, so that a long wait with nothing counted yet (the
        // owner proving its people) still shows its time.
        bar.enable_steady_tick(std::time::Duration::from_secs(1));
        Arc::new(bar)
    }
}

impl Meter for ProgressBar {
    fn set_total(&self, total: u64) {
        self.set_length(total);
    }
    fn set_position(&self, done: u64) {
        ProgressBar::set_position(self, done);
    }
    fn advance(&self, units: u64) {
        self.inc(units);
    }
    fn finish(&self) {
        self.finish_and_clear();
    }
}
