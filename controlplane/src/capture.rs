//! Packet captures: reading pcap (microsecond and nanosecond, either byte order) and
//! pcapng with pcap-parser, and writing pcap for the traffic generator.
//!
//! The whole file is read into memory and frames are borrowed from it, so replay
//! workers get zero-copy slices.

use std::io::Write;
use std::path::Path;

use pcap_parser::pcap::{parse_pcap_frame, parse_pcap_frame_be, parse_pcap_header};
use pcap_parser::pcapng::Block;
use pcap_parser::{Linktype, PcapBlockOwned, PcapNGSlice};

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Capture timestamp in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub data: &'a [u8],
}

/// Where and why reading stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// Byte offset of the first byte that could not be read.
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "at byte offset {}: {}", self.offset, self.message)
    }
}

/// Everything read from a capture.
#[derive(Debug, Default)]
pub struct Capture<'a> {
    pub records: Vec<Record<'a>>,
    /// Frames of a link type other than Ethernet, skipped.
    pub skipped_non_ethernet: u64,
    /// Set when the file is truncated or corrupt: `records` holds what came before.
    pub error: Option<CaptureError>,
    pub format: &'static str,
}

fn describe<I>(e: &nom::Err<pcap_parser::PcapError<I>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "truncated: the file ends inside a record".into(),
        nom::Err::Error(pe) | nom::Err::Failure(pe) => match pe {
            pcap_parser::PcapError::HeaderNotRecognized => "not a pcap or pcapng file".into(),
            pcap_parser::PcapError::Incomplete(_) | pcap_parser::PcapError::UnexpectedEof => {
                "truncated: the file ends inside a record".into()
            }
            pcap_parser::PcapError::NomError(_, k) => format!("corrupt record ({k:?})"),
            pcap_parser::PcapError::OwnedNomError(_, k) => format!("corrupt record ({k:?})"),
            other => format!("unreadable ({})", kind_name(other)),
        },
    }
}

fn kind_name<I>(e: &pcap_parser::PcapError<I>) -> &'static str {
    match e {
        pcap_parser::PcapError::Eof => "end of file",
        pcap_parser::PcapError::BufferTooSmall => "record too large",
        pcap_parser::PcapError::ReadError => "read error",
        _ => "parse error",
    }
}

/// Parses a whole capture held in memory.
pub fn parse(buf: &[u8]) -> Capture<'_> {
    if buf.len() >= 4 && buf[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        return parse_pcapng(buf);
    }
    parse_legacy(buf)
}

fn offset_of(buf: &[u8], rest: &[u8]) -> usize {
    buf.len() - rest.len()
}

fn parse_legacy(buf: &[u8]) -> Capture<'_> {
    let mut cap = Capture { format: "pcap", ..Capture::default() };
    let (mut rest, header) = match parse_pcap_header(buf) {
        Ok(x) => x,
        Err(e) => {
            cap.error = Some(CaptureError { offset: 0, message: describe(&e) });
            return cap;
        }
    };
    if header.is_modified_format() {
        cap.error = Some(CaptureError { offset: 0, message: "the Kuznetzov \"modified pcap\" format is not supported".into() });
        return cap;
    }
    let nanos = header.is_nanosecond_precision();
    if nanos {
        cap.format = "pcap (nanosecond)";
    }
    let ethernet = header.network == Linktype::ETHERNET;
    let frame = if header.is_bigendian() { parse_pcap_frame_be } else { parse_pcap_frame };
    while !rest.is_empty() {
        match frame(rest) {
            Ok((r, b)) => {
                if b.caplen as usize > b.data.len() {
                    cap.error = Some(CaptureError { offset: offset_of(buf, rest), message: "corrupt record: captured length beyond the record".into() });
                    return cap;
                }
                let frac = if nanos { u64::from(b.ts_usec) } else { u64::from(b.ts_usec) * 1000 };
                if ethernet {
                    cap.records.push(Record { ts_ns: u64::from(b.ts_sec) * 1_000_000_000 + frac, data: &b.data[..b.caplen as usize] });
                } else {
                    cap.skipped_non_ethernet += 1;
                }
                rest = r;
            }
            Err(e) => {
                cap.error = Some(CaptureError { offset: offset_of(buf, rest), message: describe(&e) });
                return cap;
            }
        }
    }
    cap
}

struct Iface {
    ethernet: bool,
    /// Timestamp units per second.
    resol: u64,
    offset_s: i64,
}

