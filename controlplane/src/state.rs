//! State across restarts: the workers' tables written to `state.snapshot_dir` when the
//! appliance stops, and read back into the new workers' tables before the first frame
//! is judged (the bytes are `holdfast_pipeline::snapshot`'s; docs/snapshots.md).
//!
//! Writing never damages a good file: the snapshot goes to a temporary file, is synced,
//! and renamed over the old one (then the directory is synced). Reading a damaged
//! file is all or nothing: a file from another format version, truncated, or failing
//! a checksum is an error that names the byte, the tables are thrown away and the
//! appliance starts clean — never with half a file. A good file holding more than the
//! tables can take (a smaller `conntrack.capacity` or `ipv6_share`, or one worker's
//! share under another worker count) keeps what a full table keeps at run time —
//! assured flows first — and says loudly how many were left out: refusing it would
//! lose every flow. A file that was read (or refused) is renamed aside, so that a
//! later crash does not bring back flows that have ended since.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_pipeline::engine::{RestoreError, Restored};
use holdfast_pipeline::flow::owner_of;
use holdfast_pipeline::snapshot::{self, Block, BlockKind, FlowRecord, FormatError, HEADER_LEN, Header, TombRecord};
use holdfast_pipeline::{Engine, FlowHasher, Instant};
use serde_json::{Value, json};

/// The snapshot's name in `state.snapshot_dir`.
pub const FILE: &str = "holdfast.snapshot";
const TEMP: &str = "holdfast.snapshot.tmp";
/// Where a snapshot goes once it was restored, and where one that was refused goes.
pub const RESTORED: &str = "holdfast.snapshot.restored";
pub const REFUSED: &str = "holdfast.snapshot.refused";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{}: the flow at byte {offset} is listed twice: the file is damaged", .path.display())]
    Duplicate { path: PathBuf, offset: u64 },
    #[error("{}: {trailing} bytes after the end block", .path.display())]
    Trailing { path: PathBuf, trailing: u64 },
    /// Another process holds the directory (`claim`).
    #[error("{}: another holdfast (pid {pid}) keeps its snapshots here: two appliances writing one snapshot would each lose the other's tables (give each its own state.snapshot_dir)", .path.display())]
    InUse { path: PathBuf, pid: String },
    /// A snapshot someone else could have written: its flows would pass the firewall.
    #[error("{}: {why}: not restored, as its flows would pass the firewall (a snapshot must be Holdfast's own: owned by its user or root, writable by no one else)", .path.display())]
    Untrusted { path: PathBuf, why: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { what, path, source }
}

/// What [`write`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub path: PathBuf,
    pub flows: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Workers whose tables could not be taken (stuck or gone): their flows are not in
    /// the snapshot.
    pub missing_workers: Vec<usize>,
}

impl Written {
    pub fn json(&self) -> Value {
        json!({"path": self.path, "flows": self.flows, "tombstones": self.tombstones, "bytes": self.bytes, "seconds": self.seconds, "missing_workers": self.missing_workers})
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes the tables of `engines` (one per worker; `None` for a worker whose table is
/// lost), taken at pipeline time `at`, to `dir`/[`FILE`], atomically. The previous
/// snapshot stays in place until the new one is complete and synced.
pub fn write(dir: &Path, engines: &[Option<&Engine>], at: Instant, seed: u64) -> Result<Written, StateError> {
    let mut w = Writer::create(dir, engines.len(), seed)?;
    for (k, e) in engines.iter().enumerate() {
        let Some(e) = e else {
            w.missing(k);
            continue;
        };
        w.tomb_sets(e.tombstone_sets());
        for (n, mut bytes) in snapshot::chunks(e.export(at)) {
            w.block(BlockKind::Flows, k, n, &mut bytes)?;
        }
        for (n, mut bytes) in snapshot::chunks(e.export_tombstones(at)) {
            w.block(BlockKind::Tombstones, k, n, &mut bytes)?;
        }
    }
    w.finish()
}

/// The lock file in `state.snapshot_dir` that [`claim`] holds.
pub const LOCK: &str = "holdfast.lock";

/// A directory claimed by this process for its snapshots (the lock goes with the file
/// handle: dropped, or the process gone, and it is free).
#[derive(Debug)]
pub struct Claim {
    pub dir: PathBuf,
    _lock: File,
}

/// Claims `dir` for this process's snapshots: an exclusive `flock` on its
/// [`LOCK`] file, with this process's pid in it. Two appliances given one directory
/// (a copied config, a template unit with one `StateDirectory`) would restore one
/// table twice and write over each other's snapshot at their stops; the second is
/// refused, naming the first's pid.
pub fn claim(dir: &Path) -> Result<Claim, StateError> {
    std::fs::create_dir_all(dir).map_err(io("creating the snapshot directory", dir))?;
    let path = dir.join(LOCK);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening the lock file", &path))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // A pid is a few digits; whatever else is in the file is not read.
            let mut pid = String::new();
            let _ = (&mut f).take(32).read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StateError::InUse { path, pid: if pid.is_empty() { "unknown".into() } else { pid.to_string() } });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &path)(e)),
    }
    f.set_len(0).and_then(|_| f.write_all(format!("{}\n", std::process::id()).as_bytes())).map_err(io("writing", &path))?;
    Ok(Claim { dir: dir.to_path_buf(), _lock: f })
}

