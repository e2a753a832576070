//! What a configuration needs from the machine it runs on, checked before anything
//! starts: memory when the tables are full, interfaces and their queues, cores, the
//! deny log's directory, the token file, the control port. `check-config` reports the
//! memory always and the rest with `--host`; `run` refuses to start on any error here,
//! in sentences that name the setting — never an errno from deep inside the start.

use std::path::Path;

use holdfast_dataplane::control::DenyEvent;
use holdfast_dataplane::handoff;
use holdfast_dataplane::host::{self, Memory, bytes};
use holdfast_dataplane::worker::{DENY_RING, HANDOFF_RING};
use holdfast_dataplane::xsk::FRAME_SIZE;
use holdfast_pipeline::{Engine, EngineConfig};

use crate::config::{Config, DenyOutput};

/// Memory the configuration commits once every table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub workers: u64,
    /// One worker's engine: table, index, timers, lists, tombstones, counts, fragments.
    pub engine: u64,
    /// One worker's UMEM (`workers.umem_frames` frames of 4 KiB).
    pub umem: u64,
    /// One worker's rings: handoff rings from every other worker, the deny log queue.
    pub rings: u64,
    pub total: u64,
}

fn per_worker_rings(workers: u64) -> u64 {
    let handoff = workers.saturating_sub(1) * HANDOFF_RING as u64 * std::mem::size_of::<handoff::Item>() as u64;
    handoff + DENY_RING as u64 * std::mem::size_of::<DenyEvent>() as u64
}

impl MemoryPlan {
    pub fn of(cfg: &Config) -> MemoryPlan {
        Self::with(&cfg.engine, cfg.dataplane.cores.len().max(1) as u64, cfg.dataplane.umem_frames)
    }

    fn with(engine: &EngineConfig, workers: u64, umem_frames: u32) -> MemoryPlan {
        let engine_bytes = Engine::footprint(engine) as u64;
        let umem = u64::from(umem_frames) * u64::from(FRAME_SIZE);
        let rings = per_worker_rings(workers);
        let total = engine_bytes.saturating_add(umem).saturating_add(rings).saturating_mul(workers);
        MemoryPlan { workers, engine: engine_bytes, umem, rings, total }
    }

    /// One line: the total and what it is made of.
    pub fn describe(&self, cfg: &Config) -> String {
        format!(
            "memory when full: {} ({} worker(s) x [{} for {} entries ({} bytes an entry), {} UMEM, {} rings])",
            bytes(self.total),
            self.workers,
            bytes(self.engine),
            cfg.engine.capacity,
            self.engine / cfg.engine.capacity.max(1) as u64,
            bytes(self.umem),
            bytes(self.rings)
        )
    }

    /// The largest `conntrack.capacity` whose plan fits in `limit` bytes.
    fn largest_capacity(cfg: &Config, limit: u64) -> usize {
        let (mut lo, mut hi) = (0usize, cfg.engine.capacity);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let e = EngineConfig { capacity: mid, ..cfg.engine };
            if Self::with(&e, self_workers(cfg), cfg.dataplane.umem_frames).total <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Whether the plan fits in `limit` bytes (`what` names the limit); if not, what
    /// to change.
    pub fn fits(&self, cfg: &Config, limit: u64, what: &str) -> Result<(), DoesNotFit> {
        if self.total <= limit {
            return Ok(());
        }
        Err(DoesNotFit {
            capacity: cfg.engine.capacity,
            workers: self.workers,
            needs: self.total,
            limit,
            limit_name: what.to_string(),
            largest_capacity: Self::largest_capacity(cfg, limit),
        })
    }
}

/// A configuration whose tables, when full, would not fit in memory; says what to lower.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "conntrack.capacity {capacity} x {workers} worker(s) needs {} when the tables are full, more than {limit_name} ({}): {}",
    bytes(*.needs),
    bytes(*.limit),
    if *.largest_capacity > 0 {
        format!("lower conntrack.capacity to at most {}, or use fewer workers", .largest_capacity)
    } else {
        "even one entry per worker does not fit: lower workers.umem_frames or use fewer workers".to_string()
    }
)]
pub struct DoesNotFit {
    pub capacity: usize,
    pub workers: u64,
    pub needs: u64,
    pub limit: u64,
    /// What the limit is (the machine's RAM, the cgroup's limit, MemAvailable).
    pub limit_name: String,
    /// The largest capacity that fits (0: none).
    pub largest_capacity: usize,
}

fn self_workers(cfg: &Config) -> u64 {
    cfg.dataplane.cores.len().max(1) as u64
}

