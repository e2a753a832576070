//! Captures replayed on the wire through the running appliance (`holdfast lab
//! --replay`: the replayer on both far ends of the appliance's veths), compared with
//! `holdfast replay --offline` under the same config. Root only; CI runs as root.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// The lab's namespace names are fixed: one lab at a time.
static LAB: Mutex<()> = Mutex::new(());

fn holdfast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
}

struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = holdfast().args(["lab", "down"]).output();
    }
}

/// A test's hold on the lab: one at a time, removed when done (before the next may
/// start), with a scratch directory and the web farm's config.
struct Lab {
    _down: Down,
    _lock: std::sync::MutexGuard<'static, ()>,
    d: PathBuf,
    cfg: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.d);
    }
}

fn lab() -> Lab {
    let lock = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let d = dir();
    let cfg = config(&d);
    Lab { _down: Down, _lock: lock, d, cfg }
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("hf-replay-live-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/webfarm-small.pcap")
}

/// The web farm's policy (configs/webfarm.yaml, which names the lab's interfaces) with
/// one adaptive worker, as the lab runs it.
fn config(d: &Path) -> PathBuf {
    let p = d.join("webfarm-lab.yaml");
    let text = format!("{}\nworkers:\n  cores: [1]\n  idle: adaptive\n  umem_frames: 8192\n  ring_size: 2048\n", holdfast_controlplane::DEFAULT_CONFIG);
    std::fs::write(&p, text).unwrap();
    p
}

