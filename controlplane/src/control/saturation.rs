//! Saturation reports: per-core and total rates, table fill, time to full, busy ratio,
//! and the events raised when a `control.saturation` threshold is crossed.
//!
//! A report compares two sets of worker snapshots taken `dt` apart. An event is raised
//! when a worker's value reaches its threshold and cleared when it falls below 90 % of
//! it, so that a value hovering at the threshold does not flap.

use std::collections::BTreeMap;
use std::time::SystemTime;

use holdfast_dataplane::stats::{ForwardDrop, Snapshot};
use holdfast_pipeline::DropReason;
use holdfast_pipeline::conntrack::pressure::Admission;

use crate::config::Thresholds;
use holdfast_pipeline::holders::Holders;
use serde_json::Value;

/// Rates and fill of one worker (or all: `worker == None`) over one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreReport {
    pub worker: Option<usize>,
    pub core: Option<usize>,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub drop_pps: f64,
    pub drops_per_s: BTreeMap<&'static str, f64>,
    pub entries: usize,
    pub capacity: usize,
    pub table_fill: f64,
    /// Entries of each admission class / capacity.
    pub class_fill: [f64; Admission::COUNT],
    /// What a flood fills (replied, embryonic and unreplied classes) / capacity.
    pub embryonic_share: f64,
    /// New entries per second, and entries leaving (expired, evicted, closed, revoked).
    pub insert_rate: f64,
    pub removal_rate: f64,
    /// New flows refused per second (`table_full`, `source_limit`).
    pub insert_failure_rate: f64,
    /// At the current net insert rate, seconds until the table is full (`None`: not
    /// filling).
    pub time_to_full_s: Option<f64>,
    /// Polls that found work / all polls.
    pub busy: f64,
    pub rx_ring_full_per_s: f64,
    pub fill_ring_empty_per_s: f64,
    pub handoff_drops_per_s: f64,
    /// New flows refused by the per-source limit (or a full per-source table), per s.
    pub source_limit_per_s: f64,
    /// SYNs the XDP program shed before the RX rings, per second.
    pub syn_shed_per_s: f64,
    pub adaptive_scale: f64,
    /// Who held the most entries in the worker's last sweep (merged for the total).
    pub holders: Holders,
}

/// One report: each worker, then the total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub interval_s: f64,
    pub workers: Vec<CoreReport>,
    pub total: CoreReport,
}

fn rate(now: u64, before: u64, dt: f64) -> f64 {
    now.saturating_sub(before) as f64 / dt
}

fn core_report(worker: Option<usize>, now: &Snapshot, prev: &Snapshot, dt: f64) -> CoreReport {
    let c = &now.counters;
    let p = &prev.counters;
    let cap = now.table_capacity.max(1) as f64;
    let removed = |s: &Snapshot| s.counters.flows_expired + s.counters.evictions.iter().sum::<u64>() + s.counters.flows_closed + s.counters.flows_revoked;
    let insert_rate = rate(c.flows_created, p.flows_created, dt);
    let removal_rate = rate(removed(now), removed(prev), dt);
    let refused = |s: &Snapshot| {
        [DropReason::TableFull, DropReason::SourceLimit, DropReason::SourceTableFull].iter().map(|r| s.counters.dropped[*r as usize]).sum::<u64>()
    };
    let net = insert_rate - removal_rate;
    let free = now.table_capacity.saturating_sub(now.table_len) as f64;
    let source_refused = |s: &Snapshot| s.counters.dropped[DropReason::SourceLimit as usize] + s.counters.dropped[DropReason::SourceTableFull as usize];
    let handoff_drops = |s: &Snapshot| s.forward_drops[ForwardDrop::HandoffFull as usize] + s.forward_drops[ForwardDrop::HandoffTooLarge as usize];
    let polls = now.polls.saturating_sub(prev.polls);
    let mut class_fill = [0.0; Admission::COUNT];
    for (k, f) in class_fill.iter_mut().enumerate() {
        *f = f64::from(now.classes[k]) / cap;
    }
    CoreReport {
        worker,
        core: now.core,
        rx_pps: rate(now.rx[0] + now.rx[1], prev.rx[0] + prev.rx[1], dt),
        tx_pps: rate(now.tx[0] + now.tx[1], prev.tx[0] + prev.tx[1], dt),
        drop_pps: rate(c.dropped_total(), p.dropped_total(), dt),
        drops_per_s: DropReason::ALL
            .iter()
            .filter(|r| c.dropped[**r as usize] > p.dropped[**r as usize])
            .map(|r| (r.name(), rate(c.dropped[*r as usize], p.dropped[*r as usize], dt)))
            .collect(),
        entries: now.table_len,
        capacity: now.table_capacity,
        table_fill: now.table_len as f64 / cap,
        class_fill,
        // What a flood fills: half-open TCP, unreplied UDP/ICMP, and answered
        // requests that are no stream (a spoofed ping or query is answered); the
        // by-class quota holds them to a share.
        embryonic_share: class_fill[Admission::Replied as usize] + class_fill[Admission::Embryonic as usize] + class_fill[Admission::Unreplied as usize],
        insert_rate,
        removal_rate,
        insert_failure_rate: rate(refused(now), refused(prev), dt),
        time_to_full_s: if net > 0.0 { Some(free / net) } else { None },
        busy: if polls > 0 { now.busy_polls.saturating_sub(prev.busy_polls) as f64 / polls as f64 } else { 0.0 },
        rx_ring_full_per_s: rate(now.xdp[0].rx_ring_full + now.xdp[1].rx_ring_full, prev.xdp[0].rx_ring_full + prev.xdp[1].rx_ring_full, dt),
        fill_ring_empty_per_s: rate(
            now.xdp[0].rx_fill_ring_empty_descs + now.xdp[1].rx_fill_ring_empty_descs,
            prev.xdp[0].rx_fill_ring_empty_descs + prev.xdp[1].rx_fill_ring_empty_descs,
            dt,
        ),
        handoff_drops_per_s: rate(handoff_drops(now), handoff_drops(prev), dt),
        source_limit_per_s: rate(source_refused(now), source_refused(prev), dt),
        syn_shed_per_s: rate(now.xdp[0].syn_shed + now.xdp[1].syn_shed, prev.xdp[0].syn_shed + prev.xdp[1].syn_shed, dt),
        adaptive_scale: now.adaptive_scale,
        holders: now.holders,
    }
}

