//! The YAML file as written: every key optional with a documented default, unknown keys
//! rejected. See `configs/reference.yaml` for the commented version of every key.

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::values::{CidrVal, Count, Dur, IcmpType, OneOrMany, Ports, Proto, ZoneSel};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub zones: Zones,
    pub conntrack: Conntrack,
    pub policy: Policy,
    pub workers: WorkersCfg,
    pub control: ControlCfg,
    pub log: LogCfg,
    pub state: StateCfg,
    pub sync: Option<SyncCfg>,
}

/// `sync:`: state sync with a peer in conntrackd's protocol.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncCfg {
    pub transport: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub peer: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub interface: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub role: Option<Spanned<String>>,
    pub interval: Option<Spanned<Dur>>,
    pub refresh: Option<Spanned<Dur>>,
    pub resync_interval: Option<Spanned<Dur>>,
    pub queue: Option<Spanned<Count>>,
    pub dead_interval: Option<Spanned<Dur>>,
    pub takeover: Option<Spanned<String>>,
    pub ack_window: Option<Spanned<Count>>,
    pub resend_queue: Option<Spanned<Count>>,
    pub send_rate: Option<Spanned<Count>>,
}

/// `state:`: what survives a restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateCfg {
    pub snapshot_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlCfg {
    pub listen: Spanned<String>,
    pub token_file: Option<Spanned<String>>,
    pub report_interval: Option<Spanned<Dur>>,
    pub saturation: SaturationCfg,
}

