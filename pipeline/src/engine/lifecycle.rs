//! An entry's life: made room for, created (counted once tracking accepted it),
//! accounted per packet and moved between admission classes, evicted, retired with a
//! tombstone saying why.

use super::Engine;
use crate::conntrack::conn::{Conn, ConnAux, ConnStats, REPLY, cflag};
use crate::conntrack::pressure::{Admission, Evict};
use crate::conntrack::sources::Refusal;
use crate::conntrack::table::{IndexFull, Table};
use crate::conntrack::tcp;
use crate::conntrack::tombstones::Why;
use crate::flow::{FlowKey, Side};
use crate::parse::{self, PacketMeta};
use crate::time::Instant;
use crate::verdict::{DropReason, Verdict};

/// What kept a flow put in without a packet out of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoRoom {
    Source,
    Ipv6Pool,
    Table,
}

impl From<IndexFull> for NoRoom {
    fn from(e: IndexFull) -> NoRoom {
        match e {
            IndexFull::Ipv6Pool => NoRoom::Ipv6Pool,
            IndexFull::Index => NoRoom::Table,
        }
    }
}

/// Entries the LRU model's second-chance clock may pass over before it evicts the
/// head regardless: bounds the work of one insert.
const SECOND_CHANCE_TRIES: usize = 64;

/// The admission class an entry's state puts it in: a policy of the engine's, not a
/// property of the entry's layout.
pub(super) fn admission_of(c: &Conn) -> Admission {
    if c.proto() == parse::proto::TCP {
        if tcp::state_of(c).is_closing() {
            Admission::Closing
        } else if c.has(cflag::ASSURED) {
            Admission::Assured
        } else {
            Admission::Embryonic
        }
    } else if c.has(cflag::ASSURED) && c.icmp_type().is_none() {
        // A stream: a reply, and traffic still 2 s after creation. A reply alone
        // proves nothing a blind sender cannot get — a spoofed query to a server the
        // rules let it reach is answered — so a replied flow is evicted first
        // (`Replied`) instead of being kept like a connection. ICMP is never a stream
        // (a hostile peer's sync or a damaged snapshot may still say ASSURED).
        Admission::Assured
    } else if c.has(cflag::SEEN_REPLY) {
        Admission::Replied
    } else {
        Admission::Unreplied
    }
}

/// True for an assured entry that is not TCP: a stream, counted against
/// `stream_share`.
#[inline]
pub(super) fn is_stream(c: &Conn, a: Admission) -> bool {
    a == Admission::Assured && c.proto() != parse::proto::TCP
}

impl Engine {
    /// The class an entry joins, `new` ([`admission_of`]) unless it is a stream while
    /// streams hold `stream_share` of the table: then `Replied` (and the hold is
    /// counted). A reply and a second request 2 s later make a stream, and a spoofed
    /// request is answered as a real one: without the share a sender who knows the
    /// rule could fill the table with flows nothing evicts, two spoofed packets each.
    #[inline]
    pub(super) fn within_stream_share(&mut self, c: &Conn, new: Admission) -> Admission {
        if is_stream(c, new) && self.streams >= self.stream_cap {
            self.counters.streams_held += 1;
            return Admission::Replied;
        }
        new
    }

    /// Keeps the stream count as an entry joins (`+1`) or leaves (`-1`) class `a`.
    #[inline]
    pub(super) fn count_stream(&mut self, c: &Conn, a: Admission, delta: i32) {
        if is_stream(c, a) {
            self.streams = self.streams.wrapping_add_signed(delta);
        }
    }

