//! What the coverage-guided fuzz targets (`fuzz/`, cargo-fuzz on nightly) check, as
//! plain functions: the targets call them, and `tests/tests/fuzz_regressions.rs` runs
//! every saved crash and seed through them on stable, so a crash found once stays a
//! test. Each panics when an invariant breaks; none may panic on any input otherwise.

use holdfast_controlplane::state;
use holdfast_pipeline::conntrack::pressure::{Evict, Pressure};
use holdfast_pipeline::engine::{ChangeKind, EngineConfig, Packet, Pickup};
use holdfast_pipeline::snapshot::{self, FlowRecord};
use holdfast_pipeline::{Engine, FlowHasher, Instant, Verdict, Zone};

/// The frame parser and the steering that picks a frame's worker.
pub fn frame(data: &[u8]) {
    let _ = holdfast_pipeline::parse::parse(data);
    let _ = holdfast_pipeline::steer::steer(data, &FlowHasher::new(1));
}

fn engine_for(mode: u8, seed: u64) -> Engine {
    let pickup = [Pickup::Strict, Pickup::ReverseOfAllowed, Pickup::Loose][usize::from(mode % 3)];
    let evict = [Evict::ByClass, Evict::Lru, Evict::None][usize::from(mode / 3 % 3)];
    let cfg = EngineConfig {
        capacity: 64,
        fragments: 8,
        tombstones: 64,
        seed,
        pickup,
        per_source_limit: if mode & 0x80 != 0 { 3 } else { 0 },
        pressure: Pressure { evict, ..Pressure::default() },
        // Without counters, and an IPv6 pool a tenth of the table, now and then.
        accounting: mode & 0x40 == 0,
        ipv6_slots: (mode & 0x20 != 0).then_some(6),
        ..EngineConfig::default()
    };
    static POLICY: std::sync::OnceLock<std::sync::Arc<holdfast_pipeline::Classifier>> = std::sync::OnceLock::new();
    Engine::new(cfg, POLICY.get_or_init(crate::webfarm_policy).clone(), Instant::from_secs(1))
}

