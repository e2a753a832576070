//! The RFC 9411 load tools without a firewall in between: the epoll server and client
//! over loopback (no root), every connection and transaction accounted for on both
//! sides; and their refusals of bad flags.

use std::process::{Command, Stdio};

use serde_json::Value;

fn holdfast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn client(args: &[&str]) -> Vec<Value> {
    let out = holdfast().args(["load", "client"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn server_and_client_account_for_every_connection_and_transaction() {
    let port = free_port();
    let a = format!("127.0.0.1:{port}");
    let b = format!("127.0.0.2:{port}");
    let mut srv =
        holdfast().args(["load", "serve", "--listen", &a, "--listen", &b, "--object", "3000"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Listening once a connect succeeds.
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(&b).is_err() {
        assert!(t0.elapsed().as_secs() < 10, "the server did not listen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let common = ["--server", &a, "--server", &b, "--source", "127.0.1.1-127.0.1.4", "--timeout", "10s"];

    let cps = client(&[&common[..], &["--mode", "cps", "--duration", "500ms", "--concurrency", "8"]].concat());
    let cps = cps.last().unwrap();
    assert_eq!(cps["error_total"], 0, "{cps}");
    assert!(cps["connections"].as_u64().unwrap() > 50, "{cps}");
    assert_eq!(cps["established"], cps["transactions"], "{cps}");
    assert!(cps["ttfb"]["p50_us"].as_u64().unwrap() >= cps["connect"]["p50_us"].as_u64().unwrap(), "TTFB counts from the SYN: {cps}");

    let tps = client(&[&common[..], &["--mode", "tps", "--duration", "500ms", "--concurrency", "4"]].concat());
    let tps = tps.last().unwrap();
    assert_eq!(tps["error_total"], 0, "{tps}");
    assert_eq!(tps["established"], 4, "keep-alive: four connections carry every transaction: {tps}");
    assert!(tps["transactions_in_window"].as_u64().unwrap() > 100, "{tps}");

    let hold = client(&[&common[..], &["--mode", "hold", "--connections", "600", "--concurrency", "64", "--idle", "200ms"]].concat());
    assert_eq!(hold[0]["event"], "held", "{:?}", hold[0]);
    assert_eq!(hold[0]["held"], 600);
    let h = hold.last().unwrap();
    assert_eq!((h["held"].as_u64(), h["answered"].as_u64(), h["error_total"].as_u64()), (Some(600), Some(600), Some(0)), "{h}");
    assert_eq!(h["ttfb"]["count"], 1200, "two rounds of 600: {h}");

    let _ = Command::new("kill").args(["-TERM", &srv.id().to_string()]).status();
    let out = std::mem::replace(&mut srv, holdfast().arg("--version").stdout(Stdio::null()).spawn().unwrap()).wait_with_output().unwrap();
    let _ = srv.wait();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let transactions = cps["transactions"].as_u64().unwrap() + tps["transactions"].as_u64().unwrap() + h["transactions"].as_u64().unwrap();
    assert_eq!(s["requests"].as_u64(), Some(transactions), "server {s}");
    assert_eq!(s["responses"], s["requests"], "{s}");
    // The readiness probe's connection, and every client connection.
    let connections = cps["established"].as_u64().unwrap() + 4 + 600 + 1;
    assert_eq!(s["accepted"].as_u64(), Some(connections), "{s}");
    assert_eq!((s["reset"].as_u64(), s["oversized_requests"].as_u64(), s["over_limit"].as_u64()), (Some(0), Some(0), Some(0)), "{s}");
}

#[test]
fn load_refuses_bad_flags_naming_them() {
    let refused = |args: &[&str], want: &str| {
        let out = holdfast().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(&["load", "client", "--server", "127.0.0.1:1", "--mode", "cps", "--source", "10.0.0.9-10.0.0.1"], "--source");
    refused(&["load", "client", "--server", "127.0.0.1:1", "--mode", "cps", "--source", "10.0.0.0-10.2.0.0"], "65,536");
    refused(&["load", "client", "--server", "127.0.0.1:1", "--mode", "sometimes"], "--mode");
    refused(&["load", "client", "--server", "127.0.0.1:1", "--mode", "cps", "--timeout", "0s"], "--timeout");
    refused(&["load", "flood", "--target", "127.0.0.1:80", "--sources", "198.18.0.0/40"], "--sources");
    refused(&["load", "flood", "--target", "[::1]:80"], "--target");
    refused(&["load", "serve", "--listen", "127.0.0.1:1", "--object", "999999999999"], "--object");
    refused(&["lab", "--report", "/tmp/x.svg"], "--report goes with --replay or --rfc9411");
    refused(&["lab", "--connections", "5"], "--rfc9411");
    refused(&["lab", "--rfc9411", "--ha"], "--ha");
    refused(&["lab", "--rfc9411", "--flood", "101"], "--flood");
}
