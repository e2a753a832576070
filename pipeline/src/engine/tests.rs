//! Engine behaviour for UDP, ICMP, fragments, L2 and addressing, on a fake clock.

use core::net::IpAddr;

use crate::engine::{EngineConfig, Packet};
use crate::policy::{Action, Zone};
use crate::testutil::*;
use crate::time::Duration;
use crate::verdict::{DropReason, PassKind, Verdict};
use crate::wire::build::{FrameSpec, L4, ethernet};
use crate::wire::tcp::flags::*;

const NEW: Verdict = Verdict::Pass(PassKind::New);
const EST: Verdict = Verdict::Pass(PassKind::Established);
const REL: Verdict = Verdict::Pass(PassKind::Related);

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    FrameSpec::udp(ip(src), sport, ip(dst), dport, b"query").build()
}

#[test]
fn udp_unreplied_then_replied_then_assured_after_two_seconds() {
    let mut l = Lab::new();
    let q = udp(SERVER, 5353, "192.0.2.53", 53);
    let r = udp("192.0.2.53", 53, SERVER, 5353);
    assert_eq!(l.send(&q, Zone::Inside), NEW);
    let f = l.flows()[0];
    assert_eq!((f.state, f.expires_in, f.assured), ("UNREPLIED", Duration::from_secs(30), false));
    assert_eq!(l.send(&r, Zone::Outside), EST);
    assert_eq!(l.flows()[0].state, "REPLIED");
    assert_eq!(l.flows()[0].expires_in, Duration::from_secs(30), "the first reply itself still gets 30 s");
    l.advance(Duration::from_secs(3));
    assert_eq!(l.send(&q, Zone::Inside), EST);
    let f = l.flows()[0];
    assert_eq!((f.expires_in, f.assured), (Duration::from_secs(120), true));
    assert_eq!(f.packets, [2, 1]);
    // An unsolicited datagram from outside to the same server port is a new flow,
    // which policy denies.
    assert_eq!(l.send(&udp("192.0.2.99", 53, SERVER, 5353), Zone::Outside), Verdict::Drop(DropReason::Policy));
}

#[test]
fn udp_unreplied_expires_after_thirty_seconds() {
    let mut l = Lab::new();
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), NEW);
    l.advance(Duration::from_secs(29));
    assert_eq!(l.e.expire(l.now, 100), 0);
    l.advance(Duration::from_secs(1));
    assert_eq!(l.e.expire(l.now, 100), 1);
    // The late reply finds no state; as a new flow from outside policy would deny it,
    // and the tombstone says what really happened.
    assert_eq!(l.send(&udp("192.0.2.53", 53, SERVER, 5353), Zone::Outside), Verdict::Drop(DropReason::ReplyToExpired));
}

/// A lookup skips working out an entry's timeout while it has been idle for less than
/// the shortest any entry can have: that bound must include a class shorter than the
/// adaptive floor (2 s), here UDP's unreplied timeout set to 1 s.
#[test]
fn an_entry_past_a_timeout_shorter_than_the_adaptive_floor_is_expired_on_contact() {
    let mut cfg = EngineConfig::default();
    cfg.timeouts.set(crate::conntrack::TimerClass::UdpUnreplied, Duration::from_secs(1));
    let mut l = Lab::with(cfg);
    let q = udp(SERVER, 5353, "192.0.2.53", 53);
    assert_eq!(l.send(&q, Zone::Inside), NEW);
    l.advance(Duration::from_millis(900));
    assert_eq!(l.send(&q, Zone::Inside), EST, "0.9 s idle: alive");
    l.advance(Duration::from_millis(1000));
    assert_eq!(l.send(&q, Zone::Inside), NEW, "1 s idle, no timer pass in between: expired on contact, a new flow");
}

fn echo(src: &str, dst: &str, ty: u8, id: u16) -> Vec<u8> {
    FrameSpec::icmp(ip(src), ip(dst), ty, 0, u32::from(id) << 16 | 1, b"ping").build()
}

#[test]
fn icmp_echo_request_and_reply() {
    let mut l = Lab::new();
    assert_eq!(l.send(&echo(CLIENT, SERVER, 8, 7), Zone::Outside), NEW);
    assert_eq!(l.send(&echo(SERVER, CLIENT, 0, 7), Zone::Inside), EST);
    assert_eq!(l.flows()[0].state, "REPLIED");
    // A reply nobody asked for.
    assert_eq!(l.send(&echo(SERVER, CLIENT, 0, 8), Zone::Inside), Verdict::Drop(DropReason::MidstreamNoState));
    // The server pinging the client back with the same identifier is its own flow.
    assert_eq!(l.send(&echo(SERVER, CLIENT, 8, 7), Zone::Inside), NEW);
    assert_eq!(l.flows().len(), 2);
    l.advance(Duration::from_secs(30));
    assert_eq!(l.e.expire(l.now, 100), 2);
}

/// A reply is no proof of a connection: a blind sender gets one by spoofing a request
/// to a host the rules let it reach (a ping, a DNS query), from any address. Were
/// replied datagram flows kept like assured connections, ~capacity / 30 s such
/// requests a second (33k at 1M entries) would keep the table full of entries no
/// newcomer may evict, and every new connection would be refused. Replied flows that
/// are no stream are evicted first instead; established connections and a real UDP
/// stream (a reply, and traffic 2 s later) keep their places.
#[test]
fn answered_spoofed_requests_do_not_lock_the_table() {
    use crate::conntrack::pressure::Admission;
    let mut l = Lab::with(EngineConfig { capacity: 256, ..EngineConfig::default() });
    // 40 established connections and a DNS stream from the server.
    for i in 0..40u16 {
        let client = format!("198.51.100.{}", i + 10);
        assert_eq!(l.seg(&client, 40000, SERVER, SPORT, SYN, 1000, 0, 64_000, 0, Zone::Outside), NEW);
        assert_eq!(l.seg(SERVER, SPORT, &client, 40000, SYN | ACK, 5000, 1001, 64_000, 0, Zone::Inside), EST);
        assert_eq!(l.seg(&client, 40000, SERVER, SPORT, ACK, 1001, 5001, 64_000, 0, Zone::Outside), EST);
    }
    let (q, r) = (udp(SERVER, 5353, "192.0.2.53", 53), udp("192.0.2.53", 53, SERVER, 5353));
    assert_eq!(l.send(&q, Zone::Inside), NEW);
    assert_eq!(l.send(&r, Zone::Outside), EST);
    l.advance(Duration::from_secs(3));
    assert_eq!(l.send(&q, Zone::Inside), EST);
    // 2,000 spoofed pings from as many addresses, each answered by the server.
    let mut rng = xorshift(7);
    for i in 0..2000u32 {
        let a = rng() as u32 | 0x0100_0000;
        let src = core::net::Ipv4Addr::from(a & 0xbfff_ffff).to_string();
        assert_eq!(l.send(&echo(&src, SERVER, 8, i as u16), Zone::Outside), NEW, "request {i}");
        assert_eq!(l.send(&echo(SERVER, &src, 0, i as u16), Zone::Inside), EST, "reply {i}");
        if i % 100 == 99 {
            l.advance(Duration::from_millis(50));
        }
    }
    let classes = l.e.class_counts();
    assert_eq!(classes[Admission::Assured as usize], 41, "the connections and the stream: nothing else is kept like them");
    assert!(l.e.counters().evictions[Admission::Replied as usize] > 1500, "{:?}", l.e.counters().evictions);
    assert_eq!(l.e.counters().evictions[Admission::Assured as usize], 0);
    // A new client gets in; every established connection and the stream still pass.
    assert_eq!(l.c(SYN, 0), NEW);
    assert_eq!(l.s(SYN | ACK, 0), EST);
    assert_eq!(l.c(ACK, 0), EST);
    for i in 0..40u16 {
        let client = format!("198.51.100.{}", i + 10);
        assert_eq!(l.seg(SERVER, SPORT, &client, 40000, ACK | PSH, 5001, 1001, 64_000, 100, Zone::Inside), EST, "connection {i}");
    }
    assert_eq!(l.send(&r, Zone::Outside), EST);
    assert_eq!(l.e.counters().dropped[DropReason::TableFull as usize], 0);
    l.e.audit().unwrap();
}

