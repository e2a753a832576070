//! The XDP redirect program and the bpf(2) calls to load and attach it, without libbpf.
//!
//! The program is `return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);`:
//! six instruction slots, assembled by hand (the same kernel tag as clang's output; see
//! shared/AFXDP-NOTES.md). It is attached with BPF_LINK_CREATE, so it stays attached only
//! while the link's file descriptor is open: when the process exits or dies, the kernel
//! detaches it. Nothing is left behind, crash included.
//!
//! Every `unsafe` here is a bpf(2) system call on a zeroed, correctly sized attribute
//! block that lives across the call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// Size of the attribute block passed to bpf(2); larger than any union member used,
/// zero-filled (the kernel accepts a larger block when the tail is zero).
const ATTR: usize = 128;

/// How the program is attached (`zones.*.xdp_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth, most NICs).
    Native,
    /// In the generic (SKB) path: works everywhere, slower.
    Generic,
}

struct Attr([u8; ATTR]);

impl Attr {
    fn new() -> Attr {
        Attr([0; ATTR])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, at: usize, n: &str) -> &mut Self {
        let b = n.as_bytes();
        let len = b.len().min(15);
        self.0[at..at + len].copy_from_slice(&b[..len]);
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads (and for some commands writes) at most ATTR bytes of `attr`,
    // which is a live, exclusively borrowed buffer of that size. Pointers stored inside
    // it (keys, values, instructions, license, log) are set by the callers below to
    // buffers that outlive this call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), ATTR as libc::c_uint) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) as a new file descriptor that nothing else
    // owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// An XSKMAP: queue index -> AF_XDP socket.
pub struct XskMap {
    fd: OwnedFd,
}

impl XskMap {
    pub fn new(entries: u32) -> io::Result<XskMap> {
        let mut a = Attr::new();
        a.u32(0, BPF_MAP_TYPE_XSKMAP).u32(4, 4).u32(8, 4).u32(12, entries.max(1)).name(28, "hf_xsks");
        Ok(XskMap { fd: owned(bpf(BPF_MAP_CREATE, &mut a)?) })
    }

    /// Directs queue `queue`'s frames to the socket `sock`.
    pub fn set(&self, queue: u32, sock: RawFd) -> io::Result<()> {
        let key = queue;
        let value = sock as u32;
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32).u64(8, &key as *const u32 as u64).u64(16, &value as *const u32 as u64).u64(24, 0);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }

    pub fn clear(&self, queue: u32) -> io::Result<()> {
        let key = queue;
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32).u64(8, &key as *const u32 as u64);
        bpf(BPF_MAP_DELETE_ELEM, &mut a).map(|_| ())
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `bpf_insn`: opcode, dst (low nibble) / src (high nibble) registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (dst & 0x0f) | (src << 4);
    i[2..4].copy_from_slice(&off.to_ne_bytes());
    i[4..8].copy_from_slice(&imm.to_ne_bytes());
    i
}

/// The six instruction slots of the redirect program for the map `map_fd`.
pub fn redirect_program(map_fd: RawFd) -> [[u8; 8]; 6] {
    [
        insn(0x61, 2, 1, 16, 0),     // r2 = *(u32 *)(r1 + 16): ctx->rx_queue_index
        insn(0x18, 1, 1, 0, map_fd), // r1 = map (ld_imm64, src 1 = BPF_PSEUDO_MAP_FD)
        insn(0, 0, 0, 0, 0),         //      (second half of ld_imm64)
        insn(0xb7, 3, 0, 0, 2),      // r3 = XDP_PASS: no socket on this queue
        insn(0x85, 0, 0, 0, 51),     // call bpf_redirect_map
        insn(0x95, 0, 0, 0, 0),      // exit
    ]
}

/// A loaded XDP program.
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads the redirect program for `map`. A verifier refusal carries the log.
    pub fn load_redirect(map: &XskMap) -> io::Result<Program> {
        let insns = redirect_program(map.raw_fd());
        let license = b"Dual BSD/GPL\0";
        let mut log = vec![0u8; 64 * 1024];
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .name(48, "hf_redirect")
            .u32(68, BPF_XDP);
        match bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => Ok(Program { fd: owned(fd) }),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                Err(io::Error::new(e.kind(), format!("the kernel refused the XDP program ({e}); verifier log:\n{text}")))
            }
        }
    }
}

/// An attachment of a program to an interface. Dropping it (or the process ending)
/// detaches the program.
pub struct Link {
    _fd: OwnedFd,
    pub ifindex: u32,
}

impl Link {
    pub fn attach(prog: &Program, ifindex: u32, mode: XdpMode) -> io::Result<Link> {
        let flags = match mode {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        };
        let mut a = Attr::new();
        a.u32(0, prog.fd.as_raw_fd() as u32).u32(4, ifindex).u32(8, BPF_XDP).u32(12, flags);
        Ok(Link { _fd: owned(bpf(BPF_LINK_CREATE, &mut a)?), ifindex })
    }
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 { Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface named {name:?}"))) } else { Ok(i) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_six_slots_with_the_map_fd_in_the_load() {
        let p = redirect_program(7);
        assert_eq!(p[0], [0x61, 0x12, 16, 0, 0, 0, 0, 0]);
        assert_eq!(p[1], [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(p[3], [0xb7, 0x03, 0, 0, 2, 0, 0, 0]);
        assert_eq!(p[4], [0x85, 0, 0, 0, 51, 0, 0, 0]);
        assert_eq!(p[5], [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}
