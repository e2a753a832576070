//! Captures people take on servers replay like Ethernet ones: the same web-farm traffic
//! as a Linux cooked capture (SLL, SLL2: `tcpdump -i any`), raw IP and BSD loopback gets
//! the same verdict for every frame. A cooked capture also says which way a packet
//! went, which gives the zone when the config names no inside networks.

use holdfast_controlplane::capture::{self, Writer, link};
use holdfast_controlplane::config;
use holdfast_controlplane::replay::{self, Options};
use holdfast_controlplane::traffic::{self, WebFarm};

fn replay(cfg: &config::Config, pcap: &[u8], name: &str) -> (String, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("hf-link-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("v.jsonl");
    let opts = Options { workers: 1, json: true, flows_out: None, verdicts_out: Some(out.clone()) };
    let r = replay::run(cfg, name, pcap, 7, &opts).unwrap();
    let v = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (v, r.to_json())
}

#[test]
fn every_link_type_that_carries_ip_replays_like_ethernet() {
    let cfg = config::parse(holdfast_controlplane::DEFAULT_CONFIG, "webfarm.yaml").unwrap();
    let ev = traffic::webfarm(&WebFarm { connections: 150, syn_flood: 5.0, scan: true, midstream: 20, ..WebFarm::default() });
    let (base, jb) = replay(&cfg, &traffic::to_pcap(&ev), "ethernet");
    assert!(jb["packets"].as_u64().unwrap() > 1000);
    // Inside (the servers, 10.0.2.0/24) sent what a capture on their side calls outgoing.
    let inside = |f: &[u8]| f.len() > 30 && f[26] == 10 && f[27] == 0 && f[28] == 2;
    for lt in [link::LINUX_SLL, link::LINUX_SLL2, link::RAW, link::NULL, link::LOOP] {
        let mut w = Writer::with_link_type(Vec::new(), false, lt).unwrap();
        for (t, f) in &ev {
            w.write(*t, &capture::encapsulate(lt, f, inside(f))).unwrap();
        }
        let pcap = w.finish().unwrap();
        let (v, j) = replay(&cfg, &pcap, &lt.to_string());
        assert_eq!(j["packets"], jb["packets"], "{lt}: every frame read");
        assert_eq!(j["capture"]["skipped"], 0, "{lt}");
        assert!(v == base, "{lt}: every frame gets the Ethernet capture's verdict");
        assert!(j["capture"]["link_types"][0].as_str().unwrap().starts_with(&lt.to_string()), "{}", j["capture"]);
    }
    // Without inside networks in the config, a cooked capture's direction decides.
    let bare = config::parse(&holdfast_controlplane::DEFAULT_CONFIG.replace("networks: [10.0.2.0/24]", ""), "bare.yaml").unwrap();
    assert!(bare.inside.is_empty(), "the test removed the networks");
    let mut w = Writer::with_link_type(Vec::new(), false, link::LINUX_SLL).unwrap();
    for (t, f) in &ev {
        w.write(*t, &capture::encapsulate(link::LINUX_SLL, f, inside(f))).unwrap();
    }
    let (v, _) = replay(&bare, &w.finish().unwrap(), "sll-direction");
    assert!(v == base, "the packet type gives the same zones as the networks");
}

/// A real `tcpdump -i any` capture (root, tcpdump installed): ping over loopback.
#[test]
fn a_tcpdump_any_capture_replays() {
    use holdfast_dataplane::host::{self, Tool};
    if !holdfast_dataplane::sys::is_root() {
        host::report_skip("needs root to capture on every interface (CI runs it as root)");
        return;
    }
    if !host::have_or_report(&[Tool { command: "tcpdump", package: "tcpdump" }, Tool { command: "ping", package: "iputils-ping" }]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hf-tcpdump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, extra) in [("sll", vec!["-y", "LINUX_SLL"]), ("sll2", vec!["-y", "LINUX_SLL2"])] {
        let file = dir.join(format!("{name}.pcap"));
        let mut td = std::process::Command::new("tcpdump")
            .args(["-i", "any", "-n", "-U", "-Z", "root", "-w"])
            .arg(&file)
            .args(&extra)
            .args(["icmp and host 127.0.0.1"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // tcpdump writes the file's header once it listens.
        let t = std::time::Instant::now();
        while std::fs::metadata(&file).map_or(0, |m| m.len()) < 24 && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = std::process::Command::new("ping").args(["-c", "3", "-i", "0.2", "127.0.0.1"]).output();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = std::process::Command::new("kill").args(["-INT", &td.id().to_string()]).status();
        let _ = td.wait();
        let buf = std::fs::read(&file).unwrap();
        let c = capture::parse(&buf);
        assert!(c.error.is_none(), "{name}: {:?}", c.error);
        assert!(c.records.len() >= 6, "{name}: {} packets read, skipped {:?}", c.records.len(), c.skipped);
        let want = if name == "sll" { link::LINUX_SLL } else { link::LINUX_SLL2 };
        assert!(c.link_types.contains(&want), "{name}: {:?}", c.link_types);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
