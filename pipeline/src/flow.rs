//! Flow keys in canonical order, so that both directions of a connection find the same
//! entry, and the seeded symmetric hashes that pick a table bucket and an owning worker.

use core::hash::Hasher;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Canonical 5-tuple plus VLAN.
///
/// The endpoint with the lower (address, port) is `lo` (index 0). ICMP query flows order
/// by address only and put `[identifier, request type]` in `port`, so a request and its
/// reply (which has another type) share one key. IPv4 addresses sit in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub addr: [u128; 2],
    pub port: [u16; 2],
    pub proto: u8,
    pub v6: bool,
    /// Outer VLAN id in bits 0..12, inner (QinQ) id in bits 12..24; 0 when untagged.
    pub vlan: u32,
}

/// Which way a packet travels relative to the canonical key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The packet's source is the canonical `lo` endpoint.
    FromLo,
    FromHi,
}

impl FlowKey {
    /// Builds the canonical key of a packet from `src` to `dst` and says which side sent it.
    pub fn new(src: u128, sport: u16, dst: u128, dport: u16, proto: u8, v6: bool, vlan: u32) -> (FlowKey, Side) {
        if (src, sport) <= (dst, dport) {
            (FlowKey { addr: [src, dst], port: [sport, dport], proto, v6, vlan }, Side::FromLo)
        } else {
            (FlowKey { addr: [dst, src], port: [dport, sport], proto, v6, vlan }, Side::FromHi)
        }
    }

    /// [`FlowKey::new`] for IPv4, without a branch ([`order_v4`]).
    #[inline]
    pub fn new_v4(src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> (FlowKey, Side) {
        let (lo, hi, swap) = order_v4(src, sport, dst, dport);
        let key = FlowKey { addr: [u128::from((lo >> 16) as u32), u128::from((hi >> 16) as u32)], port: [lo as u16, hi as u16], proto, v6: false, vlan: 0 };
        (key, if swap { Side::FromHi } else { Side::FromLo })
    }

    /// The key of an ICMP query flow (echo, timestamp): ordered by address only, with
    /// `[identifier, request type | requester-is-hi << 8]` as ports. A request and its
    /// reply share the key; a request in the other direction with the same identifier
    /// is another flow, as in Linux, whose ICMP tuples carry the type.
    #[allow(clippy::too_many_arguments)]
    pub fn icmp_query(src: u128, dst: u128, ident: u16, request_type: u8, is_request: bool, proto: u8, v6: bool, vlan: u32) -> (FlowKey, Side) {
        let (key_addr, side) = if src <= dst { ([src, dst], Side::FromLo) } else { ([dst, src], Side::FromHi) };
        let requester_is_hi = match (side, is_request) {
            (Side::FromHi, true) | (Side::FromLo, false) => 1u16,
            _ => 0,
        };
        let port = [ident, u16::from(request_type) | requester_is_hi << 8];
        (FlowKey { addr: key_addr, port, proto, v6, vlan }, side)
    }

    /// The source endpoint of a packet that travelled from `side`.
    pub fn src(&self, side: Side) -> (IpAddr, u16) {
        let i = side as usize;
        (self.ip(i), self.port[i])
    }

    /// The destination endpoint of a packet that travelled from `side`.
    pub fn dst(&self, side: Side) -> (IpAddr, u16) {
        let i = 1 - side as usize;
        (self.ip(i), self.port[i])
    }

    pub fn ip(&self, i: usize) -> IpAddr {
        to_ip(self.addr[i], self.v6)
    }

    fn addr_words(&self) -> (u64, u64, u64, u64) {
        let [a, b] = self.addr;
        ((a >> 64) as u64, a as u64, (b >> 64) as u64, b as u64)
    }
}

/// The canonical order of two IPv4 endpoints, each as `address << 16 | port`: the lower
/// first, and whether the source was the higher (`FromHi`). Without a branch: which
/// endpoint sorts first is a coin toss per packet (both directions of a flow), so a
/// branch on it mispredicts half the time on the packet path; masks pick the order.
#[inline(always)]
pub fn order_v4(src: u32, sport: u16, dst: u32, dport: u16) -> (u64, u64, bool) {
    let (s, d) = (u64::from(src) << 16 | u64::from(sport), u64::from(dst) << 16 | u64::from(dport));
    let swap = s > d;
    let m = u64::from(swap).wrapping_neg();
    (s ^ ((s ^ d) & m), d ^ ((s ^ d) & m), swap)
}

/// An address as stored in keys: IPv4 in the low 32 bits.
pub fn to_ip(a: u128, v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(Ipv6Addr::from(a)) } else { IpAddr::V4(Ipv4Addr::from(a as u32)) }
}

