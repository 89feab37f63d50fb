//! `Applied`: the state machine and how far the log has been applied to it — the last applied
//! entry and the membership as of that entry (what a snapshot taken now records).
//!
//! It applies committed entries one at a time, in index order, and swaps in a whole state
//! machine when a snapshot is installed. It knows nothing of clients or peers: a membership
//! change it applies is handed back to the node, which updates its address table.
//!
//! Invariants (checked by `check_invariants`, with the node's snapshot and commit index):
//! 1. Entries are applied exactly once, in index order: `apply` takes only `last.index + 1`.
//! 2. `snapshot <= last.index <= commit`: nothing before the snapshot on disk is unapplied,
//!    nothing uncommitted is applied.
//! 3. `conf` is the membership of the snapshot `last` came from, changed by every membership
//!    entry applied since (so a snapshot at `last` records the right members).

use log::error;

use crate::client::Value;
use crate::kv::StateMachine;
use crate::raft::{ConfChange, ConfState, Entry, EntryId, EntryKind, LogIndex, SnapshotMeta};

/// What applying one entry gave.
pub(super) enum Outcome {
    /// A command's (or a no-op's, or a bad membership change's) reply.
    Reply(Value),
    /// A membership change, already applied to `conf`: the node updates its address table.
    ConfChanged(ConfChange),
}

pub(super) struct Applied<S: StateMachine> {
    sm: S,
    /// The last entry applied (its index and term). Invariants 1, 2.
    last: EntryId,
    /// The membership as of `last`. Invariant 3.
    conf: ConfState,
    /// Makes an empty state machine (to load a received snapshot into before swapping).
    make_sm: Box<dyn FnMut() -> S>,
}

impl<S: StateMachine> Applied<S> {
    /// `sm` holds exactly the snapshot `meta` (or is empty, with `meta` the empty snapshot).
    pub(super) fn new(sm: S, meta: &SnapshotMeta, make_sm: Box<dyn FnMut() -> S>) -> Applied<S> {
        Applied {
            sm,
            last: meta.last,
            conf: meta.conf.clone(),
            make_sm,
        }
    }

    pub(super) fn sm(&self) -> &S {
        &self.sm
    }

    pub(super) fn index(&self) -> LogIndex {
        self.last.index
    }

    /// The last applied entry: where a snapshot taken now stands.
    pub(super) fn last(&self) -> EntryId {
        self.last
    }

    pub(super) fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// Apply the next committed entry (invariant 1).
    pub(super) fn apply(&mut self, e: &Entry) -> Outcome {
        assert_eq!(
            e.index,
            self.last.index.next(),
            "entries applied out of order"
        );
        let out = match e.kind {
            EntryKind::Command => Outcome::Reply(self.sm.apply(e.index, &e.data)),
            EntryKind::Noop => Outcome::Reply(Value::ok()),
            EntryKind::ConfChange => match ConfChange::decode(&e.data) {
                Ok(cc) => {
                    self.conf = cc.apply_to(&self.conf);
                    Outcome::ConfChanged(cc)
                }
                Err(err) => {
                    error!("conf change at {} does not decode: {err}", e.index);
                    Outcome::Reply(Value::error(format!("ERR bad membership change: {err}")))
                }
            },
        };
        self.last = EntryId::new(e.term, e.index);
        out
    }

    /// An empty state machine to load a received snapshot into.
    pub(super) fn fresh_sm(&mut self) -> S {
        (self.make_sm)()
    }

    /// Replace everything with `sm`, which holds exactly the snapshot `meta`.
    pub(super) fn install(&mut self, sm: S, meta: &SnapshotMeta) {
        self.sm = sm;
        self.last = meta.last;
        self.conf = meta.conf.clone();
    }

    /// Invariant 2, given the snapshot on disk and the core's commit index.
    pub(super) fn check_invariants(&self, snapshot: LogIndex, commit: LogIndex) {
        let applied = self.last.index;
        assert!(
            applied >= snapshot,
            "applied {applied} before the snapshot at {snapshot}"
        );
        assert!(
            applied <= commit,
            "applied {applied} beyond commit {commit}"
        );
    }
}
