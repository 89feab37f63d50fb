//! Time as ticks. The shell (`event_loop.rs`) reads the wall clock once per turn
//! (`Clock::now`, the only `Instant::now()` of the node's logic) and hands the instant to
//! `Node::turn`; the simulator hands it simulated instants. Everything else works in ticks:
//! `now_tick` goes to the timing wheel and the Raft core.

use std::time::{Duration, Instant};

/// Converts monotonic wall time into ticks since start-up.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    tick: Duration,
}

impl Clock {
    /// Tick 0 is `start`.
    pub fn starting_at(start: Instant, tick: Duration) -> Clock {
        assert!(!tick.is_zero(), "tick must be positive");
        Clock { start, tick }
    }

    /// The wall clock now (the shell's one read per turn).
    pub fn now() -> Instant {
        Instant::now()
    }

    /// Whole ticks elapsed between start-up and `now`.
    pub fn tick_at(&self, now: Instant) -> u64 {
        (now.duration_since(self.start).as_nanos() / self.tick.as_nanos()) as u64
    }

    /// How long from `now` until tick `at` begins (zero if it has).
    pub fn until_tick(&self, now: Instant, at: u64) -> Duration {
        let due = self.start + Duration::from_nanos(at.saturating_mul(self.tick.as_nanos() as u64));
        due.saturating_duration_since(now)
    }

    /// Milliseconds converted to whole ticks, at least one.
    pub fn ms_to_ticks(&self, ms: u64) -> u64 {
        (ms / self.tick.as_millis().max(1) as u64).max(1)
    }
}
