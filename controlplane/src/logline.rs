//! The running appliance's log lines, on standard error (the journal under systemd).
//!
//! `eprintln!` panics when standard error cannot be written, and the appliance would
//! die of its own log line: the reader of a pipe gone (`holdfast run 2>&1 | tee …`
//! stopped, or the lab's `--keep` process exited), a terminal hung up. A firewall must
//! not stop forwarding, nor lose its tables (a stop writes the snapshot; a panic does
//! not), because nobody reads its log. [`logln!`](crate::logln) writes a line whole in
//! one write or counts it as lost; the control loop raises the `stderr_write` fault
//! (in `/status` and `/metrics`, where an operator still sees it) while writes fail.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

static LOST: AtomicU64 = AtomicU64::new(0);
static FAILING: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard error; a failed write is counted, never fatal.
pub fn line(args: std::fmt::Arguments) {
    let mut s = std::fmt::format(args);
    s.push('\n');
    let ok = std::io::stderr().lock().write_all(s.as_bytes()).is_ok();
    if !ok {
        LOST.fetch_add(1, Relaxed);
    }
    FAILING.store(!ok, Relaxed);
}

/// Lines that could not be written, since the process started.
pub fn lost() -> u64 {
    LOST.load(Relaxed)
}

/// Whether the last line could not be written.
pub fn failing() -> bool {
    FAILING.load(Relaxed)
}

/// `eprintln!` that never panics: see the module's text.
#[macro_export]
macro_rules! logln {
    ($($t:tt)*) => {
        $crate::logline::line(format_args!($($t)*))
    };
}
