//! TCP tracking through the whole engine, with real frames on a fake clock.

use crate::engine::{EngineConfig, Pickup};
use crate::policy::Zone;
use crate::testutil::*;
use crate::time::Duration;
use crate::verdict::{DropReason, PassKind, Verdict};
use crate::wire::tcp::flags::*;

const PASS_NEW: Verdict = Verdict::Pass(PassKind::New);
const PASS: Verdict = Verdict::Pass(PassKind::Established);
const IGNORED: Verdict = Verdict::Pass(PassKind::Ignored);

fn drop(r: DropReason) -> Verdict {
    Verdict::Drop(r)
}

#[test]
fn handshake_data_and_orderly_close_walk_the_linux_states() {
    let mut l = Lab::new();
    assert_eq!(l.c(SYN, 0), PASS_NEW);
    assert_eq!(l.state(), Some("SYN_SENT"));
    assert_eq!(l.s(SYN | ACK, 0), PASS);
    assert_eq!(l.state(), Some("SYN_RECV"));
    assert!(!l.flows()[0].assured);
    assert_eq!(l.c(ACK, 0), PASS);
    assert_eq!(l.state(), Some("ESTABLISHED"));
    assert!(l.flows()[0].assured, "the ACK completing the handshake assures the flow");
    assert_eq!(l.c(ACK | PSH, 300), PASS);
    assert_eq!(l.s(ACK | PSH, 1400), PASS);
    assert_eq!(l.c(ACK, 0), PASS);
    assert_eq!(l.c(FIN | ACK, 0), PASS);
    assert_eq!(l.state(), Some("FIN_WAIT"));
    assert_eq!(l.s(ACK, 0), PASS);
    assert_eq!(l.state(), Some("CLOSE_WAIT"));
    assert_eq!(l.s(FIN | ACK, 0), PASS);
    assert_eq!(l.state(), Some("LAST_ACK"));
    assert_eq!(l.c(ACK, 0), PASS);
    assert_eq!(l.state(), Some("TIME_WAIT"));
    let f = &l.flows()[0];
    assert_eq!(f.packets, [6, 4]);
    assert_eq!(f.expires_in, Duration::from_secs(120));
}

/// Drives a fresh connection into `state` (a Linux state name).
fn reach(state: &str) -> Lab {
    let mut l = Lab::new();
    match state {
        "SYN_SENT" => {
            l.c(SYN, 0);
        }
        "SYN_SENT2" => {
            l.c(SYN, 0);
            // Simultaneous open: the server sends its own SYN.
            assert_eq!(l.s(SYN, 0), PASS);
        }
        "SYN_RECV" => {
            l.c(SYN, 0);
            l.s(SYN | ACK, 0);
        }
        _ => {
            l.handshake();
            match state {
                "ESTABLISHED" => {}
                "FIN_WAIT" => assert_eq!(l.c(FIN | ACK, 0), PASS),
                "CLOSE_WAIT" => {
                    l.c(FIN | ACK, 0);
                    l.s(ACK, 0);
                }
                "LAST_ACK" => {
                    l.c(FIN | ACK, 0);
                    l.s(ACK, 0);
                    l.s(FIN | ACK, 0);
                }
                "TIME_WAIT" => {
                    l.c(FIN | ACK, 0);
                    l.s(ACK, 0);
                    l.s(FIN | ACK, 0);
                    l.c(ACK, 0);
                }
                "CLOSE" => assert_eq!(l.c(RST | ACK, 0), PASS),
                other => panic!("no path to {other}"),
            }
        }
    }
    assert_eq!(l.state(), Some(state), "setting up {state}");
    l
}

const ABBREV: [(&str, &str); 9] = [
    ("SYN_SENT", "SS"),
    ("SYN_RECV", "SR"),
    ("ESTABLISHED", "ES"),
    ("FIN_WAIT", "FW"),
    ("CLOSE_WAIT", "CW"),
    ("LAST_ACK", "LA"),
    ("TIME_WAIT", "TW"),
    ("CLOSE", "CL"),
    ("SYN_SENT2", "S2"),
];

