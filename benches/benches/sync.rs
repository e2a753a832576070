//! State sync: what one control thread does per message (a flow taken from a table
//! record, numbered for FTFW, encoded into a datagram; a change from a worker's queue
//! recorded and sent; and a datagram decoded), the bytes a synced flow costs on the
//! wire, what the change journal costs the packet path (the same bursts with it off
//! and on, drained after each burst as a worker does), a full sweep, and a takeover —
//! synced flows adopted into an empty table — at 100k and 1M flows.

use std::time::Instant as WallClock;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_benches::{Loaded, policy};
use holdfast_controlplane::sync::ftfw::Sender;
use holdfast_controlplane::sync::proto::{self, Message, kind};
use holdfast_pipeline::engine::{Change, ChangeKind, SyncedFlow};
use holdfast_pipeline::{Engine, EngineConfig, Instant};

fn bench(c: &mut Criterion) {
    let l = Loaded::new(100_000);
    let t = l.engine.config().timeouts;
    let flows: Vec<SyncedFlow> = l.engine.export(l.now).map(|r| r.synced(&t)).collect();
    let one = Message::Flow { kind: kind::CT_NEW, flags: 0, seq: 1, flow: flows[0] };
    eprintln!("a synced IPv4 TCP flow: {} bytes on the wire (+ 28 of IP and UDP per datagram of up to 1400 bytes of messages)", proto::encoded_len(&one));
    let mut g = c.benchmark_group("sync");
    g.throughput(Throughput::Elements(flows.len() as u64));
    g.sample_size(10);
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    g.bench_function("send_100k_messages", |b| {
        b.iter(|| {
            let mut s = Sender::new(1, 131_072);
            let now = WallClock::now();
            let mut out = Vec::with_capacity(1400);
            datagrams.clear();
            for f in &flows {
                let m = s.data(Message::Flow { kind: kind::CT_NEW, flags: 0, seq: 0, flow: *f }, now);
                let before = out.len();
                proto::encode(&m, &mut out);
                if out.len() > 1400 {
                    let tail = out.split_off(before);
                    datagrams.push(std::mem::replace(&mut out, tail));
                }
            }
            datagrams.push(out);
        })
    });
    // What the endpoint does with each change a worker queued: remember what the peer
    // was told, number it, encode it into the datagram under way.
    let changes: Vec<Change> = flows.iter().map(|f| Change { kind: ChangeKind::Update, flow: *f }).collect();
    g.bench_function("send_100k_changes", |b| {
        let mut sent: std::collections::HashMap<holdfast_pipeline::FlowKey, (SyncedFlow, WallClock)> = std::collections::HashMap::new();
        let mut s = Sender::new(1, 131_072);
        let mut out = Vec::with_capacity(1500);
        let mut one = Vec::with_capacity(256);
        b.iter(|| {
            let now = WallClock::now();
            let mut n = 0usize;
            for c in &changes {
                let k = if sent.insert(c.flow.key().0, (c.flow, now)).is_some() { kind::CT_UPD } else { kind::CT_NEW };
                let m = s.data(Message::Flow { kind: k, flags: 0, seq: 0, flow: c.flow }, now);
                one.clear();
                proto::encode(&m, &mut one);
                if out.len() + one.len() > 1400 {
                    n += 1;
                    out.clear();
                }
                out.extend_from_slice(&one);
            }
            n
        })
    });
    g.bench_function("receive_100k_messages", |b| {
        b.iter(|| {
            let mut n = 0;
            for d in &datagrams {
                n += proto::decode(d).into_iter().filter(Result::is_ok).count();
            }
            assert_eq!(n, flows.len());
        })
    });
    g.finish();
    // The journal on the packet path: the pipeline bench's mixed bursts at 100k flows
    // with it off, and on with the drain a worker does after each burst.
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(64));
    let mut out = [holdfast_pipeline::Verdict::Drop(holdfast_pipeline::DropReason::Malformed); 64];
    let mut off = Loaded::new(100_000);
    let mut on = Loaded::new(100_000);
    on.engine.keep_changes(65_536, holdfast_pipeline::Duration::from_secs(60));
    let mut noted = 0u64;
    g.bench_function("mixed_burst_100k_off", |b| {
        b.iter(|| {
            off.fill_burst();
            off.run_burst(&mut out);
        })
    });
    g.bench_function("mixed_burst_100k_on", |b| {
        b.iter(|| {
            on.fill_burst();
            on.run_burst(&mut out);
            let now = on.now;
            on.engine.drain_changes(now, |c| noted += u64::from(c.flow.proto));
        })
    });
    g.finish();
    // The ratio, interleaved so that both see the same machine: 15 rounds of 20k
    // bursts each way, medians.
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = WallClock::now();
        for _ in 0..20_000 {
            off.fill_burst();
            off.run_burst(&mut out);
        }
        t_off.push(t.elapsed().as_secs_f64());
        let t = WallClock::now();
        for _ in 0..20_000 {
            on.fill_burst();
            on.run_burst(&mut out);
            let now = on.now;
            on.engine.drain_changes(now, |c| noted += u64::from(c.flow.proto));
        }
        t_on.push(t.elapsed().as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (med(&mut t_off), med(&mut t_on));
    eprintln!(
        "journal: off {:.1} ns/packet, on {:.1} ns/packet (medians of 15 interleaved rounds of 1.28M packets): on/off = {:.3}; {} lost",
        a * 1e9 / 1_280_000.0,
        b * 1e9 / 1_280_000.0,
        b / a,
        on.engine.change_stats().lost
    );
    std::hint::black_box(noted);
    drop((off, on));
    // A sweep's cost on the sync thread at 1M flows, in the steady state (nothing
    // changed): the workers' export decoded, each record seen as a synced flow, and
    // compared with what was last sent (the endpoint's diff, over a map as large).
    let big = Loaded::new(1_000_000);
    let mut bytes = Vec::new();
    for r in big.engine.export(big.now) {
        r.encode(&mut bytes);
    }
    let sent: std::collections::HashMap<holdfast_pipeline::FlowKey, SyncedFlow> =
        big.engine.export(big.now).map(|r| r.synced(&t)).map(|f| (f.key().0, f)).collect();
    let mut g = c.benchmark_group("sweep");
    g.sample_size(10);
    g.throughput(Throughput::Elements(sent.len() as u64));
    g.bench_function("decode_and_diff_1m", |b| {
        b.iter(|| {
            let (mut at, mut changed) = (0, 0usize);
            while at < bytes.len() {
                let (r, n) = holdfast_pipeline::snapshot::FlowRecord::decode(&bytes[at..], at as u64).unwrap();
                let f = r.synced(&t);
                if sent.get(&f.key().0).is_none_or(|o| o.tcp_state != f.tcp_state || o.status != f.status) {
                    changed += 1;
                }
                at += n;
            }
            assert_eq!(changed, 0);
        })
    });
    g.finish();
    drop(big);
    let mut g = c.benchmark_group("takeover");
    g.sample_size(10);
    for n in [100_000usize, 1_000_000] {
        let l = if n == flows.len() { None } else { Some(Loaded::new(n as u32)) };
        let all: Vec<SyncedFlow> = match &l {
            Some(l) => l.engine.export(l.now).map(|r| r.synced(&t)).collect(),
            None => flows.clone(),
        };
        g.throughput(Throughput::Elements(all.len() as u64));
        g.bench_function(format!("adopt_{}k", n / 1000), |b| {
            b.iter_batched(
                || {
                    let mut e = Engine::new(EngineConfig { capacity: all.len() + 1024, ..EngineConfig::default() }, policy(), Instant::from_secs(1));
                    e.commit();
                    e
                },
                |mut e| {
                    for f in &all {
                        e.adopt(f, Instant::from_secs(2)).unwrap();
                    }
                    e
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
