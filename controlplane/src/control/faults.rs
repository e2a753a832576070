//! Faults the control loop watches for and raises as events: a worker whose heartbeat
//! stopped, an interface down or gone (and re-attached when it returns), a deny log
//! or standard error that cannot be written, a sync peer gone silent or behind.

use std::time::{Duration, Instant, SystemTime};

use holdfast_dataplane::run::{LinkReport, Running};
use holdfast_dataplane::sys::LinkState;

use super::denylog::Logger;
use super::saturation::{Report, Saturation};
use super::view::LinkView;

/// A worker publishes every 2 ms while its loop runs (idle or not); one that has not
/// for this long is stuck — in an endless loop, or blocked — and raises the
/// `worker_stalled` fault.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// How long a stop waits for the workers to finish before leaving a stuck one behind.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Watches each worker's heartbeat; says which have stalled.
#[derive(Debug)]
pub struct StallWatch {
    last: Vec<(u64, Instant)>,
}

impl StallWatch {
    pub fn new(beats: &[u64], now: Instant) -> StallWatch {
        StallWatch { last: beats.iter().map(|&b| (b, now)).collect() }
    }

    /// Records the heartbeats read at `now`; returns, per worker, how long it has gone
    /// without one.
    pub fn update(&mut self, beats: &[u64], now: Instant) -> Vec<Duration> {
        self.last
            .iter_mut()
            .zip(beats)
            .map(|(last, &b)| {
                if b != last.0 {
                    *last = (b, now);
                }
                now.saturating_duration_since(last.1)
            })
            .collect()
    }
}

fn say(t: Option<super::saturation::Transition>) {
    if let Some(t) = t {
        crate::logln!("holdfast: {}", t.describe(&Report::default()));
    }
}

/// Raises and clears `worker_stalled` from the heartbeats; returns the stalled workers.
/// A stalled worker in `ended` is said to have ended (its thread is gone: a panic),
/// not to be stuck.
pub(super) fn stalls(sat: &mut Saturation, watch: &mut StallWatch, beats: &[u64], ended: &[usize]) -> Vec<usize> {
    let silent = watch.update(beats, Instant::now());
    let mut stalled = Vec::new();
    for (w, quiet) in silent.iter().enumerate() {
        let on = *quiet >= STALL_AFTER;
        if on {
            stalled.push(w);
        }
        let detail = if on {
            let why = if ended.contains(&w) { "its thread has ended (a panic: its message is in the log)" } else { "its loop is stuck" };
            format!(
                "worker {w} has published nothing for {:.1} s: {why}, its queue's frames are not forwarded, and systemd's watchdog is no longer fed",
                quiet.as_secs_f64()
            )
        } else {
            format!("worker {w} runs again")
        };
        say(sat.fault("worker_stalled", w, on, quiet.as_secs_f64(), detail, SystemTime::now()));
    }
    stalled
}

const ZONES: [&str; 2] = ["outside", "inside"];

/// `interface_down` for each side not up at start.
pub(super) fn links_at_start(sat: &mut Saturation, running: &Running, names: &[String; 2]) {
    for (k, st) in running.link_states().iter().enumerate() {
        if !st.is_up() {
            let detail = format!("{} ({}) is {} at start: nothing is forwarded to it", names[k], ZONES[k], st.name());
            say(sat.fault("interface_down", k, true, 0.0, detail, SystemTime::now()));
        }
    }
}

/// Looks at the links (the dataplane re-attaches what came back); a side that is down
/// or gone is a fault. Updates `links`, the view's copy.
pub(super) fn links(sat: &mut Saturation, running: &mut Running, links: &mut [LinkView; 2]) {
    let LinkReport { changes, reattached } = running.watch_links();
    for ch in &changes {
        let zone = ZONES[ch.side];
        let detail = match ch.to {
            LinkState::Gone => format!("{} ({zone}) is gone: frames to it are dropped as link_down; Holdfast re-attaches when it returns", ch.name),
            LinkState::Down { .. } => format!("{} ({zone}) is down: frames to it are dropped as link_down", ch.name),
            LinkState::Up { .. } => format!("{} ({zone}) is up", ch.name),
        };
        crate::logln!("holdfast: interface {} ({zone}): {} -> {}", ch.name, ch.from.name(), ch.to.name());
        say(sat.fault("interface_down", ch.side, !ch.to.is_up(), 0.0, detail, SystemTime::now()));
    }
    match &reattached {
        Some(Ok(())) => {
            for (k, st) in running.link_states().iter().enumerate() {
                if links[k].ifindex != st.ifindex() || !links[k].up {
                    links[k].reattaches += 1;
                }
            }
            crate::logln!("holdfast: re-attached: every worker's sockets re-bound, the XDP program attached; tables kept");
        }
        Some(Err(e)) => crate::logln!("holdfast: re-attaching failed: {e}; retrying every second (systemd's watchdog is not fed meanwhile)"),
        None => {}
    }
    // Queues no worker binds (the NIC's queue count changed under the appliance):
    // the program drops what RSS puts there, unjudged and uncounted by the workers.
    for (k, extra) in running.unbound_queues().into_iter().enumerate() {
        let i = &running.interfaces()[k];
        let detail = if extra > 0 {
            format!(
                "{} ({}) receives on {} queues but the workers bind {}: frames on the other {extra} are dropped unjudged; ethtool -L {} combined {}, or restart with {} workers",
                i.name,
                ZONES[k],
                i.queues + extra,
                i.queues,
                i.name,
                i.queues,
                i.queues + extra
            )
        } else {
            format!("{} ({}) receives on the queues the workers bind", i.name, ZONES[k])
        };
        say(sat.fault("queues_unbound", k, extra > 0, f64::from(extra), detail, SystemTime::now()));
    }
    for (k, st) in running.link_states().iter().enumerate() {
        links[k].state = st.name().to_string();
        links[k].up = st.is_up() && running.reattach_pending().is_none();
        links[k].ifindex = st.ifindex();
    }
}

