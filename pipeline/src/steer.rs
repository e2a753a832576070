//! Steering: which worker owns a frame, decided before the owner parses it fully.
//! Used by the offline replay's dispatcher and by cross-core handoff.
//!
//! A flow is owned by the hash of its whole key (ports included: the connections of
//! one client to one server spread over the workers). IP fragments after the first
//! carry no ports, so every fragment of a datagram first goes to one worker chosen by
//! the addresses ([`FragRouter`], as NIC RSS hashes fragments): it learns the owner
//! from the first fragment and routes the rest there, holding (bounded, for the
//! fragment timeout) those that arrive before the first.

use std::collections::VecDeque;

use crate::flow::{FlowHasher, owner_of};
use crate::parse::{Frame, L4, parse};

/// What a dispatcher needs to know about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    /// Owner hash of the flow the frame belongs to (the quoted flow for an ICMP error);
    /// 0 for frames that belong to no flow (ARP, malformed), which all go to worker 0,
    /// and for later fragments (routed by their datagram).
    pub owner_hash: u64,
    /// Source address and family of IP frames.
    pub src: Option<(u128, bool)>,
    /// The frame is an IP fragment (not an atomic one): route it by its datagram.
    pub frag: Option<FragSteer>,
}

/// A fragment's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSteer {
    /// The datagram's identity (addresses, IP ID, protocol, VLAN), never 0.
    pub datagram: u64,
    /// The first fragment (offset 0): it carries the ports and names the owner.
    pub first: bool,
    /// Which worker routes this datagram's fragments (`owner_of(pair, workers)`).
    pub pair: u64,
}

pub fn steer(frame: &[u8], hasher: &FlowHasher) -> Steering {
    match parse(frame) {
        Ok(Frame::Ip(m)) => {
            let frag = m.frag.filter(|f| f.offset != 0 || f.more).map(|f| FragSteer {
                datagram: hasher.datagram_hash(&m.key, f.ident),
                first: f.offset == 0,
                pair: hasher.pair_hash(&m.key),
            });
            let owner_hash = if matches!(m.l4, L4::LaterFragment) { 0 } else { hasher.owner_hash(&m.key) };
            // For an ICMP error the key is already the quoted flow's.
            Steering { owner_hash, src: Some((m.src_addr(), m.key.v6)), frag }
        }
        _ => Steering { owner_hash: 0, src: None, frag: None },
    }
}

/// Whether `frame` may be an IP fragment, from its headers' fixed fields only (up to
/// two VLAN tags; IPv4 flags and offset, or an IPv6 extension header after the fixed
/// header — a fragment header may stand behind others): what a single worker checks
/// before it asks [`steer`]. It must name every frame `steer` routes as a fragment.
pub fn maybe_fragment(frame: &[u8]) -> bool {
    let Some((ty, ip)) = network_header(frame) else { return false };
    match ty {
        // MF, or a non-zero offset.
        0x0800 => frame.get(ip + 6..ip + 8).is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) & 0x3fff != 0),
        // A fragment header, or an extension header that may stand before one: the
        // full parse (`steer`) tells. Rare, so the cost of asking is too.
        0x86dd => frame.get(ip + 6).is_some_and(|&next| {
            use crate::parse::ipv6_extension::{AH, FRAGMENT, GENERIC};
            next == FRAGMENT || next == AH || GENERIC.contains(&next)
        }),
        _ => false,
    }
}

/// A frame's EtherType past up to two VLAN tags (those the parser takes:
/// [`crate::parse::VLAN_TPIDS`]), and where the network header starts; `None` when the frame ends before the EtherType. Fixed
/// fields only: nothing after the EtherType is checked.
#[inline]
pub fn network_header(frame: &[u8]) -> Option<(u16, usize)> {
    let mut at = 12;
    let mut ty = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    for _ in 0..crate::parse::MAX_VLAN_TAGS {
        if !crate::parse::VLAN_TPIDS.contains(&ty) {
            break;
        }
        at += 4;
        ty = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    }
    Some((ty, at + 2))
}

