//! The engine: one per worker core. Frames in, verdicts out, state in between.
//!
//! `process_batch` runs a burst in three stages, after VPP's graph nodes and DPDK's
//! l3fwd: parse and hash every frame and prefetch its index bucket; then prefetch the
//! entry each bucket points at; then judge each frame, by which time its bucket and
//! entry are in cache. `expire` retires timed-out entries with bounded work per call.
//! Pure: no I/O, no clock reads (`now` is carried by each packet), no allocation.

use std::sync::Arc;

use crate::conntrack::conn::{Conn, ConnAux, ORIGINAL, REPLY, aux_flag, cflag};
use crate::conntrack::frag::{Datagram, FragTable};
use crate::conntrack::pressure::{Admission, ClassLists, Evict, Pressure};
use crate::conntrack::sources::{Refusal, Sources};
use crate::conntrack::table::Table;
use crate::conntrack::tcp::{self, Outcome};
use crate::conntrack::timeouts::{Timeouts, TimerClass};
use crate::conntrack::tombstones::{Tombstones, Why};
use crate::counters::Counters;
use crate::flow::{FlowKey, Side};
use crate::parse::{self, Frame, L4, PacketMeta, TcpMeta};
use crate::policy::{Action, Classifier, Query, Zone};
use crate::time::{Duration, Instant, NANOS_PER_TICK};
use crate::verdict::{DropReason, PassKind, Verdict};

/// Largest burst processed in one staged pass; longer batches are cut into pieces.
/// 64 frames keep 64 index buckets in flight, enough to cover DRAM latency.
pub const MAX_BURST: usize = 64;
/// Timer-wheel entries examined per `expire` call by default: bounds the pause a burst
/// can see, while retiring 2 million entries per second at one call per millisecond.
pub const DEFAULT_EXPIRE_BUDGET: usize = 2048;
/// Entries the LRU model's second-chance clock may pass over before it evicts the
/// head regardless: bounds the work of one insert.
const SECOND_CHANCE_TRIES: usize = 64;
/// Linux marks a UDP flow as a stream (ASSURED, long timeout) once it has seen a reply
/// and is still active 2 s after creation (`nf_conntrack_udp_packet`).
const UDP_STREAM_TICKS: i32 = 2 * crate::time::TICKS_PER_SEC as i32;

/// What to do with a non-SYN TCP packet that finds no state (`conntrack.pickup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// Drop it (pf, Linux with `nf_conntrack_tcp_loose=0`).
    Strict,
    /// Track it only when the reverse direction is a flow the rules allow: the packet is
    /// then a reply of that flow (a server's answer after state was lost).
    ReverseOfAllowed,
    /// Track it when the rules allow its own direction (Linux's default `tcp_loose=1`).
    Loose,
}

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Entries per worker.
    pub capacity: usize,
    pub timeouts: Timeouts,
    pub pickup: Pickup,
    pub arp: Action,
    /// IPv6 neighbor discovery.
    pub ndp: Action,
    /// EtherTypes other than IPv4, IPv6 and ARP.
    pub non_ip: Action,
    /// Fragment records per worker.
    pub fragments: usize,
    pub fragment_timeout: Duration,
    /// Seed of the table's hash, chosen per process.
    pub seed: u64,
    /// Eviction, quota and adaptive timeouts (`conntrack.pressure`).
    pub pressure: Pressure,
    /// Most live entries one source address may create (0: no limit).
    pub per_source_limit: u32,
    /// Records of recently removed flows (0: none).
    pub tombstones: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            capacity: 1 << 20,
            timeouts: Timeouts::default(),
            pickup: Pickup::Strict,
            arp: Action::Allow,
            ndp: Action::Allow,
            non_ip: Action::Deny,
            fragments: 4096,
            // Linux `ipfrag_time`.
            fragment_timeout: Duration::from_secs(30),
            seed: 0x5eed,
            pressure: Pressure::default(),
            per_source_limit: 0,
            tombstones: 65_536,
        }
    }
}

/// One frame to judge: its bytes, the zone it entered from, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub data: &'a [u8],
    pub zone: Zone,
    pub now: Instant,
}

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
    /// `[original, reply]`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

#[derive(Clone, Copy)]
enum Stage {
    Done(Verdict),
    Meta(PacketMeta, u64),
}

pub struct Engine {
    table: Table,
    /// Per-burst metadata, kept between bursts so that nothing is initialised per burst.
    staged: Box<[Stage; MAX_BURST]>,
    frags: FragTable,
    lists: ClassLists,
    tombs: Tombstones,
    sources: Sources,
    /// Non-assured entries allowed (by-class quota).
    quota: u32,
    /// Current adaptive timeout factor for non-assured classes, out of 1024.
    scale: u32,
    policy: Arc<Classifier>,
    cfg: EngineConfig,
    counters: Counters,
}

