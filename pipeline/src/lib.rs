//! Holdfast's sans-IO core: zero-copy packet views, flow keys, per-core connection
//! tracking with timers, the rule classifier, verdicts and drop reasons.
//!
//! Invariants (see ARCHITECTURE.md): no I/O, no threads, no clock reads — time is an
//! argument; no allocation per packet — every table is sized at start; no panics on
//! any input; every drop carries a [`DropReason`]. The only `unsafe` is in `raw`.
//!
//! The API other crates use: [`Engine`] and its configuration, listings and
//! explanations (`engine`); frame steering (`steer`, `flow::owner_of`); the rule model
//! (`policy`); parsing for tests and tools (`parse`, `wire`); times; verdicts and
//! counters. Everything else is the crate's own (`unreachable_pub` keeps it so).

#![deny(unsafe_code)]
#![deny(unreachable_pub)]

pub mod conntrack;
mod counters;
pub mod engine;
pub mod flow;
pub mod holders;
pub mod parse;
pub mod policy;
#[allow(unsafe_code)]
mod raw;
pub mod snapshot;
pub mod steer;
#[cfg(test)]
mod testutil;
pub mod time;
pub mod verdict;
pub mod wire;

pub use counters::Counters;
pub use engine::{Engine, EngineConfig, FlowInfo, Packet, Pickup};
pub use flow::{FlowHasher, FlowKey, Side};
pub use policy::{Action, Classifier, Zone};
/// The prefetch hint the pipeline stages its reads with (for the memory-floor bench).
pub use raw::prefetch;
pub use time::{Duration, Instant};
pub use verdict::{DropReason, PassKind, Verdict};
