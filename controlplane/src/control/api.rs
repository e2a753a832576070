//! What the endpoint answers: the routes (`/metrics`, `/status`, `/flows`, `POST
//! /reload`, `POST /snapshot`), who may ask for what (a bearer token, or loopback), the flow query, and
//! the listing streamed from the workers' chunks. The connections, limits and timeouts
//! that carry it are in `http`.
//!
//! Access: `/metrics` and `/status` are read-only aggregates, open to whoever reaches
//! the socket (`/status` without its top sources' addresses, unless the caller may
//! list flows). `/flows` (it reveals who talks to whom) and the POSTs need the bearer
//! token of `control.token_file` when one is set; without one they answer only peers
//! on the loopback interface whose socket root or the appliance's own user owns (the
//! kernel says whose, `peer`), as `conntrack -L` needs privilege.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast_dataplane::control::{Command, FlowFilter, FlowsReply};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use holdfast_dataplane::run::Commander;
use holdfast_pipeline::engine::SyncedFlow;

use super::view::HttpStats;
use super::{ReloadRequest, SnapshotRequest, TakeoverRequest, View, status_json};
use crate::replay::flow_json;

/// How long a listing waits for a worker's next chunk before giving up on it.
const WORKER_ANSWER: Duration = Duration::from_secs(10);
/// How long `POST /reload` waits for the control loop.
const RELOAD_ANSWER: Duration = Duration::from_secs(30);
/// How long `POST /snapshot` waits for the snapshot to be written.
const SNAPSHOT_ANSWER: Duration = Duration::from_secs(50);

/// Most flows one `/flows` request returns.
pub const MAX_FLOWS: usize = 1_000_000;

/// Flow listings written at once; one more is refused (503). Each holds what its reader
/// has not taken yet — for `/flows/external`, a copy of up to [`MAX_FLOWS`] synced
/// flows (~80 MB) — and each `/flows` is a walk queued on every worker: without a
/// bound, a few hundred slow readers (the endpoint takes 512 connections) held tens
/// of gigabytes, and filled the workers' command queues so that a reload was refused.
pub const MAX_LISTINGS: u64 = 4;

/// One of the [`MAX_LISTINGS`] places, given back when the listing's writer ends.
struct Listing(Arc<HttpStats>);

impl Listing {
    /// A place, or `None` (counted) when every place is taken.
    fn take(stats: &Arc<HttpStats>) -> Option<Listing> {
        let took = stats.listings.fetch_update(Relaxed, Relaxed, |n| (n < MAX_LISTINGS).then_some(n + 1)).is_ok();
        if !took {
            stats.listings_refused.fetch_add(1, Relaxed);
        }
        took.then(|| Listing(Arc::clone(stats)))
    }

    /// The answer when there was none.
    fn refused() -> Response<Body> {
        plain(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_LISTINGS} flow listings are being written now, the most at once; try again when one is done"))
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        self.0.listings.fetch_sub(1, Relaxed);
    }
}

/// A request body, in bytes. Only `POST /reload` reads one, and ignores it.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Time to send the whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The bearer token `/flows` and `/reload` require (`control.token_file`), shared
/// with the control loop, which re-reads the file on reload.
pub type Token = Arc<RwLock<Option<String>>>;

pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(super) struct Shared {
    pub(super) view: Arc<RwLock<View>>,
    pub(super) commander: Commander,
    pub(super) reload: crossbeam_channel::Sender<ReloadRequest>,
    pub(super) snapshot: crossbeam_channel::Sender<SnapshotRequest>,
    pub(super) takeover: crossbeam_channel::Sender<TakeoverRequest>,
    pub(super) token: Token,
    pub(super) stats: Arc<HttpStats>,
    pub(super) epoch: Instant,
}

