//! The XDP redirect program and the bpf(2) calls to load and attach it, without libbpf.
//!
//! The plain program is `return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_DROP);`:
//! six instruction slots, assembled by hand (AFXDP-NOTES.md has the `XDP_PASS` form).
//! A frame on a queue with no socket is dropped, not passed: the kernel's own stack
//! would take what the firewall never judged (and forward it, on a host that
//! forwards). `run::start` refuses interfaces with more receive queues than workers,
//! so that only a moment of a socket's re-binding can meet it. The shedding program ([`shedding_program`], the default)
//! puts one check in front of it: while the worker of this queue has raised the queue's
//! flag in the [`ShedMap`] (its RX ring is filling faster than it drains), a TCP SYN
//! without ACK or RST is dropped here and counted, before the kernel copies it into
//! the ring, so that the ring keeps room for the segments of established flows.
//!
//! Either is attached with BPF_LINK_CREATE, so it stays attached only while the link's
//! file descriptor is open: when the process exits or dies, the kernel detaches it.
//! Nothing is left behind, crash included.
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
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
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

/// BPF_MAP_UPDATE_ELEM of `map`'s entry `key` (a u32 key) with the bytes of `value`,
/// which must be the map's value size.
fn update_elem(map: &OwnedFd, key: u32, value: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).u64(8, &key as *const u32 as u64).u64(16, value.as_ptr() as u64).u64(24, 0);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
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
        update_elem(&self.fd, queue, &(sock as u32).to_ne_bytes())
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

/// Per queue of one interface: the shed flag its worker raises and lowers, and the SYNs
/// the program dropped while it was up. An array of `2 * queues` u64 values: slot `q`
/// is queue `q`'s flag (0 or 1), slot `queues + q` its count. The worker writes only
/// flags, the program adds to counts only (atomically), so neither overwrites the other.
pub struct ShedMap {
    fd: OwnedFd,
    queues: u32,
}

/// The most queues a shed map serves: `2 * queues` entries, and `queues` an immediate
/// of the shedding program.
const SHED_QUEUES_MAX: u32 = 1 << 16;

impl ShedMap {
    pub fn new(queues: u32) -> io::Result<ShedMap> {
        if queues > SHED_QUEUES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a shed map for {queues} queues: at most {SHED_QUEUES_MAX}")));
        }
        let queues = queues.max(1);
        let mut a = Attr::new();
        a.u32(0, BPF_MAP_TYPE_ARRAY).u32(4, 4).u32(8, 8).u32(12, 2 * queues).name(28, "hf_shed");
        Ok(ShedMap { fd: owned(bpf(BPF_MAP_CREATE, &mut a)?), queues })
    }

    fn read(&self, slot: u32) -> io::Result<u64> {
        let mut value = 0u64;
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32).u64(8, &slot as *const u32 as u64).u64(16, &mut value as *mut u64 as u64);
        bpf(BPF_MAP_LOOKUP_ELEM, &mut a)?;
        Ok(value)
    }

    /// Raises or lowers queue `queue`'s flag.
    pub fn set(&self, queue: u32, on: bool) -> io::Result<()> {
        update_elem(&self.fd, queue, &u64::from(on).to_ne_bytes())
    }

    /// SYNs dropped on queue `queue` while its flag was up, since the map was made.
    pub fn shed(&self, queue: u32) -> io::Result<u64> {
        self.read(self.queues + queue)
    }

    pub fn queues(&self) -> u32 {
        self.queues
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
        insn(0xb7, 3, 0, 0, 1),      // r3 = XDP_DROP: no socket on this queue
        insn(0x85, 0, 0, 0, 51),     // call bpf_redirect_map
        insn(0x95, 0, 0, 0, 0),      // exit
    ]
}

/// The wire's bytes of a 16-bit field as the program's 16-bit load sees them.
const fn wire16(v: u16) -> i32 {
    u16::from_ne_bytes(v.to_be_bytes()) as i32
}

/// A jump target in [`Asm`].
#[derive(Clone, Copy)]
struct Label(usize);

