//! What a configuration compiles into: the engine's settings, the classifier, and what
//! the appliance around them needs (interfaces, workers, endpoint, logs).

use std::fmt;
use std::sync::Arc;

use holdfast_dataplane::bpf::XdpMode;
use holdfast_dataplane::worker::Idle;
use holdfast_pipeline::Zone;
use holdfast_pipeline::conntrack::pressure::Evict;
use holdfast_pipeline::engine::{EngineConfig, Pickup};
use holdfast_pipeline::policy::{Action, Cidr, Classifier};

/// Everything a run needs, compiled and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub engine: EngineConfig,
    pub classifier: Arc<Classifier>,
    /// `zones.inside.networks`.
    pub inside: Vec<Cidr>,
    pub outside_interface: Option<String>,
    pub inside_interface: Option<String>,
    pub dataplane: Dataplane,
    pub control: Control,
    pub log: Log,
    /// `policy.on_reload`: re-judge existing flows by new rules (`Recheck`) or not.
    pub on_reload: OnReload,
    /// `state.snapshot_dir`: where the tables are written on stop and read on start
    /// (`None`: a restart forgets every connection).
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// `sync:` (`None`: no peer).
    pub sync: Option<Sync>,
}

/// FTFW (acknowledged, resent), NOTRACK (fire and forget) or ALARM (fire and forget,
/// everything again every `refresh`), as conntrackd names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Ftfw,
    Notrack,
    Alarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

/// `sync.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// The local address (unicast: bound; multicast: where the group is joined).
    pub listen: std::net::SocketAddr,
    /// The peer: the only source whose datagrams are read.
    pub peer: std::net::SocketAddr,
    /// `transport: multicast`: messages go to this group (on `listen`'s port).
    pub group: Option<std::net::Ipv4Addr>,
    pub interface: Option<String>,
    pub mode: SyncMode,
    pub role: Role,
    /// How often the workers' change queues are read and what they hold is sent.
    pub interval: std::time::Duration,
    /// A flow with traffic is sent again (`CT_UPD`) this often (or at half its
    /// timeout, if shorter), so that the peer's timer for it keeps up; ALARM mode
    /// sends everything again this often.
    pub refresh: std::time::Duration,
    /// The whole table is swept and compared with what the peer was told this often
    /// (and soon after a change was lost to a full queue).
    pub resync_interval: std::time::Duration,
    /// Changes each worker can queue for the endpoint before it counts them as lost.
    pub queue: usize,
    /// The peer is taken for dead after this long without a word.
    pub dead_interval: std::time::Duration,
    /// Take over by itself when the peer is dead (a standby only).
    pub auto_takeover: bool,
    pub ack_window: u32,
    pub resend_queue: usize,
    /// NOTRACK and ALARM: most data messages sent a second. Nothing acknowledges
    /// them, so a sweep sent at once overflows the peer's socket buffer and is lost
    /// unseen; FTFW is paced by the peer's ACKs instead.
    pub send_rate: u32,
    /// Most flows kept from the peer: what this appliance's tables can hold
    /// (`conntrack.capacity` × workers). A peer that sends more is counted, not kept.
    pub cache_limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReload {
    Keep,
    Recheck,
}

/// `control.*`: the HTTP endpoint and saturation reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// `None`: no endpoint (`listen: off`).
    pub listen: Option<std::net::SocketAddr>,
    /// `control.token_file`: a file whose contents `/flows` and `/reload` require as a
    /// bearer token (relative paths are relative to the config file).
    pub token_file: Option<std::path::PathBuf>,
    pub report_interval: std::time::Duration,
    pub saturation: Thresholds,
}

/// `control.saturation`: where a saturation event is raised (and, below 90 % of it,
/// cleared).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub table_fill: f64,
    pub embryonic_share: f64,
    pub busy: f64,
    pub rx_ring_full_per_s: f64,
    pub handoff_drops_per_s: f64,
    /// New flows refused per second by `per_source_limit` (or a full per-source table).
    pub source_limit_per_s: f64,
    /// SYNs the XDP program shed per second (`workers.shed_syns`).
    pub syn_shed_per_s: f64,
}

/// Where denials are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyOutput {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