/// The report for snapshots `now` taken `dt` seconds after `prev` (same workers).
pub fn report(prev: &[Snapshot], now: &[Snapshot], dt: f64) -> Report {
    let dt = dt.max(1e-3);
    let workers: Vec<CoreReport> = now.iter().enumerate().map(|(w, s)| core_report(Some(w), s, prev.get(w).unwrap_or(&Snapshot::default()), dt)).collect();
    let mut total = core_report(None, &Snapshot::total(now), &Snapshot::total(prev), dt);
    // Busy and time to full are per core: the total shows the worst core.
    total.busy = workers.iter().map(|w| w.busy).fold(0.0, f64::max);
    total.time_to_full_s = workers.iter().filter_map(|w| w.time_to_full_s).reduce(f64::min);
    total.holders = Holders::merged(now.iter().map(|s| &s.holders));
    Report { interval_s: dt, workers, total }
}

/// The kinds of saturation event, as named in logs and in the `reason` label.
pub const EVENTS: [&str; 7] = ["table_fill", "embryonic_share", "busy", "rx_ring_full", "handoff_drops", "source_limit", "syn_shed"];

/// Faults: events that are not a rate crossing a configured threshold but something
/// broken — a worker whose loop stopped, an interface that went away, a log that
/// cannot be written. Raised and cleared by the control loop ([`Saturation::fault`]);
/// reported beside the saturation events, under the same metric families.
pub const FAULTS: [&str; 8] =
    ["worker_stalled", "interface_down", "queues_unbound", "deny_log_write", "stderr_write", "thread_ended", "sync_lost", "sync_backlog"];

/// Every event kind, saturation and fault.
pub fn all_events() -> impl Iterator<Item = &'static str> {
    EVENTS.iter().chain(FAULTS.iter()).copied()
}

fn values(r: &CoreReport, t: &Thresholds) -> [(f64, f64); 7] {
    [
        (r.table_fill, t.table_fill),
        (r.embryonic_share, t.embryonic_share),
        (r.busy, t.busy),
        (r.rx_ring_full_per_s, t.rx_ring_full_per_s),
        (r.handoff_drops_per_s, t.handoff_drops_per_s),
        (r.source_limit_per_s, t.source_limit_per_s),
        (r.syn_shed_per_s, t.syn_shed_per_s),
    ]
}

/// An event that is raised now.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub name: &'static str,
    pub worker: usize,
    pub since: SystemTime,
    /// The value when raised, the latest value, and the threshold.
    pub raised_at: f64,
    pub value: f64,
    pub threshold: f64,
    /// For a fault: what is wrong, in words (empty for saturation events).
    pub detail: String,
}

impl Active {
    pub fn is_fault(&self) -> bool {
        FAULTS.contains(&self.name)
    }
}

/// A change: an event raised or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub raised: bool,
    pub event: Active,
}

