//! The only place kvraft reads the wall clock. Everything else works in ticks: the loop reads
//! the clock once per turn and hands `now_tick` to the timing wheel and the Raft core.

use std::time::{Duration, Instant};

/// Converts monotonic wall time into ticks since start-up.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    tick: Duration,
}

impl Clock {
    pub fn new(tick: Duration) -> Clock {
        assert!(!tick.is_zero(), "tick must be positive");
        Clock {
            start: Instant::now(),
            tick,
        }
    }

    /// The current time; one call per loop turn.
    pub fn now(&self) -> Instant {
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
