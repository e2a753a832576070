//! The per-core fragment table: later fragments of a datagram follow the verdict that
//! the first fragment (the one with the transport header) received.
//!
//! Holdfast does not reassemble (Linux conntrack does, through nf_defrag): a bump in the
//! wire forwards fragments as they come. The table is small, 4-way set-associative, and
//! bounded; when a set is full the entry closest to expiry is replaced and the
//! replacement is counted. A later fragment that arrives before its first fragment, or
//! after its record was replaced or expired, is dropped as `fragment_unmatched`.

use crate::flow::FlowHasher;
use crate::verdict::Verdict;

const WAYS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FragKey {
    src: u128,
    dst: u128,
    ident: u32,
    proto: u8,
    v6: bool,
    vlan: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: FragKey,
    verdict: Verdict,
    /// Expiry tick (wrapping); valid only when `used`.
    expires: u32,
    used: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Entry { key: FragKey::default(), verdict: Verdict::Drop(crate::verdict::DropReason::FragmentUnmatched), expires: 0, used: false }
    }
}

pub(crate) struct FragTable {
    sets: Box<[[Entry; WAYS]]>,
    mask: usize,
    timeout_ticks: u32,
    hasher: FlowHasher,
    /// Live records replaced to make room (the table's limit being hit).
    pub evictions: u64,
}

/// The identity of a datagram: RFC 791 (src, dst, protocol, identification).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram {
    pub src: u128,
    pub dst: u128,
    pub ident: u32,
    pub proto: u8,
    pub v6: bool,
    pub vlan: u32,
}

impl FragTable {
    /// Records made from now on live `timeout_ticks` (a reload).
    pub(crate) fn set_timeout(&mut self, timeout_ticks: u32) {
        self.timeout_ticks = timeout_ticks;
    }

    fn sets_for(capacity: usize) -> usize {
        capacity.div_ceil(WAYS).next_power_of_two().max(1)
    }

    /// Bytes `new(capacity, …)` allocates.
    pub(crate) fn footprint(capacity: usize) -> usize {
        Self::sets_for(capacity).saturating_mul(core::mem::size_of::<[Entry; WAYS]>())
    }

    pub(crate) fn bytes(&self) -> usize {
        core::mem::size_of_val(&*self.sets)
    }

    pub(crate) fn new(capacity: usize, timeout_ticks: u32, seed: u64) -> FragTable {
        let nsets = Self::sets_for(capacity);
        FragTable {
            sets: vec![[Entry::default(); WAYS]; nsets].into_boxed_slice(),
            mask: nsets - 1,
            timeout_ticks,
            hasher: FlowHasher::new(seed ^ 0x6672_6167),
            evictions: 0,
        }
    }

    fn key(d: &Datagram) -> FragKey {
        FragKey { src: d.src, dst: d.dst, ident: d.ident, proto: d.proto, v6: d.v6, vlan: d.vlan }
    }

    fn set_of(&self, k: &FragKey) -> usize {
        let fk = crate::flow::FlowKey { addr: [k.src, k.dst], port: [k.ident as u16, (k.ident >> 16) as u16], proto: k.proto, v6: k.v6, vlan: k.vlan };
        self.hasher.hash(&fk) as usize & self.mask
    }

    /// Records the verdict of a first fragment.
    pub(crate) fn record(&mut self, d: &Datagram, verdict: Verdict, now_ticks: u32) {
        let k = Self::key(d);
        let s = self.set_of(&k);
        let expires = now_ticks.wrapping_add(self.timeout_ticks);
        let set = &mut self.sets[s];
        let live = |e: &Entry| e.used && (e.expires.wrapping_sub(now_ticks) as i32) > 0;
        let way = set.iter().position(|e| e.used && e.key == k).or_else(|| set.iter().position(|e| !live(e))).unwrap_or_else(|| {
            self.evictions += 1;
            // Replace the record closest to expiry.
            (0..WAYS).min_by_key(|&i| set[i].expires.wrapping_sub(now_ticks) as i32).unwrap_or(0)
        });
        set[way] = Entry { key: k, verdict, expires, used: true };
    }

    /// The verdict recorded for the datagram of a later fragment, if still known.
    pub(crate) fn lookup(&self, d: &Datagram, now_ticks: u32) -> Option<Verdict> {
        let k = Self::key(d);
        self.sets[self.set_of(&k)].iter().find(|e| e.used && e.key == k && (e.expires.wrapping_sub(now_ticks) as i32) > 0).map(|e| e.verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{DropReason, PassKind};

    fn dg(ident: u32) -> Datagram {
        Datagram { src: 1, dst: 2, ident, proto: 17, v6: false, vlan: 0 }
    }

    #[test]
    fn later_fragments_follow_and_expire() {
        let mut t = FragTable::new(64, 30 * 64, 9);
        t.record(&dg(7), Verdict::Pass(PassKind::New), 1000);
        t.record(&dg(8), Verdict::Drop(DropReason::Policy), 1000);
        assert_eq!(t.lookup(&dg(7), 1001), Some(Verdict::Pass(PassKind::New)));
        assert_eq!(t.lookup(&dg(8), 1001), Some(Verdict::Drop(DropReason::Policy)));
        assert_eq!(t.lookup(&dg(9), 1001), None);
        assert_eq!(t.lookup(&dg(7), 1000 + 30 * 64), None, "expired after the fragment timeout");
    }

    #[test]
    fn full_sets_replace_and_count() {
        let mut t = FragTable::new(4, 1000, 1); // one set of 4
        for i in 0..6 {
            t.record(&dg(i), Verdict::Pass(PassKind::New), i);
        }
        assert_eq!(t.evictions, 2);
        assert_eq!(t.lookup(&dg(0), 10), None);
        assert_eq!(t.lookup(&dg(5), 10), Some(Verdict::Pass(PassKind::New)));
    }
}
