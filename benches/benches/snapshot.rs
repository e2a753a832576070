//! State across a restart: writing a table of 100k and 1M established flows to a
//! snapshot file (encode, write, fsync, rename) and restoring it into empty tables
//! (read, check, decode, insert, arm timers) — one worker, then two (the flows spread
//! over the new workers by owner). The file goes to `target/` (a real disk, not tmpfs),
//! so the fsync is in the figure. Target: under a second each way at 1M.

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use holdfast_benches::{Loaded, policy};
use holdfast_controlplane::state;
use holdfast_pipeline::{Engine, EngineConfig, FlowHasher, Instant};

fn bench(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/snapshot-bench");
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for flows in [100_000u32, 1_000_000] {
        let l = Loaded::new(flows);
        let total = l.engine.table().len();
        let capacity = l.engine.table().capacity();
        let seed = l.engine.config().seed;
        g.bench_function(format!("write_{}k", flows / 1000), |b| b.iter(|| state::write(&dir, &[Some(&l.engine)], l.now, seed).unwrap()));
        let written = state::write(&dir, &[Some(&l.engine)], l.now, seed).unwrap();
        eprintln!("snapshot of {total} flows: {} bytes ({:.1} bytes/flow)", written.bytes, written.bytes as f64 / total as f64);
        for workers in [1usize, 2] {
            let fresh = || -> Vec<Engine> {
                let cfg = EngineConfig { capacity, seed, ..EngineConfig::default() };
                (0..workers).map(|_| Engine::new(cfg, policy(), Instant::from_secs(0))).collect()
            };
            g.bench_function(format!("restore_{}k_into_{workers}", flows / 1000), |b| {
                b.iter_batched(
                    fresh,
                    |mut es| {
                        let found = state::find(&dir).unwrap().unwrap();
                        let r = state::restore(found, &mut es, &FlowHasher::new(seed), Instant::from_secs(0)).unwrap();
                        assert_eq!(r.flows as usize, total);
                        es
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
