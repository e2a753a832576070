//! `holdfast load serve|client|flood`: the RFC 9411 benchmark's traffic, usable alone
//! (e.g. on two real hosts either side of an appliance) or through `holdfast lab
//! --rfc9411`.

use std::net::{IpAddr, Ipv4Addr};

use holdfast_controlplane::load::{client, flood, server};
use holdfast_dataplane::sys;

use super::Error;
use super::args::LoadCmd;

/// `10.0.1.1`, or `10.0.1.1-10.0.1.64` (IPv4, at most 65,536 addresses).
pub fn parse_sources(items: &[String]) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in items {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("--source {item:?}: {a:?} is not an IPv4 address"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("--source {item:?}: {b:?} is not an IPv4 address"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= 65_536 {
                return Err(format!("--source {item:?}: a range runs upwards over at most 65,536 addresses"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(item.trim().parse().map_err(|_| format!("--source {item:?} is not an address or a range a-b"))?);
        }
        if out.len() > 65_536 {
            return Err("--source: at most 65,536 addresses in all".into());
        }
    }
    Ok(out)
}

fn parse_net(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s.split_once('/').ok_or_else(|| format!("--sources {s:?}: want a network like 198.18.0.0/15"))?;
    let a: Ipv4Addr = a.parse().map_err(|_| format!("--sources {s:?}: {a:?} is not an IPv4 address"))?;
    let l: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("--sources {s:?}: the prefix length is 0..=32"))?;
    Ok((a, l))
}

impl LoadCmd {
    pub fn run(self) -> Result<(), Error> {
        sys::catch_stop_signals();
        match self {
            LoadCmd::Serve(a) => {
                let o = server::ServeOptions { listen: a.listen, object: a.object as usize, max_conns: a.max_conns as usize, backlog: a.backlog };
                let stats = server::serve(&o, sys::stop_requested).map_err(|e| Error::failed("load serve", e))?;
                println!("{}", serde_json::to_string(&stats).expect("plain counters"));
                Ok(())
            }
            LoadCmd::Client(a) => {
                let sources = parse_sources(&a.source).map_err(|msg| Error::Usage { cmd: "load client", msg })?;
                let o = client::ClientOptions {
                    servers: a.server,
                    sources,
                    mode: a.mode,
                    concurrency: a.concurrency as usize,
                    duration: a.duration.into(),
                    connections: a.connections as usize,
                    idle: a.idle.into(),
                    timeout: a.timeout.into(),
                };
                if o.timeout.is_zero() {
                    return Err(Error::Usage { cmd: "load client", msg: "--timeout must be more than 0".into() });
                }
                // Progress lines (hold's "held") and the result, one JSON object a line,
                // flushed at once: `lab --rfc9411` starts its flood on "held".
                let v = client::run(&o, sys::stop_requested, |ev| println!("{ev}")).map_err(|e| Error::failed("load client", e))?;
                println!("{v}");
                Ok(())
            }
            LoadCmd::Flood(a) => {
                let sources = parse_net(&a.sources).map_err(|msg| Error::Usage { cmd: "load flood", msg })?;
                let o = flood::FloodOptions {
                    targets: a.target,
                    sources,
                    pps: a.pps,
                    count: a.count,
                    duration: a.duration.map(Into::into),
                    seed: a.seed,
                    ip_options: a.ip_options,
                };
                let v = flood::run(&o, sys::stop_requested).map_err(|e| Error::failed("load flood", e))?;
                println!("{v}");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(parse_sources(&["10.0.1.1-10.0.1.3".into(), "10.0.9.9".into()]).unwrap().len(), 4);
        assert!(parse_sources(&["10.0.1.3-10.0.1.1".into()]).unwrap_err().contains("upwards"));
        assert!(parse_sources(&["10.0.0.0-10.1.0.0".into()]).unwrap_err().contains("65,536"));
        assert!(parse_sources(&["x".into()]).unwrap_err().contains("\"x\""));
        assert_eq!(parse_net("198.18.0.0/15").unwrap().1, 15);
        assert!(parse_net("198.18.0.0/33").is_err());
        assert!(parse_net("198.18.0.0").is_err());
    }
}
