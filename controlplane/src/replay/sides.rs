//! Which interface a captured frame goes out on in a live replay: the client side
//! (`--intf1`, side 0) or the server side (`--intf2`, side 1).
//!
//! In order of precedence: `--side-map FILE` (lines `PREFIX client|server`, longest
//! prefix wins, by the frame's source address); the configuration's inside networks
//! when `--config` is given (inside is the server side: the same choice `replay
//! --offline` makes for zones, so that verdicts compare); otherwise learned per host
//! as tcpprep's `--auto` does: a TCP SYN's sender is a client and its receiver a server,
//! a SYN-ACK's the reverse, the end with a well-known port (< 1024) against one without
//! is the server, and otherwise whoever speaks first is the client. A host keeps the
//! side it was first given (at most `HOSTS_KEPT` hosts; past that, each frame is
//! decided on its own).

use std::collections::HashMap;

use holdfast_pipeline::Zone;
use holdfast_pipeline::parse::{Frame, L4, parse};
use holdfast_pipeline::policy::Cidr;

/// Hosts whose side is remembered.
const HOSTS_KEPT: usize = 4 << 20;

pub enum Rule {
    Map(Vec<(Cidr, usize)>),
    /// The config's inside networks (`--config`).
    Inside(Vec<Cidr>),
    Auto(HashMap<u128, usize>),
}

pub struct Sides {
    rule: Rule,
    /// Frames decided on their own because the host map was full.
    pub unlearned: u64,
}

/// A side map's size at most, in bytes and in prefixes (each frame looks through them).
pub const MAX_MAP_BYTES: u64 = 16 << 20;
pub const MAX_MAP_ENTRIES: usize = 65_536;

/// Parses a side map: `PREFIX client|server` per line, `#` comments.
pub fn parse_map(text: &str, file: &str) -> Result<Vec<(Cidr, usize)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if out.len() == MAX_MAP_ENTRIES {
            return Err(format!("{file}:{}: more than {MAX_MAP_ENTRIES} prefixes; a side map may have at most that", n + 1));
        }
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(p), Some(s), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("{file}:{}: expected `PREFIX client|server`, found {line:?}", n + 1));
        };
        let cidr = crate::config::values::parse_cidr(p).map_err(|e| format!("{file}:{}: {e}", n + 1))?;
        let side = match s {
            "client" | "1" => 0,
            "server" | "2" => 1,
            _ => return Err(format!("{file}:{}: side {s:?} is neither client nor server", n + 1)),
        };
        out.push((cidr, side));
    }
    out.sort_by_key(|(c, _)| std::cmp::Reverse(c.len));
    Ok(out)
}

impl Sides {
    pub fn new(rule: Rule) -> Sides {
        Sides { rule, unlearned: 0 }
    }

    pub fn describe(&self) -> &'static str {
        match self.rule {
            Rule::Map(_) => "side map",
            Rule::Inside(_) => "the config's inside networks",
            Rule::Auto(_) => "learned per host (tcpprep --auto)",
        }
    }

    /// The side of a frame; `outgoing` is a Linux cooked capture's direction.
    pub fn side(&mut self, frame: &[u8], outgoing: Option<bool>) -> usize {
        let m = match parse(frame) {
            Ok(Frame::Ip(m)) => m,
            // No source address (ARP, other): the client side, as `replay --offline`
            // puts them outside; a cooked capture's own packets inside.
            _ => return usize::from(outgoing == Some(true)),
        };
        let (src, v6) = (m.src_addr(), m.key.v6);
        match &mut self.rule {
            Rule::Map(map) => map.iter().find(|(c, _)| c.contains(src, v6)).map_or(0, |(_, s)| *s),
            Rule::Inside(inside) => usize::from(super::capture_zone(inside, Some((src, v6)), outgoing) == Zone::Inside),
            Rule::Auto(hosts) => {
                let dst = m.dst_addr();
                let tag = |a: u128| a ^ (u128::from(v6) << 127);
                if let Some(&s) = hosts.get(&tag(src)) {
                    return s;
                }
                if let Some(&d) = hosts.get(&tag(dst)) {
                    let s = 1 - d;
                    if hosts.len() < HOSTS_KEPT {
                        hosts.insert(tag(src), s);
                    }
                    return s;
                }
                let (sp, dp) = (m.src_port(), m.dst_port());
                let src_is_server = match m.l4 {
                    L4::Tcp(t) if t.flags & 0x12 == 0x02 => false,
                    L4::Tcp(t) if t.flags & 0x12 == 0x12 => true,
                    L4::Tcp(_) | L4::Udp if sp < 1024 && dp >= 1024 => true,
                    L4::IcmpError { .. } => true,
                    _ => false,
                };
                let s = usize::from(src_is_server);
                if hosts.len() + 2 <= HOSTS_KEPT {
                    hosts.insert(tag(src), s);
                    hosts.insert(tag(dst), 1 - s);
                } else {
                    self.unlearned += 1;
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_pipeline::wire::build::FrameSpec;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn auto_learns_hosts_from_syns_and_keeps_them() {
        let mut s = Sides::new(Rule::Auto(HashMap::new()));
        // A mid-stream reply first: the well-known port is the server's.
        assert_eq!(s.side(&FrameSpec::tcp(ip("10.0.2.1"), 80, ip("198.51.100.1"), 40000, 0x10, 1, 1).build(), None), 1);
        assert_eq!(s.side(&FrameSpec::tcp(ip("198.51.100.1"), 40000, ip("10.0.2.1"), 80, 0x10, 1, 1).build(), None), 0);
        // A SYN to a high port: its sender is the client.
        assert_eq!(s.side(&FrameSpec::tcp(ip("198.51.100.9"), 1000, ip("10.0.2.9"), 8080, 0x02, 1, 0).build(), None), 0);
        assert_eq!(s.side(&FrameSpec::tcp(ip("10.0.2.9"), 8080, ip("198.51.100.9"), 1000, 0x12, 1, 2).build(), None), 1);
        // A known server talking to a new host: that host is a client.
        assert_eq!(s.side(&FrameSpec::udp(ip("10.0.2.1"), 5000, ip("192.0.2.4"), 6000, b"x").build(), None), 1);
        assert_eq!(s.side(&FrameSpec::udp(ip("192.0.2.4"), 6000, ip("10.0.2.1"), 5000, b"x").build(), None), 0);
    }

    #[test]
    fn a_side_map_takes_the_longest_prefix_and_names_bad_lines() {
        let map = parse_map("# servers\n10.0.0.0/8 client\n10.0.2.0/24 server\n", "m").unwrap();
        let mut s = Sides::new(Rule::Map(map));
        assert_eq!(s.side(&FrameSpec::udp(ip("10.0.2.3"), 1, ip("10.9.0.1"), 2, b"").build(), None), 1);
        assert_eq!(s.side(&FrameSpec::udp(ip("10.9.0.1"), 2, ip("10.0.2.3"), 1, b"").build(), None), 0);
        assert_eq!(parse_map("10.0.0.0/8 middle\n", "m").unwrap_err(), "m:1: side \"middle\" is neither client nor server");
        assert!(parse_map("\n\n10.0.0.0/33 client\n", "m").unwrap_err().starts_with("m:3: "));
        let long = "10.0.0.0/8 client\n".repeat(MAX_MAP_ENTRIES + 1);
        assert!(parse_map(&long, "m").unwrap_err().contains("more than 65536 prefixes"));
    }
}
