//! `holdfast replay --offline`: a capture through the pipeline on N worker threads, with
//! each packet's capture timestamp as the clock.

pub mod live;
pub mod order;
pub mod rewrite;
pub mod sides;

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant as WallClock;

use holdfast_dataplane::offline;
use holdfast_pipeline::conntrack::pressure::Admission;
use holdfast_pipeline::engine::FlowInfo;
use holdfast_pipeline::steer::{FragRouter, steer};
use holdfast_pipeline::{Counters, DropReason, Engine, FlowHasher, Instant, PassKind, Verdict, Zone};
use serde_json::{Map, Value, json};

/// Fragments held for their first fragment at most, as the appliance's workers do
/// (`holdfast_dataplane::worker::FRAGMENT_HOLD`).
const FRAGMENT_HOLD: usize = holdfast_dataplane::worker::FRAGMENT_HOLD;

use crate::capture::{self, CaptureError};
use crate::config::Config;

pub struct Options {
    pub workers: usize,
    pub json: bool,
    pub flows_out: Option<PathBuf>,
    pub verdicts_out: Option<PathBuf>,
}

/// What a replay produced, for printing and for tests.
pub struct Report {
    pub source: String,
    pub format: &'static str,
    pub counters: Counters,
    pub flows_peak: usize,
    pub flows_at_end: usize,
    pub workers: usize,
    pub elapsed_s: f64,
    pub capture_span_s: f64,
    /// Frames skipped (link types Holdfast cannot replay, frames without IP or ARP).
    pub skipped: u64,
    /// What was skipped and what to do about it, for people.
    pub skipped_note: Option<String>,
    /// Link types read, named.
    pub link_types: Vec<String>,
    pub capture_error: Option<CaptureError>,
    pub bytes_per_entry: usize,
    /// Live entries per admission class at the end, all workers.
    pub classes_at_end: [u32; Admission::COUNT],
    pub min_adaptive_scale: f64,
    /// The dispatcher's own work — steering (parsing each frame for its owner, routing
    /// fragments) and handing batches out — in seconds, while the workers run; and how
    /// long it sat blocked on full worker queues (the workers were the limit then).
    pub dispatch_busy_s: f64,
    pub dispatch_blocked_s: f64,
    /// Up to `EXAMPLES` denied replies, as log lines (`src:port -> dst:port denied (reason)`).
    pub reply_denied_examples: Vec<String>,
    /// Per second of capture time: frames offered, passed, and dropped by reason.
    pub seconds: Vec<Second>,
}

/// One second of capture time in an offline replay.
#[derive(Debug, Clone, Default)]
pub struct Second {
    pub offered: u64,
    pub passed: u64,
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

/// Denied replies kept as examples for the summary.
pub const EXAMPLES: usize = 5;

impl Report {
    pub fn mpps(&self) -> f64 {
        if self.elapsed_s > 0.0 { self.counters.packets as f64 / self.elapsed_s / 1e6 } else { 0.0 }
    }

    /// The dispatcher's busy time over the replay's wall time: how much of a core it
    /// costs (with one worker, the same thread's work before the worker starts).
    pub fn dispatcher_share(&self) -> f64 {
        if self.elapsed_s > 0.0 { self.dispatch_busy_s / self.elapsed_s } else { 0.0 }
    }

