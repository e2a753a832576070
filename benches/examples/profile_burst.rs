//! Runs the mixed burst of the pipeline bench for a fixed number of bursts, for
//! profilers (`perf record`, `valgrind --tool=callgrind`): flows and bursts as args;
//! a third argument `flood` runs P6's flood mix against a full table instead, `parse`
//! and `probe` the mixed burst through `Engine::probe_batch` only (parse and hash;
//! also the lookup), `gen` only generates it; `acks` runs bursts of established ACKs
//! only through the pipeline, `lean` the same through the lean reference
//! (`lean::Lean`), and `ackgen` only generates them.

use holdfast_benches::Loaded;
use holdfast_benches::lean::{Judged, Lean};
use holdfast_pipeline::{DropReason, Verdict};

fn main() {
    let mut args = std::env::args().skip(1);
    let flows: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let bursts: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mode = args.next().unwrap_or_default();
    let flood = mode == "flood";
    let mut l = if flood { Loaded::full_for_flood(flows) } else { Loaded::new(flows) };
    let mut lean = (mode == "lean").then(|| Lean::new(flows, true, l.now.ticks()));
    let mut judged = [Judged::NotTaken; 64];
    let mut out = [Verdict::Drop(DropReason::Malformed); 64];
    let mut found = 0;
    let t = std::time::Instant::now();
    for _ in 0..bursts {
        if flood {
            l.fill_flood_burst();
        } else if matches!(mode.as_str(), "acks" | "lean" | "ackgen") {
            l.fill_ack_burst();
        } else {
            l.fill_burst();
        }
        match mode.as_str() {
            "parse" => found += l.probe_burst(false),
            "probe" => found += l.probe_burst(true),
            "gen" | "ackgen" => {}
            "lean" => {
                let frames: [&[u8]; 64] = std::array::from_fn(|k| &l.frames()[k][..]);
                let r = lean.as_mut().expect("made for this mode");
                r.run(&frames, l.now.ticks(), &mut judged);
                found += judged.iter().filter(|&&v| v == Judged::Pass).count();
            }
            _ => l.run_burst(&mut out),
        }
        std::hint::black_box(&out);
    }
    let dt = t.elapsed().as_secs_f64();
    std::hint::black_box(found);
    println!("{flows} flows: {:.1} ns per packet (generation included), {:.2} Mpps", dt * 1e9 / (bursts * 64) as f64, (bursts * 64) as f64 / dt / 1e6);
}
