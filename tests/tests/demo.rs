//! `holdfast demo` and the generator's hostile traffic, end to end through replay.

use holdfast_controlplane::config;
use holdfast_controlplane::demo::{self, Demo};
use holdfast_controlplane::replay::{self, Options};
use holdfast_controlplane::traffic::{self, WebFarm};
use holdfast_pipeline::DropReason;

#[test]
fn the_demo_shows_lru_denying_replies_and_holdfast_denying_none() {
    let mut d = Demo::default();
    d.farm.connections = 600;
    let o = demo::run(&d).unwrap();
    assert!(o.flood_syns > 5 * d.capacity as u64, "the flood is larger than the table");
    assert_eq!(o.holdfast.counters.reply_denied(), 0);
    assert_eq!(o.holdfast.counters.evictions[holdfast_pipeline::conntrack::pressure::Admission::Assured as usize], 0, "no established flow evicted");
    assert!(o.lru.counters.reply_denied() > 1000, "{}", o.lru.counters.reply_denied());
    assert!(o.lru.reply_denied_examples.iter().all(|l| l.contains(":80 -> ") && l.ends_with("denied (reply_to_evicted)")), "{:?}", o.lru.reply_denied_examples);
    let text = o.human(&d);
    assert!(text.contains("replies denied (reply_denied)"));
    let j = o.to_json();
    assert_eq!(j["by_class"]["reply_denied"], 0);
}

#[test]
fn generated_hostile_traffic_is_dropped_with_the_right_reasons() {
    let p = WebFarm { connections: 50, syn_flood: 20.0, scan: true, midstream: 30, ..WebFarm::default() };
    let ev = traffic::webfarm(&p);
    // Deterministic for a seed.
    assert_eq!(ev, traffic::webfarm(&p));
    let pcap = traffic::to_pcap(&ev);
    let cfg = config::parse(holdfast_controlplane::DEFAULT_CONFIG, "webfarm.yaml").unwrap();
    let r = replay::run(&cfg, "mem", &pcap, 1, &Options { workers: 1, json: true, flows_out: None, verdicts_out: None }).unwrap();
    let c = &r.counters;
    assert_eq!(c.dropped[DropReason::Policy as usize], 8 * 1023, "every scan probe");
    assert_eq!(c.dropped[DropReason::MidstreamNoState as usize], 30, "every stray ACK");
    assert_eq!(c.reply_denied(), 0);
    assert!(c.flows_created > 50 + 1000, "the flood's SYNs were admitted as embryonic flows");
}