/// A sender who knows the stream rule makes streams with spoofed requests too: two
/// queries on one 5-tuple 2 s apart, each answered by the server. Streams are kept
/// like connections (Linux's rule), so without a bound ~8k such packets a second
/// would hold a 1M table full of entries nothing evicts. `stream_share` bounds them:
/// beyond it a stream stays replied (evicted first) and the table keeps room for new
/// connections.
#[test]
fn forged_streams_hold_at_most_their_share() {
    use crate::conntrack::pressure::{Admission, Pressure};
    use crate::policy::{Classifier, PortRange, ProtoMatch, Rule};
    let dns_in = Rule {
        from: Some(Zone::Outside),
        to: Some(Zone::Inside),
        proto: ProtoMatch::Number(17),
        dst_ports: vec![PortRange { lo: 53, hi: 53 }],
        ..Rule::any("dns-in", Action::Allow)
    };
    let run = |stream_share: f64| {
        let pressure = Pressure { stream_share, ..Pressure::default() };
        let rules = policy().rules().iter().cloned().chain([dns_in.clone()]).collect();
        let mut l = Lab::with_policy(EngineConfig { capacity: 256, pressure, ..EngineConfig::default() }, Classifier::new(rules, Action::Deny));
        for i in 0..40u16 {
            let client = format!("198.51.100.{}", i + 10);
            assert_eq!(l.seg(&client, 40000, SERVER, SPORT, SYN, 1000, 0, 64_000, 0, Zone::Outside), NEW);
            assert_eq!(l.seg(SERVER, SPORT, &client, 40000, SYN | ACK, 5000, 1001, 64_000, 0, Zone::Inside), EST);
            assert_eq!(l.seg(&client, 40000, SERVER, SPORT, ACK, 1001, 5001, 64_000, 0, Zone::Outside), EST);
        }
        // 9 rounds of 24 spoofed sources (what fits: a sender can count): query and
        // answer, three times 1.1 s apart (idle less than the adaptive timeouts' 2 s
        // floor on a full table, older than the rule's 2 s at the third).
        for round in 0..9u32 {
            let srcs: Vec<String> = (0..24u32).map(|i| core::net::Ipv4Addr::from(0x0b00_0000 + round * 256 + i).to_string()).collect();
            for pass in 0..3 {
                for s in &srcs {
                    let q = l.send(&udp(s, 33000, SERVER, 53), Zone::Outside);
                    assert!(q.is_pass(), "round {round} pass {pass}: {q:?}");
                    assert!(l.send(&udp(SERVER, 53, s, 33000), Zone::Inside).is_pass());
                }
                l.advance(Duration::from_millis(1100));
            }
        }
        let assured = l.e.class_counts()[Admission::Assured as usize];
        let admitted = l.c(SYN, 0);
        (l, assured, admitted)
    };
    // Without a share the forged streams take every place left and nothing may be
    // evicted for a newcomer.
    let (l, assured, admitted) = run(1.0);
    assert_eq!((assured, admitted), (256, Verdict::Drop(DropReason::TableFull)));
    l.e.audit().unwrap();
    // With the default share (half): 128 streams, the rest held replied; a new
    // connection gets in and every established one still passes.
    let (mut l, assured, admitted) = run(0.5);
    assert_eq!((assured, admitted), (40 + 128, NEW));
    assert!(l.e.counters().streams_held >= 88, "{}", l.e.counters().streams_held);
    assert_eq!(l.e.counters().evictions[Admission::Assured as usize], 0);
    assert_eq!(l.s(SYN | ACK, 0), EST);
    assert_eq!(l.c(ACK, 0), EST);
    for i in 0..40u16 {
        let client = format!("198.51.100.{}", i + 10);
        assert_eq!(l.seg(SERVER, SPORT, &client, 40000, ACK | PSH, 5001, 1001, 64_000, 100, Zone::Inside), EST, "connection {i}");
    }
    l.e.audit().unwrap();
}

/// A busy resolver at `per_source_limit`: its answered queries are `replied`, not
/// assured, so its next query recycles its oldest answered one (by-class) instead of
/// being refused — when answered queries were assured, a resolver that reached the
/// limit could send nothing until its old queries timed out (30 s) — while its one
/// real stream (a forwarder's long-lived 5-tuple) is kept.
#[test]
fn a_busy_resolver_at_its_source_limit_recycles_its_answered_queries() {
    use crate::conntrack::pressure::Admission;
    let mut l = Lab::with(EngineConfig { capacity: 1024, per_source_limit: 16, ..EngineConfig::default() });
    let resolver = SERVER;
    // The forwarder's stream to its upstream: a reply, then traffic 2 s after the start.
    let (fq, fr) = (udp(resolver, 5300, "192.0.2.1", 53), udp("192.0.2.1", 53, resolver, 5300));
    assert_eq!(l.send(&fq, Zone::Inside), NEW);
    assert_eq!(l.send(&fr, Zone::Outside), EST);
    l.advance(Duration::from_secs(3));
    assert_eq!(l.send(&fq, Zone::Inside), EST);
    // 200 queries from fresh source ports, each answered at once.
    for i in 0..200u16 {
        let (q, r) = (udp(resolver, 10_000 + i, "192.0.2.53", 53), udp("192.0.2.53", 53, resolver, 10_000 + i));
        assert_eq!(l.send(&q, Zone::Inside), NEW, "query {i}");
        assert_eq!(l.send(&r, Zone::Outside), EST, "answer {i}");
    }
    assert_eq!(l.e.counters().dropped[DropReason::SourceLimit as usize], 0, "no query refused");
    assert_eq!(l.e.counters().source_recycled, 200 - 15, "each query past the limit took the place of the oldest answered one");
    assert_eq!(l.e.table().len(), 16, "the limit holds");
    assert_eq!(l.e.class_counts()[Admission::Assured as usize], 1, "the stream");
    assert_eq!(l.send(&fr, Zone::Outside), EST, "the stream is kept");
    // The last 15 queries' answers still pass (a late duplicate answer).
    for i in 185..200u16 {
        assert_eq!(l.send(&udp("192.0.2.53", 53, resolver, 10_000 + i), Zone::Outside), EST, "answer {i} again");
    }
    l.e.audit().unwrap();
}

/// An ICMP error from `router` to `to`, quoting the first bytes of `quoted`'s IP packet.
fn icmp_error(router: &str, to: &str, ty: u8, code: u8, quoted: &FrameSpec) -> Vec<u8> {
    let q = quoted.ip_packet();
    let n = q.len().min(if quoted.src.is_ipv6() { 48 } else { 28 });
    FrameSpec::icmp(ip(router), ip(to), ty, code, 1500, &q[..n]).build()
}

#[test]
fn icmp_errors_are_related_only_to_existing_flows() {
    let mut l = Lab::new();
    l.handshake();
    let data = FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT, ACK, l.sseq, l.cseq);
    // Frag-needed from a router on the way to the client, about the server's segment.
    let err = icmp_error("203.0.113.1", SERVER, 3, 4, &data);
    assert_eq!(l.send(&err, Zone::Outside), REL);
    // Time exceeded about a flow that does not exist.
    let other = FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT + 1, ACK, 1, 1);
    assert_eq!(l.send(&icmp_error("203.0.113.1", SERVER, 11, 0, &other), Zone::Outside), Verdict::Drop(DropReason::IcmpUnrelated));
    // An error about our flow sent to the wrong host: the quoted source must be the
    // error's destination.
    assert_eq!(l.send(&icmp_error("203.0.113.1", "10.0.2.9", 3, 4, &data), Zone::Outside), Verdict::Drop(DropReason::IcmpInvalid));
    // Too short a quote (no ports).
    let q = data.ip_packet();
    let short = FrameSpec::icmp(ip("203.0.113.1"), ip(SERVER), 3, 4, 0, &q[..22]).build();
    assert_eq!(l.send(&short, Zone::Outside), Verdict::Drop(DropReason::IcmpInvalid));
    assert_eq!(l.state(), Some("ESTABLISHED"), "related errors do not change the flow");
}

