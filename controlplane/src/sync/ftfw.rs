//! FTFW, conntrackd's reliable mode (`src/sync-ftfw.c`), as two pure state machines:
//! no sockets, no clock reads — the endpoint feeds them messages and the time.
//!
//! The sender numbers every data message and keeps it in a bounded resend queue until
//! the peer acknowledges it; a NACK re-sends the range asked for (as current state,
//! with new numbers); ALIVE goes out after a second without traffic, carrying the last
//! number used so that the peer notices a lost tail. HELLO, as conntrackd says it: every
//! message carries it until the peer's HELLO_BACK arrives, so that a peer that joins
//! late or restarted resets its expectations instead of asking for a gap of billions;
//! the next message after a HELLO from the peer carries HELLO_BACK. The receiver
//! acknowledges every `ack_window` messages in order and asks at once for a gap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::proto::{Message, flag};

/// conntrackd's defaults.
pub const ACK_WINDOW: u32 = 300;
pub const RESEND_QUEUE: usize = 131_072;
pub const ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// A HELLO numbered this far past the last number or more (or before it) starts over:
/// the peer restarted. Nearer, it is a gap in a stream that still says HELLO.
const HELLO_GAP: u32 = 1 << 16;

fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Counters of one side, for `/status` and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub resent: u64,
    pub received: u64,
    pub acks_sent: u64,
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// Messages the receiver found missing (a gap before a later one).
    pub lost: u64,
    /// Messages dropped from a full resend queue before the peer acknowledged them
    /// (recovered only by a resync).
    pub resend_overflow: u64,
    pub resyncs_received: u64,
}

/// The sending half.
#[derive(Debug)]
pub struct Sender {
    next: u32,
    /// Data messages sent and not yet acknowledged, oldest first.
    queue: VecDeque<Message>,
    limit: usize,
    /// Say HELLO (until the peer's HELLO_BACK).
    hello: bool,
    /// The peer said HELLO: the next message says HELLO_BACK.
    hello_back: bool,
    last_sent: Option<Instant>,
    pub stats: Stats,
}

