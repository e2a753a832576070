//! The `zones` and `workers` sections: the two interfaces, the inside networks, and how
//! many workers serve which queues on which cores.

use holdfast_dataplane::bpf::XdpMode;
use holdfast_dataplane::worker::Idle;
use holdfast_pipeline::policy::Cidr;

use super::ConfigError;
use super::compile::Ctx;
use super::compiled::Dataplane;
use super::model::{File, IdleCfg, OnOff, XdpModeCfg, Zones};

/// Checks the interface names and returns `zones.inside.networks`.
pub(super) fn inside(cx: &Ctx, zones: &Zones) -> Result<Vec<Cidr>, ConfigError> {
    if let (Some(o), Some(i)) = (&zones.outside.interface, &zones.inside.interface)
        && o.value == i.value
    {
        return Err(cx.at(
            i.referenced,
            format!("zones.inside.interface is {:?}, the same as zones.outside.interface: Holdfast sits between two interfaces, one per side", i.value),
        ));
    }
    for z in [&zones.outside.interface, &zones.inside.interface].into_iter().flatten() {
        let n = &z.value;
        if n.is_empty() || n.len() > 15 || n.contains('/') || n.chars().any(char::is_whitespace) {
            return Err(cx.at(z.referenced, format!("{n:?} is not an interface name (at most 15 characters, no '/' or spaces)")));
        }
    }
    let mut inside = Vec::new();
    for (zone, z) in [("outside", &zones.outside), ("inside", &zones.inside)] {
        if let Some(n) = &z.networks {
            if n.value.is_empty() {
                return Err(cx.empty_list(n.referenced, &format!("zones.{zone}.networks")));
            }
            if zone == "inside" {
                inside = n.value.iter().map(|c| c.0).collect();
            }
        }
    }
    Ok(inside)
}

pub(super) fn dataplane(cx: &Ctx, f: &File) -> Result<Dataplane, ConfigError> {
    let w = &f.workers;
    let mode = |m: XdpModeCfg| match m {
        XdpModeCfg::Native => XdpMode::Native,
        XdpModeCfg::Generic => XdpMode::Generic,
    };
    let mut queues = [0u32; 2];
    for (k, z) in [&f.zones.outside, &f.zones.inside].into_iter().enumerate() {
        if z.queues.value.0 == 0 || z.queues.value.0 > 256 {
            return Err(cx.at(z.queues.referenced, "zones.*.queues must be between 1 and 256"));
        }
        queues[k] = z.queues.value.0 as u32;
    }
    if w.cores.value.is_empty() || w.cores.value.len() > 256 {
        return Err(cx.at(w.cores.referenced, "workers.cores lists between 1 and 256 cores"));
    }
    // Two workers pinned to one core take turns on it: each runs at half speed or
    // less (a spinning one starves the other), and neither says why.
    if let Some((i, c)) = w.cores.value.iter().enumerate().find(|&(i, c)| w.cores.value[..i].contains(c)) {
        return Err(cx.at(
            w.cores.referenced,
            format!(
                "workers.cores lists core {} twice (entries {} and {}): each worker needs a core of its own",
                c.0,
                w.cores.value.iter().position(|x| x == c).unwrap_or(0) + 1,
                i + 1
            ),
        ));
    }
    for z in [&f.zones.outside, &f.zones.inside] {
        if z.queues.value.0 as usize != w.cores.value.len() {
            return Err(cx.at(
                z.queues.referenced,
                format!(
                    "zones.*.queues is {} but workers.cores lists {} worker(s): worker i serves queue i of both interfaces, so they must be equal",
                    z.queues.value.0,
                    w.cores.value.len()
                ),
            ));
        }
    }
    if !(1..=1024).contains(&w.burst.value.0) {
        return Err(cx.at(w.burst.referenced, "workers.burst must be between 1 and 1024"));
    }
    if !(64..=(1 << 20)).contains(&w.umem_frames.value.0) {
        return Err(cx.at(w.umem_frames.referenced, "workers.umem_frames must be between 64 and 1048576 (4 KiB each)"));
    }
    if !w.ring_size.value.0.is_power_of_two() || !(64..=(1 << 16)).contains(&w.ring_size.value.0) {
        return Err(cx.at(w.ring_size.referenced, "workers.ring_size must be a power of two between 64 and 65536"));
    }
    Ok(Dataplane {
        xdp_mode: [mode(f.zones.outside.xdp_mode), mode(f.zones.inside.xdp_mode)],
        queues,
        cores: w.cores.value.iter().map(|c| c.0 as usize).collect(),
        burst: w.burst.value.0 as usize,
        idle: match w.idle {
            IdleCfg::Spin => Idle::Spin,
            IdleCfg::Adaptive => Idle::Adaptive,
            IdleCfg::Sleep => Idle::Sleep,
        },
        umem_frames: w.umem_frames.value.0 as u32,
        ring_size: w.ring_size.value.0 as u32,
        shed_syns: w.shed_syns == OnOff::On,
    })
}
