//! Starting and stopping the appliance: the XDP program on both interfaces, one pinned
//! worker per configured core, the handoff rings between them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant as WallClock;

use holdfast_pipeline::{Classifier, Engine, EngineConfig, FlowHasher, Instant};

use crate::bpf::{self, Link, Program, ShedMap, XdpMode, XskMap};
use crate::control::{ChangeFeed, Command, DenyEvent, LinkFlags};
pub use crate::error::{AttachError, OsError, StartError, WorkerError};
use crate::handoff;
use crate::stats::{self, Reader, Snapshot};
use crate::sys::{LinkEvents, LinkState, link_state};
use crate::worker::{self, DENY_RING, HANDOFF_RING, Idle, Spec};
use crate::xsk::Binding;

#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub mode: XdpMode,
    pub queues: u32,
}

#[derive(Clone)]
pub struct Config {
    /// Outside, inside.
    pub interfaces: [Interface; 2],
    /// One worker per entry; `None` = not pinned.
    pub cores: Vec<Option<usize>>,
    pub burst: usize,
    pub idle: Idle,
    pub umem_frames: u32,
    pub ring_size: u32,
    /// `workers.shed_syns`: while a worker's RX ring is over half full, its queue's
    /// XDP program drops TCP SYNs (no ACK, no RST) before the ring, counted.
    pub shed_syns: bool,
    pub engine: EngineConfig,
    pub policy: Arc<Classifier>,
    /// Keep a deny log queue per worker (the caller drains it with `take_denials`).
    pub deny_log: bool,
    /// `log.rate_limit`: denials per second over all workers.
    pub log_rate: u32,
    /// Feed the sync endpoint the changes of every table (`sync:`; the caller drains
    /// them with `take_changes`).
    pub changes: Option<ChangeFeedConfig>,
}

/// The per-worker change feeds for state sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeFeedConfig {
    /// Changes a worker can queue (engine journal and ring, each) before it counts
    /// them as lost.
    pub queue: usize,
    /// A flow with traffic is sent again this often (or at half its timeout).
    pub refresh: std::time::Duration,
}

/// Each worker's share of a rate over all workers (rounded up: never zero for a
/// non-zero rate).
pub fn share(rate: u32, workers: usize) -> u32 {
    rate.div_ceil(workers.max(1) as u32)
}

/// A running appliance. Dropping it without `stop` still detaches the programs (the
/// links close), but workers are only joined by `stop`.
pub struct Running {
    workers: Vec<JoinHandle<Option<worker::Final>>>,
    readers: Vec<Reader>,
    commands: Vec<crossbeam_channel::Sender<Command>>,
    denials: Vec<rtrb::Consumer<DenyEvent>>,
    changes: Vec<ChangeFeed>,
    stop: Arc<AtomicBool>,
    /// The XDP link of each side (`None` while its interface is gone).
    links: [Option<Link>; 2],
    maps: [Arc<XskMap>; 2],
    shed: Option<[Arc<ShedMap>; 2]>,
    interfaces: [Interface; 2],
    /// The interface indexes the workers' sockets are bound to.
    ifindex: [u32; 2],
    /// Each side's state as last seen, and whether the workers may send there.
    states: [LinkState; 2],
    flags: Arc<LinkFlags>,
    /// Link change notifications (rtnetlink), if they could be subscribed to.
    events: Option<LinkEvents>,
    last_look: WallClock,
    /// A reattach that failed, retried at the next look.
    pending: Option<String>,
    /// Each side's receive queues as last looked at (`None`: unreadable, or gone).
    rx_queues: [Option<u32>; 2],
    /// The pipeline clock's epoch (its time 0), and the wall-clock time it stands for.
    pub started: WallClock,
    pub started_at: std::time::SystemTime,
}

/// Sends commands to every worker; cheap to clone into other threads.
#[derive(Clone)]
pub struct Commander {
    to: Vec<crossbeam_channel::Sender<Command>>,
}

impl Commander {
    /// A commander over these queues (the running appliance makes its own; tests make
    /// one over queues they read themselves).
    pub fn new(to: Vec<crossbeam_channel::Sender<Command>>) -> Commander {
        Commander { to }
    }

