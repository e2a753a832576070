//! A hierarchical timer wheel over entry indices, for expiry that is exact and costs
//! bounded work per call, with nothing to do per packet.
//!
//! Six levels of 64 slots; a level-`k` slot spans `64^k` ticks, so the wheel reaches
//! 2^36 ticks (34 years at 1/64 s). Occupied slots are found with one bitmap per level,
//! so empty stretches of time cost nothing. The layout follows tokio's timer wheel.
//!
//! Entries are armed lazily (VPP's insight, `acl_multicore_doc.md`): a packet only
//! writes "last seen" into its entry. When a slot fires, the owner recomputes the true
//! deadline and either removes the entry or re-arms it later. Only a change to a
//! *shorter* timeout (FIN, RST, …) re-arms at once.

use crate::raw::{Zeroed, zeroed_slice};

pub(crate) const LEVELS: usize = 6;
pub(crate) const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
const LISTS: usize = LEVELS * SLOTS;

/// Node of the intrusive doubly linked slot lists. Indices below `cap` are entries;
/// `cap + list` are the list heads (sentinels). A zeroed node is "not armed": an armed
/// entry's ring holds its list's sentinel, so its `prev` and `next` differ unless both
/// are that sentinel (at or above `cap`). An unarmed node with `prev == next < cap`
/// holds a value for the table ([`Wheel::set_spare`]).
///
/// 8 bytes. Which list an entry is in is not stored: only removal needs it, when the
/// list becomes empty, and then both neighbours are its sentinel (a list id cost 4
/// bytes an entry). Nor is its deadline: the wheel never reads it — a due slot hands
/// its entries back and the owner works out the true deadline from the entry — and an
/// owner that wants a timer earlier re-arms it rather than compare first (4 more).
#[derive(Debug, Clone, Copy, Default, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct Node {
    prev: u32,
    next: u32,
}

const _: () = assert!(core::mem::size_of::<Node>() == 8);

pub(crate) struct Wheel {
    nodes: Zeroed<Node>,
    cap: u32,
    occupied: [u64; LEVELS],
    /// Ticks processed so far (absolute, non-wrapping).
    elapsed: u64,
    armed: usize,
}

impl Wheel {
    /// Bytes a wheel over `cap` entries allocates.
    pub(crate) fn footprint(cap: usize) -> usize {
        cap.saturating_add(LISTS).saturating_mul(core::mem::size_of::<Node>())
    }

    pub(crate) fn new(cap: usize, now_ticks: u64) -> Wheel {
        assert!(cap < (u32::MAX as usize) - LISTS, "capacity too large for 32-bit indices");
        let mut nodes: Zeroed<Node> = zeroed_slice(cap + LISTS);
        for l in 0..LISTS {
            let s = (cap + l) as u32;
            nodes[cap + l] = Node { prev: s, next: s };
        }
        Wheel { nodes, cap: cap as u32, occupied: [0; LEVELS], elapsed: now_ticks, armed: 0 }
    }

    /// Commits the node array's pages now.
    pub(crate) fn commit(&mut self) {
        crate::raw::touch(&mut self.nodes);
    }

    /// Memory region of the node array (for `madvise`).
    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    #[cfg(test)]
    pub(crate) fn elapsed(&self) -> u64 {
        self.elapsed
    }

    pub(crate) fn armed_count(&self) -> usize {
        self.armed
    }

    pub(crate) fn is_armed(&self, idx: u32) -> bool {
        let n = &self.nodes[idx as usize];
        n.prev != n.next || n.next >= self.cap
    }

    /// Converts a wrapping tick to absolute, relative to `elapsed` (valid within
    /// +-2^31 ticks, i.e. the 365-day timeout limit).
    pub(crate) fn abs(&self, t: u32) -> u64 {
        let delta = t.wrapping_sub(self.elapsed as u32) as i32;
        self.elapsed.wrapping_add_signed(i64::from(delta))
    }

