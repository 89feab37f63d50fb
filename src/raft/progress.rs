//! The leader's view of one follower: how much of the log it holds, where to send next, and
//! how many appends are in flight to it.
//!
//! Invariants:
//! 1. `match_index < next_index`.
//! 2. In `Replicate`, every in-flight append ends after `match_index`, in increasing order,
//!    and at most `Inflights::cap` are outstanding.
//! 3. In `Snapshot`, no appends are sent (heartbeats still are).
//! 4. `next_index <= ` the leader's last index + 1: every index it is set from (an ack, a
//!    hint, an append sent) was checked against the leader's log first (`replication.rs`).

use std::collections::VecDeque;

use super::types::LogIndex;

/// How the leader feeds this follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// One append at a time until the follower's position is known (after a rejection, a
    /// restart or a lost connection).
    Probe,
    /// Pipelined appends, up to `inflight_msgs_max` outstanding.
    Replicate,
    /// A snapshot is on its way; nothing else is sent until it is acknowledged or reported failed.
    Snapshot,
}

/// The last index of each append in flight, oldest first (a bounded ring).
#[derive(Debug, Clone)]
pub struct Inflights {
    ring: VecDeque<LogIndex>,
    cap: usize,
}

impl Inflights {
    pub fn new(cap: usize) -> Inflights {
        assert!(cap > 0, "inflight cap must be positive");
        Inflights {
            ring: VecDeque::with_capacity(cap),
            cap,
        }
    }
    pub fn add(&mut self, last: LogIndex) {
        assert!(!self.full(), "inflights full ({})", self.cap);
        if let Some(&back) = self.ring.back() {
            assert!(last > back, "inflight {last} not after {back}");
        }
        self.ring.push_back(last);
    }
    /// Forgets every append ending at or before `index` (acknowledged).
    pub fn free_to(&mut self, index: LogIndex) {
        while self.ring.front().is_some_and(|&f| f <= index) {
            self.ring.pop_front();
        }
    }
    /// Forgets the oldest append (after a heartbeat answer: if it was lost, the next append
    /// exposes the gap and the follower's rejection sends us back to probing).
    pub fn free_first_one(&mut self) {
        self.ring.pop_front();
    }
    pub fn full(&self) -> bool {
        self.ring.len() >= self.cap
    }
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ring.len()
    }
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
    pub fn reset(&mut self) {
        self.ring.clear();
    }
}

/// One follower's progress. See the module invariants.
#[derive(Debug, Clone)]
pub struct Progress {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// In `Probe`: an append was sent and we wait for its answer (or a heartbeat response).
    pub probe_sent: bool,
    /// In `Snapshot`: the index of the snapshot being sent.
    pub pending_snapshot: LogIndex,
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The highest commit index a message to this follower let it adopt: an append's commit
    /// capped at the append's last index, a heartbeat's (capped at `match_index` already).
    /// Lost messages make it an overstatement; the next heartbeat repairs that
    /// (`replication.rs`, "Telling followers the commit index").
    pub commit_sent: LogIndex,
    /// At the previous tick, what this follower could have adopted (`commit_owed`): if
    /// `commit_sent` is still below it at this tick, no append carried it for a whole tick.
    pub commit_due: LogIndex,
    /// A commit index this follower waits for (a follower read's index, `Raft::want_commit`):
    /// until it is sent, every advance toward it goes out at once, not at the next tick.
    pub commit_wanted: LogIndex,
}

