//! TCP connection tracking equal to Linux's (`net/netfilter/nf_conntrack_proto_tcp.c`,
//! kernel 6.x): the `tcp_conntracks` state table, window tracking after Guido van
//! Rooij's "Real Stateful TCP Packet Filtering in IP Filter", the IGNORE logic that lets
//! conntrack resync when it is out of step with the hosts, RST validation, RFC 5961
//! challenge ACKs, and the timeout choice (UNACK, RETRANS, CLOSE overrides).
//!
//! Like pf, a connection is two peers indexed by direction (0 original, 1 reply), so
//! both directions run through one code path.

use super::conn::{Conn, ConnAux, ORIGINAL, Peer, REPLY, aux_flag, cflag, pflag};
use super::timeouts::{Timeouts, TimerClass};
use crate::parse::TcpMeta;
use crate::verdict::DropReason;
use crate::wire::tcp::{Options, flags as f};

/// Linux's `enum tcp_conntrack`, with sIV and sIG as in the state table.
pub mod state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const SYN_SENT2: u8 = 9;
    /// Invalid transition (Linux `TCP_CONNTRACK_MAX`).
    pub const IV: u8 = 10;
    /// Ignored: may be valid, the hosts may be in sync while we are not.
    pub const IG: u8 = 11;

    pub const NAMES: [&str; 10] = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"];
}

/// Linux's `enum tcp_bit_set`: which row of the table a segment selects.
pub mod index {
    pub const SYN: u8 = 0;
    pub const SYNACK: u8 = 1;
    pub const FIN: u8 = 2;
    pub const ACK: u8 = 3;
    pub const RST: u8 = 4;
    pub const NONE: u8 = 5;
}

use state::*;

const S_SS: u8 = SYN_SENT;
const S_SR: u8 = SYN_RECV;
const S_ES: u8 = ESTABLISHED;
const S_FW: u8 = FIN_WAIT;
const S_CW: u8 = CLOSE_WAIT;
const S_LA: u8 = LAST_ACK;
const S_TW: u8 = TIME_WAIT;
const S_CL: u8 = CLOSE;
const S_S2: u8 = SYN_SENT2;
const S_IV: u8 = IV;
const S_IG: u8 = IG;

