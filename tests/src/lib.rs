//! Shared helpers for integration and scenario tests.

pub mod fuzz;

use std::net::IpAddr;
use std::sync::Arc;

use holdfast_pipeline::policy::{Classifier, Zone};
use holdfast_pipeline::wire::build::{FrameSpec, L4, syn_options};
use holdfast_pipeline::wire::tcp::flags::*;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The web-farm policy of the embedded default config (`configs/webfarm.yaml`):
/// outside to 10.0.2.0/24 port 80, and ping.
pub fn webfarm_policy() -> Arc<Classifier> {
    holdfast_controlplane::config::parse(holdfast_controlplane::DEFAULT_CONFIG, "webfarm.yaml").expect("the embedded config is valid").classifier
}

/// A varied set of frames: handshakes, data, closes, UDP, ICMP, fragments, IPv6,
/// VLAN-tagged, ARP and garbage. Zones set by source.
pub fn mixed_frames(n_flows: u32) -> Vec<(Vec<u8>, Zone)> {
    let mut v = Vec::new();
    for i in 0..n_flows {
        let c = IpAddr::from([198, 51, (100 + i / 250) as u8, (i % 250 + 1) as u8]);
        let s = IpAddr::from([10, 0, 2, (i % 8 + 1) as u8]);
        let cp = 30_000 + (i % 30_000) as u16;
        let tcp = |src, sp, dst, dp, flags, seq, ack, payload: usize, opts: Vec<u8>| {
            FrameSpec::new(src, dst, L4::Tcp { sport: sp, dport: dp, seq, ack, flags, window: 502, options: opts, payload: vec![0x42; payload] }).build()
        };
        v.push((tcp(c, cp, s, 80, SYN, 100, 0, 0, syn_options(1460, 7, 1)), Zone::Outside));
        v.push((tcp(s, 80, c, cp, SYN | ACK, 900, 101, 0, syn_options(1460, 7, 2)), Zone::Inside));
        v.push((tcp(c, cp, s, 80, ACK, 101, 901, 0, vec![]), Zone::Outside));
        v.push((tcp(c, cp, s, 80, ACK | PSH, 101, 901, 300, vec![]), Zone::Outside));
        v.push((tcp(s, 80, c, cp, ACK | PSH, 901, 401, 1400, vec![]), Zone::Inside));
        v.push((tcp(c, cp, s, 80, FIN | ACK, 401, 2301, 0, vec![]), Zone::Outside));
        v.push((tcp(s, 80, c, cp, ACK, 2301, 402, 0, vec![]), Zone::Inside));
        v.push((tcp(s, 80, c, 40_000, SYN, 1, 0, 0, vec![]), Zone::Inside));
        v.push((FrameSpec::udp(s, 5353, ip("192.0.2.53"), 53, b"q").build(), Zone::Inside));
        v.push((FrameSpec::icmp(c, s, 8, 0, i, b"ping").build(), Zone::Outside));
        if i % 10 == 0 {
            let big = FrameSpec { ident: i as u16, ..FrameSpec::udp(s, 5353, ip("192.0.2.53"), 53, &[1; 3000]) };
            for f in big.fragments(1400) {
                v.push((f, Zone::Inside));
            }
            let q = FrameSpec::tcp(s, 80, c, cp, ACK, 901, 101).ip_packet();
            v.push((FrameSpec::icmp(ip("203.0.113.1"), s, 3, 4, 1500, &q[..28]).build(), Zone::Outside));
            v.push((FrameSpec { vlans: vec![7], ..FrameSpec::tcp(c, cp, s, 80, SYN, 5, 0) }.build(), Zone::Outside));
            v.push((FrameSpec::tcp(ip("2001:db8:1::7"), cp, ip("2001:db8:2::1"), 80, SYN, 5, 0).build(), Zone::Outside));
            v.push((vec![0xff; (i % 64) as usize], Zone::Outside));
        }
    }
    v
}
