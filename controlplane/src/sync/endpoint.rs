//! The sync endpoint: one control-plane thread with a UDP socket to the peer. Every
//! `sync.interval` it reads the workers' change queues (flows created, changed in TCP
//! state or status, seen again after `sync.refresh`, removed: the workers note them as
//! they happen and never wait on this thread) and sends them — `CT_NEW`, `CT_UPD`,
//! `CT_DEL` — packed into datagrams, numbered and kept for resending (FTFW). What the
//! queues could not hold is counted; then, and every `sync.resync_interval`, and when
//! the peer asks (RESYNC, or a restarted peer's HELLO), the whole table is swept and
//! compared with what the peer was told. What the peer sends is kept in the external
//! cache; on takeover it is committed into the local tables (docs/sync.md).

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_pipeline::FlowKey;
use holdfast_pipeline::engine::{AdoptTally, Change, ChangeKind, SyncedFlow};
use serde_json::{Value, json};

use super::ftfw::{self, Receiver, Reply, Sender};
use super::proto::{self, Message, flag, kind};
use crate::config::{Role, Sync, SyncMode};

/// Bytes of sync messages per datagram: under a 1500-byte MTU with IP and UDP headers.
pub const DATAGRAM: usize = 1400;
/// Datagrams read per loop round at most (then the loop's other work runs).
const READ_BURST: usize = 256;
/// Changes read from the workers' queues per loop round at most.
const CHANGES_PER_ROUND: usize = 65_536;
/// Shortest time between two full sweeps that lost changes ask for.
const SWEEP_GAP: Duration = Duration::from_secs(1);
/// FTFW: data messages sent and not yet acknowledged at most, however many wait (a
/// sweep of a million flows): four of the peer's ACK windows, between these bounds,
/// and never more than the resend queue holds. 1,200 messages (the default window of
/// 300) are ~55 datagrams, which a receiver's default socket buffer (212,992 bytes)
/// takes whole.
const WINDOW_MIN: usize = 1024;
const WINDOW_MAX: usize = 8192;

/// The local tables as the endpoint sees them.
pub trait Tables: Send + 'static {
    /// Every flow of the local tables now.
    fn sweep(&mut self) -> Result<Vec<SyncedFlow>, String>;
    /// Moves up to `max` changes the workers queued into `out`; returns how many
    /// changes were lost so far (a total that never goes down: queues that were full).
    fn changes(&mut self, out: &mut Vec<Change>, max: usize) -> u64;
    /// Commits `flows` (a takeover): what became of them.
    fn adopt(&mut self, flows: &mut dyn Iterator<Item = SyncedFlow>) -> Result<AdoptTally, String>;
}

/// A flow the peer sent, and when.
#[derive(Debug, Clone, Copy)]
pub struct Cached {
    pub flow: SyncedFlow,
    pub at: Instant,
}

impl Cached {
    /// Seconds left now.
    pub fn left(&self, now: Instant) -> u32 {
        self.flow.timeout_s.saturating_sub(u32::try_from(now.duration_since(self.at).as_secs()).unwrap_or(u32::MAX))
    }
}

/// What the endpoint shows: counters, the cache, the peer, the last takeover.
#[derive(Debug, Default)]
pub struct Status {
    pub sender: ftfw::Stats,
    pub receiver: ftfw::Stats,
    pub malformed: u64,
    /// Datagrams from any address but `sync.peer`: not read, only counted.
    pub strangers: u64,
    /// The socket's receive buffer in bytes, as the kernel reports it.
    pub recv_buffer: usize,
    pub expectations_ignored: u64,
    /// Flows the peer sent that did not fit in the cache (`sync.cache_limit`).
    pub cache_full: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_errors: u64,
    pub resend_queue: usize,
    /// Data messages made and not yet sent (they wait for the peer's ACKs), and the
    /// most that may wait; overflows of that bound.
    pub send_backlog: usize,
    pub send_backlog_limit: usize,
    pub backlog_overflows: u64,
    pub cache: HashMap<FlowKey, Cached>,
    pub local_flows: usize,
    pub last_heard: Option<Instant>,
    pub peer_alive: bool,
    pub active: bool,
    pub takeover: Option<Value>,
    pub sweep_errors: u64,
    pub last_sweep_ms: f64,
    /// Changes read from the workers' queues / lost to full queues.
    pub changes: u64,
    pub changes_lost: u64,
    /// Local flows the protocol cannot carry (QinQ ids beyond the 16-bit zone), each
    /// time one was to be sent.
    pub not_syncable: u64,
    /// Full sweeps done, and why the last one ran.
    pub sweeps: u64,
    pub last_sweep_why: &'static str,
    /// Still saying HELLO: the peer's HELLO_BACK has not come.
    pub greeting: bool,
}

