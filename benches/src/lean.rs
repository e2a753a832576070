//! A lean reference for issue 11's P1 and P2: the work Linux-equal tracking of an
//! established flow's ACK needs and nothing else, written plainly in the layout with
//! the fewest memory reads, timed over the same frames as the pipeline. It answers
//! two questions the pipeline alone cannot: how far the pipeline is from a design
//! that does only the necessary work, and whether P1 and P2 are within this
//! machine's reach at all.
//!
//! Per packet it does what the pipeline's fast path does and nothing it could skip:
//! the untagged IPv4 checks with the header checksum, the canonical key and the same
//! seeded hash, the entry found and its key compared, the expiry check, Linux's four
//! window clauses and peer updates with the retransmission fingerprint
//! (`tcp::fast_established`), the timeout choice, the refresh, per-flow and global
//! counters. Its layout is the one-line-per-packet table issue 11's notes call for:
//! one 64-byte line an entry holding its key, found by linear probing at a load of at
//! most a quarter (no separate index, no tag), so a packet touches one line of the
//! table (two with per-flow counters) but for the few keys displaced; lines are
//! prefetched [`AHEAD`] packets before they are judged.
//!
//! It is not a firewall and not a design to adopt as it stands: it takes only
//! untagged IPv4 TCP segments whose only control flag is ACK, without SACK blocks, of
//! entries set up established by [`Lean::new`]; every other packet is "not taken"
//! (the pipeline's general path would judge it). There are no timers beyond the
//! expiry check on contact (a real table also needs a sweep or a wheel), no admission
//! classes, tombstones, policy, IPv6, VLANs, snapshots or sync, and the table may not
//! be filled beyond a quarter (256 B of lines a flow at 1M flows, and 128 more for the
//! counters, against the pipeline's 128 B for everything). Nor is it a proven
//! minimum: it is plain Rust, not hand-scheduled, and counts ~390 instructions a
//! packet (docs/performance.md).

use holdfast_pipeline::flow::order_v4;
use holdfast_pipeline::wire::ipv4_header_checksum_ok;
use holdfast_pipeline::{FlowHasher, prefetch};

use crate::{ACK, flow};

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
/// Linux `MAXACKWINCONST`.
const MAX_ACK_WIN_CONST: u32 = 66_000;
/// Linux `tcp_max_retrans`.
const MAX_RETRANS: u8 = 3;
/// Lines looked at before a key is taken for absent: a bound on the packet path's
/// loop that does not depend on the table's contents.
const PROBES: usize = 16;
/// Prefetch distance in packets.
const AHEAD: usize = 16;

/// TCP ESTABLISHED in the state byte's low bits, ACK as the last index (bits 4..7),
/// as the pipeline stores them.
const ESTABLISHED: u8 = 3;
const INDEX_ACK: u8 = 3;

/// `Line::flags`.
const SEEN_REPLY: u8 = 1;
const ASSURED: u8 = 2;
const LAST_WIN_ZERO: u8 = 4;
/// The canonical key's `hi` endpoint opened the connection: ORIGINAL is `hi`.
const ORIGINAL_IS_HI: u8 = 8;

/// `Line::peer_flags`: window scale in bits 0..4, then these.
const SACK_PERM: u8 = 0x10;
const DATA_UNACKNOWLEDGED: u8 = 0x20;
const MAXACK_SET: u8 = 0x40;

/// Timeout classes (`Line::retrans_class` bits 4..8) and their timeouts in the
/// pipeline's ticks of 1/64 s, Linux's defaults.
const CLASS_ESTABLISHED: u8 = 0;
const CLASS_RETRANS: u8 = 1;
const CLASS_UNACK: u8 = 2;
const TIMEOUTS: [u32; 3] = [432_000 * 64, 300 * 64, 300 * 64];

/// One entry in one cache line: key and connection state.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, Default)]
struct Line {
    /// The canonical endpoints as `addr << 16 | port`, protocol in bits 48..56; an
    /// empty line has `lo == 0`.
    lo: u64,
    hi: u64,
    /// Linux `td_end`, `td_maxend`, `td_maxwin` by direction (0 original, 1 reply).
    end: [u32; 2],
    maxend: [u32; 2],
    maxwin: [u32; 2],
    maxack: [u32; 2],
    last_seen: u32,
    last_end: u32,
    /// TCP state (bits 0..4), last index (4..7), last direction (bit 7).
    state: u8,
    flags: u8,
    peer_flags: [u8; 2],
    /// Identical retransmissions (bits 0..4, saturating) and timeout class (4..8).
    retrans_class: u8,
    _pad: u8,
    /// The last in-window ACK's fingerprint (`window::fingerprint`).
    fp: u16,
}

