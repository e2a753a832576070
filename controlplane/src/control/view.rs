//! The view the control loop publishes and the endpoint serves: the latest snapshots
//! and report, faults and saturation events, reloads, links; and `/status`'s JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use holdfast_dataplane::stats::Snapshot;
use holdfast_pipeline::conntrack::pressure::Admission;
use serde_json::{Value, json};

use std::sync::atomic::AtomicU64;

use super::report::snapshot_json;
use super::saturation::{self, Active, Report};

/// What the endpoint serves: the latest snapshots and report, refreshed by the control
/// thread (every 100 ms and every report interval).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub generation: u64,
    pub started_at: Option<SystemTime>,
    pub uptime_s: f64,
    pub interfaces: [String; 2],
    pub config_path: String,
    pub snaps: Vec<Snapshot>,
    pub report: Report,
    pub active: Vec<Active>,
    pub raised_total: BTreeMap<&'static str, u64>,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload: Option<Value>,
    /// Settings changed in the file that only a restart applies.
    pub restart_needed: Vec<String>,
    pub log_written: u64,
    pub log_write_errors: u64,
    /// The appliance's own log lines that standard error did not take.
    pub stderr_lost: u64,
    /// The endpoint's own counters (refusals, evictions, timeouts).
    pub http: Arc<HttpStats>,
    /// Each interface (outside, inside) as last seen.
    pub links: [LinkView; 2],
    /// Workers whose heartbeat stopped (see [`STALL_AFTER`]): requests that need them
    /// are answered at once instead of waiting.
    pub stalled: Vec<usize>,
    /// What the start made of `state.snapshot_dir` (restored, refused, none); `null`
    /// without one.
    pub state: Value,
    /// The sync endpoint's counters (`null` without `sync:`), and its external cache.
    pub sync: Value,
    pub external: Option<std::sync::Arc<std::sync::Mutex<crate::sync::endpoint::Status>>>,
}

/// `POST /takeover` (commit the peer's flows into the tables now) or `POST /resync`
/// (ask the peer for its whole table).
pub struct TakeoverRequest {
    pub resync: bool,
    pub reply: crossbeam_channel::Sender<Result<Value, String>>,
}

/// An interface as the link watch last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkView {
    /// up, down or gone.
    pub state: String,
    pub ifindex: Option<u32>,
    /// Up, and Holdfast attached to it: frames can leave there.
    pub up: bool,
    /// Times Holdfast re-attached to it after it came back.
    pub reattaches: u64,
}

impl LinkView {
    pub(super) fn of(st: holdfast_dataplane::sys::LinkState) -> LinkView {
        LinkView { state: st.name().to_string(), ifindex: st.ifindex(), up: st.is_up(), reattaches: 0 }
    }
}

/// A reload asked for over HTTP; the answer goes back on `reply`.
pub struct ReloadRequest {
    pub reply: crossbeam_channel::Sender<Result<Value, String>>,
}

