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