impl Status {
    pub fn json(&self, now: Instant) -> Value {
        json!({
            "active": self.active,
            "peer_alive": self.peer_alive,
            "last_heard_s": self.last_heard.map(|t| now.duration_since(t).as_secs_f64()),
            "external_cache": self.cache.len(),
            "local_flows": self.local_flows,
            "messages_sent": self.sender.sent,
            "messages_resent": self.sender.resent,
            "messages_received": self.receiver.received,
            "acks_sent": self.receiver.acks_sent,
            "nacks_sent": self.receiver.nacks_sent,
            "nacks_received": self.sender.nacks_received,
            "messages_lost": self.receiver.lost,
            "malformed": self.malformed,
            "strangers": self.strangers,
            "recv_buffer": self.recv_buffer,
            "expectations_ignored": self.expectations_ignored,
            "cache_full": self.cache_full,
            "resend_queue": self.resend_queue,
            "send_backlog": self.send_backlog,
            "send_backlog_limit": self.send_backlog_limit,
            "backlog_overflows": self.backlog_overflows,
            "resend_overflow": self.sender.resend_overflow,
            "resyncs_received": self.sender.resyncs_received,
            "datagrams_sent": self.datagrams_sent,
            "datagrams_received": self.datagrams_received,
            "send_errors": self.send_errors,
            "sweep_errors": self.sweep_errors,
            "last_sweep_ms": self.last_sweep_ms,
            "changes": self.changes,
            "changes_lost": self.changes_lost,
            "not_syncable": self.not_syncable,
            "sweeps": self.sweeps,
            "last_sweep_why": self.last_sweep_why,
            "hello_back_pending": self.greeting,
            "takeover": self.takeover,
        })
    }
}

enum Request {
    Takeover(crossbeam_channel::Sender<Result<Value, String>>),
    Resync,
}

/// A running endpoint.
pub struct Endpoint {
    pub status: Arc<Mutex<Status>>,
    requests: crossbeam_channel::Sender<Request>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<crate::helper::Helper>,
    pub local: SocketAddr,
}

