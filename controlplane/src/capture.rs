//! Packet captures: reading pcap (microsecond and nanosecond, either byte order) and
//! pcapng with pcap-parser, and writing pcap for the traffic generator.
//!
//! The whole file is read into memory and Ethernet frames are borrowed from it, so
//! replay workers get zero-copy slices. Captures of other link types that carry IP —
//! Linux cooked captures (`tcpdump -i any`: SLL and SLL2), raw IP, BSD loopback/null —
//! are given an Ethernet header, since the pipeline reads Ethernet frames; SLL's packet
//! type says which way a packet went. Other link types are skipped, counted by type
//! and named.

use std::io::Write;
use std::path::Path;

use pcap_parser::pcap::{parse_pcap_frame, parse_pcap_frame_be, parse_pcap_header};
use pcap_parser::pcapng::Block;
use std::borrow::Cow;

use pcap_parser::{PcapBlockOwned, PcapNGSlice};

/// One captured frame, as an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// Capture timestamp in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub data: Cow<'a, [u8]>,
    /// From a Linux cooked capture: `Some(true)` for a packet the capturing host sent,
    /// `Some(false)` for one it received; `None` when the link type does not say.
    pub outgoing: Option<bool>,
}

/// The link types read. Numbers from https://www.tcpdump.org/linktypes.html.
pub mod link {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    /// Raw IP on OpenBSD-derived captures (DLT_RAW's old number).
    pub const RAW_OLD: i32 = 12;
    pub const RAW_OLD2: i32 = 14;
    pub const RAW: i32 = 101;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;

    /// A name for people.
    pub fn name(t: i32) -> String {
        let n = match t {
            NULL => "NULL (BSD loopback)",
            ETHERNET => "ETHERNET",
            RAW | RAW_OLD | RAW_OLD2 => "RAW (IP)",
            LOOP => "LOOP (OpenBSD loopback)",
            LINUX_SLL => "LINUX_SLL (Linux cooked, tcpdump -i any)",
            LINUX_SLL2 => "LINUX_SLL2 (Linux cooked v2, tcpdump -i any)",
            IPV4 => "IPV4",
            IPV6 => "IPV6",
            6 => "IEEE802_5 (Token Ring)",
            9 => "PPP",
            50 => "PPP_HDLC",
            104 => "C_HDLC (Cisco HDLC)",
            105 => "IEEE802_11 (Wi-Fi)",
            127 => "IEEE802_11_RADIOTAP (Wi-Fi with radiotap)",
            147..=162 => "USER (private use)",
            195 => "IEEE802_15_4",
            220 => "USB_LINUX_MMAPPED",
            249 => "NETLINK",
            _ => "unknown",
        };
        format!("{t} {n}")
    }

    pub fn supported(t: i32) -> bool {
        matches!(t, NULL | ETHERNET | RAW | RAW_OLD | RAW_OLD2 | LOOP | LINUX_SLL | LINUX_SLL2 | IPV4 | IPV6)
    }
}