/// The worker among `workers` that judges a frame that is not a fragment.
pub fn owner(st: &Steering, workers: usize) -> usize {
    if st.owner_hash == 0 || workers <= 1 { 0 } else { owner_of(st.owner_hash, workers) }
}

/// A learned route: a datagram and the worker its first fragment went to.
#[derive(Debug, Clone, Copy, Default)]
struct Route {
    datagram: u64,
    owner: u32,
    /// Time after which it is forgotten.
    until: u64,
}

/// A fragment held until its first fragment names the owner.
#[derive(Debug, Clone, Copy)]
struct Held<T> {
    item: T,
    datagram: u64,
    until: u64,
}

/// What a [`FragRouter`] did, for counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Later fragments held for their first.
    pub held: u64,
    /// Held fragments released to their owner when the first came.
    pub released: u64,
    /// Held fragments whose first never came within the timeout (judged then: the
    /// owner drops them as `fragment_unmatched`), or let go at the end of a capture or
    /// with a worker's frames at a rebind.
    pub expired: u64,
    /// Held fragments let go early because the hold was full (judged then, unmatched).
    pub overflow: u64,
    /// Routes replaced while still live (the route table's size).
    pub routes_replaced: u64,
}

/// Routes the fragments of the datagrams one worker is chosen for: each to the worker
/// that judged the datagram's first fragment. Sans-IO: items (frame indexes, frame
/// descriptors) go in with the time (in the caller's unit: nanoseconds in the replay
/// and the workers), and come out through `out(item, worker)` in the order they are to
/// be judged. Bounded: a direct-mapped route table and a hold
/// queue, each of a size fixed at creation; nothing is allocated afterwards.
pub struct FragRouter<T> {
    routes: Box<[Route]>,
    /// Held fragments per datagram hash bucket (64 buckets per place in the hold): a
    /// first fragment looks through the hold only when a held fragment shares its
    /// bucket, so a hold kept full of orphans (by whoever sends later fragments
    /// without firsts) does not make every first fragment a walk of the whole hold:
    /// 1 in 64 walks at most.
    waiting: Box<[u16]>,
    held: VecDeque<Held<T>>,
    hold: usize,
    timeout: u64,
    pub stats: RouterStats,
}

