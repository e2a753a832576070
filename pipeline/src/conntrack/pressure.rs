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
    /// UDP, ICMP or another protocol that has seen a reply but is no stream (Linux's
    /// stream rule: still active 2 s after creation; ICMP never is one): a request
    /// answered, its exchange most likely done. Lowest because it is worth least and
    /// costs a blind sender one spoofed packet: an inside server answers queries from
    /// any address it is allowed to hear.
    Replied = 0,
    /// TCP that has not completed its handshake (SYN seen, no assuring ACK).
    Embryonic = 1,
    /// UDP, ICMP or another protocol that has seen no reply.
    Unreplied = 2,
    /// TCP after a FIN or RST: FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE.
    Closing = 3,
    /// An assured TCP connection (handshake completed), or a UDP or other non-ICMP
    /// stream (a reply, and still active 2 s after creation).
    Assured = 4,
}

impl Admission {
    pub const COUNT: usize = 5;
    pub const ALL: [Admission; Self::COUNT] = [Admission::Replied, Admission::Embryonic, Admission::Unreplied, Admission::Closing, Admission::Assured];
    /// The classes a newcomer may take room from, in the order it takes it.
    pub const EVICTABLE: [Admission; Self::COUNT - 1] = [Admission::Replied, Admission::Embryonic, Admission::Unreplied, Admission::Closing];

    pub fn from_u8(v: u8) -> Admission {
        Self::ALL[usize::from(v).min(Self::COUNT - 1)]
    }

