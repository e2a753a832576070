//! What workers publish for the control thread: every few milliseconds a worker copies
//! its counters into a snapshot and publishes it through a triple buffer (one per
//! worker). Both sides are wait-free: the worker never waits for, or locks against, a
//! reader; the reader always gets the latest whole snapshot, never a mix of two.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use holdfast_pipeline::Counters;

use crate::xsk::XdpStats;

/// Why a frame that the pipeline passed could not be forwarded (or a frame was lost
/// on the way to the pipeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ForwardDrop {
    /// The other side's TX ring had no room.
    TxRingFull = 0,
    /// No free UMEM frame to copy a handed-off frame into.
    NoFreeFrame,
    /// The ring to the owning worker was full.
    HandoffFull,
    /// A frame too large for a handoff slot.
    HandoffTooLarge,
    /// The pipeline passed it, but the interface it must leave on is down or gone.
    LinkDown,
    /// A takeover is committing the peer's flows: nothing is judged against a table
    /// that does not hold them yet.
    Syncing,
}

impl ForwardDrop {
    pub const COUNT: usize = 6;
    pub const ALL: [ForwardDrop; 6] = [
        ForwardDrop::TxRingFull,
        ForwardDrop::NoFreeFrame,
        ForwardDrop::HandoffFull,
        ForwardDrop::HandoffTooLarge,
        ForwardDrop::LinkDown,
        ForwardDrop::Syncing,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ForwardDrop::TxRingFull => "tx_ring_full",
            ForwardDrop::NoFreeFrame => "no_free_frame",
            ForwardDrop::HandoffFull => "handoff_full",
            ForwardDrop::HandoffTooLarge => "handoff_too_large",
            ForwardDrop::LinkDown => "link_down",
            ForwardDrop::Syncing => "syncing",
        }
    }
}

/// A worker's view at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub worker: usize,
    pub core: Option<usize>,
    pub queue: u32,
    pub counters: Counters,
    /// Frames received / transmitted per side (0 outside, 1 inside).
    pub rx: [u64; 2],
    pub tx: [u64; 2],
    pub rx_bytes: [u64; 2],
    pub tx_bytes: [u64; 2],
    /// Of `tx`: frames queued for transmission that never left, because the socket
    /// was closed when its interface went away.
    pub tx_lost: [u64; 2],
    /// Times this worker closed and reopened its sockets (an interface came back).
    pub rebinds: u64,
    pub forward_drops: [u64; ForwardDrop::COUNT],
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub xdp: [XdpStats; 2],
    /// Whether the XDP program sheds SYNs on this worker's queue now, per side, and
    /// how many times the flag went up (`xdp[side].syn_shed` counts the SYNs).
    pub shedding: [bool; 2],
    pub shed_episodes: [u64; 2],
    /// bpf(2) calls on the shed map that failed (a flag left as it was, a count unread).
    pub shed_flag_errors: u64,
    pub table_len: usize,
    pub table_capacity: usize,
    pub classes: [u32; holdfast_pipeline::conntrack::pressure::Admission::COUNT],
    /// Polls that found work (or frames waiting for TX room) / all polls.
    pub busy_polls: u64,
    /// Polls that found frames waiting but no room on the other side's TX ring.
    pub tx_blocked_polls: u64,
    pub polls: u64,
    /// Time spent on polls that found work, ns.
    pub busy_ns: u64,
    /// Flows in this worker's table that another worker owns (must stay 0).
    pub foreign_flows: u64,
    /// The configuration generation this worker runs (0 = the one it started with).
    pub generation: u64,
    /// A reload's pass over the table (timers, recheck) is still under way.
    pub maintaining: bool,
    /// The adaptive-timeout factor for non-assured entries (1.0 = none).
    pub adaptive_scale: f64,
    /// Frames waiting in this worker's incoming handoff rings.
    pub handoff_depth: u64,
    /// Per-flow packet and byte counters are kept (`conntrack.accounting`).
    pub accounting: bool,
    /// What this worker's fragment router did (held, released, expired, overflow).
    pub fragments: holdfast_pipeline::steer::RouterStats,
    /// Denials queued for the deny log / not logged (rate limit or full queue).
    pub log_events: u64,
    pub log_suppressed: u64,
    /// Time spent publishing snapshots (counters, XDP statistics), ns.
    pub publish_ns: u64,
    /// The longest time between the starts of two polls, ns, and how many were longer
    /// than 10 ms: the worker away from its rings (a poll's own work, a sleep of 1 ms
    /// at most when idle, or the thread kept off its core).
    pub max_poll_gap_ns: u64,
    pub slow_polls: u64,
    /// The longest single poll (receive, judge, transmit), and the longest poll with
    /// housekeeping after it (timers, commands, table walks, publishing), ns: what of a
    /// gap was the worker's own work.
    pub max_poll_ns: u64,
    pub max_housekeeping_ns: u64,
    pub publications: u64,
    /// Who held the most entries in the last full sweep of the table.
    pub holders: holdfast_pipeline::holders::Holders,
}

