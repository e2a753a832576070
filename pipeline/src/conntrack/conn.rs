//! The connection entry: what one tracked flow costs, laid out so that a packet of an
//! established flow reads and writes one 64-byte line (plus its counters).

use crate::flow::FlowKey;

/// One direction's view of a TCP connection, after Linux's `ip_ct_tcp_state` and pf's
/// `pf_state_peer`. `end` is the highest sequence number sent (seq + len), `maxend` the
/// highest right edge the other side has allowed, `maxwin` the largest window seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct Peer {
    pub end: u32,
    pub maxend: u32,
    pub maxwin: u32,
}

/// Per-peer TCP flags, with Linux's values (`IP_CT_TCP_FLAG_*`).
pub(crate) mod pflag {
    pub(crate) const WINDOW_SCALE: u8 = 0x01;
    pub(crate) const SACK_PERM: u8 = 0x02;
    pub(crate) const CLOSE_INIT: u8 = 0x04;
    pub(crate) const BE_LIBERAL: u8 = 0x08;
    pub(crate) const DATA_UNACKNOWLEDGED: u8 = 0x10;
    pub(crate) const MAXACK_SET: u8 = 0x20;
}

/// Entry-wide flags.
pub(crate) mod cflag {
    /// Addresses live in the table's IPv6 side array.
    pub(crate) const V6: u8 = 0x01;
    /// The original direction (who opened the flow) is the key's `hi` endpoint.
    pub(crate) const ORIG_IS_HI: u8 = 0x02;
    /// A packet in the reply direction was accepted (Linux `IPS_SEEN_REPLY`).
    pub(crate) const SEEN_REPLY: u8 = 0x04;
    /// Linux `IPS_ASSURED`: TCP handshake completed, UDP stream older than 2 s.
    pub(crate) const ASSURED: u8 = 0x08;
    /// Set on every packet, cleared by the eviction clock (second-chance LRU).
    pub(crate) const REFERENCED: u8 = 0x10;
    /// The last in-window ACK advertised a zero window (Linux `last_win == 0`).
    pub(crate) const LAST_WIN_ZERO: u8 = 0x20;
    /// Two-bit saturating count of identical retransmissions (Linux `retrans`).
    pub(crate) const RETRANS_SHIFT: u8 = 6;
    pub(crate) const RETRANS_MASK: u8 = 0xc0;
}

/// The hot part of an entry: key, state, timer and TCP window tracking.
///
/// Field groups, after pf's `pf_state`: the key as seen by both directions, the state,
/// the two peers. Everything a packet of an established flow touches is here; counters
/// are in [`ConnStats`], rarely used bookkeeping in [`ConnAux`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Conn {
    /// Canonical IPv4 addresses `[lo, hi]`; for IPv6, `[place in the table's IPv6
    /// address pool, 0]`.
    pub addr: [u32; 2],
    pub port: [u16; 2],
    /// Protocol in bits 24..32, VLAN ids in bits 0..24 (see [`FlowKey::vlan`]).
    pub proto_vlan: u32,
    /// Last refresh, in wrapping ticks (see [`crate::time`]).
    pub last_seen: u32,
    /// TCP: state (bits 0..4), Linux `last_index` (bits 4..7), `last_dir` (bit 7).
    /// Others: 0 unreplied, 1 replied.
    pub state: u8,
    /// [`cflag`] bits.
    pub flags: u8,
    /// Bits 0..4: the [`super::timeouts::TimerClass`] whose timeout applies; bits 4..7:
    /// the [`super::pressure::Admission`] class; bit 7 ([`CHARGED_HI`]): the entry is
    /// charged to the key's `hi` address in the per-source counts.
    pub timer: u8,
    /// Window scale shift of the original (bits 0..4) and reply (bits 4..8) peers.
    pub scales: u8,
    /// [`pflag`] bits per direction (0 original, 1 reply).
    pub pflags: [u8; 2],
    /// 16-bit fingerprint of the last in-window ACK (dir, seq, ack, end, window):
    /// Linux compares those fields to count retransmissions.
    pub retrans_fp: u16,
    /// Window tracking per direction (0 original, 1 reply). UDP and ICMP entries keep
    /// their creation tick in `peer[0].end` (Linux `stream_ts`).
    pub peer: [Peer; 2],
    /// Highest ACK sent per direction (Linux `td_maxack`), for RST validation.
    pub maxack: [u32; 2],
    /// End (seq + len) of the last annotated segment (Linux `last_end`).
    pub last_end: u32,
}

// The layout's size budget: one cache line per entry, so a lookup touches one line.
const _: () = assert!(core::mem::size_of::<Conn>() == 64);
const _: () = assert!(core::mem::align_of::<Conn>() == 64);