    pub fn workers(&self) -> usize {
        self.to.len()
    }

    /// Sends to worker `w`; `false` when its queue is full or it has stopped.
    pub fn send(&self, w: usize, c: Command) -> bool {
        self.to.get(w).is_some_and(|t| t.try_send(c).is_ok())
    }

    /// Whether worker `w`'s queue has room for a command now (false for no such worker).
    pub fn has_room(&self, w: usize) -> bool {
        self.to.get(w).is_some_and(|t| !t.is_full())
    }

    /// Takes worker `w`'s table while it runs (`Command::Export`): hands each chunk to
    /// `f` until the worker says it is done, waiting at most `wait` for each. The
    /// worker paces itself by the bounded channel and never waits on the caller.
    pub fn export(&self, w: usize, wait: std::time::Duration, mut f: impl FnMut(crate::control::ExportReply) -> Result<(), String>) -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::bounded(4);
        if !self.send(w, Command::Export { reply: tx }) {
            return Err(format!("worker {w} did not take the request (its command queue is full, or it stopped)"));
        }
        loop {
            match rx.recv_timeout(wait) {
                Ok(r @ crate::control::ExportReply::Done { .. }) => return f(r),
                Ok(r) => f(r)?,
                Err(_) => return Err(format!("worker {w} stopped answering for {} s", wait.as_secs())),
            }
        }
    }
}

/// The tables of an appliance about to start, built and committed, with the clock
/// they run on: what a restart restores its state into before [`start`].
pub struct Prepared {
    pub engines: Vec<Engine>,
    pub seed: u64,
    /// The pipeline clock's epoch (its time 0), and the wall-clock time it stands for.
    pub epoch: WallClock,
    pub started_at: std::time::SystemTime,
}

impl Prepared {
    /// The pipeline's time now.
    pub fn now(&self) -> Instant {
        since(self.epoch)
    }
}

