//! Test support: `core_pump` (the pure Raft core under a message pump, for
//! `raft_scenarios.rs`), and the simulator's disk and network (`sim_disk`, `sim_net`) that the
//! real node runs on in `sim.rs`, and `story` (a fault-free cluster of real nodes for scripted
//! tests).
#![allow(dead_code)]

pub mod core_pump;
pub mod sim_disk;
pub mod sim_net;
pub mod story;

#[allow(unused_imports)]
pub use core_pump::*;