/// A response body fed by a channel: a flow listing, line by line.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn text(code: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn plain(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    text(code, "text/plain; charset=utf-8", msg.into() + "\n")
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, format!("use {}", allow.replace(", ", " or ")));
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn read_view(view: &RwLock<View>) -> View {
    view.read().map(|v| v.clone()).unwrap_or_else(|p| p.into_inner().clone())
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request for `path` from `peer`, with this `Authorization` header, may see
/// flows or change anything: with a configured `token`, only if it carries it; without
/// one, only from loopback, and there only from a socket owned by root or by the
/// appliance's own user (`local_user` tells the owner; it is asked only then). The
/// refusal's status and words otherwise.
pub fn decide(
    token: Option<&str>,
    authorization: Option<&str>,
    peer: IpAddr,
    path: &str,
    local_user: impl FnOnce() -> Result<u32, String>,
) -> Result<(), (StatusCode, String)> {
    match token {
        // The scheme is case-insensitive (RFC 9110, 11.1).
        Some(t) => {
            match authorization.and_then(|h| h.trim_start().split_once(' ')).filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, k)| k.trim())
            {
                Some(g) if same(g.as_bytes(), t.as_bytes()) => Ok(()),
                Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong token: send the contents of control.token_file as `Authorization: Bearer <token>`".into())),
                None => Err((
                    StatusCode::UNAUTHORIZED,
                    "this needs the token of control.token_file as `Authorization: Bearer <token>` (holdfast's commands send it with --config or --token-file)"
                        .into(),
                )),
            }
        }
        None if peer.to_canonical().is_loopback() => match local_user() {
            Ok(uid) if uid == 0 || uid == holdfast_dataplane::sys::euid() => Ok(()),
            Ok(uid) => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "{path} from uid {uid} on this host: without control.token_file only root and the appliance's own user may ask; set one on the appliance"
                ),
            )),
            Err(why) => Err((
                StatusCode::FORBIDDEN,
                format!("{path}: who asks on this host cannot be told ({why}), so it is refused; set control.token_file on the appliance"),
            )),
        },
        None => Err((StatusCode::FORBIDDEN, format!("{path} from another host ({peer}) needs a token: set control.token_file on the appliance"))),
    }
}

/// [`decide`] for this request, about `what` (its path, or what it would see).
fn check(req: &Request<Incoming>, ends: Ends, sh: &Shared, what: &str) -> Result<(), (StatusCode, String)> {
    let token = sh.token.read().map(|t| t.clone()).unwrap_or_else(|p| p.into_inner().clone());
    let header = req.headers().get(AUTHORIZATION).and_then(|h| h.to_str().ok());
    let local_user = || ends.local.ok_or_else(|| "the endpoint's own address is unknown".to_string()).and_then(|l| super::peer::owner(ends.peer, l));
    decide(token.as_deref(), header, ends.peer.ip(), what, local_user)
}

/// Takes the top sources' addresses out of a `/status` answer (its total and every
/// worker), saying why; their count and the ports stay.
fn hide_sources(status: &mut Value, why: &str) {
    let hidden = json!(format!("hidden: {why}"));
    let hide = |h: &mut Value| {
        if h.get("sources").is_some() {
            h["sources"] = Value::Null;
            h["sources_hidden"] = hidden.clone();
        }
    };
    hide(&mut status["total"]["holders"]);
    if let Some(ws) = status["workers"].as_array_mut() {
        for w in ws {
            hide(&mut w["holders"]);
        }
    }
}

fn authorize(req: &Request<Incoming>, ends: Ends, sh: &Shared) -> Result<(), Box<Response<Body>>> {
    check(req, ends, sh, req.uri().path()).map_err(|(code, msg)| {
        sh.stats.unauthorized.fetch_add(1, Relaxed);
        let mut r = plain(code, msg);
        if code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"holdfast\""));
        }
        Box::new(r)
    })
}

/// A connection's two ends: the client's address, and the endpoint's own (to ask the
/// kernel who owns the client's socket; `None` if it could not be read).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ends {
    pub(super) peer: SocketAddr,
    pub(super) local: Option<SocketAddr>,
}

