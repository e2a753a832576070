//! Failover without losing a connection (root; the lab's tools): `holdfast lab --ha`
//! runs two appliances on parallel paths syncing state, kills the active in the middle
//! of a long download, moves the traffic, and reports; the standby must take over by
//! itself and the download complete byte-identical, with no frame of it dropped as
//! `reply_to_*`, `midstream_no_state` or `out_of_window` (`holdfast_controlplane::lab::ha`).

#[allow(dead_code, unused_macros)]
#[macro_use]
mod common;

use std::process::Command;

#[test]
fn a_download_survives_the_failover_to_the_standby() {
    need_lab!();
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast")).args(["lab", "--ha", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("lab --ha said: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    eprintln!("{v}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(v["identical"], true, "{v}");
    assert_eq!(v["took_over_by_itself"], true, "{v}");
    assert!(v["takeover"]["adopted"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(v["killed_after_s"].as_f64().unwrap_or(99.0) < 5.0, "the active was killed early in the download: {v}");
    // Which path carried the rest is reported, not asserted: in 3 of ~25 runs most of
    // the bytes were counted on the active's path although it was killed and its
    // bridge port set down 3 s in (the standby's own counters agreeing) — not
    // understood yet; the report's times and per-path counts are there to find out.
    let (active, standby) = (v["client_bytes_via_active"].as_u64().unwrap_or(0), v["client_bytes_via_standby"].as_u64().unwrap_or(0));
    if standby < 8 << 20 {
        eprintln!("NOTE: only {standby} bytes came over the standby's path ({active} over the active's): the unexplained case");
    }
    assert_eq!(v["forbidden_drops"], 0, "{v}");
    assert!(holdfast_controlplane::lab::down().is_empty(), "nothing left behind");
}
