//! The deny log: denials the workers queued, written as EVE-style JSON lines (the
//! format Suricata's `eve.json` made common) to a file or standard output.
//!
//! One thread drains every worker's queue every few milliseconds, formats and writes.
//! It never makes a worker wait: the queues are bounded and lossy on the worker side
//! (counted as suppressed). On reload the file is reopened (logrotate's `postrotate`),
//! possibly under a new name.

use std::io::Write;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use holdfast_dataplane::control::DenyEvent;
use holdfast_pipeline::flow::to_ip;
use serde_json::{Value, json};

use crate::config::DenyOutput;

/// What the logger has done, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines written whole.
    pub written: AtomicU64,
    /// Lines lost to write errors (a full disk, a vanished file system).
    pub write_errors: AtomicU64,
    /// The last write failed (cleared by the next one that succeeds).
    pub failing: AtomicBool,
}

/// Tells the logger to reopen its output, possibly a new one.
pub type Reopen = crossbeam_channel::Sender<DenyOutput>;

fn proto_name(p: u8) -> Value {
    match p {
        6 => json!("TCP"),
        17 => json!("UDP"),
        1 => json!("ICMP"),
        58 => json!("IPv6-ICMP"),
        132 => json!("SCTP"),
        n => json!(n.to_string()),
    }
}

/// One denial as a JSON object. `started_at` is the wall-clock time of the pipeline's
/// time 0; `interfaces` names outside and inside.
pub fn event_json(e: &DenyEvent, started_at: SystemTime, interfaces: &[String; 2]) -> Value {
    let at = started_at + Duration::from_nanos(e.at_ns);
    let mut v = json!({
        "timestamp": humantime::format_rfc3339_micros(at).to_string(),
        "event_type": "drop",
        "in_iface": interfaces[usize::from(e.side).min(1)],
        "reason": e.reason.name(),
        "worker": e.worker,
    });
    let Some(w) = &e.what else { return v };
    v["src_ip"] = json!(to_ip(w.src, w.v6).to_string());
    v["dest_ip"] = json!(to_ip(w.dst, w.v6).to_string());
    v["proto"] = proto_name(w.proto);
    if matches!(w.proto, 6 | 17 | 132) {
        v["src_port"] = json!(w.sport);
        v["dest_port"] = json!(w.dport);
    }
    if w.proto == 6 {
        v["tcp_flags"] = json!(format!("{:02x}", w.tcp_flags));
    }
    if let Some((ty, code)) = w.icmp {
        v["icmp_type"] = json!(ty);
        v["icmp_code"] = json!(code);
    }
    if w.vlan != 0 {
        v["vlan"] = json!([w.vlan & 0xfff, w.vlan >> 12]);
    }
    if let Some(r) = &w.removed {
        let ago = Duration::from(r.ago);
        v["state_removed"] = json!({
            "why": r.why.name(),
            "timestamp": humantime::format_rfc3339_micros(at.checked_sub(ago).unwrap_or(at)).to_string(),
            "ago_s": r.ago.as_secs_f64(),
            "class": r.class.name(),
        });
    }
    v
}

/// Where lines go: a file (appended to) or standard output.
pub trait Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Cuts off the last `n` bytes written (a partial line), where possible.
    fn unwrite(&mut self, n: u64) -> std::io::Result<()>;
}

struct FileSink {
    f: std::fs::File,
}

impl Sink for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.f.write(buf)
    }
    fn unwrite(&mut self, n: u64) -> std::io::Result<()> {
        // Opened for appending: the end is where the partial line stops. ftruncate
        // needs no free space.
        let len = self.f.metadata()?.len();
        self.f.set_len(len.saturating_sub(n))
    }
}

struct StdoutSink;

impl Sink for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut o = std::io::stdout().lock();
        let n = o.write(buf)?;
        o.flush()?;
        Ok(n)
    }
    fn unwrite(&mut self, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "standard output cannot be cut back"))
    }
}

fn open(out: &DenyOutput) -> std::io::Result<Option<Box<dyn Sink + Send>>> {
    Ok(match out {
        DenyOutput::Off => None,
        DenyOutput::Stdout => Some(Box::new(StdoutSink)),
        DenyOutput::File(p) => Some(Box::new(FileSink { f: std::fs::OpenOptions::new().create(true).append(true).open(p)? })),
    })
}

/// Whole lines waiting to be written, and where each ends.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// A partial line could not be cut back: start the next write on a new line.
    dangling: bool,
}

/// What one [`Batch::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub written: u64,
    pub lost: u64,
}

