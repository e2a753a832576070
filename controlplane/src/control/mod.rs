//! The control plane of a running appliance: one thread that reads the workers'
//! snapshots, computes saturation reports, raises and clears saturation events,
//! reloads the configuration, and keeps the view that the HTTP endpoint serves; plus
//! the deny logger and the endpoint itself, each on its own thread. Nothing here ever
//! makes a worker wait.

pub mod client;
pub mod denylog;
pub mod http;
pub mod metrics;
pub mod saturation;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use holdfast_dataplane::control::Command;
use holdfast_dataplane::run::{self, Running};
use holdfast_dataplane::stats::Snapshot;
use holdfast_dataplane::sys;
use holdfast_pipeline::conntrack::pressure::Admission;
use serde_json::{Value, json};

use crate::appliance::{self, Options};
use crate::config::{self, Config, DenyOutput, OnReload};
use saturation::{Active, Report, Saturation};

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
    /// The endpoint's own counters (refusals, evictions, timeouts).
    pub http: Arc<http::HttpStats>,
    /// Each interface (outside, inside) as last seen.
    pub links: [LinkView; 2],
    /// Workers whose heartbeat stopped (see [`STALL_AFTER`]): requests that need them
    /// are answered at once instead of waiting.
    pub stalled: Vec<usize>,
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
    fn of(st: holdfast_dataplane::sys::LinkState) -> LinkView {
        LinkView { state: st.name().to_string(), ifindex: st.ifindex(), up: st.is_up(), reattaches: 0 }
    }
}

/// A worker publishes every 2 ms while its loop runs (idle or not); one that has not
/// for this long is stuck — in an endless loop, or blocked — and raises the
/// `worker_stalled` fault.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// How long a stop waits for the workers to finish before leaving a stuck one behind.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Watches each worker's heartbeat; says which have stalled.
#[derive(Debug)]
pub struct StallWatch {
    last: Vec<(u64, Instant)>,
}

impl StallWatch {
    pub fn new(beats: &[u64], now: Instant) -> StallWatch {
        StallWatch { last: beats.iter().map(|&b| (b, now)).collect() }
    }

    /// Records the heartbeats read at `now`; returns, per worker, how long it has gone
    /// without one.
    pub fn update(&mut self, beats: &[u64], now: Instant) -> Vec<Duration> {
        self.last
            .iter_mut()
            .zip(beats)
            .map(|(last, &b)| {
                if b != last.0 {
                    *last = (b, now);
                }
                now.saturating_duration_since(last.1)
            })
            .collect()
    }
}

/// A reload asked for over HTTP; the answer goes back on `reply`.
pub struct ReloadRequest {
    pub reply: crossbeam_channel::Sender<Result<Value, String>>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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
        });
        if let Some(s) = s {
            o["worker"] = json!(r.worker);
            o["core"] = json!(s.core);
            o["generation"] = json!(s.generation);
            o["maintaining"] = json!(s.maintaining);
            o["counters"] = appliance::snapshot_json(s);
        }
        o
    };
    let workers: Vec<Value> = v.report.workers.iter().zip(&v.snaps).map(|(r, s)| core(r, Some(s))).collect();
    let mut total = core(&v.report.total, None);
    total["counters"] = appliance::snapshot_json(&Snapshot::total(&v.snaps));
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
    })
}

/// systemd's notification socket (Type=notify): READY once the workers run, STATUS
/// with each report, WATCHDOG only while every worker's heartbeat advances. Messages
/// are sent without blocking: a service manager that does not read must not stall the
/// control loop (a full socket drops the message).
mod notify {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    fn send(msg: &str) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
        let Ok(sock) = UnixDatagram::unbound() else { return };
        if sock.set_nonblocking(true).is_err() {
            return;
        }
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(std::path::Path::new(&path)),
        };
        if let Ok(a) = addr {
            let _ = sock.send_to_addr(msg.as_bytes(), &a);
        }
    }

    pub fn ready(status: &str) {
        send(&format!("READY=1\nSTATUS={status}\n"));
    }

    pub fn status(status: &str) {
        send(&format!("STATUS={status}\n"));
    }

    /// systemd 253+ wants RELOADING=1 with the monotonic time, then READY=1.
    pub fn reloading(done: bool) {
        if done {
            send("READY=1\n");
        } else {
            send(&format!("RELOADING=1\nMONOTONIC_USEC={}\n", holdfast_dataplane::sys::monotonic_ns() / 1000));
        }
    }

    pub fn stopping() {
        send("STOPPING=1\n");
    }

    pub fn watchdog() {
        send("WATCHDOG=1\n");
    }

    /// `WATCHDOG_USEC`, when meant for this process (`WATCHDOG_PID` unset or ours).
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
            Some(Ok(pid)) if pid != std::process::id() => None,
            _ => Some(std::time::Duration::from_micros(usec)),
        }
    }
}

