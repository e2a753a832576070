//! Frame -> packet metadata: everything conntrack and policy read, in one pass over the
//! headers, without copying the payload.

use crate::flow::{FlowHasher, FlowKey, Side};
use crate::verdict::DropReason;
#[cfg(test)]
use crate::wire::tcp::Options;
use crate::wire::{WireError, arp, ethernet, icmp, ipv4, ipv6, tcp, udp, vlan};

pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// At most two VLAN tags (802.1ad outer + 802.1Q inner) are accepted.
pub const MAX_VLAN_TAGS: usize = 2;

/// The VLAN tag EtherTypes (TPIDs) the parser reads past: 802.1Q, 802.1ad, the older
/// 0x9100.
pub const VLAN_TPIDS: [u16; 3] = [ethernet::ethertype::VLAN, ethernet::ethertype::QINQ, ethernet::ethertype::QINQ_OLD];

/// IPv6 extension headers walked before a packet is called malformed.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = crate::wire::ipv6::MAX_EXTENSION_HEADERS;

/// The IPv6 next-header values the parser steps over to reach the upper layer: those
/// with the (next, len) layout, then AH and the fragment header (RFC 8200 section 4).
pub mod ipv6_extension {
    use crate::wire::ipv6::next_header as nh;
    pub const GENERIC: [u8; 6] = [nh::HOP_BY_HOP, nh::ROUTING, nh::DEST_OPTS, nh::MOBILITY, nh::HIP, nh::SHIM6];
    pub const AH: u8 = nh::AH;
    pub const FRAGMENT: u8 = nh::FRAGMENT;
}

/// What a frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Ip(PacketMeta),
    Arp,
    /// Another EtherType (LLDP, MPLS, ...), with its value.
    NonIp(u16),
}

/// Fields of a fragment of a fragmented datagram (RFC 791 / RFC 8200 section 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    pub ident: u32,
    /// Offset in bytes; 0 for the first fragment.
    pub offset: u16,
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMeta {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub flags: u8,
    /// Payload bytes (segment length without SYN/FIN).
    pub payload_len: u32,
    /// Where the option bytes sit in the frame (offset, length): parsed only when
    /// conntrack needs them (SYN, SACK). Offsets keep the metadata free of borrows, so
    /// a worker can stage a burst's metadata in a buffer it owns.
    pub opt_off: u16,
    pub opt_len: u8,
}

impl TcpMeta {
    /// The option bytes, from the frame this metadata was parsed from.
    #[inline]
    pub fn options<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        option_bytes(frame, self.opt_off, self.opt_len)
    }
}

/// `len` option bytes at `off` in `frame` (none if the frame is shorter: the parser
/// has checked they are there).
#[inline(always)]
fn option_bytes(frame: &[u8], off: u16, len: u8) -> &[u8] {
    let start = usize::from(off);
    frame.get(start..start + usize::from(len)).unwrap_or(&[])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp(TcpMeta),
    Udp,
    /// An ICMP query or its reply (echo, timestamp); the key holds the identifier.
    IcmpQuery {
        ty: u8,
        code: u8,
        request: bool,
    },
    /// An ICMP error quoting a packet of the flow in `PacketMeta::key` (the quoted
    /// packet's flow, not the error's own addresses) sent from `inner_side`. The
    /// error's own source address is `outer_src` (IPv4 in the last word). For a quoted
    /// TCP segment, `quoted_seq` is its sequence number (0 for other protocols).
    IcmpError {
        ty: u8,
        code: u8,
        inner_side: Side,
        quoted_seq: u32,
        outer_src: [u32; 4],
    },
    /// An ICMP message that neither starts nor belongs to a flow (router advertisement,
    /// MLD, ...). `nd` marks IPv6 neighbor discovery.
    IcmpOther {
        ty: u8,
        code: u8,
        nd: bool,
    },
    /// Any other IP protocol, tracked by addresses only (Linux's "generic" tracker).
    Other,
    /// A fragment after the first: no transport header, follows the first's verdict.
    LaterFragment,
}

impl L4 {
    /// Judged without looking its key up in the table: a later fragment follows its
    /// first fragment (the fragment table), an ICMP message outside any flow asks the
    /// rules or the ND setting. Such packets are not hashed or prefetched.
    #[inline]
    pub(crate) fn keyless(&self) -> bool {
        matches!(self, L4::LaterFragment | L4::IcmpOther { .. })
    }
}

/// Parsed metadata of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// The flow the packet belongs to (for an ICMP error: the quoted flow).
    pub key: FlowKey,
    pub side: Side,
    pub l4: L4,
    pub frag: Option<FragInfo>,
    /// Layer-3 length (IP header and payload), what byte counters add.
    pub ip_len: u32,
}

