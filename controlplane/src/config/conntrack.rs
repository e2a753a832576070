//! The `conntrack` section: the table's sizes, pickup, timeouts and pressure model.

use holdfast_pipeline::conntrack::TimerClass;
use holdfast_pipeline::conntrack::pressure::{Evict, Pressure};
use holdfast_pipeline::engine::{EngineConfig, Pickup};
use serde_saphyr::{Location, Spanned};

use super::compile::{Ctx, action, timeout};
use super::model::{self, EvictCfg, File, PickupCfg};
use super::{ConfigError, values};

/// `conntrack.*` (and the policy's non-IP actions) as the engine's settings.
pub(super) fn engine(cx: &Ctx, f: &File) -> Result<EngineConfig, ConfigError> {
    let ct = &f.conntrack;
    let capacity = ct.capacity.value.0;
    if capacity == 0 || capacity > (1 << 31) {
        return Err(cx.at(ct.capacity.referenced, format!("conntrack.capacity must be between 1 and {} entries", 1u64 << 31)));
    }
    let fragments = ct.fragments.value.0;
    if fragments == 0 || fragments > (1 << 24) {
        return Err(cx.at(ct.fragments.referenced, "conntrack.fragments must be between 1 and 16777216"));
    }
    let mut engine = EngineConfig {
        capacity: capacity as usize,
        fragments: fragments as usize,
        pickup: match ct.pickup {
            PickupCfg::Strict => Pickup::Strict,
            PickupCfg::ReverseOfAllowed => Pickup::ReverseOfAllowed,
            PickupCfg::Loose => Pickup::Loose,
        },
        arp: action(f.policy.arp),
        ndp: action(f.policy.ndp),
        non_ip: action(f.policy.non_ip),
        accounting: ct.accounting == model::OnOff::On,
        icmp_error_window: ct.icmp_error_window == model::OnOff::On,
        ipv6_slots: match &ct.ipv6_share {
            None => None,
            Some(s) if !(0.0..=1.0).contains(&s.value) || s.value.is_nan() => {
                return Err(cx.at(
                    s.referenced,
                    format!("conntrack.ipv6_share must be between 0 and 1 (the share of entries that may hold IPv6 flows), not {}", s.value),
                ));
            }
            Some(s) => Some((capacity as f64 * s.value).ceil() as usize),
        },
        ..EngineConfig::default()
    };
    let t = &ct.timeouts;
    let set: [(TimerClass, &Option<Spanned<values::Dur>>); 15] = [
        (TimerClass::TcpSynSent, &t.tcp_syn_sent),
        (TimerClass::TcpSynRecv, &t.tcp_syn_recv),
        (TimerClass::TcpEstablished, &t.tcp_established),
        (TimerClass::TcpFinWait, &t.tcp_fin_wait),
        (TimerClass::TcpCloseWait, &t.tcp_close_wait),
        (TimerClass::TcpLastAck, &t.tcp_last_ack),
        (TimerClass::TcpTimeWait, &t.tcp_time_wait),
        (TimerClass::TcpClose, &t.tcp_close),
        (TimerClass::TcpSynSent2, &t.tcp_syn_sent2),
        (TimerClass::TcpRetrans, &t.tcp_max_retrans),
        (TimerClass::TcpUnack, &t.tcp_unacknowledged),
        (TimerClass::UdpUnreplied, &t.udp_unreplied),
        (TimerClass::UdpReplied, &t.udp_replied),
        (TimerClass::Icmp, &t.icmp),
        (TimerClass::Generic, &t.generic),
    ];
    for (class, v) in set {
        if let Some(d) = v {
            engine.timeouts.set(class, timeout(cx, d, class.name())?);
        }
    }
    if let Some(d) = &t.fragment {
        engine.fragment_timeout = timeout(cx, d, "fragment")?;
    }
    if ct.per_source_limit.value.0 > u64::from(u32::MAX) {
        return Err(cx.at(ct.per_source_limit.referenced, "conntrack.per_source_limit must be at most 4294967295 (0 = no limit)"));
    }
    engine.per_source_limit = ct.per_source_limit.value.0 as u32;
    if !(1..=128).contains(&ct.per_source_ipv6_prefix.value.0) {
        return Err(cx.at(
            ct.per_source_ipv6_prefix.referenced,
            format!("conntrack.per_source_ipv6_prefix must be a prefix length from 1 to 128 (64: one per /64), not {}", ct.per_source_ipv6_prefix.value.0),
        ));
    }
    engine.source_prefix_v6 = ct.per_source_ipv6_prefix.value.0 as u8;
    if ct.tombstones.value.0 > (1 << 26) {
        return Err(cx.at(ct.tombstones.referenced, "conntrack.tombstones must be at most 67108864 (0 = none)"));
    }
    engine.tombstones = ct.tombstones.value.0 as usize;
    engine.pressure = pressure(cx, &ct.pressure)?;

    Ok(engine)
}

fn pressure(cx: &Ctx, p: &model::PressureCfg) -> Result<Pressure, ConfigError> {
    let mut out = Pressure::default();
    if let Some(e) = &p.evict {
        out.evict = match e.value {
            EvictCfg::ByClass => Evict::ByClass,
            EvictCfg::Lru => Evict::Lru,
            EvictCfg::None => Evict::None,
        };
    }
    if let Some(s) = &p.embryonic_share {
        if !(s.value > 0.0 && s.value <= 1.0) {
            return Err(cx.at(s.referenced, "conntrack.pressure.embryonic_share must be in (0, 1]"));
        }
        if out.evict != Evict::ByClass && s.value < 1.0 {
            return Err(
                cx.at(s.referenced, "embryonic_share applies to evict: by-class only; the lru and none models imitate systems without a quota (use 1.0)")
            );
        }
        out.embryonic_share = s.value;
    }
    if let Some(s) = &p.stream_share {
        if !(s.value > 0.0 && s.value <= 1.0) {
            return Err(cx.at(s.referenced, "conntrack.pressure.stream_share must be in (0, 1]"));
        }
        if out.evict != Evict::ByClass && s.value < 1.0 {
            return Err(cx.at(s.referenced, "stream_share applies to evict: by-class only; the lru and none models have no classes (use 1.0)"));
        }
        out.stream_share = s.value;
    }
    if out.evict != Evict::ByClass {
        out.embryonic_share = 1.0;
        out.stream_share = 1.0;
    }
    let start = p.adaptive_start.as_ref();
    let end = p.adaptive_end.as_ref();
    if let Some(s) = start {
        out.adaptive_start = s.value;
    }
    if let Some(e) = end {
        out.adaptive_end = e.value;
    }
    if !(0.0..2.0).contains(&out.adaptive_start) || out.adaptive_end <= out.adaptive_start || out.adaptive_end > 2.0 {
        let loc = end.or(start).map(|s| s.referenced).unwrap_or(Location::UNKNOWN);
        return Err(cx.at(loc, "conntrack.pressure needs 0 <= adaptive_start < adaptive_end <= 2 (fill fractions; pf uses 0.6 and 1.2)"));
    }
    if let Some(f) = &p.timeout_floor {
        out.timeout_floor_ticks = timeout(cx, f, "pressure.timeout_floor")?.ticks();
    }
    Ok(out)
}
