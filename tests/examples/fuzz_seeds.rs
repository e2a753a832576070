//! Writes the fuzz targets' seed corpus to `fuzz/seeds/<target>/`: frames and frame
//! sequences from the generated web farm and the shipped capture, the shipped configs,
//! captures, snapshots and endpoint queries. Deterministic: run it again after a format
//! change (`cargo run -p holdfast-tests --example fuzz_seeds`).

use std::path::Path;

use holdfast_controlplane::{capture, state};
use holdfast_pipeline::{Instant, Packet, Zone};
use holdfast_tests::mixed_frames;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let frames = mixed_frames(12);
    let shipped = std::fs::read(root.join("tests/data/webfarm-small.pcap")).unwrap();
    let cap = capture::parse(&shipped);
    for (i, (f, _)) in frames.iter().enumerate().step_by(3) {
        put("frame", &format!("mixed-{i:03}"), f);
    }
    for (i, r) in cap.records.iter().take(300).enumerate().step_by(10) {
        put("frame", &format!("webfarm-{i:03}"), &r.data);
    }
    // Frame sequences: a mode byte, then (control, length, frame) per frame; frames
    // longer than 255 bytes are cut (a length is one byte).
    let seq = |frames: &mut dyn Iterator<Item = (&[u8], Zone)>, mode: u8, step_every: usize| {
        let mut s = vec![mode];
        for (i, (f, z)) in frames.enumerate() {
            let step = if step_every > 0 && i % step_every == step_every - 1 { 2 << 1 } else { 0 };
            s.push(step | u8::from(z == Zone::Inside));
            let n = f.len().min(255);
            s.push(n as u8);
            s.extend_from_slice(&f[..n]);
        }
        s
    };
    for mode in [0u8, 1, 2, 3, 6, 0x80] {
        let s = seq(&mut frames.iter().filter(|(f, _)| f.len() <= 255).map(|(f, z)| (f.as_slice(), *z)), mode, 7);
        put("engine", &format!("mixed-mode{mode:02x}"), &s);
    }
    let zone = |r: &capture::Record| if r.data.len() > 29 && r.data[26..30].starts_with(&[10, 0, 2]) { Zone::Inside } else { Zone::Outside };
    let s = seq(&mut cap.records.iter().take(400).filter(|r| r.data.len() <= 255).map(|r| (&r.data[..], zone(r))), 0, 13);
    put("engine", "webfarm", &s);
    // The live replay's bookkeeping: (length, flags, frame) per frame; the flags pick
    // what the simulated device does (out, dropped, late), when it acts, the server map
    // and the --unique-ip loop.
    let replay = |frames: &mut dyn Iterator<Item = &[u8]>, salt: usize| {
        let mut s = Vec::new();
        for (i, f) in frames.enumerate() {
            let n = f.len().min(255);
            s.push(n as u8);
            let device = [0u8, 0, 1, 2, 0, 3][(i + salt) % 6];
            let act = if (i + salt).is_multiple_of(3) { 0x04 } else { 0 };
            let map = if !salt.is_multiple_of(2) { 0x10 } else { 0 };
            s.push(device | act | map | (((salt as u8) % 4) << 5));
            s.extend_from_slice(&f[..n]);
        }
        s
    };
    for salt in 0..4 {
        let s = replay(&mut cap.records.iter().skip(salt * 60).take(120).map(|r| &r.data[..]), salt);
        put("replay", &format!("webfarm-{salt}"), &s);
    }
    put("replay", "mixed", &replay(&mut frames.iter().map(|(f, _)| f.as_slice()), 1));
    for name in ["reference.yaml", "lab.yaml", "webfarm.yaml"] {
        put("config", name, &std::fs::read(root.join("configs").join(name)).unwrap());
    }
    put("capture", "webfarm-head.pcap", &shipped[..shipped.len().min(16_384)]);
    let mut ng = capture::Writer::with_link_type(Vec::new(), true, 1).unwrap();
    for (i, (f, _)) in frames.iter().take(20).enumerate() {
        ng.write(1_000_000 * i as u64, f).unwrap();
    }
    put("capture", "mixed-ns.pcap", &ng.finish().unwrap());
    // Snapshots: a small table of each kind of flow, written by the real writer.
    let mut e = holdfast_pipeline::Engine::new(
        holdfast_pipeline::EngineConfig { capacity: 64, tombstones: 64, seed: 7, ..Default::default() },
        holdfast_tests::webfarm_policy(),
        Instant::from_secs(1),
    );
    for (f, z) in frames.iter().take(60) {
        e.process(&Packet { data: f, zone: *z, now: Instant::from_secs(2) });
    }
    e.expire(Instant::from_secs(40), 100);
    let dir = std::env::temp_dir().join(format!("hf-seeds-{}", std::process::id()));
    let w = state::write(&dir, &[Some(&e)], Instant::from_secs(40), 7).unwrap();
    let bytes = std::fs::read(&w.path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    for mode in [0u8, 1, 3] {
        let mut s = vec![mode];
        s.extend_from_slice(&bytes);
        put("snapshot", &format!("table-mode{mode}"), &s);
    }
    for (i, q) in
        ["limit=10&src=10.0.2.1&port=80&state=established&proto=tcp", "limit=0", "dst=2001:db8::1&proto=17", "limit=99999999999&x=1"].iter().enumerate()
    {
        let mut s = q.as_bytes().to_vec();
        s.extend_from_slice(b"\xffa-token-of-sixteen-chars\xffBearer a-token-of-sixteen-chars\xff/flows");
        put("endpoint", &format!("query-{i}"), &s);
    }
    // Sync datagrams: every kind of message, from the table above, back to back.
    {
        use holdfast_controlplane::sync::proto::{self, Message, flag};
        let t = e.config().timeouts;
        let mut d = Vec::new();
        for (i, r) in e.export(Instant::from_secs(40)).enumerate() {
            proto::encode(&Message::Flow { kind: (i % 3) as u8, flags: 0, seq: i as u32, flow: r.synced(&t) }, &mut d);
        }
        proto::encode(&Message::Ctl { flags: flag::ACK, seq: 99, range: Some((1, 50)) }, &mut d);
        proto::encode(&Message::Ctl { flags: flag::ALIVE, seq: 100, range: None }, &mut d);
        proto::encode(&Message::Ctl { flags: flag::HELLO | flag::RESYNC, seq: 101, range: Some((0, 0)) }, &mut d);
        put("sync", "table", &d);
    }
    eprintln!("seeds written to fuzz/seeds/ ({} flows in the snapshot seed)", w.flows);
}
