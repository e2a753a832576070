//! The packet path allocates nothing: a counting global allocator watches a worker
//! process bursts of mixed traffic (new flows, established data, closes, fragments,
//! ICMP errors, IPv6, garbage), through a full table and expiry.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use holdfast_pipeline::DropReason;
use holdfast_pipeline::conntrack::pressure::{Evict, Pressure};
use holdfast_pipeline::engine::{EngineConfig, Packet, Pickup};
use holdfast_pipeline::parse::{Frame, L4, parse};
use holdfast_pipeline::{Duration, Engine, Instant, Verdict};
use holdfast_tests::{mixed_frames, webfarm_policy};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if WATCH.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if WATCH.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn the_packet_path_never_allocates() {
    for pickup in [Pickup::Strict, Pickup::ReverseOfAllowed, Pickup::Loose] {
        the_packet_path_never_allocates_with(pickup);
    }
}

fn the_packet_path_never_allocates_with(pickup: Pickup) {
    ALLOCS.store(0, Ordering::Relaxed);
    let frames = mixed_frames(3000);
    // A table smaller than the flows offered, so eviction, tombstones and the
    // per-source limit are exercised; and a second one that refuses when full.
    let cfg = EngineConfig { capacity: 4000, fragments: 64, per_source_limit: 1, pickup, ..EngineConfig::default() };
    let t0 = Instant::from_secs(1_000);
    let mut e = Engine::new(cfg, webfarm_policy(), t0);
    // The journal of changes for a sync peer, drained after every burst (its capacity
    // is taken here, once; the final expiry overflows it).
    e.keep_changes(512, Duration::from_secs(1));
    let mut drained = [0u64; 3];
    let refusing = Pressure { evict: Evict::None, embryonic_share: 1.0, ..Pressure::default() };
    // (without per-flow counters: `conntrack.accounting: off`)
    let mut full = Engine::new(
        EngineConfig { capacity: 500, pressure: refusing, pickup, per_source_limit: 50, accounting: false, ..EngineConfig::default() },
        webfarm_policy(),
        t0,
    );
    let mut out = [Verdict::Drop(DropReason::Malformed); 64];
    let mut bursts: Vec<Vec<Packet>> = Vec::new();
    for (i, chunk) in frames.chunks(64).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 50);
        bursts.push(chunk.iter().map(|(f, z)| Packet { data: f, zone: *z, now }).collect());
    }
    // A later pass without SYNs: packets of flows the first pass evicted meet their
    // tombstones.
    let is_syn = |f: &[u8]| matches!(parse(f), Ok(Frame::Ip(m)) if matches!(m.l4, L4::Tcp(t) if t.flags & 0x02 != 0));
    let rest: Vec<&(Vec<u8>, holdfast_pipeline::Zone)> = frames.iter().filter(|(f, _)| !is_syn(f)).collect();
    for (i, chunk) in rest.chunks(64).enumerate() {
        let now = t0 + Duration::from_secs(100) + Duration::from_millis(i as u64 * 50);
        bursts.push(chunk.iter().map(|(f, z)| Packet { data: f, zone: *z, now }).collect());
    }

    // The instrument works: one boxed value is one allocation.
    WATCH.with(|w| w.set(true));
    let probe = std::hint::black_box(Box::new(7u64));
    WATCH.with(|w| w.set(false));
    drop(probe);
    assert_eq!(ALLOCS.swap(0, Ordering::Relaxed), 1);

    WATCH.with(|w| w.set(true));
    for b in &bursts {
        e.process_batch(b, &mut out[..b.len()]);
        e.expire(b[0].now, 256);
        e.drain_changes(b[0].now, |c| drained[c.kind as usize] += 1);
        full.process_batch(b, &mut out[..b.len()]);
    }
    // Jump past every timeout: the wheel retires everything.
    let removed = e.expire(t0 + Duration::from_secs(10 * 86_400), usize::MAX);
    WATCH.with(|w| w.set(false));

    assert_eq!(ALLOCS.load(Ordering::Relaxed), 0, "allocations on the packet path ({pickup:?})");
    let c = e.counters();
    assert_eq!(c.packets, (frames.len() + rest.len()) as u64);
    assert!(c.evictions.iter().sum::<u64>() > 0, "entries were evicted");
    if pickup == Pickup::Loose {
        // Loose pickup adopts the evicted flows' packets instead of asking tombstones.
        assert!(c.passed[holdfast_pipeline::PassKind::New as usize] > frames.len() as u64 / 8, "mid-stream packets were picked up");
    } else {
        assert!(c.tombstone_hits > 0, "tombstones were consulted");
    }
    assert!(c.source_recycled > 0, "the per-source limit was hit (a source recycled its own entries)");
    assert!(full.counters().dropped[DropReason::TableFull as usize] > 0, "the refusing table filled up");
    assert!(removed > 0 && e.table().is_empty());
    assert!(drained.iter().all(|&n| n > 0), "new, updated and removed flows were noted: {drained:?}");
    assert!(e.change_stats().lost > 0, "the last expiry overflowed the journal, counted");
}
