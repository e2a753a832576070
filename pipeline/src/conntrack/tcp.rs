//! TCP connection tracking equal to Linux's (`net/netfilter/nf_conntrack_proto_tcp.c`,
//! kernel 6.x): the `tcp_conntracks` state table, window tracking after Guido van
//! Rooij's "Real Stateful TCP Packet Filtering in IP Filter", the IGNORE logic that lets
//! conntrack resync when it is out of step with the hosts, RST validation, RFC 5961
//! challenge ACKs, and the timeout choice (UNACK, RETRANS, CLOSE overrides).
//!
//! Like pf, a connection is two peers indexed by direction (0 original, 1 reply), so
//! both directions run through one code path. A segment is read once into a
//! [`Segment`]. This file holds the first half of the kernel's file in its order (the
//! state table, `tcp_valid_flags`, `tcp_new`, `nf_conntrack_tcp_packet`); window
//! tracking, its second half, is in `tcp/window.rs`.

use super::conn::{Conn, ConnAux, ORIGINAL, Peer, REPLY, aux_flag, cflag, pflag};
use super::timeouts::{Timeouts, TimerClass};
use crate::parse::TcpMeta;
use crate::verdict::DropReason;
use crate::wire::tcp::{Options, flags as f};

/// Linux's `enum tcp_conntrack`: the state an entry is in (stored in `Conn::state`,
/// bits 0..4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum TcpState {
    None = 0,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    SynSent2,
}

impl TcpState {
    pub(crate) const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];

    /// The name `conntrack -L` prints.
    pub(crate) fn name(self) -> &'static str {
        ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"][self as usize]
    }

    fn from_bits(b: u8) -> TcpState {
        TcpState::ALL.get(usize::from(b & 0x0f)).copied().unwrap_or(TcpState::None)
    }

    /// Linux `tcp_can_early_drop`: closing states.
    pub(crate) fn is_closing(self) -> bool {
        matches!(self, TcpState::FinWait | TcpState::LastAck | TcpState::TimeWait | TcpState::Close | TcpState::CloseWait)
    }
}

/// A cell of the state table: the next state, or Linux's sIV (invalid) and sIG
/// (ignored: may be valid, the hosts may be in sync while we are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    To(TcpState),
    Iv,
    Ig,
}

/// Linux's `enum tcp_bit_set`: which row of the table a segment selects (stored in
/// `Conn::state`, bits 4..7, as the last one seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Index {
    Syn = 0,
    SynAck,
    Fin,
    Ack,
    Rst,
    None,
}

/// `Index::None` as stored in `Conn::state` bits 4..7: no segment seen yet.
pub(crate) const INDEX_NONE: u8 = Index::None as u8;

impl Index {
    fn from_bits(b: u8) -> Index {
        [Index::Syn, Index::SynAck, Index::Fin, Index::Ack, Index::Rst, Index::None].get(usize::from(b & 0x07)).copied().unwrap_or(Index::None)
    }
}

use TcpState::*;

const S_NO: Next = Next::To(None);
const S_SS: Next = Next::To(SynSent);
const S_SR: Next = Next::To(SynRecv);
const S_ES: Next = Next::To(Established);
const S_FW: Next = Next::To(FinWait);
const S_CW: Next = Next::To(CloseWait);
const S_LA: Next = Next::To(LastAck);
const S_TW: Next = Next::To(TimeWait);
const S_CL: Next = Next::To(Close);
const S_S2: Next = Next::To(SynSent2);
const S_IV: Next = Next::Iv;
const S_IG: Next = Next::Ig;