impl fmt::Display for DenyOutput {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DenyOutput::Off => f.write_str("off"),
            DenyOutput::Stdout => f.write_str("standard output"),
            DenyOutput::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `log.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub denials: DenyOutput,
    /// Events per second over all workers; more are counted as suppressed.
    pub rate_limit: u32,
}

/// What `holdfast run` needs beyond the pipeline's settings.
#[derive(Debug, Clone)]
pub struct Dataplane {
    pub xdp_mode: [XdpMode; 2],
    pub queues: [u32; 2],
    pub cores: Vec<usize>,
    pub burst: usize,
    pub idle: Idle,
    pub umem_frames: u32,
    pub ring_size: u32,
    /// `workers.shed_syns`: the XDP program drops SYNs while a worker's RX ring is
    /// over half full.
    pub shed_syns: bool,
}

impl Config {
    /// The zone a frame entered from when only its source address is known (replay):
    /// `inside` when the source is in `zones.inside.networks`.
    pub fn zone_of(&self, src: u128, v6: bool) -> Zone {
        if self.inside.iter().any(|c| c.contains(src, v6)) { Zone::Inside } else { Zone::Outside }
    }

    /// What differs between a running configuration and `new` that only a restart can
    /// change (memory sizes, the hash, interfaces, cores, the endpoint). A reload
    /// applies everything else and reports these as not applied.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{what}: {a} -> {b}"));
            }
        };
        let (e, n) = (&self.engine, &new.engine);
        cmp("conntrack.capacity", e.capacity.to_string(), n.capacity.to_string());
        cmp("conntrack.fragments", e.fragments.to_string(), n.fragments.to_string());
        cmp("conntrack.accounting", e.accounting.to_string(), n.accounting.to_string());
        cmp("conntrack.ipv6_share", format!("{:?}", e.ipv6_slots), format!("{:?}", n.ipv6_slots));
        cmp("conntrack.tombstones", e.tombstones.to_string(), n.tombstones.to_string());
        cmp("conntrack.pressure.evict", format!("{:?}", e.pressure.evict), format!("{:?}", n.pressure.evict));
        if (e.per_source_limit == 0) != (n.per_source_limit == 0) {
            cmp("conntrack.per_source_limit", e.per_source_limit.to_string(), n.per_source_limit.to_string());
        }
        cmp("conntrack.per_source_ipv6_prefix", e.source_prefix_v6.to_string(), n.source_prefix_v6.to_string());
        cmp("zones.outside.interface", format!("{:?}", self.outside_interface), format!("{:?}", new.outside_interface));
        cmp("zones.inside.interface", format!("{:?}", self.inside_interface), format!("{:?}", new.inside_interface));
        let (d, m) = (&self.dataplane, &new.dataplane);
        cmp("zones.*.xdp_mode", format!("{:?}", d.xdp_mode), format!("{:?}", m.xdp_mode));
        cmp("zones.*.queues", format!("{:?}", d.queues), format!("{:?}", m.queues));
        cmp("workers.cores", format!("{:?}", d.cores), format!("{:?}", m.cores));
        cmp("workers.burst", d.burst.to_string(), m.burst.to_string());
        cmp("workers.idle", format!("{:?}", d.idle), format!("{:?}", m.idle));
        cmp("workers.umem_frames", d.umem_frames.to_string(), m.umem_frames.to_string());
        cmp("workers.ring_size", d.ring_size.to_string(), m.ring_size.to_string());
        cmp("workers.shed_syns", d.shed_syns.to_string(), m.shed_syns.to_string());
        let show = |l: Option<std::net::SocketAddr>| l.map_or("off".to_string(), |a| a.to_string());
        cmp("control.listen", show(self.control.listen), show(new.control.listen));
        cmp("sync", format!("{:?}", self.sync), format!("{:?}", new.sync));
        out
    }

    /// One line describing the configuration, for `check-config`.
    pub fn summary(&self) -> String {
        let rules = self.classifier.rules();
        let allow = rules.iter().filter(|r| r.action == Action::Allow).count();
        format!(
            "{} rules ({} allow, {} deny, default {}), {} inside networks, capacity {} entries per worker, pickup {}, evict {}",
            rules.len(),
            allow,
            rules.len() - allow,
            if self.classifier.default_action() == Action::Allow { "allow" } else { "deny" },
            self.inside.len(),
            self.engine.capacity,
            match self.engine.pickup {
                Pickup::Strict => "strict",
                Pickup::ReverseOfAllowed => "reverse-of-allowed",
                Pickup::Loose => "loose",
            },
            match self.engine.pressure.evict {
                Evict::ByClass => "by-class",
                Evict::Lru => "lru",
                Evict::None => "none",
            }
        )
    }
}
