//! Replay on several workers gives every frame the verdict it gets on one worker:
//! frames reach the worker owning their flow (by its whole 5-tuple), in capture order
//! per flow; fragments reach the worker that judged their first fragment, even when
//! the first comes last; ICMP errors reach the owner of the flow they quote.

use holdfast_controlplane::config;
use holdfast_controlplane::replay::{self, Options};
use holdfast_controlplane::traffic::{self, WebFarm};
use holdfast_pipeline::Duration;

fn verdicts(workers: usize, pcap: &[u8]) -> (String, serde_json::Value) {
    let (v, j, _) = replayed(workers, pcap, "v");
    (v, j)
}

/// Verdicts, the report, and the `--flows-out` lines.
fn replayed(workers: usize, pcap: &[u8], tag: &str) -> (String, serde_json::Value, Vec<serde_json::Value>) {
    let cfg = config::parse(holdfast_controlplane::DEFAULT_CONFIG, "webfarm.yaml").unwrap();
    let dir = std::env::temp_dir().join(format!("hf-workers-{}-{workers}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, flows) = (dir.join("v.jsonl"), dir.join("f.jsonl"));
    let opts = Options { workers, json: true, flows_out: Some(flows.clone()), verdicts_out: Some(out.clone()) };
    let r = replay::run(&cfg, "mem", pcap, 0x1234 + workers as u64, &opts).unwrap();
    let f = std::fs::read_to_string(&flows).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let v = std::fs::read_to_string(out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (v, r.to_json(), f)
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

#[test]
fn fragments_and_icmp_errors_are_judged_alike_on_one_two_and_four_workers() {
    use holdfast_pipeline::wire::build::FrameSpec;
    use holdfast_pipeline::wire::tcp::flags::{ACK, SYN};
    let p = WebFarm { connections: 200, ..WebFarm::default() };
    let mut ev = traffic::webfarm(&p);
    let t0 = ev[0].0;
    let ms = |k: u64| t0 + k * 1_000_000;
    // Fragmented pings (allowed) from clients to servers: 3 fragments each, the first
    // in its place, last, or missing; a denied fragmented UDP datagram likewise.
    for d in 0..60u16 {
        let client = ip(&format!("198.51.100.{}", 1 + d % 50));
        let server = ip(&format!("10.0.2.{}", 1 + d % 8));
        let mut spec = if d % 2 == 0 {
            FrameSpec::icmp(client, server, 8, 0, u32::from(d) << 16 | 1, &[0xab; 3000])
        } else {
            FrameSpec::udp(client, 4000 + d, server, 53, &[0xcd; 3000])
        };
        spec.ident = 1000 + d;
        let mut frags = spec.fragments(1400);
        match d % 3 {
            0 => {}
            1 => frags.rotate_left(1), // the first fragment last
            _ => {
                frags.remove(0); // never a first fragment
            }
        }
        for (k, f) in frags.into_iter().enumerate() {
            ev.push((ms(100 + u64::from(d) * 50 + k as u64), f));
        }
    }
    // ICMP errors from a router outside about the servers' replies to real clients
    // (related: they quote the SYN-ACK as the server sent it) and about connections
    // that never were (unrelated).
    let tcp_of = |f: &[u8]| match holdfast_pipeline::parse::parse(f) {
        Ok(holdfast_pipeline::parse::Frame::Ip(m)) => match m.l4 {
            holdfast_pipeline::parse::L4::Tcp(tcp) => Some((m, tcp)),
            _ => None,
        },
        _ => None,
    };
    let syn_acks: std::collections::HashMap<_, u32> =
        ev.iter().filter_map(|(_, f)| tcp_of(f)).filter(|(_, tcp)| tcp.flags == SYN | ACK).map(|(m, tcp)| (m.key, tcp.seq)).collect();
    let mut quoted = 0;
    for (t, f) in ev.clone() {
        let Some((m, tcp)) = tcp_of(&f) else { continue };
        let Some(&server_seq) = syn_acks.get(&m.key) else { continue };
        if tcp.flags != SYN || quoted == 40 {
            continue;
        }
        quoted += 1;
        let (c, cp) = m.key.src(m.side);
        let (s, sp) = m.key.dst(m.side);
        let reply = FrameSpec::tcp(s, sp, c, cp, SYN | ACK, server_seq, tcp.seq.wrapping_add(1)).ip_packet();
        ev.push((t + 2_000_000, FrameSpec::icmp(ip("203.0.113.1"), s, 3, 4, 1400, &reply[..28]).build()));
        let never = FrameSpec::tcp(s, sp, ip("192.0.2.99"), cp, ACK, 7, 8).ip_packet();
        ev.push((t + 3_000_000, FrameSpec::icmp(ip("203.0.113.1"), s, 3, 1, 0, &never[..28]).build()));
    }
    ev.sort_by_key(|e| e.0);
    let pcap = traffic::to_pcap(&ev);
    let (v1, j1, _) = replayed(1, &pcap, "f1");
    for n in [2, 4] {
        let (vn, jn, _) = replayed(n, &pcap, &format!("f{n}"));
        assert_eq!(v1, vn, "{n} workers");
        assert_eq!(j1["dropped"], jn["dropped"]);
    }
    let count = |what: &str| v1.lines().filter(|l| l.contains(what)).count();
    // 30 pings in 3 fragments: 10 in order, 10 with the first last, 10 without a first;
    // 30 denied UDP datagrams the same. The later fragments of the 20 pings with a
    // first pass as related (those that came early, once their first came: they were
    // held, not dropped), with the 40 errors about live connections; the orphans (2
    // fragments of 20 datagrams) drop as unmatched, the 40 errors about nothing as
    // unrelated.
    assert_eq!((count("\"as\":\"related\""), count("fragment_unmatched"), count("icmp_unrelated")), (40 + 40, 40, 40), "{j1}");
}

#[test]
fn the_connections_of_one_client_to_one_server_spread_over_the_workers() {
    use holdfast_pipeline::wire::build::FrameSpec;
    use holdfast_pipeline::wire::tcp::flags::{ACK, SYN};
    let (c, s) = (ip("198.51.100.7"), ip("10.0.2.1"));
    let mut ev = Vec::new();
    for p in 0..400u16 {
        let t = 1_700_000_000_000_000_000 + u64::from(p) * 1_000_000;
        ev.push((t, FrameSpec::tcp(c, 30_000 + p, s, 80, SYN, 100, 0).build()));
        ev.push((t + 1, FrameSpec::tcp(s, 80, c, 30_000 + p, SYN | ACK, 500, 101).build()));
        ev.push((t + 2, FrameSpec::tcp(c, 30_000 + p, s, 80, ACK, 101, 501).build()));
    }
    let pcap = traffic::to_pcap(&ev);
    let (v1, _, _) = replayed(1, &pcap, "s1");
    let (v2, _, flows) = replayed(2, &pcap, "s2");
    assert_eq!(v1, v2);
    assert_eq!(flows.len(), 400);
    let on = |w: u64| flows.iter().filter(|f| f["worker"] == w).count();
    assert!(on(0) > 150 && on(1) > 150, "one client, one server, 400 ports: {} and {}", on(0), on(1));
}

#[test]
fn one_and_four_workers_agree_frame_by_frame() {
    // Short idle timeouts in the capture exercise expiry on every worker.
    let p = WebFarm { connections: 300, idle: (Duration::ZERO, Duration::from_secs(20)), ..WebFarm::default() };
    let pcap = traffic::to_pcap(&traffic::webfarm(&p));
    let (v1, j1) = verdicts(1, &pcap);
    let (v4, j4) = verdicts(4, &pcap);
    assert!(!v1.is_empty());
    assert_eq!(v1, v4);
    for k in ["packets", "passed", "dropped", "flows_created", "flows_expired"] {
        assert_eq!(j1[k], j4[k], "{k}");
    }
    assert_eq!(j4["workers"], 4);
    // What the dispatcher costs is reported, and is work, not nothing.
    let d = &j4["dispatcher"];
    let share = d["share_of_a_core"].as_f64().unwrap();
    assert!(d["busy_s"].as_f64().unwrap() > 0.0 && share > 0.0 && share <= 1.0, "{d}");
}
