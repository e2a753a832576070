//! The deny log: denials the workers queued, written as EVE-style JSON lines (the
//! format Suricata's `eve.json` made common) to a file or standard output.
//!
//! One thread drains every worker's queue every few milliseconds, formats and writes.
//! It never makes a worker wait: the queues are bounded and lossy on the worker side
//! (counted as suppressed). On reload the file is reopened (logrotate's `postrotate`),
//! possibly under a new name.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use holdfast_dataplane::control::DenyEvent;
use holdfast_pipeline::flow::to_ip;
use serde_json::{json, Value};

use crate::config::DenyOutput;

/// What the logger has done, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
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
        let ago = Duration::from_nanos(r.ago.as_nanos());
        v["state_removed"] = json!({
            "why": r.why.name(),
            "timestamp": humantime::format_rfc3339_micros(at.checked_sub(ago).unwrap_or(at)).to_string(),
            "ago_s": r.ago.as_secs_f64(),
            "class": r.class.name(),
        });
    }
    v
}

fn open(out: &DenyOutput) -> std::io::Result<Option<Box<dyn Write + Send>>> {
    Ok(match out {
        DenyOutput::Off => None,
        DenyOutput::Stdout => Some(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        DenyOutput::File(p) => {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
            Some(Box::new(std::io::BufWriter::with_capacity(1 << 16, f)))
        }
    })
}

fn open_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (its directory does not exist: create it, or change log.denials)",
        std::io::ErrorKind::PermissionDenied => " (the service's user may not write there: with the shipped unit use /var/log/holdfast/)",
        _ => "",
    }
}

/// A running logger thread.
pub struct Logger {
    pub stats: Arc<Stats>,
    reopen: Reopen,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Logger {
    /// Starts the thread. Fails only if the output cannot be opened.
    pub fn start(
        mut queues: Vec<rtrb::Consumer<DenyEvent>>,
        output: &DenyOutput,
        started_at: SystemTime,
        interfaces: [String; 2],
    ) -> Result<Logger, String> {
        let mut w = open(output).map_err(|e| format!("log.denials: cannot open {output}: {e}{}", open_hint(&e)))?;
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (reopen, requests) = crossbeam_channel::unbounded::<DenyOutput>();
        let (st, sp) = (Arc::clone(&stats), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("holdfast-log".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(512);
                loop {
                    let stopping = sp.load(Relaxed);
                    let mut n = 0;
                    for q in &mut queues {
                        while let Ok(e) = q.pop() {
                            n += 1;
                            let Some(out) = w.as_mut() else { continue };
                            line.clear();
                            let _ = serde_json::to_writer(&mut line, &event_json(&e, started_at, &interfaces));
                            line.push(b'\n');
                            match out.write_all(&line) {
                                Ok(()) => st.written.fetch_add(1, Relaxed),
                                Err(_) => st.write_errors.fetch_add(1, Relaxed),
                            };
                        }
                    }
                    if let Some(out) = w.as_mut()
                        && out.flush().is_err()
                    {
                        st.write_errors.fetch_add(1, Relaxed);
                    }
                    while let Ok(o) = requests.try_recv() {
                        // Flushed above; reopening drops the old handle (logrotate).
                        match open(&o) {
                            Ok(x) => w = x,
                            Err(e) => eprintln!("holdfast: log.denials: cannot reopen {o}: {e}{}; keeping the old file", open_hint(&e)),
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
            .map_err(|e| format!("starting the deny logger: {e}"))?;
        Ok(Logger { stats, reopen, stop, thread: Some(thread) })
    }

    /// Reopens the output (after the workers' queues were drained into the old one).
    pub fn reopen(&self, output: DenyOutput) {
        let _ = self.reopen.send(output);
    }

    /// Writes what is queued, then stops.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
