//! Zero-copy, bounds-checked views of the headers Holdfast reads.
//!
//! One file per protocol, after smoltcp's `wire` module: a view `Packet<T: AsRef<[u8]>>`
//! wraps a byte buffer, `new_checked` validates every length once, and after it returns
//! `Ok` no accessor can panic, whatever the bytes. Nothing here allocates.

pub(crate) mod arp;
pub mod build;
pub(crate) mod ethernet;
pub(crate) mod icmp;
pub(crate) mod ipv4;
pub(crate) mod ipv6;
pub mod tcp;
pub(crate) mod udp;
pub(crate) mod vlan;

pub use ipv4::header_checksum_ok as ipv4_header_checksum_ok;

/// Why a header could not be viewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the header (or than a length field inside it claims).
    Truncated,
    /// A field holds a value the protocol forbids (version, header length, option length).
    Malformed,
}

pub type Result<T> = core::result::Result<T, WireError>;

/// Reads a big-endian u16 at `at`. Callers have checked the bounds in `new_checked`.
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at`. Callers have checked the bounds in `new_checked`.
#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The Internet checksum (RFC 1071) of `data`, folded, added to `initial`.
pub fn checksum_add(initial: u32, data: &[u8]) -> u32 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a 32-bit one's-complement sum and inverts it.
pub fn checksum_finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