/// RFC 5927's blind attacks: whoever knows a connection's addresses and ports (a
/// client's address and a server's port 80, the client port guessed from a range) can
/// forge "fragmentation needed" or "host unreachable" about it. Only an error quoting
/// a sequence number the flow's sender sent lately passes — pf's check; Linux has none
/// (`conntrack.icmp_error_window: off` judges as Linux does).
#[test]
fn icmp_errors_quoting_a_segment_outside_the_window_are_forged() {
    for check in [true, false] {
        let mut l = Lab::with(EngineConfig { capacity: 64, icmp_error_window: check, ..EngineConfig::default() });
        let syn = FrameSpec::tcp(ip(CLIENT), CPORT, ip(SERVER), SPORT, SYN, l.cseq, 0);
        // Host unreachable about the client's SYN, before any answer: its sequence
        // number is the one the SYN had.
        assert!(l.c(SYN, 0).is_pass());
        assert_eq!(l.send(&icmp_error("10.0.2.254", CLIENT, 3, 1, &syn), Zone::Inside), REL, "check {check}");
        // The server has sent nothing: nothing of its can be quoted yet.
        let none = FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT, SYN | ACK, 77, l.cseq);
        let forged_early = l.send(&icmp_error("203.0.113.1", SERVER, 3, 4, &none), Zone::Outside);
        assert!(l.s(SYN | ACK, 0).is_pass() && l.c(ACK, 0).is_pass());
        // Data in flight both ways; the errors quote the segments as sent.
        let (c0, s0) = (l.cseq, l.sseq);
        assert!(l.c(ACK | PSH, 1000).is_pass() && l.s(ACK | PSH, 1400).is_pass());
        let from_server = |seq| FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT, ACK | PSH, seq, c0);
        let from_client = |seq| FrameSpec::tcp(ip(CLIENT), CPORT, ip(SERVER), SPORT, ACK | PSH, seq, s0);
        assert_eq!(l.send(&icmp_error("203.0.113.1", SERVER, 3, 4, &from_server(s0)), Zone::Outside), REL, "check {check}");
        assert_eq!(l.send(&icmp_error("10.0.2.254", CLIENT, 3, 4, &from_client(c0)), Zone::Inside), REL, "check {check}");
        // A retransmission of the handshake's last segment is still within a window.
        assert_eq!(l.send(&icmp_error("203.0.113.1", SERVER, 11, 0, &from_server(s0.wrapping_sub(1))), Zone::Outside), REL);
        // Forged: sequence numbers more than the largest window (64,000 << 7, 8 MB)
        // away from anything either side sent. A blind forger hits a window by chance
        // about once in 500 tries at this window size; Linux lets every try through.
        let mut rng = xorshift(0x1c3b);
        let mut forged = Vec::new();
        let far = |r: u64| (16 << 20) + (r as u32 % (u32::MAX - (32 << 20)));
        for _ in 0..200 {
            let seq = s0.wrapping_add(far(rng()));
            forged.push(l.send(&icmp_error("203.0.113.1", SERVER, 3, 4, &from_server(seq)), Zone::Outside));
            let seq = c0.wrapping_add(far(rng()));
            forged.push(l.send(&icmp_error("10.0.2.254", CLIENT, 3, 1, &from_client(seq)), Zone::Inside));
        }
        forged.push(forged_early);
        let want = if check { Verdict::Drop(DropReason::IcmpOutOfWindow) } else { REL };
        let wrong = forged.iter().filter(|v| **v != want).count();
        assert_eq!(wrong, 0, "of {} forged errors, {wrong} were not {want:?} (check {check})", forged.len());
        // A quote too short to hold the sequence number helps no host's TCP either
        // (RFC 792 quotes 8 bytes): refused whatever the setting.
        let q = from_server(s0).ip_packet();
        let short = FrameSpec::icmp(ip("203.0.113.1"), ip(SERVER), 3, 4, 0, &q[..26]).build();
        assert_eq!(l.send(&short, Zone::Outside), Verdict::Drop(DropReason::IcmpInvalid));
        assert_eq!(l.state(), Some("ESTABLISHED"), "errors change nothing");
    }
    // IPv6 too: a forged "packet too big" about a web connection.
    let mut l = Lab::new();
    let (c6, s6) = ("2001:db8:1::7", "2001:db8:2::1");
    assert!(l.seg(c6, 40000, s6, 80, SYN, 100, 0, 1000, 0, Zone::Outside).is_pass());
    assert!(l.seg(s6, 80, c6, 40000, SYN | ACK, 500, 101, 1000, 0, Zone::Inside).is_pass());
    assert!(l.seg(c6, 40000, s6, 80, ACK, 101, 501, 1000, 0, Zone::Outside).is_pass());
    let ptb = |seq| icmp_error("2001:db8:ffff::1", s6, 2, 0, &FrameSpec::tcp(ip(s6), 80, ip(c6), 40000, ACK, seq, 101));
    assert_eq!(l.send(&ptb(501), Zone::Outside), REL);
    assert_eq!(l.send(&ptb(501 + 3_000_000), Zone::Outside), Verdict::Drop(DropReason::IcmpOutOfWindow));
}

#[test]
fn icmpv6_packet_too_big_is_related_and_neighbor_discovery_passes() {
    let mut l = Lab::new();
    let c6 = "2001:db8:1::7";
    let s6 = "2001:db8:2::1";
    let syn = FrameSpec::tcp(ip(c6), 40000, ip(s6), 80, SYN, 1, 0);
    assert_eq!(l.send(&syn.build(), Zone::Outside), NEW);
    let ptb = icmp_error("2001:db8:ffff::1", c6, 2, 0, &syn);
    assert_eq!(l.send(&ptb, Zone::Inside), REL);
    let ns = FrameSpec::icmp(ip("fe80::1"), ip("ff02::1:ff00:1"), 135, 0, 0, &[0; 16]).build();
    assert_eq!(l.send(&ns, Zone::Outside), Verdict::Pass(PassKind::Untracked));
    let mut cfg = EngineConfig { capacity: 16, ..EngineConfig::default() };
    cfg.ndp = Action::Deny;
    let mut l = Lab::with(cfg);
    assert_eq!(l.send(&ns, Zone::Outside), Verdict::Drop(DropReason::Ndp));
}

#[test]
fn later_fragments_follow_the_first() {
    let mut l = Lab::new();
    // DNS answer too big for one packet, from inside (allowed: dns rule).
    let big = FrameSpec { ident: 77, ..FrameSpec::udp(ip(SERVER), 5353, ip("192.0.2.53"), 53, &[1u8; 3000]) };
    let frags = big.fragments(1400);
    assert_eq!(frags.len(), 3);
    assert_eq!(l.send(&frags[0], Zone::Inside), NEW);
    assert_eq!(l.send(&frags[1], Zone::Inside), REL);
    assert_eq!(l.send(&frags[2], Zone::Inside), REL);
    // A denied datagram: later fragments are dropped with the first one's reason.
    let denied = FrameSpec { ident: 78, ..FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 9999, &[1u8; 3000]) };
    let frags = denied.fragments(1400);
    assert_eq!(l.send(&frags[0], Zone::Outside), Verdict::Drop(DropReason::Policy));
    assert_eq!(l.send(&frags[1], Zone::Outside), Verdict::Drop(DropReason::Policy));
    // A later fragment whose first fragment never came.
    let orphan = FrameSpec { ident: 79, ..big.clone() }.fragments(1400);
    assert_eq!(l.send(&orphan[1], Zone::Inside), Verdict::Drop(DropReason::FragmentUnmatched));
    // The record expires with the fragment timeout (30 s).
    let late = FrameSpec { ident: 80, ..big }.fragments(1400);
    assert_eq!(l.send(&late[0], Zone::Inside), EST);
    l.advance(Duration::from_secs(30));
    assert_eq!(l.send(&late[1], Zone::Inside), Verdict::Drop(DropReason::FragmentUnmatched));
}

