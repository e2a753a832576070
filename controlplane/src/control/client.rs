//! `holdfast status | flows | top | reload`: the command line against a running
//! appliance, over its HTTP endpoint (plain HTTP/1.0 on a local socket).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// A running appliance's endpoint, and the token its `/flows` and `/reload` want.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub token: Option<String>,
}

impl Target {
    pub fn new(addr: impl Into<String>) -> Target {
        Target { addr: addr.into(), token: None }
    }
}

/// Why a request to the endpoint did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no address")]
    NoAddress { addr: String },
    #[error("cannot reach holdfast at {addr}: {source} (is it running, with control.listen: {addr}?)")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {what}")]
    NotHttp { addr: String, what: &'static str },
    #[error("{addr}: the answer to {path} was cut short (did holdfast stop?)")]
    CutShort { addr: String, path: String },
    #[error("{path}: HTTP {code}: {body}")]
    Status { path: String, code: u16, body: String },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The appliance answered, and said why it could not (a listing cut short, a
    /// reload rejected).
    #[error("{path}: {message}")]
    Refused { path: String, message: String },
    #[error("reload accepted as generation {0}, but not every worker reports it (with its pass over the table done) after {secs} s", secs = RELOAD_WAIT.as_secs())]
    NotApplied(u64),
}

/// Largest answer read whole (`/status`, a reload's answer, the external cache's
/// listing): listings of the tables are read a line at a time instead.
const MAX_ANSWER: u64 = 1 << 30;
/// Longest line of a streamed listing (a flow's JSON is ~300 bytes).
const MAX_LINE: u64 = 64 * 1024;
/// Longest answer head, and longest chunk-size line.
const MAX_HEAD: u64 = 64 * 1024;

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// `Transfer-Encoding: chunked`: this much left of the chunk being read (0: a
    /// size line next, after the CRLF that ends the previous chunk if `after`).
    Chunked { left: u64, after: bool },
    /// `Content-Length`: this much left.
    Length { left: u64 },
    /// Neither: the body ends when the connection does.
    Close,
    /// The last chunk, or the whole length, was read.
    Done,
}

/// An answer's body, read as it arrives: chunked encoding undone on the fly, so a
/// listing of a million flows never sits in memory whole. A body that ends before
/// its framing says it is done reads as the error `UnexpectedEof` ("cut short").
pub struct Answer {
    r: std::io::BufReader<TcpStream>,
    framing: Framing,
}

fn cut(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string())
}

impl Answer {
    /// Reads a chunk's size line, after the previous chunk's CRLF if `after`.
    fn size_line(&mut self, after: bool) -> std::io::Result<u64> {
        use std::io::BufRead;
        let mut line = Vec::new();
        if after {
            (&mut self.r).take(2).read_to_end(&mut line)?;
            match line.as_slice() {
                b"\r\n" => line.clear(),
                l if l.len() < 2 => return Err(cut("a chunk cut short")),
                _ => return Err(std::io::Error::other("a chunk longer than its size")),
            }
        }
        (&mut self.r).take(MAX_HEAD).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(if line.len() as u64 >= MAX_HEAD { std::io::Error::other("a chunk size line too long") } else { cut("a chunk size cut short") });
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        u64::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| std::io::Error::other(format!("not a chunk size: {text:?}")))
    }

    /// The rest of the body as text, at most `MAX_ANSWER` bytes.
    fn text(mut self) -> std::io::Result<String> {
        let mut b = Vec::new();
        (&mut self).take(MAX_ANSWER).read_to_end(&mut b)?;
        Ok(String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

impl Read for Answer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let left = match self.framing {
                Framing::Done => return Ok(0),
                Framing::Close => return self.r.read(buf),
                Framing::Length { left: 0 } => {
                    self.framing = Framing::Done;
                    continue;
                }
                Framing::Chunked { left: 0, after } => {
                    let size = self.size_line(after)?;
                    self.framing = if size == 0 { Framing::Done } else { Framing::Chunked { left: size, after: true } };
                    continue;
                }
                Framing::Chunked { left, .. } | Framing::Length { left } => left,
            };
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.r.read(&mut buf[..want])?;
            if n == 0 {
                return Err(cut("the answer ended before its framing said"));
            }
            let rest = left - n as u64;
            self.framing = match self.framing {
                Framing::Chunked { after, .. } => Framing::Chunked { left: rest, after },
                _ => Framing::Length { left: rest },
            };
            return Ok(n);
        }
    }
}

