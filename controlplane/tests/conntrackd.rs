//! Holdfast's sync messages against the real conntrackd (Debian's conntrackd 1.4.7;
//! root; skipped, naming the package, otherwise). conntrackd runs in a namespace of
//! its own in front of that namespace's kernel conntrack table, linked over a veth to
//! a second namespace where a small UDP helper sends and receives for the test:
//!
//! - Linux → Holdfast: flows created by real traffic in conntrackd's namespace reach
//!   the other end as datagrams that Holdfast's decoder reads with the right tuple,
//!   protocol and state;
//! - Holdfast → Linux: flows encoded by Holdfast land in conntrackd's external cache
//!   (`conntrackd -e`) and, committed (`conntrackd -c`), in the kernel's table.

#[allow(dead_code, unused_macros)]
#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_controlplane::sync::proto::{self, Message, flag, kind};
use holdfast_dataplane::host::{self, Tool};
use holdfast_pipeline::engine::{SyncedFlow, ips};

const NS: [&str; 2] = ["hfs-linux", "hfs-peer"];
const TOOLS: [Tool; 5] = [
    Tool { command: "conntrackd", package: "conntrackd" },
    Tool { command: "conntrack", package: "conntrack" },
    Tool { command: "nft", package: "nftables" },
    Tool { command: "ip", package: "iproute2" },
    Tool { command: "python3", package: "python3" },
];