    pub fn to_json(&self) -> Value {
        let c = &self.counters;
        let drops: Map<String, Value> =
            DropReason::ALL.iter().filter(|r| c.dropped[**r as usize] > 0).map(|r| (r.name().to_string(), json!(c.dropped[*r as usize]))).collect();
        let passes: Map<String, Value> =
            PassKind::ALL.iter().filter(|k| c.passed[**k as usize] > 0).map(|k| (k.name().to_string(), json!(c.passed[*k as usize]))).collect();
        let by_class = |a: &[u64; Admission::COUNT]| -> Value {
            Admission::ALL.iter().map(|k| (k.name().to_string(), json!(a[*k as usize]))).collect::<Map<String, Value>>().into()
        };
        json!({
            "packets": c.packets,
            "reply_denied": c.reply_denied(),
            "table_full": c.dropped[DropReason::TableFull as usize],
            "evictions": by_class(&c.evictions),
            "expirations": by_class(&c.expirations),
            "assured_expirations": c.assured_expirations_named().map(|(k, n)| (k.to_string(), json!(n))).collect::<Map<String, Value>>(),
            "classes_at_end": by_class(&self.classes_at_end.map(u64::from)),
            "tombstone_hits": c.tombstone_hits,
            "ipv6_pool_full": c.ipv6_pool_full,
            "source_recycled": c.source_recycled,
            "streams_held": c.streams_held,
            "min_adaptive_scale": self.min_adaptive_scale,
            "bytes_per_entry": self.bytes_per_entry,
            "passed": c.passed_total(),
            "dropped": c.dropped_total(),
            "drops": drops,
            "passes": passes,
            "flows_created": c.flows_created,
            "flows_peak": self.flows_peak,
            "flows_expired": c.flows_expired,
            "flows_closed": c.flows_closed,
            "flows_at_end": self.flows_at_end,
            "fragment_evictions": c.fragment_evictions,
            "workers": self.workers,
            "elapsed_s": self.elapsed_s,
            "mpps": self.mpps(),
            "dispatcher": {
                "busy_s": self.dispatch_busy_s,
                "blocked_s": self.dispatch_blocked_s,
                "share_of_a_core": self.dispatcher_share(),
            },
            "capture": {
                "source": self.source,
                "format": self.format,
                "span_s": self.capture_span_s,
                "link_types": self.link_types,
                "skipped": self.skipped,
                "skipped_note": self.skipped_note,
                "error": self.capture_error.as_ref().map(|e| json!({"offset": e.offset, "message": e.message})),
            },
        })
    }

    pub fn human(&self) -> String {
        let c = &self.counters;
        let mut s = String::new();
        let _ = writeln!(s, "holdfast replay: {} ({}, {} frames over {:.1} s of traffic)", self.source, self.format, c.packets, self.capture_span_s);
        let _ = writeln!(s, "  workers    {}", self.workers);
        let _ = writeln!(s, "  packets    {} passed, {} dropped", c.passed_total(), c.dropped_total());
        let passes: Vec<String> =
            PassKind::ALL.iter().filter(|k| c.passed[**k as usize] > 0).map(|k| format!("{} {}", k.name(), c.passed[*k as usize])).collect();
        let _ = writeln!(s, "  passed as  {}", if passes.is_empty() { "-".into() } else { passes.join(", ") });
        let mut drops: Vec<(u64, &str)> = DropReason::ALL.iter().filter(|r| c.dropped[**r as usize] > 0).map(|r| (c.dropped[*r as usize], r.name())).collect();
        drops.sort_by_key(|d| std::cmp::Reverse(d.0));
        let drops: Vec<String> = drops.iter().map(|(n, r)| format!("{r} {n}")).collect();
        let _ = writeln!(s, "  drops      {}", if drops.is_empty() { "none".into() } else { drops.join(", ") });
        let _ = writeln!(
            s,
            "  flows      {} created, peak {}, {} expired, {} closed, {} at end",
            c.flows_created, self.flows_peak, c.flows_expired, c.flows_closed, self.flows_at_end
        );
        let _ = writeln!(s, "  replies    {} denied because their flow's state was gone (reply_denied)", c.reply_denied());
        let classes = |a: [u64; Admission::COUNT]| Admission::ALL.iter().map(|k| format!("{} {}", k.name(), a[*k as usize])).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "  evicted    {}; {} refused as table_full", classes(c.evictions), c.dropped[DropReason::TableFull as usize]);
        let _ = writeln!(s, "  expired    {}", classes(c.expirations));
        if c.expirations[Admission::Assured as usize] > 0 {
            let by: Vec<String> = c.assured_expirations_named().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(s, "             assured ones by the timeout that ran out: {}", by.join(", "));
        }
        let _ = writeln!(s, "  at end     {}", classes(self.classes_at_end.map(u64::from)));
        if self.min_adaptive_scale < 1.0 {
            let _ = writeln!(s, "  adaptive   non-assured timeouts scaled down to {:.0} %", self.min_adaptive_scale * 100.0);
        }
        for e in &self.reply_denied_examples {
            let _ = writeln!(s, "  denied     {e}");
        }
        if let Some(n) = &self.skipped_note {
            let _ = writeln!(s, "  skipped    {n}");
        }
        let _ = writeln!(
            s,
            "  dispatcher {:.0} % of a core: steering and handing out {:.3} s, blocked on full worker queues {:.3} s",
            self.dispatcher_share() * 100.0,
            self.dispatch_busy_s,
            self.dispatch_blocked_s
        );
        let _ = write!(s, "  speed      {:.2} Mpps ({} packets in {:.3} s)", self.mpps(), c.packets, self.elapsed_s);
        s
    }
}