#[test]
fn ipv6_fragments_follow_the_first() {
    let mut l = Lab::new();
    let big = FrameSpec { ident: 5, ..FrameSpec::tcp(ip("2001:db8:1::7"), 40000, ip("2001:db8:2::1"), 80, SYN, 1, 0) };
    let mut big = big;
    if let L4::Tcp { payload, .. } = &mut big.l4 {
        *payload = vec![0; 2000];
    }
    let frags = big.fragments(1200);
    assert_eq!(l.send(&frags[0], Zone::Outside), NEW);
    assert_eq!(l.send(&frags[1], Zone::Outside), REL);
}

#[test]
fn arp_and_other_ethertypes_follow_config() {
    let arp_payload = [0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 1, 1, 0, 0, 0, 0, 0, 0, 10, 0, 2, 1];
    let arp = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], &[], 0x0806, &arp_payload);
    let lldp = ethernet([1, 0x80, 0xc2, 0, 0, 0x0e], [2, 0, 0, 0, 0, 1], &[], 0x88cc, &[0; 40]);
    let mut l = Lab::new();
    assert_eq!(l.send(&arp, Zone::Outside), Verdict::Pass(PassKind::Untracked));
    assert_eq!(l.send(&lldp, Zone::Outside), Verdict::Drop(DropReason::NonIp));
    let cfg = EngineConfig { capacity: 16, arp: Action::Deny, non_ip: Action::Allow, ..EngineConfig::default() };
    let mut l = Lab::with(cfg);
    assert_eq!(l.send(&arp, Zone::Outside), Verdict::Drop(DropReason::Arp));
    assert_eq!(l.send(&lldp, Zone::Outside), Verdict::Pass(PassKind::Untracked));
}

#[test]
fn vlans_separate_flows() {
    let mut l = Lab::new();
    let syn = |vlans: Vec<u16>| FrameSpec { vlans, ..FrameSpec::tcp(ip(CLIENT), CPORT, ip(SERVER), SPORT, SYN, 1, 0) }.build();
    let synack = |vlans: Vec<u16>| FrameSpec { vlans, ..FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT, SYN | ACK, 9, 2) }.build();
    assert_eq!(l.send(&syn(vec![10]), Zone::Outside), NEW);
    assert_eq!(l.send(&syn(vec![100, 10]), Zone::Outside), NEW, "QinQ is another flow");
    assert_eq!(l.send(&synack(vec![20]), Zone::Inside), Verdict::Drop(DropReason::MidstreamNoState));
    assert_eq!(l.send(&synack(vec![10]), Zone::Inside), EST);
    assert_eq!(l.send(&synack(vec![100, 10]), Zone::Inside), EST);
    let three = FrameSpec { vlans: vec![1, 2, 3], ..FrameSpec::tcp(ip(CLIENT), CPORT, ip(SERVER), SPORT, SYN, 1, 0) }.build();
    assert_eq!(l.send(&three, Zone::Outside), Verdict::Drop(DropReason::Malformed));
}

#[test]
fn table_full_refuses_new_flows_with_a_reason() {
    use crate::conntrack::pressure::{Evict, Pressure};
    let pressure = Pressure { evict: Evict::None, embryonic_share: 1.0, ..Pressure::default() };
    let mut l = Lab::with(EngineConfig { capacity: 2, pressure, ..EngineConfig::default() });
    for p in 0..2 {
        assert_eq!(l.seg(CLIENT, 1000 + p, SERVER, 80, SYN, 1, 0, 1000, 0, Zone::Outside), NEW);
    }
    assert_eq!(l.seg(CLIENT, 1002, SERVER, 80, SYN, 1, 0, 1000, 0, Zone::Outside), Verdict::Drop(DropReason::TableFull));
    assert_eq!(l.e.counters().dropped[DropReason::TableFull as usize], 1);
}

/// The LRU model (`evict: lru`, the naive table `demo` compares with) evicts the
/// oldest entry not used since its clock last passed: an ACK that takes the
/// established fast path marks its entry used, as every other accepted packet does.
#[test]
fn an_established_ack_marks_its_entry_used_for_the_lru_clock() {
    use crate::conntrack::pressure::{Evict, Pressure};
    let pressure = Pressure { evict: Evict::Lru, embryonic_share: 1.0, ..Pressure::default() };
    let mut l = Lab::with(EngineConfig { capacity: 3, pressure, ..EngineConfig::default() });
    let open = |l: &mut Lab, port: u16| {
        assert_eq!(l.seg(CLIENT, port, SERVER, SPORT, SYN, 1000, 0, 64_000, 0, Zone::Outside), NEW);
        assert_eq!(l.seg(SERVER, SPORT, CLIENT, port, SYN | ACK, 5000, 1001, 64_000, 0, Zone::Inside), EST);
        assert_eq!(l.seg(CLIENT, port, SERVER, SPORT, ACK, 1001, 5001, 64_000, 0, Zone::Outside), EST);
    };
    let ports = |l: &Lab| {
        let mut p: Vec<u16> = l.flows().iter().map(|f| f.key.port.into_iter().find(|&p| p != SPORT).unwrap()).collect();
        p.sort_unstable();
        p
    };
    for port in [40_001, 40_002, 40_003] {
        open(&mut l, port);
    }
    // Full: the clock clears every entry's mark, then takes the oldest.
    open(&mut l, 40_004);
    assert_eq!(ports(&l), [40_002, 40_003, 40_004]);
    // 40,002, the oldest now, is used again (the fast path's case: ASSURED,
    // ESTABLISHED, a plain ACK that keeps the timer class — data would move it to
    // UNACK, which takes the general path)...
    assert_eq!(l.seg(CLIENT, 40_002, SERVER, SPORT, ACK, 1001, 5001, 64_000, 0, Zone::Outside), EST);
    // ...so the clock passes over it and takes 40,003.
    open(&mut l, 40_005);
    assert_eq!(ports(&l), [40_002, 40_004, 40_005]);
}

#[test]
fn batches_give_the_same_verdicts_as_single_packets() {
    let mut frames = Vec::new();
    for i in 0..200u16 {
        let c = format!("198.51.100.{}", i % 50 + 1);
        frames.push((tcp_frame(&c, 1000 + i, SERVER, 80, SYN, 1, 0, 1000, 0), Zone::Outside));
        frames.push((tcp_frame(SERVER, 80, &c, 1000 + i, SYN | ACK, 9, 2, 1000, 0), Zone::Inside));
        frames.push((vec![0u8; (i % 70) as usize], Zone::Outside));
    }
    let mut single = Lab::new();
    let one: Vec<Verdict> = frames.iter().map(|(f, z)| single.send(f, *z)).collect();
    let mut batched = Lab::new();
    let pkts: Vec<Packet> = frames.iter().map(|(f, z)| Packet { data: f, zone: *z, now: batched.now }).collect();
    let mut out = vec![Verdict::Drop(DropReason::Malformed); pkts.len()];
    batched.e.process_batch(&pkts, &mut out);
    assert_eq!(one, out);
    assert_eq!(single.e.counters(), batched.e.counters());
}

/// The example policy without its web rule: what a reload might install.
fn policy_without_web() -> crate::policy::Classifier {
    let rules = crate::testutil::policy().rules().iter().filter(|r| r.name != "web").cloned().collect();
    crate::policy::Classifier::new(rules, Action::Deny)
}

#[test]
fn a_reused_slot_keeps_nothing_of_its_previous_flow() {
    let mut l = Lab::with(EngineConfig { capacity: 1, ..EngineConfig::default() });
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), NEW);
    assert_eq!(l.e.flows(l.now).next().unwrap().from, Zone::Inside);
    l.advance(Duration::from_secs(31));
    assert_eq!(l.e.expire(l.now, 100), 1);
    // The same slot now holds a flow from outside: its origin must not be inherited.
    assert_eq!(l.send(&echo(CLIENT, SERVER, 8, 1), Zone::Outside), NEW);
    assert_eq!(l.e.flows(l.now).next().unwrap().from, Zone::Outside);
}