impl Endpoint {
    /// Binds `cfg.listen` and starts the thread.
    pub fn start(cfg: Sync, tables: Box<dyn Tables>) -> std::io::Result<Endpoint> {
        let sock = match (cfg.group, cfg.listen) {
            (Some(group), SocketAddr::V4(l)) => {
                // conntrackd's multicast transport: bound to the group's port, joined and
                // sent on the sync interface's address (its IPv4_interface), never
                // looped back, one hop.
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
                s.set_reuse_address(true)?;
                s.bind(&SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, l.port())).into())?;
                s.join_multicast_v4(&group, l.ip())?;
                s.set_multicast_if_v4(l.ip())?;
                s.set_multicast_loop_v4(false)?;
                s.set_multicast_ttl_v4(1)?;
                UdpSocket::from(s)
            }
            _ => UdpSocket::bind(cfg.listen)?,
        };
        sock.set_read_timeout(Some(WAIT))?;
        // A receive buffer that holds a few hundred milliseconds of the peer's sweep:
        // the default (~208 KiB, ~90 datagrams) overflowed whenever this thread was
        // off its core for a few ms during a NOTRACK sweep. Forced past
        // net.core.rmem_max (the appliance has CAP_NET_ADMIN; the usual cap, 208 KiB,
        // would halve it twice over); without the capability, up to the cap. What the
        // kernel granted is shown.
        let sr = socket2::SockRef::from(&sock);
        if holdfast_dataplane::sys::force_recv_buffer(std::os::fd::AsFd::as_fd(&sock), RECV_BUFFER).is_err() {
            let _ = sr.set_recv_buffer_size(RECV_BUFFER);
        }
        let recv_buffer = sr.recv_buffer_size().unwrap_or(0);
        if recv_buffer < RECV_BUFFER {
            crate::logln!(
                "holdfast: sync: the receive buffer is {} KiB, not the {} KiB asked for (no CAP_NET_ADMIN to pass net.core.rmem_max): raise net.core.rmem_max, or a peer's sweep may overflow it",
                recv_buffer / 1024,
                RECV_BUFFER / 1024
            );
        }
        let local = sock.local_addr()?;
        let status = Arc::new(Mutex::new(Status { active: cfg.role == Role::Active, recv_buffer, ..Status::default() }));
        let (tx, rx) = crossbeam_channel::bounded(8);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut l = Loop::new(cfg, sock, tables, Arc::clone(&status));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::Builder::new().name("holdfast-sync".into()).spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                while let Ok(r) = rx.try_recv() {
                    l.request(r);
                }
                l.round(Instant::now());
            }
        })?;
        Ok(Endpoint { status, requests: tx, stop, handle: Some(crate::helper::Helper::new(handle)), local })
    }

    /// Commits the external cache into the local tables now; waits up to `wait`.
    pub fn takeover(&self, wait: Duration) -> Result<Value, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.requests.try_send(Request::Takeover(tx)).map_err(|_| "the sync endpoint is busy or stopped".to_string())?;
        rx.recv_timeout(wait).map_err(|_| format!("no answer from the sync endpoint within {} s", wait.as_secs()))?
    }

    /// Asks the peer for its whole table.
    pub fn resync(&self) {
        let _ = self.requests.try_send(Request::Resync);
    }

    pub fn status_json(&self) -> Value {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.json(Instant::now())
    }

    /// The external cache, with the seconds left of each flow.
    pub fn external(&self) -> Vec<(SyncedFlow, u32)> {
        let now = Instant::now();
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.cache.values().map(|c| (c.flow, c.left(now))).collect()
    }

    /// Why the sync thread ended, if it has (it should run until [`Self::stop`]).
    pub fn ended(&mut self) -> Option<&str> {
        self.handle.as_mut().and_then(|h| h.ended())
    }

    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Loop {
    cfg: Sync,
    sock: UdpSocket,
    tables: Box<dyn Tables>,
    status: Arc<Mutex<Status>>,
    sender: Sender,
    receiver: Receiver,
    /// What the peer was last told (or will be, once `backlog` is sent) of each local
    /// flow, and when.
    sent: HashMap<FlowKey, (SyncedFlow, Instant)>,
    /// Data messages made (a sweep, the workers' changes) and not yet numbered, oldest
    /// first: they go out as the peer's ACKs leave room in `window`. A sweep of a
    /// million flows sent at once overflowed the peer's socket buffer and the resend
    /// queue both, and what fell out of the queue was never sent again.
    backlog: VecDeque<Message>,
    /// Unacknowledged data messages at most (FTFW; unbounded in the other modes).
    window: usize,
    backlog_limit: usize,
    backlog_overflows: u64,
    /// The backlog was dropped: the next sweep sends everything, and changes until then
    /// are left to it.
    send_all: bool,
    /// When the workers' queues are read next.
    next_drain: Instant,
    changes: Vec<Change>,
    /// Changes lost so far, as last read.
    lost: u64,
    /// When the whole table is swept next, and why.
    next_sweep: Instant,
    sweep_why: &'static str,
    last_sweep: Option<Instant>,
    /// The peer asked for everything (RESYNC, a restarted peer's HELLO): the next
    /// sweep sends all.
    resync: bool,
    /// The peer's HELLO phase is over (it sent a message without HELLO): a HELLO after
    /// that means it restarted.
    peer_settled: bool,
    out: Vec<u8>,
    /// One encoded message (kept to reuse its allocation).
    one: Vec<u8>,
    last_expiry: Instant,
    took_over: bool,
    /// NOTRACK and ALARM: the pace of data messages (`send_rate`); `None` in FTFW,
    /// where the peer's ACKs pace them.
    pace: Option<Pace>,
    numbering: Numbering,
}

/// The sync socket's receive buffer asked for, in bytes (the kernel doubles what it
/// is given for its bookkeeping; forced past `net.core.rmem_max` with CAP_NET_ADMIN,
/// capped there without it).
const RECV_BUFFER: usize = 4 << 20;

/// How long the loop waits for a datagram: 20 ms, or 1 ms while paced messages wait,
/// so that they go out in small bursts. The short wait is a sleep, not the socket's
/// timeout: that counts in jiffies (a 1 ms timeout waited 8 ms here, HZ=250).
const WAIT: Duration = Duration::from_millis(20);
const PACED_WAIT: Duration = Duration::from_millis(1);

/// NOTRACK and ALARM: the peer's numbering, to count what a gap in it says was lost
/// (nothing resends it there, but the operator must see it: `messages_lost`).
#[derive(Debug, Default)]
struct Numbering {
    next: Option<u32>,
}

