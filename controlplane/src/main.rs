//! `holdfast`: the stateful firewall appliance's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use holdfast_controlplane::control::client;
use holdfast_controlplane::{DEFAULT_CONFIG, capture, config, replay, traffic};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "holdfast", version, about = "A stateful firewall that never forgets a reply", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a config file: exit 0 with a summary and the memory it needs when full,
    /// or 2 with file:line:col (or what does not fit this machine).
    CheckConfig {
        file: PathBuf,
        /// Also check what `run` needs from this machine: interfaces and their queues,
        /// cores, the memory available now, the deny log's directory, the token file.
        #[arg(long)]
        host: bool,
    },
    /// Push a capture through the pipeline.
    Replay(ReplayArgs),
    /// Generate traffic captures.
    #[command(subcommand)]
    Gen(GenCmd),
    /// The origin story: a SYN flood against an LRU table and against Holdfast.
    Demo(DemoArgs),
    /// Run inline between the configured interfaces (AF_XDP; needs root).
    Run(RunArgs),
    /// The appliance in network namespaces with real traffic (needs root).
    Lab(LabArgs),
    /// Send 64-byte UDP frames as fast as possible (the lab benchmark's generator).
    Blast(BlastArgs),
    /// A running appliance: generation, per-core rates, table fill, saturation.
    Status(ClientArgs),
    /// A running appliance's tracked flows, like `conntrack -L`.
    Flows(FlowsArgs),
    /// A live per-core view of a running appliance, refreshed every second.
    Top(TopArgs),
    /// Make a running appliance re-read its config file (as SIGHUP does).
    Reload(ReloadArgs),
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The appliance's control.listen address.
    #[arg(long, default_value = "127.0.0.1:9477")]
    connect: String,
    /// Take the address (and token) from this config file's control.listen (and
    /// control.token_file) instead.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A file holding the appliance's control token (control.token_file).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print the data as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FlowsArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Address that opened the flow.
    #[arg(long)]
    src: Option<std::net::IpAddr>,
    /// Address the flow was opened to.
    #[arg(long)]
    dst: Option<std::net::IpAddr>,
    /// Either port.
    #[arg(long)]
    port: Option<u16>,
    /// State (ESTABLISHED, TIME_WAIT, UNREPLIED, ...).
    #[arg(long)]
    state: Option<String>,
    /// tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(Args)]
struct TopArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Print one frame and exit.
    #[arg(long)]
    once: bool,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = parse_dur)]
    interval: holdfast_pipeline::Duration,
}

#[derive(Args)]
struct ReloadArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// Return as soon as the appliance accepted the file, without waiting for every
    /// worker to run it.
    #[arg(long)]
    no_wait: bool,
}

/// The running appliance a client command talks to, and its token.
fn target(c: &ClientArgs) -> Result<client::Target, String> {
    let mut t = client::Target::new(c.connect.clone());
    let mut token_file = c.token_file.clone();
    if let Some(p) = &c.config {
        let cfg = config::load(p).map_err(|e| e.to_string())?;
        t.addr = cfg.control.listen.map(|a| a.to_string()).ok_or_else(|| format!("{}: control.listen is off", p.display()))?;
        token_file = token_file.or(cfg.control.token_file);
    }
    if let Some(f) = token_file {
        t.token = Some(config::read_token(&f)?);
    }
    Ok(t)
}