/// The engine on a sequence of frames with random time steps. Input: a mode byte
/// (pickup, eviction, per-source limit, accounting, an IPv6 pool), then per frame a control byte (bit 0: the
/// zone; bits 1..4: a time step, an expiry run or the end of a batch) and a length
/// byte, then the frame. Checks: every frame counted once, bytes counted, the table's
/// bookkeeping (`Engine::audit`: no entry in two places, class counts equal list
/// lengths, timers never later than their deadline, per-source totals); the table
/// through a snapshot and back holds the same flows; a day later everything expired.
pub fn engine(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let mut e = engine_for(mode, 7);
    // The journal a sync peer is fed from: what it says, applied to a set of keys as the
    // peer applies it, must end as the table's own keys.
    e.keep_changes(1 << 16, holdfast_pipeline::Duration::from_secs(1));
    let mut peer: std::collections::HashSet<holdfast_pipeline::FlowKey> = std::collections::HashSet::new();
    let told = |e: &mut Engine, peer: &mut std::collections::HashSet<holdfast_pipeline::FlowKey>, now: Instant| {
        e.drain_changes(now, |c| {
            if c.kind == ChangeKind::Delete {
                peer.remove(&c.flow.key().0);
            } else {
                peer.insert(c.flow.key().0);
            }
        })
    };
    let mut now = Instant::from_secs(1);
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut batch: Vec<Packet> = Vec::new();
    let mut out = Vec::new();
    let flush = |e: &mut Engine, batch: &mut Vec<Packet>, out: &mut Vec<Verdict>| {
        out.clear();
        out.resize(batch.len(), Verdict::Drop(holdfast_pipeline::DropReason::Malformed));
        e.process_batch(batch, out);
        batch.clear();
    };
    while rest.len() >= 2 {
        let (ctl, len) = (rest[0], usize::from(rest[1]));
        let f = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + f.len()..];
        let step = match (ctl >> 1) & 0x0f {
            1 => 1_000_000,
            2 => 1_000_000_000,
            3 => 30_000_000_000,
            4 => 600_000_000_000,
            5 => 86_400_000_000_000,
            _ => 0,
        };
        now = now + holdfast_pipeline::Duration::from_nanos(step);
        match (ctl >> 1) & 0x0f {
            6 => {
                flush(&mut e, &mut batch, &mut out);
                e.expire(now, 16);
                told(&mut e, &mut peer, now);
            }
            7 => flush(&mut e, &mut batch, &mut out),
            _ => {}
        }
        if step > 0 {
            // Packets of one batch share a time, as a burst does.
            flush(&mut e, &mut batch, &mut out);
        }
        if step >= 86_400_000_000_000 {
            // The appliance expires every 2 ms; a day never passes without it. (Ticks
            // are 32-bit: an entry must expire before it is idle half the wrap period,
            // 388 days, or its idle time reads as the future — docs/timers.md.)
            e.expire(now, usize::MAX);
        }
        batch.push(Packet { data: f, zone: if ctl & 1 == 0 { Zone::Outside } else { Zone::Inside }, now });
        frames += 1;
        bytes += f.len() as u64;
    }
    flush(&mut e, &mut batch, &mut out);
    told(&mut e, &mut peer, now);
    if e.change_stats().lost == 0 {
        let mut mine: Vec<_> = e.export(now).map(|r| r.key).collect();
        let mut theirs: Vec<_> = peer.iter().copied().collect();
        mine.sort_by_key(|k| (k.addr, k.port, k.proto, k.vlan));
        theirs.sort_by_key(|k| (k.addr, k.port, k.proto, k.vlan));
        assert_eq!(mine, theirs, "the changes told a peer every flow of the table and no other");
    }
    let c = e.counters();
    assert_eq!(c.packets, frames, "every frame counted once");
    assert_eq!(c.passed_total() + c.dropped_total(), c.packets);
    assert_eq!(c.bytes, bytes);
    e.audit().unwrap();

    // Through a snapshot's bytes and back: the same flows, a consistent table.
    let mut enc = Vec::new();
    let recs: Vec<FlowRecord> = e.export(now).collect();
    assert_eq!(recs.len(), e.table().len(), "every live entry is exported once");
    for r in &recs {
        r.encode(&mut enc);
    }
    let mut back = engine_for(mode, 7);
    let mut at = 0;
    while at < enc.len() {
        let (r, n) = FlowRecord::decode(&enc[at..], at as u64).expect("what an engine writes decodes");
        back.restore(&r, Instant::from_secs(5), holdfast_pipeline::Duration::ZERO).expect("fits the same table");
        at += n;
    }
    back.audit().unwrap();
    let key = |f: holdfast_pipeline::FlowInfo| (f.key.addr, f.key.port, f.key.proto, f.key.vlan, f.state);
    let mut a: Vec<_> = e.flows(now).map(key).collect();
    let mut b: Vec<_> = back.flows(Instant::from_secs(5)).map(key).collect();
    a.sort();
    b.sort();
    // A restore leaves out what expired at the moment it was taken (idle = timeout).
    assert!(b.len() <= a.len() && b.iter().all(|f| a.binary_search(f).is_ok()), "a restore invents no flow");

    // Timeouts are at most 5 days here; a sweep every 20 days for a year empties it.
    for k in 1..=20u64 {
        e.expire(now + holdfast_pipeline::Duration::from_secs(k * 20 * 86_400), usize::MAX);
    }
    assert!(e.table().is_empty(), "every timer fires");
    e.audit().unwrap();
}

/// The YAML configuration: any text is a config or a positioned error.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = holdfast_controlplane::config::parse(text, "fuzz.yaml");
    }
}

/// The pcap/pcapng reader: any bytes are records up to an error with its offset; every
/// record it yields goes through the parser.
pub fn capture(data: &[u8]) {
    let c = holdfast_controlplane::capture::parse(data);
    if let Some(e) = &c.error {
        assert!(e.offset <= data.len(), "an error offset inside the file");
    }
    for r in &c.records {
        let _ = holdfast_pipeline::parse::parse(&r.data);
    }
}

