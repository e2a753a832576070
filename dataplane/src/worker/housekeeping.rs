//! What a worker does between bursts, every `HOUSEKEEPING`: take commands (a reload,
//! a listing, a re-bind), serve one slice of a table walk, publish its snapshot.

use std::collections::VecDeque;
use std::time::Duration as StdDuration;
use std::time::Instant as WallClock;

use holdfast_pipeline::Instant;

use super::Worker;
use crate::control::{Command, ExportReply, FlowFilter, FlowsReply};
use crate::error::WorkerError;
use crate::stats::Publisher;
use crate::xsk::Ports;
use holdfast_pipeline::holders::{Holders, SpaceSaving};
use holdfast_pipeline::snapshot::chunks;

/// Time one housekeeping round (every `HOUSEKEEPING`, 2 ms) gives table walks (a
/// `/flows` listing, a snapshot export, a reload's pass): the worker drains no ring
/// meanwhile, so a walk's slice is sized to take about this long. A full 1M table then
/// takes about 120–380 rounds (0.25–0.75 s) depending on the walk, where a fixed
/// 16,384-slot slice took 62 rounds but held the rings 0.3–1.3 ms a round
/// (docs/performance.md).
pub const WALK_BUDGET: StdDuration = StdDuration::from_micros(200);

/// The size of a table walk's slices: measured, not guessed. Each slice's cost (the
/// worker thread's CPU time: time off its core is not the walk's) sets the next one's
/// size so that it takes about [`WALK_BUDGET`]: what a slot costs depends on the walk
/// (a listing formats a flow, an export encodes one, a recheck judges it again), on how
/// full the table is and on the machine. Growth is at most twofold a slice; the bounds
/// keep a walk moving (a 1M table in at most 1,024 rounds) and never let a slice sized
/// on empty slots cost more than the fixed 16,384-slot slice did when it meets full
/// ones (a flood filled the table meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkPace {
    slots: u32,
}

impl Default for WalkPace {
    fn default() -> Self {
        WalkPace { slots: WalkPace::MIN }
    }
}

impl WalkPace {
    /// A walk's first slice, and never fewer: cheap whatever the walk (under 80 µs on
    /// the dev VM), and a walk always moves on.
    pub const MIN: u32 = 1024;
    /// Never more: an empty table walks as fast as before, a full one never slower.
    pub const MAX: u32 = 16_384;

    /// Slots the next slice examines.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// A slice of `slots` took `took`: the next is sized to take `budget` at that
    /// rate, at most twice this one, within [`Self::MIN`]..=[`Self::MAX`].
    pub fn took(&mut self, slots: u32, took: StdDuration, budget: StdDuration) {
        let took = took.as_nanos().max(1);
        let aimed = u128::from(slots) * budget.as_nanos() / took;
        let next = aimed.min(2 * u128::from(slots.max(Self::MIN)));
        self.slots = next.clamp(u128::from(Self::MIN), u128::from(Self::MAX)) as u32;
    }

    /// The next slice of a table of `cap` from `cursor`, which moves past it.
    fn next(&self, cursor: &mut u32, cap: u32) -> std::ops::Range<u32> {
        let range = *cursor..cursor.saturating_add(self.slots).min(cap);
        *cursor = range.end;
        range
    }
}

/// Slices of a listing or an export without a reply before it sends an empty one
/// (about a second of rounds): the control endpoint and the sync sweep give up on a
/// worker that says nothing for 10 s, and a mostly empty table of tens of millions of
/// slots takes longer than that to walk.
const QUIET_SLICES: u32 = 500;

/// Counts a slice that `produced` a reply or not: true when an empty reply is due.
fn due_a_sign_of_life(quiet: &mut u32, produced: bool) -> bool {
    if produced {
        *quiet = 0;
        return false;
    }
    *quiet += 1;
    if *quiet >= QUIET_SLICES {
        *quiet = 0;
        return true;
    }
    false
}

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
        /// Slices since the last reply: a filter that matches little on a large
        /// table still answers every [`QUIET_SLICES`], an empty chunk, so that the
        /// reader's wait for the next answer measures the worker, not the filter.
        quiet: u32,
    },
    /// A reload's pass: maintain (and, with `recheck`, re-judge) every entry.
    Maintain { recheck: bool },
    /// A snapshot of the running table, streamed in chunks of encoded records (an
    /// empty one every [`QUIET_SLICES`] without a flow).
    Export { pending: VecDeque<ExportReply>, reply: crossbeam_channel::Sender<ExportReply>, quiet: u32 },
}

