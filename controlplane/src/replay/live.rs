//! `holdfast replay --intf1 A --intf2 B`: a capture replayed onto two interfaces over
//! AF_XDP, both sides of every flow, at the capture's pace (scaled), at a rate, or as
//! fast as the ports take it; what comes out of the device under test on the far side
//! is matched frame by frame (`order.rs`), and with `--order flow` no frame of a flow
//! leaves before the frames of that flow sent earlier on the other interface came out.
//!
//! The capture is read as it goes (mapped from its file, or preloaded with `-K`), so
//! a capture larger than memory replays; loops read it again, with `--unique-ip`
//! moving the client side's addresses each loop (`rewrite.rs`).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use holdfast_dataplane::bpf::XdpMode;
use holdfast_dataplane::packet::PacketWire;
use holdfast_dataplane::sys;
use holdfast_dataplane::wire::{Wire, WireConfig, WireStats};
use holdfast_dataplane::xsk::XdpStats;
use serde_json::{Map, Value, json};

use super::order::{Counts, Tracker};
use super::rewrite;
use super::sides::Sides;
use crate::capture::{CaptureError, Reader};
use crate::control::client::{self, Target};

/// The replayer's ports: AF_XDP (the dataplane's sockets) or AF_PACKET.
enum Port {
    Xdp(Box<Wire>),
    Packet(PacketWire),
}

impl Port {
    fn queue(&mut self, side: usize, f: &[u8]) -> bool {
        match self {
            Port::Xdp(w) => w.queue(side, f),
            Port::Packet(w) => w.queue(side, f),
        }
    }
    fn flush(&mut self) {
        match self {
            Port::Xdp(w) => w.flush(),
            Port::Packet(w) => w.flush(),
        }
    }
    fn poll(&mut self, f: impl FnMut(usize, &[u8])) -> usize {
        match self {
            Port::Xdp(w) => w.poll(f),
            Port::Packet(w) => w.poll(f),
        }
    }
    fn wait(&self, ms: i32) {
        match self {
            Port::Xdp(w) => w.wait(ms),
            Port::Packet(w) => w.wait(ms),
        }
    }
    fn stats(&self) -> WireStats {
        match self {
            Port::Xdp(w) => w.stats(),
            Port::Packet(w) => w.stats(),
        }
    }
    fn xdp_stats(&self) -> [XdpStats; 2] {
        match self {
            Port::Xdp(w) => w.xdp_stats(),
            Port::Packet(w) => w.xdp_stats(),
        }
    }
}

/// How frames leave and come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// AF_XDP with the redirect program on both interfaces (the default).
    Xdp,
    /// AF_PACKET raw sockets: any interface, and far ends of one's choice.
    Packet,
}

/// How fast frames go out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// The capture's own timing, `multiplier` times faster (tcpreplay's default, `-x`).
    Capture { multiplier: f64 },
    /// Frames per second (`-p`).
    Pps(f64),
    /// Megabits per second of frames (`-M`).
    Mbps(f64),
    /// As fast as the ports take them (`-t`).
    Top,
}

impl Rate {
    fn describe(&self) -> String {
        match self {
            Rate::Capture { multiplier } if *multiplier == 1.0 => "the capture's timing".into(),
            Rate::Capture { multiplier } => format!("the capture's timing x{multiplier}"),
            Rate::Pps(p) => format!("{p} pps"),
            Rate::Mbps(m) => format!("{m} Mbps"),
            Rate::Top => "top speed".into(),
        }
    }
}

