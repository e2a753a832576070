//! Flows as a state-sync peer sees them (conntrackd's model: the original tuple, the
//! kernel's TCP state number, `IPS_*` status bits, seconds left, window scales) and
//! back: a standby's external cache committed into its tables on takeover
//! (docs/sync.md). Window state is not synced: an adopted TCP flow relearns its windows
//! from the next packet in each direction and is tracked liberally (Linux marks a
//! committed flow "be liberal" the same way).

use super::Engine;
use super::lifecycle::admission_of;
use super::timers::abs_ticks;
use crate::conntrack::conn::{ConnAux, ConnStats, cflag, pflag};
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
        if let Some(slot) = self.table.lookup(h, &key) {
            self.retire(slot, h, None, now);
        }
        if self.table.is_full() {
            return Err(AdoptError::TableFull);
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
        let adm = admission_of(&c);
        c.set_admission(adm);
        c.set_charged(side == Side::FromHi);
        let when = abs_ticks(now) + u64::from(left.min(self.cfg.timeouts.floor_ticks(class)));
        let src = key.addr[side as usize];
        if self.sources.check(src, key.v6).is_err() {
            return Err(AdoptError::OverSourceLimit);
        }
        let slot = self.table.insert(h, &key, c, ConnAux::default(), ConnStats::new(now.ticks()), when).map_err(|_| AdoptError::TableFull)?;
        self.lists.push(slot, adm, key.v6);
        self.note_new(slot, key);
        let charged = self.sources.add(src, key.v6, slot, adm != crate::conntrack::pressure::Admission::Assured);
        debug_assert!(charged, "checked above");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
