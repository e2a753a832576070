//! Traffic for the benchmarks: established flows set up in advance, and bursts built
//! the way a NIC delivers them — into a few hot buffers, one header template patched
//! per packet — so that the measurement sees the table's cache misses, not cold frame
//! bytes.

use std::sync::Arc;

pub mod lean;

use holdfast_pipeline::engine::{EngineConfig, Packet};
use holdfast_pipeline::policy::{Action, Cidr, Classifier, PortRange, ProtoMatch, Rule};
use holdfast_pipeline::wire::{checksum_add, checksum_finish};
use holdfast_pipeline::{Engine, Instant, Zone};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

/// The web-farm policy: outside clients to 10.0.2.0/24 port 80.
pub fn policy() -> Arc<Classifier> {
    Arc::new(Classifier::new(
        vec![Rule {
            from: Some(Zone::Outside),
            to: Some(Zone::Inside),
            proto: ProtoMatch::Number(6),
            dst: vec![Cidr { v6: false, addr: 0x0a00_0200, len: 24 }],
            dst_ports: vec![PortRange { lo: 80, hi: 80 }],
            ..Rule::any("web", Action::Allow)
        }],
        Action::Deny,
    ))
}

/// Flow `i`'s client address, port, server and initial sequence numbers.
pub fn flow(i: u32) -> (u32, u16, u32, u32, u32) {
    let client = 0x6400_0000 | (i >> 12) << 8 | (i & 0xfff) >> 4; // 100.x.y.z, 16 flows per client
    let cport = 32_768 + (i & 0xf) as u16 * 1000 + (i >> 20) as u16;
    let server = 0x0a00_0201 + (i % 8);
    (client, cport, server, i.wrapping_mul(7919), i.wrapping_mul(104_729))
}