struct Controller {
    path: PathBuf,
    /// What the workers started with: a reload is compared with it for what needs a
    /// restart.
    started_cfg: Config,
    cfg: Config,
    generation: u64,
    view: Arc<RwLock<View>>,
    sat: Saturation,
    logger: Option<denylog::Logger>,
    workers: usize,
    commander: run::Commander,
    token: http::Token,
}

impl Controller {
    /// Re-reads the file; applies it or leaves everything as it was.
    fn reload(&mut self) -> Result<Value, String> {
        notify::reloading(false);
        let result = self.try_reload();
        notify::reloading(true);
        let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(restart) => {
                let r = json!({
                    "ok": true,
                    "generation": self.generation,
                    "recheck": self.cfg.on_reload == OnReload::Recheck,
                    "restart_needed": restart,
                    "at": rfc3339(SystemTime::now()),
                });
                eprintln!("holdfast: reload: generation {} applied{}", self.generation, restart_note(&restart));
                v.reloads += 1;
                v.generation = self.generation;
                v.restart_needed = restart;
                v.last_reload = Some(r.clone());
                Ok(r)
            }
            Err(e) => {
                v.reload_failures += 1;
                v.last_reload = Some(json!({"ok": false, "error": e, "at": rfc3339(SystemTime::now())}));
                eprintln!("holdfast: reload rejected, the running configuration stays:\n{e}");
                Err(e)
            }
        }
    }

    /// Applies the file; returns what changed that only a restart applies.
    fn try_reload(&mut self) -> Result<Vec<String>, String> {
        let new = config::load(&self.path).map_err(|e| e.to_string())?;
        // The token is re-read (rotation by reload); a bad token file rejects the reload.
        let token = match &new.control.token_file {
            Some(p) => Some(config::read_token(p)?),
            None => None,
        };
        let mut restart = self.started_cfg.restart_needed(&new);
        let log_was = self.started_cfg.log.denials != DenyOutput::Off;
        let log_now = new.log.denials != DenyOutput::Off;
        if !log_was && log_now {
            restart.push(format!("log.denials: off -> {} (the deny log queues are made at start)", new.log.denials));
        }
        let generation = self.generation + 1;
        let rate = if log_now { new.log.rate_limit } else { 0 };
        for w in 0..self.workers {
            let cmd = || Command::Reconfigure {
                generation,
                engine: new.engine,
                policy: Arc::clone(&new.classifier),
                recheck: new.on_reload == OnReload::Recheck,
                log_rate: run::share(rate, self.workers),
            };
            // The queue holds 64 commands; a worker takes them every 2 ms.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.commander.send(w, cmd()) {
                if Instant::now() > deadline {
                    return Err(format!("worker {w} did not take the new configuration (stopped or stuck); generations now differ between workers"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.generation = generation;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
        if let Some(l) = &self.logger {
            l.reopen(new.log.denials.clone());
        }
        self.cfg = new;
        Ok(restart)
    }
}

fn restart_note(r: &[String]) -> String {
    if r.is_empty() { String::new() } else { format!("; NOT applied until a restart: {}", r.join(", ")) }
}

/// Runs the appliance until SIGINT/SIGTERM (or `opts.duration`): workers, deny
/// logger, HTTP endpoint, reports, reloads on SIGHUP or `POST /reload`. Returns the
/// final counters.
pub fn serve(path: &Path, cfg: Config, opts: &Options) -> Result<Value, String> {
    // What this machine must offer, checked before anything starts; each refusal
    // names its setting.
    let mut refused: Vec<String> = crate::check::memory_now(&cfg).err().into_iter().collect();
    for f in crate::check::host(&cfg) {
        if f.error {
            refused.push(f.text);
        } else {
            eprintln!("holdfast: warning: {}", f.text);
        }
    }
    if !refused.is_empty() {
        return Err(format!("the configuration does not fit this machine:\n  {}", refused.join("\n  ")));
    }
    let dp = appliance::dataplane_config(&cfg)?;
    let token: http::Token = Arc::new(RwLock::new(match &cfg.control.token_file {
        Some(p) => Some(config::read_token(p)?),
        None => None,
    }));
    sys::catch_stop_signals();
    sys::catch_reload_signal();
    let mut running: Running = run::start(&dp, opts.seed).map_err(|e| e.to_string())?;
    let interfaces = [dp.interfaces[0].name.clone(), dp.interfaces[1].name.clone()];
    let logger = match cfg.log.denials {
        DenyOutput::Off => None,
        ref out => Some(denylog::Logger::start(running.take_denials(), out, running.started_at, interfaces.clone())?),
    };
    let view = Arc::new(RwLock::new(View {
        started_at: Some(running.started_at),
        interfaces: interfaces.clone(),
        config_path: path.display().to_string(),
        snaps: running.snapshots(),
        links: running.link_states().map(LinkView::of),
        ..View::default()
    }));
    let (reload_tx, reload_rx) = crossbeam_channel::unbounded::<ReloadRequest>();
    let http_stats = Arc::clone(&view.read().unwrap_or_else(|p| p.into_inner()).http);
    let endpoint = match cfg.control.listen {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!(
                    "holdfast: WARNING: control.listen {addr} is reachable from other hosts: /metrics and /status are open to them; /flows and /reload {}",
                    if token.read().is_ok_and(|t| t.is_some()) {
                        "need the token of control.token_file"
                    } else {
                        "are refused to them (no control.token_file)"
                    }
                );
            }
            Some(http::Endpoint::start(addr, Arc::clone(&view), running.commander(), reload_tx.clone(), Arc::clone(&token), http_stats)?)
        }
        None => None,
    };
    eprintln!(
        "holdfast: inline between {} (outside) and {} (inside), {} worker(s) on core(s) {:?}; {}; SIGHUP reloads, SIGINT or SIGTERM stops",
        interfaces[0],
        interfaces[1],
        dp.cores.len(),
        cfg.dataplane.cores,
        endpoint.as_ref().map_or("no control endpoint".to_string(), |e| format!("control on http://{}", e.addr)),
    );
    notify::ready("workers running");
    let workers = dp.cores.len().max(1);
    let mut c = Controller {
        path: path.to_path_buf(),
        started_cfg: cfg.clone(),
        cfg,
        generation: 0,
        view: Arc::clone(&view),
        sat: Saturation::default(),
        logger,
        workers,
        commander: running.commander(),
        token: Arc::clone(&token),
    };
    let start = Instant::now();
    let mut prev = running.snapshots();
    let mut last_report = Instant::now();
    let watchdog = notify::watchdog_interval().map(|d| d / 2);
    let mut last_beats = running.heartbeats();
    let mut last_watchdog = Instant::now();
    let mut stalls = StallWatch::new(&last_beats, Instant::now());
    let mut links = running.link_states().map(LinkView::of);
    let show = |st: holdfast_dataplane::sys::LinkState| st.name().to_string();
    for (k, st) in running.link_states().iter().enumerate() {
        if !st.is_up() {
            let t = c.sat.fault(
                "interface_down",
                k,
                true,
                0.0,
                format!("{} ({}) is {} at start: nothing is forwarded to it", interfaces[k], ["outside", "inside"][k], st.name()),
                SystemTime::now(),
            );
            if let Some(t) = t {
                eprintln!("holdfast: {}", t.describe(&Report::default()));
            }
        }
    }
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if sys::stop_requested() || opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if sys::take_reload_request() {
            let _ = c.reload();
        }
        while let Ok(r) = reload_rx.try_recv() {
            let _ = r.reply.send(c.reload());
        }
        let snaps = running.snapshots();
        // A worker whose heartbeat stopped is a fault, raised at once (not at the next
        // report): its frames are not being forwarded.
        let silent = stalls.update(&running.heartbeats(), Instant::now());
        let mut stalled = Vec::new();
        for (w, quiet) in silent.iter().enumerate() {
            let on = *quiet >= STALL_AFTER;
            if on {
                stalled.push(w);
            }
            let detail = if on {
                format!(
                    "worker {w} has published nothing for {:.1} s: its loop is stuck, its queue's frames are not forwarded, and systemd's watchdog is no longer fed",
                    quiet.as_secs_f64()
                )
            } else {
                format!("worker {w} runs again")
            };
            if let Some(t) = c.sat.fault("worker_stalled", w, on, quiet.as_secs_f64(), detail, SystemTime::now()) {
                eprintln!("holdfast: {}", t.describe(&Report::default()));
            }
        }
        // Interfaces: a side that is down or gone is a fault; one that came back under a
        // new index is re-attached (sockets and program), tables kept.
        let look = running.watch_links();
        for ch in &look.changes {
            let zone = ["outside", "inside"][ch.side];
            links[ch.side].state = show(ch.to);
            links[ch.side].ifindex = ch.to.ifindex();
            let detail = match ch.to {
                holdfast_dataplane::sys::LinkState::Gone => {
                    format!("{} ({zone}) is gone: frames to it are dropped as link_down; Holdfast re-attaches when it returns", ch.name)
                }
                holdfast_dataplane::sys::LinkState::Down { .. } => format!("{} ({zone}) is down: frames to it are dropped as link_down", ch.name),
                holdfast_dataplane::sys::LinkState::Up { .. } => format!("{} ({zone}) is up", ch.name),
            };
            eprintln!("holdfast: interface {} ({zone}): {} -> {}", ch.name, ch.from.name(), ch.to.name());
            if let Some(t) = c.sat.fault("interface_down", ch.side, !ch.to.is_up(), 0.0, detail, SystemTime::now()) {
                eprintln!("holdfast: {}", t.describe(&Report::default()));
            }
        }
        match &look.reattached {
            Some(Ok(())) => {
                for (k, st) in running.link_states().iter().enumerate() {
                    if links[k].ifindex != st.ifindex() || !links[k].up {
                        links[k].reattaches += 1;
                    }
                }
                eprintln!("holdfast: re-attached: every worker's sockets re-bound, the XDP program attached; tables kept");
            }
            Some(Err(e)) => eprintln!("holdfast: re-attaching failed: {e}; retrying every second (systemd's watchdog is not fed meanwhile)"),
            None => {}
        }
        for (k, st) in running.link_states().iter().enumerate() {
            links[k].up = st.is_up() && running.reattach_pending().is_none();
            links[k].ifindex = st.ifindex();
        }
        if let Some(l) = &c.logger {
            let failing = l.stats.failing.load(std::sync::atomic::Ordering::Relaxed);
            let lost = l.stats.write_errors.load(std::sync::atomic::Ordering::Relaxed);
            let detail = if failing {
                format!("the deny log cannot be written ({} line(s) lost so far): the disk may be full", lost)
            } else {
                "the deny log is written again".to_string()
            };
            if let Some(t) = c.sat.fault("deny_log_write", 0, failing, lost as f64, detail, SystemTime::now()) {
                eprintln!("holdfast: {}", t.describe(&Report::default()));
            }
        }
        if let Some(every) = watchdog
            && last_watchdog.elapsed() >= every
        {
            // Only while every worker's loop is alive: a stuck worker lets systemd
            // restart the service.
            let beats = running.heartbeats();
            if beats.iter().zip(&last_beats).all(|(now, before)| now > before) && running.reattach_pending().is_none() {
                notify::watchdog();
            }
            last_beats = beats;
            last_watchdog = Instant::now();
        }
        // The report, its log lines and systemd's status first; the view's lock only
        // for the assignments, so that the endpoint never waits on stderr.
        let report = (last_report.elapsed() >= c.cfg.control.report_interval).then(|| {
            let r = saturation::report(&prev, &snaps, last_report.elapsed().as_secs_f64());
            for t in c.sat.update(&r, &c.cfg.control.saturation, SystemTime::now()) {
                eprintln!("holdfast: {}", t.describe(&r));
            }
            let active: Vec<Active> = c.sat.active().cloned().collect();
            if !opts.quiet {
                eprintln!("{}", appliance::status_line(&r, &active, start.elapsed()));
            }
            notify::status(&format!(
                "{:.0} pps in, table {:.1} % full, {} saturation event(s), generation {}",
                r.total.rx_pps,
                100.0 * r.total.table_fill,
                active.len(),
                c.generation
            ));
            prev = snaps.clone();
            last_report = Instant::now();
            (r, active)
        });
        let mut v = view.write().unwrap_or_else(|p| p.into_inner());
        v.uptime_s = start.elapsed().as_secs_f64();
        v.stalled = stalled;
        v.links = links.clone();
        if report.is_none() {
            // Faults change between reports.
            v.active = c.sat.active().cloned().collect();
            v.raised_total = c.sat.raised_total.clone();
        }
        if let Some(l) = &c.logger {
            v.log_written = l.stats.written.load(std::sync::atomic::Ordering::Relaxed);
            v.log_write_errors = l.stats.write_errors.load(std::sync::atomic::Ordering::Relaxed);
        }
        if let Some((r, active)) = report {
            v.report = r;
            v.active = active;
            v.raised_total = c.sat.raised_total.clone();
        }
        v.snaps = snaps;
    }
    notify::stopping();
    if let Some(e) = endpoint {
        e.stop();
    }
    let uptime = start.elapsed();
    let stopped = running.stop(STOP_GRACE);
    let snaps = stopped.snapshots;
    for w in &stopped.stuck {
        eprintln!(
            "holdfast: worker {w} did not stop within {} s (stuck); exiting without it — its XDP program detaches with the process",
            STOP_GRACE.as_secs()
        );
    }
    if let Some(l) = c.logger.take() {
        l.stop();
    }
    let mut out = appliance::final_json(&snaps, uptime);
    let v = view.read().unwrap_or_else(|p| p.into_inner());
    out["generation"] = json!(c.generation);
    out["reloads"] = json!(v.reloads);
    out["reload_failures"] = json!(v.reload_failures);
    out["saturation_events_total"] = json!(v.raised_total);
    out["deny_log"] = json!({"written": v.log_written, "write_errors": v.log_write_errors});
    out["stuck_workers"] = json!(stopped.stuck);
    Ok(out)
}
