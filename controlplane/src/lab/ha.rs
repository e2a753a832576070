//! `holdfast lab --ha`: failover without losing a connection. Two appliances on
//! parallel paths between the client and the servers — on each side a bridge whose
//! port toward the standby stays down until the failover, as a router or VRRP moves
//! traffic — syncing over their own veth (conntrackd's protocol, FTFW). A long
//! download runs through the active; the active is SIGKILLed and the bridges switch;
//! the standby takes over by itself once the active is silent for `dead_interval`,
//! and the report says whether the download completed byte-identical and what the
//! standby dropped.
//!
//! ```text
//!            ┌─ hf-out1 ══ hf-out0  hf-fw  (active)   hf-in0 ══ hf-in1 ─┐
//!  hf-out br0┤                       ║ sync 192.168.79.0/24 ║             ├br0 hf-in
//!            └─ hf-ob1  ══ hf-ob0   hf-fwb (standby)  hf-ib0 ══ hf-ib1 ─┘
//! ```

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Guard, LabError, down, in_ns, interrupted, ip, run_in};

/// The standby's namespace, besides the lab's three.
pub const STANDBY_NS: &str = "hf-fwb";
/// The download: 24 MiB at 1 MB/s, about 24 s; the failover 3 s in.
const SIZE: u32 = 24 << 20;
const RATE: &str = "1000k";
const FAIL_AFTER: Duration = Duration::from_secs(3);

fn sh(ns: &str, cmd: &str) -> Result<String, LabError> {
    run_in(ns, &["sh", "-c", cmd])
}

fn veth(a: &str, ns_a: &str, b: &str, ns_b: &str) -> Result<(), LabError> {
    ip(&[
        "link",
        "add",
        a,
        "netns",
        ns_a,
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b,
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
    ])
}

