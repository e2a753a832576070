//! The sync endpoint: one control-plane thread with a UDP socket to the peer. Every
//! `sync.interval` it sweeps the local tables (the workers hand them over a slice per
//! housekeeping round: they never wait on it), sends what changed since the last
//! sweep — `CT_NEW`, `CT_UPD` on a state change or every `sync.refresh`, `CT_DEL` —
//! packed into datagrams, numbered and kept for resending (FTFW), and keeps what the
//! peer sends in the external cache. A flow that changes twice between sweeps is sent
//! once, as it is then; one created and gone between sweeps is never sent: what the
//! sweep misses is never silently inconsistent, only later. On takeover the cache is
//! committed into the local tables (docs/sync.md).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use holdfast_pipeline::FlowKey;
use holdfast_pipeline::engine::SyncedFlow;
use serde_json::{Value, json};

use super::ftfw::{self, Receiver, Reply, Sender};
use super::proto::{self, Message, flag, kind};
use crate::config::{Role, Sync, SyncMode};

/// Bytes of sync messages per datagram: under a 1500-byte MTU with IP and UDP headers.
pub const DATAGRAM: usize = 1400;
/// Datagrams read per loop round at most (then the loop's other work runs).
const READ_BURST: usize = 256;

/// The local tables as the endpoint sees them.
pub trait Tables: Send + 'static {
    /// Every flow of the local tables now.
    fn sweep(&mut self) -> Result<Vec<SyncedFlow>, String>;
    /// Commits `flows` (a takeover); returns (adopted, refused).
    fn adopt(&mut self, flows: Vec<SyncedFlow>) -> Result<(u64, u64), String>;
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
    pub expectations_ignored: u64,
    /// Flows the peer sent that did not fit in the cache (`sync.cache_limit`).
    pub cache_full: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_errors: u64,
    pub resend_queue: usize,
    pub cache: HashMap<FlowKey, Cached>,
    pub local_flows: usize,
    pub last_heard: Option<Instant>,
    pub peer_alive: bool,
    pub active: bool,
    pub takeover: Option<Value>,
    pub sweep_errors: u64,
    pub last_sweep_ms: f64,
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
            "expectations_ignored": self.expectations_ignored,
            "cache_full": self.cache_full,
            "resend_queue": self.resend_queue,
            "resend_overflow": self.sender.resend_overflow,
            "resyncs_received": self.sender.resyncs_received,
            "datagrams_sent": self.datagrams_sent,
            "datagrams_received": self.datagrams_received,
            "send_errors": self.send_errors,
            "sweep_errors": self.sweep_errors,
            "last_sweep_ms": self.last_sweep_ms,
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
    handle: Option<JoinHandle<()>>,
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
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let local = sock.local_addr()?;
        let status = Arc::new(Mutex::new(Status { active: cfg.role == Role::Active, ..Status::default() }));
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
        Ok(Endpoint { status, requests: tx, stop, handle: Some(handle), local })
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

    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
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
    /// What was last sent of each local flow, and when.
    sent: HashMap<FlowKey, (SyncedFlow, Instant)>,
    next_sweep: Instant,
    /// The peer asked for everything (RESYNC): the next sweep sends all.
    resync: bool,
    out: Vec<u8>,
    last_expiry: Instant,
    took_over: bool,
}

