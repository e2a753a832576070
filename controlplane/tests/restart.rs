//! A restart keeps every connection (root only; CI runs as root): a long download and
//! 1,000 idle keep-alive connections through the lab appliance, which is stopped with
//! SIGTERM and started again — once with another worker count, once with the same —
//! and, as the control, once without `state.snapshot_dir`, where the connections must
//! break (the failure this feature exists to prevent).

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_controlplane::lab;
use serde_json::Value;

/// `/big` (random bytes, also written to argv[1]) and `/k` ("ok\n") over HTTP/1.1 with
/// keep-alive, on each of the eight server addresses.
const SERVER_PY: &str = r#"
import random, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
random.seed(7)
BIG = random.randbytes(16 << 20)
open(sys.argv[1], "wb").write(BIG)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = BIG if self.path == "/big" else b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
for k in range(8):
    threading.Thread(target=S((f"10.0.2.{k + 1}", 80), H).serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Opens argv[1] keep-alive connections spread over the servers and asks each for
/// `/k`; then again for every line on stdin. Prints {"ok": answered} per round.
const CLIENT_PY: &str = r#"
import json, selectors, socket, sys, time
n = int(sys.argv[1])
socks = []
for i in range(n):
    for attempt in range(20):
        try:
            socks.append(socket.create_connection((f"10.0.2.{i % 8 + 1}", 80), timeout=5))
            break
        except OSError:
            time.sleep(0.2)
def ask(wait):
    sel = selectors.DefaultSelector()
    got = {}
    for s in socks:
        try:
            s.setblocking(False)
            s.send(b"GET /k HTTP/1.1\r\nHost: lab\r\n\r\n")
            sel.register(s, selectors.EVENT_READ)
            got[s] = b""
        except OSError:
            pass
    ok, deadline = 0, time.time() + wait
    while got and time.time() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if d:
                got[s] += d
            if not d or got[s].endswith(b"ok\n"):
                ok += got[s].endswith(b"ok\n")
                sel.unregister(s)
                del got[s]
    sel.close()
    return ok
print(json.dumps({"ok": ask(30), "of": len(socks)}), flush=True)
for line in sys.stdin:
    print(json.dumps({"ok": ask(float(line)), "of": len(socks)}), flush=True)
"#;

const KEEPALIVE: usize = 1000;

/// The lab's namespace names are fixed: one lab at a time.
static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Down(Vec<Child>, PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        lab::down();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn xdp_on(ifc: &str) -> bool {
    Command::new("ip").args(["-n", "hf-fw", "link", "show", ifc]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" xdp"))
}

/// Every veth end of the lab to `q` queues (the appliance serves one per worker).
fn queues(q: usize) {
    let q = q.to_string();
    for (ns, ifc) in [("hf-fw", "hf-out0"), ("hf-fw", "hf-in0"), ("hf-out", "hf-out1"), ("hf-in", "hf-in1")] {
        let out = in_ns(ns, &["ethtool", "-L", ifc, "rx", &q, "tx", &q]).output().unwrap();
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("unmodified"),
            "ethtool -L {ifc}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts `holdfast run` in the lab with `workers` workers, and state kept in `state`
/// (or not); returns once XDP is attached on both sides.
fn appliance(dir: &Path, workers: usize, state: Option<&Path>, name: &str) -> Child {
    let mut text = lab::config_text(workers);
    if let Some(s) = state {
        text.push_str(&format!("\nstate:\n  snapshot_dir: {}\n", s.display()));
    }
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, text).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    let app =
        in_ns("hf-fw", &[env!("CARGO_BIN_EXE_holdfast"), "run", "--quiet", "--json", "--config"]).arg(&cfg).stdout(Stdio::piped()).stderr(err).spawn().unwrap();
    let t = Instant::now();
    while !(xdp_on("hf-out0") && xdp_on("hf-in0")) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name} never attached: {}",
            std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    app
}

/// SIGTERM, then the final JSON.
fn stop(mut app: Child, dir: &Path, name: &str) -> Value {
    // SAFETY-free: kill(1) by pid; `ip netns exec` exec'd holdfast, so the pid is its.
    assert!(Command::new("kill").args(["-TERM", &app.id().to_string()]).status().unwrap().success());
    let out = std::mem::take(&mut app.stdout).map(|mut s| {
        let mut b = String::new();
        std::io::Read::read_to_string(&mut s, &mut b).unwrap();
        b
    });
    assert!(app.wait().unwrap().success(), "{name} failed: {}", std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default());
    serde_json::from_str(out.as_deref().unwrap_or("")).unwrap_or_else(|_| panic!("{name}'s final JSON: {out:?}"))
}

/// The drops that would mean a connection was forgotten or misjudged.
fn forgotten(v: &Value) -> u64 {
    let d = &v["totals"]["drops"];
    ["reply_to_evicted", "reply_to_expired", "reply_to_closed", "midstream_no_state", "out_of_window"].iter().map(|k| d[k].as_u64().unwrap_or(0)).sum()
}

fn round(stdin: &mut ChildStdin, stdout: &mut BufReader<ChildStdout>, wait_s: u32) -> Value {
    writeln!(stdin, "{wait_s}").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("client said {line:?}"))
}