impl Snapshot {
    /// Adds another worker's counts: the totals over workers (identity fields stay).
    pub fn merge(&mut self, o: &Snapshot) {
        self.counters.merge(&o.counters);
        for k in 0..2 {
            self.rx[k] += o.rx[k];
            self.tx[k] += o.tx[k];
            self.rx_bytes[k] += o.rx_bytes[k];
            self.tx_bytes[k] += o.tx_bytes[k];
            self.tx_lost[k] += o.tx_lost[k];
            self.xdp[k].merge(&o.xdp[k]);
            self.shedding[k] |= o.shedding[k];
            self.shed_episodes[k] += o.shed_episodes[k];
        }
        self.shed_flag_errors += o.shed_flag_errors;
        self.max_poll_gap_ns = self.max_poll_gap_ns.max(o.max_poll_gap_ns);
        self.slow_polls += o.slow_polls;
        self.max_poll_ns = self.max_poll_ns.max(o.max_poll_ns);
        self.max_housekeeping_ns = self.max_housekeeping_ns.max(o.max_housekeeping_ns);
        for (a, b) in self.forward_drops.iter_mut().zip(o.forward_drops) {
            *a += b;
        }
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a += b;
        }
        self.handoff_out += o.handoff_out;
        self.handoff_in += o.handoff_in;
        self.rebinds += o.rebinds;
        self.table_len += o.table_len;
        self.table_capacity += o.table_capacity;
        self.busy_polls += o.busy_polls;
        self.tx_blocked_polls += o.tx_blocked_polls;
        self.polls += o.polls;
        self.busy_ns += o.busy_ns;
        self.foreign_flows += o.foreign_flows;
        self.handoff_depth += o.handoff_depth;
        self.fragments.merge(&o.fragments);
        self.accounting |= o.accounting;
        self.log_events += o.log_events;
        self.log_suppressed += o.log_suppressed;
        self.publish_ns += o.publish_ns;
        self.publications += o.publications;
        self.maintaining |= o.maintaining;
        self.adaptive_scale = if self.adaptive_scale == 0.0 { o.adaptive_scale } else { self.adaptive_scale.min(o.adaptive_scale) };
    }

    /// The totals over workers; `generation` is the one every worker runs.
    pub fn total(snaps: &[Snapshot]) -> Snapshot {
        let mut t = Snapshot::default();
        for s in snaps {
            t.merge(s);
        }
        t.generation = snaps.iter().map(|s| s.generation).min().unwrap_or(0);
        t
    }

    /// Frames this worker took in (from its queues and from other workers) that are
    /// accounted for: judged, handed to their owner, or dropped on the way to it.
    /// Between polls every frame is one of those, so a consistent snapshot has
    /// `frames_in() == frames_accounted()`.
    pub fn frames_in(&self) -> u64 {
        self.rx[0] + self.rx[1] + self.handoff_in
    }

    pub fn frames_accounted(&self) -> u64 {
        self.counters.packets
            + self.handoff_out
            + self.forward_drops[ForwardDrop::HandoffFull as usize]
            + self.forward_drops[ForwardDrop::HandoffTooLarge as usize]
    }

    /// Frames the pipeline passed that are accounted for: transmitted, or dropped for
    /// a full TX ring. A consistent snapshot has `counters.passed_total() ==
    /// frames_out()`.
    pub fn frames_out(&self) -> u64 {
        self.tx[0] + self.tx[1] + self.forward_drops[ForwardDrop::TxRingFull as usize] + self.forward_drops[ForwardDrop::LinkDown as usize]
    }
}

/// The worker's end of its publication channel.
pub struct Publisher {
    input: triple_buffer::Input<Snapshot>,
    heartbeat: Arc<AtomicU64>,
}

/// The control thread's end: the latest snapshot of one worker.
pub struct Reader {
    output: triple_buffer::Output<Snapshot>,
    heartbeat: Arc<AtomicU64>,
}

/// A publication channel for one worker.
pub fn channel() -> (Publisher, Reader) {
    let (input, output) = triple_buffer::triple_buffer(&Snapshot::default());
    let heartbeat = Arc::new(AtomicU64::new(0));
    (Publisher { input, heartbeat: Arc::clone(&heartbeat) }, Reader { output, heartbeat })
}

impl Publisher {
    /// Publishes a copy of `s` and counts a heartbeat. Never waits.
    pub fn publish(&mut self, s: &Snapshot) {
        self.input.write(*s);
        self.heartbeat.fetch_add(1, Relaxed);
    }
}

impl Reader {
    /// The latest published snapshot (a consistent copy). Never makes the worker wait.
    pub fn read(&mut self) -> Snapshot {
        *self.output.read()
    }

    /// Publications so far: advances while the worker's loop runs.
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot at step `i` whose counters satisfy the invariants a worker keeps.
    fn step(i: u64) -> Snapshot {
        let mut s = Snapshot { rx: [i, 2 * i], handoff_in: i, handoff_out: i, tx: [i, i], ..Snapshot::default() };
        s.forward_drops[ForwardDrop::HandoffFull as usize] = i;
        s.counters.packets = 2 * i;
        s.counters.passed[0] = 2 * i;
        s
    }

    #[test]
    fn a_reader_never_sees_a_torn_snapshot() {
        let (mut p, mut r) = channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop2.load(Relaxed) {
                i += 1;
                p.publish(&step(i));
            }
            i
        });
        let (mut last, mut reads) = (0u64, 0u64);
        while reads < 2_000_000 {
            let s = r.read();
            assert_eq!(s.frames_in(), s.frames_accounted(), "torn: {s:?}");
            assert_eq!(s.counters.passed_total(), s.frames_out(), "torn: {s:?}");
            assert_eq!(s.counters.packets, s.counters.passed_total() + s.counters.dropped_total());
            assert!(s.rx[0] >= last, "went backwards");
            last = s.rx[0];
            reads += 1;
        }
        stop.store(true, Relaxed);
        let published = writer.join().unwrap();
        assert!(last > 0 && last <= published);
        assert_eq!(r.heartbeat(), published);
    }
}