/// Sends one request and reads the answer's head; the body is left to read as it
/// arrives.
pub fn open(t: &Target, method: &str, path: &str) -> Result<(u16, Answer), ClientError> {
    use std::io::BufRead;
    let addr = &t.addr;
    let io = |source| ClientError::Io { addr: addr.clone(), source };
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve { addr: addr.clone(), source })?
        .next()
        .ok_or_else(|| ClientError::NoAddress { addr: addr.clone() })?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(|source| ClientError::Connect { addr: addr.clone(), source })?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    let auth = t.token.as_ref().map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n").map_err(io)?;
    let mut r = std::io::BufReader::with_capacity(64 * 1024, s);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let before = head.len();
        (&mut r).take(MAX_HEAD.saturating_sub(before as u64)).read_until(b'\n', &mut head).map_err(io)?;
        if head.len() == before || head.len() as u64 >= MAX_HEAD {
            return Err(ClientError::NotHttp { addr: addr.clone(), what: "not an HTTP answer" });
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| ClientError::NotHttp { addr: addr.clone(), what: "bad status line" })?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
    };
    let framing = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        Framing::Chunked { left: 0, after: false }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
        Framing::Length { left: n }
    } else {
        Framing::Close
    };
    Ok((code, Answer { r, framing }))
}

/// One request; returns the status code and the whole body. An answer cut short (the
/// appliance stopped mid-answer) is an error, not a short answer.
pub fn request(t: &Target, method: &str, path: &str) -> Result<(u16, String), ClientError> {
    let (code, body) = open(t, method, path)?;
    let text = body.text().map_err(|e| read_error(t, path, e))?;
    Ok((code, text))
}

fn read_error(t: &Target, path: &str, e: std::io::Error) -> ClientError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ClientError::CutShort { addr: t.addr.clone(), path: path.to_string() }
    } else {
        ClientError::Io { addr: t.addr.clone(), source: e }
    }
}

fn get_json(addr: &Target, path: &str) -> Result<Value, ClientError> {
    let (code, body) = request(addr, "GET", path)?;
    if code != 200 {
        return Err(ClientError::Status { path: path.to_string(), code, body: body.trim().to_string() });
    }
    serde_json::from_str(&body).map_err(|source| ClientError::Json { path: path.to_string(), source })
}

pub fn status(addr: &Target) -> Result<Value, ClientError> {
    get_json(addr, "/status")
}

fn pct(x: &Value) -> String {
    format!("{:.1}%", 100.0 * x.as_f64().unwrap_or(0.0))
}

fn num(x: &Value) -> f64 {
    x.as_f64().unwrap_or(0.0)
}

