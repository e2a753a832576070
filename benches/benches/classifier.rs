//! The classifier with 10 and 10,000 rules: a lookup must not scan every rule.
//! `linear` is the reference first-match scan over the same rules.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_pipeline::policy::{Action, Cidr, Classifier, PortRange, ProtoMatch, Query, Rule, Zone};

/// A rule set shaped like a hosting provider's: per-customer /32 and /28 services on
/// a handful of ports, a few broad rules, and catch-all denies at the end.
fn rules(n: usize) -> Vec<Rule> {
    let mut v = Vec::with_capacity(n);
    let ports = [80u16, 443, 22, 25, 8080, 3306];
    for i in 0..n.saturating_sub(4) {
        let len = if i % 5 == 0 { 28 } else { 32 };
        let addr = 0x0a00_0000u128 + (i as u128) * 16;
        v.push(Rule {
            from: Some(Zone::Outside),
            to: Some(Zone::Inside),
            proto: ProtoMatch::Number(if i % 7 == 0 { 17 } else { 6 }),
            dst: vec![Cidr { v6: false, addr, len }],
            dst_ports: vec![PortRange { lo: ports[i % ports.len()], hi: ports[i % ports.len()] }],
            ..Rule::any(&format!("svc-{i}"), if i % 11 == 0 { Action::Deny } else { Action::Allow })
        });
    }
    v.push(Rule { from: Some(Zone::Inside), proto: ProtoMatch::Number(17), dst_ports: vec![PortRange { lo: 53, hi: 53 }], ..Rule::any("dns", Action::Allow) });
    v.push(Rule { proto: ProtoMatch::Icmp, ..Rule::any("icmp", Action::Allow) });
    v.push(Rule { src: vec![Cidr { v6: false, addr: 0xc0a8_0000, len: 16 }], ..Rule::any("mgmt", Action::Allow) });
    v.push(Rule { src_ports: vec![PortRange { lo: 0, hi: 1023 }], ..Rule::any("low-src", Action::Deny) });
    v.truncate(n);
    v
}

fn queries(n_rules: usize) -> Vec<Query> {
    let mut x = 0x1234_5678u64;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n_rules.max(1) as u64) as u128;
            Query {
                from: Zone::Outside,
                to: Zone::Inside,
                v6: false,
                proto: if x & 0x100 == 0 { 6 } else { 17 },
                src: 0xc633_6400 + (x >> 40) as u128 % 256,
                dst: 0x0a00_0000 + i * 16 + (x >> 20) as u128 % 16,
                sport: 30_000 + (x >> 24) as u16 % 30_000,
                dport: [80u16, 443, 22, 9999][(x >> 33) as usize % 4],
                icmp_type: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("classifier");
    g.throughput(Throughput::Elements(1024));
    for n in [10usize, 10_000] {
        let cl = Classifier::new(rules(n), Action::Deny);
        let qs = queries(n);
        for q in &qs {
            assert_eq!(cl.decide(q), cl.decide_linear(q));
        }
        g.bench_function(BenchmarkId::new("decide", n), |b| b.iter(|| qs.iter().map(|q| cl.decide(q).rule.unwrap_or(0)).sum::<u32>()));
        g.bench_function(BenchmarkId::new("linear", n), |b| b.iter(|| qs.iter().map(|q| cl.decide_linear(q).rule.unwrap_or(0)).sum::<u32>()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
