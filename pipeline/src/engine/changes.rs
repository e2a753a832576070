//! The changes a state-sync peer must hear of, as they happen: a flow created, a flow
//! whose TCP state or status moved (or that saw traffic again after `refresh`, so
//! that the peer's timer keeps up), a flow removed. Off unless the engine is made to
//! keep them ([`Engine::keep_changes`]); then each is a fixed-size note in a journal
//! sized once, never grown: a note that does not fit is counted, not stored, and the
//! sync side recovers it with a full sweep (docs/sync.md).
//!
//! Notes of created and changed flows name a slot; they are read out
//! ([`Engine::drain_changes`]) as the flow is when drained, so a flow that changes
//! three times in a burst is sent once. A removed flow is written out whole when it
//! goes, since its slot may be someone else's by then.

use super::Engine;
use super::adopt::SyncedFlow;
use crate::conntrack::conn::cflag;
use crate::flow::FlowKey;
use crate::parse::PacketMeta;
use crate::policy::Zone;
use crate::time::{Duration, Instant};
use crate::verdict::Verdict;

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    New,
    Update,
    Delete,
}

/// A change as the sync side reads it: the flow as it is now (or was when removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub flow: SyncedFlow,
}

#[derive(Debug, Clone, Copy)]
enum Note {
    /// Created or changed: read the slot when drained, if it still holds `key`.
    Slot {
        kind: ChangeKind,
        slot: u32,
        key: FlowKey,
    },
    Deleted(SyncedFlow),
}

/// The journal: preallocated, bounded, counted when full.
#[derive(Debug, Default)]
pub(super) struct Changes {
    notes: Vec<Note>,
    limit: usize,
    /// A flow that saw traffic is noted again once per this many ticks (at most half
    /// its timeout), so that the peer's timer for it keeps up.
    refresh_ticks: u32,
    /// Notes that did not fit.
    lost: u64,
}

impl Changes {
    #[inline]
    pub(super) fn on(&self) -> bool {
        self.limit > 0
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.notes.len()
    }

    fn push(&mut self, n: Note) {
        if self.notes.len() < self.limit {
            self.notes.push(n);
        } else {
            self.lost += 1;
        }
    }

    pub(super) fn slot(&mut self, kind: ChangeKind, slot: u32, key: FlowKey) {
        if self.on() {
            self.push(Note::Slot { kind, slot, key });
        }
    }

    pub(super) fn deleted(&mut self, f: SyncedFlow) {
        self.push(Note::Deleted(f));
    }

    /// Whether a packet at `now` of a flow last seen at `last_seen`, timing out after
    /// `timeout` ticks, is the first of a new refresh period: `refresh` or half the
    /// timeout, whichever is shorter, rounded down to a power of two ticks (a shift,
    /// not a division, on the packet path).
    #[inline]
    pub(super) fn refresh_due(&self, now: u32, last_seen: u32, timeout: u32) -> bool {
        let period = self.refresh_ticks.min(timeout / 2).max(1);
        let shift = 31 - period.leading_zeros();
        now >> shift != last_seen >> shift || now.wrapping_sub(last_seen) >= period
    }
}

/// What an engine's journal of changes did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeStats {
    /// Notes waiting to be drained.
    pub pending: usize,
    /// Notes that did not fit in the journal (since the engine was made).
    pub lost: u64,
}

impl Engine {
    /// From now on, keep a journal of up to `limit` changes between drains for a sync
    /// peer; a flow with traffic is noted again every `refresh` (or half its timeout,
    /// if shorter). Allocates the journal here, once. `limit` 0 turns it off.
    pub fn keep_changes(&mut self, limit: usize, refresh: Duration) {
        self.changes = Changes { notes: Vec::with_capacity(limit), limit, refresh_ticks: refresh.ticks().max(1), lost: self.changes.lost };
    }

    pub fn change_stats(&self) -> ChangeStats {
        ChangeStats { pending: self.changes.notes.len(), lost: self.changes.lost }
    }