/// Recomputes the header's and every block's CRC-32 where the structure allows: what
/// lets the fuzzer reach the record decoder and the restore behind the checksums.
pub fn fix_checksums(b: &mut [u8]) {
    if b.len() < snapshot::HEADER_LEN {
        return;
    }
    let crc = crc32fast::hash(&b[..68]);
    b[68..72].copy_from_slice(&crc.to_le_bytes());
    let mut at = snapshot::HEADER_LEN;
    while at + snapshot::BLOCK_HEADER_LEN <= b.len() {
        let len = u32::from_le_bytes([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]) as usize;
        let body = at + snapshot::BLOCK_HEADER_LEN;
        if len > snapshot::MAX_PAYLOAD || body + len > b.len() {
            return;
        }
        let crc = crc32fast::hash(&b[body..body + len]);
        b[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
        at = body + len;
    }
}

/// The snapshot reader: any bytes are restored whole or refused; a restored table is
/// consistent. The first byte chooses whether checksums are fixed up first.
pub fn snapshot(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        fix_checksums(&mut bytes);
    }
    let Ok(found) = state::from_bytes("fuzz.snapshot", bytes) else { return };
    let seed = found.header.seed;
    let workers = 1 + usize::from(mode >> 1 & 1);
    let mut es: Vec<Engine> = (0..workers).map(|_| engine_for(mode >> 2, seed)).collect();
    if state::restore(found, &mut es, &FlowHasher::new(seed), Instant::from_secs(5)).is_ok() {
        for e in &es {
            e.audit().unwrap();
        }
    }
}

/// The control endpoint's own parsing: the flow query and the access decision. Input:
/// query, token, `Authorization` header and path separated by 0xff bytes.
pub fn endpoint(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xff).map(String::from_utf8_lossy);
    let query = parts.next().unwrap_or_default();
    let token = parts.next();
    let header = parts.next();
    let path = parts.next().unwrap_or_default();
    if let Ok((_, limit)) = holdfast_controlplane::control::parse_query(&query) {
        assert!(limit <= holdfast_controlplane::control::MAX_FLOWS, "a listing limit above the maximum");
    }
    let far: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let near: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let tok = token.as_deref().filter(|t| !t.is_empty());
    let got = holdfast_controlplane::control::decide(tok, header.as_deref(), far, &path, || Ok(0));
    if tok.is_none() {
        assert!(got.is_err(), "another host without a configured token is refused");
        assert!(holdfast_controlplane::control::decide(None, header.as_deref(), near, &path, || Ok(0)).is_ok());
        let unknown = holdfast_controlplane::control::decide(None, header.as_deref(), near, &path, || Err("unknown".into()));
        assert!(unknown.is_err(), "a local user who cannot be told is refused");
    } else if got.is_ok() {
        let t = tok.unwrap_or_default();
        let given = header.as_deref().and_then(|h| h.trim_start().split_once(' ')).filter(|(s, _)| s.eq_ignore_ascii_case("bearer")).map(|(_, k)| k.trim());
        assert_eq!(given, Some(t), "only the token opens it");
    }
}

/// conntrackd's sync protocol: any datagram decodes to messages or errors without
/// panicking; every message accepted encodes to bytes that decode to the same message.
pub fn sync(data: &[u8]) {
    use holdfast_controlplane::sync::proto;
    for m in proto::decode(data).into_iter().flatten() {
        let mut b = Vec::new();
        proto::encode(&m, &mut b);
        let again = proto::decode(&b);
        assert_eq!(again.len(), 1);
        let back = again.into_iter().next().expect("one").expect("what the encoder writes decodes");
        // A missing TIMEOUT decodes as u32::MAX and is then written out: compare the rest.
        assert_eq!(back, m);
    }
}

