//! Ethernet II frames (IEEE 802.3, DIX framing).

use super::{Result, WireError, be16};

mod field {
    use core::ops::Range;
    #[cfg(test)]
    pub(crate) const DST: Range<usize> = 0..6;
    #[cfg(test)]
    pub(crate) const SRC: Range<usize> = 6..12;
    pub(crate) const ETHERTYPE: Range<usize> = 12..14;
    pub(crate) const PAYLOAD: usize = 14;
}

pub(crate) const HEADER_LEN: usize = field::PAYLOAD;

/// EtherType values Holdfast recognises.
pub(crate) mod ethertype {
    pub(crate) const IPV4: u16 = 0x0800;
    pub(crate) const ARP: u16 = 0x0806;
    /// IEEE 802.1Q customer tag.
    pub(crate) const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service tag (QinQ outer tag).
    pub(crate) const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag still emitted by some switches.
    pub(crate) const QINQ_OLD: u16 = 0x9100;
    pub(crate) const IPV6: u16 = 0x86dd;
}

/// A read-only view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` after checking that it holds a whole Ethernet header.
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buffer })
    }

    #[cfg(test)]
    pub(crate) fn dst(&self) -> [u8; 6] {
        let b = &self.buffer.as_ref()[field::DST];
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    #[cfg(test)]
    pub(crate) fn src(&self) -> [u8; 6] {
        let b = &self.buffer.as_ref()[field::SRC];
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    pub(crate) fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 18] = [
        0x02, 0, 0, 0, 0, 0x01, // dst
        0x02, 0, 0, 0, 0, 0x02, // src
        0x08, 0x00, // IPv4
        0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn reads_fields() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn rejects_short_frame() {
        assert_eq!(Frame::new_checked(&FRAME[..13]).unwrap_err(), WireError::Truncated);
        assert!(Frame::new_checked(&FRAME[..14]).unwrap().payload().is_empty());
    }
}
