//! Timers for the event loop: a hashed timing wheel driven by ticks the caller supplies.
//! It never reads the clock; `node/clock.rs` converts wall time to ticks.
pub mod wheel;

pub use wheel::{TimerError, TimerHandle, TimerWheel};
