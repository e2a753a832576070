//! Per-core counters: plain integers owned by one worker, summed by whoever reads them.

use crate::conntrack::TimerClass;
use crate::conntrack::pressure::Admission;
use crate::verdict::{DropReason, PassKind, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub passed: [u64; PassKind::COUNT],
    pub dropped: [u64; DropReason::COUNT],
    pub flows_created: u64,
    /// Entries removed because their timeout ran out.
    pub flows_expired: u64,
    /// Entries removed by TCP (an RST answering an unreplied flow, a SYN reopening a
    /// closed connection).
    pub flows_closed: u64,
    /// Entries a reload removed because the new rules deny them.
    pub flows_revoked: u64,
    /// Times the index could not place a key although entries were free (cuckoo moves
    /// and stash exhausted): counted inside `table_full` drops as well.
    pub index_full: u64,
    /// IPv6 flows refused because the IPv6 address pool (`conntrack.ipv6_share`) was
    /// full: counted inside `table_full` drops as well.
    pub ipv6_pool_full: u64,
    /// New flows of a source at `per_source_limit` that took the place of that
    /// source's oldest non-assured entry (by-class).
    pub source_recycled: u64,
    /// Packets (and adopted or restored flows) that would have made a non-TCP flow a
    /// stream while streams held `stream_share` of the table: the flow stayed
    /// `Replied`.
    pub streams_held: u64,
    /// Fragment records replaced while still live (the fragment table's limit).
    pub fragment_evictions: u64,
    /// Entries evicted to make room, by admission class (in [`Admission::ALL`]'s
    /// order).
    pub evictions: [u64; Admission::COUNT],
    /// Entries whose timeout ran out, by admission class.
    pub expirations: [u64; Admission::COUNT],
    /// Of those, the assured ones by the timeout that ran out (a
    /// [`TimerClass`] index): which timer aged an answered flow out — its state's
    /// own, or `tcp_unacknowledged` / `tcp_max_retrans` after data went unanswered.
    pub assured_expirations: [u64; TimerClass::COUNT],
    /// No-state packets whose flow a tombstone remembered.
    pub tombstone_hits: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            packets: 0,
            bytes: 0,
            passed: [0; PassKind::COUNT],
            dropped: [0; DropReason::COUNT],
            flows_created: 0,
            flows_expired: 0,
            flows_closed: 0,
            flows_revoked: 0,
            index_full: 0,
            ipv6_pool_full: 0,
            source_recycled: 0,
            streams_held: 0,
            fragment_evictions: 0,
            evictions: [0; Admission::COUNT],
            expirations: [0; Admission::COUNT],
            assured_expirations: [0; TimerClass::COUNT],
            tombstone_hits: 0,
        }
    }
}

impl Counters {
    /// Counts a verdict by its kind or reason; `packets` and `bytes` are added once
    /// a burst.
    #[inline]
    pub(crate) fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Pass(k) => self.passed[k as usize] += 1,
            Verdict::Drop(r) => self.dropped[r as usize] += 1,
        }
    }

    /// The assured expirations that happened, by the name of the timeout that ran out
    /// (its `conntrack.timeouts` key).
    pub fn assured_expirations_named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        TimerClass::ALL.iter().map(|t| (t.name(), self.assured_expirations[*t as usize])).filter(|e| e.1 > 0)
    }

    pub fn passed_total(&self) -> u64 {
        self.passed.iter().sum()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Packets dropped because the state of an admitted flow was gone (evicted or
    /// expired while the peers still talked): the origin story's figure.
    pub fn reply_denied(&self) -> u64 {
        DropReason::ALL.iter().filter(|r| r.is_reply_denied()).map(|r| self.dropped[*r as usize]).sum()
    }

    /// Adds another core's counters into these.
    pub fn merge(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        for (a, b) in self.passed.iter_mut().zip(o.passed) {
            *a += b;
        }
        for (a, b) in self.dropped.iter_mut().zip(o.dropped) {
            *a += b;
        }
        self.flows_created += o.flows_created;
        self.flows_expired += o.flows_expired;
        self.flows_closed += o.flows_closed;
        self.flows_revoked += o.flows_revoked;
        self.index_full += o.index_full;
        self.ipv6_pool_full += o.ipv6_pool_full;
        self.source_recycled += o.source_recycled;
        self.streams_held += o.streams_held;
        self.fragment_evictions += o.fragment_evictions;
        for i in 0..Admission::COUNT {
            self.evictions[i] += o.evictions[i];
            self.expirations[i] += o.expirations[i];
        }
        for (a, b) in self.assured_expirations.iter_mut().zip(&o.assured_expirations) {
            *a += b;
        }
        self.tombstone_hits += o.tombstone_hits;
    }
}
