//! `--unique-ip`: each loop of a live replay moves the client side's address, so that
//! every loop is a fresh set of flows (a 4k-connection capture looped 250 times is a
//! million flows). Loop `k` adds `k × 2^20` to a client's IPv4 address (`k × 2^32` to
//! the low 64 bits of an IPv6 one); the server side keeps its addresses, so the
//! policy that admits the capture admits every loop. Checksums are updated
//! incrementally (RFC 1624): the IPv4 header's, and TCP's, UDP's (unless 0) and
//! ICMPv6's, whose pseudo-header holds the addresses.
//!
//! Two client addresses collide across loops only when they differ by a multiple of
//! 2^20 (IPv4): one flow of loop `k` would then equal one of loop `k'`. And an IPv4
//! address has room for [`IPV4_LAPS`] such moves: loop `k + 4096` is loop `k` again
//! (the replay says so when it gets there). ICMP errors' quoted headers are left as
//! they are.

/// Loops of distinct IPv4 client addresses: 2^32 / 2^20.
pub const IPV4_LAPS: u64 = 1 << 12;

/// Where the fields to change sit in a frame.
struct Layout {
    ip: usize,
    v6: bool,
    /// Offset of the transport checksum to update, if any.
    l4_csum: Option<usize>,
}

fn layout(f: &[u8]) -> Option<Layout> {
    let (ty, ip) = holdfast_pipeline::steer::network_header(f)?;
    match ty {
        0x0800 => {
            let ihl = usize::from(*f.get(ip)? & 0x0f) * 4;
            if ihl < 20 || f.len() < ip + ihl {
                return None;
            }
            let first = u16::from_be_bytes([f[ip + 6], f[ip + 7]]) & 0x1fff == 0;
            let l4 = ip + ihl;
            let l4_csum = match f[ip + 9] {
                6 if first => Some(l4 + 16),
                17 if first && f.get(l4 + 6..l4 + 8).is_some_and(|c| c != [0, 0]) => Some(l4 + 6),
                _ => None,
            };
            Some(Layout { ip, v6: false, l4_csum: l4_csum.filter(|&c| c + 2 <= f.len()) })
        }
        0x86dd => {
            if f.len() < ip + 40 {
                return None;
            }
            let l4 = ip + 40;
            let l4_csum = match f[ip + 6] {
                6 => Some(l4 + 16),
                17 => Some(l4 + 6),
                58 => Some(l4 + 2),
                _ => None,
            };
            Some(Layout { ip, v6: true, l4_csum: l4_csum.filter(|&c| c + 2 <= f.len()) })
        }
        _ => None,
    }
}

