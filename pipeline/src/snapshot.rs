//! The snapshot format: a table's flows and tombstones as bytes, so that a restart
//! keeps every connection (docs/snapshots.md). Pure: the caller reads and writes the
//! file; this module builds and checks every byte of it.
//!
//! ```text
//! header   72 bytes   magic "HFSNAP\r\n", format version, header length, seed policy,
//!                     seed, wall-clock time written, workers, tombstone sets, flow
//!                     and tombstone counts, build, CRC-32 of the 68 bytes before it
//! block    16 bytes   kind (1 flows, 2 tombstones, 3 end), worker, count, payload
//!                     length, CRC-32 of the payload; then the payload
//! ...
//! end      a block of kind 3 with no payload: without it the file is truncated
//! ```
//!
//! Integers are little-endian. A flow record holds the canonical key and everything
//! tracking keeps, with every time as an age (ticks before the snapshot), never as a
//! tick of the old process's clock; a tombstone record holds its set, fingerprint, age,
//! reason and class. Every field is checked on the way in: a record no running engine
//! could have produced is an error that names the byte.

use crate::conntrack::conn::{Conn, ConnAux, ConnStats, Peer, aux_flag, cflag};
use crate::conntrack::pressure::Admission;
use crate::conntrack::tcp;
use crate::conntrack::timeouts::TimerClass;
use crate::flow::FlowKey;
use crate::parse::proto;

/// The format this build writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;
pub const MAGIC: [u8; 8] = *b"HFSNAP\r\n";
pub const HEADER_LEN: usize = 72;
pub const BLOCK_HEADER_LEN: usize = 16;
/// Records per block the writer puts in one block.
pub const RECORDS_PER_BLOCK: usize = 1024;
/// The largest payload a reader accepts: a block of the largest records, rounded up.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Bytes of an IPv4 and an IPv6 flow record, and of a tombstone record.
pub const FLOW_V4: usize = 111;
pub const FLOW_V6: usize = FLOW_V4 + 24;
pub const TOMB: usize = 14;
/// A flow record's timer byte: bit 6 says the entry is charged to the key's `hi`
/// address (bits 0..4 timer class, 4..6 the class code, 7 zero).
const OLD_CHARGED_HI: u8 = 0x40;

/// `seed_policy` 1: the hash seed travels with the table, so that the restarted process
/// hashes flows and tombstones as the stopped one did. The file is therefore as secret
/// as the seed (mode 0600). Written by builds whose `FlowHasher` mixed with foldhash's
/// public constants; still read: flows are hashed again from their keys, but
/// tombstones (fingerprints of the old hash) cannot be and are dropped, counted.
pub const SEED_CARRIED: u8 = 1;
/// `seed_policy` 2: as 1, and the hash's constants are drawn from the seed as well
/// (`FlowHasher`, see there): what this build writes.
pub const SEED_AND_CONSTANTS_CARRIED: u8 = 2;

