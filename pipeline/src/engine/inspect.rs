//! Looking at an engine from outside, never on the packet path: flow listings a slice
//! at a time, what a dropped frame was (for the deny log), and the audit of the table's
//! bookkeeping that tests and fuzzing run.

use super::Engine;
use super::lifecycle::{admission_of, is_stream};
use super::timers::idle_ticks;
use crate::conntrack::conn::cflag;
use crate::conntrack::pressure::Admission;
use crate::conntrack::tcp;
use crate::conntrack::tombstones::Why;
use crate::flow::{FlowKey, Side};
use crate::parse::{self, Frame, L4};
use crate::policy::Zone;
use crate::time::{Duration, Instant};

/// A tracked flow, as listed by `replay --flows-out` and the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    pub key: FlowKey,
    /// The side that opened the flow (original direction).
    pub orig: Side,
    /// The zone the original direction entered from.
    pub from: Zone,
    /// Linux state name for TCP, `UNREPLIED` / `REPLIED` otherwise.
    pub state: &'static str,
    pub expires_in: Duration,
    pub assured: bool,
    /// Admission class (what eviction order applies to it).
    pub class: Admission,
    /// `[original, reply]`; zero when `counted` is false.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Time since the flow was created; kept with the counters (`None` without).
    pub age: Option<Duration>,
    /// Per-flow counters are kept (`conntrack.accounting`).
    pub counted: bool,
}

/// A dropped frame, described for the deny log ([`Engine::explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explained {
    pub v6: bool,
    pub proto: u8,
    /// Addresses as the packet carries them (IPv4 in the low 32 bits).
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
    pub vlan: u32,
    /// The flow's entry went away: why, how long ago, and its class then.
    pub removed: Option<Removed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub why: Why,
    pub ago: Duration,
    pub class: Admission,
}

