//! The command line's arguments: every subcommand and its options, as clap derives
//! them. What each command does is in its own file beside this one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use holdfast_controlplane::config::values::parse_duration;
use holdfast_controlplane::traffic;

#[derive(Parser)]
#[command(name = "holdfast", version, about = "A stateful firewall that never forgets a reply", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Validate a config file: exit 0 with a summary and the memory it needs when full,
    /// or 2 with file:line:col (or what does not fit this machine).
    CheckConfig(CheckArgs),
    /// Push a capture through the pipeline.
    Replay(ReplayArgs),
    /// Generate traffic captures.
    #[command(subcommand)]
    Gen(GenCmd),
    /// Draw results as SVG.
    #[command(subcommand)]
    Report(ReportCmd),
    /// The origin story: a SYN flood against an LRU table and against Holdfast.
    Demo(DemoArgs),
    /// Run inline between the configured interfaces (AF_XDP; needs root).
    Run(RunArgs),
    /// The appliance in network namespaces with real traffic (needs root).
    Lab(LabArgs),
    /// Send 64-byte UDP frames as fast as possible (the lab benchmark's generator).
    Blast(BlastArgs),
    /// Real TCP connections (RFC 9411): an HTTP server, a load client, a SYN flood.
    #[command(subcommand)]
    Load(LoadCmd),
    /// Commands against a running appliance's control endpoint.
    #[command(flatten)]
    Client(ClientCmd),
}

/// The commands that talk to a running appliance.
#[derive(Subcommand)]
pub enum ClientCmd {
    /// A running appliance: generation, per-core rates, table fill, saturation.
    Status(ClientArgs),
    /// A running appliance's tracked flows, like `conntrack -L`.
    Flows(FlowsArgs),
    /// A live per-core view of a running appliance, refreshed every second.
    Top(TopArgs),
    /// Make a running appliance re-read its config file (as SIGHUP does).
    Reload(ReloadArgs),
    /// Make a running appliance write its tables to state.snapshot_dir now (the next
    /// start restores them, aged by the time in between; a stop writes one anyway).
    Snapshot(ClientArgs),
    /// Make a running standby commit what its sync peer sent into its tables now
    /// (as it does by itself when the peer falls silent for sync.dead_interval).
    Takeover(ClientArgs),
    /// Ask the sync peer for its whole table again (RESYNC).
    Resync(ClientArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    pub file: PathBuf,
    /// Also check what `run` needs from this machine: interfaces and their queues,
    /// cores, the memory available now, the deny log's directory, the token file.
    #[arg(long)]
    pub host: bool,
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The appliance's control.listen address.
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub connect: String,
    /// Take the address (and token) from this config file's control.listen (and
    /// control.token_file) instead.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A file holding the appliance's control token (control.token_file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the data as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub c: ClientArgs,
    /// Address that opened the flow.
    #[arg(long)]
    pub src: Option<std::net::IpAddr>,
    /// Address the flow was opened to.
    #[arg(long)]
    pub dst: Option<std::net::IpAddr>,
    /// Either port.
    #[arg(long)]
    pub port: Option<u16>,
    /// State (ESTABLISHED, TIME_WAIT, UNREPLIED, ...).
    #[arg(long)]
    pub state: Option<String>,
    /// tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    pub proto: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Instead of flows: who holds the table — the top sources and destination ports
    /// by entries held, per worker and in total (from the workers' bounded sweeps).
    #[arg(long)]
    pub top_sources: bool,
    /// Instead of this appliance's flows: the external cache, what its sync peer sent.
    #[arg(long)]
    pub external: bool,
}

#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub c: ClientArgs,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: holdfast_pipeline::Duration,
}

#[derive(Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub c: ClientArgs,
    /// Return as soon as the appliance accepted the file, without waiting for every
    /// worker to run it.
    #[arg(long)]
    pub no_wait: bool,
}

/// The running appliance a client command talks to, and its token.

#[derive(Args)]
pub struct BlastArgs {
    #[arg(long)]
    pub interface: String,
    /// Destination MAC (the next hop: the receiver across a bump in the wire, or a router).
    #[arg(long)]
    pub dst_mac: String,
    #[arg(long, default_value = "10.0.2.1")]
    pub dst: std::net::Ipv4Addr,
    #[arg(long, default_value_t = 9)]
    pub dport: u16,
    /// Distinct flows (source address and port pairs from 10.0.1.0/24, at most 1,000,000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub flows: u32,
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    pub seconds: f64,
}

