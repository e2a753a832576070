//! A pinned, run-to-completion worker: receive a burst -> pipeline -> transmit on the
//! other side -> recycle completions -> refill. Frames of flows another worker owns go
//! to it through the handoff rings.

#[cfg(debug_assertions)]
pub mod fault;
mod housekeeping;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration as StdDuration, Instant as WallClock};

use holdfast_pipeline::engine::{DEFAULT_EXPIRE_BUDGET, Packet};
use holdfast_pipeline::flow::owner_of;
use holdfast_pipeline::steer::{self, FragRouter, Steering, maybe_fragment, steer};
use holdfast_pipeline::{DropReason, Engine, FlowHasher, Instant, Verdict, Zone};

use crate::bpf::{ShedMap, XskMap};
use crate::control::{Bucket, ChangeSink, Command, DenyEvent, LinkFlags};
use crate::error::WorkerError;
use crate::handoff::{self, Consumer, Producer, Refused};
use crate::stats::{ForwardDrop, Publisher, Snapshot};
use crate::sys;
use crate::xsk::XdpStats;
use crate::xsk::{Binding, Desc, FRAME_SIZE, Ports};
use housekeeping::{HolderSweep, Scan};
pub use housekeeping::{WALK_BUDGET, WalkPace};

/// How a worker waits when there is nothing to do (`workers.idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Never sleep: lowest latency, a whole core.
    Spin,
    /// Spin for `SPIN_POLLS` empty polls, then sleep in `poll()`.
    Adaptive,
    /// Sleep in `poll()` as soon as a poll finds nothing.
    Sleep,
}

/// Empty polls before an adaptive worker sleeps: long enough to ride out gaps inside a
/// burst of traffic, short enough not to starve the kernel's receive work on a small
/// machine (busy spinning cut throughput to a fifth on the 2-core lab host).
const SPIN_POLLS: u32 = 64;
/// Longest sleep in `poll()`; also bounds how late timers and handoff rings are served
/// while idle.
const POLL_MS: i32 = 1;
/// How often the table's timers run and a snapshot is published.
const HOUSEKEEPING: StdDuration = StdDuration::from_millis(2);
/// Slots per handoff ring.
pub const HANDOFF_RING: usize = 1024;
/// Denials a worker can queue for the logger before it counts them as suppressed.
pub const DENY_RING: usize = 4096;
/// A gap between two polls longer than this is counted (`slow_polls`).
const SLOW_POLL: StdDuration = StdDuration::from_millis(10);
/// How long SYNs stay shed after a worker saw its RX ring overflow (the kernel's
/// `rx_ring_full` count grew): the ring filled between two looks, so the occupancy seen
/// after a burst understates the load — a worker starved of its core by the kernel's
/// own receive work looks only now and then. A client whose SYN is shed retries after
/// Linux's initial RTO, 1 s.
const SHED_HOLD: StdDuration = StdDuration::from_secs(1);
/// IP fragments a worker holds for their first fragment (which names the worker that
/// judges the datagram) before it lets the oldest go.
pub const FRAGMENT_HOLD: usize = 256;
pub struct Spec {
    pub index: usize,
    pub workers: usize,
    pub core: Option<usize>,
    pub binding: Binding,
    pub burst: usize,
    pub idle: Idle,
    pub engine: Engine,
    pub hasher: FlowHasher,
    pub maps: [Arc<XskMap>; 2],
    /// Each interface's shed flags and counts (`None`: the plain program, no shedding).
    pub shed: Option<[Arc<ShedMap>; 2]>,
    /// Which interfaces can take frames (set by the control side's link watch).
    pub links: Arc<LinkFlags>,
    pub to: Vec<Option<Producer>>,
    pub from: Vec<Option<Consumer>>,
    pub publisher: Publisher,
    pub commands: crossbeam_channel::Receiver<Command>,
    /// Where denials go (`None`: no deny log).
    pub deny: Option<rtrb::Producer<DenyEvent>>,
    /// Where the table's changes go for state sync (`None`: no sync).
    pub changes: Option<ChangeSink>,
    /// This worker's share of `log.rate_limit`, events per second.
    pub log_rate: u32,
    pub stop: Arc<AtomicBool>,
    /// The clock's epoch, common to all workers.
    pub epoch: WallClock,
}

