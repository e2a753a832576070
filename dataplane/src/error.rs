//! Why the dataplane could not start, re-bind or re-attach: each error keeps the
//! operating system's error as its cause and says, where one is known, what to change.

use std::io;

/// A system call that failed, what it was for, and a hint for the errno.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{}", hint(.what, .source))]
pub struct OsError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl OsError {
    pub fn new(what: impl Into<String>, source: io::Error) -> OsError {
        OsError { what: what.into(), source }
    }
}

/// What an operator can do about an errno from loading or attaching XDP.
fn hint(what: &str, e: &io::Error) -> &'static str {
    let attaching = what.starts_with("attaching");
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => ": permission denied — run as root, or grant CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW and CAP_IPC_LOCK",
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if attaching => ": the driver refused native XDP — set zones.*.xdp_mode: generic",
        Some(libc::EBUSY) if attaching => ": another XDP program is attached to this interface",
        _ => "",
    }
}

/// Why a worker could not open or re-bind its sockets.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The UMEM or a socket (the message carries the setting to change).
    #[error("worker {worker}: {source}")]
    Sockets {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {worker}: reopening its sockets: {source}")]
    Reopen {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {worker}: registering the socket in the XSKMAP: {source}")]
    Register {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {worker} did not take the rebind (stuck or its queue is full)")]
    NotTaken { worker: usize },
    #[error("worker {worker} did not answer the rebind within 5 s")]
    NoAnswer { worker: usize },
}

/// Why the appliance did not start, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "holdfast run needs root or the capabilities CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF (and CAP_IPC_LOCK or LimitMEMLOCK=infinity): it loads an XDP program and opens AF_XDP sockets; missing {}",
        .0.join(", ")
    )]
    Capabilities(Vec<&'static str>),
    #[error(
        "interface {name} has queues: {queues} but workers.cores lists {workers} workers: each worker serves one queue of each interface, so they must match"
    )]
    Queues { name: String, queues: u32, workers: usize },
    /// Frames the NIC puts on a queue no worker binds would never be judged.
    #[error(
        "interface {name} receives on {have} queues but the workers bind {queues} (zones.*.queues): what the NIC puts on the other {extra} would reach no worker. Give it {queues} (ethtool -L {name} combined {queues}, or rx {queues}), or run {have} workers (zones.*.queues and workers.cores)",
        extra = have - queues
    )]
    ExtraQueues { name: String, have: u32, queues: u32 },
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("starting worker {worker}: {source}")]
    Thread {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("a worker stopped while starting")]
    WorkerVanished,
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Os(#[from] OsError),
}

/// Why an interface that came back could not be served again (retried at the next
/// look at the links).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Os(#[from] OsError),
}
