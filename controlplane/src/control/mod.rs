//! The control plane of a running appliance: one thread that reads the workers'
//! snapshots, computes saturation reports, raises and clears saturation and fault
//! events, reloads the configuration, and keeps the view that the HTTP endpoint
//! serves; plus the deny logger and the endpoint itself, each on its own thread.
//! Nothing here ever makes a worker wait.
//!
//! - this file: starting the appliance ([`serve`]), the loop, stopping;
//! - `view`: what the endpoint serves; `report`: counters as JSON and for people;
//! - `reload`: a new configuration to every worker; `faults`: stalls, links, the log;
//! - `notify`: systemd; `saturation`, `metrics`, `http`, `denylog`, `client`;
//!   `peer`: which local user opened a loopback connection.

mod api;
pub mod client;
pub mod denylog;
mod faults;
pub mod http;
pub mod metrics;
mod notify;
mod peer;
pub mod reload;
pub mod report;
pub mod saturation;
mod view;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use holdfast_dataplane::run::{self, Interface, Running, StartError};
use holdfast_dataplane::sys;
use serde_json::{Value, json};

use crate::config::{self, Config, DenyOutput};
use crate::state;
pub use api::{MAX_FLOWS, decide, parse_query};
pub use faults::{STALL_AFTER, STOP_GRACE};
use holdfast_pipeline::FlowHasher;
use reload::Reloader;
use saturation::{Active, Saturation};
pub use view::{LinkView, ReloadRequest, SnapshotRequest, TakeoverRequest, View, status_json};

/// How `holdfast run` runs.
pub struct Options {
    pub json: bool,
    /// Stop after this long (tests, benchmarks); otherwise run until a signal.
    pub duration: Option<Duration>,
    /// No status lines.
    pub quiet: bool,
    pub seed: u64,
}