pub struct Options {
    pub interfaces: [String; 2],
    pub driver: Driver,
    /// Where frames sent on each side come out, when not the other sending interface
    /// (`--rx1`, `--rx2`; AF_PACKET only).
    pub rx: [Option<String>; 2],
    pub mode: XdpMode,
    pub rate: Rate,
    /// Passes over the capture; 0: until stopped.
    pub loops: u64,
    pub loop_delay: Duration,
    pub unique_ip: bool,
    /// Frames to send at most.
    pub limit: Option<u64>,
    pub duration: Option<Duration>,
    pub order: bool,
    pub order_timeout: Duration,
    pub stats_every: Option<Duration>,
    pub verdicts_out: Option<PathBuf>,
    pub control: Option<Target>,
    pub seed: u64,
    pub umem_frames: u32,
    /// `--map-servers`: the server side's IPv4 addresses moved into this network.
    pub map_servers: Option<holdfast_pipeline::policy::Cidr>,
    /// Destination MAC of frames sent on each side, when set.
    pub dst_mac: [Option<[u8; 6]>; 2],
    /// Draw the run (per second) into this SVG file.
    pub report: Option<PathBuf>,
    /// A progress bar on the terminal (off when standard output is not one).
    pub progress: bool,
}

/// Frames offered and not yet resolved at most; past it the replayer waits (counted
/// as `window_waits`).
const WINDOW: usize = 1 << 18;
/// Bytes of frames held for flow order at most.
const HELD_BYTES: usize = 256 << 20;
/// Flows counted one by one at most (past it the summary says "at least").
const FLOWS_COUNTED: usize = 16 << 20;
/// How long to wait after the last frame for what is still in flight, beyond the
/// order timeout.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

pub struct Report {
    pub interfaces: [String; 2],
    pub rate: String,
    pub sides: &'static str,
    pub order: bool,
    pub sent: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    pub loops_done: u64,
    pub flows: u64,
    pub flows_capped: bool,
    pub counts: Counts,
    pub wire: WireStats,
    pub xdp: [XdpStats; 2],
    /// Times the replayer waited for its window of unresolved frames or held bytes.
    pub window_waits: u64,
    /// Frames whose client address could not be moved by `--unique-ip` (no IP header).
    pub unique_ip_left: u64,
    pub unlearned_sides: u64,
    /// `--map-servers`: servers that share an address, frames left unmapped (IPv6).
    pub servers_shared: u64,
    pub servers_left: u64,
    pub stopped_by: &'static str,
    pub capture_error: Option<CaptureError>,
    pub skipped: u64,
    /// The appliance's counters over the run (`--control`), or why they are missing.
    pub appliance: Option<Value>,
    /// Once a second: (seconds, frames sent, forwarded, dropped by the device), totals.
    pub timeline: Vec<(f64, u64, u64, u64)>,
    /// The appliance's `/status` once a second (`--control`).
    pub appliance_samples: Vec<(f64, Value)>,
}

impl Report {
    pub fn pps(&self) -> f64 {
        if self.elapsed_s > 0.0 { self.sent as f64 / self.elapsed_s } else { 0.0 }
    }

    pub fn to_json(&self) -> Value {
        let c = &self.counts;
        let dev = |s: usize| {
            json!({
                "interface": self.interfaces[s],
                "successful": self.wire.completed[s],
                "failed": self.wire.failed[s],
                "retried": self.wire.retried[s],
                "queued": self.wire.queued[s],
                "bytes": self.wire.bytes[s],
                "received": self.wire.received[s],
                "rx_dropped": self.xdp[s].rx_dropped,
                "rx_ring_full": self.xdp[s].rx_ring_full,
            })
        };
        json!({
            "actual": {"packets": self.sent, "bytes": self.bytes, "seconds": self.elapsed_s},
            "rated": {"bps": self.bytes as f64 / self.elapsed_s.max(1e-9), "mbps": self.bytes as f64 * 8.0 / self.elapsed_s.max(1e-9) / 1e6, "pps": self.pps()},
            "flows": {"flows": self.flows, "at_least": self.flows_capped, "fps": self.flows as f64 / self.elapsed_s.max(1e-9)},
            "devices": [dev(0), dev(1)],
            "emerged": {"forwarded": c.forwarded, "dropped": c.dropped, "late": c.late, "unmatched": c.unmatched},
            "order": {"mode": if self.order { "flow" } else { "none" }, "held": c.held, "held_peak": c.held_peak, "window_waits": self.window_waits},
            "rate": self.rate,
            "sides": self.sides,
            "loops": self.loops_done,
            "unique_ip_left": self.unique_ip_left,
            "unlearned_sides": self.unlearned_sides,
            "map_servers": {"shared": self.servers_shared, "left": self.servers_left},
            "stopped_by": self.stopped_by,
            "capture": {"skipped": self.skipped, "error": self.capture_error.as_ref().map(|e| json!({"offset": e.offset, "message": e.message}))},
            "appliance": self.appliance,
            "timeline": self.timeline.iter().map(|(t, s, f, d)| json!([t, s, f, d])).collect::<Vec<_>>(),
        })
    }

