//! The benchmark's load client: one epoll loop (mio) over non-blocking kernel sockets,
//! bound round-robin to the given source addresses (ports 1024–65535 when the
//! namespace's `ip_local_port_range` says so), connecting round-robin to the servers.
//!
//! Three modes, as RFC 9411 measures them:
//! - `cps` — connections per second (§7.2): open, one GET, read the whole response,
//!   close (the client's FIN first), open the next; `concurrency` in flight. TTFB is
//!   from the SYN to the first byte of the response (§7.7's definition).
//! - `tps` — transactions per second (§7.4): `concurrency` keep-alive connections, a GET
//!   after each response. TTFB is from the request to the response's first byte.
//! - `hold` — concurrent connection capacity (§7.3): open `connections` connections,
//!   one transaction each (so both ends and the firewall hold them established), stay
//!   idle for `idle` (what the lab fills with a SYN flood), then ask each one again and
//!   count the answers. The first round reports the opening rate.
//!
//! Every wait is bounded by `timeout` (connect, request, response): a FIFO of deadlines,
//! one per state change, checked every poll (constant timeout: the FIFO stays sorted).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use serde_json::{Value, json};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use super::Latency;

/// The largest response header block accepted.
const MAX_HEAD: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cps,
    Tps,
    Hold,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub servers: Vec<SocketAddr>,
    /// Source addresses, used in turn; empty: the kernel chooses.
    pub sources: Vec<IpAddr>,
    pub mode: Mode,
    /// Connections in flight (cps), open (tps), or opening / asked at once (hold).
    pub concurrency: usize,
    /// How long cps and tps measure.
    pub duration: Duration,
    /// hold: connections to open and keep.
    pub connections: usize,
    /// hold: how long the connections stay idle between the two rounds.
    pub idle: Duration,
    /// Bound on each connect, request and response.
    pub timeout: Duration,
}

/// Why a connection did not do what it was asked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub connect_refused: u64,
    pub connect_timeout: u64,
    pub connect_other: u64,
    /// No free local port on any source address (EADDRINUSE/EADDRNOTAVAIL at bind).
    pub no_local_port: u64,
    /// Out of descriptors (EMFILE/ENFILE): raise the limit or hold fewer.
    pub no_descriptor: u64,
    pub reset: u64,
    pub response_timeout: u64,
    /// The server closed before the whole response came.
    pub closed_early: u64,
    pub bad_response: u64,
    /// hold: an idle connection that the far end closed or reset.
    pub lost_while_idle: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect_refused
            + self.connect_timeout
            + self.connect_other
            + self.no_local_port
            + self.no_descriptor
            + self.reset
            + self.response_timeout
            + self.closed_early
            + self.bad_response
            + self.lost_while_idle
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    Requesting,
    Response,
    Idle,
}

struct Conn {
    stream: TcpStream,
    server: usize,
    state: State,
    /// When the connection started (SYN) and when the request went out.
    opened: Instant,
    asked: Instant,
    /// Which deadline in the FIFO is this connection's current one.
    stamp: u64,
    sent: usize,
    got_first: bool,
    head: Vec<u8>,
    /// Body bytes still to come once the head is read.
    body_left: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// cps, tps: the measured window; hold: opening.
    Run,
    /// tps: opening the keep-alive connections before the window.
    Warmup,
    /// hold: connections idle.
    Idle,
    /// hold: the second round.
    Check,
    /// Stop opening; wait for what is in flight.
    Drain,
}

struct Run<'o> {
    o: &'o ClientOptions,
    poll: Poll,
    conns: Slab<Conn>,
    deadlines: VecDeque<(usize, u64, Instant)>,
    stamp: u64,
    requests: Vec<Vec<u8>>,
    next_server: usize,
    next_source: usize,
    phase: Phase,
    errors: Errors,
    connect: Latency,
    ttfb: Latency,
    ttlb: Latency,
    opened: u64,
    established: u64,
    transactions: u64,
    /// Transactions (tps) or whole connections (cps) completed in the window.
    in_window: u64,
    /// hold: connections that finished their first transaction; answered the second.
    held: u64,
    answered: u64,
    /// hold: idle connections still to ask.
    to_ask: Vec<usize>,
    in_flight: usize,
    /// The measured window (cps, tps) and how long to wait for what is in flight.
    window_start: Instant,
    window: Duration,
    drain_until: Instant,
}

