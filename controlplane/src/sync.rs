//! State sync with a standby, in conntrackd's protocol (docs/sync.md).
//!
//! - `proto`: the messages' bytes, encoder and strict decoder;
//! - `ftfw`: conntrackd's reliable mode as pure sender and receiver state machines.

pub mod ftfw;
pub mod proto;