fn since(epoch: WallClock) -> Instant {
    Instant::from_nanos(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Builds one engine per worker with `seed`, on huge pages where the kernel has them
/// (fewer TLB misses per lookup, as the benches measure it), all of its memory
/// committed now rather than page by page under traffic.
pub fn prepare(cfg: &Config, seed: u64) -> Prepared {
    let n = cfg.cores.len().max(1);
    let mut engine_cfg = cfg.engine;
    engine_cfg.seed = seed;
    let engines = (0..n)
        .map(|_| {
            let mut e = Engine::new(engine_cfg, Arc::clone(&cfg.policy), Instant::from_nanos(0));
            crate::sys::advise_huge_pages(&e.regions());
            e.commit();
            e
        })
        .collect();
    Prepared { engines, seed, epoch: WallClock::now(), started_at: std::time::SystemTime::now() }
}

/// Starts the workers on the tables of `prepared` (from [`prepare`], perhaps with
/// state restored into them), then attaches the XDP programs.
pub fn start(cfg: &Config, prepared: Prepared) -> Result<Running, StartError> {
    let missing = crate::sys::missing_capabilities();
    if !missing.is_empty() {
        return Err(StartError::Capabilities(missing));
    }
    let n = cfg.cores.len().max(1);
    assert_eq!(prepared.engines.len(), n, "one prepared engine per worker");
    for i in &cfg.interfaces {
        if i.queues as usize != n {
            return Err(StartError::Queues { name: i.name.clone(), queues: i.queues, workers: n });
        }
    }
    let mut ifindex = [0u32; 2];
    for (k, i) in cfg.interfaces.iter().enumerate() {
        ifindex[k] = bpf::ifindex(&i.name).map_err(|source| StartError::Interface { name: i.name.clone(), source })?;
        // A queue no socket binds: its frames are dropped by the program, unjudged.
        if let Some(have) = crate::host::rx_queues(&i.name)
            && have > i.queues
        {
            return Err(StartError::ExtraQueues { name: i.name.clone(), have, queues: i.queues });
        }
    }
    let maps = [
        Arc::new(XskMap::new(cfg.interfaces[0].queues).map_err(|e| OsError::new("creating the XSKMAP", e))?),
        Arc::new(XskMap::new(cfg.interfaces[1].queues).map_err(|e| OsError::new("creating the XSKMAP", e))?),
    ];
    let shed = if cfg.shed_syns {
        Some([
            Arc::new(ShedMap::new(cfg.interfaces[0].queues).map_err(|e| OsError::new("creating the shed map", e))?),
            Arc::new(ShedMap::new(cfg.interfaces[1].queues).map_err(|e| OsError::new("creating the shed map", e))?),
        ])
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let Prepared { engines, seed, epoch, started_at } = prepared;
    let (mut producers, mut consumers) = handoff::mesh(n, HANDOFF_RING);
    let mut workers = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    let mut commands = Vec::with_capacity(n);
    let mut denials = Vec::with_capacity(n);
    let mut changes = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flags = Arc::new(LinkFlags::all_up());
    for (w, mut engine) in engines.into_iter().enumerate() {
        let (publisher, reader) = stats::channel();
        readers.push(reader);
        let (ctx, crx) = crossbeam_channel::bounded(64);
        commands.push(ctx);
        let deny = if cfg.deny_log {
            let (p, c) = rtrb::RingBuffer::new(DENY_RING);
            denials.push(c);
            Some(p)
        } else {
            None
        };
        let sink = cfg.changes.map(|c| {
            engine.keep_changes(c.queue, c.refresh.into());
            let (sink, feed) = crate::control::change_feed(c.queue);
            changes.push(feed);
            sink
        });
        let spec = Spec {
            index: w,
            workers: n,
            core: cfg.cores.get(w).copied().flatten(),
            binding: Binding { ifindex, queue: w as u32, frames: cfg.umem_frames, ring_size: cfg.ring_size },
            burst: cfg.burst,
            idle: cfg.idle,
            engine,
            hasher: FlowHasher::new(seed),
            maps: [Arc::clone(&maps[0]), Arc::clone(&maps[1])],
            shed: shed.clone(),
            links: Arc::clone(&flags),
            to: std::mem::take(&mut producers[w]),
            from: std::mem::take(&mut consumers[w]),
            publisher,
            commands: crx,
            deny,
            changes: sink,
            log_rate: share(cfg.log_rate, n),
            stop: Arc::clone(&stop),
            epoch,
        };
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("holdfast-w{w}"))
            .spawn(move || worker::run(spec, ready))
            .map_err(|source| StartError::Thread { worker: w, source })?;
        workers.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(StartError::Worker(e))),
            Err(_) => failure = failure.or(Some(StartError::WorkerVanished)),
        }
    }
    let stop_all = |workers: Vec<JoinHandle<Option<worker::Final>>>| {
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
    };
    if let Some(e) = failure {
        stop_all(workers);
        return Err(e);
    }
    // Sockets are registered: now attach the programs, so no frame is redirected to a
    // queue without a socket.
    let events = LinkEvents::open().ok();
    let mut links: [Option<Link>; 2] = [None, None];
    for (k, i) in cfg.interfaces.iter().enumerate() {
        match attach(&maps[k], shed.as_ref().map(|m| &*m[k]), ifindex[k], i) {
            Ok(l) => links[k] = Some(l),
            Err(e) => {
                stop_all(workers);
                return Err(e.into());
            }
        }
    }
    let states = [link_state(&cfg.interfaces[0].name), link_state(&cfg.interfaces[1].name)];
    for (k, st) in states.iter().enumerate() {
        flags.set(k, st.is_up());
    }
    Ok(Running {
        workers,
        readers,
        commands,
        denials,
        changes,
        stop,
        links,
        maps,
        shed,
        interfaces: cfg.interfaces.clone(),
        ifindex,
        states,
        flags,
        events,
        last_look: WallClock::now(),
        pending: None,
        rx_queues: [0, 1].map(|k| crate::host::rx_queues(&cfg.interfaces[k].name)),
        started: epoch,
        started_at,
    })
}

