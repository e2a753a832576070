//! Flows as a state-sync peer sees them (conntrackd's model: the original tuple, the
//! kernel's TCP state number, `IPS_*` status bits, seconds left, window scales) and
//! back: a standby's external cache committed into its tables on takeover
//! (docs/sync.md). Window state is not synced: an adopted TCP flow relearns its windows
//! from the next packet in each direction and is tracked liberally (Linux marks a
//! committed flow "be liberal" the same way).

use super::Engine;
use super::lifecycle::{NoRoom, admission_of};
use super::timers::abs_ticks;
use crate::conntrack::conn::{ConnAux, ConnStats, cflag, pflag};
use crate::conntrack::pressure::Admission;
use crate::conntrack::table::Table;
use crate::conntrack::tcp;
use crate::conntrack::timeouts::{Timeouts, TimerClass};
use crate::flow::{FlowKey, Side};
use crate::parse::proto;
use crate::snapshot::FlowRecord;
use crate::time::{Duration, Instant};

/// Linux `IPS_*` status bits a synced flow carries.
pub mod ips {
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
}

/// One flow as conntrackd's sync protocol carries it. Addresses are in the key's
/// form (IPv4 in the low 32 bits); `src`/`dst`/ports are the original direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncedFlow {
    pub v6: bool,
    pub src: u128,
    pub dst: u128,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP queries: type, code, identifier (ports unused).
    pub icmp: Option<(u8, u8, u16)>,
    /// Linux `TCP_CONNTRACK_*` (0 NONE .. 9 SYN_SENT2); 0 for other protocols.
    pub tcp_state: u8,
    /// `IPS_*` bits.
    pub status: u32,
    /// Seconds until the flow expires.
    pub timeout_s: u32,
    /// Window scale shift of the original and reply directions, when known.
    pub wscale: [Option<u8>; 2],
    /// The flow's VLAN ids as [`FlowKey::vlan`] has them (0: untagged). conntrackd's
    /// protocol carries a 16-bit conntrack zone in their place (docs/sync.md).
    pub vlan: u32,
}

/// Why a synced flow was not adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptError {
    /// No free slot (a table smaller than the peer's).
    TableFull,
    /// A TCP state number outside 0..=9, or ports on a protocol without them.
    Invalid,
    /// Its source is at `per_source_limit` here.
    OverSourceLimit,
    /// An IPv6 flow and no place in the IPv6 address pool (`conntrack.ipv6_share`).
    Ipv6PoolFull,
}

/// What committing a batch of synced flows made of them ([`Engine::adopt_all`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdoptTally {
    pub adopted: u64,
    /// Non-assured entries evicted to make room for them.
    pub evicted: u64,
    /// Refused: no room left but assured entries ([`AdoptError::TableFull`]).
    pub table_full: u64,
    /// Refused: [`AdoptError::Ipv6PoolFull`].
    pub ipv6_pool_full: u64,
    /// Refused: [`AdoptError::OverSourceLimit`].
    pub source_limit: u64,
    /// Refused: [`AdoptError::Invalid`].
    pub invalid: u64,
}

impl AdoptTally {
    pub fn refused(&self) -> u64 {
        self.table_full + self.ipv6_pool_full + self.source_limit + self.invalid
    }

    /// Adds another batch's tally.
    pub fn add(&mut self, o: &AdoptTally) {
        self.adopted += o.adopted;
        self.evicted += o.evicted;
        self.table_full += o.table_full;
        self.ipv6_pool_full += o.ipv6_pool_full;
        self.source_limit += o.source_limit;
        self.invalid += o.invalid;
    }
}