    /// Stores a new entry for the packet's key: `conn` (from [`Table::blank`], with the
    /// state tracking gave it) and `aux`, after making room; it is charged to the
    /// packet's sender, put in its admission class, armed, and counted as created.
    /// Nothing is undone afterwards: the caller creates only what tracking accepted.
    pub(super) fn create(&mut self, now: Instant, m: &PacketMeta, h: u64, mut conn: Conn, aux: ConnAux) -> Result<u32, DropReason> {
        let sender = m.side;
        let src = m.key.addr[sender as usize];
        let adm = admission_of(&conn);
        self.make_room(now, src, m.key.v6, adm)?;
        conn.last_seen = now.ticks();
        // The sender of the creating packet pays for the entry, whatever direction
        // tracking calls original (a reverse pickup swapped them).
        conn.set_charged(sender == Side::FromHi);
        conn.set_admission(adm);
        let when = self.arm_at(&conn, now);
        let slot = self.insert_counted(h, &m.key, conn, aux, ConnStats::new(now.ticks()), when).map_err(|_| DropReason::TableFull)?;
        self.lists.push(slot, adm, m.key.v6);
        self.note_new(slot, m.key);
        let charged = self.sources.add(src, m.key.v6, slot, adm != Admission::Assured);
        debug_assert!(charged, "make_room checked the source");
        self.counters.flows_created += 1;
        Ok(slot)
    }

    /// [`Table::insert`], counting a refusal (`ipv6_pool_full`, or `index_full` when
    /// the index found no place although the table has room).
    #[inline(always)]
    pub(super) fn insert_counted(&mut self, h: u64, key: &FlowKey, conn: Conn, aux: ConnAux, stats: ConnStats, when: u64) -> Result<u32, IndexFull> {
        let r = self.table.insert(h, key, conn, aux, stats, when);
        match r {
            Err(IndexFull::Ipv6Pool) => self.counters.ipv6_pool_full += 1,
            Err(IndexFull::Index) if !self.table.is_full() => self.counters.index_full += 1,
            _ => {}
        }
        r
    }

    /// Why [`Engine::make_room`] found none, for a flow put in without a packet (a
    /// synced or restored one): the source's limit, the IPv6 pool, or the table.
    pub(super) fn no_room(&self, why: DropReason, v6: bool) -> NoRoom {
        match why {
            DropReason::SourceLimit | DropReason::SourceTableFull => NoRoom::Source,
            _ if v6 && !self.table.is_full() => NoRoom::Ipv6Pool,
            _ => NoRoom::Table,
        }
    }

    /// A blank entry for the packet's key whose original direction is the packet's.
    pub(super) fn blank_for(m: &PacketMeta) -> Conn {
        let mut c = Table::blank(&m.key);
        if m.side == Side::FromHi {
            c.flags |= cflag::ORIG_IS_HI;
        }
        c
    }

    /// Adds a packet of `ip_len` bytes to the entry's counters (with
    /// `conntrack.accounting`).
    #[inline(always)]
    pub(super) fn count_bytes(&mut self, slot: u32, dir: usize, ip_len: u32) {
        if let Some(s) = self.table.stats.get_mut(slot as usize) {
            s.count(dir, u64::from(ip_len));
        }
    }

    /// Counts an accepted packet on its flow, and moves the flow to the admission
    /// class its new state calls for.
    #[inline]
    pub(super) fn account(&mut self, slot: u32, dir: usize, m: &PacketMeta) {
        self.account_bytes(slot, dir, m.ip_len);
    }

    /// [`Engine::account`] for a packet of `ip_len` bytes.
    #[inline]
    pub(super) fn account_bytes(&mut self, slot: u32, dir: usize, ip_len: u32) {
        self.count_bytes(slot, dir, ip_len);
        let c = &mut self.table.conns[slot as usize];
        if dir == REPLY {
            c.flags |= cflag::SEEN_REPLY;
        }
        let (old, new) = (c.admission(), admission_of(c));
        if old != new {
            let c = *c;
            let new = self.within_stream_share(&c, new);
            if new == old {
                return;
            }
            self.count_stream(&c, old, -1);
            self.count_stream(&c, new, 1);
            self.table.conns[slot as usize].set_admission(new);
            let (v6, charged) = (c.is_v6(), c.charged());
            self.lists.change(slot, old, new, v6);
            if (old == Admission::Assured) != (new == Admission::Assured) && self.sources.enabled() {
                let key = self.table.key_of(slot);
                self.sources.relist(key.addr[charged], v6, slot, new != Admission::Assured);
            }
        }
    }

