//! `holdfast lab --rfc9411` end to end, small: real TCP connections through Holdfast and
//! through Linux + nftables, the connections held through a spoofed SYN flood ten times
//! the free room in the table. Root only; CI runs as root.

#[macro_use]
mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn every_held_connection_answers_through_a_syn_flood() {
    need_lab!();
    use holdfast_controlplane::lab::rfc9411::{NFT, TASKSET};
    if !holdfast_dataplane::host::have_or_report(&[NFT, TASKSET]) {
        return;
    }
    let d = std::env::temp_dir().join(format!("hf-rfc9411-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let svg = d.join("r.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["lab", "--rfc9411", "--connections", "3000", "--seconds", "1", "--flood", "3", "--flood-pps", "30000", "--json", "--report"])
        .arg(&svg)
        .output()
        .unwrap();
    let _ = Command::new(env!("CARGO_BIN_EXE_holdfast")).args(["lab", "down"]).output();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let systems = v["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 2, "{v}");
    let cap = v["capacity"].as_u64().unwrap();
    assert_eq!(cap, 3375);
    for s in systems {
        let name = s["system"].as_str().unwrap();
        assert!(s["cps"]["connections"].as_u64().unwrap() > 100, "{name}: {}", s["cps"]);
        assert!(s["tps"]["transactions_in_window"].as_u64().unwrap() > 100, "{name}: {}", s["tps"]);
        assert_eq!(s["hold"]["held"], 3000, "{name}: {}", s["hold"]);
        assert_eq!(s["flood"]["sent"], 3 * cap, "{name}: the whole flood came before the last round: {}", s["flood"]);
    }
    let h = &systems[0];
    assert_eq!(h["system"], "holdfast");
    // The story: the table full of idle keep-alive connections, the flood on top, and
    // every connection still answers; nothing established was evicted or denied.
    assert_eq!((h["hold"]["answered"].as_u64(), h["hold"]["error_total"].as_u64()), (Some(3000), Some(0)), "{}", h["hold"]);
    for phase in ["cps", "tps"] {
        assert_eq!(h[phase]["error_total"], 0, "{phase}: {}", h[phase]);
    }
    let a = &h["hold_counters"]["appliance"];
    assert_eq!(a["evictions"]["assured"], 0, "{a}");
    assert!(a["evictions"]["embryonic"].as_u64().unwrap() > 0, "the flood must have filled the table: {a}");
    let drops = a["drops"].as_object().unwrap();
    assert!(!drops.keys().any(|k| k.starts_with("reply_to")), "replies denied: {a}");
    assert_eq!(h["table_when_held"]["flows"], 3000, "{}", h["table_when_held"]);
    // Linux ran the same phases (its figures are its own).
    let l = &systems[1];
    assert_eq!(l["system"], "linux");
    assert!(l["hold_counters"]["appliance"]["conntrack_after"].is_object(), "{l}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("holdfast") && text.contains("linux"), "the report");
    let _ = std::fs::remove_dir_all(&d);
}