fn parse_pcapng(buf: &[u8]) -> Capture<'_> {
    let mut cap = Capture { format: "pcapng", ..Capture::default() };
    let slice = match PcapNGSlice::from_slice(buf) {
        Ok(s) => s,
        Err(e) => {
            cap.error = Some(CaptureError { offset: 0, message: describe(&e) });
            return cap;
        }
    };
    let mut ifaces: Vec<Iface> = Vec::new();
    let mut consumed = 0usize;
    for item in slice {
        let block = match item {
            Ok(PcapBlockOwned::NG(b)) => b,
            Ok(_) => continue,
            Err(e) => {
                cap.error = Some(CaptureError { offset: consumed, message: describe(&e) });
                return cap;
            }
        };
        consumed += block_len(&block);
        match block {
            Block::SectionHeader(_) => ifaces.clear(),
            Block::InterfaceDescription(idb) => ifaces.push(Iface {
                ethernet: idb.linktype == Linktype::ETHERNET,
                resol: idb.ts_resolution().unwrap_or(1_000_000),
                offset_s: idb.if_tsoffset,
            }),
            Block::EnhancedPacket(epb) => {
                let Some(ifc) = ifaces.get(epb.if_id as usize) else {
                    cap.error = Some(CaptureError { offset: consumed - epb.block_len1 as usize, message: format!("packet on undeclared interface {}", epb.if_id) });
                    return cap;
                };
                if epb.caplen as usize > epb.data.len() {
                    cap.error = Some(CaptureError { offset: consumed - epb.block_len1 as usize, message: "corrupt block: captured length beyond the block".into() });
                    return cap;
                }
                if !ifc.ethernet {
                    cap.skipped_non_ethernet += 1;
                    continue;
                }
                let raw = u128::from(epb.ts_high) << 32 | u128::from(epb.ts_low);
                let ns = raw * 1_000_000_000 / u128::from(ifc.resol.max(1));
                let ns = (ns as i128 + i128::from(ifc.offset_s) * 1_000_000_000).max(0) as u64;
                cap.records.push(Record { ts_ns: ns, data: &epb.data[..epb.caplen as usize] });
            }
            Block::SimplePacket(spb) => {
                // No timestamp: it inherits the previous packet's.
                if ifaces.first().is_some_and(|i| i.ethernet) {
                    let ts = cap.records.last().map_or(0, |r| r.ts_ns);
                    let n = (spb.origlen as usize).min(spb.data.len());
                    cap.records.push(Record { ts_ns: ts, data: &spb.data[..n] });
                } else {
                    cap.skipped_non_ethernet += 1;
                }
            }
            _ => {}
        }
    }
    cap
}

fn block_len(b: &Block) -> usize {
    (match b {
        Block::SectionHeader(x) => x.block_len1,
        Block::InterfaceDescription(x) => x.block_len1,
        Block::EnhancedPacket(x) => x.block_len1,
        Block::SimplePacket(x) => x.block_len1,
        Block::NameResolution(x) => x.block_len1,
        Block::InterfaceStatistics(x) => x.block_len1,
        Block::SystemdJournalExport(x) => x.block_len1,
        Block::DecryptionSecrets(x) => x.block_len1,
        Block::ProcessInformation(x) => x.block_len1,
        Block::Custom(x) => x.block_len1,
        Block::Unknown(x) => x.block_len1,
    }) as usize
}

/// Writes a classic little-endian pcap file (Ethernet), nanosecond or microsecond.
pub struct Writer<W: Write> {
    out: W,
    nanos: bool,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, nanos: bool) -> std::io::Result<Self> {
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        out.write_all(&magic.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&65_535u32.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?; // LINKTYPE_ETHERNET
        Ok(Writer { out, nanos })
    }

    pub fn write(&mut self, ts_ns: u64, frame: &[u8]) -> std::io::Result<()> {
        let sec = (ts_ns / 1_000_000_000) as u32;
        let frac = if self.nanos { ts_ns % 1_000_000_000 } else { ts_ns % 1_000_000_000 / 1000 } as u32;
        self.out.write_all(&sec.to_le_bytes())?;
        self.out.write_all(&frac.to_le_bytes())?;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(frame)
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a file into memory, for [`parse`].
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(nanos: bool) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), nanos).unwrap();
        w.write(1_700_000_000_123_456_789, &[1u8; 60]).unwrap();
        w.write(1_700_000_001_000_000_000, &[2u8; 70]).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_micro_and_nano_pcap() {
        let b = sample(false);
        let c = parse(&b);
        assert!(c.error.is_none());
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.records[0].ts_ns, 1_700_000_000_123_456_000);
        assert_eq!(c.records[1].data, &[2u8; 70][..]);
        let b = sample(true);
        let c = parse(&b);
        assert_eq!(c.format, "pcap (nanosecond)");
        assert_eq!(c.records[0].ts_ns, 1_700_000_000_123_456_789);
    }

    #[test]
    fn truncation_names_the_offset_and_keeps_what_came_before() {
        let b = sample(false);
        let cut = &b[..b.len() - 10];
        let c = parse(cut);
        assert_eq!(c.records.len(), 1);
        let e = c.error.unwrap();
        assert_eq!(e.offset, 24 + 16 + 60, "the second record starts there");
        assert!(e.message.contains("truncated"), "{}", e.message);
        let c = parse(b"hello, not a capture at all");
        assert_eq!(c.error.unwrap().offset, 0);
    }

    #[test]
    fn reads_pcapng() {
        // SHB, IDB (Ethernet, default microsecond resolution), one EPB.
        let mut b = Vec::new();
        let shb = [0x0a0d0d0au32, 28, 0x1a2b3c4d];
        for x in shb {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(-1i64).to_le_bytes());
        b.extend_from_slice(&28u32.to_le_bytes());
        for x in [1u32, 20] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&65535u32.to_le_bytes());
        b.extend_from_slice(&20u32.to_le_bytes());
        let ts: u64 = 1_700_000_000_000_001;
        for x in [6u32, 32 + 60, 0, (ts >> 32) as u32, ts as u32, 60, 60] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&[9u8; 60]);
        b.extend_from_slice(&(32u32 + 60).to_le_bytes());
        let c = parse(&b);
        assert!(c.error.is_none(), "{:?}", c.error);
        assert_eq!(c.format, "pcapng");
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.records[0].ts_ns, 1_700_000_000_000_001_000);
        let c = parse(&b[..b.len() - 8]);
        assert_eq!(c.records.len(), 0);
        assert_eq!(c.error.unwrap().offset, 28 + 20);
    }
}
