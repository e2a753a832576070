//! What the control plane asks of running workers, and what workers report besides
//! counters: reloads, flow listings, denials for the deny log.
//!
//! Every path here is non-blocking for the worker. Commands arrive on a bounded channel
//! the worker polls between bursts (`try_recv`); answers that need a walk over the
//! table are produced a slice at a time, so a worker never stops for a whole table;
//! denials go into a bounded ring, behind a token bucket, and what does not fit is
//! counted as suppressed.

use std::net::IpAddr;
use std::sync::Arc;

use holdfast_pipeline::engine::Explained;
use holdfast_pipeline::{Classifier, DropReason, EngineConfig, FlowInfo};

/// A worker's changes for the sync endpoint (`sync:`): flows created, changed and
/// removed, in a bounded ring the worker never waits on. What does not fit (in the
/// engine's journal or in the ring) is counted in `lost`, which the endpoint watches to
/// know when only a full sweep can tell the peer the truth.
pub struct ChangeFeed {
    pub ring: rtrb::Consumer<holdfast_pipeline::engine::Change>,
    pub lost: Arc<std::sync::atomic::AtomicU64>,
}

/// The worker's end of a [`ChangeFeed`].
pub struct ChangeSink {
    pub ring: rtrb::Producer<holdfast_pipeline::engine::Change>,
    pub lost: Arc<std::sync::atomic::AtomicU64>,
    /// Changes the ring had no room for (the engine counts its own).
    pub ring_full: u64,
}

/// Makes the two ends of a feed of `slots` changes.
pub fn change_feed(slots: usize) -> (ChangeSink, ChangeFeed) {
    let (p, c) = rtrb::RingBuffer::new(slots);
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    (ChangeSink { ring: p, lost: Arc::clone(&lost), ring_full: 0 }, ChangeFeed { ring: c, lost })
}

/// A request to one worker.
pub enum Command {
    /// Run a new configuration from the next burst on (`generation` counts reloads).
    /// With `recheck`, existing flows are re-judged by the new rules.
    Reconfigure { generation: u64, engine: EngineConfig, policy: Arc<Classifier>, recheck: bool, log_rate: u32 },
    /// List up to `limit` flows matching `filter`. The answer goes to `reply` a
    /// chunk at a time (one slice of the table per housekeeping round), then `Done`.
    /// The worker never waits on `reply`: while it is full the listing pauses; once
    /// the receiver is gone the listing is dropped. A bounded channel thus bounds the
    /// memory a listing holds, whatever the table's size.
    Flows { filter: FlowFilter, limit: usize, reply: crossbeam_channel::Sender<FlowsReply> },
    /// Take a snapshot of the table while it runs (`holdfast snapshot`): its flows as
    /// snapshot records, a slice of the table per housekeeping round, then its
    /// tombstones, then `Done` — paced by `reply` as a listing is.
    Export { reply: crossbeam_channel::Sender<ExportReply> },
    /// Put these synced flows into the table (a takeover), between bursts; the answer
    /// counts what became of them.
    Adopt { flows: Vec<holdfast_pipeline::engine::SyncedFlow>, reply: crossbeam_channel::Sender<holdfast_pipeline::engine::AdoptTally> },
    /// Close the sockets and open them again on these interface indexes (outside,
    /// inside): an interface was deleted and has come back. The table is kept.
    Rebind { ifindex: [u32; 2], reply: crossbeam_channel::Sender<Result<(), crate::error::WorkerError>> },
}

/// Whether each interface (outside, inside) can take frames now, as the control side
/// sees it; workers read it before transmitting. Wait-free.
#[derive(Debug, Default)]
pub struct LinkFlags {
    up: [std::sync::atomic::AtomicBool; 2],
    /// A takeover is committing synced flows: frames are dropped as `syncing`.
    syncing: std::sync::atomic::AtomicBool,
}

impl LinkFlags {
    pub fn all_up() -> LinkFlags {
        let f = LinkFlags::default();
        f.set(0, true);
        f.set(1, true);
        f
    }

    pub fn set(&self, side: usize, up: bool) {
        self.up[side].store(up, std::sync::atomic::Ordering::Relaxed);
    }