fn client_cmd(cmd: Cmd) -> ExitCode {
    let fail = |e: String| {
        eprintln!("holdfast: {e}");
        ExitCode::FAILURE
    };
    match cmd {
        Cmd::Status(c) => {
            let addr = match target(&c) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            match client::status(&addr) {
                Ok(v) if c.json => println!("{v}"),
                Ok(v) => print!("{}", client::render(&v)),
                Err(e) => return fail(e),
            }
        }
        Cmd::Flows(f) => {
            let addr = match target(&f.c) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let mut q = format!("limit={}", f.limit);
            for (k, v) in [
                ("src", f.src.map(|a| a.to_string())),
                ("dst", f.dst.map(|a| a.to_string())),
                ("port", f.port.map(|p| p.to_string())),
                ("state", f.state.clone()),
                ("proto", f.proto.clone()),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", v.replace(':', "%3A")));
                }
            }
            match client::flows(&addr, &q) {
                Ok(list) => {
                    for x in &list {
                        if f.c.json { println!("{x}") } else { println!("{}", client::flow_line(x)) }
                    }
                    if !f.c.json {
                        eprintln!("holdfast: {} flow(s) listed", list.len());
                    }
                }
                Err(e) => return fail(e),
            }
        }
        Cmd::Top(t) => {
            let addr = match target(&t.c) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            loop {
                match client::status(&addr) {
                    Ok(v) if t.c.json => println!("{v}"),
                    Ok(v) if t.once => print!("{}", client::render(&v)),
                    // Home, clear, frame.
                    Ok(v) => println!("\x1b[H\x1b[2J{}(Ctrl-C quits)", client::render(&v)),
                    Err(e) => return fail(e),
                }
                if t.once {
                    break;
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::thread::sleep(std::time::Duration::from_nanos(t.interval.as_nanos().max(100_000_000)));
            }
        }
        Cmd::Reload(r) => {
            let addr = match target(&r.c) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            match client::reload(&addr, !r.no_wait) {
                Ok(v) if r.c.json => println!("{v}"),
                Ok(v) => {
                    println!("holdfast: reloaded: generation {}{}", v["generation"], if r.no_wait { " accepted" } else { " running on every worker" });
                    if let Some(list) = v["restart_needed"].as_array().filter(|a| !a.is_empty()) {
                        println!("  not applied until a restart: {}", list.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "));
                    }
                }
                Err(e) => {
                    eprintln!("holdfast: reload rejected, the running configuration stays:\n{e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => unreachable!("not a client command"),
    }
    ExitCode::SUCCESS
}

#[derive(Args)]
struct BlastArgs {
    #[arg(long)]
    interface: String,
    /// Destination MAC (the next hop: the receiver across a bump in the wire, or a router).
    #[arg(long)]
    dst_mac: String,
    #[arg(long, default_value = "10.0.2.1")]
    dst: std::net::Ipv4Addr,
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// Distinct flows (source address and port pairs from 10.0.1.0/24, at most 1,000,000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    flows: u32,
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    seconds: f64,
}

#[derive(Args)]
struct LabArgs {
    /// `down`: remove leftovers of a lab; `up`: only create namespaces and veths.
    action: Option<String>,
    /// Worker threads (one queue per interface each).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// HTTP requests per server.
    #[arg(long, default_value_t = 1)]
    requests: usize,
    /// Leave the lab running to poke at (`holdfast lab down` removes it).
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long)]
    config: PathBuf,
    /// Print the final counters as one JSON object.
    #[arg(long)]
    json: bool,
    /// Stop after this long (e.g. 30s) instead of waiting for a signal.
    #[arg(long, value_parser = parse_dur)]
    duration: Option<holdfast_pipeline::Duration>,
    /// No status line every second.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Table capacity, the same for both runs.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    capacity: u32,
    /// Spoofed SYNs per second.
    #[arg(long, default_value_t = 100.0, value_parser = syn_rate)]
    syn_flood: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Print one JSON object with both reports.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// Config file (default: the embedded configs/webfarm.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// pcap or pcapng file (default: a web-farm capture generated in memory).
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Replay without interfaces, with capture timestamps as the clock.
    #[arg(long)]
    offline: bool,
    /// Worker threads; frames go to the worker that owns their flow.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Write the final table as JSON lines.
    #[arg(long)]
    flows_out: Option<PathBuf>,
    /// Write one JSON line per frame: i, verdict, reason.
    #[arg(long)]
    verdicts_out: Option<PathBuf>,
    /// Hash seed (default: random per process).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Subcommand)]
enum GenCmd {
    /// Web servers on port 80 inside, keep-alive clients outside.
    Webfarm(WebfarmArgs),
}

#[derive(Args)]
struct WebfarmArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=254))]
    servers: u32,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    clients: u32,
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    connections: u32,
    /// Span over which connections start.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    duration: holdfast_pipeline::Duration,
    /// Idle gap between requests of a connection, `lo..hi`.
    #[arg(long, default_value = "0s..5s", value_parser = traffic::parse_range)]
    idle: (holdfast_pipeline::Duration, holdfast_pipeline::Duration),
    /// Requests per connection, `lo..hi`.
    #[arg(long, default_value = "1..4", value_parser = traffic::parse_int_range)]
    requests: (u32, u32),
    /// Response size in bytes, `lo..hi`.
    #[arg(long, default_value = "200..6000", value_parser = traffic::parse_int_range)]
    response: (u32, u32),
    /// Spoofed SYNs per second to port 80 over the whole capture (0: none).
    #[arg(long, default_value_t = 0.0, value_parser = syn_rate)]
    syn_flood: f64,
    /// Add a port scan of the servers' closed ports.
    #[arg(long)]
    scan: bool,
    /// Stray ACKs from addresses that never connected.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    midstream: u32,
}

