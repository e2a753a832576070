//! IPv6 headers (RFC 8200) and the walk over extension headers to the upper layer.

use super::{Result, WireError, be16, be32};

mod field {
    use core::ops::Range;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub(crate) const VERSION: usize = 0;
    pub(crate) const PAYLOAD_LEN: usize = 4;
    pub(crate) const NEXT_HEADER: usize = 6;
    #[cfg(test)]
    pub(crate) const HOP_LIMIT: usize = 7;
    pub(crate) const SRC: Range<usize> = 8..24;
    pub(crate) const DST: Range<usize> = 24..40;
    pub(crate) const PAYLOAD: usize = 40;

    /// Offsets inside the generic extension header (`next`, `len`, …).
    pub(crate) const EXT_NEXT: usize = 0;
    pub(crate) const EXT_LEN: usize = 1;
    /// Offsets inside the fragment header.
    pub(crate) const FRAG_OFFSET_M: usize = 2;
    pub(crate) const FRAG_IDENT: usize = 4;
    pub(crate) const FRAG_LEN: usize = 8;
}

pub(crate) const HEADER_LEN: usize = field::PAYLOAD;

/// Extension-header walks stop after this many headers: a chain longer than this is
/// treated as malformed (RFC 8200 sets no limit; RFC 7112 asks that the whole chain sit
/// in the first fragment, and real traffic uses one or two).
pub(crate) const MAX_EXTENSION_HEADERS: usize = 8;

/// Next-header values with the generic `(next, len)` extension layout or special meaning.
pub(crate) mod next_header {
    pub(crate) const HOP_BY_HOP: u8 = 0;
    #[cfg(test)]
    pub(crate) const TCP: u8 = 6;
    #[cfg(test)]
    pub(crate) const UDP: u8 = 17;
    pub(crate) const ROUTING: u8 = 43;
    pub(crate) const FRAGMENT: u8 = 44;
    pub(crate) const AH: u8 = 51;
    pub(crate) const DEST_OPTS: u8 = 60;
    pub(crate) const MOBILITY: u8 = 135;
    pub(crate) const HIP: u8 = 139;
    pub(crate) const SHIM6: u8 = 140;
}

/// The IPv6 fragment header's fields (RFC 8200 section 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fragment {
    pub ident: u32,
    /// Offset in bytes.
    pub offset: u16,
    pub more: bool,
}

/// Where the upper-layer header starts, after the extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpperLayer {
    /// The protocol of what follows the last extension header.
    pub protocol: u8,
    /// Offset from the start of the IPv6 header.
    pub offset: usize,
    /// Present when a fragment header was seen.
    pub fragment: Option<Fragment>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks version 6 and that the payload length fits the buffer (trailing padding is
    /// allowed and ignored).
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        let quoted = Self::new_quoted(buffer)?;
        if quoted.b().len() < HEADER_LEN + quoted.payload_len() {
            return Err(WireError::Truncated);
        }
        Ok(quoted)
    }

    /// A view of the packet quoted in an ICMPv6 error: version 6 and a whole fixed
    /// header, the payload length not checked (a quote is cut to fit the minimum MTU,
    /// RFC 4443 section 2.4(c)). `packet` must not be used on it.
    pub(crate) fn new_quoted(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VERSION] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub(crate) fn payload_len(&self) -> usize {
        usize::from(be16(self.b(), field::PAYLOAD_LEN))
    }

    pub(crate) fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }

    #[cfg(test)]
    pub(crate) fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    pub(crate) fn src(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::SRC]);
        a
    }

    pub(crate) fn dst(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::DST]);
        a
    }

    /// Header plus payload, without link-layer padding.
    pub(crate) fn packet(&self) -> &[u8] {
        &self.b()[..HEADER_LEN + self.payload_len()]
    }

    /// Walks the extension headers of this packet; see [`walk`].
    pub(crate) fn upper_layer(&self) -> Result<UpperLayer> {
        walk(self.next_header(), self.packet())
    }
}

