//! Encoding and decoding against byte strings written out by hand from the format
//! (conntrack-tools 1.4.7 `network.h`, `build.c`), and the decoder refusing what
//! conntrackd's `parse.c` refuses.

use super::*;
use holdfast_pipeline::engine::ips;

fn tcp_flow() -> SyncedFlow {
    SyncedFlow {
        v6: false,
        src: 0xc633_6407, // 198.51.100.7
        dst: 0x0a00_0201, // 10.0.2.1
        proto: 6,
        sport: 40000,
        dport: 80,
        icmp: None,
        tcp_state: 3,
        status: ips::CONFIRMED | ips::SEEN_REPLY | ips::ASSURED,
        timeout_s: 432_000,
        wscale: [Some(7), Some(8)],
        vlan: 0,
    }
}

/// CT_NEW of an established TCP flow, sequence 5, as conntrackd builds it.
#[rustfmt::skip]
const TCP_NEW: [u8; 76] = [
    0x10, 0x00, 0x00, 76, 0x00, 0x00, 0x00, 0x05,    // v1, CT_NEW, no flags, len 76, seq 5
    0x00, 12, 0x00, 0x00,  198, 51, 100, 7,  10, 0, 2, 1,   // IPV4: src, dst
    0x00, 8, 0x00, 5,  0x00, 0x00, 0x00, 0x0e,        // STATUS: SEEN_REPLY|ASSURED|CONFIRMED
    0x00, 5, 0x00, 2,  6, 0, 0, 0,                    // L4PROTO 6, padded
    0x00, 8, 0x00, 3,  0x9c, 0x40, 0x00, 0x50,        // PORT 40000 -> 80
    0x00, 5, 0x00, 4,  3, 0, 0, 0,                    // TCP_STATE ESTABLISHED
    0x00, 5, 0x00, 25, 7, 0, 0, 0,                    // TCP_WSCALE_ORIG 7
    0x00, 5, 0x00, 26, 8, 0, 0, 0,                    // TCP_WSCALE_REPL 8
    0x00, 8, 0x00, 6,  0x00, 0x06, 0x97, 0x80,        // TIMEOUT 432000 s
];

#[test]
fn a_tcp_flow_encodes_to_the_bytes_conntrackd_builds_and_back() {
    let m = Message::Flow { kind: kind::CT_NEW, flags: 0, seq: 5, flow: tcp_flow() };
    let mut out = Vec::new();
    encode(&m, &mut out);
    assert_eq!(out, TCP_NEW);
    assert_eq!(decode(&TCP_NEW), vec![Ok(m)]);
}

