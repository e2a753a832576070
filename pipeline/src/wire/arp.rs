//! ARP over Ethernet for IPv4 (RFC 826). Holdfast only recognises it: config decides
//! whether ARP passes the bump in the wire.

use super::{Result, WireError, be16};

/// Ethernet + IPv4 ARP is 28 bytes.
pub const PACKET_LEN: usize = 28;

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
        if be16(b, 0) != 1 || be16(b, 2) != 0x0800 || b[4] != 6 || b[5] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buffer })
    }

    /// 1 = request, 2 = reply.
    pub fn operation(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }

    pub fn sender_ip(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[14], b[15], b[16], b[17]]
    }

    pub fn target_ip(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[24], b[25], b[26], b[27]]
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
