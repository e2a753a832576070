//! Frame construction with valid checksums, for tests, benchmarks and the traffic
//! generator. Allocates; never used on the packet path.

use core::net::IpAddr;

use super::{checksum_add, checksum_finish};

/// Transport layer of a frame to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: Vec<u8>,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 (chosen by the address family): type, code, the 4-byte rest of
    /// header, payload.
    Icmp {
        ty: u8,
        code: u8,
        rest: u32,
        payload: Vec<u8>,
    },
    /// Any other protocol number with an opaque payload.
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

/// A frame to build: Ethernet (with optional VLAN tags), IPv4 or IPv6, transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Outer tag first. The first of two tags uses the 802.1ad EtherType.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub l4: L4,
}

impl FrameSpec {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> FrameSpec {
        FrameSpec { src_mac: [0x02, 0, 0, 0, 0, 0x01], dst_mac: [0x02, 0, 0, 0, 0, 0x02], vlans: vec![], src, dst, ttl: 64, ident: 1, dont_frag: true, l4 }
    }

    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8, seq: u32, ack: u32) -> FrameSpec {
        FrameSpec::new(src, dst, L4::Tcp { sport, dport, seq, ack, flags, window: 64_240, options: vec![], payload: vec![] })
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> FrameSpec {
        FrameSpec::new(src, dst, L4::Udp { sport, dport, payload: payload.to_vec() })
    }

    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: u32, payload: &[u8]) -> FrameSpec {
        FrameSpec::new(src, dst, L4::Icmp { ty, code, rest, payload: payload.to_vec() })
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if self.src.is_ipv6() {
                    58
                } else {
                    1
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// The transport segment with its checksum filled in.
    fn segment(&self) -> Vec<u8> {
        let mut seg = match &self.l4 {
            L4::Tcp { sport, dport, seq, ack, flags, window, options, payload } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0); // EOL padding
                }
                let mut s = Vec::with_capacity(20 + opts.len() + payload.len());
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&seq.to_be_bytes());
                s.extend_from_slice(&ack.to_be_bytes());
                s.push((((20 + opts.len()) / 4) as u8) << 4);
                s.push(*flags);
                s.extend_from_slice(&window.to_be_bytes());
                s.extend_from_slice(&[0, 0, 0, 0]);
                s.extend_from_slice(&opts);
                s.extend_from_slice(payload);
                s
            }
            L4::Udp { sport, dport, payload } => {
                let mut s = Vec::with_capacity(8 + payload.len());
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(&[0, 0]);
                s.extend_from_slice(payload);
                s
            }
            L4::Icmp { ty, code, rest, payload } => {
                let mut s = vec![*ty, *code, 0, 0];
                s.extend_from_slice(&rest.to_be_bytes());
                s.extend_from_slice(payload);
                s
            }
            L4::Raw { payload, .. } => return payload.clone(),
        };
        let proto = self.proto();
        let pseudo = match (proto, self.src, self.dst) {
            (1, _, _) => 0, // ICMPv4 has no pseudo-header
            (_, IpAddr::V4(s), IpAddr::V4(d)) => {
                let sum = checksum_add(0, &s.octets());
                checksum_add(sum, &d.octets()) + u32::from(proto) + seg.len() as u32
            }
            (_, IpAddr::V6(s), IpAddr::V6(d)) => {
                let sum = checksum_add(0, &s.octets());
                checksum_add(sum, &d.octets()) + seg.len() as u32 + u32::from(proto)
            }
            _ => panic!("mixed address families"),
        };
        let at = match proto {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        let mut c = checksum_finish(checksum_add(pseudo, &seg));
        if proto == 17 && c == 0 {
            c = 0xffff; // RFC 768: zero means "no checksum"
        }
        seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        seg
    }

    /// The IP packet (no link layer).
    pub fn ip_packet(&self) -> Vec<u8> {
        let seg = self.segment();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_packet(s.octets(), d.octets(), self.proto(), self.ttl, self.ident, self.dont_frag, 0, false, &seg),
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut p = vec![0x60, 0, 0, 0];
                p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                p.push(self.proto());
                p.push(self.ttl);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&seg);
                p
            }
            _ => panic!("mixed address families"),
        }
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let ip = self.ip_packet();
        let ethertype: u16 = if self.src.is_ipv6() { 0x86dd } else { 0x0800 };
        ethernet(self.dst_mac, self.src_mac, &self.vlans, ethertype, &ip)
    }

    /// The frame cut into IP fragments whose payloads hold at most `chunk` bytes
    /// (rounded down to a multiple of 8).
    pub fn fragments(&self, chunk: usize) -> Vec<Vec<u8>> {
        let chunk = (chunk / 8 * 8).max(8);
        let seg = self.segment();
        let ethertype: u16 = if self.src.is_ipv6() { 0x86dd } else { 0x0800 };
        let mut out = Vec::new();
        let mut off = 0;
        while off < seg.len() {
            let end = (off + chunk).min(seg.len());
            let more = end < seg.len();
            let ip = match (self.src, self.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_packet(s.octets(), d.octets(), self.proto(), self.ttl, self.ident, false, off, more, &seg[off..end]),
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let mut p = vec![0x60, 0, 0, 0];
                    p.extend_from_slice(&((end - off + 8) as u16).to_be_bytes());
                    p.push(44);
                    p.push(self.ttl);
                    p.extend_from_slice(&s.octets());
                    p.extend_from_slice(&d.octets());
                    p.push(self.proto());
                    p.push(0);
                    p.extend_from_slice(&((off as u16) | u16::from(more)).to_be_bytes());
                    p.extend_from_slice(&u32::from(self.ident).to_be_bytes());
                    p.extend_from_slice(&seg[off..end]);
                    p
                }
                _ => panic!("mixed address families"),
            };
            out.push(ethernet(self.dst_mac, self.src_mac, &self.vlans, ethertype, &ip));
            off = end;
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn ipv4_packet(s: [u8; 4], d: [u8; 4], proto: u8, ttl: u8, ident: u16, df: bool, off: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&ident.to_be_bytes());
    let ff = ((off / 8) as u16) | if df { 0x4000 } else { 0 } | if more { 0x2000 } else { 0 };
    p.extend_from_slice(&ff.to_be_bytes());
    p.push(ttl);
    p.push(proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&s);
    p.extend_from_slice(&d);
    let c = checksum_finish(checksum_add(0, &p));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An Ethernet frame around `payload`, padded to the 60-byte minimum.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlans.len() + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (i, v) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() > 1 { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

/// TCP option bytes as Linux sends them on a SYN: MSS, SACK-permitted, timestamps,
/// NOP, window scale.
pub fn syn_options(mss: u16, wscale: u8, tsval: u32) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend_from_slice(&mss.to_be_bytes());
    o.extend_from_slice(&[4, 2, 8, 10]);
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, wscale]);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ipv4, tcp, udp};

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let spec = FrameSpec::tcp("10.0.1.1".parse().unwrap(), 40000, "10.0.2.1".parse().unwrap(), 80, 0x02, 7, 0);
        let f = spec.build();
        let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        let seg = ip.payload();
        let t = tcp::Packet::new_checked(seg).unwrap();
        assert_eq!((t.src_port(), t.dst_port(), t.seq(), t.flags()), (40000, 80, 7, 0x02));
        assert_eq!(checksum_finish(checksum_add(ip.pseudo_header_sum(seg.len()), seg)), 0);
        let u = FrameSpec::udp("10.0.1.1".parse().unwrap(), 5, "10.0.2.1".parse().unwrap(), 53, b"hi").build();
        let ip = ipv4::Packet::new_checked(&u[14..]).unwrap();
        assert_eq!(udp::Packet::new_checked(ip.payload()).unwrap().payload(), b"hi");
        assert_eq!(u.len(), 60, "padded to the Ethernet minimum");
    }

    #[test]
    fn fragments_cover_the_segment() {
        let spec = FrameSpec::udp("10.0.1.1".parse().unwrap(), 5, "10.0.2.1".parse().unwrap(), 53, &[7u8; 100]);
        let frags = spec.fragments(48);
        assert_eq!(frags.len(), 3);
        let first = ipv4::Packet::new_checked(&frags[0][14..]).unwrap();
        assert!(first.more_frags() && first.frag_offset() == 0);
        let last = ipv4::Packet::new_checked(&frags[2][14..]).unwrap();
        assert!(!last.more_frags() && last.frag_offset() == 96);
    }
}