/// Writes a 54-byte Ethernet/IPv4/TCP frame (no payload, no options) into `buf`,
/// padded to 60 bytes, with a valid IPv4 header checksum.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn write_tcp(buf: &mut [u8; 60], src: u32, sport: u16, dst: u32, dport: u16, flags: u8, seq: u32, ack: u32) {
    buf[12] = 0x08;
    buf[13] = 0x00;
    let ip = &mut buf[14..34];
    ip.copy_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.to_be_bytes());
    let c = checksum_finish(checksum_add(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut buf[34..54];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
}

/// An ACK of a random established flow among `flows`, in a random direction (both
/// from the random word `r`); returns the zone it enters from.
#[inline]
fn established_ack(b: &mut [u8; 60], r: u32, flows: u32) -> Zone {
    let (c, cp, s, ci, si) = flow((r >> 7) % flows);
    if r & 0x40 == 0 {
        write_tcp(b, c, cp, s, 80, ACK, ci.wrapping_add(1), si.wrapping_add(1));
        Zone::Outside
    } else {
        write_tcp(b, s, 80, c, cp, ACK, si.wrapping_add(1), ci.wrapping_add(1));
        Zone::Inside
    }
}

/// The benches' pseudo-random step (xorshift64; `x` not 0): reproducible bursts.
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// An engine holding `flows` established connections (handshake done), plus what the
/// burst generator needs.
pub struct Loaded {
    pub engine: Engine,
    pub flows: u32,
    pub now: Instant,
    rng: u64,
    bufs: Vec<[u8; 60]>,
    zones: Vec<Zone>,
}

/// Flows beyond `flows` receiving the mix's SYN retransmissions (embryonic flows) and
/// its FINs (a closing pool), so that the established population stays established.
const SIDE_POOL: u32 = 4096;

impl Loaded {
    pub fn new(flows: u32) -> Loaded {
        Loaded::with_accounting(flows, true)
    }

    /// [`Loaded::new`] with per-flow packet and byte counters kept or not
    /// (`conntrack.accounting`).
    pub fn with_accounting(flows: u32, accounting: bool) -> Loaded {
        let capacity = (flows + 3 * SIDE_POOL) as usize;
        let now = Instant::from_secs(1_000_000);
        let mut engine = Engine::new(EngineConfig { capacity, accounting, ..EngineConfig::default() }, policy(), now);
        // Huge pages for the table, as the dataplane asks for them.
        holdfast_dataplane::sys::advise_huge_pages(&engine.regions());
        let mut buf = [0u8; 60];
        let one = |e: &mut Engine, b: &[u8; 60], zone| e.process(&Packet { data: b, zone, now });
        for i in 0..flows + 2 * SIDE_POOL {
            let (c, cp, s, ci, si) = flow(i);
            write_tcp(&mut buf, c, cp, s, 80, SYN, ci, 0);
            one(&mut engine, &buf, Zone::Outside);
            let embryonic = (flows..flows + SIDE_POOL).contains(&i);
            if !embryonic {
                write_tcp(&mut buf, s, 80, c, cp, SYN | ACK, si, ci.wrapping_add(1));
                one(&mut engine, &buf, Zone::Inside);
                write_tcp(&mut buf, c, cp, s, 80, ACK, ci.wrapping_add(1), si.wrapping_add(1));
                one(&mut engine, &buf, Zone::Outside);
            }
        }
        assert_eq!(engine.table().len() as u32, flows + 2 * SIDE_POOL);
        Loaded { engine, flows, now, rng: 0x9e37_79b9_7f4a_7c15, bufs: vec![[0u8; 60]; 64], zones: vec![Zone::Outside; 64] }
    }

    /// `flows` established connections in a table sized so that they fill the assured
    /// three quarters and half-open SYNs fill the non-assured quarter (the quota): a
    /// full table, ready for a flood.
    pub fn full_for_flood(flows: u32) -> Loaded {
        let capacity = (flows as usize * 4).div_ceil(3);
        let now = Instant::from_secs(1_000_000);
        let mut engine = Engine::new(EngineConfig { capacity, ..EngineConfig::default() }, policy(), now);
        holdfast_dataplane::sys::advise_huge_pages(&engine.regions());
        let mut buf = [0u8; 60];
        let one = |e: &mut Engine, b: &[u8; 60], zone| e.process(&Packet { data: b, zone, now });
        for i in 0..flows {
            let (c, cp, s, ci, si) = flow(i);
            write_tcp(&mut buf, c, cp, s, 80, SYN, ci, 0);
            one(&mut engine, &buf, Zone::Outside);
            write_tcp(&mut buf, s, 80, c, cp, SYN | ACK, si, ci.wrapping_add(1));
            one(&mut engine, &buf, Zone::Inside);
            write_tcp(&mut buf, c, cp, s, 80, ACK, ci.wrapping_add(1), si.wrapping_add(1));
            one(&mut engine, &buf, Zone::Outside);
        }
        let mut l = Loaded { engine, flows, now, rng: 0x2545_f491_4f6c_dd1d, bufs: vec![[0u8; 60]; 64], zones: vec![Zone::Outside; 64] };
        // Until the flood holds its whole quota: from then on each SYN evicts one.
        let quota = (capacity as f64 * holdfast_pipeline::conntrack::pressure::Pressure::default().embryonic_share) as u32;
        while l.engine.class_counts()[holdfast_pipeline::conntrack::pressure::Admission::Embryonic as usize] < quota {
            l.fill_flood_burst();
            let mut out = [holdfast_pipeline::Verdict::Drop(holdfast_pipeline::DropReason::Malformed); 64];
            l.run_burst(&mut out);
        }
        l
    }

    /// A flood mix against a full table: 88 % established ACKs, 8 % spoofed SYNs from
    /// fresh sources (each evicts the oldest half-open entry), 4 % ACKs to spoofed
    /// flows (mostly evicted already: a tombstone lookup each).
    pub fn fill_flood_burst(&mut self) {
        for k in 0..64 {
            let r = self.rnd();
            let kind = r % 100;
            let x = self.rnd();
            let b = &mut self.bufs[k];
            if kind < 88 {
                self.zones[k] = established_ack(b, r, self.flows);
            } else {
                let src = 0x6440_0000 | (x & 0x003f_ffff);
                let flags = if kind < 96 { SYN } else { ACK };
                write_tcp(b, src, 1024 + (r >> 20) as u16, 0x0a00_0201 + (x >> 29), 80, flags, x, r);
                self.zones[k] = Zone::Outside;
            }
        }
    }

    fn rnd(&mut self) -> u32 {
        xorshift(&mut self.rng) as u32
    }

    /// Fills the 64 hot buffers with the mix: 88 % established ACKs (either
    /// direction, random flows), 4 % SYN retransmissions of embryonic flows, 4 % FINs
    /// on closing flows, 4 % garbage.
    pub fn fill_burst(&mut self) {
        for k in 0..64 {
            let r = self.rnd();
            let kind = r % 100;
            let b = &mut self.bufs[k];
            if kind < 88 {
                self.zones[k] = established_ack(b, r, self.flows);
            } else if kind < 92 {
                let (c, cp, s, ci, _) = flow(self.flows + (r >> 7) % SIDE_POOL);
                write_tcp(b, c, cp, s, 80, SYN, ci, 0);
                self.zones[k] = Zone::Outside;
            } else if kind < 96 {
                let i = self.flows + SIDE_POOL + (r >> 7) % SIDE_POOL;
                let (c, cp, s, ci, si) = flow(i);
                write_tcp(b, c, cp, s, 80, FIN | ACK, ci.wrapping_add(1), si.wrapping_add(1));
                self.zones[k] = Zone::Outside;
            } else {
                b.fill(0xa5); // not IP: an unknown EtherType
                b[12] = 0x08;
                b[13] = 0x00;
                b[14] = 0x4f; // IPv4 with IHL 15 in a 60-byte frame: malformed
                self.zones[k] = Zone::Outside;
            }
        }
    }

    /// Fills the 64 hot buffers with established ACKs only (either direction, random
    /// flows): what [`lean::Lean`] takes, for timing the two on the same frames.
    pub fn fill_ack_burst(&mut self) {
        for k in 0..64 {
            let r = self.rnd();
            self.zones[k] = established_ack(&mut self.bufs[k], r, self.flows);
        }
    }

    /// The current burst's frames.
    pub fn frames(&self) -> &[[u8; 60]] {
        &self.bufs
    }

    /// Judges the current burst.
    pub fn run_burst(&mut self, out: &mut [holdfast_pipeline::Verdict; 64]) {
        let now = self.now;
        let pkts: [Packet; 64] = std::array::from_fn(|k| Packet { data: &self.bufs[k], zone: self.zones[k], now });
        self.engine.process_batch(&pkts, out);
    }

    /// The burst through [`Engine::probe_batch`]: parsed and hashed, and with `lookup`
    /// looked up, but not judged. Returns the packets parsed (or found).
    pub fn probe_burst(&mut self, lookup: bool) -> usize {
        let now = self.now;
        let pkts: [Packet; 64] = std::array::from_fn(|k| Packet { data: &self.bufs[k], zone: self.zones[k], now });
        self.engine.probe_batch(&pkts, lookup)
    }
}