    /// The run as panels over time: what the replayer saw, then (with `--control`)
    /// what the appliance counted.
    pub fn panels(&self) -> Vec<crate::report::Panel> {
        timeline_panels(&self.timeline, &self.appliance_samples)
    }

    /// The closing summary in tcpreplay's shape, with what came out.
    pub fn human(&self) -> String {
        let c = &self.counts;
        let secs = self.elapsed_s.max(1e-9);
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(s, "Actual: {} packets ({} bytes) sent in {:.2} seconds", self.sent, self.bytes, self.elapsed_s);
        let _ = writeln!(s, "Rated: {:.1} Bps, {:.2} Mbps, {:.2} pps", self.bytes as f64 / secs, self.bytes as f64 * 8.0 / secs / 1e6, self.pps());
        let _ = writeln!(s, "Flows: {}{} flows, {:.2} fps", if self.flows_capped { "at least " } else { "" }, self.flows, self.flows as f64 / secs);
        for side in 0..2 {
            let _ = writeln!(s, "Statistics for network device: {}", self.interfaces[side]);
            let _ = writeln!(s, "\tSuccessful packets:        {}", self.wire.completed[side]);
            let _ = writeln!(s, "\tFailed packets:            {}", self.wire.failed[side]);
            let _ = writeln!(s, "\tRetried packets:           {}", self.wire.retried[side]);
        }
        let _ = writeln!(
            s,
            "Emerged: {} forwarded, {} dropped by the device (not out within the order timeout), {} late, {} unmatched",
            c.forwarded, c.dropped, c.late, c.unmatched
        );
        let lost_here: u64 = self.xdp.iter().map(|x| x.rx_dropped + x.rx_ring_full).sum();
        if lost_here > 0 {
            let _ = writeln!(s, "Lost at the replayer's own receive: {lost_here} (counted as dropped above: raise the UMEM or slow down)");
        }
        let _ = writeln!(
            s,
            "Order: {}; {} frames waited for their flow (at most {} at once); sides by {}; rate {}; {} loop(s); stopped: {}",
            if self.order { "flow" } else { "none" },
            c.held,
            c.held_peak,
            self.sides,
            self.rate,
            self.loops_done,
            self.stopped_by
        );
        if let Some(a) = &self.appliance {
            if let Some(e) = a.get("error") {
                let _ = writeln!(s, "Appliance: {}", e.as_str().unwrap_or("?"));
            } else {
                let _ = writeln!(
                    s,
                    "Appliance over the run: passed {}, dropped {}, drops {}, forward drops {}, flows created {}",
                    a["passed"], a["dropped"], a["drops"], a["forward_drops"], a["flows_created"]
                );
            }
        }
        s.trim_end().to_string()
    }
}

/// Panels of a live replay: offered, forwarded and not forwarded frames per second,
/// then the appliance's panels when it was sampled.
pub fn timeline_panels(timeline: &[(f64, u64, u64, u64)], appliance: &[(f64, Value)]) -> Vec<crate::report::Panel> {
    use crate::report::{Panel, Series, rates};
    let col = |k: usize| -> Vec<(f64, f64)> { timeline.iter().map(|r| (r.0, [r.1, r.2, r.3][k] as f64)).collect() };
    let mut panels = vec![Panel {
        title: "replayer: frames per second".into(),
        y: "pps".into(),
        series: vec![
            Series { name: "offered".into(), points: rates(&col(0)) },
            Series { name: "came out (forwarded)".into(), points: rates(&col(1)) },
            Series { name: "did not come out".into(), points: rates(&col(2)) },
        ],
    }];
    panels.extend(crate::report::appliance_panels(appliance));
    panels
}