impl Numbering {
    /// Messages lost before this one. A HELLO starts the numbering over (the peer
    /// restarted); a number behind the expected one (reordered, or a duplicate) says
    /// nothing lost and does not move the expectation back.
    fn lost(&mut self, seq: u32, hello: bool) -> u32 {
        let lost = match self.next {
            Some(next) if !hello => seq.wrapping_sub(next),
            _ => 0,
        };
        if lost >= 1 << 31 {
            return 0;
        }
        self.next = Some(seq.wrapping_add(1));
        lost
    }
}

/// A token bucket of messages: `rate` a second, at most five milliseconds' worth at
/// once (500 messages, ~23 datagrams, at the default rate: a burst a receiver's
/// default socket buffer takes whole).
#[derive(Debug)]
struct Pace {
    rate: f64,
    budget: f64,
    at: Instant,
}

impl Pace {
    fn new(rate: u32, now: Instant) -> Pace {
        Pace { rate: f64::from(rate), budget: 0.0, at: now }
    }

    fn burst(&self) -> f64 {
        (self.rate * 0.005).max(1.0)
    }

    /// Messages that may go now.
    fn allowed(&mut self, now: Instant) -> usize {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.budget = (self.budget + dt * self.rate).min(self.burst());
        self.budget as usize
    }

    fn spend(&mut self, n: usize) {
        self.budget = (self.budget - n as f64).max(0.0);
    }
}

