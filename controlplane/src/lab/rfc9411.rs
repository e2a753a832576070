//! `holdfast lab --rfc9411`: real TCP connections through the appliance, measured as
//! RFC 9411 measures a firewall — and, in the same run, through Linux forwarding with
//! an equivalent nftables rule set.
//!
//! ```text
//!   hf-out: load clients, sources 10.0.1.1-K ══ hf-fw: the system under test ══ hf-in: servers 10.0.2.1-8:80
//! ```
//!
//! Per system: connections per second (one GET per connection, FIN close), transactions
//! per second (keep-alive), then concurrent connection capacity: `connections` opened
//! and each used once (the table's fill), left idle while a spoofed SYN flood of
//! `flood` x the table's size comes from 198.18.0.0/15, then every one asked again —
//! the web farm's story: does every keep-alive connection still get its reply?
//!
//! A process here may hold only as many descriptors as its hard RLIMIT_NOFILE allows
//! (and raising it needs CAP_SYS_RESOURCE): the connections are spread over as many
//! client processes, and as many server processes sharing the servers' addresses
//! (SO_REUSEPORT), as that takes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use holdfast_dataplane::host::{self, Tool};
use serde_json::{Value, json};

use super::{Guard, LabError, SERVERS, config_text, down, in_ns, interrupted, ip, run_in, server, start_appliance, stop_appliance};
use crate::load::client;
use crate::report::thousands as group;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Holdfast,
    Linux,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Holdfast => "holdfast",
            System::Linux => "linux",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub systems: Vec<System>,
    /// Concurrent connections to hold (the tables get an eighth more: [`capacity`]).
    pub connections: usize,
    /// How long the cps and tps phases measure, each.
    pub seconds: f64,
    /// Connections in flight (cps) / open (tps).
    pub concurrency: usize,
    /// Client source addresses (10.0.1.1 ..).
    pub sources: usize,
    /// The flood: SYNs = flood x the table's capacity, at `flood_pps`.
    pub flood: f64,
    pub flood_pps: u64,
    /// The response body's size.
    pub object: usize,
    pub report: Option<PathBuf>,
    /// The tables' size for the rate phases (closed connections stay in TIME_WAIT for
    /// 120 s in both systems: the cps phase leaves rate x 120 s of them).
    pub rate_table: usize,
    /// Holdfast's `workers.shed_syns`.
    pub shed_syns: bool,
}

/// The tools besides the lab's own: the Linux system's rules, and pinning the load.
pub const NFT: Tool = Tool { command: "nft", package: "nftables" };
pub const TASKSET: Tool = Tool { command: "taskset", package: "util-linux" };

/// The table size both systems get: the held connections and an eighth more (the cps
/// phase's closed connections linger in TIME_WAIT in both tables).
pub fn capacity(connections: usize) -> usize {
    (connections + connections / 8).max(1024)
}

/// How many connections one process may hold here.
fn per_process() -> usize {
    let lim = holdfast_dataplane::sys::raise_nofile(1 << 20).unwrap_or(1024);
    (lim as usize).saturating_sub(200).clamp(100, 1 << 20)
}

struct Sysctl {
    key: &'static str,
    old: String,
}

/// Puts a host-wide sysctl back as it was.
struct Restore(Vec<Sysctl>);

impl Drop for Restore {
    fn drop(&mut self) {
        for s in &self.0 {
            let _ = std::process::Command::new("sysctl").args(["-qw", &format!("{}={}", s.key, s.old)]).status();
        }
    }
}

fn sysctl(ns: &str, kv: &[&str]) -> Result<(), LabError> {
    let mut cmd = vec!["sysctl", "-qw"];
    cmd.extend_from_slice(kv);
    run_in(ns, &cmd).map(|_| ())
}

