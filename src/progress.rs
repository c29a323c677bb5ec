//! Progress on stderr (indicatif) for runs that take more than a moment: drawn only when
//! stderr is a terminal and `--quiet` was not given, so pipes, logs and tests stay clean.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress output at all.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn hidden() -> bool {
    QUIET.load(Ordering::Relaxed) || !std::io::stderr().is_terminal()
}

/// A byte-counting bar of `total` bytes (hidden when progress is off).
pub fn bytes(total: u64, message: &'static str) -> ProgressBar {
    if hidden() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{msg:>10} [{bar:30}] {binary_bytes}/{binary_total_bytes} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let pb = ProgressBar::new(total).with_style(style).with_message(message);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A spinner for a phase of unknown length (hidden when progress is off).
pub fn spinner(message: &'static str) -> ProgressBar {
    if hidden() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner().with_message(message);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}
