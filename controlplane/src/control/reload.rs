//! Reloading the configuration without losing a connection: the file is read and
//! compiled on the control thread; valid, every worker is handed it on its command
//! queue (it swaps it in between bursts and walks its table once); invalid, nothing
//! changes. The workers are behind [`Workers`], so that this is tested without root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_dataplane::control::Command;
use holdfast_dataplane::run::{self, Commander};

use crate::config::{self, Config, ConfigError, DenyOutput, OnReload};

/// What a reload needs of the workers.
pub trait Workers {
    fn count(&self) -> usize;
    /// Hands worker `w` a command without waiting; false when its queue is full or it
    /// has stopped.
    fn send(&self, w: usize, c: Command) -> bool;
    /// Whether worker `w`'s queue has room for a command now.
    fn has_room(&self, w: usize) -> bool;
}

impl Workers for Commander {
    fn count(&self) -> usize {
        self.workers()
    }
    fn send(&self, w: usize, c: Command) -> bool {
        Commander::send(self, w, c)
    }
    fn has_room(&self, w: usize) -> bool {
        Commander::has_room(self, w)
    }
}

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] config::TokenError),
    /// Found before any worker was told: nothing changed.
    #[error("worker {worker} is stalled (no heartbeat for a second or more; see /status): it could not take the new configuration, so no worker is given it")]
    Stalled { worker: usize },
    /// Found before any worker was told: nothing changed.
    #[error("worker {worker}'s command queue stayed full for {} s (stuck or overloaded): no worker is given the new configuration", .waited.as_secs_f64())]
    Busy { worker: usize, waited: Duration },
    /// A queue that had room filled up while the commands went out (another thread
    /// sent to it meanwhile): workers before it run the new configuration. The
    /// generation is spent, so that its number never names two configurations.
    #[error(
        "worker {worker} did not take the new configuration within {} s although its queue had room a moment before; workers {took:?} run generation {generation}, the others the one before it: reload again",
        .waited.as_secs_f64()
    )]
    Stuck { worker: usize, waited: Duration, generation: u64, took: Vec<usize> },
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub recheck: bool,
    /// Settings changed in the file that only a restart applies (left as they were).
    pub restart_needed: Vec<String>,
    /// The deny log's output now (reopened by the caller: logrotate).
    pub log: DenyOutput,
    /// The token of `control.token_file` now (re-read: rotation by reload).
    pub token: Option<String>,
}

/// The configuration a running appliance started with, the one it runs, and its
/// generation (reloads applied).
pub struct Reloader {
    path: PathBuf,
    started: Config,
    current: Config,
    generation: u64,
    /// How long a worker's full command queue is waited for (it takes commands every
    /// 2 ms; its queue holds 64).
    pub take_timeout: Duration,
}

