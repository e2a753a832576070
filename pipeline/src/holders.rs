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
}

impl Holders {
    /// The non-empty source entries, heaviest first.
    pub fn top_sources(&self) -> impl Iterator<Item = &Held> {
        self.sources.iter().filter(|h| h.entries > 0)
    }

    pub fn top_ports(&self) -> impl Iterator<Item = &Held> {
        self.ports.iter().filter(|h| h.entries > 0)
    }

    /// Several workers' holders as one: counts of the same key added, heaviest first.
    pub fn merged<'a>(all: impl IntoIterator<Item = &'a Holders>) -> Holders {
        let mut s = SpaceSaving::default();
        let mut p = SpaceSaving::default();
        let mut swept = 0u32;
        for h in all {
            swept = swept.saturating_add(h.swept);
            for x in h.top_sources() {
                s.add_n(x.what, x.v6, x.proto, x.entries, x.error);
            }
            for x in h.top_ports() {
                p.add_n(x.what, x.v6, x.proto, x.entries, x.error);
            }
        }
        Holders { sources: s.top(), ports: p.top(), swept }
    }
}

/// Space-Saving over [`COUNTERS`] counters.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    keys: [(u128, bool, u8); COUNTERS],
    counts: [u32; COUNTERS],
    errors: [u32; COUNTERS],
    len: usize,
}

impl Default for SpaceSaving {
    fn default() -> Self {
        SpaceSaving { keys: [(0, false, 0); COUNTERS], counts: [0; COUNTERS], errors: [0; COUNTERS], len: 0 }
    }
}

impl SpaceSaving {
    pub fn add(&mut self, what: u128, v6: bool, proto: u8) {
        self.add_n(what, v6, proto, 1, 0);
    }

    fn add_n(&mut self, what: u128, v6: bool, proto: u8, n: u32, err: u32) {
        let k = (what, v6, proto);
        if let Some(i) = self.keys[..self.len].iter().position(|&x| x == k) {
            self.counts[i] = self.counts[i].saturating_add(n);
            self.errors[i] = self.errors[i].saturating_add(err);
            return;
        }
        if self.len < COUNTERS {
            self.keys[self.len] = k;
            self.counts[self.len] = n;
            self.errors[self.len] = err;
            self.len += 1;
            return;
        }
        // Replace the smallest counter: the newcomer inherits its count as error.
        let (i, &min) = self.counts.iter().enumerate().min_by_key(|&(_, c)| *c).expect("COUNTERS > 0");
        self.keys[i] = k;
        self.counts[i] = min.saturating_add(n);
        self.errors[i] = min.saturating_add(err);
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
        self.len = 0;
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
            &Holders { sources: a.top(), ports: [Held::default(); TOP], swept: 5 },
            &Holders { sources: b.top(), ports: [Held::default(); TOP], swept: 6 },
        ]);
        assert_eq!((m.sources[0].what, m.sources[0].entries, m.swept), (7, 10, 11));
        assert_eq!((m.sources[1].what, m.sources[1].v6), (9, true));
        assert_eq!(m.top_ports().count(), 0);
    }
}
