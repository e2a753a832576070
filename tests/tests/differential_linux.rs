//! Differential test against Linux: the same traffic through a Linux router running
//! nf_conntrack + nftables (in network namespaces) and, from its capture, through
//! Holdfast offline. The same packets must pass, and the final tables must agree.
//!
//! Needs root (namespaces, nftables), and nft, conntrack, tcpdump, ethtool, curl,
//! ping and Debian's python3 with scapy: `.ci/run` installs them. Run by a non-root
//! user the test says it was skipped, and why.
//!
//! Topology (all names start with `hfd-`, removed at start and on exit or panic):
//!
//!   hfd-c (client)  198.51.100.2, 2001:db8:1::2
//!      hfd-c0 == hfd-f0
//!   hfd-f (router)  198.51.100.1 | 10.0.2.254, nftables "ct state" ruleset, captures
//!      hfd-f1 == hfd-s0
//!   hfd-s (server)  10.0.2.1, 2001:db8:2::1: HTTP on 80, UDP echo on 7

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holdfast_controlplane::capture;
use holdfast_controlplane::config;
use holdfast_controlplane::replay::{self, Options};
use holdfast_dataplane::host::{self, Tool};
use holdfast_dataplane::sys;
use holdfast_pipeline::DropReason;
use holdfast_pipeline::parse::{Frame, L4, parse};
use serde_json::Value;

const NS: [&str; 3] = ["hfd-c", "hfd-f", "hfd-s"];
const PY: &str = "/usr/bin/python3";

const NFT_RULES: &str = r#"
table inet hfd {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state invalid counter drop
        ct state established,related counter accept
        ct state new iifname "hfd-f0" ip daddr 10.0.2.0/24 tcp dport 80 counter accept
        ct state new iifname "hfd-f0" ip6 daddr 2001:db8:2::/64 tcp dport 80 counter accept
        ct state new iifname "hfd-f0" ip daddr 10.0.2.0/24 udp dport { 7, 9 } counter accept
        ct state new icmp type echo-request counter accept
        ct state new icmpv6 type echo-request counter accept
        counter drop
    }
}
"#;

const HOLDFAST_CONFIG: &str = r#"
zones:
  inside: { networks: [10.0.2.0/24, "2001:db8:2::/64"] }
conntrack:
  pickup: strict                    # = nf_conntrack_tcp_loose=0
  timeouts: { tcp_established: 5d, tcp_time_wait: 120s, tcp_close: 10s, udp_unreplied: 30s, udp_replied: 120s, icmp: 30s }
policy:
  default: deny
  rules:
    - { name: web, from: outside, to: inside, proto: tcp, dst: [10.0.2.0/24, "2001:db8:2::/64"], dst_port: 80, action: allow }
    - { name: udp, from: outside, to: inside, proto: udp, dst: 10.0.2.0/24, dst_port: [7, 9], action: allow }
    - { name: ping, proto: icmp, icmp_type: echo-request, action: allow }
"#;

/// Where Holdfast and Linux disagree on purpose or for now, each listed in
/// ARCHITECTURE.md ("Deliberate differences"): the packets are told by their IP ID.
/// Each must still show (a fixed difference is removed from here and from the list).
struct Known {
    packets: &'static str,
    /// The flow that only Holdfast's table holds because of it, if any.
    flow: Option<&'static str>,
    why: &'static str,
}

const KNOWN: [Known; 1] = [Known {
    packets: "ip-id 4444,",
    flow: Some("udp 198.51.100.2 41031 10.0.2.1 7"),
    why: "overlapping fragments: Linux drops the whole datagram when reassembly finds an overlap; Holdfast judged the first fragment before the overlap arrived and passes the rest with it",
}];

