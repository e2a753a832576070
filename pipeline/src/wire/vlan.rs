//! IEEE 802.1Q / 802.1ad VLAN tags: the four bytes after an 0x8100 / 0x88a8 EtherType.

use super::{Result, WireError, be16};

mod field {
    /// Priority (3 bits), drop eligible (1), VLAN id (12).
    pub(crate) const TCI: usize = 0;
    pub(crate) const ETHERTYPE: usize = 2;
    pub(crate) const PAYLOAD: usize = 4;
}

pub(crate) const TAG_LEN: usize = field::PAYLOAD;

/// A view of one VLAN tag followed by the rest of the frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Tag { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[cfg(test)]
    /// Priority code point (3 bits).
    pub(crate) fn pcp(&self) -> u8 {
        self.b()[field::TCI] >> 5
    }

    /// VLAN identifier (12 bits).
    pub(crate) fn vid(&self) -> u16 {
        be16(self.b(), field::TCI) & 0x0fff
    }

    /// The EtherType of what follows the tag.
    pub(crate) fn ethertype(&self) -> u16 {
        be16(self.b(), field::ETHERTYPE)
    }

    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tag() {
        // PCP 5, DEI 0, VID 0x123, then IPv6.
        let bytes = [0xa1, 0x23, 0x86, 0xdd, 0x60];
        let t = Tag::new_checked(&bytes[..]).unwrap();
        assert_eq!(t.pcp(), 5);
        assert_eq!(t.vid(), 0x123);
        assert_eq!(t.ethertype(), 0x86dd);
        assert_eq!(t.payload(), &[0x60]);
    }

    #[test]
    fn rejects_short_tag() {
        assert_eq!(Tag::new_checked(&[0u8; 3][..]).unwrap_err(), WireError::Truncated);
    }
}
