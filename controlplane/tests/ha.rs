//! Failover without losing a connection (root; the lab's tools): two appliances on
//! parallel paths between the client and the servers — each side a bridge whose port
//! toward the standby is down until the failover, as a router or VRRP would move the
//! traffic — syncing over their own veth. A long download runs through the active;
//! the active is SIGKILLed and the traffic moved; the standby takes over by itself
//! when the active falls silent, and the download completes byte-identical with no
//! frame of it dropped as `reply_to_*`, `midstream_no_state` or `out_of_window`.

#[allow(dead_code, unused_macros)]
#[macro_use]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_controlplane::lab;
use serde_json::Value;

struct Down(std::path::PathBuf, Vec<Child>);
impl Drop for Down {
    fn drop(&mut self) {
        for c in &mut self.1 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", "hf-fwb"]).stderr(Stdio::null()).status();
        lab::down();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    assert!(out.status.success(), "in {ns}: {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn veth(a: &str, ns_a: &str, b: &str, ns_b: &str) {
    let ok = Command::new("ip")
        .args([
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
        .status()
        .unwrap()
        .success();
    assert!(ok, "veth {a} - {b}");
}

fn appliance(ns: &str, dir: &std::path::Path, name: &str, text: &str) -> Child {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, text).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    let c = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_holdfast"), "run", "--quiet", "--json", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !Command::new("ip").args(["netns", "exec", ns, env!("CARGO_BIN_EXE_holdfast"), "status", "--json"]).output().unwrap().status.success() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name} did not start: {}",
            std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

#[test]
fn a_download_survives_the_failover_to_the_standby() {
    if !common::lab_can_run() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hf-ha-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let mut g = Down(dir.clone(), vec![]);
    lab::down();
    let _ = Command::new("ip").args(["netns", "del", "hf-fwb"]).stderr(Stdio::null()).status();
    for ns in ["hf-out", "hf-in", "hf-fw", "hf-fwb"] {
        assert!(Command::new("ip").args(["netns", "add", ns]).status().unwrap().success());
        sh(ns, "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    }
    veth("hf-out1", "hf-out", "hf-out0", "hf-fw");
    veth("hf-in0", "hf-fw", "hf-in1", "hf-in");
    veth("hf-ob1", "hf-out", "hf-ob0", "hf-fwb");
    veth("hf-ib0", "hf-fwb", "hf-ib1", "hf-in");
    veth("hf-sync0", "hf-fw", "hf-sync1", "hf-fwb");
    sh("hf-fw", "for i in hf-out0 hf-in0 hf-sync0; do ip link set $i up; done && ip addr add 192.168.79.2/24 dev hf-sync0");
    sh("hf-fwb", "for i in hf-ob0 hf-ib0 hf-sync1; do ip link set $i up; done && ip addr add 192.168.79.1/24 dev hf-sync1");
    // Each side a bridge over both paths; the standby's port stays down until failover.
    for (ns, a, b, addr) in [("hf-out", "hf-out1", "hf-ob1", "10.0.1.1/16"), ("hf-in", "hf-in1", "hf-ib1", "10.0.2.1/16")] {
        sh(
            ns,
            &format!(
                "ip link add br0 type bridge && ip link set {a} master br0 && ip link set {b} master br0 && ip addr add {addr} dev br0 \
                 && ethtool -K br0 tx off >/dev/null && ethtool -K {a} tx off >/dev/null && ethtool -K {b} tx off >/dev/null \
                 && ip link set {a} up && ip link set br0 up"
            ),
        );
    }
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.join("www/big.bin"), &big).unwrap();
    let web = Command::new("ip")
        .args(["netns", "exec", "hf-in", "python3", "-m", "http.server", "80", "--bind", "10.0.2.1", "--directory"])
        .arg(dir.join("www"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    g.1.push(web);
    let sync = |listen: &str, peer: &str, role: &str| {
        format!("\nsync:\n  listen: {listen}:3780\n  peer: {peer}:3780\n  mode: ftfw\n  role: {role}\n  interval: 200ms\n  dead_interval: 1s\n")
    };
    let base = lab::config_text(1).replace("denials: denials.log", "denials: off");
    let mut active = appliance("hf-fw", &dir, "active", &(base.clone() + &sync("192.168.79.2", "192.168.79.1", "active")));
    let standby_cfg =
        base.replace("hf-out0", "hf-ob0").replace("hf-in0", "hf-ib0").replace("cores: [1]", "cores: [0]") + &sync("192.168.79.1", "192.168.79.2", "standby");
    let standby = appliance("hf-fwb", &dir, "standby", &standby_cfg);
    let t = Instant::now();
    while !Command::new("ip")
        .args(["netns", "exec", "hf-out", "curl", "-sf", "-o", "/dev/null", "--max-time", "2", "http://10.0.2.1/"])
        .status()
        .unwrap()
        .success()
    {
        assert!(t.elapsed() < Duration::from_secs(10), "HTTP through the active");
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = dir.join("got.bin");
    let download = Command::new("ip")
        .args(["netns", "exec", "hf-out", "curl", "-sS", "--limit-rate", "1500k", "--max-time", "90", "-o"])
        .arg(&got)
        .arg("http://10.0.2.1/big.bin")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // The active dies; the traffic moves to the standby's path.
    active.kill().unwrap();
    active.wait().unwrap();
    sh("hf-out", "ip link set hf-out1 down && ip link set hf-ob1 up");
    sh("hf-in", "ip link set hf-in1 down && ip link set hf-ib1 up");
    let out = download.wait_with_output().unwrap();
    assert!(out.status.success(), "the download failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&got).unwrap() == big, "the download is not byte-identical");

    let status: Value = serde_json::from_slice(
        &Command::new("ip").args(["netns", "exec", "hf-fwb", env!("CARGO_BIN_EXE_holdfast"), "status", "--json"]).output().unwrap().stdout,
    )
    .unwrap();
    assert!(Command::new("kill").args(["-TERM", &standby.id().to_string()]).status().unwrap().success());
    let fin = standby.wait_with_output().unwrap();
    let fin: Value = serde_json::from_slice(&fin.stdout).unwrap();
    let err = std::fs::read_to_string(dir.join("standby.err")).unwrap_or_default();
    eprintln!(
        "standby: drops {}, forwarding drops {}, tx {}\nits sync: {}\nits log:\n{err}",
        fin["totals"]["drops"], fin["totals"]["forward_drops"], fin["totals"]["tx"], status["sync"]
    );
    assert!(err.contains("takeover"), "the standby took over by itself: {err}");
    assert!(fin["sync"]["takeover"]["adopted"].as_u64().unwrap_or(0) >= 1, "{}", fin["sync"]);
    let to_client = fin["totals"]["tx"]["outside"].as_u64().unwrap_or(0);
    assert!(to_client > 1000, "the rest of the download went through the standby: {to_client} frames");
    let d = &fin["totals"]["drops"];
    for k in ["reply_to_evicted", "reply_to_expired", "reply_to_closed", "midstream_no_state", "out_of_window"] {
        assert_eq!(d[k].as_u64().unwrap_or(0), 0, "the standby dropped {k}: {d}");
    }
}
