//! The appliance's helper threads (the control endpoint, the sync endpoint, the deny
//! log), watched for an end nobody asked for. A helper that panics takes nothing else
//! down with it, which is the danger: the workers forward on while `/metrics` is gone,
//! or the standby no longer hears a flow, or denials are no longer logged — and
//! nothing said so. The control loop raises the `thread_ended` fault with the reason
//! (the panic's message) and stops feeding systemd's watchdog, so that a restart
//! (which keeps the tables: docs/snapshots.md) brings the helper back.

use std::thread::JoinHandle;

#[cfg(debug_assertions)]
use holdfast_dataplane::worker::fault;

/// A helper thread's handle and, once it has ended, why.
#[derive(Debug)]
pub struct Helper {
    handle: Option<JoinHandle<()>>,
    ended: Option<String>,
}

impl Helper {
    pub fn new(handle: JoinHandle<()>) -> Helper {
        Helper { handle: Some(handle), ended: None }
    }

    /// Why the thread ended, if it has (said from then on); never waits.
    pub fn ended(&mut self) -> Option<&str> {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(h) = self.handle.take()
        {
            self.ended = Some(match h.join() {
                Ok(()) => "it returned".to_string(),
                Err(p) => {
                    let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                    format!("it panicked: {}", msg.as_deref().unwrap_or("(no message)"))
                }
            });
        }
        self.ended.as_deref()
    }

    /// Waits for the thread (after it was asked to stop).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Fault injection for the tests, in debug builds only (release builds have none):
/// `HOLDFAST_TEST_PANIC_HELPER=NAME:MS` makes the helper thread `NAME` (`log`) panic
/// `MS` ms after it starts, the way a bug in it would. Read once, at the thread's start.
/// (The parser is the workers' own, `worker::fault`, which release builds do not have.)
#[cfg(debug_assertions)]
pub fn panic_at(name: &str) -> Option<std::time::Instant> {
    fault::injected(PANIC_HELPER, |n| n == name).map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms))
}

#[cfg(not(debug_assertions))]
pub fn panic_at(_name: &str) -> Option<std::time::Instant> {
    None
}

/// Panics once `at` ([`panic_at`]) has passed.
#[inline]
pub fn maybe_panic(at: Option<std::time::Instant>) {
    #[cfg(debug_assertions)]
    fault::maybe_panic(at, PANIC_HELPER);
    #[cfg(not(debug_assertions))]
    let _ = at;
}

#[cfg(debug_assertions)]
const PANIC_HELPER: &str = "HOLDFAST_TEST_PANIC_HELPER";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn until_ended(h: &mut Helper) -> String {
        let t = Instant::now();
        loop {
            if let Some(why) = h.ended() {
                return why.to_string();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "never seen to end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_helper_that_ends_says_why_and_keeps_saying_it() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut h = Helper::new(std::thread::spawn(move || {
            let _ = rx.recv();
            let n: Vec<u8> = Vec::new();
            let _ = n[usize::from(n.is_empty())]; // out of bounds: a panic
        }));
        assert_eq!(h.ended(), None, "running");
        tx.send(()).unwrap();
        let why = until_ended(&mut h);
        assert!(why.starts_with("it panicked: index out of bounds"), "{why}");
        assert_eq!(h.ended(), Some(why.as_str()), "said from then on");
        let mut h = Helper::new(std::thread::spawn(|| {}));
        assert_eq!(until_ended(&mut h), "it returned");
        h.join();
    }
}