/// What a worker leaves when it stops.
pub struct Final {
    pub snapshot: Snapshot,
    /// The table, for a state snapshot across a restart.
    pub engine: Engine,
}

fn since(epoch: WallClock, t: WallClock) -> Instant {
    Instant::from_nanos(t.duration_since(epoch).as_nanos() as u64)
}

struct Worker {
    ports: Ports,
    free: Vec<u64>,
    engine: Engine,
    hasher: FlowHasher,
    index: usize,
    workers: usize,
    burst: usize,
    to: Vec<Option<Producer>>,
    from: Vec<Option<Consumer>>,
    snap: Snapshot,
    descs: Vec<Desc>,
    mine: Vec<Desc>,
    txq: Vec<Desc>,
    verdicts: Vec<Verdict>,
    deny: Option<rtrb::Producer<DenyEvent>>,
    changes: Option<ChangeSink>,
    bucket: Bucket,
    /// Table walks under way (listings, a reload's pass), served a slice per round.
    scans: std::collections::VecDeque<Scan>,
    holders: HolderSweep,
    links: Arc<LinkFlags>,
    maps: [Arc<XskMap>; 2],
    shed: Option<[Arc<ShedMap>; 2]>,
    /// Until when (ns of the pipeline's clock) side's shed flag (`snap.shedding`) stays
    /// up after the ring was seen to overflow; the ring's `rx_ring_full` count when
    /// last looked at.
    shed_hold_until: [u64; 2],
    ring_full_seen: [u64; 2],
    binding: Binding,
    /// Frames queued on each side's TX ring and not yet completed.
    in_flight: [u64; 2],
    /// XDP statistics of sockets closed before (a rebind): added to the current ones
    /// so that the published counters never go backwards.
    xdp_base: [XdpStats; 2],
    /// Routes the fragments of the datagrams this worker is chosen for (by their
    /// addresses) to the worker that judged their first fragment; holds early ones.
    router: FragRouter<Routed>,
    /// What one routing step let go of, and to which worker.
    routed: Vec<(Routed, usize)>,
    /// Routed frames this worker judges itself, per side.
    local: [Vec<Desc>; 2],
    /// Handed-in frames (taken off the ring first, then routed or judged in order):
    /// whether to route it, and its frame.
    route_pending: Vec<(bool, Desc)>,
}

/// Whether a queue's shed flag should be up: raised above half the ring, kept up
/// until the ring is down to an eighth and no overflow is being held for.
fn shed_wanted(up: bool, waiting: u32, ring: u32, holding: bool) -> bool {
    if up { waiting > ring / 8 || holding } else { waiting > ring / 2 }
}

/// A fragment in the router's hands: the side it came in on, and its frame.
#[derive(Clone, Copy)]
struct Routed {
    side: u8,
    desc: Desc,
}

/// Set in a handed-off item's `side`: a fragment for its datagram's routing worker,
/// which routes it rather than judges it.
const ROUTE: u8 = 0x80;

