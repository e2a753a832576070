//! Timer arithmetic: the timeout that applies to an entry now, how soon to arm it, and
//! what a packet's refresh does to it (docs/timers.md). Times are 1/64 s ticks.

use super::Engine;
use crate::conntrack::conn::{Conn, cflag};
use crate::conntrack::pressure::Admission;
use crate::conntrack::timeouts::TimerClass;
use crate::time::{Instant, NANOS_PER_TICK};

/// An instant as an absolute (non-wrapping) tick count: what the timer wheel keeps.
#[inline]
pub(super) fn abs_ticks(now: Instant) -> u64 {
    now.as_nanos() / NANOS_PER_TICK
}

/// Ticks since `last`; an entry touched "in the future" (capture timestamps going
/// backwards) counts as just touched.
#[inline]
pub(super) fn idle_ticks(now: u32, last: u32) -> u32 {
    (now.wrapping_sub(last) as i32).max(0) as u32
}

impl Engine {
    /// pf's adaptive factor for the table's fill now (see [`Engine::timeout_of`]).
    #[inline]
    pub(super) fn rescale(&mut self) {
        self.scale = self.cfg.pressure.scale_1024(self.table.len(), self.table.capacity());
    }

    /// The timeout that applies to an entry now: its class's, shrunk for non-assured
    /// entries under pressure (pf's adaptive timeouts, sparing assured flows), never
    /// below `pressure.timeout_floor`. With by-class eviction a class shrinks only while
    /// every class below it is empty: room is taken from those first, so a SYN flood's
    /// embryonic entries do not cut the closing handshakes of real connections short (a
    /// server's FIN two seconds after the client's would find its state expired).
    #[inline]
    pub(super) fn timeout_of(&self, c: &Conn) -> u32 {
        let t = self.cfg.timeouts.ticks(c.timer_class());
        let a = c.admission();
        if self.scale >= 1024 || a == Admission::Assured || (self.lists.per_class() && self.lists.below(a) > 0) {
            return t;
        }
        let shrunk = (u64::from(t) * u64::from(self.scale) / 1024) as u32;
        shrunk.max(self.cfg.pressure.timeout_floor_ticks).min(t)
    }

    /// A lower bound of [`Engine::timeout_of`] for every entry: the shortest class
    /// timeout, or the adaptive floor if lower (the shrunk timeout is at least the
    /// floor or the class's own).
    #[inline]
    pub(super) fn shortest_timeout(&self) -> u32 {
        self.cfg.timeouts.shortest_ticks().min(self.cfg.pressure.timeout_floor_ticks)
    }

    /// How soon to arm an entry's timer: its rearm floor, or its timeout if shorter
    /// (adaptive timeouts).
    #[inline]
    pub(super) fn arm_ticks(&self, c: &Conn) -> u32 {
        self.cfg.timeouts.floor_ticks(c.timer_class()).min(self.timeout_of(c))
    }

    /// When an entry armed now should fire (absolute ticks).
    #[inline]
    pub(super) fn arm_at(&self, c: &Conn, now: Instant) -> u64 {
        abs_ticks(now) + u64::from(self.arm_ticks(c))
    }

    /// Refreshes an entry's timeout (Linux `nf_ct_refresh_acct`): writes "last seen".
    /// The timer wheel is touched only when the new class has a lower rearm floor than
    /// the old one (see [`crate::conntrack::Timeouts`]), which keeps the invariant
    /// "armed no later than `now + floor(class)`" without touching the timer on
    /// ordinary packets.
    ///
    /// The class is written whether it changed or not: an established flow flips
    /// between its state's class, UNACK and RETRANS from one packet to the next, and a
    /// branch on "changed" would mispredict as often. Only a lower floor branches.
    #[inline(always)]
    pub(super) fn refresh(&mut self, slot: u32, now: Instant, class: TimerClass) {
        let t = &self.cfg.timeouts;
        let c = &mut self.table.conns[slot as usize];
        c.last_seen = now.ticks();
        c.flags |= cflag::REFERENCED;
        let lower = t.floor_ticks(class) < t.floor_ticks(c.timer_class());
        c.set_timer_class(class);
        if lower {
            self.rearm_sooner(slot, now);
        }
    }

    /// The rarer half of [`Engine::refresh`]: the entry's class has a lower rearm
    /// floor than the one it had. Re-armed without comparing: the timer node keeps no
    /// deadline (4 bytes an entry), and `now + arm_ticks` is never later than this
    /// entry's true expiry, which starts from `now`.
    #[inline(never)]
    fn rearm_sooner(&mut self, slot: u32, now: Instant) {
        let deadline = self.arm_at(&self.table.conns[slot as usize], now);
        self.table.rearm(slot, deadline);
    }

    /// Linux `nf_tcp_handle_invalid`: lower an assured flow's remaining time to the
    /// UNACK timeout when more than 120 s and more than UNACK remain.
    pub(super) fn shrink_to_unack(&mut self, slot: u32, now: Instant) {
        let t = &self.cfg.timeouts;
        let c = &self.table.conns[slot as usize];
        let left = self.timeout_of(c).saturating_sub(idle_ticks(now.ticks(), c.last_seen));
        let unack = t.ticks(TimerClass::TcpUnack);
        if left >= crate::time::Duration::from_secs(120).ticks() && left > unack {
            let c = &mut self.table.conns[slot as usize];
            c.last_seen = now.ticks();
            c.set_timer_class(TimerClass::TcpUnack);
            self.table.rearm(slot, abs_ticks(now) + u64::from(unack));
        }
    }
}
