//! The live replayer's two ports: one UMEM, an AF_XDP socket on queue 0 of each of two
//! interfaces (the dataplane's own `xsk::Ports`), and the redirect program on both, so
//! that what the device under test lets through comes back to the replayer instead of
//! the kernel's stack. Interfaces with more than one receive queue are refused.
//!
//! Frames are copied into free UMEM frames and queued per side; `flush` hands them to
//! the kernel. A frame queued on one side first flushes what waits on the other, so the
//! two wires see frames in the order they were queued (copy-mode TX sends during the
//! `sendto` kick). Received frames are handed to a callback and their UMEM frames go
//! straight back to the fill rings.

use std::io;

use crate::bpf::{self, Link, Program, XdpMode, XskMap};
use crate::xsk::{Binding, Desc, FRAME_SIZE, Ports, XdpStats};

/// Descriptors queued on a side before they are flushed anyway.
const BATCH: usize = 64;
/// Free frames sending leaves for the fill rings.
const RESERVE: usize = 4 * BATCH;

#[derive(Debug, Clone)]
pub struct WireConfig {
    /// Interface names: side 0 (`--intf1`), side 1 (`--intf2`).
    pub interfaces: [String; 2],
    pub mode: XdpMode,
    /// UMEM frames (4 KiB each), shared by both sides' receive and transmit.
    pub frames: u32,
    pub ring_size: u32,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig { interfaces: [String::new(), String::new()], mode: XdpMode::Native, frames: 16384, ring_size: 2048 }
    }
}

/// What the ports did, per side.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireStats {
    /// Frames handed to the kernel (TX ring).
    pub queued: [u64; 2],
    /// Frames the kernel reported sent (completion ring).
    pub completed: [u64; 2],
    /// Bytes of queued frames.
    pub bytes: [u64; 2],
    /// Times a frame had to wait for a TX slot or a free UMEM frame.
    pub retried: [u64; 2],
    /// Frames that could not be sent at all (longer than a UMEM frame).
    pub failed: [u64; 2],
    /// Frames received (what came out of the device under test on this side).
    pub received: [u64; 2],
}

pub struct Wire {
    // Field order: the links and program go before the sockets, the sockets before
    // the maps they are in.
    _links: [Link; 2],
    _prog: [Program; 2],
    ports: Ports,
    _maps: [XskMap; 2],
    free: Vec<u64>,
    tx: [Vec<Desc>; 2],
    /// The side queued last: a frame on the other side flushes it first.
    last: usize,
    stats: WireStats,
    rx_buf: Vec<Desc>,
    ring: u32,
    /// Frames each fill ring should hold, and holds now.
    fill_target: u32,
    filled: [u32; 2],
}