fn abbrev(s: Option<&str>) -> String {
    match s {
        None => "--".into(),
        Some(s) => ABBREV.iter().find(|(n, _)| *n == s).map(|(_, a)| a.to_string()).unwrap_or(s.into()),
    }
}

/// Sends the row's segment in `dir` (0 client, 1 server) with sequence numbers a real
/// stack would use, and describes the result: the new state, IG (ignored, state kept),
/// IV (invalid transition), OW (out of window), IR (invalid RST), FL (invalid flags),
/// RE:<state> (reopened as a new flow), KILL (accepted, entry deleted).
fn cell(state: &str, dir: usize, row: &str) -> String {
    let mut l = reach(state);
    let (flags, isn_syn) = match row {
        "syn" => (SYN, true),
        "synack" => (SYN | ACK, true),
        "fin" => (FIN | ACK, false),
        "ack" => (ACK, false),
        "rst" => (RST | ACK, false),
        "none" => (PSH, false),
        _ => unreachable!(),
    };
    if isn_syn {
        // A SYN carries the sender's initial sequence number; in states past the
        // handshake, a new connection would pick a larger one.
        let fresh = !matches!(state, "SYN_SENT" | "SYN_SENT2" | "SYN_RECV");
        if dir == 0 {
            l.cseq = if fresh { l.cseq.wrapping_add(100_000) } else { 1000 };
        } else {
            l.sseq = if fresh { l.sseq.wrapping_add(100_000) } else { 5000 };
        }
    }
    let before = l.state();
    let v = if dir == 0 { l.c(flags, 0) } else { l.s(flags, 0) };
    let after = l.state();
    match v {
        Verdict::Drop(DropReason::InvalidTcpState) => "IV".into(),
        Verdict::Drop(DropReason::InvalidTcpFlags) => "FL".into(),
        Verdict::Drop(DropReason::OutOfWindow) => "OW".into(),
        Verdict::Drop(DropReason::InvalidRst) => "IR".into(),
        Verdict::Drop(r) => r.name().into(),
        Verdict::Pass(PassKind::Ignored) => {
            assert_eq!(before, after, "ignored packets keep the state");
            "IG".into()
        }
        Verdict::Pass(PassKind::New) => format!("RE:{}", abbrev(after)),
        Verdict::Pass(_) if after.is_none() => "KILL".into(),
        Verdict::Pass(_) => abbrev(after),
    }
}

/// Every cell of Linux's `tcp_conntracks` table, for a segment with realistic numbers,
/// through the whole engine. Rows: direction x flag class; columns: the states. The
/// expectations follow the table and the special cases of `nf_conntrack_tcp_packet`:
/// SYN reopens TIME_WAIT/CLOSE after a close or reset (the reopened flow is judged by
/// policy: the server may not open one towards the client), an RST answering a flow that
/// saw no reply kills it, an inexact RST in an assured ESTABLISHED flow keeps the state
/// (RFC 5961), out-of-window segments are refused although the table allows them.
#[test]
fn every_transition_of_the_state_table() {
    let states = ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"];
    #[rustfmt::skip]
    let expected: [(usize, &str, [&str; 9]); 12] = [
        //                   SS      SR    ES    FW    CW    LA    TW       CL       S2
        (0, "syn",    ["SS",   "IG", "IG", "IG", "IG", "IG", "RE:SS", "RE:SS", "S2"]),
        (0, "synack", ["IV",   "SR", "IV", "IV", "IV", "IV", "IV",    "IV",    "SR"]),
        (0, "fin",    ["IV",   "FW", "FW", "LA", "LA", "LA", "TW",    "CL",    "IV"]),
        (0, "ack",    ["IV",   "ES", "ES", "CW", "CW", "TW", "TW",    "CL",    "IV"]),
        (0, "rst",    ["OW",   "CL", "CL", "CL", "CL", "CL", "CL",    "CL",    "CL"]),
        (0, "none",   ["FL",   "FL", "FL", "FL", "FL", "FL", "FL",    "FL",    "FL"]),
        (1, "syn",    ["S2",   "IV", "IV", "IV", "IV", "IV", "policy","IV",    "S2"]),
        (1, "synack", ["SR",   "IG", "IG", "IG", "IG", "IG", "IG",    "IG",    "SR"]),
        (1, "fin",    ["IV",   "FW", "FW", "LA", "LA", "LA", "TW",    "CL",    "IV"]),
        (1, "ack",    ["IG",   "SR", "ES", "CW", "CW", "TW", "TW",    "CL",    "IG"]),
        (1, "rst",    ["KILL", "CL", "CL", "CL", "CL", "CL", "CL",    "CL",    "CL"]),
        (1, "none",   ["FL",   "FL", "FL", "FL", "FL", "FL", "FL",    "FL",    "FL"]),
    ];
    let mut report = String::new();
    let mut wrong = 0;
    for (dir, row, want) in expected {
        for (i, st) in states.iter().enumerate() {
            let got = cell(st, dir, row);
            if got != want[i] {
                wrong += 1;
                report += &format!("{} {row} in {st}: got {got}, want {}\n", ["orig", "reply"][dir], want[i]);
            }
        }
    }
    assert_eq!(wrong, 0, "\n{report}");
}

