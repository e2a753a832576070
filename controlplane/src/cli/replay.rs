//! `holdfast replay --offline` and `holdfast gen webfarm`: captures through the
//! pipeline, and the captures to put through it.

use holdfast_controlplane::{DEFAULT_CONFIG, capture, config, replay, traffic};

use super::Error;
use super::args::{GenCmd, ReplayArgs};

impl ReplayArgs {
    pub fn run(self) -> Result<(), Error> {
        if !self.offline {
            return Err(Error::Usage {
                cmd: "replay",
                msg: "only --offline replay is available (live replay onto interfaces needs the AF_XDP dataplane)".into(),
            });
        }
        let cfg = match &self.config {
            Some(p) => config::load(p)?,
            None => config::parse(DEFAULT_CONFIG, "<embedded configs/webfarm.yaml>")?,
        };
        let (source, buf) = match &self.pcap {
            Some(p) => (p.display().to_string(), capture::read_file(p).map_err(|e| Error::failed("replay", format!("cannot read {}: {e}", p.display())))?),
            None => ("<generated web farm, seed 1>".to_string(), traffic::to_pcap(&traffic::webfarm(&traffic::WebFarm::default()))),
        };
        let opts = replay::Options { workers: self.workers, json: self.json, flows_out: self.flows_out, verdicts_out: self.verdicts_out };
        let seed = self.seed.unwrap_or_else(holdfast_dataplane::sys::random_seed);
        let report = replay::run(&cfg, &source, &buf, seed, &opts).map_err(|e| Error::failed("replay", e))?;
        if let Some(e) = &report.capture_error
            && report.counters.packets == 0
            && report.skipped == 0
        {
            return Err(Error::failed("replay", format!("cannot replay {source}: {}", e.message)));
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

impl GenCmd {
    pub fn run(self) -> Result<(), Error> {
        let GenCmd::Webfarm(a) = self;
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
