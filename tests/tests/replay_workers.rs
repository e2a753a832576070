//! Replay on several workers gives every frame the verdict it gets on one worker:
//! frames reach the worker owning their flow, in capture order per flow.

use holdfast_controlplane::config;
use holdfast_controlplane::replay::{self, Options};
use holdfast_controlplane::traffic::{self, WebFarm};
use holdfast_pipeline::Duration;

fn verdicts(workers: usize, pcap: &[u8]) -> (String, serde_json::Value) {
    let cfg = config::parse(holdfast_controlplane::DEFAULT_CONFIG, "webfarm.yaml").unwrap();
    let dir = std::env::temp_dir().join(format!("hf-workers-{}-{workers}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("v.jsonl");
    let opts = Options { workers, json: true, flows_out: None, verdicts_out: Some(out.clone()) };
    let r = replay::run(&cfg, "mem", pcap, 0x1234 + workers as u64, &opts).unwrap();
    (std::fs::read_to_string(out).unwrap(), r.to_json())
}

#[test]
fn one_and_four_workers_agree_frame_by_frame() {
    // Short idle timeouts in the capture exercise expiry on every worker.
    let p = WebFarm { connections: 300, idle: (Duration::ZERO, Duration::from_secs(20)), ..WebFarm::default() };
    let pcap = traffic::to_pcap(&traffic::webfarm(&p));
    let (v1, j1) = verdicts(1, &pcap);
    let (v4, j4) = verdicts(4, &pcap);
    assert!(!v1.is_empty());
    assert_eq!(v1, v4);
    for k in ["packets", "passed", "dropped", "flows_created", "flows_expired"] {
        assert_eq!(j1[k], j4[k], "{k}");
    }
    assert_eq!(j4["workers"], 4);
}
