//! Who fills the table: the originating sources and the destination ports holding the
//! most entries, found by sweeping the table a slice at a time between bursts (never
//! on the packet path) and counting with Space-Saving (Metwally, Agrawal, El Abbadi,
//! 2005): a fixed number of counters, so the memory is bounded whatever the table
//! holds. Any key holding more than 1/[`COUNTERS`] of the swept entries is found; a
//! count may be over by at most the smallest counter (reported as `error`).

/// Counters per kind (sources, ports).
pub const COUNTERS: usize = 64;
/// Holders reported per kind.
pub const TOP: usize = 8;

/// One holder: an address (a source) or a port (`what` = port, with `proto`), and the
/// entries it held in the last sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub what: u128,
    pub v6: bool,
    pub proto: u8,
    pub entries: u32,
    /// How much `entries` may be over the truth.
    pub error: u32,
}

/// The result of one sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holders {
    pub sources: [Held; TOP],
    pub ports: [Held; TOP],
    /// Entries the sweep counted (0: no sweep finished yet).
    pub swept: u32,
    /// The prefix length an IPv6 source was counted by (`per_source_ipv6_prefix`:
    /// `what` is that prefix's first address); 0 when unknown, read as 128.
    pub v6_prefix: u8,
}

impl Holders {
    /// The non-empty source entries, heaviest first.
    pub fn top_sources(&self) -> impl Iterator<Item = &Held> {
        self.sources.iter().filter(|h| h.entries > 0)
    }

    pub fn top_ports(&self) -> impl Iterator<Item = &Held> {
        self.ports.iter().filter(|h| h.entries > 0)
    }

    /// A source holder as text: its address, or for IPv6 counted by a prefix shorter
    /// than 128, the prefix (`2001:db8:66:1::/64`).
    pub fn source_text(&self, x: &Held) -> String {
        let ip = crate::flow::to_ip(x.what, x.v6);
        if x.v6 && (1..128).contains(&self.v6_prefix) { format!("{ip}/{}", self.v6_prefix) } else { ip.to_string() }
    }

    /// Several workers' holders as one: counts of the same key added, heaviest first.
    pub fn merged<'a>(all: impl IntoIterator<Item = &'a Holders>) -> Holders {
        let mut s = SpaceSaving::default();
        let mut p = SpaceSaving::default();
        let (mut swept, mut v6_prefix) = (0u32, 0u8);
        for h in all {
            swept = swept.saturating_add(h.swept);
            v6_prefix = v6_prefix.max(h.v6_prefix);
            for x in h.top_sources() {
                s.add_n(x.what, x.v6, x.proto, x.entries, x.error);
            }
            for x in h.top_ports() {
                p.add_n(x.what, x.v6, x.proto, x.entries, x.error);
            }
        }
        Holders { sources: s.top(), ports: p.top(), swept, v6_prefix }
    }
}

/// Slots of [`SpaceSaving`]'s key index: four per counter, so that with as many stale
/// entries as live ones (then it is rebuilt) it is at most half full.
const INDEX: usize = 4 * COUNTERS;

/// Space-Saving over [`COUNTERS`] counters.
///
/// A sweep adds every live entry twice (its source, its port), so `add` is what a
/// sweep costs, and under a flood of fresh sources nearly every add is a miss that
/// replaces the smallest counter. So a key is found through a small open-addressed
/// index (a few probes, not a search of every counter), and the counters at the
/// smallest count are kept as a bit set (found by one bit scan; rebuilt only when
/// they have all moved up, which amortises to a few operations an add). It chooses
/// exactly as the plain algorithm does — the first counter at the smallest count —
/// which `the_index_and_the_minimum_set_change_nothing` checks against it.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    keys: [(u128, bool, u8); COUNTERS],
    counts: [u32; COUNTERS],
    errors: [u32; COUNTERS],
    len: usize,
    /// Open addressing, linear probing: 0 empty, else a counter's index + 1. An entry
    /// whose counter took another key since is stale: a lookup checks the key.
    index: [u8; INDEX],
    /// Stale entries in `index`; past [`COUNTERS`] the index is rebuilt.
    stale: usize,
    /// With every counter in use: the smallest count, and the counters that hold it.
    min: u32,
    at_min: u64,
}

