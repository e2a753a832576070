//! Per-core connection tracking: entries, the table and its index, timers, TCP state
//! and window tracking, fragments.

pub mod conn;
pub mod frag;
pub mod pressure;
pub mod sources;
pub mod table;
pub mod tcp;
pub mod timeouts;
pub mod tombstones;
pub mod wheel;

pub use conn::{Conn, ConnAux, ConnStats};
pub use table::Table;
pub use timeouts::{Timeouts, TimerClass};