/// What to do about a link type Holdfast cannot replay.
pub const UNSUPPORTED_HINT: &str = "Holdfast replays Ethernet, Linux cooked (SLL, SLL2: tcpdump -i any), raw IP and BSD loopback captures; capture on an Ethernet interface, or with tcpdump -i any";

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
/// Addresses of the Ethernet header given to non-Ethernet frames (locally administered).
const SYNTH_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SYNTH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&SYNTH_DST);
    f.extend_from_slice(&SYNTH_SRC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ip_ethertype(payload: &[u8]) -> Option<u16> {
    match payload.first()? >> 4 {
        4 => Some(ETH_IPV4),
        6 => Some(ETH_IPV6),
        _ => None,
    }
}

/// A BSD address family as the NULL and LOOP link types carry it.
fn family_ethertype(af: u32) -> Option<u16> {
    match af {
        2 => Some(ETH_IPV4),
        10 | 24 | 28 | 30 => Some(ETH_IPV6),
        _ => None,
    }
}

/// SLL / SLL2 packet types: 4 (PACKET_OUTGOING) is what the capturing host sent.
fn outgoing(pkttype: u16) -> bool {
    pkttype == 4
}

/// A captured frame of link type `lt` as an Ethernet frame (and its direction, where the
/// link type tells); `None` when it carries no IP or ARP the pipeline could judge.
fn to_ethernet(lt: i32, d: &[u8]) -> Option<(Cow<'_, [u8]>, Option<bool>)> {
    match lt {
        link::ETHERNET => Some((Cow::Borrowed(d), None)),
        link::RAW | link::RAW_OLD | link::RAW_OLD2 | link::IPV4 | link::IPV6 => Some((Cow::Owned(ethernet(ip_ethertype(d)?, d)), None)),
        link::NULL => {
            let b: [u8; 4] = d.get(..4)?.try_into().ok()?;
            // Host byte order of the machine that captured: try both.
            let et = family_ethertype(u32::from_le_bytes(b)).or_else(|| family_ethertype(u32::from_be_bytes(b)))?;
            Some((Cow::Owned(ethernet(et, &d[4..])), None))
        }
        link::LOOP => {
            let et = family_ethertype(u32::from_be_bytes(d.get(..4)?.try_into().ok()?))?;
            Some((Cow::Owned(ethernet(et, &d[4..])), None))
        }
        link::LINUX_SLL => {
            // packet type, ARPHRD, address length, 8 address bytes, protocol.
            let pkttype = u16::from_be_bytes(d.get(0..2)?.try_into().ok()?);
            let proto = u16::from_be_bytes(d.get(14..16)?.try_into().ok()?);
            sll_frame(proto, &d[16..]).map(|f| (Cow::Owned(f), Some(outgoing(pkttype))))
        }
        link::LINUX_SLL2 => {
            // protocol, reserved, ifindex, ARPHRD, packet type, address length, address.
            let proto = u16::from_be_bytes(d.get(0..2)?.try_into().ok()?);
            let pkttype = u16::from(*d.get(10)?);
            sll_frame(proto, d.get(20..)?).map(|f| (Cow::Owned(f), Some(outgoing(pkttype))))
        }
        _ => None,
    }
}

/// SLL's protocol field is an EtherType for IP, IPv6, ARP and VLAN-tagged frames.
fn sll_frame(proto: u16, payload: &[u8]) -> Option<Vec<u8>> {
    match proto {
        0x0800 | 0x86dd | 0x0806 | 0x8100 | 0x88a8 => Some(ethernet(proto, payload)),
        _ => None,
    }
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
    /// Frames skipped: of a link type Holdfast does not read, or of a supported link
    /// type but carrying neither IP nor ARP; by link type.
    pub skipped: std::collections::BTreeMap<i32, u64>,
    /// Link types of the frames read.
    pub link_types: std::collections::BTreeSet<i32>,
    /// Set when the file is truncated or corrupt: `records` holds what came before.
    pub error: Option<CaptureError>,
    pub format: &'static str,
}

fn describe<I>(e: &nom::Err<pcap_parser::PcapError<I>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "truncated: the file ends inside a record".into(),
        nom::Err::Error(pe) | nom::Err::Failure(pe) => match pe {
            pcap_parser::PcapError::HeaderNotRecognized => "not a pcap or pcapng file".into(),
            pcap_parser::PcapError::Incomplete(_) | pcap_parser::PcapError::UnexpectedEof => "truncated: the file ends inside a record".into(),
            pcap_parser::PcapError::NomError(..) | pcap_parser::PcapError::OwnedNomError(..) => {
                "corrupt record: its header's lengths or type do not make sense (a damaged file, or not a capture past this point)".into()
            }
            other => format!("unreadable ({})", kind_name(other)),
        },
    }
}