/// What is wrong with a snapshot, with the offset of the byte that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    NotASnapshot,
    Version { found: u16 },
    HeaderChecksum,
    BadHeader { what: &'static str },
    BlockChecksum { offset: u64 },
    BadBlock { offset: u64, what: &'static str },
    BadRecord { offset: u64, what: &'static str },
    Truncated { offset: u64 },
    Counts { what: &'static str, header: u64, found: u64 },
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FormatError::NotASnapshot => write!(f, "not a Holdfast snapshot (bytes 0..8 are not the magic \"HFSNAP\\r\\n\")"),
            FormatError::Version { found } => write!(f, "snapshot format version {found} (bytes 8..10), this build reads version {FORMAT_VERSION} only"),
            FormatError::HeaderChecksum => write!(f, "the header's checksum (bytes 68..72) does not match: the file is damaged"),
            FormatError::BadHeader { what } => write!(f, "bad header: {what}"),
            FormatError::BlockChecksum { offset } => write!(f, "the block at byte {offset} fails its checksum: the file is damaged"),
            FormatError::BadBlock { offset, what } => write!(f, "bad block at byte {offset}: {what}"),
            FormatError::BadRecord { offset, what } => write!(f, "bad record at byte {offset}: {what}"),
            FormatError::Truncated { offset } => write!(f, "the file ends at byte {offset} before its end block: it is truncated"),
            FormatError::Counts { what, header, found } => write!(f, "the header announces {header} {what}, the blocks hold {found}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// The file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`SEED_AND_CONSTANTS_CARRIED`] when written by this build; [`SEED_CARRIED`]
    /// from an older one, whose tombstones this build cannot use.
    pub seed_policy: u8,
    pub seed: u64,
    /// When it was written, in nanoseconds since the Unix epoch (wall clock).
    pub written_unix_ns: u64,
    /// Workers of the process that wrote it.
    pub workers: u16,
    /// Tombstone sets per worker in that process (its records restore only into
    /// engines with as many sets).
    pub tomb_sets: u32,
    pub flows: u64,
    pub tombstones: u64,
    /// The writer's version, NUL-padded.
    pub build: [u8; 12],
}

impl Header {
    /// This build's name for the header.
    pub fn this_build() -> [u8; 12] {
        let mut b = [0u8; 12];
        let v = env!("CARGO_PKG_VERSION").as_bytes();
        let n = v.len().min(12);
        b[..n].copy_from_slice(&v[..n]);
        b
    }

    pub fn build_str(&self) -> String {
        String::from_utf8_lossy(&self.build).trim_end_matches('\0').to_string()
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[12] = self.seed_policy;
        h[16..24].copy_from_slice(&self.seed.to_le_bytes());
        h[24..32].copy_from_slice(&self.written_unix_ns.to_le_bytes());
        h[32..34].copy_from_slice(&self.workers.to_le_bytes());
        h[36..40].copy_from_slice(&self.tomb_sets.to_le_bytes());
        h[40..48].copy_from_slice(&self.flows.to_le_bytes());
        h[48..56].copy_from_slice(&self.tombstones.to_le_bytes());
        h[56..68].copy_from_slice(&self.build);
        let crc = crc32fast::hash(&h[..68]);
        h[68..72].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8]) -> Result<Header, FormatError> {
        if h.len() < 10 || h[0..8] != MAGIC {
            return Err(if h.len() < 8 || h[0..8] != MAGIC { FormatError::NotASnapshot } else { FormatError::Truncated { offset: h.len() as u64 } });
        }
        let version = u16_at(h, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version { found: version });
        }
        if h.len() < HEADER_LEN {
            return Err(FormatError::Truncated { offset: h.len() as u64 });
        }
        if u32_at(h, 68) != crc32fast::hash(&h[..68]) {
            return Err(FormatError::HeaderChecksum);
        }
        if usize::from(u16_at(h, 10)) != HEADER_LEN {
            return Err(FormatError::BadHeader { what: "header length (bytes 10..12) is not 72" });
        }
        if !matches!(h[12], SEED_CARRIED | SEED_AND_CONSTANTS_CARRIED) || h[13..16] != [0; 3] || h[34..36] != [0; 2] {
            return Err(FormatError::BadHeader { what: "unknown seed policy or non-zero padding (bytes 12..16, 34..36)" });
        }
        let workers = u16_at(h, 32);
        if workers == 0 {
            return Err(FormatError::BadHeader { what: "zero workers (bytes 32..34)" });
        }
        let mut build = [0u8; 12];
        build.copy_from_slice(&h[56..68]);
        Ok(Header {
            seed_policy: h[12],
            seed: u64_at(h, 16),
            written_unix_ns: u64_at(h, 24),
            workers,
            tomb_sets: u32_at(h, 36),
            flows: u64_at(h, 40),
            tombstones: u64_at(h, 48),
            build,
        })
    }
}

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Flows = 1,
    Tombstones = 2,
    End = 3,
}

/// A block's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub kind: BlockKind,
    /// The worker whose table it came from.
    pub worker: u16,
    pub count: u32,
    pub len: u32,
    pub crc: u32,
}

impl Block {
    /// The header of a block holding `payload`.
    pub fn of(kind: BlockKind, worker: u16, count: u32, payload: &[u8]) -> Block {
        Block { kind, worker, count, len: payload.len() as u32, crc: crc32fast::hash(payload) }
    }

