//! State under pressure, on a fake clock: the origin story's scenario with by-class
//! eviction and with an LRU table of the same size, expiry that explains itself, and
//! limits that hold exactly at their bound.

use std::net::IpAddr;

use holdfast_pipeline::conntrack::pressure::{Admission, Evict, Pressure};
use holdfast_pipeline::engine::{EngineConfig, Packet};
use holdfast_pipeline::wire::build::{FrameSpec, L4};
use holdfast_pipeline::{DropReason, Duration, Engine, Instant, Verdict, Zone};
use holdfast_tests::webfarm_policy;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

#[allow(clippy::too_many_arguments)]
fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8, seq: u32, ack: u32, len: usize) -> Vec<u8> {
    FrameSpec::new(src, dst, L4::Tcp { sport, dport, seq, ack, flags, window: 502, options: vec![], payload: vec![0x41; len] }).build()
}

fn client(i: u32) -> IpAddr {
    IpAddr::from([198, 51, (100 + i / 250) as u8, (1 + i % 250) as u8])
}

fn server(i: u32) -> IpAddr {
    IpAddr::from([10, 0, 2, (1 + i % 8) as u8])
}

struct Farm {
    e: Engine,
    now: Instant,
}

impl Farm {
    fn new(capacity: usize, pressure: Pressure) -> Farm {
        let now = Instant::from_secs(1_000_000);
        Farm { e: Engine::new(EngineConfig { capacity, pressure, ..EngineConfig::default() }, webfarm_policy(), now), now }
    }

    fn send(&mut self, f: &[u8], zone: Zone) -> Verdict {
        self.e.process(&Packet { data: f, zone, now: self.now })
    }

    /// Connection `i`: client(i):30000+i -> server(i):80, handshake and one request.
    fn open(&mut self, i: u32) {
        let (c, s, p) = (client(i), server(i), 30_000 + (i % 30_000) as u16);
        for (f, z) in [
            (tcp(c, p, s, 80, SYN, 1000, 0, 0), Zone::Outside),
            (tcp(s, 80, c, p, SYN | ACK, 5000, 1001, 0), Zone::Inside),
            (tcp(c, p, s, 80, ACK, 1001, 5001, 0), Zone::Outside),
            (tcp(c, p, s, 80, PSH | ACK, 1001, 5001, 300), Zone::Outside),
            (tcp(s, 80, c, p, PSH | ACK, 5001, 1301, 1200), Zone::Inside),
            (tcp(c, p, s, 80, ACK, 1301, 6201, 0), Zone::Outside),
        ] {
            assert!(self.send(&f, z).is_pass(), "connection {i}");
        }
    }

    /// The next request on connection `i` and the server's reply.
    fn next_request(&mut self, i: u32) -> (Verdict, Verdict) {
        let (c, s, p) = (client(i), server(i), 30_000 + (i % 30_000) as u16);
        let req = self.send(&tcp(c, p, s, 80, PSH | ACK, 1301, 6201, 300), Zone::Outside);
        let rep = self.send(&tcp(s, 80, c, p, PSH | ACK, 6201, 1601, 1200), Zone::Inside);
        (req, rep)
    }

    /// `n` spoofed SYNs spread over `span`, with the clock moving and timers running.
    fn syn_flood(&mut self, n: u32, span: Duration) {
        let step = Duration::from_nanos(span.as_nanos() / u64::from(n));
        let mut x = 0x9e37_79b9u32;
        for k in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let src = IpAddr::from((0x6440_0000 | (x & 0x003f_ffff)).to_be_bytes()); // 100.64.0.0/10
            let f = tcp(src, 1024 + (x >> 20) as u16, server(k), 80, SYN, x, 0, 0);
            let v = self.send(&f, Zone::Outside);
            assert!(v.is_pass() || v == Verdict::Drop(DropReason::TableFull), "{v:?}");
            self.now = self.now + step;
            if k % 512 == 0 {
                self.e.expire(self.now, 4096);
            }
        }
    }
}