#[test]
fn recheck_revokes_exactly_the_flows_the_new_rules_deny() {
    let mut l = Lab::new();
    l.handshake();
    assert_eq!(l.send(&echo(CLIENT, SERVER, 8, 7), Zone::Outside), NEW);
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), NEW);
    assert_eq!(l.e.flows(l.now).count(), 3);
    let cfg = *l.e.config();
    // keep: the new rules apply to new flows only.
    l.e.reconfigure(&cfg, std::sync::Arc::new(policy_without_web()));
    let m = l.e.maintain(0..1024, l.now, false);
    assert_eq!((m.examined, m.revoked), (3, 0));
    assert_eq!(l.c(ACK, 10), EST, "an established web flow survives a keep reload");
    // recheck: the web flow goes, the ping (ICMP type 8 from outside) and the DNS query
    // (UDP 53 from inside) stay: the rules were asked with each flow's own zone and type.
    let m = l.e.maintain(0..1024, l.now, true);
    assert_eq!((m.examined, m.revoked), (3, 1));
    assert_eq!(l.e.counters().flows_revoked, 1);
    let left: Vec<u8> = l.e.flows(l.now).map(|f| f.key.proto).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&6));
    assert_eq!(l.c(ACK, 10), Verdict::Drop(DropReason::Revoked), "its next packet says why");
    assert_eq!(l.s(ACK, 10), Verdict::Drop(DropReason::Revoked));
    assert_eq!(l.send(&echo(SERVER, CLIENT, 0, 7), Zone::Inside), EST);
}

#[test]
fn shorter_timeouts_reach_idle_entries_without_waiting_for_old_timers() {
    let mut l = Lab::new();
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), NEW);
    assert_eq!(l.send(&udp("192.0.2.53", 53, SERVER, 5353), Zone::Outside), EST);
    l.advance(Duration::from_secs(3));
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), EST); // assured: 120 s
    let mut cfg = *l.e.config();
    cfg.timeouts.set(crate::conntrack::TimerClass::UdpReplied, Duration::from_secs(10));
    cfg.capacity = 5; // not applied to a running table
    l.e.reconfigure(&cfg, std::sync::Arc::new(crate::testutil::policy()));
    assert_eq!(l.e.table().capacity(), 1024);
    assert_eq!(l.e.maintain(0..1024, l.now, false).rearmed, 1);
    l.advance(Duration::from_secs(10));
    assert_eq!(l.e.expire(l.now, 100), 1, "expired on the new timeout, not 120 s later");
}

#[test]
fn explain_describes_a_drop_and_when_its_state_went() {
    let mut l = Lab::new();
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), NEW);
    l.advance(Duration::from_secs(30));
    assert_eq!(l.e.expire(l.now, 100), 1);
    l.advance(Duration::from_secs(5));
    let late = udp("192.0.2.53", 53, SERVER, 5353);
    assert_eq!(l.send(&late, Zone::Outside), Verdict::Drop(DropReason::ReplyToExpired));
    let x = l.e.explain(&late, l.now).unwrap();
    assert_eq!((x.proto, x.sport, x.dport, x.v6), (17, 53, 5353, false));
    assert_eq!(x.src, u128::from(u32::from(std::net::Ipv4Addr::new(192, 0, 2, 53))));
    let r = x.removed.unwrap();
    assert_eq!(r.why.name(), "expired");
    assert_eq!(r.ago, Duration::from_secs(5));
    assert_eq!(r.class, crate::conntrack::pressure::Admission::Unreplied);
    let hits = l.e.counters().tombstone_hits;
    let _ = l.e.explain(&late, l.now);
    assert_eq!(l.e.counters().tombstone_hits, hits, "explaining is not a hit");
    assert_eq!(l.e.explain(b"garbage", l.now), None);
}

#[test]
fn the_footprint_is_what_an_engine_allocates() {
    for cfg in [
        EngineConfig { capacity: 1, tombstones: 0, fragments: 1, ..EngineConfig::default() },
        EngineConfig { capacity: 1000, per_source_limit: 5, ..EngineConfig::default() },
        EngineConfig { capacity: 65_536, tombstones: 100_000, fragments: 4096, per_source_limit: 1, ..EngineConfig::default() },
    ] {
        let e = crate::Engine::new(cfg, std::sync::Arc::new(policy()), crate::Instant::from_secs(1));
        assert_eq!(crate::Engine::footprint(&cfg), e.bytes(), "{cfg:?}");
    }
    // Sizes far beyond any machine are computed without overflowing.
    let huge = EngineConfig { capacity: usize::MAX / 2, per_source_limit: 1, ..EngineConfig::default() };
    assert!(crate::Engine::footprint(&huge) >= usize::MAX / 2);
}

#[test]
fn committing_memory_changes_nothing_a_packet_sees() {
    let mut l = Lab::new();
    l.handshake();
    l.e.commit();
    assert!(l.c(ACK | PSH, 100).is_pass());
    assert!(l.s(ACK, 0).is_pass());
    l.e.audit().unwrap();
}

#[test]
fn without_accounting_an_entry_costs_32_bytes_less_and_tracking_is_the_same() {
    let on = EngineConfig { capacity: 4096, ..EngineConfig::default() };
    let off = EngineConfig { accounting: false, ..on };
    assert_eq!(super::Engine::footprint(&on) - super::Engine::footprint(&off), 4096 * 32);
    let (mut a, mut b) = (Lab::with(on), Lab::with(off));
    for l in [&mut a, &mut b] {
        l.handshake();
        assert!(l.c(ACK | PSH, 100).is_pass());
        assert!(l.s(ACK, 0).is_pass());
        l.e.audit().unwrap();
    }
    assert_eq!(a.e.bytes() - b.e.bytes(), 4096 * 32, "what is allocated, not only what is computed");
    let (fa, fb) = (a.flows()[0], b.flows()[0]);
    assert_eq!((fa.state, fa.counted, fa.packets), ("ESTABLISHED", true, [3, 2]));
    assert_eq!((fb.state, fb.counted, fb.packets, fb.bytes), ("ESTABLISHED", false, [0, 0], [0, 0]));
    assert_eq!((fa.age, fb.age), (Some(Duration::ZERO), None), "the creation tick is kept with the counters");
    assert_eq!(a.e.counters().passed, b.e.counters().passed, "the same verdicts");
    // A snapshot of either goes into either: counters come along only where kept.
    let (mut a2, mut b2) = (Lab::with(on), Lab::with(off));
    for rec in b.e.export(b.now) {
        a2.e.restore(&rec, a2.now, Duration::ZERO).unwrap();
    }
    for rec in a.e.export(a.now) {
        b2.e.restore(&rec, b2.now, Duration::ZERO).unwrap();
    }
    assert_eq!((a2.flows()[0].state, a2.flows()[0].packets), ("ESTABLISHED", [0, 0]));
    assert_eq!((b2.flows()[0].state, b2.flows()[0].counted), ("ESTABLISHED", false));
    a2.e.audit().unwrap();
    b2.e.audit().unwrap();
}

/// In the naive models a full IPv6 pool behaves as their full table does: `none`
/// (pf) refuses the flow as table_full and counts it, `lru` evicts the longest idle.
#[test]
fn a_full_ipv6_pool_refuses_in_the_none_model_and_evicts_in_lru() {
    use crate::conntrack::pressure::{Evict, Pressure};
    let ping6 = |id: u32| crate::wire::build::FrameSpec::icmp(ip("2001:db8:1::7"), ip("2001:db8:2::1"), 128, 0, id << 16 | 1, b"p").build();
    for evict in [Evict::None, Evict::Lru] {
        let pressure = Pressure { evict, embryonic_share: 1.0, ..Pressure::default() };
        let cfg = EngineConfig { capacity: 64, ipv6_slots: Some(1), pressure, ..EngineConfig::default() };
        let mut l = Lab::with(cfg);
        assert!(l.send(&ping6(1), Zone::Outside).is_pass());
        if evict == Evict::None {
            assert_eq!(l.send(&ping6(2), Zone::Outside), Verdict::Drop(DropReason::TableFull));
            assert_eq!(l.e.counters().ipv6_pool_full, 1);
        } else {
            assert_eq!(l.send(&ping6(2), Zone::Outside), NEW);
            assert_eq!(l.e.counters().ipv6_pool_full, 0);
            assert_eq!(l.e.table().len(), 1, "the first ping's entry made room");
        }
        l.handshake();
        assert_eq!(l.e.table().len(), 2, "IPv4 flows still fit");
        l.e.audit().unwrap();
        assert!(super::Engine::footprint(&EngineConfig { ipv6_slots: Some(16), ..cfg }) < super::Engine::footprint(&EngineConfig { ipv6_slots: None, ..cfg }));
    }
}