/// Packet and byte counters per direction, written on every packet, and the tick the
/// flow was created: what `conntrack.accounting` keeps (Linux's acct and timestamp
/// extensions, both off there by default).
///
/// 32 bytes: the packet counts are 48 bits and wrap there as Linux's 64-bit ones wrap
/// at 2^64 (2.8 * 10^14 packets: 217 days of one direction at 14.88 Mpps, 10 GbE's line
/// rate), and the low 16 bits of each word hold half of the creation tick, which would
/// otherwise cost 4 bytes an entry with accounting off too. Counting stays one add per
/// counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C, align(32))]
pub(crate) struct ConnStats {
    pub bytes: [u64; 2],
    /// Bits 16..64: packets in that direction; bits 0..16: the low (`[0]`) and high
    /// (`[1]`) halves of the creation tick.
    packed: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<ConnStats>() == 32);

impl ConnStats {
    /// The most packets a direction counts before it wraps to 0.
    pub(crate) const MAX_PACKETS: u64 = (1 << 48) - 1;
    const ONE_PACKET: u64 = 1 << 16;

    /// A new flow's counters: none yet, created at `tick`.
    pub(crate) fn new(tick: u32) -> ConnStats {
        let mut s = ConnStats::default();
        s.set_created(tick);
        s
    }

    /// Counters as a snapshot holds them (`packets` at most [`Self::MAX_PACKETS`]).
    pub(crate) fn with_counts(packets: [u64; 2], bytes: [u64; 2], created: u32) -> ConnStats {
        debug_assert!(packets.iter().all(|&p| p <= Self::MAX_PACKETS));
        let mut s = ConnStats { bytes, packed: [packets[0] << 16, packets[1] << 16] };
        s.set_created(created);
        s
    }

    #[inline]
    pub(crate) fn packets(&self) -> [u64; 2] {
        [self.packed[0] >> 16, self.packed[1] >> 16]
    }

    /// The tick (wrapping, see [`crate::time`]) the flow was created.
    pub(crate) fn created(&self) -> u32 {
        (self.packed[0] & 0xffff | (self.packed[1] & 0xffff) << 16) as u32
    }

    pub(crate) fn set_created(&mut self, tick: u32) {
        let halves = [u64::from(tick & 0xffff), u64::from(tick >> 16)];
        for (p, h) in self.packed.iter_mut().zip(halves) {
            *p = (*p & !0xffff) | h;
        }
    }

    /// Counts one packet of `bytes` in direction `dir`. Both counts wrap (the packet
    /// count at 2^48, without touching the tick below it).
    #[inline]
    pub(crate) fn count(&mut self, dir: usize, bytes: u64) {
        self.packed[dir] = self.packed[dir].wrapping_add(Self::ONE_PACKET);
        self.bytes[dir] = self.bytes[dir].wrapping_add(bytes);
    }
}

/// Rarely touched bookkeeping: the annotations Linux keeps to resync after an ignored
/// SYN. Written whole when the entry is created (a reused slot keeps nothing of its
/// previous flow).
///
/// 4 bytes. The origin zone is a spare bit of `last_flags` ([`aux_flag::ORIGIN_INSIDE`]),
/// an ICMP flow's request type was always in its key ([`Conn::icmp_type`]), and the
/// creation tick is kept with the counters ([`ConnStats::created`]): as fields here
/// they cost 8 bytes an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct ConnAux {
    /// Window of the last ignored SYN (Linux `last_win`).
    pub last_win: u16,
    /// Window scale of the last ignored SYN (Linux `last_wscale`).
    pub last_wscale: u8,
    /// Linux `last_flags`: WINDOW_SCALE and SACK_PERM of the ignored SYN, and the
    /// [`aux_flag`] bits.
    pub last_flags: u8,
}

const _: () = assert!(core::mem::size_of::<ConnAux>() == 4);

/// Bits of [`ConnAux::last_flags`] beyond the per-peer ones (Linux values).
pub(crate) mod aux_flag {
    pub(crate) const SIMULTANEOUS_OPEN: u8 = 0x04;
    pub(crate) const EXP_CHALLENGE_ACK: u8 = 0x40;
    /// Not Linux's: the flow's original direction entered from the inside zone (what a
    /// reload's recheck and the listing say it came from). Here, not in the hot entry,
    /// since the admission class took that bit; only cold paths read it.
    pub(crate) const ORIGIN_INSIDE: u8 = 0x80;
}

impl ConnAux {
    /// The flow's original direction entered from the inside zone.
    #[inline]
    pub(crate) fn origin_inside(&self) -> bool {
        self.last_flags & aux_flag::ORIGIN_INSIDE != 0
    }

    pub(crate) fn set_origin_inside(&mut self, inside: bool) {
        self.last_flags = (self.last_flags & !aux_flag::ORIGIN_INSIDE) | if inside { aux_flag::ORIGIN_INSIDE } else { 0 };
    }
}

/// Bit of [`Conn::timer`]: the per-source count charged for this entry is the key's
/// `hi` address's (else `lo`'s). Set at creation to the side that sent the creating
/// packet and never changed — a reverse pickup swaps the directions afterwards, so the
/// original direction cannot say whom to release.
pub(crate) const CHARGED_HI: u8 = 0x80;

/// Direction of a packet relative to the flow: who opened it.
pub(crate) const ORIGINAL: usize = 0;
pub(crate) const REPLY: usize = 1;