impl SyncedFlow {
    /// The state as `flows` names a tracked one (`ESTABLISHED`, `REPLIED`, …; `?` for a
    /// TCP state number that does not exist).
    pub fn state_name(&self) -> &'static str {
        if self.proto == proto::TCP {
            tcp::TcpState::ALL.get(usize::from(self.tcp_state)).map_or("?", |s| s.name())
        } else if self.status & ips::SEEN_REPLY != 0 {
            "REPLIED"
        } else {
            "UNREPLIED"
        }
    }

    /// The canonical key and the side the original direction came from.
    pub fn key(&self) -> (FlowKey, Side) {
        match (self.proto, self.icmp) {
            (proto::ICMP | proto::ICMPV6, Some((ty, _, id))) => FlowKey::icmp_query(self.src, self.dst, id, ty, true, self.proto, self.v6, self.vlan),
            _ => FlowKey::new(self.src, self.sport, self.dst, self.dport, self.proto, self.v6, self.vlan),
        }
    }
}

impl FlowRecord {
    /// This flow as a sync peer sees it, with the timeouts `t` of the engine it came
    /// from.
    pub fn synced(&self, t: &Timeouts) -> SyncedFlow {
        let c = &self.conn;
        let o = usize::from(c.has(cflag::ORIG_IS_HI));
        let k = &self.key;
        // An ICMP query key keeps [identifier, request type | requester-is-hi << 8].
        let icmp = c.icmp_type().map(|ty| (ty, 0u8, k.port[0]));
        let (sport, dport) = if icmp.is_some() { (0, 0) } else { (k.port[o], k.port[1 - o]) };
        let mut status = ips::CONFIRMED;
        if c.has(cflag::SEEN_REPLY) {
            status |= ips::SEEN_REPLY;
        }
        if c.has(cflag::ASSURED) {
            status |= ips::ASSURED;
        }
        let tcp_state = if k.proto == proto::TCP { tcp::state_of(c) as u8 } else { 0 };
        let left = t.ticks(c.timer_class()).saturating_sub(self.idle);
        let wscale = if k.proto == proto::TCP && c.pflags[0] & pflag::WINDOW_SCALE != 0 && c.pflags[1] & pflag::WINDOW_SCALE != 0 {
            [Some(c.scale(0)), Some(c.scale(1))]
        } else {
            [None, None]
        };
        SyncedFlow {
            v6: k.v6,
            src: k.addr[o],
            dst: k.addr[1 - o],
            proto: k.proto,
            sport,
            dport,
            icmp,
            tcp_state,
            status,
            timeout_s: Duration::from_ticks(left).as_nanos().div_ceil(1_000_000_000) as u32,
            wscale,
            vlan: k.vlan,
        }
    }
}

impl Engine {
    /// [`Engine::adopt`] for each of `flows`, counted by outcome.
    pub fn adopt_all(&mut self, flows: &[SyncedFlow], now: Instant) -> AdoptTally {
        let evictions = |e: &Engine| e.counters.evictions.iter().sum::<u64>();
        let before = evictions(self);
        let mut t = AdoptTally::default();
        for f in flows {
            match self.adopt(f, now) {
                Ok(()) => t.adopted += 1,
                Err(AdoptError::TableFull) => t.table_full += 1,
                Err(AdoptError::Ipv6PoolFull) => t.ipv6_pool_full += 1,
                Err(AdoptError::OverSourceLimit) => t.source_limit += 1,
                Err(AdoptError::Invalid) => t.invalid += 1,
            }
        }
        t.evicted = evictions(self) - before;
        t
    }

