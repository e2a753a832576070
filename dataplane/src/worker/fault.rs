//! Fault injection for the tests, in debug builds only (release builds have none):
//! `HOLDFAST_TEST_STALL_WORKER=W:MS` makes worker `W` spin forever `MS` ms after it
//! starts — publishing nothing, ignoring stop — the way a worker caught in an endless
//! loop on the packet path would. What the rest of the appliance must then do (raise a
//! fault event, starve systemd's watchdog, still exit on SIGTERM) is tested with it.
//! `HOLDFAST_TEST_PANIC_WORKER=W:MS` makes worker `W` panic `MS` ms after it starts, as
//! a bug on the packet path would (its thread ends; the fault must say so, not
//! "stuck"). `HOLDFAST_TEST_SLOW_WORKER=W:US` makes worker `W` sleep `US` µs after every poll
//! that found work: a worker that falls behind its RX rings (SYN shedding is tested
//! with it).

use std::time::{Duration, Instant};

/// `var`'s `K:N` when `K` is one `key` accepts: `N`. (The control plane's helper
/// threads are injected through it too: `holdfast_controlplane::helper`.)
pub fn injected(var: &str, key: impl Fn(&str) -> bool) -> Option<u64> {
    let v = std::env::var(var).ok()?;
    let (k, n) = v.split_once(':')?;
    let n: u64 = n.parse().ok()?;
    key(k).then_some(n)
}

/// `var`'s `W:N` when `W` is `worker`: `N`.
fn for_worker(var: &str, worker: usize) -> Option<u64> {
    injected(var, |w| w.parse::<usize>().ok() == Some(worker))
}

pub fn stall_at(worker: usize, start: Instant) -> Option<Instant> {
    for_worker("HOLDFAST_TEST_STALL_WORKER", worker).map(|ms| start + Duration::from_millis(ms))
}

#[inline]
pub fn maybe_stall(at: Option<Instant>) {
    if at.is_some_and(|t| Instant::now() >= t) {
        loop {
            std::hint::spin_loop();
        }
    }
}

pub const PANIC_WORKER: &str = "HOLDFAST_TEST_PANIC_WORKER";

pub fn panic_at(worker: usize, start: Instant) -> Option<Instant> {
    for_worker(PANIC_WORKER, worker).map(|ms| start + Duration::from_millis(ms))
}

/// Panics, naming the variable `var` that asked for it, once `at` has passed.
#[inline]
pub fn maybe_panic(at: Option<Instant>, var: &str) {
    if at.is_some_and(|t| Instant::now() >= t) {
        panic!("injected by {var}");
    }
}

pub fn slow(worker: usize) -> Option<Duration> {
    for_worker("HOLDFAST_TEST_SLOW_WORKER", worker).map(Duration::from_micros)
}