/// Opens the sockets (reporting success or the error through `ready`), then runs until
/// `stop`.
pub fn run(spec: Spec, ready: std::sync::mpsc::Sender<Result<(), WorkerError>>) -> Option<Final> {
    if let Some(core) = spec.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let ports = match Ports::open(&spec.binding) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(WorkerError::Sockets { worker: spec.index, source: e }));
            return None;
        }
    };
    for side in 0..2 {
        if let Err(e) = spec.maps[side].set(spec.binding.queue, ports.fd(side)) {
            let _ = ready.send(Err(WorkerError::Register { worker: spec.index, source: e }));
            return None;
        }
    }
    let frames = ports.frames();
    let fragment_routes = spec.engine.config().fragments;
    let fragment_timeout = spec.engine.config().fragment_timeout.as_nanos();
    let mut w = Worker {
        free: (0..frames).map(Ports::frame_addr).collect(),
        ports,
        engine: spec.engine,
        hasher: spec.hasher,
        index: spec.index,
        workers: spec.workers,
        burst: spec.burst.clamp(1, 1024),
        to: spec.to,
        from: spec.from,
        snap: Snapshot { worker: spec.index, core: spec.core, queue: spec.binding.queue, ..Snapshot::default() },
        descs: Vec::with_capacity(1024),
        mine: Vec::with_capacity(1024 + FRAGMENT_HOLD + 2),
        txq: Vec::with_capacity(1024),
        verdicts: vec![Verdict::Drop(DropReason::Malformed); 1024 + FRAGMENT_HOLD + 2],
        deny: spec.deny,
        changes: spec.changes,
        bucket: Bucket::new(spec.log_rate),
        scans: std::collections::VecDeque::new(),
        holders: HolderSweep::default(),
        links: spec.links,
        maps: [Arc::clone(&spec.maps[0]), Arc::clone(&spec.maps[1])],
        shed: spec.shed,
        shed_hold_until: [0; 2],
        ring_full_seen: [0; 2],
        binding: spec.binding,
        in_flight: [0; 2],
        xdp_base: [XdpStats::default(); 2],
        router: FragRouter::new(fragment_routes, FRAGMENT_HOLD, fragment_timeout),
        routed: Vec::with_capacity(FRAGMENT_HOLD + 1024 + 2),
        local: [Vec::with_capacity(FRAGMENT_HOLD + 1024 + 2), Vec::with_capacity(FRAGMENT_HOLD + 1024 + 2)],
        route_pending: Vec::with_capacity(1024),
    };
    let mut publisher = spec.publisher;
    // Half the frames wait in the two fill rings; the rest cover TX and handoffs.
    let per_side = (frames / 4).min(spec.binding.ring_size);
    for side in 0..2 {
        w.ports.fill(side, &mut w.free, per_side);
    }
    let _ = ready.send(Ok(()));

    let mut empty = 0u32;
    // The clock is read once a poll, after it: that reading is the next poll's start
    // unless housekeeping or a sleep came between (each reads it again). The
    // pipeline's time is in 1/64 s ticks, far coarser than a poll; an idle spinning
    // worker read it twice a poll before (a busy one three times), and the reads were
    // ~28 % of its samples (perf, the dev VM).
    let mut t = WallClock::now();
    let mut last_house = t;
    let mut last_poll = t;
    #[cfg(debug_assertions)]
    let stall_at = fault::stall_at(spec.index, last_house);
    #[cfg(debug_assertions)]
    let panic_at = fault::panic_at(spec.index, last_house);
    #[cfg(debug_assertions)]
    let slow = fault::slow(spec.index);
    while !spec.stop.load(Ordering::Relaxed) {
        #[cfg(debug_assertions)]
        fault::maybe_stall(stall_at);
        #[cfg(debug_assertions)]
        fault::maybe_panic(panic_at, fault::PANIC_WORKER);
        // Time from the last poll's start: the poll itself, a sleep in poll() (1 ms at
        // most) — or the thread kept off its core (the kernel's own receive work runs
        // there too), while its RX rings fill.
        let gap = t.duration_since(last_poll).as_nanos() as u64;
        last_poll = t;
        w.snap.max_poll_gap_ns = w.snap.max_poll_gap_ns.max(gap);
        if gap > SLOW_POLL.as_nanos() as u64 {
            w.snap.slow_polls += 1;
        }
        let mut did = w.poll_once(since(spec.epoch, t), per_side);
        if did == 0 && (w.ports.rx_waiting(0) || w.ports.rx_waiting(1)) {
            // Frames wait but the other side's TX ring has no room: busy, not idle
            // (the kernel's transmit is the bottleneck).
            w.snap.tx_blocked_polls += 1;
            did = 1;
        }
        #[cfg(debug_assertions)]
        if let Some(d) = slow.filter(|_| did > 0) {
            std::thread::sleep(d);
        }
        let after = WallClock::now();
        let took = after.duration_since(t).as_nanos() as u64;
        w.snap.max_poll_ns = w.snap.max_poll_ns.max(took);
        w.snap.polls += 1;
        if did > 0 {
            w.snap.busy_polls += 1;
            w.snap.busy_ns += took;
            empty = 0;
        } else {
            empty += 1;
        }
        let mut next = after;
        if after.duration_since(last_house) >= HOUSEKEEPING {
            last_house = after;
            let now = since(spec.epoch, after);
            w.engine.expire(now, DEFAULT_EXPIRE_BUDGET);
            let (routed, me) = (&mut w.routed, w.index);
            w.router.expire(now.as_nanos(), me, |r, to| routed.push((r, to)));
            w.dispatch_routed(now);
            while let Ok(c) = spec.commands.try_recv() {
                let adopt = matches!(c, Command::Adopt { .. });
                w.command(c, now);
                if adopt {
                    // One chunk of a takeover a round (~16k flows, a few ms): the next
                    // waits in the queue, and the rings are polled between.
                    break;
                }
            }
            w.scan(now);
            w.sweep_holders();
            w.publish(&mut publisher);
            w.shed_on_overflow(now);
            next = WallClock::now();
            w.snap.max_housekeeping_ns = w.snap.max_housekeeping_ns.max(next.duration_since(t).as_nanos() as u64);
        }
        w.hand_changes(since(spec.epoch, next));
        if did == 0 {
            let sleep = match spec.idle {
                Idle::Spin => false,
                Idle::Adaptive => empty > SPIN_POLLS,
                Idle::Sleep => true,
            };
            if sleep {
                sys::poll_in(&[w.ports.fd(0), w.ports.fd(1)], POLL_MS);
                next = WallClock::now();
            }
        }
        t = next;
    }
    // Drain: what already arrived is judged and sent; give the kernel a moment to send.
    let until = WallClock::now() + StdDuration::from_millis(50);
    loop {
        let t = WallClock::now();
        if t >= until {
            break;
        }
        if w.poll_once(since(spec.epoch, t), per_side) == 0 {
            std::thread::sleep(StdDuration::from_millis(1));
        }
    }
    for side in 0..2 {
        let _ = spec.maps[side].clear(spec.binding.queue);
        if w.snap.shedding[side] {
            w.set_shedding(side, false);
        }
    }
    let end = since(spec.epoch, WallClock::now());
    w.snap.foreign_flows = w.engine.flows(end).filter(|f| owner_of(w.hasher.owner_hash(&f.key), w.workers) != w.index).count() as u64;
    w.publish(&mut publisher);
    Some(Final { snapshot: w.snap, engine: w.engine })
}