impl<T: Copy> FragRouter<T> {
    /// A router remembering `routes` datagrams and holding `hold` early fragments, each
    /// for `timeout` (the engine's fragment timeout).
    pub fn new(routes: usize, hold: usize, timeout: u64) -> FragRouter<T> {
        // At most u16::MAX held: the per-bucket counts cannot overflow.
        let hold = hold.min(usize::from(u16::MAX));
        FragRouter {
            routes: vec![Route::default(); routes.max(1).next_power_of_two()].into_boxed_slice(),
            waiting: vec![0; (hold * 64).max(1).next_power_of_two()].into_boxed_slice(),
            hold,
            held: VecDeque::with_capacity(hold),
            timeout,
            stats: RouterStats::default(),
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn slot(&self, datagram: u64) -> usize {
        (datagram >> 17) as usize & (self.routes.len() - 1)
    }

    fn bucket(&self, datagram: u64) -> usize {
        (datagram >> 17) as usize & (self.waiting.len() - 1)
    }

    /// Routes `item`, a fragment steered as `f`, at `now` (absolute ticks): to the owner
    /// its first fragment named (a first fragment names `owner`, and releases what
    /// waited for it), or into the hold. `owner` is the flow's owner for a first
    /// fragment, and where a fragment let go of early goes otherwise.
    pub fn route(&mut self, item: T, f: &FragSteer, owner: usize, now: u64, mut out: impl FnMut(T, usize)) {
        self.expire(now, owner, &mut out);
        let s = self.slot(f.datagram);
        if f.first {
            let r = &mut self.routes[s];
            if r.datagram != 0 && r.datagram != f.datagram && r.until > now {
                self.stats.routes_replaced += 1;
            }
            *r = Route { datagram: f.datagram, owner: owner as u32, until: now.saturating_add(self.timeout) };
            out(item, owner);
            let b = self.bucket(f.datagram);
            if self.waiting[b] == 0 {
                return;
            }
            // What waited for it, in the order it came: one pass over the hold (a
            // removal at a time would move the rest each time: quadratic in the
            // hold's size for a datagram that filled it).
            let before = self.held.len();
            self.held.retain(|h| {
                let mine = h.datagram == f.datagram;
                if mine {
                    out(h.item, owner);
                }
                !mine
            });
            let released = before - self.held.len();
            self.waiting[b] -= released as u16;
            self.stats.released += released as u64;
            return;
        }
        let r = self.routes[s];
        if r.datagram == f.datagram && r.until > now {
            out(item, r.owner as usize);
            return;
        }
        if self.hold == 0 {
            out(item, owner);
            return;
        }
        if self.held.len() == self.hold
            && let Some(h) = self.pop()
        {
            self.stats.overflow += 1;
            out(h.item, owner);
        }
        self.stats.held += 1;
        let b = self.bucket(f.datagram);
        self.waiting[b] += 1;
        self.held.push_back(Held { item, datagram: f.datagram, until: now.saturating_add(self.timeout) });
    }

    /// Takes the oldest held fragment out of the hold.
    fn pop(&mut self) -> Option<Held<T>> {
        let h = self.held.pop_front()?;
        let b = self.bucket(h.datagram);
        self.waiting[b] -= 1;
        Some(h)
    }

    /// Lets go of held fragments whose time is up, to worker `fallback`: no first
    /// fragment came, so whoever judges them drops them as unmatched.
    pub fn expire(&mut self, now: u64, fallback: usize, mut out: impl FnMut(T, usize)) {
        while self.held.front().is_some_and(|h| h.until <= now) {
            let h = self.pop().expect("front checked");
            self.stats.expired += 1;
            out(h.item, fallback);
        }
    }

    /// Lets go of everything held (the end of a capture), to worker `fallback`.
    pub fn flush(&mut self, fallback: usize, out: impl FnMut(T, usize)) {
        self.expire(u64::MAX, fallback, out);
    }
}

impl RouterStats {
    /// Adds another router's counters into these.
    pub fn merge(&mut self, o: &RouterStats) {
        self.held += o.held;
        self.released += o.released;
        self.expired += o.expired;
        self.overflow += o.overflow;
        self.routes_replaced += o.routes_replaced;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::wire::build::FrameSpec;
    use crate::wire::tcp::flags::*;

    #[test]
    fn both_directions_and_icmp_errors_reach_the_owner_and_fragments_share_a_route() {
        let h = FlowHasher::new(11);
        let syn = FrameSpec::tcp(ip(CLIENT), CPORT, ip(SERVER), SPORT, SYN, 1, 0);
        let synack = FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT, SYN | ACK, 1, 2);
        let a = steer(&syn.build(), &h);
        assert_eq!(a.owner_hash, steer(&synack.build(), &h).owner_hash);
        assert_eq!(a.src.unwrap().0, 0xc633_6407);
        assert_eq!(a.frag, None);
        let big = FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 53, &[0; 3000]);
        let frags = big.fragments(1400);
        let first = steer(&frags[0], &h);
        let fs = first.frag.unwrap();
        assert!(fs.first && first.owner_hash != 0, "the first fragment carries the ports");
        assert_eq!(first.owner_hash, steer(&FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 53, b"x").build(), &h).owner_hash, "owned with its flow");
        for f in &frags[1..] {
            let s = steer(f, &h);
            let g = s.frag.unwrap();
            assert_eq!((g.datagram, g.pair, g.first, s.owner_hash), (fs.datagram, fs.pair, false, 0));
        }
        let q = synack.ip_packet();
        let err = FrameSpec::icmp(ip("203.0.113.1"), ip(SERVER), 3, 4, 0, &q[..28]).build();
        assert_eq!(steer(&err, &h).owner_hash, a.owner_hash);
        assert_eq!(steer(&[0u8; 10], &h), Steering { owner_hash: 0, src: None, frag: None });
    }