impl PacketMeta {
    /// Metadata of nothing: what a burst's staging slots hold before their first packet.
    pub(crate) const EMPTY: PacketMeta =
        PacketMeta { key: FlowKey { addr: [0, 0], port: [0, 0], proto: 0, v6: false, vlan: 0 }, side: Side::FromLo, l4: L4::Other, frag: None, ip_len: 0 };

    /// The source address carried by this packet.
    pub fn src_addr(&self) -> u128 {
        if let L4::IcmpError { outer_src: w, .. } = self.l4 {
            return u128::from(w[0]) << 96 | u128::from(w[1]) << 64 | u128::from(w[2]) << 32 | u128::from(w[3]);
        }
        self.key.addr[self.side as usize]
    }
    pub fn dst_addr(&self) -> u128 {
        self.key.addr[1 - self.side as usize]
    }
    pub fn src_port(&self) -> u16 {
        self.key.port[self.side as usize]
    }
    pub fn dst_port(&self) -> u16 {
        self.key.port[1 - self.side as usize]
    }
}

fn malformed(_: WireError) -> DropReason {
    DropReason::Malformed
}

/// Parses an Ethernet frame. Never panics; every refusal is `Err(reason)`.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Frame, DropReason> {
    let mut m = PacketMeta::EMPTY;
    if fast_path(frame, &mut m, None).is_some() {
        return Ok(Frame::Ip(m));
    }
    parse_general(frame)
}

/// What [`parse_into`] found.
pub(crate) enum Kind {
    /// An IP packet: its metadata is in `out`; from the fast path also its key's hash.
    Ip(Option<u64>),
    Arp,
    NonIp,
}

/// [`parse`], writing an IP packet's metadata into `out` (a burst's staging slot)
/// instead of returning it, so that the common case is stored once rather than moved
/// through the result. `out` is left as it was for anything else. The fast path also
/// hashes the key with `hasher`, from the values in registers
/// ([`FlowHasher::hash_v4`]): hashing a key in memory reads the ports and protocol
/// back in wider loads than they were written with, which the CPU cannot forward from
/// its store buffer. (Until 2026-12 the fast path passed the key by reference to a
/// hashing closure the compiler did not inline: the key went to the stack and the
/// stall came back, 16 % of the mixed burst's time on the dev VM.)
#[inline(always)]
pub(crate) fn parse_into(frame: &[u8], out: &mut PacketMeta, hasher: &FlowHasher) -> Result<Kind, DropReason> {
    if let Some(h) = fast_path(frame, out, Some(hasher)) {
        return Ok(Kind::Ip(Some(h)));
    }
    // Written into `out` in place: a metadata built elsewhere and copied in is read
    // back in wider words than it was written with, which the store buffer cannot
    // forward (two copies, two stalls a packet on this path, measured on the dev VM).
    Ok(match general_into(frame, out)? {
        General::Ip => Kind::Ip(None),
        General::Arp => Kind::Arp,
        General::NonIp(_) => Kind::NonIp,
    })
}

/// What an established flow's plain ACK needs, parsed by [`ack_lane`]: the canonical
/// IPv4 endpoints as 32-bit words, which side sent it, and the TCP fields tracking
/// reads. A third of [`PacketMeta`]'s size, with no 128-bit addresses to widen and no
/// enum to tag: the common packet's stage 1 stores this and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckMeta {
    pub addr: [u32; 2],
    pub port: [u16; 2],
    /// The sender is the key's `hi` endpoint.
    pub from_hi: bool,
    pub flags: u8,
    pub window: u16,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u32,
    /// TCP option bytes, at [`ACK_LANE_OPTIONS`] in the frame.
    pub opt_len: u8,
    pub ip_len: u32,
}

/// Where an [`AckMeta`]'s TCP options start in its frame.
pub(crate) const ACK_LANE_OPTIONS: u16 = 54;

impl AckMeta {
    pub(crate) const EMPTY: AckMeta =
        AckMeta { addr: [0; 2], port: [0; 2], from_hi: false, flags: 0, window: 0, seq: 0, ack: 0, payload_len: 0, opt_len: 0, ip_len: 0 };

    /// The canonical key, as [`parse_into`] builds it for the same frame.
    #[cfg(test)]
    pub(crate) fn key(&self) -> FlowKey {
        FlowKey { addr: [u128::from(self.addr[0]), u128::from(self.addr[1])], port: self.port, proto: proto::TCP, v6: false, vlan: 0 }
    }

    /// The TCP option bytes, from the frame this metadata was parsed from.
    #[inline(always)]
    pub(crate) fn options<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        option_bytes(frame, ACK_LANE_OPTIONS, self.opt_len)
    }

    /// The TCP fields, as [`parse_into`] reads them for the same frame.
    #[cfg(test)]
    pub(crate) fn tcp(&self) -> TcpMeta {
        TcpMeta {
            seq: self.seq,
            ack: self.ack,
            window: self.window,
            flags: self.flags,
            payload_len: self.payload_len,
            opt_off: ACK_LANE_OPTIONS,
            opt_len: self.opt_len,
        }
    }
}