const _: () = assert!(size_of::<Line>() == 64);

/// A frame's fields, parsed in stage 1.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    ok: bool,
    from_hi: bool,
    flags: u8,
    opt_len: u8,
    win: u16,
    lo: u64,
    hi: u64,
    h: u64,
    seq: u32,
    ack: u32,
    payload: u32,
    ip_len: u32,
}

/// What [`Lean::run`] made of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// An in-window ACK of an established entry: passed, state updated.
    Pass,
    /// Anything else, the entry untouched: the general path's work.
    NotTaken,
}

/// The reference's table and counters.
pub struct Lean {
    lines: Vec<Line>,
    /// Per-flow packets and bytes by direction, when kept.
    stats: Vec<[u64; 4]>,
    hasher: FlowHasher,
    /// Global: packets, bytes, passed.
    pub packets: u64,
    pub bytes: u64,
    pub passed: u64,
    staged: Vec<Meta>,
}

#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The pipeline's retransmission fingerprint (`window::fingerprint`).
#[inline]
fn fingerprint(dir: usize, seq: u32, ack: u32, end: u32, win: u16) -> u16 {
    let x = (u64::from(seq) << 32 | u64::from(ack)) ^ (u64::from(end) << 16 | u64::from(win)) ^ dir as u64;
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u16
}

impl Lean {
    /// A table holding the bench's flows `0..flows` (`crate::flow`) as the pipeline
    /// holds them after their handshake (SYN, SYN/ACK, ACK, windows of 502, no
    /// options), last seen at `now` (ticks), at most a quarter full; `accounting`: per-flow
    /// counters kept.
    pub fn new(flows: u32, accounting: bool, now: u32) -> Lean {
        let n = (4 * flows as usize).next_power_of_two().max(64);
        let mut lines: Vec<Line> = Vec::with_capacity(n);
        holdfast_dataplane::sys::advise_huge_pages(&[(lines.as_ptr() as usize, n * size_of::<Line>())]);
        lines.resize(n, Line::default());
        let mut stats: Vec<[u64; 4]> = Vec::new();
        if accounting {
            stats.reserve_exact(n);
            holdfast_dataplane::sys::advise_huge_pages(&[(stats.as_ptr() as usize, n * 32)]);
            stats.resize(n, [0; 4]);
        }
        let mut c = Lean { lines, stats, hasher: FlowHasher::new(0x5eed), packets: 0, bytes: 0, passed: 0, staged: vec![Meta::default(); 64] };
        for i in 0..flows {
            let (client, cport, server, ci, si) = flow(i);
            let (lo, hi, client_is_hi) = canonical(client, cport, server, 80);
            let h = c.hash(lo, hi);
            // What the handshake leaves (worked through Linux's tcp_in_window by hand,
            // and checked against the pipeline by `agrees_with_the_pipeline`).
            let line = Line {
                lo,
                hi,
                end: [ci.wrapping_add(1), si.wrapping_add(1)],
                maxend: [ci.wrapping_add(503), si.wrapping_add(503)],
                maxwin: [502, 502],
                maxack: [si.wrapping_add(1), ci.wrapping_add(1)],
                last_seen: now,
                last_end: ci.wrapping_add(1),
                state: ESTABLISHED | INDEX_ACK << 4,
                flags: SEEN_REPLY | ASSURED | if client_is_hi { ORIGINAL_IS_HI } else { 0 },
                peer_flags: [MAXACK_SET; 2],
                retrans_class: CLASS_ESTABLISHED << 4,
                _pad: 0,
                fp: 0,
            };
            let at = (0..PROBES).map(|p| c.place(h, p)).find(|&at| c.lines[at].lo == 0).expect("a table at most a quarter full has room");
            c.lines[at] = line;
        }
        c
    }

