//! Window tracking (the second half of `nf_conntrack_proto_tcp.c`, in its order):
//! `tcp_options`, `tcp_init_sender`, `tcp_sack`, `tcp_in_window` clause by clause and
//! the peer updates, the timeout choice, and the fast path for established flows that
//! shares those helpers.

use super::{Established, Index, MAX_ACK_WIN_CONST, MAX_RETRANS, Segment, TcpState, after, before, in_state, last_dir, set_last, state_class};
use super::{SynRecv, SynSent};
use crate::conntrack::conn::{Conn, Peer, REPLY, cflag, pflag};
use crate::conntrack::timeouts::{Timeouts, TimerClass};
use crate::wire::tcp::{Options, flags as f};

/// Applies the parsed options of a SYN to a peer (Linux `tcp_options`).
pub(super) fn apply_options(c: &mut Conn, dir: usize, opts: &Options) {
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

/// Window check result (Linux `enum nf_ct_tcp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
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

/// The numbers an in-window segment updates the peers with, after `tcp_in_window`'s
/// adjustments (an ACK assumed where none was sent, an RST's sequence number taken
/// from the sender's state).
#[derive(Debug, Clone, Copy)]
struct Update {
    seq: u32,
    ack: u32,
    sack: u32,
    end: u32,
}

/// Linux `tcp_in_window`, clause by clause.
pub(super) fn in_window(c: &mut Conn, dir: usize, seg: &Segment) -> Window {
    let (s, r) = (dir, 1 - dir);
    let win = u32::from(seg.win);
    let (syn, has_ack, rst) = (seg.has(f::SYN), seg.has(f::ACK), seg.has(f::RST));
    let mut u = Update { seq: seg.seq, ack: seg.ack, sack: seg.ack, end: seg.end };
    if c.pflags[r] & pflag::SACK_PERM != 0 && !seg.opts.is_empty() {
        u.sack = sack_of(seg.opts, u.ack);
    }

    if c.peer[s].maxwin == 0 {
        // Initialize sender data.
        if syn {
            init_sender(c, s, u.end, win, &Options::parse(seg.opts));
            if !has_ack {
                return Window::Accept; // simultaneous open
            }
        } else {
            // Mid-stream: take what the packet tells.
            let swin = (win << c.scale(s)).max(1);
            c.peer[s] = Peer { end: u.end, maxwin: swin, maxend: u.end.wrapping_add(swin) };
            if c.peer[r].maxwin == 0 {
                // Nothing seen the other way yet: tweak so that III and IV pass.
                c.peer[r].end = u.sack;
                c.peer[r].maxend = u.sack;
            } else if u.sack == c.peer[r].end.wrapping_add(1) {
                // Likely a reply to a keepalive: needed for III.
                c.peer[r].end = c.peer[r].end.wrapping_add(1);
            }
        }
    } else if syn && after(u.end, c.peer[s].end) && (in_state(c, SynSent) || in_state(c, SynRecv)) {
        // RFC 793: a reinitialised TCP must only use larger sequence numbers. Re-init
        // this direction like for the first SYN(-ACK).
        init_sender(c, s, u.end, win, &Options::parse(seg.opts));
        if dir == REPLY && !has_ack {
            return Window::Accept;
        }
    }

    if !has_ack {
        // No ACK: pretend it was set and fine.
        u.ack = c.peer[r].end;
        u.sack = u.ack;
    } else if seg.flags & (f::ACK | f::RST) == (f::ACK | f::RST) && u.ack == 0 {
        // Broken stacks that set ACK with a zero value in RSTs.
        u.ack = c.peer[r].end;
        u.sack = u.ack;
    }

    if rst && u.seq == 0 && in_state(c, SynSent) {
        // RST answering a SYN.
        u.seq = c.peer[s].end;
        u.end = u.seq;
    }

    let max_ack_window = c.peer[s].maxwin.max(MAX_ACK_WIN_CONST);

    // I. Upper bound for valid data: seq <= sender.td_maxend.
    if !before(u.seq, c.peer[s].maxend.wrapping_add(1)) {
        let overshot = u.end.wrapping_sub(c.peer[s].maxend).wrapping_add(1);
        let ack_ok = after(u.sack, c.peer[r].end.wrapping_sub(max_ack_window).wrapping_sub(1));
        let in_recv = c.peer[r].maxwin != 0 && after(u.end, c.peer[s].end.wrapping_sub(c.peer[r].maxwin).wrapping_sub(1));
        if in_recv && ack_ok && overshot <= c.peer[r].maxwin && before(u.sack, c.peer[r].end.wrapping_add(1)) {
            // Work around stacks that send more than the window allows: record the
            // data so that its ACK does not later fail clause III.
            c.peer[s].end = u.end;
            c.pflags[s] |= pflag::DATA_UNACKNOWLEDGED;
            return Window::Accept;
        }
        return complain(c, s, Window::Invalid);
    }
    // III. Upper bound for valid (s)ack: sack <= receiver.td_end.
    if !before(u.sack, c.peer[r].end.wrapping_add(1)) {
        return complain(c, s, Window::Invalid);
    }
    // II. Lower bound for valid data: seq + len >= sender.td_end - receiver.td_maxwin.
    // Below it is a stale retransmission: let it through, change nothing.
    let in_recv_win = c.peer[r].maxwin == 0 || after(u.end, c.peer[s].end.wrapping_sub(c.peer[r].maxwin).wrapping_sub(1));
    if !in_recv_win {
        return complain(c, s, Window::Ignore);
    }
    // IV. Lower bound for valid (s)ack: sack >= receiver.td_end - MAXACKWINDOW.
    if !after(u.sack, c.peer[r].end.wrapping_sub(max_ack_window).wrapping_sub(1)) {
        return complain(c, s, Window::Ignore);
    }

    update_peers(c, dir, seg, u);
    Window::Accept
}

/// The updates of an in-window segment (the second half of Linux `tcp_in_window`).
#[inline(always)]
fn update_peers(c: &mut Conn, dir: usize, seg: &Segment, u: Update) {
    let (s, r) = (dir, 1 - dir);
    // Window scaling (RFC 7323) applies to every segment but a SYN.
    let mut win = u32::from(seg.win);
    if !seg.has(f::SYN) {
        win <<= c.scale(s);
    }
    // Update sender data.
    let swin = win.wrapping_add(u.sack.wrapping_sub(u.ack));
    if c.peer[s].maxwin < swin {
        c.peer[s].maxwin = swin;
    }
    if after(u.end, c.peer[s].end) {
        c.peer[s].end = u.end;
        c.pflags[s] |= pflag::DATA_UNACKNOWLEDGED;
    }
    if seg.has(f::ACK) {
        if c.pflags[s] & pflag::MAXACK_SET == 0 {
            c.maxack[s] = u.ack;
            c.pflags[s] |= pflag::MAXACK_SET;
        } else if after(u.ack, c.maxack[s]) {
            c.maxack[s] = u.ack;
        }
    }
    // Update receiver data.
    if c.peer[r].maxwin != 0 && after(u.end, c.peer[s].maxend) {
        c.peer[r].maxwin = c.peer[r].maxwin.wrapping_add(u.end.wrapping_sub(c.peer[s].maxend));
    }
    if after(u.sack.wrapping_add(win), c.peer[r].maxend.wrapping_sub(1)) {
        c.peer[r].maxend = u.sack.wrapping_add(win);
        if win == 0 {
            c.peer[r].maxend = c.peer[r].maxend.wrapping_add(1);
        }
    }
    if u.ack == c.peer[r].end {
        c.pflags[r] &= !pflag::DATA_UNACKNOWLEDGED;
    }
    // Check retransmissions: Linux compares (dir, seq, ack, end, window) with the last
    // in-window ACK; a 16-bit fingerprint of them stands in for the 14 bytes it keeps.
    if seg.index == Index::Ack {
        // Written without branches: whether this ACK repeats the last one's direction
        // is a coin toss on a busy flow, and would mispredict as often.
        let fp = fingerprint(dir, u.seq, u.ack, u.end, seg.win);
        let same = (last_dir(c) == dir) & (c.retrans_fp == fp);
        c.retrans_fp = fp;
        c.set_retrans((c.retrans() + 1) * u8::from(same));
        // Linux keeps last_end and last_win from the same place.
        c.last_end = u.end;
        c.flags = (c.flags & !cflag::LAST_WIN_ZERO) | (cflag::LAST_WIN_ZERO * u8::from(seg.win == 0));
    }
}

/// The timeout an accepted segment leaves the entry with (the end of Linux
/// `nf_conntrack_tcp_packet`), before the SEEN_REPLY adjustments.
#[inline(always)]
pub(super) fn timer_class(c: &Conn, new_state: TcpState, idx: Index, timeouts: &Timeouts) -> TimerClass {
    let class = state_class(new_state);
    let unack = (c.pflags[0] | c.pflags[1]) & pflag::DATA_UNACKNOWLEDGED != 0;
    if c.retrans() >= MAX_RETRANS && timeouts.ticks(class) > timeouts.ticks(TimerClass::TcpRetrans) {
        TimerClass::TcpRetrans
    } else if idx == Index::Rst {
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
#[inline(always)]
pub(crate) fn fast_established(c: &mut Conn, dir: usize, seg: &Segment, timeouts: &Timeouts) -> Option<TimerClass> {
    const NEED: u8 = cflag::SEEN_REPLY | cflag::ASSURED;
    if !in_state(c, Established) || c.flags & NEED != NEED || seg.flags & (f::SYN | f::FIN | f::RST | f::ACK) != f::ACK {
        return Option::None;
    }
    let (s, r) = (dir & 1, 1 - (dir & 1));
    if c.peer[s].maxwin == 0 || c.peer[r].maxwin == 0 || (!seg.opts.is_empty() && c.pflags[r] & pflag::SACK_PERM != 0) {
        return Option::None;
    }
    let u = Update { seq: seg.seq, ack: seg.ack, sack: seg.ack, end: seg.end };
    let max_ack_window = c.peer[s].maxwin.max(MAX_ACK_WIN_CONST);
    let in_window = before(u.seq, c.peer[s].maxend.wrapping_add(1)) // I
        && before(u.ack, c.peer[r].end.wrapping_add(1)) // III
        && after(u.end, c.peer[s].end.wrapping_sub(c.peer[r].maxwin).wrapping_sub(1)) // II
        && after(u.ack, c.peer[r].end.wrapping_sub(max_ack_window).wrapping_sub(1)); // IV
    if !in_window {
        return Option::None;
    }
    update_peers(c, s, seg, u);
    set_last(c, Index::Ack, s);
    Some(timer_class(c, Established, Index::Ack, timeouts))
}

fn fingerprint(dir: usize, seq: u32, ack: u32, end: u32, win: u16) -> u16 {
    let x = (u64::from(seq) << 32 | u64::from(ack)) ^ (u64::from(end) << 16 | u64::from(win)) ^ dir as u64;
    let m = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (m >> 48) as u16
}
