//! Test harness: an engine with the web-farm example policy, a fake clock, and helpers
//! that build frames for a client and a server.

use std::net::IpAddr;
use std::sync::Arc;

use crate::engine::{Engine, EngineConfig, FlowInfo, Packet};
use crate::policy::{Action, Cidr, Classifier, IcmpMatch, PortRange, ProtoMatch, Rule, Zone};
use crate::time::{Duration, Instant};
use crate::verdict::Verdict;
use crate::wire::build::{FrameSpec, L4};
use crate::wire::tcp::flags::*;

/// A reproducible pseudo-random source for tests (xorshift64; `seed` not 0).
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

pub(crate) const CLIENT: &str = "198.51.100.7";
pub(crate) const SERVER: &str = "10.0.2.1";
pub(crate) const CPORT: u16 = 40000;
pub(crate) const SPORT: u16 = 80;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The example policy: web from outside to 10.0.2.0/24:80, ping from anywhere,
/// DNS from inside.
pub(crate) fn policy() -> Classifier {
    Classifier::new(
        vec![
            Rule {
                from: Some(Zone::Outside),
                to: Some(Zone::Inside),
                proto: ProtoMatch::Number(6),
                dst: vec![Cidr { v6: false, addr: 0x0a00_0200, len: 24 }, Cidr { v6: true, addr: 0x2001_0db8_0002_u128 << 80, len: 64 }],
                dst_ports: vec![PortRange { lo: 80, hi: 80 }],
                ..Rule::any("web", Action::Allow)
            },
            Rule { proto: ProtoMatch::Icmp, icmp_types: vec![IcmpMatch { v4: Some(8), v6: Some(128) }], ..Rule::any("ping", Action::Allow) },
            Rule { from: Some(Zone::Inside), proto: ProtoMatch::Number(17), dst_ports: vec![PortRange { lo: 53, hi: 53 }], ..Rule::any("dns", Action::Allow) },
        ],
        Action::Deny,
    )
}

pub(crate) struct Lab {
    pub e: Engine,
    pub now: Instant,
    /// Next sequence number of the client and the server.
    pub cseq: u32,
    pub sseq: u32,
    pub cwin: u16,
    pub swin: u16,
}

pub(crate) const T0: Instant = Instant::from_secs(1_000_000);

impl Lab {
    pub(crate) fn new() -> Lab {
        Lab::with(EngineConfig { capacity: 1024, ..EngineConfig::default() })
    }

    pub(crate) fn with(cfg: EngineConfig) -> Lab {
        Lab::with_policy(cfg, policy())
    }

    pub(crate) fn with_policy(cfg: EngineConfig, policy: Classifier) -> Lab {
        Lab { e: Engine::new(cfg, Arc::new(policy), T0), now: T0, cseq: 1000, sseq: 5000, cwin: 64_000, swin: 64_000 }
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
    }

    pub(crate) fn send(&mut self, frame: &[u8], zone: Zone) -> Verdict {
        self.e.process(&Packet { data: frame, zone, now: self.now })
    }

    /// Client (outside) -> server segment.
    pub(crate) fn c(&mut self, flags: u8, payload: usize) -> Verdict {
        let (seq, ack, win) = (self.cseq, self.sseq, self.cwin);
        let v = self.seg(CLIENT, CPORT, SERVER, SPORT, flags, seq, ack, win, payload, Zone::Outside);
        if v.is_pass() {
            self.cseq = self.cseq.wrapping_add(payload as u32 + u32::from(flags & (SYN | FIN) != 0));
        }
        v
    }

    /// Server (inside) -> client segment.
    pub(crate) fn s(&mut self, flags: u8, payload: usize) -> Verdict {
        let (seq, ack, win) = (self.sseq, self.cseq, self.swin);
        let v = self.seg(SERVER, SPORT, CLIENT, CPORT, flags, seq, ack, win, payload, Zone::Inside);
        if v.is_pass() {
            self.sseq = self.sseq.wrapping_add(payload as u32 + u32::from(flags & (SYN | FIN) != 0));
        }
        v
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seg(&mut self, src: &str, sport: u16, dst: &str, dport: u16, flags: u8, seq: u32, ack: u32, win: u16, payload: usize, zone: Zone) -> Verdict {
        let f = tcp_frame(src, sport, dst, dport, flags, seq, if flags & ACK != 0 { ack } else { 0 }, win, payload);
        self.send(&f, zone)
    }

    pub(crate) fn handshake(&mut self) {
        assert!(self.c(SYN, 0).is_pass());
        assert!(self.s(SYN | ACK, 0).is_pass());
        assert!(self.c(ACK, 0).is_pass());
    }

    pub(crate) fn flows(&self) -> Vec<FlowInfo> {
        self.e.flows(self.now).collect()
    }

    pub(crate) fn state(&self) -> Option<&'static str> {
        let f = self.flows();
        assert!(f.len() <= 1, "one flow expected, found {}", f.len());
        f.first().map(|f| f.state)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn tcp_frame(src: &str, sport: u16, dst: &str, dport: u16, flags: u8, seq: u32, ack: u32, win: u16, payload: usize) -> Vec<u8> {
    let options = if flags & SYN != 0 { crate::wire::build::syn_options(1460, 7, 1) } else { vec![] };
    FrameSpec::new(ip(src), ip(dst), L4::Tcp { sport, dport, seq, ack, flags, window: win, options, payload: vec![0x61; payload] }).build()
}
