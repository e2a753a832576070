//! The HTTP endpoint on `control.listen`: `/metrics`, `/status`, `/flows`, and
//! `POST /reload`. A small synchronous server (tiny_http) on its own thread: nothing it
//! does touches a worker except through the workers' command queues.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use holdfast_dataplane::control::{Command, FlowFilter};
use holdfast_dataplane::run::Commander;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Response, Server};

use super::{status_json, ReloadRequest, View};
use crate::replay::flow_json;

/// Most flows one `/flows` request returns.
pub const MAX_FLOWS: usize = 1_000_000;

pub struct Endpoint {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn start(
        addr: SocketAddr,
        view: Arc<RwLock<View>>,
        commander: Commander,
        reload: crossbeam_channel::Sender<ReloadRequest>,
    ) -> Result<Endpoint, String> {
        let server = Server::http(addr).map_err(|e| format!("control.listen {addr}: {e}"))?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("holdfast-http".into())
            .spawn(move || {
                while !s2.load(Relaxed) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) else { continue };
                    handle(req, &view, &commander, &reload);
                }
            })
            .map_err(|e| format!("starting the HTTP endpoint: {e}"))?;
        Ok(Endpoint { stop, thread: Some(thread), addr })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
}

fn text(code: u16, ctype: &str, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body).with_status_code(code).with_header(header("Content-Type", ctype))
}

fn handle(mut req: tiny_http::Request, view: &RwLock<View>, commander: &Commander, reload: &crossbeam_channel::Sender<ReloadRequest>) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let snapshot = || view.read().map(|v| v.clone()).unwrap_or_else(|p| p.into_inner().clone());
    let resp = match (req.method(), path) {
        (Method::Get, "/metrics") => text(200, "text/plain; version=0.0.4; charset=utf-8", super::metrics::encode(&snapshot())),
        (Method::Get, "/status") => text(200, "application/json", status_json(&snapshot()).to_string() + "\n"),
        (Method::Get, "/flows") => match parse_query(query) {
            Ok((filter, limit)) => match flows(commander, filter, limit) {
                Ok(lines) => text(200, "application/x-ndjson", lines),
                Err(e) => text(503, "text/plain", e + "\n"),
            },
            Err(e) => text(400, "text/plain", e + "\n"),
        },
        (Method::Post, "/reload") => {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            let (tx, rx) = crossbeam_channel::bounded(1);
            if reload.send(ReloadRequest { reply: tx }).is_err() {
                text(503, "text/plain", "the appliance is stopping\n".into())
            } else {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(Ok(v)) => text(200, "application/json", v.to_string() + "\n"),
                    Ok(Err(e)) => text(422, "application/json", json!({"ok": false, "error": e}).to_string() + "\n"),
                    Err(_) => text(504, "text/plain", "no answer from the control loop\n".into()),
                }
            }
        }
        (_, "/metrics" | "/status" | "/flows") => text(405, "text/plain", "use GET\n".into()),
        (_, "/reload") => text(405, "text/plain", "use POST\n".into()),
        _ => text(404, "text/plain", "not found: try /metrics, /status, /flows or POST /reload\n".into()),
    };
    let _ = req.respond(resp);
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `limit=N&src=…&dst=…&port=…&state=…&proto=…`.
pub fn parse_query(q: &str) -> Result<(FlowFilter, usize), String> {
    let mut f = FlowFilter::default();
    let mut limit = 1000;
    for kv in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = unescape(v);
        let addr = |v: &str| v.parse::<IpAddr>().map_err(|_| format!("{k}={v}: not an IP address"));
        match k {
            "limit" => limit = v.parse::<usize>().map_err(|_| format!("limit={v}: not a number"))?.min(MAX_FLOWS),
            "src" => f.src = Some(addr(&v)?),
            "dst" => f.dst = Some(addr(&v)?),
            "port" => f.port = Some(v.parse().map_err(|_| format!("port={v}: not a port"))?),
            "state" => f.state = Some(v),
            "proto" => {
                f.proto = Some(match v.to_ascii_lowercase().as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    "icmp" => 1,
                    "icmpv6" => 58,
                    n => n.parse().map_err(|_| format!("proto={v}: tcp, udp, icmp, icmpv6 or a number"))?,
                })
            }
            _ => return Err(format!("unknown parameter {k:?}: limit, src, dst, port, state, proto")),
        }
    }
    Ok((f, limit))
}

/// Asks every worker for its matching flows (each walks its table a slice at a time,
/// between bursts) and returns JSON lines, in the shape of `replay --flows-out`.
fn flows(commander: &Commander, filter: FlowFilter, limit: usize) -> Result<String, String> {
    let mut waits = Vec::new();
    for w in 0..commander.workers() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !commander.send(w, Command::Flows { filter: filter.clone(), limit, reply: tx }) {
            return Err(format!("worker {w} is busy or stopped; try again"));
        }
        waits.push(rx);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = String::new();
    let mut n = 0;
    for (w, rx) in waits.into_iter().enumerate() {
        let flows = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).map_err(|_| format!("worker {w} did not answer"))?;
        for f in flows {
            if n >= limit {
                break;
            }
            let mut v: Value = flow_json(&f);
            v["worker"] = json!(w);
            out.push_str(&v.to_string());
            out.push('\n');
            n += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_queries_parse_and_bad_ones_say_why() {
        let (f, n) = parse_query("limit=5&src=10.0.1.1&dst=10.0.2.3&port=80&state=established&proto=tcp").unwrap();
        assert_eq!(n, 5);
        assert_eq!(f.src, Some("10.0.1.1".parse().unwrap()));
        assert_eq!((f.port, f.proto, f.state.as_deref()), (Some(80), Some(6), Some("established")));
        let (f, n) = parse_query("src=2001%3Adb8%3A%3A1").unwrap();
        assert_eq!((f.src, n), (Some("2001:db8::1".parse().unwrap()), 1000));
        assert!(parse_query("src=nope").unwrap_err().contains("not an IP address"));
        assert!(parse_query("colour=red").unwrap_err().contains("unknown parameter"));
        assert_eq!(parse_query("limit=99999999").unwrap().1, MAX_FLOWS);
    }
}
