//! The engine: one per worker core. Frames in, verdicts out, state in between.
//!
//! `process_batch` runs a burst in three stages, after VPP's graph nodes and DPDK's
//! l3fwd: parse and hash every frame and prefetch its index bucket; then prefetch the
//! entry each bucket points at; then judge each frame, by which time its bucket and
//! entry are in cache. A batch is cut in pieces of `MAX_BURST`, pipelined: the next
//! piece's stage 2 runs between the verdicts of this one's stage 3. Pure: no I/O, no
//! clock reads (`now` is carried by each packet), no allocation.
//!
//! The `impl Engine` is split by job, after smoltcp's `iface/interface/`:
//! - here: the struct, construction and memory, the burst, `judge` and lookup;
//! - [`config`]: what an engine is made with (`EngineConfig`, `Pickup`, `Packet`);
//! - [`track`]: tracking of new and existing flows, per protocol, and the rules;
//! - [`lifecycle`]: an entry's life: create, account, make room, evict, retire;
//! - [`timers`]: timeouts as they apply now, arming, refreshing;
//! - [`between`]: work between bursts: expiry, reconfiguration, a reload's pass;
//! - [`inspect`]: listings, explanations for the deny log, the audit;
//! - [`restore`]: the table as snapshot records, and back after a restart;
//! - [`adopt`]: flows as a sync peer sees them, and adopted on takeover;
//! - [`changes`]: the journal of created, changed and removed flows for a sync peer.

mod adopt;
mod between;
mod changes;
mod config;
mod inspect;
mod lifecycle;
mod restore;
mod timers;
mod track;

use std::sync::Arc;

use crate::conntrack::frag::FragTable;
use crate::conntrack::pressure::{Admission, ClassLists};
use crate::conntrack::sources::Sources;
use crate::conntrack::table::{Hint, Table};
use crate::conntrack::tombstones::{Tombstones, Why};
use crate::counters::Counters;
use crate::flow::FlowKey;
use crate::parse::{self, AckMeta, Kind, L4, PacketMeta};
use crate::policy::{Classifier, Zone};
use crate::time::Instant;
use crate::verdict::{DropReason, PassKind, Verdict};

pub use adopt::{AdoptError, AdoptTally, SyncedFlow, ips};
pub use between::Maintained;
pub use changes::{Change, ChangeKind, ChangeStats};
pub use config::{EngineConfig, Packet, Pickup};
pub use inspect::{Explained, FlowInfo, Removed};
pub use restore::{RestoreError, Restored};
use timers::{abs_ticks, idle_ticks};

/// Largest burst processed in one staged pass; longer batches are cut into pieces,
/// whose stages overlap (see [`Engine::process_batch`]). Within a piece a line
/// prefetched for a packet is read up to that many packets' work later: 16 packets
/// of stage 3 (~50 ns each on the dev VM, ~15 on a fast core) cover DRAM latency, and
/// a smaller stage keeps its frames, metadata and prefetched lines in L1. Measured
/// on the dev VM (targets bench): 16 against 64, 49.3 against 51.1 ns a packet at
/// 10k flows and 78.0 against 80.8 at 1M; the bare access pattern with no work
/// between its reads prefers 64 (the bench prints it at 16, 32 and 64). On an Intel
/// host, 12 paired rounds of 16 against 32: no difference (docs/performance.md).
pub const MAX_BURST: usize = 16;
/// Timer-wheel entries examined per `expire` call by default: bounds the pause a burst
/// can see, while retiring 2 million entries per second at one call per millisecond.
pub const DEFAULT_EXPIRE_BUDGET: usize = 2048;

/// One packet of a burst between its stages: the verdict it already has (`done`), or
/// its parsed metadata, the key's hash and where stage 2 saw its tag ([`Hint`]). A
/// struct, not an enum, so that stage 1 parses straight into `meta`: the metadata
/// (~100 bytes) is written once instead of moved through the parser's result.
#[derive(Clone, Copy)]
struct Stage {
    done: Option<Verdict>,
    /// The frame took the ACK lane: its metadata is in `ack`, not `meta`.
    lane: bool,
    meta: PacketMeta,
    ack: AckMeta,
    h: u64,
    hint: Hint,
}

