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
