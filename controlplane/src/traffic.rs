//! `holdfast gen webfarm`: a deterministic capture of the origin story's traffic —
//! web servers on port 80 inside, clients outside with HTTP/1.1 keep-alive
//! connections, idle gaps, FIN and RST closes — with valid checksums.

use std::net::{IpAddr, Ipv4Addr};

use holdfast_pipeline::Duration;
use holdfast_pipeline::wire::build::{FrameSpec, L4, syn_options};
use holdfast_pipeline::wire::tcp::flags::*;

/// SplitMix64: small, fast, reproducible across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo + 1) }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug, Clone)]
pub struct WebFarm {
    pub seed: u64,
    pub servers: u32,
    pub clients: u32,
    pub connections: u32,
    /// Connections start uniformly over this span.
    pub duration: Duration,
    /// Idle gap between requests on one connection: uniform in this range.
    pub idle: (Duration, Duration),
    /// Requests per connection: uniform in this range.
    pub requests: (u32, u32),
    /// Response body size in bytes: uniform in this range.
    pub response: (u32, u32),
    /// Epoch of the first packet, ns since 1970.
    pub start_ns: u64,
    /// Spoofed SYNs per second to the servers' port 80, over the whole capture.
    pub syn_flood: f64,
    /// One outside host probing the servers' closed ports 1-1024.
    pub scan: bool,
    /// Stray ACKs to port 80 from addresses that never opened a connection.
    pub midstream: u32,
}

impl Default for WebFarm {
    fn default() -> Self {
        WebFarm {
            seed: 1,
            servers: 8,
            clients: 50,
            connections: 200,
            duration: Duration::from_secs(60),
            idle: (Duration::ZERO, Duration::from_secs(5)),
            requests: (1, 4),
            response: (200, 6000),
            start_ns: 1_764_000_000_000_000_000,
            syn_flood: 0.0,
            scan: false,
            midstream: 0,
        }
    }
}

/// Inside servers: 10.0.2.1 ..
pub fn server_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0201 + i))
}

/// Outside clients: 198.51.100.0/24, then 203.0.113.0/24, ...
pub fn client_ip(i: u32) -> IpAddr {
    let base = [0xc633_6400u32, 0xcb00_7100, 0xc000_0200];
    IpAddr::V4(Ipv4Addr::from(base[(i / 250) as usize % 3] + 1 + i % 250 + (i / 750) * 0x10000))
}

/// A timestamped frame.
pub type Event = (u64, Vec<u8>);

const MSS: u32 = 1448;
/// Round-trip time between the firewall and a client, and the server's think time.
const CLIENT_RTT_NS: u64 = 20_000_000;
const SERVER_NS: u64 = 300_000;

struct Conn {
    c: IpAddr,
    cport: u16,
    s: IpAddr,
    cseq: u32,
    sseq: u32,
}

impl Conn {
    fn c2s(&self, flags: u8, payload: usize, options: Vec<u8>) -> Vec<u8> {
        let ack = if flags & ACK != 0 { self.sseq } else { 0 };
        FrameSpec::new(
            self.c,
            self.s,
            L4::Tcp { sport: self.cport, dport: 80, seq: self.cseq, ack, flags, window: 502, options, payload: http_bytes(payload, true) },
        )
        .build()
    }
    fn s2c(&self, flags: u8, payload: usize, options: Vec<u8>) -> Vec<u8> {
        FrameSpec::new(
            self.s,
            self.c,
            L4::Tcp { sport: 80, dport: self.cport, seq: self.sseq, ack: self.cseq, flags, window: 509, options, payload: http_bytes(payload, false) },
        )
        .build()
    }
}