impl Sender {
    /// Starts numbering at `first` (conntrackd uses the time of day), keeping at most
    /// `limit` messages for resending (0: none, NOTRACK and ALARM).
    pub fn new(first: u32, limit: usize) -> Sender {
        Sender { next: first, queue: VecDeque::new(), limit, hello: true, hello_back: false, last_sent: None, stats: Stats::default() }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn number(&mut self) -> u32 {
        let s = self.next;
        self.next = self.next.wrapping_add(1);
        s
    }

    /// The flags of the HELLO handshake the next message carries.
    fn greeting(&mut self) -> u8 {
        let mut f = 0;
        if self.hello {
            f |= flag::HELLO;
        }
        if std::mem::take(&mut self.hello_back) {
            f |= flag::HELLO_BACK;
        }
        f
    }

    /// What a message from the peer says of the handshake: its HELLO (answer with
    /// HELLO_BACK), its HELLO_BACK (stop saying HELLO).
    pub fn heard(&mut self, flags: u8) {
        if flags & flag::HELLO != 0 {
            self.hello_back = true;
        }
        if flags & flag::HELLO_BACK != 0 {
            self.hello = false;
        }
    }

    /// Still saying HELLO (no HELLO_BACK yet).
    pub fn greeting_pending(&self) -> bool {
        self.hello
    }

    /// Numbers a data message (`Message::Flow`), queues it for resending and returns it
    /// to send. Until the peer's HELLO_BACK it carries HELLO.
    pub fn data(&mut self, m: Message, now: Instant) -> Message {
        self.stats.sent += 1;
        self.number_and_keep(m, now)
    }

    /// Numbers and queues a message sent again (counted as resent, not as sent).
    pub fn resend(&mut self, m: Message, now: Instant) -> Message {
        self.stats.resent += 1;
        self.number_and_keep(m, now)
    }

    fn number_and_keep(&mut self, mut m: Message, now: Instant) -> Message {
        let seq = self.number();
        let greeting = self.greeting();
        if let Message::Flow { seq: s, flags, .. } = &mut m {
            *s = seq;
            *flags = (*flags & !(flag::HELLO | flag::HELLO_BACK)) | greeting;
        }
        if self.limit > 0 {
            if self.queue.len() == self.limit {
                self.queue.pop_front();
                self.stats.resend_overflow += 1;
            }
            self.queue.push_back(m.clone());
        }
        self.last_sent = Some(now);
        m
    }

    /// What the peer's control message asks of this side: messages to send again (a
    /// NACK's range; or, at an ACK, what is still queued from before the range it
    /// names — the start of the stream when the first datagram was lost, or a window
    /// whose ACK was), or `Resync` (send the whole table). The messages come out of
    /// the queue unnumbered: the caller brings each up to date (conntrackd re-sends
    /// the flow as it is now, not as it was) and numbers it with [`Sender::resend`].
    pub fn control(&mut self, m: &Message) -> Reply {
        let Message::Ctl { flags, range, .. } = m else { return Reply::None };
        if flags & flag::RESYNC != 0 {
            self.stats.resyncs_received += 1;
            // The whole table follows, numbered afresh: nothing queued is needed.
            self.queue.clear();
            return Reply::Resync;
        }
        let Some((from, to)) = *range else { return Reply::None };
        let mut again = Vec::new();
        if flags & flag::ACK != 0 {
            // What was numbered `from..=to` arrived (and only that: a message before
            // `from` may never have, so it goes again).
            self.queue.retain(|q| before(q.seq(), from) || before(to, q.seq()));
            while self.queue.front().is_some_and(|q| before(q.seq(), from)) {
                again.extend(self.queue.pop_front());
            }
        }
        if flags & flag::NACK != 0 {
            self.stats.nacks_received += 1;
            again.extend(self.queue.iter().filter(|q| !before(q.seq(), from) && !before(to, q.seq())).cloned());
            self.queue.retain(|q| before(q.seq(), from) || before(to, q.seq()));
        }
        if again.is_empty() && flags & flag::NACK == 0 { Reply::None } else { Reply::Send(again) }
    }

    /// An ALIVE, numbered like every message, when nothing was sent for
    /// `ALIVE_INTERVAL`: a peer that lost the last messages sees the gap before it.
    pub fn alive(&mut self, now: Instant) -> Option<Message> {
        if self.last_sent.is_some_and(|t| now.duration_since(t) < ALIVE_INTERVAL) {
            return None;
        }
        Some(self.ctl(flag::ALIVE, None, now))
    }

    /// A control message of this side's own (ACK, NACK, RESYNC, ALIVE) with a number
    /// of its own: conntrackd tracks the numbers of every message, and drops one whose
    /// number it has seen before.
    pub fn ctl(&mut self, flags: u8, range: Option<(u32, u32)>, now: Instant) -> Message {
        let flags = flags | self.greeting();
        self.last_sent = Some(now);
        Message::Ctl { flags, seq: self.number(), range }
    }
}

/// What the sender must do about a control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    None,
    Send(Vec<Message>),
    Resync,
}

/// The receiving half.
#[derive(Debug)]
pub struct Receiver {
    /// The last number received in order (`None` until the first message, or after a
    /// HELLO).
    last: Option<u32>,
    /// First number of the window not yet acknowledged.
    window_start: Option<u32>,
    in_window: u32,
    ack_window: u32,
    pub last_heard: Option<Instant>,
    pub stats: Stats,
}

/// What a received message means for the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Apply it (a data message in order, or after a gap that was asked for again).
    pub apply: bool,
    /// Control messages to send back (ACK, NACK).
    pub send: Vec<(u8, (u32, u32))>,
    /// The first message heard was not a HELLO: what came before it (the HELLO
    /// included) was lost, and no number says how much. Ask for the whole table.
    pub resync: bool,
}

impl Receiver {
    pub fn new(ack_window: u32) -> Receiver {
        Receiver { last: None, window_start: None, in_window: 0, ack_window: ack_window.max(1), last_heard: None, stats: Stats::default() }
    }