fn appliance(exe: &Path, ns: &str, dir: &Path, name: &str, text: &str) -> Result<Child, LabError> {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, text).map_err(LabError::io(cfg.display()))?;
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).map_err(LabError::io(dir.display()))?;
    let mut c = in_ns(ns, &[&exe.to_string_lossy(), "run", "--quiet", "--json", "--config", &cfg.to_string_lossy()])
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(LabError::io("starting an appliance"))?;
    let t = Instant::now();
    while !in_ns(ns, &[&exe.to_string_lossy(), "status", "--json"]).output().is_ok_and(|o| o.status.success()) {
        interrupted()?;
        if let Ok(Some(status)) = c.try_wait() {
            return Err(LabError::ApplianceStopped { status, stderr: std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default() });
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err(LabError::Timeout("an appliance did not start within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(c)
}

/// What the client's bridge has received over `port` (one path), as the kernel counts.
fn received_on(port: &str) -> u64 {
    run_in("hf-out", &["ip", "-j", "-s", "link", "show", "dev", port])
        .ok()
        .and_then(|o| serde_json::from_str::<Value>(&o).ok())
        .and_then(|v| v[0]["stats64"]["rx"]["bytes"].as_u64())
        .unwrap_or(0)
}

/// Runs the failover end to end with the `holdfast` executable `exe`.
pub fn run(exe: &Path, keep: bool) -> Result<Value, LabError> {
    let dir = super::private_dir("holdfast-lab-ha")?;
    std::fs::create_dir(dir.join("www")).map_err(LabError::io(dir.display()))?;
    let mut g = Guard { children: vec![], keep, dir: dir.clone() };
    down();
    for ns in ["hf-out", "hf-in", "hf-fw", STANDBY_NS] {
        ip(&["netns", "add", ns])?;
        sh(ns, "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
    }
    veth("hf-out1", "hf-out", "hf-out0", "hf-fw")?;
    veth("hf-in0", "hf-fw", "hf-in1", "hf-in")?;
    veth("hf-ob1", "hf-out", "hf-ob0", STANDBY_NS)?;
    veth("hf-ib0", STANDBY_NS, "hf-ib1", "hf-in")?;
    veth("hf-sync0", "hf-fw", "hf-sync1", STANDBY_NS)?;
    sh("hf-fw", "for i in hf-out0 hf-in0 hf-sync0; do ip link set $i up; done && ip addr add 192.168.79.2/24 dev hf-sync0")?;
    sh(STANDBY_NS, "for i in hf-ob0 hf-ib0 hf-sync1; do ip link set $i up; done && ip addr add 192.168.79.1/24 dev hf-sync1")?;
    for (ns, a, b, addr) in [("hf-out", "hf-out1", "hf-ob1", "10.0.1.1/16"), ("hf-in", "hf-in1", "hf-ib1", "10.0.2.1/16")] {
        sh(
            ns,
            &format!(
                "ip link add br0 type bridge && ip link set {a} master br0 && ip link set {b} master br0 && ip addr add {addr} dev br0 \
                 && ethtool -K br0 tx off >/dev/null && ethtool -K {a} tx off >/dev/null && ethtool -K {b} tx off >/dev/null \
                 && ip link set {a} up && ip link set br0 up"
            ),
        )
        .map_err(|e| e.needs("ethtool"))?;
    }
    let big: Vec<u8> = (0..SIZE).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.join("www/big.bin"), &big).map_err(LabError::io(dir.display()))?;
    let web = in_ns("hf-in", &["python3", "-m", "http.server", "80", "--bind", "10.0.2.1", "--directory", &dir.join("www").to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LabError::Spawn { tool: "python3".into(), source }.needs("python3"))?;
    g.children.push(web);
    let sync = |listen: &str, peer: &str, role: &str| {
        format!("\nsync:\n  listen: {listen}:3780\n  peer: {peer}:3780\n  mode: ftfw\n  role: {role}\n  interval: 200ms\n  dead_interval: 1s\n")
    };
    let base = super::config_text(1).replace("denials: denials.log", "denials: off");
    let active = appliance(exe, "hf-fw", &dir, "active", &(base.clone() + &sync("192.168.79.2", "192.168.79.1", "active")))?;
    g.children.push(active);
    let standby_cfg =
        base.replace("hf-out0", "hf-ob0").replace("hf-in0", "hf-ib0").replace("cores: [1]", "cores: [0]") + &sync("192.168.79.1", "192.168.79.2", "standby");
    let standby = appliance(exe, STANDBY_NS, &dir, "standby", &standby_cfg)?;
    let t = Instant::now();
    while run_in("hf-out", &["curl", "-sf", "-o", "/dev/null", "--max-time", "2", "http://10.0.2.1/"]).is_err() {
        interrupted()?;
        if t.elapsed() > Duration::from_secs(10) {
            return Err(LabError::Timeout("no HTTP through the active within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = dir.join("got.bin");
    let download = in_ns("hf-out", &["curl", "-sS", "--limit-rate", RATE, "--max-time", "90", "-o", &got.to_string_lossy(), "http://10.0.2.1/big.bin"])
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn { tool: "curl".into(), source }.needs("curl"))?;
    let started = Instant::now();
    std::thread::sleep(FAIL_AFTER);

    // The active dies (no chance to say goodbye); the traffic moves to the standby.
    let failed_at = Instant::now();
    if let Some(a) = g.children.last_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    let killed_s = started.elapsed().as_secs_f64();
    let before = (received_on("hf-out1"), received_on("hf-ob1"));
    sh("hf-out", "ip link set hf-out1 down && ip link set hf-ob1 up")?;
    sh("hf-in", "ip link set hf-in1 down && ip link set hf-ib1 up")?;
    let switched_s = started.elapsed().as_secs_f64();
    let out = download.wait_with_output().map_err(LabError::io("the download"))?;
    let (via_active, via_standby) = (received_on("hf-out1"), received_on("hf-ob1"));
    let download_s = failed_at.elapsed().as_secs_f64() + FAIL_AFTER.as_secs_f64();
    let identical = out.status.success() && std::fs::read(&got).is_ok_and(|b| b == big);
    let _ = in_ns(STANDBY_NS, &["kill", "-TERM", &standby.id().to_string()]).status();
    let fin = standby.wait_with_output().map_err(LabError::io("stopping the standby"))?;
    let fin: Value = serde_json::from_slice(&fin.stdout).unwrap_or(Value::Null);
    let log = std::fs::read_to_string(dir.join("standby.err")).unwrap_or_default();
    let d = &fin["totals"]["drops"];
    let forbidden: u64 =
        ["reply_to_evicted", "reply_to_expired", "reply_to_closed", "midstream_no_state", "out_of_window"].iter().map(|k| d[k].as_u64().unwrap_or(0)).sum();
    Ok(json!({
        "download_bytes": SIZE,
        "download_ok": out.status.success(),
        "download_error": String::from_utf8_lossy(&out.stderr).trim(),
        "identical": identical,
        "download_s": download_s,
        "took_over_by_itself": log.contains("the peer fell silent"),
        "takeover": fin["sync"]["takeover"],
        "standby_drops": d,
        "standby_forwarding_drops": fin["totals"]["forward_drops"],
        "standby_tx": fin["totals"]["tx"],
        "client_bytes_via_active": via_active,
        "client_bytes_via_standby": via_standby,
        "client_bytes_before_failover": before.0 + before.1,
        "killed_after_s": killed_s,
        "switched_after_s": switched_s,
        "standby_rx": fin["totals"]["rx"],
        "standby_xdp": fin["totals"]["xdp"],
        "standby_passed": fin["totals"]["passed"],
        "forbidden_drops": forbidden,
        "standby_sync": fin["sync"],
    }))
}

/// For people.
pub fn human(v: &Value) -> String {
    format!(
        "holdfast lab --ha: a {} MiB download through the active, which is SIGKILLed {} s in\n  download: {} ({})\n  standby: took over by itself: {}; {} flow(s) adopted in {:.3} s; forwarded {} frames to the client\n  standby drops: {} (forwarding: syncing {}); reply_to_* / midstream_no_state / out_of_window: {}\n",
        v["download_bytes"].as_u64().unwrap_or(0) >> 20,
        FAIL_AFTER.as_secs(),
        if v["identical"] == true { "complete and byte-identical" } else { "FAILED or not identical" },
        v["download_error"].as_str().filter(|s| !s.is_empty()).unwrap_or("no error"),
        v["took_over_by_itself"],
        v["takeover"]["adopted"],
        v["takeover"]["seconds"].as_f64().unwrap_or(0.0),
        v["standby_tx"]["outside"],
        v["standby_drops"],
        v["standby_forwarding_drops"]["syncing"],
        v["forbidden_drops"],
    )
}
