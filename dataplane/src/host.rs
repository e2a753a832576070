//! Facts about this machine that a configuration must fit: memory (and the service's
//! cgroup limit), cores, interfaces and their queues. Read from /proc and /sys; used by
//! `check-config --host` and at start, so that `run` refuses a configuration in words
//! that name the setting instead of failing later with an errno.

use std::path::Path;

/// Memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what can be committed now without swapping others out.
    pub available: u64,
    /// The cgroup's `memory.max` (systemd's MemoryMax=), when one is set.
    pub cgroup_limit: Option<u64>,
    /// The cgroup's `memory.current`.
    pub cgroup_used: u64,
}

impl Memory {
    /// What this process could commit now.
    pub fn usable(&self) -> u64 {
        match self.cgroup_limit {
            Some(l) => self.available.min(l.saturating_sub(self.cgroup_used)),
            None => self.available,
        }
    }

    /// The most this process could ever have: RAM, or the cgroup's limit if lower.
    pub fn ceiling(&self) -> u64 {
        self.cgroup_limit.map_or(self.total, |l| l.min(self.total))
    }
}

fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// This machine's memory, or `None` where /proc/meminfo cannot be read.
pub fn memory() -> Option<Memory> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_field(&info, "MemTotal:")?;
    let available = meminfo_field(&info, "MemAvailable:").unwrap_or(total);
    let (cgroup_limit, cgroup_used) = cgroup_memory().unwrap_or((None, 0));
    Some(Memory { total, available, cgroup_limit, cgroup_used })
}

/// The cgroup v2 limit and usage of this process's cgroup.
fn cgroup_memory() -> Option<(Option<u64>, u64)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let limit = match max.trim() {
        "max" => None,
        n => n.parse().ok(),
    };
    let used = std::fs::read_to_string(dir.join("memory.current")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Some((limit, used))
}

/// An interface as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Receive and transmit queues configured now (`/sys/class/net/*/queues`).
    pub rx_queues: u32,
    pub tx_queues: u32,
    /// Up with carrier (what the appliance calls up), down, or gone.
    pub state: crate::sys::LinkState,
    pub mtu: u32,
}

/// Why an interface named in the configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceError {
    #[error("{0:?} is not a valid interface name (at most 15 characters, no '/' or spaces)")]
    BadName(String),
    #[error("no interface named {name:?} on this machine (it has: {})", .known.join(", "))]
    Missing { name: String, known: Vec<String> },
}

fn is_interface_name(name: &str) -> bool {
    !(name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_whitespace))
}

/// How many of the interface's queues (`/sys/class/net/NAME/queues`) start with
/// `prefix` (`rx-`, `tx-`); `None` where that cannot be read.
fn queues(name: &str, prefix: &str) -> Option<u32> {
    let d = std::fs::read_dir(Path::new("/sys/class/net").join(name).join("queues")).ok()?;
    Some(d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count() as u32)
}

/// The receive queues interface `name` has now, or `None` where that cannot be read
/// (no such interface). Cheaper than [`interface`]: the link watcher asks every second.
pub fn rx_queues(name: &str) -> Option<u32> {
    if is_interface_name(name) { queues(name, "rx-") } else { None }
}

/// The interface named `name`, or why it cannot be used.
pub fn interface(name: &str) -> Result<Interface, InterfaceError> {
    if !is_interface_name(name) {
        return Err(InterfaceError::BadName(name.to_string()));
    }
    let dir = Path::new("/sys/class/net").join(name);
    if !dir.exists() {
        let mut known: Vec<String> =
            std::fs::read_dir("/sys/class/net").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        known.sort();
        return Err(InterfaceError::Missing { name: name.to_string(), known });
    }
    let count = |prefix: &str| queues(name, prefix).unwrap_or(0);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
    Ok(Interface {
        name: name.to_string(),
        rx_queues: count("rx-"),
        tx_queues: count("tx-"),
        state: crate::sys::link_state(name),
        mtu: read("mtu").parse().unwrap_or(0),
    })
}

/// A program a command needs, and the Debian package that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub command: &'static str,
    pub package: &'static str,
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} (apt-get install {})", self.command, self.package)
    }
}

/// The tools not found as executables on `PATH`.
pub fn missing(tools: &[Tool]) -> Vec<Tool> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found =
        |cmd: &str| std::env::split_paths(&path).any(|d| std::fs::metadata(d.join(cmd)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0));
    tools.iter().copied().filter(|t| !found(t.command)).collect()
}

/// For tests that cannot run on this machine: writes `SKIPPED: <why> [<test>]` to
/// standard error directly, past the test harness's capture, so that `cargo test`
/// shows it even for a test that passes, and `.ci/run` (which must run everything)
/// can fail on it. The test is named by its thread, which the harness names after it.
pub fn report_skip(why: impl std::fmt::Display) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    // One write, so that the line is not torn by the harness's own output.
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why} [{test}]\n").as_bytes());
}

/// For tests: whether every tool is present; if not, one `SKIPPED: needs ...` line
/// names each missing one and its package (see [`report_skip`]).
pub fn have_or_report(tools: &[Tool]) -> bool {
    let missing = missing(tools);
    if !missing.is_empty() {
        report_skip(format_args!("needs {}", missing.iter().map(Tool::to_string).collect::<Vec<_>>().join(", ")));
    }
    missing.is_empty()
}

/// The cores this process may run on.
pub fn cores() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

/// Formats a byte count for people: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_memory_cores_and_a_loopback() {
        let m = memory().expect("/proc/meminfo");
        assert!(m.total > 0 && m.available <= m.total && m.usable() <= m.available);
        assert!(!cores().is_empty());
        let lo = interface("lo").unwrap();
        assert!(lo.rx_queues >= 1, "{lo:?}");
        let e = interface("hf-nope0").unwrap_err();
        assert!(matches!(&e, InterfaceError::Missing { known, .. } if known.iter().any(|k| k == "lo")), "the error lists what exists: {e}");
        assert!(e.to_string().contains("\"lo\"") || e.to_string().contains(" lo"), "{e}");
    }

    #[test]
    fn missing_tools_are_named_with_their_package() {
        let sh = Tool { command: "sh", package: "dash" };
        let nope = Tool { command: "hf-no-such-tool", package: "hf-nothing" };
        assert_eq!(missing(&[sh, nope]), vec![nope]);
        assert_eq!(nope.to_string(), "hf-no-such-tool (apt-get install hf-nothing)");
        assert!(interface("a/b").is_err());
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(12), "12 B");
    }
}