impl Worker {
    /// Moves the changes the engine noted into the sync endpoint's ring; what does not
    /// fit is counted (the endpoint then sweeps the whole table). Never waits.
    fn hand_changes(&mut self, now: Instant) {
        let Some(sink) = self.changes.as_mut() else { return };
        let stats = self.engine.change_stats();
        if stats.pending > 0 {
            let ring = &mut sink.ring;
            let full = &mut sink.ring_full;
            self.engine.drain_changes(now, |c| {
                if ring.push(c).is_err() {
                    *full += 1;
                }
            });
        }
        sink.lost.store(stats.lost + sink.ring_full, Ordering::Relaxed);
    }

    /// One pass over everything; returns how many frames it moved.
    fn poll_once(&mut self, now: Instant, per_side: u32) -> usize {
        let mut did = 0;
        for side in 0..2 {
            let n = self.ports.complete(side, &mut self.free, 4 * self.burst as u32);
            self.in_flight[side] = self.in_flight[side].saturating_sub(u64::from(n));
            did += n as usize;
        }
        did += self.handed_in(now);
        for side in 0..2 {
            did += self.receive(side, now);
            self.watch_ring(side, now);
        }
        for side in 0..2 {
            self.ports.fill(side, &mut self.free, per_side);
            self.ports.kick(side);
        }
        did
    }