pub fn from_ip(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

/// Seeded hashes of flow keys. Symmetric because keys are canonical. The seed is chosen
/// per process by the caller (from the OS's randomness), so an attacker cannot aim
/// flows at one bucket or one worker.
///
/// Every constant the hash mixes with comes from the seed, not only its starting
/// value. foldhash folds each pair of words as `(a ^ acc) * (b ^ k)`; with
/// `FixedState` the multiplier constant `k` is foldhash's public `0xc0ac29b7c97c50dd`,
/// so a key whose second word of a pair equals it multiplies by zero and forgets the
/// seed folded in before. An IPv6 address half is such a word, and its owner picks it:
/// spoofed sources with that interface identifier got one seed-independent owner per
/// server and ports (a flood aimed at one worker), and with that upper half one
/// seed-independent bucket hash (a flood aimed at one bucket pair and the stash).
/// [`foldhash::SharedSeed::from_u64`] makes the constants secret too (and never 0).
#[derive(Debug, Clone)]
pub struct FlowHasher {
    seed: u64,
    shared: foldhash::SharedSeed,
}

impl FlowHasher {
    pub fn new(seed: u64) -> Self {
        FlowHasher { seed, shared: foldhash::SharedSeed::from_u64(seed) }
    }

    /// A foldhash hasher with this seed and its secret constants, for other keys than
    /// flows (the replay's frame match key).
    #[inline(always)]
    pub fn build_hasher(&self) -> foldhash::fast::FoldHasher<'_> {
        foldhash::fast::FoldHasher::with_seed(self.seed, &self.shared)
    }

    /// Hash of the whole key: picks the table bucket.
    #[inline]
    pub fn hash(&self, k: &FlowKey) -> u64 {
        let (a0, a1, b0, b1) = k.addr_words();
        self.bucket_hash(k.v6.then_some([a0, b0]), [a1, b1], tail(k.port, k.proto, k.vlan))
    }

    /// [`FlowHasher::hash`] of an IPv4 key given by its parts (`lo`, `hi` the canonical
    /// endpoints' addresses, `port` theirs, `vlan` as in [`FlowKey::vlan`]), computed
    /// from registers. The parser's fast path hashes this way: reading back the key it
    /// has just stored loads bytes written by several narrower stores, which the CPU
    /// cannot forward from its store buffer — on the dev VM that stall was 16 % of the
    /// mixed burst's time. A test checks both give the same hash.
    #[inline(always)]
    pub fn hash_v4(&self, lo: u32, hi: u32, port: [u16; 2], proto: u8, vlan: u32) -> u64 {
        self.bucket_hash(None, [u64::from(lo), u64::from(hi)], tail(port, proto, vlan))
    }

    /// [`FlowHasher::hash`] of an IPv6 key given by its parts, as
    /// [`FlowHasher::hash_v4`] for IPv4 (a test checks both against the key's hash).
    #[inline(always)]
    pub fn hash_v6(&self, addr: [u128; 2], port: [u16; 2], proto: u8, vlan: u32) -> u64 {
        let [a, b] = addr;
        self.bucket_hash(Some([(a >> 64) as u64, (b >> 64) as u64]), [a as u64, b as u64], tail(port, proto, vlan))
    }

    /// The bucket hash's words in order, the one definition [`FlowHasher::hash`],
    /// `hash_v4` and `hash_v6` share: the addresses' high halves (IPv6 only), their low
    /// halves, then ports, protocol and VLAN.
    #[inline(always)]
    fn bucket_hash(&self, high: Option<[u64; 2]>, low: [u64; 2], tail: u64) -> u64 {
        let mut h = self.build_hasher();
        if let Some([a0, b0]) = high {
            h.write_u64(a0);
            h.write_u64(b0);
        }
        h.write_u64(low[0]);
        h.write_u64(low[1]);
        h.write_u64(tail);
        h.finish()
    }

    /// Hash of the whole canonical key — addresses, ports, protocol, VLAN: picks the
    /// owning worker, so that the connections between one client and one server (or
    /// behind one NAT address) spread over the workers. The key is canonical, so both
    /// directions hash alike; an ICMP error's key is the quoted flow's, so it reaches
    /// that flow's owner. IP fragments after the first carry no ports: they are routed
    /// by the fragment router (`steer.rs`) to the worker their first fragment went to. See
    /// ARCHITECTURE.md, "Flow ownership".
    #[inline]
    pub fn owner_hash(&self, k: &FlowKey) -> u64 {
        self.addresses_and(k, 0, tail(k.port, k.proto, k.vlan))
    }

    /// Hash of the addresses, protocol and VLAN only (what NIC RSS computes for IP
    /// fragments): picks the worker that routes a datagram's fragments.
    #[inline]
    pub fn pair_hash(&self, k: &FlowKey) -> u64 {
        self.addresses_and(k, 0, u64::from(k.proto) << 32 | u64::from(k.vlan))
    }

    /// Hash of a datagram's identity (addresses, IP ID, protocol, VLAN): the key of a
    /// fragment's route; never 0.
    #[inline]
    pub fn datagram_hash(&self, k: &FlowKey, ident: u32) -> u64 {
        self.addresses_and(k, u64::from(ident), u64::from(k.proto) << 32 | u64::from(k.vlan)) | 1
    }

    /// The hash of both addresses (both families in the same number of words), `mix`
    /// folded into the low address words, then `tail`: the worker-choosing hashes.
    #[inline]
    fn addresses_and(&self, k: &FlowKey, mix: u64, tail: u64) -> u64 {
        let mut h = self.build_hasher();
        let (a0, a1, b0, b1) = k.addr_words();
        h.write_u64(a0 ^ b0.rotate_left(32));
        h.write_u64(a1 ^ mix);
        h.write_u64(b1);
        h.write_u64(tail);
        h.finish()
    }
}

