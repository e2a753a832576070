//! ARP over Ethernet for IPv4 (RFC 826). Holdfast only recognises it: config decides
//! whether ARP passes the bump in the wire, so nothing in it is read but its shape.

use super::{Result, WireError, be16};

mod field {
    pub(crate) const HTYPE: usize = 0;
    pub(crate) const PTYPE: usize = 2;
    pub(crate) const HLEN: usize = 4;
    pub(crate) const PLEN: usize = 5;
    /// The end of the target protocol address: the whole packet.
    pub(crate) const END: usize = 28;
}

/// Ethernet + IPv4 ARP is 28 bytes.
pub(crate) const PACKET_LEN: usize = field::END;

/// Accepts only hardware type Ethernet (1), protocol IPv4, and lengths 6 and 4.
pub(crate) fn check(b: &[u8]) -> Result<()> {
    if b.len() < PACKET_LEN {
        return Err(WireError::Truncated);
    }
    if be16(b, field::HTYPE) != 1 || be16(b, field::PTYPE) != 0x0800 || b[field::HLEN] != 6 || b[field::PLEN] != 4 {
        return Err(WireError::Malformed);
    }
    Ok(())
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
    fn accepts_a_request() {
        assert_eq!(check(&REQUEST), Ok(()));
    }

    #[test]
    fn rejects_other_hardware_and_short() {
        let mut bad = REQUEST;
        bad[1] = 6; // IEEE 802
        assert_eq!(check(&bad).unwrap_err(), WireError::Malformed);
        assert_eq!(check(&REQUEST[..27]).unwrap_err(), WireError::Truncated);
    }
}