    /// Raises side's shed flag when its RX ring is more than half full after a burst
    /// was taken (frames arrive faster than this worker drains them: the kernel is
    /// about to drop whatever comes, established or not), lowers it once the ring is
    /// down to an eighth and [`SHED_HOLD`] has passed since an overflow. While it is up
    /// the XDP program drops new TCP connections' SYNs before they take ring slots
    /// (`bpf::shedding_program`). Two relaxed loads a poll; a bpf(2) call only on a
    /// change.
    fn watch_ring(&mut self, side: usize, now: Instant) {
        if self.shed.is_none() {
            return;
        }
        let up = self.snap.shedding[side];
        let want = shed_wanted(up, self.ports.rx_pending(side), self.binding.ring_size, now.as_nanos() < self.shed_hold_until[side]);
        if want != up {
            self.set_shedding(side, want);
        }
    }

    /// After each publication: a ring that overflowed since the last one (its
    /// `rx_ring_full` grew) raises the flag at once and holds it [`SHED_HOLD`].
    fn shed_on_overflow(&mut self, now: Instant) {
        if self.shed.is_none() {
            return;
        }
        for side in 0..2 {
            let full = self.snap.xdp[side].rx_ring_full;
            if full > self.ring_full_seen[side] {
                self.ring_full_seen[side] = full;
                self.shed_hold_until[side] = now.as_nanos().saturating_add(SHED_HOLD.as_nanos() as u64);
                if !self.snap.shedding[side] {
                    self.set_shedding(side, true);
                }
            }
        }
    }

    fn set_shedding(&mut self, side: usize, on: bool) {
        let Some(maps) = &self.shed else { return };
        match maps[side].set(self.binding.queue, on) {
            Ok(()) => {
                self.snap.shedding[side] = on;
                if on {
                    self.snap.shed_episodes[side] += 1;
                }
            }
            // Left as it was; counted (a map that cannot be written is a fault).
            Err(_) => self.snap.shed_flag_errors += 1,
        }
    }

    /// Receives a burst on `side`, never more than the other side can transmit.
    fn receive(&mut self, side: usize, now: Instant) -> usize {
        let other = 1 - side;
        let room = self.ports.tx_room(other, self.burst as u32);
        if room == 0 {
            return 0;
        }
        self.descs.clear();
        let n = self.ports.receive(side, room, &mut self.descs) as usize;
        if n == 0 {
            return 0;
        }
        self.snap.rx[side] += n as u64;
        self.snap.rx_bytes[side] += self.descs.iter().map(|d| u64::from(d.len)).sum::<u64>();
        // Frames owned by another worker go there; the rest are ours.
        self.mine.clear();
        for i in 0..n {
            let d = self.descs[i];
            let frame = self.ports.data(d.addr, d.len);
            // One worker steers only fragments (they may wait for their first).
            let st = (self.workers > 1 || maybe_fragment(frame)).then(|| steer(frame, &self.hasher));
            let (to, route) = match &st {
                None => (self.index, false),
                Some(st) => match st.frag {
                    Some(f) => (if self.workers > 1 { owner_of(f.pair, self.workers) } else { self.index }, true),
                    None if st.owner_hash == 0 => (self.index, false),
                    None => (steer::owner(st, self.workers), false),
                },
            };
            if to == self.index {
                match st {
                    Some(st) if route => self.route_here(side as u8, d, &st, now),
                    _ => self.mine.push(d),
                }
                continue;
            }
            self.hand_off(to, side as u8 | if route { ROUTE } else { 0 }, d);
        }
        let mine = std::mem::take(&mut self.mine);
        self.judge_and_send(side, &mine, now);
        self.mine = mine;
        self.dispatch_routed(now);
        n
    }

    /// Copies a frame into the ring to worker `to` and frees it (a full ring or a frame
    /// too large is a counted drop).
    fn hand_off(&mut self, to: usize, side: u8, d: Desc) {
        let res = match self.to[to].as_mut() {
            Some(p) => handoff::send(p, side, self.ports.data(d.addr, d.len)),
            None => Err(Refused::Full),
        };
        match res {
            Ok(()) => self.snap.handoff_out += 1,
            Err(Refused::Full) => self.snap.forward_drops[ForwardDrop::HandoffFull as usize] += 1,
            Err(Refused::TooLarge) => self.snap.forward_drops[ForwardDrop::HandoffTooLarge as usize] += 1,
        }
        self.free.push(d.addr & !(u64::from(FRAME_SIZE) - 1));
    }

