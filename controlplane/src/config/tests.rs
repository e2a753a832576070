use super::*;
use holdfast_pipeline::conntrack::TimerClass;
use holdfast_pipeline::conntrack::pressure::{Evict, Pressure};
use holdfast_pipeline::engine::Pickup;
use holdfast_pipeline::policy::{Action, Query};
use holdfast_pipeline::{Duration, Zone};

const WEBFARM_EXAMPLE: &str = r#"
zones:
  outside: { interface: eth0 }
  inside:  { interface: eth1, networks: [10.0.2.0/24, "2001:db8:2::/64"] }
conntrack:
  capacity: 1048576          # entries per worker
  pickup: strict             # strict | reverse-of-allowed | loose
  timeouts: { tcp_syn_sent: 120s, tcp_syn_recv: 60s, tcp_established: 5d,
              tcp_fin_wait: 120s, tcp_close_wait: 60s, tcp_last_ack: 30s,
              tcp_time_wait: 120s, tcp_close: 10s, udp_unreplied: 30s,
              udp_replied: 120s, icmp: 30s }
policy:
  default: deny
  rules:
    - { name: web, from: outside, to: inside, proto: tcp, dst: 10.0.2.0/24, dst_port: 80, action: allow }
    - { name: ping, from: any, proto: icmp, icmp_type: echo-request, action: allow }
"#;

fn err(text: &str) -> ConfigError {
    parse(text, "t.yaml").unwrap_err()
}

#[test]
fn the_issue_example_parses() {
    let c = parse(WEBFARM_EXAMPLE, "x.yaml").unwrap();
    assert_eq!(c.engine.capacity, 1 << 20);
    assert_eq!(c.engine.timeouts.get(TimerClass::TcpEstablished), Duration::from_secs(432_000));
    assert_eq!(c.inside.len(), 2);
    assert_eq!(c.outside_interface.as_deref(), Some("eth0"));
    assert_eq!(c.classifier.rules().len(), 2);
    let web = Query { from: Zone::Outside, to: Zone::Inside, v6: false, proto: 6, src: 1, dst: 0x0a00_0205, sport: 1, dport: 80, icmp_type: None };
    assert_eq!(c.classifier.decide(&web).rule, Some(0));
    assert_eq!(c.zone_of(0x0a00_0205, false), Zone::Inside);
    assert_eq!(c.zone_of(0x0a00_0305, false), Zone::Outside);
    assert!(c.summary().contains("2 rules (2 allow, 0 deny, default deny)"));
}

#[test]
fn an_empty_file_is_all_defaults() {
    let c = parse("", "empty.yaml").unwrap();
    assert_eq!(c.engine.capacity, 1 << 20);
    assert_eq!(c.engine.pickup, Pickup::Strict);
    assert_eq!(c.engine.timeouts, holdfast_pipeline::conntrack::Timeouts::default());
    assert_eq!(c.classifier.default_action(), Action::Deny);
    assert_eq!(c.engine.arp, Action::Allow);
    // A config names only what it changes.
    let c = parse("conntrack:\n  timeouts:\n    udp_unreplied: 10s\n", "one.yaml").unwrap();
    assert_eq!(c.engine.timeouts.get(TimerClass::UdpUnreplied), Duration::from_secs(10));
    assert_eq!(c.engine.timeouts.get(TimerClass::UdpReplied), Duration::from_secs(120));
}

#[test]
fn unknown_keys_are_rejected_with_position_and_line() {
    let e = err("conntrack:\n  capacity: 10\n  capcity: 20\n");
    assert_eq!((e.line, e.col), (3, 3));
    assert!(e.message.contains("unknown field `capcity`"), "{}", e.message);
    assert_eq!(e.source_line.as_deref(), Some("  capcity: 20"));
    let shown = e.to_string();
    assert!(shown.starts_with("t.yaml:3:3: unknown field `capcity`"), "{shown}");
    assert!(shown.contains("3 |   capcity: 20"), "{shown}");
}

