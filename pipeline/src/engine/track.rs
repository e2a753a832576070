//! Tracking, per protocol: a packet of a known flow (TCP through Linux's state machine,
//! UDP's stream rule, ICMP queries, other protocols by address), the first packet of a
//! new one (the rules decide; TCP also through `tcp_new` and a pickup mode), later
//! fragments, and the questions asked of the rules.

use super::{Engine, Pickup, idle_ticks};
use crate::conntrack::conn::{Conn, ConnAux, ORIGINAL, REPLY, cflag};
use crate::conntrack::frag::Datagram;
use crate::conntrack::pressure::Admission;
use crate::conntrack::table::Hint;
use crate::conntrack::tcp::{self, Index, Outcome, Segment};
use crate::conntrack::timeouts::TimerClass;
use crate::conntrack::tombstones::Why;
use crate::flow::Side;
use crate::parse::{AckMeta, L4, PacketMeta};
use crate::policy::{Action, Query, Zone};
use crate::time::Instant;
use crate::verdict::{DropReason, PassKind, Verdict};

/// Linux marks a UDP flow as a stream (ASSURED, long timeout) once it has seen a reply
/// and is still active 2 s after creation (`nf_conntrack_udp_packet`); here other
/// protocols but ICMP too (ASSURED only: their timeout stays).
pub(super) const UDP_STREAM_TICKS: i32 = 2 * crate::time::TICKS_PER_SEC as i32;

/// The verdict of a configured action on frames that are not tracked (ARP, ND, non-IP).
pub(super) fn action_verdict(a: Action, reason: DropReason) -> Verdict {
    match a {
        Action::Allow => Verdict::Pass(PassKind::Untracked),
        Action::Deny => Verdict::Drop(reason),
    }
}

/// The datagram a fragment belongs to.
pub(super) fn datagram(m: &PacketMeta) -> Datagram {
    let f = m.frag.expect("fragment metadata");
    Datagram { src: m.src_addr(), dst: m.dst_addr(), ident: f.ident, proto: m.key.proto, v6: m.key.v6, vlan: m.key.vlan }
}

/// The stream rule on a non-TCP entry, before this packet counts: a reply seen and
/// the flow older than [`UDP_STREAM_TICKS`] marks it ASSURED. True when it is a
/// stream.
fn mark_stream(c: &mut Conn, now: Instant) -> bool {
    let stream = c.has(cflag::SEEN_REPLY) && now.ticks().wrapping_sub(c.peer[0].end) as i32 > UDP_STREAM_TICKS;
    if stream {
        c.flags |= cflag::ASSURED;
    }
    stream
}

/// Swaps original and reply in an entry (reverse-of-allowed pickup).
fn swap_directions(c: &mut Conn) {
    c.peer.swap(0, 1);
    c.maxack.swap(0, 1);
    c.pflags.swap(0, 1);
    c.scales = c.scales.rotate_left(4);
    c.state ^= 0x80; // last_dir
    c.flags ^= cflag::ORIG_IS_HI;
}

impl Engine {
    /// The question for the rules about a packet (or, `reverse`, about the flow it
    /// would be the reply of).
    pub(super) fn query(&self, zone: Zone, m: &PacketMeta, reverse: bool, icmp_type: Option<u8>) -> Query {
        let ports = matches!(m.l4, L4::Tcp(_) | L4::Udp);
        let (sport, dport) = if ports { (m.src_port(), m.dst_port()) } else { (0, 0) };
        let q = Query { from: zone, to: zone.other(), v6: m.key.v6, proto: m.key.proto, src: m.src_addr(), dst: m.dst_addr(), sport, dport, icmp_type };
        if reverse { Query { from: q.to, to: q.from, src: q.dst, dst: q.src, sport: q.dport, dport: q.sport, ..q } } else { q }
    }

    pub(super) fn allowed(&self, q: &Query) -> bool {
        self.policy.decide(q).action == Action::Allow
    }

    /// A later fragment follows its first fragment's verdict.
    pub(super) fn later_fragment(&mut self, now: Instant, m: &PacketMeta) -> Verdict {
        match self.frags.lookup(&datagram(m), now.ticks()) {
            Some(Verdict::Pass(_)) => Verdict::Pass(PassKind::Related),
            Some(Verdict::Drop(r)) => Verdict::Drop(r),
            None => Verdict::Drop(DropReason::FragmentUnmatched),
        }
    }