impl Batch {
    pub fn push_line(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.ends.push(self.buf.len());
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Writes the batch, whole lines or nothing: if a write fails part-way, the partial
    /// line is cut back off the file, and only lines that reached it whole count as
    /// written. Lines that did not are lost (the caller counts them); the batch is
    /// empty afterwards either way.
    pub fn write(&mut self, sink: &mut dyn Sink) -> (Outcome, Option<std::io::Error>) {
        let mut done = 0usize;
        let mut err = None;
        if self.dangling && !self.is_empty() {
            match sink.write(b"\n") {
                Ok(1) => self.dangling = false,
                Ok(_) => err = Some(std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote nothing")),
                Err(e) => err = Some(e),
            }
        }
        while err.is_none() && done < self.buf.len() {
            match sink.write(&self.buf[done..]) {
                Ok(0) => err = Some(std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote nothing")),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => err = Some(e),
            }
        }
        let whole = self.ends.iter().take_while(|&&e| e <= done).count();
        let partial = done - if whole == 0 { 0 } else { self.ends[whole - 1] };
        if partial > 0 && sink.unwrite(partial as u64).is_err() {
            self.dangling = true;
        }
        let out = Outcome { written: whole as u64, lost: (self.ends.len() - whole) as u64 };
        self.buf.clear();
        self.ends.clear();
        (out, err)
    }
}

/// Why the deny log did not start.
#[derive(Debug, thiserror::Error)]
pub enum DenyLogError {
    #[error("log.denials: cannot open {output}: {source}{}", open_hint(.source))]
    Open {
        output: DenyOutput,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the deny log's thread: {0}")]
    Thread(#[source] std::io::Error),
}

fn open_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (its directory does not exist: create it, or change log.denials)",
        std::io::ErrorKind::PermissionDenied => " (the service's user may not write there: with the shipped unit use /var/log/holdfast/)",
        _ => "",
    }
}

/// Writes what is batched; counts what was written and lost; says so on stderr once
/// when writing starts to fail and once when it works again.
fn flush(batch: &mut Batch, w: &mut Option<Box<dyn Sink + Send>>, st: &Stats, name: &str, lost_since_ok: &mut u64) {
    let Some(out) = w.as_mut() else { return };
    if batch.is_empty() {
        return;
    }
    let (o, err) = batch.write(out.as_mut());
    st.written.fetch_add(o.written, Relaxed);
    st.write_errors.fetch_add(o.lost, Relaxed);
    match err {
        Some(e) => {
            if !st.failing.swap(true, Relaxed) {
                crate::logln!(
                    "holdfast: log.denials: cannot write {name}: {e}; denials are counted but not logged (holdfast_deny_log_write_errors_total) until it can"
                );
            }
            *lost_since_ok += o.lost;
        }
        None => {
            if st.failing.swap(false, Relaxed) {
                crate::logln!("holdfast: log.denials: writing {name} again; {lost_since_ok} line(s) were lost meanwhile");
                *lost_since_ok = 0;
            }
        }
    }
}

/// A running logger thread.
pub struct Logger {
    pub stats: Arc<Stats>,
    reopen: Reopen,
    stop: Arc<AtomicBool>,
    thread: Option<crate::helper::Helper>,
}

impl Logger {
    /// Starts the thread. Fails only if the output cannot be opened.
    pub fn start(
        mut queues: Vec<rtrb::Consumer<DenyEvent>>,
        output: &DenyOutput,
        started_at: SystemTime,
        interfaces: [String; 2],
    ) -> Result<Logger, DenyLogError> {
        let mut w = open(output).map_err(|source| DenyLogError::Open { output: output.clone(), source })?;
        let output_name = output.to_string();
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (reopen, requests) = crossbeam_channel::unbounded::<DenyOutput>();
        let (st, sp) = (Arc::clone(&stats), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("holdfast-log".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(512);
                let mut batch = Batch::default();
                let mut name = output_name;
                let mut lost_since_ok = 0u64;
                let panic_at = crate::helper::panic_at("log");
                loop {
                    crate::helper::maybe_panic(panic_at);
                    let stopping = sp.load(Relaxed);
                    let mut n = 0;
                    for q in &mut queues {
                        while let Ok(e) = q.pop() {
                            n += 1;
                            if w.is_none() {
                                continue;
                            }
                            line.clear();
                            let _ = serde_json::to_writer(&mut line, &event_json(&e, started_at, &interfaces));
                            batch.push_line(&line);
                            if batch.buf.len() >= 1 << 16 {
                                flush(&mut batch, &mut w, &st, &name, &mut lost_since_ok);
                            }
                        }
                    }
                    flush(&mut batch, &mut w, &st, &name, &mut lost_since_ok);
                    while let Ok(o) = requests.try_recv() {
                        // Everything queued was written above; reopening drops the old
                        // handle (logrotate).
                        match open(&o) {
                            Ok(x) => {
                                w = x;
                                name = o.to_string();
                            }
                            Err(e) => crate::logln!("holdfast: log.denials: cannot reopen {o}: {e}{}; keeping the old file", open_hint(&e)),
                        }
                    }
                    if stopping {
                        break;
                    }
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
            .map_err(DenyLogError::Thread)?;
        Ok(Logger { stats, reopen, stop, thread: Some(crate::helper::Helper::new(thread)) })
    }

    /// Reopens the output (after the workers' queues were drained into the old one).
    pub fn reopen(&self, output: DenyOutput) {
        let _ = self.reopen.send(output);
    }

    /// Why the logger's thread ended, if it has (it should run until [`Self::stop`]).
    pub fn ended(&mut self) -> Option<&str> {
        self.thread.as_mut().and_then(|t| t.ended())
    }

    /// Writes what is queued, then stops.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_dataplane::host::Tool;
    use holdfast_pipeline::conntrack::pressure::Admission;
    use holdfast_pipeline::conntrack::tombstones::Why;
    use holdfast_pipeline::engine::{Explained, Removed};
    use holdfast_pipeline::{DropReason, Duration as PDuration};

    #[test]
    fn an_evicted_reply_reads_like_the_origin_story_and_says_when_its_state_went() {
        let e = DenyEvent {
            at_ns: 2_500_000,
            worker: 1,
            side: 1,
            reason: DropReason::ReplyToEvicted,
            what: Some(Explained {
                v6: false,
                proto: 6,
                src: u128::from(u32::from(std::net::Ipv4Addr::new(10, 0, 2, 3))),
                dst: u128::from(u32::from(std::net::Ipv4Addr::new(198, 51, 100, 96))),
                sport: 80,
                dport: 38946,
                tcp_flags: 0x18,
                icmp: None,
                vlan: 0,
                removed: Some(Removed { why: Why::Evicted, ago: PDuration::from_secs(2), class: Admission::Assured }),
            }),
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let v = event_json(&e, start, &["eth0".into(), "eth1".into()]);
        assert_eq!(v["timestamp"], "2025-11-24T16:00:00.002500Z");
        assert_eq!(v["event_type"], "drop");
        assert_eq!((v["src_ip"].as_str(), v["src_port"].as_u64()), (Some("10.0.2.3"), Some(80)));
        assert_eq!((v["dest_ip"].as_str(), v["dest_port"].as_u64()), (Some("198.51.100.96"), Some(38946)));
        assert_eq!((v["proto"].as_str(), v["tcp_flags"].as_str()), (Some("TCP"), Some("18")));
        assert_eq!((v["in_iface"].as_str(), v["reason"].as_str()), (Some("eth1"), Some("reply_to_evicted")));
        assert_eq!(v["state_removed"]["why"], "evicted");
        assert_eq!(v["state_removed"]["class"], "assured");
        assert_eq!(v["state_removed"]["timestamp"], "2025-11-24T15:59:58.002500Z");
        // A frame the pipeline could not read still gets a line with its reason.
        let bare = DenyEvent { what: None, reason: DropReason::Malformed, ..e };
        let v = event_json(&bare, start, &["eth0".into(), "eth1".into()]);
        assert_eq!(v["reason"], "malformed");
        assert!(v.get("src_ip").is_none());
    }

    /// A disk that takes `room` more bytes, then says it is full (after a short write,
    /// as a real one does), until `room` is raised again.
    struct Disk {
        data: Vec<u8>,
        room: usize,
    }

    impl Sink for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn unwrite(&mut self, n: u64) -> std::io::Result<()> {
            self.data.truncate(self.data.len() - n as usize);
            self.room += n as usize;
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_gets_whole_lines_or_nothing_and_exact_counts() {
        let mut d = Disk { data: Vec::new(), room: 25 };
        let mut b = Batch::default();
        for l in ["{\"a\":1}", "{\"b\":22}", "{\"c\":333}"] {
            b.push_line(l.as_bytes());
        }
        // 25 bytes of room: the first two lines (8 + 9 bytes) fit, the third is cut and
        // must be taken back.
        let (o, e) = b.write(&mut d);
        assert_eq!((o.written, o.lost), (2, 1));
        assert_eq!(e.unwrap().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(d.data, b"{\"a\":1}\n{\"b\":22}\n", "no partial line left behind");
        // Space returns: the next lines start cleanly on their own line.
        d.room = 1000;
        b.push_line(b"{\"d\":4}");
        let (o, e) = b.write(&mut d);
        assert!(e.is_none());
        assert_eq!((o.written, o.lost), (1, 0));
        let text = String::from_utf8(d.data.clone()).unwrap();
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap();
        }
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn a_partial_line_that_cannot_be_taken_back_is_ended_before_the_next() {
        struct Pipe(Vec<u8>, usize);
        impl Sink for Pipe {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.1 == 0 {
                    return Err(std::io::Error::from_raw_os_error(libc::EPIPE));
                }
                let n = buf.len().min(self.1);
                self.0.extend_from_slice(&buf[..n]);
                self.1 -= n;
                Ok(n)
            }
            fn unwrite(&mut self, _: u64) -> std::io::Result<()> {
                Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
            }
        }
        let mut p = Pipe(Vec::new(), 5);
        let mut b = Batch::default();
        b.push_line(b"{\"a\":1}");
        assert_eq!(b.write(&mut p).0.lost, 1);
        p.1 = 100;
        b.push_line(b"{\"b\":2}");
        assert_eq!(b.write(&mut p).0.written, 1);
        assert_eq!(p.0, b"{\"a\":\n{\"b\":2}\n", "the cut line is ended; the next is whole on its own line");
    }

    /// A real file system that fills up: a 64 KiB tmpfs (root only; CI runs as root).
    #[test]
    fn a_full_tmpfs_holds_only_whole_lines_and_the_count_is_exact() {
        if !holdfast_dataplane::sys::is_root() {
            holdfast_dataplane::host::report_skip("needs root to mount a small tmpfs (CI runs as root)");
            return;
        }
        let mount = [Tool { command: "mount", package: "mount" }, Tool { command: "umount", package: "mount" }];
        if !holdfast_dataplane::host::have_or_report(&mount) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("hf-fulldisk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&dir).status();
        if !mounted.is_ok_and(|s| s.success()) {
            holdfast_dataplane::host::report_skip("could not mount a tmpfs here (a container without CAP_SYS_ADMIN?)");
            return;
        }
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _u = Unmount(dir.clone());
        let path = dir.join("deny.log");
        let (mut p, c) = rtrb::RingBuffer::new(20_000);
        let ev = DenyEvent { at_ns: 0, worker: 0, side: 0, reason: DropReason::Policy, what: None };
        let l = Logger::start(vec![c], &DenyOutput::File(path.clone()), SystemTime::now(), ["a".into(), "b".into()]).unwrap();
        let mut pushed = 0u64;
        for _ in 0..3000 {
            if p.push(ev).is_ok() {
                pushed += 1;
            }
        }
        let t = std::time::Instant::now();
        while l.stats.written.load(Relaxed) + l.stats.write_errors.load(Relaxed) < pushed && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(l.stats.failing.load(Relaxed), "the disk filled up");
        // Space returns (the file is rotated away), the logger goes on.
        let rotated = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        l.reopen(DenyOutput::File(path.clone()));
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..10 {
            p.push(ev).unwrap();
        }
        pushed += 10;
        let t = std::time::Instant::now();
        while l.stats.written.load(Relaxed) + l.stats.write_errors.load(Relaxed) < pushed && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let written = l.stats.written.load(Relaxed);
        let lost = l.stats.write_errors.load(Relaxed);
        assert!(!l.stats.failing.load(Relaxed), "writing again");
        l.stop();
        let fresh = std::fs::read(&path).unwrap();
        let mut lines = 0u64;
        for part in [&rotated, &fresh] {
            assert!(part.is_empty() || part.ends_with(b"\n"), "the file ends with a whole line");
            for line in String::from_utf8_lossy(part).lines() {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("a cut line {line:?}: {e}"));
                lines += 1;
            }
        }
        assert_eq!(written, lines, "written counts the lines in the files");
        assert_eq!(written + lost, pushed);
        assert!(lost > 0 && !fresh.is_empty());
    }

    #[test]
    fn the_logger_writes_every_queued_event_and_reopens_a_rotated_file() {
        let dir = std::env::temp_dir().join(format!("hf-denylog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deny.log");
        let (mut p, c) = rtrb::RingBuffer::new(16);
        let ev = DenyEvent { at_ns: 0, worker: 0, side: 0, reason: DropReason::Policy, what: None };
        let l = Logger::start(vec![c], &DenyOutput::File(path.clone()), SystemTime::now(), ["a".into(), "b".into()]).unwrap();
        for _ in 0..3 {
            p.push(ev).unwrap();
        }
        let wait = |n: u64| {
            for _ in 0..500 {
                if l.stats.written.load(Relaxed) >= n {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        wait(3);
        // logrotate: move the file away, then ask for a reopen.
        let rotated = dir.join("deny.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        l.reopen(DenyOutput::File(path.clone()));
        std::thread::sleep(Duration::from_millis(50));
        p.push(ev).unwrap();
        wait(4);
        l.stop();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 3);
        let fresh = std::fs::read_to_string(&path).unwrap();
        assert_eq!(fresh.lines().count(), 1);
        assert!(fresh.contains("\"reason\":\"policy\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