/// Loads the redirect program over `map` (the shedding one with `shed`) and attaches it
/// to interface `i`, now at `ifindex`.
fn attach(map: &XskMap, shed: Option<&ShedMap>, ifindex: u32, i: &Interface) -> Result<Link, OsError> {
    let prog = match shed {
        Some(s) => Program::load_shedding(map, s),
        None => Program::load_redirect(map),
    }
    .map_err(|e| OsError::new("loading the XDP program", e))?;
    Link::attach(&prog, ifindex, i.mode).map_err(|e| OsError::new(format!("attaching XDP to {} ({:?} mode)", i.name, i.mode), e))
}

/// What changed about one interface since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkChange {
    /// 0 outside, 1 inside.
    pub side: usize,
    pub name: String,
    pub from: LinkState,
    pub to: LinkState,
}

/// What one look at the links found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkReport {
    pub changes: Vec<LinkChange>,
    /// An interface came back under a new index: the outcome of re-binding every
    /// worker's sockets and re-attaching the XDP program (`None`: not attempted), the
    /// failure rendered for the log (it is kept until the retry works).
    pub reattached: Option<Result<(), String>>,
}

/// How often links are looked at without a netlink notification.
const LINK_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

impl Running {
    /// Each interface's state (outside, inside) as last seen.
    pub fn link_states(&self) -> [LinkState; 2] {
        self.states
    }

    /// Each side's queues that no worker binds, as of the last look: the NIC's
    /// receive queues beyond `zones.*.queues` (changed since the start with
    /// `ethtool -L`, or a re-created interface). The program drops what arrives there.
    pub fn unbound_queues(&self) -> [u32; 2] {
        [0, 1].map(|k| self.rx_queues[k].map_or(0, |have| have.saturating_sub(self.interfaces[k].queues)))
    }

    /// The interfaces as configured.
    pub fn interfaces(&self) -> &[Interface; 2] {
        &self.interfaces
    }

    /// A reattach that failed and waits for its retry.
    pub fn reattach_pending(&self) -> Option<&str> {
        self.pending.as_deref()
    }

    /// Looks at both interfaces (at once when rtnetlink says a link changed, else every
    /// second) and acts: a side that is down or gone takes no frames (the workers
    /// count them as `link_down`); a side that came back under a new index gets every
    /// worker's sockets re-bound and the XDP program re-attached, tables kept. Call it
    /// from the control loop; returns the changes, for the log and the metrics.
    pub fn watch_links(&mut self) -> LinkReport {
        let notified = self.events.as_ref().is_some_and(LinkEvents::drain);
        let retry = self.pending.is_some() && self.last_look.elapsed() >= LINK_LOOK;
        if !notified && !retry && self.last_look.elapsed() < LINK_LOOK {
            return LinkReport::default();
        }
        self.last_look = WallClock::now();
        self.rx_queues = [0, 1].map(|k| crate::host::rx_queues(&self.interfaces[k].name));
        let now = [link_state(&self.interfaces[0].name), link_state(&self.interfaces[1].name)];
        let mut changes = Vec::new();
        for (side, (&to, &from)) in now.iter().zip(&self.states).enumerate() {
            if to != from {
                changes.push(LinkChange { side, name: self.interfaces[side].name.clone(), from, to });
            }
        }
        // Re-created (a new index) on either side, with both present: re-bind all.
        let moved = (0..2).any(|k| now[k].ifindex().is_some_and(|i| i != self.ifindex[k]));
        let mut reattached = None;
        if moved && now.iter().all(|s| s.ifindex().is_some()) {
            let result = self.reattach([now[0].ifindex().unwrap_or(0), now[1].ifindex().unwrap_or(0)]).map_err(|e| e.to_string());
            self.pending = result.as_ref().err().cloned();
            reattached = Some(result);
        }
        for (side, st) in now.iter().enumerate() {
            if st.ifindex().is_none() {
                // Its program went with it; the link's descriptor is defunct.
                self.links[side] = None;
            }
            let bound = st.ifindex() == Some(self.ifindex[side]) && self.links[side].is_some();
            self.flags.set(side, st.is_up() && bound && self.pending.is_none());
        }
        self.states = now;
        LinkReport { changes, reattached }
    }

