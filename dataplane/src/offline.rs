//! Offline workers: frames from a capture, dispatched to the worker that owns their
//! flow, processed in order per flow with each frame's capture time as `now`.
//!
//! One dispatcher (the caller's thread) reads frames in capture order and appends each
//! to its owner's batch; a bounded channel per worker carries the batches, so order is
//! preserved per worker and hence per flow.

use std::time::Instant as WallClock;

use crossbeam_channel::bounded;
use holdfast_pipeline::engine::{DEFAULT_EXPIRE_BUDGET, FlowInfo, Packet};
use holdfast_pipeline::{Counters, Engine, Instant, Verdict, Zone};

/// Frames per batch sent to a worker.
const BATCH: usize = 256;
/// Batches queued per worker before the dispatcher waits.
const QUEUE: usize = 64;

/// A frame handed to a worker: its index in the capture, the time it is judged at
/// (its capture time, or later for a fragment held for its first), and its zone.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    pub index: u32,
    pub now: Instant,
    pub zone: Zone,
}

/// The dispatcher's end: hands frames to workers in batches, per worker in the order
/// given, and times itself.
pub struct Dispatcher {
    senders: Vec<crossbeam_channel::Sender<Vec<Item>>>,
    pending: Vec<Vec<Item>>,
    blocked_s: f64,
}

impl Dispatcher {
    /// Hands `item` to worker `worker` (its batch goes when full).
    pub fn send(&mut self, worker: usize, item: Item) {
        self.pending[worker].push(item);
        if self.pending[worker].len() == BATCH {
            let full = std::mem::replace(&mut self.pending[worker], Vec::with_capacity(BATCH));
            self.hand(worker, full);
        }
    }

    fn hand(&mut self, w: usize, batch: Vec<Item>) {
        // A worker only stops receiving by panicking, which `join` reports.
        match self.senders[w].try_send(batch) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(batch)) => {
                let t = WallClock::now();
                let _ = self.senders[w].send(batch);
                self.blocked_s += t.elapsed().as_secs_f64();
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {}
        }
    }

    fn finish(&mut self) {
        for w in 0..self.pending.len() {
            let p = std::mem::take(&mut self.pending[w]);
            if !p.is_empty() {
                self.hand(w, p);
            }
        }
        self.senders.clear();
    }
}

/// What one worker did.
#[derive(Debug)]
pub struct WorkerOutput {
    pub counters: Counters,
    pub flows_peak: usize,
    /// Flows left at the end of the capture.
    pub flows: Vec<FlowInfo>,
    /// `(frame index, verdict)`, when asked for.
    pub verdicts: Vec<(u32, Verdict)>,
    /// Wall time spent processing (not waiting for batches).
    pub busy_s: f64,
    pub table_bytes_per_entry: usize,
    /// Live entries per admission class at the end.
    pub class_counts: [u32; holdfast_pipeline::conntrack::pressure::Admission::COUNT],
    /// Lowest adaptive-timeout factor seen after a batch (1.0 = never under pressure).
    pub min_adaptive_scale: f64,
}

/// What the dispatcher (the caller's thread) spent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dispatch {
    /// Wall time of the whole dispatch (steering included: it runs while the workers
    /// do).
    pub total_s: f64,
    /// Of it, time blocked because a worker's queue was full (the workers were the
    /// bottleneck then, not the dispatcher).
    pub blocked_s: f64,
}

/// Runs the frames `dispatch` hands out (through the [`Dispatcher`] it is given, on
/// the caller's thread, while the workers run) through `engines` (one thread each);
/// `frames[i]` is frame `i`'s bytes. `end` is the time at which the final table is
/// listed (the capture's last timestamp).
pub fn run(
    frames: &[&[u8]],
    engines: Vec<Engine>,
    end: Instant,
    keep_verdicts: bool,
    list_flows: bool,
    dispatch: impl FnOnce(&mut Dispatcher),
) -> (Vec<WorkerOutput>, Dispatch) {
    let n = engines.len();
    std::thread::scope(|s| {
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for mut engine in engines {
            let (tx, rx) = bounded::<Vec<Item>>(QUEUE);
            senders.push(tx);
            handles.push(s.spawn(move || {
                let mut verdicts = Vec::new();
                let mut pkts: Vec<Packet> = Vec::with_capacity(BATCH);
                let mut out = vec![Verdict::Pass(holdfast_pipeline::PassKind::New); BATCH];
                let mut busy = 0.0;
                let mut min_scale: f64 = 1.0;
                for batch in rx {
                    let t = WallClock::now();
                    pkts.clear();
                    pkts.extend(batch.iter().map(|f| Packet { data: frames[f.index as usize], zone: f.zone, now: f.now }));
                    engine.process_batch(&pkts, &mut out[..pkts.len()]);
                    if let Some(last) = pkts.last() {
                        engine.expire(last.now, DEFAULT_EXPIRE_BUDGET);
                    }
                    min_scale = min_scale.min(engine.adaptive_scale());
                    if keep_verdicts {
                        verdicts.extend(batch.iter().zip(&out).map(|(f, &v)| (f.index, v)));
                    }
                    busy += t.elapsed().as_secs_f64();
                }
                while engine.expire(end, usize::MAX) > 0 {}
                WorkerOutput {
                    counters: engine.counters(),
                    flows_peak: engine.table().peak(),
                    flows: if list_flows { engine.flows(end).collect() } else { Vec::new() },
                    verdicts,
                    busy_s: busy,
                    table_bytes_per_entry: engine.bytes_per_entry(),
                    class_counts: engine.class_counts(),
                    min_adaptive_scale: min_scale,
                }
            }));
        }
        let t0 = WallClock::now();
        let mut d = Dispatcher { senders, pending: (0..n).map(|_| Vec::with_capacity(BATCH)).collect(), blocked_s: 0.0 };
        dispatch(&mut d);
        d.finish();
        let dispatch = Dispatch { total_s: t0.elapsed().as_secs_f64(), blocked_s: d.blocked_s };
        (handles.into_iter().map(|h| h.join().expect("replay worker panicked")).collect(), dispatch)
    })
}
