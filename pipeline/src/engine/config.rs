//! What an engine is made with: its settings and the frames it judges.

use crate::conntrack::pressure::Pressure;
use crate::conntrack::timeouts::Timeouts;
use crate::policy::{Action, Zone};
use crate::time::{Duration, Instant};

/// What to do with a non-SYN TCP packet that finds no state (`conntrack.pickup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// Drop it (pf, Linux with `nf_conntrack_tcp_loose=0`).
    Strict,
    /// Track it only when the reverse direction is a flow the rules allow: the packet is
    /// then a reply of that flow (a server's answer after state was lost).
    ReverseOfAllowed,
    /// Track it when the rules allow its own direction (Linux's default `tcp_loose=1`).
    Loose,
}

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Entries per worker.
    pub capacity: usize,
    pub timeouts: Timeouts,
    pub pickup: Pickup,
    pub arp: Action,
    /// IPv6 neighbor discovery.
    pub ndp: Action,
    /// EtherTypes other than IPv4, IPv6 and ARP.
    pub non_ip: Action,
    /// Fragment records per worker.
    pub fragments: usize,
    pub fragment_timeout: Duration,
    /// Seed of the table's hash, chosen per process.
    pub seed: u64,
    /// Eviction, quota and adaptive timeouts (`conntrack.pressure`).
    pub pressure: Pressure,
    /// Most live entries one source address may create (0: no limit).
    pub per_source_limit: u32,
    /// IPv6 sources are counted by this prefix (`conntrack.per_source_ipv6_prefix`,
    /// 1..=128): one host commonly holds a whole /64, so counting each address would
    /// give it 2^64 limits.
    pub source_prefix_v6: u8,
    /// Records of recently removed flows (0: none).
    pub tombstones: usize,
    /// Keep per-flow packet and byte counters (Linux `nf_conntrack_acct`): 32 bytes
    /// an entry.
    pub accounting: bool,
    /// Entries that may hold IPv6 flows (their addresses live in a pool of this
    /// size, 36 bytes a place); `None`: every entry (`conntrack.ipv6_share`).
    pub ipv6_slots: Option<usize>,
    /// An ICMP error about a TCP flow passes only when the segment it quotes lies in
    /// the flow's window (`conntrack.icmp_error_window`; Linux does not check).
    pub icmp_error_window: bool,
}

impl EngineConfig {
    /// Places in the IPv6 address pool: `ipv6_slots`, or one per entry.
    pub fn ipv6_places(&self) -> usize {
        self.ipv6_slots.unwrap_or(self.capacity.max(1))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            capacity: 1 << 20,
            timeouts: Timeouts::default(),
            pickup: Pickup::Strict,
            arp: Action::Allow,
            ndp: Action::Allow,
            non_ip: Action::Deny,
            fragments: 4096,
            // Linux `ipfrag_time`.
            fragment_timeout: Duration::from_secs(30),
            seed: 0x5eed,
            pressure: Pressure::default(),
            per_source_limit: 0,
            source_prefix_v6: 64,
            tombstones: 65_536,
            accounting: true,
            ipv6_slots: None,
            icmp_error_window: true,
        }
    }
}

/// One frame to judge: its bytes, the zone it entered from, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub data: &'a [u8],
    pub zone: Zone,
    pub now: Instant,
}