    /// A message numbered `seq` arrived (data or control: every message is numbered;
    /// `hello` when it carries HELLO, `alive` for an ALIVE). Says whether to apply it
    /// (data only) and what to send back: a NACK for a gap before it, an ACK when a
    /// window is full — or, on an ALIVE, for a window that waits.
    pub fn message(&mut self, seq: u32, hello: bool, alive: bool, now: Instant) -> Received {
        self.last_heard = Some(now);
        self.stats.received += u64::from(!alive);
        let mut send = Vec::new();
        let resync = self.last.is_none() && !hello;
        // A HELLO that continues the numbering (perhaps after a gap) is a peer still
        // waiting for its HELLO_BACK: nothing to reset, a gap is asked for as ever. A
        // restarted peer numbers from elsewhere (conntrackd: the time of day).
        if hello && self.last.is_none_or(|l| seq.wrapping_sub(l).wrapping_sub(1) >= HELLO_GAP) {
            // A restarted peer: start over from this number.
            self.last = None;
            self.window_start = None;
            self.in_window = 0;
        }
        match self.last {
            Some(l) if before(seq, l.wrapping_add(1)) => {
                // Old or duplicate: already applied (a resend crossed an ACK).
                return Received { apply: false, send, resync };
            }
            Some(l) if seq != l.wrapping_add(1) => {
                // As conntrackd: acknowledge the window up to the gap, ask for the gap,
                // and start a new window at this message.
                if let Some(start) = self.window_start.take() {
                    self.stats.acks_sent += 1;
                    send.push((flag::ACK, (start, l)));
                }
                self.in_window = 0;
                let (from, to) = (l.wrapping_add(1), seq.wrapping_sub(1));
                self.stats.lost += u64::from(to.wrapping_sub(from)) + 1;
                self.stats.nacks_sent += 1;
                send.push((flag::NACK, (from, to)));
            }
            _ => {}
        }
        self.last = Some(seq);
        let start = *self.window_start.get_or_insert(seq);
        self.in_window += 1;
        if self.in_window >= self.ack_window || (alive && self.in_window > 1) {
            self.stats.acks_sent += 1;
            send.push((flag::ACK, (start, seq)));
            self.window_start = None;
            self.in_window = 0;
        }
        Received { apply: !alive, send, resync }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u16) -> Message {
        Message::Flow { kind: 0, flags: 0, seq: 0, flow: crate::sync::udp_flow(1, i) }
    }

    /// Sends `n` messages through a link that loses what `lose` says, with ALIVEs and
    /// the receiver's ACK/NACKs going back (never lost), until quiet; returns the set
    /// of ports applied.
    fn run(n: u16, lose: impl Fn(u32) -> bool, window: u32) -> (Vec<u16>, Stats, Stats, usize) {
        let t0 = Instant::now();
        let mut s = Sender::new(4_000_000_000, RESEND_QUEUE);
        let mut r = Receiver::new(window);
        let mut applied = Vec::new();
        let mut wire: VecDeque<Message> = (0..n).map(|i| s.data(flow(i), t0)).collect();
        let mut transmissions = 0u32;
        for round in 0..100u64 {
            let now = t0 + Duration::from_secs(2 * round + 2);
            while let Some(m) = wire.pop_front() {
                transmissions += 1;
                if lose(transmissions) {
                    continue;
                }
                let replies = match &m {
                    Message::Flow { seq, flags, flow, .. } => {
                        let got = r.message(*seq, flags & flag::HELLO != 0, false, now);
                        if got.apply {
                            applied.push(flow.sport);
                        }
                        got.send
                    }
                    Message::Ctl { seq, flags, .. } => r.message(*seq, flags & flag::HELLO != 0, true, now).send,
                    Message::Expectation { .. } => vec![],
                };
                for (f, range) in replies {
                    // The receiver's side answers the HELLO on its first reply.
                    s.heard(flag::HELLO_BACK);
                    if let Reply::Send(again) = s.control(&Message::Ctl { flags: f, seq: 0, range: Some(range) }) {
                        for m in again {
                            let m = s.resend(m, now);
                            wire.push_back(m);
                        }
                    }
                }
            }
            if s.queued() == 0 {
                break;
            }
            if let Some(a) = s.alive(now) {
                wire.push_back(a);
            }
        }
        applied.sort_unstable();
        applied.dedup();
        (applied, s.stats, r.stats, s.queued())
    }

    #[test]
    fn everything_arrives_in_order_and_is_acknowledged() {
        let (got, s, r, queued) = run(1000, |_| false, ACK_WINDOW);
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!((s.sent, s.resent, r.lost, queued), (1000, 0, 0, 0), "acknowledged by windows and the last ALIVE");
        assert_eq!(r.acks_sent, 4);
    }