impl Progress {
    pub fn new(next_index: LogIndex, inflight_cap: usize) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: LogIndex(0),
            inflights: Inflights::new(inflight_cap),
            recent_active: false,
            commit_sent: LogIndex(0),
            commit_due: LogIndex(0),
            commit_wanted: LogIndex(0),
        }
    }

    /// What of the leader's `commit` this follower could adopt now: no more than it is known
    /// to hold (beyond `match_index` its log may still diverge from the leader's).
    pub fn commit_owed(&self, commit: LogIndex) -> LogIndex {
        commit.min(self.match_index)
    }

    /// Whether the follower waits for a commit index it has not been sent, and the leader has
    /// more of it to give: then an advance goes out at once.
    pub fn commit_wanted_now(&self, commit: LogIndex) -> bool {
        self.commit_sent < self.commit_wanted && self.commit_sent < self.commit_owed(commit)
    }

    pub fn become_probe(&mut self) {
        self.next_index = if self.state == ProgressState::Snapshot {
            self.match_index.max(self.pending_snapshot).next()
        } else {
            self.match_index.next()
        };
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
        // What was in flight may be lost (a lost connection, a restarted follower, which
        // forgot its commit index): the next append or tick tells it again.
        self.commit_sent = LogIndex(0);
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// An acknowledgement that the follower holds everything up to `index`. Returns whether it
    /// told us anything new (a stale or duplicate ack does not).
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index.next());
        updated
    }

    /// A rejection of the append whose `prev` was `rejected`; `hint_next` is where the conflict
    /// hint says to retry. Returns false for a stale rejection (seed lesson 4: a late answer to
    /// an earlier request must not move us).
    pub fn maybe_decr_to(&mut self, rejected: LogIndex, hint_next: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.state = ProgressState::Probe;
            self.inflights.reset();
        } else if self.next_index.0 == 0 || self.next_index.prev() != rejected {
            return false;
        }
        self.next_index = hint_next.min(rejected).max(self.match_index.next());
        self.probe_sent = false;
        true
    }

    /// May the leader send an append now?
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// An append ending at `last` with `count` entries went out.
    pub fn sent(&mut self, last: LogIndex, count: usize) {
        match self.state {
            ProgressState::Replicate if count > 0 => {
                self.next_index = last.next();
                self.inflights.add(last);
            }
            ProgressState::Replicate => {}
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => panic!("append sent in snapshot state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_free_acknowledged_appends_and_bound_the_pipeline() {
        let mut inf = Inflights::new(3);
        inf.add(LogIndex(2));
        inf.add(LogIndex(5));
        inf.add(LogIndex(9));
        assert!(inf.full());
        inf.free_to(LogIndex(5));
        assert_eq!(inf.len(), 1);
        assert!(!inf.full());
        inf.free_to(LogIndex(100));
        assert!(inf.is_empty());
    }

    #[test]
    fn replicate_pauses_when_the_pipeline_is_full() {
        let mut pr = Progress::new(LogIndex(1), 2);
        pr.become_replicate();
        pr.sent(LogIndex(3), 3);
        assert!(!pr.is_paused());
        pr.sent(LogIndex(5), 2);
        assert!(pr.is_paused());
        assert_eq!(pr.next_index, LogIndex(6));
        assert!(pr.maybe_update(LogIndex(3)));
        pr.inflights.free_to(LogIndex(3));
        assert!(!pr.is_paused());
    }

    #[test]
    fn a_stale_rejection_does_not_move_next_index() {
        let mut pr = Progress::new(LogIndex(10), 4);
        pr.sent(LogIndex(9), 1); // probe with prev 9
        assert!(pr.is_paused());
        assert!(
            !pr.maybe_decr_to(LogIndex(7), LogIndex(3)),
            "prev 7 was not asked"
        );
        assert!(pr.maybe_decr_to(LogIndex(9), LogIndex(4)));
        assert_eq!(pr.next_index, LogIndex(4));
        assert!(!pr.is_paused());
        pr.match_index = LogIndex(3);
        pr.become_replicate();
        pr.sent(LogIndex(8), 5);
        assert!(!pr.maybe_decr_to(LogIndex(2), LogIndex(1)), "below match");
        assert!(pr.maybe_decr_to(LogIndex(6), LogIndex(5)));
        assert_eq!(pr.state, ProgressState::Probe);
        assert_eq!(pr.next_index, LogIndex(5));
    }

    #[test]
    fn leaving_snapshot_state_resumes_after_the_snapshot() {
        let mut pr = Progress::new(LogIndex(3), 4);
        pr.become_snapshot(LogIndex(50));
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(pr.next_index, LogIndex(51));
    }
}