/// A tiny assembler with forward jumps: each jump names a label, resolved at the end.
struct Asm {
    code: Vec<[u8; 8]>,
    /// (instruction index, label) for each jump.
    jumps: Vec<(usize, Label)>,
    /// Each label's instruction index, once placed.
    at: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Asm {
        Asm { code: Vec::new(), jumps: Vec::new(), at: Vec::new() }
    }
    fn label(&mut self) -> Label {
        self.at.push(None);
        Label(self.at.len() - 1)
    }
    fn place(&mut self, l: Label) {
        self.at[l.0] = Some(self.code.len());
    }
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.code.push(insn(code, dst, src, off, imm));
    }
    /// A conditional (or, with 0x05, unconditional) jump to `to`.
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.jumps.push((self.code.len(), to));
        self.op(code, dst, src, 0, imm);
    }
    /// `dst = map` (ld_imm64 with BPF_PSEUDO_MAP_FD): two slots.
    fn map(&mut self, dst: u8, fd: RawFd) {
        self.op(0x18, dst, 1, 0, fd);
        self.op(0, 0, 0, 0, 0);
    }
    fn finish(mut self) -> Vec<[u8; 8]> {
        for &(i, l) in &self.jumps {
            let target = self.at[l.0].expect("every label placed");
            let off = i16::try_from(target as isize - i as isize - 1).expect("a short program");
            self.code[i][2..4].copy_from_slice(&off.to_ne_bytes());
        }
        self.code
    }
}

/// How many IPv6 extension headers the shedding program walks before TCP: the
/// pipeline's own limit, so that no SYN the pipeline would take gets past the
/// program by a longer chain.
pub const SHED_IPV6_EXTENSION_HEADERS: usize = holdfast_pipeline::parse::MAX_IPV6_EXTENSION_HEADERS;

/// The shedding program for the socket map `xsk_fd` and the shed map `shed_fd` of an
/// interface with `queues` queues:
///
/// ```text
/// if shed[rx_queue_index] && the frame is a SYN without ACK or RST, of TCP
///    over IPv4 (any header length; the first fragment or none) or over IPv6 (behind
///    up to SHED_IPV6_EXTENSION_HEADERS extension headers: hop-by-hop, routing,
///    destination options, mobility, HIP, shim6, AH, a first fragment's header),
///    untagged or behind one or two VLAN tags (0x8100, 0x88a8, 0x9100) — the parser's
///    own lists (`parse::VLAN_TPIDS`, `parse::ipv6_extension`):
///     shed[queues + rx_queue_index] += 1 (atomic); return XDP_DROP
/// return bpf_redirect_map(&xsks_map, rx_queue_index, XDP_DROP)
/// ```
///
/// It recognises what the pipeline's parser recognises as a TCP segment, so that a
/// flood cannot pass the hook by wrapping its SYNs in options, tags or extension
/// headers the program does not know: `shedding_agrees_with_the_pipeline` holds the two
/// together. Every packet read is bounds-checked against `data_end` first (the
/// verifier holds it to that); the extension-header walk is unrolled, so its bound is
/// a constant; anything it does not recognise goes to the socket as before.
pub fn shedding_program(xsk_fd: RawFd, shed_fd: RawFd, queues: u32) -> Vec<[u8; 8]> {
    shedding_program_with(xsk_fd, shed_fd, queues, 1)
}