impl<'a> Capture<'a> {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// What was skipped and why, for people; `None` when nothing was.
    pub fn skipped_note(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .skipped
            .iter()
            .map(|(t, n)| {
                if link::supported(*t) {
                    format!("{n} frame(s) of link type {} that carry neither IP nor ARP", link::name(*t))
                } else {
                    format!("{n} frame(s) of link type {}, which Holdfast cannot replay", link::name(*t))
                }
            })
            .collect();
        let unsupported = self.skipped.keys().any(|t| !link::supported(*t));
        Some(format!("skipped {}{}", parts.join("; "), if unsupported { format!(". {UNSUPPORTED_HINT}") } else { String::new() }))
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
    let mut r = Reader::new(buf);
    let mut records = Vec::new();
    records.extend(&mut r);
    r.into_capture(records)
}

fn is_pcap_magic(buf: &[u8]) -> bool {
    let Some(m) = buf.get(..4) else { return false };
    let m = u32::from_le_bytes(m.try_into().unwrap_or([0; 4]));
    [0xa1b2_c3d4u32, 0xd4c3_b2a1, 0xa1b2_3c4d, 0x4d3c_b2a1].contains(&m)
}

fn offset_of(buf: &[u8], rest: &[u8]) -> usize {
    buf.len() - rest.len()
}

struct Iface {
    linktype: i32,
    /// Timestamp units per second.
    resol: u64,
    offset_s: i64,
}

type FrameParser = for<'b> fn(&'b [u8]) -> nom::IResult<&'b [u8], pcap_parser::LegacyPcapBlock<'b>, pcap_parser::PcapError<&'b [u8]>>;