/// `tcp_conntracks[dir][index][state]`, copied from Linux 6.x with its comments'
/// meaning: see the kernel source for the reasoning behind each cell.
#[rustfmt::skip]
const TABLE: [[[Next; 10]; 6]; 2] = [
    [
        //           sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        /* syn    */ [S_SS, S_SS, S_IG, S_IG, S_IG, S_IG, S_IG, S_SS, S_SS, S_S2],
        /* synack */ [S_IV, S_IV, S_SR, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_SR],
        /* fin    */ [S_IV, S_IV, S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, S_IV],
        /* ack    */ [S_ES, S_IV, S_ES, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, S_IV],
        /* rst    */ [S_IV, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        /* none   */ [S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV],
    ],
    [
        //           sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        /* syn    */ [S_IV, S_S2, S_IV, S_IV, S_IV, S_IV, S_IV, S_SS, S_IV, S_S2],
        /* synack */ [S_IV, S_SR, S_IG, S_IG, S_IG, S_IG, S_IG, S_IG, S_IG, S_SR],
        /* fin    */ [S_IV, S_IV, S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, S_IV],
        /* ack    */ [S_IV, S_IG, S_SR, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, S_IG],
        /* rst    */ [S_IV, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        /* none   */ [S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV, S_IV],
    ],
];

// sNO in a cell is never reached; the constant keeps the table's shape complete.
const _: Next = S_NO;

fn next(dir: usize, idx: Index, from: TcpState) -> Next {
    TABLE[dir & 1][idx as usize][from as usize]
}

/// One segment as tracking reads it, built once per packet: what Linux reads from the
/// skb and its TCP header at each step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub seq: u32,
    pub ack: u32,
    /// Linux `segment_seq_plus_len`: seq + payload + SYN + FIN.
    pub end: u32,
    /// The window field as sent (unscaled).
    pub win: u16,
    pub flags: u8,
    pub index: Index,
    /// The option bytes, parsed only where needed (SYN, SACK).
    pub opts: &'a [u8],
}

impl<'a> Segment<'a> {
    #[inline]
    pub(crate) fn new(t: &TcpMeta, opts: &'a [u8]) -> Segment<'a> {
        let end = t.seq.wrapping_add(t.payload_len).wrapping_add(u32::from(t.flags & f::SYN != 0)).wrapping_add(u32::from(t.flags & f::FIN != 0));
        Segment { seq: t.seq, ack: t.ack, end, win: t.window, flags: t.flags, index: index_of(t.flags), opts }
    }

    /// [`Segment::new`] for a segment whose control flags are ACK alone (the ACK
    /// lane's): no SYN or FIN to count in its end, index ACK.
    #[inline(always)]
    pub(crate) fn plain_ack(seq: u32, ack: u32, payload_len: u32, win: u16, flags: u8, opts: &'a [u8]) -> Segment<'a> {
        debug_assert_eq!(index_of(flags), Index::Ack, "plain_ack takes ACKs without SYN, FIN or RST");
        Segment { seq, ack, end: seq.wrapping_add(payload_len), win, flags, index: Index::Ack, opts }
    }

    #[inline]
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Linux `tcp_max_retrans`: identical retransmissions before the RETRANS timeout.
pub(crate) const MAX_RETRANS: u8 = 3;
/// Linux `MAXACKWINCONST`.
const MAX_ACK_WIN_CONST: u32 = 66_000;

/// What tracking decided for a segment of a known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// In window: state updated, refresh with this timeout.
    Accept(TimerClass),
    /// Let through without touching state or timeout (Linux returns NF_ACCEPT early).
    Ignore,
    /// Drop; the entry stays. `shrink` asks to lower the timeout to UNACK (Linux
    /// `nf_tcp_handle_invalid` for a FIN/RST answering a FIN/RST out of window).
    Invalid { reason: DropReason, shrink: bool },
    /// A SYN reopens a closed connection: delete the entry and treat the SYN as new.
    Reopen,
    /// Accept, then delete the entry: an RST answered a flow that never saw a reply.
    Kill,
}

/// Linux `tcp_valid_flags`: PSH, ECE and CWR are always fine; of FIN, SYN, RST, ACK and
/// URG only these combinations are.
pub(crate) fn valid_flags(flags: u8) -> bool {
    let fl = flags & !(f::ECE | f::CWR | f::PSH);
    matches!(
        fl,
        x if x == f::SYN
            || x == f::SYN | f::URG
            || x == f::SYN | f::ACK
            || x == f::RST
            || x == f::RST | f::ACK
            || x == f::FIN | f::ACK
            || x == f::FIN | f::ACK | f::URG
            || x == f::ACK
            || x == f::ACK | f::URG
    )
}

/// Linux `get_conntrack_index`.
pub(crate) fn index_of(flags: u8) -> Index {
    if flags & f::RST != 0 {
        Index::Rst
    } else if flags & f::SYN != 0 {
        if flags & f::ACK != 0 { Index::SynAck } else { Index::Syn }
    } else if flags & f::FIN != 0 {
        Index::Fin
    } else if flags & f::ACK != 0 {
        Index::Ack
    } else {
        Index::None
    }
}

/// Whether an ICMP error's quoted segment, sent by peer `s` with sequence number
/// `seq`, can be one that peer sent lately: from the sender's highest end less the
/// receiver's largest window (at least one: the SYN of a SYN_SENT flow) up to the
/// right edge the receiver allowed it. pf's check of ICMP errors against the state
/// (`pf_icmp_state_lookup`'s callers); Linux checks none. A flow tracked liberally
/// (a mid-stream pickup, a synced flow) passes; a peer that never sent fails.
pub(crate) fn quoted_in_window(c: &Conn, s: usize, seq: u32) -> bool {
    let (p, r) = (&c.peer[s], &c.peer[1 - s]);
    if c.pflags[s] & pflag::BE_LIBERAL != 0 {
        return true;
    }
    if p.maxwin == 0 {
        return false;
    }
    let lo = p.end.wrapping_sub(r.maxwin.max(1));
    let hi = if after(p.maxend, p.end) { p.maxend } else { p.end };
    !before(seq, lo) && !after(seq, hi)
}

/// `a` comes before `b` in sequence space (Linux `before()`).
#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

#[inline]
/// True when `b` is a `Conn::state` byte a TCP entry can hold: a state (bits 0..4)
/// and a last index (bits 4..7) that exist (the snapshot reader's check).
pub(crate) fn state_bits_valid(b: u8) -> bool {
    usize::from(b & 0x0f) < TcpState::ALL.len() && (b >> 4) & 0x07 <= Index::None as u8
}

fn last_index(c: &Conn) -> Index {
    Index::from_bits(c.state >> 4)
}

#[inline]
fn last_dir(c: &Conn) -> usize {
    usize::from(c.state >> 7)
}

#[inline]
fn tcp_state(c: &Conn) -> TcpState {
    TcpState::from_bits(c.state)
}

#[inline]
fn in_state(c: &Conn, s: TcpState) -> bool {
    c.state & 0x0f == s as u8
}

fn set_last(c: &mut Conn, index: Index, dir: usize) {
    c.state = (c.state & 0x0f) | ((index as u8) << 4) | ((dir as u8) << 7);
}

fn set_state(c: &mut Conn, s: TcpState) {
    c.state = (c.state & 0xf0) | s as u8;
}

/// The TCP state of an entry, for listings and admission classes.
pub(crate) fn state_of(c: &Conn) -> TcpState {
    tcp_state(c)
}

/// Linux `nf_conntrack_tcp_established`.
fn established(c: &Conn) -> bool {
    in_state(c, Established) && c.has(cflag::ASSURED)
}

/// Initialises an entry from the segment that creates it (Linux `tcp_new`), always in
/// the ORIGINAL direction: a `reverse-of-allowed` pickup creates as ORIGINAL and swaps
/// the directions afterwards (see the engine). Returns false when the segment cannot
/// create a connection (Linux: invalid new; a mid-stream segment without `loose`).
pub(crate) fn init_new(c: &mut Conn, seg: &Segment, loose: bool) -> bool {
    let new_state = match next(ORIGINAL, seg.index, None) {
        Next::To(s) => s,
        Next::Iv | Next::Ig => return false,
    };
    c.peer = [Peer::default(); 2];
    c.maxack = [0; 2];
    c.pflags = [0; 2];
    c.scales = 0;
    let win = u32::from(seg.win).max(1);
    if new_state == SynSent {
        c.peer[ORIGINAL] = Peer { end: seg.end, maxend: seg.end, maxwin: win };
        apply_options(c, ORIGINAL, &Options::parse(seg.opts));
    } else if !loose {
        return false;
    } else {
        // Mid-stream: "its history is lost for us. Let's try to use the data from the
        // packet", and assume SACK and liberal window checking to cope with scaling.
        c.peer[ORIGINAL] = Peer { end: seg.end, maxend: seg.end.wrapping_add(win), maxwin: win };
        c.pflags = [pflag::SACK_PERM | pflag::BE_LIBERAL; 2];
    }
    set_state(c, None);
    set_last(c, Index::None, ORIGINAL);
    true
}

/// Linux `tcp_new` and then `nf_conntrack_tcp_packet` for the SYN that creates an
/// entry, folded into what the two leave for it: the originator known from the SYN,
/// the responder's window edge at the SYN's window (at least 1), SYN_SENT. Every
/// check the two run passes for a fresh SYN (its sequence number is its sender's only
/// state, the responder has none), so what is left is the assignment; under a SYN
/// flood every packet that creates an entry is one, and the pair cost ~250
/// instructions more. `syn_open_equals_general` checks it against the two on random
/// SYNs. The caller has checked the flags (`valid_flags`) and that the segment's
/// index is SYN.
pub(crate) fn open_with_syn(c: &mut Conn, seg: &Segment) -> TimerClass {
    debug_assert_eq!(seg.index, Index::Syn, "open_with_syn takes a SYN");
    let opened = init_new(c, seg, false);
    debug_assert!(opened, "tcp_new accepts every SYN");
    // What `tcp_in_window`'s update leaves the responder with: its window edge at the
    // SYN's window, one past 0 when that is 0.
    c.peer[REPLY].maxend = u32::from(seg.win).max(1);
    set_state(c, SynSent);
    set_last(c, Index::Syn, ORIGINAL);
    TimerClass::TcpSynSent
}

/// A state change decided by `packet`, carried out by `finish` once the window allows.
#[derive(Debug, Clone, Copy)]
struct Transition {
    old: TcpState,
    new: TcpState,
    /// Skip the window check (an RST in a closing state, one answering an ignored SYN).
    skip_window: bool,
}

/// Linux `nf_conntrack_tcp_packet` for a segment of a known connection, `dir` being its
/// direction. Flags were validated by the caller.
pub(crate) fn packet(c: &mut Conn, aux: &mut ConnAux, dir: usize, seg: &Segment, timeouts: &Timeouts) -> Outcome {
    let old_state = tcp_state(c);
    let idx = seg.index;
    let mut tr = Transition { old: old_state, new: old_state, skip_window: false };

    match next(dir, idx, old_state) {
        Next::Iv => return Outcome::Invalid { reason: DropReason::InvalidTcpState, shrink: false },
        Next::To(SynSent) if old_state < TimeWait => {
            tr.new = SynSent;
            return finish(c, dir, seg, tr, timeouts);
        }
        n @ (Next::To(SynSent) | Next::Ig) => {
            if n == Next::To(SynSent) {
                // RFC 1122: a SYN may reopen a connection in TIME-WAIT. Also handle a
                // client that aborted and starts over.
                let close_init = (c.pflags[dir] | c.pflags[1 - dir]) & pflag::CLOSE_INIT != 0;
                if close_init || (last_dir(c) == dir && last_index(c) == Index::Rst) {
                    return Outcome::Reopen;
                }
                // Otherwise fall through to the ignore logic.
            }
            // Ignored packets: our entry may be out of sync; let the hosts sort it out.
            if idx == Index::SynAck && last_index(c) == Index::Syn && last_dir(c) != dir && seg.ack == c.last_end {
                // b) This SYN/ACK acknowledges a SYN we ignored: the hosts are in sync,
                // we are not. Resync from the annotated values.
                let ld = last_dir(c);
                tr.old = SynSent;
                tr.new = SynRecv;
                c.peer[ld] = Peer { end: c.last_end, maxend: c.last_end, maxwin: u32::from(aux.last_win).max(1) };
                c.set_scale(ld, aux.last_wscale);
                aux.last_flags &= !aux_flag::EXP_CHALLENGE_ACK;
                c.pflags[ld] = aux.last_flags & (pflag::WINDOW_SCALE | pflag::SACK_PERM);
                c.peer[dir] = Peer::default();
                c.pflags[dir] = 0;
                c.maxack[dir] = 0;
                c.set_scale(dir, 0);
            } else {
                set_last(c, idx, dir);
                c.last_end = seg.end;
                aux.last_win = seg.win;
                if seg.win == 0 { c.flags |= cflag::LAST_WIN_ZERO } else { c.flags &= !cflag::LAST_WIN_ZERO }
                if idx == Index::Syn && dir == ORIGINAL {
                    // a) A SYN in ORIGINAL: annotate its options; if valid, the server
                    // answers with a SYN/ACK and we get in sync.
                    let o = Options::parse(seg.opts);
                    aux.last_flags &= aux_flag::ORIGIN_INSIDE;
                    aux.last_wscale = 0;
                    if let Some(ws) = o.wscale {
                        aux.last_flags |= pflag::WINDOW_SCALE;
                        aux.last_wscale = ws;
                    }
                    if o.sack_permitted {
                        aux.last_flags |= pflag::SACK_PERM;
                    }
                    // RFC 5961 challenge ACK: in LAST_ACK the answering ACK must not
                    // be taken for the ACK of the last FIN.
                    if old_state == LastAck {
                        aux.last_flags |= aux_flag::EXP_CHALLENGE_ACK;
                    }
                }
                return Outcome::Ignore;
            }
        }
        Next::To(TimeWait)
            // RFC 5961 challenge ACK answering a spurious SYN: not the last ACK.
            if old_state == LastAck
                && idx == Index::Ack
                && last_dir(c) != dir
                && last_index(c) == Index::Syn
                && aux.last_flags & aux_flag::EXP_CHALLENGE_ACK != 0 =>
        {
            aux.last_flags &= !aux_flag::EXP_CHALLENGE_ACK;
            return Outcome::Ignore;
        }
        Next::To(SynSent2) => {
            // The table cannot express simultaneous open alone.
            aux.last_flags |= aux_flag::SIMULTANEOUS_OPEN;
            tr.new = SynSent2;
        }
        Next::To(SynRecv) if dir == REPLY && idx == Index::Ack && aux.last_flags & aux_flag::SIMULTANEOUS_OPEN != 0 => {
            tr.new = Established;
        }
        Next::To(Close) if idx == Index::Rst => {
            tr.new = Close;
            if old_state.is_closing() {
                // The tuple may already be reused; skip sequence validation.
                tr.skip_window = true;
            } else {
                // td_maxack might be outdated if we let a SYN through earlier.
                if c.pflags[1 - dir] & pflag::MAXACK_SET != 0 && last_index(c) != Index::Syn {
                    let seq = seg.seq;
                    if seq == 0 && !established(c) {
                        // Most likely the answer to a SYN we let through.
                    } else if before(seq, c.maxack[1 - dir]) {
                        return Outcome::Invalid { reason: DropReason::InvalidRst, shrink: false };
                    } else if !established(c) || seq == c.maxack[1 - dir] {
                        // Exact or not established: a real reset.
                    } else if last_index(c) == Index::Ack && last_dir(c) == dir && seq == c.last_end {
                        // Part of a train: data then RST.
                    } else {
                        // Not exact: keep the state, a challenge ACK may follow.
                        tr.new = old_state;
                    }
                }
                let seen_reply = c.has(cflag::SEEN_REPLY);
                let assured = c.has(cflag::ASSURED);
                if ((seen_reply && last_index(c) == Index::Syn) || (!assured && last_index(c) == Index::Ack)) && seg.ack == c.last_end {
                    // RST answering an ignored SYN or a half-open ACK: delete the entry;
                    // skip window checks, the RST may ack segments we ignored.
                    tr.skip_window = true;
                }
            }
        }
        Next::To(s) => tr.new = s,
    }
    finish(c, dir, seg, tr, timeouts)
}

fn finish(c: &mut Conn, dir: usize, seg: &Segment, tr: Transition, timeouts: &Timeouts) -> Outcome {
    let idx = seg.index;
    if !tr.skip_window {
        match in_window(c, dir, seg) {
            Window::Accept => {}
            Window::Ignore => return Outcome::Ignore,
            Window::Invalid => {
                // Linux `nf_tcp_handle_invalid`: an out-of-window FIN/RST answering a
                // FIN/RST of the other side shortens an assured flow's timeout.
                let mut shrink = false;
                if c.has(cflag::ASSURED) && matches!(idx, Index::Rst | Index::Fin) {
                    if last_dir(c) != dir && matches!(last_index(c), Index::Fin | Index::Rst) {
                        shrink = true;
                    } else {
                        set_last(c, idx, dir);
                    }
                }
                return Outcome::Invalid { reason: DropReason::OutOfWindow, shrink };
            }
        }
    }
    // From now on the packet is in window.
    set_last(c, idx, dir);
    set_state(c, tr.new);
    if tr.old != tr.new && tr.new == FinWait {
        c.pflags[dir] |= pflag::CLOSE_INIT;
    }
    let mut timer = timer_class(c, tr.new, idx, timeouts);
    if !c.has(cflag::SEEN_REPLY) {
        // "If only reply is a RST, we can consider ourselves not to have an
        // established connection": delete at once.
        if seg.has(f::RST) {
            return Outcome::Kill;
        }
        // A picked-up flow without a reply does not get the long ESTABLISHED timeout.
        if tr.new == Established && timeouts.ticks(timer) > timeouts.ticks(TimerClass::TcpUnack) {
            timer = TimerClass::TcpUnack;
        }
    } else if !c.has(cflag::ASSURED) && matches!(tr.old, SynRecv | Established) && tr.new == Established {
        // A valid ACK in ESTABLISHED after SYN_RECV, or an answer to a picked-up flow.
        c.flags |= cflag::ASSURED;
    }
    Outcome::Accept(timer)
}

/// The timeout class of a TCP state.
pub(crate) fn state_class(s: TcpState) -> TimerClass {
    match s {
        SynSent => TimerClass::TcpSynSent,
        SynRecv => TimerClass::TcpSynRecv,
        Established => TimerClass::TcpEstablished,
        FinWait => TimerClass::TcpFinWait,
        CloseWait => TimerClass::TcpCloseWait,
        LastAck => TimerClass::TcpLastAck,
        TimeWait => TimerClass::TcpTimeWait,
        Close => TimerClass::TcpClose,
        SynSent2 => TimerClass::TcpSynSent2,
        None => TimerClass::TcpSynSent,
    }
}

mod window;

pub(crate) use window::fast_established;
use window::{Window, apply_options, in_window, timer_class};

#[cfg(test)]
mod tests;