/// The ACK lane: an untagged IPv4 TCP segment (no IP options, not a fragment) whose
/// control flags are ACK without SYN, FIN or RST — nearly every packet of an
/// established flow — parsed into `out` with exactly the fast path's checks and hashed
/// as the fast path hashes it (`ack_lane_agrees_with_parse_into` checks both on
/// mutated frames). `None`, with `out` partly written, for anything else: the caller
/// then parses the frame with [`parse_into`].
#[inline(always)]
pub(crate) fn ack_lane(f: &[u8], out: &mut AckMeta, hasher: &FlowHasher) -> Option<u64> {
    const CONTROL: u8 = tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST | tcp::flags::ACK;
    let h: &[u8; 54] = f.get(..54)?.try_into().ok()?;
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    if be16(12) != ethernet::ethertype::IPV4 || h[23] != proto::TCP || h[47] & CONTROL != tcp::flags::ACK {
        return None;
    }
    let total = plain_ipv4(h, f.len() - 14)?;
    // The fast path's TCP check (`fast_transport`): a header that fits the IP payload.
    let hlen = usize::from(h[46] >> 4) * 4;
    if hlen < tcp::MIN_HEADER_LEN || hlen > total - 20 {
        return None;
    }
    let src = u32::from_be_bytes([h[26], h[27], h[28], h[29]]);
    let dst = u32::from_be_bytes([h[30], h[31], h[32], h[33]]);
    let (lo, hi, swap) = crate::flow::order_v4(src, be16(34), dst, be16(36));
    let (addr, port) = ([(lo >> 16) as u32, (hi >> 16) as u32], [lo as u16, hi as u16]);
    *out = AckMeta {
        addr,
        port,
        from_hi: swap,
        flags: h[47],
        window: be16(48),
        seq: u32::from_be_bytes([h[38], h[39], h[40], h[41]]),
        ack: u32::from_be_bytes([h[42], h[43], h[44], h[45]]),
        payload_len: (total - 20 - hlen) as u32,
        opt_len: (hlen - tcp::MIN_HEADER_LEN) as u8,
        ip_len: total as u32,
    };
    Some(hasher.hash_v4(addr[0], addr[1], port, proto::TCP, 0))
}

/// The common case in one pass over fixed offsets: Ethernet untagged or behind one
/// 802.1Q tag (a trunk port), IPv4 without options or fragmentation or IPv6 without
/// extension headers, a whole TCP (any header length) or UDP header. Anything else,
/// including every malformed frame, takes [`parse_general`], which gives the same
/// answer for these frames (a test checks it on mutated frames of each kind).
///
/// Returns the key's hash by `hasher` (0 without one), or `None` for a frame left to
/// the general parser.
#[inline(always)]
fn fast_path(f: &[u8], out: &mut PacketMeta, hasher: Option<&FlowHasher>) -> Option<u64> {
    let ethertype = u16::from_be_bytes(f.get(12..14)?.try_into().ok()?);
    if ethertype == ethernet::ethertype::IPV4 {
        fast_ipv4_at::<0>(f, out, hasher, 0)
    } else if ethertype == ethernet::ethertype::IPV6 {
        fast_ipv6_at::<0>(f, out, hasher, 0)
    } else if ethertype == ethernet::ethertype::VLAN {
        // The tag read as the general parser reads it.
        let tag = vlan::Tag::new_checked(f.get(ethernet::HEADER_LEN..)?).ok()?;
        let vid = u32::from(tag.vid());
        match tag.ethertype() {
            ethernet::ethertype::IPV4 => fast_ipv4_at::<4>(f, out, hasher, vid),
            ethernet::ethertype::IPV6 => fast_ipv6_at::<4>(f, out, hasher, vid),
            _ => None,
        }
    } else {
        None
    }
}

/// The fast path's IPv6 half: a fixed header followed directly by a whole TCP header
/// (the frame at least 74 bytes and the tag) or UDP header; extension headers, ICMPv6
/// and anything shorter take the general parser.
#[inline(always)]
fn fast_ipv6_at<const OFF: usize>(f: &[u8], out: &mut PacketMeta, hasher: Option<&FlowHasher>, vlan: u32) -> Option<u64> {
    // 14 + 40 + 20 (+ a tag).
    let h: &[u8; 74] = f.get(OFF..OFF + 74)?.try_into().ok()?;
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    if h[14] >> 4 != 6 {
        return None;
    }
    let plen = usize::from(be16(18));
    if f.len() - 54 - OFF < plen {
        return None;
    }
    let src = u128::from_be_bytes(h[22..38].try_into().ok()?);
    let dst = u128::from_be_bytes(h[38..54].try_into().ok()?);
    let (sport, dport) = (be16(54), be16(56));
    let proto = h[20];
    let l4 = fast_transport(proto, h[54..74].try_into().ok()?, plen, 74 + OFF as u16)?;
    let (key, side) = FlowKey::new(src, sport, dst, dport, proto, true, vlan);
    // From the key's parts, not from the key in memory (see `FlowHasher::hash_v4`).
    let hashed = match hasher {
        Some(hs) => hs.hash_v6(key.addr, key.port, proto, vlan),
        None => 0,
    };
    *out = PacketMeta { key, side, l4, frag: None, ip_len: (ipv6::HEADER_LEN + plen) as u32 };
    Some(hashed)
}