/// Ports, protocol and VLAN (24 bits) of a key in one word: the last word the bucket
/// and owner hashes take.
#[inline(always)]
fn tail(port: [u16; 2], proto: u8, vlan: u32) -> u64 {
    u64::from(port[0]) << 48 | u64::from(port[1]) << 32 | u64::from(proto) << 24 | u64::from(vlan)
}

/// The worker among `workers` that owns a flow whose owner hash is `h` (Lemire's
/// multiply-shift range reduction: no division, uniform for a uniform hash).
#[inline]
pub fn owner_of(h: u64, workers: usize) -> usize {
    ((u128::from(h >> 32) * workers as u128) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u128 = 0x0a00_0101;
    const B: u128 = 0x0a00_0201;

    proptest::proptest! {
        /// The branchless IPv4 key is `FlowKey::new`'s, ties (same address, same
        /// port) and near ties included.
        #[test]
        fn the_ipv4_key_without_a_branch_is_the_general_one(a in proptest::prelude::any::<u32>(), b in proptest::prelude::any::<u32>(), p in proptest::prelude::any::<u16>(), q in proptest::prelude::any::<u16>(), pick in 0u8..4, proto in proptest::prelude::any::<u8>()) {
            // Half the cases share the address or the port.
            let b = if pick & 1 == 0 { a } else { b };
            let q = if pick & 2 == 0 { p.wrapping_add(u16::from(pick)) } else { q };
            for (s, sp, d, dp) in [(a, p, b, q), (b, q, a, p)] {
                proptest::prop_assert_eq!(FlowKey::new_v4(s, sp, d, dp, proto), FlowKey::new(u128::from(s), sp, u128::from(d), dp, proto, false, 0));
            }
        }

        /// The parser's register-only IPv4 hash is the key's hash: the table finds by
        /// `hash` what the fast path placed by `hash_v4`, and the other way round.
        #[test]
        fn the_ipv4_hash_from_parts_is_the_keys(a in proptest::prelude::any::<u32>(), b in proptest::prelude::any::<u32>(), p in proptest::prelude::any::<u16>(), q in proptest::prelude::any::<u16>(), proto in proptest::prelude::any::<u8>(), vlan in 0u32..1 << 24, seed in proptest::prelude::any::<u64>()) {
            let h = FlowHasher::new(seed);
            let (mut k, _) = FlowKey::new_v4(a, p, b, q, proto);
            k.vlan = vlan;
            proptest::prop_assert_eq!(h.hash_v4(k.addr[0] as u32, k.addr[1] as u32, k.port, proto, vlan), h.hash(&k));
        }

        #[test]
        fn the_ipv6_hash_from_parts_is_the_keys(a in proptest::prelude::any::<u128>(), b in proptest::prelude::any::<u128>(), p in proptest::prelude::any::<u16>(), q in proptest::prelude::any::<u16>(), proto in proptest::prelude::any::<u8>(), vlan in 0u32..1 << 24, seed in proptest::prelude::any::<u64>()) {
            let h = FlowHasher::new(seed);
            let (k, _) = FlowKey::new(a, p, b, q, proto, true, vlan);
            proptest::prop_assert_eq!(h.hash_v6(k.addr, k.port, proto, vlan), h.hash(&k));
        }
    }

    #[test]
    fn both_directions_share_one_key() {
        let (k1, s1) = FlowKey::new(A, 40000, B, 80, 6, false, 0);
        let (k2, s2) = FlowKey::new(B, 80, A, 40000, 6, false, 0);
        assert_eq!(k1, k2);
        assert_eq!((s1, s2), (Side::FromLo, Side::FromHi));
        assert_eq!(k1.src(s1), (IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 40000));
        assert_eq!(k1.dst(s1), (IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 80));
        let h = FlowHasher::new(7);
        assert_eq!(h.hash(&k1), h.hash(&k2));
    }

    #[test]
    fn icmp_request_and_reply_share_one_key() {
        let (k1, _) = FlowKey::icmp_query(A, B, 99, 8, true, 1, false, 0);
        let (k2, s2) = FlowKey::icmp_query(B, A, 99, 8, false, 1, false, 0);
        assert_eq!(k1, k2);
        assert_eq!(s2, Side::FromHi);
        // B pinging A with the same identifier is a different flow.
        let (k3, _) = FlowKey::icmp_query(B, A, 99, 8, true, 1, false, 0);
        assert_ne!(k1, k3);
    }

    /// An attacker who cannot learn the seed computes hashes under a seed of its own
    /// (`model`) and keeps the keys that land where it aims: the first 1/1024 of any
    /// table's buckets (a bucket is `(h as u32) * n >> 32`), worker 0 of 4, one
    /// datagram route. Under the real seed those keys must spread as any keys do. The
    /// keys are the shapes that once cancelled the seed (see [`FlowHasher`]): IPv6
    /// sources whose upper half, or whose interface identifier, is foldhash's fixed
    /// multiplier; IPv4 keys ride along as a control. With `FixedState` the bucket
    /// and owner counts below were 64 of 64.
    #[test]
    fn keys_chosen_under_another_seed_do_not_keep_their_bucket_or_worker() {
        const FOLDHASH_FIXED_MULTIPLIER: u128 = 0xc0ac_29b7_c97c_50dd;
        let server: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0001;
        let (model, real) = (FlowHasher::new(1), FlowHasher::new(0x0123_4567_89ab_cdef));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Sources above the server (the key's second address) with the multiplier as
        // their upper half; sources below it with the multiplier as their identifier.
        let mut above = || (FOLDHASH_FIXED_MULTIPLIER << 64 | u128::from(next()), next() as u16);
        let mut keys_above = Vec::new();
        while keys_above.len() < 64 {
            let (src, port) = above();
            let (k, _) = FlowKey::new(src, port, server, 80, 6, true, 0);
            if (model.hash(&k) as u32) < 1 << 22 {
                keys_above.push(k);
            }
        }
        let in_first_buckets = keys_above.iter().filter(|k| (real.hash(k) as u32) < 1 << 22).count();
        assert!(in_first_buckets < 8, "{in_first_buckets} of 64 keys aimed at the first buckets stay there");

        let mut below = Vec::new();
        for i in 0u128.. {
            if below.len() == 64 {
                break;
            }
            let src = (0x2000u128 << 112) | (i << 64) | FOLDHASH_FIXED_MULTIPLIER;
            let (k, _) = FlowKey::new(src, 1024 + i as u16, server, 80, 6, true, 0);
            if owner_of(model.owner_hash(&k), 4) == 0 {
                below.push(k);
            }
        }
        let on_worker_0 = below.iter().filter(|k| owner_of(real.owner_hash(k), 4) == 0).count();
        assert!(on_worker_0 < 40, "{on_worker_0} of 64 keys aimed at worker 0 stay there");
        // The fragment router's hashes ignore ports: sources that differ only in the
        // cancelled upper half must still differ (the IP ID is folded into the
        // identifier's word, so the datagram's sources carry the multiplier ^ ID).
        let pairs: std::collections::HashSet<u64> = below.iter().map(|k| real.pair_hash(k)).collect();
        assert!(pairs.len() > 60, "{} distinct pair hashes for 64 sources", pairs.len());
        let routes: std::collections::HashSet<u64> = (0u128..64)
            .map(|i| FlowKey::new((0x2000u128 << 112) | (i << 64) | (FOLDHASH_FIXED_MULTIPLIER ^ 7), 0, server, 0, 17, true, 0).0)
            .map(|k| real.datagram_hash(&k, 7))
            .collect();
        assert!(routes.len() > 60, "{} distinct datagram routes for 64 sources", routes.len());

        // IPv4 keys aimed the same way (no word of theirs can cancel anything).
        let mut v4 = Vec::new();
        while v4.len() < 64 {
            let (k, _) = FlowKey::new(u128::from(next() as u32), next() as u16, 0x0a00_0001, 80, 6, false, 0);
            if (model.hash(&k) as u32) < 1 << 22 {
                v4.push(k);
            }
        }
        assert!(v4.iter().filter(|k| (real.hash(k) as u32) < 1 << 22).count() < 8);
    }

    #[test]
    fn vlan_and_seed_change_the_hash() {
        let (k, _) = FlowKey::new(A, 1, B, 2, 17, false, 0);
        let tagged = FlowKey { vlan: 10, ..k };
        let h = FlowHasher::new(1);
        assert_ne!(h.hash(&k), h.hash(&tagged));
        assert_ne!(h.hash(&k), FlowHasher::new(2).hash(&k));
    }

    #[test]
    fn the_owner_spreads_one_client_and_one_server_by_ports_and_the_pair_ignores_them() {
        let h = FlowHasher::new(3);
        let (k1, _) = FlowKey::new(A, 1, B, 2, 6, false, 0);
        let (k2, _) = FlowKey::new(A, 1000, B, 2000, 6, false, 0);
        assert_eq!(h.pair_hash(&k1), h.pair_hash(&k2));
        let (r1, _) = FlowKey::new(B, 2, A, 1, 6, false, 0);
        assert_eq!(h.owner_hash(&k1), h.owner_hash(&r1), "both directions");
        // 4000 connections between one client and one server: every worker gets its share.
        let mut per_worker = [0u32; 4];
        for p in 0..4000u16 {
            let (k, _) = FlowKey::new(A, 30_000 + p, B, 80, 6, false, 0);
            per_worker[owner_of(h.owner_hash(&k), 4)] += 1;
        }
        assert!(per_worker.iter().all(|&n| n > 800), "{per_worker:?}");
        assert_ne!(h.datagram_hash(&k1, 7), h.datagram_hash(&k1, 8));
        assert_eq!(h.datagram_hash(&k1, 7), h.datagram_hash(&k2, 7), "ports are not part of a datagram's identity");
    }
}