    /// An ESTABLISHED, assured TCP flow's plain in-window ACK, the common case, judged
    /// where the lookup found it: the whole of [`Engine::existing`] costs a call with
    /// seven arguments. `None`: not that case (the entry untouched); `existing` judges
    /// it.
    #[inline(always)]
    pub(super) fn established_ack(&mut self, now: Instant, frame: &[u8], slot: u32, m: &PacketMeta) -> Option<Verdict> {
        let L4::Tcp(t) = &m.l4 else { return None };
        self.accept_ack(now, slot, m.side == Side::FromHi, &Segment::new(t, t.options(frame)), m.ip_len)
    }

    /// The ACK lane's judging (`parse::ack_lane`): the lookup, the expiry check and
    /// [`Engine::established_ack`] on the lane's metadata. `None`, with nothing
    /// changed, for anything else — the flow not found or expired, a journal of
    /// changes kept (`existing_noted`'s work), a segment the fast path declines —
    /// and the caller judges the frame as any other, which gives the same verdict the
    /// general path gives here.
    #[inline(always)]
    pub(super) fn lane_ack(&mut self, now: Instant, frame: &[u8], a: &AckMeta, h: u64, hint: Hint) -> Option<Verdict> {
        if self.changes.on() {
            return None;
        }
        let slot = self.table.lookup_tcp4(h, a.addr, a.port, hint)?;
        let c = &self.table.conns[slot as usize];
        let idle = idle_ticks(now.ticks(), c.last_seen);
        if idle >= self.shortest_timeout() && idle >= self.timeout_of(c) {
            return None; // `live_lookup` retires it
        }
        let seg = Segment::plain_ack(a.seq, a.ack, a.payload_len, a.window, a.flags, a.options(frame));
        self.accept_ack(now, slot, a.from_hi, &seg, a.ip_len)
    }

    #[inline(always)]
    fn accept_ack(&mut self, now: Instant, slot: u32, from_hi: bool, seg: &Segment, ip_len: u32) -> Option<Verdict> {
        let c = &mut self.table.conns[slot as usize];
        let dir = c.dir_of(from_hi);
        let class = tcp::fast_established(c, dir, seg, &self.cfg.timeouts)?;
        // Every replied, ASSURED, ESTABLISHED TCP entry the fast path takes is assured:
        // of `account` only the counters are left to do (its flag is set, its class
        // stays), and they are all of it unless an admission is out of date.
        let assured = c.admission() == Admission::Assured;
        self.refresh(slot, now, class);
        if assured {
            self.count_bytes(slot, dir, ip_len);
        } else {
            self.account_bytes(slot, dir, ip_len);
        }
        Some(Verdict::Pass(PassKind::Established))
    }

    /// A packet of the flow in `slot` that [`Engine::established_ack`] declined.
    pub(super) fn existing(&mut self, now: Instant, zone: Zone, frame: &[u8], slot: u32, m: &PacketMeta, h: u64) -> Verdict {
        let dir = self.table.conns[slot as usize].dir_of(m.side == Side::FromHi);
        let class = match m.l4 {
            L4::Tcp(t) => return self.existing_tcp(now, zone, frame, slot, m, h, &Segment::new(&t, t.options(frame)), dir),
            // "Still active after two seconds? Extend timeout."
            L4::Udp if mark_stream(&mut self.table.conns[slot as usize], now) => TimerClass::UdpReplied,
            L4::Udp => TimerClass::UdpUnreplied,
            L4::IcmpQuery { .. } => TimerClass::Icmp,
            _ => {
                // Not Linux's (its generic tracker never assures): the UDP stream rule,
                // so that a tunnel (ESP, GRE) is not among the first entries evicted.
                mark_stream(&mut self.table.conns[slot as usize], now);
                TimerClass::Generic
            }
        };
        self.refresh(slot, now, class);
        self.account(slot, dir, m);
        Verdict::Pass(PassKind::Established)
    }

