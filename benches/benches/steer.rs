//! The fragment router's cost per first fragment, with an empty hold and with a hold
//! kept full of orphans (later fragments whose first never comes — anyone can send
//! them): a first fragment must not pay a walk of the whole hold for the orphans.
//! Before the per-bucket counts it did: ~500-600 ns against ~6 ns with an empty hold
//! (the dev VM, 2026-12-03).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_pipeline::steer::{FragRouter, FragSteer};

const FIRSTS: u64 = 4096;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frag_router_first_fragment");
    g.throughput(Throughput::Elements(FIRSTS));
    for orphans in [0u64, 256] {
        let mut r: FragRouter<u32> = FragRouter::new(4096, holdfast_dataplane::worker::FRAGMENT_HOLD, u64::MAX / 4);
        for i in 0..orphans {
            r.route(0, &FragSteer { datagram: (1_000_000 + i) << 17 | 1, first: false, pair: 1 }, 0, 1, |_, _| {});
        }
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("orphans_held", orphans), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for _ in 0..FIRSTS {
                    i += 1;
                    let f = FragSteer { datagram: i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, first: true, pair: 1 };
                    r.route(i as u32, &f, 1, 2, |_, w| n += w);
                }
                n
            })
        });
        assert_eq!(r.held() as u64, orphans, "the orphans stayed held");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