/// An I/O error with what was being done.
fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Wire {
    /// Opens both ports and attaches the redirect program to both interfaces.
    pub fn open(cfg: &WireConfig) -> io::Result<Wire> {
        let ifindex = [bpf::ifindex(&cfg.interfaces[0])?, bpf::ifindex(&cfg.interfaces[1])?];
        if ifindex[0] == ifindex[1] {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "--intf1 and --intf2 name the same interface"));
        }
        // Frames coming back on another queue would reach no socket and count as
        // dropped by the device under test.
        for name in &cfg.interfaces {
            if let Some(have) = crate::host::rx_queues(name)
                && have > 1
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{name} receives on {have} queues but the replayer binds queue 0 only: what came back on the others would count as dropped by the device. Give it one (ethtool -L {name} combined 1), or use --driver packet"
                    ),
                ));
            }
        }
        let ring = cfg.ring_size.next_power_of_two().clamp(64, 8192);
        let frames = cfg.frames.max(4 * ring);
        let ports = Ports::open(&Binding { ifindex, queue: 0, frames, ring_size: ring })?;
        let maps = [XskMap::new(1).map_err(ctx("creating the XSKMAP".into()))?, XskMap::new(1).map_err(ctx("creating the XSKMAP".into()))?];
        for (side, m) in maps.iter().enumerate() {
            m.set(0, ports.fd(side)).map_err(ctx(format!("adding {}'s socket to the XSKMAP", cfg.interfaces[side])))?;
        }
        let prog = [Program::load_redirect(&maps[0])?, Program::load_redirect(&maps[1])?];
        let mut links = Vec::with_capacity(2);
        for side in 0..2 {
            let l = Link::attach(&prog[side], ifindex[side], cfg.mode).map_err(ctx(format!(
                "attaching XDP to {} (another program attached? `ip link set dev {} xdp off`)",
                cfg.interfaces[side], cfg.interfaces[side]
            )))?;
            links.push(l);
        }
        let l1 = links.pop().expect("two links");
        let l0 = links.pop().expect("two links");
        let mut w = Wire {
            _links: [l0, l1],
            _prog: prog,
            ports,
            _maps: maps,
            free: (0..frames).rev().map(Ports::frame_addr).collect(),
            tx: [Vec::with_capacity(BATCH), Vec::with_capacity(BATCH)],
            last: 0,
            stats: WireStats::default(),
            rx_buf: Vec::with_capacity(BATCH),
            ring,
            fill_target: ring.min(frames / 4),
            filled: [0; 2],
        };
        // Each fill ring is kept full (what comes out of the device must never find it
        // empty); the rest carry what is sent (copy-mode TX completes within the kick).
        w.top_up();
        Ok(w)
    }

    /// Copies `frame` into a free UMEM frame and queues it on `side`. `false` when no
    /// frame or TX slot is free right now (counted as a retry: reap, poll, try again).
    /// A frame longer than a UMEM frame is counted as failed and reported sent.
    pub fn queue(&mut self, side: usize, frame: &[u8]) -> bool {
        if frame.len() > FRAME_SIZE as usize {
            self.stats.failed[side] += 1;
            return true;
        }
        if side != self.last && !self.tx[self.last].is_empty() {
            self.flush_side(self.last);
        }
        self.last = side;
        if self.tx[side].len() >= BATCH {
            self.flush_side(side);
            self.reap();
            if self.tx[side].len() >= BATCH {
                self.stats.retried[side] += 1;
                return false;
            }
        }
        // Sending never takes the frames the fill rings need.
        if self.free.len() <= RESERVE {
            self.reap();
            self.top_up();
            if self.free.len() <= RESERVE {
                self.stats.retried[side] += 1;
                return false;
            }
        }
        let addr = self.free.pop().expect("more than RESERVE free");
        self.ports.data_mut(addr, frame.len() as u32).copy_from_slice(frame);
        self.tx[side].push(Desc { addr, len: frame.len() as u32, options: 0 });
        self.stats.bytes[side] += frame.len() as u64;
        true
    }

    fn flush_side(&mut self, side: usize) {
        let batch = &mut self.tx[side];
        if batch.is_empty() {
            return;
        }
        let room = self.ports.tx_room(side, batch.len() as u32) as usize;
        let n = self.ports.transmit(side, &batch[..room.min(batch.len())]) as usize;
        self.stats.queued[side] += n as u64;
        batch.drain(..n);
    }

    /// Hands everything queued to the kernel (what finds no TX slot stays queued).
    pub fn flush(&mut self) {
        let (a, b) = (1 - self.last, self.last);
        self.flush_side(a);
        self.flush_side(b);
        self.ports.kick(0);
        self.ports.kick(1);
        self.reap();
    }

    /// Moves sent frames back to the free pool.
    pub fn reap(&mut self) {
        for side in 0..2 {
            let n = self.ports.complete(side, &mut self.free, self.ring);
            self.stats.completed[side] += u64::from(n);
        }
    }

    /// Receives what waits on both sides, hands each frame to `f(side, bytes)`, and
    /// refills the fill rings. Returns how many frames were received.
    pub fn poll(&mut self, mut f: impl FnMut(usize, &[u8])) -> usize {
        // Sent frames first: the fill rings must never wait for frames that the
        // completion ring holds (an empty fill ring loses what comes out).
        self.reap();
        let mut total = 0;
        for side in 0..2 {
            loop {
                self.rx_buf.clear();
                let n = self.ports.receive(side, BATCH as u32, &mut self.rx_buf) as usize;
                if n == 0 {
                    break;
                }
                for d in &self.rx_buf {
                    f(side, self.ports.data(d.addr, d.len));
                    self.free.push(d.addr & !(u64::from(FRAME_SIZE) - 1));
                }
                self.stats.received[side] += n as u64;
                self.filled[side] = self.filled[side].saturating_sub(n as u32);
                total += n;
                self.top_up();
            }
        }
        total
    }

    /// Fills both fill rings up to their target from the free pool.
    fn top_up(&mut self) {
        for side in 0..2 {
            let want = self.fill_target.saturating_sub(self.filled[side]);
            if want > 0 {
                self.filled[side] += self.ports.fill(side, &mut self.free, want);
            }
        }
    }

    /// Sleeps until a frame arrives on either side or `timeout_ms` passes.
    pub fn wait(&self, timeout_ms: i32) {
        crate::sys::poll_in(&[self.ports.fd(0), self.ports.fd(1)], timeout_ms);
    }

    pub fn stats(&self) -> WireStats {
        self.stats
    }

    /// The kernel's counters for each side's socket (`XDP_STATISTICS`).
    pub fn xdp_stats(&self) -> [XdpStats; 2] {
        [self.ports.stats(0), self.ports.stats(1)]
    }
}