/// [`shedding_program`] with `no_socket` the action for a frame on a queue without a
/// socket (XDP_DROP = 1 there; the tests, which have no socket, take XDP_PASS = 2 to
/// tell "sent on" from "shed").
fn shedding_program_with(xsk_fd: RawFd, shed_fd: RawFd, queues: u32, no_socket: i32) -> Vec<[u8; 8]> {
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R4: u8 = 4;
    const R5: u8 = 5;
    const R6: u8 = 6;
    const R7: u8 = 7;
    const R8: u8 = 8;
    const R10: u8 = 10;
    // Opcodes: 64-bit ALU, loads and stores, jumps.
    const MOV_X: u8 = 0xbf;
    const MOV_K: u8 = 0xb7;
    const ADD_K: u8 = 0x07;
    const ADD_X: u8 = 0x0f;
    const AND_K: u8 = 0x57;
    const LSH_K: u8 = 0x67;
    const LDX_W: u8 = 0x61;
    const LDX_H: u8 = 0x69;
    const LDX_B: u8 = 0x71;
    const LDX_DW: u8 = 0x79;
    const STX_W: u8 = 0x63;
    const ATOMIC_ADD_DW: u8 = 0xdb;
    const JEQ_K: u8 = 0x15;
    const JNE_K: u8 = 0x55;
    const JGT_X: u8 = 0x2d;
    const JLT_K: u8 = 0xa5;
    const JA: u8 = 0x05;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const REDIRECT_MAP: i32 = 51;
    const XDP_DROP: i32 = 1;
    // TCP flags: RST 0x04, SYN 0x02, ACK 0x10.
    const RST_SYN_ACK: i32 = 0x16;
    const SYN: i32 = 0x02;
    const TCP: i32 = 6;
    const ETH: i16 = 14;
    // What the walk steps over is what the parser steps over.
    use holdfast_pipeline::parse::{VLAN_TPIDS, ipv6_extension as v6};

    let mut a = Asm::new();
    let redirect = a.label();
    let ip = a.label();
    let ipv4 = a.label();
    let tcp = a.label();
    let drop = a.label();
    // Frames shorter than `base + len` go to the socket: r4 = base + len, compared with
    // data_end (r3), as the verifier asks before any read below it.
    let need = |a: &mut Asm, base: u8, len: i32| {
        a.op(MOV_X, R4, base, 0, 0);
        a.op(ADD_K, R4, 0, 0, len);
        a.jump(JGT_X, R4, R3, 0, redirect);
    };

    a.op(MOV_X, R6, R1, 0, 0); // r6 = ctx
    // The queue's flag.
    a.op(LDX_W, R2, R6, 16, 0); // r2 = ctx->rx_queue_index
    a.op(STX_W, R10, R2, -4, 0); // key on the stack
    a.op(MOV_X, R2, R10, 0, 0);
    a.op(ADD_K, R2, 0, 0, -4);
    a.map(R1, shed_fd);
    a.op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM);
    a.jump(JEQ_K, R0, 0, 0, redirect); // no such slot
    a.op(LDX_DW, R1, R0, 0, 0);
    a.jump(JEQ_K, R1, 0, 0, redirect); // flag down: the common case, ten instructions
    // r2 = data (moved past VLAN tags), r3 = data_end, r4 = the end of what is read,
    // r5 = the EtherType.
    a.op(LDX_W, R2, R6, 0, 0);
    a.op(LDX_W, R3, R6, 4, 0);
    need(&mut a, R2, i32::from(ETH));
    a.op(LDX_H, R5, R2, 12, 0);
    // Up to two tags, as the pipeline takes; a third leaves an EtherType that is
    // neither IPv4 nor IPv6.
    for _ in 0..holdfast_pipeline::parse::MAX_VLAN_TAGS {
        let tagged = a.label();
        let (last, others) = VLAN_TPIDS.split_last().expect("tag types");
        for &tpid in others {
            a.jump(JEQ_K, R5, 0, wire16(tpid), tagged);
        }
        a.jump(JNE_K, R5, 0, wire16(*last), ip);
        a.place(tagged);
        a.op(ADD_K, R2, 0, 0, 4);
        need(&mut a, R2, i32::from(ETH));
        a.op(LDX_H, R5, R2, 12, 0); // the tag's EtherType
    }
    a.place(ip);
    a.jump(JEQ_K, R5, 0, wire16(0x0800), ipv4);
    a.jump(JNE_K, R5, 0, wire16(0x86dd), redirect);
    // IPv6: r7 = r2 + the bytes of IPv6 headers so far (the next header at r7 + ETH),
    // r5 = the next-header value.
    need(&mut a, R2, i32::from(ETH) + 40);
    a.op(LDX_B, R5, R2, ETH + 6, 0);
    a.op(MOV_X, R7, R2, 0, 0);
    a.op(ADD_K, R7, 0, 0, 40);
    // r8 = an extension header's length from its length byte: (byte + add) << shift.
    let length = |a: &mut Asm, add: i32, shift: i32| {
        need(a, R7, i32::from(ETH) + 2);
        a.op(LDX_B, R8, R7, ETH + 1, 0);
        a.op(ADD_K, R8, 0, 0, add);
        a.op(LSH_K, R8, 0, 0, shift);
    };
    for _ in 0..=SHED_IPV6_EXTENSION_HEADERS {
        let generic = a.label();
        let ah = a.label();
        let fragment = a.label();
        let step = a.label();
        a.jump(JEQ_K, R5, 0, TCP, tcp);
        a.jump(JEQ_K, R5, 0, i32::from(v6::FRAGMENT), fragment);
        a.jump(JEQ_K, R5, 0, i32::from(v6::AH), ah);
        for v in v6::GENERIC {
            a.jump(JEQ_K, R5, 0, i32::from(v), generic);
        }
        a.jump(JA, 0, 0, 0, redirect); // ESP, no next header, UDP, ICMPv6, ...
        // A fragment header: 8 bytes; the walk goes on only in the first fragment.
        a.place(fragment);
        need(&mut a, R7, i32::from(ETH) + 8);
        a.op(LDX_B, R8, R7, ETH + 2, 0); // offset, high byte
        a.jump(JNE_K, R8, 0, 0, redirect);
        a.op(LDX_B, R8, R7, ETH + 3, 0); // offset's low bits, reserved, M
        a.op(AND_K, R8, 0, 0, 0xf8);
        a.jump(JNE_K, R8, 0, 0, redirect);
        a.op(MOV_K, R8, 0, 0, 8);
        a.jump(JA, 0, 0, 0, step);
        // AH (RFC 4302): its length in 4-byte units, minus 2.
        a.place(ah);
        length(&mut a, 2, 2);
        a.jump(JA, 0, 0, 0, step);
        // (next, len): its length in 8-byte units, minus 1.
        a.place(generic);
        length(&mut a, 1, 3);
        a.place(step);
        a.op(LDX_B, R5, R7, ETH, 0); // its next header
        a.op(ADD_X, R7, R8, 0, 0);
    }
    a.jump(JA, 0, 0, 0, redirect); // a longer chain: the pipeline calls it malformed
    // IPv4, any header length; the first fragment or none. r7 = r2 + header length.
    a.place(ipv4);
    need(&mut a, R2, i32::from(ETH) + 20);
    a.op(LDX_B, R5, R2, ETH, 0); // version and header length
    a.op(MOV_X, R7, R5, 0, 0);
    a.op(AND_K, R7, 0, 0, 0xf0);
    a.jump(JNE_K, R7, 0, 0x40, redirect);
    a.op(AND_K, R5, 0, 0, 0x0f);
    a.op(LSH_K, R5, 0, 0, 2);
    a.jump(JLT_K, R5, 0, 20, redirect);
    a.op(LDX_B, R7, R2, ETH + 9, 0); // protocol
    a.jump(JNE_K, R7, 0, TCP, redirect);
    a.op(LDX_H, R7, R2, ETH + 6, 0); // flags and fragment offset
    a.op(AND_K, R7, 0, 0, wire16(0x1fff));
    a.jump(JNE_K, R7, 0, 0, redirect); // a later fragment: no TCP header here
    a.op(MOV_X, R7, R2, 0, 0);
    a.op(ADD_X, R7, R5, 0, 0);
    // TCP at r7 + ETH.
    a.place(tcp);
    need(&mut a, R7, i32::from(ETH) + 14);
    a.op(LDX_B, R5, R7, ETH + 13, 0); // TCP flags
    a.op(AND_K, R5, 0, 0, RST_SYN_ACK);
    a.jump(JNE_K, R5, 0, SYN, redirect);
    // Shed: count it in the queue's count slot, drop it.
    a.op(LDX_W, R2, R6, 16, 0);
    a.op(ADD_K, R2, 0, 0, i32::try_from(queues).expect("a shed map's queue count (at most SHED_QUEUES_MAX)"));
    a.op(STX_W, R10, R2, -8, 0);
    a.op(MOV_X, R2, R10, 0, 0);
    a.op(ADD_K, R2, 0, 0, -8);
    a.map(R1, shed_fd);
    a.op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM);
    a.jump(JEQ_K, R0, 0, 0, drop);
    a.op(MOV_K, R1, 0, 0, 1);
    a.op(ATOMIC_ADD_DW, R0, R1, 0, 0); // lock *(u64 *)(r0 + 0) += r1
    a.place(drop);
    a.op(MOV_K, R0, 0, 0, XDP_DROP);
    a.op(EXIT, 0, 0, 0, 0);
    // The plain program.
    a.place(redirect);
    a.op(LDX_W, R2, R6, 16, 0);
    a.map(R1, xsk_fd);
    a.op(MOV_K, R3, 0, 0, no_socket);
    a.op(CALL, 0, 0, 0, REDIRECT_MAP);
    a.op(EXIT, 0, 0, 0, 0);
    a.finish()
}