/// The fast path's transport header: a whole TCP or UDP header whose first 20 bytes
/// are `t`, in `len` bytes of transport (what the IP header says follows it), the
/// TCP options at `opt_off` in the frame. `None`: anything else, left to the general
/// parser.
#[inline(always)]
fn fast_transport(proto: u8, t: &[u8; 20], len: usize, opt_off: u16) -> Option<L4> {
    let be16 = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
    match proto {
        proto::TCP => {
            let hlen = usize::from(t[12] >> 4) * 4;
            if hlen < tcp::MIN_HEADER_LEN || hlen > len {
                return None;
            }
            Some(L4::Tcp(TcpMeta {
                seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                window: be16(14),
                flags: t[13],
                payload_len: (len - hlen) as u32,
                opt_off,
                opt_len: (hlen - tcp::MIN_HEADER_LEN) as u8,
            }))
        }
        proto::UDP => {
            let ulen = usize::from(be16(4));
            (ulen >= 8 && ulen <= len).then_some(L4::Udp)
        }
        _ => None,
    }
}

/// The IPv4 header at byte 14 of `h` (a frame from its Ethernet header, or from 4
/// bytes in behind a tag), with `room` bytes of frame from that header on: version 4
/// with a 20-byte header, not a fragment, a total length of at least 28 that fits,
/// the header checksum. Returns the total length; `None` leaves the frame to the
/// general parser. The fixed-offset paths' (`fast_ipv4_at`, `ack_lane`) one check.
#[inline(always)]
fn plain_ipv4(h: &[u8; 54], room: usize) -> Option<usize> {
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    if h[14] != 0x45 || be16(20) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(be16(16));
    if total < 28 || room < total || !ipv4::header_checksum_ok(h[14..34].try_into().ok()?) {
        return None;
    }
    Some(total)
}

/// [`fast_path`] for a frame whose EtherType field (IPv4's) sits `OFF` bytes after
/// the untagged place, with VLAN id `vlan`.
#[inline(always)]
fn fast_ipv4_at<const OFF: usize>(f: &[u8], out: &mut PacketMeta, hasher: Option<&FlowHasher>, vlan: u32) -> Option<u64> {
    // 14 + 20 + 20 (+ a tag): every real frame is at least 60 bytes (Ethernet minimum).
    let h: &[u8; 54] = f.get(OFF..OFF + 54)?.try_into().ok()?;
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    // Untagged, the caller has seen IPv4's EtherType; behind a tag it is here.
    if OFF != 0 && be16(12) != ethernet::ethertype::IPV4 {
        return None;
    }
    let total = plain_ipv4(h, f.len() - 14 - OFF)?;
    let src = u32::from_be_bytes([h[26], h[27], h[28], h[29]]);
    let dst = u32::from_be_bytes([h[30], h[31], h[32], h[33]]);
    let (sport, dport) = (be16(34), be16(36));
    let proto = h[23];
    let l4 = fast_transport(proto, h[34..54].try_into().ok()?, total - 20, 54 + OFF as u16)?;
    let (mut key, side) = FlowKey::new_v4(src, sport, dst, dport, proto);
    key.vlan = vlan;
    // From the key's parts, not from the key in memory (see `FlowHasher::hash_v4`).
    let hashed = match hasher {
        Some(hs) => hs.hash_v4(key.addr[0] as u32, key.addr[1] as u32, key.port, proto, vlan),
        None => 0,
    };
    *out = PacketMeta { key, side, l4, frag: None, ip_len: total as u32 };
    Some(hashed)
}

/// Parses any Ethernet frame: VLAN tags, ARP, IPv4 with options and fragments, IPv6
/// with extension headers, ICMP errors and their quotes.
pub fn parse_general(frame: &[u8]) -> Result<Frame, DropReason> {
    let mut m = PacketMeta::EMPTY;
    Ok(match general_into(frame, &mut m)? {
        General::Ip => Frame::Ip(m),
        General::Arp => Frame::Arp,
        General::NonIp(ethertype) => Frame::NonIp(ethertype),
    })
}

/// What [`general_into`] found; an IP packet's metadata is in its `out`.
enum General {
    Ip,
    Arp,
    NonIp(u16),
}