fn human_duration(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `/status` for people: what `holdfast status` prints, and each frame of `top`.
/// Who holds the table (`/status`'s `holders`), two lines.
pub fn holders_lines(h: &Value) -> String {
    if h["swept"].as_u64().unwrap_or(0) == 0 {
        return "holders   no sweep of the table finished yet\n".into();
    }
    let list = |k: &str, f: &dyn Fn(&Value) -> String| -> String {
        let v: Vec<String> = h[k].as_array().into_iter().flatten().map(|x| format!("{} {}", f(x), x["entries"])).collect();
        if v.is_empty() { "none".into() } else { v.join("  ") }
    };
    format!(
        "sources   {}\nports     {}\n          (entries held, of {} swept; each at most `error` over)\n",
        // Shown only to whom a listing is (the token, or root on this host).
        h["sources_hidden"].as_str().map_or_else(|| list("sources", &|x| x["source"].as_str().or(x["addr"].as_str()).unwrap_or("?").to_string()), String::from),
        list("ports", &|x| format!("{}/{}", x["proto"].as_str().map_or_else(|| x["proto"].to_string(), String::from), x["port"])),
        h["swept"]
    )
}

pub fn render(v: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "holdfast  generation {}{}  up {}  config {}",
        v["generation"],
        if v["applied_by_all_workers"] == Value::Bool(true) { " (applied by all workers)" } else { " (being applied)" },
        human_duration(num(&v["uptime_s"])),
        v["config"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "          outside {}  inside {}  report every {:.1} s",
        v["interfaces"]["outside"].as_str().unwrap_or("?"),
        v["interfaces"]["inside"].as_str().unwrap_or("?"),
        num(&v["report_interval_s"])
    );
    let _ = writeln!(
        s,
        "\n{:<6} {:>4} {:>10} {:>10} {:>9} {:>6} {:>17} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>9}",
        "worker", "core", "rx pps", "tx pps", "drops/s", "busy", "entries", "fill", "replid", "embry", "unrepl", "closng", "assurd", "full in"
    );
    let row = |s: &mut String, name: String, core: String, c: &Value| {
        let cl = &c["classes"];
        let _ = writeln!(
            s,
            "{:<6} {:>4} {:>10.0} {:>10.0} {:>9.0} {:>6} {:>17} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>9}",
            name,
            core,
            num(&c["rx_pps"]),
            num(&c["tx_pps"]),
            num(&c["drop_pps"]),
            pct(&c["busy"]),
            format!("{}/{}", c["entries"], c["capacity"]),
            pct(&c["table_fill"]),
            pct(&cl["replied"]),
            pct(&cl["embryonic"]),
            pct(&cl["unreplied"]),
            pct(&cl["closing"]),
            pct(&cl["assured"]),
            c["time_to_full_s"].as_f64().map_or("-".to_string(), human_duration),
        );
    };
    for w in v["workers"].as_array().into_iter().flatten() {
        row(&mut s, w["worker"].to_string(), w["core"].as_u64().map_or("-".into(), |c| c.to_string()), w);
    }
    row(&mut s, "total".into(), String::new(), &v["total"]);
    let drops = &v["total"]["drops_per_s"];
    let _ = write!(s, "\ndrops/s   ");
    match drops.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, x) in m {
                let _ = write!(s, "{k} {:.0}  ", num(x));
            }
        }
        _ => s.push_str("none"),
    }
    let t = &v["total"]["counters"];
    let _ = writeln!(
        s,
        "\ntotals    passed {}  dropped {}  reply_denied {}  handoff {} / {}  deny log {} written, {} suppressed",
        t["passed"], t["dropped"], t["reply_denied"], t["handoff_out"], t["handoff_in"], v["deny_log"]["written"], t["log_suppressed"]
    );
    let _ = write!(s, "{}", holders_lines(&v["total"]["holders"]));
    let sat = v["saturation"].as_array().cloned().unwrap_or_default();
    if sat.is_empty() {
        let _ = writeln!(s, "saturation none");
    }
    for e in sat {
        if let Some(d) = e["fault"].as_str() {
            let _ = writeln!(s, "FAULT {} since {}: {d}", e["event"].as_str().unwrap_or("?"), e["since"].as_str().unwrap_or("?"));
            continue;
        }
        let _ = writeln!(
            s,
            "SATURATED {} on worker {} since {}: {:.3} (threshold {})",
            e["event"].as_str().unwrap_or("?"),
            e["worker"],
            e["since"].as_str().unwrap_or("?"),
            num(&e["value"]),
            e["threshold"]
        );
    }
    if let Some(r) = v["last_reload"].as_object() {
        let _ = writeln!(
            s,
            "last reload {} {}",
            if r.get("ok") == Some(&Value::Bool(true)) { "ok" } else { "REJECTED" },
            r.get("at").and_then(|x| x.as_str()).unwrap_or("")
        );
    }
    if let Some(r) = v["restart_needed"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(s, "restart needed for: {}", r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "));
    }
    s
}