/// Runs every system in turn; one JSON object with each one's results.
pub fn run(exe: &Path, o: &Options) -> Result<Value, LabError> {
    if !holdfast_dataplane::sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let started = Instant::now();
    // What one process may hold here (raising the limit is a system call: once).
    let per = per_process();
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for &system in &o.systems {
        interrupted()?;
        if system == System::Linux {
            let missing = host::missing(&[NFT]);
            if !missing.is_empty() {
                skipped.push(json!({"system": "linux", "why": format!("needs {}", missing.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "))}));
                continue;
            }
        }
        results.push(one(exe, o, system, per)?);
    }
    let v = json!({
        "connections": o.connections,
        "capacity": capacity(o.connections),
        "rate_table": o.rate_table,
        "seconds": o.seconds,
        "concurrency": o.concurrency,
        "sources": o.sources,
        "object": o.object,
        "flood_syns": (o.flood * capacity(o.connections) as f64) as u64,
        "flood_pps": o.flood_pps,
        "shed_syns": o.shed_syns,
        "per_process": per,
        "systems": results,
        "skipped": skipped,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    if let Some(path) = &o.report {
        draw(path, &v).map_err(LabError::io(path.display()))?;
    }
    Ok(v)
}

fn servers_args() -> Vec<String> {
    (0..SERVERS).map(|k| format!("{}:80", server(k))).collect()
}

/// Longer than the appliance's report interval (1 s): a status read this long after
/// the connections are held shows them.
const FILL_WAIT: Duration = Duration::from_millis(1500);

/// The appliance's core (configs/lab.yaml's `workers.cores`); Linux's forwarding is
/// steered there too (RPS), and the load runs on the other cores.
const APPLIANCE_CORE: usize = 1;

/// The cores the load (clients, servers, flood) runs on: all but the appliance's, so
/// that the system under test has one core to itself in both runs; all on a 1-core
/// machine.
fn load_cores() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).filter(|&c| c != APPLIANCE_CORE || n == 1).collect()
}

/// [`load_cores`] as a CPU mask for `rps_cpus` (the first 64 cores).
fn load_mask() -> String {
    format!("{:x}", load_cores().into_iter().filter(|&c| c < 64).fold(0u64, |m, c| m | 1 << c))
}

fn spawn(ns: &str, exe: &Path, args: &[String]) -> Result<Child, LabError> {
    let cores = load_cores().iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut cmd: Vec<&str> = vec!["taskset", "-c", &cores, exe.to_str().unwrap_or("holdfast")];
    cmd.extend(args.iter().map(String::as_str));
    in_ns(ns, &cmd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(LabError::io(format!("starting {}", args.join(" "))))
}

/// The last line of `text` that is a JSON object.
fn last_json_line(text: &str) -> Option<Value> {
    text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok())
}

/// The last JSON object a finished child printed; its standard error if none.
fn last_json(child: Child, what: &str) -> Result<Value, LabError> {
    let out = child.wait_with_output().map_err(LabError::io(what))?;
    last_json_line(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| LabError::Command { command: what.to_string(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
}

fn stop(child: Child, what: &str) -> Result<Value, LabError> {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    last_json(child, what)
}

fn client_args(o: &Options, mode: &str, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = vec!["load".into(), "client".into(), "--mode".into(), mode.into()];
    for s in servers_args() {
        a.push("--server".into());
        a.push(s);
    }
    a.push("--source".into());
    a.push(format!("10.0.1.1-10.0.1.{}", o.sources.clamp(1, 250)));
    a.extend(extra.iter().cloned());
    a
}

/// A system set up: the topology, the system under test with its table, the servers.
struct Env {
    g: Guard,
    restore: Restore,
    system: System,
    before: Value,
    softnet: u64,
}

/// Frames the kernel dropped because a CPU's receive backlog was full
/// (`/proc/net/softnet_stat`, second column, all CPUs; host-wide): where Linux's
/// forwarding — and the end hosts' receive of what either system forwards — loses
/// packets under bursts.
fn softnet_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines().filter_map(|l| l.split_whitespace().nth(1)).filter_map(|h| u64::from_str_radix(h, 16).ok()).sum()
}

/// Creates the lab for `system` with a table of `cap` entries and `n_servers` server
/// processes.
fn setup(exe: &Path, o: &Options, system: System, cap: usize, n_servers: usize, per: usize) -> Result<Env, LabError> {
    let dir = super::private_dir("holdfast-rfc9411")?;
    let mut env = Env { g: Guard { children: vec![], keep: false, dir: dir.clone() }, restore: Restore(Vec::new()), system, before: Value::Null, softnet: 0 };
    super::up(1)?;
    // Client addresses, ports 1024-65535, queues for many connections.
    for k in 2..=o.sources.clamp(1, 250) {
        ip(&["-n", "hf-out", "addr", "add", &format!("10.0.1.{k}/16"), "dev", "hf-out1"])?;
    }
    sysctl("hf-out", &["net.ipv4.ip_local_port_range=1024 65535"])?;
    // The end hosts are other machines: what either system forwards to them is
    // received (TCP, the servers' and clients' timers) on the load's cores (RPS), not
    // on the firewall's, where a veth transmit would otherwise run it.
    for (ns, ifc) in [("hf-out", "hf-out1"), ("hf-in", "hf-in1")] {
        run_in(ns, &["sh", "-c", &format!("echo {} > /sys/class/net/{ifc}/queues/rx-0/rps_cpus", load_mask())])?;
    }
    for ns in ["hf-out", "hf-in"] {
        sysctl(ns, &["net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535"])?;
    }
    match system {
        System::Holdfast => {
            let cfg = dir.join("lab.yaml");
            std::fs::write(&cfg, appliance_config(cap, o.shed_syns)).map_err(LabError::io(cfg.display()))?;
            start_appliance(&mut env.g, exe, &cfg)?;
        }
        System::Linux => {
            // A router between two /24s with nf_conntrack and the same policy.
            ip(&["-n", "hf-fw", "addr", "add", "10.0.1.254/24", "dev", "hf-out0"])?;
            ip(&["-n", "hf-fw", "addr", "add", "10.0.2.254/24", "dev", "hf-in0"])?;
            ip(&["-n", "hf-out", "route", "add", "10.0.2.0/24", "via", "10.0.1.254"])?;
            ip(&["-n", "hf-in", "route", "add", "10.0.1.0/24", "via", "10.0.2.254"])?;
            sysctl("hf-fw", &["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])?;
            // The router's receive work (conntrack, nftables, forwarding) on the
            // appliance's core, as Holdfast's worker has it.
            for ifc in ["hf-out0", "hf-in0"] {
                let mask = format!("{:x}", 1u64 << APPLIANCE_CORE);
                run_in("hf-fw", &["sh", "-c", &format!("echo {mask} > /sys/class/net/{ifc}/queues/rx-0/rps_cpus")])?;
            }
            let rules = "table inet hfbench {\n chain forward {\n  type filter hook forward priority filter; policy drop;\n  ct state established,related accept\n  ct state new iifname \"hf-out0\" ip daddr 10.0.2.0/24 tcp dport 80 accept\n  ct state new icmp type echo-request accept\n }\n}\n";
            let f = dir.join("rules.nft");
            std::fs::write(&f, rules).map_err(LabError::io(f.display()))?;
            run_in("hf-fw", &["nft", "-f", &f.to_string_lossy()]).map_err(|e| e.needs("nftables"))?;
            // The conntrack table's size is host-wide: set for the run, put back after.
            host_sysctl(&mut env.restore, "net.netfilter.nf_conntrack_max", cap);
            env.before = conntrack_stats();
        }
    }
    // Both systems: the per-CPU receive backlog (host-wide) is Linux's queue at the
    // firewall, and the queue Holdfast's transmitted frames enter the end hosts by.
    host_sysctl(&mut env.restore, "net.core.netdev_max_backlog", QUEUE);
    env.softnet = softnet_drops();
    // The servers: each process holds at most `per` connections.
    let mut a = vec!["load".to_string(), "serve".into(), "--object".into(), o.object.to_string(), "--max-conns".into(), per.to_string()];
    for s in servers_args() {
        a.push("--listen".to_string());
        a.push(s);
    }
    for _ in 0..n_servers {
        env.g.children.insert(0, spawn("hf-in", exe, &a)?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run_in("hf-in", &["ss", "-ltn"]).is_ok_and(|out| out.matches(":80 ").count() >= SERVERS * n_servers) {
        interrupted()?;
        if Instant::now() > deadline {
            return Err(LabError::Timeout("the load servers did not start listening within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(env)
}

/// Frames each system may queue at the firewall. Holdfast: descriptors per AF_XDP ring
/// (`workers.ring_size`, with four UMEM frames per descriptor: fill, RX, TX and
/// completion of both interfaces). Linux: its per-CPU receive backlog
/// (`net.core.netdev_max_backlog`, 1,000 by default), where its forwarding queues.
/// Measured here with 1M held connections (one run each): the answering round lost
/// 3,165 and 5,270 connections to timeouts with 2,048-descriptor rings, 861 and 875
/// with 8,192, 178 with 16,384, 300 with 32,768 (the backlog, then at 1,000, lost
/// frames instead), 102 with rings and backlog at 16,384 — frames the queues could
/// not take while the check's requests and responses came in bursts on top of the
/// flood (docs/rfc9411.md).
const QUEUE: usize = 16_384;

/// configs/lab.yaml for this benchmark: a table of `cap` entries, rings of [`QUEUE`],
/// SYN shedding as asked.
fn appliance_config(cap: usize, shed_syns: bool) -> String {
    let mut text = config_text(1);
    for (from, to) in [
        ("capacity: 65536", format!("capacity: {cap}")),
        ("umem_frames: 8192 ", format!("umem_frames: {} ", 4 * QUEUE)),
        ("ring_size: 2048 ", format!("ring_size: {QUEUE} ")),
        ("shed_syns: on ", format!("shed_syns: {} ", if shed_syns { "on" } else { "off" })),
    ] {
        // A test parses the result: a setting the lab's file no longer spells this way
        // fails it instead of leaving the default.
        text = text.replace(from, &to);
    }
    text
}

/// Sets a host-wide sysctl for the run; `restore` puts it back after. Left alone
/// where this kernel has no such setting.
fn host_sysctl(restore: &mut Restore, key: &'static str, value: usize) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let old = std::fs::read_to_string(&path).map(|s| s.trim().to_string()).unwrap_or_default();
    if !old.is_empty() {
        restore.0.push(Sysctl { key, old });
        let _ = std::process::Command::new("sysctl").args(["-qw", &format!("{key}={value}")]).status();
    }
}

/// Stops the system and the servers; their counters. Removes the lab.
fn finish(mut env: Env) -> Result<Value, LabError> {
    let mut appliance = match env.system {
        System::Holdfast => {
            let t = stop_appliance(env.g.children.pop().expect("appliance"), &env.g.dir)?["totals"].clone();
            json!({
                "drops": t["drops"], "table": t["table"], "evictions": t["evictions"], "expirations": t["expirations"],
                "assured_expirations": t["assured_expirations"], "flows_created": t["flows_created"],
                "table_full": t["table_full"], "deny_log": deny_log(&env.g.dir.join("denials.log")), "totals": t,
            })
        }
        System::Linux => json!({"conntrack_before": env.before, "conntrack_after": conntrack_stats()}),
    };
    appliance["softnet_drops"] = json!(softnet_drops().saturating_sub(env.softnet));
    let mut servers = Vec::new();
    while let Some(c) = env.g.children.pop() {
        servers.push(stop(c, "load serve")?);
    }
    drop(env);
    down();
    Ok(json!({"appliance": appliance, "servers": servers}))
}

/// One system: the rate phases on a table sized for them, then the capacity phase on a
/// fresh table sized for the held connections.
fn one(exe: &Path, o: &Options, system: System, per: usize) -> Result<Value, LabError> {
    // 1. Connections per second, 2. transactions per second (keep-alive).
    let env = setup(exe, o, system, o.rate_table, 1, per)?;
    let secs = format!("{}ms", (o.seconds * 1000.0).round() as u64);
    let cps = last_json(
        spawn("hf-out", exe, &client_args(o, "cps", &["--duration".into(), secs.clone(), "--concurrency".into(), o.concurrency.to_string()]))?,
        "load client --mode cps",
    )?;
    interrupted()?;
    let tps = last_json(
        spawn("hf-out", exe, &client_args(o, "tps", &["--duration".into(), secs, "--concurrency".into(), o.concurrency.to_string()]))?,
        "load client --mode tps",
    )?;
    let rates_counters = finish(env)?;
    interrupted()?;

    // 3. Concurrent connections, a SYN flood while they idle, then each one asked.
    let cap = capacity(o.connections);
    let n_procs = o.connections.div_ceil(per).max(1);
    // The kernel spreads connections over the server processes by hash (SO_REUSEPORT),
    // not evenly: a fifth more of them, so that none reaches its descriptor cap (the
    // first 1M run had 442 connections refused by full server processes).
    let n_servers = (o.connections + o.connections / 5).div_ceil(per).max(1);
    let env = setup(exe, o, system, cap, n_servers, per)?;
    let flood_syns = (o.flood * cap as f64) as u64;
    let flood_secs = if o.flood_pps > 0 { flood_syns as f64 / o.flood_pps as f64 } else { 0.0 };
    // Ask again once half the flood is in: the table is full of it by then.
    // (The table's fill is read first: the appliance reports once a second.)
    let idle = Duration::from_secs_f64((flood_secs / 2.0).max(1.0) + FILL_WAIT.as_secs_f64());
    let hold_started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..n_procs {
        let share = o.connections / n_procs + usize::from(i < o.connections % n_procs);
        let extra = [
            "--connections".to_string(),
            share.to_string(),
            "--concurrency".into(),
            "256".into(),
            "--idle".into(),
            format!("{}ms", idle.as_millis()),
            "--timeout".into(),
            "10s".into(),
        ];
        clients.push(spawn("hf-out", exe, &client_args(o, "hold", &extra))?);
    }
    // Each client says "held" when its connections are open: then the flood starts.
    let mut held_events = Vec::new();
    let mut outs = Vec::new();
    for c in &mut clients {
        let out = c.stdout.take().expect("piped");
        let mut r = BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(LabError::io("a load client"))? == 0 {
                break;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == "held"
            {
                held_events.push(v);
                break;
            }
        }
        outs.push(r);
    }
    let open_seconds = hold_started.elapsed().as_secs_f64();
    std::thread::sleep(FILL_WAIT);
    let table_when_held = appliance_fill(exe, system);
    let mut flood = None;
    if flood_syns > 0 {
        let mut a = vec!["load".to_string(), "flood".into(), "--pps".into(), o.flood_pps.to_string(), "--count".into(), flood_syns.to_string()];
        for s in servers_args() {
            a.push("--target".into());
            a.push(s);
        }
        flood = Some(spawn("hf-out", exe, &a)?);
    }
    let mut holds = Vec::new();
    for (c, mut r) in clients.into_iter().zip(outs) {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut rest);
        let _ = c.wait_with_output();
        let v = last_json_line(&rest).ok_or_else(|| LabError::Command { command: "load client --mode hold".into(), stderr: "no result".into() })?;
        holds.push(v);
    }
    let table_during_flood = appliance_fill(exe, system);
    let flood = match flood {
        Some(f) => stop(f, "load flood")?,
        None => json!({"sent": 0}),
    };
    let mut hold = client::merge(&holds).map_err(|e| LabError::Command { command: "merging the load clients".into(), stderr: e })?;
    hold["open_seconds_all"] = json!(open_seconds);
    hold["opened_per_second_all"] = json!(if open_seconds > 0.0 { hold["held"].as_f64().unwrap_or(0.0) / open_seconds } else { 0.0 });
    let hold_counters = finish(env)?;
    Ok(json!({
        "system": system.name(),
        "cps": cps,
        "tps": tps,
        "rates_counters": rates_counters,
        "hold": hold,
        "held_events": held_events,
        "flood": flood,
        "table_when_held": table_when_held,
        "table_during_flood": table_during_flood,
        "hold_counters": hold_counters,
        "processes": n_procs,
        "server_processes": n_servers,
    }))
}

/// What the deny log says: lines by reason, and the first few (the log is read up to
/// 64 MiB; its rate limit bounds it anyway).
fn deny_log(path: &Path) -> Value {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(64 << 20).read_to_string(&mut text);
    }
    let mut by_reason = serde_json::Map::new();
    let mut first = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        // A reply to a flow whose state is gone says which class the flow was in.
        let mut reason = v["reason"].as_str().unwrap_or("?").to_string();
        if let Some(class) = v["state_removed"]["class"].as_str() {
            reason = format!("{reason} ({class})");
        }
        let e = by_reason.entry(reason).or_insert(json!(0));
        let n = e.as_u64().unwrap_or(0) + 1;
        *e = json!(n);
        // The first two of each kind.
        if n <= 2 && first.len() < 20 {
            first.push(v);
        }
    }
    json!({"lines": text.lines().count(), "by_reason": by_reason, "first": first})
}

/// How full the system's table is now: Holdfast's `/status`, Linux's conntrack count.
fn appliance_fill(exe: &Path, system: System) -> Value {
    match system {
        System::Holdfast => match run_in("hf-fw", &[&exe.to_string_lossy(), "status", "--json"]) {
            Ok(s) => serde_json::from_str::<Value>(&s)
                .map(|v| {
                    let t = &v["total"];
                    json!({"flows": t["entries"], "capacity": t["capacity"], "classes": t["classes"], "adaptive_scale": t["adaptive_scale"]})
                })
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        },
        System::Linux => {
            let n = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count").ok();
            let ns = run_in("hf-fw", &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).ok();
            json!({"flows": ns.or(n).and_then(|s| s.trim().parse::<u64>().ok())})
        }
    }
}

/// `conntrack -S` in hf-fw summed over CPUs (insert_failed, drop, early_drop, ...);
/// null without conntrack-tools.
fn conntrack_stats() -> Value {
    let Ok(out) = run_in("hf-fw", &["conntrack", "-S"]) else { return Value::Null };
    let mut sums = serde_json::Map::new();
    for word in out.split_whitespace() {
        if let Some((k, v)) = word.split_once('=')
            && let Ok(n) = v.parse::<u64>()
        {
            let e = sums.entry(k.to_string()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + n);
        }
    }
    Value::Object(sums)
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |us| format!("{:.2}", us / 1000.0))
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => group(x as u64),
        Some(x) => group(x.round() as u64),
        None => "-".into(),
    }
}

/// Frames lost on the way: Holdfast's RX rings (full when the worker falls behind) and
/// the kernel's receive backlogs (host-wide: Linux's forwarding and the end hosts).
fn lost(a: &Value) -> String {
    let ring = ["inside", "outside"].iter().map(|z| a["totals"]["xdp"][z]["rx_ring_full"].as_u64().unwrap_or(0)).sum::<u64>();
    let ring = if a.get("conntrack_after").is_some() { "-".to_string() } else { group(ring) };
    format!("{ring} / {}", group(a["softnet_drops"].as_u64().unwrap_or(0)))
}

/// The table for people: one column per system.
pub fn human(v: &Value) -> String {
    let systems = v["systems"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Value) -> String| rows.push((name.to_string(), systems.iter().map(f).collect()));
    row("connections/s (1 GET each)", &|s| num(&s["cps"]["connections_per_second"]));
    row("  TTFB from SYN p50 / p99 ms", &|s| format!("{} / {}", ms(&s["cps"]["ttfb"]["p50_us"]), ms(&s["cps"]["ttfb"]["p99_us"])));
    row("  connect p50 / p99 ms", &|s| format!("{} / {}", ms(&s["cps"]["connect"]["p50_us"]), ms(&s["cps"]["connect"]["p99_us"])));
    row("  errors", &|s| num(&s["cps"]["error_total"]));
    row("frames lost (cps, tps): RX ring / backlog", &|s| lost(&s["rates_counters"]["appliance"]));
    row("transactions/s (keep-alive)", &|s| num(&s["tps"]["transactions_per_second"]));
    row("  TTFB p50 / p99 ms", &|s| format!("{} / {}", ms(&s["tps"]["ttfb"]["p50_us"]), ms(&s["tps"]["ttfb"]["p99_us"])));
    row("  errors", &|s| num(&s["tps"]["error_total"]));
    row("concurrent connections held", &|s| format!("{} of {}", num(&s["hold"]["held"]), num(&s["hold"]["wanted"])));
    row("  opened/s", &|s| num(&s["hold"]["opened_per_second_all"]));
    row("  spoofed SYNs sent while idle", &|s| num(&s["flood"]["sent"]));
    row("  answered after the flood", &|s| format!("{} of {}", num(&s["hold"]["answered"]), num(&s["hold"]["held"])));
    row("  TTFB p50 / p99 ms (last round)", &|s| format!("{} / {}", ms(&s["hold"]["ttfb"]["p50_us"]), ms(&s["hold"]["ttfb"]["p99_us"])));
    row("  errors", &|s| num(&s["hold"]["error_total"]));
    row("  firewall: dropped / evicted", &|s| {
        let a = &s["hold_counters"]["appliance"];
        let sum = |v: &Value| v.as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>());
        if a.get("conntrack_after").is_some() {
            let d = |k: &str| a["conntrack_after"][k].as_u64().unwrap_or(0).saturating_sub(a["conntrack_before"][k].as_u64().unwrap_or(0));
            format!("{} / {}", group(d("drop")), group(d("early_drop")))
        } else {
            format!("{} / {}", group(sum(&a["drops"])), group(sum(&a["evictions"])))
        }
    });
    row("  frames lost: RX ring / backlog", &|s| lost(&s["hold_counters"]["appliance"]));
    row("  SYNs shed before the RX ring (workers.shed_syns)", &|s| {
        let a = &s["hold_counters"]["appliance"];
        if a.get("conntrack_after").is_some() {
            return "-".into();
        }
        group(["inside", "outside"].iter().map(|z| a["totals"]["xdp"][z]["syn_shed"].as_u64().unwrap_or(0)).sum::<u64>())
    });
    row("  firewall: legitimate flows lost", &|s| {
        let a = &s["hold_counters"]["appliance"];
        if a.get("conntrack_after").is_some() {
            "-".into()
        } else {
            group(
                a["evictions"]["assured"].as_u64().unwrap_or(0)
                    + a["drops"]["reply_to_evicted"].as_u64().unwrap_or(0)
                    + a["drops"]["reply_to_expired"].as_u64().unwrap_or(0),
            )
        }
    });
    row("  assured entries expired (by timeout)", &|s| {
        let a = &s["hold_counters"]["appliance"];
        if a.get("conntrack_after").is_some() {
            return "-".into();
        }
        let n = a["expirations"]["assured"].as_u64().unwrap_or(0);
        let by: Vec<String> =
            a["assured_expirations"].as_object().map_or(vec![], |m| m.iter().map(|(k, v)| format!("{k} {}", group(v.as_u64().unwrap_or(0)))).collect());
        if by.is_empty() { group(n) } else { format!("{} ({})", group(n), by.join(", ")) }
    });
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w = rows.iter().flat_map(|r| r.1.iter().map(String::len)).max().unwrap_or(8).max(12);
    let mut out = format!(
        "holdfast lab --rfc9411: {} connections held (tables of {}; {} for the rate phases), {} s per rate phase at concurrency {}, {} client addresses, {}-byte objects; flood {} SYNs at {} pps\n",
        num(&v["connections"]),
        num(&v["capacity"]),
        num(&v["rate_table"]),
        v["seconds"],
        v["concurrency"],
        v["sources"],
        v["object"],
        num(&v["flood_syns"]),
        num(&v["flood_pps"])
    );
    out += &format!("  {:w0$}", "");
    for s in &systems {
        out += &format!("  {:>w$}", s["system"].as_str().unwrap_or("?"));
    }
    out.push('\n');
    for (name, cells) in rows {
        out += &format!("  {name:w0$}");
        for c in cells {
            out += &format!("  {c:>w$}");
        }
        out.push('\n');
    }
    for s in v["skipped"].as_array().into_iter().flatten() {
        out += &format!("  {}: SKIPPED, {}\n", s["system"].as_str().unwrap_or("?"), s["why"].as_str().unwrap_or("?"));
    }
    out
}

/// The results as grouped bars, one colour per system.
fn draw(path: &Path, v: &Value) -> std::io::Result<()> {
    use crate::report::{Bar, bars};
    let systems = v["systems"].as_array().cloned().unwrap_or_default();
    let bar =
        |group: &str, s: &Value, x: &Value| Bar { group: group.into(), series: s["system"].as_str().unwrap_or("?").into(), value: x.as_f64().unwrap_or(0.0) };
    let mut rate = Vec::new();
    let mut lat = Vec::new();
    let mut held = Vec::new();
    for s in &systems {
        rate.push(bar("connections/s", s, &s["cps"]["connections_per_second"]));
        rate.push(bar("transactions/s", s, &s["tps"]["transactions_per_second"]));
        rate.push(bar("opened/s (hold)", s, &s["hold"]["opened_per_second_all"]));
        for (g, x) in [
            ("cps TTFB p50", &s["cps"]["ttfb"]["p50_us"]),
            ("cps TTFB p99", &s["cps"]["ttfb"]["p99_us"]),
            ("tps TTFB p50", &s["tps"]["ttfb"]["p50_us"]),
            ("tps TTFB p99", &s["tps"]["ttfb"]["p99_us"]),
            ("held TTFB p99", &s["hold"]["ttfb"]["p99_us"]),
        ] {
            lat.push(Bar { value: x.as_f64().unwrap_or(0.0) / 1000.0, ..bar(g, s, x) });
        }
        held.push(bar("held", s, &s["hold"]["held"]));
        held.push(bar("answered after the flood", s, &s["hold"]["answered"]));
    }
    bars(
        path,
        "RFC 9411-style: real TCP through the firewall",
        &[("rates".into(), "per second".into(), rate), ("latency".into(), "ms".into(), lat), ("concurrent connections".into(), "connections".into(), held)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appliance_gets_the_table_and_the_rings_the_benchmark_asks_for() {
        let c = crate::config::parse(&appliance_config(1_125_000, true), "lab.yaml").expect("the benchmark's configuration parses");
        assert_eq!(c.engine.capacity, 1_125_000);
        assert_eq!(c.dataplane.ring_size as usize, QUEUE);
        assert_eq!(c.dataplane.umem_frames as usize, 4 * QUEUE);
        assert!(c.dataplane.shed_syns);
        let off = crate::config::parse(&appliance_config(1_125_000, false), "lab.yaml").unwrap();
        assert!(!off.dataplane.shed_syns, "--shed-syns off reaches the appliance");
    }
}
