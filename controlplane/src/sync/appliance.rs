//! The running appliance's tables for the sync endpoint: each worker's change feed (a
//! bounded ring it fills as flows are created, change and go), a full sweep that asks
//! every worker for its table a slice per housekeeping round (`Command::Export`, as
//! `holdfast snapshot` does), and a takeover that hands each worker the synced flows it
//! owns (`Command::Adopt`) while every worker drops what it receives as `syncing`.

use std::sync::Arc;
use std::time::Duration;

use holdfast_dataplane::control::{ChangeFeed, Command, ExportReply, LinkFlags};
use holdfast_dataplane::run::Commander;
use holdfast_pipeline::FlowHasher;
use holdfast_pipeline::conntrack::Timeouts;
use holdfast_pipeline::engine::{AdoptTally, Change, SyncedFlow};
use holdfast_pipeline::flow::owner_of;
use holdfast_pipeline::snapshot::FlowRecord;

use super::endpoint::Tables;

/// How long a sweep or a takeover waits for a worker's next answer.
const WORKER_ANSWER: Duration = Duration::from_secs(10);
/// Flows handed to a worker per command during a takeover.
const ADOPT_CHUNK: usize = 16_384;

pub struct ApplianceTables {
    pub commander: Commander,
    pub flags: Arc<LinkFlags>,
    pub hasher: FlowHasher,
    pub timeouts: Timeouts,
    pub feeds: Vec<ChangeFeed>,
    /// The feed read first next time (so that one busy worker cannot starve the rest).
    pub next_feed: usize,
}

impl Tables for ApplianceTables {
    fn sweep(&mut self) -> Result<Vec<SyncedFlow>, String> {
        let mut out = Vec::new();
        for w in 0..self.commander.workers() {
            self.commander.export(w, WORKER_ANSWER, |r| {
                if let ExportReply::Flows { bytes, .. } = r {
                    let mut at = 0;
                    while at < bytes.len() {
                        let (r, n) = FlowRecord::decode(&bytes[at..], at as u64).map_err(|e| format!("worker {w}'s export: {e}"))?;
                        out.push(r.synced(&self.timeouts));
                        at += n;
                    }
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn changes(&mut self, out: &mut Vec<Change>, max: usize) -> u64 {
        let n = self.feeds.len();
        for i in 0..n {
            let f = &mut self.feeds[(self.next_feed + i) % n];
            while out.len() < max {
                match f.ring.pop() {
                    Ok(c) => out.push(c),
                    Err(_) => break,
                }
            }
        }
        self.next_feed = (self.next_feed + 1) % n.max(1);
        self.feeds.iter().map(|f| f.lost.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    fn adopt(&mut self, flows: Vec<SyncedFlow>) -> Result<AdoptTally, String> {
        let n = self.commander.workers();
        let mut per: Vec<Vec<SyncedFlow>> = vec![Vec::new(); n];
        for f in flows {
            let w = if n == 1 { 0 } else { owner_of(self.hasher.owner_hash(&f.key().0), n) };
            per[w].push(f);
        }
        // Nothing is judged against a table that does not hold the flows yet.
        self.flags.set_syncing(true);
        let result = (|| {
            let mut done = AdoptTally::default();
            for (w, flows) in per.into_iter().enumerate() {
                for chunk in flows.chunks(ADOPT_CHUNK) {
                    let (tx, rx) = crossbeam_channel::bounded(1);
                    if !self.commander.send(w, Command::Adopt { flows: chunk.to_vec(), reply: tx }) {
                        return Err(format!("worker {w} did not take its flows"));
                    }
                    let t = rx.recv_timeout(WORKER_ANSWER).map_err(|_| format!("worker {w} did not answer for {} s", WORKER_ANSWER.as_secs()))?;
                    done.add(&t);
                }
            }
            Ok(done)
        })();
        self.flags.set_syncing(false);
        result
    }
}