/// `tcp_conntracks[dir][index][state]`, copied from Linux 6.x with its comments'
/// meaning: see the kernel source for the reasoning behind each cell.
#[rustfmt::skip]
pub const TABLE: [[[u8; 10]; 6]; 2] = [
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

/// Linux `tcp_max_retrans`: identical retransmissions before the RETRANS timeout.
pub const MAX_RETRANS: u8 = 3;
/// Linux `MAXACKWINCONST`.
const MAX_ACK_WIN_CONST: u32 = 66_000;

/// What tracking decided for a segment of a known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
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
pub fn valid_flags(flags: u8) -> bool {
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
pub fn index_of(flags: u8) -> u8 {
    if flags & f::RST != 0 {
        index::RST
    } else if flags & f::SYN != 0 {
        if flags & f::ACK != 0 { index::SYNACK } else { index::SYN }
    } else if flags & f::FIN != 0 {
        index::FIN
    } else if flags & f::ACK != 0 {
        index::ACK
    } else {
        index::NONE
    }
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

/// Linux `segment_seq_plus_len`.
#[inline]
fn seg_end(t: &TcpMeta) -> u32 {
    t.seq.wrapping_add(t.payload_len).wrapping_add(u32::from(t.flags & f::SYN != 0)).wrapping_add(u32::from(t.flags & f::FIN != 0))
}

#[inline]
fn last_index(c: &Conn) -> u8 {
    (c.state >> 4) & 0x07
}

#[inline]
fn last_dir(c: &Conn) -> usize {
    usize::from(c.state >> 7)
}

#[inline]
fn tcp_state(c: &Conn) -> u8 {
    c.state & 0x0f
}

fn set_last(c: &mut Conn, index: u8, dir: usize) {
    c.state = (c.state & 0x0f) | (index << 4) | ((dir as u8) << 7);
}

fn set_state(c: &mut Conn, s: u8) {
    c.state = (c.state & 0xf0) | s;
}

/// The TCP state of an entry, for listings.
pub fn state_of(c: &Conn) -> u8 {
    tcp_state(c)
}

/// Linux `nf_conntrack_tcp_established`.
fn established(c: &Conn) -> bool {
    tcp_state(c) == ESTABLISHED && c.has(cflag::ASSURED)
}

/// Linux `tcp_can_early_drop`: closing states.
pub fn is_closing(s: u8) -> bool {
    matches!(s, FIN_WAIT | LAST_ACK | TIME_WAIT | CLOSE | CLOSE_WAIT)
}

/// Applies the parsed options of a SYN to a peer (Linux `tcp_options`).
fn apply_options(c: &mut Conn, dir: usize, opts: &Options) {
    c.pflags[dir] &= !(pflag::SACK_PERM | pflag::WINDOW_SCALE);
    c.set_scale(dir, 0);
    if opts.sack_permitted {
        c.pflags[dir] |= pflag::SACK_PERM;
    }
    if let Some(ws) = opts.wscale {
        c.set_scale(dir, ws);
        c.pflags[dir] |= pflag::WINDOW_SCALE;
    }
}

/// Initialises an entry from the packet that creates it (Linux `tcp_new`). `dir` is the
/// direction the entry assigns to the packet: ORIGINAL, except for `reverse-of-allowed`
/// pickups, which are handled by creating as ORIGINAL and swapping (see the engine).
/// Returns false when the packet cannot create a connection (Linux: invalid new).
pub fn init_new(c: &mut Conn, t: &TcpMeta, opts: &[u8], loose: bool) -> bool {
    let idx = index_of(t.flags);
    let new_state = TABLE[ORIGINAL][idx as usize][NONE as usize];
    if new_state >= IV {
        return false;
    }
    c.peer = [Peer::default(); 2];
    c.maxack = [0; 2];
    c.pflags = [0; 2];
    c.scales = 0;
    let end = seg_end(t);
    let win = u32::from(t.window).max(1);
    if new_state == SYN_SENT {
        c.peer[ORIGINAL] = Peer { end, maxend: end, maxwin: win };
        let opts = Options::parse(opts);
        apply_options(c, ORIGINAL, &opts);
    } else if !loose {
        return false;
    } else {
        // Mid-stream: "its history is lost for us. Let's try to use the data from the
        // packet", and assume SACK and liberal window checking to cope with scaling.
        c.peer[ORIGINAL] = Peer { end, maxend: end.wrapping_add(win), maxwin: win };
        c.pflags = [pflag::SACK_PERM | pflag::BE_LIBERAL; 2];
    }
    set_state(c, NONE);
    set_last(c, index::NONE, ORIGINAL);
    true
}

/// Window check result (Linux `enum nf_ct_tcp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Accept,
    Ignore,
    Invalid,
}

/// Linux `tcp_init_sender`: a SYN-ACK in reply to a SYN, or a SYN from the reply
/// direction in a simultaneous open.
fn init_sender(c: &mut Conn, dir: usize, end: u32, win: u32, opts: &Options) {
    c.peer[dir] = Peer { end, maxend: end, maxwin: win.max(1) };
    apply_options(c, dir, opts);
    // RFC 7323: both sides must send the option to enable scaling in either direction.
    let both = c.pflags[dir] & pflag::WINDOW_SCALE != 0 && c.pflags[1 - dir] & pflag::WINDOW_SCALE != 0;
    if !both {
        c.set_scale(dir, 0);
        c.set_scale(1 - dir, 0);
    }
}

/// Highest SACK right edge above `ack` (Linux `tcp_sack`), when the receiver allowed
/// SACK.
fn sack_of(opts: &[u8], ack: u32) -> u32 {
    let o = Options::parse(opts);
    let mut sack = ack;
    for &edge in &o.sack_right_edges[..usize::from(o.sack_blocks)] {
        if after(edge, sack) {
            sack = edge;
        }
    }
    sack
}

/// Linux `nf_tcp_log_invalid`: a liberal sender turns every complaint into Accept.
fn complain(c: &Conn, dir: usize, res: Window) -> Window {
    if c.pflags[dir] & pflag::BE_LIBERAL != 0 { Window::Accept } else { res }
}

/// Linux `tcp_in_window`, clause by clause. `index` is the segment's row.
fn in_window(c: &mut Conn, dir: usize, index: u8, t: &TcpMeta, raw_opts: &[u8]) -> Window {
    let (s, r) = (dir, 1 - dir);
    let mut seq = t.seq;
    let mut ack = t.ack;
    let mut end = seg_end(t);
    let win = u32::from(t.window);
    let syn = t.flags & f::SYN != 0;
    let has_ack = t.flags & f::ACK != 0;
    let rst = t.flags & f::RST != 0;
    let mut sack = if c.pflags[r] & pflag::SACK_PERM != 0 && !raw_opts.is_empty() { sack_of(raw_opts, ack) } else { ack };

    if c.peer[s].maxwin == 0 {
        // Initialize sender data.
        if syn {
            let opts = Options::parse(raw_opts);
            init_sender(c, s, end, win, &opts);
            if !has_ack {
                return Window::Accept; // simultaneous open
            }
        } else {
            // Mid-stream: take what the packet tells.
            let swin = (win << c.scale(s)).max(1);
            c.peer[s] = Peer { end, maxwin: swin, maxend: end.wrapping_add(swin) };
            if c.peer[r].maxwin == 0 {
                // Nothing seen the other way yet: tweak so that III and IV pass.
                c.peer[r].end = sack;
                c.peer[r].maxend = sack;
            } else if sack == c.peer[r].end.wrapping_add(1) {
                // Likely a reply to a keepalive: needed for III.
                c.peer[r].end = c.peer[r].end.wrapping_add(1);
            }
        }
    } else if syn && after(end, c.peer[s].end) && matches!(tcp_state(c), SYN_SENT | SYN_RECV) {
        // RFC 793: a reinitialised TCP must only use larger sequence numbers. Re-init
        // this direction like for the first SYN(-ACK).
        let opts = Options::parse(raw_opts);
        init_sender(c, s, end, win, &opts);
        if dir == REPLY && !has_ack {
            return Window::Accept;
        }
    }

    if !has_ack {
        // No ACK: pretend it was set and fine.
        ack = c.peer[r].end;
        sack = ack;
    } else if t.flags & (f::ACK | f::RST) == (f::ACK | f::RST) && ack == 0 {
        // Broken stacks that set ACK with a zero value in RSTs.
        ack = c.peer[r].end;
        sack = ack;
    }

    if rst && seq == 0 && tcp_state(c) == SYN_SENT {
        // RST answering a SYN.
        seq = c.peer[s].end;
        end = seq;
    }

    let max_ack_window = c.peer[s].maxwin.max(MAX_ACK_WIN_CONST);

    // I. Upper bound for valid data: seq <= sender.td_maxend.
    if !before(seq, c.peer[s].maxend.wrapping_add(1)) {
        let overshot = end.wrapping_sub(c.peer[s].maxend).wrapping_add(1);
        let ack_ok = after(sack, c.peer[r].end.wrapping_sub(max_ack_window).wrapping_sub(1));
        let in_recv = c.peer[r].maxwin != 0 && after(end, c.peer[s].end.wrapping_sub(c.peer[r].maxwin).wrapping_sub(1));
        if in_recv && ack_ok && overshot <= c.peer[r].maxwin && before(sack, c.peer[r].end.wrapping_add(1)) {
            // Work around stacks that send more than the window allows: record the
            // data so that its ACK does not later fail clause III.
            c.peer[s].end = end;
            c.pflags[s] |= pflag::DATA_UNACKNOWLEDGED;
            return Window::Accept;
        }
        return complain(c, s, Window::Invalid);
    }
    // III. Upper bound for valid (s)ack: sack <= receiver.td_end.
    if !before(sack, c.peer[r].end.wrapping_add(1)) {
        return complain(c, s, Window::Invalid);
    }
    // II. Lower bound for valid data: seq + len >= sender.td_end - receiver.td_maxwin.
    // Below it is a stale retransmission: let it through, change nothing.
    let in_recv_win = c.peer[r].maxwin == 0 || after(end, c.peer[s].end.wrapping_sub(c.peer[r].maxwin).wrapping_sub(1));
    if !in_recv_win {
        return complain(c, s, Window::Ignore);
    }
    // IV. Lower bound for valid (s)ack: sack >= receiver.td_end - MAXACKWINDOW.
    if !after(sack, c.peer[r].end.wrapping_sub(max_ack_window).wrapping_sub(1)) {
        return complain(c, s, Window::Ignore);
    }

    update_peers(c, dir, index, seq, ack, sack, end, t.window, syn, has_ack);
    Window::Accept
}

/// The updates of an in-window segment (the second half of Linux `tcp_in_window`).
#[allow(clippy::too_many_arguments)]
#[inline]
fn update_peers(c: &mut Conn, dir: usize, index: u8, seq: u32, ack: u32, sack: u32, end: u32, win_raw: u16, syn: bool, has_ack: bool) {
    let (s, r) = (dir, 1 - dir);
    // Window scaling (RFC 7323) applies to every segment but a SYN.
    let mut win = u32::from(win_raw);
    if !syn {
        win <<= c.scale(s);
    }
    // Update sender data.
    let swin = win.wrapping_add(sack.wrapping_sub(ack));
    if c.peer[s].maxwin < swin {
        c.peer[s].maxwin = swin;
    }
    if after(end, c.peer[s].end) {
        c.peer[s].end = end;
        c.pflags[s] |= pflag::DATA_UNACKNOWLEDGED;
    }
    if has_ack {
        if c.pflags[s] & pflag::MAXACK_SET == 0 {
            c.maxack[s] = ack;
            c.pflags[s] |= pflag::MAXACK_SET;
        } else if after(ack, c.maxack[s]) {
            c.maxack[s] = ack;
        }
    }
    // Update receiver data.
    if c.peer[r].maxwin != 0 && after(end, c.peer[s].maxend) {
        c.peer[r].maxwin = c.peer[r].maxwin.wrapping_add(end.wrapping_sub(c.peer[s].maxend));
    }
    if after(sack.wrapping_add(win), c.peer[r].maxend.wrapping_sub(1)) {
        c.peer[r].maxend = sack.wrapping_add(win);
        if win == 0 {
            c.peer[r].maxend = c.peer[r].maxend.wrapping_add(1);
        }
    }
    if ack == c.peer[r].end {
        c.pflags[r] &= !pflag::DATA_UNACKNOWLEDGED;
    }
    // Check retransmissions: Linux compares (dir, seq, ack, end, window) with the last
    // in-window ACK; a 16-bit fingerprint of them stands in for the 14 bytes it keeps.
    if index == index::ACK {
        let fp = fingerprint(dir, seq, ack, end, win_raw);
        if last_dir(c) == dir && c.retrans_fp == fp {
            c.set_retrans(c.retrans() + 1);
        } else {
            c.retrans_fp = fp;
            c.set_retrans(0);
        }
        // Linux keeps last_end and last_win from the same place.
        c.last_end = end;
        if win_raw == 0 { c.flags |= cflag::LAST_WIN_ZERO } else { c.flags &= !cflag::LAST_WIN_ZERO }
    }
}

/// The timeout an accepted segment leaves the entry with (the end of Linux
/// `nf_conntrack_tcp_packet`), before the SEEN_REPLY adjustments.
#[inline]
fn timer_class(c: &Conn, new_state: u8, idx: u8, timeouts: &Timeouts) -> TimerClass {
    let class = state_class(new_state);
    let unack = (c.pflags[0] | c.pflags[1]) & pflag::DATA_UNACKNOWLEDGED != 0;
    if c.retrans() >= MAX_RETRANS && timeouts.ticks(class) > timeouts.ticks(TimerClass::TcpRetrans) {
        TimerClass::TcpRetrans
    } else if idx == index::RST {
        TimerClass::TcpClose
    } else if unack && timeouts.ticks(class) > timeouts.ticks(TimerClass::TcpUnack) {
        TimerClass::TcpUnack
    } else if c.has(cflag::LAST_WIN_ZERO) && timeouts.ticks(class) > timeouts.ticks(TimerClass::TcpRetrans) {
        TimerClass::TcpRetrans
    } else {
        class
    }
}

/// The hot case: an assured, replied ESTABLISHED flow receiving a segment whose only
/// control flag is ACK, with both peers known and no SACK blocks to read. It runs the
/// checks the general path runs for that case and the same update and timer helpers,
/// without the dispatch. Anything other than a plain accept returns `None`, with the
/// entry untouched, and the general path decides (`fast_path_equals_general` checks
/// the equivalence on random segments).
#[inline]
pub fn fast_established(c: &mut Conn, dir: usize, t: &TcpMeta, has_options: bool, timeouts: &Timeouts) -> Option<TimerClass> {
    const NEED: u8 = cflag::SEEN_REPLY | cflag::ASSURED;
    if tcp_state(c) != ESTABLISHED || c.flags & NEED != NEED || t.flags & (f::SYN | f::FIN | f::RST | f::ACK) != f::ACK {
        return None;
    }
    let (s, r) = (dir & 1, 1 - (dir & 1));
    if c.peer[s].maxwin == 0 || c.peer[r].maxwin == 0 || (has_options && c.pflags[r] & pflag::SACK_PERM != 0) {
        return None;
    }
    let (seq, ack) = (t.seq, t.ack);
    let end = seq.wrapping_add(t.payload_len);
    let max_ack_window = c.peer[s].maxwin.max(MAX_ACK_WIN_CONST);
    let in_window = before(seq, c.peer[s].maxend.wrapping_add(1)) // I
        && before(ack, c.peer[r].end.wrapping_add(1)) // III
        && after(end, c.peer[s].end.wrapping_sub(c.peer[r].maxwin).wrapping_sub(1)) // II
        && after(ack, c.peer[r].end.wrapping_sub(max_ack_window).wrapping_sub(1)); // IV
    if !in_window {
        return None;
    }
    update_peers(c, s, index::ACK, seq, ack, ack, end, t.window, false, true);
    set_last(c, index::ACK, s);
    Some(timer_class(c, ESTABLISHED, index::ACK, timeouts))
}

fn fingerprint(dir: usize, seq: u32, ack: u32, end: u32, win: u16) -> u16 {
    let x = (u64::from(seq) << 32 | u64::from(ack)) ^ (u64::from(end) << 16 | u64::from(win)) ^ dir as u64;
    let m = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (m >> 48) as u16
}

/// Linux `nf_conntrack_tcp_packet` for a segment of a known connection, `dir` being its
/// direction. Flags were validated by the caller.
pub fn packet(c: &mut Conn, aux: &mut ConnAux, dir: usize, t: &TcpMeta, opts: &[u8], timeouts: &Timeouts) -> Outcome {
    let old_state = tcp_state(c);
    let idx = index_of(t.flags);
    let mut old = old_state;
    let mut new_state = TABLE[dir][idx as usize][old_state as usize];
    let mut skip_window = false;

    match new_state {
        SYN_SENT | IG => {
            if new_state == SYN_SENT {
                if old_state < TIME_WAIT {
                    return finish(c, aux, dir, idx, t, opts, old, new_state, false, timeouts);
                }
                // RFC 1122: a SYN may reopen a connection in TIME-WAIT. Also handle a
                // client that aborted and starts over.
                let close_init = (c.pflags[dir] | c.pflags[1 - dir]) & pflag::CLOSE_INIT != 0;
                if close_init || (last_dir(c) == dir && last_index(c) == index::RST) {
                    return Outcome::Reopen;
                }
                // Otherwise fall through to the ignore logic.
            }
            // Ignored packets: our entry may be out of sync; let the hosts sort it out.
            if idx == index::SYNACK
                && last_index(c) == index::SYN
                && last_dir(c) != dir
                && t.ack == c.last_end
            {
                // b) This SYN/ACK acknowledges a SYN we ignored: the hosts are in sync,
                // we are not. Resync from the annotated values.
                let ld = last_dir(c);
                old = SYN_SENT;
                new_state = SYN_RECV;
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
                c.last_end = seg_end(t);
                aux.last_win = t.window;
                if t.window == 0 { c.flags |= cflag::LAST_WIN_ZERO } else { c.flags &= !cflag::LAST_WIN_ZERO }
                if idx == index::SYN && dir == ORIGINAL {
                    // a) A SYN in ORIGINAL: annotate its options; if valid, the server
                    // answers with a SYN/ACK and we get in sync.
                    let o = Options::parse(opts);
                    aux.last_flags &= aux_flag::ORIG_INSIDE;
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
                    if old_state == LAST_ACK {
                        aux.last_flags |= aux_flag::EXP_CHALLENGE_ACK;
                    }
                }
                return Outcome::Ignore;
            }
        }
        IV => return Outcome::Invalid { reason: DropReason::InvalidTcpState, shrink: false },
        TIME_WAIT
            // RFC 5961 challenge ACK answering a spurious SYN: not the last ACK.
            if old_state == LAST_ACK
                && idx == index::ACK
                && last_dir(c) != dir
                && last_index(c) == index::SYN
                && aux.last_flags & aux_flag::EXP_CHALLENGE_ACK != 0
            => {
                aux.last_flags &= !aux_flag::EXP_CHALLENGE_ACK;
                return Outcome::Ignore;
            }
        SYN_SENT2 => {
            // The table cannot express simultaneous open alone.
            aux.last_flags |= aux_flag::SIMULTANEOUS_OPEN;
        }
        SYN_RECV
            if dir == REPLY && idx == index::ACK && aux.last_flags & aux_flag::SIMULTANEOUS_OPEN != 0 => {
                new_state = ESTABLISHED;
            }
        CLOSE if idx == index::RST => {
            if is_closing(old_state) {
                // The tuple may already be reused; skip sequence validation.
                skip_window = true;
            } else {
                // td_maxack might be outdated if we let a SYN through earlier.
                if c.pflags[1 - dir] & pflag::MAXACK_SET != 0 && last_index(c) != index::SYN {
                    let seq = t.seq;
                    if seq == 0 && !established(c) {
                        // Most likely the answer to a SYN we let through.
                    } else if before(seq, c.maxack[1 - dir]) {
                        return Outcome::Invalid { reason: DropReason::InvalidRst, shrink: false };
                    } else if !established(c) || seq == c.maxack[1 - dir] {
                        // Exact or not established: a real reset.
                    } else if last_index(c) == index::ACK && last_dir(c) == dir && seq == c.last_end {
                        // Part of a train: data then RST.
                    } else {
                        // Not exact: keep the state, a challenge ACK may follow.
                        new_state = old_state;
                    }
                }
                let seen_reply = c.has(cflag::SEEN_REPLY);
                let assured = c.has(cflag::ASSURED);
                if ((seen_reply && last_index(c) == index::SYN) || (!assured && last_index(c) == index::ACK))
                    && t.ack == c.last_end
                {
                    // RST answering an ignored SYN or a half-open ACK: delete the entry;
                    // skip window checks, the RST may ack segments we ignored.
                    skip_window = true;
                }
            }
        }
        _ => {}
    }
    finish(c, aux, dir, idx, t, opts, old, new_state, skip_window, timeouts)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    c: &mut Conn,
    _aux: &mut ConnAux,
    dir: usize,
    idx: u8,
    t: &TcpMeta,
    opts: &[u8],
    old_state: u8,
    new_state: u8,
    skip_window: bool,
    timeouts: &Timeouts,
) -> Outcome {
    if !skip_window {
        match in_window(c, dir, idx, t, opts) {
            Window::Accept => {}
            Window::Ignore => return Outcome::Ignore,
            Window::Invalid => {
                // Linux `nf_tcp_handle_invalid`: an out-of-window FIN/RST answering a
                // FIN/RST of the other side shortens an assured flow's timeout.
                let mut shrink = false;
                if c.has(cflag::ASSURED) && matches!(idx, index::RST | index::FIN) {
                    if last_dir(c) != dir && matches!(last_index(c), index::FIN | index::RST) {
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
    set_state(c, new_state);
    if old_state != new_state && new_state == FIN_WAIT {
        c.pflags[dir] |= pflag::CLOSE_INIT;
    }
    let mut timer = timer_class(c, new_state, idx, timeouts);
    if !c.has(cflag::SEEN_REPLY) {
        // "If only reply is a RST, we can consider ourselves not to have an
        // established connection": delete at once.
        if t.flags & f::RST != 0 {
            return Outcome::Kill;
        }
        // A picked-up flow without a reply does not get the long ESTABLISHED timeout.
        if new_state == ESTABLISHED && timeouts.ticks(timer) > timeouts.ticks(TimerClass::TcpUnack) {
            timer = TimerClass::TcpUnack;
        }
    } else if !c.has(cflag::ASSURED) && matches!(old_state, SYN_RECV | ESTABLISHED) && new_state == ESTABLISHED {
        // A valid ACK in ESTABLISHED after SYN_RECV, or an answer to a picked-up flow.
        c.flags |= cflag::ASSURED;
    }
    Outcome::Accept(timer)
}

/// The timeout class of a TCP state.
pub fn state_class(s: u8) -> TimerClass {
    match s {
        SYN_SENT => TimerClass::TcpSynSent,
        SYN_RECV => TimerClass::TcpSynRecv,
        ESTABLISHED => TimerClass::TcpEstablished,
        FIN_WAIT => TimerClass::TcpFinWait,
        CLOSE_WAIT => TimerClass::TcpCloseWait,
        LAST_ACK => TimerClass::TcpLastAck,
        TIME_WAIT => TimerClass::TcpTimeWait,
        CLOSE => TimerClass::TcpClose,
        SYN_SENT2 => TimerClass::TcpSynSent2,
        _ => TimerClass::TcpSynSent,
    }
}

#[cfg(test)]
mod tests;