/// Replays `buf` (a pcap or pcapng file's bytes) under `cfg`.
/// Creates an output file, naming it (and its option) in the error.
fn create(path: &std::path::Path, option: &str) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{option} {}: cannot create: {e}", path.display())))
}

pub fn run(cfg: &Config, source: &str, buf: &[u8], seed: u64, opts: &Options) -> std::io::Result<Report> {
    let cap = capture::parse(buf);
    let workers = opts.workers.max(1);
    let hasher = FlowHasher::new(seed);
    let mut engine_cfg = cfg.engine;
    engine_cfg.seed = seed;
    let start = Instant::from_nanos(cap.records.first().map_or(0, |r| r.ts_ns));
    let end = Instant::from_nanos(cap.records.iter().map(|r| r.ts_ns).max().unwrap_or(0));
    let engines: Vec<Engine> = (0..workers).map(|_| Engine::new(engine_cfg, Arc::clone(&cfg.classifier), start)).collect();

    let t = WallClock::now();
    let datas: Vec<&[u8]> = cap.records.iter().map(|r| &r.data[..]).collect();
    let mut zones: Vec<Zone> = Vec::with_capacity(cap.records.len());
    // Steering runs on this thread while the workers judge what it handed out.
    // Fragments go by their datagram to the worker that judges its first fragment;
    // those that come before the first wait for it (at most `FRAGMENT_HOLD`, for the
    // fragment timeout) — with any number of workers, one included, so that verdicts
    // do not depend on it. Verdicts are always collected: the summary quotes denied
    // replies.
    let (outs, dispatch) = offline::run(&datas, engines, end, true, true, |d| {
        let mut router: FragRouter<u32> = FragRouter::new(engine_cfg.fragments, FRAGMENT_HOLD, engine_cfg.fragment_timeout.as_nanos());
        let hand = |d: &mut offline::Dispatcher, zones: &[Zone], j: u32, w: usize, at_ns: u64| {
            // A held frame is judged when it is let go: at the time of the frame that
            // let it go.
            let now = Instant::from_nanos(cap.records[j as usize].ts_ns.max(at_ns));
            d.send(w, offline::Item { index: j, now, zone: zones[j as usize] });
        };
        let mut let_go: Vec<(u32, usize)> = Vec::new();
        for (i, r) in cap.records.iter().enumerate() {
            let st = steer(&r.data, &hasher);
            zones.push(capture_zone(&cfg.inside, st.src, r.outgoing));
            let owner = holdfast_pipeline::steer::owner(&st, workers);
            match &st.frag {
                Some(fs) => router.route(i as u32, fs, owner, r.ts_ns, |j, w| let_go.push((j, w))),
                None => {
                    router.expire(r.ts_ns, owner, |j, w| let_go.push((j, w)));
                    let_go.push((i as u32, owner));
                }
            }
            for (j, w) in let_go.drain(..) {
                hand(d, &zones, j, w, r.ts_ns);
            }
        }
        let last = cap.records.iter().map(|r| r.ts_ns).max().unwrap_or(0);
        router.flush(0, |j, w| let_go.push((j, w)));
        for (j, w) in let_go.drain(..) {
            hand(d, &zones, j, w, last);
        }
    });
    let elapsed_s = t.elapsed().as_secs_f64();

    let mut counters = Counters::default();
    let mut flows: Vec<(usize, FlowInfo)> = Vec::new();
    let mut verdicts: Vec<(u32, Verdict)> = Vec::new();
    let mut peak = 0;
    let mut bytes_per_entry = 0;
    let mut classes_at_end = [0u32; Admission::COUNT];
    let mut min_adaptive_scale: f64 = 1.0;
    for (w, o) in outs.into_iter().enumerate() {
        counters.merge(&o.counters);
        peak += o.flows_peak;
        flows.extend(o.flows.into_iter().map(|f| (w, f)));
        verdicts.extend(o.verdicts);
        bytes_per_entry = o.table_bytes_per_entry;
        for (a, b) in classes_at_end.iter_mut().zip(o.class_counts) {
            *a += b;
        }
        min_adaptive_scale = min_adaptive_scale.min(o.min_adaptive_scale);
    }
    verdicts.sort_unstable_by_key(|v| v.0);
    // Per second of capture time, for `--report` (a day of seconds at most).
    let t0 = start.as_nanos();
    let mut seconds: Vec<Second> = Vec::new();
    for &(i, v) in &verdicts {
        let sec = (cap.records[i as usize].ts_ns.saturating_sub(t0) / 1_000_000_000).min(86_399) as usize;
        if seconds.len() <= sec {
            seconds.resize(sec + 1, Second::default());
        }
        let s = &mut seconds[sec];
        s.offered += 1;
        match v {
            Verdict::Pass(_) => s.passed += 1,
            Verdict::Drop(r) => *s.drops.entry(r.name()).or_default() += 1,
        }
    }
    // Examples of denied replies, the servers' side first: the origin story's log.
    let denied: Vec<&(u32, Verdict)> = verdicts.iter().filter(|(_, v)| matches!(v, Verdict::Drop(r) if r.is_reply_denied())).collect();
    let from_inside = |i: u32| zones[i as usize] == Zone::Inside;
    let mut reply_denied_examples: Vec<String> = Vec::new();
    for &&(i, v) in denied.iter().filter(|(i, _)| from_inside(*i)).chain(denied.iter().filter(|(i, _)| !from_inside(*i))) {
        if reply_denied_examples.len() == EXAMPLES {
            break;
        }
        let line = describe_denied(&cap.records[i as usize].data, v);
        if !reply_denied_examples.contains(&line) {
            reply_denied_examples.push(line);
        }
    }
    if let Some(path) = &opts.verdicts_out {
        let mut w = create(path, "--verdicts-out")?;
        for (i, v) in verdicts {
            let line = match v {
                Verdict::Pass(k) => json!({"i": i, "verdict": "pass", "as": k.name()}),
                Verdict::Drop(r) => json!({"i": i, "verdict": "drop", "reason": r.name()}),
            };
            writeln!(w, "{line}")?;
        }
        w.flush()?;
    }
    if let Some(path) = &opts.flows_out {
        let mut w = create(path, "--flows-out")?;
        for (worker, f) in &flows {
            let mut v = flow_json(f);
            // Which worker's table holds it, as `/flows` says.
            v["worker"] = json!(worker);
            writeln!(w, "{v}")?;
        }
        w.flush()?;
    }
    Ok(Report {
        source: source.to_string(),
        format: cap.format,
        counters,
        flows_peak: peak,
        flows_at_end: flows.len(),
        workers,
        elapsed_s,
        dispatch_busy_s: dispatch.total_s - dispatch.blocked_s,
        dispatch_blocked_s: dispatch.blocked_s,
        capture_span_s: (end.as_nanos().saturating_sub(start.as_nanos())) as f64 / 1e9,
        skipped: cap.skipped_total(),
        skipped_note: cap.skipped_note(),
        link_types: cap.link_types.iter().map(|t| capture::link::name(*t)).collect(),
        capture_error: cap.error,
        bytes_per_entry,
        classes_at_end,
        min_adaptive_scale,
        reply_denied_examples,
        seconds,
    })
}

