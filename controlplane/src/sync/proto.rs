//! conntrackd's state-sync protocol (conntrack-tools 1.4.7: `include/network.h`,
//! `src/build.c`, `src/parse.c`, `src/sync-ftfw.c`), so that a Holdfast pair — or a
//! Holdfast and a Linux firewall running conntrackd — can back each other up.
//!
//! A datagram carries messages back to back. A message: byte 0 the version (1) in the
//! high nibble and the type in the low one, a flags byte, the big-endian length of the
//! whole message, a big-endian sequence number; control messages with ACK, NACK or
//! RESYNC add `from` and `to` (16 bytes in all); flow messages add TLV attributes
//! (`u16 len` counting the 4-byte attribute header, `u16 type`, big-endian, payload
//! zero-padded to 4 bytes). The decoder is as strict as conntrackd's: an attribute
//! number of 33 or more, a fixed-size attribute of another length, a length that runs
//! past the message — the whole message is refused. No `unsafe`; fuzzed
//! (`holdfast_tests::fuzz::sync`).

use holdfast_pipeline::engine::SyncedFlow;
use holdfast_pipeline::parse::proto;

pub const VERSION: u8 = 1;
pub const HEADER: usize = 8;
pub const ACK_HEADER: usize = 16;

/// Message types.
pub mod kind {
    pub const CT_NEW: u8 = 0;
    pub const CT_UPD: u8 = 1;
    pub const CT_DEL: u8 = 2;
    /// Expectations (3..=5): understood by conntrackd, ignored by Holdfast.
    pub const EXP_DEL: u8 = 5;
    pub const CTL: u8 = 10;
}

/// Header flags.
pub mod flag {
    pub const RESYNC: u8 = 0x02;
    pub const NACK: u8 = 0x04;
    pub const ACK: u8 = 0x08;
    pub const ALIVE: u8 = 0x10;
    pub const HELLO: u8 = 0x20;
    pub const HELLO_BACK: u8 = 0x40;
}

/// Attribute numbers (`enum nta_attr`).
pub mod attr {
    pub const IPV4: u16 = 0;
    pub const IPV6: u16 = 1;
    pub const L4PROTO: u16 = 2;
    pub const PORT: u16 = 3;
    pub const TCP_STATE: u16 = 4;
    pub const STATUS: u16 = 5;
    pub const TIMEOUT: u16 = 6;
    pub const ICMP_TYPE: u16 = 22;
    pub const ICMP_CODE: u16 = 23;
    pub const ICMP_ID: u16 = 24;
    pub const TCP_WSCALE_ORIG: u16 = 25;
    pub const TCP_WSCALE_REPL: u16 = 26;
    pub const HELPER_NAME: u16 = 27;
    pub const LABELS: u16 = 28;
    pub const ZONE: u16 = 32;
    /// conntrackd refuses this number and above.
    pub const MAX: u16 = 33;
}

/// What each attribute's `len` must be (header included): `Fixed(n)`, at most `Max(n)`,
/// or `Any` (none in this protocol: every number below [`attr::MAX`] has a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Fixed(u16),
    Max(u16),
}