impl Default for ControlCfg {
    fn default() -> Self {
        ControlCfg { listen: unknown("127.0.0.1:9477".into()), token_file: None, report_interval: None, saturation: SaturationCfg::default() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaturationCfg {
    pub table_fill: Spanned<f64>,
    pub embryonic_share: Spanned<f64>,
    pub busy: Spanned<f64>,
    pub rx_ring_full_per_s: Spanned<f64>,
    pub handoff_drops_per_s: Spanned<f64>,
    pub source_limit_per_s: Spanned<f64>,
    pub syn_shed_per_s: Spanned<f64>,
}

impl Default for SaturationCfg {
    fn default() -> Self {
        SaturationCfg {
            table_fill: unknown(0.80),
            embryonic_share: unknown(0.20),
            busy: unknown(0.90),
            rx_ring_full_per_s: unknown(1000.0),
            handoff_drops_per_s: unknown(1.0),
            source_limit_per_s: unknown(1.0),
            syn_shed_per_s: unknown(1.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogCfg {
    pub denials: Spanned<String>,
    pub rate_limit: Spanned<Count>,
}

impl Default for LogCfg {
    fn default() -> Self {
        LogCfg { denials: unknown("-".into()), rate_limit: unknown(Count(1000)) }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReloadCfg {
    #[default]
    Keep,
    Recheck,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeCfg {
    #[default]
    Native,
    Generic,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleCfg {
    Spin,
    #[default]
    Adaptive,
    Sleep,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersCfg {
    pub cores: Spanned<Vec<Count>>,
    pub burst: Spanned<Count>,
    pub idle: IdleCfg,
    pub umem_frames: Spanned<Count>,
    pub ring_size: Spanned<Count>,
    pub shed_syns: OnOff,
}

impl Default for WorkersCfg {
    fn default() -> Self {
        WorkersCfg {
            cores: unknown(vec![Count(1)]),
            burst: unknown(Count(64)),
            idle: IdleCfg::Adaptive,
            umem_frames: unknown(Count(8192)),
            ring_size: unknown(Count(2048)),
            shed_syns: OnOff::On,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Zones {
    pub outside: ZoneCfg,
    pub inside: ZoneCfg,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneCfg {
    /// Network interface of this side (used by the dataplane; replay ignores it).
    pub interface: Option<Spanned<String>>,
    /// Address ranges that live on this side. Replay calls a frame's ingress zone
    /// `inside` when its source address is in `zones.inside.networks`.
    pub networks: Option<Spanned<Vec<CidrVal>>>,
    pub xdp_mode: XdpModeCfg,
    pub queues: Spanned<Count>,
}

impl Default for ZoneCfg {
    fn default() -> Self {
        ZoneCfg { interface: None, networks: None, xdp_mode: XdpModeCfg::Native, queues: unknown(Count(1)) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    pub capacity: Spanned<Count>,
    pub pickup: PickupCfg,
    pub fragments: Spanned<Count>,
    pub timeouts: TimeoutsCfg,
    pub per_source_limit: Spanned<Count>,
    /// The prefix length an IPv6 source is counted by for `per_source_limit`.
    pub per_source_ipv6_prefix: Spanned<Count>,
    pub tombstones: Spanned<Count>,
    pub pressure: PressureCfg,
    /// Per-flow packet and byte counters (Linux `nf_conntrack_acct`).
    pub accounting: OnOff,
    /// The share of entries that may hold IPv6 flows (their addresses live in a pool
    /// of that size); absent: all.
    pub ipv6_share: Option<Spanned<f64>>,
    /// ICMP errors about TCP flows pass only when they quote a segment in the window.
    pub icmp_error_window: OnOff,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    #[default]
    On,
    Off,
}

fn unknown<T>(v: T) -> Spanned<T> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            capacity: unknown(Count(1 << 20)),
            pickup: PickupCfg::Strict,
            fragments: unknown(Count(4096)),
            timeouts: TimeoutsCfg::default(),
            per_source_limit: unknown(Count(0)),
            per_source_ipv6_prefix: unknown(Count(64)),
            tombstones: unknown(Count(65_536)),
            pressure: PressureCfg::default(),
            accounting: OnOff::On,
            ipv6_share: None,
            icmp_error_window: OnOff::On,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictCfg {
    #[default]
    ByClass,
    Lru,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PressureCfg {
    pub evict: Option<Spanned<EvictCfg>>,
    pub embryonic_share: Option<Spanned<f64>>,
    pub stream_share: Option<Spanned<f64>>,
    pub adaptive_start: Option<Spanned<f64>>,
    pub adaptive_end: Option<Spanned<f64>>,
    pub timeout_floor: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PickupCfg {
    #[default]
    Strict,
    ReverseOfAllowed,
    Loose,
}

/// Every timeout; absent ones keep Linux's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsCfg {
    pub tcp_syn_sent: Option<Spanned<Dur>>,
    pub tcp_syn_recv: Option<Spanned<Dur>>,
    pub tcp_established: Option<Spanned<Dur>>,
    pub tcp_fin_wait: Option<Spanned<Dur>>,
    pub tcp_close_wait: Option<Spanned<Dur>>,
    pub tcp_last_ack: Option<Spanned<Dur>>,
    pub tcp_time_wait: Option<Spanned<Dur>>,
    pub tcp_close: Option<Spanned<Dur>>,
    pub tcp_syn_sent2: Option<Spanned<Dur>>,
    pub tcp_max_retrans: Option<Spanned<Dur>>,
    pub tcp_unacknowledged: Option<Spanned<Dur>>,
    pub udp_unreplied: Option<Spanned<Dur>>,
    pub udp_replied: Option<Spanned<Dur>>,
    pub icmp: Option<Spanned<Dur>>,
    pub generic: Option<Spanned<Dur>>,
    pub fragment: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionCfg {
    Allow,
    #[default]
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub default: ActionCfg,
    pub arp: ActionCfg,
    pub ndp: ActionCfg,
    pub non_ip: ActionCfg,
    pub on_reload: OnReloadCfg,
    pub rules: Option<Spanned<Vec<Spanned<RuleCfg>>>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { default: ActionCfg::Deny, arp: ActionCfg::Allow, ndp: ActionCfg::Allow, non_ip: ActionCfg::Deny, on_reload: OnReloadCfg::Keep, rules: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCfg {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub from: ZoneSel,
    #[serde(default)]
    pub to: ZoneSel,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default)]
    pub src: Option<Spanned<OneOrMany<CidrVal>>>,
    #[serde(default)]
    pub dst: Option<Spanned<OneOrMany<CidrVal>>>,
    /// Prefixes from a file, one a line (`#` comments): for long lists such as
    /// blocklists. Adds to `src` / `dst` when both are given.
    #[serde(default)]
    pub src_file: Option<Spanned<String>>,
    #[serde(default)]
    pub dst_file: Option<Spanned<String>>,
    #[serde(default)]
    pub src_port: Option<Spanned<OneOrMany<Ports>>>,
    #[serde(default)]
    pub dst_port: Option<Spanned<OneOrMany<Ports>>>,
    #[serde(default)]
    pub icmp_type: Option<Spanned<OneOrMany<IcmpType>>>,
    pub action: ActionCfg,
}