    #[inline(always)]
    fn hash(&self, lo: u64, hi: u64) -> u64 {
        self.hasher.hash_v4((lo >> 16) as u32, (hi >> 16) as u32, [lo as u16, hi as u16], 6, 0)
    }

    /// The `p`th line a key with hash `h` may sit in.
    #[inline(always)]
    fn place(&self, h: u64, p: usize) -> usize {
        ((h as usize).wrapping_add(p)) & (self.lines.len() - 1)
    }

    /// Bytes the table and counters allocate, per flow slot.
    pub fn bytes_per_line(&self) -> usize {
        size_of::<Line>() + if self.stats.is_empty() { 0 } else { 32 }
    }

    /// Judges a burst of at most 64 frames at `now` (ticks of 1/64 s): stage 1 parses,
    /// hashes and prefetches every frame's line (and counters), stage 2 judges.
    pub fn run(&mut self, frames: &[&[u8]], now: u32, out: &mut [Judged]) {
        assert!(frames.len() <= 64 && out.len() == frames.len(), "a burst of at most 64, a verdict each");
        let mut staged = std::mem::take(&mut self.staged);
        let n = frames.len();
        for (f, m) in frames.iter().zip(staged.iter_mut()) {
            m.ok = parse(f, m);
            if m.ok {
                m.h = self.hash(m.lo, m.hi);
            }
        }
        // Lines prefetched `AHEAD` packets before they are judged: enough to cover a
        // miss, few enough to stay within the core's miss buffers.
        for m in &staged[..n.min(AHEAD)] {
            if m.ok {
                self.prefetch(m.h);
            }
        }
        let mut bytes = 0;
        for (i, m) in staged[..n].iter().enumerate() {
            if let Some(ahead) = staged.get(i + AHEAD)
                && i + AHEAD < n
                && ahead.ok
            {
                self.prefetch(ahead.h);
            }
            let v = if m.ok { self.judge(m, now) } else { Judged::NotTaken };
            self.passed += u64::from(v == Judged::Pass);
            bytes += frames[i].len() as u64;
            out[i] = v;
        }
        self.packets += frames.len() as u64;
        self.bytes += bytes;
        self.staged = staged;
    }

    #[inline(always)]
    fn prefetch(&self, h: u64) {
        let at = self.place(h, 0);
        prefetch(&self.lines[at]);
        if let Some(s) = self.stats.get(at) {
            prefetch(s);
        }
    }