/// [`parse_general`], writing an IP packet's metadata into `out` (left as it was for
/// anything else).
fn general_into(frame: &[u8], out: &mut PacketMeta) -> Result<General, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(malformed)?;
    let mut ethertype = eth.ethertype();
    let mut rest = &frame[ethernet::HEADER_LEN..];
    let mut vlan = 0u32;
    let mut tags = 0;
    while matches!(ethertype, ethernet::ethertype::VLAN | ethernet::ethertype::QINQ | ethernet::ethertype::QINQ_OLD) {
        if tags == MAX_VLAN_TAGS {
            return Err(DropReason::Malformed);
        }
        let tag = vlan::Tag::new_checked(rest).map_err(malformed)?;
        vlan |= u32::from(tag.vid()) << (12 * tags);
        tags += 1;
        ethertype = tag.ethertype();
        rest = &rest[vlan::TAG_LEN..];
    }
    match ethertype {
        ethernet::ethertype::IPV4 => parse_ipv4(frame, rest, vlan, out).map(|()| General::Ip),
        ethernet::ethertype::IPV6 => parse_ipv6(frame, rest, vlan, out).map(|()| General::Ip),
        ethernet::ethertype::ARP => {
            arp::check(rest).map_err(malformed)?;
            Ok(General::Arp)
        }
        other => Ok(General::NonIp(other)),
    }
}

fn parse_ipv4(frame: &[u8], b: &[u8], vlan: u32, out: &mut PacketMeta) -> Result<(), DropReason> {
    let ip = ipv4::Packet::new_checked(b).map_err(malformed)?;
    if !ip.verify_checksum() {
        // The kernel drops these in ip_rcv before conntrack sees them.
        return Err(DropReason::Malformed);
    }
    let src = u128::from(u32::from_be_bytes(ip.src()));
    let dst = u128::from(u32::from_be_bytes(ip.dst()));
    let proto = ip.protocol();
    let frag = ip.is_fragment().then(|| FragInfo { ident: u32::from(ip.ident()), offset: ip.frag_offset(), more: ip.more_frags() });
    let payload = &b[ip.header_len()..ip.total_len()];
    let ip_len = ip.total_len() as u32;
    l4(frame, src, dst, proto, false, vlan, payload, frag, ip_len, out)
}

fn parse_ipv6(frame: &[u8], b: &[u8], vlan: u32, out: &mut PacketMeta) -> Result<(), DropReason> {
    let ip = ipv6::Packet::new_checked(b).map_err(malformed)?;
    let up = ip.upper_layer().map_err(malformed)?;
    let src = u128::from_be_bytes(ip.src());
    let dst = u128::from_be_bytes(ip.dst());
    let frag = up.fragment.and_then(|f| {
        // An atomic fragment (offset 0, M=0, RFC 6946) is a whole datagram.
        (f.offset != 0 || f.more).then_some(FragInfo { ident: f.ident, offset: f.offset, more: f.more })
    });
    let packet = &b[..ipv6::HEADER_LEN + ip.payload_len()];
    let ip_len = packet.len() as u32;
    l4(frame, src, dst, up.protocol, true, vlan, &packet[up.offset..], frag, ip_len, out)
}