/// (a) The origin story: 10,000 keep-alive connections idle for ten minutes while a
/// spoofed SYN flood of ten times the table's capacity arrives.
#[test]
fn a_syn_flood_cannot_push_established_connections_out() {
    const CONNS: u32 = 10_000;
    const CAPACITY: usize = 16_384;
    let mut f = Farm::new(CAPACITY, Pressure::default());
    for i in 0..CONNS {
        f.open(i);
    }
    assert_eq!(f.e.class_counts()[Admission::Assured as usize], CONNS);
    f.syn_flood(10 * CAPACITY as u32, Duration::from_secs(600));
    let c = f.e.counters();
    assert_eq!(c.evictions[Admission::Assured as usize], 0, "no assured flow was evicted");
    assert!(c.evictions[Admission::Embryonic as usize] > 100_000, "the flood recycled its own slots: {:?}", c.evictions);
    assert_eq!(f.e.class_counts()[Admission::Embryonic as usize], (CAPACITY as f64 * 0.25) as u32, "the flood holds exactly its quota");
    for i in 0..CONNS {
        let (req, rep) = f.next_request(i);
        assert!(req.is_pass() && rep.is_pass(), "connection {i}: {req:?} {rep:?}");
    }
    assert_eq!(f.e.counters().reply_denied(), 0);
}

/// The same traffic into an LRU table of the same capacity (Cilium's behaviour): the
/// flood evicts the idle connections, and their packets are denied — as replies to
/// evicted flows, which is what they are.
#[test]
fn an_lru_table_of_the_same_size_denies_replies() {
    const CONNS: u32 = 10_000;
    const CAPACITY: usize = 16_384;
    let lru = Pressure { evict: Evict::Lru, embryonic_share: 1.0, ..Pressure::default() };
    let mut f = Farm::new(CAPACITY, lru);
    for i in 0..CONNS {
        f.open(i);
    }
    f.syn_flood(10 * CAPACITY as u32, Duration::from_secs(600));
    assert!(f.e.counters().evictions[Admission::Assured as usize] >= u64::from(CONNS) * 9 / 10);
    let mut denied = 0;
    for i in 0..CONNS {
        let (req, rep) = f.next_request(i);
        for v in [req, rep] {
            if v == Verdict::Drop(DropReason::ReplyToEvicted) {
                denied += 1;
            } else {
                assert!(v.is_pass(), "connection {i}: {v:?}, evictions {:?}, tombstone hits {}", f.e.counters().evictions, f.e.counters().tombstone_hits);
            }
        }
    }
    assert!(denied >= CONNS as u64, "replies denied: {denied}");
    assert_eq!(f.e.counters().reply_denied(), denied);
}

/// (b) A flow idle past its timeout, then replying: denied, and the reason says the
/// state expired.
#[test]
fn a_reply_after_expiry_says_so() {
    let mut f = Farm::new(1024, Pressure::default());
    f.open(1);
    let t = Duration::from_secs(432_000);
    f.now = f.now + t;
    f.e.expire(f.now, usize::MAX);
    let (req, rep) = f.next_request(1);
    assert_eq!(req, Verdict::Drop(DropReason::ReplyToExpired));
    assert_eq!(rep, Verdict::Drop(DropReason::ReplyToExpired));
    assert_eq!(f.e.counters().expirations[Admission::Assured as usize], 1);
    assert_eq!(f.e.counters().reply_denied(), 2);
}

/// (c) A mid-stream ACK of a flow never seen.
#[test]
fn a_stray_ack_is_midstream_no_state() {
    let mut f = Farm::new(1024, Pressure::default());
    f.open(1);
    let v = f.send(&tcp(client(7), 40_007, server(7), 80, ACK, 5, 5, 0), Zone::Outside);
    assert_eq!(v, Verdict::Drop(DropReason::MidstreamNoState));
    // A genuine new connection that policy denies is plain policy.
    let v = f.send(&tcp(client(7), 40_007, server(7), 22, SYN, 5, 0, 0), Zone::Outside);
    assert_eq!(v, Verdict::Drop(DropReason::Policy));
    assert_eq!(f.e.counters().reply_denied(), 0);
}

