//! State sync: what one control thread does per message (a flow taken from a table
//! record, numbered for FTFW, encoded into a datagram; and a datagram decoded), the
//! bytes a synced flow costs on the wire, and a takeover — synced flows adopted into an
//! empty table — at 100k and 1M flows.

use std::time::Instant as WallClock;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_benches::{Loaded, policy};
use holdfast_controlplane::sync::ftfw::Sender;
use holdfast_controlplane::sync::proto::{self, Message, kind};
use holdfast_pipeline::engine::SyncedFlow;
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