/// The live replay's bookkeeping against a simulated device: frames (from the input:
/// `[length][flags][bytes]` records) go through the side rule and the rewrites
/// (`--unique-ip`, `--map-servers`) into the tracker with flow order; the device lets
/// each frame out (TTL lowered, Ethernet addresses changed), drops it, or holds it past
/// the timeout, as the flag bits say. Invariants: a rewrite keeps the length; every
/// frame offered is resolved exactly once, forwarded or dropped, in capture order; a
/// frame held for order is only sent when its flow has nothing in flight on the other
/// side; nothing is left at the end.
pub fn replay(data: &[u8]) {
    use holdfast_controlplane::replay::order::Tracker;
    use holdfast_controlplane::replay::rewrite::{ServerMap, unique_ip};
    use holdfast_controlplane::replay::sides::{Rule, Sides};
    use std::collections::VecDeque;

    const TIMEOUT: u64 = 100;
    let mut t = Tracker::new(true, TIMEOUT, 3, 64);
    let mut sides = Sides::new(Rule::Auto(Default::default()));
    let mut servers = ServerMap::new(0x0a00_0200, 24).expect("a /24");
    // The device: frames in flight, (side sent, bytes, flags).
    let mut device: VecDeque<(usize, Vec<u8>, u8)> = VecDeque::new();
    let mut now = 0u64;
    let mut offered = 0u64;
    let mut resolved = 0u64;
    let mut last_index: Option<u64> = None;
    let mut outcome = |t: &mut Tracker, resolved: &mut u64| {
        while let Some(o) = t.pop_outcome() {
            assert!(last_index.is_none_or(|l| o.index > l), "outcomes in capture order");
            last_index = Some(o.index);
            *resolved += 1;
        }
    };
    let step = |t: &mut Tracker, device: &mut VecDeque<(usize, Vec<u8>, u8)>, now: &mut u64| {
        // The device acts on what it holds, oldest first.
        if let Some((side, mut f, flags)) = device.pop_front() {
            match flags & 3 {
                // Out on the other side, as a router changes it.
                0 | 1 => {
                    if f.len() >= 12 {
                        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8]);
                    }
                    t.emerged(1 - side, &f, *now);
                }
                // Dropped: the timeout resolves it.
                2 => {}
                // Slow: out after the timeout (counted late, not twice).
                _ => {
                    *now += TIMEOUT + 1;
                    t.expire(*now);
                    t.emerged(1 - side, &f, *now);
                }
            }
        }
        *now += 1;
        t.expire(*now);
        while let Some(r) = t.pop_release() {
            device.push_back((r.side, r.bytes, 0));
        }
    };
    let mut rest = data;
    while let [len, flags, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        let mut f = frame.to_vec();
        let side = sides.side(&f, None);
        if flags & 0x10 != 0 {
            servers.apply(&mut f, side == 1);
        }
        unique_ip(&mut f, side == 0, u32::from(flags >> 5));
        assert_eq!(f.len(), n, "a rewrite keeps the length");
        let flow = t.flow_of(&f);
        if t.offer(offered, 0, side, &f, flow, now) {
            device.push_back((side, f, *flags));
        }
        offered += 1;
        if flags & 0x0c != 0 {
            step(&mut t, &mut device, &mut now);
        }
        outcome(&mut t, &mut resolved);
    }
    // Drain: the device finishes, the timeouts run out.
    for _ in 0..(offered + 4) * 4 {
        if t.is_done() && device.is_empty() {
            break;
        }
        step(&mut t, &mut device, &mut now);
        if device.is_empty() {
            now += TIMEOUT + 1;
            t.expire(now);
            while let Some(r) = t.pop_release() {
                device.push_back((r.side, r.bytes, 0));
            }
        }
        outcome(&mut t, &mut resolved);
    }
    assert!(t.is_done() && device.is_empty(), "every frame resolved, nothing left held");
    assert_eq!(resolved, offered, "each frame resolved once");
    assert_eq!(t.counts.forwarded + t.counts.dropped, offered);
}
