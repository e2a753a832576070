//! The YAML file as written: every key optional with a documented default, unknown keys
//! rejected. See `configs/reference.yaml` for the commented version of every key.

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::values::{CidrVal, Dur, IcmpType, OneOrMany, Ports, Proto, ZoneSel};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub zones: Zones,
    pub conntrack: Conntrack,
    pub policy: Policy,
    pub workers: WorkersCfg,
    pub control: ControlCfg,
    pub log: LogCfg,
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
}

impl Default for SaturationCfg {
    fn default() -> Self {
        SaturationCfg {
            table_fill: unknown(0.80),
            embryonic_share: unknown(0.20),
            busy: unknown(0.90),
            rx_ring_full_per_s: unknown(1000.0),
            handoff_drops_per_s: unknown(1.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogCfg {
    pub denials: Spanned<String>,
    pub rate_limit: Spanned<u64>,
}

impl Default for LogCfg {
    fn default() -> Self {
        LogCfg { denials: unknown("-".into()), rate_limit: unknown(1000) }
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
    pub cores: Spanned<Vec<u64>>,
    pub burst: Spanned<u64>,
    pub idle: IdleCfg,
    pub umem_frames: Spanned<u64>,
    pub ring_size: Spanned<u64>,
}

impl Default for WorkersCfg {
    fn default() -> Self {
        WorkersCfg { cores: unknown(vec![1]), burst: unknown(64), idle: IdleCfg::Adaptive, umem_frames: unknown(8192), ring_size: unknown(2048) }
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
    pub interface: Option<String>,
    /// Address ranges that live on this side. Replay calls a frame's ingress zone
    /// `inside` when its source address is in `zones.inside.networks`.
    pub networks: Vec<CidrVal>,
    pub xdp_mode: XdpModeCfg,
    pub queues: Spanned<u64>,
}

impl Default for ZoneCfg {
    fn default() -> Self {
        ZoneCfg { interface: None, networks: vec![], xdp_mode: XdpModeCfg::Native, queues: unknown(1) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    pub capacity: Spanned<u64>,
    pub pickup: PickupCfg,
    pub fragments: Spanned<u64>,
    pub timeouts: TimeoutsCfg,
    pub per_source_limit: Spanned<u64>,
    pub tombstones: Spanned<u64>,
    pub pressure: PressureCfg,
}

fn unknown<T>(v: T) -> Spanned<T> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            capacity: unknown(1 << 20),
            pickup: PickupCfg::Strict,
            fragments: unknown(4096),
            timeouts: TimeoutsCfg::default(),
            per_source_limit: unknown(0),
            tombstones: unknown(65_536),
            pressure: PressureCfg::default(),
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
    pub rules: Vec<Spanned<RuleCfg>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { default: ActionCfg::Deny, arp: ActionCfg::Allow, ndp: ActionCfg::Allow, non_ip: ActionCfg::Deny, on_reload: OnReloadCfg::Keep, rules: vec![] }
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
    pub src: OneOrMany<CidrVal>,
    #[serde(default)]
    pub dst: OneOrMany<CidrVal>,
    #[serde(default)]
    pub src_port: Option<Spanned<OneOrMany<Ports>>>,
    #[serde(default)]
    pub dst_port: Option<Spanned<OneOrMany<Ports>>>,
    #[serde(default)]
    pub icmp_type: Option<Spanned<OneOrMany<IcmpType>>>,
    pub action: ActionCfg,
}
