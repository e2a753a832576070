//! State sync with a standby, in conntrackd's protocol (docs/sync.md).
//!
//! - `proto`: the messages' bytes, encoder and strict decoder.

pub mod proto;