/// (d) The per-source limit holds exactly at its bound: one more flow of the source
/// takes the place of its oldest embryonic entry (so SYNs spoofed from an address do
/// not lock it out), a source whose entries are all assured is refused, and the
/// count frees up with the flows.
#[test]
fn the_per_source_limit_holds_exactly() {
    let now = Instant::from_secs(10);
    let cfg = EngineConfig { capacity: 1024, per_source_limit: 100, ..EngineConfig::default() };
    let mut e = Engine::new(cfg, webfarm_policy(), now);
    let src = client(3);
    let syn = |p: u16| tcp(src, p, server(1), 80, SYN, 1, 0, 0);
    for p in 0..100 {
        assert!(e.process(&Packet { data: &syn(1000 + p), zone: Zone::Outside, now }).is_pass(), "flow {p}");
    }
    assert!(e.process(&Packet { data: &syn(2000), zone: Zone::Outside, now }).is_pass());
    assert_eq!((e.table().len(), e.counters().source_recycled), (100, 1), "the bound holds");
    // The recycled entry was the oldest: its SYN-ACK finds no state.
    let synack = |p: u16| tcp(server(1), 80, src, p, SYN | ACK, 9, 2, 0);
    assert_eq!(e.process(&Packet { data: &synack(1000), zone: Zone::Inside, now }), Verdict::Drop(DropReason::ReplyToEvicted));
    assert!(e.process(&Packet { data: &synack(1001), zone: Zone::Inside, now }).is_pass());
    let other = tcp(client(4), 1000, server(1), 80, SYN, 1, 0, 0);
    assert!(e.process(&Packet { data: &other, zone: Zone::Outside, now }).is_pass(), "other sources are not affected");
    // SYN_SENT entries expire after 120 s; the source may then open new ones.
    let later = now + Duration::from_secs(120);
    e.expire(later, usize::MAX);
    assert!(e.process(&Packet { data: &syn(2000), zone: Zone::Outside, now: later }).is_pass());

    // Two assured connections at a limit of two: a third is refused.
    let mut e = Engine::new(EngineConfig { capacity: 1024, per_source_limit: 2, ..EngineConfig::default() }, webfarm_policy(), now);
    for p in [1000, 1001] {
        assert!(e.process(&Packet { data: &syn(p), zone: Zone::Outside, now }).is_pass());
        assert!(e.process(&Packet { data: &synack(p), zone: Zone::Inside, now }).is_pass());
        assert!(e.process(&Packet { data: &tcp(src, p, server(1), 80, ACK, 2, 10, 0), zone: Zone::Outside, now }).is_pass());
    }
    assert_eq!(e.class_counts()[Admission::Assured as usize], 2);
    assert_eq!(e.process(&Packet { data: &syn(1002), zone: Zone::Outside, now }), Verdict::Drop(DropReason::SourceLimit));
}

/// (d) The embryonic quota holds exactly: one more SYN recycles the oldest one.
#[test]
fn the_embryonic_quota_holds_exactly() {
    let now = Instant::from_secs(10);
    let cfg = EngineConfig { capacity: 1000, ..EngineConfig::default() };
    let mut e = Engine::new(cfg, webfarm_policy(), now);
    let syn = |i: u32| tcp(client(i), 50_000, server(i), 80, SYN, 1, 0, 0);
    for i in 0..250 {
        assert!(e.process(&Packet { data: &syn(i), zone: Zone::Outside, now }).is_pass());
    }
    assert_eq!(e.class_counts()[Admission::Embryonic as usize], 250);
    assert_eq!(e.counters().evictions, [0; 5]);
    assert!(e.process(&Packet { data: &syn(250), zone: Zone::Outside, now }).is_pass());
    assert_eq!(e.class_counts()[Admission::Embryonic as usize], 250, "still exactly at the quota");
    assert_eq!(e.counters().evictions, [0, 1, 0, 0, 0]);
    // The oldest (connection 0) went: its SYN/ACK now finds a tombstone.
    let synack = tcp(server(0), 80, client(0), 50_000, SYN | ACK, 9, 2, 0);
    assert_eq!(e.process(&Packet { data: &synack, zone: Zone::Inside, now }), Verdict::Drop(DropReason::ReplyToEvicted));
}

