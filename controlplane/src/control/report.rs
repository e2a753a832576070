//! The appliance's counters for people and programs: each worker's snapshot as JSON,
//! the final counters when it stops, the status line printed every report interval.

use std::fmt::Write as _;
use std::time::Duration;

use holdfast_dataplane::stats::{ForwardDrop, Snapshot};
use holdfast_pipeline::conntrack::pressure::Admission;
use holdfast_pipeline::{Counters, DropReason};
use serde_json::{Map, Value, json};

use super::saturation::{Active, Report};

fn drops_map(c: &Counters) -> Map<String, Value> {
    DropReason::ALL.iter().filter(|r| c.dropped[**r as usize] > 0).map(|r| (r.name().to_string(), json!(c.dropped[*r as usize]))).collect()
}

pub fn snapshot_json(s: &Snapshot) -> Value {
    let xdp = |k: usize| {
        let x = &s.xdp[k];
        json!({"rx_dropped": x.rx_dropped, "rx_ring_full": x.rx_ring_full, "rx_fill_ring_empty_descs": x.rx_fill_ring_empty_descs,
               "rx_invalid_descs": x.rx_invalid_descs, "tx_invalid_descs": x.tx_invalid_descs, "tx_ring_empty_descs": x.tx_ring_empty_descs,
               "syn_shed": x.syn_shed})
    };
    // SYN shedding at the XDP hook (the counts are in `xdp.*.syn_shed`).
    let shed = json!({
        "active": {"outside": s.shedding[0], "inside": s.shedding[1]},
        "episodes": {"outside": s.shed_episodes[0], "inside": s.shed_episodes[1]},
        "flag_errors": s.shed_flag_errors,
    });
    let mut v = json!({
        "worker": s.worker,
        "core": s.core,
        "queue": s.queue,
        "rx": {"outside": s.rx[0], "inside": s.rx[1]},
        "tx": {"outside": s.tx[0], "inside": s.tx[1]},
        "rx_bytes": {"outside": s.rx_bytes[0], "inside": s.rx_bytes[1]},
        "tx_bytes": {"outside": s.tx_bytes[0], "inside": s.tx_bytes[1]},
        "tx_lost": {"outside": s.tx_lost[0], "inside": s.tx_lost[1]},
        "rebinds": s.rebinds,
        "passed": s.counters.passed_total(),
        "dropped": s.counters.dropped_total(),
        "drops": drops_map(&s.counters),
        "reply_denied": s.counters.reply_denied(),
        "forward_drops": ForwardDrop::ALL.iter().map(|f| (f.name().to_string(), json!(s.forward_drops[*f as usize]))).collect::<Map<String, Value>>(),
        "handoff_out": s.handoff_out,
        "handoff_in": s.handoff_in,
        "flows_created": s.counters.flows_created,
        "table": {"entries": s.table_len, "capacity": s.table_capacity,
                  "classes": Admission::ALL.iter().map(|a| (a.name().to_string(), json!(s.classes[*a as usize]))).collect::<Map<String, Value>>()},
        "xdp": {"outside": xdp(0), "inside": xdp(1)},
        "shed": shed,
        "busy_ratio": if s.polls > 0 { s.busy_polls as f64 / s.polls as f64 } else { 0.0 },
        "busy_ns": s.busy_ns,
        "foreign_flows": s.foreign_flows,
        "flows_revoked": s.counters.flows_revoked,
        "evictions": Admission::ALL.iter().map(|a| (a.name().to_string(), json!(s.counters.evictions[*a as usize]))).collect::<Map<String, Value>>(),
        "expirations": Admission::ALL.iter().map(|a| (a.name().to_string(), json!(s.counters.expirations[*a as usize]))).collect::<Map<String, Value>>(),
        "assured_expirations": s.counters.assured_expirations_named().map(|(k, n)| (k.to_string(), json!(n))).collect::<Map<String, Value>>(),
        "tombstone_hits": s.counters.tombstone_hits,
        "ipv6_pool_full": s.counters.ipv6_pool_full,
        "table_full": s.counters.dropped[DropReason::TableFull as usize],
        "log_events": s.log_events,
        "log_suppressed": s.log_suppressed,
        "publish_ns": s.publish_ns,
        "publications": s.publications,
        "handoff_depth": s.handoff_depth,
        "accounting": s.accounting,
        "fragments_held": s.fragments.held,
        "fragments_released": s.fragments.released,
        "fragments_hold_expired": s.fragments.expired,
        "fragments_hold_overflow": s.fragments.overflow,
        "generation": s.generation,
    });
    // Outside the macro: one more key there passes its recursion limit.
    v["polls"] = json!({
        "max_gap_ns": s.max_poll_gap_ns,
        "slower_than_10ms": s.slow_polls,
        "max_poll_ns": s.max_poll_ns,
        "max_with_housekeeping_ns": s.max_housekeeping_ns,
    });
    v["source_recycled"] = json!(s.counters.source_recycled);
    v["streams_held"] = json!(s.counters.streams_held);
    v
}

pub fn final_json(snaps: &[Snapshot], uptime: Duration) -> Value {
    let t = Snapshot::total(snaps);
    let mut total = snapshot_json(&t);
    total.as_object_mut().expect("object").remove("worker");
    json!({"uptime_s": uptime.as_secs_f64(), "totals": total, "workers": snaps.iter().map(snapshot_json).collect::<Vec<_>>()})
}

/// The line printed every report interval.
pub fn status_line(r: &Report, active: &[Active], uptime: Duration) -> String {
    let t = &r.total;
    let mut s = format!("[{:>5.0}s] in {:>9.0} pps  out {:>9.0} pps  | drops/s", uptime.as_secs_f64(), t.rx_pps, t.tx_pps);
    if t.drops_per_s.is_empty() {
        s.push_str(" none");
    }
    for (k, v) in &t.drops_per_s {
        let _ = write!(s, " {k} {v:.0}");
    }
    let _ = write!(s, "  | table {}/{} ({:.1} %)  busy {:.0} %", t.entries, t.capacity, 100.0 * t.table_fill, 100.0 * t.busy);
    for a in active {
        if a.is_fault() {
            let _ = write!(s, "  | FAULT {}", a.detail);
        } else {
            let _ = write!(s, "  | SATURATED {} w{}", a.name, a.worker);
        }
    }
    s
}

/// The final counters for people.
pub fn human(v: &Value) -> String {
    let t = &v["totals"];
    let mut s = String::new();
    let _ = writeln!(s, "holdfast: stopped after {:.1} s; XDP detached", v["uptime_s"].as_f64().unwrap_or(0.0));
    if let Some(stuck) = v["stuck_workers"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(s, "  STUCK      worker(s) {stuck:?} did not stop: their counters are the last they published");
    }
    let _ = writeln!(s, "  received   outside {} / inside {} frames", t["rx"]["outside"], t["rx"]["inside"]);
    let _ = writeln!(s, "  forwarded  to inside {} / to outside {} frames", t["tx"]["inside"], t["tx"]["outside"]);
    let _ = writeln!(s, "  passed {}  dropped {}  drops {}", t["passed"], t["dropped"], t["drops"]);
    let _ = writeln!(s, "  forward drops {}  handoff out {} in {}", t["forward_drops"], t["handoff_out"], t["handoff_in"]);
    let _ = write!(s, "  table {}  xdp {}", t["table"], t["xdp"]);
    s
}