/// `parse.c`'s table: the size of each attribute, payload plus the 4-byte header.
const SIZES: [Size; attr::MAX as usize] = [
    Size::Fixed(4 + 8),  // 0 IPV4: src, dst
    Size::Fixed(4 + 32), // 1 IPV6
    Size::Fixed(4 + 1),  // 2 L4PROTO
    Size::Fixed(4 + 4),  // 3 PORT: sport, dport
    Size::Fixed(4 + 1),  // 4 TCP_STATE
    Size::Fixed(4 + 4),  // 5 STATUS
    Size::Fixed(4 + 4),  // 6 TIMEOUT
    Size::Fixed(4 + 4),  // 7 MARK
    Size::Fixed(4 + 8),  // 8 MASTER_IPV4
    Size::Fixed(4 + 32), // 9 MASTER_IPV6
    Size::Fixed(4 + 1),  // 10 MASTER_L4PROTO
    Size::Fixed(4 + 4),  // 11 MASTER_PORT
    Size::Fixed(4 + 4),  // 12 SNAT_IPV4
    Size::Fixed(4 + 4),  // 13 DNAT_IPV4
    Size::Fixed(4 + 2),  // 14 SPAT_PORT
    Size::Fixed(4 + 2),  // 15 DPAT_PORT
    Size::Fixed(4 + 24), // 16 NAT_SEQ_ADJ
    Size::Fixed(4 + 1),  // 17 SCTP_STATE
    Size::Fixed(4 + 4),  // 18 SCTP_VTAG_ORIG
    Size::Fixed(4 + 4),  // 19 SCTP_VTAG_REPL
    Size::Fixed(4 + 1),  // 20 DCCP_STATE
    Size::Fixed(4 + 1),  // 21 DCCP_ROLE
    Size::Fixed(4 + 1),  // 22 ICMP_TYPE
    Size::Fixed(4 + 1),  // 23 ICMP_CODE
    Size::Fixed(4 + 2),  // 24 ICMP_ID
    Size::Fixed(4 + 1),  // 25 TCP_WSCALE_ORIG
    Size::Fixed(4 + 1),  // 26 TCP_WSCALE_REPL
    Size::Max(16),       // 27 HELPER_NAME (NFCT_HELPER_NAME_MAX)
    Size::Max(4 + 1024), // 28 LABELS
    Size::Fixed(4 + 16), // 29 SNAT_IPV6
    Size::Fixed(4 + 16), // 30 DNAT_IPV6
    Size::Fixed(4 + 12), // 31 SYNPROXY
    Size::Fixed(4 + 2),  // 32 ZONE
];

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A flow created (`CT_NEW`), changed (`CT_UPD`) or gone (`CT_DEL`). `flags` may
    /// carry HELLO / HELLO_BACK.
    Flow { kind: u8, flags: u8, seq: u32, flow: SyncedFlow },
    /// Control: ACK / NACK / RESYNC with the sequence range `from..=to`, ALIVE, HELLO.
    Ctl { flags: u8, seq: u32, range: Option<(u32, u32)> },
    /// An expectation (types 3..=5): Holdfast tracks none; counted, not an error.
    Expectation { seq: u32 },
}

impl Message {
    pub fn seq(&self) -> u32 {
        match self {
            Message::Flow { seq, .. } | Message::Ctl { seq, .. } | Message::Expectation { seq } => *seq,
        }
    }
}

