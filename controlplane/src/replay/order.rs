//! What a live replay sent, what came out of the device under test, and — with
//! `--order flow` — which frames must wait for their flow's frames sent earlier on the
//! other interface to come out first.
//!
//! Every frame offered gets a slot, in capture order. A slot is *held* (its flow still
//! has frames in flight on the other side), *sent* (waiting to emerge on the far side),
//! or resolved: *forwarded* (a frame with the same bytes, TTL and IP checksum aside,
//! emerged on the far side) or *dropped* (none did within the timeout). Resolved slots
//! leave from the front, so verdicts come out in capture order. Waiting is per flow:
//! other flows' frames keep going meanwhile. Pure bookkeeping: the caller sends, receives
//! and reads the clock (tested without interfaces).

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;

use holdfast_pipeline::FlowHasher;
use holdfast_pipeline::steer::steer;

/// Frames counted as dropped that are remembered, to tell a late frame from a stray.
const LOST_KEPT: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Sent,
    Forwarded,
    Dropped,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The frame's index in the capture, and the loop it was sent in.
    index: u64,
    lap: u32,
    side: u8,
    state: State,
    flow: u64,
    key: u64,
    sent_ns: u64,
    /// The next frame in flight with the same key (a chain per key, oldest first).
    next: u64,
}

const NONE: u64 = u64::MAX;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Flow {
    /// Frames sent on each side not yet resolved.
    out: [u32; 2],
    /// Frames waiting (sequence number, bytes), in order.
    held: VecDeque<(u64, Vec<u8>)>,
}

/// A frame to send now: its sequence number, side and bytes.
pub struct Release {
    pub seq: u64,
    pub side: usize,
    pub bytes: Vec<u8>,
}

/// A resolved frame, in capture order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub index: u64,
    pub lap: u32,
    pub side: usize,
    pub forwarded: bool,
}

/// Counts over the whole replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub forwarded: u64,
    /// Sent, and nothing like it came out within the timeout.
    pub dropped: u64,
    /// Came out after its frame was counted as dropped.
    pub late: u64,
    /// Came out and matched no frame in flight (sent by the device itself, changed on
    /// the way, or sent by someone else).
    pub unmatched: u64,
    /// Frames that had to wait for their flow (flow order).
    pub held: u64,
    /// Most frames waiting at once.
    pub held_peak: u64,
}

pub struct Tracker {
    order: bool,
    timeout_ns: u64,
    hasher: FlowHasher,
    /// The match key's hasher: a `FlowHasher`'s, whose constants all come from the seed
    /// (`FixedState`'s public constants let chosen bytes cancel the seed).
    key_hasher: FlowHasher,
    /// Slots from `base` on.
    window: VecDeque<Slot>,
    base: u64,
    /// Sequence numbers in the order they were sent (for the timeout).
    sent_order: VecDeque<u64>,
    /// Frames in flight by their match key (the expected receive side included).
    /// Frames in flight by their match key: the first and last of the chain.
    by_key: Map<u64, (u64, u64)>,
    flows: Map<u64, Flow>,
    released: VecDeque<Release>,
    /// Keys of frames counted as dropped, the last `LOST_KEPT` (how many of each).
    lost: Map<u64, u32>,
    lost_order: VecDeque<u64>,
    held_now: u64,
    held_bytes: usize,
    pub counts: Counts,
}

/// Where the IP header's mutable bytes are — TTL/hop limit, and the IPv4 checksum —
/// and where the IP packet ends (Ethernet padding after it is not the packet's: a
/// router forwards a padded 60-byte frame as 54 bytes).
fn mutable_bytes(f: &[u8]) -> Option<(usize, Option<usize>, usize)> {
    let (ty, ip) = holdfast_pipeline::steer::network_header(f)?;
    let end = |len: usize| (ip + len).clamp(ip, f.len());
    match ty {
        0x0800 if f.len() >= ip + 20 => Some((ip + 8, Some(ip + 10), end(usize::from(u16::from_be_bytes([f[ip + 2], f[ip + 3]]))).max(ip + 20))),
        0x86dd if f.len() >= ip + 40 => Some((ip + 7, None, end(40 + usize::from(u16::from_be_bytes([f[ip + 4], f[ip + 5]]))))),
        _ => None,
    }
}