/// A capture with everything the web farm generator makes: connections, a SYN flood,
/// a port scan and stray ACKs.
fn generated(d: &Path) -> PathBuf {
    let p = d.join("farm.pcap");
    let out = holdfast()
        .args(["gen", "webfarm", "--servers", "8", "--clients", "50", "--connections", "300", "--duration", "5s", "--idle", "0s..1s"])
        .args(["--syn-flood", "200", "--scan", "--midstream", "100", "--seed", "7", "--out"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p
}

fn lab_replay(capture: &Path, cfg: &Path, verdicts: Option<&Path>, flags: &[&str]) -> Value {
    let mut c = holdfast();
    // A frame that takes longer than this to come out counts as dropped by the device:
    // generous, so that a loaded machine does not turn a slow frame into a drop.
    c.args(["lab", "--json", "--order-timeout", "1s", "--replay"]).arg(capture).arg("--config").arg(cfg).args(flags);
    if let Some(v) = verdicts {
        c.arg("--verdicts-out").arg(v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "lab --replay failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn offline(capture: &Path, cfg: &Path, verdicts: &Path) -> Value {
    let out = holdfast()
        .args(["replay", "--offline", "--json", "--pcap"])
        .arg(capture)
        .arg("--config")
        .arg(cfg)
        .arg("--verdicts-out")
        .arg(verdicts)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Frame index -> pass/drop.
fn verdicts(p: &Path) -> BTreeMap<u64, String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["i"].as_u64().unwrap(), v["verdict"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn inline_verdicts_equal_offline_frame_for_frame() {
    need_lab!();
    let Lab { ref d, ref cfg, .. } = lab();
    for capture in [shipped(), generated(d)] {
        let (lv, ov) = (d.join("live.jsonl"), d.join("offline.jsonl"));
        let v = lab_replay(&capture, cfg, Some(&lv), &["--pps", "20000"]);
        let o = offline(&capture, cfg, &ov);
        let (live, off) = (verdicts(&lv), verdicts(&ov));
        assert_eq!(live.len(), off.len(), "{}: every frame has a verdict", capture.display());
        let differ: Vec<_> = off.iter().filter(|(i, v)| live.get(i) != Some(v)).take(10).collect();
        assert!(differ.is_empty(), "{}: inline differs from offline at {differ:?}; lab: {v}", capture.display());
        assert!(o["dropped"].as_u64().unwrap() > 0, "the comparison includes drops");
        assert_eq!(v["appliance"]["totals"]["dropped"], o["dropped"], "the appliance counted what offline drops");
        assert_eq!(v["appliance"]["totals"]["drops"], o["drops"], "for the same reasons");
        assert_eq!(v["unexplained"], 0, "{v}");
        assert_eq!(v["replay"]["emerged"]["unmatched"], 0);
    }
}

#[test]
fn three_loops_with_unique_ip_make_three_times_the_flows() {
    need_lab!();
    let Lab { ref d, ref cfg, .. } = lab();
    let o = offline(&shipped(), cfg, &d.join("offline.jsonl"));
    let svg = d.join("loops.svg");
    let v = lab_replay(&shipped(), cfg, None, &["--pps", "20000", "--loop", "3", "--unique-ip", "--report", svg.to_str().unwrap()]);
    let pic = std::fs::read_to_string(&svg).unwrap();
    assert!(pic.contains("replayer: frames per second") && pic.contains("appliance: table fill by admission class"), "the report draws both sides");
    let once = o["flows_created"].as_u64().unwrap();
    assert!(once > 1000);
    assert_eq!(v["appliance"]["totals"]["flows_created"].as_u64(), Some(3 * once), "{v}");
    assert_eq!(v["replay"]["loops"], 3);
    assert_eq!(v["replay"]["actual"]["packets"].as_u64(), Some(3 * o["packets"].as_u64().unwrap()));
    // Each loop drops what one pass drops: nothing else was lost.
    assert_eq!(v["appliance"]["totals"]["dropped"].as_u64(), Some(3 * o["dropped"].as_u64().unwrap()), "{v}");
    assert_eq!(v["unexplained"], 0);
}

/// At the same rate, `--order flow` keeps every SYN ahead of its reply (the appliance
/// drops exactly what the offline replay drops), while `--order none` lets replies
/// overtake their requests inside the device (it judges its two interfaces' rings in
/// turn), and the appliance drops them.
#[test]
fn flow_order_keeps_requests_ahead_of_replies_where_no_order_does_not() {
    need_lab!();
    let Lab { ref d, ref cfg, .. } = lab();
    let o = offline(&shipped(), cfg, &d.join("offline.jsonl"));
    let flow = lab_replay(&shipped(), cfg, None, &["--pps", "20000", "--order", "flow"]);
    assert_eq!(flow["appliance"]["totals"]["drops"], o["drops"], "{flow}");
    assert!(flow["replay"]["order"]["held"].as_u64().unwrap() > 0, "replies waited for their requests");
    let none = lab_replay(&shipped(), cfg, None, &["--pps", "20000", "--order", "none"]);
    let dropped = |v: &Value| v["appliance"]["totals"]["dropped"].as_u64().unwrap();
    assert!(
        dropped(&none) > dropped(&flow),
        "without flow order, replies reach the appliance before their requests: {} vs {}",
        none["appliance"]["totals"]["drops"],
        flow["appliance"]["totals"]["drops"]
    );
    assert_eq!(none["replay"]["order"]["held"], 0);
    assert_eq!(none["unexplained"], 0, "every frame that did not come out was counted by the appliance");
}

/// As fast as the replayer goes, the appliance's rings may overflow and the verdicts
/// then differ from offline — but every frame that did not come out is one the
/// appliance counted: judged and dropped, or lost at a ring, never silently. (The order
/// timeout is a second: on a loaded machine a frame may take longer than 100 ms to come
/// out, and would be counted as dropped by the device, then as late.)
#[test]
fn at_top_speed_every_frame_that_did_not_come_out_was_counted() {
    need_lab!();
    let Lab { ref cfg, .. } = lab();
    let v = lab_replay(&shipped(), cfg, None, &["--topspeed", "--loop", "5", "--unique-ip"]);
    let n = |x: &Value| x.as_u64().unwrap();
    let c = &v["appliance_drops"];
    let counted = n(&c["pipeline"]) + n(&c["rx_rings"]) + n(&c["syn_shed"]) + n(&c["forwarding"]) + n(&c["tx_lost"]);
    assert_eq!(n(&v["replay"]["emerged"]["dropped"]), counted, "{v}");
    for dev in v["replay"]["devices"].as_array().unwrap() {
        assert_eq!((n(&dev["rx_dropped"]), n(&dev["rx_ring_full"])), (0, 0), "the replayer lost nothing itself: {dev}");
    }
    assert_eq!(n(&v["replay"]["emerged"]["forwarded"]) + counted, n(&v["replay"]["actual"]["packets"]));
}

/// `--driver packet` receives where it is told: a "device" of two plain wires (veth
/// pairs), frames sent on one end of each coming out of the other (`--rx1`, `--rx2`),
/// so every frame is forwarded, unchanged, on its own side.
#[test]
fn the_packet_driver_receives_on_the_far_ends_it_is_given() {
    need_lab!();
    let Lab { ref d, .. } = lab();
    let _ = holdfast().args(["lab", "down"]).output();
    let ns = holdfast_controlplane::lab::replay::REPLAYER_NS;
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    ip(&["netns", "add", ns]);
    common::sh(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    for (a, b) in [("hf-out1", "hf-out0"), ("hf-in1", "hf-in0")] {
        ip(&["-n", ns, "link", "add", a, "type", "veth", "peer", "name", b]);
        ip(&["-n", ns, "link", "set", a, "up"]);
        ip(&["-n", ns, "link", "set", b, "up"]);
    }
    let sides = d.join("sides");
    std::fs::write(&sides, "10.0.2.0/24 server\n0.0.0.0/0 client\n").unwrap();
    let out = common::hf(
        ns,
        &[
            "replay",
            "--json",
            "--pcap",
            shipped().to_str().unwrap(),
            "--side-map",
            sides.to_str().unwrap(),
            "--pps",
            "20000",
            "--driver",
            "packet",
            "--intf1",
            "hf-out1",
            "--intf2",
            "hf-in1",
            "--rx1",
            "hf-out0",
            "--rx2",
            "hf-in0",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["emerged"]["forwarded"], v["actual"]["packets"], "{v}");
    assert_eq!(v["emerged"]["unmatched"], 0);
    assert_eq!(v["devices"][1]["received"], v["devices"][0]["successful"], "what left on --intf1 came out on --rx1: {v}");
    // AF_XDP receives on the interfaces it sends on: --rx1 is refused by name.
    let out = common::hf(ns, &["replay", "--pcap", shipped().to_str().unwrap(), "--intf1", "hf-out1", "--intf2", "hf-in1", "--rx1", "hf-out0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rx1/--rx2 need --driver packet"));
}
