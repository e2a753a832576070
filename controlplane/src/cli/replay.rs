//! `holdfast replay --offline` and `holdfast gen webfarm`: captures through the
//! pipeline, and the captures to put through it.

use holdfast_controlplane::{DEFAULT_CONFIG, capture, config, replay, traffic};

use super::Error;
use super::args::{GenCmd, ReplayArgs, ReportCmd};

impl ReplayArgs {
    pub fn run(self) -> Result<(), Error> {
        let live_flags: Vec<&str> = [
            (self.live.pps.is_some(), "--pps"),
            (self.live.mbps.is_some(), "--mbps"),
            (self.live.multiplier.is_some(), "--multiplier"),
            (self.live.topspeed, "--topspeed"),
            (self.live.loops != 1, "--loop"),
            (self.live.loopdelay_ms != 0, "--loopdelay-ms"),
            (self.live.unique_ip, "--unique-ip"),
            (self.live.limit.is_some(), "--limit"),
            (self.live.duration.is_some(), "--duration"),
            (self.live.preload_pcap, "--preload-pcap"),
            (self.live.stats.is_some(), "--stats"),
            (self.live.order.is_some(), "--order"),
            (self.live.side_map.is_some(), "--side-map"),
            (self.live.control.is_some(), "--control"),
            (self.live.quiet, "--quiet"),
            (self.live.rx1.is_some() || self.live.rx2.is_some(), "--rx1/--rx2"),
            (self.live.driver != "xdp", "--driver"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if self.intf1.is_some() {
            return self.live();
        }
        if !self.offline {
            return Err(Error::Usage {
                cmd: "replay",
                msg: "say where: --offline (through the pipeline, no interfaces), or --intf1 CLIENT_SIDE --intf2 SERVER_SIDE (onto the wire, as root)".into(),
            });
        }
        if let Some(f) = live_flags.first() {
            return Err(Error::Usage {
                cmd: "replay",
                msg: format!("{f} is for a live replay (--intf1/--intf2); --offline replays as fast as it can, with capture timestamps as the clock"),
            });
        }
        let cfg = match &self.config {
            Some(p) => config::load(p)?,
            None => config::parse(DEFAULT_CONFIG, "<embedded configs/webfarm.yaml>")?,
        };
        // A file is mapped, not read: its frames are borrowed from the page cache, and
        // the pages the replay is done with can be dropped again.
        let mapped;
        let generated;
        let (source, buf): (String, &[u8]) = match &self.pcap {
            Some(p) => {
                mapped = CaptureFile::open(p, false)?;
                (p.display().to_string(), mapped.bytes())
            }
            None => {
                generated = traffic::to_pcap(&traffic::webfarm(&traffic::WebFarm::default()));
                ("<generated web farm, seed 1>".to_string(), &generated)
            }
        };
        let opts = replay::Options { workers: self.workers, json: self.json, flows_out: self.flows_out, verdicts_out: self.verdicts_out };
        let seed = self.seed.unwrap_or_else(holdfast_dataplane::sys::random_seed);
        let report = replay::run(&cfg, &source, buf, seed, &opts).map_err(|e| Error::failed("replay", e))?;
        if let Some(e) = &report.capture_error
            && report.counters.packets == 0
            && report.skipped == 0
        {
            return Err(Error::failed("replay", format!("cannot replay {source}: {}", e.message)));
        }
        if let Some(path) = &self.report {
            holdfast_controlplane::report::timeline(path, &format!("holdfast replay --offline: {source}"), &report.panels())
                .map_err(|e| Error::failed("replay", e))?;
        }
        if opts.json {
            println!("{}", report.to_json());
        } else {
            println!("{}", report.human());
        }
        if let Some(e) = &report.capture_error {
            return Err(Error::failed(
                "replay",
                format!("{source}: capture ends early {e}; the summary covers the {} frames before it", report.counters.packets),
            ));
        }
        if report.counters.packets == 0 && report.skipped > 0 {
            return Err(Error::failed(
                "replay",
                format!("{source}: nothing replayed: {}", report.skipped_note.as_deref().unwrap_or("every frame was skipped")),
            ));
        }
        Ok(())
    }
}

/// Results a benchmark report reads at most.
const MAX_RESULTS_BYTES: u64 = 16 << 20;

/// A text file of at most `limit` bytes (a device or a FIFO included), named by its
/// option in every error.
fn read_text(p: &std::path::Path, limit: u64, cmd: &'static str, option: &str) -> Result<String, Error> {
    let bytes = config::read_at_most(p, limit)
        .map_err(|e| Error::failed(cmd, format!("{option} {}: {e}", p.display())))?
        .ok_or_else(|| Error::failed(cmd, format!("{option} {}: more than {limit} bytes", p.display())))?;
    String::from_utf8(bytes).map_err(|e| Error::failed(cmd, format!("{option} {}: not UTF-8 text (byte {})", p.display(), e.utf8_error().valid_up_to())))
}

/// A capture file's bytes: mapped when it is a regular file (read as the replay goes,
/// never loaded whole), read into memory when asked to (`-K`) or when it cannot be
/// mapped (a pipe: `--pcap <(zcat f.pcap.gz)`).
enum CaptureFile {
    Mapped(holdfast_dataplane::sys::MappedFile),
    Read(Vec<u8>),
}

impl CaptureFile {
    fn open(p: &std::path::Path, preload: bool) -> Result<CaptureFile, Error> {
        let fail = |e: std::io::Error| Error::failed("replay", format!("cannot read {}: {e}", p.display()));
        let md = std::fs::metadata(p).map_err(fail)?;
        if md.is_dir() {
            return Err(Error::failed("replay", format!("cannot read {}: it is a directory, not a capture", p.display())));
        }
        if md.is_file() && !preload {
            holdfast_dataplane::sys::MappedFile::open(p).map(CaptureFile::Mapped).map_err(fail)
        } else {
            capture::read_file(p).map(CaptureFile::Read).map_err(fail)
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            CaptureFile::Mapped(m) => m.bytes(),
            CaptureFile::Read(v) => v,
        }
    }
}

impl ReplayArgs {
    fn live(self) -> Result<(), Error> {
        use holdfast_controlplane::replay::live::{self, Rate};
        use holdfast_controlplane::replay::sides::{self, Rule, Sides};
        let usage = |msg: String| Error::Usage { cmd: "replay", msg };
        if self.flows_out.is_some() {
            return Err(usage("--flows-out is for --offline; a live replay's table is the appliance's (holdfast flows)".into()));
        }
        if self.workers != 1 {
            return Err(usage("--workers is for --offline; the appliance's workers are its config's".into()));
        }
        if self.config.is_some() && self.live.side_map.is_some() {
            return Err(usage("--side-map and --config both say which side a host is on: give one".into()));
        }
        let rate = match (self.live.pps, self.live.mbps, self.live.multiplier, self.live.topspeed) {
            (Some(p), ..) => Rate::Pps(p),
            (_, Some(m), ..) => Rate::Mbps(m),
            (_, _, Some(x), _) => Rate::Capture { multiplier: x },
            (_, _, _, true) => Rate::Top,
            _ => Rate::Capture { multiplier: 1.0 },
        };
        let rule = match (&self.live.side_map, &self.config) {
            (Some(p), _) => {
                let text = read_text(p, sides::MAX_MAP_BYTES, "replay", "--side-map")?;
                Rule::Map(sides::parse_map(&text, &p.display().to_string()).map_err(usage)?)
            }
            (None, Some(p)) => Rule::Inside(config::load(p)?.inside),
            (None, None) => Rule::Auto(Default::default()),
        };
        let mut sides = Sides::new(rule);
        let preloaded;
        let generated;
        let (source, bytes): (String, &[u8]) = match &self.pcap {
            Some(p) => {
                preloaded = CaptureFile::open(p, self.live.preload_pcap)?;
                (p.display().to_string(), preloaded.bytes())
            }
            None => {
                generated = traffic::to_pcap(&traffic::webfarm(&traffic::WebFarm::default()));
                ("<generated web farm, seed 1>".to_string(), &generated)
            }
        };
        if !holdfast_dataplane::sys::is_root() {
            let missing = holdfast_dataplane::sys::missing_capabilities();
            if !missing.is_empty() {
                return Err(Error::failed(
                    "replay",
                    format!("a live replay attaches XDP and opens AF_XDP sockets: run as root, or grant {}", missing.join(", ")),
                ));
            }
        }
        if self.live.driver != "packet" && (self.live.rx1.is_some() || self.live.rx2.is_some()) {
            return Err(usage("--rx1/--rx2 need --driver packet (AF_XDP receives on the interfaces it sends on)".into()));
        }
        let opts = live::Options {
            interfaces: [self.intf1.clone().unwrap_or_default(), self.intf2.clone().unwrap_or_default()],
            driver: if self.live.driver == "packet" { live::Driver::Packet } else { live::Driver::Xdp },
            rx: [self.live.rx1.clone(), self.live.rx2.clone()],
            mode: if self.live.xdp_mode == "generic" { holdfast_dataplane::bpf::XdpMode::Generic } else { holdfast_dataplane::bpf::XdpMode::Native },
            rate,
            loops: self.live.loops,
            loop_delay: std::time::Duration::from_millis(self.live.loopdelay_ms),
            unique_ip: self.live.unique_ip,
            limit: self.live.limit,
            duration: self.live.duration.map(Into::into),
            order: self.live.order.as_deref() != Some("none"),
            order_timeout: self.live.order_timeout.into(),
            stats_every: self.live.stats.map(std::time::Duration::from_secs),
            verdicts_out: self.verdicts_out.clone(),
            control: self.live.control.clone().map(holdfast_controlplane::control::client::Target::new),
            seed: self.seed.unwrap_or_else(holdfast_dataplane::sys::random_seed),
            umem_frames: self.live.umem_frames,
            map_servers: self.live.map_servers,
            dst_mac: [self.live.dst_mac1, self.live.dst_mac2],
            report: self.report.clone(),
            progress: !self.live.quiet && !self.json && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        };
        let report = live::run(bytes, &mut sides, &opts).map_err(|e| Error::failed("replay", format!("{}: {e}", opts.interfaces.join(" / "))))?;
        if let Some(path) = &self.report {
            let title = format!("holdfast replay: {source} onto {} / {}", opts.interfaces[0], opts.interfaces[1]);
            holdfast_controlplane::report::timeline(path, &title, &report.panels()).map_err(|e| Error::failed("replay", e))?;
        }
        if self.json {
            let mut v = report.to_json();
            v["source"] = serde_json::json!(source);
            println!("{v}");
        } else {
            println!("holdfast replay: {source} onto {} (client side) and {} (server side)", opts.interfaces[0], opts.interfaces[1]);
            println!("{}", report.human());
        }
        if let Some(e) = &report.capture_error {
            if report.sent == 0 {
                return Err(Error::failed("replay", format!("cannot replay {source}: {}", e.message)));
            }
            return Err(Error::failed("replay", format!("{source}: capture ends early {e}; the summary covers the frames before it")));
        }
        if report.sent == 0 {
            return Err(Error::failed("replay", format!("{source}: nothing replayed ({} frames skipped)", report.skipped)));
        }
        Ok(())
    }
}

impl ReportCmd {
    pub fn run(self) -> Result<(), Error> {
        use holdfast_controlplane::report::{Bar, bars};
        let ReportCmd::Bench { input, out } = self;
        let text = read_text(&input, MAX_RESULTS_BYTES, "report", "--input")?;
        /// One result line: workload, system, and its four figures.
        struct Row {
            workload: String,
            system: String,
            figures: [f64; 4],
        }
        let mut rows: Vec<Row> = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::failed("report", format!("{}:{}: {e}", input.display(), n + 1)))?;
            let field = |k: &str| v[k].as_f64().ok_or_else(|| Error::failed("report", format!("{}:{}: no number {k:?}", input.display(), n + 1)));
            let name = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| Error::failed("report", format!("{}:{}: no {k:?}", input.display(), n + 1)));
            rows.push(Row {
                workload: name("workload")?,
                system: name("system")?,
                figures: [field("fwd_mpps")?, field("offered_mpps")?, field("ucyc")?, field("kcyc")?],
            });
        }
        let chart = |k: usize| -> Vec<Bar> { rows.iter().map(|r| Bar { group: r.workload.clone(), series: r.system.clone(), value: r.figures[k] }).collect() };
        let charts = vec![
            ("forwarded Mpps (medians)".to_string(), "Mpps".to_string(), chart(0)),
            ("offered Mpps: what the replayer sent".to_string(), "Mpps".to_string(), chart(1)),
            ("user-space cycles per forwarded frame, appliance core".to_string(), "cycles".to_string(), chart(2)),
            ("kernel cycles per forwarded frame, appliance core".to_string(), "cycles".to_string(), chart(3)),
        ];
        bars(&out, "holdfast lab benchmark", &charts).map_err(|e| Error::failed("report", e))?;
        println!("wrote {}", out.display());
        Ok(())
    }
}