    #[test]
    fn five_percent_loss_is_recovered_by_nacks_and_alives() {
        // Every 20th transmission is lost, data and ALIVEs alike.
        let (got, s, r, queued) = run(5000, |t| t % 20 == 0, ACK_WINDOW);
        assert_eq!(got, (0..5000).collect::<Vec<_>>(), "every flow arrives");
        assert!(s.resent >= 250 && r.lost >= 250, "{s:?} {r:?}");
        assert_eq!(queued, 0);
    }

    #[test]
    fn a_lost_tail_is_noticed_by_the_next_alive() {
        // The last three messages are lost: only the ALIVE tells.
        let (got, _, r, _) = run(10, |t| (8..=10).contains(&t), ACK_WINDOW);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        // The resends carry new numbers, so the old ones read as a gap once more (as
        // with conntrackd); the sender has nothing left to resend for it.
        assert!(r.lost >= 3, "{r:?}");
    }

    #[test]
    fn a_lost_start_is_sent_again_when_the_first_ack_names_a_later_one() {
        // The first two messages — HELLO on both — are lost: the receiver starts at the
        // third, which also says HELLO, so no number tells it what came before. Its
        // first ACK starts there; the sender sends again what is queued before it.
        let (got, s, _, _) = run(10, |t| t <= 2, ACK_WINDOW);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert!(s.resent >= 2, "{s:?}");
    }

    #[test]
    fn a_full_resend_queue_drops_the_oldest_and_counts_it() {
        let mut s = Sender::new(0, 4);
        let now = Instant::now();
        for i in 0..6 {
            s.data(flow(i), now);
        }
        assert_eq!((s.queued(), s.stats.resend_overflow), (4, 2));
        // A NACK for a dropped range finds nothing to resend: a resync must recover it.
        assert_eq!(s.control(&Message::Ctl { flags: flag::NACK, seq: 0, range: Some((0, 1)) }), Reply::Send(vec![]));
        assert_eq!(s.control(&Message::Ctl { flags: flag::RESYNC, seq: 0, range: Some((0, 0)) }), Reply::Resync);
    }

    #[test]
    fn a_restarted_peer_says_hello_and_is_not_taken_for_a_gap() {
        let now = Instant::now();
        let mut r = Receiver::new(ACK_WINDOW);
        assert!(!r.message(100, true, false, now).resync);
        let mut joined = Receiver::new(ACK_WINDOW);
        assert!(joined.message(500, false, false, now).resync, "the stream's start (its HELLO) was lost: ask for everything");
        assert!(!joined.message(501, false, false, now).resync);
        assert!(r.message(101, false, false, now).send.is_empty());
        // The peer restarts and numbers from elsewhere.
        let got = r.message(5, true, false, now);
        assert!(got.apply && got.send.is_empty(), "{got:?}");
        assert_eq!(r.stats.lost, 0);
        // HELLO on every message until the peer's HELLO_BACK, as conntrackd.
        let mut s = Sender::new(7, 10);
        assert!(matches!(s.data(flow(1), now), Message::Flow { flags: flag::HELLO, seq: 7, .. }));
        assert!(matches!(s.ctl(flag::ALIVE, None, now), Message::Ctl { flags, seq: 8, .. } if flags == flag::ALIVE | flag::HELLO));
        s.heard(flag::ACK | flag::HELLO_BACK);
        assert!(!s.greeting_pending());
        assert!(matches!(s.data(flow(2), now), Message::Flow { flags: 0, seq: 9, .. }));
        // The peer's HELLO is answered once, on the next message of any kind.
        s.heard(flag::HELLO);
        assert!(matches!(s.ctl(flag::ACK, Some((1, 2)), now), Message::Ctl { flags, .. } if flags == flag::ACK | flag::HELLO_BACK));
        assert!(matches!(s.data(flow(3), now), Message::Flow { flags: 0, .. }));
        // A receiver does not reset on a HELLO that continues the numbering (the peer
        // still waits for its HELLO_BACK), so a gap between two HELLOs is still seen.
        let mut r = Receiver::new(ACK_WINDOW);
        assert!(r.message(1000, true, false, now).apply);
        assert!(r.message(1001, true, false, now).send.is_empty());
        let got = r.message(1003, false, false, now);
        assert_eq!(got.send, vec![(flag::ACK, (1000, 1001)), (flag::NACK, (1002, 1002))]);
    }
}