impl Engine {
    /// Every live flow, in slot order.
    pub fn flows(&self, now: Instant) -> impl Iterator<Item = FlowInfo> + '_ {
        self.flows_in(0..self.table.capacity() as u32, now)
    }

    /// The live flows among slots `range` (clamped to the capacity): a listing taken a
    /// slice at a time between bursts, so that a worker never stops for a whole table.
    pub fn flows_in(&self, range: std::ops::Range<u32>, now: Instant) -> impl Iterator<Item = FlowInfo> + '_ {
        let end = range.end.min(self.table.capacity() as u32);
        (range.start.min(end)..end).filter(|&s| self.table.is_live(s)).map(move |s| self.flow_info(s, now))
    }

    /// Counts the live entries among slots `range` (clamped) by who holds them: the
    /// source that opened each flow (an IPv6 one by its `per_source_ipv6_prefix`, as
    /// the per-source limit counts it), and the port it was opened to (0 for ICMP and
    /// others). For the sweep that names the top holders between bursts.
    pub fn count_holders(&self, range: std::ops::Range<u32>, sources: &mut crate::holders::SpaceSaving, ports: &mut crate::holders::SpaceSaving) -> u32 {
        let end = range.end.min(self.table.capacity() as u32);
        let mut n = 0;
        for s in range.start.min(end)..end {
            if !self.table.is_live(s) {
                continue;
            }
            let c = &self.table.conns[s as usize];
            let k = self.table.key_of(s);
            let o = usize::from(c.has(cflag::ORIG_IS_HI));
            let port = if matches!(k.proto, parse::proto::TCP | parse::proto::UDP) { k.port[1 - o] } else { 0 };
            sources.add(crate::conntrack::sources::source_of(k.addr[o], k.v6, self.cfg.source_prefix_v6), k.v6, 0);
            ports.add(u128::from(port), false, k.proto);
            n += 1;
        }
        n
    }

    fn flow_info(&self, s: u32, now: Instant) -> FlowInfo {
        let c = &self.table.conns[s as usize];
        let st = self.table.stats_of(s);
        let left = self.timeout_of(c).saturating_sub(idle_ticks(now.ticks(), c.last_seen));
        let state = if c.proto() == parse::proto::TCP {
            tcp::state_of(c).name()
        } else if c.has(cflag::SEEN_REPLY) {
            "REPLIED"
        } else {
            "UNREPLIED"
        };
        FlowInfo {
            key: self.table.key_of(s),
            orig: if c.has(cflag::ORIG_IS_HI) { Side::FromHi } else { Side::FromLo },
            from: if self.table.aux[s as usize].origin_inside() { Zone::Inside } else { Zone::Outside },
            state,
            expires_in: Duration::from_ticks(left),
            assured: c.has(cflag::ASSURED),
            class: c.admission(),
            packets: st.packets(),
            bytes: st.bytes,
            age: self.table.accounting().then(|| Duration::from_ticks(idle_ticks(now.ticks(), st.created()))),
            counted: self.table.accounting(),
        }
    }

    /// What a dropped frame was, and — for a packet whose state is gone — why, when and
    /// of which class its entry was removed, from the tombstone (without counting a
    /// hit). For the deny log: called after the fact, for the drops it records.
    pub fn explain(&self, frame: &[u8], now: Instant) -> Option<Explained> {
        let Ok(Frame::Ip(m)) = parse::parse(frame) else { return None };
        let (tcp_flags, icmp) = match m.l4 {
            L4::Tcp(t) => (t.flags, None),
            L4::IcmpQuery { ty, code, .. } | L4::IcmpError { ty, code, .. } | L4::IcmpOther { ty, code, .. } => (0, Some((ty, code))),
            _ => (0, None),
        };
        let ports = matches!(m.l4, L4::Tcp(_) | L4::Udp);
        let removed = self.tombs.peek(self.table.hash(&m.key)).map(|(why, when, class)| Removed {
            why,
            ago: Duration::from_ticks(idle_ticks(now.ticks(), when)),
            class: Admission::from_code(class, m.key.proto == crate::parse::proto::TCP),
        });
        Some(Explained {
            v6: m.key.v6,
            proto: m.key.proto,
            src: m.src_addr(),
            dst: m.dst_addr(),
            sport: if ports { m.src_port() } else { 0 },
            dport: if ports { m.dst_port() } else { 0 },
            tcp_flags,
            icmp,
            vlan: m.key.vlan,
            removed,
        })
    }

    /// Checks the table's bookkeeping against itself, the way the tests' invariants
    /// state it: every live entry is indexed under its own key and armed, no later than
    /// its deadline, in the class its state calls for; the class lists hold exactly the
    /// live entries; the per-source counts add up to the live entries, each charged to a
    /// source that holds it. O(capacity): for tests, fuzzing and audits, never the
    /// packet path.
    pub fn audit(&self) -> Result<(), String> {
        let t = &self.table;
        let (mut live, mut per_class, mut streams) = (0usize, [0u32; Admission::COUNT], 0u32);
        // When each armed slot's timer comes due (`u64::MAX`: not armed).
        let mut due = vec![u64::MAX; t.capacity()];
        for (s, tick) in t.due_ticks() {
            due[s as usize] = tick;
        }
        for s in 0..t.capacity() as u32 {
            if !t.is_live(s) {
                continue;
            }
            live += 1;
            let c = &t.conns[s as usize];
            let k = t.key_of(s);
            if t.lookup(t.hash(&k), &k) != Some(s) {
                return Err(format!("entry {s} ({k:?}) is not found under its own key"));
            }
            per_class[c.admission() as usize] += 1;
            // A stream held back by `stream_share` stays replied.
            let held = c.admission() == Admission::Replied && is_stream(c, admission_of(c));
            streams += u32::from(is_stream(c, c.admission()));
            if c.admission() != admission_of(c) && !held {
                return Err(format!("entry {s} is in class {:?}, its state calls for {:?}", c.admission(), admission_of(c)));
            }
            // A flow restored from a snapshot was last seen before this clock's time 0:
            // its absolute tick is "negative" (wrapped), its deadline is not.
            let deadline = t.abs_tick(c.last_seen).wrapping_add(u64::from(self.cfg.timeouts.ticks(c.timer_class())));
            if due[s as usize] == u64::MAX {
                return Err(format!("entry {s} is live but its timer is in no list"));
            }
            if due[s as usize] > deadline {
                return Err(format!("entry {s}: its timer comes due at tick {} after its deadline {deadline}", due[s as usize]));
            }
            if self.sources.enabled() && self.sources.count(k.addr[c.charged()], k.v6) == 0 {
                return Err(format!("entry {s} is charged to a source that holds no entry"));
            }
        }
        if live != t.len() || live != t.armed() {
            return Err(format!("{live} live entries, table length {}, {} timers armed", t.len(), t.armed()));
        }
        if streams != self.streams {
            return Err(format!("{streams} streams live, {} counted", self.streams));
        }
        if per_class != self.lists.counts() {
            return Err(format!("entries per class {per_class:?}, class counts {:?}", self.lists.counts()));
        }
        self.lists.audit()?;
        if self.sources.enabled() && self.sources.total() != live as u64 {
            return Err(format!("per-source counts add up to {}, {live} entries live", self.sources.total()));
        }
        if self.sources.enabled() {
            let listed = self.sources.audit_lists(|s| self.table.is_live(s) && self.table.conns[s as usize].admission() != Admission::Assured)?;
            if listed != u64::from(self.lists.non_assured()) {
                return Err(format!("per-source lists hold {listed} entries, {} are not assured", self.lists.non_assured()));
            }
        }
        Ok(())
    }
}