pub(super) async fn handle(req: Request<Incoming>, ends: Ends, sh: &Shared) -> Response<Body> {
    sh.stats.requests.fetch_add(1, Relaxed);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match path.as_str() {
        "/metrics" if get => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", super::metrics::encode(&read_view(&sh.view))),
        "/status" if get => {
            let mut v = status_json(&read_view(&sh.view));
            // The table's top sources are addresses, as a listing's are: shown to whom
            // a listing is, the rest of the status to anyone.
            if let Err((_, why)) = check(&req, ends, sh, "the top sources' addresses") {
                hide_sources(&mut v, &why);
            }
            text(StatusCode::OK, "application/json", v.to_string() + "\n")
        }
        "/flows" if get => {
            if let Err(r) = authorize(&req, ends, sh) {
                return *r;
            }
            match parse_query(&query) {
                Ok((filter, limit)) => flows(sh, filter, limit),
                Err(e) => plain(StatusCode::BAD_REQUEST, e),
            }
        }
        "/flows/external" if get => {
            if let Err(r) = authorize(&req, ends, sh) {
                return *r;
            }
            external(sh, &query)
        }
        "/reload" | "/snapshot" | "/takeover" | "/resync" if *req.method() == Method::POST => {
            if let Err(r) = authorize(&req, ends, sh) {
                return *r;
            }
            // The body is not used; it is read (bounded in size and time) so that a
            // client cannot hold the request open by promising one.
            match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), BODY_LIMIT).collect()).await {
                Err(_) => {
                    sh.stats.bad_bodies.fetch_add(1, Relaxed);
                    return plain(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()));
                }
                Ok(Err(_)) => {
                    sh.stats.bad_bodies.fetch_add(1, Relaxed);
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, format!("POST {path} takes no body (at most {BODY_LIMIT} bytes are read)"));
                }
                Ok(Ok(_)) => {}
            }
            match path.as_str() {
                "/reload" => reload(sh).await,
                "/snapshot" => snapshot(sh).await,
                "/resync" => takeover(sh, true).await,
                _ => takeover(sh, false).await,
            }
        }
        "/metrics" | "/status" | "/flows" => method_not_allowed("GET, HEAD"),
        "/reload" | "/snapshot" | "/takeover" | "/resync" => method_not_allowed("POST"),
        "/flows/external" => method_not_allowed("GET, HEAD"),
        _ => plain(
            StatusCode::NOT_FOUND,
            format!("not found: {path}; try GET /metrics, /status, /flows, /flows/external or POST /reload, /snapshot, /takeover, /resync"),
        ),
    }
}

/// Why no reply came.
enum NoReply {
    /// The other side dropped its sender (stopped).
    Gone,
    TimedOut,
}

/// Waits for a crossbeam reply without blocking the runtime.
async fn poll_recv<T>(rx: &crossbeam_channel::Receiver<T>, timeout: Duration) -> Result<T, NoReply> {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(NoReply::Gone),
            Err(crossbeam_channel::TryRecvError::Empty) if Instant::now() >= deadline => return Err(NoReply::TimedOut),
            Err(crossbeam_channel::TryRecvError::Empty) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn reload(sh: &Shared) -> Response<Body> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if sh.reload.send(ReloadRequest { reply: tx }).is_err() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "the appliance is stopping");
    }
    match poll_recv(&rx, RELOAD_ANSWER).await {
        Ok(Ok(v)) => text(StatusCode::OK, "application/json", v.to_string() + "\n"),
        Ok(Err(e)) => text(StatusCode::UNPROCESSABLE_ENTITY, "application/json", json!({"ok": false, "error": e}).to_string() + "\n"),
        Err(_) => plain(StatusCode::GATEWAY_TIMEOUT, "no answer from the control loop"),
    }
}

/// How long `POST /takeover` waits for the commit.
const TAKEOVER_ANSWER: Duration = Duration::from_secs(50);

async fn takeover(sh: &Shared, resync: bool) -> Response<Body> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if sh.takeover.try_send(TakeoverRequest { resync, reply: tx }).is_err() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "a takeover is already waiting, or the appliance is stopping");
    }
    match poll_recv(&rx, TAKEOVER_ANSWER).await {
        Ok(Ok(v)) => text(StatusCode::OK, "application/json", json!({"ok": true, "takeover": v}).to_string() + "\n"),
        Ok(Err(e)) => text(StatusCode::CONFLICT, "application/json", json!({"ok": false, "error": e}).to_string() + "\n"),
        Err(_) => plain(StatusCode::GATEWAY_TIMEOUT, "no answer from the control loop"),
    }
}

/// `/flows/external?limit=N`: what the sync peer sent, as `holdfast flows` lines.
///
/// The flows are copied under the sync status lock and written out after it, a chunk
/// at a time as the reader takes them: the sync thread takes that lock for every
/// datagram it reads, and this thread serves every other request. Writing a million
/// lines under the lock held both for 1.2 s (the standby's `/metrics` answered in
/// 1.24 s instead of 0.7 ms during such a listing).
fn external(sh: &Shared, query: &str) -> Response<Body> {
    let mut limit = 1000usize;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match (k.as_ref(), v.parse::<usize>()) {
            ("limit", Ok(n)) if n <= MAX_FLOWS => limit = n,
            ("limit", _) => return plain(StatusCode::BAD_REQUEST, format!("limit={v}: a count up to {MAX_FLOWS}")),
            (k, _) => return plain(StatusCode::BAD_REQUEST, format!("unknown parameter {k:?}: limit")),
        }
    }
    let Some(status) = read_view(&sh.view).external else {
        return plain(StatusCode::NOT_FOUND, "sync: is not configured: there is no external cache");
    };
    let Some(place) = Listing::take(&sh.stats) else {
        return Listing::refused();
    };
    let now = Instant::now();
    let flows: Vec<(SyncedFlow, u32)> = {
        let s = status.lock().unwrap_or_else(|p| p.into_inner());
        s.cache.values().take(limit).map(|c| (c.flow, c.left(now))).collect()
    };
    let (mut lines, body) = Lines::new();
    tokio::task::spawn_blocking(move || {
        let _place = place;
        for (f, left) in &flows {
            if !lines.push(&crate::sync::endpoint::flow_json(f, *left)) {
                return;
            }
        }
        lines.finish();
    });
    body
}

