//! foldhash vs ahash on canonical IPv4 flow keys, both seeded per process: the hash
//! runs once per packet, so the faster one is the pipeline's. `FlowHasher` draws
//! foldhash's constants from the seed too; `foldhash_fixed_state` is foldhash with its
//! public constants (what `FlowHasher` used before chosen IPv6 addresses were found to
//! cancel the seed): the difference is what the secret constants cost.

use std::hash::{BuildHasher, Hasher};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_pipeline::{FlowHasher, FlowKey};

fn keys() -> Vec<FlowKey> {
    (0..4096u32).map(|i| FlowKey::new(u128::from(0x6400_0000 + i * 7), 30_000 + i as u16, 0x0a00_0201, 80, 6, false, 0).0).collect()
}

/// The same words `FlowHasher::hash` feeds, into any hasher.
fn words<H: Hasher>(mut h: H, k: &FlowKey) -> u64 {
    h.write_u64(k.addr[0] as u64);
    h.write_u64(k.addr[1] as u64);
    h.write_u64(u64::from(k.port[0]) << 48 | u64::from(k.port[1]) << 32 | u64::from(k.proto) << 24 | u64::from(k.vlan));
    h.finish()
}

fn bench(c: &mut Criterion) {
    let ks = keys();
    let mut g = c.benchmark_group("flow_hash");
    g.throughput(Throughput::Elements(ks.len() as u64));
    let seed = holdfast_dataplane::sys::random_seed();
    let fh = FlowHasher::new(seed);
    g.bench_function(BenchmarkId::new("holdfast_flowhasher_foldhash", 4096), |b| b.iter(|| ks.iter().fold(0u64, |a, k| a ^ fh.hash(k))));
    let fold = foldhash::fast::FixedState::with_seed(seed);
    g.bench_function(BenchmarkId::new("foldhash_fixed_state", 4096), |b| b.iter(|| ks.iter().fold(0u64, |a, k| a ^ words(fold.build_hasher(), k))));
    let ah = ahash::RandomState::with_seeds(seed, seed ^ 1, seed ^ 2, seed ^ 3);
    g.bench_function(BenchmarkId::new("ahash", 4096), |b| b.iter(|| ks.iter().fold(0u64, |a, k| a ^ words(ah.build_hasher(), k))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