/// One flow like a line of `conntrack -L`.
pub fn flow_line(f: &Value) -> String {
    let proto = f["proto"].as_str().map(String::from).unwrap_or_else(|| f["proto"].to_string());
    let mut s = format!("{:<8} {:>7} ", proto, f["expires_in_s"]);
    if proto == "tcp" {
        let _ = write!(s, "{} ", f["state"].as_str().unwrap_or("?"));
    }
    // One direction: `dir` 0 is the original (src -> dst), 1 the reply.
    let tuple = |s: &mut String, dir: usize| {
        let (a, b) = if dir == 0 { ("src", "dst") } else { ("dst", "src") };
        let (pa, pb) = if dir == 0 { ("sport", "dport") } else { ("dport", "sport") };
        let _ = write!(s, "src={} dst={} sport={} dport={} ", f[a].as_str().unwrap_or("?"), f[b].as_str().unwrap_or("?"), f[pa], f[pb]);
        // Without `conntrack.accounting` there are none (as `conntrack -L` without
        // nf_conntrack_acct).
        if !f["packets"].is_null() {
            let _ = write!(s, "packets={} bytes={} ", f["packets"][dir], f["bytes"][dir]);
        }
    };
    tuple(&mut s, 0);
    if f["state"] == "UNREPLIED" || (f["packets"][1] == 0 && proto != "tcp") {
        s.push_str("[UNREPLIED] ");
    }
    tuple(&mut s, 1);
    if f["assured"] == Value::Bool(true) {
        s.push_str("[ASSURED] ");
    }
    let _ = write!(s, "class={} worker={}", f["class"].as_str().unwrap_or("?"), f["worker"]);
    s
}

/// A listing of the tables, handed to `each` a flow at a time as it arrives (a 1M-flow
/// listing is ~220 MB of JSON: holding it whole took ~640 MB). A listing the appliance
/// could not complete (its error line) or that was cut short is an error after the
/// flows before it were handed over: the error says how many that was, and the caller
/// must say it is incomplete.
pub fn flows(addr: &Target, query: &str, each: impl FnMut(Value)) -> Result<u64, ClientError> {
    listing(addr, "/flows", query, each)
}

/// What the sync peer sent (`/flows/external`), as [`flows`] hands it over.
pub fn external(addr: &Target, query: &str, each: impl FnMut(Value)) -> Result<u64, ClientError> {
    listing(addr, "/flows/external", query, each)
}

fn listing(addr: &Target, route: &'static str, query: &str, mut each: impl FnMut(Value)) -> Result<u64, ClientError> {
    use std::io::BufRead;
    let path = || route.to_string();
    let (code, body) = open(addr, "GET", &format!("{route}?{query}"))?;
    if code != 200 {
        let body = body.text().map_err(|e| read_error(addr, route, e))?;
        return Err(ClientError::Status { path: path(), code, body: body.trim().to_string() });
    }
    let mut r = std::io::BufReader::with_capacity(64 * 1024, body);
    let (mut n, mut line) = (0u64, Vec::new());
    loop {
        line.clear();
        let got = (&mut r).take(MAX_LINE).read_until(b'\n', &mut line).map_err(|e| match read_error(addr, route, e) {
            ClientError::CutShort { .. } => {
                ClientError::Refused { path: path(), message: format!("the answer was cut short (did holdfast stop?) after {n} flow(s)") }
            }
            e => e,
        })?;
        if got == 0 {
            return Ok(n);
        }
        if !line.ends_with(b"\n") && got as u64 >= MAX_LINE {
            return Err(ClientError::NotHttp { addr: addr.addr.clone(), what: "a listing line longer than 64 KiB" });
        }
        let v = serde_json::from_slice::<Value>(&line).map_err(|source| ClientError::Json { path: path(), source })?;
        if let Some(e) = v["error"].as_str() {
            return Err(ClientError::Refused { path: path(), message: format!("{e} (after {n} flow(s))") });
        }
        each(v);
        n += 1;
    }
}

