//! Real connections through the appliance, as RFC 9411 (benchmarking network security
//! devices) measures them: an HTTP server and a load client, each one epoll loop (mio)
//! over the kernel's TCP — the kernel does the protocol (3-way open, MSS from the MTU,
//! window scaling, FIN close), these only count — and a spoofed SYN flood over a raw
//! socket. `holdfast lab --rfc9411` runs them through Holdfast and through Linux.
//!
//! Nothing here is on the packet path: it is the traffic, and the stopwatch.

pub mod client;
pub mod flood;
pub mod server;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The largest latency recorded: 100 s, in microseconds (anything slower is a timeout).
const MAX_US: u64 = 100_000_000;

/// Latencies in microseconds, three significant digits, mergeable across processes
/// through their JSON.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, MAX_US, 3).expect("1 µs .. 100 s at 3 digits is a valid histogram"))
    }
}

impl Latency {
    pub fn record(&mut self, d: std::time::Duration) {
        self.0.saturating_record(u64::try_from(d.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile in microseconds; `None` when nothing was recorded.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q))
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// `{count, p50_us, p99_us, max_us, buckets: [[µs, n], ...]}`; the buckets let
    /// another process merge it.
    pub fn to_json(&self) -> Value {
        let buckets: Vec<[u64; 2]> = self.0.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect();
        json!({
            "count": self.count(),
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "max_us": (self.count() > 0).then(|| self.0.max()),
            "buckets": buckets,
        })
    }

    /// Reads [`to_json`](Self::to_json)'s buckets back (at most 100,000 of them: a
    /// histogram of this precision has fewer).
    pub fn from_json(v: &Value) -> Result<Latency, String> {
        let mut l = Latency::default();
        let Some(b) = v["buckets"].as_array() else {
            return Ok(l);
        };
        if b.len() > 100_000 {
            return Err(format!("latency histogram with {} buckets (at most 100,000)", b.len()));
        }
        for (i, pair) in b.iter().enumerate() {
            match (pair[0].as_u64(), pair[1].as_u64()) {
                (Some(us), Some(n)) => l.0.saturating_record_n(us.clamp(1, MAX_US), n),
                _ => return Err(format!("latency bucket {i}: want [microseconds, count], got {pair}")),
            }
        }
        Ok(l)
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// True when the header block names `Connection: close` (any case).
fn wants_close(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
        line[..colon].eq_ignore_ascii_case(b"connection") && line[colon + 1..].trim_ascii().eq_ignore_ascii_case(b"close")
    })
}

/// A response's status code and Content-Length from its header block (without the
/// blank line); `None` when it is not an HTTP/1.x response with a length.
fn response_head(head: &[u8]) -> Option<(u16, usize)> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next()?;
    let rest = status.strip_prefix(b"HTTP/1.")?.get(1..)?;
    let code = std::str::from_utf8(rest.trim_ascii().get(..3)?).ok()?.parse().ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if line[..colon].eq_ignore_ascii_case(b"content-length") {
            return Some((code, std::str::from_utf8(line[colon + 1..].trim_ascii()).ok()?.parse().ok()?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_merges_through_json() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for us in 1..=1000u64 {
            a.record(std::time::Duration::from_micros(us));
            b.record(std::time::Duration::from_micros(us * 10));
        }
        let mut m = Latency::from_json(&a.to_json()).unwrap();
        m.merge(&Latency::from_json(&b.to_json()).unwrap());
        assert_eq!(m.count(), 2000);
        // The 1,000th of 2,000 values: 910 from the first set and 91 (10..=910) from the
        // second are ≤ 910 µs. The 1,980th: the second set's 21st largest, 9,800 µs.
        let p50 = m.quantile_us(0.5).unwrap();
        assert!((905..=915).contains(&p50), "{p50}");
        let p99 = m.quantile_us(0.99).unwrap();
        assert!((9_790..=9_810).contains(&p99), "{p99}");
        assert_eq!(Latency::default().quantile_us(0.5), None);
        assert!(Latency::from_json(&json!({"buckets": [[1, "x"]]})).unwrap_err().contains("bucket 0"));
    }

    #[test]
    fn http_heads() {
        assert!(wants_close(b"GET / HTTP/1.1\r\nHost: a\r\nConnection:  Close "));
        assert!(!wants_close(b"GET / HTTP/1.1\r\nX-Connection: close"));
        assert!(!wants_close(b"GET / HTTP/1.1\r\nConnection: keep-alive"));
        assert_eq!(response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1024"), Some((200, 1024)));
        assert_eq!(response_head(b"HTTP/1.0 503 Busy\r\ncontent-length:0"), Some((503, 0)));
        assert_eq!(response_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1"), None);
        assert_eq!(response_head(b"SSH-2.0\r\nContent-Length: 1"), None);
        assert_eq!(response_head(b"HTTP/1.1 200 OK"), None);
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
        assert_eq!(response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999"), None, "overflows usize");
    }

    /// What a hostile peer may send: every prefix of a real head and random bytes go
    /// through both parsers without a panic.
    #[test]
    fn hostile_heads_do_not_panic() {
        let real = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 1024\r\nConnection: close\r\n";
        for n in 0..=real.len() {
            let _ = response_head(&real[..n]);
            let _ = wants_close(&real[..n]);
        }
        let mut rng = crate::traffic::Rng::new(9411);
        for _ in 0..20_000 {
            let len = rng.range(0, 64) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| b"HTP/1. 0:\r\nCcontent-lgh9x\xff"[rng.range(0, 25) as usize]).collect();
            if rng.chance(0.5) {
                b.splice(0..0, b"HTTP/1.1 ".iter().copied());
            }
            let _ = response_head(&b);
            let _ = wants_close(&b);
        }
    }
}
