//! Admission classes and eviction order: what goes when the table is full.
//!
//! Every entry belongs to a class derived from its state. When an insert needs room,
//! the victim is the oldest entry of the lowest non-empty class, found in O(1) with one
//! FIFO list per class (after VPP's per-class session lists). Assured entries — flows
//! that have seen traffic both ways — are never evicted to admit a new flow
//! (`evict: by-class`). Two naive models exist for comparison: `lru` (one list for
//! all entries, second-chance LRU: how Cilium's LRU map behaves) and `none` (refuse
//! new flows when full: pf, and Linux without early drop).

use crate::raw::{Zeroed, region_of, touch, zeroed_slice};

/// An entry's admission class, lowest (first evicted) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Admission {
    /// TCP that has not completed its handshake (SYN seen, no assuring ACK).
    Embryonic = 0,
    /// UDP, ICMP or another protocol that has seen no reply.
    Unreplied = 1,
    /// TCP after a FIN or RST: FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE.
    Closing = 2,
    /// Traffic seen both ways: an assured TCP connection, a replied UDP/ICMP flow.
    Assured = 3,
}

impl Admission {
    pub const COUNT: usize = 4;
    pub const ALL: [Admission; 4] = [Admission::Embryonic, Admission::Unreplied, Admission::Closing, Admission::Assured];

    pub fn from_u8(v: u8) -> Admission {
        Self::ALL[usize::from(v & 3)]
    }

    pub fn name(self) -> &'static str {
        match self {
            Admission::Embryonic => "embryonic",
            Admission::Unreplied => "unreplied",
            Admission::Closing => "closing",
            Admission::Assured => "assured",
        }
    }
}

/// `conntrack.pressure.evict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    ByClass,
    Lru,
    None,
}

/// Pressure settings (`conntrack.pressure`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    pub evict: Evict,
    /// Largest share of capacity that non-assured entries may hold (by-class only).
    pub embryonic_share: f64,
    /// Fill fraction where non-assured timeouts start shrinking.
    pub adaptive_start: f64,
    /// Fill fraction where they reach the floor.
    pub adaptive_end: f64,
    /// The shortest a shrunken timeout gets, in ticks.
    pub timeout_floor_ticks: u32,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            evict: Evict::ByClass,
            embryonic_share: 0.25,
            adaptive_start: 0.60,
            adaptive_end: 1.00,
            timeout_floor_ticks: crate::time::Duration::from_secs(2).ticks(),
        }
    }
}

impl Pressure {
    /// pf's adaptive factor, `(end - fill) / (end - start)` clamped to [0, 1], as a
    /// fraction of 1024. Only `by-class` adapts: the naive models imitate systems that
    /// do not (Cilium's LRU, pf and Linux without early drop keep their timeouts).
    pub fn scale_1024(&self, len: usize, capacity: usize) -> u32 {
        if self.evict != Evict::ByClass {
            return 1024;
        }
        let fill = len as f64 / capacity.max(1) as f64;
        if fill <= self.adaptive_start {
            return 1024;
        }
        if fill >= self.adaptive_end || self.adaptive_end <= self.adaptive_start {
            return 0;
        }
        ((self.adaptive_end - fill) / (self.adaptive_end - self.adaptive_start) * 1024.0).round() as u32
    }
}

const NIL: u32 = u32::MAX;

/// A listed entry's neighbours. An unlisted slot's link is never read (`push` writes
/// it whole), so the array starts zeroed and untouched, like the table's, and can be
/// offered to huge pages before its first write.
#[derive(Debug, Clone, Copy, bytemuck::Zeroable)]
struct Link {
    prev: u32,
    next: u32,
}

/// FIFO lists of entries by admission class (or one list for all, in `lru` and `none`
/// modes), and live counts per class in every mode.
pub struct ClassLists {
    links: Zeroed<Link>,
    head: [u32; Admission::COUNT],
    tail: [u32; Admission::COUNT],
    counts: [u32; Admission::COUNT],
    per_class: bool,
}

impl ClassLists {
    pub fn new(capacity: usize, evict: Evict) -> ClassLists {
        ClassLists { links: zeroed_slice(capacity), head: [NIL; 4], tail: [NIL; 4], counts: [0; 4], per_class: evict == Evict::ByClass }
    }

    pub fn bytes(&self) -> usize {
        self.links.len() * core::mem::size_of::<Link>()
    }

    /// The link array, as (address, length), so the dataplane can `madvise` it.
    pub(crate) fn region(&self) -> (usize, usize) {
        region_of(&self.links)
    }

    /// Writes every page of the link array (see `Engine::commit`).
    pub(crate) fn commit(&mut self) {
        touch(&mut self.links);
    }

    /// Bytes `new(capacity, …)` allocates.
    pub fn footprint(capacity: usize) -> usize {
        capacity.saturating_mul(core::mem::size_of::<Link>())
    }

    pub fn counts(&self) -> [u32; Admission::COUNT] {
        self.counts
    }

    pub fn count(&self, a: Admission) -> u32 {
        self.counts[a as usize]
    }

    /// Entries in classes below `a` (by-class eviction takes room from those first).
    #[inline]
    pub fn below(&self, a: Admission) -> u32 {
        self.counts[..a as usize].iter().sum()
    }

    /// Entries that are not assured.
    pub fn non_assured(&self) -> u32 {
        self.counts[0] + self.counts[1] + self.counts[2]
    }

    fn list(&self, a: Admission) -> usize {
        if self.per_class { a as usize } else { 0 }
    }

