//! `holdfast lab`: the appliance inline between two veth pairs in network namespaces,
//! with real traffic, for people without spare NICs.
//!
//! ```text
//!   hf-out: client 10.0.1.1 --(hf-out1 == hf-out0)-- hf-fw: holdfast run --(hf-in0 == hf-in1)-- hf-in: 10.0.2.1-8, HTTP :80
//! ```
//!
//! One flat /16: the appliance is a bump in the wire (layer 2), so ARP crosses it. The
//! lab creates everything, drives HTTP requests to each server, pings, and one outbound
//! connection attempt from a server that policy denies; it reports what passed and what
//! was denied and why, then removes everything — on success, error or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_dataplane::host::{self, Tool};
use holdfast_dataplane::sys;
use serde_json::{Value, json};

pub mod ha;
pub mod replay;
pub mod rfc9411;

pub const NAMESPACES: [&str; 3] = ["hf-out", "hf-in", "hf-fw"];
pub const CLIENT: &str = "10.0.1.1";
pub const SERVERS: usize = 8;
/// The lab's configuration (`configs/lab.yaml`).
pub const LAB_CONFIG: &str = include_str!("../../configs/lab.yaml");

/// What the lab runs besides Holdfast: namespaces and veths, checksum offload off,
/// the web servers, the client, the checks.
pub const TOOLS: [Tool; 7] = [
    Tool { command: "ip", package: "iproute2" },
    Tool { command: "ss", package: "iproute2" },
    Tool { command: "ethtool", package: "ethtool" },
    Tool { command: "curl", package: "curl" },
    Tool { command: "ping", package: "iputils-ping" },
    Tool { command: "python3", package: "python3" },
    Tool { command: "sysctl", package: "procps" },
];

pub fn server(k: usize) -> String {
    format!("10.0.2.{}", k + 1)
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (and queues per interface).
    pub workers: usize,
    /// HTTP requests per server.
    pub requests: usize,
    /// Leave the lab running.
    pub keep: bool,
}

