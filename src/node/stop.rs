//! Graceful stop (SIGTERM). A leader that simply exits costs its cluster an election timeout
//! of unavailability: the followers must first notice the silence. So a stopping leader
//! first hands its leadership to the most up-to-date voter (the core's leadership transfer:
//! the target is brought up to date, then told to campaign at once with `TimeoutNow`,
//! Raft dissertation §3.10), and stops once another node leads, or after an election
//! timeout at most. A follower, a learner or a candidate stops at once.
//!
//! Sans-clock, like the rest of the node: the shell delivers the signal (`begin_stop`) and
//! asks after every turn whether the node may exit (`stop_ready`); the simulator and the
//! story tests call the very same methods. A second signal is the shell's business: it
//! exits without asking.
//!
//! Must not: wait without bound (the deadline is fixed when the stop begins), or refuse to
//! stop because the hand-off failed (no voter to hand to, the transfer refused or abandoned:
//! the deadline passes and the node stops as before).
//!
//! Invariants:
//! 1. Once begun, a stop is never cancelled, and its deadline never moves.
//! 2. A stop with no hand-off target is ready at once.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::net::Net;
use super::storage::Disk;
use super::Node;
use crate::kv::StateMachine;
use crate::raft::{NodeId, Role};

/// A stop in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stopping {
    /// The node stops at this time whatever became of the hand-off.
    deadline: Instant,
    /// The voter leadership was handed to, if this node led and one could take it.
    target: Option<NodeId>,
    /// When the stop began (for the log line that reports how long the hand-off took).
    began: Instant,
}

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// Begin stopping (the first SIGTERM or SIGINT). A leader hands its leadership to the
    /// voter whose log is longest and waits for it to take over; anyone else is ready to
    /// stop at once. Calling it again changes nothing (invariant 1).
    pub fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let wait = Duration::from_millis(self.cfg.election_timeout_ms);
        let target = match self.raft.role() {
            Role::Leader => self.hand_off_for_stop(),
            _ => None,
        };
        match target {
            Some(to) => {
                info!("stopping: handing leadership to node {to} first (waiting at most {wait:?})")
            }
            None => info!("stopping"),
        }
        self.stopping = Some(Stopping {
            deadline: self.now + wait,
            target,
            began: self.now,
        });
    }

    /// The leadership transfer that precedes a leader's stop: to the most up-to-date voter
    /// (highest match index; the core brings it the rest and then sends `TimeoutNow`).
    fn hand_off_for_stop(&mut self) -> Option<NodeId> {
        let st = self.raft.status();
        let best = st
            .progress
            .iter()
            .filter(|p| p.id != self.id && st.conf.is_voter(p.id))
            .max_by_key(|p| (p.match_index, std::cmp::Reverse(p.id)))?;
        match self.raft.transfer_leadership(best.id) {
            Ok(()) => Some(best.id),
            Err(e) => {
                warn!("stopping: cannot hand leadership to node {}: {e}", best.id);
                None
            }
        }
    }

    /// Whether the node may exit now: not stopping, false; no hand-off, true; else once
    /// another node leads (this one stepped down on its term), or at the deadline.
    pub fn stop_ready(&self) -> bool {
        let Some(s) = self.stopping else {
            return false;
        };
        let Some(target) = s.target else {
            return true;
        };
        let other_leads =
            self.raft.role() != Role::Leader && self.raft.leader().is_some_and(|l| l != self.id);
        if other_leads {
            info!(
                "stopping: node {} leads now (hand-off to {target} took {:?})",
                self.raft.leader().map_or(0, |l| l.0),
                self.now.saturating_duration_since(s.began)
            );
            return true;
        }
        if self.now >= s.deadline {
            warn!("stopping: no other node took over within the wait; stopping anyway");
            return true;
        }
        false
    }

    /// Whether a stop has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }
}
