//! The only notion of time in the pipeline: nanoseconds passed in by the caller.
//!
//! The pipeline never reads a clock. The dataplane passes a monotonic clock reading; the
//! offline replay passes each packet's capture timestamp; tests pass a fake clock.

use core::ops::{Add, Sub};

/// A point in time, in nanoseconds since an epoch the caller chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

/// A span of time in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

/// Conntrack stores times as 32-bit ticks of 1/64 s (15.625 ms): small enough for a
/// 64-byte entry, fine enough that expiry is exact to well under a second, and wrapping
/// only every 2.1 years. Differences are taken with wrapping arithmetic, which is
/// correct while every timeout stays below half the wrap period (validated: <= 365 days).
pub const TICKS_PER_SEC: u64 = 64;
pub const NANOS_PER_TICK: u64 = 1_000_000_000 / TICKS_PER_SEC;
/// The longest timeout the tick arithmetic supports.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

impl Instant {
    pub const fn from_nanos(ns: u64) -> Self {
        Instant(ns)
    }
    // Conversions saturate: a time from outside (a capture, a config) that does not
    // fit becomes the far future, never a small wrapped value.
    pub const fn from_micros(us: u64) -> Self {
        Instant(us.saturating_mul(1_000))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1_000_000))
    }
    pub const fn from_secs(s: u64) -> Self {
        Instant(s.saturating_mul(1_000_000_000))
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    /// The wrapping 32-bit tick count of this instant.
    #[inline]
    pub const fn ticks(self) -> u32 {
        (self.0 / NANOS_PER_TICK) as u32
    }
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_nanos(ns: u64) -> Self {
        Duration(ns)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms.saturating_mul(1_000_000))
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(s.saturating_mul(1_000_000_000))
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    /// Whole ticks, rounded up so that a timeout is never shortened by the conversion;
    /// saturates at `u32::MAX` (timeouts are validated far below it).
    pub const fn ticks(self) -> u32 {
        let t = self.0.div_ceil(NANOS_PER_TICK);
        if t > u32::MAX as u64 { u32::MAX } else { t as u32 }
    }
    pub const fn from_ticks(t: u32) -> Self {
        Duration(t as u64 * NANOS_PER_TICK)
    }
}

impl From<core::time::Duration> for Duration {
    /// Saturates at `u64::MAX` nanoseconds (584 years).
    fn from(d: core::time::Duration) -> Self {
        Duration(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Duration> for core::time::Duration {
    fn from(d: Duration) -> Self {
        core::time::Duration::from_nanos(d.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(d.0))
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_trip_and_round_up() {
        assert_eq!(Instant::from_secs(1).ticks(), 64);
        assert_eq!(Duration::from_secs(120).ticks(), 120 * 64);
        assert_eq!(Duration::from_millis(1).ticks(), 1);
        assert_eq!(Duration::from_ticks(64), Duration::from_secs(1));
        assert!(MAX_TIMEOUT.ticks() < u32::MAX / 2);
        // Out-of-range values saturate instead of wrapping to something small.
        assert_eq!(Duration::from_secs(18_446_744_075), Duration::from_nanos(u64::MAX));
        assert_eq!(Duration::from_nanos(u64::MAX).ticks(), u32::MAX);
        assert_eq!(Instant::from_secs(u64::MAX) + Duration::from_secs(1), Instant::from_nanos(u64::MAX));
    }
}
