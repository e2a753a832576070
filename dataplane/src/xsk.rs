//! AF_XDP sockets and their UMEM: the only file that names xdpilone.
//!
//! Each worker owns one UMEM (an anonymous mapping of `umem_frames` 4 KiB frames) shared
//! by two sockets: one on its queue of the outside interface, one on the same queue of
//! the inside interface. A frame received on one side is transmitted on the other
//! without a copy. Frames cycle: free pool -> fill ring -> RX ring -> (pipeline) -> TX
//! ring of the other side -> completion ring -> free pool; a dropped frame goes
//! straight back to the free pool.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use xdpilone::xdp::{XdpDesc, XdpStatisticsV2};
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

pub use xdpilone::xdp::XdpDesc as Desc;

pub const FRAME_SIZE: u32 = 4096;
/// A queue that was just released can answer EBUSY for ~25 ms while the kernel tears
/// its pool down: retry this many times, 10 ms apart.
const BIND_RETRIES: u32 = 20;
/// `setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET)` (Linux 6.17+): copy-mode TX sends at
/// most 32 descriptors per kick unless raised.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Kernel counters of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
    /// Not the socket's: SYNs the shedding XDP program dropped on this queue before
    /// they reached the ring (`bpf::ShedMap`), while the worker had its flag up.
    pub syn_shed: u64,
}

impl XdpStats {
    /// Adds another socket's counters (totals over workers).
    pub fn merge(&mut self, o: &XdpStats) {
        self.rx_dropped += o.rx_dropped;
        self.rx_invalid_descs += o.rx_invalid_descs;
        self.tx_invalid_descs += o.tx_invalid_descs;
        self.rx_ring_full += o.rx_ring_full;
        self.rx_fill_ring_empty_descs += o.rx_fill_ring_empty_descs;
        self.tx_ring_empty_descs += o.tx_ring_empty_descs;
        self.syn_shed += o.syn_shed;
    }
}

impl From<XdpStatisticsV2> for XdpStats {
    fn from(s: XdpStatisticsV2) -> Self {
        XdpStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
            syn_shed: 0,
        }
    }
}

fn err(what: &str, e: xdpilone::Errno) -> io::Error {
    let hint = match e.get_raw() {
        libc::EAFNOSUPPORT => " (this kernel has no AF_XDP sockets: it needs CONFIG_XDP_SOCKETS)",
        libc::ENOMEM | libc::ENOBUFS if !what.starts_with("UMEM") => {
            " (locked memory: raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity), or lower workers.ring_size / workers.umem_frames)"
        }
        libc::EINVAL if what.starts_with("binding") => {
            " (the queue does not exist on the interface: zones.*.queues and workers.cores must not exceed its queues, see check-config --host)"
        }
        libc::EOPNOTSUPP if what.starts_with("binding") => " (the driver has no AF_XDP support in this mode: set zones.*.xdp_mode: generic)",
        libc::ENODEV | libc::ENXIO => " (the interface went away)",
        _ => "",
    };
    io::Error::new(io::Error::from_raw_os_error(e.get_raw()).kind(), format!("{what}: {e}{hint}"))
}

/// An anonymous mapping holding the frames.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        // SAFETY: an anonymous private mapping; no file, no aliasing. The result is
        // checked before use.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Area { ptr: NonNull::new(p as *mut u8).expect("mmap returned null"), len })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the UMEM that referenced it
        // is dropped before (field order in `Ports`).
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// One socket: its fill/completion rings (the device queue) and RX/TX rings.
struct Port {
    dq: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    user: User,
}

/// A worker's UMEM and its two sockets: index 0 outside, 1 inside. Can be closed
/// (an interface went away) and opened again on new interfaces; closed, it behaves as
/// a device with nothing to receive and no room to transmit.
pub struct Ports {
    inner: Option<Inner>,
    frames: u32,
}

struct Inner {
    ports: [Port; 2],
    _umem: Umem,
    area: Area,
}

// SAFETY: `Inner` owns its mapping and rings exclusively; it is created on one thread
// and moved to the worker thread that uses it, never shared.
unsafe impl Send for Inner {}

/// Where a worker's sockets go.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub ifindex: [u32; 2],
    pub queue: u32,
    pub frames: u32,
    pub ring_size: u32,
}

fn ifinfo(ifindex: u32, queue: u32) -> io::Result<IfInfo> {
    let mut info = IfInfo::invalid();
    info.from_ifindex(ifindex).map_err(|e| err("interface lookup", e))?;
    info.set_queue(queue);
    Ok(info)
}

