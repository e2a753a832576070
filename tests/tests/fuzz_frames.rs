//! Arbitrary bytes as frames never panic, every frame is counted exactly once, and the
//! table's bookkeeping stays consistent (`Engine::audit`) — under every pickup mode,
//! with the per-source limit on.

use holdfast_pipeline::engine::{EngineConfig, Packet, Pickup};
use holdfast_pipeline::{Engine, Instant, Verdict, Zone};
use holdfast_tests::{mixed_frames, webfarm_policy};
use proptest::prelude::*;

fn engine(pickup: Pickup) -> Engine {
    let cfg = EngineConfig { capacity: 256, fragments: 16, pickup, per_source_limit: 4, ..EngineConfig::default() };
    Engine::new(cfg, webfarm_policy(), Instant::from_secs(1))
}

fn run(frames: &[Vec<u8>]) {
    for pickup in [Pickup::Strict, Pickup::ReverseOfAllowed, Pickup::Loose] {
        let mut e = engine(pickup);
        let pkts: Vec<Packet> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| Packet { data: f, zone: if i % 2 == 0 { Zone::Outside } else { Zone::Inside }, now: Instant::from_secs(1 + i as u64) })
            .collect();
        let mut out = vec![Verdict::Drop(holdfast_pipeline::DropReason::Malformed); pkts.len()];
        e.process_batch(&pkts, &mut out);
        let c = e.counters();
        assert_eq!(c.packets, frames.len() as u64);
        assert_eq!(c.passed_total() + c.dropped_total(), c.packets);
        assert_eq!(c.bytes, frames.iter().map(|f| f.len() as u64).sum::<u64>());
        e.audit().unwrap();
        e.expire(Instant::from_secs(40 * 86_400), usize::MAX);
        assert!(e.table().is_empty());
        e.audit().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..40)) {
        run(&frames);
    }

    /// Valid frames with a few bytes changed and a random cut: reaches deep into the
    /// parsers (IP options, extension headers, TCP options, ICMP quotes).
    #[test]
    fn mutated_valid_frames(
        picks in prop::collection::vec((0usize..10_000, prop::collection::vec((0usize..200, any::<u8>()), 0..6), 0usize..300), 1..40)
    ) {
        let base = mixed_frames(20);
        let frames: Vec<Vec<u8>> = picks
            .iter()
            .map(|(i, edits, cut)| {
                let mut f = base[i % base.len()].0.clone();
                for &(at, b) in edits {
                    if !f.is_empty() {
                        let n = f.len();
                        f[at % n] = b;
                    }
                }
                f.truncate((*cut).max(1).min(f.len()));
                f
            })
            .collect();
        run(&frames);
    }
}
