//! What the control plane costs the data path, against the pipeline's own burst in the
//! same run:
//!
//! - `publish`: a worker's snapshot (engine counters, class counts, fill, adaptive
//!   scale) copied into its triple buffer — done every 2 ms. The two
//!   `getsockopt(XDP_STATISTICS)` calls a real worker adds are measured in place by
//!   the worker itself (`holdfast_publish_seconds_total`).
//! - `deny_suppressed`: a denial over the rate limit (a token-bucket check).
//! - `deny_explained`: a denial that is logged: the frame described for the log.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use holdfast_benches::{Loaded, write_tcp};
use holdfast_dataplane::control::Bucket;
use holdfast_dataplane::stats::{self, Snapshot};
use holdfast_pipeline::{DropReason, Verdict};

fn bench(c: &mut Criterion) {
    let mut l = Loaded::new(10_000);
    let mut out = [Verdict::Drop(DropReason::Malformed); 64];
    let mut g = c.benchmark_group("control");
    g.throughput(Throughput::Elements(64));
    g.bench_function("mixed_burst_10k", |b| {
        b.iter(|| {
            l.fill_burst();
            l.run_burst(&mut out);
            std::hint::black_box(&out);
        })
    });
    g.throughput(Throughput::Elements(1));
    let (mut publisher, mut reader) = stats::channel();
    let mut snap = Snapshot::default();
    g.bench_function("publish", |b| {
        b.iter(|| {
            snap.counters = l.engine.counters();
            snap.table_len = l.engine.table().len();
            snap.table_capacity = l.engine.table().capacity();
            snap.classes = l.engine.class_counts();
            snap.adaptive_scale = l.engine.adaptive_scale();
            snap.publications += 1;
            publisher.publish(&snap);
        })
    });
    assert!(reader.read().publications > 0);
    let mut bucket = Bucket::new(1000);
    let mut t = 0u64;
    // Drain the burst allowance, then measure the refused path.
    while bucket.take(t) {}
    g.bench_function("deny_suppressed", |b| {
        b.iter(|| {
            t += 1;
            std::hint::black_box(bucket.take(std::hint::black_box(t)))
        })
    });
    let mut frame = [0u8; 60];
    write_tcp(&mut frame, 0xc633_6407, 40_000, 0x0a00_0201, 22, 0x02, 1, 0);
    g.bench_function("deny_explained", |b| b.iter(|| std::hint::black_box(l.engine.explain(std::hint::black_box(&frame), l.now))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