/// A walk, the next slot it examines and the size of its slices.
pub(super) struct Scan {
    job: Job,
    cursor: u32,
    pace: WalkPace,
}

impl Scan {
    pub(super) fn new(job: Job) -> Scan {
        Scan { job, cursor: 0, pace: WalkPace::default() }
    }
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
                self.scans.push_back(Scan::new(Job::Maintain { recheck }));
            }
            Command::Flows { filter, limit, reply } => {
                let job = Job::Flows { filter, left: limit, pending: VecDeque::new(), reply, quiet: 0 };
                self.scans.push_back(Scan::new(job));
            }
            Command::Adopt { flows, reply } => {
                let _ = reply.send(self.engine.adopt_all(&flows, now));
            }
            Command::Export { reply } => {
                self.scans.push_back(Scan::new(Job::Export { pending: VecDeque::new(), reply, quiet: 0 }));
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
    /// it (a reload's pass, other listings). The slice's CPU time sizes its walk's next
    /// one to take [`WALK_BUDGET`].
    pub(super) fn scan(&mut self, now: Instant) {
        if self.scans.is_empty() {
            return;
        }
        let cap = self.engine.table().capacity() as u32;
        // One reading for the round: the walks passed over (their readers have not
        // taken what waits) cost a failed `try_send` each, nothing to pace.
        let started = crate::sys::thread_cpu_ns();
        let mut i = 0;
        while i < self.scans.len() {
            let Scan { job, cursor, pace } = &mut self.scans[i];
            let from = *cursor;
            let finished = match job {
                Job::Maintain { recheck } => {
                    let range = pace.next(cursor, cap);
                    self.engine.maintain(range, now, *recheck);
                    *cursor >= cap
                }
                Job::Export { pending, reply, quiet } => match hand_over(pending, reply) {
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
                            let range = pace.next(cursor, cap);
                            pending.extend(chunks(self.engine.export_in(range, now)).map(|(count, bytes)| ExportReply::Flows { count, bytes }));
                            if due_a_sign_of_life(quiet, !pending.is_empty()) {
                                pending.push_back(ExportReply::Flows { count: 0, bytes: Vec::new() });
                            }
                        }
                        hand_over(pending, reply);
                        false
                    }
                },
                Job::Flows { filter, left, pending, reply, quiet } => match hand_over(pending, reply) {
                    Handed::Gone => true,
                    // The reader has not taken what waits: the walk pauses.
                    Handed::Blocked => {
                        i += 1;
                        continue;
                    }
                    // Everything was handed over, `Done` included.
                    Handed::All if *left == 0 || *cursor >= cap => true,
                    Handed::All => {
                        let range = pace.next(cursor, cap);
                        let chunk: Vec<_> = self.engine.flows_in(range, now).filter(|f| filter.matches(f)).take(*left).collect();
                        *left -= chunk.len();
                        if due_a_sign_of_life(quiet, !chunk.is_empty()) || !chunk.is_empty() {
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
            // A full slice (not the table's last, shorter one) says what a slot costs.
            let slots = (*cursor).min(cap).saturating_sub(from);
            if slots == pace.slots() {
                pace.took(slots, StdDuration::from_nanos(crate::sys::thread_cpu_ns().saturating_sub(started)), WALK_BUDGET);
            }
            if finished {
                self.scans.remove(i);
            }
            // One slice per round in all.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_reply_every_quiet_slices_and_none_while_replies_come() {
        let mut quiet = 0;
        let due: Vec<u32> = (1..=3 * super::QUIET_SLICES).filter(|_| super::due_a_sign_of_life(&mut quiet, false)).collect();
        assert_eq!(due.len(), 3, "one every {} quiet slices", super::QUIET_SLICES);
        for _ in 0..super::QUIET_SLICES - 1 {
            assert!(!super::due_a_sign_of_life(&mut quiet, false));
        }
        assert!(!super::due_a_sign_of_life(&mut quiet, true), "a reply is a sign of life");
        assert_eq!(quiet, 0, "and starts the count again");
        assert!((0..super::QUIET_SLICES - 1).all(|_| !super::due_a_sign_of_life(&mut quiet, false)));
        assert!(super::due_a_sign_of_life(&mut quiet, false));
    }

    use super::*;

    const BUDGET: StdDuration = WALK_BUDGET;

    /// The slices a walk makes of a table whose slots cost `ns` each, and the wall
    /// time of each.
    fn walk(cap: u32, ns: impl Fn(u32) -> u64) -> Vec<(u32, StdDuration)> {
        let (mut pace, mut cursor, mut out) = (WalkPace::default(), 0, Vec::new());
        while cursor < cap {
            let from = cursor;
            let range = pace.next(&mut cursor, cap);
            assert_eq!(range.start, from, "slices follow one another");
            let took = StdDuration::from_nanos((range.start..range.end).map(&ns).sum());
            let n = range.end - range.start;
            if n == pace.slots() {
                pace.took(n, took, BUDGET);
            }
            out.push((n, took));
        }
        out
    }

    #[test]
    fn slices_settle_at_the_budget_whatever_a_slot_costs() {
        let budget = BUDGET.as_nanos() as u64;
        // A listing, a recheck and an export of a full table cost about 30, 55 and 75 ns
        // a slot on the dev VM; an empty one a few.
        for ns in [3u64, 30, 55, 75, 400] {
            let slices = walk(1 << 20, |_| ns);
            assert_eq!(slices.iter().map(|s| u64::from(s.0)).sum::<u64>(), 1 << 20, "every slot once ({ns} ns)");
            // After a few doublings every slice is within a factor of two of the budget
            // (or at the bounds).
            for &(n, took) in slices.iter().skip(8).take(slices.len().saturating_sub(9)) {
                let t = took.as_nanos() as u64;
                assert!(n == WalkPace::MAX || n == WalkPace::MIN || (budget / 2..=budget * 2).contains(&t), "{n} slots took {t} ns at {ns} ns a slot");
            }
            let worst = slices.iter().map(|s| s.1).max().unwrap();
            assert!(worst <= BUDGET * 2 || slices.iter().all(|s| s.0 <= WalkPace::MIN), "worst slice {worst:?} at {ns} ns a slot");
        }
    }

    #[test]
    fn a_slow_slice_shrinks_the_next_and_growth_is_at_most_twofold() {
        let mut p = WalkPace { slots: 8192 };
        p.took(8192, BUDGET * 4, BUDGET);
        assert_eq!(p.slots(), 2048, "four times over: a quarter");
        p.took(2048, StdDuration::from_secs(1), BUDGET);
        assert_eq!(p.slots(), WalkPace::MIN, "a walk always moves on");
        p.took(1024, StdDuration::ZERO, BUDGET);
        assert_eq!(p.slots(), 2048, "no faster than doubling, even for a slice that read no time");
        for _ in 0..20 {
            let n = p.slots();
            p.took(n, StdDuration::from_nanos(1), BUDGET);
        }
        assert_eq!(p.slots(), WalkPace::MAX);
    }

    #[test]
    fn a_change_of_cost_midway_is_followed() {
        // The table's first half empty (a few ns a slot), its second full and costly:
        // the slice that crosses over overshoots once, by at most MAX costly slots.
        let slices = walk(1 << 20, |s| if s < 1 << 19 { 2 } else { 80 });
        let over: Vec<_> = slices.iter().filter(|s| s.1 > BUDGET * 2).collect();
        assert!(over.len() <= 1 && over.iter().all(|s| s.1 <= StdDuration::from_nanos(80 * u64::from(WalkPace::MAX))), "{over:?}");
        let last = slices[slices.len() - 2];
        assert!(last.1 <= BUDGET * 2 && last.1 >= BUDGET / 2, "settled again: {last:?}");
    }
}