/// A response of JSON lines, sent in chunks of about 60 KiB as the reader takes them.
/// Written on a blocking thread (`spawn_blocking`), not on the endpoint's one runtime
/// thread: there a listing's serializing left other requests waiting for the I/O
/// driver, which a busy current-thread runtime polls once every 61 task polls
/// (`/metrics` took 60–120 ms during a 681k-line listing).
struct Lines {
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
}

impl Lines {
    /// The writer, and the response its lines go to.
    fn new() -> (Lines, Response<Body>) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let mut r = Response::new(ChannelBody(rx).boxed_unsync());
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        (Lines { buf: Vec::with_capacity(64 * 1024), tx }, r)
    }

    /// Adds a line, waiting while the reader has four chunks not yet taken; `false`
    /// when the reader went away.
    fn push(&mut self, v: &Value) -> bool {
        let _ = serde_json::to_writer(&mut self.buf, v);
        self.buf.push(b'\n');
        self.buf.len() < 60 * 1024 || self.tx.blocking_send(Bytes::from(std::mem::take(&mut self.buf))).is_ok()
    }

    /// Sends what is left.
    fn finish(self) {
        if !self.buf.is_empty() {
            let _ = self.tx.blocking_send(Bytes::from(self.buf));
        }
    }
}

async fn snapshot(sh: &Shared) -> Response<Body> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    match sh.snapshot.try_send(SnapshotRequest { reply: tx }) {
        Ok(()) => {}
        Err(crossbeam_channel::TrySendError::Full(_)) => return plain(StatusCode::SERVICE_UNAVAILABLE, "too many snapshot requests waiting"),
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => return plain(StatusCode::SERVICE_UNAVAILABLE, "the appliance is stopping"),
    }
    match poll_recv(&rx, SNAPSHOT_ANSWER).await {
        Ok(Ok(v)) => text(StatusCode::OK, "application/json", json!({"ok": true, "written": v}).to_string() + "\n"),
        Ok(Err(e)) => text(StatusCode::CONFLICT, "application/json", json!({"ok": false, "error": e}).to_string() + "\n"),
        Err(_) => plain(StatusCode::GATEWAY_TIMEOUT, "no answer from the snapshot writer"),
    }
}

/// `limit=N&src=…&dst=…&port=…&state=…&proto=…`.
pub fn parse_query(q: &str) -> Result<(FlowFilter, usize), String> {
    let mut f = FlowFilter::default();
    let mut limit = 1000;
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        let (k, v) = (k.as_ref(), v.into_owned());
        let addr = |v: &str| v.parse::<IpAddr>().map_err(|_| format!("{k}={v}: not an IP address"));
        match k {
            "limit" => {
                limit = match v.parse::<u64>() {
                    Ok(n) => usize::try_from(n).unwrap_or(MAX_FLOWS).min(MAX_FLOWS),
                    Err(_) if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) => MAX_FLOWS,
                    Err(_) => return Err(format!("limit={v}: a whole number of flows, 1 to {MAX_FLOWS} (larger is cut to {MAX_FLOWS})")),
                }
            }
            "src" => f.src = Some(addr(&v)?),
            "dst" => f.dst = Some(addr(&v)?),
            "port" => f.port = Some(v.parse().map_err(|_| format!("port={v}: a port number, 0 to 65535"))?),
            "state" => f.state = Some(v),
            "proto" => {
                f.proto = Some(match v.to_ascii_lowercase().as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    "icmp" => 1,
                    "icmpv6" => 58,
                    n => n.parse().map_err(|_| format!("proto={v}: tcp, udp, icmp, icmpv6 or a protocol number, 0 to 255"))?,
                })
            }
            _ => return Err(format!("unknown parameter {k:?}: limit, src, dst, port, state, proto")),
        }
    }
    Ok((f, limit))
}