#[test]
fn syn_without_state_is_judged_by_policy() {
    let mut l = Lab::new();
    // A server's outbound SYN to the outside: no rule allows it.
    assert_eq!(l.seg(SERVER, 80, CLIENT, 33000, SYN, 1, 0, 1000, 0, Zone::Inside), drop(DropReason::Policy));
    assert!(l.flows().is_empty(), "a denied flow leaves no state");
    // The same client to a port no rule opens.
    assert_eq!(l.seg(CLIENT, 1, SERVER, 22, SYN, 1, 0, 1000, 0, Zone::Outside), drop(DropReason::Policy));
}

#[test]
fn invalid_flag_combinations_are_dropped_before_anything_else() {
    let mut l = Lab::new();
    for flags in [SYN | FIN, SYN | RST, FIN, 0, FIN | PSH | URG, SYN | FIN | RST | PSH | ACK | URG] {
        assert_eq!(l.c(flags, 0), drop(DropReason::InvalidTcpFlags), "flags {flags:#x}");
    }
    l.handshake();
    assert_eq!(l.c(SYN | FIN, 0), drop(DropReason::InvalidTcpFlags));
    assert_eq!(l.state(), Some("ESTABLISHED"));
}

#[test]
fn midstream_packets_without_state_follow_the_pickup_mode() {
    // strict (default): dropped, no state.
    let mut l = Lab::new();
    assert_eq!(l.s(ACK | PSH, 100), drop(DropReason::MidstreamNoState));
    assert_eq!(l.c(ACK, 0), drop(DropReason::MidstreamNoState));
    assert_eq!(l.c(FIN | ACK, 0), drop(DropReason::MidstreamNoState));
    assert_eq!(l.s(SYN | ACK, 0), drop(DropReason::MidstreamNoState));
    assert!(l.flows().is_empty());

    // reverse-of-allowed: the server's reply to an allowed client flow is re-tracked,
    // with the client as the original direction.
    let mut l = Lab::with(EngineConfig { capacity: 64, pickup: Pickup::ReverseOfAllowed, ..EngineConfig::default() });
    assert_eq!(l.s(ACK | PSH, 100), PASS_NEW);
    let f = l.flows()[0];
    assert_eq!(f.key.src(f.orig).1, CPORT, "the client is the original side");
    assert_eq!(f.packets, [0, 1]);
    assert_eq!(f.state, "ESTABLISHED");
    assert_eq!(l.c(ACK, 0), PASS);
    assert_eq!(l.s(ACK | PSH, 100), PASS);
    assert!(l.flows()[0].assured);
    // ... but a client's mid-stream ACK is not the reverse of anything allowed.
    let mut l = Lab::with(EngineConfig { capacity: 64, pickup: Pickup::ReverseOfAllowed, ..EngineConfig::default() });
    assert_eq!(l.c(ACK, 0), drop(DropReason::MidstreamNoState));

    // loose: a mid-stream packet in an allowed direction is tracked.
    let mut l = Lab::with(EngineConfig { capacity: 64, pickup: Pickup::Loose, ..EngineConfig::default() });
    assert_eq!(l.c(ACK | PSH, 10), PASS_NEW);
    assert_eq!(l.flows()[0].expires_in, Duration::from_secs(300), "no reply yet: the UNACK timeout, as Linux");
    assert_eq!(l.s(ACK, 0), PASS);
    assert_eq!(l.c(ACK, 0), PASS);
    assert!(l.flows()[0].assured);
}