    #[inline(always)]
    fn judge(&mut self, m: &Meta, now: u32) -> Judged {
        let mut at = None;
        for p in 0..PROBES {
            let a = self.place(m.h, p);
            let l = &self.lines[a];
            if l.lo == m.lo && l.hi == m.hi {
                at = Some(a);
                break;
            }
            if l.lo == 0 {
                break;
            }
        }
        let Some(at) = at else { return Judged::NotTaken };
        let c = &mut self.lines[at];
        if now.wrapping_sub(c.last_seen) >= TIMEOUTS[usize::from(c.retrans_class >> 4).min(2)] {
            return Judged::NotTaken; // expired: the general path retires it
        }
        const NEED: u8 = SEEN_REPLY | ASSURED;
        if c.state & 0x0f != ESTABLISHED || c.flags & NEED != NEED || m.flags & (SYN | FIN | RST | ACK) != ACK {
            return Judged::NotTaken;
        }
        let s = usize::from(m.from_hi ^ (c.flags & ORIGINAL_IS_HI != 0));
        let r = 1 - s;
        if c.maxwin[s] == 0 || c.maxwin[r] == 0 || (m.opt_len != 0 && c.peer_flags[r] & SACK_PERM != 0) {
            return Judged::NotTaken;
        }
        let (seq, ack) = (m.seq, m.ack);
        let end = seq.wrapping_add(m.payload);
        let max_ack_window = c.maxwin[s].max(MAX_ACK_WIN_CONST);
        let in_window = before(seq, c.maxend[s].wrapping_add(1))
            && before(ack, c.end[r].wrapping_add(1))
            && after(end, c.end[s].wrapping_sub(c.maxwin[r]).wrapping_sub(1))
            && after(ack, c.end[r].wrapping_sub(max_ack_window).wrapping_sub(1));
        if !in_window {
            return Judged::NotTaken;
        }
        // Linux's peer updates (the pipeline's `update_peers`) for an ACK without SACK.
        let win = u32::from(m.win) << (c.peer_flags[s] & 0x0f);
        if c.maxwin[s] < win {
            c.maxwin[s] = win;
        }
        if after(end, c.end[s]) {
            c.end[s] = end;
            c.peer_flags[s] |= DATA_UNACKNOWLEDGED;
        }
        if c.peer_flags[s] & MAXACK_SET == 0 {
            c.maxack[s] = ack;
            c.peer_flags[s] |= MAXACK_SET;
        } else if after(ack, c.maxack[s]) {
            c.maxack[s] = ack;
        }
        if c.maxwin[r] != 0 && after(end, c.maxend[s]) {
            c.maxwin[r] = c.maxwin[r].wrapping_add(end.wrapping_sub(c.maxend[s]));
        }
        if after(ack.wrapping_add(win), c.maxend[r].wrapping_sub(1)) {
            c.maxend[r] = ack.wrapping_add(win).wrapping_add(u32::from(win == 0));
        }
        if ack == c.end[r] {
            c.peer_flags[r] &= !DATA_UNACKNOWLEDGED;
        }
        let fp = fingerprint(s, seq, ack, end, m.win);
        let same = (usize::from(c.state >> 7) == s) & (c.fp == fp);
        c.fp = fp;
        let retrans = ((c.retrans_class & 0x0f) + 1).min(15) * u8::from(same);
        c.last_end = end;
        c.flags = (c.flags & !LAST_WIN_ZERO) | (LAST_WIN_ZERO * u8::from(m.win == 0));
        c.state = ESTABLISHED | INDEX_ACK << 4 | (s as u8) << 7;
        // The timeout (Linux's order; ESTABLISHED's is longer than RETRANS and UNACK).
        let unack = (c.peer_flags[0] | c.peer_flags[1]) & DATA_UNACKNOWLEDGED != 0;
        let class = if retrans >= MAX_RETRANS {
            CLASS_RETRANS
        } else if unack {
            CLASS_UNACK
        } else if c.flags & LAST_WIN_ZERO != 0 {
            CLASS_RETRANS
        } else {
            CLASS_ESTABLISHED
        };
        c.retrans_class = class << 4 | retrans;
        c.last_seen = now;
        if let Some(st) = self.stats.get_mut(at) {
            st[s] += 1;
            st[2 + s] += u64::from(m.ip_len);
        }
        Judged::Pass
    }
}

/// The canonical key of a TCP packet from `src:sport` to `dst:dport` (the lower
/// endpoint first, without a branch: `flow::order_v4`) and whether the source is `hi`.
#[inline(always)]
fn canonical(src: u32, sport: u16, dst: u32, dport: u16) -> (u64, u64, bool) {
    let (lo, hi, swap) = order_v4(src, sport, dst, dport);
    (lo | 6 << 48, hi | 6 << 48, swap)
}

