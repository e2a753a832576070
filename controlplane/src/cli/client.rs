//! `holdfast status | flows | top | reload | snapshot`: against a running appliance's endpoint.

use holdfast_controlplane::config;
use holdfast_controlplane::control::client::{self, ClientError, Target};

use super::Error;
use super::args::{ClientArgs, ClientCmd};

/// The running appliance a client command talks to, and its token.
fn target(c: &ClientArgs) -> Result<Target, Error> {
    let mut t = Target::new(c.connect.clone());
    let mut token_file = c.token_file.clone();
    if let Some(p) = &c.config {
        let cfg = config::load(p)?;
        t.addr =
            cfg.control.listen.map(|a| a.to_string()).ok_or_else(|| Error::Usage { cmd: "client", msg: format!("{}: control.listen is off", p.display()) })?;
        token_file = token_file.or(cfg.control.token_file);
    }
    if let Some(f) = token_file {
        t.token = Some(config::read_token(&f).map_err(|e| Error::Usage { cmd: "client", msg: e.to_string() })?);
        if let Some(w) = config::token_warning(&f) {
            eprintln!("holdfast: WARNING: {w}");
        }
    }
    Ok(t)
}

/// Standard output for a listing: buffered, one `write` per 64 KiB rather than one a
/// line (`println!` is line-buffered: a 681k-flow listing spent 3.3 s of its 9.5 in
/// write(2)). A write error (a full disk) is kept and said once, at the end.
struct Lines {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
    err: Option<std::io::Error>,
}

impl Lines {
    fn new() -> Lines {
        Lines { w: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()), err: None }
    }

    fn line(&mut self, a: std::fmt::Arguments) {
        use std::io::Write;
        if self.err.is_none()
            && let Err(e) = writeln!(self.w, "{a}")
        {
            self.err = Some(e);
        }
    }

    /// One flow of a listing: its JSON, or `conntrack -L`'s line.
    fn flow(&mut self, x: &serde_json::Value, json: bool) {
        if json { self.line(format_args!("{x}")) } else { self.line(format_args!("{}", client::flow_line(x))) }
    }

    fn done(mut self) -> Result<(), Error> {
        use std::io::Write;
        match self.err.take().map_or_else(|| self.w.flush(), Err) {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::failed("flows", format!("writing to standard output: {e}"))),
        }
    }
}

/// Ends a listing: what was listed is written out either way; one that could not be
/// completed then says so and fails.
fn finish(cmd: &'static str, listed: Result<u64, ClientError>, out: Lines) -> Result<u64, Error> {
    let written = out.done();
    let n = listed.map_err(|e| match e {
        ClientError::Refused { message, .. } => Error::failed(cmd, format!("the listing above is INCOMPLETE: {message}")),
        e => Error::failed(cmd, e),
    })?;
    written.map(|()| n)
}