/// Asks every worker for its matching flows (each walks its table a slice at a time,
/// between bursts) and streams them as JSON lines in the shape of `replay
/// --flows-out`, plus `worker`. A worker that stalls mid-listing ends it with a line
/// `{"error": …}`.
fn flows(sh: &Shared, filter: FlowFilter, limit: usize) -> Response<Body> {
    let stalled = read_view(&sh.view).stalled;
    if let Some(w) = stalled.first() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, format!("worker {w} is stalled (no heartbeat): a listing would wait for it; see /status"));
    }
    let Some(place) = Listing::take(&sh.stats) else {
        return Listing::refused();
    };
    let mut waits = Vec::new();
    for w in 0..sh.commander.workers() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        if !sh.commander.send(w, Command::Flows { filter: filter.clone(), limit, reply: tx }) {
            return plain(StatusCode::SERVICE_UNAVAILABLE, format!("worker {w} is busy or stopped; try again"));
        }
        waits.push(rx);
    }
    let (mut lines, body) = Lines::new();
    tokio::task::spawn_blocking(move || {
        let _place = place;
        let mut n = 0;
        for (w, rx) in waits.into_iter().enumerate() {
            loop {
                if n >= limit {
                    break;
                }
                match rx.recv_timeout(WORKER_ANSWER) {
                    Ok(FlowsReply::Chunk(list)) => {
                        for f in list.iter().take(limit - n) {
                            let mut v: Value = flow_json(f);
                            v["worker"] = json!(w);
                            n += 1;
                            if !lines.push(&v) {
                                return; // the client went away; dropping the receivers ends the walks
                            }
                        }
                    }
                    Ok(FlowsReply::Done) => break,
                    Err(why) => {
                        let msg = match why {
                            crossbeam_channel::RecvTimeoutError::Disconnected => "stopped".to_string(),
                            crossbeam_channel::RecvTimeoutError::Timeout => format!("did not answer within {} s", WORKER_ANSWER.as_secs()),
                        };
                        let _ = lines.push(&json!({"error": format!("worker {w} {msg}; the listing is incomplete")}));
                        lines.finish();
                        return;
                    }
                }
            }
        }
        lines.finish();
    });
    body
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
        // A number too large for any integer type is still a number: cut to the maximum.
        assert_eq!(parse_query("limit=99999999999999999999999999").unwrap().1, MAX_FLOWS);
        assert!(parse_query("limit=-1").unwrap_err().contains("a whole number"));
        assert!(parse_query("port=70000").unwrap_err().contains("0 to 65535"));
    }

    #[test]
    fn flows_and_reload_need_the_token_or_a_privileged_local_user() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let far: IpAddr = "192.0.2.9".parse().unwrap();
        let me = holdfast_dataplane::sys::euid();
        let root = || Ok(0);
        assert!(decide(None, None, lo, "/flows", root).is_ok());
        assert!(decide(None, None, lo6, "/flows", root).is_ok());
        assert!(decide(None, None, lo, "/flows", || Ok(me)).is_ok(), "the appliance's own user");
        let other = if me == 4242 { 4243 } else { 4242 };
        let (code, msg) = decide(None, None, lo, "/takeover", || Ok(other)).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(msg.contains(&format!("uid {other}")) && msg.contains("control.token_file"), "{msg}");
        let (code, msg) = decide(None, None, lo, "/reload", || Err("its socket is gone".into())).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN, "who asks cannot be told: refused");
        assert!(msg.contains("its socket is gone"), "{msg}");
        let (code, msg) = decide(None, None, far, "/reload", || panic!("another host's owner is never asked")).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(msg.contains("control.token_file"), "{msg}");
        let t = Some("0123456789abcdef");
        assert_eq!(decide(t, None, lo, "/flows", root).unwrap_err().0, StatusCode::UNAUTHORIZED, "a token binds root on loopback too");
        assert_eq!(decide(t, Some("Bearer nope"), far, "/flows", root).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(decide(t, Some("Basic 0123456789abcdef"), far, "/flows", root).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(decide(t, Some("Bearer 0123456789abcdef"), far, "/flows", || Ok(other)).is_ok(), "the token opens it to anyone");
        assert!(decide(t, Some("bearer  0123456789abcdef"), far, "/flows", root).is_ok(), "the scheme in any case");
        assert_eq!(decide(t, Some("Bearer0123456789abcdef"), far, "/flows", root).unwrap_err().0, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn tokens_compare_in_full() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
