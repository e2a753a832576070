//! Tombstones: a small fixed-size record of recently removed flows, so that a packet
//! which finds no state can say why — its flow was evicted, expired or closed — instead
//! of looking like a new connection or a stray packet.
//!
//! 8-way sets of one cache line: each record is a word of key fingerprint, why and
//! admission class, and the tick of removal. When a set is full, the record of the
//! lowest class makes way, the oldest among those: a SYN flood churning through
//! embryonic records does not erase the memory of the established flows it may have
//! pushed out. The table forgets gracefully otherwise: a flow removed long ago (more
//! removals than records since) reads as never seen. A lookup of a flow that was never
//! removed matches a record of another flow only if their hashes agree on the set bits
//! and the 27 fingerprint bits: about 8 / 2^27 per lookup, i.e. one wrong `reply_to_*`
//! reason per ~17 million no-state packets (the packet is dropped either way: a
//! tombstone only names the reason). Each record takes 8 bytes: `conntrack.tombstones`
//! records cost 8 bytes each (65,536 by default: 512 KiB per worker).
//!
//! One line a set because under a flood every eviction buries a record in a cold set:
//! with 12-byte records a set spanned two or three lines, of which the eviction's
//! prefetch brought one (`perf`: most of `bury`'s time waited on the second and third).

/// Why an entry went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Why {
    Evicted = 1,
    Expired = 2,
    Closed = 3,
    /// Removed by a reload whose rules no longer allow the flow (`policy.on_reload:
    /// recheck`).
    Revoked = 4,
}

/// The low bits of a record's word: why (3 bits, never 0) and class (2 bits).
const META_BITS: u32 = 5;
const META: u32 = (1 << META_BITS) - 1;

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    /// Fingerprint in the high 27 bits, why in bits 2..5, class in bits 0..2; 0 =
    /// empty (why is never 0).
    word: u32,
    /// Tick of removal (wrapping).
    when: u32,
}

impl Record {
    fn new(fp: u32, when: u32, why: u8, class: u8) -> Record {
        Record { word: (fp & !META) | u32::from(why & 7) << 2 | u32::from(class & 3), when }
    }

    fn fp(self) -> u32 {
        self.word & !META
    }

    fn why(self) -> u8 {
        (self.word >> 2 & 7) as u8
    }

    fn class(self) -> u8 {
        (self.word & 3) as u8
    }

    fn is_empty(self) -> bool {
        self.word == 0
    }

    /// Holds the flow whose fingerprint is `fp` (an empty record holds none: its why
    /// is 0).
    #[inline]
    fn holds(self, fp: u32) -> bool {
        self.word & !META == fp && self.word != 0
    }
}

const WAYS: usize = 8;

/// One cache line of records.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Set([Record; WAYS]);

const _: () = assert!(core::mem::size_of::<Set>() == 64);

pub struct Tombstones {
    sets: Box<[Set]>,
    mask: usize,
    pub hits: u64,
}

impl Tombstones {
    /// Room for about `records` removals; 0 disables.
    fn sets_for(records: usize) -> usize {
        if records == 0 { 0 } else { records.div_ceil(WAYS).next_power_of_two() }
    }

    /// Bytes `new(records)` allocates.
    pub fn footprint(records: usize) -> usize {
        Self::sets_for(records).saturating_mul(core::mem::size_of::<Set>())
    }

