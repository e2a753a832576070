//! Holdfast's I/O layer: worker threads, the clock, and (next) AF_XDP sockets and the
//! XDP redirect program. The only crate that touches the OS for packets and time.

pub mod offline;
pub mod sys;
