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
}

impl Workers for Commander {
    fn count(&self) -> usize {
        self.workers()
    }
    fn send(&self, w: usize, c: Command) -> bool {
        Commander::send(self, w, c)
    }
}

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] config::TokenError),
    #[error("worker {worker} did not take the new configuration within {} s (stopped or stuck); generations now differ between workers", .waited.as_secs_f64())]
    Stuck { worker: usize, waited: Duration },
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
    /// whose token file does not read) changes nothing.
    pub fn reload(&mut self, workers: &dyn Workers) -> Result<Applied, ReloadError> {
        let new = config::load(&self.path)?;
        // The token is re-read; a bad token file rejects the reload.
        let token = match &new.control.token_file {
            Some(p) => {
                let t = config::read_token(p)?;
                if let Some(w) = config::token_warning(p) {
                    eprintln!("holdfast: WARNING: {w}");
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
        for w in 0..n {
            let cmd = || Command::Reconfigure { generation, engine: new.engine, policy: Arc::clone(&new.classifier), recheck, log_rate: run::share(rate, n) };
            let start = Instant::now();
            while !workers.send(w, cmd()) {
                if start.elapsed() > self.take_timeout {
                    return Err(ReloadError::Stuck { worker: w, waited: self.take_timeout });
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
    /// anything (stuck).
    struct Fake {
        got: Vec<RefCell<Vec<(u64, bool, u32)>>>,
        refuse: bool,
    }

    impl Fake {
        fn new(n: usize) -> Fake {
            Fake { got: (0..n).map(|_| RefCell::new(Vec::new())).collect(), refuse: false }
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
        let a = r.reload(&w).unwrap();
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
        let e = r.reload(&w).unwrap_err();
        assert!(matches!(&e, ReloadError::Config(c) if c.line == 1), "{e}");
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(w.got.iter().all(|g| g.borrow().is_empty()), "no worker was told anything");
        assert_eq!(r.generation(), 0);
        // A token file that does not read rejects the reload too.
        std::fs::write(&path, BASE.to_string() + "control: { token_file: missing.token }\n").unwrap();
        assert!(matches!(r.reload(&w), Err(ReloadError::Token(t)) if t.path.ends_with("missing.token")));
        assert_eq!(r.generation(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stuck_worker_is_named_and_the_wait_is_bounded() {
        let d = dir("stuck");
        let path = d.join("hf.yaml");
        std::fs::write(&path, BASE).unwrap();
        let mut r = Reloader::new(&path, config::load(&path).unwrap());
        r.take_timeout = Duration::from_millis(50);
        let mut w = Fake::new(2);
        w.refuse = true;
        let t = Instant::now();
        let e = r.reload(&w).unwrap_err();
        assert!(matches!(e, ReloadError::Stuck { worker: 1, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(r.generation(), 0, "not every worker runs it: the generation stays");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