/// Walks the extension headers of `p` (an IPv6 header and whatever follows it, possibly
/// cut short, as inside an ICMPv6 error), starting with next-header value `next`. Stops
/// at the first header that is not an extension header, at ESP (its payload is opaque),
/// at No Next Header, or at a fragment header with a non-zero offset (the upper-layer
/// header is only in the first fragment).
pub(crate) fn walk(mut next: u8, p: &[u8]) -> Result<UpperLayer> {
    let mut at = HEADER_LEN;
    let mut fragment = None;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DEST_OPTS | next_header::MOBILITY | next_header::HIP | next_header::SHIM6 => {
                // Hop-by-hop is only allowed first (RFC 8200 section 4.3).
                if next == next_header::HOP_BY_HOP && at != HEADER_LEN {
                    return Err(WireError::Malformed);
                }
                if p.len() < at + 2 {
                    return Err(WireError::Truncated);
                }
                let len = (usize::from(p[at + field::EXT_LEN]) + 1) * 8;
                if p.len() < at + len {
                    return Err(WireError::Truncated);
                }
                next = p[at + field::EXT_NEXT];
                at += len;
            }
            next_header::AH => {
                // RFC 4302: payload length in 4-octet units, minus 2.
                if p.len() < at + 2 {
                    return Err(WireError::Truncated);
                }
                let len = (usize::from(p[at + field::EXT_LEN]) + 2) * 4;
                if p.len() < at + len {
                    return Err(WireError::Truncated);
                }
                next = p[at + field::EXT_NEXT];
                at += len;
            }
            next_header::FRAGMENT => {
                if fragment.is_some() {
                    // Two fragment headers: RFC 8200 forbids it; a classic evasion.
                    return Err(WireError::Malformed);
                }
                if p.len() < at + field::FRAG_LEN {
                    return Err(WireError::Truncated);
                }
                let off_m = be16(p, at + field::FRAG_OFFSET_M);
                let frag = Fragment { ident: be32(p, at + field::FRAG_IDENT), offset: off_m & 0xfff8, more: off_m & 1 != 0 };
                fragment = Some(frag);
                next = p[at + field::EXT_NEXT];
                at += field::FRAG_LEN;
                if frag.offset != 0 {
                    return Ok(UpperLayer { protocol: next, offset: at, fragment });
                }
            }
            _ => return Ok(UpperLayer { protocol: next, offset: at, fragment }),
        }
    }
    Err(WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(next: u8, payload_len: u16) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&payload_len.to_be_bytes());
        v.push(next);
        v.push(64);
        let mut src = [0u8; 16];
        src[0] = 0x20;
        src[1] = 0x01;
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v
    }

    #[test]
    fn reads_fixed_header() {
        let mut v = header(next_header::UDP, 8);
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[0xee; 4]); // padding
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src()[15], 1);
        assert_eq!(p.dst()[15], 2);
        assert_eq!(p.packet().len(), 48);
        assert_eq!(p.upper_layer().unwrap(), UpperLayer { protocol: next_header::UDP, offset: 40, fragment: None });
    }

    #[test]
    fn walks_hop_by_hop_dest_opts_and_fragment() {
        let mut v = header(next_header::HOP_BY_HOP, 8 + 16 + 8 + 8);
        v.extend_from_slice(&[next_header::DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        v.extend_from_slice(&[next_header::FRAGMENT, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Fragment: next TCP, offset 0, M=1, ident 0xdeadbeef.
        v.extend_from_slice(&[next_header::TCP, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        v.extend_from_slice(&[0; 8]);
        let p = Packet::new_checked(&v[..]).unwrap();
        let up = p.upper_layer().unwrap();
        assert_eq!(up.protocol, next_header::TCP);
        assert_eq!(up.offset, 40 + 8 + 16 + 8);
        assert_eq!(up.fragment, Some(Fragment { ident: 0xdeadbeef, offset: 0, more: true }));
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        let mut v = header(next_header::FRAGMENT, 16);
        // Offset 1448 (181 * 8), M=0.
        let off = (181u16 << 3).to_be_bytes();
        v.extend_from_slice(&[next_header::TCP, 0, off[0], off[1], 0, 0, 0, 7]);
        v.extend_from_slice(&[0; 8]);
        let up = Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap();
        assert_eq!(up.fragment, Some(Fragment { ident: 7, offset: 1448, more: false }));
        assert_eq!(up.offset, 48);
    }

    #[test]
    fn rejects_bad_chains() {
        // Extension header running past the payload.
        let mut v = header(next_header::DEST_OPTS, 8);
        v.extend_from_slice(&[next_header::TCP, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap_err(), WireError::Truncated);
        // Hop-by-hop not first.
        let mut v = header(next_header::DEST_OPTS, 16);
        v.extend_from_slice(&[next_header::HOP_BY_HOP, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[next_header::TCP, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap_err(), WireError::Malformed);
        // Too many extension headers.
        let n = MAX_EXTENSION_HEADERS + 1;
        let mut v = header(next_header::DEST_OPTS, (n * 8) as u16);
        for _ in 0..n {
            v.extend_from_slice(&[next_header::DEST_OPTS, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap_err(), WireError::Malformed);
        // Payload length beyond the buffer; wrong version.
        let v = header(next_header::TCP, 20);
        assert_eq!(Packet::new_checked(&v[..]).unwrap_err(), WireError::Truncated);
        let mut v = header(next_header::TCP, 0);
        v[0] = 0x40;
        assert_eq!(Packet::new_checked(&v[..]).unwrap_err(), WireError::Malformed);
    }
}