    /// Arms `idx` to fire at absolute tick `when` (a past `when` fires at the next poll).
    pub(crate) fn insert(&mut self, idx: u32, when: u64) {
        debug_assert!(idx < self.cap && !self.is_armed(idx));
        let when = when.max(self.elapsed);
        let level = level_for(self.elapsed, when);
        let slot = ((when >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1);
        let list = level * SLOTS + slot;
        let head = self.cap as usize + list;
        let tail = self.nodes[head].prev;
        self.nodes[idx as usize] = Node { prev: tail, next: head as u32 };
        self.nodes[tail as usize].next = idx;
        self.nodes[head].prev = idx;
        self.occupied[level] |= 1 << slot;
        self.armed += 1;
    }

    /// Disarms `idx` if armed.
    pub(crate) fn remove(&mut self, idx: u32) {
        if !self.is_armed(idx) {
            return;
        }
        let n = self.nodes[idx as usize];
        self.nodes[n.prev as usize].next = n.next;
        self.nodes[n.next as usize].prev = n.prev;
        self.nodes[idx as usize] = Node::default();
        if n.prev == n.next {
            // Both neighbours are the sentinel: the list is empty now.
            let list = (n.next - self.cap) as usize;
            self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        }
        self.armed -= 1;
    }

    /// Stores `v` (an entry index, or anything at or above `cap` for "none") in the
    /// node of `idx`, which is not armed: the table links its free slots through them
    /// instead of keeping a list of its own (4 bytes an entry). It is kept as
    /// `prev == next`, which reads as "not armed" while below `cap`; "none" is `idx`
    /// itself.
    pub(crate) fn set_spare(&mut self, idx: u32, v: u32) {
        debug_assert!(!self.is_armed(idx));
        let v = if v < self.cap { v } else { idx };
        self.nodes[idx as usize] = Node { prev: v, next: v };
    }

    /// What [`Wheel::set_spare`] stored in `idx`'s node (`u32::MAX` for "none").
    pub(crate) fn spare(&self, idx: u32) -> u32 {
        debug_assert!(!self.is_armed(idx));
        let v = self.nodes[idx as usize].next;
        if v == idx { u32::MAX } else { v }
    }

    /// Every armed entry with the tick by which its slot comes due: the latest it can
    /// be handed back (a slot of a higher level hands its entries back at its start,
    /// to be re-armed nearer their deadline). For checks: it walks every list.
    pub(crate) fn due_ticks(&self) -> Vec<(u32, u64)> {
        let mut out = Vec::with_capacity(self.armed);
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let start = self.slot_start(level, slot);
                let head = self.cap + (level * SLOTS + slot) as u32;
                let mut i = self.nodes[head as usize].next;
                while i != head && out.len() <= self.armed {
                    out.push((i, start));
                    i = self.nodes[i as usize].next;
                }
            }
        }
        out
    }

    /// The tick at which slot `slot` of `level` next comes due: the first tick it
    /// spans at or after `elapsed`'s slot of that level (the current slot itself may
    /// have started already).
    fn slot_start(&self, level: usize, slot: usize) -> u64 {
        let shift = SLOT_BITS * level as u32;
        let slot_range = 1u64 << shift;
        let level_range = slot_range << SLOT_BITS;
        let now_slot = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
        let level_start = self.elapsed & !(level_range - 1);
        let start = level_start + slot as u64 * slot_range;
        if slot < now_slot { start + level_range } else { start }
    }

    /// Re-arms `idx` at `when` (disarming it first if needed).
    pub(crate) fn rearm(&mut self, idx: u32, when: u64) {
        self.remove(idx);
        self.insert(idx, when);
    }

    /// Pops one entry whose slot is due at `now` (absolute ticks) and disarms it; the
    /// caller then removes the entry or re-arms it at its true deadline. Returns `None`
    /// when nothing is due; `elapsed` then advances to `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<u32> {
        loop {
            let Some((level, slot, deadline)) = self.next_expiration() else {
                self.elapsed = self.elapsed.max(now);
                return None;
            };
            if deadline > now {
                self.elapsed = self.elapsed.max(now);
                return None;
            }
            self.elapsed = self.elapsed.max(deadline);
            let head = self.cap as usize + level * SLOTS + slot;
            let first = self.nodes[head].next;
            if first as usize == head {
                self.occupied[level] &= !(1 << slot);
                continue;
            }
            self.remove(first);
            return Some(first);
        }
    }

    /// The earliest occupied slot: (level, slot, its start tick). Usually the lowest
    /// occupied level holds it, but not always: a higher-level slot whose draining was
    /// cut short by the budget starts at `elapsed` while the entries already cascaded
    /// from it sit in lower levels with later deadlines. So every level is asked.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for level in 0..LEVELS {
            let occ = self.occupied[level];
            if occ == 0 {
                continue;
            }
            let now_slot = ((self.elapsed >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1);
            let zeros = occ.rotate_right(now_slot as u32).trailing_zeros() as usize;
            let slot = (zeros + now_slot) % SLOTS;
            let deadline = self.slot_start(level, slot);
            if best.is_none_or(|b| deadline < b.2) {
                best = Some((level, slot, deadline));
            }
        }
        best
    }
}

