//! The `control` and `log` sections: the endpoint, its token, saturation thresholds,
//! and where denials go.

use super::ConfigError;
use super::compile::Ctx;
use super::compiled::{Control, DenyOutput, Log, Thresholds};
use super::model;

pub(super) fn control(cx: &Ctx, c: &model::ControlCfg) -> Result<Control, ConfigError> {
    let l = c.listen.value.trim();
    let listen = if l == "off" || l.is_empty() {
        None
    } else {
        Some(
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| cx.at(c.listen.referenced, format!("control.listen: {l:?} is not an address:port such as 127.0.0.1:9477 (or off)")))?,
        )
    };
    let report_interval = match &c.report_interval {
        None => std::time::Duration::from_secs(1),
        Some(d) => {
            let ns = d.value.0.as_nanos();
            if !(100_000_000..=3_600_000_000_000).contains(&ns) {
                return Err(cx.at(d.referenced, "control.report_interval must be between 100ms and 1h"));
            }
            std::time::Duration::from_nanos(ns)
        }
    };
    let s = &c.saturation;
    for (name, v) in [("table_fill", &s.table_fill), ("embryonic_share", &s.embryonic_share), ("busy", &s.busy)] {
        if !(v.value > 0.0 && v.value <= 1.0) {
            return Err(cx.at(v.referenced, format!("control.saturation.{name} is a fraction in (0, 1]")));
        }
    }
    for (name, v) in [
        ("rx_ring_full_per_s", &s.rx_ring_full_per_s),
        ("handoff_drops_per_s", &s.handoff_drops_per_s),
        ("source_limit_per_s", &s.source_limit_per_s),
        ("syn_shed_per_s", &s.syn_shed_per_s),
    ] {
        if !(v.value > 0.0 && v.value.is_finite()) {
            return Err(cx.at(v.referenced, format!("control.saturation.{name} is a rate above 0 (events per second)")));
        }
    }
    let token_file = match &c.token_file {
        None => None,
        Some(t) if t.value.trim().is_empty() => {
            return Err(cx.at(t.referenced, "control.token_file is empty: name a file holding the token, or remove the key"));
        }
        Some(t) => Some(std::path::PathBuf::from(t.value.trim())),
    };
    Ok(Control {
        listen,
        token_file,
        report_interval,
        saturation: Thresholds {
            table_fill: s.table_fill.value,
            embryonic_share: s.embryonic_share.value,
            busy: s.busy.value,
            rx_ring_full_per_s: s.rx_ring_full_per_s.value,
            handoff_drops_per_s: s.handoff_drops_per_s.value,
            source_limit_per_s: s.source_limit_per_s.value,
            syn_shed_per_s: s.syn_shed_per_s.value,
        },
    })
}

pub(super) fn log(cx: &Ctx, l: &model::LogCfg) -> Result<Log, ConfigError> {
    let d = l.denials.value.trim();
    let denials = match d {
        "-" => DenyOutput::Stdout,
        "off" | "none" => DenyOutput::Off,
        "" => return Err(cx.at(l.denials.referenced, "log.denials is a path, \"-\" for standard output, or off")),
        p => DenyOutput::File(p.into()),
    };
    if l.rate_limit.value.0 > 10_000_000 {
        return Err(cx.at(l.rate_limit.referenced, "log.rate_limit must be at most 10000000 events per second (0 = log none)"));
    }
    Ok(Log { denials, rate_limit: l.rate_limit.value.0 as u32 })
}

/// `state.snapshot_dir`: an absolute directory (a relative one would depend on where
/// the service happens to start: systemd starts it in `/`).
pub(super) fn snapshot_dir(cx: &Ctx, s: &model::StateCfg) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(d) = &s.snapshot_dir else { return Ok(None) };
    let v = d.value.trim();
    if v.is_empty() {
        return Err(
            cx.at(d.referenced, "state.snapshot_dir is empty: name a directory (e.g. /var/lib/holdfast), or remove the key to keep no state across restarts")
        );
    }
    let p = std::path::PathBuf::from(v);
    if !p.is_absolute() {
        return Err(cx.at(d.referenced, format!("state.snapshot_dir {v:?} is relative: give an absolute path such as /var/lib/holdfast")));
    }
    Ok(Some(p))
}

/// `sync.send_rate`'s default, in messages a second: a 1M-flow sweep in ten seconds,
/// in bursts of ~100 messages (~5 datagrams) a millisecond, which a receiver's
/// default socket buffer (~90 datagrams) takes with room to spare.
pub const DEFAULT_SEND_RATE: u64 = 100_000;