impl Tracker {
    /// `window`: the most frames the caller lets be unresolved at once (allocated now,
    /// so that growing never stalls the replay while frames wait to be received).
    pub fn new(order: bool, timeout_ns: u64, seed: u64, window: usize) -> Tracker {
        Tracker {
            order,
            timeout_ns,
            hasher: FlowHasher::new(seed),
            key_hasher: FlowHasher::new(seed ^ 0x6d61_7463_6865_7321),
            window: VecDeque::with_capacity(window),
            base: 0,
            sent_order: VecDeque::with_capacity(window),
            by_key: Map::with_capacity_and_hasher(window.min(1 << 16), Default::default()),
            flows: Map::default(),
            released: VecDeque::new(),
            lost: Map::default(),
            lost_order: VecDeque::new(),
            held_now: 0,
            held_bytes: 0,
            counts: Counts::default(),
        }
    }

    /// The flow a frame belongs to, for ordering: its flow's owner hash (the quoted
    /// flow's for an ICMP error); a later fragment's address pair; 0 for frames of no
    /// flow (ARP), which keep their order among themselves.
    pub fn flow_of(&self, frame: &[u8]) -> u64 {
        let s = steer(frame, &self.hasher);
        if s.owner_hash != 0 { s.owner_hash } else { s.frag.map_or(0, |f| f.pair) }
    }

    /// The key a frame is matched by when it comes out on `rx_side`: its bytes with the
    /// Ethernet addresses (a router rewrites them), the TTL (hop limit) and the IPv4
    /// header checksum left out, its length, and the side.
    pub fn match_key(&self, rx_side: usize, f: &[u8]) -> u64 {
        let mut h = self.key_hasher.build_hasher();
        h.write_usize(rx_side);
        match mutable_bytes(f) {
            Some((ttl, Some(csum), end)) => {
                h.write_usize(end);
                h.write(&f[12..ttl]);
                h.write(&f[ttl + 1..csum]);
                h.write(&f[csum + 2..end]);
            }
            Some((ttl, None, end)) => {
                h.write_usize(end);
                h.write(&f[12..ttl]);
                h.write(&f[ttl + 1..end]);
            }
            None => {
                h.write_usize(f.len());
                h.write(f);
            }
        }
        h.finish()
    }

    /// Frames offered and not yet resolved (the window the caller bounds).
    pub fn in_window(&self) -> usize {
        self.window.len()
    }

    /// Frames waiting for their flow, and their bytes.
    pub fn held(&self) -> (u64, usize) {
        (self.held_now, self.held_bytes)
    }

    /// Offers the next frame of the capture, to go out on `side`; `flow` is its
    /// [`Tracker::flow_of`] (the caller counts flows with it too: one parse a frame).
    /// `true`: send it now (it is counted as in flight from `now`); `false`: it waits
    /// for its flow (copied), and comes back through [`Tracker::pop_release`].
    pub fn offer(&mut self, index: u64, lap: u32, side: usize, frame: &[u8], flow: u64, now_ns: u64) -> bool {
        let seq = self.base + self.window.len() as u64;
        let key = self.match_key(1 - side, frame);
        let mut slot = Slot { index, lap, side: side as u8, state: State::Held, flow, key, sent_ns: 0, next: NONE };
        if self.order {
            let f = self.flows.entry(flow).or_default();
            if !f.held.is_empty() || f.out[1 - side] > 0 {
                f.held.push_back((seq, frame.to_vec()));
                self.held_now += 1;
                self.held_bytes += frame.len();
                self.counts.held += 1;
                self.counts.held_peak = self.counts.held_peak.max(self.held_now);
                self.window.push_back(slot);
                return false;
            }
            f.out[side] += 1;
        }
        slot.state = State::Sent;
        slot.sent_ns = now_ns;
        self.window.push_back(slot);
        self.launched(seq, key);
        true
    }

    fn launched(&mut self, seq: u64, key: u64) {
        self.sent_order.push_back(seq);
        match self.by_key.get_mut(&key) {
            Some((_, last)) => {
                let prev = *last;
                *last = seq;
                if let Some(p) = self.slot(prev) {
                    p.next = seq;
                }
            }
            None => {
                self.by_key.insert(key, (seq, seq));
            }
        }
    }

    /// Takes `seq` out of its key's chain (the first, nearly always: frames of one key
    /// leave in the order they were sent).
    fn unchain(&mut self, key: u64, seq: u64) {
        let Some(&(first, last)) = self.by_key.get(&key) else { return };
        let next = self.slot(seq).map_or(NONE, |s| s.next);
        if first == seq {
            if next == NONE {
                self.by_key.remove(&key);
            } else {
                self.by_key.insert(key, (next, last));
            }
            return;
        }
        // Somewhere behind the first: find its predecessor.
        let mut at = first;
        while let Some(s) = self.slot(at) {
            if s.next == seq {
                s.next = next;
                if last == seq {
                    self.by_key.insert(key, (first, at));
                }
                return;
            }
            if s.next == NONE {
                return;
            }
            at = s.next;
        }
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.window.get_mut(i)
    }