    /// Removes an entry and everything that points at it: index, timer, class list,
    /// per-source count; leaves a tombstone saying why, and counts it.
    pub(super) fn retire(&mut self, slot: u32, h: u64, why: Option<Why>, now: Instant) {
        let c = self.table.conns[slot as usize];
        let adm = c.admission();
        match why {
            Some(Why::Expired) => {
                self.counters.flows_expired += 1;
                self.counters.expirations[adm as usize] += 1;
                if adm == Admission::Assured {
                    self.counters.assured_expirations[c.timer_class() as usize] += 1;
                }
            }
            Some(Why::Evicted) => self.counters.evictions[adm as usize] += 1,
            Some(Why::Revoked) => self.counters.flows_revoked += 1,
            Some(Why::Closed) | None => self.counters.flows_closed += 1,
        }
        if let Some(w) = why {
            self.tombs.bury(h, w, adm.code(), now.ticks());
        }
        self.count_stream(&c, adm, -1);
        if self.sources.enabled() {
            let key = self.table.key_of(slot);
            self.sources.sub(key.addr[c.charged()], key.v6, slot, adm != Admission::Assured);
        }
        self.note_removal(slot, now);
        self.lists.remove(slot, adm, c.is_v6());
        self.table.remove_hashed(slot, h);
    }

    /// The reason for dropping a packet that found no state: what its tombstone says,
    /// or `otherwise` when the flow was never seen (or long forgotten).
    pub(super) fn lost(&mut self, h: u64, otherwise: DropReason) -> Verdict {
        Verdict::Drop(match self.tombs.exhume(h) {
            Some((Why::Evicted, _)) => DropReason::ReplyToEvicted,
            Some((Why::Expired, _)) => DropReason::ReplyToExpired,
            Some((Why::Closed, _)) => DropReason::ReplyToClosed,
            Some((Why::Revoked, _)) => DropReason::Revoked,
            None => otherwise,
        })
    }

    /// Makes room for one new entry of class `adm` whose original source is `src`:
    /// applies the per-source limit, the non-assured quota (to a non-assured
    /// newcomer), and the eviction policy when the table — or, for an IPv6 flow, the
    /// IPv6 address pool — is full. A packet's new entry is never assured; a synced
    /// flow adopted at a takeover often is.
    pub(super) fn make_room(&mut self, now: Instant, src: u128, v6: bool, adm: Admission) -> Result<(), DropReason> {
        match self.sources.check(src, v6) {
            Ok(()) => {}
            // At its limit a source's new flow recycles that source's oldest
            // non-assured entry (by-class): the limit still holds, and SYNs spoofed
            // from an address cannot lock that address out of its own limit. A source
            // whose entries are all assured is refused.
            Err(Refusal::Limit) if self.cfg.pressure.evict == Evict::ByClass => match self.sources.oldest_unassured(src, v6) {
                Some(v) => {
                    self.evict(v, now);
                    self.counters.source_recycled += 1;
                }
                None => return Err(DropReason::SourceLimit),
            },
            Err(Refusal::Limit) => return Err(DropReason::SourceLimit),
            Err(Refusal::TableFull) => return Err(DropReason::SourceTableFull),
        }
        match self.cfg.pressure.evict {
            Evict::ByClass => {
                // Hold non-assured newcomers to their quota by recycling the oldest of
                // their kind.
                if adm != Admission::Assured
                    && self.lists.non_assured() >= self.quota
                    && let Some(v) = self.oldest_non_assured()
                {
                    self.evict(v, now);
                }
                if self.table.is_full() {
                    match self.oldest_non_assured() {
                        Some(v) => self.evict(v, now),
                        // Only assured flows left: they are never evicted for a newcomer.
                        None => return Err(DropReason::TableFull),
                    }
                }
                // A full IPv6 pool is room like a full table (see `ClassLists`).
                if v6 && self.table.v6_pool_full() {
                    match self.lists.oldest_non_assured_v6() {
                        Some(v) => self.evict(v, now),
                        None => return Err(self.pool_full()),
                    }
                }
            }
            Evict::Lru => {
                if self.table.is_full() {
                    let older_v6 = self.older(self.lists.head_all(false), self.lists.head_all(true)).is_some_and(|s| self.table.conns[s as usize].is_v6());
                    if let Some(v) = self.second_chance(older_v6) {
                        self.evict(v, now);
                    }
                }
                if v6
                    && self.table.v6_pool_full()
                    && let Some(v) = self.second_chance(true)
                {
                    self.evict(v, now);
                }
            }
            Evict::None => {
                if self.table.is_full() {
                    return Err(DropReason::TableFull);
                }
                if v6 && self.table.v6_pool_full() {
                    return Err(self.pool_full());
                }
            }
        }
        Ok(())
    }