#[derive(Args)]
pub struct LabArgs {
    /// `down`: remove leftovers of a lab; `up`: only create namespaces and veths.
    pub action: Option<String>,
    /// Worker threads (one queue per interface each).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// HTTP requests per server.
    #[arg(long, default_value_t = 1)]
    pub requests: usize,
    /// Leave the lab running to poke at (`holdfast lab down` removes it).
    #[arg(long)]
    pub keep: bool,
    /// Failover instead: two appliances syncing state, the active killed mid-download,
    /// the standby taking over (docs/sync.md).
    #[arg(long)]
    pub ha: bool,
    /// Replay this capture through the appliance instead of the HTTP checks: the
    /// replayer sits on both far ends (namespace hf-rp), with the flags of a live replay.
    #[arg(long, conflicts_with = "ha")]
    pub replay: Option<PathBuf>,
    /// With --replay: the appliance's config (its zones must name hf-out0 and hf-in0);
    /// default: the lab's, with the capture's servers moved into 10.0.2.0/24.
    #[arg(long, requires = "replay")]
    pub config: Option<PathBuf>,
    /// With --replay: one JSON line per frame sent: forwarded or not.
    #[arg(long, requires = "replay")]
    pub verdicts_out: Option<PathBuf>,
    /// With --replay: draw the run per second (the replayer's and the appliance's
    /// counters) into this SVG file; with --rfc9411: the results as bars.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub live: LiveArgs,
    /// The RFC 9411-style benchmark instead: real TCP connections (an epoll load client
    /// and server) through Holdfast and through Linux + nftables: connections/s,
    /// transactions/s, TTFB, concurrent connections held through a spoofed SYN flood.
    #[arg(long, conflicts_with_all = ["ha", "replay"])]
    pub rfc9411: bool,
    #[command(flatten)]
    pub bench: Rfc9411Args,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Print the final counters as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (e.g. 30s) instead of waiting for a signal.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<holdfast_pipeline::Duration>,
    /// No status line every second.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Table capacity, the same for both runs.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    pub capacity: u32,
    /// Spoofed SYNs per second.
    #[arg(long, default_value_t = 100.0, value_parser = syn_rate)]
    pub syn_flood: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Print one JSON object with both reports.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Config file (default: the embedded configs/webfarm.yaml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// pcap or pcapng file (default: a web-farm capture generated in memory).
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Replay without interfaces, with capture timestamps as the clock.
    #[arg(long)]
    pub offline: bool,
    /// Worker threads; frames go to the worker that owns their flow.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Write the final table as JSON lines.
    #[arg(long)]
    pub flows_out: Option<PathBuf>,
    /// Write one JSON line per frame: i, verdict, reason.
    #[arg(long)]
    pub verdicts_out: Option<PathBuf>,
    /// Hash seed (default: random per process).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Draw the run per second into this SVG file (offline: per second of capture time).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Live: the client side's interface (frames from clients go out here).
    #[arg(long, conflicts_with = "offline", requires = "intf2")]
    pub intf1: Option<String>,
    /// Live: the server side's interface.
    #[arg(long, conflicts_with = "offline", requires = "intf1")]
    pub intf2: Option<String>,
    #[command(flatten)]
    pub live: LiveArgs,
}

/// How a live replay sends: `holdfast replay --intf1 --intf2` and `holdfast lab --replay`.
#[derive(Args, Clone)]
pub struct LiveArgs {
    /// Live: frames per second.
    #[arg(short = 'p', long, value_parser = rate, group = "rate_flag")]
    pub pps: Option<f64>,
    /// Live: megabits per second.
    #[arg(short = 'M', long, value_parser = rate, group = "rate_flag")]
    pub mbps: Option<f64>,
    /// Live: the capture's timing, this many times faster (default: 1, the capture's own).
    #[arg(short = 'x', long, value_parser = rate, group = "rate_flag")]
    pub multiplier: Option<f64>,
    /// Live: as fast as the ports take frames.
    #[arg(short = 't', long, group = "rate_flag")]
    pub topspeed: bool,
    /// Live: passes over the capture (0: until stopped).
    #[arg(short = 'l', long = "loop", default_value_t = 1)]
    pub loops: u64,
    /// Live: pause between loops, in milliseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub loopdelay_ms: u64,
    /// Live: each loop moves the client side's addresses (a fresh set of flows per loop; IPv4 for 4,096 loops, then they repeat).
    #[arg(long)]
    pub unique_ip: bool,
    /// Live: frames to send at most.
    #[arg(short = 'L', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Live: stop after this long (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<holdfast_pipeline::Duration>,
    /// Live: read the whole capture into memory first (default: read it as it goes).
    #[arg(short = 'K', long)]
    pub preload_pcap: bool,
    /// Live: a progress line every N seconds on standard error.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stats: Option<u64>,
    /// Live: `flow` (default) — a frame of a flow waits until that flow's frames sent
    /// earlier on the other interface came out of the device; `none` — the rate alone.
    #[arg(long, value_parser = ["flow", "none"])]
    pub order: Option<String>,
    /// Live: how long a frame may take to come out before it counts as dropped by the
    /// device (and its flow goes on).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub order_timeout: holdfast_pipeline::Duration,
    /// Live: which side each host is on, lines `PREFIX client|server` (default: the
    /// config's inside networks with --config, else learned as tcpprep --auto does).
    #[arg(long)]
    pub side_map: Option<PathBuf>,
    /// Live: the appliance's control endpoint (ADDR:PORT): its counters over the run.
    #[arg(long)]
    pub control: Option<String>,
    /// Live: `xdp` (AF_XDP, the redirect program on both interfaces) or `packet`
    /// (AF_PACKET: interfaces without XDP, and --rx1/--rx2).
    #[arg(long, default_value = "xdp", value_parser = ["xdp", "packet"])]
    pub driver: String,
    /// Live: where frames sent on --intf1 come out (default: --intf2; --driver packet).
    #[arg(long)]
    pub rx1: Option<String>,
    /// Live: where frames sent on --intf2 come out (default: --intf1; --driver packet).
    #[arg(long)]
    pub rx2: Option<String>,
    /// Live: XDP attach mode on the replayer's interfaces.
    #[arg(long, default_value = "native", value_parser = ["native", "generic"])]
    pub xdp_mode: String,
    /// Live: move the server side's IPv4 addresses into this network (e.g. the lab's
    /// 10.0.2.0/24), each new server to its next address.
    #[arg(long, value_parser = holdfast_controlplane::config::values::parse_cidr)]
    pub map_servers: Option<holdfast_pipeline::policy::Cidr>,
    /// Live: set the destination MAC of frames sent on --intf1 (a router's, when the
    /// device under test routes).
    #[arg(long, value_parser = mac)]
    pub dst_mac1: Option<[u8; 6]>,
    /// Live: set the destination MAC of frames sent on --intf2.
    #[arg(long, value_parser = mac)]
    pub dst_mac2: Option<[u8; 6]>,
    /// Live: no progress bar (it is off anyway when standard output is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Live: UMEM frames (4 KiB each) for sending and receiving.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub umem_frames: u32,
}

impl LiveArgs {
    /// The flags again, as a command line (the lab hands them to the replayer).
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            a.push(k.to_string());
            a.extend(v);
        };
        if let Some(p) = self.pps {
            put("--pps", Some(p.to_string()));
        }
        if let Some(m) = self.mbps {
            put("--mbps", Some(m.to_string()));
        }
        if let Some(x) = self.multiplier {
            put("--multiplier", Some(x.to_string()));
        }
        if self.topspeed {
            put("--topspeed", None);
        }
        put("--loop", Some(self.loops.to_string()));
        put("--loopdelay-ms", Some(self.loopdelay_ms.to_string()));
        if self.unique_ip {
            put("--unique-ip", None);
        }
        if let Some(l) = self.limit {
            put("--limit", Some(l.to_string()));
        }
        if let Some(d) = self.duration {
            put("--duration", Some(holdfast_controlplane::config::values::format_duration(d)));
        }
        if self.preload_pcap {
            put("--preload-pcap", None);
        }
        if let Some(n) = self.stats {
            put("--stats", Some(n.to_string()));
        }
        if let Some(o) = &self.order {
            put("--order", Some(o.clone()));
        }
        put("--order-timeout", Some(holdfast_controlplane::config::values::format_duration(self.order_timeout)));
        if let Some(m) = &self.side_map {
            put("--side-map", Some(m.display().to_string()));
        }
        if let Some(c) = &self.control {
            put("--control", Some(c.clone()));
        }
        put("--xdp-mode", Some(self.xdp_mode.clone()));
        put("--driver", Some(self.driver.clone()));
        for (flag, v) in [("--rx1", &self.rx1), ("--rx2", &self.rx2)] {
            if let Some(v) = v {
                put(flag, Some(v.clone()));
            }
        }
        put("--umem-frames", Some(self.umem_frames.to_string()));
        for (flag, m) in [("--dst-mac1", self.dst_mac1), ("--dst-mac2", self.dst_mac2)] {
            if let Some(m) = m {
                put(flag, Some(m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")));
            }
        }
        if let Some(c) = &self.map_servers {
            put("--map-servers", Some(format!("{}/{}", holdfast_pipeline::flow::to_ip(c.addr, c.v6), c.len)));
        }
        a
    }
}

/// A MAC address, six hex bytes separated by colons.
fn mac(s: &str) -> Result<[u8; 6], String> {
    let b: Vec<u8> =
        s.split(':').map(|x| u8::from_str_radix(x, 16)).collect::<Result<_, _>>().map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
    <[u8; 6]>::try_from(b).map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))
}