    pub fn encode(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut b = [0u8; BLOCK_HEADER_LEN];
        b[0] = self.kind as u8;
        b[2..4].copy_from_slice(&self.worker.to_le_bytes());
        b[4..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes a block header found at `offset` of a file written by `workers`
    /// workers; its payload is checked by [`Block::check`].
    pub fn decode(b: &[u8; BLOCK_HEADER_LEN], offset: u64, workers: u16) -> Result<Block, FormatError> {
        let bad = |what| FormatError::BadBlock { offset, what };
        let kind = match b[0] {
            1 => BlockKind::Flows,
            2 => BlockKind::Tombstones,
            3 => BlockKind::End,
            _ => return Err(bad("unknown kind (byte 0)")),
        };
        if b[1] != 0 {
            return Err(bad("non-zero padding (byte 1)"));
        }
        let blk = Block { kind, worker: u16_at(b, 2), count: u32_at(b, 4), len: u32_at(b, 8), crc: u32_at(b, 12) };
        if blk.worker >= workers {
            return Err(bad("worker (bytes 2..4) beyond the header's worker count"));
        }
        if blk.len as usize > MAX_PAYLOAD {
            return Err(bad("payload length (bytes 8..12) over 256 KiB"));
        }
        let fits = match kind {
            BlockKind::End => blk.count == 0 && blk.len == 0,
            BlockKind::Tombstones => blk.len as usize == blk.count as usize * TOMB,
            // Each record is FLOW_V4 or FLOW_V6 bytes.
            BlockKind::Flows => {
                let (n, l) = (blk.count as usize, blk.len as usize);
                l >= n * FLOW_V4 && l <= n * FLOW_V6
            }
        };
        if !fits {
            return Err(bad("payload length (bytes 8..12) does not fit its record count (bytes 4..8)"));
        }
        Ok(blk)
    }

    /// Checks `payload` against the checksum.
    pub fn check(&self, payload: &[u8], offset: u64) -> Result<(), FormatError> {
        if payload.len() != self.len as usize || crc32fast::hash(payload) != self.crc {
            return Err(FormatError::BlockChecksum { offset });
        }
        Ok(())
    }
}

/// A record the format writes: a flow or a tombstone.
pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

impl Encode for FlowRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        FlowRecord::encode(self, out)
    }
}

impl Encode for TombRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        TombRecord::encode(self, out)
    }
}

/// `records` encoded a block's worth at a time: (count, bytes) with at most
/// [`RECORDS_PER_BLOCK`] records each — the payloads of a file's blocks, and the
/// chunks a running worker hands over.
pub fn chunks<R: Encode>(mut records: impl Iterator<Item = R>) -> impl Iterator<Item = (usize, Vec<u8>)> {
    core::iter::from_fn(move || {
        let (mut n, mut bytes) = (0, Vec::new());
        for r in records.by_ref() {
            r.encode(&mut bytes);
            n += 1;
            if n == RECORDS_PER_BLOCK {
                break;
            }
        }
        (n > 0).then_some((n, bytes))
    })
}

/// One flow as a snapshot holds it: the entry with its times as ages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub(crate) conn: Conn,
    pub(crate) stats: ConnStats,
    pub(crate) aux: ConnAux,
    /// Ticks since the last packet.
    pub(crate) idle: u32,
    /// Ticks since the flow was created.
    pub(crate) age: u32,
    /// UDP, ICMP, others: ticks since the stream began (Linux `stream_ts`).
    pub(crate) stream_age: u32,
}

impl FlowRecord {
    /// Ticks since the flow's last packet when the snapshot was taken.
    pub fn idle_ticks(&self) -> u32 {
        self.idle
    }