/// The memory check `check-config` makes on any machine: the plan must fit in the RAM
/// (or the cgroup's limit) this machine has at all.
pub fn memory_ceiling(cfg: &Config) -> Result<String, DoesNotFit> {
    let plan = MemoryPlan::of(cfg);
    let line = plan.describe(cfg);
    match host::memory() {
        Some(m) => {
            plan.fits(cfg, m.ceiling(), &ceiling_name(&m))?;
            Ok(format!("{line}; this machine has {}", bytes(m.ceiling())))
        }
        None => Ok(format!("{line}; this machine's memory is unknown (no /proc/meminfo)")),
    }
}

fn ceiling_name(m: &Memory) -> String {
    match m.cgroup_limit {
        Some(l) if l < m.total => "this service's cgroup memory limit".into(),
        _ => "this machine's RAM".into(),
    }
}

/// The memory check `run` makes before it starts: the plan must fit in what can be
/// committed now (MemAvailable, and the cgroup's headroom).
pub fn memory_now(cfg: &Config) -> Result<MemoryPlan, DoesNotFit> {
    let plan = MemoryPlan::of(cfg);
    if let Some(m) = host::memory() {
        let what = if m.cgroup_limit.is_some_and(|l| l.saturating_sub(m.cgroup_used) < m.available) {
            "what this service's cgroup has left".to_string()
        } else {
            "the memory available now (MemAvailable)".to_string()
        };
        plan.fits(cfg, m.usable(), &what)?;
    }
    Ok(plan)
}

/// One finding of a host check: an error stops `run`; a warning does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub error: bool,
    pub text: String,
}

fn error(text: String) -> Finding {
    Finding { error: true, text }
}

fn warning(text: String) -> Finding {
    Finding { error: false, text }
}

