//! `holdfast lab --replay F`: a capture replayed through the appliance by Holdfast's own
//! replayer, which holds both far ends of the appliance's wires — no end hosts, no
//! stacks: every frame of the capture goes out on its side and what comes out of the
//! appliance is matched frame by frame (`replay::live`).
//!
//! ```text
//!   hf-rp: holdfast replay (hf-out1, hf-in1) ══ (hf-out0, hf-in0) hf-fw: holdfast run
//! ```
//!
//! With the lab's own config the capture's servers are moved into its server network
//! (`--map-servers 10.0.2.0/24`) and sides are learned as tcpprep does; with
//! `--config` the replayer takes sides from that config's inside networks and leaves
//! addresses alone. The report says what was sent, what came out, what the appliance
//! counted, and whether every frame that did not come out is one the appliance
//! counted as dropped (by the pipeline, or a ring, or the forwarding stage).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use holdfast_dataplane::sys;
use serde_json::{Value, json};

use super::{Guard, LabError, config_text, down, in_ns, interrupted, ip, run_in, start_appliance, veth_to_fw};

/// The replayer's namespace.
pub const REPLAYER_NS: &str = "hf-rp";
/// The lab's server network, where the capture's servers are moved.
pub const SERVER_NET: &str = "10.0.2.0/24";

pub struct Options {
    pub capture: PathBuf,
    /// The appliance's config (default: the lab's for `workers`).
    pub config: Option<PathBuf>,
    pub workers: usize,
    /// Flags for the replayer (rate, loops, order...).
    pub replay_args: Vec<String>,
    pub verdicts_out: Option<PathBuf>,
    /// Draw the run per second (replayer and appliance) into this SVG file.
    pub report: Option<PathBuf>,
    pub keep: bool,
}

/// What the appliance counted as dropped, by where: the pipeline's verdicts, its RX
/// rings (full, or no free frame in the fill ring), SYNs its XDP program shed before
/// the rings (`workers.shed_syns`), the forwarding stage.
fn appliance_drops(t: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let sum = |v: &Value| v.as_object().map_or(0, |m| m.values().map(n).sum::<u64>());
    let rings: u64 = ["outside", "inside"].iter().map(|s| n(&t["xdp"][s]["rx_ring_full"]) + n(&t["xdp"][s]["rx_dropped"])).sum();
    let shed: u64 = ["outside", "inside"].iter().map(|s| n(&t["xdp"][s]["syn_shed"])).sum();
    json!({
        "pipeline": n(&t["dropped"]),
        "rx_rings": rings,
        "syn_shed": shed,
        "forwarding": sum(&t["forward_drops"]),
        "tx_lost": sum(&t["tx_lost"]),
    })
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut b);
        }
        b
    })
}