/// When only assured flows are left, a new flow is refused rather than evicting one.
#[test]
fn assured_flows_are_never_evicted_for_a_newcomer() {
    let mut f = Farm::new(64, Pressure::default());
    for i in 0..64 {
        f.open(i);
    }
    let v = f.send(&tcp(client(100), 40_000, server(1), 80, SYN, 1, 0, 0), Zone::Outside);
    assert_eq!(v, Verdict::Drop(DropReason::TableFull));
    assert_eq!(f.e.counters().evictions, [0; 5]);
}

/// Adaptive timeouts shrink non-assured timeouts under pressure, never assured ones.
#[test]
fn adaptive_timeouts_spare_assured_flows() {
    let mut f = Farm::new(100, Pressure { embryonic_share: 1.0, ..Pressure::default() });
    for i in 0..50 {
        f.open(i);
    }
    // 40 half-open connections: fill 0.9, factor (1.0 - 0.9) / 0.4 = 0.25.
    for i in 0..40 {
        assert!(f.send(&tcp(client(500 + i), 41_000, server(i), 80, SYN, 1, 0, 0), Zone::Outside).is_pass());
    }
    f.e.expire(f.now, 0);
    assert!((f.e.adaptive_scale() - 0.25).abs() < 0.01, "{}", f.e.adaptive_scale());
    // SYN_SENT's 120 s become 30 s; ESTABLISHED keeps its 5 days.
    f.now = f.now + Duration::from_secs(30);
    let removed = f.e.expire(f.now, usize::MAX);
    assert_eq!(removed, 40);
    assert_eq!(f.e.counters().expirations, [0, 40, 0, 0, 0]);
    assert_eq!(f.e.class_counts()[Admission::Assured as usize], 50);
}

/// Under a SYN flood, adaptive timeouts shrink the flood's embryonic entries, not the
/// closing handshakes of real connections: room is taken from the lowest class first,
/// so a class shrinks only while every class below it is empty.
#[test]
fn adaptive_timeouts_spare_closing_flows_while_a_lower_class_can_give_room() {
    let mut f = Farm::new(100, Pressure { embryonic_share: 1.0, ..Pressure::default() });
    for i in 0..60 {
        f.open(i);
    }
    // Ten of them close from the client's side (FIN_WAIT: 120 s, class closing).
    for i in 0..10 {
        let fin = tcp(client(i), 30_000 + i as u16, server(i), 80, FIN | ACK, 1301, 6201, 0);
        assert!(f.send(&fin, Zone::Outside).is_pass());
    }
    assert_eq!(f.e.class_counts()[Admission::Closing as usize], 10);
    // 30 half-open connections: fill 0.9, factor 0.25.
    for i in 0..30 {
        assert!(f.send(&tcp(client(500 + i), 41_000, server(i), 80, SYN, 1, 0, 0), Zone::Outside).is_pass());
    }
    f.e.expire(f.now, 0);
    assert!((f.e.adaptive_scale() - 0.25).abs() < 0.01, "{}", f.e.adaptive_scale());
    // 30 s later the flood's SYN_SENT entries (120 s x 0.25) are gone; the closing
    // flows keep their 120 s while there were embryonic entries to take room from.
    f.now = f.now + Duration::from_secs(30);
    f.e.expire(f.now, usize::MAX);
    assert_eq!(f.e.counters().expirations, [0, 30, 0, 0, 0]);
    assert_eq!(f.e.class_counts()[Admission::Closing as usize], 10);
    // The server's FIN still finds its state (before this change: reply_to_expired).
    let fin = tcp(server(0), 80, client(0), 30_000, FIN | ACK, 6201, 1302, 0);
    assert!(f.send(&fin, Zone::Inside).is_pass());
    // With no class below closing left and the table at 0.9 again (30 more assured
    // flows), closing entries shrink as pf's do: FIN_WAIT's 120 s become 30 s.
    for i in 60..90 {
        f.open(i);
    }
    f.e.expire(f.now, 0);
    assert!((f.e.adaptive_scale() - 0.25).abs() < 0.01, "{}", f.e.adaptive_scale());
    f.now = f.now + Duration::from_secs(31);
    f.e.expire(f.now, usize::MAX);
    assert_eq!(f.e.counters().expirations, [0, 30, 0, 10, 0]);
    assert_eq!(f.e.class_counts()[Admission::Assured as usize], 80);
}
