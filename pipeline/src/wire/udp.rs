//! UDP datagrams (RFC 768).

use super::{Result, WireError, be16};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const PAYLOAD: usize = 8;
}

pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view of a UDP datagram. `new_checked` guarantees a whole header and a length field
/// between 8 and the buffer length.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
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

    pub fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT)
    }

    pub fn len(&self) -> usize {
        usize::from(be16(self.b(), field::LENGTH))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM)
    }

    pub fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..self.len()]
    }
}

/// Reads only the two ports of a UDP or TCP header, as quoted inside ICMP errors: RFC 792
/// guarantees just the first 8 bytes of the offending datagram.
pub fn ports(b: &[u8]) -> Result<(u16, u16)> {
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
