//! The per-core connection table: preallocated entries, a bucketed cuckoo index, a free
//! list and the timer wheel. Fixed capacity chosen at start; nothing here allocates
//! after `new`.
//!
//! Index: 64-byte buckets of 10 (16-bit tag, 32-bit slot) pairs, as many buckets as
//! make the index 60 % full at capacity (any count, not a power of two: a bucket is
//! chosen by multiply-shift, not by mask). A key may live in its home bucket or its
//! alternate (home + d(tag), modulo the bucket count); each bucket counts how many of
//! its keys live elsewhere, so a lookup reads a second bucket only when that count is
//! not 0: 4.5 % of buckets when a table fills (1.3 % of keys live in their alternate);
//! after 400,000 removals and inserts at full load 20 % (5.3 % of keys: a key that
//! overflowed stays in its alternate when its home empties) until [`Table::rehome`]
//! brings them back. A burst's stage 2 prefetches the alternate bucket where the home
//! bucket has no matching tag but keys that live elsewhere. A one-step cuckoo move and
//! a small stash absorb the rest.
//!
//! History, measured on the dev VM at 1M entries: 7 ways of 32-bit tags in a power of
//! two of buckets cost 33 bytes an entry (the rounding left the index 27 % full); 10
//! ways of 16-bit tags half full cost 12.8, 60 % full 10.7. A 15-bit tag still rejects
//! all but 1 in 32,768 wrong ways before the key is compared. At one load, ten ways
//! overflow less than seven (Poisson above the ways at half load: 1.4 % against 2.7 %;
//! loading the old layout to 55 % cost 5–10 % at 1M flows, as more misses read both
//! buckets, then not prefetched). But the old index was only 27 % full at 1M, where
//! seven ways hardly ever overflowed: the 20 bytes an entry saved cost +2–4 % at 1M
//! flows in a same-sitting A/B, before stage 3 learnt to check the way stage 2 found
//! (`Hint`) and took ~60 instructions a packet off.

use super::conn::{Conn, ConnAux, ConnStats, cflag};
use super::wheel::Wheel;
use crate::flow::{FlowHasher, FlowKey};
use crate::raw::{Zeroed, prefetch, region_of, touch, zeroed_slice};
use core::mem::size_of;

const WAYS: usize = 10;
/// Index ways per entry of capacity, as a fraction: 5/3, i.e. the index is at most
/// 60 % full (10.7 bytes an entry).
const INDEX_WAYS_PER_ENTRY: (usize, usize) = (5, 3);
/// Keys that found no room in either bucket even after a cuckoo move.
const STASH: usize = 64;
/// The end of the free list.
const NIL: u32 = u32::MAX;
/// Buckets [`Table::rehome`] looks at per call (one call per housekeeping pass: every
/// 2 ms inline, so the 174,763 buckets of a 1M-entry index are swept in 5.5 s).
pub(crate) const REHOME_BUCKETS: usize = 64;

#[derive(Debug, Clone, Copy, Default, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Bucket {
    /// Hash tag with bit 0 = "this key's home is the other bucket"; 0 = empty.
    tags: [u16; WAYS],
    /// How many keys whose home is this bucket live elsewhere.
    overflow: u32,
    slots: [u32; WAYS],
}

const _: () = assert!(core::mem::size_of::<Bucket>() == 64);

impl Bucket {
    /// The first way holding `tag` (one compare of all ten ways) whose slot passes
    /// `is`: the lookup's key compare, or a removal's slot.
    #[inline(always)]
    fn way_where(&self, tag: u16, mut is: impl FnMut(u32) -> bool) -> Option<usize> {
        let mut m = self.matches(tag);
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            if is(self.slots[i]) {
                return Some(i);
            }
            m &= m - 1;
        }
        None
    }

    /// Bit i set when way i holds `tag` (ignoring the in-alternate bit). `tag` is never
    /// 0 (empty) and has bit 0 clear ([`tag_of`]).
    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn matches(&self, tag: u16) -> u32 {
        let mut m = 0;
        for (i, &t) in self.tags.iter().enumerate() {
            m |= u32::from(t & !1 == tag) << i;
        }
        m
    }

    /// Bit i set when way i holds `tag` (ignoring the in-alternate bit): two SSE2
    /// compares (`raw::tag_matches`). LLVM does not vectorise the ten-lane loop above
    /// (~30 instructions; a SWAR version measured worse); this saves 11.5 instructions
    /// a packet in the mixed burst. A test compares the two.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn matches(&self, tag: u16) -> u32 {
        const _: () = assert!(WAYS == 10, "raw::tag_matches compares exactly ten ways");
        crate::raw::tag_matches(&self.tags, tag)
    }
}

/// Where stage 2 of a burst saw a key's tag in its home bucket, so that stage 3 need
/// not search the bucket again: it checks that the way still holds that slot (earlier
/// packets of the burst may have changed the index) and compares the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hint {
    bucket: u32,
    way: u32,
}

