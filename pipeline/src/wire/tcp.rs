//! TCP segments (RFC 9293) and the options conntrack reads: MSS, window scale
//! (RFC 7323), SACK-permitted and SACK blocks (RFC 2018), timestamps (RFC 7323).

use super::{Result, WireError, be16, be32};

mod field {
    pub(crate) const SRC_PORT: usize = 0;
    pub(crate) const DST_PORT: usize = 2;
    pub(crate) const SEQ: usize = 4;
    pub(crate) const ACK: usize = 8;
    /// Data offset in the high nibble (32-bit words).
    pub(crate) const DATA_OFF: usize = 12;
    pub(crate) const FLAGS: usize = 13;
    pub(crate) const WINDOW: usize = 14;
    pub(crate) const OPTIONS: usize = 20;
}

pub(crate) const MIN_HEADER_LEN: usize = field::OPTIONS;

/// Flag bits in byte 13.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Linux clamps advertised window scale to 14 (RFC 7323 section 2.3).
pub(crate) const MAX_WSCALE: u8 = 14;

/// A view of a TCP segment. `new_checked` guarantees the data offset is at least 5 and
/// the whole header (with options) is in the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub(crate) fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hlen = usize::from(b[field::DATA_OFF] >> 4) * 4;
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

    pub(crate) fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT)
    }

    pub(crate) fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT)
    }

    pub(crate) fn seq(&self) -> u32 {
        be32(self.b(), field::SEQ)
    }

    pub(crate) fn ack(&self) -> u32 {
        be32(self.b(), field::ACK)
    }

    pub(crate) fn header_len(&self) -> usize {
        usize::from(self.b()[field::DATA_OFF] >> 4) * 4
    }

    /// The eight flag bits (CWR..FIN).
    pub(crate) fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }

    pub(crate) fn window(&self) -> u16 {
        be16(self.b(), field::WINDOW)
    }

    #[cfg(test)]
    pub(crate) fn options(&self) -> &[u8] {
        &self.b()[field::OPTIONS..self.header_len()]
    }

    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
}

/// The options conntrack needs, parsed the way Linux's `tcp_options` and `tcp_sack` do
/// (`net/netfilter/nf_conntrack_proto_tcp.c`): EOL ends the list, a length below 2 or
/// beyond the end stops parsing, and only the first SACK option counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Options {
    pub mss: Option<u16>,
    /// Window scale shift, clamped to 14.
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    /// (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    /// Right edges of the SACK blocks of the first SACK option.
    pub sack_right_edges: [u32; 4],
    pub sack_blocks: u8,
}

pub(crate) mod kind {
    pub(crate) const EOL: u8 = 0;
    pub(crate) const NOP: u8 = 1;
    pub(crate) const MSS: u8 = 2;
    pub(crate) const WSCALE: u8 = 3;
    pub(crate) const SACK_PERM: u8 = 4;
    pub(crate) const SACK: u8 = 5;
    pub(crate) const TIMESTAMP: u8 = 8;
}

impl Options {
    pub(crate) fn parse(mut opts: &[u8]) -> Options {
        let mut o = Options::default();
        let mut sack_seen = false;
        while let Some((&kind, rest)) = opts.split_first() {
            match kind {
                kind::EOL => break,
                kind::NOP => opts = rest,
                _ => {
                    let Some(&size) = rest.first() else { break };
                    let size = usize::from(size);
                    if size < 2 || size > opts.len() {
                        break; // "silly options" or a partial option
                    }
                    let body = &opts[2..size];
                    match (kind, size) {
                        (kind::MSS, 4) => o.mss = Some(be16(body, 0)),
                        (kind::WSCALE, 3) => o.wscale = Some(body[0].min(MAX_WSCALE)),
                        (kind::SACK_PERM, 2) => o.sack_permitted = true,
                        (kind::TIMESTAMP, 10) => o.timestamps = Some((be32(body, 0), be32(body, 4))),
                        (kind::SACK, _) if !sack_seen && size >= 10 && (size - 2) % 8 == 0 => {
                            sack_seen = true;
                            for (i, block) in body.chunks_exact(8).take(4).enumerate() {
                                o.sack_right_edges[i] = be32(block, 4);
                                o.sack_blocks += 1;
                            }
                        }
                        _ => {}
                    }
                    opts = &opts[size..];
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN from port 40000 to 80, seq 1000, window 64240, with MSS 1460, SACK-permitted,
    /// timestamps and window scale 7 (Linux's usual SYN options), plus 2 payload bytes.
    const SYN: [u8; 42] = [
        0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, // header
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, // SACK permitted
        0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // TS 1, 0
        0x01, // NOP
        0x03, 0x03, 0x07, // WS 7
        0xab, 0xcd, // payload
    ];

    #[test]
    fn reads_header_and_options() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq(), 1000);
        assert_eq!(p.ack(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), flags::SYN);
        assert_eq!(p.window(), 64240);
        assert_eq!(p.payload(), &[0xab, 0xcd]);
        let o = Options::parse(p.options());
        assert_eq!(o.mss, Some(1460));
        assert!(o.sack_permitted);
        assert_eq!(o.timestamps, Some((1, 0)));
        assert_eq!(o.wscale, Some(7));
        assert_eq!(o.sack_blocks, 0);
    }

    #[test]
    fn sack_blocks_and_clamped_wscale() {
        let opts = [
            1, 1, 5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40, // two blocks
            5, 10, 0, 0, 0, 0, 0, 0, 0, 99, // a second SACK option is ignored
            3, 3, 15, // WS 15 clamps to 14
        ];
        let o = Options::parse(&opts);
        assert_eq!(o.sack_blocks, 2);
        assert_eq!(&o.sack_right_edges[..2], &[20, 40]);
        assert_eq!(o.wscale, Some(14));
    }

    #[test]
    fn stops_on_silly_or_partial_options() {
        assert_eq!(Options::parse(&[3, 1, 7, 3, 3, 7]), Options::default()); // size 1
        assert_eq!(Options::parse(&[2, 4, 5]), Options::default()); // partial
        assert_eq!(Options::parse(&[0, 3, 3, 7]), Options::default()); // EOL first
        assert_eq!(Options::parse(&[1]).wscale, None);
        assert_eq!(Options::parse(&[3]).wscale, None); // kind without size
    }

    #[test]
    fn rejects_bad_offsets() {
        let mut small = SYN;
        small[12] = 0x40; // data offset 4
        assert_eq!(Packet::new_checked(&small[..]).unwrap_err(), WireError::Malformed);
        let mut big = SYN;
        big[12] = 0xf0; // 60 bytes of header in a 42-byte buffer
        assert_eq!(Packet::new_checked(&big[..]).unwrap_err(), WireError::Truncated);
        assert_eq!(Packet::new_checked(&SYN[..19]).unwrap_err(), WireError::Truncated);
    }
}