/// Why a message was refused, with the byte (from the datagram's start) that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message at byte {at}: {what}")]
    Bad { at: usize, what: &'static str },
    #[error("message at byte {at}: attribute {attr} at byte {attr_at}: {what}")]
    Attr { at: usize, attr: u16, attr_at: usize, what: &'static str },
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(out: &mut Vec<u8>, a: u16, data: &[u8]) {
    out.extend_from_slice(&((4 + data.len()) as u16).to_be_bytes());
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + align4(data.len()) - data.len(), 0);
}

fn addr_bytes(a: u128, v6: bool) -> Vec<u8> {
    if v6 { a.to_be_bytes().to_vec() } else { (a as u32).to_be_bytes().to_vec() }
}

/// Appends `m` to `out`, in the order conntrackd's `ct2msg` builds attributes.
pub fn encode(m: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    let (ty, flags, seq) = match m {
        Message::Flow { kind, flags, seq, .. } => (*kind, *flags, *seq),
        Message::Ctl { flags, seq, .. } => (kind::CTL, *flags, *seq),
        Message::Expectation { seq } => (kind::EXP_DEL, 0, *seq),
    };
    out.push(VERSION << 4 | (ty & 0x0f));
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&seq.to_be_bytes());
    match m {
        Message::Ctl { range: Some((from, to)), .. } => {
            out.extend_from_slice(&from.to_be_bytes());
            out.extend_from_slice(&to.to_be_bytes());
        }
        Message::Ctl { range: None, .. } | Message::Expectation { .. } => {}
        Message::Flow { flow: f, .. } => {
            let mut a = addr_bytes(f.src, f.v6);
            a.extend(addr_bytes(f.dst, f.v6));
            put_attr(out, if f.v6 { attr::IPV6 } else { attr::IPV4 }, &a);
            put_attr(out, attr::STATUS, &f.status.to_be_bytes());
            put_attr(out, attr::L4PROTO, &[f.proto]);
            match (f.proto, f.icmp) {
                (proto::ICMP | proto::ICMPV6, Some((ty, code, id))) => {
                    put_attr(out, attr::ICMP_TYPE, &[ty]);
                    put_attr(out, attr::ICMP_CODE, &[code]);
                    put_attr(out, attr::ICMP_ID, &icmp_id_bytes(id));
                }
                (proto::TCP, _) => {
                    put_attr(out, attr::PORT, &[f.sport.to_be_bytes(), f.dport.to_be_bytes()].concat());
                    put_attr(out, attr::TCP_STATE, &[f.tcp_state]);
                    if let [Some(o), Some(r)] = f.wscale {
                        put_attr(out, attr::TCP_WSCALE_ORIG, &[o]);
                        put_attr(out, attr::TCP_WSCALE_REPL, &[r]);
                    }
                }
                (proto::UDP, _) => put_attr(out, attr::PORT, &[f.sport.to_be_bytes(), f.dport.to_be_bytes()].concat()),
                _ => {}
            }
            put_attr(out, attr::TIMEOUT, &f.timeout_s.to_be_bytes());
            if f.vlan != 0 {
                debug_assert!(syncable(f), "the endpoint sends only what the protocol can carry");
                put_attr(out, attr::ZONE, &(f.vlan as u16).to_be_bytes());
            }
        }
    }
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Whether the protocol can carry `f`: its VLAN ids travel in the 16-bit ZONE
/// attribute, so a QinQ flow whose ids need more (an inner id of 16 or more) cannot.
pub fn syncable(f: &SyncedFlow) -> bool {
    f.vlan <= 0xffff
}

/// Bytes `m` takes once encoded.
pub fn encoded_len(m: &Message) -> usize {
    let mut v = Vec::new();
    encode(m, &mut v);
    v.len()
}

/// ICMP_ID on the wire: conntrackd `htons()`es a value libnetfilter_conntrack already
/// keeps in network order, so the identifier travels byte-swapped — little-endian, as
/// x86 and arm64 conntrackd write it (measured against conntrackd 1.4.7 in
/// `tests/conntrackd.rs`; a big-endian conntrackd would write it big-endian).
fn icmp_id_bytes(id: u16) -> [u8; 2] {
    id.to_le_bytes()
}

fn icmp_id_of(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes every message of a datagram. A message whose own length cannot be trusted
/// (shorter than a header, or running past the datagram) ends the walk with an error;
/// any other bad message is an error in its place and the walk goes on.
pub fn decode(buf: &[u8]) -> Vec<Result<Message, DecodeError>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < HEADER {
            out.push(Err(DecodeError::Bad { at, what: "fewer bytes left than a message header" }));
            break;
        }
        let len = usize::from(be16(&rest[2..4]));
        if len < HEADER || len > rest.len() {
            out.push(Err(DecodeError::Bad { at, what: "message length (bytes 2..4) shorter than its header or past the datagram" }));
            break;
        }
        out.push(message(&rest[..len], at));
        at += len;
    }
    out
}