    #[allow(clippy::too_many_arguments)]
    fn existing_tcp(&mut self, now: Instant, zone: Zone, frame: &[u8], slot: u32, m: &PacketMeta, h: u64, seg: &Segment, dir: usize) -> Verdict {
        if !tcp::valid_flags(seg.flags) {
            return Verdict::Drop(DropReason::InvalidTcpFlags);
        }
        let (c, aux) = (&mut self.table.conns[slot as usize], &mut self.table.aux[slot as usize]);
        match tcp::packet(c, aux, dir, seg, &self.cfg.timeouts) {
            Outcome::Accept(class) => {
                self.refresh(slot, now, class);
                self.account(slot, dir, m);
                Verdict::Pass(PassKind::Established)
            }
            Outcome::Ignore => {
                if dir == REPLY {
                    self.table.conns[slot as usize].flags |= cflag::SEEN_REPLY;
                }
                Verdict::Pass(PassKind::Ignored)
            }
            Outcome::Invalid { reason, shrink } => {
                if shrink {
                    self.shrink_to_unack(slot, now);
                }
                Verdict::Drop(reason)
            }
            Outcome::Reopen => {
                // Replaced by a new connection: no tombstone.
                self.retire(slot, h, None, now);
                self.new_flow(now, zone, frame, m, h)
            }
            Outcome::Kill => {
                self.account(slot, dir, m);
                self.retire(slot, h, Some(Why::Closed), now);
                Verdict::Pass(PassKind::Established)
            }
        }
    }

    /// The first packet of a flow: the rules decide; tracking then builds the entry,
    /// created only once it is accepted.
    pub(super) fn new_flow(&mut self, now: Instant, zone: Zone, frame: &[u8], m: &PacketMeta, h: u64) -> Verdict {
        let (class, icmp_type) = match m.l4 {
            L4::Tcp(t) => return self.new_tcp(now, zone, m, &Segment::new(&t, t.options(frame)), h),
            L4::Udp => (TimerClass::UdpUnreplied, None),
            L4::IcmpQuery { request: false, .. } => return self.lost(h, DropReason::MidstreamNoState),
            L4::IcmpQuery { ty, .. } => (TimerClass::Icmp, Some(ty)),
            _ => (TimerClass::Generic, None),
        };
        if !self.allowed(&self.query(zone, m, false, icmp_type)) {
            return self.lost(h, DropReason::Policy);
        }
        let mut c = Self::blank_for(m);
        c.set_timer_class(class);
        if !matches!(m.l4, L4::IcmpQuery { .. }) {
            // Linux `stream_ts`: when the flow started, for the stream rule.
            c.peer[0].end = now.ticks();
        }
        let mut aux = ConnAux::default();
        aux.set_origin_inside(zone == Zone::Inside);
        match self.create(now, m, h, c, aux) {
            Ok(slot) => {
                self.account(slot, ORIGINAL, m);
                Verdict::Pass(PassKind::New)
            }
            Err(r) => Verdict::Drop(r),
        }
    }

    fn new_tcp(&mut self, now: Instant, zone: Zone, m: &PacketMeta, seg: &Segment, h: u64) -> Verdict {
        if !tcp::valid_flags(seg.flags) {
            return Verdict::Drop(DropReason::InvalidTcpFlags);
        }
        let (loose, reverse) = match (seg.index, self.cfg.pickup) {
            (Index::Syn, _) => (false, false),
            (Index::Ack, Pickup::Loose) => (true, false),
            (Index::Ack, Pickup::ReverseOfAllowed) => (true, true),
            _ => return self.lost(h, DropReason::MidstreamNoState),
        };
        if !self.allowed(&self.query(zone, m, reverse, None)) {
            // A mid-stream packet of a lost flow reads as the loss, not as policy.
            let otherwise = if seg.index == Index::Syn { DropReason::Policy } else { DropReason::MidstreamNoState };
            return self.lost(h, otherwise);
        }
        // The entry is built with the packet's side as original and run through the
        // state machine as Linux's is; a reverse pickup then swaps the peers so that
        // the packet becomes the reply of the allowed direction. Only an accepted
        // entry is created.
        let mut c = Self::blank_for(m);
        let mut aux = ConnAux::default();
        let class = if seg.index == Index::Syn {
            // What `init_new` and `packet` leave a fresh SYN with, without the dispatch.
            tcp::open_with_syn(&mut c, seg)
        } else {
            if !tcp::init_new(&mut c, seg, loose) {
                return Verdict::Drop(DropReason::InvalidTcpState);
            }
            match tcp::packet(&mut c, &mut aux, ORIGINAL, seg, &self.cfg.timeouts) {
                Outcome::Accept(class) => class,
                _ => return Verdict::Drop(DropReason::InvalidTcpState),
            }
        };
        aux.set_origin_inside((zone == Zone::Inside) != reverse);
        if reverse {
            swap_directions(&mut c);
        }
        c.set_timer_class(class);
        c.flags |= cflag::REFERENCED;
        match self.create(now, m, h, c, aux) {
            Ok(slot) => {
                self.account(slot, if reverse { REPLY } else { ORIGINAL }, m);
                Verdict::Pass(PassKind::New)
            }
            Err(r) => Verdict::Drop(r),
        }
    }
}