impl Hint {
    pub(crate) const NONE: Hint = Hint { bucket: u32::MAX, way: 0 };
}

/// Why an insert found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexFull {
    /// No free slot, or the index could not place the key.
    Index,
    /// An IPv6 flow, and the IPv6 address pool (`conntrack.ipv6_share`) is full.
    Ipv6Pool,
}

pub struct Table {
    pub(crate) conns: Zeroed<Conn>,
    /// Per-flow packet and byte counters; empty without accounting.
    pub(crate) stats: Zeroed<ConnStats>,
    pub(crate) aux: Zeroed<ConnAux>,
    /// The IPv6 address pool: `[lo, hi]` at `2*i` for an IPv6 entry whose `addr[0]`
    /// is `i`. Sized by `conntrack.ipv6_share`, not one pair per slot.
    v6: Zeroed<u128>,
    /// Free places in the IPv6 pool; unused when the pool has a place for every
    /// entry (then an entry's place is its slot, and no free list is kept).
    v6_free: Vec<u32>,
    v6_per_slot: bool,
    buckets: Zeroed<Bucket>,
    stash: [(u16, u32); STASH],
    stash_len: usize,
    /// The free list: slots given back, linked through their (unarmed) timer nodes,
    /// newest first (`NIL` when empty); slots from `fresh` on were never used.
    free_head: u32,
    fresh: u32,
    wheel: Wheel,
    hasher: FlowHasher,
    len: usize,
    peak: usize,
    kick: usize,
    /// The next bucket [`Table::rehome`] looks at.
    rehome_at: usize,
}

/// The key's tag: 15 bits of its hash (bits 49..64, independent of the 32 that choose
/// the bucket), never 0 (empty); bit 0 is left for "in the alternate bucket".
#[inline]
fn tag_of(h: u64) -> u16 {
    ((h >> 48) as u16 & !1).max(2)
}

/// Buckets for `capacity` entries: the index 60 % full at capacity, at least 2 (so
/// that a key's alternate differs from its home).
fn buckets_for(capacity: usize) -> usize {
    let (num, den) = INDEX_WAYS_PER_ENTRY;
    capacity.saturating_mul(num).div_ceil(den * WAYS).max(2)
}

impl Table {
    /// Bytes a table of `capacity` entries allocates, computed without allocating:
    /// what [`Table::bytes`] will report. Everything is committed once the table has
    /// been full (the IPv6 pool once it held IPv6 flows). Without `accounting` there
    /// are no per-flow packet and byte counters; the IPv6 pool has `ipv6_slots` places.
    pub fn footprint(capacity: usize, accounting: bool, ipv6_slots: usize) -> usize {
        Table::footprint_parts(capacity, accounting, ipv6_slots).iter().fold(0usize, |a, p| a.saturating_add(p.1))
    }

