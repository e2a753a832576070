//! Snapshots through a file: written, restored under the same and another worker
//! count, and every kind of bad file refused with a clean start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use holdfast_pipeline::policy::{Action, Classifier};
use holdfast_pipeline::wire::build::FrameSpec;
use holdfast_pipeline::wire::tcp::flags::{ACK, SYN};
use holdfast_pipeline::{EngineConfig, Packet, Zone};

use super::*;

const SEED: u64 = 0x5eed;

fn engines(n: usize, capacity: usize) -> Vec<Engine> {
    let cfg = EngineConfig { capacity, seed: SEED, tombstones: 4096, ..EngineConfig::default() };
    (0..n).map(|_| Engine::new(cfg, Arc::new(Classifier::new(vec![], Action::Allow)), Instant::from_secs(0))).collect()
}

/// `flows` TCP handshakes (every fifth over IPv6), each on the worker that owns it,
/// at pipeline time 10 s.
fn loaded(n: usize, flows: u32) -> Vec<Engine> {
    let mut es = engines(n, 4096);
    let hasher = FlowHasher::new(SEED);
    let now = Instant::from_secs(10);
    for i in 0..flows {
        let (c, s): (IpAddr, IpAddr) = if i % 5 == 0 {
            (IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i as u16 + 1)), IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1)))
        } else {
            (IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i)), IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1 + (i % 8) as u8)))
        };
        let frames = [
            (FrameSpec::tcp(c, 40000, s, 80, SYN, 100, 0).build(), Zone::Outside),
            (FrameSpec::tcp(s, 80, c, 40000, SYN | ACK, 900, 101).build(), Zone::Inside),
            (FrameSpec::tcp(c, 40000, s, 80, ACK, 101, 901).build(), Zone::Outside),
        ];
        let key = holdfast_pipeline::parse::parse(&frames[0].0)
            .ok()
            .and_then(|f| if let holdfast_pipeline::parse::Frame::Ip(m) = f { Some(m.key) } else { None })
            .unwrap();
        let w = owner_of(hasher.owner_hash(&key), n);
        for (f, z) in &frames {
            assert!(es[w].process(&Packet { data: f, zone: *z, now }).is_pass());
        }
    }
    es
}

