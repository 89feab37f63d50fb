//! `TtlClock`: the leader's time for TTLs, and the leader's reclaim of expired keys.
//!
//! The node reads no clock: the shell (`event_loop.rs`) hands it the wall clock once per turn
//! (`Node::set_wall_ms`), the simulator a per-node clock that jumps and drifts. The leader
//! stamps every write it proposes with its "now" (see `kv::envelope`), and answers reads as
//! of that same now, so expiry is decided by the leader's clock, stamped in the log, and every
//! replica applies the same stamps.
//!
//! The leader's now is the largest of: the wall clock, the last applied entry's stamp, and
//! every now it used before. So it never goes backwards (a clock stepped back does not revive
//! a key it reported gone), and a new leader whose clock lags the old one's still stamps no
//! lower than what it has applied.
//!
//! Reclaim: only the leader deletes expired keys, by proposing entries that each delete at
//! most `RECLAIM_KEYS_MAX` keys whose expiry is still the one it saw, at most
//! `RECLAIM_ENTRIES_PER_SEC_MAX` entries a second, and one at a time (the next only once the
//! last is applied, so a key is never named twice).
//!
//! Invariants (checked by `check_invariants`):
//! 1. `leader_now_ms` only grows, and no stamp this node proposed exceeds it
//!    (`last_stamp_ms <= leader_now_ms`).

use std::time::{Duration, Instant};

use crate::kv::envelope::{self, Envelope, SessionTag};
use crate::kv::StateMachine;
use crate::limits::{RECLAIM_ENTRIES_PER_SEC_MAX, RECLAIM_KEYS_MAX};
use crate::raft::{LogIndex, Payload, Role};

use super::net::Net;
use super::storage::Disk;
use super::Node;

/// Time between two reclaim entries.
const RECLAIM_INTERVAL: Duration = Duration::from_millis(1000 / RECLAIM_ENTRIES_PER_SEC_MAX);

#[derive(Debug, Default)]
pub(super) struct TtlClock {
    /// The wall clock as the shell last gave it, ms since the Unix epoch (0 before).
    wall_ms: u64,
    /// The largest now this node has used as leader (a stamp or a read's now). Invariant 1.
    leader_now_ms: u64,
    /// The stamp of the last write this node proposed.
    last_stamp_ms: u64,
    /// No reclaim entry is proposed before this time.
    next_reclaim: Option<Instant>,
    /// The index of the last reclaim entry proposed; none is proposed until it is applied.
    reclaim_index: LogIndex,
    /// Reclaim entries proposed by this node.
    reclaim_entries: u64,
}

impl TtlClock {
    /// The leader's now (see the module header), remembered so that it never goes back.
    fn leader_now_ms(&mut self, applied_stamp_ms: u64) -> u64 {
        self.leader_now_ms = self.leader_now_ms.max(self.wall_ms).max(applied_stamp_ms);
        self.leader_now_ms
    }

    pub(super) fn check_invariants(&self) {
        assert!(
            self.last_stamp_ms <= self.leader_now_ms,
            "stamp {} proposed beyond the leader's now {}",
            self.last_stamp_ms,
            self.leader_now_ms
        );
    }
}

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// The wall clock, ms since the Unix epoch: the shell reads it once per turn, the
    /// simulator gives each node its own (drifting, jumping) clock.
    pub fn set_wall_ms(&mut self, wall_ms: u64) {
        self.ttl.wall_ms = wall_ms;
    }

    /// The leader's now: for stamping a write, and the time a read is answered at.
    pub(super) fn leader_now_ms(&mut self) -> u64 {
        let applied = self.applied.sm().applied_stamp_ms();
        self.ttl.leader_now_ms(applied)
    }

    /// The payload to propose for a client's write: `command` behind the leader's stamp (and
    /// the client's session, if any).
    pub(super) fn stamp_write(&mut self, command: &[u8], session: Option<SessionTag>) -> Payload {
        let stamp_ms = self.leader_now_ms();
        self.ttl.last_stamp_ms = stamp_ms;
        let env = Envelope { stamp_ms, session };
        envelope::wrap_shared(&env, command)
    }

    /// Housekeeping, on the leader: propose the deletion of some expired keys, within the
    /// rate limit, once the previous reclaim entry is applied.
    pub(super) fn maybe_reclaim_expired(&mut self) {
        if self.raft.role() != Role::Leader || self.stored.read_only().is_some() {
            return;
        }
        if self.applied.index() < self.ttl.reclaim_index
            || self.ttl.next_reclaim.is_some_and(|at| self.now < at)
        {
            return;
        }
        let now_ms = self.leader_now_ms();
        let Some(command) = self.applied.sm().expired_batch(now_ms, RECLAIM_KEYS_MAX) else {
            return;
        };
        let payload = self.stamp_write(&command, None);
        if let Ok(id) = self.raft.propose(payload) {
            self.ttl.reclaim_index = id.index;
            self.ttl.reclaim_entries += 1;
            self.ttl.next_reclaim = Some(self.now + RECLAIM_INTERVAL);
        }
    }

    /// INFO's TTL fields (in `stats`).
    pub(super) fn info_ttl(&self, kv: &mut dyn FnMut(&str, String)) {
        let sm = self.applied.sm();
        let applied_stamp = sm.applied_stamp_ms();
        let now = self
            .ttl
            .leader_now_ms
            .max(self.ttl.wall_ms)
            .max(applied_stamp);
        let stats = sm.ttl_stats(now);
        kv("expired_keys", stats.expired_keys.to_string());
        kv("expires", stats.expires.to_string());
        kv("expiry_backlog", stats.backlog.to_string());
        kv(
            "expiry_reclaim_entries",
            self.ttl.reclaim_entries.to_string(),
        );
        // Wall clock minus the last applied entry's stamp: how far this node's clock is from
        // the leader's (plus the time since the last write). 0 before any stamped entry.
        let skew = if applied_stamp == 0 {
            0
        } else {
            self.ttl.wall_ms as i64 - applied_stamp as i64
        };
        kv("clock_skew_ms", skew.to_string());
    }
}
