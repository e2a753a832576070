//! State sync with a standby, in conntrackd's protocol (docs/sync.md).
//!
//! - `proto`: the messages' bytes, encoder and strict decoder;
//! - `ftfw`: conntrackd's reliable mode as pure sender and receiver state machines;
//! - `endpoint`: the thread with the socket: sweeps, diffs, sends, caches, takes over;
//! - `appliance`: the running workers' tables as the endpoint's `Tables`.

pub mod appliance;
pub mod endpoint;
pub mod ftfw;
pub mod proto;

/// A confirmed UDP flow to port 53, for the sync modules' tests.
#[cfg(test)]
pub(crate) fn udp_flow(src: u128, sport: u16) -> holdfast_pipeline::engine::SyncedFlow {
    holdfast_pipeline::engine::SyncedFlow {
        v6: false,
        src,
        dst: 2,
        proto: 17,
        sport,
        dport: 53,
        icmp: None,
        tcp_state: 0,
        status: holdfast_pipeline::engine::ips::CONFIRMED,
        timeout_s: 30,
        wscale: [None, None],
        vlan: 0,
    }
}