#[allow(clippy::too_many_arguments)]
fn l4(
    frame: &[u8],
    src: u128,
    dst: u128,
    proto: u8,
    v6: bool,
    vlan: u32,
    payload: &[u8],
    frag: Option<FragInfo>,
    ip_len: u32,
    out: &mut PacketMeta,
) -> Result<(), DropReason> {
    let mut meta = |key_side: (FlowKey, Side), l4| {
        *out = PacketMeta { key: key_side.0, side: key_side.1, l4, frag, ip_len };
        Ok(())
    };
    if let Some(f) = frag
        && f.offset != 0
    {
        // RFC 1858: a TCP fragment at offset 8 can overwrite the flags of the first one.
        if proto == proto::TCP && f.offset == 8 {
            return Err(DropReason::Malformed);
        }
        return meta(FlowKey::new(src, 0, dst, 0, proto, v6, vlan), L4::LaterFragment);
    }
    match proto {
        proto::TCP => {
            // A first fragment must hold the whole TCP header (RFC 1858 "tiny fragment").
            let t = tcp::Packet::new_checked(payload).map_err(malformed)?;
            let tm = TcpMeta {
                seq: t.seq(),
                ack: t.ack(),
                window: t.window(),
                flags: t.flags(),
                payload_len: (payload.len() - t.header_len()) as u32,
                // `payload` lies inside `frame`: the options' offset in the frame.
                opt_off: (payload.as_ptr() as usize - frame.as_ptr() as usize + tcp::MIN_HEADER_LEN) as u16,
                opt_len: (t.header_len() - tcp::MIN_HEADER_LEN) as u8,
            };
            meta(FlowKey::new(src, t.src_port(), dst, t.dst_port(), proto, v6, vlan), L4::Tcp(tm))
        }
        proto::UDP => {
            let (sport, dport) = if frag.is_some() {
                // The UDP length covers the whole datagram, not this fragment.
                udp::ports(payload).map_err(malformed)?
            } else {
                let u = udp::Packet::new_checked(payload).map_err(malformed)?;
                (u.src_port(), u.dst_port())
            };
            meta(FlowKey::new(src, sport, dst, dport, proto, v6, vlan), L4::Udp)
        }
        proto::ICMP | proto::ICMPV6 if (proto == proto::ICMP) != v6 => {
            let m = icmp::Packet::new_checked(payload).map_err(malformed)?;
            let (ty, code) = (m.msg_type(), m.code());
            if is_error(ty, v6) {
                if frag.is_some() {
                    return Err(DropReason::IcmpInvalid);
                }
                let ((inner, inner_side), quoted_seq) = quoted_flow(m.payload(), v6, vlan)?;
                // The error must travel back to whoever sent the quoted packet (Linux
                // `nf_conntrack_inet_error` checks the outer destination likewise).
                if inner.addr[inner_side as usize] != dst {
                    return Err(DropReason::IcmpInvalid);
                }
                let outer_src = [(src >> 96) as u32, (src >> 64) as u32, (src >> 32) as u32, src as u32];
                return meta((inner, Side::FromLo), L4::IcmpError { ty, code, inner_side, quoted_seq, outer_src });
            }
            if let Some(req) = request_of(ty, v6) {
                let key = FlowKey::icmp_query(src, dst, m.echo_ident(), req, req == ty, proto, v6, vlan);
                return meta(key, L4::IcmpQuery { ty, code, request: req == ty });
            }
            let nd = v6 && icmp::v6::is_neighbor_discovery(ty);
            meta(FlowKey::new(src, 0, dst, 0, proto, v6, vlan), L4::IcmpOther { ty, code, nd })
        }
        _ => meta(FlowKey::new(src, 0, dst, 0, proto, v6, vlan), L4::Other),
    }
}

fn is_error(ty: u8, v6: bool) -> bool {
    if v6 { icmp::v6::is_error(ty) } else { icmp::v4::is_error(ty) }
}

/// The request type of a query or reply type; `None` for types that are neither.
pub fn request_of(ty: u8, v6: bool) -> Option<u8> {
    use icmp::{v4, v6 as w6};
    if v6 {
        match ty {
            w6::ECHO_REQUEST | w6::ECHO_REPLY => Some(w6::ECHO_REQUEST),
            _ => None,
        }
    } else {
        match ty {
            v4::ECHO_REQUEST | v4::ECHO_REPLY => Some(v4::ECHO_REQUEST),
            v4::TIMESTAMP | v4::TIMESTAMP_REPLY => Some(v4::TIMESTAMP),
            _ => None,
        }
    }
}