    /// Routes a fragment of a datagram this worker is chosen for: a first fragment to
    /// its flow's owner (and what waited for it after it), a later one where its first
    /// went, or into the hold. What it lets go of waits in `routed`.
    ///
    /// What it lets go of to this worker from the side whose burst is being gathered
    /// into `mine` joins that burst at once, so that a flow's frames keep their order.
    fn route_here(&mut self, side: u8, d: Desc, st: &Steering, now: Instant) {
        match st.frag {
            None => self.routed.push((Routed { side, desc: d }, self.index)),
            Some(f) => {
                let owner = if f.first && st.owner_hash != 0 { steer::owner(st, self.workers) } else { self.index };
                let routed = &mut self.routed;
                self.router.route(Routed { side, desc: d }, &f, owner, now.as_nanos(), |r, to| routed.push((r, to)));
            }
        }
        // Ours, from this side, are judged with this poll's frames; one pass.
        let (index, mine) = (self.index, &mut self.mine);
        self.routed.retain(|&(r, to)| {
            let here = to == index && r.side & 1 == side & 1;
            if here {
                mine.push(r.desc);
            }
            !here
        });
    }

    /// Judges here, or hands to their worker, the fragments routing let go of, in order.
    fn dispatch_routed(&mut self, now: Instant) {
        if self.routed.is_empty() {
            return;
        }
        let routed = std::mem::take(&mut self.routed);
        for &(r, to) in &routed {
            if to == self.index {
                self.local[usize::from(r.side & 1)].push(r.desc);
            } else {
                self.hand_off(to, r.side & 1, r.desc);
            }
        }
        self.routed = routed;
        self.routed.clear();
        for side in 0..2 {
            let local = std::mem::take(&mut self.local[side]);
            self.judge_and_send(side, &local, now);
            self.local[side] = local;
            self.local[side].clear();
        }
    }

    /// Frames other workers handed to this one.
    fn handed_in(&mut self, now: Instant) -> usize {
        let mut total = 0;
        for peer in 0..self.from.len() {
            for side in 0..2 {
                let other = 1 - side;
                let room = self.ports.tx_room(other, self.burst as u32) as usize;
                self.mine.clear();
                let Some(c) = self.from[peer].as_mut() else { continue };
                // Take items of this side while there is TX room and a free frame.
                let mut taken = 0usize;
                while taken < room {
                    let Ok(front) = c.peek() else { break };
                    if usize::from(front.side & 1) != side {
                        break;
                    }
                    let item = c.pop().expect("peeked");
                    let Some(addr) = self.free.pop() else {
                        self.snap.forward_drops[ForwardDrop::NoFreeFrame as usize] += 1;
                        continue;
                    };
                    let len = u32::from(item.len);
                    self.ports.data_mut(addr, len).copy_from_slice(&item.data[..len as usize]);
                    // In order: a fragment of a datagram this worker routes, or a frame
                    // to judge.
                    self.route_pending.push((item.side & ROUTE != 0, Desc { addr, len: u32::from(item.len), options: 0 }));
                    taken += 1;
                }
                for k in 0..self.route_pending.len() {
                    match self.route_pending[k] {
                        (true, d) => {
                            let st = steer(self.ports.data(d.addr, d.len), &self.hasher);
                            self.route_here(side as u8, d, &st, now);
                        }
                        (false, d) => self.mine.push(d),
                    }
                }
                self.route_pending.clear();
                self.snap.handoff_in += taken as u64;
                total += taken;
                let mine = std::mem::take(&mut self.mine);
                self.judge_and_send(side, &mine, now);
                self.mine = mine;
                self.dispatch_routed(now);
            }
        }
        total
    }

