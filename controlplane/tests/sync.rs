//! Two sync endpoints over loopback UDP, through a relay that loses one datagram in
//! twenty each way (no root): every flow reaches the peer's external cache, a removed
//! flow leaves it, and a takeover commits the cache so that the flows' next packets
//! pass on the standby that never saw them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_controlplane::config::{Role, Sync, SyncMode};
use holdfast_controlplane::sync::endpoint::{Endpoint, Tables};
use holdfast_pipeline::engine::SyncedFlow;
use holdfast_pipeline::policy::{Action, Classifier};
use holdfast_pipeline::wire::build::FrameSpec;
use holdfast_pipeline::wire::tcp::flags::{ACK, PSH, SYN};
use holdfast_pipeline::{Engine, EngineConfig, Packet, Zone};

const FLOWS: u32 = 3000;

/// One engine and a clock, behind a lock the test also takes.
struct Mem {
    e: Arc<Mutex<Engine>>,
    start: Instant,
}

fn pnow(start: Instant) -> holdfast_pipeline::Instant {
    holdfast_pipeline::Instant::from_secs(1) + holdfast_pipeline::Duration::from_nanos(start.elapsed().as_nanos() as u64)
}

impl Tables for Mem {
    fn sweep(&mut self) -> Result<Vec<SyncedFlow>, String> {
        let e = self.e.lock().unwrap();
        let t = e.config().timeouts;
        Ok(e.export(pnow(self.start)).map(|r| r.synced(&t)).collect())
    }
    fn adopt(&mut self, flows: Vec<SyncedFlow>) -> Result<(u64, u64), String> {
        let mut e = self.e.lock().unwrap();
        let now = pnow(self.start);
        let ok = flows.iter().filter(|f| e.adopt(f, now).is_ok()).count() as u64;
        Ok((ok, flows.len() as u64 - ok))
    }
}

fn engine() -> Engine {
    Engine::new(
        EngineConfig { capacity: 8192, ..EngineConfig::default() },
        Arc::new(Classifier::new(vec![], Action::Allow)),
        holdfast_pipeline::Instant::from_secs(1),
    )
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i))
}
const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));

/// Forwards datagrams from `from` to `to`, losing every 20th; returns its address.
fn relay(to: SocketAddr, lost: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, _)) = s.recv_from(&mut buf) {
                n += 1;
                if n.is_multiple_of(20) {
                    lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = s.send_to(&buf[..len], to);
            }
        }
    });
    addr
}

fn cfg(listen: SocketAddr, peer: SocketAddr, role: Role) -> Sync {
    Sync {
        listen,
        peer,
        interface: None,
        mode: SyncMode::Ftfw,
        role,
        interval: Duration::from_millis(100),
        refresh: Duration::from_secs(60),
        dead_interval: Duration::from_secs(3),
        auto_takeover: false,
        ack_window: 300,
        resend_queue: 131_072,
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_flow_reaches_the_standby_through_loss_and_a_takeover_keeps_them() {
    let start = Instant::now();
    let active_e = Arc::new(Mutex::new(engine()));
    {
        let mut e = active_e.lock().unwrap();
        let now = pnow(start);
        for i in 0..FLOWS {
            for (f, z) in [
                (FrameSpec::tcp(client(i), 40000, SERVER, 80, SYN, 100, 0).build(), Zone::Outside),
                (FrameSpec::tcp(SERVER, 80, client(i), 40000, SYN | ACK, 900, 101).build(), Zone::Inside),
                (FrameSpec::tcp(client(i), 40000, SERVER, 80, ACK, 101, 901).build(), Zone::Outside),
            ] {
                assert!(e.process(&Packet { data: &f, zone: z, now }).is_pass());
            }
        }
    }
    let standby_e = Arc::new(Mutex::new(engine()));
    // Fixed ports for the endpoints; the relays sit between them.
    let a_addr: SocketAddr = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let b_addr: SocketAddr = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let to_b = relay(b_addr, Arc::clone(&lost), Arc::clone(&stop));
    let to_a = relay(a_addr, Arc::clone(&lost), Arc::clone(&stop));
    let a = Endpoint::start(cfg(a_addr, to_b, Role::Active), Box::new(Mem { e: Arc::clone(&active_e), start })).unwrap();
    let b = Endpoint::start(cfg(b_addr, to_a, Role::Standby), Box::new(Mem { e: Arc::clone(&standby_e), start })).unwrap();

    wait_for("every flow in the standby's cache", 30, || b.external().len() == FLOWS as usize);
    let sa = a.status_json();
    let sb = b.status_json();
    eprintln!("active: {sa}\nstandby: {sb}\nrelays lost {} datagrams", lost.load(Ordering::Relaxed));
    assert!(lost.load(Ordering::Relaxed) > 0, "the relay lost datagrams");
    assert!(sa["messages_resent"].as_u64().unwrap() > 0, "lost messages were sent again: {sa}");
    assert!(sb["peer_alive"].as_bool().unwrap());
    let ext = b.external();
    assert!(ext.iter().all(|(f, _)| f.tcp_state == 3 && f.dport == 80), "ESTABLISHED, to port 80");

    // A flow that ends on the active leaves the standby's cache.
    {
        let mut e = active_e.lock().unwrap();
        let rst = FrameSpec::tcp(client(7), 40000, SERVER, 80, holdfast_pipeline::wire::tcp::flags::RST, 101, 0).build();
        assert!(e.process(&Packet { data: &rst, zone: Zone::Outside, now: pnow(start) }).is_pass());
        e.expire(pnow(start) + holdfast_pipeline::Duration::from_secs(11), 100);
    }
    wait_for("the closed flow to leave the cache", 30, || b.external().len() == FLOWS as usize - 1);

    // Takeover: the standby's table gets every flow; their next packets pass there.
    let v = b.takeover(Duration::from_secs(10)).unwrap();
    assert_eq!(v["adopted"], FLOWS - 1, "{v}");
    let mut e = standby_e.lock().unwrap();
    e.audit().unwrap();
    for i in [0u32, 1, 2999] {
        let data = FrameSpec::tcp(SERVER, 80, client(i), 40000, ACK | PSH, 901, 101).build();
        assert!(e.process(&Packet { data: &data, zone: Zone::Inside, now: pnow(start) }).is_pass(), "flow {i}'s reply on the standby");
    }
    drop(e);
    stop.store(true, Ordering::Relaxed);
    a.stop();
    b.stop();
}