/// RFC 1624: the checksum at `at` after 16-bit words `old` became `new`.
fn adjust(f: &mut [u8], at: usize, old: &[u8], new: &[u8]) {
    let mut sum = u32::from(!u16::from_be_bytes([f[at], f[at + 1]]));
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Where the address sits: the source's or the destination's.
fn addr_at(l: &Layout, src: bool) -> (usize, usize) {
    match (l.v6, src) {
        (false, true) => (l.ip + 12, 4),
        (false, false) => (l.ip + 16, 4),
        (true, true) => (l.ip + 8, 16),
        (true, false) => (l.ip + 24, 16),
    }
}

/// Rewrites the source (or destination) address with `change` and updates checksums.
fn rewrite_addr(f: &mut [u8], l: &Layout, src: bool, change: impl FnOnce(&mut [u8])) {
    let (at, len) = addr_at(l, src);
    let mut old = [0u8; 16];
    old[..len].copy_from_slice(&f[at..at + len]);
    change(&mut f[at..at + len]);
    let mut new = [0u8; 16];
    new[..len].copy_from_slice(&f[at..at + len]);
    if !l.v6 {
        adjust(f, l.ip + 10, &old[..len], &new[..len]);
    }
    if let Some(c) = l.l4_csum {
        adjust(f, c, &old[..len], &new[..len]);
    }
}

/// Moves the client's address of `f` (its source when `from_client`, else its
/// destination) for loop `lap`. Returns false when the frame carries no IP header to
/// change (ARP, truncated), left as it is.
pub fn unique_ip(f: &mut [u8], from_client: bool, lap: u32) -> bool {
    if lap == 0 {
        return true;
    }
    let Some(l) = layout(f) else { return false };
    let v6 = l.v6;
    rewrite_addr(f, &l, from_client, |a| {
        if v6 {
            let lo = u64::from_be_bytes(a[8..16].try_into().expect("8 bytes"));
            a[8..16].copy_from_slice(&lo.wrapping_add(u64::from(lap) << 32).to_be_bytes());
        } else {
            let x = u32::from_be_bytes(a[..4].try_into().expect("4 bytes"));
            a.copy_from_slice(&x.wrapping_add((lap % IPV4_LAPS as u32) << 20).to_be_bytes());
        }
    });
    true
}

/// `--map-servers PREFIX`: the server side's IPv4 addresses moved into one network
/// (the lab's server network), each new server to the next address of it in order of
/// appearance; an address already in it stays. More servers than the network holds
/// share addresses (counted). IPv6 servers are left as they are (counted).
pub struct ServerMap {
    base: u32,
    size: u32,
    next: u32,
    map: std::collections::HashMap<u32, u32>,
    /// Servers given an address another server already has.
    pub shared: u64,
    /// Frames whose server address could not be mapped (IPv6, no IP header).
    pub left: u64,
}

impl ServerMap {
    /// `base`/`len`: an IPv4 network of at least 4 addresses.
    pub fn new(base: u32, len: u8) -> Result<ServerMap, String> {
        if len > 30 {
            return Err(format!("--map-servers: a /{len} has no room for servers (at most /30)"));
        }
        Ok(ServerMap { base, size: 1u32 << (32 - u32::from(len)), next: 0, map: Default::default(), shared: 0, left: 0 })
    }

    /// Maps the server's address in `f` (its source when `from_server`).
    pub fn apply(&mut self, f: &mut [u8], from_server: bool) {
        let Some(l) = layout(f).filter(|l| !l.v6) else {
            self.left += 1;
            return;
        };
        let (at, _) = addr_at(&l, from_server);
        let a = u32::from_be_bytes(f[at..at + 4].try_into().expect("4 bytes"));
        if a.wrapping_sub(self.base) < self.size {
            return;
        }
        let hosts = self.size - 2;
        let to = match self.map.get(&a) {
            Some(&t) => t,
            None => {
                if self.next >= hosts {
                    self.shared += 1;
                }
                let t = self.base + 1 + self.next % hosts;
                self.next += 1;
                if self.map.len() < (1 << 22) {
                    self.map.insert(a, t);
                }
                t
            }
        };
        rewrite_addr(f, &l, from_server, |x| x.copy_from_slice(&to.to_be_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_pipeline::wire::build::{FrameSpec, L4};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The frame built from scratch with the moved address is byte for byte the
    /// rewritten one: every checksum is what a full computation gives.
    #[test]
    fn checksums_equal_a_frame_built_with_the_new_address() {
        let cases: Vec<(FrameSpec, FrameSpec)> = vec![
            (
                FrameSpec::tcp(ip("198.51.100.7"), 40000, ip("10.0.2.1"), 80, 0x02, 1, 0),
                FrameSpec::tcp(ip("198.83.100.7"), 40000, ip("10.0.2.1"), 80, 0x02, 1, 0),
            ),
            (FrameSpec::udp(ip("198.51.100.7"), 5353, ip("10.0.2.1"), 53, b"query"), FrameSpec::udp(ip("198.83.100.7"), 5353, ip("10.0.2.1"), 53, b"query")),
            (
                FrameSpec::new(
                    ip("2001:db8::7"),
                    ip("2001:db8:1::1"),
                    L4::Tcp { sport: 1, dport: 80, seq: 5, ack: 0, flags: 2, window: 100, options: vec![], payload: vec![1, 2, 3] },
                ),
                FrameSpec::new(
                    ip("2001:db8::2:0:7"),
                    ip("2001:db8:1::1"),
                    L4::Tcp { sport: 1, dport: 80, seq: 5, ack: 0, flags: 2, window: 100, options: vec![], payload: vec![1, 2, 3] },
                ),
            ),
        ];
        for (a, b) in cases {
            let mut f = a.build();
            assert!(unique_ip(&mut f, true, 2));
            assert_eq!(f, b.build());
        }
        // The reply's destination moves the same way.
        let mut f = FrameSpec::tcp(ip("10.0.2.1"), 80, ip("198.51.100.7"), 40000, 0x12, 9, 2).build();
        assert!(unique_ip(&mut f, false, 2));
        assert_eq!(f, FrameSpec::tcp(ip("10.0.2.1"), 80, ip("198.83.100.7"), 40000, 0x12, 9, 2).build());
    }

    #[test]
    fn servers_move_into_the_network_in_order_and_keep_their_address() {
        let mut m = ServerMap::new(0x0a00_0200, 24).unwrap();
        let mut f = FrameSpec::tcp(ip("198.51.100.7"), 40000, ip("192.168.9.9"), 443, 0x02, 1, 0).build();
        m.apply(&mut f, false);
        assert_eq!(f, FrameSpec::tcp(ip("198.51.100.7"), 40000, ip("10.0.2.1"), 443, 0x02, 1, 0).build());
        let mut f = FrameSpec::tcp(ip("192.168.9.9"), 443, ip("198.51.100.7"), 40000, 0x12, 1, 2).build();
        m.apply(&mut f, true);
        assert_eq!(f, FrameSpec::tcp(ip("10.0.2.1"), 443, ip("198.51.100.7"), 40000, 0x12, 1, 2).build());
        let mut f = FrameSpec::udp(ip("198.51.100.7"), 5, ip("192.168.9.10"), 53, b"q").build();
        m.apply(&mut f, false);
        assert_eq!(f, FrameSpec::udp(ip("198.51.100.7"), 5, ip("10.0.2.2"), 53, b"q").build());
        // Already in the network: unchanged.
        let g = FrameSpec::udp(ip("198.51.100.7"), 5, ip("10.0.2.200"), 53, b"q").build();
        let mut f = g.clone();
        m.apply(&mut f, false);
        assert_eq!(f, g);
        assert!(ServerMap::new(0x0a00_0200, 31).is_err());
    }

    #[test]
    fn loop_zero_and_frames_without_ip_are_left_alone() {
        let f0 = FrameSpec::tcp(ip("198.51.100.7"), 40000, ip("10.0.2.1"), 80, 0x02, 1, 0).build();
        let mut f = f0.clone();
        assert!(unique_ip(&mut f, true, 0));
        assert_eq!(f, f0);
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!unique_ip(&mut arp, true, 3));
        // IPv4 has room for IPV4_LAPS moves: the next loop is loop 0's flows again.
        let mut f = f0.clone();
        assert!(unique_ip(&mut f, true, IPV4_LAPS as u32));
        assert_eq!(f, f0);
        let (mut a, mut b) = (f0.clone(), f0.clone());
        assert!(unique_ip(&mut a, true, 5) && unique_ip(&mut b, true, IPV4_LAPS as u32 + 5));
        assert_eq!(a, b);
        assert_ne!(a, f0);
    }
}

/// Frames from a capture or the wire are hostile: every prefix of real frames and
/// random bytes go through the rewrites and the matcher without a panic, and a
/// rewrite never changes a frame's length.
#[cfg(test)]
mod hostile {
    use super::*;
    use crate::replay::order::Tracker;
    use crate::replay::sides::{Rule, Sides};
    use crate::traffic::Rng;
    use holdfast_pipeline::wire::build::{FrameSpec, L4};

    #[test]
    fn truncated_and_random_frames_never_panic() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let real = [
            FrameSpec::tcp(ip("198.51.100.7"), 40000, ip("10.0.2.1"), 80, 0x02, 1, 0).build(),
            FrameSpec::udp(ip("198.51.100.7"), 5, ip("10.0.2.1"), 53, b"q").build(),
            FrameSpec::new(
                ip("2001:db8::7"),
                ip("2001:db8:1::1"),
                L4::Tcp { sport: 1, dport: 80, seq: 5, ack: 0, flags: 2, window: 100, options: vec![], payload: vec![1] },
            )
            .build(),
        ];
        let mut rng = Rng::new(5);
        let mut frames: Vec<Vec<u8>> = real.iter().flat_map(|f| (0..=f.len()).map(|n| f[..n].to_vec())).collect();
        for _ in 0..2_000 {
            let n = rng.range(0, 120) as usize;
            let mut f: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            // Often an IP EtherType, so that the parsers get past the first check.
            if n > 14 && rng.chance(0.7) {
                f[12..14].copy_from_slice(if rng.chance(0.5) { &[0x08, 0x00] } else { &[0x86, 0xdd] });
                if rng.chance(0.5) {
                    f[14] = if f[12] == 0x08 { 0x45 } else { 0x60 };
                }
            }
            frames.push(f);
        }
        let t = Tracker::new(true, 1, 1, 16);
        let mut sides = Sides::new(Rule::Auto(Default::default()));
        let mut servers = ServerMap::new(0x0a00_0200, 24).unwrap();
        for f in &frames {
            let mut g = f.clone();
            unique_ip(&mut g, true, 3);
            unique_ip(&mut g, false, 7);
            servers.apply(&mut g, true);
            servers.apply(&mut g, false);
            assert_eq!(g.len(), f.len());
            let _ = t.match_key(0, &g);
            let _ = t.flow_of(&g);
            let _ = sides.side(&g, None);
        }
    }
}