/// Why the appliance did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the configuration does not fit this machine:\n  {}", .0.join("\n  "))]
    DoesNotFit(Vec<String>),
    /// A setting the dataplane cannot take, named.
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Token(#[from] config::TokenError),
    #[error(transparent)]
    Endpoint(#[from] http::EndpointError),
    #[error(transparent)]
    DenyLog(#[from] denylog::DenyLogError),
    /// `state.snapshot_dir` cannot be claimed (another appliance holds it).
    #[error("state.snapshot_dir: {0}")]
    State(#[from] state::StateError),
}

/// Translates the YAML config into the dataplane's.
pub fn dataplane_config(cfg: &Config) -> Result<run::Config, ServeError> {
    let names = [cfg.outside_interface.clone(), cfg.inside_interface.clone()];
    let mut ifs = Vec::new();
    for (k, n) in names.into_iter().enumerate() {
        let zone = ["outside", "inside"][k];
        let name = n.ok_or_else(|| ServeError::Setting(format!("zones.{zone}.interface is not set: holdfast run needs both interfaces")))?;
        ifs.push(Interface { name, mode: cfg.dataplane.xdp_mode[k], queues: cfg.dataplane.queues[k] });
    }
    let inside = ifs.pop().expect("two interfaces");
    let outside = ifs.pop().expect("two interfaces");
    Ok(run::Config {
        interfaces: [outside, inside],
        cores: cfg.dataplane.cores.iter().map(|&c| Some(c)).collect(),
        burst: cfg.dataplane.burst,
        idle: cfg.dataplane.idle,
        umem_frames: cfg.dataplane.umem_frames,
        ring_size: cfg.dataplane.ring_size,
        shed_syns: cfg.dataplane.shed_syns,
        engine: cfg.engine,
        policy: cfg.classifier.clone(),
        deny_log: cfg.log.denials != DenyOutput::Off,
        log_rate: cfg.log.rate_limit,
        changes: cfg.sync.as_ref().map(|s| run::ChangeFeedConfig { queue: s.queue, refresh: s.refresh }),
    })
}

/// Runs the appliance until SIGINT/SIGTERM (or `opts.duration`): workers, deny
/// logger, HTTP endpoint, reports, reloads on SIGHUP or `POST /reload`. Returns the
/// final counters.
pub fn serve(path: &Path, cfg: Config, opts: &Options) -> Result<Value, ServeError> {
    let mut a = Appliance::start(path, cfg, opts)?;
    while !sys::stop_requested() && opts.duration.is_none_or(|d| a.start.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(50));
        a.tick(opts);
    }
    Ok(a.finish())
}

/// The tables to start with: those of `state.snapshot_dir`'s snapshot when there is a
/// good one (with its hash seed), else empty ones with `seed`. A snapshot that cannot
/// be restored is refused whole, said loudly, moved aside, and the tables start empty.
/// Also what to show in `/status`.
fn tables(cfg: &Config, dp: &run::Config, seed: u64) -> (run::Prepared, Value) {
    let Some(dir) = &cfg.snapshot_dir else { return (run::prepare(dp, seed), Value::Null) };
    let refused = |path: &Path, e: state::StateError| {
        crate::logln!("holdfast: state: snapshot REFUSED, starting with empty tables: {e}");
        let aside = state::set_aside(path, state::REFUSED).map(|p| p.display().to_string()).unwrap_or_else(|e| format!("not moved aside: {e}"));
        json!({"restored": false, "refused": e.to_string(), "moved_to": aside})
    };
    match state::find(dir) {
        Ok(None) => {
            crate::logln!("holdfast: state: no snapshot in {}: starting with empty tables", dir.display());
            (run::prepare(dp, seed), json!({"restored": false, "reason": "no snapshot"}))
        }
        Err(e) => {
            let v = refused(&dir.join(state::FILE), e);
            (run::prepare(dp, seed), v)
        }
        Ok(Some(found)) => {
            let path = found.path.clone();
            let mut p = run::prepare(dp, found.header.seed);
            let now = p.now();
            match state::restore(found, &mut p.engines, &FlowHasher::new(p.seed), now) {
                Ok(r) => {
                    crate::logln!("holdfast: {}", r.describe());
                    let mut v = r.json();
                    v["restored"] = json!(true);
                    if let Err(e) = state::set_aside(&path, state::RESTORED) {
                        // Restored once; restored again after a crash would revive flows
                        // that ended since. Refuse to run on rather than risk that.
                        crate::logln!("holdfast: state: WARNING: {e}: a crash before the next stop would restore this snapshot again");
                        v["warning"] = json!(e.to_string());
                    }
                    (p, v)
                }
                Err(e) => {
                    // Half a table is never used: the engines go, fresh ones come.
                    drop(p);
                    let v = refused(&path, e);
                    (run::prepare(dp, seed), v)
                }
            }
        }
    }
}

/// How long an on-demand snapshot waits for a worker's next chunk.
const EXPORT_ANSWER: Duration = Duration::from_secs(10);

/// Asks every running worker for its table, a chunk at a time, and writes it to `dir`.
/// Fuzzy, as a listing is: each worker's slices are taken a few milliseconds apart.
fn take_snapshot(commander: &run::Commander, dir: &Path, seed: u64) -> Result<Value, String> {
    use holdfast_dataplane::control::ExportReply;
    use holdfast_pipeline::snapshot::BlockKind;
    let n = commander.workers();
    let mut w = state::Writer::create(dir, n, seed).map_err(|e| e.to_string())?;
    for k in 0..n {
        commander.export(k, EXPORT_ANSWER, |r| {
            match r {
                ExportReply::Flows { count, mut bytes } => w.block(BlockKind::Flows, k, count, &mut bytes).map_err(|e| e.to_string())?,
                ExportReply::Tombstones { count, mut bytes } => w.block(BlockKind::Tombstones, k, count, &mut bytes).map_err(|e| e.to_string())?,
                ExportReply::Done { tomb_sets } => w.tomb_sets(tomb_sets),
            }
            Ok(())
        })?;
    }
    w.finish().map(|w| w.json()).map_err(|e| e.to_string())
}

/// Claims `dir` into `claim` unless it is the one already claimed (a reload may have
/// changed `state.snapshot_dir`).
fn claimed(claim: &mut Option<state::Claim>, dir: &Path) -> Result<(), state::StateError> {
    if claim.as_ref().is_none_or(|c| c.dir != dir) {
        *claim = Some(state::claim(dir)?);
    }
    Ok(())
}

/// Writes the stopped workers' tables to `dir` (claimed first); says what happened,
/// also in the final JSON.
fn save_state(claim: &mut Option<state::Claim>, dir: &Path, stopped: &run::Stopped, seed: u64) -> Value {
    let engines: Vec<_> = stopped.engines.iter().map(Option::as_ref).collect();
    match claimed(claim, dir).and_then(|()| state::write(dir, &engines, stopped.at, seed)) {
        Ok(w) => {
            crate::logln!(
                "holdfast: state: {} flow(s) and {} tombstone(s) written to {} ({} bytes, {:.2} s){}",
                w.flows,
                w.tombstones,
                w.path.display(),
                w.bytes,
                w.seconds,
                if w.missing_workers.is_empty() { String::new() } else { format!("; WITHOUT the flows of stuck worker(s) {:?}", w.missing_workers) }
            );
            w.json()
        }
        Err(e) => {
            crate::logln!("holdfast: state: snapshot NOT written, the next start will not restore these flows: {e}");
            json!({"error": e.to_string()})
        }
    }
}

/// A running appliance and what its control loop keeps between rounds.
struct Appliance {
    running: Running,
    /// The tables' hash seed (a snapshot carries it to the next start).
    seed: u64,
    reloader: Reloader,
    view: Arc<RwLock<View>>,
    token: http::Token,
    endpoint: Option<http::Endpoint>,
    reload_rx: crossbeam_channel::Receiver<ReloadRequest>,
    snapshot_rx: crossbeam_channel::Receiver<SnapshotRequest>,
    takeover_rx: crossbeam_channel::Receiver<TakeoverRequest>,
    /// The sync endpoint (`sync:`), if any.
    sync: Option<crate::sync::endpoint::Endpoint>,
    /// An on-demand snapshot being written (`POST /snapshot`), at most one.
    snapshotting: Option<std::thread::JoinHandle<()>>,
    /// `state.snapshot_dir`, claimed against other processes (`state::claim`).
    claim: Option<state::Claim>,
    logger: Option<denylog::Logger>,
    sat: Saturation,
    start: Instant,
    prev: Vec<holdfast_dataplane::stats::Snapshot>,
    last_report: Instant,
    watchdog: Option<Duration>,
    last_beats: Vec<u64>,
    last_watchdog: Instant,
    stalls: faults::StallWatch,
    links: [LinkView; 2],
}

impl Appliance {
    fn start(path: &Path, cfg: Config, opts: &Options) -> Result<Appliance, ServeError> {
        // What this machine must offer, checked before anything starts; each refusal
        // names its setting.
        let mut refused: Vec<String> = crate::check::memory_now(&cfg).err().map(|e| e.to_string()).into_iter().collect();
        for f in crate::check::host(&cfg) {
            if f.error {
                refused.push(f.text);
            } else {
                crate::logln!("holdfast: warning: {}", f.text);
            }
        }
        if !refused.is_empty() {
            return Err(ServeError::DoesNotFit(refused));
        }
        let dp = dataplane_config(&cfg)?;
        let token: http::Token = Arc::new(RwLock::new(match &cfg.control.token_file {
            Some(p) => Some(config::read_token(p)?),
            None => None,
        }));
        // The directory is this appliance's before its snapshot is read.
        let claim = cfg.snapshot_dir.as_deref().map(state::claim).transpose()?;
        sys::catch_stop_signals();
        sys::catch_reload_signal();
        let (prepared, state) = tables(&cfg, &dp, opts.seed);
        let seed = prepared.seed;
        let mut running: Running = run::start(&dp, prepared)?;
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
            state,
            ..View::default()
        }));
        let (reload_tx, reload_rx) = crossbeam_channel::unbounded::<ReloadRequest>();
        let (snapshot_tx, snapshot_rx) = crossbeam_channel::bounded::<SnapshotRequest>(16);
        let (takeover_tx, takeover_rx) = crossbeam_channel::bounded::<TakeoverRequest>(4);
        let sync = match cfg.sync.clone() {
            None => None,
            Some(s) => {
                let tables = crate::sync::appliance::ApplianceTables {
                    commander: running.commander(),
                    flags: running.link_flags(),
                    hasher: FlowHasher::new(seed),
                    timeouts: cfg.engine.timeouts,
                    feeds: running.take_changes(),
                    next_feed: 0,
                };
                let (listen, peer, role) = (s.listen, s.peer, s.role);
                let e = crate::sync::endpoint::Endpoint::start(s, Box::new(tables)).map_err(|e| ServeError::Setting(format!("sync.listen {listen}: {e}")))?;
                crate::logln!("holdfast: sync: {role:?} on {}, peer {peer}", e.local);
                if role == crate::config::Role::Standby {
                    // A standby forwards nothing until it has taken over: judged against
                    // a table without the peer's flows, their replies would be denied.
                    running.set_syncing(true);
                    crate::logln!("holdfast: sync: standby: frames are dropped as `syncing` until a takeover commits the peer's flows");
                }
                Some(e)
            }
        };
        {
            let mut v = view.write().unwrap_or_else(|p| p.into_inner());
            v.external = sync.as_ref().map(|e| Arc::clone(&e.status));
            v.sync = sync.as_ref().map_or(Value::Null, |e| e.status_json());
        }
        let http_stats = Arc::clone(&view.read().unwrap_or_else(|p| p.into_inner()).http);
        let endpoint = match cfg.control.listen {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    let guarded = token.read().is_ok_and(|t| t.is_some());
                    crate::logln!(
                        "holdfast: WARNING: control.listen {addr} is reachable from other hosts: /metrics and /status are open to them; /flows and /reload {}",
                        if guarded { "need the token of control.token_file" } else { "are refused to them (no control.token_file)" }
                    );
                }
                Some(http::Endpoint::start(
                    addr,
                    Arc::clone(&view),
                    running.commander(),
                    http::Requests { reload: reload_tx, snapshot: snapshot_tx, takeover: takeover_tx },
                    Arc::clone(&token),
                    http_stats,
                )?)
            }
            None => None,
        };
        crate::logln!(
            "holdfast: inline between {} (outside) and {} (inside), {} worker(s) on core(s) {:?}; {}; SIGHUP reloads, SIGINT or SIGTERM stops",
            interfaces[0],
            interfaces[1],
            dp.cores.len(),
            cfg.dataplane.cores,
            endpoint.as_ref().map_or("no control endpoint".to_string(), |e| format!("control on http://{}", e.addr)),
        );
        notify::ready("workers running");
        let mut sat = Saturation::default();
        faults::links_at_start(&mut sat, &running, &interfaces);
        let beats = running.heartbeats();
        Ok(Appliance {
            prev: running.snapshots(),
            stalls: faults::StallWatch::new(&beats, Instant::now()),
            last_beats: beats,
            links: running.link_states().map(LinkView::of),
            running,
            seed,
            reloader: Reloader::new(path, cfg),
            view,
            token,
            endpoint,
            reload_rx,
            snapshot_rx,
            takeover_rx,
            sync,
            snapshotting: None,
            claim,
            logger,
            sat,
            start: Instant::now(),
            last_report: Instant::now(),
            watchdog: notify::watchdog_interval().map(|d| d / 2),
            last_watchdog: Instant::now(),
        })
    }

    /// One round of the control loop (every 50 ms).
    fn tick(&mut self, opts: &Options) {
        // Every reload asked for by now is answered by one reading of the file: a
        // burst of them (a script in a loop, many `holdfast reload` at once) costs one
        // reload, not one each while the loop, its faults and the watchdog wait.
        let asked: Vec<ReloadRequest> = self.reload_rx.try_iter().collect();
        if sys::take_reload_request() | !asked.is_empty() {
            let result = self.reload();
            for r in asked {
                let _ = r.reply.send(result.clone());
            }
        }
        while let Ok(r) = self.snapshot_rx.try_recv() {
            self.snapshot(r);
        }
        while let Ok(r) = self.takeover_rx.try_recv() {
            let result = match &self.sync {
                None => Err("sync: is not configured: there is no sync peer".to_string()),
                Some(e) if r.resync => {
                    e.resync();
                    Ok(json!({"resync": "asked the peer for its whole table"}))
                }
                Some(e) => e.takeover(Duration::from_secs(60)),
            };
            match &result {
                Ok(v) => crate::logln!("holdfast: sync: takeover: {v}"),
                Err(e) => crate::logln!("holdfast: sync: takeover FAILED: {e}"),
            }
            let _ = r.reply.send(result);
        }
        let snaps = self.running.snapshots();
        // Faults are raised at once, not at the next report.
        let stalled = faults::stalls(&mut self.sat, &mut self.stalls, &self.running.heartbeats(), &self.running.ended_workers());
        faults::links(&mut self.sat, &mut self.running, &mut self.links);
        if let Some(l) = &self.logger {
            faults::deny_log(&mut self.sat, l);
        }
        faults::stderr(&mut self.sat);
        let helper_ended = faults::helpers(
            &mut self.sat,
            [self.endpoint.as_mut().and_then(|e| e.ended()), self.sync.as_mut().and_then(|e| e.ended()), self.logger.as_mut().and_then(|l| l.ended())],
        );
        if let Some(every) = self.watchdog
            && self.last_watchdog.elapsed() >= every
        {
            // Only while every worker's loop and every helper thread is alive and no
            // re-attach is failing: then systemd restarts the service.
            let beats = self.running.heartbeats();
            if beats.iter().zip(&self.last_beats).all(|(now, before)| now > before) && self.running.reattach_pending().is_none() && !helper_ended {
                notify::watchdog();
            }
            self.last_beats = beats;
            self.last_watchdog = Instant::now();
        }
        // The report, its log lines and systemd's status first; the view's lock only
        // for the assignments, so that the endpoint never waits on stderr.
        let report = (self.last_report.elapsed() >= self.reloader.current().control.report_interval).then(|| {
            let r = saturation::report(&self.prev, &snaps, self.last_report.elapsed().as_secs_f64());
            for t in self.sat.update(&r, &self.reloader.current().control.saturation, SystemTime::now()) {
                crate::logln!("holdfast: {}", t.describe(&r));
            }
            let active: Vec<Active> = self.sat.active().cloned().collect();
            if !opts.quiet {
                crate::logln!("{}", report::status_line(&r, &active, self.start.elapsed()));
            }
            notify::status(&format!(
                "{:.0} pps in, table {:.1} % full, {} saturation event(s), generation {}",
                r.total.rx_pps,
                100.0 * r.total.table_fill,
                active.len(),
                self.reloader.generation()
            ));
            self.prev = snaps.clone();
            self.last_report = Instant::now();
            r
        });
        let sync = self.sync.as_ref().map(|e| e.status_json());
        if let (Some(s), Some(cfg)) = (&sync, &self.reloader.current().sync) {
            faults::sync(&mut self.sat, s, if cfg.mode == crate::config::SyncMode::Ftfw { cfg.resend_queue } else { 0 });
        }
        let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
        v.uptime_s = self.start.elapsed().as_secs_f64();
        if let Some(s) = sync {
            v.sync = s;
        }
        v.stalled = stalled;
        v.links = self.links.clone();
        v.active = self.sat.active().cloned().collect();
        v.raised_total = self.sat.raised_total.clone();
        v.stderr_lost = crate::logline::lost();
        if let Some(l) = &self.logger {
            v.log_written = l.stats.written.load(std::sync::atomic::Ordering::Relaxed);
            v.log_write_errors = l.stats.write_errors.load(std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(r) = report {
            v.report = r;
        }
        v.snaps = snaps;
    }

    /// Re-reads the file; applies it or leaves everything as it was (the one exception,
    /// a queue that filled while the commands went out, says so). Tells systemd, the
    /// log and the view.
    fn reload(&mut self) -> Result<Value, String> {
        notify::reloading(false);
        let stalled = self.view.read().unwrap_or_else(|p| p.into_inner()).stalled.clone();
        let result = self.reloader.reload(&self.running.commander(), &stalled);
        notify::reloading(true);
        let at = view::rfc3339(SystemTime::now());
        match result {
            Ok(a) => {
                *self.token.write().unwrap_or_else(|p| p.into_inner()) = a.token.clone();
                if let Some(l) = &self.logger {
                    l.reopen(a.log.clone());
                }
                let r = json!({"ok": true, "generation": a.generation, "recheck": a.recheck, "restart_needed": a.restart_needed, "at": at});
                let note = if a.restart_needed.is_empty() { String::new() } else { format!("; NOT applied until a restart: {}", a.restart_needed.join(", ")) };
                crate::logln!("holdfast: reload: generation {} applied{note}", a.generation);
                let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
                v.reloads += 1;
                v.generation = a.generation;
                v.restart_needed = a.restart_needed;
                v.last_reload = Some(r.clone());
                Ok(r)
            }
            Err(e) => {
                let spent = matches!(e, reload::ReloadError::Stuck { .. }).then(|| self.reloader.generation());
                let e = match spent {
                    Some(_) => format!("reload PARTLY applied, workers now differ: {e}"),
                    None => format!("reload rejected, the running configuration stays:\n{e}"),
                };
                crate::logln!("holdfast: {e}");
                let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
                v.reload_failures += 1;
                if let Some(g) = spent {
                    // `applied_by_all_workers` then reads false until a reload succeeds.
                    v.generation = g;
                }
                v.last_reload = Some(json!({"ok": false, "error": e, "at": at}));
                Err(e)
            }
        }
    }

    /// Starts writing the running tables to `state.snapshot_dir` on a thread of its own
    /// (the loop goes on); one at a time.
    fn snapshot(&mut self, r: SnapshotRequest) {
        let Some(dir) = self.reloader.current().snapshot_dir.clone() else {
            let _ = r.reply.send(Err("state.snapshot_dir is not set in the configuration: there is nowhere to write a snapshot".into()));
            return;
        };
        if let Err(e) = claimed(&mut self.claim, &dir) {
            let _ = r.reply.send(Err(e.to_string()));
            return;
        }
        if self.snapshotting.as_ref().is_some_and(|h| !h.is_finished()) {
            let _ = r.reply.send(Err("a snapshot is being written; try again when it is done".into()));
            return;
        }
        let commander = self.running.commander();
        let seed = self.seed;
        let spawned = std::thread::Builder::new().name("holdfast-snapshot".into()).spawn(move || {
            let result = take_snapshot(&commander, &dir, seed);
            match &result {
                Ok(v) => crate::logln!(
                    "holdfast: state: on-demand snapshot: {} flow(s) written to {} in {:.2} s",
                    v["flows"],
                    v["path"].as_str().unwrap_or("?"),
                    v["seconds"].as_f64().unwrap_or(0.0)
                ),
                Err(e) => crate::logln!("holdfast: state: on-demand snapshot FAILED, the previous one stays: {e}"),
            }
            let _ = r.reply.send(result);
        });
        match spawned {
            Ok(h) => self.snapshotting = Some(h),
            Err(e) => crate::logln!("holdfast: state: cannot start the snapshot thread: {e}"),
        }
    }

    /// Stops the endpoint, the workers (within the grace period) and the logger;
    /// returns the final counters.
    fn finish(mut self) -> Value {
        notify::stopping();
        if let Some(e) = self.endpoint.take() {
            e.stop();
        }
        let uptime = self.start.elapsed();
        let sync = self.sync.take().map(|e| {
            let v = e.status_json();
            e.stop();
            v
        });
        let stopped = self.running.stop(STOP_GRACE);
        for w in &stopped.stuck {
            crate::logln!(
                "holdfast: worker {w} did not stop within {} s (stuck); exiting without it — its XDP program detaches with the process",
                STOP_GRACE.as_secs()
            );
        }
        if let Some(l) = self.logger.take() {
            l.stop();
        }
        let written = self.reloader.current().snapshot_dir.clone().map(|dir| save_state(&mut self.claim, &dir, &stopped, self.seed));
        let mut out = report::final_json(&stopped.snapshots, uptime);
        out["state"] = written.unwrap_or(Value::Null);
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        out["generation"] = json!(self.reloader.generation());
        out["reloads"] = json!(v.reloads);
        out["reload_failures"] = json!(v.reload_failures);
        out["saturation_events_total"] = json!(v.raised_total);
        out["deny_log"] = json!({"written": v.log_written, "write_errors": v.log_write_errors});
        out["stderr_lines_lost"] = json!(crate::logline::lost());
        out["stuck_workers"] = json!(stopped.stuck);
        out["sync"] = sync.unwrap_or(Value::Null);
        out
    }
}