#[test]
fn data_beyond_the_window_is_dropped_and_the_entry_stays() {
    let mut l = reach("ESTABLISHED");
    // Windows are scaled by 2^7 after the handshake: 64000 << 7 bytes.
    let far = l.cseq.wrapping_add((64_000u32 << 7) + 10_000);
    let v = l.seg(CLIENT, CPORT, SERVER, SPORT, ACK, far, l.sseq, 64_000, 100, Zone::Outside);
    assert_eq!(v, drop(DropReason::OutOfWindow));
    assert_eq!(l.state(), Some("ESTABLISHED"));
    assert_eq!(l.c(ACK | PSH, 100), PASS);
}

#[test]
fn acking_data_never_sent_is_out_of_window() {
    let mut l = reach("ESTABLISHED");
    let ack = l.sseq.wrapping_add(5000);
    let v = l.seg(CLIENT, CPORT, SERVER, SPORT, ACK, l.cseq, ack, 64_000, 0, Zone::Outside);
    assert_eq!(v, drop(DropReason::OutOfWindow));
}

#[test]
fn retransmissions_pass_and_stale_ones_are_ignored_not_dropped() {
    let mut l = reach("ESTABLISHED");
    let seq = l.cseq;
    assert_eq!(l.c(ACK | PSH, 500), PASS);
    // The same segment again (lost ACK): accepted.
    assert_eq!(l.seg(CLIENT, CPORT, SERVER, SPORT, ACK | PSH, seq, l.sseq, 64_000, 500, Zone::Outside), PASS);
    // Acked far past, then a segment from far below the window: Linux 6.x ignores it.
    for _ in 0..20 {
        assert_eq!(l.c(ACK | PSH, 60_000), PASS);
        assert_eq!(l.s(ACK, 0), PASS);
    }
    // The server's window is 64000 << 7 = 8.2 MB: 2 MB back is still inside it.
    let inside = l.cseq.wrapping_sub(2_000_000);
    let v = l.seg(CLIENT, CPORT, SERVER, SPORT, ACK | PSH, inside, l.sseq, 64_000, 100, Zone::Outside);
    assert_eq!(v, PASS, "an old segment still inside the receive window is a retransmission");
    let stale = l.cseq.wrapping_sub(20_000_000);
    let v = l.seg(CLIENT, CPORT, SERVER, SPORT, ACK | PSH, stale, l.sseq, 64_000, 100, Zone::Outside);
    assert_eq!(v, IGNORED, "a segment under the window's lower bound is let through untouched (Linux 6.x)");
    assert_eq!(l.state(), Some("ESTABLISHED"));
}

#[test]
fn without_window_scaling_on_both_sides_no_scaling_applies() {
    let mut l = Lab::new();
    // Client offers scaling; the server's SYN/ACK carries no options.
    assert_eq!(l.c(SYN, 0), PASS_NEW);
    let f = crate::wire::build::FrameSpec::new(
        ip(SERVER),
        ip(CLIENT),
        crate::wire::build::L4::Tcp { sport: SPORT, dport: CPORT, seq: 5000, ack: 1001, flags: SYN | ACK, window: 1000, options: vec![], payload: vec![] },
    )
    .build();
    assert_eq!(l.send(&f, Zone::Inside), PASS);
    l.sseq = 5001;
    l.swin = 1000;
    assert_eq!(l.c(ACK, 0), PASS);
    // The server's window is 1000 bytes unscaled: the client may not send beyond it.
    let v = l.seg(CLIENT, CPORT, SERVER, SPORT, ACK, l.cseq.wrapping_add(70_000), l.sseq, 64_000, 10, Zone::Outside);
    assert_eq!(v, drop(DropReason::OutOfWindow));
}