    #[inline]
    pub fn is_up(&self, side: usize) -> bool {
        self.up[side].load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_syncing(&self, on: bool) {
        self.syncing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    #[inline]
    pub fn syncing(&self) -> bool {
        self.syncing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One message of a flow listing.
#[derive(Debug)]
pub enum FlowsReply {
    /// Flows that matched; empty now and then on a long walk that matches little (a
    /// sign of life, so that a reader's timeout measures the worker).
    Chunk(Vec<FlowInfo>),
    Done,
}

/// One message of a table export: encoded snapshot records
/// (`holdfast_pipeline::snapshot`), at most `RECORDS_PER_BLOCK` per message.
#[derive(Debug)]
pub enum ExportReply {
    Flows {
        count: usize,
        bytes: Vec<u8>,
    },
    Tombstones {
        count: usize,
        bytes: Vec<u8>,
    },
    /// The end, with the table's tombstone sets (the snapshot header needs them).
    Done {
        tomb_sets: u32,
    },
}

/// Which flows a listing wants (`/flows?src=…&dst=…&port=…&state=…`). Empty fields
/// match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// The address that opened the flow.
    pub src: Option<IpAddr>,
    /// The address it was opened to.
    pub dst: Option<IpAddr>,
    /// Either port.
    pub port: Option<u16>,
    /// State name as listed (`ESTABLISHED`, `UNREPLIED`, …), any case.
    pub state: Option<String>,
    pub proto: Option<u8>,
}

impl FlowFilter {
    pub fn matches(&self, f: &FlowInfo) -> bool {
        let ((sa, sp), (da, dp)) = (f.key.src(f.orig), f.key.dst(f.orig));
        self.src.is_none_or(|a| a == sa)
            && self.dst.is_none_or(|a| a == da)
            && self.port.is_none_or(|p| p == sp || p == dp)
            && self.state.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(f.state))
            && self.proto.is_none_or(|p| p == f.key.proto)
    }
}

/// One denial, as a worker reports it. `at` is the pipeline's clock (ns since the
/// appliance started); the logger turns it into wall time.
#[derive(Debug, Clone, Copy)]
pub struct DenyEvent {
    pub at_ns: u64,
    pub worker: u16,
    /// 0 outside, 1 inside: the interface the frame came in on.
    pub side: u8,
    pub reason: DropReason,
    /// The frame's addresses and ports, and why its state went (`None` for frames that
    /// are not IP, or too malformed to say).
    pub what: Option<Explained>,
}

/// Denials a worker may log per second, with a burst of one second's worth.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    per_s: u64,
    /// Tokens in billionths of an event.
    tokens: u64,
    last_ns: u64,
}

const UNIT: u64 = 1_000_000_000;

impl Bucket {
    pub fn new(per_s: u32) -> Bucket {
        Bucket { per_s: u64::from(per_s), tokens: u64::from(per_s) * UNIT, last_ns: 0 }
    }

    pub fn set_rate(&mut self, per_s: u32) {
        self.per_s = u64::from(per_s);
        self.tokens = self.tokens.min(self.per_s * UNIT);
    }

    /// Takes one event's token at time `now_ns`, if there is one.
    #[inline]
    pub fn take(&mut self, now_ns: u64) -> bool {
        // At most a second of refill at once: no overflow, and a burst of one second.
        let dt = now_ns.saturating_sub(self.last_ns).min(UNIT);
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + dt * self.per_s).min(self.per_s * UNIT);
        if self.tokens >= UNIT {
            self.tokens -= UNIT;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_rate_with_a_one_second_burst() {
        let mut b = Bucket::new(100);
        // A flood at 1 µs intervals for 3 s: a burst of 100, then 100 a second.
        let mut allowed = 0;
        let mut t = 0u64;
        while t < 3 * UNIT {
            allowed += u64::from(b.take(t));
            t += 1000;
        }
        assert!((399..=401).contains(&allowed), "{allowed}");
        let mut off = Bucket::new(0);
        assert!(!off.take(5 * UNIT));
        // A long quiet period does not store more than a second's worth.
        let mut b = Bucket::new(10);
        let n = (0..100).filter(|i| b.take(100 * UNIT + i)).count();
        assert_eq!(n, 10);
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use holdfast_pipeline::conntrack::pressure::Admission;
    use holdfast_pipeline::{Duration, FlowKey, Side, Zone};

    #[test]
    fn filters_match_the_original_direction() {
        let c: IpAddr = "198.51.100.7".parse().unwrap();
        let s: IpAddr = "10.0.2.1".parse().unwrap();
        let v4 = |a: IpAddr| match a {
            IpAddr::V4(x) => u128::from(u32::from(x)),
            IpAddr::V6(_) => unreachable!(),
        };
        let (key, orig): (FlowKey, Side) = FlowKey::new(v4(c), 40000, v4(s), 80, 6, false, 0);
        let f = FlowInfo {
            key,
            orig,
            from: Zone::Outside,
            state: "ESTABLISHED",
            expires_in: Duration::from_secs(10),
            assured: true,
            class: Admission::Assured,
            packets: [1, 1],
            bytes: [60, 60],
            age: Some(Duration::from_secs(3)),
            counted: true,
        };
        assert_eq!((f.key.src(f.orig), f.key.dst(f.orig)), ((c, 40000), (s, 80)));
        assert!(FlowFilter::default().matches(&f));
        assert!(FlowFilter { src: Some(c), dst: Some(s), port: Some(80), state: Some("established".into()), proto: Some(6) }.matches(&f));
        assert!(FlowFilter { port: Some(40000), ..FlowFilter::default() }.matches(&f));
        assert!(!FlowFilter { src: Some(s), ..FlowFilter::default() }.matches(&f), "src is who opened the flow");
        assert!(!FlowFilter { state: Some("TIME_WAIT".into()), ..FlowFilter::default() }.matches(&f));
        assert!(!FlowFilter { proto: Some(17), ..FlowFilter::default() }.matches(&f));
    }
}
