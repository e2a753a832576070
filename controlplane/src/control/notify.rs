//! systemd's notification socket (Type=notify): READY once the workers run, STATUS
//! with each report, WATCHDOG only while every worker's heartbeat advances. Messages
//! are sent without blocking: a service manager that does not read must not stall the
//! control loop (a full socket drops the message).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(std::path::Path::new(&path)),
    };
    if let Ok(a) = addr {
        let _ = sock.send_to_addr(msg.as_bytes(), &a);
    }
}

pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}\n"));
}

pub fn status(status: &str) {
    send(&format!("STATUS={status}\n"));
}

/// systemd 253+ wants RELOADING=1 with the monotonic time, then READY=1.
pub fn reloading(done: bool) {
    if done {
        send("READY=1\n");
    } else {
        send(&format!("RELOADING=1\nMONOTONIC_USEC={}\n", holdfast_dataplane::sys::monotonic_ns() / 1000));
    }
}

pub fn stopping() {
    send("STOPPING=1\n");
}

pub fn watchdog() {
    send("WATCHDOG=1\n");
}

/// `WATCHDOG_USEC`, when meant for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        Some(Ok(pid)) if pid != std::process::id() => None,
        _ => Some(std::time::Duration::from_micros(usec)),
    }
}