    /// Re-binds every worker to `ifindex` and attaches the program where a link is
    /// missing or on an old index.
    fn reattach(&mut self, ifindex: [u32; 2]) -> Result<(), AttachError> {
        for k in 0..2 {
            self.flags.set(k, false);
        }
        let mut waits = Vec::new();
        for (w, to) in self.commands.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            to.try_send(Command::Rebind { ifindex, reply: tx }).map_err(|_| WorkerError::NotTaken { worker: w })?;
            waits.push(rx);
        }
        let deadline = WallClock::now() + std::time::Duration::from_secs(5);
        for (w, rx) in waits.into_iter().enumerate() {
            match rx.recv_timeout(deadline.saturating_duration_since(WallClock::now())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(WorkerError::NoAnswer { worker: w }.into()),
            }
        }
        self.ifindex = ifindex;
        for (k, &index) in ifindex.iter().enumerate() {
            if self.links[k].as_ref().is_some_and(|l| l.ifindex == index) {
                continue;
            }
            self.links[k] = None;
            self.links[k] = Some(attach(&self.maps[k], self.shed.as_ref().map(|m| &*m[k]), index, &self.interfaces[k])?);
        }
        Ok(())
    }

    /// The latest snapshot of every worker (never waits for a worker).
    pub fn snapshots(&mut self) -> Vec<Snapshot> {
        self.readers.iter_mut().map(|r| r.read()).collect()
    }

    pub fn heartbeats(&self) -> Vec<u64> {
        self.readers.iter().map(|r| r.heartbeat()).collect()
    }

    /// Workers whose thread has ended before a stop was asked for (a panic: its
    /// message went to standard error), as opposed to one whose loop is stuck.
    pub fn ended_workers(&self) -> Vec<usize> {
        self.workers.iter().enumerate().filter(|(_, h)| h.is_finished()).map(|(w, _)| w).collect()
    }

    /// While on, every worker drops what it receives as `syncing` (a takeover is
    /// committing the peer's flows).
    pub fn set_syncing(&self, on: bool) {
        self.flags.set_syncing(on);
    }

    /// The flag itself, for a thread that commits flows while the loop goes on.
    pub fn link_flags(&self) -> Arc<LinkFlags> {
        Arc::clone(&self.flags)
    }

    pub fn commander(&self) -> Commander {
        Commander { to: self.commands.clone() }
    }

    /// The workers' change feeds for state sync (once; empty without `changes`).
    pub fn take_changes(&mut self) -> Vec<ChangeFeed> {
        std::mem::take(&mut self.changes)
    }

    /// The workers' deny log queues (once; empty without `deny_log`).
    pub fn take_denials(&mut self) -> Vec<rtrb::Consumer<DenyEvent>> {
        std::mem::take(&mut self.denials)
    }

    /// Stops the workers (they drain what arrived) and joins those that stop within
    /// `grace`; detaches the programs. A worker that does not stop in time (stuck in a
    /// loop) is left behind — it ends with the process, and its XDP program detaches
    /// with the process's links — and named in [`Stopped::stuck`], its last published
    /// snapshot standing in for its final one. Never waits longer than `grace`.
    pub fn stop(mut self, grace: std::time::Duration) -> Stopped {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = WallClock::now() + grace;
        while WallClock::now() < deadline && !self.workers.iter().all(|h| h.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut out = Stopped::default();
        for (w, h) in self.workers.into_iter().enumerate() {
            if !h.is_finished() {
                out.stuck.push(w);
                out.snapshots.push(self.readers[w].read());
                out.engines.push(None);
                continue;
            }
            match h.join() {
                Ok(Some(f)) => {
                    out.snapshots.push(f.snapshot);
                    out.engines.push(Some(f.engine));
                }
                _ => {
                    out.snapshots.push(self.readers[w].read());
                    out.engines.push(None);
                }
            }
        }
        out.at = since(self.started);
        out
    }
}

/// What [`Running::stop`] leaves: each worker's final snapshot, its table (`None` for
/// a worker that is stuck or died), the workers that did not stop within the grace
/// period, and the pipeline's time when they had all stopped.
#[derive(Default)]
pub struct Stopped {
    pub snapshots: Vec<Snapshot>,
    pub engines: Vec<Option<Engine>>,
    pub stuck: Vec<usize>,
    pub at: Instant,
}