impl Loop {
    fn new(cfg: Sync, sock: UdpSocket, tables: Box<dyn Tables>, status: Arc<Mutex<Status>>) -> Loop {
        let first = u32::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) & 0xffff_ffff).unwrap_or(0);
        let limit = if cfg.mode == SyncMode::Ftfw { cfg.resend_queue } else { 0 };
        let window =
            if cfg.mode == SyncMode::Ftfw { (4 * cfg.ack_window as usize).clamp(WINDOW_MIN, WINDOW_MAX).min(cfg.resend_queue.max(1)) } else { usize::MAX };
        // A sweep makes a message for every flow and one for every flow gone: twice the
        // tables at most (`cache_limit` is what they hold).
        let backlog_limit = cfg.cache_limit.saturating_mul(2).max(2 * WINDOW_MAX);
        let pace = (cfg.mode != SyncMode::Ftfw).then(|| Pace::new(cfg.send_rate, Instant::now()));
        Loop {
            sender: Sender::new(first, limit),
            receiver: Receiver::new(cfg.ack_window),
            cfg,
            sock,
            tables,
            status,
            sent: HashMap::new(),
            backlog: VecDeque::new(),
            window,
            backlog_limit,
            backlog_overflows: 0,
            send_all: false,
            next_drain: Instant::now(),
            changes: Vec::new(),
            lost: 0,
            // The first round sweeps: flows restored from a snapshot or there before.
            next_sweep: Instant::now(),
            sweep_why: "start",
            last_sweep: None,
            resync: false,
            peer_settled: false,
            out: Vec::with_capacity(DATAGRAM),
            one: Vec::with_capacity(256),
            last_expiry: Instant::now(),
            took_over: false,
            pace,
            numbering: Numbering::default(),
        }
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Takeover(reply) => {
                let _ = reply.send(self.takeover(Instant::now()));
            }
            Request::Resync => {
                let m = self.sender.ctl(flag::RESYNC, Some((0, 0)), Instant::now());
                self.queue(&m);
                self.flush();
            }
        }
    }

    fn round(&mut self, now: Instant) {
        self.receive(now);
        if now >= self.next_drain {
            self.next_drain = now + self.cfg.interval;
            self.drain(now);
        }
        if self.resync {
            self.schedule(now, "the peer asked for everything");
        }
        if self.cfg.mode == SyncMode::Alarm && self.last_sweep.is_some_and(|t| now.duration_since(t) >= self.cfg.refresh) {
            self.resync = true;
            self.schedule(now, "alarm mode: everything again every refresh");
        }
        if now >= self.next_sweep {
            // What the queues hold is older than the sweep: apply it first.
            self.drain(now);
            let why = std::mem::replace(&mut self.sweep_why, "resync_interval");
            self.next_sweep = now + self.cfg.resync_interval;
            self.last_sweep = Some(now);
            self.sweep(now, why);
        }
        self.pump(now);
        // In every mode: a standby must not take a quiet peer for a dead one.
        if let Some(a) = self.sender.alive(now) {
            self.queue(&a);
        }
        self.flush();
        if now.duration_since(self.last_expiry) >= Duration::from_secs(1) {
            self.last_expiry = now;
            self.status.lock().unwrap_or_else(|p| p.into_inner()).cache.retain(|_, c| c.left(now) > 0);
        }
        let alive = self.receiver.last_heard.is_some_and(|t| now.duration_since(t) < self.cfg.dead_interval);
        if !alive && !self.took_over && self.cfg.role == Role::Standby && self.cfg.auto_takeover && self.receiver.last_heard.is_some() {
            let r = self.takeover(now);
            crate::logln!(
                "holdfast: sync: the peer fell silent for {} s: takeover {}",
                self.cfg.dead_interval.as_secs_f64(),
                match &r {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("FAILED: {e}"),
                }
            );
        }
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.sender = self.sender.stats;
        s.receiver = self.receiver.stats;
        s.resend_queue = self.sender.queued();
        s.send_backlog = self.backlog.len();
        s.send_backlog_limit = self.backlog_limit;
        s.backlog_overflows = self.backlog_overflows;
        s.last_heard = self.receiver.last_heard;
        s.peer_alive = alive;
        s.local_flows = self.sent.len();
        s.greeting = self.sender.greeting_pending();
    }

    /// Sends a control message now (ACK/NACK must not wait for a sweep).
    fn ctl(&mut self, flags: u8, range: (u32, u32)) {
        let m = self.sender.ctl(flags, Some(range), Instant::now());
        self.queue(&m);
    }

    fn receive(&mut self, now: Instant) {
        let mut buf = [0u8; 65536];
        // The first read waits (up to the socket's 20 ms); the rest take what is there,
        // so that the ACKs they make go out at once. Waiting after each datagram held
        // every ACK back 20 ms, and the sender's window with it. While paced messages
        // wait, the loop sleeps 1 ms and takes what came meanwhile.
        let mut waiting = true;
        if self.pace.is_some() && !self.backlog.is_empty() {
            std::thread::sleep(PACED_WAIT);
            waiting = self.sock.set_nonblocking(true).is_err();
        }
        for _ in 0..READ_BURST {
            let got = self.sock.recv_from(&mut buf);
            if waiting && got.is_ok() {
                waiting = self.sock.set_nonblocking(true).is_err();
            }
            let n = match got {
                Ok((n, from)) if from.ip() == self.cfg.peer.ip() => n,
                // Anyone else is not the peer: not a word of theirs is read, but
                // the operator sees that someone sends.
                Ok(_) => {
                    self.status.lock().unwrap_or_else(|p| p.into_inner()).strangers += 1;
                    continue;
                }
                Err(_) => break,
            };
            self.status.lock().unwrap_or_else(|p| p.into_inner()).datagrams_received += 1;
            for m in proto::decode(&buf[..n]) {
                match m {
                    Err(_) => self.status.lock().unwrap_or_else(|p| p.into_inner()).malformed += 1,
                    Ok(m) => self.message(m, now),
                }
            }
        }
        if !waiting {
            let _ = self.sock.set_nonblocking(false);
        }
    }

    fn message(&mut self, m: Message, now: Instant) {
        let hello = matches!(&m, Message::Flow { flags, .. } | Message::Ctl { flags, .. } if flags & flag::HELLO != 0);
        if self.cfg.mode != SyncMode::Ftfw {
            // FTFW's receiver tracks the numbering itself (and asks for what is lost).
            self.receiver.stats.lost += u64::from(self.numbering.lost(m.seq(), hello));
        }
        if let Message::Flow { flags, .. } | Message::Ctl { flags, .. } = &m {
            self.sender.heard(*flags);
            if flags & flag::HELLO == 0 {
                self.peer_settled = true;
            } else if std::mem::take(&mut self.peer_settled) {
                // A HELLO from a peer that had finished its greeting: it restarted, with
                // an empty cache. Send it everything.
                self.resync = true;
            }
        }
        match m {
            Message::Flow { kind: k, flags, seq, flow } => {
                let apply = if self.cfg.mode == SyncMode::Ftfw {
                    let got = self.receiver.message(seq, flags & flag::HELLO != 0, false, now);
                    for (f, range) in got.send {
                        self.ctl(f, range);
                    }
                    if got.resync {
                        self.ctl(flag::RESYNC, (0, 0));
                    }
                    got.apply
                } else {
                    self.receiver.last_heard = Some(now);
                    self.receiver.stats.received += 1;
                    true
                };
                if apply {
                    let key = flow.key().0;
                    let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    if k == kind::CT_DEL {
                        s.cache.remove(&key);
                    } else if s.cache.len() < self.cfg.cache_limit || s.cache.contains_key(&key) {
                        s.cache.insert(key, Cached { flow, at: now });
                    } else {
                        s.cache_full += 1;
                    }
                }
            }
            Message::Ctl { flags, seq, .. } => {
                if self.cfg.mode == SyncMode::Ftfw {
                    let got = self.receiver.message(seq, flags & flag::HELLO != 0, true, now);
                    for (f, range) in got.send {
                        self.ctl(f, range);
                    }
                } else {
                    self.receiver.last_heard = Some(now);
                }
                match self.sender.control(&m) {
                    Reply::None => {}
                    Reply::Resync => self.resync = true,
                    Reply::Send(again) => self.send_again(again, now),
                }
            }
            Message::Expectation { .. } => {
                self.receiver.last_heard = Some(now);
                self.status.lock().unwrap_or_else(|p| p.into_inner()).expectations_ignored += 1;
            }
        }
    }

    /// Sends messages the peer did not get, each flow once and as it is now: what the
    /// peer was last told of it, or `CT_DEL` if it is gone since — an old `CT_NEW` sent
    /// after the `CT_DEL` that followed it would bring the flow back on the peer.
    fn send_again(&mut self, again: Vec<Message>, now: Instant) {
        let mut done = std::collections::HashSet::with_capacity(again.len());
        for m in again {
            let Message::Flow { flow, .. } = m else { continue };
            let key = flow.key().0;
            if !done.insert(key) {
                continue;
            }
            let m = match self.sent.get(&key) {
                Some((f, _)) => Message::Flow { kind: kind::CT_UPD, flags: 0, seq: 0, flow: *f },
                None => Message::Flow { kind: kind::CT_DEL, flags: 0, seq: 0, flow },
            };
            let m = self.sender.resend(m, now);
            self.queue(&m);
        }
    }

    /// A full sweep as soon as the last one is `SWEEP_GAP` old.
    fn schedule(&mut self, now: Instant, why: &'static str) {
        let at = self.last_sweep.map_or(now, |t| (t + SWEEP_GAP).max(now));
        if at < self.next_sweep {
            self.next_sweep = at;
            self.sweep_why = why;
        }
    }

    /// Reads the workers' queues and sends what they hold; asks for a full sweep when
    /// a queue overflowed since the last look.
    fn drain(&mut self, now: Instant) {
        let mut changes = std::mem::take(&mut self.changes);
        changes.clear();
        let lost = self.tables.changes(&mut changes, CHANGES_PER_ROUND);
        if lost > self.lost {
            crate::logln!(
                "holdfast: sync: {} changes did not fit in the workers' queues (sync.queue): the whole table is swept to recover them",
                lost - self.lost
            );
            self.lost = lost;
            self.schedule(now, "changes lost to a full queue");
        }
        let mut unsent = 0u64;
        for c in &changes {
            if !proto::syncable(&c.flow) {
                unsent += 1;
                continue;
            }
            let key = c.flow.key().0;
            let m = match c.kind {
                ChangeKind::New | ChangeKind::Update => {
                    let kind = if self.sent.insert(key, (c.flow, now)).is_some() { kind::CT_UPD } else { kind::CT_NEW };
                    Message::Flow { kind, flags: 0, seq: 0, flow: c.flow }
                }
                // Only what the peer was told of needs a word.
                ChangeKind::Delete => match self.sent.remove(&key) {
                    Some(_) => Message::Flow { kind: kind::CT_DEL, flags: 0, seq: 0, flow: c.flow },
                    None => continue,
                },
            };
            self.emit(m, now);
        }
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.changes += changes.len() as u64;
        s.changes_lost = lost;
        s.not_syncable += unsent;
        drop(s);
        self.changes = changes;
    }

    /// Sweeps the local tables and sends what changed.
    fn sweep(&mut self, now: Instant, why: &'static str) {
        let t = Instant::now();
        let flows = match self.tables.sweep() {
            Ok(f) => f,
            Err(e) => {
                let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                s.sweep_errors += 1;
                if s.sweep_errors == 1 {
                    crate::logln!("holdfast: sync: sweeping the tables failed (retried every second): {e}");
                }
                drop(s);
                self.next_sweep = now + SWEEP_GAP;
                self.sweep_why = why;
                return;
            }
        };
        let all = std::mem::take(&mut self.resync) | std::mem::take(&mut self.send_all);
        let mut seen: HashMap<FlowKey, SyncedFlow> = HashMap::with_capacity(flows.len());
        let mut unsent = 0u64;
        for f in flows {
            if proto::syncable(&f) {
                seen.insert(f.key().0, f);
            } else {
                unsent += 1;
            }
        }
        let mut out = Vec::new();
        for (k, f) in &seen {
            let send = match self.sent.get(k) {
                None => Some(kind::CT_NEW),
                Some((old, at)) => {
                    let changed = old.tcp_state != f.tcp_state || old.status != f.status;
                    // The peer's timer runs from what it was told: behind by more than a
                    // refresh period (traffic whose notes were lost), it needs the truth.
                    let told = old.timeout_s.saturating_sub(u32::try_from(now.duration_since(*at).as_secs()).unwrap_or(u32::MAX));
                    let slack = u32::try_from(self.cfg.refresh.as_secs()).unwrap_or(u32::MAX).min(f.timeout_s / 2);
                    (all || changed || f.timeout_s > told.saturating_add(slack)).then_some(kind::CT_UPD)
                }
            };
            if let Some(kind) = send {
                out.push(Message::Flow { kind, flags: 0, seq: 0, flow: *f });
                self.sent.insert(*k, (*f, now));
            }
        }
        let gone: Vec<FlowKey> = self.sent.keys().filter(|k| !seen.contains_key(k)).copied().collect();
        for k in gone {
            if let Some((f, _)) = self.sent.remove(&k) {
                out.push(Message::Flow { kind: kind::CT_DEL, flags: 0, seq: 0, flow: f });
            }
        }
        for m in out {
            self.emit(m, now);
        }
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.last_sweep_ms = t.elapsed().as_secs_f64() * 1e3;
        s.sweeps += 1;
        s.last_sweep_why = why;
        s.not_syncable += unsent;
    }

    /// Queues a data message to be numbered and sent when the window allows. A backlog
    /// at its bound (a peer that acknowledges nothing for a long time while flows come
    /// and go) is dropped, and the next sweep tells the peer the whole table instead:
    /// every flow, and the removal of every flow it may hold that is gone (the
    /// removals dropped are noted in `sent` again for that). Until that sweep every
    /// message is left to it the same way.
    fn emit(&mut self, m: Message, now: Instant) {
        if !self.send_all && self.backlog.len() >= self.backlog_limit {
            self.backlog_overflows += 1;
            if self.backlog_overflows == 1 {
                crate::logln!(
                    "holdfast: sync: {} message(s) wait for the peer's ACKs, the most that may (twice the tables' capacity); dropped, and the whole table is sent again",
                    self.backlog.len()
                );
            }
            for m in std::mem::take(&mut self.backlog) {
                self.leave_to_sweep(m, now);
            }
            self.send_all = true;
            self.schedule(now, "the send backlog overflowed");
        }
        if self.send_all {
            self.leave_to_sweep(m, now);
        } else {
            self.backlog.push_back(m);
        }
    }

    /// A message not sent because the next sweep says everything: a removal goes back
    /// into `sent`, where the sweep finds the flow gone.
    fn leave_to_sweep(&mut self, m: Message, now: Instant) {
        if let Message::Flow { kind: kind::CT_DEL, flow, .. } = m {
            self.sent.insert(flow.key().0, (flow, now));
        }
    }

    /// Numbers and sends waiting data messages: in FTFW while fewer than `window` wait
    /// for the peer's ACK, in NOTRACK and ALARM as `send_rate` allows.
    fn pump(&mut self, now: Instant) {
        let allowed = match &mut self.pace {
            Some(p) if !self.backlog.is_empty() => p.allowed(now),
            _ => usize::MAX,
        };
        let mut sent = 0;
        while sent < allowed && self.sender.queued() < self.window {
            let Some(m) = self.backlog.pop_front() else { break };
            let m = self.sender.data(m, now);
            self.queue(&m);
            sent += 1;
        }
        if let Some(p) = &mut self.pace {
            p.spend(sent);
        }
    }

    /// Adds a message to the datagram being built; sends it first if it would not fit.
    fn queue(&mut self, m: &Message) {
        self.one.clear();
        proto::encode(m, &mut self.one);
        if self.out.len() + self.one.len() > DATAGRAM {
            self.flush();
        }
        self.out.extend_from_slice(&self.one);
    }

    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let to = match self.cfg.group {
            Some(g) => SocketAddr::from((g, self.cfg.listen.port())),
            None => self.cfg.peer,
        };
        let ok = self.sock.send_to(&self.out, to).is_ok();
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            s.datagrams_sent += 1;
        } else {
            s.send_errors += 1;
        }
        self.out.clear();
    }

    fn takeover(&mut self, now: Instant) -> Result<Value, String> {
        let t = Instant::now();
        // The cache is read as the flows are handed out (the workers adopt the first
        // while the rest are read), under the status lock: `/status` waits meanwhile.
        let status = Arc::clone(&self.status);
        let s = status.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0usize;
        let mut flows = s.cache.values().map(|c| SyncedFlow { timeout_s: c.left(now), ..c.flow }).filter(|f| f.timeout_s > 0).inspect(|_| n += 1);
        let d = self.tables.adopt(&mut flows);
        drop(s);
        let d = d?;
        self.took_over = true;
        let v = json!({
            "flows": n,
            "adopted": d.adopted,
            "refused": d.refused(),
            "refused_by": {"table_full": d.table_full, "ipv6_pool_full": d.ipv6_pool_full, "source_limit": d.source_limit, "invalid": d.invalid},
            "evicted": d.evicted,
            "seconds": t.elapsed().as_secs_f64(),
        });
        if d.refused() > 0 {
            // Each refused flow is a connection whose next packets are denied here.
            crate::logln!(
                "holdfast: sync: takeover refused {} of {n} synced flow(s) (table_full {}, ipv6_pool_full {}, source_limit {}, invalid {}); their next packets are denied here. Full: conntrack.capacity or conntrack.ipv6_share is smaller than the peer's; source_limit: conntrack.per_source_limit",
                d.refused(),
                d.table_full,
                d.ipv6_pool_full,
                d.source_limit,
                d.invalid
            );
        }
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.active = true;
        s.takeover = Some(v.clone());
        Ok(v)
    }
}

