//! Holdfast's control plane: YAML configuration, captures, offline replay, traffic
//! generation. The `holdfast` binary (`main.rs`) is a thin command line over these.

pub mod capture;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod helper;
pub mod lab;
pub mod load;
pub mod logline;
pub mod replay;
pub mod report;
pub mod state;
pub mod sync;
pub mod traffic;

/// The configuration used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/webfarm.yaml");