impl Transition {
    /// One log line.
    pub fn describe(&self, report: &Report) -> String {
        let e = &self.event;
        if e.is_fault() {
            return format!("fault {} {}: {}", if self.raised { "RAISED" } else { "cleared" }, e.name, e.detail);
        }
        let mut s = format!(
            "saturation {} {} on worker {}: {:.3} {} threshold {}",
            if self.raised { "RAISED" } else { "cleared" },
            e.name,
            e.worker,
            e.value,
            if self.raised { ">=" } else { "< 90 % of" },
            e.threshold
        );
        if let Some(w) = report.workers.get(e.worker)
            && e.name == "table_fill"
        {
            s.push_str(&format!(
                " ({} of {} entries; inserts {:.0}/s, removals {:.0}/s, refused {:.0}/s, full in {})",
                w.entries,
                w.capacity,
                w.insert_rate,
                w.removal_rate,
                w.insert_failure_rate,
                w.time_to_full_s.map_or("never at this rate".to_string(), |t| format!("{t:.0} s"))
            ));
        }
        if self.raised
            && matches!(e.name, "table_fill" | "embryonic_share" | "source_limit")
            && let Some(w) = report.workers.get(e.worker)
        {
            s.push_str(&format!("; {}", holders_line(&w.holders)));
        }
        s
    }
}

/// Who holds a worker's table, in words: the top sources and destination ports by
/// entries held in its last sweep (Space-Saving estimates: at most `error` over).
pub fn holders_line(h: &Holders) -> String {
    if h.swept == 0 {
        return "holders: no sweep of the table finished yet".into();
    }
    let src: Vec<String> = h.top_sources().take(5).map(|x| format!("{} ({})", h.source_text(x), x.entries)).collect();
    let ports: Vec<String> = h.top_ports().take(5).map(|x| format!("{}/{} ({})", proto_text(x.proto), x.what, x.entries)).collect();
    format!("top sources by entries held: {}; top destination ports: {} (of {} entries swept)", src.join(", "), ports.join(", "), h.swept)
}

