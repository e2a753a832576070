//! What the root-only lab tests share.

/// True when running as root (uid 0): the lab needs network namespaces and XDP.
pub fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Returns from the test, saying why, when not root.
macro_rules! need_root {
    () => {
        if !common::root() {
            eprintln!("SKIPPED: the lab needs root for network namespaces and XDP (CI runs it as root)");
            return;
        }
    };
}
