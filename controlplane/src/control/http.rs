//! The HTTP endpoint on `control.listen`: `/metrics`, `/status`, `/flows`, and
//! `POST /reload`, over HTTP/1.1 (and HTTP/1.0) or HTTP/2 without TLS.
//!
//! hyper on a current-thread tokio runtime of its own thread: nothing here touches a
//! worker except through the workers' bounded command queues, polled without ever
//! blocking a worker. Every resource a client can hold is bounded:
//!
//! - request headers: [`HEADER_LIMIT`] bytes (larger: 431), [`HEADER_TIMEOUT`] to send them;
//! - request bodies: [`BODY_LIMIT`] bytes (larger: 413), [`BODY_TIMEOUT`] to send them (408);
//! - connections: at most [`MAX_CONNECTIONS`]; one more evicts the connection that has
//!   been quiet the longest; a connection quiet for [`IDLE_TIMEOUT`] (nothing read or
//!   written, a response the client does not read included) is closed;
//! - a flow listing streams the workers' chunks through bounded channels, so its memory
//!   does not grow with the table; at most [`MAX_LISTINGS`] are written at once (one
//!   more: 503), as an external listing holds a copy of the flows it lists.
//!
//! Accept errors (a full descriptor table) are counted and logged, never fatal; a
//! panic in one request ends that connection only.
//!
//! What each request gets, and who may ask for what, is in `api`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use holdfast_dataplane::run::Commander;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};

use super::api::Shared;
pub use super::api::{BODY_LIMIT, BODY_TIMEOUT, MAX_FLOWS, MAX_LISTINGS, Token};
pub use super::view::HttpStats;
use super::{ReloadRequest, SnapshotRequest, TakeoverRequest, View};

/// Where the endpoint sends what the control loop must do.
pub struct Requests {
    pub reload: crossbeam_channel::Sender<ReloadRequest>,
    pub snapshot: crossbeam_channel::Sender<SnapshotRequest>,
    pub takeover: crossbeam_channel::Sender<TakeoverRequest>,
}

/// Most connections open at once; one more evicts the quietest.
pub const MAX_CONNECTIONS: usize = 512;
/// Request line and headers, in bytes (hyper's read buffer; larger gets 431).
pub const HEADER_LIMIT: usize = 16 * 1024;
/// Time to send the whole request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with nothing read or written for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Endpoint {
    stop: watch::Sender<bool>,
    thread: Option<crate::helper::Helper>,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` (errors name `control.listen`) and serves on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        view: Arc<RwLock<View>>,
        commander: Commander,
        requests: Requests,
        token: Token,
        stats: Arc<HttpStats>,
    ) -> Result<Endpoint, EndpointError> {
        let fail = |source| EndpointError::Listen { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        let addr = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            view,
            commander,
            reload: requests.reload,
            snapshot: requests.snapshot,
            takeover: requests.takeover,
            token,
            stats,
            epoch: Instant::now(),
        });
        let thread = std::thread::Builder::new()
            .name("holdfast-http".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        crate::logln!("holdfast: the control endpoint could not start its runtime: {e}; /metrics and the control commands are unavailable");
                        return;
                    }
                };
                rt.block_on(serve(listener, shared, stopped));
                // Closes every connection still open. A listing's writer (a blocking
                // thread) ends at its next line once its reader is gone, or within
                // a worker's answer time; stopping does not wait for that.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(EndpointError::Thread)?;
        Ok(Endpoint { stop, thread: Some(crate::helper::Helper::new(thread)), addr })
    }

    /// Why the endpoint's thread ended, if it has (it should run until [`Self::stop`]).
    pub fn ended(&mut self) -> Option<&str> {
        self.thread.as_mut().and_then(|t| t.ended())
    }

    /// Stops accepting, closes every connection, joins the thread (bounded: the
    /// connections' tasks are dropped, not awaited).
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// Why the endpoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("control.listen {addr}: cannot listen: {source}{}", bind_hint(.source))]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the HTTP endpoint: {0}")]
    Thread(#[source] std::io::Error),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => " (another process uses this port: is holdfast already running?)",
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this machine has that address)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        _ => "",
    }
}

/// One open connection, as the eviction policy sees it.
struct Conn {
    /// Milliseconds since `Shared::epoch` of the last byte read or written.
    last: Arc<AtomicU64>,
    close: Arc<Notify>,
}

async fn serve(listener: std::net::TcpListener, sh: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::logln!("holdfast: the control endpoint could not register its socket: {e}");
            return;
        }
    };
    let conns: Arc<Mutex<HashMap<u64, Conn>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut next_id = 0u64;
    let mut last_accept_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            a = listener.accept() => a,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: count, say so (at most every 10 s), wait a
                // moment for descriptors to come back, and go on accepting.
                sh.stats.accept_errors.fetch_add(1, Relaxed);
                if last_accept_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    crate::logln!("holdfast: control endpoint: accept failed: {e} (open connections: {}); still serving", sh.stats.open.load(Relaxed));
                    last_accept_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let now = sh.epoch.elapsed().as_millis() as u64;
        let conn = Conn { last: Arc::new(AtomicU64::new(now)), close: Arc::new(Notify::new()) };
        let (last, close) = (Arc::clone(&conn.last), Arc::clone(&conn.close));
        {
            let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_CONNECTIONS
                && let Some((&victim, _)) = map.iter().min_by_key(|(_, c)| c.last.load(Relaxed))
                && let Some(v) = map.remove(&victim)
            {
                v.close.notify_one();
                sh.stats.evicted.fetch_add(1, Relaxed);
            }
            map.insert(next_id, conn);
        }
        let id = next_id;
        next_id += 1;
        let (sh2, conns2) = (Arc::clone(&sh), Arc::clone(&conns));
        sh.stats.open.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            connection(sock, peer, Arc::clone(&sh2), last, close).await;
            conns2.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            sh2.stats.open.fetch_sub(1, Relaxed);
        });
    }
}

async fn connection(sock: tokio::net::TcpStream, peer: SocketAddr, sh: Arc<Shared>, last: Arc<AtomicU64>, close: Arc<Notify>) {
    let ends = super::api::Ends { peer, local: sock.local_addr().ok() };
    let io = TokioIo::new(Tracked { inner: sock, last: Arc::clone(&last), epoch: sh.epoch });
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(HEADER_LIMIT).max_headers(64).keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEADER_LIMIT as u32)
        .max_concurrent_streams(16)
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .keep_alive_timeout(Duration::from_secs(10));
    let sh2 = Arc::clone(&sh);
    let service = hyper::service::service_fn(move |req| {
        let sh = Arc::clone(&sh2);
        async move { Ok::<_, Infallible>(super::api::handle(req, ends, &sh).await) }
    });
    let conn = b.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = close.notified() => {
                // Evicted: no goodbye, the slot is someone else's now.
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let quiet = (sh.epoch.elapsed().as_millis() as u64).saturating_sub(last.load(Relaxed));
                if let Some(t) = closing {
                    // A graceful close waits for the response in flight; not forever.
                    if t.elapsed() >= Duration::from_secs(2) {
                        return;
                    }
                } else if quiet >= IDLE_TIMEOUT.as_millis() as u64 {
                    sh.stats.idle_closed.fetch_add(1, Relaxed);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
        }
    }
}

/// A socket that remembers when it last moved a byte either way.
struct Tracked {
    inner: tokio::net::TcpStream,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