impl Stage {
    const EMPTY: Stage =
        Stage { done: Some(Verdict::Drop(DropReason::Malformed)), lane: false, meta: PacketMeta::EMPTY, ack: AckMeta::EMPTY, h: 0, hint: Hint::NONE };
}

pub struct Engine {
    table: Table,
    /// Per-burst metadata, kept between bursts so that nothing is initialised per burst.
    /// `None` only while a burst judges (stage 3 reads the metadata in place).
    staged: Option<Box<[Stage; 2 * MAX_BURST]>>,
    frags: FragTable,
    lists: ClassLists,
    tombs: Tombstones,
    sources: Sources,
    /// Non-assured entries allowed (by-class quota).
    quota: u32,
    /// Assured non-TCP entries allowed (`stream_share`), and how many there are.
    stream_cap: u32,
    streams: u32,
    /// Current adaptive timeout factor for non-assured classes, out of 1024.
    scale: u32,
    policy: Arc<Classifier>,
    cfg: EngineConfig,
    counters: Counters,
    /// Changes for a sync peer (off unless asked for).
    changes: changes::Changes,
}

impl Engine {
    pub fn new(cfg: EngineConfig, policy: Arc<Classifier>, start: Instant) -> Engine {
        Engine {
            table: Table::new(cfg.capacity, cfg.seed, abs_ticks(start), cfg.accounting, cfg.ipv6_places()),
            staged: Some(Box::new([Stage::EMPTY; 2 * MAX_BURST])),
            frags: FragTable::new(cfg.fragments, cfg.fragment_timeout.ticks(), cfg.seed),
            lists: ClassLists::new(cfg.capacity.max(1), cfg.pressure.evict),
            tombs: Tombstones::new(cfg.tombstones),
            sources: Sources::new(cfg.capacity.max(1), cfg.per_source_limit, cfg.source_prefix_v6, cfg.seed),
            quota: quota(&cfg),
            stream_cap: stream_cap(&cfg),
            streams: 0,
            scale: 1024,
            policy,
            cfg,
            counters: Counters::default(),
            changes: changes::Changes::default(),
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

    /// Live entries per admission class (by [`Admission`] order: replied, embryonic, unreplied, closing, assured).
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
        self.bytes() / self.table.capacity()
    }

    /// Bytes an engine with `cfg` allocates, computed without allocating: the memory
    /// it commits once its table has been full. What [`Engine::bytes`] reports.
    pub fn footprint(cfg: &EngineConfig) -> usize {
        Engine::footprint_parts(cfg).iter().fold(0usize, |a, p| a.saturating_add(p.1))
    }

    /// What [`Engine::footprint`] is made of: (part, bytes), the table's parts first.
    pub fn footprint_parts(cfg: &EngineConfig) -> Vec<(&'static str, usize)> {
        let cap = cfg.capacity.max(1);
        let mut parts = Table::footprint_parts(cap, cfg.accounting, cfg.ipv6_places()).to_vec();
        parts.extend([
            ("class lists", ClassLists::footprint(cap)),
            ("tombstones", Tombstones::footprint(cfg.tombstones)),
            ("per-source counts", Sources::footprint(cap, cfg.per_source_limit)),
            ("fragments", FragTable::footprint(cfg.fragments)),
            ("burst stages", core::mem::size_of::<[Stage; MAX_BURST]>()),
        ]);
        parts
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
        self.lists.commit();
        self.sources.commit();
    }

    /// The engine's large arrays, as (address, length), for the dataplane to offer to
    /// huge pages before [`Engine::commit`]: the table's, the class lists' links and
    /// the per-source counts (`per_source_limit`).
    pub fn regions(&self) -> Vec<(usize, usize)> {
        let mut r = self.table.regions();
        r.push(self.lists.region());
        r.extend(self.sources.regions());
        r
    }

    /// Judges one frame.
    pub fn process(&mut self, p: &Packet) -> Verdict {
        let mut v = [Verdict::Drop(DropReason::Malformed)];
        self.process_batch(std::slice::from_ref(p), &mut v);
        v[0]
    }

    /// Judges a batch of frames; `out[i]` receives the verdict of `pkts[i]`.
    ///
    /// In pieces of [`MAX_BURST`], software-pipelined: a piece is parsed and hashed
    /// (stage 1, prefetching index buckets) before the previous piece is judged, and
    /// its stage 2 (reading the buckets, prefetching the entries) runs one packet at
    /// a time between the previous piece's judgements. An entry is so prefetched a
    /// whole piece of judging before it is read, and the prefetches are spread over
    /// the judging instead of issued sixteen at once, more than the core's miss
    /// buffers hold. Stage 2 may read the index before the previous piece's packets
    /// change it: its hints are checked where they are used ([`Table::lookup_hinted`]).
    pub fn process_batch(&mut self, pkts: &[Packet], out: &mut [Verdict]) {
        assert_eq!(pkts.len(), out.len(), "one verdict slot per packet");
        let mut staged = self.staged.take().expect("bursts do not nest");
        let (mut cur, mut next) = staged.split_at_mut(MAX_BURST);
        let mut pieces = pkts.chunks(MAX_BURST).zip(out.chunks_mut(MAX_BURST));
        if let Some((mut p, mut o)) = pieces.next() {
            self.stage(p, &mut cur[..p.len()], true);
            loop {
                // One call site for the judging, which is inlined whole.
                let after = pieces.next();
                let ahead = match after {
                    Some((np, _)) => {
                        self.stage1(np, &mut next[..np.len()], true);
                        &mut next[..np.len()]
                    }
                    None => &mut [],
                };
                self.judge_piece(p, &cur[..p.len()], o, ahead);
                let Some((np, no)) = after else { break };
                core::mem::swap(&mut cur, &mut next);
                (p, o) = (np, no);
            }
        }
        self.staged = Some(staged);
    }

    /// Stage 3 of a piece whose stages 1 and 2 are done, running stage 2 of the next
    /// piece (`ahead`, stage 1 done) one packet between each two verdicts.
    #[inline(always)]
    fn judge_piece(&mut self, pkts: &[Packet], staged: &[Stage], out: &mut [Verdict], ahead: &mut [Stage]) {
        // Pieces are cut by `chunks`: only the last is shorter, and it has none ahead.
        debug_assert!(ahead.len() <= pkts.len(), "a piece ahead longer than this one");
        self.rescale();
        let mut bytes = 0;
        for (i, (p, s)) in pkts.iter().zip(staged.iter()).enumerate() {
            if let Some(a) = ahead.get_mut(i) {
                self.stage2(a);
            }
            let v = match s.done {
                Some(v) => v,
                None if s.lane => match self.lane_ack(p.now, p.data, &s.ack, s.h, s.hint) {
                    Some(v) => v,
                    None => self.judge_off_lane(p, s.h, s.hint),
                },
                None => self.judge(p.now, p.zone, p.data, &s.meta, s.h, s.hint),
            };
            self.counters.count(v);
            bytes += p.data.len() as u64;
            out[i] = v;
        }
        self.counters.packets += pkts.len() as u64;
        self.counters.bytes += bytes;
    }

    /// Stages 1 and 2 of a burst, one after the other (for [`Engine::probe_batch`] and
    /// a batch's first piece).
    #[inline(always)]
    fn stage(&self, pkts: &[Packet], staged: &mut [Stage], lookup: bool) {
        self.stage1(pkts, staged, lookup);
        if lookup {
            for s in staged.iter_mut() {
                self.stage2(s);
            }
        }
    }

    /// Stage 1 of a burst: parse, hash, prefetch the home bucket (with `lookup`).
    #[inline(always)]
    fn stage1(&self, pkts: &[Packet], staged: &mut [Stage], lookup: bool) {
        const _: () = assert!(MAX_BURST <= 64, "one bit a packet in `unhashed`");
        // Packets the general parser took (VLAN tags, IPv6, IPv4 options, ICMP errors),
        // hashed after the loop: their key was just stored into the slot field by
        // field, and hashing it at once would load those bytes back in wider words
        // than they were written with, which the store buffer cannot forward — a
        // stall on every such packet (measured: parse + hash of VLAN-tagged IPv4 and
        // of IPv6 ~4x the fast path's). A burst later the stores have reached the cache.
        let mut unhashed = 0u64;
        for (i, (p, s)) in pkts.iter().zip(staged.iter_mut()).enumerate() {
            // An established flow's plain ACK, most of the traffic, stores only what
            // its tracking reads (see `parse::ack_lane`).
            if let Some(h) = parse::ack_lane(p.data, &mut s.ack, self.table.hasher()) {
                (s.done, s.lane, s.h) = (None, true, h);
                if lookup {
                    self.table.prefetch_bucket(h);
                }
                continue;
            }
            s.lane = false;
            s.done = match parse::parse_into(p.data, &mut s.meta, self.table.hasher()) {
                Err(r) => Some(Verdict::Drop(r)),
                Ok(Kind::Arp) => Some(track::action_verdict(self.cfg.arp, DropReason::Arp)),
                Ok(Kind::NonIp) => Some(track::action_verdict(self.cfg.non_ip, DropReason::NonIp)),
                Ok(Kind::Ip(hashed)) => {
                    match hashed {
                        Some(h) => {
                            s.h = h;
                            if lookup {
                                self.table.prefetch_bucket(h);
                            }
                        }
                        None if s.meta.l4.keyless() => s.h = 0,
                        None => unhashed |= 1 << i,
                    }
                    None
                }
            };
        }
        while unhashed != 0 {
            let s = &mut staged[unhashed.trailing_zeros() as usize];
            unhashed &= unhashed - 1;
            s.h = self.table.hash(&s.meta.key);
            if lookup {
                self.table.prefetch_bucket(s.h);
            }
        }
    }

    /// Stage 2 of one packet: prefetch the entry the first matching tag in its home
    /// bucket points at, and remember where the tag was; with no tag at home but keys
    /// living elsewhere, the alternate bucket.
    #[inline(always)]
    fn stage2(&self, s: &mut Stage) {
        if s.done.is_none() {
            s.hint = self.table.prefetch_entry(s.h);
        }
    }

    /// The work every packet costs before any tracking, for the targets bench's
    /// breakdown of P1: the same staged pass as [`Engine::process_batch`] — parse and
    /// hash, and with `lookup` the index probe and key compare, reading the entry found
    /// — and nothing else: no state, timer, counter or verdict is touched. Returns the
    /// packets that parsed as IP (without `lookup`) or found an entry (with it), so
    /// that the work cannot be optimised away and a test can check it.
    pub fn probe_batch(&mut self, pkts: &[Packet], lookup: bool) -> usize {
        let mut staged = self.staged.take().expect("bursts do not nest");
        let mut n = 0;
        for chunk in pkts.chunks(MAX_BURST) {
            let staged = &mut staged[..chunk.len()];
            self.stage(chunk, staged, lookup);
            for s in staged.iter() {
                if s.done.is_some() || (!s.lane && s.meta.l4.keyless()) {
                    continue;
                }
                if !lookup {
                    n += 1;
                    continue;
                }
                let found =
                    if s.lane { self.table.lookup_tcp4(s.h, s.ack.addr, s.ack.port, s.hint) } else { self.table.lookup_hinted(s.h, &s.meta.key, s.hint) };
                if let Some(slot) = found {
                    n += usize::from(core::hint::black_box(self.table.conns[slot as usize].last_seen) != u32::MAX);
                }
            }
        }
        self.staged = Some(staged);
        n
    }

    /// A frame the ACK lane took but could not judge (its flow not found, not
    /// established, the segment not a plain in-window ACK, the entry expired, or the
    /// engine keeping a journal of changes): parsed again in full and judged as any
    /// other. The same frame, so the same hash.
    #[inline(never)]
    fn judge_off_lane(&mut self, p: &Packet, h: u64, hint: Hint) -> Verdict {
        let mut m = PacketMeta::EMPTY;
        match parse::parse_into(p.data, &mut m, self.table.hasher()) {
            Ok(Kind::Ip(Some(again))) => {
                debug_assert_eq!(again, h, "the lane and the fast path hash alike");
                self.judge(p.now, p.zone, p.data, &m, h, hint)
            }
            // `ack_lane_agrees_with_parse_into`: the lane takes only frames the fast
            // path takes. Were it ever otherwise, the full parser's answer stands.
            Ok(Kind::Ip(None)) => {
                let h = self.table.hash(&m.key);
                self.judge(p.now, p.zone, p.data, &m, h, Hint::NONE)
            }
            Ok(Kind::Arp) => track::action_verdict(self.cfg.arp, DropReason::Arp),
            Ok(Kind::NonIp) => track::action_verdict(self.cfg.non_ip, DropReason::NonIp),
            Err(r) => Verdict::Drop(r),
        }
    }

    #[inline(always)]
    fn judge(&mut self, now: Instant, zone: Zone, frame: &[u8], m: &PacketMeta, h: u64, hint: Hint) -> Verdict {
        let v = match m.l4 {
            L4::LaterFragment => self.later_fragment(now, m),
            L4::IcmpError { inner_side, quoted_seq, .. } => self.icmp_error(now, h, m, hint, inner_side, quoted_seq),
            L4::IcmpOther { nd: true, .. } => track::action_verdict(self.cfg.ndp, DropReason::Ndp),
            L4::IcmpOther { ty, .. } => {
                if self.allowed(&self.query(zone, m, false, Some(ty))) {
                    Verdict::Pass(PassKind::Untracked)
                } else {
                    Verdict::Drop(DropReason::Policy)
                }
            }
            _ => match self.live_lookup(now, h, &m.key, hint) {
                Some(slot) if self.changes.on() => self.existing_noted(now, zone, frame, slot, m, h),
                Some(slot) => match self.established_ack(now, frame, slot, m) {
                    Some(v) => v,
                    None => self.existing(now, zone, frame, slot, m, h),
                },
                None => self.new_flow(now, zone, frame, m, h),
            },
        };
        if let Some(f) = m.frag
            && f.offset == 0
        {
            self.frags.record(&track::datagram(m), v, now.ticks());
        }
        v
    }

    /// An ICMP error quoting a packet of the flow in `m.key`, sent from `inner_side`:
    /// related when that flow is tracked, unless it quotes a TCP segment outside the
    /// flow's window (`conntrack.icmp_error_window`). It changes nothing in the entry.
    /// Out of line: the packet path's other arms do not pay for it.
    #[inline(never)]
    fn icmp_error(&mut self, now: Instant, h: u64, m: &PacketMeta, hint: Hint, inner_side: crate::flow::Side, seq: u32) -> Verdict {
        let Some(slot) = self.live_lookup(now, h, &m.key, hint) else { return Verdict::Drop(DropReason::IcmpUnrelated) };
        let c = &self.table.conns[slot as usize];
        if self.cfg.icmp_error_window
            && m.key.proto == parse::proto::TCP
            && !crate::conntrack::tcp::quoted_in_window(c, c.dir_of(inner_side == crate::flow::Side::FromHi), seq)
        {
            return Verdict::Drop(DropReason::IcmpOutOfWindow);
        }
        Verdict::Pass(PassKind::Related)
    }

    /// Looks a key up; an entry found past its timeout is retired on contact, so that
    /// expiry is exact even before the timer wheel reaches it.
    #[inline(always)]
    fn live_lookup(&mut self, now: Instant, h: u64, key: &FlowKey, hint: Hint) -> Option<u32> {
        let slot = self.table.lookup_hinted(h, key, hint)?;
        let c = &self.table.conns[slot as usize];
        let idle = idle_ticks(now.ticks(), c.last_seen);
        // Most entries a packet finds were seen moments ago: alive without working out
        // their own timeout.
        if idle >= self.shortest_timeout() && idle >= self.timeout_of(c) {
            self.retire(slot, h, Some(Why::Expired), now);
            return None;
        }
        Some(slot)
    }
}

/// Assured non-TCP entries allowed (by-class; the other models have no classes to
/// keep them in).
fn stream_cap(cfg: &EngineConfig) -> u32 {
    if cfg.pressure.evict != crate::conntrack::pressure::Evict::ByClass {
        return u32::MAX;
    }
    (cfg.pressure.stream_share * cfg.capacity.max(1) as f64) as u32
}

/// Non-assured entries allowed: the by-class quota.
fn quota(cfg: &EngineConfig) -> u32 {
    ((cfg.pressure.embryonic_share * cfg.capacity.max(1) as f64) as u32).max(1)
}

#[cfg(test)]
mod tests;