    /// Hands every noted change to `f`, oldest first, each flow as it is at `now`
    /// (a noted flow removed since is skipped: its removal follows or came first), and
    /// empties the journal. Allocates nothing.
    pub fn drain_changes(&mut self, now: Instant, mut f: impl FnMut(Change)) {
        let t = self.cfg.timeouts;
        for i in 0..self.changes.notes.len() {
            match self.changes.notes[i] {
                Note::Slot { kind, slot, key } => {
                    if self.table.is_live(slot) && self.table.key_of(slot) == key {
                        f(Change { kind, flow: self.record_of(slot, now).synced(&t) });
                    }
                }
                Note::Deleted(flow) => f(Change { kind: ChangeKind::Delete, flow }),
            }
        }
        self.changes.notes.clear();
    }

    /// Notes the flow just created in `slot` under `key`.
    #[inline]
    pub(super) fn note_new(&mut self, slot: u32, key: FlowKey) {
        self.changes.slot(ChangeKind::New, slot, key);
    }

    /// Notes the removal of the flow in `slot` (before it goes).
    pub(super) fn note_removal(&mut self, slot: u32, now: Instant) {
        if self.changes.on() {
            let t = self.cfg.timeouts;
            let flow = self.record_of(slot, now).synced(&t);
            self.changes.deleted(flow);
        }
    }