/// How long `reload --wait` waits for every worker to run the new generation and finish
/// its pass over the table: the pass is paced (~200 µs a 2 ms round), about half a
/// second per million full entries with a recheck — longer on a busy worker.
pub const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// Asks for a reload; with `wait`, also waits until every worker runs the new
/// generation (and has finished its pass over the table).
pub fn reload(addr: &Target, wait: bool) -> Result<Value, ClientError> {
    let path = || "/reload".to_string();
    let (code, body) = request(addr, "POST", "/reload")?;
    let http_error = || ClientError::Status { path: path(), code, body: body.trim().to_string() };
    if matches!(code, 401 | 403) {
        return Err(http_error());
    }
    let v: Value = serde_json::from_str(&body).map_err(|_| http_error())?;
    if code != 200 {
        return Err(ClientError::Refused { path: path(), message: v["error"].as_str().map(String::from).unwrap_or_else(|| body.trim().to_string()) });
    }
    if wait {
        let want = v["generation"].as_u64().unwrap_or(0);
        let deadline = std::time::Instant::now() + RELOAD_WAIT;
        while std::time::Instant::now() < deadline {
            let s = status(addr)?;
            if s["generation"].as_u64() == Some(want) && s["applied_by_all_workers"] == Value::Bool(true) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Err(ClientError::NotApplied(want));
    }
    Ok(v)
}

/// Asks a standby to take over (`resync`: asks the peer for its whole table
/// instead); returns what was done.
pub fn takeover(addr: &Target, resync: bool) -> Result<Value, ClientError> {
    let p = if resync { "/resync" } else { "/takeover" };
    let path = || p.to_string();
    let (code, body) = request(addr, "POST", p)?;
    let http_error = || ClientError::Status { path: path(), code, body: body.trim().to_string() };
    let v: Value = serde_json::from_str(&body).map_err(|_| http_error())?;
    if code != 200 {
        return Err(ClientError::Refused { path: path(), message: v["error"].as_str().map(String::from).unwrap_or_else(|| body.trim().to_string()) });
    }
    Ok(v["takeover"].clone())
}

/// Asks for a snapshot of the running tables; returns what was written.
pub fn snapshot(addr: &Target) -> Result<Value, ClientError> {
    let path = || "/snapshot".to_string();
    let (code, body) = request(addr, "POST", "/snapshot")?;
    let http_error = || ClientError::Status { path: path(), code, body: body.trim().to_string() };
    let v: Value = serde_json::from_str(&body).map_err(|_| http_error())?;
    if code != 200 {
        return Err(ClientError::Refused { path: path(), message: v["error"].as_str().map(String::from).unwrap_or_else(|| body.trim().to_string()) });
    }
    Ok(v["written"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `holdfast top` shows every admission class's fill, each under its own heading.
    #[test]
    fn top_has_a_column_for_every_class() {
        use holdfast_pipeline::conntrack::pressure::Admission;
        let classes: serde_json::Map<String, Value> =
            Admission::ALL.iter().enumerate().map(|(i, a)| (a.name().to_string(), serde_json::json!(0.01 * (i + 1) as f64))).collect();
        let text = render(&serde_json::json!({ "workers": [], "total": { "classes": classes } }));
        let total = text.lines().find(|l| l.starts_with("total")).expect("a total row");
        let shown: Vec<&str> = total.split('|').nth(1).expect("the class columns").split_whitespace().collect();
        assert_eq!(shown, ["1.0%", "2.0%", "3.0%", "4.0%", "5.0%"], "{text}");
        assert!(text.contains("replid") && text.contains("assurd"), "{text}");
    }

    /// Serves `body` (chunked in two, as the endpoint streams a listing) to one request.
    fn serve_once(body: &'static str) -> Target {
        let (a, b) = body.split_at(body.len() / 2);
        let answer = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
        serve_raw(Box::leak(answer.into_bytes().into_boxed_slice()))
    }

    #[test]
    fn a_listing_is_handed_over_a_flow_at_a_time_and_an_incomplete_one_says_so() {
        let mut seen = Vec::new();
        let t = serve_once("{\"sport\":1}\n{\"sport\":2}\n{\"sport\":3}\n");
        assert_eq!(flows(&t, "limit=10", |v| seen.push(v["sport"].as_u64().unwrap())).unwrap(), 3);
        assert_eq!(seen, [1, 2, 3]);
        let t = serve_once("{\"sport\":1}\n{\"error\":\"worker 1 stopped; the listing is incomplete\"}\n");
        let mut called = 0;
        match flows(&t, "limit=10", |_| called += 1) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("incomplete") && message.contains("after 1 flow"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(called, 1, "what came before the error was handed over; the error says how much");
    }

    /// Serves raw bytes as the answer to one request, then closes.
    fn serve_raw(answer: &'static [u8]) -> Target {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // The whole request head, so that closing does not reset the connection.
            let (mut head, mut buf) = (Vec::new(), [0u8; 256]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer);
        });
        Target::new(addr)
    }

    #[test]
    fn chunked_answers_decode_and_cut_ones_are_noticed() {
        let d = |b: &'static [u8]| request(&serve_raw(b), "GET", "/x");
        const H: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let both = |body: &str| -> &'static [u8] { Box::leak(format!("{H}{body}").into_bytes().into_boxed_slice()) };
        assert_eq!(d(both("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")).unwrap(), (200, "hello world".to_string()));
        assert_eq!(d(both("3;ext=1\r\nabc\r\n0\r\n\r\n")).unwrap().1, "abc", "an extension is ignored");
        assert!(matches!(d(both("5\r\nhello\r\n6\r\n wor")), Err(ClientError::CutShort { .. })));
        assert!(matches!(d(both("5\r\nhello\r\n")), Err(ClientError::CutShort { .. })), "no last chunk: cut short");
        assert!(matches!(d(both("zz\r\nhello\r\n0\r\n\r\n")), Err(ClientError::Io { .. })), "not a size");
        assert!(matches!(d(both("2\r\nhello\r\n0\r\n\r\n")), Err(ClientError::Io { .. })), "a chunk longer than its size");
        assert!(matches!(d(both("ffffffffffffffff\r\nhello\r\n0\r\n\r\n")), Err(ClientError::CutShort { .. })), "a size past the answer");
        // By length, and to the end of the connection.
        assert_eq!(d(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more").unwrap().1, "hello");
        assert!(matches!(d(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello"), Err(ClientError::CutShort { .. })));
        assert_eq!(d(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap().1, "all of it");
        assert!(matches!(d(b"SSH-2.0-OpenSSH\r\n"), Err(ClientError::NotHttp { .. })));
        // A listing cut mid-chunk says how far it got.
        let t = serve_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n18\r\n{\"sport\":1}\n{\"sport\":2}\n\r\n30\r\n{\"sp");
        let mut called = 0;
        match flows(&t, "", |_| called += 1) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("cut short") && message.contains("after 2 flow"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(called, 2);
    }

    #[test]
    fn a_flow_reads_like_conntrack_l() {
        let f: Value = serde_json::from_str(
            r#"{"proto":"tcp","src":"10.0.1.1","sport":58940,"dst":"10.0.2.3","dport":80,"state":"TIME_WAIT","expires_in_s":119,
                "assured":true,"class":"closing","packets":[6,5],"bytes":[400,1666],"worker":0}"#,
        )
        .unwrap();
        assert_eq!(
            flow_line(&f),
            "tcp      119 TIME_WAIT src=10.0.1.1 dst=10.0.2.3 sport=58940 dport=80 packets=6 bytes=400 \
             src=10.0.2.3 dst=10.0.1.1 sport=80 dport=58940 packets=5 bytes=1666 [ASSURED] class=closing worker=0"
        );
        let u: Value = serde_json::from_str(
            r#"{"proto":"udp","src":"10.0.1.1","sport":1188,"dst":"10.0.2.1","dport":9,"state":"UNREPLIED","expires_in_s":5,
                "assured":false,"class":"unreplied","packets":[1,0],"bytes":[46,0],"worker":1}"#,
        )
        .unwrap();
        assert_eq!(
            flow_line(&u),
            "udp      5 src=10.0.1.1 dst=10.0.2.1 sport=1188 dport=9 packets=1 bytes=46 [UNREPLIED] \
             src=10.0.2.1 dst=10.0.1.1 sport=9 dport=1188 packets=0 bytes=0 class=unreplied worker=1"
        );
        // `conntrack.accounting: off`: no counters, as `conntrack -L` without acct.
        let n: Value = serde_json::from_str(
            r#"{"proto":"tcp","src":"10.0.1.1","sport":58940,"dst":"10.0.2.3","dport":80,"state":"ESTABLISHED","expires_in_s":9,
                "assured":true,"class":"assured","packets":null,"bytes":null,"worker":0}"#,
        )
        .unwrap();
        assert_eq!(
            flow_line(&n),
            "tcp      9 ESTABLISHED src=10.0.1.1 dst=10.0.2.3 sport=58940 dport=80 \
             src=10.0.2.3 dst=10.0.1.1 sport=80 dport=58940 [ASSURED] class=assured worker=0"
        );
    }
}