    /// Counts a new IPv6 flow refused for want of a place in the IPv6 pool.
    fn pool_full(&mut self) -> DropReason {
        self.counters.ipv6_pool_full += 1;
        DropReason::TableFull
    }

    /// The oldest non-assured entry of the lowest class either family has.
    #[inline]
    fn oldest_non_assured(&self) -> Option<u32> {
        let (v4, v6) = self.lists.oldest_non_assured()?;
        self.older(v4, v6)
    }

    /// Of two list heads (an IPv4 and an IPv6 one), the one seen longer ago; IPv4 on a
    /// tie. Each list keeps the order its entries joined it; across the two families
    /// "older" is judged by the heads' last packets (ticks of 1/64 s).
    #[inline]
    fn older(&self, v4: Option<u32>, v6: Option<u32>) -> Option<u32> {
        match (v4, v6) {
            (Some(a), Some(b)) => {
                let (la, lb) = (self.table.conns[a as usize].last_seen, self.table.conns[b as usize].last_seen);
                Some(if (lb.wrapping_sub(la) as i32) < 0 { b } else { a })
            }
            (a, b) => a.or(b),
        }
    }

    fn evict(&mut self, slot: u32, now: Instant) {
        let h = self.table.hash(&self.table.key_of(slot));
        self.retire(slot, h, Some(Why::Evicted), now);
        if self.lists.per_class() {
            self.warm_next_victim();
        }
    }

    /// Under a flood every new flow evicts the oldest non-assured entry, a cold one:
    /// its entry, timer node, list links, index bucket and tombstone set are cache
    /// misses, the bucket and the set waiting on the entry (their place is its key's
    /// hash). So each eviction warms the next victim, whose entry and links the
    /// previous eviction brought in — its hash is known now: its bucket and set — and
    /// starts on the one after it: its entry, timer node, counters and bookkeeping
    /// (the new entry that takes over the slot writes the last two as well) and list
    /// links. Hints only: the next eviction still takes whatever is oldest then.
    #[inline]
    fn warm_next_victim(&mut self) {
        let Some(v) = self.oldest_non_assured() else { return };
        let h = self.table.hash(&self.table.key_of(v));
        self.table.prefetch_bucket(h);
        self.tombs.prefetch(h);
        if let Some(n) = self.lists.next_of(v) {
            self.table.prefetch_slot(n);
            self.lists.prefetch(n);
        }
    }

    /// The LRU model's victim in one family's list: the oldest entry not used since
    /// the clock last passed.
    fn second_chance(&mut self, v6: bool) -> Option<u32> {
        for _ in 0..SECOND_CHANCE_TRIES {
            let s = self.lists.head_all(v6)?;
            let c = &mut self.table.conns[s as usize];
            if c.flags & cflag::REFERENCED == 0 {
                return Some(s);
            }
            c.flags &= !cflag::REFERENCED;
            let adm = c.admission();
            self.lists.rotate(s, adm, v6);
        }
        self.lists.head_all(v6)
    }
}