    pub fn encoded_len(&self) -> usize {
        if self.key.v6 { FLOW_V6 } else { FLOW_V4 }
    }

    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let c = &self.conn;
        let k = &self.key;
        out.push(u8::from(k.v6));
        if k.v6 {
            out.extend_from_slice(&k.addr[0].to_le_bytes());
            out.extend_from_slice(&k.addr[1].to_le_bytes());
        } else {
            out.extend_from_slice(&(k.addr[0] as u32).to_le_bytes());
            out.extend_from_slice(&(k.addr[1] as u32).to_le_bytes());
        }
        out.extend_from_slice(&k.port[0].to_le_bytes());
        out.extend_from_slice(&k.port[1].to_le_bytes());
        out.push(k.proto);
        out.extend_from_slice(&k.vlan.to_le_bytes()[..3]);
        // The origin zone and an ICMP flow's type travel in bytes of their own (the
        // format from before they moved into the entry's spare bit and its key).
        // The timer byte in its layout from before the fifth admission class: timer
        // class, two-bit class code (restore derives the class again), charged side.
        let timer = c.timer & 0x0f | c.admission().code() << 4 | if c.charged() == 1 { OLD_CHARGED_HI } else { 0 };
        out.extend_from_slice(&[c.state, c.flags & !cflag::REFERENCED, timer, c.scales, c.pflags[0], c.pflags[1]]);
        out.extend_from_slice(&c.retrans_fp.to_le_bytes());
        for p in &c.peer {
            for v in [p.end, p.maxend, p.maxwin] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for v in [c.maxack[0], c.maxack[1], c.last_end, self.idle, self.age, self.stream_age] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let packets = self.stats.packets();
        for v in [packets[0], packets[1], self.stats.bytes[0], self.stats.bytes[1]] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let a = &self.aux;
        out.extend_from_slice(&a.last_win.to_le_bytes());
        let icmp_type = c.icmp_type().unwrap_or(0);
        out.extend_from_slice(&[a.last_wscale, a.last_flags & !aux_flag::ORIGIN_INSIDE, icmp_type, u8::from(a.origin_inside())]);
    }

