//! The benchmark's web server: one epoll loop, any number of listening addresses, one
//! fixed object per GET, keep-alive unless the request says `Connection: close`.
//! Bounded: a request's header block at most [`MAX_REQUEST`] bytes (else the connection
//! is closed and counted), at most `max_conns` connections (more are accepted and
//! closed at once, counted). Idle connections are kept: holding them is the point.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

/// The largest request header block accepted.
pub const MAX_REQUEST: usize = 8192;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: Vec<SocketAddr>,
    /// The response body's size in bytes.
    pub object: usize,
    pub max_conns: usize,
    /// The listen backlog (the kernel caps it at net.core.somaxconn).
    pub backlog: i32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ServeStats {
    pub accepted: u64,
    pub requests: u64,
    pub responses: u64,
    pub closed_by_client: u64,
    pub closed_after_response: u64,
    pub reset: u64,
    pub over_limit: u64,
    pub oversized_requests: u64,
    pub accept_errors: u64,
    pub peak_connections: u64,
}

struct Conn {
    stream: TcpStream,
    /// Bytes of a request not yet complete (empty, without capacity, when idle).
    inbuf: Vec<u8>,
    /// Responses owed, and how far the first of them has been written.
    owed: u32,
    written: usize,
    close_after: bool,
}

enum After {
    Keep,
    Close,
}

fn listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    // Several server processes may share an address (a process holds only as many
    // connections as it has descriptors): the kernel spreads connections over them.
    s.set_reuse_port(true)?;
    s.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("listen {addr}: {e}")))?;
    s.listen(backlog)?;
    s.set_nonblocking(true)?;
    Ok(TcpListener::from_std(s.into()))
}

/// The response every request gets.
pub fn response(object: usize) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nServer: holdfast-load\r\nContent-Type: application/octet-stream\r\nContent-Length: {object}\r\n\r\n").into_bytes();
    r.resize(r.len() + object, b'x');
    r
}

/// Serves until `stop()` says so (checked at least every 100 ms).
pub fn serve(o: &ServeOptions, stop: impl Fn() -> bool) -> io::Result<ServeStats> {
    // A descriptor per connection, as the client raises its own.
    holdfast_dataplane::sys::raise_nofile(o.max_conns as u64 + 64)?;
    let mut poll = Poll::new()?;
    let mut listeners = Vec::new();
    for (i, &addr) in o.listen.iter().enumerate() {
        let mut l = listener(addr, o.backlog)?;
        poll.registry().register(&mut l, Token(usize::MAX - i), Interest::READABLE)?;
        listeners.push(l);
    }
    let resp = response(o.object);
    let mut conns: Slab<Conn> = Slab::new();
    let mut stats = ServeStats::default();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 16 * 1024];
    while !stop() {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let t = ev.token().0;
            if t > usize::MAX - listeners.len() {
                let l = &listeners[usize::MAX - t];
                // Edge-triggered: accept until the queue is empty.
                loop {
                    match l.accept() {
                        Ok((mut stream, _)) => {
                            stats.accepted += 1;
                            if conns.len() >= o.max_conns {
                                stats.over_limit += 1;
                                continue; // dropped: closed
                            }
                            let entry = conns.vacant_entry();
                            if poll.registry().register(&mut stream, Token(entry.key()), Interest::READABLE | Interest::WRITABLE).is_err() {
                                stats.accept_errors += 1;
                                continue;
                            }
                            entry.insert(Conn { stream, inbuf: Vec::new(), owed: 0, written: 0, close_after: false });
                            stats.peak_connections = stats.peak_connections.max(conns.len() as u64);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            // EMFILE and the like: counted; the connection stays in the
                            // backlog until a descriptor is free.
                            stats.accept_errors += 1;
                            break;
                        }
                    }
                }
                continue;
            }
            let Some(c) = conns.get_mut(t) else { continue };
            let mut after = After::Keep;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                after = read(c, &mut scratch, &mut stats);
            }
            if matches!(after, After::Keep) {
                after = flush(c, &resp, &mut stats);
            }
            if matches!(after, After::Close) {
                let mut c = conns.remove(t);
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
    Ok(stats)
}

fn read(c: &mut Conn, scratch: &mut [u8], stats: &mut ServeStats) -> After {
    loop {
        match c.stream.read(scratch) {
            Ok(0) => {
                stats.closed_by_client += 1;
                return After::Close;
            }
            Ok(n) => {
                c.inbuf.extend_from_slice(&scratch[..n]);
                while let Some(end) = super::find(&c.inbuf, b"\r\n\r\n") {
                    c.close_after |= super::wants_close(&c.inbuf[..end]);
                    c.owed += 1;
                    stats.requests += 1;
                    c.inbuf.drain(..end + 4);
                }
                if c.inbuf.len() > MAX_REQUEST {
                    stats.oversized_requests += 1;
                    return After::Close;
                }
                if c.inbuf.is_empty() {
                    // An idle connection keeps no buffer: a million of them add up.
                    c.inbuf = Vec::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return After::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                stats.reset += 1;
                return After::Close;
            }
        }
    }
}

fn flush(c: &mut Conn, resp: &[u8], stats: &mut ServeStats) -> After {
    while c.owed > 0 {
        match c.stream.write(&resp[c.written..]) {
            Ok(n) => {
                c.written += n;
                if c.written == resp.len() {
                    c.written = 0;
                    c.owed -= 1;
                    stats.responses += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return After::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                stats.reset += 1;
                return After::Close;
            }
        }
    }
    if c.close_after {
        stats.closed_after_response += 1;
        return After::Close;
    }
    After::Keep
}