/// A rate: positive and finite.
fn rate(s: &str) -> Result<f64, String> {
    float_in(s, 1e-6, 1e12)
}

#[derive(Subcommand)]
pub enum GenCmd {
    /// Web servers on port 80 inside, keep-alive clients outside.
    Webfarm(WebfarmArgs),
    /// One-way 64-byte UDP frames, one per flow, from many clients to one server's
    /// port 9 (the lab benchmark's traffic).
    Udp(UdpGenArgs),
}

#[derive(Subcommand)]
pub enum ReportCmd {
    /// The lab benchmark's results (JSON lines: workload, system, fwd_mpps,
    /// offered_mpps, ucyc, kcyc) as bar charts.
    Bench {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct UdpGenArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Distinct flows (one frame each): source 10.64.0.0/10 and ports 1024-61023.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=4_000_000))]
    pub flows: u32,
    /// The server: destination address (port 9).
    #[arg(long, default_value = "10.0.2.1")]
    pub server: std::net::Ipv4Addr,
}

#[derive(Args)]
pub struct WebfarmArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=254))]
    pub servers: u32,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub clients: u32,
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub connections: u32,
    /// Span over which connections start.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: holdfast_pipeline::Duration,
    /// Idle gap between requests of a connection, `lo..hi`.
    #[arg(long, default_value = "0s..5s", value_parser = traffic::parse_range)]
    pub idle: (holdfast_pipeline::Duration, holdfast_pipeline::Duration),
    /// Requests per connection, `lo..hi`.
    #[arg(long, default_value = "1..4", value_parser = traffic::parse_int_range)]
    pub requests: (u32, u32),
    /// Response size in bytes, `lo..hi`.
    #[arg(long, default_value = "200..6000", value_parser = traffic::parse_int_range)]
    pub response: (u32, u32),
    /// Spoofed SYNs per second to port 80 over the whole capture (0: none).
    #[arg(long, default_value_t = 0.0, value_parser = syn_rate)]
    pub syn_flood: f64,
    /// Add a port scan of the servers' closed ports.
    #[arg(long)]
    pub scan: bool,
    /// Stray ACKs from addresses that never connected.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub midstream: u32,
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