pub fn run(exe: &Path, o: &Options) -> Result<Value, LabError> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    sys::catch_stop_signals();
    let started = Instant::now();
    let dir = super::private_dir("holdfast-lab-replay")?;
    let mut g = Guard { children: vec![], keep: o.keep, dir: dir.clone() };
    let cfg_text = match &o.config {
        // Bounded as `holdfast run` bounds it (it reads the copy again).
        Some(p) => {
            let limit = crate::config::MAX_CONFIG_BYTES;
            let bytes = crate::config::read_at_most(p, limit)
                .map_err(LabError::io(p.display()))?
                .ok_or_else(|| LabError::Io { what: p.display().to_string(), source: std::io::Error::other(format!("more than {limit} bytes")) })?;
            String::from_utf8(bytes).map_err(|_| LabError::Io { what: p.display().to_string(), source: std::io::Error::other("not UTF-8 text") })?
        }
        None => config_text(o.workers),
    };
    let cfg = dir.join("lab.yaml");
    std::fs::write(&cfg, &cfg_text).map_err(LabError::io(cfg.display()))?;
    let queues = match &o.config {
        Some(_) => crate::config::load(&cfg).map(|c| c.dataplane.cores.len().max(1)).unwrap_or(1),
        None => o.workers.max(1),
    };
    down();
    for ns in ["hf-fw", REPLAYER_NS] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // No router solicitations or MLD reports of the replayer's own kernel.
        run_in(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
    }
    veth_to_fw("hf-out1", REPLAYER_NS, "hf-out0", queues)?;
    veth_to_fw("hf-in1", REPLAYER_NS, "hf-in0", queues)?;
    interrupted()?;

    start_appliance(&mut g, exe, &cfg)?;

    let mut args: Vec<String> = vec![
        exe.to_string_lossy().into_owned(),
        "replay".into(),
        "--pcap".into(),
        o.capture.to_string_lossy().into_owned(),
        "--intf1".into(),
        "hf-out1".into(),
        "--intf2".into(),
        "hf-in1".into(),
        "--json".into(),
    ];
    if o.config.is_some() {
        args.extend(["--config".to_string(), cfg.to_string_lossy().into_owned()]);
    } else {
        args.extend(["--map-servers".to_string(), SERVER_NET.to_string()]);
    }
    if let Some(v) = &o.verdicts_out {
        args.extend(["--verdicts-out".to_string(), v.to_string_lossy().into_owned()]);
    }
    args.extend(o.replay_args.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut child = in_ns(REPLAYER_NS, &argv).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(LabError::io("running the replayer"))?;
    // Read its output on threads (a long run's timeline fills a pipe), while the
    // appliance's status is read once a second for the picture.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut samples: Vec<(f64, Value)> = Vec::new();
    let mut next = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(LabError::io("waiting for the replayer"))? {
            break st;
        }
        if o.report.is_some() && Instant::now() >= next && samples.len() < 86_400 {
            if let Ok(out) = in_ns("hf-fw", &[&exe.to_string_lossy(), "status", "--json"]).output()
                && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            {
                samples.push((t0.elapsed().as_secs_f64(), v));
            }
            next += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // And once at the end, so that a run shorter than a second is drawn too.
    if o.report.is_some()
        && let Ok(out) = in_ns("hf-fw", &[&exe.to_string_lossy(), "status", "--json"]).output()
        && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
    {
        samples.push((t0.elapsed().as_secs_f64(), v));
    }
    let out_stdout = stdout.join().unwrap_or_default();
    let out_stderr = stderr.join().unwrap_or_default();
    let replay: Value = serde_json::from_slice(&out_stdout)
        .map_err(|_| LabError::Command { command: "holdfast replay".into(), stderr: String::from_utf8_lossy(&out_stderr).trim().to_string() })?;
    if let Some(path) = &o.report {
        let timeline: Vec<(f64, u64, u64, u64)> = replay["timeline"]
            .as_array()
            .map(|a| {
                a.iter().map(|r| (r[0].as_f64().unwrap_or(0.0), r[1].as_u64().unwrap_or(0), r[2].as_u64().unwrap_or(0), r[3].as_u64().unwrap_or(0))).collect()
            })
            .unwrap_or_default();
        let panels = crate::replay::live::timeline_panels(&timeline, &samples);
        crate::report::timeline(path, &format!("holdfast lab --replay {}", o.capture.display()), &panels).map_err(LabError::io("the report"))?;
    }
    // A capture that ends early still replayed what came before; say so.
    let replay_note = (!status.success()).then(|| String::from_utf8_lossy(&out_stderr).trim().to_string());

    let report = |appliance: Value| {
        let t = &appliance["totals"];
        let drops = appliance_drops(t);
        let counted: u64 = drops.as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let not_out = replay["emerged"]["dropped"].as_u64().unwrap_or(0);
        json!({
            "replay": replay,
            "replay_note": replay_note,
            "appliance": appliance,
            "appliance_drops": drops,
            // Frames that did not come out beyond what the appliance counted (0 when
            // every loss is explained; the replayer's own receive losses are in
            // replay.devices[*].rx_dropped / rx_ring_full).
            "unexplained": not_out.saturating_sub(counted),
            "workers": queues,
            "elapsed_s": started.elapsed().as_secs_f64(),
        })
    };
    if o.keep {
        let v = report(Value::Null);
        std::mem::forget(g);
        return Ok(v);
    }
    let appliance = super::stop_appliance(g.children.pop().expect("appliance"), &g.dir)?;
    drop(g);
    let left = down();
    let mut v = report(appliance);
    v["leftovers"] = json!(!left.is_empty());
    Ok(v)
}

/// The report for people: the replayer's summary, then the appliance's side.
pub fn human(v: &Value) -> String {
    let r = &v["replay"];
    let t = &v["appliance"]["totals"];
    let d = &v["appliance_drops"];
    format!(
        "holdfast lab --replay: {} through Holdfast ({} worker(s)); the replayer on both far ends (hf-rp)\n\
         \x20 sent       {} frames ({} bytes) in {:.2} s: {:.0} pps, {:.2} Mbps; {} flows; order {}; rate {}\n\
         \x20 came out   {} forwarded, {} not (late {}, unmatched {})\n\
         \x20 appliance  passed {}, dropped {}: {}\n\
         \x20 its losses pipeline {}, RX rings {}, SYNs shed {}, forwarding {}, TX {}; unexplained {}\n\
         \x20 teardown   {} ({:.1} s in all)",
        r["source"].as_str().unwrap_or("?"),
        v["workers"],
        r["actual"]["packets"],
        r["actual"]["bytes"],
        r["actual"]["seconds"].as_f64().unwrap_or(0.0),
        r["rated"]["pps"].as_f64().unwrap_or(0.0),
        r["rated"]["mbps"].as_f64().unwrap_or(0.0),
        r["flows"]["flows"],
        r["order"]["mode"].as_str().unwrap_or("?"),
        r["rate"].as_str().unwrap_or("?"),
        r["emerged"]["forwarded"],
        r["emerged"]["dropped"],
        r["emerged"]["late"],
        r["emerged"]["unmatched"],
        t["passed"],
        t["dropped"],
        t["drops"],
        d["pipeline"],
        d["rx_rings"],
        d["syn_shed"],
        d["forwarding"],
        d["tx_lost"],
        v["unexplained"],
        if v["leftovers"] == json!(false) { "namespaces removed" } else { "LEFTOVERS: run `holdfast lab down`" },
        v["elapsed_s"].as_f64().unwrap_or(0.0)
    )
}
