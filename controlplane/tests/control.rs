//! The control plane of a running appliance, in the lab (root only; CI runs as root):
//! reloads during a download, recheck, counters read while workers run, `/metrics`
//! through a Prometheus parser, a table-fill saturation event that rises and clears,
//! and a flood of denials that the deny log suppresses instead of queueing. Each test
//! builds its own lab and removes it, also when it fails.

#[macro_use]
mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The lab's namespace names are fixed: one lab at a time.
static LAB: Mutex<()> = Mutex::new(());
const PY: &str = "/usr/bin/python3";
const HF: &str = env!("CARGO_BIN_EXE_holdfast");

const BASE: &str = "zones:
  outside: { interface: hf-out0, queues: QUEUES }
  inside:  { interface: hf-in0, queues: QUEUES, networks: [10.0.2.0/24] }
workers: { cores: CORES }
control: { listen: 127.0.0.1:9477, report_interval: 250ms }
log: { denials: denials.log, rate_limit: 1000 }
";

const WEB: &str = "    - { name: web, from: outside, to: inside, proto: tcp, dst: 10.0.2.0/24, dst_port: 80, action: allow }\n";
const PING: &str = "    - { name: ping, proto: icmp, icmp_type: echo-request, action: allow }\n";
const DISCARD: &str = "    - { name: discard, from: outside, to: inside, proto: udp, dst_port: 9, action: allow }\n";

