//! `holdfast lab [up|down]` and `holdfast blast`: the appliance in network namespaces,
//! and the lab benchmark's traffic generator.

use holdfast_controlplane::lab;

use super::Error;
use super::args::{BlastArgs, LabArgs};

impl LabArgs {
    pub fn run(self) -> Result<(), Error> {
        match self.action.as_deref() {
            Some("down") => {
                let left = lab::down();
                if !left.is_empty() {
                    return Err(Error::failed("lab", format!("could not remove {left:?}")));
                }
                println!("holdfast lab: nothing left");
                return Ok(());
            }
            Some("up") => {
                return lab::up(self.workers.max(1)).map_err(|e| {
                    lab::down();
                    Error::failed("lab up", e)
                });
            }
            Some(other) => return Err(Error::Usage { cmd: "lab", msg: format!("unknown action {other:?} (use `down` or `up`, or nothing to run the lab)") }),
            None => {}
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| "holdfast".into());
        if self.report.is_some() && self.replay.is_none() && !self.rfc9411 {
            return Err(Error::Usage { cmd: "lab", msg: "--report goes with --replay or --rfc9411".into() });
        }
        if self.rfc9411 {
            if !holdfast_dataplane::sys::is_root() {
                return Err(Error::failed("lab --rfc9411", lab::LabError::NotRoot));
            }
            let missing = holdfast_dataplane::host::missing(&[&lab::TOOLS[..], &[lab::rfc9411::TASKSET]].concat());
            if !missing.is_empty() {
                return Err(Error::failed("lab --rfc9411", lab::LabError::MissingTools(missing)));
            }
            holdfast_dataplane::sys::catch_stop_signals();
            let b = &self.bench;
            let o = lab::rfc9411::Options {
                systems: b.systems.clone(),
                connections: b.connections as usize,
                seconds: b.seconds,
                concurrency: b.concurrency as usize,
                sources: b.sources as usize,
                flood: b.flood,
                flood_pps: b.flood_pps,
                object: b.object as usize,
                report: self.report.clone(),
                rate_table: b.rate_table as usize,
                shed_syns: b.shed_syns == "on",
            };
            let v = lab::rfc9411::run(&exe, &o).map_err(|e| {
                lab::down();
                Error::failed("lab --rfc9411", e)
            })?;
            if self.json {
                println!("{v}");
            } else {
                print!("{}", lab::rfc9411::human(&v));
                if let Some(r) = &self.report {
                    println!("  report: {}", r.display());
                }
            }
            return Ok(());
        }
        if self.ha {
            if !holdfast_dataplane::sys::is_root() {
                return Err(Error::failed("lab --ha", lab::LabError::NotRoot));
            }
            let missing = holdfast_dataplane::host::missing(&lab::TOOLS);
            if !missing.is_empty() {
                return Err(Error::failed("lab --ha", lab::LabError::MissingTools(missing)));
            }
            holdfast_dataplane::sys::catch_stop_signals();
            let v = lab::ha::run(&exe, self.keep).map_err(|e| {
                if !self.keep {
                    lab::down();
                }
                Error::failed("lab --ha", e)
            })?;
            if self.json {
                println!("{v}");
            } else {
                print!("{}", lab::ha::human(&v));
            }
            if v["identical"] != true || v["forbidden_drops"] != 0 {
                return Err(Error::failed("lab --ha", "the download did not survive the failover intact (see above)"));
            }
            return Ok(());
        }
        if let Some(capture) = &self.replay {
            if !holdfast_dataplane::sys::is_root() {
                return Err(Error::failed("lab --replay", lab::LabError::NotRoot));
            }
            let missing = holdfast_dataplane::host::missing(&[lab::TOOLS[0], lab::TOOLS[6]]);
            if !missing.is_empty() {
                return Err(Error::failed("lab --replay", lab::LabError::MissingTools(missing)));
            }
            let o = lab::replay::Options {
                capture: capture.clone(),
                config: self.config.clone(),
                workers: self.workers.max(1),
                replay_args: self.live.to_args(),
                verdicts_out: self.verdicts_out.clone(),
                report: self.report.clone(),
                keep: self.keep,
            };
            let v = lab::replay::run(&exe, &o).map_err(|e| {
                if !self.keep {
                    lab::down();
                }
                Error::failed("lab --replay", e)
            })?;
            if self.json {
                println!("{v}");
            } else {
                println!("{}", lab::replay::human(&v));
            }
            if let Some(n) = v["replay_note"].as_str() {
                return Err(Error::failed("lab --replay", n.to_string()));
            }
            return Ok(());
        }
        let opts = lab::Options { workers: self.workers.max(1), requests: self.requests, keep: self.keep };
        let v = lab::run(&exe, &opts).map_err(|e| {
            if !self.keep {
                lab::down();
            }
            Error::failed("lab", e)
        })?;
        if self.json {
            println!("{v}");
        } else if self.keep {
            let dir = v["dir"].as_str().unwrap_or("?");
            println!("holdfast lab: running; try `ip netns exec hf-out curl http://10.0.2.1/`; its log: {dir}/appliance.err; remove with `holdfast lab down`");
        } else {
            println!("{}", lab::human(&v));
        }
        let good = v["requests_failed"] == 0 && v["pings_failed"] == 0 && v["leftovers"] == false;
        if good || self.keep { Ok(()) } else { Err(Error::failed("lab", "some requests or pings failed, or XDP was left attached (see above)")) }
    }
}

impl BlastArgs {
    pub fn run(self) -> Result<(), Error> {
        let mac: Vec<u8> = self.dst_mac.split(':').filter_map(|x| u8::from_str_radix(x, 16).ok()).collect();
        let dst_mac =
            <[u8; 6]>::try_from(mac).map_err(|_| Error::Usage { cmd: "blast", msg: "--dst-mac wants six hex bytes like 02:00:00:00:00:01".into() })?;
        let ifindex = holdfast_dataplane::bpf::ifindex(&self.interface).map_err(|e| Error::failed("blast", e))?;
        let src_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", self.interface))
            .ok()
            .and_then(|s| s.trim().split(':').map(|x| u8::from_str_radix(x, 16).ok()).collect::<Option<Vec<u8>>>())
            .and_then(|v| <[u8; 6]>::try_from(v).ok())
            .unwrap_or([2, 0, 0, 0, 0, 1]);
        let frames: Vec<Vec<u8>> = (0..self.flows.max(1))
            .map(|i| {
                let src = std::net::Ipv4Addr::from(0x0a00_0100 | (1 + i / 60_000));
                let mut f = holdfast_pipeline::wire::build::FrameSpec::udp(src.into(), 1024 + (i % 60_000) as u16, self.dst.into(), self.dport, &[0u8; 18]);
                f.src_mac = src_mac;
                f.dst_mac = dst_mac;
                f.build()
            })
            .collect();
        let r = holdfast_dataplane::blast::blast(ifindex, &frames, self.seconds).map_err(|e| Error::failed("blast", e))?;
        println!(
            "{}",
            serde_json::json!({"sent": r.sent, "seconds": r.elapsed.as_secs_f64(), "cpu_s": r.cpu.as_secs_f64(), "frame_bytes": frames[0].len(), "flows": frames.len()})
        );
        Ok(())
    }
}