impl Reloader {
    pub fn new(path: &Path, cfg: Config) -> Reloader {
        Reloader { path: path.to_path_buf(), started: cfg.clone(), current: cfg, generation: 0, take_timeout: Duration::from_secs(2) }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn current(&self) -> &Config {
        &self.current
    }

    /// Re-reads the file and hands it to every worker. A file that does not load (or
    /// whose token file does not read) changes nothing; nor does a worker in `stalled`
    /// or one whose queue stays full: every worker runs one configuration, or the
    /// reload is refused before any is told.
    pub fn reload(&mut self, workers: &dyn Workers, stalled: &[usize]) -> Result<Applied, ReloadError> {
        let new = config::load(&self.path)?;
        // The token is re-read; a bad token file rejects the reload.
        let token = match &new.control.token_file {
            Some(p) => {
                let t = config::read_token(p)?;
                if let Some(w) = config::token_warning(p) {
                    crate::logln!("holdfast: WARNING: {w}");
                }
                Some(t)
            }
            None => None,
        };
        let mut restart = self.started.restart_needed(&new);
        let log_was = self.started.log.denials != DenyOutput::Off;
        let log_now = new.log.denials != DenyOutput::Off;
        if !log_was && log_now {
            restart.push(format!("log.denials: off -> {} (the deny log queues are made at start)", new.log.denials));
        }
        let generation = self.generation + 1;
        let rate = if log_now { new.log.rate_limit } else { 0 };
        let recheck = new.on_reload == OnReload::Recheck;
        let n = workers.count();
        // A stalled worker would queue the command and never run it (the reload would
        // read as applied); a full queue would take it from some workers and not from
        // the rest. Both are refused before anything is sent.
        if let Some(&w) = stalled.iter().min() {
            return Err(ReloadError::Stalled { worker: w });
        }
        let start = Instant::now();
        while let Some(w) = (0..n).find(|&w| !workers.has_room(w)) {
            if start.elapsed() > self.take_timeout {
                return Err(ReloadError::Busy { worker: w, waited: self.take_timeout });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for w in 0..n {
            let cmd = || Command::Reconfigure { generation, engine: new.engine, policy: Arc::clone(&new.classifier), recheck, log_rate: run::share(rate, n) };
            let start = Instant::now();
            while !workers.send(w, cmd()) {
                if start.elapsed() > self.take_timeout {
                    self.generation = generation;
                    return Err(ReloadError::Stuck { worker: w, waited: self.take_timeout, generation, took: (0..w).collect() });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.generation = generation;
        let applied = Applied { generation, recheck, restart_needed: restart, log: new.log.denials.clone(), token };
        self.current = new;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Workers that record what they are handed; `refuse` makes worker 1 never take
    /// anything (stuck), and `full` says so of its queue beforehand (without it, the
    /// queue seems to have room and fills as the commands go out).
    struct Fake {
        got: Vec<RefCell<Vec<(u64, bool, u32)>>>,
        refuse: bool,
        full: bool,
    }

    impl Fake {
        fn new(n: usize) -> Fake {
            Fake { got: (0..n).map(|_| RefCell::new(Vec::new())).collect(), refuse: false, full: false }
        }
    }

    impl Workers for Fake {
        fn count(&self) -> usize {
            self.got.len()
        }
        fn send(&self, w: usize, c: Command) -> bool {
            if self.refuse && w == 1 {
                return false;
            }
            if let Command::Reconfigure { generation, recheck, log_rate, .. } = c {
                self.got[w].borrow_mut().push((generation, recheck, log_rate));
            }
            true
        }
        fn has_room(&self, w: usize) -> bool {
            !(self.full && w == 1)
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hf-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const BASE: &str = "conntrack: { capacity: 1000 }\nlog: { denials: off }\npolicy:\n  rules:\n    - { proto: tcp, dst_port: 80, action: allow }\n";

    #[test]
    fn a_good_file_reaches_every_worker_and_says_what_needs_a_restart() {
        let d = dir("good");
        let path = d.join("hf.yaml");
        std::fs::write(&path, BASE).unwrap();
        let mut r = Reloader::new(&path, config::load(&path).unwrap());
        let w = Fake::new(3);
        std::fs::write(&path, BASE.replace("capacity: 1000", "capacity: 2000").replace("policy:\n", "policy:\n  on_reload: recheck\n")).unwrap();
        let a = r.reload(&w, &[]).unwrap();
        assert_eq!((a.generation, a.recheck), (1, true));
        assert_eq!(a.restart_needed, vec!["conntrack.capacity: 1000 -> 2000".to_string()]);
        for g in &w.got {
            assert_eq!(*g.borrow(), vec![(1, true, 0)], "one command each, generation 1");
        }
        assert_eq!(r.generation(), 1);
        assert_eq!(r.current().engine.capacity, 2000, "the current config is the file's (the table keeps its size)");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_bad_file_changes_nothing_and_names_the_spot() {
        let d = dir("bad");
        let path = d.join("hf.yaml");
        std::fs::write(&path, BASE).unwrap();
        let mut r = Reloader::new(&path, config::load(&path).unwrap());
        let w = Fake::new(2);
        std::fs::write(&path, BASE.replace("capacity: 1000", "capacity: 1000, colour: blue")).unwrap();
        let e = r.reload(&w, &[]).unwrap_err();
        assert!(matches!(&e, ReloadError::Config(c) if c.line == 1), "{e}");
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(w.got.iter().all(|g| g.borrow().is_empty()), "no worker was told anything");
        assert_eq!(r.generation(), 0);
        // A token file that does not read rejects the reload too.
        std::fs::write(&path, BASE.to_string() + "control: { token_file: missing.token }\n").unwrap();
        assert!(matches!(r.reload(&w, &[]), Err(ReloadError::Token(t)) if t.path.ends_with("missing.token")));
        assert_eq!(r.generation(), 0);
        // A file caught between an editor's truncate and its write (or only comments):
        // refused, not taken for "every default", which denies everything.
        for caught in ["", "\n", "# holdfast\n---\n  \n"] {
            std::fs::write(&path, caught).unwrap();
            let e = r.reload(&w, &[]).unwrap_err();
            assert!(e.to_string().contains("holds no settings"), "{caught:?}: {e}");
        }
        assert!(w.got.iter().all(|g| g.borrow().is_empty()), "no worker was told anything");
        assert_eq!((r.generation(), r.current().classifier.rules().len()), (0, 1), "the running rules stay");
        // The defaults, asked for in so many words, are a configuration like any other.
        std::fs::write(&path, "{}\n").unwrap();
        assert_eq!(r.reload(&w, &[]).unwrap().generation, 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stalled_or_full_worker_refuses_the_reload_before_any_worker_is_told() {
        let d = dir("stuck");
        let path = d.join("hf.yaml");
        std::fs::write(&path, BASE).unwrap();
        let mut r = Reloader::new(&path, config::load(&path).unwrap());
        r.take_timeout = Duration::from_millis(50);
        std::fs::write(&path, BASE.replace("dst_port: 80", "dst_port: 443")).unwrap();
        // Stalled: its queue has room, but it would never run the command.
        let w = Fake::new(3);
        let e = r.reload(&w, &[2, 1]).unwrap_err();
        assert!(matches!(e, ReloadError::Stalled { worker: 1 }), "{e}");
        assert!(w.got.iter().all(|g| g.borrow().is_empty()), "no worker was told anything");
        // Full for longer than the wait: refused, bounded, nobody told.
        let mut w = Fake::new(3);
        (w.refuse, w.full) = (true, true);
        let t = Instant::now();
        let e = r.reload(&w, &[]).unwrap_err();
        assert!(matches!(e, ReloadError::Busy { worker: 1, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(w.got.iter().all(|g| g.borrow().is_empty()), "worker 0 was not told either");
        assert_eq!(r.generation(), 0, "nothing changed");
        // Room a moment before, then full as the commands go out: said as it is, and the
        // generation's number is not given to another configuration.
        w.full = false;
        let e = r.reload(&w, &[]).unwrap_err();
        match &e {
            ReloadError::Stuck { worker: 1, generation: 1, took, .. } => assert_eq!(took, &[0]),
            e => panic!("{e}"),
        }
        assert_eq!(*w.got[0].borrow(), vec![(1, false, 0)]);
        assert_eq!(r.generation(), 1, "generation 1 is spent");
        let w = Fake::new(3);
        assert_eq!(r.reload(&w, &[]).unwrap().generation, 2, "the next reload reaches every worker as a new generation");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
