//! The control endpoint under abuse, without root: it is started on loopback with a
//! view and two stand-in workers, and then attacked the way a local user could — a
//! body promised and never sent, hundreds of idle connections, a header of hundreds of
//! megabytes, a huge chunked body — while `/metrics` must keep answering within a
//! second and memory must stay bounded. Also: HEAD, HTTP/2, tokens, streamed listings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use holdfast_controlplane::control::http::{self, Endpoint, HttpStats};
use holdfast_controlplane::control::{ReloadRequest, View};
use holdfast_dataplane::control::{Command, FlowsReply};
use holdfast_dataplane::run::Commander;
use holdfast_dataplane::stats::Snapshot;
use holdfast_pipeline::flow::FlowKey;
use holdfast_pipeline::{Duration as PDuration, FlowInfo, Side, Zone};

struct Setup {
    ep: Option<Endpoint>,
    addr: SocketAddr,
    stats: Arc<HttpStats>,
    token: http::Token,
    _reload: crossbeam_channel::Receiver<ReloadRequest>,
    snapshot: crossbeam_channel::Receiver<holdfast_controlplane::control::SnapshotRequest>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(e) = self.ep.take() {
            e.stop();
        }
    }
}

fn flow(i: u32) -> FlowInfo {
    let (key, _) = FlowKey::new(u128::from(0x0a00_0101 + i), 40_000, 0x0a00_0201, 80, 6, false, 0);
    FlowInfo {
        key,
        orig: Side::FromLo,
        from: Zone::Outside,
        state: "ESTABLISHED",
        expires_in: PDuration::from_secs(100),
        assured: true,
        class: holdfast_pipeline::conntrack::pressure::Admission::Assured,
        packets: [1, 1],
        bytes: [60, 60],
        age: Some(PDuration::from_secs(7)),
        counted: true,
    }
}

/// Stand-in workers: each answers a listing with `per_worker` flows in chunks of 100.
fn start(per_worker: u32) -> Setup {
    // Both ends of every test connection live in this process.
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read the rlimit struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
    let mut senders = Vec::new();
    for w in 0..2u32 {
        let (tx, rx) = crossbeam_channel::bounded::<Command>(64);
        senders.push(tx);
        std::thread::spawn(move || {
            while let Ok(c) = rx.recv() {
                // Each listing on its own thread: a real worker walks its listings side
                // by side, a slice each round, and a slow reader holds up only its own.
                if let Command::Flows { limit, reply, .. } = c {
                    std::thread::spawn(move || {
                        let all: Vec<FlowInfo> = (0..per_worker).map(|i| flow(w * 100_000 + i)).take(limit).collect();
                        for chunk in all.chunks(100) {
                            if reply.send(FlowsReply::Chunk(chunk.to_vec())).is_err() {
                                break;
                            }
                        }
                        let _ = reply.send(FlowsReply::Done);
                    });
                }
            }
        });
    }
    let view = View { snaps: vec![Snapshot::default(), Snapshot { worker: 1, ..Snapshot::default() }], ..View::default() };
    let stats = Arc::clone(&view.http);
    let (reload_tx, reload_rx) = crossbeam_channel::unbounded();
    let (snapshot_tx, snapshot_rx) = crossbeam_channel::bounded(16);
    let (takeover_tx, _takeover_rx) = crossbeam_channel::bounded(4);
    let token: http::Token = Arc::new(RwLock::new(None));
    let ep = Endpoint::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(RwLock::new(view)),
        Commander::new(senders),
        http::Requests { reload: reload_tx, snapshot: snapshot_tx, takeover: takeover_tx },
        Arc::clone(&token),
        Arc::clone(&stats),
    )
    .unwrap();
    let addr = ep.addr;
    Setup { ep: Some(ep), addr, stats, token, _reload: reload_rx, snapshot: snapshot_rx }
}

/// Sends `req` and reads the whole answer (the connection is closed after it).
fn ask(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    ask(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
}

/// `/metrics` answers, and quickly.
fn metrics_answer_within_a_second(addr: SocketAddr) {
    let t = Instant::now();
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("holdfast_http_requests_total"));
    assert!(t.elapsed() < Duration::from_secs(1), "/metrics took {:?}", t.elapsed());
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
}