fn parse_dur(s: &str) -> Result<holdfast_pipeline::Duration, String> {
    config::values::parse_duration(s)
}

/// A number in `lo..=hi` (rejects NaN and infinities, which a float parser accepts).
fn float_in(s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (lo..=hi).contains(&v) { Ok(v) } else { Err(format!("{s} is outside {lo} ..= {hi}")) }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    float_in(s, 0.001, 86_400.0)
}

fn syn_rate(s: &str) -> Result<f64, String> {
    float_in(s, 0.0, 1_000_000.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { file, host } => check_config(&file, host),
        Cmd::Replay(a) => replay_cmd(a),
        Cmd::Lab(a) => lab_cmd(a),
        Cmd::Blast(a) => blast_cmd(a),
        c @ (Cmd::Status(_) | Cmd::Flows(_) | Cmd::Top(_) | Cmd::Reload(_)) => client_cmd(c),
        Cmd::Run(a) => {
            let cfg = match config::load(&a.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let opts = holdfast_controlplane::appliance::Options {
                json: a.json,
                duration: a.duration.map(|d| std::time::Duration::from_nanos(d.as_nanos())),
                quiet: a.quiet,
                seed: holdfast_dataplane::sys::random_seed(),
            };
            match holdfast_controlplane::control::serve(&a.config, cfg, &opts) {
                Ok(v) if a.json => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    println!("{}", holdfast_controlplane::appliance::human(&v));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("holdfast run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo(a) => {
            let mut d = holdfast_controlplane::demo::Demo { capacity: a.capacity as usize, seed: a.seed, ..Default::default() };
            d.farm.syn_flood = a.syn_flood;
            d.farm.connections = a.connections;
            d.farm.seed = a.seed;
            match holdfast_controlplane::demo::run(&d) {
                Ok(o) if a.json => {
                    println!("{}", o.to_json());
                    ExitCode::SUCCESS
                }
                Ok(o) => {
                    println!("{}", o.human(&d));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("holdfast demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Gen(GenCmd::Webfarm(a)) => {
            // Everything is built in memory: refuse what would not fit.
            let floods = a.syn_flood * a.duration.as_secs_f64();
            if floods > 50e6 {
                eprintln!(
                    "holdfast gen: --syn-flood {} over --duration {} makes {floods:.0} SYNs; at most 50,000,000 (lower either)",
                    a.syn_flood,
                    config::values::format_duration(a.duration)
                );
                return ExitCode::from(2);
            }
            let p = traffic::WebFarm {
                seed: a.seed,
                servers: a.servers,
                clients: a.clients,
                connections: a.connections,
                duration: a.duration,
                idle: a.idle,
                requests: a.requests,
                response: a.response,
                syn_flood: a.syn_flood,
                scan: a.scan,
                midstream: a.midstream,
                ..traffic::WebFarm::default()
            };
            let ev = traffic::webfarm(&p);
            match std::fs::write(&a.out, traffic::to_pcap(&ev)) {
                Ok(()) => {
                    println!("wrote {} frames to {}", ev.len(), a.out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("holdfast gen: cannot write {}: {e}", a.out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(file: &std::path::Path, host: bool) -> ExitCode {
    use holdfast_controlplane::check;
    let c = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let memory = match check::memory_ceiling(&c) {
        Ok(line) => line,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let mut findings = Vec::new();
    if host {
        if let Err(e) = check::memory_now(&c) {
            findings.push(check::Finding { error: true, text: e });
        }
        findings.extend(check::host(&c));
    }
    let errors = findings.iter().filter(|f| f.error).count();
    if errors == 0 {
        println!("{}: ok: {}", file.display(), c.summary());
        println!("  {memory}");
        if host {
            println!("  this machine: interfaces, queues, cores, memory available now, paths: ok");
        }
    }
    for f in &findings {
        eprintln!("{}: {}: {}", file.display(), if f.error { "error" } else { "warning" }, f.text);
    }
    if errors > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS }
}

fn blast_cmd(a: BlastArgs) -> ExitCode {
    let mac: Vec<u8> = a.dst_mac.split(':').filter_map(|x| u8::from_str_radix(x, 16).ok()).collect();
    let Ok(dst_mac) = <[u8; 6]>::try_from(mac) else {
        eprintln!("holdfast blast: --dst-mac wants six hex bytes like 02:00:00:00:00:01");
        return ExitCode::from(2);
    };
    let ifindex = match holdfast_dataplane::bpf::ifindex(&a.interface) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("holdfast blast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let src_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", a.interface))
        .ok()
        .and_then(|s| s.trim().split(':').map(|x| u8::from_str_radix(x, 16).ok()).collect::<Option<Vec<u8>>>())
        .and_then(|v| <[u8; 6]>::try_from(v).ok())
        .unwrap_or([2, 0, 0, 0, 0, 1]);
    let frames: Vec<Vec<u8>> = (0..a.flows.max(1))
        .map(|i| {
            let src = std::net::Ipv4Addr::from(0x0a00_0100 | (1 + i / 60_000));
            let mut f = holdfast_pipeline::wire::build::FrameSpec::udp(src.into(), 1024 + (i % 60_000) as u16, a.dst.into(), a.dport, &[0u8; 18]);
            f.src_mac = src_mac;
            f.dst_mac = dst_mac;
            f.build()
        })
        .collect();
    match holdfast_dataplane::blast::blast(ifindex, &frames, a.seconds) {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({"sent": r.sent, "seconds": r.elapsed.as_secs_f64(), "cpu_s": r.cpu.as_secs_f64(), "frame_bytes": frames[0].len(), "flows": frames.len()})
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("holdfast blast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn lab_cmd(a: LabArgs) -> ExitCode {
    use holdfast_controlplane::lab;
    match a.action.as_deref() {
        Some("down") => {
            let left = lab::down();
            if left.is_empty() {
                println!("holdfast lab: nothing left");
                return ExitCode::SUCCESS;
            }
            eprintln!("holdfast lab: could not remove {left:?}");
            return ExitCode::FAILURE;
        }
        Some("up") => {
            return match lab::up(a.workers.max(1)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("holdfast lab up: {e}");
                    lab::down();
                    ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            eprintln!("holdfast lab: unknown action {other:?} (use `down` or `up`, or nothing to run the lab)");
            return ExitCode::from(2);
        }
        None => {}
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("holdfast"));
    let opts = lab::Options { workers: a.workers.max(1), requests: a.requests, keep: a.keep };
    match lab::run(&exe, &opts) {
        Ok(v) => {
            if a.json {
                println!("{v}");
            } else if a.keep {
                println!("holdfast lab: running; try `ip netns exec hf-out curl http://10.0.2.1/`; remove with `holdfast lab down`");
            } else {
                println!("{}", lab::human(&v));
            }
            let good = v["requests_failed"] == 0 && v["pings_failed"] == 0 && v["leftovers"] == false;
            if good || a.keep { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("holdfast lab: {e}");
            if !a.keep {
                lab::down();
            }
            ExitCode::FAILURE
        }
    }
}

fn replay_cmd(a: ReplayArgs) -> ExitCode {
    if !a.offline {
        eprintln!("holdfast replay: only --offline replay is available (live replay onto interfaces needs the AF_XDP dataplane)");
        return ExitCode::from(2);
    }
    let cfg = match &a.config {
        Some(p) => config::load(p),
        None => config::parse(DEFAULT_CONFIG, "<embedded configs/webfarm.yaml>"),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (source, buf) = match &a.pcap {
        Some(p) => match capture::read_file(p) {
            Ok(b) => (p.display().to_string(), b),
            Err(e) => {
                eprintln!("holdfast replay: cannot read {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => ("<generated web farm, seed 1>".to_string(), traffic::to_pcap(&traffic::webfarm(&traffic::WebFarm::default()))),
    };
    let opts = replay::Options { workers: a.workers, json: a.json, flows_out: a.flows_out, verdicts_out: a.verdicts_out };
    let seed = a.seed.unwrap_or_else(holdfast_dataplane::sys::random_seed);
    let report = match replay::run(&cfg, &source, &buf, seed, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("holdfast replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(e) = &report.capture_error
        && report.counters.packets == 0
        && report.skipped == 0
    {
        eprintln!("holdfast replay: cannot replay {source}: {}", e.message);
        return ExitCode::FAILURE;
    }
    if opts.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.human());
    }
    if let Some(e) = &report.capture_error {
        eprintln!("holdfast replay: {source}: capture ends early {e}; the summary covers the {} frames before it", report.counters.packets);
        return ExitCode::FAILURE;
    }
    if report.counters.packets == 0 && report.skipped > 0 {
        eprintln!("holdfast replay: {source}: nothing replayed: {}", report.skipped_note.as_deref().unwrap_or("every frame was skipped"));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