#[test]
fn sack_blocks_beyond_the_data_sent_are_refused() {
    let mut l = reach("ESTABLISHED");
    assert_eq!(l.s(ACK | PSH, 1000), PASS);
    let sack_frame = |right: u32, l: &Lab| {
        let mut opts = vec![1, 1, 5, 10];
        opts.extend_from_slice(&l.sseq.wrapping_sub(500).to_be_bytes());
        opts.extend_from_slice(&right.to_be_bytes());
        crate::wire::build::FrameSpec::new(
            ip(CLIENT),
            ip(SERVER),
            crate::wire::build::L4::Tcp {
                sport: CPORT,
                dport: SPORT,
                seq: l.cseq,
                ack: l.sseq.wrapping_sub(1000),
                flags: ACK,
                window: 64_000,
                options: opts,
                payload: vec![],
            },
        )
        .build()
    };
    let ok = sack_frame(l.sseq, &l);
    assert_eq!(l.send(&ok, Zone::Outside), PASS, "SACK of data that was sent");
    let bad = sack_frame(l.sseq.wrapping_add(10_000), &l);
    assert_eq!(l.send(&bad, Zone::Outside), drop(DropReason::OutOfWindow), "SACK of data never sent");
}

#[test]
fn rst_out_of_window_is_dropped_and_the_entry_stays() {
    let mut l = reach("ESTABLISHED");
    assert_eq!(l.s(ACK | PSH, 1000), PASS);
    assert_eq!(l.c(ACK, 0), PASS);
    // The client has acknowledged up to sseq: an RST from the server below that is
    // a blind reset attempt.
    let v = l.seg(SERVER, SPORT, CLIENT, CPORT, RST, l.sseq.wrapping_sub(500), 0, 0, 0, Zone::Inside);
    assert_eq!(v, drop(DropReason::InvalidRst));
    assert_eq!(l.state(), Some("ESTABLISHED"));
    // An RST far beyond the window is out of window.
    let v = l.seg(SERVER, SPORT, CLIENT, CPORT, RST, l.sseq.wrapping_add(100_000_000), 0, 0, 0, Zone::Inside);
    assert_eq!(v, drop(DropReason::OutOfWindow));
    assert_eq!(l.state(), Some("ESTABLISHED"));
    // In window but not exact: passes, state kept for a challenge ACK (RFC 5961).
    let v = l.seg(SERVER, SPORT, CLIENT, CPORT, RST, l.sseq.wrapping_add(10), 0, 0, 0, Zone::Inside);
    assert_eq!(v, PASS);
    assert_eq!(l.state(), Some("ESTABLISHED"));
    // Exact: closes.
    assert_eq!(l.s(RST, 0), PASS);
    assert_eq!(l.state(), Some("CLOSE"));
    assert_eq!(l.flows()[0].expires_in, Duration::from_secs(10));
}

#[test]
fn syn_reopens_time_wait_as_a_new_flow() {
    let mut l = reach("TIME_WAIT");
    l.cseq = l.cseq.wrapping_add(1_000_000);
    assert_eq!(l.c(SYN, 0), PASS_NEW);
    assert_eq!(l.state(), Some("SYN_SENT"));
    assert_eq!(l.flows()[0].packets, [1, 0], "the old entry's counters are gone");
}

#[test]
fn rst_answering_a_syn_deletes_the_entry() {
    let mut l = Lab::new();
    assert_eq!(l.c(SYN, 0), PASS_NEW);
    assert_eq!(l.seg(SERVER, SPORT, CLIENT, CPORT, RST | ACK, 0, 1001, 0, 0, Zone::Inside), PASS);
    assert!(l.flows().is_empty());
}

#[test]
fn timeouts_follow_the_state_and_expire_exactly() {
    let mut l = Lab::new();
    assert_eq!(l.c(SYN, 0), PASS_NEW);
    l.advance(Duration::from_secs(119));
    assert_eq!(l.e.expire(l.now, usize::MAX), 0);
    assert_eq!(l.flows().len(), 1);
    l.advance(Duration::from_secs(1));
    assert_eq!(l.e.expire(l.now, usize::MAX), 1, "SYN_SENT expires at 120 s");
    assert!(l.flows().is_empty());

    // ESTABLISHED lives 5 days; an idle gap just under that keeps it.
    let mut l = reach("ESTABLISHED");
    l.advance(Duration::from_secs(5 * 86_400 - 1));
    l.e.expire(l.now, usize::MAX);
    assert_eq!(l.c(ACK | PSH, 10), PASS);
    l.advance(Duration::from_secs(5 * 86_400));
    assert_eq!(l.c(ACK | PSH, 10), drop(DropReason::ReplyToExpired), "expired on contact, exactly, and said so");
}

