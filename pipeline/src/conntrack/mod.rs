//! Per-core connection tracking: entries, the table and its index, timers, TCP state
//! and window tracking, fragments. Outside the crate only what the control plane
//! configures and reports is visible: admission classes and pressure settings,
//! timeouts, why an entry was removed, and the table's sizes.

pub(crate) mod conn;
pub(crate) mod frag;
pub mod pressure;
pub(crate) mod sources;
pub(crate) mod table;
pub(crate) mod tcp;
pub mod timeouts;
pub mod tombstones;
pub(crate) mod wheel;

pub use table::Table;
pub use timeouts::{Timeouts, TimerClass};

/// Bytes of an entry's hot part, the `Conn` a packet of an established flow reads and
/// writes: one cache line.
pub const ENTRY_BYTES: usize = core::mem::size_of::<conn::Conn>();