impl GenCmd {
    pub fn run(self) -> Result<(), Error> {
        let a = match self {
            GenCmd::Webfarm(a) => a,
            GenCmd::Udp(u) => {
                let f = std::fs::File::create(&u.out).map_err(|e| Error::failed("gen", format!("cannot write {}: {e}", u.out.display())))?;
                let n = traffic::write_udp(std::io::BufWriter::new(f), u.flows, u.server)
                    .map_err(|e| Error::failed("gen", format!("cannot write {}: {e}", u.out.display())))?;
                println!("wrote {n} frames to {}", u.out.display());
                return Ok(());
            }
        };
        // Everything is built in memory: refuse what would not fit.
        let floods = a.syn_flood * a.duration.as_secs_f64();
        if floods > 50e6 {
            return Err(Error::Usage {
                cmd: "gen",
                msg: format!(
                    "--syn-flood {} over --duration {} makes {floods:.0} SYNs; at most 50,000,000 (lower either)",
                    a.syn_flood,
                    config::values::format_duration(a.duration)
                ),
            });
        }
        let p = traffic::WebFarm {
            seed: a.seed,
            servers: a.servers,
            clients: a.clients,
            connections: a.connections,
            duration: a.duration,
            idle: a.idle,
            requests: a.requests,
            response: a.response,
            syn_flood: a.syn_flood,
            scan: a.scan,
            midstream: a.midstream,
            ..traffic::WebFarm::default()
        };
        let ev = traffic::webfarm(&p);
        std::fs::write(&a.out, traffic::to_pcap(&ev)).map_err(|e| Error::failed("gen", format!("cannot write {}: {e}", a.out.display())))?;
        println!("wrote {} frames to {}", ev.len(), a.out.display());
        Ok(())
    }
}