/// `deny_log_write` while the deny log cannot be written.
pub(super) fn deny_log(sat: &mut Saturation, logger: &Logger) {
    let failing = logger.stats.failing.load(std::sync::atomic::Ordering::Relaxed);
    let lost = logger.stats.write_errors.load(std::sync::atomic::Ordering::Relaxed);
    let detail = if failing {
        format!("the deny log cannot be written ({lost} line(s) lost so far): the disk may be full")
    } else {
        "the deny log is written again".to_string()
    };
    say(sat.fault("deny_log_write", 0, failing, lost as f64, detail, SystemTime::now()));
}

/// `stderr_write` while the appliance's own log lines cannot be written (standard
/// error's reader went away): said where it can still be seen, `/status` and `/metrics`.
pub(super) fn stderr(sat: &mut Saturation) {
    let failing = crate::logline::failing();
    let lost = crate::logline::lost();
    let detail = if failing {
        format!(
            "standard error cannot be written ({lost} log line(s) lost so far): its reader (the journal, a pipe, a terminal) is gone; the appliance runs on"
        )
    } else {
        "standard error is written again".to_string()
    };
    say(sat.fault("stderr_write", 0, failing, lost as f64, detail, SystemTime::now()));
}

/// The helper threads, in the order `thread_ended` numbers them.
pub(super) const HELPERS: [&str; 3] = ["the control endpoint (/metrics, /status, the control commands)", "the sync endpoint", "the deny log"];

/// `thread_ended` for each helper thread (in [`HELPERS`]' order) that ended while
/// the appliance runs; true when any has. It stays raised: the thread does not come
/// back until a restart.
pub(super) fn helpers(sat: &mut Saturation, ended: [Option<&str>; 3]) -> bool {
    for (k, why) in ended.iter().enumerate() {
        if let Some(why) = why {
            let detail =
                format!("the thread of {} has ended ({why}): what it does is not done until a restart; systemd's watchdog is no longer fed", HELPERS[k]);
            say(sat.fault("thread_ended", k, true, 0.0, detail, SystemTime::now()));
        }
    }
    ended.iter().any(Option::is_some)
}

/// The sync peer: `sync_lost` while it is silent (after it was heard once), and
/// `sync_backlog` while more than half the resend queue waits for its ACKs, or more
/// than half the send backlog's bound waits to be sent (a slow or lossy link, a peer
/// that does not acknowledge; a full backlog is dropped and the table sent again).
pub(super) fn sync(sat: &mut Saturation, status: &serde_json::Value, resend_limit: usize) {
    if !status.is_object() {
        return;
    }
    let heard = status["last_heard_s"].as_f64();
    let lost = heard.is_some() && status["peer_alive"] == false;
    let detail = match heard {
        Some(s) if lost => format!("the sync peer has not been heard for {s:.1} s"),
        _ => "the sync peer is heard again".to_string(),
    };
    say(sat.fault("sync_lost", 0, lost, heard.unwrap_or(0.0), detail, SystemTime::now()));
    let queued = status["resend_queue"].as_u64().unwrap_or(0);
    let waiting = status["send_backlog"].as_u64().unwrap_or(0);
    let bound = status["send_backlog_limit"].as_u64().unwrap_or(u64::MAX);
    let backlog = (resend_limit > 0 && queued as usize > resend_limit / 2) || waiting > bound / 2;
    let detail = if backlog {
        format!(
            "{queued} sync message(s) wait for the peer's ACK (queue of {resend_limit}; {} dropped so far), {waiting} wait to be sent (at most {bound}; dropped {} time(s) so far)",
            status["resend_overflow"], status["backlog_overflows"]
        )
    } else {
        "the sync resend queue drained".to_string()
    };
    say(sat.fault("sync_backlog", 0, backlog, (queued + waiting) as f64, detail, SystemTime::now()));
}
