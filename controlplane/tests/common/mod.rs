//! What the root-only lab tests share.

/// Whether the lab can run here; if not, says why in a `SKIPPED:` line per reason
/// (`.ci/run` fails on any: CI installs the packages and runs as root).
pub fn lab_can_run() -> bool {
    if !root_can_run() {
        return false;
    }
    holdfast_dataplane::host::have_or_report(&holdfast_controlplane::lab::TOOLS)
}

/// Whether the interpreter `python` can import `module`; if not, says which package
/// has it.
#[allow(dead_code)]
pub fn python_module(python: &str, module: &str, package: &str) -> bool {
    let ok =
        std::process::Command::new(python).args(["-c", &format!("import {module}")]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        holdfast_dataplane::host::report_skip(format_args!("needs the python module {module} (apt-get install {package})"));
    }
    ok
}

/// Whether this runs as root; if not, says so in a `SKIPPED:` line.
pub fn root_can_run() -> bool {
    if !holdfast_dataplane::sys::is_root() {
        holdfast_dataplane::host::report_skip("needs root for network namespaces and XDP (CI runs it as root)");
        return false;
    }
    true
}

/// Returns from the test, saying why, when the lab cannot run here.
macro_rules! need_lab {
    () => {
        if !common::lab_can_run() {
            return;
        }
    };
}

/// Returns from the test, saying why, when not root.
#[allow(unused_macros)]
macro_rules! need_root {
    () => {
        if !common::root_can_run() {
            return;
        }
    };
}

/// Runs `cmd` with `sh -c` in namespace `ns`; its standard output. Panics, quoting
/// standard error, when it fails.
#[allow(dead_code)]
pub fn sh(ns: &str, cmd: &str) -> String {
    let out = std::process::Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    assert!(out.status.success(), "in {ns}: {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `holdfast ARGS` in namespace `ns`.
#[allow(dead_code)]
pub fn hf(ns: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip").args(["netns", "exec", ns, env!("CARGO_BIN_EXE_holdfast")]).args(args).output().unwrap()
}

/// Starts `holdfast run --quiet --json` in `ns` with the config `text` (written to
/// `dir/NAME.yaml`, standard error to `dir/NAME.err`); returns once its control
/// endpoint answers.
#[allow(dead_code)]
pub fn appliance(ns: &str, dir: &std::path::Path, name: &str, text: &str) -> std::process::Child {
    use std::process::Stdio;
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, text).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    let c = std::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_holdfast"), "run", "--quiet", "--json", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !hf(ns, &["status", "--json"]).status.success() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{name} did not start: {}",
            std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    c
}

/// A web server on 10.0.2.1:80 in `hf-in`, serving `dir/www` (with an `index.html`).
#[allow(dead_code)]
pub fn web_server(dir: &std::path::Path) -> std::process::Child {
    use std::process::Stdio;
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/index.html"), "hello\n").unwrap();
    std::process::Command::new("ip")
        .args(["netns", "exec", "hf-in", "python3", "-m", "http.server", "80", "--bind", "10.0.2.1", "--directory"])
        .arg(dir.join("www"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The lab (one queue) plus a namespace `peer` linked to the appliance's `hf-fw` by
/// a sync veth: `hf-sync0` 192.168.79.2/24 there, `hf-sync1` 192.168.79.1/24 in `peer`.
#[allow(dead_code)]
pub fn lab_with_sync_peer(peer: &str) {
    use std::process::{Command, Stdio};
    holdfast_controlplane::lab::up(1).unwrap();
    let _ = Command::new("ip").args(["netns", "del", peer]).stderr(Stdio::null()).status();
    assert!(Command::new("ip").args(["netns", "add", peer]).status().unwrap().success());
    let linked =
        Command::new("ip").args(["link", "add", "hf-sync0", "netns", "hf-fw", "type", "veth", "peer", "name", "hf-sync1", "netns", peer]).status().unwrap();
    assert!(linked.success());
    sh("hf-fw", "ip addr add 192.168.79.2/24 dev hf-sync0 && ip link set hf-sync0 up");
    sh(peer, "ip addr add 192.168.79.1/24 dev hf-sync1 && ip link set hf-sync1 up && ip link set lo up");
}