fn request(server: SocketAddr) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: holdfast-load\r\nAccept: */*\r\n\r\n", server.ip()).into_bytes()
}

impl<'o> Run<'o> {
    fn push_deadline(&mut self, key: usize, now: Instant) -> u64 {
        self.stamp += 1;
        self.deadlines.push_back((key, self.stamp, now + self.o.timeout));
        self.stamp
    }

    /// Opens one connection; false when no more can be opened now (no port or
    /// descriptor: counted).
    fn open(&mut self, now: Instant) -> bool {
        let server = self.next_server % self.o.servers.len();
        self.next_server += 1;
        let addr = self.o.servers[server];
        let s = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => {
                self.count_socket_error(&e);
                return false;
            }
        };
        if s.set_nonblocking(true).is_err() {
            self.errors.connect_other += 1;
            return false;
        }
        if !self.o.sources.is_empty() {
            // Each source in turn; a source whose ports are all taken is skipped.
            let mut bound = false;
            for _ in 0..self.o.sources.len() {
                let src = self.o.sources[self.next_source % self.o.sources.len()];
                self.next_source += 1;
                if s.bind(&SocketAddr::new(src, 0).into()).is_ok() {
                    bound = true;
                    break;
                }
            }
            if !bound {
                self.errors.no_local_port += 1;
                return false;
            }
        }
        self.opened += 1;
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => {
                self.count_connect_error(&e);
                return true;
            }
        }
        let mut stream = TcpStream::from_std(s.into());
        let key = self.conns.vacant_entry().key();
        if self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE).is_err() {
            self.errors.connect_other += 1;
            return true;
        }
        let stamp = self.push_deadline(key, now);
        self.conns.insert(Conn {
            stream,
            server,
            state: State::Connecting,
            opened: now,
            asked: now,
            stamp,
            sent: 0,
            got_first: false,
            head: Vec::new(),
            body_left: None,
        });
        self.in_flight += 1;
        true
    }

    /// Opens connections while `more` says so, at most `n` attempts (refusals come
    /// back at once: the attempts bound one turn of the loop).
    fn open_while(&mut self, now: Instant, n: usize, more: impl Fn(&Self) -> bool) {
        for _ in 0..n {
            if !more(self) || !self.open(now) {
                break;
            }
        }
    }

    /// Ends the measured window now: stop opening, wait up to `timeout` for what is in
    /// flight.
    fn end_window(&mut self, now: Instant) {
        self.window = now - self.window_start;
        self.phase = Phase::Drain;
        self.drain_until = now + self.o.timeout;
    }

    fn count_socket_error(&mut self, e: &io::Error) {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => self.errors.no_descriptor += 1,
            _ => self.errors.connect_other += 1,
        }
    }

    fn count_connect_error(&mut self, e: &io::Error) {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => self.errors.connect_refused += 1,
            Some(libc::ETIMEDOUT) => self.errors.connect_timeout += 1,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => self.errors.no_local_port += 1,
            Some(libc::ECONNRESET) => self.errors.reset += 1,
            _ => self.errors.connect_other += 1,
        }
    }

    fn close(&mut self, key: usize) {
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.state != State::Idle {
            self.in_flight -= 1;
        }
        // Dropping the stream closes it: a FIN, or a RST if data is unread.
    }

    /// Starts the request on `key` (its state becomes Requesting).
    fn ask(&mut self, key: usize, now: Instant) {
        let stamp = self.push_deadline(key, now);
        let c = &mut self.conns[key];
        if c.state == State::Idle {
            self.in_flight += 1;
        }
        c.state = State::Requesting;
        c.asked = now;
        c.stamp = stamp;
        c.sent = 0;
        c.got_first = false;
        c.body_left = None;
        self.write(key, now);
    }

    fn write(&mut self, key: usize, now: Instant) {
        let c = &mut self.conns[key];
        let req = &self.requests[c.server];
        while c.sent < req.len() {
            match c.stream.write(&req[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.errors.reset += 1;
                    self.close(key);
                    return;
                }
            }
        }
        let stamp = self.push_deadline(key, now);
        let c = &mut self.conns[key];
        c.state = State::Response;
        c.stamp = stamp;
    }

    fn event(&mut self, key: usize, readable: bool, scratch: &mut [u8], now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        match c.state {
            State::Connecting => {
                let status = match c.stream.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => match c.stream.peer_addr() {
                        Ok(_) => Ok(true),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false), // not yet
                        Err(e) => Err(e),
                    },
                };
                let opened = c.opened;
                match status {
                    Err(e) => {
                        self.count_connect_error(&e);
                        self.close(key);
                    }
                    Ok(false) => {}
                    Ok(true) => {
                        self.connect.record(now - opened);
                        self.established += 1;
                        self.ask(key, now);
                    }
                }
            }
            State::Requesting => self.write(key, now),
            State::Response if readable => self.read(key, scratch, now),
            State::Response => {}
            State::Idle => {
                // An idle connection has nothing to say: EOF or a reset means the far end
                // (or something between) lost it.
                let got = c.stream.read(scratch);
                match got {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(n) if n > 0 => {
                        self.errors.bad_response += 1;
                        self.close(key);
                    }
                    _ => {
                        self.errors.lost_while_idle += 1;
                        self.close(key);
                    }
                }
            }
        }
    }

    fn read(&mut self, key: usize, scratch: &mut [u8], now: Instant) {
        loop {
            let c = &mut self.conns[key];
            let n = match c.stream.read(scratch) {
                Ok(0) => {
                    self.errors.closed_early += 1;
                    self.close(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.errors.reset += 1;
                    self.close(key);
                    return;
                }
            };
            if !c.got_first {
                c.got_first = true;
                // cps: from the SYN (RFC 9411 §7.7); otherwise from the request.
                let from = if self.o.mode == Mode::Cps { c.opened } else { c.asked };
                self.ttfb.record(now - from);
            }
            let mut data = &scratch[..n];
            if c.body_left.is_none() {
                c.head.extend_from_slice(data);
                match super::find(&c.head, b"\r\n\r\n") {
                    Some(end) => match super::response_head(&c.head[..end]) {
                        Some((200, len)) => {
                            let extra = c.head.len() - (end + 4);
                            c.head = Vec::new();
                            if extra > len {
                                self.errors.bad_response += 1;
                                self.close(key);
                                return;
                            }
                            c.body_left = Some(len - extra);
                            data = &[];
                        }
                        _ => {
                            self.errors.bad_response += 1;
                            self.close(key);
                            return;
                        }
                    },
                    None if c.head.len() > MAX_HEAD => {
                        self.errors.bad_response += 1;
                        self.close(key);
                        return;
                    }
                    None => continue,
                }
            }
            let left = c.body_left.as_mut().expect("head read");
            if data.len() > *left {
                self.errors.bad_response += 1;
                self.close(key);
                return;
            }
            *left -= data.len();
            if *left == 0 {
                self.done(key, now);
                return;
            }
        }
    }

    /// A whole response arrived on `key`.
    fn done(&mut self, key: usize, now: Instant) {
        let c = &self.conns[key];
        let (opened, asked) = (c.opened, c.asked);
        self.ttlb.record(now - if self.o.mode == Mode::Cps { opened } else { asked });
        self.transactions += 1;
        match (self.o.mode, self.phase) {
            (Mode::Cps, _) => {
                if self.phase == Phase::Run {
                    self.in_window += 1;
                }
                self.close(key);
            }
            (Mode::Tps, Phase::Run) => {
                self.in_window += 1;
                self.ask(key, now);
            }
            (Mode::Tps, Phase::Warmup) => self.ask(key, now),
            (Mode::Tps, _) => self.close(key),
            (Mode::Hold, phase) => {
                if phase == Phase::Check {
                    self.answered += 1;
                } else {
                    self.held += 1;
                }
                self.conns[key].state = State::Idle;
                self.in_flight -= 1;
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(key, stamp, at)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(c) = self.conns.get(key) else { continue };
            if c.stamp != stamp || c.state == State::Idle {
                continue;
            }
            if c.state == State::Connecting {
                self.errors.connect_timeout += 1;
            } else {
                self.errors.response_timeout += 1;
            }
            self.close(key);
        }
    }
}

/// What a run measured, as JSON (`mode`, the counts, `errors`, and the latencies with
/// their buckets so that several clients' results merge).
pub fn run(o: &ClientOptions, stop: impl Fn() -> bool, mut on_event: impl FnMut(&Value)) -> io::Result<Value> {
    if o.servers.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no --server"));
    }
    let want_fds = match o.mode {
        Mode::Hold => o.connections,
        _ => o.concurrency,
    } as u64
        + 64;
    let fd_limit = holdfast_dataplane::sys::raise_nofile(want_fds)?;
    let mut r = Run {
        o,
        poll: Poll::new()?,
        conns: Slab::with_capacity(o.concurrency.min(1 << 20)),
        deadlines: VecDeque::new(),
        stamp: 0,
        requests: o.servers.iter().map(|&s| request(s)).collect(),
        next_server: 0,
        next_source: 0,
        phase: if o.mode == Mode::Tps { Phase::Warmup } else { Phase::Run },
        errors: Errors::default(),
        connect: Latency::default(),
        ttfb: Latency::default(),
        ttlb: Latency::default(),
        opened: 0,
        established: 0,
        transactions: 0,
        in_window: 0,
        held: 0,
        answered: 0,
        to_ask: Vec::new(),
        in_flight: 0,
        window_start: Instant::now(),
        window: Duration::ZERO,
        drain_until: Instant::now(),
    };
    let concurrency = o.concurrency.max(1);
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 64 * 1024];
    let started = r.window_start;
    let mut open_seconds = 0.0;
    let mut idle_until = started;
    let mut check_start = started;
    let mut check_seconds = 0.0;
    let mut stopped = false;
    loop {
        let now = Instant::now();
        if !stopped && stop() {
            stopped = true;
            if r.phase == Phase::Run || r.phase == Phase::Warmup {
                r.end_window(now);
            } else {
                r.phase = Phase::Drain;
                r.drain_until = now + o.timeout;
            }
        }
        // What to open or ask now.
        match (o.mode, r.phase) {
            (Mode::Cps, Phase::Run) => {
                if now >= r.window_start + o.duration {
                    r.end_window(now);
                } else {
                    r.open_while(now, concurrency, |r| r.in_flight < concurrency);
                }
            }
            (Mode::Tps, Phase::Warmup) => {
                r.open_while(now, concurrency, |r| (r.opened as usize) < concurrency);
                // Every connection open (or failed, or no more could be opened): the
                // window starts now.
                let settled = r.established + r.errors.total() >= concurrency as u64 || (r.opened as usize) < concurrency;
                if settled || now > started + o.timeout {
                    r.phase = Phase::Run;
                    r.window_start = now;
                    r.in_window = 0;
                }
            }
            (Mode::Tps, Phase::Run) => {
                if now >= r.window_start + o.duration {
                    r.end_window(now);
                } else {
                    // Replace connections that failed.
                    r.open_while(now, concurrency, |r| r.conns.len() < concurrency);
                }
            }
            (Mode::Hold, Phase::Run) => {
                r.open_while(now, concurrency, |r| r.in_flight < concurrency && (r.opened as usize) < o.connections);
                let refused = (r.opened as usize) < o.connections && r.in_flight == 0 && r.errors.no_local_port + r.errors.no_descriptor > 0;
                if (r.opened as usize >= o.connections || refused) && r.in_flight == 0 {
                    open_seconds = (now - started).as_secs_f64();
                    on_event(&json!({"event": "held", "held": r.held, "opened": r.opened, "seconds": open_seconds, "errors": r.errors}));
                    r.phase = Phase::Idle;
                    idle_until = now + o.idle;
                }
            }
            (Mode::Hold, Phase::Idle) => {
                if now >= idle_until {
                    r.to_ask = r.conns.iter().filter(|(_, c)| c.state == State::Idle).map(|(k, _)| k).collect();
                    r.to_ask.reverse();
                    r.phase = Phase::Check;
                    check_start = now;
                }
            }
            (Mode::Hold, Phase::Check) => {
                while r.in_flight < concurrency {
                    let Some(key) = r.to_ask.pop() else { break };
                    if r.conns.get(key).is_some_and(|c| c.state == State::Idle) {
                        r.ask(key, now);
                    }
                }
                if r.to_ask.is_empty() && r.in_flight == 0 {
                    check_seconds = (now - check_start).as_secs_f64();
                    break;
                }
            }
            (_, Phase::Drain) => {
                if r.in_flight == 0 || now > r.drain_until {
                    break;
                }
            }
            _ => unreachable!("cps never warms up or idles; tps never idles or checks; hold never warms up"),
        }
        let wait = if r.phase == Phase::Idle { Duration::from_millis(50) } else { Duration::from_millis(10) };
        match r.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for ev in events.iter() {
            r.event(ev.token().0, ev.is_readable() || ev.is_read_closed() || ev.is_error(), &mut scratch, now);
        }
        r.expire(now);
    }
    if o.mode == Mode::Hold && r.window.is_zero() {
        r.window = Duration::from_secs_f64(open_seconds);
    }
    let secs = r.window.as_secs_f64();
    let rate = if secs > 0.0 { r.in_window as f64 / secs } else { 0.0 };
    let mut v = json!({
        "mode": o.mode,
        "servers": o.servers.len(),
        "sources": o.sources.len(),
        "concurrency": concurrency,
        "fd_limit": fd_limit,
        "seconds": secs,
        "opened": r.opened,
        "established": r.established,
        "transactions": r.transactions,
        "errors": r.errors,
        "error_total": r.errors.total(),
        "connect": r.connect.to_json(),
        "ttfb": r.ttfb.to_json(),
        "ttlb": r.ttlb.to_json(),
        "stopped": stopped,
    });
    match o.mode {
        Mode::Cps => {
            v["connections"] = json!(r.in_window);
            v["connections_per_second"] = json!(rate);
        }
        Mode::Tps => {
            v["transactions_in_window"] = json!(r.in_window);
            v["transactions_per_second"] = json!(rate);
        }
        Mode::Hold => {
            v["wanted"] = json!(o.connections);
            v["held"] = json!(r.held);
            v["open_seconds"] = json!(open_seconds);
            v["opened_per_second"] = json!(if open_seconds > 0.0 { r.held as f64 / open_seconds } else { 0.0 });
            v["idle_seconds"] = json!(o.idle.as_secs_f64());
            v["answered"] = json!(r.answered);
            v["check_seconds"] = json!(check_seconds);
        }
    }
    Ok(v)
}

/// Adds up several clients' results (run at once, in separate processes): counts and
/// rates add, latencies merge, `seconds` is the longest.
pub fn merge(parts: &[Value]) -> Result<Value, String> {
    let Some(first) = parts.first() else { return Err("no client results".into()) };
    let mut v = first.clone();
    for p in &parts[1..] {
        for k in [
            "opened",
            "established",
            "transactions",
            "error_total",
            "connections",
            "transactions_in_window",
            "wanted",
            "held",
            "answered",
            "concurrency",
            "sources",
        ] {
            if let (Some(a), Some(b)) = (v[k].as_u64(), p[k].as_u64()) {
                v[k] = json!(a + b);
            }
        }
        for k in ["connections_per_second", "transactions_per_second", "opened_per_second"] {
            if let (Some(a), Some(b)) = (v[k].as_f64(), p[k].as_f64()) {
                v[k] = json!(a + b);
            }
        }
        for k in ["seconds", "open_seconds", "check_seconds"] {
            if let (Some(a), Some(b)) = (v[k].as_f64(), p[k].as_f64()) {
                v[k] = json!(a.max(b));
            }
        }
        if let (Some(a), Some(b)) = (v["errors"].as_object().cloned(), p["errors"].as_object()) {
            let mut e = a;
            for (k, n) in b {
                let sum = e.get(k).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
                e.insert(k.clone(), json!(sum));
            }
            v["errors"] = Value::Object(e);
        }
        for k in ["connect", "ttfb", "ttlb"] {
            let mut l = Latency::from_json(&v[k])?;
            l.merge(&Latency::from_json(&p[k])?);
            v[k] = l.to_json();
        }
    }
    Ok(v)
}