    /// Decodes the record at the start of `b` (found at file offset `offset`) and
    /// says how many bytes it took. Strict: every field must be one an engine could
    /// have written.
    pub fn decode(b: &[u8], offset: u64) -> Result<(FlowRecord, usize), FormatError> {
        let bad = |at: usize, what| FormatError::BadRecord { offset: offset + at as u64, what };
        let Some(&kind) = b.first() else { return Err(FormatError::Truncated { offset }) };
        if kind > 1 {
            return Err(bad(0, "address family byte is neither 0 (IPv4) nor 1 (IPv6)"));
        }
        let v6 = kind == 1;
        let len = if v6 { FLOW_V6 } else { FLOW_V4 };
        if b.len() < len {
            return Err(FormatError::BadRecord { offset, what: "the record runs past its block" });
        }
        let mut r = Reader { b, at: 1 };
        let addr = if v6 { [r.u128(), r.u128()] } else { [u128::from(r.u32()), u128::from(r.u32())] };
        let port = [r.u16(), r.u16()];
        let proto_at = r.at;
        let p = r.u8();
        let vlan = u32::from(r.u8()) | u32::from(r.u8()) << 8 | u32::from(r.u8()) << 16;
        let key = FlowKey { addr, port, proto: p, v6, vlan };
        // Keys are canonical: a non-canonical one would never be found again.
        let canonical = match p {
            proto::TCP | proto::UDP => (addr[0], port[0]) <= (addr[1], port[1]),
            proto::ICMP | proto::ICMPV6 => addr[0] <= addr[1],
            _ => addr[0] <= addr[1] && port == [0, 0],
        };
        if !canonical {
            return Err(bad(proto_at, "the key is not in canonical order (or ports on a protocol without them)"));
        }
        let state_at = r.at;
        let mut c = Conn {
            addr: if v6 { [0, 0] } else { [addr[0] as u32, addr[1] as u32] },
            port,
            proto_vlan: u32::from(p) << 24 | vlan,
            state: r.u8(),
            flags: r.u8(),
            timer: r.u8(),
            scales: r.u8(),
            pflags: [r.u8(), r.u8()],
            retrans_fp: r.u16(),
            ..Conn::default()
        };
        for d in 0..2 {
            c.peer[d] = Peer { end: r.u32(), maxend: r.u32(), maxwin: r.u32() };
        }
        c.maxack = [r.u32(), r.u32()];
        c.last_end = r.u32();
        let (idle, age, stream_age) = (r.u32(), r.u32(), r.u32());
        let counts_at = r.at;
        let (packets, bytes) = ([r.u64(), r.u64()], [r.u64(), r.u64()]);
        if let Some(d) = packets.iter().position(|&p| p > ConnStats::MAX_PACKETS) {
            return Err(bad(counts_at + 8 * d, "packet count above 2^48 - 1, the most an entry counts"));
        }
        let stats = ConnStats::with_counts(packets, bytes, 0);
        let aux_at = r.at;
        // In field order: the reader's calls are the record's bytes.
        let mut aux = ConnAux { last_win: r.u16(), last_wscale: r.u8(), last_flags: r.u8() };
        let icmp_type = r.u8();
        let origin_inside = r.u8() == 1;
        if b[aux_at + 5] > 1 {
            return Err(bad(aux_at + 5, "origin zone is neither 0 nor 1"));
        }
        debug_assert_eq!(r.at, len);
        // The entry's own bytes.
        if c.has(cflag::V6) != v6 {
            return Err(bad(state_at + 1, "the IPv6 flag disagrees with the address family"));
        }
        if c.has(cflag::REFERENCED) {
            return Err(bad(state_at + 1, "the eviction clock's bit is set (writers clear it)"));
        }
        if p == proto::TCP {
            if !tcp::state_bits_valid(c.state) {
                return Err(bad(state_at, "not a TCP state"));
            }
        } else if c.state > 1 {
            return Err(bad(state_at, "a non-TCP flow's state is neither 0 (unreplied) nor 1 (replied)"));
        }
        let class = c.timer & 0x0f;
        if usize::from(class) >= TimerClass::COUNT || !TimerClass::from_u8(class).fits(p) {
            return Err(bad(state_at + 2, "a timer class unknown or of another protocol"));
        }
        if c.timer & 0x80 != 0 {
            return Err(bad(state_at + 2, "unknown timer bits"));
        }
        // The class code and the charged side move to where the entry keeps them
        // (restore derives the class again from the state).
        let old = c.timer;
        c.timer = old & 0x0f;
        c.set_admission(Admission::from_code(old >> 4, p == proto::TCP));
        c.set_charged(old & OLD_CHARGED_HI != 0);
        if c.scale(0) > 14 || c.scale(1) > 14 {
            return Err(bad(state_at + 3, "a window scale over 14"));
        }
        if (c.pflags[0] | c.pflags[1]) & 0xc0 != 0 {
            return Err(bad(state_at + 4, "unknown per-direction TCP flags"));
        }
        if icmp_type != c.icmp_type().unwrap_or(0) {
            return Err(bad(aux_at + 4, "the ICMP type disagrees with the key (or a flow of another protocol has one)"));
        }
        if aux.last_flags & aux_flag::ORIGIN_INSIDE != 0 {
            return Err(bad(aux_at + 3, "unknown annotation flags"));
        }
        aux.set_origin_inside(origin_inside);
        Ok((FlowRecord { key, conn: c, stats, aux, idle, age, stream_age }, len))
    }
}

/// One tombstone as a snapshot holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombRecord {
    pub(crate) set: u32,
    pub(crate) fp: u32,
    /// Ticks since the flow went away.
    pub(crate) age: u32,
    pub(crate) why: u8,
    pub(crate) class: u8,
}

impl TombRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.set, self.fp, self.age] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[self.why, self.class]);
    }

    /// Decodes the record at the start of `b` (`TOMB` bytes) for a table of `sets`
    /// tombstone sets.
    pub fn decode(b: &[u8], offset: u64, sets: u32) -> Result<TombRecord, FormatError> {
        let bad = |at: u64, what| FormatError::BadRecord { offset: offset + at, what };
        if b.len() < TOMB {
            return Err(FormatError::BadRecord { offset, what: "the record runs past its block" });
        }
        let t = TombRecord { set: u32_at(b, 0), fp: u32_at(b, 4), age: u32_at(b, 8), why: b[12], class: b[13] };
        if t.set >= sets {
            return Err(bad(0, "tombstone set beyond the header's set count"));
        }
        if t.fp & 1 == 0 {
            return Err(bad(4, "tombstone fingerprint without its low bit (never written)"));
        }
        if crate::conntrack::tombstones::Why::from_u8(t.why).is_none() {
            return Err(bad(12, "tombstone reason unknown"));
        }
        if t.class > 3 {
            return Err(bad(13, "admission class unknown"));
        }
        Ok(t)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
