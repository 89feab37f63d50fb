//! `LastContact`: when each peer was last heard from (any frame after its Hello), for INFO's
//! `last_contact_ms` and `kvctl status`. The leader hears every follower at least once per
//! heartbeat interval, so a value past an election timeout means the follower is cut off.
//!
//! Must not: decide anything (the core's check-quorum decides who counts); it only reports.
//!
//! Invariants:
//! 1. At most `CONTACTS_MAX` peers are remembered (the least recently heard is forgotten).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::limits::MEMBERS_MAX;
use crate::raft::NodeId;

/// Peers remembered: every member, and as many again of nodes since removed.
const CONTACTS_MAX: usize = 2 * MEMBERS_MAX;

#[derive(Default)]
pub(super) struct LastContact {
    heard: BTreeMap<NodeId, Instant>,
}

impl LastContact {
    /// A frame from `from` arrived at `now`.
    pub(super) fn heard(&mut self, from: NodeId, now: Instant) {
        if self.heard.len() >= CONTACTS_MAX && !self.heard.contains_key(&from) {
            let oldest = self.heard.iter().min_by_key(|(_, &t)| t).map(|(&id, _)| id);
            if let Some(id) = oldest {
                self.heard.remove(&id);
            }
        }
        self.heard.insert(from, now);
    }

    /// How long ago `peer` was last heard from; `None` if never (since this node started).
    pub(super) fn since(&self, peer: NodeId, now: Instant) -> Option<Duration> {
        self.heard
            .get(&peer)
            .map(|&t| now.saturating_duration_since(t))
    }

    pub(super) fn check_invariants(&self) {
        assert!(
            self.heard.len() <= CONTACTS_MAX,
            "{} peers remembered, more than {CONTACTS_MAX}",
            self.heard.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_heard_peer_is_forgotten_at_the_limit() {
        let t0 = Instant::now();
        let mut c = LastContact::default();
        for i in 1..=CONTACTS_MAX as u64 {
            c.heard(NodeId(i), t0 + Duration::from_millis(i));
        }
        c.heard(NodeId(1), t0 + Duration::from_secs(1));
        c.heard(NodeId(1000), t0 + Duration::from_secs(2));
        c.check_invariants();
        assert!(c.since(NodeId(2), t0).is_none(), "node 2 was the oldest");
        assert_eq!(
            c.since(NodeId(1), t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(2))
        );
        assert!(c.since(NodeId(1000), t0).is_some());
    }
}