    /// What [`Table::footprint`] is made of: (part, bytes).
    pub fn footprint_parts(capacity: usize, accounting: bool, ipv6_slots: usize) -> [(&'static str, usize); 6] {
        let c = capacity.max(1);
        let stats = if accounting { size_of::<ConnStats>() } else { 0 };
        let pool = ipv6_slots.min(c);
        let free_list = if pool == c { 0 } else { size_of::<u32>() };
        [
            ("entries", c.saturating_mul(size_of::<Conn>())),
            ("counters", c.saturating_mul(stats)),
            ("bookkeeping", c.saturating_mul(size_of::<ConnAux>())),
            ("IPv6 pool", pool.saturating_mul(2 * size_of::<u128>() + free_list)),
            ("index", buckets_for(c).saturating_mul(size_of::<Bucket>())),
            ("timer wheel", Wheel::footprint(c)),
        ]
    }

    /// Bytes allocated, everything included.
    pub fn bytes(&self) -> usize {
        self.regions().iter().map(|r| r.1).sum::<usize>() + self.v6_free.capacity() * 4
    }

    /// A table of `capacity` entries, of which at most `ipv6_slots` hold IPv6 flows.
    pub(crate) fn new(capacity: usize, seed: u64, now_ticks: u64, accounting: bool, ipv6_slots: usize) -> Table {
        let capacity = capacity.max(1);
        Table::with_buckets(capacity, buckets_for(capacity), seed, now_ticks, accounting, ipv6_slots)
    }

    /// [`Table::new`] with `nbuckets` index buckets (tests crowd the index with it).
    fn with_buckets(capacity: usize, nbuckets: usize, seed: u64, now_ticks: u64, accounting: bool, ipv6_slots: usize) -> Table {
        assert!((2..=u32::MAX as usize).contains(&nbuckets), "{nbuckets} index buckets: 2 at least, 32-bit bucket numbers");
        let pool = ipv6_slots.min(capacity);
        let v6_per_slot = pool == capacity;
        let mut v6_free = Vec::with_capacity(if v6_per_slot { 0 } else { pool });
        if !v6_per_slot {
            v6_free.extend((0..pool as u32).rev());
        }
        Table {
            conns: zeroed_slice(capacity),
            stats: zeroed_slice(if accounting { capacity } else { 0 }),
            aux: zeroed_slice(capacity),
            v6: zeroed_slice(pool * 2),
            v6_free,
            v6_per_slot,
            buckets: zeroed_slice(nbuckets),
            stash: [(0, 0); STASH],
            stash_len: 0,
            free_head: NIL,
            fresh: 0,
            wheel: Wheel::new(capacity, now_ticks),
            hasher: FlowHasher::new(seed),
            len: 0,
            peak: 0,
            kick: 0,
            rehome_at: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.conns.len()
    }

    /// Whether per-flow packet and byte counters are kept (`conntrack.accounting`).
    pub fn accounting(&self) -> bool {
        !self.stats.is_empty()
    }

    /// The counters of the flow in `slot` (zero without accounting).
    pub(crate) fn stats_of(&self, slot: u32) -> ConnStats {
        self.stats.get(slot as usize).copied().unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn is_full(&self) -> bool {
        self.free_head == NIL && self.fresh as usize == self.capacity()
    }
    /// Highest number of live entries seen.
    pub fn peak(&self) -> usize {
        self.peak
    }
    pub fn hasher(&self) -> &FlowHasher {
        &self.hasher
    }

    /// Bytes allocated per entry of capacity, everything included.
    pub fn bytes_per_entry(&self) -> usize {
        self.bytes() / self.capacity()
    }

    /// Commits every page of the table now (see [`crate::raw::touch`]).
    pub(crate) fn commit(&mut self) {
        touch(&mut self.conns);
        touch(&mut self.stats);
        touch(&mut self.aux);
        touch(&mut self.v6);
        touch(&mut self.buckets);
        self.wheel.commit();
    }

    /// The large arrays, as (address, length), so the dataplane can `madvise` them.
    pub fn regions(&self) -> Vec<(usize, usize)> {
        vec![region_of(&self.conns), region_of(&self.stats), region_of(&self.aux), region_of(&self.v6), region_of(&self.buckets), region_of(self.wheel.nodes())]
    }

    #[inline]
    pub(crate) fn hash(&self, k: &FlowKey) -> u64 {
        self.hasher.hash(k)
    }

    /// The home bucket of hash `h`: its low 32 bits scaled to the bucket count.
    #[inline]
    fn home(&self, h: u64) -> usize {
        ((u64::from(h as u32) * self.buckets.len() as u64) >> 32) as usize
    }

    /// The other bucket of a key with tag `tag` (bit 0: it sits in its alternate) that
    /// sits in bucket `b`: the alternate is `d(tag)` buckets after the home, modulo
    /// the count, with `d` in `1..n`.
    #[inline]
    fn other(&self, b: usize, tag: u16) -> usize {
        let n = self.buckets.len();
        let mixed = u32::from(tag & !1).wrapping_mul(0x5bd1_e995);
        let d = 1 + ((u64::from(mixed) * (n as u64 - 1)) >> 32) as usize;
        if tag & 1 == 0 {
            let a = b + d;
            if a >= n { a - n } else { a }
        } else if b >= d {
            b - d
        } else {
            b + n - d
        }
    }

    /// Brings `slot`'s entry, timer node, counters and bookkeeping into cache (an
    /// eviction victim's: the new entry that reuses its slot writes all four).
    #[inline]
    pub(crate) fn prefetch_slot(&self, slot: u32) {
        let s = slot as usize;
        prefetch(&self.conns[s]);
        prefetch(&self.wheel.nodes()[s]);
        prefetch(&self.aux[s]);
        if let Some(st) = self.stats.get(s) {
            prefetch(st);
        }
    }

    /// Stage 1 of a burst: bring the key's home bucket into cache.
    #[inline]
    pub(crate) fn prefetch_bucket(&self, h: u64) {
        prefetch(&self.buckets[self.home(h)]);
    }

    /// Stage 2: bring the entry that the first matching tag points at into cache; where
    /// that tag is, for [`Table::lookup_hinted`]. No tag at home but keys that live
    /// elsewhere: bring the alternate bucket instead (the key may be there, and a new
    /// flow's miss must look). Looking into it here too, a stage later, cost 6-10
    /// instructions a packet and moved no median.
    #[inline]
    pub(crate) fn prefetch_entry(&self, h: u64) -> Hint {
        let home = self.home(h);
        let b = &self.buckets[home];
        let tag = tag_of(h);
        let m = b.matches(tag);
        if m == 0 {
            if b.overflow != 0 {
                prefetch(&self.buckets[self.other(home, tag)]);
            }
            return Hint::NONE;
        }
        let way = m.trailing_zeros();
        let s = b.slots[way as usize] as usize;
        prefetch(&self.conns[s]);
        if let Some(st) = self.stats.get(s) {
            prefetch(st);
        }
        Hint { bucket: home as u32, way }
    }

    /// [`Table::lookup`], trying first the way stage 2 found (one tag and one key
    /// compared instead of a bucket searched).
    #[inline]
    pub(crate) fn lookup_hinted(&self, h: u64, k: &FlowKey, hint: Hint) -> Option<u32> {
        if let Some(slot) = self.hinted(h, hint)
            && self.key_eq(slot, k)
        {
            return Some(slot);
        }
        self.lookup(h, k)
    }

    /// The slot in the way stage 2 found, when that way still holds the key's tag (the
    /// index may have changed since): a candidate whose key the caller compares.
    #[inline(always)]
    fn hinted(&self, h: u64, hint: Hint) -> Option<u32> {
        let b = self.buckets.get(hint.bucket as usize)?;
        let slot = *b.slots.get(hint.way as usize)?;
        (b.tags[hint.way as usize] & !1 == tag_of(h)).then_some(slot)
    }

    /// [`Table::lookup_hinted`] for the ACK lane's untagged TCP IPv4 key, given by its
    /// canonical endpoints: the hinted way compared field by field, without building
    /// a [`FlowKey`]; a hint that does not hold takes the whole search.
    #[inline(always)]
    pub(crate) fn lookup_tcp4(&self, h: u64, addr: [u32; 2], port: [u16; 2], hint: Hint) -> Option<u32> {
        if let Some(slot) = self.hinted(h, hint)
            && self.conns[slot as usize].matches_tcp4(addr, port)
        {
            return Some(slot);
        }
        self.lookup_tcp4_searched(h, addr, port)
    }

    #[inline(never)]
    fn lookup_tcp4_searched(&self, h: u64, addr: [u32; 2], port: [u16; 2]) -> Option<u32> {
        let key = FlowKey { addr: [u128::from(addr[0]), u128::from(addr[1])], port, proto: crate::parse::proto::TCP, v6: false, vlan: 0 };
        self.lookup(h, &key)
    }

    #[inline(always)]
    fn key_eq(&self, slot: u32, k: &FlowKey) -> bool {
        if !k.v6 {
            return self.conns[slot as usize].matches_v4(k);
        }
        self.key_eq_v6(slot, k)
    }

    #[inline(never)]
    fn key_eq_v6(&self, slot: u32, k: &FlowKey) -> bool {
        // An IPv6 entry's `addr[0]` is its place in the pool.
        let c = &self.conns[slot as usize];
        let p = c.addr[0] as usize * 2;
        c.is_v6() && c.port == k.port && c.proto_vlan == (u32::from(k.proto) << 24 | k.vlan) && self.v6[p] == k.addr[0] && self.v6[p + 1] == k.addr[1]
    }

    #[inline(always)]
    fn find_in(&self, b: usize, tag: u16, k: &FlowKey) -> Option<(usize, usize)> {
        self.buckets[b].way_where(tag, |s| self.key_eq(s, k)).map(|i| (b, i))
    }

    /// The slot holding `k`, whose hash is `h`.
    #[inline]
    pub(crate) fn lookup(&self, h: u64, k: &FlowKey) -> Option<u32> {
        let tag = tag_of(h);
        let home = self.home(h);
        if let Some((b, i)) = self.find_in(home, tag, k) {
            return Some(self.buckets[b].slots[i]);
        }
        if self.buckets[home].overflow == 0 {
            return None;
        }
        if let Some((b, i)) = self.find_in(self.other(home, tag), tag, k) {
            return Some(self.buckets[b].slots[i]);
        }
        self.stash[..self.stash_len].iter().find(|&&(t, s)| t == tag && self.key_eq(s, k)).map(|&(_, s)| s)
    }

    /// An entry for `k` with nothing but its key: what [`Table::insert`] starts from.
    /// Tracking may fill in a blank before it is inserted (and drop it instead).
    pub(crate) fn blank(k: &FlowKey) -> Conn {
        Conn {
            addr: if k.v6 { [0, 0] } else { [k.addr[0] as u32, k.addr[1] as u32] },
            port: k.port,
            proto_vlan: u32::from(k.proto) << 24 | k.vlan,
            flags: if k.v6 { cflag::V6 } else { 0 },
            ..Conn::default()
        }
    }

    /// Stores `conn` (made from [`Table::blank`] of `k`), `aux` and `stats` (kept with
    /// accounting only) for `k` (not present) in a free slot, indexed under `h`, and
    /// arms its timer at `when` (absolute ticks). `Err` when no slot is free or the
    /// index has no room.
    pub(crate) fn insert(&mut self, h: u64, k: &FlowKey, conn: Conn, aux: ConnAux, stats: ConnStats, when: u64) -> Result<u32, IndexFull> {
        debug_assert_eq!(Table::blank(k).proto_vlan, conn.proto_vlan, "an entry for another key");
        let slot = if self.free_head != NIL {
            self.free_head
        } else if (self.fresh as usize) < self.capacity() {
            self.fresh
        } else {
            return Err(IndexFull::Index);
        };
        if k.v6 && !self.v6_per_slot && self.v6_free.is_empty() {
            return Err(IndexFull::Ipv6Pool);
        }
        self.index_insert(h, slot)?;
        if slot == self.free_head {
            self.free_head = self.wheel.spare(slot);
        } else {
            self.fresh += 1;
        }
        let s = slot as usize;
        self.conns[s] = conn;
        if k.v6 {
            let p = if self.v6_per_slot { slot } else { self.v6_free.pop().expect("checked above") };
            self.conns[s].addr = [p, 0];
            self.v6[p as usize * 2] = k.addr[0];
            self.v6[p as usize * 2 + 1] = k.addr[1];
        }
        if let Some(st) = self.stats.get_mut(s) {
            *st = stats;
        }
        self.aux[s] = aux;
        self.wheel.insert(slot, when);
        self.len += 1;
        self.peak = self.peak.max(self.len);
        Ok(slot)
    }

    /// Arms `slot`'s timer at `when` (absolute ticks), disarming it first.
    #[inline]
    pub(crate) fn rearm(&mut self, slot: u32, when: u64) {
        self.wheel.rearm(slot, when);
    }

    /// Every armed slot with the latest tick its timer comes due (walks every timer
    /// list: for checks, not the packet path).
    pub(crate) fn due_ticks(&self) -> Vec<(u32, u64)> {
        self.wheel.due_ticks()
    }

    /// One entry whose timer is due at `now` (absolute ticks), disarmed; the caller
    /// removes it or arms it again ([`Table::arm`]).
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<u32> {
        self.wheel.pop_due(now)
    }

    /// Arms the timer of `slot`, which is live but not armed (just popped).
    pub(crate) fn arm(&mut self, slot: u32, when: u64) {
        self.wheel.insert(slot, when);
    }

    /// Timers armed: one per live entry.
    pub(crate) fn armed(&self) -> usize {
        self.wheel.armed_count()
    }

    /// A wrapping tick (an entry's `last_seen`) as an absolute tick of the timer wheel.
    pub(crate) fn abs_tick(&self, t: u32) -> u64 {
        self.wheel.abs(t)
    }

    fn index_insert(&mut self, h: u64, slot: u32) -> Result<(), IndexFull> {
        let tag = tag_of(h);
        let home = self.home(h);
        if self.place(home, tag, slot) {
            return Ok(());
        }
        let other = self.other(home, tag);
        if self.place(other, tag | 1, slot) {
            self.buckets[home].overflow += 1;
            return Ok(());
        }
        // One cuckoo step: move a resident of either bucket to its other bucket.
        for b in [home, other] {
            for j in 0..WAYS {
                let i = (j + self.kick) % WAYS;
                let (t, s) = (self.buckets[b].tags[i], self.buckets[b].slots[i]);
                let dest = self.other(b, t);
                if !self.place(dest, t ^ 1, s) {
                    continue;
                }
                // The resident's home is `b` if it was in its home (bit 0 clear).
                if t & 1 == 0 {
                    self.buckets[b].overflow += 1;
                } else {
                    self.buckets[dest].overflow -= 1;
                }
                self.kick += 1;
                let in_home = b == home;
                self.buckets[b].tags[i] = if in_home { tag } else { tag | 1 };
                self.buckets[b].slots[i] = slot;
                if !in_home {
                    self.buckets[home].overflow += 1;
                }
                return Ok(());
            }
        }
        if self.stash_len == STASH {
            return Err(IndexFull::Index);
        }
        self.stash[self.stash_len] = (tag, slot);
        self.stash_len += 1;
        self.buckets[home].overflow += 1;
        Ok(())
    }

    /// Moves keys that sit in their alternate bucket back home where their home bucket
    /// has room again, for `n` buckets from a rotating cursor, and one stashed key into
    /// either of its buckets. Without it, churn at full load leaves keys where they
    /// overflowed to: 5.3 % of keys in their alternate (each lookup of those reads two
    /// buckets, and its entry is not prefetched) and 20 % of buckets with an
    /// overflow count (every miss there reads two) after 400,000 rounds, against 1.3 %
    /// and 4.5 % when the table had just filled. Between bursts only. Returns the keys
    /// moved.
    pub(crate) fn rehome(&mut self, n: usize) -> usize {
        let nb = self.buckets.len();
        let mut moved = 0;
        for _ in 0..n.min(nb) {
            let b = self.rehome_at;
            self.rehome_at = if b + 1 == nb { 0 } else { b + 1 };
            for i in 0..WAYS {
                let (t, s) = (self.buckets[b].tags[i], self.buckets[b].slots[i]);
                // Bit 0 set: a key in its alternate (0 is an empty way).
                if t & 1 == 0 {
                    continue;
                }
                let home = self.other(b, t);
                if self.place(home, t & !1, s) {
                    self.buckets[b].tags[i] = 0;
                    self.buckets[b].slots[i] = 0;
                    self.buckets[home].overflow -= 1;
                    moved += 1;
                }
            }
        }
        if self.stash_len > 0 {
            let (tag, slot) = self.stash[self.stash_len - 1];
            let home = self.home(self.hash(&self.key_of(slot)));
            let placed = if self.place(home, tag, slot) {
                self.buckets[home].overflow -= 1;
                true
            } else {
                self.place(self.other(home, tag), tag | 1, slot)
            };
            if placed {
                self.stash_len -= 1;
                moved += 1;
            }
        }
        moved
    }

    fn place(&mut self, b: usize, tag: u16, slot: u32) -> bool {
        let bucket = &mut self.buckets[b];
        match bucket.tags.iter().position(|&t| t == 0) {
            Some(i) => {
                bucket.tags[i] = tag;
                bucket.slots[i] = slot;
                true
            }
            None => false,
        }
    }

    /// Removes the entry in `slot`: unindexes it, disarms its timer, frees the slot.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, slot: u32) {
        let h = self.hash(&self.key_of(slot));
        self.remove_hashed(slot, h);
    }

    /// [`Table::remove`] when the caller already has the key's hash.
    pub(crate) fn remove_hashed(&mut self, slot: u32, h: u64) {
        let tag = tag_of(h);
        let home = self.home(h);
        let other = self.other(home, tag);
        let mut done = false;
        for b in [home, other] {
            if let Some(i) = self.buckets[b].way_where(tag, |s| s == slot) {
                let bucket = &mut self.buckets[b];
                let in_alt = bucket.tags[i] & 1 == 1;
                bucket.tags[i] = 0;
                bucket.slots[i] = 0;
                if in_alt {
                    self.buckets[home].overflow -= 1;
                }
                done = true;
                break;
            }
        }
        if !done && let Some(p) = self.stash[..self.stash_len].iter().position(|&(_, s)| s == slot) {
            self.stash_len -= 1;
            self.stash[p] = self.stash[self.stash_len];
            self.buckets[home].overflow -= 1;
            done = true;
        }
        debug_assert!(done, "removing an entry that is not indexed");
        self.wheel.remove(slot);
        let c = &self.conns[slot as usize];
        if c.is_v6() && !self.v6_per_slot {
            self.v6_free.push(c.addr[0]);
        }
        self.wheel.set_spare(slot, self.free_head);
        self.free_head = slot;
        self.len -= 1;
    }

    /// The canonical key stored in `slot`.
    pub(crate) fn key_of(&self, slot: u32) -> FlowKey {
        let c = &self.conns[slot as usize];
        let v6 = c.is_v6();
        let p = c.addr[0] as usize * 2;
        let addr = if v6 { [self.v6[p], self.v6[p + 1]] } else { [u128::from(c.addr[0]), u128::from(c.addr[1])] };
        FlowKey { addr, port: c.port, proto: c.proto(), v6, vlan: c.vlan() }
    }

    /// True when the IPv6 address pool (`conntrack.ipv6_share`) has no free place.
    #[inline]
    pub(crate) fn v6_pool_full(&self) -> bool {
        !self.v6_per_slot && self.v6_free.is_empty()
    }

    /// True when `slot` holds a live entry (every live entry has an armed timer).
    pub(crate) fn is_live(&self, slot: u32) -> bool {
        self.wheel.is_armed(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32, v6: bool) -> FlowKey {
        let a = if v6 { 0x2001_0db8_u128 << 96 | u128::from(i) } else { u128::from(0x0a00_0000 | i) };
        FlowKey::new(a, (i % 50_000) as u16, if v6 { 0x2001_0db8_u128 << 96 } else { 0x0a01_0001 }, 80, 6, v6, 0).0
    }

    /// The bucket's tag compare (SSE2 on x86-64) against the plain definition, over
    /// buckets mixing the wanted tag, its alternate-marked form, near misses in every
    /// bit and empty ways, at every way.
    #[test]
    fn tag_compare_matches_its_definition_at_every_way() {
        let mut rnd = crate::testutil::xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let tag = tag_of(rnd());
            let mut b = Bucket::default();
            for t in &mut b.tags {
                *t = match rnd() % 6 {
                    0 => tag,
                    1 => tag | 1,
                    2 => 0,
                    3 => tag ^ (1 << (rnd() % 15 + 1)),
                    _ => rnd() as u16,
                };
            }
            let want = b.tags.iter().enumerate().fold(0u32, |m, (i, &t)| m | u32::from(t & !1 == tag) << i);
            assert_eq!(b.matches(tag), want, "round {round}: tags {:?}, wanted {tag:#x}", b.tags);
        }
        for way in 0..WAYS {
            let mut b = Bucket::default();
            b.tags[way] = 0x1234 | 1;
            assert_eq!(b.matches(0x1234), 1 << way);
            assert_eq!(b.matches(0x1236), 0);
        }
    }

    #[test]
    fn ipv6_addresses_live_in_a_pool_of_their_own_size() {
        let mut t = Table::new(8, 5, 0, true, 2);
        let ins = |t: &mut Table, k: &FlowKey| t.insert(t.hash(k), k, Table::blank(k), ConnAux::default(), ConnStats::default(), 100);
        let (a, b, c) = (key(1, true), key(2, true), key(3, true));
        let sa = ins(&mut t, &a).unwrap();
        let sb = ins(&mut t, &b).unwrap();
        assert_eq!(ins(&mut t, &c), Err(IndexFull::Ipv6Pool), "two IPv6 places");
        let v4 = key(4, false);
        assert!(ins(&mut t, &v4).is_ok(), "IPv4 flows do not need one");
        assert_eq!((t.key_of(sa), t.key_of(sb)), (a, b));
        assert_eq!((t.lookup(t.hash(&a), &a), t.lookup(t.hash(&b), &b)), (Some(sa), Some(sb)));
        t.remove(sa);
        let sc = ins(&mut t, &c).unwrap();
        assert_eq!(t.key_of(sc), c);
        assert_eq!(t.lookup(t.hash(&a), &a), None);
        assert_eq!(t.lookup(t.hash(&b), &b), Some(sb), "b's addresses were not overwritten by c's");
        assert_eq!(Table::footprint(8, true, 7) - Table::footprint(8, true, 2), 5 * 36);
        assert_eq!(Table::footprint(8, true, 8) - Table::footprint(8, true, 7), 32 - 7 * 4, "a place per entry needs no free list");
    }

    #[test]
    fn insert_lookup_remove_at_full_capacity() {
        let cap = 10_000;
        let mut t = Table::new(cap, 42, 0, true, cap);
        for i in 0..cap as u32 {
            let k = key(i, i % 3 == 0);
            let h = t.hash(&k);
            assert_eq!(t.lookup(h, &k), None);
            let s = t.insert(h, &k, Table::blank(&k), ConnAux::default(), ConnStats::default(), 100).unwrap();
            assert_eq!(t.lookup(h, &k), Some(s));
            assert_eq!(t.key_of(s), k);
        }
        assert!(t.is_full());
        let k = key(cap as u32, false);
        assert_eq!(t.insert(t.hash(&k), &k, Table::blank(&k), ConnAux::default(), ConnStats::default(), 100), Err(IndexFull::Index));
        for i in 0..cap as u32 {
            let k = key(i, i % 3 == 0);
            let h = t.hash(&k);
            assert!(t.lookup(h, &k).is_some(), "key {i} lost");
        }
        for i in (0..cap as u32).step_by(2) {
            let k = key(i, i % 3 == 0);
            let h = t.hash(&k);
            let s = t.lookup(h, &k).unwrap();
            t.remove(s);
            assert_eq!(t.lookup(h, &k), None);
        }
        assert_eq!(t.len(), cap / 2);
        assert_eq!(t.peak(), cap);
        for i in (1..cap as u32).step_by(2) {
            let k = key(i, i % 3 == 0);
            assert!(t.lookup(t.hash(&k), &k).is_some());
        }
        let overflow: u32 = t.buckets.iter().map(|b| b.overflow).sum();
        let in_alt = t.buckets.iter().flat_map(|b| b.tags).filter(|&t| t & 1 == 1).count();
        assert_eq!(overflow as usize, in_alt + t.stash_len, "overflow counts stay exact");
    }

    /// The sizing's worst case: a capacity that loads its index to the most it allows
    /// when full, filled and then churned (a random entry out, a new one in) with no
    /// insert refused while an entry is free.
    #[test]
    fn a_full_table_at_the_highest_index_load_never_refuses_under_churn() {
        let buckets = 1 << 12;
        let cap = buckets * WAYS * INDEX_WAYS_PER_ENTRY.1 / INDEX_WAYS_PER_ENTRY.0;
        assert_eq!(buckets_for(cap), buckets, "the worst case for this bucket count");
        let mut t = Table::new(cap, 7, 0, false, 0);
        let mut live: Vec<(FlowKey, u32)> = Vec::with_capacity(cap);
        let mut next = 0u32;
        let fresh = |next: &mut u32| {
            *next += 1;
            key(*next, false)
        };
        for _ in 0..cap {
            let k = fresh(&mut next);
            let s = t.insert(t.hash(&k), &k, Table::blank(&k), ConnAux::default(), ConnStats::default(), 100).expect("room while filling");
            live.push((k, s));
        }
        assert!(t.is_full());
        // What a lookup that misses pays: a second bucket read wherever the home bucket
        // holds an overflow count. Ten ways at 60 % load: Poisson(6) above 10 is 4.3 %
        // (measured 4.5 %, and 1.3 % of keys in their alternate).
        let overflowed = |t: &Table| t.buckets.iter().filter(|b| b.overflow > 0).count() as f64 / t.buckets.len() as f64;
        assert!(overflowed(&t) < 0.07, "{:.2} % of buckets overflowed when filled", overflowed(&t) * 100.0);
        let mut rnd = crate::testutil::xorshift(0x2545_f491_4f6c_dd1d);
        for round in 0..(if cfg!(debug_assertions) { 40_000 } else { 400_000 }) {
            let i = (rnd() % live.len() as u64) as usize;
            let (_, s) = live.swap_remove(i);
            t.remove(s);
            let k = fresh(&mut next);
            let s = t
                .insert(t.hash(&k), &k, Table::blank(&k), ConnAux::default(), ConnStats::default(), 100)
                .unwrap_or_else(|e| panic!("round {round}: {e:?} with a free entry"));
            live.push((k, s));
        }
        for (k, s) in &live {
            assert_eq!(t.lookup(t.hash(k), k), Some(*s));
        }
        assert!(t.stash_len < STASH, "stash {}", t.stash_len);
        // Churn drifts: a key that overflowed stays in its alternate after its home
        // empties (20.5 % of buckets and 5.3 % of keys after these rounds) ...
        let in_alt = |t: &Table| t.buckets.iter().flat_map(|b| b.tags).filter(|&x| x & 1 == 1).count();
        let drifted = (overflowed(&t), in_alt(&t));
        if !cfg!(debug_assertions) {
            assert!(drifted.0 < 0.3, "{:.2} % of buckets overflowed after churn", drifted.0 * 100.0);
        }
        // ... until one sweep of rehoming brings back whatever has room at home.
        let sweep = t.buckets.len() / REHOME_BUCKETS + 1;
        let moved: usize = (0..sweep).map(|_| t.rehome(REHOME_BUCKETS)).sum();
        assert!(moved > 0 && moved <= drifted.1 + STASH);
        // (5.0 % and 1.4 %: as when just filled).
        assert!(overflowed(&t) < 0.07, "{:.2} % of buckets overflowed after rehoming (had {:.2} %)", overflowed(&t) * 100.0, drifted.0 * 100.0);
        assert!(in_alt(&t) * 50 < cap, "{} keys in their alternate after rehoming (had {})", in_alt(&t), drifted.1);
        let overflow: u32 = t.buckets.iter().map(|b| b.overflow).sum();
        assert_eq!(overflow as usize, in_alt(&t) + t.stash_len, "overflow counts stay exact");
        for (k, s) in &live {
            assert_eq!(t.lookup(t.hash(k), k), Some(*s), "found after rehoming");
        }
    }

    #[test]
    fn tiny_index_uses_cuckoo_moves_and_stash() {
        // 2 buckets of 10 ways for 40 entries: keys overflow, move, and fill the stash;
        // then the stash is full and the index refuses with an entry free.
        let mut t = Table::with_buckets(100, 2, 1, 0, true, 100);
        let mut placed = Vec::new();
        for i in 0..(2 * WAYS + STASH) as u32 {
            let k = key(i, false);
            let h = t.hash(&k);
            placed.push((k, t.insert(h, &k, Table::blank(&k), ConnAux::default(), ConnStats::default(), 100).unwrap()));
        }
        assert_eq!(t.stash_len, STASH);
        let k = key(1000, false);
        assert_eq!(t.insert(t.hash(&k), &k, Table::blank(&k), ConnAux::default(), ConnStats::default(), 100), Err(IndexFull::Index));
        assert!(!t.is_full());
        let overflow: u32 = t.buckets.iter().map(|b| b.overflow).sum();
        let in_alt = t.buckets.iter().flat_map(|b| b.tags).filter(|&t| t & 1 == 1).count();
        assert_eq!(overflow as usize, in_alt + t.stash_len, "overflow counts stay exact");
        for (k, s) in &placed {
            assert_eq!(t.lookup(t.hash(k), k), Some(*s));
        }
        // Room in the buckets again: rehoming takes stashed keys back, one a call.
        for (_, s) in placed.drain(..5) {
            t.remove(s);
        }
        let before = t.stash_len;
        for _ in 0..5 {
            t.rehome(2);
        }
        assert!(t.stash_len < before, "stash {} -> {}", before, t.stash_len);
        let overflow: u32 = t.buckets.iter().map(|b| b.overflow).sum();
        let in_alt = t.buckets.iter().flat_map(|b| b.tags).filter(|&t| t & 1 == 1).count();
        assert_eq!(overflow as usize, in_alt + t.stash_len, "overflow counts stay exact");
        for (k, s) in &placed {
            assert_eq!(t.lookup(t.hash(k), k), Some(*s));
        }
        for (_, s) in &placed {
            t.remove(*s);
        }
        assert!(t.buckets.iter().all(|b| b.overflow == 0 && b.tags.iter().all(|&t| t == 0)));
        assert_eq!(t.stash_len, 0);
    }
}