struct Lab {
    dir: PathBuf,
    workers: usize,
    kids: Vec<Child>,
    app: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.kids.iter_mut().chain(self.app.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(HF).args(["lab", "down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Lab {
    fn up(name: &str, workers: usize) -> Lab {
        let dir = std::env::temp_dir().join(format!("hf-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let lab = Lab { dir, workers, kids: vec![], app: None };
        ok(&Command::new(HF).args(["lab", "up", "--workers", &workers.to_string()]).output().unwrap());
        lab
    }

    fn ns(&self, ns: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd);
        c
    }

    /// A config from the base, the given rules and extra top-level text.
    fn config(&self, rules: &str, extra: &str) -> String {
        let cores: Vec<String> = (0..self.workers).map(|c| (c + 2 - self.workers).to_string()).collect();
        BASE.replace("QUEUES", &self.workers.to_string()).replace("CORES", &format!("[{}]", cores.join(", "))) + extra + "policy:\n  rules:\n" + rules
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.dir.join("hf.yaml"), text).unwrap();
    }

    fn web_server(&mut self, addr: &str) {
        let c = self
            .ns("hf-in", &[PY, "-m", "http.server", "80", "--bind", addr, "--directory", &self.dir.join("www").to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.kids.push(c);
        let t = Instant::now();
        while !self.ns("hf-in", &["ss", "-ltn"]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{addr}:80"))) {
            assert!(t.elapsed() < Duration::from_secs(10), "web server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the appliance on `hf.yaml` and waits for its endpoint.
    fn start(&mut self, env: &[(&str, &str)]) {
        let err = std::fs::File::create(self.dir.join("stderr.txt")).unwrap();
        self.start_with(env, err.into());
    }

    /// [`Lab::start`] with standard error to `err`.
    fn start_with(&mut self, env: &[(&str, &str)], err: Stdio) {
        let mut c = self.ns("hf-fw", &[HF, "run", "--json", "--quiet", "--config", &self.dir.join("hf.yaml").to_string_lossy()]);
        for (k, v) in env {
            c.env(k, v);
        }
        self.app = Some(c.stdout(Stdio::piped()).stderr(err).spawn().unwrap());
        let t = Instant::now();
        while !self.hf(&["status", "--json"]).status.success() {
            if let Ok(Some(st)) = self.app.as_mut().unwrap().try_wait() {
                panic!("the appliance stopped ({st}): {}", self.stderr());
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no control endpoint: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }

    /// `holdfast ARGS` inside the firewall's namespace (where the endpoint listens).
    fn hf(&self, args: &[&str]) -> Output {
        self.ns("hf-fw", &[HF]).args(args).output().unwrap()
    }

    /// [`Lab::hf`] with standard output to `out`.
    fn hf_to(&self, args: &[&str], out: std::io::PipeWriter) -> Output {
        self.ns("hf-fw", &[HF]).args(args).stdout(out).output().unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&ok(&self.hf(&["status", "--json"]))).unwrap()
    }

    /// The saturation or fault event `name` from `/status`, once it is raised (within
    /// 5 s).
    fn raised(&self, name: &str) -> Value {
        let t = Instant::now();
        loop {
            let s = self.status();
            if let Some(e) = s["saturation"].as_array().unwrap().iter().find(|e| e["event"] == name) {
                return e.clone();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "no {name} event: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM; the final counters.
    fn stop(&mut self) -> Value {
        let app = self.app.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &app.id().to_string()]).status();
        let out = app.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("final JSON: {}\n{}", String::from_utf8_lossy(&out.stdout), self.stderr()))
    }

    fn blast(&self, flows: u32, dport: u16, seconds: f64) -> Child {
        let out = ok(&self.ns("hf-in", &["cat", "/sys/class/net/hf-in1/address"]).output().unwrap());
        self.ns(
            "hf-out",
            &[
                HF,
                "blast",
                "--interface",
                "hf-out1",
                "--dst-mac",
                out.trim(),
                "--flows",
                &flows.to_string(),
                "--dport",
                &dport.to_string(),
                "--seconds",
                &seconds.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
    }
}

/// Every worker's snapshot accounts for every frame it took in and every frame the
/// pipeline passed: a torn snapshot (counters from two moments) would not.
fn assert_consistent(status: &Value) {
    for w in status["workers"].as_array().unwrap() {
        let c = &w["counters"];
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v} in {c}"));
        let frames_in = n(&c["rx"]["outside"]) + n(&c["rx"]["inside"]) + n(&c["handoff_in"]);
        let judged = n(&c["passed"]) + n(&c["dropped"]);
        let accounted = judged + n(&c["handoff_out"]) + n(&c["forward_drops"]["handoff_full"]) + n(&c["forward_drops"]["handoff_too_large"]);
        assert_eq!(frames_in, accounted, "frames in = judged + handed off + handoff drops: {c}");
        let out = n(&c["tx"]["outside"]) + n(&c["tx"]["inside"]) + n(&c["forward_drops"]["tx_ring_full"]) + n(&c["forward_drops"]["link_down"]);
        assert_eq!(n(&c["passed"]), out, "passed = transmitted + tx_ring_full + link_down: {c}");
    }
}

fn flows(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["flows", "--json"];
    a.extend_from_slice(args);
    ok(&lab.hf(&a)).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn ten_reloads_during_a_download_lose_nothing_and_a_bad_one_changes_nothing() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("reload", 1);
    // 24 MiB at 6 MB/s: the download lasts about 4 s.
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(lab.dir.join("www/big.bin"), &body).unwrap();
    lab.web_server("10.0.2.1");
    // A table of 64k, not the default 1M: the test finds the download with listings
    // during its 4 s, and a listing walks the whole table at ~200 µs of the worker a
    // 2 ms round (a debug build's empty 1M table: ~0.8 s a listing).
    let a = lab.config(&(WEB.to_string() + PING), "conntrack: { capacity: 65536 }\n");
    let b = lab.config(
        &(WEB.to_string() + PING + "    - { name: dns, from: inside, proto: udp, dst_port: 53, action: allow }\n"),
        "conntrack: { capacity: 65536, timeouts: { tcp_established: 2h } }\n",
    );
    lab.write_config(&a);
    // systemd's side of Type=notify, played by the test.
    let sock_path = lab.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let said = std::sync::Arc::new(Mutex::new(String::new()));
    let heard = std::sync::Arc::clone(&said);
    let listening = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let go_on = std::sync::Arc::clone(&listening);
    let listener = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while go_on.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                let mut h = heard.lock().unwrap();
                h.push_str(&String::from_utf8_lossy(&buf[..n]));
                h.push('\n');
            }
        }
    });
    lab.start(&[("NOTIFY_SOCKET", &sock_path.to_string_lossy()), ("WATCHDOG_USEC", "400000")]);

    let got = lab.dir.join("got.bin");
    let mut curl = lab
        .ns("hf-out", &["curl", "-s", "-S", "--limit-rate", "6M", "-o", &got.to_string_lossy(), "http://10.0.2.1/big.bin"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let listed = loop {
        let f = flows(&lab, &["--port", "80", "--state", "established", "--src", "10.0.1.1"]);
        if !f.is_empty() {
            break f;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the download never showed up in /flows");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["dst"].as_str(), listed[0]["dport"].as_u64()), (Some("10.0.2.1"), Some(80)));

    for i in 1..=10u64 {
        lab.write_config(if i % 2 == 1 { &b } else { &a });
        let out = lab.hf(&["reload"]);
        assert!(ok(&out).contains(&format!("generation {i} running on every worker")));
        if i == 5 {
            // A broken file: rejected with its position; nothing changes.
            lab.write_config(&a.replace("report_interval: 250ms", "report_interval: 250ms, colour: blue"));
            let bad = lab.hf(&["reload"]);
            assert_eq!(bad.status.code(), Some(2));
            let err = String::from_utf8_lossy(&bad.stderr);
            assert!(err.contains("hf.yaml:5:") && err.contains("unknown field `colour`"), "{err}");
            assert_eq!(lab.status()["generation"], 5);
        }
    }
    let st = curl.wait().unwrap();
    let mut e = String::new();
    curl.stderr.take().unwrap().read_to_string(&mut e).unwrap();
    assert!(st.success(), "the download failed across the reloads: {e}");
    assert!(std::fs::read(&got).unwrap() == body, "the download arrived whole");
    let s = lab.status();
    assert_eq!((s["reloads"].as_u64(), s["reload_failures"].as_u64()), (Some(10), Some(1)));
    assert_eq!(s["last_reload"]["ok"], true);
    assert_consistent(&s);
    // Twenty reloads asked at once: every one answered, by fewer readings of the file
    // (each reading answers all that were asked before it).
    let burst: Vec<Child> =
        (0..20).map(|_| lab.ns("hf-fw", &["curl", "-s", "-f", "-d", "", "http://127.0.0.1:9477/reload"]).stdout(Stdio::piped()).spawn().unwrap()).collect();
    let mut generations = std::collections::BTreeSet::new();
    for c in burst {
        let v: Value = serde_json::from_str(&ok(&c.wait_with_output().unwrap())).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        generations.insert(v["generation"].as_u64().unwrap());
    }
    let readings = generations.len() as u64;
    assert!(readings < 20, "twenty reloads asked at once read the file twenty times");
    assert_eq!(lab.status()["reloads"].as_u64(), Some(10 + readings), "{generations:?}");
    let fin = lab.stop();
    assert_eq!(fin["generation"].as_u64(), Some(10 + readings));
    let drops = &fin["totals"]["drops"];
    for r in ["reply_to_evicted", "reply_to_expired", "revoked", "out_of_window", "midstream_no_state"] {
        assert!(drops.get(r).is_none(), "{r} drops: {drops}");
    }
    // What systemd was told.
    std::thread::sleep(Duration::from_millis(300));
    listening.store(false, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
    let said = said.lock().unwrap().clone();
    for m in ["READY=1", "STATUS=", "WATCHDOG=1", "RELOADING=1", "MONOTONIC_USEC=", "STOPPING=1"] {
        assert!(said.contains(m), "no {m} in {said}");
    }
}

#[test]
fn keep_leaves_existing_flows_alone_and_recheck_revokes_what_the_new_rules_deny() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("recheck", 1);
    std::fs::write(lab.dir.join("www/big.bin"), vec![7u8; 32 << 20]).unwrap();
    lab.web_server("10.0.2.1");
    lab.web_server("10.0.2.2");
    // 64k entries: listings walk the whole table (see the reload test).
    let small = "conntrack: { capacity: 65536 }\n";
    lab.write_config(&lab.config(&(WEB.to_string() + PING), small));
    lab.start(&[]);
    let got = lab.dir.join("got.bin");
    let mut curl =
        lab.ns("hf-out", &["curl", "-s", "--limit-rate", "2M", "-m", "30", "-o", &got.to_string_lossy(), "http://10.0.2.1/big.bin"]).spawn().unwrap();
    let t = Instant::now();
    while flows(&lab, &["--port", "80", "--state", "established"]).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bytes the appliance forwarded to the client (curl's file lags: the client's
    // socket buffer holds megabytes that curl reads at its limited rate).
    let forwarded = || lab.status()["total"]["counters"]["tx_bytes"]["outside"].as_u64().unwrap();

    // keep: the web rule goes, the download goes on; a new connection is refused.
    lab.write_config(&lab.config(PING, small));
    ok(&lab.hf(&["reload"]));
    let before = forwarded();
    std::thread::sleep(Duration::from_millis(600));
    let after = forwarded();
    assert!(after > before + 100_000, "keep: the download stalled: {before} -> {after}\n{}\n{}", lab.stderr(), lab.status());
    let refused = lab.ns("hf-out", &["curl", "-s", "-m", "2", "--connect-timeout", "1", "http://10.0.2.2/"]).output().unwrap();
    assert!(!refused.status.success(), "keep: new flows follow the new rules");

    // recheck: the same rules, now asked of existing flows too: the download is revoked.
    let cfg = lab.config(PING, small).replace("policy:\n", "policy:\n  on_reload: recheck\n");
    lab.write_config(&cfg);
    ok(&lab.hf(&["reload"]));
    let stalled = forwarded();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(forwarded(), stalled, "recheck: nothing more of the download crosses");
    assert!(flows(&lab, &["--port", "80"]).is_empty());
    let _ = curl.kill();
    let _ = curl.wait();
    let fin = lab.stop();
    let t = &fin["totals"];
    assert_eq!(t["flows_revoked"], 1, "{t}");
    assert!(t["drops"]["revoked"].as_u64().unwrap_or(0) > 0, "the server's next segments drop as revoked: {t}");
    let log = std::fs::read_to_string(lab.dir.join("denials.log")).unwrap();
    let revoked: Vec<Value> = log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|e| e["reason"] == "revoked").collect();
    assert!(!revoked.is_empty(), "{log}");
    assert_eq!(revoked[0]["state_removed"]["why"], "revoked");
    assert!(revoked[0]["state_removed"]["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn counters_read_while_two_workers_run_are_consistent_and_metrics_parse() {
    need_lab!();
    if !common::python_module(PY, "prometheus_client", "python3-prometheus-client") {
        return;
    }
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("metrics", 2);
    lab.write_config(&lab.config(&(DISCARD.to_string() + PING), ""));
    lab.start(&[]);
    let mut flood = lab.blast(5000, 9, 3.0);
    let mut grew = 0;
    let mut last = 0;
    for _ in 0..40 {
        let s = lab.status();
        assert_consistent(&s);
        let rx = s["total"]["counters"]["rx"]["outside"].as_u64().unwrap();
        if rx > last {
            grew += 1;
        }
        last = rx;
        std::thread::sleep(Duration::from_millis(50));
    }
    flood.wait().unwrap();
    assert!(grew >= 10, "the counters moved while read ({grew} of 40 reads)");
    // `holdfast flows | head`: standard output closed before anything is printed ends
    // the command as SIGPIPE ends other tools, not with a panic.
    for args in [&["status", "--json"][..], &["flows"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = lab.hf_to(args, writer);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked") && o.status.signal() == Some(libc::SIGPIPE), "{args:?}: {:?} {err}", o.status);
    }
    let page = lab.ns("hf-fw", &["curl", "-s", "http://127.0.0.1:9477/metrics"]).output().unwrap();
    let page = ok(&page);
    let script = "import sys
from prometheus_client.parser import text_string_to_metric_families as parse
fams = list(parse(sys.stdin.read()))
labels = set()
for f in fams:
    assert f.name.startswith('holdfast_'), f.name
    for s in f.samples:
        labels |= set(s.labels)
print(len(fams), ' '.join(sorted(labels)), ' '.join(sorted(f.name for f in fams)))
";
    let mut py = Command::new(PY).args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), page.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "/metrics did not parse (is python3-prometheus-client installed? see .ci/run): {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    let mut parts = said.splitn(2, ' ');
    assert!(parts.next().unwrap().parse::<u32>().unwrap() > 30, "{said}");
    let rest = parts.next().unwrap();
    for l in rest.split_whitespace().take_while(|x| !x.starts_with("holdfast_")) {
        assert!(["class", "interface", "reason", "timeout", "worker"].contains(&l), "label {l} is not one of worker, interface, reason, class, timeout");
    }
    for f in [
        "holdfast_rx_packets",
        "holdfast_dropped_packets",
        "holdfast_table_entries",
        "holdfast_busy_ratio",
        "holdfast_saturation_active",
        "holdfast_assured_expirations",
    ] {
        assert!(rest.split_whitespace().any(|x| x == f), "no {f} in {rest}");
    }
    assert!(page.contains("holdfast_rx_packets_total{worker=\"1\",interface=\"outside\"}"), "counters end in _total, per worker");
    let fin = lab.stop();
    assert!(fin["totals"]["handoff_out"].as_u64().unwrap() > 0 || fin["workers"][1]["rx"]["outside"].as_u64().unwrap() > 0);
}

#[test]
fn a_filling_table_raises_table_fill_and_it_clears_when_the_flood_stops() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("fill", 1);
    let extra = "conntrack:\n  capacity: 1024\n  timeouts: { udp_unreplied: 2s }\n  pressure: { embryonic_share: 1.0 }\n";
    lab.write_config(&lab.config(&(DISCARD.to_string() + PING), extra));
    lab.start(&[]);
    let mut flood = lab.blast(4000, 9, 1.5);
    let t = Instant::now();
    let mut raised = None;
    while raised.is_none() && t.elapsed() < Duration::from_secs(4) {
        let s = lab.status();
        raised = s["saturation"].as_array().unwrap().iter().find(|e| e["event"] == "table_fill").cloned();
        std::thread::sleep(Duration::from_millis(100));
    }
    let raised = raised.expect("table_fill was never raised while 4000 flows hit a 1024-entry table");
    assert!(raised["value"].as_f64().unwrap() >= 0.8);
    // Who fills it: the one client, toward the discard port, named by the sweep.
    let t = Instant::now();
    let holders = loop {
        let h = lab.status()["total"]["holders"].clone();
        if h["swept"].as_u64().unwrap_or(0) > 500 || t.elapsed() > Duration::from_secs(2) {
            break h;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(holders["sources"][0]["addr"], "10.0.1.1", "{holders}");
    assert!(holders["sources"][0]["entries"].as_u64().unwrap() > 500, "{holders}");
    assert_eq!((&holders["ports"][0]["proto"], &holders["ports"][0]["port"]), (&Value::from("udp"), &Value::from(9)), "{holders}");
    let top = ok(&lab.hf(&["flows", "--top-sources"]));
    assert!(top.contains("10.0.1.1 ") && top.contains("udp/9 "), "{top}");
    flood.wait().unwrap();
    let t = Instant::now();
    loop {
        let s = lab.status();
        if s["saturation"].as_array().unwrap().is_empty() {
            assert!(s["total"]["entries"].as_u64().unwrap() < 700);
            assert!(s["saturation_events_total"]["table_fill"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "table_fill never cleared: {}", s["saturation"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let fin = lab.stop();
    // At the limit, by-class eviction recycles the oldest unreplied entries: counted.
    assert!(fin["totals"]["evictions"]["unreplied"].as_u64().unwrap() > 0, "the limit was hit and counted: {}", fin["totals"]);
    let log = lab.stderr();
    assert!(log.contains("saturation RAISED table_fill on worker 0") && log.contains("saturation cleared table_fill on worker 0"), "{log}");
    let line = log.lines().find(|l| l.contains("saturation RAISED table_fill")).unwrap_or_default();
    assert!(line.contains("top sources by entries held: 10.0.1.1 (") && line.contains("udp/9 ("), "the event names who fills the table: {line}");
}

#[test]
fn a_flood_of_denials_is_counted_as_suppressed_not_queued() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("deny", 1);
    lab.write_config(&lab.config(PING, "").replace("rate_limit: 1000", "rate_limit: 100"));
    lab.start(&[]);
    let started = Instant::now();
    let mut flood = lab.blast(1000, 7, 2.0);
    flood.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let fin = lab.stop();
    let up = started.elapsed().as_secs_f64() + 1.0;
    let t = &fin["totals"];
    let denied = t["dropped"].as_u64().unwrap();
    let (logged, suppressed) = (t["log_events"].as_u64().unwrap(), t["log_suppressed"].as_u64().unwrap());
    assert!(denied > 10_000, "a flood: {t}");
    assert_eq!(logged + suppressed, denied, "every denial is logged or counted as suppressed");
    assert!(logged as f64 <= 100.0 * up + 100.0, "rate limit: {logged} logged in {up:.1} s");
    assert!(suppressed > denied / 2);
    assert_eq!(fin["deny_log"]["written"].as_u64(), Some(logged), "everything queued was written");
    let lines = std::fs::read_to_string(lab.dir.join("denials.log")).unwrap().lines().count() as u64;
    assert_eq!(lines, logged);
}

/// systemd's side of Type=notify, played by the test: every message with the time it
/// arrived.
struct FakeSystemd {
    heard: std::sync::Arc<Mutex<Vec<(Instant, String)>>>,
    go_on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl FakeSystemd {
    fn new(dir: &std::path::Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let heard = std::sync::Arc::new(Mutex::new(Vec::new()));
        let go_on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (h, g) = (std::sync::Arc::clone(&heard), std::sync::Arc::clone(&go_on));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while g.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    h.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
                }
            }
        });
        FakeSystemd { heard, go_on, thread: Some(thread), path }
    }

    /// Watchdog pings since `t`.
    fn pings_since(&self, t: Instant) -> usize {
        self.heard.lock().unwrap().iter().filter(|(at, m)| *at >= t && m.contains("WATCHDOG=1")).count()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.go_on.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A worker caught in an endless loop (injected: `HOLDFAST_TEST_STALL_WORKER`, debug
/// builds only) is an operator-visible fault within seconds: a `worker_stalled` event in
/// the log, `/status` and `/metrics`; systemd's watchdog stops being fed; a listing
/// refuses at once instead of waiting; and SIGTERM still ends the process within
/// seconds, naming the stuck worker, with no XDP program left behind.
#[test]
fn a_stuck_worker_is_a_fault_starves_the_watchdog_and_sigterm_still_exits() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("stall", 2);
    lab.write_config(&lab.config(&(WEB.to_string() + PING), ""));
    let systemd = FakeSystemd::new(&lab.dir);
    let started = Instant::now();
    lab.start(&[("NOTIFY_SOCKET", &systemd.path.to_string_lossy()), ("WATCHDOG_USEC", "400000"), ("HOLDFAST_TEST_STALL_WORKER", "1:1500")]);
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    assert!(systemd.pings_since(started) >= 2, "the watchdog was fed while every worker ran");

    // Worker 1 stops at 1.5 s; a fault within STALL_AFTER (1 s) of that.
    let fault = lab.raised("worker_stalled");
    assert_eq!(fault["worker"], 1);
    assert!(fault["fault"].as_str().unwrap().contains("worker 1 has published nothing"), "{fault}");
    let metrics = ok(&lab.ns("hf-fw", &["curl", "-s", "http://127.0.0.1:9477/metrics"]).output().unwrap());
    assert!(metrics.contains("holdfast_saturation_active{reason=\"worker_stalled\"} 1"), "{metrics}");
    assert!(lab.stderr().contains("fault RAISED worker_stalled: worker 1 has published nothing"), "{}", lab.stderr());
    // A listing does not wait for the stuck worker.
    let t = Instant::now();
    let out = lab.hf(&["flows"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("worker 1 is stalled"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // A reload is refused before any worker is told: worker 0 would otherwise run the
    // new configuration and worker 1 (its queue still taking commands) never would.
    let t = Instant::now();
    let out = lab.hf(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("reload rejected, the running configuration stays") && err.contains("worker 1 is stalled"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let s = lab.status();
    assert_eq!(s["generation"], 0, "{s}");
    assert_eq!(s["workers"][0]["generation"], 0, "worker 0 was not told: {s}");
    // The watchdog is no longer fed (systemd would restart the service).
    std::thread::sleep(Duration::from_millis(300));
    let quiet = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(systemd.pings_since(quiet), 0, "the watchdog was fed with a worker stuck");

    // SIGTERM still ends the process, within the stop grace period and a margin.
    let app = lab.app.take().unwrap();
    let t = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &app.id().to_string()]).status();
    let pid = app.id();
    // Until it has exited (a zombie, as nobody has waited yet) or 10 s passed.
    while t.elapsed() < Duration::from_secs(10) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited_after = t.elapsed();
    let out = app.wait_with_output().unwrap();
    assert!(exited_after < Duration::from_secs(6), "SIGTERM took {exited_after:?}");
    let fin: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("final JSON: {}", lab.stderr()));
    assert_eq!(fin["stuck_workers"], serde_json::json!([1]));
    assert!(lab.stderr().contains("worker 1 did not stop within 3 s (stuck)"), "{}", lab.stderr());
    for dev in ["hf-out0", "hf-in0"] {
        let link = ok(&lab.ns("hf-fw", &["ip", "link", "show", dev]).output().unwrap());
        assert!(!link.contains("xdp"), "XDP left on {dev}: {link}");
    }
}

/// A worker whose thread ends (a panic on the packet path, injected:
/// `HOLDFAST_TEST_PANIC_WORKER`, debug builds only) is said to have ended, not to be
/// stuck, and the panic's message is in the log; the stop does not wait for it.
#[test]
fn a_worker_that_panics_is_a_fault_that_says_so() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("panic", 2);
    lab.write_config(&lab.config(WEB, ""));
    lab.start(&[("HOLDFAST_TEST_PANIC_WORKER", "1:500")]);
    let fault = lab.raised("worker_stalled");
    assert_eq!(fault["worker"], 1);
    assert!(
        fault["fault"].as_str().unwrap().contains("worker 1 has published nothing") && fault["fault"].as_str().unwrap().contains("its thread has ended"),
        "{fault}"
    );
    assert!(lab.stderr().contains("injected by HOLDFAST_TEST_PANIC_WORKER"), "{}", lab.stderr());
    let t = Instant::now();
    let fin = lab.stop();
    assert!(t.elapsed() < Duration::from_secs(2), "the stop waited for a worker that was gone");
    assert_eq!(fin["stuck_workers"], serde_json::json!([]), "{fin}");
}

/// A helper thread that dies (injected: `HOLDFAST_TEST_PANIC_HELPER`, debug builds
/// only; here the deny log's) takes nothing else down with it — which is why it must be
/// said: a `thread_ended` fault naming the thread and the panic, in the log, `/status`
/// and `/metrics`, and systemd's watchdog no longer fed, so that a restart (keeping the
/// tables) brings it back. Traffic still passes meanwhile, and SIGTERM still stops it.
#[test]
fn a_helper_thread_that_dies_is_a_fault_and_starves_the_watchdog() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("helper", 1);
    lab.web_server("10.0.2.1");
    lab.write_config(&lab.config(WEB, ""));
    let systemd = FakeSystemd::new(&lab.dir);
    let started = Instant::now();
    lab.start(&[("NOTIFY_SOCKET", &systemd.path.to_string_lossy()), ("WATCHDOG_USEC", "400000"), ("HOLDFAST_TEST_PANIC_HELPER", "log:1200")]);
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed()));
    assert!(systemd.pings_since(started) >= 2, "the watchdog was fed while every thread ran");
    let fault = lab.raised("thread_ended");
    let said = fault["fault"].as_str().unwrap();
    assert!(said.contains("the deny log") && said.contains("injected by HOLDFAST_TEST_PANIC_HELPER"), "{fault}");
    assert!(lab.stderr().contains("fault RAISED thread_ended: the thread of the deny log has ended"), "{}", lab.stderr());
    let metrics = ok(&lab.ns("hf-fw", &["curl", "-s", "http://127.0.0.1:9477/metrics"]).output().unwrap());
    assert!(metrics.contains("holdfast_saturation_active{reason=\"thread_ended\"} 1"), "{metrics}");
    let page = ok(&lab.ns("hf-out", &["curl", "-s", "-m", "5", "http://10.0.2.1/"]).output().unwrap());
    assert!(!page.is_empty(), "traffic still passes");
    std::thread::sleep(Duration::from_millis(300));
    let quiet = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(systemd.pings_since(quiet), 0, "the watchdog was fed with the deny log's thread gone");
    let fin = lab.stop();
    assert!(fin["totals"].is_object(), "{fin}");
}

/// Standard error's reader gone (`holdfast run 2>&1 | tee …` with tee stopped, a
/// terminal hung up, the lab's `--keep` process ended): the appliance's next log line
/// — here a reload's — used to panic the control loop, and the process died without
/// saving its tables. Now it runs on: the line is counted as lost, `stderr_write` is
/// raised where an operator still sees it, the reload is applied, traffic passes and
/// SIGTERM still ends it cleanly, with its summary.
#[test]
fn a_log_nobody_reads_any_more_is_a_fault_not_the_end() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("stderr", 1);
    lab.web_server("10.0.2.1");
    lab.write_config(&lab.config(WEB, ""));
    let (reader, writer) = std::io::pipe().unwrap();
    lab.start_with(&[], writer.into());
    drop(reader); // (the test's own copy of the writer went with `start_with`)
    let _ = Command::new("kill").args(["-HUP", &lab.app.as_ref().unwrap().id().to_string()]).status();
    let t = Instant::now();
    let s = loop {
        let s = lab.status();
        if s["generation"] == 1 && s["saturation"].as_array().unwrap().iter().any(|e| e["event"] == "stderr_write") {
            break s;
        }
        assert!(lab.app.as_mut().unwrap().try_wait().unwrap().is_none(), "the appliance died of a log line nobody reads");
        assert!(t.elapsed() < Duration::from_secs(5), "no reload or no stderr_write fault: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(s["stderr_lines_lost"].as_u64().unwrap() >= 1, "{s}");
    let metrics = ok(&lab.ns("hf-fw", &["curl", "-s", "http://127.0.0.1:9477/metrics"]).output().unwrap());
    assert!(metrics.contains("holdfast_saturation_active{reason=\"stderr_write\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("holdfast_stderr_lines_lost_total ") && !l.ends_with(" 0")), "{metrics}");
    let page = ok(&lab.ns("hf-out", &["curl", "-s", "-m", "5", "http://10.0.2.1/"]).output().unwrap());
    assert!(!page.is_empty(), "traffic still passes");
    let fin = lab.stop();
    assert!(fin["stderr_lines_lost"].as_u64().unwrap() >= 1, "{fin}");
    assert_eq!(fin["generation"], 1, "{fin}");
}

/// An interface deleted under the running appliance: a fault in the log, `/status` and
/// `/metrics`; frames that would leave on it are counted as `link_down`, not as sent;
/// when it comes back (a new interface of the same name) the sockets are re-bound and
/// the program re-attached, the table kept, and traffic flows again.
#[test]
fn a_deleted_interface_is_a_fault_and_is_reattached_when_it_returns() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("ifdel", 1);
    std::fs::write(lab.dir.join("www/ok.txt"), "ok\n").unwrap();
    lab.web_server("10.0.2.1");
    lab.write_config(&lab.config(&(WEB.to_string() + PING), ""));
    lab.start(&[]);
    let get = |lab: &Lab| lab.ns("hf-out", &["curl", "-s", "-m", "3", "http://10.0.2.1/ok.txt"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&get(&lab).stdout), "ok\n", "traffic flows before");
    let before = lab.status();
    assert_eq!(before["links"]["inside"]["state"], "up");
    let wait_for = |lab: &Lab, state: &str| {
        let t = Instant::now();
        loop {
            let s = lab.status();
            if s["links"]["inside"]["state"] == state {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(3), "not {state}: {}", s["links"]);
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Down, then up again: a fault while down; the same sockets carry traffic after.
    ok(&Command::new("ip").args(["-n", "hf-fw", "link", "set", "hf-in0", "down"]).output().unwrap());
    let down = wait_for(&lab, "down");
    assert!(down["saturation"].as_array().unwrap().iter().any(|e| e["event"] == "interface_down"), "{down}");
    ok(&Command::new("ip").args(["-n", "hf-fw", "link", "set", "hf-in0", "up"]).output().unwrap());
    let up = wait_for(&lab, "up");
    assert_eq!(up["links"]["inside"]["reattaches"], 0, "no re-attach for down/up");
    let t = Instant::now();
    while String::from_utf8_lossy(&get(&lab).stdout) != "ok\n" {
        assert!(t.elapsed() < Duration::from_secs(5), "no traffic after up: {}", lab.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }

    ok(&Command::new("ip").args(["-n", "hf-fw", "link", "del", "hf-in0"]).output().unwrap());
    let t = Instant::now();
    let gone = loop {
        let s = lab.status();
        if s["links"]["inside"]["state"] == "gone" {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "the deletion went unnoticed: {}", s["links"]);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(gone["links"]["inside"]["up"], false);
    let fault = gone["saturation"].as_array().unwrap().iter().find(|e| e["event"] == "interface_down").cloned().unwrap_or_else(|| panic!("no fault: {gone}"));
    assert!(fault["fault"].as_str().unwrap().contains("hf-in0 (inside) is gone"), "{fault}");
    let metrics = ok(&lab.ns("hf-fw", &["curl", "-s", "http://127.0.0.1:9477/metrics"]).output().unwrap());
    assert!(metrics.contains("holdfast_interface_up{interface=\"inside\"} 0"), "{metrics}");
    assert!(metrics.contains("holdfast_saturation_active{reason=\"interface_down\"} 1"));
    // Traffic toward the missing side: dropped as link_down, not counted as sent.
    let sent = |s: &Value| s["total"]["counters"]["tx"]["inside"].as_u64().unwrap();
    let link_down = |s: &Value| s["total"]["counters"]["forward_drops"]["link_down"].as_u64().unwrap();
    let _ = lab.ns("hf-out", &["ping", "-c", "5", "-i", "0.1", "-W", "1", "10.0.2.1"]).output();
    std::thread::sleep(Duration::from_millis(300));
    let during = lab.status();
    assert_eq!(sent(&during), sent(&gone), "nothing counted as sent to a deleted interface");
    assert!(link_down(&during) >= 5, "{}", during["total"]["counters"]["forward_drops"]);
    assert!(lab.stderr().contains("interface hf-in0 (inside): up -> gone"), "{}", lab.stderr());

    // It comes back: a new veth of the same name.
    holdfast_controlplane::lab::plug(true, 1).unwrap();
    let t = Instant::now();
    let back = loop {
        let s = lab.status();
        if s["links"]["inside"]["up"] == true {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not re-attached: {}\n{}", s["links"], lab.stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(back["links"]["inside"]["reattaches"], 1);
    assert_ne!(back["links"]["inside"]["ifindex"], before["links"]["inside"]["ifindex"], "a new interface");
    assert!(!back["saturation"].as_array().unwrap().iter().any(|e| e["event"] == "interface_down"), "the fault cleared");
    assert!(lab.stderr().contains("re-attached"), "{}", lab.stderr());
    let link = ok(&lab.ns("hf-fw", &["ip", "link", "show", "hf-in0"]).output().unwrap());
    assert!(link.contains("xdp"), "the program is attached again: {link}");
    // Traffic flows again (the web server's socket survived its address going away).
    // The new interface has a new MAC: the client's ARP entry for the server is stale,
    // which is the network's business, not the appliance's.
    let _ = lab.ns("hf-out", &["ip", "neigh", "flush", "all"]).output();
    let t = Instant::now();
    loop {
        let out = get(&lab);
        if String::from_utf8_lossy(&out.stdout) == "ok\n" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no traffic after re-attaching: {}\n{}", String::from_utf8_lossy(&out.stderr), lab.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let fin = lab.stop();
    assert_eq!(fin["totals"]["rebinds"], 1);
    assert_consistent(&lab_final_as_status(&fin));
}

/// Queues added under a running appliance (`ethtool -L`): the frames RSS puts on the
/// new ones reach no worker and the program drops them, so it is a fault that names
/// the interface and the fix; it clears when the queues are taken back.
#[test]
fn queues_added_under_the_appliance_are_a_fault() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    // Veths that can carry two queues, running one, and one worker.
    let mut lab = Lab::up("queues", 2);
    lab.workers = 1;
    let channels = |lab: &Lab, ns: &str, ifc: &str, n: &str| ok(&lab.ns(ns, &["ethtool", "-L", ifc, "rx", n, "tx", n]).output().unwrap());
    // (veth's XDP wants no fewer receive queues than its peer sends on: both ends.)
    for (ns, ifc) in [("hf-out", "hf-out1"), ("hf-in", "hf-in1"), ("hf-fw", "hf-out0"), ("hf-fw", "hf-in0")] {
        channels(&lab, ns, ifc, "1");
    }
    lab.write_config(&lab.config(PING, ""));
    lab.start(&[]);
    let unbound = |s: &Value| s["saturation"].as_array().unwrap().iter().find(|e| e["event"] == "queues_unbound").cloned();
    assert_eq!(unbound(&lab.status()), None, "the queues match at the start");
    ok(&lab.ns("hf-fw", &["ethtool", "-L", "hf-out0", "rx", "2"]).output().unwrap());
    let fault = lab.raised("queues_unbound");
    let says = fault["fault"].as_str().unwrap();
    assert!(says.contains("hf-out0 (outside) receives on 2 queues but the workers bind 1") && says.contains("ethtool -L hf-out0 combined 1"), "{fault}");
    let metrics = ok(&lab.ns("hf-fw", &["curl", "-s", "http://127.0.0.1:9477/metrics"]).output().unwrap());
    assert!(metrics.contains("holdfast_saturation_active{reason=\"queues_unbound\"} 1"), "{metrics}");
    channels(&lab, "hf-fw", "hf-out0", "1");
    let t = Instant::now();
    while unbound(&lab.status()).is_some() {
        assert!(t.elapsed() < Duration::from_secs(5), "the fault did not clear");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.stop();
}

/// The final counters in the shape `assert_consistent` reads.
fn lab_final_as_status(fin: &Value) -> Value {
    serde_json::json!({"workers": fin["workers"].as_array().unwrap().iter().map(|w| serde_json::json!({"counters": w})).collect::<Vec<_>>()})
}

/// Fragmented pings through two workers: in order (the kernel's own `ping -s 3000`,
/// and the fragmented replies back), and with the first fragment sent last (scapy):
/// the later fragments are held by the worker that routes their datagram until the
/// first names the flow's owner, then judged there — the server reassembles and
/// answers every datagram.
#[test]
fn fragments_reach_the_owner_of_their_flow_even_with_the_first_one_last() {
    need_lab!();
    if !common::python_module(PY, "scapy", "python3-scapy") {
        return;
    }
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::up("frags", 2);
    lab.write_config(&lab.config(PING, ""));
    lab.start(&[]);
    let reasm = |lab: &Lab| -> u64 {
        let snmp = ok(&lab.ns("hf-in", &["cat", "/proc/net/snmp"]).output().unwrap());
        let mut l = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (l.next().unwrap(), l.next().unwrap());
        let i = names.split_whitespace().position(|n| n == "ReasmOKs").unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    let before = reasm(&lab);
    let out = lab.ns("hf-out", &["ping", "-c", "4", "-i", "0.2", "-s", "3000", "-W", "2", "10.0.2.1"]).output().unwrap();
    assert!(out.status.success(), "fragmented pings and replies through the appliance: {}", String::from_utf8_lossy(&out.stdout));
    let script = "from scapy.all import IP, ICMP, fragment, send, conf
conf.verb = 0
for k in range(5):
    f = fragment(IP(dst='10.0.2.1', id=4321 + k) / ICMP(id=77, seq=k) / (b'x' * 3000), fragsize=1400)
    send(f[1:] + f[:1])
";
    ok(&lab.ns("hf-out", &[PY, "-c", script]).output().unwrap());
    let t = Instant::now();
    while reasm(&lab) < before + 9 {
        assert!(t.elapsed() < Duration::from_secs(5), "the server reassembled {} of 9 datagrams", reasm(&lab) - before);
        std::thread::sleep(Duration::from_millis(50));
    }
    let fin = lab.stop();
    let t = &fin["totals"];
    eprintln!("totals: {t}");
    assert_eq!(t["fragments_released"], 10, "the two later fragments of each first-last datagram were held, then released: {t}");
    assert_eq!(t["fragments_hold_expired"], 0);
    assert_eq!(t["foreign_flows"], 0, "no flow judged by a worker that does not own it");
    assert_eq!(t["dropped"], 0, "nothing dropped, fragment_unmatched least of all: {}", t["drops"]);
    assert!(t["passed"].as_u64().unwrap() >= 4 * 3 * 2 + 5 * 3, "{t}");
}

/// A worker that falls behind its RX ring under a spoofed SYN flood (injected in debug
/// builds: `HOLDFAST_TEST_SLOW_WORKER` makes it sleep 2 ms after each busy poll, so it
/// drains ~30,000 frames a second a side against a 60,000/s flood). With
/// `workers.shed_syns: on` (the default) the XDP program sheds the flood's SYNs while
/// the ring is over half full, raises `syn_shed`, and every ping through the same
/// ring is answered (97 or more of 100: a stall of the whole VM can still cost a few);
/// so again when the flood's SYNs carry 40 bytes of IPv4 options (a shape the hook
/// once let through, since it read TCP at a fixed offset); the same run with `off`
/// overflows the ring and loses pings — what the shedding is for.
#[test]
fn a_worker_behind_its_ring_sheds_syns_and_keeps_room_for_established_traffic() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    // (pings answered, frames lost at the full ring) with shedding on (plain SYNs, then
    // SYNs with IPv4 options), then off.
    let mut seen = Vec::new();
    for (shed, options) in [("on", "0"), ("on", "40"), ("off", "0")] {
        let mut lab = Lab::up(&format!("shed-{shed}-{options}"), 1);
        // Rings of 8,192: half of one is ~70 ms of the flood, so that a stall of the
        // test's own processes on this 2-core machine does not fill it between two looks.
        let cfg = lab
            .config(&(WEB.to_string() + PING), "")
            .replace("workers: { cores:", &format!("workers: {{ shed_syns: {shed}, ring_size: 8192, umem_frames: 32768, cores:"));
        assert!(cfg.contains(&format!("shed_syns: {shed}")));
        lab.write_config(&cfg);
        lab.start(&[("HOLDFAST_TEST_SLOW_WORKER", "0:2000")]);
        let flood = lab
            .ns("hf-out", &[HF, "load", "flood", "--pps", "60000", "--count", "240000", "--ip-options", options, "--target", "10.0.2.1:80"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let ping = lab.ns("hf-out", &["ping", "-q", "-c", "100", "-i", "0.02", "-W", "2", "10.0.2.1"]).output().unwrap();
        let ping = String::from_utf8_lossy(&ping.stdout).into_owned();
        let received: u64 =
            ping.split(", ").find_map(|p| p.strip_suffix(" received")).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("ping's summary: {ping}"));
        let status_during = lab.status();
        let flood = flood.wait_with_output().unwrap();
        let sent: Value = serde_json::from_slice(&flood.stdout).unwrap_or_else(|_| panic!("load flood: {}", String::from_utf8_lossy(&flood.stdout)));
        assert!(sent["sent"].as_u64().unwrap() >= 100_000, "{sent}");
        // The ring drains once the flood stops: the flag comes down and the event clears.
        let t = Instant::now();
        if shed == "on" {
            loop {
                let s = lab.status();
                if s["total"]["counters"]["shed"]["active"]["outside"] == false && s["saturation"].as_array().unwrap().is_empty() {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "shedding never stopped: {}", s["total"]["counters"]["shed"]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let fin = lab.stop();
        let x = &fin["totals"]["xdp"]["outside"];
        let (shed_n, ring_full) = (x["syn_shed"].as_u64().unwrap(), x["rx_ring_full"].as_u64().unwrap());
        let log = lab.stderr();
        eprintln!(
            "shed_syns {shed}, {options} bytes of IP options: {received}/100 pings, {shed_n} SYNs shed, {ring_full} frames lost at the full ring, {sent}, polls {}, episodes {}",
            fin["totals"]["polls"], fin["totals"]["shed"]
        );
        if shed == "on" {
            // A few may still go where the whole VM stalls for longer than that (the
            // 50-76 ms stalls once seen here were the holders' sweep of a debug build,
            // since cut to under 10 ms; the VM's own agent can still take the core);
            // the difference with `off` is checked below.
            assert!(received >= 97, "the pings answered while the flood was shed: {ping}\n{x}");
            assert!(shed_n > 10_000, "the flood was shed: {x}");
            assert!(fin["totals"]["shed"]["episodes"]["outside"].as_u64().unwrap() >= 1, "{}", fin["totals"]["shed"]);
            // The report taken while the flood still ran shows the rate.
            assert!(status_during["total"]["syn_shed_per_s"].as_f64().unwrap() > 0.0, "{}", status_during["total"]);
            assert!(log.contains("saturation RAISED syn_shed on worker 0") && log.contains("saturation cleared syn_shed on worker 0"), "{log}");
            // The inside ring carried only the pings' replies: never shed there.
            assert_eq!(fin["totals"]["xdp"]["inside"]["syn_shed"], 0);
        } else {
            assert_eq!(shed_n, 0, "{x}");
            assert!(ring_full > 10_000, "without shedding the flood overflows the ring: {x}");
            assert!(received <= 80, "and established traffic loses frames with it: {ping}");
        }
        seen.push((received, ring_full));
    }
    let off = seen[2];
    for on in &seen[..2] {
        assert!(off.1 > 10 * on.1.max(1), "shedding kept the ring from overflowing: lost {} with it, {} without", on.1, off.1);
    }
}