    /// Appends `slot` (a new entry, or one that changed class) at the tail.
    pub fn push(&mut self, slot: u32, a: Admission) {
        let l = self.list(a);
        let t = self.tail[l];
        self.links[slot as usize] = Link { prev: t, next: NIL };
        if t == NIL {
            self.head[l] = slot;
        } else {
            self.links[t as usize].next = slot;
        }
        self.tail[l] = slot;
        self.counts[a as usize] += 1;
    }

    pub fn remove(&mut self, slot: u32, a: Admission) {
        let l = self.list(a);
        let Link { prev, next } = self.links[slot as usize];
        if prev == NIL {
            self.head[l] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail[l] = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        self.counts[a as usize] -= 1;
    }

    /// Moves an entry to another class (to the tail of its list).
    pub fn change(&mut self, slot: u32, from: Admission, to: Admission) {
        if from == to {
            return;
        }
        if self.per_class {
            self.remove(slot, from);
            self.push(slot, to);
        } else {
            self.counts[from as usize] -= 1;
            self.counts[to as usize] += 1;
        }
    }

    /// The oldest entry of the lowest non-empty class below `Assured` (by-class).
    pub fn oldest_non_assured(&self) -> Option<u32> {
        debug_assert!(self.per_class);
        [Admission::Embryonic, Admission::Unreplied, Admission::Closing].iter().map(|&a| self.head[a as usize]).find(|&h| h != NIL)
    }

    /// The entry after `slot` in its list (the next oldest).
    #[inline]
    pub fn next_of(&self, slot: u32) -> Option<u32> {
        let n = self.links[slot as usize].next;
        (n != NIL).then_some(n)
    }

    /// Brings `slot`'s links into cache.
    #[inline]
    pub fn prefetch(&self, slot: u32) {
        crate::raw::prefetch(&self.links[slot as usize]);
    }

    /// The oldest entry of class `a` (by-class mode).
    pub fn head(&self, a: Admission) -> Option<u32> {
        debug_assert!(self.per_class);
        let h = self.head[a as usize];
        (h != NIL).then_some(h)
    }

    /// True in by-class mode (one list per class).
    pub fn per_class(&self) -> bool {
        self.per_class
    }

    /// The head of the single list (`lru` mode).
    pub fn head_all(&self) -> Option<u32> {
        (self.head[0] != NIL).then_some(self.head[0])
    }

    /// Every listed entry, each list from its head (oldest first): the order a
    /// snapshot keeps, so that eviction picks the same victims after a restart. At
    /// most `capacity` entries per list, whatever the links say.
    pub fn in_order(&self) -> impl Iterator<Item = u32> + '_ {
        let lists = if self.per_class { Admission::COUNT } else { 1 };
        (0..lists).flat_map(move |l| {
            let mut at = self.head[l];
            core::iter::from_fn(move || {
                let s = (at != NIL).then_some(at)?;
                at = self.links[s as usize].next;
                Some(s)
            })
            .take(self.links.len())
        })
    }

    /// Checks the lists against the counts: each list walked from its head (at most
    /// `capacity` steps, so a cycle is an error, not a hang) has the length its
    /// classes count, and every link points back. For tests and audits: O(capacity).
    pub fn audit(&self) -> Result<(), String> {
        let lists = if self.per_class { Admission::COUNT } else { 1 };
        for l in 0..lists {
            let expect: u32 = if self.per_class { self.counts[l] } else { self.counts.iter().sum() };
            let (mut n, mut prev, mut at) = (0u32, NIL, self.head[l]);
            while at != NIL {
                if n as usize >= self.links.len() {
                    return Err(format!("class list {l} is longer than the table (a cycle)"));
                }
                let link = self.links[at as usize];
                if link.prev != prev {
                    return Err(format!("class list {l}: entry {at} links back to {} instead of {prev}", link.prev));
                }
                n += 1;
                prev = at;
                at = link.next;
            }
            if self.tail[l] != prev {
                return Err(format!("class list {l}: tail {} but the walk ended at {prev}", self.tail[l]));
            }
            if n != expect {
                return Err(format!("class list {l} holds {n} entries, its counts say {expect}"));
            }
        }
        Ok(())
    }

    /// Moves the head of the single list to its tail (a second chance).
    pub fn rotate(&mut self, slot: u32, a: Admission) {
        self.remove(slot, a);
        self.push(slot, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_per_class_and_lowest_class_first() {
        let mut l = ClassLists::new(8, Evict::ByClass);
        l.push(0, Admission::Assured);
        l.push(1, Admission::Closing);
        l.push(2, Admission::Embryonic);
        l.push(3, Admission::Embryonic);
        assert_eq!(l.oldest_non_assured(), Some(2));
        l.remove(2, Admission::Embryonic);
        assert_eq!(l.oldest_non_assured(), Some(3));
        l.change(3, Admission::Embryonic, Admission::Assured);
        assert_eq!(l.oldest_non_assured(), Some(1));
        assert_eq!(l.counts(), [0, 0, 1, 2]);
        assert_eq!(l.non_assured(), 1);
        l.remove(1, Admission::Closing);
        assert_eq!(l.oldest_non_assured(), None);
    }

    #[test]
    fn one_list_in_lru_mode() {
        let mut l = ClassLists::new(4, Evict::Lru);
        l.push(0, Admission::Assured);
        l.push(1, Admission::Embryonic);
        assert_eq!(l.head_all(), Some(0));
        l.rotate(0, Admission::Assured);
        assert_eq!(l.head_all(), Some(1));
        l.change(1, Admission::Embryonic, Admission::Assured);
        assert_eq!(l.counts(), [0, 0, 0, 2]);
    }

    #[test]
    fn pf_adaptive_scale() {
        let p = Pressure::default();
        assert_eq!(p.scale_1024(50, 100), 1024);
        assert_eq!(p.scale_1024(80, 100), 512);
        assert_eq!(p.scale_1024(100, 100), 0);
    }
}
