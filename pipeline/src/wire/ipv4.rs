//! IPv4 headers (RFC 791), options and fragmentation fields included.

use super::{Result, WireError, be16, checksum_add, checksum_finish};

/// True when a 20-byte IPv4 header (no options) carries a correct header checksum
/// (RFC 1071: the one's-complement sum of its ten 16-bit words is 0xffff). Summed as
/// five 32-bit words in the machine's byte order and folded (RFC 1071 2(B), 2(C): the
/// sum does not depend on byte order, and wider words fold to the same sum); 0xffff
/// reads the same in either order. The fixed-offset parsers' check, a few instructions
/// shorter than [`Ipv4::verify_checksum`]'s 16-bit loop.
#[inline(always)]
pub fn header_checksum_ok(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let mut sum = w(0) + w(4) + w(8) + w(12) + w(16);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

mod field {
    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const TOTAL_LEN: usize = 2;
    pub(crate) const IDENT: usize = 4;
    pub(crate) const FLAGS_FRAG: usize = 6;
    #[cfg(test)]
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    pub(crate) const SRC: usize = 12;
    pub(crate) const DST: usize = 16;
}

/// The header without options.
pub(crate) const MIN_HEADER_LEN: usize = 20;

/// A view of an IPv4 packet. `new_checked` guarantees: version 4, IHL >= 5, the whole
/// header with options present, and total length covering the header and fitting the
/// buffer (trailing Ethernet padding is allowed and ignored by `payload`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        let quoted = Self::new_quoted(buffer)?;
        let b = quoted.b();
        let hlen = quoted.header_len();
        let total = usize::from(be16(b, field::TOTAL_LEN));
        if total < hlen {
            return Err(WireError::Malformed);
        }
        if b.len() < total {
            return Err(WireError::Truncated);
        }
        Ok(quoted)
    }

    /// A view of the packet quoted in an ICMP error: version 4 and the whole header
    /// with options present, but the total length is not checked — a quote holds only
    /// the header and the first bytes of the payload (RFC 792). `payload` and
    /// `total_len` must not be used on it.
    pub(crate) fn new_quoted(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let hlen = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if hlen < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < hlen {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub(crate) fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }

    pub(crate) fn total_len(&self) -> usize {
        usize::from(be16(self.b(), field::TOTAL_LEN))
    }

    pub(crate) fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT)
    }

    #[cfg(test)]
    pub(crate) fn dont_frag(&self) -> bool {
        self.b()[field::FLAGS_FRAG] & 0x40 != 0
    }

    pub(crate) fn more_frags(&self) -> bool {
        self.b()[field::FLAGS_FRAG] & 0x20 != 0
    }

    /// Fragment offset in bytes.
    pub(crate) fn frag_offset(&self) -> u16 {
        (be16(self.b(), field::FLAGS_FRAG) & 0x1fff) << 3
    }

    /// True for every fragment of a fragmented datagram, the first one included.
    pub(crate) fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    #[cfg(test)]
    pub(crate) fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    pub(crate) fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    pub(crate) fn src(&self) -> [u8; 4] {
        let b = self.b();
        [b[field::SRC], b[field::SRC + 1], b[field::SRC + 2], b[field::SRC + 3]]
    }

    pub(crate) fn dst(&self) -> [u8; 4] {
        let b = self.b();
        [b[field::DST], b[field::DST + 1], b[field::DST + 2], b[field::DST + 3]]
    }

    #[cfg(test)]
    /// Options bytes (empty when IHL is 5).
    pub(crate) fn options(&self) -> &[u8] {
        &self.b()[MIN_HEADER_LEN..self.header_len()]
    }

    #[cfg(test)]
    /// The payload as the total length field delimits it.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }

    /// True when the header checksum verifies (RFC 1071).
    pub(crate) fn verify_checksum(&self) -> bool {
        checksum_finish(checksum_add(0, &self.b()[..self.header_len()])) == 0
    }

    #[cfg(test)]
    /// The one's-complement sum of the IPv4 pseudo-header (RFC 793 section 3.1) for an
    /// upper-layer segment of `len` bytes.
    pub(crate) fn pseudo_header_sum(&self, len: usize) -> u32 {
        let b = self.b();
        let mut sum = checksum_add(0, &b[field::SRC..field::DST + 4]);
        sum += u32::from(self.protocol());
        sum += len as u32;
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.0.1.1 -> 10.0.2.1, TCP, ID 0x1234, DF, TTL 64, with one NOP-padded option
    /// word (IHL 6), 4 bytes of payload, then 2 bytes of Ethernet padding.
    const PACKET: [u8; 30] = [
        0x46, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 1, 1, 10, 0, 2, 1, 0x01, 0x01, 0x01, 0x00, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xee,
    ];

    fn with_checksum(mut p: [u8; 30]) -> [u8; 30] {
        let hl = usize::from(p[0] & 0xf) * 4;
        p[10] = 0;
        p[11] = 0;
        let c = checksum_finish(checksum_add(0, &p[..hl]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn reads_fields_and_options() {
        let bytes = with_checksum(PACKET);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 6);
        assert_eq!(p.src(), [10, 0, 1, 1]);
        assert_eq!(p.dst(), [10, 0, 2, 1]);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn fragment_fields() {
        let mut bytes = PACKET;
        // MF set, offset 185 * 8 = 1480.
        bytes[6] = 0x20;
        bytes[7] = 185;
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
    }

    #[test]
    fn rejects_bad_headers() {
        let mut v6 = PACKET;
        v6[0] = 0x66;
        assert_eq!(Packet::new_checked(&v6[..]).unwrap_err(), WireError::Malformed);
        let mut short_ihl = PACKET;
        short_ihl[0] = 0x44;
        assert_eq!(Packet::new_checked(&short_ihl[..]).unwrap_err(), WireError::Malformed);
        let mut long_total = PACKET;
        long_total[3] = 0x40;
        assert_eq!(Packet::new_checked(&long_total[..]).unwrap_err(), WireError::Truncated);
        let mut total_below_header = PACKET;
        total_below_header[3] = 20;
        assert_eq!(Packet::new_checked(&total_below_header[..]).unwrap_err(), WireError::Malformed);
        assert_eq!(Packet::new_checked(&PACKET[..19]).unwrap_err(), WireError::Truncated);
        // IHL 15 claims 60 header bytes that are not there.
        let mut huge_ihl = PACKET;
        huge_ihl[0] = 0x4f;
        assert!(Packet::new_checked(&huge_ihl[..]).is_err());
    }

    #[test]
    fn detects_bad_checksum() {
        let mut bytes = with_checksum(PACKET);
        bytes[8] = 63;
        assert!(!Packet::new_checked(&bytes[..]).unwrap().verify_checksum());
    }
}
