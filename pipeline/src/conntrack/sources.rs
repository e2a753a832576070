//! Per-source accounting for `conntrack.per_source_limit`: how many live entries each
//! source address created, exactly. An IPv6 source is its address's
//! `per_source_ipv6_prefix` (a /64 by default): one host commonly holds a whole /64,
//! and counting each of its addresses apart gave it 2^64 limits — a flood from one
//! prefix was never held back by the limit.
//!
//! Every live entry is charged to one source, so there are never more distinct
//! sources than entries: an open-addressing table of at least twice the capacity
//! (rounded up to a power of two) is at most half full, and linear probing with
//! backward-shift deletion keeps lookups short without tombstones. Sources are
//! identified by a 64-bit seeded hash of the address: two addresses share a count only
//! if their hashes collide (about n^2 / 2^65 for n sources — never, in practice), and
//! the seed is secret, so nobody can aim for it.
//!
//! Every loop here is bounded by construction, not by what the table holds: a search
//! examines at most [`MAX_PROBE`] slots, a deletion at most the table's size. A
//! source that finds no free slot within its probe window is refused
//! ([`Refusal::TableFull`], counted by the engine) instead of searched for forever —
//! at the sizing above that takes a run of 64 occupied slots, which linear probing at
//! half load produces about once per 10^5 tables of a million slots.

use crate::flow::FlowHasher;
use crate::raw::{Zeroed, region_of, touch, zeroed_slice};

/// The source an address counts as: an IPv4 address itself, an IPv6 address its
/// first `prefix_v6` bits (1..=128, clamped), the rest zero.
#[inline]
pub(crate) fn source_of(addr: u128, v6: bool, prefix_v6: u8) -> u128 {
    if v6 { addr & u128::MAX << (128 - u32::from(prefix_v6.clamp(1, 128))) } else { addr }
}

/// Most slots one search examines.
pub(crate) const MAX_PROBE: usize = 64;

#[derive(Debug, Clone, Copy, Default, bytemuck::Zeroable)]
#[repr(C)]
struct Slot {
    /// Hash of the address; 0 = empty.
    key: u64,
    count: u32,
    /// The source's non-assured entries, oldest first: the first and last entry's slot
    /// + 1 (0: none), linked through [`Sources::links`].
    head: u32,
    tail: u32,
    _pad: u32,
}

/// A listed entry's neighbours in its source's list (slot + 1; 0: none).
#[derive(Debug, Clone, Copy, Default, bytemuck::Zeroable)]
#[repr(C)]
struct Link {
    prev: u32,
    next: u32,
}

/// Why a source may not create another entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It already holds `limit` entries.
    Limit,
    /// It holds none and no slot within its probe window is free.
    TableFull,
}

pub(crate) struct Sources {
    /// Zeroed (every slot empty) and untouched at allocation, like the table.
    slots: Zeroed<Slot>,
    /// Per table entry: its links in its source's list of non-assured entries, so that
    /// a source at its limit recycles its own oldest one ([`Sources::oldest_unassured`])
    /// instead of being refused — SYNs spoofed from an address then cannot lock that
    /// address out. Meaningful only for listed entries.
    links: Zeroed<Link>,
    mask: usize,
    hasher: FlowHasher,
    pub limit: u32,
    /// How many leading bits of an IPv6 address name its source ([`source_of`]).
    prefix_v6: u8,
}

enum Probe {
    Found(usize),
    Free(usize),
    Exhausted,
}

impl Sources {
    fn slots_for(capacity: usize, limit: u32) -> usize {
        if limit == 0 { 0 } else { capacity.saturating_mul(2).checked_next_power_of_two().unwrap_or(usize::MAX).max(MAX_PROBE) }
    }

    /// Bytes `new(capacity, limit, …)` allocates.
    pub(crate) fn footprint(capacity: usize, limit: u32) -> usize {
        let links = if limit == 0 { 0 } else { capacity.saturating_mul(core::mem::size_of::<Link>()) };
        Self::slots_for(capacity, limit).saturating_mul(core::mem::size_of::<Slot>()).saturating_add(links)
    }

    /// `limit` 0 disables accounting (and allocates nothing).
    /// `prefix_v6` (1..=128, clamped) is how many leading bits name an IPv6 source.
    pub(crate) fn new(capacity: usize, limit: u32, prefix_v6: u8, seed: u64) -> Sources {
        let n = Self::slots_for(capacity, limit);
        let links = zeroed_slice(if limit == 0 { 0 } else { capacity });
        Sources { slots: zeroed_slice(n), links, mask: n.saturating_sub(1), hasher: FlowHasher::new(seed ^ 0x5eed_50c5), limit, prefix_v6 }
    }

