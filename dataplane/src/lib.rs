//! Holdfast's I/O layer: AF_XDP sockets and the XDP redirect program, pinned per-core
//! workers, handoff between cores, offline replay workers, the clock. The only crate
//! that touches NICs and the OS clock; its `unsafe` lives in `bpf.rs`, `xsk.rs`,
//! `blast.rs` (the benchmark's generator) and `sys.rs`.

pub mod blast;
pub mod bpf;
pub mod control;
pub mod error;
pub mod handoff;
pub mod host;
pub mod offline;
pub mod packet;
pub mod run;
pub mod stats;
pub mod sys;
pub mod wire;
pub mod worker;
pub mod xsk;