    #[test]
    fn a_fragment_is_told_from_fixed_fields() {
        let big = FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 53, &[0; 3000]);
        assert!(big.fragments(1400).iter().all(|f| maybe_fragment(f)));
        assert!(!maybe_fragment(&FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 53, b"x").build()));
        assert!(!maybe_fragment(&[0u8; 10]));
    }

    /// IPv6 fragments with `ext` (an extension header's next-header value) in front of
    /// the fragment header: its 8 bytes spliced in after the fixed header.
    fn v6_fragments_behind(ext: u8) -> Vec<Vec<u8>> {
        let big = FrameSpec::udp(ip("2001:db8::7"), 5, ip("2001:db8:2::1"), 53, &[0; 3000]);
        big.fragments(1400)
            .into_iter()
            .map(|mut f| {
                let fixed = 14 + 40;
                let next = f[14 + 6];
                f.splice(fixed..fixed, [next, 0, 1, 4, 0, 0, 0, 0]); // PadN over the rest
                f[14 + 6] = ext;
                let len = u16::from_be_bytes([f[18], f[19]]) + 8;
                f[18..20].copy_from_slice(&len.to_be_bytes());
                f
            })
            .collect()
    }

    /// A single worker asks `steer` only about frames `maybe_fragment` names, so every
    /// frame `steer` routes as a fragment must be named — or its later fragments, with
    /// one worker, would not wait for a first that comes last, as they do with two.
    #[test]
    fn every_fragment_steer_routes_is_named_from_fixed_fields() {
        let h = FlowHasher::new(11);
        let big = FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 53, &[0; 3000]);
        let mut shapes: Vec<(String, Vec<Vec<u8>>)> = vec![("IPv4".into(), big.fragments(1400))];
        for tags in [vec![0x8100u16], vec![0x88a8, 0x8100], vec![0x9100, 0x8100], vec![0x9100]] {
            let tagged = big
                .fragments(1400)
                .into_iter()
                .map(|f| {
                    let mut t = f[..12].to_vec();
                    for tpid in &tags {
                        t.extend_from_slice(&tpid.to_be_bytes());
                        t.extend_from_slice(&[0, 7]);
                    }
                    t.extend_from_slice(&f[12..]);
                    t
                })
                .collect();
            shapes.push((format!("IPv4 behind {tags:04x?}"), tagged));
        }
        for (ext, name) in [(0u8, "hop-by-hop"), (60, "destination options"), (43, "routing")] {
            shapes.push((format!("IPv6 behind {name}"), v6_fragments_behind(ext)));
        }
        for (what, frames) in &shapes {
            assert_eq!(frames.len(), 3, "{what}");
            for (i, f) in frames.iter().enumerate() {
                let st = steer(f, &h);
                assert!(st.frag.is_some_and(|s| s.first == (i == 0)), "{what}, fragment {i}: steer routes it as a fragment");
                assert!(maybe_fragment(f), "{what}, fragment {i}: a single worker must ask steer");
            }
        }
        // And so for any bytes near those shapes.
        let mut rng = xorshift(0x5eed);
        let mut routed = 0;
        for _ in 0..50_000 {
            let (_, frames) = &shapes[rng() as usize % shapes.len()];
            let mut f = frames[rng() as usize % frames.len()].clone();
            for _ in 0..1 + rng() % 3 {
                let at = rng() as usize % 80.min(f.len());
                f[at] = rng() as u8;
            }
            if steer(&f, &h).frag.is_some() {
                routed += 1;
                assert!(maybe_fragment(&f), "routed as a fragment, not named: {f:02x?}");
            }
        }
        assert!(routed > 10_000, "{routed}");
    }

    fn f(datagram: u64, first: bool) -> FragSteer {
        FragSteer { datagram, first, pair: 1 }
    }

    #[test]
    fn later_fragments_follow_the_first_even_when_they_come_before_it() {
        let mut r: FragRouter<u32> = FragRouter::new(64, 8, 100);
        let mut out = Vec::new();
        // Datagram 3: two later fragments, then the first (owner 2), then one more.
        r.route(1, &f(3, false), 0, 10, |i, w| out.push((i, w)));
        r.route(2, &f(3, false), 0, 11, |i, w| out.push((i, w)));
        assert!(out.is_empty() && r.held() == 2);
        r.route(3, &f(3, true), 2, 12, |i, w| out.push((i, w)));
        r.route(4, &f(3, false), 0, 13, |i, w| out.push((i, w)));
        assert_eq!(out, vec![(3, 2), (1, 2), (2, 2), (4, 2)], "the first, then what waited, in order, then the rest");
        assert_eq!((r.stats.held, r.stats.released), (2, 2));
    }

    /// The per-bucket counts a first fragment consults stay exact through holds,
    /// releases, overflows and expiry — a count too low would strand a fragment until
    /// its timeout — and every fragment comes out exactly once.
    #[test]
    fn a_first_fragment_finds_what_waits_for_it_without_walking_a_hold_of_orphans() {
        let mut rng = xorshift(0xf7a9);
        let mut r: FragRouter<u32> = FragRouter::new(16, 32, 1000);
        let mut out: Vec<(u32, usize)> = Vec::new();
        let mut now = 0;
        for i in 0..20_000u32 {
            now += rng() % 3;
            // 40 datagrams over 16 route slots and 2048 buckets (collisions in both),
            // later fragments 3 times as often.
            let d = ((1 + rng() % 40) * 1024 + rng() % 2) << 17;
            r.route(i, &f(d, rng().is_multiple_of(4)), (d >> 17) as usize, now, |i, w| out.push((i, w)));
            let mut want = vec![0u16; r.waiting.len()];
            for h in &r.held {
                want[r.bucket(h.datagram)] += 1;
            }
            assert_eq!(&want[..], &r.waiting[..], "after fragment {i}");
        }
        r.flush(0, |i, w| out.push((i, w)));
        let mut seen: Vec<u32> = out.iter().map(|o| o.0).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..20_000).collect::<Vec<_>>());
        assert!(r.stats.released > 1000 && r.stats.overflow > 100, "{:?}", r.stats);
    }

    #[test]
    fn the_hold_is_bounded_in_size_and_time() {
        let mut r: FragRouter<u32> = FragRouter::new(64, 2, 100);
        let mut out = Vec::new();
        for i in 0..3 {
            r.route(i, &f(10 + u64::from(i), false), 1, 0, |i, w| out.push((i, w)));
        }
        assert_eq!((out.clone(), r.stats.overflow, r.held()), (vec![(0, 1)], 1, 2), "the oldest let go when full");
        r.expire(99, 0, |i, w| out.push((i, w)));
        assert_eq!(r.held(), 2);
        r.expire(100, 0, |i, w| out.push((i, w)));
        assert_eq!((r.held(), r.stats.expired), (0, 2));
        // A route is forgotten after the timeout too: a late fragment is held again.
        r.route(7, &f(99, true), 1, 200, |_, _| {});
        r.route(8, &f(99, false), 0, 299, |i, w| out.push((i, w)));
        assert_eq!(out.last(), Some(&(8, 1)));
        r.route(9, &f(99, false), 0, 300, |_, _| {});
        assert_eq!(r.held(), 1);
    }
}