    pub(crate) fn bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots) + core::mem::size_of_val(&*self.links)
    }

    /// The slot and link arrays, as (address, length), so the dataplane can `madvise`
    /// them.
    pub(crate) fn regions(&self) -> [(usize, usize); 2] {
        [region_of(&self.slots), region_of(&self.links)]
    }

    /// Writes every page of the slot and link arrays (see `Engine::commit`).
    pub(crate) fn commit(&mut self) {
        touch(&mut self.slots);
        touch(&mut self.links);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.limit > 0
    }

    #[inline]
    fn key(&self, addr: u128, v6: bool) -> u64 {
        let addr = source_of(addr, v6, self.prefix_v6);
        let k = crate::flow::FlowKey { addr: [addr, 0], port: [0, 0], proto: 0, v6, vlan: 0 };
        self.hasher.hash(&k) | 1
    }

    /// The slot holding `key`, or the first free slot of its probe window.
    fn find(&self, key: u64) -> Probe {
        let mut i = key as usize & self.mask;
        for _ in 0..MAX_PROBE.min(self.slots.len()) {
            let k = self.slots[i].key;
            if k == key {
                return Probe::Found(i);
            }
            if k == 0 {
                return Probe::Free(i);
            }
            i = (i + 1) & self.mask;
        }
        Probe::Exhausted
    }

    /// Live entries charged to this source.
    pub(crate) fn count(&self, addr: u128, v6: bool) -> u32 {
        if !self.enabled() {
            return 0;
        }
        match self.find(self.key(addr, v6)) {
            Probe::Found(i) => self.slots[i].count,
            _ => 0,
        }
    }

    /// Whether the source may create one more entry.
    pub(crate) fn check(&self, addr: u128, v6: bool) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        match self.find(self.key(addr, v6)) {
            Probe::Found(i) if self.slots[i].count >= self.limit => Err(Refusal::Limit),
            Probe::Found(_) | Probe::Free(_) => Ok(()),
            Probe::Exhausted => Err(Refusal::TableFull),
        }
    }

    /// The oldest non-assured entry charged to the source, if any: what a new flow of
    /// a source at its limit replaces.
    pub(crate) fn oldest_unassured(&self, addr: u128, v6: bool) -> Option<u32> {
        if !self.enabled() {
            return None;
        }
        match self.find(self.key(addr, v6)) {
            Probe::Found(i) if self.slots[i].head != 0 => Some(self.slots[i].head - 1),
            _ => None,
        }
    }

    /// Charges entry `slot` to the source, in its list of non-assured entries when
    /// `unassured`. Succeeds whenever [`Sources::check`] did (removals in between only
    /// free slots); `false` otherwise, with nothing charged.
    pub(crate) fn add(&mut self, addr: u128, v6: bool, slot: u32, unassured: bool) -> bool {
        if !self.enabled() {
            return true;
        }
        let key = self.key(addr, v6);
        let i = match self.find(key) {
            Probe::Found(i) => {
                self.slots[i].count += 1;
                i
            }
            Probe::Free(i) => {
                self.slots[i] = Slot { key, count: 1, head: 0, tail: 0, _pad: 0 };
                i
            }
            Probe::Exhausted => return false,
        };
        if unassured {
            self.push(i, slot);
        }
        true
    }

    /// Entry `slot`, charged to the source, became assured (`unassured` false: it
    /// leaves the source's list) or stopped being so (it joins at the tail).
    pub(crate) fn relist(&mut self, addr: u128, v6: bool, slot: u32, unassured: bool) {
        if !self.enabled() {
            return;
        }
        let Probe::Found(i) = self.find(self.key(addr, v6)) else {
            debug_assert!(false, "an entry of a source that holds none");
            return;
        };
        if unassured { self.push(i, slot) } else { self.unlink(i, slot) }
    }

    fn push(&mut self, i: usize, slot: u32) {
        let (l, t) = (slot + 1, self.slots[i].tail);
        self.links[slot as usize] = Link { prev: t, next: 0 };
        if t == 0 {
            self.slots[i].head = l;
        } else {
            self.links[t as usize - 1].next = l;
        }
        self.slots[i].tail = l;
    }

    fn unlink(&mut self, i: usize, slot: u32) {
        let Link { prev, next } = self.links[slot as usize];
        if prev == 0 {
            self.slots[i].head = next;
        } else {
            self.links[prev as usize - 1].next = next;
        }
        if next == 0 {
            self.slots[i].tail = prev;
        } else {
            self.links[next as usize - 1].prev = prev;
        }
    }

    /// Releases entry `slot` charged to the source (`unassured`: it is in the
    /// source's list).
    pub(crate) fn sub(&mut self, addr: u128, v6: bool, slot: u32, unassured: bool) {
        if !self.enabled() {
            return;
        }
        let Probe::Found(mut i) = self.find(self.key(addr, v6)) else {
            debug_assert!(false, "releasing an entry of a source that holds none");
            return;
        };
        if unassured {
            self.unlink(i, slot);
        }
        self.slots[i].count -= 1;
        if self.slots[i].count > 0 {
            return;
        }
        debug_assert_eq!((self.slots[i].head, self.slots[i].tail), (0, 0), "a source without entries lists none");
        // Backward-shift deletion: pull later members of the cluster into the hole.
        // Keys sit at most MAX_PROBE - 1 slots past their home, so none further than
        // that from the hole can move into it; and the scan never passes the table.
        let mut j = i;
        for _ in 0..self.slots.len() {
            j = (j + 1) & self.mask;
            let k = self.slots[j].key;
            if k == 0 || (j.wrapping_sub(i) & self.mask) >= MAX_PROBE {
                break;
            }
            let home = k as usize & self.mask;
            // Move j into i if its home is not cyclically in (i, j].
            let in_range = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !in_range {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = Slot::default();
    }

    /// Entries charged over all sources (a walk over the table, for audits).
    pub(crate) fn total(&self) -> u64 {
        self.slots.iter().map(|s| u64::from(s.count)).sum()
    }

    /// Checks every source's list (for audits; each walk bounded by the table's
    /// size, so a cycle is an error, not a hang): links that point back, no more
    /// entries than the source holds, each one `unassured`; returns how many are
    /// listed in all.
    pub(crate) fn audit_lists(&self, unassured: impl Fn(u32) -> bool) -> Result<u64, String> {
        let mut listed = 0u64;
        for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.key != 0) {
            let (mut n, mut prev, mut at) = (0u32, 0u32, s.head);
            while at != 0 {
                if n >= s.count || at as usize > self.links.len() {
                    return Err(format!("source slot {i}: its list is longer than its {} entries, or leaves the table", s.count));
                }
                let link = self.links[at as usize - 1];
                if link.prev != prev || !unassured(at - 1) {
                    return Err(format!("source slot {i}: entry {} links back to {} instead of {prev}, or is assured", at - 1, link.prev));
                }
                n += 1;
                prev = at;
                at = link.next;
            }
            if s.tail != prev {
                return Err(format!("source slot {i}: tail {} but the walk ended at {prev}", s.tail));
            }
            listed += u64::from(n);
        }
        Ok(listed)
    }

    /// Distinct sources holding entries (a walk over the table, for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.key != 0).count()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_with_churn() {
        let mut s = Sources::new(64, 3, 64, 5);
        let mut model = std::collections::HashMap::new();
        let mut rnd = crate::testutil::xorshift(99);
        for _ in 0..20_000 {
            let x = rnd();
            let a = u128::from(x % 40);
            let live: u32 = model.values().sum();
            if !x.is_multiple_of(3) && live < 64 {
                assert!(s.add(a, false, 0, false));
                *model.entry(a).or_insert(0u32) += 1;
            } else if let Some((&k, _)) = model.iter().find(|(_, c)| **c > 0) {
                s.sub(k, false, 0, false);
                *model.get_mut(&k).unwrap() -= 1;
            }
            for (k, c) in &model {
                assert_eq!(s.count(*k, false), *c);
            }
            assert_eq!(s.len(), model.values().filter(|c| **c > 0).count());
        }
        assert!(Sources::new(10, 0, 64, 1).check(1, false).is_ok());
    }

    #[test]
    fn a_full_table_refuses_instead_of_searching_forever() {
        // Charge far more distinct sources than the table was sized for (what leaked
        // accounting once did): every call returns, and the overflow is a refusal.
        let mut s = Sources::new(16, 1000, 64, 7);
        let slots = s.slots.len();
        let (mut added, mut refused) = (0, 0);
        for a in 0..(4 * slots) as u128 {
            match s.check(a, false) {
                Ok(()) => {
                    assert!(s.add(a, false, 0, false));
                    added += 1;
                }
                Err(r) => {
                    assert_eq!(r, Refusal::TableFull);
                    assert!(!s.add(a, false, 0, false), "add agrees with check");
                    refused += 1;
                }
            }
        }
        assert_eq!(added, slots, "every slot was used");
        assert_eq!(refused, 3 * slots);
        // Lookups of absent sources in a full table also return.
        assert_eq!(s.count(u128::MAX, false), 0);
        // And the table drains back to empty.
        for a in 0..(4 * slots) as u128 {
            if s.count(a, false) > 0 {
                s.sub(a, false, 0, false);
            }
        }
        assert!(s.is_empty());
    }

    #[test]
    fn the_limit_is_a_refusal_of_its_own() {
        let mut s = Sources::new(64, 2, 64, 1);
        assert!(s.add(9, false, 0, false) && s.add(9, false, 0, false));
        assert_eq!(s.check(9, false), Err(Refusal::Limit));
        assert_eq!(s.check(10, false), Ok(()));
        s.sub(9, false, 0, false);
        assert_eq!(s.check(9, false), Ok(()));
    }

    /// The addresses of one IPv6 /64 are one source at the default prefix (a host
    /// choosing a fresh address per flow gains nothing), each address its own at
    /// /128; IPv4 addresses are always their own.
    #[test]
    fn an_ipv6_source_is_its_prefix() {
        let net: u128 = 0x2001_0db8_0066_0001 << 64;
        let mut by64 = Sources::new(64, 3, 64, 1);
        for host in 1..=3u128 {
            assert!(by64.add(net | host, true, 0, false));
        }
        assert_eq!(by64.check(net | 0xdead_beef, true), Err(Refusal::Limit), "a fourth address of the /64");
        assert_eq!(by64.count(net | 77, true), 3);
        assert_eq!(by64.check(net + (1 << 64), true), Ok(()), "the next /64");
        by64.sub(net | 2, true, 0, false);
        assert_eq!(by64.check(net | 0xdead_beef, true), Ok(()), "released by any address of the prefix");
        let mut by128 = Sources::new(64, 3, 128, 1);
        for host in 1..=10u128 {
            assert!(by128.add(net | host, true, 0, false));
        }
        assert_eq!(by128.count(net | 1, true), 1);
        let mut v4 = Sources::new(64, 1, 1, 1);
        assert!(v4.add(0x0a00_0001, false, 0, false));
        assert_eq!(v4.check(0x0a00_0002, false), Ok(()), "the IPv6 prefix does not touch IPv4");
    }

    /// Each source lists its non-assured entries oldest first, through churn that
    /// moves sources between slots (backward-shift deletion): checked against a model
    /// after every step.
    #[test]
    fn each_source_lists_its_unassured_entries_oldest_first() {
        let cap = 48u32;
        let mut s = Sources::new(cap as usize, 1000, 64, 3);
        // entry slot -> (source, unassured); per source, its unassured slots in order.
        let mut live: std::collections::BTreeMap<u32, (u128, bool)> = Default::default();
        let mut order: std::collections::HashMap<u128, Vec<u32>> = Default::default();
        let mut rnd = crate::testutil::xorshift(7);
        for _ in 0..20_000 {
            let x = rnd();
            let slot = (x % u64::from(cap)) as u32;
            let src = u128::from((x >> 8) % 12);
            match live.get(&slot).copied() {
                None => {
                    let un = (x >> 16) & 1 == 0;
                    assert!(s.add(src, false, slot, un));
                    live.insert(slot, (src, un));
                    if un {
                        order.entry(src).or_default().push(slot);
                    }
                }
                Some((a, un)) if (x >> 20).is_multiple_of(3) => {
                    s.relist(a, false, slot, !un);
                    live.insert(slot, (a, !un));
                    let o = order.entry(a).or_default();
                    if un { o.retain(|&e| e != slot) } else { o.push(slot) }
                }
                Some((a, un)) => {
                    s.sub(a, false, slot, un);
                    live.remove(&slot);
                    order.entry(a).or_default().retain(|&e| e != slot);
                }
            }
            for (&a, o) in &order {
                assert_eq!(s.oldest_unassured(a, false), o.first().copied(), "source {a}");
            }
            let listed = s.audit_lists(|e| live.get(&e).is_some_and(|l| l.1)).unwrap();
            assert_eq!(listed as usize, live.values().filter(|l| l.1).count());
        }
    }
}