/// A loaded XDP program.
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads the redirect program for `map`. A verifier refusal carries the log.
    pub fn load_redirect(map: &XskMap) -> io::Result<Program> {
        Program::load(&redirect_program(map.raw_fd()), "hf_redirect")
    }

    /// Loads the shedding program for `map` and `shed` (see [`shedding_program`]).
    pub fn load_shedding(map: &XskMap, shed: &ShedMap) -> io::Result<Program> {
        Program::load(&shedding_program(map.raw_fd(), shed.raw_fd(), shed.queues()), "hf_shed")
    }

    fn load(insns: &[[u8; 8]], name: &str) -> io::Result<Program> {
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
            .name(48, name)
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

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN, queue 0): its return code.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<u32> {
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32).u32(8, frame.len() as u32).u64(16, frame.as_ptr() as u64).u32(32, 1);
        bpf(BPF_PROG_TEST_RUN, &mut a)?;
        Ok(u32::from_ne_bytes(a.0[4..8].try_into().expect("four bytes")))
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
        assert_eq!(p[3], [0xb7, 0x03, 0, 0, 1, 0, 0, 0], "no socket on the queue: XDP_DROP");
        assert_eq!(p[4], [0x85, 0, 0, 0, 51, 0, 0, 0]);
        assert_eq!(p[5], [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}

#[cfg(test)]
mod shedding {
    use super::*;
    use holdfast_pipeline::parse::{Frame, L4, parse_general};
    use proptest::prelude::*;

    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;

    /// An IPv6 extension header in a generated frame.
    #[derive(Debug, Clone, Copy)]
    enum Ext {
        /// The (next, len) layout: its next-header value and length field.
        Generic(u8, u8),
        /// AH with its length field.
        Ah(u8),
        /// A fragment header with its offset-and-flags word.
        Fragment(u16),
    }

    /// The network layer of a generated frame.
    #[derive(Debug, Clone)]
    enum L3 {
        /// IPv4 with `ihl` header words (options: NOPs), fragment word `frag`, protocol.
        V4 { ihl: u8, frag: u16, proto: u8 },
        /// IPv6 behind `chain`, whose last header names `proto`.
        V6 { chain: Vec<Ext>, proto: u8 },
    }

    impl Ext {
        /// The next-header value that names this header.
        fn kind(&self) -> u8 {
            match *self {
                Ext::Generic(t, _) => t,
                Ext::Ah(_) => 51,
                Ext::Fragment(_) => 44,
            }
        }
    }

    /// Ethernet behind `tags` (each tag's TPID), then `l3`, then a 20-byte TCP header
    /// with `flags`. Lengths and the IPv4 header checksum are right, so the pipeline's
    /// parser takes it whenever its shape is valid.
    fn frame(tags: &[u16], l3: &L3, flags: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for &tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x07]);
        }
        let tcp = [0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0];
        match l3 {
            &L3::V4 { ihl, frag, proto } => {
                f.extend_from_slice(&[0x08, 0x00]);
                let hl = usize::from(ihl) * 4;
                let total = (hl.max(20) + tcp.len()) as u16;
                let mut ip = vec![0x40 | ihl, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0, 198, 18, 0, 1, 10, 0, 2, 1];
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[6..8].copy_from_slice(&frag.to_be_bytes());
                ip.resize(hl.max(20), 1); // options: NOPs
                let sum = holdfast_pipeline::wire::checksum_finish(holdfast_pipeline::wire::checksum_add(0, &ip));
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            L3::V6 { chain, proto } => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let mut ext = Vec::new();
                let first = chain.first().map_or(*proto, Ext::kind);
                for (i, e) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).map_or(*proto, Ext::kind);
                    let (len, field) = match *e {
                        Ext::Generic(_, l) => ((usize::from(l) + 1) * 8, l),
                        Ext::Ah(l) => ((usize::from(l) + 2) * 4, l),
                        Ext::Fragment(_) => (8, 0),
                    };
                    let at = ext.len();
                    ext.resize(at + len, 0);
                    ext[at] = next;
                    ext[at + 1] = field;
                    if let Ext::Fragment(w) = *e {
                        ext[at + 2..at + 4].copy_from_slice(&w.to_be_bytes());
                        ext[at + 4..at + 8].copy_from_slice(&[0, 0, 0x12, 0x34]);
                    } else if len > 2 {
                        ext[at + 2] = 1; // a PadN option over the rest
                        ext[at + 3] = (len - 4).min(255) as u8;
                    }
                }
                let payload = (ext.len() + tcp.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload.to_be_bytes());
                f.extend_from_slice(&[first, 64]);
                f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                f.extend_from_slice(&ext);
            }
        }
        f.extend_from_slice(&tcp);
        f
    }

    fn v4(flags: u8) -> Vec<u8> {
        frame(&[], &L3::V4 { ihl: 5, frag: 0, proto: 6 }, flags)
    }

    fn v6(chain: &[Ext], flags: u8) -> Vec<u8> {
        frame(&[], &L3::V6 { chain: chain.to_vec(), proto: 6 }, flags)
    }

    /// The pipeline's own reading: a TCP segment whose control flags make it a
    /// connection attempt (SYN without ACK or RST), `Err` for a frame it refuses.
    fn pipeline_says_syn(f: &[u8]) -> Result<bool, ()> {
        match parse_general(f) {
            Ok(Frame::Ip(m)) => Ok(matches!(m.l4, L4::Tcp(t) if t.flags & 0x16 == 0x02)),
            Ok(_) => Ok(false),
            Err(_) => Err(()),
        }
    }

    /// The loaded program with its flag up on queue 0, or `None` (skip reported)
    /// where bpf(2) maps are not allowed.
    fn loaded() -> Option<(XskMap, ShedMap, Program)> {
        let (xsk, shed) = match (XskMap::new(1), ShedMap::new(1)) {
            (Ok(x), Ok(s)) => (x, s),
            (Err(e), _) | (_, Err(e)) => {
                crate::host::report_skip(format_args!("needs bpf(2) maps (root or CAP_BPF): {e}"));
                return None;
            }
        };
        // XDP_PASS where there is no socket (as there is none here), to tell a frame
        // sent on from one shed; the appliance's program drops it instead.
        let prog = Program::load(&shedding_program_with(xsk.raw_fd(), shed.raw_fd(), shed.queues(), XDP_PASS as i32), "hf_shed_test")
            .expect("the verifier takes the shedding program");
        Some((xsk, shed, prog))
    }

    /// A frame on a queue where no socket is bound is dropped by both programs the
    /// appliance loads, never passed to the kernel's stack unjudged.
    #[test]
    fn with_no_socket_on_the_queue_both_programs_drop() {
        let Some((xsk, shed, _)) = loaded() else { return };
        let ack = v4(0x10);
        for prog in [Program::load_shedding(&xsk, &shed).unwrap(), Program::load_redirect(&xsk).unwrap()] {
            assert_eq!(prog.test_run(&ack).unwrap(), XDP_DROP);
        }
        assert_eq!(shed.shed(0).unwrap(), 0, "dropped for want of a socket, not shed");
    }

    #[test]
    fn a_shed_map_for_more_queues_than_the_program_can_name_is_refused() {
        let e = ShedMap::new(SHED_QUEUES_MAX + 1).err().expect("refused before any bpf(2) call");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("65537 queues"), "{e}");
    }

    #[test]
    fn the_kernel_takes_the_program_and_it_sheds_only_syns_while_the_flag_is_up() {
        let Some((_xsk, shed, prog)) = loaded() else { return };
        let run = |f: &[u8]| prog.test_run(f).expect("BPF_PROG_TEST_RUN");
        let syn = v4(0x02);
        // Flag down: everything goes to the (absent) socket, i.e. XDP_PASS here.
        assert_eq!(run(&syn), XDP_PASS);
        assert_eq!(shed.shed(0).unwrap(), 0);

        shed.set(0, true).unwrap();
        let v4_with = |tags: &[u16], ihl: u8, frag: u16| frame(tags, &L3::V4 { ihl, frag, proto: 6 }, 0x02);
        let eight: Vec<Ext> = (0..8).map(|_| Ext::Generic(60, 0)).collect();
        let shed_these: Vec<(&str, Vec<u8>)> = vec![
            ("IPv4 SYN", syn.clone()),
            ("IPv4 SYN with ECE and CWR", v4(0xc2)),
            ("IPv4 SYN behind an 802.1Q tag", v4_with(&[0x8100], 5, 0)),
            ("IPv4 SYN behind QinQ (802.1ad + 802.1Q)", v4_with(&[0x88a8, 0x8100], 5, 0)),
            ("IPv4 SYN behind two tags, the old QinQ TPID outside", v4_with(&[0x9100, 0x8100], 5, 0)),
            ("IPv4 SYN with one word of options", v4_with(&[], 6, 0)),
            ("IPv4 SYN with 40 bytes of options, behind a tag", v4_with(&[0x8100], 15, 0)),
            ("IPv4 SYN in a first fragment (MF set)", v4_with(&[], 5, 0x2000)),
            ("IPv6 SYN", v6(&[], 0x02)),
            ("IPv6 SYN behind hop-by-hop options", v6(&[Ext::Generic(0, 0)], 0x02)),
            ("IPv6 SYN behind routing and destination options", v6(&[Ext::Generic(43, 2), Ext::Generic(60, 1)], 0x02)),
            ("IPv6 SYN in a first fragment", v6(&[Ext::Fragment(0x0001)], 0x02)),
            ("IPv6 SYN behind AH", v6(&[Ext::Ah(4)], 0x02)),
            ("IPv6 SYN behind eight extension headers", v6(&eight, 0x02)),
            ("IPv6 SYN behind a long destination-options header", v6(&[Ext::Generic(60, 255)], 0x02)),
        ];
        for (what, f) in &shed_these {
            assert_eq!(pipeline_says_syn(f), Ok(true), "the pipeline reads a SYN: {what}");
            assert_eq!(run(f), XDP_DROP, "{what}");
        }
        let nine: Vec<Ext> = (0..9).map(|_| Ext::Generic(60, 0)).collect();
        let pass_these: Vec<(&str, Vec<u8>)> = vec![
            ("SYN-ACK", v4(0x12)),
            ("ACK", v4(0x10)),
            ("SYN+RST", v4(0x06)),
            ("FIN", v4(0x01)),
            ("a later fragment whose bytes look like a SYN", v4_with(&[], 5, 0x0001)),
            ("a later fragment with options", v4_with(&[], 7, 0x0001)),
            ("IPv6 SYN-ACK", v6(&[], 0x12)),
            ("IPv6 SYN-ACK behind hop-by-hop options", v6(&[Ext::Generic(0, 0)], 0x12)),
            ("IPv6, a later fragment", v6(&[Ext::Fragment(0x0008)], 0x02)),
            ("IPv6 behind ESP", {
                let mut f = v6(&[], 0x02);
                f[14 + 6] = 50;
                f
            }),
            ("UDP", frame(&[], &L3::V4 { ihl: 5, frag: 0, proto: 17 }, 0x02)),
            ("a SYN cut one byte short of its flags", syn[..14 + 20 + 13].to_vec()),
            ("an IPv4 SYN with options, cut short of its flags", v4_with(&[], 8, 0)[..14 + 32 + 13].to_vec()),
            ("ARP", {
                let mut f = syn.clone();
                f[12..14].copy_from_slice(&[0x08, 0x06]);
                f
            }),
        ];
        for (what, f) in &pass_these {
            assert!(!pipeline_says_syn(f).unwrap_or(false), "the pipeline reads no SYN: {what}");
            assert_eq!(run(f), XDP_PASS, "{what}");
        }
        // What the pipeline refuses may go either way (it drops it too); these pass.
        let refused_these: Vec<(&str, Vec<u8>)> = vec![
            ("IPv6 SYN behind nine extension headers", v6(&nine, 0x02)),
            ("IPv4 SYN behind three tags", v4_with(&[0x8100, 0x8100, 0x8100], 5, 0)),
            ("an IPv4 header length of four words", {
                let mut f = syn.clone();
                f[14] = 0x44;
                f
            }),
            ("IPv5", {
                let mut f = syn.clone();
                f[14] = 0x55;
                f
            }),
        ];
        for (what, f) in &refused_these {
            assert_eq!(pipeline_says_syn(f), Err(()), "the pipeline refuses {what}");
            assert_eq!(run(f), XDP_PASS, "{what}");
        }
        assert_eq!(shed.shed(0).unwrap(), shed_these.len() as u64, "each shed SYN counted once");

        shed.set(0, false).unwrap();
        assert_eq!(run(&syn), XDP_PASS);
        assert_eq!(run(&shed_these[6].1), XDP_PASS);
        assert_eq!(shed.shed(0).unwrap(), shed_these.len() as u64);
        // Lowering the flag did not reset the count: the worker writes flags only.
    }

    fn ext() -> impl Strategy<Value = Ext> {
        prop_oneof![
            4 => (prop::sample::select(vec![0u8, 43, 60, 135, 139, 140]), 0u8..4).prop_map(|(t, l)| Ext::Generic(t, l)),
            1 => (0u8..6).prop_map(Ext::Ah),
            1 => prop_oneof![Just(0u16), Just(1), 0u16..0x2000].prop_map(Ext::Fragment),
        ]
    }

    fn l3() -> impl Strategy<Value = L3> {
        prop_oneof![
            (3u8..16, prop_oneof![Just(0u16), Just(0x2000), Just(0x4000), 0u16..0xffff], prop_oneof![4 => Just(6u8), 1 => any::<u8>()])
                .prop_map(|(ihl, frag, proto)| L3::V4 { ihl, frag, proto }),
            (prop::collection::vec(ext(), 0..11), prop_oneof![4 => Just(6u8), 1 => any::<u8>()]).prop_map(|(chain, proto)| L3::V6 { chain, proto }),
        ]
    }

    /// With the flag up the program drops a frame exactly when the pipeline's parser
    /// reads a SYN without ACK or RST in it — so no connection attempt the pipeline
    /// would take gets past the hook by its shape (options, tags, extension headers),
    /// and nothing else is lost there. A frame the pipeline refuses (truncated, a bad
    /// header checksum, hop-by-hop not first) it drops as well, so there the program
    /// may go either way. One program for all cases: the verifier runs once.
    #[test]
    fn shedding_agrees_with_the_pipeline() {
        let Some((_xsk, shed, prog)) = loaded() else { return };
        shed.set(0, true).unwrap();
        let shapes = (
            prop::collection::vec(prop::sample::select(vec![0x8100u16, 0x88a8, 0x9100]), 0..4),
            l3(),
            prop_oneof![Just(0x02u8), Just(0x12), Just(0xc2), any::<u8>()],
            prop::option::weighted(0.2, 0usize..200),
            prop::option::weighted(0.2, (0usize..200, any::<u8>())),
        );
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 4000, ..ProptestConfig::default() });
        let (drops, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        let outcome = runner.run(&shapes, |(tags, l3, flags, cut, flip)| {
            let mut f = frame(&tags, &l3, flags);
            if let Some((at, b)) = flip
                && at < f.len()
            {
                f[at] = b;
            }
            if let Some(n) = cut {
                f.truncate(n.max(14));
            }
            let xdp = prog.test_run(&f).expect("BPF_PROG_TEST_RUN");
            drops.set(drops.get() + u32::from(xdp == XDP_DROP));
            match pipeline_says_syn(&f) {
                Ok(true) => prop_assert_eq!(xdp, XDP_DROP, "the pipeline reads a SYN the hook let through: {:02x?}", f),
                Ok(false) => prop_assert_eq!(xdp, XDP_PASS, "the hook dropped what the pipeline reads as no SYN: {:02x?}", f),
                Err(()) => refused.set(refused.get() + 1),
            }
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
        // The generator must reach both answers and valid frames, or the test says little.
        let (drops, refused) = (drops.get(), refused.get());
        assert!(drops > 500 && refused < 3000, "{drops} dropped, {refused} refused by the pipeline");
    }
}