/// `POST /snapshot`: write the running tables to `state.snapshot_dir` now.
pub struct SnapshotRequest {
    pub reply: crossbeam_channel::Sender<Result<Value, String>>,
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Who holds a table: the top sources and destination ports by entries held, with
/// how much each count may be over (Space-Saving), and how many entries were swept.
pub fn holders_json(h: &holdfast_pipeline::holders::Holders) -> Value {
    json!({
        "swept": h.swept,
        "sources": h.top_sources().map(|x| json!({"addr": holdfast_pipeline::flow::to_ip(x.what, x.v6).to_string(), "source": h.source_text(x), "entries": x.entries, "error": x.error})).collect::<Vec<_>>(),
        "ports": h.top_ports().map(|x| json!({"proto": crate::replay::proto_name(x.proto), "port": x.what as u64, "entries": x.entries, "error": x.error})).collect::<Vec<_>>(),
    })
}

/// `/status`: generation, uptime, per-core summary, active saturation events.
pub fn status_json(v: &View) -> Value {
    let core = |r: &saturation::CoreReport, s: Option<&Snapshot>| {
        let mut o = json!({
            "rx_pps": r.rx_pps.round(),
            "tx_pps": r.tx_pps.round(),
            "drop_pps": r.drop_pps.round(),
            "drops_per_s": r.drops_per_s,
            "entries": r.entries,
            "capacity": r.capacity,
            "table_fill": r.table_fill,
            "classes": Admission::ALL.iter().map(|a| (a.name().to_string(), json!(r.class_fill[*a as usize]))).collect::<serde_json::Map<String, Value>>(),
            "insert_rate": r.insert_rate,
            "removal_rate": r.removal_rate,
            "insert_failure_rate": r.insert_failure_rate,
            "time_to_full_s": r.time_to_full_s,
            "busy": r.busy,
            "rx_ring_full_per_s": r.rx_ring_full_per_s,
            "fill_ring_empty_per_s": r.fill_ring_empty_per_s,
            "handoff_drops_per_s": r.handoff_drops_per_s,
            "adaptive_scale": r.adaptive_scale,
            "source_limit_per_s": r.source_limit_per_s,
            "syn_shed_per_s": r.syn_shed_per_s,
            "holders": holders_json(&r.holders),
        });
        if let Some(s) = s {
            o["worker"] = json!(r.worker);
            o["core"] = json!(s.core);
            o["generation"] = json!(s.generation);
            o["maintaining"] = json!(s.maintaining);
            o["counters"] = snapshot_json(s);
        }
        o
    };
    let workers: Vec<Value> = v.report.workers.iter().zip(&v.snaps).map(|(r, s)| core(r, Some(s))).collect();
    let mut total = core(&v.report.total, None);
    total["counters"] = snapshot_json(&Snapshot::total(&v.snaps));
    json!({
        "generation": v.generation,
        "applied_by_all_workers": v.snaps.iter().all(|s| s.generation == v.generation && !s.maintaining),
        "started": v.started_at.map(rfc3339),
        "uptime_s": v.uptime_s,
        "config": v.config_path,
        "interfaces": {"outside": v.interfaces[0], "inside": v.interfaces[1]},
        "report_interval_s": v.report.interval_s,
        "workers": workers,
        "total": total,
        "saturation": v.active.iter().map(|a| {
            let mut e = json!({
                "event": a.name, "worker": a.worker, "since": rfc3339(a.since),
                "value": a.value, "raised_at": a.raised_at, "threshold": a.threshold,
            });
            if a.is_fault() {
                e["fault"] = json!(a.detail);
            }
            e
        }).collect::<Vec<_>>(),
        "stalled_workers": v.stalled,
        "links": {
            "outside": {"state": v.links[0].state, "ifindex": v.links[0].ifindex, "up": v.links[0].up, "reattaches": v.links[0].reattaches},
            "inside": {"state": v.links[1].state, "ifindex": v.links[1].ifindex, "up": v.links[1].up, "reattaches": v.links[1].reattaches},
        },
        "saturation_events_total": v.raised_total,
        "reloads": v.reloads,
        "reload_failures": v.reload_failures,
        "last_reload": v.last_reload,
        "restart_needed": v.restart_needed,
        "deny_log": {"written": v.log_written, "write_errors": v.log_write_errors},
        "stderr_lines_lost": v.stderr_lost,
        "state": v.state,
        "sync": v.sync,
    })
}

/// What the endpoint has had to refuse or cut, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    /// Connections closed to make room for a new one (over [`MAX_CONNECTIONS`]).
    pub evicted: AtomicU64,
    /// Connections closed after [`IDLE_TIMEOUT`] without traffic.
    pub idle_closed: AtomicU64,
    /// `accept()` failures (descriptor table full, …).
    pub accept_errors: AtomicU64,
    /// Requests refused for a missing or wrong token, or (without one) from another host
    /// or from a local user other than root and the appliance's own.
    pub unauthorized: AtomicU64,
    /// Bodies over [`BODY_LIMIT`] or not sent within [`BODY_TIMEOUT`].
    pub bad_bodies: AtomicU64,
    pub open: AtomicU64,
    /// Flow listings (`/flows`, `/flows/external`) being written now.
    pub listings: AtomicU64,
    /// Listings refused because `api::MAX_LISTINGS` were being
    /// written.
    pub listings_refused: AtomicU64,
}