#[derive(Subcommand)]
pub enum LoadCmd {
    /// An HTTP server (one epoll loop): one object per GET, keep-alive, until SIGTERM;
    /// prints its counters as JSON then.
    Serve(ServeArgs),
    /// The load client (one epoll loop over kernel sockets): connections per second,
    /// transactions per second, or connections held; prints one JSON object.
    Client(LoadClientArgs),
    /// A spoofed SYN flood over a raw socket (needs CAP_NET_RAW).
    Flood(FloodArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address:port to listen on (repeat for several).
    #[arg(long, required = true)]
    pub listen: Vec<std::net::SocketAddr>,
    /// The response body's size in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=(64 << 20)))]
    pub object: u64,
    /// Connections held at most; more are accepted and closed, counted.
    #[arg(long, default_value_t = 4_000_000, value_parser = clap::value_parser!(u64).range(1..=(1 << 26)))]
    pub max_conns: u64,
    #[arg(long, default_value_t = 65535, value_parser = clap::value_parser!(i32).range(1..=(1 << 20)))]
    pub backlog: i32,
}

#[derive(Args)]
pub struct LoadClientArgs {
    /// Server address:port (repeat; used in turn).
    #[arg(long, required = true)]
    pub server: Vec<std::net::SocketAddr>,
    /// Source address to bind (repeat, or a range like 10.0.1.1-10.0.1.64); default:
    /// the kernel's choice.
    #[arg(long)]
    pub source: Vec<String>,
    #[arg(long, value_enum)]
    pub mode: holdfast_controlplane::load::client::Mode,
    /// Connections in flight (cps), open (tps), or opening / asked at once (hold).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub concurrency: u64,
    /// How long cps and tps measure.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: holdfast_pipeline::Duration,
    /// hold: connections to open and keep.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub connections: u64,
    /// hold: idle time between opening and asking every connection again.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub idle: holdfast_pipeline::Duration,
    /// The bound on each connect, request and response.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: holdfast_pipeline::Duration,
}

#[derive(Args)]
pub struct FloodArgs {
    /// Target address:port (IPv4; repeat; used in turn).
    #[arg(long, required = true)]
    pub target: Vec<std::net::SocketAddrV4>,
    /// Spoofed source network.
    #[arg(long, default_value = "198.18.0.0/15")]
    pub sources: String,
    /// SYNs per second (0: as fast as the socket takes them).
    #[arg(long, default_value_t = 100_000)]
    pub pps: u64,
    /// Stop after this many SYNs (0: at --duration or a signal).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<holdfast_pipeline::Duration>,
    #[arg(long, default_value_t = 9411)]
    pub seed: u64,
    /// Bytes of IPv4 options (NOPs) in each SYN: 0, or a multiple of 4 up to 40.
    #[arg(long, default_value_t = 0, value_parser = ip_options)]
    pub ip_options: u8,
}

fn ip_options(s: &str) -> Result<u8, String> {
    let max = holdfast_controlplane::load::flood::IP_OPTIONS_MAX;
    match s.parse::<u8>() {
        Ok(n) if n <= max && n.is_multiple_of(4) => Ok(n),
        _ => Err(format!("{s:?}: a multiple of 4 from 0 to {max}")),
    }
}

/// `holdfast lab --rfc9411`'s settings.
#[derive(Args)]
pub struct Rfc9411Args {
    /// With --rfc9411: the systems to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "holdfast,linux", requires = "rfc9411")]
    pub systems: Vec<holdfast_controlplane::lab::rfc9411::System>,
    /// With --rfc9411: concurrent connections to hold (both tables get an eighth more).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=4_000_000), requires = "rfc9411")]
    pub connections: u64,
    /// With --rfc9411: seconds each rate phase (cps, tps) measures.
    #[arg(long, default_value_t = 5.0, value_parser = bench_seconds, requires = "rfc9411")]
    pub seconds: f64,
    /// With --rfc9411: connections in flight (cps) or open (tps).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000), requires = "rfc9411")]
    pub concurrency: u64,
    /// With --rfc9411: client source addresses, 10.0.1.1 upwards (64,512 ports each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=250), requires = "rfc9411")]
    pub sources: u64,
    /// With --rfc9411: spoofed SYNs while the connections idle, as a multiple of the
    /// table's size (0: no flood).
    #[arg(long, default_value_t = 10.0, value_parser = flood_multiple, requires = "rfc9411")]
    pub flood: f64,
    /// With --rfc9411: the flood's SYNs per second.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000), requires = "rfc9411")]
    pub flood_pps: u64,
    /// With --rfc9411: both tables' size for the rate phases (the cps phase leaves its
    /// connections in TIME_WAIT for 120 s in both).
    #[arg(long, default_value_t = 2_097_152, value_parser = clap::value_parser!(u64).range(1024..=(1 << 24)), requires = "rfc9411")]
    pub rate_table: u64,
    /// With --rfc9411: the response body's size in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=(1 << 20)), requires = "rfc9411")]
    pub object: u64,
    /// With --rfc9411: Holdfast's `workers.shed_syns` (SYNs dropped at the XDP hook
    /// while the worker's RX ring is over half full).
    #[arg(long, default_value = "on", value_parser = ["on", "off"], requires = "rfc9411")]
    pub shed_syns: String,
}

fn bench_seconds(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if (0.1..=3600.0).contains(&x) { Ok(x) } else { Err(format!("{x}: between 0.1 and 3600 seconds")) }
}

fn flood_multiple(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=100.0).contains(&x) { Ok(x) } else { Err(format!("{x}: between 0 and 100 times the table")) }
}