/// Everything `holdfast run` needs from this machine besides memory: both interfaces
/// present with enough queues, the cores, the deny log's directory, the token file.
pub fn host(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let workers = cfg.dataplane.cores.len().max(1) as u32;
    for (k, (zone, name)) in [("outside", &cfg.outside_interface), ("inside", &cfg.inside_interface)].into_iter().enumerate() {
        let Some(name) = name else {
            out.push(error(format!("zones.{zone}.interface is not set: holdfast run needs both interfaces")));
            continue;
        };
        match host::interface(name) {
            Err(e) => out.push(error(format!("zones.{zone}.interface: {e}"))),
            Ok(i) => {
                let q = cfg.dataplane.queues[k];
                let have = i.rx_queues.min(i.tx_queues);
                if i.rx_queues > q {
                    // What `run` would refuse to start with, said with the setting.
                    let e = holdfast_dataplane::error::StartError::ExtraQueues { name: name.clone(), have: i.rx_queues, queues: q };
                    out.push(error(format!("zones.{zone}.queues is {q}: {e}")));
                }
                if q > have {
                    out.push(error(format!(
                        "zones.{zone}.queues is {q}, but {name} has {} receive and {} transmit queue(s): each worker binds one queue of each interface, so use at most {have} worker(s) (workers.cores and zones.*.queues), or add queues (ethtool -L {name} combined {q})",
                        i.rx_queues, i.tx_queues
                    )));
                }
                if !i.state.is_up() {
                    out.push(warning(format!(
                        "zones.{zone}.interface {name} is down (not up, or no carrier): nothing will pass to it until it is up (ip link set {name} up; check the cable)"
                    )));
                }
                if workers > 1 && i.mtu as usize > handoff::MAX_FRAME - 18 {
                    out.push(warning(format!(
                        "{name} has MTU {}: with {workers} workers, frames over {} bytes that must cross to another worker are dropped (handoff_too_large)",
                        i.mtu,
                        handoff::MAX_FRAME
                    )));
                }
            }
        }
    }
    let cores = host::cores();
    for &c in &cfg.dataplane.cores {
        if !cores.contains(&c) {
            out.push(error(format!("workers.cores lists core {c}, but this process may run on cores {cores:?}")));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for &c in &cfg.dataplane.cores {
        if !seen.insert(c) {
            out.push(warning(format!("workers.cores lists core {c} more than once: those workers share a core")));
        }
    }
    if let DenyOutput::File(p) = &cfg.log.denials {
        out.extend(writable_dir(p, "log.denials"));
    }
    if let Some(t) = &cfg.control.token_file {
        match crate::config::read_token(t) {
            Err(e) => out.push(error(e.to_string())),
            Ok(_) => out.extend(crate::config::token_warning(t).map(warning)),
        }
    }
    if let Some(addr) = cfg.control.listen
        && let Err(e) = std::net::TcpListener::bind(addr)
    {
        out.push(warning(format!("control.listen {addr}: cannot listen now: {e} (is holdfast already running?)")));
    }
    out.extend(huge_pages(&std::fs::read_to_string(THP).unwrap_or_default()));
    out
}

const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Transparent huge pages turned off: the conntrack table asks for them (madvise).
/// Measured on the dev VM (the targets bench, one sitting): 1M flows 122 ns/packet
/// with them, 151 without; 10k flows the same.
fn huge_pages(enabled: &str) -> Option<Finding> {
    let mode = enabled.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?;
    (mode == "never").then(|| {
        warning(format!(
            "transparent huge pages are off ([never] in {THP}): the conntrack table asks for them; without, a table of 1M flows measured ~20 % slower (echo madvise > {THP})"
        ))
    })
}

fn writable_dir(file: &Path, key: &str) -> Option<Finding> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Err(e) => Some(error(format!("{key} {}: its directory {} cannot be used: {e}", file.display(), dir.display()))),
        Ok(m) if !m.is_dir() => Some(error(format!("{key} {}: {} is not a directory", file.display(), dir.display()))),
        Ok(m) if m.permissions().readonly() => Some(error(format!("{key} {}: {} is read-only", file.display(), dir.display()))),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        crate::config::parse(text, "t.yaml").unwrap()
    }

    #[test]
    fn the_plan_adds_up_and_names_what_to_change() {
        let c =
            cfg("conntrack: { capacity: 65536 }\nworkers: { cores: [0, 1], umem_frames: 4096 }\nzones: { outside: { queues: 2 }, inside: { queues: 2 } }\n");
        let p = MemoryPlan::of(&c);
        assert_eq!(p.workers, 2);
        assert_eq!(p.umem, 4096 * 4096);
        assert_eq!(p.engine, Engine::footprint(&c.engine) as u64);
        assert_eq!(p.total, 2 * (p.engine + p.umem + p.rings));
        assert!(p.fits(&c, p.total, "x").is_ok());
        let err = p.fits(&c, p.total * 3 / 4, "this machine's RAM").unwrap_err();
        let e = err.to_string();
        assert!(e.contains("conntrack.capacity 65536 x 2 worker(s)") && e.contains("lower conntrack.capacity to at most"), "{e}");
        // The suggested capacity does fit, and one more entry's worth would not.
        let most: usize = e.split("at most ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert_eq!(most, err.largest_capacity);
        let fit = |n: usize| MemoryPlan::with(&EngineConfig { capacity: n, ..c.engine }, 2, 4096).total <= p.total * 3 / 4;
        assert!(fit(most) && !fit(most + 64), "{most}");
    }

    #[test]
    fn two_billion_entries_do_not_fit_on_this_machine() {
        let c = cfg("conntrack: { capacity: 2147483648 }\n");
        let e = memory_ceiling(&c).unwrap_err().to_string();
        assert!(e.contains("needs") && e.contains("GiB") && e.contains("lower conntrack.capacity"), "{e}");
        assert!(memory_now(&c).is_err());
        // The embedded default fits.
        let d = crate::config::parse(crate::DEFAULT_CONFIG, "webfarm.yaml").unwrap();
        assert!(memory_ceiling(&d).unwrap().starts_with("memory when full:"));
    }

    #[test]
    fn huge_pages_off_is_a_warning() {
        assert!(huge_pages("always madvise [never]\n").is_some_and(|f| !f.error && f.text.contains("[never]")));
        assert!(huge_pages("always [madvise] never\n").is_none());
        assert!(huge_pages("[always] madvise never").is_none());
        assert!(huge_pages("").is_none(), "no THP at all (a kernel without it): nothing to say");
    }

    #[test]
    fn host_checks_name_the_setting() {
        let c = cfg(
            "zones: { outside: { interface: hf-none0 }, inside: { interface: lo } }\nworkers: { cores: [4096] }\nlog: { denials: /nonexistent/dir/d.log }\n",
        );
        let f = host(&c);
        let text: Vec<&str> = f.iter().filter(|x| x.error).map(|x| x.text.as_str()).collect();
        assert!(text.iter().any(|t| t.starts_with("zones.outside.interface: no interface named \"hf-none0\"")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("workers.cores lists core 4096")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("log.denials /nonexistent/dir/d.log: its directory /nonexistent/dir cannot be used")), "{text:?}");
        // lo has one queue: two workers cannot bind two.
        let c = cfg("zones: { outside: { interface: lo, queues: 2 }, inside: { interface: lo2, queues: 2 } }\nworkers: { cores: [0, 1] }\n");
        let f = host(&c);
        assert!(f.iter().any(|x| x.error && x.text.starts_with("zones.outside.queues is 2, but lo has")), "{f:?}");
    }
}