/// The pipeline's fast-path checks for an untagged IPv4 TCP frame (`parse::fast_ipv4_at`):
/// IPv4 EtherType, version 4 with a 20-byte header, not a fragment, a total length
/// that fits, the header checksum, a TCP header that fits. Fills `m` but its hash and
/// returns true, or returns false with `m` partly written.
#[inline(always)]
fn parse(f: &[u8], m: &mut Meta) -> bool {
    let Some(h) = f.get(..54) else { return false };
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    if be16(12) != 0x0800 || h[14] != 0x45 || be16(20) & 0x3fff != 0 || h[23] != 6 {
        return false;
    }
    let total = usize::from(be16(16));
    if total < 40 || f.len() - 14 < total {
        return false;
    }
    let hlen = usize::from(h[46] >> 4) * 4;
    if !ipv4_header_checksum_ok(h[14..34].try_into().expect("20 bytes")) || hlen < 20 || hlen > total - 20 {
        return false;
    }
    let src = u32::from_be_bytes([h[26], h[27], h[28], h[29]]);
    let dst = u32::from_be_bytes([h[30], h[31], h[32], h[33]]);
    (m.lo, m.hi, m.from_hi) = canonical(src, be16(34), dst, be16(36));
    m.flags = h[47];
    m.opt_len = (hlen - 20) as u8;
    m.win = be16(48);
    m.seq = u32::from_be_bytes([h[38], h[39], h[40], h[41]]);
    m.ack = u32::from_be_bytes([h[42], h[43], h[44], h[45]]);
    m.payload = (total - 20 - hlen) as u32;
    m.ip_len = total as u32;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Loaded, write_tcp};
    use holdfast_pipeline::engine::Packet;
    use holdfast_pipeline::{PassKind, Verdict, Zone};

    /// Every segment the reference passes, the pipeline passes as established, applied
    /// to both in the same order from the same handshake: so the reference does the
    /// pipeline's work on them and keeps the same state (a state of its own would
    /// part the two on a later segment). Segments near the window's edges, both
    /// directions, some with payload and zero windows.
    #[test]
    fn agrees_with_the_pipeline() {
        const FLOWS: u32 = 16;
        // Fewer than ~12k flows leave the mix's embryonic pool over the quota.
        let mut l = Loaded::new(16_384);
        let mut c = Lean::new(FLOWS, true, l.now.ticks());
        let now = l.now;
        let mut rng = 0x1234_5678_9abc_def1u64;
        let (mut taken, mut declined) = (0, 0);
        let mut buf = [0u8; 60];
        for _ in 0..20_000 {
            let r = crate::xorshift(&mut rng);
            let i = (r % u64::from(FLOWS)) as u32;
            let (client, cport, server, ci, si) = flow(i);
            // Offsets around the sequence and ack numbers the handshake left, some far.
            let d = |x: u64| -> u32 { if x & 0x100 != 0 { (x as u32 & 0xff).wrapping_sub(64) } else { (x as u32).wrapping_mul(0x9e37) } };
            let (seq_d, ack_d) = (d(r >> 8), d(r >> 20));
            let win = if r & (1 << 40) != 0 { 0 } else { 502 + (r >> 41) as u16 % 2000 };
            let payload = if r & (1 << 52) != 0 { (r >> 53) as u16 % 6 } else { 0 };
            let (src, sport, dst, dport, seq, ack, zone) = if r & (1 << 60) == 0 {
                (client, cport, server, 80, ci.wrapping_add(1).wrapping_add(seq_d), si.wrapping_add(1).wrapping_add(ack_d), Zone::Outside)
            } else {
                (server, 80, client, cport, si.wrapping_add(1).wrapping_add(seq_d), ci.wrapping_add(1).wrapping_add(ack_d), Zone::Inside)
            };
            write_tcp(&mut buf, src, sport, dst, dport, ACK, seq, ack);
            buf[48..50].copy_from_slice(&win.to_be_bytes());
            // Payload: the IP total length grows into the frame's padding.
            let total = 40 + payload;
            buf[16..18].copy_from_slice(&total.to_be_bytes());
            buf[24..26].copy_from_slice(&[0, 0]);
            let sum = holdfast_pipeline::wire::checksum_finish(holdfast_pipeline::wire::checksum_add(0, &buf[14..34]));
            buf[24..26].copy_from_slice(&sum.to_be_bytes());
            let mut out = [Judged::NotTaken];
            c.run(&[&buf[..]], now.ticks(), &mut out);
            if out[0] == Judged::Pass {
                taken += 1;
                let v = l.engine.process(&Packet { data: &buf, zone, now });
                assert_eq!(v, Verdict::Pass(PassKind::Established), "segment {taken}: the reference passed what the pipeline judged otherwise");
            } else {
                declined += 1;
            }
        }
        // Both kinds, so that the test can fail either way.
        assert!(taken > 2_000 && declined > 2_000, "{taken} taken, {declined} declined");
        assert_eq!(c.passed, taken);
    }

    #[test]
    fn the_bench_bursts_all_pass() {
        let mut l = Loaded::new(16_384);
        let mut c = Lean::new(16_384, false, l.now.ticks());
        let mut out = [Judged::NotTaken; 64];
        for _ in 0..100 {
            l.fill_ack_burst();
            let frames: [&[u8]; 64] = std::array::from_fn(|k| &l.frames()[k][..]);
            c.run(&frames, l.now.ticks(), &mut out);
            assert!(out.iter().all(|&v| v == Judged::Pass));
        }
        assert_eq!(c.passed, 6400);
    }
}
