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

/// Largest answer read (a listing of a million flows is about 300 MB).
const MAX_ANSWER: u64 = 1 << 30;

/// Decodes a chunked body in place (a listing is hundreds of MB: no second copy);
/// `false` when it is cut short or malformed.
fn dechunk(b: &mut Vec<u8>) -> bool {
    let (mut r, mut w) = (0, 0);
    loop {
        let Some(line_end) = b[r..].windows(2).position(|x| x == b"\r\n") else { return false };
        let Some(size) = std::str::from_utf8(&b[r..r + line_end]).ok().and_then(|t| t.split(';').next()).and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
        else {
            return false;
        };
        r += line_end + 2;
        if size == 0 {
            b.truncate(w);
            return true;
        }
        if b.len() - r < size.saturating_add(2) {
            return false;
        }
        b.copy_within(r..r + size, w);
        w += size;
        r += size + 2;
    }
}

/// One request; returns the status code and the body. An answer cut short (the
/// appliance stopped mid-listing) is an error, not a short list.
pub fn request(t: &Target, method: &str, path: &str) -> Result<(u16, String), ClientError> {
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
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| ClientError::NotHttp { addr: addr.clone(), what: "not an HTTP answer" })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    // The body stays where it was read: only the head is taken off its front.
    raw.drain(..split + 4);
    let mut body = raw;
    let code =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| ClientError::NotHttp { addr: addr.clone(), what: "bad status line" })?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        if !dechunk(&mut body) {
            return Err(ClientError::CutShort { addr: addr.clone(), path: path.to_string() });
        }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < n {
            return Err(ClientError::CutShort { addr: addr.clone(), path: path.to_string() });
        }
        body.truncate(n);
    }
    Ok((code, String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())))
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
        list("sources", &|x| x["source"].as_str().or(x["addr"].as_str()).unwrap_or("?").to_string()),
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

pub fn flows(addr: &Target, query: &str, mut each: impl FnMut(Value)) -> Result<u64, ClientError> {
    let path = || "/flows".to_string();
    let (code, body) = request(addr, "GET", &format!("/flows?{query}"))?;
    if code != 200 {
        return Err(ClientError::Status { path: path(), code, body: body.trim().to_string() });
    }
    let json = |l: &str| serde_json::from_str::<Value>(l).map_err(|source| ClientError::Json { path: path(), source });
    // A listing that could not be completed ends with an error line: said before
    // anything is listed.
    if let Some(last) = body.lines().last()
        && let Some(e) = json(last)?["error"].as_str()
    {
        return Err(ClientError::Refused { path: path(), message: e.to_string() });
    }
    // One line parsed at a time: a 1M-flow listing is ~220 MB of JSON, and all of it
    // parsed at once took ~2.7 GB (1.8 GB for 681k flows, measured).
    let mut n = 0;
    for l in body.lines() {
        each(json(l)?);
        n += 1;
    }
    Ok(n)
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

    /// Serves `body` (chunked, as the endpoint streams a listing) to one request.
    fn serve_once(body: &'static str) -> Target {
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
            let half = body.len() / 2;
            let (a, b) = body.split_at(half);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
        });
        Target::new(addr)
    }

    #[test]
    fn a_listing_is_handed_over_a_flow_at_a_time_and_an_incomplete_one_lists_nothing() {
        let mut seen = Vec::new();
        let t = serve_once("{\"sport\":1}\n{\"sport\":2}\n{\"sport\":3}\n");
        assert_eq!(flows(&t, "limit=10", |v| seen.push(v["sport"].as_u64().unwrap())).unwrap(), 3);
        assert_eq!(seen, [1, 2, 3]);
        let t = serve_once("{\"sport\":1}\n{\"error\":\"worker 1 stopped; the listing is incomplete\"}\n");
        let mut called = 0;
        match flows(&t, "limit=10", |_| called += 1) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("incomplete"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(called, 0, "nothing of an incomplete listing is listed");
    }

    #[test]
    fn chunked_answers_decode_and_cut_ones_are_noticed() {
        let d = |b: &[u8]| {
            let mut v = b.to_vec();
            dechunk(&mut v).then_some(v)
        };
        assert_eq!(d(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(), b"hello world");
        assert_eq!(d(b"3;ext=1\r\nabc\r\n0\r\n\r\n").unwrap(), b"abc", "an extension is ignored");
        assert!(d(b"5\r\nhello\r\n6\r\n wor").is_none());
        assert!(d(b"5\r\nhello\r\n").is_none(), "no last chunk: cut short");
        assert!(d(b"zz\r\nhello\r\n0\r\n\r\n").is_none(), "not a size");
        assert!(d(b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n").is_none(), "a size past the answer");
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
