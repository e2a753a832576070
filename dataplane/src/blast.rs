//! A 64-byte UDP frame generator for the lab benchmark: prebuilt frames sent as fast as
//! the kernel takes them through an AF_PACKET socket (`sendmmsg`, 64 frames per call,
//! qdisc bypassed).

use std::io;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const PACKET_QDISC_BYPASS: libc::c_int = 20;

pub struct Report {
    pub sent: u64,
    pub elapsed: Duration,
    /// CPU time the generator itself used (user + system).
    pub cpu: Duration,
}

fn cpu_time() -> Duration {
    // SAFETY: `rusage` is a plain C struct of integers; all-zero is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Sends `frames` round-robin on interface `ifindex` for `seconds`.
pub fn blast(ifindex: u32, frames: &[Vec<u8>], seconds: f64) -> io::Result<Report> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as libc::c_int) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let guard = Fd(fd);
    // SAFETY: `sockaddr_ll` is a plain C struct; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    let one: libc::c_int = 1;
    // SAFETY: bind/setsockopt on our socket with pointers to live values of the right size.
    unsafe {
        if libc::bind(guard.0, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::setsockopt(guard.0, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &one as *const _ as *const libc::c_void, 4);
    }
    let mut iov: Vec<libc::iovec> = frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
    // SAFETY: `mmsghdr` is a plain C struct; all-zero (null pointers, zero lengths) is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let cpu0 = cpu_time();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    let mut next = 0usize;
    while Instant::now() < until {
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_iov = &mut iov[next];
            m.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % iov.len();
        }
        // SAFETY: `msgs` holds BATCH headers, each pointing at one iovec of `iov`, whose
        // buffers (`frames`) outlive the call.
        let n = unsafe { libc::sendmmsg(guard.0, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(Report { sent, elapsed: start.elapsed(), cpu: cpu_time() - cpu0 })
}

struct Fd(libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closes the socket this struct owns.
        unsafe { libc::close(self.0) };
    }
}