/// Reads the appliance's `/status` once a second on its own thread until stopped.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, Value)>>,
}

impl Sampler {
    fn start(target: Target, t0: Instant) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut next = Instant::now();
            // Bounded: one sample a second, for a day at most.
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && out.len() < 86_400 {
                if Instant::now() >= next {
                    if let Ok(v) = client::status(&target) {
                        out.push((t0.elapsed().as_secs_f64(), v));
                    }
                    next += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            out
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(f64, Value)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `after - before` for every number of two JSON trees of the same shape.
pub fn delta(after: &Value, before: &Value) -> Value {
    match (after, before) {
        (Value::Object(a), Value::Object(b)) => {
            let m: Map<String, Value> = a.iter().map(|(k, v)| (k.clone(), delta(v, b.get(k).unwrap_or(&Value::Null)))).collect();
            Value::Object(m)
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_u64(), b.as_u64()) {
            (Some(x), Some(y)) => json!(x.saturating_sub(y)),
            _ => json!(a.as_f64().unwrap_or(0.0) - b.as_f64().unwrap_or(0.0)),
        },
        (a, _) => a.clone(),
    }
}

fn appliance_counters(t: &Target) -> Result<Value, String> {
    client::status(t).map(|v| v["total"]["counters"].clone()).map_err(|e| e.to_string())
}

struct Run<'a> {
    wire: Port,
    tracker: Tracker,
    t0: Instant,
    verdicts: Option<std::io::BufWriter<std::fs::File>>,
    opts: &'a Options,
    next_stats: Option<Instant>,
    sent: u64,
    last_stats: (Instant, u64),
    /// The clock when last read, ns from `t0`.
    clock_ns: u64,
    timeline: Vec<(f64, u64, u64, u64)>,
    next_sample: Instant,
    bar: Option<indicatif::ProgressBar>,
    next_bar: Instant,
}

impl Run<'_> {
    /// Reads the clock (and keeps it for the frames offered until the next read).
    fn now_ns(&mut self) -> u64 {
        self.clock_ns = self.t0.elapsed().as_nanos() as u64;
        self.clock_ns
    }

    /// Receives, times out, sends released frames, writes verdicts.
    fn service(&mut self) -> std::io::Result<()> {
        let now = self.now_ns();
        let Run { wire, tracker, .. } = self;
        wire.poll(|side, bytes| tracker.emerged(side, bytes, now));
        tracker.expire(now);
        while let Some(r) = tracker.pop_release() {
            if !wire.queue(r.side, &r.bytes) {
                tracker.unpop_release(r);
                break;
            }
        }
        wire.flush();
        while let Some(o) = self.tracker.pop_outcome() {
            if let Some(w) = &mut self.verdicts {
                let mut v =
                    if o.forwarded { json!({"i": o.index, "verdict": "pass"}) } else { json!({"i": o.index, "verdict": "drop", "reason": "not_forwarded"}) };
                if o.lap > 0 {
                    v["loop"] = json!(o.lap);
                }
                writeln!(w, "{v}")?;
            }
        }
        // The clock read above, as an instant.
        let wall = self.t0 + Duration::from_nanos(now);
        if wall >= self.next_sample && self.timeline.len() < 86_400 {
            let c = &self.tracker.counts;
            self.timeline.push((now as f64 / 1e9, self.sent, c.forwarded, c.dropped));
            self.next_sample += Duration::from_secs(1);
        }
        if let Some(bar) = &self.bar
            && wall >= self.next_bar
        {
            let c = &self.tracker.counts;
            match (self.opts.limit, self.opts.duration) {
                (Some(_), _) => bar.set_position(self.sent),
                (None, Some(_)) => bar.set_position(now / 1_000_000_000),
                _ => bar.tick(),
            }
            bar.set_message(format!("{} sent, {} out, {} not", self.sent, c.forwarded, c.dropped));
            self.next_bar = wall + Duration::from_millis(200);
        }
        if let Some(at) = self.next_stats
            && wall >= at
        {
            let every = self.opts.stats_every.unwrap_or(Duration::from_secs(1));
            let (t, n) = self.last_stats;
            let c = &self.tracker.counts;
            eprintln!(
                "replay: {} sent ({:.0} pps), {} forwarded, {} dropped, {} waiting for their flow",
                self.sent,
                (self.sent - n) as f64 / t.elapsed().as_secs_f64().max(1e-9),
                c.forwarded,
                c.dropped,
                self.tracker.held().0
            );
            self.last_stats = (Instant::now(), self.sent);
            self.next_stats = Some(at + every);
        }
        Ok(())
    }

    /// Sleeps a little: in poll() on both sockets when it is a millisecond or more,
    /// else briefly (never a busy spin: it would starve the device under test on a
    /// small machine).
    fn pause(&self, ns: u64) {
        if ns >= 1_000_000 {
            self.wire.wait(1);
        } else if ns > 0 {
            std::thread::sleep(Duration::from_nanos(ns.min(200_000)));
        }
    }

    fn send(&mut self, side: usize, bytes: &[u8]) -> std::io::Result<()> {
        while !self.wire.queue(side, bytes) {
            self.service()?;
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// Replays `capture` (a pcap or pcapng file's bytes).
pub fn run(capture: &[u8], sides: &mut Sides, opts: &Options) -> std::io::Result<Report> {
    let mut servers = match opts.map_servers {
        Some(c) if !c.v6 => Some(rewrite::ServerMap::new(c.addr as u32, c.len).map_err(std::io::Error::other)?),
        Some(_) => return Err(std::io::Error::other("--map-servers takes an IPv4 network")),
        None => None,
    };
    let wire = match opts.driver {
        Driver::Xdp => {
            if opts.rx.iter().any(Option::is_some) {
                return Err(std::io::Error::other("--rx1/--rx2 need --driver packet (AF_XDP receives on the interfaces it sends on)"));
            }
            Port::Xdp(Box::new(Wire::open(&WireConfig { interfaces: opts.interfaces.clone(), mode: opts.mode, frames: opts.umem_frames, ring_size: 4096 })?))
        }
        Driver::Packet => {
            let [i1, i2] = &opts.interfaces;
            // Frames sent on side 0 come out on side 1: `--rx1` (default --intf2).
            let rx1 = opts.rx[0].as_deref().unwrap_or(i2);
            let rx2 = opts.rx[1].as_deref().unwrap_or(i1);
            Port::Packet(PacketWire::open([i1, i2], [rx2, rx1])?)
        }
    };
    let verdicts = match &opts.verdicts_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| std::io::Error::new(e.kind(), format!("--verdicts-out {}: cannot create: {e}", p.display())))?,
        )),
        None => None,
    };
    let before = opts.control.as_ref().map(appliance_counters);
    sys::catch_stop_signals();
    let timeout_ns = opts.order_timeout.as_nanos() as u64;
    let t0 = Instant::now();
    let mut r = Run {
        wire,
        tracker: Tracker::new(opts.order, timeout_ns, opts.seed, WINDOW),
        t0,
        verdicts,
        opts,
        next_stats: opts.stats_every.map(|d| t0 + d),
        sent: 0,
        last_stats: (t0, 0),
        clock_ns: 0,
        timeline: vec![(0.0, 0, 0, 0)],
        next_sample: t0 + Duration::from_secs(1),
        bar: opts.progress.then(|| progress_bar(opts)),
        next_bar: t0,
    };
    let sampler = opts.control.clone().map(|t| Sampler::start(t, t0));
    let mut flows: HashSet<u64, foldhash::fast::RandomState> = HashSet::default();
    let mut flows_capped = false;
    let mut bytes_sent = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut window_waits = 0u64;
    let mut unique_ip_left = 0u64;
    let mut stopped_by = "end of capture";
    let mut loops_done = 0u64;
    let mut capture_error = None;
    let mut skipped = 0;
    // The capture-timing clock: where this loop starts, in ns from t0.
    let mut lap_base_ns: f64 = 0.0;
    let deadline = opts.duration.map(|d| t0 + d);
    'laps: for lap in 0u64.. {
        if opts.loops != 0 && lap >= opts.loops {
            break;
        }
        if opts.unique_ip && lap == rewrite::IPV4_LAPS {
            eprintln!(
                "replay: --unique-ip: loop {lap}: IPv4 client addresses have room for {} moves of 2^20; from here each loop repeats the flows of the loop {} before it",
                rewrite::IPV4_LAPS,
                rewrite::IPV4_LAPS
            );
        }
        let mut reader = Reader::new(capture);
        let mut first_ts: Option<u64> = None;
        let mut last_offset_ns = 0.0f64;
        let mut in_lap = 0u64;
        for (index, rec) in (&mut reader).enumerate() {
            if sys::stop_requested() {
                stopped_by = "signal";
                break 'laps;
            }
            if opts.limit.is_some_and(|l| r.sent >= l) {
                stopped_by = "--limit";
                break 'laps;
            }
            if r.sent.is_multiple_of(64) && deadline.is_some_and(|d| Instant::now() >= d) {
                stopped_by = "--duration";
                break 'laps;
            }
            let due_ns: f64 = match opts.rate {
                Rate::Capture { multiplier } => {
                    let f = *first_ts.get_or_insert(rec.ts_ns);
                    last_offset_ns = rec.ts_ns.saturating_sub(f) as f64 / multiplier;
                    lap_base_ns + last_offset_ns
                }
                Rate::Pps(p) => r.sent as f64 * 1e9 / p,
                Rate::Mbps(m) => bytes_sent as f64 * 8.0 * 1e3 / m,
                Rate::Top => 0.0,
            };
            // (Top speed: no clock read per frame; `service` reads it every 64.) A wait
            // — a capture's gap, however long its timestamps make it, or a full window —
            // still ends at a signal or at --duration.
            let stop = |why: &mut &'static str| {
                if sys::stop_requested() {
                    *why = "signal";
                    true
                } else if deadline.is_some_and(|d| Instant::now() >= d) {
                    *why = "--duration";
                    true
                } else {
                    false
                }
            };
            while due_ns > 0.0 && (r.now_ns() as f64) < due_ns {
                if stop(&mut stopped_by) {
                    break 'laps;
                }
                r.wire.flush();
                r.service()?;
                let now = r.now_ns() as f64;
                if now < due_ns {
                    r.pause((due_ns - now) as u64);
                }
            }
            while r.tracker.in_window() >= WINDOW || r.tracker.held().1 >= HELD_BYTES {
                if stop(&mut stopped_by) {
                    break 'laps;
                }
                window_waits += 1;
                r.service()?;
                r.wire.wait(1);
            }
            let side = sides.side(&rec.data, rec.outgoing);
            buf.clear();
            buf.extend_from_slice(&rec.data);
            if let Some(m) = &mut servers {
                m.apply(&mut buf, side == 1);
            }
            if let (Some(mac), Some(dst)) = (opts.dst_mac[side], buf.get_mut(..6)) {
                dst.copy_from_slice(&mac);
            }
            if opts.unique_ip && lap > 0 && !rewrite::unique_ip(&mut buf, side == 0, lap as u32) {
                unique_ip_left += 1;
            }
            let flow = r.tracker.flow_of(&buf);
            if !flows_capped {
                flows.insert(flow);
                flows_capped = flows.len() >= FLOWS_COUNTED;
            }
            if r.tracker.offer(index as u64, lap as u32, side, &buf, flow, r.clock_ns) {
                r.send(side, &buf)?;
            }
            r.sent += 1;
            in_lap += 1;
            bytes_sent += buf.len() as u64;
            if r.sent.is_multiple_of(64) {
                r.service()?;
            }
        }
        skipped = reader.skipped_total();
        if let Some(e) = reader.error.take() {
            let fatal = in_lap == 0;
            capture_error = Some(e);
            if fatal {
                stopped_by = "capture error";
                break;
            }
        }
        if in_lap == 0 {
            break;
        }
        loops_done += 1;
        lap_base_ns += last_offset_ns + opts.loop_delay.as_nanos() as f64;
        if !opts.loop_delay.is_zero() && (opts.loops == 0 || lap + 1 < opts.loops) {
            let until = Instant::now() + opts.loop_delay;
            while Instant::now() < until && !sys::stop_requested() {
                r.service()?;
                r.pause(until.saturating_duration_since(Instant::now()).as_nanos() as u64);
            }
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    // What is still in flight: until it comes out or times out.
    let drain_until = Instant::now() + opts.order_timeout + DRAIN_GRACE;
    while !r.tracker.is_done() && Instant::now() < drain_until && !sys::stop_requested() {
        r.service()?;
        r.wire.wait(1);
    }
    // Past the deadline, whatever is left is resolved by the timeout (a frame let go
    // by that is sent, and resolved the same way at the next round).
    for _ in 0..1_000 {
        if r.tracker.is_done() {
            break;
        }
        r.tracker.expire(u64::MAX);
        r.service()?;
    }
    if let Some(w) = &mut r.verdicts {
        w.flush()?;
    }
    if let Some(b) = &r.bar {
        b.finish_and_clear();
    }
    let c = r.tracker.counts;
    r.timeline.push((t0.elapsed().as_secs_f64(), r.sent, c.forwarded, c.dropped));
    let appliance_samples = sampler.map(Sampler::finish).unwrap_or_default();
    let appliance = match (&opts.control, before) {
        (Some(t), Some(Ok(b))) => Some(match appliance_counters(t) {
            Ok(a) => delta(&a, &b),
            Err(e) => json!({"error": format!("--control {}: {e}", t.addr)}),
        }),
        (Some(t), Some(Err(e))) => Some(json!({"error": format!("--control {}: {e}", t.addr)})),
        _ => None,
    };
    Ok(Report {
        interfaces: opts.interfaces.clone(),
        rate: opts.rate.describe(),
        sides: sides.describe(),
        order: opts.order,
        sent: r.sent,
        bytes: bytes_sent,
        elapsed_s,
        loops_done,
        flows: flows.len() as u64,
        flows_capped,
        counts: r.tracker.counts,
        wire: r.wire.stats(),
        xdp: r.wire.xdp_stats(),
        window_waits,
        unique_ip_left,
        unlearned_sides: sides.unlearned,
        servers_shared: servers.as_ref().map_or(0, |m| m.shared),
        servers_left: servers.as_ref().map_or(0, |m| m.left),
        stopped_by,
        capture_error,
        skipped,
        appliance,
        timeline: r.timeline,
        appliance_samples,
    })
}

/// A bar when the run's end is known (`--limit`, `--duration`), else a spinner; both
/// with the counts so far and the rate.
fn progress_bar(opts: &Options) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    let (len, unit) = match (opts.limit, opts.duration) {
        (Some(l), _) => (Some(l), "frames"),
        (None, Some(d)) => (Some(d.as_secs().max(1)), "s"),
        _ => (None, ""),
    };
    match len {
        Some(n) => {
            let b = ProgressBar::new(n);
            let style = ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {unit} eta {{eta}}  {{msg}}"))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b
        }
        None => {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template("{spinner} {elapsed}  {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            b
        }
    }
}