fn with_retry<T>(what: &str, mut f: impl FnMut() -> Result<T, xdpilone::Errno>) -> io::Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.get_raw() == libc::EBUSY && tries < BIND_RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) if e.get_raw() == libc::EBUSY => {
                return Err(err(&format!("{what} (queue busy after {BIND_RETRIES} tries: another AF_XDP socket holds it)"), e));
            }
            Err(e) => return Err(err(what, e)),
        }
    }
}

impl Ports {
    pub fn open(b: &Binding) -> io::Result<Ports> {
        let frames = b.frames.max(64);
        Ok(Ports { inner: Some(Inner::open(b, frames)?), frames })
    }

    /// Closes both sockets and the UMEM (every frame in flight is lost); the queues
    /// are free for a new binding after the kernel's teardown.
    pub fn close(&mut self) {
        self.inner = None;
    }

    /// Closes, then opens on `b` (new interface indexes). On failure stays closed.
    /// The UMEM is new: every frame is free again.
    pub fn reopen(&mut self, b: &Binding) -> io::Result<()> {
        self.close();
        self.inner = Some(Inner::open(b, self.frames)?);
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.inner.is_some()
    }
}

impl Inner {
    fn open(b: &Binding, frames: u32) -> io::Result<Inner> {
        let area = Area::new(frames as usize * FRAME_SIZE as usize)?;
        let ring = b.ring_size.next_power_of_two();
        let cfg = UmemConfig { fill_size: ring, complete_size: ring, frame_size: FRAME_SIZE, headroom: 0, flags: 0 };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: `slice` is a page-aligned anonymous mapping of `area.len` bytes that
        // outlives the UMEM (dropped after it, see the field order of `Ports`).
        let umem = unsafe { Umem::new(cfg, slice) }.map_err(|e| {
            let mut msg = String::from("UMEM registration refused");
            if e.get_raw() == libc::ENOBUFS || e.get_raw() == libc::ENOMEM || e.get_raw() == libc::EPERM {
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                // SAFETY: getrlimit writes into the struct we pass.
                unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
                msg = format!(
                    "UMEM registration refused ({} KiB of frames; RLIMIT_MEMLOCK is {} KiB): run as root (CAP_IPC_LOCK), raise the limit (ulimit -l, LimitMEMLOCK=infinity) or lower workers.umem_frames",
                    area.len / 1024,
                    lim.rlim_cur / 1024
                );
            }
            err(&msg, e)
        })?;
        let size = NonZeroU32::new(ring);
        let mut ports = Vec::with_capacity(2);
        for side in 0..2 {
            let info = ifinfo(b.ifindex[side], b.queue)?;
            let sock = if side == 0 { Socket::with_shared(&info, &umem) } else { Socket::new(&info) }.map_err(|e| err("AF_XDP socket", e))?;
            let dq = umem.fq_cq(&sock).map_err(|e| err("fill/completion rings", e))?;
            // The second socket shares the UMEM: it binds with no flags of its own (it
            // inherits copy mode and need-wakeup from the first).
            let bind_flags = if side == 0 { SocketConfig::XDP_BIND_NEED_WAKEUP } else { 0 };
            let user = umem.rx_tx(&sock, &SocketConfig { rx_size: size, tx_size: size, bind_flags }).map_err(|e| err("RX/TX rings", e))?;
            let rx = user.map_rx().map_err(|e| err("RX ring mapping", e))?;
            let tx = user.map_tx().map_err(|e| err("TX ring mapping", e))?;
            with_retry("binding the socket to the interface queue", || umem.bind(&user))?;
            let budget: libc::c_int = ring as libc::c_int;
            // SAFETY: setsockopt on our own socket with a pointer to a live int; failure
            // (older kernels) leaves the default budget.
            unsafe {
                libc::setsockopt(user.as_raw_fd(), libc::SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget as *const _ as *const libc::c_void, 4);
            }
            ports.push(Port { dq, rx, tx, user });
        }
        let inside = ports.pop().expect("two ports");
        let outside = ports.pop().expect("two ports");
        Ok(Inner { ports: [outside, inside], _umem: umem, area })
    }
}

fn bounds(area: &Area, addr: u64, len: u32) -> (usize, usize) {
    let off = (addr as usize).min(area.len);
    // A frame never spans two chunks.
    let chunk_end = (off / FRAME_SIZE as usize + 1) * FRAME_SIZE as usize;
    (off, (len as usize).min(chunk_end.min(area.len) - off))
}

impl Ports {
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// The UMEM address of frame `i`.
    pub fn frame_addr(i: u32) -> u64 {
        u64::from(i) * u64::from(FRAME_SIZE)
    }

    /// The socket of side `side`, for the XSKMAP and `poll` (-1 when closed: poll(2)
    /// ignores it).
    pub fn fd(&self, side: usize) -> RawFd {
        self.inner.as_ref().map_or(-1, |i| i.ports[side].user.as_raw_fd())
    }