    pub fn new(records: usize) -> Tombstones {
        let nsets = Self::sets_for(records);
        Tombstones { sets: vec![Set::default(); nsets].into_boxed_slice(), mask: nsets.saturating_sub(1), hits: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    pub fn bytes(&self) -> usize {
        core::mem::size_of_val(&*self.sets)
    }

    /// Set from a remix of the whole hash, fingerprint from its high 27 bits: the two
    /// are independent, so the fingerprint keeps its full 27 bits inside a set. (The
    /// low five bits of the word carry why and class; a snapshot's fingerprint, once
    /// all 32 bits, matches on the same high bits.)
    #[inline]
    fn split(&self, h: u64) -> (usize, u32) {
        // SplitMix64's finalizer.
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z as usize & self.mask, (h >> 32) as u32 & !META)
    }

    /// Brings the set a key hashed to `h` would be buried in into cache.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if !self.sets.is_empty() {
            crate::raw::prefetch(&self.sets[self.split(h).0]);
        }
    }

    /// Records that the flow whose table hash is `h`, of admission class code `class`
    /// ([`crate::conntrack::pressure::Admission::code`]), went away.
    pub fn bury(&mut self, h: u64, why: Why, class: u8, now_ticks: u32) {
        if self.sets.is_empty() {
            return;
        }
        let (s, fp) = self.split(h);
        let set = &mut self.sets[s].0;
        let way = set.iter().position(|r| r.holds(fp) || r.is_empty()).unwrap_or_else(|| {
            // Lowest class first, then oldest.
            (0..WAYS).min_by_key(|&i| (set[i].class(), u32::MAX - now_ticks.wrapping_sub(set[i].when))).unwrap_or(0)
        });
        set[way] = Record::new(fp, now_ticks, why as u8, class);
    }

    /// Sets in the table (a snapshot's records restore only into as many).
    pub fn sets(&self) -> usize {
        self.sets.len()
    }

    /// Every record, as (set, fingerprint, tick of removal, why, class): what a
    /// snapshot keeps. The fingerprint has its low bit set, as the format has always
    /// written it (27 bits of hash above five the record uses for why and class).
    pub(crate) fn records(&self) -> impl Iterator<Item = (u32, u32, u32, u8, u8)> + '_ {
        self.sets
            .iter()
            .enumerate()
            .flat_map(|(s, set)| set.0.iter().filter(|r| !r.is_empty()).map(move |r| (s as u32, r.fp() | 1, r.when, r.why(), r.class())))
    }

    /// Puts back a record taken by [`Tombstones::records`] in a table of as many sets;
    /// `false` (nothing changed) when its set has no free way, `set` is out of range,
    /// `why` names no reason or `class` no admission class (a record keeps two bits).
    pub(crate) fn put_back(&mut self, set: u32, fp: u32, when: u32, why: u8, class: u8) -> bool {
        let Some(ways) = self.sets.get_mut(set as usize) else { return false };
        if Why::from_u8(why).is_none() || class > 3 {
            return false;
        }
        let fp = fp & !META;
        match ways.0.iter().position(|r| r.holds(fp) || r.is_empty()) {
            Some(i) => {
                ways.0[i] = Record::new(fp, when, why, class);
                true
            }
            None => false,
        }
    }

    /// Why the flow whose hash is `h` went away, if remembered. The record stays: every
    /// later packet of that flow gets the same answer.
    pub fn exhume(&mut self, h: u64) -> Option<(Why, u32)> {
        if self.sets.is_empty() {
            return None;
        }
        let (s, fp) = self.split(h);
        let r = self.sets[s].0.iter().find(|r| r.holds(fp))?;
        self.hits += 1;
        Some((why_of(r.why()), r.when))
    }

    /// What `exhume` would answer, with the removed entry's admission class, without
    /// counting a hit: for explaining a drop after the fact (the deny log).
    pub fn peek(&self, h: u64) -> Option<(Why, u32, u8)> {
        if self.sets.is_empty() {
            return None;
        }
        let (s, fp) = self.split(h);
        let r = self.sets[s].0.iter().find(|r| r.holds(fp))?;
        Some((why_of(r.why()), r.when, r.class()))
    }
}

/// A record's reason (always one [`Why::from_u8`] knows: only `bury` and a checked
/// `put_back` write records).
fn why_of(b: u8) -> Why {
    Why::from_u8(b).unwrap_or(Why::Closed)
}