#[test]
fn bad_values_point_at_themselves() {
    let e = err("conntrack:\n  timeouts:\n    tcp_close: 10 seconds\n");
    assert_eq!((e.line, e.col), (3, 16));
    assert!(e.message.contains("bad duration"), "{}", e.message);
    let e = err("zones:\n  inside:\n    networks: [10.0.2.0/24, 10.0.300.0/24]\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("10.0.300.0"), "{}", e.message);
    let e = err("policy:\n  rules:\n    - { proto: tcp, dst_port: 99999, action: allow }\n");
    assert_eq!(e.line, 3);
    let e = err("conntrack:\n  pickup: lenient\n");
    assert_eq!((e.line, e.col), (2, 11));
    let e = err("policy:\n  rules:\n    - { name: x, proto: tcp }\n");
    assert!(e.message.contains("action"), "{}", e.message);
}

#[test]
fn semantic_errors_have_positions_too() {
    let e = err("policy:\n  rules:\n    - { proto: tcp, icmp_type: echo-request, action: allow }\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("icmp_type needs proto icmp"), "{}", e.message);
    let e = err("policy:\n  rules:\n    - { name: a, action: allow }\n    - { name: a, action: deny }\n");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("duplicate rule name"));
    let e = err("conntrack:\n  capacity: 0\n");
    assert_eq!((e.line, e.col), (2, 13));
    let e = err("conntrack:\n  timeouts: { icmp: 0s }\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("between 1s and 365d"));
    let e = err("policy:\n  rules:\n    - { proto: icmp, dst_port: 80, action: allow }\n");
    assert!(e.message.contains("ports need proto"));
}

#[test]
fn pressure_keys() {
    let c = parse(
        "conntrack:\n  per_source_limit: 10000\n  tombstones: 65536\n  pressure:\n    evict: by-class\n    embryonic_share: 0.25\n    adaptive_start: 0.60\n    adaptive_end: 1.00\n    timeout_floor: 2s\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(c.engine.per_source_limit, 10_000);
    assert_eq!(c.engine.tombstones, 65_536);
    assert_eq!(c.engine.pressure, Pressure::default());
    let c = parse("conntrack:\n  pressure: { evict: lru }\n", "p.yaml").unwrap();
    assert_eq!((c.engine.pressure.evict, c.engine.pressure.embryonic_share), (Evict::Lru, 1.0));
    let e = err("conntrack:\n  pressure: { evict: lru, embryonic_share: 0.25 }\n");
    assert!(e.message.contains("by-class only"), "{}", e.message);
    let e = err("conntrack:\n  pressure:\n    adaptive_start: 0.9\n    adaptive_end: 0.5\n");
    assert_eq!(e.line, 4);
    let e = err("conntrack:\n  pressure: { evict: fifo }\n");
    assert_eq!(e.line, 2);
    let e = err("conntrack:\n  pressure: { embryonic_share: 1.5 }\n");
    assert!(e.message.contains("(0, 1]"));
    let c = parse("conntrack:\n  pressure: { stream_share: 0.3 }\n", "p.yaml").unwrap();
    assert_eq!(c.engine.pressure.stream_share, 0.3);
    let e = err("conntrack:\n  pressure:\n    stream_share: 0\n");
    assert!(e.message.contains("stream_share must be in (0, 1]") && e.line == 3, "{e:?}");
    let e = err("conntrack:\n  pressure: { evict: none, stream_share: 0.5 }\n");
    assert!(e.message.contains("stream_share applies to evict: by-class only"), "{}", e.message);
}

#[test]
fn broken_yaml_is_reported() {
    let e = err("policy:\n  rules: [\n");
    assert!(e.line >= 2, "{e:?}");
    let e = load(Path::new("/nonexistent/holdfast.yaml")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.to_string().contains("cannot read"));
}

#[test]
fn dataplane_keys_are_validated_where_they_are_written() {
    let c = parse(
        "zones:\n  outside: { interface: a, queues: 2, xdp_mode: generic }\n  inside: { interface: b, queues: 2 }\nworkers: { cores: [0, 1], idle: sleep }\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.dataplane.queues, [2, 2]);
    assert_eq!(c.dataplane.cores, vec![0, 1]);
    let e = err("zones:\n  outside: { interface: a, queues: 1 }\n  inside: { interface: b, queues: 2 }\nworkers: { cores: [0, 1] }\n");
    assert_eq!((e.line, e.col), (2, 36));
    assert!(e.message.contains("lists 2 worker(s)"), "{}", e.message);
    let e = err("workers:\n  ring_size: 1000\n");
    assert_eq!((e.line, e.col), (2, 14));
    assert!(e.message.contains("power of two"), "{}", e.message);
    let e = err("workers:\n  idle: lazy\n");
    assert_eq!(e.line, 2);
    let e = err("workers:\n  umem_frames: 10\n");
    assert!(e.message.contains("umem_frames"), "{}", e.message);
}

#[test]
fn syn_shedding_is_on_unless_turned_off_and_its_threshold_is_a_rate() {
    let on = parse("", "x.yaml").unwrap();
    assert!(on.dataplane.shed_syns);
    assert_eq!(on.control.saturation.syn_shed_per_s, 1.0);
    let off = parse("workers:\n  shed_syns: off\n", "x.yaml").unwrap();
    assert!(!off.dataplane.shed_syns);
    assert_eq!(on.restart_needed(&off), vec!["workers.shed_syns: true -> false".to_string()]);
    let e = err("workers:\n  shed_syns: sometimes\n");
    assert!(e.message.contains("sometimes") && e.to_string().contains(":2:"), "{e}");
    let e = err("control:\n  saturation:\n    syn_shed_per_s: 0\n");
    assert!(e.message.contains("control.saturation.syn_shed_per_s"), "{e}");
}

#[test]
fn control_and_log_keys_have_defaults_and_are_checked() {
    let c = parse("", "t.yaml").unwrap();
    assert_eq!(c.control.listen, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(c.control.report_interval, std::time::Duration::from_secs(1));
    assert_eq!(c.control.saturation.table_fill, 0.80);
    assert_eq!(c.log.denials, DenyOutput::Stdout);
    assert_eq!(c.log.rate_limit, 1000);
    assert_eq!(c.on_reload, OnReload::Keep);
    let c = parse(
        "control:\n  listen: off\n  report_interval: 250ms\n  saturation: { table_fill: 0.5, handoff_drops_per_s: 10 }\nlog: { denials: deny.log, rate_limit: 0 }\npolicy: { on_reload: recheck }\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.control.listen, None);
    assert_eq!(c.control.report_interval, std::time::Duration::from_millis(250));
    assert_eq!((c.control.saturation.table_fill, c.control.saturation.busy), (0.5, 0.90));
    assert_eq!(c.log.denials, DenyOutput::File("deny.log".into()));
    assert_eq!(c.on_reload, OnReload::Recheck);
    let e = err("control:\n  listen: localhost\n");
    assert_eq!((e.line, e.col), (2, 11));
    assert!(e.message.contains("address:port"), "{}", e.message);
    let e = err("control:\n  saturation:\n    busy: 1.5\n");
    assert_eq!((e.line, e.col), (3, 11));
    let e = err("control:\n  report_interval: 10ms\n");
    assert_eq!(e.line, 2);
    let e = err("policy:\n  on_reload: sometimes\n");
    assert_eq!(e.line, 2);
    let e = err("log:\n  rate: 5\n");
    assert!(e.message.contains("unknown field `rate`"), "{}", e.message);
}

#[test]
fn a_relative_deny_log_is_next_to_the_config_file() {
    let dir = std::env::temp_dir().join(format!("hf-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.yaml");
    std::fs::write(&f, "log: { denials: deny.log }\n").unwrap();
    assert_eq!(load(&f).unwrap().log.denials, DenyOutput::File(dir.join("deny.log")));
    std::fs::write(&f, "log: { denials: /var/log/holdfast.log }\n").unwrap();
    assert_eq!(load(&f).unwrap().log.denials, DenyOutput::File("/var/log/holdfast.log".into()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reload_names_what_only_a_restart_can_change() {
    let a = parse("conntrack: { capacity: 1000 }\n", "a.yaml").unwrap();
    let same = parse("conntrack: { capacity: 1000, timeouts: { tcp_established: 1h } }\npolicy: { default: allow }\n", "b.yaml").unwrap();
    assert!(a.restart_needed(&same).is_empty());
    let b = parse("conntrack: { capacity: 2000 }\nworkers: { cores: [0] }\ncontrol: { listen: off }\n", "b.yaml").unwrap();
    let r = a.restart_needed(&b);
    assert_eq!(r, vec!["conntrack.capacity: 1000 -> 2000", "workers.cores: [1] -> [0]", "control.listen: 127.0.0.1:9477 -> off"]);
}

#[test]
fn empty_lists_are_refused_everywhere_a_list_goes() {
    for (yaml, key) in [
        ("policy:\n  rules:\n    - { src: [], action: allow }\n", "src"),
        ("policy:\n  rules:\n    - { dst: [], action: allow }\n", "dst"),
        ("policy:\n  rules:\n    - { proto: tcp, src_port: [], action: allow }\n", "src_port"),
        ("policy:\n  rules:\n    - { proto: tcp, dst_port: [], action: allow }\n", "dst_port"),
        ("policy:\n  rules:\n    - { proto: icmp, icmp_type: [], action: allow }\n", "icmp_type"),
        ("zones:\n  inside: { networks: [] }\n", "zones.inside.networks"),
        ("zones:\n  outside: { networks: [] }\n", "zones.outside.networks"),
        ("policy:\n  rules: []\n", "policy.rules"),
        ("workers:\n  cores: []\n", "workers.cores"),
    ] {
        let e = err(yaml);
        assert!(e.line > 0, "{key}: no position: {e}");
        assert!(e.message.contains(key), "{key}: {}", e.message);
        if key != "workers.cores" {
            assert!(e.message.contains("templating mistake"), "{key}: {}", e.message);
        }
    }
    // The same rules with values are fine, and a missing key still means "any".
    parse("policy:\n  rules:\n    - { src: [10.0.0.0/8], proto: tcp, dst_port: [80], action: allow }\n", "t.yaml").unwrap();
    let c = parse("policy:\n  rules:\n    - { proto: tcp, dst_port: 22, action: allow }\n", "t.yaml").unwrap();
    assert!(c.classifier.rules()[0].src.is_empty(), "absent src: any source");
}

#[test]
fn a_core_listed_twice_is_refused() {
    let e = err("zones:\n  outside: { queues: 3 }\n  inside: { queues: 3 }\nworkers:\n  cores: [2, 3, 2]\n");
    assert_eq!(e.line, 5, "{e}");
    assert!(e.message.contains("core 2 twice (entries 1 and 3)"), "{}", e.message);
    parse("zones:\n  outside: { queues: 2 }\n  inside: { queues: 2 }\nworkers:\n  cores: [2, 3]\n", "t.yaml").unwrap();
}

#[test]
fn counts_say_what_is_wrong_with_them() {
    for (v, says) in [
        ("-1", "negative"),
        ("18446744073709551616", "too large"),
        ("1.5e6", "write the whole number, 1500000"),
        ("2.5", "not a whole number"),
        ("ten", "not a whole number"),
    ] {
        let e = err(&format!("conntrack:\n  capacity: {v}\n"));
        assert_eq!((e.line, e.col), (2, 13), "{v}");
        assert!(e.message.contains(says), "{v}: {}", e.message);
        assert!(!e.message.contains("invalid u64"), "{v}: {}", e.message);
    }
    let e = err("conntrack:\n  capacity: 10\n  capacity: 20\n");
    assert!(e.message.contains("duplicate key `capacity`") && !e.message.contains("Options"), "{}", e.message);
    let e = err("log: { rate_limit: 10 }\n---\nlog: { rate_limit: 20 }\n");
    assert!(e.message.contains("several YAML documents") && !e.message.contains("from_str"), "{}", e.message);
}

#[test]
fn durations_that_would_wrap_are_refused_everywhere() {
    // 18446744075 s is 2^64 ns and a bit: it used to wrap to about a second.
    let e = err("conntrack:\n  timeouts:\n    tcp_established: 18446744075\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("too large"), "{}", e.message);
    let e = err("control:\n  report_interval: 18446744075\n");
    assert!(e.message.contains("too large"), "{}", e.message);
    let e = err("conntrack:\n  pressure: { timeout_floor: 99999999999999999999 }\n");
    assert!(e.message.contains("too large"), "{}", e.message);
    // In range but absurd: refused by the setting's own bounds, not wrapped.
    let e = err("conntrack:\n  timeouts:\n    tcp_established: 18446744073\n");
    assert!(e.message.contains("between 1s and 365d"), "{}", e.message);
}

#[test]
fn a_long_line_is_quoted_around_the_error_not_whole() {
    let long = format!("conntrack: {{ capacity: {} }}\n", "9".repeat(200_000));
    let e = err(&long);
    let shown = e.to_string();
    assert!(shown.len() < 1000, "{} bytes of message", shown.len());
    assert!(shown.contains("…"), "{shown}");
    // The caret still points under the value.
    let lines: Vec<&str> = shown.lines().collect();
    let caret = lines[2].find('^').unwrap() - lines[2].find('|').unwrap();
    assert_eq!(&lines[1][lines[1].find('|').unwrap() + caret..][..1], "9", "{shown}");
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hf-cfg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn prefixes_come_from_a_file_with_line_numbers_in_errors() {
    let d = tmpdir("pfx");
    std::fs::write(d.join("block.txt"), "# bad hosts\n192.0.2.0/24\n\n  198.51.100.7   # one host\n2001:db8:bad::/48\n").unwrap();
    let cfg = d.join("hf.yaml");
    std::fs::write(&cfg, "policy:\n  rules:\n    - { name: block, from: outside, action: deny, src_file: block.txt, src: [203.0.113.0/24] }\n").unwrap();
    let c = load(&cfg).unwrap();
    assert_eq!(c.classifier.rules()[0].src.len(), 4, "the file's three and the inline one");
    let q = |a: u32| Query { from: Zone::Outside, to: Zone::Inside, v6: false, proto: 6, src: u128::from(a), dst: 1, sport: 1, dport: 1, icmp_type: None };
    assert_eq!(c.classifier.decide(&q(0xc633_6407)).rule, Some(0), "198.51.100.7 is blocked");
    assert_eq!(c.classifier.decide(&q(0xc633_6408)).rule, None);
    // A bad line: the prefix file, its line and column.
    std::fs::write(d.join("block.txt"), "192.0.2.0/24\n10.0.0.300/32\n").unwrap();
    let e = load(&cfg).unwrap_err();
    assert!(e.file.ends_with("block.txt") && (e.line, e.col) == (2, 1), "{e}");
    assert!(e.message.contains("src_file") && e.message.contains("10.0.0.300"), "{e}");
    // Empty, or missing: an error at the key.
    std::fs::write(d.join("block.txt"), "# nothing yet\n\n").unwrap();
    let e = load(&cfg).unwrap_err();
    assert!(e.file.ends_with("hf.yaml") && e.line == 3 && e.message.contains("holds no prefixes"), "{e}");
    std::fs::remove_file(d.join("block.txt")).unwrap();
    let e = load(&cfg).unwrap_err();
    assert!(e.line == 3 && e.message.contains("cannot read"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_blocklist_of_300k_prefixes_inline_is_accepted() {
    // More than serde-saphyr's default budget of 250,000 nodes.
    let mut y = String::from("policy:\n  rules:\n    - name: block\n      action: deny\n      src:\n");
    for i in 0..300_000u32 {
        let a = 0x0b00_0000 + i * 256;
        y.push_str(&format!("        - {}.{}.{}.0/24\n", a >> 24, (a >> 16) & 255, (a >> 8) & 255));
    }
    let c = parse(&y, "big.yaml").unwrap();
    assert_eq!(c.classifier.rules()[0].src.len(), 300_000);
}

#[test]
fn library_words_are_turned_into_the_files_terms() {
    let e = err("policy:\n  rules:\n    - { action: allow, src: 10.0.0.1/8 }\n");
    assert!(e.message.contains("has host bits set; did you mean 10.0.0.0/8?"), "the value's own message, not the enum's: {}", e.message);
    let e = err("policy:\n  rules:\n    - { action: allow, src: [10.0.0.0/8, 10.0.0.1/8] }\n");
    assert_eq!(e.col, 42, "the bad element itself");
    let e = err("zones:\n  inside: { networks: 10.0.2.0/24 }\n");
    assert!(e.message.contains("expected a list"), "{}", e.message);
    let e = err("conntrack: 5\n");
    assert!(e.message.contains("expected a mapping"), "{}", e.message);
    let e = err("control:\n  saturation: { busy: abc }\n");
    assert!(e.message.contains("not a number"), "{}", e.message);
    for m in [e.message] {
        for library in ["untagged", "DuplicateKeyPolicy", "from_str", "invalid u64", "sequence start"] {
            assert!(!m.contains(library), "{m}");
        }
    }
}

#[test]
fn the_snapshot_directory_is_absolute_or_refused_where_written() {
    assert_eq!(parse("state: { snapshot_dir: /var/lib/holdfast }\n", "t.yaml").unwrap().snapshot_dir, Some("/var/lib/holdfast".into()));
    assert_eq!(parse("", "t.yaml").unwrap().snapshot_dir, None, "no key: no state across restarts");
    let e = err("state:\n  snapshot_dir: var/lib/holdfast\n");
    assert_eq!((e.line, e.col), (2, 17), "{e}");
    assert!(e.message.contains("is relative"), "{e}");
    let e = err("state:\n  snapshot_dir: \"  \"\n");
    assert!(e.message.contains("state.snapshot_dir is empty"), "{e}");
    assert!(err("state: { snapshot: /x }\n").to_string().contains("snapshot"), "unknown key");
}

#[test]
fn an_endless_file_is_read_only_up_to_its_limit() {
    // /dev/zero has no size to check: the read itself must stop.
    let e = load(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(e.message.contains("more than"), "{e}");
    let e = err("policy:\n  rules:\n    - { name: x, src_file: /dev/zero, action: deny }\n");
    assert!(e.message.contains("more than"), "{e}");
}

#[test]
fn sync_keys_are_checked_where_they_are_written() {
    let c =
        parse("sync:\n  transport: udp\n  listen: 192.168.77.1:3780\n  peer: 192.168.77.2:3780\n  interface: sync0\n  mode: ftfw\n  role: standby\n", "t.yaml")
            .unwrap();
    let s = c.sync.unwrap();
    assert_eq!((s.listen.to_string(), s.peer.to_string(), s.role), ("192.168.77.1:3780".into(), "192.168.77.2:3780".into(), compiled::Role::Standby));
    assert_eq!((s.mode, s.ack_window, s.resend_queue, s.dead_interval), (compiled::SyncMode::Ftfw, 300, 131_072, std::time::Duration::from_secs(3)));
    assert_eq!((s.queue, s.resync_interval, s.interval), (65_536, std::time::Duration::from_secs(600), std::time::Duration::from_millis(50)));
    assert_eq!(s.cache_limit, c.engine.capacity * c.dataplane.cores.len(), "what the tables can hold");
    assert_eq!(parse("", "t.yaml").unwrap().sync, None);
    let e = err("sync:\n  listen: 192.168.77.1:3780\n  peer: nowhere\n");
    assert_eq!((e.line, e.col), (3, 9), "{e}");
    assert!(e.message.contains("sync.peer"), "{e}");
    assert!(err("sync:\n  peer: 1.2.3.4:1\n").message.contains("sync.listen is required"));
    let e = err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  mode: tcp\n");
    assert!(e.message.contains("not ftfw, notrack or alarm") && e.line == 4, "{e}");
    assert!(err("sync:\n  transport: multicast\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n").message.contains("multicast needs sync.group"));
    assert!(
        err("sync:\n  transport: multicast\n  group: 10.0.0.1\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n").message.contains("not an IPv4 multicast address")
    );
    assert!(err("sync:\n  group: 225.0.0.50\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n").message.contains("for transport: multicast"));
    let m = parse("sync:\n  transport: multicast\n  group: 225.0.0.50\n  listen: 1.1.1.1:3780\n  peer: 1.2.3.4:3780\n", "t.yaml").unwrap().sync.unwrap();
    assert_eq!(m.group, Some(std::net::Ipv4Addr::new(225, 0, 0, 50)));
    assert!(err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  dead_interval: 10ms\n").message.contains("sync.dead_interval must be between"));
    assert!(err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  ack_window: 0\n").message.contains("sync.ack_window"));
    assert!(err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  queue: 100\n").message.contains("sync.queue must be between 1024 and"));
    assert!(err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  resync_interval: 100ms\n").message.contains("sync.resync_interval must be between"));
    assert!(err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  interval: 1ms\n").message.contains("sync.interval must be between 10ms"));
    assert_eq!(s.send_rate, 100_000);
    let r = parse("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  mode: notrack\n  send_rate: 20000\n", "t.yaml").unwrap().sync.unwrap();
    assert_eq!(r.send_rate, 20_000);
    let e = err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  send_rate: 10\n");
    assert!(e.message.contains("sync.send_rate must be between 1000 and") && e.line == 4, "{e}");
    assert!(err("sync:\n  listen: 1.1.1.1:1\n  peer: 1.2.3.4:1\n  send_rate: 20000000\n").message.contains("sync.send_rate must be between 1000 and 10000000"));
}

#[test]
fn the_icmp_error_window_check_is_on_unless_turned_off_and_reloads() {
    let on = parse("conntrack:\n  capacity: 1000\n", "x.yaml").unwrap();
    assert!(on.engine.icmp_error_window);
    let off = parse("conntrack:\n  capacity: 1000\n  icmp_error_window: off\n", "x.yaml").unwrap();
    assert!(!off.engine.icmp_error_window);
    assert!(on.restart_needed(&off).is_empty(), "a reload changes it");
    let e = err("conntrack:\n  icmp_error_window: linux\n");
    assert!(e.message.contains("linux") && e.to_string().contains(":2:"), "{e}");
}

#[test]
fn accounting_is_on_unless_turned_off_and_nothing_else_is_taken() {
    let on = parse("conntrack:\n  capacity: 1000\n", "x.yaml").unwrap();
    assert!(on.engine.accounting);
    let off = parse("conntrack:\n  capacity: 1000\n  accounting: off\n", "x.yaml").unwrap();
    assert!(!off.engine.accounting);
    let e = err("conntrack:\n  accounting: maybe\n");
    assert!(e.message.contains("maybe") && e.to_string().contains(":2:"), "{e}");
    assert_eq!(on.restart_needed(&off), vec!["conntrack.accounting: true -> false".to_string()]);
}

#[test]
fn the_ipv6_share_sizes_the_address_pool_and_is_checked() {
    let c = parse("conntrack:\n  capacity: 1000\n  ipv6_share: 0.25\n", "x.yaml").unwrap();
    assert_eq!(c.engine.ipv6_slots, Some(250));
    assert_eq!(parse("conntrack:\n  capacity: 1000\n", "x.yaml").unwrap().engine.ipv6_slots, None, "all by default");
    for bad in ["1.5", "-0.1", ".nan"] {
        let e = err(&format!("conntrack:\n  ipv6_share: {bad}\n"));
        assert!(e.message.contains("conntrack.ipv6_share must be between 0 and 1") && e.to_string().contains(":2:"), "{bad}: {e}");
    }
}

#[test]
fn ipv6_sources_are_counted_by_a_prefix_that_is_checked_and_needs_a_restart() {
    let d = parse("conntrack:\n  per_source_limit: 100\n", "x.yaml").unwrap();
    assert_eq!(d.engine.source_prefix_v6, 64, "a /64 by default");
    let host = parse("conntrack:\n  per_source_limit: 100\n  per_source_ipv6_prefix: 128\n", "x.yaml").unwrap();
    assert_eq!(host.engine.source_prefix_v6, 128);
    for bad in ["0", "129", "100000"] {
        let e = err(&format!("conntrack:\n  per_source_limit: 100\n  per_source_ipv6_prefix: {bad}\n"));
        assert!(e.message.contains("conntrack.per_source_ipv6_prefix must be a prefix length from 1 to 128") && e.to_string().contains(":3:"), "{bad}: {e}");
    }
    assert_eq!(d.restart_needed(&host), vec!["conntrack.per_source_ipv6_prefix: 64 -> 128".to_string()]);
}
