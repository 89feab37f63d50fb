//! The replicated state machine: the seam the node is generic over, and its main
//! implementation, a skiplist key-value store with Redis command semantics.
//!
//! Owns: classifying client commands into log writes, reads and immediate replies
//! (`command.rs`), applying committed entries deterministically (`store.rs`), the ordered
//! storage (`skiplist.rs`), the snapshot format (`snapshot.rs`) and the envelope the leader
//! puts around each write (`envelope.rs`: its time stamp and client session).
//! Must not: know about Raft beyond `LogIndex`, touch sockets, files or the clock.
//!
//! Invariants every `StateMachine` keeps:
//! 1. `apply` is a pure function of (state, index, payload): replicas applying the same
//!    entries reach the same state, the same replies and the same `state_hash`.
//! 2. `apply` never panics on a payload it cannot decode: it answers an error `Value` and
//!    still counts the index as applied.
//! 3. `load_snapshot(write_snapshot(s))` reproduces `s` exactly, with the same `state_hash`;
//!    a failed load leaves the previous state untouched.

pub mod command;
pub mod envelope;
pub mod float;
pub mod glob;
pub mod hash;
pub mod session;
pub mod skiplist;
pub mod snapshot;
pub mod store;

use crate::client::value::Value;
use crate::raft::LogIndex;
use std::fmt;

pub use snapshot::SnapshotError;
pub use store::{KvStats, KvStore};

/// What a client request turns into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Goes through the log: the payload of a log entry (encoded compactly, versioned).
    Write(Vec<u8>),
    /// Served after a ReadIndex round, without a log entry: an encoded query for `query`.
    Read(Vec<u8>),
    /// Answered at once without touching the state (a syntax error, wrong arity, ...).
    Reply(Value),
}

/// An application replicated by Raft: the three hooks of the original (apply, write a
/// snapshot, load a snapshot) plus command classification and a comparable state hash.
pub trait StateMachine {
    /// Classify a client command (`args[0]` is the command name, case-insensitive).
    /// Commands this state machine does not know give `None`.
    fn parse(&self, args: &[Vec<u8>]) -> Option<Request>;
    /// Apply a committed entry's payload at `index` (> `applied_index()`). Deterministic.
    /// A payload that does not decode is answered with an error `Value`, never a panic.
    fn apply(&mut self, index: LogIndex, data: &[u8]) -> Value;
    /// Answer an encoded read query against the current state.
    fn query(&self, data: &[u8]) -> Value;
    fn applied_index(&self) -> LogIndex;
    /// Stream the whole state to `w`; returns the state hash. May run in a forked child:
    /// no logging, no allocation beyond buffering.
    fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<u64>;
    /// Replace the state with the snapshot read from `r`, rejecting truncated or corrupt
    /// input; returns the state hash. On error the state is unchanged.
    fn load_snapshot(&mut self, r: &mut dyn std::io::Read) -> Result<u64, SnapshotError>;
    /// A hash over (applied index, every key and value) that replicas can compare.
    fn state_hash(&self) -> u64;
    /// Number of keys.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats();
        f.debug_struct("KvStore")
            .field("applied", &self.applied_index())
            .field("keys", &s.keys)
            .field("data_bytes", &s.data_bytes)
            .finish()
    }
}
