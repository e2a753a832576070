//! Small OS services: a per-process random seed.

/// 64 random bits from the kernel (getrandom(2)), for hash seeds.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return u64::from_ne_bytes(b);
        }
    }
    // No /dev/urandom (a minimal container): fall back to std's per-process keys.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Asks the kernel to back large tables with transparent huge pages, before they are
/// first written (tables are allocated untouched: the pipeline's `raw::Zeroed`). With
/// 4 KiB pages a lookup in a large table costs a TLB miss on top of the cache miss.
/// Best effort: on failure (THP disabled) the tables simply use small pages.
pub fn advise_huge_pages(regions: &[(usize, usize)]) {
    const HUGE: usize = 2 << 20;
    for &(addr, len) in regions {
        // Only whole huge pages inside the region.
        let start = addr.next_multiple_of(HUGE);
        let end = (addr + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of a range that
            // this process owns (it lies inside a live allocation); MADV_HUGEPAGE does
            // not alter contents or validity of the memory.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Sleeps in poll(2) until one of `fds` is readable or `timeout_ms` passes.
pub fn poll_in(fds: &[std::os::fd::RawFd], timeout_ms: i32) {
    let mut p = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4];
    let n = fds.len().min(p.len());
    for (slot, &fd) in p.iter_mut().zip(fds) {
        *slot = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    }
    // SAFETY: `p` holds `n` initialised pollfd entries and lives across the call.
    unsafe {
        libc::poll(p.as_mut_ptr(), n as libc::nfds_t, timeout_ms);
    }
}

/// True when the process runs with effective user id 0.
pub fn is_root() -> bool {
    euid() == 0
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Capabilities the dataplane needs without root: CAP_NET_ADMIN (attach XDP),
/// CAP_NET_RAW (AF_XDP sockets), CAP_BPF (load the program and map). CAP_IPC_LOCK is
/// needed too unless RLIMIT_MEMLOCK covers the UMEM; its absence is explained when the
/// UMEM is refused.
pub const DATAPLANE_CAPS: [(u32, &str); 3] = [(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW"), (39, "CAP_BPF")];

/// The capabilities of `DATAPLANE_CAPS` this process lacks (effective set, from
/// /proc/self/status); empty for root.
pub fn missing_capabilities() -> Vec<&'static str> {
    if is_root() {
        return vec![];
    }
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("CapEff:")).and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok()))
        .unwrap_or(0);
    DATAPLANE_CAPS.iter().filter(|(bit, _)| eff & (1 << bit) == 0).map(|(_, n)| *n).collect()
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Routes SIGINT and SIGTERM to [`stop_requested`] instead of killing the process, so
/// that the appliance can drain and detach.
pub fn catch_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only performs an atomic store (async-signal
        // safe); the sigaction struct is fully initialised (zeroed, then set).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT or SIGTERM arrived (after [`catch_stop_signals`]).
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_reload_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    RELOAD.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Routes SIGHUP to [`take_reload_request`] (reload the configuration, reopen logs)
/// instead of ending the process.
pub fn catch_reload_signal() {
    // SAFETY: as in `catch_stop_signals`: the handler only stores to an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_reload_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut());
    }
}

/// True once per SIGHUP received since the last call.
pub fn take_reload_request() -> bool {
    RELOAD.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Raises this process's open-file limit (RLIMIT_NOFILE) towards `want`: the soft limit
/// up to the hard one, and, as root, the hard one up to `fs.nr_open`. Returns the soft
/// limit now in force (a load client holding a million connections needs a million
/// descriptors).
pub fn raise_nofile(want: u64) -> std::io::Result<u64> {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1 << 20);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let set = |cur: u64, max: u64| {
        let new = libc::rlimit { rlim_cur: cur, rlim_max: max };
        // SAFETY: setrlimit reads the rlimit we own; the kernel checks the values.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 { Ok(cur) } else { Err(std::io::Error::last_os_error()) }
    };
    let hard = lim.rlim_max.max(want.min(nr_open));
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, up to the hard limit.
    set(want.min(hard).max(lim.rlim_cur), hard).or_else(|_| set(want.min(lim.rlim_max).max(lim.rlim_cur), lim.rlim_max))
}

/// Sets socket `fd`'s receive buffer to `bytes` past `net.core.rmem_max`
/// (SO_RCVBUFFORCE; needs CAP_NET_ADMIN, which the appliance has). The kernel doubles
/// it for its bookkeeping, as it does SO_RCVBUF.
pub fn force_recv_buffer(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is an open descriptor for the call's duration (borrowed); setsockopt
    // reads `size_of::<c_int>()` bytes from `&v`, which lives through the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Lets a closed standard output end this process as SIGPIPE ends other tools
/// (`holdfast status | head`), instead of Rust's default (SIGPIPE ignored, so the
/// next print panics on EPIPE). Only for commands that print and exit: sockets are
/// unaffected (the standard library sends with MSG_NOSIGNAL), but a daemon or a lab
/// that must clean up keeps the default.
pub fn die_on_broken_pipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler; nothing else in this process
    // depends on SIGPIPE being ignored (see above).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Clock `id` in nanoseconds.
fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds (what systemd's reload protocol compares with).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The calling thread's CPU time in nanoseconds (CLOCK_THREAD_CPUTIME_ID): what a
/// piece of its work cost, without the time it was off its core.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// An interface's state, by name, in this process's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No interface of that name.
    Gone,
    /// Present, but administratively down or without carrier.
    Down { ifindex: u32 },
    /// Up and running (operationally up).
    Up { ifindex: u32 },
}

impl LinkState {
    pub fn ifindex(self) -> Option<u32> {
        match self {
            LinkState::Gone => None,
            LinkState::Down { ifindex } | LinkState::Up { ifindex } => Some(ifindex),
        }
    }

    pub fn is_up(self) -> bool {
        matches!(self, LinkState::Up { .. })
    }

    pub fn name(self) -> &'static str {
        match self {
            LinkState::Gone => "gone",
            LinkState::Down { .. } => "down",
            LinkState::Up { .. } => "up",
        }
    }
}

/// The state of interface `name` now: if_nametoindex(3), SIOCGIFFLAGS (IFF_UP) and the
/// carrier as the driver reports it (ETHTOOL_GLINK; IFF_RUNNING where the driver has no
/// such answer). Not IFF_RUNNING first: it follows the operational state, which the
/// kernel updates up to a second after the carrier comes up (linkwatch), and frames
/// would be dropped as `link_down` meanwhile.
pub fn link_state(name: &str) -> LinkState {
    let Ok(c) = std::ffi::CString::new(name) else { return LinkState::Gone };
    if name.len() >= libc::IFNAMSIZ {
        return LinkState::Gone;
    }
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return LinkState::Gone;
    }
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the result is checked, then owned
    // (closed when `sock` drops).
    let sock = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return LinkState::Down { ifindex };
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: a zeroed ifreq is valid; the name is copied NUL-terminated (name <
    // IFNAMSIZ, checked above).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return LinkState::Down { ifindex };
    }
    // SAFETY: the ioctl above wrote the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
    // struct ethtool_value { cmd, data } for ETHTOOL_GLINK (0x0a).
    let mut link: [u32; 2] = [0x0a, 0];
    req.ifr_ifru.ifru_data = link.as_mut_ptr() as *mut libc::c_char;
    // SAFETY: for SIOCETHTOOL the ifreq's data pointer points at `link`, which outlives
    // the call and has the size ETHTOOL_GLINK writes (two u32).
    let carrier = if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } == 0 { link[1] != 0 } else { flags & libc::IFF_RUNNING != 0 };
    if flags & libc::IFF_UP != 0 && carrier { LinkState::Up { ifindex } } else { LinkState::Down { ifindex } }
}