/// Why the lab could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("holdfast lab needs root: it creates network namespaces and attaches XDP")]
    NotRoot,
    #[error("holdfast lab needs {}", .0.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "))]
    MissingTools(Vec<Tool>),
    /// A tool could not be started at all.
    #[error("{tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed; its standard error.
    #[error("{command}: {stderr}")]
    Command { command: String, stderr: String },
    /// What failed needs a package that may be missing.
    #[error("{source} (install {package})")]
    Needs {
        package: &'static str,
        #[source]
        source: Box<LabError>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the appliance stopped ({status}): {stderr}")]
    ApplianceStopped { status: std::process::ExitStatus, stderr: String },
    #[error("{0}")]
    Timeout(&'static str),
    #[error("interrupted")]
    Interrupted,
}

impl LabError {
    fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.to_string();
        move |source| LabError::Io { what, source }
    }

    fn needs(self, package: &'static str) -> LabError {
        LabError::Needs { package, source: Box::new(self) }
    }
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip").args(args).output().map_err(|source| LabError::Spawn { tool: "ip".into(), source }.needs("iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command { command: format!("ip {}", args.join(" ")), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn in_ns(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

fn run_in(ns: &str, cmd: &[&str]) -> Result<String, LabError> {
    let out = in_ns(ns, cmd).output().map_err(|source| LabError::Spawn { tool: cmd[0].to_string(), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command { command: cmd[0].to_string(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// Removes every lab namespace and the processes in it. Returns what could not be
/// removed.
pub fn down() -> Vec<String> {
    let mut left = Vec::new();
    for ns in NAMESPACES.iter().chain([&ha::STANDBY_NS, &replay::REPLAYER_NS]) {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
    if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if NAMESPACES.contains(&name) || name == ha::STANDBY_NS || name == replay::REPLAYER_NS {
                left.push(name.to_string());
            }
        }
    }
    left
}

/// Creates the namespaces and veth pairs (`queues` queues each) and the addresses.
pub fn up(queues: usize) -> Result<(), LabError> {
    let missing = host::missing(&TOOLS);
    if !missing.is_empty() {
        return Err(LabError::MissingTools(missing));
    }
    down();
    for ns in NAMESPACES {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // IPv4 only: no router solicitations or MLD reports from the veths to show up
        // as policy denials.
        run_in(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
    }
    plug(false, queues)?;
    plug(true, queues)
}

/// A veth pair with `queues` queues each way: `host` in namespace `ns`, `fw` in hf-fw,
/// both up.
fn veth_to_fw(host: &str, ns: &str, fw: &str, queues: usize) -> Result<(), LabError> {
    let q = queues.to_string();
    ip(&[
        "link",
        "add",
        host,
        "netns",
        ns,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        fw,
        "netns",
        "hf-fw",
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])?;
    ip(&["-n", ns, "link", "set", host, "up"])?;
    ip(&["-n", "hf-fw", "link", "set", fw, "up"])
}

/// Creates one side's veth pair (`queues` queues each) and its hosts' addresses: the
/// outside (client) or the inside (servers). Also what a test uses to put back an
/// interface it deleted under a running appliance.
pub fn plug(inside: bool, queues: usize) -> Result<(), LabError> {
    let (host, fw, ns) = if inside { ("hf-in1", "hf-in0", "hf-in") } else { ("hf-out1", "hf-out0", "hf-out") };
    veth_to_fw(host, ns, fw, queues)?;
    // Checksums in software on the end hosts: veth would otherwise leave them partial
    // and TCP through the appliance would fail.
    run_in(ns, &["ethtool", "-K", host, "tx", "off"]).map_err(|e| e.needs("ethtool"))?;
    if inside {
        for k in 0..SERVERS {
            ip(&["-n", "hf-in", "addr", "add", &format!("{}/16", server(k)), "dev", "hf-in1"])?;
        }
    } else {
        ip(&["-n", "hf-out", "addr", "add", &format!("{CLIENT}/16"), "dev", "hf-out1"])?;
    }
    Ok(())
}

/// A fresh directory of the lab's own under the temporary directory: `name`, this
/// process's id and a random part, created atomically with mode 0700. A fixed name
/// in a world-writable `/tmp` (it was `holdfast-lab-PID`, removed and re-created) let
/// another local user put a symbolic link there between the two, and root then wrote
/// the lab's config and web pages, and served files, wherever it pointed.
fn private_dir(name: &str) -> Result<PathBuf, LabError> {
    let prefix = format!("{name}-{}-", std::process::id());
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(LabError::io(std::env::temp_dir().join(prefix).display()))
}

struct Guard {
    children: Vec<Child>,
    keep: bool,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn xdp_attached(ifc: &str) -> bool {
    Command::new("ip").args(["-n", "hf-fw", "link", "show", ifc]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" xdp"))
}

fn interrupted() -> Result<(), LabError> {
    if sys::stop_requested() { Err(LabError::Interrupted) } else { Ok(()) }
}

/// Starts `holdfast run --config cfg` in hf-fw (the last of `g`'s children) and waits
/// until it has attached XDP to both interfaces; its standard error if it stops first.
/// Its standard error goes to `appliance.err` in the lab's directory (nothing reads a
/// pipe while the lab runs, and none is left when `--keep` has ended the lab's
/// process); with `--keep` its standard output, the summary at its stop, goes to
/// `appliance.out` there.
fn start_appliance(g: &mut Guard, exe: &Path, cfg: &Path) -> Result<(), LabError> {
    let file = |name: &str| {
        let p = g.dir.join(name);
        std::fs::File::create(&p).map_err(LabError::io(p.display()))
    };
    let out: Stdio = if g.keep { file("appliance.out")?.into() } else { Stdio::piped() };
    let appliance = in_ns("hf-fw", &[&exe.to_string_lossy(), "run", "--config", &cfg.to_string_lossy(), "--json", "--quiet"])
        .stdout(out)
        .stderr(file("appliance.err")?)
        .spawn()
        .map_err(LabError::io("starting the appliance"))?;
    g.children.push(appliance);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(xdp_attached("hf-out0") && xdp_attached("hf-in0")) {
        interrupted()?;
        if let Ok(Some(st)) = g.children.last_mut().expect("appliance").try_wait() {
            let err = std::fs::read_to_string(g.dir.join("appliance.err")).unwrap_or_default();
            return Err(LabError::ApplianceStopped { status: st, stderr: err.trim().to_string() });
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout("the appliance did not attach XDP within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops the appliance the way an operator does (SIGTERM: it drains and detaches) and
/// returns its final counters: the last JSON line of its output with `totals` (a
/// config without a deny log file writes denials there too), or `{"error": stderr}`.
fn stop_appliance(app: Child, dir: &Path) -> Result<Value, LabError> {
    // Through kill(1): the pid is all it needs.
    let _ = Command::new("kill").args(["-TERM", &app.id().to_string()]).status();
    let out = app.wait_with_output().map_err(LabError::io("waiting for the appliance"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("totals").is_some())
        .unwrap_or_else(|| json!({"error": std::fs::read_to_string(dir.join("appliance.err")).unwrap_or_default()})))
}

/// The appliance's config for `workers` workers.
pub fn config_text(workers: usize) -> String {
    if workers <= 1 {
        return LAB_CONFIG.to_string();
    }
    let cores: Vec<String> = (0..workers).map(|c| c.to_string()).collect();
    LAB_CONFIG.replace("cores: [1]", &format!("cores: [{}]", cores.join(", "))).replace("queues: 1", &format!("queues: {workers}"))
}

/// Runs the lab end to end with the `holdfast` executable `exe`.
pub fn run(exe: &Path, opts: &Options) -> Result<Value, LabError> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    sys::catch_stop_signals();
    let started = Instant::now();
    let dir = private_dir("holdfast-lab")?;
    let mut g = Guard { children: vec![], keep: opts.keep, dir: dir.clone() };
    up(opts.workers.max(1))?;
    interrupted()?;

    // The web servers: one per address, each with its own page.
    for k in 0..SERVERS {
        let root = dir.join(format!("www{k}"));
        std::fs::create_dir_all(&root).map_err(LabError::io(root.display()))?;
        std::fs::write(root.join("index.html"), format!("hello from {}\n", server(k))).map_err(LabError::io(root.display()))?;
        let child = in_ns("hf-in", &["python3", "-m", "http.server", "80", "--bind", &server(k), "--directory", &root.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn { tool: "python3".into(), source }.needs("python3"))?;
        g.children.push(child);
    }
    let cfg = dir.join("lab.yaml");
    std::fs::write(&cfg, config_text(opts.workers)).map_err(LabError::io(cfg.display()))?;
    start_appliance(&mut g, exe, &cfg)?;
    // Wait for the servers to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run_in("hf-in", &["ss", "-ltn"]).is_ok_and(|o| o.matches(":80 ").count() >= SERVERS) {
        interrupted()?;
        if Instant::now() > deadline {
            return Err(LabError::Timeout("the web servers did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Traffic: HTTP to every server, pings, and one connection a server may not open.
    let (mut ok, mut failed) = (0, 0);
    for k in 0..SERVERS {
        for _ in 0..opts.requests.max(1) {
            interrupted()?;
            let want = format!("hello from {}\n", server(k));
            match run_in("hf-out", &["curl", "-s", "-m", "5", &format!("http://{}/", server(k))]) {
                Ok(body) if body == want => ok += 1,
                _ => failed += 1,
            }
        }
    }
    let (mut pings_ok, mut pings_failed) = (0, 0);
    for k in 0..SERVERS {
        interrupted()?;
        match run_in("hf-out", &["ping", "-c", "1", "-W", "2", &server(k)]) {
            Ok(_) => pings_ok += 1,
            Err(_) => pings_failed += 1,
        }
    }
    let outbound = run_in("hf-in", &["curl", "-s", "-m", "2", "--connect-timeout", "1", "--interface", &server(0), &format!("http://{CLIENT}/")]).is_ok();

    let report = |appliance: Value, leftovers: bool| {
        json!({
            "workers": opts.workers,
            "requests_ok": ok,
            "requests_failed": failed,
            "pings_ok": pings_ok,
            "pings_failed": pings_failed,
            "outbound_connection_from_server": if outbound { "passed" } else { "blocked" },
            "denied": appliance["totals"]["drops"].clone(),
            "appliance": appliance,
            "leftovers": leftovers,
            "elapsed_s": started.elapsed().as_secs_f64(),
        })
    };
    if opts.keep {
        let mut v = report(Value::Null, false);
        v["dir"] = json!(dir);
        std::mem::forget(g);
        return Ok(v);
    }
    let appliance = stop_appliance(g.children.pop().expect("appliance"), &dir)?;
    let detached = !xdp_attached("hf-out0") && !xdp_attached("hf-in0");
    // configs/lab.yaml logs denials next to the config, in the lab's directory.
    let log = std::fs::read_to_string(dir.join("denials.log")).unwrap_or_default();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let server_syn = lines.iter().find(|e| e["src_ip"] == json!(server(0)) && e["dest_port"] == json!(80)).cloned();
    drop(g);
    let left = down();
    let mut v = report(appliance, !left.is_empty());
    v["xdp_detached_after_sigterm"] = json!(detached);
    v["deny_log"] = json!({"lines": lines.len(), "server_syn": server_syn});
    Ok(v)
}

/// The lab's report for people.
pub fn human(v: &Value) -> String {
    let n = SERVERS as u64;
    let req = v["requests_ok"].as_u64().unwrap_or(0) + v["requests_failed"].as_u64().unwrap_or(0);
    let t = &v["appliance"]["totals"];
    format!(
        "holdfast lab: {} worker(s); a client (10.0.1.1) in hf-out, {n} web servers (10.0.2.1-8) in hf-in, Holdfast inline in hf-fw\n\
         \x20 http       {} of {req} requests returned the right page\n\
         \x20 ping       {} of {n} servers answered\n\
         \x20 outbound   a server's connection to the client: {}\n\
         \x20 denied     {}\n\
         \x20 deny log   {} line(s); the server's SYN: {}\n\
         \x20 forwarded  {} frames to inside, {} to outside; handoffs {} / {}\n\
         \x20 detached   {}\n\
         \x20 teardown   {} ({:.1} s in all)",
        v["workers"],
        v["requests_ok"],
        v["pings_ok"],
        v["outbound_connection_from_server"].as_str().unwrap_or("?"),
        v["denied"],
        v["deny_log"]["lines"],
        v["deny_log"]["server_syn"],
        t["tx"]["inside"],
        t["tx"]["outside"],
        t["handoff_out"],
        t["handoff_in"],
        if v["xdp_detached_after_sigterm"] == json!(true) { "no XDP program left after SIGTERM" } else { "XDP STILL ATTACHED" },
        if v["leftovers"] == json!(false) { "namespaces removed" } else { "LEFTOVERS: run `holdfast lab down`" },
        v["elapsed_s"].as_f64().unwrap_or(0.0)
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// The lab's directory is a new one each time, created with mode 0700: a name
    /// planted in the temporary directory beforehand (a link to somewhere root should
    /// not write) is never used.
    #[test]
    fn the_lab_directory_is_fresh_and_private() {
        let planted = std::env::temp_dir().join(format!("holdfast-lab-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink("/nonexistent-target", &planted).unwrap();
        let (a, b) = (super::private_dir("holdfast-lab-test").unwrap(), super::private_dir("holdfast-lab-test").unwrap());
        for d in [&a, &b] {
            let m = std::fs::symlink_metadata(d).unwrap();
            assert!(m.is_dir() && !m.file_type().is_symlink(), "{}", d.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", d.display());
            assert_ne!(d, &planted);
        }
        assert_ne!(a, b);
        for p in [a, b] {
            std::fs::remove_dir(p).unwrap();
        }
        std::fs::remove_file(planted).unwrap();
    }
}