fn message(m: &[u8], at: usize) -> Result<Message, DecodeError> {
    let bad = |what| DecodeError::Bad { at, what };
    if m[0] >> 4 != VERSION {
        return Err(bad("protocol version (high nibble of byte 0) is not 1"));
    }
    let ty = m[0] & 0x0f;
    let flags = m[1];
    let seq = be32(&m[4..8]);
    if ty == kind::CTL {
        let ranged = flags & (flag::ACK | flag::NACK | flag::RESYNC) != 0;
        if ranged {
            if m.len() < ACK_HEADER {
                return Err(bad("ACK, NACK or RESYNC shorter than 16 bytes"));
            }
            return Ok(Message::Ctl { flags, seq, range: Some((be32(&m[8..12]), be32(&m[12..16]))) });
        }
        return Ok(Message::Ctl { flags, seq, range: None });
    }
    if ty > kind::EXP_DEL {
        return Err(bad("unknown message type (low nibble of byte 0)"));
    }
    if flags & !(flag::HELLO | flag::HELLO_BACK) != 0 {
        return Err(bad("a data message with control flags"));
    }
    let attrs = attributes(m, at)?;
    if ty > kind::CT_DEL {
        return Ok(Message::Expectation { seq });
    }
    let get = |a: u16| attrs.iter().find(|(n, _)| *n == a).map(|(_, d)| *d);
    let (v6, addrs) = match (get(attr::IPV4), get(attr::IPV6)) {
        (Some(d), None) => (false, [u128::from(be32(&d[0..4])), u128::from(be32(&d[4..8]))]),
        (None, Some(d)) => (true, [u128::from_be_bytes(d[0..16].try_into().expect("16")), u128::from_be_bytes(d[16..32].try_into().expect("16"))]),
        _ => return Err(bad("no address attribute, or both IPV4 and IPV6")),
    };
    let proto_ = get(attr::L4PROTO).ok_or_else(|| bad("no L4PROTO attribute"))?[0];
    let ports = get(attr::PORT).map(|d| (be16(&d[0..2]), be16(&d[2..4])));
    let icmp = match (get(attr::ICMP_TYPE), get(attr::ICMP_CODE), get(attr::ICMP_ID)) {
        (Some(t), Some(c), Some(i)) => Some((t[0], c[0], icmp_id_of(i))),
        _ => None,
    };
    let (sport, dport) = match proto_ {
        proto::TCP | proto::UDP => ports.ok_or_else(|| bad("a TCP or UDP flow without PORT"))?,
        proto::ICMP | proto::ICMPV6 if icmp.is_none() => return Err(bad("an ICMP flow without ICMP_TYPE, ICMP_CODE and ICMP_ID")),
        _ => (0, 0),
    };
    let tcp_state = if proto_ == proto::TCP { get(attr::TCP_STATE).ok_or_else(|| bad("a TCP flow without TCP_STATE"))?[0] } else { 0 };
    if tcp_state > 9 {
        return Err(bad("a TCP state number above 9"));
    }
    let flow = SyncedFlow {
        v6,
        src: addrs[0],
        dst: addrs[1],
        proto: proto_,
        sport,
        dport,
        icmp: if matches!(proto_, proto::ICMP | proto::ICMPV6) { icmp } else { None },
        tcp_state,
        status: get(attr::STATUS).map_or(0, be32),
        // No TIMEOUT: conntrackd's CommitTimeout (the receiver's default applies).
        timeout_s: get(attr::TIMEOUT).map_or(u32::MAX, be32),
        // Window scales mean something for TCP only (conntrackd sets them on whatever
        // carries them; the kernel ignores them elsewhere).
        // conntrackd sends both or neither; one alone says nothing usable.
        wscale: match (proto_, get(attr::TCP_WSCALE_ORIG), get(attr::TCP_WSCALE_REPL)) {
            (proto::TCP, Some(o), Some(r)) => [Some(o[0]), Some(r[0])],
            _ => [None, None],
        },
        // Holdfast's VLAN ids travel as the conntrack zone (docs/sync.md).
        vlan: get(attr::ZONE).map_or(0, |z| u32::from(be16(&z[0..2]))),
    };
    Ok(Message::Flow { kind: ty, flags, seq, flow })
}

/// The attributes of a data message, each checked against `parse.c`'s rules.
fn attributes(m: &[u8], at: usize) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut out = Vec::new();
    let mut p = HEADER;
    // conntrackd walks while more than an attribute header is left.
    while m.len() - p > 4 {
        let (len, a) = (usize::from(be16(&m[p..p + 2])), be16(&m[p + 2..p + 4]));
        let err = |what| DecodeError::Attr { at, attr: a, attr_at: at + p, what };
        if len > m.len() - p {
            return Err(err("its length runs past the message"));
        }
        if len < 4 {
            return Err(err("its length is shorter than its own header"));
        }
        if a >= attr::MAX {
            return Err(err("attribute number 33 or above (conntrackd refuses it)"));
        }
        let ok = match SIZES[usize::from(a)] {
            Size::Fixed(n) => len == usize::from(n),
            Size::Max(n) => len <= usize::from(n),
        };
        if !ok {
            return Err(err("a length other than this attribute's size"));
        }
        if out.iter().any(|(n, _)| *n == a) {
            return Err(err("the same attribute twice"));
        }
        out.push((a, &m[p + 4..p + len]));
        p += align4(len).min(m.len() - p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