/// A protocol as `flows` names it (`replay::proto_name`), as text.
pub fn proto_text(p: u8) -> String {
    match crate::replay::proto_name(p) {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

/// Which events are raised, and how many times each kind was.
#[derive(Debug, Default)]
pub struct Saturation {
    active: BTreeMap<(&'static str, usize), Active>,
    pub raised_total: BTreeMap<&'static str, u64>,
}

impl Saturation {
    /// Raises and clears events from a report; returns the changes.
    pub fn update(&mut self, r: &Report, t: &Thresholds, now: SystemTime) -> Vec<Transition> {
        let mut out = Vec::new();
        for w in &r.workers {
            let worker = w.worker.unwrap_or(0);
            for (name, (value, threshold)) in EVENTS.iter().zip(values(w, t)) {
                let key = (*name, worker);
                match self.active.get_mut(&key) {
                    None if value >= threshold => {
                        let e = Active { name, worker, since: now, raised_at: value, value, threshold, detail: String::new() };
                        *self.raised_total.entry(name).or_default() += 1;
                        self.active.insert(key, e.clone());
                        out.push(Transition { raised: true, event: e });
                    }
                    Some(e) if value < 0.9 * threshold => {
                        let mut e = e.clone();
                        e.value = value;
                        self.active.remove(&key);
                        out.push(Transition { raised: false, event: e });
                    }
                    Some(e) => {
                        e.value = value;
                        e.threshold = threshold;
                    }
                    None => {}
                }
            }
        }
        out
    }

    pub fn active(&self) -> impl Iterator<Item = &Active> {
        self.active.values()
    }

    /// Raises (`on`) or clears the fault `name` of `subject` (a worker, or an
    /// interface's zone: 0 outside, 1 inside); `value` is how bad it is (seconds
    /// without a heartbeat, …), `detail` says it in words. Returns the change, if any.
    pub fn fault(&mut self, name: &'static str, subject: usize, on: bool, value: f64, detail: String, now: SystemTime) -> Option<Transition> {
        debug_assert!(FAULTS.contains(&name));
        let key = (name, subject);
        match self.active.get_mut(&key) {
            None if on => {
                let e = Active { name, worker: subject, since: now, raised_at: value, value, threshold: 0.0, detail };
                *self.raised_total.entry(name).or_default() += 1;
                self.active.insert(key, e.clone());
                Some(Transition { raised: true, event: e })
            }
            Some(e) if !on => {
                let mut e = e.clone();
                e.value = value;
                e.detail = detail;
                self.active.remove(&key);
                Some(Transition { raised: false, event: e })
            }
            Some(e) => {
                e.value = value;
                e.detail = detail;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn th() -> Thresholds {
        Thresholds {
            table_fill: 0.8,
            embryonic_share: 0.2,
            busy: 0.9,
            rx_ring_full_per_s: 1000.0,
            handoff_drops_per_s: 1.0,
            source_limit_per_s: 1.0,
            syn_shed_per_s: 1.0,
        }
    }

    fn snap(entries: usize, created: u64, expired: u64) -> Snapshot {
        let mut s = Snapshot { table_len: entries, table_capacity: 1000, ..Snapshot::default() };
        s.counters.flows_created = created;
        s.counters.flows_expired = expired;
        s.classes[Admission::Assured as usize] = entries as u32;
        s
    }

    #[test]
    fn rates_fill_and_time_to_full() {
        let r = report(&[snap(100, 100, 0)], &[snap(300, 400, 100)], 2.0);
        let w = &r.workers[0];
        assert_eq!((w.insert_rate, w.removal_rate), (150.0, 50.0));
        assert_eq!(w.table_fill, 0.3);
        assert_eq!(w.time_to_full_s, Some(7.0), "700 free entries at a net 100/s");
        assert_eq!(r.total.time_to_full_s, Some(7.0));
        let r = report(&[snap(300, 400, 100)], &[snap(200, 400, 200)], 1.0);
        assert_eq!(r.workers[0].time_to_full_s, None, "emptying");
    }

    #[test]
    fn events_are_raised_at_the_threshold_and_cleared_below_ninety_percent() {
        let mut s = Saturation::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let at = |n: usize| report(&[snap(n, 0, 0)], &[snap(n, 0, 0)], 1.0);
        assert!(s.update(&at(790), &th(), t0).is_empty());
        let up = s.update(&at(800), &th(), t0);
        assert_eq!(up.len(), 1);
        assert!(up[0].raised && up[0].event.name == "table_fill" && up[0].event.worker == 0);
        assert!(up[0].describe(&at(800)).contains("RAISED table_fill on worker 0: 0.800 >= threshold 0.8"));
        // Hovering between 72 % and 80 % changes nothing.
        assert!(s.update(&at(760), &th(), t0).is_empty());
        assert!(s.update(&at(810), &th(), t0).is_empty());
        assert_eq!(s.active().count(), 1);
        let down = s.update(&at(700), &th(), t0);
        assert_eq!(down.len(), 1);
        assert!(!down[0].raised);
        assert_eq!(s.active().count(), 0);
        assert_eq!(s.raised_total["table_fill"], 1);
    }

    #[test]
    fn faults_are_raised_once_and_cleared_when_the_cause_goes() {
        let mut s = Saturation::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let up = s.fault("worker_stalled", 1, true, 1.2, "worker 1: no heartbeat for 1.2 s".into(), t0).unwrap();
        assert!(up.raised && up.event.is_fault());
        assert_eq!(up.describe(&Report::default()), "fault RAISED worker_stalled: worker 1: no heartbeat for 1.2 s");
        assert!(s.fault("worker_stalled", 1, true, 5.0, "worker 1: no heartbeat for 5.0 s".into(), t0).is_none(), "still raised");
        assert_eq!(s.active().next().unwrap().value, 5.0);
        assert!(s.fault("worker_stalled", 0, false, 0.0, String::new(), t0).is_none(), "another worker was never raised");
        let down = s.fault("worker_stalled", 1, false, 0.0, "worker 1 runs again".into(), t0).unwrap();
        assert!(!down.raised);
        assert_eq!(s.active().count(), 0);
        assert_eq!(s.raised_total["worker_stalled"], 1);
    }
}

#[cfg(test)]
mod flood_tests {
    use super::*;

    #[test]
    fn a_udp_flood_counts_toward_embryonic_share_like_a_syn_flood() {
        let mut s = Snapshot { table_len: 250, table_capacity: 1000, ..Snapshot::default() };
        s.classes[Admission::Unreplied as usize] = 250;
        let r = report(&[s], &[s], 1.0);
        assert_eq!(r.workers[0].embryonic_share, 0.25);
        let th = super::tests::th();
        let t = Saturation::default().update(&r, &th, SystemTime::UNIX_EPOCH);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].event.name, "embryonic_share");
        // Answered spoofed requests the same.
        let mut s = Snapshot { table_len: 250, table_capacity: 1000, ..Snapshot::default() };
        s.classes[Admission::Replied as usize] = 250;
        let r = report(&[s], &[s], 1.0);
        assert_eq!(r.workers[0].embryonic_share, 0.25);
    }
}
