//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages. Both share the first four bytes
//! (type, code, checksum) and a four-byte "rest of header"; error messages then quote the
//! offending packet's IP header and at least the first 8 bytes of its payload.

use super::{Result, WireError, be16};

mod field {
    pub(crate) const TYPE: usize = 0;
    pub(crate) const CODE: usize = 1;
    #[cfg(test)]
    pub(crate) const CHECKSUM: usize = 2;
    /// Echo and timestamp messages: identifier and sequence number.
    pub(crate) const IDENT: usize = 4;
    #[cfg(test)]
    pub(crate) const SEQ: usize = 6;
    #[cfg(test)]
    /// "Fragmentation needed" (RFC 1191): the next-hop MTU's place.
    pub(crate) const MTU: usize = 6;
    /// The quoted packet of an error message.
    pub(crate) const PAYLOAD: usize = 8;
}

pub(crate) const HEADER_LEN: usize = field::PAYLOAD;

/// ICMPv4 types Holdfast treats specially.
pub(crate) mod v4 {
    pub(crate) const ECHO_REPLY: u8 = 0;
    pub(crate) const DEST_UNREACHABLE: u8 = 3;
    pub(crate) const SOURCE_QUENCH: u8 = 4;
    pub(crate) const REDIRECT: u8 = 5;
    pub(crate) const ECHO_REQUEST: u8 = 8;
    pub(crate) const TIME_EXCEEDED: u8 = 11;
    pub(crate) const PARAMETER_PROBLEM: u8 = 12;
    pub(crate) const TIMESTAMP: u8 = 13;
    pub(crate) const TIMESTAMP_REPLY: u8 = 14;
    #[cfg(test)]
    /// Code of "fragmentation needed and DF set" under DEST_UNREACHABLE (RFC 1191).
    pub(crate) const CODE_FRAG_NEEDED: u8 = 4;

    /// Error messages that quote an offending datagram (Linux `icmp_error_message`).
    pub(crate) fn is_error(ty: u8) -> bool {
        matches!(ty, DEST_UNREACHABLE | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }

    #[cfg(test)]
    /// The reply type of a query type, for query/response tracking.
    pub(crate) fn reply_of(ty: u8) -> Option<u8> {
        match ty {
            ECHO_REQUEST => Some(ECHO_REPLY),
            TIMESTAMP => Some(TIMESTAMP_REPLY),
            _ => None,
        }
    }
}

/// ICMPv6 types Holdfast treats specially.
pub(crate) mod v6 {
    #[cfg(test)]
    pub(crate) const PACKET_TOO_BIG: u8 = 2;
    pub(crate) const ECHO_REQUEST: u8 = 128;
    pub(crate) const ECHO_REPLY: u8 = 129;
    pub(crate) const ROUTER_SOLICIT: u8 = 133;
    #[cfg(test)]
    pub(crate) const NEIGHBOR_SOLICIT: u8 = 135;
    pub(crate) const NEIGHBOR_ADVERT: u8 = 136;

    /// Error messages are types 0-127 (RFC 4443 section 2.1).
    pub(crate) fn is_error(ty: u8) -> bool {
        ty < 128
    }

    /// Neighbor discovery (RFC 4861) must cross a bump in the wire for IPv6 to work at
    /// all, like ARP for IPv4.
    pub(crate) fn is_neighbor_discovery(ty: u8) -> bool {
        (ROUTER_SOLICIT..=NEIGHBOR_ADVERT).contains(&ty) || ty == 137
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub(crate) fn msg_type(&self) -> u8 {
        self.b()[field::TYPE]
    }

    pub(crate) fn code(&self) -> u8 {
        self.b()[field::CODE]
    }

    #[cfg(test)]
    pub(crate) fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM)
    }

    /// Identifier of echo / timestamp messages.
    pub(crate) fn echo_ident(&self) -> u16 {
        be16(self.b(), field::IDENT)
    }

    #[cfg(test)]
    pub(crate) fn echo_seq(&self) -> u16 {
        be16(self.b(), field::SEQ)
    }

    #[cfg(test)]
    /// Next-hop MTU of "fragmentation needed" (RFC 1191) or low half of the ICMPv6
    /// Packet Too Big MTU.
    pub(crate) fn mtu(&self) -> u16 {
        be16(self.b(), field::MTU)
    }

    /// Data after the 8-byte header: the quoted packet of an error message.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_echo() {
        let b = [8, 0, 0xf7, 0xfd, 0x12, 0x34, 0x00, 0x01, 0x61];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), v4::ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0xf7fd);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq(), 1);
        assert_eq!(p.payload(), &[0x61]);
        assert_eq!(v4::reply_of(p.msg_type()), Some(v4::ECHO_REPLY));
    }

    #[test]
    fn reads_frag_needed_and_classifies_errors() {
        let b = [3, 4, 0, 0, 0, 0, 0x05, 0xdc, 0x45];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.mtu()), (3, v4::CODE_FRAG_NEEDED, 1500));
        assert_eq!(p.payload(), &[0x45]);
        assert!(v4::is_error(3) && v4::is_error(11) && !v4::is_error(8) && !v4::is_error(0));
        assert!(v6::is_error(v6::PACKET_TOO_BIG) && !v6::is_error(v6::ECHO_REQUEST));
        assert!(v6::is_neighbor_discovery(v6::NEIGHBOR_SOLICIT) && !v6::is_neighbor_discovery(128));
    }

    #[test]
    fn rejects_short() {
        assert_eq!(Packet::new_checked(&[8u8, 0, 0, 0, 0, 0, 0][..]).unwrap_err(), WireError::Truncated);
    }
}