#[test]
fn udp_icmp_ipv6_and_control_messages_by_hand() {
    #[rustfmt::skip]
    let udp_v6: Vec<u8> = [
        &[0x11u8, 0x00, 0x00, 76, 0xff, 0xff, 0xff, 0xff][..], // v1, CT_UPD, len 76, seq 2^32-1
        &[0x00, 36, 0x00, 0x01], &[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        &[0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0x00, 8, 0x00, 5, 0, 0, 0, 0x08],                      // STATUS CONFIRMED
        &[0x00, 5, 0x00, 2, 17, 0, 0, 0],                        // L4PROTO UDP
        &[0x00, 8, 0x00, 3, 0x14, 0xe9, 0x00, 0x35],             // 5353 -> 53
        &[0x00, 8, 0x00, 6, 0, 0, 0, 30],                        // TIMEOUT 30
    ]
    .concat();
    let flow = SyncedFlow {
        v6: true,
        src: 0x2001_0db8_0001_u128 << 80 | 2,
        dst: 0x2001_0db8_0002_u128 << 80 | 1,
        proto: 17,
        sport: 5353,
        dport: 53,
        icmp: None,
        tcp_state: 0,
        status: ips::CONFIRMED,
        timeout_s: 30,
        wscale: [None, None],
        vlan: 0,
    };
    let m = Message::Flow { kind: kind::CT_UPD, flags: 0, seq: u32::MAX, flow };
    let mut out = Vec::new();
    encode(&m, &mut out);
    assert_eq!(out, udp_v6);
    #[rustfmt::skip]
    let icmp_del: Vec<u8> = [
        &[0x12u8, 0x20, 0x00, 68, 0, 0, 0, 9][..],              // CT_DEL with HELLO, len 68, seq 9
        &[0x00, 12, 0x00, 0x00, 198, 51, 100, 7, 10, 0, 2, 1],
        &[0x00, 8, 0x00, 5, 0, 0, 0, 0x0a],
        &[0x00, 5, 0x00, 2, 1, 0, 0, 0],
        &[0x00, 5, 0x00, 22, 8, 0, 0, 0],                        // ICMP_TYPE echo request
        &[0x00, 5, 0x00, 23, 0, 0, 0, 0],                        // ICMP_CODE
        &[0x00, 6, 0x00, 24, 0x34, 0x12, 0, 0],                  // ICMP_ID 0x1234, byte-swapped as conntrackd writes it
        &[0x00, 8, 0x00, 6, 0, 0, 0, 25],
    ]
    .concat();
    let icmp = SyncedFlow {
        proto: 1,
        sport: 0,
        dport: 0,
        icmp: Some((8, 0, 0x1234)),
        tcp_state: 0,
        status: ips::CONFIRMED | ips::SEEN_REPLY,
        timeout_s: 25,
        wscale: [None, None],
        vlan: 0,
        ..tcp_flow()
    };
    let del = Message::Flow { kind: kind::CT_DEL, flags: flag::HELLO, seq: 9, flow: icmp };
    out.clear();
    encode(&del, &mut out);
    assert_eq!(out, icmp_del);
    // ACK 100..=399 and ALIVE, back to back in one datagram.
    let ack = [0x1a, 0x08, 0x00, 16, 0, 0, 0, 77, 0, 0, 0, 100, 0, 0, 1, 143];
    let alive = [0x1a, 0x10, 0x00, 8, 0, 0, 0, 78];
    let dgram: Vec<u8> = [&udp_v6[..], &icmp_del, &ack, &alive].concat();
    let got = decode(&dgram);
    assert_eq!(
        got,
        vec![
            Ok(m),
            Ok(del),
            Ok(Message::Ctl { flags: flag::ACK, seq: 77, range: Some((100, 399)) }),
            Ok(Message::Ctl { flags: flag::ALIVE, seq: 78, range: None })
        ]
    );
    for m in got.into_iter().flatten() {
        let mut b = Vec::new();
        encode(&m, &mut b);
        assert!(dgram.windows(b.len()).any(|w| w == b), "{m:?} encodes to what it was decoded from");
    }
}

/// `TCP_NEW` with `f` applied, decoded.
fn mutated(f: impl FnOnce(&mut Vec<u8>)) -> Vec<Result<Message, DecodeError>> {
    let mut b = TCP_NEW.to_vec();
    f(&mut b);
    decode(&b)
}

fn refused(r: &[Result<Message, DecodeError>]) -> String {
    match r.first() {
        Some(Err(e)) => e.to_string(),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn the_decoder_refuses_what_conntrackds_parser_refuses() {
    // An attribute number of 33 or more.
    assert!(refused(&mutated(|b| b[23] = 33)).contains("33 or above"));
    // A fixed-size attribute with another length: L4PROTO of 6 bytes.
    assert!(refused(&mutated(|b| b[29] = 6)).contains("other than this attribute's size"));
    // An attribute running past the message.
    assert!(refused(&mutated(|b| b[69] = 40)).contains("runs past"));
    // An attribute length shorter than its own header.
    assert!(refused(&mutated(|b| b[9] = 2)).contains("shorter than its own header"));
    // Another protocol version.
    assert!(refused(&mutated(|b| b[0] = 0x20)).contains("version"));
    // A message length past the datagram ends the walk.
    assert!(refused(&mutated(|b| b[3] = 200)).contains("past the datagram"));
    // A data message with control flags.
    assert!(refused(&mutated(|b| b[1] = flag::ACK)).contains("control flags"));
    // An ACK without its range.
    assert!(refused(&decode(&[0x1a, 0x08, 0, 8, 0, 0, 0, 1])).contains("shorter than 16"));
    // What conntrackd accepts and Holdfast ignores: an expectation.
    assert!(matches!(decode(&[0x13, 0, 0, 8, 0, 0, 0, 3])[..], [Ok(Message::Expectation { seq: 3 })]));
    // Trailing bytes shorter than an attribute header are ignored, as conntrackd does.
    let mut b = TCP_NEW.to_vec();
    b.extend_from_slice(&[0, 0, 0, 0]);
    b[3] = 80;
    assert!(decode(&b)[0].is_ok());
}

#[test]
fn one_bad_message_does_not_take_the_rest_of_the_datagram() {
    let mut bad = TCP_NEW;
    bad[23] = 40;
    let d = [&bad[..], &TCP_NEW[..]].concat();
    let r = decode(&d);
    assert_eq!(r.len(), 2);
    assert!(r[0].is_err() && r[1].is_ok());
}

#[test]
fn a_vlan_travels_as_the_conntrack_zone_and_qinq_beyond_it_is_not_syncable() {
    let f = SyncedFlow { vlan: 7, ..tcp_flow() };
    let m = Message::Flow { kind: kind::CT_NEW, flags: 0, seq: 5, flow: f };
    let mut out = Vec::new();
    encode(&m, &mut out);
    // TCP_NEW's attributes, then ZONE 7 (u16, big-endian as `ct_build_u16` writes it,
    // padded to 4), and the length 76 + 8.
    let mut want = TCP_NEW.to_vec();
    want[3] = 84;
    want.extend_from_slice(&[0x00, 6, 0x00, 32, 0x00, 0x07, 0, 0]);
    assert_eq!(out, want);
    assert_eq!(decode(&want), vec![Ok(m)]);
    assert!(syncable(&f));
    // Outer 100, inner 200 (bits 12..24): more than 16 bits.
    assert!(!syncable(&SyncedFlow { vlan: 200 << 12 | 100, ..f }));
}
