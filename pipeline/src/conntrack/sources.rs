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
    _pad: u32,
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
        Self::slots_for(capacity, limit).saturating_mul(core::mem::size_of::<Slot>())
    }

    /// `limit` 0 disables accounting (and allocates nothing).
    /// `prefix_v6` (1..=128, clamped) is how many leading bits name an IPv6 source.
    pub(crate) fn new(capacity: usize, limit: u32, prefix_v6: u8, seed: u64) -> Sources {
        let n = Self::slots_for(capacity, limit);
        Sources { slots: zeroed_slice(n), mask: n.saturating_sub(1), hasher: FlowHasher::new(seed ^ 0x5eed_50c5), limit, prefix_v6 }
    }

    pub(crate) fn bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots)
    }

    /// The slot array, as (address, length), so the dataplane can `madvise` it.
    pub(crate) fn region(&self) -> (usize, usize) {
        region_of(&self.slots)
    }

    /// Writes every page of the slot array (see `Engine::commit`).
    pub(crate) fn commit(&mut self) {
        touch(&mut self.slots);
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

    /// Charges one entry to the source. Succeeds whenever [`Sources::check`] did
    /// (removals in between only free slots); `false` otherwise, with nothing charged.
    pub(crate) fn add(&mut self, addr: u128, v6: bool) -> bool {
        if !self.enabled() {
            return true;
        }
        let key = self.key(addr, v6);
        match self.find(key) {
            Probe::Found(i) => self.slots[i].count += 1,
            Probe::Free(i) => self.slots[i] = Slot { key, count: 1, _pad: 0 },
            Probe::Exhausted => return false,
        }
        true
    }

    /// Releases one entry charged to the source.
    pub(crate) fn sub(&mut self, addr: u128, v6: bool) {
        if !self.enabled() {
            return;
        }
        let Probe::Found(mut i) = self.find(self.key(addr, v6)) else {
            debug_assert!(false, "releasing an entry of a source that holds none");
            return;
        };
        self.slots[i].count -= 1;
        if self.slots[i].count > 0 {
            return;
        }
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
                assert!(s.add(a, false));
                *model.entry(a).or_insert(0u32) += 1;
            } else if let Some((&k, _)) = model.iter().find(|(_, c)| **c > 0) {
                s.sub(k, false);
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
                    assert!(s.add(a, false));
                    added += 1;
                }
                Err(r) => {
                    assert_eq!(r, Refusal::TableFull);
                    assert!(!s.add(a, false), "add agrees with check");
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
                s.sub(a, false);
            }
        }
        assert!(s.is_empty());
    }

    #[test]
    fn the_limit_is_a_refusal_of_its_own() {
        let mut s = Sources::new(64, 2, 64, 1);
        assert!(s.add(9, false) && s.add(9, false));
        assert_eq!(s.check(9, false), Err(Refusal::Limit));
        assert_eq!(s.check(10, false), Ok(()));
        s.sub(9, false);
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
            assert!(by64.add(net | host, true));
        }
        assert_eq!(by64.check(net | 0xdead_beef, true), Err(Refusal::Limit), "a fourth address of the /64");
        assert_eq!(by64.count(net | 77, true), 3);
        assert_eq!(by64.check(net + (1 << 64), true), Ok(()), "the next /64");
        by64.sub(net | 2, true);
        assert_eq!(by64.check(net | 0xdead_beef, true), Ok(()), "released by any address of the prefix");
        let mut by128 = Sources::new(64, 3, 128, 1);
        for host in 1..=10u128 {
            assert!(by128.add(net | host, true));
        }
        assert_eq!(by128.count(net | 1, true), 1);
        let mut v4 = Sources::new(64, 1, 1, 1);
        assert!(v4.add(0x0a00_0001, false));
        assert_eq!(v4.check(0x0a00_0002, false), Ok(()), "the IPv6 prefix does not touch IPv4");
    }
}