fn http_bytes(n: usize, request: bool) -> Vec<u8> {
    let head: &[u8] = if request { b"GET /index.html HTTP/1.1\r\nHost: farm\r\n" } else { b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n" };
    let mut v: Vec<u8> = head.iter().copied().cycle().take(n).collect();
    v.truncate(n);
    v
}

/// Generates the capture's frames, sorted by time.
pub fn webfarm(p: &WebFarm) -> Vec<Event> {
    let mut rng = Rng::new(p.seed);
    let mut ev: Vec<Event> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for _ in 0..p.connections {
        // Distinct 4-tuples: a reused one would be a different story (port reuse).
        let (c_ip, cport, s_ip) = loop {
            let t = (
                client_ip(rng.range(0, u64::from(p.clients.max(1) - 1)) as u32),
                rng.range(32768, 60999) as u16,
                server_ip(rng.range(0, u64::from(p.servers.max(1) - 1)) as u32),
            );
            if used.insert(t) {
                break t;
            }
        };
        let mut c = Conn { c: c_ip, cport, s: s_ip, cseq: rng.next_u64() as u32, sseq: rng.next_u64() as u32 };
        let mut t = p.start_ns + rng.range(0, p.duration.as_nanos());
        // Handshake, as the firewall sees it: SYN, then the server's SYN/ACK a moment
        // later, then the client's ACK one round trip after the SYN.
        ev.push((t, c.c2s(SYN, 0, syn_options(1460, 7, rng.next_u64() as u32))));
        c.cseq = c.cseq.wrapping_add(1);
        t += SERVER_NS;
        ev.push((t, c.s2c(SYN | ACK, 0, syn_options(1460, 7, rng.next_u64() as u32))));
        c.sseq = c.sseq.wrapping_add(1);
        t += CLIENT_RTT_NS;
        ev.push((t, c.c2s(ACK, 0, vec![])));
        let requests = rng.range(u64::from(p.requests.0), u64::from(p.requests.1)) as u32;
        for r in 0..requests {
            if r > 0 {
                t += rng.range(p.idle.0.as_nanos(), p.idle.1.as_nanos());
            }
            let req = rng.range(250, 700) as u32;
            ev.push((t, c.c2s(PSH | ACK, req as usize, vec![])));
            c.cseq = c.cseq.wrapping_add(req);
            t += SERVER_NS;
            let mut left = rng.range(u64::from(p.response.0), u64::from(p.response.1)) as u32;
            let mut unacked = 0;
            while left > 0 {
                let n = left.min(MSS);
                left -= n;
                let flags = if left == 0 { PSH | ACK } else { ACK };
                ev.push((t, c.s2c(flags, n as usize, vec![])));
                c.sseq = c.sseq.wrapping_add(n);
                unacked += 1;
                t += 12_000; // 1500 bytes at 1 Gbit/s
                if unacked == 2 || left == 0 {
                    // Delayed ACK every second segment, one round trip later.
                    ev.push((t + CLIENT_RTT_NS, c.c2s(ACK, 0, vec![])));
                    unacked = 0;
                }
            }
            t += CLIENT_RTT_NS + 1000;
        }
        t += rng.range(p.idle.0.as_nanos(), p.idle.1.as_nanos()) / 2;
        let close = rng.range(0, 9);
        if close == 0 {
            // The client aborts: RST.
            ev.push((t, c.c2s(RST | ACK, 0, vec![])));
        } else {
            // Client closes (or the server's keep-alive timer does): FIN, ACK, FIN, ACK.
            let client_first = close <= 6;
            if client_first {
                ev.push((t, c.c2s(FIN | ACK, 0, vec![])));
                c.cseq = c.cseq.wrapping_add(1);
                t += SERVER_NS;
                ev.push((t, c.s2c(FIN | ACK, 0, vec![])));
                c.sseq = c.sseq.wrapping_add(1);
                t += CLIENT_RTT_NS;
                ev.push((t, c.c2s(ACK, 0, vec![])));
            } else {
                ev.push((t, c.s2c(FIN | ACK, 0, vec![])));
                c.sseq = c.sseq.wrapping_add(1);
                t += CLIENT_RTT_NS;
                ev.push((t, c.c2s(FIN | ACK, 0, vec![])));
                c.cseq = c.cseq.wrapping_add(1);
                t += SERVER_NS;
                ev.push((t, c.s2c(ACK, 0, vec![])));
            }
        }
    }
    ev.sort_by_key(|e| e.0);
    hostile(p, &mut rng, &mut ev);
    ev.sort_by_key(|e| e.0);
    ev
}

/// A spoofed source in 100.64.0.0/10 (shared address space: never a real client here).
fn spoofed(rng: &mut Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (rng.next_u64() as u32 & 0x003f_ffff)))
}

