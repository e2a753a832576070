//! `holdfast demo`: the origin story, replayed twice. One web-farm capture with idle
//! keep-alive connections and a spoofed SYN flood larger than the table, through an
//! LRU table (how Cilium's conntrack behaves) and through Holdfast's by-class table of
//! the same capacity.

use std::fmt::Write as _;

use holdfast_pipeline::Duration;
use holdfast_pipeline::conntrack::pressure::{Admission, Evict, Pressure};
use serde_json::json;

use crate::config::{self, Config};
use crate::replay::{self, Options, Report};
use crate::report::thousands as n;
use crate::traffic::{self, WebFarm};

/// The demo's knobs.
#[derive(Debug, Clone)]
pub struct Demo {
    pub capacity: usize,
    pub farm: WebFarm,
    pub seed: u64,
}

impl Default for Demo {
    fn default() -> Self {
        Demo {
            capacity: 4096,
            farm: WebFarm {
                seed: 2026,
                servers: 8,
                clients: 300,
                connections: 1500,
                duration: Duration::from_secs(60),
                idle: (Duration::from_secs(30), Duration::from_secs(120)),
                requests: (2, 4),
                response: (300, 3000),
                syn_flood: 100.0,
                scan: true,
                midstream: 50,
                ..WebFarm::default()
            },
            seed: 7,
        }
    }
}

pub struct Outcome {
    pub lru: Report,
    pub holdfast: Report,
    pub frames: usize,
    pub flood_syns: u64,
}

fn config_with(base: &Config, capacity: usize, pressure: Pressure) -> Config {
    let mut c = base.clone();
    c.engine.capacity = capacity;
    c.engine.pressure = pressure;
    c
}

pub fn run(d: &Demo) -> std::io::Result<Outcome> {
    let base = config::parse(crate::DEFAULT_CONFIG, "configs/webfarm.yaml").expect("the embedded config is valid");
    let events = traffic::webfarm(&d.farm);
    let span = events.last().map_or(0, |e| e.0) - events.first().map_or(0, |e| e.0);
    let pcap = traffic::to_pcap(&events);
    let opts = Options { workers: 1, json: false, flows_out: None, verdicts_out: None };
    let lru = Pressure { evict: Evict::Lru, embryonic_share: 1.0, ..Pressure::default() };
    let lru = replay::run(&config_with(&base, d.capacity, lru), "lru", &pcap, d.seed, &opts)?;
    let holdfast = replay::run(&config_with(&base, d.capacity, Pressure::default()), "by-class", &pcap, d.seed, &opts)?;
    Ok(Outcome { lru, holdfast, frames: events.len(), flood_syns: (d.farm.syn_flood * span as f64 / 1e9) as u64 })
}

impl Outcome {
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "frames": self.frames, "flood_syns": self.flood_syns, "lru": self.lru.to_json(), "by_class": self.holdfast.to_json() })
    }

    pub fn human(&self, d: &Demo) -> String {
        let (l, h) = (&self.lru.counters, &self.holdfast.counters);
        let f = &d.farm;
        let mut s = String::new();
        let _ = writeln!(s, "holdfast demo: the origin story, replayed\n");
        let _ = writeln!(
            s,
            "  traffic  {} web servers on port 80, {} clients, {} HTTP/1.1 keep-alive connections idle {}-{} s",
            f.servers,
            f.clients,
            n(u64::from(f.connections)),
            f.idle.0.as_secs_f64() as u64,
            f.idle.1.as_secs_f64() as u64
        );
        let _ = writeln!(
            s,
            "           between requests, a spoofed SYN flood of {}/s ({} SYNs, {:.0}x the table), a port scan,",
            f.syn_flood,
            n(self.flood_syns),
            self.flood_syns as f64 / d.capacity as f64
        );
        let _ = writeln!(s, "           {} stray ACKs: {} frames over {:.0} s", f.midstream, n(self.frames as u64), self.holdfast.capture_span_s);
        let _ = writeln!(s, "  table    {} entries, one worker, the same capture twice\n", n(d.capacity as u64));
        let _ = writeln!(s, "  {:<40} {:>18} {:>22}", "", "lru (Cilium-like)", "by-class (Holdfast)");
        let row = |s: &mut String, what: &str, a: u64, b: u64| {
            let _ = writeln!(s, "  {:<40} {:>18} {:>22}", what, n(a), n(b));
        };
        row(&mut s, "replies denied (reply_denied)", l.reply_denied(), h.reply_denied());
        row(&mut s, "established flows evicted", l.evictions[Admission::Assured as usize], h.evictions[Admission::Assured as usize]);
        row(&mut s, "half-open (flood) entries evicted", l.evictions[Admission::Embryonic as usize], h.evictions[Admission::Embryonic as usize]);
        row(&mut s, "closing entries evicted", l.evictions[Admission::Closing as usize], h.evictions[Admission::Closing as usize]);
        row(
            &mut s,
            "new flows refused (table_full)",
            l.dropped[holdfast_pipeline::DropReason::TableFull as usize],
            h.dropped[holdfast_pipeline::DropReason::TableFull as usize],
        );
        row(&mut s, "scan and stray packets dropped", l.dropped_total() - l.reply_denied(), h.dropped_total() - h.reply_denied());
        row(&mut s, "packets passed", l.passed_total(), h.passed_total());
        let _ = writeln!(s);
        if self.lru.reply_denied_examples.is_empty() {
            let _ = writeln!(s, "  The LRU table denied no replies this time (try a larger --syn-flood).");
        } else {
            let _ = writeln!(s, "  What the LRU table logged — replies from the servers' port 80, \"denied\":");
            for e in &self.lru.reply_denied_examples {
                let _ = writeln!(s, "    {e}");
            }
        }
        let quota = (d.capacity as f64 * Pressure::default().embryonic_share) as u64;
        let _ = writeln!(
            s,
            "\n  What Holdfast did instead: denied {} replies; kept every established connection ({} evicted);",
            n(h.reply_denied()),
            n(h.evictions[Admission::Assured as usize])
        );
        let _ = writeln!(
            s,
            "  the flood recycled its own {} slots ({} half-open entries evicted, oldest first), and the",
            n(quota),
            n(h.evictions[Admission::Embryonic as usize])
        );
        let c = self.holdfast.classes_at_end;
        let by_class: Vec<String> = Admission::ALL.iter().map(|&a| format!("{} {}", n(c[a as usize].into()), a.name())).collect();
        let _ = write!(s, "  table ended with {} entries.", by_class.join(", "));
        s
    }
}
