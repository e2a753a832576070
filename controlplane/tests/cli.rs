//! The `holdfast` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn holdfast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
}

/// One test's scratch folder: removed when the test passes, kept (and named) when it
/// fails, so a failure can be looked at and a green run leaves nothing behind.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("holdfast-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a look: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

#[test]
fn check_config_accepts_every_shipped_example() {
    for entry in std::fs::read_dir(repo("configs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let out = holdfast().arg("check-config").arg(&p).output().unwrap();
            assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "a summary and the memory: {text}");
            assert!(lines[0].contains(": ok: "), "{text}");
            assert!(lines[1].trim_start().starts_with("memory when full: "), "{text}");
        }
    }
}

#[test]
fn check_config_rejects_with_file_line_col_and_exit_2() {
    let tmp = Scratch::new("check_config_rejects_with_file_line_col_and_exit_2");
    let p = tmp.file("bad.yaml");
    std::fs::write(&p, "policy:\n  default: deny\n  rules:\n    - { name: web, proto: tcp, dst_port: 80, acton: allow }\n").unwrap();
    let out = holdfast().arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with(&format!("{}:4:", p.display())), "{err}");
    assert!(err.contains("unknown field `acton`"), "{err}");
    assert!(err.contains("- { name: web, proto: tcp, dst_port: 80, acton: allow }"), "the offending line is shown: {err}");
}

#[test]
fn gen_then_replay_with_json_flows_and_verdicts() {
    let tmp = Scratch::new("gen_then_replay_with_json_flows_and_verdicts");
    let pcap = tmp.file("farm.pcap");
    let out = holdfast().args(["gen", "webfarm", "--connections", "40", "--seed", "9", "--out"]).arg(&pcap).output().unwrap();
    assert!(out.status.success());
    let flows = tmp.file("flows.jsonl");
    let verdicts = tmp.file("verdicts.jsonl");
    let out = holdfast()
        .args(["replay", "--offline", "--json", "--workers", "2", "--config"])
        .arg(repo("configs/webfarm.yaml"))
        .arg("--pcap")
        .arg(&pcap)
        .arg("--flows-out")
        .arg(&flows)
        .arg("--verdicts-out")
        .arg(&verdicts)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["packets", "passed", "dropped", "drops", "flows_created", "flows_peak", "workers", "elapsed_s", "mpps"] {
        assert!(j.get(k).is_some(), "missing {k} in {j}");
    }
    assert_eq!(j["workers"], 2);
    assert_eq!(j["flows_created"], 40);
    assert_eq!(j["dropped"], 0, "legitimate web traffic passes: {j}");
    let n = j["packets"].as_u64().unwrap();
    let vlines: Vec<serde_json::Value> = std::fs::read_to_string(&verdicts).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(vlines.len() as u64, n);
    assert!(vlines.iter().enumerate().all(|(i, v)| v["i"] == i as u64 && v["verdict"] == "pass"));
    let flines = std::fs::read_to_string(&flows).unwrap();
    let first: serde_json::Value = serde_json::from_str(flines.lines().next().unwrap()).unwrap();
    for k in ["proto", "src", "sport", "dst", "dport", "state", "expires_in_s", "assured", "packets", "bytes"] {
        assert!(first.get(k).is_some(), "missing {k} in {first}");
    }
    assert_eq!(first["dport"], 80, "flows are listed in their original direction");
}

#[test]
fn a_truncated_capture_reports_what_was_processed_then_the_offset() {
    let tmp = Scratch::new("a_truncated_capture_reports_what_was_processed_then_the_offset");
    let pcap = tmp.file("cut.pcap");
    holdfast().args(["gen", "webfarm", "--connections", "5", "--out"]).arg(&pcap).output().unwrap();
    let mut bytes = std::fs::read(&pcap).unwrap();
    let full = bytes.len();
    bytes.truncate(full - 7);
    std::fs::write(&pcap, &bytes).unwrap();
    let out = holdfast().args(["replay", "--offline", "--json", "--pcap"]).arg(&pcap).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["packets"].as_u64().unwrap() > 0, "frames before the cut were processed");
    let off = j["capture"]["error"]["offset"].as_u64().unwrap();
    assert!(off > 24 && (off as usize) < full);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&format!("byte offset {off}")), "{err}");
}