/// The level whose slots separate `elapsed` and `when`: the highest bit in which they
/// differ, six bits per level.
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    (significant / SLOT_BITS as usize).min(LEVELS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Wheel {
        /// The list an armed entry is in: walk its ring to the sentinel.
        fn list_of(&self, idx: u32) -> usize {
            let mut i = self.nodes[idx as usize].next;
            while i < self.cap {
                i = self.nodes[i as usize].next;
            }
            (i - self.cap) as usize
        }
    }

    fn drain(w: &mut Wheel, now: u64) -> Vec<u32> {
        let mut v = Vec::new();
        while let Some(i) = w.pop_due(now) {
            v.push(i);
        }
        v
    }

    /// What the table does: fire entries whose deadline has come, re-arm the others.
    fn advance(w: &mut Wheel, now: u64, deadline: &[u64]) -> Vec<u32> {
        let mut fired = Vec::new();
        let mut rearm = Vec::new();
        while let Some(i) = w.pop_due(now) {
            if deadline[i as usize] <= now {
                fired.push(i);
            } else {
                rearm.push(i);
            }
        }
        for i in rearm {
            w.insert(i, deadline[i as usize]);
        }
        fired
    }

    #[test]
    fn fires_exactly_at_deadline_across_levels() {
        let start = 1000u64;
        let deadline: Vec<u64> = [5u64, 63, 64, 4095, 300_000, 1 << 31].iter().map(|d| start + d).collect();
        let mut w = Wheel::new(16, start);
        for (i, &d) in deadline.iter().enumerate() {
            w.insert(i as u32, d);
        }
        assert_eq!(w.armed_count(), 6);
        for (i, &d) in deadline.iter().enumerate() {
            assert_eq!(advance(&mut w, d - 1, &deadline), Vec::<u32>::new(), "early at {}", d - 1);
            assert_eq!(advance(&mut w, d, &deadline), vec![i as u32], "at {d}");
        }
        assert_eq!(w.armed_count(), 0);
    }

    #[test]
    fn a_big_jump_fires_everything_due() {
        let deadline: Vec<u64> = (0..200u64).map(|i| i * i * 37).collect();
        let mut w = Wheel::new(200, 0);
        for (i, &d) in deadline.iter().enumerate() {
            w.insert(i as u32, d);
        }
        let mut fired = advance(&mut w, 1_000_000, &deadline);
        fired.sort();
        let expect: Vec<u32> = (0..200u32).filter(|&i| deadline[i as usize] <= 1_000_000).collect();
        assert_eq!(fired, expect);
        assert_eq!(w.armed_count(), 200 - expect.len());
    }

    /// Random inserts, re-arms and removals between polls, against a model: after a
    /// poll at `now`, no armed entry has a deadline at or before `now`.
    #[test]
    fn never_misses_a_deadline_under_random_operations() {
        let mut next = crate::testutil::xorshift(0x1234_5678_9abc_def1);
        let mut rnd = move |m: u64| next() % m;
        let cap = 300;
        let mut now = 1_000_000u64;
        let mut w = Wheel::new(cap, now);
        let mut deadline = vec![None::<u64>; cap];
        let check = |w: &Wheel, deadline: &[Option<u64>], step: usize, what: &str| {
            for (i, d) in deadline.iter().enumerate() {
                if !w.is_armed(i as u32) {
                    continue;
                }
                let level = w.list_of(i as u32) / SLOTS;
                let when = d.expect("an armed entry the model does not know");
                let start = when & !((1u64 << (6 * level)) - 1);
                assert!(
                    start >= w.elapsed || (level == 0 && when >= w.elapsed),
                    "step {step} after {what}: entry {i} level {level} when {when} start {start} elapsed {}",
                    w.elapsed
                );
            }
            // What the table's checks read: every armed entry comes due no later than
            // its deadline, and only armed entries are listed.
            let due = w.due_ticks();
            assert_eq!(due.len(), w.armed_count(), "step {step}");
            for (i, start) in due {
                let d = deadline[i as usize].expect("listed but not armed");
                assert!(start <= d.max(w.elapsed), "step {step} after {what}: entry {i} due at {start}, deadline {d}");
            }
        };
        for step in 0..20_000 {
            check(&w, &deadline, step, "previous");
            match rnd(10) {
                0..=5 => {
                    let i = rnd(cap as u64) as u32;
                    let d = now + [rnd(70), rnd(5000), rnd(300_000), rnd(30_000_000)][rnd(4) as usize];
                    if deadline[i as usize].is_some() {
                        w.rearm(i, d);
                    } else {
                        w.insert(i, d);
                    }
                    deadline[i as usize] = Some(d);
                }
                6 => {
                    let i = rnd(cap as u64) as u32;
                    w.remove(i);
                    deadline[i as usize] = None;
                }
                _ => {
                    now += [1, rnd(100), rnd(10_000), rnd(1_000_000)][rnd(4) as usize];
                    // Poll with a small budget, sometimes leaving work for later.
                    let budget = if rnd(2) == 0 { usize::MAX } else { rnd(8) as usize };
                    let mut done = 0;
                    while done < budget {
                        let Some(i) = w.pop_due(now) else { break };
                        done += 1;
                        let d = deadline[i as usize].expect("popped an entry that is not armed");
                        if d <= now {
                            deadline[i as usize] = None;
                        } else {
                            w.insert(i, d);
                        }
                    }
                    if done < budget {
                        for (i, d) in deadline.iter().enumerate() {
                            if let Some(d) = d {
                                assert!(
                                    *d > now,
                                    "step {step}: entry {i} due at {d} missed at {now}: list {} elapsed {} occ {:?}",
                                    w.list_of(i as u32),
                                    w.elapsed,
                                    w.occupied.iter().map(|o| format!("{o:x}")).collect::<Vec<_>>()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn remove_and_past_deadlines() {
        let mut w = Wheel::new(4, 0);
        w.insert(0, 10);
        w.insert(1, 10);
        w.remove(0);
        w.remove(0); // idempotent
        assert!(!w.is_armed(0) && w.is_armed(1));
        assert_eq!(drain(&mut w, 9), Vec::<u32>::new());
        assert_eq!(drain(&mut w, 10), vec![1]);
        // A deadline in the past fires at the next poll.
        w.insert(2, 3);
        assert_eq!(drain(&mut w, 10), vec![2]);
        assert_eq!(w.elapsed(), 10);
    }

    #[test]
    fn wrapping_ticks_convert_back() {
        let mut w = Wheel::new(2, (1u64 << 32) - 10);
        w.insert(0, (1u64 << 32) + 50);
        let due = w.due_ticks();
        assert!(due.len() == 1 && due[0].0 == 0 && due[0].1 <= (1u64 << 32) + 50, "{due:?}");
        assert_eq!(w.abs(5), (1u64 << 32) + 5);
        let deadline = [(1u64 << 32) + 50, 0];
        assert_eq!(advance(&mut w, (1u64 << 32) + 49, &deadline), Vec::<u32>::new());
        assert_eq!(advance(&mut w, (1u64 << 32) + 50, &deadline), vec![0]);
    }

    #[test]
    fn spare_values_live_in_unarmed_nodes() {
        let mut w = Wheel::new(4, 0);
        w.set_spare(1, 3);
        w.set_spare(3, u32::MAX);
        w.set_spare(2, 0);
        assert!(!w.is_armed(1) && !w.is_armed(2) && !w.is_armed(3));
        assert_eq!((w.spare(1), w.spare(2), w.spare(3)), (3, 0, u32::MAX));
        assert_eq!(w.armed_count(), 0);
        w.insert(1, 5);
        assert!(w.is_armed(1));
        assert_eq!(drain(&mut w, 5), vec![1]);
        assert_eq!(w.due_ticks(), vec![]);
    }
}