impl Default for SpaceSaving {
    fn default() -> Self {
        SpaceSaving { keys: [(0, false, 0); COUNTERS], counts: [0; COUNTERS], errors: [0; COUNTERS], len: 0, index: [0; INDEX], stale: 0, min: 0, at_min: 0 }
    }
}

/// A key's home slot in the index.
#[inline]
fn slot_of(k: &(u128, bool, u8)) -> usize {
    let x = (k.0 as u64) ^ ((k.0 >> 64) as u64).rotate_left(29) ^ (u64::from(k.1) << 8 | u64::from(k.2));
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize & (INDEX - 1)
}

impl SpaceSaving {
    pub fn add(&mut self, what: u128, v6: bool, proto: u8) {
        self.add_n(what, v6, proto, 1, 0);
    }

    fn add_n(&mut self, what: u128, v6: bool, proto: u8, n: u32, err: u32) {
        const _: () = assert!(COUNTERS <= 64 && INDEX <= 256 && INDEX >= 3 * COUNTERS, "bit set in a u64, counters in a u8, room in the index");
        let k = (what, v6, proto);
        let mut s = slot_of(&k);
        // At most 2 x COUNTERS + 1 entries are ever in use, so an empty slot ends this.
        for _ in 0..INDEX {
            let e = self.index[s];
            if e == 0 {
                break;
            }
            let i = usize::from(e - 1);
            if self.keys[i] == k {
                self.counts[i] = self.counts[i].saturating_add(n);
                self.errors[i] = self.errors[i].saturating_add(err);
                if self.len == COUNTERS && self.at_min & (1 << i) != 0 && self.counts[i] != self.min {
                    self.at_min &= !(1 << i);
                    if self.at_min == 0 {
                        self.find_min();
                    }
                }
                return;
            }
            s = (s + 1) & (INDEX - 1);
        }
        // A new key, and `s` an empty slot of the index.
        let i = if self.len < COUNTERS {
            let i = self.len;
            (self.keys[i], self.counts[i], self.errors[i]) = (k, n, err);
            self.len += 1;
            if self.len == COUNTERS {
                self.find_min();
            }
            i
        } else {
            // Replace the first counter at the smallest: the newcomer inherits its count
            // as error. The old key's index entry goes stale.
            let i = self.at_min.trailing_zeros() as usize;
            let min = self.min;
            (self.keys[i], self.counts[i], self.errors[i]) = (k, min.saturating_add(n), min.saturating_add(err));
            if self.counts[i] != min {
                self.at_min &= !(1 << i);
                if self.at_min == 0 {
                    self.find_min();
                }
            }
            self.stale += 1;
            i
        };
        self.index[s] = i as u8 + 1;
        if self.stale > COUNTERS {
            self.reindex();
        }
    }

    /// The smallest count and the counters at it (every counter in use).
    fn find_min(&mut self) {
        self.min = self.counts.iter().fold(u32::MAX, |m, &c| m.min(c));
        self.at_min = self.counts.iter().enumerate().fold(0u64, |b, (i, &c)| b | u64::from(c == self.min) << i);
    }

    /// The index again from the counters' keys, without stale entries.
    fn reindex(&mut self) {
        self.index = [0; INDEX];
        for i in 0..self.len {
            let mut s = slot_of(&self.keys[i]);
            while self.index[s] != 0 {
                s = (s + 1) & (INDEX - 1);
            }
            self.index[s] = i as u8 + 1;
        }
        self.stale = 0;
    }

    /// The [`TOP`] heaviest, heaviest first.
    pub fn top(&self) -> [Held; TOP] {
        let mut idx = [0usize; COUNTERS];
        for (k, i) in idx.iter_mut().enumerate() {
            *i = k;
        }
        let idx = &mut idx[..self.len];
        idx.sort_unstable_by_key(|&i| (core::cmp::Reverse(self.counts[i]), self.keys[i].0, self.keys[i].2));
        let mut out = [Held::default(); TOP];
        for (o, &i) in out.iter_mut().zip(idx.iter()) {
            let (what, v6, proto) = self.keys[i];
            *o = Held { what, v6, proto, entries: self.counts[i], error: self.errors[i] };
        }
        out
    }