/// A synced flow as `holdfast flows` prints a tracked one (plus `"external": true`).
pub fn flow_json(f: &SyncedFlow, left_s: u32) -> Value {
    let ip = |a| holdfast_pipeline::flow::to_ip(a, f.v6).to_string();
    let state = f.state_name();
    let (sport, dport) = match f.icmp {
        Some((ty, _, id)) => (id, u16::from(ty)),
        None => (f.sport, f.dport),
    };
    let mut v = json!({
        "proto": crate::replay::proto_name(f.proto),
        "src": ip(f.src),
        "sport": sport,
        "dst": ip(f.dst),
        "dport": dport,
        "state": state,
        "expires_in_s": left_s,
        "assured": f.status & holdfast_pipeline::engine::ips::ASSURED != 0,
        "external": true,
    });
    if f.vlan != 0 {
        v["vlan"] = json!([f.vlan & 0xfff, f.vlan >> 12]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_the_numbering_counts_what_it_lost_and_nothing_else() {
        let mut n = Numbering::default();
        assert_eq!(n.lost(1000, true), 0, "the first message sets the numbering");
        assert_eq!(n.lost(1001, false), 0);
        assert_eq!(n.lost(1005, false), 3, "1002..=1004");
        assert_eq!(n.lost(1003, false), 0, "late: not lost, and the expectation stays");
        assert_eq!(n.lost(1005, false), 0, "a duplicate");
        assert_eq!(n.lost(1006, false), 0);
        assert_eq!(n.lost(7, true), 0, "a HELLO: the peer restarted, numbering anew");
        assert_eq!(n.lost(8, false), 0);
        let mut w = Numbering { next: Some(u32::MAX - 1) };
        assert_eq!(w.lost(1, false), 3, "across the wrap: MAX-1, MAX, 0");
    }

    #[test]
    fn the_pace_allows_the_rate_and_no_more_than_five_milliseconds_at_once() {
        let t0 = Instant::now();
        let mut p = Pace::new(100_000, t0);
        assert_eq!(p.allowed(t0), 0, "nothing before time has passed");
        assert_eq!(p.allowed(t0 + Duration::from_millis(1)), 100);
        p.spend(60);
        assert_eq!(p.allowed(t0 + Duration::from_millis(2)), 140, "what was not spent is kept");
        p.spend(140);
        assert_eq!(p.allowed(t0 + Duration::from_secs(10)), 500, "a long pause gives one burst, not ten seconds' worth");
        p.spend(1000);
        assert_eq!(p.allowed(t0 + Duration::from_secs(10)), 0, "overspending cannot go below nothing");
        // A clock that does not move, or a rate too small for a message in a burst.
        assert_eq!(p.allowed(t0), 0);
        let mut slow = Pace::new(1000, t0);
        assert_eq!(slow.allowed(t0 + Duration::from_secs(1)), 5);
    }
}