    /// A frame came out on `rx_side`.
    pub fn emerged(&mut self, rx_side: usize, frame: &[u8], now_ns: u64) {
        let key = self.match_key(rx_side, frame);
        let seq = self.by_key.get(&key).map(|&(first, _)| first);
        if let Some(seq) = seq {
            self.unchain(key, seq);
        }
        match seq {
            Some(seq) => self.resolve(seq, State::Forwarded, now_ns),
            None => match self.lost.get_mut(&key) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        self.lost.remove(&key);
                    }
                    self.counts.late += 1;
                }
                None => self.counts.unmatched += 1,
            },
        }
    }

    fn resolve(&mut self, seq: u64, to: State, now_ns: u64) {
        let Some(s) = self.slot(seq) else { return };
        if s.state != State::Sent {
            return;
        }
        s.state = to;
        let (flow, side) = (s.flow, s.side as usize);
        match to {
            State::Forwarded => self.counts.forwarded += 1,
            _ => self.counts.dropped += 1,
        }
        if !self.order {
            return;
        }
        let Some(f) = self.flows.get_mut(&flow) else { return };
        f.out[side] = f.out[side].saturating_sub(1);
        // Frames of this flow that can go now: those on a side whose other side has
        // nothing in flight, in order.
        let mut go = Vec::new();
        while let Some(&(q, _)) = f.held.front() {
            let t = self.window[(q - self.base) as usize].side as usize;
            if f.out[1 - t] > 0 {
                break;
            }
            let (q, bytes) = f.held.pop_front().expect("front exists");
            f.out[t] += 1;
            go.push((q, t, bytes));
        }
        if f.out == [0, 0] && f.held.is_empty() {
            self.flows.remove(&flow);
        }
        for (q, t, bytes) in go {
            self.held_now -= 1;
            self.held_bytes -= bytes.len();
            let key = {
                let s = self.slot(q).expect("held slot in window");
                s.state = State::Sent;
                s.sent_ns = now_ns;
                s.key
            };
            self.launched(q, key);
            self.released.push_back(Release { seq: q, side: t, bytes });
        }
    }

    /// A held frame that may go now; the caller sends it (it is in flight already).
    pub fn pop_release(&mut self) -> Option<Release> {
        self.released.pop_front()
    }

    /// Puts back a release the caller could not send yet (at the front).
    pub fn unpop_release(&mut self, r: Release) {
        self.released.push_front(r);
    }

    /// Counts frames sent `timeout` ago and still not out as dropped by the device.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&seq) = self.sent_order.front() {
            let Some(s) = self.slot(seq).map(|s| *s) else {
                self.sent_order.pop_front();
                continue;
            };
            if s.state != State::Sent {
                self.sent_order.pop_front();
                continue;
            }
            if s.sent_ns.saturating_add(self.timeout_ns) > now_ns {
                break;
            }
            self.sent_order.pop_front();
            let key = s.key;
            self.unchain(key, seq);
            self.resolve(seq, State::Dropped, now_ns);
            // Remembered for a while: if it comes out after all, it is late, not
            // unexplained.
            *self.lost.entry(key).or_default() += 1;
            self.lost_order.push_back(key);
            if self.lost_order.len() > LOST_KEPT {
                let k = self.lost_order.pop_front().expect("not empty");
                if let Some(n) = self.lost.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.lost.remove(&k);
                    }
                }
            }
        }
    }

    /// Resolved frames from the front of the window, in capture order.
    pub fn pop_outcome(&mut self) -> Option<Outcome> {
        let s = self.window.front()?;
        let forwarded = match s.state {
            State::Forwarded => true,
            State::Dropped => false,
            State::Held | State::Sent => return None,
        };
        let o = Outcome { index: s.index, lap: s.lap, side: s.side as usize, forwarded };
        self.window.pop_front();
        self.base += 1;
        Some(o)
    }

    /// Whether every frame offered has been resolved and handed out.
    pub fn is_done(&self) -> bool {
        self.window.is_empty() && self.released.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_pipeline::wire::build::FrameSpec;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn syn() -> Vec<u8> {
        FrameSpec::tcp(ip("198.51.100.1"), 40000, ip("10.0.2.1"), 80, 0x02, 1, 0).build()
    }
    fn synack() -> Vec<u8> {
        FrameSpec::tcp(ip("10.0.2.1"), 80, ip("198.51.100.1"), 40000, 0x12, 9, 2).build()
    }
    fn ack() -> Vec<u8> {
        FrameSpec::tcp(ip("198.51.100.1"), 40000, ip("10.0.2.1"), 80, 0x10, 2, 10).build()
    }
    fn other() -> Vec<u8> {
        FrameSpec::tcp(ip("198.51.100.2"), 40001, ip("10.0.2.2"), 80, 0x02, 1, 0).build()
    }

    #[test]
    fn a_reply_waits_for_its_request_to_come_out_and_other_flows_do_not() {
        let mut t = Tracker::new(true, 1_000_000, 7, 16);
        assert!(t.offer(0, 0, 0, &syn(), t.flow_of(&syn()), 0));
        assert!(!t.offer(1, 0, 1, &synack(), t.flow_of(&synack()), 1), "the reply waits: its SYN is still in the device");
        assert!(t.offer(2, 0, 0, &other(), t.flow_of(&other()), 2), "another flow goes on");
        assert!(!t.offer(3, 0, 0, &ack(), t.flow_of(&ack()), 3), "behind a held frame of its flow, even on the same side");
        assert!(t.pop_release().is_none());
        // The SYN comes out on the far side, its TTL lowered and its Ethernet addresses
        // rewritten (a router in between).
        let mut out = syn();
        out[14 + 8] -= 1;
        out[..12].copy_from_slice(&[2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8]);
        // ... and the sender's Ethernet padding dropped.
        let mut padded = syn();
        padded.resize(60, 0);
        assert_eq!(t.match_key(1, &padded), t.match_key(1, &out));
        assert_ne!(t.match_key(1, &padded), t.match_key(0, &out), "the side is part of the key");
        t.emerged(1, &out, 10);
        let r = t.pop_release().expect("the SYN-ACK may go now");
        assert_eq!((r.seq, r.side, &r.bytes[..]), (1, 1, &synack()[..]));
        assert!(t.pop_release().is_none(), "the ACK waits for the SYN-ACK");
        t.emerged(0, &synack(), 20);
        let r = t.pop_release().expect("the ACK may go now");
        assert_eq!(r.seq, 3);
        assert_eq!(t.pop_outcome(), Some(Outcome { index: 0, lap: 0, side: 0, forwarded: true }));
        assert_eq!(t.pop_outcome().map(|o| o.index), Some(1));
        assert_eq!(t.pop_outcome(), None, "frame 2 is still in flight");
        assert_eq!(t.counts.held, 2);
    }

    #[test]
    fn a_frame_that_never_comes_out_is_dropped_after_the_timeout_and_its_flow_goes_on() {
        let mut t = Tracker::new(true, 1_000, 7, 16);
        assert!(t.offer(0, 0, 0, &syn(), t.flow_of(&syn()), 0));
        assert!(!t.offer(1, 0, 1, &synack(), t.flow_of(&synack()), 0));
        t.expire(999);
        assert!(t.pop_release().is_none());
        t.expire(1_000);
        assert!(t.pop_release().is_some(), "the reply goes once its SYN is counted lost");
        assert_eq!(t.pop_outcome(), Some(Outcome { index: 0, lap: 0, side: 0, forwarded: false }));
        assert_eq!(t.counts.dropped, 1);
        // What comes out too late is late, not a stray.
        t.emerged(1, &syn(), 2_000);
        assert_eq!((t.counts.late, t.counts.unmatched), (1, 0));
        t.emerged(1, &syn(), 2_001);
        assert_eq!((t.counts.late, t.counts.unmatched), (1, 1));
    }

    #[test]
    fn without_order_nothing_waits_and_identical_frames_match_oldest_first() {
        let mut t = Tracker::new(false, 1_000, 7, 16);
        assert!(t.offer(0, 0, 0, &syn(), t.flow_of(&syn()), 0));
        assert!(t.offer(1, 0, 1, &synack(), t.flow_of(&synack()), 0));
        assert!(t.offer(2, 0, 0, &syn(), t.flow_of(&syn()), 5));
        t.emerged(1, &syn(), 6);
        t.expire(1_004);
        // The first SYN matched; the second is still within its timeout.
        assert_eq!(t.pop_outcome().map(|o| o.forwarded), Some(true));
        assert_eq!(t.pop_outcome().map(|o| o.forwarded), Some(false));
        assert_eq!(t.pop_outcome(), None);
        t.expire(1_005);
        assert_eq!(t.pop_outcome().map(|o| o.forwarded), Some(false));
        assert!(t.is_done());
    }

    #[test]
    fn a_frame_coming_back_on_the_side_it_left_is_not_a_match() {
        let mut t = Tracker::new(false, 1_000, 7, 16);
        assert!(t.offer(0, 0, 0, &syn(), t.flow_of(&syn()), 0));
        t.emerged(0, &syn(), 1);
        assert_eq!(t.counts.unmatched, 1);
        assert_eq!(t.counts.forwarded, 0);
    }
}
