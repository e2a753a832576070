//! What workers publish for the control thread. Workers update plain atomics (relaxed)
//! and, every few milliseconds, a full snapshot behind a mutex they only `try_lock`: a
//! worker never waits for a reader (a busy lock skips one publication).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

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
}

impl ForwardDrop {
    pub const COUNT: usize = 4;
    pub const ALL: [ForwardDrop; 4] = [ForwardDrop::TxRingFull, ForwardDrop::NoFreeFrame, ForwardDrop::HandoffFull, ForwardDrop::HandoffTooLarge];
    pub fn name(self) -> &'static str {
        match self {
            ForwardDrop::TxRingFull => "tx_ring_full",
            ForwardDrop::NoFreeFrame => "no_free_frame",
            ForwardDrop::HandoffFull => "handoff_full",
            ForwardDrop::HandoffTooLarge => "handoff_too_large",
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
    pub forward_drops: [u64; ForwardDrop::COUNT],
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub xdp: [XdpStats; 2],
    pub table_len: usize,
    pub table_capacity: usize,
    pub classes: [u32; 4],
    /// Polls that found work / all polls.
    pub busy_polls: u64,
    pub polls: u64,
    /// Time spent on polls that found work, ns.
    pub busy_ns: u64,
    /// Flows in this worker's table that another worker owns (must stay 0).
    pub foreign_flows: u64,
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
            self.xdp[k].merge(&o.xdp[k]);
        }
        for (a, b) in self.forward_drops.iter_mut().zip(o.forward_drops) {
            *a += b;
        }
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a += b;
        }
        self.handoff_out += o.handoff_out;
        self.handoff_in += o.handoff_in;
        self.table_len += o.table_len;
        self.table_capacity += o.table_capacity;
        self.busy_polls += o.busy_polls;
        self.polls += o.polls;
        self.busy_ns += o.busy_ns;
        self.foreign_flows += o.foreign_flows;
    }
}

/// Shared between a worker and the control thread.
#[derive(Debug, Default)]
pub struct Shared {
    pub heartbeat: AtomicU64,
    snapshot: Mutex<Snapshot>,
}

impl Shared {
    pub fn publish(&self, s: &Snapshot) {
        self.heartbeat.fetch_add(1, Relaxed);
        if let Ok(mut g) = self.snapshot.try_lock() {
            *g = *s;
        }
    }

    /// The latest published snapshot.
    pub fn read(&self) -> Snapshot {
        match self.snapshot.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}