/// A full IPv6 pool is room like a full table: a spoofed IPv6 flood that fills it
/// (here 8 places of a 64-entry table, far below the table's size and the
/// non-assured quota, so neither eviction rule fired) must not lock every new IPv6
/// flow out until the flood's entries time out. A new flow takes the place of a
/// non-assured IPv6 entry, as a new flow on a full table does; assured IPv6 flows
/// are never evicted for it.
#[test]
fn a_flood_that_fills_the_ipv6_pool_does_not_lock_new_ipv6_flows_out() {
    let cfg = EngineConfig { capacity: 64, ipv6_slots: Some(8), ..EngineConfig::default() };
    let mut l = Lab::with(cfg);
    let request = |from: &str, id: u32| crate::wire::build::FrameSpec::icmp(ip(from), ip("2001:db8:2::1"), 128, 0, id << 16 | 1, b"p").build();
    let reply = |to: &str, id: u32| crate::wire::build::FrameSpec::icmp(ip("2001:db8:2::1"), ip(to), 129, 0, id << 16 | 1, b"p").build();
    for i in 0..8 {
        assert!(l.send(&request(&format!("2001:db8:66::{}", i + 1), i), Zone::Outside).is_pass());
    }
    l.advance(Duration::from_secs(1));
    // The pool is full of unanswered pings; a real client's ping and its reply.
    assert_eq!(l.send(&request("2001:db8:1::7", 100), Zone::Outside), NEW);
    assert_eq!(l.send(&reply("2001:db8:1::7", 100), Zone::Inside), EST);
    assert_eq!(l.e.table().len(), 8, "one flood entry made room");
    assert_eq!(l.e.counters().ipv6_pool_full, 0);
    // Every other flood ping answered too (the evicted one's reply finds no state). A
    // reply proves nothing a spoofer cannot get, so replied pings still make room,
    // oldest first.
    for i in 0..8 {
        l.send(&reply(&format!("2001:db8:66::{}", i + 1), i), Zone::Inside);
    }
    let replied = crate::conntrack::pressure::Admission::Replied;
    assert_eq!(l.flows().iter().filter(|f| f.class == replied).count(), 8);
    let before = l.e.counters().evictions[replied as usize];
    assert_eq!(l.send(&request("2001:db8:1::8", 300), Zone::Outside), NEW);
    assert_eq!(l.e.counters().evictions[replied as usize] - before, 1);
    // A pool of assured IPv6 connections is never evicted for a newcomer: refused, and
    // counted.
    for i in 0..8 {
        let client = format!("2001:db8:1::{}", 100 + i);
        assert_eq!(l.seg(&client, 40000, "2001:db8:2::1", 80, SYN, 1000, 0, 64_000, 0, Zone::Outside), NEW);
        assert_eq!(l.seg("2001:db8:2::1", 80, &client, 40000, SYN | ACK, 5000, 1001, 64_000, 0, Zone::Inside), EST);
        assert_eq!(l.seg(&client, 40000, "2001:db8:2::1", 80, ACK, 1001, 5001, 64_000, 0, Zone::Outside), EST);
    }
    assert_eq!(l.flows().iter().filter(|f| f.class == crate::conntrack::pressure::Admission::Assured).count(), 8);
    assert_eq!(l.e.counters().ipv6_pool_full, 0);
    assert_eq!(l.send(&request("2001:db8:1::9", 301), Zone::Outside), Verdict::Drop(DropReason::TableFull));
    assert_eq!(l.e.counters().ipv6_pool_full, 1);
    l.handshake();
    assert_eq!(l.e.table().len(), 9, "IPv4 flows still fit");
    l.e.audit().unwrap();
}

/// The seed's story over IPv6 with a limited pool: 100 established connections hold
/// part of the pool, a spoofed SYN flood keeps coming (40 SYNs every 20 ms, ten times
/// the pool's 156 other places over the test), and a real client opens a connection
/// in the middle of it. Every established connection keeps passing, the client's
/// handshake completes, and no new flow is refused for want of a place. (As on a
/// full table, a handshake survives as long as the flood needs to send as many SYNs
/// as there is non-assured room: here 120 SYNs go by between its SYN and its ACK.)
#[test]
fn an_ipv6_syn_flood_on_a_limited_pool_spares_established_flows_and_a_new_handshake() {
    let cfg = EngineConfig { capacity: 4096, ipv6_slots: Some(256), ..EngineConfig::default() };
    let mut l = Lab::with(cfg);
    let server = ip("2001:db8:2::80");
    let seg = |c: IpAddr, port: u16, to_server: bool, flags: u8, seq: u32, ack: u32| {
        if to_server { FrameSpec::tcp(c, port, server, 80, flags, seq, ack).build() } else { FrameSpec::tcp(server, 80, c, port, flags, seq, ack).build() }
    };
    let client = |i: u32| ip(&format!("2001:db8:1::{:x}", i + 1));
    for i in 0..100 {
        let c = client(i);
        assert_eq!(l.send(&seg(c, 40000, true, SYN, 100, 0), Zone::Outside), NEW);
        assert_eq!(l.send(&seg(c, 40000, false, SYN | ACK, 900, 101), Zone::Inside), EST);
        assert_eq!(l.send(&seg(c, 40000, true, ACK, 101, 901), Zone::Outside), EST);
    }
    let mut spoofed = 0u32;
    let real = ip("2001:db8:1::beef");
    for round in 0..40 {
        for _ in 0..40 {
            spoofed += 1;
            let src = ip(&format!("2001:db8:66:{:x}::{:x}", spoofed >> 16, spoofed & 0xffff));
            assert!(l.send(&seg(src, 1024 + (spoofed % 60000) as u16, true, SYN, spoofed, 0), Zone::Outside).is_pass());
        }
        match round {
            10 => assert_eq!(l.send(&seg(real, 50000, true, SYN, 7, 0), Zone::Outside), NEW),
            11 => assert_eq!(l.send(&seg(real, 50000, false, SYN | ACK, 70, 8), Zone::Inside), EST, "the handshake's state survived the flood"),
            12 => assert_eq!(l.send(&seg(real, 50000, true, ACK, 8, 71), Zone::Outside), EST),
            _ => {}
        }
        l.advance(Duration::from_millis(20));
    }
    for i in 0..100 {
        assert_eq!(l.send(&seg(client(i), 40000, false, ACK, 901, 101), Zone::Inside), EST, "established connection {i}");
    }
    assert_eq!(l.e.counters().ipv6_pool_full, 0);
    l.e.audit().unwrap();
}

/// `per_source_limit` against one IPv6 host: 1,000 SYNs from 1,000 addresses of one
/// /64 hold 10 entries (each past the limit recycles the host's oldest embryonic
/// one), and a client in another /64 still connects.
#[test]
fn the_per_source_limit_holds_a_whole_ipv6_prefix() {
    let cfg = EngineConfig { capacity: 4096, per_source_limit: 10, ..EngineConfig::default() };
    let mut l = Lab::with(cfg);
    let server = ip("2001:db8:2::80");
    for i in 0..1000u32 {
        let src = ip(&format!("2001:db8:66:1:{:x}:{:x}::1", i >> 8, i & 0xff));
        assert_eq!(l.send(&FrameSpec::tcp(src, 40000, server, 80, SYN, 1, 0).build(), Zone::Outside), NEW);
    }
    assert_eq!((l.e.table().len(), l.e.counters().source_recycled), (10, 990));
    // Who holds the table names the prefix, as the limit counts it.
    let (mut sources, mut ports) = (crate::holders::SpaceSaving::default(), crate::holders::SpaceSaving::default());
    l.e.count_holders(0..4096, &mut sources, &mut ports);
    let h = crate::holders::Holders { sources: sources.top(), ports: ports.top(), swept: 10, v6_prefix: 64 };
    let top: Vec<_> = h.top_sources().map(|x| (h.source_text(x), x.entries)).collect();
    assert_eq!(top, [("2001:db8:66:1::/64".to_string(), 10)]);
    assert_eq!(l.send(&FrameSpec::tcp(ip("2001:db8:66:2::1"), 40000, server, 80, SYN, 1, 0).build(), Zone::Outside), NEW);
    l.e.audit().unwrap();
}