/// One snapshot written at a time in this process: an on-demand one still running at
/// a stop would otherwise share the temporary file with the stop's (each removing or
/// renaming the other's), and the stop's could be lost. The stop's waits for it (once
/// the workers have stopped, an unfinished one fails at once).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A snapshot being written: blocks go to a temporary file (mode 0600) that
/// [`Writer::finish`] syncs and renames into place. Dropped unfinished, it removes the
/// temporary file and the previous snapshot stays.
pub struct Writer {
    dir: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
    header: Header,
    missing: Vec<usize>,
    started: std::time::Instant,
    /// [`WRITING`], held until the writer is finished or dropped (after `Drop` has
    /// removed an unfinished temporary file).
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl Writer {
    /// Starts a snapshot of `workers` tables hashed with `seed`.
    pub fn create(dir: &Path, workers: usize, seed: u64) -> Result<Writer, StateError> {
        let alone = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(dir).map_err(io("creating the snapshot directory", dir))?;
        let temp = dir.join(TEMP);
        // A temporary file left by a crash is removed, and a new one made that did not
        // exist (O_EXCL: a symbolic link planted at its name in a directory others can
        // write is neither followed nor written through, and makes the snapshot fail).
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing the old", &temp)(e)),
            _ => {}
        }
        let file = OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).mode(0o600).open(&temp).map_err(io("creating", &temp))?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            temp,
            header: Header {
                seed_policy: snapshot::SEED_AND_CONSTANTS_CARRIED,
                seed,
                written_unix_ns: 0,
                workers: u16::try_from(workers.max(1)).unwrap_or(u16::MAX),
                tomb_sets: 0,
                flows: 0,
                tombstones: 0,
                build: Header::this_build(),
            },
            missing: Vec::new(),
            started: std::time::Instant::now(),
            _alone: alone,
        };
        // The real header (counts, time) once everything else is written.
        w.write(&[0u8; HEADER_LEN])?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<(), StateError> {
        let out = self.out.as_mut().expect("written before finish");
        out.write_all(b).map_err(io("writing", &self.temp))
    }

    /// The tombstone sets per worker of the tables written.
    pub fn tomb_sets(&mut self, sets: u32) {
        self.header.tomb_sets = sets;
    }

    /// Worker `w`'s table could not be taken: its flows are not in the snapshot.
    pub fn missing(&mut self, w: usize) {
        self.missing.push(w);
    }

    /// Writes `count` records of `payload` as one block of worker `w` (nothing when
    /// there are none), and empties `payload`.
    pub fn block(&mut self, kind: BlockKind, w: usize, count: usize, payload: &mut Vec<u8>) -> Result<(), StateError> {
        if count == 0 {
            return Ok(());
        }
        let b = Block::of(kind, w as u16, count as u32, payload);
        self.write(&b.encode())?;
        self.write(payload)?;
        payload.clear();
        match kind {
            BlockKind::Flows => self.header.flows += count as u64,
            BlockKind::Tombstones => self.header.tombstones += count as u64,
            BlockKind::End => {}
        }
        Ok(())
    }

    /// Ends the file, writes its header, syncs it and renames it over the old snapshot.
    pub fn finish(mut self) -> Result<Written, StateError> {
        self.write(&Block::of(BlockKind::End, 0, 0, &[]).encode())?;
        self.header.written_unix_ns = unix_ns(SystemTime::now());
        let out = self.out.take().expect("finished once");
        let mut file = out.into_inner().map_err(|e| io("writing", &self.temp)(e.into_error()))?;
        let bytes = file.stream_position().map_err(io("writing", &self.temp))?;
        file.seek(SeekFrom::Start(0)).and_then(|_| file.write_all(&self.header.encode())).map_err(io("writing", &self.temp))?;
        file.sync_all().map_err(io("syncing", &self.temp))?;
        drop(file);
        let path = self.dir.join(FILE);
        std::fs::rename(&self.temp, &path).map_err(io("renaming the new snapshot into place", &path))?;
        // The rename itself must reach the disk.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("syncing the snapshot directory", &self.dir))?;
        Ok(Written {
            path,
            flows: self.header.flows,
            tombstones: self.header.tombstones,
            bytes,
            seconds: self.started.elapsed().as_secs_f64(),
            missing_workers: std::mem::take(&mut self.missing),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Unfinished (an error, or abandoned): the partial file goes; a finished one
        // was renamed away and this finds nothing.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// A snapshot found in the directory, its header read and checked.
pub struct Found {
    pub path: PathBuf,
    pub header: Header,
    file: BufReader<Box<dyn Read + Send>>,
    len: u64,
}

/// The snapshot in `dir`, if there is one. `Err` for a file that is there but cannot be
/// read or whose header is wrong (another format version, damaged).
///
/// Restored flows pass the firewall, so the file must be Holdfast's own (as sshd's
/// StrictModes asks of a key): not a symbolic link (one planted there is not
/// followed), owned by this process's user or root, writable by no one else. Checked
/// on the opened file, so that it cannot be swapped between the check and the read.
pub fn find(dir: &Path) -> Result<Option<Found>, StateError> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(FILE);
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateError::Untrusted { path, why: "a symbolic link".into() });
        }
        Err(e) => return Err(io("opening", &path)(e)),
    };
    let meta = file.metadata().map_err(io("reading", &path))?;
    if !meta.is_file() {
        return Err(io("reading", &path)(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let me = holdfast_dataplane::sys::euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(StateError::Untrusted { path, why: format!("owned by uid {}, not by this process's ({me}) or root", meta.uid()) });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(StateError::Untrusted { path, why: format!("mode {:o}: writable by its group or by everyone", meta.mode() & 0o7777) });
    }
    open(path, Box::new(file), meta.len()).map(Some)
}

/// A snapshot held in memory (tests, fuzzing), as if read from `name`.
pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Found, StateError> {
    let len = bytes.len() as u64;
    open(PathBuf::from(name), Box::new(std::io::Cursor::new(bytes)), len)
}

fn open(path: PathBuf, file: Box<dyn Read + Send>, len: u64) -> Result<Found, StateError> {
    let mut file = BufReader::with_capacity(1 << 20, file);
    let mut h = vec![0u8; HEADER_LEN.min(usize::try_from(len).unwrap_or(HEADER_LEN))];
    file.read_exact(&mut h).map_err(io("reading", &path))?;
    let header = Header::decode(&h).map_err(|source| StateError::Format { path: path.clone(), source })?;
    Ok(Found { path, header, file, len })
}

/// What [`restore`] put back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub path: PathBuf,
    pub flows: u64,
    /// Flows whose timeout ran out while the process was down.
    pub expired: u64,
    /// Flows over a (lowered) `per_source_limit`.
    pub over_source_limit: u64,
    /// Flows left out for want of room: only assured entries were left in their
    /// worker's table (a smaller `conntrack.capacity`, or that worker's share under
    /// another worker count).
    pub no_room: u64,
    /// IPv6 flows left out: their worker's IPv6 pool (`conntrack.ipv6_share`) held
    /// only assured flows.
    pub no_ipv6_room: u64,
    /// Restored non-assured entries evicted again to make room for later ones (as a
    /// full table does at run time).
    pub evicted: u64,
    /// Entries of the tables restored into (`conntrack.capacity` x workers), and the
    /// flows the snapshot held.
    pub capacity: u64,
    pub snapshot_flows: u64,
    pub tombstones: u64,
    /// Tombstones with no room (sets merged from more workers, or another
    /// `conntrack.tombstones` size).
    pub tombstones_dropped: u64,
    /// Time between the snapshot and the restore.
    pub down: Duration,
    /// The wall clock read earlier than the snapshot's time: taken as no time down.
    pub clock_went_back: bool,
    pub workers_before: u16,
    pub workers_now: usize,
    pub build: String,
    pub seconds: f64,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "path": self.path, "flows": self.flows, "expired_while_down": self.expired,
            "over_source_limit": self.over_source_limit, "no_room": self.no_room, "no_ipv6_room": self.no_ipv6_room,
            "evicted": self.evicted, "snapshot_flows": self.snapshot_flows, "capacity": self.capacity, "tombstones": self.tombstones,
            "tombstones_dropped": self.tombstones_dropped, "down_s": self.down.as_secs_f64(),
            "clock_went_back": self.clock_went_back, "workers_before": self.workers_before,
            "workers_now": self.workers_now, "written_by": self.build, "seconds": self.seconds,
        })
    }

    pub fn describe(&self) -> String {
        let mut d = format!(
            "state: restored {} flow(s) and {} tombstone(s) from {} in {:.2} s ({} expired during the {:.1} s down{}{}; {} worker(s) then, {} now)",
            self.flows,
            self.tombstones,
            self.path.display(),
            self.seconds,
            self.expired,
            self.down.as_secs_f64(),
            if self.over_source_limit > 0 { format!(", {} over per_source_limit", self.over_source_limit) } else { String::new() },
            if self.clock_went_back { ", the wall clock went back: counted as 0 s" } else { "" },
            self.workers_before,
            self.workers_now,
        );
        if self.no_room + self.no_ipv6_room + self.evicted > 0 {
            d += &format!(
                "\nholdfast: state: WARNING: the snapshot's {} flow(s) did not all fit in these tables ({} entries: conntrack.capacity x workers, each worker its share): \
                 {} left out with only assured flows in their worker's table, {} IPv6 flow(s) left out for conntrack.ipv6_share, {} non-assured entries evicted for later ones; \
                 kept by admission class as a full table keeps them (assured first). Their packets will be judged as new",
                self.snapshot_flows, self.capacity, self.no_room, self.no_ipv6_room, self.evicted
            );
        }
        d
    }
}

