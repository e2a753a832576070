//! Table walks between bursts: what one housekeeping round of a `/flows` listing, a
//! snapshot export and a reload's pass (with and without a recheck) holds the worker
//! off its rings, on a full 1M table. Each walk runs the engine calls the worker's
//! `scan` makes (docs/performance.md, "Between bursts"), once with the fixed
//! 16,384-slot slices the worker had before and once with slices sized by
//! [`WalkPace`] to [`WALK_BUDGET`] (by the thread's CPU time, as the worker does), alternating, three times each; printed per walk:
//! the rounds a whole walk took, the median, 99th percentile and largest slice, and
//! the walk's total time — the two designs' ratio in the same run.
//!
//! `cargo bench -p holdfast-benches --bench walks`

use std::time::{Duration, Instant as Wall};

use holdfast_benches::Loaded;
use holdfast_dataplane::control::FlowFilter;
use holdfast_dataplane::sys::thread_cpu_ns;
use holdfast_dataplane::worker::{WALK_BUDGET, WalkPace};
use holdfast_pipeline::snapshot::chunks;

const OLD_SLICE: u32 = 16_384;
const PASSES: usize = 3;

#[derive(Clone, Copy)]
enum Walk {
    Listing,
    Export,
    Maintain,
    Recheck,
}

impl Walk {
    const ALL: [Walk; 4] = [Walk::Listing, Walk::Export, Walk::Maintain, Walk::Recheck];

    fn name(self) -> &'static str {
        match self {
            Walk::Listing => "listing (/flows)",
            Walk::Export => "export (snapshot, sync sweep)",
            Walk::Maintain => "reload's pass",
            Walk::Recheck => "reload's pass, recheck",
        }
    }

    /// One slice, as the worker serves it; a value out so the work is kept.
    fn slice(self, l: &mut Loaded, range: std::ops::Range<u32>) -> usize {
        let now = l.now;
        match self {
            Walk::Listing => {
                let f = FlowFilter::default();
                let chunk: Vec<_> = l.engine.flows_in(range, now).filter(|x| f.matches(x)).take(usize::MAX).collect();
                chunk.len()
            }
            Walk::Export => chunks(l.engine.export_in(range, now)).map(|(n, b)| n + b.len()).sum(),
            Walk::Maintain => {
                l.engine.maintain(range, now, false);
                1
            }
            Walk::Recheck => {
                l.engine.maintain(range, now, true);
                1
            }
        }
    }
}

/// Every slice's wall time of one whole walk.
fn walk(l: &mut Loaded, w: Walk, paced: bool) -> (Vec<Duration>, usize) {
    let cap = l.engine.table().capacity() as u32;
    let (mut cursor, mut pace, mut times, mut kept) = (0u32, WalkPace::default(), Vec::new(), 0usize);
    while cursor < cap {
        let n = if paced { pace.slots() } else { OLD_SLICE };
        let range = cursor..cursor.saturating_add(n).min(cap);
        cursor = range.end;
        let len = range.end - range.start;
        let (t, cpu) = (Wall::now(), thread_cpu_ns());
        kept += w.slice(l, range);
        let took = t.elapsed();
        // The worker sizes slices by its thread's CPU time; what the rings wait is
        // wall time.
        if paced && len == n {
            pace.took(n, Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu)), WALK_BUDGET);
        }
        times.push(took);
    }
    (times, kept)
}

/// One whole walk: slices, median, 99th percentile and largest slice, total.
type Pass = (usize, Duration, Duration, Duration, Duration);

fn at(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used.
    let t = Wall::now();
    let mut l = Loaded::full_for_flood(750_000);
    let (len, cap) = (l.engine.table().len(), l.engine.table().capacity());
    println!("walks: a table of {len} flows in {cap} slots (built in {:.1} s); budget {} µs a round", t.elapsed().as_secs_f64(), WALK_BUDGET.as_micros());
    println!("{:<44} {:>7} {:>10} {:>9} {:>9} {:>9}", "walk, slices", "rounds", "median µs", "p99 µs", "max µs", "total ms");
    let mut sink = 0usize;
    for w in Walk::ALL {
        let mut rows: [Vec<Pass>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..PASSES {
            for paced in [false, true] {
                let (mut times, kept) = walk(&mut l, w, paced);
                sink = sink.wrapping_add(kept);
                let total: Duration = times.iter().sum();
                times.sort();
                rows[usize::from(paced)].push((times.len(), at(&times, 0.5), at(&times, 0.99), *times.last().unwrap(), total));
            }
        }
        for (paced, r) in rows.iter_mut().enumerate() {
            // The median pass by total time.
            r.sort_by_key(|x| x.4);
            let (n, med, p99, max, total) = r[PASSES / 2];
            let label = format!("{}, {}", w.name(), if paced == 1 { "paced" } else { "16,384 slots" });
            println!(
                "{label:<44} {:>7} {:>10.1} {:>9.1} {:>9.1} {:>9.1}",
                n,
                med.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                max.as_secs_f64() * 1e6,
                total.as_secs_f64() * 1e3
            );
        }
    }
    assert!(sink > 0);
    assert_eq!(l.engine.table().len(), len, "the walks left the table as it was");
}
