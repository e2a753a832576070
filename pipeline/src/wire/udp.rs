//! UDP datagrams (RFC 768).

use super::{Result, WireError, be16};

mod field {
    pub(crate) const SRC_PORT: usize = 0;
    pub(crate) const DST_PORT: usize = 2;
    pub(crate) const LENGTH: usize = 4;
    #[cfg(test)]
    pub(crate) const CHECKSUM: usize = 6;
    pub(crate) const PAYLOAD: usize = 8;
}

pub(crate) const HEADER_LEN: usize = field::PAYLOAD;

/// A view of a UDP datagram. `new_checked` guarantees a whole header and a length field
/// between 8 and the buffer length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(b, field::LENGTH));
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < len {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub(crate) fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT)
    }

    pub(crate) fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        usize::from(be16(self.b(), field::LENGTH))
    }

    #[cfg(test)]
    pub(crate) fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM)
    }

    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..self.len()]
    }
}

/// Reads only the two ports of a UDP or TCP header, as quoted inside ICMP errors: RFC 792
/// guarantees just the first 8 bytes of the offending datagram.
pub(crate) fn ports(b: &[u8]) -> Result<(u16, u16)> {
    if b.len() < 4 {
        return Err(WireError::Truncated);
    }
    Ok((be16(b, field::SRC_PORT), be16(b, field::DST_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_datagram() {
        let d = [0x00, 0x35, 0x9c, 0x40, 0x00, 0x0a, 0x12, 0x34, 0xaa, 0xbb, 0xee];
        let p = Packet::new_checked(&d[..]).unwrap();
        assert_eq!(p.src_port(), 53);
        assert_eq!(p.dst_port(), 40000);
        assert_eq!(p.len(), 10);
        assert_eq!(p.checksum(), 0x1234);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert_eq!(ports(&d).unwrap(), (53, 40000));
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(Packet::new_checked(&[0u8; 7][..]).unwrap_err(), WireError::Truncated);
        let short_len = [0, 1, 0, 2, 0, 4, 0, 0];
        assert_eq!(Packet::new_checked(&short_len[..]).unwrap_err(), WireError::Malformed);
        let long_len = [0, 1, 0, 2, 0, 20, 0, 0, 0];
        assert_eq!(Packet::new_checked(&long_len[..]).unwrap_err(), WireError::Truncated);
        assert_eq!(ports(&[1, 2, 3]).unwrap_err(), WireError::Truncated);
    }
}