    /// The bytes of a frame owned by user space (received, or taken from the free pool).
    /// (Empty when closed: no frame is owned by user space then.)
    pub fn data(&self, addr: u64, len: u32) -> &[u8] {
        let Some(i) = &self.inner else { return &[] };
        let (off, len) = bounds(&i.area, addr, len);
        // SAFETY: `bounds` keeps [off, off + len) inside the mapping, which lives as long
        // as `self`. The frame belongs to user space (between RX and TX/fill), so the
        // kernel does not write it while borrowed; only this worker's thread uses it.
        unsafe { std::slice::from_raw_parts(i.area.ptr.as_ptr().add(off), len) }
    }

    /// Writable bytes of a frame owned by user space (empty when closed).
    pub fn data_mut(&mut self, addr: u64, len: u32) -> &mut [u8] {
        let Some(i) = &mut self.inner else { return &mut [] };
        let (off, len) = bounds(&i.area, addr, len);
        // SAFETY: as in `data`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(i.area.ptr.as_ptr().add(off), len) }
    }

    /// Moves up to `free.len()` frames from the free pool into side's fill ring.
    pub fn fill(&mut self, side: usize, free: &mut Vec<u64>, max: u32) -> u32 {
        let Some(i) = &mut self.inner else { return 0 };
        let p = &mut i.ports[side];
        let want = max.min(free.len() as u32);
        if want == 0 {
            return 0;
        }
        let n = {
            let mut w = p.dq.fill(want);
            let n = w.insert(free.iter().rev().take(want as usize).copied());
            w.commit();
            n
        };
        free.truncate(free.len() - n as usize);
        if n > 0 && p.dq.needs_wakeup() {
            p.dq.wake();
        }
        n
    }

    /// Reaps side's completion ring into the free pool.
    pub fn complete(&mut self, side: usize, free: &mut Vec<u64>, max: u32) -> u32 {
        let Some(i) = &mut self.inner else { return 0 };
        let p = &mut i.ports[side];
        let mut r = p.dq.complete(max);
        let mut n = 0;
        while let Some(addr) = r.read() {
            free.push(addr & !(u64::from(FRAME_SIZE) - 1));
            n += 1;
        }
        r.release();
        n
    }

    /// Free TX slots on side (at most `want`), re-reading the kernel's head as needed.
    pub fn tx_room(&mut self, side: usize, want: u32) -> u32 {
        let Some(i) = &mut self.inner else { return 0 };
        let w = i.ports[side].tx.transmit(want);
        // Dropping the writer without commit releases nothing.
        w.capacity()
    }

    /// Whether side's RX ring holds frames (an advisory, relaxed read).
    pub fn rx_waiting(&self, side: usize) -> bool {
        self.rx_pending(side) > 0
    }

    /// Descriptors waiting in side's RX ring (an advisory, relaxed read).
    pub fn rx_pending(&self, side: usize) -> u32 {
        self.inner.as_ref().map_or(0, |i| i.ports[side].rx.available())
    }

    /// Takes up to `max` received descriptors from side's RX ring.
    pub fn receive(&mut self, side: usize, max: u32, out: &mut Vec<XdpDesc>) -> u32 {
        let Some(i) = &mut self.inner else { return 0 };
        let mut r = i.ports[side].rx.receive(max);
        let mut n = 0;
        while let Some(d) = r.read() {
            out.push(d);
            n += 1;
        }
        r.release();
        n
    }

    /// Queues descriptors on side's TX ring and kicks the kernel (copy mode needs a
    /// `sendto` per batch). Returns how many were queued.
    pub fn transmit(&mut self, side: usize, descs: &[XdpDesc]) -> u32 {
        let Some(i) = &mut self.inner else { return 0 };
        if descs.is_empty() {
            return 0;
        }
        let p = &mut i.ports[side];
        let n = {
            let mut w = p.tx.transmit(descs.len() as u32);
            let n = w.insert(descs.iter().copied());
            w.commit();
            n
        };
        if p.tx.needs_wakeup() {
            p.tx.wake();
        }
        n
    }

    /// Kicks side's TX ring if descriptors are still waiting for the kernel.
    pub fn kick(&mut self, side: usize) {
        let Some(i) = &mut self.inner else { return };
        let p = &mut i.ports[side];
        if p.tx.pending() > 0 && p.tx.needs_wakeup() {
            p.tx.wake();
        }
    }

    pub fn stats(&self, side: usize) -> XdpStats {
        self.inner.as_ref().and_then(|i| i.ports[side].user.statistics_v2().ok()).map(XdpStats::from).unwrap_or_default()
    }
}