/// `per_source_limit` counts every entry a source created, so SYNs spoofed from a
/// victim's address could fill its share (10,000 SYNs every 120 s: 83 a second) and
/// lock the victim out of every new connection. At its limit a source's new flow
/// takes the place of that source's oldest non-assured entry instead: the victim's
/// own SYN gets in, its established connections are never touched, and a source
/// whose entries are all assured is still refused.
#[test]
fn spoofed_syns_do_not_lock_a_source_out_of_its_own_limit() {
    let cfg = EngineConfig { capacity: 4096, per_source_limit: 10, ..EngineConfig::default() };
    let mut l = Lab::with(cfg);
    let (victim, server) = (ip("198.51.100.7"), ip("10.0.2.80"));
    // Three real connections of the victim's, then the spoofer fills the rest.
    for p in 0..3u16 {
        assert_eq!(l.send(&FrameSpec::tcp(victim, 50_000 + p, server, 80, SYN, 7, 0).build(), Zone::Outside), NEW);
        assert_eq!(l.send(&FrameSpec::tcp(server, 80, victim, 50_000 + p, SYN | ACK, 70, 8).build(), Zone::Inside), EST);
        assert_eq!(l.send(&FrameSpec::tcp(victim, 50_000 + p, server, 80, ACK, 8, 71).build(), Zone::Outside), EST);
    }
    for p in 0..100u16 {
        l.send(&FrameSpec::tcp(victim, 1024 + p, server, 80, SYN, 1, 0).build(), Zone::Outside);
    }
    assert_eq!(l.e.table().len(), 10);
    assert_eq!(l.e.counters().source_recycled, 93, "each spoofed SYN past the limit recycled the oldest spoofed entry");
    // The victim's next connection gets in and completes.
    assert_eq!(l.send(&FrameSpec::tcp(victim, 60_000, server, 80, SYN, 9, 0).build(), Zone::Outside), NEW);
    assert_eq!(l.send(&FrameSpec::tcp(server, 80, victim, 60_000, SYN | ACK, 90, 10).build(), Zone::Inside), EST);
    assert_eq!(l.send(&FrameSpec::tcp(victim, 60_000, server, 80, ACK, 10, 91).build(), Zone::Outside), EST);
    for p in 0..3u16 {
        assert_eq!(l.send(&FrameSpec::tcp(server, 80, victim, 50_000 + p, ACK, 71, 8).build(), Zone::Inside), EST, "connection {p}");
    }
    l.e.audit().unwrap();
    // Once all ten are assured, the limit refuses as before.
    for p in 0..6u16 {
        let sp = 61_000 + p;
        assert_eq!(l.send(&FrameSpec::tcp(victim, sp, server, 80, SYN, 9, 0).build(), Zone::Outside), NEW);
        assert_eq!(l.send(&FrameSpec::tcp(server, 80, victim, sp, SYN | ACK, 90, 10).build(), Zone::Inside), EST);
        assert_eq!(l.send(&FrameSpec::tcp(victim, sp, server, 80, ACK, 10, 91).build(), Zone::Outside), EST);
    }
    assert_eq!(l.flows().iter().filter(|f| f.class == crate::conntrack::pressure::Admission::Assured).count(), 10);
    assert_eq!(l.send(&FrameSpec::tcp(victim, 62_000, server, 80, SYN, 9, 0).build(), Zone::Outside), Verdict::Drop(DropReason::SourceLimit));
    l.e.audit().unwrap();
}

/// An assured flow's expiry is counted by the timeout that ran out: the operator can
/// tell "idle past tcp_established" from "data went unanswered for
/// tcp_unacknowledged" (Linux's 300 s, shorter than every established timeout).
#[test]
fn assured_expirations_are_counted_by_the_timeout_that_ran_out() {
    use crate::conntrack::TimerClass;
    use crate::conntrack::pressure::Admission;
    let mut l = Lab::new();
    l.handshake();
    assert_eq!(l.s(ACK | PSH, 100), EST, "a response the client never acknowledges");
    let f = l.flows()[0];
    assert!(f.assured);
    assert_eq!(f.expires_in, Duration::from_secs(300));
    // An assured UDP stream beside it: replied, then seen again after 2 s.
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), NEW);
    assert_eq!(l.send(&udp("192.0.2.53", 53, SERVER, 5353), Zone::Outside), EST);
    l.advance(Duration::from_secs(3));
    assert_eq!(l.send(&udp(SERVER, 5353, "192.0.2.53", 53), Zone::Inside), EST);
    l.advance(Duration::from_secs(119));
    assert_eq!(l.e.expire(l.now, 100), 0);
    l.advance(Duration::from_secs(1));
    assert_eq!(l.e.expire(l.now, 100), 1, "the UDP stream, at 120 s");
    l.advance(Duration::from_secs(177));
    assert_eq!(l.e.expire(l.now, 100), 1, "the TCP flow, at 300 s");
    let c = l.e.counters();
    assert_eq!(c.expirations[Admission::Assured as usize], 2);
    let mut want = [0; TimerClass::COUNT];
    want[TimerClass::TcpUnack as usize] = 1;
    want[TimerClass::UdpReplied as usize] = 1;
    assert_eq!(c.assured_expirations, want);
    assert_eq!(c.assured_expirations_named().collect::<Vec<_>>(), [("tcp_unacknowledged", 1), ("udp_replied", 1)]);
}

/// The targets bench's breakdown of P1 runs `probe_batch` on the bench's bursts: it must
/// find exactly the flows the engine holds (either direction), count what parses as IP
/// without a lookup, and change nothing a later verdict depends on.
#[test]
fn probe_batch_finds_the_held_flows_and_changes_nothing() {
    let mut l = Lab::new();
    let q = udp(SERVER, 5353, "192.0.2.53", 53);
    let reply = udp("192.0.2.53", 53, SERVER, 5353);
    assert_eq!(l.send(&q, Zone::Inside), NEW);
    let other = udp(SERVER, 5354, "192.0.2.53", 53);
    let garbage = [0u8; 20];
    let frames = [&q[..], &reply[..], &other[..], &garbage[..], &q[..]];
    let pkts: Vec<Packet> = frames.iter().cycle().take(40).map(|f| Packet { data: f, zone: Zone::Outside, now: l.now }).collect();
    let before = l.e.counters();
    // 40 frames over three bursts: 8 rounds of 5, one of them garbage.
    assert_eq!(l.e.probe_batch(&pkts, false), 32);
    assert_eq!(l.e.probe_batch(&pkts, true), 24, "the held flow, in both directions; not the other");
    assert_eq!(l.flows()[0].packets, [1, 0], "no counter moved");
    assert_eq!(l.e.counters().packets, before.packets);
    assert_eq!(l.send(&reply, Zone::Outside), EST, "the first reply is still the first");
    assert_eq!(l.flows()[0].state, "REPLIED");
}