#[test]
fn unacknowledged_data_uses_the_unack_timeout() {
    let mut l = reach("ESTABLISHED");
    assert_eq!(l.c(ACK | PSH, 100), PASS);
    assert_eq!(l.flows()[0].expires_in, Duration::from_secs(300));
    assert_eq!(l.s(ACK, 0), PASS);
    assert_eq!(l.flows()[0].expires_in, Duration::from_secs(5 * 86_400));
}

#[test]
fn configured_timeouts_apply() {
    let mut cfg = EngineConfig { capacity: 16, ..EngineConfig::default() };
    cfg.timeouts.set(crate::conntrack::TimerClass::TcpEstablished, Duration::from_secs(600));
    let mut l = Lab::with(cfg);
    l.handshake();
    assert_eq!(l.flows()[0].expires_in, Duration::from_secs(600));
    l.advance(Duration::from_secs(600));
    assert_eq!(l.e.expire(l.now, usize::MAX), 1);
}

/// The fast path for assured ESTABLISHED flows decides exactly as the general path:
/// random segments (in and out of window, both directions, data and pure ACKs, with
/// and without options) against entries grown by random traffic.
#[test]
fn fast_path_equals_general() {
    use crate::conntrack::conn::{Conn, ConnAux};
    use crate::conntrack::tcp::{Outcome, Segment, fast_established, init_new, packet};
    use crate::parse::TcpMeta;
    let to = crate::conntrack::Timeouts::default();
    let mut rnd = crate::testutil::xorshift(0x2545_f491_4f6c_dd1d);
    let seg = |flags: u8, seq: u32, ack: u32, window: u16, len: u32| TcpMeta { seq, ack, window, flags, payload_len: len, opt_off: 0, opt_len: 0 };
    let mut fast_taken = 0;
    for _round in 0..300 {
        let (mut c, mut aux) = (Conn::default(), ConnAux::default());
        let (ci, si) = (rnd() as u32, rnd() as u32);
        let sack_opts = [4u8, 2, 1, 3, 3, 7];
        let syn = seg(SYN, ci, 0, 64240, 0);
        assert!(init_new(&mut c, &Segment::new(&syn, &sack_opts), false));
        assert!(matches!(packet(&mut c, &mut aux, 0, &Segment::new(&syn, &sack_opts), &to), Outcome::Accept(_)));
        let synack = seg(SYN | ACK, si, ci.wrapping_add(1), 65160, 0);
        assert!(matches!(packet(&mut c, &mut aux, 1, &Segment::new(&synack, &sack_opts), &to), Outcome::Accept(_)));
        c.flags |= crate::conntrack::conn::cflag::SEEN_REPLY;
        let (mut cn, mut sn) = (ci.wrapping_add(1), si.wrapping_add(1));
        assert!(matches!(packet(&mut c, &mut aux, 0, &Segment::new(&seg(ACK, cn, sn, 502, 0), &[]), &to), Outcome::Accept(_)));
        for _ in 0..60 {
            let dir = (rnd() & 1) as usize;
            let len = [0u32, 0, 1, 100, 1448, 60_000][(rnd() % 6) as usize];
            let (seq0, ack0) = if dir == 0 { (cn, sn) } else { (sn, cn) };
            let jitter = |r: u64| -> u32 {
                match r % 8 {
                    0 => 0u32.wrapping_sub((r >> 8) as u32 % 100_000),
                    1 => (r >> 8) as u32 % 100_000,
                    2 => (r >> 8) as u32,
                    _ => 0,
                }
            };
            let seq = seq0.wrapping_add(jitter(rnd()));
            let ack = ack0.wrapping_add(jitter(rnd()));
            let flags = [ACK, ACK | PSH, ACK | URG, ACK | ECE][(rnd() % 4) as usize];
            let window = [0u16, 1, 502, 65535][(rnd() % 4) as usize];
            let t = seg(flags, seq, ack, window, len);
            let has_opts = rnd().is_multiple_of(5);
            let opts: &[u8] = if has_opts { &[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2] } else { &[] };
            let (mut fc, mut gc) = (c, c);
            let mut ga = aux;
            let general = packet(&mut gc, &mut ga, dir, &Segment::new(&t, opts), &to);
            if let Some(class) = fast_established(&mut fc, dir, &Segment::new(&t, opts), &to) {
                fast_taken += 1;
                assert_eq!(general, Outcome::Accept(class), "{t:?}");
                assert_eq!(fc, gc, "entry after {t:?}");
            } else {
                assert_eq!(fc, c, "a declined fast path leaves the entry untouched");
            }
            c = gc;
            aux = ga;
            if matches!(general, Outcome::Accept(_)) {
                let end = seq.wrapping_add(len);
                if dir == 0 && (end.wrapping_sub(cn) as i32) > 0 {
                    cn = end;
                }
                if dir == 1 && (end.wrapping_sub(sn) as i32) > 0 {
                    sn = end;
                }
            }
            c.flags |= crate::conntrack::conn::cflag::SEEN_REPLY;
        }
    }
    assert!(fast_taken > 5_000, "the fast path was exercised: {fast_taken}");
}