impl ClientCmd {
    pub fn run(self) -> Result<(), Error> {
        match self {
            ClientCmd::Status(c) => {
                let v = client::status(&target(&c)?).map_err(|e| Error::failed("status", e))?;
                if c.json {
                    println!("{v}");
                } else {
                    print!("{}", client::render(&v));
                }
            }
            ClientCmd::Flows(f) if f.external => {
                let t = target(&f.c)?;
                let mut out = Lines::new();
                let listed = client::external(&t, &format!("limit={}", f.limit), |x| out.flow(&x, f.c.json));
                let n = finish("flows --external", listed, out)?;
                if !f.c.json {
                    eprintln!("holdfast: {n} flow(s) in the external cache");
                }
            }
            ClientCmd::Flows(f) if f.top_sources => {
                let v = client::status(&target(&f.c)?).map_err(|e| Error::failed("flows --top-sources", e))?;
                if f.c.json {
                    let workers: Vec<serde_json::Value> =
                        v["workers"].as_array().into_iter().flatten().map(|w| serde_json::json!({"worker": w["worker"], "holders": w["holders"]})).collect();
                    println!("{}", serde_json::json!({"total": v["total"]["holders"], "workers": workers}));
                } else {
                    print!("total\n{}", client::holders_lines(&v["total"]["holders"]));
                    for w in v["workers"].as_array().into_iter().flatten() {
                        print!("worker {}\n{}", w["worker"], client::holders_lines(&w["holders"]));
                    }
                }
            }
            ClientCmd::Flows(f) => {
                let t = target(&f.c)?;
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", &f.limit.to_string());
                for (k, v) in [
                    ("src", f.src.map(|a| a.to_string())),
                    ("dst", f.dst.map(|a| a.to_string())),
                    ("port", f.port.map(|p| p.to_string())),
                    ("state", f.state.clone()),
                    ("proto", f.proto.clone()),
                ] {
                    if let Some(v) = v {
                        q.append_pair(k, &v);
                    }
                }
                let mut out = Lines::new();
                let listed = client::flows(&t, &q.finish(), |x| out.flow(&x, f.c.json));
                let n = finish("flows", listed, out)?;
                if !f.c.json {
                    eprintln!("holdfast: {n} flow(s) listed");
                }
            }
            ClientCmd::Top(a) => {
                let t = target(&a.c)?;
                loop {
                    let v = client::status(&t).map_err(|e| Error::failed("top", e))?;
                    if a.c.json {
                        println!("{v}");
                    } else if a.once {
                        print!("{}", client::render(&v));
                    } else {
                        // Home, clear, frame.
                        println!("\x1b[H\x1b[2J{}(Ctrl-C quits)", client::render(&v));
                    }
                    if a.once {
                        break;
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    std::thread::sleep(std::time::Duration::from_nanos(a.interval.as_nanos().max(100_000_000)));
                }
            }
            ClientCmd::Resync(a) => {
                let v = client::takeover(&target(&a)?, true).map_err(|e| Error::failed("resync", e))?;
                if a.json { println!("{v}") } else { println!("holdfast: resync: {}", v["resync"].as_str().unwrap_or("?")) }
            }
            ClientCmd::Takeover(a) => {
                let v = client::takeover(&target(&a)?, false).map_err(|e| Error::failed("takeover", e))?;
                if a.json {
                    println!("{v}");
                } else {
                    println!(
                        "holdfast: takeover: {} of {} flow(s) committed in {:.3} s ({} refused: {}; {} non-assured entries evicted for them)",
                        v["adopted"],
                        v["flows"],
                        v["seconds"].as_f64().unwrap_or(0.0),
                        v["refused"],
                        v["refused_by"],
                        v["evicted"]
                    );
                }
            }
            ClientCmd::Snapshot(a) => {
                let v = client::snapshot(&target(&a)?).map_err(|e| Error::failed("snapshot", e))?;
                if a.json {
                    println!("{v}");
                } else {
                    println!(
                        "holdfast: snapshot: {} flow(s) and {} tombstone(s) written to {} ({} bytes, {:.2} s)",
                        v["flows"],
                        v["tombstones"],
                        v["path"].as_str().unwrap_or("?"),
                        v["bytes"],
                        v["seconds"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            ClientCmd::Reload(r) => {
                let v = client::reload(&target(&r.c)?, !r.no_wait).map_err(|e| match e {
                    // The appliance said no, and whether the running configuration stays.
                    ClientError::Refused { message, .. } => Error::Refused(format!("holdfast: {message}")),
                    ClientError::Status { code: 401 | 403, .. } => Error::Refused(format!("holdfast: reload rejected, the running configuration stays:\n{e}")),
                    e => Error::failed("reload", e),
                })?;
                if r.c.json {
                    println!("{v}");
                } else {
                    println!("holdfast: reloaded: generation {}{}", v["generation"], if r.no_wait { " accepted" } else { " running on every worker" });
                    if let Some(list) = v["restart_needed"].as_array().filter(|a| !a.is_empty()) {
                        println!("  not applied until a restart: {}", list.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "));
                    }
                }
            }
        }
        Ok(())
    }
}