impl Why {
    /// The reason numbered `b` (as records and snapshots number them), if any.
    pub fn from_u8(b: u8) -> Option<Why> {
        match b {
            1 => Some(Why::Evicted),
            2 => Some(Why::Expired),
            3 => Some(Why::Closed),
            4 => Some(Why::Revoked),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Why::Evicted => "evicted",
            Why::Expired => "expired",
            Why::Closed => "closed",
            Why::Revoked => "revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_why_and_forgets_the_oldest() {
        let mut t = Tombstones::new(8); // one set
        let h = |i: u64| (i << 40) | 0x1234;
        t.bury(h(10), Why::Evicted, 0, 100);
        t.bury(h(11), Why::Expired, 0, 101);
        assert_eq!(t.exhume(h(10)), Some((Why::Evicted, 100)));
        assert_eq!(t.exhume(h(11)), Some((Why::Expired, 101)));
        assert_eq!(t.exhume(h(12)), None);
        for i in 0..8u64 {
            t.bury(h(100 + i), Why::Closed, 0, 200 + i as u32);
        }
        assert_eq!(t.exhume(h(10)), None, "the oldest records made way");
        assert_eq!(t.exhume(h(107)), Some((Why::Closed, 207)));
        assert_eq!(t.hits, 3);
        // An assured flow's record outlives a churn of embryonic ones.
        t.bury(h(500), Why::Evicted, 3, 300);
        for i in 0..100u64 {
            t.bury(h(1000 + i), Why::Evicted, 0, 301 + i as u32);
        }
        assert_eq!(t.exhume(h(500)), Some((Why::Evicted, 300)));
        let mut off = Tombstones::new(0);
        off.bury(1, Why::Evicted, 3, 0);
        assert_eq!(off.exhume(1), None);
    }
}

#[cfg(test)]
mod records {
    use super::*;

    /// Why and class share a word with the fingerprint: every pair comes back as it
    /// went in, through the table and through a snapshot's records.
    #[test]
    fn why_and_class_round_trip_through_records() {
        let whys = [Why::Evicted, Why::Expired, Why::Closed, Why::Revoked];
        let h = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) | 1 << 63;
        let mut t = Tombstones::new(1024);
        for (i, why) in whys.iter().enumerate() {
            for class in 0..4u8 {
                let k = (i * 4) as u64 + u64::from(class);
                t.bury(h(k), *why, class, 1000 + k as u32);
            }
        }
        let mut copy = Tombstones::new(1024);
        for (set, fp, when, why, class) in t.records() {
            assert_eq!(fp & 1, 1, "the snapshot format's fingerprints have their low bit set");
            assert!(copy.put_back(set, fp, when, why, class));
        }
        for (i, why) in whys.iter().enumerate() {
            for class in 0..4u8 {
                let k = (i * 4) as u64 + u64::from(class);
                assert_eq!(t.peek(h(k)), Some((*why, 1000 + k as u32, class)));
                assert_eq!(copy.peek(h(k)), Some((*why, 1000 + k as u32, class)));
            }
        }
        assert_eq!(copy.peek(h(99)), None);
    }

    /// A snapshot written when a record kept all 32 bits of the fingerprint (`(h >> 32)
    /// | 1`) restores into records that the same flows find.
    #[test]
    fn a_full_width_fingerprint_restores() {
        let mut t = Tombstones::new(64);
        let h = 0xdead_beef_1234_5678u64;
        let (set, _) = t.split(h);
        assert!(t.put_back(set as u32, (h >> 32) as u32 | 1, 7, Why::Expired as u8, 3));
        assert_eq!(t.exhume(h), Some((Why::Expired, 7)));
        assert!(!t.put_back(set as u32, 0x100, 7, 0, 0), "a record without a reason is refused");
        assert!(!t.put_back(t.sets() as u32, 0x100, 7, 1, 0), "a set out of range is refused");
        assert!(!t.put_back(set as u32, 0x100, 7, 1, 4), "a class beyond two bits is refused");
    }
}

#[cfg(test)]
mod churn {
    use super::*;

    #[test]
    fn assured_records_survive_a_flood_of_embryonic_ones() {
        let mut t = Tombstones::new(65_536);
        let h = |i: u64| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555).rotate_left(13);
        for i in 0..10_000 {
            t.bury(h(i), Why::Evicted, 3, 1);
        }
        for i in 0..150_000 {
            t.bury(h(1_000_000 + i), Why::Evicted, 0, 2 + i as u32);
        }
        let kept = (0..10_000).filter(|&i| t.exhume(h(i)).is_some()).count();
        assert!(kept >= 9_998, "{kept}");
    }
}