#[inline]
fn abs_ticks(now: Instant) -> u64 {
    now.as_nanos() / NANOS_PER_TICK
}

/// Ticks since `last`; an entry touched "in the future" (capture timestamps going
/// backwards) counts as just touched.
#[inline]
fn idle_ticks(now: u32, last: u32) -> u32 {
    (now.wrapping_sub(last) as i32).max(0) as u32
}

fn action_verdict(a: Action, reason: DropReason) -> Verdict {
    match a {
        Action::Allow => Verdict::Pass(PassKind::Untracked),
        Action::Deny => Verdict::Drop(reason),
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, policy: Arc<Classifier>, start: Instant) -> Engine {
        Engine {
            table: Table::new(cfg.capacity, cfg.seed, abs_ticks(start)),
            staged: Box::new([Stage::Done(Verdict::Drop(DropReason::Malformed)); MAX_BURST]),
            frags: FragTable::new(cfg.fragments, cfg.fragment_timeout.ticks(), cfg.seed),
            lists: ClassLists::new(cfg.capacity.max(1), cfg.pressure.evict),
            tombs: Tombstones::new(cfg.tombstones),
            sources: Sources::new(cfg.capacity.max(1), cfg.per_source_limit, cfg.seed),
            quota: ((cfg.pressure.embryonic_share * cfg.capacity.max(1) as f64) as u32).max(1),
            scale: 1024,
            policy,
            cfg,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        c.fragment_evictions = self.frags.evictions;
        c.tombstone_hits = self.tombs.hits;
        c
    }

    /// Live entries per admission class (embryonic, unreplied, closing, assured).
    pub fn class_counts(&self) -> [u32; Admission::COUNT] {
        self.lists.counts()
    }

    /// The current adaptive-timeout factor for non-assured classes (1.0 = none).
    pub fn adaptive_scale(&self) -> f64 {
        f64::from(self.scale) / 1024.0
    }

    /// Bytes allocated per entry of capacity, side structures included (class lists,
    /// tombstones, per-source counts, fragment records).
    pub fn bytes_per_entry(&self) -> usize {
        let extra = self.lists.bytes() + self.tombs.bytes() + self.sources.bytes();
        self.table.bytes_per_entry() + extra / self.table.capacity()
    }

    /// Bytes an engine with `cfg` allocates, computed without allocating: the memory
    /// it commits once its table has been full. What [`Engine::bytes`] reports.
    pub fn footprint(cfg: &EngineConfig) -> usize {
        let cap = cfg.capacity.max(1);
        [
            Table::footprint(cap),
            ClassLists::footprint(cap),
            Tombstones::footprint(cfg.tombstones),
            Sources::footprint(cap, cfg.per_source_limit),
            FragTable::footprint(cfg.fragments),
            core::mem::size_of::<[Stage; MAX_BURST]>(),
        ]
        .iter()
        .fold(0usize, |a, b| a.saturating_add(*b))
    }

    /// Bytes this engine allocated (tables, lists, tombstones, counts, fragments).
    pub fn bytes(&self) -> usize {
        self.table.bytes() + self.lists.bytes() + self.tombs.bytes() + self.sources.bytes() + self.frags.bytes() + core::mem::size_of::<[Stage; MAX_BURST]>()
    }

    /// Commits all of the engine's memory now (the tables are allocated untouched):
    /// what [`Engine::footprint`] says it needs when full is resident from here on,
    /// so running out shows at start, not under traffic. The appliance does this
    /// before its first frame; offline replays and tests need not.
    pub fn commit(&mut self) {
        self.table.commit();
    }

    /// Judges one frame.
    pub fn process(&mut self, p: &Packet) -> Verdict {
        let mut v = [Verdict::Drop(DropReason::Malformed)];
        self.process_batch(std::slice::from_ref(p), &mut v);
        v[0]
    }

    /// Judges a batch of frames; `out[i]` receives the verdict of `pkts[i]`.
    pub fn process_batch(&mut self, pkts: &[Packet], out: &mut [Verdict]) {
        assert_eq!(pkts.len(), out.len(), "one verdict slot per packet");
        for (chunk, verdicts) in pkts.chunks(MAX_BURST).zip(out.chunks_mut(MAX_BURST)) {
            self.burst(chunk, verdicts);
        }
    }

    fn burst(&mut self, pkts: &[Packet], out: &mut [Verdict]) {
        self.scale = self.cfg.pressure.scale_1024(self.table.len(), self.table.capacity());
        // Stage 1: parse, hash, prefetch the home bucket.
        for (i, p) in pkts.iter().enumerate() {
            self.staged[i] = match parse::parse(p.data) {
                Err(r) => Stage::Done(Verdict::Drop(r)),
                Ok(Frame::Arp) => Stage::Done(action_verdict(self.cfg.arp, DropReason::Arp)),
                Ok(Frame::NonIp(_)) => Stage::Done(action_verdict(self.cfg.non_ip, DropReason::NonIp)),
                Ok(Frame::Ip(m)) => {
                    let h = match &m.l4 {
                        L4::LaterFragment | L4::IcmpOther { .. } => 0,
                        _ => self.table.hash(&m.key),
                    };
                    self.table.prefetch_bucket(h);
                    Stage::Meta(m, h)
                }
            };
        }
        // Stage 2: prefetch the entry the first matching tag points at.
        for s in &self.staged[..pkts.len()] {
            if let Stage::Meta(_, h) = s {
                self.table.prefetch_entry(*h);
            }
        }
        // Stage 3: judge.
        for (i, p) in pkts.iter().enumerate() {
            let v = match self.staged[i] {
                Stage::Done(v) => v,
                Stage::Meta(m, h) => self.judge(p.now, p.zone, p.data, &m, h),
            };
            self.counters.count(v, p.data.len());
            out[i] = v;
        }
    }

    fn judge(&mut self, now: Instant, zone: Zone, frame: &[u8], m: &PacketMeta, h: u64) -> Verdict {
        let v = match m.l4 {
            L4::LaterFragment => self.later_fragment(now, m),
            L4::IcmpError { .. } => match self.live_lookup(now, h, &m.key) {
                Some(_) => Verdict::Pass(PassKind::Related),
                None => Verdict::Drop(DropReason::IcmpUnrelated),
            },
            L4::IcmpOther { nd: true, .. } => action_verdict(self.cfg.ndp, DropReason::Ndp),
            L4::IcmpOther { ty, .. } => match self.policy.decide(&self.query(zone, m, false, Some(ty))).action {
                Action::Allow => Verdict::Pass(PassKind::Untracked),
                Action::Deny => Verdict::Drop(DropReason::Policy),
            },
            _ => match self.live_lookup(now, h, &m.key) {
                Some(slot) => self.existing(now, zone, frame, slot, m, h),
                None => self.new_flow(now, zone, frame, m, h),
            },
        };
        if let Some(f) = m.frag
            && f.offset == 0
        {
            self.frags.record(&datagram(m), v, now.ticks());
        }
        v
    }

    fn later_fragment(&mut self, now: Instant, m: &PacketMeta) -> Verdict {
        match self.frags.lookup(&datagram(m), now.ticks()) {
            Some(Verdict::Pass(_)) => Verdict::Pass(PassKind::Related),
            Some(Verdict::Drop(r)) => Verdict::Drop(r),
            None => Verdict::Drop(DropReason::FragmentUnmatched),
        }
    }

    /// Looks a key up; an entry found past its timeout is retired on contact, so that
    /// expiry is exact even before the timer wheel reaches it.
    #[inline]
    fn live_lookup(&mut self, now: Instant, h: u64, key: &FlowKey) -> Option<u32> {
        let slot = self.table.lookup(h, key)?;
        let c = &self.table.conns[slot as usize];
        if idle_ticks(now.ticks(), c.last_seen) >= self.timeout_of(c) {
            self.retire(slot, h, Some(Why::Expired), now);
            return None;
        }
        Some(slot)
    }

    /// The timeout that applies to an entry now: its class's, shrunk for non-assured
    /// entries under pressure (pf's adaptive timeouts, sparing assured flows), never
    /// below `pressure.timeout_floor`.
    #[inline]
    fn timeout_of(&self, c: &Conn) -> u32 {
        let t = self.cfg.timeouts.ticks(c.timer_class());
        if self.scale >= 1024 || c.admission() == Admission::Assured {
            return t;
        }
        let shrunk = (u64::from(t) * u64::from(self.scale) / 1024) as u32;
        shrunk.max(self.cfg.pressure.timeout_floor_ticks).min(t)
    }

    /// How soon to arm an entry's timer: its rearm floor, or its timeout if shorter
    /// (adaptive timeouts).
    #[inline]
    fn arm_ticks(&self, c: &Conn) -> u32 {
        self.cfg.timeouts.floor_ticks(c.timer_class()).min(self.timeout_of(c))
    }

    /// Removes an entry and everything that points at it: index, timer, class list,
    /// per-source count; leaves a tombstone saying why, and counts it.
    fn retire(&mut self, slot: u32, h: u64, why: Option<Why>, now: Instant) {
        let c = self.table.conns[slot as usize];
        let adm = c.admission();
        match why {
            Some(Why::Expired) => {
                self.counters.flows_expired += 1;
                self.counters.expirations[adm as usize] += 1;
            }
            Some(Why::Evicted) => self.counters.evictions[adm as usize] += 1,
            Some(Why::Revoked) => self.counters.flows_revoked += 1,
            Some(Why::Closed) | None => self.counters.flows_closed += 1,
        }
        if let Some(w) = why {
            self.tombs.bury(h, w, adm as u8, now.ticks());
        }
        if self.sources.enabled() {
            let key = self.table.key_of(slot);
            self.sources.sub(key.addr[c.charged()], key.v6);
        }
        self.lists.remove(slot, adm);
        self.table.remove_hashed(slot, h);
    }

    /// The reason for dropping a packet that found no state: what its tombstone says,
    /// or `otherwise` when the flow was never seen (or long forgotten).
    fn lost(&mut self, h: u64, otherwise: DropReason) -> Verdict {
        Verdict::Drop(match self.tombs.exhume(h) {
            Some((Why::Evicted, _)) => DropReason::ReplyToEvicted,
            Some((Why::Expired, _)) => DropReason::ReplyToExpired,
            Some((Why::Closed, _)) => DropReason::ReplyToClosed,
            Some((Why::Revoked, _)) => DropReason::Revoked,
            None => otherwise,
        })
    }

    /// Makes room for one new entry whose original source is `src`: applies the
    /// per-source limit, the non-assured quota, and the eviction policy when full.
    fn make_room(&mut self, now: Instant, src: u128, v6: bool) -> Result<(), DropReason> {
        match self.sources.check(src, v6) {
            Ok(()) => {}
            Err(Refusal::Limit) => return Err(DropReason::SourceLimit),
            Err(Refusal::TableFull) => return Err(DropReason::SourceTableFull),
        }
        match self.cfg.pressure.evict {
            Evict::ByClass => {
                // New entries are never assured: hold them to their quota by recycling
                // the oldest of their kind.
                if self.lists.non_assured() >= self.quota
                    && let Some(v) = self.lists.oldest_non_assured()
                {
                    self.evict(v, now);
                }
                if self.table.is_full() {
                    match self.lists.oldest_non_assured() {
                        Some(v) => self.evict(v, now),
                        // Only assured flows left: they are never evicted for a newcomer.
                        None => return Err(DropReason::TableFull),
                    }
                }
            }
            Evict::Lru => {
                if self.table.is_full()
                    && let Some(v) = self.second_chance()
                {
                    self.evict(v, now);
                }
            }
            Evict::None => {
                if self.table.is_full() {
                    return Err(DropReason::TableFull);
                }
            }
        }
        Ok(())
    }

    fn evict(&mut self, slot: u32, now: Instant) {
        let h = self.table.hash(&self.table.key_of(slot));
        self.retire(slot, h, Some(Why::Evicted), now);
    }

    /// The LRU model's victim: the oldest entry not used since the clock last passed.
    fn second_chance(&mut self) -> Option<u32> {
        for _ in 0..SECOND_CHANCE_TRIES {
            let s = self.lists.head_all()?;
            let c = &mut self.table.conns[s as usize];
            if c.flags & cflag::REFERENCED == 0 {
                return Some(s);
            }
            c.flags &= !cflag::REFERENCED;
            let adm = c.admission();
            self.lists.rotate(s, adm);
        }
        self.lists.head_all()
    }

    fn query(&self, zone: Zone, m: &PacketMeta, reverse: bool, icmp_type: Option<u8>) -> Query {
        let ports = matches!(m.l4, L4::Tcp(_) | L4::Udp);
        let (sport, dport) = if ports { (m.src_port(), m.dst_port()) } else { (0, 0) };
        let q = Query { from: zone, to: zone.other(), v6: m.key.v6, proto: m.key.proto, src: m.src_addr(), dst: m.dst_addr(), sport, dport, icmp_type };
        if reverse { Query { from: q.to, to: q.from, src: q.dst, dst: q.src, sport: q.dport, dport: q.sport, ..q } } else { q }
    }

    fn allowed(&self, q: &Query) -> bool {
        self.policy.decide(q).action == Action::Allow
    }

    /// Refreshes an entry's timeout (Linux `nf_ct_refresh_acct`): writes "last seen".
    /// The timer wheel is touched only when the new class has a lower rearm floor than
    /// the old one (see [`Timeouts`]), which keeps the invariant "armed no later than
    /// `now + floor(class)`" without reading the timer on ordinary packets.
    #[inline]
    fn refresh(&mut self, slot: u32, now: Instant, class: TimerClass) {
        let c = &mut self.table.conns[slot as usize];
        c.last_seen = now.ticks();
        c.flags |= cflag::REFERENCED;
        let old = c.timer_class();
        if old != class {
            c.set_timer_class(class);
            if self.cfg.timeouts.floor_ticks(class) < self.cfg.timeouts.floor_ticks(old) {
                let c = self.table.conns[slot as usize];
                let deadline = abs_ticks(now) + u64::from(self.arm_ticks(&c));
                if self.table.wheel.when(slot) > deadline {
                    self.table.wheel.rearm(slot, deadline);
                }
            }
        }
    }

    /// Counts an accepted packet on its flow, and moves the flow to the admission
    /// class its new state calls for.
    #[inline]
    fn account(&mut self, slot: u32, dir: usize, m: &PacketMeta) {
        let s = &mut self.table.stats[slot as usize];
        s.packets[dir] += 1;
        s.bytes[dir] += u64::from(m.ip_len);
        let c = &mut self.table.conns[slot as usize];
        if dir == REPLY {
            c.flags |= cflag::SEEN_REPLY;
        }
        let (old, new) = (c.admission(), c.derive_admission());
        if old != new {
            c.set_admission(new);
            self.lists.change(slot, old, new);
        }
    }

    fn existing(&mut self, now: Instant, zone: Zone, frame: &[u8], slot: u32, m: &PacketMeta, h: u64) -> Verdict {
        let dir = self.table.conns[slot as usize].dir_of(m.side == Side::FromHi);
        match m.l4 {
            L4::Tcp(t) => {
                let c = &mut self.table.conns[slot as usize];
                if let Some(class) = tcp::fast_established(c, dir, &t, t.opt_len > 0, &self.cfg.timeouts) {
                    self.refresh(slot, now, class);
                    self.account(slot, dir, m);
                    return Verdict::Pass(PassKind::Established);
                }
                if !tcp::valid_flags(t.flags) {
                    return Verdict::Drop(DropReason::InvalidTcpFlags);
                }
                let (c, aux) = (&mut self.table.conns[slot as usize], &mut self.table.aux[slot as usize]);
                match tcp::packet(c, aux, dir, &t, t.options(frame), &self.cfg.timeouts) {
                    Outcome::Accept(class) => {
                        self.refresh(slot, now, class);
                        self.account(slot, dir, m);
                        Verdict::Pass(PassKind::Established)
                    }
                    Outcome::Ignore => {
                        if dir == REPLY {
                            self.table.conns[slot as usize].flags |= cflag::SEEN_REPLY;
                        }
                        Verdict::Pass(PassKind::Ignored)
                    }
                    Outcome::Invalid { reason, shrink } => {
                        if shrink {
                            self.shrink_to_unack(slot, now);
                        }
                        Verdict::Drop(reason)
                    }
                    Outcome::Reopen => {
                        // Replaced by a new connection: no tombstone.
                        self.retire(slot, h, None, now);
                        self.new_flow(now, zone, frame, m, h)
                    }
                    Outcome::Kill => {
                        self.account(slot, dir, m);
                        self.retire(slot, h, Some(Why::Closed), now);
                        Verdict::Pass(PassKind::Established)
                    }
                }
            }
            L4::Udp => {
                let c = &mut self.table.conns[slot as usize];
                let class = if c.has(cflag::SEEN_REPLY) {
                    // "Still active after two seconds? Extend timeout."
                    if now.ticks().wrapping_sub(c.peer[0].end) as i32 > UDP_STREAM_TICKS {
                        c.flags |= cflag::ASSURED;
                        TimerClass::UdpReplied
                    } else {
                        TimerClass::UdpUnreplied
                    }
                } else {
                    TimerClass::UdpUnreplied
                };
                self.refresh(slot, now, class);
                self.account(slot, dir, m);
                Verdict::Pass(PassKind::Established)
            }
            L4::IcmpQuery { .. } => {
                self.refresh(slot, now, TimerClass::Icmp);
                self.account(slot, dir, m);
                Verdict::Pass(PassKind::Established)
            }
            _ => {
                self.refresh(slot, now, TimerClass::Generic);
                self.account(slot, dir, m);
                Verdict::Pass(PassKind::Established)
            }
        }
    }

    /// Linux `nf_tcp_handle_invalid`: lower an assured flow's remaining time to the
    /// UNACK timeout when more than 120 s and more than UNACK remain.
    fn shrink_to_unack(&mut self, slot: u32, now: Instant) {
        let t = &self.cfg.timeouts;
        let c = &self.table.conns[slot as usize];
        let left = self.timeout_of(c).saturating_sub(idle_ticks(now.ticks(), c.last_seen));
        let unack = t.ticks(TimerClass::TcpUnack);
        if left >= Duration::from_secs(120).ticks() && left > unack {
            let c = &mut self.table.conns[slot as usize];
            c.last_seen = now.ticks();
            c.set_timer_class(TimerClass::TcpUnack);
            self.table.wheel.rearm(slot, abs_ticks(now) + u64::from(unack));
        }
    }

    fn new_flow(&mut self, now: Instant, zone: Zone, frame: &[u8], m: &PacketMeta, h: u64) -> Verdict {
        match m.l4 {
            L4::Tcp(t) => self.new_tcp(now, zone, m, &t, t.options(frame), h),
            L4::Udp => {
                if !self.allowed(&self.query(zone, m, false, None)) {
                    return self.lost(h, DropReason::Policy);
                }
                let created = now.ticks();
                self.create(now, zone, 0, m, h, TimerClass::UdpUnreplied, |c| c.peer[0].end = created)
            }
            L4::IcmpQuery { ty, request, .. } => {
                if !request {
                    return self.lost(h, DropReason::MidstreamNoState);
                }
                if !self.allowed(&self.query(zone, m, false, Some(ty))) {
                    return self.lost(h, DropReason::Policy);
                }
                self.create(now, zone, ty, m, h, TimerClass::Icmp, |_| {})
            }
            _ => {
                if !self.allowed(&self.query(zone, m, false, None)) {
                    return self.lost(h, DropReason::Policy);
                }
                self.create(now, zone, 0, m, h, TimerClass::Generic, |_| {})
            }
        }
    }

    fn new_tcp(&mut self, now: Instant, zone: Zone, m: &PacketMeta, t: &TcpMeta, opts: &[u8], h: u64) -> Verdict {
        if !tcp::valid_flags(t.flags) {
            return Verdict::Drop(DropReason::InvalidTcpFlags);
        }
        let idx = tcp::index_of(t.flags);
        let (loose, reverse) = match (idx, self.cfg.pickup) {
            (tcp::index::SYN, _) => (false, false),
            (tcp::index::ACK, Pickup::Loose) => (true, false),
            (tcp::index::ACK, Pickup::ReverseOfAllowed) => (true, true),
            _ => return self.lost(h, DropReason::MidstreamNoState),
        };
        if !self.allowed(&self.query(zone, m, reverse, None)) {
            // A mid-stream packet of a lost flow reads as the loss, not as policy.
            let otherwise = if idx == tcp::index::SYN { DropReason::Policy } else { DropReason::MidstreamNoState };
            return self.lost(h, otherwise);
        }
        // Created with the packet's side as original; a reverse pickup swaps below.
        let v = self.create(now, zone, 0, m, h, TimerClass::TcpSynSent, |c| {
            tcp::init_new(c, t, opts, loose);
        });
        let Verdict::Pass(_) = v else { return v };
        let slot = self.table.lookup(h, &m.key).expect("entry just created");
        let timeouts = self.cfg.timeouts;
        let (c, aux) = (&mut self.table.conns[slot as usize], &mut self.table.aux[slot as usize]);
        // The creating packet runs through the state machine as Linux's does, in the
        // original direction; a reverse pickup then swaps the peers so that the packet
        // becomes the reply of the allowed direction.
        match tcp::packet(c, aux, ORIGINAL, t, opts, &timeouts) {
            Outcome::Accept(class) => {
                if reverse {
                    swap_directions(c);
                    aux.last_flags ^= aux_flag::ORIG_INSIDE;
                }
                let dir = if reverse { REPLY } else { ORIGINAL };
                self.refresh(slot, now, class);
                self.account(slot, dir, m);
                Verdict::Pass(PassKind::New)
            }
            _ => {
                self.retire(slot, h, None, now);
                self.counters.flows_created -= 1;
                self.counters.flows_closed -= 1;
                Verdict::Drop(DropReason::InvalidTcpState)
            }
        }
    }

    /// Allocates and initialises an entry whose original direction is the packet's side,
    /// entered from `zone`; `icmp_type` is the request type of an ICMP query flow.
    #[allow(clippy::too_many_arguments)]
    fn create(&mut self, now: Instant, zone: Zone, icmp_type: u8, m: &PacketMeta, h: u64, class: TimerClass, init: impl FnOnce(&mut Conn)) -> Verdict {
        let orig = m.side;
        let src = m.key.addr[orig as usize];
        if let Err(r) = self.make_room(now, src, m.key.v6) {
            return Verdict::Drop(r);
        }
        let slot = match self.table.insert(h, &m.key) {
            Ok(s) => s,
            Err(_) => {
                if !self.table.is_full() {
                    self.counters.index_full += 1;
                }
                return Verdict::Drop(DropReason::TableFull);
            }
        };
        let c = &mut self.table.conns[slot as usize];
        if orig == Side::FromHi {
            c.flags |= cflag::ORIG_IS_HI;
        }
        // The sender of the creating packet pays for the entry, whatever direction
        // tracking later calls original.
        c.set_charged(orig == Side::FromHi);
        c.set_timer_class(class);
        c.last_seen = now.ticks();
        init(c);
        let adm = c.derive_admission();
        c.set_admission(adm);
        self.lists.push(slot, adm);
        let charged = self.sources.add(src, m.key.v6);
        debug_assert!(charged, "make_room checked the source");
        self.table.aux[slot as usize] = ConnAux {
            created: now.ticks(),
            last_wscale: icmp_type,
            last_flags: if zone == Zone::Inside { aux_flag::ORIG_INSIDE } else { 0 },
            ..ConnAux::default()
        };
        let c = self.table.conns[slot as usize];
        self.table.wheel.insert(slot, abs_ticks(now) + u64::from(self.arm_ticks(&c)));
        self.counters.flows_created += 1;
        if !matches!(m.l4, L4::Tcp(_)) {
            let dir = self.table.conns[slot as usize].dir_of(m.side == Side::FromHi);
            self.account(slot, dir, m);
        }
        Verdict::Pass(PassKind::New)
    }

    /// Retires entries whose timeout has run out, examining at most `budget` timer
    /// entries. Returns how many entries were removed.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        self.scale = self.cfg.pressure.scale_1024(self.table.len(), self.table.capacity());
        let now_abs = abs_ticks(now);
        let now32 = now.ticks();
        let mut removed = 0;
        let mut budget = budget;
        while budget > 0 {
            let Some(slot) = self.table.wheel.pop_due(now_abs) else { break };
            let c = self.table.conns[slot as usize];
            let timeout = self.timeout_of(&c);
            let idle = idle_ticks(now32, c.last_seen);
            if idle >= timeout {
                let h = self.table.hash(&self.table.key_of(slot));
                self.retire(slot, h, Some(Why::Expired), now);
                removed += 1;
            } else {
                // Alive: re-arm at its deadline, but no later than now + floor.
                let next = (timeout - idle).min(self.cfg.timeouts.floor_ticks(c.timer_class()));
                self.table.wheel.insert(slot, now_abs + u64::from(next));
            }
            budget -= 1;
        }
        // Under pressure, timeouts shrank after entries were armed: sweep the oldest
        // non-assured entries (the heads of their FIFO lists) with the shrunken ones.
        if self.scale < 1024 && self.lists.per_class() {
            for a in [Admission::Embryonic, Admission::Unreplied, Admission::Closing] {
                while budget > 0 {
                    budget -= 1;
                    let Some(slot) = self.lists.head(a) else { break };
                    let c = self.table.conns[slot as usize];
                    if idle_ticks(now32, c.last_seen) < self.timeout_of(&c) {
                        break;
                    }
                    let h = self.table.hash(&self.table.key_of(slot));
                    self.retire(slot, h, Some(Why::Expired), now);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Checks the table's bookkeeping against itself, the way the tests' invariants
    /// state it: every live entry is indexed under its own key and armed, no later than
    /// its deadline; the class lists hold exactly the live entries; the per-source
    /// counts add up to the live entries, each charged to a source that holds it.
    /// O(capacity): for tests, fuzzing and audits, never the packet path.
    pub fn audit(&self) -> Result<(), String> {
        let t = &self.table;
        let (mut live, mut per_class) = (0usize, [0u32; Admission::COUNT]);
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
            let deadline = t.wheel.abs(c.last_seen) + u64::from(self.cfg.timeouts.ticks(c.timer_class()));
            if t.wheel.when(s) > deadline {
                return Err(format!("entry {s}: armed at tick {} after its deadline {deadline}", t.wheel.when(s)));
            }
            if self.sources.enabled() && self.sources.count(k.addr[c.charged()], k.v6) == 0 {
                return Err(format!("entry {s} is charged to a source that holds no entry"));
            }
        }
        if live != t.len() || live != t.wheel.armed_count() {
            return Err(format!("{live} live entries, table length {}, {} timers armed", t.len(), t.wheel.armed_count()));
        }
        if per_class != self.lists.counts() {
            return Err(format!("entries per class {per_class:?}, class counts {:?}", self.lists.counts()));
        }
        self.lists.audit()?;
        if self.sources.enabled() && self.sources.total() != live as u64 {
            return Err(format!("per-source counts add up to {}, {live} entries live", self.sources.total()));
        }
        Ok(())
    }

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

    fn flow_info(&self, s: u32, now: Instant) -> FlowInfo {
        let c = &self.table.conns[s as usize];
        let st = &self.table.stats[s as usize];
        let left = self.timeout_of(c).saturating_sub(idle_ticks(now.ticks(), c.last_seen));
        let state = if c.proto() == parse::proto::TCP {
            tcp::state::NAMES[usize::from(tcp::state_of(c)).min(9)]
        } else if c.has(cflag::SEEN_REPLY) {
            "REPLIED"
        } else {
            "UNREPLIED"
        };
        FlowInfo {
            key: self.table.key_of(s),
            orig: if c.has(cflag::ORIG_IS_HI) { Side::FromHi } else { Side::FromLo },
            from: self.origin_zone(s),
            state,
            expires_in: Duration::from_ticks(left),
            assured: c.has(cflag::ASSURED),
            class: c.admission(),
            packets: st.packets,
            bytes: st.bytes,
        }
    }

    fn origin_zone(&self, slot: u32) -> Zone {
        if self.table.aux[slot as usize].last_flags & aux_flag::ORIG_INSIDE != 0 { Zone::Inside } else { Zone::Outside }
    }

    /// Applies a reloaded configuration between bursts. What can change on a running
    /// table changes: rules, timeouts, pickup, ARP/NDP/non-IP actions, the fragment
    /// timeout, the pressure settings other than the eviction mode, and the per-source
    /// limit's value (when it was enabled at start). What sizes memory or the hash —
    /// capacity, fragment and tombstone records, the seed, the eviction mode, turning
    /// the per-source limit on or off — stays as it was; the control plane reports those
    /// as needing a restart. Existing entries use the new timeouts from their next
    /// packet; [`Engine::maintain`] brings their timers forward where the new timeouts
    /// are shorter, and, for `recheck`, removes flows the new rules deny.
    pub fn reconfigure(&mut self, cfg: &EngineConfig, policy: Arc<Classifier>) {
        let old = self.cfg;
        self.cfg = EngineConfig {
            capacity: old.capacity,
            fragments: old.fragments,
            tombstones: old.tombstones,
            seed: old.seed,
            pressure: Pressure { evict: old.pressure.evict, ..cfg.pressure },
            per_source_limit: if old.per_source_limit == 0 || cfg.per_source_limit == 0 { old.per_source_limit } else { cfg.per_source_limit },
            ..*cfg
        };
        self.sources.limit = self.cfg.per_source_limit;
        self.frags.set_timeout(self.cfg.fragment_timeout.ticks());
        self.quota = ((self.cfg.pressure.embryonic_share * self.cfg.capacity.max(1) as f64) as u32).max(1);
        self.scale = self.cfg.pressure.scale_1024(self.table.len(), self.table.capacity());
        self.policy = policy;
    }

    /// After a reload, over slots `range`: brings each live entry's timer forward to
    /// what the current timeouts allow, and with `recheck`, asks the current rules about
    /// each flow's original direction and removes the flows they deny (their later
    /// packets drop as `revoked`). Call it a slice of the table at a time.
    pub fn maintain(&mut self, range: std::ops::Range<u32>, now: Instant, recheck: bool) -> Maintained {
        let end = range.end.min(self.table.capacity() as u32);
        let mut done = Maintained::default();
        for s in range.start.min(end)..end {
            if !self.table.is_live(s) {
                continue;
            }
            done.examined += 1;
            if recheck && !self.allowed(&self.entry_query(s)) {
                let h = self.table.hash(&self.table.key_of(s));
                self.retire(s, h, Some(Why::Revoked), now);
                done.revoked += 1;
                continue;
            }
            let c = self.table.conns[s as usize];
            let deadline = abs_ticks(now) + u64::from(self.arm_ticks(&c));
            if self.table.wheel.when(s) > deadline {
                self.table.wheel.rearm(s, deadline);
                done.rearmed += 1;
            }
        }
        done
    }

    /// The question the rules were asked when the flow in `slot` started.
    fn entry_query(&self, slot: u32) -> Query {
        let c = &self.table.conns[slot as usize];
        let k = self.table.key_of(slot);
        let o = usize::from(c.has(cflag::ORIG_IS_HI));
        let from = self.origin_zone(slot);
        let icmp = matches!(k.proto, parse::proto::ICMP | parse::proto::ICMPV6);
        let ports = matches!(k.proto, parse::proto::TCP | parse::proto::UDP);
        Query {
            from,
            to: from.other(),
            v6: k.v6,
            proto: k.proto,
            src: k.addr[o],
            dst: k.addr[1 - o],
            sport: if ports { k.port[o] } else { 0 },
            dport: if ports { k.port[1 - o] } else { 0 },
            icmp_type: icmp.then_some(self.table.aux[slot as usize].last_wscale),
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
            class: Admission::ALL[usize::from(class).min(Admission::COUNT - 1)],
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
}

/// What [`Engine::maintain`] did to one slice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    pub examined: u32,
    pub revoked: u32,
    pub rearmed: u32,
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

/// Swaps original and reply in an entry (reverse-of-allowed pickup).
fn swap_directions(c: &mut Conn) {
    c.peer.swap(0, 1);
    c.maxack.swap(0, 1);
    c.pflags.swap(0, 1);
    c.scales = c.scales.rotate_left(4);
    c.state ^= 0x80; // last_dir
    c.flags ^= cflag::ORIG_IS_HI;
}

fn datagram(m: &PacketMeta) -> Datagram {
    let f = m.frag.expect("fragment metadata");
    Datagram { src: m.src_addr(), dst: m.dst_addr(), ident: f.ident, proto: m.key.proto, v6: m.key.v6, vlan: m.key.vlan }
}

#[cfg(test)]
mod tests;