    /// A packet of the flow in `slot`, tracked as [`Engine::existing`] does, noting an
    /// update when its state or status moved, or when it is the flow's first accepted
    /// packet of a refresh period. Nothing is noted here when tracking removed or
    /// replaced the flow (that noted itself).
    #[inline]
    pub(super) fn existing_noted(&mut self, now: Instant, zone: Zone, frame: &[u8], slot: u32, m: &PacketMeta, h: u64) -> Verdict {
        const SEEN: u8 = cflag::SEEN_REPLY | cflag::ASSURED;
        let c = &self.table.conns[slot as usize];
        let (state, flags, last_seen) = (c.state & 0x0f, c.flags & SEEN, c.last_seen);
        let (notes, lost) = (self.changes.len(), self.changes.lost);
        let v = match self.established_ack(now, frame, slot, m) {
            Some(v) => v,
            None => self.existing(now, zone, frame, slot, m, h),
        };
        // Every removal notes itself (`retire`): no new note means the slot still holds
        // this flow, without a look at the timer wheel (a cache miss a packet).
        if self.changes.len() == notes && self.changes.lost == lost {
            let c = &self.table.conns[slot as usize];
            let moved = c.state & 0x0f != state || c.flags & SEEN != flags;
            if moved || (c.last_seen != last_seen && self.changes.refresh_due(c.last_seen, last_seen, self.timeout_of(c))) {
                self.changes.slot(ChangeKind::Update, slot, m.key);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::policy::Zone;
    use crate::testutil::*;
    use crate::wire::build::FrameSpec;
    use crate::wire::tcp::flags::*;

    const RESOLVER: &str = "192.0.2.53";

    fn drained(l: &mut Lab) -> Vec<(ChangeKind, u8, u32)> {
        let mut out = Vec::new();
        let now = l.now;
        l.e.drain_changes(now, |c| out.push((c.kind, c.flow.tcp_state, c.flow.status)));
        out
    }

    #[test]
    fn off_by_default_and_nothing_is_noted() {
        let mut l = Lab::new();
        l.handshake();
        assert_eq!(drained(&mut l), vec![]);
        assert_eq!(l.e.change_stats(), ChangeStats::default());
    }

    #[test]
    fn a_connection_is_new_then_updated_on_each_state_change_then_deleted() {
        let mut l = Lab::new();
        l.e.keep_changes(64, Duration::from_secs(60));
        assert!(l.c(SYN, 0).is_pass());
        assert_eq!(drained(&mut l), vec![(ChangeKind::New, 1, 8)], "SYN_SENT, confirmed");
        assert!(l.s(SYN | ACK, 0).is_pass());
        assert!(l.c(ACK, 0).is_pass());
        let d = drained(&mut l);
        assert_eq!(d.len(), 2, "two state changes, each noted: {d:?}");
        assert!(d.iter().all(|&(k, s, _)| k == ChangeKind::Update && s == 3), "read as they are when drained: ESTABLISHED");
        // Data in an established connection changes nothing a peer needs.
        for _ in 0..10 {
            assert!(l.c(ACK | PSH, 100).is_pass());
            assert!(l.s(ACK, 0).is_pass());
        }
        assert_eq!(drained(&mut l), vec![]);
        // After the refresh period the next packet is noted once.
        l.advance(Duration::from_secs(61));
        assert!(l.c(ACK | PSH, 100).is_pass());
        assert!(l.s(ACK, 0).is_pass());
        assert_eq!(drained(&mut l), vec![(ChangeKind::Update, 3, 14)]);
        assert!(l.c(RST, 0).is_pass());
        let d = drained(&mut l);
        assert_eq!(d, vec![(ChangeKind::Update, 8, 14)], "CLOSE (the kernel's 8)");
        l.advance(Duration::from_secs(11));
        l.e.expire(l.now, 100);
        assert_eq!(drained(&mut l), vec![(ChangeKind::Delete, 8, 14)]);
        l.e.audit().unwrap();
    }

    #[test]
    fn a_short_timeout_is_refreshed_within_half_of_it() {
        let mut l = Lab::new();
        l.e.keep_changes(64, Duration::from_secs(3600));
        let q = FrameSpec::udp(ip(SERVER), 5353, ip(RESOLVER), 53, b"q").build();
        assert!(l.send(&q, Zone::Inside).is_pass());
        assert_eq!(drained(&mut l).len(), 1);
        let mut notes = 0;
        // An unreplied UDP flow times out after 30 s: a packet every 5 s for a minute.
        for _ in 0..12 {
            l.advance(Duration::from_secs(5));
            assert!(l.send(&q, Zone::Inside).is_pass());
            notes += drained(&mut l).len();
        }
        // Half the timeout is 15 s, 8 s once rounded down to a power of two ticks.
        assert!((6..=8).contains(&notes), "about one note per 8 s: {notes}");
    }

    #[test]
    fn a_full_journal_counts_what_it_lost_and_never_grows() {
        let mut l = Lab::with(EngineConfig { capacity: 256, ..EngineConfig::default() });
        l.e.keep_changes(8, Duration::from_secs(60));
        for p in 0..20u16 {
            let f = FrameSpec::udp(ip(SERVER), 1000 + p, ip(RESOLVER), 53, b"q").build();
            assert!(l.send(&f, Zone::Inside).is_pass());
        }
        assert_eq!(l.e.change_stats(), ChangeStats { pending: 8, lost: 12 });
        assert_eq!(drained(&mut l).len(), 8);
        assert_eq!(l.e.change_stats(), ChangeStats { pending: 0, lost: 12 });
    }

    #[test]
    fn a_slot_reused_before_the_drain_is_not_read_as_the_old_flow() {
        let mut l = Lab::with(EngineConfig { capacity: 1, ..EngineConfig::default() });
        l.e.keep_changes(16, Duration::from_secs(60));
        let a = FrameSpec::udp(ip(SERVER), 1000, ip(RESOLVER), 53, b"q").build();
        let b = FrameSpec::udp(ip(SERVER), 1001, ip(RESOLVER), 53, b"q").build();
        assert!(l.send(&a, Zone::Inside).is_pass());
        assert!(l.send(&b, Zone::Inside).is_pass(), "evicts a");
        let mut out = Vec::new();
        let now = l.now;
        l.e.drain_changes(now, |c| out.push((c.kind, c.flow.sport)));
        assert_eq!(out, vec![(ChangeKind::Delete, 1000), (ChangeKind::New, 1001)], "a's note was for a slot b holds now");
    }
}