impl Loop {
    fn new(cfg: Sync, sock: UdpSocket, tables: Box<dyn Tables>, status: Arc<Mutex<Status>>) -> Loop {
        let first = u32::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) & 0xffff_ffff).unwrap_or(0);
        let limit = if cfg.mode == SyncMode::Ftfw { cfg.resend_queue } else { 0 };
        Loop {
            sender: Sender::new(first, limit),
            receiver: Receiver::new(cfg.ack_window),
            cfg,
            sock,
            tables,
            status,
            sent: HashMap::new(),
            next_sweep: Instant::now(),
            resync: false,
            out: Vec::with_capacity(DATAGRAM),
            last_expiry: Instant::now(),
            took_over: false,
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
        if now >= self.next_sweep {
            self.next_sweep = now + self.cfg.interval;
            self.sweep(now);
        }
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
            eprintln!(
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
        s.last_heard = self.receiver.last_heard;
        s.peer_alive = alive;
        s.local_flows = self.sent.len();
    }

    /// Sends a control message now (ACK/NACK must not wait for a sweep).
    fn ctl(&mut self, flags: u8, range: (u32, u32)) {
        let m = self.sender.ctl(flags, Some(range), Instant::now());
        self.queue(&m);
    }

    fn receive(&mut self, now: Instant) {
        let mut buf = [0u8; 65536];
        for _ in 0..READ_BURST {
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from.ip() == self.cfg.peer.ip() => n,
                // Anyone else is not the peer: not a word of theirs is read.
                Ok(_) => continue,
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
    }

    fn message(&mut self, m: Message, now: Instant) {
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
                match self.sender.control(&m, now) {
                    Reply::None => {}
                    Reply::Resync => self.resync = true,
                    Reply::Send(again) => {
                        for a in again {
                            self.queue(&a);
                        }
                    }
                }
            }
            Message::Expectation { .. } => {
                self.receiver.last_heard = Some(now);
                self.status.lock().unwrap_or_else(|p| p.into_inner()).expectations_ignored += 1;
            }
        }
    }

    /// Sweeps the local tables and sends what changed.
    fn sweep(&mut self, now: Instant) {
        let t = Instant::now();
        let flows = match self.tables.sweep() {
            Ok(f) => f,
            Err(e) => {
                let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                s.sweep_errors += 1;
                if s.sweep_errors == 1 {
                    eprintln!("holdfast: sync: sweeping the tables failed (retried every interval): {e}");
                }
                return;
            }
        };
        let all = std::mem::take(&mut self.resync)
            || self.cfg.mode == SyncMode::Alarm && self.sent.values().next().is_some_and(|(_, at)| now.duration_since(*at) >= self.cfg.refresh);
        let mut seen: HashMap<FlowKey, SyncedFlow> = HashMap::with_capacity(flows.len());
        for f in flows {
            seen.insert(f.key().0, f);
        }
        let mut out = Vec::new();
        for (k, f) in &seen {
            let send = match self.sent.get(k) {
                None => Some(kind::CT_NEW),
                Some((old, at)) => {
                    let changed = old.tcp_state != f.tcp_state || old.status != f.status;
                    (all || changed || now.duration_since(*at) >= self.cfg.refresh).then_some(kind::CT_UPD)
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
            let m = self.sender.data(m, now);
            self.queue(&m);
        }
        self.status.lock().unwrap_or_else(|p| p.into_inner()).last_sweep_ms = t.elapsed().as_secs_f64() * 1e3;
    }

    /// Adds a message to the datagram being built; sends it first if it would not fit.
    fn queue(&mut self, m: &Message) {
        let mut b = Vec::new();
        proto::encode(m, &mut b);
        if self.out.len() + b.len() > DATAGRAM {
            self.flush();
        }
        self.out.extend_from_slice(&b);
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
        let flows: Vec<SyncedFlow> = {
            let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.cache.values().map(|c| SyncedFlow { timeout_s: c.left(now), ..c.flow }).filter(|f| f.timeout_s > 0).collect()
        };
        let n = flows.len();
        let (adopted, refused) = self.tables.adopt(flows)?;
        self.took_over = true;
        let v = json!({"flows": n, "adopted": adopted, "refused": refused, "seconds": t.elapsed().as_secs_f64()});
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
    json!({
        "proto": crate::replay::proto_name(f.proto),
        "src": ip(f.src),
        "sport": sport,
        "dst": ip(f.dst),
        "dport": dport,
        "state": state,
        "expires_in_s": left_s,
        "assured": f.status & holdfast_pipeline::engine::ips::ASSURED != 0,
        "external": true,
    })
}
