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
    for (name, v) in
        [("rx_ring_full_per_s", &s.rx_ring_full_per_s), ("handoff_drops_per_s", &s.handoff_drops_per_s), ("source_limit_per_s", &s.source_limit_per_s)]
    {
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
