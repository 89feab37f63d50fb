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
pub mod expiry;
pub mod float;
pub mod glob;
pub mod hash;
pub mod records;
pub mod scan_index;
pub mod session;
pub mod skiplist;
pub mod snapshot;
pub mod store;
pub mod ttl;
pub mod tx;

use crate::client::value::Value;
use crate::raft::LogIndex;
use std::fmt;

pub use snapshot::SnapshotError;
pub use store::{KvStats, KvStore};

/// TTL counters for INFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TtlStats {
    /// Keys deleted because their TTL passed (by a write finding them expired, or by the
    /// leader's reclaim entries), counted as this replica applied them since it started
    /// (local: a snapshot does not carry it).
    pub expired_keys: u64,
    /// Keys with a TTL.
    pub expires: usize,
    /// Keys whose TTL has passed that are not deleted yet.
    pub backlog: usize,
}

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
    /// Answer an encoded read query against the current state, as of the last applied
    /// entry's stamp.
    fn query(&self, data: &[u8]) -> Value;
    /// Answer a read query as of `now_ms` (the leader's time, ms since the epoch: the larger
    /// of its wall clock and the last applied stamp): keys whose TTL has passed are absent.
    fn query_at(&self, data: &[u8], now_ms: u64) -> Value {
        let _ = now_ms;
        self.query(data)
    }
    /// The largest leader stamp applied (ms since the epoch; 0 before any): apply's "now".
    fn applied_stamp_ms(&self) -> u64 {
        0
    }
    /// A write (the payload of an entry, for the leader to propose) deleting at most
    /// `keys_max` keys whose TTL has passed at `now_ms`, earliest first, each only if its
    /// expiry is unchanged when it applies; `None` when no key is due.
    fn expired_batch(&self, now_ms: u64, keys_max: usize) -> Option<Vec<u8>> {
        let _ = (now_ms, keys_max);
        None
    }
    /// TTL counters for INFO, as of `now_ms`.
    fn ttl_stats(&self, now_ms: u64) -> TtlStats {
        let _ = now_ms;
        TtlStats::default()
    }
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
    /// Bytes of keys and values, and heap bytes of the structure beyond them (`/metrics`),
    /// when the implementation counts them.
    fn memory_bytes(&self) -> Option<(usize, usize)> {
        None
    }
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