#[test]
fn a_body_promised_and_never_sent_blocks_nothing_and_times_out() {
    let s = start(0);
    let mut stalled = TcpStream::connect(s.addr).unwrap();
    stalled.write_all(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    metrics_answer_within_a_second(s.addr);
    let (code, _) = get(s.addr, "/status");
    assert_eq!(code, 200);
    // And the stalled request itself is answered 408 once its time is up.
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(s.stats.bad_bodies.load(Relaxed), 1);
}

#[test]
fn five_hundred_idle_connections_do_not_stop_metrics() {
    let s = start(0);
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    metrics_answer_within_a_second(s.addr);
    // Past the connection limit the quietest connections make room.
    let more: Vec<TcpStream> = (0..http::MAX_CONNECTIONS).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    metrics_answer_within_a_second(s.addr);
    assert!(s.stats.evicted.load(Relaxed) >= 488, "evicted {}", s.stats.evicted.load(Relaxed));
    assert!(s.stats.open.load(Relaxed) <= http::MAX_CONNECTIONS as u64);
    drop((idle, more));
}

/// Sends `head`, then `piece` again and again up to `total` bytes or until the server
/// stops reading; returns the server's first answer and how much was sent.
fn flood(addr: SocketAddr, head: &[u8], piece: &[u8], total: usize) -> (String, usize) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = c.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let n = reader.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    c.write_all(head).unwrap();
    let mut sent = 0usize;
    while sent < total && c.write_all(piece).is_ok() {
        sent += piece.len();
    }
    (answer.join().unwrap(), sent)
}

#[test]
fn a_huge_header_gets_431_and_memory_stays_bounded() {
    let s = start(0);
    let before = rss_kib();
    // Up to 300 MiB of one header line.
    let chunk = vec![b'a'; 1 << 20];
    let (a, sent) = flood(s.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ", &chunk, 300 << 20);
    assert!(a.starts_with("HTTP/1.1 431"), "answer: {a:?} after {sent} bytes");
    assert!(sent < 64 << 20, "the server kept reading: {sent} bytes");
    // A chunked POST of 400 MiB is cut at the body limit.
    let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
    piece.extend_from_slice(&chunk);
    piece.extend_from_slice(b"\r\n");
    let (a, sent) = flood(s.addr, b"POST /reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", &piece, 400 << 20);
    assert!(a.starts_with("HTTP/1.1 413"), "answer: {a:?} after {sent} bytes");
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 64 * 1024, "the process grew by {grew} KiB");
    metrics_answer_within_a_second(s.addr);
}