struct Lab {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        teardown();
        // The captures and logs stay for a look when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn teardown() {
    for ns in NS {
        // Processes started in a namespace outlive it: stop them first.
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").arg("-9").arg(pid).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
}

fn sh(ns: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("ip").args(["netns", "exec", ns, "timeout", "30", "bash", "-c", cmd]).output().expect("ip netns exec");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(ns: &str, cmd: &str) -> String {
    let (ok, out) = sh(ns, cmd);
    assert!(ok, "in {ns}: `{cmd}` failed:\n{out}");
    out
}

fn host(cmd: &str) {
    let st = Command::new("bash").args(["-c", cmd]).status().expect("bash");
    assert!(st.success(), "`{cmd}` failed");
}

impl Lab {
    fn spawn(&mut self, ns: &str, cmd: &str, log: &str) {
        let f = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", &format!("exec {cmd}")])
            .current_dir(&self.dir)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn");
        self.children.push(child);
    }

    fn up() -> Lab {
        teardown();
        let dir = std::env::temp_dir().join(format!("hfd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let lab = Lab { dir, children: vec![] };
        for ns in NS {
            host(&format!("ip netns add {ns}"));
            must(ns, "ip link set lo up");
        }
        host("ip link add hfd-c0 netns hfd-c numtxqueues 1 numrxqueues 1 type veth peer name hfd-f0 netns hfd-f numtxqueues 1 numrxqueues 1");
        host("ip link add hfd-s0 netns hfd-s numtxqueues 1 numrxqueues 1 type veth peer name hfd-f1 netns hfd-f numtxqueues 1 numrxqueues 1");
        must(
            "hfd-c",
            "ip addr add 198.51.100.2/24 dev hfd-c0 && ip addr add 2001:db8:1::2/64 dev hfd-c0 nodad && ip link set hfd-c0 up && ip route add default via 198.51.100.1 && ip -6 route add default via 2001:db8:1::1",
        );
        must(
            "hfd-s",
            "ip addr add 10.0.2.1/24 dev hfd-s0 && ip addr add 2001:db8:2::1/64 dev hfd-s0 nodad && ip link set hfd-s0 up && ip route add default via 10.0.2.254 && ip -6 route add default via 2001:db8:2::fe",
        );
        must(
            "hfd-f",
            "ip addr add 198.51.100.1/24 dev hfd-f0 && ip addr add 2001:db8:1::1/64 dev hfd-f0 nodad && ip addr add 10.0.2.254/24 dev hfd-f1 && ip addr add 2001:db8:2::fe/64 dev hfd-f1 nodad && ip link set hfd-f0 up && ip link set hfd-f1 up",
        );
        must("hfd-f", "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        // Checksums in software on the end hosts (veth offload leaves them partial in
        // captures), and no segmentation offload, so the wire carries real segments.
        must("hfd-c", "ethtool -K hfd-c0 tx off tso off gso off gro off >/dev/null");
        must("hfd-s", "ethtool -K hfd-s0 tx off tso off gso off gro off >/dev/null");
        must("hfd-f", "ethtool -K hfd-f0 gro off gso off tso off >/dev/null && ethtool -K hfd-f1 gro off gso off tso off >/dev/null");
        std::fs::write(lab.dir.join("rules.nft"), NFT_RULES).unwrap();
        must("hfd-f", &format!("nft -f {}", lab.dir.join("rules.nft").display()));
        // Linux as Holdfast is configured: no mid-stream pickup, the same timeouts.
        must(
            "hfd-f",
            "sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0 net.netfilter.nf_conntrack_tcp_be_liberal=0 \
             net.netfilter.nf_conntrack_tcp_timeout_established=432000 net.netfilter.nf_conntrack_tcp_timeout_time_wait=120 \
             net.netfilter.nf_conntrack_tcp_timeout_close=10 net.netfilter.nf_conntrack_udp_timeout=30 \
             net.netfilter.nf_conntrack_udp_timeout_stream=120 net.netfilter.nf_conntrack_icmp_timeout=30 && conntrack -F 2>/dev/null; true",
        );
        lab
    }
}

/// What the comparison runs besides the lab's tools (namespaces, offload control,
/// real clients and servers): nftables and its conntrack listing, captures.
const MORE_TOOLS: [Tool; 3] =
    [Tool { command: "nft", package: "nftables" }, Tool { command: "conntrack", package: "conntrack" }, Tool { command: "tcpdump", package: "tcpdump" }];

/// Whether the comparison can run here; each reason it cannot is a `SKIPPED:` line.
fn can_run() -> bool {
    if !sys::is_root() {
        host::report_skip("needs root for network namespaces and nftables (CI runs it as root)");
        return false;
    }
    let tools: Vec<Tool> = holdfast_controlplane::lab::TOOLS.iter().chain(&MORE_TOOLS).copied().collect();
    if !host::have_or_report(&tools) {
        return false;
    }
    if !Command::new(PY).args(["-c", "import scapy"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
        host::report_skip("needs scapy (apt-get install python3-scapy)");
        return false;
    }
    true
}

/// The forwarding-invariant bytes of an IP packet: the whole packet with TTL / hop
/// limit and the IPv4 header checksum zeroed.
fn fingerprint(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let et = u16::from_be_bytes([frame[12], frame[13]]);
    let mut p = frame[14..].to_vec();
    match et {
        0x0800 if p.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
            p.truncate(total);
            p[8] = 0;
            p[10] = 0;
            p[11] = 0;
        }
        0x86dd if p.len() >= 40 => {
            let total = (40 + usize::from(u16::from_be_bytes([p[4], p[5]]))).min(p.len());
            p.truncate(total);
            p[7] = 0;
            // Linux forwards an atomic fragment (offset 0, M=0: RFC 6946) without its
            // fragment header (nf_defrag_ipv6 "reassembles" it): compare without it.
            if p[6] == 44 && p.len() >= 48 && u16::from_be_bytes([p[42], p[43]]) & 0xfff9 == 0 {
                let next = p[40];
                p.drain(40..48);
                p[6] = next;
                let len = u16::from_be_bytes([p[4], p[5]]).saturating_sub(8);
                p[4..6].copy_from_slice(&len.to_be_bytes());
            }
        }
        _ => return None,
    }
    Some(p)
}

fn in_lab_subnets(a: u128, v6: bool) -> Option<bool> {
    // Some(true) = client side, Some(false) = server side.
    if v6 {
        match a >> 64 {
            0x2001_0db8_0001_0000 => Some(true),
            0x2001_0db8_0002_0000 => Some(false),
            _ => None,
        }
    } else {
        match (a as u32) >> 8 {
            0xc6_3364 => Some(true),
            0x0a_0002 => Some(false),
            _ => None,
        }
    }
}

/// True for packets between the client and server networks (what the router forwards).
fn relevant(frame: &[u8]) -> Option<String> {
    let Ok(Frame::Ip(m)) = parse(frame) else { return None };
    let (s, d) = (in_lab_subnets(m.src_addr(), m.key.v6)?, in_lab_subnets(m.dst_addr(), m.key.v6)?);
    if s == d {
        return None;
    }
    let (src, sp) = m.key.src(m.side);
    let (dst, dp) = m.key.dst(m.side);
    let what = match m.l4 {
        L4::Tcp(t) => format!("tcp flags {:#04x} seq {} ack {} len {}", t.flags, t.seq, t.ack, t.payload_len),
        L4::Udp => "udp".into(),
        L4::IcmpQuery { ty, .. } | L4::IcmpError { ty, .. } | L4::IcmpOther { ty, .. } => format!("icmp type {ty}"),
        L4::LaterFragment => "later fragment".into(),
        L4::Other => format!("proto {}", m.key.proto),
    };
    let frag = m.frag.map(|f| format!(" (fragment, ip-id {}, offset {})", f.ident, f.offset)).unwrap_or_default();
    Some(format!("{src}:{sp} -> {dst}:{dp} {what}{frag}"))
}

fn read_capture(paths: &[PathBuf]) -> Vec<(u64, Vec<u8>)> {
    let mut all = Vec::new();
    for p in paths {
        let buf = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let cap = capture::parse(&buf);
        assert!(cap.error.is_none(), "{}: {:?}", p.display(), cap.error);
        all.extend(cap.records.iter().map(|r| (r.ts_ns, r.data.to_vec())));
    }
    all.sort_by_key(|r| r.0);
    all
}

/// `conntrack -L` lines of flows between the lab's networks:
/// key "proto src sport dst dport" -> (state, assured, seconds left).
fn linux_table(text: &str) -> BTreeMap<String, (String, bool, u64)> {
    let mut t = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 4 || !["tcp", "udp", "icmp", "icmpv6"].contains(&w[0]) {
            continue;
        }
        let field = |name: &str| w.iter().find_map(|x| x.strip_prefix(name)).unwrap_or("").to_string();
        let proto = w[0];
        let left: u64 = w[2].parse().unwrap_or(0);
        let state = if proto == "tcp" {
            w[3].to_string()
        } else if line.contains("[UNREPLIED]") {
            "UNREPLIED".into()
        } else {
            "REPLIED".into()
        };
        let (src, dst) = (field("src="), field("dst="));
        let (Ok(sa), Ok(da)) = (src.parse::<std::net::IpAddr>(), dst.parse::<std::net::IpAddr>()) else { continue };
        let (sv, dv) = (holdfast_pipeline::flow::from_ip(sa), holdfast_pipeline::flow::from_ip(da));
        match (in_lab_subnets(sv.0, sv.1), in_lab_subnets(dv.0, dv.1)) {
            (Some(a), Some(b)) if a != b => {}
            _ => continue,
        }
        let (sp, dp) = if proto.starts_with("icmp") { (field("id="), field("type=")) } else { (field("sport="), field("dport=")) };
        t.insert(format!("{proto} {src} {sp} {dst} {dp}"), (state, line.contains("[ASSURED]"), left));
    }
    t
}

fn holdfast_table(path: &Path) -> BTreeMap<String, (String, bool, u64)> {
    let mut t = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let proto = match &v["proto"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let key = format!("{proto} {} {} {} {}", v["src"].as_str().unwrap(), v["sport"], v["dst"].as_str().unwrap(), v["dport"]);
        t.insert(key, (v["state"].as_str().unwrap().to_string(), v["assured"].as_bool().unwrap(), v["expires_in_s"].as_u64().unwrap()));
    }
    t
}

#[test]
fn holdfast_agrees_with_linux_conntrack() {
    if !can_run() {
        return;
    }

    let mut lab = Lab::up();
    let dir = lab.dir.clone();
    std::fs::write(dir.join("www/file"), vec![b'h'; 20_000]).unwrap();
    lab.spawn("hfd-s", &format!("{PY} -m http.server 80 --bind :: --directory {}", dir.join("www").display()), "http.log");
    lab.spawn(
        "hfd-s",
        &format!("{PY} -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"0.0.0.0\",7))\nwhile True:\n d,a=s.recvfrom(65535)\n s.sendto(d,a)'"),
        "echo.log",
    );
    must("hfd-s", "for i in $(seq 50); do ss -ltn | grep -q ':80 ' && exit 0; sleep 0.1; done; exit 1");
    for (i, (ifc, dir_)) in [("hfd-f0", "in"), ("hfd-f1", "in"), ("hfd-f0", "out"), ("hfd-f1", "out")].iter().enumerate() {
        lab.spawn("hfd-f", &format!("tcpdump -i {ifc} -Q {dir_} -n -s 0 -U --time-stamp-precision=nano -w {dir_}{}.pcap", i % 2), &format!("tcpdump{i}.log"));
    }
    for i in 0..4 {
        must("hfd-f", &format!("for n in $(seq 50); do grep -q 'listening on' {}/tcpdump{i}.log && exit 0; sleep 0.1; done; exit 1", dir.display()));
    }

    // Real traffic.
    must("hfd-c", "curl -sf -o /dev/null http://10.0.2.1/file http://10.0.2.1/file");
    must("hfd-c", "curl -sf -o /dev/null -g 'http://[2001:db8:2::1]/file'");
    sh("hfd-c", "curl -s -o /dev/null --connect-timeout 1 http://10.0.2.1:8080/");
    sh("hfd-s", "curl -s -o /dev/null --connect-timeout 1 http://198.51.100.2:9/");
    must("hfd-c", "ping -c 2 -i 0.2 -W 1 10.0.2.1 >/dev/null");
    must("hfd-s", "ping -c 2 -i 0.2 -W 1 198.51.100.2 >/dev/null");
    must("hfd-c", "ping -6 -c 2 -i 0.2 -W 1 2001:db8:2::1 >/dev/null");
    let udp = |port: u16| {
        format!(
            "{PY} -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.5)\ns.sendto(b\"hello\",(\"10.0.2.1\",{port}))\ntry: s.recv(100)\nexcept Exception: pass'"
        )
    };
    sh("hfd-c", &udp(7));
    sh("hfd-c", &udp(9)); // closed port: the server's ICMP port unreachable is RELATED
    sh("hfd-c", &udp(53)); // no rule
    // Crafted sequences, with the client kernel's own RSTs silenced.
    must(
        "hfd-c",
        "nft add table inet hfdc && nft add chain inet hfdc out '{ type filter hook output priority 0; }' && nft add rule inet hfdc out ip ttl 64 tcp flags rst drop",
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("differential/scapy_cases.py");
    let out = must("hfd-c", &format!("{PY} {} 198.51.100.2 10.0.2.1 hfd-c0", script.display()));
    eprintln!("{out}");
    must("hfd-c", "nft delete table inet hfdc");
    // Let the captures catch up before they are stopped (a stop drops what tcpdump has
    // not read yet: once, under load, the last case's request was missing): at least
    // a second, then until no file has grown for half a second (10 s at most).
    std::thread::sleep(Duration::from_secs(1));
    let sizes = || ["in0", "in1", "out0", "out1"].map(|f| std::fs::metadata(dir.join(format!("{f}.pcap"))).map_or(0, |m| m.len()));
    let t = std::time::Instant::now();
    let mut last = sizes();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = sizes();
        if now == last || t.elapsed() > Duration::from_secs(10) {
            break;
        }
        last = now;
    }

    let linux = format!("{}{}", must("hfd-f", "conntrack -L -f ipv4 2>/dev/null"), must("hfd-f", "conntrack -L -f ipv6 2>/dev/null"));
    for c in &mut lab.children[2..] {
        let _ = Command::new("kill").arg("-INT").arg(c.id().to_string()).status();
        let _ = c.wait();
    }

    // Replay what the router received through Holdfast.
    let ingress = read_capture(&[dir.join("in0.pcap"), dir.join("in1.pcap")]);
    let egress = read_capture(&[dir.join("out0.pcap"), dir.join("out1.pcap")]);
    let mut w = capture::Writer::new(Vec::new(), true).unwrap();
    for (t, f) in &ingress {
        w.write(*t, f).unwrap();
    }
    let pcap = w.finish().unwrap();
    std::fs::write(dir.join("ingress.pcap"), &pcap).unwrap();
    let cfg = config::parse(HOLDFAST_CONFIG, "differential.yaml").unwrap();
    let opts = Options { workers: 1, json: true, flows_out: Some(dir.join("flows.jsonl")), verdicts_out: Some(dir.join("verdicts.jsonl")) };
    let report = replay::run(&cfg, "ingress.pcap", &pcap, 7, &opts).unwrap();
    eprintln!("{}", report.human());

    // Per packet: Linux passed it iff it left on the other side.
    let mut forwarded: HashMap<Vec<u8>, usize> = HashMap::new();
    for (_, f) in &egress {
        if let Some(fp) = fingerprint(f) {
            *forwarded.entry(fp).or_default() += 1;
        }
    }
    let verdicts: Vec<Value> = std::fs::read_to_string(dir.join("verdicts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(verdicts.len(), ingress.len());
    let (mut compared, mut both_pass, mut both_drop) = (0, 0, 0);
    let mut mismatches = Vec::new();
    let mut known: Vec<Vec<String>> = vec![Vec::new(); KNOWN.len()];
    for (i, (_, f)) in ingress.iter().enumerate() {
        let Some(desc) = relevant(f) else { continue };
        let fp = fingerprint(f).unwrap();
        let linux_pass = match forwarded.get_mut(&fp) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let hf = &verdicts[i];
        let hf_pass = hf["verdict"] == "pass";
        compared += 1;
        match (linux_pass, hf_pass) {
            (true, true) => both_pass += 1,
            (false, false) => both_drop += 1,
            _ => {
                let line = format!("#{i} {desc}: linux {}, holdfast {}", if linux_pass { "pass" } else { "drop" }, hf);
                match KNOWN.iter().position(|k| desc.contains(k.packets)) {
                    Some(k) => known[k].push(line),
                    None => mismatches.push(line),
                }
            }
        }
    }
    for (k, seen) in KNOWN.iter().zip(&known) {
        eprintln!("known difference ({}), {} packet(s):\n  {}", k.why, seen.len(), seen.join("\n  "));
        assert!(
            !seen.is_empty(),
            "the known difference \"{}\" did not show: it is fixed (remove it from KNOWN and ARCHITECTURE.md) or its case did not run",
            k.why
        );
    }
    eprintln!("compared {compared} packets: {both_pass} passed by both, {both_drop} dropped by both, {} differ", mismatches.len());

    // Final tables. Entries within 3 s of expiry may legitimately differ: Linux is
    // listed a moment after the capture's last packet.
    let lt = linux_table(&linux);
    let ht = holdfast_table(&dir.join("flows.jsonl"));
    let mut table_diffs = Vec::new();
    for (k, v) in &lt {
        match ht.get(k) {
            Some(h) if h.0 == v.0 && h.1 == v.1 => {}
            Some(h) => table_diffs.push(format!("{k}: linux {v:?}, holdfast {h:?}")),
            None if v.2 <= 3 => {}
            None => table_diffs.push(format!("{k}: linux {v:?}, holdfast has no entry")),
        }
    }
    for (k, h) in &ht {
        if !lt.contains_key(k) && h.2 > 3 && !KNOWN.iter().any(|d| d.flow == Some(k.as_str())) {
            table_diffs.push(format!("{k}: holdfast {h:?}, linux has no entry"));
        }
    }
    eprintln!("linux table: {} flows, holdfast table: {} flows", lt.len(), ht.len());
    for (k, v) in &lt {
        eprintln!("  {k}: {} {}", v.0, if v.1 { "[ASSURED]" } else { "" });
    }

    assert!(compared > 100 && both_pass > 50 && both_drop >= 8, "the traffic did not exercise enough: {compared} {both_pass} {both_drop}");
    for r in [
        DropReason::Policy,
        DropReason::OutOfWindow,
        DropReason::InvalidRst,
        DropReason::InvalidTcpFlags,
        DropReason::MidstreamNoState,
        DropReason::IcmpUnrelated,
    ] {
        assert!(report.counters.dropped[r as usize] > 0, "no {} drop: a crafted case did not run", r.name());
    }
    assert!(report.counters.passed[holdfast_pipeline::PassKind::Related as usize] > 0, "no RELATED packet");
    assert!(lt.len() >= 8, "Linux tracked too few flows:\n{linux}");
    assert!(mismatches.is_empty(), "packets judged differently:\n{}", mismatches.join("\n"));
    assert!(table_diffs.is_empty(), "final tables differ:\n{}\nconntrack -L:\n{linux}", table_diffs.join("\n"));
}