/// The hostile traffic, spread over the span of the legitimate traffic.
fn hostile(p: &WebFarm, rng: &mut Rng, ev: &mut Vec<Event>) {
    let (first, last) = match (ev.first(), ev.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => (p.start_ns, p.start_ns + p.duration.as_nanos()),
    };
    let span = (last - first).max(1);
    let tcp = |src, sport, dst, dport, flags, seq, ack| {
        FrameSpec::new(src, dst, L4::Tcp { sport, dport, seq, ack, flags, window: 1024, options: vec![], payload: vec![] }).build()
    };
    let floods = (p.syn_flood * span as f64 / 1e9) as u64;
    for k in 0..floods {
        let t = first + k * span / floods.max(1);
        let f = tcp(
            spoofed(rng),
            rng.range(1024, 65535) as u16,
            server_ip(rng.range(0, u64::from(p.servers.max(1) - 1)) as u32),
            80,
            SYN,
            rng.next_u64() as u32,
            0,
        );
        ev.push((t, f));
    }
    if p.scan {
        let scanner = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66));
        let ports: Vec<u16> = (1..=1024).filter(|&x| x != 80).collect();
        let n = ports.len() as u64 * u64::from(p.servers);
        for (k, (s, port)) in (0..p.servers).flat_map(|s| ports.iter().map(move |&x| (s, x))).enumerate() {
            let t = first + k as u64 * span / n.max(1);
            ev.push((t, tcp(scanner, 61_000, server_ip(s), port, SYN, rng.next_u64() as u32, 0)));
        }
    }
    for k in 0..u64::from(p.midstream) {
        let t = first + k * span / u64::from(p.midstream).max(1);
        let f = tcp(
            client_ip(10_000 + rng.range(0, 999) as u32),
            rng.range(32768, 60999) as u16,
            server_ip(rng.range(0, u64::from(p.servers.max(1) - 1)) as u32),
            80,
            ACK,
            rng.next_u64() as u32,
            rng.next_u64() as u32,
        );
        ev.push((t, f));
    }
}

/// Writes events as a pcap file's bytes.
pub fn to_pcap(ev: &[Event]) -> Vec<u8> {
    let mut w = crate::capture::Writer::new(Vec::new(), false).expect("writing to memory");
    for (t, f) in ev {
        w.write(*t, f).expect("writing to memory");
    }
    w.finish().expect("writing to memory")
}

/// Parses `lo..hi` durations such as `0s..600s`.
pub fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("expected a range like 0s..600s, got {s:?}"))?;
    let lo = crate::config::values::parse_duration(a)?;
    let hi = crate::config::values::parse_duration(b)?;
    if lo > hi {
        return Err(format!("empty range {s:?}"));
    }
    Ok((lo, hi))
}

/// Parses `lo..hi` integers, or a single integer.
pub fn parse_int_range(s: &str) -> Result<(u32, u32), String> {
    let p = |x: &str| x.trim().parse::<u32>().map_err(|_| format!("bad number {x:?}"));
    match s.split_once("..") {
        Some((a, b)) => {
            let (lo, hi) = (p(a)?, p(b)?);
            if lo > hi {
                return Err(format!("empty range {s:?}"));
            }
            Ok((lo, hi))
        }
        None => {
            let v = p(s)?;
            Ok((v, v))
        }
    }
}

/// One-way 64-byte UDP frames (60 bytes without the FCS), one per flow: client `i` is
/// 10.64.0.1 + i / 60,000, port 1024 + i % 60,000, to `server` port 9; 1 µs apart.
/// Written as it goes (a million flows is 76 MB of pcap). Returns the frames written.
pub fn write_udp<W: std::io::Write>(out: W, flows: u32, server: Ipv4Addr) -> std::io::Result<u64> {
    let mut w = crate::capture::Writer::new(out, true)?;
    for i in 0..flows {
        let src = IpAddr::V4(Ipv4Addr::from(0x0a40_0001 + i / 60_000));
        let sport = 1024 + (i % 60_000) as u16;
        // 14 + 20 + 8 + 18 bytes of payload: 60, a minimum Ethernet frame.
        let f = FrameSpec::udp(src, sport, IpAddr::V4(server), 9, &[0u8; 18]).build();
        w.write(1_764_000_000_000_000_000 + u64::from(i) * 1_000, &f)?;
    }
    w.finish()?;
    Ok(u64::from(flows))
}
