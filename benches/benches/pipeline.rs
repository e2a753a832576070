//! The pipeline on a realistic mixed burst — established ACKs, SYNs, FINs, garbage —
//! at 10k and 1M live flows, 64 frames per burst, one core.
//!
//! `generate_only` measures the burst generator alone (patching 64 header templates),
//! so the pipeline's own cost is `mixed_burst - generate_only`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_benches::Loaded;
use holdfast_pipeline::{DropReason, Verdict};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(64));
    for flows in [10_000u32, 1_000_000] {
        let mut l = Loaded::new(flows);
        eprintln!(
            "{flows} flows: entry {} bytes, {} bytes per entry of capacity ({} entries), {} live",
            holdfast_pipeline::conntrack::ENTRY_BYTES,
            l.engine.bytes_per_entry(),
            l.engine.table().capacity(),
            l.engine.table().len()
        );
        let mut out = [Verdict::Drop(DropReason::Malformed); 64];
        g.bench_function(BenchmarkId::new("generate_only", flows), |b| {
            b.iter(|| {
                l.fill_burst();
                std::hint::black_box(&l);
            })
        });
        g.bench_function(BenchmarkId::new("mixed_burst", flows), |b| {
            b.iter(|| {
                l.fill_burst();
                l.run_burst(&mut out);
                std::hint::black_box(&out);
            })
        });
        let c = l.engine.counters();
        eprintln!(
            "  after the run: {} packets, passed {:?}, dropped {:?}",
            c.packets,
            c.passed,
            holdfast_pipeline::DropReason::ALL.iter().filter(|r| c.dropped[**r as usize] > 0).map(|r| (r.name(), c.dropped[*r as usize])).collect::<Vec<_>>()
        );
    }
    g.finish();

    // The same at full table under a SYN flood: eviction and tombstones on the path.
    let mut g = c.benchmark_group("pressure");
    g.throughput(Throughput::Elements(64));
    for flows in [10_000u32, 1_000_000] {
        let mut l = Loaded::full_for_flood(flows);
        let mut out = [Verdict::Drop(DropReason::Malformed); 64];
        g.bench_function(BenchmarkId::new("flood_burst_full_table", flows), |b| {
            b.iter(|| {
                l.fill_flood_burst();
                l.run_burst(&mut out);
                std::hint::black_box(&out);
            })
        });
        let c = l.engine.counters();
        eprintln!(
            "  {flows} flows, full table: evictions {:?}, tombstone hits {}, classes {:?}, reply_denied {}",
            c.evictions,
            c.tombstone_hits,
            l.engine.class_counts(),
            c.reply_denied()
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
