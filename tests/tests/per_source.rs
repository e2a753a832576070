//! The per-source limit under every pickup mode. A reverse-of-allowed pickup creates an
//! entry from a reply and then swaps its directions: the count it charged must be the
//! count it releases, or counts leak until a server's replies drop as `source_limit`
//! and, once the count table fills, a worker searches it forever.

use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration as StdDuration;

use holdfast_pipeline::engine::{EngineConfig, Packet, Pickup};
use holdfast_pipeline::parse::{Frame, L4 as ParsedL4, parse};
use holdfast_pipeline::wire::build::{FrameSpec, L4};
use holdfast_pipeline::{DropReason, Duration, Engine, Instant, PassKind, Verdict, Zone};
use holdfast_tests::{mixed_frames, webfarm_policy};

const ACK: u8 = 0x10;

/// A server's mid-stream ACK from port 80 to a client: with reverse-of-allowed pickup,
/// the reply of an allowed outside -> 10.0.2.0/24:80 flow.
fn reply(server: IpAddr, client: IpAddr, cport: u16) -> Vec<u8> {
    FrameSpec::new(server, client, L4::Tcp { sport: 80, dport: cport, seq: 7000, ack: 9000, flags: ACK, window: 502, options: vec![], payload: vec![] }).build()
}

fn is_syn(f: &[u8]) -> bool {
    matches!(parse(f), Ok(Frame::Ip(m)) if matches!(m.l4, ParsedL4::Tcp(t) if t.flags & 0x02 != 0))
}

fn engine(capacity: usize, limit: u32, pickup: Pickup, now: Instant) -> Engine {
    Engine::new(EngineConfig { capacity, per_source_limit: limit, pickup, ..EngineConfig::default() }, webfarm_policy(), now)
}

/// (a) A dozen flows live at a time, two hundred picked up in all from one server:
/// every reply passes, and the counts return to zero when the flows are gone.
#[test]
fn picked_up_replies_release_what_they_charged() {
    let mut now = Instant::from_secs(1000);
    let mut e = engine(64, 100, Pickup::ReverseOfAllowed, now);
    let (server, client): (IpAddr, IpAddr) = ("10.0.2.1".parse().unwrap(), "198.51.100.7".parse().unwrap());
    let mut port = 40_000u16;
    for round in 0..17 {
        for _ in 0..12 {
            let v = e.process(&Packet { data: &reply(server, client, port), zone: Zone::Inside, now });
            assert!(v.is_pass(), "round {round}, port {port}: {v:?}");
            port += 1;
        }
        e.audit().unwrap_or_else(|err| panic!("round {round}: {err}"));
        // Past every timeout: the wheel retires them all.
        now = now + Duration::from_secs(6 * 86_400);
        e.expire(now, usize::MAX);
        assert!(e.table().is_empty());
        e.audit().unwrap_or_else(|err| panic!("round {round}, after expiry: {err}"));
    }
    assert_eq!(e.counters().dropped[DropReason::SourceLimit as usize], 0);
    assert_eq!(e.counters().flows_created, 204);
}

/// (b) Picked-up replies from more distinct servers than the count table has slots,
/// each flow retired before the next: the worker keeps answering. Before the fix each
/// server's count leaked, the table filled, and the next lookup never returned — so
/// the engine runs on a thread and the test fails on a timeout instead of hanging.
#[test]
fn many_sources_never_stall_the_worker() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut now = Instant::from_secs(1000);
        let mut e = engine(16, 4, Pickup::ReverseOfAllowed, now);
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        let mut passed = 0;
        for round in 0..4u16 {
            for host in 1..=254u8 {
                let server = IpAddr::from([10, 0, 2, host]);
                let v = e.process(&Packet { data: &reply(server, client, 1024 + round * 256 + u16::from(host)), zone: Zone::Inside, now });
                passed += u32::from(v.is_pass());
                now = now + Duration::from_secs(6 * 86_400);
                e.expire(now, usize::MAX);
            }
        }
        let _ = tx.send((passed, e.audit()));
    });
    let (passed, audit) = rx.recv_timeout(StdDuration::from_secs(60)).expect("the engine stopped answering (an endless probe loop)");
    assert_eq!(passed, 4 * 254, "every picked-up reply passes: its server holds one entry at a time");
    audit.unwrap();
}

/// Every pickup mode with the per-source limit on: mixed traffic (handshakes, data,
/// closes, stray ACKs, UDP, ICMP, fragments, IPv6), an audit after every burst, and
/// nothing left charged once everything has expired.
#[test]
fn every_pickup_mode_keeps_exact_counts() {
    let frames = mixed_frames(600);
    let mut strict_created = Vec::new();
    for pickup in [Pickup::Strict, Pickup::ReverseOfAllowed, Pickup::Loose] {
        for limit in [1000, 3, 1] {
            let t0 = Instant::from_secs(1000);
            let mut e = engine(700, limit, pickup, t0);
            let mut out = [Verdict::Drop(DropReason::Malformed); 64];
            // The frames as sent; then, once everything has expired, without their
            // SYNs (every packet is mid-stream: loose pickups from the clients,
            // reverse pickups from the servers); then with the zones swapped.
            let passes: [(u64, bool, bool); 3] = [(0, false, false), (10 * 86_400, true, false), (20 * 86_400, false, true)];
            for (start, no_syn, swap) in passes {
                let t = t0 + Duration::from_secs(start);
                e.expire(t, usize::MAX);
                let pass: Vec<&(Vec<u8>, Zone)> = frames.iter().filter(|(f, _)| !(no_syn && is_syn(f))).collect();
                for (i, chunk) in pass.chunks(64).enumerate() {
                    let now = t + Duration::from_millis(i as u64 * 97);
                    let pkts: Vec<Packet> = chunk.iter().map(|(f, z)| Packet { data: f, zone: if swap { z.other() } else { *z }, now }).collect();
                    e.process_batch(&pkts, &mut out[..pkts.len()]);
                    e.expire(now, 64);
                    e.audit().unwrap_or_else(|err| panic!("{pickup:?}, limit {limit}, burst {i}: {err}"));
                }
            }
            e.expire(t0 + Duration::from_secs(30 * 86_400), usize::MAX);
            assert!(e.table().is_empty());
            e.audit().unwrap_or_else(|err| panic!("{pickup:?}, limit {limit}, at the end: {err}"));
            let created = e.counters().passed[PassKind::New as usize];
            if pickup == Pickup::Strict {
                strict_created.push(created);
            } else if limit == 1000 {
                // With room to spare, the servers' replies of all 600 flows were picked up.
                assert!(created >= strict_created[0] + 600, "{pickup:?}: mid-stream flows were picked up ({created} vs {} created)", strict_created[0]);
            }
            if limit == 1 {
                let c = e.counters();
                assert!(c.dropped[DropReason::SourceLimit as usize] + c.source_recycled > 0, "{pickup:?}: the limit was reached");
            }
        }
    }
}