struct Down(std::path::PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-f", &format!("conntrackd -d -C {}", self.0.join("conntrackd.conf").display())]).status();
        for ns in NS {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use common::{hf, sh};

/// Receives datagrams on 192.168.78.2:3780 (printing them as hex lines) and sends
/// the hex lines it reads on stdin to conntrackd.
const PEER_PY: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.168.78.2", 3780))
def rx():
    while True:
        d, a = s.recvfrom(65535)
        print("rx " + d.hex(), flush=True)
threading.Thread(target=rx, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    s.sendto(bytes.fromhex(line.strip()), ("192.168.78.1", 3780))
"#;

/// conntrackd's configuration: FTFW over unicast UDP from `local` to `peer` on
/// `interface`, its files in `dir`, the sync link's own addresses ignored.
fn conntrackd_conf(local: &str, peer: &str, interface: &str, dir: &std::path::Path) -> String {
    format!(
        "Sync {{\n\tMode FTFW {{\n\t}}\n\tUDP {{\n\t\tIPv4_address {local}\n\t\tIPv4_Destination_Address {peer}\n\t\tPort 3780\n\t\tInterface {interface}\n\t\tChecksum on\n\t}}\n}}\n\
         General {{\n\tHashSize 8192\n\tHashLimit 65536\n\tLogFile {d}/conntrackd.log\n\tLockFile {d}/lock\n\tUNIX {{\n\t\tPath {d}/ctl\n\t}}\n\
         \tNetlinkBufferSize 2097152\n\tNetlinkBufferSizeMaxGrowth 8388608\n\tFilter From Userspace {{\n\t\tAddress Ignore {{\n\
         \t\t\tIPv4_address {local}\n\t\t\tIPv4_address {peer}\n\t\t}}\n\t}}\n}}\n",
        d = dir.display()
    )
}

fn flow(proto_: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> SyncedFlow {
    SyncedFlow {
        v6: false,
        src: u128::from(u32::from_be_bytes(src)),
        dst: u128::from(u32::from_be_bytes(dst)),
        proto: proto_,
        sport,
        dport,
        icmp: None,
        tcp_state: if proto_ == 6 { 3 } else { 0 },
        status: ips::CONFIRMED | ips::SEEN_REPLY | ips::ASSURED,
        timeout_s: 3600,
        wscale: [None, None],
        vlan: 0,
    }
}

#[test]
fn holdfast_and_conntrackd_understand_each_other_both_ways() {
    if !common::root_can_run() || !host::have_or_report(&TOOLS) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _d = Down(dir.clone());
    for ns in NS {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", ns]).status().unwrap().success());
    }
    assert!(
        Command::new("ip")
            .args(["link", "add", "hfs-linux0", "netns", "hfs-linux", "type", "veth", "peer", "name", "hfs-peer0", "netns", "hfs-peer"])
            .status()
            .unwrap()
            .success()
    );
    sh("hfs-linux", "ip addr add 192.168.78.1/24 dev hfs-linux0 && ip link set hfs-linux0 up && ip link set lo up && ip addr add 10.9.0.1/32 dev lo");
    sh("hfs-peer", "ip addr add 192.168.78.2/24 dev hfs-peer0 && ip link set hfs-peer0 up");
    // Conntrack is on in a namespace once a rule uses it.
    sh("hfs-linux", "nft add table inet t && nft add chain inet t c '{ type filter hook output priority 0; }' && nft add rule inet t c ct state new counter");
    let conf = dir.join("conntrackd.conf");
    std::fs::write(&conf, conntrackd_conf("192.168.78.1", "192.168.78.2", "hfs-linux0", &dir)).unwrap();
    let mut peer =
        Command::new("ip").args(["netns", "exec", "hfs-peer", "python3", "-c", PEER_PY]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut tx = peer.stdin.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let out = peer.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines_tx.send(l);
        }
    });
    assert_eq!(lines.recv_timeout(Duration::from_secs(10)).unwrap(), "ready");
    let ctl = format!("conntrackd -C {}", conf.display());
    sh("hfs-linux", &format!("{ctl} -d"));

    // Linux -> Holdfast: a UDP query and a TCP connection on the Linux side.
    std::thread::sleep(Duration::from_millis(500));
    sh("hfs-linux", "python3 -c 'import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b\"q\",(\"10.9.0.1\",5353))'");
    sh(
        "hfs-linux",
        "python3 -c 'import socket; l=socket.socket(); l.bind((\"10.9.0.1\",8080)); l.listen(); c=socket.create_connection((\"10.9.0.1\",8080)); a,_=l.accept(); c.send(b\"x\"); a.recv(1)'",
    );
    let mut flows = Vec::new();
    let mut controls = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10)
        && !(flows.iter().any(|f: &(u8, SyncedFlow)| f.1.proto == 17) && flows.iter().any(|f| f.1.proto == 6) && controls > 0)
    {
        let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) else { continue };
        let Some(hex) = l.strip_prefix("rx ") else { continue };
        let bytes: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        for m in proto::decode(&bytes) {
            match m.unwrap_or_else(|e| panic!("conntrackd sent what Holdfast refuses: {e} in {hex}")) {
                Message::Flow { kind: k, flow, .. } => flows.push((k, flow)),
                Message::Ctl { .. } => controls += 1,
                Message::Expectation { .. } => {}
            }
        }
    }
    eprintln!("from conntrackd: {} flow message(s), {controls} control message(s)", flows.len());
    let udp = flows.iter().find(|(_, f)| f.proto == 17 && f.dport == 5353).expect("the UDP flow arrived");
    assert_eq!((udp.0, udp.1.src, udp.1.dst), (kind::CT_NEW, 0x0a09_0001, 0x0a09_0001));
    assert!(udp.1.timeout_s > 0 && udp.1.timeout_s <= 30, "{:?}", udp.1);
    let tcp: Vec<_> = flows.iter().filter(|(_, f)| f.proto == 6 && f.dport == 8080).collect();
    assert!(!tcp.is_empty(), "the TCP flow arrived: {flows:?}");
    assert!(tcp.iter().any(|(_, f)| f.tcp_state >= 2), "its handshake state was synced: {tcp:?}");
    assert!(controls > 0, "ALIVE / HELLO arrived");

    // Holdfast -> Linux: three flows, as Holdfast's endpoint would send them.
    let mine = [
        flow(6, [198, 51, 100, 7], 40000, [10, 0, 2, 1], 80),
        flow(17, [198, 51, 100, 8], 5353, [10, 0, 2, 53], 53),
        SyncedFlow { icmp: Some((8, 0, 77)), sport: 0, dport: 0, ..flow(1, [198, 51, 100, 9], 0, [10, 0, 2, 2], 0) },
    ];
    let mut d = Vec::new();
    for (i, f) in mine.iter().enumerate() {
        proto::encode(&Message::Flow { kind: kind::CT_NEW, flags: if i == 0 { flag::HELLO } else { 0 }, seq: 1000 + i as u32, flow: *f }, &mut d);
    }
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    writeln!(tx, "{hex}").unwrap();
    let t = Instant::now();
    let mut ext = String::new();
    while t.elapsed() < Duration::from_secs(5) && ext.lines().count() < 3 {
        std::thread::sleep(Duration::from_millis(100));
        ext = sh("hfs-linux", &format!("{ctl} -e"));
    }
    eprintln!("conntrackd -e:\n{ext}");
    assert!(ext.contains("tcp      6 ESTABLISHED src=198.51.100.7 dst=10.0.2.1 sport=40000 dport=80 [ASSURED]"), "{ext}");
    assert!(ext.contains("src=198.51.100.8 dst=10.0.2.53 sport=5353 dport=53"), "{ext}");
    assert!(ext.contains("src=198.51.100.9 dst=10.0.2.2 type=8 code=0 id=77"), "{ext}");
    let stats = sh("hfs-linux", &format!("{ctl} -s"));
    assert!(stats.contains("0 Malformed msgs"), "{stats}");
    sh("hfs-linux", &format!("{ctl} -c"));
    std::thread::sleep(Duration::from_millis(300));
    let kernel = sh("hfs-linux", "conntrack -L 2>/dev/null");
    eprintln!("conntrack -L after the commit:\n{kernel}");
    assert!(kernel.lines().any(|l| l.contains("ESTABLISHED src=198.51.100.7 dst=10.0.2.1 sport=40000 dport=80") && l.contains("[ASSURED]")), "{kernel}");
    assert!(kernel.contains("src=198.51.100.8 dst=10.0.2.53 sport=5353 dport=53"), "{kernel}");
    let _ = peer.kill();
    let _ = peer.wait();
}