enum Format<'a> {
    Legacy { rest: &'a [u8], lt: i32, nanos: bool, frame: FrameParser },
    Ng { slice: PcapNGSlice<'a>, ifaces: Vec<Iface>, consumed: usize, last_ts: u64 },
    Done,
}

/// A capture read one record at a time from bytes in memory — or mapped from a file
/// ([`Mapped`]), so that a capture larger than memory is read without being loaded.
/// What was skipped, the link types and where reading stopped early are kept as it
/// goes ([`Reader::skipped_total`], [`Reader::error`]).
pub struct Reader<'a> {
    buf: &'a [u8],
    state: Format<'a>,
    pub skipped: std::collections::BTreeMap<i32, u64>,
    pub link_types: std::collections::BTreeSet<i32>,
    pub error: Option<CaptureError>,
    pub format: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        let mut r = Reader { buf, state: Format::Done, skipped: Default::default(), link_types: Default::default(), error: None, format: "pcap" };
        if buf.is_empty() {
            r.error = Some(CaptureError { offset: 0, message: "the file is empty (0 bytes): not a pcap or pcapng capture".into() });
            return r;
        }
        if buf.len() < 24 && buf[..4.min(buf.len())] != [0x0a, 0x0d, 0x0d, 0x0a][..4.min(buf.len())] && !is_pcap_magic(buf) {
            r.error = Some(CaptureError { offset: 0, message: "not a pcap or pcapng file (too short for a header)".into() });
            return r;
        }
        if buf.len() >= 4 && buf[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
            r.format = "pcapng";
            match PcapNGSlice::from_slice(buf) {
                Ok(slice) => r.state = Format::Ng { slice, ifaces: Vec::new(), consumed: 0, last_ts: 0 },
                Err(e) => r.error = Some(CaptureError { offset: 0, message: describe(&e) }),
            }
            return r;
        }
        match parse_pcap_header(buf) {
            Ok((rest, header)) if header.is_modified_format() => {
                let _ = rest;
                r.error = Some(CaptureError { offset: 0, message: "the Kuznetzov \"modified pcap\" format is not supported".into() });
            }
            Ok((rest, header)) => {
                let nanos = header.is_nanosecond_precision();
                if nanos {
                    r.format = "pcap (nanosecond)";
                }
                let frame: FrameParser = if header.is_bigendian() { parse_pcap_frame_be } else { parse_pcap_frame };
                r.state = Format::Legacy { rest, lt: header.network.0, nanos, frame };
            }
            Err(e) => r.error = Some(CaptureError { offset: 0, message: describe(&e) }),
        }
        r
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// What was read besides the records, with `records`, as a [`Capture`].
    pub fn into_capture(self, records: Vec<Record<'a>>) -> Capture<'a> {
        Capture { records, skipped: self.skipped, link_types: self.link_types, error: self.error, format: self.format }
    }

    fn stop(&mut self, offset: usize, message: String) -> Option<Record<'a>> {
        self.error = Some(CaptureError { offset, message });
        self.state = Format::Done;
        None
    }

    /// A record of link type `lt`, or `None` (counted) when it carries nothing to replay.
    fn record(&mut self, lt: i32, ts_ns: u64, data: &'a [u8]) -> Option<Record<'a>> {
        match to_ethernet(lt, data) {
            Some((data, outgoing)) => {
                self.link_types.insert(lt);
                Some(Record { ts_ns, data, outgoing })
            }
            None => {
                *self.skipped.entry(lt).or_default() += 1;
                None
            }
        }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        loop {
            match &mut self.state {
                Format::Done => return None,
                Format::Legacy { rest, lt, nanos, frame } => {
                    if rest.is_empty() {
                        self.state = Format::Done;
                        return None;
                    }
                    let (lt, nanos, at) = (*lt, *nanos, offset_of(self.buf, rest));
                    match frame(rest) {
                        Ok((r, b)) => {
                            *rest = r;
                            if b.caplen as usize > b.data.len() {
                                return self.stop(at, "corrupt record: captured length beyond the record".into());
                            }
                            let frac = if nanos { u64::from(b.ts_usec) } else { u64::from(b.ts_usec) * 1000 };
                            let ts = u64::from(b.ts_sec) * 1_000_000_000 + frac;
                            if let Some(rec) = self.record(lt, ts, &b.data[..b.caplen as usize]) {
                                return Some(rec);
                            }
                        }
                        Err(e) => return self.stop(at, describe(&e)),
                    }
                }
                Format::Ng { slice, ifaces, consumed, last_ts } => {
                    let block = match slice.next() {
                        None => {
                            self.state = Format::Done;
                            return None;
                        }
                        Some(Ok(PcapBlockOwned::NG(b))) => b,
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            let at = *consumed;
                            return self.stop(at, describe(&e));
                        }
                    };
                    *consumed += block_len(&block);
                    match block {
                        Block::SectionHeader(_) => ifaces.clear(),
                        Block::InterfaceDescription(idb) => {
                            ifaces.push(Iface { linktype: idb.linktype.0, resol: idb.ts_resolution().unwrap_or(1_000_000), offset_s: idb.if_tsoffset })
                        }
                        Block::EnhancedPacket(epb) => {
                            let at = *consumed - epb.block_len1 as usize;
                            let Some(ifc) = ifaces.get(epb.if_id as usize) else {
                                return self.stop(at, format!("packet on undeclared interface {}", epb.if_id));
                            };
                            if epb.caplen as usize > epb.data.len() {
                                return self.stop(at, "corrupt block: captured length beyond the block".into());
                            }
                            let raw = u128::from(epb.ts_high) << 32 | u128::from(epb.ts_low);
                            let ns = raw * 1_000_000_000 / u128::from(ifc.resol.max(1));
                            let ns = (ns as i128 + i128::from(ifc.offset_s) * 1_000_000_000).clamp(0, i128::from(u64::MAX)) as u64;
                            *last_ts = ns;
                            let lt = ifc.linktype;
                            if let Some(rec) = self.record(lt, ns, &epb.data[..epb.caplen as usize]) {
                                return Some(rec);
                            }
                        }
                        Block::SimplePacket(spb) => {
                            // No timestamp: it inherits the previous packet's.
                            let ts = *last_ts;
                            let n = (spb.origlen as usize).min(spb.data.len());
                            let Some(lt) = ifaces.first().map(|i| i.linktype) else {
                                let at = *consumed - spb.block_len1 as usize;
                                return self.stop(at, "simple packet block before any interface description".into());
                            };
                            if let Some(rec) = self.record(lt, ts, &spb.data[..n]) {
                                return Some(rec);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
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
    pub fn new(out: W, nanos: bool) -> std::io::Result<Self> {
        Self::with_link_type(out, nanos, link::ETHERNET)
    }

    /// A pcap file of another link type (frames are written as given).
    pub fn with_link_type(mut out: W, nanos: bool, link_type: i32) -> std::io::Result<Self> {
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        out.write_all(&magic.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&65_535u32.to_le_bytes())?;
        out.write_all(&link_type.to_le_bytes())?;
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

/// An Ethernet frame as link type `lt` carries it (`outgoing`: the capturing host sent
/// it): for tests and converting generated traffic. Other link types: unchanged.
pub fn encapsulate(lt: i32, eth: &[u8], outgoing: bool) -> Vec<u8> {
    let et = u16::from_be_bytes([eth[12], eth[13]]);
    let ip = &eth[14..];
    let mut f = Vec::new();
    match lt {
        link::RAW | link::IPV4 | link::IPV6 | link::RAW_OLD => {}
        link::NULL => f.extend_from_slice(&(if et == ETH_IPV6 { 30u32 } else { 2 }).to_le_bytes()),
        link::LOOP => f.extend_from_slice(&(if et == ETH_IPV6 { 24u32 } else { 2 }).to_be_bytes()),
        link::LINUX_SLL => {
            f.extend_from_slice(&(if outgoing { 4u16 } else { 0 }).to_be_bytes());
            f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
            f.extend_from_slice(&6u16.to_be_bytes());
            f.extend_from_slice(&eth[6..12]);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&et.to_be_bytes());
        }
        link::LINUX_SLL2 => {
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&3u32.to_be_bytes()); // ifindex
            f.extend_from_slice(&1u16.to_be_bytes());
            f.push(if outgoing { 4 } else { 0 });
            f.push(6);
            f.extend_from_slice(&eth[6..12]);
            f.extend_from_slice(&[0, 0]);
        }
        _ => return eth.to_vec(),
    }
    f.extend_from_slice(ip);
    f
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
        assert_eq!(&c.records[1].data[..], &[2u8; 70][..]);
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
    fn cooked_raw_and_loopback_captures_become_ethernet_frames() {
        let eth = holdfast_pipeline::wire::build::FrameSpec::tcp("10.0.2.1".parse().unwrap(), 80, "198.51.100.7".parse().unwrap(), 40000, 0x12, 5, 6).build();
        let v6 = holdfast_pipeline::wire::build::FrameSpec::tcp("2001:db8::1".parse().unwrap(), 80, "2001:db8::2".parse().unwrap(), 40000, 0x12, 5, 6).build();
        for lt in [link::RAW, link::RAW_OLD, link::NULL, link::LOOP, link::LINUX_SLL, link::LINUX_SLL2] {
            for (frame, out) in [(&eth, true), (&v6, false)] {
                let mut w = Writer::with_link_type(Vec::new(), false, lt).unwrap();
                w.write(1_000_000_000, &encapsulate(lt, frame, out)).unwrap();
                let b = w.finish().unwrap();
                let c = parse(&b);
                assert!(c.error.is_none() && c.skipped.is_empty(), "{lt}: {c:?}");
                assert_eq!(c.records.len(), 1, "{lt}");
                let r = &c.records[0];
                assert_eq!(&r.data[12..], &frame[12..], "{lt}: EtherType and IP packet as captured");
                let cooked = matches!(lt, link::LINUX_SLL | link::LINUX_SLL2);
                assert_eq!(r.outgoing, cooked.then_some(out), "{lt}: direction");
            }
        }
        // A link type that cannot be replayed is skipped, named, with what to do.
        let mut w = Writer::with_link_type(Vec::new(), false, 105).unwrap();
        w.write(1, &[0u8; 40]).unwrap();
        let b = w.finish().unwrap();
        let c = parse(&b);
        assert_eq!(c.records.len(), 0);
        let note = c.skipped_note().unwrap();
        assert!(note.contains("105 IEEE802_11") && note.contains("tcpdump -i any"), "{note}");
        // Raw captures of something that is not IP are counted, not guessed at.
        let mut w = Writer::with_link_type(Vec::new(), false, link::RAW).unwrap();
        w.write(1, &[0x50u8; 40]).unwrap();
        let b = w.finish().unwrap();
        assert_eq!(parse(&b).skipped[&link::RAW], 1);
    }

    #[test]
    fn an_empty_file_is_called_empty_not_truncated() {
        let c = parse(&[]);
        assert!(c.error.unwrap().message.contains("empty"));
        let c = parse(b"abc");
        assert!(c.error.unwrap().message.contains("not a pcap"));
        // A header and no packets is a valid, empty capture.
        let b = Writer::new(Vec::new(), false).unwrap().finish().unwrap();
        let c = parse(&b);
        assert!(c.error.is_none() && c.records.is_empty());
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