#[test]
fn a_restart_keeps_a_download_and_a_thousand_idle_connections() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("hf-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = Down(vec![], dir.clone());
    lab::up(2).unwrap();
    queues(1);
    let state = dir.join("state");
    let big = dir.join("big.bin");
    let mut server = in_ns("hf-in", &["python3", "-c", SERVER_PY]).arg(&big).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    g.0.push(server);

    let run1 = appliance(&dir, 1, Some(&state), "run1");
    let mut client = in_ns("hf-out", &["python3", "-c", CLIENT_PY, &KEEPALIVE.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut cin = client.stdin.take().unwrap();
    let mut cout = BufReader::new(client.stdout.take().unwrap());
    g.0.push(client);
    let mut first = String::new();
    cout.read_line(&mut first).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["ok"], KEEPALIVE, "every keep-alive connection answered before any restart: {first}");
    // 16 MiB at 1.5 MB/s: about 11 s, across both restarts.
    let got = dir.join("got.bin");
    let download = in_ns("hf-out", &["curl", "-sS", "--limit-rate", "1500k", "--max-time", "90", "-o"])
        .arg(&got)
        .arg("http://10.0.2.1/big")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // 1 worker -> 2 workers.
    let v1 = stop(run1, &dir, "run1");
    assert!(v1["state"]["flows"].as_u64().unwrap() > KEEPALIVE as u64, "the snapshot holds every connection: {}", v1["state"]);
    queues(2);
    let run2 = appliance(&dir, 2, Some(&state), "run2");
    let err2 = std::fs::read_to_string(dir.join("run2.err")).unwrap();
    assert!(err2.contains("state: restored"), "{err2}");
    let r = round(&mut cin, &mut cout, 30);
    assert_eq!(r["ok"], KEEPALIVE, "after a restart with another worker count: {r}");
    std::thread::sleep(Duration::from_secs(2));

    // 2 workers -> 2 workers.
    let v2 = stop(run2, &dir, "run2");
    let run3 = appliance(&dir, 2, Some(&state), "run3");
    let r = round(&mut cin, &mut cout, 30);
    assert_eq!(r["ok"], KEEPALIVE, "after a restart with the same config: {r}");
    // On demand, while it runs: every connection is in it.
    let out = in_ns("hf-fw", &[env!("CARGO_BIN_EXE_holdfast"), "snapshot", "--json"]).output().unwrap();
    assert!(out.status.success(), "holdfast snapshot: {}", String::from_utf8_lossy(&out.stderr));
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(w["flows"].as_u64().unwrap() >= KEEPALIVE as u64, "{w}");
    assert_eq!(w["missing_workers"], serde_json::json!([]));
    let out = download.wait_with_output().unwrap();
    assert!(out.status.success(), "the download failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&big).unwrap(), "the download is not byte-identical");
    let v3 = stop(run3, &dir, "run3");
    for (name, v) in [("run1", &v1), ("run2", &v2), ("run3", &v3)] {
        let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
        eprintln!("{name}: {}; drops {}", err.lines().filter(|l| l.contains("state:")).collect::<Vec<_>>().join(" / "), v["totals"]["drops"]);
        assert_eq!(forgotten(v), 0, "{name} forgot or misjudged a connection: {}", v["totals"]["drops"]);
    }

    // The control: a restart without state forgets them all, and says so.
    let run4 = appliance(&dir, 2, None, "run4");
    let r = round(&mut cin, &mut cout, 3);
    let v4 = stop(run4, &dir, "run4");
    eprintln!("run4 (no state): {r}; drops {}", v4["totals"]["drops"]);
    assert!(r["ok"].as_u64().unwrap() < KEEPALIVE as u64 / 10, "without a snapshot the connections should break: {r}");
    assert!(v4["totals"]["drops"]["midstream_no_state"].as_u64().unwrap_or(0) > 0, "{}", v4["totals"]["drops"]);
}

#[test]
fn a_damaged_snapshot_is_refused_whole_and_the_start_is_clean() {
    need_lab!();
    let _l = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("hf-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _g = Down(vec![], dir.clone());
    lab::up(1).unwrap();
    // A snapshot of another format version (its header otherwise intact).
    let mut h = holdfast_pipeline::snapshot::Header {
        seed_policy: holdfast_pipeline::snapshot::SEED_AND_CONSTANTS_CARRIED,
        seed: 1,
        written_unix_ns: 0,
        workers: 1,
        tomb_sets: 0,
        flows: 0,
        tombstones: 0,
        build: holdfast_pipeline::snapshot::Header::this_build(),
    }
    .encode();
    h[8] = 9;
    std::fs::write(state.join("holdfast.snapshot"), h).unwrap();
    let app = appliance(&dir, 1, Some(&state), "refused");
    let status = in_ns("hf-fw", &[env!("CARGO_BIN_EXE_holdfast"), "status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let v = stop(app, &dir, "refused");
    let err = std::fs::read_to_string(dir.join("refused.err")).unwrap();
    assert!(err.contains("snapshot REFUSED, starting with empty tables") && err.contains("format version 9"), "{err}");
    assert_eq!(status["state"]["restored"], false, "{}", status["state"]);
    assert!(status["state"]["refused"].as_str().unwrap().contains("format version 9"));
    assert!(state.join("holdfast.snapshot.refused").exists(), "the refused file is kept aside, not retried");
    // The clean start ran, and its stop wrote a good snapshot in place.
    assert_eq!(v["state"]["flows"], 0, "{}", v["state"]);
    assert!(holdfast_controlplane::state::find(&state).unwrap().is_some());
}