/// A routing netlink socket subscribed to link changes (RTMGRP_LINK): it only says that
/// *something* changed; [`link_state`] then reads what. Non-blocking.
pub struct LinkEvents {
    fd: std::os::fd::OwnedFd,
}

impl LinkEvents {
    pub fn open() -> std::io::Result<LinkEvents> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; the result is checked and owned.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; we set the family and the groups, and
        // pass its exact size.
        let r = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            sa.nl_groups = libc::RTMGRP_LINK as u32;
            libc::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as u32)
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(LinkEvents { fd })
    }

    /// Reads the pending messages (at most 256 reads a call: what is left is read at
    /// the next); true if there was any (a link changed, or the socket overran —
    /// either way, look again).
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        for _ in 0..256 {
            // SAFETY: recv into a buffer we own, with its length; non-blocking socket.
            let n = unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(&self.fd), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n > 0 {
                any = true;
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                any = true; // overran: states changed, messages lost
                continue;
            }
            break;
        }
        any
    }
}

/// A file mapped read-only into memory: the kernel pages it in as it is read and may
/// drop clean pages again, so a capture larger than memory is replayed without being
/// loaded. Read sequentially (`MADV_SEQUENTIAL`).
pub struct MappedFile {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; reading it from several
// threads is sound.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared reads of read-only memory.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `path`. An empty file maps to an empty slice (mmap refuses length 0).
    pub fn open(path: &std::path::Path) -> std::io::Result<MappedFile> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path)?;
        let len = usize::try_from(f.metadata()?.len()).map_err(|_| std::io::Error::other("file larger than the address space"))?;
        if len == 0 {
            return Ok(MappedFile { ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(), len: 0 });
        }
        // SAFETY: a private read-only mapping of a file we opened; the result is checked
        // before use. (A file truncated by another process while mapped makes reads past
        // its new end fault, as with any mapped file: captures are not written while
        // they are replayed.)
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just created; it changes no contents.
        unsafe { libc::madvise(p, len, libc::MADV_SEQUENTIAL) };
        Ok(MappedFile { ptr: p as *const u8, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes (or is dangling with `len` 0) for as
        // long as `self` lives; nothing writes them.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `open`; borrows of `bytes` end
            // before `self` is dropped.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    /// SO_RCVBUFFORCE goes past `net.core.rmem_max`, where SO_RCVBUF stops at it.
    #[test]
    fn a_forced_receive_buffer_goes_past_rmem_max() {
        if !super::is_root() {
            crate::host::report_skip("needs root (CAP_NET_ADMIN) for SO_RCVBUFFORCE");
            return;
        }
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        let want = max + (1 << 20);
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&s).set_recv_buffer_size(want).unwrap();
        let plain = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        assert!(plain <= 2 * max, "SO_RCVBUF went past rmem_max: {plain} > 2 x {max}");
        super::force_recv_buffer(s.as_fd(), want).unwrap();
        let forced = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        assert!(forced >= 2 * want, "{forced} < 2 x {want}");
    }
}