/// The folded open of a fresh SYN leaves the entry, its aux and the timeout exactly as
/// `init_new` and `packet` do: random sequence numbers, windows (0 included), payloads,
/// the flag combinations a creating SYN may carry, and options well-formed, truncated
/// or garbage, on the blanks the engine builds (either side original, either family).
#[test]
fn syn_open_equals_general() {
    use crate::conntrack::conn::{Conn, ConnAux, cflag};
    use crate::conntrack::tcp::{Index, Outcome, Segment, init_new, open_with_syn, packet, valid_flags};
    use crate::parse::TcpMeta;
    let to = crate::conntrack::Timeouts::default();
    let mut rnd = crate::testutil::xorshift(0x9e37_79b9_7f4a_7c15);
    let opt_sets: [&[u8]; 7] = [
        &[],
        &[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7],
        &[2, 4, 5, 0xb4, 1, 3, 3, 14],
        &[4, 2],
        &[3, 3],
        &[3, 2, 9, 1],
        &[8, 10, 1, 2],
    ];
    for _ in 0..20_000 {
        let flags = SYN | [0, PSH, ECE | CWR, URG, PSH | ECE][(rnd() % 5) as usize];
        assert!(valid_flags(flags));
        let window = [0u16, 1, 502, 65535, rnd() as u16][(rnd() % 5) as usize];
        let payload_len = [0u32, 1, 1000, 1460][(rnd() % 4) as usize];
        let t = TcpMeta { seq: rnd() as u32, ack: rnd() as u32, window, flags, payload_len, opt_off: 0, opt_len: 0 };
        let garbage: Vec<u8> = (0..rnd() % 41).map(|_| rnd() as u8).collect();
        let opts: &[u8] = if rnd().is_multiple_of(4) { &garbage } else { opt_sets[(rnd() % 7) as usize] };
        let seg = Segment::new(&t, opts);
        assert_eq!(seg.index, Index::Syn);
        let blank = Conn { flags: [0, cflag::ORIG_IS_HI, cflag::V6, cflag::V6 | cflag::ORIG_IS_HI][(rnd() % 4) as usize], ..Conn::default() };
        let (mut g, mut ga) = (blank, ConnAux::default());
        assert!(init_new(&mut g, &seg, false));
        let general = packet(&mut g, &mut ga, 0, &seg, &to);
        let mut f = blank;
        let class = open_with_syn(&mut f, &seg);
        assert_eq!(general, Outcome::Accept(class), "{t:?} {opts:?}");
        assert_eq!(f, g, "entry after {t:?} {opts:?}");
        assert_eq!(ga, ConnAux::default(), "the general path leaves aux untouched");
    }
}