impl Report {
    /// The replay per second of capture time: frames offered and passed, drops by
    /// reason. (Table fill over time is not sampled offline: the workers report it at
    /// the end only.)
    pub fn panels(&self) -> Vec<crate::report::Panel> {
        use crate::report::{Panel, Series};
        let t = |i: usize| i as f64 + 1.0;
        let mut reasons: Vec<&'static str> = self.seconds.iter().flat_map(|s| s.drops.keys().copied()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        vec![
            Panel {
                title: "frames per second of capture time".into(),
                y: "frames/s".into(),
                series: vec![
                    Series { name: "offered".into(), points: self.seconds.iter().enumerate().map(|(i, s)| (t(i), s.offered as f64)).collect() },
                    Series { name: "passed".into(), points: self.seconds.iter().enumerate().map(|(i, s)| (t(i), s.passed as f64)).collect() },
                ],
            },
            Panel {
                title: "drops per second by reason".into(),
                y: "drops/s".into(),
                series: reasons
                    .iter()
                    .map(|r| Series {
                        name: r.to_string(),
                        points: self.seconds.iter().enumerate().map(|(i, s)| (t(i), s.drops.get(r).copied().unwrap_or(0) as f64)).collect(),
                    })
                    .collect(),
            },
        ]
    }
}

