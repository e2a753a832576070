//! The live replayer's AF_PACKET ports (`--driver packet`): for interfaces without
//! XDP, or to receive on interfaces other than the two it sends on (`--rx1/--rx2`).
//! Sending is `sendmmsg` on a raw socket per sending interface (qdisc bypassed);
//! receiving is `recvmmsg` on a raw socket per receiving interface that ignores what
//! this host sends there (`PACKET_IGNORE_OUTGOING`). Unlike AF_XDP, the host's own stack
//! also sees what arrives: use interfaces without addresses, as for tcpreplay.

use std::io;

use crate::wire::WireStats;
use crate::xsk::XdpStats;

const BATCH: usize = 64;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Largest frame received (longer ones are truncated and will not match).
const RX_FRAME: usize = 4096;

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closes the socket this value owns, once.
        unsafe { libc::close(self.0) };
    }
}

fn raw_socket(ifindex: u32, what: &str) -> io::Result<Fd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, libc::c_int::from(proto)) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: AF_PACKET socket: {e} (needs root or CAP_NET_RAW)")));
    }
    let fd = Fd(fd);
    // SAFETY: `sockaddr_ll` is a plain C struct; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a pointer to a live sockaddr_ll of the size passed.
    if unsafe { libc::bind(fd.0, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: binding to the interface: {e}")));
    }
    Ok(fd)
}

fn set_int(fd: &Fd, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: setsockopt on our socket with a pointer to a live int of the size passed;
    // a failure (an older kernel) leaves the default.
    unsafe { libc::setsockopt(fd.0, libc::SOL_PACKET, opt, &v as *const _ as *const libc::c_void, 4) };
}

pub struct PacketWire {
    tx: [Fd; 2],
    /// Receiving sockets: index `r` holds what comes out on side `r` (sent on `1 - r`).
    rx: [Fd; 2],
    queued: [Vec<Vec<u8>>; 2],
    last: usize,
    stats: WireStats,
    rx_bufs: Vec<Vec<u8>>,
}

impl PacketWire {
    /// Sends on `tx` (side 0, side 1); what is sent on side 0 comes out on `rx[1]` and
    /// what is sent on side 1 on `rx[0]`.
    pub fn open(tx: [&str; 2], rx: [&str; 2]) -> io::Result<PacketWire> {
        let idx = |n: &str| crate::bpf::ifindex(n);
        let tx0 = raw_socket(idx(tx[0])?, tx[0])?;
        let tx1 = raw_socket(idx(tx[1])?, tx[1])?;
        let rx0 = raw_socket(idx(rx[0])?, rx[0])?;
        let rx1 = raw_socket(idx(rx[1])?, rx[1])?;
        for s in [&tx0, &tx1] {
            set_int(s, PACKET_QDISC_BYPASS, 1);
        }
        for s in [&rx0, &rx1] {
            set_int(s, PACKET_IGNORE_OUTGOING, 1);
            // A larger receive buffer: bursts come out faster than one poll drains.
            let size: libc::c_int = 8 << 20;
            // SAFETY: as in `set_int`, at SOL_SOCKET.
            unsafe { libc::setsockopt(s.0, libc::SOL_SOCKET, libc::SO_RCVBUF, &size as *const _ as *const libc::c_void, 4) };
        }
        Ok(PacketWire {
            tx: [tx0, tx1],
            rx: [rx0, rx1],
            queued: [Vec::with_capacity(BATCH), Vec::with_capacity(BATCH)],
            last: 0,
            stats: WireStats::default(),
            rx_bufs: (0..BATCH).map(|_| vec![0u8; RX_FRAME]).collect(),
        })
    }

    /// Queues a copy of `frame` on `side` (the other side's queue goes first).
    pub fn queue(&mut self, side: usize, frame: &[u8]) -> bool {
        if side != self.last && !self.queued[self.last].is_empty() {
            self.flush_side(self.last);
        }
        self.last = side;
        if self.queued[side].len() >= BATCH {
            self.flush_side(side);
            if self.queued[side].len() >= BATCH {
                self.stats.retried[side] += 1;
                return false;
            }
        }
        self.queued[side].push(frame.to_vec());
        self.stats.bytes[side] += frame.len() as u64;
        true
    }

    fn flush_side(&mut self, side: usize) {
        let q = &mut self.queued[side];
        if q.is_empty() {
            return;
        }
        let mut iov: Vec<libc::iovec> = q.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
        // SAFETY: `mmsghdr` is a plain C struct; all-zero is a valid value.
        let mut msgs: Vec<libc::mmsghdr> = (0..iov.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds `msgs.len()` headers, each pointing at one iovec of
        // `iov`, whose buffers (the queued frames) outlive the call.
        let n = unsafe { libc::sendmmsg(self.tx[side].0, msgs.as_mut_ptr(), msgs.len() as u32, libc::MSG_DONTWAIT) };
        if n > 0 {
            let n = n as usize;
            self.stats.queued[side] += n as u64;
            self.stats.completed[side] += n as u64;
            q.drain(..n);
        } else if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => self.stats.retried[side] += 1,
                // A frame the interface refuses (too long, ...): counted, dropped.
                _ => {
                    self.stats.failed[side] += 1;
                    q.remove(0);
                }
            }
        }
    }

    pub fn flush(&mut self) {
        let (a, b) = (1 - self.last, self.last);
        self.flush_side(a);
        self.flush_side(b);
    }

    /// Receives what waits on both receiving sockets; `f(side, bytes)` with the side
    /// it came out on.
    pub fn poll(&mut self, mut f: impl FnMut(usize, &[u8])) -> usize {
        let mut total = 0;
        for r in 0..2 {
            loop {
                let mut iov: Vec<libc::iovec> =
                    self.rx_bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
                // SAFETY: as in `flush_side`.
                let mut msgs: Vec<libc::mmsghdr> = (0..iov.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
                for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                }
                // SAFETY: `msgs` points at `iov`, whose buffers (`rx_bufs`) are live and
                // writable for their whole length; the kernel writes at most that.
                let n = unsafe { libc::recvmmsg(self.rx[r].0, msgs.as_mut_ptr(), msgs.len() as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
                if n <= 0 {
                    break;
                }
                for (m, b) in msgs.iter().zip(&self.rx_bufs).take(n as usize) {
                    f(r, &b[..(m.msg_len as usize).min(b.len())]);
                }
                self.stats.received[r] += n as u64;
                total += n as usize;
            }
        }
        total
    }

    pub fn wait(&self, timeout_ms: i32) {
        crate::sys::poll_in(&[self.rx[0].0, self.rx[1].0], timeout_ms);
    }

    pub fn stats(&self) -> WireStats {
        self.stats
    }

    /// AF_PACKET has no XDP counters; the receive sockets' drops (`PACKET_STATISTICS`)
    /// are reported as `rx_dropped`.
    pub fn xdp_stats(&self) -> [XdpStats; 2] {
        let drops = |fd: &Fd| {
            let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
            let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into the struct we own.
            unsafe { libc::getsockopt(fd.0, libc::SOL_PACKET, libc::PACKET_STATISTICS, &mut st as *mut _ as *mut libc::c_void, &mut len) };
            u64::from(st.tp_drops)
        };
        [XdpStats { rx_dropped: drops(&self.rx[0]), ..XdpStats::default() }, XdpStats { rx_dropped: drops(&self.rx[1]), ..XdpStats::default() }]
    }
}