    /// Puts a synced flow into the table at `now` (a takeover): its state and status
    /// as synced, its timer at what the peer said is left (never longer than this
    /// engine's timeout for the state), TCP windows relearned from the next packet
    /// of each direction and checked liberally. A flow already present is replaced.
    pub fn adopt(&mut self, f: &SyncedFlow, now: Instant) -> Result<(), AdoptError> {
        let (key, side) = f.key();
        if (f.proto == proto::TCP && f.tcp_state > 9) || (!matches!(f.proto, proto::TCP | proto::UDP) && f.icmp.is_none() && (f.sport | f.dport) != 0) {
            return Err(AdoptError::Invalid);
        }
        let h = self.table.hash(&key);
        // The synced flow is charged to its original source, or — replacing a flow
        // held here — to whichever address that one was charged to: the count its
        // removal frees is then the one the replacement takes, so room is certain. (A
        // charge moved to the other address could meet that one's limit after the
        // flow held here was already gone.)
        let mut charge_hi = side == Side::FromHi;
        if let Some(slot) = self.table.lookup(h, &key) {
            charge_hi = self.table.conns[slot as usize].charged() == 1;
            self.retire(slot, h, None, now);
        }
        let mut c = Table::blank(&key);
        if side == Side::FromHi {
            c.flags |= cflag::ORIG_IS_HI;
        }
        if f.status & ips::SEEN_REPLY != 0 {
            c.flags |= cflag::SEEN_REPLY;
        }
        if f.status & ips::ASSURED != 0 {
            c.flags |= cflag::ASSURED;
        }
        let class = match f.proto {
            proto::TCP => {
                c.state = f.tcp_state | (tcp::INDEX_NONE << 4);
                c.pflags = [pflag::SACK_PERM | pflag::BE_LIBERAL; 2];
                if let [Some(o), Some(r)] = f.wscale {
                    c.set_scale(0, o.min(14));
                    c.set_scale(1, r.min(14));
                    c.pflags[0] |= pflag::WINDOW_SCALE;
                    c.pflags[1] |= pflag::WINDOW_SCALE;
                }
                tcp::state_class(tcp::state_of(&c))
            }
            proto::UDP if c.has(cflag::ASSURED) => TimerClass::UdpReplied,
            proto::UDP => TimerClass::UdpUnreplied,
            proto::ICMP | proto::ICMPV6 => TimerClass::Icmp,
            _ => TimerClass::Generic,
        };
        if f.proto != proto::TCP {
            c.state = u8::from(c.has(cflag::SEEN_REPLY));
            // An assured flow is past the UDP stream rule's age already (the peer saw it
            // long enough): start its stream just beyond the rule's threshold.
            let stream_age = if c.has(cflag::ASSURED) { super::track::UDP_STREAM_TICKS as u32 + 1 } else { 0 };
            c.peer[0].end = now.ticks().wrapping_sub(stream_age);
        }
        c.set_timer_class(class);
        let full = self.cfg.timeouts.ticks(class);
        let left = Duration::from_secs(u64::from(f.timeout_s)).ticks().min(full);
        // The timer runs from "last seen": place it so that `left` remains.
        c.last_seen = now.ticks().wrapping_sub(full - left);
        let adm = self.within_stream_share(&c, admission_of(&c));
        c.set_admission(adm);
        c.set_charged(charge_hi);
        let when = abs_ticks(now) + u64::from(left.min(self.cfg.timeouts.floor_ticks(class)));
        let src = key.addr[usize::from(charge_hi)];
        // Room is made as for a packet's new flow (docs/sync.md): under a flood that
        // filled the table, an assured synced flow takes the place of the oldest
        // non-assured entry instead of being refused; only assured entries are kept.
        let refused = |r: NoRoom| match r {
            NoRoom::Source => AdoptError::OverSourceLimit,
            NoRoom::Ipv6Pool => AdoptError::Ipv6PoolFull,
            NoRoom::Table => AdoptError::TableFull,
        };
        if let Err(why) = self.make_room(now, src, key.v6, adm) {
            return Err(refused(self.no_room(why, key.v6)));
        }
        let slot = self.insert_counted(h, &key, c, ConnAux::default(), ConnStats::new(now.ticks()), when).map_err(|e| refused(e.into()))?;
        self.lists.push(slot, adm, key.v6);
        self.count_stream(&c, adm, 1);
        self.note_new(slot, key);
        let charged = self.sources.add(src, key.v6, slot, adm != Admission::Assured);
        debug_assert!(charged, "checked above");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::pressure::Admission;
    use crate::engine::EngineConfig;
    use crate::policy::Zone;
    use crate::testutil::*;
    use crate::verdict::{PassKind, Verdict};
    use crate::wire::build::FrameSpec;
    use crate::wire::tcp::flags::*;

    const EST: Verdict = Verdict::Pass(PassKind::Established);

    fn synced_of(l: &Lab) -> Vec<SyncedFlow> {
        let t = l.e.config().timeouts;
        l.e.export(l.now).map(|r| r.synced(&t)).collect()
    }

    #[test]
    fn a_taken_over_connection_goes_on_in_both_directions() {
        let mut l = Lab::new();
        l.handshake();
        assert!(l.c(ACK | PSH, 100).is_pass());
        assert!(l.s(ACK, 0).is_pass(), "acknowledged: no longer UNACK's 300 s");
        let s = synced_of(&l);
        assert_eq!(s.len(), 1);
        let f = s[0];
        assert_eq!((f.src, f.sport, f.dport, f.proto, f.tcp_state), (0xc633_6407, CPORT, SPORT, 6, 3), "the original tuple, ESTABLISHED");
        assert_eq!(f.status, ips::CONFIRMED | ips::SEEN_REPLY | ips::ASSURED);
        assert_eq!(f.timeout_s, 5 * 86_400);
        assert_eq!(f.wscale, [Some(7), Some(7)]);
        assert_eq!(f.state_name(), "ESTABLISHED");
        assert_eq!(SyncedFlow { tcp_state: 12, ..f }.state_name(), "?");
        // The standby never saw a packet of it: the next ones pass by the adopted state,
        // whatever their sequence numbers.
        let mut b = Lab::with(EngineConfig { capacity: 64, ..EngineConfig::default() });
        b.e.adopt(&f, b.now).unwrap();
        b.e.audit().unwrap();
        let info = b.flows()[0];
        assert_eq!((info.state, info.assured, info.expires_in), ("ESTABLISHED", true, Duration::from_secs(5 * 86_400)));
        (b.cseq, b.sseq) = (l.cseq.wrapping_add(100_000), l.sseq);
        assert_eq!(b.s(ACK | PSH, 1000), EST, "the reply direction first");
        assert_eq!(b.c(ACK, 0), EST);
        assert_eq!(b.c(ACK | PSH, 10), EST);
    }

    #[test]
    fn udp_and_icmp_flows_keep_their_replies_and_timeouts() {
        let mut l = Lab::new();
        let q = FrameSpec::udp(ip(SERVER), 5353, ip("192.0.2.53"), 53, b"q").build();
        let r = FrameSpec::udp(ip("192.0.2.53"), 53, ip(SERVER), 5353, b"r").build();
        assert!(l.send(&q, Zone::Inside).is_pass());
        let ping = FrameSpec::icmp(ip(CLIENT), ip(SERVER), 8, 0, 7 << 16 | 1, b"p").build();
        let pong = FrameSpec::icmp(ip(SERVER), ip(CLIENT), 0, 0, 7 << 16 | 1, b"p").build();
        assert!(l.send(&ping, Zone::Outside).is_pass());
        l.advance(Duration::from_secs(10));
        let s = synced_of(&l);
        let udp = s.iter().find(|f| f.proto == 17).unwrap();
        assert_eq!((udp.sport, udp.dport, udp.timeout_s, udp.status & ips::SEEN_REPLY), (5353, 53, 20, 0));
        let icmp = s.iter().find(|f| f.proto == 1).unwrap();
        assert_eq!(icmp.icmp, Some((8, 0, 7)));
        assert_eq!((udp.state_name(), icmp.state_name()), ("UNREPLIED", "UNREPLIED"));
        let mut b = Lab::new();
        for f in &s {
            b.e.adopt(f, b.now).unwrap();
        }
        assert_eq!(b.send(&r, Zone::Outside), EST, "the reply to a synced query passes");
        assert_eq!(b.send(&pong, Zone::Inside), EST);
        let left = b.flows().iter().find(|f| f.key.proto == 17).unwrap().expires_in;
        assert_eq!(left, Duration::from_secs(30), "the reply refreshed it");
        b.e.audit().unwrap();
    }

    /// An established flow as the active peer would sync it: `CLIENT:sport` → `SERVER:80`
    /// (`v6`: the policy's IPv6 web server, 2001:db8:2::1).
    fn established(sport: u16, v6: bool) -> SyncedFlow {
        let (src, dst) = if v6 { (0x2001_0db8_0bad_u128 << 80 | 7, 0x2001_0db8_0002_u128 << 80 | 1) } else { (0xc633_6407, 0x0a00_0201) };
        SyncedFlow {
            v6,
            src,
            dst,
            proto: 6,
            sport,
            dport: 80,
            icmp: None,
            tcp_state: 3,
            status: ips::CONFIRMED | ips::SEEN_REPLY | ips::ASSURED,
            timeout_s: 3600,
            wscale: [None, None],
            vlan: 0,
        }
    }

    /// A synced flow already held here is replaced: charged to the address the held one
    /// was, or a sync naming the other side as its origin could meet that address's
    /// limit after the held flow was gone, and lose it.
    #[test]
    fn a_synced_update_that_names_the_other_side_keeps_the_flow() {
        let mut l = Lab::with(EngineConfig { capacity: 64, per_source_limit: 2, ..EngineConfig::default() });
        let f = established(40_000, false);
        assert_eq!(l.e.adopt(&f, l.now), Ok(()));
        // The server's own two connections, assured: its address is at the limit.
        for sport in [50_000, 50_001] {
            assert_eq!(l.e.adopt(&SyncedFlow { src: f.dst, dst: 0xc633_6408, sport, dport: 443, ..f }, l.now), Ok(()));
        }
        // The peer syncs the first flow again, from the server's side.
        let turned = SyncedFlow { src: f.dst, dst: f.src, sport: f.dport, dport: f.sport, ..f };
        assert_eq!(l.e.adopt(&turned, l.now), Ok(()));
        assert_eq!(l.e.table().len(), 3);
        assert_eq!(l.s(ACK, 0), EST, "the flow is still held");
        l.e.audit().unwrap();
    }

    /// Fills the table with a spoofed SYN flood's embryonic entries (`v6`: to the IPv6
    /// web server).
    fn flood(b: &mut Lab, n: u32, v6: bool) {
        for i in 0..n {
            let (src, dst) =
                if v6 { (format!("2001:db8:bad:{:x}::1", i + 1), "2001:db8:2::1") } else { (format!("203.0.{}.{}", i / 250, i % 250 + 1), SERVER) };
            assert!(b.seg(&src, 1024 + i as u16, dst, 80, SYN, i, 0, 1000, 0, Zone::Outside).is_pass());
        }
    }

    /// `n` connections of the standby's own, established (from 192.0.2.9 or
    /// 2001:db8:9::9).
    fn own(b: &mut Lab, n: u16, v6: bool) {
        let (client, server) = if v6 { ("2001:db8:9::9", "2001:db8:2::1") } else { ("192.0.2.9", SERVER) };
        for p in 1000..1000 + n {
            assert!(b.seg(client, p, server, 80, SYN, 100, 0, 1000, 0, Zone::Outside).is_pass());
            assert!(b.seg(server, 80, client, p, SYN | ACK, 500, 101, 1000, 0, Zone::Inside).is_pass());
            assert!(b.seg(client, p, server, 80, ACK, 101, 501, 1000, 0, Zone::Outside).is_pass());
        }
    }

    #[test]
    fn a_takeover_under_a_syn_flood_keeps_every_established_flow() {
        // The seed's failover: the flood that pushed the active peer over also filled
        // the standby's table with embryonic entries before the takeover. The synced
        // established flows take their places as a new SYN would — they are never
        // refused while a non-assured entry could make room.
        for v6 in [false, true] {
            let cfg = EngineConfig { capacity: 64, ipv6_slots: Some(32), ..EngineConfig::default() };
            let mut b = Lab::with(cfg);
            // The standby's own connections, then the flood up to the quota (a quarter).
            own(&mut b, if v6 { 16 } else { 48 }, v6);
            flood(&mut b, 200, v6);
            assert!(if v6 { b.e.table().v6_pool_full() } else { b.e.table().is_full() }, "the flood filled the {}", if v6 { "IPv6 pool" } else { "table" });
            let before = b.e.counters().evictions[Admission::Embryonic as usize];
            let synced: Vec<SyncedFlow> = (0..16).map(|i| established(40_000 + i, v6)).collect();
            let t = b.e.adopt_all(&synced, b.now);
            assert_eq!(t, AdoptTally { adopted: 16, evicted: 16, ..AdoptTally::default() }, "v6: {v6}");
            b.e.audit().unwrap();
            assert_eq!(b.e.counters().evictions[Admission::Embryonic as usize] - before, 16, "each took an embryonic entry's place");
            let (client, server) = if v6 { ("2001:db8:bad::7", "2001:db8:2::1") } else { (CLIENT, SERVER) };
            for i in 0..16 {
                assert_eq!(b.seg(server, 80, client, 40_000 + i, ACK | PSH, 9, 9, 1000, 100, Zone::Inside), EST, "the reply of synced flow {i} (v6: {v6})");
            }
            // A peer under the flood syncs its embryonic entries too, and a takeover
            // commits the cache in no particular order: however many come first, every
            // established flow finds its place.
            let mut c = Lab::with(EngineConfig { capacity: 64, ipv6_slots: Some(64), ..EngineConfig::default() });
            let embryonic =
                |i: u16| SyncedFlow { tcp_state: 1, status: ips::CONFIRMED, sport: 1024 + i, src: 0xcb00_7100 + u128::from(i), ..established(0, v6) };
            let mixed: Vec<SyncedFlow> = (0..64).map(embryonic).chain((0..64).map(|i| established(40_000 + i, v6))).collect();
            let t = c.e.adopt_all(&mixed, c.now);
            assert_eq!((t.adopted, t.refused(), t.evicted), (128, 0, 64), "v6: {v6}");
            assert!(c.flows().iter().all(|f| f.assured), "only the established flows are left");
            c.e.audit().unwrap();
            // With only assured entries left, a synced flow is refused and says why.
            let mut full = Lab::with(EngineConfig { capacity: 4, ipv6_slots: Some(2), ..EngineConfig::default() });
            let cap = if v6 { 2 } else { 4 };
            for i in 0..cap {
                full.e.adopt(&established(40_000 + i, v6), full.now).unwrap();
            }
            let why = if v6 { AdoptError::Ipv6PoolFull } else { AdoptError::TableFull };
            assert_eq!(full.e.adopt(&established(50_000, v6), full.now), Err(why));
            let t = full.e.adopt_all(&[established(50_001, v6), SyncedFlow { tcp_state: 10, ..established(50_002, v6) }], full.now);
            assert_eq!((t.adopted, t.refused(), t.table_full + t.ipv6_pool_full, t.invalid, t.evicted), (0, 2, 1, 1, 0));
            full.e.audit().unwrap();
        }
    }

    #[test]
    fn nonsense_is_refused_and_a_small_table_says_so() {
        let mut b = Lab::with(EngineConfig { capacity: 1, ..EngineConfig::default() });
        let f = SyncedFlow {
            v6: false,
            src: 1,
            dst: 2,
            proto: 6,
            sport: 1000,
            dport: 80,
            icmp: None,
            tcp_state: 3,
            status: ips::ASSURED,
            timeout_s: 60,
            wscale: [None, None],
            vlan: 0,
        };
        assert_eq!(b.e.adopt(&SyncedFlow { tcp_state: 12, ..f }, b.now), Err(AdoptError::Invalid));
        assert_eq!(b.e.adopt(&SyncedFlow { proto: 47, ..f }, b.now), Err(AdoptError::Invalid), "GRE has no ports");
        b.e.adopt(&f, b.now).unwrap();
        b.e.adopt(&f, b.now).unwrap();
        assert_eq!(b.e.table().len(), 1, "the same flow again replaces it");
        assert_eq!(b.e.adopt(&SyncedFlow { sport: 1001, ..f }, b.now), Err(AdoptError::TableFull));
        b.e.audit().unwrap();
    }
}
