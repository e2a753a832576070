//! The appliance commits its tables' memory at start (`Engine::commit`): a full table
//! needs no page the kernel might not have later. Alone in its own test binary, so no
//! other test's allocations move the process's resident size meanwhile.

use holdfast_pipeline::engine::EngineConfig;
use holdfast_pipeline::{Engine, Instant};
use holdfast_tests::webfarm_policy;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
}

#[test]
fn committing_makes_the_whole_footprint_resident_at_start() {
    let cfg = EngineConfig { capacity: 1 << 20, ..EngineConfig::default() };
    let footprint_kib = Engine::footprint(&cfg) as u64 / 1024;
    let before = rss_kib();
    let mut e = Engine::new(cfg, webfarm_policy(), Instant::from_secs(1));
    let allocated = rss_kib() - before;
    assert!(allocated < footprint_kib / 2, "the big arrays start untouched: {allocated} KiB of {footprint_kib}");
    e.commit();
    let committed = rss_kib() - before;
    assert!(committed >= footprint_kib * 95 / 100, "committed {committed} KiB of a {footprint_kib} KiB footprint");
    drop(e);
}
