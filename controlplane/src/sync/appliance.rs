//! The running appliance's tables for the sync endpoint: each worker's change feed (a
//! bounded ring it fills as flows are created, change and go), a full sweep that asks
//! every worker for its table a slice per housekeeping round (`Command::Export`, as
//! `holdfast snapshot` does), and a takeover that hands each worker the synced flows it
//! owns (`Command::Adopt`) while every worker drops what it receives as `syncing`.

use std::collections::VecDeque;
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

    fn adopt(&mut self, flows: &mut dyn Iterator<Item = SyncedFlow>) -> Result<AdoptTally, String> {
        let n = self.commander.workers();
        let hasher = &self.hasher;
        // Nothing is judged against a table that does not hold the flows yet.
        self.flags.set_syncing(true);
        let result = adopt_everywhere(&self.commander, flows.map(|f| (if n == 1 { 0 } else { owner_of(hasher.owner_hash(&f.key().0), n) }, f)));
        self.flags.set_syncing(false);
        result
    }
}

/// Chunks of a worker's flows sent at once at most: a worker adopts one chunk a
/// housekeeping round and finds the next one waiting.
const IN_FLIGHT: usize = 2;

/// Hands each flow to its owner (`(owner, flow)`), in chunks of `ADOPT_CHUNK`, every
/// worker at once: a chunk goes as soon as it is full (while the rest are still
/// sorted out), `IN_FLIGHT` ahead. One worker after another, each chunk waiting for
/// the worker's next round after the whole cache was sorted, took 1.5x as long on two
/// workers (docs/sync.md).
fn adopt_everywhere(commander: &Commander, flows: impl Iterator<Item = (usize, SyncedFlow)>) -> Result<AdoptTally, String> {
    let mut h = Handout::new(commander);
    for (w, f) in flows {
        h.push(w, f)?;
    }
    h.finish()
}

struct Handout<'a> {
    commander: &'a Commander,
    /// The chunk each worker's flows go into now.
    filling: Vec<Vec<SyncedFlow>>,
    /// Full chunks not yet sent.
    ready: Vec<VecDeque<Vec<SyncedFlow>>>,
    replies: Vec<(crossbeam_channel::Sender<AdoptTally>, crossbeam_channel::Receiver<AdoptTally>)>,
    in_flight: Vec<usize>,
    done: AdoptTally,
}