/// The zone a captured frame entered the firewall from — the same for the offline
/// replay and the live one's sides, so that their verdicts compare: by its source
/// address in the config's inside networks when there are any; otherwise, for a Linux
/// cooked capture, by its direction (taken on a host inside, what it sent entered from
/// inside); outside for the rest.
pub fn capture_zone(inside: &[holdfast_pipeline::policy::Cidr], src: Option<(u128, bool)>, outgoing: Option<bool>) -> Zone {
    match (src, outgoing) {
        (Some((a, v6)), _) if !inside.is_empty() => {
            if inside.iter().any(|c| c.contains(a, v6)) {
                Zone::Inside
            } else {
                Zone::Outside
            }
        }
        (_, Some(true)) => Zone::Inside,
        _ => Zone::Outside,
    }
}

/// A denied packet as a firewall log line: `src:port -> dst:port denied (reason)`.
pub fn describe_denied(frame: &[u8], v: Verdict) -> String {
    let reason = match v {
        Verdict::Drop(r) => r.name(),
        Verdict::Pass(_) => "pass",
    };
    match holdfast_pipeline::parse::parse(frame) {
        Ok(holdfast_pipeline::parse::Frame::Ip(m)) => {
            let (s, sp) = m.key.src(m.side);
            let (d, dp) = m.key.dst(m.side);
            let proto = match m.key.proto {
                6 => "tcp",
                17 => "udp",
                _ => "ip",
            };
            format!("{proto} {s}:{sp} -> {d}:{dp} denied ({reason})")
        }
        _ => format!("frame denied ({reason})"),
    }
}

pub fn proto_name(p: u8) -> Value {
    match p {
        6 => json!("tcp"),
        17 => json!("udp"),
        1 => json!("icmp"),
        58 => json!("icmpv6"),
        n => json!(n),
    }
}

/// A flow as one JSON object, in its original direction. ICMP query flows show the
/// identifier as `sport` and the request type as `dport`.
pub fn flow_json(f: &FlowInfo) -> Value {
    let (src, sport) = f.key.src(f.orig);
    let (dst, dport) = f.key.dst(f.orig);
    let icmp = matches!(f.key.proto, 1 | 58);
    let (sport, dport) = if icmp { (f.key.port[0], f.key.port[1] & 0xff) } else { (sport, dport) };
    let mut v = json!({
        "proto": proto_name(f.key.proto),
        "src": src.to_string(),
        "sport": sport,
        "dst": dst.to_string(),
        "dport": dport,
        "state": f.state,
        "expires_in_s": f.expires_in.as_secs_f64().round() as u64,
        "assured": f.assured,
        "class": f.class.name(),
        "packets": [f.packets[0], f.packets[1]],
        "bytes": [f.bytes[0], f.bytes[1]],
        "age_s": f.age.map(|a| a.as_secs_f64().round() as u64),
    });
    if f.key.vlan != 0 {
        v["vlan"] = json!([f.key.vlan & 0xfff, f.key.vlan >> 12]);
    }
    if !f.counted {
        // `conntrack.accounting: off`: not zero, not kept.
        v["packets"] = Value::Null;
        v["bytes"] = Value::Null;
    }
    v
}