fn keys(es: &[Engine], now: Instant) -> Vec<(holdfast_pipeline::FlowKey, &'static str)> {
    let mut k: Vec<_> = es.iter().flat_map(|e| e.flows(now).map(|f| (f.key, f.state))).collect();
    k.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    k
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hf-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn written(name: &str, es: &[Engine]) -> PathBuf {
    let d = dir(name);
    let refs: Vec<Option<&Engine>> = es.iter().map(Some).collect();
    let w = write(&d, &refs, Instant::from_secs(12), SEED).unwrap();
    assert_eq!(w.flows, es.iter().map(|e| e.table().len() as u64).sum::<u64>());
    d
}

fn restore_into(d: &Path, n: usize, capacity: usize) -> Result<(Report, Vec<Engine>), StateError> {
    let found = find(d)?.expect("a snapshot");
    assert_eq!(found.header.seed, SEED);
    let mut es = engines(n, capacity);
    let r = restore(found, &mut es, &FlowHasher::new(SEED), Instant::from_secs(0))?;
    Ok((r, es))
}

#[test]
fn every_flow_comes_back_to_its_owner_under_one_two_or_three_workers() {
    let before = loaded(2, 300);
    let d = written("owners", &before);
    let want = keys(&before, Instant::from_secs(12));
    assert_eq!(want.len(), 300);
    let meta = std::fs::metadata(d.join(FILE)).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600, "as secret as the hash seed in it");
    for n in [2, 1, 3] {
        let (r, es) = restore_into(&d, n, 4096).unwrap();
        assert_eq!((r.flows, r.expired, r.workers_before, r.workers_now), (300, 0, 2, n), "{r:?}");
        assert_eq!(keys(&es, Instant::from_secs(0)), want, "{n} workers");
        let hasher = FlowHasher::new(SEED);
        for (w, e) in es.iter().enumerate() {
            e.audit().unwrap();
            assert!(e.flows(Instant::from_secs(0)).all(|f| owner_of(hasher.owner_hash(&f.key), n) == w), "a flow restored to a worker that does not own it");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The snapshot's bytes with `f` applied, written back; then what a start makes of it.
fn damaged(name: &str, f: impl FnOnce(&mut Vec<u8>)) -> StateError {
    let d = written(name, &loaded(1, 50));
    let p = d.join(FILE);
    let mut b = std::fs::read(&p).unwrap();
    f(&mut b);
    std::fs::write(&p, &b).unwrap();
    let e = match restore_into(&d, 1, 4096) {
        Err(e) => e,
        Ok((r, _)) => panic!("a damaged snapshot was restored: {r:?}"),
    };
    let _ = std::fs::remove_dir_all(&d);
    e
}

#[test]
fn another_format_version_is_refused_by_name() {
    let e = damaged("version", |b| b[8] = 2);
    assert!(e.to_string().contains("format version 2 (bytes 8..10), this build reads version 1 only"), "{e}");
    let e = damaged("magic", |b| b[0] = b'X');
    assert!(e.to_string().contains("not a Holdfast snapshot"), "{e}");
}

#[test]
fn a_truncated_file_is_refused_wherever_it_is_cut() {
    let d = written("cuts", &loaded(1, 50));
    let full = std::fs::read(d.join(FILE)).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    for cut in [0, 5, 40, HEADER_LEN, HEADER_LEN + 3, HEADER_LEN + 100, full.len() - 16, full.len() - 1] {
        let e = damaged(&format!("cut{cut}"), |b| b.truncate(cut));
        let s = e.to_string();
        assert!(s.contains("truncated") || s.contains("not a Holdfast snapshot") || s.contains("checksum"), "cut at {cut}: {s}");
    }
}

#[test]
fn a_flipped_bit_anywhere_is_caught() {
    let d = written("flips", &loaded(1, 50));
    let len = std::fs::read(d.join(FILE)).unwrap().len();
    let _ = std::fs::remove_dir_all(&d);
    for at in (0..len).step_by(len / 97 + 1) {
        let e = damaged(&format!("flip{at}"), |b| b[at] ^= 0x10);
        let s = e.to_string();
        assert!(
            ["checksum", "bad block", "bad header", "format version", "not a Holdfast", "truncated", "bytes after"].iter().any(|w| s.contains(w)),
            "bit flip at {at}: {s}"
        );
    }
    let e = damaged("payload", |b| b[HEADER_LEN + 16 + 20] ^= 1);
    assert!(e.to_string().contains("fails its checksum"), "{e}");
}

/// A restart onto smaller tables (a careless `conntrack.capacity`, or another worker
/// count whose shares come out uneven) keeps what a full table keeps at run time:
/// every assured flow it has room for, before any embryonic one. Refusing the file,
/// as this did before, started with no flow at all: every reply then denied.
#[test]
fn a_snapshot_bigger_than_the_tables_keeps_the_assured_flows_first() {
    let mut es = loaded(2, 300);
    // 100 embryonic flows (a SYN each, no answer) besides the 300 established ones.
    let hasher = FlowHasher::new(SEED);
    for i in 0..100u32 {
        let syn = FrameSpec::tcp(IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + i)), 1024, IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 80, SYN, 7, 0).build();
        let key = match holdfast_pipeline::parse::parse(&syn) {
            Ok(holdfast_pipeline::parse::Frame::Ip(m)) => m.key,
            _ => unreachable!(),
        };
        let w = owner_of(hasher.owner_hash(&key), 2);
        assert!(es[w].process(&Packet { data: &syn, zone: Zone::Outside, now: Instant::from_secs(11) }).is_pass());
    }
    let d = written("big", &es);
    let established = |es: &[Engine]| es.iter().flat_map(|e| e.flows(Instant::from_secs(0))).filter(|f| f.assured).count();
    // 400 flows into 350 entries: the 300 established all come back.
    let (r, small) = restore_into(&d, 1, 350).unwrap();
    assert_eq!((r.snapshot_flows, r.capacity, r.flows), (400, 350, 350), "{r:?}");
    assert_eq!(established(&small), 300);
    assert_eq!(small[0].table().len(), 350);
    assert_eq!(r.evicted, 50, "the embryonic ones made room: {r:?}");
    assert!(r.describe().contains("WARNING: the snapshot's 400 flow(s) did not all fit"), "{}", r.describe());
    small[0].audit().unwrap();
    // Into 250 entries: as many established as fit, no embryonic one, the rest counted.
    let (r, tiny) = restore_into(&d, 1, 250).unwrap();
    assert_eq!((established(&tiny), tiny[0].table().len(), r.no_room), (250, 250, 50), "{r:?}");
    assert_eq!(r.json()["no_room"], 50);
    // The total fits, one worker's share may not: the same rule per worker.
    let (r, two) = restore_into(&d, 2, 201).unwrap();
    assert_eq!(established(&two), 300, "{r:?}");
    for e in &two {
        e.audit().unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Restored flows pass the firewall: a snapshot anyone else could have written — one
/// writable by others, one owned by another user, a symbolic link planted at its name —
/// is refused, not restored. And a symbolic link planted at the temporary file's name
/// is not written through (the file it points to would be overwritten).
#[test]
fn a_snapshot_someone_else_could_have_written_is_refused_and_a_planted_link_is_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let d = written("trust", &loaded(1, 30));
    let p = d.join(FILE);
    let untrusted = |d: &Path| match find(d) {
        Err(StateError::Untrusted { why, .. }) => why,
        Err(e) => panic!("refused, but not as untrusted: {e}"),
        Ok(_) => panic!("restored"),
    };
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(untrusted(&d).contains("writable by its group or by everyone"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).unwrap();
    assert!(untrusted(&d).contains("mode 620"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    if holdfast_dataplane::sys::is_root() {
        std::os::unix::fs::chown(&p, Some(54_321), None).unwrap();
        assert!(untrusted(&d).contains("owned by uid 54321"));
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
    }
    std::fs::rename(&p, d.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(d.join("elsewhere"), &p).unwrap();
    assert_eq!(untrusted(&d), "a symbolic link");
    std::fs::remove_file(&p).unwrap();
    std::fs::rename(d.join("elsewhere"), &p).unwrap();
    assert_eq!(restore_into(&d, 1, 4096).unwrap().0.flows, 30, "its own file, as written, restores");

    // A link at the temporary file's name, to a file that must not be touched.
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, d.join(TEMP)).unwrap();
    let more = loaded(1, 40);
    write(&d, &[Some(&more[0])], Instant::from_secs(12), SEED).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "written through a planted link");
    assert!(!std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    assert_eq!(restore_into(&d, 1, 4096).unwrap().0.flows, 40);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_failed_write_leaves_the_good_snapshot_in_place() {
    let es = loaded(1, 20);
    let d = written("atomic", &es);
    let good = std::fs::read(d.join(FILE)).unwrap();
    // The temporary file's name is taken by a directory: the write fails early.
    std::fs::create_dir(d.join(TEMP)).unwrap();
    let more = loaded(1, 40);
    assert!(write(&d, &[Some(&more[0])], Instant::from_secs(12), SEED).is_err());
    assert_eq!(std::fs::read(d.join(FILE)).unwrap(), good);
    std::fs::remove_dir(d.join(TEMP)).unwrap();
    let (r, _) = restore_into(&d, 1, 4096).unwrap();
    assert_eq!(r.flows, 20);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn flows_idle_past_their_timeout_while_down_are_counted_not_restored() {
    let mut es = loaded(1, 10);
    // One UDP flow: 30 s unreplied.
    let q = FrameSpec::udp(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 5353, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)), 53, b"q").build();
    assert!(es[0].process(&Packet { data: &q, zone: Zone::Inside, now: Instant::from_secs(10) }).is_pass());
    let d = dir("down");
    let p = d.join(FILE);
    write(&d, &[Some(&es[0])], Instant::from_secs(12), SEED).unwrap();
    // Pretend the snapshot was written a minute ago: rewrite the time, fix the CRC.
    let mut b = std::fs::read(&p).unwrap();
    let mut h = Header::decode(&b).unwrap();
    h.written_unix_ns -= 60_000_000_000;
    b[..HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(&p, &b).unwrap();
    let (r, es) = restore_into(&d, 1, 4096).unwrap();
    assert_eq!((r.flows, r.expired), (10, 1), "{r:?}");
    assert!(r.down >= Duration::from_secs(60));
    assert_eq!(es[0].table().len(), 10);
    let _ = std::fs::remove_dir_all(&d);
}

/// A file written before the hash drew its constants from the seed (seed policy 1):
/// its flows come back (hashed again from their keys), its tombstones — fingerprints
/// of the old hash, which nothing can hash again — are dropped and counted; a policy
/// this build does not know is refused by name.
#[test]
fn tombstones_of_the_old_hash_are_dropped_and_its_flows_restored() {
    // 64 entries and 300 SYNs from as many clients: evictions leave tombstones.
    let mut es = engines(1, 64);
    for i in 0..300u32 {
        let c = IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i));
        let syn = FrameSpec::tcp(c, 40000, IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 80, SYN, 100, 0).build();
        es[0].process(&Packet { data: &syn, zone: Zone::Outside, now: Instant::from_secs(10) });
    }
    let d = written("policy", &es);
    let p = d.join(FILE);
    let now_policy = restore_into(&d, 1, 64).unwrap().0;
    assert!(now_policy.flows > 0 && now_policy.tombstones > 0, "{now_policy:?}");
    assert_eq!(now_policy.tombstones_dropped, 0);

    let mut b = std::fs::read(&p).unwrap();
    let mut h = Header::decode(&b).unwrap();
    assert_eq!(h.seed_policy, snapshot::SEED_AND_CONSTANTS_CARRIED, "what this build writes");
    h.seed_policy = snapshot::SEED_CARRIED;
    b[..HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(&p, &b).unwrap();
    let (old, es) = restore_into(&d, 1, 64).unwrap();
    assert_eq!(old.flows, now_policy.flows, "{old:?}");
    assert_eq!((old.tombstones, old.tombstones_dropped), (0, now_policy.tombstones), "{old:?}");
    es[0].audit().unwrap();

    h.seed_policy = 3;
    b[..HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(&p, &b).unwrap();
    let e = restore_into(&d, 1, 64).map(|(r, _)| r).unwrap_err();
    assert!(e.to_string().contains("unknown seed policy"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A restart with a smaller `conntrack.ipv6_share` than the IPv6 flows need keeps the
/// IPv6 flows that fit and counts the rest by that setting's name, not as a full table
/// (the table has room): every IPv4 flow comes back.
#[test]
fn too_many_ipv6_flows_for_the_pool_are_counted_by_the_settings_name() {
    let d = written("pool", &loaded(1, 100));
    let found = find(&d).unwrap().expect("a snapshot");
    let cfg = EngineConfig { capacity: 4096, seed: SEED, tombstones: 4096, ipv6_slots: Some(10), ..EngineConfig::default() };
    let mut es = vec![Engine::new(cfg, Arc::new(Classifier::new(vec![], Action::Allow)), Instant::from_secs(0))];
    let r = restore(found, &mut es, &FlowHasher::new(SEED), Instant::from_secs(0)).unwrap();
    assert_eq!((r.flows, r.no_ipv6_room, r.no_room), (90, 10, 0), "20 IPv6 flows, 10 places: {r:?}");
    assert!(r.describe().contains("10 IPv6 flow(s) left out for conntrack.ipv6_share"), "{}", r.describe());
    es[0].audit().unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

/// One directory, one appliance: a second claim is refused with the first's pid, and
/// the directory is free again once the first lets go (or its process is gone).
#[test]
fn a_snapshot_directory_is_claimed_by_one_process_at_a_time() {
    let d = dir("claim");
    let first = claim(&d).unwrap();
    match claim(&d) {
        Err(StateError::InUse { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
        other => panic!("a second claim: {other:?}"),
    }
    drop(first);
    let again = claim(&d).unwrap();
    assert_eq!(again.dir, d);
    drop(again);
    let _ = std::fs::remove_dir_all(&d);
}

/// Two snapshots written at once in one process (an on-demand one still running when
/// the stop writes its own) are written one after the other: both complete, and the
/// one that started second is the one in place. Before, each removed or renamed the
/// other's temporary file: one failed, and the file in place could be a half-written
/// one.
#[test]
fn two_snapshots_at_once_are_written_one_after_the_other() {
    let d = dir("together");
    let (early, late) = (loaded(1, 30), loaded(1, 70));
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let mut w = Writer::create(&d, 1, SEED).unwrap();
            w.tomb_sets(early[0].tombstone_sets());
            for (n, mut bytes) in snapshot::chunks(early[0].export(Instant::from_secs(12))) {
                // A slow one, as an export paced over the workers' rounds is.
                std::thread::sleep(std::time::Duration::from_millis(150));
                w.block(BlockKind::Flows, 0, n, &mut bytes).unwrap();
            }
            w.finish()
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        let fast = write(&d, &[Some(&late[0])], Instant::from_secs(12), SEED);
        (slow.join().unwrap(), fast)
    });
    let (slow, fast) = slow;
    assert_eq!(slow.unwrap().flows, 30);
    assert_eq!(fast.unwrap().flows, 70);
    assert_eq!(restore_into(&d, 1, 4096).unwrap().0.flows, 70, "the later one is in place, whole");
    let _ = std::fs::remove_dir_all(&d);
}
