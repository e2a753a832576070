//! What a worker does between bursts, every `HOUSEKEEPING`: take commands (a reload,
//! a listing, a re-bind), serve one slice of a table walk, publish its snapshot.

use std::collections::VecDeque;
use std::time::Instant as WallClock;

use holdfast_pipeline::Instant;

use super::Worker;
use crate::control::{Command, ExportReply, FlowFilter, FlowsReply};
use crate::error::WorkerError;
use crate::stats::Publisher;
use crate::xsk::Ports;
use holdfast_pipeline::holders::{Holders, SpaceSaving};
use holdfast_pipeline::snapshot::chunks;

/// Table slots a listing or a reload's pass examines per housekeeping round (every
/// `HOUSEKEEPING`): a 1M-entry table in about 130 ms, at most some tens of µs a round.
const SCAN_SLOTS: u32 = 16_384;

/// Housekeeping rounds one sweep for the top holders is spread over: a round every
/// `HOUSEKEEPING` (2 ms), so a pass takes about two seconds whatever the table's size
/// (the report is read by people; the sweep is not free: ~56 ns a live entry, and a
/// full 1M table at the old 8,192 slots a round took ~1.5 ms of every round).
const HOLDER_ROUNDS: u32 = 1000;

/// Table slots one round of the holders' sweep examines: the table over
/// [`HOLDER_ROUNDS`], at least 256 (a small table in fewer rounds), at most 8,192.
fn holder_slots(cap: u32) -> u32 {
    (cap / HOLDER_ROUNDS).clamp(256, 8192)
}

/// The sweep that names who holds the table (`holders`): a slice per round, counted
/// into bounded Space-Saving counters; published when it wraps.
#[derive(Default)]
pub(super) struct HolderSweep {
    cursor: u32,
    sources: SpaceSaving,
    ports: SpaceSaving,
    counted: u32,
}

/// A walk over the table, served a slice per round.
pub(super) enum Job {
    /// A `/flows` listing, streamed in chunks.
    Flows {
        filter: FlowFilter,
        /// Flows still wanted.
        left: usize,
        /// Replies produced but not yet taken (the channel was full).
        pending: VecDeque<FlowsReply>,
        reply: crossbeam_channel::Sender<FlowsReply>,
    },
    /// A reload's pass: maintain (and, with `recheck`, re-judge) every entry.
    Maintain { recheck: bool },
    /// A snapshot of the running table, streamed in chunks of encoded records.
    Export { pending: VecDeque<ExportReply>, reply: crossbeam_channel::Sender<ExportReply> },
}

/// A walk and the next slot it examines.
pub(super) struct Scan {
    job: Job,
    cursor: u32,
}

/// The next [`SCAN_SLOTS`] slots of a table of `cap` from `cursor`, which moves past them.
fn next_slice(cursor: &mut u32, cap: u32) -> std::ops::Range<u32> {
    let range = *cursor..cursor.saturating_add(SCAN_SLOTS).min(cap);
    *cursor = range.end;
    range
}

/// What [`hand_over`] managed.
enum Handed {
    /// Nothing waits any more.
    All,
    /// The channel is full; the rest waits for the next round.
    Blocked,
    /// The reader went away.
    Gone,
}

/// Sends the replies that wait, in order, until the channel is full; never blocks.
fn hand_over<T>(pending: &mut VecDeque<T>, reply: &crossbeam_channel::Sender<T>) -> Handed {
    while let Some(m) = pending.pop_front() {
        match reply.try_send(m) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(m)) => {
                pending.push_front(m);
                return Handed::Blocked;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Handed::Gone,
        }
    }
    Handed::All
}

impl Worker {
    /// One slice of the holders' sweep; at the end of the table, its result goes into
    /// the snapshot and the counters start again.
    pub(super) fn sweep_holders(&mut self) {
        let cap = self.engine.table().capacity() as u32;
        let h = &mut self.holders;
        let range = h.cursor..h.cursor.saturating_add(holder_slots(cap)).min(cap);
        h.cursor = range.end;
        h.counted = h.counted.saturating_add(self.engine.count_holders(range, &mut h.sources, &mut h.ports));
        if h.cursor >= cap {
            self.snap.holders = Holders { sources: h.sources.top(), ports: h.ports.top(), swept: h.counted, v6_prefix: self.engine.config().source_prefix_v6 };
            *h = HolderSweep::default();
        }
    }

    pub(super) fn publish(&mut self, publisher: &mut Publisher) {
        let t = WallClock::now();
        self.snap.counters = self.engine.counters();
        self.snap.table_len = self.engine.table().len();
        self.snap.table_capacity = self.engine.table().capacity();
        self.snap.classes = self.engine.class_counts();
        self.snap.adaptive_scale = self.engine.adaptive_scale();
        for side in 0..2 {
            let mut x = self.xdp_base[side];
            x.merge(&self.ports.stats(side));
            // The shed map outlives sockets (a rebind): its count is the whole run's.
            if let Some(maps) = &self.shed {
                match maps[side].shed(self.binding.queue) {
                    Ok(n) => x.syn_shed = n,
                    Err(_) => self.snap.shed_flag_errors += 1,
                }
            }
            self.snap.xdp[side] = x;
        }
        self.snap.handoff_depth = self.from.iter().flatten().map(|c| c.slots() as u64).sum();
        self.snap.fragments = self.router.stats;
        self.snap.accounting = self.engine.table().accounting();
        self.snap.maintaining = self.scans.iter().any(|s| matches!(s.job, Job::Maintain { .. }));
        self.snap.publications += 1;
        publisher.publish(&self.snap);
        self.snap.publish_ns += t.elapsed().as_nanos() as u64;
    }