impl<'a> Handout<'a> {
    fn new(commander: &'a Commander) -> Handout<'a> {
        let n = commander.workers();
        Handout {
            commander,
            filling: (0..n).map(|_| Vec::new()).collect(),
            ready: (0..n).map(|_| VecDeque::new()).collect(),
            replies: (0..n).map(|_| crossbeam_channel::bounded(IN_FLIGHT)).collect(),
            in_flight: vec![0; n],
            done: AdoptTally::default(),
        }
    }

    fn push(&mut self, w: usize, f: SyncedFlow) -> Result<(), String> {
        let chunk = self.filling.get_mut(w).ok_or_else(|| format!("no worker {w}"))?;
        chunk.push(f);
        if chunk.len() == ADOPT_CHUNK {
            let full = std::mem::take(chunk);
            self.ready[w].push_back(full);
            // Answers that came meanwhile make room for the chunks that wait.
            for v in 0..self.in_flight.len() {
                while let Ok(t) = self.replies[v].1.try_recv() {
                    self.done.add(&t);
                    self.in_flight[v] -= 1;
                }
                self.send(v)?;
            }
        }
        Ok(())
    }

    /// Sends worker `w` what is ready for it while fewer than `IN_FLIGHT` are out.
    fn send(&mut self, w: usize) -> Result<(), String> {
        while self.in_flight[w] < IN_FLIGHT {
            let Some(flows) = self.ready[w].pop_front() else { break };
            if !self.commander.send(w, Command::Adopt { flows, reply: self.replies[w].0.clone() }) {
                return Err(format!("worker {w} did not take its flows (its command queue is full, or it stopped)"));
            }
            self.in_flight[w] += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<AdoptTally, String> {
        for w in 0..self.filling.len() {
            let rest = std::mem::take(&mut self.filling[w]);
            if !rest.is_empty() {
                self.ready[w].push_back(rest);
            }
            self.send(w)?;
        }
        loop {
            let waiting: Vec<usize> = (0..self.in_flight.len()).filter(|&w| self.in_flight[w] > 0).collect();
            if waiting.is_empty() {
                return Ok(self.done);
            }
            let mut sel = crossbeam_channel::Select::new();
            for &w in &waiting {
                sel.recv(&self.replies[w].1);
            }
            let op = sel.select_timeout(WORKER_ANSWER).map_err(|_| format!("worker(s) {waiting:?} did not answer for {} s", WORKER_ANSWER.as_secs()))?;
            let w = waiting[op.index()];
            let t = op.recv(&self.replies[w].1).map_err(|_| format!("worker {w} stopped"))?;
            self.done.add(&t);
            self.in_flight[w] -= 1;
            self.send(w)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use holdfast_dataplane::control::Command;
    use holdfast_dataplane::run::Commander;
    use holdfast_pipeline::engine::SyncedFlow;

    use super::{ADOPT_CHUNK, adopt_everywhere};

    fn flow(w: u16, i: u32) -> SyncedFlow {
        crate::sync::udp_flow(u128::from(i), w)
    }

    /// Three workers (threads reading their command queues as a worker's housekeeping
    /// does) get their flows at the same time, the next chunk already queued when they
    /// answer; each gets exactly its own, in order, and the tallies add up. A worker
    /// holds its first answer until every worker has its first chunk: one worker after
    /// another, the first would wait alone.
    #[test]
    fn every_worker_adopts_at_once_with_its_next_chunk_waiting() {
        const N: usize = 3;
        let sizes = [3 * ADOPT_CHUNK + 5, ADOPT_CHUNK, 7];
        let started = Arc::new(AtomicUsize::new(0));
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..N {
            let (tx, rx) = crossbeam_channel::bounded::<Command>(64);
            queues.push(tx);
            let started = Arc::clone(&started);
            workers.push(std::thread::spawn(move || {
                let (mut got, mut waiting_next, mut alone) = (Vec::new(), 0, false);
                while let Ok(c) = rx.recv_timeout(Duration::from_secs(2)) {
                    let Command::Adopt { flows, reply } = c else { panic!("only adopt") };
                    if got.is_empty() {
                        started.fetch_add(1, Ordering::SeqCst);
                        let t = Instant::now();
                        while started.load(Ordering::SeqCst) < N {
                            if t.elapsed() > Duration::from_secs(2) {
                                alone = true;
                                break;
                            }
                            std::thread::yield_now();
                        }
                    }
                    waiting_next += usize::from(!rx.is_empty());
                    got.extend(flows.iter().map(|f| (f.sport, f.src)));
                    reply.send(holdfast_pipeline::engine::AdoptTally { adopted: flows.len() as u64, evicted: 1, ..Default::default() }).unwrap();
                }
                (got, waiting_next, alone)
            }));
        }
        // Interleaved as a cache hands them out: a flow for each worker in turn.
        let most = *sizes.iter().max().unwrap();
        let flows = (0..most as u32).flat_map(|i| (0..N).filter(move |&w| (i as usize) < sizes[w]).map(move |w| (w, flow(w as u16, i))));
        let t = adopt_everywhere(&Commander::new(queues), flows).unwrap();
        assert_eq!(t.adopted, sizes.iter().sum::<usize>() as u64);
        assert_eq!(t.evicted, 4 + 1 + 1, "one tally a chunk: 4 + 1 + 1 chunks");
        for (w, h) in workers.into_iter().enumerate() {
            let (got, waiting_next, alone) = h.join().unwrap();
            assert!(!alone, "worker {w} had its first chunk while another had none");
            assert_eq!(got.len(), sizes[w], "worker {w}");
            assert!(got.iter().enumerate().all(|(i, &(ww, src))| usize::from(ww) == w && src == i as u128), "worker {w}'s own flows, in order");
            if w == 0 {
                assert!(waiting_next >= 1, "worker 0 found its next chunk queued: {waiting_next}");
            }
        }
    }

    /// A worker whose queue is gone fails the takeover with its number.
    #[test]
    fn a_stopped_worker_fails_the_takeover_by_name() {
        let (tx0, rx0) = crossbeam_channel::bounded::<Command>(64);
        let (tx1, rx1) = crossbeam_channel::bounded::<Command>(64);
        drop(rx1);
        let answer = std::thread::spawn(move || {
            while let Ok(Command::Adopt { flows, reply }) = rx0.recv_timeout(Duration::from_secs(2)) {
                let _ = reply.send(holdfast_pipeline::engine::AdoptTally { adopted: flows.len() as u64, ..Default::default() });
            }
        });
        let flows = (0..10u32).map(|i| ((i % 2) as usize, flow((i % 2) as u16, i)));
        let e = adopt_everywhere(&Commander::new(vec![tx0, tx1]), flows).unwrap_err();
        assert!(e.contains("worker 1 did not take its flows"), "{e}");
        answer.join().unwrap();
    }
}