/// `sync:`: unicast UDP to one peer; every setting checked where it is written.
pub(super) fn sync(cx: &Ctx, s: &model::SyncCfg) -> Result<super::compiled::Sync, ConfigError> {
    use super::compiled::{Role, Sync, SyncMode};
    use serde_saphyr::Location;
    let loc = |v: &Option<serde_saphyr::Spanned<String>>| v.as_ref().map_or(Location::UNKNOWN, |v| v.referenced);
    let multicast = match s.transport.as_ref().map(|t| t.value.trim()) {
        None | Some("udp") => false,
        Some("multicast") => true,
        Some(other) => return Err(cx.at(loc(&s.transport), format!("sync.transport: {other:?} is not udp or multicast"))),
    };
    let group = match (&s.group, multicast) {
        (Some(g), true) => match g.value.trim().parse::<std::net::Ipv4Addr>() {
            Ok(a) if a.is_multicast() => Some(a),
            _ => return Err(cx.at(g.referenced, format!("sync.group: {:?} is not an IPv4 multicast address such as 225.0.0.50", g.value))),
        },
        (Some(g), false) => return Err(cx.at(g.referenced, "sync.group is for transport: multicast")),
        (None, true) => return Err(cx.at(loc(&s.transport), "sync.transport: multicast needs sync.group (e.g. 225.0.0.50)")),
        (None, false) => None,
    };
    let addr = |v: &Option<serde_saphyr::Spanned<String>>, key: &str| -> Result<std::net::SocketAddr, ConfigError> {
        let Some(v) = v else { return Err(cx.at(Location::UNKNOWN, format!("sync.{key} is required (an address:port, e.g. 192.168.77.1:3780)"))) };
        v.value.trim().parse().map_err(|_| cx.at(v.referenced, format!("sync.{key}: {:?} is not an address:port such as 192.168.77.1:3780", v.value)))
    };
    let listen = addr(&s.listen, "listen")?;
    let peer = addr(&s.peer, "peer")?;
    if listen == peer {
        return Err(cx.at(loc(&s.peer), "sync.peer is sync.listen itself"));
    }
    if group.is_some() && !listen.is_ipv4() {
        return Err(cx.at(loc(&s.listen), "sync.listen: multicast joins the group on this IPv4 address: give the sync interface's address"));
    }
    let mode = match s.mode.as_ref().map(|m| m.value.trim()) {
        None | Some("ftfw") => SyncMode::Ftfw,
        Some("notrack") => SyncMode::Notrack,
        Some("alarm") => SyncMode::Alarm,
        Some(other) => return Err(cx.at(loc(&s.mode), format!("sync.mode: {other:?} is not ftfw, notrack or alarm"))),
    };
    let role = match s.role.as_ref().map(|m| m.value.trim()) {
        None | Some("active") => Role::Active,
        Some("standby") => Role::Standby,
        Some(other) => return Err(cx.at(loc(&s.role), format!("sync.role: {other:?} is not active or standby"))),
    };
    let auto_takeover = match s.takeover.as_ref().map(|m| m.value.trim()) {
        None | Some("auto") => true,
        Some("manual") => false,
        Some(other) => return Err(cx.at(loc(&s.takeover), format!("sync.takeover: {other:?} is not auto or manual"))),
    };
    let dur = |v: &Option<serde_saphyr::Spanned<super::values::Dur>>,
               key: &str,
               default_ms: u64,
               lo_ms: u64,
               hi_ms: u64|
     -> Result<std::time::Duration, ConfigError> {
        let Some(v) = v else { return Ok(std::time::Duration::from_millis(default_ms)) };
        let ms = v.value.0.as_nanos() / 1_000_000;
        if !(lo_ms..=hi_ms).contains(&ms) {
            return Err(cx.at(
                v.referenced,
                format!(
                    "sync.{key} must be between {} and {}",
                    humantime::format_duration(std::time::Duration::from_millis(lo_ms)),
                    humantime::format_duration(std::time::Duration::from_millis(hi_ms))
                ),
            ));
        }
        Ok(std::time::Duration::from_millis(ms))
    };
    let count = |v: &Option<serde_saphyr::Spanned<super::values::Count>>, key: &str, default: u64, hi: u64| -> Result<u64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        if !(1..=hi).contains(&v.value.0) {
            return Err(cx.at(v.referenced, format!("sync.{key} must be between 1 and {hi}")));
        }
        Ok(v.value.0)
    };
    let interface = match &s.interface {
        Some(i) if i.value.trim().is_empty() => {
            return Err(cx.at(i.referenced, "sync.interface is empty: name the interface the sync link is on, or remove the key"));
        }
        Some(i) => Some(i.value.trim().to_string()),
        None => None,
    };
    Ok(Sync {
        listen,
        peer,
        group,
        interface,
        mode,
        role,
        interval: dur(&s.interval, "interval", 50, 10, 10_000)?,
        refresh: dur(&s.refresh, "refresh", 60_000, 1000, 3_600_000)?,
        resync_interval: dur(&s.resync_interval, "resync_interval", 600_000, 1000, 86_400_000)?,
        queue: match &s.queue {
            Some(q) if q.value.0 < 1024 => {
                return Err(cx.at(q.referenced, "sync.queue must be between 1024 and 16777216 (changes a worker can queue before it counts them as lost)"));
            }
            q => count(q, "queue", 65_536, 16_777_216)? as usize,
        },
        dead_interval: dur(&s.dead_interval, "dead_interval", 3000, 1000, 3_600_000)?,
        auto_takeover,
        ack_window: count(&s.ack_window, "ack_window", 300, 100_000)? as u32,
        resend_queue: count(&s.resend_queue, "resend_queue", 131_072, 10_000_000)? as usize,
        send_rate: match &s.send_rate {
            Some(r) if !(1000..=10_000_000).contains(&r.value.0) => {
                return Err(cx.at(r.referenced, "sync.send_rate must be between 1000 and 10000000 (messages a second in notrack and alarm modes)"));
            }
            r => count(r, "send_rate", DEFAULT_SEND_RATE, 10_000_000)? as u32,
        },
        cache_limit: 0,
    })
}