/// The flow of the packet quoted inside an ICMP error. The quote holds the IP header
/// and at least 8 bytes of transport header (RFC 792, RFC 4443 section 2.4(c)); its
/// total length may claim more than is quoted, so it is read leniently.
fn quoted_flow(q: &[u8], v6: bool, vlan: u32) -> Result<((FlowKey, Side), u32), DropReason> {
    let bad = DropReason::IcmpInvalid;
    let (src, dst, proto, l4) = if v6 {
        let ip = ipv6::Packet::new_quoted(q).map_err(|_| bad)?;
        let up = ipv6::walk(ip.next_header(), q).map_err(|_| bad)?;
        if up.fragment.is_some_and(|f| f.offset != 0) {
            return Err(bad); // a later fragment quotes no ports
        }
        (u128::from_be_bytes(ip.src()), u128::from_be_bytes(ip.dst()), up.protocol, &q[up.offset..])
    } else {
        let ip = ipv4::Packet::new_quoted(q).map_err(|_| bad)?;
        if ip.frag_offset() != 0 {
            return Err(bad); // a later fragment quotes no ports
        }
        (u128::from(u32::from_be_bytes(ip.src())), u128::from(u32::from_be_bytes(ip.dst())), ip.protocol(), &q[ip.header_len()..])
    };
    match proto {
        proto::TCP => {
            // The ports and the sequence number: the 8 bytes RFC 792 quotes, and what a
            // host's TCP needs before it acts on the error (pf drops shorter quotes).
            let seq = l4.get(4..8).ok_or(bad)?;
            let (sport, dport) = udp::ports(l4).map_err(|_| bad)?;
            Ok((FlowKey::new(src, sport, dst, dport, proto, v6, vlan), u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]])))
        }
        proto::UDP => {
            let (sport, dport) = udp::ports(l4).map_err(|_| bad)?;
            Ok((FlowKey::new(src, sport, dst, dport, proto, v6, vlan), 0))
        }
        proto::ICMP | proto::ICMPV6 if (proto == proto::ICMP) != v6 => {
            let m = icmp::Packet::new_checked(l4).map_err(|_| bad)?;
            let ty = m.msg_type();
            // An error about an error is never answered (RFC 1122 3.2.2).
            let req = request_of(ty, v6).ok_or(bad)?;
            Ok((FlowKey::icmp_query(src, dst, m.echo_ident(), req, req == ty, proto, v6, vlan), 0))
        }
        _ => Ok((FlowKey::new(src, 0, dst, 0, proto, v6, vlan), 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{FrameSpec, L4 as B, syn_options};
    use proptest::prelude::*;

    fn frames() -> Vec<Vec<u8>> {
        let a = "10.0.1.1".parse().unwrap();
        let b = "10.0.2.1".parse().unwrap();
        let c = "2001:db8::1".parse().unwrap();
        let d = "2001:db8:2::80".parse().unwrap();
        vec![
            FrameSpec::new(a, b, B::Tcp { sport: 1, dport: 80, seq: 9, ack: 0, flags: 2, window: 5, options: syn_options(1460, 7, 1), payload: vec![] })
                .build(),
            FrameSpec::new(a, b, B::Tcp { sport: 1, dport: 80, seq: 9, ack: 7, flags: 0x18, window: 5, options: vec![], payload: vec![1; 100] }).build(),
            FrameSpec::udp(a, 53, b, 9, b"hello").build(),
            FrameSpec::icmp(a, b, 8, 0, 1, b"x").build(),
            // Behind one 802.1Q tag (the fast path too), and behind two (not).
            FrameSpec {
                vlans: vec![0xabc],
                ..FrameSpec::new(
                    a,
                    b,
                    B::Tcp { sport: 1, dport: 80, seq: 9, ack: 7, flags: 0x18, window: 5, options: syn_options(1460, 7, 1), payload: vec![1; 10] },
                )
            }
            .build(),
            FrameSpec { vlans: vec![7], ..FrameSpec::udp(a, 53, b, 9, b"hello") }.build(),
            FrameSpec { vlans: vec![7, 9], ..FrameSpec::udp(a, 53, b, 9, b"hello") }.build(),
            // IPv6: TCP and UDP with no extension header (the fast path), untagged and
            // behind a tag; ICMPv6 (not).
            FrameSpec::new(
                c,
                d,
                B::Tcp { sport: 1, dport: 80, seq: 9, ack: 7, flags: 0x18, window: 5, options: syn_options(1440, 7, 1), payload: vec![1; 30] },
            )
            .build(),
            FrameSpec { vlans: vec![0x123], ..FrameSpec::udp(d, 53, c, 9, &[7; 40]) }.build(),
            FrameSpec::icmp(c, d, 128, 0, 1, &[0; 40]).build(),
        ]
    }

    fn fast(f: &[u8]) -> Option<PacketMeta> {
        let mut m = PacketMeta::EMPTY;
        fast_path(f, &mut m, None).map(|_| m)
    }

    #[test]
    fn the_fast_path_takes_the_common_frames() {
        let f = frames();
        assert!(fast(&f[0]).is_some() && fast(&f[1]).is_some() && fast(&f[2]).is_some());
        assert!(fast(&f[3]).is_none(), "ICMP takes the general path");
        let Some(m) = fast(&f[0]) else { unreachable!() };
        let L4::Tcp(t) = m.l4 else { panic!() };
        assert_eq!(Options::parse(t.options(&f[0])).wscale, Some(7));
        // One 802.1Q tag: the fast path, with the VLAN id in the key and the options
        // found four bytes further on; two tags: the general parser.
        let Some(m) = fast(&f[4]) else { panic!("one tag takes the fast path") };
        let L4::Tcp(t) = m.l4 else { panic!() };
        assert_eq!((m.key.vlan, Options::parse(t.options(&f[4])).wscale), (0xabc, Some(7)));
        assert_eq!(fast(&f[5]).map(|m| m.key.vlan), Some(7));
        assert!(fast(&f[6]).is_none(), "QinQ takes the general path");
        let Some(m) = fast(&f[7]) else { panic!("IPv6 TCP takes the fast path") };
        let L4::Tcp(t) = m.l4 else { panic!() };
        assert_eq!((m.key.v6, Options::parse(t.options(&f[7])).wscale), (true, Some(7)));
        assert_eq!(fast(&f[8]).map(|m| (m.key.v6, m.key.vlan)), Some((true, 0x123)));
        assert!(fast(&f[9]).is_none(), "ICMPv6 takes the general path");
        assert_eq!(parse(&f[6]).map(|p| matches!(p, Frame::Ip(m) if m.key.vlan == 7 | 9 << 12)), Ok(true));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// The fast path's checksum (five 32-bit words, folded) accepts every correct
        /// header — addresses near 0xffff.. make the carries — and refuses it with any
        /// one bit of the header flipped.
        #[test]
        fn fast_path_checksum_takes_every_good_header_and_no_bad_one(a in any::<u32>(), b in any::<u32>(), len in 0usize..40, bit in 0usize..160) {
            let (a, b) = (std::net::Ipv4Addr::from(a | 0xfffe_0000), std::net::Ipv4Addr::from(b));
            let mut f = FrameSpec::new(a.into(), b.into(), B::Tcp { sport: 0xffff, dport: 80, seq: 9, ack: 7, flags: 0x10, window: 5, options: vec![], payload: vec![0xff; len] }).build();
            prop_assert!(fast(&f).is_some());
            f[14 + bit / 8] ^= 1 << (bit % 8);
            // One flipped bit changes the one's-complement sum (it never turns one zero,
            // 0x0000, into the other, 0xffff): the checksum fails, wherever the bit is.
            prop_assert!(fast(&f).is_none(), "bit {} flipped, still accepted", bit);
        }

        /// Whatever the bytes, the fast path either declines or agrees exactly with
        /// the general parser.
        #[test]
        fn fast_path_agrees_with_the_general_parser(pick in 0usize..10, edits in prop::collection::vec((0usize..140, any::<u8>()), 0..4), cut in 40usize..200) {
            let mut f = frames()[pick].clone();
            for (at, b) in edits {
                let n = f.len();
                f[at % n] = b;
            }
            f.truncate(cut.min(f.len()));
            if let Some(m) = fast(&f) {
                prop_assert_eq!(Ok(Frame::Ip(m)), parse_general(&f));
            }
            // What a burst's stage 1 calls says the same as `parse`, and writes the
            // slot only for an IP packet.
            let before = fast(&frames()[(pick + 1) % 10]).unwrap_or(PacketMeta::EMPTY);
            let mut slot = before;
            let hasher = FlowHasher::new(7);
            let into = parse_into(&f, &mut slot, &hasher);
            match (parse(&f), into) {
                (Ok(Frame::Ip(m)), Ok(Kind::Ip(hash))) => {
                    prop_assert_eq!(m, slot);
                    // The fast path's hash, taken before the store, is the stored key's.
                    prop_assert!(hash.is_none_or(|h| h == hasher.hash(&slot.key)));
                    prop_assert_eq!(hash.is_some(), fast(&f).is_some());
                }
                (Ok(Frame::Arp), Ok(Kind::Arp)) | (Ok(Frame::NonIp(_)), Ok(Kind::NonIp)) => prop_assert_eq!(before, slot),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(before, slot);
                }
                (p, i) => prop_assert!(false, "parse {:?}, parse_into {:?}", p, i.map(|_| ())),
            }
        }

        /// Whatever the bytes, the ACK lane either declines or reads exactly what
        /// `parse_into` reads, hash included; and it takes every untagged IPv4 TCP
        /// segment the fast path takes whose control flags are ACK alone.
        #[test]
        fn ack_lane_agrees_with_parse_into(pick in 0usize..10, edits in prop::collection::vec((0usize..140, any::<u8>()), 0..4), cut in 40usize..200, flags in any::<u8>()) {
            let mut f = frames()[pick].clone();
            if f.len() > 47 && f[12..14] == [0x08, 0x00] && f[23] == 6 {
                f[47] = flags;
            }
            for (at, b) in edits {
                let n = f.len();
                f[at % n] = b;
            }
            f.truncate(cut.min(f.len()));
            let hasher = FlowHasher::new(7);
            let mut a = AckMeta::EMPTY;
            let lane = ack_lane(&f, &mut a, &hasher);
            let mut m = PacketMeta::EMPTY;
            let into = parse_into(&f, &mut m, &hasher);
            if let Some(h) = lane {
                prop_assert!(matches!(into, Ok(Kind::Ip(Some(x))) if x == h), "the lane took what parse_into did not take alike");
                prop_assert_eq!(a.flags & (tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST | tcp::flags::ACK), tcp::flags::ACK);
                prop_assert_eq!(m.key, a.key());
                prop_assert_eq!(m.side == Side::FromHi, a.from_hi);
                prop_assert_eq!(m.l4, L4::Tcp(a.tcp()));
                prop_assert_eq!(m.frag, None);
                prop_assert_eq!(m.ip_len, a.ip_len);
            } else if let (Ok(Kind::Ip(Some(_))), L4::Tcp(t)) = (&into, m.l4) {
                let untagged_v4 = f[12..14] == [0x08, 0x00];
                let control = t.flags & (tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST | tcp::flags::ACK);
                prop_assert!(!(untagged_v4 && control == tcp::flags::ACK), "the lane declined an ACK the fast path took");
            }
        }
    }
}