    pub(super) fn command(&mut self, c: Command, now: Instant) {
        match c {
            Command::Reconfigure { generation, engine, policy, recheck, log_rate } => {
                self.engine.reconfigure(&engine, policy);
                self.bucket.set_rate(log_rate);
                self.snap.generation = generation;
                // One pass over the table serves every reload since it started: a
                // recheck asked for by any of them is kept.
                let recheck = recheck || self.scans.iter().any(|s| matches!(s.job, Job::Maintain { recheck: true }));
                self.scans.retain(|s| !matches!(s.job, Job::Maintain { .. }));
                self.scans.push_back(Scan { job: Job::Maintain { recheck }, cursor: 0 });
            }
            Command::Flows { filter, limit, reply } => {
                let job = Job::Flows { filter, left: limit, pending: VecDeque::new(), reply };
                self.scans.push_back(Scan { job, cursor: 0 });
            }
            Command::Adopt { flows, reply } => {
                let _ = reply.send(self.engine.adopt_all(&flows, now));
            }
            Command::Export { reply } => {
                self.scans.push_back(Scan { job: Job::Export { pending: VecDeque::new(), reply }, cursor: 0 });
            }
            Command::Rebind { ifindex, reply } => {
                let _ = reply.send(self.rebind(ifindex));
            }
        }
    }

    /// Closes the sockets and opens them on `ifindex` (an interface came back under a
    /// new index). Frames in flight are gone with the old UMEM: those queued for
    /// transmission are counted as `tx_lost`. The table and its timers are untouched.
    fn rebind(&mut self, ifindex: [u32; 2]) -> Result<(), WorkerError> {
        let q = self.binding.queue;
        for side in 0..2 {
            let _ = self.maps[side].clear(q);
            self.xdp_base[side].merge(&self.ports.stats(side));
            self.snap.tx_lost[side] += self.in_flight[side];
            self.in_flight[side] = 0;
        }
        self.binding.ifindex = ifindex;
        self.snap.rebinds += 1;
        // Held fragments live in the old UMEM: they go with it (counted as let go).
        self.router.flush(self.index, |_, _| {});
        self.routed.clear();
        self.free.clear();
        self.ports.reopen(&self.binding).map_err(|source| WorkerError::Reopen { worker: self.index, source })?;
        self.free.extend((0..self.ports.frames()).map(Ports::frame_addr));
        for side in 0..2 {
            self.maps[side].set(q, self.ports.fd(side)).map_err(|source| WorkerError::Register { worker: self.index, source })?;
        }
        Ok(())
    }

    /// Serves one slice of the oldest table walk that can go on: a listing whose
    /// reader has not taken its last chunk waits without holding up the walks behind
    /// it (a reload's pass, other listings).
    pub(super) fn scan(&mut self, now: Instant) {
        let cap = self.engine.table().capacity() as u32;
        let mut i = 0;
        while i < self.scans.len() {
            let Scan { job, cursor } = &mut self.scans[i];
            let finished = match job {
                Job::Maintain { recheck } => {
                    let range = next_slice(cursor, cap);
                    self.engine.maintain(range, now, *recheck);
                    *cursor >= cap
                }
                Job::Export { pending, reply } => match hand_over(pending, reply) {
                    Handed::Gone => true,
                    Handed::Blocked => {
                        i += 1;
                        continue;
                    }
                    Handed::All if *cursor > cap => true,
                    Handed::All => {
                        if *cursor == cap {
                            // The flows are out: the tombstones, then the end.
                            pending.extend(chunks(self.engine.export_tombstones(now)).map(|(count, bytes)| ExportReply::Tombstones { count, bytes }));
                            pending.push_back(ExportReply::Done { tomb_sets: self.engine.tombstone_sets() });
                            *cursor = cap + 1;
                        } else {
                            let range = next_slice(cursor, cap);
                            pending.extend(chunks(self.engine.export_in(range, now)).map(|(count, bytes)| ExportReply::Flows { count, bytes }));
                        }
                        hand_over(pending, reply);
                        false
                    }
                },
                Job::Flows { filter, left, pending, reply } => match hand_over(pending, reply) {
                    Handed::Gone => true,
                    // The reader has not taken what waits: the walk pauses.
                    Handed::Blocked => {
                        i += 1;
                        continue;
                    }
                    // Everything was handed over, `Done` included.
                    Handed::All if *left == 0 || *cursor >= cap => true,
                    Handed::All => {
                        let range = next_slice(cursor, cap);
                        let chunk: Vec<_> = self.engine.flows_in(range, now).filter(|f| filter.matches(f)).take(*left).collect();
                        *left -= chunk.len();
                        if !chunk.is_empty() {
                            pending.push_back(FlowsReply::Chunk(chunk));
                        }
                        if *left == 0 || *cursor >= cap {
                            pending.push_back(FlowsReply::Done);
                        }
                        // A reader that went away is noticed at the next round.
                        hand_over(pending, reply);
                        false
                    }
                },
            };
            if finished {
                self.scans.remove(i);
            }
            // One slice per round in all.
            return;
        }
    }
}
