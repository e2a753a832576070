//! ARP over Ethernet for IPv4 (RFC 826). Holdfast only recognises it: config decides
//! whether ARP passes the bump in the wire.

use super::{Result, WireError, be16};

mod field {
    use core::ops::Range;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Ethernet + IPv4 ARP is 28 bytes.
pub const PACKET_LEN: usize = field::TPA.end;

#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Accepts only hardware type Ethernet (1), protocol IPv4, and lengths 6 and 4.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, field::HTYPE) != 1 || be16(b, field::PTYPE) != 0x0800 || b[field::HLEN] != 6 || b[field::PLEN] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// 1 = request, 2 = reply.
    pub fn operation(&self) -> u16 {
        be16(self.b(), field::OPER)
    }

    pub fn sender_mac(&self) -> [u8; 6] {
        self.b()[field::SHA].try_into().unwrap_or_default()
    }

    pub fn sender_ip(&self) -> [u8; 4] {
        self.b()[field::SPA].try_into().unwrap_or_default()
    }

    pub fn target_mac(&self) -> [u8; 6] {
        self.b()[field::THA].try_into().unwrap_or_default()
    }

    pub fn target_ip(&self) -> [u8; 4] {
        self.b()[field::TPA].try_into().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, // htype, ptype, hlen, plen, op=request
        2, 0, 0, 0, 0, 1, 10, 0, 1, 1, // sender mac, ip
        0, 0, 0, 0, 0, 0, 10, 0, 2, 1, // target mac, ip
    ];

    #[test]
    fn reads_request() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.operation(), 1);
        assert_eq!(p.sender_ip(), [10, 0, 1, 1]);
        assert_eq!(p.target_ip(), [10, 0, 2, 1]);
    }

    #[test]
    fn rejects_other_hardware_and_short() {
        let mut bad = REQUEST;
        bad[1] = 6; // IEEE 802
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), WireError::Malformed);
        assert_eq!(Packet::new_checked(&REQUEST[..27]).unwrap_err(), WireError::Truncated);
    }
}