    /// Runs frames received on `side` through the pipeline and transmits the passed
    /// ones on the other side; dropped frames return to the free pool.
    fn judge_and_send(&mut self, side: usize, descs: &[Desc], now: Instant) {
        if descs.is_empty() {
            return;
        }
        if self.links.syncing() {
            // A takeover is filling the table: judging now would deny the replies of
            // flows it has not reached yet.
            self.snap.forward_drops[ForwardDrop::Syncing as usize] += descs.len() as u64;
            for d in descs {
                self.free.push(d.addr & !(u64::from(FRAME_SIZE) - 1));
            }
            return;
        }
        let zone = if side == 0 { Zone::Outside } else { Zone::Inside };
        let t = now;
        {
            let ports = &self.ports;
            let mut pkts: [Packet; 64] = [Packet { data: &[], zone, now: t }; 64];
            for (chunk_i, chunk) in descs.chunks(64).enumerate() {
                for (k, d) in chunk.iter().enumerate() {
                    pkts[k] = Packet { data: ports.data(d.addr, d.len), zone, now: t };
                }
                let base = chunk_i * 64;
                self.engine.process_batch(&pkts[..chunk.len()], &mut self.verdicts[base..base + chunk.len()]);
            }
        }
        self.txq.clear();
        for (i, d) in descs.iter().enumerate() {
            match self.verdicts[i] {
                Verdict::Pass(_) => self.txq.push(*d),
                Verdict::Drop(reason) => {
                    if self.deny.is_some() {
                        self.log_denial(side, *d, reason, now);
                    }
                    self.free.push(d.addr & !(u64::from(FRAME_SIZE) - 1));
                }
            }
        }
        let other = 1 - side;
        if !self.links.is_up(other) {
            // Its interface is down or gone: nothing can be sent there.
            self.snap.forward_drops[ForwardDrop::LinkDown as usize] += self.txq.len() as u64;
            for d in &self.txq {
                self.free.push(d.addr & !(u64::from(FRAME_SIZE) - 1));
            }
            return;
        }
        let sent = self.ports.transmit(other, &self.txq) as usize;
        self.in_flight[other] += sent as u64;
        for d in &self.txq[..sent] {
            self.snap.tx[other] += 1;
            self.snap.tx_bytes[other] += u64::from(d.len);
        }
        for d in &self.txq[sent..] {
            self.snap.forward_drops[ForwardDrop::TxRingFull as usize] += 1;
            self.free.push(d.addr & !(u64::from(FRAME_SIZE) - 1));
        }
    }

    /// Queues a denial for the deny log if the rate limit and the queue allow; counts
    /// it as suppressed otherwise. Never waits.
    #[cold]
    fn log_denial(&mut self, side: usize, d: Desc, reason: DropReason, now: Instant) {
        let Some(q) = self.deny.as_mut() else { return };
        if q.is_full() || !self.bucket.take(now.as_nanos()) {
            self.snap.log_suppressed += 1;
            return;
        }
        let what = self.engine.explain(self.ports.data(d.addr, d.len), now);
        let ev = DenyEvent { at_ns: now.as_nanos(), worker: self.index as u16, side: side as u8, reason, what };
        match q.push(ev) {
            Ok(()) => self.snap.log_events += 1,
            Err(_) => self.snap.log_suppressed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shed_wanted;

    #[test]
    fn the_shed_flag_rises_above_half_the_ring_and_falls_at_an_eighth_after_any_hold() {
        let ring = 2048;
        // Down: stays down up to half the ring, whatever the hold says (a hold only
        // keeps a raised flag up; the overflow itself raises it).
        assert!(!shed_wanted(false, 0, ring, false));
        assert!(!shed_wanted(false, 1024, ring, false));
        assert!(shed_wanted(false, 1025, ring, false));
        // Up: stays up down to an eighth, and below it while an overflow is held for.
        assert!(shed_wanted(true, 1024, ring, false));
        assert!(shed_wanted(true, 257, ring, false));
        assert!(!shed_wanted(true, 256, ring, false));
        assert!(shed_wanted(true, 0, ring, true));
        assert!(!shed_wanted(true, 0, ring, false));
    }
}
