//! Work between bursts: expiry with a bounded budget, a reloaded configuration swapped
//! in, and a reload's pass over the table (timers brought forward, flows the new rules
//! deny revoked), a slice at a time.

use std::sync::Arc;

use super::timers::{abs_ticks, idle_ticks};
use super::{Engine, EngineConfig, quota, stream_cap};
use crate::conntrack::conn::cflag;
use crate::conntrack::pressure::{Admission, Pressure};
use crate::conntrack::table::REHOME_BUCKETS;
use crate::conntrack::tombstones::Why;
use crate::parse;
use crate::policy::{Classifier, Query, Zone};
use crate::time::Instant;

/// What [`Engine::maintain`] did to one slice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    pub examined: u32,
    pub revoked: u32,
    pub rearmed: u32,
}

impl Engine {
    /// Retires entries whose timeout has run out, examining at most `budget` timer
    /// entries. Returns how many entries were removed.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        self.rescale();
        let now_abs = abs_ticks(now);
        let now32 = now.ticks();
        let mut removed = 0;
        let mut budget = budget;
        while budget > 0 {
            let Some(slot) = self.table.pop_due(now_abs) else { break };
            let c = self.table.conns[slot as usize];
            let timeout = self.timeout_of(&c);
            let idle = idle_ticks(now32, c.last_seen);
            if idle >= timeout {
                let h = self.table.hash(&self.table.key_of(slot));
                self.retire(slot, h, Some(Why::Expired), now);
                removed += 1;
            } else {
                // Alive: re-arm at its deadline, but no later than now + floor.
                let next = (timeout - idle).min(self.cfg.timeouts.floor_ticks(c.timer_class()));
                self.table.arm(slot, now_abs + u64::from(next));
            }
            budget -= 1;
        }
        // Under pressure, timeouts shrank after entries were armed: sweep the oldest
        // non-assured entries (the heads of their FIFO lists) with the shrunken ones.
        if self.scale < 1024 && self.lists.per_class() {
            for a in Admission::EVICTABLE {
                // What the classes below gave back lowers the pressure on this one.
                self.rescale();
                for v6 in [false, true] {
                    while budget > 0 {
                        let Some(slot) = self.lists.head(a, v6) else { break };
                        let c = self.table.conns[slot as usize];
                        if idle_ticks(now32, c.last_seen) < self.timeout_of(&c) {
                            break;
                        }
                        budget -= 1;
                        let h = self.table.hash(&self.table.key_of(slot));
                        self.retire(slot, h, Some(Why::Expired), now);
                        removed += 1;
                    }
                }
            }
        }
        // Keys that overflowed go home where churn has made room (`Table::rehome`).
        self.table.rehome(REHOME_BUCKETS);
        removed
    }

    /// Applies a reloaded configuration between bursts. What can change on a running
    /// table changes: rules, timeouts, pickup, ARP/NDP/non-IP actions, the fragment
    /// timeout, the pressure settings other than the eviction mode, and the per-source
    /// limit's value (when it was enabled at start). What sizes memory or the hash —
    /// capacity, fragment and tombstone records, the seed, the eviction mode, turning
    /// the per-source limit on or off — stays as it was; the control plane reports those
    /// as needing a restart. Existing entries use the new timeouts from their next
    /// packet; [`Engine::maintain`] brings their timers forward where the new timeouts
    /// are shorter, and, for `recheck`, removes flows the new rules deny.
    pub fn reconfigure(&mut self, cfg: &EngineConfig, policy: Arc<Classifier>) {
        let old = self.cfg;
        self.cfg = EngineConfig {
            capacity: old.capacity,
            fragments: old.fragments,
            tombstones: old.tombstones,
            seed: old.seed,
            pressure: Pressure { evict: old.pressure.evict, ..cfg.pressure },
            per_source_limit: if old.per_source_limit == 0 || cfg.per_source_limit == 0 { old.per_source_limit } else { cfg.per_source_limit },
            source_prefix_v6: old.source_prefix_v6,
            ..*cfg
        };
        self.sources.limit = self.cfg.per_source_limit;
        self.frags.set_timeout(self.cfg.fragment_timeout.ticks());
        self.quota = quota(&self.cfg);
        self.stream_cap = stream_cap(&self.cfg);
        self.rescale();
        self.policy = policy;
    }

    /// After a reload, over slots `range`: brings each live entry's timer forward to
    /// what the current timeouts allow, and with `recheck`, asks the current rules about
    /// each flow's original direction and removes the flows they deny (their later
    /// packets drop as `revoked`). Call it a slice of the table at a time.
    pub fn maintain(&mut self, range: std::ops::Range<u32>, now: Instant, recheck: bool) -> Maintained {
        let end = range.end.min(self.table.capacity() as u32);
        let mut done = Maintained::default();
        for s in range.start.min(end)..end {
            if !self.table.is_live(s) {
                continue;
            }
            done.examined += 1;
            if recheck && !self.allowed(&self.entry_query(s)) {
                let h = self.table.hash(&self.table.key_of(s));
                self.retire(s, h, Some(Why::Revoked), now);
                done.revoked += 1;
                continue;
            }
            // As if its timer fired now: the timer node keeps no deadline to compare
            // with, so every entry is re-armed at what the current timeouts give it.
            let c = &self.table.conns[s as usize];
            let (timeout, idle) = (self.timeout_of(c), idle_ticks(now.ticks(), c.last_seen));
            let next = timeout.saturating_sub(idle).min(self.cfg.timeouts.floor_ticks(c.timer_class()));
            self.table.rearm(s, abs_ticks(now) + u64::from(next));
            done.rearmed += 1;
        }
        done
    }

    /// The question the rules were asked when the flow in `slot` started.
    fn entry_query(&self, slot: u32) -> Query {
        let c = &self.table.conns[slot as usize];
        let k = self.table.key_of(slot);
        let o = usize::from(c.has(cflag::ORIG_IS_HI));
        let from = if self.table.aux[slot as usize].origin_inside() { Zone::Inside } else { Zone::Outside };
        let ports = matches!(k.proto, parse::proto::TCP | parse::proto::UDP);
        Query {
            from,
            to: from.other(),
            v6: k.v6,
            proto: k.proto,
            src: k.addr[o],
            dst: k.addr[1 - o],
            sport: if ports { k.port[o] } else { 0 },
            dport: if ports { k.port[1 - o] } else { 0 },
            icmp_type: c.icmp_type(),
        }
    }
}