impl Conn {
    #[inline]
    pub(crate) fn proto(&self) -> u8 {
        (self.proto_vlan >> 24) as u8
    }

    #[inline]
    pub(crate) fn vlan(&self) -> u32 {
        self.proto_vlan & 0x00ff_ffff
    }

    #[inline]
    pub(crate) fn is_v6(&self) -> bool {
        self.flags & cflag::V6 != 0
    }

    #[inline]
    pub(crate) fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// The conntrack direction of a packet sent from canonical side `side_is_hi`.
    #[inline]
    pub(crate) fn dir_of(&self, side_is_hi: bool) -> usize {
        usize::from(side_is_hi != self.has(cflag::ORIG_IS_HI))
    }

    /// True when the stored key equals `k` (IPv6 addresses are compared by the table).
    #[inline]
    pub(crate) fn matches_v4(&self, k: &FlowKey) -> bool {
        self.matches_v4_parts([k.addr[0] as u32, k.addr[1] as u32], k.port, u32::from(k.proto) << 24 | k.vlan)
    }

    /// True when the stored key is the TCP IPv4 key with canonical endpoints
    /// `addr`/`port`, untagged: [`Conn::matches_v4`] for the ACK lane's metadata.
    #[inline(always)]
    pub(crate) fn matches_tcp4(&self, addr: [u32; 2], port: [u16; 2]) -> bool {
        self.matches_v4_parts(addr, port, u32::from(crate::parse::proto::TCP) << 24)
    }

    #[inline(always)]
    fn matches_v4_parts(&self, addr: [u32; 2], port: [u16; 2], proto_vlan: u32) -> bool {
        self.addr == addr && self.port == port && self.proto_vlan == proto_vlan && !self.is_v6()
    }

    #[inline]
    pub(crate) fn timer_class(&self) -> super::timeouts::TimerClass {
        super::timeouts::TimerClass::from_u8(self.timer)
    }

    #[inline]
    pub(crate) fn set_timer_class(&mut self, c: super::timeouts::TimerClass) {
        self.timer = (self.timer & 0xf0) | c as u8;
    }

    #[inline]
    pub(crate) fn admission(&self) -> super::pressure::Admission {
        super::pressure::Admission::from_u8(self.timer >> 4 & 7)
    }

    #[inline]
    pub(crate) fn set_admission(&mut self, a: super::pressure::Admission) {
        self.timer = (self.timer & !0x70) | (a as u8) << 4;
    }

    /// Which address of the key (0 `lo`, 1 `hi`) the per-source count was charged to.
    #[inline]
    pub(crate) fn charged(&self) -> usize {
        usize::from(self.timer & CHARGED_HI != 0)
    }

    pub(crate) fn set_charged(&mut self, hi: bool) {
        self.timer = (self.timer & !CHARGED_HI) | if hi { CHARGED_HI } else { 0 };
    }

    /// For an ICMP query flow, the request's type (what a reload's recheck asks the
    /// rules about, what sync sends): the low byte of the key's second "port"
    /// ([`FlowKey::icmp_query`]). `None` for other protocols.
    pub(crate) fn icmp_type(&self) -> Option<u8> {
        use crate::parse::proto;
        matches!(self.proto(), proto::ICMP | proto::ICMPV6).then_some(self.port[1] as u8)
    }

    #[inline]
    pub(crate) fn retrans(&self) -> u8 {
        (self.flags & cflag::RETRANS_MASK) >> cflag::RETRANS_SHIFT
    }

    pub(crate) fn set_retrans(&mut self, n: u8) {
        self.flags = (self.flags & !cflag::RETRANS_MASK) | (n.min(3) << cflag::RETRANS_SHIFT);
    }

    #[inline]
    pub(crate) fn scale(&self, dir: usize) -> u8 {
        (self.scales >> (4 * dir)) & 0x0f
    }

    pub(crate) fn set_scale(&mut self, dir: usize, s: u8) {
        let shift = 4 * dir;
        self.scales = (self.scales & !(0x0f << shift)) | ((s & 0x0f) << shift);
    }
}

#[cfg(test)]
mod tests {
    use super::ConnStats;

    #[test]
    fn counters_wrap_at_their_width_and_keep_the_creation_tick() {
        let mut s = ConnStats::new(0xdead_beef);
        s.count(0, 60);
        s.count(1, 1500);
        s.count(1, 40);
        assert_eq!((s.packets(), s.bytes, s.created()), ([1, 2], [60, 1540], 0xdead_beef));
        let mut s = ConnStats::with_counts([ConnStats::MAX_PACKETS - 1, 7], [u64::MAX - 10, 0], u32::MAX);
        for _ in 0..3 {
            s.count(0, 8);
        }
        assert_eq!(s.packets(), [1, 7], "2^48 - 1, then 0 and 1: the tick below is untouched");
        assert_eq!((s.bytes[0], s.created()), (13, u32::MAX));
        s.set_created(0x0001_0002);
        assert_eq!((s.packets(), s.created()), ([1, 7], 0x0001_0002));
    }
}
