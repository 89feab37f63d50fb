//! The core's output: everything the driver must do, in one value.

use super::message::Message;
use super::types::{Entry, HardState, LogIndex, SnapshotMeta};

/// A linearizable read that may now be served: answer read `ctx` once the state machine has
/// applied up to `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: LogIndex,
}

/// Everything the core wants done, taken with [`Raft::ready`](super::Raft::ready).
///
/// # The ordering contract (the driver must follow it exactly)
///
/// 1. `messages` may be sent at any point, even before anything is durable (the leader's
///    appends, heartbeats, pre-votes and snapshots; etcd does the same).
/// 2. Persist: if `snapshot` is set, install it (load the state machine from the received
///    file and reset the durable log to start after `snapshot.last`); write `hard_state`
///    atomically if set; append `entries` positionally (if `entries[0].index` is at or below
///    the durable last index, truncate the durable log from there first).
/// 3. Sync (fsync) all of it.
/// 4. Only then send `persisted_messages` (votes, append acknowledgements: seed lessons 5, 6).
/// 5. Apply `committed` in index order, each exactly once (after the snapshot, if any).
/// 6. Serve each of `read_states` once the state machine has applied up to its index.
///    Answer each of `failed_reads` with an error: this node stopped being leader before
///    the read was confirmed (the client may retry at the new leader).
/// 7. Call [`Raft::advance`](super::Raft::advance) with the durable last index and the
///    applied index, before giving the core any other input.
///
/// The leader counts its own log toward commit only up to what `advance` reported durable.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub snapshot: Option<SnapshotMeta>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Contexts of reads accepted by `read_index` that will never become a `ReadState`:
    /// the leader stepped down first. Each read leaves once, here or in `read_states`.
    pub failed_reads: Vec<u64>,
}

impl Ready {
    /// Payload bytes of `entries` (for the driver's write batching).
    pub fn entries_size(&self) -> usize {
        self.entries.iter().map(|e| e.data.len()).sum()
    }
}