#[test]
fn replay_runs_on_its_embedded_defaults() {
    let out = holdfast().args(["replay", "--offline"]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("passed") && s.contains("Mpps"), "{s}");
    let out = holdfast().args(["replay", "--pcap", "x.pcap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "live replay is not offered yet and says so");
}

#[test]
fn the_shipped_capture_under_lru_and_by_class() {
    let tmp = Scratch::new("the_shipped_capture_under_lru_and_by_class");
    let run = |pressure: &str| -> serde_json::Value {
        let cfg = tmp.file(&format!("{}.yaml", pressure.len()));
        std::fs::write(
            &cfg,
            format!(
                "zones: {{ inside: {{ networks: [10.0.2.0/24] }} }}\nconntrack:\n  capacity: 512\n  pressure: {pressure}\npolicy:\n  rules:\n    - {{ from: outside, to: inside, proto: tcp, dst: 10.0.2.0/24, dst_port: 80, action: allow }}\n"
            ),
        )
        .unwrap();
        let out =
            holdfast().args(["replay", "--offline", "--json", "--config"]).arg(&cfg).arg("--pcap").arg(repo("tests/data/webfarm-small.pcap")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let lru = run("{ evict: lru }");
    let held = run("{ evict: by-class }");
    assert!(lru["reply_denied"].as_u64().unwrap() > 0, "{lru}");
    assert!(lru["evictions"]["assured"].as_u64().unwrap() > 0);
    assert_eq!(held["reply_denied"], 0, "{held}");
    assert_eq!(held["evictions"]["assured"], 0);
    assert!(held["evictions"]["embryonic"].as_u64().unwrap() > 1000);
}

#[test]
fn check_config_refuses_what_cannot_fit_and_host_names_each_setting() {
    let tmp = Scratch::new("check_config_refuses_what_cannot_fit_and_host_names_each_setting");
    // Two billion entries: refused with the memory it needs and what to change.
    let p = tmp.file("huge.yaml");
    std::fs::write(&p, "conntrack: { capacity: 2147483648 }\n").unwrap();
    let out = holdfast().arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs") && err.contains("GiB when the tables are full") && err.contains("lower conntrack.capacity to at most"), "{err}");
    // What only `run` used to find out, named by setting with --host.
    let p = tmp.file("host.yaml");
    std::fs::write(
        &p,
        "zones: { outside: { interface: lo, queues: 2 }, inside: { interface: hf-none9, queues: 2 } }\nworkers: { cores: [0, 4096] }\nlog: { denials: /nonexistent/dir/d.log }\n",
    )
    .unwrap();
    let plain = holdfast().arg("check-config").arg(&p).output().unwrap();
    assert!(plain.status.success(), "without --host only the file is judged");
    let out = holdfast().args(["check-config", "--host"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "error: zones.outside.queues is 2, but lo has 1 receive",
        "error: zones.inside.interface: no interface named \"hf-none9\"",
        "error: workers.cores lists core 4096",
        "error: log.denials /nonexistent/dir/d.log: its directory /nonexistent/dir cannot be used",
    ] {
        assert!(err.contains(want), "no {want:?} in {err}");
    }
    assert!(!err.contains("File(\""), "paths are shown as paths: {err}");
    // The same interface on both sides is wrong anywhere.
    std::fs::write(&p, "zones: { outside: { interface: eth0 }, inside: { interface: eth0 } }\n").unwrap();
    let out = holdfast().arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the same as zones.outside.interface"));
}

#[test]
fn durations_on_the_command_line_do_not_wrap() {
    let out = holdfast().args(["run", "--config", "/nonexistent.yaml", "--duration", "18446744075"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too large"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = holdfast().args(["top", "--interval", "99999999999999999999d"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too large"));
}

#[test]
fn replay_errors_say_what_is_wrong_in_the_users_terms() {
    let tmp = Scratch::new("replay_errors_say_what_is_wrong_in_the_users_terms");
    let empty = tmp.file("empty.pcap");
    std::fs::write(&empty, b"").unwrap();
    let out = holdfast().args(["replay", "--offline", "--pcap"]).arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the file is empty") && !err.contains("truncated"), "{err}");
    assert!(out.stdout.is_empty(), "no summary of nothing");
    let out = holdfast().args(["replay", "--offline", "--flows-out", "/nonexistent/dir/f.jsonl"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--flows-out /nonexistent/dir/f.jsonl: cannot create"), "{err}");
    // A link type Holdfast cannot replay is named, and the run fails.
    let wifi = tmp.file("wifi.pcap");
    let mut w = holdfast_controlplane::capture::Writer::with_link_type(Vec::new(), false, 105).unwrap();
    w.write(1, &[0u8; 60]).unwrap();
    std::fs::write(&wifi, w.finish().unwrap()).unwrap();
    let out = holdfast().args(["replay", "--offline", "--pcap"]).arg(&wifi).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("105 IEEE802_11") && err.contains("tcpdump -i any"), "{err}");
}

/// Live replay flags that do not go together are refused before anything is opened,
/// each error naming the flag (no root needed: nothing gets that far).
#[test]
fn live_replay_refuses_flag_combinations_that_make_no_sense() {
    let refused = |args: &[&str], want: &[&str]| {
        let out = holdfast().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in want {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    };
    // One rate at a time.
    refused(&["replay", "--intf1", "a", "--intf2", "b", "--pps", "1000", "--topspeed"], &["--pps", "--topspeed", "cannot be used with"]);
    refused(&["replay", "--intf1", "a", "--intf2", "b", "-M", "10", "-x", "2"], &["--mbps", "--multiplier"]);
    // Both interfaces or none.
    refused(&["replay", "--intf1", "a"], &["--intf2"]);
    // Live flags on an offline replay, and a replay that says nowhere to go.
    refused(&["replay", "--offline", "--pps", "1000"], &["--pps is for a live replay"]);
    refused(&["replay", "--offline", "--unique-ip"], &["--unique-ip is for a live replay"]);
    refused(&["replay", "--pps", "1000"], &["--offline", "--intf1"]);
    refused(&["replay", "--offline", "--intf1", "a", "--intf2", "b"], &["--offline"]);
    // Rates must be positive and finite; the order is flow or none.
    refused(&["replay", "--intf1", "a", "--intf2", "b", "--pps", "0"], &["--pps"]);
    refused(&["replay", "--intf1", "a", "--intf2", "b", "--pps", "NaN"], &["--pps"]);
    refused(&["replay", "--intf1", "a", "--intf2", "b", "--order", "fifo"], &["--order", "flow", "none"]);
    refused(&["replay", "--intf1", "a", "--intf2", "b", "--workers", "2"], &["--workers is for --offline"]);
    refused(&["replay", "--intf1", "a", "--intf2", "b", "--config", "c.yaml", "--side-map", "m"], &["--side-map and --config"]);
    // The lab's replay options need --replay.
    refused(&["lab", "--config", "c.yaml"], &["--replay"]);
}

/// `--report` draws an offline replay per second of capture time, and `report bench`
/// draws the lab benchmark's results; a bad results line is named.
#[test]
fn reports_are_svg_files_and_bad_input_is_named() {
    let tmp = Scratch::new("reports_are_svg_files_and_bad_input_is_named");
    let svg = tmp.file("offline.svg");
    let out = holdfast().args(["replay", "--offline", "--report"]).arg(&svg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("frames per second of capture time") && !text.contains("<script"));
    let input = tmp.file("results.jsonl");
    std::fs::write(
        &input,
        "{\"workload\":\"udp-1\",\"system\":\"holdfast\",\"fwd_mpps\":0.6,\"offered_mpps\":0.6,\"ucyc\":700,\"kcyc\":2400}\n\
         {\"workload\":\"udp-1\",\"system\":\"testpmd\",\"fwd_mpps\":0.5,\"offered_mpps\":0.6,\"ucyc\":770,\"kcyc\":3200}\n",
    )
    .unwrap();
    let bench = tmp.file("bench.svg");
    let out = holdfast().args(["report", "bench", "--input"]).arg(&input).arg("--out").arg(&bench).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&bench).unwrap();
    assert!(text.contains("testpmd") && text.contains("forwarded Mpps"));
    std::fs::write(&input, "{\"workload\":\"udp-1\",\"system\":\"holdfast\",\"fwd_mpps\":\"fast\"}\n").unwrap();
    let out = holdfast().args(["report", "bench", "--input"]).arg(&input).arg("--out").arg(&bench).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("results.jsonl:1: no number \"fwd_mpps\""), "{err}");
    // Files that never end are read only up to their limit.
    let out = holdfast().args(["report", "bench", "--input", "/dev/zero", "--out"]).arg(&bench).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input /dev/zero: more than 16777216 bytes"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = holdfast().args(["replay", "--intf1", "a", "--intf2", "b", "--side-map", "/dev/zero"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--side-map /dev/zero: more than 16777216 bytes"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A capture file is mapped; a directory is named as such, and a pipe (which cannot be
/// mapped) is read instead.
#[test]
fn captures_come_from_files_or_pipes_and_a_directory_is_named() {
    let out = holdfast().args(["replay", "--offline", "--pcap"]).arg(std::env::temp_dir()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is a directory, not a capture"), "{}", String::from_utf8_lossy(&out.stderr));
    let shipped = repo("tests/data/webfarm-small.pcap");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("cat {} | {} replay --offline --json --pcap /dev/stdin", shipped.display(), env!("CARGO_BIN_EXE_holdfast")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["packets"], 4827);
}

/// `holdfast replay --offline --verdicts-out /dev/stdout | head -1`: 166 KB of lines,
/// more than a pipe holds, so the writer meets the closed pipe. A command that prints
/// and exits ends as `head`'s other writers do, by SIGPIPE — not with an error (this
/// one said "Broken pipe", exit 1) or a panic (`demo` and `check-config` printed with
/// `println!` and exited 101), as Rust's ignored SIGPIPE had them.
#[test]
fn a_closed_standard_output_ends_a_printing_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let mut child = holdfast()
        .args(["replay", "--offline", "--verdicts-out", "/dev/stdout"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    // The reader, and with it the pipe's read end, is gone here.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {err}", out.status);
}