/// Reads every block of `found` into `engines` (empty, one per worker, built with the
/// snapshot's seed) at pipeline time `now`: each flow to the worker that owns it under
/// `hasher` and the current worker count, its timers moved on by the time down. On
/// `Err` the engines hold part of the file: the caller must not use them.
pub fn restore(mut found: Found, engines: &mut [Engine], hasher: &FlowHasher, now: Instant) -> Result<Report, StateError> {
    let started = std::time::Instant::now();
    let h = found.header;
    let path = found.path.clone();
    let capacity: u64 = engines.iter().map(|e| e.table().capacity() as u64).sum();
    let written = UNIX_EPOCH + Duration::from_nanos(h.written_unix_ns);
    let (down, clock_went_back) = match SystemTime::now().duration_since(written) {
        Ok(d) => (d, false),
        Err(_) => (Duration::ZERO, true),
    };
    let down_p = holdfast_pipeline::Duration::from(down);
    let n = engines.len();
    // Tombstones are fingerprints of the writer's hash: of no use to engines with
    // another number of sets, or when the writer hashed with foldhash's public
    // constants (policy 1) and this build with constants drawn from the seed.
    let same_sets = engines.iter().all(|e| e.tombstone_sets() == h.tomb_sets) && h.seed_policy == snapshot::SEED_AND_CONSTANTS_CARRIED;
    let mut r = Report { path: path.clone(), down, clock_went_back, workers_before: h.workers, workers_now: n, build: h.build_str(), ..Report::default() };
    let (mut flows_seen, mut tombs_seen) = (0u64, 0u64);
    let mut offset = HEADER_LEN as u64;
    let mut payload = Vec::with_capacity(snapshot::MAX_PAYLOAD);
    let fmt = |source| StateError::Format { path: path.clone(), source };
    loop {
        let mut bh = [0u8; snapshot::BLOCK_HEADER_LEN];
        if found.len.saturating_sub(offset) < bh.len() as u64 {
            return Err(fmt(FormatError::Truncated { offset: found.len }));
        }
        found.file.read_exact(&mut bh).map_err(io("reading", &path))?;
        let b = Block::decode(&bh, offset, h.workers).map_err(fmt)?;
        let body = offset + bh.len() as u64;
        if found.len.saturating_sub(body) < u64::from(b.len) {
            return Err(fmt(FormatError::Truncated { offset: found.len }));
        }
        payload.resize(b.len as usize, 0);
        found.file.read_exact(&mut payload).map_err(io("reading", &path))?;
        b.check(&payload, offset).map_err(fmt)?;
        match b.kind {
            BlockKind::End => {
                offset = body;
                break;
            }
            BlockKind::Flows => {
                let mut at = 0usize;
                for _ in 0..b.count {
                    let (rec, used) = FlowRecord::decode(&payload[at..], body + at as u64).map_err(fmt)?;
                    flows_seen += 1;
                    if flows_seen > h.flows {
                        return Err(fmt(FormatError::Counts { what: "flows", header: h.flows, found: flows_seen }));
                    }
                    let w = if n == 1 { 0 } else { owner_of(hasher.owner_hash(&rec.key), n) };
                    match engines[w].restore(&rec, now, down_p) {
                        Ok(Restored::Flow) => {} // counted from the tables at the end
                        Ok(Restored::Expired) => r.expired += 1,
                        Ok(Restored::OverSourceLimit) => r.over_source_limit += 1,
                        Ok(Restored::NoRoom) => r.no_room += 1,
                        Ok(Restored::NoIpv6Room) => r.no_ipv6_room += 1,
                        Err(RestoreError::Duplicate) => return Err(StateError::Duplicate { path, offset: body + at as u64 }),
                    }
                    at += used;
                }
                if at != payload.len() {
                    return Err(fmt(FormatError::BadBlock { offset, what: "bytes after the block's last record" }));
                }
            }
            BlockKind::Tombstones => {
                for i in 0..b.count as usize {
                    let at = i * snapshot::TOMB;
                    let t = TombRecord::decode(&payload[at..], body + at as u64, h.tomb_sets).map_err(fmt)?;
                    tombs_seen += 1;
                    if tombs_seen > h.tombstones {
                        return Err(fmt(FormatError::Counts { what: "tombstones", header: h.tombstones, found: tombs_seen }));
                    }
                    if !same_sets {
                        r.tombstones_dropped += 1;
                        continue;
                    }
                    // A tombstone has no key, only its hash: with another worker count
                    // the owner is unknown, so every worker remembers it (a tombstone
                    // only names the reason of a drop; it never lets a packet through).
                    let put = if usize::from(h.workers) == n {
                        engines[usize::from(b.worker)].restore_tombstone(&t, now, down_p)
                    } else {
                        engines.iter_mut().fold(false, |any, e| e.restore_tombstone(&t, now, down_p) | any)
                    };
                    if put {
                        r.tombstones += 1;
                    } else {
                        r.tombstones_dropped += 1;
                    }
                }
            }
        }
        offset = body + u64::from(b.len);
    }
    if flows_seen != h.flows {
        return Err(fmt(FormatError::Counts { what: "flows", header: h.flows, found: flows_seen }));
    }
    if tombs_seen != h.tombstones {
        return Err(fmt(FormatError::Counts { what: "tombstones", header: h.tombstones, found: tombs_seen }));
    }
    if offset != found.len {
        return Err(StateError::Trailing { path, trailing: found.len.saturating_sub(offset) });
    }
    r.evicted = engines.iter().map(|e| e.counters().evictions.iter().sum::<u64>()).sum();
    // What is in the tables now: put back, less what later ones evicted again.
    r.flows = engines.iter().map(|e| e.table().len() as u64).sum();
    r.capacity = capacity;
    r.snapshot_flows = h.flows;
    r.seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

/// Renames the snapshot at `path` to `name` beside it (a restored one is never read
/// twice; a refused one is kept for a look, not retried at every start).
pub fn set_aside(path: &Path, name: &str) -> Result<PathBuf, StateError> {
    let to = path.with_file_name(name);
    std::fs::rename(path, &to).map_err(io("moving aside", path))?;
    Ok(to)
}

#[cfg(test)]
mod tests;