    pub fn clear(&mut self) {
        *self = SpaceSaving::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heavy_hitters_are_found_among_many_small_ones() {
        let mut s = SpaceSaving::default();
        // 10,000 sources with one entry each, and three that hold thousands.
        for i in 0..30_000u128 {
            match i % 10 {
                0 => s.add(1, false, 0),
                1 => s.add(2, false, 0),
                2 if i % 20 == 2 => s.add(3, false, 0),
                _ => s.add(1000 + i, false, 0),
            }
        }
        let top = s.top();
        assert_eq!(top[..3].iter().map(|h| h.what).collect::<Vec<_>>(), [1, 2, 3]);
        for h in &top[..3] {
            let truth = match h.what {
                1 | 2 => 3000,
                _ => 1500,
            };
            assert!(h.entries >= truth && h.entries - h.error <= truth, "{h:?}");
        }
    }

    /// The plain algorithm: a search of every counter, the first smallest replaced.
    struct Plain {
        keys: Vec<(u128, bool, u8)>,
        counts: Vec<u32>,
        errors: Vec<u32>,
    }

    impl Plain {
        fn add_n(&mut self, k: (u128, bool, u8), n: u32, err: u32) {
            if let Some(i) = self.keys.iter().position(|&x| x == k) {
                self.counts[i] = self.counts[i].saturating_add(n);
                self.errors[i] = self.errors[i].saturating_add(err);
            } else if self.keys.len() < COUNTERS {
                self.keys.push(k);
                self.counts.push(n);
                self.errors.push(err);
            } else {
                let (i, &min) = self.counts.iter().enumerate().min_by_key(|&(_, c)| *c).unwrap();
                self.keys[i] = k;
                self.counts[i] = min.saturating_add(n);
                self.errors[i] = min.saturating_add(err);
            }
        }
    }

    proptest::proptest! {
        /// Streams of heavy keys among many light ones (a flood's fresh sources),
        /// with weights, errors and counts near saturation: every counter, key and
        /// error as the plain algorithm leaves them, after every add.
        #[test]
        fn the_index_and_the_minimum_set_change_nothing(
            adds in proptest::collection::vec((0u32..400, 0u32..4, proptest::bool::weighted(0.05)), 1..3000),
            big in proptest::bool::weighted(0.1),
        ) {
            let mut s = SpaceSaving::default();
            let mut p = Plain { keys: vec![], counts: vec![], errors: vec![] };
            for (i, &(key, w, heavy)) in adds.iter().enumerate() {
                // Keys 0..8 are heavy hitters; the rest mostly new.
                let what = if heavy || key < 8 { u128::from(key % 8) } else { u128::from(key) + (i as u128) * 1000 };
                let k = (what << 64 | what, key % 3 == 0, (key % 5) as u8);
                let n = if big { u32::MAX - 3 + w } else { w.max(1) };
                s.add_n(k.0, k.1, k.2, n, w);
                p.add_n(k, n, w);
                proptest::prop_assert_eq!(&s.keys[..s.len], &p.keys[..]);
                proptest::prop_assert_eq!(&s.counts[..s.len], &p.counts[..]);
                proptest::prop_assert_eq!(&s.errors[..s.len], &p.errors[..]);
            }
        }
    }

    #[test]
    fn merging_adds_the_same_key_over_workers() {
        let mut a = SpaceSaving::default();
        let mut b = SpaceSaving::default();
        for _ in 0..5 {
            a.add(7, false, 0);
            b.add(7, false, 0);
        }
        b.add(9, true, 0);
        let m = Holders::merged([
            &Holders { sources: a.top(), ports: [Held::default(); TOP], swept: 5, v6_prefix: 64 },
            &Holders { sources: b.top(), ports: [Held::default(); TOP], swept: 6, v6_prefix: 64 },
        ]);
        assert_eq!((m.sources[0].what, m.sources[0].entries, m.swept), (7, 10, 11));
        assert_eq!((m.sources[1].what, m.sources[1].v6), (9, true));
        assert_eq!(m.top_ports().count(), 0);
    }
}