#[test]
fn head_http2_unknown_methods_and_paths_get_real_answers() {
    let s = start(0);
    let (code, text) = ask(s.addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    assert!(!text.contains("holdfast_"), "HEAD has no body: {text}");
    let (code, text) = ask(s.addr, "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 405);
    assert!(text.to_ascii_lowercase().contains("allow: get, head"), "{text}");
    let (code, text) = get(s.addr, "/nope");
    assert_eq!(code, 404);
    assert!(text.contains("/metrics"));
    let (code, _) = ask(s.addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200, "HTTP/1.0 still works");
    // HTTP/2 with prior knowledge (what `curl --http2-prior-knowledge` sends).
    if holdfast_dataplane::host::have_or_report(&[holdfast_dataplane::host::Tool { command: "curl", package: "curl" }]) {
        let o = std::process::Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .arg(format!("http://{}/status", s.addr))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "2 200", "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn listings_stream_both_workers_and_tokens_guard_them() {
    let s = start(250);
    let (code, text) = get(s.addr, "/flows?limit=10000");
    assert_eq!(code, 200, "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let lines = body.lines().filter(|l| l.starts_with('{')).count();
    assert_eq!(lines, 500, "250 flows from each worker");
    let (_, text) = get(s.addr, "/flows?limit=300");
    assert_eq!(text.lines().filter(|l| l.starts_with('{')).count(), 300, "the limit holds over workers");
    // With a token: listings and reloads want it; metrics and status do not.
    *s.token.write().unwrap() = Some("0123456789abcdef0123".into());
    assert_eq!(get(s.addr, "/flows").0, 401);
    assert_eq!(ask(s.addr, "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").0, 401);
    let (code, _) = ask(s.addr, "GET /flows?limit=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 0123456789abcdef0123\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    assert_eq!(get(s.addr, "/metrics").0, 200);
    assert_eq!(get(s.addr, "/status").0, 200);
    assert_eq!(s.stats.unauthorized.load(Relaxed), 2);
}

/// Without a token, being on this host is not enough: a listing or a takeover from a
/// socket that neither root nor the appliance's own user owns is refused (the kernel
/// says whose it is), counted, and the command says why; `status` stays open.
#[test]
fn without_a_token_another_local_user_is_refused() {
    if !holdfast_dataplane::sys::is_root() {
        holdfast_dataplane::host::report_skip("needs root to connect as another user (CI runs it as root)");
        return;
    }
    use std::os::unix::process::CommandExt;
    let s = start(10);
    let as_nobody = |cmd: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_holdfast")).args([cmd, "--connect", &s.addr.to_string()]).uid(65534).gid(65534).output().unwrap()
    };
    for cmd in ["flows", "takeover", "reload"] {
        let o = as_nobody(cmd);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cmd} as uid 65534 was let in: {}", String::from_utf8_lossy(&o.stdout));
        assert!(err.contains("from uid 65534 on this host") && err.contains("control.token_file"), "{cmd}: {err}");
    }
    assert_eq!(s.stats.unauthorized.load(Relaxed), 3);
    let o = as_nobody("status");
    assert!(o.status.success(), "status is open: {}", String::from_utf8_lossy(&o.stderr));
    // ... but not the table's top sources: addresses, as a listing's are.
    let status = |o: std::process::Output| -> serde_json::Value { serde_json::from_slice(&o.stdout).unwrap() };
    let mine: serde_json::Value = serde_json::from_str(get(s.addr, "/status").1.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(mine["total"]["holders"]["sources"].is_array() && mine["total"]["holders"].get("sources_hidden").is_none(), "root sees them");
    let theirs = status(
        std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["status", "--json", "--connect", &s.addr.to_string()])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap(),
    );
    let workers = theirs["workers"].as_array().unwrap();
    for h in std::iter::once(&theirs["total"]["holders"]).chain(workers.iter().map(|w| &w["holders"])) {
        assert!(h["sources"].is_null(), "{h}");
        let why = h["sources_hidden"].as_str().unwrap();
        assert!(why.contains("the top sources' addresses from uid 65534") && why.contains("control.token_file"), "{why}");
    }
    assert_eq!(theirs["total"]["holders"]["ports"], mine["total"]["holders"]["ports"], "the ports stay");
    // This process is root: let in.
    assert_eq!(get(s.addr, "/flows?limit=1").0, 200);
    // A token opens it to anyone who has it.
    *s.token.write().unwrap() = Some("0123456789abcdef0123".into());
    let dir = std::env::temp_dir().join(format!("hf-endpoint-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["flows", "--connect", &s.addr.to_string(), "--token-file"])
        .arg(&file)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "with the token: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 20, "both workers' 10 flows");
}

#[test]
fn a_snapshot_request_reaches_the_writer_and_its_refusal_comes_back() {
    let s = start(0);
    let rx = s.snapshot.clone();
    let writer = std::thread::spawn(move || {
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        r.reply.send(Err("state.snapshot_dir is not set".into())).unwrap();
    });
    let (code, text) = ask(s.addr, "POST /snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    writer.join().unwrap();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("state.snapshot_dir is not set"), "{text}");
    let (code, _) = get(s.addr, "/snapshot");
    assert_eq!(code, 405, "a snapshot is written by POST only");
    *s.token.write().unwrap() = Some("a-token-of-sixteen-chars".into());
    let (code, _) = ask(s.addr, "POST /snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 401, "with a token set, a snapshot needs it");
}

/// Listings are held to `MAX_LISTINGS` at once: each holds what its reader has not
/// taken (an external listing, a copy of up to a million flows) and queues a walk on
/// every worker, so a few hundred slow readers would hold gigabytes and fill the
/// workers' command queues. One more is refused and counted; a reader that goes away
/// gives its place back.
#[test]
fn listings_beyond_the_limit_are_refused_and_a_reader_gone_gives_its_place_back() {
    let s = start(100_000);
    let req = "GET /flows?limit=1000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Readers that never read: the listing waits on them with its places held.
    let mut held: Vec<TcpStream> = (0..http::MAX_LISTINGS)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    let t = Instant::now();
    while s.stats.listings.load(Relaxed) < http::MAX_LISTINGS {
        assert!(t.elapsed() < Duration::from_secs(5), "the listings did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, text) = get(s.addr, "/flows?limit=1");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("flow listings are being written now"), "{text}");
    assert_eq!(s.stats.listings_refused.load(Relaxed), 1);
    metrics_answer_within_a_second(s.addr);
    // One reader goes away: its place comes back once the writer notices.
    drop(held.pop());
    let t = Instant::now();
    loop {
        let (code, text) = get(s.addr, "/flows?limit=3");
        if code == 200 {
            assert_eq!(text.lines().filter(|l| l.starts_with('{')).count(), 3, "{text}");
            break;
        }
        assert_eq!(code, 503, "{text}");
        assert!(t.elapsed() < Duration::from_secs(10), "the place was not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    let t = Instant::now();
    while s.stats.listings.load(Relaxed) > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "places still held after every reader left");
        std::thread::sleep(Duration::from_millis(20));
    }
}