    pub fn name(self) -> &'static str {
        match self {
            Admission::Replied => "replied",
            Admission::Embryonic => "embryonic",
            Admission::Unreplied => "unreplied",
            Admission::Closing => "closing",
            Admission::Assured => "assured",
        }
    }

    /// The class in the two bits a tombstone (and a snapshot's tombstone) keeps: the
    /// codes from before `Replied` existed. `Replied` shares 0 with `Embryonic`, the
    /// lowest either way; the flow's protocol tells them apart ([`Admission::from_code`]).
    pub fn code(self) -> u8 {
        match self {
            Admission::Replied | Admission::Embryonic => 0,
            Admission::Unreplied => 1,
            Admission::Closing => 2,
            Admission::Assured => 3,
        }
    }

    /// The class a two-bit [`Admission::code`] stands for, for a flow of TCP or not.
    pub fn from_code(code: u8, tcp: bool) -> Admission {
        match code & 3 {
            0 if tcp => Admission::Embryonic,
            0 => Admission::Replied,
            1 => Admission::Unreplied,
            2 => Admission::Closing,
            _ => Admission::Assured,
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
    /// Largest share of capacity that assured non-TCP flows (streams) may hold
    /// (by-class only): a stream beyond it stays `Replied`, evicted first.
    pub stream_share: f64,
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
            stream_share: 0.5,
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

/// Lists: one per admission class (one for all in `lru` and `none` modes), for each
/// address family.
const LISTS: usize = 2 * Admission::COUNT;

/// FIFO lists of entries by admission class (or one list for all, in `lru` and `none`
/// modes) and address family, and live counts per class in every mode.
///
/// The families have lists of their own because IPv6 flows have a room of their own
/// to make: a limited IPv6 address pool (`conntrack.ipv6_share`) fills before the
/// table does, and then a new IPv6 flow needs an IPv6 victim — found in O(1) at the
/// head of its family's lists, as a new flow on a full table finds any. Which of two
/// families' heads of one class is older is the engine's call (it reads their entries).
pub struct ClassLists {
    links: Zeroed<Link>,
    /// By [`ClassLists::list`]: IPv4 lists first, then IPv6.
    head: [u32; LISTS],
    tail: [u32; LISTS],
    /// Entries per class and family (`[v6][class]`).
    counts: [[u32; Admission::COUNT]; 2],
    per_class: bool,
}

impl ClassLists {
    pub fn new(capacity: usize, evict: Evict) -> ClassLists {
        ClassLists {
            links: zeroed_slice(capacity),
            head: [NIL; LISTS],
            tail: [NIL; LISTS],
            counts: [[0; Admission::COUNT]; 2],
            per_class: evict == Evict::ByClass,
        }
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

    /// Entries per class, both families.
    pub fn counts(&self) -> [u32; Admission::COUNT] {
        core::array::from_fn(|i| self.counts[0][i] + self.counts[1][i])
    }

    pub fn count(&self, a: Admission) -> u32 {
        self.counts[0][a as usize] + self.counts[1][a as usize]
    }

    /// Entries in classes below `a` (by-class eviction takes room from those first).
    #[inline]
    pub fn below(&self, a: Admission) -> u32 {
        self.counts[0][..a as usize].iter().sum::<u32>() + self.counts[1][..a as usize].iter().sum::<u32>()
    }

    /// Entries that are not assured.
    pub fn non_assured(&self) -> u32 {
        self.below(Admission::Assured)
    }

    /// The lists in use: every class of both families, or one per family.
    fn lists(&self) -> &'static [usize] {
        const _: () = assert!(LISTS == 10);
        if self.per_class { &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] } else { &[0, Admission::COUNT] }
    }

    fn list(&self, a: Admission, v6: bool) -> usize {
        usize::from(v6) * Admission::COUNT + if self.per_class { a as usize } else { 0 }
    }

    /// Appends `slot` (a new entry, or one that changed class) at the tail.
    pub fn push(&mut self, slot: u32, a: Admission, v6: bool) {
        let l = self.list(a, v6);
        let t = self.tail[l];
        self.links[slot as usize] = Link { prev: t, next: NIL };
        if t == NIL {
            self.head[l] = slot;
        } else {
            self.links[t as usize].next = slot;
        }
        self.tail[l] = slot;
        self.counts[usize::from(v6)][a as usize] += 1;
    }

    pub fn remove(&mut self, slot: u32, a: Admission, v6: bool) {
        let l = self.list(a, v6);
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
        self.counts[usize::from(v6)][a as usize] -= 1;
    }

    /// Moves an entry to another class (to the tail of its list).
    pub fn change(&mut self, slot: u32, from: Admission, to: Admission, v6: bool) {
        if from == to {
            return;
        }
        if self.per_class {
            self.remove(slot, from, v6);
            self.push(slot, to, v6);
        } else {
            self.counts[usize::from(v6)][from as usize] -= 1;
            self.counts[usize::from(v6)][to as usize] += 1;
        }
    }

    /// The oldest IPv4 and IPv6 entries (list heads) of the lowest class below
    /// `Assured` that either family has (by-class): the victim is one of the two.
    #[inline]
    pub fn oldest_non_assured(&self) -> Option<(Option<u32>, Option<u32>)> {
        Admission::EVICTABLE.iter().map(|&a| (self.head(a, false), self.head(a, true))).find(|&(v4, v6)| v4.is_some() || v6.is_some())
    }

    /// The oldest IPv6 entry of the lowest non-empty class below `Assured` (by-class):
    /// the victim when the IPv6 address pool is full.
    pub fn oldest_non_assured_v6(&self) -> Option<u32> {
        Admission::EVICTABLE.iter().find_map(|&a| self.head(a, true))
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

    /// The oldest entry of class `a` and family `v6` (by-class mode).
    pub fn head(&self, a: Admission, v6: bool) -> Option<u32> {
        debug_assert!(self.per_class);
        let h = self.head[self.list(a, v6)];
        (h != NIL).then_some(h)
    }

    /// True in by-class mode (one list per class).
    pub fn per_class(&self) -> bool {
        self.per_class
    }

    /// The head of the family's single list (`lru` mode).
    pub fn head_all(&self, v6: bool) -> Option<u32> {
        let h = self.head[self.list(Admission::ALL[0], v6)];
        (h != NIL).then_some(h)
    }

    /// Every listed entry, each list from its head (oldest first): the order a
    /// snapshot keeps, so that eviction picks the same victims after a restart. At
    /// most `capacity` entries per list, whatever the links say.
    pub fn in_order(&self) -> impl Iterator<Item = u32> + '_ {
        self.lists().iter().flat_map(move |&l| {
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
        for &l in self.lists() {
            let family = &self.counts[l / Admission::COUNT];
            let expect: u32 = if self.per_class { family[l % Admission::COUNT] } else { family.iter().sum() };
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

    /// Moves the head of the family's single list to its tail (a second chance).
    pub fn rotate(&mut self, slot: u32, a: Admission, v6: bool) {
        self.remove(slot, a, v6);
        self.push(slot, a, v6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_per_class_and_lowest_class_first() {
        let mut l = ClassLists::new(8, Evict::ByClass);
        l.push(0, Admission::Assured, false);
        l.push(1, Admission::Closing, false);
        l.push(2, Admission::Embryonic, false);
        l.push(3, Admission::Embryonic, false);
        assert_eq!(l.oldest_non_assured(), Some((Some(2), None)));
        l.remove(2, Admission::Embryonic, false);
        assert_eq!(l.oldest_non_assured(), Some((Some(3), None)));
        l.change(3, Admission::Embryonic, Admission::Assured, false);
        assert_eq!(l.oldest_non_assured(), Some((Some(1), None)));
        assert_eq!(l.counts(), [0, 0, 0, 1, 2]);
        assert_eq!(l.non_assured(), 1);
        l.push(4, Admission::Replied, false);
        assert_eq!(l.oldest_non_assured(), Some((Some(4), None)), "an answered query goes before a closing connection");
        l.remove(4, Admission::Replied, false);
        l.remove(1, Admission::Closing, false);
        assert_eq!(l.oldest_non_assured(), None);
        l.audit().unwrap();
    }

    #[test]
    fn two_bit_codes_name_every_class_given_the_protocol() {
        for a in Admission::ALL {
            let tcp = !matches!(a, Admission::Replied | Admission::Unreplied);
            assert_eq!(Admission::from_code(a.code(), tcp), a);
            assert_eq!(Admission::from_u8(a as u8), a);
        }
        assert_eq!(Admission::from_code(0, false), Admission::Replied);
        assert_eq!(Admission::from_code(0, true), Admission::Embryonic);
    }

    #[test]
    fn each_family_has_its_lists_and_the_lowest_class_of_either_comes_first() {
        let mut l = ClassLists::new(8, Evict::ByClass);
        l.push(0, Admission::Unreplied, false);
        l.push(1, Admission::Unreplied, true);
        l.push(2, Admission::Closing, true);
        assert_eq!(l.oldest_non_assured(), Some((Some(0), Some(1))));
        assert_eq!(l.oldest_non_assured_v6(), Some(1));
        l.push(3, Admission::Embryonic, true);
        assert_eq!(l.oldest_non_assured(), Some((None, Some(3))), "an IPv6 embryonic entry before IPv4 unreplied ones");
        assert_eq!(l.oldest_non_assured_v6(), Some(3));
        l.change(3, Admission::Embryonic, Admission::Assured, true);
        l.remove(1, Admission::Unreplied, true);
        assert_eq!(l.oldest_non_assured_v6(), Some(2));
        assert_eq!((l.counts(), l.non_assured(), l.below(Admission::Closing)), ([0, 0, 1, 1, 1], 2, 1));
        assert_eq!(l.in_order().collect::<Vec<_>>(), [0, 2, 3]);
        l.audit().unwrap();
    }

    #[test]
    fn one_list_in_lru_mode() {
        let mut l = ClassLists::new(4, Evict::Lru);
        l.push(0, Admission::Assured, false);
        l.push(1, Admission::Embryonic, false);
        l.push(2, Admission::Embryonic, true);
        assert_eq!((l.head_all(false), l.head_all(true)), (Some(0), Some(2)));
        l.rotate(0, Admission::Assured, false);
        assert_eq!(l.head_all(false), Some(1));
        l.change(1, Admission::Embryonic, Admission::Assured, false);
        assert_eq!(l.counts(), [0, 1, 0, 0, 2]);
        l.audit().unwrap();
    }

    #[test]
    fn pf_adaptive_scale() {
        let p = Pressure::default();
        assert_eq!(p.scale_1024(50, 100), 1024);
        assert_eq!(p.scale_1024(80, 100), 512);
        assert_eq!(p.scale_1024(100, 100), 0);
    }
}