struct LabDown(std::path::PathBuf, Vec<std::process::Child>);
impl Drop for LabDown {
    fn drop(&mut self) {
        for c in &mut self.1 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("pkill").args(["-f", &format!("conntrackd -d -C {}", self.0.join("conntrackd.conf").display())]).status();
        let _ = Command::new("ip").args(["netns", "del", "hf-sync"]).stderr(Stdio::null()).status();
        holdfast_controlplane::lab::down();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running appliance's own sync endpoint with conntrackd as its peer: the lab's
/// HTTP flows reach conntrackd's external cache; conntrackd's flows reach Holdfast's
/// (`holdfast flows --external`); a takeover commits them.
#[test]
fn the_appliance_syncs_with_conntrackd_in_the_lab() {
    if !common::lab_can_run() || !host::have_or_report(&TOOLS) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hf-sync-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let mut g = LabDown(dir.clone(), vec![]);
    common::lab_with_sync_peer("hf-sync");
    sh("hf-sync", "ip addr add 10.9.0.1/32 dev lo");
    sh("hf-sync", "nft add table inet t && nft add chain inet t c '{ type filter hook output priority 0; }' && nft add rule inet t c ct state new counter");
    let conf = dir.join("conntrackd.conf");
    std::fs::write(&conf, conntrackd_conf("192.168.79.1", "192.168.79.2", "hf-sync1", &dir)).unwrap();
    let ctl = format!("conntrackd -C {}", conf.display());
    sh("hf-sync", &format!("{ctl} -d"));

    g.1.push(common::web_server(&dir));
    let text = holdfast_controlplane::lab::config_text(1)
        + "\nsync:\n  listen: 192.168.79.2:3780\n  peer: 192.168.79.1:3780\n  interface: hf-sync0\n  mode: ftfw\n  role: active\n  takeover: manual\n  interval: 200ms\n";
    let app = common::appliance("hf-fw", &dir, "hf", &text);
    let hf = |args: &[&str]| hf("hf-fw", args);
    // Holdfast -> conntrackd: HTTP through the appliance.
    let t = Instant::now();
    while !Command::new("ip")
        .args(["netns", "exec", "hf-out", "curl", "-sf", "-o", "/dev/null", "--max-time", "2", "http://10.0.2.1/"])
        .status()
        .unwrap()
        .success()
    {
        assert!(t.elapsed() < Duration::from_secs(10), "HTTP through the appliance");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = Instant::now();
    let mut ext = String::new();
    while t.elapsed() < Duration::from_secs(10) && !ext.contains("dst=10.0.2.1") {
        std::thread::sleep(Duration::from_millis(200));
        ext = sh("hf-sync", &format!("{ctl} -e"));
    }
    eprintln!("conntrackd -e:\n{ext}");
    assert!(ext.lines().any(|l| l.starts_with("tcp") && l.contains("src=10.0.1.1 dst=10.0.2.1") && l.contains("dport=80")), "{ext}");
    // conntrackd -> Holdfast: a flow in conntrackd's kernel.
    sh("hf-sync", "python3 -c 'import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b\"q\",(\"10.9.0.1\",5353))'");
    let t = Instant::now();
    let mut listed = String::new();
    while t.elapsed() < Duration::from_secs(10) && !listed.contains("5353") {
        std::thread::sleep(Duration::from_millis(200));
        listed = String::from_utf8_lossy(&hf(&["flows", "--external", "--json"]).stdout).into_owned();
    }
    eprintln!("holdfast flows --external:\n{listed}");
    assert!(listed.lines().any(|l| l.contains("\"dport\":5353") && l.contains("\"src\":\"10.9.0.1\"") && l.contains("\"external\":true")), "{listed}");
    // A requested resync: conntrackd sends its whole table again.
    let received =
        |out: std::process::Output| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["sync"]["messages_received"].as_u64().unwrap_or(0);
    let before = received(hf(&["status", "--json"]));
    assert!(hf(&["resync", "--json"]).status.success());
    let t = Instant::now();
    while received(hf(&["status", "--json"])) <= before {
        assert!(t.elapsed() < Duration::from_secs(10), "conntrackd answered the RESYNC");
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = hf(&["takeover", "--json"]);
    assert!(took.status.success(), "{}", String::from_utf8_lossy(&took.stderr));
    let took: serde_json::Value = serde_json::from_slice(&took.stdout).unwrap();
    assert!(took["adopted"].as_u64().unwrap() >= 1, "{took}");
    let stats = sh("hf-sync", &format!("{ctl} -s"));
    assert!(stats.contains(" 0 Malformed msgs"), "conntrackd refused none of Holdfast's messages:\n{stats}");
    assert!(Command::new("kill").args(["-TERM", &app.id().to_string()]).status().unwrap().success());
    let out = app.wait_with_output().unwrap();
    let fin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("holdfast's sync at stop: {}", fin["sync"]);
    assert_eq!(fin["sync"]["malformed"], 0, "Holdfast refused none of conntrackd's messages");
    assert_eq!(fin["sync"]["hello_back_pending"], false, "conntrackd answered Holdfast's HELLO with HELLO_BACK");
    assert!(fin["sync"]["messages_sent"].as_u64().unwrap() >= 1);
    assert_eq!(fin["sync"]["takeover"]["adopted"], took["adopted"]);
}