/// `process_batch` judges a batch's packets in order, each seeing what the ones before
/// it did, however it stages them (in pieces, the next piece's lookup running ahead of
/// the judging): connections opened, used and closed within one batch, a table small
/// enough that spoofed SYNs evict and slots are reused, give the verdicts, counters
/// and table that one packet at a time gives.
#[test]
fn a_batch_is_judged_as_its_packets_one_at_a_time() {
    let mut rnd = xorshift(0x5eed_0bad_cafe_f00d);
    let mut frames: Vec<(Vec<u8>, Zone)> = vec![];
    // (connection number, next step) of the connections in progress.
    let mut live: Vec<(u32, u32)> = vec![];
    let mut started = 0u32;
    while frames.len() < 3000 {
        if rnd().is_multiple_of(8) {
            let r = rnd();
            let src = format!("203.0.113.{}", r % 250 + 1);
            frames.push((tcp_frame(&src, 1024 + (r >> 8) as u16 % 60_000, SERVER, SPORT, SYN, r as u32, 0, 512, 0), Zone::Outside));
            continue;
        }
        if live.len() < 12 {
            live.push((started, 0));
            started += 1;
        }
        let k = (rnd() % live.len() as u64) as usize;
        let (i, step) = live[k];
        let client = format!("198.51.{}.{}", 100 + i / 250, i % 250 + 1);
        let cport = 40_000 + (i % 1000) as u16;
        let (ci, si) = (1000 + i * 7, 5000 + i * 11);
        let c = |flags, seq: u32, ack: u32, len| (tcp_frame(&client, cport, SERVER, SPORT, flags, seq, ack, 64_000, len), Zone::Outside);
        let s = |flags, seq: u32, ack: u32, len| (tcp_frame(SERVER, SPORT, &client, cport, flags, seq, ack, 64_000, len), Zone::Inside);
        frames.push(match step {
            0 => c(SYN, ci, 0, 0),
            1 => s(SYN | ACK, si, ci + 1, 0),
            2 => c(ACK, ci + 1, si + 1, 0),
            3 => c(ACK | PSH, ci + 1, si + 1, 10),
            4 => s(ACK, si + 1, ci + 11, 0),
            5 => c(FIN | ACK, ci + 11, si + 1, 0),
            6 => s(FIN | ACK, si + 1, ci + 12, 0),
            _ => c(ACK, ci + 12, si + 2, 0),
        });
        if step == 7 {
            live.swap_remove(k);
        } else {
            live[k].1 += 1;
        }
    }
    let cfg = EngineConfig { capacity: 1024, ..EngineConfig::default() };
    let (mut one, mut batched) = (Lab::with(cfg), Lab::with(cfg));
    let expected: Vec<Verdict> = frames.iter().map(|(f, z)| one.send(f, *z)).collect();
    let mut got = vec![];
    for (n, batch) in frames.chunks(64).enumerate() {
        // Batches of every length from 64 down, so that pieces of every length run.
        let batch = &batch[..batch.len() - n % 17];
        let pkts: Vec<Packet> = batch.iter().map(|(f, z)| Packet { data: f, zone: *z, now: batched.now }).collect();
        let mut out = vec![Verdict::Drop(DropReason::Malformed); pkts.len()];
        batched.e.process_batch(&pkts, &mut out);
        got.extend(out);
        for (f, z) in &frames[n * 64 + batch.len()..(n * 64 + 64).min(frames.len())] {
            got.push(batched.send(f, *z));
        }
    }
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "packet {i}");
    }
    let (a, b) = (one.e.counters(), batched.e.counters());
    assert_eq!((a.passed, a.dropped, a.evictions, a.flows_created), (b.passed, b.dropped, b.evictions, b.flows_created));
    assert!(a.evictions.iter().sum::<u64>() > 100, "the table was full and evicted: {:?}", a.evictions);
    assert!(a.passed[PassKind::New as usize] > 300 && a.passed[PassKind::Established as usize] > 1000, "{:?} {:?}", a.passed, a.dropped);
    let key = |f: &crate::engine::FlowInfo| (f.key, f.state, f.packets);
    let (mut fa, mut fb): (Vec<_>, Vec<_>) = (one.flows().iter().map(key).collect(), batched.flows().iter().map(key).collect());
    fa.sort_by_key(|f| format!("{f:?}"));
    fb.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(fa, fb);
    batched.e.audit().unwrap();
}

/// The ACK lane (`parse::ack_lane`, `Engine::lane_ack`) judges as the general path
/// does. An engine keeping a journal of changes sends every frame the general way, so
/// the same frames through one that does not must give the same verdicts, counters
/// and entries: plain ACKs near and far from the windows' edges, with payload, zero
/// windows, PSH and URG, both directions, among FINs and RSTs that move the states,
/// and a time jump that expires entries under the lane's feet.
#[test]
fn the_ack_lane_judges_as_the_general_path() {
    const CONNS: u32 = 200;
    let mut rnd = xorshift(0x0ac4_1a4e_5eed_0001);
    let endpoint =
        |i: u32| (format!("198.51.{}.{}", 100 + i / 250, i % 250 + 1), 40_000 + i as u16, 1000 + i.wrapping_mul(7919), 5000 + i.wrapping_mul(104_729));
    let mut frames: Vec<(Vec<u8>, Zone)> = vec![];
    for i in 0..CONNS {
        let (client, cport, ci, si) = endpoint(i);
        frames.push((tcp_frame(&client, cport, SERVER, SPORT, SYN, ci, 0, 64_000, 0), Zone::Outside));
        frames.push((tcp_frame(SERVER, SPORT, &client, cport, SYN | ACK, si, ci + 1, 64_000, 0), Zone::Inside));
        frames.push((tcp_frame(&client, cport, SERVER, SPORT, ACK, ci + 1, si + 1, 64_000, 0), Zone::Outside));
    }
    // Offsets from the handshake's numbers: none, small ahead, small behind, anywhere.
    let off = |x: u64| -> u32 {
        match x % 8 {
            0..=3 => 0,
            4 | 5 => (x >> 3) as u32 % 3000,
            6 => ((x >> 3) as u32 % 200).wrapping_neg(),
            _ => (x >> 3) as u32,
        }
    };
    for _ in 0..8000 {
        let r = rnd();
        let (client, cport, ci, si) = endpoint((r % u64::from(CONNS)) as u32);
        let flags = match (r >> 8) % 1000 {
            0 | 1 => FIN | ACK,
            2 | 3 => RST,
            4..=99 => ACK | PSH,
            100..=109 => ACK | URG,
            _ => ACK,
        };
        let payload = if (r >> 16).is_multiple_of(4) { (r >> 20) as usize % 40 } else { 0 };
        let win = if (r >> 26).is_multiple_of(16) { 0 } else { 64_000 };
        let (x, y) = (rnd(), rnd());
        frames.push(if (r >> 30) & 1 == 0 {
            (tcp_frame(&client, cport, SERVER, SPORT, flags, (ci + 1).wrapping_add(off(x)), (si + 1).wrapping_add(off(y)), win, payload), Zone::Outside)
        } else {
            (tcp_frame(SERVER, SPORT, &client, cport, flags, (si + 1).wrapping_add(off(x)), (ci + 1).wrapping_add(off(y)), win, payload), Zone::Inside)
        });
    }
    let (mut lane, mut general) = (Lab::new(), Lab::new());
    general.e.keep_changes(1 << 16, Duration::from_secs(10));
    let mut step = 0;
    for (n, chunk) in frames.chunks(37).enumerate() {
        let mut outs = vec![];
        for l in [&mut lane, &mut general] {
            let pkts: Vec<Packet> = chunk.iter().map(|(f, z)| Packet { data: f, zone: *z, now: l.now }).collect();
            let mut out = vec![Verdict::Drop(DropReason::Malformed); pkts.len()];
            l.e.process_batch(&pkts, &mut out);
            outs.push(out);
            // Once, late, long enough that unacknowledged and retransmitting flows
            // (300 s) expire, and the lane finds them dead.
            l.advance(Duration::from_secs(if n == 180 { 400 } else { 1 }));
        }
        for (k, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
            assert_eq!(a, b, "frame {}", step + k);
        }
        step += chunk.len();
    }
    let (a, b) = (lane.e.counters(), general.e.counters());
    assert_eq!((a.passed, a.dropped, a.flows_created), (b.passed, b.dropped, b.flows_created));
    // Both ways taken: accepted ACKs, and ACKs the window refused.
    assert!(a.passed[PassKind::Established as usize] > 1500, "{:?} {:?}", a.passed, a.dropped);
    assert!(a.dropped[DropReason::OutOfWindow as usize] > 300, "{:?}", a.dropped);
    assert!(a.dropped[DropReason::ReplyToExpired as usize] > 100, "{:?}", a.dropped);
    let (ta, tb) = (lane.e.table(), general.e.table());
    assert!(ta.conns[..] == tb.conns[..], "the entries differ");
    assert!(ta.stats[..] == tb.stats[..], "the counters differ");
    lane.e.audit().unwrap();
}
