//! Per-source accounting for `conntrack.per_source_limit`: how many live entries each
//! source address created, exactly.
//!
//! Every live entry has one source, so there are never more distinct sources than
//! entries: an open-addressing table with 1.5x capacity slots (rounded up to a power of
//! two) never fills, and linear probing with backward-shift deletion keeps lookups short
//! without tombstones. Sources are identified by a 64-bit seeded hash of the address:
//! two addresses share a count only if their hashes collide (about n^2 / 2^65 for n
//! sources — never, in practice), and the seed is secret, so nobody can aim for it.

use crate::flow::FlowHasher;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    /// Hash of the address; 0 = empty.
    key: u64,
    count: u32,
    _pad: u32,
}

pub struct Sources {
    slots: Box<[Slot]>,
    mask: usize,
    hasher: FlowHasher,
    pub limit: u32,
}

impl Sources {
    /// `limit` 0 disables accounting (and allocates nothing).
    pub fn new(capacity: usize, limit: u32, seed: u64) -> Sources {
        let n = if limit == 0 { 0 } else { (capacity + capacity / 2).next_power_of_two().max(2) };
        Sources { slots: vec![Slot::default(); n].into_boxed_slice(), mask: n.saturating_sub(1), hasher: FlowHasher::new(seed ^ 0x5eed_50c5), limit }
    }

    pub fn bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots)
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    #[inline]
    fn key(&self, addr: u128, v6: bool) -> u64 {
        let k = crate::flow::FlowKey { addr: [addr, 0], port: [0, 0], proto: 0, v6, vlan: 0 };
        self.hasher.hash(&k) | 1
    }

    fn find(&self, key: u64) -> (usize, bool) {
        let mut i = key as usize & self.mask;
        loop {
            let k = self.slots[i].key;
            if k == key {
                return (i, true);
            }
            if k == 0 {
                return (i, false);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Live entries created by this source.
    pub fn count(&self, addr: u128, v6: bool) -> u32 {
        if !self.enabled() {
            return 0;
        }
        let (i, found) = self.find(self.key(addr, v6));
        if found { self.slots[i].count } else { 0 }
    }

    /// True when the source may create one more entry.
    pub fn admits(&self, addr: u128, v6: bool) -> bool {
        !self.enabled() || self.count(addr, v6) < self.limit
    }

    pub fn add(&mut self, addr: u128, v6: bool) {
        if !self.enabled() {
            return;
        }
        let key = self.key(addr, v6);
        let (i, found) = self.find(key);
        if found {
            self.slots[i].count += 1;
        } else {
            self.slots[i] = Slot { key, count: 1, _pad: 0 };
        }
    }

    pub fn sub(&mut self, addr: u128, v6: bool) {
        if !self.enabled() {
            return;
        }
        let (mut i, found) = self.find(self.key(addr, v6));
        if !found {
            debug_assert!(false, "removing an entry of an unknown source");
            return;
        }
        self.slots[i].count -= 1;
        if self.slots[i].count > 0 {
            return;
        }
        // Backward-shift deletion: pull later members of the cluster into the hole.
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let k = self.slots[j].key;
            if k == 0 {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_with_churn() {
        let mut s = Sources::new(64, 3, 5);
        let mut model = std::collections::HashMap::new();
        let mut x = 99u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = u128::from(x % 40);
            let live: u32 = model.values().sum();
            if !x.is_multiple_of(3) && live < 64 {
                s.add(a, false);
                *model.entry(a).or_insert(0u32) += 1;
            } else if let Some((&k, _)) = model.iter().find(|(_, c)| **c > 0) {
                s.sub(k, false);
                *model.get_mut(&k).unwrap() -= 1;
            }
            for (k, c) in &model {
                assert_eq!(s.count(*k, false), *c);
            }
        }
        assert!(Sources::new(10, 0, 1).admits(1, false));
    }
}
